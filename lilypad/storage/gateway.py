"""The embedded node's HTTP gateway: ``GET/HEAD /ipfs/<cid>[/path]``, as the IPFS path gateway and
trustless gateway specifications define it (https://specs.ipfs.tech/http-gateways/).

* Deserialized: files (content type from the name or the first bytes; ``Range`` with one or more
  ranges), directories (``index.html`` or a generated listing), symlinks (their text).
* Trustless: a block (``?format=raw`` / ``Accept: application/vnd.ipld.raw``) or a CAR
  (``?format=car`` / ``application/vnd.ipld.car``) holding the path's blocks and then the
  target's DAG per ``dag-scope`` and ``entity-bytes``; always ``version=1; order=dfs``, with
  ``dups=n`` unless ``dups=y`` is asked for.
* ``?format=tar``: the UnixFS tree at the path as a tar stream.
* HTTP caching: an Etag per response variant, ``If-None-Match`` answered 304, immutable
  ``Cache-Control``, ``Vary: Accept``; ``Cache-Control: only-if-cached`` answered 412 when the
  root block is absent.

The node has no peers and no IPNS: what is not in its store is 404 at once. No response names a
path on the node's disk.
"""

from __future__ import annotations

import hashlib
import html
import mimetypes
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import QueryParams

from lilypad import __version__
from lilypad.errors import BlockNotFound, InputError, LilypadError
from lilypad.storage import dag
from lilypad.storage.blockstore import Blockstore
from lilypad.storage.car import CAR_MEDIA_TYPE, DagScope, trustless_car
from lilypad.storage.cid import CID, CODEC_NAMES, DAG_PB, RAW
from lilypad.storage.unixfs import Link

_IMMUTABLE = "public, max-age=29030400, immutable"
RAW_MEDIA_TYPE = "application/vnd.ipld.raw"
TAR_MEDIA_TYPE = "application/x-tar"
#: Changes whenever the generated directory listing changes (it is part of the listing's Etag).
_LISTING_VERSION = f"{__version__}-1"
#: More ranges than this in one ``Range`` header are ignored (RFC 9110 lets a server refuse a
#: request that asks for many pieces: it is a common denial of service).
_MAX_RANGES = 16
#: Characters left as they are in a percent-encoded path (RFC 3986 ``pchar`` and ``/``).
_PATH_SAFE = "/!$&'()*+,;=:@~"
_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")
_ENTITY_BYTES = re.compile(r"(-?[0-9]+):(-?[0-9]+|\*)")
#: ``Accept`` types this gateway refuses (501). ``application/json`` and ``application/cbor`` are
#: not among them: generic HTTP clients send those, and they get the file.
_UNSUPPORTED_ACCEPT = (
    "application/vnd.ipld.dag-json",
    "application/vnd.ipld.dag-cbor",
    "application/vnd.ipfs.ipns-record",
)
#: The ``car-*`` query parameters and the values this gateway can honour.
_CAR_PARAMS = (("car-version", ("1",)), ("car-order", ("dfs", "unk")), ("car-dups", ("y", "n")))
#: ``format=`` values (and their media types) that name IPLD responses this node does not make.
_UNSUPPORTED = {
    "dag-json": "application/vnd.ipld.dag-json",
    "dag-cbor": "application/vnd.ipld.dag-cbor",
    "json": "application/json",
    "cbor": "application/cbor",
}


class _Refused(LilypadError):
    """A request answered with a specific status (412, 501...): the message is the body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class _Format:
    """The negotiated response: ``kind`` is ``unixfs`` (deserialized), ``raw``, ``car`` or ``tar``;
    ``dups`` for a CAR; ``from_accept`` when the ``Accept`` header chose it, not ``format=``."""

    kind: str
    dups: bool = False
    from_accept: bool = False


def create_gateway_app(store: Blockstore) -> FastAPI:
    """The HTTP gateway over ``store`` (path gateway and trustless gateway)."""
    app = FastAPI(title="lilypad IPFS gateway", docs_url=None, redoc_url=None, openapi_url=None)
    _text_errors(app, store)
    source = _Source(store)

    @app.api_route("/ipfs/{rest:path}", methods=["GET", "HEAD"])
    def ipfs_path(rest: str, request: Request) -> Response:
        return _Exchange(store, source, request, rest).respond()

    @app.api_route("/ipns/{rest:path}", methods=["GET", "HEAD"])
    def ipns_path(rest: str) -> Response:
        raise _Refused(
            501,
            f"/ipns/{rest} cannot be resolved: this node has no IPNS or DNSLink; "
            "ask for the content by CID, /ipfs/<cid>[/path]",
        )

    return app


class _Source:
    """The store as a block source whose "not found" errors name only the CID (the store's own
    name the folder it lives in, which a gateway must not show)."""

    def __init__(self, store: Blockstore) -> None:
        self._store = store

    def get(self, cid: CID) -> bytes:
        try:
            return self._store.get(cid)
        except BlockNotFound:
            raise BlockNotFound(
                f"block {cid} is not on this node (it serves only what was added to it)"
            ) from None


class _Exchange:
    """One request to ``/ipfs/...`` and the response built for it."""

    def __init__(self, store: Blockstore, source: _Source, request: Request, rest: str) -> None:
        self.store = store
        self.source = source
        self.request = request
        self.rest = rest
        self.cid_text, _, self.subpath = rest.partition("/")
        self.query = request.query_params
        self.headers: dict[str, str] = {"Vary": "Accept"}

    # --- dispatch ------------------------------------------------------------------------------
    def respond(self) -> Response:
        if not self.cid_text:
            raise InputError("no CID in the path; ask for /ipfs/<cid>[/path]")
        if self.request.headers.get("service-worker") == "script" and "/" not in self.rest:
            raise InputError(
                f"a service worker cannot be registered for /ipfs/{self.rest} (the whole "
                f"gateway would be its scope); register it under /ipfs/{self.rest}/"
            )
        fmt = _negotiate(self.request)
        root = CID.parse(self.cid_text)
        if "only-if-cached" in self.request.headers.get("cache-control", "") and not (
            self.store.has(root)
        ):
            return Response(status_code=412)  # NOTE: the spec asks for no payload
        trace = dag.trace_path(self.source, root, self.subpath)
        self.headers["X-Ipfs-Path"] = quote(f"/ipfs/{self.rest}", safe=_PATH_SAFE)
        self.headers["X-Ipfs-Roots"] = ",".join(str(cid) for cid in trace.roots)
        if fmt.from_accept:
            self.headers["Content-Location"] = self._location(fmt)
        if fmt.kind == "raw":
            return self._raw(trace.target)
        if fmt.kind == "car":
            return self._car(trace, fmt.dups)
        if fmt.kind == "tar":
            return self._tar(trace.target)
        return self._deserialized(trace.target)

    def _location(self, fmt: _Format) -> str:
        """This URL with the negotiated format in its query (so caches keep variants apart)."""
        params = [
            (k, v) for k, v in self.query.multi_items() if not k.startswith(("format", "car-"))
        ]
        params.append(("format", fmt.kind))
        if fmt.kind == "car":
            params += [("car-order", "dfs"), ("car-dups", "y" if fmt.dups else "n")]
        return f"{quote(f'/ipfs/{self.rest}', safe=_PATH_SAFE)}?{urlencode(params)}"

    # --- trustless responses -------------------------------------------------------------------
    def _raw(self, target: CID) -> Response:
        data = self.source.get(target)
        self.headers["X-Content-Type-Options"] = "nosniff"
        self.headers["Content-Disposition"] = self._disposition(f"{target}.bin", attachment=True)
        return self._ranged(
            f'"{target}.raw"', RAW_MEDIA_TYPE, len(data), lambda a, b: iter([data[a : b + 1]])
        )

    def _car(self, trace: dag.PathTrace, dups: bool) -> Response:
        target = trace.target
        scope = self._dag_scope()
        entity_bytes = self.query.get("entity-bytes")
        self.source.get(target)  # NOTE: a missing target is a 404 now, not a broken stream later
        byte_range = None
        if entity_bytes is not None:
            scope = DagScope.ENTITY
            byte_range = self._entity_range(target, entity_bytes)
            if byte_range == (0, -1):
                scope, byte_range = DagScope.BLOCK, None
        variant = f"{self.rest}|{scope}|{entity_bytes}|dfs|{'y' if dups else 'n'}"
        digest = hashlib.sha256(variant.encode()).hexdigest()[:16]
        etag = f'"{target}.car.{digest}"'
        self.headers["X-Content-Type-Options"] = "nosniff"
        self.headers["Content-Disposition"] = self._disposition(f"{target}.car", attachment=True)
        self.headers["Accept-Ranges"] = "none"
        if _matches(self.request.headers.get("if-none-match"), etag):
            return self._not_modified(etag)
        media_type = f"{CAR_MEDIA_TYPE}; version=1; order=dfs; dups={'y' if dups else 'n'}"
        body = trustless_car(self.source, trace, scope, byte_range, dups=dups)
        return self._send(200, etag, media_type, body, None)

    def _dag_scope(self) -> DagScope:
        value = self.query.get("dag-scope", "all")
        try:
            return DagScope(value)
        except ValueError:
            raise InputError(f"dag-scope {value!r} is not one of block, entity, all") from None

    def _entity_range(self, target: CID, text: str) -> tuple[int, int] | None:
        """``entity-bytes`` as inclusive offsets into a file target; ``None`` if the target is not
        a file (the parameter is then ignored); ``(0, -1)`` for a range of no bytes."""
        match = _ENTITY_BYTES.fullmatch(text)
        if match is None:
            raise InputError(
                f"entity-bytes {text!r} is not FROM:TO (integers, negative from the end; TO may "
                "be *), e.g. 0:1023 or -1024:*"
            )
        entry = dag.stat(self.source, target) if target.codec in (DAG_PB, RAW) else None
        if entry is None or entry.kind != "file":
            return None
        size = entry.size
        first = int(match[1]) if int(match[1]) >= 0 else max(size + int(match[1]), 0)
        last = size - 1 if match[2] == "*" else int(match[2])
        last = min(last if last >= 0 else size + last, size - 1)
        if size and first >= size:
            raise InputError(
                f"entity-bytes {text!r} starts at byte {first}, past the end of {target} "
                f"({size} bytes)"
            )
        return (first, last) if first <= last else (0, -1)

    def _tar(self, target: CID) -> Response:
        names = dag.split_path(self.subpath)
        name = names[-1] if names else str(target)
        dag.stat(self.source, target)  # NOTE: a missing target is a 404 now
        self.headers["Content-Disposition"] = self._disposition(f"{name}.tar", attachment=True)
        self.headers["X-Content-Type-Options"] = "nosniff"
        etag = f'"{target}.x-tar"'
        if _matches(self.request.headers.get("if-none-match"), etag):
            return self._not_modified(etag)
        return self._send(
            200, etag, TAR_MEDIA_TYPE, dag.tar_stream(self.source, target, name), None
        )

    # --- deserialized responses ----------------------------------------------------------------
    def _deserialized(self, target: CID) -> Response:
        if target.codec not in (DAG_PB, RAW):
            self.source.get(target)  # NOTE: a block that is not here is 404 first
            codec = CODEC_NAMES.get(target.codec, f"0x{target.codec:x}")
            raise _Refused(
                501,
                f"{target} is {codec}, not UnixFS: this gateway deserializes only UnixFS; ask "
                "for the block with ?format=raw or a CAR with ?format=car",
            )
        entry = dag.stat(self.source, target)
        name = self.subpath
        if entry.kind == "directory":
            if not self.request.url.path.endswith("/"):
                return self._redirect_to_slash()
            links = dag.list_directory(self.source, target)
            index = next((link for link in links if link.name == "index.html"), None)
            if index is None:
                return self._listing(target, links)
            entry = dag.stat(self.source, index.cid)
            name = "index.html"
        if entry.kind == "symlink":
            text = dag.read_symlink(self.source, entry.cid)
            return self._ranged(
                f'"{entry.cid}"', "inode/symlink", len(text), lambda a, b: iter([text[a : b + 1]])
            )
        filename = self.query.get("filename")
        if filename is not None or self.query.get("download") == "true":
            shown = filename or name.rsplit("/", 1)[-1] or str(entry.cid)
            self.headers["Content-Disposition"] = self._disposition(
                shown, attachment=self.query.get("download") == "true"
            )
        head = b"".join(dag.read_file(self.source, entry.cid, 0, 512)) if entry.size else b""
        media_type = _content_type(filename or name, head)
        return self._ranged(
            f'"{entry.cid}"',
            media_type,
            entry.size,
            lambda a, b: dag.read_file(self.source, entry.cid, a, b - a + 1),
        )

    def _redirect_to_slash(self) -> Response:
        location = quote(f"/ipfs/{self.rest}/", safe=_PATH_SAFE)
        if self.request.url.query:
            location += f"?{self.request.url.query}"
        return Response(status_code=301, headers={**self.headers, "Location": location})

    def _listing(self, target: CID, links: list[Link]) -> Response:
        etag = f'"DirIndex-{_LISTING_VERSION}_CID-{target}"'
        if _matches(self.request.headers.get("if-none-match"), etag):
            return self._not_modified(etag)
        page = _listing(f"/ipfs/{self.rest}", links).encode()
        return self._send(200, etag, "text/html; charset=utf-8", page, len(page))

    # --- common --------------------------------------------------------------------------------
    def _disposition(self, default: str, *, attachment: bool) -> str:
        """``Content-Disposition`` with an ASCII ``filename`` and, if needed, an RFC 8187 one."""
        name = self.query.get("filename") or default
        kind = "attachment" if attachment or self.query.get("download") == "true" else "inline"
        ascii_name = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in name)
        value = f'{kind}; filename="{ascii_name}"'
        if ascii_name != name:
            value += f"; filename*=UTF-8''{quote(name, safe='')}"
        return value

    def _ranged(
        self, etag: str, media_type: str, size: int, read: Callable[[int, int], Iterator[bytes]]
    ) -> Response:
        """A body of ``size`` bytes (``read(first, last)`` yields a piece), whole or ranged."""
        if _matches(self.request.headers.get("if-none-match"), etag):
            return self._not_modified(etag)
        self.headers["Accept-Ranges"] = "bytes"
        ranges = _byte_ranges(self.request.headers.get("range"), size)
        if_range = self.request.headers.get("if-range")
        if ranges is None or (if_range is not None and if_range.strip() != etag):
            return self._send(200, etag, media_type, read(0, size - 1), size)
        if not ranges:
            return Response(
                f"range {self.request.headers['range']!r} is outside the {size} bytes\n",
                status_code=416,
                headers={"Content-Range": f"bytes */{size}", "Content-Type": "text/plain"},
            )
        if len(ranges) == 1:
            first, last = ranges[0]
            self.headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            return self._send(206, etag, media_type, read(first, last), last - first + 1)
        boundary = secrets.token_hex(16)
        heads = [
            f"{chr(13) + chr(10) if i else ''}--{boundary}\r\nContent-Type: {media_type}\r\n"
            f"Content-Range: bytes {first}-{last}/{size}\r\n\r\n".encode()
            for i, (first, last) in enumerate(ranges)
        ]
        tail = f"\r\n--{boundary}--\r\n".encode()
        length = sum(map(len, heads)) + sum(b - a + 1 for a, b in ranges) + len(tail)

        def parts() -> Iterator[bytes]:
            for head, (first, last) in zip(heads, ranges, strict=True):
                yield head
                yield from read(first, last)
            yield tail

        multipart = f"multipart/byteranges; boundary={boundary}"
        return self._send(206, etag, multipart, parts(), length)

    def _not_modified(self, etag: str) -> Response:
        return Response(
            status_code=304, headers={**self.headers, "Etag": etag, "Cache-Control": _IMMUTABLE}
        )

    def _send(
        self,
        status: int,
        etag: str,
        media_type: str,
        body: bytes | Iterable[bytes],
        length: int | None,
    ) -> Response:
        headers = {
            **self.headers,
            "Etag": etag,
            "Cache-Control": _IMMUTABLE,
            "Content-Type": media_type,
        }
        if length is not None:
            headers["Content-Length"] = str(length)
        if self.request.method == "HEAD":
            response = Response(status_code=status, headers=headers)
            if length is None:  # NOTE: unknown (a CAR): say nothing rather than 0
                del response.headers["content-length"]
            return response
        if isinstance(body, bytes):
            return Response(body, status_code=status, headers=headers)
        return StreamingResponse(body, status_code=status, headers=headers)


def _negotiate(request: Request) -> _Format:
    """The response format: ``format=`` first, then the most preferred known ``Accept`` type.

    Raises:
        InputError: An unknown ``format`` or a bad ``car-*`` parameter.
        _Refused: A format this gateway does not produce (501), or only CAR variants it cannot
            write were acceptable (406).
    """
    query = request.query_params
    accepted = _parse_accept(request.headers.get("accept", ""))
    fmt = query.get("format")
    if fmt is not None:
        if fmt in ("raw", "tar"):
            return _Format(fmt)
        if fmt == "car":
            car = next((params for kind, params in accepted if kind == CAR_MEDIA_TYPE), {})
            return _Format("car", dups=_car_dups(car, query))
        if fmt in _UNSUPPORTED:
            raise _Refused(501, f"format {fmt!r} is not supported; use raw, car or tar")
        if fmt == "ipns-record":
            raise InputError("format 'ipns-record' needs an /ipns/ name; this node has no IPNS")
        raise InputError(f"format {fmt!r} is not known; use raw, car or tar (or leave it out)")
    refused_car = None
    for kind, params in accepted:
        if kind == RAW_MEDIA_TYPE:
            return _Format("raw", from_accept=True)
        if kind == TAR_MEDIA_TYPE:
            return _Format("tar", from_accept=True)
        if kind == CAR_MEDIA_TYPE:
            if _car_variant_ok(params):
                return _Format("car", dups=_car_dups(params, query), from_accept=True)
            refused_car = "; ".join(f"{k}={v}" for k, v in params.items())
        elif kind in _UNSUPPORTED_ACCEPT:
            raise _Refused(501, f"{kind} is not supported; ask for a file, raw, car or tar")
    if refused_car is not None:
        raise _Refused(
            406,
            f"CAR variant {refused_car!r} is not available; this gateway writes "
            "application/vnd.ipld.car; version=1; order=dfs; dups=n (or dups=y)",
        )
    return _Format("unixfs")


def _parse_accept(header: str) -> list[tuple[str, dict[str, str]]]:
    """Media ranges of an ``Accept`` header, most preferred first (``q=0`` left out)."""
    ranges: list[tuple[float, int, str, dict[str, str]]] = []
    for i, item in enumerate(header.split(",")):
        kind, *rest = (part.strip() for part in item.split(";"))
        params = {}
        for part in rest:
            key, _, value = part.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if kind and q > 0:
            ranges.append((-q, i, kind.lower(), params))
    return [(kind, params) for _, _, kind, params in sorted(ranges)]


def _car_variant_ok(params: dict[str, str]) -> bool:
    return (
        params.get("version", "1") == "1"
        and params.get("order", "dfs") in ("dfs", "unk", "")
        and params.get("dups", "n") in ("y", "n")
    )


def _car_dups(accept: dict[str, str], query: QueryParams) -> bool:
    """Whether the CAR repeats duplicate blocks: ``car-dups=`` first, then the Accept params.

    Raises:
        InputError: A ``car-version``, ``car-order`` or ``car-dups`` this gateway cannot honour.
    """
    for key, allowed in _CAR_PARAMS:
        value = query.get(key)
        if value is not None and value not in allowed:
            raise InputError(f"{key} {value!r} is not supported; use {' or '.join(allowed)}")
    return (query.get("car-dups") or accept.get("dups", "n")) == "y"


def _matches(header: str | None, etag: str) -> bool:
    """``If-None-Match`` against an Etag (weak comparison, as RFC 9110 asks for this header)."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    return etag.removeprefix("W/") in {tag.strip().removeprefix("W/") for tag in header.split(",")}


def _byte_ranges(header: str | None, size: int) -> list[tuple[int, int]] | None:
    """The satisfiable ranges of a ``Range`` header as inclusive offsets (RFC 9110 §14.1-14.2).

    ``None`` when the header is to be ignored (absent, another unit, malformed, reversed, too
    many ranges, or an empty body): the whole body is sent. ``[]`` when no range is satisfiable.
    """
    if header is None or size == 0:
        return None
    unit, sep, specs = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parsed: list[tuple[str, str]] = []
    for spec in specs.split(","):
        if not spec.strip():
            continue
        match = _RANGE_SPEC.fullmatch(spec.strip())
        if match is None or not (match[1] or match[2]):
            return None
        if match[1] and match[2] and int(match[2]) < int(match[1]):
            return None
        parsed.append((match[1], match[2]))
    if not parsed or len(parsed) > _MAX_RANGES:
        return None
    ranges = []
    for first, last in parsed:
        if not first:  # the last N bytes
            if int(last):
                ranges.append((max(size - int(last), 0), size - 1))
        elif int(first) < size:
            ranges.append((int(first), min(int(last), size - 1) if last else size - 1))
    return ranges


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
        return f"{guessed}; charset=utf-8" if guessed.startswith("text/") else guessed
    for magic, media_type in _MAGIC:
        if head.startswith(magic):
            return media_type
    if head[4:8] == b"ftyp":
        return "video/mp4"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    try:
        head.decode()
    except UnicodeDecodeError as exc:
        # NOTE: the first 512 bytes of a longer text may end inside a character.
        if len(head) < 512 or exc.start < len(head) - 3 or exc.reason != "unexpected end of data":
            return "application/octet-stream"
    return "text/plain; charset=utf-8"


def _listing(path: str, links: list[Link]) -> str:
    base = quote(path if path.endswith("/") else f"{path}/", safe=_PATH_SAFE)
    rows = "\n".join(
        f'<tr><td><a href="{html.escape(base + quote(link.name, safe=""))}">'
        f"{html.escape(link.name)}</a></td><td>{link.tsize}</td><td><code>{link.cid}</code>"
        "</td></tr>"
        for link in links
    )
    title = html.escape(path)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><h1>Index of {title}</h1><table><tr><th>name</th><th>size</th><th>CID</th></tr>"
        f"{rows}</table></body></html>"
    )


def _text_errors(app: FastAPI, store: Blockstore) -> None:
    # NOTE: an error from the disk (a pack that cannot be opened) can name the repository's
    # folder; no response may show where the node keeps its data.
    folders = {str(store.root), str(store.root.resolve())}

    @app.exception_handler(LilypadError)
    def _handle(request: Request, exc: LilypadError) -> Response:
        message = str(exc)
        for folder in folders:
            message = message.replace(folder, "<repository>")
        return PlainTextResponse(message + "\n", status_code=_status(exc))


def _status(exc: LilypadError) -> int:
    if isinstance(exc, _Refused):
        return exc.status
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, BlockNotFound):
        return 404
    return 500
