"""Private keys: from ``WEB3_PRIVATE_KEY``, a key file, or (accepted, with a warning, as Lilypad
does) ``--web3-private-key``; never logged, never in an error message."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lilypad.chain.crypto import Signer
from lilypad.errors import ConfigError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

KEY_ENV = "WEB3_PRIVATE_KEY"
#: Lilypad's flag for the key; a command that takes ``--key-file`` takes it too.
KEY_FLAG = "--web3-private-key"
#: What the CLI says (on stderr) when the key comes from the command line.
KEY_FLAG_WARNING = (
    f"warning: a private key given with {KEY_FLAG} is visible to other users of this machine "
    "(ps, /proc) and may stay in your shell history; use --key-file FILE (mode 600) or "
    f"${KEY_ENV} instead"
)


def load_account(
    key_file: Path | None = None, *, role: str = "this node", key: str | None = None
) -> LocalAccount:
    """:func:`load_signer` as an eth-account account, for the services' web3 transactions."""
    from eth_account import Account

    account: LocalAccount = Account.from_key(load_signer(key_file, role=role, key=key).key)
    return account


def load_signer(
    key_file: Path | None = None, *, role: str = "this node", key: str | None = None
) -> Signer:
    """The key that signs for ``role`` (light: no eth-account, see :mod:`lilypad.chain.crypto`).

    Args:
        key_file: A file holding the hex private key (one line); else ``$WEB3_PRIVATE_KEY``.
        role: Named in error messages ("the solver", "the job creator").
        key: The hex key itself, from ``--web3-private-key`` (the CLI warns of it first).

    Raises:
        ConfigError: no key given, both a key and a key file, the file is unreadable or too
            open, or the key is malformed. The message never contains the key.
    """
    if key is not None and key_file is not None:
        raise ConfigError(f"give {KEY_FLAG} or --key-file, not both")
    if key is not None:
        text, source = key.strip(), KEY_FLAG
    elif key_file is not None:
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
