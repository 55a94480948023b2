"""Content identifiers: parse, print and verify IPFS CIDs (v0 and v1).

Parsing and multibase printing are done by ``libipld`` (a maintained Rust IPLD library); this
module adds a small value type and the one check that matters for downloads: that bytes hash to
their CID.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import libipld

from lilypad.errors import CorruptBlock, InvalidCID, StorageError

#: Multicodec codes used by UnixFS.
DAG_PB = 0x70
RAW = 0x55
#: Multihash code of sha2-256, the only hash the network's import profile produces.
SHA2_256 = 0x12
_SHA2_256_PREFIX = bytes([SHA2_256, 32])
#: The identity multihash: the "digest" is the data itself (``bafkqaaa`` is the empty block).
IDENTITY = 0x00
#: Longest data an identity CID may carry here: kubo inlines blocks up to ``--inline-limit``
#: (32 bytes by default), and libipld cannot parse or print a multihash over 64 bytes.
MAX_IDENTITY_SIZE = 64

#: The hash functions blocks can be verified with, by multihash code (multicodec table names):
#: what other IPFS implementations produce for ``--hash`` besides the default sha2-256.
HASHES: dict[int, tuple[str, Callable[[bytes], bytes]]] = {
    SHA2_256: ("sha2-256", lambda data: hashlib.sha256(data).digest()),
    0x13: ("sha2-512", lambda data: hashlib.sha512(data).digest()),
    0x16: ("sha3-256", lambda data: hashlib.sha3_256(data).digest()),
    0x14: ("sha3-512", lambda data: hashlib.sha3_512(data).digest()),
    0xB220: ("blake2b-256", lambda data: hashlib.blake2b(data, digest_size=32).digest()),
    0xB240: ("blake2b-512", lambda data: hashlib.blake2b(data).digest()),
}

CODEC_NAMES = {DAG_PB: "dag-pb", RAW: "raw"}


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128 varint, as multiformats and protobuf write integers."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int]:
    """Read a varint at ``offset``; returns ``(value, offset after it)``.

    Raises:
        ValueError: The bytes end inside the varint or it is longer than 9 bytes.
    """
    value = shift = 0
    for i in range(offset, min(len(data), offset + 9)):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise ValueError("truncated or oversized varint")


@dataclass(frozen=True, slots=True)
class CID:
    """A content identifier.

    Attributes:
        version: 0 (``Qm...``, always dag-pb + sha2-256) or 1 (``bafy...``/``bafk...``).
        codec: Multicodec of the block: :data:`DAG_PB` or :data:`RAW`.
        multihash: The multihash bytes (function code, length, digest).
    """

    version: int
    codec: int
    multihash: bytes

    @classmethod
    def parse(cls, value: str | bytes) -> CID:
        """Parse a CID from its string (any multibase) or binary form.

        Raises:
            InvalidCID: ``value`` is not a CID; the message names the value.
        """
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("/ipfs/"):
                value = value[len("/ipfs/") :]
        try:
            info = libipld.decode_cid(value)
        except (ValueError, TypeError) as exc:
            shown = value if isinstance(value, str) else value.hex()
            raise InvalidCID(
                f"{shown[:100]!r} is not a valid CID ({exc})",
                hint="a CID looks like bafybei... (CIDv1) or Qm... (CIDv0)",
            ) from None
        digest: bytes = info["hash"]["digest"]
        multihash = encode_varint(info["hash"]["code"]) + encode_varint(len(digest)) + digest
        return cls(int(info["version"]), int(info["codec"]), multihash)

    @classmethod
    def from_bytes(cls, raw: bytes) -> CID:
        """Parse a binary CID (as in dag-pb links and CARs) without a round trip through text.

        Raises:
            InvalidCID: The bytes are not a CID.
        """
        if len(raw) == 34 and raw[:2] == _SHA2_256_PREFIX:
            return cls(0, DAG_PB, bytes(raw))
        try:
            version, pos = decode_varint(raw)
            codec, pos = decode_varint(raw, pos)
            _, end = decode_varint(raw, pos)
            size, end = decode_varint(raw, end)
        except ValueError:
            version, codec, end, size = -1, 0, 0, 0
        if version != 1 or end + size != len(raw):
            return cls.parse(bytes(raw))  # the slow path, with libipld's error message
        return cls(1, codec, bytes(raw[pos:]))

    @classmethod
    def from_data(cls, data: bytes, codec: int, version: int = 1) -> CID:
        """The sha2-256 CID of a block's bytes."""
        return cls(version, codec, _SHA2_256_PREFIX + hashlib.sha256(data).digest())

    def __bytes__(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return bytes([1]) + encode_varint(self.codec) + self.multihash

    def __str__(self) -> str:
        return libipld.encode_cid(bytes(self))

    def __repr__(self) -> str:
        return f"CID({self})"

    @property
    def hash_code(self) -> int:
        """The multihash function code (0x12 for sha2-256)."""
        return decode_varint(self.multihash)[0]

    @property
    def digest(self) -> bytes:
        """The multihash digest (for an identity CID: the block's bytes)."""
        _, pos = decode_varint(self.multihash)
        size, pos = decode_varint(self.multihash, pos)
        return self.multihash[pos : pos + size]

    def inline_data(self) -> bytes | None:
        """The block an identity CID carries in itself, or ``None`` for a hashed CID.

        Raises:
            StorageError: An identity CID longer than :data:`MAX_IDENTITY_SIZE` bytes.
        """
        if self.multihash[:1] != b"\x00":
            return None
        data = self.digest
        if len(data) > MAX_IDENTITY_SIZE:
            raise StorageError(
                f"an identity CID of {len(data)} bytes is over the {MAX_IDENTITY_SIZE}-byte "
                "limit; a block that large must be hashed"
            )
        return data

    def v1(self) -> CID:
        """The same block named by a CIDv1."""
        return CID(1, self.codec, self.multihash)

    def check(self, data: bytes) -> None:
        """Check that ``data`` hashes to this CID.

        Raises:
            CorruptBlock: The bytes do not match (names the CID).
            StorageError: The CID uses a hash function this node cannot check.
        """
        if self.multihash[:2] == _SHA2_256_PREFIX:
            ok = hashlib.sha256(data).digest() == self.multihash[2:]
        elif (inline := self.inline_data()) is not None:
            ok = inline == data
        elif (known := HASHES.get(self.hash_code)) is not None:
            ok = known[1](data) == self.digest
        else:
            names = ", ".join(["identity", *(name for name, _ in HASHES.values())])
            raise StorageError(
                f"{self}: hash function 0x{self.hash_code:x} is not supported; "
                f"blocks can be verified with {names}"
            )
        if not ok:
            raise CorruptBlock(f"block {self} does not match its CID: its bytes were altered")


def as_cid(value: CID | str) -> CID:
    """Accept a :class:`CID` or its string form (raises :class:`InvalidCID` for a bad string)."""
    return value if isinstance(value, CID) else CID.parse(value)
