"""Text messages: through Twilio's Messages API, the dev outbox, or the console."""

from __future__ import annotations

import logging

from flask import current_app

from idp import metrics
from idp.jobs.mail import write_outbox

log = logging.getLogger("idp.sms")


def twilio_client():
    """The Twilio REST client; tests put a recording HTTP client in app.extensions['idp.twilio_http_client']."""
    from twilio.rest import Client

    cfg = current_app.config
    return Client(cfg["IDP_TWILIO_ACCOUNT_SID"], cfg["IDP_TWILIO_AUTH_TOKEN"],
                  http_client=current_app.extensions.get("idp.twilio_http_client"))


@metrics.counts_messages("sms")
def send_sms(to: str, body: str) -> None:
    """Deliver one text message to ``to`` (E.164) through IDP_SMS_BACKEND."""
    cfg = current_app.config
    backend = cfg["IDP_SMS_BACKEND"]
    if backend == "twilio":
        sender = {"messaging_service_sid": cfg["IDP_TWILIO_MESSAGING_SERVICE_SID"]} \
            if cfg["IDP_TWILIO_MESSAGING_SERVICE_SID"] else {"from_": cfg["IDP_TWILIO_FROM"]}
        message = twilio_client().messages.create(to=to, body=body, **sender)
        log.info("sms sent via twilio sid=%s", message.sid)
    elif backend == "outbox":
        write_outbox(cfg["IDP_OUTBOX_DIR"], {"to": to, "from": "SMS", "subject": "SMS", "text": body, "html": "",
                                             "channel": "sms"})
    elif backend == "console":
        print(f"--- sms to {to}: {body}", flush=True)
    else:
        raise ValueError(f"SMS is disabled (IDP_SMS_BACKEND={backend})")
