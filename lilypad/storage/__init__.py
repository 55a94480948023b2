"""IPFS storage: kubo-identical CIDs, an embedded node, Kubo RPC and verified downloads.

The API other parts use is three calls::

    from lilypad.storage import open_storage, result_dir

    storage = open_storage()                 # backend from LILYPAD_IPFS_API / _GATEWAY / default
    cid = storage.add(Path("outputs-dir"))   # CID of the tree (network profile), pinned
    storage.get(cid, result_dir(cid))        # verified: <data_dir>/downloaded-files/<CID>

and, to pick a source explicitly, ``open_storage(api="http://host:5001")`` or
``open_storage(gateway="https://gateway")``. ``storage.pin/unpin/pins/cat`` do what they say.
:func:`compute_cid` gives the CID of a path without storing anything (``ipfs add --only-hash``).
To run the embedded node inside another service (``lilypad network up``)::

    from lilypad.storage.blockstore import Blockstore
    from lilypad.storage.node import EmbeddedNode

    node = EmbeddedNode(Blockstore(repo), api="127.0.0.1:5001", gateway="127.0.0.1:8080").start()
    node.api_url, node.gateway_url      # "http://127.0.0.1:5001", ...; node.stop() at the end

Guarantees:

* CIDs equal kubo's ``ipfs add`` for the same options; the default is the network profile
  (:data:`NETWORK_PROFILE`: CIDv1, raw leaves, 256 KiB chunks, balanced DAG, 174 links, HAMT
  directories above 256 KiB of links).
* ``get`` hashes every block against its CID before writing a byte, writes into a temporary
  folder and renames it to ``dest`` only when complete; an entry named ``..`` or with ``/`` is
  refused. Errors: :class:`~lilypad.errors.InvalidCID` (malformed, exit 2),
  :class:`~lilypad.errors.BlockNotFound` (unknown CID, after at most ``LILYPAD_IPFS_TIMEOUT`` s),
  :class:`~lilypad.errors.CorruptBlock` (wrong bytes), :class:`~lilypad.errors.StorageError`.

Modules: :mod:`.cid` (CIDs), :mod:`.unixfs` (dag-pb/UnixFS codec), :mod:`.importer` (files to
blocks), :mod:`.blockstore` (disk store, pins, GC), :mod:`.dag` (reading, paths, export, tar),
:mod:`.car` (CARv1 read, write, import), :mod:`.node` (the embedded node: :mod:`.gateway`, the
path and trustless gateway; :mod:`.rpc`, the Kubo RPC API, with :mod:`.multipart` for streamed
uploads; :mod:`.pinning`, the Pinning Service API), :mod:`.client` (Kubo RPC, gateway, Pinning
Service API clients), :mod:`.backends` (the :class:`Storage` interface and :func:`open_storage`).
"""

from __future__ import annotations

from pathlib import Path

from lilypad.config import get_settings
from lilypad.storage.backends import (
    GatewayStorage,
    KuboStorage,
    LocalStorage,
    RemotePinning,
    Storage,
    StorageSettings,
    open_storage,
)
from lilypad.storage.cid import CID
from lilypad.storage.importer import NETWORK_PROFILE, ImportProfile, add_path


def compute_cid(path: Path, profile: ImportProfile = NETWORK_PROFILE) -> CID:
    """The CID ``path`` would get, storing nothing (``ipfs add --only-hash``)."""
    return add_path(path, None, profile).cid


def result_dir(cid: CID | str) -> Path:
    """Where a job's results are saved: ``<data_dir>/downloaded-files/<CID>``."""
    return get_settings().data_dir / "downloaded-files" / str(cid)


__all__ = [
    "CID",
    "NETWORK_PROFILE",
    "GatewayStorage",
    "ImportProfile",
    "KuboStorage",
    "LocalStorage",
    "RemotePinning",
    "Storage",
    "StorageSettings",
    "compute_cid",
    "open_storage",
    "result_dir",
]
