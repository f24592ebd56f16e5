// Builds hub/web/static from src/ and the pinned xterm.js in node_modules (no bundler:
// the console is plain ES modules served by the hub; docs/decisions.md says why).
import { cpSync, mkdirSync, rmSync, writeFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "hub", "web", "static");
rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "vendor"), { recursive: true });
for (const name of readdirSync(join(here, "src"))) {
  cpSync(join(here, "src", name), join(out, name));
}
const vendor = [
  ["@xterm/xterm/lib/xterm.mjs", "xterm.mjs"],
  ["@xterm/xterm/css/xterm.css", "xterm.css"],
  ["@xterm/addon-fit/lib/addon-fit.mjs", "addon-fit.mjs"],
  ["@xterm/xterm/LICENSE", "xterm.LICENSE"],
];
for (const [from, to] of vendor) {
  cpSync(join(here, "node_modules", from), join(out, "vendor", to));
}
writeFileSync(join(out, ".built"), new Date().toISOString() + "\n");
console.log(`web console built into ${out}`);
