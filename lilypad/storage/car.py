"""CARv1 (content-addressed archives), as https://ipld.io/specs/transport/car/carv1/ defines them.

A CAR is a header (DAG-CBOR ``{"roots": [CID...], "version": 1}``, each root a CBOR tag-42 CID)
and then sections of ``varint(len) | CID | block``. :func:`car_stream` writes one;
:func:`trustless_car` writes the CAR a trustless gateway answers for a content path (its
``dag-scope``, ``entity-bytes`` and ``dups``); :class:`CarReader` reads one from a stream of chunks
and checks every block against its CID.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from lilypad.errors import BlockTooLarge, StorageError
from lilypad.storage.cid import CID, decode_varint, encode_varint
from lilypad.storage.dag import (
    BlockSource,
    PathTrace,
    walk_blocks,
    walk_entity,
    walk_file_range,
)

if TYPE_CHECKING:
    from lilypad.storage.importer import BlockSink

#: The largest section a reader accepts (kubo's block limit is 2 MiB; this leaves room).
MAX_SECTION = 8 * 1024 * 1024
#: The CAR media type of a trustless response.
CAR_MEDIA_TYPE = "application/vnd.ipld.car"


def car_header(roots: Iterable[CID]) -> bytes:
    """The length-prefixed CARv1 header naming ``roots``.

    Written by hand rather than by a generic DAG-CBOR encoder: the shape is fixed, and each root
    must be a CBOR tag 42 holding ``0x00`` + the binary CID (DAG-CBOR's link encoding), which
    generic encoders only produce from their own CID type. Keys are in DAG-CBOR order
    (``roots`` is shorter than ``version``).
    """
    items = [bytes(root) for root in roots]
    out = bytearray(b"\xa2\x65roots")
    out += _cbor_head(4, len(items))
    for raw in items:
        out += b"\xd8\x2a" + _cbor_head(2, len(raw) + 1) + b"\x00" + raw
    out += b"\x67version\x01"
    return encode_varint(len(out)) + bytes(out)


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    if value < 0x100:
        return bytes([major << 5 | 24, value])
    if value < 0x10000:
        return bytes([major << 5 | 25]) + value.to_bytes(2, "big")
    return bytes([major << 5 | 26]) + value.to_bytes(4, "big")


def car_section(cid: CID, data: bytes) -> bytes:
    """One length-prefixed block section."""
    raw = bytes(cid)
    return encode_varint(len(raw) + len(data)) + raw + data


def car_stream(source: BlockSource, cid: CID, *, whole_dag: bool = True) -> Iterator[bytes]:
    """A CARv1 rooted at ``cid``: the whole DAG depth first, or only the root block."""
    yield car_header([cid])
    blocks = walk_blocks(source, cid) if whole_dag else iter([(cid, source.get(cid))])
    for block_cid, data in blocks:
        yield car_section(block_cid, data)


class DagScope(StrEnum):
    """What of the DAG at the end of a path a trustless CAR carries (after the path's blocks)."""

    BLOCK = "block"  # only the target's own block
    ENTITY = "entity"  # a whole file; a directory's node (and HAMT shards), not its entries
    ALL = "all"  # the whole DAG under the target


def write_car(roots: Sequence[CID], blocks: Iterable[tuple[CID, bytes]]) -> Iterator[bytes]:
    """A CARv1 of ``blocks`` under ``roots``; blocks of identity CIDs are left out (their CID
    already holds their bytes, and the trustless gateway spec forbids sending them)."""
    yield car_header(roots)
    for cid, data in blocks:
        if cid.multihash[:1] != b"\x00":
            yield car_section(cid, data)


def trustless_car(
    source: BlockSource,
    trace: PathTrace,
    scope: DagScope = DagScope.ALL,
    byte_range: tuple[int, int] | None = None,
    *,
    dups: bool = False,
) -> Iterator[bytes]:
    """The CAR a trustless gateway answers for a content path, blocks depth first.

    The blocks that prove the path (``trace.blocks``), then the target's DAG per ``scope``; the
    root named in the header is the target (as kubo does: the spec leaves it open).

    Args:
        source: Where the blocks come from.
        trace: The resolved path (:func:`lilypad.storage.dag.trace_path`).
        scope: How much of the target's DAG.
        byte_range: ``entity-bytes`` resolved to inclusive offsets of a file target: only the
            blocks that prove those bytes (the scope is then ``entity``).
        dups: Send a block each time the walk meets it; by default each block is sent once.
    """
    seen: set[CID] | None = None if dups else set()

    def blocks() -> Iterator[tuple[CID, bytes]]:
        for cid, data in trace.blocks:
            if seen is None or cid not in seen:
                if seen is not None:
                    seen.add(cid)
                yield cid, data
        target = trace.target
        if byte_range is not None:
            yield from walk_file_range(source, target, *byte_range, seen=seen)
        elif scope is DagScope.BLOCK:
            if seen is None or target not in seen:
                yield target, source.get(target)
        elif scope is DagScope.ENTITY:
            yield from walk_entity(source, target, seen=seen)
        else:
            yield from walk_blocks(source, target, seen=seen)

    return write_car([trace.target], blocks())


@dataclass(frozen=True, slots=True)
class CarImport:
    """What :func:`import_car` stored: the CAR's roots, its block count and their bytes."""

    roots: list[CID]
    blocks: int
    size: int


def import_car(sink: BlockSink, chunks: Iterator[bytes], *, limit: int) -> CarImport:
    """Read a CARv1 into ``sink``, every block checked against its CID first.

    Blocks of identity CIDs are counted but not stored (their CID holds them). The caller makes
    it atomic by giving a blockstore writer, which keeps nothing unless it is committed.

    Raises:
        StorageError: The CAR is malformed or truncated.
        BlockTooLarge: A block is over ``limit`` bytes.
        CorruptBlock: A block does not match its CID.
    """
    car = CarReader(chunks)
    count = size = 0
    for cid, data in car:
        if len(data) > limit:
            raise BlockTooLarge(f"block {cid} is {len(data)} bytes, over the {limit}-byte limit")
        if cid.inline_data() is None:
            sink.put(cid, data)
        count += 1
        size += len(data)
    return CarImport(car.roots, count, size)


def read_car(data: bytes) -> tuple[list[CID], list[tuple[CID, bytes]]]:
    """Parse a whole CARv1: its roots and blocks, each block checked against its CID.

    Raises:
        StorageError: The CAR is malformed.
        CorruptBlock: A block does not match its CID.
    """
    reader = CarReader(iter([data]))
    return reader.roots, list(reader)


class CarReader:
    """Reads a CARv1 from a stream of byte chunks; yields ``(CID, bytes)``, each verified.

    Raises (on construction or iteration):
        StorageError: The stream is not a CAR or ends inside a section.
        CorruptBlock: A block does not match its CID.
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()
        import libipld

        header = self._section()
        if header is None:
            raise StorageError("malformed CAR: empty")
        try:
            decoded = libipld.decode_dag_cbor(bytes(header))
            version = decoded["version"]
            roots = decoded["roots"]
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"malformed CAR header: {exc}") from None
        if version != 1:
            raise StorageError(
                f"CAR version {version!r} is not supported; only CARv1 is (ask for "
                "application/vnd.ipld.car; version=1)"
            )
        if not isinstance(roots, list):
            raise StorageError("malformed CAR header: roots is not a list")
        self.roots = [_root(root) for root in roots]

    def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            self._buffer += chunk
        return True

    def _section(self) -> bytes | None:
        """The next length-prefixed section, or ``None`` at a clean end."""
        if not self._fill(1):
            return None
        self._fill(10)
        try:
            length, pos = decode_varint(self._buffer)
        except ValueError:
            raise StorageError("malformed CAR: bad section length") from None
        if length > MAX_SECTION or not self._fill(pos + length):
            raise StorageError("malformed CAR: a section is truncated or too large")
        section = bytes(self._buffer[pos : pos + length])
        del self._buffer[: pos + length]
        return section

    def __iter__(self) -> Iterator[tuple[CID, bytes]]:
        while (section := self._section()) is not None:
            try:
                cid, offset = _cid_prefix(section)
            except (ValueError, IndexError) as exc:
                raise StorageError(f"malformed CAR block: {exc}") from None
            block = section[offset:]
            cid.check(block)
            yield cid, block


def _root(value: object) -> CID:
    """A header root: libipld decodes a tag-42 link to the binary CID (its ``0x00`` prefix
    removed). A byte string with the prefix still on is what lilypad wrote before it wrote
    tag 42; it is read too, so results pinned then still download."""
    if not isinstance(value, bytes):
        raise StorageError(f"malformed CAR header: a root is a {type(value).__name__}, not a CID")
    raw = value[1:] if value[:1] == b"\x00" else value
    try:
        return CID.from_bytes(raw)
    except ValueError as exc:
        raise StorageError(f"malformed CAR header: a root is not a CID ({exc})") from None


def _cid_prefix(section: bytes) -> tuple[CID, int]:
    """The CID at the start of a CAR section and where the block bytes begin."""
    if section[:2] == b"\x12\x20":  # CIDv0: a bare sha2-256 multihash
        return CID.parse(section[:34]), 34
    _, pos = decode_varint(section)  # version
    _, pos = decode_varint(section, pos)  # codec
    _, pos = decode_varint(section, pos)  # hash function
    size, pos = decode_varint(section, pos)
    return CID.parse(section[: pos + size]), pos + size
