"""The embedded IPFS node: an HTTP gateway and the Kubo RPC subset over one on-disk blockstore.

* :func:`create_gateway_app` serves ``GET/HEAD /ipfs/<cid>[/path]``: files with content types and
  range requests, directory listings (or ``index.html``), and trustless responses
  (``?format=raw`` / ``?format=car`` or the matching ``Accept`` header).
* :func:`create_api_app` serves the Kubo RPC commands the project uses, POST only as kubo:
  ``add``, ``cat``, ``get``, ``block/get``, ``pin/add``, ``pin/ls``, ``pin/rm``, ``repo/gc``,
  ``version``; plus the IPFS Pinning Service API (``/pins``) when a token is configured.
* :class:`EmbeddedNode` runs both with uvicorn (in a background thread, or in the foreground for
  ``lilypad ipfs serve``).

This node has no peers: it serves what was added to its store. Unknown CIDs answer 404 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import io
import mimetypes
import re
import secrets
import signal
import socket
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.datastructures import UploadFile

from lilypad import __version__
from lilypad.errors import (
    BlockNotFound,
    CorruptBlock,
    InputError,
    InvalidIPFSPath,
    LilypadError,
    StorageError,
)
from lilypad.storage import dag
from lilypad.storage.blockstore import Blockstore, PinType
from lilypad.storage.cid import CID
from lilypad.storage.client import DIRECTORY_PART, SYMLINK_PART
from lilypad.storage.importer import MAX_SYMLINK_TARGET, AddedEntry, Importer, ImportProfile
from lilypad.storage.unixfs import Link

_IMMUTABLE = "public, max-age=29030400, immutable"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


# --- gateway ------------------------------------------------------------------------------------


def create_gateway_app(store: Blockstore) -> FastAPI:
    """The HTTP gateway over ``store`` (path gateway and trustless gateway)."""
    app = FastAPI(title="lilypad IPFS gateway", docs_url=None, redoc_url=None, openapi_url=None)
    _text_errors(app)

    @app.api_route("/ipfs/{rest:path}", methods=["GET", "HEAD"])
    def ipfs_path(rest: str, request: Request) -> Response:
        cid_text, _, subpath = rest.partition("/")
        root = CID.parse(cid_text)
        target = dag.resolve(store, root, subpath)
        fmt = _requested_format(request)
        headers = {
            "Etag": f'"{target}"',
            "X-Ipfs-Path": f"/ipfs/{rest}",
            "Cache-Control": _IMMUTABLE,
        }
        if fmt == "raw":
            return Response(
                store.get(target), media_type="application/vnd.ipld.raw", headers=headers
            )
        if fmt == "car":
            store.get(target)  # NOTE: fail with a status code now, not in the middle of a stream
            whole = request.query_params.get("dag-scope", "all") != "block"
            headers["Etag"] = f'"{target}.car"'
            return StreamingResponse(
                dag.car_stream(store, target, whole_dag=whole),
                media_type="application/vnd.ipld.car; version=1",
                headers=headers,
            )
        entry = dag.stat(store, target)
        if entry.kind == "directory":
            if not request.url.path.endswith("/"):
                return RedirectResponse(f"{request.url.path}/", status_code=301)
            links = dag.list_directory(store, target)
            index = next((link for link in links if link.name == "index.html"), None)
            if index is None:
                return HTMLResponse(_listing(request.url.path, links), headers=headers)
            entry = dag.stat(store, index.cid)
            subpath = f"{subpath}/index.html"
        return _file_response(store, entry, subpath, request, headers)

    return app


def _requested_format(request: Request) -> str | None:
    fmt = request.query_params.get("format")
    if fmt is None:
        accept = request.headers.get("accept", "")
        if "application/vnd.ipld.raw" in accept:
            fmt = "raw"
        elif "application/vnd.ipld.car" in accept:
            fmt = "car"
    if fmt not in (None, "raw", "car"):
        raise InputError(f"format {fmt!r} is not supported; use raw or car")
    return fmt


def _file_response(
    store: Blockstore, entry: dag.Entry, name: str, request: Request, headers: dict[str, str]
) -> Response:
    size = entry.size
    first = b"".join(dag.read_file(store, entry.cid, 0, 512)) if size else b""
    media_type = _content_type(name, first)
    headers["Accept-Ranges"] = "bytes"
    spec = request.headers.get("range")
    if spec is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(
            dag.read_file(store, entry.cid), media_type=media_type, headers=headers
        )
    match = _RANGE.match(spec.strip())
    start, end = _parse_range(match, size)
    if start is None or end is None:
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    body = dag.read_file(store, entry.cid, start, end - start + 1)
    return StreamingResponse(body, status_code=206, media_type=media_type, headers=headers)


def _parse_range(match: re.Match[str] | None, size: int) -> tuple[int | None, int | None]:
    """One ``bytes=a-b`` range as inclusive offsets, or ``(None, None)`` if unsatisfiable."""
    if match is None or (not match[1] and not match[2]):
        return None, None
    if not match[1]:  # suffix: the last N bytes
        n = int(match[2])
        return (max(size - n, 0), size - 1) if n and size else (None, None)
    start = int(match[1])
    end = min(int(match[2]), size - 1) if match[2] else size - 1
    if start >= size or end < start:
        return None, None
    return start, end


_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"\x1aE\xdf\xa3", "video/webm"),
]


def _content_type(name: str, head: bytes) -> str:
    """By file extension, else by the first bytes (a file at a bare CID has no name)."""
    guessed, _ = mimetypes.guess_type(name.rsplit("/", 1)[-1]) if name else (None, None)
    if guessed:
        return guessed
    for magic, media_type in _MAGIC:
        if head.startswith(magic):
            return media_type
    if head[4:8] == b"ftyp":
        return "video/mp4"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    try:
        head.decode()
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain; charset=utf-8"


def _listing(path: str, links: list[Link]) -> str:
    rows = "\n".join(
        f'<tr><td><a href="{html.escape(path + quote(link.name))}">{html.escape(link.name)}</a>'
        f"</td><td>{link.tsize}</td><td><code>{link.cid}</code></td></tr>"
        for link in links
    )
    title = html.escape(path)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><h1>Index of {title}</h1><table><tr><th>name</th><th>size</th><th>CID</th></tr>"
        f"{rows}</table></body></html>"
    )


def _text_errors(app: FastAPI) -> None:
    @app.exception_handler(LilypadError)
    def _handle(request: Request, exc: LilypadError) -> Response:
        return PlainTextResponse(str(exc) + "\n", status_code=_status(exc))


def _status(exc: LilypadError) -> int:
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, BlockNotFound):
        return 404
    return 500


# --- Kubo RPC -----------------------------------------------------------------------------------


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
            dag.car_stream(store, target), media_type="application/vnd.ipld.car; version=1"
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


# --- running ------------------------------------------------------------------------------------


def parse_address(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (or a multiaddr ``/ip4/HOST/tcp/PORT``) to a host and port.

    Raises:
        InputError: The address is neither form.
    """
    m = re.fullmatch(r"/ip4/([\d.]+)/tcp/(\d+)", addr) or re.fullmatch(
        r"\[?([\w.:-]+?)\]?:(\d+)", addr
    )
    if m is None or int(m[2]) > 65535:
        raise InputError(f"address {addr!r} is not HOST:PORT (e.g. 127.0.0.1:5001)")
    return m[1], int(m[2])


class EmbeddedNode:
    """The API and gateway servers over one blockstore, on already-bound sockets.

    Args:
        store: The blockstore to serve.
        api: ``HOST:PORT`` for the Kubo RPC API (port 0 picks a free one).
        gateway: ``HOST:PORT`` for the gateway.
        pinning_token: Enables the Pinning Service API on the API server.
    """

    def __init__(
        self,
        store: Blockstore,
        api: str = "127.0.0.1:5001",
        gateway: str = "127.0.0.1:8080",
        pinning_token: str | None = None,
    ) -> None:
        self.store = store
        self._sockets = [_bind(api, "API"), _bind(gateway, "gateway")]
        apps = [create_api_app(store, pinning_token), create_gateway_app(store)]
        self._servers = [
            _Server(uvicorn.Config(a, log_level="warning", lifespan="off")) for a in apps
        ]
        self._thread: threading.Thread | None = None

    @property
    def api_url(self) -> str:
        """``http://host:port`` of the Kubo RPC API."""
        return _url(self._sockets[0])

    @property
    def gateway_url(self) -> str:
        """``http://host:port`` of the gateway."""
        return _url(self._sockets[1])

    async def _serve(self) -> None:
        await asyncio.gather(
            *(s.serve(sockets=[sock]) for s, sock in zip(self._servers, self._sockets, strict=True))
        )

    def run(self) -> None:
        """Serve in the foreground until SIGINT or SIGTERM, then stop both servers."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._request_stop)
            await self._serve()

        asyncio.run(main())

    def _request_stop(self) -> None:
        for server in self._servers:
            server.should_exit = True

    def start(self) -> EmbeddedNode:
        """Serve in a daemon thread; returns once both servers accept connections."""
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve()), name="ipfs-node", daemon=True
        )
        self._thread.start()
        while not all(s.started for s in self._servers):
            if not self._thread.is_alive():
                raise StorageError("the embedded IPFS node failed to start")
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        """Stop both servers and wait for the thread."""
        self._request_stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> EmbeddedNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handlers: two servers share one process, and
    :meth:`EmbeddedNode.run` stops both on one signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(addr: str, what: str) -> socket.socket:
    host, port = parse_address(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # NOTE: accepted connections inherit this; without it, Nagle's algorithm and delayed ACKs
    # add ~40 ms to every keep-alive request (a block-by-block download is many requests).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StorageError(f"cannot listen for the {what} on {addr}: {exc.strerror}") from None
    sock.listen(128)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


__all__ = ["CorruptBlock", "EmbeddedNode", "create_api_app", "create_gateway_app"]
