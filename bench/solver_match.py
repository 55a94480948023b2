"""Benchmark: matching job offers against resource offers in the solver's order book.

Prints a table of match time as the number of job offers grows from 1k to 100k against 10k
resource offers, the fitted growth exponent, and the time of a naive scan of every pair on the
smallest size as the baseline measured in the same run. The last line reads
``match 100000x10000: S s, exponent E``.

    .venv/bin/python bench/solver_match.py [--offers 10000] [--jobs 100000]
"""

from __future__ import annotations

import argparse
import math
import random
import time

from solver.matching import JobRequest, Machine, Match, OrderBook, ResourceOffer

# Jobs need what their module's manifest says (module/<name>/lilypad_module.toml).
MODULE_NEEDS = {
    "cowsay:v0.0.4": Machine(0, 0, 0.5, 0.25, 0.1),
    "sdxl:v0.9-lilypad1": Machine(1, 12, 4, 16, 30),
    "sdxl:v1.0-lilypad1": Machine(1, 16, 4, 24, 40),
    "sdv-pipeline:v1.0-lilypad2": Machine(1, 24, 4, 32, 60),
    "sdv-pipeline:v1.1-lilypad2": Machine(1, 24, 4, 32, 60),
}
MODULES = list(MODULE_NEEDS)
MEDIATORS = [f"0xmediator{i}" for i in range(4)]
# One slot of the kinds of machine providers sell: (GPUs, VRAM per GPU, CPUs, RAM, disk).
SKUS = [
    Machine(0, 0, 4, 8, 50),
    Machine(1, 12, 8, 16, 100),
    Machine(1, 24, 8, 32, 200),
    Machine(1, 24, 16, 64, 500),
    Machine(1, 40, 16, 64, 500),
    Machine(1, 80, 32, 128, 1000),
    Machine(2, 48, 32, 128, 1000),
    Machine(8, 80, 128, 1024, 8000),
]


def make_offers(n: int, rng: random.Random) -> list[ResourceOffer]:
    offers = []
    for i in range(n):
        machine = rng.choice(SKUS)
        served = [
            m for m in rng.sample(MODULES, rng.randint(1, 4)) if machine.covers(MODULE_NEEDS[m])
        ]
        offers.append(
            ResourceOffer(
                id=f"ro{i}",
                provider=f"0xprovider{i // 2}",
                machine=machine,
                prices={m: rng.randint(50, 150) for m in served or ["cowsay:v0.0.4"]},
                mediators=frozenset(rng.sample(MEDIATORS, rng.randint(1, 2))),
                slots=rng.randint(1, 8),
                seq=i,
            )
        )
    return offers


def make_jobs(n: int, rng: random.Random) -> list[JobRequest]:
    return [
        JobRequest(
            id=f"jo{i}",
            module=(module := rng.choice(MODULES)),
            needs=MODULE_NEEDS[module],
            max_price=rng.randint(60, 200),
            mediators=frozenset(rng.sample(MEDIATORS, rng.randint(1, 3))),
            seq=n + i,
        )
        for i in range(n)
    ]


def time_book(offers: list[ResourceOffer], jobs: list[JobRequest]) -> tuple[float, list[Match]]:
    book = OrderBook()
    for offer in offers:
        book.add_offer(offer)
    for job in jobs:
        book.add_job(job)
    start = time.perf_counter()
    matches = book.match(now=0.0)
    return time.perf_counter() - start, matches


def naive(offers: list[ResourceOffer], jobs: list[JobRequest]) -> float:
    """The baseline: every job scans every offer."""
    free = {o.id: o.slots for o in offers}
    start = time.perf_counter()
    for job in jobs:
        best = None
        for o in offers:
            price = o.prices.get(job.module)
            if (
                price is None
                or price > job.max_price
                or free[o.id] <= 0
                or o.mediators.isdisjoint(job.mediators)
                or not o.machine.covers(job.needs)
            ):
                continue
            if best is None or (price, o.seq) < best[0]:
                best = ((price, o.seq), o)
        if best is not None:
            free[best[1].id] -= 1
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offers", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()
    rng = random.Random(7)
    offers = make_offers(args.offers, rng)
    all_jobs = make_jobs(args.jobs, rng)
    sizes = [s for s in (1_000, 3_000, 10_000, 30_000, 100_000) if s < args.jobs] + [args.jobs]
    print(f"{'jobs':>8} {'offers':>7} {'matched':>8} {'seconds':>8} {'us/job':>7}")
    points = []
    for size in sizes:
        seconds, matches = time_book(offers, all_jobs[:size])
        points.append((size, seconds))
        print(
            f"{size:>8} {len(offers):>7} {len(matches):>8} {seconds:>8.3f} "
            f"{seconds / size * 1e6:>7.1f}"
        )
    base_jobs = all_jobs[: min(1_000, args.jobs)]
    baseline = naive(offers, base_jobs)
    book_time = points[0][1]
    print(
        f"baseline (scan of every pair) for {len(base_jobs)} jobs: {baseline:.3f} s; "
        f"the order book is {baseline / book_time:.0f}x faster"
    )
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(s) for _, s in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    exponent = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    print(f"match {args.jobs}x{args.offers}: {points[-1][1]:.2f} s, exponent {exponent:.2f}")


if __name__ == "__main__":
    main()
