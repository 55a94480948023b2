"""The job creator's side of a job: offer → deal → result → verified download → verdict.

:class:`JobRunner` does the work and reports each step to a callback as a :class:`Step`; it never
prints (the CLI draws the progress). Every job is also written to a local record
(``<data_dir>/jobs/<job offer id>.json``, rewritten atomically at each step) so
``lilypad jobs list|show`` can tell what happened, even after a crash.

The chain is the truth: the runner follows its offer and its deal on chain as well as through the
solver's event stream, so a solver that is down or lost an event cannot keep a deal or a result
from it. Once the result is on chain it is downloaded (every block checked against the CID, an
unreachable IPFS node retried until the challenge window nearly closes) and judged by the job's
verification policy (:mod:`lilypad.verification`): accepted, or challenged so that a mediator
re-runs the job.

Failures end the job with a :class:`JobError` subclass, whose message says what became of the
funds:

* no provider before the offer expires → the offer is withdrawn (:class:`NoMatch`);
* no result before the deal's deadline → ``timeoutResult`` refunds the job creator and pays it the
  provider's collateral (:class:`ResultTimeout`); ``retries`` then tries again with a new offer;
* a result that fails verification or cannot be fetched in time → it is challenged
  (:class:`VerificationFailed` when the mediator does not give a correct result back);
* a mediator that rules against the provider → the price and the provider's collateral come back
  and the mediator's result replaces the provider's (:class:`CheatCaught` if it gave none);
* an input the provider could not fetch → always challenged and left to time out: the price and
  the fee come back, the provider is not paid and keeps its collateral (:class:`InputLost`).

A job can be left and taken up again (``lilypad run --detach``, Ctrl-C, a crash): its record
keeps what that takes (the signed offer, the deal's terms, the result's size limit), and
:meth:`JobRunner.resume` follows it on from the state it reached, with the policy it recorded,
reading the chain before each step so that nothing is sent twice; :meth:`JobRunner.withdraw`
withdraws a pending offer and :meth:`JobRunner.time_out` ends an overdue deal. One process
follows a job at a time (a lock per job under ``<data_dir>/locks``). A failed service (chain,
solver, IPFS) leaves the record in the state it reached, for ``lilypad jobs wait``.

The package, by role: :mod:`~lilypad.creator.records` (:class:`JobRecord`, :class:`JobState`,
:class:`Step`, the records on disk), :mod:`~lilypad.creator.runner` (:class:`JobRunner` and the
:class:`JobError` family) and ``_solver`` (private: the job creator's policy over
:class:`lilypad.solver_api.SolverClient`, what it retries and how it waits on the event stream).
"""

from lilypad.chain.light import DealState
from lilypad.creator.records import (
    STEP_TEXT,
    JobRecord,
    JobState,
    Step,
    find_record,
    jobs_dir,
    load_record,
    load_records,
    save_record,
)
from lilypad.creator.runner import (
    Cancelled,
    CheatCaught,
    InputLost,
    JobError,
    JobRunner,
    MediationExpired,
    ModuleFailed,
    NoMatch,
    ResultTimeout,
    RunOptions,
    VerificationFailed,
    account_lock,
)

__all__ = [
    "STEP_TEXT",
    "Cancelled",
    "CheatCaught",
    "DealState",
    "InputLost",
    "JobError",
    "JobRecord",
    "JobRunner",
    "JobState",
    "MediationExpired",
    "ModuleFailed",
    "NoMatch",
    "ResultTimeout",
    "RunOptions",
    "Step",
    "VerificationFailed",
    "account_lock",
    "find_record",
    "jobs_dir",
    "load_record",
    "load_records",
    "save_record",
]
