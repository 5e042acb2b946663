// Background jobs: the list by state, with retry and cancel.

import { api, query } from "../api.js";
import { h, fill, table, empty, badge, when, link, shortId, select } from "../dom.js";
import { errorBox, busy, flash } from "../ui.js";
import { go } from "../app.js";

/** Retry and cancel buttons for a job, as its state allows. */
export function jobActions(j, after) {
  const out = [];
  const envQ = "?env=" + encodeURIComponent(j.env);
  if (j.state === "failed") {
    const b = h("button.small", { type: "button" }, "Retry");
    b.addEventListener("click", () => busy(b, async () => {
      await api("POST", "/jobs/" + j.id + "/retry" + envQ);
      flash("The job is queued again.");
      await after();
    }));
    out.push(b);
  }
  if (j.state === "queued") {
    const b = h("button.small.danger", { type: "button" }, "Cancel");
    b.addEventListener("click", () => busy(b, async () => {
      await api("POST", "/jobs/" + j.id + "/cancel" + envQ);
      flash("The job is cancelled.");
      await after();
    }));
    out.push(b);
  }
  return out;
}

export async function render(ctx) {
  ctx.title("Jobs");
  const state = ctx.query.get("state") || "";
  const env = ctx.query.get("env") || "";
  const partner = ctx.query.get("partner") || "";
  const cursor = ctx.query.get("cursor") || "";
  const stateSel = select({ name: "state" }, [["", "any state"], ...["queued", "running", "completed", "failed", "cancelled"].map((s) => [s, s])], state);
  const envSel = select({ name: "env" }, [["", "both"], ["live", "live"], ["test", "test"]], env);
  const partnerIn = h("input", { name: "partner", value: partner, placeholder: "ACME" });
  const form = h("form.filters", h("label", "State", stateSel), h("label", "Environment", envSel), h("label", "Partner", partnerIn),
    h("button.primary", { type: "submit" }, "Show"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    go("#/jobs" + query({ state: stateSel.value, env: envSel.value, partner: partnerIn.value.trim() }));
  });
  const problem = h("div");
  const list = h("div.card.flush");

  async function load() {
    try {
      const page = await api("GET", "/jobs" + query({ state, env, partner, cursor, limit: 50 }));
      fill(problem);
      fill(list, table([
        ["Created", (j) => when(j.createdAt)],
        ["Id", (j) => link("#/jobs/" + j.id + "?env=" + j.env, shortId(j.id))],
        ["Partner", (j) => j.partner + (j.env === "test" ? " (test)" : "")],
        ["Request", (j) => h("span.mono", j.method + " " + j.path)],
        ["State", (j) => badge(j.state)],
        ["Answer", (j) => (j.responseStatus ? String(j.responseStatus) : "—")],
        ["Runs", (j) => String(j.runs), "num"],
        ["", (j) => jobActions(j, load)],
      ], page.jobs, empty(state || partner ? "No job matches." : "No background jobs yet.",
        "Partners make one by sending an API call with Prefer: respond-async; it shows here while it runs and after.")),
      page.nextCursor ? h("div.pager", h("a.button", { href: "#/jobs" + query({ state, env, partner, cursor: page.nextCursor }) }, "Older →")) : null);
    } catch (err) {
      fill(problem, errorBox(err, "The jobs could not be loaded"));
    }
    ctx.ready();
  }

  fill(ctx.main, h("h1", "Jobs"), h("div.card", form), problem, list);
  await load();
  if (!cursor) ctx.every(load, 5000);
}
