"""The solver's HTTP API (FastAPI): offers, deals and an event stream.

The protocol is declared in :mod:`lilypad.solver_api`: every route answers one of its models
(``response_model``), so ``/openapi.json`` documents what the solver really sends::

    POST /api/v1/job_offers                 JobSubmission (signed offer + job spec)
                                            -> 201 OfferAccepted
    POST /api/v1/resource_offers            SignedResourceOffer   -> 201 OfferAccepted
    POST /api/v1/resource_offers/slot       SlotOffers: one job slot, an offer per module, all
                                            with one nonce -> 201 SlotAccepted
    GET  /api/v1/job_offers/{id}            JobOfferView: its state and, once matched, its deal
    GET  /api/v1/resource_offers?module=&min_vram_gb=&gpu=&provider=&limit=&cursor=
                                            ResourceOfferPage: the open offers, oldest first
    GET  /api/v1/resource_offers/{id}       ResourceOfferView
    POST /api/v1/{job|resource}_offers/{id}/cancel  Cancellation: EIP-191 of cancel_message(id)
                                            -> Cancelled
    GET  /api/v1/accounts/{address}         Account: what its open offers commit
    GET  /api/v1/deals?party=&state=&module=&limit=&cursor=
                                            list[DealView], newest first; the next page in
                                            ``Link: <...>; rel="next"``
    GET  /api/v1/deals/{deal_id}            DealView
    POST /api/v1/deals/{deal_id}/logs       LogBatch: the running job's next stderr lines and
                                            progress, EIP-191-signed by the deal's provider
                                            -> LogsAccepted
    GET  /api/v1/deals/{deal_id}/logs?after=N&wait=S
                                            DealLogs: the lines after line N, waiting up to S
                                            seconds for one; only for the deal's job creator
                                            or provider (X-Lilypad-Timestamp and
                                            X-Lilypad-Signature: EIP-191 of log_read_message)
    GET  /api/v1/events?party=0x...         server-sent SolverEvents, only those naming
                                            ``party``; resumes after ``Last-Event-ID`` (or
                                            ``?after=N``; ``after=-1``: only events from now on)
    GET  /healthz                           Health

Errors are :class:`~lilypad.solver_api.ErrorBody`, ``{"error": "<one line>"}``, for every status:

* 400 a refused offer (bad signature, expired, used nonce, nothing backing it, a spec that does
  not render here, a timeout too short for the module) or cancellation, a malformed address or
  ``Last-Event-ID``;
* 401 a log read without a signature, or signed outside the time window;
* 402 the signer's deposit does not cover the offer on top of its open ones;
* 403 logs posted by another account than the deal's provider, or read by another than its
  job creator or provider;
* 404 unknown (offer, deal, or route); 409 duplicate; 422 malformed body or parameter (a
  listing's filter or cursor included);
* 413 a body larger than the route takes (:data:`BODY_LIMITS`), refused before it is read;
* 429 a signer (or a deal's log poster) over its rate (with ``Retry-After``), a signer with too
  many open offers, or a party with too many event streams (or waiting log reads) open;
* 503 the solver serves as many event streams as it takes.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import uvicorn
from fastapi import FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lilypad import __version__
from lilypad import solver_api as api
from lilypad.chain.crypto import is_address, to_checksum_address
from lilypad.errors import LilypadError
from solver.service import (
    DepositShort,
    InvalidFilter,
    InvalidRequest,
    NotAllowed,
    NotAuthenticated,
    RateLimited,
    Solver,
    TooManyOffers,
    UnknownObject,
)
from solver.store import Duplicate, JobOfferRow, ResourceOfferRow, deal_view
from solver.stream import EventHub, LogWaiters, StreamsFull, TooManyStreams

log = logging.getLogger("lilypad.solver")

HEARTBEAT_S = 15.0
#: The largest request body (bytes) each route takes, by path; a job offer carries its job spec,
#: whose tunables the module bounds (2,000 characters each by default). Other routes: DEFAULT.
BODY_LIMITS = {
    "/api/v1/job_offers": 256 * 1024,
    "/api/v1/resource_offers": 16 * 1024,
    # a slot: up to MAX_SLOT_OFFERS offers of about 1.5 KiB each
    "/api/v1/resource_offers/slot": 512 * 1024,
}
#: The largest body of a log batch: its lines, each cut at the most a line keeps (UTF-8: up
#: to 4 bytes a character, JSON-escaped control characters up to 6).
LOG_BODY_LIMIT = 256 * 1024
#: The largest body of any other route (a cancellation is about 150 bytes).
DEFAULT_BODY_LIMIT = 4 * 1024

#: The HTTP status of each error the solver raises on purpose (the first that matches).
_STATUS: tuple[tuple[tuple[type[LilypadError], ...], int], ...] = (
    ((RateLimited, TooManyOffers, TooManyStreams), 429),
    ((StreamsFull,), 503),
    ((Duplicate,), 409),
    ((NotAuthenticated,), 401),
    ((NotAllowed,), 403),
    ((DepositShort,), 402),
    ((UnknownObject,), 404),
    ((InvalidFilter,), 422),
    ((InvalidRequest,), 400),
)
_WHY = {
    400: "Refused: the message says which check failed and why.",
    401: "No signature, or one signed too long ago: sign again now.",
    403: "Signed by an account that is not the deal's (provider; job creator to read).",
    402: "The signer's market deposit does not cover this offer on top of its open ones.",
    404: "No such offer or deal at this solver.",
    409: "The offer, or another with its signer and nonce, is known already.",
    413: "The request body is larger than the route takes.",
    422: "The request is malformed: the message names the field.",
    429: "Too fast, too many open offers, or too many streams: see Retry-After.",
    500: "The solver failed.",
    503: "The solver serves as many event streams as it takes: try again later.",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route, for OpenAPI: each an :class:`~lilypad.solver_api.ErrorBody`."""
    return {
        status: {"model": api.ErrorBody, "description": _WHY[status]} for status in (*statuses, 500)
    }


_OFFER_ID = Path(description="The offer's id: its EIP-712 struct hash, 0x hex.")
_PARTY = Query(None, description="Only those naming this address.")
_MODULE = Query(
    None,
    max_length=300,
    description="Only those for this module: a built-in module's name (any of its versions), "
    "name:version, or a 0x module id.",
)
_LIMIT = Query(
    api.DEFAULT_PAGE, ge=1, le=api.MAX_PAGE, description=f"At most {api.MAX_PAGE} a page."
)
_CURSOR = Query(
    None,
    pattern=r"^[0-9]{1,18}$",
    description="Where the page starts: the previous page's next cursor, as it is.",
)


#: The most open offers and deals the dashboard reads.
DASHBOARD_OFFERS = 2000
DASHBOARD_DEALS = 50


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
    _error_handlers(app)
    _offer_routes(app, solver)
    _query_routes(app, solver)
    waiters = LogWaiters(max_streams, streams_per_party)
    # a read waiting for a running job's next line answers as soon as the job's result is on
    # chain (its log has ended): the job creator goes on at once, not after its long poll
    solver.add_deal_listener(waiters.posted)
    _log_routes(app, solver, waiters)
    _dashboard_routes(app, solver)

    @app.get(
        "/api/v1/events",
        status_code=200,
        response_model=api.SolverEvent,
        response_class=_EventResponse,
        responses=_errors(400, 422, 429, 503),
        summary="Server-sent events",
        description=_EVENTS_DOC,
    )
    async def events(
        party: str | None = _PARTY,
        after: int | None = Query(
            None, description="Resume after this event number; -1: only events from now on."
        ),
        last_event_id: str | None = Header(None, description="Resume after this event number."),
    ) -> _EventResponse:
        start = after if after is not None else _event_number(last_event_id)
        subscription = hub.subscribe(_address(party).lower() if party else None)
        try:
            position = None
            if start < 0:
                start = position = await asyncio.to_thread(solver.store.last_event_seq)
        except BaseException:
            hub.release(subscription)
            raise
        return _EventResponse(
            hub.stream(subscription, start, heartbeat_s, position=position),
            lambda: hub.release(subscription),
        )

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


_EVENTS_DOC = """The events naming ``party`` (every event, without), in order, as
``text/event-stream``: each is ``id: <seq>``, ``event: <kind>`` and ``data: <the event's JSON>``
(the schema below). A comment line (``: keep-alive``) comes after 15 s of silence. A stream
started from now on (``after=-1``) first names its position with a message of an ``id:`` only,
so a reconnection with ``Last-Event-ID`` misses nothing. ``after`` wins over ``Last-Event-ID``."""


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the event stream as what it is: ``text/event-stream`` whose
    messages carry a :data:`~lilypad.solver_api.SolverEvent` each (OpenAPI 3.2's ``itemSchema``
    for server-sent events, and ``schema`` for tools that read only that)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = FastAPI.openapi(app)
    event = TypeAdapter(api.SolverEvent).json_schema(
        ref_template="#/components/schemas/{model}", mode="serialization"
    )
    event.pop("$defs", None)  # FastAPI has put them in the components already
    answers = document["paths"]["/api/v1/events"]["get"]["responses"]
    for status, answer in answers.items():  # errors are JSON, as from every route
        if status != "200":
            answer["content"] = {"application/json": answer["content"].popitem()[1]}
    answers["200"]["content"] = {
        "text/event-stream": {
            "schema": {"type": "string", "description": "server-sent events"},
            "itemSchema": {
                "type": "object",
                "required": ["id", "event", "data"],
                "properties": {
                    "id": {"type": "string", "description": "the event's seq"},
                    "event": {"type": "string", "enum": [k.value for k in api.EventKind]},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": event,
                    },
                },
            },
        }
    }
    return document


def _error_handlers(app: FastAPI) -> None:
    """Every error answer is ``{"error": "<one line>"}``, whatever raised it."""

    @app.exception_handler(LilypadError)
    async def _lilypad_error(_: Request, exc: LilypadError) -> JSONResponse:
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
        headers = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = f"{max(1, round(exc.retry_after))}"
        return _error(str(exc), status, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"])
        return _error(f"{where}: {first['msg']}", 422)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(str(exc.detail), exc.status_code, exc.headers)

    @app.exception_handler(Exception)
    async def _failed(request: Request, exc: Exception) -> JSONResponse:
        # Logged by the server all the same; the client learns no more than that it failed.
        return _error(f"the solver failed on {request.method} {request.url.path}", 500)


def _error(message: str, status: int, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        api.ErrorBody(error=message).model_dump(mode="json"),
        status_code=status,
        headers=headers,
    )


def _offer_routes(app: FastAPI, solver: Solver) -> None:
    refused = (400, 402, 409, 413, 422, 429)

    @app.post("/api/v1/job_offers", status_code=201, responses=_errors(*refused))
    def post_job_offer(signed: api.JobSubmission) -> api.OfferAccepted:
        row = solver.submit_job_offer(signed)
        return api.OfferAccepted(id=row.id, state=api.OfferState(row.state), seq=row.seq)

    @app.post("/api/v1/resource_offers", status_code=201, responses=_errors(*refused))
    def post_resource_offer(signed: api.SignedResourceOffer) -> api.OfferAccepted:
        row = solver.submit_resource_offer(signed)
        return api.OfferAccepted(id=row.id, state=api.OfferState(row.state), seq=row.seq)

    @app.post("/api/v1/resource_offers/slot", status_code=201, responses=_errors(*refused))
    def post_slot(slot: api.SlotOffers) -> api.SlotAccepted:
        rows = solver.submit_slot(slot.offers)
        return api.SlotAccepted(
            offers=tuple(
                api.OfferAccepted(id=row.id, state=api.OfferState(row.state), seq=row.seq)
                for row in rows
            )
        )

    @app.get("/api/v1/job_offers/{offer_id}", responses=_errors(404, 422))
    def get_job_offer(offer_id: str = _OFFER_ID) -> api.JobOfferView:
        row, deal = _offer(solver, JobOfferRow, offer_id)
        return api.JobOfferView(
            id=row.id,
            seq=row.seq,
            state=api.OfferState(row.state),
            signer=row.signer,
            offer=api.JobSubmission.model_validate(row.body),
            deal=deal,
        )

    @app.get("/api/v1/resource_offers/{offer_id}", responses=_errors(404, 422))
    def get_resource_offer(offer_id: str = _OFFER_ID) -> api.ResourceOfferView:
        row, deal = _offer(solver, ResourceOfferRow, offer_id)
        return api.ResourceOfferView(
            id=row.id,
            seq=row.seq,
            state=api.OfferState(row.state),
            signer=row.signer,
            offer=api.SignedResourceOffer.model_validate(row.body),
            deal=deal,
        )

    @app.post("/api/v1/job_offers/{offer_id}/cancel", responses=_errors(400, 413, 422))
    def cancel_job_offer(body: api.Cancellation, offer_id: str = _OFFER_ID) -> api.Cancelled:
        solver.cancel_offer("job", offer_id.lower(), body.signature)
        return api.Cancelled(id=offer_id)

    @app.post("/api/v1/resource_offers/{offer_id}/cancel", responses=_errors(400, 413, 422))
    def cancel_resource_offer(body: api.Cancellation, offer_id: str = _OFFER_ID) -> api.Cancelled:
        solver.cancel_offer("resource", offer_id.lower(), body.signature)
        return api.Cancelled(id=offer_id)


def _query_routes(app: FastAPI, solver: Solver) -> None:
    @app.get("/healthz", responses=_errors())
    def health() -> api.Health:
        return api.Health(
            ok=True, version=__version__, chain_id=solver.chain_id, market=solver.market.address
        )

    @app.get("/api/v1/accounts/{address}", responses=_errors(400, 422))
    def get_account(address: str = Path(description="An Ethereum address.")) -> api.Account:
        """What an account's open offers may still take from its market deposit: a client adds
        this to an offer's price to know how much deposit it needs."""
        signer = _address(address)
        return api.Account(
            address=signer,
            committed_by_job_offers=solver.committed(signer, JobOfferRow),
            committed_by_resource_offers=solver.committed(signer, ResourceOfferRow),
        )

    @app.get("/api/v1/resource_offers", responses=_errors(422))
    def list_resource_offers(
        module: str | None = _MODULE,
        min_vram_gb: float | None = Query(
            None, ge=0, le=1024 * 1024, description="Only those with this much VRAM per GPU."
        ),
        gpu: str | None = Query(
            None,
            min_length=1,
            max_length=api.MAX_GPU_MODEL,
            description="Only those with a GPU whose model contains this (any case).",
        ),
        provider: str | None = Query(None, description="Only this provider's."),
        limit: int = _LIMIT,
        cursor: str | None = _CURSOR,
    ) -> api.ResourceOfferPage:
        """The open resource offers (pending, not past their expiry), oldest first: the market
        view. An offer for any module serves every ``module``."""
        return solver.market_offers(
            module=module,
            min_vram_gb=min_vram_gb,
            gpu=gpu,
            provider=_filter_address("provider", provider),
            limit=limit,
            cursor=cursor,
        )

    @app.get("/api/v1/deals", responses={200: {"headers": _NEXT_LINK}, **_errors(400, 422)})
    def list_deals(
        request: Request,
        response: Response,
        party: str | None = _PARTY,
        state: list[api.DealState] = Query([], description="Only those in one of these states."),
        module: str | None = _MODULE,
        limit: int = _LIMIT,
        cursor: str | None = _CURSOR,
    ) -> list[api.DealView]:
        """The deals, newest first: every deal, or those of ``party`` as job creator or
        provider; the next page is in ``Link``."""
        rows, following = solver.deal_page(
            party=_address(party) if party else None,
            states=state,
            module=module,
            limit=limit,
            cursor=cursor,
        )
        if following is not None:
            url = request.url.include_query_params(cursor=following)
            response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
        return [deal_view(row) for row in rows]

    @app.get("/api/v1/deals/{deal_id}", responses=_errors(404, 422))
    def get_deal(
        deal_id: str = Path(description="keccak256(abi.encode(deal)), 0x hex."),
    ) -> api.DealView:
        row = solver.store.deal_by_id(deal_id.lower())
        if row is None:
            raise UnknownObject(f"no deal {deal_id}")
        return deal_view(row)


def _dashboard_routes(app: FastAPI, solver: Solver) -> None:
    """The read-only dashboard: the network view of ``lilypad serve``'s, from what this solver
    holds (its public market view and newest deals; no key, no form, nothing to change)."""
    from fastapi.responses import HTMLResponse, RedirectResponse

    from lilypad.web import pages
    from lilypad.web.network import network_view

    pages.mount_static(app)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        offers: list[api.MarketOffer] = []
        cursor = None
        while len(offers) < DASHBOARD_OFFERS:
            page = solver.market_offers(limit=api.MAX_PAGE, cursor=cursor)
            offers.extend(page.offers)
            cursor = page.next_cursor
            if cursor is None:
                break
        rows, _ = solver.deal_page(limit=DASHBOARD_DEALS)
        view = network_view(offers[:DASHBOARD_OFFERS], [deal_view(row) for row in rows])
        return pages.solver_dashboard(view)


def _log_routes(app: FastAPI, solver: Solver, waiters: LogWaiters) -> None:
    deal_path = Path(description="keccak256(abi.encode(deal)), 0x hex.")

    @app.post("/api/v1/deals/{deal_id}/logs", responses=_errors(400, 403, 404, 413, 422, 429))
    def post_logs(batch: api.LogBatch, deal_id: str = deal_path) -> api.LogsAccepted:
        """The running job's next stderr lines and progress, from the deal's provider; what
        the solver keeps of a deal is bounded (the rest is counted as dropped)."""
        row, accepted = solver.post_logs(deal_id.lower(), batch)
        assert row.deal_id is not None
        waiters.posted(row.deal_id)
        return accepted

    @app.get("/api/v1/deals/{deal_id}/logs", responses=_errors(400, 401, 403, 404, 422, 429, 503))
    async def get_logs(
        deal_id: str = deal_path,
        after: int = Query(0, ge=0, le=2**62, description="Only the lines after this number."),
        wait: float = Query(
            0,
            ge=0,
            le=api.MAX_LOG_WAIT_S,
            description="Seconds to wait for a line when there is none yet (long poll).",
        ),
        timestamp: str | None = Header(
            None, alias=api.TIMESTAMP_HEADER, description="Unix seconds, now."
        ),
        signature: str | None = Header(
            None,
            alias=api.SIGNATURE_HEADER,
            description="EIP-191 of 'lilypad: read logs of deal <deal_id> at <timestamp>' by "
            "the deal's job creator or provider.",
        ),
    ) -> api.DealLogs:
        """A page of a deal's log lines, oldest first, for its job creator or provider only
        (logs can carry a prompt)."""
        key = deal_id.lower()
        row, reader = await asyncio.to_thread(solver.log_reader, key, timestamp, signature)
        page = await asyncio.to_thread(solver.deal_logs, row, after)
        if page.lines or page.ended or not wait:
            return page
        await waiters.wait(key, reader, wait)
        fresh = await asyncio.to_thread(solver.store.deal_by_id, key)
        return await asyncio.to_thread(solver.deal_logs, fresh or row, after)


def _offer(
    solver: Solver, model: type[JobOfferRow] | type[ResourceOfferRow], offer_id: str
) -> tuple[Any, api.DealView | None]:
    """An offer's row and its deal, if it has one."""
    row = solver.store.offer(model, offer_id.lower())
    if row is None:
        raise UnknownObject(f"no offer {offer_id}")
    store = solver.store
    deal = (
        store.deal_by_offer(row.id)
        if model is JobOfferRow
        else store.deal_by_resource_offer(row.id)
    )
    return row, deal_view(deal) if deal else None


def _address(value: str) -> str:
    """``value`` checksummed, or a 400 naming it."""
    if not is_address(value):
        raise InvalidRequest(
            f"{value!r} is not an address: 0x and 40 hex digits, in one case or checksummed"
        )
    return to_checksum_address(value)


def _filter_address(name: str, value: str | None) -> str | None:
    """A listing's address filter, checksummed, or a 422 naming it."""
    if value is None:
        return None
    if not is_address(value):
        raise InvalidFilter(
            f"{name} {value[:60]!r} is not an address: 0x and 40 hex digits, in one case or "
            "checksummed"
        )
    return to_checksum_address(value)


_NEXT_LINK = {
    "Link": {
        "description": 'The next page, as `<path?query>; rel="next"` (RFC 8288); absent on '
        "the last page.",
        "schema": {"type": "string"},
    }
}


def _event_number(last_event_id: str | None) -> int:
    """Where ``Last-Event-ID`` says to resume (0: from the first event)."""
    if not last_event_id:
        return 0
    if not last_event_id.isdigit():
        raise InvalidRequest(
            f"Last-Event-ID {last_event_id!r} is not an event number (the id of an event)"
        )
    return int(last_event_id)


class SolverServer(uvicorn.Server):
    """uvicorn's server for :func:`create_app`'s app: ends the event streams when it shuts down
    (uvicorn waits for every open response to finish first, and a stream would not)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        hub = getattr(getattr(self.config.app, "state", None), "hub", None)
        if isinstance(hub, EventHub):
            hub.close()
        await super().shutdown(sockets)


#: glibc's ``mallopt`` parameter for the most malloc arenas (``M_ARENA_MAX`` in malloc.h).
_M_ARENA_MAX = -8
#: The arenas the solver keeps: its request threads (40 of anyio's) and worker threads each
#: got an arena of their own by default (up to 8 per core), which fill with freed memory and
#: are rarely given back: its resident memory grew by ~40 KB a job in a 1,000-job soak, and by
#: ~6 KB with 2 (tests/e2e/test_soak.py). The GIL keeps them from contending for fewer.
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Keep at most ``arenas`` malloc arenas in this process (glibc), as ``MALLOC_ARENA_MAX``
    would, unless that variable is set (the operator's choice wins). Call it before threads
    start. Returns whether the limit was set (False: not glibc, or the variable is set)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not a C library with mallopt (macOS, musl's stub)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))


def serve(app: FastAPI, host: str, port: int, log_level: str = "warning") -> None:
    """Serve ``app`` on ``host:port`` until interrupted (SIGINT, SIGTERM)."""
    SolverServer(uvicorn.Config(app, host=host, port=port, log_level=log_level)).run()


class _EventResponse(StreamingResponse):
    """A server-sent event stream that gives its place back however it ends (even if it never
    started: the client left before the first byte)."""

    media_type = "text/event-stream"

    def __init__(self, content: Any, release: Callable[[], None]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache"})
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
        limit = _body_limit(scope["path"].rstrip("/"))
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


def _body_limit(path: str) -> int:
    if path.startswith("/api/v1/deals/") and path.endswith("/logs"):
        return LOG_BODY_LIMIT
    return BODY_LIMITS.get(path, DEFAULT_BODY_LIMIT)


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
    response = _error(
        f"request body {size}is larger than {limit} bytes, the most {route} takes",
        413,
        {"Connection": "close"},
    )
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
