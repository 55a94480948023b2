"""``lilypad module run`` and ``lilypad module build``: run a module here, build its image.

``module run`` is to a module what ``cog predict`` is to a Cog model: the job runs on this machine
with the executor a resource provider would use, and leaves the result layout every later step
(IPFS, the chain, the mediator) works with: ``DIR/outputs/``, ``DIR/stdout``, ``DIR/stderr`` and
``DIR/exitCode``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import typer
from rich.markup import escape

from lilypad import modules
from lilypad.cli.module import INPUT_HELP, STRAY_ARGS, _resolve, check_inputs, stage
from lilypad.cli.output import console, emit, err_console, note, show_warnings
from lilypad.errors import JobFailed
from lilypad.modules.files import StagedInputs, file_inputs
from resource_provider.executors import (
    ExecutionResult,
    ExecutorKind,
    Job,
    JobInput,
    Sandbox,
    Selection,
    Weights,
    create_executor,
    tail,
)
from resource_provider.executors.layout import OUTPUTS, STDERR

#: Lines of the module's stderr shown when it fails.
TAIL_LINES = 20

#: ``--unsafe-no-sandbox``, on every command that may build a process executor.
UNSAFE_NO_SANDBOX_OPTION = typer.Option(
    False,
    "--unsafe-no-sandbox",
    help="UNSAFE: let the process executor run jobs without bubblewrap, as this user, where it "
    "is missing: a module can then read your keys and files, reach your network and leave "
    "processes running. Only on a machine you trust every module on.",
)


def sandbox_for(unsafe_no_sandbox: bool) -> Sandbox:
    """The process executor's sandbox for ``--unsafe-no-sandbox``."""
    return Sandbox.NONE if unsafe_no_sandbox else Sandbox.BWRAP


def run(
    ref: str = typer.Argument(..., help="Module reference, e.g. cowsay or sdxl:v0.9-lilypad1."),
    inputs: list[str] = typer.Option([], "--input", "-i", help=INPUT_HELP),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="Folder for the result (outputs/, stdout, stderr, exitCode): new, empty, "
        "or a previous result, which is replaced.",
    ),
    executor: ExecutorKind | None = typer.Option(
        None,
        "--executor",
        envvar="LILYPAD_EXECUTOR",
        help="docker or process; default: docker when a Docker Engine answers, else process.",
        show_default=False,
    ),
    weights: Weights = typer.Option(
        Weights.REAL,
        "--weights",
        envvar="LILYPAD_WEIGHTS",
        help="real: the weights baked into the image; tiny: generated tiny weights (tests).",
    ),
    unsafe_no_sandbox: bool = UNSAFE_NO_SANDBOX_OPTION,
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    stray: list[str] = STRAY_ARGS,
) -> None:
    """Run a module on this machine and leave its result in --output."""
    inputs = check_inputs(inputs, stray)
    module = _resolve(ref)
    with tempfile.TemporaryDirectory(prefix="lilypad-inputs-") as work:
        spec, staged = stage(module, inputs, Path(work))
        selection = create_executor(executor, sandbox=sandbox_for(unsafe_no_sandbox))
        _say_executor(selection, chosen=executor is None)
        with selection.executor, show_warnings("lilypad.executor", "red") as warned:
            job = Job.of(module, spec, output, weights, inputs=_job_inputs(module, spec, staged))
            result = _run_with_progress(selection, job)
    for remark in result.notes:
        if not any(remark in warning for warning in warned):  # said once is enough
            note(f"[yellow]note:[/] {escape(remark)}")
    data = {
        "output_dir": str(result.output_dir),
        "exit_code": result.exit_code,
        "duration_ms": result.duration_ms,
        "spec_hash": spec.spec_hash,
    }
    if not result.ok:
        if json_output:
            emit(data, True, lambda: None)
        _show_failure(result)
        raise JobFailed(
            f"{spec.module} {result.message}; its result is in {result.output_dir}",
            hint=f"the whole log: {result.output_dir / STDERR}",
        )
    emit(data, json_output, lambda: _show_success(spec.module, result))


def _job_inputs(
    module: modules.ResolvedModule, spec: modules.JobSpec, staged: StagedInputs
) -> list[JobInput]:
    """The job's files: a local file (@photo.png) mounted as it is, an ``ipfs://`` one fetched
    (verified, cached) from this machine's IPFS (``LILYPAD_IPFS_API``, ``_GATEWAY`` or the
    embedded node's store)."""
    from lilypad.errors import InvalidTunable
    from lilypad.storage import open_storage
    from resource_provider.inputs import InputUnavailable, fetch_inputs

    wanted = file_inputs(spec, module)
    mounts = [JobInput(staged.local[f.name], f.mount) for f in wanted if f.name in staged.local]
    remote = [f for f in wanted if f.name not in staged.local]
    if remote:
        storage = open_storage()
        try:
            with err_console.status("Fetching inputs from IPFS"):
                mounts += fetch_inputs(storage, remote)
        except InputUnavailable as exc:
            raise InvalidTunable(
                exc.message,
                hint="add it to IPFS first (lilypad ipfs add FILE), point LILYPAD_IPFS_API or "
                "LILYPAD_IPFS_GATEWAY at a node that has it, or give the file as @path",
            ) from None
        finally:
            storage.close()
    return mounts


def build(
    refs: list[str] = typer.Argument(
        ..., help="Module references, e.g. cowsay:v0.0.4 or a module folder."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Build module versions' Docker images from their folders' Dockerfiles."""
    from resource_provider.executors.images import build_module  # docker: only when building

    built = []
    for ref in refs:
        module = _resolve(ref)
        with err_console.status(f"Building {escape(module.spec.image)} from {module.directory}"):
            tag, image_id = build_module(module)
        built.append({"image": tag, "id": image_id})
    emit(built, json_output, lambda: _show_built(built))


def _show_built(built: list[dict[str, str]]) -> None:
    for item in built:
        console.print(f"Built [bold]{escape(item['image'])}[/] ({item['id']})", soft_wrap=True)


def _say_executor(selection: Selection, *, chosen: bool) -> None:
    how = f"chosen automatically: {selection.reason}" if chosen else "as asked"
    note(f"executor: {escape(selection.executor.describe())} ({escape(how)})")


def _run_with_progress(selection: Selection, job: Job) -> ExecutionResult:
    """Run the job, showing a spinner with the module's latest stderr line (or, when stderr is
    not a terminal, each line as it comes)."""
    title = f"Running {escape(job.spec.module)} with the {selection.executor.kind} executor"
    if not err_console.is_terminal:
        note(title)
        return selection.executor.run(dataclasses.replace(job, on_stderr=_print_line))
    with err_console.status(title) as status:

        def show(line: str) -> None:
            status.update(f"{title}\n  [dim]{escape(line[:200])}[/]")

        return selection.executor.run(dataclasses.replace(job, on_stderr=show))


def _print_line(line: str) -> None:
    err_console.print(f"  [dim]│ {escape(line)}[/]", soft_wrap=True)


def _show_success(module: str, result: ExecutionResult) -> None:
    console.print(
        f"[green]✓[/] {escape(module)} finished in {result.duration_ms} ms "
        f"({result.executor} executor)"
    )
    console.print(f"  result   {escape(str(result.output_dir))}")
    files = _output_files(result.output_dir / OUTPUTS)
    if not files:
        console.print("  [yellow]the module wrote no files to its outputs[/]")
    for name, size in files[:10]:
        console.print(f"  outputs/{escape(name)}  ({size} bytes)")
    if len(files) > 10:
        console.print(f"  ... and {len(files) - 10} more files")


def _show_failure(result: ExecutionResult) -> None:
    lines = tail(result.output_dir / STDERR, TAIL_LINES)
    if lines:
        err_console.print(
            f"[bold]Last lines of the module's stderr[/] (exit code {result.exit_code}):"
        )
        for line in lines.splitlines():
            err_console.print(f"  [dim]│[/] {escape(line)}", soft_wrap=True)
    else:
        err_console.print("The module wrote nothing to stderr.")


def _output_files(root: Path) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            found.append((str(path.relative_to(root)), path.lstat().st_size))
    return found
