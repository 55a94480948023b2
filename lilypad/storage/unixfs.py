"""The dag-pb block format and the UnixFS data inside it, encoded as kubo encodes them.

NOTE: hand-written on purpose. dag-pb requires ``Links`` (field 2) to be written *before*
``Data`` (field 1) and every link's ``Name`` to be present even when empty; a generic protobuf
library writes fields in number order and drops empty strings, which gives different bytes and so
different CIDs. Both messages are tiny, so the codec below is a few dozen lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from lilypad.errors import MalformedContent
from lilypad.storage.cid import CID, decode_varint, encode_varint


class NodeType(IntEnum):
    """UnixFS ``Data.Type``."""

    RAW = 0
    DIRECTORY = 1
    FILE = 2
    METADATA = 3
    SYMLINK = 4
    HAMT_SHARD = 5


#: Murmur3 x64 64-bit, the hash kubo's HAMT directories use.
MURMUR3_X64_64 = 0x22


@dataclass(frozen=True, slots=True)
class Link:
    """A dag-pb link: the child's CID, its name in the parent and its cumulative size."""

    cid: CID
    name: str
    tsize: int


@dataclass(frozen=True, slots=True)
class UnixFSData:
    """The UnixFS protobuf carried in a dag-pb node's ``Data`` field."""

    type: NodeType
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()
    hash_type: int | None = None
    fanout: int | None = None

    def encode(self) -> bytes:
        """Serialize in field order, as go-unixfs and the JS importer do."""
        out = bytearray(b"\x08" + encode_varint(self.type))
        if self.data is not None:
            out += b"\x12" + encode_varint(len(self.data)) + self.data
        if self.filesize is not None:
            out += b"\x18" + encode_varint(self.filesize)
        for size in self.blocksizes:
            out += b"\x20" + encode_varint(size)
        if self.hash_type is not None:
            out += b"\x28" + encode_varint(self.hash_type)
        if self.fanout is not None:
            out += b"\x30" + encode_varint(self.fanout)
        return bytes(out)

    @classmethod
    def decode(cls, raw: bytes) -> UnixFSData:
        """Parse UnixFS data; unknown fields (mode, mtime) are skipped.

        Raises:
            MalformedContent: The bytes are not UnixFS data.
        """
        fields: dict[int, int | bytes] = {}
        blocksizes: list[int] = []
        for number, value in _fields(raw):
            if number == 4 and isinstance(value, int):
                blocksizes.append(value)
            else:
                fields[number] = value
        node_type = fields.get(1)
        if not isinstance(node_type, int) or node_type not in NodeType._value2member_map_:
            raise MalformedContent(f"not a UnixFS node (type {node_type!r})")

        def _int(n: int) -> int | None:
            v = fields.get(n)
            return v if isinstance(v, int) else None

        data = fields.get(2)
        return cls(
            NodeType(node_type),
            data if isinstance(data, bytes) else None,
            _int(3),
            tuple(blocksizes),
            _int(5),
            _int(6),
        )


@dataclass(frozen=True, slots=True)
class PBNode:
    """A decoded dag-pb node."""

    links: tuple[Link, ...] = ()
    data: bytes | None = None
    unixfs: UnixFSData | None = field(default=None, compare=False)


def encode_node(links: list[Link] | tuple[Link, ...], data: bytes) -> bytes:
    """Encode a dag-pb node: links first, then data (the dag-pb canonical order).

    Links must already be in the order wanted (directories: sorted by name bytes).
    """
    out = bytearray()
    for link in links:
        cid = bytes(link.cid)
        name = link.name.encode()
        body = (
            b"\x0a"
            + encode_varint(len(cid))
            + cid
            + b"\x12"
            + encode_varint(len(name))
            + name
            + b"\x18"
            + encode_varint(link.tsize)
        )
        out += b"\x12" + encode_varint(len(body)) + body
    out += b"\x0a" + encode_varint(len(data)) + data
    return bytes(out)


def decode_node(block: bytes) -> PBNode:
    """Decode a dag-pb block and the UnixFS data in it.

    Raises:
        MalformedContent: The block is not valid dag-pb/UnixFS.
    """
    links: list[Link] = []
    data: bytes | None = None
    try:
        for number, value in _fields(block):
            if number == 2 and isinstance(value, bytes):
                links.append(_decode_link(value))
            elif number == 1 and isinstance(value, bytes):
                data = value
            else:
                raise ValueError(f"unexpected field {number}")
        unixfs = UnixFSData.decode(data) if data is not None else None
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise MalformedContent(f"malformed dag-pb block: {exc}") from None
    return PBNode(tuple(links), data, unixfs)


def _decode_link(raw: bytes) -> Link:
    cid: CID | None = None
    name = ""
    tsize = 0
    for number, value in _fields(raw):
        if number == 1 and isinstance(value, bytes):
            cid = CID.from_bytes(value)
        elif number == 2 and isinstance(value, bytes):
            name = value.decode()
        elif number == 3 and isinstance(value, int):
            tsize = value
    if cid is None:
        raise ValueError("link without a CID")
    return Link(cid, name, tsize)


def _fields(raw: bytes) -> list[tuple[int, int | bytes]]:
    """Split a protobuf message into ``(field number, value)``; varint and bytes wire types only."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(raw):
        key, pos = decode_varint(raw, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = decode_varint(raw, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = decode_varint(raw, pos)
            if pos + length > len(raw):
                raise ValueError("field runs past the end of the block")
            out.append((number, raw[pos : pos + length]))
            pos += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return out
