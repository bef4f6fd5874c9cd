// A public relying party built on openid-client that pushes its authorization request (RFC 9126) and binds its
// tokens to a DPoP key (RFC 9449), driven by tests/test_oidc_rp.py. It knows only the issuer URL.
//
//   node rp-dpop.mjs ISSUER CLIENT_ID REDIRECT_URI
//
// stdout line 1: {"authorizationUrl": ..., "publicJwk": ...} (the URL from /par; the DPoP key's public half).
// stdin line 1: the callback URL the browser was sent to. stdout line 2: one JSON object with the results.
// Any failure: the error on stderr and exit status 1.

import * as client from "openid-client";

import { codeFlow, nextLine, run } from "./script.mjs";

const [issuer, clientId, redirectUri] = process.argv.slice(2);
if (!redirectUri) {
  console.error("usage: node rp-dpop.mjs ISSUER CLIENT_ID REDIRECT_URI");
  process.exit(2);
}

async function main() {
  // A public client (token_endpoint_auth_method none); http is refused by default, the issuer is on loopback.
  const config = await client.discovery(new URL(issuer), clientId, undefined, client.None(), {
    execute: [client.allowInsecureRequests],
  });
  const keyPair = await client.randomDPoPKeyPair(); // ES256
  const DPoP = client.getDPoPHandle(config, keyPair);
  const { parameters, checks } = await codeFlow(redirectUri);
  // POSTs the request to pushed_authorization_request_endpoint with a DPoP proof (RFC 9449 10.1: the code is bound
  // to the key), and answers /authorize?client_id=...&request_uri=...
  const authorizationUrl = await client.buildAuthorizationUrlWithPAR(config, parameters, { DPoP });
  const publicJwk = await crypto.subtle.exportKey("jwk", keyPair.publicKey);
  console.log(JSON.stringify({ authorizationUrl: authorizationUrl.href, publicJwk }));

  const callback = new URL(await nextLine("callback URL"));
  const tokens = await client.authorizationCodeGrant(config, callback, checks, undefined, { DPoP });
  const claims = tokens.claims();
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub, { DPoP });
  // A public client's refresh token is bound to the key too: this refresh carries a proof by it.
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token, undefined, { DPoP });
  const refreshedUserinfo = await client.fetchUserInfo(config, refreshed.access_token, claims.sub, { DPoP });
  // The same refresh token without a proof (as a thief without the key would send it).
  let refreshWithoutProof;
  try {
    await client.refreshTokenGrant(config, refreshed.refresh_token);
    refreshWithoutProof = "accepted";
  } catch (error) {
    refreshWithoutProof = error.error ?? String(error);
  }
  console.log(JSON.stringify({
    claims,
    tokenType: tokens.token_type,
    accessToken: tokens.access_token,
    userinfo,
    refreshedTokenType: refreshed.token_type,
    refreshedAccessToken: refreshed.access_token,
    refreshTokenChanged: refreshed.refresh_token !== tokens.refresh_token,
    refreshedUserinfoSub: refreshedUserinfo.sub,
    refreshWithoutProof,
  }));
}

run(main);
