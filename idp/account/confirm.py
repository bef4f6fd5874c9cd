"""Removals ask first: a removal form posted without ``confirm=yes`` answers with a page that names what stops
working, whose button posts the same form again, confirmed. No script is needed, and the CSRF token of the first
post was already checked."""

from __future__ import annotations

from flask import render_template, request

from idp.login.forms import ConfirmForm


def confirmed() -> bool:
    """Whether this removal was posted from its confirmation page."""
    return request.form.get("confirm") == "yes"


def ask(question: str, consequence: str, button: str, back: str) -> tuple[str, int]:
    """The confirmation page of the removal posted to this address."""
    return render_template("account/confirm_remove.html", form=ConfirmForm(), title=question, question=question,
                           consequence=consequence, button=button, back=back, action=request.path), 200
