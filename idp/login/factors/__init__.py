"""The factors idp offers, declared once, strongest first: this order is the chooser's and the automatic pick's.

Adding a factor is one module (a FactorType: descriptor, sign-in step, enrolment, removal, stored credential)
plus its template, and one line here; an extension or a test may also ``REGISTRY.register()`` its own.
"""

from idp.login.factors.base import FactorType, Registry
from idp.login.factors.email_otp import EmailCode
from idp.login.factors.recovery_code import RecoveryCodes
from idp.login.factors.sms import Sms
from idp.login.factors.totp import Totp
from idp.login.factors.webauthn import WebAuthn

REGISTRY = Registry([WebAuthn(), Totp(), Sms(), RecoveryCodes(), EmailCode()])

__all__ = ["REGISTRY", "FactorType", "Registry"]
