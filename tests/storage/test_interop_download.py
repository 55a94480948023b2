"""Downloads of CARs other IPFS tools write: ipfs-unixfs-importer's DAG in @ipld/car's CarWriter
output, served as a trustless gateway serves it and as kubo's ``dag/export`` does.

A good CAR is one request, byte for byte, with no warning; a CAR cut off, rooted elsewhere or no
CAR at all is a logged and counted warning, and the rest comes block by block; a wrong block stops
the download.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi import FastAPI, Request, Response

from lilypad.errors import CorruptBlock
from lilypad.storage import dag, open_storage
from lilypad.storage.backends import GatewayStorage, KuboStorage
from lilypad.storage.car import car_header, read_car
from lilypad.storage.cid import CID, decode_varint
from lilypad.storage.client import CAR_ACCEPT
from lilypad.storage.unixfs import NodeType, decode_node
from tests.storage.conftest import UNKNOWN, run_js, serve_app, write_tree

CHUNK = 262144
_random = random.Random(42)
TREE: dict[str, bytes | None] = {
    "big.bin": _random.randbytes(1_500_000),  # six chunks under one file node
    "repeated.bin": _random.randbytes(CHUNK) * 5 + b"end",  # one chunk five times
    "notes/ünï cødé.txt": b"unicode name",
    "notes/日本語/データ.txt": "データ".encode(),
    "sub/deep/readme.txt": b"hello from a nested folder\n",
    "sub/deep/image.bin": _random.randbytes(300_000),
    "empty": None,
    **{f"frames/frame-{i:03d}.txt": f"frame {i}\n".encode() for i in range(60)},
}
#: Directories whose links pass this many bytes are HAMT shards: ``frames`` (60 entries) is one.
SHARD_BYTES = 1000
LOGGER = "lilypad.storage.backends"


@dataclass
class JsCar:
    """A CAR written by @ipld/car, its root and its blocks (as our reader verified them)."""

    order: str
    root: CID
    car: bytes
    blocks: dict[CID, bytes]
    sections: int


def _pack(source: Path, out: Path, order: str, cid_version: int = 1, subpath: str = "") -> JsCar:
    args = [str(source), str(out), order, str(SHARD_BYTES), str(cid_version)]
    printed = json.loads(run_js("client-car.mjs", *args, *([subpath] if subpath else [])))
    car = out.read_bytes()
    roots, blocks = read_car(car)
    assert roots == [CID.parse(printed["car_root"])]
    return JsCar(order, CID.parse(printed["root"]), car, dict(blocks), len(blocks))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("js-car") / "outputs", TREE)


@pytest.fixture(scope="module", params=["dfs", "unk", "dfs-cidv0"])
def js_car(request: pytest.FixtureRequest, source: Path) -> JsCar:
    """The tree as a CAR: depth first with duplicates (``order=dfs; dups=y``), in the importer's
    order (leaves first, the root last: ``order=unk``), and with kubo's default CIDv0."""
    order, _, v0 = str(request.param).partition("-")
    return _pack(source, source.parent / f"{request.param}.car", order, 0 if v0 else 1)


@dataclass
class CarServer:
    """A trustless gateway and a Kubo RPC ``dag/export`` answering with chosen CAR bytes per path
    (``?format=car``), and single blocks (``?format=raw``, ``block/get``); it logs each request."""

    cars: dict[str, bytes]
    blocks: dict[CID, bytes]
    requests: list[Request] = field(default_factory=list)
    content_type: str = "application/vnd.ipld.car; version=1; order=dfs; dups=y"

    def app(self) -> FastAPI:
        app = FastAPI()
        app.get("/ipfs/{rest:path}")(self.gateway)
        app.post("/api/v0/dag/export")(self.dag_export)
        app.post("/api/v0/block/get")(self.block_get)
        return app

    def gateway(self, rest: str, request: Request) -> Response:
        self.requests.append(request)
        fmt = request.query_params.get("format")
        if fmt == "car" and rest in self.cars:
            return Response(self.cars[rest], media_type=self.content_type)
        cid = CID.parse(rest)
        if fmt == "raw" and cid in self.blocks:
            return Response(self.blocks[cid], media_type="application/vnd.ipld.raw")
        return Response(status_code=404)

    def dag_export(self, arg: str, request: Request) -> Response:
        """As kubo answers: 200, the CAR, errors in a trailer."""
        self.requests.append(request)
        headers = {"X-Stream-Output": "1", "Trailer": "X-Stream-Error"}
        return Response(self.cars[arg], media_type="application/vnd.ipld.car", headers=headers)

    def block_get(self, arg: str, request: Request) -> Response:
        self.requests.append(request)
        return Response(self.blocks[CID.parse(arg)], media_type="application/octet-stream")


@pytest.fixture
def server(js_car: JsCar) -> Iterator[tuple[CarServer, str]]:
    car_server = CarServer({str(js_car.root): js_car.car}, js_car.blocks)
    with serve_app(car_server.app()) as url:
        yield car_server, url


def _same_tree(a: Path, b: Path) -> bool:
    left = sorted(p.relative_to(a).as_posix() for p in a.rglob("*"))
    right = sorted(p.relative_to(b).as_posix() for p in b.rglob("*"))
    files = [rel for rel in left if (a / rel).is_file()]
    return left == right and all((a / r).read_bytes() == (b / r).read_bytes() for r in files)


def _sections(car: bytes) -> list[tuple[int, int, int]]:
    """Each block section of a CAR: where it starts, where its CID starts, where it ends."""
    length, pos = decode_varint(car)
    pos += length
    spans = []
    while pos < len(car):
        length, start = decode_varint(car, pos)
        spans.append((pos, start, start + length))
        pos = start + length
    return spans


class _Blocks:
    def __init__(self, blocks: dict[CID, bytes]) -> None:
        self.blocks = {cid.v1(): data for cid, data in blocks.items()}

    def get(self, cid: CID) -> bytes:
        return self.blocks[cid.v1()]


def test_the_js_car_has_what_the_tests_need(js_car: JsCar) -> None:
    source = _Blocks(js_car.blocks)
    frames = dag.resolve(source, js_car.root, "frames")
    unixfs = decode_node(source.get(frames)).unixfs
    assert unixfs is not None
    assert unixfs.type is NodeType.HAMT_SHARD
    big = dag.resolve(source, js_car.root, "big.bin")
    assert len(decode_node(source.get(big)).links) == 6
    first, last = _sections(js_car.car)[0], _sections(js_car.car)[-1]
    if js_car.order == "dfs":
        assert js_car.car[first[1] :].startswith(bytes(js_car.root))
        assert js_car.sections > len(js_car.blocks)  # the repeated chunk comes again
    else:
        assert js_car.car[last[1] :].startswith(bytes(js_car.root))


@pytest.mark.parametrize("via", ["gateway", "api"])
def test_a_js_written_car_downloads_in_one_request(
    server: tuple[CarServer, str],
    js_car: JsCar,
    source: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    via: str,
) -> None:
    car_server, url = server
    dest = tmp_path / "downloads" / str(js_car.root)
    with caplog.at_level(logging.WARNING, LOGGER), closing(open_storage(**{via: url})) as storage:
        storage.get(js_car.root, dest)
    assert _same_tree(dest, source)
    assert len(car_server.requests) == 1
    assert not caplog.records
    assert isinstance(storage, GatewayStorage | KuboStorage)
    assert storage.car_warnings == 0
    (request,) = car_server.requests
    if via == "gateway":
        assert request.headers["accept"] == CAR_ACCEPT
        assert request.query_params["format"] == "car"
        assert request.query_params["dag-scope"] == "all"
    else:
        assert request.url.path == "/api/v0/dag/export"
    assert not [p.name for p in dest.parent.iterdir() if p.name.startswith(".")]


def test_a_path_downloads_from_the_gateways_car_for_it(
    source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``get CID/sub/deep``: the gateway's CAR for the sub-path (the blocks on the path, then the
    DAG at its end) is the one request."""
    whole = _pack(source, tmp_path / "whole.car", "dfs")
    at_path = _pack(source, tmp_path / "deep.car", "dfs", subpath="sub/deep")
    car_server = CarServer({f"{whole.root}/sub/deep": at_path.car}, whole.blocks)
    dest = tmp_path / "deep"
    with (
        serve_app(car_server.app()) as url,
        caplog.at_level(logging.WARNING, LOGGER),
        closing(GatewayStorage(url)) as storage,
    ):
        storage.get(f"{whole.root}/sub/deep", dest)
    assert _same_tree(dest, source / "sub" / "deep")
    assert [r.url.path for r in car_server.requests] == [f"/ipfs/{whole.root}/sub/deep"]
    assert not caplog.records


def _cut_mid_section(car: JsCar) -> bytes:
    start, _, end = _sections(car.car)[len(car.blocks) // 2]
    return car.car[: (start + end) // 2]


def _cut_at_a_boundary(car: JsCar) -> bytes:
    start, _, _ = _sections(car.car)[len(car.blocks) // 2]
    return car.car[:start]


def _rooted_elsewhere(car: JsCar) -> bytes:
    header_length, pos = decode_varint(car.car)
    return car_header([CID.parse(UNKNOWN)]) + car.car[pos + header_length :]


BROKEN = {
    "cut mid-section": (_cut_mid_section, "truncated"),
    "cut at a section boundary": (_cut_at_a_boundary, "the CAR lacks block"),
    "rooted elsewhere": (_rooted_elsewhere, f"roots ({UNKNOWN}) do not include"),
    "not a CAR": (lambda car: b"<html>this gateway is not trustless</html>", "malformed CAR"),
}


@pytest.mark.parametrize("broken", list(BROKEN))
@pytest.mark.parametrize("via", ["gateway", "api"])
def test_a_broken_car_is_a_warning_and_the_rest_comes_block_by_block(
    server: tuple[CarServer, str],
    js_car: JsCar,
    source: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    broken: str,
    via: str,
) -> None:
    car_server, url = server
    damage, reason = BROKEN[broken]
    car_server.cars[str(js_car.root)] = damage(js_car)
    dest = tmp_path / "downloads" / str(js_car.root)
    with caplog.at_level(logging.WARNING, LOGGER), closing(open_storage(**{via: url})) as storage:
        storage.get(js_car.root, dest)
    assert _same_tree(dest, source)
    assert isinstance(storage, GatewayStorage | KuboStorage)
    assert storage.car_warnings == 1
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert reason in record.getMessage()
    asked = "/api/v0/dag/export" if via == "api" else f"/ipfs/{js_car.root}?format=car"
    assert f"{url}{asked}" in record.getMessage()
    one_by_one = len(car_server.requests) - 1
    if broken == "rooted elsewhere":
        assert one_by_one == 0  # every block came, each verified: the roots are only a check
    else:
        assert one_by_one > 1  # the rest, block by block


def test_a_gateway_that_sends_no_car_is_a_warning(
    server: tuple[CarServer, str],
    js_car: JsCar,
    source: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    car_server, url = server
    car_server.content_type = "text/html"
    dest = tmp_path / "out"
    with caplog.at_level(logging.WARNING, LOGGER), closing(GatewayStorage(url)) as storage:
        storage.get(js_car.root, dest)
    assert _same_tree(dest, source)
    assert "no CAR: the gateway answered HTTP 200 text/html" in caplog.records[0].getMessage()
    assert storage.car_warnings == 1
    assert len(car_server.requests) == 1 + len(js_car.blocks)


@pytest.mark.parametrize("via", ["gateway", "api"])
def test_a_tampered_block_in_the_car_stops_the_download(
    server: tuple[CarServer, str], js_car: JsCar, tmp_path: Path, via: str
) -> None:
    car_server, url = server
    car = bytearray(js_car.car)
    source = _Blocks(js_car.blocks)
    leaf = decode_node(source.get(dag.resolve(source, js_car.root, "big.bin"))).links[3].cid
    _, _, end = next(s for s in _sections(js_car.car) if car[s[1] :].startswith(bytes(leaf)))
    car[end - 1] ^= 0xFF
    car_server.cars[str(js_car.root)] = bytes(car)
    dest = tmp_path / "downloads" / "result"
    with (
        closing(open_storage(**{via: url})) as storage,
        pytest.raises(CorruptBlock, match=f"block {leaf} does not match its CID"),
    ):
        storage.get(js_car.root, dest)
    assert not dest.exists()
    assert not list(dest.parent.iterdir())
