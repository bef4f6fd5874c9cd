"""idp served by gunicorn in subprocesses, and a browser in front of them.

For the tests that need real processes: several instances on one PostgreSQL and one Redis (tests/test_scale_out.py),
and the previous release's code running on this release's schema (tests/test_migrations.py). Each instance binds a
port the kernel picks (read back from gunicorn's log), so parallel test workers never race for one; its log goes
to a file that ``Instance.log_since`` returns for a failing test; ``stop`` ends its whole process group.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import requests

from tests.support import PASSWORD, pkce_pair, query_params, screen_action

ROOT = Path(__file__).resolve().parent.parent
# Bounds of every wait: a start-up that takes longer is a failure, not something to wait out.
START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 30.0
_LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")


class InstanceFailed(AssertionError):
    """An instance did not start, or stopped on its own; the message holds its log."""


class Instance:
    """One ``gunicorn wsgi:app`` with its own environment, on a loopback port of its own."""

    def __init__(self, name: str, env: dict[str, str], folder: Path, *, workers: int = 2, code: Path = ROOT):
        self.name = name
        self.code = code  # the tree whose wsgi.py and idp package run (PYTHONPATH), this one or an older release's
        self.folder = folder
        self.workers = workers
        self.env = env
        self.log_path = folder / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        assert self.port is not None, f"{self.name} is not started"
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        env = {**subprocess_env(self.code), **self.env}
        command = [sys.executable, "-m", "gunicorn", "--workers", str(self.workers), "--bind", "127.0.0.1:0",
                   # gunicorn 27 opens a control socket at one fixed path in $HOME by default: two instances on one
                   # host would take it from each other.
                   "--no-control-socket", "--timeout", "60", "--graceful-timeout", "5", "wsgi:app"]
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            # A session of its own: stop() signals the master and its workers as one group.
            self.process = subprocess.Popen(command, cwd=self.folder, env=env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until gunicorn says where it listens and the app answers discovery (polled, bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if self.port is None:
                found = _LISTENING.search(self.log())
                if found:
                    self.port = int(found.group(1))
            if self.port is not None:
                try:
                    answer = requests.get(self.url + "/.well-known/openid-configuration", timeout=5)
                    if answer.status_code == 200:
                        return
                except requests.RequestException:
                    pass
            time.sleep(0.2)
        raise InstanceFailed(f"{self.name} was not ready after {timeout:.0f} s\n{self.log()}")

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise InstanceFailed(f"{self.name} exited with {self.process.returncode}\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL if it is still there after STOP_TIMEOUT; reaps the master."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(process.pid, signal.SIGKILL)  # workers the master left behind, if any
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_since(self, offset: int) -> str:
        return self.log()[offset:]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def subprocess_env(code: Path = ROOT) -> dict[str, str]:
    """The environment of an idp subprocess: this machine's, less every IDP_* variable (each test says what it
    sets), with ``code`` first on the import path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(code)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # nothing written into an exported older tree or this checkout
    return env


@contextmanager
def running(*instances: Instance) -> Iterator[tuple[Instance, ...]]:
    """Start the instances together, wait for each, and stop every one of them however the block ends."""
    try:
        for instance in instances:
            instance.start()
        for instance in instances:
            instance.wait_ready()
        yield instances
    finally:
        for instance in instances:
            instance.stop()


def run_cli(args: list[str], env: dict[str, str], folder: Path, *, code: Path = ROOT, input: str | None = None,
            timeout: float = 120.0) -> subprocess.CompletedProcess:
    """``idp ARGS`` as an operator runs it, in a process of its own (``code``'s idp, settings from ``env``)."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-c", "from idp.console import main; main()", *args], cwd=folder,
                          env={**subprocess_env(code), **env}, input=input,
                          stdin=subprocess.DEVNULL if input is None else None, capture_output=True, text=True,
                          timeout=timeout)


class Browser:
    """One cookie jar in front of several instances, as a browser behind a load balancer: every request goes to
    the instance the test names and carries what nginx passes on, the public host name (the issuer's) in Host and
    the issuer's scheme in X-Forwarded-Proto (gunicorn believes it from loopback: --forwarded-allow-ips)."""

    def __init__(self, issuer: str):
        self.issuer = issuer
        self.session = requests.Session()
        parts = urlsplit(issuer)
        self.session.headers.update({"Host": parts.netloc, "X-Forwarded-Proto": parts.scheme})

    def get(self, instance: Instance, path: str, **kwargs) -> requests.Response:
        return self.session.get(instance.url + path, allow_redirects=False, timeout=REQUEST_TIMEOUT, **kwargs)

    def post(self, instance: Instance, path: str, **kwargs) -> requests.Response:
        return self.session.post(instance.url + path, allow_redirects=False, timeout=REQUEST_TIMEOUT, **kwargs)

    def local(self, location: str) -> str | None:
        """The path of a redirect that stays on the IdP (relative, or absolute on the issuer), else None.

        An absolute redirect naming a backend's own address would send a real browser around the load balancer:
        it fails here."""
        parts = urlsplit(location)
        if not parts.netloc:
            return location
        assert not parts.netloc.startswith("127.0.0.1"), f"a redirect names a backend, not the issuer: {location}"
        if f"{parts.scheme}://{parts.netloc}" == self.issuer:
            return parts.path + (f"?{parts.query}" if parts.query else "")
        return None

    def close(self) -> None:
        self.session.close()


def page_text(html: str) -> str:
    """What a page says in its <main>, tags stripped (for assertion messages)."""
    main = re.search(r"<main.*?</main>", html, re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", main.group(0) if main else html).split())[:800]


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def step_name(html: str) -> str | None:
    """The sign-in screen a page shows (its hidden "step" field), or None."""
    found = re.search(r'name="step" value="([a-z_]+)"', html)
    return found.group(1) if found else None


class Screen:
    """A hosted sign-in screen: where its answer is posted (/login/<tid>, wherever it was shown: the first screen is
    the answer to the request that began the sign-in), its step name, and its page."""

    def __init__(self, response: requests.Response):
        self.path = screen_action(response.text)
        self.response = response
        self.html = response.text
        self.step = step_name(self.html)


def follow(browser: Browser, via: Instance, response: requests.Response, *, hops: int = 20) -> Screen | str:
    """Follow the IdP's redirects on instance ``via``: the next sign-in screen, or the URL that leaves the IdP (the
    client's redirect URI)."""
    for _ in range(hops):
        if response.status_code in (301, 302, 303):
            location = response.headers["Location"]
            path = browser.local(location)
            if path is None:
                return location
            response = browser.get(via, path)
            continue
        assert response.status_code == 200, (response.status_code, page_text(response.text))
        screen = Screen(response)
        assert screen.step is not None, f"not a sign-in screen: {page_text(response.text)}"
        return screen
    raise AssertionError("redirect loop")


def answer(browser: Browser, via: Instance, screen: Screen, **fields) -> requests.Response:
    """Post the screen's form to instance ``via`` (which may not be the one that showed it)."""
    data = {"csrf_token": csrf_token(screen.html), "step": screen.step, **fields}
    return browser.post(via, screen.path, data=data)


# --- the code flow over HTTP -------------------------------------------------------------------------------------

RP = "https://rp.example/cb"


def authorize_path(client_id: str, challenge: str, **extra) -> str:
    """An authorization request (code flow, PKCE S256, a fresh nonce unless given) for the redirect URI RP."""
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": RP, "scope": "openid",
             "state": "st-1", "nonce": uuid.uuid4().hex, "code_challenge": challenge, "code_challenge_method": "S256",
             **extra}
    return "/authorize?" + urlencode(query)


def redeem(browser: Browser, via: Instance, client: tuple[str, str], code: str, verifier: str) -> dict:
    response = browser.post(via, "/token", auth=client, data={"grant_type": "authorization_code", "code": code,
                                                               "redirect_uri": RP, "code_verifier": verifier})
    assert response.status_code == 200, (via.name, response.text)
    return response.json()


def refresh(browser: Browser, via: Instance, client: tuple[str, str], token: str) -> dict:
    response = browser.post(via, "/token", auth=client, data={"grant_type": "refresh_token", "refresh_token": token})
    assert response.status_code == 200, (via.name, response.text)
    return response.json()


def userinfo(browser: Browser, via: Instance, access_token: str) -> requests.Response:
    return browser.get(via, "/userinfo", headers={"Authorization": f"Bearer {access_token}"})


def kid_of(token: str) -> str:
    """The `kid` in a JWT's header: which key signed it."""
    head = token.split(".", 1)[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"]


def sign_in_for_tokens(browser: Browser, via: Instance, client: tuple[str, str], email: str, **params) -> dict:
    """A password sign-in and code flow at one instance (a first-party client: no consent); the token response."""
    verifier, challenge = pkce_pair()
    screen = follow(browser, via, browser.get(via, authorize_path(client[0], challenge, **params)))
    assert isinstance(screen, Screen) and screen.step == "password", screen
    left = follow(browser, via, answer(browser, via, screen, email=email, password=PASSWORD))
    assert isinstance(left, str) and left.startswith(RP + "?"), left
    return redeem(browser, via, client, query_params(left)["code"], verifier)
