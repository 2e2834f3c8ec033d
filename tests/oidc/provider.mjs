// A real OpenID Connect provider for the sign-in tests: node + oidc-provider.
//
//   node provider.mjs FIXTURE.json
//
// FIXTURE.json: {"port": N, "clients": [oidc-provider client metadata...],
//                "accounts": {"alice": {"password": "...", "claims": {...}}}}
// Accounts are read from the file at every lookup, so a test can rewrite it to move a
// user to another institution between two logins. The login interaction is a plain HTML
// form (#username, #password, #submit) that an HTTP client or a browser can post; consent
// is given at once for whatever the client asked.
import fs from "node:fs";
import http from "node:http";
import { URLSearchParams } from "node:url";

import Provider from "oidc-provider";

const fixturePath = process.argv[2];
const fixture = () => JSON.parse(fs.readFileSync(fixturePath, "utf8"));
const { port, clients } = fixture();
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients,
  cookies: { keys: ["shangzhuang-test-cookie-key"] },
  claims: {
    openid: ["sub"],
    profile: ["preferred_username", "name"],
    email: ["email"],
    groups: ["groups"],
    institution: ["schac_home_organization"],
  },
  features: { devInteractions: { enabled: false } },
  pkce: { required: () => false },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, sub) {
    const account = fixture().accounts[sub];
    if (!account) return undefined;
    return {
      accountId: sub,
      async claims() {
        return { sub, preferred_username: sub, ...account.claims };
      },
    };
  },
});

const page = (uid, error) => `<!doctype html>
<html><head><title>Test identity provider</title></head><body>
<h1>Test identity provider</h1>
${error ? `<p id="error">${error}</p>` : ""}
<form method="post" action="/interaction/${uid}/login">
  <input id="username" name="username" autocomplete="username">
  <input id="password" name="password" type="password">
  <button id="submit" type="submit">Sign in</button>
</form></body></html>`;

async function readForm(req) {
  let body = "";
  for await (const chunk of req) body += chunk;
  return Object.fromEntries(new URLSearchParams(body));
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name === "login") {
    if (!action) {
      res.writeHead(200, { "content-type": "text/html" }).end(page(uid));
      return;
    }
    const { username, password } = await readForm(req);
    const account = fixture().accounts[username];
    if (!account || account.password !== password) {
      res.writeHead(401, { "content-type": "text/html" }).end(page(uid, "Wrong username or password"));
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: username } }, {
      mergeWithLastSubmission: false,
    });
    return;
  }
  // consent: grant what the client asked for, without asking
  const { prompt, params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(" "));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, {
    mergeWithLastSubmission: true,
  });
}

const callback = provider.callback();
http
  .createServer(async (req, res) => {
    const m = req.url.match(/^\/interaction\/([^/?]+)(\/login)?/);
    if (!m) return callback(req, res);
    try {
      await interaction(req, res, m[1], m[2]);
    } catch (err) {
      res.writeHead(400, { "content-type": "text/plain" }).end(`interaction failed: ${err.message}`);
    }
  })
  .listen(port, "127.0.0.1", () => console.log(`oidc provider on ${issuer}`));
