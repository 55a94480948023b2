"""The embedded node's Kubo RPC API (``/api/v0``), and the IPFS Pinning Service API (``/pins``,
:mod:`lilypad.storage.pinning`) on the same server.

**Kubo RPC** answers as kubo :data:`KUBO_VERSION` does for the commands it serves (POST only,
as kubo): ``add``, ``cat``, ``get``, ``ls``, ``refs``, ``block/get|put|stat``,
``dag/get|import|export``, ``pin/add|ls|rm|verify``, ``repo/gc``, ``id``, ``version``. Every
error is kubo's ``{"Message", "Code": 0, "Type": "error"}``: 400 for a bad parameter or input
(naming it and what is allowed), 404 for a command this node does not have, 405 for a method
other than POST, 500 for a failure (a missing block says ``block was not found locally
(offline)``: the node has no peers).
An option that would change a CID and that this node cannot honour (``trickle``, ``inline``,
``hash`` other than sha2-256, ``rabin``/``buzhash`` chunkers, ``nocopy``...) is refused, never
ignored: a client must not get a CID other than the one kubo would give it.

Uploads (``add``, ``block/put``, ``dag/import``) are read part by part as the body arrives
(:mod:`lilypad.storage.multipart`), each file going straight into the importer, and are atomic:
every block goes into one blockstore writer committed only when the body ended with its closing
boundary and every part was valid; a cut or bad upload stores and pins nothing.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.from_thread
import libipld
from Crypto.PublicKey import ECC
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lilypad import __version__
from lilypad.errors import (
    BlockNotFound,
    BlockTooLarge,
    InputError,
    LilypadError,
    StorageError,
)
from lilypad.storage import dag
from lilypad.storage.blockstore import Blockstore, PinType
from lilypad.storage.car import car_stream, import_car
from lilypad.storage.cid import CID, DAG_PB, HASHES, RAW, SHA2_256, encode_varint
from lilypad.storage.client import DIRECTORY_PART, SYMLINK_PART
from lilypad.storage.importer import MAX_CHUNK_SIZE, MAX_SYMLINK_TARGET, Importer, ImportProfile
from lilypad.storage.multipart import MultipartReader, Part
from lilypad.storage.pinning import add_pinning_service, is_pinning_service, psa_error
from lilypad.storage.unixfs import Link, NodeType, decode_node

#: The kubo release whose RPC behaviour this node implements and reports in ``version``.
#: NOTE: 0.35.0 is the release the Kubo RPC reference at docs.ipfs.tech documents (the parameter
#: names, response shapes and errors followed here); it is recent enough for kubo-rpc-client 7
#: and for clients that refuse old nodes, and its repository version is 16.
KUBO_VERSION = "0.35.0"
KUBO_REPO_VERSION = "16"
#: kubo's largest block (``--allow-big-block`` lifts it); bitswap cannot move bigger ones.
BLOCK_LIMIT = 1024 * 1024
#: The largest block accepted even with ``allow-big-block`` (the CAR reader's section limit).
BIG_BLOCK_LIMIT = 8 * 1024 * 1024
DAG_CBOR = 0x71
#: Codecs ``block/put`` accepts, by multicodec name; each is checked to decode.
BLOCK_CODECS = {"raw": RAW, "dag-pb": DAG_PB, "dag-cbor": DAG_CBOR}
_HASH_CODES = {name: code for code, (name, _) in HASHES.items()}
_DIRECTORY_KINDS = (DIRECTORY_PART, "multipart/form-data")


# --- errors -------------------------------------------------------------------------------------


def _kubo_error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"Message": message, "Code": 0, "Type": "error"}, status_code=status)


def _error_handlers(app: FastAPI) -> None:
    """Every error the app answers, in kubo's shape (or the Pinning Service API's under /pins)."""

    @app.exception_handler(LilypadError)
    def _lilypad(request: Request, exc: LilypadError) -> Response:
        status = 400 if isinstance(exc, InputError) else 500
        if is_pinning_service(request):
            reason = "BAD_REQUEST" if status == 400 else "INTERNAL_SERVER_ERROR"
            return psa_error(reason, str(exc), status)
        message = str(exc)
        if isinstance(exc, BlockNotFound):
            message = f"block was not found locally (offline): {message}"
        return _kubo_error(message, status)

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path
        if is_pinning_service(request):
            reason = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "ERROR")
            return psa_error(reason, f"{request.method} {path}: {exc.detail}", exc.status_code)
        if exc.status_code == 404:
            command = path.removeprefix("/api/v0/")
            message = f"404 page not found: {command!r} is not a command of this node"
        elif exc.status_code == 405:
            message = f"405 - Method Not Allowed: the RPC API takes POST, not {request.method}"
        else:
            message = str(exc.detail)
        return _kubo_error(message, exc.status_code)

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> Response:
        message = "; ".join(_validation_message(error) for error in exc.errors())
        if is_pinning_service(request):
            return psa_error("BAD_REQUEST", message, 400)
        return _kubo_error(message, 400)


def _validation_message(error: Mapping[str, Any]) -> str:
    name = str(error.get("loc", ("", "?"))[-1])
    if error.get("type") == "missing":
        return f"argument {name!r} is required"
    return f"invalid value {error.get('input')!r} for option {name!r}: {error.get('msg', '')}"


class _Params:
    """A command's query options, parsed as kubo parses them; a bad value is a 400 naming it."""

    def __init__(self, command: str, query: Mapping[str, str]) -> None:
        self.command = command
        self.query = query

    def text(self, name: str, default: str) -> str:
        return self.query.get(name, default)

    def given(self, name: str) -> bool:
        return self.query.get(name, "") != ""

    def bool(self, name: str, default: bool) -> bool:
        value = self.query.get(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("", "1", "t", "true"):  # NOTE: a bare flag (``?pin``) is true in kubo
            return True
        if lowered in ("0", "f", "false"):
            return False
        raise InputError(
            f"{self.command}: option {name}={value!r} is not a boolean; use true or false"
        )

    def int(self, name: str, default: int) -> int:
        value = self.query.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise InputError(f"{self.command}: option {name}={value!r} is not an integer") from None


def _body_chunks(request: Request) -> Iterator[bytes]:
    """The request body, pulled from a worker thread (the importer blocks; the loop must not)."""
    stream = request.stream()
    while True:
        try:
            chunk = anyio.from_thread.run(stream.__anext__)
        except StopAsyncIteration:
            return
        if chunk:
            yield chunk


def _ndjson(lines: Iterable[Mapping[str, Any]]) -> Response:
    body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    return Response(body, media_type="application/x-ndjson")


# --- the app ------------------------------------------------------------------------------------


def create_api_app(store: Blockstore, pinning_token: str | None = None) -> FastAPI:
    """The Kubo RPC API over ``store``; with ``pinning_token``, also the Pinning Service API."""
    app = FastAPI(title="lilypad IPFS API", docs_url=None, redoc_url=None, openapi_url=None)
    _error_handlers(app)
    identity = _Identity(store.root)
    _info_commands(app, identity)
    _upload_commands(app, store)
    _read_commands(app, store)
    _block_and_dag_commands(app, store)
    _pin_commands(app, store)
    if pinning_token:
        add_pinning_service(app, store, pinning_token, identity.peer_id)
    return app


def _info_commands(app: FastAPI, identity: _Identity) -> None:
    @app.post("/api/v0/version")
    def version() -> dict[str, str]:
        machine = platform.machine().lower()
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
        return {
            "Version": KUBO_VERSION,
            "Commit": "",
            "Repo": KUBO_REPO_VERSION,
            "System": f"{arch}/{platform.system().lower()}",
            "Golang": f"none: lilypad {__version__} on Python {platform.python_version()}",
        }

    @app.post("/api/v0/id")
    def node_id(arg: str | None = None) -> dict[str, Any]:
        if arg not in (None, "", identity.peer_id):
            raise StorageError(
                f"cannot look up peer {arg!r}: this node has no peers; it knows only itself "
                f"({identity.peer_id})"
            )
        return {
            "ID": identity.peer_id,
            "PublicKey": base64.b64encode(identity.public_key_proto).decode(),
            "Addresses": [],
            "AgentVersion": f"kubo/{KUBO_VERSION}/lilypad-{__version__}",
            "Protocols": [],
        }


def _upload_commands(app: FastAPI, store: Blockstore) -> None:
    @app.post("/api/v0/add")
    async def add(request: Request) -> Response:
        options = _AddOptions.parse(_Params("add", request.query_params))
        ctype = request.headers.get("content-type", "")
        lines = await run_in_threadpool(_add, store, options, ctype, _body_chunks(request))
        return _ndjson(lines)

    @app.post("/api/v0/block/put")
    async def block_put(request: Request) -> Response:
        options = _BlockOptions.parse(_Params("block/put", request.query_params))
        ctype = request.headers.get("content-type", "")
        lines = await run_in_threadpool(_block_put, store, options, ctype, _body_chunks(request))
        return _ndjson(lines)

    @app.post("/api/v0/dag/import")
    async def dag_import(request: Request) -> Response:
        params = _Params("dag/import", request.query_params)
        options = _ImportOptions(
            pin_roots=params.bool("pin-roots", True),
            silent=params.bool("silent", False),
            stats=params.bool("stats", False),
            allow_big=params.bool("allow-big-block", False),
        )
        ctype = request.headers.get("content-type", "")
        lines = await run_in_threadpool(_dag_import, store, options, ctype, _body_chunks(request))
        return _ndjson(lines)


def _read_commands(app: FastAPI, store: Blockstore) -> None:
    @app.post("/api/v0/cat")
    def cat(arg: str, offset: int = 0, length: int | None = None) -> Response:
        if offset < 0 or (length is not None and length < 0):
            raise InputError(f"cat: offset {offset} and length {length} must not be negative")
        target = _resolve(store, arg).cid
        entry = dag.stat(store, target)
        if entry.kind != "file":
            raise StorageError(f"cat {arg}: this dag node is a {entry.kind}, not a file")
        if offset > entry.size:
            raise StorageError(f"cat {arg}: offset was past end of file ({offset} > {entry.size})")
        store.check_complete(target)  # NOTE: fail with a status now, not in the middle of a stream
        return StreamingResponse(
            dag.read_file(store, target, offset, length), media_type="application/octet-stream"
        )

    @app.post("/api/v0/get")
    def get(
        arg: str,
        archive: bool = False,
        compress: bool = False,
        level: int | None = Query(None, alias="compression-level"),
    ) -> Response:
        resolved = _resolve(store, arg)
        gzip_level = _gzip_level(compress, level)
        entry = dag.stat(store, resolved.cid)
        store.check_complete(resolved.cid)
        if gzip_level is not None and not archive:
            # kubo: with compress and no archive, a file comes gzipped as itself
            if entry.kind != "file":
                raise InputError(
                    f"get {arg}: compress without archive gzips one file, and this is a "
                    f"{entry.kind}; add archive=true for a .tar.gz"
                )
            chunks = dag.read_file(store, resolved.cid)
            return StreamingResponse(_gzip(chunks, gzip_level), media_type="application/gzip")
        tar = dag.tar_stream(store, resolved.cid, resolved.name)
        if gzip_level is None:
            return StreamingResponse(tar, media_type="application/x-tar")
        return StreamingResponse(_gzip(tar, gzip_level), media_type="application/gzip")

    @app.post("/api/v0/ls")
    def ls(arg: list[str] = Query()) -> dict[str, Any]:
        return {"Objects": [_ls_object(store, one) for one in arg]}

    @app.post("/api/v0/refs")
    def refs(
        arg: list[str] = Query(),
        recursive: bool = False,
        unique: bool = False,
        edges: bool = False,
        format: str = "<dst>",
        max_depth: int = Query(-1, alias="max-depth"),
    ) -> Response:
        if edges and format != "<dst>":
            raise InputError("refs: using format together with edges is not allowed (as kubo)")
        template = "<src> -> <dst>" if edges else format
        depth = max_depth if recursive else 1
        seen: set[CID] = set()
        lines = [
            {"Ref": ref, "Err": ""}
            for one in arg
            for ref in _refs(store, _resolve(store, one).cid, template, depth, unique, seen)
        ]
        return _ndjson(lines)


def _block_and_dag_commands(app: FastAPI, store: Blockstore) -> None:
    @app.post("/api/v0/block/get")
    def block_get(arg: str) -> Response:
        return Response(store.get(_resolve(store, arg).cid), media_type="application/octet-stream")

    @app.post("/api/v0/block/stat")
    def block_stat(arg: str) -> dict[str, Any]:
        target = _resolve(store, arg).cid
        return {"Key": str(target), "Size": store.size(target)}

    @app.post("/api/v0/dag/get")
    def dag_get(arg: str, output_codec: str = Query("dag-json", alias="output-codec")) -> Response:
        if output_codec != "dag-json":
            raise InputError(
                f"dag/get: output-codec={output_codec!r} is not supported; use dag-json"
            )
        target = _resolve(store, arg).cid
        return Response(_dag_json(target, store.get(target)), media_type="application/json")

    @app.post("/api/v0/dag/export")
    def dag_export(arg: str) -> Response:
        target = _resolve(store, arg).cid
        store.check_complete(target)  # NOTE: fail with a status code now, not mid-stream
        return StreamingResponse(
            car_stream(store, target), media_type="application/vnd.ipld.car; version=1"
        )


def _pin_commands(app: FastAPI, store: Blockstore) -> None:
    @app.post("/api/v0/pin/add")
    def pin_add(arg: list[str] = Query(), recursive: bool = True) -> dict[str, list[str]]:
        targets = [_resolve(store, one).cid for one in arg]
        for target in targets:
            store.pin(target, PinType.RECURSIVE if recursive else PinType.DIRECT)
        return {"Pins": [str(t) for t in targets]}

    @app.post("/api/v0/pin/rm")
    def pin_rm(arg: list[str] = Query()) -> dict[str, list[str]]:
        targets = [_resolve(store, one).cid for one in arg]
        for target in targets:
            store.unpin(target)
        return {"Pins": [str(t) for t in targets]}

    @app.post("/api/v0/pin/ls")
    def pin_ls(arg: str | None = None, type: str = "all") -> dict[str, Any]:
        if type not in ("all", "recursive", "direct", "indirect"):
            raise InputError(
                f"pin/ls: invalid type {type!r}, must be one of direct, indirect, recursive, all"
            )
        pins = store.pins()
        if arg is not None:
            wanted = _resolve(store, arg).cid
            if wanted not in pins:
                raise StorageError(f"path '{arg}' is not pinned")
            pins = {wanted: pins[wanted]}
        keys = {str(c): {"Type": t.value} for c, t in pins.items() if type in ("all", t.value)}
        return {"Keys": keys}

    @app.post("/api/v0/pin/verify")
    def pin_verify(verbose: bool = False) -> Response:
        lines = []
        for cid, kind in store.pins().items():
            bad = store.verify(cid) if kind is PinType.RECURSIVE else _verify_block(store, cid)
            if bad or verbose:
                line: dict[str, Any] = {"Cid": str(cid), "Ok": not bad}
                if bad:
                    line["BadNodes"] = [{"Cid": str(c), "Err": why} for c, why in bad]
                lines.append(line)
        return _ndjson(lines)

    @app.post("/api/v0/repo/gc")
    def repo_gc() -> dict[str, int]:
        return {"Removed": store.gc()}


# --- paths --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Resolved:
    """What an ``arg`` names: the CID and the entry's name (the last path segment, as kubo's
    ``get`` names its tar entry; the CID text when there is no path)."""

    cid: CID
    name: str


def _resolve(store: Blockstore, arg: str) -> _Resolved:
    """A kubo ``arg``: ``<cid>``, ``/ipfs/<cid>`` or ``/ipfs/<cid>/path``."""
    text = arg.strip().removeprefix("/ipfs/")
    cid_text, _, subpath = text.partition("/")
    root = CID.parse(cid_text)
    names = dag.split_path(subpath)
    return _Resolved(dag.resolve(store, root, subpath), names[-1] if names else cid_text)


# --- add ----------------------------------------------------------------------------------------

#: Options that change what ``add`` produces and that this node refuses rather than ignores.
_REFUSED_FLAGS = {
    "trickle": "only balanced DAGs are built (kubo's default layout)",
    "inline": "inline (identity) CIDs are not produced",
    "nocopy": "there is no filestore: blocks are always copied into the repository",
    "fscache": "there is no filestore",
    "preserve-mode": "UnixFS mode metadata is not stored",
    "preserve-mtime": "UnixFS mtime metadata is not stored",
}
_REFUSED_VALUES = {
    "to-files": "there is no MFS (Files API)",
    "mode": "UnixFS mode metadata is not stored",
    "mtime": "UnixFS mtime metadata is not stored",
    "mtime-nsecs": "UnixFS mtime metadata is not stored",
}


@dataclass(frozen=True, slots=True)
class _AddOptions:
    profile: ImportProfile
    pin: bool
    only_hash: bool
    wrap: bool
    quieter: bool
    silent: bool
    progress: bool

    @classmethod
    def parse(cls, params: _Params) -> _AddOptions:
        for name, why in _REFUSED_FLAGS.items():
            if params.bool(name, False):
                raise InputError(f"add: {name}=true is not supported by this node: {why}")
        for name, why in _REFUSED_VALUES.items():
            if params.given(name):
                raise InputError(
                    f"add: {name}={params.text(name, '')!r} is not supported by this node: {why}"
                )
        params.int("inline-limit", 32)  # NOTE: only checked: inline itself is refused
        hash_name = params.text("hash", "sha2-256")
        if hash_name != "sha2-256":
            raise InputError(
                f"add: hash={hash_name!r} is not supported; this node builds UnixFS DAGs with "
                "sha2-256 only (kubo's default)"
            )
        version = params.int("cid-version", 0)
        if version not in (0, 1):
            raise InputError(f"add: cid-version={version} is not supported; use 0 or 1")
        chunker = params.text("chunker", "size-262144")
        match = re.fullmatch(r"size-(\d{1,8})", chunker)
        if match is None or not 1 <= int(match[1]) <= MAX_CHUNK_SIZE:
            raise InputError(
                f"add: chunker={chunker!r} is not supported; use size-N with N from 1 to "
                f"{MAX_CHUNK_SIZE} (rabin and buzhash chunkers are not implemented)"
            )
        profile = ImportProfile(
            cid_version=version,
            raw_leaves=params.bool("raw-leaves", version == 1),
            chunk_size=int(match[1]),
        )
        return cls(
            profile=profile,
            pin=params.bool("pin", True),
            only_hash=params.bool("only-hash", False),
            wrap=params.bool("wrap-with-directory", False),
            quieter=params.bool("quieter", False),
            silent=params.bool("silent", False),
            progress=params.bool("progress", False),
        )


@dataclass
class _File:
    """A file or symlink part, imported as it arrived."""

    link: Link
    size: int
    is_file: bool


@dataclass
class _Dir:
    children: dict[str, _Dir | _File] = field(default_factory=dict)


class _Upload:
    """The tree an ``add`` builds: file parts are imported as they arrive, directories (which
    need all their entries) at the end."""

    def __init__(self, importer: Importer) -> None:
        self.importer = importer
        self.top = _Dir()
        self.unnamed: list[_File] = []
        self._paths: set[tuple[str, ...]] = set()

    def add_part(self, part: Part) -> None:
        if "?" in part.field and re.search(r"[?&](mode|mtime)=", part.field):
            raise InputError(
                f"add: part {part.filename!r} carries mode/mtime metadata ({part.field!r}); "
                "this node does not store UnixFS mode or mtime"
            )
        is_dir = part.content_type in _DIRECTORY_KINDS
        names = dag.split_path(part.filename)
        if not names:  # NOTE: kubo-rpc-client's add(bytes): kubo names the entry by its CID
            if is_dir:
                self.unnamed.append(_File(self.importer.add_directory([]), 0, False))
            else:
                self.unnamed.append(self._content(part, "(unnamed)"))
            return
        try:
            part.filename.encode()
        except UnicodeEncodeError:
            raise InputError(f"add: part name {part.filename!r} is not valid UTF-8") from None
        key = tuple(names)
        shown = "/".join(names)
        if key in self._paths:
            raise InputError(f"add: the body holds {shown!r} twice; each path may be sent once")
        self._paths.add(key)
        parent = self.top
        for depth, name in enumerate(names[:-1]):
            child = parent.children.setdefault(name, _Dir())
            if not isinstance(child, _Dir):
                raise InputError(
                    f"add: {'/'.join(names[: depth + 1])!r} is both a file and a directory"
                )
            parent = child
        existing = parent.children.get(names[-1])
        if existing is not None and not (is_dir and isinstance(existing, _Dir)):
            raise InputError(f"add: {shown!r} is both a file and a directory")
        parent.children[names[-1]] = existing or (_Dir() if is_dir else self._content(part, shown))

    def _content(self, part: Part, shown: str) -> _File:
        if part.content_type == SYMLINK_PART:
            target = part.read(MAX_SYMLINK_TARGET + 1)
            if len(target) > MAX_SYMLINK_TARGET:
                raise InputError(
                    f"add: {shown!r}: a symlink part's target is over {MAX_SYMLINK_TARGET} "
                    "bytes; a symlink node must fit in one block"
                )
            return _File(self.importer.add_symlink(target), len(target), False)
        counted = _Counted(part)
        link = self.importer.add_file(counted)  # type: ignore[arg-type]
        return _File(link, counted.count, True)

    def finish(self, emit: Callable[[str, _File | None, Link], None]) -> list[Link]:
        """Build the directories; ``emit`` each entry, children first; the roots' links."""
        roots = [self._build(name, node, name, emit) for name, node in self.top.children.items()]
        for unnamed in self.unnamed:
            name = str(unnamed.link.cid)
            emit(name, unnamed, unnamed.link)
            roots.append(Link(unnamed.link.cid, name, unnamed.link.tsize))
        return roots

    def _build(
        self,
        name: str,
        node: _Dir | _File,
        rel: str,
        emit: Callable[[str, _File | None, Link], None],
    ) -> Link:
        if isinstance(node, _File):
            link = node.link
            emit(rel, node, link)
        else:
            entries = [
                self._build(child, sub, f"{rel}/{child}", emit)
                for child, sub in node.children.items()
            ]
            link = self.importer.add_directory(entries)
            emit(rel, None, link)
        return Link(link.cid, name, link.tsize)


class _Counted:
    """Counts the bytes the importer reads from a part (for ``progress`` lines)."""

    def __init__(self, part: Part) -> None:
        self._part = part
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._part.read(size)
        self.count += len(data)
        return data


def _add(
    store: Blockstore, options: _AddOptions, content_type: str, chunks: Iterator[bytes]
) -> list[dict[str, Any]]:
    """Import a multipart upload (kubo's layout: URL-escaped relative paths, dirs marked)."""
    reader = MultipartReader(content_type, chunks)
    lines: list[dict[str, Any]] = []

    def emit(path: str, node: _File | None, link: Link) -> None:
        if options.progress and node is not None and node.is_file:
            lines.append({"Name": path, "Bytes": node.size})
        lines.append({"Name": path, "Hash": str(link.cid), "Size": str(link.tsize)})

    with store.lock():
        with store.writer() as sink:
            upload = _Upload(Importer(None if options.only_hash else sink, options.profile))
            for part in reader:
                upload.add_part(part)
            if not upload.top.children and not upload.unnamed:
                raise InputError("add: file argument 'path' is required: the body holds no file")
            if options.wrap and upload.unnamed:
                raise InputError("add: wrap-with-directory needs a file name on every part")
            roots = upload.finish(emit)
            if options.wrap:
                wrapped = upload.importer.add_directory(roots)
                emit("", None, wrapped)
                roots = [wrapped]
        if options.pin and not options.only_hash:
            for root in roots:  # NOTE: the writer just committed the whole DAG
                store.pin(root.cid, check=False)
    if options.silent:
        return []
    if options.quieter:
        return lines[-1:]
    return lines


# --- block/put and dag/import -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _BlockOptions:
    codec: int
    version: int
    hash_code: int
    hash_length: int
    pin: bool
    limit: int

    @classmethod
    def parse(cls, params: _Params) -> _BlockOptions:
        codec_name = params.text("cid-codec", "raw")
        version = 1
        legacy = params.text("format", "")
        if legacy:
            codec_name = {"v0": "dag-pb", "protobuf": "dag-pb", "cbor": "dag-cbor"}.get(
                legacy, legacy
            )
            version = 0 if legacy in ("v0", "protobuf") else 1
        if codec_name not in BLOCK_CODECS:
            raise InputError(
                f"block/put: cid-codec={codec_name!r} is not supported; use one of "
                f"{', '.join(BLOCK_CODECS)}"
            )
        hash_name = params.text("mhtype", "sha2-256")
        if hash_name not in _HASH_CODES:
            raise InputError(
                f"block/put: mhtype={hash_name!r} is not supported; use one of "
                f"{', '.join(_HASH_CODES)}"
            )
        code = _HASH_CODES[hash_name]
        full = len(HASHES[code][1](b""))
        length = params.int("mhlen", -1)
        if length not in (-1, full):
            raise InputError(
                f"block/put: mhlen={length} is not supported for {hash_name}; use -1 or {full} "
                "(truncated digests are not produced)"
            )
        if version == 0 and code != SHA2_256:
            raise InputError("block/put: a CIDv0 (format=v0) needs mhtype=sha2-256")
        allow_big = params.bool("allow-big-block", False)
        return cls(
            codec=BLOCK_CODECS[codec_name],
            version=version,
            hash_code=code,
            hash_length=full,
            pin=params.bool("pin", False),
            limit=BIG_BLOCK_LIMIT if allow_big else BLOCK_LIMIT,
        )


def _block_put(
    store: Blockstore, options: _BlockOptions, content_type: str, chunks: Iterator[bytes]
) -> list[dict[str, Any]]:
    blocks: list[tuple[CID, bytes]] = []
    for part in MultipartReader(content_type, chunks):
        data = part.read(options.limit + 1)
        if len(data) > options.limit:
            raise InputError(
                f"block/put: a block is over {options.limit} bytes; kubo's limit is "
                f"{BLOCK_LIMIT} (allow-big-block=true raises it to {BIG_BLOCK_LIMIT}); use add "
                "to chunk a bigger file"
            )
        _check_decodes(options.codec, data)
        digest = HASHES[options.hash_code][1](data)
        multihash = encode_varint(options.hash_code) + encode_varint(len(digest)) + digest
        blocks.append((CID(options.version, options.codec, multihash), data))
    if not blocks:
        raise InputError("block/put: file argument 'data' is required: the body holds no block")
    with store.lock():
        with store.writer() as sink:
            for cid, data in blocks:
                sink.put(cid, data)
        if options.pin:
            for cid, _ in blocks:
                store.pin(cid)
    return [{"Key": str(cid), "Size": len(data)} for cid, data in blocks]


def _check_decodes(codec: int, data: bytes) -> None:
    try:
        if codec == DAG_PB:
            decode_node(data)
        elif codec == DAG_CBOR:
            libipld.decode_dag_cbor(data)
    except (StorageError, ValueError) as exc:
        name = next(n for n, c in BLOCK_CODECS.items() if c == codec)
        raise InputError(f"block/put: the data is not a valid {name} block: {exc}") from None


@dataclass(frozen=True, slots=True)
class _ImportOptions:
    pin_roots: bool
    silent: bool
    stats: bool
    allow_big: bool


def _dag_import(
    store: Blockstore, options: _ImportOptions, content_type: str, chunks: Iterator[bytes]
) -> list[dict[str, Any]]:
    """Import CARs: every block verified, all committed together or none."""
    roots: dict[CID, None] = {}
    count = size = parts = 0
    limit = BIG_BLOCK_LIMIT if options.allow_big else BLOCK_LIMIT
    with store.lock():
        with store.writer() as sink:
            for part in MultipartReader(content_type, chunks):
                parts += 1
                what = f"dag/import: CAR {part.filename or parts!r}"
                try:
                    imported = import_car(sink, part.chunks(), limit=limit)
                except BlockTooLarge as exc:
                    raise InputError(
                        f"{what}: {exc}; allow-big-block=true accepts up to {BIG_BLOCK_LIMIT} "
                        "bytes; nothing was imported"
                    ) from None
                except StorageError as exc:  # malformed, truncated or corrupt: the input is bad
                    raise InputError(f"{what}: {exc}; nothing was imported") from None
                roots.update(dict.fromkeys(imported.roots))
                count += imported.blocks
                size += imported.size
            if not parts:
                raise InputError("dag/import: file argument 'path' is required: no CAR was sent")
        lines: list[dict[str, Any]] = []
        if options.pin_roots:
            for root in roots:
                error = ""
                try:
                    store.pin(root)
                except StorageError as exc:
                    error = str(exc)
                lines.append({"Root": {"Cid": {"/": str(root)}, "PinErrorMsg": error}})
    if options.stats:
        lines.append({"Stats": {"BlockCount": count, "BlockBytesCount": size}})
    return [] if options.silent else lines


# --- reading ------------------------------------------------------------------------------------


def _ls_object(store: Blockstore, arg: str) -> dict[str, Any]:
    target = _resolve(store, arg).cid
    if dag.stat(store, target).kind != "directory":
        return {"Hash": arg, "Links": []}
    links = []
    for link in dag.list_directory(store, target):
        entry = dag.stat(store, link.cid)
        row: dict[str, Any] = {"Name": link.name, "Hash": str(link.cid), "Size": entry.size}
        if entry.kind == "directory":
            row.update(Size=0, Type=int(NodeType.DIRECTORY))
        elif entry.kind == "symlink":
            row.update(Type=int(NodeType.SYMLINK), Target=_target(store, link.cid))
        else:
            row["Type"] = int(NodeType.FILE)
        links.append(row)
    return {"Hash": arg, "Links": links}


def _target(store: Blockstore, cid: CID) -> str:
    return dag.read_symlink(store, cid).decode("utf-8", "backslashreplace")


def _refs(
    store: Blockstore, root: CID, template: str, max_depth: int, unique: bool, seen: set[CID]
) -> Iterator[str]:
    """kubo's ``refs``: the links under ``root``, depth first, down to ``max_depth`` (-1: all)."""
    stack: list[tuple[CID, Iterator[Link], int]] = [(root, iter(_links(store, root)), 1)]
    while stack:
        parent, links, depth = stack[-1]
        link = next(links, None)
        if link is None:
            stack.pop()
            continue
        if unique and link.cid in seen:
            continue
        seen.add(link.cid)
        yield (
            template.replace("<src>", str(parent))
            .replace("<dst>", str(link.cid))
            .replace("<linkname>", link.name)
        )
        if max_depth < 0 or depth < max_depth:
            stack.append((link.cid, iter(_links(store, link.cid)), depth + 1))


def _links(store: Blockstore, cid: CID) -> tuple[Link, ...]:
    if cid.codec != DAG_PB:
        store.get(cid)  # a leaf: present and intact, or an error
        return ()
    return decode_node(store.get(cid)).links


def _verify_block(store: Blockstore, cid: CID) -> list[tuple[CID, str]]:
    try:
        store.get(cid)
    except StorageError as exc:
        return [(cid, exc.message)]
    return []


def _dag_json(cid: CID, data: bytes) -> bytes:
    """A dag-pb or raw block as DAG-JSON (sorted keys, no spaces, bytes and links tagged)."""

    def as_bytes(raw: bytes) -> dict[str, Any]:
        return {"/": {"bytes": base64.b64encode(raw).decode().rstrip("=")}}

    if cid.codec == RAW:
        value: Any = as_bytes(data)
    elif cid.codec == DAG_PB:
        node = decode_node(data)
        value = {
            "Links": [
                {"Hash": {"/": str(link.cid)}, "Name": link.name, "Tsize": link.tsize}
                for link in node.links
            ]
        }
        if node.data is not None:
            value["Data"] = as_bytes(node.data)
    else:
        raise StorageError(
            f"dag/get {cid}: codec 0x{cid.codec:x} cannot be encoded as DAG-JSON by this node "
            "(dag-pb and raw can); fetch the block with block/get"
        )
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- get: tar and gzip --------------------------------------------------------------------------


def _gzip_level(compress: bool, level: int | None) -> int | None:
    """kubo's rule: no compression unless ``compress``; then ``compression-level`` 1-9 or 6."""
    if not compress:
        return None
    if level is None or level == -1:
        return 6
    if not 1 <= level <= 9:
        raise InputError(
            f"get: compression-level={level}: compression level must be between 1 and 9"
        )
    return level


def _gzip(chunks: Iterator[bytes], level: int) -> Iterator[bytes]:
    packer = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
    for chunk in chunks:
        if out := packer.compress(chunk):
            yield out
    yield packer.flush()


# --- the node's identity ------------------------------------------------------------------------


class _Identity:
    """The node's libp2p identity: an Ed25519 key kept in ``<repo>/peer.key`` (the libp2p
    protobuf private key, base64, as kubo's config holds ``Identity.PrivKey``), made once."""

    def __init__(self, root: Path) -> None:
        path = root / "peer.key"
        if not path.exists():
            key = ECC.generate(curve="ed25519")
            public = key.public_key().export_key(format="raw")
            proto = b"\x08\x01\x12\x40" + key.seed + public
            with suppress(FileExistsError):  # NOTE: another process made it first: use theirs
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(base64.b64encode(proto).decode() + "\n")
        try:
            proto = base64.b64decode(path.read_text().strip(), validate=True)
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read the node's key {path}: {exc}") from None
        if len(proto) != 68 or proto[:4] != b"\x08\x01\x12\x40":
            raise StorageError(f"{path} is not an Ed25519 libp2p private key; remove it")
        #: The libp2p protobuf public key (type Ed25519).
        self.public_key_proto = b"\x08\x01\x12\x20" + proto[-32:]
        # An Ed25519 peer ID is the identity multihash of the public key (it is that short).
        peer = b"\x00" + bytes([len(self.public_key_proto)]) + self.public_key_proto
        #: The peer ID, base58btc (``12D3KooW...``), as kubo prints it.
        self.peer_id: str = libipld.encode_multibase("z", peer)[1:]
