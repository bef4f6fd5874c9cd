"""The forms of the hosted pages (flask-wtf: validation and CSRF)."""

from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length, Regexp

EMAIL = [DataRequired("Enter your email address."), Length(max=320),
         Regexp(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", message="Enter a valid email address.")]


class SignInForm(FlaskForm):
    """Email and password."""

    email = EmailField("Email", validators=EMAIL, render_kw={"autocomplete": "username"})
    password = PasswordField("Password", validators=[DataRequired("Enter your password."), Length(max=4096)],
                             render_kw={"autocomplete": "current-password"})


class CodeForm(FlaskForm):
    """A one-time code from a message."""

    code = StringField("Code", validators=[DataRequired("Enter the code."), Length(max=12)],
                       render_kw={"autocomplete": "one-time-code", "inputmode": "numeric"})


class SignUpForm(FlaskForm):
    """A new account."""

    email = EmailField("Email", validators=EMAIL, render_kw={"autocomplete": "email"})
    name = StringField("Name", validators=[DataRequired("Enter your name."), Length(max=200)],
                       render_kw={"autocomplete": "name"})
    password = PasswordField("Password", validators=[DataRequired("Choose a password."), Length(max=4096)],
                             render_kw={"autocomplete": "new-password"})


class ForgotForm(FlaskForm):
    """The address to send a reset link to."""

    email = EmailField("Email", validators=EMAIL, render_kw={"autocomplete": "email"})


class NewPasswordForm(FlaskForm):
    """A new password, typed twice."""

    password = PasswordField("New password", validators=[DataRequired("Choose a password."), Length(max=4096)],
                             render_kw={"autocomplete": "new-password"})
    confirm = PasswordField("Repeat new password",
                            validators=[EqualTo("password", message="The two passwords differ.")],
                            render_kw={"autocomplete": "new-password"})


class ChangePasswordForm(NewPasswordForm):
    """The current password and a new one."""

    current = PasswordField("Current password", validators=[DataRequired("Enter your current password.")],
                            render_kw={"autocomplete": "current-password"})


class ProfileForm(FlaskForm):
    """Editable profile fields."""

    name = StringField("Name", validators=[DataRequired("Enter your name."), Length(max=200)],
                       render_kw={"autocomplete": "name"})


class ConfirmForm(FlaskForm):
    """A button that only carries the CSRF token (sign out, end session, confirm a link)."""
