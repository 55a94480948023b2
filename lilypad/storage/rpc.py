"""The embedded node's Kubo RPC API (``/api/v0``, POST only as kubo) and the IPFS Pinning
Service API (``/pins``, when a token is configured)."""

from __future__ import annotations

import io
import re
import secrets
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile

from lilypad import __version__
from lilypad.errors import BlockNotFound, InputError, InvalidIPFSPath, LilypadError, StorageError
from lilypad.storage import dag
from lilypad.storage.blockstore import Blockstore, PinType
from lilypad.storage.car import car_stream
from lilypad.storage.cid import CID
from lilypad.storage.client import DIRECTORY_PART, SYMLINK_PART
from lilypad.storage.importer import MAX_SYMLINK_TARGET, AddedEntry, Importer, ImportProfile
from lilypad.storage.unixfs import Link


def _kubo_error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"Message": message, "Code": 0, "Type": "error"}, status_code=status)


def create_api_app(store: Blockstore, pinning_token: str | None = None) -> FastAPI:
    """The Kubo RPC subset over ``store``; with ``pinning_token``, also the Pinning Service API."""
    app = FastAPI(title="lilypad IPFS API", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(LilypadError)
    def _handle(request: Request, exc: LilypadError) -> Response:
        # kubo answers 500 for most failures; our own clients read the Message.
        status = 400 if isinstance(exc, InputError) else 500
        return _kubo_error(str(exc), status)

    @app.post("/api/v0/version")
    def version() -> dict[str, str]:
        return {"Version": __version__, "Commit": "", "Repo": "lilypad", "System": "python"}

    @app.post("/api/v0/add")
    async def add(request: Request) -> Response:
        form = await request.form(max_files=10**7, max_fields=10**7)
        parts = [(v.filename or "", v) for _, v in form.multi_items() if isinstance(v, UploadFile)]
        try:
            lines = await run_in_threadpool(_add_parts, store, parts, request.query_params)
        finally:
            await form.close()
        body = "".join(_json_line(line) for line in lines)
        return Response(body, media_type="application/x-ndjson")

    @app.post("/api/v0/cat")
    def cat(arg: str, offset: int = 0, length: int | None = None) -> Response:
        target = _arg_cid(store, arg)
        return StreamingResponse(
            dag.read_file(store, target, offset, length), media_type="application/octet-stream"
        )

    @app.post("/api/v0/get")
    def get(arg: str) -> Response:
        target = _arg_cid(store, arg)
        return StreamingResponse(_tar(store, target, str(target)), media_type="application/x-tar")

    @app.post("/api/v0/dag/export")
    def dag_export(arg: str) -> Response:
        target = _arg_cid(store, arg)
        store.get(target)  # NOTE: fail with a status code now, not in the middle of a stream
        return StreamingResponse(
            car_stream(store, target), media_type="application/vnd.ipld.car; version=1"
        )

    @app.post("/api/v0/block/get")
    def block_get(arg: str) -> Response:
        return Response(store.get(CID.parse(arg)), media_type="application/octet-stream")

    @app.post("/api/v0/pin/add")
    def pin_add(arg: str, recursive: bool = True) -> dict[str, list[str]]:
        target = _arg_cid(store, arg)
        store.pin(target, PinType.RECURSIVE if recursive else PinType.DIRECT)
        return {"Pins": [str(target)]}

    @app.post("/api/v0/pin/rm")
    def pin_rm(arg: str) -> dict[str, list[str]]:
        target = _arg_cid(store, arg)
        store.unpin(target)
        return {"Pins": [str(target)]}

    @app.post("/api/v0/pin/ls")
    def pin_ls(arg: str | None = None, type: str = "all") -> dict[str, Any]:
        pins = store.pins()
        if arg is not None:
            wanted = _arg_cid(store, arg)
            if wanted not in pins:
                raise StorageError(f"path '{arg}' is not pinned")
            pins = {wanted: pins[wanted]}
        keys = {str(c): {"Type": t.value} for c, t in pins.items() if type in ("all", t.value)}
        return {"Keys": keys}

    @app.post("/api/v0/repo/gc")
    def repo_gc() -> dict[str, int]:
        return {"Removed": store.gc()}

    if pinning_token:
        _pinning_service(app, store, pinning_token)
    return app


def _json_line(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data) + "\n"


def _arg_cid(store: Blockstore, arg: str) -> CID:
    """A kubo ``arg``: ``<cid>``, ``/ipfs/<cid>`` or ``/ipfs/<cid>/path``."""
    text = arg[len("/ipfs/") :] if arg.startswith("/ipfs/") else arg
    cid_text, _, subpath = text.partition("/")
    return dag.resolve(store, CID.parse(cid_text), subpath)


@dataclass
class _Dir:
    children: dict[str, _Dir | _Symlink | UploadFile] = field(default_factory=dict)


@dataclass(frozen=True)
class _Symlink:
    target: bytes


def _part_node(name: str, upload: UploadFile) -> _Dir | _Symlink | UploadFile:
    """What a multipart part is, by its content type (boxo's ``files`` encoding, as kubo reads
    it): a directory, a symlink whose body is its target, or a file."""
    kind = (upload.content_type or "").split(";", 1)[0].strip().lower()
    if kind in (DIRECTORY_PART, "multipart/form-data"):
        return _Dir()
    if kind != SYMLINK_PART:
        return upload
    upload.file.seek(0)
    target = upload.file.read(MAX_SYMLINK_TARGET + 1)
    if len(target) > MAX_SYMLINK_TARGET:
        raise InputError(
            f"{unquote(name)!r}: a symlink part's target is over {MAX_SYMLINK_TARGET} bytes; "
            "a symlink node must fit in one block"
        )
    return _Symlink(target)


def _add_parts(
    store: Blockstore, parts: list[tuple[str, UploadFile]], params: Any
) -> list[dict[str, str]]:
    """Import multipart parts (kubo's layout: URL-escaped relative paths, dirs marked)."""
    version = int(params.get("cid-version", "0"))
    raw = params.get("raw-leaves")
    chunker = params.get("chunker", "size-262144")
    if not re.fullmatch(r"size-\d+", chunker):
        raise InputError(f"chunker {chunker!r} is not supported; use size-N")
    profile = ImportProfile(
        cid_version=version,
        raw_leaves=(version == 1) if raw is None else raw == "true",
        chunk_size=int(chunker[5:]),
    )
    top = _Dir()
    for name, upload in parts:
        names = dag.split_path(unquote(name))
        if not names:
            raise InvalidIPFSPath(f"multipart part without a file name: {name!r}")
        parent = top
        for part in names[:-1]:
            child = parent.children.setdefault(part, _Dir())
            if not isinstance(child, _Dir):
                raise InputError(f"{name!r}: {part!r} is both a file and a directory")
            parent = child
        parent.children.setdefault(names[-1], _part_node(name, upload))
    only_hash = params.get("only-hash") == "true"
    lines: list[dict[str, str]] = []

    def record(entry: AddedEntry) -> None:
        lines.append({"Name": entry.path, "Hash": str(entry.cid), "Size": str(entry.size)})

    with store.lock():
        with store.writer() as sink:
            importer = Importer(None if only_hash else sink, profile)
            roots = [_import(importer, n, child, n, record) for n, child in top.children.items()]
            if params.get("wrap-with-directory") == "true":
                wrapped = importer.add_directory(roots)
                record(AddedEntry("", wrapped.cid, wrapped.tsize))
                roots = [wrapped]
        if params.get("pin", "true") == "true" and not only_hash:
            for root in roots:
                store.pin(root.cid)
    if params.get("quieter") == "true":
        return lines[-1:]
    return lines


def _import(
    importer: Importer,
    name: str,
    node: _Dir | _Symlink | UploadFile,
    rel: str,
    record: Any,
) -> Link:
    if isinstance(node, _Dir):
        children = [
            _import(importer, child_name, child, f"{rel}/{child_name}", record)
            for child_name, child in node.children.items()
        ]
        link = importer.add_directory(children)
    elif isinstance(node, _Symlink):
        link = importer.add_symlink(node.target)
    else:
        node.file.seek(0)
        link = importer.add_file(node.file)
    record(AddedEntry(rel, link.cid, link.tsize))
    return Link(link.cid, name, link.tsize)


def _tar(store: Blockstore, cid: CID, name: str) -> Iterator[bytes]:
    """A tar of the DAG, as ``/api/v0/get`` returns it (built in a spooled temporary file)."""
    with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as spool:
        with tarfile.open(fileobj=spool, mode="w") as archive:
            _tar_add(store, archive, cid, name)
        spool.seek(0)
        while chunk := spool.read(1024 * 1024):
            yield chunk


def _tar_add(store: Blockstore, archive: tarfile.TarFile, cid: CID, name: str) -> None:
    entry = dag.stat(store, cid)
    info = tarfile.TarInfo(name)
    if entry.kind == "directory":
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        archive.addfile(info)
        for link in dag.list_directory(store, cid):
            _tar_add(store, archive, link.cid, f"{name}/{dag.check_name(link.name, name)}")
    elif entry.kind == "file":
        info.size = entry.size
        info.mode = 0o644
        archive.addfile(info, _Reader(dag.read_file(store, cid)))
    else:  # a symlink entry, as kubo's get writes it: extracting it is the reader's choice
        info.type = tarfile.SYMTYPE
        info.linkname = dag.read_symlink(store, cid).decode("utf-8", "surrogateescape")
        info.mode = 0o777
        archive.addfile(info)


class _Reader(io.RawIOBase):
    """A file object over an iterator of byte chunks (for tarfile.addfile)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


# --- Pinning Service API ------------------------------------------------------------------------


def _pinning_service(app: FastAPI, store: Blockstore, token: str) -> None:
    """``/pins``: the local node as a pinning service for content already in its store."""

    def authorize(request: Request) -> None:
        sent = request.headers.get("authorization", "")
        if not secrets.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            raise _Unauthorized()

    def status(cid: CID, kind: str = "pinned") -> dict[str, Any]:
        return {
            "requestid": str(cid),
            "status": kind,
            "created": datetime.now(UTC).isoformat(),
            "pin": {"cid": str(cid)},
            "delegates": [],
        }

    @app.exception_handler(_Unauthorized)
    def _unauthorized(request: Request, exc: _Unauthorized) -> Response:
        body = {"error": {"reason": "UNAUTHORIZED", "details": "missing or wrong access token"}}
        return JSONResponse(body, status_code=401)

    @app.post("/pins", status_code=202)
    async def add_pin(request: Request) -> dict[str, Any]:
        authorize(request)
        body = await request.json()
        cid = CID.parse(str(body.get("cid", "")))
        try:
            await run_in_threadpool(store.pin, cid)
        except BlockNotFound:
            return status(cid, "failed")
        return status(cid)

    @app.get("/pins")
    def list_pins(request: Request, cid: str | None = None) -> dict[str, Any]:
        authorize(request)
        pins = [c for c in store.pins() if cid is None or str(c) in cid.split(",")]
        return {"count": len(pins), "results": [status(c) for c in pins]}

    @app.get("/pins/{requestid}")
    def get_pin(requestid: str, request: Request) -> dict[str, Any]:
        authorize(request)
        cid = CID.parse(requestid)
        if cid not in store.pins():
            raise BlockNotFound(f"no pin request {requestid}")
        return status(cid)

    @app.delete("/pins/{requestid}", status_code=202)
    def remove_pin(requestid: str, request: Request) -> None:
        authorize(request)
        store.unpin(CID.parse(requestid))


class _Unauthorized(Exception):
    pass
