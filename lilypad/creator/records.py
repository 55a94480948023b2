"""Job records: what ``lilypad jobs`` lists and shows, one JSON file per job offer.

Each record is ``<data_dir>/jobs/<job offer id>.json``, rewritten atomically at every step of the
job (:func:`lilypad.fsutil.write_atomic`), so it tells what happened even after a crash.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from lilypad.config import get_settings
from lilypad.errors import InputError
from lilypad.fsutil import write_atomic
from lilypad.verification import Verify


class JobState(StrEnum):
    """Where a job stands; the record on disk holds the value (``"accepted"``)."""

    CREATED = "created"
    DEALT = "dealt"
    RESULT_SUBMITTED = "result_submitted"
    #: A mediator re-runs the job (an audit, or a result that failed verification).
    CHALLENGED = "challenged"
    #: Paid after verification.
    ACCEPTED = "accepted"
    #: Challenged, and the mediator ruled for the provider.
    UPHELD = "upheld"
    #: The mediator ruled against the provider: price and collateral refunded, the mediator's
    #: result saved.
    PROVIDER_SLASHED = "provider_slashed"
    MEDIATION_EXPIRED = "mediation_expired"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    MODULE_FAILED = "module_failed"
    FAILED = "failed"

    def is_terminal(self) -> bool:
        """Whether the job has ended: nothing more happens to it on chain."""
        return self not in _UNDER_WAY

    def is_failure(self) -> bool:
        """Whether the state tells that something went wrong, and so what became of the funds:
        the offer withdrawn, the deal timed out, the result challenged (the funds wait for the
        mediator) or found wrong, the module failed, the mediation expired, or ``failed``.

        A run that fails in such a state keeps it, rather than the bare ``failed``.
        ``provider_slashed`` is one even when the mediator's result was then delivered (the
        provider failed, not the job: see :meth:`is_success`).
        """
        return self in _FAILURES

    def is_success(self) -> bool:
        """Whether the job gave a verified result (``provider_slashed``: the mediator's)."""
        return self in _SUCCESSES


_UNDER_WAY = frozenset(
    {JobState.CREATED, JobState.DEALT, JobState.RESULT_SUBMITTED, JobState.CHALLENGED}
)
_FAILURES = frozenset(
    {
        JobState.CANCELLED,
        JobState.TIMED_OUT,
        JobState.CHALLENGED,
        JobState.MODULE_FAILED,
        JobState.PROVIDER_SLASHED,
        JobState.MEDIATION_EXPIRED,
        JobState.FAILED,
    }
)
_SUCCESSES = frozenset({JobState.ACCEPTED, JobState.UPHELD, JobState.PROVIDER_SLASHED})


#: What each step says, as the CLI, the SDK's progress and the dashboard show it.
STEP_TEXT = {
    "staged": "{name}: ipfs://{ref}",
    "deposit": "deposited {amount} tokens into the market",
    "posted": "offer posted ({job_offer_id:.18}…), waiting for a provider",
    "matched": "matched with provider {provider}",
    "deal": "deal {deal_id:.18}… on chain with {provider} (tx {tx:.18}…)",
    "running": "running on the provider",
    "result": "result submitted: {cid} (tx {tx:.18}…)",
    "downloading": "downloading and verifying {cid}",
    "download_retry": "download failed ({error}); trying again in {pause:g}s",
    "solver_retry": "{error}; trying again in {pause:g}s",
    "verified": "verified every block into {dest}",
    "symlinks_skipped": "the result holds {count} symlink(s), verified but not created (the "
    "first: {first})",
    "not_audited": "not audited this time (chance {probability:.0%})",
    "challenged": "result challenged ({reason}); mediator {mediator} re-runs the job",
    "mediating": "waiting for mediator {mediator} to rule",
    "input_lost": "the provider could not fetch an input: nobody is judged on it; your payment "
    "and fee come back when the mediation times out (chain time {deadline})",
    "upheld": "the mediator upheld the result: it is correct",
    "slashed": "the mediator found the result wrong: {refund} tokens (price and the provider's "
    "collateral) are yours; fetching the mediator's result",
    "agree": "both providers returned {cid}",
    "disagree": "the providers disagree ({cids}); both results are challenged",
    "alone": "no second provider in time: the result of {provider} is audited instead",
    "accepted": "result accepted on chain (tx {tx:.18}…)",
    "off_target": "the solver ignored --target {target}: the deal is with {provider}, and it "
    "binds (the offer's signature names no provider); following it to its end",
    "retry": "retrying (attempt {attempt}): {reason}",
    "withdrawn": "offer {job_offer_id:.18}… withdrawn at the solver; no funds moved",
    "settled": "the deal has ended: {state} (timeout tx: {tx})",
}


@dataclass(frozen=True)
class Step:
    """One step of a job, for progress display: ``name`` and what is known at that point."""

    name: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The step in words, as ``lilypad run`` prints it (a ``log`` step: its line)."""
        if self.name == "log":
            return str(self.detail.get("text", ""))
        if self.name == "progress":
            label = self.detail.get("label") or "step"
            return f"{label} {self.detail.get('done')}/{self.detail.get('total')}"
        try:
            return STEP_TEXT.get(self.name, self.name).format(**self.detail)
        except (KeyError, IndexError, ValueError):
            return self.name  # a step with less detail than its text names


@dataclass
class JobRecord:
    """What ``lilypad jobs`` shows; also the ``--json`` output of ``lilypad run``.

    ``state`` is a :class:`JobState` (its value on disk and in JSON); ``verify`` is the policy,
    ``audited`` whether the result was challenged, and ``audit_probability`` the chance it had
    (``audit``).

    What ``lilypad jobs wait|cancel|timeout|get`` need to take a job up again, in another
    process: ``job_creator`` (the account that signed), ``offer`` (the signed job offer, amounts
    as decimal strings: its expiry, nonce and mediators), ``deal`` (the deal's terms, which every
    call on it passes back) and ``result_limit`` (the most bytes a result may hold). Records
    written before these were kept lack them; the runner recovers them from the chain and the
    solver.
    """

    module: str
    tunables: dict[str, Any]
    spec_hash: str
    network: str
    state: JobState = JobState.CREATED
    verify: str = Verify.AUDIT.value
    job_offer_id: str | None = None
    deal_id: str | None = None
    provider: str | None = None
    price: str | None = None
    collateral: str | None = None
    result_cid: str | None = None
    mediator_cid: str | None = None
    output_dir: str | None = None
    gateway_url: str | None = None
    audited: bool = False
    audit_probability: float | None = None
    from_block: int | None = None
    twin: dict[str, Any] | None = None
    #: The provider the offer went to alone (``lilypad run --target``), checked against the
    #: deal's by ``jobs wait`` too.
    target: str | None = None
    job_creator: str | None = None
    offer: dict[str, Any] | None = None
    deal: dict[str, Any] | None = None
    result_limit: int | None = None
    skipped_symlinks: list[str] = field(default_factory=list)
    error: str | None = None
    txs: dict[str, str] = field(default_factory=dict)
    timings_ms: dict[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.state = JobState(self.state)  # a string read from disk; ValueError if unknown

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def jobs_dir() -> Path:
    return get_settings().data_dir / "jobs"


def save_record(record: JobRecord) -> None:
    """Write ``record`` whole (nothing before its offer is posted: it has no id yet)."""
    if record.job_offer_id is None:
        return
    path = jobs_dir() / f"{record.job_offer_id}.json"
    write_atomic(path, json.dumps(record.to_dict(), indent=2, sort_keys=True))


def load_record(job_offer_id: str) -> JobRecord:
    """The record of job offer ``job_offer_id`` as it is on disk now.

    Raises:
        InputError: there is none, or it cannot be read.
    """
    path = jobs_dir() / f"{job_offer_id}.json"
    try:
        return JobRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise InputError(
            f"no job {job_offer_id} on this machine", hint="see lilypad jobs list"
        ) from None
    except (ValueError, TypeError) as exc:
        raise InputError(f"the record {path} cannot be read ({exc})") from None


def load_records() -> list[JobRecord]:
    """Every record on this machine, oldest first."""
    folder = jobs_dir()
    records = []
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            records.append(JobRecord(**json.loads(path.read_text())))
        except (ValueError, TypeError):
            continue  # a record from another version; skip rather than fail the listing
    return sorted(records, key=lambda r: r.started_at)


def find_record(prefix: str) -> JobRecord:
    """The one record whose job offer id or deal id starts with ``prefix``.

    Raises:
        InputError: no record, or more than one, matches.
    """
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
