"""Which addresses a hub gives out: to agents and users (public) and to peers."""

from __future__ import annotations

import socket

from remoteler.addr import format_hostport, parse_hostport

WILDCARDS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - recognised, not bound


def cert_hosts(listen_host: str, public_addrs: list[str]) -> list[str]:
    """The host names and addresses a hub's TLS certificates name."""
    hosts = [listen_host]
    for text in public_addrs:
        hosts.append(parse_hostport(text, 0)[0])
    return hosts


def advertised(bound: tuple[str, int], public_addrs: list[str]) -> str:
    """``HOST:PORT`` others should dial: the first ``--public-addr`` (its port defaulting
    to the bound one), else the bound address (the machine's name for a wildcard)."""
    host, port = bound
    if public_addrs:
        pub_host, pub_port = parse_hostport(public_addrs[0], port)
        return format_hostport(pub_host, pub_port or port)
    if host in WILDCARDS:
        host = socket.getfqdn()
    return format_hostport(host, port)
