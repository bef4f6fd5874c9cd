"""Mail: rendered from templates/email/, delivered by SMTP, the dev outbox, or the console."""

from __future__ import annotations

import json
import logging
import os
import smtplib
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from flask import current_app, render_template
from flask_babel import lazy_gettext as _l

from idp import branding, i18n, metrics

log = logging.getLogger("idp.mail")

SUBJECTS = {
    "verify_email": _l("Verify your email address"),
    "account_exists": _l("You already have an account"),
    "password_reset": _l("Reset your password"),
    "password_changed": _l("Your password was changed"),
    "account_deleted": _l("Your account was deleted"),
    "change_email": _l("Confirm your new email address"),
    "email_changed": _l("Your email address was changed"),
    "account_locked": _l("Your account was locked"),
    "login_code": _l("Your sign-in code"),
    "security_notice": _l("Security change on your account"),
    "new_signin": _l("New sign-in to your account"),
    "token_stolen": _l("A sign-in token of yours may have been stolen"),
    "invitation": _l("Your new account"),
}


def send_mail(to: str, template: str, context: dict[str, Any], language: str | None = None) -> None:
    """Render ``template`` (text and HTML) in ``language`` (the page's, when it was enqueued) and deliver it to
    ``to`` through the configured backend."""
    # Mail is read away from the site: the logo's address is absolute (and the brand's name is the operator's).
    context = {**context, "issuer": current_app.config["IDP_ISSUER"], "brand": branding.current_brand(external=True)}
    with i18n.force_locale(language if language in i18n.LANGUAGES else i18n.LANGUAGES[0]):
        message = {
            "to": to,
            "from": current_app.config["IDP_MAIL_FROM"],
            "subject": str(SUBJECTS[template]),
            "text": render_template(f"email/{template}.txt", **context),
            "html": render_template(f"email/{template}.html", **context),
        }
    deliver(message)


@metrics.counts_messages("mail")
def deliver(message: dict[str, str]) -> None:
    """Hand one rendered message to the backend named by IDP_MAIL_BACKEND."""
    backend = current_app.config["IDP_MAIL_BACKEND"]
    if backend == "smtp":
        _smtp(message)
    elif backend == "outbox":
        write_outbox(current_app.config["IDP_OUTBOX_DIR"], message)
    elif backend == "console":
        print(f"--- mail to {message['to']}: {message['subject']}\n{message['text']}\n---", flush=True)
    else:
        raise ValueError(f"unknown IDP_MAIL_BACKEND {backend!r}")


def _smtp(message: dict[str, str]) -> None:
    cfg = current_app.config
    msg = EmailMessage()
    msg["From"] = message["from"]
    msg["To"] = message["to"]
    msg["Subject"] = message["subject"]
    msg["Message-ID"] = make_msgid(domain="idp")
    msg.set_content(message["text"])
    msg.add_alternative(message["html"], subtype="html")
    with smtplib.SMTP(cfg["IDP_SMTP_HOST"], cfg["IDP_SMTP_PORT"], timeout=cfg["IDP_SMTP_TIMEOUT"]) as smtp:
        if cfg["IDP_SMTP_STARTTLS"]:
            smtp.starttls(context=ssl.create_default_context())
        if cfg["IDP_SMTP_USER"]:
            smtp.login(cfg["IDP_SMTP_USER"], cfg["IDP_SMTP_PASSWORD"])
        smtp.send_message(msg)


def write_outbox(folder: str, message: dict[str, str]) -> Path:
    """Write one message as a JSON file (to, subject, text, html, sent_at) into the dev outbox."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    record = {**message, "sent_at": now.isoformat()}
    name = f"{now.strftime('%Y%m%dT%H%M%S%f')}-{os.urandom(4).hex()}.json"
    target = path / name
    target.write_text(json.dumps(record, indent=2))
    return target


def read_outbox(folder: str) -> list[dict[str, Any]]:
    """Every message in the dev outbox, newest first, each with its file ``id``."""
    path = Path(folder)
    if not path.is_dir():
        return []
    messages = []
    for file in sorted(path.glob("*.json"), reverse=True):
        record = json.loads(file.read_text())
        record["id"] = file.stem
        messages.append(record)
    return messages
