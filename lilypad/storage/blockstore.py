"""A blockstore on disk with a pin set and garbage collection.

Layout under the repository folder::

    packs/<random>.pack   block bytes, appended one add (one :meth:`Blockstore.writer`) per file
    index.db              SQLite (WAL): where each block is (pack, offset, length); the pins
    lock                  flock: shared while adding/pinning, exclusive during GC

NOTE: blocks are packed rather than kept one file per block (kubo's flatfs) because creating a
file costs about a millisecond on common disks: 1,024 files for a 256 MiB output, or 10,000 for
small outputs, made adding several times slower than hashing.

Consistency: a writer appends to its own new pack and records the blocks in the index in one
transaction only when the whole add succeeded; on any error (a full disk) the pack is deleted and
nothing was recorded. Every read is hashed against its CID, so a block corrupted on disk is
reported (naming the CID), never served.
"""

from __future__ import annotations

import errno
import fcntl
import os
import queue
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from lilypad.errors import BlockNotFound, StorageError
from lilypad.storage.cid import CID, DAG_PB
from lilypad.storage.unixfs import decode_node

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    key BLOB PRIMARY KEY, pack TEXT NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS blocks_by_pack ON blocks (pack);
CREATE TABLE IF NOT EXISTS pins (cid TEXT PRIMARY KEY, type TEXT NOT NULL);
"""


class PinType(StrEnum):
    """How a pin holds blocks: ``recursive`` keeps the whole DAG, ``direct`` one block."""

    RECURSIVE = "recursive"
    DIRECT = "direct"


@dataclass(frozen=True, slots=True)
class Location:
    """Where a block's bytes are: ``length`` bytes at ``offset`` of the pack file ``path``."""

    path: Path
    offset: int
    length: int


class Blockstore:
    """Blocks, pins and GC in one folder; safe to share between threads and processes.

    Args:
        root: The repository folder; created if missing.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._packs = root / "packs"
        self._local = threading.local()
        try:
            self._packs.mkdir(parents=True, exist_ok=True)
            with self._db() as db:
                db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the IPFS repository at {root}: {exc}") from None

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections must stay in their thread)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.root / "index.db", timeout=60, isolation_level=None)
            # WAL: the gateway keeps reading while an add commits.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def close(self) -> None:
        """Close this thread's index connection and pack files (others go with their thread)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
        for fd in self._local.__dict__.pop("fds", {}).values():
            os.close(fd)

    # --- writing -------------------------------------------------------------------------------
    @contextmanager
    def writer(self, *, relocate: bool = False) -> Iterator[PackWriter]:
        """A sink for one add: blocks become visible together when the block exits cleanly.

        Raises:
            StorageError: The disk is full or not writable; nothing of this add is kept.
        """
        writer = PackWriter(self, relocate=relocate)
        try:
            yield writer
            writer.commit()
        finally:
            writer.discard()

    def put(self, cid: CID, data: bytes) -> None:
        """Store one block (for many, use :meth:`writer`: one pack and one transaction)."""
        with self.writer() as sink:
            sink.put(cid, data)

    def put_verified(self, cid: CID, data: bytes) -> None:
        """Check the bytes against the CID, then store them (for blocks from elsewhere)."""
        cid.check(data)
        self.put(cid, data)

    # --- reading -------------------------------------------------------------------------------
    def locate(self, cid: CID) -> Location:
        """Where the block is on disk.

        Raises:
            BlockNotFound: The block is not in this store.
        """
        row = (
            self._db()
            .execute("SELECT pack, offset, length FROM blocks WHERE key = ?", (cid.multihash,))
            .fetchone()
        )
        if row is None:
            raise BlockNotFound(f"block {cid} not found in the local store {self.root}")
        return Location(self._packs / row[0], row[1], row[2])

    def get(self, cid: CID) -> bytes:
        """Read a block and check it against its CID.

        Raises:
            BlockNotFound: The block is not in this store.
            CorruptBlock: The bytes on disk do not hash to the CID.
        """
        if (inline := cid.inline_data()) is not None:
            return inline
        last: tuple[CID, bytes] | None = getattr(self._local, "last", None)
        if last is not None and last[0] == cid:  # NOTE: readers often stat, then read
            return last[1]
        for attempt in range(2):
            where = self.locate(cid)
            try:
                data = os.pread(
                    self._pack_fd(where.path, fresh=attempt > 0), where.length, where.offset
                )
                break
            except FileNotFoundError:
                # NOTE: a GC may have just moved the block to a new pack; look it up again.
                if attempt:
                    raise BlockNotFound(f"block {cid}: pack {where.path.name} is missing") from None
            except OSError as exc:
                raise StorageError(f"cannot read block {cid}: {exc}") from None
        cid.check(data)
        self._local.last = (cid, data)
        return data

    def _pack_fd(self, path: Path, fresh: bool = False) -> int:
        """An open descriptor for a pack, kept per thread (opening one per block is slow)."""
        fds: dict[Path, int] = self._local.__dict__.setdefault("fds", {})
        if fresh or path not in fds:
            if path in fds:
                os.close(fds.pop(path))
            if len(fds) >= 16:
                os.close(fds.pop(next(iter(fds))))
            fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return fds[path]

    def size(self, cid: CID) -> int:
        """The length of a stored block in bytes (not read; an identity CID's data length).

        Raises:
            BlockNotFound: The block is not in this store.
        """
        if (inline := cid.inline_data()) is not None:
            return len(inline)
        return self.locate(cid).length

    def has(self, cid: CID) -> bool:
        """Whether the block is present (not verified); an identity CID always is."""
        if cid.multihash[:1] == b"\x00":
            return True
        row = self._db().execute("SELECT 1 FROM blocks WHERE key = ?", (cid.multihash,))
        return row.fetchone() is not None

    def delete(self, cid: CID) -> None:
        """Forget a block (its bytes go at the next :meth:`gc`)."""
        self._db().execute("DELETE FROM blocks WHERE key = ?", (cid.multihash,))

    # --- pins ----------------------------------------------------------------------------------
    def pin(self, cid: CID, kind: PinType = PinType.RECURSIVE, *, check: bool = True) -> None:
        """Pin a CID; a recursive pin needs every block of its DAG present.

        Args:
            cid: The root to pin.
            kind: Recursive (the whole DAG) or direct (one block).
            check: Walk the DAG to make sure it is complete; ``False`` only right after an add
                that wrote the whole DAG.

        Raises:
            BlockNotFound: A block of the DAG is missing (nothing is pinned then).
            StorageError: A direct pin of a CID pinned recursively (as kubo refuses it: it would
                take away the recursive pin).
        """
        with self.lock():
            if kind is PinType.DIRECT and self.pinned(cid) is PinType.RECURSIVE:
                raise StorageError(
                    f"{cid} is already pinned recursively", hint="see `lilypad ipfs pin ls`"
                )
            if not check:
                pass
            elif kind is PinType.RECURSIVE:
                self._check_complete(cid)
            elif not self.has(cid):
                raise BlockNotFound(f"cannot pin {cid}: the block is not in the local store")
            self._db().execute(
                "INSERT OR REPLACE INTO pins (cid, type) VALUES (?, ?)", (str(cid), kind.value)
            )

    def check_complete(self, root: CID) -> None:
        """Check that every block of the DAG is present (inner nodes read and verified, leaves
        looked up): cheap next to reading the DAG, so a reader can fail before it streams.

        Raises:
            BlockNotFound: A block is missing (the message names it).
            CorruptBlock: An inner node does not match its CID.
        """
        self._check_complete(root)

    def _check_complete(self, root: CID) -> None:
        """Every block of the DAG is present (inner nodes read and verified, leaves looked up)."""
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid.codec == DAG_PB:
                stack.extend(link.cid for link in decode_node(self.get(cid)).links)
            elif not self.has(cid):
                raise BlockNotFound(f"block {cid} not found in the local store {self.root}")

    def unpin(self, cid: CID) -> None:
        """Remove a pin.

        Raises:
            StorageError: The CID is not pinned.
        """
        cursor = self._db().execute("DELETE FROM pins WHERE cid = ?", (str(cid),))
        if cursor.rowcount == 0:
            raise StorageError(f"{cid} is not pinned", hint="see `lilypad ipfs pin ls`")

    def pinned(self, cid: CID) -> PinType | None:
        """How ``cid`` itself is pinned; ``None`` when it is not (a block that only a recursive
        pin of another CID holds is not pinned itself). A pin is of a CID, not of a block: the
        same block under another CID (its CIDv0, its raw CID) is another pin."""
        row = self._db().execute("SELECT type FROM pins WHERE cid = ?", (str(cid),)).fetchone()
        return None if row is None else PinType(row[0])

    def pins(self) -> dict[CID, PinType]:
        """Every pin and its type."""
        rows = self._db().execute("SELECT cid, type FROM pins ORDER BY cid").fetchall()
        return {CID.parse(cid): PinType(kind) for cid, kind in rows}

    # --- DAG walk and GC -----------------------------------------------------------------------
    def walk(self, cid: CID) -> Iterator[tuple[CID, bytes]]:
        """Every block of a DAG, depth first, each verified.

        Raises:
            BlockNotFound: A block is missing.
            CorruptBlock: A block does not match its CID.
        """
        stack = [cid]
        while stack:
            current = stack.pop()
            data = self.get(current)
            yield current, data
            if current.codec == DAG_PB:
                stack.extend(link.cid for link in reversed(decode_node(data).links))

    def verify(self, cid: CID) -> list[tuple[CID, str]]:
        """Read and hash every block of a DAG; returns the bad ones and why (empty: all good).

        Unlike :meth:`walk` it goes on past a bad block (what it links to cannot be reached).
        """
        bad: list[tuple[CID, str]] = []
        stack = [cid]
        while stack:
            current = stack.pop()
            try:
                data = self.get(current)
                if current.codec == DAG_PB:
                    stack.extend(link.cid for link in reversed(decode_node(data).links))
            except StorageError as exc:
                bad.append((current, exc.message))
        return bad

    def gc(self) -> int:
        """Delete every block no pin holds and reclaim its space; returns how many went."""
        with self.lock(exclusive=True):
            keep: set[bytes] = set()
            for cid, kind in self.pins().items():
                if kind is PinType.DIRECT:
                    keep.add(cid.multihash)
                    continue
                # NOTE: keep what can be reached; a broken pin must not stop GC.
                with suppress(StorageError):
                    keep.update(c.multihash for c, _ in self.walk(cid))
            db = self._db()
            dead = [k for (k,) in db.execute("SELECT key FROM blocks") if k not in keep]
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM blocks WHERE key = ?", ((k,) for k in dead))
            db.execute("COMMIT")
            self._compact()
            return len(dead)

    def _compact(self) -> None:
        """Delete packs nothing points to; rewrite packs that are partly dead."""
        db = self._db()
        live: dict[str, int] = dict(
            db.execute("SELECT pack, SUM(length) FROM blocks GROUP BY pack")
        )
        for pack in list(self._packs.iterdir()):
            used = live.get(pack.name, 0)
            if used == 0:
                pack.unlink(missing_ok=True)
            elif used < pack.stat().st_size:
                self._rewrite(pack)

    def _rewrite(self, pack: Path) -> None:
        rows = (
            self._db()
            .execute("SELECT key, offset, length FROM blocks WHERE pack = ?", (pack.name,))
            .fetchall()
        )
        with self.writer(relocate=True) as out, pack.open("rb") as source:
            for key, offset, length in rows:
                out.put_raw(key, os.pread(source.fileno(), length, offset))
        pack.unlink(missing_ok=True)

    @contextmanager
    def lock(self, exclusive: bool = False) -> Iterator[None]:
        """Hold the repository lock: shared for writers of blocks and pins, exclusive for GC."""
        with (self.root / "lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class PackWriter:
    """Appends blocks to a new pack; see :meth:`Blockstore.writer`.

    NOTE: the disk writes run in a background thread so the importer hashes the next chunk while
    the previous one is written (both release the GIL); a write error surfaces at the next
    :meth:`put` or at :meth:`commit`.
    """

    _QUEUE_BATCHES = 16
    _LOOKUP_BYTES = 64 * 1024
    #: Small blocks are handed to the writer thread in batches: one hand-off per block costs
    #: more than writing a small block.
    _BATCH_BYTES = 1024 * 1024

    def __init__(self, store: Blockstore, *, relocate: bool = False) -> None:
        self.store = store
        self.relocate = relocate  # GC compaction: the rows move to this pack
        self.path = store._packs / f"{secrets.token_hex(8)}.pack"
        self._file: BinaryIO | None = None
        self._rows: dict[bytes, tuple[int, int]] = {}
        self._offset = 0
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(self._QUEUE_BATCHES)
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._thread: threading.Thread | None = None
        self._failure: OSError | None = None

    def _drain(self) -> None:
        assert self._file is not None
        while (batch := self._queue.get()) is not None:
            if self._failure is None:
                try:
                    for data in batch:
                        self._file.write(data)
                except OSError as exc:
                    self._failure = exc

    def _flush_batch(self) -> None:
        if self._batch:
            self._queue.put(self._batch)
            self._batch = []
            self._batch_bytes = 0

    def _stop(self) -> None:
        if self._thread is not None:
            self._flush_batch()
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def put(self, cid: CID, data: bytes) -> None:
        """Append a block unless this pack, or (for blocks worth a lookup) the store, has it."""
        # NOTE: a small block is cheaper to write again than to look up; at commit the existing
        # copy wins and the new one is dead space until the next GC.
        if cid.multihash in self._rows or (len(data) >= self._LOOKUP_BYTES and self.store.has(cid)):
            return
        self.put_raw(cid.multihash, data, cid)

    def put_raw(self, key: bytes, data: bytes, cid: CID | None = None) -> None:
        """Append bytes under a multihash key (no checks)."""
        if self._failure is not None:
            raise self._error(self._failure, cid)
        if self._file is None:
            try:
                self._file = self.path.open("xb")
            except OSError as exc:
                raise self._error(exc, cid) from None
            self._thread = threading.Thread(target=self._drain, name="pack-writer", daemon=True)
            self._thread.start()
        self._batch.append(data)
        self._batch_bytes += len(data)
        if self._batch_bytes >= self._BATCH_BYTES:
            self._flush_batch()
        self._rows[key] = (self._offset, len(data))
        self._offset += len(data)

    def _error(self, exc: OSError, cid: CID | None) -> StorageError:
        what = f"block {cid}" if cid else "the blocks of this add"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return StorageError(
                f"cannot store {what}: no space left in {self.store.root} ({exc.strerror}); "
                "free some space or run `lilypad ipfs gc`, then add again"
            )
        return StorageError(f"cannot store {what} in {self.store.root}: {exc}")

    def commit(self) -> None:
        """Flush the pack and record its blocks in one transaction."""
        if self._file is None:
            return
        self._stop()
        if self._failure is not None:
            raise self._error(self._failure, None)
        try:
            self._file.close()
        except OSError as exc:
            raise self._error(exc, None) from None
        name = self.path.name
        db = self.store._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                f"INSERT OR {'REPLACE' if self.relocate else 'IGNORE'} INTO blocks "
                "(key, pack, offset, length) VALUES (?, ?, ?, ?)",
                ((key, name, off, n) for key, (off, n) in self._rows.items()),
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise StorageError(f"cannot record blocks in {self.store.root}: {exc}") from None
        self._rows.clear()
        self._file = None
        self.path = Path()  # committed: nothing to discard

    def discard(self) -> None:
        """Remove the pack if it was not committed."""
        self._stop()
        if self._file is not None:
            with suppress(OSError):
                self._file.close()
        if self.path != Path():
            self.path.unlink(missing_ok=True)
