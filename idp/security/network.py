"""Which address a request really comes from."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

# The WSGI environ key where the address of the connection's peer (the proxy, behind one) is kept once REMOTE_ADDR
# holds the client's (idp.http.client_address).
PEER_ADDR = "idp.peer_addr"


def networks(trusted: Iterable[str]) -> tuple[ipaddress._BaseNetwork, ...]:
    """The trusted proxies as networks (parsed once per list: every request asks); a bad entry raises ValueError."""
    return _parsed(tuple(trusted))


@lru_cache(maxsize=8)
def _parsed(trusted: tuple[str, ...]) -> tuple[ipaddress._BaseNetwork, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in trusted)


def is_trusted(address: str, networks: tuple[ipaddress._BaseNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_ip(remote_addr: str, forwarded_for: str | None, trusted_proxies: Iterable[str]) -> str:
    """The client address: X-Forwarded-For is read right to left only while each hop is a trusted proxy."""
    if not forwarded_for:
        return remote_addr
    proxies = networks(trusted_proxies)
    if not proxies or not is_trusted(remote_addr, proxies):
        return remote_addr
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return remote_addr
    return hops[0] if hops else remote_addr


# The IPv6 prefix one subscriber is typically given (RFC 6177: a /56 or a /48 to a site, and at least a /64 to a
# link): an attacker holding a /64 has 2**64 addresses, so a per-address limit would be no limit.
IPV6_PREFIX = 64


def rate_key(address: str) -> str:
    """The key per-IP limits and throttles count ``address`` under: an IPv4 address itself, an IPv6 address its /64
    (an IPv4-mapped IPv6 address as the IPv4 address it is). Anything unparsable stays as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return address
