"""The admin REST API (idp.admin.api over idp.admin.service): bearer tokens with idp:* scopes, roles, problem
documents, keyset pagination, audited actions, and an OpenAPI document that describes every route."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idp.extensions import db
from idp.models import AuditEvent, LoginSession, User
from tests.support import authorize, authorize_url, enrol_totp_in, make_client_in, make_user_in, walk

API = "/admin/api/v1"


def machine_token(app, client, *scopes: str) -> str:
    """An access token from the client_credentials grant of a client registered with ``scopes``."""
    client_id, secret = make_client_in(app, name="Ops robot", redirect_uris=[], grant_types=["client_credentials"],
                                       scopes=list(scopes))
    response = client.post("/token", data={"grant_type": "client_credentials", "scope": " ".join(scopes)},
                           auth=(client_id, secret))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def admin(app, client) -> dict[str, str]:
    return bearer(machine_token(app, client, "idp:admin"))


def user_id(app, email: str) -> int:
    with app.app_context():
        return db.session.execute(db.select(User.id).where(User.email == email)).scalar_one()


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == "application/problem+json"
    body = response.get_json()
    assert body["status"] == status and body["title"] and body["type"]
    return body


def _api_routes(app) -> list[tuple[str, str]]:
    """Every (method, path) of the admin API, from the app's URL map, with a sample user id."""
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(API):
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                routes.append((method, rule.rule.replace("<int:user_id>", "1").replace("<sid>", "{sid}")
                               .replace("<client_id>", "{client_id}").replace("<role>", "{role}")))
    return routes


def test_every_route_refuses_a_caller_without_a_valid_admin_token(app, client, make_user):
    """The routes come from the app's URL map, so a new one cannot be left open by mistake."""
    make_user()
    routes = _api_routes(app)
    assert len(routes) >= 10
    for method, path in routes:
        missing = assert_problem(client.open(path, method=method, json={}), 401)
        assert missing["title"] == "Authentication required"
        response = client.open(path, method=method, json={}, headers=bearer("not-a-token"))
        assert_problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="idp-admin", error="invalid_token"')


def _user_token(browser, client_id: str, secret: str, scope: str, email: str, totp: str | None = None) -> dict:
    """Sign ``email`` in at /authorize for ``scope`` (answering the TOTP step with ``totp``'s current code) and
    redeem the code; the walk's screens are in the answer under "screens"."""
    from idp.models import utcnow
    from idp.security.otp import totp_code_at

    answers = {"totp": lambda page: {"code": totp_code_at(totp, utcnow())}} if totp else {}
    result = walk(browser, authorize_url(client_id, scope=scope), email=email, answers=answers)
    response = browser.post("/token", data={"grant_type": "authorization_code", "code": result.code,
                                            "redirect_uri": "https://rp.example/cb"}, auth=(client_id, secret))
    assert response.status_code == 200, response.get_json()
    return {**response.get_json(), "screens": result.screens}


def test_a_user_token_without_an_admin_scope_is_refused_whatever_the_user(app, client, make_user):
    make_user(is_admin=True)
    client_id, secret = make_client_in(app, redirect_uris=["https://rp.example/cb"], first_party=True)
    tokens = _user_token(client, client_id, secret, "openid", "alice@example.com")
    response = client.get(f"{API}/users", headers=bearer(tokens["access_token"]))
    assert_problem(response, 403)
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_an_admins_own_token_needs_the_consoles_acr_and_counts_only_for_their_roles(app, make_user):
    """A first-party client registered for idp:* scopes: an administrator's sign-in for such a scope asks for the
    second factor (IDP_ADMIN_ACR), and the token acts as them; a role the user lacks is not granted."""
    make_user(email="root@example.com", is_admin=True)
    make_user(email="help@example.com", roles=["helpdesk"])
    make_user(email="bob@example.com")
    client_id, secret = make_client_in(app, redirect_uris=["https://rp.example/cb"], first_party=True,
                                       scopes=["openid", "idp:admin", "idp:helpdesk"])
    root_totp = enrol_totp_in(app, "root@example.com")[0]
    help_totp = enrol_totp_in(app, "help@example.com")[0]

    root = _user_token(app.test_client(), client_id, secret, "openid idp:admin", "root@example.com", root_totp)
    assert root["screens"] == ["password", "totp"] and "idp:admin" in root["scope"].split()
    bob_id = user_id(app, "bob@example.com")
    disabled = app.test_client().post(f"{API}/users/{bob_id}/disable", headers=bearer(root["access_token"]))
    assert disabled.status_code == 200
    row = audit_rows(app, "user.disabled")[-1]
    assert row.actor_id == user_id(app, "root@example.com") and row.details["actor_client"] == client_id

    helper = _user_token(app.test_client(), client_id, secret, "openid idp:admin idp:helpdesk", "help@example.com",
                         help_totp)
    assert helper["scope"].split() == ["openid", "idp:helpdesk"]  # no idp:admin for a helpdesk user
    api = app.test_client()
    assert api.get(f"{API}/users", headers=bearer(helper["access_token"])).status_code == 200
    assert_problem(api.post(f"{API}/users/{bob_id}/enable", headers=bearer(helper["access_token"])), 403)

    make_user(email="carol@example.com")
    nobody = _user_token(app.test_client(), client_id, secret, "openid idp:admin", "carol@example.com")
    assert nobody["scope"].split() == ["openid"]  # not an administrator: the scope is dropped, no factor asked
    assert_problem(api.get(f"{API}/users", headers=bearer(nobody["access_token"])), 403)

    with app.app_context():  # the role taken away: the token stops counting at once
        from idp.admin import service
        service.revoke_role(service.OPERATOR, db.session.get(User, user_id(app, "help@example.com")), "helpdesk")
    assert_problem(api.get(f"{API}/users", headers=bearer(helper["access_token"])), 403)


def audit_rows(app, event: str) -> list:
    with app.app_context():
        return list(db.session.execute(db.select(AuditEvent).where(AuditEvent.event == event)
                                       .order_by(AuditEvent.id)).scalars())


def test_admin_scopes_go_only_to_a_machine_client(app):
    from idp.oidc.registration import create_client

    with app.app_context():
        for grants in (["authorization_code"], ["client_credentials", "refresh_token"]):  # and not first-party
            with pytest.raises(ValueError, match="admin scopes"):
                create_client(name="x", redirect_uris=["https://rp.example/cb"], post_logout_redirect_uris=[],
                              public=False, grant_types=grants, scopes=["openid", "idp:admin"], auth_method=None,
                              first_party=False)
    # A normal client (all default scopes) cannot ask for one.
    client_id, secret = make_client_in(app, redirect_uris=[], grant_types=["client_credentials"])
    http = app.test_client()
    issued = http.post("/token", data={"grant_type": "client_credentials", "scope": "idp:admin"},
                       auth=(client_id, secret))
    if issued.status_code == 200:  # RFC 6749 3.3: the scope granted is what the client may have, never more
        assert "idp:admin" not in issued.get_json().get("scope", "")
        assert_problem(http.get(f"{API}/users", headers=bearer(issued.get_json()["access_token"])), 403)
    else:
        assert issued.get_json()["error"] == "invalid_scope"


def test_roles_limit_what_a_token_can_do(app, client, make_user):
    make_user()
    alice = user_id(app, "alice@example.com")
    helpdesk = bearer(machine_token(app, client, "idp:helpdesk"))
    auditor = bearer(machine_token(app, client, "idp:audit"))
    assert client.get(f"{API}/users", headers=helpdesk).status_code == 200
    assert client.post(f"{API}/users/{alice}/unlock", headers=helpdesk).status_code == 200
    assert_problem(client.post(f"{API}/users/{alice}/disable", headers=helpdesk), 403)
    assert_problem(client.patch(f"{API}/users/{alice}", json={"name": "Eve"}, headers=helpdesk), 403)
    assert_problem(client.get(f"{API}/users", headers=auditor), 403)
    with app.app_context():
        assert not db.session.get(User, alice).disabled


def test_listing_filters_searches_and_pages_by_cursor(app, client, admin):
    for n in range(7):
        make_user_in(app, email=f"user{n}@example.com", name=f"User {n}", verified=n % 2 == 0)
    seen, cursor = [], None
    while True:
        page = client.get(f"{API}/users", query_string={"limit": 3, **({"cursor": cursor} if cursor else {})},
                          headers=admin).get_json()
        seen += [item["email"] for item in page["items"]]
        assert len(page["items"]) <= 3
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"user{n}@example.com" for n in range(7)]  # each once, in order
    unverified = client.get(f"{API}/users", query_string={"verified": "false"}, headers=admin).get_json()
    assert [u["email"] for u in unverified["items"]] == ["user1@example.com", "user3@example.com",
                                                          "user5@example.com"]
    found = client.get(f"{API}/users", query_string={"q": "USER 4"}, headers=admin).get_json()["items"]
    assert [u["email"] for u in found] == ["user4@example.com"]
    assert client.get(f"{API}/users", query_string={"q": "%"}, headers=admin).get_json()["items"] == []
    assert "password_hash" not in found[0] and found[0]["has_mfa"] is False
    for bad in ({"limit": 0}, {"limit": "lots"}, {"limit": 201}, {"cursor": "!!"}, {"verified": "yes"}):
        assert_problem(client.get(f"{API}/users", query_string=bad, headers=admin), 400)


def test_patch_changes_a_profile_and_says_what_is_wrong(app, client, admin, make_user):
    make_user()
    make_user_in(app, email="bob@example.com", name="Bob")
    alice = user_id(app, "alice@example.com")
    changed = client.patch(f"{API}/users/{alice}", json={"name": "Alice Liddell", "email": "ALICE@wonder.example"},
                           headers=admin)
    assert changed.status_code == 200
    body = changed.get_json()
    assert body["name"] == "Alice Liddell" and body["email"] == "alice@wonder.example"
    assert body["email_verified"] is False  # a new address is unproven until the admin says otherwise
    assert client.patch(f"{API}/users/{alice}", json={"email_verified": True},
                        headers=admin).get_json()["email_verified"] is True
    errors = assert_problem(client.patch(f"{API}/users/{alice}", json={"email": "<script>", "name": ""},
                                         headers=admin), 400)["errors"]
    assert set(errors) == {"email", "name"}
    assert_problem(client.patch(f"{API}/users/{alice}", json={"email": "bob@example.com"}, headers=admin), 409)
    assert_problem(client.patch(f"{API}/users/{alice}", json={"is_admin": True}, headers=admin), 400)
    assert_problem(client.patch(f"{API}/users/{alice}", data="name=x", headers=admin), 400)
    assert_problem(client.patch(f"{API}/users/999999", json={"name": "x"}, headers=admin), 404)
    with app.app_context():
        row = db.session.execute(db.select(AuditEvent).where(AuditEvent.event == "user.updated")).scalars().first()
        assert row.details["changes"]["name"] == ["Alice", "Alice Liddell"]
        assert row.actor_id is None and row.details["actor_client"] and row.details["via"] == "api"


def test_disabling_ends_the_users_sessions_and_tokens(app, client, admin, make_user):
    make_user()
    rp_id, rp_secret = make_client_in(app, redirect_uris=["https://rp.example/cb"], first_party=True)
    browser = app.test_client()
    code = authorize(browser, rp_id)
    user_tokens = browser.post("/token", data={"grant_type": "authorization_code", "code": code,
                                               "redirect_uri": "https://rp.example/cb"},
                               auth=(rp_id, rp_secret)).get_json()
    assert browser.get("/userinfo", headers=bearer(user_tokens["access_token"])).status_code == 200
    alice = user_id(app, "alice@example.com")
    disabled = client.post(f"{API}/users/{alice}/disable", headers=admin)
    assert disabled.status_code == 200 and disabled.get_json()["disabled"] is True
    assert browser.get("/userinfo", headers=bearer(user_tokens["access_token"])).status_code == 401
    with app.app_context():
        assert db.session.execute(db.select(LoginSession).where(LoginSession.ended_at.is_(None))).first() is None
    assert client.post(f"{API}/users/{alice}/enable", headers=admin).get_json()["disabled"] is False


def test_support_actions_mail_the_user(app, client, admin, make_user, mailbox):
    make_user()
    enrol_totp_in(app, "alice@example.com")
    alice = user_id(app, "alice@example.com")
    assert client.get(f"{API}/users/{alice}", headers=admin).get_json()["has_mfa"] is True
    reset = client.post(f"{API}/users/{alice}/reset-mfa", headers=admin)
    assert reset.status_code == 200 and reset.get_json()["has_mfa"] is False
    assert "An administrator removed your second factors." in mailbox.last("alice@example.com",
                                                                           "Security change")["text"]
    assert client.post(f"{API}/users/{alice}/send-password-reset", headers=admin).status_code == 200
    assert re.search(r"/reset#", mailbox.last("alice@example.com", "Reset your password")["text"])
    required = client.post(f"{API}/users/{alice}/require-mfa", json={"required": True}, headers=admin)
    assert required.get_json()["mfa_required"] is True
    assert_problem(client.post(f"{API}/users/{alice}/require-mfa", json={"required": "yes"}, headers=admin), 400)
    assert client.post(f"{API}/users/{alice}/revoke-tokens", headers=admin).status_code == 200
    with app.app_context():
        events = {row.event: row for row in db.session.execute(db.select(AuditEvent)).scalars()}
        for name in ("mfa.reset", "user.password_reset_sent", "user.mfa_required", "user.tokens_revoked"):
            assert events[name].subject_id == alice and events[name].details["via"] == "api", name


def test_the_openapi_document_describes_every_route(app, client):
    document = client.get("/admin/api/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    described = {(method.upper(), "/admin/api" + path.replace("{user_id}", "1"))
                 for path, operations in document["paths"].items() for method in operations}
    assert described == set(_api_routes(app))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method_path=st.sampled_from([("GET", "/users"), ("GET", "/users/1"), ("PATCH", "/users/1"),
                                    ("POST", "/users/1/require-mfa"), ("POST", "/users/1/disable"),
                                    ("GET", "/users/x"), ("DELETE", "/users/1"), ("GET", "/sessions"),
                                    ("DELETE", "/sessions/nope"), ("POST", "/clients"), ("GET", "/clients/nope"),
                                    ("GET", "/audit-events"), ("GET", "/users/1/factors")]),
       query=st.dictionaries(st.sampled_from(["q", "limit", "cursor", "verified", "mfa", "user_id", "since",
                                              "until", "event", "ip"]), st.text(max_size=40)),
       body=st.one_of(st.none(), st.dictionaries(st.text(max_size=10),
                                                 st.one_of(st.text(max_size=40), st.booleans(), st.integers(),
                                                           st.none()), max_size=4),
                      st.lists(st.integers(), max_size=3), st.text(max_size=20)))
def test_bad_input_is_a_problem_document_never_a_500(app, admin, make_user, method_path, query, body):
    method, path = method_path
    response = app.test_client().open(API + path, method=method, query_string=query, json=body, headers=admin)
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert_problem(response, response.status_code)


def test_sessions_can_be_listed_and_ended(app, client, admin, make_user):
    make_user()
    browser = app.test_client()
    rp_id, _secret = make_client_in(app, redirect_uris=["https://rp.example/cb"], first_party=True)
    authorize(browser, rp_id)
    alice = user_id(app, "alice@example.com")
    page = client.get(f"{API}/users/{alice}/sessions", headers=admin).get_json()
    (session,) = page["items"]
    assert session["user_id"] == alice and "pwd" in session["amr"]
    assert client.get(f"{API}/sessions", query_string={"user_id": alice}, headers=admin).get_json() == page
    assert client.delete(f"{API}/sessions/{session['sid']}", headers=admin).status_code == 204
    assert browser.get("/account").status_code == 302  # that browser is signed out
    assert_problem(client.delete(f"{API}/sessions/{session['sid']}", headers=admin), 404)
    assert client.get(f"{API}/sessions", headers=admin).get_json()["items"] == []
    for bad in ("x", "¹", "-1"):  # "¹" is a digit to str.isdigit, not to int()
        assert_problem(client.get(f"{API}/sessions", query_string={"user_id": bad}, headers=admin), 400)


def test_factors_are_listed_without_secrets(app, client, admin, make_user):
    make_user()
    enrol_totp_in(app, "alice@example.com")
    (factor,) = client.get(f"{API}/users/{user_id(app, 'alice@example.com')}/factors",
                           headers=admin).get_json()["items"]
    assert factor["kind"] == "totp" and set(factor) == {"id", "kind", "name", "created_at", "last_used_at"}


def test_clients_are_registered_read_rotated_and_deleted(app, client, admin):
    created = client.post(f"{API}/clients", headers=admin, json={
        "name": "Shop", "redirect_uris": ["https://shop.example/cb"], "scopes": ["openid", "email"]})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    client_id, secret = body["client_id"], body["client_secret"]
    assert created.headers["Location"].endswith(f"/admin/api/v1/clients/{client_id}") and secret
    shown = client.get(f"{API}/clients/{client_id}", headers=admin).get_json()
    assert shown["name"] == "Shop" and "client_secret" not in shown
    assert client_id in [c["client_id"] for c in client.get(f"{API}/clients", headers=admin).get_json()["items"]]
    new_secret = client.post(f"{API}/clients/{client_id}/rotate-secret", headers=admin).get_json()["client_secret"]
    assert new_secret != secret
    token_request = {"grant_type": "client_credentials"}
    assert client.post("/token", data=token_request, auth=(client_id, secret)).status_code == 401
    for bad in ({"name": "x", "redirect_uris": ["http://evil.example/cb"]}, {"redirect_uris": []},
                {"name": "x", "public": "yes"}, {"name": "x", "colour": "red"}, {"name": 3}):
        assert_problem(client.post(f"{API}/clients", headers=admin, json=bad), 400)
    assert client.delete(f"{API}/clients/{client_id}", headers=admin).status_code == 204
    assert_problem(client.get(f"{API}/clients/{client_id}", headers=admin), 404)
    with app.app_context():
        events = [row.event for row in db.session.execute(db.select(AuditEvent).where(
            AuditEvent.client_id == client_id)).scalars()]
    assert events == ["client.created", "client.secret_rotated", "client.deleted"]


def test_signing_keys_are_listed_and_rotated(client, admin):
    before = client.get(f"{API}/keys", headers=admin).get_json()["items"]
    assert before and {key["state"] for key in before} == {"signing"}
    fresh = client.post(f"{API}/keys/rotate", headers=admin).get_json()["items"]
    after = {key["kid"]: key["state"] for key in client.get(f"{API}/keys", headers=admin).get_json()["items"]}
    assert all(after[key["kid"]] == "signing" for key in fresh)
    assert all(after[key["kid"]] == "retired" for key in before)  # still published while their tokens live
    jwks = {key["kid"] for key in client.get("/jwks.json").get_json()["keys"]}
    assert set(after) <= jwks


def test_the_audit_log_is_filtered_paged_and_reading_it_is_audited(app, client, make_user):
    make_user()
    admin = bearer(machine_token(app, client, "idp:admin"))
    auditor = bearer(machine_token(app, client, "idp:audit"))
    alice = user_id(app, "alice@example.com")
    for _ in range(3):
        client.post(f"{API}/users/{alice}/unlock", headers=admin)
    page = client.get(f"{API}/audit-events", query_string={"event": "account.unlocked", "limit": 2},
                      headers=auditor).get_json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = client.get(f"{API}/audit-events", query_string={"event": "account.unlocked",
                                                           "cursor": page["next_cursor"]}, headers=auditor).get_json()
    ids = [row["id"] for row in page["items"] + rest["items"]]
    assert len(ids) == 3 and ids == sorted(ids, reverse=True)
    assert all(row["subject_id"] == alice for row in page["items"])
    assert client.get(f"{API}/audit-events", query_string={"since": "2999-01-01T00:00:00Z"},
                      headers=auditor).get_json()["items"] == []
    for bad in ("yesterday", "2026-12-05", "2026-12-05T10:00:00"):  # RFC 3339: date, time and offset
        assert_problem(client.get(f"{API}/audit-events", query_string={"since": bad}, headers=auditor), 400)
    assert_problem(client.get(f"{API}/users", headers=auditor), 403)  # an auditor reads the log only
    helpdesk = bearer(machine_token(app, client, "idp:helpdesk"))
    assert_problem(client.get(f"{API}/audit-events", headers=helpdesk), 403)
    with app.app_context():
        reads = list(db.session.execute(db.select(AuditEvent).where(AuditEvent.event == "audit.read")).scalars())
        assert reads and reads[0].details["filters"] == {"event": "account.unlocked"}
        assert reads[0].details["actor_client"]


def test_a_user_is_created_with_a_password_or_invited(app, client, admin, mailbox):
    from tests.support import PASSWORD, link_in, open_link, sign_in, signed_in_email, submit_link

    typed = client.post(f"{API}/users", headers=admin, json={"email": "Kim@Example.com", "name": "Kim",
                                                               "password": PASSWORD, "email_verified": True})
    assert typed.status_code == 201 and typed.get_json()["email"] == "kim@example.com"
    assert typed.headers["Location"].endswith(f"/admin/api/v1/users/{typed.get_json()['id']}")
    browser = app.test_client()
    sign_in(browser, "kim@example.com")
    assert signed_in_email(browser) == "kim@example.com"

    invited = client.post(f"{API}/users", headers=admin, json={"email": "lee@example.com", "invite": True})
    assert invited.status_code == 201 and invited.get_json()["email_verified"] is False
    mail = mailbox.last("lee@example.com", "Your new account")
    assert "An administrator created an account for you" in mail["text"] and "7 days" in mail["text"]
    link = link_in(mail, "/reset")
    newcomer = app.test_client()
    form = open_link(newcomer, link)
    set_password = submit_link(newcomer, link, form, password="a fresh long passphrase here",
                               confirm="a fresh long passphrase here")
    assert set_password.status_code == 302
    sign_in(newcomer, "lee@example.com", "a fresh long passphrase here")
    assert signed_in_email(newcomer) == "lee@example.com"
    with app.app_context():  # the link proved the address; the creation is audited with its actor
        assert db.session.execute(db.select(User).where(User.email == "lee@example.com")).scalar_one().email_verified
        row = db.session.execute(db.select(AuditEvent).where(
            AuditEvent.event == "user.created", AuditEvent.subject_email == "lee@example.com")).scalar_one()
        assert row.details["invited"] is True and row.details["actor_client"]

    assert_problem(client.post(f"{API}/users", headers=admin, json={"email": "kim@example.com",
                                                                    "password": PASSWORD}), 409)
    for bad in ({"email": "<script>", "password": PASSWORD}, {"email": "m@example.com"},
                {"email": "m@example.com", "password": PASSWORD, "invite": True},
                {"email": "m@example.com", "password": "short"}, {"email": "m@example.com", "invite": "yes"},
                {"email": "m@example.com", "invite": True, "role": "admin"}, {"name": "no email"},
                {"email": "m@example.com", "invite": True, "password": None}):  # null is not a string (schemathesis)
        assert_problem(client.post(f"{API}/users", headers=admin, json=bad), 400)
    helpdesk = bearer(machine_token(app, client, "idp:helpdesk"))
    assert_problem(client.post(f"{API}/users", headers=helpdesk, json={"email": "n@example.com", "invite": True}),
                   403)


def test_a_deleted_user_is_hidden_signed_out_restorable_and_purged_after_the_grace(app, client, admin, make_user):
    from datetime import timedelta

    from tests.support import sign_in, signed_in_email

    make_user()
    alice = user_id(app, "alice@example.com")
    browser = app.test_client()
    sign_in(browser, "alice@example.com")
    assert signed_in_email(browser) == "alice@example.com"
    assert client.delete(f"{API}/users/{alice}", headers=admin).status_code == 204
    assert signed_in_email(browser) is None  # signed out at once...
    assert sign_in(app.test_client(), "alice@example.com").status_code == 200  # ...and cannot sign in again
    assert client.get(f"{API}/users", headers=admin).get_json()["items"] == []  # hidden
    (shown,) = client.get(f"{API}/users", query_string={"deleted": "true"}, headers=admin).get_json()["items"]
    assert shown["deleted_at"] and shown["disabled"] is True
    assert_problem(client.delete(f"{API}/users/{alice}", headers=admin), 409)

    restored = client.post(f"{API}/users/{alice}/restore", headers=admin).get_json()
    assert restored["deleted_at"] is None and restored["disabled"] is False
    sign_in(browser, "alice@example.com")
    assert signed_in_email(browser) == "alice@example.com"
    assert_problem(client.post(f"{API}/users/{alice}/restore", headers=admin), 409)

    runner = app.test_cli_runner()
    assert runner.invoke(args=["users", "delete", "alice@example.com"]).exit_code == 0
    assert "purged 0 deleted users" in runner.invoke(args=["users", "purge"]).output  # still within the grace
    with app.app_context():
        user = db.session.get(User, alice)
        user.deleted_at -= timedelta(days=app.config["IDP_DELETE_GRACE_DAYS"] + 1)
        db.session.commit()
    assert "purged 1 deleted users" in runner.invoke(args=["users", "purge"]).output
    with app.app_context():
        assert db.session.get(User, alice) is None
        assert db.session.execute(db.select(AuditEvent).where(AuditEvent.event == "user.purged")).first()
    assert_problem(client.get(f"{API}/users/{alice}", headers=admin), 404)


def test_the_filtered_audit_log_is_exported_as_csv_and_json_lines(app, client, make_user):
    import csv
    import io
    import json

    make_user()
    admin = bearer(machine_token(app, client, "idp:admin"))
    auditor = bearer(machine_token(app, client, "idp:audit"))
    alice = user_id(app, "alice@example.com")
    for _ in range(2):
        client.post(f"{API}/users/{alice}/unlock", headers=admin)
    lines = client.get(f"{API}/audit-events/export", query_string={"event": "account.unlocked"},
                       headers=auditor)
    assert lines.status_code == 200 and lines.mimetype == "application/jsonl"
    assert 'filename="audit-events.jsonl"' in lines.headers["Content-Disposition"]
    rows = [json.loads(line) for line in lines.get_data(as_text=True).splitlines()]
    assert [row["event"] for row in rows] == ["account.unlocked"] * 2 and rows[0]["id"] > rows[1]["id"]
    table = client.get(f"{API}/audit-events/export", query_string={"event": "account.unlocked", "format": "csv"},
                       headers=auditor)
    assert table.mimetype == "text/csv"
    records = list(csv.DictReader(io.StringIO(table.get_data(as_text=True))))
    assert [int(r["id"]) for r in records] == [row["id"] for row in rows]
    assert json.loads(records[0]["details"]) == rows[0]["details"]
    assert_problem(client.get(f"{API}/audit-events/export", query_string={"format": "xml"}, headers=auditor), 400)
    assert_problem(client.get(f"{API}/audit-events/export", headers=bearer(machine_token(app, client,
                                                                                           "idp:helpdesk"))), 403)
    with app.app_context():  # each export is itself audited, with what was asked for
        exports = list(db.session.execute(db.select(AuditEvent).where(AuditEvent.event == "audit.exported"))
                       .scalars())
    assert [e.details["format"] for e in exports] == ["jsonl", "csv"]
    assert exports[0].details["filters"] == {"event": "account.unlocked"}


def test_a_job_queue_that_is_down_does_not_stop_the_action_or_its_mail(app, client, admin, make_user,
                                                                       smtp_server):
    """Redis gone in the middle of the day: the action is done and its mail still goes out, sent by the request
    itself once its work is saved (audited as job.inline), never a 500 or a 503."""
    from redis import Redis
    from rq import Queue

    from idp.models import Factor

    make_user()
    alice = user_id(app, "alice@example.com")
    enrol_totp_in(app, "alice@example.com")
    app.extensions["idp.queue"] = Queue("idp", connection=Redis(host="127.0.0.1", port=1, socket_connect_timeout=1))
    smtp_server.messages.clear()
    for action, event, subject in (("send-password-reset", "user.password_reset_sent", "Reset your password"),
                                   ("reset-mfa", "mfa.reset", "Security change on your account")):
        response = client.post(f"{API}/users/{alice}/{action}", headers=admin)
        assert response.status_code == 200
        assert len(audit_rows(app, event)) == 1
        assert [m["subject"] for m in smtp_server.messages if m["to"] == "alice@example.com"][-1] == subject
    assert [m["subject"] for m in smtp_server.messages] == ["Reset your password", "Security change on your account"]
    with app.app_context():
        assert db.session.execute(db.select(Factor).where(Factor.user_id == alice)).scalars().all() == []
    # The reset request (and the reset mail it queues in turn) and the notice each ran in the request.
    assert [row.details["job"] for row in audit_rows(app, "job.inline")] == \
        ["start_password_reset", "send_mail", "send_mail"]
    assert {row.details["reason"] for row in audit_rows(app, "job.inline")} == {"redis unavailable"}


def test_setting_a_password_and_verifying_the_audit_chain_through_the_api(app, client, admin, make_user):
    make_user()
    alice = user_id(app, "alice@example.com")
    assert_problem(client.post(f"{API}/users/{alice}/password", json={"password": "short"}, headers=admin), 400)
    assert_problem(client.post(f"{API}/users/{alice}/password", json={"password": "a long enough passphrase 7",
                                                                    "admin": True}, headers=admin), 400)
    done = client.post(f"{API}/users/{alice}/password", json={"password": "a long enough passphrase 7"},
                       headers=admin)
    assert done.status_code == 200
    assert audit_rows(app, "password.reset")[-1].details["via"] == "api"
    verdict = client.get(f"{API}/audit-events/verify", headers=admin).get_json()
    assert verdict["intact"] is True and verdict["events"] >= 2 and verdict["problem"] is None


# --- what the attacker review found (each was possible before) ------------------------------------------------

def test_the_last_permanent_admin_cannot_be_given_an_end_time(app, client, admin, make_user):
    make_user(email="root@example.com", is_admin=True)
    root = user_id(app, "root@example.com")
    body = {"role": "admin", "until": "2099-01-01T00:00:00Z"}
    assert_problem(client.post(f"{API}/users/{root}/roles", json=body, headers=admin), 409)
    make_user(email="second@example.com", is_admin=True)
    assert client.post(f"{API}/users/{root}/roles", json=body, headers=admin).status_code == 200  # one stays


def test_enable_does_not_bring_back_a_deleted_user_and_restore_keeps_them_disabled(app, client, admin, make_user):
    make_user(email="bob@example.com")
    bob = user_id(app, "bob@example.com")
    client.post(f"{API}/users/{bob}/disable", headers=admin)
    assert client.delete(f"{API}/users/{bob}", headers=admin).status_code == 204
    assert_problem(client.post(f"{API}/users/{bob}/enable", headers=admin), 409)
    restored = client.post(f"{API}/users/{bob}/restore", headers=admin).get_json()
    assert restored["deleted_at"] is None and restored["disabled"] is True  # as before the deletion


def test_the_helpdesk_cannot_weaken_an_administrators_sign_in(app, make_user):
    from idp.admin import service

    make_user(email="root@example.com", is_admin=True)
    make_user(email="help@example.com", roles=["helpdesk"])
    enrol_totp_in(app, "root@example.com")
    with app.test_request_context():
        root = db.session.execute(db.select(User).where(User.email == "root@example.com")).scalar_one()
        helper = service.person(db.session.execute(db.select(User).where(User.email == "help@example.com"))
                                .scalar_one())
        for action in (lambda: service.reset_mfa(helper, root),
                       lambda: service.unlock(helper, root)):
            with pytest.raises(service.Forbidden):
                action()
            db.session.rollback()
        assert service.list_factors(service.OPERATOR, root)  # the factor is still there


def test_an_admins_notice_mail_is_in_the_users_language(app, client, admin, make_user, mailbox):
    make_user(email="jean@example.com", locale="fr")
    jean = user_id(app, "jean@example.com")
    client.post(f"{API}/users/{jean}/password", json={"password": "une phrase de passe assez longue"},
                headers=admin)
    notice = mailbox.last("jean@example.com")
    assert "administrateur" in notice["text"] and "Security change" not in notice["subject"]


def test_a_nul_anywhere_in_a_body_is_a_problem_document(app, client, admin, make_user):
    make_user()
    alice = user_id(app, "alice@example.com")
    assert_problem(client.patch(f"{API}/users/{alice}", json={"name": "a\u0000b"}, headers=admin), 400)
    assert_problem(client.post(f"{API}/clients", json={"name": "x", "redirect_uris": ["https://a/\u0000"]},
                               headers=admin), 400)


def test_admin_scopes_never_go_to_a_client_credentials_grant_beside_a_user_flow(app):
    from idp.oidc.registration import create_client

    with app.app_context(), pytest.raises(ValueError, match="admin scopes"):
        create_client(name="x", redirect_uris=["https://rp.example/cb"], post_logout_redirect_uris=[],
                      public=False, grant_types=["authorization_code", "client_credentials"],
                      scopes=["openid", "idp:admin"], auth_method=None, first_party=True)


def test_csv_exports_do_not_hand_spreadsheets_a_formula(app, client, admin, make_user):
    make_user(email="evil@example.com", name="=HYPERLINK(\"http://evil.example\")")
    with app.test_request_context():
        from idp.admin import bulk, service
        lines = "".join(bulk.export_users(service.OPERATOR, "evil", {}, "csv"))
    assert "'=HYPERLINK" in lines and ",=HYPERLINK" not in lines


def test_an_admins_token_stops_counting_when_the_console_level_is_raised(app, make_user):
    """IDP_ADMIN_ACR raised to phishing-resistant: an admin token from an MFA (TOTP) sign-in is refused at once."""
    make_user(email="root@example.com", is_admin=True)
    client_id, secret = make_client_in(app, redirect_uris=["https://rp.example/cb"], first_party=True,
                                       scopes=["openid", "idp:admin"])
    root = _user_token(app.test_client(), client_id, secret, "openid idp:admin", "root@example.com",
                       enrol_totp_in(app, "root@example.com")[0])
    api = app.test_client()
    assert api.get(f"{API}/users", headers=bearer(root["access_token"])).status_code == 200
    app.config["IDP_ADMIN_ACR"] = "urn:idp:acr:phr"
    assert_problem(api.get(f"{API}/users", headers=bearer(root["access_token"])), 403)
