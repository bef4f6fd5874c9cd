"""Which address a request really comes from."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def _networks(trusted: Iterable[str]) -> list[ipaddress._BaseNetwork]:
    return [ipaddress.ip_network(entry, strict=False) for entry in trusted]


def _is_trusted(address: str, networks: list) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_ip(remote_addr: str, forwarded_for: str | None, trusted_proxies: Iterable[str]) -> str:
    """The client address: X-Forwarded-For is read right to left only while each hop is a trusted proxy."""
    networks = _networks(trusted_proxies)
    if not networks or not forwarded_for or not _is_trusted(remote_addr, networks):
        return remote_addr
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return remote_addr
    return hops[0] if hops else remote_addr
