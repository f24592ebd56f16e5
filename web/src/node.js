// A node: its labels and state, its connection history and sessions, and a terminal.
import { get } from "./api.js";
import { ago, h, when } from "./dom.js";

export async function show(main, { me, path, failed }) {
  const name = decodeURIComponent(path.slice("/web/node/".length));
  let data;
  try { data = await get(`/web/api/nodes/${encodeURIComponent(name)}`); } catch (err) { failed(err); return; }
  const n = data.node;
  const conns = data.events.filter((e) => e.type === "tunnel.connect" || e.type === "tunnel.disconnect");
  const sessions = data.events.filter((e) => e.type === "session.start" || e.type === "session.end");
  const firmware = data.events.filter((e) => e.type.startsWith("firmware."));
  const logins = me.logins.filter((l) => !l.startsWith("-remoteler-"));
  const loginSel = h("select", { id: "term-login" }, logins.map((l) => h("option", { value: l }, l)));
  const termBox = h("div", { id: "terminal", class: "terminal" });
  let close = null;
  const openBtn = h("button", { id: "open-terminal", type: "button", disabled: !n.online || !logins.length }, "Open terminal");
  const open = async (serial) => {
    if (close) close();
    termBox.replaceChildren();
    delete termBox.dataset.ended;
    const { openTerminal } = await import("./terminal.js");
    close = openTerminal(termBox, { node: n.name, login: loginSel.value, serial, baud: baudSel.value });
  };
  openBtn.addEventListener("click", () => open(null));
  const baudSel = h("select", { id: "serial-baud" }, ["9600", "19200", "38400", "57600", "115200", "230400"].map((b) => h("option", { value: b, selected: b === "115200" }, b)));
  const serialBtns = (n.online ? n.serial_ports || [] : []).map((p) =>
    h("button", { type: "button", class: "serial", dataset: { port: p }, onclick: () => open(p) }, `Serial console ${p}`));
  const table = (rows, cols) => h("table", { class: "grid" },
    h("thead", {}, h("tr", {}, cols.map(([t]) => h("th", {}, t)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, cols.map(([, f]) => h("td", {}, f(r)))))));
  main.append(
    h("h1", {}, n.name, " ", h("span", { class: n.online ? "dot on" : "dot off" }), h("small", {}, n.online ? "online" : `offline, last seen ${ago(n.last_seen)}`)),
    h("section", { class: "card" },
      h("dl", {},
        h("dt", {}, "Labels"), h("dd", {}, Object.entries(n.labels || {}).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`))),
        h("dt", {}, "Agent"), h("dd", {}, n.version || "–"),
        h("dt", {}, "SSH"), h("dd", {}, n.ssh || "–"),
        h("dt", {}, "Recording"), h("dd", {}, n.recording),
        h("dt", {}, "Serial ports"), h("dd", {}, (n.serial_ports || []).join(", ") || "–"),
        h("dt", {}, "Capabilities"), h("dd", {}, (n.caps || []).join(", ") || "–"),
        h("dt", {}, "Audit backlog"), h("dd", {}, String(n.audit_pending ?? 0)),
      )),
    h("section", { class: "card" }, h("h2", {}, "Terminal"),
      h("div", { class: "filters" }, h("label", {}, "Login ", loginSel), openBtn,
        serialBtns.length ? [h("label", {}, "Baud ", baudSel), serialBtns] : "",
        n.online ? "" : h("span", { class: "muted" }, " the node is offline")),
      termBox),
    h("section", { class: "card" }, h("h2", {}, "Sessions"),
      table(sessions, [["Time", (e) => when(e.time)], ["Event", (e) => e.type], ["User", (e) => e.user], ["Login", (e) => e.login],
        ["Session", (e) => e.session ? h("a", { href: `/web/play/${encodeURIComponent(e.session)}` }, e.session.slice(0, 8)) : ""]])),
    h("section", { class: "card" }, h("h2", {}, "Connection history"),
      table(conns, [["Time", (e) => when(e.time)], ["Event", (e) => e.type], ["Detail", (e) => e.fields.reason || e.fields.addr || ""]])),
    h("section", { class: "card" }, h("h2", {}, "Firmware"),
      table(firmware, [["Time", (e) => when(e.time)], ["Event", (e) => e.type], ["Version", (e) => e.fields.version || ""], ["Slot", (e) => e.fields.slot || ""]])),
  );
  return () => { if (close) close(); };
}
