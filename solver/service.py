"""The solver: takes signed offers, matches them, creates deals on chain and follows them.

:class:`Solver` ties the parts together:

* offers arrive through :meth:`Solver.submit_job_offer` / :meth:`Solver.submit_resource_offer`
  (the HTTP API calls them), are checked (signature, rate per signer, expiry, nonce, that
  something backs them, open offers and deposit per signer, and for a job offer that its spec
  renders here and its timeout leaves the provider enough time), stored, and put in the
  :class:`~solver.matching.OrderBook`;
* a matcher thread runs :meth:`Solver.match_once` whenever something changed (an offer posted,
  relisted or cancelled, a chain event) or the next offer expires, and otherwise sleeps (up to
  :data:`IDLE_S`): offers past their expiry are marked expired, matches are taken out of the
  book and written to the store *first*, then sent to ``JobMarket.createDeals`` in one
  transaction; offers of a refused deal that are not at fault go back to the book;
* a follower thread reads the market's events (``DealCreated``, ``ResultSubmitted``...) and keeps
  each deal's state, resuming from the block it had reached after a restart;
* on start, :meth:`Solver.recover` rebuilds the book from the store and settles any match that
  was written but whose transaction outcome is unknown (the nonce tells whether it reached the
  chain), so a killed solver neither loses an offer nor sends a deal twice.

Locks. No lock is held across a chain call, so a slow chain (or a slow module fetch) never
stops the API:

* ``_lock`` guards the order book and the set of matches being sent: in-memory work, plus the
  one database write that must agree with the book (recording matches as they leave it);
* a signer's lock (one of :data:`SIGNER_LOCKS`, by address) serializes that signer's submissions
  and cancellations, so two offers posted at once cannot both count on one deposit, and a
  cancellation never races the listing of the same offer; it is held across the deposit read.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from eth_account.signers.local import LocalAccount

from lilypad import modules
from lilypad import solver_api as api
from lilypad.chain.crypto import eip191_digest, recover
from lilypad.chain.events import ChainEvent, EventFollower
from lilypad.chain.market import JobMarketClient
from lilypad.chain.offers import (
    MIN_TIMEOUT_MARGIN_S,
    ZERO_BYTES32,
    Deal,
    JobOffer,
    Machine,
    SignedJobOffer,
    SignedResourceOffer,
    min_job_timeout,
    module_id,
)
from lilypad.chain.offers import ResourceOffer as ChainResourceOffer
from lilypad.errors import (
    ChainError,
    ChainUnavailable,
    ConfigError,
    ContractReverted,
    ModuleError,
    ModuleSourceError,
    SolverError,
)
from lilypad.jobs import (
    MAX_AVOIDED,
    ChainClock,
    JobSubmission,
    SpecMismatch,
    cancel_message,
    check_submission,
    rerender,
)
from lilypad.modules import JobSpec, version_key
from lilypad.modules.sources import parse_reference
from lilypad.solver_api import DealState, OfferState, Side
from solver import matching
from solver.matching import ANY_MODULE, JobRequest, OrderBook, ResourceOffer
from solver.store import (
    DealRow,
    Duplicate,
    JobOfferRow,
    LogBounds,
    ResourceOfferRow,
    Store,
    market_columns,
)

log = logging.getLogger("lilypad.solver")

#: An offer must stay valid at least this long after it arrives, or it is refused.
MIN_LIFETIME_S = 10
#: How often the follower's place is saved while the blocks it reads hold no market event.
SAVE_S = 5.0
#: The longest the matcher sleeps when nothing wakes it and no offer expires sooner: a bound on
#: what a missed wake-up or a jump of the chain's clock (a dev chain moved ahead) can delay.
IDLE_S = 2.0
#: How often the matcher looks for matches of unknown outcome when no createDeals has failed to
#: confirm since (one that did is looked at again after ``poll_interval``).
SETTLE_S = 5.0
#: How many matches go into one createDeals transaction.
BATCH = 50
#: Locks that serialize one signer's offer submissions (a signer maps to one by its address).
SIGNER_LOCKS = 64
#: How long a mediator's registration, once read from the chain, is believed.
MEDIATOR_TTL_S = 60.0
#: How soon a mediator is read again when the chain could not be read (it is assumed registered
#: meanwhile: the chain has the final word at createDeals).
MEDIATOR_RETRY_S = 5.0
#: The most mediators (and signers, in the rate limiter) remembered; the least recently used
#: are forgotten first.
CACHE_SIZE = 10_000

Model = type[JobOfferRow] | type[ResourceOfferRow]
K = TypeVar("K")
V = TypeVar("V")


class InvalidRequest(SolverError):
    """A request the solver cannot take as it is (HTTP 400); the message says why."""

    exit_code = 2


class InvalidFilter(InvalidRequest):
    """A listing's filter or cursor that names nothing the solver can look up (HTTP 422); the
    message names the parameter, the value and what is allowed."""


class OfferRejected(InvalidRequest):
    """An offer (or a cancellation) failed a check; the message says which and why."""


class UnknownObject(SolverError, LookupError):
    """No offer or deal by that id here (HTTP 404)."""

    exit_code = 2


class DepositShort(OfferRejected):
    """The signer's market deposit does not cover this offer on top of its open ones (HTTP 402:
    a client tops up and posts again)."""


class TooManyOffers(OfferRejected):
    """The signer already has as many open offers as the solver keeps for one signer (HTTP
    429: cancel some, or wait until they are matched or expire)."""


class RateLimited(SolverError):
    """A signer sent offers (or a deal's provider its logs) faster than allowed."""

    def __init__(self, signer: str, retry_after: float, what: str = "offers") -> None:
        super().__init__(
            f"{signer} is sending {what} too fast; retry in {retry_after:.1f}s",
        )
        self.retry_after = retry_after


class NotAuthenticated(SolverError):
    """A deal's logs asked for without a signature, or with one outside the time window
    (HTTP 401); the message says what to sign."""

    exit_code = 2


class NotAllowed(SolverError):
    """Signed by an account that is not the deal's job creator or provider (HTTP 403)."""

    exit_code = 2


class RateLimiter:
    """A token bucket per signer address (not per IP: one signer cannot hide behind many).

    At most ``max_signers`` buckets are kept; the least recently used go first (a forgotten
    signer starts again with a full bucket, which is all it would have had after a quiet spell).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_signers: int = CACHE_SIZE,
    ) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self.max_signers = max_signers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, signer: str, what: str = "offers") -> None:
        with self._lock:
            now = self._clock()
            saved = self._buckets.pop(signer, None)
            tokens, last = saved or (float(self.burst), now)
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1:
                if saved is not None:
                    self._buckets[signer] = saved
                raise RateLimited(signer, (1 - tokens) / self.rate, what)
            self._buckets[signer] = (tokens - 1, now)
            while len(self._buckets) > self.max_signers:
                self._buckets.popitem(last=False)


class ExpiringCache(Generic[K, V]):
    """A thread-safe map whose entries expire, holding at most ``max_size`` of them (the least
    recently used are dropped first)."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._items: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K, now: float) -> V | None:
        """The value, if it is there and has not expired by ``now``."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[1] <= now:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: K, value: V, expires_at: float) -> None:
        with self._lock:
            self._items[key] = (value, expires_at)
            self._items.move_to_end(key)
            while len(self._items) > self.max_size:
                self._items.popitem(last=False)


@dataclass(frozen=True)
class SolverConfig:
    """How a solver runs.

    Attributes:
        confirmations: Blocks an event must be buried under before the solver acts on it.
        start_block: The first block to read events from when the store has no position yet.
        rate: Offers per second each signer may send on average; ``burst`` at once.
        poll_interval: Seconds between chain polls, and before a createDeals whose outcome is
            unknown is settled from the chain. (Matching passes run when something changed.)
        max_open_offers: The most open (pending or matched) offers of each kind one signer may
            have; more are refused until some are matched, cancelled or expire.
        any_module_source: Take job offers for modules in local folders, local or ``file://``
            git repositories and non-https git URLs. Off, the solver renders only built-in
            modules and https git repositories: a job offer could otherwise make it read paths
            on its own host, or connect with its ssh keys. For tests and private networks.
        log_rate: Log posts per second each deal's provider may send on average;
            ``log_burst`` at once (more: 429 with ``Retry-After``).
        log_bounds: How many log lines (and bytes) the solver keeps of each deal.
    """

    confirmations: int = 0
    start_block: int = 0
    rate: float = 5.0
    burst: int = 50
    poll_interval: float = 0.5
    max_open_offers: int = 1000
    any_module_source: bool = False
    log_rate: float = 2.0
    log_burst: int = 5
    log_bounds: LogBounds = field(default_factory=LogBounds)


_CHAIN_STATES = {
    "ResultSubmitted": DealState.RESULT_SUBMITTED,
    "ResultAccepted": DealState.ACCEPTED,
    "PaymentClaimed": DealState.PAID,
    "ResultChallenged": DealState.CHALLENGED,
    "MediationResolved": DealState.MEDIATED,
    "DealTimedOut": DealState.TIMED_OUT,
}


class Solver:
    """The matching service. Thread-safe: the HTTP API calls it from many threads."""

    def __init__(
        self,
        store: Store,
        market: JobMarketClient,
        account: LocalAccount,
        config: SolverConfig = SolverConfig(),
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.store, self.market, self.account, self.config = store, market, account, config
        # Offers expire in chain time, which a dev chain may hold ahead of the wall clock.
        self._clock = clock or ChainClock(market)
        self._book = OrderBook()
        self._lock = threading.Lock()  # guards the book and _sending; see the module docstring
        self._sending: set[str] = set()  # job offer ids of matches whose createDeals is in flight
        self._signer_locks = [threading.Lock() for _ in range(SIGNER_LOCKS)]
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._limiter = RateLimiter(config.rate, config.burst)
        self._log_limiter = RateLimiter(config.log_rate, config.log_burst)
        self._mediator_cache: ExpiringCache[str, bool] = ExpiringCache(CACHE_SIZE)
        self._collateral_rule: tuple[int, int] | None = None  # the market's: immutable
        self._saved_block = (-1, 0.0)  # the follower's next block as last saved, and when
        self._settle_due = time.monotonic() + SETTLE_S  # when _settle_unknown runs next
        self._listeners: list[Callable[[], None]] = []
        self._deal_listeners: list[Callable[[str], None]] = []
        self.chain_id = market.chain.chain_id

    # -------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Recover state, then run the matcher and the chain follower in the background."""
        self.recover()
        for name, target in (("matcher", self._match_loop), ("follower", self._follow_loop)):
            thread = threading.Thread(target=target, name=f"solver-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Have ``callback()`` called, from any thread, whenever new events may be in the
        store. It must be quick and must not raise (the event stream bridges it to its loop)."""
        self._listeners.append(callback)

    def add_deal_listener(self, callback: Callable[[str], None]) -> None:
        """Have ``callback(deal_id)`` called, from the chain follower's thread, once a deal's
        state on chain has changed (a result, an acceptance, a challenge, a timeout) and the
        store says so: what waits on the deal (a read of its log) looks again. It must be quick
        and must not raise."""
        self._deal_listeners.append(callback)

    def recover(self) -> None:
        """Rebuild the order book from the store (marking what expired meanwhile) and settle
        matches of unknown outcome.

        Raises:
            ConfigError: the store belongs to another market or chain (its offers, deals and
                chain position would be wrong here).
        """
        market = f"{self.chain_id}:{self.market.address}"
        saved = self.store.get_meta("market")
        if saved is None:
            self.store.set_meta("market", market)
        elif saved != market:
            raise ConfigError(
                f"the solver's database belongs to market {saved} (chain id:address), not {market}",
                hint="give this market a database of its own (--db)",
            )
        now = self._clock()
        offers, jobs = [], []
        for row in self.store.offers(ResourceOfferRow, OfferState.PENDING):
            if row.expires_at <= now:
                self._mark_expired(ResourceOfferRow, row.id, row.signer)
            else:
                offers.append(self._resource_request(row))
        for row in self.store.offers(JobOfferRow, OfferState.PENDING):
            if row.expires_at <= now:
                self._mark_expired(JobOfferRow, row.id, row.signer)
            else:
                jobs.append(self._job_request(row))
        book = OrderBook()
        for offer in offers:
            book.add_offer(offer)
        for job in jobs:
            book.add_job(job)
        with self._lock:
            self._book = book
        self._settle_unknown()

    # ----------------------------------------------------------------------------- offers
    def submit_job_offer(self, signed: JobSubmission) -> JobOfferRow:
        """Check, store and queue a job offer with its job spec.

        Raises:
            OfferRejected: bad signature, expired, nonce used, a maximum price of 0, a spec the
                offer does not commit to or that does not render here, a timeout too short
                for the module.
            DepositShort: the deposit does not cover it on top of the signer's open offers.
            TooManyOffers: the signer has too many open job offers.
            RateLimited: the signer is over its rate.
            Duplicate: already known.
        """
        offer = signed.offer
        signer = offer.job_creator
        try:
            check_submission(signed)
        except SpecMismatch as exc:
            raise OfferRejected(str(exc)) from None
        self._check_new(JobOfferRow, offer.struct_hash())
        self._check_offer(offer, signer, signed.signature, "job offer")
        if offer.max_price == 0:
            raise OfferRejected(
                f"job offer of {signer} with nonce {offer.nonce} has maximum price 0: nothing "
                "would pay a provider; sign one with a maximum price above 0"
            )
        # Before the spec is rendered (a git module is fetched): an unfunded key stops here.
        self._check_open(signer, JobOfferRow, offer.max_price, "its maximum price")
        self._check_spec(offer, self._rerender(signed.spec))
        mediators = self._mediators(offer.mediators)
        row = JobOfferRow(max_price=str(offer.max_price), **self._row_fields(signed, offer))
        with self._signer_lock(signer):
            self._check_open(signer, JobOfferRow, offer.max_price, "its maximum price")
            row.seq = self.store.add_offer(row, [signer])
            request = _job_request(row, offer, mediators)
            with self._lock:
                self._book.add_job(request)
        self._notify()
        return row

    def submit_resource_offer(self, signed: SignedResourceOffer) -> ResourceOfferRow:
        """Check, store and list a resource offer (one job slot, for its module).

        Raises:
            OfferRejected: bad signature, expired, nonce used, no collateral.
            DepositShort, TooManyOffers, RateLimited, Duplicate: as for job offers.
        """
        return self.submit_slot([signed])[0]

    def submit_slot(self, offers: Sequence[SignedResourceOffer]) -> list[ResourceOfferRow]:
        """Check, store and list the offers of one job slot: one per module, all of one
        provider with one nonce, so the market makes one deal of them at most. They are taken
        together or refused together; the slot's collateral (its largest) counts once against
        the deposit, and the slot counts once against the signer's rate.

        Raises:
            OfferRejected: offers of several signers or nonces, or two for one module; a bad
                signature, expired, nonce used, no collateral.
            DepositShort, TooManyOffers, RateLimited, Duplicate: as for job offers.
        """
        wires = [
            o
            if isinstance(o, api.SignedResourceOffer)
            else api.SignedResourceOffer.model_validate(o.model_dump())
            for o in offers
        ]
        first = wires[0].offer
        signer = first.provider
        _check_slot([w.offer for w in wires])
        # once per slot what the slot's offers share (one query for them all, one chain read
        # of the nonce); each offer's own signature, as createDeals checks the one it uses
        self._check_new(ResourceOfferRow, *(w.offer.struct_hash() for w in wires))
        for wire in wires:
            _check_advertised(wire)
            self._check_signature(wire.offer, signer, wire.signature, "resource offer")
            self._check_collateral(wire.offer)
        self._limiter.take(signer)
        for wire in wires:
            self._check_fresh(signer, wire.offer.nonce, wire.offer.expiry, chain=wire is wires[0])
        collateral = max(w.offer.collateral for w in wires)
        rows, requests = [], []
        for wire in wires:
            vram_mb, gpu_models = market_columns(wire)
            rows.append(
                ResourceOfferRow(
                    collateral=str(wire.offer.collateral),
                    vram_mb=vram_mb,
                    gpu_models=gpu_models,
                    **self._row_fields(wire, wire.offer),
                )
            )
        mediators = {w.offer.mediators: self._mediators(w.offer.mediators) for w in wires}
        with self._signer_lock(signer):
            self._check_open(
                signer, ResourceOfferRow, collateral, "its collateral", count=len(rows)
            )
            self.store.add_slot(rows)
            for row, wire in zip(rows, wires, strict=True):
                requests.append(_resource_request(row, wire.offer, mediators[wire.offer.mediators]))
            with self._lock:
                for request in requests:
                    self._book.add_offer(request)
        self._notify()
        return rows

    def _check_collateral(self, offer: ChainResourceOffer) -> None:
        signer = offer.provider
        if offer.collateral == 0:
            raise OfferRejected(
                f"resource offer of {signer} with nonce {offer.nonce} has collateral 0: nothing "
                "would answer for its result; sign one with collateral"
            )
        required = self._required_collateral(offer.price)
        if offer.collateral < required:
            # the chain would refuse its deals (CollateralTooLow); say so now, not at a match
            raise OfferRejected(
                f"resource offer of {signer} with nonce {offer.nonce} has collateral "
                f"{offer.collateral}, below the market's minimum of {required} at price "
                f"{offer.price} (the larger of its minimum collateral and its collateral "
                "multiple times the price)"
            )

    def _check_new(self, model: Model, *offer_ids: str) -> None:
        """An offer posted again is a duplicate (409), checked first: its first post may have
        made a deal since, which uses its nonce and commits the deposit it would be checked
        against (a client retrying a post whose answer it lost must hear "known")."""
        known = self.store.known(model, offer_ids)
        for offer_id in offer_ids:
            if offer_id in known:
                raise Duplicate(f"offer {offer_id} is already known")

    def _check_offer(
        self, offer: JobOffer | ChainResourceOffer, signer: str, signature: str, what: str
    ) -> None:
        """The checks every offer passes, cheapest first: signature, the signer's rate, expiry
        and nonce."""
        self._check_signature(offer, signer, signature, what)
        self._limiter.take(signer)
        self._check_fresh(signer, offer.nonce, offer.expiry)

    def _row_fields(
        self, signed: SignedJobOffer | SignedResourceOffer, offer: JobOffer | ChainResourceOffer
    ) -> dict[str, Any]:
        signer = offer.job_creator if isinstance(offer, JobOffer) else offer.provider
        return {
            "id": offer.struct_hash(),
            "signer": signer,
            "nonce": str(offer.nonce),
            "module": offer.module,
            "expires_at": offer.expiry,
            "state": OfferState.PENDING.value,
            "body": signed.model_dump(mode="json"),
            "created_at": self._clock(),
        }

    def cancel_offer(self, kind: Side, offer_id: str, signature: str) -> None:
        """Withdraw a pending offer (a resource offer with the other offers of its slot);
        ``signature`` is its signer's EIP-191 signature of ``cancel_message(offer_id)``.

        Raises:
            OfferRejected: no such offer, a malformed signature or another signer's, or the
                offer is no longer pending.
        """
        model: Model = JobOfferRow if kind == "job" else ResourceOfferRow
        row = self.store.offer(model, offer_id)
        if row is None:
            raise OfferRejected(f"no {kind} offer {offer_id}")
        signer = _signer(cancel_message(offer_id), signature, "cancellation", OfferRejected)
        if signer != row.signer:
            raise OfferRejected(f"cancellation is signed by {signer}, not by {row.signer}")
        with self._signer_lock(row.signer):
            with self._lock:
                if model is JobOfferRow:
                    listed = self._book.remove_job(offer_id)
                else:  # with the other offers of its slot
                    listed = self._book.is_open(offer_id)
                    if listed:
                        self._book.remove_slot(offer_id)
            if not listed:
                state = self.store.offer(model, offer_id).state
                if state == OfferState.PENDING.value:  # taken out a moment ago
                    state = "being matched or expiring"
                raise OfferRejected(
                    f"{kind} offer {offer_id} is {state}; only a pending offer can be cancelled"
                )
            slot = OfferState.PENDING if model is ResourceOfferRow else None
            self.store.set_offer_state(
                model, offer_id, OfferState.CANCELLED, [row.signer], slot=slot
            )
        self._notify()

    # --------------------------------------------------------------------------- matching
    def match_once(self) -> list[DealRow]:
        """Expire what has expired, match what can be matched now, record the matches, and
        create their deals (the transaction is sent without holding the book)."""
        now = self._clock()
        self._expire(now)
        with self._lock:
            matches = self._book.match(now)
            if not matches:
                return []
            rows = [self._deal_row(m, now) for m in matches]
            try:
                self.store.record_matches(rows)
            except Exception:
                for match in matches:  # not recorded: as if never matched
                    self._book.unmatch(match.job_id)
                raise
            # Out of the book: a deal uses the offer (its slot's other offers are superseded),
            # or _deal_failed puts them back.
            for match in matches:
                self._book.settle(match.job_id)
                self._book.remove_slot(match.offer_id)
            self._sending.update(row.job_offer_id for row in rows)
        self._notify()
        try:
            for start in range(0, len(rows), BATCH):
                self._create_deals(rows[start : start + BATCH])
        finally:
            with self._lock:
                self._sending.difference_update(row.job_offer_id for row in rows)
        self._notify()
        return rows

    def _expire(self, now: float) -> None:
        """Take offers past their expiry out of the book and mark them expired."""
        with self._lock:
            jobs, offers = self._book.expire(now)
        for job in jobs:
            self._mark_expired(JobOfferRow, job.id, job.creator)
        for offer in offers:
            self._mark_expired(ResourceOfferRow, offer.id, offer.provider)
        if jobs or offers:
            self._notify()

    def _mark_expired(self, model: Model, offer_id: str, signer: str) -> None:
        self.store.set_offer_state(
            model, offer_id, OfferState.EXPIRED, [signer], expected=OfferState.PENDING
        )

    def _create_deals(self, rows: Sequence[DealRow]) -> None:
        pairs = [self._pair(row) for row in rows]
        try:
            deals, receipt = self.market.create_deals(self.account, pairs)
        except ContractReverted as exc:
            if len(rows) > 1:  # all or none: find the pair(s) at fault one by one
                for row in rows:
                    self._create_deals([row])
                return
            self._deal_failed(rows[0], exc)
            return
        except ChainError as exc:
            # The chain is unreachable or the transaction's fate is unknown: keep the rows as
            # ``matched``; recovery settles them from the nonces once the chain answers.
            log.warning("createDeals not confirmed (%s); will settle from the chain", exc)
            self._settle_soon()
            return
        for row, deal in zip(rows, deals, strict=True):
            self._deal_created(row.job_offer_id, deal, receipt.tx_hash)

    def _deal_created(self, job_offer_id: str, deal: Deal, tx_hash: str | None) -> None:
        row = self.store.update_deal(
            job_offer_id,
            DealState.CREATED,
            parties=[deal.job_creator, deal.provider, deal.mediator],
            expected=DealState.MATCHED,  # the follower and the sender can both see it
            deal_id=deal.deal_id,
            deal=deal.model_dump(mode="json"),
            tx_hash=tx_hash,
        )
        if row is None:
            return
        for model, offer_id, signer in (
            (JobOfferRow, row.job_offer_id, row.job_creator),
            (ResourceOfferRow, row.resource_offer_id, row.provider),
        ):
            self.store.set_offer_state(
                model, offer_id, OfferState.DEALT, [signer], deal_id=deal.deal_id
            )

    def _deal_failed(self, row: DealRow, exc: ContractReverted) -> None:
        """One pair was refused: reject the offer at fault, put the other back in the book."""
        job = self.store.offer(JobOfferRow, row.job_offer_id)
        resource = self.store.offer(ResourceOfferRow, row.resource_offer_id)
        named = _named_party(exc)  # BadSignature, OfferExpired, NonceUsed... name the signer
        job_bad = self._still_bad(job) or named == job.signer.lower()
        resource_bad = self._still_bad(resource) or named == resource.signer.lower() or not job_bad
        rejected, relisted, requests = [], [], []
        for bad, model, offer in (
            (job_bad, JobOfferRow, job),
            (resource_bad, ResourceOfferRow, resource),
        ):
            if bad:
                rejected.append((model, offer.id, offer.signer))
            else:
                relisted.append((model, offer.id, offer.signer))
                requests.append(  # mediators are read here, holding nothing
                    self._job_request(offer)
                    if model is JobOfferRow
                    else self._resource_request(offer)
                )
        if not self.store.fail_deal(row.job_offer_id, str(exc), rejected, relisted):
            return  # the follower saw the deal made meanwhile
        if not resource_bad:  # its slot is free again: so are the slot's other offers
            siblings = self.store.slot_siblings(resource.id, OfferState.PENDING)
            requests += [self._resource_request(sibling) for sibling in siblings]
        with self._lock:
            for request in requests:
                if isinstance(request, JobRequest):
                    self._book.add_job(request)
                else:
                    self._book.add_offer(request)
        self._notify()  # relisted: they may match now (this may be _settle_unknown's pass)
        log.warning("createDeal refused for job offer %s: %s", row.job_offer_id, exc)

    def _still_bad(self, row: Any) -> bool:
        """Whether an offer can no longer make a deal (expired, nonce used, funds short)."""
        try:
            self._check_fresh(row.signer, int(row.nonce), row.expires_at)
            amount = int(row.max_price if isinstance(row, JobOfferRow) else row.collateral)
            return self.market.balance_of(row.signer) < amount
        except OfferRejected:
            return True

    def _settle_unknown(self) -> None:
        """Matches written before a crash, or whose transaction failed to confirm."""
        for row in self.store.deals(DealState.MATCHED):
            with self._lock:
                if row.job_offer_id in self._sending:
                    continue  # being sent right now
                self._sending.add(row.job_offer_id)
            try:
                job = self.store.offer(JobOfferRow, row.job_offer_id)
                try:
                    used = self.market.nonce_used(job.signer, int(job.nonce))
                except ChainUnavailable:
                    self._settle_soon()
                    return
                if not used:  # if used, the deal (or a cancellation) is on chain: followed
                    self._create_deals([row])
            finally:
                with self._lock:
                    self._sending.discard(row.job_offer_id)

    # ---------------------------------------------------------------------------- the chain
    def follow_once(self, follower: EventFollower) -> int:
        """Apply every new market event to the deals; returns how many were applied."""
        events = follower.poll()
        for event in events:
            self._apply(event)
        # Saved after what it applied. Blocks without market events need no write each poll
        # (a durable commit ten times a second): a restart before the next save only reads
        # them again, and finds nothing in them.
        now = time.monotonic()
        if events or (
            follower.next_block != self._saved_block[0] and now - self._saved_block[1] >= SAVE_S
        ):
            self.store.set_meta("next_block", str(follower.next_block))
            self._saved_block = (follower.next_block, now)
        if events:
            self._notify()
        return len(events)

    def follower(self) -> EventFollower:
        saved = self.store.get_meta("next_block")
        start = int(saved) if saved is not None else self.config.start_block
        return EventFollower(
            self.market.chain,
            [self.market.contract],
            from_block=start,
            confirmations=self.config.confirmations,
        )

    def _apply(self, event: ChainEvent) -> None:
        if event.name == "DealCreated":
            deal = Deal.from_event(event.args["deal"])
            self._deal_created(deal.job_offer_hash, deal, event.tx_hash)
            return
        state = _CHAIN_STATES.get(event.name)
        if state is None:
            return
        deal_id = _hex(event.args["dealId"])
        row = self.store.deal_by_id(deal_id)
        if row is None:
            return  # a deal another solver made
        values: dict[str, Any] = {}
        if event.name == "ResultSubmitted":
            values["result_cid"] = _hex(event.args["resultCid"])
        payload_parties = [row.job_creator, row.provider]
        if row.deal:
            payload_parties.append(row.deal.get("mediator", ""))
        self.store.update_deal(
            row.job_offer_id,
            state,
            parties=payload_parties,
            tx_hash=event.tx_hash,
            **values,
        )
        for listener in self._deal_listeners:
            listener(deal_id)

    # ------------------------------------------------------------------------------ loops
    def _match_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._idle_for())
            self._wake.clear()
            try:
                self.match_once()
                if time.monotonic() >= self._settle_due:
                    self._settle_due = time.monotonic() + SETTLE_S
                    self._settle_unknown()
            except Exception:  # keep matching whatever one pass hit; the store is consistent
                log.exception("matching pass failed")

    def _idle_for(self) -> float:
        """How long the matcher may sleep unless woken: a pass finds nothing new before the
        next offer expires or unknown outcomes are due to be settled (at most :data:`IDLE_S`)."""
        with self._lock:
            expiry = self._book.next_expiry()
        until = min(IDLE_S, self._settle_due - time.monotonic())
        if math.isfinite(expiry):
            with contextlib.suppress(ChainError):  # the pass reads the clock too, and logs it
                until = min(until, expiry - self._clock())
        return max(until, 0.0)

    def _settle_soon(self) -> None:
        """Have the matcher settle matches of unknown outcome after ``poll_interval``."""
        self._settle_due = min(self._settle_due, time.monotonic() + self.config.poll_interval)

    def _follow_loop(self) -> None:
        follower = None
        while not self._stop.is_set():
            try:
                follower = follower or self.follower()
                self.follow_once(follower)
            except ChainError as exc:
                log.warning("cannot follow the chain: %s", exc)
            except Exception:
                log.exception("following the chain failed")
            self._stop.wait(self.config.poll_interval)

    def _notify(self) -> None:
        self._wake.set()
        for listener in self._listeners:
            listener()

    # ------------------------------------------------------------------------------- logs
    def post_logs(self, deal_id: str, batch: api.LogBatch) -> tuple[DealRow, api.LogsAccepted]:
        """Keep a batch of a running job's log lines from the deal's provider (only its: a
        mediator's re-run, or anyone else, is refused), within the deal's rate and bounds.

        Raises:
            UnknownObject: no such deal on chain.
            InvalidRequest: a malformed signature.
            NotAllowed: signed by another account than the deal's provider.
            RateLimited: the provider posts faster than :attr:`SolverConfig.log_rate`.
        """
        row = self._chain_deal(deal_id)
        signer = _signer(api.log_batch_message(deal_id, batch), batch.signature, "log batch")
        if signer != row.provider:
            raise NotAllowed(
                f"log batch of deal {deal_id} is signed by {signer}, not by its provider "
                f"{row.provider}: only the provider that runs the job posts its logs"
            )
        self._log_limiter.take(deal_id, "logs")
        return row, self.store.append_logs(deal_id, batch, self.config.log_bounds)

    def log_reader(
        self, deal_id: str, timestamp: str | None, signature: str | None
    ) -> tuple[DealRow, str]:
        """The deal and its reader, once ``signature`` shows that its job creator or its
        provider asks for its logs now: EIP-191 of
        :func:`~lilypad.solver_api.log_read_message` at ``timestamp`` (Unix seconds, within
        :data:`~lilypad.solver_api.LOG_AUTH_WINDOW_S` of now).

        Raises:
            UnknownObject: no such deal on chain.
            NotAuthenticated: no signature or timestamp, or a timestamp outside the window.
            InvalidRequest: a malformed signature.
            NotAllowed: signed by another account.
        """
        row = self._chain_deal(deal_id)
        if not timestamp or not signature:
            raise NotAuthenticated(
                f"the logs of deal {deal_id} are for its job creator and provider only: send "
                f"{api.TIMESTAMP_HEADER} (Unix seconds) and {api.SIGNATURE_HEADER}, the EIP-191 "
                f"signature of {api.log_read_message(deal_id, 0)!r} with that timestamp for 0"
            )
        if not timestamp.isdigit() or len(timestamp) > 12:
            raise NotAuthenticated(f"{api.TIMESTAMP_HEADER} {timestamp[:20]!r} is not Unix seconds")
        now = time.time()
        if abs(now - int(timestamp)) > api.LOG_AUTH_WINDOW_S:
            raise NotAuthenticated(
                f"log read of deal {deal_id} is signed at {timestamp}, more than "
                f"{api.LOG_AUTH_WINDOW_S}s from the solver's clock ({int(now)}); sign again now"
            )
        message = api.log_read_message(deal_id, int(timestamp))
        signer = _signer(message, signature, "log read")
        if signer not in (row.job_creator, row.provider):
            raise NotAllowed(
                f"log read of deal {deal_id} is signed by {signer}, which is neither its job "
                "creator nor its provider: nobody else reads a job's logs"
            )
        return row, signer

    def deal_logs(self, row: DealRow, after: int) -> api.DealLogs:
        """The page of the deal's logs after line ``after`` (see :meth:`log_reader`)."""
        assert row.deal_id is not None
        log_row, lines = self.store.read_logs(row.deal_id, after)
        state = DealState(row.state)
        return api.DealLogs(
            deal_id=row.deal_id,
            state=state,
            lines=tuple(api.LogLine(seq=line.seq, text=line.text) for line in lines),
            progress=api.LogProgress.model_validate(log_row.progress)
            if log_row is not None and log_row.progress
            else None,
            dropped=log_row.dropped if log_row is not None else 0,
            ended=state not in (DealState.MATCHED, DealState.CREATED),
        )

    def _chain_deal(self, deal_id: str) -> DealRow:
        row = self.store.deal_by_id(deal_id)
        if row is None:
            raise UnknownObject(f"no deal {deal_id}")
        return row

    # ------------------------------------------------------------------------ market view
    def market_offers(
        self,
        *,
        module: str | None = None,
        min_vram_gb: float | None = None,
        gpu: str | None = None,
        provider: str | None = None,
        limit: int = api.DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> api.ResourceOfferPage:
        """A page of the open resource offers (see ``GET /api/v1/resource_offers``).

        Raises:
            InvalidFilter: a ``module`` or ``cursor`` that names nothing.
        """
        ids = None if module is None else [*module_ids(module), ZERO_BYTES32]
        rows = self.store.open_resource_offers(
            self._clock(),
            modules=ids,
            signer=provider,
            min_vram_mb=None if min_vram_gb is None else math.ceil(min_vram_gb * 1024),
            gpu=gpu,
            after=_cursor(cursor) or 0,
            limit=limit + 1,  # one more says whether another page follows
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return api.ResourceOfferPage(
            offers=tuple(_market_offer(row) for row in rows),
            next_cursor=str(rows[-1].seq) if more else None,
        )

    def deal_page(
        self,
        *,
        party: str | None = None,
        states: Sequence[DealState] = (),
        module: str | None = None,
        limit: int = api.DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> tuple[list[DealRow], str | None]:
        """A page of deals, newest first, and the cursor of the next (None: the last page).

        Raises:
            InvalidFilter: a ``module`` or ``cursor`` that names nothing.
        """
        rows = self.store.deal_page(
            *states,
            party=party,
            modules=None if module is None else module_ids(module),
            before=_cursor(cursor),
            limit=limit + 1,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, str(rows[-1].seq) if more else None

    # ----------------------------------------------------------------------------- checks
    def committed(self, signer: str, model: Model) -> int:
        """What a signer's open offers of one kind could still take from its deposit."""
        return self.store.committed(signer, model, self._clock())

    def _check_signature(
        self, offer: JobOffer | ChainResourceOffer, signer: str, signature: str, what: str
    ) -> None:
        """ECDSA by the signer, or ERC-1271 when the signer is a contract (the JobCreator
        bridge): exactly what ``createDeal`` will accept."""
        if self.market.signature_valid(offer, signature):
            return
        recovered = offer.signer(signature, self.chain_id, self.market.address)
        if recovered is None:
            raise OfferRejected(f"{what} signature is malformed")
        raise OfferRejected(f"{what} is signed by {recovered}, not by {signer}")

    def _check_fresh(self, signer: str, nonce: int, expiry: int, *, chain: bool = True) -> None:
        """Not about to expire, and (with ``chain``) the nonce unused on chain."""
        now = self._clock()
        if expiry < now + MIN_LIFETIME_S:
            raise OfferRejected(
                f"offer of {signer} with nonce {nonce} expires at {expiry}, less than "
                f"{MIN_LIFETIME_S}s from now ({int(now)}); sign one with a later expiry"
            )
        if chain and self.market.nonce_used(signer, nonce):
            raise OfferRejected(f"nonce {nonce} of {signer} is already used on chain")

    def _rerender(self, spec: JobSpec) -> JobSpec:
        """The spec as this machine renders it from its module and tunables; a job offer whose
        spec does not render here is refused (a provider would refuse it, and lose nothing,
        while the job creator could claim the provider's collateral for a job never run)."""
        try:
            if not self.config.any_module_source and not parse_reference(spec.module).everywhere:
                raise OfferRejected(
                    f"job spec names module {spec.module!r}: this solver takes built-in modules "
                    "and https git repositories only"
                )
            return rerender(spec)
        except (SpecMismatch, ModuleError, ModuleSourceError) as exc:
            raise OfferRejected(f"job spec refused: {exc}") from None

    @staticmethod
    def _check_spec(offer: JobOffer, spec: JobSpec) -> None:
        least = min_job_timeout(spec.timeout_s)
        if offer.timeout < least:
            raise OfferRejected(
                f"job offer of {offer.job_creator} gives the provider {offer.timeout}s for a "
                f"result, but {spec.module} needs at least {least}s (its timeout of "
                f"{spec.timeout_s}s plus {MIN_TIMEOUT_MARGIN_S}s to fetch, start and deliver); "
                f"sign one with timeout >= {least}"
            )

    def _signer_lock(self, signer: str) -> threading.Lock:
        return self._signer_locks[int(signer[-8:], 16) % SIGNER_LOCKS]

    def _check_open(
        self, signer: str, model: Model, amount: int, what: str, count: int = 1
    ) -> None:
        """Room for ``count`` more open offers of ``signer`` (sharing one nonce): under the
        per-signer bound, and within its deposit on top of the open ones (offers past their
        expiry count for nothing)."""
        open_count, committed = self.store.open_offers(signer, model, self._clock())
        if open_count + count > self.config.max_open_offers:
            count = open_count
            kind = "job" if model is JobOfferRow else "resource"
            raise TooManyOffers(
                f"{signer} has {count} open {kind} offers; the most this solver keeps for one "
                f"signer is {self.config.max_open_offers}; cancel some, or wait until they are "
                "matched or expire"
            )
        balance = self.market.balance_of(signer)
        if balance < committed + amount:
            raise DepositShort(
                f"deposit of {signer} is {balance}, but its open offers need {committed} and "
                f"this one {amount} ({what}); deposit more with JobMarket.deposit"
            )

    def _required_collateral(self, price: int) -> int:
        """``JobMarket.requiredCollateral(price)``, from the market's immutable rule (read once)."""
        if self._collateral_rule is None:
            self._collateral_rule = self.market.collateral_rule()
        least, multiple = self._collateral_rule
        return max(least, multiple * price)

    def _mediators(self, addresses: Sequence[str]) -> frozenset[str]:
        """The registered mediators among ``addresses``, each read from the chain at most once
        a minute. Never called holding ``_lock``: each read is a chain call."""
        now = time.monotonic()
        active = set()
        for address in addresses:
            registered = self._mediator_cache.get(address, now)
            if registered is None:
                try:
                    registered = self.market.mediator(address)[0]
                    self._mediator_cache.put(address, registered, now + MEDIATOR_TTL_S)
                except ChainError:
                    registered = True  # assume yes; the chain has the final word
                    self._mediator_cache.put(address, registered, now + MEDIATOR_RETRY_S)
            if registered:
                active.add(address.lower())
        return frozenset(active)

    # -------------------------------------------------------------------------- conversion
    def _job_request(self, row: JobOfferRow) -> JobRequest:
        offer = SignedJobOffer.model_validate(row.body).offer
        return _job_request(row, offer, self._mediators(offer.mediators))

    def _resource_request(self, row: ResourceOfferRow) -> ResourceOffer:
        offer = SignedResourceOffer.model_validate(row.body).offer
        return _resource_request(row, offer, self._mediators(offer.mediators))

    def _deal_row(self, match: matching.Match, now: float) -> DealRow:
        return DealRow(
            job_offer_id=match.job_id,
            resource_offer_id=match.offer_id,
            state=DealState.MATCHED.value,
            job_creator=match.creator,
            provider=match.provider,
            price=str(match.price),
            updated_at=now,
        )

    def _pair(self, row: DealRow) -> tuple[SignedJobOffer, SignedResourceOffer]:
        job = self.store.offer(JobOfferRow, row.job_offer_id)
        resource = self.store.offer(ResourceOfferRow, row.resource_offer_id)
        return (
            SignedJobOffer.model_validate(job.body),
            SignedResourceOffer.model_validate(resource.body),
        )


def _job_request(row: JobOfferRow, offer: JobOffer, mediators: frozenset[str]) -> JobRequest:
    # the submission's advisory list (not signed): providers this offer must not go to
    avoid = [str(a) for a in (row.body.get("avoid_providers") or ())][:MAX_AVOIDED]
    target = str(row.body.get("target_provider") or "")  # advisory too: the only provider
    return JobRequest(
        id=row.id,
        module=offer.module,
        needs=_machine(offer.machine),
        max_price=offer.max_price,
        mediators=mediators,
        seq=row.seq,
        expires_at=offer.expiry,
        creator=offer.job_creator,
        timeout=offer.timeout,
        avoid=frozenset(a.lower() for a in avoid),
        target=target.lower(),
    )


def _resource_request(
    row: ResourceOfferRow, offer: ChainResourceOffer, mediators: frozenset[str]
) -> ResourceOffer:
    module = ANY_MODULE if offer.module == ZERO_BYTES32 else offer.module
    return ResourceOffer(
        id=row.id,
        provider=offer.provider,
        machine=_machine(offer.machine),
        prices={module: offer.price},
        mediators=mediators,
        slots=1,
        seq=row.seq,
        expires_at=offer.expiry,
        min_timeout=offer.min_timeout,
        # offers with one nonce are one slot: the market makes one deal of them at most
        group=slot_group(offer.provider, offer.nonce),
    )


def slot_group(provider: str, nonce: int) -> str:
    """The order book's slot group of a provider's offers with one nonce."""
    return f"{provider.lower()}:{nonce}"


def _check_slot(offers: Sequence[ChainResourceOffer]) -> None:
    """The offers of one slot: one signer, one nonce, one machine and expiry, one per module."""
    first = offers[0]
    seen: set[str] = set()
    for offer in offers:
        if (offer.provider, offer.nonce) != (first.provider, first.nonce):
            raise OfferRejected(
                f"a slot's offers share one provider and nonce: {offer.provider} nonce "
                f"{offer.nonce} is not {first.provider} nonce {first.nonce}; post each slot "
                "on its own"
            )
        if offer.module in seen:
            raise OfferRejected(
                f"slot {first.nonce} of {first.provider} has two offers for module "
                f"{offer.module}; offer each module once per slot"
            )
        seen.add(offer.module)


def _check_advertised(signed: api.SignedResourceOffer) -> None:
    """What an offer advertises beyond its signature agrees with what it signs: its module
    reference hashes to its module, and its GPUs are as many as its ``gpus`` lane, none with
    less VRAM than its ``vram_mb`` lane."""
    offer = signed.offer
    reference = signed.module_reference
    if reference is not None and module_id(reference) != offer.module:
        raise OfferRejected(
            f"resource offer of {offer.provider} names module_reference {reference!r}, whose "
            f"keccak256 {module_id(reference)} is not its module {offer.module}; send the "
            "reference the offer signs, or none"
        )
    if not signed.gpus:
        return
    lanes = Machine.decode(offer.machine)
    if len(signed.gpus) != lanes.gpus:
        raise OfferRejected(
            f"resource offer of {offer.provider} advertises {len(signed.gpus)} GPUs, but its "
            f"machine's gpus lane is {lanes.gpus}; advertise one per GPU offered, or none"
        )
    for gpu in signed.gpus:
        if gpu.vram_mb < lanes.vram_mb:
            raise OfferRejected(
                f"resource offer of {offer.provider} advertises GPU {gpu.model!r} with "
                f"{gpu.vram_mb} MiB, below its machine's vram_mb lane of {lanes.vram_mb}"
            )


@functools.cache
def _builtin_versions() -> dict[str, tuple[str, ...]]:
    """Every built-in module's versions, by name (read once)."""
    return {
        manifest.name: tuple(sorted(manifest.versions, key=version_key))
        for manifest, _ in modules.list_builtin()
    }


@functools.cache
def builtin_references() -> dict[str, str]:
    """``name:version`` of every built-in module version, by its module id."""
    return {
        module_id(f"{name}:{version}"): f"{name}:{version}"
        for name, versions in _builtin_versions().items()
        for version in versions
    }


def module_ids(text: str) -> list[str]:
    """The module ids a listing's ``module`` filter names: a module id (0x and 64 hex digits),
    ``name:version`` (any reference with a version), or a built-in module's name (every one of
    its versions).

    Raises:
        InvalidFilter: a built-in module's unknown version, or a name without a version that
            is not a built-in module's; the message suggests the close match.
    """
    value = text.strip()
    if re.fullmatch(r"0x[0-9a-fA-F]{64}", value):
        return [value.lower()]
    known = _builtin_versions()
    name, colon, version = value.partition(":")
    if not colon:
        if name in known:
            return [module_id(f"{name}:{v}") for v in known[name]]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"built-in: {', '.join(known)}"
        raise InvalidFilter(
            f"module {text!r} is not a built-in module's name, name:version or a 0x module "
            f"id; {hint}"
        )
    if name in known and version not in known[name]:
        close = difflib.get_close_matches(version, known[name], n=1)
        versions = ", ".join(known[name])
        hint = f"did you mean {name}:{close[0]}?" if close else f"its versions: {versions}"
        raise InvalidFilter(f"module {text!r}: {name} has no version {version!r}; {hint}")
    return [module_id(value)]


def _cursor(text: str | None) -> int | None:
    """A listing's ``cursor`` (the arrival number of the last row of the page before)."""
    if text is None:
        return None
    if not text.isdigit() or len(text) > 18:
        raise InvalidFilter(
            f"cursor {text[:40]!r} is not a cursor: pass a page's next_cursor as it is"
        )
    return int(text)


def _market_offer(row: ResourceOfferRow) -> api.MarketOffer:
    signed = api.SignedResourceOffer.model_validate(row.body)
    offer = signed.offer
    reference = signed.module_reference or builtin_references().get(offer.module)
    return api.MarketOffer(
        id=row.id,
        seq=row.seq,
        provider=offer.provider,
        module_reference=reference,
        machine=Machine.decode(offer.machine),
        gpus=signed.gpus,
        offer=signed,
    )


def _signer(
    message: str, signature: str, what: str, error: type[InvalidRequest] = InvalidRequest
) -> str:
    """Who signed ``message`` (EIP-191), or ``error`` (a 400) naming the malformed signature."""
    try:
        return recover(eip191_digest(message), signature)
    except ValueError as exc:
        shown = signature if len(signature) <= 20 else f"{signature[:20]}..."
        raise error(
            f"{what} signature {shown!r} is malformed ({exc}); send the EIP-191 signature "
            f"(65 bytes, or 64 compact) of {message!r} as hex"
        ) from None


def _machine(value: int) -> matching.Machine:
    lanes = Machine.decode(value)
    return matching.Machine(
        lanes.gpus, lanes.vram_mb, lanes.cpu_millis, lanes.ram_mb, lanes.disk_mb
    )


def _hex(value: Any) -> str:
    return value if isinstance(value, str) else "0x" + bytes(value).hex()


def _named_party(exc: ContractReverted) -> str | None:
    """The address a market revert blames (``BadSignature(signer)``, ``OfferExpired(signer,
    ...)``, ``NonceUsed(signer, ...)``, ``InsufficientBalance(account, ...)``), lower-cased."""
    for key in ("signer", "account"):
        value = exc.details.get(key)
        if isinstance(value, str):
            return value.lower()
    return None
