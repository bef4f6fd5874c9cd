"""The console's forms (every label and message translated, as on the hosted pages)."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from wtforms import BooleanField, DateField, IntegerField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from idp.login.assurance import LEVELS
from idp.login.forms import EmailAddress, Form
from idp.oidc.registration import APPLICATION_TYPES, REQUEST_OBJECT_ALGS
from idp.oidc.server import ALL_AUTH_METHODS, GRANT_TYPES
from idp.security.keys import SUPPORTED_ALGS

ROLE_CHOICES = [SelectChoice("admin", _l("Administrator (everything)")),
                SelectChoice("helpdesk", _l("Helpdesk (look up users, unlock, reset MFA, send mails, end sessions)")),
                SelectChoice("auditor", _l("Auditor (read the audit log)"))]


class NewUserForm(Form):
    """Create a user: with a password the administrator types, or an invitation mail."""

    email = StringField(_l("Email"), validators=[DataRequired(_l("Enter an email address.")), Length(max=320),
                                                 EmailAddress()], render_kw={"autocomplete": "off"})
    name = StringField(_l("Name"), validators=[Optional(), Length(max=200)], render_kw={"autocomplete": "off"})
    invite = BooleanField(_l("Mail an invitation with a link to choose a password"), default=True)
    password = StringField(_l("Password (when not inviting)"), validators=[Optional(), Length(max=1024)],
                           render_kw={"autocomplete": "new-password", "type": "password"})
    email_verified = BooleanField(_l("The email address is verified"))


class ProfileEditForm(Form):
    """What an administrator may change in a user's profile."""

    name = StringField(_l("Name"), validators=[DataRequired(_l("Enter a name.")), Length(max=200)])
    email = StringField(_l("Email"), validators=[DataRequired(_l("Enter an email address.")), Length(max=320),
                                                 EmailAddress()])
    phone = StringField(_l("Phone number"), validators=[Optional(), Length(max=64)],
                        render_kw={"type": "tel", "autocomplete": "off"})
    email_verified = BooleanField(_l("The email address is verified"))


class SetPasswordForm(Form):
    """A password the administrator sets for a user (who is signed out everywhere and mailed)."""

    password = StringField(_l("New password"), validators=[DataRequired(_l("Enter a password.")), Length(max=1024)],
                           render_kw={"autocomplete": "new-password", "type": "password"})


class GrantRoleForm(Form):
    """Give a user an admin role, for good or until a day."""

    role = SelectField(_l("Role"), choices=ROLE_CHOICES)
    until = DateField(_l("Until (optional; the role lapses at the start of that day, UTC)"),
                      validators=[Optional()])


class TypedConfirmForm(Form):
    """The most destructive actions: the administrator types the name (or number) the page shows."""

    typed = StringField(_l("Type it here to confirm"), validators=[DataRequired(_l("Type it to confirm.")),
                                                                   Length(max=200)],
                        render_kw={"autocomplete": "off", "spellcheck": "false"})


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


class ClientForm(Form):
    """Every setting a client has (as `idp clients create` takes them); idp.oidc.registration checks them."""

    name = StringField(_l("Name (shown on the consent page)"), validators=[DataRequired(_l("Enter a name.")),
                                                                           Length(max=200)])
    logo_uri = StringField(_l("Logo URL (https; shown on the consent page)"), validators=[Optional(),
                                                                                          Length(max=2000)])
    redirect_uris = TextAreaField(_l("Redirect URIs (one per line)"), validators=[Length(max=20000)])
    post_logout_redirect_uris = TextAreaField(_l("Post-logout redirect URIs (one per line)"),
                                              validators=[Length(max=20000)])
    public = BooleanField(_l("Public client (single-page or native app: no secret, PKCE required)"))
    grant_types = TextAreaField(_l("Grant types (one per line: %(choices)s)", choices=", ".join(GRANT_TYPES)),
                                validators=[Length(max=1000)], default="authorization_code\nrefresh_token")
    scopes = StringField(_l("Scopes (separated by spaces; empty for all)"), validators=[Length(max=2000)])
    auth_method = SelectField(_l("Token endpoint authentication"),
                              choices=[SelectChoice("", _l("Default (client_secret_basic)")),
                                       *(SelectChoice(m, m) for m in ALL_AUTH_METHODS)])
    first_party = BooleanField(_l("First-party (trusted: no consent page)"))
    id_token_alg = SelectField(_l("ID token algorithm"), choices=[SelectChoice(a, a) for a in SUPPORTED_ALGS])
    jwks = TextAreaField(_l("Public JWK Set (JSON; for private_key_jwt)"), validators=[Length(max=20000)])
    jwks_uri = StringField(_l("JWK Set URL (for private_key_jwt)"), validators=[Optional(), Length(max=2000)])
    mfa = SelectField(_l("Second factor"), choices=[SelectChoice("optional", _l("As the user chose")),
                                                    SelectChoice("required", _l("Required at every sign-in"))])
    min_acr = SelectField(_l("Lowest level of assurance"), choices=[SelectChoice("", _l("Any")),
                                                                              *(SelectChoice(a, a) for a in LEVELS)])
    allow_remembered_device = BooleanField(_l("A remembered device may stand in for the second factor"),
                                           default=True)
    access_token_ttl = IntegerField(_l("Access token lifetime in seconds (empty: the server's)"),
                                    validators=[Optional(), NumberRange(min=60, max=365 * 86400)])
    refresh_token_ttl = IntegerField(_l("Refresh token idle lifetime in seconds (empty: the server's)"),
                                     validators=[Optional(), NumberRange(min=60, max=365 * 86400)])
    refresh_tokens_for_sessions = BooleanField(_l("Refresh tokens without offline_access, ending with the "
                                                  "sign-in session"))
    # Logout (OpenID Connect Back-Channel and Front-Channel Logout 1.0).
    backchannel_logout_uri = StringField(_l("Back-channel logout URL (https; the server posts a logout token "
                                            "there)"), validators=[Optional(), Length(max=2000)])
    backchannel_logout_session_required = BooleanField(_l("The logout token must name the session (sid)"))
    frontchannel_logout_uri = StringField(_l("Front-channel logout URL (https, on the site of a redirect URI; "
                                             "loaded in a frame at logout)"), validators=[Optional(),
                                                                                          Length(max=2000)])
    frontchannel_logout_session_required = BooleanField(_l("The front-channel logout URL gets the issuer and "
                                                           "session (iss, sid)"))
    # Links the consent page shows, and the kind of application (OpenID Connect Dynamic Client Registration 1.0 2).
    policy_uri = StringField(_l("Privacy policy URL (https; shown on the consent page)"),
                             validators=[Optional(), Length(max=2000)])
    tos_uri = StringField(_l("Terms of service URL (https; shown on the consent page)"),
                          validators=[Optional(), Length(max=2000)])
    application_type = SelectField(_l("Application type"),
                                   choices=[SelectChoice("", _l("Not set")),
                                            *(SelectChoice(t, {"web": _l("Web (https redirect URIs)"),
                                                               "native": _l("Native app (may use its own URI "
                                                                            "scheme)")}[t])
                                              for t in APPLICATION_TYPES)], default="")
    # Protocol options: pushed authorization requests (RFC 9126), DPoP (RFC 9449), request objects (RFC 9101).
    require_pushed_authorization_requests = BooleanField(_l("Require pushed authorization requests (PAR)"))
    dpop_bound_access_tokens = BooleanField(_l("Access tokens are always bound to a DPoP key"))
    request_uris = TextAreaField(_l("Request object URLs (https; one per line)"), validators=[Length(max=20000)])
    request_object_signing_alg = SelectField(_l("Request object algorithm"),
                                             choices=[SelectChoice("", _l("Default (RS256, ES256 or PS256)")),
                                                      *(SelectChoice(a, a if a != "none" else _l("none (unsigned)"))
                                                        for a in REQUEST_OBJECT_ALGS)], default="")
    # Token exchange (RFC 8693): the clients that may act for this one's users.
    token_exchange_actors = TextAreaField(_l("Token exchange actors (one client ID per line)"),
                                          validators=[Length(max=5000)])

    def settings(self) -> dict:
        """The settings under idp.oidc.registration's names (JSON is parsed by the caller)."""
        return {
            "name": self.name.data.strip(), "logo_uri": (self.logo_uri.data or "").strip() or None,
            "redirect_uris": _lines(self.redirect_uris.data),
            "post_logout_redirect_uris": _lines(self.post_logout_redirect_uris.data),
            "public": bool(self.public.data), "grant_types": _lines(self.grant_types.data),
            "scopes": (self.scopes.data or "").split(), "auth_method": self.auth_method.data or None,
            "first_party": bool(self.first_party.data), "id_token_alg": self.id_token_alg.data,
            "jwks_uri": (self.jwks_uri.data or "").strip() or None, "mfa": self.mfa.data,
            "min_acr": self.min_acr.data, "allow_remembered_device": bool(self.allow_remembered_device.data),
            "access_token_ttl": self.access_token_ttl.data, "refresh_token_ttl": self.refresh_token_ttl.data,
            "refresh_tokens_for_sessions": bool(self.refresh_tokens_for_sessions.data),
            "backchannel_logout_uri": (self.backchannel_logout_uri.data or "").strip() or None,
            "backchannel_logout_session_required": bool(self.backchannel_logout_session_required.data),
            "frontchannel_logout_uri": (self.frontchannel_logout_uri.data or "").strip() or None,
            "frontchannel_logout_session_required": bool(self.frontchannel_logout_session_required.data),
            "policy_uri": (self.policy_uri.data or "").strip() or None,
            "tos_uri": (self.tos_uri.data or "").strip() or None,
            "application_type": self.application_type.data or None,
            "require_pushed_authorization_requests": bool(self.require_pushed_authorization_requests.data),
            "dpop_bound_access_tokens": bool(self.dpop_bound_access_tokens.data),
            "request_uris": _lines(self.request_uris.data),
            "request_object_signing_alg": self.request_object_signing_alg.data or None,
            "token_exchange_actors": _lines(self.token_exchange_actors.data),
        }
