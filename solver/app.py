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
                                            resumes after ``Last-Event-ID`` (or ``?after=N``)
    GET  /healthz

Errors are JSON ``{"error": "<one line>"}``: 400 for a refused offer, 404 unknown, 409 duplicate,
422 malformed body, 429 (with ``Retry-After``) when a signer is over its rate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from lilypad import __version__
from lilypad.chain.offers import SignedResourceOffer
from lilypad.errors import LilypadError
from lilypad.jobs import JobSubmission
from solver.service import DepositShort, OfferRejected, RateLimited, Solver
from solver.store import DealRow, Duplicate, JobOfferRow, ResourceOfferRow

HEARTBEAT_S = 15.0


class Cancellation(BaseModel):
    signature: str


class OfferAccepted(BaseModel):
    id: str
    state: str
    seq: int


def create_app(solver: Solver) -> FastAPI:
    """The ASGI app serving ``solver``; start and stop the solver around it."""
    app = FastAPI(title="Lilypad solver", version=__version__)
    app.state.solver = solver

    @app.exception_handler(LilypadError)
    async def _lilypad_error(_: Request, exc: LilypadError) -> JSONResponse:
        status, headers = 500, {}
        if isinstance(exc, RateLimited):
            status, headers = 429, {"Retry-After": f"{max(1, round(exc.retry_after))}"}
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
                "committed_by_job_offers": str(solver.store.committed(signer, JobOfferRow)),
                "committed_by_resource_offers": str(
                    solver.store.committed(signer, ResourceOfferRow)
                ),
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
        request: Request,
        party: str | None = Query(None, description="Only events naming this address."),
        after: int | None = Query(None, description="Resume after this event number."),
        last_event_id: str | None = Header(None),
    ) -> StreamingResponse:
        start = after if after is not None else int(last_event_id or 0)
        if start < 0:
            start = solver.store.last_event_seq()
        stream = _event_stream(request, solver, party.lower() if party else None, start)
        return StreamingResponse(
            stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return app


async def _event_stream(
    request: Request, solver: Solver, party: str | None, start: int
) -> AsyncIterator[bytes]:
    seq = start
    waited = 0.0
    while not await request.is_disconnected():
        batch = await asyncio.to_thread(solver.store.events_after, seq, party)
        for item in batch:
            seq = item.seq
            yield f"id: {item.seq}\nevent: {item.kind}\ndata: {item.to_json()}\n\n".encode()
        if batch:
            waited = 0.0
            continue
        await asyncio.to_thread(_wait_for_change, solver, 0.5)
        waited += 0.5
        if waited >= HEARTBEAT_S:
            waited = 0.0
            yield b": keep-alive\n\n"


def _wait_for_change(solver: Solver, timeout: float) -> None:
    with solver.events_changed:
        solver.events_changed.wait(timeout)


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
