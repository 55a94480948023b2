"""Blocks hashed by other IPFS implementations verify here, and CAR headers read everywhere."""

from __future__ import annotations

import json

import pytest

from lilypad.errors import CorruptBlock, StorageError
from lilypad.storage.car import car_header, car_section, read_car
from lilypad.storage.cid import CID, MAX_IDENTITY_SIZE, encode_varint
from tests.storage.conftest import run_js

V0 = CID.parse("QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n")
BLOCK = b"a block other IPFS tools hashed"


def test_cids_from_other_hash_functions_verify_and_catch_tampering() -> None:
    out = json.loads(run_js("cid-hashes.mjs", BLOCK.hex(), car_header([V0]).hex()))
    for name, text in out["cids"].items():
        cid = CID.parse(text)
        cid.check(BLOCK)  # the JS reference's CID of these bytes verifies here
        if name != "identity":
            with pytest.raises(CorruptBlock, match=str(cid)):
                cid.check(BLOCK + b"!")
    identity = CID.parse(out["cids"]["identity"])
    assert identity.inline_data() == BLOCK
    with pytest.raises(CorruptBlock):
        identity.check(b"other bytes")


def test_the_empty_identity_cid_is_the_empty_block() -> None:
    probe = CID.parse("bafkqaaa")  # the trustless gateway spec's probe
    assert probe.inline_data() == b""
    probe.check(b"")


def test_an_oversized_identity_cid_is_refused() -> None:
    data = b"x" * (MAX_IDENTITY_SIZE + 1)
    big = CID(1, 0x55, b"\x00" + encode_varint(len(data)) + data)
    with pytest.raises(StorageError, match="identity CID of 65 bytes"):
        big.inline_data()


def test_an_unknown_hash_function_is_a_clear_error() -> None:
    blake3 = CID(1, 0x55, encode_varint(0x1E) + bytes([32]) + bytes(32))
    with pytest.raises(StorageError, match=r"0x1e is not supported.*sha2-256"):
        blake3.check(BLOCK)


def test_car_headers_name_roots_as_cids_that_the_js_car_reader_reads() -> None:
    raw = CID.from_data(BLOCK, 0x55)
    header = car_header([raw, V0])
    out = json.loads(run_js("cid-hashes.mjs", BLOCK.hex(), header.hex()))
    assert out["roots"] == [str(raw), str(V0)]
    roots, blocks = read_car(header + car_section(raw, BLOCK))
    assert roots == [raw, V0]
    assert blocks == [(raw, BLOCK)]


def test_cars_written_before_roots_were_tagged_still_read() -> None:
    import libipld

    raw = CID.from_data(BLOCK, 0x55)
    old = libipld.encode_dag_cbor({"roots": [b"\x00" + bytes(raw)], "version": 1})
    roots, _ = read_car(encode_varint(len(old)) + old)
    assert roots == [raw]
