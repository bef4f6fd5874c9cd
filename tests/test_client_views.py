"""The endpoints that only read a client get the worker's kept, read-only view of it (idp.oidc.server.ClientView),
not a model of their own: the token endpoint's grants, introspection, revocation, and a token's client at userinfo.

A worker keeps a view only once PostgreSQL's listener is trusted, and hands it out from a client's second request
on, so most of the suite never meets one. Here the tests below, taken from the modules that own them, run again with
every such client handed out as a view from its first read, on any database: a grant or an endpoint that comes to
need the model (a relationship, the session, a change to the client) fails here. The fixture also checks that each
test did go through a view, and the last tests what a refused client authentication says (the same for a client
that does not exist as for a wrong secret; the registered method when one identified the client).
"""

from __future__ import annotations

import base64
import json

import pytest
from sqlalchemy import select

from idp.extensions import db
from idp.models import Client, table_of
from idp.oidc import server

# The tests run again here, and the fixtures they take from their modules.
from tests.test_device import (  # noqa: F401
    test_the_whole_flow_with_a_second_factor_gives_tokens_once,
    tv,
)
from tests.test_oidc_protocol import (  # noqa: F401
    jwt_client,
    machine,
    public,
    test_a_token_whose_client_is_gone_is_refused_at_userinfo_and_inactive,
    test_client_credentials_issues_an_access_token_only,
    test_introspection_by_another_client_says_inactive,
    test_introspection_of_an_active_token_describes_it,
    test_private_key_jwt_authenticates_and_refuses_a_replayed_assertion,
    test_private_key_jwt_client_cannot_use_a_secret_or_nothing,
    test_public_client_may_revoke_its_token,
    test_public_client_refresh_rotates_too,
    test_refresh_token_is_stored_hashed_and_rotated,
    test_reusing_a_rotated_refresh_token_revokes_the_family,
    test_revoking_a_refresh_token_revokes_its_family,
    test_revoking_an_access_token_is_seen_by_userinfo_and_introspection,
    test_second_use_of_a_code_fails_and_revokes_what_the_first_use_issued,
    test_userinfo_by_get_header_post_header_and_post_body,
)
from tests.test_token_exchange import (  # noqa: F401
    services,
    test_a_chain_nests_the_actors,
    test_a_web_app_exchanges_alices_token_for_one_addressed_to_its_api,
)

_CLIENTS = table_of(Client)


@pytest.fixture(autouse=True)
def views_from_the_first_read(request, monkeypatch):
    """Every client a view may serve is a view, read afresh (Core, not into the session) when the worker keeps
    none; as in the worker, not when the request's session holds the client (it gets the model then)."""
    kept_view = server._KeptClients.view
    handed_out: list[str] = []

    def view(self, client_id: str):
        found = kept_view(self, client_id)
        if found is None:
            session = db.session()
            held = any(key[0] is Client and getattr(session.identity_map.get(key), "client_id", None) == client_id
                       for key in list(session.identity_map.keys()))
            if held:
                return None
            row = session.connection().execute(select(_CLIENTS).where(_CLIENTS.c.client_id == client_id)).first()
            found = server.ClientView(row) if row is not None else None
        if found is not None:
            handed_out.append(client_id)
        return found

    monkeypatch.setattr(server._KeptClients, "view", view)
    yield
    if request.node.function.__module__ != __name__:  # one of the tests run again here
        assert handed_out, "the test never went through a client view"


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def test_an_unknown_client_and_a_wrong_secret_get_the_same_answer(app, client, machine):  # noqa: F811
    """No client_id enumeration: Authlib words an unknown client apart ("does not exist") and answers a secret in
    the body with 400 for it but 401 for a wrong one; idp gives both the same status and description (401 with
    the Authorization header, 400 without: RFC 6749 5.2)."""
    client_id, _ = machine
    for credentials in ({"headers": _basic(client_id, "wrong")}, {"headers": _basic("no-such-client", "wrong")}):
        answer = client.post("/token", data={"grant_type": "client_credentials"}, **credentials)
        assert answer.status_code == 401 and answer.get_json() == {
            "error": "invalid_client", "error_description": "Client authentication failed."}
        assert answer.headers["WWW-Authenticate"].startswith("Basic")
    for client_id_sent in (client_id, "no-such-client"):
        answer = client.post("/token", data={"grant_type": "client_credentials", "client_id": client_id_sent,
                                             "client_secret": "wrong"})
        assert (answer.status_code, answer.get_json()["error_description"]) == (
            400, "Client authentication failed."), client_id_sent
        assert "WWW-Authenticate" not in answer.headers


def test_a_client_identified_by_another_method_is_told_the_one_it_is_registered_for(app, client, machine):  # noqa: F811
    client_id, secret = machine
    answer = client.post("/token", data={"grant_type": "client_credentials", "client_id": client_id,
                                         "client_secret": secret})
    assert answer.status_code == 401 and answer.get_json()["error_description"] == (
        "This client is registered to authenticate with client_secret_basic.")


def test_a_valid_assertion_of_a_secret_client_is_told_its_registered_method(app, client, jwt_client):  # noqa: F811
    """A client registered for client_secret_basic that also has keys sends a valid private_key_jwt assertion: it
    is refused with its registered method named (the refusal does not run the methods again, which spent the
    assertion's jti a second time and answered "JWT ID is used before")."""
    from tests.test_oidc_protocol import assertion, jwt_auth

    jwt_client_id, key = jwt_client
    with app.app_context():
        db.session.execute(db.update(Client).where(Client.client_id == jwt_client_id)
                           .values(token_endpoint_auth_method="client_secret_basic"))
        db.session.commit()
    answer = client.post("/token", data=jwt_auth(assertion(jwt_client_id, key), grant_type="client_credentials"))
    assert answer.status_code == 401 and answer.get_json()["error_description"] == (
        "This client is registered to authenticate with client_secret_basic."), answer.get_json()


def test_a_views_key_set_is_a_copy_at_each_read(app, jwt_client):  # noqa: F811
    """The one JSON object of a client (its JWK Set) is the view's own, and each read gets a copy of it: what one
    request does to what it read cannot reach the next request's."""
    jwt_client_id, _ = jwt_client
    with app.app_context():
        view = server.ClientView(db.session.execute(select(Client).where(Client.client_id == jwt_client_id))
                                 .scalar_one())
    keys = view.client_metadata["jwks"]["keys"]
    keys.clear()
    assert view.jwks is not None and len(view.jwks["keys"]) == 1 and view.jwks is not view.jwks
    with pytest.raises(AttributeError):
        view.jwks = {"keys": []}


@pytest.mark.parametrize("client_id", ["", "x" * 65, "a\x00b", "é" * 64, "%00", " ", "machine\n"])
def test_an_id_no_client_can_have_is_refused_as_any_unknown_client(app, client, machine, client_id):  # noqa: F811
    """Odd ids through the view's lookup (Basic credentials, a body secret, an assertion's sub): invalid_client in
    the same words as any unknown client, never a 500."""
    from tests.test_oidc_protocol import jwt_auth

    basic = "Basic " + base64.b64encode(f"{client_id}:secret".encode()).decode()
    unsigned = ".".join(base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=") for part in (
        {"alg": "RS256"}, {"iss": client_id, "sub": client_id, "aud": "http://localhost/token"})) + ".c2ln"
    cc = {"grant_type": "client_credentials"}
    for path, kwargs in (("/token", {"data": cc, "headers": {"Authorization": basic}}),
                         ("/introspect", {"data": {"token": "x"}, "headers": {"Authorization": basic}}),
                         ("/token", {"data": {"grant_type": "client_credentials", "client_id": client_id,
                                              "client_secret": "secret"}}),
                         ("/token", {"data": jwt_auth(unsigned, grant_type="client_credentials")})):
        answer = client.post(path, **kwargs)
        # (a NUL sent as a field itself is refused before anything, as invalid_request: idp.http.refuse_nul)
        expected = "invalid_request" if any("\x00" in value for value in kwargs["data"].values()) else \
            "invalid_client"
        assert answer.status_code in (400, 401) and answer.get_json()["error"] == expected, (path, answer.data)
