"""Faults and a cheater under load: no cheat is paid, no honest token is lost, nothing is created.

Run: ``.venv/bin/python bench/faults.py [--jobs 30] [--cheat-rate 0.5] [--concurrency 5]
[--keep DIR]``.

It brings up a local network with the real CLI (``lilypad network up --network faults
--providers 2 --slots 1 --executor process --port-offset 3000``, in a private ``$HOME`` and data
dir under a temporary folder), and adds a third resource provider that cheats: the provider
daemon of this project with an executor that, on a share of its deals (``--cheat-rate``),
changes the job's output after running it, and keeps the list of the deals it cheated on. Then
it runs ``--jobs`` ``lilypad run cowsay:v0.0.4 --verify always`` at once (``--concurrency`` at a
time), each its own message. While they run it kills the IPFS node (``kill -9``) for 20 s and,
later, the solver for 10 s, and starts each again as ``network up`` did.

When every job has ended and every deal has settled on chain, it reads the chain (the truth) and
prints, among other figures::

    honest tokens lost: N      collateral the honest providers lost + prices paid for wrong results
    cheats caught: C of T      cheated deals the mediator ruled against, of those the cheater made
    token supply conserved: yes|no

and exits 1 unless N is 0, C equals T and the supply is conserved. ``tests/e2e/test_faults.py``
(marked slow) runs it with fewer jobs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _cli import cli, private_env  # bench/: its folder is on the path

NETWORK = "faults"
PORT_OFFSET = 3000
MODULE = "cowsay:v0.0.4"
ETH = 10**18
#: States of a `lilypad run` record that mean the job gave a verified result.
COMPLETED = ("accepted", "upheld", "provider_slashed")
#: States that mean the job ended without one and the job creator's funds came back.
REFUNDED = ("timed_out", "cancelled", "mediation_expired")


@contextmanager
def network(env: dict[str, str]) -> Any:
    up = cli(
        env, "network", "up", "--network", NETWORK, "--detach", "--providers", "2",
        # one slot each, as the cheater has two: the solver ties to the older offer, so honest
        # providers with many free slots would take every job and the cheater none
        "--slots", "1", "--executor", "process", "--port-offset", str(PORT_OFFSET), timeout=300,
    )  # fmt: skip
    if up.returncode != 0:
        raise SystemExit(f"network up failed:\n{up.stderr}")
    try:
        yield
    finally:
        cli(env, "network", "down", "--network", NETWORK, timeout=120)


# ------------------------------------------------------------------------------- the cheater
def cheater(network: str, rate: float, log: Path) -> None:
    """A resource provider that cheats on ``rate`` of its deals (run as its own process)."""
    import logging

    from eth_account import Account

    from lilypad.chain.client import Chain
    from lilypad.chain.market import JobMarketClient
    from lilypad.config import get_settings
    from lilypad.network import load_network
    from lilypad.solver_api import SolverClient
    from lilypad.storage import open_storage
    from resource_provider.daemon import ProviderConfig, ResourceProvider
    from resource_provider.executors import ExecutionResult, Job, ProcessExecutor
    from resource_provider.machine import detect

    class CheatingExecutor(ProcessExecutor):
        def run(self, job: Job) -> ExecutionResult:
            result = super().run(job)
            deal_id = job.output_dir.name
            if int(hashlib.sha256(deal_id.encode()).hexdigest(), 16) % 1000 < rate * 1000:
                with (job.output_dir / "outputs" / "cowsay.txt").open("a") as out:
                    out.write("(and the cow said nothing of the sort)\n")
                with log.open("a") as cheats:
                    cheats.write(deal_id + "\n")
            return result

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    account = Account.from_key(os.environ["WEB3_PRIVATE_KEY"])
    profile = load_network(network)
    assert profile.market
    assert profile.solver_url
    market = JobMarketClient(Chain(profile.rpc_url), profile.market)
    price = ETH
    state = get_settings().data_dir / "cheater" / account.address
    daemon = ResourceProvider(
        account=account,
        market=market,
        solver=SolverClient(profile.solver_url),
        storage=open_storage(api=profile.ipfs_api_url),  # None: the local repository
        executor=CheatingExecutor(),
        hardware=detect(state),
        state_dir=state,
        config=ProviderConfig(
            modules=(MODULE,),
            price=price,
            collateral=market.required_collateral(price),
            mediators=(profile.accounts["mediator"],),
            max_concurrent=2,
            start_block=profile.deployed_block,
            auto_deposit=True,
        ),
    )
    daemon.start()
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    daemon.wait()


# ---------------------------------------------------------------------------------- faults
@dataclass
class Faults:
    """Kills the IPFS node and the solver once each, while jobs run, and restarts them."""

    env: dict[str, str]
    data: Path
    log: list[str] = field(default_factory=list)

    def kill_and_restart(self, name: str, down_s: float) -> None:
        folder = self.data / "network" / NETWORK
        pid = int((folder / f"{name}.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        self.log.append(f"{name} killed (kill -9) for {down_s:g} s")
        time.sleep(down_s)
        code = (
            "import sys; from lilypad import localnet; from lilypad.network import load_network\n"
            f"profile = load_network({NETWORK!r})\n"
            f"topology = localnet.Topology(port_offset={PORT_OFFSET}, providers=2)\n"
            "services = localnet.services(profile, topology, 'process', 'tiny')\n"
            f"localnet.start_service({NETWORK!r}, next(s for s in services if s.name == {name!r}))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], env=self.env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"restarting {name} failed:\n{done.stderr}")
        self.log.append(f"{name} restarted")


# ------------------------------------------------------------------------------------ jobs
def run_job(env: dict[str, str], key: Path, index: int) -> dict[str, Any]:
    done = cli(
        env, "run", MODULE, "-i", f"Message=fault job {index}", "--network", NETWORK,
        "--key-file", str(key), "--verify", "always", "--yes", "--json", "--expires-in", "600",
        timeout=900,
    )  # fmt: skip
    try:
        record: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        record = {"state": "failed", "error": done.stderr.strip().splitlines()[-1:]}
    record["exit_code"] = done.returncode
    return record


def records_of(data: Path) -> list[dict[str, Any]]:
    """Every job record `lilypad run` left (also those whose process printed nothing)."""
    return [json.loads(p.read_text()) for p in (data / "jobs").glob("*.json")]


# ----------------------------------------------------------------------------------- chain
def settle_and_read(env: dict[str, str], data: Path, wait_s: float) -> dict[str, Any]:
    """Wait until every deal on chain has ended, then read what each party got."""
    code = f"""
import json, sys, time
from lilypad.chain.client import Chain
from lilypad.chain.events import EventFollower
from lilypad.chain.market import JobMarketClient
from lilypad.chain.offers import Deal
from lilypad.network import load_network
profile = load_network({NETWORK!r})
chain = Chain(profile.rpc_url)
market = JobMarketClient(chain, profile.market)
follower = EventFollower(chain, [market.contract], from_block=profile.deployed_block)
deals, ends = {{}}, {{}}
deadline = time.monotonic() + {wait_s}
while True:
    for e in follower.poll():
        if e.name == "DealCreated":
            d = Deal.from_event(e.args["deal"]); deals[d.deal_id] = d
        elif e.name in ("ResultAccepted", "PaymentClaimed", "MediationResolved", "DealTimedOut"):
            deal_id = e.args["dealId"]
            deal_id = deal_id if isinstance(deal_id, str) else "0x" + bytes(deal_id).hex()
            ends[deal_id] = [e.name, e.args.get("providerWins"), e.args.get("kind")]
    if set(deals) <= set(ends) or time.monotonic() > deadline:
        break
    time.sleep(1)
accounts = dict(profile.accounts)
token = market.token
everyone = list(accounts.values()) + [profile.job_creator]
print(json.dumps({{
    "deals": {{k: d.model_dump(mode="json") for k, d in deals.items()}},
    "ends": ends,
    "accounts": accounts,
    "held": token.balance_of(market.address),
    "balances": sum(market.balance_of(a) for a in everyone),
    "supply": token.total_supply(),
}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"reading the chain failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def supply(env: dict[str, str]) -> int:
    code = (
        "from lilypad.network import connect\n"
        f"c = connect({NETWORK!r})\nprint(c.token.total_supply())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


# ------------------------------------------------------------------------------------ main
def measure(args: argparse.Namespace, env: dict[str, str], root: Path) -> dict[str, Any]:
    data = root / "data"
    keys = data / "network" / NETWORK / "keys"
    cheats_log = root / "cheats.txt"
    cheats_log.touch()
    cheat_env = {**env, "WEB3_PRIVATE_KEY": (keys / "provider-3.key").read_text().strip()}
    cheat_out = (root / "cheater.log").open("ab")
    cheat = subprocess.Popen(
        [sys.executable, __file__, "--cheater", "--cheat-rate", str(args.cheat_rate),
         "--cheats-log", str(cheats_log)],
        env=cheat_env, stdout=cheat_out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    starting_supply = supply(env)
    faults = Faults(env, data)
    started = threading.Semaphore(0)
    began = time.monotonic()

    def job(index: int) -> dict[str, Any]:
        started.release()
        return run_job(env, keys / "job_creator.key", index)

    def inject() -> None:
        for _ in range(max(1, args.jobs // 4)):
            started.acquire()
        faults.kill_and_restart("ipfs", 20)
        for _ in range(max(1, args.jobs // 4)):
            started.acquire()
        faults.kill_and_restart("solver", 10)

    injector = threading.Thread(target=inject, daemon=True)
    injector.start()
    try:
        time.sleep(3)  # the cheater lists its offers
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(job, range(args.jobs)))
        injector.join(timeout=120)
        chain = settle_and_read(env, data, wait_s=300)
    finally:
        os.killpg(cheat.pid, signal.SIGTERM)
        try:
            cheat.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(cheat.pid, signal.SIGKILL)
        cheat_out.close()
    return summarize(args, results, chain, cheats_log, starting_supply, faults, began)


def summarize(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    chain: dict[str, Any],
    cheats_log: Path,
    starting_supply: int,
    faults: Faults,
    began: float,
) -> dict[str, Any]:
    cheater = chain["accounts"]["provider-3"]
    cheated = set(cheats_log.read_text().split())
    deals, ends = chain["deals"], chain["ends"]
    caught = [d for d in cheated if ends.get(d, [None, None])[:2] == ["MediationResolved", False]]
    honest_lost = 0
    unsettled = [d for d in deals if d not in ends]
    for deal_id, deal in deals.items():
        end = ends.get(deal_id)
        honest = deal["provider"] != cheater
        lost_collateral = end is not None and (
            end[:2] == ["MediationResolved", False] or (end[0] == "DealTimedOut" and end[2] == 0)
        )
        if honest and lost_collateral:
            honest_lost += int(deal["collateral"])  # an honest provider slashed
        paid = end is not None and (
            end[0] in ("ResultAccepted", "PaymentClaimed")
            or end[:2] == ["MediationResolved", True]
            or (end[0] == "DealTimedOut" and end[2] == 1)  # judgement timed out: paid
        )
        if deal_id in cheated and paid:
            honest_lost += int(deal["price"])  # a job creator paid for a wrong result
    states: dict[str, int] = {}
    for record in results:
        states[record.get("state", "failed")] = states.get(record.get("state", "failed"), 0) + 1
    completed = sum(n for s, n in states.items() if s in COMPLETED)
    refunded = sum(n for s, n in states.items() if s in REFUNDED)
    conserved = chain["supply"] == starting_supply and chain["held"] == chain["balances"]
    return {
        "jobs": len(results),
        "completed": completed,
        "refunded": refunded,
        "other": len(results) - completed - refunded,
        "states": states,
        "deals": len(deals),
        "unsettled": len(unsettled),
        "cheats": len(cheated),
        "caught": len(caught),
        "honest_lost": honest_lost,
        "conserved": conserved,
        "faults": faults.log,
        "wall_s": round(time.monotonic() - began, 1),
        "errors": [r.get("error") for r in results if r.get("state") not in COMPLETED + REFUNDED],
    }


def report(result: dict[str, Any]) -> None:
    print(f"jobs: {result['jobs']} (completed {result['completed']}, refunded "
          f"{result['refunded']}, other {result['other']}: {result['states']})")  # fmt: skip
    print(f"deals on chain: {result['deals']} ({result['unsettled']} not settled)")
    for line in result["faults"]:
        print(f"fault: {line}")
    for error in result["errors"]:
        print(f"job error: {error}")
    print(f"wall time: {result['wall_s']} s")
    print(f"token supply conserved: {'yes' if result['conserved'] else 'no'}")
    print(f"honest tokens lost: {result['honest_lost']}")
    print(f"cheats caught: {result['caught']} of {result['cheats']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--cheat-rate", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="a new folder for all state, kept (logs)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--cheater", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cheats-log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cheater:
        cheater(NETWORK, args.cheat_rate, args.cheats_log)
        return
    if args.jobs < 4 or not 0 <= args.cheat_rate <= 1:
        parser.error("--jobs must be at least 4 and --cheat-rate between 0 and 1")
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        root = args.keep or Path(tmp)
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
    ok = (
        result["honest_lost"] == 0
        and result["caught"] == result["cheats"]
        and result["conserved"]
        and result["unsettled"] == 0
        and result["other"] == 0
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
