"""SQLAlchemy models only: no request or session access here."""

from idp.models.audit import AuditEvent
from idp.models.login import LoginSession, LoginTransaction, OneTimeToken
from idp.models.types import UTCDateTime, utcnow
from idp.models.user import User

__all__ = ["AuditEvent", "LoginSession", "LoginTransaction", "OneTimeToken", "User", "UTCDateTime", "utcnow"]
