// One background job: the request it stored (never credentials), the response its run
// stored, and retry or cancel.

import { api } from "../api.js";
import { h, fill, badge, when, bytes } from "../dom.js";
import { errorBox } from "../ui.js";
import { jobActions } from "./jobs.js";

function body(b) {
  if (!b || !b.bytes) return h("p.muted", "No body.");
  return h("div",
    h("p.muted.small", bytes(b.bytes) + (b.encoding === "base64" ? " · binary, shown as base64" : "") + (b.bodyTruncated ? " · cut short" : "")),
    h("pre.payload", b.body || ""));
}

function headers(list) {
  if (!list || !list.length) return h("p.muted", "No headers kept.");
  return h("pre.payload", list.map(([k, v]) => k + ": " + v).join("\n"));
}

export async function render(ctx) {
  const id = ctx.parts[1];
  const env = ctx.query.get("env") || "";
  ctx.title("Job " + id.slice(0, 8));
  const problem = h("div");
  const content = h("div");

  async function load() {
    try {
      const j = await api("GET", "/jobs/" + encodeURIComponent(id) + (env ? "?env=" + encodeURIComponent(env) : ""));
      fill(problem);
      const req = j.request || {};
      const res = j.response;
      fill(content,
        h("div.spread", h("h1", "Job ", h("span.mono", j.id)), h("div.toolbar", jobActions(j, load))),
        h("div.card", h("dl.kv",
          h("dt", "State"), h("dd", badge(j.state)),
          h("dt", "Partner"), h("dd", j.partner + " (" + j.env + ")"),
          h("dt", "Created"), h("dd", when(j.createdAt)),
          h("dt", "Started"), h("dd", when(j.startedAt)),
          h("dt", "Finished"), h("dd", when(j.finishedAt)),
          h("dt", "Runs"), h("dd", String(j.runs)),
          j.error ? [h("dt", "Error"), h("dd.error-text", j.error)] : null,
          h("dt", "Completion webhook"), h("dd", j.webhookUrl || "none"))),
        h("div.grid-2",
          h("div.card", h("h2", "Request"), h("p.mono", (req.method || j.method) + " " + (req.path || j.path) + (req.query ? "?" + req.query : "")),
            h("h3", "Headers"), headers(req.headers), h("h3", "Body"), body(req)),
          h("div.card", h("h2", "Stored response"), res
            ? [h("p", "Status ", badge(String(res.status))), h("h3", "Headers"), headers(res.headers), h("h3", "Body"), body(res)]
            : h("p.muted", "No response yet: the job has not finished a run."))));
    } catch (err) {
      fill(problem, errorBox(err, "This job could not be loaded"));
    }
    ctx.ready();
  }

  fill(ctx.main, h("p", h("a", { href: "#/jobs" }, "← Jobs")), problem, content);
  await load();
  ctx.every(load, 5000);
}
