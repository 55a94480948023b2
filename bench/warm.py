"""Warm workers against cold runs: 10 sequential tiny-SDXL jobs through the process executor.

    .venv/bin/python bench/warm.py [--jobs 10] [--module sdxl:v1.0-lilypad1] [--unsandboxed]

Runs the same ``--jobs`` jobs (seeds 0, 1, ...; tiny weights) twice through the provider's
process executor, bubblewrap-sandboxed: once cold (a process per job, as without ``--warm``) and
once with one warm worker (``--warm 1``). Prints each mode's first job and the median of the
others, and ``warm/cold per-job ratio: R`` (the median of the warm jobs after the first over the
cold median; the issue's aim is R <= 0.15). Every warm result is checked to have the cold result's
bytes (the same result digest, i.e. the same CID), so a faster wrong answer cannot pass.

It measures the executor, not a whole provider: chain, solver and IPFS add a cost per job that
is the same warm or cold (bench/e2e_overhead.py measures those).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lilypad import modules
from resource_provider.executors import (
    Job,
    ProcessExecutor,
    Sandbox,
    WarmConfig,
    Weights,
    base,
    result_digest,
)


def run_all(
    executor: ProcessExecutor, ref: str, jobs: int, root: Path
) -> tuple[list[float], list[str]]:
    module = modules.resolve(ref)
    times, digests = [], []
    for n in range(jobs):
        spec = modules.render(module, [f"Seed={n}", "Prompt=a lighthouse at dusk"])
        started = time.monotonic()
        result = executor.run(Job.of(module, spec, root / str(n), Weights.TINY))
        times.append(time.monotonic() - started)
        if not result.ok:
            sys.exit(f"job {n} failed: {(root / str(n) / 'stderr').read_text()[-400:]}")
        digests.append(result_digest(root / str(n)))
    return times, digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--module", default="sdxl:v1.0-lilypad1")
    parser.add_argument("--unsandboxed", action="store_true", help="without bubblewrap")
    args = parser.parse_args()
    if args.jobs < 2:
        parser.error(f"--jobs {args.jobs}: at least 2 (the first job of each mode is shown apart)")
    if os.environ.get("PYTHONPATH"):  # a checkout other than the installed one: jobs import it
        base.DETERMINISM_ENV["PYTHONPATH"] = os.environ["PYTHONPATH"]
    sandbox = Sandbox.NONE if args.unsandboxed else Sandbox.BWRAP
    with tempfile.TemporaryDirectory(prefix="lilypad-bench-warm-") as tmp:
        root = Path(tmp)
        cold = ProcessExecutor(sandbox=sandbox)
        run_all(cold, args.module, 1, root / "warm-up")  # tiny weights generated, caches filled
        cold_times, cold_digests = run_all(cold, args.module, args.jobs, root / "cold")
        with ProcessExecutor(sandbox=sandbox, warm=WarmConfig(size=1, idle_s=600)) as warm:
            warm_times, warm_digests = run_all(warm, args.module, args.jobs, root / "warm")
    if warm_digests != cold_digests:
        bad = [n for n, (a, b) in enumerate(zip(warm_digests, cold_digests, strict=True)) if a != b]
        sys.exit(f"warm results differ from cold ones for jobs {bad}")
    cold_median = statistics.median(cold_times)
    warm_median = statistics.median(warm_times[1:])
    print(f"{args.jobs} sequential {args.module} jobs on tiny weights ({sandbox.value} sandbox)")
    print(f"cold: first job {cold_times[0]:.2f} s, median {cold_median:.2f} s")
    print(f"warm: first job {warm_times[0]:.2f} s (starts the worker), median of the rest "
          f"{warm_median:.2f} s")  # fmt: skip
    print("every warm result has the cold result's bytes")
    print(f"warm/cold per-job ratio: {warm_median / cold_median:.3f}")


if __name__ == "__main__":
    main()
