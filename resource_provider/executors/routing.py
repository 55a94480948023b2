"""One executor per module: a provider whose default backend is docker can still run a module
with the process executor (``--executor-for sdxl:v0.9-lilypad1=process``).

A dev network needs this where an engine answers but a module's image cannot be built: the ML
modules' images start from a CUDA base that needs a registry, while their tiny-weights runs work
in the process executor. Both backends leave the same result layout, so the CID does not depend on
which one ran the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from resource_provider.executors.base import ExecutionResult, Executor, Job

if TYPE_CHECKING:
    from resource_provider.metrics import Metrics


class ByModule(Executor):
    """Runs each job with the executor named for its module (``name:version``), else ``default``.
    It has no ``kind`` of its own: ask :meth:`executor_for` a module.

    Args:
        default: Runs every module not named in ``by_module``.
        by_module: Module reference → the executor that runs it.
    """

    def __init__(self, default: Executor, by_module: Mapping[str, Executor]) -> None:
        self.default = default
        self.by_module = dict(by_module)

    def executor_for(self, module: str) -> Executor:
        """The executor that runs ``module``."""
        return self.by_module.get(module, self.default)

    def run(self, job: Job) -> ExecutionResult:
        return self.executor_for(job.spec.module).run(job)

    def describe(self) -> str:
        routed = ", ".join(
            f"{module} with {executor.kind.value}"
            for module, executor in sorted(self.by_module.items())
        )
        return f"{self.default.describe()}; {routed}" if routed else self.default.describe()

    def use_metrics(self, metrics: Metrics) -> None:
        for executor in self._executors():
            executor.use_metrics(metrics)

    def _executors(self) -> list[Executor]:
        return list({id(e): e for e in (self.default, *self.by_module.values())}.values())

    def close(self) -> None:
        for executor in {id(e): e for e in (self.default, *self.by_module.values())}.values():
            executor.close()
