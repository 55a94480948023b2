"""The resource-provider daemon: offers slots, runs the deals it gets, submits and gets paid.

:class:`ResourceProvider` runs three kinds of threads:

* the **main loop** reads the market's events (the truth: ``DealCreated`` naming this provider,
  and how each deal settled), resuming from the block saved in ``meta.json``; it also keeps each
  free slot on offer at the solver (one signed offer per module served, all with the slot's
  nonce, so that the market makes one deal of them at most; fresh ones, with a fresh nonce,
  before they expire), submits results that are ready, claims payment once a challenge window
  has passed, and times out a mediation nobody ruled on in time (its collateral would otherwise
  stay locked until the job creator did);
* the **event stream** thread listens to the solver's server-sent events for ``deal.created`` so
  that a job starts at once rather than at the next chain poll (the chain is still checked before
  anything is run or submitted);
* a pool of ``max_concurrent`` **workers** runs jobs: fetch the spec from the solver, check and
  re-render it, refuse what cannot be served or finished before the deadline, fetch its file
  inputs, run it, add the result folder to IPFS (pinned) and submit its CID. An IPFS outage
  retries the upload until the deadline, never the run. While a job runs, its stderr lines and
  progress are relayed to its job creator through the solver, best effort
  (:mod:`resource_provider.job_logs`): nothing of the relay can change the job or its result.

A job's file inputs decide the deal in two ways (:func:`~resource_provider.runner.not_run`): an
input its module cannot take (a folder, too large, not a picture) is the result at once, exit
code 2, which any mediator reaches too, so the provider is paid for checking (`lilypad run` and
the bridge refuse such inputs before signing: only a job creator that bypasses them gets here);
an input that cannot be fetched is tried again, pass after pass, for ``input_wait_s`` or until
the job could no longer start and finish in time, then the result says so, exit code 123, and is
submitted before the deadline like any other. Nobody is judged on that one (see
:class:`lilypad.creator.runner.InputLost`): the provider gets its collateral back, unpaid.

Every input fetched (or found in the cache) stays pinned on the provider's IPFS node until its
deal settles (:func:`~resource_provider.inputs.keep`; the deal's record says what it pinned, so a
restart releases the same), then is unpinned unless another open deal holds it: a job creator
that removes its input once it has the result, and challenges, still faces a mediator that can
fetch it. Pins someone else made (the job creator's, on a node both use) are never touched.

Every offer commits on chain to the least time this provider needs for a result of its module
(``minTimeout``: :func:`~lilypad.chain.offers.provider_min_timeout`), so no job creator
can make a deal that this provider cannot deliver in time and then take its collateral; and its
collateral is at least what the market requires at its price (``JobMarket.requiredCollateral``):
the provider refuses to start otherwise.

Every step is written to disk (:mod:`resource_provider.state`) before the next begins. After a
``kill -9`` the daemon resumes each deal from its last written phase: a job that was running runs
again (same spec, same bytes, same CID); a result already in IPFS is submitted; and before any
submission the deal's state on chain is read, so a result that reached the chain before the crash
is never submitted twice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from lilypad import modules
from lilypad import solver_api as api
from lilypad.chain.crypto import Signer
from lilypad.chain.events import ChainEvent
from lilypad.chain.light import DealState, Receipt
from lilypad.chain.market import JobMarketClient
from lilypad.chain.offers import (
    DEFAULT_SUBMIT_MARGIN_S,
    Deal,
    Machine,
    ResourceOffer,
    module_id,
    provider_min_timeout,
)
from lilypad.errors import ContractReverted, InputError, LilypadError, SolverError
from lilypad.jobs import ChainClock, JobSubmission, cancel_message
from lilypad.modules import JobSpec
from lilypad.modules.files import file_inputs
from lilypad.solver_api import (
    AlreadyKnown,
    DealEvent,
    EventKind,
    EventStream,
    OfferEvent,
    SolverBusy,
    SolverClient,
    SolverRefused,
)
from lilypad.storage import CID, Storage
from lilypad.storage.blockstore import PinType
from resource_provider.executors import EXIT_INPUT_UNAVAILABLE, Executor, JobInput, Weights
from resource_provider.inputs import InputUnavailable, UnacceptableInput, keep, release
from resource_provider.job_logs import LogRelay
from resource_provider.machine import Hardware
from resource_provider.metrics import Metrics
from resource_provider.runner import (
    EXIT_BAD_INPUT,
    JobRefused,
    execute_job,
    job_inputs,
    job_submission,
    not_run,
    verified_spec,
)
from resource_provider.service import ChainService
from resource_provider.state import DealRecord, JsonStore, Outcome, Phase

log = logging.getLogger("lilypad.provider")

#: Market events the provider follows.
EVENTS = (
    "DealCreated",
    "ResultSubmitted",
    "ResultAccepted",
    "PaymentClaimed",
    "ResultChallenged",
    "MediationResolved",
    "DealTimedOut",
)
#: ``DealTimedOut.kind`` values (the contract's ``Timeout`` enum).
TIMEOUT_OUTCOMES = {0: Outcome.TIMED_OUT, 1: Outcome.PAID, 2: Outcome.MEDIATION_TIMED_OUT}
#: Seconds before retrying a deal whose last attempt hit a passing failure (solver, chain).
RETRY_S = 3.0
#: Seconds before listing offers again after the solver refused one or could not be reached,
#: unless it said how long to wait (``Retry-After`` of a 429 or 503).
OFFER_RETRY_S = 15.0
#: The longest ``Retry-After`` honoured: a solver asking for more is asked again after this.
MAX_RETRY_AFTER_S = 60.0
#: Seconds between reconnections of the solver's event stream after it refused one.
STREAM_RETRY_S = 1.0
#: Starts of one job (a crash and restart counts too) before the provider gives it up.
MAX_RUNS = 5
#: Seconds a provider keeps trying to fetch a job's input (from the first failure) before it
#: submits the result that says it could not (exit code 123), unless the deadline comes first.
INPUT_WAIT_S = 300.0


@dataclass(frozen=True)
class ProviderConfig:
    """How the provider offers and works.

    Attributes:
        modules: Exact module references served (``cowsay:v0.0.4``); each free slot is offered
            for every one of them (one signed offer each, all with the slot's nonce).
        price: Price per job, in the token's smallest unit.
        collateral: Collateral per job, same unit.
        mediators: Mediators this provider trusts (offers name them).
        max_concurrent: Jobs run at once (and slots listed at once).
        weights: Real or tiny weights for ML modules.
        gpus: GPUs to offer; None offers what was detected.
        offer_ttl_s: How long an offer is valid; a fresh one replaces it before it expires.
        submit_margin_s: Time kept after a job's timeout for IPFS and the submit transaction.
        poll_interval_s: Seconds between chain polls.
        start_block: Where to start reading events when no position is saved.
        confirmations: Blocks an event must be buried under before it is acted upon.
        event_stream: Listen to the solver's event stream (faster than chain polling alone).
        auto_deposit: Move tokens from the wallet into the market balance when it does not
            cover the collateral of every slot: at start, and whenever fresh offers need more.
        input_wait_s: Seconds to keep trying to fetch a job's input before its result says it
            could not be fetched (the deadline may end the wait sooner).
        relay_logs: Relay each running job's stderr lines and progress to its job creator
            through the solver.
        log_interval_s: The least time between two posts of a job's lines.
    """

    modules: tuple[str, ...]
    price: int
    collateral: int
    mediators: tuple[str, ...]
    max_concurrent: int = 1
    weights: Weights = Weights.REAL
    gpus: int | None = None
    offer_ttl_s: int = 600
    submit_margin_s: int = DEFAULT_SUBMIT_MARGIN_S
    poll_interval_s: float = 1.0
    start_block: int = 0
    confirmations: int = 0
    event_stream: bool = True
    auto_deposit: bool = False
    input_wait_s: float = INPUT_WAIT_S
    relay_logs: bool = True
    log_interval_s: float = 0.5


@dataclass
class _Offer:
    offer_id: str
    nonce: int
    expiry: int
    module: str


@dataclass
class _Pending:
    """Deals the workers own right now, and when the others may be retried."""

    running: set[str] = field(default_factory=set)
    retry_at: dict[str, float] = field(default_factory=dict)


@dataclass
class _Backoff:
    """When offers may be listed again, and the slot the solver asked to send later."""

    until: float = 0.0
    refused: list[api.SignedResourceOffer] = field(default_factory=list)


class ResourceProvider(ChainService):
    """One provider account serving one market.

    Args:
        account: Signs offers and transactions.
        market: The JobMarket.
        solver: The solver's API.
        storage: Where results are added and pinned.
        executor: Runs jobs.
        hardware: The detected machine (offers carry its lanes).
        state_dir: Where the provider's state lives.
        config: Offers, concurrency, timing.
        metrics: Counters to update (a fresh set when None).

    The daemon owns ``solver`` and ``storage`` from then on: :meth:`stop` closes them.
    """

    role = "provider"
    logger = log

    def __init__(
        self,
        *,
        account: LocalAccount,
        market: JobMarketClient,
        solver: SolverClient,
        storage: Storage,
        executor: Executor,
        hardware: Hardware,
        state_dir: Path,
        config: ProviderConfig,
        metrics: Metrics | None = None,
    ) -> None:
        if config.max_concurrent < 1:
            raise InputError(f"max concurrent jobs must be at least 1, not {config.max_concurrent}")
        if not config.modules:
            raise InputError("a provider must serve at least one module")
        super().__init__(
            chain=market.chain,
            contracts=[market.contract],
            events=EVENTS,
            store=JsonStore(state_dir),
            start_block=config.start_block,
            confirmations=config.confirmations,
            poll_interval_s=config.poll_interval_s,
        )
        self.account, self.market, self.solver = account, market, solver
        self._signer = Signer(bytes(account.key))  # signs the slots' offers, loaded once
        self.storage, self.executor, self.hardware = storage, executor, hardware
        self.config = config
        self.metrics = metrics or Metrics()
        self.results_dir = state_dir / "results"
        self.machine: Machine = hardware.machine(config.gpus)
        # Deadlines and expiries are the chain's; read about once per pass of the main loop.
        self.clock = ChainClock(market, refresh_s=config.poll_interval_s)
        # What each module's offers commit to on chain: a deal never gives this provider less.
        self.min_timeouts = {
            ref: provider_min_timeout(modules.resolve(ref).spec.timeout_s, config.submit_margin_s)
            for ref in config.modules
        }
        self._lock = threading.RLock()
        # Held while the pins of the deals' inputs change; taken before _lock, never after it.
        self._keeping = threading.Lock()
        self._pending = _Pending()
        self._backoff = _Backoff()
        self._incoming: queue.Queue[Deal] = queue.Queue()
        self._stream: EventStream | None = None
        self._pool = ThreadPoolExecutor(config.max_concurrent, thread_name_prefix="provider-job")
        self._owns(storage.close)
        self._owns(solver.close)
        self._owns(self._pool.shutdown)  # first: running jobs end before what they use closes
        # Deals not yet settled or refused, by id: what each pass looks at (settled deals stay on
        # disk but are never read again).
        self._open: dict[str, Phase] = {
            r.deal_id: r.phase
            for r in self.store.all("deals", DealRecord)
            if not r.phase.is_terminal()
        }
        self._offers: dict[str, _Offer] = {
            k: _Offer(**v) for k, v in self.store.meta("offers", {}).items()
        }

    @property
    def address(self) -> str:
        return self.account.address

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Resume saved deals, then run the main loop and the event stream in the background.

        Raises:
            InputError: the collateral is below what the market requires at this price.
        """
        required = self.market.required_collateral(self.config.price)
        if self.config.collateral < required:
            raise InputError(
                f"collateral {self.config.collateral} is below the market's minimum of {required} "
                f"at price {self.config.price} (the larger of its minimum collateral and its "
                "collateral multiple times the price)",
                hint="raise --collateral, or lower --price",
            )
        log.info(
            "provider %s: %s; serving %s at price %d, collateral %d, %d slot(s)",
            self.address,
            self.hardware.describe(),
            ", ".join(self.config.modules),
            self.config.price,
            self.config.collateral,
            self.config.max_concurrent,
        )
        for deal_id, phase in sorted(self._open.items()):
            log.info("resuming deal %s from phase %s", deal_id, phase)
        if self.config.auto_deposit:
            self._top_up()
        super().start()

    def stop(self, *, cancel_offers: bool = True) -> None:
        """Stop taking work, withdraw open offers, and wait for running jobs to end."""
        self._stop.set()
        self._wake.set()
        if cancel_offers:
            for offer in list(self._offers.values()):
                self._cancel(offer)
        super().stop()

    def _loops(self) -> list[tuple[str, Callable[[], None]]]:
        return [("events", self._stream_loop)] if self.config.event_stream else []

    def _interrupt(self) -> None:
        stream = self._stream
        if stream is not None:
            stream.close()

    def _top_up(self, offers: int | None = None) -> None:
        """Deposit what the collateral of ``offers`` open offers (every slot's by default) needs
        beyond the market balance.

        Later top-ups deposit at least every slot's collateral: a deal's collateral stays locked
        until it is settled, after its slot is free again, so without them a busy provider's
        fresh offers would be refused until its deals settle.
        """
        slots = self.config.max_concurrent
        needed = self.config.collateral * (slots if offers is None else offers)
        missing = needed - self.market.balance_of(self.address)
        if missing <= 0:
            return
        if offers is not None:
            missing = max(missing, self.config.collateral * slots)
        wallet = self.market.token.balance_of(self.address)
        if wallet < missing:
            log.warning(
                "market balance is %d short of the collateral for %d slot(s), and the wallet "
                "holds only %d: the solver will refuse offers beyond the deposit",
                missing,
                self.config.max_concurrent,
                wallet,
            )
            return
        receipt = self.market.deposit(self.account, missing)
        log.info("deposited %d into the market for collateral (%s)", missing, receipt.tx_hash)

    # ------------------------------------------------------------------------------ main loop
    def _act(self) -> None:
        """After the chain's events: new deals, work to (re)start, submissions, claims, offers."""
        while not self._incoming.empty():
            self._accept(self._incoming.get_nowait())
        for deal_id, phase in list(self._open.items()):
            if phase in (Phase.NEW, Phase.RUNNING, Phase.EXECUTED, Phase.RAN):
                self._schedule(deal_id)
            elif phase is Phase.SUBMITTED:
                record = self.store.get("deals", deal_id, DealRecord)
                if record is not None:
                    self._maybe_close(record)
        if not self._stop.is_set():
            self._refresh_offers()

    def _apply(self, event: ChainEvent) -> None:
        if event.name == "DealCreated":
            if event.args["provider"] == self.address:
                self._accept(Deal.from_event(event.args["deal"]))
            return
        deal_id = _hex(event.args["dealId"])
        record = self.store.get("deals", deal_id, DealRecord)
        if record is None:
            return
        outcome: Outcome | None = None
        if event.name == "ResultAccepted":
            outcome = Outcome.ACCEPTED
        elif event.name == "PaymentClaimed":
            outcome = Outcome.PAID
        elif event.name == "MediationResolved":
            outcome = Outcome.WON if event.args["providerWins"] else Outcome.SLASHED
        elif event.name == "DealTimedOut":
            outcome = TIMEOUT_OUTCOMES.get(int(event.args["kind"]))
        elif event.name == "ResultChallenged":
            log.warning("deal %s: result challenged; mediator %s", deal_id, event.args["mediator"])
        if outcome is not None:
            self._settled(record, outcome)

    def _settled(self, record: DealRecord, outcome: Outcome) -> None:
        if record.phase is Phase.SETTLED:
            return
        self._finish(record, phase=Phase.SETTLED, outcome=outcome)
        deal = record.deal
        if outcome in (Outcome.PAID, Outcome.ACCEPTED, Outcome.WON):
            self.metrics.earnings.inc(deal.price)
        elif outcome in (Outcome.SLASHED, Outcome.TIMED_OUT):
            self.metrics.slashed.inc(deal.collateral)
        log.info("deal %s settled: %s", record.deal_id, outcome)

    # ------------------------------------------------------------------------------- deals
    def _accept(self, deal: Deal) -> None:
        """Record a new deal naming this provider (once) and free its offer's slot."""
        if deal.provider != self.address:
            return
        with self._lock:
            taken = self._offers.get(deal.resource_offer_hash)
            if taken is not None:  # the slot is taken: its other offers can make no deal
                self._drop_slot(taken.nonce)
            if self.store.get("deals", deal.deal_id, DealRecord) is not None:
                return
            self._save(DealRecord(deal=deal))
        log.info("new deal %s from %s at price %d", deal.deal_id, deal.job_creator, deal.price)
        self._schedule(deal.deal_id)

    def _schedule(self, deal_id: str) -> None:
        with self._lock:
            if deal_id in self._pending.running or self._stop.is_set():
                return
            if self._pending.retry_at.get(deal_id, 0.0) > time.monotonic():
                return
            self._pending.running.add(deal_id)
            self.metrics.active.set(len(self._pending.running))
        self._pool.submit(self._work, deal_id)

    def _work(self, deal_id: str) -> None:
        try:
            record = self.store.get("deals", deal_id, DealRecord)
            if record is None or record.phase.is_terminal() or self._stop.is_set():
                return
            if record.phase in (Phase.NEW, Phase.RUNNING):
                record = self._run(record)
            if record.phase is Phase.EXECUTED:
                record = self._add(record)
            if record.phase is Phase.RAN:
                self._submit(record)
        except (JobRefused, InputError) as exc:
            record = self.store.get("deals", deal_id, DealRecord)
            if record is not None:
                self._refuse(record, str(exc))
        except LilypadError as exc:
            log.warning("deal %s: %s; retrying in %gs", deal_id, exc, RETRY_S)
            failed = self.store.get("deals", deal_id, DealRecord)
            if failed is not None:
                self._save(failed, error=str(exc)[:500])
            self._retry_later(deal_id)
        except Exception:
            log.exception("deal %s: unexpected failure; retrying", deal_id)
            self._retry_later(deal_id)
        finally:
            with self._lock:
                self._pending.running.discard(deal_id)
                self.metrics.active.set(len(self._pending.running))
            self._wake.set()

    def _retry_later(self, deal_id: str) -> None:
        with self._lock:
            self._pending.retry_at[deal_id] = time.monotonic() + RETRY_S

    def _run(self, record: DealRecord) -> DealRecord:
        deal = record.deal
        status = self.market.deal_status(deal.deal_id)
        if status.state is not DealState.CREATED:
            raise JobRefused(f"deal is {status.state.name.lower()} on chain, not created")
        if status.deadline <= self.clock():
            raise JobRefused(f"the result deadline {status.deadline} has passed")
        spec = verified_spec(self._submission(deal), deal)
        if spec.module not in self.config.modules:
            raise JobRefused(
                f"module {spec.module} is not served here ({', '.join(self.config.modules)})"
            )
        if record.runs >= MAX_RUNS:
            # the same failure each time (a bad mount, a broken engine): stop spending on it
            raise JobRefused(f"gave up after {record.runs} failed starts: {record.error}")
        left = int(status.deadline - self.clock())
        needed = spec.timeout_s + self.config.submit_margin_s
        if left < needed and deal.deal_id not in self._input_waits():
            raise JobRefused(
                f"only {left}s left before the deadline; {spec.module} may take {spec.timeout_s}s "
                f"plus {self.config.submit_margin_s}s to submit"
            )
        inputs = self._inputs(record, spec, latest_start=status.deadline - needed)
        if isinstance(inputs, str):  # the job cannot run: its result says so
            return self._save(
                record, phase=Phase.EXECUTED, module=spec.module, duration_ms=0, error=inputs[:500]
            )
        if inputs:
            record = self._keep(record, spec)
        record = self._save(record, phase=Phase.RUNNING, module=spec.module, runs=record.runs + 1)
        log.info("deal %s: running %s (run %d)", deal.deal_id, spec.module, record.runs)
        relay = None
        if self.config.relay_logs:
            relay = LogRelay(
                self.solver, self.account, deal.deal_id, interval_s=self.config.log_interval_s
            )
        try:
            execution = execute_job(
                self.executor,
                spec,
                self.results_dir / deal.deal_id,
                self.config.weights,
                inputs,
                on_stderr=relay.line if relay is not None else None,
            )
        finally:
            if relay is not None:
                relay.close()
        self.metrics.jobs_run.labels(spec.module).inc()
        self.metrics.job_duration.labels(spec.module).observe(execution.duration_ms / 1000)
        if not execution.ok:
            self.metrics.jobs_failed.labels(execution.status.value).inc()
            log.warning(
                "deal %s: %s (its result is submitted as is)", deal.deal_id, execution.message
            )
        return self._save(record, phase=Phase.EXECUTED, duration_ms=execution.duration_ms)

    def _inputs(
        self, record: DealRecord, spec: JobSpec, latest_start: float
    ) -> tuple[JobInput, ...] | str:
        """The job's file inputs, fetched; or why they keep it from running, once the result
        that says so is written (see :func:`~resource_provider.runner.not_run`).

        An input the module cannot take is the result at once (exit code 2: any mediator finds
        the same). One that cannot be fetched is tried again, pass after pass, until the job
        could no longer start and finish in time (``latest_start``) or for ``input_wait_s``,
        whichever comes first; then the result says so (exit code 123) and is submitted like any
        other, so the deadline never passes without a result (which would cost the collateral).
        Nobody is judged on that result: the job creator challenges it, and the mediator leaves it
        to time out.

        Raises:
            InputUnavailable: an input could not be fetched, and there is time to try again.
        """
        deal_id = record.deal_id
        folder = self.results_dir / deal_id
        try:
            inputs = job_inputs(self.storage, spec)
        except UnacceptableInput as exc:
            log.warning("deal %s: %s; the job does not run (exit code 2)", deal_id, exc)
            self.metrics.jobs_failed.labels("bad_input").inc()
            not_run(self.executor, folder, exc.input, EXIT_BAD_INPUT)
            self._input_wait_over(deal_id)
            return str(exc)
        except InputUnavailable as exc:
            now = self.clock()
            since = self._input_waits().get(deal_id)
            if since is None:
                self._set_input_wait(deal_id, now)
                since = now
            if now + RETRY_S < latest_start and now - since < self.config.input_wait_s:
                raise
            item, why = exc.input, f"{exc}; gave up after {now - since:.0f}s"
            log.warning("deal %s: %s (exit code 123)", deal_id, why)
        else:
            if not inputs or self.clock() <= latest_start:
                self._input_wait_over(deal_id)
                return inputs
            # fetched, but too late to run the job before the deadline: the last one held it up
            item, why = file_inputs(spec)[-1], "the inputs came too late to run the job in time"
            log.warning("deal %s: %s (exit code 123)", deal_id, why)
        self.metrics.jobs_failed.labels("input_unavailable").inc()
        not_run(self.executor, folder, item, EXIT_INPUT_UNAVAILABLE)
        self._input_wait_over(deal_id)
        return why

    def _keep(self, record: DealRecord, spec: JobSpec) -> DealRecord:
        """Pin the job's inputs on this provider's IPFS node until the deal settles, each pin on
        the deal's record before it is made (see :func:`~resource_provider.inputs.keep`)."""
        items = file_inputs(spec, modules.resolve(spec.module))
        with self._keeping:
            planned = dict(record.kept)

            def note(cid: str, kind: PinType) -> None:
                planned[cid] = kind
                self._save(record, kept=dict(planned))

            ours = {**self._pins_of_open_deals(but=record.deal_id), **record.kept}
            held = keep(self.storage, items, ours=ours, note=note)
            return self._save(record, kept={**record.kept, **held})

    def _finish(self, record: DealRecord, **changes: Any) -> None:
        """Save ``record`` in a terminal phase, unpinning what it held for its inputs (unless
        another open deal holds it too)."""
        with self._keeping:
            if record.kept:
                release(self.storage, record.kept, self._pins_of_open_deals(but=record.deal_id))
            self._save(record, kept={}, **changes)

    def _pins_of_open_deals(self, but: str) -> dict[str, PinType]:
        """The input pins every open deal but ``but`` holds."""
        with self._lock:
            deal_ids = [deal_id for deal_id in self._open if deal_id != but]
        held: dict[str, PinType] = {}
        for deal_id in deal_ids:
            other = self.store.get("deals", deal_id, DealRecord)
            if other is not None:
                held.update(other.kept)
        return held

    def _input_waits(self) -> dict[str, float]:
        """Deals whose inputs could not be fetched: the chain time of the first failure (kept in
        ``meta.json``, so a restart does not start the wait again, nor refuse such a deal as
        too late to run when its result must still be submitted)."""
        return dict(self.store.meta("input_waits", {}))

    def _set_input_wait(self, deal_id: str, since: float) -> None:
        with self._lock:
            self.store.set_meta(input_waits={**self._input_waits(), deal_id: since})

    def _input_wait_over(self, deal_id: str) -> None:
        with self._lock:
            waits = self._input_waits()
            if waits.pop(deal_id, None) is not None:
                self.store.set_meta(input_waits=waits)

    def _submission(self, deal: Deal) -> JobSubmission:
        """The deal's signed job offer and spec: from the solver once, then from this provider's
        own state (checked against the deal each time), so that a provider restarted while the
        solver is down still runs the job it took."""
        kept = self.store.get("submissions", deal.deal_id, JobSubmission)
        if kept is not None:
            return kept
        submission = job_submission(self.solver, deal.job_offer_hash)
        self.store.put("submissions", deal.deal_id, submission)
        return submission

    def _add(self, record: DealRecord) -> DealRecord:
        """Add the finished result folder to IPFS (pinned). A failure (the node is down, the disk
        full) is retried by the caller, pass after pass until the deadline: the job is not run
        again, and a restart resumes here."""
        cid = self.storage.add(self.results_dir / record.deal_id)
        log.info("deal %s: result %s in %d ms", record.deal_id, cid, record.duration_ms or 0)
        return self._save(record, phase=Phase.RAN, result_cid=str(cid))

    def _submit(self, record: DealRecord) -> None:
        """Put the result CID on chain unless the chain already has it."""
        deal = record.deal
        assert record.result_cid is not None
        cid = bytes(CID.parse(record.result_cid))
        status = self.market.deal_status(deal.deal_id)
        if status.state is DealState.CREATED:
            if self.clock() > status.deadline:
                raise JobRefused(f"the result deadline {status.deadline} has passed")
            try:
                receipt = self.market.submit_result(self.account, deal, cid)
            except ContractReverted as exc:
                if exc.error != "WrongState":
                    raise
                status = self.market.deal_status(deal.deal_id)  # raced with ourselves: re-read
            else:
                self.metrics.results_submitted.inc()
                log.info("deal %s: result submitted in %s", deal.deal_id, receipt.tx_hash)
                self._save(record, phase=Phase.SUBMITTED)
                return
        if status.state is DealState.NONE:
            self._save(record, phase=Phase.SUBMITTED)  # settled meanwhile; the events say how
        elif status.result_tag == self.market.result_tag(cid):
            log.info("deal %s: result already on chain; not submitting again", deal.deal_id)
            self._save(record, phase=Phase.SUBMITTED)
        else:
            raise JobRefused(f"the chain holds another result for deal {deal.deal_id}")

    def _maybe_close(self, record: DealRecord) -> None:
        """Once a submitted deal's time is up, end it: claim the payment (nobody challenged the
        result within the window), or time out the mediation nobody ruled on (the collateral
        would stay locked until the job creator did, and its `lilypad run` may be gone)."""
        status = self.market.deal_status(record.deal_id)
        if self.clock() <= status.deadline:
            return
        close: Callable[[LocalAccount, Deal], Receipt]
        if status.state is DealState.SUBMITTED:
            what, close = "payment claim", self.market.claim_payment
        elif status.state is DealState.CHALLENGED:
            what, close = "mediation timeout", self.market.timeout_mediation
        else:
            return
        try:
            receipt = close(self.account, record.deal)
        except ContractReverted as exc:  # e.g. the job creator timed it out first
            log.info("deal %s: %s refused (%s); will look again", record.deal_id, what, exc.error)
            return
        log.info("deal %s: %s in %s", record.deal_id, what, receipt.tx_hash)

    def _refuse(self, record: DealRecord, why: str) -> None:
        self.metrics.jobs_failed.labels("refused").inc()
        log.warning("deal %s refused: %s", record.deal_id, why)
        self._finish(record, phase=Phase.REFUSED, error=why[:500])

    def _save(self, record: DealRecord, **changes: Any) -> DealRecord:
        updated = record.model_copy(update=changes)
        if updated.phase.value not in updated.times:
            times = {**updated.times, updated.phase.value: time.time()}
            updated = updated.model_copy(update={"times": times})
        with self._lock:
            self.store.put("deals", record.deal_id, updated)
            if updated.phase.is_terminal():
                self._open.pop(record.deal_id, None)
            else:
                self._open[record.deal_id] = updated.phase
        return updated

    # ------------------------------------------------------------------------------ offers
    def _busy_slots(self) -> int:
        active = Phase.NEW, Phase.RUNNING, Phase.EXECUTED, Phase.RAN
        with self._lock:
            return sum(1 for phase in self._open.values() if phase in active)

    def _slots(self) -> dict[int, list[_Offer]]:
        """The open slots, by nonce: each slot's offers (one per module)."""
        with self._lock:
            slots: dict[int, list[_Offer]] = {}
            for offer in self._offers.values():
                slots.setdefault(offer.nonce, []).append(offer)
            return slots

    def _refresh_offers(self) -> None:
        """Withdraw slots about to expire; list a fresh slot (an offer per module served, all
        with one nonce) for each free one."""
        now = int(self.clock())
        for offers in self._slots().values():
            if offers[0].expiry - now < self.config.offer_ttl_s // 3:
                self._cancel(offers[0])  # the solver withdraws the slot's other offers with it
        self.metrics.open_offers.set(len(self._offers))
        free = self.config.max_concurrent - self._busy_slots() - len(self._slots())
        if free <= 0 or time.monotonic() < self._backoff.until:
            return
        if self.config.auto_deposit:
            self._top_up(len(self._slots()) + free)
        for _ in range(free):
            wait = self._post_slot(now)
            if wait is not None:
                # Refused (deposit too small, rate limit) or unreachable: try again when the
                # solver said (a 429's Retry-After), else a while later rather than every pass.
                self._backoff.until = time.monotonic() + wait
                break

    def _post_slot(self, now: int) -> float | None:
        """List one slot: the one the solver asked to have again later while it is fresh, else
        a new one. Returns None once it is listed, else the seconds to wait before trying again.
        """
        signed = self._backoff.refused
        self._backoff.refused = []
        again = bool(signed) and signed[0].offer.expiry - now >= self.config.offer_ttl_s // 3
        if not signed or not again:
            signed = self._sign_slot(now)
        nonce = signed[0].offer.nonce
        try:
            ids = [accepted.id for accepted in self.solver.post_slot(signed).offers]
        except SolverBusy as exc:
            # Put off, not taken: the same offers (and nonce) go again once the wait is over.
            self._backoff.refused = signed
            wait = OFFER_RETRY_S if exc.retry_after is None else exc.retry_after
            wait = min(wait, MAX_RETRY_AFTER_S)
            log.info("slot %d put off for %gs: %s", nonce, wait, exc)
            return wait
        except AlreadyKnown as exc:
            if not again:
                log.warning("cannot list a slot: %s", exc)
                return OFFER_RETRY_S
            ids = [o.offer.struct_hash() for o in signed]  # it reached the solver after all
        except SolverError as exc:
            log.warning("cannot list a slot: %s", exc)
            return OFFER_RETRY_S
        with self._lock:
            for offer_id, offer in zip(ids, signed, strict=True):
                module = offer.module_reference or ""
                self._offers[offer_id] = _Offer(offer_id, nonce, offer.offer.expiry, module)
            self._save_offers()
        log.info(
            "slot %d listed for %d module(s) until %d", nonce, len(ids), signed[0].offer.expiry
        )
        return None

    def _sign_slot(self, now: int) -> list[api.SignedResourceOffer]:
        """The offers of a new slot: one per module served, all with one nonce never used
        before, so that the market makes one deal of them at most."""
        nonce = int(self.store.meta("next_nonce", 0)) or _initial_nonce()
        self.store.set_meta(next_nonce=nonce + 1)  # never reuse a nonce, even if posting fails
        return [self._sign_offer(module, now, nonce) for module in self.config.modules]

    def _sign_offer(self, module: str, now: int, nonce: int) -> api.SignedResourceOffer:
        """The offer of one slot (``nonce``) for ``module``."""
        offer = ResourceOffer(
            provider=self.address,
            module=module_id(module),
            machine=self.machine.encode(),
            price=self.config.price,
            collateral=self.config.collateral,
            min_timeout=self.min_timeouts[module],
            mediators=self.config.mediators,
            expiry=now + self.config.offer_ttl_s,
            nonce=nonce,
        )
        chain_id, market = self.market.chain.chain_id, self.market.address
        # What the market view shows beyond the signed lanes (`lilypad providers list`): the
        # module's name and the GPUs offered by model (each at least the vram_mb lane).
        return api.SignedResourceOffer(
            offer=api.ResourceOffer.model_validate(offer.model_dump()),
            signature=offer.sign(self._signer, chain_id, market),
            module_reference=module,
            gpus=tuple(
                api.GpuInfo(model=_gpu_model(gpu.model), vram_mb=gpu.vram_mb)
                for gpu in self.hardware.gpus[: self.machine.gpus]
            ),
        )

    def _cancel(self, offer: _Offer) -> None:
        signed = self.account.sign_message(encode_defunct(text=cancel_message(offer.offer_id)))
        try:
            self.solver.cancel_offer(
                "resource", offer.offer_id, "0x" + bytes(signed.signature).hex()
            )
        except SolverRefused as exc:
            # Matched meanwhile (its deal arrives as an event) or already gone: once it has
            # expired, it can make no deal, and the slot is free again.
            if offer.expiry > self.clock():
                log.info("offer %s not withdrawn: %s", offer.offer_id, exc)
                return
        except SolverError as exc:
            log.warning("cannot withdraw offer %s: %s", offer.offer_id, exc)
            return
        self._drop_slot(offer.nonce)

    def _drop_slot(self, nonce: int) -> None:
        """Forget the offers of slot ``nonce`` (withdrawn, or one of them made a deal)."""
        with self._lock:
            for offer_id in [k for k, v in self._offers.items() if v.nonce == nonce]:
                del self._offers[offer_id]
            self._save_offers()

    def _save_offers(self) -> None:
        self.store.set_meta(offers={k: vars(v) for k, v in self._offers.items()})

    # -------------------------------------------------------------------------- event stream
    def _stream_loop(self) -> None:
        """Hand each deal the solver makes for this provider to the main loop at once. The
        stream reconnects by itself (and resumes where it was); a refused one starts again."""
        after = -1  # from now on: earlier deals are found on chain
        while not self._stop.is_set():
            stream = self._stream = self.solver.events(self.address, after=after)
            try:
                if self._stop.is_set():
                    return  # stopped before it could close this stream
                for event in stream:
                    self._heard(event)
            except SolverError as exc:
                if not self._stop.is_set():
                    log.debug("solver event stream: %s; reconnecting", exc)
            finally:
                stream.close()
            after = stream.last_id if stream.last_id is not None else after
            self._stop.wait(STREAM_RETRY_S)

    def _heard(self, event: OfferEvent | DealEvent) -> None:
        if not isinstance(event, DealEvent) or event.kind != EventKind.DEAL_CREATED:
            return
        if event.deal is not None and event.deal.provider == self.address:
            # as the chain's model, as DealCreated gives it (the wire model compares unequal)
            self._incoming.put(Deal.model_validate(event.deal.model_dump()))
            self._wake.set()


def _gpu_model(name: str) -> str:
    """A GPU's model as the driver names it, made fit to advertise: printable, at most
    :data:`lilypad.solver_api.MAX_GPU_MODEL` characters."""
    printable = "".join(c for c in name if c.isprintable()).strip() or "unknown GPU"
    return printable[: api.MAX_GPU_MODEL]


def _initial_nonce() -> int:
    """A nonce range of this provider's own: time-based, so a wiped state never reuses one."""
    return int(time.time()) << 20


def _hex(value: Any) -> str:
    return value if isinstance(value, str) else "0x" + bytes(value).hex()
