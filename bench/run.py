"""idp's benchmark, side by side with panva's oidc-provider, django-oauth-toolkit and the box's limits. See
README.md, "Performance".

    .venv/bin/python bench/run.py [--quick] [--out bench/results.json] [--profile DIR] [--no-peer] [--no-durable-peer]
                                  [--no-dot] [--no-floor-tokens] [--no-floor-signin]

Creates a fresh PostgreSQL database (127.0.0.1:5432, user postgres) and uses an empty Redis database
(127.0.0.1:6379), seeds users and a client, starts idp under gunicorn in production mode, the peer under node
(twice: with its state in memory, and with it in PostgreSQL) and django-oauth-toolkit under gunicorn (bench/peer/dot,
in a virtualenv of its own that it creates on first use; one server, measured twice: with hashed and with plain
client secrets), the token paths' stack floor (bench/floor_tokens.py) and the sign-in's (bench/floor_signin.py)
under gunicorn, drives them on loopback
with wrk (Lua scripts in bench/lua/) and a Python driver for sign-ins, and prints and writes the tables. Every loop
is bounded in time and count; everything it started is stopped at the end, and the databases and the Redis
database are dropped / flushed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boxlimits
import driver
import psycopg2
import redis

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS_DBS = (13, 14, 15, 12, 11)
IDP_HOST = "localhost"
PEER_HOST = "localhost:8444"
DOT = BENCH / "peer" / "dot"
DOT_HOST = "localhost:8446"
DOT_TARGETS = ("dot", "dot_plain")  # one django-oauth-toolkit server: hashed client secrets, plain ones
# The stack's floor for the token paths (bench/floor_tokens.py, on idp's database and tokens): the scenarios it
# serves, and its endpoints.
FLOOR_TOKENS = "floor_tokens"
FLOOR_TOKEN_SCENARIOS = ("client_credentials", "refresh", "introspection", "userinfo")
FLOOR_TOKEN_META = {"token_endpoint": "/token", "introspection_endpoint": "/introspect",
                    "userinfo_endpoint": "/userinfo"}
# The stack's floor for the complete password sign-in (bench/floor_signin.py, on idp's database, users, client and
# keys): a target of the signin rounds, and its endpoints.
FLOOR_SIGNIN = "floor_signin"
FLOOR_SIGNIN_META = {"authorization_endpoint": "/authorize", "token_endpoint": "/token"}
LOOSE = "1000000/minute"


def _driver_cpu_seconds() -> float:
    """CPU seconds of the load drivers so far: this process (the Python driver's threads) and its waited-for children
    (wrk)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# A PostgreSQL process's title (/proc/PID/cmdline) names the database a client backend or an autovacuum worker works
# for: "postgres: 15/main: USER DATABASE HOST(PORT) STATE" and "postgres: 15/main: autovacuum worker DATABASE".
PG_DATABASE = re.compile(r"^postgres: [^:]+: (?:autovacuum worker (\S+)|\S+ (\S+) [^ ]*\(\d+\))")


def cpu_seconds(pgid: int, commands: tuple[str, ...] = (), databases: tuple[str, ...] = ()
                ) -> dict[tuple[str, int], float]:
    """CPU time (user + system) used so far by each process of one process group (kind "server") and by each
    process whose name is in ``commands`` (idp's share of the box includes the PostgreSQL backends and Redis it
    keeps busy), keyed by (kind, pid); with a (kind, 0) entry of 0 for every kind, so that each is there.

    With ``databases``, a PostgreSQL process that works for one database (a client backend, an autovacuum worker)
    counts only when it is one of them: the box's PostgreSQL also serves others (a test suite, another bench run),
    whose statements are no request's cost here. Those that work for the whole cluster (WAL writer, checkpointer,
    background writer) count whatever the database."""
    ticks = {(kind, 0): 0 for kind in ("server", *commands)}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                stat = handle.read()
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ..., utime (12th), stime (13th)
            kind = "server" if int(fields[2]) == pgid else name if name in commands else None
            if kind == "postgres" and databases:
                with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                    title = handle.read().replace(b"\0", b" ").decode(errors="replace")
                match = PG_DATABASE.match(title)
                if match and (match.group(1) or match.group(2)) not in databases:
                    continue
        except OSError:
            continue
        if kind is not None:
            ticks[kind, int(entry.name)] = int(fields[11]) + int(fields[12])
    return {key: n / os.sysconf("SC_CLK_TCK") for key, n in ticks.items()}


def cpu_used(before: dict[tuple[str, int], float], after: dict[tuple[str, int], float]) -> dict[str, float]:
    """Per kind, the CPU time used between two readings of cpu_seconds. A process that exited in between counts for
    nothing: its time left /proc with it, and taking its earlier time off the sum would make the round's figure
    smaller than what the processes that stayed used (below zero, at times)."""
    used = dict.fromkeys((kind for kind, _ in after), 0.0)
    for key, seconds in after.items():
        used[key[0]] += seconds - before.get(key, 0.0)
    return used


def _storage_ms(entry: dict) -> float:
    """The part of a server's CPU per request that its storage processes (PostgreSQL, Redis) used."""
    return sum(ms for kind, ms in entry["cpu_ms_by_process"].items() if kind != "server")


def _markdown(rows: list[tuple[str, ...]]) -> str:
    """A Markdown table of ``rows`` (the first is the header), padded to line up in a terminal."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def pg(dbname: str, *statements: str) -> list:
    """Run statements on the local PostgreSQL in autocommit (CREATE/DROP DATABASE, VACUUM); the last one's rows."""
    conn = psycopg2.connect(dbname=dbname, **PG)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def idp_provider(port: int, meta: dict, seed: dict) -> driver.Provider:
    """How the driver signs in at an idp server seeded by seed.py."""
    return driver.Provider("idp", port, IDP_HOST, meta["authorization_endpoint"], meta["token_endpoint"],
                           seed["client_id"], seed["client_secret"], seed["redirect_uri"])


IDP_USERS = [f"pw-{i}@bench.example" for i in range(1, 1001)]  # seed.py's password users


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class _LatencySide:
    """One idp server of the scale comparison: one client at a time, latencies collected over batches."""

    def __init__(self, label: str, db: str, port: int, meta: dict, seed: dict):
        prov = idp_provider(port, meta, seed)
        self.label, self.db, self.prov, self.meta, self.password = label, db, prov, meta, seed["password"]
        self.auth = {"Authorization": "Basic " + driver.basic(prov.client_id, prov.client_secret)}
        self.browser = driver.Browser(prov.port, prov.host)
        self.latencies: dict[str, list[float]] = {}
        self.signins = 0
        tokens = [driver.sign_in(prov, email, self.password) for email in IDP_USERS[:5]]
        self.access = [t["access_token"] for t in tokens]
        self.refresh = tokens[-1]["refresh_token"]

    def _call(self, kind: str, n: int) -> None:
        if kind == "signin":
            self.signins += 1
            driver.sign_in(self.prov, IDP_USERS[self.signins % len(IDP_USERS)], self.password)
            return
        if kind == "userinfo":
            status, _, payload = self.browser.request("GET", self.meta["userinfo_endpoint"], None, {
                "Authorization": "Bearer " + self.access[n % len(self.access)]})
        else:
            body = {"grant_type": "client_credentials"} if kind == "client_credentials" else \
                {"grant_type": "refresh_token", "refresh_token": self.refresh}
            status, _, payload = self.browser.request("POST", self.meta["token_endpoint"], body, self.auth)
            if status == 200 and kind == "refresh":
                self.refresh = json.loads(payload)["refresh_token"]
        if status != 200:
            raise driver.FlowError(f"{kind} {status} {payload[:200]!r}")

    def settle(self) -> None:
        """Vacuumed, analysed and checkpointed (growing leaves many dirty pages), then every path warmed up."""
        pg(self.db, "VACUUM ANALYZE", "CHECKPOINT")
        for kind in ("signin", "client_credentials", "refresh", "userinfo"):
            for n in range(3 if kind == "signin" else 30):
                self._call(kind, n)

    def run(self, kind: str, count: int) -> None:
        res = driver.closed_loop(lambda n: self._call(kind, n), threads=1, seconds=120, max_count=count)
        if res.errors:
            raise SystemExit(f"scale {self.label} {kind}: {res.first_error}")
        self.latencies.setdefault(kind, []).extend(res.latencies)

    def summary(self) -> dict:
        out = {}
        for kind, values in self.latencies.items():
            ordered = sorted(values)
            out[kind] = {"samples": len(ordered), "p50_ms": driver.percentile(ordered, 50) * 1000,
                         "p99_ms": driver.percentile(ordered, 99) * 1000}
        return out

    def counts(self) -> dict:
        [(users, tokens)] = pg(self.db, "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM tokens)")
        return {"users": users, "tokens": tokens}

    def close(self) -> None:
        self.browser.close()


class Bench:
    def __init__(self, args):
        self.args = args
        quick = args.quick
        self.rounds = 1 if quick else 3
        self.round_s = 4 if quick else 6
        self.warmup_s = 1 if quick else 2
        self.workers = args.workers
        self.wrk_threads = 2
        self.wrk_conns = 8
        self.signin_threads = 8
        self.scale_to = 100_000 if quick else 1_000_000
        self.tmp = Path(tempfile.mkdtemp(prefix="idp-bench-"))
        self.db = f"idp_bench_{os.getpid()}"
        self.extra_dbs: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.results: dict = {"scenarios": {}, "notes": []}
        self.redis_db = None
        self.env = None
        self.first_errors: dict[str, str] = {}
        # Each server the bench drives: where it listens (port, Host) and whose CPU a request costs (process group,
        # and the names of the storage processes it keeps busy).
        self.endpoints: dict[str, tuple[int, str]] = {"idp": (args.idp_port, IDP_HOST),
                                                      "peer": (args.peer_port, PEER_HOST),
                                                      "peer_pg": (args.peer_port + 1, PEER_HOST),
                                                      **dict.fromkeys(DOT_TARGETS, (args.dot_port, DOT_HOST))}
        # The peers started (peer, peer_pg, dot, dot_plain): their endpoint paths.
        self.peer_meta: dict[str, dict] = {}
        self.peer_secret = secrets.token_urlsafe(32)  # every peer's client secret and users
        self.peer_users = [f"peer-{i}@bench.example" for i in range(1, 1001)]
        # Whose CPU a request at each target costs: a process group, the names of the storage processes it keeps busy,
        # and the PostgreSQL databases whose backends count (cpu_seconds).
        self.cpu_of: dict[str, tuple[int, tuple[str, ...], tuple[str, ...]]] = {}
        self.floors: dict[str, subprocess.Popen] = {}  # the stack-floor servers running (bench/floor.py)

    # --- setup -------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        for db_number in REDIS_DBS:
            if redis.Redis(host="127.0.0.1", port=6379, db=db_number).dbsize() == 0:
                self.redis_db = db_number
                break
        else:
            raise SystemExit("no empty Redis database among 11-15 on 127.0.0.1:6379")
        self.base_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IDP_")},
            "IDP_ENV": "production", "IDP_ISSUER": f"https://{IDP_HOST}",
            "IDP_SECRET_KEY": secrets.token_urlsafe(48)[:48],
            "IDP_REDIS_URL": f"redis://127.0.0.1:6379/{self.redis_db}", "IDP_QUEUE_NAME": f"idp-bench-{os.getpid()}",
            "IDP_MAIL_BACKEND": "console", "IDP_TRUSTED_PROXIES": "127.0.0.1",
            # The bench measures throughput, not the limits: every limit is loosened far past the load.
            "IDP_THROTTLE_ACCOUNT": LOOSE, "IDP_THROTTLE_IP": LOOSE, "IDP_THROTTLE_OTP": LOOSE,
            "IDP_RATELIMIT_FORMS": LOOSE,
        }
        self.results["notes"].append(
            "Rate limits loosened for the bench (IDP_THROTTLE_ACCOUNT/IP/OTP, IDP_RATELIMIT_FORMS = "
            f"{LOOSE}): it measures throughput, not the limits.")
        log(f"database {self.db}, redis db {self.redis_db}, temp {self.tmp}")
        self.env, self.seed = self._fresh_database(self.db, totp_users=1000)
        log(f"seeded 1000 password users, 1000 TOTP users, client {self.seed['client_id']}")

    def _fresh_database(self, name: str, totp_users: int) -> tuple[dict, dict]:
        """Create database ``name`` (dropped first), migrate and seed it; its idp environment and seed."""
        pg("postgres", f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
        if name != self.db:
            self.extra_dbs.append(name)
        env = {**self.base_env, "IDP_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}"}
        subprocess.run([str(BIN / "idp"), "db", "upgrade"], env=env, cwd=self.tmp, check=True, capture_output=True)
        seed_file = self.tmp / f"seed-{name}.json"
        subprocess.run([sys.executable, str(BENCH / "seed.py"), "seed", str(seed_file), "--users", "1000",
                        "--totp-users", str(totp_users)], env=env, cwd=self.tmp, check=True, capture_output=True)
        return env, json.loads(seed_file.read_text())

    def _gunicorn(self, app: str, chdir: Path, env: dict, port: int, log_name: str, *extra: str, bin_dir: Path = BIN,
                  host: str = IDP_HOST, ready: tuple[str, int] = ("/.well-known/openid-configuration", 200)
                  ) -> subprocess.Popen:
        """``app`` under gunicorn with the bench's worker settings, in its own process group, once it answers (to
        ``host``; ``ready``: a path and the status that says it is up); ``bin_dir``: the virtualenv's whose gunicorn
        it is."""
        log_file = open(self.tmp / log_name, "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [str(bin_dir / "gunicorn"), "-w", str(self.workers), "-b", f"127.0.0.1:{port}",
             *self.args.gunicorn_args.split(), "--chdir", str(chdir), *extra, "--backlog", "256", app],
            env=env, cwd=self.tmp, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        self._wait_ready(port, host, proc, *ready)
        return proc

    def start_idp(self, env: dict, port: int, log_name: str = "gunicorn.log") -> tuple[int, dict]:
        """idp under gunicorn; its master's pid and its discovery metadata (endpoint paths)."""
        proc = self._gunicorn("wsgi:app", ROOT, env, port, log_name, "--forwarded-allow-ips", "127.0.0.1")
        log(f"idp up: gunicorn pid {proc.pid}, {self.workers} workers on 127.0.0.1:{port}")
        return proc.pid, self._discover(port, IDP_HOST)

    def start_peer(self, name: str) -> None:
        """The peer ``peer`` (its state in node's memory) or ``peer_pg`` (its state in a PostgreSQL database of its
        own, each write committed before the answer, as idp's are; its CPU then includes PostgreSQL's)."""
        peer = BENCH / "peer"
        if not (peer / "node_modules" / "pg").exists():
            log("npm ci in bench/peer")
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=peer, check=True)
        env = {**os.environ, "PEER_CLIENT_ID": "bench-peer", "PEER_CLIENT_SECRET": self.peer_secret,
               "PEER_REDIRECT_URI": self.seed["redirect_uri"], "PEER_PASSWORD": self.seed["password"],
               "PEER_USERS": ",".join(self.peer_users), "PEER_RESOURCE": "https://localhost/api",
               "NODE_ENV": "production"}
        storage: tuple[str, ...] = ()
        db = ""
        if name == "peer_pg":
            db = f"{self.db}_peer"
            pg("postgres", f"DROP DATABASE IF EXISTS {db}", f"CREATE DATABASE {db}")
            self.extra_dbs.append(db)
            env["PEER_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{db}"
            storage = ("postgres",)
        port, host = self.endpoints[name]
        log_file = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(["node", str(peer / "server.js"), str(port), f"https://{host}"],
                                env=env, cwd=peer, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        self.cpu_of[name] = (proc.pid, storage, (db,))
        self._wait_ready(port, host, proc)
        self.peer_meta[name] = self._discover(port, host)
        log(f"{name} up: oidc-provider (node {subprocess.check_output(['node', '--version']).decode().strip()}"
            f"{', state in PostgreSQL' if storage else ', state in memory'}) on 127.0.0.1:{port}")

    def _dot_bin(self) -> Path:
        """The bin folder of django-oauth-toolkit's virtualenv (bench/peer/dot/.venv), created and filled from
        bench/peer/dot/requirements.txt when it is missing or the file has changed since."""
        venv = DOT / ".venv"
        stamp = venv / "bench-requirements.txt"  # the requirements it was filled from
        wanted = (DOT / "requirements.txt").read_text()
        if not stamp.exists() or stamp.read_text() != wanted:
            log("creating bench/peer/dot/.venv from bench/peer/dot/requirements.txt")
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "-r",
                            str(DOT / "requirements.txt")], check=True)
            stamp.write_text(wanted)
        return venv / "bin"

    def start_dot(self) -> None:
        """django-oauth-toolkit (bench/peer/dot) under gunicorn with idp's worker settings, on a PostgreSQL database
        of its own (its CPU then includes PostgreSQL's, like peer_pg's). One server for both of its targets: "dot"
        uses the applications whose client secret is stored hashed (DOT's default), "dot_plain" those with
        hash_client_secret=False; their rounds run one after the other like every target's."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        bin_dir = self._dot_bin()
        db = f"{self.db}_dot"
        pg("postgres", f"DROP DATABASE IF EXISTS {db}", f"CREATE DATABASE {db}")
        self.extra_dbs.append(db)
        key_file = self.tmp / "dot-rs256.pem"  # one signing key for every worker
        key_file.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        port, host = self.endpoints["dot"]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("IDP_", "DJANGO_"))},
               "DJANGO_SETTINGS_MODULE": "benchdot.settings", "DOT_DATABASE": db, "DOT_ISSUER": f"https://{host}",
               "DOT_KEY_FILE": str(key_file), "DOT_SECRET_KEY": secrets.token_urlsafe(48)}
        manage = [str(bin_dir / "python"), str(DOT / "manage.py")]
        subprocess.run([*manage, "migrate", "-v", "0"], env=env, cwd=DOT, check=True, capture_output=True)
        subprocess.run([*manage, "seed_bench", self.seed["redirect_uri"]], cwd=DOT, check=True, capture_output=True,
                       env={**env, "DOT_SEED_USERS": ",".join(self.peer_users), "DOT_SEED_SECRET": self.peer_secret,
                            "DOT_SEED_PASSWORD": self.seed["password"]})
        proc = self._gunicorn("benchdot.wsgi:application", DOT, env, port, "gunicorn-dot.log",
                              "--forwarded-allow-ips", "127.0.0.1", bin_dir=bin_dir, host=host)
        meta = self._discover(port, host)
        for name in DOT_TARGETS:
            self.cpu_of[name] = (proc.pid, ("postgres",), (db,))
            self.peer_meta[name] = meta
        version = subprocess.check_output([str(bin_dir / "python"), "-c", "import importlib.metadata as m; print("
                                           "m.version('django-oauth-toolkit'), m.version('Django'))"], text=True)
        log(f"dot up: django-oauth-toolkit {version.split()[0]} (Django {version.split()[1]}), gunicorn pid "
            f"{proc.pid}, {self.workers} workers on 127.0.0.1:{port}, state in PostgreSQL")

    def start_floor_tokens(self) -> None:
        """The stack's floor for the token paths (bench/floor_tokens.py: Flask, SQLAlchemy Core, joserfc, only what
        the protocol requires) under gunicorn with idp's worker settings, on idp's database and keys: a target of
        the client_credentials, refresh, introspection and userinfo rounds, with idp's client, idp's access tokens and
        refresh tokens idp issued for it (issue_tokens). Its CPU is its workers' and its PostgreSQL backends'. Started
        once idp has made its keys (the floor reads them at start)."""
        port = self.args.idp_port + 22
        proc = self._gunicorn("floor_tokens:from_environment()", BENCH, self.env, port, "gunicorn-floor_tokens.log",
                              ready=("/userinfo", 401))
        self.endpoints[FLOOR_TOKENS] = (port, IDP_HOST)
        self.cpu_of[FLOOR_TOKENS] = (proc.pid, ("postgres",), (self.db,))
        log(f"{FLOOR_TOKENS} up: bench/floor_tokens.py, gunicorn pid {proc.pid}, {self.workers} workers on "
            f"127.0.0.1:{port}, idp's database")

    def start_floor_signin(self) -> None:
        """The stack's floor for the complete password sign-in (bench/floor_signin.py: Flask and its signed cookie,
        Jinja2, SQLAlchemy Core, joserfc, idp's argon2id verification, only what the protocol and the sign-in's
        security require) under gunicorn with idp's worker settings, on idp's database, users, client and keys: a
        target of the signin rounds, driven by the same driver as idp. Its CPU is its workers' and its PostgreSQL
        backends'. Started once idp has made its keys (the floor reads its signing key at start)."""
        port = self.args.idp_port + 23
        proc = self._gunicorn("floor_signin:from_environment()", BENCH, self.env, port, "gunicorn-floor_signin.log",
                              ready=("/login", 400))  # no sign-in under way: its expired page
        self.endpoints[FLOOR_SIGNIN] = (port, IDP_HOST)
        self.cpu_of[FLOOR_SIGNIN] = (proc.pid, ("postgres",), (self.db,))
        log(f"{FLOOR_SIGNIN} up: bench/floor_signin.py, gunicorn pid {proc.pid}, {self.workers} workers on "
            f"127.0.0.1:{port}, idp's database")

    def _wait_ready(self, port: int, host: str, proc, path: str = "/.well-known/openid-configuration",
                    expected: int = 200) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"server on {port} exited; see {self.tmp}")
            try:
                browser = driver.Browser(port, host)
                status, _, _ = browser.request("GET", path)
                browser.close()
                if status == expected:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"server on {port} did not start in 60 s; see {self.tmp}")

    def _discover(self, port: int, host: str) -> dict:
        """The endpoint paths of the server's discovery document; an endpoint it leaves out (django-oauth-toolkit's
        OpenID document has no introspection_endpoint) from its RFC 8414 document, where it has one."""
        browser = driver.Browser(port, host)
        meta = {}
        for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
            status, _, payload = browser.request("GET", path)
            if status == 200:
                meta = {**json.loads(payload), **meta}
            if "introspection_endpoint" in meta:
                break
        browser.close()
        return {k: driver._path(v) for k, v in meta.items() if isinstance(v, str) and v.startswith("https://")}

    def client(self, target: str, grant: str = "authorization_code") -> tuple[str, str]:
        """The client id and secret the bench uses at ``target`` for ``grant``. django-oauth-toolkit's applications
        have one grant type each: its client_credentials client is another application (bench/peer/dot's seed)."""
        if target in ("idp", FLOOR_TOKENS, FLOOR_SIGNIN):
            return self.seed["client_id"], self.seed["client_secret"]
        if target in DOT_TARGETS:
            name = "bench-dot" if target == "dot" else "bench-dot-plain"
            return (f"{name}-cc" if grant == "client_credentials" else name), self.peer_secret
        return "bench-peer", self.peer_secret

    def providers(self) -> dict[str, driver.Provider]:
        out = {"idp": idp_provider(self.args.idp_port, self.idp_meta, self.seed)}
        for name, meta in self.peer_meta.items():
            dot = name in DOT_TARGETS  # DOT requires PKCE (PKCE_REQUIRED, its default); oidc-provider, a resource
            out[name] = driver.Provider(name, *self.endpoints[name], meta["authorization_endpoint"],
                                        meta["token_endpoint"], *self.client(name), self.seed["redirect_uri"],
                                        {} if dot else {"resource": "https://localhost/api"}, pkce=dot)
        return out

    # --- tokens issued through real sign-ins -----------------------------------------------------------------------
    def issue_tokens(self) -> None:
        """Refresh tokens for each refresh round (fresh ones each round, so no token is presented twice) and access
        tokens for userinfo and introspection, from complete sign-ins. The token floor, when it runs the refresh
        rounds, gets refresh tokens of its own from sign-ins at idp like idp's: its rotations use them up, and the
        rows it writes for them are idp's rows in idp's table."""
        per_round = self.wrk_conns
        self.refresh_tokens: dict[str, list[str]] = {}
        providers = self.providers()
        if self.args.floor_tokens and self.wanted("refresh"):
            providers[FLOOR_TOKENS] = providers["idp"]
        for name, prov in providers.items():
            need = per_round * (self.rounds + 2)  # rounds, warm-up, profile
            users = IDP_USERS if name in ("idp", FLOOR_TOKENS) else self.peer_users
            got: list[dict] = []

            def task(n, prov=prov, users=users, got=got):
                got.append(driver.sign_in(prov, users[n % len(users)], self.seed["password"]))

            res = driver.closed_loop(task, threads=4, seconds=120, max_count=need)
            if len(got) < need:
                raise SystemExit(f"{name}: only {len(got)} of {need} sign-ins worked: {res.first_error}")
            access = [t["access_token"] for t in got]
            if name not in ("idp", FLOOR_TOKENS):
                # Access tokens from sign-ins of their own, whose refresh tokens the refresh rounds never use:
                # oidc-provider serves userinfo and introspection only for opaque tokens (its JWT access tokens are
                # for the resource server), so these sign in without a resource indicator; django-oauth-toolkit
                # deletes the access token issued with a refresh token when that refresh token is rotated.
                plain = driver.Provider(**{**prov.__dict__, "extra": {}})
                opaque: list[dict] = []
                driver.closed_loop(lambda n, plain=plain, users=users, opaque=opaque: opaque.append(
                    driver.sign_in(plain, users[n], self.seed["password"])), threads=4, seconds=60, max_count=16)
                access = [t["access_token"] for t in opaque]
            self.refresh_tokens[name] = [t["refresh_token"] for t in got]
            if name != FLOOR_TOKENS:  # the floor is sent idp's access tokens (scenario_runner)
                (self.tmp / f"{name}-access.txt").write_text("\n".join(access) + "\n")
            log(f"{name}: {len(got)} sign-ins issued tokens (access token {len(got[0]['access_token'])} chars)")

    # --- runners -------------------------------------------------------------------------------------------------
    def wrk(self, name: str, target: str, script: str, path: str, seconds: float, extra_env: dict | None = None,
            threads: int | None = None):
        threads = threads or self.wrk_threads
        port, host = self.endpoints[target]
        env = {**os.environ, "BENCH_LUA_DIR": str(BENCH / "lua"), "BENCH_HOST": host,
               "BENCH_THREADS": str(threads), **(extra_env or {})}
        cmd = ["wrk", "-t", str(threads), "-c", str(self.wrk_conns), "-d", f"{max(1, int(seconds))}s",
               "--timeout", "10s", "-s", str(BENCH / "lua" / script), f"http://127.0.0.1:{port}{path}"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
        match = re.search(r"^BENCH_RESULT (.*)$", out.stdout, re.M)
        if not match:
            raise RuntimeError(f"wrk gave no result for {name}/{target}: {out.stdout[-500:]} {out.stderr[-500:]}")
        r = json.loads(match.group(1))
        errors = sum(v for k, v in r.items() if k.startswith("errors_"))
        first = re.search(r"^BENCH_FIRST_ERROR (.*)$", out.stderr, re.M)
        if first:
            self.first_errors.setdefault(f"{name}/{target}", first.group(1)[:300])
        secs = r["duration_us"] / 1e6
        served = r["requests"] - r["errors_status"] - r["errors_rejected"]  # a refused answer is no service
        return {"rps": served / secs, "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
                "requests": r["requests"], "errors": errors, "seconds": secs}

    def scenario_runner(self, scenario: str, target: str):
        """A function(seconds, round_index) -> result for one scenario on one server."""
        meta = self.idp_meta if target == "idp" else FLOOR_TOKEN_META if target == FLOOR_TOKENS else \
            FLOOR_SIGNIN_META if target == FLOOR_SIGNIN else self.peer_meta[target]
        basic = driver.basic(*self.client(target))
        access_file = str(self.tmp / f"{'idp' if target == FLOOR_TOKENS else target}-access.txt")  # idp's tokens
        if scenario == "discovery":
            return lambda s, i: self.wrk(scenario, target, "discovery.lua", "/.well-known/openid-configuration", s)
        if scenario == "jwks":
            return lambda s, i: self.wrk(scenario, target, "jwks.lua", meta["jwks_uri"], s)
        if scenario == "client_credentials":
            cc_basic = driver.basic(*self.client(target, "client_credentials"))
            return lambda s, i: self.wrk(scenario, target, "client_credentials.lua", meta["token_endpoint"], s,
                                         {"BENCH_BASIC": cc_basic})
        if scenario == "refresh":
            def run(s, i):
                chunk = self.refresh_tokens[target][i * self.wrk_conns:(i + 1) * self.wrk_conns]
                path = self.tmp / f"{target}-refresh-{i}.txt"
                path.write_text("\n".join(chunk) + "\n")
                return self.wrk(scenario, target, "refresh.lua", meta["token_endpoint"], s,
                                {"BENCH_BASIC": basic, "BENCH_TOKENS": str(path)}, threads=self.wrk_conns)
            return run
        if scenario == "introspection":
            return lambda s, i: self.wrk(scenario, target, "introspection.lua", meta["introspection_endpoint"], s,
                                         {"BENCH_BASIC": basic, "BENCH_TOKENS": access_file})
        if scenario == "userinfo":
            return lambda s, i: self.wrk(scenario, target, "userinfo.lua", meta["userinfo_endpoint"], s,
                                         {"BENCH_TOKENS": access_file})
        if scenario in ("signin", "signin_totp"):
            # The sign-in's floor: idp's client and users, the same requests as idp's (no PKCE: idp's provider).
            prov = driver.Provider(FLOOR_SIGNIN, *self.endpoints[FLOOR_SIGNIN], meta["authorization_endpoint"],
                                   meta["token_endpoint"], *self.client(target), self.seed["redirect_uri"]) \
                if target == FLOOR_SIGNIN else self.providers()[target]
            if scenario == "signin_totp":
                pool = driver.TotpUsers(self.seed["totp_seeds"])

                def task(n):
                    taken = pool.take()
                    if taken is None:
                        raise driver.FlowError("no TOTP user free in this 30-second step")
                    driver.sign_in(prov, f"totp-{taken[0]}@bench.example", self.seed["password"], taken[1])
            else:
                users = IDP_USERS if target in ("idp", FLOOR_SIGNIN) else self.peer_users

                def task(n):
                    driver.sign_in(prov, users[n % len(users)], self.seed["password"])

            def run(s, i):
                return driver.closed_loop(task, threads=self.signin_threads, seconds=s, max_count=100_000).summary()
            return run
        raise KeyError(scenario)

    def measured(self, target: str, runner, index: int) -> dict:
        """One round, with the CPU it cost the server per request: idp's gunicorn workers plus the PostgreSQL and
        Redis processes (idp's storage), or the peer's node process (with its state in memory) and, for peer_pg,
        the PostgreSQL processes that keep its state, or django-oauth-toolkit's gunicorn workers and PostgreSQL."""
        before = cpu_seconds(*self.cpu_of[target])
        driver_before = _driver_cpu_seconds()
        result = runner(self.round_s, index)
        driver_used = _driver_cpu_seconds() - driver_before  # before the /proc scan below, which is not the driver's
        used = cpu_used(before, cpu_seconds(*self.cpu_of[target]))
        per_request = 1000 / max(result["requests"], 1)
        # Split by process (for idp: its workers, PostgreSQL, Redis), to say where a request's CPU goes.
        result["cpu_ms_by_process"] = {kind: seconds * per_request for kind, seconds in used.items()}
        result["cpu_ms"] = sum(result["cpu_ms_by_process"].values())
        # And the driver's own (this process's threads, or wrk's, a child waited for): it runs on the same cores,
        # so what it takes per sign-in no server can have (the sign-in's ceiling, run_scenarios).
        result["driver_cpu_ms"] = driver_used * per_request
        return result

    def _interleaved(self, runners: dict, warm: int, limit_beside: bool = False) -> dict[str, dict]:
        """A warm-up each, then the rounds interleaved (a, b, a, b...) so that the machine's noise hits every server
        alike; per server the medians of the rounds' figures, the errors, and every round.

        ``limit_beside``: the box's argon2id rate is measured again before each round, and the sign-ins of every
        server are compared with the median of those rates (``argon2id_per_s`` in each entry). The host's speed
        drifts by 10% within minutes, so a limit taken at the start of the run may not be the limit of the
        minutes in which the sign-ins ran.
        """
        rounds: dict[str, list] = {t: [] for t in runners}
        limits: list[float] = []
        for t, runner in runners.items():
            runner(self.warmup_s, warm)
            self._quiesce(t)
        for i in range(self.rounds):
            if limit_beside:
                limits.append(boxlimits.argon2id_rate(self.argon2id_processes, 2 if self.args.quick else 3))
            for t, runner in runners.items():
                rounds[t].append(self.measured(t, runner, i))
                self._quiesce(t)
        entry = {t: {**{key: statistics.median(r[key] for r in rs) for key in ("rps", "p50_ms", "p99_ms", "cpu_ms",
                                                                               "driver_cpu_ms")},
                     "errors": sum(r["errors"] for r in rs), "rounds": rs} for t, rs in rounds.items()}
        for t, e in entry.items():
            e["cpu_ms_by_process"] = {kind: statistics.median(r["cpu_ms_by_process"][kind] for r in rounds[t])
                                      for kind in rounds[t][0]["cpu_ms_by_process"]}
        if limits:
            for e in entry.values():
                e.update(argon2id_per_s=statistics.median(limits), argon2id_rounds=limits)
        return entry

    def _quiesce(self, target: str, limit_s: float = 15.0) -> None:
        """Wait (at most ``limit_s``) until ``target``'s server has worked through what a round left it. wrk stops
        counting when its time is up, but the server still answers the requests its connections had sent, and
        with slow requests (an argon2id check of a hashed client secret, 8 in the queue) that is a second of CPU
        that would otherwise be counted in, and taken from, the next round: the next server's, or the same
        server's (django-oauth-toolkit's two targets share one)."""
        pgid = self.cpu_of[target][0]
        deadline = time.monotonic() + limit_s
        last = cpu_seconds(pgid)
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = cpu_seconds(pgid)
            if cpu_used(last, now)["server"] <= 0.01:  # at most one clock tick in 200 ms: idle
                return
            last = now

    def wanted(self, name: str) -> bool:
        """Whether --only (comma-separated) leaves scenario ``name`` in."""
        return not self.args.only or name in self.args.only.split(",")

    def run_scenarios(self) -> None:
        scenarios = ["discovery", "jwks", "client_credentials", "refresh", "introspection", "userinfo", "signin",
                     "signin_totp"]
        for scenario in filter(self.wanted, scenarios):
            targets = ["idp"] + (list(self.peer_meta) if scenario != "signin_totp" else [])
            if scenario in FLOOR_TOKEN_SCENARIOS and FLOOR_TOKENS in self.endpoints:
                targets.append(FLOOR_TOKENS)
            if scenario == "signin" and FLOOR_SIGNIN in self.endpoints:
                targets.append(FLOOR_SIGNIN)
            # The refresh runner takes the last token chunk for the warm-up.
            entry = self._interleaved({t: self.scenario_runner(scenario, t) for t in targets}, warm=self.rounds,
                                      limit_beside=scenario in ("signin", "signin_totp"))
            self.results["scenarios"][scenario] = entry
            line = ", ".join(f"{t} {e['rps']:.1f}/s p50 {e['p50_ms']:.1f} p99 {e['p99_ms']:.1f} ms, CPU ms/req "
                             + " + ".join(f"{kind} {ms:.2f}" for kind, ms in e["cpu_ms_by_process"].items())
                             + (f" errors {e['errors']}" if e["errors"] else "") for t, e in entry.items())
            if "argon2id_per_s" in entry["idp"]:
                line += (f"; argon2id limit beside the rounds {entry['idp']['argon2id_per_s']:.1f}/s "
                         f"({', '.join(f'{x:.1f}' for x in entry['idp']['argon2id_rounds'])})")
                # The most any server could reach with this driver on these cores: one that spent nothing but the
                # hash, sharing the cores with the driver's own CPU per sign-in (the median over every server's
                # rounds: the same driver code for all).
                driver_ms = statistics.median(r["driver_cpu_ms"] for e in entry.values() for r in e["rounds"])
                hash_ms = (os.cpu_count() or 1) * 1000 / entry["idp"]["argon2id_per_s"]
                ceiling = hash_ms / (hash_ms + driver_ms)
                self.results.setdefault("signin_ceiling", {})[scenario] = {
                    "driver_cpu_ms": driver_ms, "argon2id_cpu_ms": hash_ms, "fraction": ceiling}
                line += (f"; the driver's own CPU {driver_ms:.1f} ms per sign-in, so a server doing nothing but the "
                         f"hash could reach at most {ceiling:.0%} of the limit here")
            log(f"{scenario}: {line}")
            for key, text in self.first_errors.items():
                if key.startswith(scenario + "/") and key not in self.results.setdefault("first_errors", {}):
                    self.results["first_errors"][key] = text
                    log(f"  first error {key}: {text}")

    def floor(self) -> None:
        """The serving stack's own cost per request: gunicorn with idp's worker settings answering idp's discovery
        document from a plain WSGI callable and from a bare Flask app (bench/floor.py), rounds interleaved like
        the scenarios. No idp code, no storage: what any Flask app on this stack pays before doing anything."""
        names = ("floor_wsgi", "floor_flask")
        for name in names:
            self._floor_server(name)
        self.results["floor"] = self._interleaved(
            {n: (lambda s, i, n=n: self.wrk(n, n, "discovery.lua", "/.well-known/openid-configuration", s))
             for n in names}, warm=0)
        flask_floor = self.floors.pop("floor_flask")  # the WSGI floor stays for half_peak
        os.killpg(flask_floor.pid, signal.SIGTERM)
        flask_floor.wait(15)
        log("stack floor: " + ", ".join(f"{n} {e['rps']:.0f}/s, {e['cpu_ms']:.2f} ms CPU/req"
                                        for n, e in self.results["floor"].items()))

    def _floor_server(self, name: str) -> None:
        """Start bench/floor.py's ``floor_wsgi`` or ``floor_flask`` under gunicorn (once) as a target of the bench."""
        if name in self.floors:
            return
        document = self.tmp / "discovery.json"
        if not document.exists():
            browser = driver.Browser(self.args.idp_port, IDP_HOST)
            document.write_bytes(browser.request("GET", "/.well-known/openid-configuration")[2])
            browser.close()
        port = self.args.idp_port + (20 if name == "floor_wsgi" else 21)
        app = "floor:wsgi_app" if name == "floor_wsgi" else "floor:flask_app"
        proc = self._gunicorn(app, BENCH, {**os.environ, "BENCH_FLOOR_DOC": str(document)}, port,
                              f"gunicorn-{name}.log")
        self.floors[name] = proc
        self.endpoints[name] = (port, IDP_HOST)
        self.cpu_of[name] = (proc.pid, (), ())

    def half_peak(self) -> None:
        """The token endpoint's p99 at half its peak rate: an open-loop Python driver at a fixed rate."""
        if "client_credentials" not in self.results["scenarios"]:
            return
        cc = self.results["scenarios"]["client_credentials"]
        peak = cc["idp"]["rps"]
        rate = peak / 2
        auth = {"Authorization": "Basic " + driver.basic(self.seed["client_id"], self.seed["client_secret"])}

        def request_to(path: str):
            def request(browser):
                status, _, payload = browser.request("POST", path, {"grant_type": "client_credentials"}, auth)
                return status, payload
            return request

        # Rounds like every scenario, the median reported: one stall of the shared host in a single 8-second run
        # would otherwise decide the p99 on its own (every round is kept in the JSON). Each round of idp is paired
        # with one of the same driver, rate and request against the WSGI floor (a fixed answer, no idp code, no
        # storage), in alternating order: the tail that the box and the driver make by themselves in those minutes.
        # Where the token paths' floor ran (bench/floor_tokens.py: the same token and audit rows, on the same
        # database), it gets the same driver at half of its own client_credentials peak: the target's own terms,
        # applied to the least this stack can do for that request, so a run says whether 10 ms is within reach.
        seconds = 4 if self.args.quick else 8
        self._floor_server("floor_wsgi")
        # target: (port, offered rate, path)
        targets = {"idp": (self.args.idp_port, rate, self.idp_meta["token_endpoint"]),
                   "floor": (self.endpoints["floor_wsgi"][0], rate, self.idp_meta["token_endpoint"])}
        if FLOOR_TOKENS in self.endpoints and cc.get(FLOOR_TOKENS, {}).get("rps", 0) > 0:
            targets[FLOOR_TOKENS] = (self.endpoints[FLOOR_TOKENS][0], cc[FLOOR_TOKENS]["rps"] / 2,
                                     FLOOR_TOKEN_META["token_endpoint"])
        rounds: dict[str, list] = {target: [] for target in targets}
        names = list(targets)
        for i in range(self.rounds):
            for target in names[i % len(names):] + names[:i % len(names)]:  # each goes first in turn
                port, offered, path = targets[target]
                with driver.HostProbe(self.tmp) as probe:
                    result = driver.open_loop(request_to(path), port=port, host=IDP_HOST, rate=offered,
                                              seconds=seconds, threads=16).summary()
                rounds[target].append({**result, "host": probe.summary(), "offered_rps": offered})

        def medians(rs: list[dict]) -> dict:
            return {**{key: statistics.median(r[key] for r in rs) for key in ("rps", "p50_ms", "p99_ms")},
                    "errors": sum(r["errors"] for r in rs), "rounds": rs}

        res, ref = medians(rounds["idp"]), medians(rounds["floor"])
        self.results["half_peak"] = {"scenario": "client_credentials", "peak_rps": peak, "target_rps": rate, **res,
                                     "floor": ref}
        log(f"half peak: {res['rps']:.1f}/s offered {rate:.1f}/s, p50 {res['p50_ms']:.1f} ms, "
            f"p99 {res['p99_ms']:.1f} ms (medians of {len(res['rounds'])} rounds; p99 of each: "
            f"{', '.join(format(r['p99_ms'], '.1f') for r in res['rounds'])} ms), errors {res['errors']}; "
            f"the WSGI floor at the same rate: p50 {ref['p50_ms']:.1f} ms, p99 {ref['p99_ms']:.1f} ms (each: "
            f"{', '.join(format(r['p99_ms'], '.1f') for r in ref['rounds'])} ms)")
        if FLOOR_TOKENS in rounds:
            tok = medians(rounds[FLOOR_TOKENS])
            self.results["half_peak"][FLOOR_TOKENS] = {"peak_rps": cc[FLOOR_TOKENS]["rps"],
                                                       "target_rps": targets[FLOOR_TOKENS][1], **tok}
            log(f"  the token paths' floor at half its own peak: {tok['rps']:.1f}/s offered "
                f"{targets[FLOOR_TOKENS][1]:.1f}/s, p50 {tok['p50_ms']:.1f} ms, p99 {tok['p99_ms']:.1f} ms (each: "
                f"{', '.join(format(r['p99_ms'], '.1f') for r in tok['rounds'])} ms), errors {tok['errors']}")
        for target, rs in rounds.items():
            log(f"  host during the {target} rounds: woke late p99/max " + ", ".join(
                f"{r['host']['wake_late_p99_ms']:.1f}/{r['host']['wake_late_max_ms']:.1f}" for r in rs)
                + " ms; fsync 4 KiB p50/p99/max " + ", ".join(
                f"{r['host']['fsync_p50_ms']:.1f}/{r['host']['fsync_p99_ms']:.1f}/{r['host']['fsync_max_ms']:.1f}"
                for r in rs) + " ms")

    def scale(self) -> None:
        """Sign-in and token latency, one client at a time, with ~1,000 and with SCALE users and tokens.

        Two idp servers side by side, each with its own database: this run's (about 2,000 users and the tokens the
        run issued) and a second one grown to SCALE users and SCALE tokens. Their batches alternate (small, large,
        small, ..., each going first in every other batch) so that the machine's noise hits both alike, as for idp
        and the peer.
        """
        small = _LatencySide("small", self.db, self.args.idp_port, self.idp_meta, self.seed)
        log(f"a second idp on a database grown to {self.scale_to} users and tokens (generate_series, one shared "
            "password hash)")
        t0 = time.monotonic()
        db = f"{self.db}_large"
        env, seed = self._fresh_database(db, totp_users=0)
        subprocess.run([sys.executable, str(BENCH / "seed.py"), "grow", "--users", str(self.scale_to), "--tokens",
                        str(self.scale_to)], env=env, cwd=self.tmp, check=True, capture_output=True)
        port = self.args.idp_port + 10
        _, meta = self.start_idp(env, port, log_name="gunicorn-large.log")
        large = _LatencySide("large", db, port, meta, seed)
        log(f"ready in {time.monotonic() - t0:.0f} s")
        batches = 3 if self.args.quick else 5
        per_batch = {"signin": 3 if self.args.quick else 8, "client_credentials": 100 if self.args.quick else 200,
                     "refresh": 100 if self.args.quick else 200, "userinfo": 100 if self.args.quick else 200}
        for side in (small, large):
            side.settle()
        for batch in range(batches):
            for side in (small, large) if batch % 2 == 0 else (large, small):  # neither always goes first
                for kind, count in per_batch.items():
                    side.run(kind, count)
        out = {}
        for side in (small, large):
            side.close()
            out[side.label] = {"counts": side.counts(), **side.summary()}
        log("; ".join(f"{label} ({v['counts']['users']} users, {v['counts']['tokens']} tokens): " + ", ".join(
            f"{k} p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} ms" for k, r in v.items() if k != "counts")
            for label, v in out.items()))
        self.results["scale"] = {**out, "batches": batches, "per_batch": per_batch, "ratio_p50": {
            k: out["large"][k]["p50_ms"] / out["small"][k]["p50_ms"] for k in per_batch}}

    def rss(self) -> None:
        workers = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if re.search(rf"^PPid:\s+{self.idp_pid}$", status, re.M):
                rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
                workers.append({"pid": int(entry.name), "rss_mb": round(rss / 1024, 1)})
        self.results["rss_per_worker"] = workers
        log("RSS per gunicorn worker: " + ", ".join(f"{w['rss_mb']} MB" for w in workers))

    def profile(self, out_dir: Path) -> None:
        """py-spy (all workers) during one round each of client_credentials, sign-in, refresh and userinfo (raw
        collapsed stacks, for bench/profile_summary.py)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        pyspy = shutil.which("py-spy") or str(BIN / "py-spy")
        for scenario in ("client_credentials", "signin", "refresh", "userinfo"):
            raw = out_dir / f"{scenario}.txt"
            spy = subprocess.Popen([pyspy, "record", "--pid", str(self.idp_pid), "--subprocesses", "--rate", "250",
                                    "--format", "raw", "--output", str(raw), "--duration", str(self.round_s + 1),
                                    "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            res = self.scenario_runner(scenario, "idp")(self.round_s, self.rounds + 1)
            spy.wait(timeout=60)
            log(f"profiled {scenario} ({res['rps']:.1f}/s) -> {raw}")

    # --- report -------------------------------------------------------------------------------------------------
    def table(self) -> str:
        lim = self.results["limits"]
        rows = [("scenario", "idp req/s", "p50 ms", "p99 ms", "peer req/s", "peer p99 ms", "idp/peer",
                 "CPU ms/req idp", "of it storage", "CPU ms/req peer", "fraction of limit")]
        for scenario, entry in self.results["scenarios"].items():
            me = entry["idp"]
            peer = entry.get("peer")
            frac = ""
            if scenario in ("signin", "signin_totp"):
                frac = f"{me['rps'] / me.get('argon2id_per_s', lim['argon2id_per_s']):.0%} of argon2id"
            elif scenario in ("client_credentials", "refresh"):
                frac = f"{me['rps'] / lim['rs256_sign_per_s']:.0%} of RS256"
            ratio = f"{me['rps'] / peer['rps']:.2f}" if peer and peer["rps"] else "-"
            rows.append((scenario, f"{me['rps']:.1f}", f"{me['p50_ms']:.1f}", f"{me['p99_ms']:.1f}",
                         f"{peer['rps']:.1f}" if peer else "-", f"{peer['p99_ms']:.1f}" if peer else "-", ratio,
                         f"{me['cpu_ms']:.2f}", f"{_storage_ms(me):.2f}", f"{peer['cpu_ms']:.2f}" if peer else "-",
                         frac))
            me["ratio_to_peer"] = me["rps"] / peer["rps"] if peer and peer["rps"] else None
        for name, label in (("floor_wsgi", "floor: gunicorn, WSGI"), ("floor_flask", "floor: gunicorn, Flask")):
            if name in self.results.get("floor", {}):
                me = self.results["floor"][name]
                rows.append((label, f"{me['rps']:.1f}", f"{me['p50_ms']:.1f}", f"{me['p99_ms']:.1f}", "-", "-", "-",
                             f"{me['cpu_ms']:.2f}", "-", "-", ""))
        return _markdown(rows)

    def durable_table(self) -> str:
        """idp against the peer with its state in PostgreSQL (peer_pg), where it ran; empty otherwise."""
        rows = [("scenario", "idp req/s", "peer_pg req/s", "peer_pg p99 ms", "idp/peer_pg", "CPU ms/req idp",
                 "CPU ms/req peer_pg", "of it PostgreSQL")]
        for scenario, entry in self.results["scenarios"].items():
            me, peer = entry["idp"], entry.get("peer_pg")
            if not peer:
                continue
            me["ratio_to_peer_pg"] = me["rps"] / peer["rps"] if peer["rps"] else None
            rows.append((scenario, f"{me['rps']:.1f}", f"{peer['rps']:.1f}", f"{peer['p99_ms']:.1f}",
                         f"{me['ratio_to_peer_pg']:.2f}" if peer["rps"] else "-", f"{me['cpu_ms']:.2f}",
                         f"{peer['cpu_ms']:.2f}", f"{_storage_ms(peer):.2f}"))
        return _markdown(rows) if len(rows) > 1 else ""

    def dot_table(self) -> str:
        """idp against django-oauth-toolkit with its client secrets hashed (dot) and plain (dot_plain), where it ran;
        empty otherwise."""
        rows = [("scenario", "idp req/s", "dot req/s", "dot_plain req/s", "idp/dot", "idp/dot_plain",
                 "CPU ms/req idp", "CPU ms/req dot", "CPU ms/req dot_plain")]
        for scenario, entry in self.results["scenarios"].items():
            me = entry["idp"]
            if not all(t in entry for t in DOT_TARGETS):
                continue
            ratios = []
            for t in DOT_TARGETS:
                me[f"ratio_to_{t}"] = me["rps"] / entry[t]["rps"] if entry[t]["rps"] else None
                ratios.append(f"{me[f'ratio_to_{t}']:.2f}" if entry[t]["rps"] else "-")
            rows.append((scenario, f"{me['rps']:.1f}", *(f"{entry[t]['rps']:.1f}" for t in DOT_TARGETS), *ratios,
                         f"{me['cpu_ms']:.2f}", *(f"{entry[t]['cpu_ms']:.2f}" for t in DOT_TARGETS)))
        return _markdown(rows) if len(rows) > 1 else ""

    def floor_tokens_table(self) -> str:
        """The stack's floor for the token paths (bench/floor_tokens.py) beside idp and the peers, where it ran: what a
        minimal app on idp's stack reaches, so how far a target is within the stack's reach; empty otherwise."""
        rows = [("scenario", "floor req/s", "idp req/s", "idp/floor", "floor/peer_pg", "floor/dot_plain",
                 "CPU ms/req floor", "CPU ms/req idp")]
        for scenario, entry in self.results["scenarios"].items():
            floor = entry.get(FLOOR_TOKENS)
            if not floor or not floor["rps"]:
                continue
            me = entry["idp"]
            me["ratio_to_floor"] = me["rps"] / floor["rps"]
            for t in ("peer_pg", "dot_plain"):
                if t in entry and entry[t]["rps"]:
                    floor[f"ratio_to_{t}"] = floor["rps"] / entry[t]["rps"]
            rows.append((scenario, f"{floor['rps']:.1f}", f"{me['rps']:.1f}", f"{me['ratio_to_floor']:.2f}",
                         *(f"{floor[f'ratio_to_{t}']:.2f}" if f"ratio_to_{t}" in floor else "-"
                           for t in ("peer_pg", "dot_plain")),
                         f"{floor['cpu_ms']:.2f}", f"{me['cpu_ms']:.2f}"))
        return _markdown(rows) if len(rows) > 1 else ""

    def floor_signin_table(self) -> str:
        """The stack's floor for the complete password sign-in (bench/floor_signin.py) beside idp and the peers, where
        it ran: each target's sign-ins per second as a fraction of the argon2id limit measured beside the rounds,
        and its CPU per sign-in, with and without one verification's CPU (cores / limit); empty otherwise."""
        entry = self.results["scenarios"].get("signin", {})
        floor = entry.get(FLOOR_SIGNIN)
        if not floor or not floor["rps"]:
            return ""
        cores = os.cpu_count() or 1
        limit = entry["idp"].get("argon2id_per_s", self.results["limits"]["argon2id_per_s"])
        hash_ms = cores * 1000 / limit
        rows = [("target", "sign-ins/s", "p50 ms", "p99 ms", "fraction of argon2id limit", "CPU ms/sign-in",
                 "of it storage", "CPU ms besides the hash", "over the floor")]
        for target, me in entry.items():
            me["fraction_of_argon2id"] = me["rps"] / limit
            me["cpu_ms_besides_argon2id"] = me["cpu_ms"] - hash_ms
            me["ratio_to_floor_signin"] = me["rps"] / floor["rps"]
            rows.append((target, f"{me['rps']:.2f}", f"{me['p50_ms']:.1f}", f"{me['p99_ms']:.1f}",
                         f"{me['fraction_of_argon2id']:.0%}", f"{me['cpu_ms']:.1f}", f"{_storage_ms(me):.1f}",
                         f"{me['cpu_ms_besides_argon2id']:.1f}", f"{me['ratio_to_floor_signin']:.2f}"))
        return _markdown(rows)

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        if self.redis_db is not None:
            redis.Redis(host="127.0.0.1", port=6379, db=self.redis_db).flushdb()
        names = (self.db, *self.extra_dbs)
        try:
            pg("postgres", *(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)" for name in names))
        except psycopg2.Error as exc:
            log(f"could not drop {', '.join(names)}: {exc}")
        if not self.args.keep_temp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short round per scenario (about 2 minutes)")
    parser.add_argument("--out", default=str(BENCH / "results.json"), help="where the JSON results go")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="gunicorn workers (default: one per core, as in the README)")
    parser.add_argument("--gunicorn-args", default="", help="extra gunicorn arguments, e.g. '-k gthread --threads 4'")
    parser.add_argument("--idp-port", type=int, default=8601)
    parser.add_argument("--peer-port", type=int, default=8602)
    parser.add_argument("--dot-port", type=int, default=8604)
    parser.add_argument("--no-peer", dest="peer", action="store_false",
                        help="skip every peer (oidc-provider, both runs, and django-oauth-toolkit, both runs)")
    parser.add_argument("--no-durable-peer", dest="durable_peer", action="store_false",
                        help="skip the peer's second run with its state in PostgreSQL (peer_pg)")
    parser.add_argument("--no-dot", dest="dot", action="store_false",
                        help="skip the django-oauth-toolkit peer (dot, dot_plain)")
    parser.add_argument("--no-floor-tokens", dest="floor_tokens", action="store_false",
                        help="skip the stack's floor for the token paths (bench/floor_tokens.py) as a target")
    parser.add_argument("--no-floor-signin", dest="floor_signin", action="store_false",
                        help="skip the stack's floor for the complete password sign-in (bench/floor_signin.py) as a "
                             "target")
    parser.add_argument("--no-scale", dest="scale", action="store_false", help="skip the 1k vs 1M comparison")
    parser.add_argument("--profile", metavar="DIR", help="also record py-spy profiles of idp's workers into DIR")
    parser.add_argument("--only", help="comma-separated scenarios to run, 'floor' for the stack floor (default: all)")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temp folder (logs, seed, tokens)")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    bench = Bench(args)
    started = time.monotonic()
    try:
        bench.setup()
        cores = os.cpu_count() or 1
        counts = sorted({cores, 2 * cores, args.workers})  # the limit is the box's best, whatever idp runs
        log(f"limits: argon2id and RS256 in {' and '.join(map(str, counts))} processes (the best counts)")
        bench.results["limits"] = boxlimits.measure(counts, 3 if args.quick else 4)
        lim = bench.results["limits"]
        lim["argon2id_cpu_ms"] = cores * 1000 / lim["argon2id_per_s"]
        bench.argon2id_processes = max(lim["argon2id_by_processes"], key=lim["argon2id_by_processes"].get)
        log(f"limits: {lim['argon2id_per_s']:.1f} argon2id verifications/s, {lim['rs256_sign_per_s']:.0f} RS256 "
            "signatures/s")
        bench.idp_pid, bench.idp_meta = bench.start_idp(bench.env, args.idp_port)
        bench.cpu_of["idp"] = (bench.idp_pid, ("postgres", "redis-server"), (bench.db,))
        if args.peer:
            bench.start_peer("peer")
            if args.durable_peer:
                bench.start_peer("peer_pg")
            if args.dot:
                bench.start_dot()
        bench.issue_tokens()
        if args.floor_tokens and any(map(bench.wanted, FLOOR_TOKEN_SCENARIOS)):
            bench.start_floor_tokens()
        if args.floor_signin and bench.wanted("signin"):
            bench.start_floor_signin()
        bench.run_scenarios()
        if bench.wanted("floor"):
            bench.floor()
        bench.half_peak()
        bench.rss()
        if args.scale:
            bench.scale()
        if args.profile:
            bench.profile(Path(args.profile))
        table, durable, dot = bench.table(), bench.durable_table(), bench.dot_table()
        floor_tokens, floor_signin = bench.floor_tokens_table(), bench.floor_signin_table()
        bench.results.update({
            "command": " ".join(["bench/run.py", *argv]), "quick": args.quick,
            "setup": {"gunicorn_workers": args.workers, "wrk": f"-t{bench.wrk_threads} -c{bench.wrk_conns}",
                      "signin_threads": bench.signin_threads, "rounds": bench.rounds, "round_s": bench.round_s,
                      "warmup_s": bench.warmup_s, "cores": os.cpu_count(),
                      "peer": "oidc-provider 9.13.3 (one node process, in-memory adapter)" if args.peer else None,
                      "peer_pg": "the same, its state in PostgreSQL (bench/peer/server.js PostgresAdapter)"
                      if args.peer and args.durable_peer else None,
                      "dot": "django-oauth-toolkit (bench/peer/dot/requirements.txt) under gunicorn with idp's worker "
                      "settings, PostgreSQL; dot: client secrets hashed (argon2id, idp's cost), dot_plain: plain"
                      if args.peer and args.dot else None},
            "table": table, "durable_table": durable, "dot_table": dot, "floor_tokens_table": floor_tokens,
            "floor_signin_table": floor_signin,
            "elapsed_s": round(time.monotonic() - started, 1)})
        Path(args.out).write_text(json.dumps(bench.results, indent=2, default=str) + "\n")
        print()
        print(table)
        print()
        if durable:
            print("Against the peer with its state in PostgreSQL, committed before each answer (peer_pg):")
            print(durable)
            print()
        if dot:
            print("Against django-oauth-toolkit, client secrets hashed (dot, its default) and plain (dot_plain):")
            print(dot)
            print()
        if floor_tokens:
            print("The stack's floor for the token paths (bench/floor_tokens.py on gunicorn, idp's database and "
                  "tokens):")
            print(floor_tokens)
            print()
        if floor_signin:
            print("The complete password sign-in beside its stack floor (bench/floor_signin.py on gunicorn, idp's "
                  "database, users and client), against the argon2id limit measured beside the rounds:")
            print(floor_signin)
            print()
        hp = bench.results.get("half_peak", {"target_rps": 0, "rps": 0, "p50_ms": 0, "p99_ms": 0})
        print(f"Token endpoint at half its peak ({hp['target_rps']:.0f}/s offered, {hp['rps']:.0f}/s served): "
              f"p50 {hp['p50_ms']:.1f} ms, p99 {hp['p99_ms']:.1f} ms")
        if "floor" in hp:
            print(f"  the same driver at the same rate against the WSGI floor: p50 {hp['floor']['p50_ms']:.1f} ms, "
                  f"p99 {hp['floor']['p99_ms']:.1f} ms (the tail of the box and the driver alone)")
        if FLOOR_TOKENS in hp:
            tok = hp[FLOOR_TOKENS]
            print(f"  the same driver against the token paths' floor at half its own peak ({tok['target_rps']:.0f}/s "
                  f"offered): p50 {tok['p50_ms']:.1f} ms, p99 {tok['p99_ms']:.1f} ms (the same rows written)")
        for scenario, ceiling in bench.results.get("signin_ceiling", {}).items():
            print(f"{scenario}: the driver's own CPU {ceiling['driver_cpu_ms']:.1f} ms per sign-in beside a "
                  f"{ceiling['argon2id_cpu_ms']:.0f} ms hash: at most {ceiling['fraction']:.0%} of the argon2id limit "
                  "for a server that does nothing else, with this driver on these cores")
        print("RSS per gunicorn worker: " + ", ".join(f"{w['rss_mb']} MB" for w in bench.results["rss_per_worker"]))
        print(f"One argon2id verification costs {lim['argon2id_cpu_ms']:.0f} ms of CPU (cores / limit); CPU ms/req is "
              "the server's CPU per request or sign-in (idp: gunicorn workers + PostgreSQL + Redis; peer: node; "
              "peer_pg: node + PostgreSQL; dot: gunicorn workers + PostgreSQL)")
        if "scale" in bench.results:
            sc = bench.results["scale"]
            print(f"Latency p50, {sc['small']['counts']} -> {sc['large']['counts']}: " + ", ".join(
                f"{k} {sc['small'][k]['p50_ms']:.1f} -> {sc['large'][k]['p50_ms']:.1f} ms ({v:.2f}x)"
                for k, v in sc["ratio_p50"].items()))
        for note in bench.results["notes"]:
            print("Note: " + note)
        print(f"Results: {args.out} ({time.monotonic() - started:.0f} s)")
    finally:
        bench.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
