// The dashboard: messages by status, queue depths, intake and deliveries per minute over
// the last hour (an SVG chart), the health of the workers and the store, disk space.

import { api } from "../api.js";
import { h, svg, fill, badge, num, bytes, link } from "../dom.js";
import { errorBox } from "../ui.js";

const STATUSES = ["queued", "processing", "processed", "complete", "failed", "invalid", "cancelled"];

/** Intake and deliveries per minute as two lines. */
function chart(perMinute) {
  // A wide view box, drawn at the card's width with its proportions kept (text stays true).
  const W = 1200, H = 210, L = 44, B = 24, T = 10;
  const max = Math.max(1, ...perMinute.map((m) => Math.max(m.intake, m.delivered)));
  const x = (i) => L + (i * (W - L - 8)) / Math.max(1, perMinute.length - 1);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const line = (key) => perMinute.map((m, i) => (i ? "L" : "M") + x(i).toFixed(1) + " " + y(m[key]).toFixed(1)).join(" ");
  const label = (iso) => {
    const d = new Date(iso);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  };
  const ticks = perMinute.length ? [0, Math.floor(perMinute.length / 2), perMinute.length - 1] : [];
  return svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Messages taken in and delivered per minute over the last hour" },
    svg("line", { class: "axis", x1: L, y1: y(0), x2: W - 8, y2: y(0) }),
    svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: y(0) }),
    svg("text", { x: L - 6, y: T + 10, "text-anchor": "end" }, num(max)),
    svg("text", { x: L - 6, y: y(0), "text-anchor": "end" }, "0"),
    ticks.map((i) => svg("text", { x: x(i), y: H - 6, "text-anchor": i === 0 ? "start" : i === perMinute.length - 1 ? "end" : "middle" }, label(perMinute[i].at))),
    perMinute.length ? svg("path", { class: "intake", d: line("intake") }) : null,
    perMinute.length ? svg("path", { class: "delivered", d: line("delivered") }) : null);
}

function uptime(s) {
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " days";
}

export async function render(ctx) {
  ctx.title("Dashboard");
  const problem = h("div");
  const body = h("div");
  let env = "live";
  const envSwitch = h("div.tabs", ["live", "test"].map((e) => {
    const b = h("button.small", { type: "button", "aria-pressed": e === env ? "true" : "false" }, e);
    b.addEventListener("click", () => {
      env = e;
      for (const x of envSwitch.children) x.setAttribute("aria-pressed", x === b ? "true" : "false");
      load();
    });
    return b;
  }));

  async function load() {
    try {
      const s = await api("GET", "/stats");
      fill(problem);
      const m = s.messages[env] || {};
      const q = s.queues;
      const health = s.health || {};
      const disk = s.disk || {};
      const diskShare = disk.totalBytes ? 1 - disk.freeBytes / disk.totalBytes : null;
      fill(body,
        h("div.grid",
          h("div.card", h("h2", "Messages (" + env + ")"), h("div.stat", num(m.total)),
            m.total ? null : h("p.muted", "None yet. Add partners and a route, give the sender a key, and what it sends shows here."),
            h("dl.kv", STATUSES.map((st) => [h("dt", link("#/messages?" + (env === "test" ? "env=test&" : "") + "messageStatus=" + st, st)), h("dd", num(m[st]))]))),
          h("div.card", h("h2", "Queues"), h("dl.kv",
            h("dt", "Waiting for a poll"), h("dd", num(q.pendingTransmissions - q.leasedTransmissions)),
            h("dt", "Under a lease"), h("dd", num(q.leasedTransmissions)),
            h("dt", "Pushes due"), h("dd", num(q.dueDeliveries)),
            h("dt", "Pushes held"), h("dd", q.heldDeliveries ? badge(num(q.heldDeliveries) + " held") : "0"),
            h("dt", "Jobs queued"), h("dd", num(q.queuedJobs)),
            h("dt", "Jobs running"), h("dd", num(q.runningJobs)),
            h("dt", "Subscription ids waiting"), h("dd", num(q.pendingSubscriptionIds)))),
          h("div.card", h("h2", "Health"), h("dl.kv",
            h("dt", "Workers and store"), h("dd", health.ready === false ? badge("failing") : badge("healthy")),
            (health.problems || []).length ? [h("dt", "Problems"), h("dd.error-text", health.problems.join("; "))] : null,
            h("dt", "Writes queued"), h("dd", num(health.writesQueued)),
            h("dt", "Store on disk"), h("dd", bytes(s.storeBytes)),
            h("dt", "Disk free"), h("dd", disk.freeBytes !== undefined ? bytes(disk.freeBytes) + (disk.totalBytes ? " of " + bytes(disk.totalBytes) : "") : "—"),
            h("dt", "Up for"), h("dd", uptime(s.uptimeSeconds))),
            diskShare !== null ? h("div.bar", { title: Math.round(diskShare * 100) + "% of the disk used" }, (() => { const sp = h("span"); sp.style.width = Math.round(diskShare * 100) + "%"; return sp; })()) : null)),
        h("div.card.chart",
          h("div.spread", h("h2", "The last hour, per minute"),
            h("div.legend", h("span", h("i"), "taken in (" + num(s.lastHour.intake) + ")"), h("span", h("i.delivered"), "delivered (" + num(s.lastHour.delivered) + ")"))),
          chart(s.perMinute || [])));
    } catch (err) {
      fill(problem, errorBox(err, "The figures could not be loaded"));
    }
    ctx.ready();
  }

  fill(ctx.main, h("div.spread", h("h1", "Dashboard"), envSwitch), problem, body);
  await load();
  ctx.every(load, 5000);
}
