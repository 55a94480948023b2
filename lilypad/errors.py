"""The one exception hierarchy of the project.

Everything the project raises on purpose derives from :class:`LilypadError`; third-party
exceptions (web3, docker, httpx, SQLAlchemy, git) are translated into it at the boundary where
they are caught, so the CLI only ever has one kind of error to turn into a message.

    LilypadError
    ├── InputError (ValueError)            bad input from the user: CLI exit code 2
    │   ├── ModuleError
    │   │   ├── UnknownModule (LookupError)
    │   │   ├── UnknownVersion (LookupError)
    │   │   ├── InvalidManifest
    │   │   └── InvalidTunable
    │   └── ConfigError
    ├── ModuleSourceError                  a git/local module could not be fetched or moved tag
    ├── ChainError
    ├── StorageError
    ├── ExecutorError
    └── SolverError

A subclass of :class:`InputError` means "the user asked for something that cannot be"; every
other :class:`LilypadError` means "something failed while doing what was asked".
"""

from __future__ import annotations


class LilypadError(Exception):
    """Root of every error the project raises on purpose.

    Args:
        message: One line saying what failed, the offending value and, where useful, what to do.
        hint: An optional next step shown after the message.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class InputError(LilypadError, ValueError):
    """The user's input cannot be accepted; nothing has been done."""

    exit_code = 2


class ModuleError(InputError):
    """A module reference, version or manifest is not usable."""


class UnknownModule(ModuleError, LookupError):
    """No module by that name."""


class UnknownVersion(ModuleError, LookupError):
    """The module exists but not at that version."""


class InvalidManifest(ModuleError):
    """A module's manifest is malformed or unsafe."""


class InvalidTunable(ModuleError):
    """A `-i KEY=VALUE` input is unknown, malformed, of the wrong type or out of range."""


class ConfigError(InputError):
    """A setting or network profile is malformed."""


class ModuleSourceError(LilypadError):
    """A git or local module source could not be fetched, or its tag moved."""


class ChainError(LilypadError):
    """A chain call or transaction failed."""


class StorageError(LilypadError):
    """An IPFS operation failed or returned bytes that do not match their CID."""


class ExecutorError(LilypadError):
    """A job could not be run by an executor."""


class SolverError(LilypadError):
    """The solver refused a request or could not be reached."""
