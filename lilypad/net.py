"""Listening addresses as the CLI and the nodes take them: ``HOST:PORT``.

One parser for every ``--listen``, ``--metrics``, ``--api`` and ``--gateway``: a host name or IPv4
address and a port (``127.0.0.1:8080``), an IPv6 address in brackets (``[::1]:8080``), or, where a
caller accepts it (the IPFS node, as kubo does), a multiaddr ``/ip4/HOST/tcp/PORT``.
"""

from __future__ import annotations

import ipaddress
import re

from lilypad.errors import InputError

_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_BRACKETED = re.compile(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})")
_PLAIN = re.compile(r"([^:\[\]]+):(\d{1,5})")
_MULTIADDR = re.compile(r"/ip4/([^/]+)/tcp/(\d{1,5})")
MAX_PORT = 65535


def parse_host_port(
    text: str,
    what: str,
    *,
    example: str = "127.0.0.1:8080",
    any_port: bool = True,
    multiaddr: bool = False,
) -> tuple[str, int]:
    """Split ``HOST:PORT`` into a host (IPv6 without its brackets) and a port.

    Args:
        text: The address as the user wrote it.
        what: The option or setting it came from, for the message (``--listen``).
        example: A valid address for this option, shown in the message.
        any_port: Whether port 0 ("any free port") is allowed.
        multiaddr: Whether ``/ip4/HOST/tcp/PORT`` is accepted too.

    Raises:
        InputError: ``text`` is none of the accepted forms, or its port is out of range.
    """
    found = (
        _BRACKETED.fullmatch(text)
        or _PLAIN.fullmatch(text)
        or (_MULTIADDR.fullmatch(text) if multiaddr else None)
    )
    least = 0 if any_port else 1
    if found is not None and _valid_host(found[1]) and least <= int(found[2]) <= MAX_PORT:
        return found[1], int(found[2])
    forms = "HOST:PORT or /ip4/HOST/tcp/PORT" if multiaddr else "HOST:PORT"
    ports = f"0..{MAX_PORT}, 0: any free port" if any_port else f"1..{MAX_PORT}"
    raise InputError(
        f"{what} {text!r} is not {forms}, e.g. {example}",
        hint=f"the port is {ports}; an IPv6 host goes in brackets, e.g. [::1]:8080",
    )


def _valid_host(host: str) -> bool:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return _HOST.fullmatch(host) is not None
