"""The on-chain job-creator bridge: contract-submitted jobs through the market.

A contract calls ``JobCreator.runJob(module, inputs, payee)`` and pays the job cost, which stays
that job's own funds. The bridge follows the chain (the truth; the solver is a convenience) and
takes every job to one of its three ends:

1. ``JobRequested``: a module this bridge does not serve (``BridgeConfig.modules``: a local path,
   a git URL, an unknown name) or inputs that do not render cancel the job at once, and nothing
   outside the served set is ever resolved or rendered. A file input is given by its IPFS path
   (``Image=bafy…`` or ``Image=bafy…/photo.png``) and checked on the bridge's IPFS node as
   ``lilypad run`` checks it (it exists, is a file of the allowed size, a picture decodes): one
   that is not cancels the job too. Otherwise the bridge signs a JobOffer for the JobCreator with
   nonce = the job id, a maximum price within the job's funds (less the mediation fee when it may
   audit, or when the job has a file input: see 3.), and the ERC-1271 signature blob, records it,
   and posts it with the spec to the solver.
2. The deal: from the chain's ``DealCreated`` (job creator = the JobCreator), bound to the job by
   the offer's struct hash, or from the solver (checked on chain). ``ResultSubmitted`` and
   ``MediationResolved`` are recorded by deal id whenever they are seen, and a deal learned late
   has its logs read back, so a result that lands first is never missed.
3. Each pass reads the deal's state on chain and acts: a submitted result is audited at random
   (``--verify``, :mod:`lilypad.verification`) through ``challengeResult`` or delivered with
   ``deliverResult``, except a result that says its provider could not fetch an input (exit code
   123): that one is always challenged, so that nobody is paid for it (the mediator leaves it, see
   :class:`lilypad.creator.runner.InputLost`, and the job is closed once the mediation times
   out); after a mediation it is delivered (the mediator's result when the provider lost) or the
   job closed; an overdue deal is closed (``closeJob`` times it out); an offer that finds no
   provider before it expires, or that the solver refuses, is cancelled.

A client's callback that reverts or runs out of its gas is recorded from ``JobDelivered`` and the
job is done: nothing is retried. Every job's state is on disk (:mod:`resource_provider.state`),
written before each transaction, so a restarted bridge (even after ``kill -9``) carries on.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from pydantic import BaseModel, ConfigDict

from lilypad.chain.events import ChainEvent
from lilypad.chain.job_creator import JobCreatorClient, JobState, bridge_signature
from lilypad.chain.light import DealState, DealStatus
from lilypad.chain.market import JobMarketClient
from lilypad.chain.offers import Deal, JobOffer
from lilypad.creator.runner import CHALLENGE_MARGIN_S
from lilypad.errors import ContractReverted, InputError, LilypadError, StorageError
from lilypad.jobs import ChainClock, JobSubmission
from lilypad.modules import JobSpec, render
from lilypad.modules.files import check_remote, file_inputs
from lilypad.solver_api import AlreadyKnown, OfferState, SolverClient, SolverRefused
from lilypad.storage import CID, Storage
from lilypad.verification import Verify, audit_probability, draw_audit
from resource_provider.executors import EXIT_INPUT_UNAVAILABLE
from resource_provider.executors.layout import EXIT_CODE
from resource_provider.service import ChainService
from resource_provider.state import JsonStore

log = logging.getLogger("lilypad.bridge")

#: Solver answers that refuse an offer for good (a bad offer or spec); others are retried.
_REFUSED = (400, 413, 422)


class BridgePhase(StrEnum):
    NEW = "new"  # requested on chain; nothing done yet
    POSTED = "posted"  # offer signed and recorded (``posted``: the solver has it); no deal yet
    DEALT = "dealt"  # its deal is on chain; followed to its end
    DELIVERED = "delivered"  # the client was called back (``callback_ok`` says how it went)
    CLOSED = "closed"  # the deal ended without a result to deliver; the payee got the rest
    CANCELLED = "cancelled"  # no deal; the payee got the whole amount

    def is_terminal(self) -> bool:
        return self in (BridgePhase.DELIVERED, BridgePhase.CLOSED, BridgePhase.CANCELLED)


_ENDED = {
    JobState.DELIVERED: BridgePhase.DELIVERED,
    JobState.CLOSED: BridgePhase.CLOSED,
    JobState.CANCELLED: BridgePhase.CANCELLED,
}


class BridgeJob(BaseModel):
    """The bridge's state of one requested job.

    Attributes:
        offer: The JobOffer signed for it, recorded before it is posted (deals bind to its hash).
        posted: Whether the solver has the offer (``job_offer_id``: its id there, if known).
        deal: The deal made from the offer.
        audit: The audit draw, made once when the result is on chain (None: not drawn yet).
        result_cid: The CID delivered to the client (0x hex of its binary form).
        callback_ok: Whether the client's ``submitResults`` succeeded.
        refund: What a closed or cancelled job returned to the payee.
        error: Why the job was cancelled or closed.
        input_lost: The provider's result says it could not fetch an input (challenged).
    """

    model_config = ConfigDict(frozen=True)

    job_id: int
    module: str
    inputs: tuple[str, ...]
    amount: int
    phase: BridgePhase = BridgePhase.NEW
    offer: JobOffer | None = None
    posted: bool = False
    job_offer_id: str | None = None
    deal: Deal | None = None
    audit: bool | None = None
    result_cid: str | None = None
    callback_ok: bool | None = None
    refund: int | None = None
    error: str | None = None
    input_lost: bool = False


class SeenDeal(BaseModel):
    """What the chain said about one of the JobCreator's deals, recorded as it is seen."""

    model_config = ConfigDict(frozen=True)

    deal: Deal
    result_cid: str | None = None  # ResultSubmitted: the provider's
    mediator_cid: str | None = None  # MediationResolved: the mediator's own result


@dataclass(frozen=True)
class BridgeConfig:
    """What the bridge serves and how it verifies.

    Attributes:
        modules: The exact ``name:version`` references it runs; any other module is cancelled.
        mediators: Mediators the job offers trust.
        verify: ``audit`` (random audits at the odds the deal's collateral calls for),
            ``always`` or ``never``.
        offer_ttl_s: How long an offer waits for a provider before the job is cancelled.
        poll_interval_s: Seconds between passes.
        start_block: Where to start reading events when no position is saved.
    """

    modules: tuple[str, ...]
    mediators: tuple[str, ...]
    verify: Verify = Verify.AUDIT
    offer_ttl_s: int = 600
    poll_interval_s: float = 1.0
    start_block: int = 0

    def __post_init__(self) -> None:
        if self.verify is Verify.REDUNDANT:
            raise InputError(
                "the bridge verifies with audit, always or never, not redundant "
                "(a contract job is one deal)"
            )
        if not self.modules:
            raise InputError("the bridge must serve at least one module")


class JobCreatorBridge(ChainService):
    """Serves one JobCreator contract with the bridge's account.

    The bridge owns ``solver`` and ``storage`` (where file inputs and results are looked at)
    from then on: :meth:`stop` closes them.
    """

    role = "bridge"
    logger = log
    join_timeout_s = 30.0  # a pass may send a transaction for each of several jobs

    def __init__(
        self,
        *,
        account: LocalAccount,
        market: JobMarketClient,
        job_creator: JobCreatorClient,
        solver: SolverClient,
        storage: Storage,
        state_dir: Path,
        config: BridgeConfig,
    ) -> None:
        super().__init__(
            chain=market.chain,
            contracts=[job_creator.contract, market.contract],
            events=(
                "JobRequested",
                "JobDelivered",
                "JobClosed",
                "JobCancelled",
                "DealCreated",
                "ResultSubmitted",
                "MediationResolved",
            ),
            store=JsonStore(state_dir),
            start_block=config.start_block,
            poll_interval_s=config.poll_interval_s,
        )
        self.account, self.market, self.job_creator = account, market, job_creator
        self.solver, self.storage, self.config = solver, storage, config
        self.clock = ChainClock(market)
        self._owns(solver.close)
        self._owns(storage.close)
        # The jobs each pass looks at (ended ones stay on disk, never read again), and the open
        # ones by the struct hash of their offer: how a DealCreated finds its job.
        unfinished = [j for j in self.store.all("jobs", BridgeJob) if not j.phase.is_terminal()]
        self._open = {job.job_id for job in unfinished}
        self._by_offer = {j.offer.struct_hash(): j.job_id for j in unfinished if j.offer}

    # ------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        log.info(
            "bridge %s serving JobCreator %s: modules %s, verify %s",
            self.account.address,
            self.job_creator.address,
            ", ".join(self.config.modules),
            self.config.verify.value,
        )
        super().start()

    def _act(self) -> None:
        """Move every open job on by what the chain says."""
        for job_id in sorted(self._open):
            job = self._get(job_id)
            if job is None or job.phase.is_terminal() or self._stop.is_set():
                continue
            try:
                self._advance(job)
            except LilypadError as exc:
                log.warning("job %d: %s; will retry", job.job_id, exc)
            except Exception:  # one job's bug must not hold up the others
                log.exception("job %d: step failed; will retry", job.job_id)

    # --------------------------------------------------------------------------- events
    def _apply(self, event: ChainEvent) -> None:
        args = event.args
        if event.address == self.job_creator.address:
            self._apply_job_event(event.name, args)
        elif event.name == "DealCreated":
            if args["jobCreator"] == self.job_creator.address:
                self._deal_seen(Deal.from_event(args["deal"]))
        elif event.name in ("ResultSubmitted", "MediationResolved"):
            seen = self.store.get("deals", str(args["dealId"]), SeenDeal)
            if seen is None:
                return  # not a deal of the JobCreator (its DealCreated came first)
            self._record_cid(seen, event.name, args)

    def _apply_job_event(self, name: str, args: dict[str, Any]) -> None:
        job_id = int(args["jobId"])
        job = self._get(job_id)
        if name == "JobRequested":
            if job is None:
                job = BridgeJob(
                    job_id=job_id,
                    module=str(args["module"]),
                    inputs=tuple(str(i) for i in args["inputs"]),
                    amount=int(args["amount"]),
                )
                self._put(job)
                self._open.add(job_id)
                log.info("job %d requested: %s %s", job_id, job.module, list(job.inputs))
            return
        if job is None or job.phase.is_terminal():
            return
        # The job ended on chain, by this bridge or by anyone (a payee's cancel, a delivery after
        # a mediation): the chain's word is final.
        update: dict[str, Any] = {}
        if name == "JobDelivered":
            update = {
                "phase": BridgePhase.DELIVERED,
                "callback_ok": bool(args["callbackOk"]),
                "result_cid": str(args["resultCid"]),
            }
        elif name == "JobClosed":
            update = {"phase": BridgePhase.CLOSED, "refund": int(args["refund"])}
        elif name == "JobCancelled":
            update = {"phase": BridgePhase.CANCELLED, "refund": int(args["refund"])}
        self._finish(job, **update)

    def _deal_seen(self, deal: Deal) -> SeenDeal:
        """Record a deal of the JobCreator and bind it to its job (by the offer's hash)."""
        seen = self.store.get("deals", deal.deal_id, SeenDeal)
        if seen is None:
            seen = SeenDeal(deal=deal)
            self.store.put("deals", deal.deal_id, seen)
        job_id = self._by_offer.get(deal.job_offer_hash)
        job = self._get(job_id) if job_id is not None else None
        if job is not None and job.phase is BridgePhase.POSTED:
            log.info("job %d: deal %s", job.job_id, deal.deal_id)
            self._put(job.model_copy(update={"phase": BridgePhase.DEALT, "deal": deal}))
        return seen

    def _record_cid(self, seen: SeenDeal, name: str, args: dict[str, Any]) -> SeenDeal:
        if name == "ResultSubmitted":
            seen = seen.model_copy(update={"result_cid": str(args["resultCid"])})
        elif not args["providerWins"] and args["resultCid"] not in ("0x", b""):
            seen = seen.model_copy(update={"mediator_cid": str(args["resultCid"])})
        self.store.put("deals", seen.deal.deal_id, seen)
        return seen

    # ----------------------------------------------------------------------------- jobs
    def _advance(self, job: BridgeJob) -> None:
        if job.phase is BridgePhase.NEW:
            self._sign(job)
        elif job.phase is BridgePhase.POSTED:
            self._await_deal(job)
        elif job.phase is BridgePhase.DEALT:
            self._follow_deal(job)

    def _sign(self, job: BridgeJob) -> None:
        """Check the request, then sign, record and post its offer.

        Raises:
            StorageError: the IPFS node could not be asked about a file input (next pass).
        """
        try:
            spec = self._render(job)
            self._check_files(spec)
            max_price = self._max_price(job, spec)
        except InputError as exc:
            self._cancel(job, str(exc))
            return
        offer = JobOffer.for_spec(
            spec,
            job_creator=self.job_creator.address,
            max_price=max_price,
            mediators=self.config.mediators,
            expiry=int(self.clock()) + self.config.offer_ttl_s,
            nonce=job.job_id,  # the contract validates an offer for job J only with nonce J
        )
        # Recorded before it leaves: any deal made from it can then be bound to the job.
        self._by_offer[offer.struct_hash()] = job.job_id
        self._put(job.model_copy(update={"phase": BridgePhase.POSTED, "offer": offer}))
        self._post(self._require(job.job_id), spec)

    def _render(self, job: BridgeJob) -> JobSpec:
        """The job's spec, from a served module only (nothing else is resolved, let alone
        fetched or rendered: a module string is the caller's, and may name any path)."""
        if job.module not in self.config.modules:
            close = difflib.get_close_matches(job.module, self.config.modules, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InputError(
                f"module {job.module!r} is not served by this bridge (it serves "
                f"{', '.join(self.config.modules)}){hint}"
            )
        return render(job.module, list(job.inputs))

    def _check_files(self, spec: JobSpec) -> None:
        """Check each file input on the bridge's IPFS node, as ``lilypad run`` does.

        Raises:
            InvalidTunable: one is not there, or not a file its module takes.
            StorageError: the node could not be asked.
        """
        items = file_inputs(spec)
        if not items:
            return
        workdir = self.store.root / "checks"
        workdir.mkdir(parents=True, exist_ok=True)
        for item in items:
            check_remote(item.tunable, f"{item.name}={item.ref}", item.ref, self.storage, workdir)

    def _max_price(self, job: BridgeJob, spec: JobSpec) -> int:
        """The job's funds, less the fee of an audit if this bridge may audit, or if the job has
        a file input (a result that says it could not be fetched is always challenged)."""
        fees = [fee for active, fee in map(self.market.mediator, self.config.mediators) if active]
        if not fees:
            raise InputError(
                f"none of the bridge's mediators ({', '.join(self.config.mediators)}) is "
                "registered in the market, so no deal could be made"
            )
        audits = self.config.verify is not Verify.NEVER or bool(file_inputs(spec))
        room = max(fees) if audits else 0
        if job.amount <= room:
            raise InputError(
                f"the job's funds ({job.amount}) do not cover the mediation fee ({room}) an "
                "audit needs; raise the JobCreator's job cost"
            )
        return job.amount - room

    def _post(self, job: BridgeJob, spec: JobSpec | None = None) -> None:
        assert job.offer is not None
        spec = spec or render(job.module, list(job.inputs))
        signature = bridge_signature(
            job.offer, self.account, self.market.chain.chain_id, self.market.address
        )
        try:
            offer_id: str | None = self.solver.post_job_offer(
                JobSubmission(offer=job.offer, signature=signature, spec=spec)
            ).id
        except AlreadyKnown:  # posted before a crash
            offer_id = None
        except SolverRefused as exc:
            if exc.status not in _REFUSED:
                raise
            self._cancel(job, f"the solver refused the job's offer: {exc}")
            return
        log.info("job %d: offer posted (%s)", job.job_id, offer_id or "already at the solver")
        self._put(job.model_copy(update={"posted": True, "job_offer_id": offer_id}))

    def _await_deal(self, job: BridgeJob) -> None:
        assert job.offer is not None
        if not job.posted:
            self._post(job)
            return
        if job.job_offer_id is not None:
            view = self.solver.job_offer(job.job_offer_id)
            found = view.deal.deal if view.deal is not None else None
            # as the chain's model, as DealCreated gives it (the wire model compares unequal)
            if found and self._deal_from_solver(job, Deal.model_validate(found.model_dump())):
                return
            if view.state in (OfferState.REJECTED, OfferState.CANCELLED):
                why = f": {view.deal.error}" if view.deal is not None and view.deal.error else ""
                self._cancel(job, f"the solver {view.state.value} the offer{why}")
                return
        if self.clock() > job.offer.expiry:
            self._cancel(job, "no provider took the job before its offer expired")

    def _deal_from_solver(self, job: BridgeJob, deal: Deal) -> bool:
        """Take the solver's word for a deal only once the chain confirms it is this job's."""
        assert job.offer is not None
        if (
            deal.job_offer_hash != job.offer.struct_hash()
            or deal.job_creator != self.job_creator.address
        ):
            log.warning(
                "job %d: the solver names deal %s of another offer", job.job_id, deal.deal_id
            )
            return False
        status = self.market.deal_status(deal.deal_id)
        if status.state is DealState.NONE:
            return False  # not on chain (yet): DealCreated will tell
        self._deal_seen(deal)
        self._catch_up(deal.deal_id)
        return True

    def _follow_deal(self, job: BridgeJob) -> None:
        assert job.deal is not None
        status = self.market.deal_status(job.deal.deal_id)
        state = status.state
        if state in (DealState.CREATED, DealState.CHALLENGED):
            if self.clock() > status.deadline:
                what = "no result" if state is DealState.CREATED else "no ruling"
                lost = "the provider could not fetch an input; " if job.input_lost else ""
                self._close(job, f"{lost}{what} before the deadline")
        elif state is DealState.SUBMITTED:
            self._judge(job, status)
        elif state is DealState.UPHELD or (
            state is DealState.REFUNDED and int(status.result_tag, 16) != 0
        ):
            self._deliver(job, status)
        elif state in (DealState.REFUNDED, DealState.MEDIATION_EXPIRED):
            why = {
                DealState.REFUNDED: "no result before the deadline, or refuted without one",
                DealState.MEDIATION_EXPIRED: "the mediation expired without a ruling",
            }[state]
            if job.input_lost:
                why = "the provider could not fetch an input; " + why
            self._close(job, why)
        else:  # NONE: settled and deleted; by this bridge's own delivery, or by the provider
            self._sync(job)

    def _judge(self, job: BridgeJob, status: DealStatus) -> None:
        """Audit the submitted result at random (drawn once, kept), or deliver it."""
        offer, deal = job.offer, job.deal
        assert offer is not None
        assert deal is not None
        if job.audit is None:
            lost = bool(file_inputs(render(job.module, list(job.inputs)))) and self._input_lost(
                deal, status
            )
            audit = lost or self._draw(deal)
            job = job.model_copy(update={"audit": audit, "input_lost": lost})
            self._put(job)  # before acting: a restart keeps the decision
            if lost:
                log.warning(
                    "job %d: the provider could not fetch an input (exit code 123); challenging "
                    "the result so that nobody is paid for it",
                    job.job_id,
                )
            log.info("job %d: %s the result", job.job_id, "auditing" if audit else "accepting")
        if not job.audit:
            self._deliver(job, status)
            return
        try:
            self.job_creator.challenge_result(self.account, job.job_id, offer, deal)
        except ContractReverted as exc:
            if exc.error not in ("CannotAffordAudit", "DeadlinePassed"):
                raise
            log.warning("job %d: cannot audit (%s); delivering unaudited", job.job_id, exc)
            self._put(job.model_copy(update={"audit": False}))
            return
        log.info("job %d: result challenged; a mediator re-runs it", job.job_id)

    def _input_lost(self, deal: Deal, status: DealStatus) -> bool:
        """Whether the submitted result says its provider could not fetch an input (its
        ``exitCode`` is 123). Read from IPFS; an unreadable result counts as not, once the
        challenge window nearly closes.

        Raises:
            StorageError: it could not be read, and there is time to try again.
        """
        cid = self._cid_for(deal, status)
        try:
            if cid is None:
                raise StorageError(f"the result of deal {deal.deal_id} is not in its logs yet")
            code = b""
            for chunk in self.storage.cat(f"{CID.parse(cid)}/{EXIT_CODE}"):
                code += chunk
                if len(code) > 16:  # no exit code is this long: not one of ours
                    break
        except InputError:  # a malformed CID: judged as any other result
            return False
        except StorageError:
            if self.clock() < status.deadline - CHALLENGE_MARGIN_S:
                raise
            log.warning("deal %s: its result's exit code could not be read", deal.deal_id)
            return False
        return code.strip() == str(EXIT_INPUT_UNAVAILABLE).encode()

    def _draw(self, deal: Deal) -> bool:
        if self.config.verify is Verify.ALWAYS:
            return True
        if self.config.verify is Verify.NEVER:
            return False
        return draw_audit(audit_probability(deal.price, deal.collateral))

    def _deliver(self, job: BridgeJob, status: DealStatus) -> None:
        assert job.deal is not None
        assert job.offer is not None
        cid = self._cid_for(job.deal, status)
        if cid is None:
            log.warning(
                "job %d: no result of deal %s in its logs yet", job.job_id, job.deal.deal_id
            )
            return
        try:
            delivery = self.job_creator.deliver_result(
                self.account, job.job_id, job.offer, job.deal, cid
            )
        except ContractReverted as exc:
            if exc.error != "JobNotOpen":
                raise
            self._sync(job)
            return
        if delivery.callback_ok:
            log.info("job %d: result delivered (%s)", job.job_id, delivery.receipt.tx_hash)
        else:
            log.warning(
                "job %d: result delivered, but the client's callback failed (recorded on chain "
                "as JobDelivered.callbackOk=false; not retried) (%s)",
                job.job_id,
                delivery.receipt.tx_hash,
            )
        self._finish(
            job,
            phase=BridgePhase.DELIVERED,
            callback_ok=delivery.callback_ok,
            result_cid="0x" + cid.hex(),
        )

    def _cid_for(self, deal: Deal, status: DealStatus) -> bytes | None:
        """The CID whose tag the market holds: the provider's, or after a refuting ruling the
        mediator's; read back from the logs if this bridge has not seen it."""
        for attempt in range(2):
            seen = self.store.get("deals", deal.deal_id, SeenDeal) or self._deal_seen(deal)
            for text in (seen.result_cid, seen.mediator_cid):
                if text is not None:
                    cid = bytes.fromhex(text.removeprefix("0x"))
                    if self.market.result_tag(cid) == status.result_tag:
                        return cid
            if attempt == 0:
                self._catch_up(deal.deal_id)
        return None

    def _catch_up(self, deal_id: str) -> None:
        """Read what the chain logged for a deal (a result, a ruling) into its record."""
        contract = self.market.contract
        events = [contract.events.ResultSubmitted(), contract.events.MediationResolved()]
        by_topic = {bytes.fromhex(e.topic.removeprefix("0x")): e for e in events}
        topics = [["0x" + t.hex() for t in by_topic], deal_id]
        logs = self.market.chain.logs(
            "get logs", self.market.address, topics, self.config.start_block
        )
        seen = self.store.get("deals", deal_id, SeenDeal)
        for entry in logs:
            event = by_topic[bytes(entry["topics"][0])]
            args = {k: _hex(v) for k, v in event.process_log(entry)["args"].items()}
            if seen is not None:
                seen = self._record_cid(seen, event.event_name, args)

    def _close(self, job: BridgeJob, why: str) -> None:
        assert job.deal is not None
        assert job.offer is not None
        try:
            refund = self.job_creator.close_job(self.account, job.job_id, job.offer, job.deal)
        except ContractReverted as exc:
            if exc.error != "JobNotOpen":
                raise
            self._sync(job)
            return
        log.warning("job %d closed, %d returned to the payee: %s", job.job_id, refund, why)
        self._finish(job, phase=BridgePhase.CLOSED, refund=refund, error=why[:500])

    def _cancel(self, job: BridgeJob, why: str) -> None:
        try:
            self.job_creator.cancel_job(self.account, job.job_id)
        except ContractReverted as exc:
            if exc.error == "NonceUsed":
                # A deal was made from the offer meanwhile: its DealCreated binds it.
                log.info("job %d: not cancelled, a deal was made (%s)", job.job_id, why)
                return
            if exc.error != "JobNotOpen":
                raise
            self._sync(job)
            return
        log.warning("job %d cancelled, funds returned: %s", job.job_id, why)
        self._finish(job, phase=BridgePhase.CANCELLED, refund=job.amount, error=why[:500])

    def _sync(self, job: BridgeJob) -> None:
        """Take the job's end from the chain, where it ended without this bridge's record."""
        ended = _ENDED.get(self.job_creator.job(job.job_id).state)
        if ended is not None:
            self._finish(job, phase=ended)
        elif job.error is None:
            why = (
                "its deal was settled to the provider before the result was delivered (the "
                "bridge was away for the whole challenge window); the job cannot end on chain"
            )
            log.error("job %d: %s", job.job_id, why)
            self._put(job.model_copy(update={"error": why}))

    def _finish(self, job: BridgeJob, **update: Any) -> None:
        self._put(job.model_copy(update=update))
        self._open.discard(job.job_id)
        if job.offer is not None:
            self._by_offer.pop(job.offer.struct_hash(), None)

    # ---------------------------------------------------------------------------- store
    def job(self, job_id: int) -> BridgeJob | None:
        """The bridge's record of job ``job_id``."""
        return self._get(job_id)

    def jobs(self) -> Sequence[BridgeJob]:
        """Every job the bridge has seen, by id."""
        return sorted(self.store.all("jobs", BridgeJob), key=lambda j: j.job_id)

    def _get(self, job_id: int) -> BridgeJob | None:
        return self.store.get("jobs", str(job_id), BridgeJob)

    def _require(self, job_id: int) -> BridgeJob:
        job = self._get(job_id)
        assert job is not None
        return job

    def _put(self, job: BridgeJob) -> None:
        self.store.put("jobs", str(job.job_id), job)


def _hex(value: Any) -> Any:
    return "0x" + bytes(value).hex() if isinstance(value, bytes) else value
