// Operations: roll-outs with per-node progress, locks, join tokens, users and roles,
// and the cluster's status. Every change goes through the same RPC methods tctl calls.
import { call } from "./api.js";
import { clear, h, toast, when } from "./dom.js";


export async function show(main, { failed }) {
  const rollouts = h("section", { class: "card", id: "rollouts" });
  const locks = h("section", { class: "card", id: "locks" });
  const tokens = h("section", { class: "card", id: "tokens" });
  const people = h("section", { class: "card", id: "users" });
  const cluster = h("section", { class: "card", id: "cluster" });
  main.append(h("h1", {}, "Operations"), rollouts, locks, tokens, people, cluster);
  const guard = (f) => async (...a) => { try { await f(...a); } catch (err) { failed(err); } };

  const drawRollouts = guard(async () => {
    const items = await call("admin.firmware.status", {});
    clear(rollouts).append(h("h2", {}, "Firmware roll-outs"));
    if (!items.length) rollouts.append(h("p", { class: "muted" }, "No roll-outs yet: push one with tctl firmware push."));
    for (const r of items) {
      const detail = await call("admin.firmware.status", { rollout: r.id });
      const size = detail.size || 0;
      rollouts.append(h("div", { class: "rollout", dataset: { rollout: r.id, state: r.state } },
        h("h3", {}, `${r.name || r.id} → ${r.version} `, h("span", { class: `state ${r.state}` }, r.state),
          r.state === "running" ? h("button", { type: "button", class: "stop", onclick: guard(async () => {
            await call("admin.firmware.stop", { rollout: r.id, reason: "stopped from the web console" });
            drawRollouts();
          }) }, "Stop") : ""),
        h("table", { class: "grid" }, h("tbody", {}, detail.nodes.map((n) => {
          const pct = n.state === "installed" ? 100 : size ? Math.min(100, Math.round((100 * n.progress) / size)) : 0;
          return h("tr", { dataset: { node: n.node, state: n.state } },
            h("td", {}, n.node, n.canary ? " (canary)" : ""),
            h("td", {}, h("progress", { max: "100", value: String(pct) }), ` ${pct}%`),
            h("td", { class: "node-state" }, n.state), h("td", { class: "muted" }, n.detail || ""));
        })))));
    }
  });

  const drawLocks = guard(async () => {
    const items = await call("admin.locks.ls", {});
    const kind = h("select", { name: "kind" }, ["user", "login", "node"].map((k) => h("option", { value: k }, k)));
    const target = h("input", { name: "target", placeholder: "name", required: true });
    const message = h("input", { name: "message", placeholder: "message shown to the user" });
    const ttl = h("input", { name: "ttl", placeholder: "TTL, e.g. 1h (empty: until removed)" });
    const form = h("form", { class: "filters", id: "lock-form" }, kind, target, message, ttl, h("button", { type: "submit" }, "Create lock"));
    form.addEventListener("submit", guard(async (ev) => {
      ev.preventDefault();
      const params = { kind: kind.value, target: target.value, message: message.value };
      if (ttl.value.trim()) params.ttl = ttl.value.trim();
      await call("admin.locks.add", params);
      toast(`locked ${kind.value} ${target.value}`);
      drawLocks();
    }));
    clear(locks).append(h("h2", {}, "Locks"), form, h("table", { class: "grid" }, h("tbody", {}, items.map((l) => h("tr", { dataset: { lock: l.id } },
      h("td", {}, `${l.kind} ${l.target}`), h("td", {}, l.message || ""), h("td", {}, l.expires ? `until ${when(l.expires)}` : "until removed"),
      h("td", {}, h("button", { type: "button", onclick: guard(async () => { await call("admin.locks.rm", { lock_id: l.id }); drawLocks(); }) }, "Remove")))))));
  });

  const drawTokens = guard(async () => {
    const items = await call("admin.tokens.ls", {});
    const ttl = h("input", { name: "ttl", value: "1h" });
    const labels = h("input", { name: "labels", placeholder: "labels, e.g. env=prod,site=berlin" });
    const shown = h("div", { id: "token-commands" });
    const form = h("form", { class: "filters", id: "token-form" }, ttl, labels, h("button", { type: "submit" }, "Create join token"));
    form.addEventListener("submit", guard(async (ev) => {
      ev.preventDefault();
      const t = await call("admin.tokens.add", { kind: "node", ttl: ttl.value, labels: labels.value });
      const lbl = labels.value.trim() ? ` --labels ${labels.value.trim()}` : "";
      clear(shown).append(
        h("p", {}, `Single use, expires ${when(t.expires)}. Start the agent on the device with:`),
        h("pre", { class: "command", id: "start-command" }, `REMOTELER_JOIN_TOKEN=${t.token} edge-agent start --hub ${t.hub} --ca-pin ${t.ca_pin} --name NAME${lbl} --data-dir /var/lib/remoteler-agent`),
        h("p", {}, "or provision a device image with it:"),
        h("pre", { class: "command", id: "provision-command" }, `echo ${t.token} | firmware-tools provision --root /mnt/rootfs --hub ${t.hub} --ca-pin ${t.ca_pin} --token-stdin${lbl}`),
      );
      drawTokensList();
    }));
    const list = h("table", { class: "grid" });
    const drawTokensList = guard(async () => {
      const rows = await call("admin.tokens.ls", {});
      clear(list).append(h("tbody", {}, rows.map((t) => h("tr", {}, h("td", {}, t.token_id), h("td", {}, t.type), h("td", {}, Object.entries(t.labels || {}).map(([k, v]) => `${k}=${v}`).join(",")), h("td", {}, when(t.expires))))));
    });
    clear(tokens).append(h("h2", {}, "Join tokens"), form, shown, list);
    void items;
    drawTokensList();
  });

  const invite = h("div", { id: "invite" }); // outlives each redraw: it shows the last invite
  const drawPeople = guard(async () => {
    const [users, roles] = await Promise.all([call("admin.users.ls", {}), call("admin.roles.ls", {})]);
    const labels = (m) => Object.entries(m || {}).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join("|") : v}`).join(", ") || "–";
    const perms = (p) => Object.entries(p || {}).filter(([, v]) => v).map(([k]) => k).join(", ") || "–";
    const name = h("input", { name: "name", placeholder: "user name", required: true });
    const userRoles = h("input", { name: "roles", value: "access", placeholder: "roles, e.g. access,editor" });
    const userLogins = h("input", { name: "logins", placeholder: "logins, e.g. pi,root" });
    const userForm = h("form", { class: "filters", id: "user-form" }, name, userRoles, userLogins, h("button", { type: "submit" }, "Add user"));
    userForm.addEventListener("submit", guard(async (ev) => {
      ev.preventDefault();
      const out = await call("admin.users.add", { name: name.value, roles: userRoles.value, logins: userLogins.value });
      const d = out.data;
      clear(invite).append(h("p", {}, `User ${d.user} added. They finish with (single use, expires ${when(d.invite_expires)}):`),
        h("pre", { class: "command", id: "invite-command" }, `tsh login --proxy ${out.hub} --user ${d.user} --invite ${d.invite} --ca-pin ${d.ca_pin}`));
      drawPeople();
    }));
    const roleText = h("textarea", { name: "text", id: "role-text", rows: "7", cols: "60", placeholder: 'kind = "role"\nname = "ops"\n[allow]\nlogins = ["pi"]\nnode_labels = { env = "prod" }' });
    const roleForm = h("form", { id: "role-form", class: "filters" }, roleText, h("button", { type: "submit" }, "Save role"));
    roleForm.addEventListener("submit", guard(async (ev) => {
      ev.preventDefault();
      const out = await call("admin.roles.put", { text: roleText.value, file: "web console" });
      toast(`role ${out.role} ${out.updated ? "updated" : "created"}`);
      drawPeople();
    }));
    const remove = (method, params, what) => guard(async () => {
      if (!window.confirm(`Remove ${what}?`)) return;
      await call(method, params);
      drawPeople();
    });
    clear(people).append(h("h2", {}, "Users and roles"), userForm, invite,
      h("table", { class: "grid", id: "user-list" },
        h("thead", {}, h("tr", {}, ["User", "Roles", "Logins", ""].map((t) => h("th", {}, t)))),
        h("tbody", {}, users.map((u) => h("tr", { dataset: { user: u.name } }, h("td", {}, u.name), h("td", {}, (u.roles || []).join(", ")),
          h("td", {}, (u.logins || []).join(", ")),
          h("td", {}, h("button", { type: "button", class: "remove", onclick: remove("admin.users.rm", { name: u.name }, `user ${u.name}`) }, "Remove")))))),
      roleForm,
      h("table", { class: "grid", id: "role-list" },
        h("thead", {}, h("tr", {}, ["Role", "Logins", "Node labels", "Denied", "Permissions", "Max TTL", ""].map((t) => h("th", {}, t)))),
        h("tbody", {}, roles.map((r) => h("tr", {},
          h("td", {}, r.name), h("td", {}, (r.logins || []).join(", ") || "–"), h("td", {}, labels(r.node_labels)),
          h("td", {}, [...(r.deny_logins || []), labels(r.deny_node_labels)].filter((x) => x && x !== "–").join(", ") || "–"),
          h("td", {}, perms(r.permissions)), h("td", {}, r.max_session_ttl ? `${Math.round(r.max_session_ttl / 3600)} h` : "–"),
          h("td", {}, h("button", { type: "button", class: "remove", onclick: remove("admin.roles.rm", { name: r.name }, `role ${r.name}`) }, "Remove")))))));
  });

  const drawCluster = guard(async () => {
    const s = await call("admin.status", {});
    clear(cluster).append(h("h2", {}, "Cluster"),
      h("p", {}, `Cluster ${s.cluster}; this hub ${s.hub_id}; `,
        Object.entries(s.rotation || {}).map(([ca, r]) => h("span", { class: "label" }, `${ca} CA: ${r.phase || r}`))),
      h("table", { class: "grid" },
        h("thead", {}, h("tr", {}, ["Hub", "Address", "Agents", "Version", "Lease age"].map((t) => h("th", {}, t)))),
        h("tbody", {}, (s.hubs || []).map((x) => h("tr", {}, h("td", {}, x.id), h("td", {}, x.addr), h("td", {}, String(x.agents)), h("td", {}, x.version), h("td", {}, `${x.lease_age} s`))))));
  });

  await Promise.all([drawRollouts(), drawLocks(), drawTokens(), drawPeople(), drawCluster()]);
  const timer = setInterval(drawRollouts, 2000);
  return () => clearInterval(timer);
}
