"""Warm workers against cold runs: 10 sequential tiny-SDXL jobs, through the process executor
and through a provider.

    .venv/bin/python bench/warm.py [--jobs 10] [--module sdxl:v1.0-lilypad1] [--unsandboxed]
                                   [--no-provider]

Runs the same ``--jobs`` jobs (seeds 0, 1, ...; tiny weights) twice through the provider's
process executor, bubblewrap-sandboxed: once cold (a process per job, as without ``--warm``) and
once with one warm worker (``--warm 1``). Prints each mode's first job and the median of the
others, and ``warm/cold per-job ratio: R`` (the median of the warm jobs after the first over the
cold median; the issue's aim is R <= 0.15). Every warm result is checked to have the cold result's
bytes (the same result digest, i.e. the same CID), so a faster wrong answer cannot pass.

The first rows measure the executor alone. Then (unless ``--no-provider``) the same jobs run
through a whole local network (``lilypad network up``: chain, solver, IPFS, one provider with one
slot and the process executor), posted one after another by one SDK client
(:class:`lilypad.Client`), once with ``--warm 0`` and once with ``--warm 1``: the line ``through
a provider: warm/cold per-job ratio: R`` counts what a job creator waits for, deal and upload
included, and every warm job's CID is checked against the cold one's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _cli import cli, private_env  # bench/: its folder is on the path

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


NETWORK = "bench-warm"
PORT_OFFSET = 4600
#: Run in a process of its own, in the bench's private environment: one client, jobs in turn.
_JOBS = """
import json, sys, time
import lilypad
ref, jobs, keys = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = []
with lilypad.Client(sys.argv[4], key_file=keys) as client:
    for n in range(jobs):
        started = time.monotonic()
        result = client.run(ref, Seed=n, Prompt="a lighthouse at dusk", verify="never")
        out.append([time.monotonic() - started, result.cid])
print(json.dumps(out))
"""


def through_provider(ref: str, jobs: int, warm: int) -> tuple[list[float], list[str]]:
    """``jobs`` sequential jobs through a local network whose provider has ``--warm warm``."""
    with tempfile.TemporaryDirectory(prefix="lilypad-bench-warm-net-") as tmp:
        env = private_env(Path(tmp))
        up = cli(
            env, "network", "up", "--network", NETWORK, "--detach", "--providers", "1",
            "--slots", "1", "--executor", "process", "--weights", "tiny", "--warm", str(warm),
            "--port-offset", str(PORT_OFFSET), timeout=300,
        )  # fmt: skip
        try:
            if up.returncode != 0:
                sys.exit(f"lilypad network up failed ({up.returncode}):\n{up.stderr}")
            keys = Path(tmp) / "data" / "network" / NETWORK / "keys" / "job_creator.key"
            done = subprocess.run(
                [sys.executable, "-c", _JOBS, ref, str(jobs), str(keys), NETWORK],
                env=env, capture_output=True, text=True, timeout=1800, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                sys.exit(f"the jobs with --warm {warm} failed:\n{done.stderr[-2000:]}")
            rows = json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            cli(env, "network", "down", "--network", NETWORK, timeout=120)
    return [row[0] for row in rows], [row[1] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--module", default="sdxl:v1.0-lilypad1")
    parser.add_argument("--unsandboxed", action="store_true", help="without bubblewrap")
    parser.add_argument("--no-provider", action="store_true", help="the executor rows only")
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
    if args.no_provider:
        return
    cold_times, cold_cids = through_provider(args.module, args.jobs, warm=0)
    warm_times, warm_cids = through_provider(args.module, args.jobs, warm=1)
    if warm_cids != cold_cids:
        bad = [n for n, (a, b) in enumerate(zip(warm_cids, cold_cids, strict=True)) if a != b]
        sys.exit(f"through a provider, warm CIDs differ from cold ones for jobs {bad}")
    cold_median = statistics.median(cold_times)
    warm_median = statistics.median(warm_times[1:])
    print("through a provider (network up, one SDK client, jobs in turn; CIDs equal):")
    print(f"  cold: first job {cold_times[0]:.2f} s, median {cold_median:.2f} s")
    print(f"  warm: first job {warm_times[0]:.2f} s, median of the rest {warm_median:.2f} s")
    print(f"through a provider: warm/cold per-job ratio: {warm_median / cold_median:.3f}")


if __name__ == "__main__":
    main()
