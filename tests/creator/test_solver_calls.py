"""The job creator's use of the solver client, against scripted solvers (a real uvicorn serving
exactly the answers a test needs): an event stream that drops and resumes loses no deal event, a
stream the solver ends is given up for looks elsewhere, a busy solver is waited for, and an
answer that is not the protocol is a solver error."""

from __future__ import annotations

import json
import secrets
import threading
import time
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from lilypad import solver_api as api
from lilypad.chain.anvil import free_port
from lilypad.chain.crypto import Signer
from lilypad.chain.offers import JobOffer, default_job_timeout
from lilypad.creator import Step, _solver
from lilypad.creator._solver import SolverCalls
from lilypad.errors import SolverError
from lilypad.jobs import JobSubmission
from tests.creator.conftest import cowsay
from tests.solver.test_protocol import serve

CREATOR = Signer.from_key(bytes(range(1, 33)))
PROVIDER = "0x" + "22" * 20
MEDIATOR = "0x" + "33" * 20
OFFER = "0x" + "aa" * 32
RESOURCE_OFFER = "0x" + "bb" * 32
DEAL_ID = "0x" + "dd" * 32


def sse(seq: int, payload: dict[str, Any]) -> bytes:
    return f"id: {seq}\nevent: {payload['kind']}\ndata: {json.dumps(payload)}\n\n".encode()


def deal_event(seq: int, kind: str, **changes: Any) -> dict[str, Any]:
    view = {
        "seq": seq,
        "kind": kind,
        "deal_id": None,
        "state": kind.removeprefix("deal."),
        "job_offer_id": OFFER,
        "resource_offer_id": RESOURCE_OFFER,
        "job_creator": CREATOR.address,
        "provider": PROVIDER,
        "price": "1000000000000000000",
        "deal": None,
        "result_cid": None,
        "tx_hash": None,
        "error": None,
    }
    return view | changes


def terms() -> dict[str, Any]:
    return {
        "job_creator": CREATOR.address,
        "provider": PROVIDER,
        "mediator": MEDIATOR,
        "price": "1000000000000000000",
        "collateral": "10000000000000000000",
        "mediation_fee": "0",
        "job_offer_hash": OFFER,
        "resource_offer_hash": RESOURCE_OFFER,
    }


class DroppingStream:
    """The solver's event stream for one job: the first connection names its position, sends the
    offer's arrival and its match, then drops; the reconnection (from its ``Last-Event-ID``)
    resends the match, then the deal on chain, and stays open until the client leaves."""

    def __init__(self) -> None:
        self.last_event_ids: list[str | None] = []
        self.queries: list[str] = []
        self.gone = threading.Event()

    def connection(self, index: int) -> list[bytes]:
        matched = sse(12, deal_event(12, "deal.matched"))
        if index == 0:
            added = {"seq": 11, "kind": "job_offer.added", "id": OFFER, "state": "pending"}
            other = {"seq": 10, "kind": "job_offer.added", "id": "0x" + "ee" * 32}
            return [b"id: 9\n\n", sse(10, other | {"state": "pending"}), sse(11, added), matched]
        created = deal_event(
            13, "deal.created", deal_id=DEAL_ID, deal=terms(), tx_hash="0x" + "cc" * 32
        )
        return [matched, sse(13, created)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        last = dict(scope["headers"]).get(b"last-event-id")
        index = len(self.last_event_ids)
        self.last_event_ids.append(last.decode() if last else None)
        self.queries.append(scope["query_string"].decode())
        start = {"type": "http.response.start", "status": 200}
        await send(start | {"headers": [(b"content-type", b"text/event-stream")]})
        for chunk in self.connection(index):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if index == 0:  # the connection drops
            await send({"type": "http.response.body", "body": b""})
            return
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone.set()


def test_a_stream_that_drops_and_resumes_loses_no_deal_event() -> None:
    stream = DroppingStream()
    with serve(stream) as url:
        calls = SolverCalls(url)
        events = calls.events(CREATOR.address)
        seen: list[api.OfferEvent | api.DealEvent] = []
        for event in events.about(OFFER, deadline=time.time() + 60):
            if event is not None:
                seen.append(event)
            if event is not None and event.kind is api.EventKind.DEAL_CREATED:
                break
        events.close()
        calls.close()
        assert stream.gone.wait(10)  # closing the job's stream hangs up at once
    assert [(e.seq, e.kind) for e in seen] == [
        (11, api.EventKind.JOB_OFFER_ADDED),
        (12, api.EventKind.DEAL_MATCHED),  # once, though it was sent twice
        (13, api.EventKind.DEAL_CREATED),
    ]
    created = seen[-1]
    assert isinstance(created, api.DealEvent)
    assert created.deal is not None
    assert created.deal.deal_id  # the chain's terms, typed: amounts are ints
    assert created.deal.price == 10**18
    assert "after=-1" in stream.queries[0]  # from now on: opened before the offer is posted
    assert stream.last_event_ids == [None, "12"]


class RefusedStream:
    """A solver whose event stream is refused (400) while its other routes answer 404."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.paths.append(scope["path"])
        status = 400 if scope["path"] == "/api/v1/events" else 404
        start = {"type": "http.response.start", "status": status}
        await send(start | {"headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"error": "no stream for you"}'})


def test_a_stream_the_solver_refuses_is_given_up_and_the_job_looks_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stream's refusal does not end the job: the runner is told to look at the solver's
    view and the chain (None), and those looks say nothing yet (the solver knows no such
    offer)."""
    monkeypatch.setattr(_solver, "LOOK_EVERY_S", 0.0)
    solver = RefusedStream()
    with serve(solver) as url, SolverCalls(url) as calls:
        events = calls.events(CREATOR.address)
        looks = []
        for event in events.about(OFFER, deadline=time.time() + 60):
            assert event is None
            looks.append(calls.offer_deal(OFFER))
            if len(looks) == 3:
                break
        events.close()
    assert looks == [None, None, None]
    # one refused open and one refused reconnection, then no more: the stream was given up
    assert solver.paths.count("/api/v1/events") == 2
    assert solver.paths.count(f"/api/v1/job_offers/{OFFER}") == 3


class BusyThenTaken:
    """Answers the first post 429 (try again in 0 s), the next 201."""

    def __init__(self) -> None:
        self.posts = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.posts += 1
        if self.posts == 1:
            status, body, extra = (
                429,
                {"error": "too many offers from you"},
                [(b"retry-after", b"0")],
            )
        else:
            status, body, extra = 201, {"id": OFFER, "state": "pending", "seq": 1}, []
        start = {"type": "http.response.start", "status": status}
        await send(start | {"headers": [(b"content-type", b"application/json"), *extra]})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def submission(expires_in: int = 300) -> JobSubmission:
    spec = cowsay("posted")
    offer = JobOffer.for_spec(
        spec,
        job_creator=CREATOR.address,
        max_price=10**18,
        mediators=(MEDIATOR,),
        expiry=int(time.time()) + expires_in,
        nonce=secrets.randbits(255),
        timeout=default_job_timeout(spec.timeout_s),
    )
    return JobSubmission(
        offer=offer, signature=offer.sign(CREATOR, 31337, "0x" + "44" * 20), spec=spec
    )


def test_a_busy_solver_is_waited_for_and_the_offer_posted() -> None:
    steps: list[Step] = []
    solver = BusyThenTaken()
    with serve(solver) as url, SolverCalls(url) as calls:
        offer_id = calls.post_offer(submission(), clock=time.time, on_step=steps.append)
    assert offer_id == OFFER
    assert solver.posts == 2
    assert [s.name for s in steps] == ["solver_retry"]
    assert "too many offers from you" in steps[0].detail["error"]


def test_a_solver_not_there_when_the_offer_runs_out_of_time_is_an_error_that_says_so() -> None:
    steps: list[Step] = []
    with (
        SolverCalls(f"http://127.0.0.1:{free_port()}") as calls,
        pytest.raises(api.SolverUnreachable, match="the offer was never posted and no funds"),
    ):
        # 30 s of life is the least an offer is posted with: no time to try again
        calls.post_offer(submission(expires_in=30), clock=time.time, on_step=steps.append)
    assert steps == []


def test_an_answer_that_is_not_the_protocol_is_a_solver_error_naming_the_route() -> None:
    async def not_a_solver(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        start = {"type": "http.response.start", "status": 200}
        await send(start | {"headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"hello": "world"}'})

    with (
        serve(not_a_solver) as url,
        api.SolverClient(url) as client,
        pytest.raises(SolverError, match="GET /healthz is not what this version") as raised,
    ):
        client.health()
    assert not isinstance(raised.value, api.SolverRefused | api.SolverUnreachable)
