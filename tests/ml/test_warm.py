"""The predictor API (lilypad/ml/predictor.py) of the SD family: the same jobs give the same
result bytes through one warm worker as in cold runs, in an order that shows a leak (A, B, A).
The sdxl module's are in tests/runtime/test_warm.py, with the worker's isolation and failures."""

from __future__ import annotations

from pathlib import Path

from resource_provider.executors import result_digest
from resource_provider.executors.warm import WarmConfig
from tests.runtime.test_warm import _checkout_on_path, run, sandboxed

__all__ = ["_checkout_on_path"]  # autouse: cold and warm jobs import this checkout

JOBS = {
    "A": ("sd15:v1.0-lilypad1", "Prompt=a lighthouse", "Sampler=euler_ancestral"),
    "B": ("sd15:v1.0-lilypad1", "Prompt=a lighthouse", "Seed=3", "Sampler=dpmpp_sde"),
}


def test_sd15_jobs_warm_give_the_bytes_of_cold_runs(tmp_path: Path) -> None:
    cold = sandboxed()
    expected = {
        n: result_digest(run(cold, ref, tmp_path / f"cold-{n}", *inputs))
        for n, (ref, *inputs) in JOBS.items()
    }
    warm = sandboxed(WarmConfig(size=1, idle_s=600))
    try:
        for step, name in enumerate("ABA"):
            ref, *inputs = JOBS[name]
            got = run(warm, ref, tmp_path / f"warm-{step}", *inputs)
            assert result_digest(got) == expected[name], f"job {name} (step {step}) differs warm"
    finally:
        warm.close()
