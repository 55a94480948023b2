"""A job's file inputs: each host file bound read-only at its path under ``/inputs/``, in both
executors, with the same result on either.

The ``readinput`` fixture copies and hashes the file its ``Path`` tunable names; with
``Probe=true`` it also tries to append to, truncate, chmod, rename and remove it, to create a file
beside it, and lists the folder it is in and the one above.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from lilypad import modules
from lilypad.errors import ExecutorError
from resource_provider.executors import (
    DockerExecutor,
    ExecutionResult,
    Executor,
    ExecutorKind,
    ProcessExecutor,
    Sandbox,
    result_digest,
)
from resource_provider.executors.base import SANDBOX_UID, Job, JobInput
from resource_provider.executors.inputs import staging_dir
from tests.runtime.conftest import fixture_module, process_executor

#: An input's bytes: every byte value, and text that is not ASCII.
DATA = bytes(range(256)) * 64 + "héllo, wörld\n".encode()
MOUNT = "/inputs/File/data.bin"
#: What the probe tries to do to its input; each must be denied.
PROBES = ("append", "truncate", "chmod", "rename", "remove", "create beside")


def run_with(
    executor: Executor,
    output: Path,
    inputs: Iterable[JobInput],
    *tunables: str,
    module: str = "readinput",
) -> ExecutionResult:
    resolved = fixture_module(module)
    spec = modules.render(resolved, list(tunables))
    return executor.run(Job.of(resolved, spec, output, inputs=inputs))


def input_file(folder: Path, name: str = "data.bin", data: bytes = DATA) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def outputs_of(result: ExecutionResult) -> Path:
    assert result.ok, (result.message, read(result.output_dir / "stderr"))
    return result.output_dir / "outputs"


# --- a job reads its input at the mount path ---------------------------------------------------


def test_a_job_reads_its_input_at_its_mount_path(executor: Executor, tmp_path: Path) -> None:
    source = input_file(tmp_path / "src")
    mount = "/inputs/Image/photo.png"
    result = run_with(executor, tmp_path / "out", [JobInput(source, mount)], f"Path={mount}")
    outputs = outputs_of(result)
    assert (outputs / "copy").read_bytes() == DATA
    assert read(outputs / "sha256") == f"{hashlib.sha256(DATA).hexdigest()}  -\n"


def test_several_inputs_each_at_its_own_path(executor: Executor, tmp_path: Path) -> None:
    first = input_file(tmp_path / "a", data=b"first")
    second = input_file(tmp_path / "b", data=b"second")
    inputs = [JobInput(first, "/inputs/Image/data.bin"), JobInput(second, "/inputs/Mask/data.bin")]
    run_with(executor, tmp_path / "one", inputs, "Path=/inputs/Image/data.bin")
    run_with(executor, tmp_path / "two", inputs, "Path=/inputs/Mask/data.bin")
    assert (tmp_path / "one" / "outputs" / "copy").read_bytes() == b"first"
    assert (tmp_path / "two" / "outputs" / "copy").read_bytes() == b"second"


@pytest.mark.docker
@pytest.mark.usefixtures("docker_images")
@pytest.mark.parametrize("probe", [False, True], ids=["read", "probe"])
def test_the_result_does_not_depend_on_the_executor(tmp_path: Path, probe: bool) -> None:
    # In its own folder, with a sibling: the probe lists the folder, which must look the same.
    source = input_file(tmp_path / "src")
    input_file(tmp_path / "src", "sibling.txt", b"not for the job")
    executors: dict[str, Executor] = {"docker": DockerExecutor(), "bwrap": process_executor()}
    if not probe:  # an unsandboxed job can do to the file whatever the provider can
        executors["unsandboxed"] = ProcessExecutor(sandbox=Sandbox.NONE)
    digests = {}
    for name, executor in executors.items():
        result = run_with(
            executor, tmp_path / name, [JobInput(source, MOUNT)], f"Probe={str(probe).lower()}"
        )
        outputs_of(result)
        digests[name] = result_digest(tmp_path / name)
    assert len(set(digests.values())) == 1, digests
    assert source.read_bytes() == DATA


# --- read-only, and nothing else of the host's ---------------------------------------------------


def test_a_job_cannot_change_remove_or_rename_its_input(executor: Executor, tmp_path: Path) -> None:
    # Writable by anyone and the job user's own: only the read-only mount stands in the way.
    source = input_file(tmp_path / "src")
    source.chmod(0o666)
    if executor.kind is ExecutorKind.DOCKER and os.geteuid() == 0:
        os.chown(source, SANDBOX_UID, SANDBOX_UID)
    mode = stat.S_IMODE(source.stat().st_mode)
    result = run_with(executor, tmp_path / "out", [JobInput(source, MOUNT)], "Probe=true")
    report = read(outputs_of(result) / "report.txt").splitlines()
    assert report == [f"{probe}: denied" for probe in PROBES]
    assert source.read_bytes() == DATA
    assert stat.S_IMODE(source.stat().st_mode) == mode
    assert sorted(p.name for p in source.parent.iterdir()) == ["data.bin"]


def test_a_job_sees_its_input_file_and_nothing_else_of_its_folder(
    executor: Executor, tmp_path: Path
) -> None:
    source = input_file(tmp_path / "src")
    secret = b"the provider's other file, 7f3c9a"
    input_file(tmp_path / "src", "sibling.txt", secret)
    (tmp_path / "src" / "subfolder").mkdir()
    result = run_with(executor, tmp_path / "out", [JobInput(source, MOUNT)], "Probe=true")
    outputs = outputs_of(result)
    assert read(outputs / "folder") == "data.bin\n"
    assert read(outputs / "parent") == "File\n"
    for path in result.output_dir.rglob("*"):
        assert not path.is_file() or secret not in path.read_bytes(), path


# --- a file the job's user may not read ----------------------------------------------------------


@pytest.mark.parametrize("owner", ["root", "another user"])
def test_an_input_the_jobs_user_may_not_read_still_works(
    executor: Executor, tmp_path: Path, owner: str
) -> None:
    """As root, docker runs jobs as nobody and bubblewrap as root without its privileges: a
    user's 0600 file (``lilypad module run -i Image=@photo.png``) is handed over as a copy."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a provider that is not root runs jobs as its own user")
    source = input_file(tmp_path / "src")
    source.chmod(0o600)
    if owner == "another user":
        os.chown(source, 12345, 12345)
    before = source.stat()
    result = run_with(executor, tmp_path / "out", [JobInput(source, MOUNT)])
    assert (outputs_of(result) / "copy").read_bytes() == DATA
    after = source.stat()
    assert (after.st_mode, after.st_uid, after.st_gid) == (
        before.st_mode,
        before.st_uid,
        before.st_gid,
    )
    assert list(staging_dir().iterdir()) == []  # the copy went with the job


# --- bad inputs: refused before anything runs ----------------------------------------------------


def _symlink(folder: Path) -> Path:
    link = folder / "link.bin"
    link.symlink_to(input_file(folder))
    return link


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "fifo")
    return folder / "fifo"


BAD_MOUNTS = {
    "relative": ("inputs/File/data.bin", "not an absolute path"),
    "outside /inputs": ("/etc/passwd", "outside /inputs/"),
    "/inputs itself": ("/inputs", "outside /inputs/"),
    "a look-alike of /inputs": ("/inputsx/data.bin", "outside /inputs/"),
    "dot-dot": ("/inputs/../etc/passwd", "'..' segment"),
    "dot-dot at the end": ("/inputs/File/..", "'..' segment"),
    "double slash": ("/inputs//File/data.bin", "not normalised"),
    "dot": ("/inputs/./data.bin", "not normalised"),
    "trailing slash": ("/inputs/File/", "not normalised"),
}


@pytest.mark.parametrize(("mount", "why"), BAD_MOUNTS.values(), ids=BAD_MOUNTS.keys())
def test_a_bad_mount_is_refused_before_anything_runs(
    executor: Executor, tmp_path: Path, mount: str, why: str
) -> None:
    source = input_file(tmp_path / "src")
    with pytest.raises(ExecutorError, match=why) as refused:
        run_with(executor, tmp_path / "out", [JobInput(source, mount)])
    assert repr(mount) in refused.value.message
    assert not (tmp_path / "out").exists()


BAD_SOURCES = {
    "symlink": (_symlink, "is a symlink"),
    "directory": (lambda folder: folder, "is a directory"),
    "fifo": (_fifo, "is a fifo"),
    "missing": (lambda folder: folder / "nothing.bin", "does not exist"),
}


@pytest.mark.parametrize(("make", "why"), BAD_SOURCES.values(), ids=BAD_SOURCES.keys())
def test_a_bad_source_is_refused_before_anything_runs(
    executor: Executor, tmp_path: Path, make: Callable[[Path], Path], why: str
) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    source = make(folder)
    with pytest.raises(ExecutorError, match=why) as refused:
        run_with(executor, tmp_path / "out", [JobInput(source, MOUNT)])
    assert MOUNT in refused.value.message
    assert str(source) in refused.value.message
    assert not (tmp_path / "out").exists()


def test_two_inputs_at_one_mount_are_refused(executor: Executor, tmp_path: Path) -> None:
    first, second = input_file(tmp_path / "a"), input_file(tmp_path / "b")
    inputs = [JobInput(first, MOUNT), JobInput(second, MOUNT)]
    with pytest.raises(ExecutorError, match=f"two inputs are mounted at '{MOUNT}'"):
        run_with(executor, tmp_path / "out", inputs)
    assert not (tmp_path / "out").exists()


def test_an_input_inside_another_inputs_path_is_refused(executor: Executor, tmp_path: Path) -> None:
    first, second = input_file(tmp_path / "a"), input_file(tmp_path / "b")
    inputs = [JobInput(first, "/inputs/File"), JobInput(second, "/inputs/File/data.bin")]
    with pytest.raises(ExecutorError, match="inside input '/inputs/File'"):
        run_with(executor, tmp_path / "out", inputs)
    assert not (tmp_path / "out").exists()


# --- unsandboxed: the host path ----------------------------------------------------------------


def test_unsandboxed_a_job_gets_the_host_path_of_its_input(tmp_path: Path) -> None:
    source = input_file(tmp_path / "src")
    executor = ProcessExecutor(sandbox=Sandbox.NONE)
    inputs = [JobInput(source, MOUNT)]
    result = run_with(executor, tmp_path / "env", inputs, f"Value={MOUNT}", module="envdump")
    env = dict(line.split("=", 1) for line in read(outputs_of(result) / "env.txt").splitlines())
    assert env["VALUE"] == str(source)
    assert env["FIXED"] == "from the manifest"
    assert env["LILYPAD_OUTPUTS_DIR"] == str(tmp_path / "env" / "outputs")
    read_back = run_with(executor, tmp_path / "read", inputs)
    assert (outputs_of(read_back) / "copy").read_bytes() == DATA


def test_sandboxed_the_env_names_the_mount_path(executor: Executor, tmp_path: Path) -> None:
    source = input_file(tmp_path / "src")
    result = run_with(
        executor, tmp_path / "out", [JobInput(source, MOUNT)], f"Value={MOUNT}", module="envdump"
    )
    assert f"VALUE={MOUNT}\n" in read(outputs_of(result) / "env.txt")
