// Element building. Text always goes in through textContent, never as HTML, so nothing a
// partner sent (a reference, a payload, an error text) can become markup.

/** h("tag.class", {attrs}, ...children): an element. Children may be strings, nodes,
 *  arrays or null. Attributes starting with "on" are event listeners. */
export function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className += (el.className ? " " : "") + v;
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** An SVG element (charts). */
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  append(el, children);
  return el;
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A table: columns are [header, cell(row) => content, className?]. */
export function table(columns, rows, emptyState) {
  if (!rows.length) return emptyState;
  return h("table",
    h("thead", h("tr", columns.map(([head, , cls]) => h("th", cls ? { class: cls } : null, head)))),
    h("tbody", rows.map((r) => h("tr", columns.map(([, cell, cls]) => h("td", cls ? { class: cls } : null, cell(r)))))));
}

/** The empty state of a list: what it means and what to do next. */
export function empty(title, next) {
  return h("div.empty", h("strong", title), next);
}

/** The badge class of a status word. */
export function badge(status) {
  const tone = {
    complete: "ok", processed: "ok", completed: "ok", active: "ok", healthy: "ok", ok: "ok", delivered: "ok", succeeded: "ok", enabled: "ok",
    queued: "info", processing: "info", running: "info", counting: "info", due: "info", pending: "info",
    failed: "bad", invalid: "bad", disabled: "bad", revoked: "bad", error: "bad", failing: "bad",
    cancelled: "warn", paused: "warn", held: "warn", parked: "warn", cancelling: "warn",
  }[String(status).toLowerCase()] || "";
  return h("span.badge" + (tone ? "." + tone : ""), String(status));
}

/** A time as the reader's local date and time (year-month-day, 24-hour clock, so it is
 *  short and sorts as it reads); the exact UTC time in the tooltip. */
export function when(iso) {
  if (!iso) return h("span.muted", "—");
  const d = new Date(iso);
  if (isNaN(d)) return String(iso);
  const p = (n) => String(n).padStart(2, "0");
  const text = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  return h("time", { datetime: iso, title: iso }, text);
}

/** Bytes in words. */
export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

/** A count with separators. */
export function num(n) {
  return n === null || n === undefined ? "—" : Number(n).toLocaleString();
}

/** A link inside the UI. */
export function link(hash, text) {
  return h("a", { href: hash }, text);
}

/** A short id with the whole one in its tooltip. */
export function shortId(id) {
  return h("span.mono", { title: id }, String(id).slice(0, 8) + "…" + String(id).slice(-4));
}

/** A <select> with options [value, text]. */
export function select(attrs, options, current) {
  const s = h("select", attrs, options.map(([v, t]) => h("option", { value: v }, t)));
  if (current !== undefined) s.value = current;
  return s;
}
