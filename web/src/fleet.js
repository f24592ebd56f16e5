// The fleet: every node the user may see, searched, filtered, sorted and paged by the hub;
// online state follows server-sent events without a reload.
import { get } from "./api.js";
import { ago, clear, h } from "./dom.js";

const COLUMNS = [
  ["name", "Node"], [null, "Labels"], ["online", "Status"], ["last_seen", "Last seen"],
  ["version", "Agent"], [null, "Firmware"], ["audit_pending", "Audit backlog"], ["cert_expires", "Certificate"], ["recording", "Recording"],
];

function until(ts) {
  if (!ts) return "–";
  const days = (ts - Date.now() / 1000) / 86400;
  if (days < 0) return "expired";
  return days >= 2 ? `${Math.floor(days)} days` : `${Math.max(0, Math.round(days * 24))} h`;
}

function expiring(ts) { return !!ts && ts - Date.now() / 1000 < 7 * 86400; }

export async function show(main, { failed }) {
  const params = new URLSearchParams(location.search);
  const state = {
    q: params.get("q") || "", label: params.get("label") || "", state: params.get("state") || "",
    sort: params.get("sort") || "name", page: Number(params.get("page") || 1),
  };
  const summary = h("p", { id: "fleet-summary", class: "muted" });
  const search = h("input", { id: "search", type: "search", placeholder: "Search names, labels, versions", value: state.q });
  const label = h("input", { id: "label-filter", placeholder: "Labels, e.g. env=prod,site=berlin", value: state.label });
  const stateSel = h("select", { id: "state-filter" },
    h("option", { value: "" }, "Online and offline"), h("option", { value: "online" }, "Online"), h("option", { value: "offline" }, "Offline"));
  stateSel.value = state.state;
  const table = h("table", { id: "fleet", class: "grid" });
  const pager = h("div", { class: "pager" });
  main.append(h("h1", {}, "Fleet"), h("form", { class: "filters", id: "fleet-filters" }, search, label, stateSel, h("button", { type: "submit" }, "Filter")), summary, table, pager);

  async function load() {
    const q = new URLSearchParams({ q: state.q, label: state.label, state: state.state, sort: state.sort, page: String(state.page), size: "50" });
    history.replaceState({}, "", `/web/?${q}`);
    let data;
    try { data = await get(`/web/api/nodes?${q}`); } catch (err) { failed(err); return; }
    summary.textContent = `${data.total} of ${data.fleet.nodes} nodes match · ${data.fleet.online} online`;
    clear(table);
    table.append(h("thead", {}, h("tr", {}, COLUMNS.map(([key, title]) => h("th", {},
      key ? h("button", { type: "button", class: "sort", onclick: () => { state.sort = state.sort === key ? `-${key}` : key; state.page = 1; load(); } },
        title, state.sort === key ? " ▲" : state.sort === `-${key}` ? " ▼" : "") : title)))));
    const body = h("tbody");
    for (const n of data.nodes) {
      body.append(h("tr", { dataset: { node: n.name } },
        h("td", {}, h("a", { href: `/web/node/${encodeURIComponent(n.name)}` }, n.name)),
        h("td", {}, Object.entries(n.labels || {}).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`))),
        h("td", { class: "status" }, h("span", { class: n.online ? "dot on" : "dot off" }), n.online ? "online" : "offline"),
        h("td", { class: "seen" }, n.online ? "now" : ago(n.last_seen)),
        h("td", {}, n.version || "–"),
        h("td", {}, n.firmware ? `${n.firmware.version} (${n.firmware.slot || "?"})` : "–"),
        h("td", {}, String(n.audit_pending ?? 0)),
        h("td", { class: expiring(n.cert_expires) ? "warn" : "" }, until(n.cert_expires)),
        h("td", {}, n.recording || "off"),
      ));
    }
    table.append(body);
    clear(pager);
    pager.append(
      h("button", { type: "button", disabled: data.page <= 1, onclick: () => { state.page = data.page - 1; load(); } }, "‹ Previous"),
      h("span", {}, ` page ${data.page} of ${data.pages} `),
      h("button", { type: "button", disabled: data.page >= data.pages, onclick: () => { state.page = data.page + 1; load(); } }, "Next ›"),
    );
  }

  main.querySelector("#fleet-filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    Object.assign(state, { q: search.value, label: label.value, state: stateSel.value, page: 1 });
    load();
  });
  await load();

  const events = new EventSource("/web/api/events");
  events.addEventListener("node", (ev) => {
    const n = JSON.parse(ev.data);
    const row = table.querySelector(`tr[data-node="${CSS.escape(n.name)}"]`);
    if (!row) return;
    const cell = row.querySelector(".status");
    clear(cell).append(h("span", { class: n.online ? "dot on" : "dot off" }), n.online ? "online" : "offline");
    row.querySelector(".seen").textContent = n.online ? "now" : ago(n.last_seen);
  });
  return () => events.close();
}
