"""Direct pins (one block), and asking how a CID is pinned, on every backend.

What a provider needs to keep a job's input on a node it shares with the job creator: a pin of
its own on each block of the input's path, which the job creator's unpin of its folder (and a GC)
leaves in place, and which never replaces the job creator's pin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from lilypad.errors import StorageError
from lilypad.storage import GatewayStorage, KuboStorage, LocalStorage, RemotePinning, Storage
from lilypad.storage.blockstore import Blockstore, PinType
from lilypad.storage.cid import CID, RAW
from lilypad.storage.client import KuboClient, PinningServiceClient, PinStatus
from lilypad.storage.node import EmbeddedNode
from tests.storage.conftest import NODE_TOKEN, PNG, UNKNOWN

Backend = Callable[[EmbeddedNode], Storage]
BACKENDS: dict[str, Backend] = {
    "local": lambda node: LocalStorage(node.store.root),
    "kubo-rpc": lambda node: KuboStorage(node.api_url),
    # the embedded node is also the pinning service: its pins land in the same store
    "remote-pinning": lambda node: RemotePinning(
        KuboStorage(node.api_url), PinningServiceClient(node.api_url, NODE_TOKEN)
    ),
}


@pytest.fixture(params=sorted(BACKENDS))
def storage(request: pytest.FixtureRequest, node: EmbeddedNode) -> Iterator[Storage]:
    backend = BACKENDS[request.param](node)
    try:
        yield backend
    finally:
        backend.close()


def raw_cid(cid: CID) -> CID:
    """The same block under its raw CID."""
    return CID(1, RAW, cid.multihash)


def test_a_direct_pin_of_its_own_keeps_a_folder_block_when_the_folder_pin_goes(
    storage: Storage, node: EmbeddedNode, added: CID
) -> None:
    trace = storage.trace(f"{added}/image.png")
    image = trace.target
    assert [cid for cid, _ in trace.blocks] == [added]  # the folder is the one block on the way
    assert storage.pinned(added) is PinType.RECURSIVE  # `add` pinned it
    assert storage.pinned(image) is None  # held by the folder's pin, not pinned itself
    assert storage.pinned(UNKNOWN) is None

    # the folder block under another CID, and the file: pins that are not the folder's
    storage.pin(raw_cid(added), recursive=False)
    storage.pin(image)
    assert storage.pinned(raw_cid(added)) is PinType.DIRECT
    assert storage.pinned(image) is PinType.RECURSIVE
    assert storage.pinned(added) is PinType.RECURSIVE  # untouched

    storage.unpin(added)  # its owner lets the folder go
    node.store.gc()
    assert storage.pinned(added) is None
    assert b"".join(storage.cat(f"{added}/image.png")) == PNG  # the path still resolves
    with pytest.raises(StorageError, match="not found"):
        b"".join(storage.cat(f"{added}/notes/readme.txt"))  # only what was pinned stayed

    storage.unpin(raw_cid(added))
    storage.unpin(image)
    node.store.gc()
    assert storage.pinned(raw_cid(added)) is None
    assert not node.store.has(added)
    assert not node.store.has(image)


def test_a_direct_pin_never_replaces_a_recursive_one(
    storage: Storage, node: EmbeddedNode, added: CID
) -> None:
    """As kubo: a direct pin of a CID pinned recursively is refused (it would stop holding the
    DAG below it); a recursive pin of a CID pinned directly takes its place."""
    with pytest.raises(StorageError, match="already pinned recursively"):
        storage.pin(added, recursive=False)
    assert node.store.pinned(added) is PinType.RECURSIVE
    readme = storage.trace(f"{added}/notes/readme.txt").target
    storage.pin(readme, recursive=False)
    assert storage.pinned(readme) is PinType.DIRECT
    storage.pin(readme)
    assert storage.pinned(readme) is PinType.RECURSIVE


def test_a_direct_pin_needs_its_block(storage: Storage) -> None:
    with pytest.raises(StorageError, match=r"not found|not in the local store"):
        storage.pin(UNKNOWN, recursive=False)
    assert storage.pinned(UNKNOWN) is None


def test_the_remote_pinning_service_holds_whole_dags_and_the_node_single_blocks(
    node: EmbeddedNode, added: CID
) -> None:
    """The Pinning Service API pins only whole DAGs: a direct pin goes to the node."""
    service = PinningServiceClient(node.api_url, NODE_TOKEN)
    storage = RemotePinning(KuboStorage(node.api_url), service)
    image = storage.trace(f"{added}/image.png").target
    try:
        storage.pin(image)
        storage.pin(raw_cid(added), recursive=False)
        assert [r.pin.cid for r in service.list()] == [str(image)]
        assert node.store.pinned(raw_cid(added)) is PinType.DIRECT
        storage.unpin(raw_cid(added))
        storage.unpin(image)
        assert service.list(status=list(PinStatus)) == []
        assert storage.pinned(image) is None
        assert node.store.pinned(raw_cid(added)) is None
    finally:
        storage.close()


def test_kubo_rpc_asks_for_one_cid_and_one_type_at_a_time(node: EmbeddedNode, added: CID) -> None:
    with KuboClient(node.api_url) as client:
        assert client.pin_type(added) == "recursive"
        client.pin_rm(added)
        assert client.pin_type(added) is None
        client.pin_add(added, recursive=False)
        assert client.pin_type(added) == "direct"
        assert client.pin_ls() == {added: "direct"}


def test_a_gateway_traces_paths_but_cannot_pin(node: EmbeddedNode, added: CID) -> None:
    gateway = GatewayStorage(node.gateway_url)
    local = LocalStorage(node.store.root)
    try:
        assert gateway.trace(f"{added}/image.png") == local.trace(f"{added}/image.png")
        with pytest.raises(StorageError, match="read-only"):
            gateway.pin(added, recursive=False)
        with pytest.raises(StorageError, match="read-only"):
            gateway.pinned(added)
    finally:
        gateway.close()


def test_pins_are_of_cids_not_blocks(store: Blockstore, node: EmbeddedNode, added: CID) -> None:
    """A block's CIDv0, CIDv1 and raw CID are three pins; unpinning one leaves the others."""
    v0 = CID(0, added.codec, added.multihash)
    store.pin(v0, PinType.DIRECT)
    store.pin(raw_cid(added), PinType.DIRECT)
    assert store.pins() == {
        added: PinType.RECURSIVE,
        v0: PinType.DIRECT,
        raw_cid(added): PinType.DIRECT,
    }
    store.unpin(added)
    store.unpin(v0)
    store.gc()
    assert store.has(added)  # the raw CID's pin holds the block
    assert store.pinned(added) is None
