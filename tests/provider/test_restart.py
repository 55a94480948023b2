"""``kill -9`` of the real `lilypad resource-provider` process, mid-job, and restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lilypad.storage import compute_cid
from resource_provider.state import JsonStore, Outcome, Phase
from tests.provider.conftest import (
    CHALLENGE_WINDOW,
    World,
    records,
    wait_for,
    wait_outcome,
    wait_phase,
)
from tests.provider.test_daemon import submitted_cids

SLOW = str(Path(__file__).parent / "fixtures" / "slow")
SLEEPY = str(Path(__file__).parent / "fixtures" / "sleepy")


class Daemon:
    """`lilypad resource-provider` as a child process, logging to a file."""

    def __init__(self, world: World, data_dir: Path, module: str = SLOW, *extra: str) -> None:
        self.world, self.data_dir, self.module, self.extra = world, data_dir, module, extra
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / "provider.log"

    def start(self, *extra: str) -> None:
        env = {**os.environ, "WEB3_PRIVATE_KEY": self.world.net.providers[0].key.hex()}
        argv = [
            sys.executable,
            "-m",
            "lilypad",
            "resource-provider",
            "--network",
            "test",
            "--executor",
            "process",
            "--modules",
            self.module,
            "--price",
            "1",  # the collateral is the market's least at this price (--collateral auto)
            "--data-dir",
            str(self.data_dir),
            "--metrics",
            "127.0.0.1:0",
            *self.extra,
            *extra,
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=log)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def daemon(world: World) -> Iterator[Daemon]:
    world.profile()
    runner = Daemon(world, world.tmp / "provider-state")
    try:
        yield runner
    finally:
        runner.terminate()


def test_killed_mid_job_and_restarted_completes_the_job_once(world: World, daemon: Daemon) -> None:
    daemon.start()
    job = world.job("survives kill -9", module=SLOW)
    deal_id = world.deal_of(world.post(job))["deal_id"]
    result = daemon.data_dir / "results" / deal_id

    wait_for(lambda: (result / "outputs" / "started").exists(), 60)
    daemon.kill()  # the job is running: nothing is on chain yet
    (record,) = records(daemon.data_dir)
    assert record.phase is Phase.RUNNING
    assert submitted_cids(world, deal_id) == []

    daemon.start()
    (record,) = wait_phase(daemon.data_dir, Phase.SUBMITTED, timeout=60)
    assert record.runs == 2  # ran again from the start
    assert submitted_cids(world, deal_id) == [bytes(compute_cid(result))]
    assert (result / "outputs" / "message.txt").read_text() == "survives kill -9\n"

    # Killed right after its submission reached the chain but before it was written down:
    # the restarted daemon finds the result on chain and does not submit again.
    daemon.kill()
    JsonStore(daemon.data_dir).put("deals", deal_id, record.model_copy(update={"phase": Phase.RAN}))
    daemon.start("--log-json")
    wait_phase(daemon.data_dir, Phase.SUBMITTED, timeout=60)
    world.advance(CHALLENGE_WINDOW + 1)
    assert wait_outcome(daemon.data_dir, Outcome.PAID, timeout=60).deal_id == deal_id
    assert len(submitted_cids(world, deal_id)) == 1
    assert records(daemon.data_dir)[0].runs == 2

    log = daemon.log.read_text()
    assert world.net.providers[0].key.hex().removeprefix("0x") not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any("not submitting again" in line["msg"] for line in lines)
    assert {"ts", "level", "logger", "msg"} <= set(lines[0])


def test_dead_provider_is_timed_out_and_run_retries_with_another(
    world: World, daemon: Daemon
) -> None:
    """Provider A takes the deal and dies (kill -9); `lilypad run --retries 1` times the deal out
    (refund, A's collateral to the job creator) and gets the job done by provider B."""
    net = world.net
    dead, alive, creator = net.providers[0], net.providers[1], net.creators[0]
    before = {a.address: world.market.balance_of(a.address) for a in (dead, alive, creator)}
    doomed = Daemon(world, world.tmp / "dead", SLEEPY, "--submit-margin", "2")
    doomed.start()
    env = {**os.environ, "WEB3_PRIVATE_KEY": creator.key.hex()}
    argv = [sys.executable, "-m", "lilypad", "run", SLEEPY, "-i", "Seconds=2", "--network", "test"]
    # the least timeout sleepy's 5 s allow (5 + 60); --verify never: no mediator runs here
    argv += ["--yes", "--json", "--timeout", "65", "--retries", "1", "--max-price", "5"]
    argv += ["--verify", "never"]
    run = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # A real chain makes blocks all the time; anvil only on transactions. Without new blocks the
    # chain's clock never passes the deadline and timeoutResult cannot be sent. The chain's
    # clock runs 4x here, so that the dead provider's deal (65 s) times out in about 16 s.
    stop = threading.Event()
    miner = threading.Thread(target=lambda: _mine_every(world, 1.0, stop, 4), daemon=True)
    miner.start()
    try:
        wait_for(lambda: any(doomed.data_dir.glob("results/*/outputs/started")), 60)
        doomed.kill()
        world.provider(alive, modules=(f"{SLEEPY}:local",), submit_margin_s=2)
        out, err = run.communicate(timeout=90)
    finally:
        stop.set()
        miner.join()
        doomed.terminate()
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, err.decode()[-2000:]
    record = json.loads(out)
    done = wait_outcome(world.state_dir(alive), Outcome.ACCEPTED)  # `lilypad run` accepted it
    assert record["deal_id"] == done.deal_id
    assert record["result_cid"] == done.result_cid
    (lost,) = records(doomed.data_dir)
    assert lost.phase is Phase.RUNNING  # it died mid-job and never came back
    collateral = lost.deal.collateral
    after = {a.address: world.market.balance_of(a.address) for a in (dead, alive, creator)}
    assert after[dead.address] == before[dead.address] - collateral
    assert after[alive.address] == before[alive.address] + done.deal.price
    assert after[creator.address] == before[creator.address] + collateral - done.deal.price


def _mine_every(world: World, seconds: float, stop: threading.Event, pace: int = 1) -> None:
    while not stop.wait(seconds):
        if pace > 1:
            world.rpc("evm_increaseTime", int(seconds * (pace - 1)))
        world.rpc("evm_mine")


def test_killed_mid_job_and_restarted_while_the_solver_is_down_still_delivers(
    world: World, daemon: Daemon
) -> None:
    """The deal's spec came from the solver once; the provider keeps it, so a restart needs only
    the chain and IPFS (a solver that stays down must not cost it the deal's collateral)."""
    daemon.start()
    job = world.job("no solver needed", module=SLOW)
    deal_id = world.deal_of(world.post(job))["deal_id"]
    result = daemon.data_dir / "results" / deal_id
    wait_for(lambda: (result / "outputs" / "started").exists(), 60)
    daemon.kill()
    world.server.__exit__()  # the solver goes down, and stays down
    daemon.start()
    (record,) = wait_phase(daemon.data_dir, Phase.SUBMITTED, timeout=60)
    assert record.runs == 2
    assert submitted_cids(world, deal_id) == [bytes(compute_cid(result))]
