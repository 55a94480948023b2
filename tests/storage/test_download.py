"""Verified downloads: every block checked, nothing partial left, hostile data refused."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from fastapi import FastAPI, Response

from lilypad.errors import (
    BlockNotFound,
    ContentTooLarge,
    CorruptBlock,
    InvalidCID,
    StorageError,
    UnsafeEntryName,
)
from lilypad.storage import (
    GatewayStorage,
    KuboStorage,
    LocalStorage,
    compute_cid,
    open_storage,
    result_dir,
)
from lilypad.storage.blockstore import Blockstore
from lilypad.storage.car import car_stream
from lilypad.storage.cid import CID, DAG_PB, RAW
from lilypad.storage.importer import ImportProfile
from lilypad.storage.node import EmbeddedNode
from lilypad.storage.unixfs import Link, NodeType, UnixFSData, decode_node, encode_node
from tests.storage.conftest import serve_app, write_tree

FILES: dict[str, bytes | None] = {
    "outputs/image.png": bytes(range(256)) * 3000,
    "outputs/empty": None,
    "stdout": b"done\n",
    "stderr": b"",
    "exitCode": b"0",
}


def _tree_equal(a: Path, b: Path) -> bool:
    left = sorted(p.relative_to(a).as_posix() for p in a.rglob("*"))
    right = sorted(p.relative_to(b).as_posix() for p in b.rglob("*"))
    files = [rel for rel in left if (a / rel).is_file()]
    return left == right and all((a / r).read_bytes() == (b / r).read_bytes() for r in files)


def _flip_last_byte(store: Blockstore, cid: CID) -> None:
    """Corrupt a stored block in place, as a bad disk would."""
    where = store.locate(cid)
    with where.path.open("r+b") as pack:
        pack.seek(where.offset + where.length - 1)
        last = pack.read(1)
        pack.seek(-1, 1)
        pack.write(bytes([last[0] ^ 0xFF]))


def _nothing_left(dest: Path) -> bool:
    """Neither the destination nor any temporary folder (a partial copy, a CAR cache) exists."""
    return not dest.exists() and not [p for p in dest.parent.iterdir() if p.name.startswith(".")]


@pytest.fixture
def job_result(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "job", FILES)


def test_provider_add_then_creator_get_through_gateway_and_api(
    node: EmbeddedNode, job_result: Path
) -> None:
    # The resource provider adds the result folder to its node and pins it.
    provider = LocalStorage(node.store.root)
    cid = provider.add(job_result)
    assert cid == compute_cid(job_result)
    assert cid in provider.pins()

    # The job creator downloads it, verified, into <data_dir>/downloaded-files/<CID>.
    dest = result_dir(cid)
    for source in ({"gateway": node.gateway_url}, {"api": node.api_url}):
        with closing(open_storage(**source)) as storage:
            assert storage.get(cid, dest) == dest
            assert b"".join(storage.cat(f"{cid}/stdout")) == b"done\n"
        assert _tree_equal(dest, job_result)
        assert not [p for p in dest.parent.iterdir() if ".partial-" in p.name]
        shutil.rmtree(dest)


def test_get_refuses_an_existing_destination(store: Blockstore, job_result: Path) -> None:
    local = LocalStorage(store.root)
    cid = local.add(job_result)
    dest = job_result.parent / "taken"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(StorageError, match="already exists"):
        local.get(cid, dest)
    assert (dest / "mine.txt").read_text() == "keep me"


def test_malformed_cid_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidCID, match="'bafy-nope' is not a valid CID"):
        open_storage().get("bafy-nope", tmp_path / "x")


class HostileGateway:
    """A gateway that serves chosen bytes for chosen CIDs (and may stall, or serve CARs)."""

    def __init__(self) -> None:
        self.blocks: dict[str, bytes] = {}
        self.stall: set[str] = set()
        self.serves_car = False
        self.requests = 0
        self.app = FastAPI()
        self.app.get("/ipfs/{cid}")(self.serve)
        # and as a Kubo RPC API: block/get, and dag/export when it serves CARs
        self.app.post("/api/v0/block/get")(self.block_get)
        self.app.post("/api/v0/dag/export")(self.dag_export)

    def get(self, cid: CID) -> bytes:
        """As a block source: whatever bytes it holds, unchecked."""
        return self.blocks[str(cid)]

    def serve(self, cid: str, format: str = "raw") -> Response:
        self.requests += 1
        if cid in self.stall:
            time.sleep(1.5)
        if cid not in self.blocks:
            return Response(status_code=404)
        if format == "car" and self.serves_car:
            car = b"".join(car_stream(self, CID.parse(cid)))
            return Response(car, media_type="application/vnd.ipld.car; version=1")
        return Response(self.blocks[cid], media_type="application/vnd.ipld.raw")

    def block_get(self, arg: str) -> Response:
        self.requests += 1
        if arg not in self.blocks:
            return Response('{"Message": "block not found", "Code": 0}', status_code=500)
        return Response(self.blocks[arg], media_type="application/octet-stream")

    def dag_export(self, arg: str) -> Response:
        self.requests += 1
        if not self.serves_car:
            return Response("404 page not found", status_code=404)
        return Response(b"".join(car_stream(self, CID.parse(arg))), media_type="text/plain")

    def add_dag(self, store: Blockstore, root: CID) -> list[CID]:
        cids = [cid for cid, _ in store.walk(root)]
        for cid, data in store.walk(root):
            self.blocks[str(cid)] = data
        return cids


@pytest.fixture
def hostile() -> Iterator[tuple[HostileGateway, str]]:
    gateway = HostileGateway()
    with serve_app(gateway.app) as url:
        yield gateway, url


@pytest.mark.parametrize("car", [False, True], ids=["block-by-block", "car"])
@pytest.mark.parametrize("via", ["gateway", "api"])
def test_a_tampered_block_stops_the_download(
    hostile: tuple[HostileGateway, str],
    store: Blockstore,
    job_result: Path,
    tmp_path: Path,
    car: bool,
    via: str,
) -> None:
    gateway, url = hostile
    gateway.serves_car = car
    root = LocalStorage(store.root).add(job_result)
    cids = gateway.add_dag(store, root)
    leaf = next(c for c in cids if c.codec == RAW and len(gateway.blocks[str(c)]) > 1000)
    original = gateway.blocks[str(leaf)]
    gateway.blocks[str(leaf)] = bytes([original[0] ^ 1]) + original[1:]
    dest = tmp_path / "downloads" / str(root)
    with (
        closing(open_storage(**{via: url})) as storage,
        pytest.raises(CorruptBlock, match=str(leaf)),
    ):
        storage.get(root, dest)
    assert _nothing_left(dest)


@pytest.mark.parametrize("via", ["gateway", "api"])
def test_a_download_is_one_car_request(
    hostile: tuple[HostileGateway, str],
    store: Blockstore,
    job_result: Path,
    tmp_path: Path,
    via: str,
) -> None:
    """A trustless gateway's ?format=car, a Kubo RPC API's dag/export: one request, not one
    per block (`lilypad run` downloads a result through the network's Kubo API)."""
    gateway, url = hostile
    gateway.serves_car = True
    root = LocalStorage(store.root).add(job_result)
    gateway.add_dag(store, root)
    dest = tmp_path / "downloads" / str(root)
    with closing(open_storage(**{via: url})) as storage:
        storage.get(root, dest)
    assert gateway.requests == 1
    assert isinstance(storage, GatewayStorage | KuboStorage)
    assert storage.car_warnings == 0
    assert _tree_equal(dest, job_result)
    assert not [p.name for p in dest.parent.iterdir() if p.name.startswith(".")]


def test_an_api_without_dag_export_is_read_block_by_block(
    hostile: tuple[HostileGateway, str],
    store: Blockstore,
    job_result: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway, url = hostile
    root = LocalStorage(store.root).add(job_result)
    cids = gateway.add_dag(store, root)
    dest = tmp_path / "downloads" / str(root)
    with (
        caplog.at_level(logging.WARNING, "lilypad.storage.backends"),
        closing(KuboStorage(url)) as storage,
    ):
        storage.get(root, dest)
    assert gateway.requests == 1 + len(set(cids))  # the refused export, then each block
    assert _tree_equal(dest, job_result)
    # Said, not swallowed: which URL, and why.
    assert storage.car_warnings == 1
    (warning,) = caplog.messages
    assert warning.startswith(f"{url}/api/v0/dag/export?arg={root}: no CAR")
    assert "404 page not found" in warning


def test_content_the_gateway_lacks_is_not_found_without_a_car_warning(
    hostile: tuple[HostileGateway, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gateway, url = hostile
    gateway.serves_car = True
    with (
        caplog.at_level(logging.WARNING, "lilypad.storage.backends"),
        closing(GatewayStorage(url)) as storage,
        pytest.raises(BlockNotFound, match="not available"),
    ):
        storage.get(CID.from_data(b"nobody has this", RAW), tmp_path / "x")
    assert gateway.requests == 2  # the CAR (404), then the root block (404)
    assert not caplog.messages


def test_the_embedded_nodes_api_exports_the_whole_dag(
    node: EmbeddedNode, store: Blockstore, job_result: Path, tmp_path: Path
) -> None:
    from lilypad.storage.client import KuboClient

    root = LocalStorage(store.root).add(job_result)
    with KuboClient(node.api_url) as client:
        received = Blockstore(tmp_path / "received")
        with received.writer() as sink:
            car = client.fetch_car(root, sink)
        assert car.problem is None
        assert car.roots == (root,)
        assert car.blocks >= len({cid for cid, _ in store.walk(root)})  # a chunk may repeat
        assert all(received.get(cid) == data for cid, data in store.walk(root))
        received.close()


def test_a_missing_block_leaves_nothing_behind(
    hostile: tuple[HostileGateway, str], store: Blockstore, job_result: Path, tmp_path: Path
) -> None:
    gateway, url = hostile
    root = LocalStorage(store.root).add(job_result)
    cids = gateway.add_dag(store, root)
    del gateway.blocks[str(cids[-1])]  # the last block: most of the tree is written by then
    dest = tmp_path / "downloads" / str(root)
    with closing(open_storage(gateway=url)) as storage, pytest.raises(BlockNotFound):
        storage.get(root, dest)
    assert _nothing_left(dest)


def test_unknown_cid_waits_a_bounded_time(
    hostile: tuple[HostileGateway, str], tmp_path: Path
) -> None:
    gateway, url = hostile
    unknown = CID.from_data(b"nobody has this", RAW)
    gateway.stall.add(str(unknown))
    started = time.monotonic()
    with (
        closing(GatewayStorage(url, timeout=0.5)) as storage,
        pytest.raises(BlockNotFound, match=r"within 0\.5 s"),
    ):
        storage.get(unknown, tmp_path / "x")
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("name", ["..", "a/../../escape", "/etc/passwd"])
def test_hostile_entry_names_are_refused(
    hostile: tuple[HostileGateway, str], tmp_path: Path, name: str
) -> None:
    gateway, url = hostile
    leaf_data = b"owned"
    leaf = CID.from_data(leaf_data, RAW)
    directory = encode_node(
        [Link(leaf, name, len(leaf_data))], UnixFSData(NodeType.DIRECTORY).encode()
    )
    root = CID.from_data(directory, DAG_PB)
    gateway.blocks.update({str(leaf): leaf_data, str(root): directory})
    dest = tmp_path / "downloads" / "result"
    with (
        closing(open_storage(gateway=url)) as storage,
        pytest.raises(UnsafeEntryName, match="refusing"),
    ):
        storage.get(root, dest)
    assert _nothing_left(dest)
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "downloads" / "owned").exists()


def test_a_corrupted_local_block_is_detected_on_read(
    store: Blockstore, job_result: Path, tmp_path: Path
) -> None:
    local = LocalStorage(store.root)
    root = local.add(job_result)
    leaf = next(c for c, _ in store.walk(root) if c.codec == RAW)
    _flip_last_byte(store, leaf)
    dest = tmp_path / "out"
    with pytest.raises(CorruptBlock, match=f"block {leaf} does not match its CID"):
        local.get(root, dest)
    assert _nothing_left(dest)


def test_a_sharded_directory_downloads_and_resolves(
    node: EmbeddedNode, store: Blockstore, tmp_path: Path
) -> None:
    # A low threshold shards a small directory: the HAMT layout is the same as kubo's for large
    # ones (test_cids checks that), and creating thousands of files is slow on some disks.
    profile = ImportProfile(shard_threshold=2000)
    files: dict[str, bytes | None] = {f"frame-{i:03d}.png": str(i).encode() for i in range(300)}
    source = write_tree(tmp_path / "frames", files)
    local = LocalStorage(store.root, profile)
    cid = local.add(source)
    unixfs = decode_node(store.get(cid)).unixfs
    assert unixfs is not None
    assert unixfs.type is NodeType.HAMT_SHARD
    with closing(open_storage(gateway=node.gateway_url)) as remote:
        assert b"".join(remote.cat(f"{cid}/frame-271.png")) == b"271"
        dest = tmp_path / "copy"
        remote.get(cid, dest)
    assert _tree_equal(dest, source)


def test_a_path_inside_a_result_downloads_from_each_backend(
    node: EmbeddedNode, added: CID, tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``get <cid>/notes``: the folder at the path, from the local store, the gateway's CAR for
    the path and the API's ``dag/export`` of it."""
    backends = {
        "local": LocalStorage(node.store.root),
        "gateway": GatewayStorage(node.gateway_url),
        "api": KuboStorage(node.api_url),
    }
    with caplog.at_level(logging.WARNING, "lilypad.storage.backends"):
        for name, storage in backends.items():
            with closing(storage):
                storage.get(f"{added}/notes", tmp_path / name)
            assert _tree_equal(tmp_path / name, tree / "notes")
            assert getattr(storage, "car_warnings", 0) == 0
    assert not caplog.messages


def test_an_identity_block_the_car_leaves_out_is_no_warning(
    node: EmbeddedNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A trustless CAR never carries identity CIDs (their CID holds the bytes)."""
    inline = CID(1, RAW, b"\x00\x02hi")
    directory = encode_node([Link(inline, "hi.txt", 2)], UnixFSData(NodeType.DIRECTORY).encode())
    root = CID.from_data(directory, DAG_PB)
    node.store.put(root, directory)
    with (
        caplog.at_level(logging.WARNING, "lilypad.storage.backends"),
        closing(GatewayStorage(node.gateway_url)) as storage,
    ):
        storage.get(root, tmp_path / "out")
    assert (tmp_path / "out" / "hi.txt").read_bytes() == b"hi"
    assert not caplog.messages


def test_a_download_over_its_byte_limit_is_refused_and_leaves_nothing(
    node: EmbeddedNode, store: Blockstore, tmp_path: Path
) -> None:
    """A job creator downloads at most what the job may leave: a provider cannot fill its disk
    with a result larger than the module's output limit."""
    root = write_tree(tmp_path / "big", {"a.bin": b"a" * 300_000, "b.bin": b"b" * 300_000})
    cid = LocalStorage(store.root).add(root)
    backends = [
        LocalStorage(store.root),
        KuboStorage(node.api_url),
        GatewayStorage(node.gateway_url),
    ]
    for index, backend in enumerate(backends):
        with closing(backend):
            dest = tmp_path / f"out-{index}"
            with pytest.raises(ContentTooLarge, match="more than the 400000 bytes"):
                backend.get(cid, dest, max_bytes=400_000)
            assert _nothing_left(dest)
            ok = backend.get(cid, tmp_path / f"ok-{index}", max_bytes=600_000)
            assert _tree_equal(ok, root)


def test_a_remote_that_streams_blocks_without_end_is_cut_off(tmp_path: Path) -> None:
    """A gateway's CAR may hold blocks that belong to nothing: the download stops once they pass
    what a result of the allowed size can need, instead of filling the disk."""
    wanted = b"the result"
    cid = CID.from_data(wanted, RAW)

    def endless() -> Iterator[bytes]:
        from lilypad.storage.car import car_header, car_section

        yield car_header([cid])
        for n in range(10_000):  # 10,000 valid 1 KiB blocks nobody asked for
            junk = n.to_bytes(4, "big") * 256
            yield car_section(CID.from_data(junk, RAW), junk)

    app = FastAPI()

    @app.get("/ipfs/{rest:path}")
    def car(rest: str) -> Response:
        from fastapi.responses import StreamingResponse

        return StreamingResponse(endless(), media_type="application/vnd.ipld.car; version=1")

    with (
        serve_app(app) as url,
        closing(GatewayStorage(url)) as gateway,
        pytest.raises(ContentTooLarge, match="blocks"),
    ):
        gateway.get(cid, tmp_path / "out", max_bytes=1000)
    assert _nothing_left(tmp_path / "out")
