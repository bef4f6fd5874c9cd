"""The `idp` command line, through Flask's CLI runner: what an operator sees and what users then notice."""

from __future__ import annotations

import os
import re
import stat

import pytest

from idp.config import env_example
from tests.support import PASSWORD, ok, refused, sign_in, signed_in_email

NEW_PASSWORD = "a brand new passphrase for alice"
WRONG = "not the password at all, sorry"


def listing(cli) -> dict[str, tuple[str, set[str]]]:
    """`users list` as {email: (name, flags)}."""
    users = {}
    for line in ok(cli("users", "list")).splitlines():
        user_id, email, name, flags = line.split("\t")
        assert user_id.isdigit()
        users[email] = (name, set(filter(None, flags.split(","))))
    return users


def full_sign_in(app, email, password=PASSWORD):
    """Sign in through the hosted pages in a new browser; returns (browser, the email the account page shows)."""
    browser = app.test_client()
    response = sign_in(browser, email, password)
    if response.status_code == 302:
        browser.get(response.headers["Location"])
    return browser, signed_in_email(browser)


def refused_sign_in(app, email, password=PASSWORD) -> str:
    """The message a sign-in attempt that must fail shows."""
    browser = app.test_client()
    response = sign_in(browser, email, password)
    assert response.status_code == 200
    assert signed_in_email(browser) is None
    text = response.get_data(as_text=True)
    match = re.search(r"Incorrect email or password\.|Too many attempts\.[^<]*", text)
    assert match, text
    return match.group(0)


# --- users create ------------------------------------------------------------------------------------------------

def test_create_with_password_then_sign_in(app, cli):
    assert ok(cli("users", "create", "Carol@Example.COM", "--password", PASSWORD, "--verified")) == (
        "created carol@example.com\n")
    assert listing(cli) == {"carol@example.com": ("", {"verified"})}
    assert full_sign_in(app, "carol@example.com")[1] == "carol@example.com"
    assert refused_sign_in(app, "carol@example.com", WRONG) == "Incorrect email or password."


def test_create_with_password_from_stdin_and_every_option(app, cli):
    out = ok(cli("users", "create", "dana@example.com", "--password-stdin", "--verified", "--admin",
                 "--name", "Dana Scully", input=PASSWORD + "\n"))
    assert out == "created dana@example.com\n"
    assert listing(cli) == {"dana@example.com": ("Dana Scully", {"verified", "admin"})}
    assert full_sign_in(app, "dana@example.com")[1] == "dana@example.com"


def test_created_user_without_flags_is_unverified_and_not_admin(cli):
    ok(cli("users", "create", "erin@example.com", "--password-stdin", input=PASSWORD + "\n"))
    assert listing(cli) == {"erin@example.com": ("", set())}


def test_duplicate_email_is_refused_in_one_line(cli):
    ok(cli("users", "create", "frank@example.com", "--password", PASSWORD))
    line = refused(cli("users", "create", " FRANK@example.com", "--password", NEW_PASSWORD))
    assert line == "Error: a user with email frank@example.com already exists"
    assert list(listing(cli)) == ["frank@example.com"]


@pytest.mark.parametrize(("password", "reason"), [
    ("Password", "too common"),
    ("manchesterunited", "too common"),
    ("short but ok", "Use at least 15 characters."),
    ("grace.hopper-2024!", "Do not base the password on your name or email address."),
])
def test_weak_password_is_refused_and_no_user_is_created(cli, password, reason):
    line = refused(cli("users", "create", "grace.hopper@example.com", "--password", password))
    assert line.startswith("Error: weak password: ") and reason in line
    assert password not in line
    assert listing(cli) == {}


def test_create_needs_a_password_and_an_address(cli):
    assert refused(cli("users", "create", "hank@example.com")) == (
        "Error: a password is required (--password or --password-stdin)")
    assert refused(cli("users", "create", "hank@example.com", "--password-stdin", input="\n")) == (
        "Error: a password is required (--password or --password-stdin)")
    assert refused(cli("users", "create", "not-an-address", "--password", PASSWORD)) == (
        "Error: not an email address: not-an-address")
    assert listing(cli) == {}


def test_an_address_or_name_longer_than_the_columns_is_refused_in_one_line(cli):
    long_address = "x" * 310 + "@example.com"
    assert refused(cli("users", "create", long_address, "--password", PASSWORD)) == (
        f"Error: not an email address: {long_address}")
    assert refused(cli("users", "create", "ivy@example.com", "--password", PASSWORD, "--name", "I" * 201)) == (
        "Error: a name has at most 200 characters")
    assert listing(cli) == {}


# --- unknown users -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [
    ("users", "disable"),
    ("users", "enable"),
    ("users", "unlock"),
    ("users", "set-password", "--password-stdin"),
    ("audit", "tail", "--user"),
])
def test_unknown_user_is_refused_in_one_line(cli, make_user, command):
    make_user()
    line = refused(cli(*command, "nobody@example.com", input=NEW_PASSWORD + "\n"))
    assert line == "Error: no user with email nobody@example.com"


# --- users list, disable, enable -------------------------------------------------------------------------------

def test_list_shows_each_users_flags(cli, make_user):
    from idp.models import utcnow

    make_user(email="alice@example.com", name="Alice")
    make_user(email="bob@example.com", name="Bob", verified=False, is_admin=True)
    make_user(email="cy@example.com", name="Cy", disabled=True, locked_at=utcnow())
    assert listing(cli) == {
        "alice@example.com": ("Alice", {"verified"}),
        "bob@example.com": ("Bob", {"admin"}),
        "cy@example.com": ("Cy", {"verified", "disabled", "locked"}),
    }


def test_disable_ends_live_sessions_and_blocks_sign_in(app, cli, make_user):
    make_user()
    browser, email = full_sign_in(app, "alice@example.com")
    assert email == "alice@example.com"
    assert ok(cli("users", "disable", "alice@example.com")) == "disabled alice@example.com (1 sessions ended)\n"
    assert signed_in_email(browser) is None
    assert listing(cli)["alice@example.com"][1] == {"verified", "disabled"}
    assert refused_sign_in(app, "alice@example.com") == "Incorrect email or password."


def test_sessions_ended_by_disable_stay_ended_after_enable(app, cli, make_user):
    make_user()
    browser, _ = full_sign_in(app, "alice@example.com")
    ok(cli("users", "disable", "alice@example.com"))
    assert ok(cli("users", "enable", "alice@example.com")) == "enabled alice@example.com\n"
    assert signed_in_email(browser) is None  # the old cookie does not come back to life
    assert full_sign_in(app, "alice@example.com")[1] == "alice@example.com"


# --- users set-password ---------------------------------------------------------------------------------------

def test_set_password_reads_stdin_and_ends_sessions(app, cli, make_user):
    make_user()
    browser, _ = full_sign_in(app, "alice@example.com")
    out = ok(cli("users", "set-password", "alice@example.com", "--password-stdin", input=NEW_PASSWORD + "\n"))
    assert out == "password set for alice@example.com (1 sessions ended)\n"
    assert NEW_PASSWORD not in out
    assert signed_in_email(browser) is None
    assert refused_sign_in(app, "alice@example.com", PASSWORD) == "Incorrect email or password."
    assert full_sign_in(app, "alice@example.com", NEW_PASSWORD)[1] == "alice@example.com"


def test_set_password_refuses_a_weak_one_and_keeps_the_old(app, cli, make_user):
    make_user()
    line = refused(cli("users", "set-password", "alice@example.com", "--password-stdin", input="password\n"))
    assert line.startswith("Error: weak password: ")
    assert full_sign_in(app, "alice@example.com", PASSWORD)[1] == "alice@example.com"


def test_set_password_never_takes_the_password_as_an_argument(cli, make_user):
    make_user()
    result = cli("users", "set-password", "alice@example.com", "--password", NEW_PASSWORD)
    assert result.exit_code == 2  # usage error: there is no such option
    assert "No such option '--password'" in result.stderr


# --- users unlock ---------------------------------------------------------------------------------------------

def test_unlock_lifts_the_lock_so_the_user_can_sign_in_again(make_app):
    app = make_app(IDP_LOCKOUT_THRESHOLD=5)
    cli = app.test_cli_runner()
    from tests.support import make_user_in

    make_user_in(app)
    for _ in range(5):
        assert refused_sign_in(app, "alice@example.com", WRONG) == "Incorrect email or password."
    assert "locked" in cli.invoke(args=["users", "list"]).stdout
    refused_sign_in(app, "alice@example.com")  # even the right password is refused now
    result = cli.invoke(args=["users", "unlock", "alice@example.com"])
    assert result.exit_code == 0 and result.stdout == "unlocked alice@example.com\n"
    assert "locked" not in cli.invoke(args=["users", "list"]).stdout
    # The operator unlocked the account: the user can sign in now, not after the failed-attempt delays run out.
    assert full_sign_in(app, "alice@example.com")[1] == "alice@example.com"


def test_unlock_of_a_locked_user_from_the_database(app, cli, make_user):
    from idp.models import utcnow

    make_user(locked_at=utcnow(), failed_logins=50)
    assert refused_sign_in(app, "alice@example.com") == "Incorrect email or password."
    ok(cli("users", "unlock", "alice@example.com"))
    assert full_sign_in(app, "alice@example.com")[1] == "alice@example.com"


# --- demo -----------------------------------------------------------------------------------------------------

def _demo_password(output: str) -> str:
    match = re.search(r"^Demo password: (\S+)", output, re.MULTILINE)
    assert match, output
    return match.group(1)


def test_demo_is_idempotent_and_its_password_signs_in(app, cli, tmp_path):
    app.instance_path = str(tmp_path / "instance")  # keep the demo credential out of the work tree
    os.makedirs(app.instance_path)
    first = ok(cli("demo"))
    second = ok(cli("demo"))
    password = _demo_password(first)
    assert _demo_password(second) == password
    assert "Demo user:     demo@example.com" in first
    assert "Sign in at:    http://localhost/login" in first
    assert "changed since" not in first + second
    assert len(password) >= 15
    assert list(listing(cli)) == ["demo@example.com", "admin@example.com"]
    credential = tmp_path / "instance" / "demo-password"
    assert stat.S_IMODE(os.stat(credential).st_mode) == 0o600
    assert full_sign_in(app, "demo@example.com", password)[1] == "demo@example.com"


def test_demo_names_an_admin_whose_printed_totp_key_opens_the_console(app, cli, tmp_path):
    from idp.models import utcnow
    from idp.security.otp import totp_code_at
    from tests.support import follow

    app.instance_path = str(tmp_path / "instance")
    os.makedirs(app.instance_path)
    out = ok(cli("demo"))
    key = re.search(r"authenticator app with the key ([A-Z2-7]+)", out).group(1)
    assert "admin@example.com" in out and "http://localhost/admin/" in out and "otpauth://totp/" in out
    assert key in ok(cli("demo"))  # the same key each run
    browser = app.test_client()
    follow(browser, browser.get("/login?next=/admin/"), email="admin@example.com", password=_demo_password(out),
           answers={"totp": lambda page: {"code": totp_code_at(key, utcnow())}})
    assert browser.get("/admin/").status_code == 200


def test_demo_says_when_its_password_was_changed(app, cli, tmp_path):
    app.instance_path = str(tmp_path / "instance")
    os.makedirs(app.instance_path)
    ok(cli("demo"))
    ok(cli("users", "set-password", "demo@example.com", "--password-stdin", input=NEW_PASSWORD + "\n"))
    assert "(changed since; use yours)" in ok(cli("demo"))


def test_demo_uses_the_configured_password(make_app, tmp_path):
    app = make_app(IDP_DEMO_PASSWORD="the configured demo passphrase")
    app.instance_path = str(tmp_path / "instance")
    os.makedirs(app.instance_path)
    result = app.test_cli_runner().invoke(args=["demo"])
    assert "Demo password: the configured demo passphrase\n" in ok(result)
    assert not (tmp_path / "instance" / "demo-password").exists()
    assert full_sign_in(app, "demo@example.com", "the configured demo passphrase")[1] == "demo@example.com"


# --- audit tail -----------------------------------------------------------------------------------------------

def _events(output: str) -> list[tuple[str, str]]:
    rows = []
    for line in output.splitlines():
        at, event, email, *_ = line.split("\t")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\+00:00)?", at), at
        rows.append((event, email))
    return rows


def test_audit_tail_prints_recent_events_oldest_first(cli):
    ok(cli("users", "create", "alice@example.com", "--password", PASSWORD))
    ok(cli("users", "create", "bob@example.com", "--password", NEW_PASSWORD))
    ok(cli("users", "disable", "bob@example.com"))
    out = ok(cli("audit", "tail"))
    assert _events(out) == [("user.created", "alice@example.com"), ("user.created", "bob@example.com"),
                            ("user.disabled", "bob@example.com")]
    assert "via=cli" in out
    assert PASSWORD not in out and NEW_PASSWORD not in out
    assert _events(ok(cli("audit", "tail", "-n", "1"))) == [("user.disabled", "bob@example.com")]


def test_audit_tail_filters_by_user(app, cli, make_user):
    make_user(email="alice@example.com")
    ok(cli("users", "create", "bob@example.com", "--password", PASSWORD))
    refused_sign_in(app, "alice@example.com", WRONG)
    ok(cli("users", "disable", "bob@example.com"))
    assert _events(ok(cli("audit", "tail", "--user", "Alice@Example.com"))) == [("login.failure", "alice@example.com")]
    assert _events(ok(cli("audit", "tail", "--user", "bob@example.com"))) == [
        ("user.created", "bob@example.com"), ("user.disabled", "bob@example.com")]


# --- config-doc, worker ------------------------------------------------------------------------------------------

def test_config_doc_prints_every_setting(cli):
    out = ok(cli("config-doc"))
    assert "\nIDP_ISSUER=http://localhost:5000\n" in out
    assert out == env_example()


def test_worker_without_redis_says_it_is_not_needed(make_app):
    app = make_app(IDP_REDIS_URL="")
    result = app.test_cli_runner().invoke(args=["worker", "--burst"])
    assert refused(result) == "Error: IDP_REDIS_URL is not set: jobs run inline, no worker is needed"
