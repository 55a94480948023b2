"""What the network adds to a job: ``lilypad run`` end to end next to ``lilypad module run``.

Run: ``.venv/bin/python bench/e2e_overhead.py [--jobs 20] [--baseline-runs 10] [--deposit TOKENS]
[--keep DIR] [--json]``.

It brings up a local network with the real CLI (``lilypad network up --network bench-e2e
--detach --executor process --port-offset 1000``, so it never takes the default ports), in a
private ``$HOME``, ``$LILYPAD_DATA_DIR`` and ``$LILYPAD_CONFIG_DIR`` under a temporary folder, and
brings it down at the end whatever happens. Then, one job after another (the question is latency,
not throughput), it runs N jobs of ``cowsay:v0.0.4``, each with its own ``-i Message=...`` so
each is a new job, as a user does: ``lilypad run ... --yes --json`` as a subprocess. Interleaved
with them it runs the same module on this machine with the same executor, ``lilypad module run
... --executor process --json``, also as a subprocess: the baseline. One warm-up of each comes
first and is not counted (it deposits, and fills the page cache).

Overheads, per job (p50 and p95 over the N jobs):

* **overhead (vs module run)** = the wall time of ``lilypad run`` (measured here around the
  subprocess) - the median wall time of ``lilypad module run`` in this run. Both are whole CLI
  processes, so the bare start-up of the CLI cancels out (not the imports only ``run`` needs:
  the job runner, the light chain client and its signing; no web3 or eth-account, see
  ``lilypad.chain.light``): this is what the network adds to running the module yourself. **The
  target is for this one: under 1 s at p50.**
* **overhead (vs execution)** = the wall time of ``lilypad run`` - the module's execution inside
  the provider's executor (``duration_ms`` of the provider's deal record): everything the user
  waits for that is not the module itself, CLI start-up included.

Phases of one ``lilypad run`` (each from the first instant to the second; every clock is this
machine's wall clock; the client's instants are ``started_at`` + ``timings_ms`` of the ``--json``
record, the provider's are ``times`` of its deal record, joined by ``deal_id``):

==============  =================================================================================
cli start       subprocess launched → ``started_at``: interpreter, imports, profile, key, chain
                connection
offer           ``started_at`` → ``posted``: sign the job offer; when the market deposit is short
                of ``--max-price`` (after every job, as the last one spent it), the approve and
                deposit transactions; POST the offer to the solver
match           ``posted`` → ``matched``: the solver's matching pass; ``deal.matched`` over SSE
deal tx         ``matched`` → ``deal``: ``createDeals`` sent and mined; ``deal.created`` over SSE
start           ``deal`` → provider ``running``: the provider sees the deal, reads it on chain,
                fetches and re-renders the spec
execution       the module in the provider's executor (``duration_ms``; not overhead)
ipfs add        provider ``running`` → ``ran``, less ``execution``: executor set-up and tear-down,
                adding the result folder to IPFS
result tx       provider ``ran`` → client ``result``: ``submitResult`` sent and mined (the
                provider's ``submitted`` splits it: ``submit tx`` + ``result seen``), the
                solver follows the chain, ``deal.result_submitted`` reaches the client
download        ``result`` → ``downloaded``: fetch the result by CID, verify every block
accept          ``downloaded`` → ``accepted``: ``acceptResult`` sent and mined
cli exit        ``accepted`` → the subprocess exits: JSON printed, interpreter shut down
==============  =================================================================================

The p50 of a sum is not the sum of the p50s, so the phase rows need not add up to the total.
``lilypad version`` is timed too, next to each ``module run``: the bare cost of starting the CLI.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

MODULE = "cowsay:v0.0.4"
NETWORK = "bench-e2e"
PORT_OFFSET = 1000
TARGET_MS = 1000.0
TOKEN = 10**18
LILYPAD = [sys.executable, "-m", "lilypad"]
#: (name, first instant, second instant) of each phase; ``None`` where it is computed otherwise.
PHASES = (
    ("cli start", "launched", "c.started"),
    ("offer", "c.started", "c.posted"),
    ("match", "c.posted", "c.matched"),
    ("deal tx", "c.matched", "c.deal"),
    ("start", "c.deal", "p.running"),
    ("execution", None, None),
    ("ipfs add", None, None),
    ("result tx", "p.ran", "c.result"),
    ("  submit tx", "p.ran", "p.submitted"),
    ("  result seen", "p.submitted", "c.result"),
    ("download", "c.result", "c.downloaded"),
    ("accept", "c.downloaded", "c.accepted"),
    ("cli exit", "c.accepted", "exited"),
)


@dataclass
class Job:
    """One timed ``lilypad run``: the instants of its phases (Unix seconds) and what it cost."""

    message: str
    wall_s: float
    deposited: bool
    record: dict[str, Any]
    instants: dict[str, float] = field(default_factory=dict)
    execution_ms: float = 0.0

    def phases_ms(self) -> dict[str, float]:
        """Each phase's length; a phase whose instant was not recorded is left out."""
        at = self.instants
        out = {}
        for name, first, second in PHASES:
            if first in at and second in at:
                out[name] = (at[second] - at[first]) * 1000
        out["execution"] = self.execution_ms
        if "p.ran" in at and "p.running" in at:
            out["ipfs add"] = (at["p.ran"] - at["p.running"]) * 1000 - self.execution_ms
        return out


def private_env(root: Path) -> dict[str, str]:
    """The environment for every command: the user's own state is never read or touched."""
    env = dict(os.environ)
    env.update(
        HOME=str(root / "home"),
        LILYPAD_DATA_DIR=str(root / "data"),
        LILYPAD_CONFIG_DIR=str(root / "config"),
        LILYPAD_CACHE_DIR=str(root / "cache"),
        PYTHONUNBUFFERED="1",
    )
    env.pop("WEB3_PRIVATE_KEY", None)
    env.pop("LILYPAD_EXECUTOR", None)
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 600) -> tuple[float, str]:
    """Run the CLI; return its wall time (s) and stdout, or exit with its stderr."""
    start = time.perf_counter()
    done = subprocess.run(
        [*LILYPAD, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"lilypad {' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr}")
    return took, done.stdout


def up_args(env: dict[str, str]) -> list[str]:
    """``network up`` arguments, off the default ports."""
    args = ["network", "up", "--network", NETWORK, "--detach", "--executor", "process"]
    _, helptext = cli(env, "network", "up", "--help")
    if "--port-offset" in helptext:
        return [*args, "--port-offset", str(PORT_OFFSET)]
    raise SystemExit("lilypad network up has no --port-offset: the bench needs it")


@contextmanager
def network(env: dict[str, str]) -> Iterator[None]:
    """A local network for the bench, brought down whatever happens."""
    try:
        cli(env, *up_args(env), timeout=300)
        yield
    finally:
        subprocess.run(
            [*LILYPAD, "network", "down", "--network", NETWORK],
            env=env,
            capture_output=True,
            check=False,
        )


def module_run(env: dict[str, str], work: Path, message: str) -> tuple[float, float]:
    """``lilypad module run`` once: its wall time (s) and the module's ``duration_ms``."""
    out = work / f"module-run-{time.monotonic_ns()}"
    took, stdout = cli(
        env, "module", "run", MODULE, "-i", f"Message={message}", "-o", str(out),
        "--executor", "process", "--json",
    )  # fmt: skip
    return took, float(json.loads(stdout)["duration_ms"])


def network_run(env: dict[str, str], key: Path, message: str) -> tuple[float, float, float, dict]:
    """``lilypad run`` once: launch and exit instants (Unix s), wall time (s), its record."""
    launched = time.time()
    # --verify never: an audit is a mediation, not overhead (bench/gas.py prices it)
    took, stdout = cli(
        env, "run", MODULE, "-i", f"Message={message}", "--network", NETWORK,
        "--key-file", str(key), "--yes", "--json", "--verify", "never",
    )  # fmt: skip
    return launched, launched + took, took, json.loads(stdout)


def provider_deals(data_dir: Path) -> dict[str, dict[str, Any]]:
    """The provider's deal records (``resource_provider.state.DealRecord`` as JSON) by deal id."""
    deals = {}
    for path in (data_dir / "provider" / NETWORK).glob("*/deals/*.json"):
        record = json.loads(path.read_text())
        deals[path.stem] = record
    return deals


def join(job: Job, launched: float, exited: float, deal: dict[str, Any]) -> Job:
    record = job.record
    started = float(record["started_at"])
    job.instants = {"launched": launched, "exited": exited, "c.started": started}
    for phase, ms in record["timings_ms"].items():
        job.instants[f"c.{phase}"] = started + ms / 1000
    for phase, at in deal["times"].items():
        job.instants[f"p.{phase}"] = float(at)
    job.execution_ms = float(deal["duration_ms"])
    return job


def p50_p95(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    return statistics.median(values), statistics.quantiles(values, n=20, method="inclusive")[18]


class Balance:
    """The job creator's free market balance, to tell which jobs had to top it up."""

    def __init__(self, env: dict[str, str]) -> None:
        os.environ.update({k: env[k] for k in ("LILYPAD_CONFIG_DIR", "LILYPAD_DATA_DIR")})
        from lilypad.chain import Chain, JobMarketClient
        from lilypad.network import load_network

        profile = load_network(NETWORK)
        market, _ = profile.require_contracts()
        self.market = JobMarketClient(Chain(profile.rpc_url), market)
        self.address = profile.accounts["job_creator"]

    def short(self, max_price: int = 10 * TOKEN) -> bool:
        return bool(self.market.balance_of(self.address) < max_price)

    def deposit(self, key: Path, tokens: int) -> None:
        from lilypad.keys import load_account

        self.market.deposit(load_account(key, role="the job creator"), tokens * TOKEN)


def measure(args: argparse.Namespace, env: dict[str, str], root: Path) -> dict[str, Any]:
    data = root / "data"
    key = data / "network" / NETWORK / "keys" / "job_creator.key"
    balance = Balance(env)
    if args.deposit:
        balance.deposit(key, args.deposit)
    module_run(env, root, "warm-up")
    network_run(env, key, "warm-up")
    every = max(1, round(args.jobs / max(1, args.baseline_runs)))
    baseline: list[tuple[float, float]] = []
    version_s: list[float] = []
    runs: list[tuple[float, float, Job]] = []
    for i in range(args.jobs):
        if i % every == 0 and len(baseline) < args.baseline_runs:
            baseline.append(module_run(env, root, f"baseline {i}"))
            version_s.append(cli(env, "version")[0])
        message = f"bench job {i} {time.time_ns()}"
        short = balance.short()
        launched, exited, took, record = network_run(env, key, message)
        runs.append((launched, exited, Job(message, took, short, record)))
    time.sleep(1.0)  # the provider's last write (``submitted``) may trail the client by a little
    deals = provider_deals(data)
    missing = [j.record["deal_id"] for _, _, j in runs if j.record["deal_id"] not in deals]
    if missing:
        raise SystemExit(f"the provider has no record of deals {missing}: see its log")
    jobs = [join(job, a, b, deals[job.record["deal_id"]]) for a, b, job in runs]
    return summarize(jobs, baseline, version_s)


def summarize(
    jobs: list[Job], baseline: list[tuple[float, float]], version_s: list[float]
) -> dict[str, Any]:
    module_wall_ms = statistics.median(b[0] for b in baseline) * 1000
    per_job = [j.phases_ms() for j in jobs]
    phases = {
        name: p50_p95([p[name] for p in per_job if name in p])
        for name, _, _ in PHASES
        if any(name in p for p in per_job)
    }
    wall = [j.wall_s * 1000 for j in jobs]
    vs_module = [w - module_wall_ms for w in wall]
    vs_exec = [w - j.execution_ms for w, j in zip(wall, jobs, strict=True)]
    return {
        "module": MODULE,
        "jobs": len(jobs),
        "jobs_that_deposited": sum(j.deposited for j in jobs),
        "cli_start_ms": p50_p95([s * 1000 for s in version_s]),
        "module_run_wall_ms": p50_p95([b[0] * 1000 for b in baseline]),
        "module_run_duration_ms": p50_p95([b[1] for b in baseline]),
        "baseline_runs": len(baseline),
        "run_wall_ms": p50_p95(wall),
        "phases_ms": phases,
        "overhead_vs_module_run_ms": p50_p95(vs_module),
        "overhead_vs_execution_ms": p50_p95(vs_exec),
        "target_ms": TARGET_MS,
        "target_met": p50_p95(vs_module)[0] < TARGET_MS,
        "per_job": [
            {"wall_ms": j.wall_s * 1000, "deposited": j.deposited, **j.phases_ms()} for j in jobs
        ],
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }


def report(result: dict[str, Any]) -> None:
    console = Console()
    table = Table(title=f"{result['module']}: {result['jobs']} jobs, one after another (ms)")
    table.add_column("")
    table.add_column("p50", justify="right")
    table.add_column("p95", justify="right")

    def row(name: str, pair: tuple[float, float], style: str | None = None) -> None:
        table.add_row(name, f"{pair[0]:.0f}", f"{pair[1]:.0f}", style=style)

    for name, pair in result["phases_ms"].items():
        row(name, pair, "dim" if name.startswith("  ") else None)
    table.add_section()
    row("lilypad run (wall)", result["run_wall_ms"], "bold")
    row(f"lilypad module run (wall, {result['baseline_runs']} runs)", result["module_run_wall_ms"])
    row("  module execution in it", result["module_run_duration_ms"], "dim")
    row("lilypad version (CLI start)", result["cli_start_ms"])
    table.add_section()
    row("overhead vs module run", result["overhead_vs_module_run_ms"], "bold")
    row("overhead vs execution", result["overhead_vs_execution_ms"])
    console.print(table)
    p50 = result["overhead_vs_module_run_ms"][0]
    verdict = "[green]met[/]" if result["target_met"] else "[red]not met[/]"
    console.print(
        f"target: overhead vs module run under {TARGET_MS:.0f} ms at p50: {p50:.0f} ms, {verdict}"
    )
    load = ", ".join(f"{x:.2f}" for x in result["load_average"])
    console.print(
        f"{result['jobs_that_deposited']} of {result['jobs']} jobs topped up the deposit (offer); "
        f"{result['cpus']} CPUs, load average {load}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument(
        "--baseline-runs",
        type=int,
        default=10,
        help="runs of lilypad module run (and of lilypad version), spread among the jobs",
    )
    parser.add_argument(
        "--deposit",
        type=int,
        default=0,
        metavar="TOKENS",
        help="deposit this much for the job creator first, so that no job tops its balance up "
        "(default: none; each job deposits what it lacks, as a user's does)",
    )
    parser.add_argument(
        "--keep", type=Path, help="use this (new) folder for all state and keep it (logs)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    if args.jobs < 1 or args.baseline_runs < 1:
        parser.error("--jobs and --baseline-runs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        root = args.keep or Path(tmp)
        # NOTE: a fresh folder each time: `network up` starts a new chain but keeps the solver's
        # database and the provider's state of an earlier run, which point at the old chain.
        if root.exists() and any(root.iterdir()):
            parser.error(f"--keep {root}: the folder must be new or empty")
        root.mkdir(parents=True, exist_ok=True)
        env = private_env(root)
        with network(env):
            result = measure(args, env, root)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)


if __name__ == "__main__":
    main()
