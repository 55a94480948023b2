"""HTTP clients: Kubo RPC (any kubo node or the embedded one), trustless gateways, and the IPFS
Pinning Service API. All speak httpx; every httpx error is translated here into the project's
errors (:func:`_http_errors` is the one boundary).

Blocks fetched by :class:`KuboClient` and :class:`GatewayClient` are hashed and checked against
their CID before they are returned (they are :class:`~lilypad.storage.dag.BlockSource`\\ s).
Both also fetch a whole DAG as one CAR (``fetch_car``) and say, in a :class:`CarResponse`, how far
that got, so that a download can fetch the rest block by block and say why it had to.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Self
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field

from lilypad.errors import BlockNotFound, CorruptBlock, InputError, StorageError
from lilypad.storage.car import CAR_MEDIA_TYPE, CarReader
from lilypad.storage.cid import CID, as_cid
from lilypad.storage.importer import BlockSink, DiskEntry, ImportProfile, open_regular, scan
from lilypad.storage.unixfs import NodeType
from lilypad.tls import verify_for

#: How long to wait for content nobody has before giving up (kubo would search forever).
DEFAULT_TIMEOUT = 30.0
#: The content types of ``add``'s multipart parts (boxo's ``files`` package, kubo's server side).
DIRECTORY_PART = "application/x-directory"
SYMLINK_PART = "application/symlink"
FILE_PART = "application/octet-stream"
#: What a CAR request asks a trustless gateway for (IPIP-412): CARv1, blocks in depth-first order,
#: a block repeated wherever the DAG links it again. Blocks in any order are read as well (a
#: download keeps them until the DAG is written), so a gateway answering ``order=unk`` works too.
CAR_ACCEPT = f"{CAR_MEDIA_TYPE}; version=1; order=dfs; dups=y"


@dataclass(frozen=True, slots=True)
class CarResponse:
    """What one CAR request brought.

    Attributes:
        url: The URL asked, for messages.
        roots: The roots the CAR's header names; ``None`` when no CAR came.
        blocks: Blocks verified into the sink (a repeated block counts each time).
        problem: Why the CAR cannot be relied on (the server sent no CAR, the CAR is malformed,
            the stream broke), or ``None`` when it ended cleanly or the server said it does not
            have the content (the block requests that follow then say so).
    """

    url: str
    roots: tuple[CID, ...] | None = None
    blocks: int = 0
    problem: str | None = None


class _HTTPClient:
    """Holds one httpx connection pool; close it, or use the client in a ``with`` block."""

    _http: httpx.Client

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def _http_errors(what: str, url: str, timeout: float) -> Iterator[None]:
    """Translate httpx failures into StorageError with the URL and a next step."""
    try:
        yield
    except httpx.TimeoutException:
        raise BlockNotFound(
            f"{what}: no answer from {url} within {timeout:g} s",
            hint="the content may not be available on the network; try another node or gateway",
        ) from None
    except httpx.ConnectError as exc:
        raise StorageError(
            f"{what}: cannot connect to {url} ({exc})",
            hint="is the IPFS node running? start one with `lilypad ipfs serve`",
        ) from None
    except httpx.HTTPError as exc:
        raise StorageError(f"{what}: HTTP error talking to {url}: {exc}") from None


class NotPinned(StorageError):
    """The node says a CID is not pinned (``pin/rm`` or ``pin/ls`` of it)."""


def _check_url(url: str, what: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise InputError(f"{what} {url!r} is not an http(s) URL, e.g. http://127.0.0.1:5001")
    return url.rstrip("/")


class KuboClient(_HTTPClient):
    """A client for the Kubo RPC API (``/api/v0``), as kubo and the embedded node serve it.

    Args:
        url: The API root, e.g. ``http://127.0.0.1:5001``.
        timeout: Seconds to wait for content before :class:`BlockNotFound`.
    """

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = _check_url(url, "Kubo API URL")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout, connect=5.0),
            verify=verify_for(self.url),
        )
        self._last: tuple[CID, bytes] | None = None

    def _post(self, command: str, params: dict[str, Any], **kwargs: Any) -> httpx.Response:
        # kubo's own `timeout` option bounds the node's search for content we ask for.
        params = {**params, "timeout": f"{self.timeout:g}s"}
        with _http_errors(f"ipfs {command.replace('/', ' ')}", self.url, self.timeout):
            response = self._http.post(f"/api/v0/{command}", params=params, **kwargs)
        if response.status_code != 200:
            raise self._error(command, params.get("arg"), response)
        return response

    def _error(self, command: str, arg: Any, response: httpx.Response) -> StorageError:
        try:
            message = str(response.json().get("Message", response.text))
        except ValueError:
            message = response.text.strip() or response.reason_phrase
        what = f"ipfs {command.replace('/', ' ')}" + (f" {arg}" if arg else "")
        lowered = message.lower()
        if "not found" in lowered or "deadline exceeded" in lowered or "timeout" in lowered:
            return BlockNotFound(f"{what}: {message} (after up to {self.timeout:g} s)")
        if "not pinned" in lowered:  # kubo: "path '/ipfs/…' is not pinned", "not pinned or …"
            return NotPinned(f"{what}: {message}")
        return StorageError(f"{what}: the node answered {response.status_code}: {message}")

    def version(self) -> dict[str, Any]:
        """The node's ``/api/v0/version`` document."""
        result: dict[str, Any] = self._post("version", {}).json()
        return result

    def add(
        self,
        path: Path,
        profile: ImportProfile,
        *,
        pin: bool = True,
        only_hash: bool = False,
        hidden: bool = True,
    ) -> list[dict[str, str]]:
        """Upload a file or directory tree; returns kubo's entries, the root last."""
        params = {
            "cid-version": profile.cid_version,
            "raw-leaves": str(profile.raw_leaves).lower(),
            "chunker": f"size-{profile.chunk_size}",
            "pin": str(pin).lower(),
            "only-hash": str(only_hash).lower(),
        }
        with ExitStack() as stack:
            parts = list(_multipart_parts(path, hidden, stack))
            response = self._post("add", params, files=parts)
        entries = [json.loads(line) for line in response.text.splitlines() if line.strip()]
        return [e for e in entries if "Hash" in e]

    def get(self, cid: CID) -> bytes:
        """A block's bytes via ``block/get``, checked against the CID."""
        if (inline := cid.inline_data()) is not None:
            return inline
        if self._last is not None and self._last[0] == cid:
            return self._last[1]
        data = self._post("block/get", {"arg": str(cid)}).content
        cid.check(data)
        self._last = (cid, data)
        return data

    def fetch_car(self, root: CID, sink: BlockSink, path: str = "") -> CarResponse:
        """The DAG at ``root[/path]`` as one CAR (``dag/export``), every block verified into
        ``sink``.

        kubo's CAR holds the DAG of the path's end only (not the blocks on the way), and a kubo
        that takes no path answers an error; either way the caller fetches what is missing block by
        block.

        Raises:
            CorruptBlock: A block does not match its CID (the download must stop).
        """
        arg = f"/ipfs/{root}/{path}" if path else str(root)
        params = {"arg": arg, "timeout": f"{self.timeout:g}s"}
        url = f"{self.url}/api/v0/dag/export?arg={quote(arg)}"
        with (
            _http_errors(f"ipfs dag export {arg}", self.url, self.timeout),
            self._http.stream("POST", "/api/v0/dag/export", params=params) as response,
        ):
            # NOTE: kubo answers text/plain or application/vnd.ipld.car: the CAR is checked instead.
            if response.status_code == 200:
                return _read_car(url, response, sink)
            response.read()
            error = self._error("dag/export", arg, response)
        # NOTE: kubo answers 500 for content it lacks; a 404 is an endpoint it lacks.
        if isinstance(error, BlockNotFound) and response.status_code != 404:
            return CarResponse(url)  # the node does not have it: block/get says so
        return CarResponse(url, problem=f"no CAR: {error.message}")

    def cat(self, cid: CID) -> bytes:
        """``cat`` as the node does it (unverified: use :mod:`lilypad.storage.dag` to verify)."""
        return self._post("cat", {"arg": str(cid)}).content

    def pin_add(self, cid: CID, *, recursive: bool = True) -> None:
        """Pin on the node: ``cid`` and its whole DAG (the node fetches what it lacks), or with
        ``recursive=False`` the one block (it must be there or be fetched)."""
        self._post("pin/add", {"arg": str(cid), "recursive": str(recursive).lower()})

    def pin_rm(self, cid: CID) -> None:
        """Remove a pin on the node (recursive or direct)."""
        self._post("pin/rm", {"arg": str(cid)})

    def pin_type(self, cid: CID) -> str | None:
        """How the node pins ``cid`` itself: ``"recursive"``, ``"direct"``, or ``None``.

        NOTE: asked type by type, as ``pin/ls?arg=`` of any type also looks for an indirect pin,
        which walks the DAG of every recursive pin on the node.
        """
        for kind in ("recursive", "direct"):
            try:
                keys = self._post("pin/ls", {"arg": str(cid), "type": kind}).json().get("Keys")
            except NotPinned:
                continue
            if keys:
                return kind
        return None

    def pin_ls(self) -> dict[CID, str]:
        """The node's pins and their types."""
        keys = self._post("pin/ls", {}).json().get("Keys", {})
        return {CID.parse(k): v.get("Type", "") for k, v in keys.items()}


def _multipart_parts(
    path: Path, hidden: bool, stack: ExitStack
) -> Iterator[tuple[str, tuple[str, _LazyFile | bytes, str]]]:
    """Multipart parts as kubo's own clients send them: directories first, paths URL-escaped,
    a symlink as an ``application/symlink`` part whose body is the link text (never followed).

    The tree is the one :func:`~lilypad.storage.importer.scan` finds, so this upload adds exactly
    what the local importer adds, with the same CID.
    """
    for entry in scan(path, hidden=hidden).walk():
        name = quote(entry.rel, safe="")
        if entry.kind is NodeType.DIRECTORY:
            yield "file", (name, b"", DIRECTORY_PART)
        elif entry.kind is NodeType.SYMLINK:
            yield "file", (name, entry.target, SYMLINK_PART)
        else:
            lazy = _LazyFile(entry)
            stack.callback(lazy.close)
            yield "file", (name, lazy, FILE_PART)


class _LazyFile:
    """A scanned regular file that is open only while httpx sends it.

    One descriptor at a time however many files a result holds (a module's 10,000 small files
    must not run the provider out of descriptors), and the bytes sent must be the file scanned:
    its size is the ``Content-Length`` already declared for it.
    """

    def __init__(self, entry: DiskEntry) -> None:
        self._entry = entry
        self._stream: IO[bytes] | None = None
        self._sent = 0
        self._done = False

    def tell(self) -> int:
        return 0 if self._stream is None else self._sent

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Only what httpx asks: the size (``seek(0, SEEK_END)``) and a rewind to the start."""
        if (offset, whence) == (0, io.SEEK_END):
            return self._entry.st.st_size
        if (offset, whence) != (0, io.SEEK_SET):
            raise io.UnsupportedOperation("only seek(0) and seek(0, SEEK_END)")
        self.close()
        self._done = False
        return 0

    def read(self, size: int = -1) -> bytes:
        if self._done:
            return b""
        if self._stream is None:
            self._stream = open_regular(self._entry)
            self._sent = 0
        data = self._stream.read(size)
        self._sent += len(data)
        expected = self._entry.st.st_size
        if self._sent > expected or (not data and self._sent != expected):
            raise StorageError(
                f"{self._entry.path} changed while it was being uploaded ({expected} -> "
                f"{self._sent}+ bytes); add it again once nothing writes to it"
            )
        if not data:
            self.close()
            self._done = True
        return data

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class GatewayClient(_HTTPClient):
    """A trustless gateway (``/ipfs/<cid>?format=raw``): every block fetched is verified.

    Args:
        url: The gateway root, e.g. ``http://127.0.0.1:8080`` or ``https://gateway.example``.
        timeout: Seconds to wait for one block before :class:`BlockNotFound`.
    """

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = _check_url(url, "gateway URL")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout, connect=5.0),
            verify=verify_for(self.url),
        )
        self._last: tuple[CID, bytes] | None = None

    def get(self, cid: CID) -> bytes:
        """One block, checked against its CID."""
        if (inline := cid.inline_data()) is not None:
            return inline
        if self._last is not None and self._last[0] == cid:
            return self._last[1]
        with _http_errors(f"fetching block {cid}", self.url, self.timeout):
            response = self._http.get(
                f"/ipfs/{cid}",
                params={"format": "raw"},
                headers={"Accept": "application/vnd.ipld.raw"},
            )
        if response.status_code in (404, 410, 504):
            raise BlockNotFound(
                f"block {cid} is not available from {self.url} ({response.status_code})"
            )
        if response.status_code != 200:
            raise StorageError(
                f"fetching block {cid} from {self.url}: HTTP {response.status_code} "
                f"{response.text[:200]}"
            )
        data = response.content
        cid.check(data)
        self._last = (cid, data)
        return data

    def fetch_car(self, root: CID, sink: BlockSink, path: str = "") -> CarResponse:
        """The DAG at ``root[/path]`` as one CAR (``?format=car&dag-scope=all``), every block
        verified into ``sink``.

        Raises:
            CorruptBlock: A block does not match its CID (the download must stop).
        """
        target = f"/ipfs/{root}/{quote(path)}" if path else f"/ipfs/{root}"
        params = {"format": "car", "dag-scope": "all"}
        url = f"{self.url}{target}?format=car&dag-scope=all"
        with (
            _http_errors(f"fetching {root}{'/' + path if path else ''}", self.url, self.timeout),
            self._http.stream(
                "GET", target, params=params, headers={"Accept": CAR_ACCEPT}
            ) as response,
        ):
            if response.status_code in (404, 410):
                return CarResponse(url)  # the gateway does not have it: the block request says so
            kind = response.headers.get("content-type", "")
            if response.status_code != 200 or not _is_car(kind):
                return CarResponse(
                    url,
                    problem=f"no CAR: the gateway answered HTTP {response.status_code} "
                    f"{kind or 'without a content type'}",
                )
            return _read_car(url, response, sink)


def _is_car(content_type: str) -> bool:
    """``application/vnd.ipld.car``, with any parameters (``version=1; order=dfs; dups=y``)."""
    return content_type.split(";", 1)[0].strip().lower() == CAR_MEDIA_TYPE


class _BrokenCar(Exception):
    """A CAR stream that cannot be read further; the message says why."""


@contextmanager
def _stream_faults() -> Iterator[None]:
    """A malformed CAR or a broken connection as :class:`_BrokenCar` (a :class:`CorruptBlock`
    stays one: a wrong block stops the download)."""
    try:
        yield
    except CorruptBlock:
        raise
    except StorageError as exc:
        raise _BrokenCar(exc.message) from None
    except httpx.HTTPError as exc:
        raise _BrokenCar(f"the connection broke ({exc})") from None


def _verified_blocks(reader: CarReader) -> Iterator[tuple[CID, bytes]]:
    with _stream_faults():
        yield from reader


def _read_car(url: str, response: httpx.Response, sink: BlockSink) -> CarResponse:
    """Verify a CAR stream's blocks into ``sink``; how far it got and, if it broke, why.

    An error of the sink itself (a full disk) is raised: only the stream's faults are reported.
    """
    roots: tuple[CID, ...] | None = None
    count = 0
    try:
        with _stream_faults():
            reader = CarReader(response.iter_bytes())
        roots = tuple(reader.roots)
        for cid, data in _verified_blocks(reader):
            sink.put(cid, data)
            count += 1
    except _BrokenCar as exc:
        return CarResponse(url, roots, count, f"{exc} (after {count} blocks)")
    return CarResponse(url, roots, count)


# --- IPFS Pinning Service API ----------------------------------------------------------------


class PinStatus(StrEnum):
    """Status of a pin request at a pinning service."""

    QUEUED = "queued"
    PINNING = "pinning"
    PINNED = "pinned"
    FAILED = "failed"

    def is_terminal(self) -> bool:
        """Whether the service will not change this status by itself."""
        return self in (PinStatus.PINNED, PinStatus.FAILED)


class Pin(BaseModel):
    """The object to pin (Pinning Service API ``Pin``)."""

    model_config = ConfigDict(extra="ignore")

    cid: str
    name: str | None = None
    origins: list[str] = Field(default_factory=list)
    meta: dict[str, str] = Field(default_factory=dict)


class PinStatusResponse(BaseModel):
    """A pin request as the service tracks it (Pinning Service API ``PinStatus``)."""

    model_config = ConfigDict(extra="ignore")

    requestid: str
    status: PinStatus
    created: datetime
    pin: Pin
    delegates: list[str] = Field(default_factory=list)
    info: dict[str, str] = Field(default_factory=dict)


class PinResults(BaseModel):
    """A page of pin requests."""

    count: int
    results: list[PinStatusResponse]


class PinningServiceClient(_HTTPClient):
    """A client for the IPFS Pinning Service API (``/pins`` with a bearer token).

    Args:
        endpoint: The service root, e.g. ``https://pinning.example/psa``.
        token: The access token; sent only in the Authorization header, never logged.
        timeout: Seconds per HTTP request.
    """

    def __init__(self, endpoint: str, token: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = _check_url(endpoint, "pinning service endpoint")
        if not token:
            raise InputError("a pinning service needs an access token (LILYPAD_PINNING_TOKEN)")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
            verify=verify_for(self.url),
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with _http_errors(f"pinning service {method} {path}", self.url, self.timeout):
            response = self._http.request(method, path, **kwargs)
        if response.status_code in (200, 202):
            return response
        if response.status_code == 401:
            raise StorageError(f"the pinning service {self.url} refused the access token (401)")
        try:
            reason = response.json().get("error", {}).get("details") or response.text
        except ValueError:
            reason = response.text
        raise StorageError(
            f"pinning service {method} {path}: HTTP {response.status_code}: {reason!s:.200}"
        )

    def add(
        self, cid: CID | str, name: str | None = None, origins: list[str] | None = None
    ) -> PinStatusResponse:
        """Ask the service to pin ``cid``; returns the request (usually ``queued``)."""
        pin = Pin(cid=str(as_cid(cid)), name=name, origins=origins or [])
        body = pin.model_dump(exclude_none=True)
        return PinStatusResponse.model_validate(self._request("POST", "/pins", json=body).json())

    def status(self, requestid: str) -> PinStatusResponse:
        """The current state of a pin request."""
        return PinStatusResponse.model_validate(
            self._request("GET", f"/pins/{quote(requestid, safe='')}").json()
        )

    def list(
        self, cid: CID | str | None = None, status: list[PinStatus] | None = None
    ) -> list[PinStatusResponse]:
        """Pin requests, optionally for one CID and/or in some statuses (default: pinned)."""
        params: dict[str, str] = {}
        if cid is not None:
            params["cid"] = str(as_cid(cid))
        if status:
            params["status"] = ",".join(s.value for s in status)
        results = PinResults.model_validate(self._request("GET", "/pins", params=params).json())
        return results.results

    def remove(self, requestid: str) -> None:
        """Withdraw a pin request."""
        self._request("DELETE", f"/pins/{quote(requestid, safe='')}")

    def wait(self, requestid: str, timeout: float = 300.0, poll: float = 1.0) -> PinStatusResponse:
        """Poll until the request is pinned or failed.

        Raises:
            StorageError: The pin failed, or did not finish within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            current = self.status(requestid)
            if current.status is PinStatus.PINNED:
                return current
            if current.status is PinStatus.FAILED:
                raise StorageError(f"the pinning service failed to pin {current.pin.cid}")
            if time.monotonic() > deadline:
                raise StorageError(
                    f"pin {current.pin.cid} still {current.status.value} after {timeout:g} s"
                )
            time.sleep(poll)
