// A third-party OAuth2 issuer for the tests (npm oauth2-mock-server): JWKS at /jwks, the
// client-credentials grant at /token. Form fields shape the token for negative tests:
// audience=…, scope=…, expired=1.   node tests/support/oauth_issuer.mjs PORT
import { OAuth2Server } from "oauth2-mock-server";

const server = new OAuth2Server();
await server.issuer.keys.generate("RS256");
server.service.on("beforeTokenSigning", (token, req) => {
  const body = req.body || {};
  token.payload.aud = body.audience || "tidings-api";
  token.payload.scope = body.scope || "notify";
  token.payload.client_id = body.client_id || "third-party-app";
  if (body.expired) {
    token.payload.iat = Math.floor(Date.now() / 1000) - 7200;
    token.payload.exp = Math.floor(Date.now() / 1000) - 3600;
  }
});
await server.start(Number(process.argv[2]), "127.0.0.1");
console.log(JSON.stringify({ issuer: server.issuer.url }));
