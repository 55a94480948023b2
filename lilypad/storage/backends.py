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
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from lilypad.config import get_settings
from lilypad.errors import BlockNotFound, StorageError
from lilypad.storage import dag
from lilypad.storage.blockstore import Blockstore, PinType
from lilypad.storage.cid import CID, as_cid
from lilypad.storage.client import (
    DEFAULT_TIMEOUT,
    GatewayClient,
    KuboClient,
    PinningServiceClient,
)
from lilypad.storage.importer import NETWORK_PROFILE, BlockSink, Importer, ImportProfile

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

    def get(self, cid: CID | str, dest: Path, *, on_symlink: OnSymlink | None = None) -> Path:
        """Download ``cid`` to ``dest`` (file or folder), verified; nothing partial is left.

        Symlinks in the content are verified but never created; each one is passed to
        ``on_symlink`` (see :func:`lilypad.storage.dag.export`).
        """

    def cat(self, cid: CID | str) -> Iterator[bytes]:
        """The bytes of a file (``<cid>`` or ``<cid>/path``), verified block by block."""

    def pin(self, cid: CID | str) -> None:
        """Keep ``cid`` and its whole DAG."""

    def unpin(self, cid: CID | str) -> None:
        """Stop keeping ``cid``."""

    def pins(self) -> list[CID]:
        """What is pinned."""

    def close(self) -> None:
        """Release connections (a no-op for the local store)."""


def _cat(source: dag.BlockSource, target: CID | str) -> Iterator[bytes]:
    """Verified bytes of ``<cid>[/path]``."""
    if isinstance(target, CID):
        return dag.read_file(source, target)
    root, subpath = dag.parse_ipfs_path(target)
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

    def get(self, cid: CID | str, dest: Path, *, on_symlink: OnSymlink | None = None) -> Path:
        """Export from the local store (verified on read)."""
        try:
            return dag.export(self.store, as_cid(cid), dest, on_symlink=on_symlink)
        except BlockNotFound as exc:
            raise BlockNotFound(
                exc.message,
                hint="to fetch from elsewhere, pass --gateway/--api or set LILYPAD_IPFS_GATEWAY",
            ) from None

    def cat(self, cid: CID | str) -> Iterator[bytes]:
        """File bytes from the local store."""
        return _cat(self.store, cid)

    def pin(self, cid: CID | str) -> None:
        """Pin recursively (every block must be present)."""
        self.store.pin(as_cid(cid), PinType.RECURSIVE)

    def unpin(self, cid: CID | str) -> None:
        """Remove a pin."""
        self.store.unpin(as_cid(cid))

    def pins(self) -> list[CID]:
        """Pinned CIDs."""
        return list(self.store.pins())

    def close(self) -> None:
        """Nothing to release."""


class KuboStorage:
    """Any node speaking Kubo RPC; downloads go block by block through ``block/get``, verified."""

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

    def get(self, cid: CID | str, dest: Path, *, on_symlink: OnSymlink | None = None) -> Path:
        """Verified download: the DAG as one CAR (``dag/export``), then block by block for
        anything it lacked."""
        return _get_with_car(self.client, as_cid(cid), dest, on_symlink)

    def cat(self, cid: CID | str) -> Iterator[bytes]:
        """Verified file bytes."""
        return _cat(self.client, cid)

    def pin(self, cid: CID | str) -> None:
        """``pin/add``."""
        self.client.pin_add(as_cid(cid))

    def unpin(self, cid: CID | str) -> None:
        """``pin/rm``."""
        self.client.pin_rm(as_cid(cid))

    def pins(self) -> list[CID]:
        """``pin/ls``."""
        return list(self.client.pin_ls())

    def close(self) -> None:
        """Close the HTTP connections."""
        self.client.close()


class _CarSource(dag.BlockSource, Protocol):
    def fetch_car(self, root: CID, sink: BlockSink) -> int: ...


def _get_with_car(client: _CarSource, root: CID, dest: Path, on_symlink: OnSymlink | None) -> Path:
    """Download ``root`` to ``dest``: its DAG as one CAR, checked as it arrives and kept in a
    temporary store beside ``dest`` (removed afterwards); anything the CAR lacked block by
    block. One request instead of one per block."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".car-", dir=dest.parent) as tmp:
        cache = Blockstore(Path(tmp))
        try:
            with cache.writer() as sink:
                client.fetch_car(root, sink)
            return dag.export(_Fallback(cache, client), root, dest, on_symlink=on_symlink)
        finally:
            cache.close()


class _Fallback:
    """Blocks from a local cache, else from a remote source (both verify)."""

    def __init__(self, cache: Blockstore, remote: dag.BlockSource) -> None:
        self.cache = cache
        self.remote = remote

    def get(self, cid: CID) -> bytes:
        """From the cache if there, else from the remote."""
        if self.cache.has(cid):
            return self.cache.get(cid)
        return self.remote.get(cid)


class GatewayStorage:
    """A trustless gateway: read-only, every block verified."""

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

    def get(self, cid: CID | str, dest: Path, *, on_symlink: OnSymlink | None = None) -> Path:
        """Verified download: the DAG as one CAR when the gateway serves it, else block by block.

        The CAR's blocks are checked as they arrive and kept in a temporary store beside
        ``dest`` (removed afterwards); anything the CAR lacked is fetched block by block.
        """
        return _get_with_car(self.client, as_cid(cid), dest, on_symlink)

    def cat(self, cid: CID | str) -> Iterator[bytes]:
        """Verified file bytes."""
        return _cat(self.client, cid)

    def pin(self, cid: CID | str) -> None:
        """Not possible on a gateway."""
        raise self._read_only("pin")

    def unpin(self, cid: CID | str) -> None:
        """Not possible on a gateway."""
        raise self._read_only("unpin")

    def pins(self) -> list[CID]:
        """Not possible on a gateway."""
        raise self._read_only("list pins")

    def close(self) -> None:
        """Close the HTTP connections."""
        self.client.close()


class RemotePinning:
    """Adds and fetches through ``inner``; pins at an IPFS Pinning Service as well."""

    def __init__(self, inner: Storage, service: PinningServiceClient) -> None:
        self.inner = inner
        self.service = service

    def add(self, path: Path, *, pin: bool = True) -> CID:
        """Add through ``inner`` (pinned there too), then ask the service to pin."""
        cid = self.inner.add(path, pin=pin)
        if pin:
            self.service.add(cid, name=path.name)
        return cid

    def get(self, cid: CID | str, dest: Path, *, on_symlink: OnSymlink | None = None) -> Path:
        """Through ``inner``."""
        return self.inner.get(cid, dest, on_symlink=on_symlink)

    def cat(self, cid: CID | str) -> Iterator[bytes]:
        """Through ``inner``."""
        return self.inner.cat(cid)

    def pin(self, cid: CID | str) -> None:
        """Request a pin at the service (it fetches the content on its own)."""
        self.service.add(cid)

    def unpin(self, cid: CID | str) -> None:
        """Withdraw every request for ``cid`` at the service."""
        for request in self.service.list(cid=cid):
            self.service.remove(request.requestid)

    def pins(self) -> list[CID]:
        """Pinned at the service."""
        return [CID.parse(r.pin.cid) for r in self.service.list()]

    def close(self) -> None:
        """Close both."""
        self.inner.close()
        self.service.close()


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
