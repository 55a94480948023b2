"""``lilypad run --sweep NAME=VALUES`` and ``--inputs-file FILE``: many jobs of one module at once.

The jobs are the cross product of the sweeps (and of the inputs file's jobs), each on top of the
``-i`` inputs (a swept or file value replaces the same name given with ``-i``), in this order:
the file's jobs in the file's order, and for each the sweeps as ``itertools.product`` takes them,
the last ``--sweep`` changing fastest (``--sweep Seed=1..2 --sweep Steps=20,30``: Seed=1 Steps=20,
Seed=1 Steps=30, Seed=2 Steps=20, Seed=2 Steps=30).

Every job is checked (:func:`precheck_all`) and staged before anything is signed, so one bad
combination costs nothing; then one deposit covers them all, and :func:`run_many` runs them on a
bounded pool of threads, each job with its own :class:`~lilypad.creator.JobRunner` (which posts
under the account's lock, :func:`lilypad.creator.account_lock`). ``lilypad run`` calls
:func:`run_sweep` when either option is given.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from lilypad.cli.output import console, emit, err_console, note
from lilypad.errors import InputError, InvalidTunable, LilypadError
from lilypad.modules.tunables import TUNABLE_NAME, parse_inputs
from lilypad.verification import Verify

if TYPE_CHECKING:
    from lilypad.creator import JobRecord, JobRunner, RunOptions, Step
    from lilypad.modules import JobSpec, ResolvedModule

#: The most jobs one command runs unless ``--max-jobs`` allows more; and the most it may allow.
DEFAULT_MAX_JOBS = 64
MAX_MAX_JOBS = 1000
#: Jobs under way at once unless ``--parallel`` says otherwise (the solver keeps 8 event streams
#: per account by default: more jobs than that follow theirs by polling); and the most.
DEFAULT_PARALLEL = 8
MAX_PARALLEL = 32
#: Pauses (seconds) before the deposit is looked at again, when a job finds it short.
SETTLE_PAUSES_S = (0.1, 0.2, 0.4, 0.8, 1.5)

SWEEP_FORMS = (
    "NAME=a,b,c (a list; write \\, for a comma inside a value), NAME=1..8 (whole numbers, both "
    "ends included), NAME=1..9..2 (with a step) or NAME=0.5..1.0..0.25 (decimals: a step is "
    "needed, and the end must be a whole number of steps away)"
)

SWEEP_OPTION: Any = typer.Option(
    [],
    "--sweep",
    help="Run one job per value: NAME=a,b,c, NAME=1..8 or NAME=1..9..2 (a step), "
    "NAME=0.5..1.0..0.25; repeat for the cross product (the last changes fastest).",
)
INPUTS_FILE_OPTION: Any = typer.Option(
    None,
    "--inputs-file",
    help='A JSON file of inputs: {"Prompt": "...", "Seed": 3} (one job) or a list of such '
    "objects (one job each); @path is relative to the file's folder.",
)
PARALLEL_OPTION: Any = typer.Option(
    None,
    "--parallel",
    help=f"Jobs under way at once (1 to {MAX_PARALLEL}; default: all, at most {DEFAULT_PARALLEL}).",
)
MAX_JOBS_OPTION: Any = typer.Option(
    DEFAULT_MAX_JOBS,
    "--max-jobs",
    help=f"Refuse a sweep of more jobs than this (at most {MAX_MAX_JOBS}).",
)

_NUMBER = r"[+-]?[0-9]+(?:\.[0-9]+)?"
_RANGE = re.compile(rf"\s*({_NUMBER})\s*\.\.\s*({_NUMBER})\s*(?:\.\.\s*({_NUMBER})\s*)?")
#: What a user meant as a range (digits, dots, signs around a ``..``), checked strictly.
_RANGE_LIKE = re.compile(r"[0-9\s.+-]*\.\.[0-9\s.+-]*")
_NAME = re.compile(TUNABLE_NAME)
#: The width the final report may take (its rows are as long as their CIDs and folders).
_WIDE = 10_000


# ------------------------------------------------------------------------------- parsing
def parse_sweep(text: str, limit: int = DEFAULT_MAX_JOBS) -> tuple[str, tuple[str, ...]]:
    """Parse one ``--sweep`` into the tunable's name and its values, as ``-i`` takes them.

    ``NAME=a,b,c`` is a list (each value stripped of surrounding spaces; ``\\,`` is a comma and
    ``\\\\`` a backslash inside a value); ``NAME=1..8`` the whole numbers from 1 to 8,
    ``NAME=1..9..2`` every second one; ``NAME=0.5..1.0..0.25`` decimals, computed exactly (no
    binary rounding), written without trailing zeros. A range must end on its end.

    Raises:
        InputError: a malformed sweep, an empty or repeated value, a range that runs backwards,
            misses its end or gives more than ``limit`` values; the message names the text and
            the allowed forms.
    """
    name, sep, body = text.partition("=")
    name = name.strip()
    if not sep or not _NAME.fullmatch(name):
        what = "no NAME= before the values" if not sep or not name else f"{name!r} is no name"
        raise _bad(text, what)
    match = _RANGE.fullmatch(body)
    if match:
        values = _range(text, *match.groups(), limit=limit)
    elif _RANGE_LIKE.fullmatch(body):
        raise _bad(text, f"{body!r} is not a range")
    else:
        values = _split(text, body)
    if len(values) > limit:
        raise InputError(
            f"--sweep {text!r} gives {len(values)} values; at most {limit} jobs run at once",
            hint="split the sweep, or allow more with --max-jobs",
        )
    return name, values


def _bad(text: str, what: str) -> InputError:
    return InputError(f"--sweep {text!r}: {what}; allowed: {SWEEP_FORMS}")


def _split(text: str, body: str) -> tuple[str, ...]:
    items: list[str] = []
    current: list[str] = []
    chars = iter(body)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            current.append(following if following in (",", "\\") else char + following)
        elif char == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    values = tuple(item.strip() for item in items)
    for index, value in enumerate(values, 1):
        if not value:
            raise _bad(text, f"value {index} is empty")
        if values.index(value) != index - 1:
            raise _bad(text, f"{value!r} is given twice")
    return values


def _range(text: str, start: str, end: str, step: str | None, *, limit: int) -> tuple[str, ...]:
    decimal = any("." in part for part in (start, end, step or ""))
    if decimal and step is None:
        raise _bad(text, f"a range of decimals needs a step, as {start}..{end}..0.1")
    low, high, by = Decimal(start), Decimal(end), Decimal(step or 1)
    if by <= 0:
        raise _bad(text, f"the step {step} is not above 0")
    if low > high:
        raise _bad(text, f"the range runs backwards; write {end}..{start}")
    count, rest = divmod(high - low, by)
    if rest:
        last = _plain(low + count * by, decimal=decimal)
        raise _bad(
            text,
            f"steps of {step} from {start} end at {last} and miss {end}; the end must be a "
            f"whole number of steps from the start (such as {start}..{last}..{step})",
        )
    if count + 1 > limit:
        raise InputError(
            f"--sweep {text!r} gives {int(count) + 1} values; at most {limit} jobs run at once",
            hint="split the sweep, or allow more with --max-jobs",
        )
    values = (low + k * by for k in range(int(count) + 1))
    return tuple(_plain(v, decimal=decimal) for v in values)


def _plain(value: Decimal, *, decimal: bool = True) -> str:
    """``1.00`` -> ``1.0`` (a decimal) or ``1`` (a whole number); never an exponent."""
    text = format(value.normalize(), "f")
    return text + ".0" if decimal and "." not in text else text


class _Literal(str):
    """A JSON number as it is written in the file (so that it reaches the tunable exactly)."""


def load_inputs_file(path: Path) -> list[list[str]]:
    """The jobs of an inputs file, each as the ``KEY=VALUE`` strings ``-i`` takes.

    The file holds one object of inputs (one job) or a list of them (one job each). A value is a
    string, a number (passed as written: ``0.1`` stays ``0.1``) or a boolean (``true`` or
    ``false``); a string ``@path`` is a local file relative to the inputs file's folder.

    Raises:
        InputError: the file is missing or unreadable, not JSON, or not of that shape; the
            message names the path and what is wrong.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--inputs-file {path}: no such file ({path.absolute()})") from None
    except IsADirectoryError:
        raise InputError(f"--inputs-file {path} is a folder; name a JSON file") from None
    except UnicodeDecodeError:
        raise InputError(f"--inputs-file {path} is not UTF-8 text; it must be JSON") from None
    except OSError as exc:
        raise InputError(f"--inputs-file {path}: cannot read it: {exc.strerror or exc}") from None
    try:
        data = json.loads(
            text, parse_int=_Literal, parse_float=_Literal, parse_constant=_no_constant
        )
    except json.JSONDecodeError as exc:
        raise InputError(
            f"--inputs-file {path} is not valid JSON: {exc.msg} at line {exc.lineno}, "
            f"column {exc.colno}"
        ) from None
    except ValueError as exc:
        raise InputError(f"--inputs-file {path}: {exc}") from None
    if isinstance(data, dict):
        return [_job_inputs(path, data, None)]
    if not isinstance(data, list):
        raise InputError(
            f"--inputs-file {path} holds {_kind(data)}; expected an object of inputs "
            '({"Prompt": "a cat", "Seed": 3}) or a list of them'
        )
    if not data:
        raise InputError(f"--inputs-file {path} holds an empty list: no job to run")
    return [_job_inputs(path, item, index) for index, item in enumerate(data, 1)]


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a tunable takes")


def _job_inputs(path: Path, item: Any, index: int | None) -> list[str]:
    where = f"--inputs-file {path}" + (f", job {index}" if index is not None else "")
    if not isinstance(item, dict):
        raise InputError(
            f"{where} is {_kind(item)}; each job is an object of inputs, as "
            '{"Prompt": "a cat", "Seed": 3}'
        )
    inputs = []
    for key, value in item.items():
        if not _NAME.fullmatch(key):
            raise InputError(f"{where}: {key!r} is not a tunable name (letters, digits and _)")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):  # a string, or a number as written (_Literal)
            text = value
            if not isinstance(value, _Literal) and value.startswith("@"):
                text = "@" + str(_relative(path, value[1:]))
        else:
            raise InputError(
                f"{where}: {key} is {_kind(value)}; a value is a string, a number or a boolean"
                + (" (leave the key out for the module's default)" if value is None else "")
            )
        inputs.append(f"{key}={text}")
    return inputs


def _relative(path: Path, name: str) -> Path | str:
    if not name or name.startswith("~") or Path(name).is_absolute():
        return name
    return path.parent / name


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, _Literal):
        return f"the number {value}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a string" if isinstance(value, str) else "a number"


# ----------------------------------------------------------------------------- expansion
def combinations(
    base_inputs: Sequence[str],
    sweeps: Sequence[tuple[str, Sequence[str]]],
    inputs_file_jobs: Sequence[Sequence[str]] | None = None,
    *,
    max_jobs: int = DEFAULT_MAX_JOBS,
) -> list[list[str]]:
    """Every job's full ``KEY=VALUE`` inputs: the inputs file's jobs (or one job when there is
    none) times the cross product of the sweeps, in the order the module docstring gives. A
    swept or file value replaces the same name among ``base_inputs``.

    Raises:
        InputError: a name swept twice, or both swept and in the inputs file; more than
            ``max_jobs`` jobs; two jobs with the same inputs.
    """
    swept = [name for name, _ in sweeps]
    for name in swept:
        if swept.count(name) > 1:
            raise InputError(
                f"--sweep {name} is given twice; give all its values in one --sweep",
                hint=f"for example --sweep {name}=1,2,3",
            )
    file_jobs = [list(job) for job in inputs_file_jobs] if inputs_file_jobs else [[]]
    for number, job in enumerate(file_jobs, 1):
        both = sorted({key for key, _ in parse_inputs(job)} & set(swept))
        if both:
            raise InputError(
                f"{both[0]} is both swept and given in the inputs file (job {number}); "
                "give it in one place"
            )
    count = len(file_jobs)
    for _, values in sweeps:
        count *= len(values)
    if count > max_jobs:
        raise InputError(
            f"these inputs make {count} jobs; at most {max_jobs} run at once",
            hint="sweep fewer values, or allow more with --max-jobs (each job is paid for)",
        )
    jobs = []
    for file_job in file_jobs:
        for values in itertools.product(*(values for _, values in sweeps)):
            given = file_job + [
                f"{name}={value}" for name, value in zip(swept, values, strict=True)
            ]
            names = {key for key, _ in parse_inputs(given)}
            kept = [pair for pair in base_inputs if pair.partition("=")[0] not in names]
            jobs.append(kept + given)
    _refuse_repeats(jobs)
    return jobs


def _refuse_repeats(jobs: list[list[str]]) -> None:
    seen: dict[tuple[str, ...], int] = {}
    for number, job in enumerate(jobs, 1):
        key = tuple(sorted(job))
        if key in seen:
            raise InputError(
                f"jobs {seen[key]} and {number} have the same inputs ({' '.join(job) or 'none'}); "
                "a module gives the same result for the same inputs, so it would be paid twice"
            )
        seen[key] = number


def varied(jobs: Sequence[Sequence[str]]) -> list[dict[str, str]]:
    """Per job, the inputs whose value is not the same in every job (what tells them apart)."""
    parsed = [dict(parse_inputs(job)) for job in jobs]
    names = list(dict.fromkeys(name for job in parsed for name in job))
    differ = [n for n in names if len({job.get(n) for job in parsed}) > 1]
    return [{n: job[n] for n in differ if n in job} for job in parsed]


def precheck_all(module: ResolvedModule, jobs: Sequence[Sequence[str]]) -> None:
    """Check every job's inputs (:func:`lilypad.modules.files.precheck`) before any is staged.

    Raises:
        InvalidTunable: the first job refused, naming it and how many are.
    """
    from lilypad.modules.files import precheck

    refused: list[tuple[int, InvalidTunable]] = []
    for number, job in enumerate(jobs, 1):
        try:
            precheck(module, job)
        except InvalidTunable as exc:
            refused.append((number, exc))
    if refused:
        number, first = refused[0]
        label = _label(varied(jobs)[number - 1]) or " ".join(jobs[number - 1])
        more = f" ({len(refused)} of the {len(jobs)} jobs are refused)" if len(refused) > 1 else ""
        raise InvalidTunable(
            f"job {number} of {len(jobs)} ({label}): {first.message}{more}; nothing was posted",
            hint=first.hint,
        )


def _label(inputs: dict[str, str]) -> str:
    return " ".join(f"{key}={value}" for key, value in inputs.items())


# ------------------------------------------------------------------------------- running
@dataclass
class Outcome:
    """One job of a sweep: its inputs and, once it ran, its record or its error."""

    number: int
    inputs: list[str]
    varied: dict[str, str]
    spec: JobSpec
    state: str = "waiting"
    record: JobRecord | None = None
    error: BaseException | None = None

    @property
    def label(self) -> str:
        return _label(self.varied) or f"job {self.number}"

    @property
    def succeeded(self) -> bool:
        return self.error is None and self.record is not None and self.record.state.is_success()

    def to_dict(self) -> dict[str, Any]:
        """The job's record; a job that never got one (its offer was not posted) as a record's
        fields that are known."""
        if self.record is not None:
            return self.record.to_dict()
        return {
            "module": self.spec.module,
            "tunables": dict(self.spec.tunables),
            "state": "failed",
            "job_offer_id": None,
            "error": _message(self.error),
        }


class Board:
    """The sweep's progress on one screen: a live table on a terminal, else one line a step
    (nothing with ``quiet``, as ``--json`` wants)."""

    def __init__(self, outcomes: list[Outcome], *, live: bool, quiet: bool) -> None:
        self.outcomes, self.live, self.quiet = outcomes, live and not quiet, quiet
        self._lock = threading.Lock()

    def step(self, outcome: Outcome, step: Step) -> None:
        text = step.text
        self.show(outcome, text)

    def show(self, outcome: Outcome, text: str) -> None:
        with self._lock:
            outcome.state = text
        if not self.live and not self.quiet:
            where = f"[{outcome.number}/{len(self.outcomes)}] {outcome.label}"
            err_console.print(f"{escape(where)}: {escape(text)}", soft_wrap=True)

    def table(self) -> Table:
        table = Table("job", "inputs", "state", box=None, pad_edge=False)
        with self._lock:
            for o in self.outcomes:
                table.add_row(f"{o.number}/{len(self.outcomes)}", escape(o.label), escape(o.state))
        return table

    @contextmanager
    def shown(self) -> Iterator[None]:
        if not self.live:
            yield
            return
        with Live(get_renderable=self.table, console=err_console, transient=True):
            yield


def run_many(
    outcomes: list[Outcome],
    make_runner: Callable[[Callable[[Step], None]], JobRunner],
    options: RunOptions,
    *,
    parallel: int,
    board: Board,
) -> list[Outcome]:
    """Run every job of ``outcomes``, ``parallel`` at a time, each with its own runner from
    ``make_runner(on_step)``; fill in each outcome's record or error and return them.

    A job that fails does not stop the others. On Ctrl-C no job is started any more, the
    pending offers are withdrawn, the jobs with a deal are named with the command that takes
    them up again, and the KeyboardInterrupt goes on.
    """
    pending = iter(outcomes)
    take = threading.Lock()
    stop = threading.Event()
    runners: dict[int, JobRunner] = {}

    def work() -> None:
        while not stop.is_set():
            with take:
                outcome = next(pending, None)
            if outcome is None:
                return
            _run_one(outcome, make_runner, options, board, runners, stop)

    # NOTE: daemon threads, not a ThreadPoolExecutor: after Ctrl-C the process exits at once,
    # leaving the jobs on chain to `lilypad jobs wait`, instead of joining jobs that may wait
    # minutes for a provider.
    threads = [threading.Thread(target=work, daemon=True) for _ in range(parallel)]
    try:
        with board.shown():
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)  # a join with a timeout lets Ctrl-C in
    except KeyboardInterrupt:
        stop.set()
        _interrupted(outcomes, runners)
        raise
    return outcomes


def _run_one(
    outcome: Outcome,
    make_runner: Callable[[Callable[[Step], None]], JobRunner],
    options: RunOptions,
    board: Board,
    runners: dict[int, JobRunner],
    stop: threading.Event,
) -> None:
    board.show(outcome, "starting")
    try:
        runner = make_runner(lambda step: board.step(outcome, step))
    except LilypadError as exc:
        outcome.error = exc
        board.show(outcome, f"failed: {exc.message}")
        return
    runners[outcome.number] = runner
    try:
        if stop.is_set():
            return
        outcome.record = runner.run(outcome.spec, options)
        board.show(outcome, str(outcome.record.state))
    except Exception as exc:  # one job's failure, of any kind, is reported with the others
        outcome.record, outcome.error = runner.current, exc
        board.show(outcome, f"failed: {_message(exc)}")
    finally:
        runner.close()


def _interrupted(outcomes: list[Outcome], runners: dict[int, JobRunner]) -> None:
    """Withdraw what is still only an offer; name what is on chain."""
    withdrawn = 0
    for outcome in outcomes:
        runner = runners.get(outcome.number)
        record = runner.current if runner is not None else None
        if runner is None or record is None or record.state.is_terminal():
            continue
        job_id = record.job_offer_id
        if job_id is None:
            note(f"Job {outcome.number} ({outcome.label}) was being posted; see lilypad jobs list.")
        elif record.deal_id is None:
            try:
                runner.cancel(record)
                withdrawn += 1
            except LilypadError as exc:
                note(
                    f"Job {outcome.number}: the offer could not be withdrawn ({exc.message}); "
                    f"`lilypad jobs cancel {job_id}`."
                )
        else:
            note(
                f"Job {outcome.number} ({outcome.label}): deal {record.deal_id} stays on chain. "
                f"Follow it with `lilypad jobs wait {job_id}`."
            )
    if withdrawn:
        note(f"Interrupted: {withdrawn} pending offer(s) withdrawn; no funds moved for them.")


def _note_step(step: Step) -> None:
    note(step.text)  # a file input's IPFS path, as it is staged


def _message(exc: BaseException | None) -> str:
    if isinstance(exc, LilypadError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if exc is not None else ""


# ------------------------------------------------------------------------- the command
def run_sweep(
    ref: str,
    inputs: list[str],
    sweeps: list[str],
    inputs_file: Path | None,
    *,
    parallel: int | None,
    max_jobs: int,
    network: str,
    max_price: str,
    timeout: int | None,
    expires_in: int,
    mediators: list[str],
    retries: int,
    verify: Verify,
    yes: bool,
    key_file: Path | None,
    json_output: bool,
    detach: bool,
) -> None:
    """``lilypad run`` with ``--sweep`` or ``--inputs-file``: check every job, stage them, make
    one deposit for all, run them and report each; exit code 1 when any failed.

    Raises:
        InputError: bad input of any job (nothing is signed or paid).
        JobError: some job did not complete (after the report).
    """
    from lilypad import modules
    from lilypad.client import MAX_EXPIRES_IN_S, in_range
    from lilypad.creator import RunOptions
    from lilypad.units import parse_tokens

    if detach:
        raise InputError(
            "--detach cannot be combined with --sweep or --inputs-file",
            hint="drop --detach: the jobs run together and are all reported",
        )
    in_range("--max-jobs", max_jobs, 1, MAX_MAX_JOBS)
    module = modules.resolve(ref)
    file_jobs = load_inputs_file(inputs_file) if inputs_file is not None else None
    parsed = [parse_sweep(text, max_jobs) for text in sweeps]
    jobs = combinations(inputs, parsed, file_jobs, max_jobs=max_jobs)
    precheck_all(module, jobs)  # every job checked before anything is staged or signed
    price = parse_tokens(max_price, "--max-price")
    in_range("--expires-in", expires_in, 15, MAX_EXPIRES_IN_S)
    in_range("--retries", retries, 0, 10)
    workers = min(len(jobs), DEFAULT_PARALLEL) if parallel is None else parallel
    in_range("--parallel", workers, 1, MAX_PARALLEL)
    setup = _Setup.load(network, key_file, module, jobs)
    options = RunOptions(
        max_price=price,
        timeout_s=setup.timeout_s(timeout),
        expires_in_s=expires_in,
        mediators=setup.mediators(mediators),
        retries=retries,
        verify=verify,
    )
    outcomes = [
        Outcome(number, job, differ, spec)
        for number, (job, differ, spec) in enumerate(
            zip(jobs, varied(jobs), setup.specs, strict=True), 1
        )
    ]
    consented, each = setup.deposit_for(options, len(jobs), yes, quiet=json_output)
    if not json_output:
        note(
            f"running {len(jobs)} jobs of {setup.specs[0].module} as {setup.account.address} on "
            f"{network!r}, {min(workers, len(jobs))} at a time (max price {max_price} each)"
        )
    board = Board(outcomes, live=sys.stderr.isatty(), quiet=json_output)
    run_many(
        outcomes,
        setup.runner_maker(consented, each),
        options,
        parallel=min(workers, len(jobs)),
        board=board,
    )
    emit([o.to_dict() for o in outcomes], json_output, lambda: _report(outcomes))
    _exit_status(outcomes)


@dataclass
class _Setup:
    """What every job of a sweep shares: the network, the key, the staged specs."""

    profile: Any
    account: Any
    module: ResolvedModule
    specs: list[JobSpec] = field(default_factory=list)

    @classmethod
    def load(
        cls, network: str, key_file: Path | None, module: ResolvedModule, jobs: list[list[str]]
    ) -> _Setup:
        from lilypad.client import stage_job
        from lilypad.keys import load_signer
        from lilypad.network import load_network

        profile = load_network(network)
        specs = [stage_job(module, job, profile, _note_step) for job in jobs]  # checked, then added
        profile.require_contracts()
        account = load_signer(key_file, role="the job creator")
        return cls(profile, account, module, specs)

    def timeout_s(self, timeout: int | None) -> int:
        from lilypad.client import job_timeout

        return job_timeout(
            "--timeout", timeout, self.specs[0]
        )  # one module: one timeout for every job

    def mediators(self, given: list[str]) -> tuple[str, ...]:
        from lilypad.client import trusted_mediators

        return trusted_mediators("--mediator", given, self.profile)

    def deposit_for(
        self, options: RunOptions, count: int, yes: bool, *, quiet: bool
    ) -> tuple[bool, int]:
        """Make the one deposit all ``count`` jobs need (each offer's price and a challenge's
        fee; two offers a job with ``--verify redundant``), asking first unless ``yes``.
        Whether later top-ups may be made without asking, and what one offer needs."""
        from lilypad.client import check_wallet
        from lilypad.creator import JobRunner
        from lilypad.units import format_tokens

        runner = JobRunner(self.profile, self.account, self._market())
        try:
            offers = count * (2 if options.verify is Verify.REDUNDANT else 1)
            each = options.max_price + runner.challenge_reserve(options.mediators)
            needed = runner.deposit_needed(offers * each)
            if not needed:
                return yes, each
            check_wallet(runner.market, self.account.address, needed)
            _consent(needed, count, yes, format_tokens)
            runner.deposit(needed)
        finally:
            runner.close()
        if not quiet:
            note(f"deposited {format_tokens(needed)} tokens into the market for the {count} jobs")
        return True, each

    def runner_maker(
        self, consented: bool, each: int
    ) -> Callable[[Callable[[Step], None]], JobRunner]:
        from lilypad.client import check_wallet
        from lilypad.creator import JobRunner
        from lilypad.units import format_tokens

        def make(on_step: Callable[[Step], None]) -> JobRunner:
            from lilypad.creator import Step

            runner = JobRunner(self.profile, self.account, self._market(), on_step)

            def fund(amount: int) -> None:
                if _settles(runner, each):
                    return
                if not consented:
                    raise InputError(
                        f"the market deposit is {format_tokens(amount)} tokens short for this "
                        "job; rerun with --yes to deposit what the jobs need"
                    )
                check_wallet(runner.market, self.account.address, amount)
                runner.deposit(amount)
                on_step(Step("deposit", {"amount": format_tokens(amount)}))

            runner.fund = fund
            return runner

        return make

    def _market(self) -> Any:
        from lilypad.client import open_market

        return open_market(self.profile)


def _settles(runner: JobRunner, each: int) -> bool:
    """Whether the deposit is found enough for one more offer (``each``: its price and a
    challenge's fee; so also for a challenge) after a moment.

    The deposit made up front covers every job's offer, but while one of their deals is made the
    chain has taken its price from the balance and the solver still counts the offer: a short
    overlap that only ever counts too much. Looked at again, the shortfall is gone, and no
    second deposit is made for nothing."""
    for pause in SETTLE_PAUSES_S:
        time.sleep(pause)
        if not runner.deposit_needed(each):
            return True
    return False


def _consent(needed: int, count: int, yes: bool, fmt: Callable[[int], str]) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise InputError(
            f"your market deposit is {fmt(needed)} tokens short for these {count} jobs; "
            "rerun with --yes to deposit it"
        )
    if not typer.confirm(f"Deposit {fmt(needed)} tokens into the market for these {count} jobs?"):
        raise InputError("no deposit made; no job was posted")


def _report(outcomes: list[Outcome]) -> None:
    names = list(dict.fromkeys(name for o in outcomes for name in o.varied))
    table = Table("job", *names, "state", "CID", "outputs", box=None, pad_edge=False)
    for o in outcomes:
        record = o.record
        state = "failed" if record is None else str(record.state)
        cid = (record.mediator_cid or record.result_cid or "") if record else ""
        folder = (record.output_dir or "") if record and o.succeeded else ""
        cells = [escape(o.varied.get(name, "")) for name in names]
        table.add_row(str(o.number), *cells, state, cid, escape(folder))
    # NOTE: as wide as the rows need (a terminal wraps them): a CID or a folder cut short is no
    # use to copy
    Console(highlight=False, width=_WIDE).print(table)
    failed = [o for o in outcomes if not o.succeeded]
    for o in failed:
        console.print(f"  job {o.number} ({escape(o.label)}): {escape(_message(o.error))}")


def _exit_status(outcomes: list[Outcome]) -> None:
    from lilypad.creator import JobError

    failed = [o for o in outcomes if not o.succeeded]
    if failed:
        numbers = ", ".join(str(o.number) for o in failed)
        raise JobError(
            f"{len(failed)} of the {len(outcomes)} jobs did not complete (job {numbers})",
            hint="each job's record says what became of its funds: lilypad jobs show ID",
        )
