"""What an operator relies on (issue 20): /healthz and /readyz, /metrics for the allowed addresses only and counts
that move, one log line per request with its request id, and settings refused in one line, never a traceback."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from idp import create_app
from idp.extensions import db
from idp.oidc import keys
from tests.conftest import SECRET, base_config
from tests.support import RP_CALLBACK, authorize, csrf_token, drain_jobs, free_port, pkce_pair, sign_in

ROOT = Path(__file__).resolve().parent.parent
IDP = str(Path(sys.executable).parent / "idp")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200, response.status_code
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return samples(response.get_data(as_text=True))


# --- health and readiness ------------------------------------------------------------------------------------------


def test_healthz_answers_without_reading_anything(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


def test_readyz_names_each_check_and_is_ready_once_a_signing_key_exists(app, client):
    first = client.get("/readyz")
    assert first.status_code == 503, first.get_json()  # a fresh database has no signing key yet
    assert first.get_json()["checks"]["signing_key"] == "missing"
    assert first.headers["Retry-After"]
    with app.app_context():
        keys.active()
        db.session.commit()
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["checks"]["database"] == "ok" and body["checks"]["migrations"] == "ok"
    assert body["checks"]["redis"] == ("ok" if app.config["IDP_REDIS_URL"] else "not configured")


def test_readyz_refuses_an_instance_whose_schema_is_not_the_one_its_code_expects(app, client):
    with app.app_context():
        keys.active()
        db.session.commit()
    app.extensions["idp.migration_heads"] = {"0099_from_a_newer_release"}  # this code expects a newer schema
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["migrations"] == "not at head"


def test_readyz_says_not_ready_when_redis_or_the_database_is_down_without_leaking_where(app, make_app, tmp_path):
    redis_down = make_app(IDP_REDIS_URL="redis://:hunter2@127.0.0.1:1/0")
    response = redis_down.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"] == "unavailable"
    assert "hunter2" not in response.get_data(as_text=True) and "127.0.0.1" not in response.get_data(as_text=True)

    # Not through make_app: its clean-up would empty the tables of a database that is not there.
    database_down = create_app(base_config(tmp_path, IDP_DATABASE_URL="postgresql://idp:s3cret@127.0.0.1:1/idp"))
    response = database_down.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] == "unavailable"
    assert "s3cret" not in response.get_data(as_text=True)


# --- metrics -------------------------------------------------------------------------------------------------------


def test_metrics_are_for_the_allowed_addresses_only(make_app):
    app = make_app(IDP_TRUSTED_PROXIES=["127.0.0.1"], IDP_METRICS_ALLOW=["127.0.0.1", "10.9.0.0/16"])
    client = app.test_client()
    assert client.get("/metrics").status_code == 200  # loopback: Prometheus on the same host
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.9.1.2"}).status_code == 200
    stranger = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert stranger.status_code == 404 and b"idp_" not in stranger.data
    # Through a proxy on loopback that forgot to close /metrics: the client's real address decides, not the proxy's.
    proxied = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.7"})
    assert proxied.status_code == 404 and b"idp_" not in proxied.data


def test_a_sign_in_moves_the_counts_by_outcome_factor_grant_and_route(app, client, make_user, make_client):
    make_user()
    client_id, secret = make_client(first_party=True)
    before = scrape(client)

    refused = sign_in(client, "alice@example.com", "not the password")
    assert refused.status_code == 200
    verifier, challenge = pkce_pair()
    code = authorize(client, client_id, code_challenge=challenge, code_challenge_method="S256")
    token = client.post("/token", data={"grant_type": "authorization_code", "code": code, "redirect_uri": RP_CALLBACK,
                                        "code_verifier": verifier}, auth=(client_id, secret))
    assert token.status_code == 200
    after = scrape(client)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("idp_signins_total", outcome="success") == 1
    assert moved("idp_signins_total", outcome="failure") == 1
    assert moved("idp_signin_factors_total", factor="pwd", outcome="success") == 1
    assert moved("idp_signin_factors_total", factor="pwd", outcome="failure") == 1
    assert moved("idp_tokens_issued_total", grant="authorization_code") == 1
    assert moved("idp_http_requests_total", method="POST", route="/token", status="200") == 1
    assert moved("idp_http_request_duration_seconds_count", method="POST", route="/token") == 1
    # The signing key the token was signed with is reported with its age.
    assert value(after, "idp_signing_key_age_seconds", alg="RS256") >= 0
    assert ("idp_signing_key_age_seconds", (("alg", "RS256"),)) in after
    # A probe of unknown paths is one series, not one per path.
    client.get("/no/such/page/abc123")
    assert not [key for key in scrape(client) if "abc123" in str(key)]


def test_a_rolled_back_sign_in_is_not_counted(app, client, make_user, make_client, monkeypatch):
    """Counts come from committed audit rows: work that rolled back was not done."""
    make_user()
    before = scrape(client)
    from idp.login import views

    def broken(*args, **kwargs):  # fails after login.success was recorded, before the commit
        raise RuntimeError("the device could not be stored")

    monkeypatch.setattr(views.devices, "seen", broken)
    response = sign_in(client, "alice@example.com")
    assert response.status_code == 500
    assert value(scrape(client), "idp_signins_total", outcome="success") == value(before, "idp_signins_total",
                                                                                  outcome="success")


def test_lockouts_and_mail_are_counted(make_app, smtp_server):
    app = make_app(IDP_LOCKOUT_THRESHOLD=2, IDP_THROTTLE_ACCOUNT="100/minute", IDP_THROTTLE_IP="100/minute")
    client = app.test_client()
    from tests.support import make_user_in

    make_user_in(app)
    before = scrape(client)
    for _ in range(2):
        sign_in(client, "alice@example.com", "wrong password")
    drain_jobs(app)
    after = scrape(client)
    assert value(after, "idp_lockouts_total") - value(before, "idp_lockouts_total") == 1
    assert value(after, "idp_messages_total", channel="mail", outcome="sent") - \
        value(before, "idp_messages_total", channel="mail", outcome="sent") >= 1  # the "account locked" mail


def test_mail_that_fails_is_counted_as_failed(make_app):
    app = make_app(IDP_SMTP_PORT=free_port())  # nothing listens there
    client = app.test_client()
    from tests.support import make_user_in

    make_user_in(app)
    before = scrape(client)
    page = client.get("/forgot")
    client.post("/forgot", data={"csrf_token": csrf_token(page), "email": "alice@example.com"})
    drain_jobs(app)
    after = scrape(client)
    assert value(after, "idp_messages_total", channel="mail", outcome="failed") > \
        value(before, "idp_messages_total", channel="mail", outcome="failed")


def test_queue_depth_is_reported_when_jobs_go_to_redis(app, client):
    if not app.config["IDP_REDIS_URL"]:
        pytest.skip("jobs run inline without IDP_TEST_REDIS_URL: there is no queue to measure")
    found = scrape(client)
    assert ("idp_queue_depth", (("queue", app.config["IDP_QUEUE_NAME"]), ("state", "queued"))) in found


# --- request lines and request ids ---------------------------------------------------------------------------------


def test_every_request_gets_an_id_and_one_log_line_without_secrets(client, caplog):
    caplog.set_level(logging.INFO, logger="idp.request")
    response = client.get("/reset/SeCrEtLinkToken?code=abc123&client_id=the-app")
    request_id = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    lines = [r for r in caplog.records if r.name == "idp.request"]
    assert len(lines) == 1
    fields = lines[0].fields
    assert fields["path"] == "/reset/[redacted]" and fields["status"] == response.status_code
    assert fields["client_id"] == "the-app" and fields["method"] == "GET"
    assert "SeCrEtLinkToken" not in caplog.text and "abc123" not in caplog.text
    assert lines[0].request_id == request_id


def test_a_request_id_is_taken_from_a_trusted_proxy_only(make_app):
    app = make_app(IDP_TRUSTED_PROXIES=["10.0.0.1"])
    client = app.test_client()
    proxied = client.get("/healthz", headers={"X-Request-ID": "abc-123"}, environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert proxied.headers["X-Request-ID"] == "abc-123"
    forged = client.get("/healthz", headers={"X-Request-ID": "abc-123"}, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert forged.headers["X-Request-ID"] != "abc-123"
    smuggled = client.get("/healthz", headers={"X-Request-ID": "a\x7fb c"}, environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert re.fullmatch(r"[0-9a-f]{32}", smuggled.headers["X-Request-ID"])


def test_json_log_lines_parse_and_carry_the_request(make_app, capfd):
    app = make_app(IDP_LOG_FORMAT="json")
    response = app.test_client().get("/healthz?token=leaky", headers={"User-Agent": "probe"})
    err = capfd.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    request_lines = [line for line in lines if line["logger"] == "idp.request"]
    assert request_lines, err
    line = request_lines[-1]
    assert line["route"] == "/healthz" and line["status"] == 200 and line["method"] == "GET"
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert isinstance(line["duration_ms"], float)
    assert "leaky" not in err
    make_app(IDP_LOG_FORMAT="text")  # the process's handler goes back to text for the tests that follow


# --- the command line and the WSGI entry point refuse bad settings in one line ---------------------------------------


def _environment(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(extra)
    return env


def test_production_misconfiguration_is_one_line_and_exit_status_2(tmp_path):
    env = _environment(IDP_ENV="production")
    for command in (["routes"], ["housekeeping"], ["users", "list"]):
        result = subprocess.run([IDP, *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines == ["idp: configuration error: IDP_SECRET_KEY must be set to at least 32 bytes in production"]
    weak_issuer = _environment(IDP_ENV="production", IDP_SECRET_KEY=SECRET, IDP_ISSUER="http://idp.example.com")
    result = subprocess.run([IDP, "routes"], cwd=tmp_path, env=weak_issuer, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and result.stderr.strip() == \
        "idp: configuration error: IDP_ISSUER must be an https:// URL in production"


def test_help_needs_no_settings(tmp_path):
    result = subprocess.run([IDP, "--help"], cwd=tmp_path, env=_environment(IDP_ENV="production"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for command in ("housekeeping", "users", "clients", "keys", "worker", "audit"):
        assert re.search(rf"^  {command}\b", result.stdout, re.MULTILINE), result.stdout
    sub = subprocess.run([IDP, "users", "--help"], cwd=tmp_path, env=_environment(IDP_ENV="production"),
                         capture_output=True, text=True, timeout=60)
    assert sub.returncode == 0 and "grant-role" in sub.stdout


def test_gunicorn_refuses_bad_settings_in_one_line(tmp_path):
    """With the deploy configuration, gunicorn stops at once, rather than restarting workers that fail forever."""
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    result = subprocess.run([gunicorn, "-c", str(ROOT / "deploy" / "gunicorn.conf.py"), "-b",
                             f"127.0.0.1:{free_port()}", "wsgi:app"], cwd=tmp_path,
                            env=_environment(IDP_ENV="production"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "idp: configuration error: IDP_SECRET_KEY must be set to at least 32 bytes in production" in result.stderr


# --- gunicorn's multiprocess mode ----------------------------------------------------------------------------------


def test_metrics_add_up_across_gunicorn_workers(tmp_path):
    """Two workers answer the requests; a scrape (answered by either) reports the sum of both."""
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    env = _environment(IDP_ENV="testing", IDP_SECRET_KEY=SECRET, IDP_DATABASE_URL=f"sqlite:///{tmp_path}/idp.db",
                       IDP_ISSUER="http://127.0.0.1", IDP_PASSWORD_HASH_COST="t=1,m=64,p=1",
                       PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"))
    (tmp_path / "prom").mkdir()
    upgrade = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    subprocess.run([IDP, "db", "upgrade"], cwd=ROOT, env=upgrade, check=True, capture_output=True, timeout=120)
    port = free_port()
    log = (tmp_path / "gunicorn.log").open("w")
    server = subprocess.Popen([gunicorn, "-w", "2", "-b", f"127.0.0.1:{port}", "wsgi:app"], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or a worker still booting
                pass
            assert time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
            time.sleep(0.2)
        # Eight at a time on new connections: while one sync worker is busy the other takes the next.
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: requests.get(base + "/readyz", headers={"Connection": "close"},
                                                            timeout=10).status_code, range(40)))
        assert set(statuses) <= {200, 503}
        # Each worker wrote its own samples file: both answered some of the requests.
        assert len(list((tmp_path / "prom").glob("counter_*.db"))) >= 2
        for _ in range(3):  # whichever worker answers the scrape reports the sum of both
            found = samples(requests.get(base + "/metrics", headers={"Connection": "close"}, timeout=5).text)
            assert value(found, "idp_http_requests_total", method="GET", route="/readyz", status="503") + \
                value(found, "idp_http_requests_total", method="GET", route="/readyz", status="200") == 40
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()


def test_the_mail_a_worker_sends_is_counted_in_one_file_per_worker_not_per_job(make_app, smtp_server, tmp_path):
    """RQ forks a process per job: its counts reach the shared metrics folder under the worker's identity."""
    app = make_app()
    if not app.config["IDP_REDIS_URL"]:
        pytest.skip("jobs run inline without IDP_TEST_REDIS_URL: there is no worker")
    from idp.jobs import enqueue

    with app.app_context():
        for n in range(3):
            enqueue("send_mail", to=f"user{n}@example.com", template="account_locked",
                    context={"name": "U", "link": "https://idp.example/unlock"})
        db.session.commit()
    folder = tmp_path / "prom"
    folder.mkdir()
    cfg = app.config
    env = _environment(IDP_ENV="testing", IDP_SECRET_KEY=SECRET, IDP_ISSUER=cfg["IDP_ISSUER"],
                       IDP_DATABASE_URL=cfg["IDP_DATABASE_URL"], IDP_REDIS_URL=cfg["IDP_REDIS_URL"],
                       IDP_QUEUE_NAME=cfg["IDP_QUEUE_NAME"], IDP_MAIL_BACKEND="smtp", IDP_SMTP_HOST="127.0.0.1",
                       IDP_SMTP_PORT=str(smtp_server.port), PROMETHEUS_MULTIPROC_DIR=str(folder))
    worker = subprocess.run([IDP, "worker", "--burst"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert worker.returncode == 0, worker.stderr[-3000:]
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    found = samples(generate_latest(registry).decode())
    assert value(found, "idp_messages_total", channel="mail", outcome="sent") == 3
    # Three jobs, three work horses, but the files are the worker's alone (its start-up's and its jobs').
    files = sorted(path.stem for path in folder.glob("*.db"))
    assert "counter_rqworker-" + files[0].rpartition("_")[2].removeprefix("rqworker-") in files, files
    assert len({name.rpartition("_")[2].removeprefix("rqworker-") for name in files}) == 1, files


def test_unknown_methods_share_one_series_and_log_lines_cannot_be_forged(client, caplog):
    caplog.set_level(logging.INFO, logger="idp.request")
    for n in range(5):
        client.open("/", method=f"X{n:04d}")
    found = scrape(client)
    assert not [key for key in found if any(f"X{n:04d}" in str(key) for n in range(5))]
    assert value(found, "idp_http_requests_total", method="OTHER", route="(unmatched)", status="405") + \
        value(found, "idp_http_requests_total", method="OTHER", route="/", status="405") >= 5
    client.get("/nothing%0a2026-01-01 INFO idp.audit login.success?client_id=x%0d%0aforged")
    line = [r for r in caplog.records if r.name == "idp.request"][-1]
    assert "\n" not in line.getMessage() and "\r" not in line.getMessage()
    assert "\\n2026-01-01" in line.fields["path"]


def test_each_line_is_written_once(app):
    """Flask gives the app's logger ("idp") a default handler of its own; beside idp's, every line was written
    twice (found measuring the per-request cost, issue 22)."""
    from flask.logging import default_handler

    handlers = logging.getLogger("idp").handlers
    assert default_handler not in handlers
    assert len([h for h in handlers if type(h).__name__ == "_IdpHandler"]) == 1


def test_a_proxys_request_id_is_kept_on_a_rate_limited_endpoint_too(make_app):
    # The account API's blueprint limit is checked by Flask-Limiter's hook, which runs first, and its key resolves
    # the client's address without a token (REMOTE_ADDR then holds the client's); the request id is still judged
    # by the connection's peer, the proxy.
    app = make_app(IDP_TRUSTED_PROXIES=["10.0.0.1"])
    answer = app.test_client().get("/api/v1/me", headers={"X-Request-ID": "abc-123", "X-Forwarded-For": "203.0.113.9"},
                                   environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert answer.status_code == 401 and answer.headers["X-Request-ID"] == "abc-123"
