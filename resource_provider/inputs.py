"""A job's file inputs on the machine that runs it: fetched by CID, verified, cached, mounted.

A provider, a mediator and ``lilypad module run`` fetch each input of a job (see
:func:`lilypad.modules.files.file_inputs`) into a cache keyed by the file's CID: every block
verified on the way, the module's size limit enforced while it streams (a provider never stores
more than the job allows), an image decoded and checked as the job creator's CLI checked it. A
cached input is never fetched twice, nor even looked up again (the cache notes the file CID each
IPFS path resolved to, which never changes), so a deal whose input was fetched for an earlier one
runs even if the input has gone from IPFS since. The cache only ever holds complete, verified
files (each is renamed into place when done), read-only, so a job can read but never change what
the next job reads.

Two ways an input can fail, and they differ for the deal:

* :class:`UnacceptableInput` (an :class:`~lilypad.errors.InvalidTunable`) — the content is there
  and is not what the module takes (a folder, too large, not a decodable picture): the same on
  every machine, so every provider and mediator reach the same verdict;
* :class:`InputUnavailable` — it could not be fetched now (unknown to the network, a node down,
  a peer serving wrong blocks): it may work later, or never, and nobody can prove later which.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lilypad.config import get_settings
from lilypad.errors import (
    ContentTooLarge,
    InputError,
    InvalidTunable,
    MalformedContent,
    StorageError,
)
from lilypad.fsutil import write_atomic
from lilypad.modules.files import FileInput, check_image
from lilypad.modules.tunables import TunableType, _size
from lilypad.storage import CID, Storage
from resource_provider.executors.base import JobInput


class InputUnavailable(StorageError):
    """A job's input could not be fetched from IPFS (not found, or not in time).

    Attributes:
        input: The input that could not be fetched.
    """

    def __init__(self, message: str, *, input: FileInput, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.input = input


class UnacceptableInput(InvalidTunable):
    """A job's input is there, and is not a file its tunable takes (a folder, too large, not a
    picture): the same on every machine.

    Attributes:
        input: The input at fault.
    """

    def __init__(self, message: str, *, input: FileInput, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.input = input


def inputs_cache() -> Path:
    """Where fetched inputs are kept: ``<cache_dir>/inputs/<file CID>``."""
    return get_settings().cache_dir / "inputs"


def fetch_inputs(
    storage: Storage, inputs: Sequence[FileInput], cache: Path | None = None
) -> tuple[JobInput, ...]:
    """Fetch every input (from the cache when it holds it) and say where each is mounted.

    Raises:
        UnacceptableInput: an input is not a file the module takes (the same everywhere).
        InputUnavailable: an input could not be fetched.
    """
    cache = cache or inputs_cache()
    return tuple(JobInput(fetch_input(storage, item, cache), item.mount) for item in inputs)


def fetch_input(storage: Storage, item: FileInput, cache: Path) -> Path:
    """The cached file of ``item``, fetched first if needed (see :func:`fetch_inputs`).

    Raises:
        UnacceptableInput: it is not a file the module takes.
        InputUnavailable: it could not be fetched.
    """
    try:
        return _fetch(storage, item, cache)
    except InvalidTunable as exc:
        if isinstance(exc, UnacceptableInput):
            raise
        raise UnacceptableInput(exc.message, input=item, hint=exc.hint) from None


def _fetch(storage: Storage, item: FileInput, cache: Path) -> Path:
    label = f"{item.name}={item.ref}"
    limit = item.tunable.byte_limit
    known = _cached(item, cache)
    if known is not None:
        size = known.stat().st_size
        if size > limit:
            raise InvalidTunable(
                f"{label} is {_size(size)}; {item.name} takes at most {_size(limit)}"
            )
        _check_content(item, label, known)
        return known
    try:
        entry = storage.stat(item.ref)
    except MalformedContent as exc:
        raise InvalidTunable(f"{label}: {exc.message}") from None
    except StorageError as exc:
        raise InputUnavailable(
            f"input {label} could not be fetched: {exc.message}", input=item
        ) from None
    if entry.kind != "file":
        raise InvalidTunable(f"{label} is a {entry.kind}; {item.name} needs a file")
    if entry.size > limit:
        raise InvalidTunable(
            f"{label} is {_size(entry.size)}; {item.name} takes at most {_size(limit)}"
        )
    cached = cache / str(entry.cid.v1())
    if not cached.is_file():
        _download(storage, item, entry.cid, cached)
    _check_content(item, label, cached)
    write_atomic(_index(item, cache), str(entry.cid.v1()))
    return cached


def _download(storage: Storage, item: FileInput, cid: CID, cached: Path) -> None:
    """Fetch the file ``cid`` into ``cached``: complete and verified, or not at all."""
    label = f"{item.name}={item.ref}"
    limit = item.tunable.byte_limit
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cached.parent))
    try:
        part = staging / "file"
        try:
            storage.get(cid, part, max_bytes=limit)
        except ContentTooLarge:
            raise InvalidTunable(f"{label} holds more than the {_size(limit)} it may") from None
        except MalformedContent as exc:
            raise InvalidTunable(f"{label}: {exc.message}") from None
        except StorageError as exc:  # not found, a corrupt block from a peer, a node down
            raise InputUnavailable(
                f"input {label} could not be fetched: {exc.message}", input=item
            ) from None
        _check_content(item, label, part)
        part.chmod(0o444)
        os.replace(part, cached)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _index(item: FileInput, cache: Path) -> Path:
    """Where the cache notes the file CID that ``item.ref`` resolves to: an IPFS path never
    resolves to anything else, so a cached input needs nothing from IPFS, not even its path."""
    return cache / ".refs" / hashlib.sha256(item.ref.encode()).hexdigest()


def _cached(item: FileInput, cache: Path) -> Path | None:
    """The cached file of ``item.ref``, if this cache has fetched it before."""
    try:
        name = _index(item, cache).read_text(encoding="ascii").strip()
        cached = cache / str(CID.parse(name).v1())
    except (OSError, UnicodeError, InputError):
        return None
    return cached if cached.is_file() else None


def _check_content(item: FileInput, label: str, path: Path) -> None:
    if item.tunable.type is TunableType.IMAGE:
        check_image(item.tunable, label, path)
