"""The executor interface and the values that cross it.

An executor runs one rendered job (:class:`Job`) and leaves the result layout in the job's output
folder (see :mod:`resource_provider.executors.layout`). Every backend follows the same rules for the
environment, the timeout and the output cap, so a module's output bytes never depend on which
backend ran it.
"""

from __future__ import annotations

import logging
import shlex
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Self

from lilypad.config import get_settings
from lilypad.modules import JobSpec, ResolvedModule

if TYPE_CHECKING:
    from resource_provider.metrics import Metrics

#: ``exitCode`` of a job killed at its module's timeout (as coreutils' ``timeout`` reports it).
EXIT_TIMEOUT = 124
#: ``exitCode`` of a job killed because it wrote more than its module's ``disk_gb``.
EXIT_OUTPUT_LIMIT = 125
#: ``exitCode`` of a job that did not run because an input could not be fetched.
EXIT_INPUT_UNAVAILABLE = 123

#: Where every executor says what it does to a job that a provider should know (unsandboxed...).
log = logging.getLogger("lilypad.executor")

#: Where the job sees its outputs, scratch and tiny-weights cache inside a sandbox or container.
SANDBOX_OUTPUTS = "/outputs"
SANDBOX_SCRATCH = "/tmp"
SANDBOX_TINY_WEIGHTS = "/cache/tiny-weights"
SANDBOX_MODULE = "/module"
#: Where a job's file inputs are mounted, read-only, each at its own path below (see JobInput).
SANDBOX_INPUTS = "/inputs"
#: The user a job runs as inside a container or sandbox ("nobody").
SANDBOX_UID = 65534
#: The host name a job sees, fixed so nothing about the host leaks into its output.
SANDBOX_HOSTNAME = "lilypad"

#: The local base image of modules that build offline (see images.py).
BASE_IMAGE = "lilypad/busybox:local"

#: Variables the runtime adds for determinism and sane Python behaviour; the manifest's validation
#: keeps tunables and fixed env away from these names.
DETERMINISM_ENV = {
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    "PYTHONHASHSEED": "0",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}


class ExecutorKind(StrEnum):
    DOCKER = "docker"
    PROCESS = "process"


class Weights(StrEnum):
    """Which weights a module loads: the baked-in real ones, or generated tiny ones (tests)."""

    REAL = "real"
    TINY = "tiny"


class JobStatus(StrEnum):
    """How a job ended. Every status is final; only ``SUCCEEDED`` is a usable result."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    OUTPUT_LIMIT = "output_limit"

    def is_terminal(self) -> bool:
        return True


@dataclass(frozen=True)
class JobInput:
    """A host file that the job sees, read-only, at ``mount``.

    Both executors bind the file itself (never its folder), so the job sees nothing else of the
    folder it lies in. The executor checks every input before it runs anything (see
    :func:`~resource_provider.executors.inputs.check_inputs`).

    Attributes:
        source: The file on the host: a regular file, not a symlink.
        mount: Where the job sees it: an absolute, normalised path strictly under ``/inputs/``
            (``/inputs/Image/photo.png``), which the module's env names.
    """

    source: Path
    mount: str


@dataclass(frozen=True)
class Job:
    """One job to run: a rendered spec, the module's folder and where the result goes.

    Attributes:
        spec: The rendered job spec (image, entrypoint, env, machine needs, timeout).
        module_dir: The module's folder (code, Dockerfile); the process executor runs there.
        output_dir: The result folder; it must be empty, absent or a previous result.
        weights: Real (baked into the image) or tiny (generated, for tests) weights.
        on_stderr: Called with each line the module writes to stderr, as it comes.
        tiny_models: The tiny models the module loads (its manifest's ``tiny_models``): with
            tiny weights, the executor has them generated before the job, which only reads them.
        inputs: The files the job reads, each bound read-only at its mount path.
    """

    spec: JobSpec
    module_dir: Path
    output_dir: Path
    weights: Weights = Weights.REAL
    on_stderr: Callable[[str], None] | None = field(default=None, compare=False, repr=False)
    tiny_models: tuple[str, ...] = ()
    inputs: tuple[JobInput, ...] = ()

    @classmethod
    def of(
        cls,
        module: ResolvedModule,
        spec: JobSpec,
        output_dir: Path,
        weights: Weights = Weights.REAL,
        on_stderr: Callable[[str], None] | None = None,
        inputs: Iterable[JobInput] = (),
    ) -> Job:
        return cls(
            spec,
            module.directory,
            output_dir,
            weights,
            on_stderr,
            module.spec.tiny_models,
            tuple(inputs),
        )

    @property
    def needs_tiny_weights(self) -> tuple[str, ...]:
        """The tiny models to generate before this job: none unless it runs on tiny weights."""
        return self.tiny_models if self.weights is Weights.TINY else ()


@dataclass(frozen=True)
class ExecutionResult:
    """What happened to a job. The files are in ``output_dir`` (``outputs/``, ``stdout``...).

    Attributes:
        output_dir: The result folder.
        status: How the job ended.
        exit_code: The value written to ``exitCode``: the module's own exit code, or
            :data:`EXIT_TIMEOUT` / :data:`EXIT_OUTPUT_LIMIT` when the executor stopped it.
        duration_ms: Wall time from start to exit of the module, in milliseconds.
        executor: The backend that ran it.
        message: One line saying how it ended, for people.
        notes: Remarks about how it ran (not sandboxed, GPUs not available...).
    """

    output_dir: Path
    status: JobStatus
    exit_code: int
    duration_ms: int
    executor: ExecutorKind
    message: str
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is JobStatus.SUCCEEDED


class Executor(ABC):
    """Runs jobs. Backends: :class:`~resource_provider.executors.docker.DockerExecutor` and
    :class:`~resource_provider.executors.process.ProcessExecutor`."""

    kind: ClassVar[ExecutorKind]

    @abstractmethod
    def run(self, job: Job) -> ExecutionResult:
        """Run the job to its end and leave the result layout in ``job.output_dir``.

        A module that fails, hangs or writes too much is a result (see :class:`JobStatus`), not
        an exception.

        Raises:
            OutputDirInUse: the output folder holds something other than a previous result.
            ExecutorError: the job could not be started (image missing, engine gone...), or
                one of its inputs is not a file that can be mounted where it asks; nothing ran.
        """

    @abstractmethod
    def describe(self) -> str:
        """One line for people: the backend and how it isolates jobs."""

    def use_metrics(self, metrics: Metrics) -> None:  # noqa: B027 - most count nothing
        """Count what the backend does on its own (warm workers) in the provider's metrics."""

    def close(self) -> None:  # noqa: B027 - a backend that holds nothing needs no close
        """Release what the executor holds (the docker client's connections)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def output_limit(spec: JobSpec, override: int | None = None) -> int:
    """Most bytes a job may leave (outputs + stdout + stderr): the module's ``disk_gb``."""
    return override if override is not None else spec.output_limit


def tiny_weights_cache(kind: ExecutorKind = ExecutorKind.PROCESS) -> Path:
    """The host folder where generated tiny weights are cached between jobs.

    Jobs only read it (a module could otherwise poison the weights other modules' results are
    made with); the executor has lilypad's generator fill it before a job (see
    :func:`tiny_weights_command`). The process executor's folder is shared by every module: its
    generator is this lilypad. The docker executor keeps one folder per image under its own, as
    the generator there is the image's.
    """
    name = "tiny-weights" if kind is ExecutorKind.PROCESS else f"tiny-weights-{kind.value}"
    return get_settings().cache_dir / name


def tiny_weights_command(models: tuple[str, ...]) -> list[str]:
    """The command that generates the tiny weights of ``models`` into
    ``$LILYPAD_TINY_WEIGHTS_DIR`` (see :mod:`lilypad.ml.tiny`)."""
    return ["python", "-m", "lilypad.ml.tiny", *models]


def tiny_weights_env(*, scratch: str, tiny_weights: str) -> dict[str, str]:
    """The environment of the tiny-weights generator: the runtime's variables, no module's."""
    return {
        **DETERMINISM_ENV,
        "HOME": scratch,
        "TMPDIR": scratch,
        "LILYPAD_TINY_WEIGHTS_DIR": tiny_weights,
    }


def job_env(
    spec: JobSpec, weights: Weights, *, outputs: str, scratch: str, tiny_weights: str
) -> dict[str, str]:
    """The job's environment: the rendered env plus the runtime's own variables.

    Nothing from the provider's environment leaks in. ``PATH`` is left to the image in docker
    and set by the process executor.
    """
    return {
        **spec.env,
        **DETERMINISM_ENV,
        "HOME": scratch,
        "HOSTNAME": SANDBOX_HOSTNAME,  # docker sets it; the process executor says the same
        "TMPDIR": scratch,
        "LILYPAD_OUTPUTS_DIR": outputs,
        "LILYPAD_WEIGHTS": weights.value,
        "LILYPAD_TINY_WEIGHTS_DIR": tiny_weights,
    }


def command(spec: JobSpec) -> list[str]:
    """The entrypoint to run on the host: ``python`` means the Python that runs lilypad."""
    argv = list(spec.entrypoint)
    if argv[0] == "python":
        argv[0] = sys.executable
    return argv


def builds_offline(module_dir: Path) -> bool:
    """Whether a module's Dockerfile builds on the local busybox base (no registry needed)."""
    try:
        text = (module_dir / "Dockerfile").read_text(encoding="utf-8")
    except OSError:
        return False
    return any(line.split()[:2] == ["FROM", BASE_IMAGE] for line in text.splitlines())


def build_command(spec: JobSpec, module_dir: Path) -> str:
    """The command that builds a module's image, for messages about a missing image."""
    if builds_offline(module_dir):
        return f"lilypad module build {shlex.quote(spec.module)}"
    return f"docker build -t {spec.image} {shlex.quote(str(module_dir))}"
