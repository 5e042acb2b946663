// Messages of every partner: search by type, status, dates, ids, reference, sender,
// receiver and environment, paged newest first; bulk actions on all a filter matches.
// The filter lives in the address, so a search can be bookmarked and shared.

import { api, query } from "../api.js";
import { h, fill, table, empty, badge, when, link, shortId, bytes, select, num } from "../dom.js";
import { errorBox, flash, confirmDialog, busy } from "../ui.js";
import { go } from "../app.js";

const STATUSES = ["queued", "processing", "processed", "complete", "failed", "invalid", "cancelled"];
const FIELDS = ["env", "messageType", "messageStatus", "from", "to", "id", "externalReference", "sender", "receiver"];

/** The API's criteria from the form's values. */
function criteria(f) {
  const c = {};
  for (const k of ["env", "messageType", "messageStatus", "id", "externalReference", "sender", "receiver"]) {
    if (f[k]) c[k] = f[k].trim();
  }
  if (f.from || f.to) c.receivedDate = (f.from || "2000-01-01") + "," + (f.to || new Date().toISOString().slice(0, 10));
  return c;
}

/** How many messages a filter matches: exact from the counters when it is only an
 *  environment and statuses, else by walking the listing (up to a bound). */
async function countMatching(c, progress) {
  const only = Object.keys(c).filter((k) => k !== "env" && k !== "messageStatus");
  if (!only.length) {
    const stats = await api("GET", "/stats");
    const row = stats.messages[c.env || "live"] || {};
    const wanted = c.messageStatus ? c.messageStatus.split(",") : null;
    return { n: wanted ? wanted.reduce((s, w) => s + (row[w.trim()] || 0), 0) : row.total || 0, exact: true };
  }
  let n = 0;
  let cursor = null;
  for (let pages = 0; pages < 60; pages++) {
    const page = await api("GET", "/messages" + query({ ...c, limit: 500, cursor }));
    n += page.items.length;
    progress(n);
    cursor = page.nextCursor;
    if (!cursor) return { n, exact: true };
  }
  return { n, exact: false };
}

export async function render(ctx) {
  ctx.title("Messages");
  const f = {};
  for (const k of FIELDS) f[k] = ctx.query.get(k) || "";
  const cursor = ctx.query.get("cursor") || "";
  const back = ctx.query.get("back") || "";

  const inputs = {
    env: select({ name: "env" }, [["", "live"], ["test", "test"]], f.env),
    messageStatus: select({ name: "messageStatus" }, [["", "any status"], ...STATUSES.map((s) => [s, s])], f.messageStatus),
    messageType: h("input", { name: "messageType", value: f.messageType, placeholder: "order" }),
    sender: h("input", { name: "sender", value: f.sender, placeholder: "ACME" }),
    receiver: h("input", { name: "receiver", value: f.receiver, placeholder: "GLOBEX" }),
    from: h("input", { name: "from", type: "date", value: f.from }),
    to: h("input", { name: "to", type: "date", value: f.to }),
    externalReference: h("input", { name: "externalReference", value: f.externalReference, placeholder: "PO-1" }),
    id: h("input.wide", { name: "id", value: f.id, placeholder: "message or request id" }),
  };
  const labels = {
    env: "Environment", messageStatus: "Status", messageType: "Type", sender: "Sender", receiver: "Receiver",
    from: "Received from", to: "Received to", externalReference: "Reference", id: "Id",
  };
  const searchButton = h("button.primary", { type: "submit" }, "Search");
  const clear = h("button", { type: "button" }, "Clear");
  clear.addEventListener("click", () => go("#/messages"));
  const form = h("form.filters", Object.entries(inputs).map(([k, el]) => h("label", labels[k], el)), searchButton, clear);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const next = {};
    for (const [k, el] of Object.entries(inputs)) next[k] = el.value.trim();
    go("#/messages" + query(next));
  });

  const problem = h("div");
  const list = h("div.card.flush");
  const bulkBox = h("div.toolbar");
  const c = criteria(f);

  async function bulk(action, button) {
    const verb = action === "redeliver" ? "Redeliver" : "Cancel";
    await busy(button, async () => {
      button.textContent = "Counting…";
      let counted;
      try {
        counted = await countMatching(c, (n) => { button.textContent = `Counting… ${num(n)}`; });
      } finally {
        button.textContent = verb + " all matching…";
      }
      if (counted.n === 0) {
        flash("No message matches this filter: nothing to do.");
        return;
      }
      const howMany = (counted.exact ? "" : "at least ") + num(counted.n);
      const what = action === "redeliver" ? "send their failed transmissions again"
        : "cancel those no receiver has taken yet";
      if (!(await confirmDialog(`${verb} ${howMany} matching message${counted.n === 1 ? "" : "s"}? This will ${what}.`, `${verb} ${howMany}`, action === "cancel"))) return;
      const filter = { ...c };
      delete filter.externalReference;
      const op = await api("POST", "/bulk-operations", { action, filter });
      flash(`${verb} started for ${howMany} messages (operation ${op.id}); it goes on in the background.`);
    });
  }

  const bulkRedeliver = h("button", { type: "button" }, "Redeliver all matching…");
  bulkRedeliver.addEventListener("click", () => bulk("redeliver", bulkRedeliver));
  const bulkCancel = h("button.danger", { type: "button" }, "Cancel all matching…");
  bulkCancel.addEventListener("click", () => bulk("cancel", bulkCancel));
  fill(bulkBox, bulkRedeliver, bulkCancel);

  async function load() {
    try {
      const page = await api("GET", "/messages" + query({ ...c, limit: 50, cursor }));
      fill(problem);
      const rows = page.items;
      const filtered = Object.keys(c).length > 0;
      const here = { ...f };
      const pager = h("div.pager",
        cursor ? h("a.button", { href: "#/messages" + query({ ...here, cursor: back || undefined }) }, "← Newer") : null,
        page.nextCursor ? h("a.button", { href: "#/messages" + query({ ...here, cursor: page.nextCursor, back: cursor || undefined }) }, "Older →") : null,
        h("span.muted.small", rows.length ? `${rows.length} on this page` : ""));
      fill(list,
        table([
          ["Received", (m) => when(m.receivedAt)],
          ["Id", (m) => link("#/messages/" + m.id + (m.env === "test" ? "?env=test" : ""), shortId(m.id))],
          ["Type", (m) => m.messageType + (m.version ? " v" + m.version : "")],
          ["Sender", (m) => m.sender],
          ["Receivers", (m) => m.transmissions.map((t) => t.receiver).join(", ") || "—"],
          ["Reference", (m) => m.externalReference || h("span.muted", "—")],
          ["Size", (m) => bytes(m.payloadBytes), "num"],
          ["Status", (m) => badge(m.messageStatus)],
        ], rows, page.nextCursor
          ? empty("Nothing on this page.", "The search looked at part of the store and found nothing yet: press Older to go on.")
          : filtered
            ? empty("No message matches this search.", "Widen it: remove a criterion or press Clear.")
            : empty("No messages yet.", "Once a partner sends a document through the API, it appears here.")),
        (cursor || page.nextCursor) ? pager : null);
    } catch (err) {
      fill(problem, errorBox(err, "The search failed"));
    }
    ctx.ready();
  }

  fill(ctx.main,
    h("div.spread", h("h1", "Messages"), bulkBox),
    h("div.card", form),
    problem, list);
  await load();
  // Only the first page follows new arrivals; an older page stays put while it is read.
  if (!cursor) ctx.every(load, 5000);
}
