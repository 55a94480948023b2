"""The embedded node over real HTTP: Kubo RPC and gateway, as kubo clients use them."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import httpx
import pytest

from lilypad.errors import BlockNotFound, StorageError
from lilypad.storage import compute_cid
from lilypad.storage.blockstore import Blockstore
from lilypad.storage.car import read_car
from lilypad.storage.cid import CID
from lilypad.storage.client import KuboClient, PinningServiceClient, PinStatus
from lilypad.storage.importer import NETWORK_PROFILE, ImportProfile, add_path
from lilypad.storage.node import EmbeddedNode
from tests.storage.conftest import NODE_TOKEN, write_tree

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2000  # > one 256 KiB chunk
UNKNOWN = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(
        tmp_path / "outputs",
        {
            "image.png": PNG,
            "notes/readme.txt": b"hello gateway\n",
            "notes/ünï cødé.txt": b"unicode name",
            "site/index.html": b"<h1>home</h1>",
            "empty": None,
        },
    )


@pytest.fixture
def added(node: EmbeddedNode, tree: Path) -> CID:
    """``tree`` added through the node's Kubo RPC with the network profile."""
    with KuboClient(node.api_url) as client:
        entries = client.add(tree, NETWORK_PROFILE)
    return CID.parse(entries[-1]["Hash"])


def test_rpc_add_gives_the_same_cids_as_the_local_importer(
    node: EmbeddedNode, tree: Path, added: CID
) -> None:
    assert added == compute_cid(tree)
    with KuboClient(node.api_url) as client:
        entries = client.add(tree, ImportProfile.kubo(0), only_hash=True)
        pins = client.pin_ls()
    names = [e["Name"] for e in entries]
    assert names[-1] == "outputs"
    assert "outputs/notes/ünï cødé.txt" in names
    assert entries[-1]["Hash"] == str(compute_cid(tree, ImportProfile.kubo(0)))
    assert CID.parse(entries[-1]["Hash"]) not in pins  # only-hash stores nothing


def test_rpc_add_kubo_defaults_without_parameters(node: EmbeddedNode, tmp_path: Path) -> None:
    # A client that sends no options gets kubo's defaults: CIDv0, no raw leaves.
    response = httpx.post(
        f"{node.api_url}/api/v0/add",
        files=[("file", ("hello.txt", b"hello world", "application/octet-stream"))],
    )
    assert response.status_code == 200
    entry = json.loads(response.text.splitlines()[-1])
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello world")
    assert entry == {
        "Name": "hello.txt",
        "Hash": str(compute_cid(path, ImportProfile.kubo(0))),
        "Size": entry["Size"],
    }
    assert entry["Hash"].startswith("Qm")


def test_rpc_is_post_only_as_kubo(node: EmbeddedNode) -> None:
    assert httpx.get(f"{node.api_url}/api/v0/version").status_code == 405
    response = httpx.post(f"{node.api_url}/api/v0/version")
    assert response.status_code == 200
    assert "Version" in response.json()


def test_rpc_cat_block_get_and_tar_get(node: EmbeddedNode, added: CID) -> None:
    api = node.api_url
    text = httpx.post(f"{api}/api/v0/cat", params={"arg": f"/ipfs/{added}/notes/readme.txt"})
    assert text.content == b"hello gateway\n"
    part = httpx.post(
        f"{api}/api/v0/cat", params={"arg": f"{added}/image.png", "offset": 8, "length": 3}
    )
    assert part.content == PNG[8:11]

    block = httpx.post(f"{api}/api/v0/block/get", params={"arg": str(added)}).content
    assert hashlib.sha256(block).digest() == added.multihash[2:]

    tar_bytes = httpx.post(f"{api}/api/v0/get", params={"arg": str(added)}).content
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
        names = set(archive.getnames())
        member = archive.extractfile(f"{added}/image.png")
        assert member is not None
        assert member.read() == PNG
    assert f"{added}/empty" in names


def test_rpc_pins(node: EmbeddedNode, added: CID) -> None:
    with KuboClient(node.api_url) as client:
        assert client.pin_ls() == {added: "recursive"}  # add pins by default, as kubo
        client.pin_rm(added)
        assert client.pin_ls() == {}
        with pytest.raises(StorageError, match="not pinned"):
            client.pin_rm(added)
        client.pin_add(added)
        assert added in client.pin_ls()


def test_rpc_errors_are_clear(node: EmbeddedNode) -> None:
    with KuboClient(node.api_url, timeout=2) as client, pytest.raises(BlockNotFound, match=UNKNOWN):
        client.get(CID.parse(UNKNOWN))
    bad = httpx.post(f"{node.api_url}/api/v0/cat", params={"arg": "not-a-cid"})
    assert bad.status_code == 400
    assert "not a valid CID" in bad.json()["Message"]
    with KuboClient(node.api_url) as client, pytest.raises(BlockNotFound):
        client.pin_add(CID.parse(UNKNOWN))


def test_rpc_refuses_dot_dot_in_multipart_names(node: EmbeddedNode) -> None:
    response = httpx.post(
        f"{node.api_url}/api/v0/add",
        files=[("file", ("..%2Fescape.txt", b"x", "application/octet-stream"))],
    )
    assert response.status_code == 400
    assert "'..'" in response.json()["Message"]


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


def test_pinning_service_api(node: EmbeddedNode, added: CID) -> None:
    with PinningServiceClient(node.api_url, NODE_TOKEN) as service:
        _check_pinning_service(service, added)
    with (
        PinningServiceClient(node.api_url, "wrong-token") as intruder,
        pytest.raises(StorageError, match="refused the access token"),
    ):
        intruder.list()


def _check_pinning_service(service: PinningServiceClient, added: CID) -> None:
    service.remove(str(added))
    assert service.list() == []
    request = service.add(added, name="outputs")
    assert request.status is PinStatus.PINNED
    assert service.wait(request.requestid, timeout=5).pin.cid == str(added)
    assert [r.pin.cid for r in service.list(cid=added)] == [str(added)]
    failed = service.add(UNKNOWN)
    assert failed.status is PinStatus.FAILED


def test_rpc_add_wrap_with_directory_and_quieter(node: EmbeddedNode, tmp_path: Path) -> None:
    (tmp_path / "wrapped").mkdir()
    (tmp_path / "wrapped" / "a.txt").write_bytes(b"a")
    files = [("file", ("a.txt", b"a", "application/octet-stream"))]
    params = {"cid-version": "1", "wrap-with-directory": "true", "quieter": "true"}
    response = httpx.post(f"{node.api_url}/api/v0/add", params=params, files=files)
    lines = response.text.splitlines()
    assert len(lines) == 1  # quieter: only the root
    assert json.loads(lines[0])["Hash"] == str(compute_cid(tmp_path / "wrapped"))
