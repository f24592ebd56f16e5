// The console's router: one page per path under /web/, each drawn by its module.
import "./nonce.js";
import { ApiError, get, post, setCsrf } from "./api.js";
import { clear, h, toast } from "./dom.js";
import * as fleetPage from "./fleet.js";

const main = document.getElementById("main");
let me = null;
try { // the page carries the session's user and CSRF token (none when logged out)
  const said = document.querySelector('meta[name="remoteler-me"]')?.content;
  if (said) { me = JSON.parse(said); setCsrf(me.csrf); }
} catch { me = null; }
let leave = null; // the current page's clean-up (event streams, terminals)

export function go(path) {
  history.pushState({}, "", path);
  route();
}

async function route() {
  if (leave) { try { leave(); } catch { /* ignore */ } leave = null; }
  const path = location.pathname.replace(/\/+$/, "") || "/web";
  if (!me && path !== "/web/login") {
    try { me = await get("/web/api/me"); setCsrf(me.csrf); } catch { me = null; }
  }
  if (!me) return showLogin();
  document.getElementById("bar").hidden = false;
  document.getElementById("who").textContent = me.user;
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.remove("here");
  clear(main);
  let page;
  if (path === "/web" || path === "/web/fleet") page = ["fleet", async () => fleetPage];
  else if (path.startsWith("/web/node/")) page = ["fleet", () => import("./node.js")];
  else if (path === "/web/audit") page = ["audit", () => import("./audit.js")];
  else if (path.startsWith("/web/play/")) page = ["audit", () => import("./play.js")];
  else if (path === "/web/ops") page = ["ops", () => import("./ops.js")];
  else { main.append(h("p", {}, "No such page. ", h("a", { href: "/web/" }, "Fleet"))); return; }
  document.querySelector(`[data-nav="${page[0]}"]`)?.classList.add("here");
  const mod = await page[1]();
  leave = (await mod.show(main, { me, path, go, failed })) || null;
}

export function failed(err) {
  if (err instanceof ApiError && err.status === 401) { me = null; showLogin(err.message); return; }
  toast(err.message || String(err));
}

function showLogin(message) {
  document.getElementById("bar").hidden = true;
  clear(main);
  const error = h("p", { class: "error", id: "login-error", role: "alert" }, message || "");
  const form = h("form", { id: "login", class: "card login" },
    h("h1", {}, "Remoteler"),
    h("label", {}, "User", h("input", { name: "user", autocomplete: "username", required: true })),
    h("label", {}, "Password", h("input", { name: "password", type: "password", autocomplete: "current-password", required: true })),
    h("label", {}, "One-time code", h("input", { name: "otp", inputmode: "numeric", autocomplete: "one-time-code", required: true, maxlength: 10 })),
    h("button", { type: "submit" }, "Log in"),
    error,
  );
  // Single sign-on (docs/sso.md): one button per connector, a full navigation through
  // the identity provider and back.
  const sso = h("div", { id: "sso", class: "sso" });
  form.insertBefore(sso, error);
  get("/web/api/sso/connectors").then((list) => {
    if (!list.connectors.length) return;
    sso.append(h("p", { class: "muted" }, "or sign in with"));
    for (const c of list.connectors) {
      sso.append(h("a", { class: "button sso-button", href: `/web/sso/login/${encodeURIComponent(c.name)}`, "data-sso": c.kind }, c.display || c.name));
    }
  }).catch(() => { /* password login still works */ });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    try {
      me = await post("/web/api/login", data);
      setCsrf(me.csrf);
      if (location.pathname === "/web/login") history.replaceState({}, "", "/web/");
      route();
    } catch (err) {
      error.textContent = err.message;
    }
  });
  main.append(form);
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest("a[href^='/web']");
  if (a && !a.hasAttribute("download") && !a.hasAttribute("data-sso") && !ev.metaKey && !ev.ctrlKey) { ev.preventDefault(); go(a.getAttribute("href")); }
});
window.addEventListener("popstate", route);
document.getElementById("logout").addEventListener("click", async () => {
  try { await post("/web/api/logout"); } catch { /* the session may be gone already */ }
  me = null;
  setCsrf("");
  go("/web/login");
});
route();
