"""Warm workers of the process executor (resource_provider/executors/warm.py), sandboxed.

The same job gives the same result folder (outputs, stdout, stderr, exit code: the CID's bytes)
on a warm worker as in a cold run, for several jobs through one worker in an order that shows a
leak (A, B, C, A); a job sees none of another's files; a reused worker that dies or hangs is
replaced and the job's result is a fresh worker's; workers are ended by count and idle time, and
the provider's metrics count it all.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lilypad import modules
from resource_provider.executors import (
    ExecutionResult,
    Job,
    JobInput,
    JobStatus,
    ProcessExecutor,
    Sandbox,
    Weights,
    result_digest,
)
from resource_provider.executors import base as executor_base
from resource_provider.executors.process import bwrap_problem
from resource_provider.executors.warm import WarmConfig
from resource_provider.metrics import Metrics
from tests.conftest import missing

PROBE = str(Path(__file__).parent / "warm_fixtures" / "warmprobe")


@pytest.fixture(autouse=True)
def _checkout_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # NOTE: a checkout other than the installed one (a git worktree, PYTHONPATH first) is not
    # what a sandboxed job's Python imports: cold and warm jobs alike get it here.
    if os.environ.get("PYTHONPATH"):
        monkeypatch.setitem(executor_base.DETERMINISM_ENV, "PYTHONPATH", os.environ["PYTHONPATH"])


def sandboxed(warm: WarmConfig | None = None) -> ProcessExecutor:
    problem = bwrap_problem()
    if problem is not None:
        missing(f"a working bubblewrap ({problem})", "apt-get install bubblewrap")
    return ProcessExecutor(sandbox=Sandbox.BWRAP, warm=warm)


@pytest.fixture
def warm() -> Iterator[ProcessExecutor]:
    executor = sandboxed(WarmConfig(size=2, idle_s=600, any_module=True))
    executor.use_metrics(Metrics())
    yield executor
    executor.close()


def run(
    executor: ProcessExecutor,
    ref: str,
    output: Path,
    *inputs: str,
    files: tuple[JobInput, ...] = (),
    weights: Weights = Weights.TINY,
) -> Path:
    module = modules.resolve(ref)
    spec = modules.render(module, inputs)
    result = executor.run(Job.of(module, spec, output, weights, inputs=files))
    assert result.ok, (output / "stderr").read_text()
    return output


def counted(executor: ProcessExecutor, name: str, **labels: str) -> float:
    assert executor.warm is not None
    assert executor.warm.metrics is not None
    value = executor.warm.metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


#: Three ML jobs that differ in module version, seed, sampler and the refiner.
JOBS = {
    "A": (
        "sdxl:v1.0-lilypad1",
        "Prompt=a red fox",
        "Sampler=dpmpp_2m_sde_gpu",
        "RefinerSwitch=0.5",
    ),
    "B": ("sdxl:v1.0-lilypad1", "Prompt=a cat", "Seed=7", "Sampler=euler", "RefinerSwitch=0"),
    "C": ("sdxl:v1.0-lilypad1", "Prompt=a cat", "Seed=7", "Sampler=dpmpp_2m", "Scheduler=karras"),
}


def test_warm_jobs_give_the_bytes_of_cold_runs(warm: ProcessExecutor, tmp_path: Path) -> None:
    cold = sandboxed()
    expected = {
        n: result_digest(run(cold, ref, tmp_path / f"cold-{n}", *inputs))
        for n, (ref, *inputs) in JOBS.items()
    }
    for step, name in enumerate("ABCA"):
        ref, *inputs = JOBS[name]
        got = run(warm, ref, tmp_path / f"warm-{step}", *inputs)
        assert result_digest(got) == expected[name], f"job {name} (step {step}) differs warm"
    assert counted(warm, "lilypad_warm_loads_total") == 1  # one worker served all four
    assert counted(warm, "lilypad_warm_hits_total") == 3


def test_a_module_not_built_in_runs_cold_unless_the_provider_trusts_it(tmp_path: Path) -> None:
    """A warm worker serves many job creators' jobs in one process: another's module code (the
    probe, from a folder) could carry one job's inputs into the next job's outputs, so only the
    built-in modules are served warm unless ``any_module`` says otherwise."""
    cautious = sandboxed(WarmConfig(size=2, idle_s=600))
    cautious.use_metrics(Metrics())
    try:
        for name in ("a", "b"):
            run(cautious, PROBE, tmp_path / name, f"Secret={name * 3}", weights=Weights.REAL)
        assert counted(cautious, "lilypad_warm_loads_total") == 0  # both ran cold
        assert counted(cautious, "lilypad_warm_hits_total") == 0
    finally:
        cautious.close()


def test_a_job_sees_none_of_another_jobs_files(warm: ProcessExecutor, tmp_path: Path) -> None:
    secret = tmp_path / "photo.bin"
    secret.write_bytes(b"job a's private picture")
    photo = (JobInput(secret, "/inputs/Image/photo.bin"),)
    first = run(warm, PROBE, tmp_path / "a", "Secret=aaa", "Path=/inputs/Image/photo.bin",
                files=photo, weights=Weights.REAL)  # fmt: skip
    assert (first / "outputs" / "input-copy").read_bytes() == b"job a's private picture"
    second = run(warm, PROBE, tmp_path / "b", "Secret=bbb", weights=Weights.REAL)
    seen = (second / "outputs" / "seen.txt").read_text()
    assert "aaa" not in seen, seen
    assert "photo" not in seen, seen
    assert sorted(p.name for p in (second / "outputs").iterdir()) == [
        "env.txt", "made-by-bbb", "seen.txt",
    ]  # fmt: skip
    assert (second / "stdout").read_text() == "env.txt\nmade-by-bbb\nseen.txt\n"
    assert counted(warm, "lilypad_warm_hits_total") == 1
    # its environment is the job's, as a cold run's: no PYTHONPATH of the worker, no tunable of A
    cold = run(sandboxed(), PROBE, tmp_path / "cold-b", "Secret=bbb", weights=Weights.REAL)
    assert (second / "outputs" / "env.txt").read_text() == (
        cold / "outputs" / "env.txt"
    ).read_text()


def probe_job(tmp_path: Path, name: str, timeout_s: int, *inputs: str, module: str = PROBE) -> Job:
    resolved = modules.resolve(module)
    spec = modules.render(resolved, inputs).model_copy(update={"timeout_s": timeout_s})
    return Job.of(resolved, spec, tmp_path / name)


def timed(executor: ProcessExecutor, job: Job) -> tuple[ExecutionResult, float]:
    started = time.monotonic()
    result = executor.run(job)
    return result, time.monotonic() - started


#: What a job may take past its timeout: killing it and its worker, writing its result.
MARGIN_S = 1.5


@pytest.fixture
def one_warm() -> Iterator[ProcessExecutor]:
    executor = sandboxed(WarmConfig(size=1, idle_s=600, any_module=True))
    executor.use_metrics(Metrics())
    yield executor
    executor.close()


def test_a_reused_worker_that_dies_is_replaced_and_the_job_retried(
    one_warm: ProcessExecutor, tmp_path: Path
) -> None:
    run(one_warm, PROBE, tmp_path / "first", weights=Weights.REAL)
    result = one_warm.run(probe_job(tmp_path, "again", 10, "Mode=crash-when-reused"))
    assert result.status is JobStatus.SUCCEEDED, (tmp_path / "again" / "stderr").read_text()
    assert (tmp_path / "again" / "stderr").read_text() == "job crash-when-reused\n"
    assert counted(one_warm, "lilypad_warm_evictions_total", reason="died") == 1
    assert counted(one_warm, "lilypad_warm_loads_total") == 2


def test_a_retried_job_gets_only_the_time_left_of_its_timeout(
    one_warm: ProcessExecutor, tmp_path: Path
) -> None:
    # 2 s, then the reused worker dies: the retry needs 2 s more, and 1 s of the 3 is left
    run(one_warm, PROBE, tmp_path / "first", weights=Weights.REAL)
    job = probe_job(tmp_path, "again", 3, "Mode=crash-when-reused", "Sleep=2")
    result, took = timed(one_warm, job)
    assert (result.status, result.exit_code) == (JobStatus.TIMED_OUT, 124)
    assert took < 3 + MARGIN_S, f"the job took {took:.1f} s against its 3 s timeout"
    assert counted(one_warm, "lilypad_warm_loads_total") == 2  # it was retried, in the time left
    assert counted(one_warm, "lilypad_warm_evictions_total", reason="timed_out") == 1


@pytest.mark.parametrize(
    ("setup_s", "job_s"),
    [(2, 2), (4, 0)],
    ids=["setup-then-job-past-the-timeout", "setup-past-the-timeout"],
)
def test_a_workers_setup_counts_against_the_job_that_waits_for_it(
    one_warm: ProcessExecutor, tmp_path: Path, setup_s: int, job_s: int
) -> None:
    slow = shutil.copytree(PROBE, tmp_path / "slow-setup")  # its import takes setup_s
    entry = slow / "probe.py"
    code = entry.read_text()
    entry.write_text(
        code.replace("\nimport os\n", f"\nimport os\nimport time\n\ntime.sleep({setup_s})\n")
    )
    job = probe_job(tmp_path, "job", 3, f"Sleep={job_s}", module=str(slow))
    result, took = timed(one_warm, job)
    assert (result.status, result.exit_code) == (JobStatus.TIMED_OUT, 124)
    assert took < 3 + MARGIN_S, f"the job took {took:.1f} s against its 3 s timeout"
    # the job's time ran out, not the module's chance: its next job runs warm, in its own time
    again = one_warm.run(probe_job(tmp_path, "again", 10, module=str(slow)))
    assert again.status is JobStatus.SUCCEEDED
    assert counted(one_warm, "lilypad_warm_loads_total") == (2 if job_s else 1)


def test_a_job_a_reused_worker_runs_into_its_timeout_is_not_retried(
    one_warm: ProcessExecutor, tmp_path: Path
) -> None:
    run(one_warm, PROBE, tmp_path / "first", weights=Weights.REAL)
    result, took = timed(one_warm, probe_job(tmp_path, "again", 2, "Mode=hang-when-reused"))
    assert (result.status, result.exit_code) == (JobStatus.TIMED_OUT, 124)
    assert took < 2 + MARGIN_S, f"the job took {took:.1f} s against its 2 s timeout"
    assert counted(one_warm, "lilypad_warm_evictions_total", reason="timed_out") == 1
    assert counted(one_warm, "lilypad_warm_loads_total") == 1


def test_a_job_that_hangs_on_a_fresh_worker_times_out_as_a_cold_one(
    one_warm: ProcessExecutor, tmp_path: Path
) -> None:
    result = one_warm.run(probe_job(tmp_path, "hang", 2, "Mode=hang"))
    assert (result.status, result.exit_code) == (JobStatus.TIMED_OUT, 124)
    assert counted(one_warm, "lilypad_warm_loads_total") == 1  # not retried: it was fresh
    assert counted(one_warm, "lilypad_warm_evictions_total", reason="timed_out") == 1


def test_workers_are_ended_by_count_and_by_idle_time(tmp_path: Path) -> None:
    executor = sandboxed(WarmConfig(size=1, idle_s=1.0, any_module=True))
    executor.use_metrics(Metrics())
    try:
        other = shutil.copytree(PROBE, tmp_path / "other-module")  # another module version
        run(executor, PROBE, tmp_path / "probe", weights=Weights.REAL)
        run(executor, str(other), tmp_path / "other", weights=Weights.REAL)  # room for it
        assert counted(executor, "lilypad_warm_evictions_total", reason="count") == 1
        deadline = time.monotonic() + 10
        while executor.warm is not None and executor.warm.workers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert counted(executor, "lilypad_warm_evictions_total", reason="idle") == 1
        assert counted(executor, "lilypad_warm_workers") == 0
    finally:
        executor.close()


def test_workers_are_ended_by_memory_least_recently_used_first(tmp_path: Path) -> None:
    # a probe worker holds about 20 MiB, and what its jobs asked it to hold (HoldMB)
    budget = 150 << 20
    executor = sandboxed(WarmConfig(size=3, idle_s=600, memory_bytes=budget, any_module=True))
    executor.use_metrics(Metrics())
    try:
        other = shutil.copytree(PROBE, tmp_path / "other-module")  # another module version
        run(executor, PROBE, tmp_path / "a", "HoldMB=80", weights=Weights.REAL)
        assert executor.warm is not None
        assert executor.warm.workers() == 1  # about 100 MiB: within the budget
        run(executor, str(other), tmp_path / "b", "HoldMB=80", weights=Weights.REAL)
        assert counted(executor, "lilypad_warm_evictions_total", reason="memory") == 1
        assert executor.warm.workers() == 1  # the first one made room
        assert 80 << 20 < counted(executor, "lilypad_warm_memory_bytes") <= budget + (20 << 20)
        assert executor.warm.memory() <= budget
        run(executor, str(other), tmp_path / "b-again", "HoldMB=80", weights=Weights.REAL)
        assert counted(executor, "lilypad_warm_hits_total") == 1  # served warm, then over alone
        assert counted(executor, "lilypad_warm_evictions_total", reason="memory") == 2
        assert executor.warm.workers() == 0
    finally:
        executor.close()
