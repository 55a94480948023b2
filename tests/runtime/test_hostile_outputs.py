"""What a hostile module leaves in /outputs never leaks provider files nor fails the job.

A module is written by the job creator. It may leave symlinks to the provider's key, to
``/dev/zero`` or ``/proc/self/environ``, and fifos, sockets or device nodes (which IPFS refuses,
so that the provider fails the deal and loses its collateral). The result layout removes the
special files (noting each on stderr, the same way on every executor), nothing follows a link,
and the result folder gets one CID on every run and executor.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from lilypad import modules
from lilypad.storage import LocalStorage, compute_cid
from lilypad.storage.blockstore import Blockstore
from lilypad.storage.cid import CID
from lilypad.storage.dag import resolve
from lilypad.storage.unixfs import NodeType, decode_node
from resource_provider.executors import DockerExecutor, Executor, JobStatus, result_digest
from resource_provider.executors.layout import (
    discard_outputs,
    finish_layout,
    prepare_output_dir,
    tree_size,
)
from resource_provider.runner import RunResult, run_job
from tests.runtime.conftest import fixture_module, process_executor

SECRET = b"-----BEGIN PROVIDER KEY----- 0a7c-the-job-creator-must-never-see-this -----END-----"
REMOVED = [
    "lilypad: removed outputs/pipe: a fifo; a result holds only files, directories and symlinks",
    "lilypad: removed outputs/sub/pipe: a fifo; a result holds only files, directories and "
    "symlinks",
]


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    key = tmp_path / "provider" / "key.pem"
    key.parent.mkdir()
    key.write_bytes(SECRET)
    return key


def _leaks() -> list[bytes]:
    environ = Path("/proc/self/environ").read_bytes().split(b"\0")
    leaks = [SECRET, max(environ, key=len)]
    if os.access("/etc/shadow", os.R_OK):
        leaks += [line for line in Path("/etc/shadow").read_bytes().splitlines() if line][:3]
    return leaks


def _assert_no_leak(store: Blockstore) -> None:
    packs = b"".join(p.read_bytes() for p in (store.root / "packs").iterdir())
    for leak in _leaks():
        assert leak not in packs
    assert len(packs) < 256 * 1024  # nothing came from /dev/zero


def _symlink_target(store: Blockstore, root: CID, rel: str) -> bytes:
    node = decode_node(store.get(resolve(store, root, rel)))
    assert node.unixfs is not None
    assert node.unixfs.type is NodeType.SYMLINK
    return node.unixfs.data or b""


def _run(executor: Executor, storage: LocalStorage, out: Path, secret: Path) -> RunResult:
    module = fixture_module("hostile-outputs")
    spec = modules.render(module, [f"Secret={secret}"])
    return run_job(executor, storage, spec, out)


# --- a module run, on each executor -------------------------------------------------------------


def test_a_hostile_module_completes_with_a_stable_cid_and_leaks_nothing(
    executor: Executor, tmp_path: Path, secret: Path
) -> None:
    storage = LocalStorage(tmp_path / "repo")
    first = _run(executor, storage, tmp_path / "a", secret)
    second = _run(executor, storage, tmp_path / "b", secret)
    for run, out in ((first, tmp_path / "a"), (second, tmp_path / "b")):
        assert run.execution.status is JobStatus.SUCCEEDED, (out / "stderr").read_text()
        assert (out / "stderr").read_text().splitlines() == REMOVED
        assert not (out / "outputs" / "pipe").exists()
        assert (out / "outputs" / "secret").is_symlink()
    assert first.cid == second.cid == compute_cid(tmp_path / "a")
    assert result_digest(tmp_path / "a") == result_digest(tmp_path / "b")
    root = first.cid
    assert _symlink_target(storage.store, root, "outputs/secret") == os.fsencode(secret)
    assert _symlink_target(storage.store, root, "outputs/zero") == b"/dev/zero"
    _assert_no_leak(storage.store)


@pytest.mark.docker
@pytest.mark.usefixtures("docker_images")
def test_a_hostile_modules_result_has_one_cid_on_both_executors(
    tmp_path: Path, secret: Path
) -> None:
    storage = LocalStorage(tmp_path / "repo")
    with DockerExecutor() as docker_executor:
        in_docker = _run(docker_executor, storage, tmp_path / "docker", secret)
    in_bwrap = _run(process_executor(), storage, tmp_path / "process", secret)
    assert in_docker.cid == in_bwrap.cid
    assert result_digest(tmp_path / "docker") == result_digest(tmp_path / "process")
    _assert_no_leak(storage.store)


# --- the layout steps themselves ----------------------------------------------------------------


def _result_with_specials(root: Path) -> Path:
    out = prepare_output_dir(root)
    (out / "stdout").write_bytes(b"done\n")
    (out / "stderr").write_bytes(b"a log line\n")
    outputs = out / "outputs"
    (outputs / "keep.txt").write_bytes(b"kept")
    (outputs / "zero").symlink_to("/dev/zero")
    os.mkfifo(outputs / "b-fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(outputs / "c-socket"))
    (outputs / "deep" / "er").mkdir(parents=True)
    os.mkfifo(outputs / "deep" / "er" / "fifo")
    weird = os.fsencode(outputs) + b"/caf\xe9\n"
    os.mkdir(weird)
    Path(os.fsdecode(weird + b"/inside.txt")).write_bytes(b"x")
    return out


def test_finish_layout_removes_special_files_deterministically_and_notes_them(
    tmp_path: Path,
) -> None:
    one = _result_with_specials(tmp_path / "one")
    two = _result_with_specials(tmp_path / "two")
    notes = finish_layout(one, 0)
    assert finish_layout(two, 0) == notes
    assert notes == [
        "lilypad: removed outputs/b-fifo: a fifo; a result holds only files, directories and "
        "symlinks",
        "lilypad: removed outputs/c-socket: a socket; a result holds only files, directories "
        "and symlinks",
        "lilypad: removed outputs/caf\\xe9\\n: its name is not UTF-8, which IPFS (UnixFS) names "
        "must be",
        "lilypad: removed outputs/deep/er/fifo: a fifo; a result holds only files, directories "
        "and symlinks",
    ]
    assert (one / "stderr").read_text().splitlines() == ["a log line", *notes]
    assert (one / "exitCode").read_text() == "0"
    assert sorted(p.name for p in (one / "outputs").iterdir()) == ["deep", "keep.txt", "zero"]
    assert (one / "outputs" / "zero").is_symlink()
    assert compute_cid(one) == compute_cid(two)


def test_finish_layout_removes_a_device_node(tmp_path: Path) -> None:
    out = prepare_output_dir(tmp_path / "dev")
    (out / "stderr").write_bytes(b"")
    try:
        os.mknod(out / "outputs" / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD (root)")
    assert finish_layout(out, 0) == [
        "lilypad: removed outputs/null: a character device; a result holds only files, "
        "directories and symlinks"
    ]
    compute_cid(out)


def test_finish_layout_gives_back_what_a_module_made_unreadable(tmp_path: Path) -> None:
    out = prepare_output_dir(tmp_path / "locked")
    (out / "stderr").write_bytes(b"")
    locked = out / "outputs" / "locked"
    locked.mkdir()
    (locked / "file.txt").write_bytes(b"inside")
    (locked / "file.txt").chmod(0)
    locked.chmod(0)
    assert finish_layout(out, 0) == []
    assert stat.S_IMODE(locked.stat().st_mode) & 0o700 == 0o700
    assert (locked / "file.txt").read_bytes() == b"inside"
    compute_cid(out)


def test_tree_size_never_follows_symlinks(tmp_path: Path) -> None:
    huge = tmp_path / "huge.bin"
    with huge.open("wb") as file:
        file.truncate(64 * 2**30)  # sparse: 64 GiB that cost no disk
    outputs = tmp_path / "outputs"
    (outputs / "sub").mkdir(parents=True)
    (outputs / "real.txt").write_bytes(b"12345")
    links = {"zero": "/dev/zero", "huge": str(huge), "dir": str(tmp_path), "sub/up": ".."}
    for name, target in links.items():
        (outputs / name).symlink_to(target)
    assert tree_size(outputs) == 5 + sum(len(t) for t in links.values())


def test_result_digest_reads_no_link_and_no_fifo(tmp_path: Path) -> None:
    out = tmp_path / "result"
    (out / "outputs").mkdir(parents=True)
    (out / "outputs" / "zero").symlink_to("/dev/zero")
    (out / "outputs" / "dir").symlink_to(str(tmp_path))
    os.mkfifo(out / "outputs" / "fifo")
    digests: list[str] = []
    worker = threading.Thread(target=lambda: digests.append(result_digest(out)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert digests, "result_digest hung on a fifo or a link to /dev/zero"
    (out / "outputs" / "dir").unlink()
    (out / "outputs" / "dir").symlink_to("/elsewhere")
    assert result_digest(out) != digests[0]  # a directory link counts by its target


def test_discard_outputs_also_removes_folders_a_module_locked(tmp_path: Path) -> None:
    out = prepare_output_dir(tmp_path / "flood")
    for name in ("stdout", "stderr"):
        (out / name).write_bytes(b"x" * 10)
    locked = out / "outputs" / "locked"
    (locked / "deeper").mkdir(parents=True)
    (locked / "deeper" / "big.bin").write_bytes(b"y" * 100)
    (locked / "deeper").chmod(0)
    locked.chmod(0)
    discard_outputs(out)
    assert list((out / "outputs").iterdir()) == []


AS_NOBODY = """
import sys
from pathlib import Path
from lilypad.storage import compute_cid
from resource_provider.executors.layout import finish_layout, prepare_output_dir, tree_size
out = prepare_output_dir(Path(sys.argv[1]))
(out / "stderr").write_bytes(b"")
hidden = out / "outputs" / "hidden"
hidden.mkdir()
(hidden / "big.bin").write_bytes(b"x" * 1000)
hidden.chmod(0)
print(tree_size(out / "outputs"))
hidden.chmod(0)
finish_layout(out, 0)
print(compute_cid(out))
"""


def test_a_folder_a_module_locks_is_still_measured_and_added_by_a_non_root_provider() -> None:
    # Root reads every folder whatever its mode; a provider running as a plain user does not.
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to run the check as a plain user")
    scratch = Path(tempfile.mkdtemp(prefix="lilypad-nobody-"))
    try:
        os.chown(scratch, 65534, 65534)
        done = subprocess.run(
            [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-c", AS_NOBODY, str(scratch / "result")],
            capture_output=True, text=True, timeout=60, check=False,
            cwd=Path(__file__).parent.parent.parent,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        size, cid = done.stdout.split()
        assert int(size) == 1000  # the watchdog saw what the locked folder holds
        assert cid.startswith("bafy")
    finally:
        shutil.rmtree(scratch)


@pytest.mark.parametrize(
    ("inputs", "why"),
    [
        (("Depth=40",), "folders nested deeper than 32 levels"),
        (("Depth=3000", "Width=200"), "folders nested deeper than 32 levels"),  # past PATH_MAX
        (("Files=60",), "more than 50 entries"),
    ],
    ids=["deep", "past-path-max", "many-files"],
)
def test_an_unbounded_result_shape_is_stopped_like_too_many_bytes(
    executor: Executor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    inputs: tuple[str, ...],
    why: str,
) -> None:
    """A million empty files or a folder chain past PATH_MAX would fail the provider's walks and
    its upload, and so its deal (the job creator would take its collateral): such a result is
    stopped as one that writes too much, deterministically, on every executor."""
    monkeypatch.setattr("resource_provider.executors.layout.MAX_ENTRIES", 50)
    from tests.runtime.conftest import run_job as run_fixture

    module = fixture_module("sprawl")
    first = run_fixture(executor, module, tmp_path / "a", *inputs)
    second = run_fixture(executor, module, tmp_path / "b", *inputs)
    for result in (first, second):
        assert result.status is JobStatus.OUTPUT_LIMIT, result.message
        assert result.exit_code == 125
        assert why in result.message
        assert list((result.output_dir / "outputs").iterdir()) == []
    assert compute_cid(tmp_path / "a") == compute_cid(tmp_path / "b")
