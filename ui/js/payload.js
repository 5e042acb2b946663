// The payload viewer: JSON pretty-printed and highlighted, XML indented, text as text,
// anything else as a hex dump. Only the first MAX bytes are read; the rest is a download.
// Everything is built from text nodes: a payload can never become markup.

import { h } from "./dom.js";

/** Bytes of a payload shown at most. */
export const MAX = 256 * 1024;

/** Reads at most `max` bytes of a response body, then lets the rest go. */
export async function readHead(res, max = MAX) {
  const reader = res.body.getReader();
  const parts = [];
  let size = 0;
  while (size < max) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    size += value.length;
  }
  await reader.cancel().catch(() => {});
  const out = new Uint8Array(Math.min(size, max));
  let at = 0;
  for (const p of parts) {
    const take = Math.min(p.length, out.length - at);
    out.set(p.subarray(0, take), at);
    at += take;
    if (at >= out.length) break;
  }
  return out;
}

function isText(contentType, bytes) {
  if (/^text\/|json|xml|csv|yaml|javascript|x-www-form-urlencoded/i.test(contentType)) return true;
  // No type to go by: text when the start is valid UTF-8 without control bytes.
  const head = bytes.subarray(0, 4096);
  for (const b of head) if (b < 9 || (b > 13 && b < 32)) return false;
  return true;
}

/** The viewer's element for `bytes` of type `contentType`; `truncated` when cut short. */
export function view(contentType, bytes, truncated) {
  const ct = String(contentType || "");
  if (!isText(ct, bytes)) return h("pre.payload.hex", hexDump(bytes));
  const text = new TextDecoder("utf-8", { fatal: false }).decode(bytes);
  if (/json/i.test(ct) && !truncated) {
    try {
      return h("pre.payload", highlight(JSON.parse(text), 0));
    } catch (e) {
      // Not valid JSON after all: shown as it came.
    }
  }
  if (/xml/i.test(ct) && !truncated) return h("pre.payload", indentXml(text));
  return h("pre.payload", text);
}

/** JSON as highlighted, indented nodes. */
function highlight(v, depth) {
  const pad = "  ".repeat(depth);
  const inner = "  ".repeat(depth + 1);
  if (v === null || typeof v === "boolean") return h("span.j-lit", String(v));
  if (typeof v === "number") return h("span.j-num", String(v));
  if (typeof v === "string") return h("span.j-str", JSON.stringify(v));
  if (Array.isArray(v)) {
    if (!v.length) return "[]";
    const out = ["[\n"];
    v.forEach((x, i) => out.push(inner, highlight(x, depth + 1), i < v.length - 1 ? ",\n" : "\n"));
    out.push(pad, "]");
    return out;
  }
  const entries = Object.entries(v);
  if (!entries.length) return "{}";
  const out = ["{\n"];
  entries.forEach(([k, x], i) => out.push(inner, h("span.j-key", JSON.stringify(k)), ": ", highlight(x, depth + 1), i < entries.length - 1 ? ",\n" : "\n"));
  out.push(pad, "}");
  return out;
}

/** XML re-indented tag by tag (as text: nothing is parsed into the page). */
export function indentXml(text) {
  const tokens = text.replace(/>\s+</g, "><").split(/(?=<)|(?<=>)/);
  let depth = 0;
  const lines = [];
  for (const t of tokens) {
    if (!t.trim()) continue;
    if (/^<\//.test(t)) depth = Math.max(0, depth - 1);
    const last = lines[lines.length - 1];
    // Text between an opening and its closing tag stays on the opening tag's line.
    if (!t.startsWith("<") && last !== undefined) { lines[lines.length - 1] = last + t; continue; }
    if (/^<\//.test(t) && last !== undefined && /^\s*<[^/!?][^>]*>[^<]*$/.test(last) && !/\/>$/.test(last.trim())) {
      lines[lines.length - 1] = last + t;
      continue;
    }
    lines.push("  ".repeat(depth) + t);
    if (/^<[^/!?]/.test(t) && !/\/>$/.test(t)) depth++;
  }
  return lines.join("\n");
}

/** Offset, 16 bytes in hex, and their printable characters. */
export function hexDump(bytes) {
  const rows = [];
  for (let off = 0; off < bytes.length; off += 16) {
    const chunk = bytes.subarray(off, off + 16);
    const hex = Array.from(chunk, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = Array.from(chunk, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    rows.push(off.toString(16).padStart(8, "0") + "  " + hex.padEnd(48) + "  " + ascii);
  }
  return rows.join("\n");
}
