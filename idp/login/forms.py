"""The forms of the hosted pages (flask-wtf: validation and CSRF)."""

from email_validator import EmailNotValidError, validate_email
from flask import request
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, HiddenField, PasswordField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, EqualTo, Length, Optional, ValidationError

from idp.i18n import LANGUAGE_NAMES


class EmailAddress:
    """An address that email-validator accepts (RFC 5321/5322 syntax, length limits, no deliverability lookup:
    sign-up must not depend on DNS); `<script>` or a 312-character address is refused with a message."""

    message = _l("Enter a valid email address, like name@example.com.")

    def __call__(self, form, field) -> None:
        try:
            validate_email(field.data or "", check_deliverability=False)
        except EmailNotValidError as exc:
            raise ValidationError(self.message) from exc


NAME = [DataRequired(_l("Enter your name.")), Length(max=200, message=_l("Use at most 200 characters."))]
EMAIL = [DataRequired(_l("Enter your email address.")), Length(max=320), EmailAddress()]


class Form(FlaskForm):
    """Every hosted page's form. It reads form-encoded fields only: Flask-WTF would take a JSON body's members as
    fields, and fails on a body that is not an object of strings. No hosted page is posted JSON."""

    class Meta(FlaskForm.Meta):
        def wrap_formdata(self, form, formdata):
            if request.is_json and not request.form and not request.files:
                return None
            return super().wrap_formdata(form, formdata)

    def validate(self, extra_validators=None) -> bool:
        """Validate, and flag the fields for templates/_form.html: the first invalid one takes the focus (and no
        other field autofocuses), each invalid one is marked aria-invalid."""
        valid = super().validate(extra_validators)
        self.flag_errors()
        return valid

    def flag_errors(self) -> None:
        """Set the focus flags from the fields' errors (also after a view adds an error of its own)."""
        invalid = [field for field in self if field.errors and field.type not in ("HiddenField", "CSRFTokenField")]
        for field in self:
            field.flags.form_invalid = bool(invalid)
            field.flags.first_invalid = bool(invalid) and field is invalid[0]

    def add_error(self, field, *messages: str) -> None:
        """An error found after validation (a weak password, a refused text), said at its field."""
        field.errors = [*field.errors, *messages]
        self.flag_errors()

    def hidden_errors(self) -> list[str]:
        """Errors of fields that no page shows (a WebAuthn credential filled in by script): said in the page's
        error box instead, since no field can carry them."""
        return [error for field in self if field.type in ("HiddenField", "CSRFTokenField") for error in field.errors]


class SignInForm(Form):
    """Email and password."""

    email = EmailField(_l("Email"), validators=EMAIL, render_kw={"autocomplete": "username webauthn"})
    password = PasswordField(_l("Password"), validators=[DataRequired(_l("Enter your password.")), Length(max=4096)],
                             render_kw={"autocomplete": "current-password"})


class CodeForm(Form):
    """A one-time code from a message."""

    code = StringField(_l("Code"), validators=[DataRequired(_l("Enter the code.")), Length(max=12)],
                       render_kw={"autocomplete": "one-time-code", "inputmode": "numeric"})


class SignUpForm(Form):
    """A new account."""

    email = EmailField(_l("Email"), validators=EMAIL, render_kw={"autocomplete": "email"})
    name = StringField(_l("Name"), validators=NAME, render_kw={"autocomplete": "name"})
    password = PasswordField(_l("Password"), validators=[DataRequired(_l("Choose a password.")), Length(max=4096)],
                             render_kw={"autocomplete": "new-password"})


class ForgotForm(Form):
    """The address to send a reset link to."""

    email = EmailField(_l("Email"), validators=EMAIL, render_kw={"autocomplete": "email"})


class NewPasswordForm(Form):
    """A new password, typed twice."""

    password = PasswordField(_l("New password"), validators=[DataRequired(_l("Choose a password.")), Length(max=4096)],
                             render_kw={"autocomplete": "new-password"})
    confirm = PasswordField(_l("Repeat new password"),
                            validators=[EqualTo("password", message=_l("The two passwords differ."))],
                            render_kw={"autocomplete": "new-password"})


class ChangePasswordForm(NewPasswordForm):
    """The current password and a new one."""

    current = PasswordField(_l("Current password"), validators=[DataRequired(_l("Enter your current password."))],
                            render_kw={"autocomplete": "current-password"})




class ProfileForm(Form):
    """Editable profile fields."""

    name = StringField(_l("Name"), validators=NAME, render_kw={"autocomplete": "name"})
    # The locale claim (OIDC Core 5.1) and the pages' language (idp.i18n); "" follows the browser.
    locale = SelectField(_l("Language"), default="", validators=[Optional()],
                         choices=[SelectChoice("", _l("As my browser asks")),
                                  # each language named in itself, as language menus do
                                  *(SelectChoice(code, name, render_kw={"lang": code})
                                    for code, name in LANGUAGE_NAMES.items())])


class EmailChangeForm(Form):
    """A new email address for the account."""

    email = EmailField(_l("New email address"), validators=EMAIL, render_kw={"autocomplete": "email"})


class ConfirmForm(Form):
    """A button that only carries the CSRF token (sign out, end session, confirm a link)."""


class FactorCodeForm(Form):
    """A code from an authenticator app, a text message or an email, and "remember this device"."""

    code = StringField(_l("Code"), validators=[DataRequired(_l("Enter the code.")), Length(max=32)],
                       render_kw={"autocomplete": "one-time-code", "inputmode": "numeric"})
    remember = BooleanField(_l("Remember this device"))


class RecoveryCodeForm(Form):
    """One recovery code."""

    code = StringField(_l("Recovery code"), validators=[DataRequired(_l("Enter a recovery code.")), Length(max=32)],
                       render_kw={"autocomplete": "off"})


class WebAuthnForm(Form):
    """The JSON of a WebAuthn credential, filled in by static/js/webauthn.js."""

    credential = HiddenField(validators=[DataRequired(_l("Use your security key or passkey.")), Length(max=20000)])
    remember = BooleanField(_l("Remember this device"))


class TotpEnrolForm(Form):
    """The first code from a newly added authenticator app (enrolment counts only once confirmed)."""

    code = StringField(_l("Code from the app"),
                       validators=[DataRequired(_l("Enter the 6-digit code.")), Length(max=12)],
                       render_kw={"autocomplete": "one-time-code", "inputmode": "numeric"})


class PhoneForm(Form):
    """A phone number for SMS codes."""

    phone = StringField(_l("Mobile number (with country code, e.g. +44 7700 900123)"),
                        validators=[DataRequired(_l("Enter a mobile number.")), Length(max=32)],
                        render_kw={"autocomplete": "tel", "inputmode": "tel"})


class NameForm(Form):
    """A new name for a factor or device."""

    name = StringField(_l("Name"), validators=[DataRequired(_l("Enter a name.")), Length(max=100)])


class EnrolForm(Form):
    """Enrolment inside sign-in: the first TOTP code, or a new WebAuthn credential (filled in by JavaScript)."""

    code = StringField(_l("Code from the app"), validators=[Optional(), Length(max=12)],
                       render_kw={"autocomplete": "one-time-code", "inputmode": "numeric"})
    credential = HiddenField(validators=[Optional(), Length(max=20000)])
