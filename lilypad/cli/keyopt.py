"""``--web3-private-key``, Lilypad's flag for the key, as every signing command takes it beside
``--key-file``: accepted, with a warning on stderr, never echoed (:mod:`lilypad.keys`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from lilypad.cli.output import note

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from lilypad.chain.crypto import Signer

WEB3_KEY_OPTION: Any = typer.Option(
    None,
    "--web3-private-key",
    help="The private key itself (Lilypad's flag): visible to other users, prefer --key-file.",
    show_default=False,
)


def warn_of(web3_key: str | None) -> None:
    """Say on stderr that a key on the command line is visible to others (never the key)."""
    from lilypad.keys import KEY_FLAG_WARNING

    if web3_key is not None:
        note(f"[yellow]{escape(KEY_FLAG_WARNING)}[/]")


def signer(key_file: Path | None, web3_key: str | None, role: str) -> Signer:
    """:func:`lilypad.keys.load_signer`, warning of a key given on the command line."""
    from lilypad.keys import load_signer

    warn_of(web3_key)
    return load_signer(key_file, role=role, key=web3_key)


def account(key_file: Path | None, web3_key: str | None, role: str) -> LocalAccount:
    """:func:`lilypad.keys.load_account`, warning of a key given on the command line."""
    from lilypad.keys import load_account

    warn_of(web3_key)
    return load_account(key_file, role=role, key=web3_key)
