"""The development outbox: mail that would have been sent, readable in the browser (development only)."""

from flask import Blueprint, abort, current_app, render_template

from idp.jobs.mail import read_outbox

bp = Blueprint("dev", __name__, url_prefix="/dev")


@bp.get("/outbox")
def outbox():
    """List the messages in the dev outbox, newest first."""
    return render_template("dev/outbox.html", messages=read_outbox(current_app.config["IDP_OUTBOX_DIR"]))


@bp.get("/outbox/<message_id>")
def message(message_id: str):
    """Show one message of the dev outbox."""
    for record in read_outbox(current_app.config["IDP_OUTBOX_DIR"]):
        if record["id"] == message_id:
            return render_template("dev/message.html", message=record)
    abort(404)
