"""lilypad.chain.crypto against the libraries it stands in for: eth-account, eth-abi, eth-utils.

The job creator signs offers and transactions with it, and the chain accepts only what these
libraries would have produced byte for byte, so every check here compares bytes."""

from __future__ import annotations

import random

import pytest
from eth_abi.abi import encode
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.address import is_address as eth_is_address
from eth_utils.address import to_checksum_address as eth_checksum
from eth_utils.crypto import keccak as eth_keccak

from lilypad.chain import crypto
from lilypad.chain.crypto import (
    SECP256K1_N,
    Signer,
    decode_words,
    encode_words,
    normalize_signature,
    recover,
)

KEYS = [bytes([i + 1]) * 32 for i in range(8)]


def test_keccak_is_ethereums_not_sha3() -> None:
    assert crypto.keccak(b"").hex() == (
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    )
    rng = random.Random(1)
    for size in (0, 1, 31, 32, 135, 136, 137, 1000):
        data = rng.randbytes(size)
        assert crypto.keccak(data) == eth_keccak(data)
    assert crypto.keccak(text="deposit(uint256)") == eth_keccak(text="deposit(uint256)")


def test_checksum_addresses_match_eip55() -> None:
    for key in KEYS:
        address = Account.from_key(key).address
        assert crypto.to_checksum_address(address.lower()) == address
        assert crypto.to_checksum_address(bytes.fromhex(address[2:])) == address
        assert crypto.is_address(address)
        assert crypto.is_address(address.lower())
        # eth-utils 6 accepts any case; a mixed case that is not the checksum is a typo
        letter = next(i for i in range(2, 42) if address[i].isalpha())
        broken = address[:letter] + address[letter].swapcase() + address[letter + 1 :]
        assert eth_is_address(broken)
        assert not crypto.is_address(broken)
    for bad in ("0x123", "", None, 12, "0x" + "g" * 40):
        assert not crypto.is_address(bad)
    with pytest.raises(ValueError, match="not an Ethereum address"):
        crypto.to_checksum_address("0x123")
    assert crypto.to_checksum_address("0x" + "ab" * 20) == eth_checksum("0x" + "ab" * 20)


def test_static_abi_words_match_eth_abi() -> None:
    address = Account.from_key(KEYS[0]).address
    types = ["address", "bool", "uint8", "uint96", "uint256", "int32", "bytes24", "bytes32"]
    values = [address, True, 255, 2**96 - 1, 2**256 - 1, -5, b"\x07" * 24, b"\x09" * 32]
    assert encode_words(types, values) == encode(types, values)
    assert decode_words(types, encode(types, values)) == tuple(values)


@pytest.mark.parametrize(
    ("abi_type", "value", "message"),
    [
        ("string", "x", "not a static type"),
        ("uint256[]", [1], "not a static type"),
        ("uint8", 256, "does not fit uint8"),
        ("uint96", -1, "does not fit uint96"),
        ("bytes32", b"\x01" * 31, "exactly 32 bytes"),
        ("address", "0x1234", "not an Ethereum address"),
        ("uint7", 1, "multiple of 8"),
        ("bool", 1, "not a bool"),
    ],
)
def test_abi_words_refuse_what_they_cannot_encode(
    abi_type: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_words([abi_type], [value])


def test_signatures_match_eth_account_and_recover() -> None:
    rng = random.Random(2)
    for key in KEYS:
        ours, theirs = Signer(key), Account.from_key(key)
        assert ours.address == theirs.address
        digest = rng.randbytes(32)
        signature = ours.sign_hash(digest)
        assert signature == bytes(theirs.unsafe_sign_hash(digest).signature)
        assert recover(digest, signature) == ours.address
        text = f"lilypad: cancel offer 0x{rng.randbytes(32).hex()}"
        assert ours.sign_message(text) == bytes(
            theirs.sign_message(encode_defunct(text=text)).signature
        )
        assert (
            Account.recover_message(encode_defunct(text=text), signature=ours.sign_message(text))
            == ours.address
        )


def test_recover_reads_every_form_wallets_write() -> None:
    key = Signer(KEYS[0])
    digest = b"\x01" * 32
    signature = key.sign_hash(digest)  # 65 bytes, v 27/28
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    compact = r + ((v - 27) << 255 | s).to_bytes(32, "big")  # EIP-2098
    for form in (signature, signature[:64] + bytes([v - 27]), compact, "0x" + compact.hex()):
        assert normalize_signature(form) == signature
        assert recover(digest, form) == key.address


def test_recover_refuses_what_openzeppelin_refuses() -> None:
    digest = bytes(32)
    signature = Signer(KEYS[0]).sign_hash(b"\x01" * 32)
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    malleable = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])
    with pytest.raises(ValueError, match="upper half"):
        recover(b"\x01" * 32, malleable)
    with pytest.raises(ValueError, match="upper half"):  # nor the malleable twin in v 0/1 form
        recover(b"\x01" * 32, malleable[:64] + bytes([28 - v]))
    with pytest.raises(ValueError, match="not 27 or 28"):
        recover(digest, signature[:64] + bytes([29]))
    with pytest.raises(ValueError, match=r"65 bytes .* or 64"):
        recover(digest, signature[:63])
    with pytest.raises(ValueError, match="not hex"):
        recover(digest, "0xzz")
    assert recover(digest, signature) != Signer(KEYS[0]).address  # another digest, another key


@pytest.mark.parametrize(
    "fees",
    [
        {"maxFeePerGas": 3 * 10**9, "maxPriorityFeePerGas": 10**9},
        {"gasPrice": 2 * 10**9},
    ],
    ids=["eip1559", "legacy"],
)
@pytest.mark.parametrize("data", [b"", b"\xd0\xe3\x0d\xb0" + b"\x01" * 32, b"\x60" * 300])
def test_transactions_match_eth_account_byte_for_byte(fees: dict[str, int], data: bytes) -> None:
    for key in KEYS[:3]:
        tx = {
            "chainId": 31337,
            "nonce": 7,
            "gas": 120_000,
            "to": eth_checksum("0x" + "5f" * 20),
            "value": 0 if data else 10**18,
            "data": "0x" + data.hex(),
            **fees,
        }
        ours, theirs = Signer(key).sign_transaction(tx), Account.from_key(key).sign_transaction(tx)
        assert ours.raw_transaction == bytes(theirs.raw_transaction)
        assert ours.hash == bytes(theirs.hash)


def test_rlp_lengths_cross_the_long_form_boundary() -> None:
    import rlp

    for item in (b"", b"\x00", b"\x7f", b"\x80", b"a" * 55, b"a" * 56, b"a" * 70_000, 0, 1024):
        assert crypto.rlp_encode(item) == rlp.encode(item)
    nested = [[b"a" * 60, [1, 2, []]], b"x" * 56]
    assert crypto.rlp_encode(nested) == rlp.encode(nested)


def test_a_bad_key_names_no_key() -> None:
    with pytest.raises(ValueError, match="64 hex digits") as caught:
        Signer.from_key("0xnothex")
    assert "nothex" not in str(caught.value)
    with pytest.raises(ValueError, match="not a valid secp256k1"):
        Signer(bytes(32))
    assert "Signer(0x" in repr(Signer(KEYS[0]))
    assert KEYS[0].hex() not in repr(Signer(KEYS[0]))


def test_offer_digests_are_what_a_wallet_signs_for_the_typed_data() -> None:
    """The offers hash their EIP-712 struct by hand (static words); a wallet given
    ``typed_data()`` must sign the same digest, and the signature must recover to the signer."""
    from eth_account.messages import encode_typed_data

    from lilypad.chain.offers import JobOffer, ResourceOffer, module_id

    wallet = Account.from_key(KEYS[3])
    market = eth_checksum("0x" + "cd" * 20)
    mediators = (Account.from_key(KEYS[4]).address, Account.from_key(KEYS[5]).address)
    offers = [
        JobOffer(
            job_creator=wallet.address,
            module=module_id("sdxl:v0.9-lilypad1"),
            spec_hash="0x" + "ab" * 32,
            machine=2**40 + 7,
            max_price=2**96 - 1,
            timeout=900,
            mediators=mediators,
            expiry=2**63,
            nonce=2**255,
        ),
        ResourceOffer(
            provider=wallet.address,
            price=5,
            collateral=10,
            mediators=(),
            expiry=1,
            nonce=0,
        ),
    ]
    for offer in offers:
        signed = wallet.sign_typed_data(full_message=offer.typed_data(31337, market))
        assert offer.sign(wallet, 31337, market) == "0x" + bytes(signed.signature).hex()
        assert offer.sign(Signer(KEYS[3]), 31337, market) == "0x" + bytes(signed.signature).hex()
        message = encode_typed_data(full_message=offer.typed_data(31337, market))
        assert (
            offer.digest(31337, market)
            == "0x"
            + bytes(eth_keccak(b"\x19" + message.version + message.header + message.body)).hex()
        )
        assert offer.signer("0x" + bytes(signed.signature).hex(), 31337, market) == wallet.address
