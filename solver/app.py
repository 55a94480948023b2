"""The solver's HTTP API (FastAPI): offers, deals and an event stream.

    POST /api/v1/job_offers                 a JobSubmission (signed offer + job spec)
                                            -> 201 {"id", "state", "seq"}
    POST /api/v1/resource_offers            a SignedResourceOffer   -> 201 {"id", "state", "seq"}
    GET  /api/v1/job_offers/{id}            its state and, once matched, its deal
    GET  /api/v1/resource_offers/{id}
    POST /api/v1/{job|resource}_offers/{id}/cancel  {"signature"}: EIP-191 of cancel_message(id)
    GET  /api/v1/deals?party=0x...          deals of a party
    GET  /api/v1/deals/{deal_id}
    GET  /api/v1/events?party=0x...         server-sent events, only those naming ``party``;
                                            resumes after ``Last-Event-ID`` (or ``?after=N``;
                                            ``after=-1``: only events from now on)
    GET  /healthz

Errors are JSON ``{"error": "<one line>"}``:

* 400 a refused offer (bad signature, expired, used nonce, nothing backing it, a spec that does
  not render here, a timeout too short for the module) or cancellation;
* 402 the signer's deposit does not cover the offer on top of its open ones;
* 404 unknown; 409 duplicate; 422 malformed body;
* 413 a body larger than the route takes (:data:`BODY_LIMITS`), refused before it is read;
* 429 a signer over its rate (with ``Retry-After``), a signer with too many open offers, or a
  party with too many event streams open;
* 503 the solver serves as many event streams as it takes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lilypad import __version__
from lilypad.chain.offers import SignedResourceOffer
from lilypad.errors import LilypadError
from lilypad.jobs import JobSubmission
from solver.service import DepositShort, OfferRejected, RateLimited, Solver, TooManyOffers
from solver.store import DealRow, Duplicate, JobOfferRow, ResourceOfferRow
from solver.stream import EventHub, StreamsFull, TooManyStreams

HEARTBEAT_S = 15.0
#: The largest request body (bytes) each route takes, by path; a job offer carries its job spec,
#: whose tunables the module bounds (2,000 characters each by default). Other routes: DEFAULT.
BODY_LIMITS = {
    "/api/v1/job_offers": 256 * 1024,
    "/api/v1/resource_offers": 16 * 1024,
}
#: The largest body of any other route (a cancellation is about 150 bytes).
DEFAULT_BODY_LIMIT = 4 * 1024


class Cancellation(BaseModel):
    signature: str


class OfferAccepted(BaseModel):
    id: str
    state: str
    seq: int


def create_app(
    solver: Solver,
    *,
    max_streams: int = 1000,
    streams_per_party: int = 8,
    heartbeat_s: float = HEARTBEAT_S,
) -> FastAPI:
    """The ASGI app serving ``solver``; start and stop the solver around it.

    Args:
        solver: The solver to serve.
        max_streams: The most event streams open at once (more: 503).
        streams_per_party: The most event streams open at once for one party (more: 429).
        heartbeat_s: Seconds of silence after which a stream sends a comment line.
    """
    app = FastAPI(title="Lilypad solver", version=__version__)
    app.state.solver = solver
    app.state.hub = hub = EventHub(
        solver, max_streams=max_streams, streams_per_party=streams_per_party
    )
    app.add_middleware(_BodyLimit)

    @app.exception_handler(LilypadError)
    async def _lilypad_error(_: Request, exc: LilypadError) -> JSONResponse:
        status, headers = 500, {}
        if isinstance(exc, RateLimited):
            status, headers = 429, {"Retry-After": f"{max(1, round(exc.retry_after))}"}
        elif isinstance(exc, TooManyOffers | TooManyStreams):
            status = 429
        elif isinstance(exc, StreamsFull):
            status = 503
        elif isinstance(exc, Duplicate):
            status = 409
        elif isinstance(exc, DepositShort):
            status = 402
        elif isinstance(exc, OfferRejected):
            status = 400
        return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"])
        return JSONResponse({"error": f"{where}: {first['msg']}"}, status_code=422)

    @app.get("/healthz")
    def health() -> dict[str, Any]:
        return {
            "ok": True,
            "version": __version__,
            "chain_id": solver.chain_id,
            "market": solver.market.address,
        }

    @app.post("/api/v1/job_offers", status_code=201)
    def post_job_offer(signed: JobSubmission) -> OfferAccepted:
        row = solver.submit_job_offer(signed)
        return OfferAccepted(id=row.id, state=row.state, seq=row.seq)

    @app.post("/api/v1/resource_offers", status_code=201)
    def post_resource_offer(signed: SignedResourceOffer) -> OfferAccepted:
        row = solver.submit_resource_offer(signed)
        return OfferAccepted(id=row.id, state=row.state, seq=row.seq)

    @app.get("/api/v1/job_offers/{offer_id}")
    def get_job_offer(offer_id: str) -> JSONResponse:
        return _offer(solver, JobOfferRow, offer_id)

    @app.get("/api/v1/resource_offers/{offer_id}")
    def get_resource_offer(offer_id: str) -> JSONResponse:
        return _offer(solver, ResourceOfferRow, offer_id)

    @app.post("/api/v1/job_offers/{offer_id}/cancel")
    def cancel_job_offer(offer_id: str, body: Cancellation) -> dict[str, str]:
        solver.cancel_offer("job", offer_id, body.signature)
        return {"id": offer_id, "state": "cancelled"}

    @app.post("/api/v1/resource_offers/{offer_id}/cancel")
    def cancel_resource_offer(offer_id: str, body: Cancellation) -> dict[str, str]:
        solver.cancel_offer("resource", offer_id, body.signature)
        return {"id": offer_id, "state": "cancelled"}

    @app.get("/api/v1/accounts/{address}")
    def get_account(address: str) -> JSONResponse:
        """What an account's open offers may still take from its market deposit: a client adds
        this to an offer's price to know how much deposit it needs."""
        from eth_utils.address import is_address, to_checksum_address

        if not is_address(address):
            return JSONResponse({"error": f"{address!r} is not an address"}, status_code=400)
        signer = to_checksum_address(address)
        return JSONResponse(
            {
                "address": signer,
                "committed_by_job_offers": str(solver.committed(signer, JobOfferRow)),
                "committed_by_resource_offers": str(solver.committed(signer, ResourceOfferRow)),
            }
        )

    @app.get("/api/v1/deals")
    def list_deals(party: str | None = None) -> list[dict[str, Any]]:
        return [_deal(row) for row in solver.store.deals(party=_checksum_or_none(party))]

    @app.get("/api/v1/deals/{deal_id}")
    def get_deal(deal_id: str) -> JSONResponse:
        row = solver.store.deal_by_id(deal_id.lower())
        if row is None:
            return JSONResponse({"error": f"no deal {deal_id}"}, status_code=404)
        return JSONResponse(_deal(row))

    @app.get("/api/v1/events")
    async def events(
        party: str | None = Query(None, description="Only events naming this address."),
        after: int | None = Query(None, description="Resume after this event number."),
        last_event_id: str | None = Header(None),
    ) -> Response:
        try:
            start = after if after is not None else int(last_event_id or 0)
        except ValueError:
            return JSONResponse(
                {"error": f"Last-Event-ID {last_event_id!r} is not an event number"},
                status_code=400,
            )
        subscription = hub.subscribe(party.lower() if party else None)
        try:
            if start < 0:
                start = await asyncio.to_thread(solver.store.last_event_seq)
        except BaseException:
            hub.release(subscription)
            raise
        return _EventResponse(
            hub.stream(subscription, start, heartbeat_s), lambda: hub.release(subscription)
        )

    return app


class SolverServer(uvicorn.Server):
    """uvicorn's server for :func:`create_app`'s app: ends the event streams when it shuts down
    (uvicorn waits for every open response to finish first, and a stream would not)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        hub = getattr(getattr(self.config.app, "state", None), "hub", None)
        if isinstance(hub, EventHub):
            hub.close()
        await super().shutdown(sockets)


def serve(app: FastAPI, host: str, port: int, log_level: str = "warning") -> None:
    """Serve ``app`` on ``host:port`` until interrupted (SIGINT, SIGTERM)."""
    SolverServer(uvicorn.Config(app, host=host, port=port, log_level=log_level)).run()


class _EventResponse(StreamingResponse):
    """A server-sent event stream that gives its place back however it ends (even if it never
    started: the client left before the first byte)."""

    def __init__(self, content: Any, release: Callable[[], None]) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


class _BodyLimit:
    """Refuses a request body larger than its route takes with 413, before reading it whole: at
    once when ``Content-Length`` says so, else as soon as a chunked body passes the limit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = BODY_LIMITS.get(scope["path"].rstrip("/"), DEFAULT_BODY_LIMIT)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is None and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body
            return
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(scope, send, limit, declared.decode(errors="replace"))
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await _too_large(scope, send, limit, None)
                return
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then whatever the client sends next
    (a disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _too_large(scope: Scope, send: Send, limit: int, declared: str | None) -> None:
    size = f"of {declared} bytes " if declared is not None else ""
    route = f"{scope['method']} {scope['path']}"
    response = JSONResponse(
        {"error": f"request body {size}is larger than {limit} bytes, the most {route} takes"},
        status_code=413,
        headers={"Connection": "close"},
    )
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _offer(
    solver: Solver, model: type[JobOfferRow] | type[ResourceOfferRow], offer_id: str
) -> JSONResponse:
    row = solver.store.offer(model, offer_id.lower())
    if row is None:
        return JSONResponse({"error": f"no offer {offer_id}"}, status_code=404)
    deal = solver.store.deal_by_offer(row.id) if model is JobOfferRow else None
    return JSONResponse(
        {
            "id": row.id,
            "seq": row.seq,
            "state": row.state,
            "signer": row.signer,
            "offer": row.body,
            "deal": _deal(deal) if deal else None,
        }
    )


def _deal(row: DealRow) -> dict[str, Any]:
    return {
        "deal_id": row.deal_id,
        "state": row.state,
        "job_offer_id": row.job_offer_id,
        "resource_offer_id": row.resource_offer_id,
        "job_creator": row.job_creator,
        "provider": row.provider,
        "price": row.price,
        "deal": row.deal,
        "result_cid": row.result_cid,
        "tx_hash": row.tx_hash,
        "error": row.error,
    }


def _checksum_or_none(address: str | None) -> str | None:
    if address is None:
        return None
    from eth_utils.address import to_checksum_address

    try:
        return to_checksum_address(address)
    except ValueError:
        return address
