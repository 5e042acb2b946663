// Admin users: who may sign in and with which role; add, remove, set a password.

import { api } from "../api.js";
import { h, fill, table, empty, badge, when, select } from "../dom.js";
import { errorBox, busy, flash, confirmDialog } from "../ui.js";

export async function render(ctx) {
  ctx.title("Users");
  const problem = h("div");
  const list = h("div.card.flush");
  const username = h("input", { name: "new-username", autocomplete: "off", required: true });
  const password = h("input", { name: "new-password", type: "password", autocomplete: "new-password", minlength: 12, required: true });
  const role = select({ name: "role" }, [["admin", "admin: may change everything"], ["viewer", "viewer: reads only"]]);
  const add = h("button.primary", { type: "submit" }, "Add user");
  const formProblem = h("div");
  const form = h("form.card.form",
    h("h2", "Add a user"),
    h("div.form-row", h("label", "Username", username), h("label", "Password (12 characters or more)", password), h("label", "Role", role)),
    formProblem, h("div", add));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    fill(formProblem);
    await busy(add, async () => {
      try {
        await api("POST", "/users", { username: username.value.trim(), password: password.value, role: role.value });
        flash(`User ${username.value.trim()} added; they can sign in now.`);
        username.value = "";
        password.value = "";
        await load();
      } catch (err) {
        fill(formProblem, errorBox(err));
      }
    });
  });

  function passwordButton(u) {
    const b = h("button.small", { type: "button" }, "Set password");
    b.addEventListener("click", () => {
      const input = h("input", { type: "password", autocomplete: "new-password", "aria-label": "New password for " + u.username });
      const save = h("button.small.primary", { type: "button" }, "Save");
      const box = h("span.row", input, save);
      save.addEventListener("click", () => busy(save, async () => {
        await api("PUT", "/users/" + encodeURIComponent(u.username) + "/password", { password: input.value });
        flash(`Password of ${u.username} changed; their sessions ended.`);
        await load();
      }));
      b.replaceWith(box);
      input.focus();
    });
    return b;
  }

  async function load() {
    try {
      const data = await api("GET", "/users");
      const users = Array.isArray(data) ? data : data.items || [];
      fill(problem);
      fill(list, table([
        ["Username", (u) => u.username + (ctx.me && ctx.me.username === u.username ? " (you)" : "")],
        ["Role", (u) => badge(u.role)],
        ["Created", (u) => when(u.createdAt)],
        ["Last sign-in", (u) => (u.lastLoginAt ? when(u.lastLoginAt) : h("span.muted", "never"))],
        ["Password changed", (u) => when(u.passwordChangedAt)],
        ["", (u) => {
          const del = h("button.small.danger", { type: "button" }, "Remove");
          del.addEventListener("click", async () => {
            if (!(await confirmDialog(`Remove ${u.username}? Their sessions end at once.`, "Remove", true))) return;
            await busy(del, async () => {
              await api("DELETE", "/users/" + encodeURIComponent(u.username));
              flash(`User ${u.username} removed.`);
              await load();
            });
          });
          return h("div.toolbar", passwordButton(u), del);
        }],
      ], users, empty("No users.", "Add one below, or run waybill user add NAME on the server.")));
    } catch (err) {
      fill(problem, errorBox(err, "The users could not be loaded"));
    }
    ctx.ready();
  }

  fill(ctx.main, h("h1", "Users"), problem, list, form);
  await load();
}
