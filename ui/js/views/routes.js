// Routes: who may send which document type to whom. Add and remove.

import { api } from "../api.js";
import { h, fill, table, empty, when, link } from "../dom.js";
import { errorBox, busy, flash, confirmDialog } from "../ui.js";

export async function render(ctx) {
  ctx.title("Routes");
  const problem = h("div");
  const list = h("div.card.flush");
  const sender = h("input", { name: "sender", placeholder: "ACME", required: true });
  const receiver = h("input", { name: "receiver", placeholder: "GLOBEX", required: true });
  const doctype = h("input", { name: "doctype", placeholder: "order, or * for every type", required: true });
  const add = h("button.primary", { type: "submit" }, "Add route");
  const formProblem = h("div");
  const form = h("form.card.form",
    h("h2", "Add a route"),
    h("div.form-row", h("label", "Sender", sender), h("label", "Receiver", receiver), h("label", "Document type", doctype)),
    formProblem, h("div", add));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    fill(formProblem);
    await busy(add, async () => {
      try {
        await api("POST", "/routes", { sender: sender.value.trim(), receiver: receiver.value.trim(), doctype: doctype.value.trim() });
        flash(`Route added: ${sender.value.trim()} may send ${doctype.value.trim()} to ${receiver.value.trim()}.`);
        doctype.value = "";
        await load();
      } catch (err) {
        fill(formProblem, errorBox(err));
      }
    });
  });

  async function load() {
    try {
      const routes = await api("GET", "/routes");
      fill(problem);
      fill(list, table([
        ["Sender", (r) => link("#/partners/" + encodeURIComponent(r.sender), r.sender)],
        ["Receiver", (r) => link("#/partners/" + encodeURIComponent(r.receiver), r.receiver)],
        ["Document type", (r) => (r.doctype === "*" ? "every type (*)" : r.doctype)],
        ["Added", (r) => when(r.createdAt)],
        ["", (r) => {
          const b = h("button.small.danger", { type: "button" }, "Remove");
          b.addEventListener("click", async () => {
            if (!(await confirmDialog(`Remove the route ${r.sender} → ${r.receiver} (${r.doctype})? New messages it allowed are refused; those already taken in are delivered.`, "Remove", true))) return;
            await busy(b, async () => {
              await api("DELETE", "/routes/" + encodeURIComponent(r.id));
              flash("Route removed.");
              await load();
            });
          });
          return b;
        }],
      ], routes, empty("No routes yet.", "Messages are refused until a route allows them: add one below.")));
    } catch (err) {
      fill(problem, errorBox(err, "The routes could not be loaded"));
    }
    ctx.ready();
  }

  fill(ctx.main, h("h1", "Routes"), problem, list, form);
  await load();
  ctx.every(load, 15000);
}
