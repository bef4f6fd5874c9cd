"""The admin console, /admin/: server-rendered pages over idp.admin.service (the same actions as the API and the
command line, checked against the same roles there).

Who gets in: a signed-out visitor is sent to sign in; a signed-in user without an admin role gets 404 (the console
is not advertised to strangers); an administrator whose sign-in is weaker than IDP_ADMIN_ACR steps up first (and
one without a second factor enrols one inside that sign-in); a destructive action also needs a sign-in within
IDP_STEP_UP_MAX_AGE, as the account's security page does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from functools import wraps
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_babel import gettext as _
from werkzeug.wrappers import Response

from idp.admin import bulk, service
from idp.admin.api import audit_lines
from idp.admin.forms import ClientForm, GrantRoleForm, NewUserForm, ProfileEditForm, SetPasswordForm, TypedConfirmForm
from idp.admin.service import Actor, AdminError, Invalid, Power
from idp.extensions import db
from idp.login.assurance import meets
from idp.login.browser import begin_transaction, current_session
from idp.login.forms import ConfirmForm
from idp.models import AuditEvent, Client, LoginSession, User, utcnow
from idp.models.user import normalize_email
from idp.oidc.registration import settings_of

bp = Blueprint("admin", __name__, url_prefix="/admin")

USER_FILTERS = ("verified", "locked", "disabled", "admin", "mfa", "deleted")
# What the overview charts and lists: sign-ins, failures and locks per day, and the last security events.
CHART_SERIES = (("login.success", "signins"), ("login.failure", "failures"), ("account.locked", "locks"))
SECURITY_EVENTS = ("login.failure", "account.locked", "mfa.reset", "user.disabled", "user.deleted",
                   "admin.role_granted", "admin.role_revoked", "admin.role_lapsed", "key.rotated",
                   "client.secret_rotated", "client.deleted", "password.reset", "factor.removed",
                   "user.tokens_revoked", "audit.exported", "audit.pruned")


def actor() -> Actor:
    return g.admin_actor


def console(power: Power | None = None, *, destructive: bool = False,
            back: Callable[..., str] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A console page: for a signed-in administrator at IDP_ADMIN_ACR holding ``power``; ``destructive`` also
    needs a recent sign-in. ``back`` gives the page a refused POST returns to once the sign-in is done (from the
    view's arguments), since the form must be sent again."""
    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            live = current_session()
            if live is None:
                return redirect(url_for("login.begin", next=request.full_path.rstrip("?")))
            who = service.person(live.user)
            if not who.roles:
                abort(404)
            if request.method == "GET":
                return_to = request.full_path.rstrip("?")
            else:
                return_to = back(**kwargs) if back is not None else url_for("admin.overview")
            level = current_app.config["IDP_ADMIN_ACR"]
            if not meets(live.acr, level):
                # A step-up inside the session (the planner asks for the factor, or has one enrolled).
                return begin_transaction(reasons=["acr"], return_to=return_to, user=live.user,
                                         login_hint=live.user.email, acr_values=[level],
                                         session_amr=list(live.amr))
            if power is not None and not service.can(who, power):
                abort(403)
            if destructive and (stale := _sign_in_again(live, return_to)) is not None:
                return stale
            g.admin_actor = who
            g.admin_session = live
            return view(*args, **kwargs)
        wrapped.admin_power = power  # type: ignore[attr-defined]  # read by the tests that walk the URL map
        wrapped.admin_destructive = destructive  # type: ignore[attr-defined]
        return wrapped
    return decorate


def _sign_in_again(live: LoginSession, return_to: str) -> Response | None:
    """A destructive action needs a sign-in within IDP_STEP_UP_MAX_AGE: else the administrator signs in again."""
    if utcnow() - live.auth_time <= timedelta(seconds=current_app.config["IDP_STEP_UP_MAX_AGE"]):
        return None
    return begin_transaction(reasons=["reauth"], return_to=return_to, user=live.user, login_hint=live.user.email,
                             reauth_purpose="admin_action")


@bp.app_context_processor
def _console_context() -> dict[str, Any]:
    who = g.get("admin_actor")
    return {"admin_can": (lambda power: service.can(who, Power[power])) if who is not None else (lambda power: False)}


def _refused(error: AdminError) -> None:
    db.session.rollback()
    flash(str(error), "error")


def _ok(form: Any) -> bool:
    return form.validate_on_submit()


# --- overview ---------------------------------------------------------------------------------------------------

def _count(query: Any) -> int:
    return db.session.execute(query).scalar_one()


def _chart(days: int = 30) -> dict[str, Any]:
    """Sign-ins, failures and locks per day over the last ``days`` days, and the SVG polylines that draw them."""
    today = utcnow().date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, time(), tzinfo=UTC)
    day = db.func.date(AuditEvent.at)
    rows = db.session.execute(
        db.select(AuditEvent.event, day, db.func.count()).where(
            AuditEvent.at >= since, AuditEvent.event.in_([event for event, _name in CHART_SERIES]))
        .group_by(AuditEvent.event, day)).all()
    counts = {(event, str(when)[:10]): number for event, when, number in rows}
    dates = [first + timedelta(days=offset) for offset in range(days)]
    series = {name: [counts.get((event, when.isoformat()), 0) for when in dates] for event, name in CHART_SERIES}
    top = max([1, *(value for values in series.values() for value in values)])
    width, height, pad = 600, 160, 4

    def points(values: list[int]) -> str:
        step = (width - 2 * pad) / max(1, days - 1)
        return " ".join(f"{pad + i * step:.1f},{height - pad - value * (height - 2 * pad) / top:.1f}"
                        for i, value in enumerate(values))
    return {"dates": dates, "series": series, "points": {name: points(values) for name, values in series.items()},
            "top": top, "width": width, "height": height,
            "totals": {name: sum(values) for name, values in series.items()}}


@bp.get("/")
@console()
def overview() -> str:
    """Counts, a chart of the last 30 days, and the last security events."""
    now = utcnow()
    stats: dict[str, int] = {}
    if service.can(actor(), Power.READ_USERS):
        alive = User.deleted_at.is_(None)
        stats = {
            "users": _count(db.select(db.func.count(User.id)).where(alive)),
            "verified": _count(db.select(db.func.count(User.id)).where(alive, User.email_verified_at.is_not(None))),
            "mfa": _count(db.select(db.func.count(User.id)).where(alive, service._has_mfa())),
            "locked": _count(db.select(db.func.count(User.id)).where(alive, User.locked_at.is_not(None))),
            "disabled": _count(db.select(db.func.count(User.id)).where(alive, User.disabled.is_(True))),
            "sessions": _count(db.select(db.func.count(LoginSession.id)).where(LoginSession.ended_at.is_(None))),
        }
    if service.can(actor(), Power.MANAGE_CLIENTS):
        stats["clients"] = _count(db.select(db.func.count(Client.id)))
    events: list[AuditEvent] = []
    chart = None
    if service.can(actor(), Power.READ_AUDIT):
        chart = _chart()
        events, _cursor = service.list_audit_events(actor(), service.AuditFilter(events=SECURITY_EVENTS), limit=10)
    return render_template("admin/overview.html", title=_("Overview"), stats=stats, chart=chart, events=events,
                           now=now)


# --- users ------------------------------------------------------------------------------------------------------

def _user_filters() -> dict[str, bool]:
    return {name: request.args[name] == "yes" for name in USER_FILTERS if request.args.get(name) in ("yes", "no")}


@bp.get("/users")
@console(Power.READ_USERS)
def users() -> str | tuple[str, int]:
    """Search and filter users, a page at a time (keyset pagination)."""
    q = request.args.get("q", "")[:320]
    try:
        rows, cursor = service.list_users(actor(), q=q, filters=_user_filters(), cursor=request.args.get("cursor"),
                                          limit=50)
    except Invalid as refused:
        flash(str(refused), "error")
        rows, cursor = [], None
    args: dict[str, Any] = {key: request.args[key] for key in ("q", *USER_FILTERS) if key in request.args}
    selected = _user_filters()
    export_args: dict[str, Any] = {"q": q, **{name: "yes" if on else "no" for name, on in selected.items()}}
    bulk_actions = [(name, label) for name, label in _bulk_texts().items()
                    if service.can(actor(), bulk.ACTIONS[name][1])]
    return render_template("admin/users.html", title=_("Users"), users=rows, mfa=service.with_mfa(rows), q=q,
                           filters=request.args, next_url=url_for("admin.users", **args, cursor=cursor)
                           if cursor else None, names=USER_FILTERS, selected=selected, export_args=export_args,
                           bulk_actions=bulk_actions, confirm=ConfirmForm())


@bp.route("/users/new", methods=["GET", "POST"])
@console(Power.CHANGE_USERS)
def new_user() -> Response | str | tuple[str, int]:
    """Create a user with an invitation mail or a typed password."""
    form = NewUserForm()
    if _ok(form):
        try:
            user = service.create_user(actor(), email=form.email.data, name=form.name.data or "",
                                       password=None if form.invite.data else (form.password.data or ""),
                                       email_verified=bool(form.email_verified.data), invite=bool(form.invite.data))
        except Invalid as refused:
            db.session.rollback()
            for name, message in refused.errors.items():
                field = getattr(form, "invite" if name == "invite" else name, None)
                if field is not None:
                    form.add_error(field, message)
            return render_template("admin/user_new.html", title=_("New user"), form=form), 400
        except AdminError as refused:
            _refused(refused)
            return render_template("admin/user_new.html", title=_("New user"), form=form), 409
        flash(_("Created %(email)s.", email=user.email) + " " +
              (_("An invitation was mailed.") if form.invite.data else ""))
        return redirect(url_for("admin.user", user_id=user.id))
    return render_template("admin/user_new.html", title=_("New user"), form=form), 400 if form.errors else 200


def _user(user_id: int) -> User:
    try:
        return service.get_user(actor(), user_id)
    except service.NotFound:
        abort(404)


@bp.get("/users/<int:user_id>")
@console(Power.READ_USERS)
def user(user_id: int) -> str:
    """One user: profile, status, roles, factors, devices, sessions, applications, events."""
    target = _user(user_id)
    return _user_page(target)


def _user_page(target: User, profile: ProfileEditForm | None = None, status: int = 200,
               password: SetPasswordForm | None = None) -> Any:
    if profile is None:
        profile = ProfileEditForm(formdata=None, name=target.name, email=target.email, phone=target.phone or "",
                                  email_verified=target.email_verified)
    events: list[AuditEvent] = []
    if service.can(actor(), Power.READ_AUDIT):
        events, _cursor = service.list_audit_events(actor(), service.AuditFilter(user_id=target.id), limit=20)
    sessions_page, _next = service.list_sessions(actor(), user=target, limit=50)
    return render_template(
        "admin/user.html", title=target.email, target=target, profile=profile, confirm=ConfirmForm(),
        password=password or SetPasswordForm(formdata=None),
        grant=GrantRoleForm(formdata=None), roles=service.roles_of(target), grants=target.roles,
        factors=service.list_factors(actor(), target), devices=service.list_devices(actor(), target),
        sessions=sessions_page, apps=service.list_consents(actor(), target), events=events,
        has_mfa=bool(service.with_mfa([target])), now=utcnow()), status


def _back_to_user(user_id: int, **_ignored: Any) -> str:
    return url_for("admin.user", user_id=user_id)


@bp.post("/users/<int:user_id>/profile")
@console(Power.CHANGE_USERS, destructive=True, back=_back_to_user)  # a new address takes password resets
def edit_profile(user_id: int) -> Any:
    """Change name, email, phone and the verified flag."""
    target = _user(user_id)
    form = ProfileEditForm()
    if not _ok(form):
        return _user_page(target, form, 400)
    try:
        service.update_user(actor(), target, {"name": form.name.data, "email": form.email.data,
                                              "phone": form.phone.data or None,
                                              "email_verified": bool(form.email_verified.data)})
    except Invalid as refused:
        db.session.rollback()
        db.session.refresh(target)
        for name, message in refused.errors.items():
            if hasattr(form, name):
                form.add_error(getattr(form, name), message)
        return _user_page(target, form, 400)
    except AdminError as refused:
        _refused(refused)
        return redirect(url_for("admin.user", user_id=user_id))
    flash(_("Profile saved."))
    return redirect(url_for("admin.user", user_id=user_id))


@bp.post("/users/<int:user_id>/password")
@console(Power.CHANGE_USERS, destructive=True, back=_back_to_user)
def set_password(user_id: int) -> Any:
    """Set a user's password: they are signed out everywhere and mailed."""
    target = _user(user_id)
    form = SetPasswordForm()
    if not _ok(form):
        return _user_page(target, status=400, password=form)
    try:
        service.set_password(actor(), target, form.password.data)
    except Invalid as refused:
        db.session.rollback()
        form.add_error(form.password, refused.errors.get("password", str(refused)))
        return _user_page(target, status=400, password=form)
    flash(_("Password set; the user was signed out everywhere and mailed."))
    return redirect(url_for("admin.user", user_id=user_id))


# action -> (what it runs, whether it is destructive: a recent sign-in and a confirmation page)
USER_ACTIONS: dict[str, tuple[Callable[[Actor, User], Any], bool]] = {
    "disable": (service.disable, True),
    "enable": (service.enable, False),
    "unlock": (service.unlock, False),
    "require-mfa": (lambda who, target: service.require_mfa(who, target, True), False),
    "stop-requiring-mfa": (lambda who, target: service.require_mfa(who, target, False), True),
    "reset-mfa": (service.reset_mfa, True),
    "revoke-tokens": (service.revoke_tokens, True),
    "end-sessions": (service.end_sessions, False),
    "send-password-reset": (service.send_password_reset, False),
    "send-verification": (service.send_verification, False),
    "delete": (service.delete_user, True),
    "restore": (service.restore_user, False),
}


def _action_texts() -> dict[str, tuple[str, str, str]]:
    """Per action: the notice once done, and for destructive ones the question and what stops working."""
    return {
        "disable": (_("Disabled: their sessions ended and their tokens were revoked."), _("Disable this user?"),
                    _("Every session of theirs ends and every token stops working; they cannot sign in until "
                      "enabled again.")),
        "enable": (_("Enabled."), "", ""),
        "unlock": (_("Unlocked."), "", ""),
        "require-mfa": (_("A second factor is now required at every sign-in."), "", ""),
        "stop-requiring-mfa": (_("A second factor is no longer required."), _("Stop requiring a second factor?"),
                               _("This user may then sign in with a password alone, unless an application "
                                 "demands more.")),
        "reset-mfa": (_("Second factors removed; the user was mailed."), _("Reset this user's MFA?"),
                      _("Every factor, recovery code and remembered device is removed, their sessions end and "
                        "their tokens stop working.")),
        "revoke-tokens": (_("Every session ended and every token was revoked."), _("Revoke every token?"),
                          _("Every application signed in as this user stops working until they sign in again.")),
        "end-sessions": (_("Their sessions ended."), "", ""),
        "send-password-reset": (_("A password reset mail is on its way."), "", ""),
        "send-verification": (_("A verification mail is on its way."), "", ""),
        "delete": (_("Deleted. The user can be restored until the grace period ends."), _("Delete this user?"),
                   _("They are disabled and hidden at once, signed out everywhere, and removed for good after "
                     "%(days)s days unless restored.", days=current_app.config["IDP_DELETE_GRACE_DAYS"])),
        "restore": (_("Restored."), "", ""),
    }


def _confirm(question: str, consequence: str, button: str, back: str, typed: str | None = None,
             form: TypedConfirmForm | None = None, status: int = 200) -> tuple[str, int]:
    """The confirmation page of the destructive action posted to this address (a typed word when ``typed``)."""
    return render_template("admin/confirm.html", title=question, question=question, consequence=consequence,
                           button=button, back=back, typed=typed, form=form or TypedConfirmForm(formdata=None),
                           confirm=ConfirmForm(), action=request.path), status


@bp.post("/users/<int:user_id>/actions/<name>")
@console(Power.READ_USERS, back=_back_to_user)
def user_action(user_id: int, name: str) -> Any:
    """A status action (the service checks the power each needs)."""
    if name not in USER_ACTIONS:
        abort(404)
    if USER_ACTIONS[name][1] and (stale := _sign_in_again(g.admin_session, _back_to_user(user_id))) is not None:
        return stale  # disable, reset MFA, revoke tokens, delete: destructive
    target = _user(user_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    run, destructive = USER_ACTIONS[name]
    done, question, consequence = _action_texts()[name]
    back = url_for("admin.user", user_id=user_id)
    if destructive and request.form.get("confirm") != "yes":
        return _confirm(question, consequence, question.rstrip("?"), back)
    try:
        run(actor(), target)
    except AdminError as refused:
        _refused(refused)
    else:
        flash(done)
    return redirect(url_for("admin.users") if name == "delete" else back)


@bp.post("/users/<int:user_id>/roles")
@console(Power.MANAGE_ADMINS, destructive=True, back=_back_to_user)
def grant_role(user_id: int) -> Any:
    """Grant an admin role, for good or until a day."""
    target = _user(user_id)
    form = GrantRoleForm()
    if not _ok(form):
        flash(_("Choose a role, and a day in the future or none."), "error")
        return redirect(url_for("admin.user", user_id=user_id))
    until = datetime.combine(form.until.data, time(), tzinfo=UTC) if form.until.data else None
    try:
        service.grant_role(actor(), target, form.role.data, until)
    except AdminError as refused:
        _refused(refused)
    else:
        flash(_("Role granted."))
    return redirect(url_for("admin.user", user_id=user_id))


@bp.post("/users/<int:user_id>/roles/<role>/remove")
@console(Power.MANAGE_ADMINS, destructive=True, back=_back_to_user)
def revoke_role(user_id: int, role: str) -> Any:
    """Take an admin role away."""
    target = _user(user_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        service.revoke_role(actor(), target, role)
    except AdminError as refused:
        _refused(refused)
    else:
        flash(_("Role removed."))
    return redirect(url_for("admin.user", user_id=user_id))


def _user_item_action(user_id: int, run: Callable[[User], Any], done: str, question: str,
                      consequence: str) -> Any:
    target = _user(user_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    back = url_for("admin.user", user_id=user_id)
    if request.form.get("confirm") != "yes":
        return _confirm(question, consequence, question.rstrip("?"), back)
    try:
        run(target)
    except AdminError as refused:
        _refused(refused)
    else:
        flash(done)
    return redirect(back)


@bp.post("/users/<int:user_id>/factors/<int:factor_id>/remove")
@console(Power.SUPPORT_USERS, destructive=True, back=_back_to_user)
def remove_factor(user_id: int, factor_id: int) -> Any:
    """Remove one sign-in factor (the user is mailed)."""
    return _user_item_action(user_id, lambda target: service.remove_factor(actor(), target, factor_id),
                             _("Factor removed; the user was mailed."), _("Remove this sign-in method?"),
                             _("The user can no longer sign in with it."))


@bp.post("/users/<int:user_id>/devices/<int:device_id>/forget")
@console(Power.SUPPORT_USERS, destructive=True, back=_back_to_user)
def forget_device(user_id: int, device_id: int) -> Any:
    """Forget a remembered device (its next sign-in asks for the second factor)."""
    return _user_item_action(user_id, lambda target: service.forget_device(actor(), target, device_id),
                             _("Device forgotten."), _("Forget this device?"),
                             _("Its next sign-in asks for the second factor again."))


@bp.post("/users/<int:user_id>/apps/<client_id>/revoke")
@console(Power.CHANGE_USERS, destructive=True, back=_back_to_user)
def revoke_app(user_id: int, client_id: str) -> Any:
    """Withdraw an application's access to the user."""
    return _user_item_action(user_id, lambda target: service.revoke_consent(actor(), target, client_id),
                             _("Access removed; the application's tokens were revoked."),
                             _("Remove this application's access?"),
                             _("Its tokens for this user stop working and it must ask for consent again."))


@bp.post("/users/<int:user_id>/sessions/<sid>/end")
@console(Power.END_SESSIONS, back=_back_to_user)
def end_user_session(user_id: int, sid: str) -> Any:
    """End one of the user's sessions."""
    _user(user_id)
    if ConfirmForm().validate_on_submit():
        try:
            service.end_session(actor(), sid)
        except AdminError as refused:
            _refused(refused)
        else:
            flash(_("Session ended."))
    return redirect(url_for("admin.user", user_id=user_id))


# --- many users at once -----------------------------------------------------------------------------------------

def _selection_args(source: Any) -> tuple[str, dict[str, bool]]:
    """The search and filters of a users list (from its query, or from the hidden fields of a bulk form)."""
    q = (source.get("q") or "")[:320]
    return q, {name: source[name] == "yes" for name in USER_FILTERS if source.get(name) in ("yes", "no")}


def _users_url(q: str, filters: dict[str, bool]) -> str:
    args: dict[str, Any] = {name: "yes" if on else "no" for name, on in filters.items()}
    return url_for("admin.users", q=q, **args)


def _bulk_texts() -> dict[str, str]:
    return {"disable": _("Disable"), "enable": _("Enable"), "reset-mfa": _("Reset MFA"),
            "end-sessions": _("End every session"), "delete": _("Delete")}


@bp.post("/users/bulk")
@console(Power.READ_USERS, back=lambda **_ignored: url_for("admin.users"))
def bulk_preview() -> Any:
    """The dry run of a bulk action on the users list's selection: who would change, who would be skipped."""
    if not ConfirmForm().validate_on_submit():
        abort(400)
    q, filters = _selection_args(request.form)
    action = request.form.get("action", "")
    try:
        dry = bulk.preview(actor(), action, q, filters)
    except AdminError as refused:
        _refused(refused)
        return redirect(_users_url(q, filters))
    return render_template("admin/bulk_preview.html", title=_("Dry run"), dry=dry, q=q, filters=filters,
                           action_label=_bulk_texts()[action], destructive=bulk.ACTIONS[action][2],
                           back=_users_url(q, filters),
                           confirm=ConfirmForm(), form=TypedConfirmForm(formdata=None))


@bp.post("/users/bulk/run")
@console(Power.READ_USERS, back=lambda **_ignored: url_for("admin.users"))
def bulk_run() -> Any:
    """Run a bulk action on the selection its dry run showed (typed count for a deletion)."""
    if not ConfirmForm().validate_on_submit():
        abort(400)
    q, filters = _selection_args(request.form)
    action = request.form.get("action", "")
    back = _users_url(q, filters)
    if action not in bulk.ACTIONS:
        abort(400)
    if bulk.ACTIONS[action][2] and (stale := _sign_in_again(g.admin_session, back)) is not None:
        return stale
    expected = request.form.get("expected", "")
    if not (expected.isascii() and expected.isdigit()):
        abort(400)
    if action == "delete" and request.form.get("typed", "").strip() != expected:
        flash(_("Type the number of users to delete them."), "error")
        return redirect(back)
    try:
        job = bulk.start(actor(), action, q, filters, int(expected[:9]))
    except AdminError as refused:
        _refused(refused)
        return redirect(back)
    return redirect(url_for("admin.bulk_job", job_id=job.id))


@bp.get("/jobs/<int:job_id>")
@console(Power.READ_USERS)
def bulk_job(job_id: int) -> str:
    """A bulk action's progress and each user's result."""
    try:
        job = bulk.get_job(actor(), job_id)
    except service.NotFound:
        abort(404)
    ids = list(job.user_ids)[:1000]
    emails: dict[int, str] = {}
    if ids:
        emails = {row.id: row.email for row in db.session.execute(db.select(User.id, User.email)
                                                                  .where(User.id.in_(ids)))}
    rows = [(user_id, emails.get(user_id, ""), job.results.get(str(user_id))) for user_id in ids]
    done = sum(1 for outcome in job.results.values() if outcome == "done")
    return render_template("admin/bulk_job.html", title=_("Bulk action"), job=job, rows=rows, done=done,
                           action_label=_bulk_texts().get(job.action, job.action))


@bp.get("/users/export")
@console(Power.READ_USERS)
def users_export() -> Response:
    """The users list's selection as CSV or JSON lines (no secret; the export is audited)."""
    fmt = request.args.get("format", "csv")
    q, filters = _selection_args(request.args)
    try:
        lines = bulk.export_users(actor(), q, filters, fmt)
    except Invalid:
        abort(400)
    response = Response(stream_with_context(lines), mimetype="text/csv" if fmt == "csv" else "application/jsonl")
    response.headers["Content-Disposition"] = f'attachment; filename="users.{fmt}"'
    return response


@bp.route("/users/import", methods=["GET", "POST"])
@console(Power.CHANGE_USERS)
def users_import() -> Any:
    """Create users from a JSON lines file (the export's format), each with an invitation mail or none."""
    form = ConfirmForm()
    results = None
    status = 200
    if request.method == "POST":
        upload = request.files.get("file")
        if not form.validate_on_submit() or upload is None or not upload.filename:
            flash(_("Choose a JSON lines file to import."), "error")
            status = 400
        else:
            results = bulk.import_users(actor(), iter(upload.stream), invite=request.form.get("invite") == "y")
    return render_template("admin/users_import.html", title=_("Import users"), form=form, results=results,
                           limit=bulk.MAX_IMPORT_LINES), status


# --- sessions ---------------------------------------------------------------------------------------------------

@bp.get("/sessions")
@console(Power.READ_USERS)
def sessions() -> str:
    """Every live session, or one user's (by email)."""
    email = request.args.get("user", "")[:320].strip()
    owner = None
    rows: list[LoginSession] = []
    cursor = None
    try:
        if email:
            owner = service.user_by_email(actor(), email)
        rows, cursor = service.list_sessions(actor(), user=owner, cursor=request.args.get("cursor"), limit=50)
    except AdminError as refused:
        flash(str(refused), "error")
    args: dict[str, Any] = {"user": email} if email else {}
    return render_template("admin/sessions.html", title=_("Sessions"), sessions=rows, email=email,
                           confirm=ConfirmForm(),
                           next_url=url_for("admin.sessions", **args, cursor=cursor) if cursor else None)


@bp.post("/sessions/<sid>/end")
@console(Power.END_SESSIONS, back=lambda **_ignored: url_for("admin.sessions"))
def end_session(sid: str) -> Response:
    """End a live session."""
    if ConfirmForm().validate_on_submit():
        try:
            service.end_session(actor(), sid)
        except AdminError as refused:
            _refused(refused)
        else:
            flash(_("Session ended."))
    return redirect(url_for("admin.sessions"))


# --- clients ----------------------------------------------------------------------------------------------------

@bp.get("/clients")
@console(Power.MANAGE_CLIENTS)
def clients() -> str:
    """Every registered client."""
    return render_template("admin/clients.html", title=_("Clients"), clients=service.list_clients(actor()))


def _client(client_id: str) -> Client:
    try:
        return service.get_client(actor(), client_id)
    except service.NotFound:
        abort(404)


def _client_settings(form: ClientForm) -> dict[str, Any] | None:
    """The form's settings, with its JWK Set parsed (None, with the error on the field, when it is no JSON)."""
    settings = form.settings()
    text = (form.jwks.data or "").strip()
    try:
        settings["jwks"] = json.loads(text) if text else None
    except ValueError:
        form.add_error(form.jwks, _("This is not JSON."))
        return None
    if settings["jwks"] is not None and not isinstance(settings["jwks"], dict):
        form.add_error(form.jwks, _("A JWK Set is a JSON object with \"keys\"."))
        return None
    return settings


def _client_form_page(form: ClientForm, client: Client | None, status: int = 200,
                      error: str = "") -> tuple[str, int]:
    title = _("Edit %(name)s", name=client.name) if client is not None else _("New client")
    return render_template("admin/client_form.html", title=title, form=form, client=client, error=error,
                           confirm=ConfirmForm()), status


@bp.route("/clients/new", methods=["GET", "POST"])
@console(Power.MANAGE_CLIENTS)
def new_client() -> Any:
    """Register a client; its secret is shown once."""
    form = ClientForm()
    if not _ok(form):
        return _client_form_page(form, None, 400 if form.errors else 200)
    settings = _client_settings(form)
    if settings is None:
        return _client_form_page(form, None, 400)
    try:
        client, secret = service.create_client(actor(), **settings)
    except Invalid as refused:
        return _client_form_page(form, None, 400, refused.errors.get("client", str(refused)))
    return _secret_page(client, secret, created=True)


def _secret_page(client: Client, secret: str | None, created: bool) -> str:
    return render_template("admin/client_secret.html", title=client.name, client=client, secret=secret,
                           created=created)


@bp.route("/clients/<client_id>", methods=["GET", "POST"])
@console(Power.MANAGE_CLIENTS)
def client(client_id: str) -> Any:
    """A client's settings, to edit."""
    row = _client(client_id)
    if request.method == "GET":
        current = settings_of(row)
        shown = {**current, "redirect_uris": "\n".join(current["redirect_uris"]),
                 "post_logout_redirect_uris": "\n".join(current["post_logout_redirect_uris"]),
                 "grant_types": "\n".join(current["grant_types"]), "scopes": " ".join(current["scopes"]),
                 "auth_method": current["auth_method"] or "", "logo_uri": current["logo_uri"] or "",
                 "jwks": json.dumps(current["jwks"], indent=2) if current["jwks"] else "",
                 "jwks_uri": current["jwks_uri"] or "", "request_uris": "\n".join(current["request_uris"]),
                 "token_exchange_actors": "\n".join(current["token_exchange_actors"]),
                 "request_object_signing_alg": current["request_object_signing_alg"] or "",
                 "application_type": current["application_type"] or ""}
        return _client_form_page(ClientForm(formdata=None, **shown), row)
    form = ClientForm()
    if not _ok(form):
        return _client_form_page(form, row, 400)
    settings = _client_settings(form)
    if settings is None:
        return _client_form_page(form, row, 400)
    settings.pop("public")  # fixed at creation (a client does not gain or lose its secret)
    try:
        service.update_client(actor(), row, settings)
    except Invalid as refused:
        db.session.refresh(row)
        return _client_form_page(form, row, 400, refused.errors.get("client", str(refused)))
    flash(_("Client saved."))
    return redirect(url_for("admin.client", client_id=client_id))


@bp.post("/clients/<client_id>/rotate-secret")
@console(Power.MANAGE_CLIENTS, destructive=True, back=lambda client_id: url_for("admin.client", client_id=client_id))
def rotate_secret(client_id: str) -> Any:
    """A new secret, shown once; the old one stops working at once."""
    row = _client(client_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    if request.form.get("confirm") != "yes":
        return _confirm(_("Rotate the secret of %(name)s?", name=row.name),
                        _("The current secret stops working at once: the application fails until it is given the "
                          "new one."), _("Rotate the secret"), url_for("admin.client", client_id=client_id))
    try:
        secret = service.rotate_client_secret(actor(), row)
    except AdminError as refused:
        _refused(refused)
        return redirect(url_for("admin.client", client_id=client_id))
    return _secret_page(row, secret, created=False)


@bp.post("/clients/<client_id>/delete")
@console(Power.MANAGE_CLIENTS, destructive=True, back=lambda client_id: url_for("admin.client", client_id=client_id))
def delete_client(client_id: str) -> Any:
    """Delete a client, after the administrator types its name."""
    row = _client(client_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    question = _("Delete %(name)s?", name=row.name)
    consequence = _("Every token it holds stops working, its users can no longer sign in to it, and its settings "
                    "are gone for good.")
    back = url_for("admin.client", client_id=client_id)
    if request.form.get("confirm") != "yes":
        return _confirm(question, consequence, _("Delete the client"), back, typed=row.name)
    form = TypedConfirmForm()
    if not form.validate_on_submit() or form.typed.data.strip() != row.name:
        form.add_error(form.typed, _("Type the client's name exactly as shown."))
        return _confirm(question, consequence, _("Delete the client"), back, typed=row.name, form=form, status=400)
    revoked = service.delete_client(actor(), row)
    flash(_("Client deleted; %(count)s tokens were revoked.", count=revoked))
    return redirect(url_for("admin.clients"))


# --- keys -------------------------------------------------------------------------------------------------------

def key_state(row: Any, now: datetime) -> str:
    if row.retired_at is None:
        return "signing"
    return "retired" if row.publish_until and row.publish_until > now else "expired"


@bp.get("/keys")
@console(Power.MANAGE_KEYS)
def keys() -> str:
    """The signing keys and their state."""
    now = utcnow()
    rows = service.list_keys(actor())
    return render_template("admin/keys.html", title=_("Signing keys"), keys=[(row, key_state(row, now))
                                                                            for row in rows],
                           confirm=ConfirmForm())


ROTATE_WORD = "ROTATE"


@bp.post("/keys/rotate")
@console(Power.MANAGE_KEYS, destructive=True, back=lambda **_ignored: url_for("admin.keys"))
def rotate_keys() -> Any:
    """New signing keys, after the administrator types ROTATE."""
    if not ConfirmForm().validate_on_submit():
        abort(400)
    question = _("Rotate the signing keys?")
    consequence = _("New tokens are signed with new keys; the current keys stay published until the tokens they "
                    "signed expire. Clients that cache the key set must fetch it again.")
    back = url_for("admin.keys")
    if request.form.get("confirm") != "yes":
        return _confirm(question, consequence, _("Rotate the keys"), back, typed=ROTATE_WORD)
    form = TypedConfirmForm()
    if not form.validate_on_submit() or form.typed.data.strip() != ROTATE_WORD:
        form.add_error(form.typed, _("Type %(word)s to confirm.", word=ROTATE_WORD))
        return _confirm(question, consequence, _("Rotate the keys"), back, typed=ROTATE_WORD, form=form, status=400)
    fresh = service.rotate_keys(actor())
    flash(_("New signing keys: %(kids)s.", kids=", ".join(row.kid for row in fresh)))
    return redirect(url_for("admin.keys"))


# --- the audit log ----------------------------------------------------------------------------------------------

AUDIT_FILTERS = ("event", "user", "client_id", "ip", "since", "until")  # the audit page's query (and its exports')


def _day(name: str, end: bool = False) -> datetime | None:
    value = request.args.get(name, "")
    if not value:
        return None
    try:
        day = datetime.strptime(value[:10], "%Y-%m-%d").date()
        return datetime.combine(day + timedelta(days=1) if end else day, time(), tzinfo=UTC)
    except (ValueError, OverflowError):  # not a date, or the last day there is
        raise Invalid({name: _("a date, like 2026-12-05")}) from None


def _audit_filter() -> service.AuditFilter:
    user_text = request.args.get("user", "").strip()[:320]
    user_id = None
    if user_text:
        if user_text.isascii() and user_text.isdigit():
            user_id = int(user_text[:12])
        else:  # an auditor may not look users up, but may filter the log by an address it shows
            found = db.session.execute(db.select(User.id).where(User.email == normalize_email(user_text))).scalar()
            user_id = found if found is not None else service.MAX_ID + 1  # nobody: no events, not every event
    return service.AuditFilter(event=request.args.get("event") or None, user_id=user_id,
                               client_id=request.args.get("client_id") or None, ip=request.args.get("ip") or None,
                               since=_day("since"), until=_day("until", end=True))


@bp.get("/audit")
@console(Power.READ_AUDIT)
def audit_log() -> str | tuple[str, int]:
    """The audit log, filtered, newest first, each row's details expandable; export of the filtered view."""
    rows: list[AuditEvent] = []
    cursor = None
    status = 200
    try:
        where = _audit_filter()
        rows, cursor = service.list_audit_events(actor(), where, cursor=request.args.get("cursor"), limit=50)
    except Invalid as refused:
        flash(str(refused), "error")
        status = 400
    args: dict[str, Any] = {key: request.args[key] for key in AUDIT_FILTERS if request.args.get(key)}
    return render_template("admin/audit.html", title=_("Audit log"), rows=rows, filters=request.args,
                           export_csv=url_for("admin.audit_export", **args, format="csv"),
                           export_jsonl=url_for("admin.audit_export", **args, format="jsonl"),
                           next_url=url_for("admin.audit_log", **args, cursor=cursor) if cursor else None), status


@bp.get("/audit/verify")
@console(Power.READ_AUDIT)
def audit_verify() -> str:
    """Walk the hash chain and the signed checkpoints (as `idp audit verify` does) and say where it breaks."""
    report = service.verify_audit(actor())
    return render_template("admin/audit_verify.html", title=_("Audit log integrity"), report=report,
                           confirm=ConfirmForm())


@bp.post("/audit/checkpoint")
@console(Power.READ_AUDIT, back=lambda **_ignored: url_for("admin.audit_verify"))
def audit_checkpoint() -> Response:
    """Sign the end of the chain now (as `idp audit checkpoint`)."""
    if not ConfirmForm().validate_on_submit():
        abort(400)
    if service.checkpoint_audit(actor()) is None:
        flash(_("The audit log is empty: nothing to sign yet."), "error")
    else:
        flash(_("Checkpoint signed."))
    return redirect(url_for("admin.audit_verify"))


@bp.get("/audit/export")
@console(Power.READ_AUDIT)
def audit_export() -> Response:
    """The filtered audit log as CSV or JSON lines (the export is audited)."""
    fmt = request.args.get("format", "csv")
    if fmt not in ("csv", "jsonl"):
        abort(400)
    try:
        where = _audit_filter()
    except Invalid:
        abort(400)
    rows = service.export_audit_events(actor(), where, fmt)
    response = Response(stream_with_context(audit_lines(rows, fmt)),
                        mimetype="text/csv" if fmt == "csv" else "application/jsonl")
    response.headers["Content-Disposition"] = f'attachment; filename="audit-events.{fmt}"'
    return response

