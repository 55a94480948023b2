"""``lilypad run`` (the job creator flow) and ``lilypad jobs`` (past jobs)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from lilypad.cli import keyopt
from lilypad.cli.keyopt import WEB3_KEY_OPTION
from lilypad.cli.module import INPUT_HELP, STRAY_ARGS, check_inputs
from lilypad.cli.output import console, emit, err_console, note
from lilypad.cli.sweep import INPUTS_FILE_OPTION, MAX_JOBS_OPTION, PARALLEL_OPTION, SWEEP_OPTION
from lilypad.errors import InputError

if TYPE_CHECKING:
    from lilypad.chain.crypto import Signer
from lilypad.verification import Verify

jobs_app = typer.Typer(help="Jobs you ran from this machine.", no_args_is_help=True)


def run(
    ref: str = typer.Argument(..., help="Module, e.g. sdxl:v0.9-lilypad1 or cowsay:v0.0.4."),
    inputs: list[str] = typer.Option([], "--input", "-i", help=INPUT_HELP),
    sweep: list[str] = SWEEP_OPTION,
    inputs_file: Path | None = INPUTS_FILE_OPTION,
    parallel: int | None = PARALLEL_OPTION,
    max_jobs: int = MAX_JOBS_OPTION,
    network: str = typer.Option("local", "--network", "-n", help="Network profile."),
    max_price: str = typer.Option("10", "--max-price", help="Most you pay, in tokens."),
    timeout: int | None = typer.Option(
        None,
        "--timeout",
        help="Seconds a provider has for the result (default: the module's timeout plus 300; "
        "at least its timeout plus 60).",
    ),
    expires_in: int = typer.Option(
        300,
        "--expires-in",
        help="Seconds the offer waits for a provider.",
    ),
    mediators: list[str] = typer.Option(
        [], "--mediator", help="A mediator you trust (repeat); default: the network's."
    ),
    retries: int = typer.Option(
        0, "--retries", help="New offers after a provider fails (0 to 10)."
    ),
    verify: Verify = typer.Option(
        Verify.AUDIT,
        "--verify",
        case_sensitive=False,
        help="How the result is checked: audit (a mediator re-runs it at random, often enough "
        "that cheating cannot pay), always, never, or redundant (two providers).",
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Deposit what is needed without asking."),
    key_file: Path | None = typer.Option(
        None, "--key-file", help="Private key file (else $WEB3_PRIVATE_KEY)."
    ),
    web3_key: str | None = WEB3_KEY_OPTION,
    target: str | None = typer.Option(
        None,
        "--target",
        help="Only this provider's address: the solver matches the offer with it alone.",
    ),
    output_dir: Path | None = typer.Option(
        None,
        "-o",
        "--output-dir",
        help="Also copy the verified result into this new or empty folder.",
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    detach: bool = typer.Option(
        False,
        "--detach",
        help="Post the offer, print the job id and exit; lilypad jobs wait ID does the rest.",
    ),
    stray: list[str] = STRAY_ARGS,
) -> None:
    """Run a module on the network: offer, match, deal, result, verified download, accept."""
    from lilypad.client import CLI_FLAGS, Client
    from lilypad.units import format_tokens

    inputs = check_inputs(inputs, stray)
    if sweep or inputs_file is not None:
        from lilypad.cli.sweep import run_sweep

        _one_job_only(target=target, output_dir=output_dir, web3_key=web3_key)

        run_sweep(
            ref, inputs, sweep, inputs_file, parallel=parallel, max_jobs=max_jobs,
            network=network, max_price=max_price, timeout=timeout, expires_in=expires_in,
            mediators=mediators, retries=retries, verify=verify, yes=yes, key_file=key_file,
            json_output=json_output, detach=detach,
        )  # fmt: skip
        return
    if parallel is not None:
        raise InputError(
            f"--parallel {parallel} is for many jobs at once: give --sweep or --inputs-file"
        )
    if detach and output_dir is not None:
        raise InputError(
            f"-o {output_dir} needs the result, which --detach does not wait for",
            hint="drop --detach, or fetch it later with: lilypad jobs get ID -o DIR",
        )
    keyopt.warn_of(web3_key)
    client = Client(
        network,
        key=web3_key,
        key_file=key_file,
        deposit=lambda amount: _consent(amount, yes, format_tokens),
        labels=CLI_FLAGS,
    )
    status = Status("starting", console=err_console)
    on_step = _progress(status, quiet=json_output)
    job = client.prepare(
        ref, inputs, on_progress=on_step, output_dir=output_dir, max_price=max_price,
        timeout=timeout, expires_in=expires_in, mediators=mediators, retries=retries,
        verify=verify, target=target,
    )  # fmt: skip
    spec, options = job.spec, job.options
    assert spec is not None
    assert options is not None
    try:
        _note_environment(client.profile)
        if not json_output:
            note(
                f"running {spec.module} as {client.account.address} on {network!r} "
                f"(max price {format_tokens(options.max_price)})"
            )
        if detach:
            record = job.post()
        else:
            with _shown(status, json_output):
                result = _run_interruptibly(job.runner, job.follow)
            record = result.record
    finally:
        job.close()
    if detach:
        _detached(record, json_output)
        return
    data = record.to_dict()
    if output_dir is not None:
        data["copied_to"] = str(output_dir)
    emit(data, json_output, lambda: _summary(record, output_dir))


def _signer(key_file: Path | None, web3_key: str | None) -> Signer:
    """The job creator's key (one from the command line with a warning, never the key)."""
    return keyopt.signer(key_file, web3_key, "the job creator")


def _note_environment(profile: Any) -> None:
    """Say once, on stderr, which of Lilypad's variables replaced what the profile says."""
    import os

    from lilypad.network import overrides_note

    line = overrides_note(profile)
    if line:
        note(line)
    if os.environ.get("DATA_DIR") and not os.environ.get("LILYPAD_DATA_DIR"):
        note(f"results go under DATA_DIR ({os.environ['DATA_DIR']})")


def _one_job_only(**given: Any) -> None:
    """Refuse the options a sweep does not take."""
    from lilypad.keys import KEY_FLAG

    flags = {"target": "--target", "output_dir": "-o/--output-dir", "web3_key": KEY_FLAG}
    used = [flags[name] for name, value in given.items() if value is not None]
    if used:
        raise InputError(
            f"{', '.join(used)} {'is' if len(used) == 1 else 'are'} for one job, not a sweep",
            hint="for a sweep, give the key with --key-file or $WEB3_PRIVATE_KEY; each job's "
            "result is in its own CID folder",
        )


def _progress(status: Status, *, quiet: bool) -> Any:
    """The runner's ``on_step``: each step on the status line and, unless ``quiet``, a line; the
    module's log lines as they come, and its progress as a bar (step, total, ETA) on a
    terminal."""
    bar = _Bar(status)

    def on_step(step: Any) -> None:
        if step.name == "log":
            if not quiet:
                err_console.print(f"[dim]  │ {escape(step.detail['text'])}[/]", soft_wrap=True)
            return
        if step.name == "progress":
            if not quiet and sys.stderr.isatty():
                bar.show(step.detail)
            return
        bar.end()
        text = step.text
        status.update(escape(text))
        if not quiet:
            err_console.print(f"[green]✓[/] {escape(text)}", soft_wrap=True)

    return on_step


class _Bar:
    """The module's progress as a rich bar, in place of the spinner while progress comes."""

    def __init__(self, status: Status) -> None:
        self.status = status
        self.progress: Any = None
        self.task: Any = None
        self.label: str | None = None

    def show(self, detail: dict[str, Any]) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        label = detail.get("label") or "step"
        if self.progress is None:
            self.status.stop()
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err_console,
            )
            self.progress.start()
        if self.task is None or label != self.label:  # a new stage: a bar of its own
            self.task = self.progress.add_task(label, total=detail["total"])
            self.label = label
        self.progress.update(self.task, completed=detail["done"], total=detail["total"])

    def end(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = self.task = self.label = None
            self.status.start()


def _shown(status: Status, json_output: bool) -> Any:
    return status if sys.stderr.isatty() and not json_output else _nothing()


def _detached(record: Any, json_output: bool) -> None:
    """What ``run --detach`` prints: the job id on stdout (the record with ``--json``)."""
    job_id = record.job_offer_id

    def human() -> None:
        print(job_id)
        note(f"Posted; follow the job with `lilypad jobs wait {job_id}`.")

    emit(record.to_dict(), json_output, human)


def _run_interruptibly(runner: Any, work: Any, *, withdraw: bool = True) -> Any:
    """``work()`` (the runner's run or resume); on Ctrl-C, say what became of the job: a
    pending offer is withdrawn (``withdraw``: ``run``'s, not a detached job's), a deal stays on
    chain for `lilypad jobs wait`. A service that failed while a deal is under way says so too."""
    from lilypad.creator import JobError

    try:
        return work()
    except KeyboardInterrupt:
        last = runner.current
        if last is not None and last.deal_id is None and last.job_offer_id and withdraw:
            runner.cancel(last)
            note("Interrupted: the job offer was withdrawn; no funds moved.")
        elif last is not None and last.job_offer_id:
            note(f"Interrupted. {_come_back(last)}")
        raise
    except (JobError, InputError):
        raise
    except Exception:
        last = runner.current
        if last is not None and last.job_offer_id and not last.state.is_terminal():
            note(_come_back(last))
        raise


def _come_back(record: Any) -> str:
    job_id = record.job_offer_id
    where = f"deal {record.deal_id} stays on chain" if record.deal_id else "the offer stays posted"
    return f"Job {job_id}: {where}. Follow it to its end with `lilypad jobs wait {job_id}`" + (
        f"; if the provider sends no result by the deadline, `lilypad jobs timeout {job_id}` "
        "refunds your payment with the provider's collateral."
        if record.deal_id
        else f", or withdraw it with `lilypad jobs cancel {job_id}`."
    )


def _records() -> list[Any]:
    from lilypad.creator import load_records

    return load_records()


class _nothing:  # noqa: N801 - a context manager standing in for a status display
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


def _consent(needed: int, yes: bool, fmt: Any) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise InputError(
            f"your market deposit is {fmt(needed)} tokens short for this job; "
            "rerun with --yes to deposit it"
        )
    if not typer.confirm(f"Deposit {fmt(needed)} tokens into the market for this job?"):
        raise InputError("no deposit made; the job was not posted")


def _summary(record: Any, copied_to: Path | None = None) -> None:
    from lilypad.client import verdict

    lines = [
        f"\n[bold]Job complete[/] {escape(record.module)}",
        f"  CID        {record.mediator_cid or record.result_cid}",
        f"  deal       {record.deal_id}  (provider {record.provider})",
        f"  verified   {escape(verdict(record))}",
        f"  outputs    {escape(record.output_dir or '')}",
        *([f"  copied to  {escape(str(copied_to))}"] if copied_to is not None else []),
        f"  IPFS link  {escape(record.gateway_url or '')}",
        f"\nOpen the results:\n\n    open {escape(record.output_dir or '')}\n",
    ]
    for line in lines:
        console.print(line, soft_wrap=True)  # paths and links stay on one line


@jobs_app.command("list")
def jobs_list(json_output: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Jobs run from this machine, oldest first."""
    records = _records()
    table = Table("job offer", "module", "state", "result CID", box=None)
    for r in records:
        table.add_row((r.job_offer_id or "")[:14] + "…", r.module, r.state, r.result_cid or "")
    emit([r.to_dict() for r in records], json_output, lambda: console.print(table))


@jobs_app.command("show")
def jobs_show(
    job_id: str = typer.Argument(..., help="A job offer or deal id (a unique prefix is enough)."),
    json_output: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Everything recorded about one job."""
    from lilypad.creator import find_record

    record = find_record(job_id)
    data = record.to_dict()

    def human() -> None:
        for key in sorted(data):
            console.print(f"  {key:<14} {escape(str(data[key]))}", soft_wrap=True)

    emit(data, json_output, human)


# ------------------------------------------------------------------ leaving and coming back
_JOB_ID = typer.Argument(..., help="A job offer or deal id (a unique prefix is enough).")
_KEY_FILE = typer.Option(None, "--key-file", help="Private key file (else $WEB3_PRIVATE_KEY).")
_JSON = typer.Option(False, "--json", help="Print the record as JSON.")


@jobs_app.command("wait")
def jobs_wait(
    job_id: str = _JOB_ID,
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Deposit a challenge's fee if the deposit is short."
    ),
    key_file: Path | None = _KEY_FILE,
    web3_key: str | None = WEB3_KEY_OPTION,
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Follow a job to its end (after Ctrl-C, a crash or run --detach): wait for the deal and
    the result, download and verify it, judge and accept it, as run does."""
    from lilypad.client import CLI_FLAGS, Client
    from lilypad.creator import find_record
    from lilypad.units import format_tokens

    record = find_record(job_id)
    status = Status("following the job", console=err_console)
    keyopt.warn_of(web3_key)
    client = Client(
        record.network,
        key=web3_key,
        key_file=key_file,
        deposit=lambda amount: _consent(amount, yes, format_tokens),
        labels=CLI_FLAGS,
    )
    job = client.job(
        record.job_offer_id or job_id, on_progress=_progress(status, quiet=json_output)
    )
    try:
        with _shown(status, json_output):
            done = _run_interruptibly(job.runner, job.follow, withdraw=False).record
    finally:
        job.close()
    emit(done.to_dict(), json_output, lambda: _summary(done))


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: str = _JOB_ID,
    key_file: Path | None = _KEY_FILE,
    web3_key: str | None = WEB3_KEY_OPTION,
    json_output: bool = _JSON,
) -> None:
    """Withdraw a job's offer while no provider has taken it (the deposit it held is free
    again); cancelling twice is fine."""
    from lilypad.creator import find_record

    record = find_record(job_id)
    runner = _runner(record, key_file, web3_key, lambda _: None)
    try:
        was = record.state
        done = runner.withdraw(record)
    finally:
        runner.close()

    def human() -> None:
        already = "was already withdrawn" if was.value == "cancelled" else "withdrawn"
        console.print(f"job {done.job_offer_id}: offer {already}; no funds moved")

    emit(done.to_dict(), json_output, human)


@jobs_app.command("timeout")
def jobs_timeout(
    job_id: str = _JOB_ID,
    key_file: Path | None = _KEY_FILE,
    web3_key: str | None = WEB3_KEY_OPTION,
    json_output: bool = _JSON,
) -> None:
    """Claim the refund of a deal whose deadline passed: no result in time (your payment and
    the provider's collateral), or no mediator's ruling in time (your payment and the fee)."""
    from lilypad.creator import find_record

    record = find_record(job_id)
    runner = _runner(record, key_file, web3_key, lambda _: None)
    try:
        done = runner.time_out(record)
    finally:
        runner.close()

    def human() -> None:
        tx = done.txs.get("timeout")
        how = f"timed out now (tx {tx})" if tx and tx != record.txs.get("timeout") else "settled"
        console.print(f"job {done.job_offer_id}: deal {done.deal_id} {how}: {done.state}")
        if done.error:
            console.print(f"  {escape(done.error)}", soft_wrap=True)

    emit(done.to_dict(), json_output, human)


@jobs_app.command("logs")
def jobs_logs(
    job_id: str = _JOB_ID,
    follow: bool = typer.Option(
        False, "-f", "--follow", help="Keep printing lines until the job has a result."
    ),
    key_file: Path | None = _KEY_FILE,
    web3_key: str | None = WEB3_KEY_OPTION,
) -> None:
    """Print a job's module log (stderr): from its downloaded result when there is one, else
    from the solver (only the job's creator may read it), live with -f."""
    from lilypad.creator import find_record
    from lilypad.network import load_network
    from lilypad.solver_api import SolverClient

    record = find_record(job_id)
    local = Path(record.output_dir) / "stderr" if record.output_dir else None
    if local is not None and local.is_file() and not follow:
        sys.stdout.write(local.read_text(errors="replace"))
        return
    if not record.deal_id:
        raise InputError(f"job {record.job_offer_id} has no deal yet: no provider runs it")
    profile = load_network(record.network)
    account = _signer(key_file, web3_key)

    def sign(text: str) -> str:
        return "0x" + account.sign_message(text).hex()

    after = 0
    with SolverClient(profile.solver_url or "") as client:
        while True:
            page = client.deal_logs(record.deal_id, sign, after=after, wait=10 if follow else 0)
            for line in page.lines:
                print(line.text, flush=True)
                after = line.seq
            if len(page.lines) == 0 and (page.ended or not follow):
                break
    if page.dropped:
        note(f"{page.dropped} line(s) were not kept by the solver (over its bounds)")


@jobs_app.command("get")
def jobs_get(
    job_id: str = _JOB_ID,
    output: Path | None = typer.Option(
        None, "-o", "--output", help="An empty or new folder (default: the job's output folder)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print where it went as JSON."),
) -> None:
    """Download a job's result again, every block verified against its CID."""
    from lilypad.client import check_empty_folder
    from lilypad.creator import find_record
    from lilypad.creator.runner import download, gateway_link, result_of
    from lilypad.network import load_network
    from lilypad.storage import result_dir

    record = find_record(job_id)
    cid = result_of(record)
    check_empty_folder("-o", output)
    dest = output if output is not None else result_dir(cid)
    profile = load_network(record.network)
    quiet = json_output
    links = download(profile, cid, dest, record.result_limit, _progress(_silent(), quiet=quiet))
    data = {
        "job_offer_id": record.job_offer_id,
        "cid": str(cid),
        "path": str(dest),
        "gateway_url": gateway_link(profile, cid),
        "skipped_symlinks": links,
    }
    emit(data, json_output, lambda: console.print(f"saved {cid} to {escape(str(dest))}"))


def _silent() -> Status:
    return Status("", console=err_console)


def _runner(record: Any, key_file: Path | None, web3_key: str | None, on_step: Any) -> Any:
    """A runner for the record's network, with the key given."""
    from lilypad.client import open_market
    from lilypad.creator import JobRunner
    from lilypad.network import load_network

    profile = load_network(record.network)
    account = _signer(key_file, web3_key)
    return JobRunner(profile, account, open_market(profile), on_step)
