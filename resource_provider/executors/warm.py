"""Warm workers: one long-lived, sandboxed process per module version that serves many jobs.

A module opts in by defining a top-level ``predictor`` in its Python entrypoint
(:mod:`lilypad.ml.predictor`; every built-in ML module does). The process executor then keeps a
:class:`Worker` per module version (module folder, entrypoint, weights): ``python -m
lilypad.ml.serve ENTRYPOINT.py ARGS`` in a bubblewrap sandbox built as a cold job's is, which
imports torch and diffusers and loads the pipelines once, and runs each job it is sent over
:mod:`lilypad.ml.protocol`. A job still gets:

- its own inputs and outputs: the worker sees ``/inputs``, ``/outputs`` and ``/tmp`` bound to
  folders of its own, which hold only the running job's files: its inputs are copied in before
  it, its outputs moved into its result folder and its scratch emptied after it, so no job sees
  another's files (a module's code, though, is shared: see the README's warm-workers section);
- its own environment (the worker's is replaced by the job's) and process state
  (:class:`~lilypad.ml.predictor.JobScope`), so its result has a cold run's bytes;
- its time limit and output cap, enforced as a cold job's (:func:`~.supervise.watch`): a job
  stopped for either takes its worker with it.

A job keeps to its own timeout, warm or not (the deal's deadline is computed from it): the
clock starts when the executor takes the job, so the setup of a worker started for it counts
against it, and a job that ends up on a fresh worker after a failure gets only the time left. A
reused worker that dies during a job is replaced and the job retried on a fresh worker, whose
result stands: the result is never one that a worker's history made. A job a reused worker runs
into its timeout has no time left for a retry: it timed out (as a cold job that hangs does), and
the worker is replaced. The pool holds at most
``size`` workers; one idle for ``idle_s`` is ended, and when the pool is full the least recently
used idle worker makes room. With every worker busy, a job runs cold. The workers' memory (the
resident set of each one's processes, read from ``/proc``) is measured after every job and
before a new worker starts: while it is over ``memory_bytes``, the least recently used idle
worker ends (the one that just served a job too, if it alone is over).
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

from lilypad.errors import LilypadError
from lilypad.ml import protocol
from resource_provider.executors.base import (
    EXIT_TIMEOUT,
    SANDBOX_INPUTS,
    ExecutionResult,
    ExecutorKind,
    JobStatus,
    Weights,
)
from resource_provider.executors.layout import OUTPUTS, STDERR, STDOUT, prepare_output_dir
from resource_provider.executors.supervise import LogSink, conclude, pump, watch

if TYPE_CHECKING:
    from resource_provider.executors.base import Job
    from resource_provider.metrics import Metrics

log = logging.getLogger("lilypad.executor.warm")

#: The attribute an entrypoint defines to be served warm.
PREDICTOR = "predictor"


@dataclass(frozen=True)
class WarmConfig:
    """How many warm workers a provider keeps (``--warm``; 0: none), for how long an idle one
    stays (``--warm-idle``) and how much memory they may hold together (``--warm-memory``;
    None: :func:`default_memory_bytes`)."""

    size: int = 0
    idle_s: float = 600.0
    memory_bytes: int | None = None
    #: Serve warm the modules from other sources too (git, a folder). Off by default: a warm
    #: worker runs the jobs of many job creators in one process, so a module's own code could
    #: carry one job's inputs into another's outputs; the built-in modules' code is the
    #: provider's own, anyone else's is only trusted one job at a time (a cold run).
    any_module: bool = False

    @property
    def memory_budget(self) -> int:
        return default_memory_bytes() if self.memory_bytes is None else self.memory_bytes


#: The share of the machine's RAM idle warm workers may hold when the provider declares none:
#: the rest is for cold jobs and the jobs running on the workers.
MEMORY_SHARE = 0.5


def machine_memory() -> int:
    """Bytes of RAM this machine has (``MemTotal`` in ``/proc/meminfo``)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_memory_bytes() -> int:
    """Half of the machine's RAM."""
    return int(machine_memory() * MEMORY_SHARE)


#: The RAM each default warm worker needs: a real SDXL pipeline in memory is about 7 GiB (fp16
#: on a GPU, its CPU copy while loading), and the jobs running beside it need theirs.
RAM_PER_WORKER = 8 << 30


def default_workers() -> int:
    """How many warm workers a provider keeps when it says nothing (``--warm``): 2 with 32 GiB
    of RAM or more, 1 with 8 GiB or more, none on a smaller machine."""
    ram = machine_memory()
    return 2 if ram >= 4 * RAM_PER_WORKER else 1 if ram >= RAM_PER_WORKER else 0


def session_rss(session: int) -> int:
    """Bytes resident in memory of every process in ``session`` (a worker's: bubblewrap, the
    Python inside and whatever it started), read from ``/proc``."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                # the fields after the command (which may hold spaces) start after its ")"
                fields = stat.read().rsplit(b")", 1)[1].split()
            if int(fields[3]) != session:  # the 6th field: the session id
                continue
            with open(f"/proc/{entry.name}/statm", "rb") as statm:
                total += int(statm.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue  # it ended meanwhile
    return total


@dataclass(frozen=True)
class WorkerKey:
    """What a worker serves: one module version (and image, in a container), on one kind of
    weights and devices."""

    module_dir: Path
    entrypoint: tuple[str, ...]
    weights: Weights
    gpus: bool
    image: str = ""


def warm_key(pool: WarmPool | None, job: Job, image: str = "") -> WorkerKey | None:
    """The worker that may serve ``job`` (of ``image``, in a container), or None: it runs cold
    (no pool, an entrypoint with no predictor, a module from elsewhere, or one whose worker
    refused or failed before)."""
    if pool is None or warm_entrypoint(job.module_dir, job.spec.entrypoint) is None:
        return None
    if not pool.config.any_module and not provider_module(job.module_dir):
        return None  # another's code runs one job at a time (see WarmConfig.any_module)
    gpus = job.spec.machine.gpus > 0
    key = WorkerKey(job.module_dir, job.spec.entrypoint, job.weights, gpus, image)
    return None if pool.one_shot(key) else key


def provider_module(module_dir: Path) -> bool:
    """Whether ``module_dir`` is one of the built-in modules (the provider's own code)."""
    from lilypad.modules.sources import builtin_modules_dir

    try:
        return module_dir.resolve().is_relative_to(builtin_modules_dir().resolve())
    except LilypadError:
        return False


def warm_entrypoint(module_dir: Path, entrypoint: tuple[str, ...]) -> Path | None:
    """The entrypoint file a worker can serve, or None: a ``python FILE.py ...`` entrypoint whose
    file assigns a top-level ``predictor`` (read, never run, here)."""
    if len(entrypoint) < 2 or entrypoint[0] != "python" or not entrypoint[1].endswith(".py"):
        return None
    path = module_dir / entrypoint[1]
    try:
        tree = ast.parse(path.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == PREDICTOR for t in targets):
            return path
    return None


class WorkerUnavailable(Exception):
    """The worker refused to serve (no predictor) or its setup failed: run the job cold."""


class SetupTimedOut(WorkerUnavailable):
    """The worker's setup did not end within the time left to the job that waits for it: the
    job timed out (a cold run, which would load the same, has no time left either)."""


class Handle(Protocol):
    """What runs a worker: its process (:class:`ProcessHandle`) or its container (the docker
    executor's)."""

    def alive(self) -> bool: ...

    def kill(self) -> None:
        """Stop it for good, with every process it started."""

    def wait(self, timeout: float | None = None) -> int | None:
        """Its exit code once it has ended (a signal's as its negative), or None at ``timeout``."""

    def memory(self) -> int:
        """Bytes its processes hold in memory now."""

    def close(self) -> None:
        """Remove what is left of it once it has ended (a container)."""

    def log_tail(self) -> str:
        """The last line of what the worker itself said (its setup, its own failure)."""


class Launch(Protocol):
    """How to start a worker, and its root, whose ``outputs``, ``inputs`` and ``tmp`` folders it
    sees as the job's."""

    @property
    def root(self) -> Path: ...

    def open(self, deadline: float) -> tuple[Handle, socket.socket]:
        """Start the worker; return it and the provider's end of its socket, by ``deadline``.

        Raises:
            WorkerUnavailable: it could not be started.
        """
        ...


@dataclass(frozen=True)
class ProcessLaunch:
    """A worker that is a process: its command, environment and working directory; the socket
    is its stdin."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    root: Path

    def open(self, deadline: float) -> tuple[Handle, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with open(self.root / "worker.log", "ab") as worker_log:
                proc = subprocess.Popen(
                    self.argv,
                    cwd=self.cwd,
                    env=self.env,
                    stdin=theirs.fileno(),
                    stdout=subprocess.DEVNULL,
                    stderr=worker_log,
                    start_new_session=True,
                )
        except OSError as exc:
            ours.close()
            raise WorkerUnavailable(f"could not start {self.argv[0]}: {exc}") from None
        finally:
            theirs.close()
        return ProcessHandle(proc, self.root / "worker.log"), ours


@dataclass(frozen=True)
class ProcessHandle:
    """A worker process (the leader of its own session)."""

    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def memory(self) -> int:
        return session_rss(self.proc.pid) if self.alive() else 0

    def close(self) -> None:
        pass

    def log_tail(self) -> str:
        try:
            lines = self.log.read_text("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""


@dataclass(frozen=True)
class Served:
    """How a job on a worker ended.

    Attributes:
        exit_code: The job's exit code (the worker's own, as a signal's negative, if it died).
        stopped: The status the watchdog stopped it for, if it did.
        worker_failed: The worker died or hung: it is gone, and a job it had served before may
            be retried on a fresh one.
    """

    exit_code: int
    stopped: JobStatus | None
    worker_failed: bool


@dataclass(eq=False)
class Worker:
    """One warm worker and the folders it sees."""

    key: WorkerKey
    launch: Launch
    handle: Handle
    sock: socket.socket
    jobs_served: int = 0
    busy: bool = True
    last_used: float = field(default_factory=time.monotonic)
    #: The mount points bubblewrap made in the worker's ``/tmp`` for what is bound below it (a
    #: venv or checkout that lives under ``/tmp``): its folders and empty files once it was
    #: ready. Emptying the scratch keeps them: removing a mount point from outside unmounts it
    #: inside, and the next job's imports from that venv would fail.
    skeleton: frozenset[Path] = frozenset()

    @classmethod
    def start(cls, key: WorkerKey, launch: Launch, deadline: float) -> Worker:
        """Start a worker and wait for its setup, until ``deadline`` (``time.monotonic()``).

        Raises:
            SetupTimedOut: its setup was not done by the deadline (it is ended).
            WorkerUnavailable: it refused, failed its setup or died.
        """
        if deadline <= time.monotonic():
            raise SetupTimedOut("no time left to start a worker")
        for name in (OUTPUTS, "inputs", "tmp"):
            (launch.root / name).mkdir(parents=True, exist_ok=True)
        handle, sock = launch.open(deadline)
        worker = cls(key, launch, handle, sock)
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            message, _ = protocol.receive(sock)
        except TimeoutError:
            worker.stop()
            raise SetupTimedOut("its setup took longer than the job's time left") from None
        except (OSError, protocol.ProtocolError) as exc:
            message = protocol.SetupFailed(f"no answer ({exc})")
        if not isinstance(message, protocol.Ready):
            worker.stop()
            reason = getattr(message, "reason", None) or getattr(message, "message", "it exited")
            raise WorkerUnavailable(f"{reason}; {worker.handle.log_tail()}".rstrip("; "))
        worker.skeleton = _mount_points(launch.root / "tmp")
        return worker

    def serve(self, job: Job, env: dict[str, str], limit: int, timeout_s: float) -> Served:
        """Run ``job`` with ``env`` on this worker for at most ``timeout_s`` (the time left to
        it); leave its stdout, stderr and outputs in ``job.output_dir`` (the exit code is the
        caller's to write)."""
        root, out = self.launch.root, job.output_dir
        _stage_inputs(job, root / "inputs")
        read, write = os.pipe()
        sink = LogSink(out / STDERR, job.on_stderr)
        reader = pump(iter(lambda: os.read(read, 65536), b""), sink)
        with open(out / STDOUT, "wb") as stdout:
            try:
                protocol.send(self.sock, protocol.RunJob(env), [stdout.fileno(), write])
                sent = True
            except OSError:
                sent = False
            finally:
                os.close(write)
        answer: list[protocol.Message | None] = []

        def wait(seconds: float) -> bool:
            if not sent:
                return True
            self.sock.settimeout(seconds)
            try:
                message, fds = protocol.receive(self.sock)
            except TimeoutError:
                return False
            except (OSError, protocol.ProtocolError):
                message, fds = None, []
            for fd in fds:
                os.close(fd)
            answer.append(message)
            return True

        try:
            stopped = watch(
                wait,
                self.kill,
                output_dir=root,
                logs=(out / STDOUT, sink),
                timeout_s=timeout_s,
                limit=limit,
            )
        finally:
            if stopped is not None or not answer or not isinstance(answer[0], protocol.JobDone):
                self.kill()  # it ends with its job: closes the job's stderr too
            reader.join(timeout=5)
            os.close(read)
            sink.close()
            _move_outputs(root / OUTPUTS, out / OUTPUTS)
            _empty(root / "tmp", self.skeleton)
            _empty(root / "inputs")
        self.jobs_served += 1
        done = answer[0] if answer else None
        if stopped is None and isinstance(done, protocol.JobDone):
            return Served(done.exit_code, None, worker_failed=False)
        code = self.handle.wait()
        assert code is not None  # no timeout: it was killed, or it died
        return Served(code, stopped, worker_failed=stopped is not JobStatus.OUTPUT_LIMIT)

    def alive(self) -> bool:
        return self.handle.alive()

    def memory(self) -> int:
        """Bytes its processes hold in memory now."""
        return self.handle.memory() if self.alive() else 0

    def kill(self) -> None:
        self.handle.kill()

    def stop(self) -> None:
        """End the worker and remove its folders."""
        self.sock.close()  # it exits on its own at the end of the socket
        if self.handle.wait(timeout=5) is None:
            self.kill()
            self.handle.wait()
        self.handle.close()
        shutil.rmtree(self.launch.root, ignore_errors=True)


def run_warm(
    pool: WarmPool,
    job: Job,
    key: WorkerKey,
    launch: Callable[[], Launch],
    env: Callable[[Worker], dict[str, str]],
    *,
    kind: ExecutorKind,
    limit: int,
    notes: tuple[str, ...],
) -> ExecutionResult:
    """Run ``job`` on a warm worker of its module version (``launch`` starts one; ``env`` is
    the job's environment on a worker), within its timeout in all: a worker's setup counts
    against it, and a reused worker that dies is replaced and the job run again on a fresh one
    in the time left (see the module's docstring).

    Raises:
        WorkerUnavailable: no worker can serve it (all busy, or the module is one-shot).
    """
    started = time.monotonic()
    deadline = started + job.spec.timeout_s
    while True:
        try:
            worker = pool.acquire(key, launch, deadline)
        except SetupTimedOut:
            out = prepare_output_dir(job.output_dir)  # the layout of a job that wrote nothing
            (out / STDOUT).touch()
            (out / STDERR).touch()
            served = Served(EXIT_TIMEOUT, JobStatus.TIMED_OUT, worker_failed=False)
            break
        reused = worker.jobs_served > 0
        served = worker.serve(job, env(worker), limit, deadline - time.monotonic())
        if served.stopped is None and not served.worker_failed:
            pool.release(worker)
        else:
            pool.discard(worker, served.stopped.value if served.stopped else "died")
        if served.worker_failed and served.stopped is None and reused:
            log.warning("a warm worker of %s died; the job runs again", job.spec.module)
            prepare_output_dir(job.output_dir)
            continue
        break
    return conclude(
        job,
        kind,
        exit_code=served.exit_code,
        stopped=served.stopped,
        duration_ms=round((time.monotonic() - started) * 1000),
        limit=limit,
        notes=notes,
    )


def _stage_inputs(job: Job, inputs: Path) -> None:
    """Copy the job's input files under ``inputs`` at their mounts' paths below ``/inputs``."""
    for item in job.inputs:
        relative = PurePosixPath(item.mount).relative_to(SANDBOX_INPUTS)
        target = inputs.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.source, target, follow_symlinks=False)
        target.chmod(0o444)


def _move_outputs(source: Path, target: Path) -> None:
    """Move what the job wrote into its result (links moved as links, never followed)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        shutil.move(entry, target / entry.name)


def _mount_points(folder: Path) -> frozenset[Path]:
    """The folders and empty files under ``folder`` (what bubblewrap makes to mount on)."""
    return frozenset(
        p
        for p in folder.rglob("*")
        if not p.is_symlink() and (p.is_dir() or (p.is_file() and p.stat().st_size == 0))
    )


def _empty(folder: Path, keep: frozenset[Path] = frozenset()) -> None:
    """Remove what ``folder`` holds but the mount points in ``keep``: their folders are emptied
    of everything else, and a kept file a job wrote into is emptied (a mount point's stays
    empty on this side)."""
    for entry in folder.iterdir():
        if entry in keep and not entry.is_symlink():
            if entry.is_dir():
                _empty(entry, keep)
            elif entry.is_file() and entry.stat().st_size:
                entry.write_bytes(b"")
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


class WarmPool:
    """The warm workers of one executor: at most ``config.size``, each ended after
    ``config.idle_s`` idle.

    Args:
        config: Its size and idle time.
        metrics: The provider's counters for warm hits, loads and evictions (settable later).
    """

    def __init__(self, config: WarmConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self._workers: list[Worker] = []
        self._one_shot: set[WorkerKey] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="warm-reaper", daemon=True)
        self._reaper.start()

    def describe(self) -> str:
        """What an executor's description says of its warm workers."""
        return (
            f"up to {self.config.size} warm workers, each ended after {self.config.idle_s:g} s idle"
        )

    def one_shot(self, key: WorkerKey) -> bool:
        """Whether ``key``'s module refused to be served warm (or its setup failed) before."""
        return key in self._one_shot

    def acquire(self, key: WorkerKey, launch: Callable[[], Launch], deadline: float) -> Worker:
        """A worker for ``key``, marked busy: an idle warm one, else a fresh one set up by
        ``deadline`` (the job's: ``time.monotonic()``).

        Raises:
            SetupTimedOut: a fresh worker was not set up by the deadline.
            WorkerUnavailable: every place in the pool is busy, or a fresh worker could not be
                set up (then the module is remembered as one-shot).
        """
        with self._lock:
            idle = [w for w in self._workers if w.key == key and not w.busy and w.alive()]
            if idle:
                worker = max(idle, key=lambda w: w.last_used)
                worker.busy = True
                self._count("hit")
                return worker
            if len(self._workers) >= self.config.size:
                spare = [w for w in self._workers if not w.busy]
                if not spare:
                    raise WorkerUnavailable("every warm worker is busy")
                self._evict(min(spare, key=lambda w: w.last_used), "count")
            self._fit_memory()
            placeholder = _Reserved(key)
            self._workers.append(placeholder)  # type: ignore[arg-type]
        try:
            worker = Worker.start(key, launch(), deadline)
        except SetupTimedOut:
            raise  # the job's time ran out, not the module's chance to be served warm
        except WorkerUnavailable:
            self._one_shot.add(key)
            raise
        finally:
            with self._lock:
                self._workers.remove(placeholder)  # type: ignore[arg-type]
        with self._lock:
            self._workers.append(worker)
            self._count("load")
        return worker

    def release(self, worker: Worker) -> None:
        """The job is done and the worker healthy: keep it for the next job, unless the
        workers are over their memory budget (then the least recently used idle ones end)."""
        with self._lock:
            worker.busy, worker.last_used = False, time.monotonic()
            self._fit_memory()

    def memory(self) -> int:
        """Bytes the workers hold in memory now."""
        with self._lock:
            return sum(w.memory() for w in self._workers if isinstance(w, Worker))

    def _fit_memory(self) -> None:
        """End idle workers, least recently used first, while all are over the budget."""
        budget = self.config.memory_budget
        held = {w: w.memory() for w in self._workers if isinstance(w, Worker)}
        total = sum(held.values())
        for worker in sorted(held, key=lambda w: w.last_used):
            if total <= budget:
                break
            if not worker.busy:
                log.info(
                    "warm workers hold %d MiB, over their %d MiB budget",
                    total >> 20,
                    budget >> 20,
                )
                self._evict(worker, "memory")
                total -= held[worker]
        if self.metrics is not None:
            self.metrics.warm_memory.set(total)

    def discard(self, worker: Worker, reason: str) -> None:
        """End ``worker`` (it failed, or its job was stopped)."""
        with self._lock:
            if worker in self._workers:
                self._evict(worker, reason)

    def workers(self) -> int:
        with self._lock:
            return sum(isinstance(w, Worker) for w in self._workers)

    def close(self) -> None:
        """End every worker (a pool shared by executors may be closed by each)."""
        self._closed.set()
        with self._lock:
            workers, self._workers = list(self._workers), []
        for worker in workers:
            if isinstance(worker, Worker):
                worker.stop()

    def _evict(self, worker: Worker, reason: str) -> None:
        self._workers.remove(worker)
        if self.metrics is not None:
            self.metrics.warm_evictions.labels(reason).inc()
            self.metrics.warm_workers.set(self._live())
        log.info("warm worker of %s ended (%s)", " ".join(worker.key.entrypoint), reason)
        threading.Thread(target=worker.stop, name="warm-stop", daemon=True).start()

    def _count(self, what: str) -> None:
        if self.metrics is None:
            return
        (self.metrics.warm_hits if what == "hit" else self.metrics.warm_loads).inc()
        self.metrics.warm_workers.set(self._live())

    def _live(self) -> int:
        return sum(isinstance(w, Worker) for w in self._workers)

    def _reap(self) -> None:
        period = max(0.05, min(self.config.idle_s / 4, 5.0))
        while not self._closed.wait(period):
            now = time.monotonic()
            with self._lock:
                for worker in list(self._workers):
                    if not isinstance(worker, Worker) or worker.busy:
                        continue
                    if not worker.alive():
                        self._evict(worker, "died")
                    elif now - worker.last_used >= self.config.idle_s:
                        self._evict(worker, "idle")


def warm_pool(warm: WarmConfig | WarmPool | None) -> WarmPool | None:
    """An executor's pool: the one given (shared by a provider's executors), a new one for a
    config with workers, else None."""
    if isinstance(warm, WarmPool):
        return warm
    return WarmPool(warm) if warm is not None and warm.size > 0 else None


@dataclass(eq=False)
class _Reserved:
    """A place in the pool held for a worker that is starting."""

    key: WorkerKey
    busy: bool = True


def worker_root() -> Path:
    """A fresh folder for a worker's ``outputs``, ``inputs``, ``tmp`` and log."""
    return Path(tempfile.mkdtemp(prefix="lilypad-warm-"))
