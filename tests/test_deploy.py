"""The deploy files at work: Debian's nginx with deploy/nginx/idp.conf in front of gunicorn with
deploy/gunicorn.conf.py serving `wsgi:app` in production mode, and the systemd units checked by systemd-analyze.

The stack is started as an operator would, from the repository's own files: nginx on loopback ports with only the
lines idp.conf marks changed (host name, certificate, folders, addresses), gunicorn with `-c
deploy/gunicorn.conf.py wsgi:app` and IDP_ENV=production (so on PostgreSQL and Redis: production refuses anything
else), a user and a client made with the `idp` command. The browser's part is played over real TLS from 127.0.0.2
while nginx listens on 127.0.0.1, so the client's address idp records can only come from X-Forwarded-For, believed
because gunicorn's peer (nginx, 127.0.0.1) is IDP_TRUSTED_PROXIES.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import SECRET, TEST_DATABASE_URL, TEST_REDIS_URL
from tests.support import RP_CALLBACK, csrf_token, free_port, pkce_pair, query_params, screen_url, step_name

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
NGINX = "/usr/sbin/nginx"
BIN = Path(sys.executable).parent  # the virtualenv's scripts: gunicorn and idp, as the systemd units run them
PASSWORD = "a long deploy test passphrase"
CLIENT_ADDRESS = "127.0.0.2"  # the browser; nginx and gunicorn are on 127.0.0.1
FORGED = "203.0.113.9"  # what the browser claims in its own X-Forwarded-For


def _stack_missing() -> str | None:
    if not os.access(NGINX, os.X_OK):
        return f"{NGINX} is missing (apt-get install nginx)"
    if not (BIN / "gunicorn").exists() or not (BIN / "idp").exists():
        return f"gunicorn or the idp command is missing from {BIN} (pip install -r requirements.txt -e .)"
    if not TEST_DATABASE_URL.startswith("postgresql") or not TEST_REDIS_URL:
        return ("needs PostgreSQL and Redis (IDP_TEST_DATABASE_URL, IDP_TEST_REDIS_URL): the stack runs with "
                "IDP_ENV=production, which refuses SQLite and in-memory rate limits")
    return None


needs_stack = pytest.mark.skipif(_stack_missing() is not None, reason=_stack_missing() or "")


# --- the stack ---------------------------------------------------------------------------------------------------

def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """An RSA certificate for "localhost" (RSA, so that a cipher without forward secrecy could be agreed at all,
    were nginx to offer one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def site_config(edit, https_port: int, http_port: int) -> str:
    """deploy/nginx/idp.conf with its marked lines changed and nothing else: every "EDIT" line's value is
    ``edit(directive, comment)``, every "LISTEN" line moves to a loopback port (the [::] ones are dropped)."""
    out = []
    for line in (DEPLOY / "nginx" / "idp.conf").read_text().splitlines():
        code, _, comment = line.partition("#")
        directive = code.split()[0] if code.strip() else ""
        if comment.startswith(" EDIT"):
            indent = code[:len(code) - len(code.lstrip())]
            out.append(f"{indent}{directive} {edit(directive, comment)};")
        elif comment.startswith(" LISTEN"):
            assert re.search(r"listen (\[::\]:)?(443|80)\b", code), line
            if "[::]" in code:
                continue
            port = https_port if " 443 " in code else http_port
            out.append(re.sub(r"listen (443|80)\b", f"listen 127.0.0.1:{port}", code))
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def main_config(prefix: Path, site: Path) -> str:
    """The http block of Debian's /etc/nginx/nginx.conf (its weak ssl_protocols line included, which the site must
    override) around the site, with every path under ``prefix``."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read files under the test's own folders
    temp = "".join(f"    {kind}_temp_path {prefix / 'temp' / kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"{user}worker_processes 1;\npid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'};\n"
            "events { worker_connections 64; }\n"
            "http {\n    sendfile on;\n    tcp_nopush on;\n    types_hash_max_size 2048;\n"
            "    include /etc/nginx/mime.types;\n    default_type application/octet-stream;\n"
            "    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;\n    ssl_prefer_server_ciphers on;\n"
            f"    access_log {prefix / 'access.log'};\n    gzip on;\n{temp}    include {site};\n}}\n")


def wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {seconds} s: {log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class Stack:
    """nginx (TLS on ``https_port``, plain http on ``http_port``) in front of gunicorn (``gunicorn_port``)."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.https_port, self.http_port, self.gunicorn_port = free_port(), free_port(), free_port()
        self.issuer = f"https://localhost:{self.https_port}"
        self.queue = f"idp-deploy-{uuid.uuid4().hex[:12]}"
        self.metrics_dir = tmp_path / "prometheus"
        self.acme_root = tmp_path / "acme"
        self.cert, self.key = self_signed_certificate(tmp_path)
        self.gunicorn_out = tmp_path / "gunicorn.out"
        self.gunicorn_err = tmp_path / "gunicorn.err"
        self.processes: list[subprocess.Popen] = []

    def env(self) -> dict[str, str]:
        """Production settings, as /etc/idp/idp.env would hold them (nothing of the shell's IDP_* gets in)."""
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("IDP_", "PROMETHEUS_", "FORWARDED_ALLOW_IPS", "WEB_CONCURRENCY"))}
        env.update({
            "PYTHONPATH": str(ROOT),  # this checkout's idp, whatever the virtualenv has installed
            "IDP_ENV": "production",
            "IDP_ISSUER": self.issuer,
            "IDP_SECRET_KEY": SECRET,
            "IDP_DATABASE_URL": TEST_DATABASE_URL,
            "IDP_REDIS_URL": TEST_REDIS_URL,
            "IDP_QUEUE_NAME": self.queue,
            "IDP_MAIL_BACKEND": "console",
            "IDP_TRUSTED_PROXIES": "127.0.0.1",
            "IDP_BIND": f"127.0.0.1:{self.gunicorn_port}",
            "IDP_WORKERS": "2",
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        })
        return env

    def idp(self, *args: str, input: str | None = None) -> str:
        """Run the `idp` command with the stack's settings (as the operator does on the host)."""
        done = subprocess.run([str(BIN / "idp"), *args], input=input, capture_output=True, text=True,
                              env=self.env(), cwd=ROOT, timeout=120)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def edit(self, directive: str, comment: str) -> str:
        """The value of each line idp.conf marks for the operator, on this test's loopback and folders."""
        if directive == "root":
            return str(self.acme_root) if "certbot" in comment else str(ROOT)
        return {"server": f"127.0.0.1:{self.gunicorn_port}", "server_name": "localhost",
                "ssl_certificate": str(self.cert), "ssl_certificate_key": str(self.key)}[directive]

    def start(self) -> None:
        with self.gunicorn_out.open("wb") as out, self.gunicorn_err.open("wb") as err:
            self.gunicorn = subprocess.Popen(
                [str(BIN / "gunicorn"), "-c", str(DEPLOY / "gunicorn.conf.py"), "wsgi:app"], env=self.env(),
                cwd=self.tmp, stdout=out, stderr=err, start_new_session=True)
        self.processes.append(self.gunicorn)
        prefix = self.tmp / "nginx"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / "temp" / kind).mkdir(parents=True)
        site = prefix / "idp.conf"
        site.write_text(site_config(self.edit, self.https_port, self.http_port))
        conf = prefix / "nginx.conf"
        conf.write_text(main_config(prefix, site))
        self.nginx_log = prefix / "error.log"
        with (prefix / "stderr.log").open("wb") as err:
            self.nginx = subprocess.Popen([NGINX, "-p", str(prefix), "-e", str(self.nginx_log), "-c", str(conf),
                                           "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=err,
                                          start_new_session=True)
        self.processes.append(self.nginx)
        wait_for_port(self.https_port, self.nginx, prefix / "stderr.log")
        wait_for_port(self.gunicorn_port, self.gunicorn, self.gunicorn_err)

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop(process)

    def access_log(self, wanted=lambda line: True, count: int = 1, seconds: float = 10) -> list[dict]:
        """gunicorn's access log: every line of its standard output must be one JSON object; those ``wanted``,
        waiting (bounded) for ``count`` of them, since a worker writes its line after the response is sent."""
        deadline = time.monotonic() + seconds
        while True:
            lines = [line for line in self.gunicorn_out.read_text().splitlines() if line.strip()]
            parsed = [json.loads(line) for line in lines]
            found = [entry for entry in parsed if wanted(entry)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def workers(self) -> set[int]:
        """The pids of gunicorn's worker processes (the master's children)."""
        children = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.gunicorn.pid:
                children.add(int(stat.parent.name))
        return children


@pytest.fixture
def stack(tmp_path, make_app):
    """The running stack; its user and client rows (and everything it wrote) are removed afterwards."""
    make_app()  # an app on the same database, so that make_app empties its tables afterwards
    stack = Stack(tmp_path)
    stack.metrics_dir.mkdir()
    (stack.metrics_dir / "counter_4242.db").write_bytes(b"stale")  # a previous run's
    stack.acme_root.mkdir()
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        from redis import Redis
        from rq import Queue

        connection = Redis.from_url(TEST_REDIS_URL)
        Queue(stack.queue, connection=connection).delete(delete_jobs=True)  # the new-device mails it queued
        connection.close()


# --- a browser over TLS from another loopback address -------------------------------------------------------------

class _Connection(http.client.HTTPSConnection):
    """HTTPS to nginx at 127.0.0.1 from ``source``, the certificate checked for "localhost" (SNI ``server_name``)."""

    def __init__(self, port: int, context: ssl.SSLContext, source: str, server_name: str | None):
        super().__init__("localhost", port, timeout=60, context=context, source_address=(source, 0))
        self.tls, self.server_name = context, server_name

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout, self.source_address)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.server_name)


class Answer:
    """A response, read whole; shaped like the Flask test client's where tests/support.py reads it (csrf_token,
    step_name)."""

    def __init__(self, response: http.client.HTTPResponse, url: str):
        self.status_code = response.status
        self.headers = response.msg
        self.body = response.read()
        self.url = url

    def get_data(self, as_text: bool = False):
        return self.body.decode() if as_text else self.body

    def json(self) -> dict:
        return json.loads(self.body)

    def all(self, name: str) -> list[str]:
        return self.headers.get_all(name) or []


class Browser:
    """Cookies, forms and redirects over HTTPS through nginx; each request also claims X-Forwarded-For: FORGED."""

    def __init__(self, stack: Stack, source: str = CLIENT_ADDRESS):
        self.stack, self.source = stack, source
        self.context = ssl.create_default_context(cafile=str(stack.cert))
        self.cookies: dict[str, str] = {}
        self.set_cookies: list[str] = []

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Answer:
        connection = _Connection(self.stack.https_port, self.context, self.source, "localhost")
        sent = {"X-Forwarded-For": FORGED, "User-Agent": "deploy-test/1.0", **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        try:
            connection.request(method, path, body=body, headers=sent)
            answer = Answer(connection.getresponse(), path)
        finally:
            connection.close()
        for raw in answer.all("Set-Cookie"):
            self.set_cookies.append(raw)
            for name, morsel in SimpleCookie(raw).items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return answer

    def get(self, path: str, **kwargs) -> Answer:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, data: dict, headers: dict | None = None) -> Answer:
        return self.request("POST", path, body=urlencode(data).encode(),
                            headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})

    def sign_in_through_authorize(self, authorize_path: str, email: str) -> tuple[list[str], str]:
        """From an /authorize URL through the hosted screens (password, consent allowed) to the redirect to the
        client; the screens shown and that redirect."""
        screens = []
        answer = self.get(authorize_path)
        for _ in range(20):
            if answer.status_code in (301, 302, 303):
                location = answer.headers["Location"]
                if location.startswith(RP_CALLBACK):
                    return screens, location
                parts = urlsplit(location)
                if parts.scheme:  # an absolute URL must be idp's own origin
                    assert f"{parts.scheme}://{parts.netloc}" == self.stack.issuer, location
                answer = self.get(parts.path + (f"?{parts.query}" if parts.query else ""))
                continue
            assert answer.status_code == 200, (answer.status_code, answer.get_data(as_text=True)[:500])
            name = step_name(answer)
            assert name in ("password", "consent"), (name, screens)
            screens.append(name)
            form = {"csrf_token": csrf_token(answer), "step": name}
            form.update({"email": email, "password": PASSWORD} if name == "password" else {"allow": "Allow"})
            answer = self.post(screen_url(answer), form)  # wherever the screen was shown, it posts to /login/<tid>
        raise AssertionError(f"no redirect to the client after {screens}")


# --- the tests ----------------------------------------------------------------------------------------------------

@needs_stack
def test_a_code_flow_through_nginx_records_the_browsers_address_and_https(stack):
    """Password sign-in, consent, code with PKCE, token, userinfo: over TLS through nginx, from 127.0.0.2."""
    stack.idp("users", "create", "alice@example.com", "--password-stdin", "--verified", "--name", "Alice",
              input=PASSWORD + "\n")
    created = json.loads(stack.idp("clients", "create", "--name", "Deploy RP", "--redirect-uri", RP_CALLBACK,
                                   "--json"))
    client_id, secret = created["client_id"], created["client_secret"]
    browser = Browser(stack)
    verifier, challenge = pkce_pair()
    authorize = "/authorize?" + urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": RP_CALLBACK, "scope": "openid email",
        "state": "s-1", "nonce": "n-1", "code_challenge": challenge, "code_challenge_method": "S256"})
    screens, location = browser.sign_in_through_authorize(authorize, "alice@example.com")
    assert screens == ["password", "consent"]
    params = query_params(location)
    assert params["state"] == "s-1" and params["iss"] == stack.issuer

    # Production's cookies reached the browser: host-only and Secure (__Host-), which it keeps over https only.
    session = [raw for raw in browser.set_cookies if raw.startswith("__Host-idp_session=")]
    assert session and all("Secure" in raw and "HttpOnly" in raw and "Path=/" in raw for raw in session)

    token = browser.post("/token", {"grant_type": "authorization_code", "code": params["code"],
                                    "redirect_uri": RP_CALLBACK, "code_verifier": verifier},
                         headers={"Authorization": http_basic(client_id, secret)})
    assert token.status_code == 200, token.get_data(as_text=True)
    tokens = token.json()
    from joserfc import jwt
    from joserfc.jwk import KeySet

    keys = KeySet.import_key_set(browser.get("/jwks.json").json())
    id_token = jwt.decode(tokens["id_token"], keys, algorithms=["RS256"])
    assert id_token.claims["iss"] == stack.issuer and id_token.claims["nonce"] == "n-1"
    info = browser.get("/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert info.status_code == 200 and info.json()["email"] == "alice@example.com"

    # idp saw the browser's own address (nginx's X-Forwarded-For), not nginx's, not the one the browser forged.
    engine = create_engine(TEST_DATABASE_URL.replace("postgresql://", "postgresql+psycopg2://", 1))
    with engine.connect() as conn:
        session_ips = conn.execute(text("SELECT s.ip FROM login_sessions s JOIN users u ON u.id = s.user_id "
                                        "WHERE u.email = 'alice@example.com'")).scalars().all()
        audit_ips = conn.execute(text("SELECT ip FROM audit_events WHERE event = 'login.success'")).scalars().all()
    engine.dispose()
    assert session_ips == [CLIENT_ADDRESS]
    assert audit_ips == [CLIENT_ADDRESS]

    # ... and the https scheme: a redirect idp builds from the request (a missing trailing slash) is https.
    admin = browser.get("/admin")
    assert admin.status_code in (301, 308)
    assert admin.headers["Location"] == "https://localhost/admin/"

    # The access log: JSON lines with the browser's address, nginx as the peer, https, and the request id nginx
    # gave back to the browser; a secret in a query is redacted (SECURITY.md 30).
    mine = browser.get("/.well-known/openid-configuration?" + urlencode(
        {"code": params["code"], "id_token_hint": tokens["id_token"], "x": "1"}),
        headers={"X-Request-ID": "rp-trace-0042"})
    assert mine.status_code == 200 and mine.headers["X-Request-ID"] == "rp-trace-0042"
    made_up = browser.get("/jwks.json", headers={"X-Request-ID": "not an id\\\"{"})
    assert re.fullmatch(r"[0-9a-f]{32}", made_up.headers["X-Request-ID"])
    # Quotes and backslashes where idp.logs redacts (a query) and where it does not (a header): still one object.
    hostile = browser.get('/jwks.json?code=a\\"b"&x=\\', headers={"User-Agent": 'ua "x" \\ "\'',
                                                                  "X-Request-ID": "h-1"})
    assert hostile.status_code == 200

    entries = stack.access_log(lambda entry: entry.get("request_id") in ("rp-trace-0042", "h-1"), count=2)
    by_id = {entry["request_id"]: entry for entry in entries}
    line = by_id["rp-trace-0042"]
    assert line["path"] == "/.well-known/openid-configuration?code=[redacted]&id_token_hint=[redacted]&x=1"
    assert line["remote_addr"] == CLIENT_ADDRESS and line["peer"] == "127.0.0.1"
    assert line["scheme"] == "https" and line["method"] == "GET" and line["status"] == 200
    assert line["bytes"] == len(mine.body) and line["user_agent"] == "deploy-test/1.0"
    assert isinstance(line["duration_ms"], float) and line["time"].endswith("Z")
    assert by_id["h-1"]["path"] == '/jwks.json?code=[redacted]"b"&x=\\'
    assert by_id["h-1"]["user_agent"] == 'ua "x" \\ "\''
    everything = stack.gunicorn_out.read_text()
    for secret_value in (params["code"], tokens["id_token"], tokens["access_token"], PASSWORD, secret):
        assert secret_value not in everything
    made_up_line = stack.access_log(lambda entry: entry["request_id"] == made_up.headers["X-Request-ID"])
    assert made_up_line and made_up_line[0]["path"] == "/jwks.json"
    # Every request of the walk is there, each from the browser's address.
    walked = stack.access_log(lambda entry: entry["path"].startswith(("/authorize", "/login", "/token", "/userinfo")),
                              count=5)
    assert walked and {entry["remote_addr"] for entry in walked} == {CLIENT_ADDRESS}


def http_basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@needs_stack
def test_nginx_answers_what_idp_must_not_see(stack):
    """Metrics, oversized bodies, static files, plain http, other host names and weak ciphers are nginx's."""
    browser = Browser(stack)
    page = browser.get("/login")
    assert page.headers.get("Content-Security-Policy")  # idp's own answer carries its CSP ...
    assert page.all("Strict-Transport-Security") == ["max-age=63072000; includeSubDomains"]  # ... HSTS once

    # /metrics never leaves the host: nginx answers (no CSP: idp never saw it), with no metric in the body.
    for path in ("/metrics", "/metrics?name[]=x", "//metrics", "/%6Detrics", "/metrics/", "/static/../metrics"):
        answer = browser.get(path)
        assert answer.status_code == 404, path
        assert "Content-Security-Policy" not in answer.headers, path
        assert b"# TYPE" not in answer.body and b"# HELP" not in answer.body
        assert answer.all("Strict-Transport-Security"), path

    # idp's 1 MiB limit (MAX_CONTENT_LENGTH) is nginx's too: exactly 1 MiB reaches idp, one byte more does not.
    at_limit = browser.request("POST", "/token", body=b"x" * (1024 * 1024),
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert at_limit.status_code == 400 and at_limit.headers.get("Content-Security-Policy")
    over = oversized(stack, browser)
    assert over.status_code == 413 and "Content-Security-Policy" not in over.headers
    assert over.all("Strict-Transport-Security")

    # Static files come from the repository's static/ through nginx, cached, with HSTS.
    css = browser.get("/static/css/idp.css")
    assert css.status_code == 200 and css.body == (ROOT / "static" / "css" / "idp.css").read_bytes()
    assert css.headers["Content-Type"].startswith("text/css")
    max_age = int(re.search(r"max-age=(\d+)", css.headers["Cache-Control"]).group(1))
    assert max_age >= 86400 and css.headers["Expires"]
    assert css.all("Strict-Transport-Security") and css.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" not in css.headers  # not idp's answer
    # A path out of static/ is matched after normalising (/wsgi.py: idp's, which has no such page), never a file.
    escape = browser.get("/static/../wsgi.py")
    assert escape.status_code == 404 and b"create_app" not in escape.body

    # None of those reached gunicorn; the sign-in page, the 1 MiB body and the escape attempt did.
    browser.get("/jwks.json", headers={"X-Request-ID": "last-one"})
    assert stack.access_log(lambda entry: entry["request_id"] == "last-one")
    seen = [entry["path"] for entry in stack.access_log()]
    assert seen == ["/login", "/token", "/static/../wsgi.py", "/jwks.json"]

    # Plain http: moved to https on idp's name (not the Host a client sends), except certbot's challenges.
    for host in ("localhost", "evil.example"):
        moved = plain_http(stack, "/login?next=%2Faccount", host)
        assert moved.status == 301 and moved.getheader("Location") == "https://localhost/login?next=%2Faccount"
    challenge = stack.acme_root / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True)
    (challenge / "token-1").write_text("token-1.thumbprint")
    answer = plain_http(stack, "/.well-known/acme-challenge/token-1", "localhost")
    assert answer.status == 200 and answer.read() == b"token-1.thumbprint"

    # TLS: no certificate for another name (or none), no cipher without forward secrecy.
    assert tls_handshake(stack, "localhost") == "TLSv1.3"
    for server_name in ("other.example", None):
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            tls_handshake(stack, server_name)
    assert tls_handshake(stack, "localhost", tls12_ciphers="ECDHE-RSA-AES128-GCM-SHA256") == "TLSv1.2"
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):  # no shared cipher
        tls_handshake(stack, "localhost", tls12_ciphers="AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA")


def oversized(stack: Stack, browser: Browser) -> Answer:
    """A POST announcing one byte more than 1 MiB: nginx answers from the headers, before any body is sent."""
    connection = _Connection(stack.https_port, browser.context, CLIENT_ADDRESS, "localhost")
    try:
        connection.putrequest("POST", "/token")
        connection.putheader("Content-Type", "application/x-www-form-urlencoded")
        connection.putheader("Content-Length", str(1024 * 1024 + 1))
        connection.endheaders()
        return Answer(connection.getresponse(), "/token")
    finally:
        connection.close()


def plain_http(stack: Stack, path: str, host: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=30)
    connection.request("GET", path, headers={"Host": host})
    response = connection.getresponse()
    response.body = response.read()
    response.read = lambda: response.body
    connection.close()
    return response


def tls_handshake(stack: Stack, server_name: str | None, tls12_ciphers: str | None = None) -> str:
    """A TLS handshake with nginx, the protocol agreed. The client checks nothing and offers what it is told, so a
    failure can only be nginx refusing."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if tls12_ciphers:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(tls12_ciphers)
        offered = {cipher["name"] for cipher in context.get_ciphers()}
        assert set(tls12_ciphers.split(":")) <= offered, offered
    with socket.create_connection(("127.0.0.1", stack.https_port), timeout=30) as sock:
        with context.wrap_socket(sock, server_hostname=server_name) as tls:
            return tls.version()


@needs_stack
def test_sighup_reloads_gunicorn_gracefully_and_clears_dead_workers_metrics(stack):
    """`systemctl reload idp-web`: new workers take over, the old ones' live gauges go, idp keeps answering."""
    assert not (stack.metrics_dir / "counter_4242.db").exists()  # a previous run's metrics, emptied at start
    browser = Browser(stack)
    assert browser.get("/.well-known/openid-configuration").json()["issuer"] == stack.issuer
    old = stack.workers()
    assert len(old) == 2  # IDP_WORKERS
    # The files prometheus-client keeps for a live gauge of each worker (multiprocess mode "liveall").
    for pid in old:
        (stack.metrics_dir / f"gauge_liveall_{pid}.db").write_bytes(b"")
    kept = stack.metrics_dir / f"counter_{min(old)}.db"  # a counter outlives its worker
    kept.write_bytes(b"")

    os.kill(stack.gunicorn.pid, signal.SIGHUP)
    # The master reaps each old worker, then runs child_exit for it: wait (bounded) for both.
    gauges = [stack.metrics_dir / f"gauge_liveall_{pid}.db" for pid in old]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = stack.workers()
        if len(now) == 2 and not now & old and not any(gauge.exists() for gauge in gauges):
            break
        time.sleep(0.1)
    assert len(now) == 2 and not now & old, f"workers {old} not replaced: {now}"
    assert not [gauge.name for gauge in gauges if gauge.exists()]  # child_exit ran for each old worker
    assert stack.gunicorn.poll() is None and kept.exists()
    assert browser.get("/.well-known/openid-configuration").json()["issuer"] == stack.issuer


def load_gunicorn_conf(**environ: str) -> dict:
    """deploy/gunicorn.conf.py loaded as gunicorn's master loads it, in a fresh interpreter with ``environ``."""
    script = (
        "import json, runpy, sys\n"
        f"conf = runpy.run_path({str(DEPLOY / 'gunicorn.conf.py')!r})\n"
        "print(json.dumps({'workers': conf['workers'], 'bind': conf['bind'], 'proxies': conf['forwarded_allow_ips'],"
        " 'schemes': conf['secure_scheme_headers'], 'forwarder_headers': conf['forwarder_headers'],"
        " 'control_socket': conf.get('control_socket'), 'no_control': conf.get('control_socket_disable', False),"
        " 'logger': conf['logger_class'].__name__,"
        " 'imported': sorted(m for m in sys.modules if m.split('.')[0] in ('idp', 'flask', 'prometheus_client'))}))\n")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("IDP_", "PROMETHEUS_", "RUNTIME_DIRECTORY"))}
    env.update(environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_gunicorn_settings_come_from_the_environment_and_never_import_idp_in_the_master():
    """The master must not import idp (or Flask): a SIGHUP then loads new code in new workers. Workers, bind and
    trusted proxies follow the environment idp itself reads."""
    default = load_gunicorn_conf()
    assert default["imported"] == []
    assert default["workers"] == max(2, len(os.sched_getaffinity(0)))
    assert default["bind"] == ["127.0.0.1:8000"]
    assert default["proxies"] == ""  # no proxy configured: neither gunicorn nor idp believes forwarded headers
    assert default["schemes"] == {"X-FORWARDED-PROTO": "https"} and default["forwarder_headers"] == ""
    assert default["no_control"] is True and default["logger"] == "JSONLogger"

    configured = load_gunicorn_conf(IDP_WORKERS="5", IDP_BIND="127.0.0.1:9001", RUNTIME_DIRECTORY="/run/idp-web",
                                    IDP_TRUSTED_PROXIES="127.0.0.1, 10.1.2.3/8,::1")
    assert configured["workers"] == 5 and configured["bind"] == ["127.0.0.1:9001"]
    # idp reads 10.1.2.3/8 as 10.0.0.0/8; gunicorn would refuse the host bits, so the file normalises them.
    assert configured["proxies"] == "127.0.0.1/32,10.0.0.0/8,::1/128"
    assert configured["control_socket"] == "/run/idp-web/gunicorn.ctl" and configured["no_control"] is False
    assert configured["imported"] == []


SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"


@pytest.mark.skipif(not os.access(SYSTEMD_ANALYZE, os.X_OK),
                    reason="systemd-analyze is missing (apt-get install systemd)")
def test_the_systemd_units_verify_and_are_hardened(tmp_path):
    """`systemd-analyze verify` on copies whose /opt/idp paths name this checkout and its virtualenv (the one thing
    it checks that a host without idp installed cannot satisfy: that ExecStart's programs exist); any warning
    (an unknown or misspelt directive, a bad value) fails. Each service's exposure stays in systemd's "OK" band."""
    units = sorted((DEPLOY / "systemd").iterdir())
    assert {unit.name for unit in units} >= {"idp-web.service", "idp-worker@.service", "idp-housekeeping.service",
                                             "idp-housekeeping.timer", "idp-backup.service", "idp-backup.timer"}
    for unit in units:
        source = unit.read_text()
        assert "/opt/idp" in source or unit.suffix == ".timer"
        copy = (source.replace("/opt/idp/.venv", str(Path(sys.prefix)))
                .replace("/opt/idp", str(ROOT)))
        (tmp_path / unit.name).write_text(copy)
        if unit.suffix == ".service":
            for directive in ("User=idp", "EnvironmentFile=/etc/idp/idp.env", "ProtectSystem=strict",
                              "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes", "CapabilityBoundingSet=\n"):
                assert directive in source, (unit.name, directive)
    verified = subprocess.run([SYSTEMD_ANALYZE, "verify", *sorted(str(p) for p in tmp_path.iterdir())],
                              capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0 and verified.stderr.strip() == "" and verified.stdout.strip() == "", \
        verified.stdout + verified.stderr
    for service in sorted(tmp_path.glob("*.service")):
        security = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", str(service)],
                                  capture_output=True, text=True, timeout=120)
        exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
        assert exposure, security.stdout + security.stderr
        assert float(exposure.group(1)) <= 2.0, (service.name, security.stdout)
