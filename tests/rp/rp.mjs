// A relying party built on openid-client, driven by tests/test_oidc_rp.py. It knows only the issuer URL.
//
//   node rp.mjs ISSUER CLIENT_ID REDIRECT_URI POST_LOGOUT_REDIRECT_URI
//
// stdin line 1: the client secret (kept out of argv). stdout line 1: {"authorizationUrl": ...}.
// stdin line 2: the callback URL the browser was sent to. stdout line 2: one JSON object with the results.
// Any failure: the error on stderr and exit status 1.

import * as client from "openid-client";

import { codeFlow, nextLine, run } from "./script.mjs";

const [issuer, clientId, redirectUri, postLogoutRedirectUri] = process.argv.slice(2);
if (!postLogoutRedirectUri) {
  console.error("usage: node rp.mjs ISSUER CLIENT_ID REDIRECT_URI POST_LOGOUT_REDIRECT_URI");
  process.exit(2);
}

async function main() {
  const clientSecret = await nextLine("client secret");
  // http is refused by default; the issuer is a loopback test server.
  const config = await client.discovery(new URL(issuer), clientId, clientSecret, undefined, {
    execute: [client.allowInsecureRequests],
  });
  const { parameters, checks } = await codeFlow(redirectUri);
  const authorizationUrl = client.buildAuthorizationUrl(config, parameters);
  console.log(JSON.stringify({ authorizationUrl: authorizationUrl.href }));

  const callback = new URL(await nextLine("callback URL"));
  const tokens = await client.authorizationCodeGrant(config, callback, checks);
  const claims = tokens.claims();
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
  const refreshedUserinfo = await client.fetchUserInfo(config, refreshed.access_token, claims.sub);
  await client.tokenRevocation(config, refreshed.refresh_token, { token_type_hint: "refresh_token" });
  let refreshAfterRevocation;
  try {
    await client.refreshTokenGrant(config, refreshed.refresh_token);
    refreshAfterRevocation = "accepted";
  } catch (error) {
    refreshAfterRevocation = error.error ?? String(error);
  }
  const endSessionUrl = client.buildEndSessionUrl(config, {
    id_token_hint: tokens.id_token,
    post_logout_redirect_uri: postLogoutRedirectUri,
    state: "rp-signed-out",
  });
  console.log(JSON.stringify({
    claims,
    scope: tokens.scope,
    userinfo,
    refreshTokenChanged: refreshed.refresh_token !== tokens.refresh_token,
    accessTokenChanged: refreshed.access_token !== tokens.access_token,
    refreshedUserinfoSub: refreshedUserinfo.sub,
    refreshedClaims: refreshed.id_token ? refreshed.claims() : null,
    revoked: true,
    refreshAfterRevocation,
    endSessionUrl: endSessionUrl.href,
  }));
}

run(main);
