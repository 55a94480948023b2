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

A provider then keeps what it fetched on its IPFS node until the deal settles (:func:`keep`,
:func:`release`): a job creator that removes its input once it has the result, and challenges,
must not leave the mediator without the input, the deal unjudged and the provider unpaid for the
work it did.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

from lilypad.config import get_settings
from lilypad.errors import (
    BlockNotFound,
    ContentTooLarge,
    InputError,
    InvalidTunable,
    MalformedContent,
    StorageError,
)
from lilypad.fsutil import write_atomic
from lilypad.modules.files import FileInput, check_content, check_size
from lilypad.modules.tunables import _size
from lilypad.storage import CID, Storage, compute_cid
from lilypad.storage.blockstore import PinType
from lilypad.storage.cid import DAG_PB, RAW, SHA2_256
from lilypad.storage.dag import parse_ipfs_path, split_path
from resource_provider.executors.base import JobInput

log = logging.getLogger(__name__)

#: Told of each pin a deal is to hold (its CID and type), before it is made.
OnPin = Callable[[str, PinType], None]


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
    known = _cached(item, cache)
    if known is not None:
        check_size(item.tunable, label, known.stat().st_size)
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
    check_size(item.tunable, label, entry.size)
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
    """What the job creator's CLI checked before signing, again here: an image decoded, a
    ``.safetensors`` file's header against the module's architecture."""
    check_content(item.tunable, label, path)


# --------------------------------------------------------------------- keeping inputs pinned
def keep(
    storage: Storage,
    inputs: Sequence[FileInput],
    *,
    ours: Mapping[str, PinType] | None = None,
    note: OnPin | None = None,
    cache: Path | None = None,
) -> dict[str, PinType]:
    """Pin every input (fetched or cached) on ``storage`` while its deal is open, so that a
    mediator can fetch it even if its job creator removes it: the file recursively, each block
    on its IPFS path (the folders above it) directly.

    A pin is of a CID, not of a block, and a pin someone else made is never this provider's to
    take away (the job creator's pin of its folder, on a node they share): such a block is pinned
    under another CID of its own (its raw CID, or its CIDv0 or CIDv1), which their unpin leaves.
    An input whose blocks the node has lost since it was cached (this provider fetched it for an
    earlier deal) is added again from the cache, when that gives the same CIDs.

    An input that cannot be kept is logged as a warning (saying what this provider risks), never
    raised: the job runs all the same.

    Args:
        storage: The provider's IPFS node (where the inputs were fetched).
        inputs: The job's inputs, already fetched (:func:`fetch_inputs`).
        ours: The pins this provider already holds for its other open deals: held again, never
            pinned twice.
        note: Told of each pin this deal is to hold before it is made, so that a crash in between
            leaves it on the deal's record (released with the deal), never a pin nobody releases.
        cache: The inputs cache (:func:`inputs_cache` by default).

    Returns:
        The pins this deal holds now (CID -> type), made here or among ``ours``: give them to
        :func:`release` once the deal has settled.
    """
    held: dict[str, PinType] = {}
    for item in inputs:
        try:
            _keep_input(storage, item, held, ours or {}, note, cache or inputs_cache())
        except StorageError as exc:
            log.warning(
                "input %s=%s cannot be kept on IPFS until the deal settles (%s); the job runs "
                "all the same, but if its job creator removes it and challenges, no mediator "
                "can check the result: the deal times out unjudged and this provider is not paid "
                "(its collateral comes back)",
                item.name,
                item.ref,
                exc.message,
            )
    return held


def release(storage: Storage, held: Mapping[str, PinType], others: Collection[str] = ()) -> None:
    """Unpin the pins :func:`keep` made for a deal that has settled, but those that another open
    deal holds (``others``) and any pinned otherwise since (someone pinned it again: theirs now).
    A pin that cannot be removed (the node is down) is logged as a warning and left."""
    for cid, kind in held.items():
        if cid in others:
            continue
        try:
            if storage.pinned(cid) is kind:
                storage.unpin(cid)
        except StorageError as exc:
            log.warning(
                "cannot unpin input %s (%s); it stays on this IPFS node until `lilypad ipfs pin "
                "rm %s`",
                cid,
                exc.message,
                cid,
            )


def _keep_input(
    storage: Storage,
    item: FileInput,
    held: dict[str, PinType],
    ours: Mapping[str, PinType],
    note: OnPin | None,
    cache: Path,
) -> None:
    try:
        _keep_path(storage, item.ref, held, ours, note)
    except BlockNotFound:
        if not _add_from_cache(storage, item, cache):
            raise
        _keep_path(storage, item.ref, held, ours, note)


def _keep_path(
    storage: Storage,
    ref: str,
    held: dict[str, PinType],
    ours: Mapping[str, PinType],
    note: OnPin | None,
) -> None:
    """Pin the file at ``ref`` recursively and every block on its path directly."""
    trace = storage.trace(ref)
    wanted = [(trace.target, PinType.RECURSIVE)]
    wanted += [(cid, PinType.DIRECT) for cid, _ in trace.blocks]
    for cid, kind in wanted:
        if cid.inline_data() is not None:
            continue  # an identity CID carries its block in itself
        for name in _names(cid, kind):
            key, now = str(name), storage.pinned(name)
            if now is not None and not (now is kind and ours.get(key) is kind):
                continue  # someone else's pin: not ours to hold, nor to take away
            if note is not None:
                note(key, kind)
            if now is None:
                storage.pin(name, recursive=kind is PinType.RECURSIVE)
            held[key] = kind
            break
        else:
            log.info("%s is pinned by others under every CID it has; kept by their pins", cid)


def _names(cid: CID, kind: PinType) -> list[CID]:
    """The CIDs ``cid``'s block goes by, its own first: its raw CID (for a direct pin: a raw
    block has no links to follow) and, for dag-pb over sha2-256, its CIDv0 or CIDv1."""
    names = [cid]
    if kind is PinType.DIRECT:
        names.append(CID(1, RAW, cid.multihash))
    if cid.codec == DAG_PB and cid.hash_code == SHA2_256:
        names.append(CID(1 - cid.version, DAG_PB, cid.multihash))
    return list(dict.fromkeys(names))


def _add_from_cache(storage: Storage, item: FileInput, cache: Path) -> bool:
    """Add ``item`` to ``storage`` again from the cache (not pinned: :func:`keep` pins it), if the
    cached file, in folders named as its path, gives its IPFS path's root: as a file added as
    ``lilypad run -i Name=@file`` adds it. Whether it did."""
    cached = _cached(item, cache)
    if cached is None:
        return False
    root, subpath = parse_ipfs_path(item.ref)
    staging = Path(tempfile.mkdtemp(prefix=".keep-", dir=cache))
    try:
        tree = staging / "root"
        place = tree.joinpath(*split_path(subpath)) if subpath else tree
        place.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(cached, place)
        except OSError:
            shutil.copyfile(cached, place)
        if compute_cid(tree) != root.v1():
            return False
        storage.add(tree, pin=False)
        log.info("input %s=%s was gone from IPFS; added again from the cache", item.name, item.ref)
        return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
