"""The resource-provider daemon against a real chain, solver and IPFS node."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from lilypad import modules
from lilypad.chain.events import EventFollower
from lilypad.chain.market import DealState
from lilypad.chain.offers import PICKUP_S, module_id
from lilypad.errors import ExecutorError
from lilypad.storage import CID, compute_cid
from lilypad.storage.backends import KuboStorage
from lilypad.storage.node import EmbeddedNode
from resource_provider import daemon as daemon_module
from resource_provider.executors import (
    DockerExecutor,
    ExecutionResult,
    Job,
    ProcessExecutor,
    engine_problem,
)
from resource_provider.mediator import MediationRecord
from resource_provider.metrics import MetricsServer
from resource_provider.state import Outcome, Phase
from solver.store import OfferState, ResourceOfferRow
from tests.provider.conftest import (
    CHALLENGE_WINDOW,
    COLLATERAL,
    COWSAY,
    ETH,
    HARDWARE,
    PRICE,
    Net,
    Server,
    SolverFactory,
    World,
    records,
    wait_for,
    wait_outcome,
    wait_phase,
)


def submitted_cids(world: World, deal_id: str) -> list[bytes]:
    """Every CID ``ResultSubmitted`` put on chain for ``deal_id``."""
    follower = EventFollower(
        world.net.chain,
        [world.market.contract],
        from_block=world.net.deployment.block,
        events=["ResultSubmitted"],
    )
    return [
        bytes.fromhex(e.args["resultCid"][2:])
        for e in follower.poll()
        if e.args["dealId"] == deal_id
    ]


def test_happy_path_runs_submits_and_claims(world: World) -> None:
    net = world.net
    account = net.providers[0]
    daemon = world.provider(account)
    server = MetricsServer(daemon.metrics, port=0)
    start_balance = world.market.balance_of(account.address)

    job_id = world.post(world.job("hello provider"))
    deal_id = world.deal_of(job_id)["deal_id"]
    (record,) = wait_phase(world.state_dir(account), Phase.SUBMITTED)
    assert record.deal_id == deal_id
    assert world.market.balance_of(account.address) == start_balance - COLLATERAL

    # The CID on chain is the CID of the whole result folder the executor left.
    folder = world.state_dir(account) / "results" / deal_id
    assert sorted(p.name for p in folder.iterdir()) == ["exitCode", "outputs", "stderr", "stdout"]
    cid = compute_cid(folder)
    assert submitted_cids(world, deal_id) == [bytes(cid)]
    assert str(cid) == record.result_cid
    # ... and anyone can fetch it from IPFS, verified.
    storage = KuboStorage(world.ipfs.api_url)
    fetched = storage.get(CID.parse(record.result_cid), world.tmp / "fetched")
    storage.close()
    assert "hello provider" in (fetched / "outputs" / "cowsay.txt").read_text()
    assert (fetched / "exitCode").read_text() == "0"

    # No claim before the window ends; after it, the daemon claims by itself.
    assert world.market.deal_status(deal_id).state is DealState.SUBMITTED
    world.advance(CHALLENGE_WINDOW + 1)
    settled = wait_outcome(world.state_dir(account), Outcome.PAID)
    assert settled.deal_id == deal_id
    assert world.market.deal_status(deal_id).state is DealState.NONE
    assert world.market.balance_of(account.address) == start_balance + PRICE

    text = httpx.get(server.url).text
    server.stop()
    assert f'lilypad_jobs_run_total{{module="{COWSAY}"}} 1.0' in text
    assert f"lilypad_earnings_wei_total {float(PRICE)}" in text
    assert "lilypad_results_submitted_total 1.0" in text


def test_offers_commit_on_chain_to_the_time_the_provider_needs(world: World) -> None:
    """Each offer carries the module's timeout plus the submit margin and the pick-up time as
    its minTimeout: a job offer giving less is never matched with it (and the chain refuses such
    a deal), so no job creator can make a deal this provider cannot deliver."""
    account = world.net.providers[0]
    daemon = world.provider(account)
    needed = modules.resolve(COWSAY).spec.timeout_s + 30 + PICKUP_S
    assert daemon.min_timeouts == {COWSAY: needed}

    def listed() -> list[dict[str, Any]] | None:
        rows = world.server.solver.store.offers(ResourceOfferRow, OfferState.PENDING)
        return [row.body for row in rows if row.signer == account.address] or None

    offers = wait_for(listed)
    assert {o["offer"]["min_timeout"] for o in offers} == {needed}


def test_never_starts_a_job_it_cannot_finish_before_the_deadline(world: World) -> None:
    """A provider that sees a deal late (it was down) does not start a job that cannot end
    before the deadline: cowsay may take 60 s, plus 30 s to submit."""
    account = world.net.providers[0]
    job_id = world.post(world.job("late"))
    # no provider is up: a stand-in offer from this account makes the deal
    world.server.solver.submit_resource_offer(
        world.net.resource(account, module=module_id(COWSAY), machine=HARDWARE.machine().encode())
    )
    deal_id = world.deal_of(job_id)["deal_id"]
    deadline = world.market.deal_status(deal_id).deadline
    world.rpc("evm_setNextBlockTimestamp", deadline - 20)
    world.rpc("evm_mine")
    world.provider(account)  # comes up with 20 s left
    (record,) = wait_phase(world.state_dir(account), Phase.REFUSED)
    assert record.deal_id == deal_id
    assert "deadline" in (record.error or "")
    assert record.runs == 0
    assert [r.phase for r in records(world.state_dir(account))] == [Phase.REFUSED]


class CheatingExecutor(ProcessExecutor):
    """Runs the job, then changes its output: the bytes no longer match the spec's."""

    def run(self, job: Job) -> ExecutionResult:
        result = super().run(job)
        with open(job.output_dir / "outputs" / "cowsay.txt", "a") as handle:
            handle.write("moo (not really)\n")
        return result


def test_cheating_provider_is_challenged_and_slashed(world: World) -> None:
    net = world.net
    cheat, creator = net.providers[1], net.creators[1]
    world.provider(cheat, executor=CheatingExecutor())
    mediator = world.mediator()
    balances = {a.address: world.market.balance_of(a.address) for a in (cheat, creator)}
    fee = world.market.mediator(net.mediator.address)[1]
    mediator_before = world.market.balance_of(net.mediator.address)

    job = world.job("trust me", creator)
    deal = world.deal_of(world.post(job))
    (record,) = wait_phase(world.state_dir(cheat), Phase.SUBMITTED)
    # The job creator checks the result (its own run gives another CID) and challenges.
    honest = world.tmp / "honest"
    ProcessExecutor().run(Job.of(modules.resolve(COWSAY), job.spec, honest))
    assert str(compute_cid(honest)) != record.result_cid
    world.market.challenge_result(creator, record.deal)

    wait_outcome(world.state_dir(cheat), Outcome.SLASHED)
    ruling = wait_for(lambda: next(iter(mediator.store.all("deals", MediationRecord)), None))
    assert ruling.provider_wins is False
    assert ruling.our_cid == str(compute_cid(honest))  # the correct result, pinned by the mediator
    # the deal's end is kept on chain, with the tag of the mediator's (correct) result
    status = world.market.deal_status(deal["deal_id"])
    assert status.state is DealState.REFUNDED
    assert status.result_tag == world.market.result_tag(bytes(compute_cid(honest)))
    assert world.market.balance_of(cheat.address) == balances[cheat.address] - COLLATERAL
    price = record.deal.price
    assert world.market.balance_of(creator.address) == balances[creator.address] + COLLATERAL - fee
    assert world.market.balance_of(net.mediator.address) == mediator_before + fee
    assert price == PRICE


def test_two_providers_ten_jobs_each_done_once_and_funds_conserved(world: World) -> None:
    net = world.net
    parties = [*net.providers[:2], *net.creators]
    before = {a.address: world.market.balance_of(a.address) for a in parties}
    for account in net.providers[:2]:
        world.provider(account, max_concurrent=2)

    job_ids = [
        world.post(world.job(f"job {i}", net.creators[i % len(net.creators)])) for i in range(10)
    ]
    deal_ids = {world.deal_of(j)["deal_id"] for j in job_ids}
    assert len(deal_ids) == 10

    def submitted() -> int:
        return sum(
            1
            for account in net.providers[:2]
            for r in records(world.state_dir(account))
            if r.phase is Phase.SUBMITTED
        )

    wait_for(lambda: submitted() == 10, 60)
    world.advance(CHALLENGE_WINDOW + 1)

    def paid() -> list[str]:
        return [
            r.deal_id
            for account in net.providers[:2]
            for r in records(world.state_dir(account))
            if r.outcome is Outcome.PAID
        ]

    wait_for(lambda: len(paid()) == 10, 60)
    assert set(paid()) == deal_ids
    for deal_id in deal_ids:
        assert len(submitted_cids(world, deal_id)) == 1  # each job done once
    after = {a.address: world.market.balance_of(a.address) for a in parties}
    assert sum(after.values()) == sum(before.values())  # nothing created or lost
    earned = sum(after[a.address] - before[a.address] for a in net.providers[:2])
    assert earned == 10 * PRICE
    assert all(after[a.address] > before[a.address] for a in net.providers[:2])  # both worked


@pytest.mark.docker
def test_docker_executor_gives_the_same_cid_as_the_process_executor(world: World) -> None:
    problem = engine_problem()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"a Docker Engine is required in CI: {problem}")
        pytest.skip(problem)
    account = world.net.providers[2]
    world.provider(account, executor=DockerExecutor())
    job = world.job("same bytes in a container")
    deal_id = world.deal_of(world.post(job))["deal_id"]
    (record,) = wait_phase(world.state_dir(account), Phase.SUBMITTED)
    local = world.tmp / "local"
    ProcessExecutor().run(Job.of(modules.resolve(COWSAY), job.spec, local))
    assert record.result_cid == str(compute_cid(local))
    assert submitted_cids(world, deal_id) == [bytes(compute_cid(local))]


def test_deposits_the_collateral_its_slots_need(world: World) -> None:
    account = world.net.providers[1]
    assert world.market.balance_of(account.address) < 150 * ETH
    daemon = world.provider(account, collateral=75 * ETH, max_concurrent=2, auto_deposit=True)
    assert world.market.balance_of(account.address) == 150 * ETH
    wait_for(lambda: len(daemon._offers) == 2, 10)  # the solver accepts both slots' offers


def test_a_freed_slot_is_offered_again_before_its_deal_settles(world: World) -> None:
    """The deal's collateral stays locked through the challenge window; the provider tops up
    its deposit and offers the free slot again at once, instead of waiting for the settlement."""
    account = world.net.providers[1]
    daemon = world.provider(account, collateral=75 * ETH, max_concurrent=1, auto_deposit=True)
    wait_for(lambda: len(daemon._offers) == 1, 10)
    deal_id = world.deal_of(world.post(world.job("keep the slot busy")))["deal_id"]
    wait_phase(world.state_dir(account), Phase.SUBMITTED)
    wait_for(lambda: len(daemon._offers) == 1, 10)  # a fresh offer, well before 15 s
    assert world.market.deal_status(deal_id).state is DealState.SUBMITTED  # not settled yet
    assert world.market.balance_of(account.address) >= 75 * ETH


def test_offers_are_replaced_before_they_expire(world: World) -> None:
    daemon = world.provider(world.net.providers[2], offer_ttl_s=60)
    (first,) = wait_for(lambda: list(daemon._offers), 10)
    world.advance(45)  # 15 s left: less than a third of its life
    (second,) = wait_for(lambda: [o for o in daemon._offers if o != first] or None, 10)
    with httpx.Client(base_url=world.server.url) as client:
        old = client.get(f"/api/v1/resource_offers/{first}").json()
        new = client.get(f"/api/v1/resource_offers/{second}").json()
    assert old["state"] == "cancelled"
    assert new["state"] == "pending"
    assert int(new["offer"]["offer"]["nonce"]) == int(old["offer"]["offer"]["nonce"]) + 1


def test_an_offer_the_solver_puts_off_goes_again_when_it_says(
    net: Net,
    make_solver: SolverFactory,
    ipfs: EmbeddedNode,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 429 with ``Retry-After`` holds back only the offer it refused, for as long as the
    solver asks: the same offer (same nonce) is listed once the wait is over, not after the
    long back-off of other failures (which was taken after any refusal)."""
    monkeypatch.setattr(daemon_module, "OFFER_RETRY_S", 3600.0)
    # one offer at once, then one a second: the second slot's offer is refused, Retry-After: 1
    with Server(make_solver(rate=1.0, burst=1)) as server:
        world = World(net, server, ipfs, tmp_path)
        world.sync_clock()
        daemon = world.provider(net.providers[1], max_concurrent=2)
        try:
            offers = wait_for(lambda: len(daemon._offers) == 2 and dict(daemon._offers), 30)
            rows = server.solver.store.offers(ResourceOfferRow, OfferState.PENDING)
        finally:
            daemon.stop()
    nonces = sorted(offer.nonce for offer in offers.values())
    assert nonces[1] == nonces[0] + 1  # the refused offer itself went again
    assert {row.id for row in rows} == set(offers)


class RefusingEngine(ProcessExecutor):
    """An engine that refuses every container, as Docker does when a provider in a container
    mounts its data dir at another path than the host's."""

    def run(self, job: Job) -> ExecutionResult:
        raise ExecutorError(
            'invalid mount config for type "bind": bind source path does not exist: /data'
        )


def test_a_job_that_cannot_start_is_given_up_after_a_few_tries(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_module, "RETRY_S", 0.2)
    account = world.net.providers[2]
    world.provider(account, executor=RefusingEngine())
    world.deal_of(world.post(world.job("never runs")))
    (record,) = wait_phase(world.state_dir(account), Phase.REFUSED, timeout=60)
    assert record.runs == daemon_module.MAX_RUNS
    assert "gave up after 5 failed starts" in (record.error or "")
    assert "bind source path does not exist" in (record.error or "")
