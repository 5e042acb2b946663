// The router: one module per view, chosen by the location's hash (#/messages?status=…).
// It checks the session, draws the navigation, runs a view, and stops the view's timers
// when the reader leaves it. Lists refresh on their own only while the tab is visible.

import { api, setCsrf, whenSignedOut } from "./api.js";
import { h, fill } from "./dom.js";
import { flash, errorBox, clearStaleFlash } from "./ui.js";

const NAV = [
  ["dashboard", "Dashboard"],
  ["partners", "Partners"],
  ["routes", "Routes"],
  ["messages", "Messages"],
  ["jobs", "Jobs"],
  ["subscriptions", "Subscriptions"],
  ["users", "Users"],
  ["audit", "Audit log"],
];

const VIEWS = {
  login: () => import("./views/login.js"),
  dashboard: () => import("./views/dashboard.js"),
  partners: () => import("./views/partners.js"),
  partner: () => import("./views/partner.js"),
  routes: () => import("./views/routes.js"),
  messages: () => import("./views/messages.js"),
  message: () => import("./views/message.js"),
  jobs: () => import("./views/jobs.js"),
  job: () => import("./views/job.js"),
  subscriptions: () => import("./views/subscriptions.js"),
  users: () => import("./views/users.js"),
  audit: () => import("./views/audit.js"),
};

/** Who is signed in (from /me), or null. */
export let me = null;
let current = null;

/** Parses the hash: "#/messages/ID?x=1" → { parts: ["messages", "ID"], query }. */
function location() {
  const raw = window.location.hash.replace(/^#\/?/, "");
  const [path, qs] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(qs || ""), raw };
}

/** Goes to a hash location. */
export function go(hash) {
  if (window.location.hash === hash) route();
  else window.location.hash = hash;
}

function viewOf(parts) {
  const [first, second] = parts;
  if (!first) return "dashboard";
  if (first === "partners" && second) return "partner";
  if (first === "messages" && second) return "message";
  if (first === "jobs" && second) return "job";
  return VIEWS[first] ? first : null;
}

/** Sends the reader to sign in, remembering where they were. */
function signIn() {
  const here = location().raw;
  me = null;
  setCsrf(null);
  drawChrome();
  if (!here.startsWith("login")) go("#/login" + (here ? "?next=" + encodeURIComponent("#/" + here) : ""));
}
whenSignedOut(signIn);

function drawChrome() {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  if (!me) {
    nav.hidden = true;
    fill(who);
    return;
  }
  nav.hidden = false;
  const name = location().parts[0] || "dashboard";
  const section = name === "login" ? "" : name;
  fill(nav, NAV.map(([id, text]) =>
    h("a", { href: "#/" + id, "aria-current": section === id ? "page" : null }, text)));
  const logout = h("button.small", { type: "button" }, "Sign out");
  logout.addEventListener("click", async () => {
    try {
      await api("POST", "/logout", undefined, { quiet: true });
    } catch (e) {
      // A session that already ended is signed out all the same.
    }
    me = null;
    setCsrf(null);
    drawChrome();
    go("#/login");
  });
  fill(who, h("span", me.username ? me.username + " · " + me.role : "admin token"), logout);
}

/** What a view gets: where to draw, the location, timers that stop when it is left. */
function context(name, loc) {
  const timers = [];
  const main = document.getElementById("main");
  const ctx = {
    main,
    parts: loc.parts,
    query: loc.query,
    me,
    alive: true,
    /** Runs `fn` every `ms` while the tab is visible and the view is shown. */
    every(fn, ms) {
      const tick = () => { if (!document.hidden && ctx.alive) fn(); };
      timers.push(setInterval(tick, ms));
      const onVisible = () => { if (!document.hidden && ctx.alive) fn(); };
      document.addEventListener("visibilitychange", onVisible);
      timers.push(() => document.removeEventListener("visibilitychange", onVisible));
    },
    /** Marks the view's data as drawn (the first-paint figure is measured up to here). */
    ready() {
      if (!ctx.marked) {
        ctx.marked = true;
        performance.mark("view-ready:" + name);
        document.body.dataset.ready = name;
      }
    },
    title(t) {
      document.title = t + " · Waybill";
    },
    stop() {
      ctx.alive = false;
      for (const t of timers) typeof t === "function" ? t() : clearInterval(t);
    },
  };
  return ctx;
}

async function route() {
  const loc = location();
  if (current) current.stop();
  delete document.body.dataset.ready;
  clearStaleFlash();
  let name = viewOf(loc.parts);
  if (name !== "login" && !me) {
    try {
      me = await api("GET", "/me", undefined, { quiet: true });
    } catch (e) {
      if (e.status === 401) return signIn();
      fill(document.getElementById("main"), errorBox(e, "Waybill could not be reached"));
      return;
    }
  }
  drawChrome();
  const main = document.getElementById("main");
  if (!name) {
    fill(main, h("h1", "Not found"), h("p", "There is no page at this address. ", h("a", { href: "#/dashboard" }, "Go to the dashboard.")));
    return;
  }
  const ctx = context(name, loc);
  current = ctx;
  try {
    const mod = await VIEWS[name]();
    if (current !== ctx) return;
    fill(main, h("p.muted", "Loading…"));
    await mod.render(ctx, { signedIn: (who) => { me = who; drawChrome(); } });
  } catch (e) {
    if (current !== ctx) return;
    if (e && e.status === 401) return;
    fill(main, errorBox(e, "This page could not be shown"));
    ctx.ready();
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("unhandledrejection", (e) => flash(String(e.reason && e.reason.message || e.reason), "error"));
route();
