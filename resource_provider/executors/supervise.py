"""What both executors share while a job runs: log capture and the timeout/output-cap watchdog."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from resource_provider.executors.base import (
    EXIT_OUTPUT_LIMIT,
    EXIT_TIMEOUT,
    ExecutionResult,
    ExecutorKind,
    Job,
    JobStatus,
)
from resource_provider.executors.layout import (
    OUTPUTS,
    STDERR,
    STDOUT,
    discard_outputs,
    finish_layout,
    tree_stats,
)

#: How often the watchdog looks at the clock and at the size of the outputs.
POLL_S = 0.05


class LogSink:
    """Writes a job's stream to its log file, counting bytes and handing out complete lines."""

    def __init__(self, path: Path, on_line: Callable[[str], None] | None = None) -> None:
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._on_line = on_line
        self._partial = b""
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)
        if self._on_line is None:
            return
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._emit(line)
        if len(self._partial) > 4096:  # a progress bar redrawn with \r never ends a line
            self._emit(self._partial)
            self._partial = b""

    def _emit(self, line: bytes) -> None:
        assert self._on_line is not None
        text = line.decode("utf-8", "replace").rsplit("\r", 1)[-1].rstrip()
        if text:
            self._on_line(text)

    def close(self) -> None:
        if self._partial:
            self._emit(self._partial)
            self._partial = b""
        self._file.close()


def pump(stream: Iterable[bytes], sink: LogSink) -> threading.Thread:
    """Copy a byte stream into ``sink`` on a daemon thread, which ends with the stream."""

    def run() -> None:
        for chunk in stream:
            sink.write(chunk)

    thread = threading.Thread(target=run, name="log-pump", daemon=True)
    thread.start()
    return thread


def watch(
    wait: Callable[[float], bool],
    kill: Callable[[], None],
    *,
    output_dir: Path,
    logs: Iterable[LogSink | Path],
    timeout_s: float,
    limit: int,
) -> JobStatus | None:
    """Wait for a job to end; kill it at its timeout or when it writes more than ``limit``.

    Args:
        wait: Waits up to the given seconds; True once the job has ended.
        kill: Stops the job for good (the whole process group, or the container).
        output_dir: The result folder, whose ``outputs/`` is measured.
        logs: The job's stdout/stderr, as sinks or files, counted in the limit.
        timeout_s: The module's timeout.
        limit: Most bytes the job may write in all.

    Returns:
        ``None`` when the job ended by itself, else the status it was killed for.
    """
    logs = tuple(logs)
    deadline = time.monotonic() + timeout_s
    while not wait(POLL_S):
        stats = tree_stats(output_dir / OUTPUTS)
        if stats.size + sum(_size(log) for log in logs) > limit or stats.over():
            kill()
            return JobStatus.OUTPUT_LIMIT
        if time.monotonic() >= deadline:
            kill()
            return JobStatus.TIMED_OUT
    return None


def _size(log: LogSink | Path) -> int:
    if isinstance(log, LogSink):
        return log.size
    try:
        return log.stat().st_size
    except FileNotFoundError:
        return 0


def conclude(
    job: Job,
    kind: ExecutorKind,
    *,
    exit_code: int,
    stopped: JobStatus | None,
    duration_ms: int,
    limit: int,
    notes: tuple[str, ...] = (),
) -> ExecutionResult:
    """Decide the job's status, finish the layout (``exitCode``) and describe the result.

    Args:
        exit_code: The module's exit code; a negative one (killed by signal N) becomes 128+N,
            as a shell and Docker report it.
        stopped: The status the watchdog killed the job for, if it did.
    """
    out = job.output_dir
    if exit_code < 0:
        exit_code = 128 - exit_code
    status = stopped
    stats = tree_stats(out / OUTPUTS)
    written = stats.size + sum(_size(out / name) for name in (STDOUT, STDERR))
    over = stats.over() or (f"more than {_human(limit)} (the module's disk_gb)")
    if status is None and (written > limit or stats.over()):
        status = JobStatus.OUTPUT_LIMIT  # it wrote it all between two looks of the watchdog
    if status is JobStatus.OUTPUT_LIMIT:
        discard_outputs(out)
        exit_code = EXIT_OUTPUT_LIMIT
        message = f"stopped for writing {over}; its outputs were discarded"
    elif status is JobStatus.TIMED_OUT:
        exit_code = EXIT_TIMEOUT
        message = f"killed after running into its {job.spec.timeout_s} s timeout"
    elif exit_code == 0:
        status, message = JobStatus.SUCCEEDED, "exited with code 0"
    else:
        status, message = JobStatus.FAILED, f"exited with code {exit_code}"
    removed = finish_layout(out, exit_code)
    return ExecutionResult(out, status, exit_code, duration_ms, kind, message, (*notes, *removed))


def _human(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} TiB"
