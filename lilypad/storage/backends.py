"""The :class:`Storage` interface and its backends, chosen by configuration (:func:`open_storage`).

=====================  ==========================================  ============================
backend                chosen when                                 add / get / pin
=====================  ==========================================  ============================
:class:`LocalStorage`  default (``<data_dir>/ipfs``, the embedded  local blockstore
                       node's repository)
:class:`KuboStorage`   ``LILYPAD_IPFS_API=http://host:5001``       Kubo RPC; get verified
:class:`GatewayStorage` ``LILYPAD_IPFS_GATEWAY=https://...``       get only, verified
:class:`RemotePinning` ``LILYPAD_PINNING_ENDPOINT`` + ``_TOKEN``    wraps one of the above;
                                                                   pins at the service
=====================  ==========================================  ============================

The remote backends download a DAG as one CAR request and fetch whatever it lacked block by block
(:class:`_CarDownload`); each CAR that was unusable or incomplete is logged as a warning on this
module's logger and counted in the backend's ``car_warnings``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from lilypad.config import get_settings
from lilypad.errors import BlockNotFound, ContentTooLarge, StorageError
from lilypad.storage import dag
from lilypad.storage.blockstore import Blockstore, PinType
from lilypad.storage.cid import CID, as_cid
from lilypad.storage.client import (
    DEFAULT_TIMEOUT,
    CarResponse,
    GatewayClient,
    KuboClient,
    PinningServiceClient,
    PinStatus,
)
from lilypad.storage.importer import NETWORK_PROFILE, BlockSink, Importer, ImportProfile

log = logging.getLogger(__name__)

#: Told about each symlink a download verified but did not create.
OnSymlink = Callable[[dag.SkippedSymlink], None]


class StorageSettings(BaseSettings):
    """Where content goes (``LILYPAD_*`` environment variables).

    Attributes:
        ipfs_api: A Kubo RPC API URL (kubo or ``lilypad ipfs serve``); empty: the local repo.
        ipfs_gateway: A trustless gateway URL used for downloads when no API is set.
        ipfs_repo: The embedded node's repository; default ``<data_dir>/ipfs``.
        ipfs_timeout: Seconds to wait for content before giving up.
        pinning_endpoint: An IPFS Pinning Service API endpoint that pins what is added.
        pinning_token: Its bearer token.
    """

    model_config = SettingsConfigDict(env_prefix="LILYPAD_", extra="ignore")

    ipfs_api: str | None = None
    ipfs_gateway: str | None = None
    ipfs_repo: Path | None = None
    ipfs_timeout: float = DEFAULT_TIMEOUT
    pinning_endpoint: str | None = None
    pinning_token: SecretStr | None = None

    def repo(self) -> Path:
        """The embedded node's repository folder."""
        return self.ipfs_repo or get_settings().data_dir / "ipfs"


class Storage(Protocol):
    """Add, fetch and pin UnixFS content; every backend computes the network's CIDs."""

    def add(self, path: Path, *, pin: bool = True) -> CID:
        """Add a file or directory tree (dotfiles included) and return its CID."""

    def get(
        self,
        cid: CID | str,
        dest: Path,
        *,
        on_symlink: OnSymlink | None = None,
        max_bytes: int | None = None,
    ) -> Path:
        """Download ``cid`` (or ``<cid>/path``) to ``dest`` (file or folder), verified; nothing
        partial is left.

        Symlinks in the content are verified but never created; each one is passed to
        ``on_symlink`` (see :func:`lilypad.storage.dag.export`). More than ``max_bytes`` of
        file content (or, from a remote, about twice that in blocks) is
        :class:`~lilypad.errors.ContentTooLarge`.
        """

    def cat(self, cid: CID | str) -> Iterator[bytes]:
        """The bytes of a file (``<cid>`` or ``<cid>/path``), verified block by block."""

    def stat(self, cid: CID | str) -> dag.Entry:
        """What ``<cid>`` or ``<cid>/path`` is (file, directory, symlink) and a file's size,
        from the blocks on the way only (verified)."""

    def trace(self, cid: CID | str) -> dag.PathTrace:
        """Resolve ``<cid>/path`` and the blocks on the way (verified; see
        :func:`lilypad.storage.dag.trace_path`)."""

    def pin(self, cid: CID | str, *, recursive: bool = True) -> None:
        """Keep ``cid`` and its whole DAG, or with ``recursive=False`` its one block."""

    def unpin(self, cid: CID | str) -> None:
        """Stop keeping ``cid`` (a recursive or a direct pin)."""

    def pinned(self, cid: CID | str) -> PinType | None:
        """How ``cid`` itself is pinned, or ``None``: a block held only by a recursive pin of
        another CID is not pinned itself, and the same block under another CID (its CIDv0, its
        raw CID) is another pin."""

    def pins(self) -> list[CID]:
        """What is pinned."""

    def close(self) -> None:
        """Release connections (a no-op for the local store)."""


def _split(target: CID | str) -> tuple[CID, str]:
    """``<cid>[/path]`` as the root CID and the path inside it."""
    return (target, "") if isinstance(target, CID) else dag.parse_ipfs_path(target)


def _stat(source: dag.BlockSource, target: CID | str) -> dag.Entry:
    root, subpath = _split(target)
    return dag.stat(source, dag.resolve(source, root, subpath))


def _trace(source: dag.BlockSource, target: CID | str) -> dag.PathTrace:
    root, subpath = _split(target)
    return dag.trace_path(source, root, subpath)


def _cat(source: dag.BlockSource, target: CID | str) -> Iterator[bytes]:
    """Verified bytes of ``<cid>[/path]``."""
    root, subpath = _split(target)
    return dag.read_file(source, dag.resolve(source, root, subpath))


class LocalStorage:
    """The embedded node's repository on disk (works whether or not ``ipfs serve`` runs)."""

    def __init__(self, repo: Path, profile: ImportProfile = NETWORK_PROFILE) -> None:
        self.store = Blockstore(repo)
        self.profile = profile

    def add(self, path: Path, *, pin: bool = True, hidden: bool = True) -> CID:
        """Add and (by default) pin; a concurrent GC waits for the pin."""
        with self.store.lock():
            with self.store.writer() as sink:
                link = Importer(sink, self.profile).add_path(path, hidden=hidden)
            if pin:
                self.store.pin(link.cid, check=False)  # the writer just stored every block
        return link.cid

    def get(
        self,
        cid: CID | str,
        dest: Path,
        *,
        on_symlink: OnSymlink | None = None,
        max_bytes: int | None = None,
    ) -> Path:
        """Export from the local store (verified on read)."""
        root, subpath = _split(cid)
        try:
            target = dag.resolve(self.store, root, subpath)
            return dag.export(self.store, target, dest, on_symlink=on_symlink, max_bytes=max_bytes)
        except BlockNotFound as exc:
            raise BlockNotFound(
                exc.message,
                hint="to fetch from elsewhere, pass --gateway/--api or set LILYPAD_IPFS_GATEWAY",
            ) from None

    def cat(self, cid: CID | str) -> Iterator[bytes]:
        """File bytes from the local store."""
        return _cat(self.store, cid)

    def stat(self, cid: CID | str) -> dag.Entry:
        """Kind and size, from the local store."""
        return _stat(self.store, cid)

    def trace(self, cid: CID | str) -> dag.PathTrace:
        """The path's blocks, from the local store."""
        return _trace(self.store, cid)

    def pin(self, cid: CID | str, *, recursive: bool = True) -> None:
        """Pin recursively or directly (every block pinned must be present)."""
        self.store.pin(as_cid(cid), PinType.RECURSIVE if recursive else PinType.DIRECT)

    def unpin(self, cid: CID | str) -> None:
        """Remove a pin."""
        self.store.unpin(as_cid(cid))

    def pinned(self, cid: CID | str) -> PinType | None:
        """From the store's pin set."""
        return self.store.pinned(as_cid(cid))

    def pins(self) -> list[CID]:
        """Pinned CIDs."""
        return list(self.store.pins())

    def close(self) -> None:
        """Nothing to release."""


class _CarSource(dag.BlockSource, Protocol):
    url: str

    def fetch_car(self, root: CID, sink: BlockSink, path: str = "") -> CarResponse: ...


class _CarDownload:
    """``get`` for the remote backends: the DAG as one CAR request, checked block by block as it
    arrives and kept in a temporary store beside ``dest`` (removed afterwards), then whatever the
    CAR lacked block by block. Every block is verified either way.

    A CAR that was no CAR, malformed, cut off, or rooted elsewhere is logged as a warning (naming
    the URL and the reason) and counted in :attr:`car_warnings`; a wrong block stops the download
    (:class:`~lilypad.errors.CorruptBlock`).

    Attributes:
        car_warnings: How many such warnings this backend has logged.
    """

    client: _CarSource
    car_warnings: int = 0

    def get(
        self,
        cid: CID | str,
        dest: Path,
        *,
        on_symlink: OnSymlink | None = None,
        max_bytes: int | None = None,
    ) -> Path:
        """Verified download of ``<cid>[/path]``: one CAR request, then block by block for
        anything it lacked."""
        root, subpath = _split(cid)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".car-", dir=dest.parent) as tmp:
            cache = Blockstore(Path(tmp))
            try:
                with cache.writer() as writer:
                    sink = _Bounded(writer, root, max_bytes)
                    car = self.client.fetch_car(root, sink, subpath)
                if car.problem is not None:
                    self._warn(car.url, car.problem)
                source = _Fallback(cache, self.client)
                # NOTE: the blocks on the path may come one by one (kubo's dag/export leaves them
                # out); only a block missing below the path's end means the CAR was incomplete.
                target = dag.resolve(source, root, subpath)
                self._check_roots(car, root, target)
                if car.problem is None and car.roots is not None:
                    source.on_miss = lambda missing: self._warn(
                        car.url, f"the CAR lacks block {missing} (cut off?)"
                    )
                return dag.export(source, target, dest, on_symlink=on_symlink, max_bytes=max_bytes)
            finally:
                cache.close()

    def _check_roots(self, car: CarResponse, root: CID, target: CID) -> None:
        # The trustless gateway spec leaves a CAR's roots to the gateway (kubo names the path's
        # end, older gateways its start): a mismatch is only a warning, as each block is verified.
        if car.problem is not None or car.roots is None:
            return
        if not {root.v1(), target.v1()} & {r.v1() for r in car.roots}:
            named = ", ".join(str(r) for r in car.roots) or "none"
            wanted = str(root) if root == target else f"{root} or {target}"
            self._warn(car.url, f"the CAR's roots ({named}) do not include {wanted}")

    def _warn(self, url: str, reason: str) -> None:
        self.car_warnings += 1
        log.warning("%s: %s; fetching the rest block by block, each verified", url, reason)


class _Bounded:
    """A sink that refuses more than about twice ``max_bytes`` of blocks: room for a result's
    UnixFS nodes, none for a remote that streams blocks without end."""

    SLACK = 1024 * 1024

    def __init__(self, sink: BlockSink, root: CID, max_bytes: int | None) -> None:
        self.sink = sink
        self.root = root
        self.limit = None if max_bytes is None else 2 * max_bytes + self.SLACK
        self.used = 0

    def put(self, cid: CID, data: bytes) -> None:
        self.used += len(data)
        if self.limit is not None and self.used > self.limit:
            raise ContentTooLarge(
                f"the CAR for {self.root} holds more than {self.limit} bytes of blocks, more "
                "than a download this size can need; nothing of it was kept"
            )
        self.sink.put(cid, data)


class _Fallback:
    """Blocks from a local cache, else from a remote source (both verify)."""

    def __init__(self, cache: Blockstore, remote: dag.BlockSource) -> None:
        self.cache = cache
        self.remote = remote
        #: Called once, for the first block the cache lacks.
        self.on_miss: Callable[[CID], None] | None = None

    def get(self, cid: CID) -> bytes:
        """From the cache if there, else from the remote."""
        if self.cache.has(cid):
            return self.cache.get(cid)
        if self.on_miss is not None:
            self.on_miss(cid)
            self.on_miss = None
        return self.remote.get(cid)


class KuboStorage(_CarDownload):
    """Any node speaking Kubo RPC; downloads are one ``dag/export`` CAR, then ``block/get`` for
    anything it lacked, every block verified."""

    client: KuboClient

    def __init__(
        self, url: str, timeout: float = DEFAULT_TIMEOUT, profile: ImportProfile = NETWORK_PROFILE
    ) -> None:
        self.client = KuboClient(url, timeout)
        self.profile = profile

    def add(self, path: Path, *, pin: bool = True, hidden: bool = True) -> CID:
        """Upload with the import profile's options."""
        entries = self.client.add(path, self.profile, pin=pin, hidden=hidden)
        if not entries:
            raise StorageError(f"the node at {self.client.url} returned no CID for {path}")
        return CID.parse(entries[-1]["Hash"])

    def cat(self, cid: CID | str) -> Iterator[bytes]:
        """Verified file bytes."""
        return _cat(self.client, cid)

    def stat(self, cid: CID | str) -> dag.Entry:
        """Kind and size, from the blocks on the path (each verified)."""
        return _stat(self.client, cid)

    def trace(self, cid: CID | str) -> dag.PathTrace:
        """The path's blocks, by ``block/get`` (each verified)."""
        return _trace(self.client, cid)

    def pin(self, cid: CID | str, *, recursive: bool = True) -> None:
        """``pin/add`` (the node fetches what it lacks, for up to the timeout)."""
        self.client.pin_add(as_cid(cid), recursive=recursive)

    def unpin(self, cid: CID | str) -> None:
        """``pin/rm``."""
        self.client.pin_rm(as_cid(cid))

    def pinned(self, cid: CID | str) -> PinType | None:
        """``pin/ls?arg=``, recursive then direct."""
        kind = self.client.pin_type(as_cid(cid))
        return None if kind is None else PinType(kind)

    def pins(self) -> list[CID]:
        """``pin/ls``."""
        return list(self.client.pin_ls())

    def close(self) -> None:
        """Close the HTTP connections."""
        self.client.close()


class GatewayStorage(_CarDownload):
    """A trustless gateway: read-only; downloads are one ``?format=car`` CAR, then
    ``?format=raw`` for anything it lacked, every block verified."""

    client: GatewayClient

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.client = GatewayClient(url, timeout)

    def _read_only(self, what: str) -> StorageError:
        return StorageError(
            f"cannot {what} through the gateway {self.client.url}: a gateway is read-only",
            hint="set LILYPAD_IPFS_API to a Kubo RPC URL, or leave both unset for the local node",
        )

    def add(self, path: Path, *, pin: bool = True) -> CID:
        """Not possible on a gateway."""
        raise self._read_only("add")

    def cat(self, cid: CID | str) -> Iterator[bytes]:
        """Verified file bytes."""
        return _cat(self.client, cid)

    def stat(self, cid: CID | str) -> dag.Entry:
        """Kind and size, from the blocks on the path (each verified)."""
        return _stat(self.client, cid)

    def trace(self, cid: CID | str) -> dag.PathTrace:
        """The path's blocks, by ``?format=raw`` (each verified)."""
        return _trace(self.client, cid)

    def pin(self, cid: CID | str, *, recursive: bool = True) -> None:
        """Not possible on a gateway."""
        raise self._read_only("pin")

    def unpin(self, cid: CID | str) -> None:
        """Not possible on a gateway."""
        raise self._read_only("unpin")

    def pinned(self, cid: CID | str) -> PinType | None:
        """Not possible on a gateway."""
        raise self._read_only("list pins")

    def pins(self) -> list[CID]:
        """Not possible on a gateway."""
        raise self._read_only("list pins")

    def close(self) -> None:
        """Close the HTTP connections."""
        self.client.close()


class RemotePinning:
    """Adds and fetches through ``inner``; pins at an IPFS Pinning Service as well.

    A direct pin (one block) is made on ``inner`` only: the Pinning Service API pins whole DAGs.
    """

    def __init__(self, inner: Storage, service: PinningServiceClient) -> None:
        self.inner = inner
        self.service = service

    def add(self, path: Path, *, pin: bool = True) -> CID:
        """Add through ``inner`` (pinned there too), then ask the service to pin."""
        cid = self.inner.add(path, pin=pin)
        if pin:
            self.service.add(cid, name=path.name)
        return cid

    def get(
        self,
        cid: CID | str,
        dest: Path,
        *,
        on_symlink: OnSymlink | None = None,
        max_bytes: int | None = None,
    ) -> Path:
        """Through ``inner``."""
        return self.inner.get(cid, dest, on_symlink=on_symlink, max_bytes=max_bytes)

    def cat(self, cid: CID | str) -> Iterator[bytes]:
        """Through ``inner``."""
        return self.inner.cat(cid)

    def stat(self, cid: CID | str) -> dag.Entry:
        """Through ``inner``."""
        return self.inner.stat(cid)

    def trace(self, cid: CID | str) -> dag.PathTrace:
        """Through ``inner``."""
        return self.inner.trace(cid)

    def pin(self, cid: CID | str, *, recursive: bool = True) -> None:
        """Request a pin at the service (it fetches the content on its own); a direct pin is
        made on ``inner``."""
        if recursive:
            self.service.add(cid)
        else:
            self.inner.pin(cid, recursive=False)

    def unpin(self, cid: CID | str) -> None:
        """Withdraw every request for ``cid`` at the service; without one, unpin it on
        ``inner`` (where direct pins are made)."""
        requests = self.service.list(cid=cid, status=_REQUESTED)
        for request in requests:
            self.service.remove(request.requestid)
        if not requests:
            self.inner.unpin(cid)

    def pinned(self, cid: CID | str) -> PinType | None:
        """Recursive while the service holds a request for ``cid`` that has not failed; else as
        ``inner`` pins it."""
        if self.service.list(cid=cid, status=_REQUESTED):
            return PinType.RECURSIVE
        return self.inner.pinned(cid)

    def pins(self) -> list[CID]:
        """Pinned at the service."""
        return [CID.parse(r.pin.cid) for r in self.service.list()]

    def close(self) -> None:
        """Close both."""
        self.inner.close()
        self.service.close()


#: A pin request the service has not failed: it holds the content, or will.
_REQUESTED = [PinStatus.QUEUED, PinStatus.PINNING, PinStatus.PINNED]


def open_storage(
    settings: StorageSettings | None = None,
    *,
    api: str | None = None,
    gateway: str | None = None,
) -> Storage:
    """The backend the configuration asks for (``api``/``gateway`` override the settings)."""
    settings = settings or StorageSettings()
    api = api or (None if gateway else settings.ipfs_api)
    gateway = gateway or settings.ipfs_gateway
    storage: Storage
    if api:
        storage = KuboStorage(api, settings.ipfs_timeout)
    elif gateway:
        storage = GatewayStorage(gateway, settings.ipfs_timeout)
    else:
        storage = LocalStorage(settings.repo())
    if settings.pinning_endpoint:
        token = settings.pinning_token.get_secret_value() if settings.pinning_token else ""
        service = PinningServiceClient(settings.pinning_endpoint, token, settings.ipfs_timeout)
        storage = RemotePinning(storage, service)
    return storage
