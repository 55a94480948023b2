"""The solver cannot be frozen (slow chain calls, idle event streams), filled (huge bodies,
endless or unbacked offers) or fooled (specs it does not render, timeouts no provider can meet,
malformed cancellations). Each test failed on the solver before it was hardened."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from lilypad.chain.market import JobMarketClient
from lilypad.chain.offers import MAX_MEDIATORS, MIN_TIMEOUT_MARGIN_S, min_job_timeout
from lilypad.jobs import cancel_message
from lilypad.modules import JobSpec, render
from solver.service import ExpiringCache, OfferRejected, RateLimited, RateLimiter, Solver
from tests.solver.conftest import ETH, MODULE, Net, Server, SolverFactory, wait_for
from tests.solver.test_persistence import deals_created_for
from tests.solver.test_service import deal_of, post

Served = tuple[Server, httpx.Client]
ROOT = Path(__file__).resolve().parents[2]


class HeldMarket(JobMarketClient):
    """The real market client, but reading one mediator, or sending createDeals, waits until the
    test lets it go (a slow chain)."""

    def __init__(self, market: JobMarketClient) -> None:
        super().__init__(market.chain, market.address)
        self.slow_mediator: str | None = None
        self.slow_deals = False
        self.entered = threading.Event()
        self.go = threading.Event()

    def mediator(self, account: str) -> tuple[bool, int]:
        if self.slow_mediator and account.lower() == self.slow_mediator.lower():
            self._hold()
        return super().mediator(account)

    def create_deals(self, solver: Any, pairs: Any) -> Any:
        if self.slow_deals:
            self._hold()
        return super().create_deals(solver, pairs)

    def _hold(self) -> None:
        self.entered.set()
        self.go.wait(30)


def held(make_solver: SolverFactory, **config: Any) -> tuple[Solver, HeldMarket]:
    solver = make_solver(**config)
    market = HeldMarket(solver.market)
    solver.market = market
    return solver, market


# ------------------------------------------------------------------------- not frozen
def test_an_offer_naming_more_mediators_than_the_market_takes_is_refused(
    net: Net, served: Served
) -> None:
    _, client = served
    many = [f"0x{i:040x}" for i in range(1, MAX_MEDIATORS + 2)]
    for kind, signed in (("resource", net.resource()), ("job", net.job())):
        body = signed.model_dump(mode="json")
        body["offer"]["mediators"] = many
        response = client.post(f"/api/v1/{kind}_offers", json=body)
        assert response.status_code == 422, response.text
        assert "mediators" in response.json()["error"]


def test_a_slow_mediator_lookup_does_not_hold_up_other_offers(
    net: Net, make_solver: SolverFactory
) -> None:
    solver, market = held(make_solver)
    slow = "0x" + "5" * 40
    market.slow_mediator = slow
    with Server(solver) as server:
        codes: list[int] = []

        def send_slow() -> None:
            offer = net.resource(mediators=(net.mediator.address, slow))
            with httpx.Client(base_url=server.url, timeout=40) as own:
                codes.append(post(own, "resource", offer).status_code)

        sender = threading.Thread(target=send_slow)
        sender.start()
        try:
            assert market.entered.wait(10)
            with httpx.Client(base_url=server.url, timeout=5) as client:
                assert post(client, "job", net.job()).status_code == 201
                other = net.resource(net.providers[1])
                assert post(client, "resource", other).status_code == 201
        finally:
            market.go.set()
            sender.join()
        assert codes == [201]


def test_offers_are_taken_while_a_create_deals_transaction_is_slow(
    net: Net, make_solver: SolverFactory
) -> None:
    solver, market = held(make_solver)
    market.slow_deals = True
    with Server(solver) as server, httpx.Client(base_url=server.url, timeout=5) as client:
        try:
            assert post(client, "resource", net.resource()).status_code == 201
            first = post(client, "job", net.job()).json()["id"]
            assert market.entered.wait(10)  # the matcher is inside createDeals now
            started = time.monotonic()
            assert post(client, "resource", net.resource(net.providers[1])).status_code == 201
            second = post(client, "job", net.job(net.creators[1])).json()["id"]
            assert client.get(f"/api/v1/job_offers/{first}").json()["state"] == "matched"
            assert time.monotonic() - started < 5
        finally:
            market.go.set()
        for job_id in (first, second):
            wait_for(
                lambda job_id=job_id: (d := deal_of(client, job_id)) and d["state"] == "created"
            )
            assert len(deals_created_for(net, job_id)) == 1


def test_a_refused_deal_puts_the_innocent_offer_back_in_the_book(net: Net, served: Served) -> None:
    """The job creator empties its deposit after posting: createDeals reverts, the job offer is
    rejected, and the provider's offer goes back to the book and takes the next job."""
    server, client = served
    creator, provider = net.creators[0], net.providers[0]
    broke = post(client, "job", net.job(creator)).json()["id"]
    net.market.withdraw(creator, net.market.balance_of(creator.address))
    resource = post(client, "resource", net.resource(provider)).json()["id"]
    wait_for(lambda: client.get(f"/api/v1/job_offers/{broke}").json()["state"] == "rejected")
    wait_for(lambda: client.get(f"/api/v1/resource_offers/{resource}").json()["state"] == "pending")
    honest = post(client, "job", net.job(net.creators[1])).json()["id"]
    deal = wait_for(lambda: (d := deal_of(client, honest)) and d["state"] == "created" and d)
    assert deal["resource_offer_id"] == resource
    # the failure is news for the party at fault; the other sees its offer listed again
    store = server.solver.store
    to_creator = [e.kind for e in store.events_after(0, creator.address)]
    assert "deal.failed" in to_creator
    assert "job_offer.rejected" in to_creator
    to_provider = [e.kind for e in store.events_after(0, provider.address)]
    assert "deal.failed" not in to_provider
    assert "resource_offer.pending" in to_provider


# ------------------------------------------------------------------------- not filled
def raw_request(port: int, head: str, timeout: float = 5.0) -> str:
    """Send request headers (no body) and return the status line of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        answer = sock.recv(4096).decode(errors="replace")
    return answer.splitlines()[0] if answer else ""


def test_bodies_larger_than_a_route_takes_are_refused_before_they_are_read(
    net: Net, served: Served
) -> None:
    server, client = served
    job = net.job().model_dump(mode="json")
    job["spec"]["tunables"]["Prompt"] = "x" * 300_000
    response = client.post("/api/v1/job_offers", json=job)
    assert response.status_code == 413
    assert "262144" in response.json()["error"]
    resource = net.resource().model_dump(mode="json")
    resource["signature"] = "0x" + "ab" * 10_000
    assert client.post("/api/v1/resource_offers", json=resource).status_code == 413
    cancel = client.post("/api/v1/job_offers/0x12/cancel", json={"signature": "0x" + "1" * 9000})
    assert cancel.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: a chunked body, bounded while read
        for _ in range(100):
            yield b" " * 65536

    chunked = client.post("/api/v1/job_offers", content=chunks())
    assert chunked.status_code == 413
    # a 50 MB body announced and never sent: the answer comes at once
    status = raw_request(
        server.port,
        "POST /api/v1/job_offers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 52428800\r\n\r\n",
    )
    assert " 413 " in status
    assert client.get("/healthz").status_code == 200


def test_a_signer_has_a_bounded_number_of_open_offers(net: Net, make_solver: SolverFactory) -> None:
    with (
        Server(make_solver(max_open_offers=3)) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        ids = [post(client, "job", net.job(max_price=ETH)).json()["id"] for _ in range(3)]
        refused = post(client, "job", net.job(max_price=ETH))
        assert refused.status_code == 429
        assert "3 open job offers" in refused.json()["error"]
        assert post(client, "job", net.job(net.creators[1], max_price=ETH)).status_code == 201
        own = Account.sign_message(encode_defunct(text=cancel_message(ids[0])), net.creators[0].key)
        cancel = client.post(
            f"/api/v1/job_offers/{ids[0]}/cancel", json={"signature": own.signature.hex()}
        )
        assert cancel.status_code == 200
        assert post(client, "job", net.job(max_price=ETH)).status_code == 201


def test_offers_that_nothing_backs_are_refused(net: Net, served: Served) -> None:
    _, client = served
    free_job = post(client, "job", net.job(max_price=0))
    assert free_job.status_code == 400
    assert "maximum price 0" in free_job.json()["error"]
    unbacked = post(client, "resource", net.resource(price=0, collateral=0))
    assert unbacked.status_code == 400
    assert "collateral 0" in unbacked.json()["error"]
    # below the market's rule (10x the price by default): the chain would refuse its deals
    least = net.market.required_collateral(5 * ETH)
    short = post(client, "resource", net.resource(price=5 * ETH, collateral=least - 1))
    assert short.status_code == 400
    assert f"below the market's minimum of {least}" in short.json()["error"]
    assert (
        post(client, "resource", net.resource(price=5 * ETH, collateral=least)).status_code == 201
    )


def test_the_rate_limiter_forgets_signers_beyond_its_bound() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=2, clock=lambda: now[0], max_signers=100)
    limiter.take("0xspammer")
    limiter.take("0xspammer")
    with pytest.raises(RateLimited):
        limiter.take("0xspammer")
    for i in range(50):  # others come and go; the spammer stays limited
        limiter.take(f"0x{i:040x}")
    with pytest.raises(RateLimited):
        limiter.take("0xspammer")
    for i in range(10_000):
        limiter.take(f"0x{i:040x}")
    assert len(limiter) <= 100


def test_the_mediator_cache_is_bounded_and_expires() -> None:
    cache: ExpiringCache[str, bool] = ExpiringCache(max_size=100)
    for i in range(10_000):
        cache.put(f"0x{i:040x}", True, expires_at=60.0)
    assert len(cache) <= 100
    assert cache.get(f"0x{9_999:040x}", now=10.0) is True
    assert cache.get(f"0x{9_999:040x}", now=61.0) is None


# ------------------------------------------------------------------- streams: no thread each
def open_idle_streams(port: int, count: int) -> list[socket.socket]:
    """``count`` event streams of parties that never get an event, held open."""
    streams = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        party = f"0x{0xDEAD0000 + i:040x}"
        sock.sendall(f"GET /api/v1/events?party={party} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        streams.append(sock)
    for sock in streams:
        assert b" 200 " in sock.recv(4096).split(b"\r\n", 1)[0]
    return streams


def round_trip(net: Net, client: httpx.Client, provider: int) -> float:
    """Seconds from posting a job offer (a resource offer waits) to its deal.created event on
    the job creator's stream."""
    assert post(client, "resource", net.resource(net.providers[provider])).status_code == 201
    creator = net.creators[provider]
    with client.stream(
        "GET", "/api/v1/events", params={"party": creator.address, "after": -1}
    ) as response:
        started = time.monotonic()
        job_id = post(client, "job", net.job(creator)).json()["id"]
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                if event["kind"] == "deal.created" and event["job_offer_id"] == job_id:
                    return time.monotonic() - started
            assert time.monotonic() - started < 30, "no deal.created in 30 s"
    raise AssertionError("the stream ended")


def test_idle_event_streams_do_not_slow_the_market(net: Net, served: Served) -> None:
    server, client = served
    alone = round_trip(net, client, 0)
    streams = open_idle_streams(server.port, 200)
    try:
        time.sleep(1)  # let them all settle into waiting
        crowded = round_trip(net, client, 1)
    finally:
        for sock in streams:
            sock.close()
    assert crowded < 3 * alone + 1.0, (alone, crowded)


def test_event_streams_are_capped_per_party_and_in_all(
    net: Net, make_solver: SolverFactory
) -> None:
    with Server(make_solver(), max_streams=4, streams_per_party=2) as server:
        party = net.creators[0].address
        head = f"GET /api/v1/events?party={party} HTTP/1.1\r\nHost: x\r\n\r\n"
        mine = []
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(head.encode())
            assert b" 200 " in sock.recv(4096)
            mine.append(sock)
        assert " 429 " in raw_request(server.port, head)
        others = open_idle_streams(server.port, 2)
        assert " 503 " in raw_request(server.port, head.replace(party, "0x" + "7" * 40))
        for sock in mine + others:
            sock.close()
        # closed streams give their places back
        wait_for(lambda: " 200 " in raw_request(server.port, head), timeout=5)


def test_a_malformed_last_event_id_is_a_400(served: Served) -> None:
    _, client = served
    response = client.get("/api/v1/events", headers={"Last-Event-ID": "seven"})
    assert response.status_code == 400
    assert "seven" in response.json()["error"]


def test_an_idle_stream_gets_heartbeats(net: Net, make_solver: SolverFactory) -> None:
    with (
        Server(make_solver(), heartbeat_s=0.2) as server,
        httpx.Client(base_url=server.url, timeout=5) as client,
        client.stream("GET", "/api/v1/events", params={"party": "0x" + "9" * 40}) as response,
    ):
        for line in response.iter_lines():
            if line == ": keep-alive":
                break


# ------------------------------------------------------------------------------ expiry
def test_an_expired_offer_is_marked_expired_frees_the_deposit_and_is_not_reloaded(
    net: Net, make_solver: SolverFactory
) -> None:
    creator = net.creators[0]
    solver = make_solver(clock=lambda: float(net.now()))
    with Server(solver) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        job = net.job(creator, expiry=net.now() + 30)
        job_id = post(client, "job", job).json()["id"]
        account = f"/api/v1/accounts/{creator.address}"
        assert client.get(account).json()["committed_by_job_offers"] == str(job.offer.max_price)
        net.advance(60)
        wait_for(lambda: client.get(f"/api/v1/job_offers/{job_id}").json()["state"] == "expired")
        assert client.get(account).json()["committed_by_job_offers"] == "0"
        with client.stream(
            "GET", "/api/v1/events", params={"party": creator.address, "after": 0}
        ) as response:
            for line in response.iter_lines():
                if line == "event: job_offer.expired":
                    break
    again = make_solver(clock=lambda: float(net.now()))
    again.recover()
    again.submit_resource_offer(net.resource())
    assert again.match_once() == []


def test_an_offer_past_its_expiry_counts_against_no_deposit_even_before_it_is_marked(
    net: Net, make_solver: SolverFactory
) -> None:
    creator = net.creators[0]
    solver = make_solver(clock=lambda: float(net.now()))  # not started: nothing marks offers
    balance = net.market.balance_of(creator.address)
    solver.submit_job_offer(net.job(creator, max_price=balance, expiry=net.now() + 30))
    net.advance(60)
    solver.submit_job_offer(net.job(creator, max_price=balance))


def test_recovery_marks_offers_that_expired_while_the_solver_was_down(
    net: Net, make_solver: SolverFactory
) -> None:
    first = make_solver(clock=lambda: float(net.now()))
    job = first.submit_job_offer(net.job(expiry=net.now() + 30))
    resource = first.submit_resource_offer(net.resource(expiry=net.now() + 30))
    first.store.close()
    net.advance(60)
    second = make_solver(clock=lambda: float(net.now()))
    second.recover()
    assert second.store.offer(type(job), job.id).state == "expired"
    assert second.store.offer(type(resource), resource.id).state == "expired"
    second.submit_job_offer(net.job(net.creators[1]))
    second.submit_resource_offer(net.resource(net.providers[1]))
    assert [row.job_offer_id for row in second.match_once()] != [job.id]


# ------------------------------------------------------------------------- not fooled
def respec(spec: JobSpec, **changes: Any) -> JobSpec:
    """``spec`` with some fields changed and a hash that matches its new contents."""
    fields = {**spec.model_dump(mode="json"), **changes}
    fields.pop("spec_hash")
    return JobSpec.model_validate({**fields, "spec_hash": JobSpec.hash_of(fields)})


def test_a_spec_this_solver_does_not_render_is_refused(net: Net, served: Served) -> None:
    _, client = served
    honest = render(MODULE, ["Seed=7"])
    tampered = respec(honest, env={**honest.env, "LD_PRELOAD": "/tmp/evil.so"})
    response = post(client, "job", net.job(spec=tampered))
    assert response.status_code == 400
    assert "renders to" in response.json()["error"]

    unknown = respec(honest, module="nosuchmodule:v1")
    response = post(client, "job", net.job(spec=unknown))
    assert response.status_code == 400
    assert "nosuchmodule" in response.json()["error"]

    bad_tunable = respec(honest, tunables={**honest.tunables, "Seed": -1})
    response = post(client, "job", net.job(spec=bad_tunable))
    assert response.status_code == 400
    assert "Seed" in response.json()["error"]


def test_a_module_from_the_solver_s_own_disk_is_refused_unless_allowed(
    net: Net, make_solver: SolverFactory
) -> None:
    """A job spec naming a local folder (or a local git repository) would have the solver read
    paths on its own host."""
    local = render(str(ROOT / "module" / "cowsay"), ["Message=from a folder"])
    strict = make_solver(any_module_source=False)
    with pytest.raises(OfferRejected, match="built-in modules and https git repositories only"):
        strict.submit_job_offer(net.job(spec=local))
    strict.submit_job_offer(net.job(spec=render("cowsay:v0.0.4")))  # a built-in one is fine
    lenient = make_solver(any_module_source=True)
    lenient.submit_job_offer(net.job(net.creators[1], spec=local))


def test_a_timeout_no_provider_can_meet_is_refused(net: Net, served: Served) -> None:
    _, client = served
    spec = render(MODULE, ["Seed=8"])
    least = min_job_timeout(spec.timeout_s)
    response = post(client, "job", net.job(spec=spec, timeout=least - 1))
    assert response.status_code == 400
    error = response.json()["error"]
    assert str(least) in error
    assert f"{MIN_TIMEOUT_MARGIN_S}" in error
    assert post(client, "job", net.job(spec=spec, timeout=least)).status_code == 201


MALFORMED_SIGNATURES = [
    "",
    "0x",
    "zz",
    "é",
    " 0x" + "11" * 65,
    "0x" + "ab" * 10,
    "0x" + "ab" * 66,
    "0x" + "00" * 65,
    "0x" + "ff" * 65,
    "0x" + "11" * 64 + "05",
    "0x" + "11" * 64 + "1c",  # well formed, but no key recovers (or a stranger's)
]


def test_a_malformed_cancellation_signature_is_a_clear_400(net: Net, served: Served) -> None:
    _, client = served
    job_id = post(client, "job", net.job()).json()["id"]
    for signature in MALFORMED_SIGNATURES:
        response = client.post(f"/api/v1/job_offers/{job_id}/cancel", json={"signature": signature})
        assert response.status_code == 400, (signature, response.text)
        assert "signature" in response.json()["error"] or "signed by" in response.json()["error"]
    for wrong_type in (5, None, ["0x"], {"r": 1}):
        response = client.post(
            f"/api/v1/job_offers/{job_id}/cancel", json={"signature": wrong_type}
        )
        assert response.status_code == 422
    assert client.get(f"/api/v1/job_offers/{job_id}").json()["state"] == "pending"


_ARENAS = """
import ctypes, os, sys, threading
from solver.app import limit_malloc_arenas
if sys.argv[1] == "limit":
    assert limit_malloc_arenas()
hold, together = [], threading.Barrier(12)
def work():
    hold.append([bytes(100_000) for _ in range(20)])  # below mmap's threshold: in an arena
    together.wait()  # every thread alive at once: none leaves its arena free for the next
threads = [threading.Thread(target=work) for _ in range(12)]
for t in threads:
    t.start()
for t in threads:
    t.join()
os.dup2(1, 2)
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


@pytest.mark.parametrize("mode", ["limit", "default"])
def test_the_solver_keeps_two_malloc_arenas_however_many_threads_allocate(mode: str) -> None:
    """Each thread got a glibc arena of its own (up to 8 a core), which holds on to what it
    freed: the solver's memory grew with its jobs. limit_malloc_arenas keeps two."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run(
        [sys.executable, "-c", _ARENAS, mode], capture_output=True, text=True, env=env, check=True
    )
    arenas = done.stdout.count("Arena ")
    if mode == "limit":
        assert arenas <= 2, done.stdout
    else:  # the default this guards against (so the check above can fail)
        assert arenas > 2, done.stdout
