// The one way the UI talks to the server: the admin JSON API under /admin/api. It adds the
// session's CSRF token to changes, turns the error envelope into a sentence, and sends the
// reader to the login page when the session has ended, with the way back.

const CSRF_KEY = "waybill.csrf";

/** An API failure: `message` is a sentence for people; `code` and `status` for the code. */
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

export function setCsrf(token) {
  if (token) localStorage.setItem(CSRF_KEY, token);
  else localStorage.removeItem(CSRF_KEY);
}

let onSignedOut = () => {};
/** What to do when a call finds the session gone (set by the router). */
export function whenSignedOut(fn) {
  onSignedOut = fn;
}

/** Calls the admin API; resolves with the envelope's `data`, throws an ApiError. */
export async function api(method, path, body, opts = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") {
    const csrf = localStorage.getItem(CSRF_KEY);
    if (csrf) headers["X-CSRF-Token"] = csrf;
  }
  let res;
  try {
    res = await fetch("/admin/api" + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, "network", "The server could not be reached. Check that Waybill is running and try again.");
  }
  let envelope = null;
  try {
    envelope = await res.json();
  } catch (e) {
    envelope = null;
  }
  if (res.ok && envelope && envelope.success) return envelope.data;
  const err = envelope && envelope.error;
  const message = (err && err.message) ? sentence(err.message) : `The server answered ${res.status} ${res.statusText || ""}`.trim() + ".";
  const e = new ApiError(res.status, err ? err.code : "http_" + res.status, message, err && err.field);
  // A session that ended (or a change refused for want of a token this tab no longer has)
  // sends the reader to sign in again; the login page brings them back.
  if (!opts.quiet && (res.status === 401 || e.code === "csrf_failed")) onSignedOut();
  throw e;
}

function sentence(m) {
  const s = String(m).trim();
  const first = s.charAt(0).toUpperCase() + s.slice(1);
  return /[.!?]$/.test(first) ? first : first + ".";
}

/** Builds a query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? "?" + s : "";
}
