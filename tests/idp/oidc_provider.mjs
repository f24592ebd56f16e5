// A real OpenID Provider for the SSO tests (docs/sso.md): oidc-provider, a certified
// implementation, on 127.0.0.1. Started by tests/oidckit.py; never shipped.
//
//   node oidc_provider.mjs CONFIG.json
//
// CONFIG: { "issuer": null | "http://127.0.0.1:PORT" (default: this server's own URL),
//           "clients": [{ client_id, client_secret, redirect_uris }],
//           "users": { "alice": { "groups": ["ops"], "email": "alice@example.com" } },
//           "jwks": { "keys": [...] } (optional: the signing keys, private JWKs) }
// Prints {"port": N} on stdout when listening. Logins go through oidc-provider's own
// development interaction pages (a login form, then a consent form).
import fs from "node:fs";
import http from "node:http";
import Provider from "oidc-provider";

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const server = http.createServer();

server.listen(0, "127.0.0.1", () => {
  const { port } = server.address();
  const issuer = config.issuer || `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: config.clients.map((c) => ({
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_basic",
      ...c,
    })),
    claims: {
      openid: ["sub"],
      profile: ["preferred_username", "name"],
      email: ["email", "email_verified"],
      // the test's users' other claims ride on the groups scope
      groups: ["groups", "logins", "env"],
    },
    scopes: ["openid", "profile", "email", "groups", "offline_access"],
    pkce: { methods: ["S256"], required: () => true },
    features: { devInteractions: { enabled: true } },
    cookies: { keys: ["remoteler-test-cookie-key"] },
    ...(config.jwks ? { jwks: config.jwks } : {}),
    async findAccount(ctx, id) {
      const user = config.users[id];
      if (!user) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            preferred_username: user.preferred_username || id,
            name: id,
            email: user.email || `${id}@example.com`,
            email_verified: true,
            groups: user.groups || [],
            logins: user.logins || [],
            env: user.env || [],
          };
        },
      };
    },
  });
  provider.on("server_error", (ctx, err) => console.error("server_error", err));
  server.on("request", provider.callback());
  process.stdout.write(JSON.stringify({ port, issuer }) + "\n");
});

for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => server.close(() => process.exit(0)));
