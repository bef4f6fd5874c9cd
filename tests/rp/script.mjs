// What both relying-party scripts (rp.mjs, rp-dpop.mjs) share: reading the lines the test writes to stdin, the code
// flow's request and the checks of its answer, and running main() with any failure on stderr and exit status 1.
import * as readline from "node:readline";

import * as client from "openid-client";

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

export const nextLine = async (what) => {
  const { value, done } = await lines.next();
  if (done) throw new Error(`stdin closed before the ${what}`);
  return value.trim();
};

export function run(main) {
  main().then(
    () => process.exit(0),
    (error) => {
      console.error(error?.stack ?? String(error));
      if (error?.cause) console.error("cause:", JSON.stringify(error.cause));
      process.exit(1);
    },
  );
}

// A code flow's authorization request (PKCE S256, nonce, state) and what the callback's grant must check: state, iss
// (RFC 9207), then the ID token (signature against JWKS, iss, aud, exp, iat, nonce).
export async function codeFlow(redirectUri) {
  const codeVerifier = client.randomPKCECodeVerifier();
  const nonce = client.randomNonce();
  const state = client.randomState();
  const parameters = {
    redirect_uri: redirectUri,
    scope: "openid profile email offline_access",
    code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: "S256",
    nonce,
    state,
  };
  const checks = { pkceCodeVerifier: codeVerifier, expectedNonce: nonce, expectedState: state, idTokenExpected: true };
  return { parameters, checks };
}
