"""The solver over HTTP against a real chain: offers in, deals on chain, events out."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from lilypad.chain.market import DealState
from lilypad.errors import ContractReverted
from lilypad.jobs import cancel_message
from tests.solver.conftest import ETH, Net, Server, wait_for

Served = tuple[Server, httpx.Client]


def post(client: httpx.Client, kind: str, signed: object) -> httpx.Response:
    return client.post(f"/api/v1/{kind}_offers", json=signed.model_dump(mode="json"))  # type: ignore[attr-defined]


def deal_of(client: httpx.Client, job_id: str) -> dict | None:
    return client.get(f"/api/v1/job_offers/{job_id}").json()["deal"]


def test_offers_match_into_a_deal_on_chain(net: Net, served: Served) -> None:
    _, client = served
    assert post(client, "resource", net.resource(price=7 * ETH)).status_code == 201
    cheap = post(client, "resource", net.resource(net.providers[1], price=4 * ETH))
    assert cheap.status_code == 201
    job = post(client, "job", net.job())
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]

    deal = wait_for(lambda: (d := deal_of(client, job_id)) and d["state"] == "created" and d)
    assert deal["provider"] == net.providers[1].address  # the cheaper offer wins
    assert deal["price"] == str(4 * ETH)
    status = net.market.deal_status(deal["deal_id"])
    assert status.state is DealState.CREATED
    assert client.get(f"/api/v1/deals/{deal['deal_id']}").json()["state"] == "created"
    assert client.get(f"/api/v1/job_offers/{job_id}").json()["state"] == "dealt"


def test_events_reach_only_the_parties(net: Net, served: Served) -> None:
    _, client = served
    job = post(client, "job", net.job())
    post(client, "resource", net.resource())
    job_id = job.json()["id"]
    wait_for(lambda: (d := deal_of(client, job_id)) and d["state"] == "created")

    def kinds(party: str) -> list[str]:
        seen: list[str] = []
        with client.stream("GET", "/api/v1/events", params={"party": party}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("event: "):
                    seen.append(line.removeprefix("event: "))
                if "deal.created" in seen:
                    break
        return seen

    creator = kinds(net.creators[0].address)
    assert creator[0] == "job_offer.added"
    assert "deal.matched" in creator
    assert "resource_offer.added" not in creator  # the provider's own business
    provider = kinds(net.providers[0].address)
    assert "resource_offer.added" in provider
    assert "job_offer.added" not in provider
    # a stranger sees nothing: the stream stays empty (read with a short timeout)
    stranger = net.creators[2].address
    with httpx.Client(base_url=str(client.base_url), timeout=1.5) as short:
        lines: list[str] = []
        try:
            with short.stream("GET", "/api/v1/events", params={"party": stranger}) as response:
                lines.extend(line for line in response.iter_lines() if line.startswith("event:"))
        except httpx.ReadTimeout:
            pass
        assert lines == []


def test_resume_events_after_last_event_id(net: Net, served: Served) -> None:
    _, client = served
    post(client, "job", net.job())
    post(client, "job", net.job())
    party = net.creators[0].address
    with client.stream(
        "GET", "/api/v1/events", params={"party": party}, headers={"Last-Event-ID": "0"}
    ) as response:
        ids = []
        for line in response.iter_lines():
            if line.startswith("id: "):
                ids.append(int(line[4:]))
            if len(ids) == 2:
                break
    with client.stream(
        "GET", "/api/v1/events", params={"party": party}, headers={"Last-Event-ID": str(ids[0])}
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                assert event["seq"] == ids[1]
                assert event["kind"] == "job_offer.added"
                break


def test_bad_offers_are_refused(net: Net, served: Served) -> None:
    _, client = served
    creator, other = net.creators[0], net.creators[1]

    forged = net.job(creator, signed_by=other)
    response = post(client, "job", forged)
    assert response.status_code == 400
    assert "signed by" in response.json()["error"]

    expired = post(client, "job", net.job(expiry=net.now() - 1))
    assert expired.status_code == 400
    assert "expires" in expired.json()["error"]

    greedy = post(client, "job", net.job(max_price=10_000 * ETH))
    assert greedy.status_code == 402  # Payment Required: top up the deposit and post again
    assert "deposit" in greedy.json()["error"]

    offer = net.job()
    assert post(client, "job", offer).status_code == 201
    duplicate = post(client, "job", offer)
    assert duplicate.status_code == 409

    malformed = client.post("/api/v1/job_offers", json={"offer": {"job_creator": "nope"}})
    assert malformed.status_code == 422
    assert "error" in malformed.json()


def test_replayed_offer_is_refused(net: Net, served: Served) -> None:
    _, client = served
    job = net.job()
    post(client, "resource", net.resource())
    job_id = post(client, "job", job).json()["id"]
    wait_for(lambda: (d := deal_of(client, job_id)) and d["state"] == "created")
    # the same nonce, re-signed with another expiry: the chain has used it
    replay = net.job(nonce=job.offer.nonce, expiry=job.offer.expiry + 10)
    response = post(client, "job", replay)
    assert response.status_code == 400
    assert "already used" in response.json()["error"]


def test_rate_limit_is_per_signer(net: Net, make_solver) -> None:  # type: ignore[no-untyped-def]
    with Server(make_solver(rate=0.001, burst=2)) as server, httpx.Client(base_url=server.url) as c:
        first, second = net.creators[0], net.creators[1]
        codes = [post(c, "job", net.job(first, max_price=ETH)).status_code for _ in range(3)]
        assert codes == [201, 201, 429]
        limited = post(c, "job", net.job(first, max_price=ETH))
        assert int(limited.headers["Retry-After"]) >= 1
        assert post(c, "job", net.job(second, max_price=ETH)).status_code == 201


def test_cancel_needs_the_signer(net: Net, served: Served) -> None:
    _, client = served
    job_id = post(client, "job", net.job()).json()["id"]
    stranger = Account.sign_message(
        encode_defunct(text=cancel_message(job_id)), net.creators[1].key
    )
    refused = client.post(
        f"/api/v1/job_offers/{job_id}/cancel", json={"signature": stranger.signature.hex()}
    )
    assert refused.status_code == 400
    own = Account.sign_message(encode_defunct(text=cancel_message(job_id)), net.creators[0].key)
    done = client.post(
        f"/api/v1/job_offers/{job_id}/cancel", json={"signature": own.signature.hex()}
    )
    assert done.status_code == 200
    post(client, "resource", net.resource())
    threading.Event().wait(0.5)
    assert client.get(f"/api/v1/job_offers/{job_id}").json()["state"] == "cancelled"
    assert deal_of(client, job_id) is None


def test_openapi_document(served: Served) -> None:
    _, client = served
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/v1/job_offers", "/api/v1/resource_offers", "/api/v1/events"} <= set(paths)


def test_a_spec_the_offer_does_not_commit_to_is_refused(net: Net, served: Served) -> None:
    _, client = served
    honest = net.job(inputs=("Prompt=a lighthouse",))
    other = net.job(inputs=("Prompt=something else",))
    swapped = honest.model_copy(update={"spec": other.spec})
    response = post(client, "job", swapped)
    assert response.status_code == 400
    assert "commits to spec" in response.json()["error"]
    stored = client.get(f"/api/v1/job_offers/{post(client, 'job', honest).json()['id']}").json()
    assert stored["offer"]["spec"]["tunables"]["Prompt"] == "a lighthouse"


def test_an_account_shows_what_its_open_offers_commit(net: Net, served: Served) -> None:
    _, client = served
    creator = net.creators[0]
    account = f"/api/v1/accounts/{creator.address.lower()}"
    assert client.get(account).json()["committed_by_job_offers"] == "0"
    job = net.job()
    job_id = post(client, "job", job).json()["id"]
    assert client.get(account).json()["committed_by_job_offers"] == str(job.offer.max_price)
    own = Account.sign_message(encode_defunct(text=cancel_message(job_id)), creator.key)
    client.post(f"/api/v1/job_offers/{job_id}/cancel", json={"signature": own.signature.hex()})
    assert client.get(account).json()["committed_by_job_offers"] == "0"
    bad = client.get("/api/v1/accounts/0xnope")
    assert bad.status_code == 400
    assert "0xnope" in bad.json()["error"]


def test_offers_of_one_signer_posted_at_once_never_commit_more_than_its_deposit(
    net: Net, served: Served
) -> None:
    """Two machines posting for one account at the same moment: each offer's deposit check sees
    the others, so no more is committed than the deposit holds (the chain would refuse a deal)."""
    _, client = served
    creator = net.creators[0]
    balance = net.market.balance_of(creator.address)
    offers = [net.job(creator, max_price=balance // 2 + 1) for _ in range(6)]  # room for one
    start = threading.Barrier(len(offers))

    def send(offer: object) -> int:
        with httpx.Client(base_url=client.base_url, timeout=10) as own:
            start.wait()
            return post(own, "job", offer).status_code

    codes: list[int] = []
    threads = [threading.Thread(target=lambda o=o: codes.append(send(o))) for o in offers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [201] + [402] * (len(offers) - 1)
    committed = client.get(f"/api/v1/accounts/{creator.address}").json()
    assert int(committed["committed_by_job_offers"]) <= balance


def test_a_deal_the_chain_refuses_for_one_signer_rejects_that_signers_offer_only(
    net: Net, make_solver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The market names whom it blames (BadSignature(signer), as an ERC-1271 job creator that no
    longer signs causes): that offer is rejected and the other party's offer goes back in the
    book and makes the next deal. Before, the provider's offer was blamed whenever the job offer
    still looked fresh."""
    with Server(make_solver()) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        market = server.solver.market
        real = market.create_deals
        job_creator = net.creators[0].address
        calls: list[int] = []

        def refuse_once(account: Any, pairs: Any) -> Any:
            calls.append(len(pairs))
            if len(calls) == 1:
                raise ContractReverted(
                    "BadSignature", error="BadSignature", details={"signer": job_creator}
                )
            return real(account, pairs)

        monkeypatch.setattr(market, "create_deals", refuse_once)
        offer = post(client, "resource", net.resource()).json()["id"]
        first = post(client, "job", net.job()).json()["id"]
        view = wait_for(
            lambda: (
                (v := client.get(f"/api/v1/job_offers/{first}").json())
                and v["state"] == "rejected"
                and v
            )
        )
        assert view["state"] == "rejected"
        second = post(client, "job", net.job(net.creators[1])).json()["id"]
        deal = wait_for(lambda: (d := deal_of(client, second)) and d["state"] == "created" and d)
        assert deal["resource_offer_id"] == offer


def test_an_offer_posted_again_after_it_made_a_deal_is_a_duplicate(
    net: Net, served: Served
) -> None:
    """409, not 402: once its first post made a deal, the deposit is committed to that deal, and
    a second post of the same offer must still be told it is known (a client retrying a post
    whose answer it lost must not think its deposit is short)."""
    _, client = served
    resource = net.resource()
    assert post(client, "resource", resource).status_code == 201
    job = post(client, "job", net.job()).json()["id"]
    wait_for(lambda: (d := deal_of(client, job)) and d["state"] == "created")
    again = post(client, "resource", resource)
    assert again.status_code == 409, again.text
    assert "already known" in again.json()["error"]


def test_an_idle_solver_neither_matches_nor_settles_on_every_poll(
    net: Net, make_solver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing posted, the matcher sleeps until its idle bound instead of running a pass
    (and a database query of unsettled matches) every ``poll_interval``; a post wakes it."""
    solver = make_solver()  # poll_interval=0.1
    passes: list[str] = []
    for name in ("match_once", "_settle_unknown"):
        real = getattr(solver, name)
        monkeypatch.setattr(
            solver, name, lambda real=real, name=name: passes.append(name) or real()
        )
    with Server(solver) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        passes.clear()  # what start's recovery ran
        threading.Event().wait(1.5)  # 15 polls' worth
        assert passes.count("match_once") <= 2
        assert "_settle_unknown" not in passes
        offer = post(client, "resource", net.resource()).json()["id"]
        job = post(client, "job", net.job()).json()["id"]
        deal = wait_for(lambda: (d := deal_of(client, job)) and d["state"] == "created" and d)
        assert deal["resource_offer_id"] == offer
