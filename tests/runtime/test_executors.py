"""Both executors against the fixture modules: each scenario gives its documented result."""

from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path

import docker
import pytest

from lilypad import modules
from lilypad.errors import ImageNotFound, OutputDirInUse
from resource_provider.executors import (
    EXIT_OUTPUT_LIMIT,
    EXIT_TIMEOUT,
    DockerExecutor,
    Executor,
    ExecutorKind,
    JobStatus,
    ProcessExecutor,
    Sandbox,
    Weights,
    result_digest,
)
from resource_provider.executors.layout import OVER_LIMIT_LINE, prepare_output_dir
from tests.conftest import CliRunner
from tests.runtime.conftest import FIXTURES, fixture_module, process_executor, run_job

#: The variables the runtime adds to a job's rendered env (docs/runtime contract).
RUNTIME_ENV = {
    "CUBLAS_WORKSPACE_CONFIG",
    "HOME",
    "HOSTNAME",
    "LILYPAD_OUTPUTS_DIR",
    "LILYPAD_TINY_WEIGHTS_DIR",
    "LILYPAD_WEIGHTS",
    "PATH",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONHASHSEED",
    "PYTHONUNBUFFERED",
    "TMPDIR",
}
#: What a POSIX shell exports of its own accord (the fixtures are shell scripts).
SHELL_ENV = {"PWD", "OLDPWD", "SHLVL", "_"}


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# --- cowsay: the same tunables give the same bytes ---------------------------------------------


def test_cowsay_same_tunables_give_identical_bytes(executor: Executor, tmp_path: Path) -> None:
    first = run_job(executor, "cowsay", tmp_path / "a", "Message=moo, said the cow")
    second = run_job(executor, "cowsay", tmp_path / "b", "Message=moo, said the cow")
    assert first.ok, (first.message, read(tmp_path / "a" / "stderr"))
    assert second.ok
    assert result_digest(tmp_path / "a") == result_digest(tmp_path / "b")
    stdout = (tmp_path / "a" / "stdout").read_bytes()
    assert stdout == (tmp_path / "a" / "outputs" / "cowsay.txt").read_bytes()
    assert b"< moo, said the cow >" in stdout
    assert read(tmp_path / "a" / "exitCode") == "0"
    assert read(tmp_path / "a" / "stderr") == ""


def test_cowsay_another_message_gives_other_bytes(executor: Executor, tmp_path: Path) -> None:
    run_job(executor, "cowsay", tmp_path / "a", "Message=one")
    run_job(executor, "cowsay", tmp_path / "b", "Message=two")
    assert result_digest(tmp_path / "a") != result_digest(tmp_path / "b")


MESSAGES = [
    "Hello, Lilypad!",
    "a*b $(id) `id` ; rm -rf / \\n %s %d 'quoted' \"double\" héllo wörld",
    "A long message that has to wrap over several lines of the speech bubble, with "
    "an-unbreakable-word-that-is-longer-than-the-forty-columns-of-a-line in it",
    "",
]


@pytest.mark.docker
@pytest.mark.usefixtures("docker_images")
@pytest.mark.parametrize("message", MESSAGES, ids=["default", "shell-chars", "long", "empty"])
def test_cowsay_bytes_do_not_depend_on_the_executor(tmp_path: Path, message: str) -> None:
    executors = {
        "docker": DockerExecutor(),
        "process-bwrap": process_executor(),
        "process-unsandboxed": ProcessExecutor(sandbox=Sandbox.NONE),
    }
    digests = {}
    for name, executor in executors.items():
        result = run_job(executor, "cowsay", tmp_path / name, f"Message={message}")
        assert result.ok, (name, read(tmp_path / name / "stderr"))
        digests[name] = result_digest(tmp_path / name)
    assert len(set(digests.values())) == 1, digests


# --- fixture modules: each scenario's documented result -----------------------------------------


def test_a_crash_is_a_failed_result_with_its_exit_code_and_stderr(
    executor: Executor, tmp_path: Path
) -> None:
    result = run_job(executor, fixture_module("crash"), tmp_path)
    assert result.status is JobStatus.FAILED
    assert result.exit_code == 3
    assert read(tmp_path / "exitCode") == "3"
    assert read(tmp_path / "stdout") == "working on it\n"
    assert read(tmp_path / "stderr").endswith("fatal: the fixture crashed on purpose\n")
    assert read(tmp_path / "outputs" / "partial.txt") == "partial\n"  # kept for diagnosis


def test_a_hang_is_killed_at_the_timeout_with_all_its_processes(
    executor: Executor, tmp_path: Path
) -> None:
    module = fixture_module("hang")
    result = run_job(executor, module, tmp_path)
    assert result.status is JobStatus.TIMED_OUT
    assert result.exit_code == EXIT_TIMEOUT
    assert read(tmp_path / "exitCode") == str(EXIT_TIMEOUT)
    assert module.spec.timeout_s * 1000 <= result.duration_ms < module.spec.timeout_s * 1000 + 5000
    assert read(tmp_path / "stderr") == "started\n"
    ticks = tmp_path / "outputs" / "ticks"
    size = ticks.stat().st_size
    assert size > 0  # the child did run ...
    time.sleep(0.6)
    assert ticks.stat().st_size == size  # ... and died with the job


@pytest.mark.docker
def test_a_docker_job_leaves_no_container_behind(
    docker_images: docker.DockerClient, tmp_path: Path
) -> None:
    for name in ("hang", "crash", "silent"):
        result = run_job(DockerExecutor(), fixture_module(name), tmp_path / name)
        left = docker_images.containers.list(
            all=True, filters={"label": f"lilypad.module={fixture_module(name).ref}"}
        )
        assert left == [], (name, result.status)


def test_a_module_that_writes_nothing_succeeds_with_empty_outputs(
    executor: Executor, tmp_path: Path
) -> None:
    result = run_job(executor, fixture_module("silent"), tmp_path)
    assert result.status is JobStatus.SUCCEEDED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exitCode", "outputs", "stderr", "stdout"]
    assert list((tmp_path / "outputs").iterdir()) == []
    assert read(tmp_path / "stdout") == read(tmp_path / "stderr") == ""
    assert read(tmp_path / "exitCode") == "0"


def test_a_module_that_writes_too_much_is_stopped_and_its_outputs_discarded(
    executor: Executor, tmp_path: Path
) -> None:
    module = fixture_module("flood")
    result = run_job(executor, module, tmp_path)
    assert result.status is JobStatus.OUTPUT_LIMIT
    assert result.exit_code == EXIT_OUTPUT_LIMIT
    assert read(tmp_path / "exitCode") == str(EXIT_OUTPUT_LIMIT)
    assert result.duration_ms < module.spec.timeout_s * 1000  # stopped by the cap, not the clock
    assert list((tmp_path / "outputs").iterdir()) == []
    # nothing of what it wrote before the watchdog looked: that depends on the machine's speed
    assert read(tmp_path / "stdout") == ""
    assert read(tmp_path / "stderr") == OVER_LIMIT_LINE


def test_a_nondeterministic_module_is_caught_by_comparing_results(
    executor: Executor, tmp_path: Path
) -> None:
    module = fixture_module("random")
    assert run_job(executor, module, tmp_path / "a").ok
    assert run_job(executor, module, tmp_path / "b").ok
    assert result_digest(tmp_path / "a") != result_digest(tmp_path / "b")


# --- the environment: exactly the rendered env plus the runtime's own variables ---------------


def job_env(path: Path) -> dict[str, str]:
    lines = read(path / "outputs" / "env.txt").splitlines()
    env = dict(line.split("=", 1) for line in lines)
    return {k: v for k, v in env.items() if k not in SHELL_ENV}


@pytest.mark.parametrize(
    "value",
    ["plain", "PATH=/evil LD_PRELOAD=/tmp/x.so", "x; export LILYPAD_WEIGHTS=tiny", "$(id) `id`"],
)
def test_the_env_is_exactly_the_rendered_env_plus_the_runtime_variables(
    executor: Executor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("PROVIDER_SECRET", "must not leak")
    result = run_job(executor, fixture_module("envdump"), tmp_path, f"Value={value}")
    assert result.ok, read(tmp_path / "stderr")
    env = job_env(tmp_path)
    assert set(env) == {"FIXED", "VALUE"} | RUNTIME_ENV
    assert env["VALUE"] == value
    assert env["FIXED"] == "from the manifest"
    assert env["LILYPAD_WEIGHTS"] == "real"
    assert env["LILYPAD_OUTPUTS_DIR"] == "/outputs"
    assert env["HOSTNAME"] == "lilypad"
    assert env["PYTHONHASHSEED"] == "0"
    assert env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_tiny_weights_are_announced_to_the_module(executor: Executor, tmp_path: Path) -> None:
    run_job(executor, fixture_module("envdump"), tmp_path, weights=Weights.TINY)
    env = job_env(tmp_path)
    assert env["LILYPAD_WEIGHTS"] == "tiny"
    assert env["LILYPAD_TINY_WEIGHTS_DIR"] == "/cache/tiny-weights"


# --- isolation: no network, no writes outside /outputs ---------------------------------------


def test_a_job_cannot_reach_the_network_nor_write_outside_outputs(
    executor: Executor, tmp_path: Path
) -> None:
    result = run_job(executor, fixture_module("escape"), tmp_path)
    assert result.ok, read(tmp_path / "stderr")
    report = read(tmp_path / "outputs" / "report.txt").splitlines()
    for path in ("/escape", "/module/escape", "/etc/escape", "/usr/escape"):
        assert f"write {path}: denied" in report
    assert "write /tmp/scratch: allowed" in report  # scratch space works
    assert [line for line in report if line.startswith("interface")] == ["interface lo"]
    assert "connect: allowed" not in report
    if executor.kind is ExecutorKind.DOCKER:
        assert "connect: failed" in report  # busybox has nc; a host may not
    assert "uid 65534" in report


# --- the output folder ---------------------------------------------------------------------------


def test_a_folder_with_other_files_is_refused(executor: Executor, tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(OutputDirInUse, match=r"not empty and not a previous job result.*thesis"):
        run_job(executor, "cowsay", tmp_path)
    assert read(tmp_path / "thesis.tex") == "precious"


def test_a_previous_result_is_replaced(executor: Executor, tmp_path: Path) -> None:
    run_job(executor, fixture_module("crash"), tmp_path)
    assert run_job(executor, "cowsay", tmp_path).ok
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["cowsay.txt"]
    assert read(tmp_path / "exitCode") == "0"


def test_a_file_is_refused_as_output_folder(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("")
    with pytest.raises(OutputDirInUse, match="is a file"):
        prepare_output_dir(tmp_path / "out")


# --- docker specifics ------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.usefixtures("docker_images")
def test_a_docker_job_runs_under_the_limits_of_its_machine_needs(tmp_path: Path) -> None:
    module = fixture_module("limits")  # ram_gb 0.125, cpus 0.5
    with DockerExecutor() as executor:
        assert run_job(executor, module, tmp_path).ok
    seen = dict(
        line.split(" ", 1) for line in read(tmp_path / "outputs" / "limits.txt").splitlines()
    )
    if "memory.max" in seen:  # cgroup v2
        memory, pids = seen["memory.max"], seen["pids.max"]
        quota, period = seen["cpu.max"].split()
    else:
        memory, pids = seen["memory/memory.limit_in_bytes"], seen["pids/pids.max"]
        quota, period = seen["cpu/cpu.cfs_quota_us"], seen["cpu/cpu.cfs_period_us"]
    assert int(memory) == int(0.125 * 2**30)
    assert int(pids) == 1024
    assert int(quota) / int(period) == 0.5


@pytest.mark.docker
def test_a_missing_image_names_the_exact_command_that_builds_it(
    docker_images: docker.DockerClient, cli: CliRunner, tmp_path: Path
) -> None:
    folder = tmp_path / "module"
    shutil.copytree(FIXTURES / "silent", folder)
    manifest = folder / "lilypad_module.toml"
    manifest.write_text(read(manifest).replace("lilypad-test/silent", "lilypad-test/not-built-yet"))
    module = modules.resolve(str(folder))
    with DockerExecutor() as executor:
        with pytest.raises(ImageNotFound) as caught:
            run_job(executor, module, tmp_path / "a")
        command = caught.value.message.split("build it with: ")[1]
        assert command == f"lilypad module build {module.ref}"
        try:
            built = cli(*shlex.split(command)[1:])  # the very command, through the real CLI
            assert built.exit_code == 0, built.stderr
            assert run_job(executor, module, tmp_path / "b").ok
        finally:
            docker_images.images.remove("lilypad-test/not-built-yet:local", force=True)


@pytest.mark.docker
@pytest.mark.usefixtures("docker_images")
def test_a_missing_image_without_a_dockerfile_says_so(tmp_path: Path) -> None:
    module = fixture_module("missing-image")
    with DockerExecutor() as executor, pytest.raises(ImageNotFound) as caught:
        run_job(executor, module, tmp_path)
    assert "lilypad-test/never-built:local is not on this Docker Engine" in caught.value.message
    assert "has no Dockerfile; run the module with --executor process" in str(caught.value)


# --- process specifics -----------------------------------------------------------------------


def test_unsandboxed_when_asked_a_job_runs_and_says_so(tmp_path: Path) -> None:
    executor = ProcessExecutor(sandbox=Sandbox.NONE)  # what --unsafe-no-sandbox asks for
    assert "NOT sandboxed" in executor.describe()
    result = run_job(executor, fixture_module("envdump"), tmp_path)
    assert result.ok
    assert [note.split(" (")[0] for note in result.notes] == ["NOT sandboxed"]
    env = job_env(tmp_path)
    assert env["LILYPAD_OUTPUTS_DIR"] == str(tmp_path / "outputs")
    assert set(env) == {"FIXED", "VALUE"} | RUNTIME_ENV


def test_unsandboxed_a_hang_is_still_killed_with_its_whole_process_group(tmp_path: Path) -> None:
    result = run_job(ProcessExecutor(sandbox=Sandbox.NONE), fixture_module("hang"), tmp_path)
    assert result.status is JobStatus.TIMED_OUT
    ticks = tmp_path / "outputs" / "ticks"
    size = ticks.stat().st_size
    time.sleep(0.6)
    assert ticks.stat().st_size == size
