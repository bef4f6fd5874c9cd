"""Every route, fed bad input in three states, answers below 500 (SECURITY.md 31: a clear error in the caller's
form, never a 500 or a traceback).

The states: a stranger; a signed-in user whose requests carry a valid CSRF token (so forms get past the CSRF
check to their own validation); a browser inside a login transaction (so the step routes find their transaction).
The values are the kinds that once made 500s on PostgreSQL: a NUL, digits of other scripts and superscripts,
text beyond any column, JSON bodies that are not objects, malformed WebAuthn credentials and client assertions.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest

from tests.support import authorize_url, csrf_token, sign_in

VALUES = ["\x00", "a\x00b", "\u00e9", "\u00b2\u0661\uff11\uff12", "x" * 5000, "", "[]", "{}", '{"id": "\\u0000"}',
          '{"id": 5, "rawId": "AAAA", "type": "public-key", "response": {}}', "-1", "99999999999999999999",
          "%zz", "\U0001F600", "eyJhbGciOiJub25lIn0.eyJzdWIiOjV9."]
FIELDS = ["client_id", "redirect_uri", "response_type", "scope", "state", "nonce", "code", "code_verifier",
          "code_challenge", "code_challenge_method", "grant_type", "refresh_token", "token", "token_type_hint",
          "email", "password", "name", "phone", "step", "factor", "credential", "confirm", "current_password",
          "new_password", "id_token_hint", "post_logout_redirect_uri", "prompt", "max_age", "acr_values",
          "login_hint", "claims", "client_assertion", "client_assertion_type", "access_token", "next", "remember"]
BODIES = [b"[1, 2]", b"5", b'"text"', b"{", b"\xff\xfe", b'{"email": 5, "password": ["x"], "name": {}}']


def _routes(app) -> list[tuple[str, str]]:
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((rule.rule, method))
    return found


def _path(rule: str, value: str, tid: str | None) -> str:
    def fill(match: re.Match) -> str:
        converter, name = match.group(1), match.group(2)
        if converter == "int":
            return "1"
        if name == "tid" and tid:
            return tid
        return quote(value, safe="") or "x"

    return re.sub(r"<(?:(\w+):)?(\w+)>", fill, rule)


def _signed_in(app, make_user):
    make_user()
    client = app.test_client()
    done = sign_in(client, "alice@example.com")
    assert done.status_code == 302, done.status_code
    return client


def _in_transaction(app, make_client):
    client_id, _ = make_client(first_party=True)
    client = app.test_client()
    started = client.get(authorize_url(client_id, nonce="n-1"))
    assert started.headers["Location"].startswith("/login/"), started.headers["Location"]
    return client, started.headers["Location"].rsplit("/", 1)[1]


@pytest.mark.parametrize("state", ["stranger", "signed_in", "in_transaction"])
def test_no_route_answers_bad_input_with_a_500(app, make_user, make_client, state):
    tid = None
    if state == "stranger":
        client = app.test_client()
    elif state == "signed_in":
        client = _signed_in(app, make_user)
    else:
        client, tid = _in_transaction(app, make_client)
    token_page = client.get(f"/login/{tid}" if tid else "/account")
    token = csrf_token(token_page) if 'name="csrf_token"' in token_page.get_data(as_text=True) else ""
    failures = []
    for rule, method in _routes(app):
        if rule in ("/logout", "/account/sessions/end-all") or rule.endswith("/cancel"):
            continue  # they end the state under test; their bad input is covered by the stranger
        for value in VALUES:
            fields = {name: value for name in FIELDS}
            path = _path(rule, value, tid)
            if method == "GET":
                response = client.get(path, query_string=fields)
            else:
                response = client.open(path, method=method, data={**fields, "csrf_token": token})
            if response.status_code >= 500:
                failures.append((method, rule, repr(value[:40]), response.status_code))
        if method == "POST":
            for body in BODIES:
                response = client.post(_path(rule, "x", tid), data=body, content_type="application/json",
                                       headers={"X-CSRFToken": token})
                if response.status_code >= 500:
                    failures.append((method, rule, body, response.status_code))
    assert not failures, "\n".join(map(str, failures))


NAMELESS_PART = b'--B\r\nContent-Disposition: form-data\r\n\r\nvalue\r\n--B--\r\n'
NAMELESS_FILE = b'--B\r\nContent-Disposition: form-data; filename="a.txt"\r\n\r\nvalue\r\n--B--\r\n'


@pytest.mark.parametrize("body", [NAMELESS_PART, NAMELESS_FILE], ids=["field", "file"])
def test_a_multipart_part_without_a_name_is_bad_input_everywhere(app, body):
    """RFC 7578 4.2: every part names its field; one that does not is a 400 in the caller's form, at every route."""
    client = app.test_client()
    failures = []
    for rule, method in _routes(app):
        if method == "GET":
            continue
        response = client.open(_path(rule, "x", None), method=method, data=body,
                               content_type="multipart/form-data; boundary=B")
        if response.status_code >= 500:
            failures.append((method, rule, response.status_code))
    assert not failures, "\n".join(map(str, failures))
    page = client.post("/login", data=body, content_type="multipart/form-data; boundary=B")
    assert page.status_code == 400 and "name its field" in page.get_data(as_text=True)
    oauth = client.post("/token", data=body, content_type="multipart/form-data; boundary=B")
    assert oauth.status_code == 400 and oauth.get_json()["error"] == "invalid_request"
