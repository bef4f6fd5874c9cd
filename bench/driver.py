"""The Python load driver of bench/run.py: browser sign-ins (many requests with cookies and forms), and a
rate-limited (open-loop) driver for latency at a fixed request rate. Loopback only, bounded in count and time.

wrk drives the single-request scenarios; a complete sign-in is a conversation (authorization request, sign-in
page with its CSRF token and cookies, the password, maybe a TOTP code, the redirect with the code, the token
request), which is plainer as threads of keep-alive http.client connections, each a fresh "browser".
"""

from __future__ import annotations

import base64
import hashlib
import html
import http.client
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode, urlsplit

import pyotp

LOOPBACK = "127.0.0.1"
INPUT = re.compile(r"<input\b[^>]*>", re.I)
ATTR = re.compile(r'(\w[\w-]*)="([^"]*)"')
FORM_ACTION = re.compile(r'<form\b[^>]*method="post"[^>]*action="([^"]+)"', re.I)


class FlowError(RuntimeError):
    """A sign-in did not end with tokens."""


def basic(client_id: str, secret: str) -> str:
    return base64.b64encode(f"{client_id}:{secret}".encode()).decode()


class Browser:
    """One browser: a keep-alive connection to a loopback port, its cookies, the proxy headers."""

    def __init__(self, port: int, host: str):
        self.port = port
        self.host = host
        self.cookies: dict[str, str] = {}
        self.conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)

    def close(self) -> None:
        self.conn.close()

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        hdrs = {"Host": self.host, "X-Forwarded-Proto": "https", "User-Agent": "idp-bench/driver (X11; Linux)"}
        if self.cookies:
            # Sent by hand: the cookies are Secure (__Host-) and this hop is plain http on loopback.
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        data = None
        if body is not None:
            data = urlencode(body)
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        hdrs.update(headers or {})
        try:
            self.conn.request(method, path, body=data, headers=hdrs)
            response = self.conn.getresponse()
            payload = response.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=30)
            raise
        for header in response.headers.get_all("Set-Cookie") or []:
            pair, _, attrs = header.partition(";")
            name, _, value = pair.strip().partition("=")
            if "max-age=0" in attrs.lower() or "expires=thu, 01 jan 1970" in attrs.lower() or not value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return response.status, response.headers, payload


def _path(location: str) -> str:
    parts = urlsplit(location)
    return parts.path + ("?" + parts.query if parts.query else "")


def _form(page: str) -> tuple[str, dict[str, str], set[str]]:
    """The first POST form's action, its hidden fields and the names of its visible inputs (attribute values
    unescaped, as a browser reads them: a hidden ``next`` URL has its ``&`` written ``&amp;``)."""
    match = FORM_ACTION.search(page)
    if not match:
        raise FlowError("no form on the page")
    start = match.start()
    end = page.find("</form>", start)
    hidden, visible = {}, set()
    for tag in INPUT.findall(page[start:end]):
        attrs = {name: html.unescape(value) for name, value in ATTR.findall(tag)}
        if "name" not in attrs:
            continue
        if attrs.get("type") == "hidden":
            hidden[attrs["name"]] = attrs.get("value", "")
        else:
            visible.add(attrs["name"])
    return html.unescape(match.group(1)), hidden, visible


@dataclass
class Provider:
    """How to sign in at one server: its port, Host, paths, client and the extra authorization parameters."""

    name: str
    port: int
    host: str
    authorize_path: str
    token_path: str
    client_id: str
    client_secret: str
    redirect_uri: str
    extra: dict[str, str] = field(default_factory=dict)
    pkce: bool = False  # send an S256 code_challenge and its code_verifier (RFC 7636)


def sign_in(provider: Provider, email: str, password: str, totp_seed: str | None = None, browser=None) -> dict:
    """One complete sign-in by a fresh browser (``browser``: one with Browser's request/close, for a server in the
    same process); returns the token response. Raises FlowError."""
    browser = browser or Browser(provider.port, provider.host)
    try:
        state = secrets.token_urlsafe(8)
        params = {"response_type": "code", "client_id": provider.client_id, "redirect_uri": provider.redirect_uri,
                  "scope": "openid profile email", "state": state, "nonce": secrets.token_urlsafe(8),
                  **provider.extra}
        exchange = {"grant_type": "authorization_code", "redirect_uri": provider.redirect_uri}
        if provider.pkce:
            verifier = secrets.token_urlsafe(48)
            digest = hashlib.sha256(verifier.encode()).digest()
            params.update(code_challenge=base64.urlsafe_b64encode(digest).rstrip(b"=").decode(),
                          code_challenge_method="S256")
            exchange["code_verifier"] = verifier
        # A browser sends its Origin with a form POST; Django's CSRF check refuses an https POST with neither
        # Origin nor Referer.
        origin = {"Origin": f"https://{provider.host}"}
        method, path, body = "GET", provider.authorize_path + "?" + urlencode(params), None
        code, sent_password = None, False
        for _ in range(12):  # bounded: a sign-in is at most a dozen hops
            status, headers, payload = browser.request(method, path, body, origin if method == "POST" else None)
            if status in (301, 302, 303, 307):
                location = headers["Location"]
                if location.startswith(provider.redirect_uri):
                    query = parse_qs(urlsplit(location).query)
                    if "code" not in query or query.get("state") != [state]:
                        raise FlowError(f"redirect without a code: {location[:200]}")
                    code = query["code"][0]
                    break
                method, path, body = "GET", _path(location), None
                continue
            if status != 200:
                raise FlowError(f"{status} on {path[:80]}: {payload[:200]!r}")
            action, hidden, visible = _form(payload.decode())
            if "password" in visible:
                if sent_password:  # the sign-in form again (Django shows it with its error): refused
                    raise FlowError(f"password refused on {path[:80]}")
                sent_password = True
                # The account's name is the email address; the field is "email" (idp) or "username" (Django).
                login = "email" if "email" in visible else "username"
                body = {**hidden, login: email, "password": password}
            elif "code" in visible and totp_seed:
                body = {**hidden, "code": pyotp.TOTP(totp_seed).now()}
            else:
                raise FlowError(f"unexpected form {sorted(visible)} on {path[:80]}: {payload[:300]!r}")
            method, path = "POST", _path(action)
        if code is None:
            raise FlowError("no code after 12 hops")
        status, _, payload = browser.request(
            "POST", provider.token_path, {**exchange, "code": code},
            {"Authorization": "Basic " + basic(provider.client_id, provider.client_secret)})
        if status != 200:
            raise FlowError(f"token {status}: {payload[:200]!r}")
        return json.loads(payload)
    finally:
        browser.close()


class TotpUsers:
    """TOTP users handed out so that none signs in twice within one 30-second step (codes are single-use)."""

    def __init__(self, seeds: list[str]):
        self.seeds = seeds
        self.last_step = [-1] * len(seeds)
        self.next = 0
        self.lock = threading.Lock()

    def take(self) -> tuple[int, str] | None:
        step = int(time.time()) // 30
        with self.lock:
            for _ in range(len(self.seeds)):
                i = self.next
                self.next = (self.next + 1) % len(self.seeds)
                # One step of margin: the code is computed a moment later and the server accepts one step of drift.
                if self.last_step[i] < step - 1:
                    self.last_step[i] = step + 1
                    return i + 1, self.seeds[i]
        return None


@dataclass
class LoopResult:
    count: int
    errors: int
    seconds: float
    latencies: list[float]
    first_error: str | None = None

    def summary(self) -> dict:
        lat = sorted(self.latencies)
        return {"requests": self.count, "errors": self.errors, "seconds": round(self.seconds, 3),
                "rps": self.count / self.seconds if self.seconds else 0.0,
                "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000,
                "first_error": self.first_error}


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


class _Tally:
    """What the worker threads of one loop record: latencies of the successes, the count and first of the errors."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error: str | None = None

    def ok(self, latency: float) -> None:
        with self.lock:
            self.latencies.append(latency)

    def failed(self, text: str) -> None:
        with self.lock:
            self.errors += 1
            self.first_error = self.first_error or text

    def result(self, took: float) -> LoopResult:
        return LoopResult(len(self.latencies), self.errors, took, self.latencies, self.first_error)


def _run_threads(pool: list[threading.Thread], seconds: float) -> None:
    for t in pool:
        t.start()
    for t in pool:
        t.join(seconds + 60)


def closed_loop(task: Callable[[int], object], *, threads: int, seconds: float, max_count: int) -> LoopResult:
    """``threads`` workers run ``task(n)`` back to back until ``seconds`` pass or ``max_count`` tasks started."""
    tally = _Tally()
    started = [0]
    deadline = time.monotonic() + seconds

    def worker():
        while time.monotonic() < deadline:
            with tally.lock:
                if started[0] >= max_count:
                    return
                started[0] += 1
                n = started[0]
            t0 = time.perf_counter()
            try:
                task(n)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and the first one shown
                tally.failed(f"{type(exc).__name__}: {exc}"[:400])
                continue
            tally.ok(time.perf_counter() - t0)

    t_start = time.monotonic()
    _run_threads([threading.Thread(target=worker, daemon=True) for _ in range(threads)], seconds)
    return tally.result(time.monotonic() - t_start)


class HostProbe:
    """What the host does to everyone during a round: a thread that sleeps 5 ms at a time and records how late it
    wakes (CPU taken by other work or other guests), and every 50 ms writes and fsyncs 4 KiB in ``folder``
    (the disk PostgreSQL flushes its commits to, when on the same filesystem) and records how long that takes.

        with HostProbe(folder) as probe:
            ... the round ...
        probe.summary()  # {"wake_late_p99_ms", "wake_late_max_ms", "fsync_p50_ms", "fsync_p99_ms", "fsync_max_ms"}
    """

    SLEEP = 0.005

    def __init__(self, folder):
        self.path = os.path.join(str(folder), f"probe-{os.getpid()}-{threading.get_ident()}")
        self.late: list[float] = []
        self.fsync: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        block = os.urandom(4096)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            n = 0
            while not self.stop.is_set():
                t = time.perf_counter()
                time.sleep(self.SLEEP)
                self.late.append(time.perf_counter() - t - self.SLEEP)
                n += 1
                if n % 10 == 0:
                    t = time.perf_counter()
                    os.pwrite(fd, block, 0)
                    os.fsync(fd)
                    self.fsync.append(time.perf_counter() - t)
        finally:
            os.close(fd)
            os.unlink(self.path)

    def __enter__(self) -> HostProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)

    def summary(self) -> dict:
        late, fsync = sorted(self.late), sorted(self.fsync)
        return {"wake_late_p99_ms": percentile(late, 99) * 1000, "wake_late_max_ms": (late[-1] if late else 0) * 1000,
                "fsync_p50_ms": percentile(fsync, 50) * 1000, "fsync_p99_ms": percentile(fsync, 99) * 1000,
                "fsync_max_ms": (fsync[-1] if fsync else 0) * 1000}


def open_loop(make_request: Callable[[Browser], tuple[int, bytes]], *, port: int, host: str, rate: float,
              seconds: float, threads: int) -> LoopResult:
    """Requests at a fixed total ``rate`` (per second) for ``seconds``; latency counts from the scheduled send
    time, so a server that falls behind shows its queueing (no coordinated omission)."""
    tally = _Tally()
    interval = threads / rate
    t0 = time.perf_counter() + 0.05

    def worker(k: int):
        browser = Browser(port, host)
        n = 0
        try:
            while True:
                scheduled = t0 + (k / threads) * interval + n * interval
                if scheduled - t0 >= seconds:
                    return
                n += 1
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                try:
                    status, payload = make_request(browser)
                    ok = status == 200
                except Exception as exc:  # noqa: BLE001
                    ok, payload = False, repr(exc).encode()
                if ok:
                    tally.ok(time.perf_counter() - scheduled)
                else:
                    tally.failed(payload[:300].decode(errors="replace"))
        finally:
            browser.close()

    _run_threads([threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)], seconds)
    return tally.result(time.perf_counter() - t0)
