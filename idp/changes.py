"""Cross-instance change notification: each worker learns at once that the clients or signing keys changed,
whoever changed them, so it may keep what it read of them instead of reading them on every request (issue 22).

Migration 0020 puts statement-level triggers on the tables (``TABLES``) that ``pg_notify('idp_changes', table)``
after every INSERT, UPDATE, DELETE or TRUNCATE: another instance, ``idp`` commands, an operator's psql. PostgreSQL
delivers a notification when the writing transaction commits (none when it rolls back) to every session that
LISTENs. Each process (a gunicorn worker) has one ``Listener`` per database: a daemon thread with a connection of
its own (autocommit, ``LISTEN idp_changes``, ``application_name`` idp-change-listener) that waits in ``select()``
and bumps a per-table generation for each notification. It starts on first use in a request (so never in
gunicorn's master, and again in a forked child), for PostgreSQL only; SQLite (development) has none.

How a cache may trust what it kept (the rules every user of this module follows):

1. Take ``stamp(table)`` BEFORE reading the rows, and keep it with what was read. The entry is valid while
   ``stamp(table)`` still returns the same value (``unchanged``): a commit after the stamp was taken bumps the
   generation, so an entry can only be too old by the time a notification takes to arrive (on commit, over the
   listener's connection: well under a millisecond on one host), never for longer.
2. While the listener is not connected yet, has lost its connection, or has not heard from the server within
   ``LEASE_SECONDS``, ``stamp`` returns None and nothing is trusted: callers read the tables on every request, as
   they did before this module. A (re)connection bumps every generation (``epoch``): what was kept before it may
   have missed notifications. The listener proves its connection every ``HEARTBEAT_SECONDS`` by a notification to
   itself, so a connection dropped silently on the network (a NAT or firewall timeout) stops the trust within
   the lease; a server that ends it (a restart, ``pg_terminate_backend``) stops it at once.
3. A change this process commits through the ORM session bumps the generation locally when the commit returns
   (``after_commit`` below), without waiting for its own notification: the request that rotated the keys signs
   with the new ones. Writes that bypass the session (Core statements, raw SQL) are seen when their notification
   arrives, like another process's.

The listener never raises into a request: a failure to connect, listen or read is logged, trust is withdrawn,
and it tries again after a bounded backoff (``BACKOFF_MAX_SECONDS``). A write made with the triggers switched
off (``session_replication_role = replica``, ``ALTER TABLE ... DISABLE TRIGGER``) sends nothing: restart the
instances after such maintenance.
"""

from __future__ import annotations

import logging
import os
import random
import select
import threading
import time
import uuid
from collections import deque
from typing import Any

from flask import Flask, current_app, has_request_context
from sqlalchemy import Engine, event
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from idp.extensions import Session as IdpSession
from idp.extensions import db

log = logging.getLogger("idp.changes")

CHANNEL = "idp_changes"
TABLES = ("clients", "signing_keys")  # the tables migration 0020 watches
APPLICATION_NAME = "idp-change-listener"  # in pg_stat_activity
HEARTBEAT_SECONDS = 1.0  # a quiet listener proves its connection this often
LEASE_SECONDS = 3.0  # trust lapses when nothing came from the server for this long
BACKOFF_FIRST_SECONDS = 0.05
BACKOFF_MAX_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5

# (the listener's own id, epoch: connections made and lost, generation of one table). The id keeps the stamps of
# two listeners apart (a forked child's new one starts at the same epoch and generations as its parent's did).
Stamp = tuple[str, int, int]

_EXTENSION = "idp.changes"
_NOT_POSTGRESQL = False  # app.extensions[_EXTENSION] of an app on SQLite


class Listener:
    """One database's change notifications in this process: generations per table, and whether to trust them."""

    def __init__(self, connect_args: dict[str, Any]):
        self.connect_args = connect_args
        self.pid = os.getpid()
        self.id = uuid.uuid4().hex
        self.epoch = 0
        self.generations: dict[str, int] = {}
        self.marks: deque[str] = deque(maxlen=32)  # the last payloads on the channel that name no table
        self.connected = False
        self.heard = 0.0  # time.monotonic() of the last word from the server
        self.backend_pid: int | None = None  # the server process of the listener's connection, while connected
        # Our own notifications prove the connection: a channel no other listener hears.
        self.heartbeat_channel = f"idp_heartbeat_{uuid.uuid4().hex}"
        self._connection: Any = None  # kept here, not in the thread's frame: a forked child must never close it
        # The backoff's jitter, from a generator of its own: this thread never moves the process's global random
        # state under the code of the request threads (Hypothesis, in the tests, checks that a draw leaves it alone).
        self._jitter = random.Random()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=APPLICATION_NAME, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread and its connection (tests; a process that exits needs nothing: the thread is a daemon)."""
        self._stopping.set()
        self._thread.join(timeout)

    def trusted(self) -> bool:
        """Whether the generations are current: connected, and heard from within the lease."""
        return self.connected and time.monotonic() - self.heard < LEASE_SECONDS

    def stamp(self, table: str) -> Stamp | None:
        """Where ``table`` stands now, or None while nothing may be trusted."""
        if not self.trusted():
            return None
        return self.id, self.epoch, self.generations.get(table, 0)

    def bump(self, table: str) -> None:
        """``table`` changed: whatever was kept of it is void."""
        with self._lock:
            self.generations[table] = self.generations.get(table, 0) + 1

    def _new_epoch(self) -> None:
        with self._lock:
            self.epoch += 1

    # --- the thread -----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = BACKOFF_FIRST_SECONDS
        failing = False  # said once per outage, not at every attempt
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                self._connect()
                if failing:
                    log.info("change listener: listening again")
                self._listen()
            except Exception as problem:  # whatever it is, trust ends and the thread goes on
                if not self._stopping.is_set() and not failing:
                    log.warning("change listener: %s; reading the tables on every request until it listens again",
                                " ".join(str(problem).split()) or type(problem).__name__)
                failing = True
            finally:
                self._disconnect()
            if time.monotonic() - began > BACKOFF_MAX_SECONDS:  # it had worked a while: this is a new outage
                delay = BACKOFF_FIRST_SECONDS
            # Bounded, with jitter: the workers of every instance do not all reconnect in the same instant.
            self._stopping.wait(delay * self._jitter.uniform(0.5, 1.5))
            delay = min(delay * 2, BACKOFF_MAX_SECONDS)

    def _connect(self) -> None:
        import psycopg2  # PostgreSQL only: SQLite never gets here

        connection = self._connection = psycopg2.connect(
            **self.connect_args, application_name=APPLICATION_NAME, connect_timeout=CONNECT_TIMEOUT_SECONDS,
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}; LISTEN {self.heartbeat_channel}")
        self.backend_pid = connection.get_backend_pid()
        # Listening now: what changes from here on is notified. What changed before may have been missed.
        self._new_epoch()
        self.heard = time.monotonic()
        self.connected = True

    def _listen(self) -> None:
        connection = self._connection
        while not self._stopping.is_set():
            readable, _, _ = select.select([connection], [], [], HEARTBEAT_SECONDS)
            if readable:
                connection.poll()
            else:
                with connection.cursor() as cursor:  # a round trip, and our own notification back
                    cursor.execute(f"NOTIFY {self.heartbeat_channel}")
            if connection.notices:
                fatal = [notice for notice in connection.notices if notice.startswith("FATAL")]
                del connection.notices[:]
                if fatal:  # the server is ending the connection (a restart, pg_terminate_backend)
                    raise ConnectionError(fatal[-1].strip())
            self._take(connection.notifies)

    def _take(self, notifies: list) -> None:
        if not notifies:
            return
        for notify in notifies:
            if notify.channel != CHANNEL:
                continue
            if notify.payload in TABLES:
                self.bump(notify.payload)
            else:  # not a table's: a mark that notifications reach this process (tests/support.py settled)
                self.marks.append(notify.payload)
        notifies.clear()
        now = time.monotonic()
        if now - self.heard >= LEASE_SECONDS:  # trust had lapsed: start afresh, as after a reconnection
            self._new_epoch()
        self.heard = now

    def _disconnect(self) -> None:
        self.connected = False
        self.backend_pid = None
        self._new_epoch()
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # closing a broken connection may fail; it is gone either way
                pass


# --- the listeners of this process ------------------------------------------------------------------------------

_listeners: dict[str, Listener] = {}  # by database URL
_inherited: list[Listener] = []  # a parent's, after a fork: kept, never closed (their socket is the parent's)
_registry_lock = threading.Lock()
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()
    _inherited.extend(_listeners.values())
    _listeners.clear()


os.register_at_fork(after_in_child=_forked)


def _connect_args(engine: Engine) -> dict[str, Any]:
    """What SQLAlchemy's psycopg2 dialect passes to psycopg2.connect for this engine's URL."""
    args, kwargs = engine.dialect.create_connect_args(engine.url)
    assert not args
    return dict(kwargs)


def _listener(app: Flask) -> Listener | None:
    found = app.extensions.get(_EXTENSION)
    if found is _NOT_POSTGRESQL:
        return None
    if found is not None and found.pid == _pid:
        return found
    engine = db.engine
    if engine.dialect.name != "postgresql":
        app.extensions[_EXTENSION] = _NOT_POSTGRESQL
        return None
    url = engine.url.render_as_string(hide_password=False)
    with _registry_lock:
        listener = _listeners.get(url)
        if listener is None:
            listener = _listeners[url] = Listener(_connect_args(engine))
            listener.start()
    app.extensions[_EXTENSION] = listener
    return listener


def listener() -> Listener | None:
    """This app's listener (started on first use), or None: not in a request, or not PostgreSQL."""
    if not has_request_context():  # a command or a job (RQ forks one process per job): no listener for it
        return None
    try:
        return _listener(current_app._get_current_object())  # type: ignore[attr-defined]
    except Exception:  # no listener (a thread that cannot start): the caller reads the table
        log.exception("change listener could not start")
        return None


def stamp(table: str) -> Stamp | None:
    """Where ``table`` stands now (take it before reading the rows), or None: trust nothing, read the table."""
    found = listener()
    return found.stamp(table) if found is not None else None


def running_stamp(app: Flask, table: str) -> Stamp | None:
    """``stamp(table)`` of ``app``'s listener outside a request (idp.prepared answers before Flask): None unless this
    process already runs the listener (a request starts it)."""
    found = app.extensions.get(_EXTENSION)
    return found.stamp(table) if found and found.pid == _pid else None


def unchanged(table: str, kept: Stamp | None, app: Flask | None = None) -> bool:
    """Whether what was kept at ``kept`` is still current: the listener is trusted and ``table`` has not changed.
    With ``app``, outside a request: only a listener already running is asked."""
    return kept is not None and kept == (stamp(table) if app is None else running_stamp(app, table))


def changed_here(table: str) -> None:
    """This process committed a change to ``table``: void what any of its apps kept, without waiting for the
    notification."""
    for each in list(_listeners.values()):
        each.bump(table)


# --- changes this process commits through the session -------------------------------------------------------------

_CHANGED = "idp.changed_tables"


def _tables_of(objects) -> set[str]:
    return {name for obj in objects if (name := getattr(obj, "__tablename__", None)) in TABLES}


@event.listens_for(IdpSession, "after_flush")
def _flushed(session: Session, context: UOWTransaction) -> None:
    touched = _tables_of(session.new) | _tables_of(session.dirty) | _tables_of(session.deleted)
    if touched:
        session.info.setdefault(_CHANGED, set()).update(touched)


@event.listens_for(IdpSession, "do_orm_execute")
def _executed(state: ORMExecuteState) -> None:
    if state.is_update or state.is_delete or state.is_insert:
        mapper = state.bind_mapper
        name = getattr(mapper.class_, "__tablename__", None) if mapper is not None else None
        if name in TABLES:
            state.session.info.setdefault(_CHANGED, set()).add(name)


@event.listens_for(IdpSession, "after_commit")
def _committed(session: Session) -> None:
    for table in session.info.pop(_CHANGED, ()):
        changed_here(table)


@event.listens_for(IdpSession, "after_rollback")
def _rolled_back(session: Session) -> None:
    # Nothing changed for anyone else; but what this session read back of its own flushed writes is void too.
    for table in session.info.pop(_CHANGED, ()):
        changed_here(table)


def uncommitted(session: Session, table: str) -> bool:
    """Whether ``session`` has written to ``table`` in its open transaction: what it reads of that table now is
    not to be kept (it may never be committed)."""
    return table in session.info.get(_CHANGED, ())
