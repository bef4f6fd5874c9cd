"""Account pages: sign up, verify email by link, forgot and reset password, unlock, sign out, profile, sessions."""

from __future__ import annotations

from flask import Blueprint, current_app, flash, g, jsonify, redirect, render_template, request, session, url_for
from flask_babel import gettext as _

from idp import audit, i18n
from idp.account import confirm, email_change, lifecycle, passwords
from idp.account import jobs as account_jobs  # noqa: F401  (registers the account jobs)
from idp.account import phone as profile_phone
from idp.account import signup as accounts
from idp.account.security import recent_auth_required
from idp.extensions import db, limiter
from idp.http import clear_session_cookie
from idp.jobs import enqueue
from idp.login import devices, onetime, sessions, transaction, verification
from idp.login.browser import (
    begin_transaction,
    binding,
    current_session,
    login_required,
    signed_in,
    unlock_account,
)
from idp.login.codes import mask_phone
from idp.login.forms import (
    ChangePasswordForm,
    CodeForm,
    ConfirmForm,
    EmailChangeForm,
    ForgotForm,
    NewPasswordForm,
    PhoneForm,
    ProfileForm,
    SignUpForm,
)
from idp.models import Client, Consent, LoginSession, LoginTransaction, User, utcnow
from idp.models.user import normalize_email
from idp.oidc.claims import SCOPE_DESCRIPTIONS
from idp.oidc.server import revoke_for_client

bp = Blueprint("account", __name__)


def _forms_limit() -> str:
    return current_app.config["IDP_RATELIMIT_FORMS"]


def _link_row(purpose: str, token: str, ttl_setting: str):
    """The live one-time token behind a signed link from a mail, or None."""
    cfg = current_app.config
    return onetime.find_by_link(purpose, token, now=utcnow(), secret_key=cfg["IDP_SECRET_KEY"], ttl=cfg[ttl_setting])


# Mailed links (verification, reset, unlock) carry their token in the URL fragment, which a browser never sends:
# the page the link opens has a script (static/js/link.js) that POSTs it in a form, so no token reaches an access
# log, a proxy or a Referer (SECURITY.md 30). Without script, the same form asks for the link to be pasted.
# The earlier links with the token in the path are gone rather than kept: any proxy in front logs them whatever
# the app does, and an old link only costs the user a new one (they expire within a day).


def _link_page(title: str, text: str):
    """The page a mailed link opens: a form that POSTs the token from the link's fragment back here."""
    return render_template("account/link.html", form=ConfirmForm(), title=title, text=text)


def _link_token() -> str:
    """The token of a mailed link, as the link page POSTed it (pasted by hand, maybe with the whole link)."""
    return request.form.get("token", "").strip().rpartition("#")[2]


def _link_error():
    return render_template("error.html", title=_("This link is not valid"),
                           message=_("It has expired, was already used, or was replaced by a newer one."),
                           action=(url_for("login.begin"), _("Sign in"))), 400


@bp.get("/")
def index():
    """The front page: the account page when signed in, otherwise sign in."""
    return redirect(url_for("account.home"))


@bp.route("/signup", methods=["GET", "POST"])
@limiter.limit(_forms_limit, methods=["POST"])
def signup():
    """Create an account; the same next screen whether or not the address already has one (SECURITY.md 19)."""
    form = SignUpForm()
    if not form.validate_on_submit():
        return render_template("account/signup.html", form=form)
    registration = accounts.register(form.email.data, form.name.data, form.password.data)
    if registration.problems:
        form.add_error(form.password, *registration.problems)
        return render_template("account/signup.html", form=form)
    if registration.user is not None:
        return begin_transaction(reasons=["signup"], return_to=url_for("account.home"), user=registration.user,
                                 done=["password"], amr=["pwd"])
    return begin_transaction(reasons=["signup"], return_to=url_for("account.home"),
                             done=["password"], existing_account=registration.existing)


@bp.route("/verify-email", methods=["GET", "POST"])
def verify_email():
    """Confirm an address from the link in the verification mail (a button, so mail scanners cannot use it)."""
    if request.method == "GET":
        return _link_page(_("Verify your email"), _("Open the link from the mail to verify your address."))
    token = _link_token()
    row = verification.link_row(token, utcnow(), current_app.config)
    if row is None:
        return _link_error()
    form = ConfirmForm()
    if "confirm" not in request.form or not form.validate_on_submit():
        return render_template("account/confirm.html", form=form, title=_("Verify your email"), token=token,
                               text=_("Confirm that %(email)s is your address.", email=row.email),
                               button=_("Verify email"))
    if not verification.verify_by_link(row, utcnow(), ip=g.client_ip, user_agent=g.user_agent):
        return _link_error()  # another request used it in the meantime (SECURITY.md 32)
    db.session.commit()
    pending = db.session.execute(
        db.select(LoginTransaction).where(
            LoginTransaction.user_id == row.user_id,
            LoginTransaction.completed_at.is_(None))
        .order_by(LoginTransaction.created_at.desc()).limit(1)
    ).scalar_one_or_none()
    if pending is not None and transaction.load(pending.id, binding=binding(), now=utcnow()) is not None:
        return redirect(url_for("login.step", tid=pending.id))  # resume the sign-in where it stopped
    flash(_("Your email address is verified."))
    return redirect(url_for("account.home") if current_session() else url_for("login.begin"))


@bp.route("/forgot", methods=["GET", "POST"])
@limiter.limit(_forms_limit, methods=["POST"])
def forgot():
    """Ask for a reset link; the answer never says whether the address has an account."""
    form = ForgotForm()
    if not form.validate_on_submit():
        return render_template("account/forgot.html", form=form)
    enqueue("start_password_reset", email=normalize_email(form.email.data), ip=g.client_ip, user_agent=g.user_agent)
    db.session.commit()  # sends the job (idp.jobs); the request itself wrote nothing
    return render_template("account/forgot_sent.html", email=form.email.data)


@bp.route("/reset", methods=["GET", "POST"])
def reset_password():
    """Choose a new password from an emailed link; every session of the account ends."""
    if request.method == "GET":
        return _link_page(_("Choose a new password"), _("Open the link from the mail to choose a new password."))
    token = _link_token()
    # An invitation (a user an administrator created) sets the first password through the same page.
    row = passwords.reset_link(token)
    if row is None:
        return _link_error()
    user = row.user
    form = NewPasswordForm()
    if "password" in request.form and form.validate_on_submit():
        errors = passwords.reset(row, form.password.data)
        if errors is None:
            # A reset never signs in: the user signs in again, with every factor (SECURITY.md 20).
            flash(_("Your password was changed. Sign in with the new one."))
            return redirect(url_for("login.begin"))
        if "token" in errors:  # another request used it in the meantime (SECURITY.md 32)
            return _link_error()
        form.add_error(form.password, *errors["password"])
    return render_template("account/reset.html", form=form, email=user.email, token=token)


@bp.route("/unlock", methods=["GET", "POST"])
def unlock():
    """Lift a lock from the link mailed when the account was locked."""
    if request.method == "GET":
        return _link_page(_("Unlock your account"), _("Open the link from the mail to unlock your account."))
    now = utcnow()
    token = _link_token()
    row = _link_row("unlock", token, "IDP_RESET_LINK_TTL")
    if row is None:
        return _link_error()
    form = ConfirmForm()
    if "confirm" not in request.form or not form.validate_on_submit():
        return render_template("account/confirm.html", form=form, title=_("Unlock your account"), token=token,
                               text=_("Unlock the account %(email)s.", email=row.email), button=_("Unlock"))
    if not onetime.use(row, now):  # another request used it in the meantime (SECURITY.md 32)
        return _link_error()
    unlock_account(row.user, "email_link")
    db.session.commit()
    flash(_("Your account is unlocked. Sign in."))
    return redirect(url_for("login.begin"))


@bp.route("/logout", methods=["GET", "POST"])
def logout():
    """Sign out: a confirmation button on GET, so no other page can sign you out by linking here."""
    live = current_session()
    form = ConfirmForm()
    if live is None:
        return render_template("account/signed_out.html")
    if not form.validate_on_submit():
        return render_template("account/confirm.html", form=form, title=_("Sign out"),
                               text=_("Sign out %(email)s from this browser?", email=live.user.email),
                               button=_("Sign out"))
    sessions.end(live, "logout", utcnow())
    return _signed_out("logout", live.user, sid=live.sid)


def _signed_out(event: str, user: User, everywhere: bool = False, **details):
    """Audit the sign-out, commit, and show the signed-out page with the session cookie removed."""
    audit.record(event, subject=user, **details)
    db.session.commit()
    response = current_app.make_response(render_template("account/signed_out.html", everywhere=everywhere))
    clear_session_cookie(response)
    return response


@bp.get("/account")
@login_required
def home():
    """The account page: profile, password, and the sessions signed in as you."""
    user = signed_in().user
    return _home(ProfileForm(name=user.name, locale=user.locale or ""))


def _home(profile_form: ProfileForm, status: int = 200):
    live = signed_in()
    return render_template("account/home.html", user=live.user, current=live,
                           sessions=sessions.live_sessions(live.user), profile=profile_form,
                           confirm=ConfirmForm()), status


@bp.post("/account/profile")
@login_required
def profile():
    """Change the profile fields; a refused form comes back with its errors at their fields."""
    user = signed_in().user
    form = ProfileForm()
    if not form.validate_on_submit():
        return _home(form, 400)
    changed = [name for name, old, new in (("name", user.name, form.name.data.strip()),
                                           ("locale", user.locale, form.locale.data or None)) if old != new]
    user.name = form.name.data.strip()
    user.locale = form.locale.data or None
    audit.record("profile.updated", subject=user, fields=changed)
    db.session.commit()
    i18n.refresh()  # the notice, and the pages from now on, in the language just chosen
    flash(_("Profile saved."))
    return redirect(url_for("account.home"))


# The Flask session key under which the number waiting for its code is kept, with the sign-in session it belongs to.
PHONE_PENDING_KEY = "profile_phone"


@bp.route("/account/phone", methods=["GET", "POST"])
@login_required
@recent_auth_required(after_post="account.phone", purpose="change_phone")
@limiter.limit(_forms_limit, methods=["POST"])
def phone():
    """Add or change the profile phone number: text a code to it first (SECURITY.md 23, 27)."""
    live = signed_in()
    form = PhoneForm()
    if form.validate_on_submit():
        try:
            number = profile_phone.send_code(live.user, form.phone.data, sid=live.sid, ip=g.client_ip,
                                             config=current_app.config)
        except profile_phone.PhoneRefused as refused:
            form.add_error(form.phone, str(refused))
        else:
            session[PHONE_PENDING_KEY] = {"sid": live.sid, "phone": number}
            db.session.commit()
            return redirect(url_for("account.phone_verify"))
        db.session.commit()  # an audit row recording a refused text (the pumping caps) stays
    return render_template("account/profile_phone.html", form=form, user=live.user, confirm=ConfirmForm())


@bp.route("/account/phone/verify", methods=["GET", "POST"])
@login_required
@recent_auth_required(after_post="account.phone", purpose="change_phone")
@limiter.limit(_forms_limit, methods=["POST"])
def phone_verify():
    """Type the code texted to the new number; only then is it saved, as verified."""
    live = signed_in()
    pending = session.get(PHONE_PENDING_KEY)
    if not (isinstance(pending, dict) and pending.get("sid") == live.sid and isinstance(pending.get("phone"), str)):
        return redirect(url_for("account.phone"))
    form = CodeForm()
    if form.validate_on_submit():
        try:
            profile_phone.confirm(live.user, pending["phone"], form.code.data, sid=live.sid, now=utcnow(),
                                  config=current_app.config)
        except profile_phone.PhoneRefused as refused:
            form.add_error(form.code, str(refused))
            db.session.commit()  # the wrong attempt counts
        else:
            db.session.commit()
            session.pop(PHONE_PENDING_KEY, None)
            flash(_("Your phone number is verified and saved."))
            return redirect(url_for("account.home"))
    return render_template("account/profile_phone_verify.html", form=form, phone=mask_phone(pending["phone"]))


@bp.post("/account/phone/remove")
@login_required
@recent_auth_required(after_post="account.phone", purpose="change_phone")
def phone_remove():
    """Take the phone number out of the profile (applications no longer receive it)."""
    user = signed_in().user
    if ConfirmForm().validate_on_submit() and user.phone and not confirm.confirmed():
        return confirm.ask(_("Remove your phone number?"),
                           _("Applications you allowed to see it will no longer receive it."),
                           _("Remove"), url_for("account.phone"))
    if ConfirmForm().validate_on_submit() and profile_phone.remove(user):
        db.session.commit()
        flash(_("Your phone number was removed."))
    return redirect(url_for("account.home"))


@bp.post("/account/sessions/<sid>/end")
@login_required
def end_session(sid: str):
    """End one of your sessions (another browser, or this one)."""
    live = signed_in()
    target = db.session.execute(
        db.select(LoginSession).where(LoginSession.sid == sid, LoginSession.user_id == live.user_id)
    ).scalar_one_or_none()
    if ConfirmForm().validate_on_submit() and target is not None:
        if not confirm.confirmed():
            here = target.id == live.id
            return confirm.ask(
                _("End the session on %(browser)s?", browser=target.user_agent or _("an unknown browser")),
                _("You will be signed out in this browser.") if here
                else _("That browser will be signed out and must sign in again."),
                _("End the session"), url_for("account.home"))
        sessions.end(target, "ended_by_user", utcnow())
        audit.record("session.ended", subject=live.user, sid=target.sid)
        db.session.commit()
        if target.id == live.id:
            response = redirect(url_for("login.begin"))
            clear_session_cookie(response)
            return response
        flash(_("The session was ended."))
    return redirect(url_for("account.home"))


@bp.post("/account/sessions/end-all")
@login_required
def sign_out_everywhere():
    """Sign out everywhere: every session of yours ends, this one too, and every token issued to you is revoked, so
    that applications must ask you to sign in again (SECURITY.md 6)."""
    live = signed_in()
    if not ConfirmForm().validate_on_submit():
        return redirect(url_for("account.home"))
    ended, revoked = sessions.sign_out_everywhere(live.user, "signed_out_everywhere", utcnow())
    return _signed_out("sessions.signed_out_everywhere", live.user, everywhere=True, sessions_ended=ended,
                       tokens_revoked=revoked)


@bp.get("/account/apps")
@login_required
def apps():
    """The applications you allowed to access your account, with what they may see."""
    user = signed_in().user
    rows = db.session.execute(
        db.select(Consent, Client).join(Client, Client.client_id == Consent.client_id)
        .where(Consent.user_id == user.id, Consent.revoked_at.is_(None)).order_by(Consent.updated_at.desc())
    ).all()
    granted = [(consent, client, [SCOPE_DESCRIPTIONS.get(s, s) for s in consent.scopes]) for consent, client in rows]
    return render_template("account/apps.html", granted=granted, confirm=ConfirmForm())


@bp.post("/account/apps/<client_id>/revoke")
@login_required
def revoke_app(client_id: str):
    """Withdraw an application's access: the consent ends and every token it holds for you is revoked."""
    user = signed_in().user
    consent = db.session.execute(db.select(Consent).where(
        Consent.user_id == user.id, Consent.client_id == client_id, Consent.revoked_at.is_(None))
    ).scalar_one_or_none()
    if consent is not None and ConfirmForm().validate_on_submit():
        if not confirm.confirmed():
            client = db.session.execute(db.select(Client).where(Client.client_id == client_id)).scalar_one_or_none()
            return confirm.ask(_("Remove access for %(client)s?", client=client.name if client else client_id),
                               _("It will have to ask you again, and the tokens it holds for you stop working "
                                 "now."), _("Remove access"), url_for("account.apps"))
        consent.revoked_at = utcnow()
        revoked = revoke_for_client(user, client_id, "consent_revoked")
        audit.record("consent.revoked", subject=user, client_id=client_id, tokens_revoked=revoked)
        db.session.commit()
        flash(_("Access removed. The application will have to ask again."))
    return redirect(url_for("account.apps"))


@bp.route("/account/end-session", methods=["GET", "POST"])
def end_session_link():
    """End the session a "new sign-in" mail named, from its link (no sign-in needed: the link is signed)."""
    if request.method == "GET":
        return _link_page(_("End that session"), _("Open the link from the mail to end that session."))
    token = _link_token()
    cfg = current_app.config
    sid = devices.signed_session(token, cfg["IDP_SECRET_KEY"], cfg["IDP_SESSION_MAX_AGE"])
    target = db.session.execute(db.select(LoginSession).where(LoginSession.sid == sid)).scalar_one_or_none() \
        if sid else None
    if target is None:
        return _link_error()
    form = ConfirmForm()
    if target.ended_at is None and ("confirm" not in request.form or not form.validate_on_submit()):
        return render_template("account/confirm.html", form=form, title=_("End that session"), token=token,
                               text=_("End the session on %(browser)s, from %(ip)s?",
                                      browser=target.user_agent or _("an unknown browser"), ip=target.ip),
                               button=_("End the session"))
    if target.ended_at is None:
        sessions.end(target, "ended_from_alert", utcnow())
        audit.record("session.ended", subject=target.user, sid=target.sid, method="alert_link")
        db.session.commit()
    flash(_("That session is ended. If it was not you, reset your password now."))
    return redirect(url_for("account.forgot"))


@bp.route("/account/email", methods=["GET", "POST"])
@login_required
@recent_auth_required(after_post="account.change_email", purpose="change_email")
@limiter.limit(_forms_limit, methods=["POST"])
def change_email():
    """Change the email address: a link (and code) goes to the new address, which replaces the old one once proved."""
    live = signed_in()
    form = EmailChangeForm()
    if form.validate_on_submit():
        try:
            new = email_change.request_change(live.user, form.email.data, sid=live.sid)
        except email_change.EmailRefused as refused:
            form.add_error(form.email, str(refused))
        else:
            db.session.commit()
            flash(_("We mailed a link to %(email)s. Open it to make it your address.", email=new))
            return redirect(url_for("account.home"))
    return render_template("account/email.html", form=form, user=live.user)


@bp.route("/account/email/confirm", methods=["GET", "POST"])
def confirm_email():
    """Make the new address the account's, from the link mailed to it."""
    if request.method == "GET":
        return _link_page(_("Confirm your new email address"), _("Open the link from the mail to confirm it."))
    token = _link_token()
    row = email_change.by_link(token)
    if row is None:
        return _link_error()
    form = ConfirmForm()
    if "confirm" not in request.form or not form.validate_on_submit():
        return render_template("account/confirm.html", form=form, title=_("Confirm your new email address"),
                               token=token, text=_("Make %(email)s your account's email address.", email=row.email),
                               button=_("Confirm"))
    try:
        email_change.complete(row)
    except email_change.EmailRefused as refused:
        return render_template("error.html", title=_("This link is not valid"), message=str(refused)), 400
    flash(_("Your email address is now %(email)s.", email=row.email))
    return redirect(url_for("account.home") if current_session() else url_for("login.begin"))


@bp.post("/account/delete")
@login_required
@recent_auth_required(after_post="account.home", purpose="delete_account")
def delete_account():
    """Delete your account: signed out everywhere at once, removed for good after IDP_DELETE_GRACE_DAYS unless you
    open the link the mail carries."""
    live = signed_in()
    if not ConfirmForm().validate_on_submit():
        return redirect(url_for("account.home"))
    if not confirm.confirmed():
        return confirm.ask(_("Delete your account?"),
                           _("You are signed out everywhere at once, every application loses access, and the account "
                             "is removed for good in %(days)s days. A mail tells you how to undo it until then.",
                             days=current_app.config["IDP_DELETE_GRACE_DAYS"]),
                           _("Delete my account"), url_for("account.home"))
    lifecycle.delete(live.user)
    response = current_app.make_response(render_template("account/signed_out.html", deleted=True))
    clear_session_cookie(response)
    return response


@bp.route("/account/restore", methods=["GET", "POST"])
def restore():
    """Undo the deletion of your account from the mailed link, before it is removed for good."""
    if request.method == "GET":
        return _link_page(_("Restore your account"), _("Open the link from the mail to restore your account."))
    token = _link_token()
    row = lifecycle.restore_link(token)
    if row is None:
        return _link_error()
    form = ConfirmForm()
    if "confirm" not in request.form or not form.validate_on_submit():
        return render_template("account/confirm.html", form=form, title=_("Restore your account"), token=token,
                               text=_("Restore the account %(email)s.", email=row.email), button=_("Restore"))
    if not lifecycle.restore(row):  # another request used it in the meantime (SECURITY.md 32)
        return _link_error()
    flash(_("Your account is restored. Sign in."))
    return redirect(url_for("login.begin"))


@bp.get("/account/export")
@login_required
@recent_auth_required(purpose="export_data")
def export_data():
    """Download everything idp holds about you, as JSON (no secrets)."""
    response = jsonify(lifecycle.export(signed_in().user))
    response.headers["Content-Disposition"] = 'attachment; filename="my-account.json"'
    return response


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
@recent_auth_required(after_post="account.change_password", purpose="change_password")
def change_password():
    """Change the password: a recent sign-in and the current password are required, and other sessions end
    (SECURITY.md 20, 27)."""
    live = signed_in()
    form = ChangePasswordForm()
    if form.validate_on_submit():
        errors = passwords.change(live.user, form.current.data, form.password.data, ip=g.client_ip, keep=live)
        if errors is None:
            flash(_("Your password was changed. Your other sessions were signed out."))
            return redirect(url_for("account.home"))
        for name, messages in errors.items():
            form.add_error(form.current if name == "current" else form.password, *messages)
    return render_template("account/password.html", form=form)
