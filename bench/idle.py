"""Idle: what each service of a local network costs while no job runs.

Run: ``.venv/bin/python bench/idle.py [--providers 4] [--seconds 30] [--settle 10] [--json]``.

It brings up the same local network as ``bench/throughput.py`` (the real CLI, a private
``$HOME`` and data dir, brought down at the end), waits ``--settle`` seconds for the start-up
work to end, then reads the CPU-seconds of every service from ``/proc/<pid>/stat`` over
``--seconds`` and prints each one's share of one core (``solver 1.2 %``) and the total.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _cli import private_env  # bench/: its folder is on the path
from throughput import Meter, network


def idle_shares(data: Path, seconds: float, settle: float) -> dict[str, float]:
    """Each service's CPU over ``seconds`` as a percentage of one core."""
    time.sleep(settle)
    meter = Meter(data)
    before, start = meter.snapshot(), time.monotonic()
    time.sleep(seconds)
    after, elapsed = meter.snapshot(), time.monotonic() - start
    shares = {name: 100 * (after[name] - before[name]) / elapsed for name in sorted(meter.pids)}
    shares["services"] = sum(shares.values())
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", type=int, default=4, help="local providers")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to measure")
    parser.add_argument("--settle", type=float, default=10.0, help="wait this long first")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        root = Path(tmp)
        env = private_env(root)
        with network(env, args.providers, None):
            shares = idle_shares(root / "data", args.seconds, args.settle)
    if args.json:
        print(json.dumps(shares, indent=2))
        return
    print(f"idle CPU over {args.seconds:g} s, % of one core")
    for name, share in shares.items():
        print(f"{name:<14}{share:6.2f} %")


if __name__ == "__main__":
    main()
