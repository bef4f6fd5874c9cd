"""How many SQL statements the hot endpoints run (bench/README.md: the waste removed stays removed).

The bounds are what the code needs today; a change that adds a query to one of these paths must say why here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from idp.extensions import db
from tests.support import (
    PASSWORD,
    RP_CALLBACK,
    authorize,
    authorize_url,
    csrf_token,
    listening,
    pkce_pair,
    query_params,
    recorded,
    screen_url,
    settled,
)


@dataclass(frozen=True)
class Looks:
    """What a request reads of the rows that almost never change (issue 22). On PostgreSQL each worker keeps the
    signing keys and the clients while its change listener is trusted (idp.changes), and reads neither: the
    fixture waits for the listener, as a worker serving traffic has it. Without one (SQLite) a request that signs
    reads one summary of the signing keys table (idp/oidc/keys.py), so that a key rotated by another process (a
    worker, an instance, `idp keys rotate`) signs from that request on, and a client-authenticated request reads
    its client (tests/test_change_notify.py, tests/test_scale_out.py). Reading tokens needs no look at the keys
    (a known key is never withdrawn early)."""

    keys: int
    client: int


def _first_word(statement: str) -> str:
    return statement.split()[0].upper()


@pytest.fixture
def looks(app) -> Looks:
    """The looks of this database: none with a trusted listener (PostgreSQL), one each without (SQLite)."""
    return Looks(keys=0, client=0) if listening(app) else Looks(keys=1, client=1)


def counted(app):
    """The first word of each statement sent inside the block (count them)."""
    return recorded(app, lambda conn, statement: _first_word(statement))


def chain(app) -> tuple[int, int]:
    """The statements the audit hash chain adds to a transaction that appends audit rows, however many, as
    (SELECTs, UPDATEs): it takes the append lock and reads the chain's end with the ids of all its rows (PostgreSQL:
    one SELECT pg_advisory_xact_lock, then the read, sent as one; SQLite: a no-op UPDATE that takes the write lock,
    then one SELECT); its rows go in as one INSERT."""
    with app.app_context():
        postgres = db.engine.dialect.name == "postgresql"
    return (1, 0) if postgres else (1, 1)


@pytest.fixture
def machine(app, make_client, looks):
    """A confidential client with client_credentials (and the listener started first, where there is one)."""
    client_id, secret = make_client(grant_types=["client_credentials"], redirect_uris=[])
    http = app.test_client()
    # The first request creates the signing keys; the counts below are for a warm worker, whose own commits'
    # notifications (the keys, the client) have come back and which has looked once more since (each notification
    # voids what it kept).
    for _ in range(2):
        response = http.post("/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret))
        assert response.status_code == 200
        settled(app)
    return http, client_id, secret


def test_client_credentials_token_request(app, machine, looks):
    http, client_id, secret = machine
    with counted(app) as statements:
        response = http.post("/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret))
    assert response.status_code == 200
    # the keys table's summary and the client (looks); the token row and its audit row (one commit); the audit
    # chain's lock and link
    selects, updates = chain(app)
    assert statements.count("SELECT") <= looks.keys + looks.client + selects, statements
    assert statements.count("INSERT") == 2, statements
    assert len(statements) <= looks.keys + looks.client + 5 + selects + updates, statements


def test_introspection(app, machine, looks):
    http, client_id, secret = machine
    token = http.post("/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)).get_json()
    with counted(app) as statements:
        response = http.post("/introspect", data={"token": token["access_token"]}, auth=(client_id, secret))
    assert response.get_json()["active"] is True
    # the client (looks), the token row (by jti)
    assert statements.count("SELECT") <= looks.client + 1, statements
    assert not {"INSERT", "UPDATE", "DELETE"} & set(statements), statements


def test_jwks_and_discovery_touch_the_database_little(app, machine, looks):
    http, _, _ = machine
    with counted(app) as statements:
        assert http.get("/.well-known/openid-configuration").status_code == 200
    assert statements == []
    assert http.get("/jwks.json").status_code == 200  # this worker builds its JWK Set
    with counted(app) as statements:
        assert http.get("/jwks.json").status_code == 200
    # at most one aggregate over the keys table: has any key changed since? (no: the kept JWK Set is served)
    assert statements == ["SELECT"] * looks.keys, statements


@pytest.fixture
def rp(make_user, make_client, looks):
    """Alice and a first-party confidential client, with a PKCE pair: (client_id, secret, verifier, challenge)."""
    make_user()
    client_id, secret = make_client(redirect_uris=[RP_CALLBACK], first_party=True)
    return client_id, secret, *pkce_pair()


def _authorize(client, rp, **params) -> str:
    """An authorization request with the PKCE challenge (signing in first if needed); its code."""
    return authorize(client, rp[0], code_challenge=rp[3], code_challenge_method="S256", **params)


def _authorize_url(rp, **params) -> str:
    return authorize_url(rp[0], code_challenge=rp[3], code_challenge_method="S256", **params)


def _exchange(client, rp, code):
    return client.post("/token", data={"grant_type": "authorization_code", "code": code, "code_verifier": rp[2],
                                       "redirect_uri": RP_CALLBACK}, auth=(rp[0], rp[1]))


@pytest.fixture
def signed_in_tokens(app, client, rp):
    """Tokens from a complete code flow for a first-party client with refresh tokens."""
    tokens = _exchange(client, rp, _authorize(client, rp, scope="openid offline_access")).get_json()
    settled(app)  # and one refresh after, for a warm worker (as in machine)
    tokens = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                         auth=(rp[0], rp[1])).get_json()
    return client, rp[0], rp[1], tokens


def test_userinfo(app, signed_in_tokens, looks):
    http, _, _, tokens = signed_in_tokens
    with counted(app) as statements:
        response = http.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]})
    assert response.status_code == 200
    # the token row with its user (joined), and the client it was issued to (looks)
    assert statements.count("SELECT") <= 1 + looks.client, statements
    assert not {"INSERT", "UPDATE", "DELETE"} & set(statements), statements


def transactional(app):
    """For each statement sent inside the block: its first word, and whether psycopg2 sent it inside a transaction
    (a BEGIN before it and a COMMIT or ROLLBACK after: two more round trips) rather than in autocommit."""
    return recorded(app, lambda conn, statement: (_first_word(statement),
                                          not conn.connection.dbapi_connection.autocommit))


def test_read_only_endpoints_open_no_transaction(app, signed_in_tokens):
    """jwks, userinfo and introspection only read: on PostgreSQL their statements go without BEGIN and ROLLBACK
    (two of userinfo's three round trips), and the connection goes back to the pool transactional, so the writes
    of the next request on it are still all or nothing."""
    with app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("autocommit reads are for PostgreSQL")
    http, client_id, secret, tokens = signed_in_tokens
    bearer = {"Authorization": "Bearer " + tokens["access_token"]}
    reads = {
        "jwks": lambda: http.get("/jwks.json"),
        "userinfo": lambda: http.get("/userinfo", headers=bearer),
        "introspection": lambda: http.post("/introspect", data={"token": tokens["access_token"]},
                                           auth=(client_id, secret)),
    }
    for name, call in reads.items():
        with transactional(app) as seen:
            assert call().status_code == 200, name
        # (the JWK Set is served from what the worker kept: it may read nothing)
        assert (seen or name == "jwks") and not any(inside for _, inside in seen), (name, seen)
        with transactional(app) as seen:
            response = http.post("/token", data={"grant_type": "refresh_token",
                                                 "refresh_token": tokens["refresh_token"]}, auth=(client_id, secret))
        assert response.status_code == 200, response.get_json()
        tokens = {**tokens, "refresh_token": response.get_json()["refresh_token"]}
        # the claim of the old token, the new token and the audit row: one transaction, whatever ran before
        assert {"UPDATE", "INSERT"} <= {word for word, _ in seen} and all(inside for _, inside in seen), seen


def test_refresh_with_rotation(app, signed_in_tokens, looks):
    http, client_id, secret, tokens = signed_in_tokens
    with counted(app) as statements:
        response = http.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                             auth=(client_id, secret))
    assert response.status_code == 200, response.get_json()
    # the keys table's summary and the client (looks), the token row with its user (one join); claim it (UPDATE);
    # the new token row and its audit row; one commit; the audit chain's lock and link
    selects, updates = chain(app)
    assert statements.count("SELECT") <= looks.keys + looks.client + 1 + selects, statements
    assert statements.count("UPDATE") == 1 + updates, statements
    assert statements.count("INSERT") == 2, statements
    assert len(statements) <= looks.keys + looks.client + 5 + selects + updates, statements


def test_an_authorization_request_that_begins_a_sign_in(app, client, rp, looks):
    """A browser without a session: the transaction is stored and the sign-in page shown in the same answer, with
    no redirect to the page and no read of what was just written."""
    client.get(_authorize_url(rp))  # a warm worker
    with counted(app) as statements:
        page = app.test_client().get(_authorize_url(rp))
    assert page.status_code == 200 and 'name="step" value="password"' in page.get_data(as_text=True)
    # the client (looks) and the transaction; nothing else: the page reads nothing back
    assert sorted(statements) == sorted(["INSERT"] + ["SELECT"] * looks.client), statements


def test_password_step_of_a_sign_in(app, client, rp, looks):
    """The password POST that completes a sign-in for a client and answers its authorization request at once: the
    planner asks each step whether it applies, and each asks for the client and the user's factors; those are read
    once per request, not once per step; the answer reads nothing back of what the sign-in just wrote."""
    form = client.get(_authorize_url(rp))  # the sign-in page, shown at once
    step_path = screen_url(form)
    with counted(app) as statements:
        response = client.post(step_path, data={"csrf_token": csrf_token(form), "step": "password",
                                                "email": "alice@example.com", "password": PASSWORD})
    assert response.status_code == 302 and response.headers["Location"].startswith(RP_CALLBACK), response.headers
    assert "code" in query_params(response.headers["Location"])
    # the transaction; the user; the factors (once; the client is the worker's kept one, and the recovery codes are
    # counted only when a second factor is to be chosen); the first-device check; then one flush and one commit:
    # the device, the session, the transaction, and the two audit rows in one INSERT (with the audit chain's
    # lock and link); then the authorization's answer: the transaction used up (UPDATE, committed), the code and
    # its session_clients row
    selects, updates = chain(app)
    assert statements.count("SELECT") <= 4 + looks.client + selects, statements
    assert statements.count("UPDATE") == 2 + updates, statements
    assert statements.count("INSERT") == 5, statements
    assert len(statements) <= 11 + looks.client + selects + updates, statements


def test_code_exchange(app, client, rp, looks):
    # The first exchange creates the signing keys; the count is for a warm worker (as in machine).
    for _ in range(2):
        assert _exchange(client, rp, _authorize(client, rp)).status_code == 200
        settled(app)
    code = _authorize(client, rp)
    with counted(app) as statements:
        response = _exchange(client, rp, code)
    assert response.status_code == 200 and "id_token" in response.get_json()
    # the keys table's summary and the client (looks); the code with its user (one join); claim it (UPDATE,
    # committed); the token row and its audit row (with the audit chain's lock and link)
    selects, updates = chain(app)
    assert statements.count("SELECT") <= looks.keys + looks.client + 1 + selects, statements
    assert statements.count("UPDATE") == 1 + updates, statements
    assert statements.count("INSERT") == 2, statements


def test_authorization_request_of_a_signed_in_user(app, client, rp):
    """Authlib validates the request again when it creates the response: the client is read once anyway."""
    _authorize(client, rp)  # signs in
    with counted(app) as statements:
        response = client.get(_authorize_url(rp))
    assert response.status_code == 302 and "code=" in response.headers["Location"], response.headers
    # the session, its user, the client (once; no consent lookup for a first-party client); the code, and the
    # client's part in the session (session_clients, one INSERT ... ON CONFLICT DO NOTHING: idp.oidc.logout tells
    # exactly these clients when the session ends)
    assert statements.count("SELECT") <= 3, statements
    assert statements.count("INSERT") == 2, statements


def test_authorization_request_with_a_nonce_checks_it_once(app, client, rp):
    """The nonce replay check runs once per request (Authlib validates the request twice), on an index."""
    _authorize(client, rp, nonce="n-0")  # signs in
    with counted(app) as statements:
        response = client.get(_authorize_url(rp, nonce="n-1"))
    assert response.status_code == 302 and "code=" in response.headers["Location"], response.headers
    # the session, its user, the client, the nonce (once each); the code and the client's part in the session
    assert statements.count("SELECT") <= 4, statements
    assert statements.count("INSERT") == 2, statements


def test_a_page_of_users_costs_the_same_for_five_users_as_for_forty(app, client):
    """The admin API's (and the console's) user list reads the page's admin roles and second factors in one query
    each, not one per user."""
    from tests.support import make_user_in
    from tests.test_admin_api import bearer, machine_token

    headers = bearer(machine_token(app, client, "idp:admin"))

    def selects() -> int:
        with counted(app) as statements:
            assert client.get("/admin/api/v1/users?limit=200", headers=headers).status_code == 200
        return statements.count("SELECT")

    for n in range(5):
        make_user_in(app, email=f"few{n}@example.com", is_admin=n == 0)
    few = selects()
    for n in range(35):
        make_user_in(app, email=f"many{n}@example.com", is_admin=n % 3 == 0)
    assert selects() == few
