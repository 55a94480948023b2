"""The solver's protocol, declared once: wire models, event kinds, states, and its client.

Every process that talks to the solver (job creator, provider, mediator, bridge) and the solver
itself (:mod:`solver.app`) use these models, so a producer and a consumer cannot drift apart
silently. This module imports no web3 (pydantic and httpx only), so ``lilypad run`` stays quick.

Routes (``/openapi.json`` of a running solver documents each with these models)::

    POST /api/v1/job_offers                 JobSubmission          -> 201 OfferAccepted
    POST /api/v1/resource_offers            SignedResourceOffer    -> 201 OfferAccepted
    POST /api/v1/resource_offers/slot       SlotOffers             -> 201 SlotAccepted
    GET  /api/v1/job_offers/{id}                                   -> JobOfferView
    GET  /api/v1/resource_offers?module=&min_vram_gb=&gpu=&provider=&limit=&cursor=
                                                                   -> ResourceOfferPage
    GET  /api/v1/resource_offers/{id}                              -> ResourceOfferView
    POST /api/v1/{job|resource}_offers/{id}/cancel  Cancellation   -> Cancelled
    GET  /api/v1/accounts/{address}                                -> Account
    GET  /api/v1/deals?party=&state=&module=&limit=&cursor=        -> list[DealView], newest
                                                                      first (Link: rel="next")
    GET  /api/v1/deals/{deal_id}                                   -> DealView
    POST /api/v1/deals/{deal_id}/logs       LogBatch (the provider's) -> LogsAccepted
    GET  /api/v1/deals/{deal_id}/logs?after=N&wait=S  (signed headers)   -> DealLogs
    GET  /api/v1/events?party=0x...&after=N text/event-stream of SolverEvent
    GET  /healthz                                                  -> Health

Amounts (prices, collateral, deposits, committed sums, nonces, the packed ``machine``: every
``uint96`` and ``uint256``) travel as decimal strings, which JavaScript cannot round as it rounds
JSON numbers above 2**53. The models read strings and, for one release, JSON integers too; they
always write strings. Every error body is :class:`ErrorBody` (``{"error": "..."}``).

Errors of the client (:class:`SolverClient`)::

    SolverError
    ├── SolverUnreachable              no answer: connection refused, timed out or broken
    └── SolverRefused                  an error status (``status``, and the solver's ``error``)
        ├── DepositShort               402: deposit more, then post again
        ├── NotFound (LookupError)     404: no such offer or deal
        ├── AlreadyKnown               409: that offer (or its signer's nonce) is known already
        ├── NotAuthenticated           401: a log read unsigned, or signed too long ago
        ├── NotAllowed                 403: signed by an account that is not the deal's party
        └── SolverBusy                 429 or 503: try again after ``retry_after`` seconds
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

import httpx
import httpx_sse
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

from lilypad import jobs
from lilypad.chain import offers
from lilypad.chain.crypto import keccak
from lilypad.chain.offers import Address, Bytes32
from lilypad.errors import SolverError
from lilypad.tls import verify_for

log = logging.getLogger("lilypad.solver_api")
_T = TypeVar("_T")

TIMEOUT_S = 10.0
#: Seconds a stream may stay silent before the reader reconnects (the solver sends a comment
#: line every 15 s of silence).
STREAM_READ_TIMEOUT_S = 60.0
#: Seconds between reconnections when the solver named none (``retry:``, ``Retry-After``).
RECONNECT_S = 1.0
#: The longest wait between reconnections.
MAX_RECONNECT_S = 30.0

# --------------------------------------------------------------------------------- amounts
_DIGITS = re.compile(r"[0-9]{1,78}")  # 2**256 has 78 digits
_DIGITS_PATTERN = "^[0-9]{1,78}$"


def _amount_below(bound: int, kind: str) -> BeforeValidator:
    """A validator of amounts below ``bound``: a decimal string or (for one release) a JSON
    integer becomes an int; anything else, or too much, is refused."""

    def parse(value: object) -> int:
        if isinstance(value, str) and _DIGITS.fullmatch(value):
            number = int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            shown = repr(value[:100] if isinstance(value, str) else value)
            raise ValueError(
                f'amount {shown} is not a decimal string of digits, e.g. "1000000000000000000"'
            )
        if not 0 <= number < bound:
            raise ValueError(f"amount {number} is not a {kind} (0 to {bound - 1})")
        return number

    return BeforeValidator(parse)


def _read_as(what: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": _DIGITS_PATTERN},
                {"type": "integer", "minimum": 0},
            ],
            "description": f"{what} as a decimal string (a JSON integer is still read)",
        },
        mode="validation",
    )


def _written_as(what: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "type": "string",
            "pattern": _DIGITS_PATTERN,
            "description": f"{what} as a decimal string",
        },
        mode="serialization",
    )


_WRITE = PlainSerializer(str, return_type=str, when_used="json")

#: A ``uint96`` amount in token base units (18 decimals): prices, collateral, fees. An int in
#: Python, a decimal string in JSON.
Amount96 = Annotated[
    int,
    _amount_below(2**96, "uint96"),
    _WRITE,
    _read_as("a uint96 in token base units"),
    _written_as("a uint96 in token base units"),
]
#: Any ``uint256``: the packed ``machine``, sums of amounts.
Amount256 = Annotated[
    int,
    _amount_below(2**256, "uint256"),
    _WRITE,
    _read_as("a uint256"),
    _written_as("a uint256"),
]
#: A nonce: any ``uint256`` but the largest, which the market reserves.
Nonce = Annotated[
    int,
    _amount_below(2**256 - 1, "nonce (the largest uint256 is reserved)"),
    _WRITE,
    _read_as("a uint256 nonce below 2**256 - 1"),
    _written_as("a uint256 nonce below 2**256 - 1"),
]


# ---------------------------------------------------------------------------------- states
class OfferState(StrEnum):
    """An offer's state at the solver."""

    PENDING = "pending"  # in the order book, waiting for a match
    MATCHED = "matched"  # paired; the deal is being created on chain
    DEALT = "dealt"  # a deal on chain uses it
    CANCELLED = "cancelled"  # withdrawn by its signer
    EXPIRED = "expired"
    REJECTED = "rejected"  # the chain refused it (nonce used, funds gone...)
    SUPERSEDED = "superseded"  # another offer of its slot (its signer and nonce) was matched;
    # pending again if that deal fails without the provider's fault

    def is_terminal(self) -> bool:
        return self in (
            OfferState.DEALT,
            OfferState.CANCELLED,
            OfferState.EXPIRED,
            OfferState.REJECTED,
        )


class DealState(StrEnum):
    """A deal's state at the solver: from the match (before the chain has it) to its end.

    Not :class:`lilypad.chain.light.DealState`, the market contract's own states.
    """

    MATCHED = "matched"  # written before createDeal is sent
    CREATED = "created"
    RESULT_SUBMITTED = "result_submitted"
    ACCEPTED = "accepted"
    PAID = "paid"
    CHALLENGED = "challenged"
    MEDIATED = "mediated"
    TIMED_OUT = "timed_out"
    FAILED = "failed"  # createDeal reverted; the offers were released or rejected

    def is_terminal(self) -> bool:
        return self in (
            DealState.ACCEPTED,
            DealState.PAID,
            DealState.MEDIATED,
            DealState.TIMED_OUT,
            DealState.FAILED,
        )


#: Which side an offer is on: ``job`` (a job creator's) or ``resource`` (a provider's).
Side = Literal["job", "resource"]


class EventKind(StrEnum):
    """Every kind of event the solver's stream sends (the SSE ``event:`` field and the data's
    ``kind``). Offer events carry :class:`OfferEvent`, deal events :class:`DealEvent`."""

    JOB_OFFER_ADDED = "job_offer.added"  # taken, state pending
    JOB_OFFER_PENDING = "job_offer.pending"  # back in the book: its deal failed, not by its fault
    JOB_OFFER_DEALT = "job_offer.dealt"  # a deal on chain uses it (deal_id)
    JOB_OFFER_CANCELLED = "job_offer.cancelled"
    JOB_OFFER_EXPIRED = "job_offer.expired"
    JOB_OFFER_REJECTED = "job_offer.rejected"  # its deal failed by its fault (reason)
    RESOURCE_OFFER_ADDED = "resource_offer.added"
    RESOURCE_OFFER_PENDING = "resource_offer.pending"
    RESOURCE_OFFER_DEALT = "resource_offer.dealt"
    RESOURCE_OFFER_CANCELLED = "resource_offer.cancelled"
    RESOURCE_OFFER_EXPIRED = "resource_offer.expired"
    RESOURCE_OFFER_REJECTED = "resource_offer.rejected"
    RESOURCE_OFFER_SUPERSEDED = "resource_offer.superseded"  # its slot was taken by a sibling
    DEAL_MATCHED = "deal.matched"  # paired; createDeal is being sent
    DEAL_CREATED = "deal.created"  # on chain (deal, tx_hash)
    DEAL_FAILED = "deal.failed"  # createDeal reverted (error)
    DEAL_RESULT_SUBMITTED = "deal.result_submitted"  # the provider's result (result_cid)
    DEAL_ACCEPTED = "deal.accepted"
    DEAL_PAID = "deal.paid"
    DEAL_CHALLENGED = "deal.challenged"
    DEAL_MEDIATED = "deal.mediated"
    DEAL_TIMED_OUT = "deal.timed_out"

    @classmethod
    def for_offer(cls, side: Side, state: OfferState) -> EventKind:
        """The event of an offer moving to ``state`` (``job_offer.dealt``).

        Raises:
            ValueError: no event is sent for that state (``matched``: see ``deal.matched``).
        """
        return cls(f"{side}_offer.{state.value}")

    @classmethod
    def added(cls, side: Side) -> EventKind:
        """The event of a new offer."""
        return cls.JOB_OFFER_ADDED if side == "job" else cls.RESOURCE_OFFER_ADDED

    @classmethod
    def for_deal(cls, state: DealState) -> EventKind:
        """The event of a deal moving to ``state`` (``deal.created``)."""
        return cls(f"deal.{state.value}")

    def is_deal(self) -> bool:
        return self.value.startswith("deal.")


OfferEventKind = Literal[
    EventKind.JOB_OFFER_ADDED,
    EventKind.JOB_OFFER_PENDING,
    EventKind.JOB_OFFER_DEALT,
    EventKind.JOB_OFFER_CANCELLED,
    EventKind.JOB_OFFER_EXPIRED,
    EventKind.JOB_OFFER_REJECTED,
    EventKind.RESOURCE_OFFER_ADDED,
    EventKind.RESOURCE_OFFER_PENDING,
    EventKind.RESOURCE_OFFER_DEALT,
    EventKind.RESOURCE_OFFER_CANCELLED,
    EventKind.RESOURCE_OFFER_EXPIRED,
    EventKind.RESOURCE_OFFER_REJECTED,
    EventKind.RESOURCE_OFFER_SUPERSEDED,
]
DealEventKind = Literal[
    EventKind.DEAL_MATCHED,
    EventKind.DEAL_CREATED,
    EventKind.DEAL_FAILED,
    EventKind.DEAL_RESULT_SUBMITTED,
    EventKind.DEAL_ACCEPTED,
    EventKind.DEAL_PAID,
    EventKind.DEAL_CHALLENGED,
    EventKind.DEAL_MEDIATED,
    EventKind.DEAL_TIMED_OUT,
]


# ------------------------------------------------------------------------ offers and deals
class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True)


#: The most items one page of a listing holds (``limit`` above it is a 422), and how many a page
#: holds when ``limit`` is not given.
MAX_PAGE = 500
DEFAULT_PAGE = 100
#: The longest GPU model name an offer may advertise, and the most GPUs it may name.
MAX_GPU_MODEL = 100
MAX_GPUS = 16
#: Text shown to people as it is: no control characters (a terminal would act on them).
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"


class GpuInfo(_Wire):
    """One GPU of a provider's machine, as the provider advertises it."""

    model: str = Field(
        min_length=1,
        max_length=MAX_GPU_MODEL,
        pattern=_PRINTABLE,
        description="as the driver names it",
    )
    vram_mb: int = Field(ge=0, lt=2**32, description="its memory in MiB")


# The chain's models, with their amounts as decimal strings on the wire: each is the chain model
# (isinstance holds, hashing and signing are the same), only its JSON differs.
class JobOffer(offers.JobOffer):
    """:class:`lilypad.chain.offers.JobOffer` on the wire."""

    machine: Amount256 = 0
    max_price: Amount96
    nonce: Nonce


class ResourceOffer(offers.ResourceOffer):
    """:class:`lilypad.chain.offers.ResourceOffer` on the wire."""

    machine: Amount256 = 0
    price: Amount96
    collateral: Amount96
    nonce: Nonce


class SignedResourceOffer(offers.SignedResourceOffer):
    """``POST /api/v1/resource_offers``: a resource offer and its provider's signature, with
    what the market view shows of it beyond the signed lanes (neither field is signed; the
    solver refuses values that disagree with the offer)."""

    offer: ResourceOffer
    module_reference: str | None = Field(
        None,
        min_length=1,
        max_length=300,
        pattern=_PRINTABLE,
        description="the module reference (name:version) whose keccak256 is offer.module",
    )
    gpus: tuple[GpuInfo, ...] = Field(
        (),
        max_length=MAX_GPUS,
        description="the machine's GPUs by model: as many as its gpus lane, none with less "
        "VRAM than its vram_mb lane",
    )


#: The most offers one slot may hold (one per module version it serves).
MAX_SLOT_OFFERS = 256


class SlotOffers(_Wire):
    """``POST /api/v1/resource_offers/slot``: one job slot of a provider, offered for several
    modules at once: one signed offer per module, all of one provider with one nonce.

    The market makes at most one deal per (signer, nonce), so the slot runs one job at a time
    whatever the solver does; the solver takes the slot's offers together (all or none), counts
    the slot's collateral once against the deposit, and once one of them is matched takes the
    others out of the book (``superseded``) until that deal is made or fails.
    """

    offers: tuple[SignedResourceOffer, ...] = Field(min_length=1, max_length=MAX_SLOT_OFFERS)


class JobSubmission(jobs.JobSubmission):
    """``POST /api/v1/job_offers``: a signed job offer with the job spec it commits to
    (:class:`lilypad.jobs.JobSubmission`).

    ``target_provider`` is advisory and not signed, like ``avoid_providers``: the solver matches
    the offer with that provider only (``lilypad run --target``), and the job creator checks the
    deal's provider all the same.
    """

    offer: JobOffer
    target_provider: Address | None = Field(
        None, description="the only provider this offer may be matched with (advisory)"
    )


class Deal(offers.Deal):
    """:class:`lilypad.chain.offers.Deal` on the wire: the settlement terms ``DealCreated``
    emits; ``deal_id`` is ``keccak256(abi.encode(deal))``."""

    price: Amount96
    collateral: Amount96
    mediation_fee: Amount96


# ----------------------------------------------------------------------- requests, answers
class ErrorBody(_Wire):
    """Every error answer: one line saying what failed, the value, and what to do."""

    error: str


class Health(_Wire):
    """``GET /healthz``."""

    ok: bool
    version: str
    chain_id: int
    market: Address


class OfferAccepted(_Wire):
    """An offer the solver took (201)."""

    id: Bytes32 = Field(description="the offer's EIP-712 struct hash")
    state: OfferState
    seq: int = Field(description="the offer's arrival number at this solver")


class SlotAccepted(_Wire):
    """A slot the solver took (201): its offers, in the order posted."""

    offers: tuple[OfferAccepted, ...]


class Cancellation(_Wire):
    """``POST .../cancel``: the offer signer's EIP-191 signature of
    :func:`lilypad.jobs.cancel_message` of the offer id, as 0x hex."""

    signature: str


class Cancelled(_Wire):
    """A withdrawn offer."""

    id: Bytes32
    state: Literal[OfferState.CANCELLED] = OfferState.CANCELLED


class Account(_Wire):
    """What an account's open offers may still take from its market deposit: add an offer's
    amount to know the deposit it needs."""

    address: Address
    committed_by_job_offers: Amount256
    committed_by_resource_offers: Amount256


class DealView(_Wire):
    """A deal as the solver keeps it, from its match to its end on chain."""

    deal_id: Bytes32 | None = Field(description="set once the deal is on chain")
    state: DealState
    job_offer_id: Bytes32
    resource_offer_id: Bytes32
    job_creator: Address
    provider: Address
    price: Amount96
    deal: Deal | None = Field(description="the settlement terms, once the deal is on chain")
    result_cid: str | None = Field(description="the result's CID bytes as 0x hex, once submitted")
    tx_hash: str | None = Field(description="the transaction of the deal's latest change")
    error: str | None = Field(description="why createDeal failed (state failed)")


class JobOfferView(_Wire):
    """``GET /api/v1/job_offers/{id}``: a job offer as posted, its state and its deal."""

    id: Bytes32
    seq: int
    state: OfferState
    signer: Address
    offer: JobSubmission
    deal: DealView | None


class ResourceOfferView(_Wire):
    """``GET /api/v1/resource_offers/{id}``: a resource offer as posted, its state and its
    deal."""

    id: Bytes32
    seq: int
    state: OfferState
    signer: Address
    offer: SignedResourceOffer
    deal: DealView | None


class MarketOffer(_Wire):
    """One open resource offer of the market view (``GET /api/v1/resource_offers``)."""

    id: Bytes32 = Field(description="the offer's EIP-712 struct hash")
    seq: int = Field(description="its arrival number: the listing's order")
    provider: Address
    module_reference: str | None = Field(
        description="the module it serves (name:version); null: any module, or one this "
        "solver cannot name from its hash"
    )
    machine: offers.Machine = Field(description="the signed machine lanes, decoded")
    gpus: tuple[GpuInfo, ...] = Field(description="the GPUs by model, as advertised")
    offer: SignedResourceOffer = Field(description="the offer as posted, with its signature")


class ResourceOfferPage(_Wire):
    """A page of open resource offers, oldest first."""

    offers: tuple[MarketOffer, ...]
    next_cursor: str | None = Field(
        description="pass as ``cursor`` for the next page; null: this page is the last"
    )


@dataclass(frozen=True)
class DealPage:
    """A page of deals, newest first (``GET /api/v1/deals``), and the cursor of the next page
    (from the answer's ``Link: <...>; rel="next"``; None on the last page)."""

    deals: list[DealView]
    next_cursor: str | None


# -------------------------------------------------------------------------------- job logs
#: A module's progress line: ``step 3/30``, or with the stage it is in, ``video 0: step 3/30``
#: (what the built-in modules print on stderr). The whole line must match.
PROGRESS_LINE = re.compile(
    r"(?:(?P<label>[^\x00-\x1f:]{1,100}): )?step (?P<done>[0-9]{1,9})/(?P<total>[0-9]{1,9})"
)
#: The most characters of one log line the provider sends (a longer line is cut).
MAX_LOG_LINE = 1000
#: The most lines in one post of a provider, and in one page of a read.
MAX_LOG_BATCH = 200
#: The longest a log read waits for new lines (``wait``), in seconds.
MAX_LOG_WAIT_S = 30.0
#: How far (seconds) a log read's timestamp may be from the solver's clock.
LOG_AUTH_WINDOW_S = 60
#: The headers of a log read: the reader's timestamp (Unix seconds) and its EIP-191 signature
#: of :func:`log_read_message`.
TIMESTAMP_HEADER = "X-Lilypad-Timestamp"
SIGNATURE_HEADER = "X-Lilypad-Signature"

_LogLine = Annotated[str, Field(max_length=MAX_LOG_LINE)]


class LogProgress(_Wire):
    """A module's progress: ``done`` of ``total`` steps of its stage ``label``."""

    done: int = Field(ge=0, le=10**9)
    total: int = Field(ge=1, le=10**9)
    label: str | None = Field(None, max_length=100, pattern=_PRINTABLE)


def parse_progress(line: str) -> LogProgress | None:
    """The progress a log line tells (:data:`PROGRESS_LINE`), or None."""
    match = PROGRESS_LINE.fullmatch(line)
    if match is None or int(match["total"]) == 0 or int(match["done"]) > int(match["total"]):
        return None
    return LogProgress(done=int(match["done"]), total=int(match["total"]), label=match["label"])


class LogBatch(_Wire):
    """``POST /api/v1/deals/{deal_id}/logs``: the next stderr lines of a running job, numbered
    from ``from_seq`` (the first line of the job is 1), and its latest progress, signed by the
    deal's provider (EIP-191 of :func:`log_batch_message`)."""

    from_seq: int = Field(ge=1, le=2**62)
    lines: tuple[_LogLine, ...] = Field(max_length=MAX_LOG_BATCH)
    progress: LogProgress | None = None
    signature: str = Field(max_length=200)


class LogsAccepted(_Wire):
    """What the solver kept of a batch."""

    next_seq: int = Field(description="the number the provider's next line has")
    kept: int = Field(description="lines of this batch kept")
    dropped: int = Field(description="lines of the deal dropped so far (over the bounds)")


class LogLine(_Wire):
    seq: int
    text: str


class DealLogs(_Wire):
    """``GET /api/v1/deals/{deal_id}/logs``: a page of the lines after ``after``, oldest first."""

    deal_id: Bytes32
    state: DealState
    lines: tuple[LogLine, ...]
    progress: LogProgress | None = Field(description="the latest progress the provider sent")
    dropped: int = Field(
        description="lines the solver did not keep (over its bounds) or the provider did not send"
    )
    ended: bool = Field(description="the deal has a result or has ended: no more lines come")


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def log_batch_message(deal_id: str, batch: LogBatch) -> str:
    """The text the provider signs (EIP-191) for a batch: it names the deal, the first line's
    number and the keccak256 of the lines and progress, so a batch cannot be moved or changed."""
    body = {
        "from_seq": batch.from_seq,
        "lines": list(batch.lines),
        "progress": batch.progress.model_dump(mode="json") if batch.progress else None,
    }
    digest = keccak(_canonical(body)).hex()
    deal = deal_id.lower()
    return f"lilypad: logs of deal {deal} from line {batch.from_seq}, keccak256 0x{digest}"


def log_read_message(deal_id: str, timestamp: int) -> str:
    """The text a deal's job creator or provider signs (EIP-191) to read its logs."""
    return f"lilypad: read logs of deal {deal_id.lower()} at {timestamp}"


# ---------------------------------------------------------------------------------- events
class OfferChange(_Wire):
    """What an offer event says: the offer and the state it moved to."""

    id: Bytes32
    state: OfferState
    deal_id: Bytes32 | None = Field(None, description="the deal using it (dealt)")
    reason: str | None = Field(None, description="why the chain refused it (rejected)")
    others: tuple[Bytes32, ...] = Field(
        (),
        max_length=MAX_SLOT_OFFERS,
        description="the other offers of its slot that moved to this state with it (a "
        "provider's slot is listed, superseded, relisted and withdrawn as one: one event)",
    )

    def ids(self) -> tuple[str, ...]:
        """Every offer this change moved: its own and its slot's others."""
        return (self.id, *self.others)


class OfferEvent(OfferChange):
    """An event about an offer (``job_offer.*``, ``resource_offer.*``)."""

    seq: int = Field(description="the event's number: its SSE id")
    kind: OfferEventKind


class DealEvent(DealView):
    """An event about a deal (``deal.*``): the deal as it is after the change."""

    seq: int = Field(description="the event's number: its SSE id")
    kind: DealEventKind


#: One event of the stream, by ``kind``.
SolverEvent = Annotated[OfferEvent | DealEvent, Field(discriminator="kind")]
_EVENT: TypeAdapter[OfferEvent | DealEvent] = TypeAdapter(SolverEvent)


def parse_event(data: str | bytes | dict[str, Any]) -> OfferEvent | DealEvent:
    """An event from its JSON (an SSE ``data`` field) or its dict.

    Raises:
        pydantic.ValidationError: not an event of a kind this version knows.
    """
    if isinstance(data, dict):
        return _EVENT.validate_python(data)
    return _EVENT.validate_json(data)


# ---------------------------------------------------------------------------------- errors
class SolverUnreachable(SolverError):
    """The solver did not answer: connection refused, timed out, or broken mid-answer."""


class SolverRefused(SolverError):
    """The solver answered with an error status.

    Attributes:
        status: The HTTP status.
        error: The solver's own message (its ``{"error"}``).
    """

    def __init__(self, message: str, status: int, error: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error = error or message


class DepositShort(SolverRefused):
    """402: the signer's market deposit does not cover the offer on top of its open ones."""


class NotFound(SolverRefused, LookupError):
    """404: no such offer or deal at this solver."""


class AlreadyKnown(SolverRefused):
    """409: that offer, or another with its signer and nonce, is known already."""


class NotAuthenticated(SolverRefused):
    """401: a deal's logs read without a signature, or with one too old (sign again)."""


class NotAllowed(SolverRefused):
    """403: signed by an account that may not read (or post) this deal's logs."""


class SolverBusy(SolverRefused):
    """429 or 503: too many offers or streams for now.

    Attributes:
        retry_after: Seconds to wait before trying again, from ``Retry-After`` (None if absent).
    """

    def __init__(
        self, message: str, status: int, error: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message, status, error)
        self.retry_after = retry_after


_REFUSALS: dict[int, type[SolverRefused]] = {
    401: NotAuthenticated,
    402: DepositShort,
    403: NotAllowed,
    404: NotFound,
    409: AlreadyKnown,
    429: SolverBusy,
    503: SolverBusy,
}


def refusal(response: httpx.Response, what: str) -> SolverRefused:
    """The error of an error answer to ``what`` (``POST /api/v1/job_offers``)."""
    try:
        body = response.read()
    except httpx.HTTPError:
        body = b""
    try:
        error = ErrorBody.model_validate_json(body).error
    except ValidationError:
        error = body.decode(errors="replace").strip()[:300] or response.reason_phrase
    message = f"solver: {what} -> {response.status_code}: {error}"
    cls = _REFUSALS.get(response.status_code, SolverRefused)
    if cls is SolverBusy:
        return SolverBusy(
            message, response.status_code, error, retry_after(response.headers.get("retry-after"))
        )
    return cls(message, response.status_code, error)


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` (RFC 9110: seconds, or an HTTP date) as seconds from now; None if absent
    or malformed. Seconds with a fraction (``0.1``, which some servers send) are read too."""
    if value is None:
        return None
    text = value.strip()
    if re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,6})?", text):
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# ---------------------------------------------------------------------------------- client
class SolverClient:
    """The solver's HTTP API: one method per route, answering the models above.

    This is the boundary where httpx's errors become :class:`SolverUnreachable`, error
    answers :class:`SolverRefused` (or a subclass, by status), and an answer that is not its
    route's model a plain :class:`~lilypad.errors.SolverError` (pydantic's errors stay inside).

    Args:
        url: The solver's base URL (``http://127.0.0.1:8080``).
        timeout: Seconds for each request.
        transport: An httpx transport in place of the network (tests).
    """

    def __init__(
        self,
        url: str,
        timeout: float = TIMEOUT_S,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, verify=verify_for(self.url), transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SolverClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- routes
    def health(self) -> Health:
        return self._call(Health.model_validate_json, "GET", "/healthz")

    def post_job_offer(self, submission: jobs.JobSubmission) -> OfferAccepted:
        """Post a signed job offer with its spec."""
        body = _wire(JobSubmission, submission)
        return self._call(
            OfferAccepted.model_validate_json, "POST", "/api/v1/job_offers", json=body
        )

    def post_resource_offer(self, signed: offers.SignedResourceOffer) -> OfferAccepted:
        """List a signed resource offer (one job slot)."""
        body = _wire(SignedResourceOffer, signed)
        return self._call(
            OfferAccepted.model_validate_json, "POST", "/api/v1/resource_offers", json=body
        )

    def post_slot(self, signed: Sequence[offers.SignedResourceOffer]) -> SlotAccepted:
        """List one job slot: a signed offer per module, all with one nonce
        (:class:`SlotOffers`)."""
        body = SlotOffers(offers=tuple(_wire_offer(o) for o in signed)).model_dump(mode="json")
        return self._call(
            SlotAccepted.model_validate_json, "POST", "/api/v1/resource_offers/slot", json=body
        )

    def job_offer(self, offer_id: str) -> JobOfferView:
        """A job offer as posted, its state and, once matched, its deal."""
        return self._call(JobOfferView.model_validate_json, "GET", f"/api/v1/job_offers/{offer_id}")

    def resource_offer(self, offer_id: str) -> ResourceOfferView:
        return self._call(
            ResourceOfferView.model_validate_json, "GET", f"/api/v1/resource_offers/{offer_id}"
        )

    def cancel_offer(self, side: Side, offer_id: str, signature: str) -> Cancelled:
        """Withdraw a pending offer; ``signature`` is its signer's EIP-191 signature of
        ``lilypad.jobs.cancel_message(offer_id)``, as 0x hex."""
        return self._call(
            Cancelled.model_validate_json,
            "POST",
            f"/api/v1/{side}_offers/{offer_id}/cancel",
            json=Cancellation(signature=signature).model_dump(mode="json"),
        )

    def account(self, address: str) -> Account:
        """What ``address``'s open offers may still take from its deposit."""
        return self._call(Account.model_validate_json, "GET", f"/api/v1/accounts/{address}")

    def resource_offers(
        self,
        *,
        module: str | None = None,
        min_vram_gb: float | None = None,
        gpu: str | None = None,
        provider: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> ResourceOfferPage:
        """One page of the open resource offers, oldest first: those serving ``module``
        (``name`` or ``name:version``; an offer for any module serves every one), with at least
        ``min_vram_gb`` per GPU, a GPU model containing ``gpu`` (any case), of ``provider``.
        ``limit`` is at most :data:`MAX_PAGE`; ``cursor`` is a page's ``next_cursor``."""
        params = _params(
            module=module,
            min_vram_gb=min_vram_gb,
            gpu=gpu,
            provider=provider,
            limit=limit,
            cursor=cursor,
        )
        return self._call(
            ResourceOfferPage.model_validate_json, "GET", "/api/v1/resource_offers", params=params
        )

    def all_resource_offers(
        self, *, most: int = 10 * MAX_PAGE, **filters: Any
    ) -> Iterator[MarketOffer]:
        """Every open resource offer the filters of :meth:`resource_offers` take, page after
        page, up to ``most`` of them."""
        cursor, given = None, 0
        while given < most:
            page = self.resource_offers(**filters, limit=min(MAX_PAGE, most - given), cursor=cursor)
            yield from page.offers[: most - given]
            given += len(page.offers)
            cursor = page.next_cursor
            if cursor is None:
                return

    def deals(
        self,
        party: str | None = None,
        *,
        state: Sequence[DealState] = (),
        module: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> list[DealView]:
        """The newest deals (:meth:`deal_page`'s first page, without its cursor)."""
        return self.deal_page(party, state=state, module=module, limit=limit, cursor=cursor).deals

    def deal_page(
        self,
        party: str | None = None,
        *,
        state: Sequence[DealState] = (),
        module: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> DealPage:
        """One page of deals, newest first: every deal, or those of ``party`` (as job creator
        or provider), in one of ``state``, for ``module`` (``name`` or ``name:version``)."""
        params = _params(party=party, module=module, limit=limit, cursor=cursor)
        params["state"] = [DealState(s).value for s in state]
        what = "GET /api/v1/deals"
        response = self._send("GET", "/api/v1/deals", params=params)
        deals = self._read(_DEALS.validate_json, response.content, what)
        link = response.links.get("next", {}).get("url")
        next_cursor = httpx.URL(link).params.get("cursor") if link else None
        return DealPage(deals, next_cursor)

    def deal(self, deal_id: str) -> DealView:
        return self._call(DealView.model_validate_json, "GET", f"/api/v1/deals/{deal_id}")

    def post_logs(self, deal_id: str, batch: LogBatch) -> LogsAccepted:
        """Relay a running job's stderr lines (the deal's provider only)."""
        return self._call(
            LogsAccepted.model_validate_json,
            "POST",
            f"/api/v1/deals/{deal_id}/logs",
            json=batch.model_dump(mode="json"),
        )

    def deal_logs(
        self, deal_id: str, sign: Callable[[str], str], *, after: int = 0, wait: float = 0
    ) -> DealLogs:
        """The deal's log lines after line ``after`` (at most :data:`MAX_LOG_BATCH`); with
        ``wait``, the solver waits up to that many seconds for one. ``sign`` makes the EIP-191
        signature (0x hex) of a text by the deal's job creator or provider."""
        timestamp = int(time.time())
        headers = {
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(log_read_message(deal_id, timestamp)),
        }
        return self._call(
            DealLogs.model_validate_json,
            "GET",
            f"/api/v1/deals/{deal_id}/logs",
            params=_params(after=after, wait=wait or None),
            headers=headers,
            timeout=wait + self._http.timeout.read if self._http.timeout.read else None,
        )

    def events(
        self,
        party: str | None = None,
        *,
        after: int = 0,
        reconnect: bool = True,
        read_timeout: float = STREAM_READ_TIMEOUT_S,
    ) -> EventStream:
        """The events naming ``party`` (all, without) after event ``after``: ``0`` from the
        first, ``-1`` from now on. See :class:`EventStream`."""
        return EventStream(
            self._http, party, after=after, reconnect=reconnect, read_timeout=read_timeout
        )

    # ---------------------------------------------------------------------- transport
    def _call(self, read: Callable[[bytes], _T], method: str, path: str, **kwargs: Any) -> _T:
        """One request, its answer read by ``read`` (a model's ``model_validate_json``).

        Raises:
            SolverUnreachable: no answer.
            SolverRefused: an error answer (a subclass by status).
            SolverError: an answer that is not the model this version reads (not a solver, or
                one of another protocol version).
        """
        return self._read(read, self._send(method, path, **kwargs).content, f"{method} {path}")

    def _read(self, read: Callable[[bytes], _T], answer: bytes, what: str) -> _T:
        try:
            return read(answer)
        except ValidationError as exc:
            raise SolverError(
                f"the answer of {self.url} to {what} is not what this version of "
                f"lilypad reads: {_first(exc)}",
                hint="is solver_url in the network profile a Lilypad solver of this version?",
            ) from None

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request and its answer, an error answer raised (see :meth:`_call`)."""
        what = f"{method} {path}"
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise SolverUnreachable(
                f"cannot reach the solver at {self.url} ({what}): {exc or type(exc).__name__}",
                hint="is `lilypad solver` running, and is solver_url in the network profile right?",
            ) from exc
        if response.is_error:
            raise refusal(response, what)
        return response


def _params(**values: object) -> dict[str, Any]:
    """The query parameters given (None: left out)."""
    return {name: value for name, value in values.items() if value is not None}


_DEALS: TypeAdapter[list[DealView]] = TypeAdapter(list[DealView])


def _wire_offer(value: offers.SignedResourceOffer) -> SignedResourceOffer:
    if isinstance(value, SignedResourceOffer):
        return value
    return SignedResourceOffer.model_validate(value.model_dump())


def _wire(model: type[BaseModel], value: BaseModel) -> dict[str, Any]:
    """``value`` (a chain model, or already a wire one) as the JSON body ``model`` writes."""
    if not isinstance(value, model):
        value = model.model_validate(value.model_dump())
    return value.model_dump(mode="json")


class EventStream:
    """The solver's server-sent events (WHATWG HTML, "Server-sent events"), as an iterator of
    :class:`OfferEvent` and :class:`DealEvent`, each once and in order.

    Lines are parsed by httpx-sse (``id:``, ``event:``, ``data:`` over several lines, ``retry:``,
    comments, any line ending). On a dropped connection, a silent one (``read_timeout``), a 429
    or a 503, the stream waits (``retry:``, ``Retry-After``, or :data:`RECONNECT_S` doubling up
    to :data:`MAX_RECONNECT_S`) and reconnects with ``Last-Event-ID``, dropping any event it has
    had already. Another error answer raises :class:`SolverRefused`. :meth:`close`, from any
    thread, ends the iteration.

    It connects on the first ``next()``, or at :meth:`open`: a stream from now on
    (``after=-1``) that must miss nothing of what the caller does next opens first.

    A caller that waits on a deadline of its own (a job creator polling the chain beside the
    stream) reads it with :meth:`get` instead of iterating: a thread then reads the stream into
    a buffer, and ``get(timeout)`` waits at most ``timeout`` seconds for the next event.

    Attributes:
        last_id: The number of the last event had (the solver names its position even before
            the first event of a stream from now on); None until known.
    """

    def __init__(
        self,
        http: httpx.Client,
        party: str | None,
        *,
        after: int = 0,
        reconnect: bool = True,
        read_timeout: float = STREAM_READ_TIMEOUT_S,
    ) -> None:
        self._http = http
        self._party = party
        self._from_now = after < 0
        self.last_id: int | None = None if after < 0 else after
        self._reconnect = reconnect
        self._timeout = httpx.Timeout(TIMEOUT_S, read=read_timeout)
        self._retry_s: float | None = None  # the server's retry:, once it names one
        self._closed = threading.Event()
        self._response: httpx.Response | None = None
        self._events = self._follow()
        self._buffer: queue.SimpleQueue[OfferEvent | DealEvent | _Ended] = queue.SimpleQueue()
        self._reader: threading.Thread | None = None
        self._reader_lock = threading.Lock()

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> OfferEvent | DealEvent:
        return next(self._events)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def open(self) -> EventStream:
        """Connect now, unless connected.

        Raises:
            SolverUnreachable: no answer.
            SolverRefused: an error answer (:class:`SolverBusy` for 429 and 503).
        """
        if self._response is None:
            self._response = self._connect()
        return self

    def get(self, timeout: float) -> OfferEvent | DealEvent | None:
        """The next event, waiting at most ``timeout`` seconds; None if none came by then (or the
        stream was closed). Read a stream either with this or by iterating it, not both.

        The first call starts a thread that reads the stream, reconnecting as iteration does,
        into a buffer; :meth:`close` ends it.

        Raises:
            SolverRefused: the stream ended with an error answer (at this call and every later
                one, once the events before it are had).
            SolverUnreachable: the solver could not be reached, and ``reconnect`` is off.
        """
        with self._reader_lock:
            if self._reader is None:
                self._reader = threading.Thread(
                    target=self._fill, daemon=True, name="solver-events"
                )
                self._reader.start()
        try:
            item = self._buffer.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if isinstance(item, _Ended):
            self._buffer.put(item)  # every later call raises it too
            raise item.error
        return item

    def _fill(self) -> None:
        """The reader thread of :meth:`get`: every event into the buffer, then the error that
        ended the stream, if one did."""
        try:
            for event in self._events:
                self._buffer.put(event)
        except Exception as exc:  # handed to the caller by get(), not lost in this thread
            self._buffer.put(_Ended(exc))

    def close(self) -> None:
        """End the stream (from any thread: a blocked read returns at once)."""
        self._closed.set()
        response = self._response
        if response is not None:
            _hang_up(response)
            response.close()

    def _follow(self) -> Iterator[OfferEvent | DealEvent]:
        """Every event, over as many connections as it takes."""
        pause = RECONNECT_S
        while not self._closed.is_set():
            try:
                for event in self._read(self._response or self._connect()):
                    pause = RECONNECT_S
                    yield event
                wait = self._retry_s if self._retry_s is not None else pause
            except SolverBusy as exc:
                if not self._reconnect:
                    raise
                wait = exc.retry_after if exc.retry_after is not None else pause
            except SolverUnreachable:
                if not self._reconnect or self._closed.is_set():
                    raise
                wait = self._retry_s if self._retry_s is not None else pause
            if not self._reconnect:
                return
            pause = min(2 * pause, MAX_RECONNECT_S)
            self._closed.wait(min(wait, MAX_RECONNECT_S))

    def _connect(self) -> httpx.Response:
        """One connection, its answer's head read."""
        params: dict[str, str | int] = {"party": self._party} if self._party else {}
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = str(self.last_id)
        elif self._from_now:
            params["after"] = -1
        request = self._http.build_request(
            "GET", "/api/v1/events", params=params, headers=headers, timeout=self._timeout
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise SolverUnreachable(
                f"cannot reach the solver's event stream at {self._http.base_url}: "
                f"{exc or type(exc).__name__}"
            ) from exc
        if response.is_error:
            try:
                raise refusal(response, "GET /api/v1/events")
            finally:
                response.close()
        return response

    def _read(self, response: httpx.Response) -> Iterator[OfferEvent | DealEvent]:
        """The events of one connection, until it ends."""
        self._response = response
        if self._closed.is_set():  # closed while it connected: close() did not see it
            self._response = None
            response.close()
            return
        try:
            for sse in httpx_sse.EventSource(response).iter_sse():
                event = self._event(sse)
                if event is not None:
                    yield event
        except httpx_sse.SSEError as exc:  # answered, but not with an event stream
            raise SolverRefused(
                f"solver: GET /api/v1/events: {exc}", response.status_code
            ) from None
        except (httpx.HTTPError, httpx.StreamError) as exc:
            if self._closed.is_set():
                return  # closed under the read
            raise SolverUnreachable(
                f"event stream of {self._http.base_url} broke: {exc or type(exc).__name__}"
            ) from exc
        finally:
            self._response = None
            response.close()

    def _event(self, sse: httpx_sse.ServerSentEvent) -> OfferEvent | DealEvent | None:
        """The event of one SSE message, or None: a message without data (the solver naming
        its position), one already had, or one this version cannot read."""
        if sse.retry is not None and sse.retry >= 0:
            self._retry_s = sse.retry / 1000
        seq = int(sse.id) if sse.id.isdigit() else None
        if seq is not None and self.last_id is not None and seq <= self.last_id:
            return None  # had already (a reconnection resent it)
        if seq is not None:
            self.last_id = seq
        if not sse.data:
            return None
        try:
            return parse_event(sse.data)
        except ValidationError as exc:
            # A newer solver's event kind, or a broken one: skip it, keep the stream.
            log.warning("skipping solver event %s (%s): %s", sse.id, sse.event, _first(exc))
            return None


def _hang_up(response: httpx.Response) -> None:
    """Shut the answer's socket down, so that a read blocked on it in another thread returns
    now: closing a socket does not wake a thread blocked in ``recv`` on it (Linux), shutting it
    down does. httpx names the connection in the ``network_stream`` response extension."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):  # closed already
            sock.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True)
class _Ended:
    """In :class:`EventStream`'s buffer: the error that ended the stream."""

    error: Exception


def _first(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"[:200]


__all__ = [
    "MAX_PAGE",
    "Account",
    "AlreadyKnown",
    "Amount96",
    "Amount256",
    "Cancellation",
    "Cancelled",
    "Deal",
    "DealEvent",
    "DealPage",
    "DealState",
    "DealView",
    "DepositShort",
    "ErrorBody",
    "EventKind",
    "EventStream",
    "GpuInfo",
    "Health",
    "JobOffer",
    "JobOfferView",
    "JobSubmission",
    "MarketOffer",
    "Nonce",
    "NotFound",
    "OfferAccepted",
    "OfferChange",
    "OfferEvent",
    "OfferState",
    "ResourceOffer",
    "ResourceOfferPage",
    "ResourceOfferView",
    "SignedResourceOffer",
    "SolverBusy",
    "SolverClient",
    "SolverEvent",
    "SolverRefused",
    "SolverUnreachable",
    "parse_event",
]
