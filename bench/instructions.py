"""Instructions per request of idp's hot paths, counted by callgrind: a figure the host's noise does not move.

    .venv/bin/python bench/instructions.py [--only cc,refresh,...] [--requests N]

The bench's throughput figures drift by 10-30% with what else the shared host is doing, which hides a change of a
few percent. This counts the CPU instructions that one request costs idp's own process, in process (Flask's test
client, no HTTP server), on the local PostgreSQL and Redis, in production mode, seeded like bench/run.py: the same
code gives the same count to a fraction of a percent, so two commits compare on any host. It does not count
PostgreSQL's or Redis's own work (bench/run.py's storage column does), nor gunicorn's.

Instructions are not time: RSA's big-number arithmetic retires several instructions per cycle, Python's interpreter
far fewer, so an RS256 signature weighs about three times more here than in seconds. Compare the same scenario
across commits, not scenarios with each other. The sign-in's argon2id verification is counted apart and left out
of its figure: it is fixed by the password policy and would hide the rest of the sign-in by twenty to one.

The floor_* scenarios send the same requests, with the same tokens, to bench/floor_tokens.py (floor_signin: the same
ten sign-ins to bench/floor_signin.py): a hand-written Flask app on the same stack (SQLAlchemy Core on psycopg2,
joserfc) and the same database that does only what the protocol requires of them. idp's figure over its
floor's (the table's last column) is what idp's own code and its libraries' machinery add; the floor is what a
minimal app on the same libraries spends.

``--without promises,csrf,cors,checks,authlib,session`` takes those parts out of idp's app once its tokens are made
(WITHOUT below: hooks removed from Flask's hook registries; for userinfo and introspection, views on idp's own
pieces instead of Authlib's endpoints, and their token lookup on a connection of its own instead of
Flask-SQLAlchemy's session) and counts the same requests: what each part costs, which a profiler's share only
estimates. A measurement, not a way to run idp: without them it keeps fewer promises.

Needs valgrind and gcc (the helper that turns counting on and off around the measured requests is compiled on
the fly from valgrind's callgrind.h). About a minute per scenario.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
SCENARIOS = ("client_credentials", "refresh", "introspection", "userinfo", "discovery", "jwks", "signin",
             "floor_client_credentials", "floor_refresh", "floor_introspection", "floor_userinfo", "floor_signin")
# The stack's floor of a scenario (bench/floor_tokens.py, and bench/floor_signin.py for the sign-in): the same
# request, on the same tokens, users, client and database, to a hand-written Flask app that does only what the
# protocol requires of it.
FLOORS = {"floor_client_credentials": "client_credentials", "floor_refresh": "refresh",
          "floor_introspection": "introspection", "floor_userinfo": "userinfo", "floor_signin": "signin"}
# What ``--without`` can take out of idp's app before the counted requests (after the sign-ins that make the tokens),
# to say what each part of a request costs: the hooks by their qualified names in Flask's public hook registries.
# Nothing here is a way to run idp: it answers the counted requests the same, but keeps fewer promises.
WITHOUT = {
    # SECURITY.md 16 and 33, issue 20: the request id and line, the metrics, the security headers, and Flask-Limiter's
    # after-request headers and teardown (its before-request check is under "checks").
    "promises": {"idp.logs._begin", "idp.logs._finish", "idp.metrics._started", "idp.metrics._answered",
                 "idp.http.security_headers", "flask_limiter._extension.Limiter.__inject_headers",
                 "flask_limiter._extension.Limiter.__release_context"},
    "csrf": {"flask_wtf.csrf.CSRFProtect.init_app.<locals>.csrf_protect"},  # Flask-WTF's check (exempt views too)
    "cors": {"idp.oidc.views.cors", "idp.account.api.cors"},
    # The NUL refusal (SECURITY.md 31), the logout page's frame sources, the rate limiter's before-request check
    # (it returns at once on an unlimited endpoint) and the jobs' teardown.
    "checks": {"idp.http.refuse_nul", "idp.oidc.logout._frame_sources", "idp.extensions._Limiter._check_request_limit",
               "idp.jobs._forgotten"},
    # userinfo and introspection answered by views that call idp's own token lookup, claims, client checks and
    # introspection answer (what Authlib's endpoints call) without Authlib's endpoints, request objects, resource
    # protector and client authentication.
    "authlib": set(),
    # with "authlib": those views read the token on a connection of their own (autocommit, as reads_only) instead of
    # Flask-SQLAlchemy's session, whose teardown is taken out with it.
    "session": {"flask_sqlalchemy.extension.SQLAlchemy._teardown_session"},
}
HELPER = """#include <valgrind/callgrind.h>
void count_on(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }
void count_off(void) { CALLGRIND_DUMP_STATS; CALLGRIND_STOP_INSTRUMENTATION; }
"""


class WSGIBrowser:
    """driver.Browser's interface over Flask's test client: one fresh browser, its cookies kept by the client."""

    def __init__(self, app, host: str):
        self.http = app.test_client()
        self.base_url = f"https://{host}"

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        response = self.http.open(path, method=method, data=body, base_url=self.base_url,
                                  headers={"User-Agent": "idp-bench/instructions", **(headers or {})})
        return response.status_code, response.headers, response.get_data()

    def close(self) -> None:
        """Nothing to release."""


def child(scenario: str, requests: int, helper: str) -> None:
    """Under callgrind: set up, warm up, then count ``requests`` requests (and, for signin, one hash apart)."""
    sys.path.insert(0, str(BENCH.parent))  # this tree's idp, whichever tree the virtual environment installed
    import driver

    from idp import create_app
    from idp.security.passwords import verify_password

    seed = json.loads(os.environ["BENCH_SEED"])
    app = create_app()
    host = urlsplit(app.config["IDP_ISSUER"]).netloc
    counter = ctypes.CDLL(helper)
    provider = driver.Provider("idp", 0, host, "/authorize", "/token", seed["client_id"], seed["client_secret"],
                               seed["redirect_uri"])
    users = [f"pw-{i}@bench.example" for i in range(1, seed["users"] + 1)]
    basic = {"Authorization": "Basic " + driver.basic(seed["client_id"], seed["client_secret"])}
    signed_in = [0]

    def sign_in(at=app) -> dict:
        """One complete sign-in by a fresh browser at ``at`` (idp's app, or the sign-in's floor app)."""
        signed_in[0] += 1
        return driver.sign_in(provider, users[signed_in[0] % len(users)], seed["password"],
                              browser=WSGIBrowser(at, host))

    tokens = [sign_in() for _ in range(4)]
    subjects = [_unverified_claims(token["access_token"])["sub"] for token in tokens]
    refresh = [tokens[0]["refresh_token"]]  # the one to present next (each answer's replaces it: rotation)
    rotated = [refresh[0]]  # the one the next answer checked must have replaced
    target = app
    if scenario in FLOORS:  # the same tokens, to the floor app on the same database (after the sign-ins made the keys)
        import floor_signin
        import floor_tokens

        floor = floor_signin if scenario == "floor_signin" else floor_tokens
        target = floor.create_app(app.config["SQLALCHEMY_DATABASE_URI"], app.config["IDP_ISSUER"],
                                  app.config["IDP_SECRET_KEY"],
                                  **{name: app.config[f"IDP_{name.upper()}"] for name in floor.LIFETIMES})
    if scenario not in FLOORS:
        _take_out(app, set(_without_for(scenario, os.environ.get("BENCH_WITHOUT", "").split(","))))
    browser = WSGIBrowser(target, host)
    kind = FLOORS.get(scenario, scenario)

    def one(n: int) -> tuple[int, int, bytes]:
        if kind == "signin":
            sign_in(target)  # (checked by the driver: a sign-in that ends without tokens raises FlowError)
            return n, 200, b""
        if kind == "client_credentials":
            status, _, body = browser.request("POST", "/token", {"grant_type": "client_credentials"}, basic)
        elif kind == "refresh":
            status, _, body = browser.request("POST", "/token", {"grant_type": "refresh_token",
                                                                 "refresh_token": refresh[0]}, basic)
            refresh[0] = json.loads(body).get("refresh_token", refresh[0])
        elif kind == "introspection":
            status, _, body = browser.request("POST", "/introspect", {"token": tokens[n % 4]["access_token"]}, basic)
        elif kind == "userinfo":
            status, _, body = browser.request("GET", "/userinfo", None,
                                              {"Authorization": "Bearer " + tokens[n % 4]["access_token"]})
        elif kind == "jwks":
            status, _, body = browser.request("GET", "/jwks.json")
        else:
            status, _, body = browser.request("GET", "/.well-known/openid-configuration")
        return n, status, body

    def check(n: int, status: int, body: bytes) -> None:
        """A wrong answer ends the run: 200, for userinfo and introspection the token's own live subject, for
        client_credentials an access token for the client, for refresh a new refresh token (answers are checked in
        the order they came, each replacing the one before) and an access token for the client and the subject."""
        answer = json.loads(body) if kind in ("introspection", "userinfo", "client_credentials", "refresh") and \
            status == 200 else {}
        access = _unverified_claims(answer["access_token"]) if "access_token" in answer else {}
        if status != 200 or (kind == "introspection" and answer.get("active") is not True) or \
                (kind in ("introspection", "userinfo") and answer.get("sub") != subjects[n % 4]) or \
                (kind in ("client_credentials", "refresh") and access.get("client_id") != seed["client_id"]) or \
                (kind == "refresh" and (access.get("sub") != subjects[0] or
                                        answer.get("refresh_token") in (None, rotated[0]))):
            raise SystemExit(f"{scenario}: {status} {body[:200]!r}")
        if kind == "refresh":
            rotated[0] = answer["refresh_token"]

    for n in range(10 if kind == "signin" else 50):
        check(*one(n))
    answers = []
    counter.count_on()
    for n in range(requests):
        answers.append(one(n))  # checked once counting is off: the check is not the request's cost
    counter.count_off()
    for answer in answers:
        check(*answer)
    if kind == "signin":  # the argon2id verification of one sign-in, counted apart (second dump)
        from idp.extensions import db
        from idp.models import User

        with app.app_context():
            stored = db.session.execute(db.select(User.password_hash).where(User.email == users[0])).scalar_one()
        counter.count_on()
        verify_password(stored, seed["password"])
        counter.count_off()


def _without_for(scenario: str, features: list[str]) -> list[str]:
    """The parts of ``features`` that apply to ``scenario``: "authlib" and "session" replace the userinfo and
    introspection views only (elsewhere the session is the one every request uses, and its teardown cannot go)."""
    return sorted(feature for feature in features if feature
                  and (scenario in ("userinfo", "introspection") or feature not in ("authlib", "session")))


def _take_out(app, features: set[str]) -> None:
    """Take ``features`` (WITHOUT's keys) out of ``app``: a measurement of what they cost, not a way to run idp."""
    if not features:
        return
    names = set().union(*(WITHOUT[feature] for feature in features))

    def name(hook) -> str:
        hook = getattr(hook, "func", hook)  # Flask-Limiter registers a functools.partial
        return f"{getattr(hook, '__module__', '')}.{getattr(hook, '__qualname__', '')}"

    registered = [*(hooks for registry in (app.before_request_funcs, app.after_request_funcs,
                                           app.teardown_request_funcs) for hooks in registry.values()),
                  app.teardown_appcontext_funcs]
    missing = names - {name(hook) for hooks in registered for hook in hooks}
    if missing:  # a renamed hook would otherwise be "taken out" by removing nothing, and the figure would lie
        raise SystemExit(f"--without: no such hook registered: {', '.join(sorted(missing))}")
    for hooks in registered:
        hooks[:] = [hook for hook in hooks if name(hook) not in names]
    if "authlib" in features:
        from idp.extensions import csrf

        # Exempt from Flask-WTF's check as the views they stand for are (it knows a view by its module and name).
        own = "session" in features
        app.view_functions["oidc.userinfo"] = csrf.exempt(_userinfo_without_authlib(own_connection=own))
        app.view_functions["oidc.introspect"] = csrf.exempt(_introspection_without_authlib(own_connection=own))


def _token_lookup(own_connection: bool):
    """idp's lookup of a presented access token (``access_token_view``: the JWT checked, its row and user read as a
    TokenView), or the same statement on a connection of its own (autocommit, as reads_only) instead of
    Flask-SQLAlchemy's session."""
    from idp.extensions import db
    from idp.oidc import server

    def find(token: str):
        if not own_connection:
            return server.access_token_view(token)
        jti = server._verified_jti(token)  # noqa: SLF001 - a measurement of idp's own lookup, on another connection
        if jti is None:
            return None
        with db.engine.connect() as connection:
            connection.connection.dbapi_connection.autocommit = True  # as reads_only (idp.pg_connections)
            row = connection.execute(server._TOKEN_VIEW_BY_JTI, {"jti": jti}).one_or_none()  # noqa: SLF001
        if row is None:
            return None
        split = len(server._TOKEN_VIEW_COLUMNS)  # noqa: SLF001 - as idp.oidc.server._token_view splits it
        view = server.TokenView(server.UserView(*row[split:]) if row[split] is not None else None, *row[:split])
        return view if view.client is not None else None

    return find


def _json_answer(body: dict, status: int = 200, headers: dict | None = None):
    from flask import Response

    return Response(json.dumps(body, sort_keys=True), status, {"Cache-Control": "no-store", "Pragma": "no-cache",
                                                               **(headers or {})}, mimetype="application/json")


def _userinfo_without_authlib(own_connection: bool):
    """A userinfo view on idp's own pieces, without Authlib's endpoint: the Bearer token verified and looked up
    (``_token_lookup``), refused when unknown, expired, revoked or DPoP-bound or without ``openid``, and the claims
    its scope releases (``idp.oidc.claims.user_info``); the same answer as idp's for the bench's tokens."""
    from flask import g, request

    from idp.oidc import claims as oidc_claims
    from idp.pg_connections import reads_only

    find = _token_lookup(own_connection)

    def userinfo():
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        found = find(token) if scheme.lower() == "bearer" else None
        if found is None or found.is_expired() or found.is_revoked() or found.dpop_jkt:
            return _json_answer({"error": "invalid_token"}, 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if "openid" not in found.scope.split():  # as Authlib's endpoint: acquire_token("openid")
            return _json_answer({"error": "insufficient_scope"}, 403,
                                {"WWW-Authenticate": 'Bearer error="insufficient_scope"'})
        g.authlib_server_oauth2_token = found
        requested = (found.claims or {}).get("userinfo")
        return _json_answer(oidc_claims.user_info(found.user, found.scope, requested))

    return userinfo if own_connection else reads_only(userinfo)


def _introspection_without_authlib(own_connection: bool):
    """An introspection view on idp's own pieces, without Authlib's endpoint and client authentication: the client
    by its Basic credentials from the worker's kept clients (``client_view``), its method and secret checked with
    idp's ClientAccessors, the access token looked up (``_token_lookup``; the bench presents access tokens only),
    and idp's own answer for it (``Introspection.introspect_token``, RFC 7662 2.2), inactive when unknown, expired,
    revoked or not the client's; the same answer as idp's for the bench's tokens."""
    from flask import request

    from idp.oidc import server
    from idp.pg_connections import reads_only

    find = _token_lookup(own_connection)
    endpoint = server.Introspection(None)

    def introspect():
        credentials = request.authorization
        client = server.client_view(credentials.username) \
            if credentials is not None and credentials.type == "basic" and credentials.username else None
        if client is None or not client.check_endpoint_auth_method("client_secret_basic", "introspection") or \
                not client.check_client_secret(credentials.password or ""):
            return _json_answer({"error": "invalid_client"}, 401, {"WWW-Authenticate": 'Basic error="invalid_client"'})
        token = request.form.get("token")
        if not token:
            return _json_answer({"error": "invalid_request"}, 400)
        found = find(token)
        presented = server._Presented(found, "access_token") if found is not None else None  # noqa: SLF001
        if presented is None or presented.is_expired() or presented.is_revoked() or \
                not endpoint.check_permission(presented, client, request):
            return _json_answer({"active": False})
        return _json_answer(endpoint.introspect_token(presented))

    return introspect if own_connection else reads_only(introspect)


def _unverified_claims(token: str) -> dict:
    """A JWT's payload, read without verifying it: only to know what a correct answer about the token says."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _totals(out: Path) -> list[int]:
    """The instruction totals of each dump callgrind wrote, in order."""
    parts = sorted(out.glob("callgrind.out.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    return [int(re.search(r"^totals: (\d+)", p.read_text(), re.M).group(1)) for p in parts]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated scenarios (default: all of {', '.join(SCENARIOS)})")
    parser.add_argument("--requests", type=int, default=100, help="requests counted per scenario (sign-ins: a tenth)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    parser.add_argument("--without", default="",
                        help=f"comma-separated parts taken out of idp's app before counting, to say what each costs "
                             f"(not a way to run idp): {', '.join(WITHOUT)} ('authlib' and 'session' apply to userinfo "
                             f"and introspection alone; 'session' with 'authlib')")
    parser.add_argument("--child", nargs=3, metavar=("SCENARIO", "N", "HELPER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    scenarios = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    without = sorted(filter(None, args.without.split(",")))
    if set(without) - set(WITHOUT):
        raise SystemExit(f"--without: unknown parts: {', '.join(sorted(set(without) - set(WITHOUT)))}")
    if "session" in without and "authlib" not in without:
        raise SystemExit("--without session needs authlib too (the view without Authlib reads on its own connection)")
    for tool in ("valgrind", "gcc"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install -y {tool}")

    import run

    bench = run.Bench(argparse.Namespace(quick=True, workers=1, idp_port=0, peer_port=0, dot_port=0, keep_temp=False))
    work = Path(tempfile.mkdtemp(prefix="idp-instructions-"))
    figures: dict[str, dict] = {}
    try:
        helper = work / "count.so"
        (work / "count.c").write_text(HELPER)
        subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(helper), str(work / "count.c")], check=True)
        bench.setup()
        env = {**bench.env, "PYTHONHASHSEED": "0", "BENCH_WITHOUT": ",".join(without),
               "BENCH_SEED": json.dumps({k: v for k, v in bench.seed.items() if k != "totp_seeds"})}
        for scenario in scenarios:
            signin = FLOORS.get(scenario, scenario) == "signin"
            n = max(1, args.requests // 10) if signin else args.requests
            out = work / scenario
            out.mkdir()
            run.log(f"{scenario}: {n} requests under callgrind")
            result = subprocess.run(
                ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}/callgrind.out",
                 sys.executable, __file__, "--child", scenario, str(n), str(helper)],
                env=env, cwd=BENCH, capture_output=True, text=True)
            totals = _totals(out)
            if result.returncode != 0 or not totals:
                raise SystemExit(f"{scenario} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
            entry = {"requests": n, "m_instructions_per_request": totals[0] / n / 1e6}
            applied = _without_for(scenario, without) if scenario not in FLOORS else []
            if applied:
                entry["without"] = applied
            if signin:
                # Each sign-in verified one password: take the hash out, report it beside.
                entry["m_instructions_argon2id"] = totals[1] / 1e6
                entry["m_instructions_per_request"] -= entry["m_instructions_argon2id"]
            figures[scenario] = entry
            run.log(f"{scenario}: {entry['m_instructions_per_request']:.2f} M instructions per request"
                    + (f" besides the argon2id verification ({entry['m_instructions_argon2id']:.0f} M)"
                       if signin else ""))
    finally:
        bench.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    print()
    for floor, scenario in FLOORS.items():  # idp's figure over its stack floor's, when both were counted
        if floor in figures and scenario in figures:
            figures[scenario]["times_floor"] = (figures[scenario]["m_instructions_per_request"]
                                                / figures[floor]["m_instructions_per_request"])
    print("| scenario | M instructions per request | times the stack floor |")
    print("| --- | --- | --- |")
    for scenario, entry in figures.items():
        label = f"{scenario} (without the argon2id verification)" if "m_instructions_argon2id" in entry else scenario
        if entry.get("without"):
            label += f" (without {', '.join(entry['without'])})"
        times = f"{entry['times_floor']:.2f}" if "times_floor" in entry else ""
        print(f"| {label} | {entry['m_instructions_per_request']:.2f} | {times} |")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
