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
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lilypad.errors import (
    BlockNotFound,
    InvalidIPFSPath,
    StorageError,
    UnsafeEntryName,
)
from lilypad.storage.cid import CID, DAG_PB, RAW
from lilypad.storage.unixfs import Link, NodeType, PBNode, decode_node


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
        raise StorageError(f"{cid}: codec 0x{cid.codec:x} is not UnixFS (dag-pb or raw)")
    node = decode_node(data)
    if node.unixfs is None:
        raise StorageError(f"{cid}: dag-pb node without UnixFS data")
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
    raise StorageError(f"{cid}: UnixFS type {kind.name} is not supported")


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
                raise StorageError(f"{link.cid}: a HAMT shard link points at a raw block")
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
    current = cid
    for name in split_path(path):
        links = {link.name: link.cid for link in list_directory(source, current)}
        if name not in links:
            raise BlockNotFound(f"{name!r} not found in /ipfs/{cid}/{path}")
        current = links[name]
    return current


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
        raise StorageError(
            f"{cid}: malformed file node ({len(sizes)} sizes, {len(node.links)} links)"
        )
    for link, size in zip(node.links, sizes, strict=True):
        lo, hi = base, base + size
        base = hi
        if hi <= start or (end is not None and lo >= end):
            continue
        child_end = None if end is None or end >= hi else end - lo
        yield from _read_range(source, link.cid, max(start - lo, 0), child_end)


def walk_blocks(source: BlockSource, cid: CID) -> Iterator[tuple[CID, bytes]]:
    """Every block of the DAG under ``cid``, depth first (the order of a trustless CAR)."""
    stack = [cid]
    while stack:
        current = stack.pop()
        data = source.get(current)
        yield current, data
        if current.codec == DAG_PB:
            stack.extend(link.cid for link in reversed(decode_node(data).links))


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
) -> Path:
    """Download ``cid`` to ``dest`` (a file or a directory tree), verifying every block.

    The content is written under a temporary name in ``dest``'s folder and renamed to ``dest``
    only when complete; on any error the temporary copy is removed. Symlinks are verified but
    not created: each is passed to ``on_symlink`` instead.

    Raises:
        StorageError: ``dest`` exists (and is not an empty folder), a block is missing or
            corrupt, an entry name is unsafe, or ``cid`` itself is a symlink.
    """
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise StorageError(
            f"{dest} already exists; remove it or choose another destination",
        )
    if stat(source, cid).kind == "symlink":
        raise StorageError(
            f"{cid} is a symlink ({_shown(read_symlink(source, cid))}); there is nothing to "
            "download: downloads do not create symlinks, which could point anywhere"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        _write(source, cid, tmp / "content", str(cid), "", on_symlink)
        if dest.is_dir():
            dest.rmdir()
        os.replace(tmp / "content", dest)
    except OSError as exc:
        raise StorageError(f"cannot write {dest}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _write(
    source: BlockSource,
    cid: CID,
    target: Path,
    where: str,
    rel: str,
    on_symlink: Callable[[SkippedSymlink], None] | None,
) -> None:
    entry = stat(source, cid)
    if entry.kind == "directory":
        target.mkdir()
        for link in list_directory(source, cid):
            name = check_name(link.name, where)
            inner = f"{rel}/{name}" if rel else name
            _write(source, link.cid, target / name, f"{where}/{name}", inner, on_symlink)
    elif entry.kind == "file":
        with target.open("xb") as out:
            for chunk in read_file(source, cid):
                out.write(chunk)
    else:
        skipped = SkippedSymlink(rel, _shown(read_symlink(source, cid)))
        if on_symlink is not None:
            on_symlink(skipped)


def _shown(target: bytes) -> str:
    return target.decode("utf-8", "backslashreplace")
