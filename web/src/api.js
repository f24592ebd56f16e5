// The hub's JSON API: the session cookie goes by itself; state changes carry the CSRF token.
let csrf = "";
export function setCsrf(token) { csrf = token || ""; }
export function csrfToken() { return csrf; }

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function parse(resp) {
  const text = await resp.text();
  let body = {};
  try { body = text ? JSON.parse(text) : {}; } catch { body = { error: text.trim() }; }
  if (!resp.ok) throw new ApiError(resp.status, body.error || `${resp.status} ${resp.statusText}`);
  return body;
}

export async function get(path) {
  return parse(await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } }));
}

export async function post(path, body) {
  return parse(await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify(body ?? {}),
  }));
}

export async function call(method, params) {
  return (await post(`/web/api/call/${method}`, params)).result;
}
