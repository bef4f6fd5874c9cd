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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import authorize_url, begun_sign_in, csrf_token, sign_in

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
    return client, begun_sign_in(started).rsplit("/", 1)[1]


def _browser_in(state: str, app, make_user, make_client):
    """A test client in ``state`` (a stranger, signed in, or inside a login transaction), the transaction's id, and
    a CSRF token its forms accept."""
    tid = None
    if state == "stranger":
        client = app.test_client()
    elif state == "signed_in":
        client = _signed_in(app, make_user)
    else:
        client, tid = _in_transaction(app, make_client)
    token_page = client.get(f"/login/{tid}" if tid else "/account")
    token = csrf_token(token_page) if 'name="csrf_token"' in token_page.get_data(as_text=True) else ""
    return client, tid, token


@pytest.mark.parametrize("state", ["stranger", "signed_in", "in_transaction"])
def test_no_route_answers_bad_input_with_a_500(app, make_user, make_client, state):
    client, tid, token = _browser_in(state, app, make_user, make_client)
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
            response.close()  # a file response (the favicon) holds its file open until closed
            if response.status_code >= 500:
                failures.append((method, rule, repr(value[:40]), response.status_code))
        if method == "POST":
            for body in BODIES:
                response = client.post(_path(rule, "x", tid), data=body, content_type="application/json",
                                       headers={"X-CSRFToken": token})
                response.close()  # a file response (the favicon) holds its file open until closed
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
        response.close()  # a file response (the favicon) holds its file open until closed
        if response.status_code >= 500:
            failures.append((method, rule, response.status_code))
    assert not failures, "\n".join(map(str, failures))
    page = client.post("/login", data=body, content_type="multipart/form-data; boundary=B")
    assert page.status_code == 400 and "name its field" in page.get_data(as_text=True)
    oauth = client.post("/token", data=body, content_type="multipart/form-data; boundary=B")
    assert oauth.status_code == 400 and oauth.get_json()["error"] == "invalid_request"


# --- the same, by property-based testing: what nobody thought to list ---------------------------------------------

# Hypothesis draws requests at random (query string, body in three encodings, headers) for a random route, in the
# same three states; every answer must be below 500 with no traceback in it. Bounded so the three runs take well
# under a minute on SQLite; Hypothesis keeps no example database here (database=None), so runs do not depend on
# each other. The examples are drawn inside the test (an inner @given), so pytest's function-scoped fixtures are
# built once per state, not per example.

FUZZ_EXAMPLES = 300
_NAMES = st.one_of(st.sampled_from(FIELDS + ["csrf_token", "_txn", "sid", "tid"]), st.text(max_size=12))
_VALUES = st.one_of(
    st.sampled_from(VALUES),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=()), max_size=20),
    st.integers(min_value=200, max_value=20000).map(lambda n: "\u00e9" * n),  # beyond any column, multibyte
)
_HEADER_NAMES = st.sampled_from(["Accept", "Authorization", "Cookie", "X-Forwarded-For", "Origin", "Referer",
                                 "User-Agent", "DPoP", "X-CSRFToken", "Accept-Language", "If-None-Match", "Range"])
_HEADER_VALUES = st.one_of(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0xFF,
                                                          exclude_characters="\r\n"), max_size=60),
                           st.sampled_from(["Bearer x", "Basic Og==", "Basic " + "A" * 3000, "application/json",
                                            "text/html;q=0", "*/*", "1.2.3.4, 999.1.1.1", "idp_session=\x00"]))
_CHARSETS = st.sampled_from(["", "; charset=utf-8", "; charset=latin-1", "; charset=utf-16", "; charset=x-bogus"])


def _encode(pairs: list[tuple[str, bytes]]) -> bytes:
    from urllib.parse import quote_from_bytes

    return "&".join(f"{quote(name, safe='')}={quote_from_bytes(value, safe='')}" for name, value in pairs).encode()


@st.composite
def _raw_pairs(draw, with_token: str):
    """Names with values as bytes: mostly UTF-8 text, sometimes bytes that are not UTF-8 at all."""
    pairs = [(name, draw(st.one_of(_VALUES.map(lambda v: v.encode("utf-8", "surrogatepass")),
                                   st.binary(max_size=30))))
             for name in draw(st.lists(_NAMES, max_size=6))]
    if with_token and draw(st.booleans()):
        pairs.append(("csrf_token", with_token.encode()))
    return pairs


@st.composite
def _multipart(draw, pairs: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body: parts with or without a name or filename, odd part headers, maybe cut short."""
    boundary = "b0undary"
    chunks = []
    for name, value in pairs:
        disposition = draw(st.sampled_from(["name", "none", "file", "odd"]))
        header = {"name": f'form-data; name="{name}"', "none": "form-data",
                  "file": f'form-data; name="{name}"; filename="{name}.txt"',
                  "odd": f"form-data; name*=UTF-8''{quote(name)}; filename=\"\x01\""}[disposition]
        extra = draw(st.sampled_from(["", "Content-Type: text/plain; charset=x-bogus\r\n",
                                      "Content-Transfer-Encoding: base64\r\n"]))
        chunks.append(f"--{boundary}\r\nContent-Disposition: {header}\r\n{extra}\r\n".encode("utf-8", "replace")
                      + value + b"\r\n")
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    if draw(st.booleans()):
        body = body[: draw(st.integers(min_value=0, max_value=len(body)))]
    return body, f"multipart/form-data; boundary={boundary}"


def _fuzz(app, client, tid: str | None, token: str, skip) -> None:
    routes = [(rule, method) for rule, method in _routes(app) if not skip(rule)]

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def one_request(data):
        rule, method = data.draw(st.sampled_from(routes), label="route")
        path = _path(rule, data.draw(_VALUES, label="path value"), tid)
        query = _encode(data.draw(_raw_pairs(""), label="query")).decode("ascii")
        headers = data.draw(st.dictionaries(_HEADER_NAMES, _HEADER_VALUES, max_size=3), label="headers")
        kind = data.draw(st.sampled_from(["none", "urlencoded", "multipart", "raw"]), label="body")
        body, content_type = b"", None
        if kind == "urlencoded":
            body = _encode(data.draw(_raw_pairs(token), label="form"))
            content_type = "application/x-www-form-urlencoded" + data.draw(_CHARSETS, label="charset")
        elif kind == "multipart":
            body, content_type = data.draw(_multipart(data.draw(_raw_pairs(token), label="parts")), label="mp")
        elif kind == "raw":
            body = data.draw(st.one_of(st.binary(max_size=200), st.sampled_from(BODIES)), label="raw")
            content_type = data.draw(st.sampled_from(["application/json", "text/plain", "application/jwt",
                                                      "application/x-www-form-urlencoded"]), label="type")
        response = client.open(path, method=method, query_string=query, headers=headers, data=body,
                               content_type=content_type)
        text = response.get_data().decode("utf-8", "replace")  # an icon is not text
        response.close()  # a file response (the favicon) holds its file open until closed
        if rule == "/readyz" and response.status_code == 503:  # its answer when a check fails (idp.ops): by design
            assert response.get_json()["status"] == "not ready"
            return
        assert response.status_code < 500, (method, path, response.status_code, text[:300])
        assert "Traceback" not in text

    one_request()


@pytest.mark.parametrize("state", ["stranger", "signed_in", "in_transaction"])
def test_no_route_answers_random_input_with_a_500(app, make_user, make_client, state):
    client, tid, token = _browser_in(state, app, make_user, make_client)

    def skip(rule: str) -> bool:  # they end the state under test; the stranger covers them
        return state != "stranger" and (rule in ("/logout", "/account/sessions/end-all") or rule.endswith("/cancel"))

    _fuzz(app, client, tid, token, skip)
