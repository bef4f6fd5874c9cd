"""Self-service sign-in methods: every factor in the registry (its section, enrolment and removal), and
remembered devices. Every change needs a recent authentication, is audited and is mailed (SECURITY.md 27)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from idp.account import confirm
from idp.extensions import db, limiter
from idp.login import devices
from idp.login.browser import begin_transaction, login_required, signed_in
from idp.login.context import confirmed_factors
from idp.login.enrolment import notify_change
from idp.login.factors import REGISTRY, FactorType
from idp.login.factors.base import EnrolContext
from idp.login.forms import ConfirmForm, NameForm
from idp.models import Device, Factor, utcnow

bp = Blueprint("security", __name__, url_prefix="/account/security")

# The Flask session key under which an enrolment keeps what its stages pass on (JSON values only).
PENDING_KEY = "enrol"


def recent_auth_required(view: Callable[..., Any] | None = None, *, after_post: str = "security.index",
                         purpose: str = "") -> Any:
    """Changes need a sign-in within IDP_STEP_UP_MAX_AGE; otherwise the user signs in again (every factor) and
    comes back to the page (after a POST: to the ``after_post`` endpoint, since the form must be sent again).
    ``purpose`` names the change, which the sign-in page states (idp.login.steps.password.REAUTH_PURPOSES)."""
    if view is None:
        return lambda inner: recent_auth_required(inner, after_post=after_post, purpose=purpose)

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        live = signed_in()
        max_age = current_app.config["IDP_STEP_UP_MAX_AGE"]
        if utcnow() - live.auth_time > timedelta(seconds=max_age):
            back = request.full_path.rstrip("?") if request.method == "GET" else url_for(after_post)
            return begin_transaction(reasons=["reauth"], return_to=back, user=live.user,
                                     login_hint=live.user.email, reauth_purpose=purpose)
        return view(*args, **kwargs)
    return wrapped


def _factor(factor_id: int) -> Factor:
    factor = db.session.get(Factor, factor_id)
    if factor is None or factor.user_id != signed_in().user_id:
        abort(404)
    return factor


def _notify(what: str, event: str, **details: Any) -> None:
    notify_change(signed_in().user, what, event=event, **details)


@bp.get("")
@login_required
def index():
    """Your sign-in methods and remembered devices."""
    user = signed_in().user
    confirmed = confirmed_factors(user)
    sections = [(factor, section) for factor in REGISTRY
                if (section := factor.section(user, confirmed, current_app.config)) is not None]
    return render_template("account/security.html", user=user, confirm=ConfirmForm(), rename=NameForm(),
                           sections=sections, devices=devices.remembered_devices(user), now=utcnow())


def _enrolment(slug: str, stage: str | None) -> tuple[FactorType, str]:
    """The factor behind ``slug`` and the enrolment stage asked for (404 for anything else)."""
    factor = REGISTRY.by_slug(slug)
    if factor is None or not factor.enrol_stages or not factor.available():
        abort(404)
    stage = stage or next(iter(factor.enrol_stages))
    if stage not in factor.enrol_stages:
        abort(404)
    return factor, stage


def _enrol_limit() -> str:
    return current_app.config["IDP_RATELIMIT_FORMS"]


@bp.route("/<slug>", methods=["GET", "POST"], defaults={"stage": None})
@bp.route("/<slug>/<stage>", methods=["GET", "POST"])
@login_required
@recent_auth_required(purpose="add_method")
@limiter.limit(_enrol_limit, methods=["POST"])
def enrol(slug: str, stage: str | None) -> Response | str:
    """Add a sign-in method: each factor's enrolment stages (scan and confirm, send and check a code...)."""
    factor, stage = _enrolment(slug, stage)
    entry = next(iter(factor.enrol_stages))
    if factor.enrol_by_post_only and request.method == "GET":
        return redirect(url_for("security.index"))
    live = signed_in()
    # What an earlier stage kept counts only for the same factor in the same sign-in session (a browser shared
    # by two accounts, or a session that ended, starts the enrolment over).
    saved = session.get(PENDING_KEY)
    pending: dict[str, Any] = {}
    if isinstance(saved, dict) and saved.get("kind") == factor.kind and saved.get("sid") == live.sid:
        pending = dict(saved.get("data") or {})
    pending["sid"] = live.sid
    ec = EnrolContext(user=live.user, now=utcnow(), ip=g.client_ip, user_agent=g.user_agent,
                      config=current_app.config, pending=pending, args=request.args)
    template, form_class = factor.enrol_stages[stage]
    form = form_class()
    if request.method == "POST":
        if form.validate_on_submit():
            result = factor.enrol_verify(stage, ec, request.form)
            if result.ok:
                if result.notice:
                    _notify(result.notice, result.event, **({"kind": factor.kind} if result.event == "factor.added"
                                                            else {}))
                db.session.commit()
                if result.next_stage:
                    session[PENDING_KEY] = {"kind": factor.kind, "sid": live.sid, "data": result.pending or ec.pending}
                    return redirect(url_for("security.enrol", slug=slug, stage=result.next_stage))
                session.pop(PENDING_KEY, None)
                if result.show:
                    response = current_app.make_response(render_template(result.show, **result.show_context))
                    response.headers["Cache-Control"] = "no-store"  # shown once, never from a cache
                    return response
                if result.message:
                    flash(result.message)
                return redirect(url_for("security.index"))
            db.session.commit()  # attempt counters and audit rows stay even though the answer failed
            if result.next_stage:
                if result.error:
                    flash(result.error, "error")
                values: dict[str, Any] = {**request.args.to_dict(), "slug": slug, "stage": result.next_stage}
                return redirect(url_for("security.enrol", **values))
            _show_error(form, result.error or _("That did not work. Try again."))
        if factor.enrol_by_post_only:
            return redirect(url_for("security.index"))
    variables = factor.enrol_begin(stage, ec)
    if variables is None:
        return redirect(url_for("security.enrol", slug=slug, stage=entry))
    db.session.commit()
    session[PENDING_KEY] = {"kind": factor.kind, "sid": live.sid, "data": ec.pending}
    return render_template(template, form=form, factor=factor, slug=slug, **variables)


def _show_error(form: Any, error: str) -> None:
    """Show a refused answer under the form's first visible field (where the user typed it)."""
    for field in form:
        if field.type not in ("CSRFTokenField", "HiddenField"):
            form.add_error(field, error)
            return
    flash(error, "error")


@bp.post("/factors/<int:factor_id>/rename")
@login_required
@recent_auth_required(purpose="change_method")
def rename_factor(factor_id: int):
    """Rename a factor."""
    factor = _factor(factor_id)
    form = NameForm()
    if form.validate_on_submit():
        old, factor.name = factor.name, form.name.data.strip()
        _notify(_("Your sign-in method “%(old)s” was renamed to “%(new)s”.", old=old, new=factor.name),
                "factor.renamed", kind=factor.kind)
        db.session.commit()
    return redirect(url_for("security.index"))


@bp.post("/factors/<int:factor_id>/remove")
@login_required
@recent_auth_required(purpose="remove_method")
def remove_factor(factor_id: int):
    """Remove a factor."""
    factor = _factor(factor_id)
    if ConfirmForm().validate_on_submit() and not confirm.confirmed():
        return confirm.ask(_("Remove “%(name)s”?", name=factor.name),
                           _("You will no longer be able to sign in with it. Add it again later if you need to."),
                           _("Remove"), url_for("security.index"))
    if ConfirmForm().validate_on_submit():
        name, kind = factor.name, factor.kind
        factor_type = REGISTRY.get(kind)
        if factor_type is not None:
            factor_type.remove(factor)
        else:  # a credential of a factor this server no longer offers
            db.session.delete(factor)
        _notify(_("The sign-in method “%(name)s” was removed from your account.", name=name), "factor.removed",
                kind=kind)
        db.session.commit()
        flash(_("“%(name)s” removed.", name=name))
    return redirect(url_for("security.index"))


@bp.post("/devices/<int:device_id>/forget")
@login_required
@recent_auth_required(purpose="forget_device")
def forget_device(device_id: int):
    """Stop remembering a device: it will ask for the second factor again."""
    device = db.session.get(Device, device_id)
    live = signed_in()
    if device is not None and device.user_id == live.user_id and ConfirmForm().validate_on_submit():
        if not confirm.confirmed():
            return confirm.ask(_("Forget “%(name)s”?", name=device.name),
                               _("That browser will ask for your second factor again at its next sign-in."),
                               _("Forget"), url_for("security.index"))
        device.remembered_until = None
        device.revoked_at = utcnow()
        _notify(_("The device “%(name)s” is no longer remembered.", name=device.name), "device.forgotten")
        db.session.commit()
        flash(_("The device will ask for your second factor again."))
    return redirect(url_for("security.index"))
