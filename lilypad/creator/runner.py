"""The runner: one job, from offer to verdict, for one account on one network.

See :mod:`lilypad.creator` for the flow and what each :class:`JobError` says of the funds.

    LilypadError
    └── JobError                  the job did not complete; the message says where the funds went
        ├── NoMatch               no provider before the offer expired (withdrawn)
        ├── ResultTimeout         no result by the deadline (refunded, with the collateral)
        ├── ModuleFailed          the module exited with an error on the provider (it was paid)
        ├── VerificationFailed    challenged, and no verified result came back
        ├── CheatCaught           the mediator ruled against the provider and gave no result
        ├── MediationExpired      no mediator ruled in time (both parties refunded)
        └── InputLost             the provider could not fetch an input (both parties refunded)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lilypad import solver_api as api
from lilypad.chain.crypto import Signer
from lilypad.chain.light import CreatorMarket, DealState
from lilypad.chain.offers import Deal, JobOffer
from lilypad.config import get_settings
from lilypad.creator._solver import MAX_RETRY_PAUSE_S, LogFollower, OfferEvents, SolverCalls
from lilypad.creator.records import JobRecord, JobState, Step, load_record, save_record
from lilypad.errors import (
    ConfigError,
    ContractReverted,
    CorruptBlock,
    InputError,
    LilypadError,
    MalformedContent,
    SolverError,
    StorageError,
    UnsafeEntryName,
)
from lilypad.fsutil import file_lock, replace_folder
from lilypad.jobs import ChainClock, JobSubmission, cancel_message
from lilypad.modules import JobSpec
from lilypad.network import NetworkProfile
from lilypad.solver_api import DealEvent, DepositShort, EventKind, OfferEvent
from lilypad.storage import open_storage, result_dir
from lilypad.storage.cid import CID
from lilypad.units import format_tokens
from lilypad.verification import Verify, audit_probability, draw_audit

#: Posts of one offer when the solver finds the deposit short (see JobRunner._fund_and_post).
POST_ATTEMPTS = 4
#: Seconds before the challenge window closes by which a result that cannot be fetched is
#: challenged (room for the transaction to be mined).
CHALLENGE_MARGIN_S = 60
#: Seconds between two looks at the chain while waiting on it (a deal, a result, a mediation).
CHAIN_POLL_S = 1.0
#: Why a result whose provider could not fetch an input is challenged (see :class:`InputLost`).
INPUT_LOST = "the provider could not fetch an input (exit code 123)"


class JobError(LilypadError):
    """The job did not complete; the message says what happened to the funds."""


class NoMatch(JobError):
    """No provider took the job before its offer expired."""


class ResultTimeout(JobError):
    """The provider delivered no result in time; the deal was timed out and refunded."""


class ModuleFailed(JobError):
    """The module ran on the provider and exited with an error (the result holds its logs)."""


class VerificationFailed(JobError):
    """The result was challenged and no verified result came back."""


class CheatCaught(JobError):
    """A mediator found the provider's result wrong: price and collateral were refunded."""


class MediationExpired(JobError):
    """The result was challenged and no mediator ruled in time: both parties were refunded."""


class Cancelled(JobError):
    """The job creator withdrew the offer before any provider took it: no funds moved."""


class InputLost(JobError):
    """The provider could not fetch one of the job's inputs (its result's exit code is 123).

    Nobody can prove later whether an input could be fetched then, so neither party is judged on
    it: the result is always challenged, the mediator leaves it, and once the mediation has timed
    out the job creator has its price and fee back and the provider its collateral, unpaid.
    """


@dataclass(frozen=True)
class RunOptions:
    """How a job is offered.

    ``target`` (``lilypad run --target``) asks the solver to match the offer with that provider
    only. The hint is not signed (the market has no such term): a solver that ignores it can make
    a deal with another provider, which binds like any other. The runner then says so (the step
    ``off_target``) and follows that deal to its end; it cannot undo it.
    """

    max_price: int
    timeout_s: int
    expires_in_s: int = 300
    mediators: tuple[str, ...] = ()
    retries: int = 0
    verify: Verify = Verify.AUDIT
    target: str | None = None

    def __post_init__(self) -> None:
        if self.target is not None and self.verify is Verify.REDUNDANT:
            raise InputError(
                f"--target {self.target} and --verify redundant exclude each other: redundancy "
                "needs a second provider",
                hint="use --verify audit or always with --target",
            )


@dataclass
class _Job:
    """One offer of a job and what is known of it while it runs.

    ``offer`` is None only for a job taken up from a record that predates saving it, once its
    deal is known; ``submission`` only while it is posted (the spec is not kept beyond that).
    ``lock`` holds :func:`_job_lock` while this process follows the job.
    """

    record: JobRecord
    offer: JobOffer | None
    result_limit: int | None = None
    submission: JobSubmission | None = None
    deal: Deal | None = None
    cid: CID | None = None
    lock: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    logs: LogFollower | None = None


class JobRunner:
    """Runs jobs for one account on one network.

    Args:
        profile: The network (chain, market, solver, IPFS endpoints).
        account: The job creator's key.
        market: The market, on the light chain client (``lilypad run`` starts in a fraction of
            the time web3 would take to import).
        on_step: Called for every :class:`Step`.
        fund: Deposits the amount it is given into the market (asking first if it must); called
            when this account's deposit cannot cover one more offer, or a challenge's fee. None:
            no deposit is made and a short deposit is an error.
    """

    def __init__(
        self,
        profile: NetworkProfile,
        account: Signer,
        market: CreatorMarket,
        on_step: Callable[[Step], None] = lambda _: None,
        fund: Callable[[int], None] | None = None,
    ) -> None:
        if not profile.solver_url:
            raise ConfigError(f"network {profile.name!r} names no solver_url")
        self.profile, self.account, self.market = profile, account, market
        self.on_step, self.fund = on_step, fund
        self.solver = SolverCalls(profile.solver_url)
        self.clock = ChainClock(market)
        self._reserves: dict[tuple[str, ...], int] = {}
        # The jobs each thread's run() started, whose locks it releases when it returns: one
        # runner may run jobs on several threads at once (an SDK client, a benchmark).
        self._owned = threading.local()
        self._last: JobRecord | None = None
        self._withdrawn: set[str] = set()  # offers withdraw_pending() withdrew

    @property
    def current(self) -> JobRecord | None:
        """The record of the latest job this runner started (what a Ctrl-C interrupted)."""
        return self._last

    def _thread_jobs(self) -> list[_Job]:
        jobs: list[_Job] | None = getattr(self._owned, "jobs", None)
        if jobs is None:
            jobs = self._owned.jobs = []
        return jobs

    def close(self) -> None:
        self.solver.close()
        self.market.chain.close()

    # ---------------------------------------------------------------------------- deposit
    def deposit_needed(self, amount: int) -> int:
        """How much must be deposited before an offer of ``amount`` can be posted: the solver
        counts what this account's open offers (other jobs running now) may still take."""
        # Commitments first: a deal made between the two reads lowers the balance by its price
        # and the commitments by the offer's whole max price, so this order never under-counts.
        committed = self.solver.committed(self.account.address)
        balance = self.market.balance_of(self.account.address)
        return max(0, amount + committed - balance)

    def deposit(self, amount: int) -> str:
        receipt = self.market.deposit(self.account, amount)
        return receipt.tx_hash

    def challenge_reserve(self, mediators: tuple[str, ...]) -> int:
        """The most a challenge of a deal with these mediators can cost (the highest fee among
        them): kept in the deposit beside the price, so that an audit can always be paid. Read
        once per runner (the CLI asks before its consent prompt, and again for each offer)."""
        if mediators not in self._reserves:
            fees = [self.market.mediator_fee(m) for m in mediators]
            self._reserves[mediators] = max(fees, default=0)
        return self._reserves[mediators]

    # ---------------------------------------------------------------------------- the job
    def run(self, spec: JobSpec, options: RunOptions) -> JobRecord:
        """Run ``spec`` through the market and return its completed record.

        Raises:
            NoMatch, ResultTimeout, VerificationFailed, CheatCaught, MediationExpired,
                ModuleFailed: the job did not complete (see the module docstring).
            SolverError, ChainError, StorageError: a service failed.
        """
        attempt = 0
        try:
            while True:
                try:
                    if options.verify is Verify.REDUNDANT:
                        return self._run_redundant(spec, options)
                    return self._run_once(spec, options)
                except (NoMatch, ResultTimeout) as exc:
                    attempt += 1
                    if attempt > options.retries:
                        raise
                    self.on_step(Step("retry", {"attempt": attempt, "reason": str(exc)}))
        finally:
            jobs = self._thread_jobs()
            for job in jobs:
                job.lock.close()
            jobs.clear()

    def _run_once(self, spec: JobSpec, options: RunOptions) -> JobRecord:
        events = self.solver.events(self.account.address)
        job = self._new_job(spec, options)
        try:
            self._post(job, options)
            self._wait_deal(job, events)
            self._wait_result(job, events)
            if self._fetch(job):
                self._judge(job, options.verify)
            if job.record.audited:
                self._await_mediation(job)
            self._check_exit(job.record)
            return job.record
        except LilypadError as exc:
            _failed(job.record, exc)
            raise
        finally:
            events.close()
            save_record(job.record)

    def _run_redundant(self, spec: JobSpec, options: RunOptions) -> JobRecord:
        """The job on two providers at once. Modules are deterministic, so equal CIDs mean the
        result is right unless both providers cheat alike (one operator with two accounts:
        redundancy is only as good as the providers' independence); different CIDs are both
        challenged and the mediator says which is right. With no second provider in time, the
        one result is audited instead."""
        events = self.solver.events(self.account.address)
        first = self._new_job(spec, options)
        jobs = [first]
        try:
            self._post(first, options)
            self._wait_deal(first, events)
            assert first.deal is not None
            second = self._new_job(spec, options, avoid=(first.deal.provider,))
            try:
                self._post(second, options)
                self._wait_deal(second, events)
                jobs.append(second)
            except NoMatch:
                self.on_step(Step("alone", {"provider": first.deal.provider}))
            delivered = []
            for job in jobs:
                try:
                    self._wait_result(job, events)
                    delivered.append(job)
                except ResultTimeout as exc:
                    _failed(job.record, exc)
            if not delivered:
                raise ResultTimeout(first.record.error or "no provider delivered a result")
            return self._judge_redundant(delivered)
        except LilypadError as exc:
            if not first.record.state.is_failure():
                _failed(first.record, exc)
            raise
        finally:
            events.close()
            for job in jobs:
                save_record(job.record)

    def _judge_redundant(self, jobs: list[_Job]) -> JobRecord:
        """Judge the results that came (two, or one when the other provider failed to deliver
        or none was found)."""
        first = jobs[0]
        both = len(jobs) == 2
        agree = (
            both
            and jobs[0].cid == jobs[1].cid
            and jobs[0].deal is not None
            and jobs[1].deal is not None
            and jobs[0].deal.provider != jobs[1].deal.provider
        )
        if agree:
            self.on_step(Step("agree", {"cid": str(first.cid)}))
            if self._fetch(first) and _input_lost(first.record):
                for job in jobs:  # two providers that could not fetch it are paid no more
                    job.record.output_dir = first.record.output_dir
                    self._challenge(job, INPUT_LOST)
            elif first.record.output_dir is not None:
                for job in jobs:
                    job.record.output_dir, job.record.gateway_url = (
                        first.record.output_dir,
                        first.record.gateway_url,
                    )
                    self._accept(job)
            else:
                self._challenge(jobs[1], "the same result as the other provider's, unfetchable")
        else:
            if both:
                self.on_step(Step("disagree", {"cids": [str(j.cid) for j in jobs]}))
            for job in jobs:
                if self._fetch(job):
                    why = "the providers' results differ" if both else "audit"
                    self._challenge(job, INPUT_LOST if _input_lost(job.record) else why)
        lost: list[InputLost] = []
        for job in jobs:
            if job.record.audited:
                try:
                    self._await_mediation(job)
                except InputLost as exc:
                    lost.append(exc)
                    job.record.error = str(exc)
                except JobError:
                    pass  # the other result may still be good; the record tells what happened
            save_record(job.record)
        if both:
            first.record.twin = jobs[1].record.to_dict()
        good = [j for j in jobs if j.record.state.is_success()]
        chosen = next((j for j in good if j.record.output_dir), None)
        if chosen is None and len(lost) == len(jobs):
            raise lost[0]
        if chosen is None:
            raise VerificationFailed(
                "neither provider's result could be verified: "
                + "; ".join(_outcome(j.record) for j in jobs)
            )
        self._check_exit(chosen.record)
        return chosen.record

    # ------------------------------------------------------------------------- offer, deal
    def _new_job(self, spec: JobSpec, options: RunOptions, avoid: tuple[str, ...] = ()) -> _Job:
        submission = self._submission(spec, options, avoid)
        record = JobRecord(
            spec.module,
            dict(spec.tunables),
            spec.spec_hash,
            self.profile.name,
            verify=options.verify.value,
            job_creator=self.account.address,
            offer=_wire(api.JobOffer, submission.offer),
            result_limit=spec.result_limit,
            target=options.target,
        )
        job = _Job(record, submission.offer, spec.result_limit, submission)
        self._thread_jobs().append(job)
        self._last = record
        return job

    def _submission(
        self, spec: JobSpec, options: RunOptions, avoid: tuple[str, ...] = ()
    ) -> JobSubmission:
        offer = JobOffer.for_spec(
            spec,
            job_creator=self.account.address,
            max_price=options.max_price,
            mediators=options.mediators,
            expiry=int(self.clock()) + options.expires_in_s,
            nonce=secrets.randbits(255),
            timeout=options.timeout_s,
        )
        signature = offer.sign(self.account, self.market.chain.chain_id, self.market.address)
        if options.target is None:
            return JobSubmission(offer=offer, signature=signature, spec=spec, avoid_providers=avoid)
        return api.JobSubmission.model_validate(
            {
                "offer": offer.model_dump(),
                "signature": signature,
                "spec": spec,
                "avoid_providers": avoid,
                "target_provider": options.target,
            }
        )

    def _post(self, job: _Job, options: RunOptions) -> None:
        record = job.record
        # Where this job's events on chain can start: every later look at the chain reads from here.
        record.from_block = self.market.chain.block_number()
        amount = options.max_price + self.challenge_reserve(options.mediators)
        # Several `lilypad run` of one account at once: each tops up and posts in turn, so
        # each sees the others' offers committed and no two approvals race.
        assert job.submission is not None
        with account_lock(self.account.address):
            record.job_offer_id = self._fund_and_post(job.submission, amount)
        job.lock.enter_context(_job_lock(record.job_offer_id))
        save_record(record)
        self._mark(record, "posted")
        self.on_step(Step("posted", {"job_offer_id": record.job_offer_id}))

    def _fund_and_post(self, submission: JobSubmission, amount: int) -> str:
        """Top the deposit up and post the offer. The solver may still find the deposit short
        (HTTP 402) when one of this account's deals was made while we looked: the deal lowers
        the balance a moment before the solver stops counting its offer. Look again, then."""
        for attempt in range(POST_ATTEMPTS):
            self._top_up(amount)
            try:
                return self.solver.post_offer(submission, clock=self.clock, on_step=self.on_step)
            except DepositShort:
                if attempt == POST_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def _top_up(self, amount: int) -> None:
        needed = self.deposit_needed(amount)
        if not needed:
            return
        if self.fund is None:
            raise InputError(
                f"the market deposit of {self.account.address} is {format_tokens(needed)} tokens "
                "short for this job (open offers of yours hold the rest)"
            )
        self.fund(needed)

    def _wait_deal(self, job: _Job, events: OfferEvents) -> None:
        record, offer = job.record, job.offer
        offer_id = record.job_offer_id
        assert offer_id is not None
        assert offer is not None
        for event in events.about(offer_id, deadline=offer.expiry + 5, clock=self.clock):
            if offer_id in self._withdrawn:
                self._end_withdrawn(job)
                return
            if event is None:  # nothing from the stream for a while: look for the deal directly
                found = self._looked_up_deal(job, offer_id)
                if found is not None:
                    self._dealt(job, *found)
                    return
            elif self._deal_event(job, event):
                return
        # The offer has expired: a deal made in its last second is on chain, whatever the solver
        # says (or if it says nothing, being down).
        deal = self._chain_deal(job)
        if deal is not None:
            self._dealt(job, deal, None)
            return
        self._cancel(record)
        target = _target(job)
        if target:
            raise NoMatch(
                f"provider {target} (--target) took no job before the offer expired; the offer "
                "was withdrawn and no funds moved",
                hint=f"check that {target} has an open offer for this module at --max-price or "
                "less (lilypad providers list), or run without --target",
            )
        raise NoMatch(
            "no provider took the job before its offer expired; the offer was withdrawn and no "
            "funds moved",
            hint="raise --max-price, or check that a provider serves this module",
        )

    def _end_withdrawn(self, job: _Job) -> None:
        """End a job whose offer :meth:`withdraw_pending` withdrew, unless the chain has its deal
        (made in the moment before): then it goes on from there.

        Raises:
            Cancelled: no deal: the offer is withdrawn and no funds moved.
        """
        record = job.record
        deal = self._chain_deal(job)
        if deal is not None:
            self._dealt(job, deal, None)
            return
        record.state = JobState.CANCELLED
        self.on_step(Step("withdrawn", {"job_offer_id": record.job_offer_id}))
        raise Cancelled("the offer was withdrawn before any provider took it; no funds moved")

    def withdraw_pending(self, job_offer_id: str) -> bool:
        """Withdraw the offer of a job that another thread of this process follows (the SDK's
        ``Job.cancel()``), while no provider has taken it; that thread then ends the job with
        :class:`Cancelled`. Whether it was withdrawn: False once it is matched or dealt (the deal
        binds; the job goes on to its end).

        Raises:
            SolverUnreachable, SolverBusy: not withdrawn: the offer may still be taken.
        """
        signature = "0x" + self.account.sign_message(cancel_message(job_offer_id)).hex()
        state = self.solver.withdraw(job_offer_id, signature)
        if state in (api.OfferState.MATCHED, api.OfferState.DEALT):
            return False
        self._withdrawn.add(job_offer_id)
        return True

    def _deal_event(self, job: _Job, event: OfferEvent | DealEvent) -> bool:
        """Take one event of the offer while it waits for a deal; whether the deal is made.

        Raises:
            SolverError: the chain refused the offer (its deal failed by its fault).
        """
        record = job.record
        if event.kind is EventKind.JOB_OFFER_REJECTED:
            assert isinstance(event, OfferEvent)
            raise SolverError(f"the job offer was refused: {event.reason}")
        if not isinstance(event, DealEvent):
            return False
        if event.kind is EventKind.DEAL_FAILED:
            raise SolverError(f"the job offer was refused: {event.error}")
        if event.kind is EventKind.DEAL_MATCHED:
            record.provider = event.provider
            self._mark(record, "matched")
            self.on_step(Step("matched", {"provider": record.provider}))
        elif event.kind is EventKind.DEAL_CREATED and event.deal is not None:
            self._dealt(job, event.deal, event.tx_hash)
            return True
        return False

    def _looked_up_deal(self, job: _Job, offer_id: str) -> tuple[Deal, str | None] | None:
        """The offer's deal and its transaction, from the solver or else from the chain."""
        view = self.solver.offer_deal(offer_id)
        if view is not None and view.deal is not None:
            return view.deal, view.tx_hash
        deal = self._chain_deal(job)
        return (deal, None) if deal is not None else None

    def _dealt(self, job: _Job, deal: Deal, tx: str | None) -> None:
        record = job.record
        job.deal = deal
        record.deal_id, record.provider = deal.deal_id, deal.provider
        record.price, record.collateral = str(deal.price), str(deal.collateral)
        record.deal = _wire(api.Deal, deal)
        record.state = JobState.DEALT
        record.txs["deal"] = tx or ""
        self._mark(record, "deal")
        save_record(record)
        self.on_step(
            Step(
                "deal",
                {
                    "deal_id": deal.deal_id,
                    "provider": deal.provider,
                    "price": deal.price,
                    "tx": record.txs["deal"],
                },
            )
        )
        target = _target(job)
        if target and target.lower() != deal.provider.lower():
            self.on_step(Step("off_target", {"target": target, "provider": deal.provider}))

    def _chain_deal(self, job: _Job) -> Deal | None:
        """The job's deal as the chain has it (found from the offer's used nonce)."""
        offer, record = job.offer, job.record
        assert offer is not None
        try:
            if not self.market.nonce_used(self.account.address, offer.nonce):
                return None
            return self.market.find_deal(
                self.account.address, offer.struct_hash(), record.from_block or 0
            )
        except LilypadError:
            return None  # the chain is out of reach for now; look again later

    # ------------------------------------------------------------------------------ result
    def _wait_result(self, job: _Job, events: OfferEvents) -> None:
        deal = job.deal
        assert deal is not None
        status = self.market.deal_status(deal.deal_id)
        self.on_step(Step("running", {"deadline": status.deadline}))
        job.logs = LogFollower(self.solver.client, deal.deal_id, self._sign, self.on_step)
        try:
            self._await_result(job, events, status.deadline)
        finally:
            self._logs_done(job)

    def _sign(self, text: str) -> str:
        return "0x" + self.account.sign_message(text).hex()

    def _logs_done(self, job: _Job) -> None:
        """The job's last log lines, before anything else is said of its result."""
        if job.logs is not None:
            job.logs.finish()
            job.logs = None

    def _await_result(self, job: _Job, events: OfferEvents, deadline: int) -> None:
        deal = job.deal
        assert deal is not None
        offer_id = deal.job_offer_hash
        for event in events.about(offer_id, deadline=deadline + 2, clock=self.clock):
            if event is None:  # nothing from the stream for a while: look for the result directly
                found = self._looked_up_result(job)
                if found is not None:
                    self._result(job, *found)
                    return
            elif (
                isinstance(event, DealEvent)
                and event.kind is EventKind.DEAL_RESULT_SUBMITTED
                and event.result_cid
            ):
                self._result(job, event.result_cid, event.tx_hash)
                return
        # The deadline has passed. The chain has the last word: a result the solver never passed
        # on (it may be down) is still the result.
        for _ in range(30):
            cid = self._chain_result(job)
            if cid is not None:
                self._result(job, cid, None)
                return
            if self._time_out(job):
                break
            time.sleep(1)  # the chain's clock is a little behind ours
        record = job.record
        record.state = JobState.TIMED_OUT
        raise ResultTimeout(
            f"provider {deal.provider} sent no result by the deadline; the deal was timed out "
            f"(tx {record.txs.get('timeout') or 'by someone else'}): your payment was refunded "
            f"and the provider's collateral of {format_tokens(deal.collateral)} tokens was paid "
            "to you"
        )

    def _looked_up_result(self, job: _Job) -> tuple[str, str | None] | None:
        """The result's CID (0x hex) and its transaction, from the solver or else the chain."""
        assert job.deal is not None
        view = self.solver.deal_result(job.deal.deal_id)
        if view is not None and view.result_cid:
            return view.result_cid, view.tx_hash
        cid = self._chain_result(job)
        return (cid, None) if cid is not None else None

    def _chain_result(self, job: _Job) -> str | None:
        """The result CID on chain as 0x hex, if the provider submitted one (whatever the solver
        says)."""
        deal, record = job.deal, job.record
        assert deal is not None
        try:
            if self.market.deal_status(deal.deal_id).state is DealState.CREATED:
                return None
            cid = self.market.result_cid(deal.deal_id, record.from_block or 0)
        except LilypadError:
            return None
        return "0x" + cid.hex() if cid else None

    def _time_out(self, job: _Job) -> bool:
        """End an overdue deal (refunding us, with the provider's collateral); whether it ended."""
        deal = job.deal
        assert deal is not None
        try:
            job.record.txs["timeout"] = self.market.timeout_result(self.account, deal).tx_hash
            return True
        except ContractReverted as exc:
            if exc.error == "DeadlineNotReached":
                return False
            if exc.error != "WrongState":
                raise
        # Someone else ended it: refunded (timed out), or a result came meanwhile.
        return self.market.deal_status(deal.deal_id).state is DealState.REFUNDED

    def _result(self, job: _Job, hex_cid: str, tx: str | None) -> None:
        self._logs_done(job)
        record = job.record
        try:
            cid = CID.parse(bytes.fromhex(hex_cid.removeprefix("0x")))
        except (InputError, ValueError):
            cid = None
        record.result_cid, record.state = (str(cid) if cid else hex_cid), JobState.RESULT_SUBMITTED
        record.txs["result"] = tx or ""
        self._mark(record, "result")
        save_record(record)
        self.on_step(Step("result", {"cid": record.result_cid, "tx": record.txs["result"]}))
        job.cid = cid

    def _fetch(self, job: _Job) -> bool:
        """Download and verify the result, retrying an unreachable IPFS node until the challenge
        window nearly closes; a result that fails verification, or that could not be fetched by
        then, is challenged (False)."""
        deal, record, cid = job.deal, job.record, job.cid
        assert deal is not None
        if cid is None:
            self._challenge(job, f"the provider submitted a malformed CID ({record.result_cid})")
            return False
        status = self.market.deal_status(deal.deal_id)
        open_window = status.state is DealState.SUBMITTED
        give_up_at = status.deadline - CHALLENGE_MARGIN_S if open_window else self.clock() + 60
        why = self._download_until(record, cid, give_up_at, self.clock, job.result_limit)
        if why is None:
            return True
        if not open_window:
            raise VerificationFailed(f"{why}; the challenge window had closed")
        self._challenge(job, why)
        return False

    def _download_until(
        self,
        record: JobRecord,
        cid: CID,
        give_up_at: float,
        clock: Callable[[], float],
        max_bytes: int | None = None,
    ) -> str | None:
        """Download ``cid``, retrying what the IPFS node or gateway fails with, at growing
        pauses, until ``clock()`` reaches ``give_up_at``; None once it is in place, else why not
        (content that is not what the CID names is not retried)."""
        pause = 1.0
        while True:
            try:
                self._download(record, cid, max_bytes)
                return None
            except (CorruptBlock, MalformedContent, UnsafeEntryName) as exc:
                return f"the result {cid} failed verification ({exc})"
            except StorageError as exc:
                if clock() + pause >= give_up_at:
                    return f"the result {cid} could not be fetched in time ({exc})"
                self.on_step(Step("download_retry", {"error": str(exc), "pause": pause}))
                time.sleep(pause)
                pause = min(2 * pause, MAX_RETRY_PAUSE_S)

    def _download(self, record: JobRecord, cid: CID, max_bytes: int | None = None) -> None:
        """Fetch ``cid`` into its result folder, every block verified.

        Raises:
            CorruptBlock, MalformedContent, UnsafeEntryName: the content is not what the CID
                names, or not a valid result (challenge it).
            StorageError: the IPFS node or gateway failed (try again).
        """
        dest = result_dir(cid)
        links = download(self.profile, cid, dest, max_bytes, self.on_step)
        record.output_dir = str(dest)
        record.skipped_symlinks = links
        record.gateway_url = gateway_link(self.profile, cid)
        self._mark(record, "downloaded")

    # ----------------------------------------------------------------------------- verdict
    def _judge(self, job: _Job, verify: Verify) -> None:
        """Accept the downloaded result, or audit it (challenge) as the policy draws."""
        deal, record = job.deal, job.record
        assert deal is not None
        if _input_lost(record):
            # Never accepted (that would pay for nothing), whatever the policy: see InputLost.
            self._challenge(job, INPUT_LOST)
            return
        if verify is Verify.NEVER:
            self._accept(job)
            return
        p = 1.0 if verify is Verify.ALWAYS else audit_probability(deal.price, deal.collateral)
        record.audit_probability = p
        if draw_audit(p):
            self._challenge(job, "audit" if verify is Verify.AUDIT else "--verify always")
        else:
            self.on_step(Step("not_audited", {"probability": p}))
            self._accept(job)

    def _accept(self, job: _Job) -> None:
        deal, record = job.deal, job.record
        assert deal is not None
        try:
            record.txs["accept"] = self.market.accept_result(self.account, deal).tx_hash
        except ContractReverted as exc:
            if exc.error != "UnknownDeal":
                raise
            record.txs["accept"] = ""  # the window had passed and the provider claimed payment
        record.state = JobState.ACCEPTED
        self._mark(record, "accepted")
        save_record(record)
        self.on_step(Step("accepted", {"tx": record.txs["accept"]}))

    def _challenge(self, job: _Job, why: str) -> None:
        """Challenge the result (paying the mediator's fee): a mediator re-runs the job."""
        deal, record = job.deal, job.record
        assert deal is not None
        short = deal.mediation_fee - self.market.balance_of(self.account.address)
        if short > 0 and self.fund is not None:
            self.fund(short)
        record.txs["challenge"] = self.market.challenge_result(self.account, deal).tx_hash
        record.audited, record.state = True, JobState.CHALLENGED
        record.error = None if why in ("audit", "--verify always") else why
        save_record(record)
        self.on_step(
            Step(
                "challenged",
                {"reason": why, "mediator": deal.mediator, "tx": record.txs["challenge"]},
            )
        )

    def _await_mediation(self, job: _Job) -> None:
        """Follow the challenged deal on chain until the mediator rules (or its time runs out,
        when the mediation is timed out here), then take the verdict's result."""
        deal, record = job.deal, job.record
        assert deal is not None
        announced = False
        while True:
            status = self.market.deal_status(deal.deal_id)
            if status.state is not DealState.CHALLENGED:
                break
            if self.clock() > status.deadline:
                with contextlib.suppress(ContractReverted):
                    receipt = self.market.timeout_mediation(self.account, deal)
                    record.txs["timeout"] = receipt.tx_hash
                continue
            if not announced:
                # a result that says an input was lost is left to time out (see InputLost)
                name = "input_lost" if _input_lost(record) else "mediating"
                detail = {"mediator": deal.mediator, "deadline": status.deadline}
                self.on_step(Step(name, detail))
                announced = True
            time.sleep(CHAIN_POLL_S)
        ruling = self.market.mediation(deal.deal_id, record.from_block or 0)
        if status.state is DealState.UPHELD:
            record.state = JobState.UPHELD
            self.on_step(Step("upheld", {"mediator": deal.mediator}))
            if record.output_dir is None:  # it could not be fetched before: the mediator could
                self._fetch_verdict(job, [job.cid, _cid_or_none(ruling[1] if ruling else b"")])
        elif status.state is DealState.REFUNDED and ruling is not None:
            record.state = JobState.PROVIDER_SLASHED
            refund = format_tokens(deal.price + deal.collateral)
            self.on_step(Step("slashed", {"provider": deal.provider, "refund": refund}))
            mediator_cid = _cid_or_none(ruling[1])
            if mediator_cid is None:
                raise CheatCaught(
                    f"the mediator found the result of provider {deal.provider} wrong and gave "
                    f"no result of its own; your payment and the collateral ({refund} tokens) "
                    "were paid to you",
                    hint="run the job again",
                )
            record.mediator_cid = str(mediator_cid)
            record.output_dir = None
            self._fetch_verdict(job, [mediator_cid])
        elif status.state is DealState.MEDIATION_EXPIRED:
            record.state = JobState.MEDIATION_EXPIRED
            if _input_lost(record):
                raise InputLost(
                    f"provider {deal.provider} could not fetch an input of the job "
                    f"({_not_run_line(record)}); nobody can tell now whether it could then, so "
                    "the challenge was left to time out: your payment and the fee were refunded, "
                    "and the provider got its collateral back and was not paid",
                    hint="check that every input is pinned where providers can fetch it "
                    "(lilypad ipfs pin add CID), then run the job again",
                )
            raise MediationExpired(
                f"no mediator ruled on the challenged result in time; the mediation was timed "
                f"out: your payment and the fee were refunded and provider {deal.provider} got "
                "its collateral back",
                hint="run the job again, with another --mediator",
            )
        else:
            raise VerificationFailed(
                f"deal {deal.deal_id} ended as {status.state.name.lower()} without a ruling"
            )

    def _fetch_verdict(self, job: _Job, cids: list[CID | None]) -> None:
        """Download the first of ``cids`` that can be fetched (a minute each at most)."""
        record = job.record
        errors = []
        for cid in [c for c in cids if c is not None]:
            why = self._download_until(
                record, cid, time.monotonic() + 60, time.monotonic, job.result_limit
            )
            if why is None:
                return
            errors.append(why)
        raise VerificationFailed(
            f"the mediator ruled ({record.state}), but no verified result could be fetched: "
            + "; ".join(errors),
            hint="fetch it later with lilypad ipfs get",
        )

    def _check_exit(self, record: JobRecord) -> None:
        """A module that failed on the provider failed deterministically: the provider did the
        work and was paid, but the job is not a success, so say so with the module's words."""
        folder = Path(record.output_dir or "")
        code = (folder / "exitCode").read_text().strip() if (folder / "exitCode").is_file() else ""
        if code == "0":
            return
        record.state = JobState.MODULE_FAILED
        stderr = folder / "stderr"
        tail = (
            stderr.read_text(errors="replace").strip().splitlines()[-5:] if stderr.is_file() else []
        )
        raise ModuleFailed(
            f"the module exited with {code or 'no exit code'} on the provider; its stderr ends: "
            + (" | ".join(tail) or "(empty)"),
            hint=f"the full result is in {folder}",
        )

    # --------------------------------------------------------------------- leave, come back
    def post(self, spec: JobSpec, options: RunOptions) -> JobRecord:
        """Post the job's offer and return its record, leaving the rest to :meth:`resume`
        (``lilypad run --detach``).

        Raises:
            InputError: ``--verify redundant`` or retries asked for: both need the runner to
                stay (to post the second or the next offer, which needs the spec).
        """
        if options.verify is Verify.REDUNDANT or options.retries:
            what = "--verify redundant" if options.verify is Verify.REDUNDANT else "--retries"
            raise InputError(
                f"{what} cannot be detached: the job's later offers are posted by the process "
                "that follows it",
                hint="drop --detach, or the option",
            )
        job = self._new_job(spec, options)
        try:
            self._post(job, options)
        finally:
            job.lock.close()
        return job.record

    def resume(self, record: JobRecord) -> JobRecord:
        """Follow a job from its record to its end, from whatever state it reached, with the
        verification policy it records (``lilypad jobs wait``): wait for the deal, the result
        or the mediator, then download, verify, judge and accept, saving the record as it goes.

        Every step looks at the chain first, so a process that stopped between a transaction
        and saving the record sends nothing twice. A job that has ended is returned (or its
        error raised) with nothing done on chain.

        Raises:
            InputError: another process follows the job, or it is not this account's.
            JobError: the job did not complete (as :meth:`run`).
            SolverError, ChainError, StorageError: a service failed; the record keeps its
                state, and this can be called again.
        """
        offer_id = _offer_id(record)
        with _job_lock(offer_id):
            record = load_record(offer_id)  # as it is now: another process may have moved it on
            self._check_owner(record)
            if record.state.is_terminal():
                return _ended(record)
            events = self.solver.events(self.account.address)
            job = _Job(record, None)
            try:
                job = self._taken_up(record)
                self._last = job.record  # what a Ctrl-C interrupted (JobRunner.current)
                self._follow(job, events)
                return job.record
            except LilypadError as exc:
                _failed(job.record, exc)
                raise
            finally:
                events.close()
                save_record(job.record)

    def withdraw(self, record: JobRecord) -> JobRecord:
        """Withdraw the job's offer at the solver while no provider has taken it (``lilypad
        jobs cancel``); a job already withdrawn is returned as it is.

        Raises:
            InputError: the offer is matched or dealt (the record is brought up to date), the
                job has ended, another process follows it, or it is not this account's.
            SolverError: the solver could not be reached: the offer may still be taken.
        """
        offer_id = _offer_id(record)
        with _job_lock(offer_id):
            record = load_record(offer_id)
            self._check_owner(record)
            if record.state is JobState.CANCELLED:
                return record
            if record.state is not JobState.CREATED:
                raise _not_pending(record)
            job = self._taken_up(record)
            self._dealt_meanwhile(job)
            signature = "0x" + self.account.sign_message(cancel_message(offer_id)).hex()
            state = self.solver.withdraw(offer_id, signature)
            if state in (api.OfferState.MATCHED, api.OfferState.DEALT):
                found = self._looked_up_deal(job, offer_id)
                if found is not None:
                    self._dealt(job, *found)
                raise _not_pending(job.record, matched=found is None)
            self._dealt_meanwhile(job)  # a deal made in the offer's last moment is on chain
            record.state = JobState.CANCELLED
            record.error = "the offer was withdrawn (lilypad jobs cancel); no funds moved"
            if state is api.OfferState.REJECTED:
                record.error = "the chain refused the offer; no funds moved"
            save_record(record)
            self.on_step(Step("withdrawn", {"job_offer_id": offer_id}))
            return record

    def time_out(self, record: JobRecord) -> JobRecord:
        """End an overdue deal (``lilypad jobs timeout``): no result by its deadline
        (``timeoutResult``: the price back, and the provider's collateral), or no ruling by the
        mediation's (``timeoutMediation``: both refunded). A deal that has ended is returned with
        its record brought up to date, and no transaction.

        Raises:
            InputError: the deadline has not passed (the message gives the chain's time and the
                deadline), a result waits to be judged, the job has no deal, another process
                follows it, or it is not this account's.
        """
        offer_id = _offer_id(record)
        with _job_lock(offer_id):
            record = load_record(offer_id)
            self._check_owner(record)
            job = self._taken_up(record)
            found = self._chain_deal(job) if job.deal is None else None
            if found is not None:  # dealt while nobody looked
                self._dealt(job, found, None)
            if job.deal is None:
                raise InputError(
                    f"job {offer_id} has no deal (state {record.state}): there is nothing to "
                    "time out",
                    hint=f"lilypad jobs cancel {offer_id} withdraws a pending offer",
                )
            deal = job.deal
            status = self.market.deal_status(deal.deal_id)
            if status.state is DealState.SUBMITTED:
                raise InputError(
                    f"deal {deal.deal_id} has a result ({record.result_cid or 'on chain'}) "
                    "waiting to be judged: there is nothing to time out",
                    hint=f"lilypad jobs wait {offer_id} downloads, verifies and accepts it",
                )
            if status.state in (DealState.CREATED, DealState.CHALLENGED):
                self._send_timeout(job, status.state, status.deadline)
                status = self.market.deal_status(deal.deal_id)
            self._settled(job, status.state)
            save_record(job.record)
            return job.record

    def _send_timeout(self, job: _Job, state: DealState, deadline: int) -> None:
        deal, record = job.deal, job.record
        assert deal is not None
        now = int(self.clock())
        what = "result" if state is DealState.CREATED else "mediation"
        late = InputError(
            f"the {what} deadline of deal {deal.deal_id} has not passed: chain time {now}, "
            f"deadline {deadline} ({max(1, deadline - now)} s to go)",
            hint="try again after the deadline",
        )
        if now <= deadline:
            raise late
        send = self.market.timeout_result if what == "result" else self.market.timeout_mediation
        try:
            record.txs["timeout"] = send(self.account, deal).tx_hash
        except ContractReverted as exc:
            if exc.error == "DeadlineNotReached":
                raise late from None
            if exc.error != "WrongState":
                raise
            # someone else ended it meanwhile: the state read next tells how

    def _settled(self, job: _Job, state: DealState) -> None:
        """Bring the record of an ended deal up to date, and say how it ended."""
        record = job.record
        if state is DealState.REFUNDED and record.result_cid is None:
            record.state = JobState.TIMED_OUT
            record.error = (
                f"provider {record.provider} sent no result by the deadline; the deal was timed "
                "out: your payment was refunded and the provider's collateral paid to you"
            )
        elif state is DealState.MEDIATION_EXPIRED:
            record.state = JobState.MEDIATION_EXPIRED
            record.error = (
                "no mediator ruled in time; the mediation was timed out: your payment and the "
                "fee were refunded and the provider got its collateral back"
            )
        self.on_step(
            Step(
                "settled",
                {"state": record.state.value, "tx": record.txs.get("timeout") or "none sent"},
            )
        )

    def _check_owner(self, record: JobRecord) -> None:
        owner = record.job_creator or (record.offer or {}).get("job_creator")
        if owner and owner.lower() != self.account.address.lower():
            raise InputError(
                f"job {record.job_offer_id} was posted by {owner}, not by {self.account.address} "
                "(the key given)",
                hint="give that account's key (--key-file, or $WEB3_PRIVATE_KEY)",
            )

    def _taken_up(self, record: JobRecord) -> _Job:
        """The job as far as its record and the chain know it, with whatever the record lacks
        (records of earlier versions: the offer, the deal) recovered and saved in it."""
        job = _Job(record, _offer_from(record), record.result_limit)
        if record.deal:
            job.deal = api.Deal.model_validate(record.deal)
        elif record.deal_id is not None:
            job.deal = self._recovered_deal(record)
            record.deal = _wire(api.Deal, job.deal)
        if job.offer is None and job.deal is None:
            self._offer_from_solver(job)
        if job.deal is not None and job.deal.job_creator.lower() != self.account.address.lower():
            record.job_creator = job.deal.job_creator
            self._check_owner(record)
        if record.result_cid is not None:
            job.cid = _cid_or_none(_cid_bytes(record.result_cid))
        save_record(record)
        return job

    def _recovered_deal(self, record: JobRecord) -> Deal:
        deal = self.market.find_deal(
            self.account.address, _offer_id(record), record.from_block or 0
        )
        if deal is None or deal.deal_id != record.deal_id:
            raise InputError(
                f"no deal {record.deal_id} of job offer {record.job_offer_id} by "
                f"{self.account.address} on chain {self.profile.name!r}",
                hint="is this the account that posted it (--key-file, or $WEB3_PRIVATE_KEY)?",
            )
        return deal

    def _offer_from_solver(self, job: _Job) -> None:
        """The offer of a record that predates saving it, as the solver keeps it."""
        record = job.record
        offer_id = _offer_id(record)
        try:
            view = self.solver.client.job_offer(offer_id)
        except SolverError as exc:
            raise SolverError(
                f"the record of job {offer_id} predates saving its offer, and the solver cannot "
                f"give it: {exc.message}",
                hint="try again once the solver answers (lilypad network status)",
            ) from exc
        record.job_creator = view.signer
        self._check_owner(record)
        job.offer = view.offer.offer
        record.offer = _wire(api.JobOffer, job.offer)
        job.result_limit = record.result_limit = view.offer.spec.result_limit

    def _dealt_meanwhile(self, job: _Job) -> None:
        """Raise if the chain has the offer's deal (saving it in the record first)."""
        deal = self._chain_deal(job)
        if deal is not None:
            self._dealt(job, deal, None)
            raise _not_pending(job.record)

    def _follow(self, job: _Job, events: OfferEvents) -> None:
        """Take the job on from where its record stands to its end."""
        record = job.record
        offer_id = _offer_id(record)
        if job.deal is None:
            found = self._looked_up_deal(job, offer_id)  # it may have been made meanwhile
            if found is not None:
                self._dealt(job, *found)
            else:
                self._end_if_withdrawn(job)
                self._wait_deal(job, events)
        if record.result_cid is None:
            result = self._looked_up_result(job)
            if result is not None:
                self._result(job, *result)
            else:
                self._wait_result(job, events)
        self._judge_again(job, Verify(record.verify))
        if record.audited:
            self._await_mediation(job)
        self._check_exit(record)

    def _end_if_withdrawn(self, job: _Job) -> None:
        """A pending offer the solver no longer holds (withdrawn, expired, refused) and the chain
        made no deal of has ended: say so now rather than wait for its expiry."""
        offer_id = _offer_id(job.record)
        try:
            state = self.solver.client.job_offer(offer_id).state
        except SolverError:
            return  # the wait looks again, and the chain has the last word at the expiry
        if state in (api.OfferState.CANCELLED, api.OfferState.EXPIRED, api.OfferState.REJECTED):
            job.record.state = JobState.CANCELLED
            raise NoMatch(
                f"the offer is {state} at the solver and no provider took it; no funds moved",
                hint="run the job again",
            )

    def _judge_again(self, job: _Job, verify: Verify) -> None:
        """Judge a submitted result as the chain has it now: a verdict already sent by a process
        that stopped before saving it is not sent again."""
        deal, record = job.deal, job.record
        assert deal is not None
        state = self.market.deal_status(deal.deal_id).state
        if state is DealState.SUBMITTED and record.state is not JobState.CHALLENGED:
            if verify is not Verify.REDUNDANT:
                if self._fetch(job):
                    self._judge(job, verify)
                return
            # The other provider's result is not at hand here: audited, as a redundant job
            # whose second provider could not be found.
            self.on_step(Step("alone", {"provider": deal.provider}))
            if self._fetch(job):
                self._challenge(job, INPUT_LOST if _input_lost(record) else "audit")
        elif state is DealState.NONE:
            # Settled and paid: accepted (perhaps by a process that stopped before saving it), or
            # claimed by the provider once the challenge window passed.
            if self._fetch(job):
                self._accept(job)
        else:
            record.audited = True
            if record.state is JobState.RESULT_SUBMITTED:
                record.state = JobState.CHALLENGED

    # ----------------------------------------------------------------------------- helpers
    def _cancel(self, record: JobRecord) -> None:
        if record.job_offer_id is None:
            return
        signature = "0x" + self.account.sign_message(cancel_message(record.job_offer_id)).hex()
        self.solver.cancel(record.job_offer_id, signature)
        record.state = JobState.CANCELLED

    def cancel(self, record: JobRecord) -> None:
        """Withdraw a job's offer if it is still pending (Ctrl-C)."""
        self._cancel(record)
        save_record(record)

    def _mark(self, record: JobRecord, phase: str) -> None:
        """Milliseconds from the record's start to ``phase`` (posted, matched, deal, result,
        downloaded, accepted): what ``bench/e2e_overhead.py`` breaks the overhead down by."""
        record.timings_ms.setdefault(phase, int((time.time() - record.started_at) * 1000))


def _input_lost(record: JobRecord) -> bool:
    """Whether the downloaded result says the provider could not fetch an input (exit code 123,
    :data:`resource_provider.executors.EXIT_INPUT_UNAVAILABLE`)."""
    from resource_provider.executors import EXIT_INPUT_UNAVAILABLE  # NOTE: lazy: run's start-up

    code = Path(record.output_dir or "") / "exitCode"
    return (
        record.output_dir is not None
        and code.is_file()
        and (code.read_text(errors="replace").strip() == str(EXIT_INPUT_UNAVAILABLE))
    )


def _not_run_line(record: JobRecord) -> str:
    """The line the provider's result gives on stderr for a job that did not run."""
    stderr = Path(record.output_dir or "") / "stderr"
    text = stderr.read_text(errors="replace").strip() if stderr.is_file() else ""
    return text.splitlines()[-1].removeprefix("lilypad: ")[:300] if text else "no reason given"


def _target(job: _Job) -> str | None:
    """The provider the job was offered to alone (``--target``): its submission's while it is
    known, else its record's (a job taken up by ``jobs wait``)."""
    submission = job.submission
    if isinstance(submission, api.JobSubmission) and submission.target_provider:
        return submission.target_provider
    return job.record.target


def _failed(record: JobRecord, exc: LilypadError) -> None:
    record.error = str(exc)
    if not isinstance(exc, JobError) and not record.state.is_terminal():
        # A service failed (chain, solver, IPFS) or a deposit was refused: the job goes on on
        # chain all the same, and `lilypad jobs wait` takes it up from here.
        return
    if not record.state.is_failure():  # a state that tells more than "failed" stays
        record.state = JobState.FAILED


#: What a job that ended in each failure state raised, for a `lilypad jobs wait` of it.
_ENDED_AS: dict[JobState, type[JobError]] = {
    JobState.CANCELLED: NoMatch,
    JobState.TIMED_OUT: ResultTimeout,
    JobState.MODULE_FAILED: ModuleFailed,
    JobState.MEDIATION_EXPIRED: MediationExpired,
    JobState.PROVIDER_SLASHED: CheatCaught,
}


def _ended(record: JobRecord) -> JobRecord:
    """A job that has ended: its record when it succeeded, else the error it ended with."""
    if record.state.is_success() and (
        record.state is not JobState.PROVIDER_SLASHED or record.mediator_cid
    ):
        return record
    error = _ENDED_AS.get(record.state, JobError)
    raise error(record.error or f"job {record.job_offer_id} ended {record.state}")


def _not_pending(record: JobRecord, *, matched: bool = False) -> InputError:
    what = "matched with a provider" if matched else f"{record.state}"
    if record.deal_id is not None:
        what = f"dealt (deal {record.deal_id}, provider {record.provider})"
    if record.state.is_terminal():
        return InputError(f"job {record.job_offer_id} has ended ({what}): nothing to cancel")
    return InputError(
        f"job {record.job_offer_id} is already {what}: its offer can no longer be withdrawn",
        hint=f"lilypad jobs wait {record.job_offer_id} follows it to its end",
    )


def _offer_id(record: JobRecord) -> str:
    if record.job_offer_id is None:  # never saved so: a record is written once it is posted
        raise InputError("the record has no job offer id")
    return record.job_offer_id


def _offer_from(record: JobRecord) -> JobOffer | None:
    return api.JobOffer.model_validate(record.offer) if record.offer else None


def _cid_bytes(text: str) -> bytes:
    """A CID as the record holds it (its string, or the 0x hex of a malformed one) as bytes."""
    if text.startswith("0x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            return b""
    try:
        return bytes(CID.parse(text))
    except (InputError, ValueError):
        return b""


def _outcome(record: JobRecord) -> str:
    return f"{record.provider}: {record.error or record.state}"


def _cid_or_none(raw: bytes) -> CID | None:
    try:
        return CID.parse(raw) if raw else None
    except (InputError, ValueError):
        return None


def download(
    profile: NetworkProfile,
    cid: CID,
    dest: Path,
    max_bytes: int | None = None,
    on_step: Callable[[Step], None] = lambda _: None,
) -> list[str]:
    """Fetch ``cid`` from the network's IPFS node (else its gateway) into ``dest``, every block
    verified, replacing what ``dest`` held; the symlinks left out (``path -> target``).

    Raises:
        CorruptBlock, MalformedContent, UnsafeEntryName: the content is not what the CID names,
            or not a valid result.
        StorageError: the IPFS node or gateway failed (try again).
    """
    on_step(Step("downloading", {"cid": str(cid), "dest": str(dest)}))
    storage = open_storage(
        api=profile.ipfs_api_url, gateway=None if profile.ipfs_api_url else profile.gateway_url
    )
    # A job run again with the same inputs gives the same CID, and so the same folder: fetch
    # beside it, then put the verified copy in its place.
    fresh = dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}")
    links: list[str] = []
    try:
        storage.get(
            cid,
            fresh,
            on_symlink=lambda link: links.append(f"{link.path} -> {link.target}"),
            max_bytes=max_bytes,
        )
        replace_folder(fresh, dest)
    finally:
        storage.close()
        shutil.rmtree(fresh, ignore_errors=True)  # gone once installed
    if links:  # verified as part of the CID, but never created: they could point anywhere
        on_step(Step("symlinks_skipped", {"count": len(links), "first": links[0]}))
    on_step(Step("verified", {"dest": str(dest)}))
    return links


def gateway_link(profile: NetworkProfile, cid: CID | str) -> str:
    """Where a browser can open ``cid``: the network's gateway, else ipfs.io."""
    return f"{(profile.gateway_url or 'https://ipfs.io').rstrip('/')}/ipfs/{cid}"


def result_of(record: JobRecord) -> CID:
    """The CID of the job's result: the mediator's where it ruled against the provider.

    Raises:
        InputError: the job has no result yet, or its provider's CID is malformed.
    """
    raw = record.mediator_cid or record.result_cid
    if raw is None:
        raise InputError(
            f"job {record.job_offer_id} has no result yet (state {record.state})",
            hint=f"lilypad jobs wait {record.job_offer_id} follows it to its end",
        )
    try:
        return CID.parse(raw)
    except (InputError, ValueError):
        raise InputError(
            f"job {record.job_offer_id}'s result {raw!r} is not a CID (the provider submitted a "
            "malformed one)"
        ) from None


@contextlib.contextmanager
def account_lock(address: str) -> Iterator[None]:
    """Hold ``address``'s lock on this machine, waiting for any other holder: `lilypad run`
    holds it while it tops up and posts an offer, `lilypad account deposit|withdraw` while they
    move funds, so a withdrawal never reads what offers commit while another process posts one,
    and two approvals never interleave."""
    with file_lock(_locks_dir() / f"{address}.lock"):
        yield


@contextlib.contextmanager
def _job_lock(job_offer_id: str) -> Iterator[None]:
    """Hold the job's lock while this process follows it: one `lilypad run` or `jobs wait|
    cancel|timeout` at a time per job (released when the block ends, or the process dies).

    Raises:
        InputError: another process on this machine follows the job now.
    """
    path = _locks_dir() / f"job-{job_offer_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"job {job_offer_id} is being followed by another lilypad process on this "
                "machine (a lilypad run or lilypad jobs wait)",
                hint="let that one finish, or stop it (Ctrl-C) and try again",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wire(model: type[api.JobOffer] | type[api.Deal], value: JobOffer | Deal) -> dict[str, Any]:
    """``value`` as the solver's wire model writes it (amounts as decimal strings: JSON readers
    that hold numbers as doubles keep them exact)."""
    return model.model_validate(value.model_dump()).model_dump(mode="json")


def _locks_dir() -> Path:
    """Where this machine's account locks are: several `lilypad run` of one account post in
    turn (:func:`lilypad.fsutil.file_lock`)."""
    return get_settings().data_dir / "locks"
