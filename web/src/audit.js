// Audit search with tctl audit search's filters, JSON-lines export, links to playback.
import { get } from "./api.js";
import { clear, h, when } from "./dom.js";

const FILTERS = [["type", "Type, e.g. session.start"], ["user", "User"], ["node", "Node"], ["session_id", "Session id"], ["since", "Since (ISO date)"], ["until", "Until (ISO date)"]];

export async function show(main, { failed }) {
  const params = new URLSearchParams(location.search);
  const inputs = Object.fromEntries(FILTERS.map(([k, p]) => [k, h("input", { name: k, id: `audit-${k}`, placeholder: p, value: params.get(k) || "" })]));
  const table = h("table", { id: "audit", class: "grid" });
  const exportLink = h("a", { id: "audit-export", class: "button", download: "audit.jsonl" }, "Export JSON lines");
  const form = h("form", { class: "filters", id: "audit-filters" }, Object.values(inputs), h("button", { type: "submit" }, "Search"), exportLink);
  main.append(h("h1", {}, "Audit"), form, table);

  async function load() {
    const q = new URLSearchParams();
    for (const [k, el] of Object.entries(inputs)) if (el.value.trim()) q.set(k, el.value.trim());
    q.set("order", "desc");
    q.set("limit", "500");
    history.replaceState({}, "", `/web/audit?${q}`);
    exportLink.href = `/web/api/audit/export?${q}`;
    let data;
    try { data = await get(`/web/api/audit/search?${q}`); } catch (err) { failed(err); return; }
    clear(table).append(
      h("thead", {}, h("tr", {}, ["Time", "Type", "Node", "User", "Login", "Session", "Details"].map((t) => h("th", {}, t)))),
      h("tbody", {}, data.events.map((e) => h("tr", {},
        h("td", {}, when(e.time)), h("td", {}, e.type, e.fields.via === "local" ? h("span", { class: "label offline" }, "offline") : ""), h("td", {}, e.node_name || e.node), h("td", {}, e.user), h("td", {}, e.login),
        h("td", {}, e.session ? h("a", { href: `/web/play/${encodeURIComponent(e.session)}` }, e.session.slice(0, 8)) : ""),
        h("td", { class: "details" }, Object.entries(e.fields).filter(([k]) => k !== "data").map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" "))))),
    );
  }
  form.addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
  await load();
}
