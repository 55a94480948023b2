"""The embedded node's gateway over real HTTP: the path gateway and the trustless gateway."""

from __future__ import annotations

from pathlib import Path

import httpx

from lilypad.storage.blockstore import Blockstore
from lilypad.storage.car import read_car
from lilypad.storage.cid import CID
from lilypad.storage.client import KuboClient
from lilypad.storage.importer import NETWORK_PROFILE, add_path
from lilypad.storage.node import EmbeddedNode
from tests.storage.conftest import PNG, UNKNOWN, write_tree


def test_gateway_serves_files_with_types_and_ranges(node: EmbeddedNode, added: CID) -> None:
    gw = node.gateway_url
    image = httpx.get(f"{gw}/ipfs/{added}/image.png")
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.content == PNG
    assert image.headers["etag"]

    ranged = httpx.get(f"{gw}/ipfs/{added}/image.png", headers={"Range": "bytes=262140-262150"})
    assert ranged.status_code == 206
    assert ranged.content == PNG[262140:262151]  # across the chunk boundary
    assert ranged.headers["content-range"] == f"bytes 262140-262150/{len(PNG)}"
    suffix = httpx.get(f"{gw}/ipfs/{added}/image.png", headers={"Range": "bytes=-5"})
    assert suffix.content == PNG[-5:]
    beyond = httpx.get(f"{gw}/ipfs/{added}/image.png", headers={"Range": "bytes=99999999-"})
    assert beyond.status_code == 416

    head = httpx.head(f"{gw}/ipfs/{added}/image.png")
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == len(PNG)

    # A file at a bare CID has no name: its type is sniffed from the bytes.
    with KuboClient(node.api_url) as client:
        bare = client.add(Path(__file__).parent / "js" / "package.json", NETWORK_PROFILE)
    sniffed = httpx.get(f"{gw}/ipfs/{bare[-1]['Hash']}")
    assert sniffed.headers["content-type"] == "text/plain; charset=utf-8"
    text = httpx.get(f"{gw}/ipfs/{added}/notes/ünï cødé.txt")
    assert text.content == b"unicode name"
    assert text.headers["content-type"].startswith("text/plain")


def test_gateway_directories(node: EmbeddedNode, added: CID) -> None:
    gw = node.gateway_url
    redirect = httpx.get(f"{gw}/ipfs/{added}/notes")
    assert redirect.status_code == 301
    listing = httpx.get(f"{gw}/ipfs/{added}/notes", follow_redirects=True)
    assert listing.status_code == 200
    assert "readme.txt" in listing.text
    assert "ünï cødé.txt" in listing.text
    site = httpx.get(f"{gw}/ipfs/{added}/site/")
    assert site.text == "<h1>home</h1>"
    assert site.headers["content-type"].startswith("text/html")


def test_gateway_trustless_raw_and_car(node: EmbeddedNode, store: Blockstore, added: CID) -> None:
    gw = node.gateway_url
    raw = httpx.get(f"{gw}/ipfs/{added}", params={"format": "raw"})
    assert raw.headers["content-type"] == "application/vnd.ipld.raw"
    added.check(raw.content)
    by_accept = httpx.get(f"{gw}/ipfs/{added}", headers={"Accept": "application/vnd.ipld.raw"})
    assert by_accept.content == raw.content

    car = httpx.get(f"{gw}/ipfs/{added}", params={"format": "car"})
    assert car.headers["content-type"].startswith("application/vnd.ipld.car")
    roots, blocks = read_car(car.content)  # every block is checked against its CID
    assert roots == [added]
    assert {cid for cid, _ in blocks} == {cid for cid, _ in store.walk(added)}

    one = httpx.get(f"{gw}/ipfs/{added}", params={"format": "car", "dag-scope": "block"})
    assert [cid for cid, _ in read_car(one.content)[1]] == [added]


def test_gateway_bad_requests(node: EmbeddedNode, added: CID) -> None:
    gw = node.gateway_url
    malformed = httpx.get(f"{gw}/ipfs/bafy-not-a-cid")
    assert malformed.status_code == 400
    assert "not a valid CID" in malformed.text
    unknown = httpx.get(f"{gw}/ipfs/{UNKNOWN}")
    assert unknown.status_code == 404
    missing = httpx.get(f"{gw}/ipfs/{added}/no-such-file")
    assert missing.status_code == 404
    assert "no-such-file" in missing.text
    # Clients normalise "..", so send it escaped as an attacker would.
    escape = httpx.get(f"{gw}/ipfs/{added}/notes/%2e%2e/image.png")
    assert escape.status_code == 400
    assert "'..'" in escape.text
    assert httpx.get(f"{gw}/ipfs/{added}", params={"format": "tar"}).status_code == 400


def test_gateway_reports_a_corrupted_block(node: EmbeddedNode, store: Blockstore) -> None:
    link = add_path(write_tree(store.root.parent / "c", {"f.txt": b"original"}), store)
    leaf = next(c for c, _ in store.walk(link.cid) if c.codec == 0x55)
    where = store.locate(leaf)
    with where.path.open("r+b") as pack:
        pack.seek(where.offset)
        pack.write(b"O")
    response = httpx.get(f"{node.gateway_url}/ipfs/{leaf}")
    assert response.status_code == 500
    assert f"block {leaf} does not match its CID" in response.text
