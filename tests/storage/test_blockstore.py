"""The on-disk blockstore: pins, garbage collection, corruption, full disk, changing files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lilypad.errors import BlockNotFound, InputError, InvalidCID, StorageError
from lilypad.storage import LocalStorage, compute_cid
from lilypad.storage.blockstore import Blockstore, PinType
from lilypad.storage.cid import CID
from lilypad.storage.importer import Importer, ImportProfile
from tests.storage.conftest import write_tree


def _pack_bytes(store: Blockstore) -> int:
    return sum(p.stat().st_size for p in (store.root / "packs").iterdir())


def test_gc_removes_only_unpinned_blocks(store: Blockstore, tmp_path: Path) -> None:
    local = LocalStorage(store.root)
    kept = local.add(write_tree(tmp_path / "kept", {"a": b"a" * 300_000, "b": b"b"}))
    dropped = local.add(write_tree(tmp_path / "dropped", {"c": b"c" * 300_000}), pin=False)
    shared = local.add(write_tree(tmp_path / "shares-a-block", {"b": b"b"}))
    kept_blocks = {c for c, _ in store.walk(kept)}
    assert store.pins() == {kept: PinType.RECURSIVE, shared: PinType.RECURSIVE}

    before = _pack_bytes(store)
    assert store.gc() > 0
    assert _pack_bytes(store) < before - 300_000
    assert all(store.has(c) for c in kept_blocks)
    assert all(store.get(c) for c in kept_blocks)  # still readable after compaction
    assert not store.has(dropped)
    with pytest.raises(BlockNotFound, match=str(dropped)):
        store.get(dropped)

    local.unpin(shared)
    store.gc()
    assert not store.has(shared)
    assert all(store.has(c) for c in kept_blocks)  # the block "b" is still held by `kept`
    local.unpin(kept)
    store.gc()
    assert _pack_bytes(store) == 0  # the space is reclaimed, not only the index


def test_pinning_needs_the_whole_dag(store: Blockstore, tmp_path: Path) -> None:
    root = LocalStorage(store.root).add(write_tree(tmp_path / "t", {"x": b"x" * 600_000}))
    store.unpin(root)
    leaf = next(c for c, _ in store.walk(root) if c != root)
    store.delete(leaf)
    with pytest.raises(BlockNotFound, match=str(leaf)):
        store.pin(root)
    assert root not in store.pins()
    with pytest.raises(StorageError, match="is not pinned"):
        store.unpin(root)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzd",  # one character short
        "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG!",
        "zdj7W" + "1" * 20,
    ],
)
def test_malformed_cids_are_refused_with_the_value(text: str) -> None:
    with pytest.raises(InvalidCID, match="is not a valid CID") as info:
        CID.parse(text)
    assert repr(text.strip()[:100]) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_cid_round_trips_in_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"round trip")
    for profile in (ImportProfile(), ImportProfile.kubo(0)):
        cid = compute_cid(path, profile)
        assert CID.parse(str(cid)) == cid
        assert CID.parse(bytes(cid)) == cid
        assert CID.parse(f"/ipfs/{cid}") == cid


def test_a_file_that_changes_while_added_is_refused(store: Blockstore, tmp_path: Path) -> None:
    path = tmp_path / "growing.log"
    path.write_bytes(b"x" * 600_000)

    class AppendOnFirstBlock:
        """A real writer appending to the file while the importer reads it."""

        def __init__(self) -> None:
            self.done = False

        def put(self, cid: CID, data: bytes) -> None:
            if not self.done:
                self.done = True
                with path.open("ab") as handle:
                    handle.write(b"more lines\n")
            store.put(cid, data)

    with pytest.raises(StorageError, match="changed while it was being added"):
        Importer(AppendOnFirstBlock()).add_path(path)


def test_bad_import_options_are_input_errors() -> None:
    with pytest.raises(InputError, match="chunk size 0 is out of range"):
        ImportProfile(chunk_size=0)
    with pytest.raises(InputError, match="CID version 2"):
        ImportProfile(cid_version=2)


def test_full_disk_fails_cleanly_and_leaves_the_store_consistent(tmp_path: Path) -> None:
    # A file-size limit makes the kernel refuse the write of a 256 KiB block (EFBIG), as a full
    # disk refuses it (ENOSPC); the small blocks written before it go through.
    repo = tmp_path / "repo"
    data = write_tree(tmp_path / "data", {"a-small.txt": b"small", "b-big.bin": b"\x01" * 700_000})
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        from lilypad.errors import StorageError
        from lilypad.storage import LocalStorage
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            LocalStorage(Path({str(repo)!r})).add(Path({str(data)!r}))
        except StorageError as exc:
            print(exc)
            sys.exit(3)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 3, result.stderr
    assert "cannot store" in result.stdout
    assert "no space left" in result.stdout

    # Nothing of the failed add is kept: no pin, no block, no pack; the store still works.
    store = Blockstore(repo)
    assert store.pins() == {}
    assert not store.has(compute_cid(data / "a-small.txt"))
    assert list((repo / "packs").iterdir()) == []
    assert LocalStorage(repo).add(data) == compute_cid(data)
