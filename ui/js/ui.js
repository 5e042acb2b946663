// Shared pieces of the page: notices, the confirmation dialog, the copy button, and the
// error box every view shows when a call fails.

import { h, fill } from "./dom.js";

/** Shows a notice under the top bar: `tone` is "ok" or "error". Errors stay until closed. */
export function flash(message, tone = "ok") {
  const box = document.getElementById("flash");
  const note = h("div.notice." + tone, { role: tone === "error" ? "alert" : "status" },
    h("span", message),
    h("button", { type: "button", "aria-label": "Dismiss", onclick: () => note.remove() }, "×"));
  note.dataset.at = String(Date.now());
  fill(box, note);
  if (tone === "ok") setTimeout(() => note.remove(), 5000);
}

/** Drops notices about an earlier page (a notice made just before moving on stays). */
export function clearStaleFlash() {
  for (const n of document.querySelectorAll("#flash .notice")) {
    if (Date.now() - Number(n.dataset.at || 0) > 1000) n.remove();
  }
}

/** A failed call, in words, inside a view. */
export function errorBox(err, what) {
  const text = err && err.message ? err.message : String(err);
  return h("div.notice.error", { role: "alert" }, h("span", (what ? what + ": " : "") + text));
}

/** Asks before doing something; resolves true when confirmed. */
export function confirmDialog(question, action = "Confirm", danger = false) {
  return new Promise((resolve) => {
    const dlg = h("dialog", { "aria-label": "Confirm" });
    const done = (v) => { dlg.close(); dlg.remove(); resolve(v); };
    fill(dlg,
      h("p", question),
      h("div.toolbar",
        h("button", { type: "button", onclick: () => done(false) }, "Keep as is"),
        h("button" + (danger ? ".danger" : ".primary"), { type: "button", onclick: () => done(true) }, action)));
    dlg.addEventListener("cancel", (e) => { e.preventDefault(); done(false); });
    document.body.append(dlg);
    dlg.showModal();
    dlg.querySelector("button:last-child").focus();
  });
}

/** A button that copies `text` and says so. */
export function copyButton(text, label = "Copy") {
  const b = h("button.small", { type: "button" }, label);
  b.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      b.textContent = "Copied";
    } catch (e) {
      // Without clipboard access (plain HTTP on another host), select the text instead.
      const sel = window.getSelection();
      const target = b.parentElement && b.parentElement.querySelector("code");
      if (sel && target) { sel.selectAllChildren(target); b.textContent = "Selected: press Ctrl+C"; }
      else b.textContent = "Copy failed";
    }
    setTimeout(() => { b.textContent = label; }, 2500);
  });
  return b;
}

/** Runs `fn` for a button: disables it meanwhile and reports failure in words. */
export async function busy(button, fn) {
  button.disabled = true;
  try {
    return await fn();
  } catch (e) {
    flash(e.message || String(e), "error");
    return undefined;
  } finally {
    button.disabled = false;
  }
}
