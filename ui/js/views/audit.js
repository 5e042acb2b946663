// The audit log: every state-changing admin call and every sign-in, newest first.

import { api, query } from "../api.js";
import { h, fill, table, empty, when } from "../dom.js";
import { errorBox } from "../ui.js";
import { go } from "../app.js";

export async function render(ctx) {
  ctx.title("Audit log");
  const actor = ctx.query.get("actor") || "";
  const action = ctx.query.get("action") || "";
  const cursor = ctx.query.get("cursor") || "";
  const actorIn = h("input", { name: "actor", value: actor, placeholder: "user:alice" });
  const actionIn = h("input.wide", { name: "action", value: action, placeholder: "POST /admin/api/partners" });
  const form = h("form.filters", h("label", "Actor", actorIn), h("label", "Action", actionIn), h("button.primary", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    go("#/audit" + query({ actor: actorIn.value.trim(), action: actionIn.value.trim() }));
  });
  const problem = h("div");
  const list = h("div.card.flush");

  async function load() {
    try {
      const page = await api("GET", "/audit" + query({ actor, action, cursor, limit: 100 }));
      fill(problem);
      fill(list, table([
        ["When", (e) => when(e.at)],
        ["Actor", (e) => e.actor],
        ["Action", (e) => h("span.mono", e.action)],
        ["Target", (e) => e.target || h("span.muted", "—")],
        ["From", (e) => h("span.mono", e.source || "—")],
        ["Answer", (e) => statusBadge(e.status)],
      ], page.items, empty(actor || action ? "No entry matches." : "Nothing audited yet.", "Every change made here or through the admin API is listed, with every sign-in.")),
      page.nextCursor ? h("div.pager", h("a.button", { href: "#/audit" + query({ actor, action, cursor: page.nextCursor }) }, "Older →")) : null);
    } catch (err) {
      fill(problem, errorBox(err, "The audit log could not be loaded"));
    }
    ctx.ready();
  }

  fill(ctx.main, h("h1", "Audit log"), h("div.card", form), problem, list);
  await load();
  if (!cursor) ctx.every(load, 10000);
}

function statusBadge(status) {
  const el = h("span.badge." + (status < 300 ? "ok" : status < 500 ? "warn" : "bad"), String(status));
  return el;
}
