"""The solver's protocol (:mod:`lilypad.solver_api`) as the real solver serves it: every route
answers exactly what its declared model writes, ``/openapi.json`` documents it, amounts travel as
strings, and the one client maps every answer and reads the event stream as the SSE spec says."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx_sse
import pytest
import uvicorn
from eth_account import Account
from eth_account.messages import encode_defunct
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.types import Receive, Scope, Send

from lilypad import solver_api as api
from lilypad.chain import offers
from lilypad.chain.anvil import free_port
from lilypad.jobs import cancel_message
from tests.solver.conftest import ETH, Net, Server, SolverFactory, wait_for

Served = tuple[Server, httpx.Client]
BIG = 2_000_000_000_000_000_001  # above 2**53: JavaScript would round it to ...000


# -------------------------------------------------------------------------------- checks
def exactly(declared: Any, body: Any) -> Any:
    """``body`` parsed as ``declared`` (a model or type), asserting that it is exactly what the
    model writes: no undeclared field, none missing, no field of another JSON type."""
    adapter = TypeAdapter(declared)
    parsed = adapter.validate_python(body)
    assert adapter.dump_python(parsed, mode="json") == body, f"not exactly a {declared}"
    return parsed


class Routes:
    """Calls of the real app that check each answer against the route's declared model, and
    remember which routes were called."""

    def __init__(self, client: httpx.Client, app: FastAPI) -> None:
        self.client = client
        self.routes = {
            (method, route.path): route
            for route in app.routes
            if isinstance(route, APIRoute)
            for method in route.methods or ()
        }
        self.called: set[tuple[str, str]] = set()

    def __call__(self, method: str, path: str, status: int, *, arg: str = "", **kw: Any) -> Any:
        """``method path`` (its one ``{parameter}`` replaced by ``arg``), answering ``status``."""
        route = self.routes[(method, path)]
        response = self.client.request(method, re.sub(r"\{\w+\}", arg, path), **kw)
        assert response.status_code == status, response.text
        if status < 300:
            assert status == (route.status_code or 200)
            declared = route.response_model
        else:
            assert status in route.responses, f"{method} {path} does not declare {status}"
            declared = route.responses[status]["model"]
        self.called.add((method, path))
        return exactly(declared, response.json())


def post(client: httpx.Client, side: str, signed: Any) -> httpx.Response:
    return client.post(f"/api/v1/{side}_offers", json=signed.model_dump(mode="json"))


def signature(account: Any, text: str) -> str:
    return (
        "0x" + bytes(Account.sign_message(encode_defunct(text=text), account.key).signature).hex()
    )


def cancellation(account: Any, offer_id: str) -> dict[str, str]:
    signed = Account.sign_message(encode_defunct(text=cancel_message(offer_id)), account.key)
    return {"signature": "0x" + bytes(signed.signature).hex()}


def sse_events(client: httpx.Client, until: Callable[[Any], bool], **params: Any) -> list[Any]:
    """The events of a stream, each checked against :data:`SolverEvent`, until one matches."""
    seen = []
    with httpx_sse.connect_sse(client, "GET", "/api/v1/events", params=params) as source:
        for sse in source.iter_sse():
            if not sse.data:
                continue
            event = exactly(api.SolverEvent, json.loads(sse.data))
            assert (sse.id, sse.event) == (str(event.seq), event.kind)
            seen.append(event)
            if until(event):
                return seen
    raise AssertionError("the stream ended")


# ---------------------------------------------------------------------- every route, exactly
def test_every_route_answers_exactly_its_declared_models(net: Net, served: Served) -> None:
    server, client = served
    app = server.server.config.app
    assert isinstance(app, FastAPI)
    call = Routes(client, app)
    creator, provider = net.creators[0], net.providers[0]

    health = call("GET", "/healthz", 200)
    assert health.chain_id == net.chain.chain_id
    job = net.job(creator)
    accepted = call("POST", "/api/v1/job_offers", 201, json=job.model_dump(mode="json"))
    call("POST", "/api/v1/job_offers", 409, json=job.model_dump(mode="json"))
    call(
        "POST",
        "/api/v1/job_offers",
        400,
        json=net.job(signed_by=net.creators[1]).model_dump(mode="json"),
    )
    call(
        "POST",
        "/api/v1/job_offers",
        402,
        json=net.job(max_price=10_000 * ETH).model_dump(mode="json"),
    )
    call("POST", "/api/v1/job_offers", 422, json={"offer": {"job_creator": "nope"}})
    call("POST", "/api/v1/job_offers", 413, content=b"x" * (300 * 1024))
    resource = net.resource(provider)
    call("POST", "/api/v1/resource_offers", 201, json=resource.model_dump(mode="json"))
    call("POST", "/api/v1/resource_offers", 409, json=resource.model_dump(mode="json"))
    turbo = offers.module_id("sdxl-turbo:v1.0-lilypad1")  # not the job's module: no match
    slot = {"offers": [net.resource(net.providers[1], module=turbo).model_dump(mode="json")]}
    taken = call("POST", "/api/v1/resource_offers/slot", 201, json=slot)
    assert [o.state for o in taken.offers] == [api.OfferState.PENDING]
    call("POST", "/api/v1/resource_offers/slot", 409, json=slot)
    call("POST", "/api/v1/resource_offers/slot", 422, json={"offers": []})

    job_id = accepted.id
    wait_for(lambda: (d := call_deal(client, job_id)) and d["state"] == "created")
    view = call("GET", "/api/v1/job_offers/{offer_id}", 200, arg=job_id)
    assert view.state is api.OfferState.DEALT
    assert view.deal is not None
    deal = view.deal
    assert deal.deal is not None
    assert deal.deal.deal_id == deal.deal_id
    offer_view = call("GET", "/api/v1/resource_offers/{offer_id}", 200, arg=deal.resource_offer_id)
    assert offer_view.deal == deal  # the same deal, built by the same conversion
    for path in ("/api/v1/job_offers/{offer_id}", "/api/v1/resource_offers/{offer_id}"):
        call("GET", path, 404, arg="0x" + "ab" * 32)

    assert call("GET", "/api/v1/deals/{deal_id}", 200, arg=str(deal.deal_id)) == deal
    call("GET", "/api/v1/deals/{deal_id}", 404, arg="0x" + "cd" * 32)
    assert call("GET", "/api/v1/deals", 200, params={"party": provider.address}) == [deal]
    assert call("GET", "/api/v1/deals", 200) == [deal]
    call("GET", "/api/v1/deals", 400, params={"party": "0xnope"})
    account = call("GET", "/api/v1/accounts/{address}", 200, arg=creator.address)
    assert account.committed_by_job_offers == 0
    call("GET", "/api/v1/accounts/{address}", 400, arg="0xnope")

    deal_id = str(deal.deal_id)
    path = "/api/v1/deals/{deal_id}/logs"
    progress = api.parse_progress("step 1/2")
    batch = api.LogBatch(from_seq=1, lines=("step 1/2",), progress=progress, signature="")
    signed = batch.model_copy(
        update={"signature": signature(provider, api.log_batch_message(deal_id, batch))}
    )
    kept = call("POST", path, 200, arg=deal_id, json=signed.model_dump(mode="json"))
    assert (kept.next_seq, kept.kept, kept.dropped) == (2, 1, 0)
    forged = batch.model_copy(
        update={"signature": signature(creator, api.log_batch_message(deal_id, batch))}
    )
    call("POST", path, 403, arg=deal_id, json=forged.model_dump(mode="json"))
    call("POST", path, 404, arg="0x" + "cd" * 32, json=signed.model_dump(mode="json"))
    call("POST", path, 400, arg=deal_id, json={**signed.model_dump(mode="json"), "signature": "0x"})
    call("POST", path, 422, arg=deal_id, json={"from_seq": 0, "lines": [], "signature": ""})
    call("POST", path, 413, arg=deal_id, content=b"x" * (300 * 1024))
    now = int(time.time())
    headers = {
        api.TIMESTAMP_HEADER: str(now),
        api.SIGNATURE_HEADER: signature(creator, api.log_read_message(deal_id, now)),
    }
    logs = call("GET", path, 200, arg=deal_id, headers=headers)
    assert [line.text for line in logs.lines] == ["step 1/2"]
    assert logs.progress == api.LogProgress(done=1, total=2)
    call("GET", path, 401, arg=deal_id)
    stranger = {
        **headers,
        api.SIGNATURE_HEADER: signature(net.creators[1], api.log_read_message(deal_id, now)),
    }
    call("GET", path, 403, arg=deal_id, headers=stranger)
    call("GET", path, 400, arg=deal_id, headers={**headers, api.SIGNATURE_HEADER: "0xbad"})
    call("GET", path, 422, arg=deal_id, headers=headers, params={"wait": 999})

    pending = post(client, "job", net.job(creator)).json()["id"]
    path = "/api/v1/job_offers/{offer_id}/cancel"
    body = cancellation(creator, pending)
    assert call("POST", path, 200, arg=pending, json=body).id == pending
    call("POST", path, 400, arg=pending, json=body)  # no longer pending
    call("POST", path, 422, arg=pending, json={})
    listed = post(client, "resource", net.resource(provider)).json()["id"]
    page = call("GET", "/api/v1/resource_offers", 200, params={"provider": provider.address})
    assert [offer.id for offer in page.offers] == [listed]
    assert page.next_cursor is None
    call("GET", "/api/v1/resource_offers", 422, params={"limit": api.MAX_PAGE + 1})
    path = "/api/v1/resource_offers/{offer_id}/cancel"
    call("POST", path, 200, arg=listed, json=cancellation(provider, listed))

    call("GET", "/api/v1/events", 400, headers={"Last-Event-ID": "seven"})
    call("GET", "/api/v1/events", 400, params={"party": "0xnope"})
    call("GET", "/api/v1/events", 422, params={"after": "soon"})
    kinds = [
        e.kind
        for e in sse_events(
            client, lambda e: e.kind == api.EventKind.RESOURCE_OFFER_CANCELLED, after=0
        )
    ]
    assert {"job_offer.added", "deal.matched", "deal.created", "job_offer.dealt"} <= set(kinds)
    call.called.add(("GET", "/api/v1/events"))

    unknown = client.get("/api/v2/nothing")
    assert unknown.status_code == 404
    exactly(api.ErrorBody, unknown.json())
    # the read-only dashboard's pages (HTML, not the API) are tested in tests/creator/test_serve.py
    pages = {("GET", "/openapi.json"), ("GET", "/"), ("GET", "/dashboard")}
    assert call.called == set(call.routes) - pages, "a route is not tested"


def call_deal(client: httpx.Client, job_id: str) -> Any:
    return client.get(f"/api/v1/job_offers/{job_id}").json()["deal"]


def test_the_check_fails_when_a_body_drifts_from_its_model() -> None:
    """What the route test relies on: a body with a field more, one less, or an amount as a
    number is not exactly its model."""
    health = {"ok": True, "version": "1", "chain_id": 1, "market": "0x" + "1" * 40}
    exactly(api.Health, health)
    with pytest.raises(AssertionError):
        exactly(api.Health, {**health, "peers": 3})
    with pytest.raises(ValidationError):
        exactly(api.Health, {k: v for k, v in health.items() if k != "market"})
    account = {"address": "0x" + "1" * 40, "committed_by_job_offers": "5"}
    exactly(api.Account, {**account, "committed_by_resource_offers": "0"})
    with pytest.raises(AssertionError):
        exactly(api.Account, {**account, "committed_by_resource_offers": 0})


# ---------------------------------------------------------------------------------- openapi
def walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_openapi_documents_the_real_protocol(served: Served) -> None:
    _, client = served
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            answers = operation["responses"]
            ok = next(status for status in answers if status.startswith("2"))
            for status, answer in answers.items():
                assert answer.get("content"), f"{where} {status} has no content"
                if status == ok:
                    continue
                assert answer["content"] == {"application/json": {"schema": error}}, where
            if path == "/api/v1/events":
                continue
            schema = answers[ok]["content"]["application/json"]["schema"]
            assert "$ref" in schema or schema.get("type") == "array", f"{where}: {schema}"
            if operation.get("parameters") or operation.get("requestBody"):
                assert "422" in answers, where
    posts = document["paths"]["/api/v1/job_offers"]["post"]["responses"]
    assert {"400", "402", "409", "413", "422", "429"} <= set(posts)
    assert {"400", "429", "503"} <= set(document["paths"]["/api/v1/events"]["get"]["responses"])
    assert {"404"} <= set(document["paths"]["/api/v1/deals/{deal_id}"]["get"]["responses"])
    assert "HTTPValidationError" not in schemas
    assert "detail" not in json.dumps(document)
    for key, value in walk(document):
        assert value != {} or key in ("properties",), f"an empty schema under {key!r}"
        if key == "$ref":
            assert value.removeprefix("#/components/schemas/") in schemas, value


def test_openapi_gives_the_stream_its_event_schema(served: Served) -> None:
    _, client = served
    document = client.get("/openapi.json").json()
    ok = document["paths"]["/api/v1/events"]["get"]["responses"]["200"]["content"]
    assert list(ok) == ["text/event-stream"]
    item = ok["text/event-stream"]["itemSchema"]["properties"]
    assert set(item["event"]["enum"]) == {kind.value for kind in api.EventKind}
    data = item["data"]["contentSchema"]
    mapping = data["discriminator"]["mapping"]
    assert set(mapping) == {kind.value for kind in api.EventKind}
    for kind, ref in mapping.items():
        expected = "DealEvent" if kind.startswith("deal.") else "OfferEvent"
        assert ref == f"#/components/schemas/{expected}"
    price = document["components"]["schemas"]["DealView"]["properties"]["price"]
    assert price["type"] == "string"


def test_every_event_kind_has_one_payload_and_the_solver_names_kinds_only_by_enum() -> None:
    offer_kinds = set(api.OfferEvent.model_fields["kind"].annotation.__args__)  # type: ignore[union-attr]
    deal_kinds = set(api.DealEvent.model_fields["kind"].annotation.__args__)  # type: ignore[union-attr]
    assert offer_kinds | deal_kinds == set(api.EventKind)
    assert not offer_kinds & deal_kinds
    assert all(kind.is_deal() for kind in deal_kinds)
    literal = re.compile(r"""["'](deal|job_offer|resource_offer)\.[a-z_]+["']""")
    for source in (Path(__file__).parents[2] / "solver").glob("*.py"):
        found = literal.findall(source.read_text())
        assert not found, f"{source.name} names event kinds as strings: use EventKind"


# ---------------------------------------------------------------------------------- amounts
def test_amounts_travel_as_strings_and_survive_past_2_to_the_53(net: Net, served: Served) -> None:
    _, client = served
    creator = net.creators[0]
    # the new form (strings) and, for one release, the old one (JSON integers) are both read
    job = api.JobSubmission.model_validate(net.job(creator, max_price=BIG).model_dump())
    body = job.model_dump(mode="json")
    assert body["offer"]["max_price"] == str(BIG)
    assert body["offer"]["nonce"].isdigit()
    job_id = client.post("/api/v1/job_offers", json=body).json()["id"]
    account = client.get(f"/api/v1/accounts/{creator.address}").json()
    assert account["committed_by_job_offers"] == str(BIG)
    assert post(client, "resource", net.resource(price=BIG)).status_code == 201

    wait_for(lambda: (d := call_deal(client, job_id)) and d["state"] == "created")
    # read as JavaScript would: every JSON number a double
    view = json.loads(client.get(f"/api/v1/job_offers/{job_id}").text, parse_int=float)
    assert view["offer"]["offer"]["max_price"] == str(BIG)
    deal = view["deal"]
    assert deal["price"] == str(BIG)
    assert deal["deal"]["price"] == str(BIG)
    assert isinstance(deal["deal"]["collateral"], str)
    assert isinstance(deal["deal"]["mediation_fee"], str)
    # the deal id rebuilt from the strings is the chain's
    assert offers.Deal.model_validate(deal["deal"]).deal_id == deal["deal_id"]
    assert net.market.deal_status(deal["deal_id"]).state.name == "CREATED"
    created = sse_events(
        client, lambda e: e.kind == api.EventKind.DEAL_CREATED, party=creator.address
    )[-1]
    assert created.deal is not None
    assert created.deal.price == BIG


def test_amounts_that_are_not_decimal_strings_are_refused_with_the_value(
    net: Net, served: Served
) -> None:
    _, client = served
    body = api.JobSubmission.model_validate(net.job().model_dump()).model_dump(mode="json")
    for bad in ("1e21", "-5", "0x10", 1.5, str(2**96)):
        body["offer"]["max_price"] = bad
        response = client.post("/api/v1/job_offers", json=body)
        assert response.status_code == 422, bad
        error = response.json()["error"]
        assert error.startswith("body.offer.max_price")
        assert str(bad) in error


# --------------------------------------------------------------------- the stream, real solver
def test_a_stream_from_now_names_its_position_and_resumes_without_duplicates(
    net: Net, served: Served
) -> None:
    server, client = served
    creator = net.creators[0]
    post(client, "job", net.job(creator))  # before the stream: not in it
    head = server.solver.store.last_event_seq()
    with client.stream(
        "GET", "/api/v1/events", params={"party": creator.address, "after": -1}
    ) as raw:
        assert next(raw.iter_lines()) == f"id: {head}"

    solver = api.SolverClient(server.url)
    with solver.events(creator.address, after=-1) as stream:
        stream.open()  # connected: what happens from here on is in it
        first = post(client, "job", net.job(creator)).json()["id"]
        event = next(stream)
        assert (event.kind, event.id) == (api.EventKind.JOB_OFFER_ADDED, first)  # type: ignore[union-attr]
        resume_at = stream.last_id
    assert resume_at == event.seq
    second = post(client, "job", net.job(creator)).json()["id"]
    with solver.events(creator.address, after=resume_at) as stream:
        event = next(stream)
        assert event.seq > resume_at
        assert (event.kind, event.id) == (api.EventKind.JOB_OFFER_ADDED, second)  # type: ignore[union-attr]
    solver.close()


# ------------------------------------------------------------------ a tiny SSE server, edges
@contextmanager
def serve(app: Callable[[Scope, Receive, Send], Any]) -> Iterator[str]:
    """An ASGI app on a free port, by a real uvicorn in a thread; yields its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def offer_event(seq: int, kind: str = "job_offer.added") -> dict[str, Any]:
    return {"seq": seq, "kind": kind, "id": "0x" + f"{seq:064x}", "state": "pending"}


class EdgeStream:
    """An event stream that drops its connection after a few messages and answers each
    reconnection from its ``Last-Event-ID``, resending one event already sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[str | None, str]] = []  # (Last-Event-ID, query) each
        self.gone = threading.Event()

    def connection(self, index: int) -> list[bytes] | tuple[int, bytes]:
        five = json.dumps(offer_event(5))
        head, tail = five.split(', "id"')  # one event over two data lines
        tail = ', "id"' + tail
        if index == 0:
            return [
                b"id: 4\n\n",  # the position only: no event
                b": a comment\n\n",
                b"retry: 20\n\n",
                # the second line cut across two chunks
                b"id: 5\nevent: job_offer.added\ndata: " + head.encode() + b"\ndata:",
                b" " + tail[:10].encode(),
                tail[10:].encode() + b"\n\n",
                # CRLF line ends
                b"id: 6\r\nevent: job_offer.expired\r\ndata: "
                + json.dumps(offer_event(6, "job_offer.expired")).encode()
                + b"\r\n\r\n",
            ]
        if index == 1:
            return [
                b"id: 6\nevent: job_offer.expired\ndata: "  # had already: dropped
                + json.dumps(offer_event(6, "job_offer.expired")).encode()
                + b"\n\n",
                b"id:7\nevent:job_offer.dealt\ndata:"  # no space after the colons
                + json.dumps({**offer_event(7, "job_offer.dealt"), "state": "dealt"}).encode()
                + b"\n\n",
                b"id: 8\nevent: job_offer.teleported\ndata: "  # a kind this version lacks
                + json.dumps(offer_event(8, "job_offer.teleported")).encode()
                + b"\n\n",
            ]
        if index == 2:
            return (503, b'{"error": "the solver serves as many event streams as it takes"}')
        return [
            b": keep-alive\n\n",
            b"id: 9\nevent: job_offer.added\ndata: " + json.dumps(offer_event(9)).encode(),
            b"\n\n",
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        last = headers.get(b"last-event-id")
        index = len(self.requests)
        self.requests.append((last.decode() if last else None, scope["query_string"].decode()))
        answer = self.connection(index)
        if isinstance(answer, tuple):
            status, body = answer
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"retry-after", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for chunk in answer:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if index >= 3:  # the last connection stays open until the client leaves
            while (await receive())["type"] != "http.disconnect":
                pass
            self.gone.set()
            return
        await send({"type": "http.response.body", "body": b""})


def test_the_reader_follows_the_sse_spec_and_reconnects_without_duplicates() -> None:
    edge = EdgeStream()
    with serve(edge) as url, api.SolverClient(url) as client:
        stream = client.events("0x" + "1" * 40, after=-1)
        seen = []
        for event in stream:
            seen.append((event.seq, event.kind))
            if event.seq == 9:
                stream.close()
        assert edge.gone.wait(10)
    assert seen == [
        (5, "job_offer.added"),
        (6, "job_offer.expired"),
        (7, "job_offer.dealt"),
        (9, "job_offer.added"),
    ]
    resumed_from = [last for last, _ in edge.requests]
    assert resumed_from == [None, "6", "8", "8"]  # the position named before any event: 4
    assert "after=-1" in edge.requests[0][1]
    assert all("after" not in query for _, query in edge.requests[1:])
    assert stream.last_id == 9


def test_the_reader_without_reconnection_ends_with_the_connection_or_raises() -> None:
    edge = EdgeStream()
    with serve(edge) as url, api.SolverClient(url) as client:
        once = list(client.events(after=0, reconnect=False))
        assert [e.seq for e in once] == [5, 6]
        assert edge.requests[0][0] == "0"
        assert [e.seq for e in client.events(after=6, reconnect=False)] == [7]
        with pytest.raises(api.SolverBusy) as busy:
            list(client.events(after=8, reconnect=False))
    assert busy.value.status == 503
    assert busy.value.retry_after == 0


# ------------------------------------------------------------------------------ client errors
class Answers:
    """Answers every request with the status, headers and body set last."""

    def __init__(self) -> None:
        self.answer: tuple[int, dict[str, str], bytes] = (200, {}, b"{}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        status, headers, body = self.answer
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry"),
    [
        (400, {}, api.SolverRefused, None),
        (402, {}, api.DepositShort, None),
        (404, {}, api.NotFound, None),
        (409, {}, api.AlreadyKnown, None),
        (413, {}, api.SolverRefused, None),
        (422, {}, api.SolverRefused, None),
        (429, {"Retry-After": "7"}, api.SolverBusy, 7.0),
        (429, {}, api.SolverBusy, None),
        (503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, api.SolverBusy, 0.0),
    ],
)
def test_the_client_maps_each_error_status_to_its_exception(
    status: int, headers: dict[str, str], kind: type[api.SolverRefused], retry: float | None
) -> None:
    answers = Answers()
    message = f"refused with {status}, for a reason"
    answers.answer = (status, headers, json.dumps({"error": message}).encode())
    with serve(answers) as url, api.SolverClient(url) as client, pytest.raises(kind) as raised:
        client.deal("0x" + "ab" * 32)
    assert type(raised.value) is kind
    assert (raised.value.status, raised.value.error) == (status, message)
    assert message in str(raised.value)
    assert str(status) in str(raised.value)
    if isinstance(raised.value, api.SolverBusy):
        assert raised.value.retry_after == retry


def test_the_client_reports_an_answer_that_is_not_json_and_a_solver_that_is_not_there() -> None:
    answers = Answers()
    answers.answer = (502, {"content-type": "text/html"}, b"<h1>Bad Gateway</h1>")
    with (
        serve(answers) as url,
        api.SolverClient(url) as client,
        pytest.raises(api.SolverRefused) as raised,
    ):
        client.health()
    assert raised.value.status == 502
    assert "Bad Gateway" in raised.value.error
    with (
        api.SolverClient(f"http://127.0.0.1:{free_port()}") as gone,
        pytest.raises(api.SolverUnreachable, match="cannot reach the solver"),
    ):
        gone.health()


def test_the_client_against_the_real_solver(net: Net, make_solver: SolverFactory) -> None:
    with (
        Server(make_solver(rate=0.001, burst=3)) as server,
        api.SolverClient(server.url) as client,
    ):
        assert client.health().market == net.market.address
        job = net.job(net.creators[0])
        accepted = client.post_job_offer(job)  # a chain model: sent as the wire one
        assert accepted.state is api.OfferState.PENDING
        with pytest.raises(api.AlreadyKnown):
            client.post_job_offer(job)
        with pytest.raises(api.DepositShort, match="deposit"):
            client.post_job_offer(net.job(net.creators[0], max_price=10_000 * ETH))
        with pytest.raises(api.NotFound):
            client.job_offer("0x" + "ab" * 32)
        view = client.job_offer(accepted.id)
        assert view.offer.offer.model_dump() == job.offer.model_dump()
        assert view.offer.spec == job.spec
        assert view.offer.offer.struct_hash() == accepted.id
        assert (
            client.account(net.creators[0].address).committed_by_job_offers == job.offer.max_price
        )
        signature = cancellation(net.creators[0], accepted.id)["signature"]
        assert client.cancel_offer("job", accepted.id, signature).state is api.OfferState.CANCELLED
        other = net.creators[1]
        for _ in range(3):
            client.post_job_offer(net.job(other, max_price=ETH))
        with pytest.raises(api.SolverBusy) as busy:
            client.post_job_offer(net.job(other, max_price=ETH))
        assert busy.value.status == 429
        assert busy.value.retry_after is not None
        assert busy.value.retry_after >= 1
        assert client.deals(party=other.address) == []
