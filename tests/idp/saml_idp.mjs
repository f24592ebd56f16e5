// A real SAML 2.0 identity provider for the SSO tests (docs/sso-saml.md), on loopback.
//
//   node saml_idp.mjs --key KEY.pem --cert CERT.pem --users USERS.json
//                     [--host 127.0.0.1] [--port 0] [--entity-id URL]
//
// Prints the port it listens on (one line) once it accepts connections.
//
//   GET  /metadata  the IdP's metadata (signing certificate, HTTP-Redirect SSO endpoint)
//   GET  /sso       an AuthnRequest (HTTP-Redirect binding): an HTML login form
//   POST /login     username (+ the request, carried by the form): an auto-submitting
//                   form that POSTs a signed SAMLResponse to the SP's ACS URL
//
// USERS.json: {"alice": {"groups": ["ops"], "email": "alice@example.com",
//              "urn:oid:2.5.4.42": {"friendly_name": "givenName", "values": ["Alice"]}}}
// The NameID is the user name. Every key is an attribute (a string or a list of
// strings; or {friendly_name, values}).
//
// Test knobs (a real IdP has none of these): the login form's optional field `sign`
// is "assertion" (default: the assertion is signed, as the hub requires) or
// "response" (the Response is signed, the assertion inside is not); `lifetime` is the
// assertion's validity in seconds (default 300); `status` a top-level StatusCode other
// than Success (e.g. Responder), to answer with an error.
//
// Any SP is served: its entity id and ACS URL are taken from the AuthnRequest (the
// Issuer and AssertionConsumerServiceURL), as a test IdP may; a real IdP has them
// registered. AuthnRequests are not signed by the hub, so none is checked.

import { readFileSync } from 'node:fs';
import http from 'node:http';
import samlify from 'samlify';

const MAX_BODY = 256 * 1024;

function parseArgs(argv) {
  const args = { host: '127.0.0.1', port: '0' };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i];
    const value = argv[i + 1];
    if (!name.startsWith('--') || value === undefined) {
      throw new Error(`usage: saml_idp.mjs --key K --cert C --users U [--port P]: bad ${name}`);
    }
    args[name.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = value;
  }
  for (const required of ['key', 'cert', 'users']) {
    if (!args[required]) throw new Error(`saml_idp.mjs: --${required} is required`);
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
const users = JSON.parse(readFileSync(args.users, 'utf8'));
const privateKey = readFileSync(args.key, 'utf8');
const signingCert = readFileSync(args.cert, 'utf8');

// samlify asks for an XML schema validator for what it parses. The test IdP parses only
// the hub's AuthnRequests, and samlify's own parser refuses XML that is not well formed.
samlify.setSchemaValidator({ validate: async () => 'not validated (test IdP)' });

function escapeXml(value) {
  return String(value)
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;');
}

function page(res, status, title, body) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(`<!doctype html><html><head><meta charset="utf-8"><title>${escapeXml(title)}</title></head>`
    + `<body>${body}</body></html>`);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function attributeStatement(user) {
  const parts = [];
  for (const [name, spec] of Object.entries(user)) {
    let friendly = null;
    let values = spec;
    if (spec && typeof spec === 'object' && !Array.isArray(spec)) {
      friendly = spec.friendly_name ?? null;
      values = spec.values;
    }
    values = Array.isArray(values) ? values : [values];
    const friendlyAttr = friendly ? ` FriendlyName="${escapeXml(friendly)}"` : '';
    const nameFormat = name.startsWith('urn:')
      ? 'urn:oasis:names:tc:SAML:2.0:attrname-format:uri'
      : 'urn:oasis:names:tc:SAML:2.0:attrname-format:basic';
    const valueXml = values
      .map((v) => `<saml:AttributeValue xsi:type="xs:string">${escapeXml(v)}</saml:AttributeValue>`)
      .join('');
    parts.push(`<saml:Attribute Name="${escapeXml(name)}"${friendlyAttr} NameFormat="${nameFormat}">`
      + `${valueXml}</saml:Attribute>`);
  }
  return parts.length ? `<saml:AttributeStatement>${parts.join('')}</saml:AttributeStatement>` : '';
}

function makeIdp(base) {
  return samlify.IdentityProvider({
    entityID: args.entityId || `${base}/metadata`,
    privateKey,
    signingCert,
    wantAuthnRequestsSigned: false,
    isAssertionEncrypted: false,
    nameIDFormat: ['urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified'],
    singleSignOnService: [{ Binding: samlify.Constants.namespace.binding.redirect, Location: `${base}/sso` }],
  });
}

// Parses an AuthnRequest (HTTP-Redirect encoding); the SP it names, and the request.
async function parseRequest(idp, query) {
  const anySp = samlify.ServiceProvider({ entityID: 'urn:test:any-sp' });
  const parsed = await idp.parseLoginRequest(anySp, 'redirect', { query });
  const request = parsed.extract.request || {};
  const issuer = parsed.extract.issuer;
  const acs = request.assertionConsumerServiceUrl;
  if (!issuer || !acs) throw new Error('the AuthnRequest names no Issuer or AssertionConsumerServiceURL');
  return { parsed, issuer: String(issuer), acs: String(acs) };
}

async function loginResponse(idp, req, username, sign, lifetime, status) {
  const user = users[username];
  const sp = samlify.ServiceProvider({
    entityID: req.issuer,
    assertionConsumerService: [{ Binding: samlify.Constants.namespace.binding.post, Location: req.acs }],
    wantAssertionsSigned: sign !== 'response',
    wantMessageSigned: false,
  });
  const idpSetting = idp.entitySetting;
  const now = new Date();
  const later = new Date(now.getTime() + lifetime * 1000).toISOString();
  const id = idpSetting.generateID();
  const replace = (template) => {
    const rendered = samlify.SamlLib.replaceTagsByValue(template, {
      ID: id,
      AssertionID: idpSetting.generateID(),
      Destination: req.acs,
      Audience: req.issuer,
      SubjectRecipient: req.acs,
      Issuer: idp.entityMeta.getEntityID(),
      IssueInstant: now.toISOString(),
      StatusCode: status ? `urn:oasis:names:tc:SAML:2.0:status:${status}` : samlify.Constants.StatusCode.Success,
      ConditionsNotBefore: now.toISOString(),
      ConditionsNotOnOrAfter: later,
      SubjectConfirmationDataNotOnOrAfter: later,
      NameIDFormat: 'urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified',
      NameID: username,
      InResponseTo: req.parsed.extract.request.id,
      AuthnStatement: 'AUTHNSTATEMENTMARK',
      AttributeStatement: 'ATTRIBUTESTATEMENTMARK',
    });
    const authn = `<saml:AuthnStatement AuthnInstant="${now.toISOString()}" SessionIndex="${idpSetting.generateID()}">`
      + '<saml:AuthnContext><saml:AuthnContextClassRef>'
      + 'urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport'
      + '</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement>';
    return {
      id,
      context: rendered
        .replace('AUTHNSTATEMENTMARK', () => authn)
        .replace('ATTRIBUTESTATEMENTMARK', () => attributeStatement(user)),
    };
  };
  return idp.createLoginResponse(sp, req.parsed, 'post', { email: username }, { customTagReplacement: replace });
}

function autoPost(res, action, samlResponse, relayState) {
  const relay = relayState ? `<input type="hidden" name="RelayState" value="${escapeXml(relayState)}">` : '';
  page(res, 200, 'Signing in',
    `<form method="post" action="${escapeXml(action)}">`
    + `<input type="hidden" name="SAMLResponse" value="${escapeXml(samlResponse)}">${relay}`
    + '<noscript><button type="submit">Continue</button></noscript></form>'
    + '<script>document.forms[0].submit()</script>');
}

async function handle(req, res, base, idp) {
  const url = new URL(req.url, base);
  if (req.method === 'GET' && url.pathname === '/metadata') {
    res.writeHead(200, { 'content-type': 'application/samlmetadata+xml' });
    res.end(idp.getMetadata());
    return;
  }
  if (req.method === 'GET' && url.pathname === '/sso') {
    const query = Object.fromEntries(url.searchParams);
    try {
      await parseRequest(idp, query);
    } catch (err) {
      page(res, 400, 'Bad request', `<p>bad AuthnRequest: ${escapeXml(err.message || err)}</p>`);
      return;
    }
    const hidden = ['SAMLRequest', 'RelayState']
      .filter((k) => query[k] !== undefined)
      .map((k) => `<input type="hidden" name="${k}" value="${escapeXml(query[k])}">`)
      .join('');
    page(res, 200, 'Test IdP: sign in',
      `<form method="post" action="/login">${hidden}`
      + '<label>User name <input name="username" autofocus></label>'
      + '<button type="submit">Sign in</button></form>');
    return;
  }
  if (req.method === 'POST' && url.pathname === '/login') {
    const form = Object.fromEntries(new URLSearchParams(await readBody(req)));
    const username = form.username || '';
    if (!Object.hasOwn(users, username)) {
      page(res, 403, 'Unknown user', `<p>no such user: ${escapeXml(username)}</p>`);
      return;
    }
    const sign = form.sign || 'assertion';
    const lifetime = Number(form.lifetime || 300);
    const status = form.status || '';
    if (!['assertion', 'response'].includes(sign) || !(lifetime > 0) || !/^[A-Za-z]*$/.test(status)) {
      page(res, 400, 'Bad request', '<p>sign: assertion or response; lifetime > 0; status: a name</p>');
      return;
    }
    let request;
    try {
      request = await parseRequest(idp, { SAMLRequest: form.SAMLRequest, RelayState: form.RelayState });
    } catch (err) {
      page(res, 400, 'Bad request', `<p>bad AuthnRequest: ${escapeXml(err.message || err)}</p>`);
      return;
    }
    const out = await loginResponse(idp, request, username, sign, lifetime, status);
    autoPost(res, request.acs, out.context, form.RelayState);
    return;
  }
  page(res, 404, 'Not found', '<p>not found</p>');
}

let base = null;
let idp = null;
const server = http.createServer((req, res) => {
  handle(req, res, base, idp).catch((err) => {
    process.stderr.write(`saml_idp: ${err.stack || err}\n`);
    if (!res.headersSent) page(res, 500, 'Error', '<p>internal error</p>');
    else res.end();
  });
});
server.headersTimeout = 10_000;
server.requestTimeout = 10_000;
server.listen(Number(args.port), args.host, () => {
  base = `http://${args.host}:${server.address().port}`;
  idp = makeIdp(base);
  process.stdout.write(`${server.address().port}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
