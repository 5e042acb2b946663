// One partner: its settings (push URLs, headers, parameters), pause and resume, endpoint
// health with re-enabling, API keys (made, shown once, revoked) and signing secrets.

import { api } from "../api.js";
import { h, fill, table, empty, badge, when, link, select } from "../dom.js";
import { errorBox, busy, flash, confirmDialog, copyButton } from "../ui.js";
import { endpointState } from "./partners.js";

/** "Name: value" lines ⇄ an object (headers use ":", parameters "="). */
function toLines(obj, sep) {
  return Object.entries(obj || {}).map(([k, v]) => k + sep + (sep === ":" ? " " : "") + v).join("\n");
}
function fromLines(text, sep, what) {
  const out = {};
  for (const [i, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (!line) continue;
    const at = line.indexOf(sep);
    if (at <= 0) throw new Error(`${what}, line ${i + 1}: write it as name${sep === ":" ? ": " : "="}value.`);
    out[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return out;
}

/** A secret shown once, with a copy button. */
function secretBox(title, secret, note) {
  return h("div.secret", { role: "status" },
    h("strong", title), h("br"),
    h("code", secret), " ", copyButton(secret), h("br"),
    h("span.small", note));
}

export async function render(ctx) {
  const code = ctx.parts[1];
  ctx.title("Partner " + code);
  const path = "/partners/" + encodeURIComponent(code);
  const head = h("div.spread");
  const problem = h("div");
  const settings = h("div.card");
  const health = h("div.card");
  const keys = h("div.card");
  const secrets = h("div.card");
  const routes = h("div.card");
  const shown = h("div");
  let editing = false;

  function drawSettings(p) {
    const name = h("input", { value: p.name, maxlength: 200 });
    const pushUrl = h("input", { value: p.pushUrl || "", type: "url", placeholder: "empty: the partner polls" });
    const testPushUrl = h("input", { value: p.testPushUrl || "", type: "url", placeholder: "empty: test traffic is polled" });
    const headers = h("textarea", { rows: 3, placeholder: "Authorization: Bearer …" });
    headers.value = toLines(p.pushHeaders, ":");
    const params = h("textarea", { rows: 3, placeholder: "tenant=acme" });
    params.value = toLines(p.pushParams, "=");
    const active = h("input", { type: "checkbox", checked: p.active });
    const unique = h("input", { type: "checkbox", checked: p.uniqueReferences });
    const retention = h("input", {
      type: "number", min: 1, max: 3650, step: 1,
      value: p.retentionDays == null ? "" : String(p.retentionDays),
      placeholder: "empty: the appliance's retention.days",
    });
    const save = h("button.primary", { type: "submit" }, "Save changes");
    const formProblem = h("div");
    const form = h("form.form",
      h("h2", "Settings"),
      h("label", "Name", name),
      h("div.form-row", h("label", "Live push URL", pushUrl), h("label", "Test push URL", testPushUrl)),
      h("div.form-row", h("label", "Push headers, one per line (Name: value)", headers),
        h("label", "Push query parameters, one per line (name=value)", params)),
      h("label", "Keep finished messages and jobs for (days)", retention),
      h("div.row", h("label.check", active, "Active (may send and receive)"),
        h("label.check", unique, "Refuse a reference it already used")),
      formProblem,
      h("div", save));
    form.addEventListener("input", () => { editing = true; });
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      fill(formProblem);
      let body;
      try {
        body = {
          name: name.value.trim(),
          pushUrl: pushUrl.value.trim() || null,
          testPushUrl: testPushUrl.value.trim() || null,
          pushHeaders: fromLines(headers.value, ":", "Push headers"),
          pushParams: fromLines(params.value, "=", "Push parameters"),
          active: active.checked,
          uniqueReferences: unique.checked,
          retentionDays: retention.value.trim() === "" ? null : Number(retention.value),
        };
      } catch (err) {
        fill(formProblem, errorBox(err));
        return;
      }
      await busy(save, async () => {
        try {
          await api("PATCH", path, body);
          editing = false;
          flash("Saved.");
          await load();
        } catch (err) {
          fill(formProblem, errorBox(err));
        }
      });
    });
    fill(settings, form);
  }

  function drawHealth(p) {
    const rows = ["live", "test"].map((env) => {
      const hl = (p.endpointHealth && p.endpointHealth[env]) || {};
      const disabled = (p.disabledEndpoints || []).find((d) => d.env === env);
      const enable = h("button.small", { type: "button" }, "Re-enable");
      enable.addEventListener("click", () => busy(enable, async () => {
        await api("PATCH", path, { enableEndpoints: [env] });
        flash(`The ${env} endpoint is enabled again; held deliveries go out now.`);
        await load();
      }));
      return { env, hl, disabled, enable };
    });
    const pause = h("button" + (p.pushPaused ? ".primary" : ""), { type: "button" }, p.pushPaused ? "Resume pushes" : "Pause pushes");
    pause.addEventListener("click", () => busy(pause, async () => {
      await api("PATCH", path, { pushPaused: !p.pushPaused });
      flash(p.pushPaused ? "Pushes resumed." : "Pushes paused: deliveries wait until you resume.");
      await load();
    }));
    fill(health,
      h("div.spread", h("h2", "Push endpoints"), pause),
      table([
        ["Env", (r) => r.env],
        ["State", (r) => endpointState(p, r.env)],
        ["Last success", (r) => when(r.hl.lastSuccessAt)],
        ["Failing since", (r) => when(r.hl.failingSince)],
        ["Last error", (r) => (r.disabled ? "Disabled: " + r.disabled.reason : r.hl.lastError || "—")],
        ["", (r) => (r.disabled ? r.enable : null)],
      ], rows));
  }

  function drawKeys(p) {
    const env = select({ "aria-label": "Environment" }, [["live", "live"], ["test", "test"]]);
    const label = h("input", { placeholder: "label (optional)", maxlength: 200, "aria-label": "Label" });
    const make = h("button.primary", { type: "button" }, "Create key");
    make.addEventListener("click", () => busy(make, async () => {
      const body = { env: env.value };
      if (label.value.trim()) body.label = label.value.trim();
      const k = await api("POST", path + "/keys", body);
      fill(shown, secretBox("New API key for " + code, k.key,
        "Shown only now: Waybill keeps only its hash. Copy it and give it to the partner."));
      label.value = "";
      await load();
    }));
    const rows = p.keys || [];
    fill(keys,
      h("h2", "API keys"),
      table([
        ["Prefix", (k) => h("span.mono", k.prefix + "…")],
        ["Env", (k) => k.env],
        ["Label", (k) => k.label || h("span.muted", "—")],
        ["Created", (k) => when(k.createdAt)],
        ["Last used", (k) => (k.lastUsedAt ? when(k.lastUsedAt) : h("span.muted", "never"))],
        ["State", (k) => (k.active ? badge("active") : h("span", badge("revoked"), " ", when(k.revokedAt)))],
        ["", (k) => {
          if (!k.active) return null;
          const b = h("button.small.danger", { type: "button" }, "Revoke");
          b.addEventListener("click", async () => {
            if (!(await confirmDialog(`Revoke key ${k.prefix}…? Calls with it are refused at once.`, "Revoke", true))) return;
            await busy(b, async () => {
              await api("DELETE", path + "/keys/" + encodeURIComponent(k.id));
              flash("Key revoked.");
              await load();
            });
          });
          return b;
        }],
      ], rows, empty("No API keys yet.", "Create one below and hand it to the partner; it is shown once.")),
      h("div.row", env, label, make));
  }

  function drawSecrets() {
    const env = select({ "aria-label": "Environment" }, [["live", "live"], ["test", "test"]]);
    const rotate = h("button", { type: "button" }, "Rotate signing secret");
    rotate.addEventListener("click", async () => {
      if (!(await confirmDialog(`Make a new ${env.value} signing secret for ${code}? The old one keeps signing beside it for 24 hours.`, "Rotate"))) return;
      await busy(rotate, async () => {
        const s = await api("POST", path + "/signing-secret", { env: env.value });
        fill(shown, secretBox(`New ${s.env} signing secret for ${code}`, s.signingSecret,
          "Pushes are signed with both secrets until " + (s.previousValidUntil || "now") + "; give the partner the new one."));
      });
    });
    fill(secrets, h("h2", "Signing secret"),
      h("p.muted", "Every push is signed (Standard Webhooks). Rotating keeps the old secret valid for a day so the partner can switch."),
      h("div.row", env, rotate));
  }

  function drawRoutes(p) {
    fill(routes, h("h2", "Routes"), table([
      ["Sender", (r) => link("#/partners/" + encodeURIComponent(r.sender), r.sender)],
      ["Receiver", (r) => link("#/partners/" + encodeURIComponent(r.receiver), r.receiver)],
      ["Document type", (r) => r.doctype],
    ], p.routes || [], empty("No routes name this partner.", h("a", { href: "#/routes" }, "Add a route on the Routes page."))));
  }

  async function load() {
    try {
      const p = await api("GET", path);
      fill(problem);
      fill(head, h("h1", p.name + " (" + p.code + ")"),
        h("div.toolbar", h("a.button", { href: "#/messages?sender=" + encodeURIComponent(p.code) }, "Messages sent"),
          h("a.button", { href: "#/messages?receiver=" + encodeURIComponent(p.code) }, "Messages received")));
      if (!editing) drawSettings(p);
      drawHealth(p);
      drawKeys(p);
      drawRoutes(p);
    } catch (err) {
      fill(problem, errorBox(err, "This partner could not be loaded"));
    }
    ctx.ready();
  }

  drawSecrets();
  fill(ctx.main, h("p", h("a", { href: "#/partners" }, "← Partners")), head, problem, shown,
    h("div.grid-2", h("div", settings, secrets), h("div", health, routes)), keys);
  await load();
  ctx.every(load, 15000);
}
