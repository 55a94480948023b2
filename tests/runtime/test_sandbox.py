"""A module is hostile code: what a job must never reach, with either executor.

The ``hostile`` fixture tries to read the provider's key file and its ``WEB3_PRIVATE_KEY``
(through ``/proc``), to reach a TCP service on the host's 127.0.0.1, to write outside
``/outputs``, to poison the shared tiny-weights cache and to leave processes running after its
job. The process executor runs jobs only in a bubblewrap sandbox unless the operator passes
``--unsafe-no-sandbox``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from lilypad.config import get_settings
from lilypad.errors import ExecutorUnavailable
from lilypad.network import NetworkProfile, save_network
from resource_provider.executors import (
    DockerExecutor,
    Executor,
    ExecutorKind,
    JobStatus,
    ProcessExecutor,
    Sandbox,
    Weights,
    result_digest,
)
from resource_provider.executors import process as process_module
from resource_provider.executors.base import SANDBOX_TINY_WEIGHTS, tiny_weights_cache
from resource_provider.executors.images import build_image
from tests.conftest import CliRunner, missing
from tests.runtime.conftest import fixture_module, process_executor, run_job

#: The background sleeper the hostile fixture leaves (``sleep 31337``).
SLEEPER = [b"sleep", b"31337"]


@dataclass(frozen=True)
class Secrets:
    """What a provider holds that no job may see."""

    key_file: Path
    key: str
    env_key: str
    profile: Path

    def values(self) -> list[bytes]:
        return [self.key.encode(), self.env_key.encode(), self.key.removeprefix("0x").encode()]


def plant_secrets(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Secrets:
    """A key file in ``data_dir``, a network profile, and ``WEB3_PRIVATE_KEY`` in our env."""
    key_file = data_dir / "network" / "local" / "keys" / "provider.key"
    key_file.parent.mkdir(parents=True)
    key = "0x" + secrets.token_hex(32)
    key_file.touch(mode=0o600)
    key_file.write_text(key + "\n")
    env_key = "0x" + secrets.token_hex(32)
    monkeypatch.setenv("WEB3_PRIVATE_KEY", env_key)
    profile = save_network(
        NetworkProfile(name="local", chain_id=31337, rpc_url="http://127.0.0.1:8545")
    )
    return Secrets(key_file, key, env_key, profile)


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Secrets:
    return plant_secrets(get_settings().data_dir, monkeypatch)


class Listener:
    """A TCP service on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    service = Listener()
    yield service
    service.close()


def cache_files() -> dict[str, bytes]:
    """Every file under the cache dir (every executor's tiny-weights cache), with its bytes."""
    root = get_settings().cache_dir
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def seed_tiny_cache() -> None:
    """A model in each executor's tiny-weights cache, for the module to try to change."""
    for kind in ExecutorKind:
        model = tiny_weights_cache(kind) / "sdxl-base-1"
        model.mkdir(parents=True, exist_ok=True)
        (model / "model_index.json").write_text('{"honest": true}\n')


def sleepers() -> list[int]:
    """Pids of the fixture's ``sleep 31337`` anywhere on this machine (containers included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) >= 2 and [os.path.basename(argv[0]), argv[1]] == SLEEPER:
            found.append(int(entry.name))
    return found


@pytest.fixture
def no_sleepers() -> Iterator[None]:
    assert sleepers() == [], "a sleeper of an earlier run is still there"
    yield
    for pid in sleepers():  # what a failed test left: ours, found by its command line
        os.kill(pid, 9)


def report_of(result_dir: Path) -> list[str]:
    return (result_dir / "outputs" / "report.txt").read_text().splitlines()


def assert_took_nothing(result_dir: Path, provider: Secrets, listener: Listener) -> None:
    """The hostile job's report and result show it reached nothing of the provider's."""
    report = report_of(result_dir)
    assert f"read {provider.key_file}: denied" in report
    for path in result_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in provider.values():
                assert secret not in data, f"a provider secret is in {path}"
    assert (result_dir / "outputs" / "environ").stat().st_size > 0  # it did read /proc
    tried = [line for line in report if line.startswith("connect 127.0.0.1")]
    assert tried, report  # at least one TCP client was there to try
    assert all(line.endswith(": denied") for line in tried), tried
    assert listener.accepted == 0
    assert [line for line in report if line.startswith("sees")] == []
    writes = [line for line in report if line.startswith(("write", "change", "delete"))]
    assert len(writes) >= 5, report
    assert all(line.endswith(": denied") for line in writes), writes
    assert "uid 65534" in report


def assert_nothing_outlived(result_dir: Path) -> None:
    ticks = result_dir / "outputs" / "ticks"
    size = ticks.stat().st_size
    assert size > 0  # the daemon did run ...
    time.sleep(0.6)
    assert ticks.stat().st_size == size  # ... and ended with the job
    assert sleepers() == []


def planted(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("planted")]


# --- both executors: the hostile module reaches nothing -------------------------------------


@pytest.mark.usefixtures("no_sleepers")
def test_a_hostile_module_reaches_nothing_of_the_provider(
    executor: Executor, provider: Secrets, listener: Listener, tmp_path: Path
) -> None:
    seed_tiny_cache()
    before = cache_files()
    module = fixture_module("hostile")
    result = run_job(
        executor, module, tmp_path / "out", f"KeyFile={provider.key_file}", f"Port={listener.port}"
    )
    assert result.ok, (tmp_path / "out" / "stderr").read_text()
    assert_took_nothing(tmp_path / "out", provider, listener)
    assert cache_files() == before  # the shared tiny-weights cache is as it was
    settings = get_settings()
    assert planted(settings.data_dir, settings.cache_dir, module.directory, Path.home()) == []
    assert_nothing_outlived(tmp_path / "out")


@pytest.mark.usefixtures("no_sleepers")
def test_a_hostile_module_s_processes_end_with_it_at_its_timeout(
    executor: Executor, provider: Secrets, listener: Listener, tmp_path: Path
) -> None:
    result = run_job(
        executor,
        fixture_module("hostile"),
        tmp_path,
        f"KeyFile={provider.key_file}",
        f"Port={listener.port}",
        "Hang=true",
    )
    assert result.status is JobStatus.TIMED_OUT
    assert_nothing_outlived(tmp_path)


@pytest.mark.usefixtures("no_sleepers")
def test_the_providers_folders_stay_hidden_where_a_bound_python_folder_holds_them(
    listener: Listener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider deployed in one folder (Python, data dir and profiles in /opt/lilypad):
    the Python folders bound into every job must not bring the data dir or profiles along."""
    deployment = tmp_path / "opt-lilypad"
    monkeypatch.setenv("LILYPAD_DATA_DIR", str(deployment / "data"))
    monkeypatch.setenv("LILYPAD_CONFIG_DIR", str(deployment / "config"))
    provider = plant_secrets(deployment / "data", monkeypatch)
    bound = process_module._python_dirs()
    monkeypatch.setattr(process_module, "_python_dirs", lambda: sorted([*bound, str(deployment)]))
    for target in (provider.key_file, provider.profile):
        out = tmp_path / target.name
        result = run_job(
            process_executor(),
            fixture_module("hostile"),
            out,
            f"KeyFile={target}",
            f"Port={listener.port}",
        )
        assert result.ok, (out / "stderr").read_text()
        assert f"read {target}: denied" in report_of(out)
        assert not (out / "outputs" / "key-file").exists()
    assert_took_nothing(tmp_path / provider.key_file.name, provider, listener)


# --- the process executor: bubblewrap or an explicit, loud opt-out -------------------------


@pytest.fixture
def no_bwrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A PATH without bwrap (a folder for fake programs first, then the system's)."""
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    monkeypatch.setenv("PATH", str(fake))
    process_module.bwrap_problem.cache_clear()
    yield fake
    process_module.bwrap_problem.cache_clear()


def test_without_bwrap_the_process_executor_refuses_and_says_how_to_fix_it(
    no_bwrap: Path,
) -> None:
    with pytest.raises(ExecutorUnavailable) as caught:
        ProcessExecutor()
    assert "bubblewrap cannot sandbox jobs here: bwrap is not installed" in caught.value.message
    hint = caught.value.hint or ""
    assert "apt-get install bubblewrap" in hint
    assert "--executor docker" in hint
    assert "--unsafe-no-sandbox" in hint


def test_where_bwrap_cannot_create_namespaces_the_process_executor_refuses(
    no_bwrap: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bwrap = no_bwrap / "bwrap"
    bwrap.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n"
    )
    bwrap.chmod(0o755)
    monkeypatch.setenv("PATH", f"{no_bwrap}:/usr/bin:/bin")
    with pytest.raises(ExecutorUnavailable, match="No permissions to create new namespace"):
        ProcessExecutor()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_unsandboxed_jobs_run_only_when_asked_and_each_one_warns(
    no_bwrap: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEB3_PRIVATE_KEY", "0x" + "ab" * 32)
    executor = ProcessExecutor(sandbox=Sandbox.NONE)
    assert "NOT sandboxed" in executor.describe()
    records = Records()
    logger = logging.getLogger("lilypad.executor")
    logger.addHandler(records)
    try:
        for name in ("a", "b"):
            result = run_job(executor, fixture_module("envdump"), tmp_path / name)
            assert result.ok
            assert any("NOT sandboxed" in note for note in result.notes)
    finally:
        logger.removeHandler(records)
    warned = [m for m in records.messages if "envdump:local runs NOT sandboxed" in m]
    assert len(warned) == 2, records.messages  # one per job
    env = (tmp_path / "a" / "outputs" / "env.txt").read_text()
    assert "WEB3_PRIVATE_KEY" not in env  # even unsandboxed, nothing of the provider's env


# --- the CLI commands that build a process executor ------------------------------------------


def test_module_run_without_bwrap_refuses_and_names_the_fixes(
    cli: CliRunner, no_bwrap: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = cli("module", "run", "cowsay", "--output", str(out), "--executor", "process")
    assert result.exit_code == 1
    assert "bubblewrap cannot sandbox jobs here" in result.stderr
    assert "apt-get install bubblewrap" in result.stderr
    assert "--unsafe-no-sandbox" in result.stderr
    assert not (out / "exitCode").exists()


def test_module_run_without_an_engine_or_bwrap_says_both(
    cli: CliRunner, no_bwrap: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    result = cli("module", "run", "cowsay", "--output", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "no Docker Engine answers" in result.stderr
    assert "bwrap is not installed" in result.stderr


def test_module_run_unsafe_no_sandbox_runs_and_warns(
    cli: CliRunner, no_bwrap: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = cli("module", "run", "cowsay", "--output", str(out), "--executor", "process",
                 "--unsafe-no-sandbox")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "warning" in result.stderr
    assert "NOT sandboxed" in result.stderr
    assert (out / "exitCode").read_text() == "0"


def test_resource_provider_without_bwrap_refuses_to_start(
    cli: CliRunner, no_bwrap: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_network(
        NetworkProfile(
            name="local",
            chain_id=31337,
            rpc_url="http://127.0.0.1:9",
            market="0x" + "12" * 20,
            token="0x" + "34" * 20,
            solver_url="http://127.0.0.1:9",
            accounts={"mediator": "0x" + "56" * 20},
        )
    )
    monkeypatch.setenv("WEB3_PRIVATE_KEY", "0x" + "11" * 32)
    result = cli("resource-provider", "--executor", "process", "--metrics", "127.0.0.1:0")
    assert result.exit_code == 1
    assert "bubblewrap cannot sandbox jobs here" in result.stderr
    assert "--unsafe-no-sandbox" in result.stderr


@pytest.mark.parametrize("command", ["resource-provider", "mediator"])
def test_the_daemons_take_the_unsafe_flag(cli: CliRunner, command: str) -> None:
    result = cli(command, "--unsafe-no-sandbox", "--network", "nowhere")
    assert result.exit_code == 2
    assert "unknown network 'nowhere'" in result.stderr  # the flag itself was accepted


def test_network_up_without_bwrap_refuses_before_starting_anything(
    cli: CliRunner, no_bwrap: Path
) -> None:
    from lilypad import localnet

    try:
        result = cli("network", "up", "--executor", "process", "--port-offset", "41234",
                     "--detach")  # fmt: skip
    finally:
        localnet.stop_all("local")  # should it have started something after all
    assert result.exit_code == 1
    assert "bubblewrap cannot sandbox jobs here" in result.stderr
    assert "--unsafe-no-sandbox" in result.stderr
    assert not (localnet.state_dir("local") / "chain.pid").exists()


def test_network_up_hands_the_unsafe_flag_to_the_providers_and_the_mediator() -> None:
    from lilypad import localnet

    profile = NetworkProfile(
        name="local",
        chain_id=31337,
        rpc_url="http://127.0.0.1:8545",
        solver_url="http://127.0.0.1:8090",
        ipfs_api_url="http://127.0.0.1:5001",
        gateway_url="http://127.0.0.1:8080",
    )
    topology = localnet.Topology(providers=2)
    for unsafe in (False, True):
        found = localnet.services(profile, topology, "process", "tiny", unsafe_no_sandbox=unsafe)
        flagged = sorted(s.name for s in found if "--unsafe-no-sandbox" in s.args)
        assert flagged == (["mediator", "provider", "provider-2"] if unsafe else [])


# --- tiny weights: generated by lilypad before the job, read-only in it ----------------------


def test_the_tiny_weights_generator_names_the_models_it_knows(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lilypad.ml.tiny", "sd3"],
        env={**os.environ, "LILYPAD_TINY_WEIGHTS_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "no tiny weights for model 'sd3'; known: sdxl-base, sdxl-refiner, svd" in done.stderr
    assert list(tmp_path.iterdir()) == []


def needs_torch_for(executor: Executor) -> None:
    """The process executor generates real tiny weights, with torch (the `ml` extra)."""
    if executor.kind is ExecutorKind.PROCESS and importlib.util.find_spec("torch") is None:
        missing("the `ml` extra (torch)", "make install")


def test_tiny_weights_are_made_before_the_job_and_read_only_in_it(
    executor: Executor, tmp_path: Path
) -> None:
    needs_torch_for(executor)
    module = fixture_module("tinyweights")
    first = run_job(executor, module, tmp_path / "a", weights=Weights.TINY)
    assert first.ok, (tmp_path / "a" / "stderr").read_text()
    outputs = tmp_path / "a" / "outputs"
    assert (outputs / "models").read_text() == "sdxl-base-1\n"
    index = (outputs / "model_index.json").read_bytes()
    assert index  # generated before the job, by the executor
    assert (outputs / "report.txt").read_text().splitlines() == [
        "change model_index.json: denied",
        "delete model_index.json: denied",
        "write planted: denied",
    ]
    assert (tmp_path / "a" / "stderr").read_text() == ""  # the generator's output is not the job's
    second = run_job(executor, module, tmp_path / "b", weights=Weights.TINY)
    assert second.ok
    assert result_digest(tmp_path / "a") == result_digest(tmp_path / "b")  # warm cache, same bytes


@pytest.mark.docker
def test_an_image_s_own_tiny_weights_generator_cannot_reach_another_image_s(
    docker_images: docker.DockerClient, tmp_path: Path
) -> None:
    """The docker executor generates tiny weights with the image's own code: a hostile image
    may make bad weights, but only for itself."""
    folder = tmp_path / "poisoner"
    shutil.copytree(fixture_module("tinyweights").directory, folder)
    (folder / "marker").write_text("poisoned\n")
    manifest = folder / "lilypad_module.toml"
    tag = "lilypad-test/tinyweights-poisoner:local"
    manifest.write_text(manifest.read_text().replace("lilypad-test/tinyweights:local", tag))
    build_image(docker_images, folder, tag)
    try:
        with DockerExecutor() as executor:
            bad = run_job(executor, str(folder), tmp_path / "bad", weights=Weights.TINY)
            good = run_job(executor, fixture_module("tinyweights"), tmp_path / "good",
                           weights=Weights.TINY)  # fmt: skip
    finally:
        docker_images.images.remove(tag, force=True)
    assert bad.ok
    assert good.ok
    assert (tmp_path / "bad" / "outputs" / "model_index.json").read_text() == (
        '{"made_by": "poisoned"}\n'
    )
    assert (tmp_path / "good" / "outputs" / "model_index.json").read_text() == (
        '{"made_by": "honest"}\n'
    )


def test_a_job_that_loads_tiny_weights_nobody_made_is_told_why(tmp_path: Path) -> None:
    """In a job the cache is read-only: weights its manifest does not list cannot appear."""
    cache, scratch = tmp_path / "cache", tmp_path / "scratch"
    cache.mkdir()
    scratch.mkdir()
    code = (
        "from pathlib import Path; from lilypad.ml import tiny; "
        f"tiny.ensure('svd', Path({SANDBOX_TINY_WEIGHTS!r}))"
    )
    argv = [*process_module.bwrap_base_args(scratch), "--ro-bind", str(cache),
            SANDBOX_TINY_WEIGHTS, "--", sys.executable, "-c", code]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "tiny weights of 'svd' are not in /cache/tiny-weights" in last
    assert "tiny_models" in last


@pytest.mark.slow
def test_sdxl_runs_on_tiny_weights_made_before_the_job(cli: CliRunner, tmp_path: Path) -> None:
    if importlib.util.find_spec("torch") is None:
        missing("the `ml` extra (torch)", "make install")
    digests = []
    for name in ("a", "b"):
        out = tmp_path / name
        result = cli("module", "run", "sdxl:v0.9-lilypad1", "--weights", "tiny",
                     "--executor", "process", "--output", str(out))  # fmt: skip
        assert result.exit_code == 0, result.stderr
        assert (out / "outputs" / "image-0.png").is_file()
        digests.append(result_digest(out))
    assert digests[0] == digests[1]
