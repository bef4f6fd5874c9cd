"""Per-account and per-IP limits on failed attempts, with growing delays (SECURITY.md 21).

Each kind of attempt (password, later OTP and recovery codes) has tiers such as "5/minute;15/hour;40/day":
as each tier fills, the wait grows from a minute to an hour to a day. Counters live in flask-limiter's
storage (Redis when configured), keyed by a hash of the account name so unknown accounts behave the same.
"""

from __future__ import annotations

import hashlib
import time

from limits import parse_many
from limits.strategies import RateLimiter

from idp.security.network import rate_key


def account_key(identifier: str) -> str:
    """The counter key of an account name, whether or not such an account exists (no enumeration)."""
    return hashlib.sha256(identifier.strip().lower().encode()).hexdigest()[:32]


class Throttle:
    """Failed-attempt counters over a ``limits`` strategy."""

    def __init__(self, strategy: RateLimiter, tiers: dict[str, str], prefix: str = "idp"):
        self.strategy = strategy
        self.prefix = prefix
        # Keys are scopes ("account", "ip") or "kind:scope" ("otp:account") for a kind with its own tiers.
        self.tiers = {scope: parse_many(spec) for scope, spec in tiers.items()}

    def _items(self, kind: str, scope: str):
        return self.tiers.get(f"{kind}:{scope}", self.tiers.get(scope, ()))

    @staticmethod
    def _keyed(keys: dict[str, str]) -> dict[str, str]:
        """The counters' keys: an "ip" key counts its address's /64 when it is IPv6 (idp.security.network)."""
        return {scope: rate_key(ident) if scope == "ip" else ident for scope, ident in keys.items()}

    def retry_after(self, kind: str, keys: dict[str, str], now: float | None = None) -> int:
        """Seconds to wait before another attempt is allowed (0 = allowed now)."""
        now = time.time() if now is None else now
        wait = 0.0
        blocked = False
        for scope, ident in self._keyed(keys).items():
            for item in self._items(kind, scope):
                if not self.strategy.test(item, self.prefix, kind, scope, ident):
                    blocked = True
                    stats = self.strategy.get_window_stats(item, self.prefix, kind, scope, ident)
                    # Redis reports whole seconds; a window never makes anyone wait longer than its length.
                    wait = max(wait, min(stats.reset_time - now, item.get_expiry()))
        return max(int(wait + 0.999), 1) if blocked else 0

    def failed(self, kind: str, keys: dict[str, str]) -> None:
        """Count one failed attempt against every key."""
        for scope, ident in self._keyed(keys).items():
            for item in self._items(kind, scope):
                self.strategy.hit(item, self.prefix, kind, scope, ident)

    def succeeded(self, kind: str, keys: dict[str, str]) -> None:
        """A success clears the account's delays (IP counters keep counting other accounts' failures)."""
        for item in self._items(kind, "account"):
            if "account" in keys:
                self.strategy.clear(item, self.prefix, kind, "account", keys["account"])
