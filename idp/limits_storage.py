"""Rate-limit and throttle counters in Redis that degrade to this process's memory while Redis is down (issue 20).

Every limit of idp (the per-IP form limits, the account API's per-token limit, the failed-attempt throttle of
idp.login.throttle) counts in one ``limits`` storage, shared by all instances through Redis. When Redis stopped,
every sign-in used to fail with a 500 (the throttle's first read raised). flask-limiter has an in-memory fallback of
its own, but while it is active it replaces every route's limits with one global list and leaves the throttle,
which reads the storage directly, failing; so the degradation is done one level down instead, in the storage:

- each operation goes to Redis; a Redis error sends it, and every operation for the next ``RETRY_AFTER`` seconds,
  to a ``MemoryStorage`` of this process instead, so every limit keeps its meaning, counted per process (an
  attacker spreading guesses over N workers gets at most N times the allowance while Redis is down, and the
  per-account lockout in the database still counts every failure);
- after that pause Redis is tried again, and once it answers the shared counters are used again (what was counted
  in memory meanwhile is not carried over: a short outage forgives at most one window's worth);
- the connection has short timeouts (``REDIS_TIMEOUT``), so a Redis that hangs instead of refusing costs one
  request at most that long per pause, not every request.

limits registers a storage class for its URI scheme (``STORAGE_SCHEME``, limits' documented extension point), so
the app names this storage with ``idp+redis://`` (or ``idp+rediss://``) in RATELIMIT_STORAGE_URI.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from limits.storage import MemoryStorage, RedisStorage, Storage

log = logging.getLogger("idp.limits")

SCHEME = "idp+"
RETRY_AFTER = 5.0
REDIS_TIMEOUT = 0.5


class RedisWithMemoryFallback(Storage):
    """A ``limits`` storage over Redis that falls back to process memory while Redis fails (module docstring)."""

    STORAGE_SCHEME = ["idp+redis", "idp+rediss"]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        options = {"socket_connect_timeout": REDIS_TIMEOUT, "socket_timeout": REDIS_TIMEOUT, **options}
        self.primary = RedisStorage(uri.removeprefix(SCHEME), wrap_exceptions=False, **options)
        self.fallback = MemoryStorage()
        self._down_until = 0.0
        self._lock = threading.Lock()

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return self.primary.base_exceptions

    @property
    def degraded(self) -> bool:
        """Whether operations go to process memory now (Redis failed less than RETRY_AFTER seconds ago)."""
        return time.monotonic() < self._down_until

    def _call(self, name: str, *args: Any) -> Any:
        if not self.degraded:
            try:
                return getattr(self.primary, name)(*args)
            except self.primary.base_exceptions as exc:
                with self._lock:
                    if not self.degraded:
                        log.warning("rate-limit storage unavailable (%s): counting in this process for %ss",
                                    type(exc).__name__, RETRY_AFTER)
                    self._down_until = time.monotonic() + RETRY_AFTER
        return getattr(self.fallback, name)(*args)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self._call("incr", key, expiry, amount)

    def get(self, key: str) -> int:
        return self._call("get", key)

    def get_expiry(self, key: str) -> float:
        return self._call("get_expiry", key)

    def clear(self, key: str) -> None:
        self._call("clear", key)

    def reset(self) -> int | None:
        self.fallback.reset()
        return self.primary.reset()  # an operator's command: a failure is theirs to see

    def check(self) -> bool:
        try:
            return self.primary.check()
        except self.primary.base_exceptions:
            return False
