// A terminal in the page: xterm.js over a websocket to the hub, which runs the SSH
// session to the device as the user (hub/web/terminal.py).
import { nonce } from "./nonce.js";
import { Terminal } from "./vendor/xterm.mjs";
import { FitAddon } from "./vendor/addon-fit.mjs";
import { csrfToken } from "./api.js";

export function openTerminal(container, { node, login, serial, baud, onEnd }) {
  void nonce; // loaded first: xterm's <style> elements carry the page's nonce
  const term = new Terminal({ cursorBlink: true, convertEol: false, fontSize: 14, scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(container);
  fit.fit();
  const q = new URLSearchParams({ node, login, cols: String(term.cols), rows: String(term.rows), csrf: csrfToken() });
  if (serial) { q.set("serial", serial); q.set("baud", String(baud || 115200)); }
  const ws = new WebSocket(`wss://${location.host}/web/api/terminal?${q}`);
  ws.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  let ended = false;
  const end = (message) => {
    if (ended) return;
    ended = true;
    term.write(`\r\n\x1b[1m${message}\x1b[0m\r\n`);
    container.dataset.ended = message;
    onEnd?.(message);
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      const msg = JSON.parse(ev.data);
      if (msg.type === "exit" || msg.type === "error") end(msg.message);
    } else {
      term.write(new Uint8Array(ev.data));
    }
  };
  ws.onclose = () => end("connection to the hub closed");
  term.onData((data) => { if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data)); });
  term.onResize(({ cols, rows }) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "resize", cols, rows }));
  });
  const onWindow = () => fit.fit();
  window.addEventListener("resize", onWindow);
  term.focus();
  return () => { window.removeEventListener("resize", onWindow); ws.close(); term.dispose(); };
}
