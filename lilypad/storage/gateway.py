"""The embedded node's HTTP gateway: ``GET/HEAD /ipfs/<cid>[/path]``.

Files with content types and range requests, directory listings (or ``index.html``), and trustless
responses (``?format=raw`` / ``?format=car`` or the matching ``Accept`` header).
"""

from __future__ import annotations

import html
import mimetypes
import re
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from lilypad.errors import BlockNotFound, InputError, LilypadError
from lilypad.storage import dag
from lilypad.storage.blockstore import Blockstore
from lilypad.storage.car import car_stream
from lilypad.storage.cid import CID
from lilypad.storage.unixfs import Link

_IMMUTABLE = "public, max-age=29030400, immutable"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


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
                car_stream(store, target, whole_dag=whole),
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
