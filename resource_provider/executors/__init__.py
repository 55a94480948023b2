"""Executors: run one job of a module on this machine and leave its result layout.

The public surface:

* :class:`Executor` with ``run(job) -> ExecutionResult``, backed by :class:`DockerExecutor`
  (a Docker Engine) and :class:`ProcessExecutor` (a subprocess sandboxed with bubblewrap, which
  refuses to run without it unless told :attr:`Sandbox.NONE`, ``--unsafe-no-sandbox``);
* :func:`create_executor` picks and builds one from configuration (``docker``, ``process``, or
  automatically: docker when an engine answers, else process), with per-module exceptions
  (:class:`~resource_provider.executors.routing.ByModule`);
* the layout helpers :func:`result_digest` and :func:`~layout.tail` for reading results.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lilypad.errors import ExecutorUnavailable
from resource_provider.executors.base import (
    EXIT_INPUT_UNAVAILABLE,
    EXIT_OUTPUT_LIMIT,
    EXIT_TIMEOUT,
    ExecutionResult,
    Executor,
    ExecutorKind,
    Job,
    JobInput,
    JobStatus,
    Weights,
)
from resource_provider.executors.layout import LAYOUT, result_digest, tail
from resource_provider.executors.process import ProcessExecutor, Sandbox
from resource_provider.executors.routing import ByModule
from resource_provider.executors.warm import WarmConfig, WarmPool, warm_pool

if TYPE_CHECKING:
    from resource_provider.executors.docker import DockerExecutor, engine_problem


def __getattr__(name: str) -> Any:
    # The docker backend is imported when first used: the docker and requests packages cost every
    # CLI command about 0.15 s, and most never touch an engine.
    if name in ("DockerExecutor", "engine_problem"):
        from resource_provider.executors import docker as backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Selection:
    """The executor chosen for this machine and, for people, why."""

    executor: Executor
    reason: str


def create_executor(
    kind: ExecutorKind | None = None,
    *,
    sandbox: Sandbox = Sandbox.BWRAP,
    output_limit_bytes: int | None = None,
    by_module: Mapping[str, ExecutorKind] | None = None,
    warm: WarmConfig | None = None,
) -> Selection:
    """Build the executor of ``kind``; with ``None``, docker when an engine answers, else process.
    ``by_module`` names modules (``name:version``) that run with another backend than that.
    ``sandbox`` is how the process executor isolates jobs: only :attr:`Sandbox.NONE` (the
    operator's ``--unsafe-no-sandbox``) lets it run them without bubblewrap. ``warm`` is how many
    warm workers each executor keeps (``--warm``, ``--warm-idle``; see :mod:`.warm`).

    Raises:
        ExecutorUnavailable: an asked-for backend cannot run here, or the process executor
            would be needed and bubblewrap cannot sandbox jobs here.
    """
    pool = warm_pool(warm)  # one pool for every backend: --warm N is the provider's count
    selection = _create(kind, sandbox=sandbox, output_limit_bytes=output_limit_bytes, warm=pool)
    if not by_module:
        return selection
    default = selection.executor
    backends: dict[ExecutorKind, Executor] = {default.kind: default}
    for other in set(by_module.values()) - {default.kind}:
        backends[other] = _create(
            other, sandbox=sandbox, output_limit_bytes=output_limit_bytes, warm=pool
        ).executor
    routed = {module: backends[k] for module, k in by_module.items() if k is not default.kind}
    return Selection(ByModule(default, routed), selection.reason)


def _create(
    kind: ExecutorKind | None,
    *,
    sandbox: Sandbox,
    output_limit_bytes: int | None,
    warm: WarmPool | None = None,
) -> Selection:
    from resource_provider.executors.docker import DockerExecutor, engine_problem

    if kind is ExecutorKind.PROCESS:
        process = ProcessExecutor(sandbox=sandbox, output_limit_bytes=output_limit_bytes, warm=warm)
        return Selection(process, "asked for")
    if kind is ExecutorKind.DOCKER:
        docker_executor = DockerExecutor(output_limit_bytes=output_limit_bytes, warm=warm)
        return Selection(docker_executor, "asked for")
    problem = engine_problem()
    if problem is None:
        docker_executor = DockerExecutor(output_limit_bytes=output_limit_bytes, warm=warm)
        return Selection(docker_executor, "a Docker Engine answers")
    try:
        process = ProcessExecutor(sandbox=sandbox, output_limit_bytes=output_limit_bytes, warm=warm)
    except ExecutorUnavailable as exc:
        raise ExecutorUnavailable(f"{problem}, and {exc.message}", hint=exc.hint) from None
    return Selection(process, problem)


__all__ = [
    "EXIT_INPUT_UNAVAILABLE",
    "EXIT_OUTPUT_LIMIT",
    "EXIT_TIMEOUT",
    "LAYOUT",
    "ByModule",
    "DockerExecutor",
    "ExecutionResult",
    "Executor",
    "ExecutorKind",
    "Job",
    "JobInput",
    "JobStatus",
    "ProcessExecutor",
    "Sandbox",
    "Selection",
    "WarmConfig",
    "Weights",
    "create_executor",
    "engine_problem",
    "result_digest",
    "tail",
]
