"""The embedded node's Kubo RPC API and Pinning Service API over real HTTP, as clients use them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import tarfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from lilypad.errors import BlockNotFound, InputError, StorageError
from lilypad.storage import compute_cid
from lilypad.storage.blockstore import Blockstore
from lilypad.storage.car import car_stream
from lilypad.storage.cid import CID
from lilypad.storage.client import KuboClient, PinningServiceClient, PinStatus
from lilypad.storage.importer import ImportProfile
from lilypad.storage.node import EmbeddedNode
from lilypad.storage.rpc import KUBO_VERSION
from tests.storage.conftest import NODE_TOKEN, PNG, UNKNOWN, run_js, write_tree

BOUNDARY = "lilypad-test-boundary"


def _part(filename: str | None, content: bytes, kind: str = "application/octet-stream") -> bytes:
    name = "" if filename is None else f'; filename="{filename}"'
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"{name}\r\n'
    return f"{head}Content-Type: {kind}\r\n\r\n".encode() + content + b"\r\n"


def _body(*parts: bytes, close: bool = True) -> bytes:
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def _post(node: EmbeddedNode, command: str, body: Any = b"", **params: Any) -> httpx.Response:
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    return httpx.post(
        f"{node.api_url}/api/v0/{command}", params=params, content=body, headers=headers
    )


def _kubo_error(response: httpx.Response, status: int) -> str:
    """The Message of a kubo-shaped error with this status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["Type"] == "error"
    assert body["Code"] == 0
    message: str = body["Message"]
    return message


def _lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def _file_cid(tmp_path: Path, data: bytes, profile: ImportProfile) -> CID:
    path = tmp_path / "cid-of"
    path.write_bytes(data)
    return compute_cid(path, profile)


# --- add ------------------------------------------------------------------------------------------


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
    assert "outputs/empty" in names  # a directory part with nothing in it
    assert entries[-1]["Hash"] == str(compute_cid(tree, ImportProfile.kubo(0)))
    assert CID.parse(entries[-1]["Hash"]) not in pins  # only-hash stores nothing


def test_rpc_add_kubo_defaults_without_parameters(node: EmbeddedNode, tmp_path: Path) -> None:
    # A client that sends no options gets kubo's defaults: CIDv0, no raw leaves.
    response = httpx.post(
        f"{node.api_url}/api/v0/add",
        files=[("file", ("hello.txt", b"hello world", "application/octet-stream"))],
    )
    entry = _lines(response)[-1]
    assert entry == {
        "Name": "hello.txt",
        "Hash": str(_file_cid(tmp_path, b"hello world", ImportProfile.kubo(0))),
        "Size": entry["Size"],
    }
    assert entry["Hash"].startswith("Qm")


@pytest.mark.parametrize("filename", [None, ""], ids=["no-filename", "empty-filename"])
def test_rpc_add_names_a_part_without_a_file_name_by_its_cid(
    node: EmbeddedNode, tmp_path: Path, filename: str | None
) -> None:
    # kubo-rpc-client's add(bytes) sends such a part; kubo names the entry by its CID.
    lines = _lines(_post(node, "add", _body(_part(filename, b"just bytes"))))
    expected = str(_file_cid(tmp_path, b"just bytes", ImportProfile.kubo(0)))
    assert lines == [{"Name": expected, "Hash": expected, "Size": lines[0]["Size"]}]
    assert CID.parse(expected) in node.store.pins()


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"trickle": "true"}, "trickle"),
        ({"inline": "true"}, "inline"),
        ({"hash": "sha2-512"}, "sha2-512"),
        ({"hash": "blake2b-256"}, "blake2b-256"),
        ({"chunker": "rabin-262144-524288-1048576"}, "rabin"),
        ({"chunker": "buzhash"}, "buzhash"),
        ({"chunker": "size-0"}, "size-0"),
        ({"chunker": "size-2097152"}, "size-2097152"),
        ({"nocopy": "true"}, "nocopy"),
        ({"fscache": "true"}, "fscache"),
        ({"to-files": "/mfs/x"}, "to-files"),
        ({"preserve-mtime": "true"}, "preserve-mtime"),
        ({"cid-version": "abc"}, "cid-version"),
        ({"cid-version": "2"}, "cid-version"),
        ({"raw-leaves": "maybe"}, "raw-leaves"),
        ({"pin": "yes please"}, "pin"),
        ({"inline-limit": "lots"}, "inline-limit"),
    ],
)
def test_rpc_add_refuses_options_it_cannot_honour(
    node: EmbeddedNode, params: dict[str, str], named: str
) -> None:
    response = _post(node, "add", _body(_part("a.txt", b"a")), **params)
    message = _kubo_error(response, 400)
    assert named in message
    assert node.store.pins() == {}


def test_rpc_add_honours_the_options_it_supports(node: EmbeddedNode, tmp_path: Path) -> None:
    data = PNG  # several chunks at size-65536
    params = {
        "cid-version": "1",
        "raw-leaves": "false",
        "chunker": "size-65536",
        "hash": "sha2-256",
    }
    lines = _lines(_post(node, "add", _body(_part("big.png", data)), **params))
    profile = ImportProfile(cid_version=1, raw_leaves=False, chunk_size=65536)
    assert lines[-1]["Hash"] == str(_file_cid(tmp_path, data, profile))


def test_rpc_add_of_a_truncated_body_adds_and_pins_nothing(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    whole = _part("first.txt", b"complete part")
    cut = _part("second.txt", b"x" * 100_000)[:50_000]
    response = _post(node, "add", _body(whole, cut, close=False), **{"cid-version": "1"})
    assert "closing boundary" in _kubo_error(response, 400)
    first = _file_cid(tmp_path, b"complete part", ImportProfile())
    assert not node.store.has(first)
    assert node.store.pins() == {}


def test_rpc_add_refuses_a_part_whose_headers_never_end(node: EmbeddedNode) -> None:
    """A client cannot make the node buffer an endless header line (the body is streamed)."""
    huge = _part("a" * 200_000 + ".txt", b"data")
    message = _kubo_error(_post(node, "add", _body(huge)), 400)
    assert "header size exceeded" in message
    assert node.store.pins() == {}


def test_rpc_add_without_a_file_is_an_error(node: EmbeddedNode) -> None:
    message = _kubo_error(_post(node, "add", _body()), 400)
    assert "file argument 'path' is required" in message
    plain = httpx.post(f"{node.api_url}/api/v0/add", content=b"not multipart")
    assert "multipart/form-data" in _kubo_error(plain, 400)


def test_rpc_add_refuses_a_path_sent_twice(node: EmbeddedNode) -> None:
    body = _body(_part("dir%2Fa.txt", b"one"), _part("dir%2Fa.txt", b"two"))
    message = _kubo_error(_post(node, "add", body), 400)
    assert "'dir/a.txt' twice" in message
    assert node.store.pins() == {}


def test_rpc_add_keeps_directory_symlink_and_escaped_name_parts(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    body = _body(
        _part("top", b"", "application/x-directory"),
        _part("top%2Fsub", b"", "application/x-directory"),
        _part("top%2Fsub%2Fa%20b%25.txt", b"file in sub"),
        _part("top%2Flink", b"sub/a b%.txt", "application/symlink"),
    )
    lines = _lines(_post(node, "add", body, **{"cid-version": "1"}))
    root = tmp_path / "top"
    write_tree(root, {"sub/a b%.txt": b"file in sub"})
    (root / "link").symlink_to("sub/a b%.txt")
    assert [line["Name"] for line in lines] == ["top/sub/a b%.txt", "top/sub", "top/link", "top"]
    assert lines[-1]["Hash"] == str(compute_cid(root))


def test_rpc_add_wrap_with_directory_quieter_and_progress(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    (tmp_path / "wrapped").mkdir()
    (tmp_path / "wrapped" / "a.txt").write_bytes(b"a")
    files = [("file", ("a.txt", b"a", "application/octet-stream"))]
    params = {"cid-version": "1", "wrap-with-directory": "true", "quieter": "true"}
    response = httpx.post(f"{node.api_url}/api/v0/add", params=params, files=files)
    lines = _lines(response)
    assert len(lines) == 1  # quieter: only the root
    assert lines[0]["Hash"] == str(compute_cid(tmp_path / "wrapped"))

    progress = _lines(_post(node, "add", _body(_part("p.bin", PNG)), progress="true"))
    assert progress[0] == {"Name": "p.bin", "Bytes": len(PNG)}
    assert progress[1]["Name"] == "p.bin"
    assert _lines(_post(node, "add", _body(_part("s.bin", b"s")), silent="true")) == []


def test_rpc_add_imports_file_parts_while_the_body_arrives(node: EmbeddedNode) -> None:
    # The first part's blocks reach the repository's pack file before the client has sent the
    # rest of the body: the upload is streamed into the importer, not spooled first.
    packs = node.store.root / "packs"
    big = hashlib.shake_256(b"streamed").digest(3_000_000)  # distinct chunks: none deduplicated
    imported_early = threading.Event()

    def body() -> Iterator[bytes]:
        yield _part("first.bin", big)
        for _ in range(200):  # up to 10 s for the node to write what it has received
            if sum(p.stat().st_size for p in packs.iterdir()) >= 1024 * 1024:
                imported_early.set()
                break
            threading.Event().wait(0.05)
        yield _body(_part("second.bin", b"second"))

    lines = _lines(_post(node, "add", body()))
    assert imported_early.is_set()
    assert [line["Name"] for line in lines] == ["first.bin", "second.bin"]


def test_rpc_refuses_dot_dot_in_multipart_names(node: EmbeddedNode) -> None:
    response = httpx.post(
        f"{node.api_url}/api/v0/add",
        files=[("file", ("..%2Fescape.txt", b"x", "application/octet-stream"))],
    )
    assert "'..'" in _kubo_error(response, 400)


# --- errors and informational commands ------------------------------------------------------------


def test_rpc_errors_are_kubo_shaped(node: EmbeddedNode) -> None:
    api = node.api_url
    assert "POST" in _kubo_error(httpx.get(f"{api}/api/v0/version"), 405)
    assert "no-such-command" in _kubo_error(httpx.post(f"{api}/api/v0/no-such-command"), 404)
    assert "'arg' is required" in _kubo_error(httpx.post(f"{api}/api/v0/cat"), 400)
    bad_offset = httpx.post(f"{api}/api/v0/cat", params={"arg": UNKNOWN, "offset": "x"})
    assert "'offset'" in _kubo_error(bad_offset, 400)
    bad = httpx.post(f"{api}/api/v0/cat", params={"arg": "not-a-cid"})
    assert "not a valid CID" in _kubo_error(bad, 400)
    with KuboClient(api, timeout=2) as client, pytest.raises(BlockNotFound, match=UNKNOWN):
        client.get(CID.parse(UNKNOWN))
    with KuboClient(api) as client, pytest.raises(BlockNotFound):
        client.pin_add(CID.parse(UNKNOWN))


@pytest.mark.parametrize("command", ["cat", "get"])
def test_rpc_cat_and_get_fail_before_streaming(
    node: EmbeddedNode, added: CID, command: str
) -> None:
    missing = httpx.post(f"{node.api_url}/api/v0/{command}", params={"arg": UNKNOWN})
    assert "block was not found locally (offline)" in _kubo_error(missing, 500)
    # A DAG with a block gone: refused up front, not cut off halfway through the stream.
    image = _resolve_link(node.store, added, "image.png")
    leaf = _first_link(node.store, image)
    node.store.delete(leaf)
    broken = httpx.post(f"{node.api_url}/api/v0/{command}", params={"arg": f"{added}/image.png"})
    assert str(leaf) in _kubo_error(broken, 500)


def test_rpc_cat_of_a_directory_is_an_error(node: EmbeddedNode, added: CID) -> None:
    response = httpx.post(f"{node.api_url}/api/v0/cat", params={"arg": str(added)})
    assert "this dag node is a directory" in _kubo_error(response, 500)


def test_rpc_version_and_id(node: EmbeddedNode, store: Blockstore) -> None:
    version = httpx.post(f"{node.api_url}/api/v0/version").json()
    assert version["Version"] == KUBO_VERSION
    assert version["Repo"] == "16"
    assert "/" in version["System"]
    first = httpx.post(f"{node.api_url}/api/v0/id").json()
    assert first["ID"].startswith("12D3KooW")  # an Ed25519 peer ID
    assert set(first) >= {"ID", "PublicKey", "Addresses", "AgentVersion"}
    # The identity is kept in the repository: a node over the same store has the same peer ID.
    with EmbeddedNode(store, api="127.0.0.1:0", gateway="127.0.0.1:0") as again:
        assert httpx.post(f"{again.api_url}/api/v0/id").json()["ID"] == first["ID"]
    other = httpx.post(f"{node.api_url}/api/v0/id", params={"arg": "12D3KooWother"})
    assert "no peers" in _kubo_error(other, 500)


# --- reading --------------------------------------------------------------------------------------


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
        assert archive.extractfile(f"{added}/notes/ünï cødé.txt").read() == b"unicode name"  # type: ignore[union-attr]
    assert f"{added}/empty" in names


def test_rpc_get_names_the_entry_by_the_last_path_segment(node: EmbeddedNode, added: CID) -> None:
    api = node.api_url
    tar_bytes = httpx.post(f"{api}/api/v0/get", params={"arg": f"/ipfs/{added}/notes"}).content
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
        assert sorted(archive.getnames()) == ["notes", "notes/readme.txt", "notes/ünï cødé.txt"]

    params = {"arg": f"{added}/notes", "archive": "true", "compress": "true"}
    packed = httpx.post(f"{api}/api/v0/get", params=params).content
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(packed))) as archive:
        assert "notes/readme.txt" in archive.getnames()
    one = {"arg": f"{added}/image.png", "compress": "true", "compression-level": "9"}
    assert gzip.decompress(httpx.post(f"{api}/api/v0/get", params=one).content) == PNG
    bad = httpx.post(f"{api}/api/v0/get", params={**one, "compression-level": "12"})
    assert "between 1 and 9" in _kubo_error(bad, 400)
    folder = httpx.post(f"{api}/api/v0/get", params={"arg": str(added), "compress": "true"})
    assert "archive=true" in _kubo_error(folder, 400)


def test_rpc_ls_and_refs(node: EmbeddedNode, added: CID) -> None:
    api = node.api_url
    listing = httpx.post(f"{api}/api/v0/ls", params={"arg": str(added)}).json()
    (only,) = listing["Objects"]
    assert only["Hash"] == str(added)
    rows = {link["Name"]: link for link in only["Links"]}
    assert sorted(rows) == ["empty", "image.png", "notes", "site"]
    assert rows["image.png"]["Type"] == 2
    assert rows["image.png"]["Size"] == len(PNG)
    assert rows["notes"]["Type"] == 1
    image = _resolve_link(node.store, added, "image.png")
    assert rows["image.png"]["Hash"] == str(image)

    direct = _lines(httpx.post(f"{api}/api/v0/refs", params={"arg": str(added)}))
    assert {line["Ref"] for line in direct} == {link["Hash"] for link in only["Links"]}
    everything = _lines(
        httpx.post(f"{api}/api/v0/refs", params={"arg": str(added), "recursive": "true"})
    )
    walked = [cid for cid, _ in node.store.walk(added)][1:]  # every block below the root
    assert sorted(line["Ref"] for line in everything) == sorted(str(c) for c in walked)
    unique = _lines(
        httpx.post(
            f"{api}/api/v0/refs",
            params={"arg": str(added), "recursive": "true", "unique": "true"},
        )
    )
    assert sorted(line["Ref"] for line in unique) == sorted({str(c) for c in walked})


def test_rpc_dag_get_as_dag_json(node: EmbeddedNode, added: CID) -> None:
    body = httpx.post(f"{node.api_url}/api/v0/dag/get", params={"arg": str(added)}).json()
    assert body["Data"] == {"/": {"bytes": "CAE"}}  # UnixFS: a directory
    names = [link["Name"] for link in body["Links"]]
    assert names == ["empty", "image.png", "notes", "site"]
    assert body["Links"][1]["Hash"] == {"/": str(_resolve_link(node.store, added, "image.png"))}
    bad = httpx.post(
        f"{node.api_url}/api/v0/dag/get", params={"arg": str(added), "output-codec": "dag-cbor"}
    )
    assert "dag-json" in _kubo_error(bad, 400)


# --- blocks and CARs ------------------------------------------------------------------------------


def test_rpc_block_put_and_stat(node: EmbeddedNode) -> None:
    data = b"a raw block"
    lines = _lines(_post(node, "block/put", _body(_part("", data))))
    cid = CID.from_data(data, 0x55)
    assert lines == [{"Key": str(cid), "Size": len(data)}]
    assert node.store.get(cid) == data
    assert cid not in node.store.pins()  # block/put does not pin by default

    stat = httpx.post(f"{node.api_url}/api/v0/block/stat", params={"arg": str(cid)}).json()
    assert stat == {"Key": str(cid), "Size": len(data)}

    other = _lines(_post(node, "block/put", _body(_part("", data)), mhtype="sha2-512", pin="true"))
    strong = CID.parse(other[0]["Key"])
    assert strong.hash_code == 0x13
    assert node.store.get(strong) == data
    assert strong in node.store.pins()

    bad_pb = _post(node, "block/put", _body(_part("", b"\xff\xff")), **{"cid-codec": "dag-pb"})
    assert "not a valid dag-pb block" in _kubo_error(bad_pb, 400)
    short = _post(node, "block/put", _body(_part("", data)), mhlen="20")
    assert "mhlen=20" in _kubo_error(short, 400)
    codec = _post(node, "block/put", _body(_part("", data)), **{"cid-codec": "git-raw"})
    assert "git-raw" in _kubo_error(codec, 400)
    big = _post(node, "block/put", _body(_part("", b"x" * (1024 * 1024 + 1))))
    assert "allow-big-block" in _kubo_error(big, 400)


def _car_of(tmp_path: Path, files: dict[str, bytes | None]) -> tuple[CID, bytes]:
    """A CAR of a tree, written by another store."""
    source = Blockstore(tmp_path / "car-source")
    root = write_tree(tmp_path / "car-tree", files)
    from lilypad.storage.importer import add_path

    with source.writer() as sink:
        cid = add_path(root, sink).cid
    return cid, b"".join(car_stream(source, cid))


def test_rpc_dag_import_pins_roots_and_export_round_trips(
    node: EmbeddedNode, tmp_path: Path
) -> None:
    root, car = _car_of(tmp_path, {"a.txt": b"a" * 300_000, "b/c.txt": b"c"})
    lines = _lines(_post(node, "dag/import", _body(_part("x.car", car)), stats="true"))
    assert lines[0] == {"Root": {"Cid": {"/": str(root)}, "PinErrorMsg": ""}}
    assert lines[1]["Stats"]["BlockCount"] >= 4
    assert node.store.pins() == {root: "recursive"}
    exported = httpx.post(f"{node.api_url}/api/v0/dag/export", params={"arg": str(root)})
    assert exported.content == car


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_rpc_dag_import_of_a_bad_car_stores_nothing(
    node: EmbeddedNode, tmp_path: Path, damage: str
) -> None:
    root, car = _car_of(tmp_path, {"a.txt": b"a" * 300_000, "b.txt": b"b" * 1000})
    bad = car[:-200] + bytes([car[-200] ^ 1]) + car[-199:] if damage == "corrupt" else car[:-10]
    response = _post(node, "dag/import", _body(_part("bad.car", bad)))
    assert "nothing was imported" in _kubo_error(response, 400)
    assert node.store.pins() == {}
    assert not node.store.has(root)


def test_rpc_dag_import_without_pinning(node: EmbeddedNode, tmp_path: Path) -> None:
    root, car = _car_of(tmp_path, {"a.txt": b"a"})
    assert (
        _lines(_post(node, "dag/import", _body(_part("x.car", car)), **{"pin-roots": "false"}))
        == []
    )
    assert node.store.has(root)
    assert node.store.pins() == {}


def test_rpc_pin_verify(node: EmbeddedNode, added: CID) -> None:
    api = node.api_url
    assert _lines(httpx.post(f"{api}/api/v0/pin/verify")) == []  # only broken pins by default
    assert _lines(httpx.post(f"{api}/api/v0/pin/verify", params={"verbose": "true"})) == [
        {"Cid": str(added), "Ok": True}
    ]
    leaf = _first_link(node.store, _resolve_link(node.store, added, "image.png"))
    node.store.delete(leaf)
    (broken,) = _lines(httpx.post(f"{api}/api/v0/pin/verify"))
    assert broken["Cid"] == str(added)
    assert broken["Ok"] is False
    assert [bad["Cid"] for bad in broken["BadNodes"]] == [str(leaf)]


def test_rpc_pins(node: EmbeddedNode, added: CID) -> None:
    with KuboClient(node.api_url) as client:
        assert client.pin_ls() == {added: "recursive"}  # add pins by default, as kubo
        client.pin_rm(added)
        assert client.pin_ls() == {}
        with pytest.raises(StorageError, match="not pinned"):
            client.pin_rm(added)
        client.pin_add(added)
        assert added in client.pin_ls()
    bad_type = httpx.post(f"{node.api_url}/api/v0/pin/ls", params={"type": "sideways"})
    assert "sideways" in _kubo_error(bad_type, 400)


def _resolve_link(store: Blockstore, root: CID, name: str) -> CID:
    from lilypad.storage import dag

    return dag.resolve(store, root, name)


def _first_link(store: Blockstore, cid: CID) -> CID:
    from lilypad.storage.unixfs import decode_node

    return decode_node(store.get(cid)).links[0].cid


# --- Pinning Service API --------------------------------------------------------------------------


def test_pinning_service_api(node: EmbeddedNode, added: CID) -> None:
    with PinningServiceClient(node.api_url, NODE_TOKEN) as service:
        assert service.list() == []  # requests, not the node's own pins
        request = service.add(added, name="outputs")
        assert request.status is PinStatus.PINNED
        assert request.delegates  # the spec wants at least one
        assert service.wait(request.requestid, timeout=5).pin.cid == str(added)
        assert [r.pin.cid for r in service.list(cid=added)] == [str(added)]
        failed = service.add(UNKNOWN)
        assert failed.status is PinStatus.FAILED
        assert "not found" in failed.info["status_details"]
        assert [r.requestid for r in service.list(status=[PinStatus.FAILED])] == [failed.requestid]
        service.remove(request.requestid)
        assert service.list() == []
        assert added not in node.store.pins()
        with pytest.raises(StorageError, match="404"):
            service.status(request.requestid)
    with (
        PinningServiceClient(node.api_url, "wrong-token") as intruder,
        pytest.raises(StorageError, match="refused the access token"),
    ):
        intruder.list()


def test_pinning_service_filters_and_replace(node: EmbeddedNode, added: CID) -> None:
    pins = f"{node.api_url}/pins"
    auth = {"Authorization": f"Bearer {NODE_TOKEN}"}

    def get(**params: str) -> dict[str, Any]:
        response = httpx.get(pins, params=params, headers=auth)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    made = [
        httpx.post(
            pins, json={"cid": str(added), "name": name, "meta": {"job": name}}, headers=auth
        )
        for name in ("Alpha", "beta", "alphabet")
    ]
    assert [r.status_code for r in made] == [202, 202, 202]
    ids = [r.json()["requestid"] for r in made]
    assert get()["count"] == 3
    assert [r["requestid"] for r in get()["results"]] == ids[::-1]  # newest first
    page = get(limit="2")
    assert (page["count"], len(page["results"])) == (3, 2)
    assert [r["pin"]["name"] for r in get(name="alpha", match="iexact")["results"]] == ["Alpha"]
    assert get(name="alpha", match="exact")["count"] == 0
    assert get(name="alpha", match="partial")["count"] == 1
    assert get(name="alpha", match="ipartial")["count"] == 2
    assert [r["requestid"] for r in get(meta=json.dumps({"job": "beta"}))["results"]] == [ids[1]]
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert get(after=later)["count"] == 0
    assert get(before=later)["count"] == 3

    replaced = httpx.post(f"{pins}/{ids[0]}", json={"cid": str(added), "name": "new"}, headers=auth)
    assert replaced.status_code == 202
    assert replaced.json()["requestid"] != ids[0]
    assert httpx.get(f"{pins}/{ids[0]}", headers=auth).status_code == 404

    for bad in (
        httpx.post(pins, json={"cid": "not-a-cid"}, headers=auth),
        httpx.post(pins, content=b"{", headers=auth),
        httpx.get(pins, params={"limit": "0"}, headers=auth),
        httpx.get(pins, params={"status": "done"}, headers=auth),
        httpx.get(pins, params={"match": "fuzzy"}, headers=auth),
        httpx.get(pins, params={"before": "yesterday"}, headers=auth),
    ):
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["reason"] == "BAD_REQUEST"
    missing = httpx.delete(f"{pins}/no-such-request", headers=auth)
    assert missing.status_code == 404
    assert missing.json()["error"]["reason"] == "NOT_FOUND"


# --- a real client --------------------------------------------------------------------------------


def test_kubo_rpc_client_drives_the_node(node: EmbeddedNode, tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "site", {"index.html": b"<p>hi</p>", "css/a.css": b"p{}"})
    expected = {
        "bytes": str(_file_cid(tmp_path, b"hello from js", ImportProfile.kubo(0))),
        "file": str(_file_cid(tmp_path, b"file with a path", ImportProfile.kubo(0))),
        "dir": str(compute_cid(tree, ImportProfile.kubo(0))),
        "dir_v1": str(compute_cid(tree, ImportProfile.kubo(1))),
    }
    root, car = _car_of(tmp_path, {"x.txt": b"from a car"})
    (tmp_path / "in.car").write_bytes(car)
    out = run_js(
        "rpc-client.mjs",
        node.api_url,
        json.dumps(expected),
        str(tmp_path / "in.car"),
        str(root),
        timeout=60,
    )
    assert out.strip().splitlines()[-1] == "ok"


def test_a_node_that_cannot_start_leaves_no_port_bound(store: Blockstore) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    api_port = free.getsockname()[1]
    free.close()
    with pytest.raises(InputError, match="gateway address"):
        EmbeddedNode(store, api=f"127.0.0.1:{api_port}", gateway="not an address")
    busy = f"127.0.0.1:{taken.getsockname()[1]}"
    with pytest.raises(StorageError, match="cannot listen for the gateway"):
        EmbeddedNode(store, api=f"127.0.0.1:{api_port}", gateway=busy)
    again = socket.socket()  # no SO_REUSEADDR: a socket still listening there would refuse this
    again.bind(("127.0.0.1", api_port))
    again.listen(1)
    again.close()
    taken.close()
