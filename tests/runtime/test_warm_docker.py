"""Warm workers of the docker executor: a long-lived container per module version's image that
serves its jobs one at a time (resource_provider/executors/docker.py, warm.py).

The probe module's image is built here offline: this interpreter, its standard library and the
checkout's lilypad on the busybox base (tests/runtime/python_image.py). Its jobs give the same
result folder (the CID's bytes) warm as in cold containers, in an order that shows a leak; a job
sees none of another's files; a reused worker that dies is replaced and the job's result is a
fresh worker's; one that hangs is killed at the job's timeout; the worker's memory is read; no
container or folder outlives the executor.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from lilypad import modules
from resource_provider.executors import (
    DockerExecutor,
    ExecutionResult,
    Job,
    JobInput,
    JobStatus,
    Weights,
    result_digest,
)
from resource_provider.executors.warm import WarmConfig
from resource_provider.metrics import Metrics
from tests.runtime.python_image import python_image

PROBE_DIR = Path(__file__).parent / "warm_fixtures" / "warmprobe"
PROBE = str(PROBE_DIR)
WORKERS: dict[str, str | list[str] | bool] = {"label": "lilypad.warm=worker"}


@pytest.fixture(scope="module")
def probe_image(docker_images: docker.DockerClient) -> str:
    return python_image(docker_images, modules.resolve(PROBE).spec.image, PROBE_DIR)


@pytest.fixture
def warm(probe_image: str) -> Iterator[DockerExecutor]:
    executor = DockerExecutor(warm=WarmConfig(size=2, idle_s=600, any_module=True))
    executor.use_metrics(Metrics())
    yield executor
    executor.close()


def run(
    executor: DockerExecutor, output: Path, *inputs: str, files: tuple[JobInput, ...] = ()
) -> ExecutionResult:
    module = modules.resolve(PROBE)
    spec = modules.render(module, inputs)
    return executor.run(Job.of(module, spec, output, Weights.REAL, inputs=files))


def ran(
    executor: DockerExecutor, output: Path, *inputs: str, files: tuple[JobInput, ...] = ()
) -> Path:
    result = run(executor, output, *inputs, files=files)
    assert result.ok, (output / "stderr").read_text()
    return output


def counted(executor: DockerExecutor, name: str, **labels: str) -> float:
    assert executor.warm is not None
    assert executor.warm.metrics is not None
    return executor.warm.metrics.registry.get_sample_value(name, labels or None) or 0.0


def test_warm_containers_give_the_bytes_of_cold_ones(
    warm: DockerExecutor, probe_image: str, tmp_path: Path
) -> None:
    cold = DockerExecutor()
    try:
        expected = {
            name: result_digest(ran(cold, tmp_path / f"cold-{name}", f"Secret={name * 3}"))
            for name in "abc"
        }
    finally:
        cold.close()
    for step, name in enumerate("abca"):
        got = ran(warm, tmp_path / f"warm-{step}", f"Secret={name * 3}")
        # outputs, stdout, stderr and exit code; env.txt has the job's variable names
        assert result_digest(got) == expected[name], f"job {name} (step {step}) differs warm"
    assert counted(warm, "lilypad_warm_loads_total") == 1  # one container served all four
    assert counted(warm, "lilypad_warm_hits_total") == 3
    assert "warm workers" in warm.describe()


def test_a_job_in_a_warm_container_sees_none_of_another_jobs_files(
    warm: DockerExecutor, tmp_path: Path
) -> None:
    secret = tmp_path / "photo.bin"
    secret.write_bytes(b"job a's private picture")
    photo = (JobInput(secret, "/inputs/Image/photo.bin"),)
    first = ran(warm, tmp_path / "a", "Secret=aaa", "Path=/inputs/Image/photo.bin", files=photo)
    assert (first / "outputs" / "input-copy").read_bytes() == b"job a's private picture"
    second = ran(warm, tmp_path / "b", "Secret=bbb")
    seen = (second / "outputs" / "seen.txt").read_text()
    assert "aaa" not in seen, seen
    assert "photo" not in seen, seen
    assert sorted(p.name for p in (second / "outputs").iterdir()) == [
        "env.txt", "made-by-bbb", "seen.txt",
    ]  # fmt: skip
    env = (second / "outputs" / "env.txt").read_text().split()
    assert not [name for name in env if name.startswith("LILYPAD_WARM")], env
    assert counted(warm, "lilypad_warm_hits_total") == 1


def test_a_reused_container_that_dies_is_replaced_and_the_job_runs_on_a_fresh_one(
    warm: DockerExecutor, tmp_path: Path
) -> None:
    ran(warm, tmp_path / "first", "Mode=crash-when-reused")
    # the reused container dies; the job runs again on a fresh one and succeeds there
    ran(warm, tmp_path / "again", "Mode=crash-when-reused")
    assert counted(warm, "lilypad_warm_loads_total") == 2
    assert counted(warm, "lilypad_warm_evictions_total", reason="died") == 1


def test_a_hanging_job_is_stopped_at_its_timeout_with_its_container(
    warm: DockerExecutor, tmp_path: Path
) -> None:
    ran(warm, tmp_path / "first")
    module = modules.resolve(PROBE)
    spec = modules.render(module, ["Mode=hang"]).model_copy(update={"timeout_s": 2})
    result = warm.run(Job.of(module, spec, tmp_path / "hang", Weights.REAL))
    assert result.status is JobStatus.TIMED_OUT
    assert counted(warm, "lilypad_warm_evictions_total", reason="timed_out") == 1
    ran(warm, tmp_path / "after")  # a fresh container
    assert counted(warm, "lilypad_warm_loads_total") == 2


def test_a_warm_containers_memory_is_counted_and_nothing_outlives_the_executor(
    probe_image: str, tmp_path: Path
) -> None:
    executor = DockerExecutor(warm=WarmConfig(size=1, idle_s=600, any_module=True))
    try:
        ran(executor, tmp_path / "hold", "HoldMB=48")
        assert executor.warm is not None
        assert executor.warm.memory() > 48 << 20  # the container's processes, from /proc
        assert executor.client.containers.list(filters=WORKERS)
    finally:
        executor.close()
    client = docker.from_env()
    try:
        assert client.containers.list(all=True, filters=WORKERS) == []
    finally:
        client.close()


def test_the_workers_a_crashed_provider_left_are_removed_by_the_next_one(
    probe_image: str, tmp_path: Path
) -> None:
    crashed = DockerExecutor(warm=WarmConfig(size=1, idle_s=600, any_module=True))
    try:
        ran(crashed, tmp_path / "before", "Secret=aaa")
        assert crashed.warm is not None
        (worker,) = crashed.warm._workers
        worker.sock.close()  # what the provider's death does: the worker exits on its own
        assert worker.handle.wait(timeout=30) == 0
        root = worker.launch.root
        assert root.is_dir()
        DockerExecutor(warm=WarmConfig(size=1, idle_s=600)).close()  # the next provider
        assert crashed.client.containers.list(all=True, filters=WORKERS) == []
        assert not root.exists()
    finally:
        crashed.close()


def test_an_image_whose_lilypad_cannot_serve_warm_runs_its_jobs_cold(
    docker_images: docker.DockerClient, tmp_path: Path
) -> None:
    """An image with a lilypad from before warm workers (no lilypad.ml.serve): its worker
    container exits before it connects, and the module's jobs run cold from then on."""
    old = "lilypad-test/warmprobe-old-lilypad:local"
    python_image(docker_images, old, PROBE_DIR, leave_out=("serve.py",))
    module = modules.resolve(PROBE)
    executor = DockerExecutor(warm=WarmConfig(size=1, idle_s=600, any_module=True))
    executor.use_metrics(Metrics())
    try:
        for name in ("first", "second"):
            spec = modules.render(module, [f"Secret={name}"]).model_copy(update={"image": old})
            result = executor.run(Job.of(module, spec, tmp_path / name, Weights.REAL))
            assert result.ok, (tmp_path / name / "stderr").read_text()
            assert (tmp_path / name / "outputs" / f"made-by-{name}").is_file()
        assert counted(executor, "lilypad_warm_loads_total") == 0
        assert executor.client.containers.list(all=True, filters=WORKERS) == []
    finally:
        executor.close()
