"""Server-side sign-in sessions (ASVS 5.0 V7): random cookie token, stored hashed, idle and absolute timeouts."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select
from sqlalchemy.orm import joinedload

from idp import audit
from idp.extensions import db
from idp.login.assurance import acr_for, complete_amr
from idp.models import LoginSession, User
from idp.oidc import logout
from idp.oidc.server import revoke_for_user, revoke_online
from idp.security.tokens import new_token, token_hash

# Writing last_seen_at on every request would turn each page view into a write; a minute is precise enough
# for an idle timeout measured in tens of minutes.
TOUCH_INTERVAL = timedelta(seconds=60)
# A request with a session cookie reads the session and its user (every check reads the user): one statement, one
# round trip, built once (bench/README.md: building a statement per request costs more Python than running it).
_BY_TOKEN = (select(LoginSession).where(LoginSession.token_hash == bindparam("hash"))
             .options(joinedload(LoginSession.user)))


def start(user: User, *, amr: Iterable[str], now: datetime, ip: str, user_agent: str,
          previous: LoginSession | None = None, fresh_login: bool = True) -> tuple[LoginSession, str]:
    """Begin (or, for a step-up of the same user, renew) a session; always under a new cookie token."""
    token = new_token(32)
    amr = complete_amr(amr)
    if previous is not None and previous.user_id == user.id and previous.ended_at is None and not fresh_login:
        # Step-up: the earlier methods still stand; add the new ones and rotate the id (ASVS V7.2.4).
        session = previous
        session.amr = complete_amr([*previous.amr, *amr])
    else:
        if previous is not None and previous.ended_at is None:
            end(previous, "replaced", now)
        session = LoginSession(sid=new_token(16), user=user, created_at=now, amr=amr)
        db.session.add(session)
    session.token_hash = token_hash(token)
    session.auth_time = now
    session.acr = acr_for(session.amr)
    session.last_seen_at = now
    session.ip = ip
    session.user_agent = user_agent[:512]
    return session, token


def load(token: str | None, *, now: datetime, idle_timeout: int, max_age: int) -> LoginSession | None:
    """The live session for a cookie token; an idle or too old one is ended (and audited) on the way."""
    if not token:
        return None
    session = db.session.execute(_BY_TOKEN, {"hash": token_hash(token)}).scalar_one_or_none()
    if session is None or session.ended_at is not None:
        return None
    if session.user.disabled:
        end(session, "user_disabled", now)
        db.session.commit()  # ended for good: re-enabling the user must not revive the session
        return None
    reason = session.timed_out(now, idle_timeout=idle_timeout, max_age=max_age)
    if reason is None:
        if now - session.last_seen_at > TOUCH_INTERVAL:
            session.last_seen_at = now
            db.session.commit()
        return session
    end(session, reason, now)
    audit.record("session.expired", subject=session.user, reason=reason, sid=session.sid)
    db.session.commit()
    return None


def end(session: LoginSession, reason: str, now: datetime) -> None:
    """End one session server-side; its cookie token stops working at once."""
    if session.ended_at is None:
        session.ended_at = now
        session.end_reason = reason
        revoke_online(session.sid, f"session_{reason}"[:32])  # OIDC Core 11: without offline_access, ends with it
        logout.session_ended(session, reason)  # the clients it signed into are told (back- and front-channel)


def sign_out_everywhere(user: User, reason: str, now: datetime) -> tuple[int, int]:
    """End every session of ``user`` and revoke every token issued to them (SECURITY.md 6: a password reset,
    disabling the user, an MFA reset); returns (sessions ended, tokens revoked)."""
    return end_all(user, reason, now), revoke_for_user(user, reason)


def end_all(user: User, reason: str, now: datetime, keep: LoginSession | None = None) -> int:
    """End every live session of ``user`` (but ``keep``); returns how many ended."""
    live = db.session.execute(
        db.select(LoginSession).where(LoginSession.user_id == user.id, LoginSession.ended_at.is_(None))
    ).scalars()
    count = 0
    for session in live:
        if keep is None or session.id != keep.id:
            end(session, reason, now)
            count += 1
    return count


def live_sessions(user: User) -> list[LoginSession]:
    """The user's live sessions, newest first (expired ones are ended when next presented)."""
    return list(db.session.execute(
        db.select(LoginSession).where(LoginSession.user_id == user.id, LoginSession.ended_at.is_(None))
        .order_by(LoginSession.last_seen_at.desc())
    ).scalars())
