"""The embedded node's Kubo RPC API and Pinning Service API over real HTTP, as clients use them."""

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
from lilypad.storage.cid import CID
from lilypad.storage.client import KuboClient, PinningServiceClient, PinStatus
from lilypad.storage.importer import ImportProfile
from lilypad.storage.node import EmbeddedNode
from tests.storage.conftest import NODE_TOKEN, PNG, UNKNOWN


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
