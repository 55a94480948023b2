"""The process executor: a module's entrypoint as a local subprocess, sandboxed with bubblewrap.

With ``bwrap`` the job sees a read-only view of the system's programs and libraries and of
Python, its module at ``/module`` (read-only, the working directory), ``/outputs`` and ``/tmp``
writable, the tiny-weights cache and each input file (at its path under ``/inputs/``) read-only,
no network, its own PID/IPC/UTS namespaces (nothing of the provider's processes, and every
process of the job ends with it), and runs as ``nobody``: the same paths as in the docker
executor. Nothing of the provider's own folders (data dir, profiles, cache, home) is visible,
even where a bound Python folder holds one.

Where bubblewrap is missing or cannot create namespaces, the executor refuses to run
(:class:`~lilypad.errors.ExecutorUnavailable`). Only :attr:`Sandbox.NONE`, which the operator
asks for with ``--unsafe-no-sandbox``, runs jobs unsandboxed: as the provider's user, able to
read its keys, reach its services and outlive the job, with a warning logged for every job.
Without a mount namespace there is no ``/inputs/``: such a job reads each input at its host path,
which every variable of its env that names the input's mount holds instead (a module that only
opens the path its env gives makes the same result either way).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import lilypad
from lilypad.config import get_settings
from lilypad.errors import ExecutorError, ExecutorUnavailable
from lilypad.ml import protocol
from lilypad.modules.template import is_template_module
from resource_provider.executors.base import (
    SANDBOX_HOSTNAME,
    SANDBOX_INPUTS,
    SANDBOX_MODULE,
    SANDBOX_OUTPUTS,
    SANDBOX_SCRATCH,
    SANDBOX_TINY_WEIGHTS,
    SANDBOX_UID,
    ExecutionResult,
    Executor,
    ExecutorKind,
    Job,
    command,
    job_env,
    log,
    output_limit,
    tiny_weights_cache,
    tiny_weights_command,
    tiny_weights_env,
)
from resource_provider.executors.inputs import check_inputs, host_paths, readable_inputs
from resource_provider.executors.layout import OUTPUTS, STDERR, STDOUT, prepare_output_dir
from resource_provider.executors.supervise import LogSink, conclude, pump, watch
from resource_provider.executors.warm import (
    ProcessLaunch,
    WarmConfig,
    WarmPool,
    WorkerKey,
    WorkerUnavailable,
    run_warm,
    warm_key,
    warm_pool,
    worker_root,
)

if TYPE_CHECKING:
    from resource_provider.metrics import Metrics

#: System folders a job may read: programs, libraries, and the few /etc files they need.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = (
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/localtime",
    "/etc/ssl/certs",  # NOTE: not /etc/ssl, whose private/ holds the host's TLS keys
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates",
    "/etc/fonts",
)
#: What of /sys a CPU job reads (CPU topology and caches, NUMA nodes, its cgroup limits); a GPU
#: job gets all of /sys, which the NVIDIA libraries read the PCI topology from.
_SYS_DIRS = ("/sys/devices/system/cpu", "/sys/devices/system/node", "/sys/fs/cgroup")
_PATH = "/usr/local/bin:/usr/bin:/bin"

#: How to get a working sandbox, for the refusal's message.
FIX = (
    "install it (apt-get install bubblewrap), use the docker executor (--executor docker, with "
    "a Docker Engine), or, on a machine you trust every module on, run jobs unsandboxed with "
    "--unsafe-no-sandbox"
)
UNSANDBOXED = (
    "NOT sandboxed (--unsafe-no-sandbox): the module runs as this user, can read its keys and "
    "files, reach its network and leave processes behind"
)


class Sandbox(StrEnum):
    """Whether the process executor sandboxes jobs with bubblewrap."""

    BWRAP = "bwrap"  # bwrap, or refuse to run (the default)
    NONE = "none"  # UNSAFE: the operator asked for it with --unsafe-no-sandbox


class ProcessExecutor(Executor):
    """Runs a module's entrypoint as a subprocess of this one.

    Args:
        sandbox: Whether to use bubblewrap (see :class:`Sandbox`).
        output_limit_bytes: Overrides the cap on what a job writes (default: its ``disk_gb``).

    Raises:
        ExecutorUnavailable: bubblewrap is asked for and cannot sandbox jobs here.
    """

    kind = ExecutorKind.PROCESS

    def __init__(
        self,
        *,
        sandbox: Sandbox = Sandbox.BWRAP,
        output_limit_bytes: int | None = None,
        warm: WarmConfig | WarmPool | None = None,
    ) -> None:
        self._limit = output_limit_bytes
        self.sandboxed = sandbox is Sandbox.BWRAP
        self.warm = warm_pool(warm)
        if self.sandboxed:
            problem = bwrap_problem()
            if problem is not None:
                raise ExecutorUnavailable(
                    f"bubblewrap cannot sandbox jobs here: {problem}", hint=FIX
                )

    def describe(self) -> str:
        warm = "" if self.warm is None else f"; {self.warm.describe()}"
        if self.sandboxed:
            return (
                f"process (bubblewrap sandbox: no network, read-only system, runs as nobody{warm})"
            )
        return f"process ({UNSANDBOXED}{warm})"

    def use_metrics(self, metrics: Metrics) -> None:
        if self.warm is not None:
            self.warm.metrics = metrics

    def close(self) -> None:
        if self.warm is not None:
            self.warm.close()

    def run(self, job: Job) -> ExecutionResult:
        if is_template_module(job.module_dir):
            # its entrypoint is a path inside its image: on the host it means nothing
            raise ExecutorUnavailable(
                f"{job.spec.module} is a module in Lilypad's format (a Docker image and a "
                "template): the process executor cannot run it",
                hint=f"run it with the docker executor (--executor-for {job.spec.module}=docker)",
            )
        inputs = check_inputs(job.inputs)
        out = prepare_output_dir(job.output_dir)
        job = dataclasses.replace(
            job, module_dir=job.module_dir.absolute(), output_dir=out, inputs=inputs
        )
        tiny = tiny_weights_cache()
        tiny.mkdir(parents=True, exist_ok=True)
        notes: tuple[str, ...] = ()
        if not self.sandboxed:
            log.warning("%s runs %s", job.spec.module, UNSANDBOXED)
            notes = (UNSANDBOXED,)
        key = warm_key(self.warm, job)
        if key is not None:
            try:
                return self._run_warm(job, key, tiny, notes)
            except WorkerUnavailable as exc:
                log.info("%s runs cold: %s", job.spec.module, exc)
        if job.needs_tiny_weights:
            self._make_tiny_weights(job, tiny)
        with tempfile.TemporaryDirectory(prefix="lilypad-job-") as scratch:
            if not self.sandboxed:
                argv, env, cwd = self._unsandboxed(job, scratch, tiny)
                return self._execute(job, argv, env, cwd, notes)
            # The job's processes have this user's uid and gid, without its privileges.
            with readable_inputs(job.inputs, uid=os.geteuid(), gid=os.getegid()) as readable:
                staged = dataclasses.replace(job, inputs=readable)
                argv, env, cwd = self._sandboxed(staged, Path(scratch), tiny)
                return self._execute(job, argv, env, cwd, notes)

    # ------------------------------------------------------------------- warm workers
    def _run_warm(
        self, job: Job, key: WorkerKey, tiny: Path, notes: tuple[str, ...]
    ) -> ExecutionResult:
        assert self.warm is not None
        return run_warm(
            self.warm,
            job,
            key,
            lambda: self._launch(job, tiny),
            lambda worker: self._warm_env(job, worker.launch.root, tiny),
            kind=self.kind,
            limit=output_limit(job.spec, self._limit),
            notes=notes,
        )

    def _launch(self, job: Job, tiny: Path) -> ProcessLaunch:
        """How to start a worker for ``job``'s module version, after its tiny weights."""
        if job.needs_tiny_weights:
            self._make_tiny_weights(job, tiny)
        root = worker_root()
        entry = [sys.executable, "-m", "lilypad.ml.serve", *job.spec.entrypoint[1:]]
        bare = job.spec.model_copy(update={"env": {}})  # the runtime's variables, no tunables
        # the worker imports lilypad.ml.serve from the lilypad that runs here, bound at its path
        package = str(Path(lilypad.__file__).resolve().parent.parent)
        env = self._warm_env(dataclasses.replace(job, spec=bare, inputs=()), root, tiny)
        env["PYTHONPATH"] = package
        env[protocol.LAUNCH_ENV] = ",".join(sorted(env))
        if not self.sandboxed:
            return ProcessLaunch(entry, env, job.module_dir, root)
        argv = [
            *bwrap_base_args(root / "tmp"),
            *("--ro-bind", str(job.module_dir), SANDBOX_MODULE),
            *("--bind", str(root / OUTPUTS), SANDBOX_OUTPUTS),
            # the running job's input files only, copied in before it and removed after it
            *("--ro-bind", str(root / "inputs"), SANDBOX_INPUTS),
            *("--ro-bind", str(tiny), SANDBOX_TINY_WEIGHTS),
            *_gpu_args(job),
            *("--remount-ro", "/"),
            *("--chdir", SANDBOX_MODULE),
            "--",
            *entry,
        ]
        return ProcessLaunch(argv, env, root / "tmp", root)

    def _warm_env(self, job: Job, root: Path, tiny: Path) -> dict[str, str]:
        """A job's environment on a warm worker: what a cold run of it gets."""
        if self.sandboxed:
            return _sandbox_env(job)
        env = job_env(
            job.spec,
            job.weights,
            outputs=str(root / OUTPUTS),
            scratch=str(root / "tmp"),
            tiny_weights=str(tiny),
        )
        env = host_paths(env, job.inputs)
        env["PATH"] = f"{Path(sys.executable).parent}:{_PATH}"
        return env

    @staticmethod
    def _unsandboxed(job: Job, scratch: str, tiny: Path) -> tuple[list[str], dict[str, str], Path]:
        """The job as a plain subprocess. With no mount namespace, it reads its inputs at their
        host paths: each variable that names an input's mount names its host path instead."""
        env = job_env(
            job.spec,
            job.weights,
            outputs=str(job.output_dir / OUTPUTS),
            scratch=scratch,
            tiny_weights=str(tiny),
        )
        env = host_paths(env, job.inputs)
        env["PATH"] = f"{Path(sys.executable).parent}:{_PATH}"
        return command(job.spec), env, job.module_dir

    def _sandboxed(
        self, job: Job, scratch: Path, tiny: Path
    ) -> tuple[list[str], dict[str, str], Path]:
        env = _sandbox_env(job)
        argv = [
            *bwrap_base_args(scratch),
            *("--ro-bind", str(job.module_dir), SANDBOX_MODULE),
            *("--bind", str(job.output_dir / OUTPUTS), SANDBOX_OUTPUTS),
            # read-only: every module's results are made with these weights
            *("--ro-bind", str(tiny), SANDBOX_TINY_WEIGHTS),
            # an empty /inputs when the job has none, as on a warm worker
            *("--dir", SANDBOX_INPUTS),
            # each input is the file itself (never its folder); bwrap makes the folders above
            *(arg for item in job.inputs for arg in ("--ro-bind", str(item.source), item.mount)),
            *_gpu_args(job),
            *("--remount-ro", "/"),  # the sandbox's own root: nothing new can appear there
            *("--chdir", SANDBOX_MODULE),
            "--",
            *command(job.spec),
        ]
        return argv, env, scratch

    def _make_tiny_weights(self, job: Job, tiny: Path) -> None:
        """Generate the tiny weights the job needs into ``tiny`` with this lilypad (never the
        module's code), in a sandbox of its own where only the cache is writable."""
        models = job.needs_tiny_weights
        generator = [sys.executable, *tiny_weights_command(models)[1:]]
        with tempfile.TemporaryDirectory(prefix="lilypad-tiny-") as scratch:
            if self.sandboxed:
                env = tiny_weights_env(scratch=SANDBOX_SCRATCH, tiny_weights=SANDBOX_TINY_WEIGHTS)
                argv = [
                    *bwrap_base_args(Path(scratch)),
                    *("--bind", str(tiny), SANDBOX_TINY_WEIGHTS),
                    *("--remount-ro", "/", "--chdir", SANDBOX_SCRATCH),
                    "--",
                    *generator,
                ]
            else:
                env, argv = tiny_weights_env(scratch=scratch, tiny_weights=str(tiny)), generator
            env["PATH"] = _PATH
            try:
                done = subprocess.run(
                    argv,
                    cwd=scratch,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=job.spec.timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise ExecutorError(
                    f"generating the tiny weights of {', '.join(models)} for {job.spec.module} "
                    f"took more than its {job.spec.timeout_s} s timeout"
                ) from None
            except OSError as exc:
                raise ExecutorError(f"could not start {argv[0]}: {exc.strerror or exc}") from None
        if done.returncode != 0:
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise ExecutorError(
                f"could not generate the tiny weights of {', '.join(models)} for "
                f"{job.spec.module}: {lines[-1] if lines else f'exit code {done.returncode}'}",
                hint="the process executor generates them with this Python, which needs the "
                "`ml` extra (torch, diffusers, transformers)",
            )

    def _execute(
        self,
        job: Job,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        notes: tuple[str, ...],
    ) -> ExecutionResult:
        out = job.output_dir
        stderr = LogSink(out / STDERR, job.on_stderr)
        started = time.monotonic()
        try:
            with open(out / STDOUT, "wb") as stdout:
                # argv is the manifest's entrypoint, never a shell line with user text in it.
                proc = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # its own process group, killed as a whole
                )
        except OSError as exc:
            stderr.close()
            raise ExecutorError(f"could not start {argv[0]}: {exc.strerror or exc}") from None
        assert proc.stderr is not None
        fd = proc.stderr.fileno()
        reader = pump(iter(lambda: os.read(fd, 65536), b""), stderr)

        def wait(seconds: float) -> bool:
            try:
                proc.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                return False
            return True

        def kill() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        try:
            stopped = watch(
                wait,
                kill,
                output_dir=out,
                logs=(out / STDOUT, stderr),
                timeout_s=job.spec.timeout_s,
                limit=output_limit(job.spec, self._limit),
            )
            code = proc.wait()
            duration_ms = round((time.monotonic() - started) * 1000)
            kill()  # children it left behind in its group must not outlive the job
        finally:
            if proc.poll() is None:
                kill()
                proc.wait()
            reader.join(timeout=5)
            proc.stderr.close()
            stderr.close()
        return conclude(
            job,
            self.kind,
            exit_code=code,
            stopped=stopped,
            duration_ms=duration_ms,
            limit=output_limit(job.spec, self._limit),
            notes=notes,
        )


def _sandbox_env(job: Job) -> dict[str, str]:
    """A sandboxed job's environment, cold or warm: the paths it sees inside, this Python's."""
    env = job_env(
        job.spec,
        job.weights,
        outputs=SANDBOX_OUTPUTS,
        scratch=SANDBOX_SCRATCH,
        tiny_weights=SANDBOX_TINY_WEIGHTS,
    )
    env["PATH"] = f"{Path(sys.executable).parent}:{_PATH}"
    return env


def bwrap_base_args(scratch: Path | None = None) -> list[str]:
    """bubblewrap's arguments for a job: namespaces, user and the read-only system view.

    ``scratch`` becomes the job's ``/tmp``. It is mounted before Python's folders, because a
    venv or checkout that itself lives under ``/tmp`` must stay visible on top of it.
    """
    args = [
        shutil.which("bwrap") or "bwrap",
        "--unshare-all",  # network, PID, IPC, UTS, cgroup namespaces
        "--unshare-user",
        *("--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)),
        *("--hostname", SANDBOX_HOSTNAME),
        "--die-with-parent",
        *("--proc", "/proc", "--dev", "/dev"),
    ]
    for path in _SYS_DIRS:
        args += ["--ro-bind-try", path, path]
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in _ETC_FILES:
        args += ["--ro-bind-try", path, path]
    if scratch is not None:
        args += ["--bind", str(scratch), SANDBOX_SCRATCH]
    bound = _python_dirs()
    for path in bound:
        args += ["--ro-bind", path, path]
    return args + _hide_private(bound)


def _python_dirs() -> list[str]:
    """The folders this Python (and its venv) lives in, so ``python`` entrypoints run inside.

    Only what Python reads: the venv's ``bin``, ``lib`` and ``pyvenv.cfg`` (not the folder
    around them, where a deployment may keep its data and keys), the base installation's ``lib``
    and the executable's folder. The ``lilypad`` package is bound at its own path too: module
    code imports ``lilypad.ml``, and in an editable install it lives in the checkout, outside
    the venv.
    """
    prefixes = {sys.prefix, sys.base_prefix}
    paths = {
        os.path.join(prefix, name)
        for prefix in prefixes
        for name in ("bin", "lib", "lib64", "pyvenv.cfg")
    }
    paths |= {
        str(Path(sys.executable).resolve().parent),
        str(Path(lilypad.__file__).resolve().parent),
    }
    return sorted(p for p in paths if not p.startswith(_SYSTEM_DIRS) and os.path.exists(p))


def _private_dirs() -> list[str]:
    """The provider's own folders: its data dir (keys, results), profiles, cache and home."""
    settings = get_settings()
    # NOTE: as lilypad.network.config_dir() says; that module imports web3 (0.2 s per command)
    config = os.environ.get("LILYPAD_CONFIG_DIR") or str(Path.home() / ".config" / "lilypad")
    return [str(settings.data_dir), str(settings.cache_dir), config, str(Path.home())]


def _hide_private(bound: list[str]) -> list[str]:
    """bwrap arguments that cover with an empty read-only tmpfs each private folder a bound
    folder holds (then bind again the bound folders that lie inside one of those)."""
    hidden: set[str] = set()
    for folder in bound:
        real = os.path.realpath(folder)
        for private in _private_dirs():
            private = os.path.realpath(private)
            if os.path.isdir(private) and _inside(private, real):
                hidden.add(os.path.join(folder, os.path.relpath(private, real)))
    args: list[str] = []
    for path in sorted(hidden):
        args += ["--tmpfs", path, "--remount-ro", path]
    for folder in bound:
        if any(_inside(folder, path) for path in hidden):
            args += ["--ro-bind", folder, folder]
    return args


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` lies strictly inside ``folder``."""
    return path != folder and path.startswith(folder.rstrip("/") + "/")


def _gpu_args(job: Job) -> list[str]:
    devices = sorted(Path("/dev").glob("nvidia*")) if job.spec.machine.gpus else []
    if not devices:
        return []
    args = ["--ro-bind-try", "/sys", "/sys"]
    for dev in devices:
        args += ["--dev-bind", str(dev), str(dev)]
    return args


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot sandbox jobs here, or ``None`` when it can (checked once)."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (Debian package bubblewrap)"
    try:
        done = subprocess.run(
            [*bwrap_base_args(), "--", "/bin/sh", "-c", "exit 0"],
            capture_output=True,
            timeout=20,
            check=False,
            env={"PATH": _PATH},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not be started: {exc}"
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"bwrap cannot create its sandbox here ({reason[-1] if reason else 'no message'})"
    return None
