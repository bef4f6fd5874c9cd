"""Self-service sign-in methods: authenticator apps, phones, security keys and passkeys, recovery codes and
remembered devices. Every change needs a recent authentication, is audited and is mailed (SECURITY.md 27)."""

from __future__ import annotations

from datetime import timedelta
from functools import wraps

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, session, url_for

from idp.extensions import db, limiter
from idp.login import devices, enrolment, mfa
from idp.login.browser import current_session, login_required
from idp.login.codes import SmsRefused, mask_phone, normalize_phone, send_sms_code
from idp.login.forms import CodeForm, ConfirmForm, NameForm, PhoneForm, TotpEnrolForm
from idp.login.onetime import CodeRejected, check_code
from idp.login.views import begin_transaction
from idp.models import Device, Factor, utcnow
from idp.security import webauthn as wa

bp = Blueprint("security", __name__, url_prefix="/account/security")


def recent_auth_required(view=None, *, after_post: str = "security.index"):
    """Changes need a sign-in within IDP_STEP_UP_MAX_AGE; otherwise the user signs in again (every factor) and
    comes back to the page (after a POST: to the ``after_post`` endpoint, since the form must be sent again)."""
    if view is None:
        return lambda inner: recent_auth_required(inner, after_post=after_post)

    @wraps(view)
    def wrapped(*args, **kwargs):
        live = current_session()
        max_age = current_app.config["IDP_STEP_UP_MAX_AGE"]
        if utcnow() - live.auth_time > timedelta(seconds=max_age):
            back = request.full_path.rstrip("?") if request.method == "GET" else url_for(after_post)
            return begin_transaction(reasons=["reauth"], return_to=back, user=live.user,
                                     context={"login_hint": live.user.email})
        return view(*args, **kwargs)
    return wrapped


def _factor(factor_id: int) -> Factor:
    factor = db.session.get(Factor, factor_id)
    if factor is None or factor.user_id != current_session().user_id:
        from flask import abort

        abort(404)
    return factor


def _notify(what: str, event: str, **details) -> None:
    enrolment.notify_change(current_session().user, what, event=event, **details)


@bp.get("")
@login_required
def index():
    """Your sign-in methods and remembered devices."""
    user = current_session().user
    factors = mfa.confirmed_factors(user)
    return render_template("account/security.html", user=user, confirm=ConfirmForm(), rename=NameForm(),
                           totps=[f for f in factors if f.kind == "totp"],
                           phones=[(f, mask_phone(f.phone or "")) for f in factors if f.kind == "sms"],
                           keys=[f for f in factors if f.kind == "webauthn"],
                           recovery_left=mfa.unused_recovery_codes(user), devices=devices.remembered_devices(user),
                           sms_enabled=current_app.config["IDP_SMS_BACKEND"] != "disabled", now=utcnow())


@bp.route("/totp/new", methods=["GET", "POST"])
@login_required
@recent_auth_required
def add_totp():
    """Add an authenticator app: scan, then confirm with its first code."""
    user = current_session().user
    factor = db.session.get(Factor, session.get("enrol_totp") or 0)
    if factor is None or factor.user_id != user.id or factor.confirmed_at is not None:
        factor = enrolment.start_totp(user, utcnow())
        db.session.commit()
        session["enrol_totp"] = factor.id
    form = TotpEnrolForm()
    if form.validate_on_submit():
        if enrolment.confirm_totp(factor, form.code.data, utcnow()):
            session.pop("enrol_totp", None)
            _notify("An authenticator app was added to your account.", "factor.added", kind="totp")
            db.session.commit()
            flash("Authenticator app added.")
            return redirect(url_for("security.index"))
        form.code.errors = [*form.code.errors, "That code is not right. Try the newest code from the app."]
    return render_template("account/totp_new.html", form=form, **enrolment.totp_display(factor, user))


@bp.route("/phone/new", methods=["GET", "POST"])
@login_required
@recent_auth_required
@limiter.limit(lambda: current_app.config["IDP_RATELIMIT_FORMS"], methods=["POST"])
def add_phone():
    """Add a phone for SMS codes: the number is verified by a code before it counts."""
    live = current_session()
    form = PhoneForm()
    if form.validate_on_submit():
        phone = normalize_phone(form.phone.data)
        if phone is None:
            form.phone.errors = [*form.phone.errors, "Enter a valid number with its country code, like +44…"]
        else:
            try:
                send_sms_code(live.user, phone, lambda code: f"{code} is your code to add this phone to idp.",
                              purpose="phone_verify", ttl=current_app.config["IDP_SMS_CODE_TTL"],
                              transaction_id=f"phone:{live.sid}", ip=g.client_ip)
            except SmsRefused as refused:
                form.phone.errors = [*form.phone.errors, str(refused)]
            else:
                db.session.commit()
                session["enrol_phone"] = phone
                return redirect(url_for("security.verify_phone"))
    return render_template("account/phone_new.html", form=form)


@bp.route("/phone/verify", methods=["GET", "POST"])
@login_required
@recent_auth_required
def verify_phone():
    """Type the code texted to the new number."""
    live = current_session()
    phone = session.get("enrol_phone")
    if not phone:
        return redirect(url_for("security.add_phone"))
    form = CodeForm()
    if form.validate_on_submit():
        try:
            row = check_code("phone_verify", f"phone:{live.sid}", form.code.data, now=utcnow(),
                             secret_key=current_app.config["IDP_SECRET_KEY"],
                             max_attempts=current_app.config["IDP_CODE_MAX_ATTEMPTS"])
            if row.email != phone:
                raise CodeRejected("That code was for another number. Send a new one.")
        except CodeRejected as rejected:
            db.session.commit()
            form.code.errors = [*form.code.errors, str(rejected)]
        else:
            now = utcnow()
            db.session.add(Factor(user_id=live.user_id, kind="sms", name=f"Phone {mask_phone(phone)}", phone=phone,
                                  created_at=now, confirmed_at=now))
            session.pop("enrol_phone", None)
            _notify(f"The phone number {mask_phone(phone)} was added for sign-in codes.", "factor.added", kind="sms")
            db.session.commit()
            flash("Phone added. Text messages are the weakest second factor: add an authenticator app or a "
                  "security key too.")
            return redirect(url_for("security.index"))
    return render_template("account/phone_verify.html", form=form, phone=mask_phone(phone))


@bp.route("/webauthn/new", methods=["GET", "POST"])
@login_required
@recent_auth_required
def add_webauthn():
    """Register a security key or a passkey."""
    user = current_session().user
    form = NameForm()
    if request.method == "POST" and form.validate_on_submit():
        challenge = session.pop("webauthn_reg", None)
        try:
            factor, _ = enrolment.add_webauthn(user, request.form.get("credential", "")[:20000], challenge or "",
                                               utcnow(), name=form.name.data.strip())
        except wa.WebAuthnFailed:
            db.session.rollback()
            flash("The security key or passkey could not be registered. Try again.")
            return redirect(url_for("security.add_webauthn"))
        _notify(f"The {factor.name} was added to your account.", "factor.added", kind="webauthn")
        db.session.commit()
        flash(f"{factor.name} added.")
        return redirect(url_for("security.index"))
    challenge = wa.new_challenge()
    session["webauthn_reg"] = challenge
    passkey = request.args.get("type", "passkey") == "passkey"
    return render_template("account/webauthn_new.html", form=form, passkey=passkey,
                           registration=enrolment.registration_options(user, challenge, passkey=passkey))


@bp.post("/factors/<int:factor_id>/rename")
@login_required
@recent_auth_required
def rename_factor(factor_id: int):
    """Rename a factor."""
    factor = _factor(factor_id)
    form = NameForm()
    if form.validate_on_submit():
        old, factor.name = factor.name, form.name.data.strip()
        _notify(f"Your sign-in method “{old}” was renamed to “{factor.name}”.", "factor.renamed", kind=factor.kind)
        db.session.commit()
    return redirect(url_for("security.index"))


@bp.post("/factors/<int:factor_id>/remove")
@login_required
@recent_auth_required
def remove_factor(factor_id: int):
    """Remove a factor."""
    factor = _factor(factor_id)
    if ConfirmForm().validate_on_submit():
        name, kind = factor.name, factor.kind
        db.session.delete(factor)
        _notify(f"The sign-in method “{name}” was removed from your account.", "factor.removed", kind=kind)
        db.session.commit()
        flash(f"{name} removed.")
    return redirect(url_for("security.index"))


@bp.post("/recovery-codes")
@login_required
@recent_auth_required
def recovery_codes():
    """Generate ten new recovery codes (the old ones stop working); shown once."""
    if not ConfirmForm().validate_on_submit():
        return redirect(url_for("security.index"))
    user = current_session().user
    codes = enrolment.new_recovery_codes_for(user, utcnow())
    _notify("New recovery codes were generated; the old ones no longer work.", "recovery_codes.generated")
    db.session.commit()
    response = current_app.make_response(render_template("account/recovery_codes.html", codes=codes))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/devices/<int:device_id>/forget")
@login_required
@recent_auth_required
def forget_device(device_id: int):
    """Stop remembering a device: it will ask for the second factor again."""
    device = db.session.get(Device, device_id)
    live = current_session()
    if device is not None and device.user_id == live.user_id and ConfirmForm().validate_on_submit():
        device.remembered_until = None
        device.revoked_at = utcnow()
        _notify(f"The device “{device.name}” is no longer remembered.", "device.forgotten")
        db.session.commit()
        flash("The device will ask for your second factor again.")
    return redirect(url_for("security.index"))
