"""Slot groups at a real solver on a real chain (a provider's slot: one nonce, an offer per
module), and a busy solver (429) that the job creator's client waits for as it asks."""

from __future__ import annotations

import time

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from lilypad import solver_api as api
from lilypad.creator import Step, _solver
from lilypad.creator._solver import SolverCalls
from lilypad.jobs import cancel_message
from lilypad.modules import render
from solver.store import OfferState, ResourceOfferRow
from tests.solver.conftest import ETH, MODULE, Net, Server, SolverFactory, wait_for

OTHER = "sdxl-turbo:v1.0-lilypad1"
THIRD = "cowsay:v0.0.4"


def slot_moves(server: Server, provider: str) -> list[tuple[str, tuple[str, ...]]]:
    """The provider's resource offer events: each kind with the offers it moved."""
    events = (e.event for e in server.solver.store.events_after(0, provider))
    return [(e.kind, e.ids()) for e in events if isinstance(e, api.OfferEvent)]


def test_a_slot_makes_one_deal_and_its_other_offers_wait_for_it(
    net: Net, make_solver: SolverFactory
) -> None:
    with Server(make_solver()) as server, api.SolverClient(server.url) as client:
        store = server.solver.store
        provider = net.providers[0].address
        before = client.account(provider).committed_by_resource_offers
        offers = net.slot(MODULE, OTHER, THIRD)
        accepted = client.post_slot(offers)
        ids = [o.id for o in accepted.offers]
        assert ids == [o.offer.struct_hash() for o in offers]
        # one deal at most: the slot's collateral counts once against the deposit
        after = client.account(provider).committed_by_resource_offers
        assert after - before == net.market.required_collateral(5 * ETH)  # not twice that
        # two jobs, one per module: the slot takes one, the other waits (no second deal)
        first = client.post_job_offer(net.job()).id
        other = render(OTHER, ["Prompt=a fox", f"Seed={net.nonce()}"])
        second = client.post_job_offer(net.job(spec=other)).id
        wait_for(lambda: client.job_offer(first).state is OfferState.DEALT, 30)
        assert client.resource_offer(ids[1]).state is OfferState.SUPERSEDED
        # one event per change of the slot, naming every offer it moved
        moves = slot_moves(server, provider)
        assert moves[:2] == [
            (api.EventKind.RESOURCE_OFFER_ADDED, tuple(ids)),
            (api.EventKind.RESOURCE_OFFER_SUPERSEDED, tuple(ids[1:])),
        ]
        time.sleep(1.0)  # matching passes come and go: the second job stays pending
        assert client.job_offer(second).state is OfferState.PENDING
        assert store.offers(ResourceOfferRow, OfferState.PENDING) == []
        # a fresh slot takes it
        client.post_slot(net.slot(MODULE, OTHER))
        wait_for(lambda: client.job_offer(second).state is OfferState.DEALT, 30)


def test_a_slot_whose_deal_the_chain_refuses_for_the_job_is_offered_again_whole(
    net: Net, make_solver: SolverFactory
) -> None:
    with Server(make_solver()) as server, api.SolverClient(server.url) as client:
        creator, provider = net.creators[0], net.providers[0].address
        job = net.job(creator)
        first = client.post_job_offer(job).id
        net.market.invalidate_nonce(creator, job.offer.nonce)  # createDeals will refuse it
        ids = [o.id for o in client.post_slot(net.slot(MODULE, OTHER, THIRD)).offers]
        wait_for(lambda: client.job_offer(first).state is OfferState.REJECTED, 30)
        # not the provider's fault: the whole slot is on offer again, in one event
        assert [client.resource_offer(i).state for i in ids] == [OfferState.PENDING] * 3
        assert slot_moves(server, provider)[-1] == (
            api.EventKind.RESOURCE_OFFER_PENDING,
            tuple(ids),
        )
        other = render(OTHER, ["Prompt=a fox", f"Seed={net.nonce()}"])
        second = client.post_job_offer(net.job(spec=other)).id
        wait_for(lambda: client.job_offer(second).state is OfferState.DEALT, 30)
        assert client.resource_offer(ids[1]).state is OfferState.DEALT


def test_a_slot_is_refused_whole_and_cancelled_whole(net: Net, make_solver: SolverFactory) -> None:
    with Server(make_solver()) as server, api.SolverClient(server.url) as client:
        twice = net.slot(MODULE, MODULE)
        with pytest.raises(api.SolverRefused, match="two offers for module") as refused:
            client.post_slot(twice)
        assert refused.value.status == 400
        mixed = net.slot(MODULE) + net.slot(OTHER)
        with pytest.raises(api.SolverRefused, match="share one provider and nonce"):
            client.post_slot(mixed)
        assert server.solver.store.offers(ResourceOfferRow, OfferState.PENDING) == []

        ids = [o.id for o in client.post_slot(net.slot(MODULE, OTHER)).offers]
        message = encode_defunct(text=cancel_message(ids[0]))
        signature = Account.sign_message(message, net.providers[0].key).signature.hex()
        client.cancel_offer("resource", ids[0], "0x" + signature.removeprefix("0x"))
        assert [client.resource_offer(i).state for i in ids] == [OfferState.CANCELLED] * 2
        cancelled = api.EventKind.RESOURCE_OFFER_CANCELLED
        assert slot_moves(server, net.providers[0].address)[-1] == (cancelled, tuple(ids))


def test_a_busy_solver_is_asked_again_after_its_retry_after(
    net: Net, make_solver: SolverFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[Step] = []
    # one offer at once, then one a second: the second post is a 429 with Retry-After: 1
    with Server(make_solver(rate=1.0, burst=1)) as server, SolverCalls(server.url) as calls:
        calls.post_offer(net.job(), clock=time.time, on_step=steps.append)
        offer_id = calls.post_offer(net.job(), clock=time.time, on_step=steps.append)
        assert calls.client.job_offer(offer_id).state is OfferState.PENDING
    assert [s.name for s in steps] == ["solver_retry"]
    assert steps[0].detail["pause"] == 1.0  # as long as the solver asked, no longer
    assert "too fast" in steps[0].detail["error"]

    # a solver that stays busy longer than the client waits: a clear error, nothing spent
    monkeypatch.setattr(_solver, "MAX_BUSY_S", 0.5)
    with Server(make_solver(rate=0.001, burst=1)) as server, SolverCalls(server.url) as calls:
        calls.post_offer(net.job(), clock=time.time, on_step=steps.append)
        with pytest.raises(api.SolverBusy, match="never posted and no funds moved") as raised:
            calls.post_offer(net.job(), clock=time.time, on_step=steps.append)
    assert raised.value.status == 429


def test_retry_after_reads_seconds_with_a_fraction() -> None:
    assert api.retry_after("0.1") == pytest.approx(0.1)
    assert api.retry_after("2") == 2.0
    assert api.retry_after("soon") is None


def test_the_slot_route_refuses_a_malformed_body(net: Net, make_solver: SolverFactory) -> None:
    with Server(make_solver()) as server, httpx.Client(base_url=server.url) as client:
        empty = client.post("/api/v1/resource_offers/slot", json={"offers": []})
        assert empty.status_code == 422
        assert "offers" in empty.json()["error"]
