"""`idp housekeeping` (idp.housekeeping): what has expired goes, in short batches, so the tables a sign-in writes to
stop growing; nothing still usable goes; audit events past IDP_AUDIT_RETENTION_DAYS are archived, anchored and
pruned, and `idp audit verify` still catches a change of what is left (SECURITY.md 29, 35)."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta

import pytest
from joserfc import jws
from joserfc.jwk import ECKey
from sqlalchemy import Table, bindparam, delete, event, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from idp import audit, housekeeping
from idp.extensions import db
from idp.models import (
    AdminJob,
    AuditAnchor,
    AuditCheckpoint,
    AuditEvent,
    AuthorizationCode,
    Device,
    LoginSession,
    LoginTransaction,
    OneTimeToken,
    Token,
    TransactionState,
    User,
    UTCDateTime,
    table_of,
    utcnow,
)
from idp.models.audit import PRUNE_OPTION, AuditLogIsAppendOnly
from idp.oidc import keys
from idp.security.tokens import new_token, token_hash
from tests.conftest import TEST_DATABASE_URL
from tests.support import (
    RP_CALLBACK,
    Mailbox,
    audit_events,
    authorize,
    authorize_url,
    csrf_token,
    link_in,
    make_client_in,
    make_user_in,
    open_link,
    pkce_pair,
    sign_in,
    signed_in_email,
    submit_link,
    walk,
)
from tests.test_audit_chain import events, verify

# The tables a sign-in writes to, in the order housekeeping clears them.
TABLES = [table_of(model) for model in (Token, AuthorizationCode, LoginTransaction, LoginSession, OneTimeToken,
                                        Device, AdminJob)]
DAY = timedelta(days=1)


def counts(app) -> dict[str, int]:
    with app.app_context():
        return {t.name: db.session.execute(select(func.count()).select_from(t)).scalar_one() for t in TABLES}


def run_housekeeping(app) -> dict[str, int]:
    """`idp housekeeping`, which must succeed; what it says went, by name."""
    result = app.test_cli_runner().invoke(args=["housekeeping"])
    assert result.exit_code == 0, (result.output, result.exception)
    said = {}
    for line in result.stdout.splitlines():
        if "\t" in line:
            count, name = line.split("\t")
            said[name] = int(count)
    return said


def a_day_passes(app) -> None:
    """Every stored time of the tables housekeeping clears moves one day into the past, as if a day had passed
    (the JWTs already issued keep their own times, which nothing here reads)."""
    with app.app_context():
        for table in TABLES:
            columns = [c for c in table.columns if isinstance(c.type, UTCDateTime)]
            rows = db.session.execute(select(table.c.id, *columns)).all()
            if not rows:
                continue
            statement = (update(table).where(table.c.id == bindparam("row_id"))
                         .values({c.name: bindparam(f"new_{c.name}") for c in columns}))
            db.session.execute(statement, [
                {"row_id": row[0], **{f"new_{c.name}": (value - DAY if value is not None else None)
                                      for c, value in zip(columns, row[1:], strict=True)}}
                for row in rows])
        db.session.commit()


def exchange(browser, client_id: str, secret: str, code: str, verifier: str | None = None):
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": RP_CALLBACK}
    if verifier:
        data["code_verifier"] = verifier
    return browser.post("/token", data=data, auth=(client_id, secret))


def refresh(browser, client_id: str, secret: str, refresh_token: str):
    return browser.post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token},
                        auth=(client_id, secret))


def offline_tokens(browser, client_id: str, secret: str) -> dict:
    """Sign in (or use the live session), redeem the code with PKCE: a body with a refresh token."""
    verifier, challenge = pkce_pair()
    code = authorize(browser, client_id, scope="openid offline_access", code_challenge=challenge,
                     code_challenge_method="S256")
    response = exchange(browser, client_id, secret, code, verifier)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["refresh_token"]
    return body


def sign_out(browser) -> None:
    page = browser.get("/logout")
    assert browser.post("/logout", data={"csrf_token": csrf_token(page)}).status_code == 200
    assert signed_in_email(browser) is None


def family_rows(app, refresh_token: str) -> int:
    with app.app_context():
        family = db.session.execute(select(Token.family_id).where(Token.refresh_token_hash == token_hash(
            refresh_token))).scalar_one()
        return db.session.execute(select(func.count()).where(Token.family_id == family)).scalar_one()


def request_reset(app, browser, mailbox, email: str) -> str:
    """Ask for a password reset link for ``email``; the link from the mail."""
    page = browser.get("/forgot")
    assert browser.post("/forgot", data={"csrf_token": csrf_token(page), "email": email}).status_code == 200
    return link_in(mailbox.last(email, "Reset"), "/reset#")


def test_the_tables_stop_growing_while_what_is_live_survives_and_works(make_app, smtp_server, make_client):
    """Days of traffic, a day passing between them and housekeeping after each: every table holds as many rows
    after the fourth day as after the second, while the live session, the unredeemed code, the unused reset link
    and a refresh family signed in for on the first day (reuse detection on its rotated token included) survive
    every run and work."""
    app = make_app(IDP_RATELIMIT_FORMS="1000/minute")
    smtp_server.messages.clear()
    mailbox = Mailbox(app, smtp_server)
    make_user_in(app)
    make_user_in(app, email="bob@example.com", name="Bob")
    # Daily traffic: a client whose refresh tokens die after an idle hour; and a long-lived offline grant.
    daily_id, daily_secret = make_client_in(app, name="Daily", first_party=True, refresh_token_ttl=3600)
    long_id, long_secret = make_client_in(app, name="Long", first_party=True)
    keeper = app.test_client()
    first = offline_tokens(keeper, long_id, long_secret)
    rotated = refresh(keeper, long_id, long_secret, first["refresh_token"])
    assert rotated.status_code == 200
    current = rotated.get_json()["refresh_token"]
    sign_out(keeper)

    # The browsers of the day's traffic (the same ones every day, as people's browsers are), and the survivor's.
    pairs = [(app.test_client(), app.test_client()) for _ in range(3)]
    survivor = app.test_client()
    before: list[dict[str, int]] = []
    after: list[dict[str, int]] = []
    for day in range(4):
        # The day's traffic, three times over: two sign-ins with offline grants, one refreshed and left to idle
        # out, the other refreshed and revoked; a code nobody redeems; a sign-in abandoned at the password
        # screen; a reset link nobody uses; both browsers sign out.
        for browser_a, browser_b in pairs:
            tokens_a = offline_tokens(browser_a, daily_id, daily_secret)
            assert refresh(browser_a, daily_id, daily_secret, tokens_a["refresh_token"]).status_code == 200
            authorize(browser_a, daily_id)  # never redeemed
            tokens_b = offline_tokens(browser_b, daily_id, daily_secret)
            again = refresh(browser_b, daily_id, daily_secret, tokens_b["refresh_token"]).get_json()
            assert browser_b.post("/revoke", data={"token": again["refresh_token"]},
                                  auth=(daily_id, daily_secret)).status_code == 200
            assert walk(app.test_client(), authorize_url(daily_id), stop_at="password").screens == ["password"]
            sign_out(browser_a)
            sign_out(browser_b)
        request_reset(app, app.test_client(), mailbox, "alice@example.com")

        a_day_passes(app)

        # What is live when housekeeping runs: a session signed in a moment ago, its code not yet redeemed, a reset
        # link just mailed.
        code = authorize(survivor, daily_id)
        link = request_reset(app, app.test_client(), mailbox, "bob@example.com")

        before.append(counts(app))
        said = run_housekeeping(app)
        after.append(counts(app))
        for name in before[-1]:
            assert said[name] == before[-1][name] - after[-1][name], name  # what it says went is what went

        assert signed_in_email(survivor) == "alice@example.com"
        assert exchange(survivor, daily_id, daily_secret, code).status_code == 200
        reset_browser = app.test_client()
        form = open_link(reset_browser, link)
        new_password = f"a new passphrase for day {day}"
        done = submit_link(reset_browser, link, form, password=new_password, confirm=new_password)
        assert done.status_code == 302 and done.headers["Location"] == "/login", done.get_data(as_text=True)[:300]
        assert family_rows(app, current) == 2  # the long-lived family is whole: its rotated row too

    # Every day something of each kind went, and the tables ended each day at the same size from the second on.
    for name in ("tokens", "authorization_codes", "login_transactions", "login_sessions", "one_time_tokens"):
        assert all(b[name] > a[name] for b, a in zip(before, after, strict=True)), (name, before, after)
    assert after[1] == after[2] == after[3], after

    # Four days on, the long-lived grant still refreshes, and its rotated token is still caught when reused.
    renewed = refresh(keeper, long_id, long_secret, current)
    assert renewed.status_code == 200, renewed.get_json()
    reused = refresh(keeper, long_id, long_secret, first["refresh_token"])
    assert reused.status_code == 400 and reused.get_json()["error"] == "invalid_grant"
    revoked = refresh(keeper, long_id, long_secret, renewed.get_json()["refresh_token"])
    assert revoked.status_code == 400  # the reuse revoked the whole family
    assert [row.event for row in audit_events(app, "refresh.reuse_detected")] == ["refresh.reuse_detected"]


# --- each rule at its edge, with rows written in the past ---------------------------------------------------------

def _user_id(app) -> int:
    return make_user_in(app, email=f"{new_token(4).lower()}@example.com").id


def _insert(app, model, **values) -> int:
    table: Table = table_of(model)
    with app.app_context():
        row_id = db.session.execute(insert(table).returning(table.c.id), values).scalar_one()
        db.session.commit()
        return row_id


def _ids(app, model) -> set:
    table = table_of(model)
    with app.app_context():
        return set(db.session.execute(select(table.c.id)).scalars())


def _token(app, user_id: int, family: str, *, now: datetime, access: timedelta, refresh: timedelta | None = None,
           family_left: timedelta | None = None, rotated: bool = False, revoked: bool = False,
           code_id: int | None = None) -> int:
    """A token row whose access token expires ``access`` from ``now`` (negative: past), with a refresh token
    that expires ``refresh`` from now (idle) in a family that expires ``family_left`` from now (absolute)."""
    return _insert(app, Token, jti=new_token(8), client_id="c", user_id=user_id, grant_type="authorization_code",
                   family_id=family, authorization_code_id=code_id, issued_at=now - timedelta(days=3),
                   access_expires_at=now + access,
                   refresh_token_hash=token_hash(new_token(8)) if refresh is not None else None,
                   refresh_expires_at=now + refresh if refresh is not None else None,
                   family_expires_at=now + (family_left or timedelta(days=60)) if refresh is not None else None,
                   rotated_at=now - timedelta(days=2) if rotated else None,
                   revoked_at=now - timedelta(days=1) if revoked else None)


def _code(app, user_id: int, *, now: datetime, expires: timedelta) -> int:
    return _insert(app, AuthorizationCode, code_hash=token_hash(new_token(8)), client_id="c", user_id=user_id,
                   auth_time=now - timedelta(days=3), issued_at=now + expires - timedelta(seconds=60),
                   expires_at=now + expires)


def test_a_token_family_goes_whole_once_none_of_its_rows_can_be_used_and_its_code_after_it(app):
    now = utcnow()
    user = _user_id(app)
    hour, day = timedelta(hours=1), DAY
    kept, gone = set(), set()
    # A live family: its rotated rows stay with it (reuse detection), even one whose own refresh has expired.
    code_live = _code(app, user, now=now, expires=-3 * day)
    kept |= {_token(app, user, "live", now=now, access=-2 * day, refresh=-hour, rotated=True, code_id=code_live),
             _token(app, user, "live", now=now, access=-day, refresh=10 * day, rotated=True, code_id=code_live),
             _token(app, user, "live", now=now, access=-hour, refresh=12 * day, code_id=code_live)}
    # Idle expiry passed everywhere, access expired: gone, and then its used code.
    code_idle = _code(app, user, now=now, expires=-3 * day)
    gone |= {_token(app, user, "idle", now=now, access=-2 * day, refresh=-day, rotated=True, code_id=code_idle),
             _token(app, user, "idle", now=now, access=-day, refresh=-hour, code_id=code_idle)}
    # Absolute expiry passed: a rotated row's idle expiry ahead does not keep it.
    gone |= {_token(app, user, "absolute", now=now, access=-day, refresh=5 * day, family_left=-hour, rotated=True),
             _token(app, user, "absolute", now=now, access=-hour, refresh=9 * day, family_left=-hour)}
    # Revoked: kept while its access token has not expired, gone after.
    kept.add(_token(app, user, "revoked-fresh", now=now, access=10 * timedelta(minutes=1), refresh=9 * day,
                    revoked=True))
    gone.add(_token(app, user, "revoked-old", now=now, access=-hour, refresh=9 * day, revoked=True))
    # Access tokens alone (client credentials): by their expiry.
    kept.add(_token(app, user, "m2m-live", now=now, access=hour))
    gone.add(_token(app, user, "m2m-old", now=now, access=-hour))
    # Within the grace, an expired access token is kept.
    kept.add(_token(app, user, "m2m-just", now=now, access=-timedelta(minutes=1)))
    # Codes without tokens: kept until IDP_ID_TOKEN_TTL (an hour) past their expiry (the nonce check), then gone.
    code_nonce = _code(app, user, now=now, expires=-timedelta(minutes=30))
    code_open = _code(app, user, now=now, expires=timedelta(seconds=50))
    code_old = _code(app, user, now=now, expires=-2 * hour)

    with app.app_context():
        done = housekeeping.run(now)
    assert _ids(app, Token) == kept
    assert _ids(app, AuthorizationCode) == {code_live, code_nonce, code_open}
    assert done.counts["tokens"] == len(gone) and done.counts["authorization_codes"] == 2
    assert code_idle not in _ids(app, AuthorizationCode) and code_old not in _ids(app, AuthorizationCode)


def test_sessions_transactions_one_time_tokens_devices_and_jobs_go_only_when_over(app):
    now = utcnow()
    user = _user_id(app)
    max_age = timedelta(seconds=app.config["IDP_SESSION_MAX_AGE"])
    minute, hour = timedelta(minutes=1), timedelta(hours=1)

    def session(created: timedelta, ended: bool) -> int:
        return _insert(app, LoginSession, sid=new_token(8), token_hash=token_hash(new_token(8)), user_id=user,
                       created_at=now - created, last_seen_at=now - created, auth_time=now - created,
                       ended_at=now - created + minute if ended else None)

    sessions_kept = {session(hour, ended=False), session(hour, ended=True),  # ended, within the max age
                     session(max_age, ended=True)}  # at the max age exactly (and within the grace)
    session(max_age + 10 * minute, ended=True)
    session(max_age + 10 * minute, ended=False)  # never ended: over by the clock
    session(5 * DAY, ended=False)

    def txn(created: timedelta, *, completed: timedelta | None = None) -> str:
        tid = new_token(12)
        with app.app_context():
            db.session.add(LoginTransaction(
                id=tid, binding_hash=token_hash("b"), user_id=user, created_at=now - created,
                expires_at=now - created + timedelta(seconds=app.config["IDP_LOGIN_TRANSACTION_TTL"]),
                completed_at=now - completed if completed is not None else None,
                state=TransactionState(reasons=["no_session"], return_to="/", webauthn_challenge=new_token(8))))
            db.session.commit()
        return tid

    txns_kept = {txn(10 * minute), txn(5 * hour, completed=5 * hour - minute),  # unfinished, or read back later
                 txn(32 * minute)}  # expired two minutes ago: within the grace
    txn(hour)  # unfinished, expired half an hour ago: its WebAuthn challenge goes with it
    txn(max_age + hour, completed=max_age + 10 * minute)

    def ott(created: timedelta, ttl: timedelta, used: bool = False) -> int:
        return _insert(app, OneTimeToken, purpose="password_reset", user_id=user, email="x@example.com",
                       token_hash=token_hash(new_token(8)), created_at=now - created, expires_at=now - created + ttl,
                       used_at=now - created + minute if used else None)

    otts_kept = {ott(10 * minute, hour), ott(10 * minute, hour, used=True),  # unexpired, used or not
                 ott(DAY + 23 * hour, 2 * DAY)}  # a two-day link in its last hour
    ott(2 * hour, hour), ott(2 * hour, hour, used=True), ott(3 * DAY, DAY)

    def device(created: timedelta, *, remembered: timedelta | None = None, revoked: bool = False,
               owner: int = user) -> int:
        return _insert(app, Device, user_id=owner, token_hash=token_hash(new_token(8)), created_at=now - created,
                       last_used_at=now - created, remembered_until=now + remembered if remembered else None,
                       revoked_at=now - created + minute if revoked else None)

    forgotten = device(30 * DAY, revoked=True)  # a newer device row of the same user follows: it goes
    devices_kept = {device(20 * DAY, remembered=-10 * DAY),  # no longer remembered, still a known browser
                    device(DAY, remembered=29 * DAY)}
    loner = _user_id(app)
    devices_kept.add(device(40 * DAY, revoked=True, owner=loner))  # the user's only (newest) row stays

    def job(finished: timedelta | None) -> int:
        return _insert(app, AdminJob, action="disable", via="console", user_ids=[user], results={},
                       created_at=now - (finished or DAY) - hour, finished_at=now - finished if finished else None)

    jobs_kept = {job(None), job(29 * DAY)}
    job(31 * DAY)

    with app.app_context():
        done = housekeeping.run(now)
    assert _ids(app, LoginSession) == sessions_kept
    assert _ids(app, LoginTransaction) == txns_kept
    assert _ids(app, OneTimeToken) == otts_kept
    assert _ids(app, Device) == devices_kept and forgotten not in _ids(app, Device)
    assert _ids(app, AdminJob) == jobs_kept
    assert {name: done.counts[name] for name in ("login_sessions", "login_transactions", "one_time_tokens",
                                                 "devices", "admin_jobs")} == {
        "login_sessions": 3, "login_transactions": 2, "one_time_tokens": 3, "devices": 1, "admin_jobs": 1}


def test_a_user_whose_forgotten_devices_went_is_still_told_of_a_new_browser(app, mailbox):
    """The new-sign-in mail is skipped only for a brand-new account's first browser, which idp knows by the user
    having no device row at all (idp.login.devices.seen). Housekeeping keeps the newest row, even forgotten, so
    a browser after it is still news."""
    make_user_in(app)
    for _ in range(2):  # two browsers; the second one brings a new-sign-in mail
        browser = app.test_client()
        browser.get(sign_in(browser, "alice@example.com").headers["Location"])
    with app.app_context():
        db.session.execute(update(Device).values(revoked_at=utcnow() - DAY))  # both forgotten
        db.session.commit()
    with app.app_context():
        assert housekeeping.run().counts["devices"] == 1
    assert len(_ids(app, Device)) == 1
    mails = len(mailbox.messages("alice@example.com"))
    stranger = app.test_client()
    stranger.get(sign_in(stranger, "alice@example.com").headers["Location"])
    assert len(mailbox.messages("alice@example.com")) == mails + 1
    assert "new sign-in" in mailbox.last("alice@example.com")["subject"].lower()


# --- batches -----------------------------------------------------------------------------------------------------

def test_35_expired_rows_go_in_4_batches_of_at_most_10_each_committed_before_the_next(make_app):
    app = make_app(IDP_HOUSEKEEPING_BATCH=10)
    user = _user_id(app)
    now = utcnow()
    with app.app_context():
        db.session.execute(insert(table_of(OneTimeToken)), [
            {"purpose": "verify_email", "user_id": user, "email": "x@example.com", "created_at": now - DAY,
             "expires_at": now - DAY + timedelta(hours=1)} for _ in range(35)])
        db.session.commit()
    live = {_insert(app, OneTimeToken, purpose="verify_email", user_id=user, email="x@example.com",
                    created_at=now, expires_at=now + DAY) for _ in range(2)}
    happened: list[str] = []
    with app.app_context():
        engine = db.engine

    def on_statement(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("DELETE FROM ONE_TIME_TOKENS"):
            happened.append("delete")

    def on_commit(conn):
        happened.append("commit")

    event.listen(engine, "after_cursor_execute", on_statement)
    event.listen(engine, "commit", on_commit)
    try:
        said = run_housekeeping(app)
    finally:
        event.remove(engine, "after_cursor_execute", on_statement)
        event.remove(engine, "commit", on_commit)
    deletes = [i for i, what in enumerate(happened) if what == "delete"]
    assert len(deletes) == 4  # 10, 10, 10, 5: the loop stops at the first batch short of 10
    assert all(happened[i + 1] == "commit" for i in deletes)  # each batch is its own transaction
    assert said["one_time_tokens"] == 35
    assert _ids(app, OneTimeToken) == live


@pytest.mark.skipif(not TEST_DATABASE_URL, reason="row locks need PostgreSQL: set IDP_TEST_DATABASE_URL")
def test_a_batch_passes_over_a_row_a_request_holds_instead_of_waiting_for_it(app):
    user = _user_id(app)
    now = utcnow()
    ids = [_insert(app, OneTimeToken, purpose="verify_email", user_id=user, email="x@example.com",
                   created_at=now - DAY, expires_at=now - DAY + timedelta(hours=1)) for _ in range(3)]
    with app.app_context():
        holder = db.engine.connect()
    holder.execute(text("SELECT id FROM one_time_tokens WHERE id = :id FOR UPDATE"), {"id": ids[1]})
    results: list = []

    def chores():
        with app.app_context():
            results.append(housekeeping.run(now).counts["one_time_tokens"])
            db.session.remove()

    worker = threading.Thread(target=chores)
    worker.start()
    worker.join(timeout=120)
    waited = worker.is_alive()
    holder.rollback()  # the request ends (and a waiting run would go on)
    holder.close()
    worker.join(timeout=120)
    assert not waited, "housekeeping waited for a row a request held"
    assert results == [2] and _ids(app, OneTimeToken) == {ids[1]}
    with app.app_context():
        assert housekeeping.run(now).counts["one_time_tokens"] == 1  # the next run takes it
    assert _ids(app, OneTimeToken) == set()


# --- audit retention ------------------------------------------------------------------------------------------------

def record_at(app, monkeypatch, when: datetime, count: int, name: str = "test.event") -> None:
    """Record ``count`` audit events as if at ``when`` (the time a row carries is the one it was written at)."""
    monkeypatch.setattr(audit, "utcnow", lambda: when)
    with app.test_request_context():
        for n in range(count):
            audit.record(name, n=n, commit=True)
    monkeypatch.setattr(audit, "utcnow", utcnow)


def attack(app, *statements: str) -> None:
    """Raw SQL with the append-only triggers of the three audit tables off (the attacker owns the database)."""
    tables = ("audit_events", "audit_checkpoints", "audit_anchors")
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            for table in tables:
                db.session.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
            for statement in statements:
                db.session.execute(text(statement))
            for table in tables:
                db.session.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
        else:
            for table in tables:
                for verb in ("update", "delete"):
                    db.session.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_{verb}"))
            for statement in statements:
                db.session.execute(text(statement))
        db.session.commit()


@pytest.fixture
def retained(make_app, tmp_path, monkeypatch):
    """An app keeping audit events 30 days, checkpointed every 4; 9 events older than that (one checkpoint among
    them) and 3 younger. Returns (app, archive folder, the 12 rows before housekeeping)."""
    app = make_app(IDP_AUDIT_RETENTION_DAYS=30, IDP_AUDIT_ARCHIVE_DIR=str(tmp_path / "archive"),
                   IDP_AUDIT_CHECKPOINT_EVERY=4)
    with app.app_context():
        keys.active()
    now = utcnow()
    record_at(app, monkeypatch, now - timedelta(days=40), 6, "test.old")
    record_at(app, monkeypatch, now - timedelta(days=31), 3, "test.old")
    record_at(app, monkeypatch, now - timedelta(days=29), 3, "test.young")
    rows = events(app)
    assert [r["event"] for r in rows] == ["test.old"] * 9 + ["test.young"] * 3
    return app, tmp_path / "archive", rows


def _archive_lines(folder) -> list[dict]:
    files = sorted(folder.iterdir())
    assert len(files) == 1, files
    return [json.loads(line) for line in files[0].read_text().splitlines()]


def test_audit_retention_archives_the_old_rows_whole_then_deletes_them_and_the_log_still_verifies(retained):
    app, folder, rows = retained
    result = app.test_cli_runner().invoke(args=["housekeeping"])
    assert result.exit_code == 0, result.output
    assert "9\taudit_events" in result.stdout and f"audit archive: {folder}" in result.stdout
    lines = _archive_lines(folder)
    old = rows[:9]
    # Every column of every deleted row, in chain order; each line checks against the one before on its own.
    assert [line["id"] for line in lines] == [row["id"] for row in old]
    for line, row in zip(lines, old, strict=True):
        assert set(line) == set(row)
        assert {k: v for k, v in line.items() if k != "at"} == {k: v for k, v in row.items() if k != "at"}
        assert datetime.fromisoformat(line["at"]) == row["at"]
    prev = audit.GENESIS
    for line in lines:
        assert line["prev_hash"] == prev
        assert audit.row_hash(prev, {**line, "at": datetime.fromisoformat(line["at"])}) == line["row_hash"]
        prev = line["row_hash"]
    kept = events(app)
    assert kept[:3] == rows[9:] and [r["event"] for r in kept[3:]] == ["audit.pruned"]
    assert kept[3]["details"]["events"] == 9 and kept[3]["details"]["through"] == old[-1]["id"]
    with app.app_context():
        anchor = db.session.execute(select(AuditAnchor)).scalar_one()
        assert (anchor.last_event_id, anchor.row_hash, anchor.events) == (old[-1]["id"], old[-1]["row_hash"], 9)
    code, said = verify(app)
    assert code == 0 and said.startswith("audit log intact: 4 events, ") and \
        said.endswith(f"; archived and pruned up to event {old[-1]['id']}"), said
    # The next run has nothing older: no second archive.
    assert "audit archive" not in app.test_cli_runner().invoke(args=["housekeeping"]).stdout
    assert len(list(folder.iterdir())) == 1


def test_after_a_prune_a_changed_kept_row_is_still_caught(retained):
    app, _folder, rows = retained
    run_housekeeping(app)
    young = rows[10]
    attack(app, f"UPDATE audit_events SET ip = '203.0.113.9' WHERE id = {young['id']}")
    assert verify(app) == (1, f"event {young['id']}: row_hash does not match its content")


def test_after_a_prune_cutting_more_off_the_start_is_caught(retained):
    app, _folder, rows = retained
    run_housekeeping(app)
    first_kept, second = rows[9], rows[10]
    attack(app, f"DELETE FROM audit_events WHERE id = {first_kept['id']}")
    assert verify(app) == (1, f"event {second['id']}: prev_hash does not start the chain")


def _forge(payload: dict, kid: str) -> str:
    forger = ECKey.generate_key("P-256", private=True)
    return jws.serialize_compact({"alg": "ES256", "kid": kid}, audit._canonical(payload), forger, algorithms=["ES256"])


@pytest.mark.parametrize("forgery", ["moved", "foreign key", "checkpoint copied", "removed"])
def test_a_forged_or_removed_anchor_is_caught(retained, forgery):
    """Whoever has the database but not the signing key cannot anchor the chain elsewhere, pass a checkpoint's
    signature off as an anchor (to cut the log's start off), or drop the anchor."""
    app, _folder, rows = retained
    run_housekeeping(app)
    with app.app_context():
        anchor = db.session.execute(select(AuditAnchor)).scalar_one()
        db.session.expunge(anchor)
    young = rows[9:]
    if forgery == "moved":  # anchored one row further, to drop the first kept row unseen
        attack(app, f"DELETE FROM audit_events WHERE id = {young[0]['id']}",
               f"UPDATE audit_anchors SET last_event_id = {young[0]['id']}, row_hash = '{young[0]['row_hash']}' "
               f"WHERE id = {anchor.id}")
        assert verify(app) == (1, f"anchor {anchor.id}: signed content does not match the row")
    elif forgery == "foreign key":
        claims = audit._anchor_claims(anchor) | {"last_event_id": young[0]["id"], "row_hash": young[0]["row_hash"]}
        attack(app, f"DELETE FROM audit_events WHERE id = {young[0]['id']}",
               f"UPDATE audit_anchors SET last_event_id = {young[0]['id']}, row_hash = '{young[0]['row_hash']}', "
               f"signature = '{_forge(claims, anchor.kid)}' WHERE id = {anchor.id}")
        assert verify(app) == (1, f"anchor {anchor.id}: bad signature")
    elif forgery == "checkpoint copied":
        with app.app_context():
            cp = db.session.execute(select(AuditCheckpoint).where(AuditCheckpoint.last_event_id > anchor.last_event_id)
                                    ).scalars().first()
            assert cp is not None
            db.session.expunge(cp)
        attack(app, f"DELETE FROM audit_events WHERE id <= {cp.last_event_id}",
               "INSERT INTO audit_anchors (at, last_event_id, row_hash, events, archive, kid, signature) VALUES "
               f"('{cp.at.strftime('%Y-%m-%d %H:%M:%S.%f')}', {cp.last_event_id}, '{cp.row_hash}', 0, '', "
               f"'{cp.kid}', '{cp.signature}')")
        code, said = verify(app)
        assert code == 1 and said.endswith(": signed content does not match the row") and said.startswith("anchor")
    else:
        attack(app, f"DELETE FROM audit_anchors WHERE id = {anchor.id}")
        assert verify(app) == (1, f"event {young[0]['id']}: prev_hash does not start the chain")


def test_a_log_that_does_not_verify_is_not_pruned(retained):
    """A prune would archive the tampering and anchor what follows it: it refuses, and leaves everything."""
    app, folder, rows = retained
    attack(app, f"UPDATE audit_events SET details = '{{\"n\": 99}}' WHERE id = {rows[3]['id']}")
    result = app.test_cli_runner().invoke(args=["housekeeping"])
    assert result.exit_code == 1
    assert f"the audit log does not verify (event {rows[3]['id']}: row_hash does not match its content)" in \
        result.stderr
    assert "\ttokens" in result.stdout  # the other chores ran
    assert not folder.exists() or list(folder.iterdir()) == []
    assert [r["id"] for r in events(app)] == [r["id"] for r in rows]


def test_a_prune_stopped_half_way_leaves_a_log_that_verifies_and_the_next_run_finishes_it(make_app, tmp_path,
                                                                                           monkeypatch):
    app = make_app(IDP_AUDIT_RETENTION_DAYS=30, IDP_AUDIT_ARCHIVE_DIR=str(tmp_path / "archive"),
                   IDP_HOUSEKEEPING_BATCH=3)
    now = utcnow()
    record_at(app, monkeypatch, now - timedelta(days=40), 8, "test.old")
    record_at(app, monkeypatch, now - timedelta(days=1), 2, "test.young")
    rows = events(app)
    with app.app_context():
        engine = db.engine
    batches = []

    def crash_at_the_second_batch(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("DELETE FROM AUDIT_EVENTS"):
            batches.append(statement)
            if len(batches) == 2:
                raise RuntimeError("the machine stops")

    event.listen(engine, "before_cursor_execute", crash_at_the_second_batch)
    try:
        result = app.test_cli_runner().invoke(args=["housekeeping"])
    finally:
        event.remove(engine, "before_cursor_execute", crash_at_the_second_batch)
    assert isinstance(result.exception, RuntimeError)
    left = [r["id"] for r in events(app)]
    assert left == [r["id"] for r in rows[:5]] + [r["id"] for r in rows[8:]]  # the newest three old ones went
    code, said = verify(app)
    assert code == 0, said
    run_housekeeping(app)
    assert [r["id"] for r in events(app)][:2] == [r["id"] for r in rows[8:]]
    assert verify(app)[0] == 0
    assert len(list((tmp_path / "archive").iterdir())) == 1  # the second run archived nothing again


def test_only_the_prune_may_delete_audit_rows_and_only_those_it_anchored(retained):
    app, _folder, rows = retained
    run_housekeeping(app)
    kept = rows[9]
    with app.app_context(), db.engine.connect() as connection:
        for statement in (f"DELETE FROM audit_events WHERE id = {kept['id']}", "DELETE FROM audit_anchors",
                          "UPDATE audit_anchors SET events = 1", f"UPDATE audit_events SET ip = '' WHERE id = "
                                                                  f"{kept['id']}"):
            with pytest.raises(DBAPIError, match="append-only"):
                connection.execute(text(statement))
            connection.rollback()
    with app.app_context():
        for statement in (delete(AuditEvent).where(AuditEvent.id == kept["id"]), delete(AuditAnchor),
                          update(AuditEvent).values(ip=""), delete(table_of(AuditCheckpoint))):
            with pytest.raises(AuditLogIsAppendOnly):
                db.session.execute(statement)
            db.session.rollback()
        # The prune's own statement, aimed at a row no anchor covers: the database still refuses.
        with pytest.raises(DBAPIError, match="append-only"):
            db.session.execute(delete(AuditEvent).where(AuditEvent.id == kept["id"])
                               .execution_options(**{PRUNE_OPTION: True}))
        db.session.rollback()
    assert events(app)[0] == kept


def test_of_two_prunes_at_once_the_second_to_anchor_leaves_no_archive_behind(retained, monkeypatch):
    app, folder, rows = retained
    write = audit._write_archive

    def while_another_prune_anchors_the_same_rows(path, chosen, prev):
        count, last = write(path, chosen, prev)
        with db.engine.begin() as other:
            other.execute(insert(table_of(AuditAnchor)), {
                "at": utcnow(), "last_event_id": last["id"], "row_hash": last["row_hash"], "events": count,
                "archive": "the-other-one.jsonl", "kid": "k", "signature": "s"})
        return count, last

    monkeypatch.setattr(audit, "_write_archive", while_another_prune_anchors_the_same_rows)
    result = app.test_cli_runner().invoke(args=["housekeeping"])
    assert result.exit_code == 1
    assert f"another prune archived events up to {rows[8]['id']} at the same time" in result.stderr
    assert list(folder.iterdir()) == []


def test_without_a_retention_nothing_is_archived_nor_deleted(make_app, tmp_path, monkeypatch):
    app = make_app(IDP_AUDIT_ARCHIVE_DIR=str(tmp_path / "archive"))
    record_at(app, monkeypatch, utcnow() - timedelta(days=4000), 3)
    said = run_housekeeping(app)
    assert "audit_events" not in said and len(events(app)) == 3 and not (tmp_path / "archive").exists()


def test_housekeeping_says_what_went_one_line_each(app):
    make_user_in(app)
    result = app.test_cli_runner().invoke(args=["housekeeping"])
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["0\tadmin roles lapsed", "0\tusers purged", "0\ttokens",
                                          "0\tauthorization_codes", "0\tlogin_transactions", "0\tlogin_sessions",
                                          "0\tone_time_tokens", "0\tdevices", "0\tadmin_jobs",
                                          "0\tpushed_requests", "0\tdpop_proofs",
                                          "0\tdevice_codes"]


def test_users_are_still_purged_and_roles_still_lapse(app):
    from idp.admin import service

    bob = make_user_in(app, email="bob@example.com")
    with app.app_context():
        service.delete_user(service.OPERATOR, db.session.get(User, bob.id))
        service.grant_role(service.OPERATOR, db.session.get(User, make_user_in(app).id), "helpdesk",
                           utcnow() + timedelta(days=1))
        done = housekeeping.run(utcnow() + timedelta(days=app.config["IDP_DELETE_GRACE_DAYS"] + 1))
        assert done.counts["users purged"] == 1 and done.counts["admin roles lapsed"] == 1
        assert db.session.get(User, bob.id) is None

