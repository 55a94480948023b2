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
    │   │   │   └── TemplateError          a module template that does not parse or run
    │   │   └── InvalidTunable
    │   │       └── UnacceptableInput      [resource_provider.inputs]
    │   ├── ConfigError
    │   │   └── UnknownNetwork (LookupError)
    │   ├── InvalidCID
    │   ├── InvalidIPFSPath
    │   ├── OutputDirInUse
    │   ├── SpecMismatch                   a job spec is not the one its offer signs
    │   ├── TruncatedBody                  [lilypad.storage.multipart]
    │   ├── JobRefused                     [resource_provider.runner]
    │   └── Unresolvable                   [resource_provider.mediator]
    ├── ModuleSourceError                  a git/local module could not be fetched or moved tag
    ├── ChainError
    │   ├── ChainUnavailable
    │   └── ContractReverted               names the custom error / revert reason
    ├── StorageError
    │   ├── BlockNotFound (LookupError)
    │   ├── CorruptBlock
    │   ├── BlockTooLarge
    │   ├── MalformedContent
    │   │   └── ContentTooLarge
    │   ├── UnsafeEntryName
    │   ├── NotPinned                      [lilypad.storage.client]
    │   └── InputUnavailable               [resource_provider.inputs]
    ├── ExecutorError
    │   ├── ExecutorUnavailable
    │   ├── ImageNotFound
    │   └── JobFailed
    ├── InferenceError
    ├── SolverError
    │   ├── InvalidRequest                 [solver.service]
    │   │   ├── InvalidFilter              [solver.service]
    │   │   └── OfferRejected              [solver.service]
    │   │       ├── DepositShort           [solver.service]
    │   │       └── TooManyOffers          [solver.service]
    │   ├── UnknownObject (LookupError)    [solver.service]
    │   ├── RateLimited                    [solver.service]
    │   ├── NotAuthenticated               [solver.service]
    │   ├── NotAllowed                     [solver.service]
    │   ├── StreamsFull                    [solver.stream]
    │   ├── TooManyStreams                 [solver.stream]
    │   ├── Duplicate                      [solver.store]
    │   ├── SolverUnreachable              [lilypad.solver_api]
    │   └── SolverRefused                  [lilypad.solver_api]
    │       ├── DepositShort               [lilypad.solver_api]
    │       ├── NotFound (LookupError)     [lilypad.solver_api]
    │       ├── AlreadyKnown               [lilypad.solver_api]
    │       ├── NotAuthenticated           [lilypad.solver_api]
    │       ├── NotAllowed                 [lilypad.solver_api]
    │       └── SolverBusy                 [lilypad.solver_api]
    ├── JobError                           [lilypad.creator.runner]
    │   ├── NoMatch                        [lilypad.creator.runner]
    │   ├── ResultTimeout                  [lilypad.creator.runner]
    │   ├── ModuleFailed                   [lilypad.creator.runner]
    │   ├── VerificationFailed             [lilypad.creator.runner]
    │   ├── CheatCaught                    [lilypad.creator.runner]
    │   ├── MediationExpired               [lilypad.creator.runner]
    │   ├── InputLost                      [lilypad.creator.runner]
    │   └── Cancelled                      [lilypad.creator.runner]
    └── NetworkError                       [lilypad.localnet]

A name in brackets is defined in that module, beside the code that raises it; every other
class is defined here. ``tests/test_errors.py`` checks this drawing against the code.

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


class TemplateError(InvalidManifest):
    """A module's ``lilypad_module.json.tmpl`` does not parse, does not run with the given
    inputs, or does not render a job this project can run; the message names ``file:line:col``
    where it can."""


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


class OutputDirInUse(InputError):
    """``--output`` names a folder that holds something other than a previous job result."""


class ExecutorUnavailable(ExecutorError):
    """The chosen executor cannot run here (no Docker Engine answers, no sandbox...)."""


class ImageNotFound(ExecutorError):
    """A module's image is not on the Docker Engine; the message says how to build it."""


class JobFailed(ExecutorError):
    """The module ran but did not succeed: non-zero exit, timeout or too much output."""


class InvalidCID(InputError):
    """A string is not a valid IPFS content identifier (CID)."""


class SpecMismatch(InputError):
    """A job spec does not match the hashes its signed offer commits to."""


class InvalidIPFSPath(InputError):
    """An ``/ipfs/<cid>/<path>`` has a segment that could escape its root (``..``, ``/``)."""


class BlockNotFound(StorageError, LookupError):
    """A block (or the content behind a CID) is not in the store or could not be found in time."""


class CorruptBlock(StorageError):
    """A block's bytes do not hash to its CID: the store or the peer returned wrong data."""


class BlockTooLarge(StorageError):
    """A block is over the size a reader accepts (a CAR's, or kubo's 1 MiB block limit)."""


class MalformedContent(StorageError):
    """The blocks are what their CIDs name, but they are not valid UnixFS (a bad node, a root
    that is a symlink, a file node whose sizes do not add up): the same on every try."""


class ContentTooLarge(MalformedContent):
    """A download holds more bytes than its reader allows (a job's result over the job's output
    limit): the same on every try."""


class UnsafeEntryName(StorageError):
    """A directory entry in IPFS data has a name that could escape the download directory."""


class InferenceError(LilypadError):
    """A module's inference could not run: missing weights, bad job settings, a failed encoder."""


class UnknownNetwork(ConfigError, LookupError):
    """No network profile by that name."""


class ChainUnavailable(ChainError):
    """The chain's RPC endpoint cannot be reached or answered with an error."""


class ContractReverted(ChainError):
    """A contract call reverted; ``error`` names the custom error or revert reason.

    Attributes:
        error: The Solidity custom error name (``NonceUsed``), ``Error`` for a ``require`` reason,
            ``Panic`` for an assertion, or ``unknown`` when the revert data could not be decoded.
        details: The decoded arguments of that error, by parameter name.
    """

    def __init__(
        self, message: str, *, error: str, details: dict[str, object], hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.error = error
        self.details = details
