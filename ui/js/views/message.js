// One message: what it is, its payload, its status timeline with errors, its
// transmissions with every delivery attempt, and what an admin may do with it.

import { api } from "../api.js";
import { h, fill, table, empty, badge, when, bytes } from "../dom.js";
import { errorBox, busy, flash, confirmDialog } from "../ui.js";
import * as payload from "../payload.js";

function timeline(history, errors, dropped) {
  const items = [
    ...history.map((x) => ({ at: x.at, node: h("span", badge(x.status)) })),
    ...errors.map((e) => ({ at: e.at, node: h("span.error-text", e.errorMessage + (e.pointer ? ` (at ${e.pointer})` : "")) })),
  ].sort((a, b) => String(a.at).localeCompare(String(b.at)));
  return h("ol.timeline",
    dropped ? h("li.muted.small", `${dropped} earlier changes not kept`) : null,
    items.map((i) => h("li", when(i.at), " ", i.node)));
}

export async function render(ctx) {
  const id = ctx.parts[1];
  const env = ctx.query.get("env");
  ctx.title("Message " + id.slice(0, 8));
  const path = "/messages/" + encodeURIComponent(id);
  const envQ = env ? "?env=" + encodeURIComponent(env) : "";
  const head = h("div.spread");
  const problem = h("div");
  const facts = h("div.card");
  const history = h("div.card");
  const transmissions = h("div");
  const viewer = h("div.card");

  async function act(button, verb, call, done, question) {
    if (question && !(await confirmDialog(question, verb, verb === "Cancel"))) return;
    await busy(button, async () => {
      await api("POST", path + "/" + call + envQ);
      flash(done);
      await load();
    });
  }

  async function loadPayload(m) {
    const p = m.payload;
    const download = h("a.button", { href: p.location, download: m.id + ".payload" }, "Download");
    fill(viewer, h("div.spread", h("h2", "Payload"), h("div.row", h("span.muted", (p.contentType || "unknown type") + " · " + bytes(p.bytes)), download)),
      h("p.muted", "Loading the payload…"));
    try {
      const res = await fetch(p.location, { credentials: "same-origin" });
      if (!res.ok) {
        let message = `The server answered ${res.status}.`;
        try { message = (await res.json()).error.message; } catch (e) { /* not an envelope */ }
        throw new Error(message);
      }
      const data = await payload.readHead(res);
      const truncated = p.bytes > data.length;
      viewer.lastChild.replaceWith(h("div",
        truncated ? h("p.muted", `Showing the first ${bytes(data.length)} of ${bytes(p.bytes)}. Download it for the rest.`) : null,
        payload.view(p.contentType, data, truncated)));
    } catch (err) {
      viewer.lastChild.replaceWith(errorBox(err, "The payload could not be read"));
    }
  }

  async function load(first) {
    let m;
    try {
      m = await api("GET", path + envQ);
      fill(problem);
    } catch (err) {
      fill(problem, errorBox(err, "This message could not be loaded"));
      ctx.ready();
      return;
    }
    const cancel = h("button.danger", { type: "button" }, "Cancel");
    cancel.addEventListener("click", () => act(cancel, "Cancel", "cancel", "Cancelled: no receiver will get this message now.", "Cancel this message? Receivers that have not taken it will not get it."));
    const redeliver = h("button", { type: "button" }, "Redeliver");
    redeliver.addEventListener("click", () => act(redeliver, "Redeliver", "redeliver", "Redelivered: the failed transmissions are queued again."));
    const revalidate = h("button", { type: "button" }, "Revalidate");
    revalidate.addEventListener("click", () => act(revalidate, "Revalidate", "revalidate", "Validated again; the status below says whether it passed."));
    const failed = m.transmissions.some((t) => t.status === "failed");
    fill(head, h("h1", "Message ", h("span.mono", m.id)),
      h("div.toolbar",
        ["queued", "processing"].includes(m.messageStatus) ? cancel : null,
        failed ? redeliver : null,
        m.messageStatus === "invalid" ? revalidate : null));
    fill(facts, h("dl.kv",
      h("dt", "Status"), h("dd", badge(m.messageStatus)),
      h("dt", "Environment"), h("dd", m.env),
      h("dt", "Sender"), h("dd", h("a", { href: "#/partners/" + encodeURIComponent(m.sender) }, m.sender)),
      h("dt", "Type"), h("dd", m.messageType + (m.version ? " v" + m.version : "")),
      h("dt", "Reference"), h("dd", m.externalReference || "—"),
      h("dt", "Batch reference"), h("dd", m.batchReference || "—"),
      h("dt", "Request"), h("dd", h("span.mono", m.requestId)),
      h("dt", "Received"), h("dd", when(m.receivedAt)),
      h("dt", "Processed"), h("dd", when(m.processedTime))));
    fill(history, h("h2", "Status timeline"), timeline(m.history || [], m.errors || [], m.historyDropped));
    fill(transmissions, m.transmissions.map((t) => h("div.card.flush",
      h("h2", "To ", t.receiver, " ", badge(t.status)),
      h("p.small.muted", { class: "pad" }, "Transmission ", h("span.mono", t.uuid), ` · ${t.attempts} attempt${t.attempts === 1 ? "" : "s"}`,
        t.deliveredAt ? [" · delivered ", when(t.deliveredAt)] : null,
        t.acknowledgedAt ? [" · acknowledged ", when(t.acknowledgedAt)] : null),
      t.lastError ? h("p.error-text.pad", t.lastError) : null,
      table([
        ["#", (a) => String(a.attempt), "num"],
        ["At", (a) => when(a.at)],
        ["URL", (a) => h("span.mono", a.url || "—")],
        ["Answer", (a) => (a.status ? badge(String(a.status)) : h("span.muted", "none"))],
        ["Time", (a) => (a.latencyMs !== null && a.latencyMs !== undefined ? a.latencyMs + " ms" : "—"), "num"],
        ["Error or response", (a) => a.error ? h("span.error-text", a.error) : (a.response || "—")],
      ], t.attemptLog || [], empty("No push attempts.", "This receiver polls, or its push has not been tried yet.")))));
    if (first) await loadPayload(m);
    ctx.ready();
  }

  fill(ctx.main, h("p", h("a", { href: "#/messages" }, "← Messages")), head, problem,
    h("div.grid-2", h("div", facts, history), h("div", viewer)),
    h("h2", "Transmissions"), transmissions);
  await load(true);
  ctx.every(() => load(false), 5000);
}
