"""The hosted sign-in screens: start a transaction, run its steps one screen at a time, complete it."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

from flask import Blueprint, Flask, current_app, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from idp import audit, i18n
from idp.extensions import db, keep_loaded, limiter
from idp.http import set_device_cookie, set_session_cookie
from idp.login import devices, mfa, planner, sessions, transaction
from idp.login.browser import (
    begin_transaction,
    binding,
    current_session,
    rotate_binding,
    safe_next,
    start_transaction,
    step_context,
)
from idp.login.context import Step, StepContext
from idp.login.factors import REGISTRY
from idp.models import LoginTransaction, utcnow
from idp.security.tokens import token_hash

bp = Blueprint("login", __name__, url_prefix="/login")


def _forms_limit() -> str:
    return current_app.config["IDP_RATELIMIT_FORMS"]


@bp.get("")
@keep_loaded
def begin():
    """Start signing in (or go straight back if this browser is already signed in)."""
    return_to = safe_next(request.args.get("next")) or url_for("account.home")
    if current_session() is not None:
        return redirect(return_to)
    return begin_here(reasons=["no_session"], return_to=return_to,
                      login_hint=request.args.get("login_hint", "")[:320])


def begin_here(**kwargs) -> ResponseReturnValue:
    """Begin a sign-in (``start_transaction``'s arguments) and answer a GET with its first screen at once, at the
    URL that began it (the sign-in page, the authorization endpoint): the redirect to the screen's own URL would be
    one more round trip for every sign-in. The screen's forms post to its own URL, /login/<tid>, as every later
    screen's do. A POST (an authorization request sent as a form) is still answered with that redirect, so that
    reloading the screen does not send the form again."""
    if request.method != "GET":
        return begin_transaction(**kwargs)
    txn = start_transaction(**kwargs)
    ctx = step_context(txn)
    current = planner.next_step(ctx)
    if current is None:  # nothing to ask (a consent the policy no longer needs): the step's URL completes it
        return redirect(url_for("login.step", tid=txn.id))
    g.shown_transaction = txn  # its ui_locales choose the screen's language, as at its own URL (i18n)
    i18n.refresh()
    return _screen(ctx, current, current.form_class(), None)


def _load(tid: str) -> LoginTransaction | None:
    return transaction.load(tid, binding=binding(), now=utcnow(), lock=request.method == "POST")


def _current(tid: str):
    """The transaction, its step context and the step to show now; None when the transaction is not usable."""
    txn = _load(tid)
    if txn is None:
        return None
    ctx = step_context(txn)
    return txn, ctx, planner.next_step(ctx)


def _expired() -> tuple[str, int]:
    return render_template("error.html", title=_("This sign-in has expired"),
                           message=_("It took too long, was already completed, or was started in another browser."),
                           action=(url_for("login.begin"), _("Start again"))), 400


@bp.route("/<tid>", methods=["GET", "POST"])
@keep_loaded
def step(tid: str):
    """Show the current step of transaction ``tid``, or check the answer posted to it."""
    found = _current(tid)
    if found is None:
        return _expired()
    txn, ctx, current = found
    if current is None:
        return _complete(ctx)
    form = current.form_class()
    error = None
    if request.method == "POST":
        if request.form.get("step") != current.name:
            return redirect(url_for("login.step", tid=tid))  # a stale form from an earlier screen
        if form.validate_on_submit():
            outcome = current.verify(ctx, form.data)
            if outcome.ok:
                transaction.mark_done(txn, current.name, outcome.amr)
                after = step_context(txn)  # re-planned: this answer may have changed what is left
                # The password step changed only the user's failure count and the transaction, which the plan does
                # not read (it reads the user's factors, devices and recovery codes): they go in with the
                # completion's one flush. Another step may have changed what the plan reads (an enrolment confirms a
                # factor), so the plan sees its changes.
                with db.session.no_autoflush if current is planner.PASSWORD else nullcontext():
                    last = planner.next_step(after) is None
                if last:
                    return _complete(after)  # the last step (one commit with the session): no extra round trip
                db.session.commit()
                return redirect(url_for("login.step", tid=tid))
            error = outcome.error
            db.session.commit()  # attempt counters and audit rows stay even though the answer failed
        else:
            error = next(iter(form.hidden_errors()), None)  # the others are said at their fields
    return _screen(ctx, current, form, error)


def _screen(ctx: StepContext, current: Step, form, error: str | None) -> str:
    """The screen of step ``current`` (its ``begin`` may send a code: committed before the page is answered)."""
    variables = current.begin(ctx)
    db.session.commit()
    return render_template(current.template, form=form, step=current, tid=ctx.txn.id, error=error,
                           others=_others(ctx, current), **variables)


def _others(ctx: StepContext, current: Step) -> list[tuple[str, str]]:
    """The chooser under a factor's form: the other factors the user may pick instead, strongest first."""
    if REGISTRY.get(current.name) is None:
        return []
    return [(kind, factor.chooser_label or factor.title) for kind in mfa.choices(ctx)
            if kind != current.name and (factor := REGISTRY.get(kind)) is not None]


@bp.post("/<tid>/resend")
@limiter.limit(_forms_limit)
def resend(tid: str):
    """Send the current step's code again, after its cooldown."""
    found = _current(tid)
    if found is None:
        return _expired()
    _, ctx, current = found
    if current is not None and request.form.get("step") == current.name:
        message = current.resend(ctx)
        db.session.commit()
        if message:
            flash(message)
    return redirect(url_for("login.step", tid=tid))


@bp.post("/<tid>/passkey")
def passkey(tid: str):
    """Sign in with a passkey from the sign-in page (conditional UI); it replaces the password step."""
    found = _current(tid)
    if found is None:
        return _expired()
    txn, ctx, current = found
    if current is not planner.PASSWORD:
        return redirect(url_for("login.step", tid=tid))
    outcome = planner.PASSWORD.verify_passkey(ctx, request.form.get("credential", "")[:20000])
    if outcome.ok:
        transaction.mark_done(txn, planner.PASSWORD.name, outcome.amr)
    else:
        flash(outcome.error)
    db.session.commit()
    return redirect(url_for("login.step", tid=tid))


@bp.post("/<tid>/choose")
def choose(tid: str):
    """Pick another second factor than the one offered."""
    txn = _load(tid)
    if txn is None:
        return _expired()
    ctx = step_context(txn)
    wanted = request.form.get("factor", "")
    if wanted in mfa.choices(ctx):
        transaction.update(txn, factor=wanted)
        db.session.commit()
    return redirect(url_for("login.step", tid=tid))


@bp.post("/<tid>/cancel")
def cancel(tid: str):
    """Abandon the transaction and start signing in from the beginning."""
    txn = _load(tid)
    if txn is not None:
        txn.completed_at = utcnow()
        db.session.commit()
    return redirect(url_for("login.begin"))


def _complete(ctx: StepContext) -> Response:
    """Every step passed: record the session (new id), audit, and return where the transaction came from."""
    txn, user = ctx.txn, ctx.txn.user
    assert user is not None
    i18n.forget_ui_locales()
    previous = current_session()
    if planner.PASSWORD.name not in txn.state.done and (previous is None or previous.user_id != user.id):
        # Who the user is came from the session the transaction was begun in (consent, a step-up), not from this
        # transaction: that session has ended since (signed out, timed out) or is now another user's. Completing it
        # would start a session that nothing proved (SECURITY.md 17, 18).
        txn.completed_at = ctx.now
        db.session.commit()
        return current_app.make_response(_expired())
    if not txn.state.amr and previous is not None and previous.user_id == user.id:
        # Nothing was authenticated (consent only, or a step-up with nothing to add): the session stands as is.
        txn.completed_at = ctx.now
        db.session.commit()
        return _returned(txn)
    fresh = "pwd" in txn.state.amr or previous is None or previous.user_id != user.id
    amr = mfa.effective_amr(txn.state.amr, mfa.remembered(ctx))
    live, token = sessions.start(user, amr=amr, now=ctx.now, ip=ctx.ip, user_agent=ctx.user_agent,
                                 previous=previous, fresh_login=fresh)
    txn.completed_at = ctx.now
    rotate_binding()
    # The completed transaction follows the new binding, so /authorize can still see what it answered.
    txn.binding_hash = token_hash(binding())
    audit.record("login.success", subject=user, amr=live.amr, acr=live.acr, sid=live.sid,
                 client_id=txn.state.client_id)
    device_token = devices.seen(user, ctx, remember=txn.state.remember_device, sid=live.sid)
    db.session.commit()  # the session, the transaction, the device and their audit rows: all or nothing
    g.login_session = live
    response = _returned(txn)
    set_session_cookie(response, token, max_age=current_app.config["IDP_SESSION_MAX_AGE"])
    if device_token:
        set_device_cookie(response, device_token)
    return response


_RETURNS = "idp.login.returns"


def answer_returns(app: Flask, answer: Callable[[LoginTransaction], ResponseReturnValue | None]) -> None:
    """Have ``answer`` give the answer of a completed transaction's return address itself, where it can (the
    authorization endpoint's, idp.oidc.views.answer_completed), instead of a redirect there: handed in by the app
    factory, so that the engine does not import the provider that imports it (tests/test_import_graph.py)."""
    app.extensions[_RETURNS] = answer


def _returned(txn: LoginTransaction) -> Response:
    """Back where the completed transaction ``txn`` came from: its return address's own answer when that can be
    given here, else a redirect to it."""
    answer = current_app.extensions.get(_RETURNS)
    answered = answer(txn) if answer is not None else None
    return current_app.make_response(answered) if answered is not None else redirect(txn.state.return_to)
