"""What a worker keeps of the clients and the signing keys is dropped as soon as any process changes them (issue 22;
idp.changes, migration 0020; SECURITY.md 14; README "Scaling out").

The worker under test is the `app` fixture in this process. The other instance, the command line or the operator's
psql that change things are real other processes, or a connection of their own (``elsewhere``): this process's
session knows nothing of their writes, so only the trigger's notification can tell the worker. A test waits for a
notification only with ``settled``, which returns once the listener has taken every notification committed before
it (PostgreSQL delivers them in commit order), bounded by ARRIVAL; then the next request must see the change.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import pytest
from sqlalchemy import event
from sqlalchemy.orm.attributes import set_committed_value

from idp import changes
from idp.extensions import db
from idp.models import Client
from idp.oidc import keys
from idp.oidc.server import ClientView, client_view, query_client
from idp.security.tokens import token_hash
from tests.conftest import SECRET, TEST_DATABASE_URL, TEST_REDIS_URL
from tests.instances import kid_of, run_cli
from tests.support import listening, recorded, settled

pytestmark = pytest.mark.skipif(not TEST_DATABASE_URL.startswith("postgresql"),
                                reason="LISTEN/NOTIFY is PostgreSQL's: set IDP_TEST_DATABASE_URL")

# A notification arrives within a millisecond on one host; the bound is for a loaded test machine.
ARRIVAL = 2.0
# A listener whose reconnection was held back waits out its backoff (at most BACKOFF_MAX_SECONDS, with jitter).
RECONNECT = changes.BACKOFF_MAX_SECONDS * 1.5 + ARRIVAL


def listener_of(app) -> changes.Listener:
    with app.test_request_context():
        found = changes.listener()
    assert found is not None
    return found


def connect(app):
    """A psycopg2 connection of its own to the app's database."""
    with app.app_context():
        _, params = db.engine.dialect.create_connect_args(db.engine.url)
    return psycopg2.connect(**params)


def elsewhere(app, statement: str, params: tuple = ()) -> list[tuple]:
    """Run SQL on a connection of its own (autocommit), as another instance or an operator's psql would."""
    connection = connect(app)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def reads_keys(seen: list[str]) -> bool:
    return any("signing_keys" in statement for statement in seen)


def reads_client(seen: list[str]) -> bool:
    return any(statement.startswith("SELECT clients.") for statement in seen)


def cli_env(app, tmp_path) -> dict[str, str]:
    return {"IDP_ENV": "testing", "IDP_ISSUER": app.config["IDP_ISSUER"], "IDP_SECRET_KEY": SECRET,
            "IDP_DATABASE_URL": app.config["IDP_DATABASE_URL"], "IDP_REDIS_URL": TEST_REDIS_URL,
            "IDP_MAIL_BACKEND": "outbox", "IDP_OUTBOX_DIR": str(tmp_path / "outbox"),
            "IDP_PASSWORD_HASH_COST": "t=1,m=64,p=1"}


class Machine:
    """A confidential client_credentials client of the worker under test."""

    def __init__(self, app, client_id: str, secret: str):
        self.app = app
        self.http = app.test_client()
        self.client_id = client_id
        self.secret = secret

    def token(self, secret: str | None = None):
        return self.http.post("/token", data={"grant_type": "client_credentials"},
                              auth=(self.client_id, secret or self.secret))

    def warm(self) -> None:
        """A worker that keeps the keys and this client: its own commits' notifications (the keys made on first use,
        the client) have come back, and it has looked again since."""
        for _ in range(2):
            assert self.token().status_code == 200
            assert self.http.get("/jwks.json").status_code == 200
            settled(self.app, ARRIVAL)


@pytest.fixture
def machine(app, make_client) -> Machine:
    assert listening(app)
    kept = Machine(app, *make_client(grant_types=["client_credentials"], redirect_uris=[]))
    kept.warm()
    return kept


def test_the_triggers_notify_every_write_to_the_clients_and_the_keys_on_commit(app, make_client, machine):
    """Statement-level triggers: INSERT, UPDATE, DELETE and TRUNCATE, by anyone; nothing for a rolled-back write."""
    heard = connect(app)
    heard.autocommit = True
    heard.cursor().execute(f"LISTEN {changes.CHANNEL}")

    def payloads() -> list[str]:
        deadline = time.monotonic() + ARRIVAL
        while time.monotonic() < deadline and not heard.notifies:
            select.select([heard], [], [], 0.05)
            heard.poll()
        time.sleep(0.05)  # and whatever came with it
        heard.poll()
        found = [notify.payload for notify in heard.notifies]
        heard.notifies.clear()
        return found

    try:
        client_id, _ = make_client(name="Brief")  # INSERT, through the ORM
        assert payloads() == ["clients"]
        elsewhere(app, "UPDATE clients SET name = 'Renamed' WHERE client_id = %s", (client_id,))
        assert payloads() == ["clients"]
        elsewhere(app, "BEGIN; UPDATE clients SET name = 'Never' WHERE client_id = %s; ROLLBACK", (client_id,))
        elsewhere(app, "SELECT pg_notify(%s, 'after the rollback')", (changes.CHANNEL,))
        assert payloads() == ["after the rollback"]
        elsewhere(app, "DELETE FROM clients WHERE client_id = %s", (client_id,))
        assert payloads() == ["clients"]
        with app.app_context():
            keys.rotate(max_token_lifetime=600)
        assert payloads() == ["signing_keys"]  # (one per transaction: the INSERTs and UPDATEs are folded)
        elsewhere(app, "TRUNCATE signing_keys")
        assert payloads() == ["signing_keys"]
    finally:
        heard.close()


def test_a_warm_worker_reads_neither_the_keys_nor_the_client(app, machine):
    """What the bench measures: with the listener trusted, the token endpoint runs no aggregate over the keys and no
    SELECT of the client, introspection no SELECT of the client, and the JWK Set takes no connection at all."""
    with recorded(app) as token_request:
        response = machine.token()
    assert response.status_code == 200
    assert not reads_keys(token_request) and not reads_client(token_request), token_request
    with recorded(app) as introspection:
        answer = machine.http.post("/introspect", data={"token": response.get_json()["access_token"]},
                                   auth=(machine.client_id, machine.secret))
    assert answer.get_json()["active"] is True
    assert not reads_client(introspection) and len(introspection) == 1, introspection  # the token row, joined
    checkouts: list[object] = []

    def checked_out(*args) -> None:
        checkouts.append(args)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "checkout", checked_out)
    try:
        with recorded(app) as jwks:
            assert machine.http.get("/jwks.json").status_code == 200
    finally:
        event.remove(engine, "checkout", checked_out)
    assert jwks == [] and checkouts == []  # not even a connection from the pool


def test_a_key_rotated_by_another_process_is_published_and_signs_at_once(app, machine, tmp_path):
    """SECURITY.md 14: after `idp keys rotate` in another process, this worker's next JWK Set lists the new keys
    and its next token is signed by the new RS256 key; the retired key stays published."""
    old_kid = kid_of(machine.token().get_json()["access_token"])
    rotated = run_cli(["keys", "rotate"], cli_env(app, tmp_path), tmp_path / "cli")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    new_kids = {line.split()[3]: line.split()[4].strip("()") for line in rotated.stdout.splitlines()
                if line.startswith("new signing key ")}
    assert set(new_kids.values()) == {"RS256", "ES256"}, rotated.stdout
    settled(app, ARRIVAL)  # the rotation's notification has arrived: only that is waited for

    published = {key["kid"] for key in machine.http.get("/jwks.json").get_json()["keys"]}
    assert set(new_kids) | {old_kid} <= published
    signed = machine.token().get_json()["access_token"]
    assert kid_of(signed) == next(kid for kid, alg in new_kids.items() if alg == "RS256")
    inspected = machine.http.post("/introspect", data={"token": signed}, auth=(machine.client_id, machine.secret))
    assert inspected.get_json()["active"] is True


def test_a_rotation_committed_while_a_worker_loads_its_keys_is_not_kept_as_current(app, machine, tmp_path,
                                                                                   monkeypatch):
    """The stamp and the summary are taken before the key rows are read: a rotation that commits, and is notified,
    between the worker's read of the signing keys and the rest of its loading must not leave the retired key
    signing under a current stamp (review finding; SECURITY.md 14)."""
    new_kids: dict[str, str] = {}
    read_keys = keys.active

    def active_then_rotated_elsewhere(now=None):
        rows = read_keys(now)
        if not new_kids:  # the first load only: rotate in another process, and wait for its notification
            rotated = run_cli(["keys", "rotate"], cli_env(app, tmp_path), tmp_path / "cli")
            assert rotated.returncode == 0, rotated.stdout + rotated.stderr
            new_kids.update({line.split()[4].strip("()"): line.split()[3] for line in rotated.stdout.splitlines()
                             if line.startswith("new signing key ")})
            settled(app, ARRIVAL)
        return rows

    monkeypatch.setattr(keys, "active", active_then_rotated_elsewhere)
    with app.app_context():
        app.extensions.pop("idp.keys")  # this worker loads its keys again at its next token
    assert machine.token().status_code == 200  # signed during the rotation: either key may sign this one
    assert new_kids.keys() == {"RS256", "ES256"}
    assert kid_of(machine.token().get_json()["access_token"]) == new_kids["RS256"]


def test_a_key_rotated_by_this_process_signs_its_next_token_without_waiting_for_the_notification(app, machine):
    """A commit through the session voids what this process kept at once (idp.changes rule 3)."""
    with app.app_context():
        fresh = {row.alg: row.kid for row in keys.rotate(max_token_lifetime=600)}
    assert kid_of(machine.token().get_json()["access_token"]) == fresh["RS256"]
    assert set(fresh.values()) <= {key["kid"] for key in machine.http.get("/jwks.json").get_json()["keys"]}


def test_a_client_whose_secret_is_rotated_or_that_is_deleted_elsewhere_is_refused_at_once(app, machine, tmp_path):
    """The operator's psql changes the secret's hash, and `idp clients delete` in another process deletes the
    client: the worker refuses the old secret, then the client, from the request after each notification."""
    with recorded(app) as seen:
        assert machine.token().status_code == 200
    assert not reads_client(seen), seen  # the worker keeps the client: only the notification can tell it

    new_secret = "a-new-secret-set-by-the-operator-" + "x" * 16
    elsewhere(app, "UPDATE clients SET client_secret_hash = %s WHERE client_id = %s",
              (token_hash(new_secret), machine.client_id))
    settled(app, ARRIVAL)
    assert machine.token().status_code == 401
    assert machine.token(new_secret).status_code == 200

    deleted = run_cli(["clients", "delete", machine.client_id], cli_env(app, tmp_path), tmp_path / "cli")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    settled(app, ARRIVAL)
    refused = machine.token(new_secret)
    assert refused.status_code == 401 and refused.get_json()["error"] == "invalid_client"


@contextmanager
def listener_down(app) -> Iterator[changes.Listener]:
    """The listener's connection ended by the server (pg_terminate_backend), and kept from coming back until the
    block ends (its reconnections go to a database that does not exist); then it listens again."""
    listener = listener_of(app)
    backend = listener.backend_pid
    assert backend is not None
    # An operator finds it by name.
    assert elsewhere(app, "SELECT application_name FROM pg_stat_activity WHERE pid = %s", (backend,)) == [
        (changes.APPLICATION_NAME,)]
    reachable = listener.connect_args
    listener.connect_args = {**reachable, "dbname": "idp_no_such_database"}
    try:
        assert elsewhere(app, "SELECT pg_terminate_backend(%s)", (backend,)) == [(True,)]
        deadline = time.monotonic() + ARRIVAL  # the loss reaches the thread as the FATAL message does
        while listener.trusted():
            assert time.monotonic() < deadline, "the listener did not notice that its connection ended"
            time.sleep(0.005)
        yield listener
    finally:
        listener.connect_args = reachable
    deadline = time.monotonic() + RECONNECT
    while not listener.trusted():
        assert time.monotonic() < deadline, "the listener did not listen again"
        time.sleep(0.01)
    assert listener.backend_pid != backend


def test_without_the_listener_every_request_reads_and_after_it_reconnects_caching_resumes(app, machine):
    """idp.changes rule 2: while the listener is down nothing kept is trusted (a change made meanwhile is seen at
    once, by reading as before), what was kept before the loss is void after it, and caching resumes."""
    secrets = [machine.secret, "second-secret-" + "y" * 30, "third-secret-" + "z" * 30]

    # A change while the listener is down, and no request until it is back: the kept client (the first secret)
    # must not come back with it.
    with listener_down(app):
        elsewhere(app, "UPDATE clients SET client_secret_hash = %s WHERE client_id = %s",
                  (token_hash(secrets[1]), machine.client_id))
    assert machine.token(secrets[0]).status_code == 401
    assert machine.token(secrets[1]).status_code == 200

    # While it is down, every request reads: the keys' summary and the client, and sees a change at once.
    with listener_down(app):
        with recorded(app) as seen:
            assert machine.token(secrets[1]).status_code == 200
        assert reads_keys(seen) and reads_client(seen), seen
        with recorded(app) as seen:
            assert machine.http.get("/jwks.json").status_code == 200
        assert reads_keys(seen), seen
        elsewhere(app, "UPDATE clients SET client_secret_hash = %s WHERE client_id = %s",
                  (token_hash(secrets[2]), machine.client_id))
        assert machine.token(secrets[1]).status_code == 401
        assert machine.token(secrets[2]).status_code == 200

    machine.secret = secrets[2]
    machine.warm()
    with recorded(app) as seen:
        assert machine.token().status_code == 200
        assert machine.http.get("/jwks.json").status_code == 200
    assert not reads_keys(seen) and not reads_client(seen), seen


def test_each_request_gets_its_own_copy_of_a_kept_client(app, machine):
    """A request that changes its client object (in memory) changes nothing another request sees."""
    with app.test_request_context():
        first = query_client(machine.client_id)
        assert first is not None
        first.grant_types.append("authorization_code")
        first.name = "Changed in memory"
        db.session.rollback()
    with recorded(app) as seen, app.test_request_context():
        second = query_client(machine.client_id)
        assert second is not None and second is not first
        assert second.grant_types == ["client_credentials"] and second.name != "Changed in memory"
    assert seen == []  # served from what the worker kept


def test_the_endpoints_that_only_read_a_client_share_one_view_of_it_that_nothing_can_change(app, machine):
    """The token, introspection and revocation endpoints and a token's client at userinfo read the client as the
    worker keeps it, without a copy per request: the one view, read-only (an attribute set or a kept list changed
    is refused), while query_client still gives each request a model of its own."""
    with recorded(app) as seen, app.test_request_context():
        first = client_view(machine.client_id)
        assert isinstance(first, ClientView)
        assert first.client_id == machine.client_id and first.grant_types == ("client_credentials",)
        with pytest.raises(AttributeError):
            first.name = "Changed in memory"
        with pytest.raises(AttributeError):
            first.grant_types.append("authorization_code")  # type: ignore[attr-defined]
        assert first.check_grant_type("client_credentials") and not first.check_grant_type("authorization_code")
        model = query_client(machine.client_id)
        assert isinstance(model, Client) and model in db.session
    with app.test_request_context():
        assert client_view(machine.client_id) is first
    with app.test_request_context():  # a request whose session holds the client gets that model, as query_client
        held = query_client(machine.client_id)
        assert client_view(machine.client_id) is held
    assert seen == []
    # And a change elsewhere retires the view: the next request reads the row (then keeps a new view).
    elsewhere(app, "UPDATE clients SET name = 'Renamed elsewhere' WHERE client_id = %s", (machine.client_id,))
    settled(app, ARRIVAL)
    with recorded(app) as seen, app.test_request_context():
        fresh = client_view(machine.client_id)
        assert fresh is not None and fresh is not first and fresh.name == "Renamed elsewhere"
    assert reads_client(seen), seen
    with app.test_request_context():
        assert client_view(machine.client_id) is not first
        assert isinstance(client_view(machine.client_id), ClientView)


def test_a_client_the_session_loaded_before_a_change_is_not_kept_as_current(app, machine):
    """A client this request's session loaded before a change was committed and notified is what query_client
    returns for this request, but it is not kept: the next request reads the row (review finding)."""
    new_secret = "another-secret-set-by-the-operator-" + "y" * 16
    with app.test_request_context():
        app.extensions.pop("idp.kept_clients", None)  # this worker keeps no copy yet
        held = db.session.execute(db.select(Client).where(Client.client_id == machine.client_id)).scalar_one()
        loaded = held.client_secret_hash
        elsewhere(app, "UPDATE clients SET client_secret_hash = %s WHERE client_id = %s",
                  (token_hash(new_secret), machine.client_id))
        settled(app, ARRIVAL)
        set_committed_value(held, "client_secret_hash", loaded)  # as loaded before the change (settled() expired it)
        assert query_client(machine.client_id) is held
    assert machine.token().status_code == 401  # the old secret: the row was read again
    assert machine.token(new_secret).status_code == 200


def test_a_forked_child_listens_on_its_own_and_leaves_its_parents_connection_alone(app, machine):
    """After a fork (a server that forks its workers after loading the app), the child starts its own listener;
    the parent's connection, which the child inherited, is neither used nor closed by it."""
    parent = listener_of(app)
    backend = parent.backend_pid
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report, then leave without running any of the parent's clean-up
        verdict = b"0"
        try:
            own = listener_of(app)
            deadline = time.monotonic() + RECONNECT
            while not own.trusted() and time.monotonic() < deadline:
                time.sleep(0.01)
            if own is not parent and own.pid == os.getpid() and own.trusted() and own.backend_pid != backend:
                verdict = b"1"
        finally:
            os.write(writer, verdict)
            os._exit(0)
    os.close(writer)
    try:
        assert os.read(reader, 1) == b"1"
    finally:
        os.close(reader)
        os.waitpid(child, 0)
    time.sleep(changes.HEARTBEAT_SECONDS * 1.5)  # a heartbeat on the parent's connection since the child left
    assert parent.trusted() and parent.backend_pid == backend
