"""`idp clients ...` and the demo client, through Flask's CLI runner, checked by what the registered clients can then
do at the protocol endpoints."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from idp.extensions import db
from idp.models import Client
from tests.support import audit_events, begun_sign_in, make_client_in, ok, path_of, refused, sign_in

REDIRECT_URI = "https://rp.example/cb"
ISSUER = "http://localhost"
JWT_CLIENT = ["--grant-type", "client_credentials", "--token-endpoint-auth-method", "private_key_jwt"]


def created(output: str) -> tuple[str, str | None]:
    """client_id and client_secret from the text output of `clients create`."""
    client_id = re.search(r"^client_id: +(\S+)$", output, re.M)
    secret = re.search(r"^client_secret: +(\S+)$", output, re.M)
    assert client_id, output
    return client_id.group(1), secret.group(1) if secret else None


def create_json(cli, *args) -> dict:
    output = ok(cli("clients", "create", "--json", *args))
    assert len(output.strip().splitlines()) == 1, output
    return json.loads(output)


def client_ids(cli) -> list[str]:
    return [line.split("\t")[0] for line in ok(cli("clients", "list")).splitlines()]


def token_request(client, client_id, secret, **data):
    return client.post("/token", data=data, auth=(client_id, secret))


def secret_is_accepted(client, client_id, secret) -> bool:
    """Whether /token authenticates the client: a made-up code is then invalid_grant, not invalid_client."""
    response = token_request(client, client_id, secret, grant_type="authorization_code", code="made-up",
                             redirect_uri=REDIRECT_URI)
    if response.status_code == 401:
        assert response.get_json()["error"] == "invalid_client"
        return False
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant", response.get_json()
    return True


# --- create -------------------------------------------------------------------------------------------------------

def test_create_prints_the_id_and_the_secret_once(app, cli, client):
    output = ok(cli("clients", "create", "--name", "Shop", "--redirect-uri", REDIRECT_URI))
    client_id, secret = created(output)
    assert secret and len(secret) >= 40
    assert "shown only now" in output
    assert secret_is_accepted(client, client_id, secret)
    assert not secret_is_accepted(client, client_id, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    # Never again: not in the listing, not in show, not stored in clear.
    assert secret not in ok(cli("clients", "list"))
    assert secret not in ok(cli("clients", "show", client_id))
    with app.app_context():
        row = db.session.execute(db.select(Client).where(Client.client_id == client_id)).scalar_one()
        assert row.client_secret_hash and secret not in row.client_secret_hash


def test_create_json_prints_one_object(cli, client):
    body = create_json(cli, "--name", "Shop", "--redirect-uri", REDIRECT_URI)
    assert set(body) == {"client_id", "client_secret"}
    assert secret_is_accepted(client, body["client_id"], body["client_secret"])


def test_public_client_gets_no_secret(cli):
    output = ok(cli("clients", "create", "--name", "SPA", "--public", "--redirect-uri", "http://127.0.0.1:3000/cb"))
    client_id, secret = created(output)
    assert secret is None and "secret" not in output
    assert json.loads(ok(cli("clients", "show", client_id)))["token_endpoint_auth_method"] == "none"
    body = create_json(cli, "--name", "SPA 2", "--public", "--redirect-uri", "http://localhost:3000/cb")
    assert body["client_secret"] is None


def test_authorization_code_client_needs_a_redirect_uri(cli):
    line = refused(cli("clients", "create", "--name", "Shop"))
    assert "--redirect-uri" in line
    assert client_ids(cli) == []


def test_client_credentials_client_needs_no_redirect_uri_and_its_secret_works(cli, client):
    body = create_json(cli, "--name", "Batch", "--grant-type", "client_credentials")
    shown = json.loads(ok(cli("clients", "show", body["client_id"])))
    assert shown["grant_types"] == ["client_credentials"] and shown["redirect_uris"] == []
    response = token_request(client, body["client_id"], body["client_secret"], grant_type="client_credentials")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["access_token"]


@pytest.mark.parametrize(("args", "message"), [
    (["--redirect-uri", "https://rp.example/cb#top"], "fragment"),
    (["--redirect-uri", "http://rp.example/cb"], "loopback"),
    (["--redirect-uri", "rp.example/cb"], "absolute"),
    (["--redirect-uri", REDIRECT_URI, "--post-logout-redirect-uri", "http://rp.example/bye"], "loopback"),
    (["--redirect-uri", REDIRECT_URI, "--scope", "openid", "--scope", "admin"], "unknown scopes: admin"),
    (JWT_CLIENT + ["--jwks", '{"keys": "x"}'], "not a usable JWK Set"),
    (JWT_CLIENT + ["--jwks", '{"keys": [{"kty": "RSA"}]}'], "not a usable JWK Set"),
    (JWT_CLIENT + ["--jwks", '{"keys": [{"kty": "oct", "k": "c2VjcmV0LXNoYXJlZC13aXRoLXRoZS1zZXJ2ZXI"}]}'],
     "RSA and EC public keys only"),
    (JWT_CLIENT + ["--jwks", json.dumps({"keys": [RSAKey.generate_key(2048, private=True).as_dict(private=True)]})],
     "private key"),
    (JWT_CLIENT + ["--jwks-uri", "ftp://keys.example/jwks"], "https URL"),
    (JWT_CLIENT + ["--jwks-uri", "http://keys.example/jwks"], "https URL"),
])
def test_bad_settings_are_refused_in_one_line_and_nothing_is_created(cli, args, message):
    assert message in refused(cli("clients", "create", "--name", "Shop", *args))
    assert client_ids(cli) == []


def test_a_name_beyond_200_characters_is_refused_in_one_line(cli):
    assert "1 to 200 characters" in refused(cli("clients", "create", "--name", "S" * 201, "--redirect-uri",
                                                REDIRECT_URI))
    assert "1 to 200 characters" in refused(cli("clients", "create", "--name", "  ", "--redirect-uri", REDIRECT_URI))
    assert client_ids(cli) == []


def test_a_client_whose_stored_jwks_is_unusable_gets_invalid_client_not_500(app, client):
    """A JWK Set stored before registration checked it (or edited in the database) fails the assertion cleanly."""
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
    client_id, _ = make_client_in(app, name="JWT", redirect_uris=[], grant_types=["client_credentials"],
                                  auth_method="private_key_jwt", jwks={"keys": [key.as_dict(private=False)]})
    with app.app_context():
        db.session.execute(db.update(Client).where(Client.client_id == client_id).values(jwks={"keys": "x"}))
        db.session.commit()
    now = int(time.time())
    signed = jwt.encode({"alg": "RS256", "kid": "k1"}, {"iss": client_id, "sub": client_id, "aud": ISSUER + "/token",
                                                        "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex},
                        key, algorithms=["RS256"])
    response = client.post("/token", data={
        "grant_type": "client_credentials", "client_assertion": signed,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
    assert response.status_code in (400, 401) and response.get_json()["error"] == "invalid_client"


def test_client_ids_never_start_with_a_dash(cli, monkeypatch):
    """A random id like "-x..." would read as an option in `idp clients show ID`."""
    from idp.oidc import registration as oidc_cli

    real, ids = oidc_cli.new_token, iter(["-looks-like-an-option", "plain-id"])
    monkeypatch.setattr(oidc_cli, "new_token", lambda nbytes=32: next(ids) if nbytes == 16 else real(nbytes))
    body = create_json(cli, "--name", "Shop", "--redirect-uri", REDIRECT_URI)
    assert body["client_id"] == "plain-id"
    assert json.loads(ok(cli("clients", "show", "plain-id")))["client_id"] == "plain-id"


# --- list, show ---------------------------------------------------------------------------------------------------

def test_list_shows_each_client_without_secrets(cli):
    shop = create_json(cli, "--name", "Shop", "--redirect-uri", REDIRECT_URI)
    batch = create_json(cli, "--name", "Batch", "--grant-type", "client_credentials",
                        "--token-endpoint-auth-method", "client_secret_post")
    output = ok(cli("clients", "list"))
    rows = [line.split("\t") for line in output.splitlines()]
    assert rows == [
        [shop["client_id"], "Shop", "client_secret_basic", "authorization_code,refresh_token", REDIRECT_URI],
        [batch["client_id"], "Batch", "client_secret_post", "client_credentials", ""],
    ]
    assert shop["client_secret"] not in output and batch["client_secret"] not in output


def test_show_prints_the_settings_as_json_without_the_secret(cli):
    body = create_json(cli, "--name", "Shop", "--redirect-uri", REDIRECT_URI, "--post-logout-redirect-uri",
                       "https://rp.example/bye", "--scope", "openid", "--scope", "email", "--first-party",
                       "--id-token-alg", "ES256")
    output = ok(cli("clients", "show", body["client_id"]))
    shown = json.loads(output)
    assert shown["client_id"] == body["client_id"] and shown["name"] == "Shop"
    assert shown["redirect_uris"] == [REDIRECT_URI]
    assert shown["post_logout_redirect_uris"] == ["https://rp.example/bye"]
    assert shown["scope"] == "openid email" and shown["first_party"] is True
    assert shown["id_token_signed_response_alg"] == "ES256"
    assert shown["token_endpoint_auth_method"] == "client_secret_basic"
    assert body["client_secret"] not in output and "secret" not in " ".join(shown)


@pytest.mark.parametrize("command", ["show", "delete", "rotate-secret"])
def test_unknown_client_is_refused_in_one_line(cli, command):
    assert refused(cli("clients", command, "nope")) == "Error: no client with id nope"


# --- delete -------------------------------------------------------------------------------------------------------

def _user_tokens(client, client_id, secret) -> dict:
    """Signed-in Alice's tokens for a first-party client (code flow with PKCE)."""
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    response = client.get(f"/authorize?response_type=code&client_id={client_id}&redirect_uri={REDIRECT_URI}"
                          f"&scope=openid%20email%20offline_access&state=s&code_challenge={challenge}"
                          "&code_challenge_method=S256")
    for _ in range(5):
        assert response.status_code == 302, response.get_data(as_text=True)
        location = response.headers["Location"]
        if location.startswith(REDIRECT_URI):
            break
        response = client.get(path_of(location))
    code = re.search(r"[?&]code=([^&]+)", location).group(1)
    response = token_request(client, client_id, secret, grant_type="authorization_code", code=code,
                             redirect_uri=REDIRECT_URI, code_verifier=verifier)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _userinfo(client, access_token):
    return client.get("/userinfo", headers={"Authorization": "Bearer " + access_token})


def test_delete_removes_the_client_and_its_tokens_stop_working(cli, client, make_user):
    make_user()
    signed_in = sign_in(client, "alice@example.com")
    assert signed_in.status_code == 302
    client.get(path_of(signed_in.headers["Location"]))  # the pipeline finishes: a login session
    shop = create_json(cli, "--name", "Shop", "--redirect-uri", REDIRECT_URI, "--first-party")
    other = create_json(cli, "--name", "Other", "--redirect-uri", REDIRECT_URI, "--first-party")
    tokens = _user_tokens(client, shop["client_id"], shop["client_secret"])
    kept = _user_tokens(client, other["client_id"], other["client_secret"])
    assert _userinfo(client, tokens["access_token"]).status_code == 200

    assert ok(cli("clients", "delete", shop["client_id"])) == f"deleted {shop['client_id']}\n"
    assert client_ids(cli) == [other["client_id"]]
    assert _userinfo(client, tokens["access_token"]).status_code == 401
    response = token_request(client, shop["client_id"], shop["client_secret"], grant_type="refresh_token",
                             refresh_token=tokens["refresh_token"])
    assert response.status_code == 401 and response.get_json()["error"] == "invalid_client"
    assert refused(cli("clients", "show", shop["client_id"])).startswith("Error: no client with id")
    assert _userinfo(client, kept["access_token"]).status_code == 200  # other clients' tokens are untouched


def test_client_changes_are_audited(app, cli):
    """SECURITY.md 29: creating, rotating the secret of and deleting a client each leave an audit event."""
    body = create_json(cli, "--name", "Shop", "--redirect-uri", REDIRECT_URI)
    ok(cli("clients", "rotate-secret", body["client_id"]))
    ok(cli("clients", "delete", body["client_id"]))
    for event in ("client.created", "client.secret_rotated", "client.deleted"):
        rows = audit_events(app, event)
        assert [row.client_id for row in rows] == [body["client_id"]], event


# --- rotate-secret ------------------------------------------------------------------------------------------------

def test_rotate_secret_replaces_the_old_one(cli, client):
    body = create_json(cli, "--name", "Batch", "--grant-type", "client_credentials")
    output = ok(cli("clients", "rotate-secret", body["client_id"]))
    match = re.fullmatch(r"client_secret: (\S+)\n", output)
    assert match, output
    new = match.group(1)
    assert new != body["client_secret"]
    old_try = token_request(client, body["client_id"], body["client_secret"], grant_type="client_credentials")
    assert old_try.status_code == 401 and old_try.get_json()["error"] == "invalid_client"
    new_try = token_request(client, body["client_id"], new, grant_type="client_credentials")
    assert new_try.status_code == 200, new_try.get_json()


def test_rotate_secret_of_a_public_client_is_refused(cli):
    body = create_json(cli, "--name", "SPA", "--public", "--redirect-uri", "http://127.0.0.1:3000/cb")
    assert "no secret" in refused(cli("clients", "rotate-secret", body["client_id"]))


# --- demo ---------------------------------------------------------------------------------------------------------

def _demo_client(output: str) -> tuple[str, str, str]:
    """client_id, client_secret and the authorization URL that `idp demo` printed."""
    match = re.search(r"^Demo client: +client_id=(\S+) client_secret=(\S+)$", output, re.M)
    assert match, output
    urls = [line.strip() for line in output.splitlines() if "/authorize?" in line]
    assert len(urls) == 1, output
    return match.group(1), match.group(2), urls[0]


def test_demo_creates_its_client_once_and_its_url_starts_a_sign_in(app, cli, client, tmp_path):
    app.instance_path = str(tmp_path / "instance")  # keep the demo credentials out of the work tree
    (tmp_path / "instance").mkdir()
    first = _demo_client(ok(cli("demo")))
    second = _demo_client(ok(cli("demo")))
    assert first[:2] == second[:2] and first[2] != second[2]  # the same client; a fresh state and nonce each run
    client_id, secret, url = first
    assert client_ids(cli) == [client_id]
    assert url.startswith(app.config["IDP_ISSUER"] + "/authorize?")
    assert secret_is_accepted(client, client_id, secret)
    shown = json.loads(ok(cli("clients", "show", client_id)))
    assert re.search(r"redirect_uri=(\S+?)&", url).group(1) in shown["redirect_uris"]

    page = client.get(path_of(url))
    begun_sign_in(page)
    assert "Sign in" in page.get_data(as_text=True)


def test_per_client_access_token_lifetime_is_what_the_token_says(app, make_user):
    """`--access-token-ttl` overrides IDP_ACCESS_TOKEN_TTL for that client's tokens."""
    import json

    runner = app.test_cli_runner()
    created = runner.invoke(args=["clients", "create", "--name", "Short", "--grant-type", "client_credentials",
                                  "--access-token-ttl", "120", "--json"])
    assert created.exit_code == 0, created.output
    ids = json.loads(created.output)
    token = app.test_client().post("/token", data={"grant_type": "client_credentials"},
                                   auth=(ids["client_id"], ids["client_secret"])).get_json()
    assert token["expires_in"] == 120
    shown = json.loads(runner.invoke(args=["clients", "show", ids["client_id"]]).output)
    assert shown["access_token_ttl"] == 120
    refused = runner.invoke(args=["clients", "create", "--name", "Bad", "--grant-type", "client_credentials",
                                  "--access-token-ttl", "5"])
    assert refused.exit_code != 0 and "between 60 seconds and a year" in refused.output


@pytest.mark.parametrize(("changes", "message"), [
    ({"grant_types": ["authorization_code", "password"]}, "unsupported grant type password"),  # RFC 9700 2.4
    ({"grant_types": ["implicit"]}, "unsupported grant type implicit"),
    ({"auth_method": "tls_client_auth"}, "unsupported token endpoint auth method tls_client_auth"),
    ({"id_token_alg": "none"}, "the ID token algorithm must be RS256 or ES256"),
    ({"id_token_alg": "HS256"}, "the ID token algorithm must be RS256 or ES256"),
    ({"min_acr": "urn:example:gold"}, "unknown level urn:example:gold"),
    ({"scopes": ["openid", "admin"]}, "unknown scopes: admin"),
    ({"jwks_uri": "not a url", "auth_method": "private_key_jwt"}, "invalid jwks_uri"),
])
def test_registration_metadata_is_checked_against_what_the_server_supports(app, changes, message):
    """create_client validates like dynamic registration (RFC 7591 2, OIDC Registration 2): what discovery does not
    advertise cannot be registered."""
    from idp.oidc.registration import create_client

    settings = {"name": "Shop", "redirect_uris": [REDIRECT_URI], "post_logout_redirect_uris": [], "public": False,
                "grant_types": ["authorization_code"], "scopes": ["openid"], "auth_method": None,
                "first_party": False, **changes}
    with app.app_context():
        with pytest.raises(ValueError) as refusal:
            create_client(**settings)
        assert str(refusal.value).startswith(message)
        assert db.session.execute(db.select(Client)).first() is None
