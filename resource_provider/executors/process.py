"""The process executor: a module's entrypoint as a local subprocess, sandboxed with bubblewrap.

With ``bwrap`` the job sees a read-only view of the system's programs and libraries and of
Python, its module at ``/module`` (read-only, the working directory), ``/outputs`` and ``/tmp``
writable, no network, its own PID/IPC/UTS namespaces, and runs as ``nobody``: the same paths
as in the docker executor. Where bubblewrap is missing or cannot create namespaces, the job runs
unsandboxed in its module's folder with ``LILYPAD_OUTPUTS_DIR`` pointing at ``DIR/outputs``, and
the result says why.
"""

from __future__ import annotations

import contextlib
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

import lilypad
from lilypad.errors import ExecutorError, ExecutorUnavailable
from resource_provider.executors.base import (
    SANDBOX_HOSTNAME,
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
    output_limit,
    tiny_weights_cache,
)
from resource_provider.executors.layout import OUTPUTS, STDERR, STDOUT, prepare_output_dir
from resource_provider.executors.supervise import LogSink, conclude, pump, watch

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
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/fonts",
)
_PATH = "/usr/local/bin:/usr/bin:/bin"


class Sandbox(StrEnum):
    """Whether the process executor sandboxes jobs with bubblewrap."""

    AUTO = "auto"  # bwrap where it works, else run unsandboxed and say why
    BWRAP = "bwrap"  # bwrap or refuse to run
    NONE = "none"  # never (tests of the fallback, hosts that sandbox otherwise)


class ProcessExecutor(Executor):
    """Runs a module's entrypoint as a subprocess of this one.

    Args:
        sandbox: Whether to use bubblewrap (see :class:`Sandbox`).
        output_limit_bytes: Overrides the cap on what a job writes (default: its ``disk_gb``).
    """

    kind = ExecutorKind.PROCESS

    def __init__(
        self, *, sandbox: Sandbox = Sandbox.AUTO, output_limit_bytes: int | None = None
    ) -> None:
        self._limit = output_limit_bytes
        self.sandboxed = False
        if sandbox is Sandbox.NONE:
            self.fallback_reason: str | None = "the sandbox is turned off by configuration"
        else:
            self.fallback_reason = bwrap_problem()
            if self.fallback_reason and sandbox is Sandbox.BWRAP:
                raise ExecutorUnavailable(f"bubblewrap is required but {self.fallback_reason}")
            self.sandboxed = self.fallback_reason is None

    def describe(self) -> str:
        if self.sandboxed:
            return "process (bubblewrap sandbox: no network, read-only system, runs as nobody)"
        return f"process (NOT sandboxed: {self.fallback_reason})"

    def run(self, job: Job) -> ExecutionResult:
        out = prepare_output_dir(job.output_dir)
        job = Job(job.spec, job.module_dir.absolute(), out, job.weights, job.on_stderr)
        tiny = tiny_weights_cache()
        tiny.mkdir(parents=True, exist_ok=True)
        notes = () if self.sandboxed else (f"not sandboxed: {self.fallback_reason}",)
        with tempfile.TemporaryDirectory(prefix="lilypad-job-") as scratch:
            if self.sandboxed:
                argv, env, cwd = self._sandboxed(job, Path(scratch), tiny)
            else:
                env = job_env(
                    job.spec,
                    job.weights,
                    outputs=str(out / OUTPUTS),
                    scratch=scratch,
                    tiny_weights=str(tiny),
                )
                argv, cwd = command(job.spec), job.module_dir
                env["PATH"] = f"{Path(sys.executable).parent}:{_PATH}"
            return self._execute(job, argv, env, cwd, notes)

    def _sandboxed(
        self, job: Job, scratch: Path, tiny: Path
    ) -> tuple[list[str], dict[str, str], Path]:
        env = job_env(
            job.spec,
            job.weights,
            outputs=SANDBOX_OUTPUTS,
            scratch=SANDBOX_SCRATCH,
            tiny_weights=SANDBOX_TINY_WEIGHTS,
        )
        env["PATH"] = f"{Path(sys.executable).parent}:{_PATH}"
        argv = [
            *bwrap_base_args(scratch),
            *("--ro-bind", str(job.module_dir), SANDBOX_MODULE),
            *("--bind", str(job.output_dir / OUTPUTS), SANDBOX_OUTPUTS),
            *("--bind", str(tiny), SANDBOX_TINY_WEIGHTS),
            *_gpu_args(job),
            *("--remount-ro", "/"),  # the sandbox's own root: nothing new can appear there
            *("--chdir", SANDBOX_MODULE),
            "--",
            *command(job.spec),
        ]
        return argv, env, scratch

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
        *("--ro-bind-try", "/sys", "/sys"),
    ]
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in _ETC_FILES:
        args += ["--ro-bind-try", path, path]
    if scratch is not None:
        args += ["--bind", str(scratch), SANDBOX_SCRATCH]
    for path in _python_dirs():
        args += ["--ro-bind", path, path]
    return args


def _python_dirs() -> list[str]:
    """The folders this Python (and its venv) lives in, so ``python`` entrypoints run inside.

    The ``lilypad`` package is bound at its own path too: module code imports ``lilypad.ml``,
    and in an editable install it lives in the checkout, outside the venv.
    """
    dirs = {
        sys.prefix,
        sys.base_prefix,
        str(Path(sys.executable).resolve().parent.parent),
        str(Path(lilypad.__file__).resolve().parent),
    }
    return sorted(d for d in dirs if not d.startswith(_SYSTEM_DIRS) and os.path.isdir(d))


def _gpu_args(job: Job) -> list[str]:
    if job.spec.machine.gpus == 0:
        return []
    return [
        arg
        for dev in sorted(Path("/dev").glob("nvidia*"))
        for arg in ("--dev-bind", str(dev), str(dev))
    ]


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
