"""The mediator: re-runs challenged deals that name it and rules on chain.

It follows the market's events from the deployment block (resumable): ``DealCreated`` for deals
naming it as mediator (it needs their terms later), ``ResultSubmitted`` for their result CIDs and
``ResultChallenged`` for the work. For a challenge it

1. fetches the job spec from the solver, checks and re-renders it exactly as a provider does (same
   module version, same tunables);
2. fetches the submitted result, every block verified, *before* anything of its own is added to
   IPFS: a result that cannot be fetched (or whose CID is malformed, or whose blocks do not match)
   was never delivered, and the provider loses;
3. fetches the job's inputs, runs the job with its own executor and compares with the submitted
   result by the module's declared verification (:mod:`resource_provider.verify`);
4. before ruling against a delivered result that differs from its own, runs the job a second
   time: a module that gives this mediator two different results is not deterministic, and
   neither party is judged on it (the challenge is left to time out: both are refunded);
5. calls ``resolveMediation`` with its own result's CID, which it adds to IPFS and pins, so the
   job creator gets the correct result whoever wins.

A challenge whose job cannot be checked here (the spec does not re-render, the module is unknown,
an input cannot be fetched) is not guessed at: it is left unresolved, the mediation times out and
both parties are refunded. So is a submitted result of a job with file inputs that says an input
could not be fetched (exit code 123): that an input can be fetched now proves nothing of when the
provider tried (a job creator could unpin it for the provider's fetch and pin it again for the
mediator's), so neither party is judged on it: the job creator gets its price and fee back, the
provider its collateral, and nobody is paid. (A job without file inputs has nothing to lose: its
123 is compared as any result, or a provider could claim it for every job and never risk its
collateral.) An input the module cannot take (a folder, too large, not a picture) is the same on
every machine: the mediator's result is the one that says so (exit code 2), compared as any
other.

A job already run here for another deal (the same spec: ``lilypad run --verify redundant``
challenges both of its deals) is not run again.
"""

from __future__ import annotations

import logging
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path

from eth_account.signers.local import LocalAccount
from pydantic import BaseModel, ConfigDict

from lilypad.chain.events import ChainEvent
from lilypad.chain.light import DealState
from lilypad.chain.market import JobMarketClient
from lilypad.chain.offers import Deal
from lilypad.errors import (
    BlockNotFound,
    ContractReverted,
    CorruptBlock,
    InputError,
    LilypadError,
    MalformedContent,
    UnsafeEntryName,
)
from lilypad.modules import JobSpec
from lilypad.modules.files import file_inputs
from lilypad.modules.manifest import VerificationMethod
from lilypad.solver_api import SolverClient
from lilypad.storage import CID, Storage
from resource_provider.executors import EXIT_INPUT_UNAVAILABLE, Executor, Weights
from resource_provider.executors.layout import EXIT_CODE
from resource_provider.inputs import InputUnavailable
from resource_provider.metrics import Metrics
from resource_provider.runner import RunResult, job_submission, run_job, verified_spec
from resource_provider.service import ChainService
from resource_provider.state import JsonStore
from resource_provider.verify import Verdict, compare, compare_exact

log = logging.getLogger("lilypad.mediator")

EVENTS = ("DealCreated", "ResultSubmitted", "ResultChallenged", "MediationResolved", "DealTimedOut")
#: Tries at fetching a submitted result the node says it cannot find, before it counts as never
#: delivered (each try waits for the storage's own timeout).
FETCH_TRIES = 3


class Unresolvable(InputError):
    """The challenge cannot be judged here; it is left to time out (both parties refunded)."""


class MediationPhase(StrEnum):
    WATCHING = "watching"  # a deal naming us; nothing to do unless challenged
    CHALLENGED = "challenged"  # to re-run and rule on
    RESOLVED = "resolved"  # we ruled (``provider_wins``)
    CLOSED = "closed"  # settled without us (accepted, claimed, timed out)
    UNRESOLVABLE = "unresolvable"  # the job could not be checked; left to time out

    def is_terminal(self) -> bool:
        return self in (MediationPhase.RESOLVED, MediationPhase.CLOSED, MediationPhase.UNRESOLVABLE)


class MediationRecord(BaseModel):
    """The mediator's state of one deal."""

    model_config = ConfigDict(frozen=True)

    deal: Deal
    phase: MediationPhase = MediationPhase.WATCHING
    #: As submitted on chain (hex of the binary CID): a malformed one is the provider's loss.
    submitted_cid: str | None = None
    spec_hash: str | None = None
    our_cid: str | None = None
    provider_wins: bool | None = None
    reason: str | None = None


class Mediator(ChainService):
    """One mediator account for one market (see the module docstring).

    The mediator owns ``solver`` and ``storage`` from then on: :meth:`stop` closes them.
    """

    role = "mediator"
    logger = log

    def __init__(
        self,
        *,
        account: LocalAccount,
        market: JobMarketClient,
        solver: SolverClient,
        storage: Storage,
        executor: Executor,
        state_dir: Path,
        weights: Weights = Weights.REAL,
        start_block: int = 0,
        confirmations: int = 0,
        poll_interval_s: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(
            chain=market.chain,
            contracts=[market.contract],
            events=EVENTS,
            store=JsonStore(state_dir),
            start_block=start_block,
            confirmations=confirmations,
            poll_interval_s=poll_interval_s,
        )
        self.account, self.market, self.solver = account, market, solver
        self.storage, self.executor, self.weights = storage, executor, weights
        self.results_dir = state_dir / "results"
        self.metrics = metrics or Metrics()
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mediator-job")
        self._owns(storage.close)
        self._owns(solver.close)
        self._owns(self._pool.shutdown)  # first: a mediation under way ends before what it uses

    @property
    def address(self) -> str:
        return self.account.address

    def start(self) -> None:
        log.info("mediator %s following market %s", self.address, self.market.address)
        super().start()

    def _act(self) -> None:
        """Start every challenge not yet being worked on."""
        for record in self.store.all("deals", MediationRecord):
            if record.phase is MediationPhase.CHALLENGED:
                self._schedule(record.deal.deal_id)

    def _apply(self, event: ChainEvent) -> None:
        if event.name == "DealCreated":
            deal = Deal.from_event(event.args["deal"])
            if deal.mediator == self.address and self._get(deal.deal_id) is None:
                self.store.put("deals", deal.deal_id, MediationRecord(deal=deal))
            return
        deal_id = str(event.args["dealId"])
        record = self._get(deal_id)
        if record is None or record.phase.is_terminal():
            return
        if event.name == "ResultSubmitted":
            # kept as submitted: parsing a provider's bytes here could stop the whole follower
            self._put(record.model_copy(update={"submitted_cid": str(event.args["resultCid"])}))
        elif event.name == "ResultChallenged" and event.args["mediator"] == self.address:
            log.info("deal %s challenged; re-running it", deal_id)
            self._put(record.model_copy(update={"phase": MediationPhase.CHALLENGED}))
        elif event.name == "DealTimedOut":
            self._put(record.model_copy(update={"phase": MediationPhase.CLOSED}))

    def _schedule(self, deal_id: str) -> None:
        with self._lock:
            if deal_id in self._busy or self._stop.is_set():
                return
            self._busy.add(deal_id)
        self._pool.submit(self._work, deal_id)

    def _work(self, deal_id: str) -> None:
        try:
            record = self._get(deal_id)
            if record is not None and record.phase is MediationPhase.CHALLENGED:
                self._mediate(record)
        except InputError as exc:
            record = self._get(deal_id)
            log.warning("deal %s cannot be checked (%s); leaving it to time out", deal_id, exc)
            if record is not None:
                update = {"phase": MediationPhase.UNRESOLVABLE, "reason": str(exc)[:500]}
                self._put(record.model_copy(update=update))
        except LilypadError as exc:
            log.warning("deal %s: %s; will retry", deal_id, exc)
        except Exception:
            log.exception("deal %s: mediation failed; will retry", deal_id)
        finally:
            with self._lock:
                self._busy.discard(deal_id)

    def _mediate(self, record: MediationRecord) -> None:
        deal = record.deal
        status = self.market.deal_status(deal.deal_id)
        if status.state is not DealState.CHALLENGED:
            self._put(record.model_copy(update={"phase": MediationPhase.CLOSED}))
            return
        if record.submitted_cid is None:
            raise LilypadError(f"no ResultSubmitted seen for deal {deal.deal_id} yet")
        spec = verified_spec(job_submission(self.solver, deal.job_offer_hash), deal)
        record = record.model_copy(update={"spec_hash": spec.spec_hash})
        # Theirs first: whether it can be fetched at all must not depend on what we add.
        theirs, links, lost = self._fetch_submitted(record, spec.result_limit)
        # NOTE: only a job with file inputs can lack one; for any other, 123 is judged as any
        # result (else a provider could claim it for every job and never risk its collateral).
        lost_input = _exit_code(theirs) == str(EXIT_INPUT_UNAVAILABLE) and file_inputs(spec)
        if lost is None and lost_input:
            raise Unresolvable(
                "the provider says an input could not be fetched (exit code 123): whether it "
                "could be then cannot be known now, so neither party is judged on it"
            )
        ours = self._run(spec, record)
        if lost is not None:
            verdict = lost
        elif spec.verification.method is VerificationMethod.EXACT:
            verdict = compare_exact(str(ours), str(_submitted_cid(record)))
        else:
            mine = self.results_dir / deal.deal_id
            verdict = compare(spec.verification, mine, theirs, skipped_symlinks=links)
        if not verdict.matches and lost is None:
            # the results differ: is it the provider, or a module that differs from run to run?
            # (a result never delivered loses whatever the module does)
            self._check_deterministic(spec, record, ours)
        log.info(
            "deal %s: provider %s (%s); the correct result is %s",
            deal.deal_id,
            "wins" if verdict.matches else "loses",
            verdict.reason,
            ours,
        )
        try:
            self.market.resolve_mediation(
                self.account, deal, provider_wins=verdict.matches, result_cid=bytes(ours)
            )
        except ContractReverted as exc:
            if exc.error not in ("WrongState", "UnknownDeal", "DeadlinePassed"):
                raise
            log.warning("deal %s: could not rule: %s", deal.deal_id, exc)
        self.metrics.mediations.labels(str(verdict.matches).lower()).inc()
        update = {
            "phase": MediationPhase.RESOLVED,
            "our_cid": str(ours),
            "provider_wins": verdict.matches,
            "reason": verdict.reason,
        }
        self._put(record.model_copy(update=update))

    def _fetch_submitted(
        self, record: MediationRecord, max_bytes: int
    ) -> tuple[Path, dict[str, str], Verdict | None]:
        """Download the submitted result, verified, into ``<deal>.submitted``, with the symlinks
        the download leaves out (path -> link text); the verdict when the provider never
        delivered it (malformed CID, not found, blocks that do not match or are no UnixFS).

        Raises:
            StorageError: this mediator's own IPFS node failed (try again later, do not rule).
        """
        theirs = self.results_dir / f"{record.deal.deal_id}.submitted"
        cid = _submitted_cid(record)
        links: dict[str, str] = {}
        if cid is None:
            lost = Verdict(False, f"the submitted CID {record.submitted_cid} is malformed")
            return theirs, links, lost
        for attempt in range(FETCH_TRIES):
            if theirs.exists():
                shutil.rmtree(theirs)
            theirs.parent.mkdir(parents=True, exist_ok=True)
            links.clear()
            try:
                self.storage.get(
                    cid,
                    theirs,
                    on_symlink=lambda link: links.__setitem__(link.path, link.target),
                    max_bytes=max_bytes,  # a result over the job's limit is no honest one
                )
                return theirs, links, None
            except (CorruptBlock, MalformedContent, UnsafeEntryName) as exc:
                # the same on every try: what the CID names is not a valid result
                return theirs, links, Verdict(False, f"the submitted result does not verify: {exc}")
            except BlockNotFound as exc:
                if attempt == FETCH_TRIES - 1:
                    lost = Verdict(False, f"the submitted result cannot be fetched: {exc}")
                    return theirs, links, lost
                self._stop.wait(5)
        raise AssertionError("unreachable")

    def _run(self, spec: JobSpec, record: MediationRecord) -> CID:
        """The CID of our result of the job (added to IPFS and pinned): run here, or the run of
        an earlier deal of the same spec."""
        folder = self.results_dir / record.deal.deal_id
        for other in self.store.all("deals", MediationRecord):
            done = self.results_dir / other.deal.deal_id
            if other.spec_hash == spec.spec_hash and other.our_cid and done.is_dir():
                if done != folder:
                    if folder.exists():
                        shutil.rmtree(folder)
                    shutil.copytree(done, folder, symlinks=True)
                cid = self.storage.add(folder)
                if str(cid) == other.our_cid:
                    log.info("deal %s: the job ran here before", record.deal.deal_id)
                    return cid
        return self._run_job(spec, folder).cid

    def _run_job(self, spec: JobSpec, folder: Path) -> RunResult:
        """Run the job here, its inputs fetched first: one the module cannot take gives the
        result that says so (exit code 2), as on the provider.

        Raises:
            Unresolvable: an input cannot be fetched here; the job cannot be checked.
            StorageError: this mediator's own IPFS node failed (try again later).
        """
        for attempt in range(FETCH_TRIES):
            try:
                return run_job(self.executor, self.storage, spec, folder, self.weights)
            except InputUnavailable as exc:
                if attempt == FETCH_TRIES - 1:
                    raise Unresolvable(
                        f"{exc.message}: the job cannot be run here, so neither party is judged"
                    ) from None
                self._stop.wait(5)
        raise AssertionError("unreachable")

    def _check_deterministic(self, spec: JobSpec, record: MediationRecord, first: CID) -> None:
        """Run the job again before ruling against a provider: two different results here mean
        the module is not deterministic, and no one can be judged on it.

        Raises:
            Unresolvable: the two runs differ.
        """
        again_dir = self.results_dir / f"{record.deal.deal_id}.again"
        again = self._run_job(spec, again_dir)
        if spec.verification.method is VerificationMethod.EXACT:
            same = compare_exact(str(again.cid), str(first))
        else:
            same = compare(spec.verification, self.results_dir / record.deal.deal_id, again_dir)
        shutil.rmtree(again_dir, ignore_errors=True)
        if not same.matches:
            raise Unresolvable(
                f"{spec.module} gave two different results here ({first}, {again.cid}: "
                f"{same.reason}); it is not deterministic, so neither party is judged on it"
            )

    def _get(self, deal_id: str) -> MediationRecord | None:
        return self.store.get("deals", deal_id, MediationRecord)

    def _put(self, record: MediationRecord) -> None:
        self.store.put("deals", record.deal.deal_id, record)


def _exit_code(result: Path) -> str:
    """The ``exitCode`` of a downloaded result ("" when it has none)."""
    try:
        return (result / EXIT_CODE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeError):
        return ""


def _submitted_cid(record: MediationRecord) -> CID | None:
    try:
        return CID.parse(bytes.fromhex(str(record.submitted_cid).removeprefix("0x")))
    except (InputError, ValueError):
        return None
