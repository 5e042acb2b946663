// Event subscriptions of every partner: health and last attempts, on and off, a test call.

import { api, query } from "../api.js";
import { h, fill, table, empty, badge, when, select } from "../dom.js";
import { errorBox, busy, flash } from "../ui.js";

export async function render(ctx) {
  ctx.title("Subscriptions");
  let env = "";
  const envSel = select({ "aria-label": "Environment" }, [["", "both environments"], ["live", "live"], ["test", "test"]], env);
  envSel.addEventListener("change", () => { env = envSel.value; load(); });
  const problem = h("div");
  const list = h("div.card.flush");
  const shown = h("div");

  async function load() {
    try {
      const data = await api("GET", "/subscriptions" + query({ env }));
      const subs = Array.isArray(data) ? data : data.items || [];
      fill(problem);
      fill(list, table([
        ["Partner", (s) => s.partner + (s.env === "test" ? " (test)" : "")],
        ["URL", (s) => h("span.mono", s.url)],
        ["Events", (s) => (s.events || []).join(", ")],
        ["State", (s) => (s.active ? badge("active") : h("span", { title: s.disabledReason || "" }, badge("disabled")))],
        ["Health", (s) => {
          const hl = s.health || {};
          if (hl.failingSince) return h("span", { title: hl.lastError || "" }, badge("failing"), " since ", when(hl.failingSince));
          if (hl.lastSuccessAt) return h("span", badge("healthy"), " ", when(hl.lastSuccessAt));
          return h("span.muted", "no calls yet");
        }],
        ["Last attempts", (s) => {
          const last = (s.lastAttempts || []).slice(-5);
          if (!last.length) return h("span.muted", "—");
          return last.map((a) => h("span", { title: (a.at || "") + (a.error ? " · " + a.error : "") }, badge(a.status ? String(a.status) : "error"), " "));
        }],
        ["Waiting ids", (s) => String(s.pendingIds ?? 0), "num"],
        ["", (s) => {
          const envQ = "?env=" + encodeURIComponent(s.env);
          const toggle = h("button.small", { type: "button" }, s.active ? "Disable" : "Enable");
          toggle.addEventListener("click", () => busy(toggle, async () => {
            await api("PATCH", "/subscriptions/" + s.id + envQ, { active: !s.active });
            flash(s.active ? "Subscription disabled: no more calls until it is enabled." : "Subscription enabled.");
            await load();
          }));
          const test = h("button.small", { type: "button" }, "Test");
          test.addEventListener("click", () => busy(test, async () => {
            const r = await api("POST", "/subscriptions/" + s.id + "/test" + envQ);
            const status = r && (r.status ?? (r.attempt && r.attempt.status));
            const error = r && (r.error ?? (r.attempt && r.attempt.error));
            fill(shown, h("div.notice." + (error ? "error" : "ok"), { role: "status" },
              h("span", `Test call to ${s.url}: ` + (error ? error : "answered " + (status ?? "ok")))));
            await load();
          }));
          return h("div.toolbar", toggle, test);
        }],
      ], subs, empty("No subscriptions.", "Partners subscribe to events through the API (POST /api/v1/subscriptions); they show here with their health.")));
    } catch (err) {
      fill(problem, errorBox(err, "The subscriptions could not be loaded"));
    }
    ctx.ready();
  }

  fill(ctx.main, h("div.spread", h("h1", "Subscriptions"), envSel), problem, shown, list);
  await load();
  ctx.every(load, 10000);
}
