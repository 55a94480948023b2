"""Slot groups: a provider's capacity shared by its offers for several modules, against a real
chain, solver and IPFS node."""

from __future__ import annotations

import threading

import httpx

from lilypad.chain.market import DealState
from resource_provider.executors import ExecutionResult, Job, ProcessExecutor
from resource_provider.state import Phase
from solver.store import OfferState, ResourceOfferRow
from tests.provider.conftest import World, records, wait_for, wait_phase

MODULES = ("cowsay:v0.0.1", "cowsay:v0.0.2", "cowsay:v0.0.3")


class GatedEngine(ProcessExecutor):
    """Runs each job once the test lets one through, and counts how many run at once."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def run(self, job: Job) -> ExecutionResult:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            assert self.gate.acquire(timeout=60), "the test never let the job through"
            return super().run(job)
        finally:
            with self.lock:
                self.running -= 1


def test_two_slots_for_three_modules_take_two_jobs_then_a_third_once_one_is_done(
    world: World,
) -> None:
    account = world.net.providers[1]
    engine = GatedEngine()
    daemon = world.provider(account, executor=engine, modules=MODULES, max_concurrent=2)
    # two slots, each offered for all three modules
    wait_for(lambda: len(daemon._offers) == 6, 15)
    assert len({offer.nonce for offer in daemon._offers.values()}) == 2
    # one job per module: the slots can take two of them at once, not three
    jobs = [world.post(world.job(f"moo {i}", module=module)) for i, module in enumerate(MODULES)]
    wait_for(lambda: engine.running == 2, 30)
    with httpx.Client(base_url=world.server.url) as client:
        states = [client.get(f"/api/v1/job_offers/{job}").json()["state"] for job in jobs]
    assert sorted(states) == ["dealt", "dealt", "pending"]
    (waiting,) = [job for job, state in zip(jobs, states, strict=True) if state == "pending"]
    store = world.server.solver.store
    # every offer left of the two slots is superseded: none can be matched while they run
    assert store.offers(ResourceOfferRow, OfferState.PENDING) == []
    assert len(store.offers(ResourceOfferRow, OfferState.SUPERSEDED)) == 4

    engine.gate.release()  # one job finishes: its slot is free, and is offered again
    wait_phase(world.state_dir(account), Phase.SUBMITTED)
    deal = world.deal_of(waiting)
    assert world.market.deal_status(deal["deal_id"]).state is DealState.CREATED
    wait_for(lambda: engine.running == 2, 30)
    engine.gate.release(2)
    wait_phase(world.state_dir(account), Phase.SUBMITTED, count=3)
    assert engine.most == 2
    assert len(records(world.state_dir(account))) == 3
