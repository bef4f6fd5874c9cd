"""The admin console (/admin/): who gets in (every route, from the app's URL map), what each role reaches, and
the actions doing what they say, audited, with the confirmations and the recent sign-in they need."""

from __future__ import annotations

import re
from datetime import timedelta
from html.parser import HTMLParser

import pytest

from idp.extensions import db
from idp.models import AuditEvent, LoginSession, Token, User, utcnow
from idp.security.otp import totp_code_at
from tests.support import (
    PASSWORD,
    audit_events,
    csrf_token,
    drain_jobs,
    enrol_totp_in,
    follow,
    make_client_in,
    make_user_in,
    step_name,
)

ADMIN = "root@example.com"


def console_routes(app) -> list[tuple[str, str]]:
    """Every (method, path) of the console, with sample values for its parts."""
    samples = {"<int:user_id>": "1", "<int:factor_id>": "1", "<int:device_id>": "1", "<client_id>": "c",
               "<sid>": "s", "<name>": "disable", "<role>": "admin", "<int:job_id>": "1"}
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("admin."):
            path = rule.rule
            for part, value in samples.items():
                path = path.replace(part, value)
            assert "<" not in path, f"give {rule.rule} a sample value here"
            routes.extend((method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"}))
    return routes


def sign_in(client, email: str, secret: str | None = None, password: str = PASSWORD):
    """Sign in at /login, answering the TOTP step when ``secret`` is given; returns the last response."""
    answers = {"totp": lambda page: {"code": totp_code_at(secret, utcnow())}} if secret else {}
    return follow(client, client.get("/login"), email=email, password=password, answers=answers)


@pytest.fixture
def admin(app):
    """An administrator with an authenticator app: (the user's id, the TOTP secret)."""
    user = make_user_in(app, email=ADMIN, name="Root", is_admin=True)
    secret, _factor = enrol_totp_in(app, ADMIN)
    return user.id, secret


@pytest.fixture
def console(app, admin):
    """A browser signed in to the console with the admin's password and TOTP code."""
    client = app.test_client()
    sign_in(client, ADMIN, admin[1])
    assert client.get("/admin/").status_code == 200
    return client


def post(client, path: str, page_path: str, **data):
    """Post a console form with the CSRF token of the page it is on."""
    return client.post(path, data={"csrf_token": csrf_token(client.get(page_path)), **data})


# --- who gets in ------------------------------------------------------------------------------------------------

def test_every_console_route_sends_a_signed_out_visitor_to_sign_in(app, client):
    routes = console_routes(app)
    assert len(routes) > 20
    for method, path in routes:
        response = client.open(path, method=method)
        if method == "GET":
            assert response.status_code == 302 and "/login" in response.headers["Location"], (method, path)
        else:  # a POST without the session is refused before anything (CSRF, then the console's own check)
            assert response.status_code in (302, 400), (method, path, response.status_code)


def test_every_console_route_is_a_404_for_a_signed_in_user_who_is_no_admin(app, client):
    make_user_in(app, email="bob@example.com")
    sign_in(client, "bob@example.com")
    page = client.get("/account")
    token = csrf_token(page)
    for method, path in console_routes(app):
        response = client.open(path, method=method, data={"csrf_token": token} if method == "POST" else None)
        assert response.status_code == 404, (method, path, response.status_code)


def test_an_admin_signed_in_with_a_password_alone_steps_up_on_every_route(app, client, admin):
    """Signed in with the password only (no factor asked then), the console asks for the second factor first."""
    make_user_in(app, email="helper@example.com", roles=["helpdesk"])  # no factor at all: enrols inside the sign-in
    sign_in(client, "helper@example.com")
    token = csrf_token(client.get("/account"))
    for method, path in console_routes(app):
        response = client.open(path, method=method, data={"csrf_token": token} if method == "POST" else None)
        assert response.status_code == 302, (method, path, response.status_code)
        location = response.headers["Location"]
        assert "/login/" in location, (method, path, location)
        assert step_name(client.get(location)) == "mfa_enroll", (method, path)


def test_an_admin_without_a_factor_enrols_one_inside_the_sign_in_and_lands_on_the_page(app, client):
    make_user_in(app, email=ADMIN, is_admin=True)
    sign_in(client, ADMIN)
    response = client.get("/admin/users")
    assert response.status_code == 302
    page = client.get(response.headers["Location"])
    assert step_name(page) == "mfa_enroll"
    secret = re.search(r'id="totp-secret">([^<]+)<', page.get_data(as_text=True)).group(1).replace(" ", "")
    done = follow(client, page, answers={"mfa_enroll": lambda p: {"code": totp_code_at(secret, utcnow())}})
    assert done.screens == ["mfa_enroll"]
    assert done.last.status_code == 200 and done.last.request.path == "/admin/users"  # where it was going
    with app.app_context():
        live = db.session.execute(db.select(LoginSession).where(LoginSession.ended_at.is_(None))).scalars().all()
        assert [row.acr for row in live] == ["urn:idp:acr:mfa"]


def test_roles_narrow_what_the_console_shows_and_allows(app, admin):
    make_user_in(app, email="help@example.com", roles=["helpdesk"])
    make_user_in(app, email="audit@example.com", roles=["auditor"])
    helpdesk, auditor = app.test_client(), app.test_client()
    for browser, email in ((helpdesk, "help@example.com"), (auditor, "audit@example.com")):
        sign_in(browser, email, enrol_totp_in(app, email)[0])
    assert helpdesk.get("/admin/users").status_code == 200
    assert helpdesk.get("/admin/clients").status_code == 403
    assert helpdesk.get("/admin/keys").status_code == 403
    assert helpdesk.get("/admin/audit").status_code == 403
    assert 'href="/admin/clients"' not in helpdesk.get("/admin/").get_data(as_text=True)
    assert auditor.get("/admin/audit").status_code == 200
    assert auditor.get("/admin/users").status_code == 403
    assert auditor.get("/admin/clients").status_code == 403


# --- users ------------------------------------------------------------------------------------------------------

def test_overview_counts_users_and_draws_the_chart_with_a_text_alternative(app, console):
    make_user_in(app, email="bob@example.com", verified=False)
    body = console.get("/admin/").get_data(as_text=True)
    assert re.search(r'data-stat="users">2<', body) and re.search(r'data-stat="verified">1<', body)
    assert re.search(r'data-stat="mfa">1<', body)
    assert '<svg' in body and 'role="img"' in body and "<desc" in body and "<polyline" in body
    # Today's sign-in (the admin's own) is in the chart's numbers.
    assert re.search(r"<td>1</td><td>0</td><td>0</td></tr>\s*</tbody>", body), body[body.find("chart-data"):][:600]


def test_search_and_filters_find_users_a_page_at_a_time(app, console):
    for n in range(60):
        make_user_in(app, email=f"user{n:02d}@example.com", name=f"User {n}", verified=n % 2 == 0)
    first = console.get("/admin/users?verified=no").get_data(as_text=True)
    assert "user01@example.com" in first and "user00@example.com" not in first
    assert "Next page" not in first  # 30 unverified users fit one page
    everyone = console.get("/admin/users").get_data(as_text=True)
    next_url = re.search(r'href="([^"]+)" rel="next"', everyone).group(1).replace("&amp;", "&")
    second = console.get(next_url).get_data(as_text=True)
    assert "user59@example.com" in second and "user10@example.com" not in second
    assert "user42@example.com" in console.get("/admin/users?q=USER42").get_data(as_text=True)


def test_disabling_a_user_ends_their_session_and_revokes_their_tokens(app, console, admin):
    bob = make_user_in(app, email="bob@example.com")
    bob_browser = app.test_client()
    sign_in(bob_browser, "bob@example.com")
    assert bob_browser.get("/account").status_code == 200
    page = f"/admin/users/{bob.id}"
    asked = post(console, f"{page}/actions/disable", page)
    assert asked.status_code == 200 and "Disable this user?" in asked.get_data(as_text=True)  # confirm first
    done = post(console, f"{page}/actions/disable", page, confirm="yes")
    assert done.status_code == 302
    assert bob_browser.get("/account").status_code == 302  # signed out
    with app.app_context():
        assert db.session.get(User, bob.id).disabled
        row = audit_events(app, "user.disabled")[-1]
        assert row.actor_id == admin[0] and row.subject_id == bob.id and row.details["via"] == "console"
    post(console, f"{page}/actions/enable", page)
    with app.app_context():
        assert not db.session.get(User, bob.id).disabled


def test_an_admin_cannot_disable_themselves_nor_remove_the_last_admin_role(app, console, admin):
    page = f"/admin/users/{admin[0]}"
    response = post(console, f"{page}/actions/disable", page, confirm="yes")
    assert response.status_code == 302
    assert "you cannot disable yourself" in console.get(page).get_data(as_text=True)
    post(console, f"{page}/roles/admin/remove", page)
    with app.app_context():
        assert db.session.get(User, admin[0]).is_admin


def test_a_destructive_action_needs_a_recent_sign_in(app, console, admin):
    bob = make_user_in(app, email="bob@example.com")
    with app.app_context():  # the admin signed in long ago
        for row in db.session.execute(db.select(LoginSession)).scalars():
            row.auth_time = utcnow() - timedelta(hours=2)
        db.session.commit()
    page = f"/admin/users/{bob.id}"
    assert console.get(page).status_code == 200  # reading is fine
    response = post(console, f"{page}/actions/disable", page, confirm="yes")
    assert response.status_code == 302 and "/login/" in response.headers["Location"]
    with app.app_context():
        assert not db.session.get(User, bob.id).disabled
    # Signing in again (password and factor) returns to the user's page, where the action can be sent again.
    walked = follow(console, console.get(response.headers["Location"]), email=ADMIN,
                    answers={"totp": lambda p: {"code": totp_code_at(admin[1], utcnow() + timedelta(seconds=30))}})
    assert walked.screens == ["password", "totp"] and walked.last.request.path == page
    post(console, f"{page}/actions/disable", page, confirm="yes")
    with app.app_context():
        assert db.session.get(User, bob.id).disabled


def test_granting_a_role_with_an_end_time_and_its_lapse(app, console, admin):
    bob = make_user_in(app, email="bob@example.com")
    page = f"/admin/users/{bob.id}"
    tomorrow = (utcnow() + timedelta(days=2)).date().isoformat()
    post(console, f"{page}/roles", page, role="helpdesk", until=tomorrow)
    with app.app_context():
        user = db.session.get(User, bob.id)
        assert [grant.role for grant in user.roles] == ["helpdesk"] and user.is_admin
        from idp.admin import service
        assert service.lapse_roles(utcnow() + timedelta(days=3)) == 1
        assert not db.session.get(User, bob.id).is_admin
    assert [row.details["role"] for row in audit_events(app, "admin.role_lapsed")] == ["helpdesk"]


def test_creating_a_user_with_an_invitation(app, console):
    page = "/admin/users/new"
    response = post(console, page, page, email="new@example.com", name="New", invite="y")
    assert response.status_code == 302
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.email == "new@example.com")).scalar_one()
        assert user.password_hash is None
    refused = post(console, page, page, email="not an address", name="X", invite="y")
    assert refused.status_code == 400 and 'aria-invalid="true"' in refused.get_data(as_text=True)


def test_editing_a_profile_changes_it_and_audits_the_diff(app, console):
    bob = make_user_in(app, email="bob@example.com", name="Bob")
    page = f"/admin/users/{bob.id}"
    post(console, f"{page}/profile", page, name="Robert", email="bob@example.com", phone="+44 7700 900123",
         email_verified="y")
    with app.app_context():
        user = db.session.get(User, bob.id)
        assert (user.name, user.phone) == ("Robert", "+447700900123")
    changes = audit_events(app, "user.updated")[-1].details["changes"]
    assert changes["name"] == ["Bob", "Robert"] and changes["phone"] == [None, "+447700900123"]
    bad = post(console, f"{page}/profile", page, name="Robert", email="bob@example.com", phone="12")
    assert bad.status_code == 400 and "not a phone number" in bad.get_data(as_text=True)


# --- clients, keys, audit ---------------------------------------------------------------------------------------

def test_a_client_is_registered_edited_and_deleted_after_typing_its_name(app, console):
    page = "/admin/clients/new"
    created = post(console, page, page, name="Shop", redirect_uris="https://shop.example/cb",
                   grant_types="authorization_code\nrefresh_token", id_token_alg="RS256", mfa="optional",
                   auth_method="", min_acr="", allow_remembered_device="y")
    body = created.get_data(as_text=True)
    assert created.status_code == 200, body[:800]
    client_id = re.search(r'id="client-id">([^<]+)<', body).group(1)
    assert re.search(r'id="client-secret">[^<]{20,}<', body)
    edit = f"/admin/clients/{client_id}"
    saved = post(console, edit, edit, name="Shop 2", redirect_uris="https://shop.example/cb\nhttps://shop.example/b",
                 grant_types="authorization_code\nrefresh_token", id_token_alg="RS256", mfa="required",
                 auth_method="", min_acr="", logo_uri="https://cdn.example/logo.png")
    assert saved.status_code == 302, saved.get_data(as_text=True)[:1000]
    from idp.models import Client
    with app.app_context():
        row = db.session.execute(db.select(Client).where(Client.client_id == client_id)).scalar_one()
        assert (row.name, row.mfa, len(row.redirect_uris), row.logo_uri) == ("Shop 2", "required", 2,
                                                                            "https://cdn.example/logo.png")
    bad = post(console, edit, edit, name="Shop 2", redirect_uris="http://evil.example/cb",
               grant_types="authorization_code", id_token_alg="RS256", mfa="optional", auth_method="", min_acr="")
    assert bad.status_code == 400 and "loopback" in bad.get_data(as_text=True)
    asked = post(console, f"{edit}/delete", edit)
    assert "Type" in asked.get_data(as_text=True)
    wrong = post(console, f"{edit}/delete", edit, confirm="yes", typed="Shop")
    assert wrong.status_code == 400
    with app.app_context():
        assert db.session.execute(db.select(Client).where(Client.client_id == client_id)).scalar_one_or_none()
    post(console, f"{edit}/delete", edit, confirm="yes", typed="Shop 2")
    with app.app_context():
        assert db.session.execute(db.select(Client).where(Client.client_id == client_id)).scalar_one_or_none() is None


class _FormFields(HTMLParser):
    """What a browser would submit from a page's main form: its inputs, checked boxes, selected options and
    textareas, by name (the first form with a submit button and more than one field)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, str]] = []
        self._textarea: str | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "form":
            self.forms.append({})
        elif tag == "input" and a.get("name") and self.forms:
            if a.get("type") not in ("checkbox", "radio") or "checked" in a:
                self.forms[-1][a["name"]] = a.get("value") or ""
        elif tag == "textarea" and self.forms:
            self._textarea = a["name"]
            self.forms[-1][a["name"]] = ""
        elif tag == "select" and self.forms:
            self._select = a["name"]
        elif tag == "option" and self._select and ("selected" in a or self._select not in self.forms[-1]):
            self.forms[-1][self._select] = a.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea":
            self._textarea = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.forms[-1][self._textarea] += data


def form_fields(page) -> dict[str, str]:
    parser = _FormFields()
    parser.feed(page.get_data(as_text=True))
    fields = max(parser.forms, key=len)
    # HTML drops a textarea's first line break (WTForms writes one after the tag).
    return {name: value.removeprefix("\r\n").removeprefix("\n") for name, value in fields.items()}


def test_a_clients_logout_links_and_protocol_options_are_registered_shown_and_kept_through_the_console(app,
                                                                                                       console):
    """The settings the CLI and the admin API know, through the console form: registered, shown on the client's
    page, changed, refused by the same rules (the reason shown on the form), and kept when the name changes."""
    from idp.models import Client
    actor_id, _secret = make_client_in(app, name="Reporting", grant_types=["client_credentials"],
                                       redirect_uris=[])
    page = "/admin/clients/new"
    new_form = console.get(page).get_data(as_text=True)
    for legend in ("Logout", "Protocol options", "Token exchange"):
        assert f"<legend>{legend}</legend>" in new_form
    created = post(console, page, page, name="Shop", redirect_uris="https://shop.example/cb",
                   grant_types="authorization_code\nrefresh_token\nurn:ietf:params:oauth:grant-type:token-exchange",
                   id_token_alg="RS256", mfa="optional", auth_method="", min_acr="", allow_remembered_device="y",
                   backchannel_logout_uri="https://shop.example/logout", backchannel_logout_session_required="y",
                   frontchannel_logout_uri="https://shop.example/fc", policy_uri="https://shop.example/privacy",
                   tos_uri="https://shop.example/terms", application_type="web",
                   require_pushed_authorization_requests="y", dpop_bound_access_tokens="y",
                   request_object_signing_alg="none", request_uris="https://shop.example/r/1\n\nhttps://shop.example/r/2",
                   token_exchange_actors=actor_id)
    body = created.get_data(as_text=True)
    assert created.status_code == 200, body[:1500]
    client_id = re.search(r'id="client-id">([^<]+)<', body).group(1)
    with app.app_context():
        row = db.session.execute(db.select(Client).where(Client.client_id == client_id)).scalar_one()
        assert (row.backchannel_logout_uri, row.backchannel_logout_session_required, row.frontchannel_logout_uri,
                row.frontchannel_logout_session_required) == ("https://shop.example/logout", True,
                                                              "https://shop.example/fc", False)
        assert (row.policy_uri, row.tos_uri, row.application_type) == ("https://shop.example/privacy",
                                                                       "https://shop.example/terms", "web")
        assert row.require_pushed_authorization_requests and row.dpop_bound_access_tokens
        assert row.request_uris == ["https://shop.example/r/1", "https://shop.example/r/2"]
        assert (row.request_object_signing_alg, row.token_exchange_actors) == ("none", [actor_id])

    edit = f"/admin/clients/{client_id}"
    shown = form_fields(console.get(edit))  # the client's page shows each as its form field holds it
    assert {name: shown.get(name) for name in (
        "backchannel_logout_uri", "backchannel_logout_session_required", "frontchannel_logout_uri", "policy_uri",
        "tos_uri", "application_type", "require_pushed_authorization_requests", "dpop_bound_access_tokens",
        "request_uris", "request_object_signing_alg", "token_exchange_actors")} == {
        "backchannel_logout_uri": "https://shop.example/logout", "backchannel_logout_session_required": "y",
        "frontchannel_logout_uri": "https://shop.example/fc", "policy_uri": "https://shop.example/privacy",
        "tos_uri": "https://shop.example/terms", "application_type": "web",
        "require_pushed_authorization_requests": "y", "dpop_bound_access_tokens": "y",
        "request_uris": "https://shop.example/r/1\nhttps://shop.example/r/2", "request_object_signing_alg": "none",
        "token_exchange_actors": actor_id}
    assert "frontchannel_logout_session_required" not in shown  # an unchecked box

    # Changed as a browser submits the page: one box unticked, one ticked, a link removed, the type unset.
    changed = {**shown, "dpop_bound_access_tokens": None, "frontchannel_logout_session_required": "y",
               "tos_uri": "", "application_type": "", "request_uris": "https://shop.example/r/3"}
    saved = console.post(edit, data={k: v for k, v in changed.items() if v is not None})
    assert saved.status_code == 302, saved.get_data(as_text=True)[:1500]
    with app.app_context():
        row = db.session.execute(db.select(Client).where(Client.client_id == client_id)).scalar_one()
        assert (row.dpop_bound_access_tokens, row.frontchannel_logout_session_required, row.tos_uri,
                row.application_type, row.request_uris) == (False, True, None, None, ["https://shop.example/r/3"])

    # Refused by registration's rules, with the reason on the form, and nothing changed.
    bad = console.post(edit, data={**form_fields(console.get(edit)),
                                   "backchannel_logout_uri": "http://shop.example/logout"})
    text = bad.get_data(as_text=True)
    assert bad.status_code == 400 and "back-channel logout URI is an https URL" in text
    assert 'role="alert"' in text and 'value="http://shop.example/logout"' in text  # what was typed, kept
    unknown = console.post(edit, data={**form_fields(console.get(edit)), "token_exchange_actors": "nobody"})
    assert unknown.status_code == 400 and "no client with id nobody" in unknown.get_data(as_text=True)
    wrong_alg = console.post(edit, data={**form_fields(console.get(edit)), "request_object_signing_alg": "HS256"})
    assert wrong_alg.status_code == 400 and "Not a valid choice" in wrong_alg.get_data(as_text=True)

    # A change of name alone keeps every other setting.
    before = form_fields(console.get(edit))
    assert console.post(edit, data={**before, "name": "Shop 2"}).status_code == 302
    after = form_fields(console.get(edit))
    assert after.pop("name") == "Shop 2" and before.pop("name") == "Shop"
    after.pop("csrf_token"), before.pop("csrf_token")
    assert after == before
    with app.app_context():
        row = db.session.execute(db.select(Client).where(Client.client_id == client_id)).scalar_one()
        assert (row.backchannel_logout_uri, row.require_pushed_authorization_requests, row.token_exchange_actors,
                row.request_object_signing_alg, row.policy_uri) == ("https://shop.example/logout", True, [actor_id],
                                                                    "none", "https://shop.example/privacy")


def test_rotating_keys_needs_the_typed_word(app, console):
    console.get("/admin/keys")
    before = len(audit_events(app, "key.rotated"))
    assert post(console, "/admin/keys/rotate", "/admin/keys", confirm="yes", typed="rotate").status_code == 400
    assert post(console, "/admin/keys/rotate", "/admin/keys", confirm="yes", typed="ROTATE").status_code == 302
    assert len(audit_events(app, "key.rotated")) == before + 1
    assert 'data-state="retired"' in console.get("/admin/keys").get_data(as_text=True)


def test_the_audit_log_filters_and_exports_what_it_shows(app, console, admin):
    make_user_in(app, email="bob@example.com")
    page = console.get("/admin/audit?user=bob@example.com").get_data(as_text=True)
    assert 'data-event="user.created"' not in page  # make_user_in writes no row; nothing about bob yet
    assert console.get("/admin/audit?since=yesterday").status_code == 400
    export = console.get("/admin/audit/export?format=csv&event=login.success")
    assert export.status_code == 200 and export.mimetype == "text/csv"
    lines = export.get_data(as_text=True).splitlines()
    assert lines[0].startswith("id,at,event") and all(",login.success," in line for line in lines[1:]) and lines[1:]
    with app.app_context():
        exported = db.session.execute(db.select(AuditEvent).where(AuditEvent.event == "audit.exported")).scalars()
        assert [row.actor_id for row in exported] == [admin[0]]


def test_a_disabled_users_tokens_stop_working(app, console, make_client):
    bob = make_user_in(app, email="bob@example.com")
    client_id, _secret = make_client(first_party=True)
    with app.app_context():
        db.session.add(Token(jti="j1", client_id=client_id, user_id=bob.id, scope="openid", grant_type="x",
                             family_id="f1", access_expires_at=utcnow() + timedelta(hours=1)))
        db.session.commit()
    page = f"/admin/users/{bob.id}"
    post(console, f"{page}/actions/revoke-tokens", page, confirm="yes")
    with app.app_context():
        assert db.session.execute(db.select(Token).where(Token.jti == "j1")).scalar_one().revoked_at is not None


def test_console_pages_speak_the_browsers_language(app, console):
    page = console.get("/admin/users", headers={"Accept-Language": "fr"}).get_data(as_text=True)
    assert "<html lang=\"fr\"" in page or "<html lang=fr" in page
    assert "Utilisateurs" in page



# --- many users at once -----------------------------------------------------------------------------------------

def test_a_bulk_action_shows_a_dry_run_then_runs_as_a_job_with_a_result_per_user(app, console, admin):
    ids = [make_user_in(app, email=f"temp{n}@example.com").id for n in range(3)]
    make_user_in(app, email="keep@example.com")
    selection = {"q": "temp", "disabled": "no"}
    dry = post(console, "/admin/users/bulk", "/admin/users", action="disable", **selection)
    body = dry.get_data(as_text=True)
    assert 'data-total="3"' in body and 'data-changed="3"' in body and "keep@example.com" not in body
    with app.app_context():
        assert not any(db.session.get(User, user_id).disabled for user_id in ids)  # a dry run writes nothing
    stale = post(console, "/admin/users/bulk/run", "/admin/users", action="disable", expected="4", **selection)
    assert stale.status_code == 302  # the selection is not what the dry run showed: refused
    with app.app_context():
        assert not any(db.session.get(User, user_id).disabled for user_id in ids)
    ran = post(console, "/admin/users/bulk/run", "/admin/users", action="disable", expected="3", **selection)
    assert ran.status_code == 302 and "/admin/jobs/" in ran.headers["Location"]
    drain_jobs(app)  # the job, on RQ when Redis is configured (inline otherwise)
    job_page = console.get(ran.headers["Location"]).get_data(as_text=True)
    assert 'data-finished="true"' in job_page and job_page.count('data-outcome="done"') == 3
    with app.app_context():
        assert all(db.session.get(User, user_id).disabled for user_id in ids)
        assert not db.session.execute(db.select(User).where(User.email == "keep@example.com")).scalar_one().disabled
    assert len(audit_events(app, "user.disabled")) == 3 and audit_events(app, "admin.bulk_finished")


def test_a_bulk_delete_needs_the_count_typed_and_skips_the_admin_themselves(app, console, admin):
    make_user_in(app, email="gone@example.com")
    selection = {"q": "example.com"}
    dry = post(console, "/admin/users/bulk", "/admin/users", action="delete", **selection).get_data(as_text=True)
    assert 'data-total="2"' in dry and 'data-changed="1"' in dry and "you cannot do this to yourself" in dry
    untyped = post(console, "/admin/users/bulk/run", "/admin/users", action="delete", expected="2", **selection)
    assert "/admin/jobs/" not in untyped.headers["Location"]
    ran = post(console, "/admin/users/bulk/run", "/admin/users", action="delete", expected="2", typed="2",
               **selection)
    drain_jobs(app)
    page = console.get(ran.headers["Location"]).get_data(as_text=True)
    assert page.count('data-outcome="done"') == 1 and "you cannot do this to yourself" in page
    with app.app_context():
        assert db.session.get(User, admin[0]).deleted_at is None


def test_users_export_and_import_round_trip_without_secrets(app, console):
    make_user_in(app, email="bob@example.com", name="Bob", phone="+447700900123")
    exported = console.get("/admin/users/export?format=jsonl&q=bob")
    assert exported.status_code == 200
    lines = exported.get_data(as_text=True).splitlines()
    assert len(lines) == 1 and '"email":"bob@example.com"' in lines[0]
    assert "password" not in lines[0] and "hash" not in lines[0]
    csv_lines = console.get("/admin/users/export?format=csv").get_data(as_text=True).splitlines()
    assert csv_lines[0].startswith("id,subject,email") and len(csv_lines) == 3
    assert audit_events(app, "users.exported")
    upload = "\n".join([lines[0].replace("bob@", "robert@"), lines[0], "{nope", '{"email": "x", "admin": true}',
                        '{"email": "carol@example.com", "name": "Carol", "locale": "fr"}'])
    import io
    page = console.get("/admin/users/import")
    response = console.post("/admin/users/import", data={
        "csrf_token": csrf_token(page), "file": (io.BytesIO(upload.encode()), "users.jsonl")},
        content_type="multipart/form-data")
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert body.count('data-outcome="created"') == 2 and 'data-outcome="exists already"' in body
    assert 'data-outcome="not JSON"' in body and "unknown fields: admin" in body
    with app.app_context():
        carol = db.session.execute(db.select(User).where(User.email == "carol@example.com")).scalar_one()
        assert carol.password_hash is None and carol.locale == "fr" and not carol.is_admin
        robert = db.session.execute(db.select(User).where(User.email == "robert@example.com")).scalar_one()
        assert robert.phone == "+447700900123" and not robert.phone_verified


def test_a_verification_mail_is_sent_again_for_an_unverified_address_only(app, console):
    from idp.models import OneTimeToken

    bob = make_user_in(app, email="bob@example.com", verified=False)
    page = f"/admin/users/{bob.id}"
    assert 'data-action="send-verification"' in console.get(page).get_data(as_text=True)
    post(console, f"{page}/actions/send-verification", page)
    with app.app_context():
        assert db.session.execute(db.select(OneTimeToken).where(OneTimeToken.user_id == bob.id,
                                                                OneTimeToken.purpose == "verify_email")).first()
    assert [row.subject_id for row in audit_events(app, "user.verification_sent")] == [bob.id]
    alice = make_user_in(app, email="alice@example.com")
    post(console, f"/admin/users/{alice.id}/actions/send-verification", f"/admin/users/{alice.id}")
    assert "verified already" in console.get(f"/admin/users/{alice.id}").get_data(as_text=True)


# --- bad input of every shape -----------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TEXT = st.text(max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/admin/users", "/admin/audit", "/admin/sessions", "/admin/users/export",
                             "/admin/audit/export", "/admin/jobs/1", "/admin/users/1"]),
       query=st.dictionaries(st.sampled_from(["q", "cursor", "verified", "mfa", "deleted", "user", "event", "ip",
                                              "client_id", "since", "until", "format"]), TEXT, max_size=5))
def test_console_pages_answer_any_query_without_a_500(app, console, path, query):
    response = console.get(path, query_string=query)
    assert response.status_code < 500, (path, query, response.get_data(as_text=True)[:300])


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(form=st.sampled_from(["/admin/users/new", "/admin/clients/new", "/admin/users/bulk", "profile", "roles"]),
       fields=st.dictionaries(st.sampled_from(["email", "name", "password", "invite", "phone", "email_verified",
                                               "redirect_uris", "grant_types", "scopes", "auth_method", "jwks",
                                               "jwks_uri", "logo_uri", "access_token_ttl", "mfa", "min_acr",
                                               "id_token_alg", "action", "q", "role", "until", "expected"]),
                              TEXT, max_size=8))
def test_console_forms_answer_any_input_without_a_500(app, console, admin, form, fields):
    target = {"profile": f"/admin/users/{admin[0]}/profile", "roles": f"/admin/users/{admin[0]}/roles"}.get(form, form)
    page = "/admin/users" if form in ("/admin/users/bulk", "profile", "roles") else form
    response = post(console, target, page, **fields)
    assert response.status_code < 500, (target, fields, response.get_data(as_text=True)[:300])
    with app.app_context():
        assert db.session.get(User, admin[0]).is_admin  # whatever was sent, the last admin stays one


def test_an_admin_sets_a_password_the_user_is_signed_out_and_it_signs_in(app, console):
    bob = make_user_in(app, email="bob@example.com")
    bob_browser = app.test_client()
    sign_in(bob_browser, "bob@example.com")
    page = f"/admin/users/{bob.id}"
    weak = post(console, f"{page}/password", page, password="password")
    assert weak.status_code == 400 and 'aria-invalid="true"' in weak.get_data(as_text=True)
    new = "a brand new passphrase 42"
    assert post(console, f"{page}/password", page, password=new).status_code == 302
    assert bob_browser.get("/account").status_code == 302  # signed out
    fresh = app.test_client()
    sign_in(fresh, "bob@example.com", password=new)
    assert fresh.get("/account").status_code == 200
    assert audit_events(app, "password.reset")[-1].details["via"] == "console"


def test_a_checkpoint_signed_from_the_console_is_verified(app, console):
    assert post(console, "/admin/audit/checkpoint", "/admin/audit/verify").status_code == 302
    page = console.get("/admin/audit/verify").get_data(as_text=True)
    assert 'data-intact="true"' in page and re.search(r"and [1-9]\d* signed checkpoints", page)


def test_a_far_future_audit_day_is_a_refusal_not_a_500(app, console):
    assert console.get("/admin/audit?until=9999-12-31").status_code == 400
    assert console.get("/admin/audit/export?until=9999-12-31").status_code == 400


def test_an_import_line_with_a_nul_is_refused_and_the_rest_goes_on(app, console):
    import io

    upload = ('{"email": "ok1@example.com"}\n{"email": "x@example.com", "name": "a\\u0000b"}\n'
              '{"email": "ok2@example.com"}')
    page = console.get("/admin/users/import")
    body = console.post("/admin/users/import", data={"csrf_token": csrf_token(page),
                                                     "file": (io.BytesIO(upload.encode()), "u.jsonl")},
                        content_type="multipart/form-data").get_data(as_text=True)
    assert body.count('data-outcome="created"') == 2 and 'data-outcome="a NUL character"' in body


def test_a_bulk_enable_leaves_deleted_users_deleted(app, console, admin):
    bob = make_user_in(app, email="bob@example.com")
    with app.test_request_context():
        from idp.admin import service
        service.delete_user(service.OPERATOR, db.session.get(User, bob.id))
    dry = post(console, "/admin/users/bulk", "/admin/users", action="enable", q="bob", deleted="yes")
    assert "deleted (restore them first)" in dry.get_data(as_text=True)


def test_a_client_logo_is_shown_at_consent_under_a_csp_that_allows_its_origin_only(app, client):
    """SECURITY.md 16: the consent page of a client with a logo lets images come from that origin and nowhere else;
    the logo's address cannot carry anything into the policy."""
    from idp.oidc.registration import create_client
    from tests.support import authorize_url, walk

    make_user_in(app)
    with app.app_context():
        for bad in ("https://cdn.example;script-src *", "http://cdn.example/logo.png", "https://cdn.example 'x'/a.png",
                    "javascript:alert(1)"):
            with pytest.raises(ValueError, match="logo"):
                create_client(name="x", redirect_uris=["https://rp.example/cb"], post_logout_redirect_uris=[],
                              public=False, grant_types=[], scopes=[], auth_method=None, first_party=False,
                              logo_uri=bad)
        db.session.rollback()
    client_id, _secret = make_client_in(app, name="Shop", redirect_uris=["https://rp.example/cb"],
                                        logo_uri="https://cdn.example/logo.png")
    consent = walk(client, authorize_url(client_id), stop_at="consent").last
    policy = consent.headers["Content-Security-Policy"]
    assert "img-src 'self' https://cdn.example data:" in policy or "img-src 'self' https://cdn.example " in policy
    assert 'src="https://cdn.example/logo.png"' in consent.get_data(as_text=True)
    assert "https://cdn.example" not in client.get("/login").headers["Content-Security-Policy"]
