"""Turning a deal into a result: find its job spec, check it, run it, add the result to IPFS.

Shared by the resource provider (runs deals), the mediator (re-runs challenged deals) and tests.
A deal carries only ``job_offer_hash``; the spec comes from the solver (:func:`job_submission`),
and nothing from there is trusted: :func:`verified_spec` checks that the signed offer hashes to
the deal's ``job_offer_hash``, that the spec is the one the offer commits to, and re-renders it
here.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from lilypad import modules
from lilypad.chain.offers import Deal
from lilypad.errors import InputError, SolverError
from lilypad.jobs import JobSubmission, SpecMismatch, check_submission, rerender
from lilypad.modules import JobSpec
from lilypad.solver_api import SolverClient
from lilypad.storage import CID, Storage
from resource_provider.executors import ExecutionResult, Executor, Job, Weights


class JobRefused(InputError):
    """This node will not run a deal's job; the message says why."""


@dataclass(frozen=True)
class RunResult:
    """A finished run: what the executor said and the CID of the whole result folder."""

    execution: ExecutionResult
    cid: CID


def job_submission(solver: SolverClient, job_offer_id: str) -> JobSubmission:
    """The signed job offer and spec that a deal's ``job_offer_hash`` names, as the solver has
    them (unchecked: see :func:`verified_spec`).

    Raises:
        NotFound: the solver has no such offer.
        SolverError: it could not be reached, or answered something that is no job offer.
    """
    try:
        view = solver.job_offer(job_offer_id)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise SolverError(
            f"the solver's job offer {job_offer_id} is malformed ({where}: {first['msg']})"
        ) from None
    # as lilypad.jobs models: what the provider keeps on disk, amounts as JSON numbers
    return JobSubmission.model_validate(view.offer.model_dump())


def verified_spec(submission: JobSubmission, deal: Deal) -> JobSpec:
    """The job spec of ``deal``, checked against the signed offer and re-rendered here.

    Raises:
        SpecMismatch: the offer is not the deal's, or the spec is not the one it commits to, or
            it renders differently here.
        ModuleError: the module or a tunable is not valid on this machine.
    """
    if submission.offer.struct_hash() != deal.job_offer_hash:
        raise SpecMismatch(
            f"the solver's job offer hashes to {submission.offer.struct_hash()}, but deal "
            f"{deal.deal_id} was made for {deal.job_offer_hash}"
        )
    check_submission(submission)
    return rerender(submission.spec)


def served_modules(refs: list[str]) -> frozenset[str]:
    """The exact ``name:version`` references of ``refs`` (``cowsay`` -> ``cowsay:v0.0.4``)."""
    return frozenset(modules.resolve(ref).ref for ref in refs)


def execute_job(
    executor: Executor, spec: JobSpec, output_dir: Path, weights: Weights = Weights.REAL
) -> ExecutionResult:
    """Run ``spec`` into a fresh ``output_dir`` (what a killed earlier run left is removed)."""
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    module = modules.resolve(spec.module)
    return executor.run(Job.of(module, spec, output_dir, weights))


def run_job(
    executor: Executor,
    storage: Storage,
    spec: JobSpec,
    output_dir: Path,
    weights: Weights = Weights.REAL,
) -> RunResult:
    """Run ``spec`` into a fresh ``output_dir`` and add that folder to IPFS (pinned)."""
    execution = execute_job(executor, spec, output_dir, weights)
    return RunResult(execution, storage.add(output_dir))
