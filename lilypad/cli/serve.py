"""``lilypad serve``: the local HTTP API and dashboard (:mod:`lilypad.web.serve`)."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from pathlib import Path

import typer

from lilypad.cli import keyopt
from lilypad.cli.keyopt import WEB3_KEY_OPTION
from lilypad.cli.output import console, note
from lilypad.errors import InputError

#: Where the access token can come from instead of being made up at each start.
TOKEN_VARIABLE = "LILYPAD_SERVE_TOKEN"


def serve(
    network: str = typer.Option("local", "--network", "-n", help="Network profile."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="A loopback address (it holds your key: never a public one)."
    ),
    port: int = typer.Option(8765, "--port", help="The port (0: any free one)."),
    yes: bool = typer.Option(
        False,
        "--yes",
        "-y",
        help="Deposit into the market what each job needs (its max price and a challenge's "
        "fee) without asking; else a short deposit refuses the job.",
    ),
    key_file: Path | None = typer.Option(
        None, "--key-file", help="Private key file (else $WEB3_PRIVATE_KEY)."
    ),
    web3_key: str | None = WEB3_KEY_OPTION,
) -> None:
    """Serve the HTTP API and the dashboard on this machine: run jobs from a browser or any
    program, watch them live, see their outputs."""
    import uvicorn

    from lilypad.client import Client
    from lilypad.web.serve import create_app

    _loopback(host)
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port} is out of range: from 0 to 65,535")
    keyopt.warn_of(web3_key)
    client = Client(network, key=web3_key, key_file=key_file, deposit=yes)
    client.profile.require_contracts()
    account = client.account  # a missing or malformed key stops here
    token = os.environ.get(TOKEN_VARIABLE) or secrets.token_urlsafe(24)
    listening = _bind(host, port)  # bound before the URL is printed: it answers at once
    bound = listening.getsockname()[1]
    where = f"[{host}]" if ":" in host else host
    note(f"serving jobs of {account.address} on {network!r}; Ctrl-C stops")
    if not yes:
        note("a job whose deposit is short is refused: start with --yes to deposit it")
    console.print(f"http://{where}:{bound}/?token={token}", soft_wrap=True)
    config = uvicorn.Config(create_app(client, token=token), log_level="warning")
    uvicorn.Server(config).run(sockets=[listening])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host.strip("[]"), port))
    except OSError as exc:
        listening.close()
        raise InputError(
            f"--port {port}: cannot listen on {host}:{port} ({exc.strerror})",
            hint="another lilypad serve may hold it: pick another --port, or 0 for any",
        ) from None
    listening.listen(128)
    listening.set_inheritable(True)
    return listening


def _loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise InputError(f"--host {host!r} is not an IP address (give 127.0.0.1 or ::1)") from None
    if not address.is_loopback:
        raise InputError(
            f"--host {host} is not a loopback address: lilypad serve holds your key and runs "
            "jobs with it, so it listens on this machine only",
            hint="reach it from elsewhere through an SSH tunnel: ssh -L 8765:127.0.0.1:8765 HOST",
        )
