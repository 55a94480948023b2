"""The UnixFS importer: files and directories to blocks, with the CIDs kubo computes.

Use :func:`add_path` (or :class:`Importer` for streams and in-memory trees)::

    from lilypad.storage.importer import NETWORK_PROFILE, add_path
    root = add_path(Path("outputs"), sink=blockstore)     # -> Link; root.cid is the CID

What is added from disk is decided in one place, :func:`scan`, for every upload (the local
repository, only-hash, and the Kubo RPC multipart upload to kubo or the embedded node): entries are
read with ``lstat`` and symlinks are never followed below the top level. A symlink becomes a UnixFS
symlink node holding the link text, as kubo's ``ipfs add -r`` stores it, whatever it points to
(``/dev/zero``, ``/proc/self/environ``, a key outside the folder, nothing at all); regular files
are opened with :func:`open_regular`, which refuses anything that is no longer the file scanned.

What "the same CID as kubo" takes (``ipfs add`` with the same options):

* files are cut into fixed-size chunks; one chunk is its own root, more are gathered in a
  *balanced* DAG whose inner nodes hold at most ``max_links`` children (174 in kubo);
* leaves are raw blocks (CIDv1, ``--raw-leaves``) or UnixFS ``File`` nodes with the data inside;
* directories are one dag-pb node with links sorted by name bytes, until the sum of the link
  names and CID lengths goes over 256 KiB; then kubo turns them into a HAMT of 256-way shards keyed
  by the murmur3-x64-64 hash of each name (link names carry a two-hex-digit bucket prefix).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import mmh3

from lilypad.errors import InputError, StorageError
from lilypad.storage.cid import CID, DAG_PB, RAW
from lilypad.storage.unixfs import MURMUR3_X64_64, Link, NodeType, UnixFSData, encode_node

#: Largest chunk kubo accepts (its block size limit is 1 MiB of data per leaf).
MAX_CHUNK_SIZE = 1024 * 1024
#: Longest symlink target accepted from a client: a symlink node must fit in one block.
MAX_SYMLINK_TARGET = 1024 * 1024
_HAMT_FANOUT = 256
_HAMT_HASH_BYTES = 8


@dataclass(frozen=True, slots=True)
class ImportProfile:
    """The options that decide a CID, with the network's values as defaults.

    Attributes:
        cid_version: 1 (``bafy...``) or 0 (``Qm...``).
        raw_leaves: Store file data in raw blocks (kubo's ``--raw-leaves``).
        chunk_size: Bytes per leaf (kubo's ``--chunker size-N``).
        max_links: Most children of one inner file node (174 in kubo).
        shard_threshold: Directory size estimate (bytes) above which it becomes a HAMT.
    """

    cid_version: int = 1
    raw_leaves: bool = True
    chunk_size: int = 262_144
    max_links: int = 174
    shard_threshold: int = 262_144

    def __post_init__(self) -> None:
        if self.cid_version not in (0, 1):
            raise InputError(f"CID version {self.cid_version} is not supported; use 0 or 1")
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise InputError(
                f"chunk size {self.chunk_size} is out of range; use 1 to {MAX_CHUNK_SIZE} bytes"
            )
        if self.max_links < 2:
            raise InputError(f"max links {self.max_links} is too small; use at least 2")

    @classmethod
    def kubo(cls, cid_version: int = 0, raw_leaves: bool | None = None) -> ImportProfile:
        """kubo's defaults for a CID version: v0 without raw leaves, v1 with them."""
        leaves = cid_version == 1 if raw_leaves is None else raw_leaves
        return cls(cid_version=cid_version, raw_leaves=leaves)


#: The network's import profile: CIDv1, raw leaves, 256 KiB chunks, balanced, 174 links.
NETWORK_PROFILE = ImportProfile()


class BlockSink(Protocol):
    """Where the importer puts blocks (a blockstore, or nothing for ``--only-hash``)."""

    def put(self, cid: CID, data: bytes) -> None:
        """Store one block under its CID."""


class NullSink:
    """A sink that keeps nothing: compute CIDs only."""

    def put(self, cid: CID, data: bytes) -> None:
        """Drop the block."""


@dataclass(frozen=True, slots=True)
class AddedEntry:
    """One file or directory added, as ``ipfs add`` lists it (``path`` relative, with ``/``)."""

    path: str
    cid: CID
    size: int


@dataclass(frozen=True, slots=True)
class DiskEntry:
    """One entry of a tree on disk as it will be added: read with ``lstat``, links not followed.

    Attributes:
        path: Where it is on disk.
        name: Its name in its parent (the root's: the folder's own name).
        rel: Its path from the root's parent, with ``/`` (``outputs/sub/a.txt``).
        kind: ``FILE``, ``DIRECTORY`` or ``SYMLINK``.
        st: Its ``lstat`` result (for a file: what :func:`open_regular` checks against).
        target: A symlink's text, as bytes (a link target need not be UTF-8).
        children: A directory's entries, sorted by name.
    """

    path: Path
    name: str
    rel: str
    kind: NodeType
    st: os.stat_result
    target: bytes = b""
    children: tuple[DiskEntry, ...] = ()

    def walk(self) -> Iterator[DiskEntry]:
        """This entry and everything under it, each directory before its children."""
        stack = [self]
        while stack:
            entry = stack.pop()
            yield entry
            stack.extend(reversed(entry.children))


def scan(path: Path, *, hidden: bool = True) -> DiskEntry:
    """What adding ``path`` adds: the one walk of the file system every upload path uses.

    A symlink given as ``path`` itself is followed (as ``ipfs add`` follows its argument); every
    symlink below it is kept as a link and never read through.

    Args:
        path: The file or directory to add.
        hidden: Include names starting with ``.`` (kubo leaves them out unless ``-H``).

    Raises:
        InputError: ``path`` does not exist, or holds a name that is not UTF-8 or a special
            file (socket, device, fifo), which kubo refuses too.
    """
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    name = path.resolve().name if path.name in ("", ".", "..") else path.name
    root = path.resolve() if path.is_symlink() else path
    return _scan(root, name, name, root.stat(), hidden)


def _scan(path: Path, name: str, rel: str, st: os.stat_result, hidden: bool) -> DiskEntry:
    _check_name(path, name)
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return DiskEntry(path, name, rel, NodeType.SYMLINK, st, os.readlink(os.fsencode(path)))
    if stat.S_ISREG(mode):
        return DiskEntry(path, name, rel, NodeType.FILE, st)
    if not stat.S_ISDIR(mode):
        raise InputError(
            f"{path}: a {special_kind(mode)} cannot be added; only regular files, directories "
            "and symlinks can (as with kubo)"
        )
    with os.scandir(path) as listing:
        found = sorted(
            (e for e in listing if hidden or not e.name.startswith(".")), key=lambda e: e.name
        )
    children = tuple(
        _scan(Path(e.path), e.name, f"{rel}/{e.name}", e.stat(follow_symlinks=False), hidden)
        for e in found
    )
    return DiskEntry(path, name, rel, NodeType.DIRECTORY, st, children=children)


def special_kind(mode: int) -> str:
    """What a file that is neither regular, a directory nor a symlink is, for messages."""
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return f"file of type 0o{stat.S_IFMT(mode):o}"


def open_regular(entry: DiskEntry) -> BinaryIO:
    """Open a scanned regular file for reading, refusing anything else in its place.

    ``O_NOFOLLOW`` and ``O_NONBLOCK``: a symlink or a fifo swapped in since the scan is neither
    followed nor waited on, and the open file must be the very inode that was scanned.

    Raises:
        StorageError: The file is gone or is no longer the file scanned.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(entry.path, flags)
    except OSError as exc:
        raise StorageError(
            f"{entry.path}: cannot open it ({exc.strerror}); add it again once nothing changes it"
        ) from None
    now = os.fstat(fd)
    if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (
        entry.st.st_dev,
        entry.st.st_ino,
    ):
        os.close(fd)
        raise StorageError(
            f"{entry.path} was replaced while it was being added; add it again once nothing "
            "writes to it"
        )
    return os.fdopen(fd, "rb")


class Importer:
    """Builds UnixFS DAGs into a :class:`BlockSink` under one :class:`ImportProfile`."""

    def __init__(self, sink: BlockSink | None = None, profile: ImportProfile = NETWORK_PROFILE):
        self.sink: BlockSink = sink or NullSink()
        self.profile = profile

    # --- files ---------------------------------------------------------------------------------
    def add_file(self, stream: BinaryIO) -> Link:
        """Chunk a byte stream into a balanced file DAG; returns the root link (no name)."""
        level: list[tuple[Link, int]] = []
        size = self.profile.chunk_size
        while True:
            chunk = _read_full(stream, size)
            if not chunk and level:
                break
            level.append(self._leaf(chunk))
            if len(chunk) < size:
                break
        while len(level) > 1:
            level = [
                self._file_node(level[i : i + self.profile.max_links])
                for i in range(0, len(level), self.profile.max_links)
            ]
        return level[0][0]

    def add_bytes(self, data: bytes) -> Link:
        """Add an in-memory file."""
        import io

        return self.add_file(io.BytesIO(data))

    def _leaf(self, chunk: bytes) -> tuple[Link, int]:
        if self.profile.raw_leaves:
            cid = CID(1, RAW, b"\x12\x20" + hashlib.sha256(chunk).digest())
            self.sink.put(cid, chunk)
            return Link(cid, "", len(chunk)), len(chunk)
        unixfs = UnixFSData(NodeType.FILE, data=chunk or None, filesize=len(chunk))
        block = encode_node((), unixfs.encode())
        return Link(self._put_pb(block), "", len(block)), len(chunk)

    def _file_node(self, children: list[tuple[Link, int]]) -> tuple[Link, int]:
        sizes = tuple(filesize for _, filesize in children)
        unixfs = UnixFSData(NodeType.FILE, filesize=sum(sizes), blocksizes=sizes)
        links = [link for link, _ in children]
        block = encode_node(links, unixfs.encode())
        tsize = len(block) + sum(link.tsize for link in links)
        return Link(self._put_pb(block), "", tsize), sum(sizes)

    def _put_pb(self, block: bytes) -> CID:
        cid = CID(self.profile.cid_version, DAG_PB, b"\x12\x20" + hashlib.sha256(block).digest())
        self.sink.put(cid, block)
        return cid

    # --- directories and symlinks --------------------------------------------------------------
    def add_directory(self, entries: Iterable[Link]) -> Link:
        """A directory of named links; sharded as kubo shards it when it grows too large."""
        children = sorted(entries, key=lambda link: link.name.encode())
        names = [link.name for link in children]
        if len(set(names)) != len(names):
            raise InputError("a directory cannot hold two entries with the same name")
        estimate = sum(len(link.name.encode()) + len(bytes(link.cid)) for link in children)
        if estimate > self.profile.shard_threshold:
            hashed = [(_hamt_hash(link.name), link) for link in children]
            return self._shard(hashed, 0)
        block = encode_node(children, UnixFSData(NodeType.DIRECTORY).encode())
        return Link(self._put_pb(block), "", len(block) + sum(c.tsize for c in children))

    def _shard(self, entries: list[tuple[bytes, Link]], depth: int) -> Link:
        if depth >= _HAMT_HASH_BYTES:
            raise StorageError("two directory entry names have the same 64-bit HAMT hash")
        buckets: dict[int, list[tuple[bytes, Link]]] = {}
        for digest, link in entries:
            buckets.setdefault(digest[depth], []).append((digest, link))
        links: list[Link] = []
        bitfield = 0
        for index in sorted(buckets):
            bitfield |= 1 << index
            group = buckets[index]
            prefix = f"{index:02X}"
            if len(group) == 1:
                child = group[0][1]
                links.append(Link(child.cid, prefix + child.name, child.tsize))
            else:
                sub = self._shard(group, depth + 1)
                links.append(Link(sub.cid, prefix, sub.tsize))
        unixfs = UnixFSData(
            NodeType.HAMT_SHARD,
            data=bitfield.to_bytes((bitfield.bit_length() + 7) // 8, "big"),
            hash_type=MURMUR3_X64_64,
            fanout=_HAMT_FANOUT,
        )
        block = encode_node(links, unixfs.encode())
        return Link(self._put_pb(block), "", len(block) + sum(c.tsize for c in links))

    def add_symlink(self, target: str | bytes) -> Link:
        """A UnixFS symlink node holding the link text (kubo stores symlinks, never follows them).

        Raises:
            InputError: The target is longer than :data:`MAX_SYMLINK_TARGET` bytes.
        """
        data = target.encode() if isinstance(target, str) else target
        if len(data) > MAX_SYMLINK_TARGET:
            raise InputError(
                f"a symlink target of {len(data)} bytes is too long; at most "
                f"{MAX_SYMLINK_TARGET} bytes fit in one block"
            )
        block = encode_node((), UnixFSData(NodeType.SYMLINK, data=data).encode())
        return Link(self._put_pb(block), "", len(block))

    # --- the file system -----------------------------------------------------------------------
    def add_path(
        self,
        path: Path,
        *,
        hidden: bool = True,
        on_entry: Callable[[AddedEntry], None] | None = None,
    ) -> Link:
        """Add a file or a directory tree from disk; returns the root link named after ``path``.

        Args:
            path: The file or directory to add (a top-level symlink is followed, no other is).
            hidden: Include names starting with ``.`` (kubo leaves them out unless ``-H``).
            on_entry: Called for every file, directory and symlink added, children first.

        Raises:
            InputError: See :func:`scan`.
            StorageError: A file changed while it was read, or the sink failed.
        """
        return self.add_scanned(scan(path, hidden=hidden), on_entry)

    def add_scanned(
        self, entry: DiskEntry, on_entry: Callable[[AddedEntry], None] | None = None
    ) -> Link:
        """Add what :func:`scan` found; returns the link named after the entry."""
        if entry.kind is NodeType.SYMLINK:
            link = self.add_symlink(entry.target)
        elif entry.kind is NodeType.DIRECTORY:
            link = self.add_directory([self.add_scanned(c, on_entry) for c in entry.children])
        else:
            link = self._add_regular_file(entry)
        if on_entry is not None:
            on_entry(AddedEntry(entry.rel, link.cid, link.tsize))
        return Link(link.cid, entry.name, link.tsize)

    def _add_regular_file(self, entry: DiskEntry) -> Link:
        before = entry.st
        with open_regular(entry) as stream:
            counted = _CountingReader(stream)
            link = self.add_file(counted)  # type: ignore[arg-type]
            after = os.fstat(stream.fileno())
        read = counted.count
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or (
            read != before.st_size
        ):
            raise StorageError(
                f"{entry.path} changed while it was being added ({before.st_size} -> "
                f"{after.st_size} bytes); add it again once nothing writes to it"
            )
        return link


def add_path(
    path: Path,
    sink: BlockSink | None = None,
    profile: ImportProfile = NETWORK_PROFILE,
    *,
    hidden: bool = True,
    on_entry: Callable[[AddedEntry], None] | None = None,
) -> Link:
    """Add a file or directory from disk into ``sink`` (nothing kept if ``None``).

    See :meth:`Importer.add_path`.
    """
    return Importer(sink, profile).add_path(path, hidden=hidden, on_entry=on_entry)


class _CountingReader:
    """Counts the bytes read (``tell()`` on a buffered reader is surprisingly slow)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.count = 0

    def read(self, size: int) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        return data


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Read ``size`` bytes unless the stream ends first (pipes and sockets return short reads)."""
    data = stream.read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = stream.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _hamt_hash(name: str) -> bytes:
    """kubo's HAMT key: the first 64 bits of murmur3-x64-128 of the name, big-endian."""
    return mmh3.hash_bytes(name.encode())[:8][::-1]


def _check_name(path: Path, name: str) -> None:
    try:
        name.encode()
    except UnicodeEncodeError:
        raise InputError(
            f"{path!s:.200}: the name is not valid UTF-8, which UnixFS requires; rename it"
        ) from None
