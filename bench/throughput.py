"""Throughput: many cowsay jobs at once through one solver, from one reused client and from CLIs.

Run: ``.venv/bin/python bench/throughput.py [--providers 4] [--accounts M] [--jobs 60]
[--concurrency 12] [--cli-jobs 16] [--cli-concurrency 4] [--block-time SECONDS]
[--past-events N] [--no-deposit-ahead] [--keep DIR] [--json]``.

It brings up a local network with the real CLI (``lilypad network up --network bench-throughput
--detach --providers N --executor process --port-offset 4000``, with ``--block-time S`` when
given: anvil then mines a block every S seconds and each transaction waits for one, as on a real
chain), in a private ``$HOME`` and data dir under a temporary folder, and brings it down at the
end whatever happens. ``cowsay:v0.0.4`` runs in a few milliseconds, so what is measured is the
network: offer, match, deal, the provider's run and upload, the result, the verified download and
the accept, each job with its own message.

Job creators: the local network funds every dev account, and has one job creator role
(``job_creator``); the provider accounts a network with fewer than its 16 providers leaves unused
(``provider-N+1`` .. ``provider-16``) are funded the same and post jobs here too, so
``--accounts`` is at most 17 - N. Jobs go to the accounts in turn.

Two rows, one after the other:

* **sdk**: ONE :class:`lilypad.creator.JobRunner` per account, each reused for all its jobs, in
  this process, ``--concurrency`` jobs at a time on threads (what a program using the SDK does;
  the runner is what ``lilypad run`` drives).
* **cli**: one ``lilypad run ... --yes --json`` process per job, ``--cli-concurrency`` at a time.

Before the rows, each account deposits what all its jobs may take (as ``lilypad run --sweep``
does), unless ``--no-deposit-ahead``: then each job tops the deposit up itself when it is short
(approve + deposit, under the account's lock, as a lone ``lilypad run`` does). One warm-up job
per account comes first, not counted. Results are not audited (``--verify never``: an audit is a
mediation, which bench/gas.py prices).

With ``--past-events N`` the solver's event log holds N more events before the rows: the
warm-up jobs' events, copied over and over (kinds, payloads and how many parties each concerns
as they were) for 64 other addresses, as a solver that has served many jobs of many users holds
them. They are written into its SQLite database while it runs, and the rows start once its event
reader has read them all (its CPU has gone quiet). The p95 with ``--past-events 100000`` against
one without, run back to back, tells whether the event log's size slows the network.

Each row prints jobs/s (completed jobs over the row's wall time), p50/p95/max latency (one job,
from the moment it starts to its accepted result; for the CLI row the whole process), failures,
and CPU-seconds per job of each process: anvil, IPFS, the solver, the providers (with the jobs
they ran as child processes), the mediator, the bridge, read from ``/proc/<pid>/stat`` of the pids
under the network's state dir, and the client (this process for sdk, the ``lilypad run``
processes for cli); how busy the machine's CPUs were; the memory (resident, MB) of each service
after the warm-up and at the end of the sdk row; and how many events the solver logged per job.
The last line is::

    throughput: X jobs/s (sdk), Y jobs/s (cli), p95 Z ms, failures F

with Z the sdk row's p95 and F the failures of both rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import sqlite3
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _cli import cli, private_env  # bench/: its folder is on the path

from lilypad.localnet import MAX_PROVIDERS, provider_role

MODULE = "cowsay:v0.0.4"
NETWORK = "bench-throughput"
PORT_OFFSET = 4000
TICKS = os.sysconf("SC_CLK_TCK")


@contextmanager
def network(
    env: dict[str, str], providers: int, block_time: float | None, slots: int | None = None
) -> Iterator[None]:
    """A local network for the bench, brought down whatever happens."""
    args = [
        "network", "up", "--network", NETWORK, "--detach", "--providers", str(providers),
        "--executor", "process", "--port-offset", str(PORT_OFFSET),
    ]  # fmt: skip
    if slots is not None:
        args += ["--slots", str(slots)]
    if block_time is not None:
        args += ["--block-time", f"{block_time:g}"]
    try:
        up = cli(env, *args, timeout=300)
        if up.returncode != 0:
            raise SystemExit(f"lilypad network up failed ({up.returncode}):\n{up.stderr}")
        yield
    finally:
        cli(env, "network", "down", "--network", NETWORK, timeout=120)


def creator_roles(providers: int, wanted: int | None) -> list[str]:
    """The job creator accounts: ``job_creator``, then the provider accounts left unused.

    Raises:
        ValueError: ``wanted`` is more than there are, or less than 1.
    """
    spare = [provider_role(i) for i in range(max(providers, 1), MAX_PROVIDERS)]
    roles = ["job_creator", *spare]
    if wanted is None:
        return roles
    if not 1 <= wanted <= len(roles):
        raise ValueError(
            f"--accounts {wanted}: with --providers {providers} the local network has "
            f"{len(roles)} funded accounts to post jobs from (1 to {len(roles)})"
        )
    return roles[:wanted]


# ------------------------------------------------------------------------------------- CPU
def cpu_s(pid: int) -> float:
    """CPU-seconds of ``pid`` and of the children it has reaped (a provider's jobs)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime: fields 14-17 of proc(5), here from field 3 on
    return sum(int(x) for x in fields[11:15]) / TICKS


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (0 once it has gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    kb = next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return int(kb) / 1024


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU-seconds of the whole machine since boot, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / TICKS, sum(ticks) / TICKS


class Meter:
    """CPU-seconds of every service of the network, and of the machine, over one row."""

    def __init__(self, data: Path) -> None:
        folder = data / "network" / NETWORK
        names = (folder / "services").read_text().split()
        self.pids = {name: int((folder / f"{name}.pid").read_text()) for name in names}

    def snapshot(self) -> dict[str, float]:
        out = {name: cpu_s(pid) for name, pid in self.pids.items()}
        self_use = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["client (sdk)"] = self_use.ru_utime + self_use.ru_stime
        out["client (cli)"] = children.ru_utime + children.ru_stime
        out["machine busy"], out["machine total"] = machine_busy()
        return out

    def memory(self) -> dict[str, float]:
        """Resident MB of each service, by its name (``chain`` is anvil)."""
        return {name: rss_mb(pid) for name, pid in self.pids.items()}

    def settle(self, name: str, quiet: float = 0.1, longest: float = 300.0) -> None:
        """Wait until service ``name`` uses under ``quiet`` of a CPU over a second."""
        deadline = time.monotonic() + longest
        while time.monotonic() < deadline:
            before = cpu_s(self.pids[name])
            time.sleep(1.0)
            if cpu_s(self.pids[name]) - before < quiet:
                return


def per_process(before: dict[str, float], after: dict[str, float], client: str) -> dict[str, float]:
    """CPU-seconds used during a row by process group, with the services' total; ``client`` is
    ``sdk`` (this process) or ``cli`` (the processes it ran)."""
    used = {name: after[name] - before[name] for name in before}
    groups: dict[str, float] = {"anvil": used.pop("chain")}
    groups["ipfs"] = used.pop("ipfs")
    groups["solver"] = used.pop("solver")
    groups["providers"] = sum(v for k, v in used.items() if k.startswith("provider"))
    groups["mediator"] = used.pop("mediator")
    groups["bridge"] = used.pop("bridge")
    groups["services"] = sum(groups.values())
    groups["client"] = used[f"client ({client})"]
    groups["machine busy"] = used["machine busy"]
    groups["machine total"] = used["machine total"]
    return groups


# ------------------------------------------------------------------------------------ rows
@dataclass
class Row:
    """One way of driving the jobs, and what it gave."""

    name: str
    concurrency: int
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)

    def jobs_per_s(self) -> float:
        return self.completed / self.wall_s if self.wall_s else 0.0

    def percentiles(self) -> tuple[float, float, float]:
        values = sorted(self.latencies_ms) or [0.0]
        if len(values) < 2:
            return values[0], values[0], values[0]
        p95 = statistics.quantiles(values, n=20, method="inclusive")[18]
        return statistics.median(values), p95, values[-1]

    def summary(self) -> dict[str, Any]:
        p50, p95, top = self.percentiles()
        jobs = max(1, self.completed + self.failures)
        return {
            "row": self.name,
            "concurrency": self.concurrency,
            "jobs": self.completed + self.failures,
            "completed": self.completed,
            "failures": self.failures,
            "wall_s": round(self.wall_s, 2),
            "jobs_per_s": round(self.jobs_per_s(), 2),
            "latency_ms": {"p50": round(p50), "p95": round(p95), "max": round(top)},
            "cpu_s_per_job": {
                k: round(v / jobs, 4) for k, v in self.cpu.items() if not k.startswith("machine")
            },
            "machine_busy": round(
                self.cpu.get("machine busy", 0) / max(self.cpu.get("machine total", 0), 1e-9), 3
            ),
            "errors": self.errors[:5],
            "notes": self.notes,
        }


class Sdk:
    """One reused :class:`~lilypad.creator.JobRunner` per account, in this process."""

    def __init__(self, data: Path, roles: list[str]) -> None:
        from lilypad.chain.light import CreatorMarket, LightChain
        from lilypad.chain.offers import default_job_timeout
        from lilypad.creator import JobRunner, RunOptions
        from lilypad.keys import load_signer
        from lilypad.modules import render, resolve
        from lilypad.network import load_network
        from lilypad.verification import Verify

        self.profile = load_network(NETWORK)
        market_address, _ = self.profile.require_contracts()
        self.module = resolve(MODULE)
        timeout = default_job_timeout(render(self.module, ["Message=timeout"]).timeout_s)
        mediators = tuple(
            address
            for role, address in sorted(self.profile.accounts.items())
            if role.startswith("mediator")
        )
        self.options = RunOptions(
            max_price=10 * 10**18, timeout_s=timeout, mediators=mediators, verify=Verify.NEVER
        )
        keys = data / "network" / NETWORK / "keys"
        #: Each job's ms from its start to each phase (posted, matched, deal, result, ...).
        self.timings: list[dict[str, int]] = []
        self.runners = []
        for role in roles:
            signer = load_signer(keys / f"{role}.key", role=role)
            market = CreatorMarket(LightChain(self.profile.rpc_url), market_address)
            runner = JobRunner(self.profile, signer, market)
            runner.fund = _funder(runner)
            self.runners.append(runner)

    def close(self) -> None:
        for runner in self.runners:
            runner.close()

    def deposit_ahead(self, jobs_each: int) -> None:
        """Deposit what ``jobs_each`` jobs of each account may take, once (as a sweep does)."""
        for runner in self.runners:
            each = self.options.max_price + runner.challenge_reserve(self.options.mediators)
            needed = runner.deposit_needed(each * jobs_each)
            if needed:
                runner.deposit(needed)

    def job(self, index: int) -> None:
        from lilypad.modules import render

        runner = self.runners[index % len(self.runners)]
        spec = render(self.module, [f"Message=sdk job {index} {time.time_ns()}"])
        record = runner.run(spec, self.options)
        self.timings.append(record.timings_ms)  # list.append: one step, safe across threads


def _funder(runner: Any) -> Callable[[int], None]:
    def fund(amount: int) -> None:
        runner.deposit(amount)

    return fund


def cli_job(env: dict[str, str], keys: Path, roles: list[str], index: int) -> None:
    """One ``lilypad run`` process; raises with its last line of stderr when it fails."""
    role = roles[index % len(roles)]
    done = cli(
        env, "run", MODULE, "-i", f"Message=cli job {index} {time.time_ns()}",
        "--network", NETWORK, "--key-file", str(keys / f"{role}.key"),
        "--yes", "--json", "--verify", "never", timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(f"exit {done.returncode}: {lines[-1] if lines else '(no stderr)'}")


def drive(row: Row, meter: Meter, jobs: int, work: Callable[[int], None], offset: int = 0) -> None:
    """Run ``jobs`` of ``work``, ``row.concurrency`` at a time, filling in ``row``."""
    lock = threading.Lock()

    def one(index: int) -> None:
        start = time.perf_counter()
        try:
            work(offset + index)
        except Exception as exc:  # a failed job is counted and named, the others go on
            with lock:
                row.failures += 1
                row.errors.append(f"{type(exc).__name__}: {exc}")
            return
        with lock:
            row.latencies_ms.append((time.perf_counter() - start) * 1000)

    before = meter.snapshot()
    began = time.perf_counter()
    with ThreadPoolExecutor(row.concurrency) as pool:
        list(pool.map(one, range(jobs)))
    row.wall_s = time.perf_counter() - began
    row.cpu = per_process(before, meter.snapshot(), "cli" if row.name == "cli" else "sdk")


def phases(timings: list[dict[str, int]]) -> str:
    """The median ms from a job's start to each of its phases, and between them."""
    if not timings:
        return "phases: no job completed"
    names = [name for name in timings[0] if all(name in t for t in timings)]
    at = {name: statistics.median(t[name] for t in timings) for name in names}
    steps, last = [], 0.0
    for name in sorted(names, key=at.__getitem__):
        steps.append(f"{name} {at[name]:.0f} (+{at[name] - last:.0f})")
        last = at[name]
    return "median ms from the start to each phase (+ since the one before): " + ", ".join(steps)


# ----------------------------------------------------------------------------- event log
def solver_db(data: Path) -> Path:
    return data / "solver" / f"{NETWORK}.db"


def event_count(data: Path) -> int:
    with contextlib.closing(sqlite3.connect(solver_db(data), timeout=60)) as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


def add_past_events(data: Path, count: int) -> None:
    """Append ``count`` events to the solver's log: copies of those it holds, each with as many
    parties as its original, drawn from 64 addresses no live account has."""
    rng = random.Random(23)
    others = [f"0x{rng.getrandbits(160):040x}" for _ in range(64)]
    connect = sqlite3.connect(solver_db(data), timeout=60, isolation_level=None)
    with contextlib.closing(connect) as db:
        events = db.execute("SELECT seq, kind, payload, created_at FROM events").fetchall()
        parties = Counter(seq for (seq,) in db.execute("SELECT event_seq FROM event_parties"))
        if not events:
            raise SystemExit("--past-events: the solver has logged no event to copy")
        db.execute("BEGIN IMMEDIATE")  # the solver writes events too: numbered after its last
        try:
            top = int(db.execute("SELECT max(seq) FROM events").fetchone()[0])
            rows, links = [], []
            for seq in range(top + 1, top + count + 1):
                old, kind, payload, created_at = events[seq % len(events)]
                rows.append((seq, kind, payload, created_at))
                links += [(seq, a) for a in rng.sample(others, min(parties[old], len(others)))]
            db.executemany(
                "INSERT INTO events (seq, kind, payload, created_at) VALUES (?, ?, ?, ?)", rows
            )
            db.executemany("INSERT INTO event_parties (event_seq, address) VALUES (?, ?)", links)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def measure(args: argparse.Namespace, env: dict[str, str], root: Path) -> dict[str, Any]:
    data = root / "data"
    keys = data / "network" / NETWORK / "keys"
    roles = creator_roles(args.providers, args.accounts)
    # The SDK reads its data and config dirs from the environment, as the CLI does.
    os.environ.update({k: env[k] for k in ("LILYPAD_CONFIG_DIR", "LILYPAD_DATA_DIR", "HOME")})
    meter = Meter(data)
    sdk = Sdk(data, roles)
    rows: list[Row] = []
    try:
        if args.deposit_ahead:
            per_account = -(-(args.jobs + args.cli_jobs) // len(roles)) + 1  # + the warm-up
            sdk.deposit_ahead(per_account)
        warm = Row("warm-up", len(roles))
        drive(warm, meter, len(roles), sdk.job, offset=10**6)
        if warm.failures:
            raise SystemExit(f"the warm-up jobs failed: {warm.errors}")
        if args.past_events:
            add_past_events(data, args.past_events)
            meter.settle("solver")
        threads, fds = threading.active_count(), open_fds()
        memory, events = meter.memory(), event_count(data)
        sdk_row = Row("sdk", args.concurrency)
        sdk.timings.clear()
        drive(sdk_row, meter, args.jobs, sdk.job)
        sdk_row.notes.append(phases(sdk.timings))
        time.sleep(1.0)  # let the event-stream readers of the last jobs wind down
        sdk_row.notes.append(
            f"client threads {threads} -> {threading.active_count()}, open files {fds} -> "
            f"{open_fds()} over {args.jobs} jobs"
        )
        grown = meter.memory()
        sdk_row.notes.append(
            "memory MB after the warm-up -> at the end: "
            + ", ".join(f"{k} {memory[k]:.0f} -> {grown[k]:.0f}" for k in memory)
        )
        logged = event_count(data) - events
        sdk_row.notes.append(
            f"solver events: {events} before the row ({args.past_events} of them past), "
            f"{logged / args.jobs:.1f} logged per job"
        )
        rows.append(sdk_row)
        if args.cli_jobs:
            cli_row = Row("cli", args.cli_concurrency)
            drive(cli_row, meter, args.cli_jobs, lambda i: cli_job(env, keys, roles, i))
            rows.append(cli_row)
    finally:
        sdk.close()
    return {
        "module": MODULE,
        "providers": args.providers,
        "accounts": roles,
        "block_time": args.block_time,
        "deposit_ahead": args.deposit_ahead,
        "past_events": args.past_events,
        "rows": [row.summary() for row in rows],
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


# ---------------------------------------------------------------------------------- report
COLUMNS = ("anvil", "ipfs", "solver", "providers", "mediator", "bridge", "services", "client")


def report(result: dict[str, Any]) -> None:
    chain = (
        f"anvil: a block every {result['block_time']:g} s, transactions wait for it"
        if result["block_time"]
        else "anvil: every transaction mined at once"
    )
    deposit = "deposited ahead" if result["deposit_ahead"] else "each job tops up its deposit"
    print(
        f"{result['module']}: {result['providers']} providers, {len(result['accounts'])} job "
        f"creator accounts ({', '.join(result['accounts'])}); {chain}; {deposit}"
    )
    print(f"{'row':<4} {'conc':>4} {'jobs':>5} {'fail':>4} {'wall s':>7} {'jobs/s':>7} "
          f"{'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'cpu busy':>8}")  # fmt: skip
    for row in result["rows"]:
        lat = row["latency_ms"]
        print(
            f"{row['row']:<4} {row['concurrency']:>4} {row['jobs']:>5} {row['failures']:>4} "
            f"{row['wall_s']:>7.1f} {row['jobs_per_s']:>7.2f} {lat['p50']:>7} {lat['p95']:>7} "
            f"{lat['max']:>7} {row['machine_busy']:>8.0%}"
        )
    print("CPU-s per job: " + " ".join(f"{c:>9}" for c in COLUMNS))
    for row in result["rows"]:
        cpu = row["cpu_s_per_job"]
        print(f"  {row['row']:<12}" + " ".join(f"{cpu[c]:>9.3f}" for c in COLUMNS))
    for row in result["rows"]:
        for note in row["notes"]:
            print(f"{row['row']}: {note}")
        for error in row["errors"]:
            print(f"{row['row']} job error: {error}")
    load = ", ".join(f"{x:.2f}" for x in result["load_average"])
    print(f"{result['cpus']} CPUs, load average {load}")
    print(final_line(result))


def final_line(result: dict[str, Any]) -> str:
    by_name = {row["row"]: row for row in result["rows"]}
    sdk, cli_row = by_name["sdk"], by_name.get("cli")
    cli_rate = f"{cli_row['jobs_per_s']:.2f}" if cli_row else "-"
    failures = sum(row["failures"] for row in result["rows"])
    return (
        f"throughput: {sdk['jobs_per_s']:.2f} jobs/s (sdk), {cli_rate} jobs/s (cli), "
        f"p95 {sdk['latency_ms']['p95']} ms, failures {failures}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--providers", type=int, default=4, help=f"local providers (1 to {MAX_PROVIDERS})"
    )
    parser.add_argument(
        "--slots", type=int, help="jobs each provider runs at once (network up --slots)"
    )
    parser.add_argument(
        "--accounts",
        type=int,
        help=f"job creator accounts (default: all there are, {MAX_PROVIDERS + 1} - N)",
    )
    parser.add_argument("--jobs", type=int, default=60, help="jobs of the sdk row")
    parser.add_argument("--concurrency", type=int, default=12, help="sdk jobs at a time")
    parser.add_argument("--cli-jobs", type=int, default=16, help="jobs of the cli row (0: none)")
    parser.add_argument("--cli-concurrency", type=int, default=4, help="lilypad run at a time")
    parser.add_argument(
        "--block-time",
        type=float,
        metavar="SECONDS",
        help="anvil mines a block every SECONDS and transactions wait for it (e.g. 2)",
    )
    parser.add_argument(
        "--past-events",
        type=int,
        default=0,
        metavar="N",
        help="N more events in the solver's log before the rows (e.g. 100000)",
    )
    parser.add_argument(
        "--no-deposit-ahead",
        dest="deposit_ahead",
        action="store_false",
        help="no deposit first: each job tops its deposit up (approve + deposit) when short",
    )
    parser.add_argument("--keep", type=Path, help="a new folder for all state, kept (logs)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if not 1 <= args.providers <= MAX_PROVIDERS:
        parser.error(f"--providers {args.providers}: give 1 to {MAX_PROVIDERS}")
    for name in ("jobs", "concurrency", "cli_concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: give at least 1")
    for name in ("cli_jobs", "past_events"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: give 0 or more")
    try:
        creator_roles(args.providers, args.accounts)  # a bad --accounts stops here
    except ValueError as exc:
        parser.error(str(exc))
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        root = args.keep or Path(tmp)
        # NOTE: a fresh folder each time: `network up` keeps job records of an earlier run.
        if root.exists() and any(root.iterdir()):
            parser.error(f"--keep {root}: the folder must be new or empty")
        root.mkdir(parents=True, exist_ok=True)
        env = private_env(root)
        with network(env, args.providers, args.block_time, args.slots):
            result = measure(args, env, root)
    if args.json:
        print(json.dumps(result, indent=2))
        print(final_line(result))
    else:
        report(result)


if __name__ == "__main__":
    main()
