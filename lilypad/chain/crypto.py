"""Ethereum's primitives without web3: Keccak-256, addresses, ABI words, signatures, transactions.

Why this exists: ``lilypad run`` is a short-lived process, and importing eth-account and web3
costs it about 1.3 s (eth-utils builds pydantic models as it loads; eth-keyfile imports py_ecc's
BLS pairing tables). The job creator needs only a handful of primitives, so they live here on two
small, well-kept libraries: pycryptodome's Keccak and coincurve (libsecp256k1, the backend
eth-keys itself prefers). The offers' EIP-712 hashing and signing use them for every role.

What is covered, and only that:

* :func:`keccak`, :func:`is_address`, :func:`to_checksum_address` (EIP-55);
* :func:`encode_words` / :func:`decode_words`: the ABI encoding of *static* types (address, bool,
  ``uintN``, ``bytesN``), which is all the market's structs and the calls the job creator makes
  use; anything dynamic is refused, not guessed;
* :class:`Signer`: a private key that signs digests (recoverable, low-s, RFC 6979, as
  eth-account does), EIP-191 messages and EIP-1559 / EIP-155 transactions;
* :func:`normalize_signature`: the forms wallets write (65 bytes with ``v`` 27/28 or 0/1, 64-byte
  EIP-2098 compact) as the one form OpenZeppelin's ``ECDSA`` and so the market take (65 bytes,
  ``v`` 27/28), refusing a malleable high ``s``; :func:`recover`: the signer of a digest from
  any of those forms;
* :func:`rlp_encode` for transactions.

``tests/chain/test_crypto.py`` checks each against eth-account, eth-abi and eth-utils.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import coincurve
from Crypto.Hash import keccak as _keccak

#: The order of secp256k1's group; a signature's ``s`` must be at most half of it (EIP-2).
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_ADDRESS = re.compile(r"^(0x)?[0-9a-fA-F]{40}$")
_STATIC = re.compile(r"^(address|bool|uint(\d+)|int(\d+)|bytes(\d+))$")


def keccak(data: bytes = b"", *, text: str | None = None) -> bytes:
    """Keccak-256 (Ethereum's hash, not NIST SHA3-256) of ``data`` or of ``text`` as UTF-8."""
    digest = _keccak.new(digest_bits=256)
    digest.update(text.encode() if text is not None else data)
    return digest.digest()


def is_address(value: object) -> bool:
    """Whether ``value`` is a 20-byte hex address whose mixed case, if any, is a valid checksum."""
    if not isinstance(value, str) or not _ADDRESS.match(value):
        return False
    digits = value.removeprefix("0x")
    if digits == digits.lower() or digits == digits.upper():
        return True
    return to_checksum_address(value) == "0x" + digits


def to_checksum_address(value: str | bytes) -> str:
    """The EIP-55 form of an address given as hex (any case) or 20 bytes."""
    if isinstance(value, bytes):
        if len(value) != 20:
            raise ValueError(f"an address is 20 bytes, not {len(value)}")
        digits = value.hex()
    else:
        if not _ADDRESS.match(value):
            raise ValueError(f"not an Ethereum address: {value!r}")
        digits = value.removeprefix("0x").lower()
    return _checksummed(digits)


@functools.lru_cache(maxsize=4096)
def _checksummed(digits: str) -> str:
    """EIP-55 of 40 lower-case hex digits. Remembered: a service checksums the same few
    addresses (its own, the market's, its counterparties') for every offer, deal and event, and
    each costs a Keccak."""
    hashed = keccak(digits.encode()).hex()
    return "0x" + "".join(
        c.upper() if c.isalpha() and int(h, 16) >= 8 else c
        for c, h in zip(digits, hashed[:40], strict=True)
    )


# --------------------------------------------------------------------------------- ABI words
def encode_words(types: Sequence[str], values: Sequence[Any]) -> bytes:
    """``abi.encode(values)`` for static ``types``: one 32-byte word each.

    Raises:
        ValueError: a dynamic type, or a value that does not fit its type.
    """
    if len(types) != len(values):
        raise ValueError(f"{len(types)} types but {len(values)} values")
    return b"".join(_word(t, v) for t, v in zip(types, values, strict=True))


def decode_words(types: Sequence[str], data: bytes) -> tuple[Any, ...]:
    """The inverse of :func:`encode_words` (addresses come back checksummed)."""
    if len(data) < 32 * len(types):
        raise ValueError(f"{len(data)} bytes cannot hold {len(types)} ABI words")
    values: list[Any] = []
    for i, abi_type in enumerate(types):
        word = data[32 * i : 32 * (i + 1)]
        kind, bits, size = _static(abi_type)
        if kind == "address":
            values.append(to_checksum_address(word[12:]))
        elif kind == "bool":
            values.append(word[-1] == 1)
        elif kind == "uint":
            values.append(int.from_bytes(word, "big") & ((1 << bits) - 1))
        elif kind == "int":
            values.append(int.from_bytes(word[-(bits // 8) :], "big", signed=True))
        else:
            values.append(word[:size])
    return tuple(values)


def selector(signature: str) -> bytes:
    """The 4-byte selector of a function, e.g. ``selector("deposit(uint256)")``."""
    return keccak(text=signature)[:4]


def _static(abi_type: str) -> tuple[str, int, int]:
    match = _STATIC.match(abi_type)
    if not match:
        raise ValueError(f"ABI type {abi_type!r} is not a static type this encoder handles")
    if abi_type in ("address", "bool"):
        return abi_type, 0, 0
    if abi_type.startswith("bytes"):
        size = int(match.group(4))
        if not 1 <= size <= 32:
            raise ValueError(f"ABI type {abi_type!r}: bytesN needs 1 <= N <= 32")
        return "bytes", 0, size
    bits = int(match.group(2) or match.group(3))
    if not (8 <= bits <= 256 and bits % 8 == 0):
        raise ValueError(f"ABI type {abi_type!r}: the width must be a multiple of 8 up to 256")
    return ("uint" if abi_type.startswith("u") else "int"), bits, 0


def _word(abi_type: str, value: Any) -> bytes:
    kind, bits, size = _static(abi_type)
    if kind == "address":
        raw = bytes.fromhex(to_checksum_address(value)[2:]) if isinstance(value, str) else value
        if not isinstance(raw, bytes) or len(raw) != 20:
            raise ValueError(f"not an address: {value!r}")
        return raw.rjust(32, b"\0")
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"not a bool: {value!r}")
        return int(value).to_bytes(32, "big")
    if kind == "bytes":
        raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else value
        if not isinstance(raw, bytes) or len(raw) != size:
            raise ValueError(f"{abi_type} needs exactly {size} bytes, not {value!r}")
        return raw.ljust(32, b"\0")
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{abi_type} needs an integer, not {value!r}")
    low, high = (0, 1 << bits) if kind == "uint" else (-(1 << (bits - 1)), 1 << (bits - 1))
    if not low <= value < high:
        raise ValueError(f"{value} does not fit {abi_type}")
    return (value % (1 << 256)).to_bytes(32, "big")


# --------------------------------------------------------------------------------- RLP
def rlp_encode(item: bytes | int | Sequence[Any]) -> bytes:
    """Recursive-length-prefix encoding of bytes, non-negative ints (big-endian, minimal) and
    lists of those."""
    if isinstance(item, int) and not isinstance(item, bool):
        if item < 0:
            raise ValueError(f"RLP encodes non-negative integers only, not {item}")
        item = item.to_bytes((item.bit_length() + 7) // 8, "big")
    if isinstance(item, bytes):
        if len(item) == 1 and item[0] < 0x80:
            return item
        return _rlp_length(len(item), 0x80) + item
    if isinstance(item, Sequence) and not isinstance(item, str):
        payload = b"".join(rlp_encode(x) for x in item)
        return _rlp_length(len(payload), 0xC0) + payload
    raise ValueError(f"RLP cannot encode {type(item).__name__}")


def _rlp_length(length: int, offset: int) -> bytes:
    if length < 56:
        return bytes([offset + length])
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([offset + 55 + len(size)]) + size


# --------------------------------------------------------------------------------- signatures
def eip191_digest(text: str) -> bytes:
    """What ``personal_sign`` signs: ``keccak("\\x19Ethereum Signed Message:\\n" ‖ len ‖ text)``."""
    body = text.encode()
    return keccak(b"\x19Ethereum Signed Message:\n" + str(len(body)).encode() + body)


def normalize_signature(signature: bytes | str) -> bytes:
    """An ECDSA signature in the one form the market checks: 65 bytes ``r ‖ s ‖ v``, ``v`` 27 or 28.

    Takes what wallets and libraries write: 65 bytes with ``v`` 27/28 (``eth_sign``, ethers'
    ``signature``) or 0/1 (the bare recovery id), and 64 bytes ``r ‖ yParityAndS`` (EIP-2098
    compact: the top bit of the second word is the parity, the rest is ``s``). Hex with or
    without ``0x``, or bytes.

    Raises:
        ValueError: not hex, another length, another ``v``, or ``s`` in the upper half of the
            curve order (malleable: OpenZeppelin's ECDSA refuses it; sign again, as every
            wallet signs low-s).
    """
    try:
        raw = (
            bytes.fromhex(signature.removeprefix("0x")) if isinstance(signature, str) else signature
        )
    except ValueError:
        raise ValueError(f"signature {_shown(signature)!r} is not hex") from None
    if len(raw) == 64:
        word = int.from_bytes(raw[32:], "big")
        parity, s = word >> 255, word & ((1 << 255) - 1)
        raw = raw[:32] + s.to_bytes(32, "big") + bytes([27 + parity])
    elif len(raw) == 65 and raw[64] in (0, 1):
        raw = raw[:64] + bytes([27 + raw[64]])
    elif len(raw) != 65:
        raise ValueError(
            f"a signature is 65 bytes (r, s, v) or 64 (EIP-2098 compact), not {len(raw)}"
        )
    if raw[64] not in (27, 28):
        raise ValueError(f"signature v is {raw[64]}, not 27 or 28 (or 0 or 1)")
    if int.from_bytes(raw[32:64], "big") > SECP256K1_N // 2:
        raise ValueError(
            "signature s is in the upper half of the curve order (a malleable signature, which "
            "the market refuses); sign again: wallets and ethers sign with low s"
        )
    return raw


def recover(digest: bytes, signature: bytes | str) -> str:
    """The checksummed address whose key made ``signature`` of ``digest``.

    ``signature`` is any form :func:`normalize_signature` takes.

    Raises:
        ValueError: what :func:`normalize_signature` refuses, or no key recovers.
    """
    raw = normalize_signature(signature)
    try:
        key = coincurve.PublicKey.from_signature_and_message(
            raw[:64] + bytes([raw[64] - 27]), digest, hasher=None
        )
    except Exception as exc:  # coincurve raises ValueError or its own errors on bad points
        raise ValueError(f"no public key recovers from this signature: {exc}") from None
    return _address_of(key)


def _shown(value: bytes | str) -> str:
    text = value if isinstance(value, str) else value.hex()
    return text if len(text) <= 20 else f"{text[:20]}..."


def _address_of(key: coincurve.PublicKey) -> str:
    return to_checksum_address(keccak(key.format(compressed=False)[1:])[-20:])


@dataclass(frozen=True)
class SignedTransaction:
    """A signed transaction as sent with ``eth_sendRawTransaction``."""

    raw_transaction: bytes
    hash: bytes


class Signer:
    """A private key and its address: signs digests, EIP-191 messages and transactions.

    It has the ``address``, ``key``, ``sign_message`` and ``sign_transaction`` an eth-account
    ``LocalAccount`` has for what this code base does, so either can sign offers.

    Raises:
        ValueError: the key is not 32 bytes (64 hex digits) or not a valid secp256k1 key.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a private key is 32 bytes (64 hex digits)")
        try:
            self._private = coincurve.PrivateKey(key)
        except Exception:
            raise ValueError("not a valid secp256k1 private key") from None
        self.key = key
        self.address = _address_of(self._private.public_key)

    @classmethod
    def from_key(cls, key: str | bytes) -> Signer:
        """From hex (with or without ``0x``) or raw bytes."""
        if isinstance(key, str):
            try:
                key = bytes.fromhex(key.removeprefix("0x"))
            except ValueError:
                raise ValueError("a private key is 64 hex digits") from None
        return cls(bytes(key))

    def __repr__(self) -> str:  # never the key
        return f"Signer({self.address})"

    def sign_hash(self, digest: bytes) -> bytes:
        """A 65-byte ``r ‖ s ‖ v`` signature of a 32-byte digest, ``v`` 27 or 28."""
        if len(digest) != 32:
            raise ValueError(f"a digest is 32 bytes, not {len(digest)}")
        raw = self._private.sign_recoverable(digest, hasher=None)
        return raw[:64] + bytes([raw[64] + 27])

    def sign_message(self, text: str) -> bytes:
        """The EIP-191 (``personal_sign``) signature of ``text``."""
        return self.sign_hash(eip191_digest(text))

    def sign_transaction(self, tx: Mapping[str, Any]) -> SignedTransaction:
        """Sign an EIP-1559 transaction (``maxFeePerGas`` given) or else a legacy EIP-155 one.

        ``tx`` holds ``chainId``, ``nonce``, ``gas``, ``to`` (absent or None to deploy),
        ``value``, ``data`` (bytes or hex) and the fee fields, as web3 builds them.
        """
        to = bytes.fromhex(tx["to"].removeprefix("0x")) if tx.get("to") else b""
        data = tx.get("data") or b""
        data = bytes.fromhex(data.removeprefix("0x")) if isinstance(data, str) else bytes(data)
        value, chain_id = int(tx.get("value", 0)), int(tx["chainId"])
        if "maxFeePerGas" in tx:
            fields: list[Any] = [
                chain_id,
                int(tx["nonce"]),
                int(tx["maxPriorityFeePerGas"]),
                int(tx["maxFeePerGas"]),
                int(tx["gas"]),
                to,
                value,
                data,
                [],  # access list
            ]
            r, s, parity = self._sign_fields(b"\x02" + rlp_encode(fields))
            raw = b"\x02" + rlp_encode([*fields, parity, r, s])
        else:
            fields = [int(tx["nonce"]), int(tx["gasPrice"]), int(tx["gas"]), to, value, data]
            r, s, parity = self._sign_fields(rlp_encode([*fields, chain_id, 0, 0]))
            raw = rlp_encode([*fields, parity + 35 + 2 * chain_id, r, s])
        return SignedTransaction(raw, keccak(raw))

    def _sign_fields(self, payload: bytes) -> tuple[int, int, int]:
        signature = self._private.sign_recoverable(keccak(payload), hasher=None)
        r, s = (int.from_bytes(signature[i : i + 32], "big") for i in (0, 32))
        return r, s, signature[64]
