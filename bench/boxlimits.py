"""The box's limits, measured in the bench run: argon2id verifications and RS256 signatures per second.

argon2id runs idp's own verification (idp.security.passwords.verify_password: argon2-cffi's RFC 9106 parameters,
the lanes on VERIFY_THREADS threads) on a hash, as a sign-in does. RS256 signs a JWT-sized message with a 2048-bit
key through cryptography, the library under joserfc. Each runs in several counts of busy processes for a fixed
time, and the best count is the box's limit.
"""

from __future__ import annotations

import multiprocessing
import time


def _argon2_worker(seconds: float, queue) -> None:
    from idp.security.passwords import hash_password, verify_password

    stored = hash_password("bench correct horse battery staple")
    n = 0
    started = time.monotonic()
    while time.monotonic() < started + seconds:
        if not verify_password(stored, "bench correct horse battery staple"):
            raise RuntimeError("the bench password did not verify")
        n += 1
    queue.put(n / (time.monotonic() - started))


def _rs256_worker(seconds: float, queue) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    message = b"x" * 600  # about the signing input of an RFC 9068 access token
    n = 0
    started = time.monotonic()
    while time.monotonic() < started + seconds:
        key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        n += 1
    queue.put(n / (time.monotonic() - started))


def _run(target, processes: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(seconds, queue)) for _ in range(processes)]
    for p in procs:
        p.start()
    total = sum(queue.get(timeout=seconds + 60) for _ in procs)  # each worker's own rate, start-up excluded
    for p in procs:
        p.join(10)
    return total


def argon2id_rate(processes: int, seconds: float) -> float:
    """argon2id verifications per second of the whole box with ``processes`` busy processes."""
    return _run(_argon2_worker, processes, seconds)


def measure(processes: list[int], seconds: float) -> dict:
    """Per-second rates of the whole box for each count of busy processes; the limit is the best of them."""
    from idp.security.passwords import current_cost

    cost = current_cost()
    argon2 = {n: argon2id_rate(n, seconds) for n in processes}
    rs256 = {n: _run(_rs256_worker, n, seconds) for n in processes}
    return {
        "seconds": seconds,
        "argon2id_params": {"time_cost": cost.time, "memory_cost_kib": cost.memory, "parallelism": cost.lanes},
        "argon2id_by_processes": argon2, "rs256_by_processes": rs256,
        "argon2id_per_s": max(argon2.values()), "rs256_sign_per_s": max(rs256.values()),
    }
