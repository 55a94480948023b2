"""The Python SDK: :class:`Client`, the code path ``lilypad run`` takes too.

    from lilypad import Client

    with Client(network="local") as client:
        result = client.run("sdxl:v0.9-lilypad1", Prompt="an astronaut", Seed=24)
    print(result.cid, result.outputs, result.urls)

A job goes through the same steps as on the command line: its inputs are checked against the
module (every error before anything is signed or paid), its file inputs added to the network's
IPFS, its offer signed and posted, then matched, dealt, run, its result downloaded with every
block checked against its CID, judged by the verification policy and accepted on chain. Each step
reaches ``on_progress`` as a :class:`~lilypad.creator.Step` (``step.text`` says it in words; the
module's log lines are ``log`` steps, its progress ``progress`` steps with ``done`` and ``total``).

:meth:`Client.run` follows a job to its end in the calling thread and returns its
:class:`Result`; :meth:`Client.submit` returns a :class:`Job` once the offer is posted and
follows it on a thread of its own (``job.wait()``, ``job.logs()``, ``job.cancel()``).
:class:`AsyncClient` is the same for asyncio. Errors are the CLI's: :class:`~lilypad.errors.
InputError` (and :class:`~lilypad.errors.InvalidTunable`) for a bad input, naming the value and
what is allowed; a :class:`~lilypad.creator.JobError` for a job that did not complete, saying
what became of the funds; ``SolverError``, ``ChainError``, ``StorageError`` for a service that
failed (the job's record keeps its state: ``client.job(id).wait()`` takes it up again).

Inputs are keyword arguments named as the module's tunables (``lilypad module show REF
--schema``), of the JSON type its schema says, or a mapping of them (``inputs={...}``), or
``KEY=VALUE`` strings as ``-i`` takes them. A file input is a :class:`~pathlib.Path`, ``bytes``,
or a string as ``-i`` takes it (``@path``, ``ipfs://CID[/path]``, a bare CID).

Every job is recorded under the data dir as ``lilypad run`` records it, so ``lilypad jobs list``
shows the SDK's jobs too, and a job left by a crash is taken up with ``lilypad jobs wait``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lilypad.errors import InputError
from lilypad.verification import Verify

if TYPE_CHECKING:
    from lilypad.chain.crypto import Signer
    from lilypad.chain.light import CreatorMarket
    from lilypad.creator import JobRecord, JobRunner, JobState, RunOptions, Step
    from lilypad.modules import JobSpec, ResolvedModule
    from lilypad.network import NetworkProfile

#: The longest a job offer may wait for a provider (a week).
MAX_EXPIRES_IN_S = 7 * 86_400
#: The most seconds a job offer can give a provider (the offer's ``uint32``).
MAX_TIMEOUT_S = 2**32 - 1
#: What ``lilypad run`` calls each option, for its error messages.
CLI_FLAGS = {
    "max_price": "--max-price",
    "timeout": "--timeout",
    "expires_in": "--expires-in",
    "retries": "--retries",
    "target": "--target",
    "mediators": "--mediator",
    "output_dir": "-o",
}

ProgressCallback = Callable[["Step"], None]
Consent = Callable[[int], None]
InputValue = str | int | float | bool | bytes | os.PathLike[str]
Inputs = Mapping[str, InputValue] | Sequence[str] | None


@dataclass(frozen=True)
class Result:
    """A completed job: its verified outputs on this machine and where the network has them.

    Attributes:
        job_id: The job offer's id (``lilypad jobs show ID``).
        module: The module version that ran (``sdxl:v0.9-lilypad1``).
        cid: The result's CID (the mediator's, where it found the provider's result wrong).
        deal_id: The deal on chain.
        provider: The provider's address.
        state: How the job ended (``accepted``, ``upheld`` or ``provider_slashed``).
        verified: How the result was checked, in words.
        output_dir: The verified result folder (``outputs/``, ``stdout``, ``stderr``,
            ``exitCode``).
        files: Every file of the result, relative to ``output_dir``.
        outputs: The module's output files (under ``outputs/``), relative to ``output_dir``.
        gateway_url: The result folder on the network's IPFS gateway.
        urls: Each output file's gateway URL, by its path relative to ``output_dir``.
        timings: Seconds from the start to each phase (posted, matched, deal, result,
            downloaded, accepted).
        record: The job's whole record (as ``lilypad jobs show --json`` prints it).
    """

    job_id: str
    module: str
    cid: str
    deal_id: str
    provider: str
    state: JobState
    verified: str
    output_dir: Path
    files: tuple[str, ...]
    outputs: tuple[str, ...]
    gateway_url: str
    urls: dict[str, str]
    timings: dict[str, float]
    record: JobRecord = field(repr=False)

    @classmethod
    def from_record(cls, record: JobRecord) -> Result:
        folder = Path(record.output_dir or "")
        files = tuple(
            sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        )
        outputs = tuple(f for f in files if f.startswith("outputs/"))
        gateway = record.gateway_url or ""
        return cls(
            job_id=record.job_offer_id or "",
            module=record.module,
            cid=record.mediator_cid or record.result_cid or "",
            deal_id=record.deal_id or "",
            provider=record.provider or "",
            state=record.state,
            verified=verdict(record),
            output_dir=folder,
            files=files,
            outputs=outputs,
            gateway_url=gateway,
            urls={f: f"{gateway}/{f}" for f in outputs},
            timings={phase: ms / 1000 for phase, ms in record.timings_ms.items()},
            record=record,
        )


class Client:
    """Runs jobs on one network, as one job creator account.

    Args:
        network: The network profile (``lilypad network list``): ``local`` is the one
            ``lilypad network up`` starts.
        key: The job creator's private key (hex); default ``$WEB3_PRIVATE_KEY``. Never logged.
        key_file: A file holding it instead (mode 600).
        deposit: Whether the client may deposit into the market what a job needs (the price
            and a challenge's fee, held in escrow, yours again once the job ends: ``lilypad
            account withdraw``). True (the default): deposit without asking; False: a short
            deposit is an :class:`InputError`; a callable: called with the amount (base units)
            before each deposit, and raises to refuse it.
        labels: What errors call each option (``lilypad run`` passes its flags).

    Raises:
        ConfigError: at the first job, no key, or a malformed one.
    """

    def __init__(
        self,
        network: str = "local",
        *,
        key: str | None = None,
        key_file: Path | str | None = None,
        deposit: bool | Consent = True,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.network = network
        self._key, self._key_file = key, Path(key_file) if key_file is not None else None
        self._deposit = deposit
        self._labels = dict(labels or {})
        self._profile: NetworkProfile | None = None
        self._signer: Signer | None = None

    # ------------------------------------------------------------------------------ what it holds
    @property
    def profile(self) -> NetworkProfile:
        """The network profile, read at first use (with Lilypad's variables applied)."""
        if self._profile is None:
            from lilypad.network import load_network

            self._profile = load_network(self.network)
        return self._profile

    @property
    def account(self) -> Signer:
        """The job creator's key, read at first use."""
        if self._signer is None:
            from lilypad.keys import load_signer

            self._signer = load_signer(self._key_file, role="the job creator", key=self._key)
        return self._signer

    def close(self) -> None:
        """Nothing stays open between jobs; kept for ``with Client(...)``."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ jobs
    def run(
        self,
        ref: str,
        inputs: Inputs = None,
        *,
        on_progress: ProgressCallback | None = None,
        output_dir: Path | str | None = None,
        max_price: str | int | Decimal = "10",
        timeout: int | None = None,
        expires_in: int = 300,
        mediators: Sequence[str] = (),
        retries: int = 0,
        verify: Verify | str = Verify.AUDIT,
        target: str | None = None,
        **named: InputValue,
    ) -> Result:
        """Run module ``ref`` with the inputs given and return its verified result.

        Args:
            ref: A module version (``sdxl:v0.9-lilypad1``, ``cowsay:v0.0.4``).
            inputs: The module's inputs (besides or instead of keyword arguments).
            on_progress: Called with every step of the job, on the thread that follows it.
            output_dir: Also copy the verified result into this new or empty folder.
            max_price: The most you pay, in tokens (``"0.5"``, or a whole number).
            timeout: Seconds a provider has for the result (default: the module's timeout
                plus 300; at least its timeout plus 60).
            expires_in: Seconds the offer waits for a provider (15 to a week).
            mediators: Mediators you trust (default: the network's).
            retries: New offers after a provider fails (0 to 10).
            verify: ``audit``, ``always``, ``never`` or ``redundant`` (``lilypad run
                --verify``).
            target: Only this provider's address.

        Raises:
            InputError: a bad input or option; nothing was signed or paid.
            JobError: the job did not complete (the message says what became of the funds).
            SolverError, ChainError, StorageError: a service failed.
        """
        job = self.prepare(
            ref, inputs, on_progress=on_progress, output_dir=output_dir, max_price=max_price,
            timeout=timeout, expires_in=expires_in, mediators=mediators, retries=retries,
            verify=verify, target=target, **named,
        )  # fmt: skip
        try:
            return job.follow()
        finally:
            job.close()

    def submit(
        self,
        ref: str,
        inputs: Inputs = None,
        *,
        on_progress: ProgressCallback | None = None,
        output_dir: Path | str | None = None,
        max_price: str | int | Decimal = "10",
        timeout: int | None = None,
        expires_in: int = 300,
        mediators: Sequence[str] = (),
        retries: int = 0,
        verify: Verify | str = Verify.AUDIT,
        target: str | None = None,
        **named: InputValue,
    ) -> Job:
        """As :meth:`run`, but return the :class:`Job` once its offer is posted, following it
        on a thread of its own.

        Raises:
            InputError: a bad input or option, or the deposit refused: nothing was posted.
            SolverError, ChainError: the offer could not be posted.
        """
        job = self.prepare(
            ref, inputs, on_progress=on_progress, output_dir=output_dir, max_price=max_price,
            timeout=timeout, expires_in=expires_in, mediators=mediators, retries=retries,
            verify=verify, target=target, **named,
        )  # fmt: skip
        job.start()
        job.wait_posted()
        return job

    def prepare(
        self,
        ref: str,
        inputs: Inputs = None,
        *,
        on_progress: ProgressCallback | None = None,
        output_dir: Path | str | None = None,
        max_price: str | int | Decimal = "10",
        timeout: int | None = None,
        expires_in: int = 300,
        mediators: Sequence[str] = (),
        retries: int = 0,
        verify: Verify | str = Verify.AUDIT,
        target: str | None = None,
        **named: InputValue,
    ) -> Job:
        """Check the job and stage its file inputs, signing and paying nothing: a
        :class:`Job` to :meth:`Job.follow` here, :meth:`Job.start` on a thread, or
        :meth:`Job.post` alone (``lilypad run --detach``).

        Raises:
            InputError: a bad input or option.
        """
        from lilypad import modules
        from lilypad.modules.files import precheck
        from lilypad.units import parse_tokens

        folder = Path(output_dir) if output_dir is not None else None
        check_empty_folder(self._label("output_dir"), folder)
        target_address = _address(self._label("target"), target)
        module = modules.resolve(ref)
        verify = _verify(verify)
        with tempfile.TemporaryDirectory(prefix="lilypad-sdk-") as scratch:
            texts = input_texts(module, inputs, named, Path(scratch))
            precheck(module, texts)  # bad input stops here, before anything is signed
            price = parse_tokens(str(max_price), self._label("max_price"))
            in_range(self._label("expires_in"), expires_in, 15, MAX_EXPIRES_IN_S)
            in_range(self._label("retries"), retries, 0, 10)
            profile = self.profile
            steps: list[Step] = []
            spec = stage_job(module, texts, profile, steps.append)
        from lilypad.creator import RunOptions

        timeout_s = job_timeout(self._label("timeout"), timeout, spec)
        profile.require_contracts()  # a profile without them stops here, before the key is read
        self.account  # noqa: B018 - the key is read (and refused) before anything is posted
        options = RunOptions(
            max_price=price,
            timeout_s=timeout_s,
            expires_in_s=expires_in,
            mediators=trusted_mediators(self._label("mediators"), mediators, profile),
            retries=retries,
            verify=verify,
            target=target_address,
        )
        job = Job(self, spec, options, on_progress, folder)
        for step in steps:
            job.on_step(step)
        return job

    def job(self, job_id: str, *, on_progress: ProgressCallback | None = None) -> Job:
        """A job run from this machine (a unique prefix of its offer or deal id is enough), to
        wait for, read or cancel: ``client.job(id).wait()`` follows it to its end."""
        from lilypad.creator import find_record

        return Job.from_record(self, find_record(job_id), on_progress)

    def jobs(self) -> list[JobRecord]:
        """The records of every job run from this machine, oldest first."""
        from lilypad.creator import load_records

        return load_records()

    # ------------------------------------------------------------------------------ inside
    def _label(self, option: str) -> str:
        return self._labels.get(option, option)

    def _runner(self, on_step: ProgressCallback) -> JobRunner:
        from lilypad.creator import JobRunner

        runner = JobRunner(self.profile, self.account, open_market(self.profile), on_step)
        return runner

    def _consent(self, amount: int) -> None:
        from lilypad.units import format_tokens

        if callable(self._deposit):
            self._deposit(amount)
        elif not self._deposit:
            raise InputError(
                f"the market deposit of {self.account.address} is {format_tokens(amount)} "
                "tokens short for this job, and this client may not deposit (deposit=False)",
                hint="deposit first (lilypad account deposit AMOUNT), or use deposit=True",
            )


class Job:
    """One job of a :class:`Client`: prepared, then followed here or on a thread.

    ``steps`` holds every step so far; ``record`` is the job's record (None until its offer is
    posted); ``error`` what ended it if it failed.
    """

    def __init__(
        self,
        client: Client,
        spec: JobSpec | None,
        options: RunOptions | None,
        on_progress: ProgressCallback | None = None,
        output_dir: Path | None = None,
    ) -> None:
        self.client, self.spec, self.options = client, spec, options
        self.output_dir = output_dir
        self.steps: list[Step] = []
        self.error: BaseException | None = None
        self._on_progress = on_progress
        self._record: JobRecord | None = None
        self._result: Result | None = None
        self._offers: list[str] = []
        self._posted = threading.Event()
        self._ended = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._listeners: list[ProgressCallback] = []
        self._asked = False
        self._runner: JobRunner | None = None

    @classmethod
    def from_record(
        cls, client: Client, record: JobRecord, on_progress: ProgressCallback | None = None
    ) -> Job:
        job = cls(client, None, None, on_progress)
        job._record = record
        if record.job_offer_id:
            job._offers.append(record.job_offer_id)
            job._posted.set()
        return job

    @property
    def runner(self) -> JobRunner:
        """The job's runner, opened at first use (a job only prepared holds no connection)."""
        if self._runner is None:
            self._runner = self.client._runner(self.on_step)
            self._runner.fund = self._fund
        return self._runner

    # ------------------------------------------------------------------------------ reading
    @property
    def id(self) -> str | None:
        """The job offer's id, once posted."""
        record = self.record
        return record.job_offer_id if record is not None else None

    @property
    def record(self) -> JobRecord | None:
        current = self._runner.current if self._runner is not None else None
        return current if current is not None else self._record

    @property
    def state(self) -> str:
        """``preparing`` until the offer is posted, then the record's state."""
        record = self.record
        return "preparing" if record is None or record.job_offer_id is None else record.state.value

    def done(self) -> bool:
        """Whether the job has ended (successfully or not)."""
        record = self.record
        return self._ended.is_set() or (record is not None and record.state.is_terminal())

    def logs(self) -> list[str]:
        """The module's log lines (stderr): the result's whole ``stderr`` once it is downloaded,
        else the lines the provider relayed so far."""
        record = self.record
        if record is not None and record.output_dir:
            stderr = Path(record.output_dir) / "stderr"
            if stderr.is_file():
                return stderr.read_text(errors="replace").splitlines()
        with self._lock:
            return [str(s.detail.get("text", "")) for s in self.steps if s.name == "log"]

    def subscribe(self, listener: ProgressCallback) -> list[Step]:
        """Call ``listener`` with every later step; return the steps so far (no step is missed
        nor given twice between the two)."""
        with self._lock:
            self._listeners.append(listener)
            return list(self.steps)

    def unsubscribe(self, listener: ProgressCallback) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # ------------------------------------------------------------------------------ following
    def follow(self) -> Result:
        """Follow the job to its end in this thread (posting it first if it is new)."""
        try:
            if self._record is None:
                assert self.spec is not None
                assert self.options is not None
                self._ask_upfront(self.options)
                record = self.runner.run(self.spec, self.options)
            else:  # posted already (post(), or a record): taken up from where it stands
                record = self.runner.resume(self._record)
            result = Result.from_record(record)
            if self.output_dir is not None:
                copy_result(self.client._label("output_dir"), record, self.output_dir)
            self._result = result
            return result
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self._ended.set()
            self._posted.set()

    def close(self) -> None:
        """Close the runner's connections (the job goes on on chain if it has not ended)."""
        if self._runner is not None:
            self._runner.close()

    def start(self) -> None:
        """Follow the job on a thread of its own (:meth:`wait` for it)."""

        def work() -> None:
            try:
                self.follow()
            except BaseException:
                pass
            finally:
                self.close()

        self._thread = threading.Thread(target=work, name=f"lilypad-job-{id(self)}", daemon=True)
        self._thread.start()

    def post(self) -> JobRecord:
        """Only post the offer (``lilypad run --detach``); ``client.job(id).wait()`` or
        ``lilypad jobs wait ID`` does the rest."""
        assert self.spec is not None
        assert self.options is not None
        try:
            self._ask_upfront(self.options)
            record = self.runner.post(self.spec, self.options)
            self._record = record
            return record
        finally:
            self._posted.set()

    def wait_ended(self, timeout: float | None = None) -> bool:
        """Block until the job has ended, at most ``timeout`` seconds; whether it has."""
        return self._ended.wait(timeout)

    def wait_posted(self) -> None:
        """Block until the offer is posted; raise what stopped the job before that."""
        self._posted.wait()
        if self.error is not None and self.id is None:
            raise self.error

    def wait(self, timeout: float | None = None) -> Result:
        """The job's result, once it has ended (following it here if nothing follows it).

        Raises:
            TimeoutError: it has not ended within ``timeout`` seconds.
            JobError, SolverError, ...: what ended it.
        """
        if self._thread is None and not self._ended.is_set():
            try:
                return self.follow()
            finally:
                self.close()
        if not self._ended.wait(timeout):
            raise TimeoutError(f"job {self.id} has not ended within {timeout} s")
        if self.error is not None:
            raise self.error
        if self._result is None:
            raise self._ended_error()
        return self._result

    def cancel(self) -> bool:
        """Withdraw the job's offer while no provider has taken it: the job ends with
        :class:`~lilypad.creator.Cancelled` and no funds move. False when it cannot be (a
        provider took it: the deal binds and the job goes on; or it has ended).

        Raises:
            SolverError: the solver could not be reached: the offer may still be taken.
        """
        from lilypad.creator import JobState

        if self._ended.is_set():
            return False
        record = self.record
        if record is not None and record.deal_id is not None:
            return False
        if self._thread is None and record is not None:  # nothing here follows it: at once
            try:
                return self.runner.withdraw(record).state is JobState.CANCELLED
            except InputError:  # matched or dealt meanwhile, or it has ended
                return False
        withdrawn = [self.runner.withdraw_pending(offer) for offer in list(self._offers)]
        return bool(withdrawn) and all(withdrawn)

    # ------------------------------------------------------------------------------ inside
    def on_step(self, step: Step) -> None:
        with self._lock:
            self.steps.append(step)
            if step.name == "posted":
                self._offers.append(str(step.detail["job_offer_id"]))
            listeners = list(self._listeners)
        if step.name == "posted":
            self._posted.set()
        if self._on_progress is not None:
            self._on_progress(step)
        for listener in listeners:
            listener(step)

    def _ask_upfront(self, options: RunOptions) -> None:
        """Ask for the deposit this job needs before it starts (the CLI asks before its
        progress display; the runner deposits when it posts, by then perhaps another amount)."""
        runner = self.runner
        needed = runner.deposit_needed(
            options.max_price + runner.challenge_reserve(options.mediators)
        )
        if needed:
            check_wallet(runner.market, self.client.account.address, needed)
            self.client._consent(needed)
            self._asked = True

    def _fund(self, amount: int) -> None:
        from lilypad.creator import Step
        from lilypad.units import format_tokens

        check_wallet(self.runner.market, self.client.account.address, amount)
        if not self._asked:
            self.client._consent(amount)
        self.runner.deposit(amount)
        self.on_step(Step("deposit", {"amount": format_tokens(amount)}))

    def _ended_error(self) -> BaseException:
        from lilypad.creator import JobError

        record = self.record
        state = record.state.value if record is not None else "unknown"
        error = record.error if record is not None else None
        return JobError(f"job {self.id} ended {state}: {error or 'no result'}")


# -------------------------------------------------------------------------------- asyncio
class AsyncClient:
    """:class:`Client` for asyncio: the same arguments, each job followed on a worker thread;
    ``on_progress`` is called on the event loop."""

    def __init__(self, network: str = "local", **kwargs: Any) -> None:
        self.sync = Client(network, **kwargs)

    async def run(self, ref: str, inputs: Inputs = None, **kwargs: Any) -> Result:
        """As :meth:`Client.run`."""
        job = await self.submit(ref, inputs, **kwargs)
        return await job.wait()

    async def submit(self, ref: str, inputs: Inputs = None, **kwargs: Any) -> AsyncJob:
        """As :meth:`Client.submit`."""
        progress = _on_loop(kwargs.pop("on_progress", None))
        job = await asyncio.to_thread(self.sync.submit, ref, inputs, on_progress=progress, **kwargs)
        return AsyncJob(job)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.sync.close()


class AsyncJob:
    """:class:`Job` for asyncio."""

    def __init__(self, job: Job) -> None:
        self.job = job

    @property
    def id(self) -> str | None:
        return self.job.id

    @property
    def state(self) -> str:
        return self.job.state

    async def wait(self, timeout: float | None = None) -> Result:
        return await asyncio.to_thread(self.job.wait, timeout)

    async def cancel(self) -> bool:
        return await asyncio.to_thread(self.job.cancel)

    def logs(self) -> list[str]:
        return self.job.logs()


def _on_loop(callback: Callable[[Step], Awaitable[None] | None] | None) -> ProgressCallback | None:
    """``callback`` called on the running event loop, from the thread that follows a job."""
    if callback is None:
        return None
    loop = asyncio.get_running_loop()

    def on_loop(step: Step) -> None:
        loop.call_soon_threadsafe(callback, step)

    return on_loop


# -------------------------------------------------------------------------------- checks
def input_texts(
    module: ResolvedModule, inputs: Inputs, named: Mapping[str, InputValue], scratch: Path
) -> list[str]:
    """The inputs as ``-i KEY=VALUE`` takes them: ``KEY=VALUE`` strings as they are, values of
    a mapping or keyword by their schema's JSON type (:func:`lilypad.modules.schema.
    inputs_from_json`); a path as ``@path``, bytes written to a file under ``scratch`` first."""
    from lilypad.modules.schema import inputs_from_json
    from lilypad.modules.tunables import TUNABLE_NAME

    texts: list[str] = []
    values: dict[str, Any] = {}
    if isinstance(inputs, str | bytes):
        raise InputError(
            f"inputs {inputs!r} is one value; give a mapping of the module's inputs "
            "(inputs={'Prompt': 'a cat'}), KEY=VALUE strings, or keyword arguments"
        )
    if isinstance(inputs, Mapping):
        values.update(inputs)
    elif inputs is not None:
        texts.extend(str(text) for text in inputs)
    values.update(named)
    for name, value in values.items():
        if isinstance(value, bytes) and re.fullmatch(TUNABLE_NAME, name):
            path = scratch / name  # a tunable's name: a letter, then letters, digits and _
            path.write_bytes(value)
            values[name] = f"@{path}"
        elif isinstance(value, os.PathLike):
            values[name] = f"@{os.fspath(value)}"
    return texts + inputs_from_json(module, values)


def stage_job(
    module: ResolvedModule,
    inputs: list[str],
    profile: NetworkProfile,
    on_step: ProgressCallback = lambda _: None,
) -> JobSpec:
    """The job spec, its file inputs added to the network's IPFS (the profile's API, which the
    providers fetch from) and checked there (a ``staged`` step each); a module without file
    inputs touches nothing."""
    from lilypad import modules
    from lilypad.creator import Step
    from lilypad.modules.files import has_file_inputs, has_local_files, stage_inputs
    from lilypad.storage import open_storage

    if not has_file_inputs(module, inputs):
        return modules.render(module, inputs)
    if has_local_files(module, inputs) and not profile.ipfs_api_url:
        raise InputError(
            f"network {profile.name!r} names no IPFS API (ipfs_api_url) to add the local file "
            "inputs to",
            hint="add the file to an IPFS node the network's providers reach and pass "
            "ipfs://CID, or set ipfs_api_url in the network profile",
        )
    storage = open_storage(
        api=profile.ipfs_api_url, gateway=None if profile.ipfs_api_url else profile.gateway_url
    )
    try:
        with tempfile.TemporaryDirectory(prefix="lilypad-inputs-") as work:
            staged = stage_inputs(
                module, inputs, add=storage.add, workdir=Path(work), storage=storage
            )
    finally:
        storage.close()
    for name, ref in staged.refs.items():
        on_step(Step("staged", {"name": name, "ref": str(ref)}))
    return modules.render(module, staged.inputs)


def job_timeout(option: str, timeout: int | None, spec: JobSpec) -> int:
    """The timeout given, or the module's default; never less than a provider needs (a deal
    that an honest provider cannot deliver in time would only hand its collateral to the job
    creator, so no provider's offer and no solver takes it)."""
    from lilypad.chain.offers import default_job_timeout, min_job_timeout

    least = min_job_timeout(spec.timeout_s)
    if timeout is None:
        return default_job_timeout(spec.timeout_s)
    in_range(option, timeout, 1, MAX_TIMEOUT_S)
    if timeout < least:
        raise InputError(
            f"{option} {timeout} is less than {spec.module} needs: at least {least} seconds "
            f"(its timeout of {spec.timeout_s} s plus {least - spec.timeout_s} s to deliver)"
        )
    return timeout


def in_range(option: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{option} {value!r} is not a whole number (from {low:,} to {high:,})")
    if not low <= value <= high:
        raise InputError(f"{option} {value} is out of range: from {low:,} to {high:,}")


def trusted_mediators(
    option: str, given: Sequence[str], profile: NetworkProfile
) -> tuple[str, ...]:
    """The mediators given (checked, deduplicated), else the network's."""
    from lilypad.chain.crypto import is_address, to_checksum_address
    from lilypad.chain.offers import MAX_MEDIATORS

    if isinstance(given, str):
        given = [given]
    for address in given:
        if not is_address(address):
            raise InputError(
                f"{option} {address!r} is not an Ethereum address (0x and 40 hex digits, "
                "mixed case only with a valid EIP-55 checksum)"
            )
    trusted = tuple(dict.fromkeys(to_checksum_address(a) for a in given)) or tuple(
        address for role, address in sorted(profile.accounts.items()) if role.startswith("mediator")
    )
    if not trusted:
        raise InputError(f"network {profile.name!r} names no mediator; pass {option} ADDRESS")
    if len(trusted) > MAX_MEDIATORS:
        raise InputError(f"{len(trusted)} mediators given; an offer names at most {MAX_MEDIATORS}")
    return trusted


def check_wallet(market: CreatorMarket, address: str, amount: int) -> None:
    """Refuse a deposit the wallet cannot pay (it would only revert, at a gas cost)."""
    from lilypad.units import format_tokens

    held = market.wallet_balance(address)
    if held < amount:
        raise InputError(
            f"the deposit this job needs is {format_tokens(amount)} tokens, but the wallet of "
            f"{address} holds {format_tokens(held)}",
            hint="lower the max price, or fund the wallet",
        )


def check_empty_folder(option: str, folder: Path | None) -> None:
    """Refuse a folder that exists and is not empty (what it holds would be mixed in)."""
    if folder is not None and folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(
            f"{option} {folder} is not an empty folder; the result replaces what the folder holds",
            hint="name a new or empty folder",
        )


def copy_result(option: str, record: JobRecord, folder: Path) -> None:
    """Copy the verified result (its CID folder) into ``folder`` as well."""
    check_empty_folder(option, folder)  # still empty: nothing else wrote there meanwhile
    shutil.copytree(record.output_dir or "", folder, symlinks=True, dirs_exist_ok=True)


def open_market(profile: NetworkProfile) -> CreatorMarket:
    """The network's market on the light chain client, once the node is the profile's chain."""
    from lilypad.chain.light import CreatorMarket, LightChain
    from lilypad.network import chain_mismatch

    market_address, _ = profile.require_contracts()
    chain = LightChain(profile.rpc_url)
    if chain.chain_id != profile.chain_id:
        chain.close()
        raise chain_mismatch(profile, chain.chain_id)
    return CreatorMarket(chain, market_address)


def verdict(record: JobRecord) -> str:
    """How the result was checked, in words."""
    from lilypad.creator import JobState

    if record.state is JobState.PROVIDER_SLASHED:
        return (
            f"the mediator found the provider's result {record.result_cid} wrong; this is the "
            "mediator's result, and the price and the provider's collateral were paid to you"
        )
    if record.state is JobState.UPHELD:
        return "audited: a mediator re-ran the job and upheld the result"
    if record.twin:
        return "by redundancy: two providers returned the same result"
    if record.audit_probability is not None:
        return f"not audited this time (chance {record.audit_probability:.0%}); block by block"
    return "block by block against its CID (--verify never)"


def _address(option: str, value: str | None) -> str | None:
    from lilypad.chain.crypto import is_address, to_checksum_address

    if value is None:
        return None
    if not is_address(value):
        raise InputError(
            f"{option} {value!r} is not an Ethereum address (0x and 40 hex digits, mixed case "
            "only with a valid EIP-55 checksum)"
        )
    return str(to_checksum_address(value))


def _verify(value: Verify | str) -> Verify:
    try:
        return Verify(str(value).lower())
    except ValueError:
        allowed = ", ".join(v.value for v in Verify)
        raise InputError(f"verify {value!r} is not a verification policy: {allowed}") from None
