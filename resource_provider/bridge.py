"""The on-chain job-creator bridge: contract-submitted jobs through the market.

A contract calls ``JobCreator.runJob(module, inputs, payee)`` and pays the job cost into the
JobCreator's market balance. The bridge follows ``JobRequested`` and, for each job:

1. renders the spec from the module and inputs (bad inputs: ``cancelJob`` refunds the payee);
2. signs a JobOffer whose job creator is the JobCreator contract (it accepts the bridge's
   signature through ERC-1271), with the job's funds as the maximum price, and posts it with the
   spec to the solver;
3. once the deal's result is on chain (``ResultSubmitted``), calls ``deliverResult``, which accepts
   it, returns any change to the payee and calls the client back with the CID;
4. if the offer finds no provider before it expires, or the deal ends without a result, calls
   ``cancelJob`` so the payee gets the funds back.

Each job's state is on disk (:mod:`resource_provider.state`), so a restarted bridge carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from eth_account.signers.local import LocalAccount
from pydantic import BaseModel, ConfigDict

from lilypad.chain.events import ChainEvent, EventFollower
from lilypad.chain.light import DealState
from lilypad.chain.market import JobCreatorClient, JobMarketClient
from lilypad.chain.offers import Deal, JobOffer, Machine, module_id, spec_digest
from lilypad.errors import ChainError, InputError, LilypadError
from lilypad.jobs import JobSubmission
from lilypad.modules import JobSpec, render
from resource_provider.solver_client import SolverClient, SolverRefused
from resource_provider.state import JsonStore

log = logging.getLogger("lilypad.bridge")


class BridgePhase(StrEnum):
    NEW = "new"  # requested on chain
    POSTED = "posted"  # offer at the solver, waiting for a deal
    DEALT = "dealt"  # deal on chain, waiting for the result
    DELIVERED = "delivered"  # the client got its CID
    CANCELLED = "cancelled"  # funds returned to the payee

    def is_terminal(self) -> bool:
        return self in (BridgePhase.DELIVERED, BridgePhase.CANCELLED)


class BridgeJob(BaseModel):
    """The bridge's state of one requested job."""

    model_config = ConfigDict(frozen=True)

    job_id: int
    module: str
    inputs: tuple[str, ...]
    amount: int
    phase: BridgePhase = BridgePhase.NEW
    job_offer_id: str | None = None
    offer_expiry: int | None = None
    deal: Deal | None = None
    result_cid: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class BridgeConfig:
    """Offers the bridge makes.

    Attributes:
        mediators: Mediators the job offers trust.
        offer_ttl_s: How long an offer waits for a provider before the job is cancelled.
        min_timeout_s: The least time a provider gets for a result (more for slow modules:
            twice the module's timeout plus two minutes).
        poll_interval_s: Seconds between chain polls.
        start_block: Where to start reading events when no position is saved.
    """

    mediators: tuple[str, ...]
    offer_ttl_s: int = 600
    min_timeout_s: int = 600
    poll_interval_s: float = 1.0
    start_block: int = 0


class JobCreatorBridge:
    """Serves one JobCreator contract with the bridge's account."""

    def __init__(
        self,
        *,
        account: LocalAccount,
        market: JobMarketClient,
        job_creator: JobCreatorClient,
        solver: SolverClient,
        state_dir: Path,
        config: BridgeConfig,
    ) -> None:
        self.account, self.market, self.job_creator = account, market, job_creator
        self.solver, self.config = solver, config
        self.store = JsonStore(state_dir)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._follower = EventFollower(
            market.chain,
            [job_creator.contract, market.contract],
            from_block=int(self.store.meta("next_block", config.start_block)),
            events=("JobRequested", "ResultSubmitted"),
        )

    def start(self) -> None:
        log.info("bridge %s serving JobCreator %s", self.account.address, self.job_creator.address)
        self._thread = threading.Thread(target=self._loop, name="bridge", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.solver.close()

    def wait(self) -> None:
        while not self._stop.wait(1.0):
            pass

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except ChainError as exc:
                log.warning("chain: %s", exc)
            except Exception:
                log.exception("bridge pass failed")
            self._stop.wait(self.config.poll_interval_s)

    def step(self) -> None:
        """Apply new events, then move every open job one step on."""
        for event in self._follower.poll():
            self._apply(event)
        self.store.set_meta(next_block=self._follower.next_block)
        for job in self.store.all("jobs", BridgeJob):
            if job.phase.is_terminal():
                continue
            try:
                self._advance(job)
            except InputError as exc:
                self._cancel(job, str(exc))
            except LilypadError as exc:
                log.warning("job %d: %s; will retry", job.job_id, exc)

    def _apply(self, event: ChainEvent) -> None:
        if event.name == "JobRequested" and event.address == self.job_creator.address:
            job_id = int(event.args["jobId"])
            if self._get(job_id) is None:
                job = BridgeJob(
                    job_id=job_id,
                    module=str(event.args["module"]),
                    inputs=tuple(event.args["inputs"]),
                    amount=int(event.args["amount"]),
                )
                self._put(job)
                log.info("job %d requested: %s %s", job_id, job.module, list(job.inputs))
        elif event.name == "ResultSubmitted":
            for job in self.store.all("jobs", BridgeJob):
                if job.deal is not None and job.deal.deal_id == event.args["dealId"]:
                    cid = bytes.fromhex(str(event.args["resultCid"])[2:])
                    self._put(job.model_copy(update={"result_cid": "0x" + cid.hex()}))

    def _advance(self, job: BridgeJob) -> None:
        if job.phase is BridgePhase.NEW:
            self._post(job)
        elif job.phase is BridgePhase.POSTED:
            self._find_deal(job)
        elif job.phase is BridgePhase.DEALT:
            self._deliver(job)

    def _post(self, job: BridgeJob) -> None:
        spec = render(job.module, list(job.inputs))
        now = max(int(time.time()), self._chain_now())
        offer = JobOffer(
            job_creator=self.job_creator.address,
            module=module_id(spec.module),
            spec_hash=spec_digest(spec.spec_hash),
            machine=_needs(spec).encode(),
            max_price=job.amount,
            timeout=max(self.config.min_timeout_s, 2 * spec.timeout_s + 120),
            mediators=self.config.mediators,
            expiry=now + self.config.offer_ttl_s,
            nonce=self._next_nonce(),
        )
        signature = offer.sign(self.account, self.market.chain.chain_id, self.market.address)
        submission = JobSubmission(offer=offer, signature=signature, spec=spec)
        try:
            offer_id = self.solver.post_job_offer(submission)
        except SolverRefused as exc:
            if exc.status in (400, 422):
                raise InputError(f"the solver refused the job's offer: {exc}") from None
            raise
        log.info("job %d: offer %s posted", job.job_id, offer_id)
        update = {
            "phase": BridgePhase.POSTED,
            "job_offer_id": offer_id,
            "offer_expiry": offer.expiry,
        }
        self._put(job.model_copy(update=update))

    def _find_deal(self, job: BridgeJob) -> None:
        assert job.job_offer_id is not None
        state = self.solver.job_offer(job.job_offer_id)
        deal = state.get("deal") or {}
        if deal.get("deal_id") and deal.get("deal"):
            found = Deal.model_validate(deal["deal"])
            log.info("job %d: deal %s", job.job_id, found.deal_id)
            self._put(job.model_copy(update={"phase": BridgePhase.DEALT, "deal": found}))
        elif state.get("state") in ("rejected", "cancelled") or (
            job.offer_expiry is not None and self._chain_now() > job.offer_expiry + 60
        ):
            self._cancel(job, f"no provider took the job (offer {state.get('state')})")

    def _deliver(self, job: BridgeJob) -> None:
        assert job.deal is not None
        status = self.market.deal_status(job.deal.deal_id)
        if status.state is DealState.SUBMITTED and job.result_cid is not None:
            cid = bytes.fromhex(job.result_cid[2:])
            receipt = self.job_creator.deliver_result(self.account, job.job_id, job.deal, cid)
            log.info("job %d: result delivered in %s", job.job_id, receipt.tx_hash)
            self._put(job.model_copy(update={"phase": BridgePhase.DELIVERED}))
        elif status.state is DealState.NONE:
            self._cancel(job, "the deal ended without a delivered result")

    def _cancel(self, job: BridgeJob, why: str) -> None:
        _client, _payee, _amount, is_open = self.job_creator.job(job.job_id)
        if is_open:
            self.job_creator.cancel_job(self.account, job.job_id)
        log.warning("job %d cancelled, funds returned: %s", job.job_id, why)
        self._put(job.model_copy(update={"phase": BridgePhase.CANCELLED, "error": why[:500]}))

    def _next_nonce(self) -> int:
        nonce = int(self.store.meta("next_nonce", 0)) or int(time.time()) << 20
        self.store.set_meta(next_nonce=nonce + 1)
        return nonce

    def _chain_now(self) -> int:
        chain = self.market.chain
        return int(chain.rpc("latest block", lambda: chain.w3.eth.get_block("latest"))["timestamp"])

    def _get(self, job_id: int) -> BridgeJob | None:
        return self.store.get("jobs", str(job_id), BridgeJob)

    def _put(self, job: BridgeJob) -> None:
        self.store.put("jobs", str(job.job_id), job)


def _needs(spec: JobSpec) -> Machine:
    m = spec.machine
    return Machine.from_requirements(
        gpus=m.gpus, vram_gb=m.vram_gb, cpus=m.cpus, ram_gb=m.ram_gb, disk_gb=m.disk_gb
    )
