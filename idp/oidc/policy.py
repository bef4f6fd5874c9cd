"""The authorization policy: an ordered list of named checks run on every authorization request.

Authlib validates the protocol (client, redirect URI, response type, scope, PKCE, nonce); it does not enforce
`prompt=login`, `max_age`, `acr_values` or consent. These checks do (OIDC Core 3.1.2.1, 3.1.2.3). Each check
either passes or names a reason for the login flow, and the error `prompt=none` gets instead of a screen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from idp.login.assurance import meets
from idp.models import LoginSession, User


@dataclass
class Request:
    """What the checks look at: the parsed authorization request and the browser's state."""

    first_party: bool
    scopes: list[str]
    prompt: set[str]
    max_age: int | None
    acr_values: list[str]
    session: LoginSession | None
    consented_scopes: set[str] = field(default_factory=set)
    hint_subject: str | None = None  # `sub` of a valid id_token_hint
    satisfied: set[str] = field(default_factory=set)  # reasons a just-completed login transaction answered
    client_min_acr: str = ""  # the level the client's own policy (MFA required, minimum level) demands

    @property
    def live(self) -> LoginSession:
        """The session; every check after check_session runs only when there is one (evaluate stops first)."""
        if self.session is None:
            raise LookupError("no session")
        return self.session

    @property
    def user(self) -> User | None:
        return self.session.user if self.session is not None else None


@dataclass(frozen=True)
class Failure:
    """A check that did not pass: why, and what `prompt=none` answers instead of showing a screen."""

    reason: str
    prompt_none_error: str


Check = Callable[[Request, datetime], Failure | None]


def check_session(req: Request, now: datetime) -> Failure | None:
    """There must be a signed-in session (and, with an id_token_hint, of the hinted user)."""
    if req.session is None:
        return Failure("no_session", "login_required")
    if req.hint_subject is not None and req.live.user.subject != req.hint_subject:
        return Failure("no_session", "login_required")
    return None


# A sign-in that answered "no_session" was a fresh one too: asking for it again would sign the user in twice.
FRESH_SIGN_IN = frozenset({"prompt_login", "max_age", "no_session"})


def check_prompt_login(req: Request, now: datetime) -> Failure | None:
    """`prompt=login` forces a fresh sign-in (OIDC Core 3.1.2.1)."""
    if "login" in req.prompt and not req.satisfied & FRESH_SIGN_IN:
        return Failure("prompt_login", "login_required")
    return None


def check_max_age(req: Request, now: datetime) -> Failure | None:
    """`max_age`: the last sign-in must be at most that many seconds old."""
    if req.max_age is not None and not req.satisfied & FRESH_SIGN_IN:
        if (now - req.live.auth_time).total_seconds() > req.max_age:
            return Failure("max_age", "login_required")
    return None


def check_acr_values(req: Request, now: datetime) -> Failure | None:
    """`acr_values`: step up until the session reaches one of the requested levels (or the user has tried)."""
    if req.acr_values and "acr" not in req.satisfied:
        if not any(meets(req.live.acr, wanted) for wanted in req.acr_values):
            return Failure("acr", "interaction_required")
    return None


def check_client_policy(req: Request, now: datetime) -> Failure | None:
    """The client's MFA setting and minimum level: a weaker session steps up (a remembered device may answer)."""
    if req.client_min_acr and "client_policy" not in req.satisfied and not meets(req.live.acr,
                                                                                 req.client_min_acr):
        return Failure("client_policy", "interaction_required")
    return None


def check_email_verified(req: Request, now: datetime) -> Failure | None:
    """Nobody finishes signing in with an unverified email address."""
    if not req.live.user.email_verified:
        return Failure("email_unverified", "interaction_required")
    return None


def check_consent(req: Request, now: datetime) -> Failure | None:
    """Third-party clients need the user's consent to every requested scope; `prompt=consent` asks again."""
    if "consent" in req.satisfied:
        return None
    if "consent" in req.prompt:
        return Failure("consent", "consent_required")
    if req.first_party:
        return None
    if not set(req.scopes) <= req.consented_scopes:
        return Failure("consent", "consent_required")
    return None


CHECKS: list[Check] = [check_session, check_prompt_login, check_max_age, check_acr_values, check_client_policy,
                       check_email_verified, check_consent]


def evaluate(req: Request, now: datetime) -> list[Failure]:
    """Run the checks in order; a missing session stops the rest (they need a user)."""
    failures = []
    for check in CHECKS:
        failure = check(req, now)
        if failure is not None:
            failures.append(failure)
            if failure.reason == "no_session":
                break
    return failures


# --- the request's own size -----------------------------------------------------------------------------------------

# The longest value each authorization request parameter may have. Every parameter is kept while the user signs in
# (the whole request is the transaction's return address) and some are stored with the code, so an over-long one is
# refused with invalid_request before any page is shown (RFC 6749 4.1.2.1) instead of failing once the user has
# signed in. Column sizes in idp/models: nonce String(512), code_challenge String(128) (an S256 challenge is 43),
# code_challenge_method String(16); login_hint is an email address at most (RFC 5321 4.5.3.1: 320).
PARAMETER_LIMITS = {
    "nonce": 512,
    "code_challenge": 128,
    "code_challenge_method": 16,
    "login_hint": 320,
    "state": 2048,
    "acr_values": 512,
    "claims": 4096,
    "ui_locales": 256,
    "claims_locales": 256,
    "id_token_hint": 8192,
    "scope": 2048,
    "prompt": 64,
    "display": 64,
    "response_mode": 64,
    "max_age": 10,
}
# Any other parameter (idp reads none, but it travels in the transaction's return address too).
OTHER_PARAMETER_LIMIT = 2048
# Matched against the client's registration before these limits apply: whatever was registered is fine.
REGISTERED_PARAMETERS = frozenset({"client_id", "redirect_uri"})


def oversized_parameter(params: Mapping[str, list[str]]) -> str | None:
    """The name of the first parameter (each name with its list of values) with a value longer than it may be."""
    for name, values in params.items():
        if name in REGISTERED_PARAMETERS:
            continue
        limit = PARAMETER_LIMITS.get(name, OTHER_PARAMETER_LIMIT)
        if any(len(value) > limit for value in values):
            return name
    return None
