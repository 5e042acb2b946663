// Sign in. A session that ended sends the reader here with ?next= to come back to.

import { api, setCsrf } from "../api.js";
import { h, fill } from "../dom.js";
import { errorBox } from "../ui.js";

export async function render(ctx, app) {
  ctx.title("Sign in");
  const next = ctx.query.get("next") || "";
  const safeNext = /^#\/[^/]/.test(next) && !next.startsWith("#/login") ? next : "#/dashboard";
  const user = h("input", { name: "username", autocomplete: "username", required: true, id: "username" });
  const pass = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true, id: "password" });
  const problem = h("div");
  const submit = h("button.primary", { type: "submit" }, "Sign in");
  const form = h("form.form", { novalidate: true },
    h("label", "Username", user),
    h("label", "Password", pass),
    problem,
    submit);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    fill(problem);
    if (!user.value || !pass.value) {
      fill(problem, errorBox("Enter your username and password."));
      return;
    }
    submit.disabled = true;
    try {
      const data = await api("POST", "/login", { username: user.value, password: pass.value }, { quiet: true });
      setCsrf(data.csrfToken);
      const who = await api("GET", "/me", undefined, { quiet: true });
      app.signedIn(who);
      window.location.hash = safeNext;
    } catch (err) {
      const text = err.status === 401
        ? "Wrong username or password."
        : err.message;
      fill(problem, errorBox(text));
      pass.value = "";
      pass.focus();
    } finally {
      submit.disabled = false;
    }
  });
  fill(ctx.main, h("div.login",
    h("div.card",
      h("h1", "Sign in to Waybill"),
      next ? h("p.muted", "Sign in to go on to the page you were on.") : null,
      form),
    h("p.muted.small", "Admin users are made with ", h("code", "waybill user add NAME"), " on the server.")));
  user.focus();
  ctx.ready();
}
