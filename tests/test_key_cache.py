"""What each worker keeps of the signing keys follows the keys table, whoever changed it (SECURITY.md 14; README
"Scaling out"). Another worker is played here by a second key cache on the same database; tests/test_scale_out.py
does the same with real processes on PostgreSQL, and tests/test_change_notify.py with the change listener."""

from __future__ import annotations

import base64
import json

from sqlalchemy import event

from idp.extensions import db
from idp.oidc import keys
from tests.support import listening, settled


def kid_of(token: str) -> str:
    head = token.split(".", 1)[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"]


def rotated_elsewhere(app) -> dict[str, str]:
    """`idp keys rotate` in another process: this app's kept keys are left as they were. {alg: new kid}."""
    this_worker = app.extensions["idp.keys"]
    with app.app_context():
        app.extensions["idp.keys"] = keys._KeyCache()
        try:
            fresh = {row.alg: row.kid for row in keys.rotate(max_token_lifetime=600)}
        finally:
            app.extensions["idp.keys"] = this_worker
    return fresh


def test_a_worker_signs_with_a_key_rotated_elsewhere_from_its_next_request(app, make_client):
    client_id, secret = make_client(grant_types=["client_credentials"], redirect_uris=[])
    http = app.test_client()

    def token() -> str:
        response = http.post("/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret))
        assert response.status_code == 200, response.get_json()
        return response.get_json()["access_token"]

    before = kid_of(token())
    fresh = rotated_elsewhere(app)
    assert before != fresh["RS256"]
    after = token()
    assert kid_of(after) == fresh["RS256"]  # not the retired key until a timer runs out
    inspected = http.post("/introspect", data={"token": after}, auth=(client_id, secret)).get_json()
    assert inspected["active"] is True


def test_a_kid_that_no_key_has_costs_one_look_and_no_reload(app, make_client):
    """A forged header cannot make a worker decrypt its keys again: it costs one aggregate over the keys table, or
    none while the change listener is trusted (PostgreSQL: no change to the table was notified)."""
    notified = listening(app)
    client_id, secret = make_client(grant_types=["client_credentials"], redirect_uris=[])
    http = app.test_client()
    real = http.post("/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)).get_json()
    # A warm worker: the keys' own notification has come back and been looked at (tests/test_queries.py machine).
    settled(app)
    assert http.post("/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)).status_code == 200
    head, payload, signature = real["access_token"].split(".")
    forged_head = base64.urlsafe_b64encode(json.dumps({"alg": "RS256", "typ": "at+jwt", "kid": "rs256-forged"})
                                           .encode()).rstrip(b"=").decode()
    kept = app.extensions["idp.keys"]
    signing, verifying = kept.signing, kept.verifying
    statements: list[str] = []
    with app.app_context():
        engine = db.engine

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement.split()[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        for _ in range(3):
            answer = http.get("/userinfo", headers={"Authorization": f"Bearer {forged_head}.{payload}.{signature}"})
            assert answer.status_code == 401
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert statements == ([] if notified else ["SELECT"] * 3), statements
    assert kept.signing is signing and kept.verifying is verifying


def test_jwks_and_discovery_revalidate_with_their_etags_and_a_rotation_changes_the_jwks_one(app, client):
    """Issue 22: the documents are prepared once; a relying party that revalidates gets a 304, until the keys
    change (RFC 9110 13.1.2, 15.4.5)."""
    for path in ("/jwks.json", "/.well-known/openid-configuration"):
        first = client.get(path)
        assert first.status_code == 200 and first.headers["ETag"] and "public" in first.headers["Cache-Control"]
        again = client.get(path, headers={"If-None-Match": first.headers["ETag"]})
        assert again.status_code == 304 and not again.data
    before = client.get("/jwks.json")
    new_kids = set(rotated_elsewhere(app).values())
    after = client.get("/jwks.json", headers={"If-None-Match": before.headers["ETag"]})
    assert after.status_code == 200 and after.headers["ETag"] != before.headers["ETag"]
    assert new_kids <= {key["kid"] for key in after.get_json()["keys"]}
