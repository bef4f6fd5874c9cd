"""SQLAlchemy models only: no request or session access here."""

from idp.models.audit import AuditAnchor, AuditCheckpoint, AuditEvent
from idp.models.factors import Device, Factor, RecoveryCode
from idp.models.login import LoginSession, LoginTransaction, OneTimeToken, TransactionState
from idp.models.oauth import (
    AuthorizationCode,
    Client,
    Consent,
    DeviceCode,
    DPoPProof,
    InitialAccessToken,
    PushedRequest,
    SessionClient,
    SigningKey,
    Token,
)
from idp.models.types import UTCDateTime, table_of, utcnow
from idp.models.user import AdminJob, AdminRole, User

__all__ = ["AdminJob", "AdminRole", "AuditAnchor", "AuditCheckpoint", "AuditEvent", "AuthorizationCode", "Client",
           "Consent", "Device", "DeviceCode", "DPoPProof", "Factor", "InitialAccessToken", "LoginSession",
           "LoginTransaction", "OneTimeToken", "PushedRequest", "RecoveryCode", "SessionClient", "SigningKey", "Token",
           "TransactionState", "User", "UTCDateTime", "table_of", "utcnow"]
