// Partners: the list with each push endpoint's health, and the form that adds one.

import { api } from "../api.js";
import { h, fill, table, empty, badge, link } from "../dom.js";
import { errorBox, busy, flash } from "../ui.js";
import { go } from "../app.js";

/** One word for a partner's push endpoint in an environment. */
export function endpointState(p, env) {
  const url = env === "live" ? p.pushUrl : p.testPushUrl;
  if (!url) return h("span.muted", "polls");
  if ((p.disabledEndpoints || []).some((d) => d.env === env)) return badge("disabled");
  if (p.pushPaused) return badge("paused");
  const hl = p.endpointHealth && p.endpointHealth[env];
  if (hl && hl.failingSince) return h("span", { title: hl.lastError || "" }, badge("failing"), " ", String(hl.consecutiveFailures), "×");
  if (hl && hl.lastSuccessAt) return badge("healthy");
  return h("span.muted", "no calls yet");
}

export async function render(ctx) {
  ctx.title("Partners");
  const list = h("div.card.flush");
  const problem = h("div");

  const code = h("input", { name: "code", placeholder: "ACME", required: true, maxlength: 64 });
  const name = h("input", { name: "name", placeholder: "Acme Corp", maxlength: 200 });
  const pushUrl = h("input", { name: "pushUrl", type: "url", placeholder: "https://partner.example/hook (optional)" });
  const submit = h("button.primary", { type: "submit" }, "Add partner");
  const formProblem = h("div");
  const form = h("form.card.form",
    h("h2", "Add a partner"),
    h("div.form-row", h("label", "Code", code), h("label", "Name", name)),
    h("label", "Push URL (leave empty if the partner polls)", pushUrl),
    formProblem,
    h("div", submit));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    fill(formProblem);
    const body = { code: code.value.trim(), name: name.value.trim() || undefined };
    if (pushUrl.value.trim()) body.pushUrl = pushUrl.value.trim();
    await busy(submit, async () => {
      try {
        const p = await api("POST", "/partners", body);
        flash(`Partner ${p.code} added. Give it an API key next.`);
        go("#/partners/" + encodeURIComponent(p.code));
      } catch (err) {
        fill(formProblem, errorBox(err));
      }
    });
  });

  async function load() {
    try {
      const partners = await api("GET", "/partners");
      fill(problem);
      fill(list, table([
        ["Code", (p) => link("#/partners/" + encodeURIComponent(p.code), p.code)],
        ["Name", (p) => p.name],
        ["Active", (p) => (p.active ? badge("active") : badge("disabled"))],
        ["Live push", (p) => endpointState(p, "live")],
        ["Test push", (p) => endpointState(p, "test")],
        ["Push URL", (p) => (p.pushUrl ? h("span.mono", p.pushUrl) : h("span.muted", "—"))],
      ], partners, empty("No partners yet.", "Add the first one with the form below, then give it an API key.")));
    } catch (err) {
      fill(problem, errorBox(err, "The partners could not be loaded"));
    }
    ctx.ready();
  }

  fill(ctx.main, h("div.spread", h("h1", "Partners")), problem, list, form);
  await load();
  ctx.every(load, 10000);
}
