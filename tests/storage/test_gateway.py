"""The embedded node's gateway over real HTTP: the path gateway and the trustless gateway.

Checked against the specifications (https://specs.ipfs.tech/http-gateways/path-gateway/ and
.../trustless-gateway/) with httpx, and with independent IPFS clients: @ipld/car (every CAR the
gateway writes), ipfs-car (unpacks a CAR back into files) and @helia/verified-fetch.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import httpx
import pytest

from lilypad.errors import BlockNotFound
from lilypad.storage import dag
from lilypad.storage.blockstore import Blockstore
from lilypad.storage.car import read_car
from lilypad.storage.cid import CID, RAW
from lilypad.storage.client import KuboClient
from lilypad.storage.importer import NETWORK_PROFILE, ImportProfile, add_path
from lilypad.storage.node import EmbeddedNode
from tests.storage.conftest import JS, PNG, UNKNOWN, run_js, write_tree

CHUNK = NETWORK_PROFILE.chunk_size
BIG = os.urandom(12 * CHUNK + 1000)  # 13 leaves under one file node
#: Names outside Latin-1 (HTTP headers are Latin-1: these broke the X-Ipfs-Path header).
UNICODE_DIR = "данные ✓"
UNICODE_FILE = "日本語 файл.txt"


class CarBlocks:
    """The blocks of a CAR as a block source: what a client can verify with nothing else."""

    def __init__(self, blocks: list[tuple[CID, bytes]]) -> None:
        self.blocks = dict(blocks)

    def get(self, cid: CID) -> bytes:
        if (inline := cid.inline_data()) is not None:
            return inline
        if cid not in self.blocks:
            raise BlockNotFound(f"{cid} is not in the CAR")
        return self.blocks[cid]


@pytest.fixture
def content(store: Blockstore, tmp_path: Path) -> CID:
    """A tree in the node's store: a 3 MiB file, a file of identical chunks, unicode names
    outside Latin-1, nested folders and an empty one."""
    tree = write_tree(
        tmp_path / "content",
        {
            "data/big.bin": BIG,
            "data/zeros.bin": bytes(4 * CHUNK),
            f"{UNICODE_DIR}/{UNICODE_FILE}": "содержимое".encode(),
            "deep/a/b/c.txt": b"nested",
            "empty": None,
        },
    )
    return add_path(tree, store).cid


@pytest.fixture
def sharded(store: Blockstore, tmp_path: Path) -> CID:
    """A HAMT-sharded directory of 300 files (kubo shards at 256 KiB; a tiny threshold here)."""
    files: dict[str, bytes | None] = {f"file-{i:03}.txt": f"entry {i}".encode() for i in range(300)}
    tree = write_tree(tmp_path / "sharded", files)
    return add_path(tree, store, ImportProfile(shard_threshold=1000)).cid


def car(gw: str, path: str, **params: str) -> tuple[httpx.Response, list[CID], list[CID]]:
    """GET a CAR: the response, its roots and its block CIDs in order (each block verified)."""
    response = httpx.get(f"{gw}{path}", params={"format": "car", **params})
    assert response.status_code == 200, response.text
    roots, blocks = read_car(response.content)
    return response, roots, [cid for cid, _ in blocks]


def shards_of(store: Blockstore, directory: CID) -> set[CID]:
    return {cid for cid, _ in dag.walk_entity(store, directory)}


# --- the path gateway --------------------------------------------------------------------------
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
    assert beyond.headers["content-range"] == f"bytes */{len(PNG)}"

    head = httpx.head(f"{gw}/ipfs/{added}/image.png")
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == len(PNG)

    # A file at a bare CID has no name: its type is sniffed from the bytes.
    with KuboClient(node.api_url) as client:
        bare = client.add(JS / "package.json", NETWORK_PROFILE)
    sniffed = httpx.get(f"{gw}/ipfs/{bare[-1]['Hash']}")
    assert sniffed.headers["content-type"] == "text/plain; charset=utf-8"
    text = httpx.get(f"{gw}/ipfs/{added}/notes/ünï cødé.txt")
    assert text.content == b"unicode name"
    assert text.headers["content-type"].startswith("text/plain")


def test_range_headers_follow_rfc_9110(node: EmbeddedNode, added: CID) -> None:
    url = f"{node.gateway_url}/ipfs/{added}/image.png"
    # Syntactically invalid, reversed, another unit: ignored, the whole file is sent.
    for ignored in ("bytes=abc", "bytes=5-1", "items=0-1", "bytes=", "bytes=1-2,x"):
        whole = httpx.get(url, headers={"Range": ignored})
        assert (whole.status_code, whole.content) == (200, PNG), ignored
    # Several ranges: a multipart/byteranges body, one part per range.
    multi = httpx.get(url, headers={"Range": "bytes=0-9, 262140-262150, -4"})
    assert multi.status_code == 206
    kind, _, boundary = multi.headers["content-type"].partition("; boundary=")
    assert kind == "multipart/byteranges"
    assert int(multi.headers["content-length"]) == len(multi.content)
    parts = multi.content.split(f"--{boundary}".encode())
    assert parts[-1] == b"--\r\n"
    bodies = [part.split(b"\r\n\r\n", 1) for part in parts[1:-1]]
    expected = [(0, 9), (262140, 262150), (len(PNG) - 4, len(PNG) - 1)]
    for (head, body), (first, last) in zip(bodies, expected, strict=True):
        assert f"Content-Range: bytes {first}-{last}/{len(PNG)}".encode() in head
        assert body.removesuffix(b"\r\n") == PNG[first : last + 1]
    # Some ranges unsatisfiable: the rest are sent; all of them: 416.
    partly = httpx.get(url, headers={"Range": "bytes=99999999-, 0-1"})
    assert (partly.status_code, partly.content) == (206, PNG[:2])
    # If-Range with another validator: the Range is ignored.
    stale = httpx.get(url, headers={"Range": "bytes=0-1", "If-Range": '"bafyother"'})
    assert (stale.status_code, stale.content) == (200, PNG)
    fresh = httpx.get(url, headers={"Range": "bytes=0-1", "If-Range": stale.headers["etag"]})
    assert (fresh.status_code, fresh.content) == (206, PNG[:2])


def test_gateway_directories(node: EmbeddedNode, added: CID) -> None:
    gw = node.gateway_url
    redirect = httpx.get(f"{gw}/ipfs/{added}/notes", params={"filename": "x", "a": "1"})
    assert redirect.status_code == 301
    assert redirect.headers["location"] == f"/ipfs/{added}/notes/?filename=x&a=1"
    listing = httpx.get(f"{gw}/ipfs/{added}/notes", follow_redirects=True)
    assert listing.status_code == 200
    assert "readme.txt" in listing.text
    assert "ünï cødé.txt" in listing.text
    assert listing.headers["etag"].startswith('"DirIndex-')
    site = httpx.get(f"{gw}/ipfs/{added}/site/")
    assert site.text == "<h1>home</h1>"
    assert site.headers["content-type"].startswith("text/html")


def test_unicode_paths_outside_latin1(node: EmbeddedNode, store: Blockstore, content: CID) -> None:
    gw = node.gateway_url
    path = f"/ipfs/{content}/{UNICODE_DIR}/{UNICODE_FILE}"
    file = httpx.get(f"{gw}{path}")
    assert (file.status_code, file.content) == (200, "содержимое".encode())
    # Headers are percent-encoded ASCII, and decode back to the path.
    assert file.headers["x-ipfs-path"].isascii()
    assert httpx.URL(file.headers["x-ipfs-path"]).path == path
    assert httpx.head(f"{gw}{path}").status_code == 200

    listing = httpx.get(f"{gw}/ipfs/{content}/{UNICODE_DIR}", follow_redirects=True)
    assert listing.status_code == 200
    assert UNICODE_FILE in listing.text
    assert listing.url.path == f"/ipfs/{content}/{UNICODE_DIR}/"

    _, roots, blocks = car(gw, path)
    target = dag.resolve(store, content, f"{UNICODE_DIR}/{UNICODE_FILE}")
    assert roots == [target]
    assert target in blocks
    raw = httpx.get(f"{gw}{path}", params={"format": "raw", "filename": "файл.bin"})
    assert raw.status_code == 200
    assert raw.headers["content-disposition"] == (
        "attachment; filename=\"____.bin\"; filename*=UTF-8''%D1%84%D0%B0%D0%B9%D0%BB.bin"
    )


def test_gateway_bad_requests(node: EmbeddedNode, added: CID) -> None:
    gw = node.gateway_url
    malformed = httpx.get(f"{gw}/ipfs/bafy-not-a-cid")
    assert malformed.status_code == 400
    assert "'bafy-not-a-cid' is not a valid CID" in malformed.text
    unknown = httpx.get(f"{gw}/ipfs/{UNKNOWN}")
    assert unknown.status_code == 404
    missing = httpx.get(f"{gw}/ipfs/{added}/no-such-file")
    assert missing.status_code == 404
    assert "no-such-file" in missing.text
    through_file = httpx.get(f"{gw}/ipfs/{added}/image.png/inside")
    assert through_file.status_code == 404
    # Clients normalise "..", so send it escaped as an attacker would.
    escape = httpx.get(f"{gw}/ipfs/{added}/notes/%2e%2e/image.png")
    assert escape.status_code == 400
    assert "'..'" in escape.text
    for unsupported in ("dag-json", "dag-cbor", "json", "cbor"):
        refused = httpx.get(f"{gw}/ipfs/{added}", params={"format": unsupported})
        assert refused.status_code == 501, unsupported
        assert "raw, car or tar" in refused.text
    unknown_format = httpx.get(f"{gw}/ipfs/{added}", params={"format": "zip"})
    assert unknown_format.status_code == 400
    assert "'zip'" in unknown_format.text
    by_accept = httpx.get(f"{gw}/ipfs/{added}", headers={"Accept": "application/vnd.ipld.dag-json"})
    assert by_accept.status_code == 501
    car_v2 = httpx.get(
        f"{gw}/ipfs/{added}", headers={"Accept": "application/vnd.ipld.car; version=2"}
    )
    assert car_v2.status_code == 406
    for bad in ({"dag-scope": "most"}, {"entity-bytes": "1-2"}, {"car-dups": "maybe"}):
        assert httpx.get(f"{gw}/ipfs/{added}", params={"format": "car", **bad}).status_code == 400
    ipns = httpx.get(f"{gw}/ipns/example.com")
    assert ipns.status_code == 501
    assert "no IPNS" in ipns.text
    assert httpx.get(f"{gw}/ipfs/").status_code == 400
    cbor = CID(1, 0x71, CID.from_data(b"x", RAW).multihash)
    assert httpx.get(f"{gw}/ipfs/{cbor}").status_code == 404
    worker = httpx.get(f"{gw}/ipfs/{added}", headers={"Service-Worker": "script"})
    assert worker.status_code == 400


def test_no_filesystem_path_in_any_response(
    node: EmbeddedNode, store: Blockstore, content: CID
) -> None:
    gw = node.gateway_url
    deep = dag.resolve(store, content, "deep/a")
    store.delete(deep)  # a block on the path is gone
    responses = [
        httpx.get(f"{gw}/ipfs/{UNKNOWN}"),
        httpx.get(f"{gw}/ipfs/{UNKNOWN}", params={"format": "raw"}),
        httpx.get(f"{gw}/ipfs/{UNKNOWN}", params={"format": "car"}),
        httpx.get(f"{gw}/ipfs/{content}/deep/a/b/c.txt"),
        httpx.get(f"{gw}/ipfs/{content}/deep/a/b/c.txt", params={"format": "car"}),
        httpx.get(f"{gw}/ipfs/{deep}", params={"format": "raw"}),
    ]
    for response in responses:
        assert response.status_code == 404, response.url
        shown = response.text + json.dumps(dict(response.headers))
        assert str(store.root) not in shown
        assert str(store.root.parent) not in shown


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


def test_caching_headers_and_if_none_match(node: EmbeddedNode, added: CID) -> None:
    gw = node.gateway_url
    urls = [
        f"{gw}/ipfs/{added}/image.png",
        f"{gw}/ipfs/{added}/notes/",  # a generated listing
        f"{gw}/ipfs/{added}/site/",  # index.html
        f"{gw}/ipfs/{added}?format=raw",
        f"{gw}/ipfs/{added}?format=car",
        f"{gw}/ipfs/{added}/notes?format=car&dag-scope=entity",
        f"{gw}/ipfs/{added}/image.png?format=car&entity-bytes=0:9",
        f"{gw}/ipfs/{added}?format=tar",
    ]
    etags = set()
    for url in urls:
        first = httpx.get(url)
        assert first.status_code == 200, url
        assert first.headers["cache-control"] == "public, max-age=29030400, immutable"
        assert "Accept" in first.headers["vary"]
        etag = first.headers["etag"]
        assert httpx.get(url).headers["etag"] == etag  # stable
        again = httpx.get(url, headers={"If-None-Match": f'"other", {etag}'})
        assert (again.status_code, again.content) == (304, b""), url
        assert again.headers["etag"] == etag
        assert httpx.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
        etags.add(etag)
    assert len(etags) == len(urls)  # every variant has its own Etag
    assert httpx.get(urls[0], headers={"If-None-Match": "*"}).status_code == 304


def test_head_answers_every_response_type(node: EmbeddedNode, added: CID) -> None:
    gw = node.gateway_url
    for path, kind in [
        ("/image.png", "image/png"),
        ("/notes/", "text/html"),
        ("?format=raw", "application/vnd.ipld.raw"),
        ("?format=car", "application/vnd.ipld.car"),
        ("?format=tar", "application/x-tar"),
    ]:
        get = httpx.get(f"{gw}/ipfs/{added}{path}")
        head = httpx.head(f"{gw}/ipfs/{added}{path}")
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-type"].startswith(kind)
        assert head.headers["etag"] == get.headers["etag"]
        if "content-length" in head.headers:
            assert int(head.headers["content-length"]) == len(get.content), path
    assert httpx.head(f"{gw}/ipfs/{UNKNOWN}").status_code == 404


def test_format_and_accept_negotiation(node: EmbeddedNode, store: Blockstore, added: CID) -> None:
    gw = node.gateway_url
    raw = httpx.get(f"{gw}/ipfs/{added}", params={"format": "raw"})
    assert raw.headers["content-type"] == "application/vnd.ipld.raw"
    added.check(raw.content)
    assert "content-location" not in raw.headers
    # format= wins over Accept.
    both = httpx.get(
        f"{gw}/ipfs/{added}",
        params={"format": "raw"},
        headers={"Accept": "application/vnd.ipld.car"},
    )
    assert both.content == raw.content
    by_accept = httpx.get(f"{gw}/ipfs/{added}", headers={"Accept": "application/vnd.ipld.raw"})
    assert by_accept.content == raw.content
    assert by_accept.headers["content-location"] == f"/ipfs/{added}?format=raw"
    preferred = httpx.get(
        f"{gw}/ipfs/{added}",
        headers={"Accept": "application/vnd.ipld.raw;q=0.5, application/vnd.ipld.car"},
    )
    assert preferred.headers["content-type"].startswith("application/vnd.ipld.car")
    # Generic clients send application/json: they still get the file.
    generic = httpx.get(
        f"{gw}/ipfs/{added}/notes/readme.txt", headers={"Accept": "application/json, */*"}
    )
    assert generic.content == b"hello gateway\n"

    # A block under a path is the block at the end of the path.
    image = dag.resolve(store, added, "image.png")
    block = httpx.get(f"{gw}/ipfs/{added}/image.png", params={"format": "raw"})
    assert block.content == store.get(image)
    assert block.headers["x-ipfs-roots"] == f"{added},{image}"
    assert block.headers["etag"] == f'"{image}.raw"'


def test_trustless_response_headers(node: EmbeddedNode, added: CID) -> None:
    gw = node.gateway_url
    raw = httpx.get(f"{gw}/ipfs/{added}", params={"format": "raw"})
    assert raw.headers["content-disposition"] == f'attachment; filename="{added}.bin"'
    assert raw.headers["x-content-type-options"] == "nosniff"
    response, roots, _ = car(gw, f"/ipfs/{added}")
    assert response.headers["content-type"] == (
        "application/vnd.ipld.car; version=1; order=dfs; dups=n"
    )
    assert response.headers["content-disposition"] == f'attachment; filename="{added}.car"'
    assert response.headers["x-content-type-options"] == "nosniff"
    assert roots == [added]
    named = httpx.get(f"{gw}/ipfs/{added}", params={"format": "car", "filename": "out.car"})
    assert named.headers["content-disposition"] == 'attachment; filename="out.car"'


def test_identity_cid_probe(node: EmbeddedNode) -> None:
    gw = node.gateway_url
    raw = httpx.get(f"{gw}/ipfs/bafkqaaa", params={"format": "raw"})
    assert (raw.status_code, raw.content) == (200, b"")
    assert httpx.head(f"{gw}/ipfs/bafkqaaa", params={"format": "raw"}).status_code == 200
    by_accept = httpx.get(f"{gw}/ipfs/bafkqaaa", headers={"Accept": "application/vnd.ipld.raw"})
    assert (by_accept.status_code, by_accept.content) == (200, b"")
    _, roots, blocks = car(gw, "/ipfs/bafkqaaa")
    assert (roots, blocks) == ([CID.parse("bafkqaaa")], [])  # identity blocks are never sent
    assert httpx.head(f"{gw}/ipfs/bafkqaaa", params={"format": "car"}).status_code == 200
    assert httpx.get(f"{gw}/ipfs/bafkqaaa").status_code == 200


def test_only_if_cached(node: EmbeddedNode, added: CID) -> None:
    gw = node.gateway_url
    probe = {"Cache-Control": "only-if-cached"}
    assert httpx.head(f"{gw}/ipfs/{UNKNOWN}", headers=probe).status_code == 412
    assert httpx.head(f"{gw}/ipfs/{added}/image.png", headers=probe).status_code == 200


# --- trustless CARs ----------------------------------------------------------------------------
def test_car_whole_dag(node: EmbeddedNode, store: Blockstore, added: CID) -> None:
    _, roots, blocks = car(node.gateway_url, f"/ipfs/{added}")
    assert roots == [added]
    assert blocks == [cid for cid, _ in store.walk(added)]  # depth first
    _, _, one = car(node.gateway_url, f"/ipfs/{added}", **{"dag-scope": "block"})
    assert one == [added]


def test_car_of_a_sub_path_proves_the_path(
    node: EmbeddedNode, store: Blockstore, content: CID
) -> None:
    gw = node.gateway_url
    response, roots, blocks = car(gw, f"/ipfs/{content}/deep/a/b/c.txt")
    trace = dag.trace_path(store, content, "deep/a/b/c.txt")
    assert roots == [trace.target]
    assert blocks == [cid for cid, _ in trace.blocks] + [trace.target]
    assert len(blocks) == 5  # root, deep, a, b, then the file
    # A client holding only the CAR can walk the path from the root CID it asked for.
    _, car_blocks = read_car(response.content)
    source = CarBlocks(car_blocks)
    assert dag.resolve(source, content, "deep/a/b/c.txt") == trace.target
    assert b"".join(dag.read_file(source, trace.target)) == b"nested"


def test_car_through_a_sharded_directory(
    node: EmbeddedNode, store: Blockstore, sharded: CID
) -> None:
    gw = node.gateway_url
    shards = shards_of(store, sharded)
    assert len(shards) > 2  # the HAMT has sub-shards
    for name in ("file-000.txt", "file-123.txt", "file-299.txt"):
        response, _, blocks = car(gw, f"/ipfs/{sharded}/{name}")
        source = CarBlocks(read_car(response.content)[1])
        assert b"".join(dag.read_file(source, dag.resolve(source, sharded, name))) == (
            f"entry {int(name[5:8])}".encode()
        )
        assert len(set(blocks) & shards) < len(shards)  # only the shards on the way
    # The directory as an entity: every shard, none of the entries.
    _, _, entity = car(gw, f"/ipfs/{sharded}", **{"dag-scope": "entity"})
    assert set(entity) == shards
    assert len(entity) == len(shards)
    listing = CarBlocks(
        read_car(httpx.get(f"{gw}/ipfs/{sharded}?format=car&dag-scope=entity").content)[1]
    )
    assert len(dag.list_directory(listing, sharded)) == 300


def test_car_dag_scope_entity(node: EmbeddedNode, store: Blockstore, content: CID) -> None:
    gw = node.gateway_url
    data = dag.resolve(store, content, "data")
    _, _, directory = car(gw, f"/ipfs/{content}/data", **{"dag-scope": "entity"})
    assert directory == [content, data]  # the path, then the directory node alone
    big = dag.resolve(store, content, "data/big.bin")
    _, _, file = car(gw, f"/ipfs/{content}/data/big.bin", **{"dag-scope": "entity"})
    assert file[2:] == [cid for cid, _ in store.walk(big)]
    _, _, block = car(gw, f"/ipfs/{content}/data/big.bin", **{"dag-scope": "block"})
    assert block == [content, data, big]


@pytest.mark.parametrize(
    ("spec", "first", "last"),
    [
        ("0:1023", 0, 1023),
        ("-1024:*", len(BIG) - 1024, len(BIG) - 1),
        (f"{CHUNK - 10}:{CHUNK + 10}", CHUNK - 10, CHUNK + 10),  # across a chunk boundary
        (f"{5 * CHUNK}:-{CHUNK}", 5 * CHUNK, len(BIG) - CHUNK - 1),
        ("0:99999999999", 0, len(BIG) - 1),  # past the end: clamped
    ],
)
def test_car_entity_bytes_holds_only_the_range(
    node: EmbeddedNode, store: Blockstore, content: CID, spec: str, first: int, last: int
) -> None:
    big = dag.resolve(store, content, "data/big.bin")
    response, _, blocks = car(
        node.gateway_url, f"/ipfs/{content}/data/big.bin", **{"entity-bytes": spec}
    )
    leaves = [cid for cid in blocks if cid.codec == RAW]
    assert len(leaves) == last // CHUNK - first // CHUNK + 1
    assert blocks[2] == big
    source = CarBlocks(read_car(response.content)[1])
    assert b"".join(dag.read_file(source, big, first, last - first + 1)) == BIG[first : last + 1]


def test_car_entity_bytes_edges(node: EmbeddedNode, store: Blockstore, content: CID) -> None:
    gw = node.gateway_url
    big = dag.resolve(store, content, "data/big.bin")
    outside = httpx.get(
        f"{gw}/ipfs/{content}/data/big.bin",
        params={"format": "car", "entity-bytes": f"{len(BIG)}:*"},
    )
    assert outside.status_code == 400
    assert str(len(BIG)) in outside.text
    _, _, empty = car(gw, f"/ipfs/{big}", **{"entity-bytes": "10:-99999999"})  # no bytes
    assert empty == [big]
    data = dag.resolve(store, content, "data")
    _, _, ignored = car(gw, f"/ipfs/{data}", **{"entity-bytes": "0:10"})  # not a file
    assert ignored == [data]


def test_car_dups(node: EmbeddedNode, store: Blockstore, content: CID) -> None:
    gw = node.gateway_url
    zeros = dag.resolve(store, content, "data/zeros.bin")
    leaf = CID.from_data(bytes(CHUNK), RAW)
    once, _, blocks = car(gw, f"/ipfs/{zeros}")
    assert blocks == [zeros, leaf]
    assert once.headers["content-type"].endswith("dups=n")
    for accept, params in [
        ({"Accept": "application/vnd.ipld.car; version=1; order=dfs; dups=y"}, {}),
        ({}, {"car-dups": "y"}),
    ]:
        many = httpx.get(f"{gw}/ipfs/{zeros}", params={"format": "car", **params}, headers=accept)
        assert many.headers["content-type"] == (
            "application/vnd.ipld.car; version=1; order=dfs; dups=y"
        )
        assert [cid for cid, _ in read_car(many.content)[1]] == [zeros] + [leaf] * 4
    # The whole tree with dups=n: every block once.
    _, _, tree = car(gw, f"/ipfs/{content}")
    assert len(tree) == len(set(tree))
    assert set(tree) == {cid for cid, _ in store.walk(content)}


def test_tar(node: EmbeddedNode, content: CID) -> None:
    response = httpx.get(f"{node.gateway_url}/ipfs/{content}/data", params={"format": "tar"})
    assert response.status_code == 200
    assert response.headers["content-disposition"] == 'attachment; filename="data.tar"'
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        names = archive.getnames()
        assert names == ["data", "data/big.bin", "data/zeros.bin"]
        big = archive.extractfile("data/big.bin")
        assert big is not None
        assert big.read() == BIG
    unicode = httpx.get(f"{node.gateway_url}/ipfs/{content}", params={"format": "tar"})
    with tarfile.open(fileobj=io.BytesIO(unicode.content)) as archive:
        assert f"{content}/{UNICODE_DIR}/{UNICODE_FILE}" in archive.getnames()
        assert f"{content}/empty" in archive.getnames()


# --- independent clients -----------------------------------------------------------------------
def test_js_car_reader_verifies_every_car(
    node: EmbeddedNode, store: Blockstore, content: CID, sharded: CID
) -> None:
    gw = node.gateway_url
    cases = [
        (f"/ipfs/{content}", {}),
        (f"/ipfs/{content}/deep/a/b/c.txt", {}),
        (f"/ipfs/{content}/data", {"dag-scope": "entity"}),
        (f"/ipfs/{content}/data/big.bin", {"entity-bytes": f"{CHUNK}:{CHUNK + 99}"}),
        (f"/ipfs/{content}/{UNICODE_DIR}", {"dag-scope": "block"}),
        (f"/ipfs/{sharded}/file-123.txt", {}),
        (f"/ipfs/{sharded}", {"dag-scope": "entity"}),
        ("/ipfs/bafkqaaa", {}),
    ]
    urls = [str(httpx.URL(f"{gw}{path}", params={"format": "car", **p})) for path, p in cases]
    results = json.loads(run_js("gateway-car.mjs", *urls))
    for (path, _), result in zip(cases, results, strict=True):
        assert result["contentType"] == "application/vnd.ipld.car; version=1; order=dfs; dups=n"
        cid_text, _, subpath = path.removeprefix("/ipfs/").partition("/")
        trace = dag.trace_path(store, CID.parse(cid_text), subpath)
        assert result["roots"] == [str(trace.target)]
        present = [block["cid"] for block in result["blocks"]]
        # Every logical root of the path is present, and linked from the one before it.
        links = {block["cid"]: block["links"] for block in result["blocks"]}
        for parent, child in zip(trace.roots, trace.roots[1:], strict=False):
            assert _reachable(links, str(parent), str(child)), (path, parent, child)
        expected = [str(cid) for cid in trace.roots if cid.inline_data() is None]
        assert set(expected) <= set(present), path
        assert len(present) == len(set(present))
    assert len(results[3]["blocks"]) == 4  # content, data, big.bin, one leaf


def _reachable(links: dict[str, list[str]], start: str, goal: str) -> bool:
    """Whether ``goal`` is linked from ``start`` through blocks present in the CAR."""
    todo, seen = [start], set()
    while todo:
        cid = todo.pop()
        if cid == goal:
            return True
        if cid in links and cid not in seen:
            seen.add(cid)
            todo.extend(links[cid])
    return False


@pytest.mark.parametrize("sub", ["", "/data"])
def test_ipfs_car_unpack_restores_the_tree(
    node: EmbeddedNode, content: CID, tmp_path: Path, sub: str
) -> None:
    response = httpx.get(f"{node.gateway_url}/ipfs/{content}{sub}", params={"format": "car"})
    (tmp_path / "out.car").write_bytes(response.content)
    run_js(
        "node_modules/ipfs-car/bin.js",
        "unpack",
        str(tmp_path / "out.car"),
        "--output",
        str(tmp_path / "unpacked"),
    )
    original = tmp_path / "content" / sub.lstrip("/")
    restored = tmp_path / "unpacked"
    listed = sorted(str(p.relative_to(original)) for p in original.rglob("*"))
    assert sorted(str(p.relative_to(restored)) for p in restored.rglob("*")) == listed
    for path in original.rglob("*"):
        if path.is_file():
            assert (restored / path.relative_to(original)).read_bytes() == path.read_bytes()
    if not sub:
        assert (restored / "empty").is_dir()
        assert (restored / UNICODE_DIR / UNICODE_FILE).read_text() == "содержимое"


def test_verified_fetch_through_the_gateway(
    node: EmbeddedNode, store: Blockstore, added: CID
) -> None:
    notes = dag.resolve(store, added, "notes")
    paths = {
        f"ipfs://{dag.resolve(store, added, 'image.png')}": PNG,
        f"ipfs://{added}/image.png": PNG,
        f"ipfs://{added}/notes/readme.txt": b"hello gateway\n",
        f"ipfs://{added}/notes/%C3%BCn%C3%AF%20c%C3%B8d%C3%A9.txt": b"unicode name",
        f"ipfs://{added}/site/": b"<h1>home</h1>",  # its index.html
        f"ipfs://{added}/notes/": store.get(notes),  # a directory without one: its node
    }
    results = json.loads(run_js("gateway-verified-fetch.mjs", node.gateway_url, *paths))
    for result, (path, body) in zip(results, paths.items(), strict=True):
        assert result["path"] == path
        assert result["status"] == 200, result
        assert result["sha256"] == hashlib.sha256(body).hexdigest(), path
