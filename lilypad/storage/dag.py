"""Reading UnixFS DAGs from any source of verified blocks: paths, files, directories, downloads.

Everything here goes through a :class:`BlockSource` whose ``get`` returns bytes already checked
against their CID (the local blockstore, a Kubo RPC node, a trustless gateway), so no unverified
byte is ever returned or written.

:func:`export` is the verified download: it writes into a temporary folder beside the target and
renames it into place only when every block has been fetched and checked, so nothing partial is
ever left under the final name. It never creates a symlink (one could point anywhere on the
downloader's machine): a symlink node is fetched and verified like every block, then skipped and
reported as a :class:`SkippedSymlink`.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import mmh3

from lilypad.errors import (
    BlockNotFound,
    ContentTooLarge,
    InvalidIPFSPath,
    MalformedContent,
    StorageError,
    UnsafeEntryName,
)
from lilypad.storage.cid import CID, DAG_PB, RAW
from lilypad.storage.unixfs import MURMUR3_X64_64, Link, NodeType, PBNode, decode_node


class BlockSource(Protocol):
    """Anything that returns a block's bytes, verified against the CID."""

    def get(self, cid: CID) -> bytes:
        """The block's bytes; raises BlockNotFound or CorruptBlock."""


@dataclass(frozen=True, slots=True)
class Entry:
    """What a CID is: ``kind`` is ``file``, ``directory`` or ``symlink``; ``size`` in bytes."""

    cid: CID
    kind: str
    size: int


@dataclass(frozen=True, slots=True, order=True)
class SkippedSymlink:
    """A symlink a download left out: its path inside the download (``/``) and its link text
    (bytes that are not UTF-8 shown as ``\\xNN``)."""

    path: str
    target: str


def load(source: BlockSource, cid: CID) -> PBNode | bytes:
    """A decoded dag-pb node, or the bytes of a raw block."""
    data = source.get(cid)
    if cid.codec == RAW:
        return data
    if cid.codec != DAG_PB:
        raise MalformedContent(f"{cid}: codec 0x{cid.codec:x} is not UnixFS (dag-pb or raw)")
    node = decode_node(data)
    if node.unixfs is None:
        raise MalformedContent(f"{cid}: dag-pb node without UnixFS data")
    return node


def stat(source: BlockSource, cid: CID) -> Entry:
    """The kind and size of the UnixFS object at ``cid``."""
    node = load(source, cid)
    if isinstance(node, bytes):
        return Entry(cid, "file", len(node))
    assert node.unixfs is not None
    kind = node.unixfs.type
    if kind in (NodeType.DIRECTORY, NodeType.HAMT_SHARD):
        return Entry(cid, "directory", 0)
    if kind is NodeType.SYMLINK:
        return Entry(cid, "symlink", len(node.unixfs.data or b""))
    if kind in (NodeType.FILE, NodeType.RAW):
        size = node.unixfs.filesize
        return Entry(cid, "file", size if size is not None else len(node.unixfs.data or b""))
    raise MalformedContent(f"{cid}: UnixFS type {kind.name} is not supported")


def list_directory(source: BlockSource, cid: CID) -> list[Link]:
    """The entries of a directory (plain or HAMT-sharded), sorted by name."""
    node = load(source, cid)
    if (
        isinstance(node, bytes)
        or node.unixfs is None
        or node.unixfs.type
        not in (
            NodeType.DIRECTORY,
            NodeType.HAMT_SHARD,
        )
    ):
        raise StorageError(f"{cid} is not a directory")
    if node.unixfs.type is NodeType.DIRECTORY:
        return list(node.links)
    entries = list(_shard_entries(source, node))
    return sorted(entries, key=lambda link: link.name.encode())


def _shard_entries(source: BlockSource, node: PBNode) -> Iterator[Link]:
    for link in node.links:
        if len(link.name) > 2:
            yield Link(link.cid, link.name[2:], link.tsize)
        else:
            child = load(source, link.cid)
            if isinstance(child, bytes):
                raise MalformedContent(f"{link.cid}: a HAMT shard link points at a raw block")
            yield from _shard_entries(source, child)


def split_path(path: str) -> list[str]:
    """Split ``a/b/c`` into names, refusing anything that could climb out of the root.

    Raises:
        InvalidIPFSPath: A segment is ``..`` or ``.``, or the path holds a NUL or backslash.
    """
    names = [part for part in path.split("/") if part]
    for name in names:
        if name in (".", "..") or "\x00" in name or "\\" in name:
            raise InvalidIPFSPath(
                f"path {path!r} is not allowed: segment {name!r} could escape the root; "
                "use plain names separated by /"
            )
    return names


def parse_ipfs_path(text: str) -> tuple[CID, str]:
    """``<cid>[/path]`` or ``/ipfs/<cid>[/path]`` to the root CID and the path inside it.

    Raises:
        InvalidCID: The CID part is malformed.
        InvalidIPFSPath: The path holds ``..`` or ``.``.
    """
    text = text.strip()
    if text.startswith("/ipfs/"):
        text = text[len("/ipfs/") :]
    cid_text, _, subpath = text.partition("/")
    split_path(subpath)
    return CID.parse(cid_text), subpath


def resolve(source: BlockSource, cid: CID, path: str) -> CID:
    """The CID at ``<cid>/<path>``.

    Raises:
        BlockNotFound: No entry by one of the names.
        InvalidIPFSPath: The path holds ``..`` or ``.``.
    """
    return trace_path(source, cid, path).target


@dataclass(frozen=True, slots=True)
class PathTrace:
    """What resolving ``<root>/<path>`` went through (what a trustless CAR must carry).

    Attributes:
        target: The CID at the end of the path.
        blocks: Every block read to traverse the path, in order: each directory on the way and,
            in a HAMT-sharded directory, only the shards on the way to the name. The target's
            own block is not among them.
        roots: The logical roots: the root CID, then the CID of each path segment (the last is
            ``target``).
    """

    target: CID
    blocks: tuple[tuple[CID, bytes], ...]
    roots: tuple[CID, ...]


def trace_path(source: BlockSource, cid: CID, path: str) -> PathTrace:
    """Resolve ``<cid>/<path>`` and record the blocks that prove it (see :class:`PathTrace`).

    Raises:
        BlockNotFound: No entry by one of the names, or a segment goes through a file.
        InvalidIPFSPath: The path holds ``..`` or ``.``.
    """
    current = cid
    blocks: list[tuple[CID, bytes]] = []
    roots = [cid]
    for name in split_path(path):
        data = source.get(current)
        blocks.append((current, data))
        node = _directory_node(current, data)
        if node is None:
            raise BlockNotFound(
                f"{name!r} not found in /ipfs/{cid}/{path}: {current} is not a directory"
            )
        found = _find_entry(source, node, name, blocks)
        if found is None:
            raise BlockNotFound(f"{name!r} not found in /ipfs/{cid}/{path}")
        current = found
        roots.append(current)
    return PathTrace(current, tuple(blocks), tuple(roots))


def _directory_node(cid: CID, data: bytes) -> PBNode | None:
    """The decoded node if ``cid`` is a UnixFS directory or HAMT shard, else ``None``."""
    if cid.codec != DAG_PB:
        return None
    node = decode_node(data)
    if node.unixfs is None or node.unixfs.type not in (NodeType.DIRECTORY, NodeType.HAMT_SHARD):
        return None
    return node


def _find_entry(
    source: BlockSource, node: PBNode, name: str, blocks: list[tuple[CID, bytes]]
) -> CID | None:
    """The CID named ``name`` in a directory; the HAMT shards read on the way go to ``blocks``."""
    assert node.unixfs is not None
    if node.unixfs.type is NodeType.DIRECTORY:
        return next((link.cid for link in node.links if link.name == name), None)
    fanout = node.unixfs.fanout or 0
    if node.unixfs.hash_type != MURMUR3_X64_64 or fanout < 2 or fanout & (fanout - 1):
        # NOTE: not a HAMT kubo writes: fall back to reading every shard.
        return next((link.cid for link in _shard_entries(source, node) if link.name == name), None)
    bits = fanout.bit_length() - 1
    width = len(f"{fanout - 1:X}")
    digest = int.from_bytes(mmh3.hash_bytes(name.encode())[:8][::-1], "big")
    depth = 0
    while (depth + 1) * bits <= 64:
        index = (digest >> (64 - (depth + 1) * bits)) & (fanout - 1)
        prefix = f"{index:0{width}X}"
        link = next((link for link in node.links if link.name[:width] == prefix), None)
        if link is None:
            return None
        if link.name != prefix:
            return link.cid if link.name[width:] == name else None
        data = source.get(link.cid)
        blocks.append((link.cid, data))
        child = _directory_node(link.cid, data)
        if child is None or child.unixfs is None or child.unixfs.type is not NodeType.HAMT_SHARD:
            raise MalformedContent(f"{link.cid}: a HAMT shard link points at something else")
        node = child
        depth += 1
    return None


def read_symlink(source: BlockSource, cid: CID) -> bytes:
    """The link text of the symlink node at ``cid`` (verified like every block).

    Raises:
        StorageError: ``cid`` is not a symlink.
    """
    node = load(source, cid)
    if isinstance(node, bytes) or node.unixfs is None or node.unixfs.type is not NodeType.SYMLINK:
        raise StorageError(f"{cid} is not a symlink")
    return node.unixfs.data or b""


def read_file(
    source: BlockSource, cid: CID, offset: int = 0, length: int | None = None
) -> Iterator[bytes]:
    """The bytes of a file, from ``offset`` for ``length`` bytes (to the end if ``None``).

    Only the blocks that hold the wanted range are fetched.
    """
    end = None if length is None else offset + length
    yield from _read_range(source, cid, offset, end)


def _read_range(source: BlockSource, cid: CID, start: int, end: int | None) -> Iterator[bytes]:
    node = load(source, cid)
    if isinstance(node, bytes):
        yield node[start:end]
        return
    assert node.unixfs is not None
    if node.unixfs.type not in (NodeType.FILE, NodeType.RAW):
        raise StorageError(f"{cid} is a {node.unixfs.type.name.lower()}, not a file")
    data = node.unixfs.data or b""
    if data:
        yield data[start:end]
    base = len(data)
    sizes = node.unixfs.blocksizes
    if len(sizes) != len(node.links):
        raise MalformedContent(
            f"{cid}: malformed file node ({len(sizes)} sizes, {len(node.links)} links)"
        )
    for link, size in zip(node.links, sizes, strict=True):
        lo, hi = base, base + size
        base = hi
        if hi <= start or (end is not None and lo >= end):
            continue
        child_end = None if end is None or end >= hi else end - lo
        yield from _read_range(source, link.cid, max(start - lo, 0), child_end)


def walk_blocks(
    source: BlockSource, cid: CID, *, seen: set[CID] | None = None
) -> Iterator[tuple[CID, bytes]]:
    """Every block of the DAG under ``cid``, depth first (the order of a trustless CAR).

    Without ``seen`` a block is yielded each time the walk meets it (a file of identical chunks
    yields its one leaf many times). With ``seen``, a block already in it is skipped with
    everything under it, and each block yielded is added: every block comes once.
    """
    stack = [cid]
    while stack:
        current = stack.pop()
        if seen is not None:
            if current in seen:
                continue
            seen.add(current)
        data = source.get(current)
        yield current, data
        if current.codec == DAG_PB:
            stack.extend(link.cid for link in reversed(decode_node(data).links))


def walk_entity(
    source: BlockSource, cid: CID, *, seen: set[CID] | None = None
) -> Iterator[tuple[CID, bytes]]:
    """The blocks of the UnixFS entity at ``cid``, depth first (a trustless ``dag-scope=entity``).

    A file: every block of it. A directory: its node, and for a HAMT-sharded one every shard,
    but none of the entries. Anything else (a symlink, a non-UnixFS block): its one block.
    ``seen`` works as in :func:`walk_blocks`.
    """
    if seen is not None and cid in seen:
        return
    data = source.get(cid)
    node = decode_node(data) if cid.codec == DAG_PB else None
    kind = node.unixfs.type if node is not None and node.unixfs is not None else None
    if kind in (NodeType.FILE, NodeType.RAW):
        yield from walk_blocks(source, cid, seen=seen)
        return
    if seen is not None:
        seen.add(cid)
    yield cid, data
    if node is not None and kind is NodeType.HAMT_SHARD:
        width = len(f"{(node.unixfs.fanout or 256) - 1:X}") if node.unixfs else 2
        for link in node.links:
            if len(link.name) == width:  # a sub-shard; longer names are entries
                yield from walk_entity(source, link.cid, seen=seen)


def walk_file_range(
    source: BlockSource, cid: CID, first: int, last: int, *, seen: set[CID] | None = None
) -> Iterator[tuple[CID, bytes]]:
    """The blocks that prove bytes ``first..last`` (inclusive) of a file, depth first.

    The root, the inner nodes on the way and the leaves that hold the range: what a trustless
    ``entity-bytes=first:last`` returns. With ``seen``, blocks already in it are not yielded
    again, but the walk still goes through them (the same inner node may cover other bytes).

    Raises:
        StorageError: ``cid`` is not a file.
    """
    data = source.get(cid)
    if seen is None or cid not in seen:
        if seen is not None:
            seen.add(cid)
        yield cid, data
    if cid.codec != DAG_PB:
        return
    node = decode_node(data)
    if node.unixfs is None or node.unixfs.type not in (NodeType.FILE, NodeType.RAW):
        raise StorageError(f"{cid} is not a file")
    sizes = node.unixfs.blocksizes
    if len(sizes) != len(node.links):
        raise MalformedContent(
            f"{cid}: malformed file node ({len(sizes)} sizes, {len(node.links)} links)"
        )
    base = len(node.unixfs.data or b"")
    for link, size in zip(node.links, sizes, strict=True):
        lo, base = base, base + size
        if size and lo <= last and base > first:
            yield from walk_file_range(
                source, link.cid, max(first - lo, 0), min(last - lo, size - 1), seen=seen
            )


def check_name(name: str, where: str) -> str:
    """Refuse a directory entry name that would not stay one plain name on disk."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise UnsafeEntryName(
            f"refusing to write entry {name!r} in {where}: a name must be one plain file name "
            "(no '/', '..' or NUL); the data may be hostile"
        )
    return name


def export(
    source: BlockSource,
    cid: CID,
    dest: Path,
    *,
    on_symlink: Callable[[SkippedSymlink], None] | None = None,
    max_bytes: int | None = None,
) -> Path:
    """Download ``cid`` to ``dest`` (a file or a directory tree), verifying every block.

    The content is written under a temporary name in ``dest``'s folder and renamed to ``dest``
    only when complete; on any error the temporary copy is removed. Symlinks are verified but
    not created: each is passed to ``on_symlink`` instead.

    Args:
        max_bytes: The most file bytes the download may write; more is :class:`ContentTooLarge`
            (nothing is left behind).

    Raises:
        StorageError: ``dest`` exists (and is not an empty folder), a block is missing or
            corrupt, an entry name is unsafe, or ``cid`` itself is a symlink.
    """
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise StorageError(
            f"{dest} already exists; remove it or choose another destination",
        )
    if stat(source, cid).kind == "symlink":
        raise MalformedContent(
            f"{cid} is a symlink ({_shown(read_symlink(source, cid))}); there is nothing to "
            "download: downloads do not create symlinks, which could point anywhere"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        budget = _Budget(cid, max_bytes)
        _write(source, cid, tmp / "content", str(cid), "", on_symlink, budget)
        if dest.is_dir():
            dest.rmdir()
        os.replace(tmp / "content", dest)
    except OSError as exc:
        raise StorageError(f"cannot write {dest}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


class _Budget:
    """What a download may still write (``None``: no limit)."""

    def __init__(self, root: CID, limit: int | None) -> None:
        self.root = root
        self.limit = limit
        self.used = 0

    def spend(self, size: int) -> None:
        self.used += size
        if self.limit is not None and self.used > self.limit:
            raise ContentTooLarge(
                f"{self.root} holds more than the {self.limit} bytes this download allows "
                "(the job's output limit); nothing of it was kept"
            )


def _write(
    source: BlockSource,
    cid: CID,
    target: Path,
    where: str,
    rel: str,
    on_symlink: Callable[[SkippedSymlink], None] | None,
    budget: _Budget,
) -> None:
    entry = stat(source, cid)
    if entry.kind == "directory":
        target.mkdir()
        for link in list_directory(source, cid):
            name = check_name(link.name, where)
            inner = f"{rel}/{name}" if rel else name
            _write(source, link.cid, target / name, f"{where}/{name}", inner, on_symlink, budget)
    elif entry.kind == "file":
        budget.spend(entry.size)  # NOTE: before a byte is fetched; the bytes are checked too
        written = 0
        with target.open("xb") as out:
            for chunk in read_file(source, cid):
                written += len(chunk)
                if written > entry.size:
                    budget.spend(len(chunk))
                out.write(chunk)
    else:
        skipped = SkippedSymlink(rel, _shown(read_symlink(source, cid)))
        if on_symlink is not None:
            on_symlink(skipped)


def _shown(target: bytes) -> str:
    return target.decode("utf-8", "backslashreplace")


def tar_stream(source: BlockSource, cid: CID, name: str) -> Iterator[bytes]:
    """The UnixFS tree at ``cid`` as a tar archive whose top entry is ``name``, streamed.

    Each file's size is in its root node, so its header goes out before its bytes are read.
    Symlinks are tar symlink entries (as kubo's ``get`` writes them: extracting one is the
    reader's choice); times are 0. Entry names are checked as a download checks them: an unsafe
    one raises :class:`UnsafeEntryName` before the end marker, so a client sees a truncated
    archive rather than a bad entry.
    """
    written = 0
    for info, chunks in _tar_entries(source, cid, check_name(name, str(cid))):
        header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        yield header
        written += len(header)
        for chunk in chunks:
            yield chunk
            written += len(chunk)
        if padding := -info.size % tarfile.BLOCKSIZE:
            yield tarfile.NUL * padding
            written += padding
    end = 2 * tarfile.BLOCKSIZE
    end += -(written + end) % tarfile.RECORDSIZE
    yield tarfile.NUL * end


def _tar_entries(
    source: BlockSource, cid: CID, path: str
) -> Iterator[tuple[tarfile.TarInfo, Iterator[bytes]]]:
    entry = stat(source, cid)
    info = tarfile.TarInfo(path)
    info.mtime = 0
    if entry.kind == "directory":
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        yield info, iter(())
        for link in list_directory(source, cid):
            child = check_name(link.name, f"{cid} ({path})")
            yield from _tar_entries(source, link.cid, f"{path}/{child}")
    elif entry.kind == "symlink":
        info.type, info.mode = tarfile.SYMTYPE, 0o777
        info.linkname = read_symlink(source, cid).decode("utf-8", "surrogateescape")
        yield info, iter(())
    else:
        info.size, info.mode = entry.size, 0o644
        yield info, read_file(source, cid)
