// Playback of a recorded session in xterm.js: play/pause, speed, seek to a time.
import { nonce } from "./nonce.js";
import { get } from "./api.js";
import { h, when } from "./dom.js";

export async function show(main, { path, failed }) {
  void nonce;
  const sid = decodeURIComponent(path.slice("/web/play/".length));
  let rec;
  try { rec = await get(`/web/api/sessions/${encodeURIComponent(sid)}`); } catch (err) { failed(err); return; }
  const { Terminal } = await import("./vendor/xterm.mjs");
  const frames = rec.frames.map(([ms, b64]) => [ms, Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))]);
  const total = frames.length ? frames[frames.length - 1][0] : 0;
  const box = h("div", { id: "player", class: "terminal" });
  const playBtn = h("button", { id: "play", type: "button" }, "Play");
  const speed = h("select", { id: "speed" }, ["0.5", "1", "2", "4", "16"].map((s) => h("option", { value: s, selected: s === "1" }, `${s}×`)));
  const seek = h("input", { id: "seek", type: "range", min: "0", max: String(total), value: "0", step: "10" });
  const clock = h("span", { id: "clock" }, "0.0 s");
  main.append(
    h("h1", {}, "Session ", h("code", {}, rec.session.slice(0, 8))),
    h("p", { class: "muted", id: "play-info" }, `${rec.user} as ${rec.login} on ${rec.node}, ${when(rec.time)}, ${(total / 1000).toFixed(1)} s, ${frames.length} frames`,
      rec.offline ? h("span", { class: "label offline" }, " recorded offline (the device's own listener) ") : ""),
    h("div", { class: "filters" }, playBtn, speed, seek, clock),
    box,
  );
  const term = new Terminal({ fontSize: 14, scrollback: 5000, disableStdin: true });
  term.open(box);
  let pos = 0; // index of the next frame
  let at = 0; // ms into the recording
  let timer = null;
  const render = () => { clock.textContent = `${(at / 1000).toFixed(1)} s`; seek.value = String(at); };
  const seekTo = (ms) => {
    term.reset();
    pos = 0;
    while (pos < frames.length && frames[pos][0] <= ms) term.write(frames[pos++][1]);
    at = ms;
    render();
  };
  const step = () => {
    if (pos >= frames.length) { pause(); box.dataset.done = "1"; return; }
    const [ms, data] = frames[pos++];
    term.write(data);
    at = ms;
    render();
    const next = pos < frames.length ? frames[pos][0] : ms;
    timer = setTimeout(step, Math.min(2000, (next - ms) / Number(speed.value)));
  };
  const pause = () => { clearTimeout(timer); timer = null; playBtn.textContent = "Play"; };
  playBtn.addEventListener("click", () => {
    if (timer) return pause();
    if (pos >= frames.length) seekTo(0);
    delete box.dataset.done;
    playBtn.textContent = "Pause";
    step();
  });
  seek.addEventListener("input", () => { const playing = !!timer; pause(); seekTo(Number(seek.value)); if (playing) playBtn.click(); });
  return () => { pause(); term.dispose(); };
}
