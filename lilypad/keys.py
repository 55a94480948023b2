"""Private keys: from ``WEB3_PRIVATE_KEY`` or a key file, never from a flag, never logged."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lilypad.chain.crypto import Signer
from lilypad.errors import ConfigError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

KEY_ENV = "WEB3_PRIVATE_KEY"


def load_account(key_file: Path | None = None, *, role: str = "this node") -> LocalAccount:
    """:func:`load_signer` as an eth-account account, for the services' web3 transactions."""
    from eth_account import Account

    account: LocalAccount = Account.from_key(load_signer(key_file, role=role).key)
    return account


def load_signer(key_file: Path | None = None, *, role: str = "this node") -> Signer:
    """The key that signs for ``role`` (light: no eth-account, see :mod:`lilypad.chain.crypto`).

    Args:
        key_file: A file holding the hex private key (one line); else ``$WEB3_PRIVATE_KEY``.
        role: Named in error messages ("the solver", "the job creator").

    Raises:
        ConfigError: no key given, the file is unreadable or too open, or the key is malformed.
            The message never contains the key.
    """
    if key_file is not None:
        try:
            mode = key_file.stat().st_mode
            text = key_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read key file {key_file}: {exc.strerror}") from None
        if mode & 0o077:
            raise ConfigError(
                f"key file {key_file} is readable by others (mode {mode & 0o777:o})",
                hint=f"chmod 600 {key_file}",
            )
        source = f"key file {key_file}"
    else:
        text = os.environ.get(KEY_ENV, "").strip()
        if not text:
            raise ConfigError(f"no private key for {role}: set {KEY_ENV} or pass --key-file FILE")
        source = KEY_ENV
    try:
        return Signer.from_key(text)
    except ValueError:
        raise ConfigError(f"{source} does not hold a valid private key (64 hex digits)") from None
