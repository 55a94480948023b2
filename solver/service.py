"""The solver: takes signed offers, matches them, creates deals on chain and follows them.

:class:`Solver` ties the parts together:

* offers arrive through :meth:`Solver.submit_job_offer` / :meth:`Solver.submit_resource_offer`
  (the HTTP API calls them), are checked (signature, expiry, nonce, deposit, rate per signer),
  stored, and put in the :class:`~solver.matching.OrderBook`;
* a matcher thread runs :meth:`Solver.match_once` whenever something changed: matches are written
  to the store *first*, then sent to ``JobMarket.createDeals`` in one transaction;
* a follower thread reads the market's events (``DealCreated``, ``ResultSubmitted``...) and keeps
  each deal's state, resuming from the block it had reached after a restart;
* on start, :meth:`Solver.recover` rebuilds the book from the store and settles any match that
  was written but whose transaction outcome is unknown (the nonce tells whether it reached the
  chain), so a killed solver neither loses an offer nor sends a deal twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from lilypad.chain.events import ChainEvent, EventFollower
from lilypad.chain.market import JobMarketClient
from lilypad.chain.offers import (
    ZERO_BYTES32,
    Deal,
    JobOffer,
    Machine,
    SignedJobOffer,
    SignedResourceOffer,
)
from lilypad.chain.offers import ResourceOffer as ChainResourceOffer
from lilypad.errors import (
    ChainError,
    ChainUnavailable,
    ConfigError,
    ContractReverted,
    SolverError,
)
from lilypad.jobs import (
    ChainClock,
    JobSubmission,
    SpecMismatch,
    cancel_message,
    check_submission,
)
from solver import matching
from solver.matching import ANY_MODULE, JobRequest, OrderBook, ResourceOffer
from solver.store import (
    DealRow,
    DealRowState,
    JobOfferRow,
    OfferState,
    ResourceOfferRow,
    Store,
)

log = logging.getLogger("lilypad.solver")

#: An offer must stay valid at least this long after it arrives, or it is refused.
MIN_LIFETIME_S = 10
#: How many matches go into one createDeals transaction.
BATCH = 50
#: Locks that serialize one signer's offer submissions (a signer maps to one by its address).
SIGNER_LOCKS = 64


class OfferRejected(SolverError):
    """An offer failed a check; the message says which and why."""

    exit_code = 2


class DepositShort(OfferRejected):
    """The signer's market deposit does not cover this offer on top of its open ones (HTTP 402:
    a client tops up and posts again)."""


class RateLimited(SolverError):
    """A signer sent offers faster than allowed."""

    def __init__(self, signer: str, retry_after: float) -> None:
        super().__init__(
            f"{signer} is sending offers too fast; retry in {retry_after:.1f}s",
        )
        self.retry_after = retry_after


class RateLimiter:
    """A token bucket per signer address (not per IP: one signer cannot hide behind many)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, signer: str) -> None:
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(signer, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1:
                raise RateLimited(signer, (1 - tokens) / self.rate)
            self._buckets[signer] = (tokens - 1, now)


@dataclass(frozen=True)
class SolverConfig:
    """How a solver runs.

    Attributes:
        confirmations: Blocks an event must be buried under before the solver acts on it.
        start_block: The first block to read events from when the store has no position yet.
        rate: Offers per second each signer may send on average; ``burst`` at once.
        poll_interval: Seconds between chain polls and matching passes when nothing wakes them.
    """

    confirmations: int = 0
    start_block: int = 0
    rate: float = 5.0
    burst: int = 50
    poll_interval: float = 0.5


_CHAIN_STATES = {
    "ResultSubmitted": DealRowState.RESULT_SUBMITTED,
    "ResultAccepted": DealRowState.ACCEPTED,
    "PaymentClaimed": DealRowState.PAID,
    "ResultChallenged": DealRowState.CHALLENGED,
    "MediationResolved": DealRowState.MEDIATED,
    "DealTimedOut": DealRowState.TIMED_OUT,
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
        self._lock = threading.RLock()  # guards the book and the submit path
        # One signer's submissions check its deposit and store the offer one at a time, so two
        # posted at once (from two machines) cannot both count on the same deposit; the chain
        # read is outside the book's lock, so other signers do not wait for it.
        self._signer_locks = [threading.Lock() for _ in range(SIGNER_LOCKS)]
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._limiter = RateLimiter(config.rate, config.burst)
        self._mediator_cache: dict[str, tuple[bool, float]] = {}
        self.chain_id = market.chain.chain_id
        self.events_changed = threading.Condition()

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

    def recover(self) -> None:
        """Rebuild the order book from the store and settle matches of unknown outcome.

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
        with self._lock:
            self._book = OrderBook()
            for row in self.store.offers(ResourceOfferRow, OfferState.PENDING):
                self._book.add_offer(self._resource_request(row))
            for row in self.store.offers(JobOfferRow, OfferState.PENDING):
                self._book.add_job(self._job_request(row))
        self._settle_unknown()

    # ----------------------------------------------------------------------------- offers
    def submit_job_offer(self, signed: JobSubmission) -> JobOfferRow:
        """Check, store and queue a job offer with its job spec.

        Raises:
            OfferRejected: bad signature, expired, nonce used, not enough deposit, or a spec the
                offer does not commit to.
            RateLimited: the signer is over its rate.
            Duplicate: already known.
        """
        try:
            check_submission(signed)
        except SpecMismatch as exc:
            raise OfferRejected(str(exc)) from None
        offer = signed.offer
        self._check_offer(offer, offer.job_creator, signed.signature, "job offer")
        with self._signer_lock(offer.job_creator):
            self._check_deposit(
                offer.job_creator, JobOfferRow, offer.max_price, "its maximum price"
            )
            row = JobOfferRow(max_price=str(offer.max_price), **self._row_fields(signed, offer))
            with self._lock:
                row.seq = self.store.add_offer(row, [offer.job_creator])
                self._book.add_job(self._job_request(row))
        self._notify()
        return row

    def submit_resource_offer(self, signed: SignedResourceOffer) -> ResourceOfferRow:
        """Check, store and list a resource offer (one job slot). Raises as for job offers."""
        offer = signed.offer
        self._check_offer(offer, offer.provider, signed.signature, "resource offer")
        with self._signer_lock(offer.provider):
            self._check_deposit(
                offer.provider, ResourceOfferRow, offer.collateral, "its collateral"
            )
            fields = self._row_fields(signed, offer)
            row = ResourceOfferRow(collateral=str(offer.collateral), **fields)
            with self._lock:
                row.seq = self.store.add_offer(row, [offer.provider])
                self._book.add_offer(self._resource_request(row))
        self._notify()
        return row

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

    def cancel_offer(self, kind: str, offer_id: str, signature: str) -> None:
        """Withdraw a pending offer; ``signature`` is its signer's EIP-191 signature of
        ``cancel_message(offer_id)``."""
        model: type[JobOfferRow] | type[ResourceOfferRow] = (
            JobOfferRow if kind == "job" else ResourceOfferRow
        )
        row = self.store.offer(model, offer_id)
        if row is None:
            raise OfferRejected(f"no {kind} offer {offer_id}")
        try:
            signer = Account.recover_message(
                encode_defunct(text=cancel_message(offer_id)), signature=signature
            )
        except (ValueError, TypeError) as exc:
            raise OfferRejected(f"cancellation signature is malformed: {exc}") from None
        if signer != row.signer:
            raise OfferRejected(f"cancellation is signed by {signer}, not by {row.signer}")
        with self._lock:
            if row.state != OfferState.PENDING.value:
                raise OfferRejected(
                    f"{kind} offer {offer_id} is {row.state}; only a pending offer can be cancelled"
                )
            if model is JobOfferRow:
                self._book.remove_job(offer_id)
            else:
                self._book.remove_offer(offer_id)
            self.store.set_offer_state(model, offer_id, OfferState.CANCELLED, [row.signer])
        self._notify()

    # --------------------------------------------------------------------------- matching
    def match_once(self) -> list[DealRow]:
        """Match what can be matched now, record the matches, and create their deals."""
        with self._lock:
            matches = self._book.match(self._clock())
            if not matches:
                return []
            rows = [self._deal_row(m) for m in matches]
            self.store.record_matches(rows)
            for start in range(0, len(rows), BATCH):
                self._create_deals(rows[start : start + BATCH])
        self._notify()
        return rows

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
            return
        for row, deal in zip(rows, deals, strict=True):
            self._deal_created(row.job_offer_id, deal, receipt.tx_hash)

    def _deal_created(self, job_offer_id: str, deal: Deal, tx_hash: str | None) -> None:
        row = self.store.deal_by_offer(job_offer_id)
        if row is None or row.state != DealRowState.MATCHED.value:
            return  # already recorded (the follower and the sender can both see it)
        self.store.update_deal(
            job_offer_id,
            DealRowState.CREATED,
            event_kind="deal.created",
            parties=[deal.job_creator, deal.provider, deal.mediator],
            deal_id=deal.deal_id,
            deal=deal.model_dump(mode="json"),
            tx_hash=tx_hash,
        )
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
        job_bad = self._still_bad(job)
        resource_bad = self._still_bad(resource) or not job_bad
        self.store.update_deal(
            row.job_offer_id,
            DealRowState.FAILED,
            event_kind="deal.failed",
            parties=[row.job_creator, row.provider],
            error=str(exc)[:500],
        )
        for bad, model, offer in (
            (job_bad, JobOfferRow, job),
            (resource_bad, ResourceOfferRow, resource),
        ):
            if bad:
                self.store.set_offer_state(
                    model, offer.id, OfferState.REJECTED, [offer.signer], reason=str(exc)[:300]
                )
            else:
                self.store.set_offer_state(model, offer.id, OfferState.PENDING, [offer.signer])
                if model is JobOfferRow:
                    self._book.add_job(self._job_request(offer))
                else:
                    self._book.add_offer(self._resource_request(offer))
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
        for row in self.store.deals(DealRowState.MATCHED):
            job = self.store.offer(JobOfferRow, row.job_offer_id)
            try:
                used = self.market.nonce_used(job.signer, int(job.nonce))
            except ChainUnavailable:
                return  # try again on the next pass
            if used:
                continue  # the deal (or a cancellation) is on chain; the follower records it
            with self._lock:
                self._create_deals([row])

    # ---------------------------------------------------------------------------- the chain
    def follow_once(self, follower: EventFollower) -> int:
        """Apply every new market event to the deals; returns how many were applied."""
        events = follower.poll()
        for event in events:
            self._apply(event)
        self.store.set_meta("next_block", str(follower.next_block))
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
            event_kind=f"deal.{state.value}",
            parties=payload_parties,
            tx_hash=event.tx_hash,
            **values,
        )

    # ------------------------------------------------------------------------------ loops
    def _match_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.poll_interval)
            self._wake.clear()
            try:
                self.match_once()
                self._settle_unknown()
            except Exception:  # keep matching whatever one pass hit; the store is consistent
                log.exception("matching pass failed")

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
        with self.events_changed:
            self.events_changed.notify_all()

    # ----------------------------------------------------------------------------- checks
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

    def _check_fresh(self, signer: str, nonce: int, expiry: int) -> None:
        now = self._clock()
        if expiry < now + MIN_LIFETIME_S:
            raise OfferRejected(
                f"offer of {signer} with nonce {nonce} expires at {expiry}, less than "
                f"{MIN_LIFETIME_S}s from now ({int(now)}); sign one with a later expiry"
            )
        if self.market.nonce_used(signer, nonce):
            raise OfferRejected(f"nonce {nonce} of {signer} is already used on chain")

    def _signer_lock(self, signer: str) -> threading.Lock:
        return self._signer_locks[int(signer[-8:], 16) % SIGNER_LOCKS]

    def _check_deposit(
        self, signer: str, model: type[JobOfferRow] | type[ResourceOfferRow], amount: int, what: str
    ) -> None:
        balance = self.market.balance_of(signer)
        committed = self.store.committed(signer, model)
        if balance < committed + amount:
            raise DepositShort(
                f"deposit of {signer} is {balance}, but its open offers need {committed} and "
                f"this one {amount} ({what}); deposit more with JobMarket.deposit"
            )

    def _mediators(self, addresses: Sequence[str]) -> frozenset[str]:
        """The registered mediators among ``addresses`` (the registry is read at most once a
        minute per mediator)."""
        now = self._clock()
        active = set()
        for address in addresses:
            cached = self._mediator_cache.get(address)
            if cached is None or now - cached[1] > 60:
                try:
                    cached = (self.market.mediator(address)[0], now)
                except ChainError:
                    cached = (True, now - 55)  # assume yes; the chain has the final word
                self._mediator_cache[address] = cached
            if cached[0]:
                active.add(address.lower())
        return frozenset(active)

    # -------------------------------------------------------------------------- conversion
    def _job_request(self, row: JobOfferRow) -> JobRequest:
        offer = SignedJobOffer.model_validate(row.body).offer
        return JobRequest(
            id=row.id,
            module=offer.module,
            needs=_machine(offer.machine),
            max_price=offer.max_price,
            mediators=self._mediators(offer.mediators),
            seq=row.seq,
            expires_at=offer.expiry,
        )

    def _resource_request(self, row: ResourceOfferRow) -> ResourceOffer:
        offer = SignedResourceOffer.model_validate(row.body).offer
        module = ANY_MODULE if offer.module == ZERO_BYTES32 else offer.module
        return ResourceOffer(
            id=row.id,
            provider=offer.provider,
            machine=_machine(offer.machine),
            prices={module: offer.price},
            mediators=self._mediators(offer.mediators),
            slots=1,
            seq=row.seq,
            expires_at=offer.expiry,
        )

    def _deal_row(self, match: matching.Match) -> DealRow:
        job = self.store.offer(JobOfferRow, match.job_id)
        return DealRow(
            job_offer_id=match.job_id,
            resource_offer_id=match.offer_id,
            state=DealRowState.MATCHED.value,
            job_creator=job.signer,
            provider=match.provider,
            price=str(match.price),
            updated_at=self._clock(),
        )

    def _pair(self, row: DealRow) -> tuple[SignedJobOffer, SignedResourceOffer]:
        job = self.store.offer(JobOfferRow, row.job_offer_id)
        resource = self.store.offer(ResourceOfferRow, row.resource_offer_id)
        return (
            SignedJobOffer.model_validate(job.body),
            SignedResourceOffer.model_validate(resource.body),
        )


def _machine(value: int) -> matching.Machine:
    lanes = Machine.decode(value)
    return matching.Machine(
        lanes.gpus, lanes.vram_mb, lanes.cpu_millis, lanes.ram_mb, lanes.disk_mb
    )


def _hex(value: Any) -> str:
    return value if isinstance(value, str) else "0x" + bytes(value).hex()
