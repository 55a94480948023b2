"""Turning a deal into a result: find its job spec, check it, run it, add the result to IPFS.

Shared by the resource provider (runs deals), the mediator (re-runs challenged deals) and tests.
A deal carries only ``job_offer_hash``; the spec comes from the solver (:func:`job_submission`),
and nothing from there is trusted: :func:`verified_spec` checks that the signed offer hashes to
the deal's ``job_offer_hash``, that the spec is the one the offer commits to, and re-renders it
here.

A job's file inputs are fetched (:func:`job_inputs`, verified and cached) before it runs. When one
keeps the job from running, :func:`not_run` leaves the result in its place: ``outputs/`` empty,
``stdout`` empty, one fixed line on ``stderr`` naming the tunable and its IPFS path, and
``exitCode`` — :data:`EXIT_BAD_INPUT` (2) for an input its module cannot take (the same verdict on
every machine), :data:`~resource_provider.executors.EXIT_INPUT_UNAVAILABLE` (123) for one that
could not be fetched. Nothing in it depends on the machine, the time or the error's wording, so a
provider and a mediator that meet the same cause write byte-identical results (the same CID).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from lilypad import modules
from lilypad.chain.offers import Deal
from lilypad.errors import InputError, SolverError
from lilypad.jobs import JobSubmission, SpecMismatch, check_submission, rerender
from lilypad.modules import JobSpec
from lilypad.modules.files import FileInput, file_inputs
from lilypad.solver_api import SolverClient
from lilypad.storage import CID, Storage
from resource_provider.executors import (
    EXIT_INPUT_UNAVAILABLE,
    ExecutionResult,
    Executor,
    Job,
    JobInput,
    JobStatus,
    Weights,
)
from resource_provider.executors.layout import EXIT_CODE, OUTPUTS, STDERR, STDOUT
from resource_provider.inputs import UnacceptableInput, fetch_inputs

#: ``exitCode`` of a job that did not run because an input is not a file its module takes (as
#: the CLI's exit code for bad input).
EXIT_BAD_INPUT = 2
#: The one line on ``stderr`` of a job that did not run, by exit code (see :func:`not_run`).
NOT_RUN = {
    EXIT_BAD_INPUT: "lilypad: the job did not run: input {name}={ref} is not a file {name} takes\n",
    EXIT_INPUT_UNAVAILABLE: (
        "lilypad: the job did not run: input {name}={ref} could not be fetched from IPFS in time\n"
    ),
}


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


def job_inputs(storage: Storage, spec: JobSpec, cache: Path | None = None) -> tuple[JobInput, ...]:
    """The spec's file inputs, fetched from ``storage`` (or this machine's cache), as the
    executor mounts them.

    Raises:
        UnacceptableInput: an input is not a file its module takes (the same everywhere).
        InputUnavailable: an input could not be fetched (try again, or give up: see
            :func:`not_run`).
    """
    wanted = file_inputs(spec, modules.resolve(spec.module))
    return fetch_inputs(storage, wanted, cache) if wanted else ()


def not_run(
    executor: Executor, output_dir: Path, item: FileInput, exit_code: int
) -> ExecutionResult:
    """Leave, in a fresh ``output_dir``, the result of a job that ``executor`` did not run because
    of ``item``: ``exit_code`` is :data:`EXIT_BAD_INPUT` or
    :data:`~resource_provider.executors.EXIT_INPUT_UNAVAILABLE`.

    Every byte is fixed by the spec and the cause: the same cause gives the same CID on every
    machine, whatever its lilypad version (the lines are in :data:`NOT_RUN`, part of the result's
    CID: changing one would set providers and mediators of different versions at odds).
    """
    if exit_code not in NOT_RUN:
        raise ValueError(f"exit code {exit_code} is not one of a job that did not run")
    line = NOT_RUN[exit_code].format(name=item.name, ref=item.ref)
    _fresh(output_dir)
    (output_dir / OUTPUTS).mkdir(parents=True)
    (output_dir / STDOUT).write_bytes(b"")
    (output_dir / STDERR).write_text(line, encoding="utf-8")
    (output_dir / EXIT_CODE).write_text(str(exit_code), encoding="ascii")
    return ExecutionResult(
        output_dir=output_dir,
        status=JobStatus.FAILED,
        exit_code=exit_code,
        duration_ms=0,
        executor=executor.kind,
        message=line.strip().removeprefix("lilypad: "),
    )


def execute_job(
    executor: Executor,
    spec: JobSpec,
    output_dir: Path,
    weights: Weights = Weights.REAL,
    inputs: tuple[JobInput, ...] = (),
    on_stderr: Callable[[str], None] | None = None,
) -> ExecutionResult:
    """Run ``spec`` into a fresh ``output_dir`` (what a killed earlier run left is removed),
    with its file ``inputs`` (:func:`job_inputs`) mounted; ``on_stderr`` gets each line the
    module writes to stderr, as it comes."""
    _fresh(output_dir)
    module = modules.resolve(spec.module)
    return executor.run(Job.of(module, spec, output_dir, weights, on_stderr, inputs=inputs))


def run_job(
    executor: Executor,
    storage: Storage,
    spec: JobSpec,
    output_dir: Path,
    weights: Weights = Weights.REAL,
) -> RunResult:
    """Fetch the spec's inputs from ``storage``, run it into a fresh ``output_dir`` and add that
    folder to IPFS (pinned). An input its module cannot take gives the :func:`not_run` result
    (exit code 2) instead of a run.

    Raises:
        InputUnavailable: an input could not be fetched; nothing ran.
    """
    try:
        inputs = job_inputs(storage, spec)
    except UnacceptableInput as exc:
        execution = not_run(executor, output_dir, exc.input, EXIT_BAD_INPUT)
    else:
        execution = execute_job(executor, spec, output_dir, weights, inputs)
    return RunResult(execution, storage.add(output_dir))


def _fresh(output_dir: Path) -> None:
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
