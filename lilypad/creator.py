"""The job creator's side of a job: offer → deal → result → verified download → accept.

:class:`JobRunner` does the work and reports each step to a callback as a :class:`Step`; it never
prints (the CLI draws the progress). Every job is also written to a local record
(``<data_dir>/jobs/<job offer id>.json``, rewritten atomically at each step) so
``lilypad jobs list|show`` can tell what happened, even after a crash.

Failures end the job with a :class:`JobError` subclass and leave funds safe:

* no provider before the offer expires → the offer is withdrawn (:class:`NoMatch`);
* no result before the deal's deadline → ``timeoutResult`` refunds the job creator and slashes the
  provider (:class:`ResultTimeout`); ``retries`` then tries again with a new offer;
* a result whose bytes do not match its CID → nothing is saved as good and the result is
  challenged, so a mediator re-runs the job (:class:`VerificationFailed`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import queue
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import httpx

from lilypad.chain.crypto import Signer
from lilypad.chain.light import CreatorMarket, DealState
from lilypad.chain.offers import Deal, JobOffer, Machine, module_id, spec_digest
from lilypad.config import get_settings
from lilypad.errors import (
    ConfigError,
    ContractReverted,
    InputError,
    LilypadError,
    SolverError,
    StorageError,
)
from lilypad.jobs import ChainClock, JobSubmission, cancel_message
from lilypad.modules import JobSpec
from lilypad.network import NetworkProfile
from lilypad.storage import open_storage, result_dir
from lilypad.storage.cid import CID
from lilypad.tls import verify_for

TOKEN_DECIMALS = 18
#: Posts of one offer when the solver finds the deposit short (see JobRunner._fund_and_post).
POST_ATTEMPTS = 4
#: Extra time a provider gets beyond the module's own timeout (download, upload, chain).
TIMEOUT_MARGIN_S = 300
#: Record states that already say how a failed job ended (and so what became of the funds).
FINAL_FAILURES = ("cancelled", "timed_out", "challenged", "module_failed")


class JobError(LilypadError):
    """The job did not complete; the message says what happened to the funds."""


class NoMatch(JobError):
    """No provider took the job before its offer expired."""


class ResultTimeout(JobError):
    """The provider delivered no result in time; the deal was timed out and refunded."""


class ModuleFailed(JobError):
    """The module ran on the provider and exited with an error (the result holds its logs)."""


class VerificationFailed(JobError):
    """The result did not verify against its CID; it was challenged."""


def parse_tokens(text: str, what: str) -> int:
    """``"10"`` or ``"0.5"`` tokens → base units (18 decimals)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InputError(f"{what} {text!r} is not a number of tokens, e.g. 10 or 0.5") from None
    units = value * 10**TOKEN_DECIMALS
    if not value.is_finite() or value <= 0 or units != units.to_integral_value():
        raise InputError(f"{what} {text!r} must be a positive amount with at most 18 decimals")
    return int(units)


def format_tokens(units: int) -> str:
    text = f"{Decimal(units) / 10**TOKEN_DECIMALS:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True)
class Step:
    """One step of a job, for progress display: ``name`` and what is known at that point."""

    name: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobRecord:
    """What ``lilypad jobs`` shows; also the ``--json`` output of ``lilypad run``."""

    module: str
    tunables: dict[str, Any]
    spec_hash: str
    network: str
    state: str = "created"
    job_offer_id: str | None = None
    deal_id: str | None = None
    provider: str | None = None
    price: str | None = None
    result_cid: str | None = None
    output_dir: str | None = None
    gateway_url: str | None = None
    error: str | None = None
    txs: dict[str, str] = field(default_factory=dict)
    timings_ms: dict[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def jobs_dir() -> Path:
    return get_settings().data_dir / "jobs"


def save_record(record: JobRecord) -> None:
    if record.job_offer_id is None:
        return
    folder = jobs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record.job_offer_id}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record.to_dict(), indent=2, sort_keys=True))
    tmp.replace(path)


def load_records() -> list[JobRecord]:
    folder = jobs_dir()
    records = []
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            records.append(JobRecord(**json.loads(path.read_text())))
        except (ValueError, TypeError):
            continue  # a record from another version; skip rather than fail the listing
    return sorted(records, key=lambda r: r.started_at)


def find_record(prefix: str) -> JobRecord:
    matches = [
        r
        for r in load_records()
        if (r.job_offer_id or "").startswith(prefix.lower())
        or (r.deal_id or "").startswith(prefix.lower())
    ]
    if len(matches) != 1:
        what = "no job" if not matches else f"{len(matches)} jobs"
        raise InputError(f"{what} with id starting {prefix!r}; see lilypad jobs list")
    return matches[0]


@dataclass(frozen=True)
class RunOptions:
    max_price: int
    timeout_s: int
    expires_in_s: int = 300
    mediators: tuple[str, ...] = ()
    retries: int = 0


class JobRunner:
    """Runs jobs for one account on one network.

    Args:
        profile: The network (chain, market, solver, IPFS endpoints).
        account: The job creator's key.
        market: The market, on the light chain client (``lilypad run`` starts in a fraction of
            the time web3 would take to import).
        on_step: Called for every :class:`Step`.
        fund: Deposits the amount it is given into the market (asking first if it must); called
            when this account's deposit cannot cover one more offer. None: no deposit is made
            and a short deposit is an error.
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
        self.http = httpx.Client(
            base_url=profile.solver_url, timeout=30, verify=verify_for(profile.solver_url)
        )
        self.clock = ChainClock(market)

    def close(self) -> None:
        self.http.close()
        self.market.chain.close()

    # ---------------------------------------------------------------------------- deposit
    def deposit_needed(self, amount: int) -> int:
        """How much must be deposited before an offer of ``amount`` can be posted: the solver
        counts what this account's open offers (other jobs running now) may still take."""
        # Commitments first: a deal made between the two reads lowers the balance by its price
        # and the commitments by the offer's whole max price, so this order never under-counts.
        committed = self._committed()
        balance = self.market.balance_of(self.account.address)
        return max(0, amount + committed - balance)

    def _committed(self) -> int:
        try:
            response = self.http.get(f"/api/v1/accounts/{self.account.address}")
        except httpx.TransportError as exc:
            raise SolverError(
                f"cannot reach the solver at {self.profile.solver_url}: {exc}"
            ) from None
        if response.status_code != 200:
            return 0  # a solver without the endpoint: its refusal will say what is short
        return int(response.json().get("committed_by_job_offers", 0))

    def deposit(self, amount: int) -> str:
        receipt = self.market.deposit(self.account, amount)
        return receipt.tx_hash

    # ---------------------------------------------------------------------------- the job
    def run(self, spec: JobSpec, options: RunOptions) -> JobRecord:
        """Run ``spec`` through the market and return its completed record.

        Raises:
            NoMatch, ResultTimeout, VerificationFailed: the job did not complete (see module doc).
            SolverError, ChainError, StorageError: a service failed.
        """
        attempt = 0
        while True:
            record = JobRecord(spec.module, dict(spec.tunables), spec.spec_hash, self.profile.name)
            try:
                return self._attempt(spec, options, record)
            except (NoMatch, ResultTimeout) as exc:
                attempt += 1
                if attempt > options.retries:
                    raise
                self.on_step(Step("retry", {"attempt": attempt, "reason": str(exc)}))

    def _attempt(self, spec: JobSpec, options: RunOptions, record: JobRecord) -> JobRecord:
        events = _EventStream(self.http, self.account.address)
        try:
            submission = self._submission(spec, options)
            # Several `lilypad run` of one account at once: each tops up and posts in turn, so
            # each sees the others' offers committed and no two approvals race.
            with _account_lock(self.account.address):
                record.job_offer_id = self._fund_and_post(submission, options.max_price)
            save_record(record)
            self._mark(record, "posted")
            self.on_step(Step("posted", {"job_offer_id": record.job_offer_id}))
            deal = self._wait_deal(record, events, submission.offer.expiry)
            self._mark(record, "deal")
            cid = self._wait_result(record, events, deal)
            self._mark(record, "result")
            self._download(record, cid, deal)
            self._mark(record, "downloaded")
            record.txs["accept"] = self.market.accept_result(self.account, deal).tx_hash
            record.state = "accepted"
            self._mark(record, "accepted")
            self.on_step(Step("accepted", {"tx": record.txs["accept"]}))
            self._check_exit(record)
            return record
        except LilypadError as exc:
            record.error = str(exc)
            if record.state not in FINAL_FAILURES:
                record.state = "failed"
            raise
        finally:
            events.close()
            save_record(record)

    def _submission(self, spec: JobSpec, options: RunOptions) -> JobSubmission:
        m = spec.machine
        offer = JobOffer(
            job_creator=self.account.address,
            module=module_id(spec.module),
            spec_hash=spec_digest(spec.spec_hash),
            machine=Machine.from_requirements(
                gpus=m.gpus, vram_gb=m.vram_gb, cpus=m.cpus, ram_gb=m.ram_gb, disk_gb=m.disk_gb
            ).encode(),
            max_price=options.max_price,
            timeout=options.timeout_s,
            mediators=options.mediators,
            expiry=int(self.clock()) + options.expires_in_s,
            nonce=secrets.randbits(255),
        )
        signature = offer.sign(self.account, self.market.chain.chain_id, self.market.address)
        return JobSubmission(offer=offer, signature=signature, spec=spec)

    def _fund_and_post(self, submission: JobSubmission, amount: int) -> str:
        """Top the deposit up and post the offer. The solver may still find the deposit short
        (HTTP 402) when one of this account's deals was made while we looked: the deal lowers
        the balance a moment before the solver stops counting its offer. Look again, then."""
        for attempt in range(POST_ATTEMPTS):
            self._top_up(amount)
            try:
                return self._post(submission)
            except _DepositShort:
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

    def _post(self, submission: JobSubmission) -> str:
        try:
            response = self.http.post("/api/v1/job_offers", json=submission.model_dump(mode="json"))
        except httpx.TransportError as exc:
            raise SolverError(
                f"cannot reach the solver at {self.profile.solver_url}: {exc}",
                hint="is it running? lilypad network status",
            ) from None
        if response.status_code == 402:
            raise _DepositShort(f"the solver refused the job offer: {_error(response)}")
        if response.status_code != 201:
            raise SolverError(f"the solver refused the job offer: {_error(response)}")
        return str(response.json()["id"])

    def _wait_deal(self, record: JobRecord, events: _EventStream, expiry: int) -> Deal:
        offer_id = record.job_offer_id
        assert offer_id is not None
        for payload in events.for_offer(
            offer_id, deadline=expiry + 5, poll=lambda: self._poll_offer(offer_id)
        ):
            kind = payload["kind"]
            if kind == "deal.matched":
                record.provider = payload.get("provider")
                self._mark(record, "matched")
                self.on_step(Step("matched", {"provider": record.provider}))
            elif kind == "deal.created":
                deal = Deal.model_validate(payload["deal"])
                record.deal_id, record.provider = deal.deal_id, deal.provider
                record.price, record.state = str(deal.price), "dealt"
                record.txs["deal"] = payload.get("tx_hash") or ""
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
                return deal
            elif kind in ("job_offer.rejected", "deal.failed"):
                raise SolverError(
                    f"the job offer was refused: {payload.get('reason') or payload.get('error')}"
                )
        self._cancel(record)
        raise NoMatch(
            "no provider took the job before its offer expired; the offer was withdrawn and no "
            "funds moved",
            hint="raise --max-price, or check that a provider serves this module",
        )

    def _wait_result(self, record: JobRecord, events: _EventStream, deal: Deal) -> CID:
        status = self.market.deal_status(deal.deal_id)
        self.on_step(Step("running", {"deadline": status.deadline}))
        poll = lambda: self._poll_deal(deal.deal_id)  # noqa: E731
        for payload in events.for_offer(
            deal.job_offer_hash,
            deadline=status.deadline + 2,
            poll=poll,
            clock=self.clock,
        ):
            if payload["kind"] == "deal.result_submitted" and payload.get("result_cid"):
                cid = CID.parse(bytes.fromhex(payload["result_cid"].removeprefix("0x")))
                record.result_cid, record.state = str(cid), "result_submitted"
                record.txs["result"] = payload.get("tx_hash") or ""
                save_record(record)
                self.on_step(Step("result", {"cid": str(cid), "tx": record.txs["result"]}))
                return cid
        record.txs["timeout"] = self._timeout(deal)
        record.state = "timed_out"
        raise ResultTimeout(
            f"provider {deal.provider} sent no result by the deadline; the deal was timed out "
            f"(tx {record.txs['timeout']}): your payment was refunded and the provider's "
            "collateral was paid to you"
        )

    def _check_exit(self, record: JobRecord) -> None:
        """A module that failed on the provider failed deterministically: the provider did the
        work and was paid, but the job is not a success, so say so with the module's words."""
        folder = Path(record.output_dir or "")
        code = (folder / "exitCode").read_text().strip() if (folder / "exitCode").is_file() else ""
        if code == "0":
            return
        record.state = "module_failed"
        stderr = folder / "stderr"
        tail = (
            stderr.read_text(errors="replace").strip().splitlines()[-5:] if stderr.is_file() else []
        )
        raise ModuleFailed(
            f"the module exited with {code or 'no exit code'} on the provider; its stderr ends: "
            + (" | ".join(tail) or "(empty)"),
            hint=f"the full result is in {folder}",
        )

    def _timeout(self, deal: Deal) -> str:
        """Time the deal out, waiting out a little clock skew between us and the chain."""
        for _ in range(30):
            try:
                return self.market.timeout_result(self.account, deal).tx_hash
            except ContractReverted as exc:
                if exc.error != "DeadlineNotReached":
                    raise
                time.sleep(1)
        return self.market.timeout_result(self.account, deal).tx_hash

    def _download(self, record: JobRecord, cid: CID, deal: Deal) -> None:
        dest = result_dir(cid)
        self.on_step(Step("downloading", {"cid": str(cid), "dest": str(dest)}))
        storage = open_storage(
            api=self.profile.ipfs_api_url,
            gateway=None if self.profile.ipfs_api_url else self.profile.gateway_url,
        )
        # A job run again with the same inputs gives the same CID, and so the same folder: fetch
        # beside it, then put the verified copy in its place.
        fresh = dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}")
        try:
            storage.get(cid, fresh)
            _install(fresh, dest)
        except StorageError as exc:
            if "does not match" in str(exc) or type(exc).__name__ == "CorruptBlock":
                record.txs["challenge"] = self.market.challenge_result(self.account, deal).tx_hash
                record.state = "challenged"
                raise VerificationFailed(
                    f"the result {cid} failed verification ({exc}); it was challenged (tx "
                    f"{record.txs['challenge']}) and a mediator will re-run the job"
                ) from exc
            raise
        finally:
            storage.close()
            shutil.rmtree(fresh, ignore_errors=True)  # gone once installed
        record.output_dir = str(dest)
        gateway = (self.profile.gateway_url or "https://ipfs.io").rstrip("/")
        record.gateway_url = f"{gateway}/ipfs/{cid}"
        self.on_step(Step("verified", {"dest": str(dest)}))

    def _cancel(self, record: JobRecord) -> None:
        if record.job_offer_id is None:
            return
        signature = "0x" + self.account.sign_message(cancel_message(record.job_offer_id)).hex()
        # If the solver is unreachable the offer simply expires: nothing can match it after.
        with contextlib.suppress(httpx.TransportError):
            self.http.post(
                f"/api/v1/job_offers/{record.job_offer_id}/cancel", json={"signature": signature}
            )
        record.state = "cancelled"

    def cancel(self, record: JobRecord) -> None:
        """Withdraw a job's offer if it is still pending (Ctrl-C)."""
        self._cancel(record)
        save_record(record)

    def _poll_offer(self, offer_id: str) -> list[dict[str, Any]]:
        """The deal of a job offer, read directly (in case the event stream missed it)."""
        try:
            body = self.http.get(f"/api/v1/job_offers/{offer_id}").json()
        except (httpx.TransportError, ValueError):
            return []
        deal = body.get("deal")
        if deal and deal.get("state") not in ("matched", "failed"):
            return [{"kind": "deal.created", **deal}]
        return []

    def _poll_deal(self, deal_id: str) -> list[dict[str, Any]]:
        try:
            body = self.http.get(f"/api/v1/deals/{deal_id}").json()
        except (httpx.TransportError, ValueError):
            return []
        if body.get("result_cid"):
            return [{"kind": "deal.result_submitted", **body}]
        return []

    def _mark(self, record: JobRecord, phase: str) -> None:
        """Milliseconds from the record's start to ``phase`` (posted, matched, deal, result,
        downloaded, accepted): what ``bench/e2e_overhead.py`` breaks the overhead down by."""
        record.timings_ms[phase] = int((time.time() - record.started_at) * 1000)


def _install(fresh: Path, dest: Path) -> None:
    """Move a verified download to ``dest``, replacing what is there: an earlier copy of the same
    CID, possibly edited since, while ``dest`` must hold exactly the CID's content."""
    for _ in range(5):  # another `lilypad run` of the same job may be installing its copy too
        try:
            os.replace(fresh, dest)  # over a file or an empty folder, at once
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                raise StorageError(f"cannot write {dest}: {exc.strerror}") from None
        stale = dest.with_name(f".{dest.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(dest, stale)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    raise StorageError(f"cannot replace {dest}: something keeps writing it")


class _DepositShort(SolverError):
    """The solver found the deposit short of the offer (it may be a moment behind the chain)."""


@contextlib.contextmanager
def _account_lock(address: str) -> Iterator[None]:
    """Hold this machine's lock on ``address`` (a file lock, so across processes)."""
    folder = get_settings().data_dir / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{address}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _EventStream:
    """The solver's event stream for one party, read in a thread into a queue."""

    def __init__(self, http: httpx.Client, party: str) -> None:
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._http = http
        self._party = party
        self._ready = threading.Event()
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._read, daemon=True, name="solver-events")
        self._thread.start()
        self._ready.wait(5)

    def _read(self) -> None:
        after = -1  # from now on: the stream starts at the newest event
        while not self._stop.is_set():
            try:
                with self._http.stream(
                    "GET",
                    "/api/v1/events",
                    timeout=httpx.Timeout(30, read=60),
                    params={"party": self._party, "after": after},
                ) as response:
                    self._response = response
                    self._ready.set()
                    for line in response.iter_lines():
                        if line.startswith("data: "):
                            payload = json.loads(line.removeprefix("data: "))
                            after = int(payload.get("seq", after))
                            self._queue.put(payload)
            except Exception:
                self._ready.set()
                self._stop.wait(1)
            finally:
                self._response = None

    def for_offer(
        self,
        offer_id: str,
        *,
        deadline: float,
        poll: Callable[[], list[dict[str, Any]]],
        clock: Callable[[], float] = time.time,
    ) -> Iterator[dict[str, Any]]:
        """Events about ``offer_id`` until ``clock()`` passes ``deadline``."""
        last_poll = time.monotonic()
        while True:
            if clock() > deadline:
                return
            try:
                payload = self._queue.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() - last_poll > 3:
                    last_poll = time.monotonic()
                    yield from poll()
                continue
            if payload.get("job_offer_id") == offer_id or payload.get("id") == offer_id:
                yield payload

    def close(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            response.close()  # ends the reader's blocking read
        # Not joined: a daemon thread that may still wait for the solver's next byte, and nothing
        # is lost by leaving it (waiting cost every `lilypad run` up to 0.1 s at exit).


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text[:200]


__all__ = [
    "DealState",
    "JobError",
    "JobRecord",
    "JobRunner",
    "NoMatch",
    "ResultTimeout",
    "RunOptions",
    "Step",
    "VerificationFailed",
    "find_record",
    "format_tokens",
    "load_records",
    "parse_tokens",
]
