// The peer of bench/run.py: panva's oidc-provider (pinned in package-lock.json) configured like idp's bench
// setup: one confidential first-party client (client_credentials, authorization_code, refresh_token with
// rotation), RS256 JWT access tokens for a resource server (resource indicators, accessTokenFormat 'jwt'),
// introspection and userinfo, and a minimal sign-in interaction that checks an argon2id password hash with idp's
// parameters (t=3, m=64 MiB, p=4), so that sign-ins cost the same hashing work. Its state (sessions, grants,
// codes, refresh and opaque access tokens) lives in memory, or, with PEER_DATABASE_URL set, in a PostgreSQL table
// written before each answer (the durable store idp has; its JWT access tokens are not stored either way).
// Idle pool connections are kept open: a PostgreSQL backend that exits takes its CPU time out of the bench's count.
//
// Usage: node server.js PORT ISSUER  (settings and secrets come from the environment, see bench/run.py).
// Listens on 127.0.0.1 only. Prints "ready" on stdout when it accepts requests.
import http from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';

import argon2 from 'argon2';
import Provider from 'oidc-provider';
import pg from 'pg';

const port = Number(process.argv[2] || 8602);
const issuer = process.argv[3] || 'https://localhost:8602';
const env = process.env;
const API = env.PEER_RESOURCE || 'https://localhost/api';
const CLIENT_ID = env.PEER_CLIENT_ID;
const CLIENT_SECRET = env.PEER_CLIENT_SECRET;
const REDIRECT_URI = env.PEER_REDIRECT_URI;
const USERS = new Map(); // email -> { id, hash }
const HASH_OPTIONS = { type: argon2.argon2id, timeCost: 3, memoryCost: 65536, parallelism: 4 };

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid: 'peer-rs256' };

// An unbounded in-memory adapter: oidc-provider's own is an LRU of 1000 entries, which a bench run outgrows
// (grants evicted under load make refresh tokens invalid). State lives for the run only.
const STORE = new Map();
class MemoryAdapter {
  constructor(model) { this.model = model; }
  key(id) { return `${this.model}:${id}`; }
  async upsert(id, payload) {
    STORE.set(this.key(id), payload);
    if (payload.grantId) {
      const grantKey = `grant:${payload.grantId}`;
      const list = STORE.get(grantKey) || [];
      list.push(this.key(id));
      STORE.set(grantKey, list);
    }
    if (payload.uid) STORE.set(`${this.model}:uid:${payload.uid}`, id);
    if (payload.userCode) STORE.set(`${this.model}:userCode:${payload.userCode}`, id);
  }
  async find(id) { return STORE.get(this.key(id)); }
  async findByUid(uid) { const id = STORE.get(`${this.model}:uid:${uid}`); return id ? this.find(id) : undefined; }
  async findByUserCode(code) {
    const id = STORE.get(`${this.model}:userCode:${code}`);
    return id ? this.find(id) : undefined;
  }
  async consume(id) { const p = STORE.get(this.key(id)); if (p) p.consumed = Math.floor(Date.now() / 1000); }
  async destroy(id) { STORE.delete(this.key(id)); }
  async revokeByGrantId(grantId) {
    for (const key of STORE.get(`grant:${grantId}`) || []) STORE.delete(key);
    STORE.delete(`grant:${grantId}`);
  }
}

// The durable variant: one row per stored object, each write committed (and flushed, PostgreSQL's default) before
// oidc-provider answers. Expired rows are not returned; lookups by uid, user code and grant have their indexes.
const pool = env.PEER_DATABASE_URL
  ? new pg.Pool({ connectionString: env.PEER_DATABASE_URL, max: 8, idleTimeoutMillis: 0 }) : null;
const SCHEMA = `CREATE TABLE IF NOT EXISTS oidc_store (
  model text NOT NULL, id text NOT NULL, payload jsonb NOT NULL, grant_id text, uid text, user_code text,
  expires_at timestamptz, consumed_at timestamptz, PRIMARY KEY (model, id));
CREATE INDEX IF NOT EXISTS oidc_store_grant ON oidc_store (grant_id);
CREATE INDEX IF NOT EXISTS oidc_store_uid ON oidc_store (model, uid);
CREATE INDEX IF NOT EXISTS oidc_store_user_code ON oidc_store (model, user_code)`;
const LIVE = '(expires_at IS NULL OR expires_at > now())';

class PostgresAdapter {
  constructor(model) { this.model = model; }
  async upsert(id, payload, expiresIn) {
    await pool.query(
      `INSERT INTO oidc_store (model, id, payload, grant_id, uid, user_code, expires_at)
       VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $7::int IS NULL THEN NULL ELSE now() + make_interval(secs => $7) END)
       ON CONFLICT (model, id) DO UPDATE SET payload = EXCLUDED.payload, grant_id = EXCLUDED.grant_id,
         uid = EXCLUDED.uid, user_code = EXCLUDED.user_code, expires_at = EXCLUDED.expires_at`,
      [this.model, id, payload, payload.grantId ?? null, payload.uid ?? null, payload.userCode ?? null,
        expiresIn ?? null]);
  }
  async _one(where, value) {
    const { rows } = await pool.query(
      `SELECT payload, consumed_at FROM oidc_store WHERE model = $1 AND ${where} = $2 AND ${LIVE}`,
      [this.model, value]);
    if (!rows.length) return undefined;
    const [{ payload, consumed_at: consumed }] = rows;
    return consumed ? { ...payload, consumed: Math.floor(consumed.getTime() / 1000) } : payload;
  }
  find(id) { return this._one('id', id); }
  findByUid(uid) { return this._one('uid', uid); }
  findByUserCode(code) { return this._one('user_code', code); }
  async consume(id) {
    await pool.query('UPDATE oidc_store SET consumed_at = now() WHERE model = $1 AND id = $2', [this.model, id]);
  }
  async destroy(id) { await pool.query('DELETE FROM oidc_store WHERE model = $1 AND id = $2', [this.model, id]); }
  async revokeByGrantId(grantId) { await pool.query('DELETE FROM oidc_store WHERE grant_id = $1', [grantId]); }
}

const configuration = {
  adapter: pool ? PostgresAdapter : MemoryAdapter,
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    grant_types: ['client_credentials', 'authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [REDIRECT_URI],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: 'openid profile email offline_access api',
  }],
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'profile', 'email', 'offline_access', 'api'],
  claims: { openid: ['sub'], profile: ['name'], email: ['email', 'email_verified'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    userinfo: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // client_credentials without a resource gets the API's JWT (like idp's token); a sign-in names the resource
      // to get JWTs, or none to get the opaque userinfo token that oidc-provider's userinfo and introspection need.
      defaultResource: (ctx) => (ctx.oidc.params?.grant_type === 'client_credentials' ? API : undefined),
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'openid profile email offline_access api',
        audience: CLIENT_ID,
        accessTokenFormat: 'jwt',
        accessTokenTTL: 900,
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  pkce: { required: () => false },
  // Refresh tokens rotate on every use (idp does the same).
  rotateRefreshToken: true,
  issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token'),
  ttl: {
    AccessToken: 900, AuthorizationCode: 60, IdToken: 3600, RefreshToken: 1209600, Interaction: 1800,
    Session: 43200, Grant: 1209600, ClientCredentials: 900,
  },
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, name: 'Bench User', email: `${sub}@example.com`, email_verified: true }),
  }),
  // First-party client: no consent screen, the grant is created on the fly (idp's --first-party).
  loadExistingGrant: async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const existing = await ctx.oidc.provider.Grant.find(grantId);
      if (existing) return existing;
    }
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid profile email offline_access');
    grant.addResourceScope(API, 'openid profile email offline_access api');
    await grant.save();
    return grant;
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
};

const provider = new Provider(issuer, configuration);
provider.proxy = true; // the bench sends X-Forwarded-Proto: https, as to idp

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString()));
    req.on('error', reject);
  });
}

function page(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

async function interaction(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return page(res, 400, 'wrong interaction');
  if (req.method === 'GET') {
    return page(res, 200, `<form method="post" action="/interaction/${uid}">
      <input name="email"><input name="password" type="password"><button>Sign in</button></form>`);
  }
  const form = new URLSearchParams(await readBody(req));
  const user = USERS.get(form.get('email') || '');
  // Unknown users cost the same hashing work (as in idp).
  const ok = await argon2.verify(user ? user.hash : DUMMY, form.get('password') || '') && !!user;
  if (!ok) return page(res, 200, 'Incorrect email or password.');
  return provider.interactionFinished(req, res, { login: { accountId: user.id } }, { mergeWithLastSubmission: false });
}

let DUMMY = '';
const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  try {
    const match = /^\/interaction\/([^/?]+)/.exec(req.url);
    if (match) return await interaction(req, res, match[1]);
    return callback(req, res);
  } catch (err) {
    page(res, 500, String(err && err.message));
  }
});

if (pool) await pool.query(SCHEMA);

// Seed the sign-in users: PEER_USERS="email1,email2,..." sharing PEER_PASSWORD (one hash, like idp's seed).
const shared = await argon2.hash(env.PEER_PASSWORD || 'correct horse battery staple', HASH_OPTIONS);
DUMMY = await argon2.hash('no-such-account-placeholder', HASH_OPTIONS);
(env.PEER_USERS || '').split(',').filter(Boolean).forEach((email, i) => USERS.set(email, { id: `user${i}`, hash: shared }));

server.listen(port, '127.0.0.1', () => console.log('ready'));
