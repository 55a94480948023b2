"""A job creator against the provider tests' world: anvil, a real solver, an embedded IPFS node,
real provider daemons and a real mediator. The job creator is the library `lilypad run` drives
(:class:`lilypad.creator.JobRunner`), so a test can break things while a job runs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from lilypad.chain.crypto import Signer
from lilypad.chain.light import CreatorMarket, LightChain
from lilypad.chain.offers import default_job_timeout
from lilypad.creator import JobRecord, JobRunner, RunOptions, Step
from lilypad.modules import JobSpec, render
from lilypad.verification import Verify
from resource_provider.executors import ExecutionResult, Job, ProcessExecutor
from tests.provider.conftest import (  # noqa: F401 - fixtures used by the tests here
    COWSAY,
    ETH,
    World,
    chain_snapshot,
    ipfs,
    make_solver,
    net,
    wait_for,
    world,
)


@dataclass
class Creator:
    """A job creator account running jobs through :class:`JobRunner`, recording every step."""

    world: World
    account: LocalAccount
    steps: list[Step] = field(default_factory=list)

    def runner(self) -> JobRunner:
        profile = self.world.profile()
        market = CreatorMarket(LightChain(profile.rpc_url), profile.market)
        signer = Signer.from_key(bytes(self.account.key))

        def fund(amount: int) -> None:
            market.deposit(signer, amount)

        return JobRunner(profile, signer, market, self.steps.append, fund)

    def options(self, spec: JobSpec, verify: Verify = Verify.NEVER, **changes: Any) -> RunOptions:
        fields: dict[str, Any] = {
            "max_price": 10 * ETH,
            "timeout_s": default_job_timeout(spec.timeout_s),
            "mediators": (self.world.net.mediator.address,),
            "verify": verify,
        }
        return RunOptions(**(fields | changes))

    def run(self, spec: JobSpec, verify: Verify = Verify.NEVER, **changes: Any) -> JobRecord:
        runner = self.runner()
        try:
            return runner.run(spec, self.options(spec, verify, **changes))
        finally:
            runner.close()

    def start(self, spec: JobSpec, verify: Verify = Verify.NEVER, **changes: Any) -> Background:
        """Run a job in a thread (the test breaks things meanwhile)."""
        job = Background(lambda: self.run(spec, verify, **changes))
        job.start()
        return job

    def saw(self, name: str) -> bool:
        return any(step.name == name for step in self.steps)


class Background(threading.Thread):
    def __init__(self, work: Callable[[], JobRecord]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.record: JobRecord | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.record = self.work()
        except BaseException as exc:  # handed to the test by result()
            self.error = exc

    def result(self, timeout: float = 120) -> JobRecord:
        self.join(timeout)
        assert not self.is_alive(), "the job did not end in time"
        if self.error is not None:
            raise self.error
        assert self.record is not None
        return self.record


@pytest.fixture
def creator(world: World) -> Creator:  # noqa: F811 - the fixture imported above
    return Creator(world, world.net.creators[0])


def cowsay(message: str) -> JobSpec:
    return render(COWSAY, [f"Message={message}"])


class CheatingExecutor(ProcessExecutor):
    """Runs nothing: writes a plausible cowsay result of its own making."""

    def run(self, job: Job) -> ExecutionResult:
        result = super().run(job)
        (job.output_dir / "outputs" / "cowsay.txt").write_text("< a cow said something else >\n")
        return result


class FakeFailureExecutor(ProcessExecutor):
    """Claims the job failed on the GPU, without running it: an exit code and a plausible log."""

    def run(self, job: Job) -> ExecutionResult:
        result = super().run(job)
        for item in (job.output_dir / "outputs").iterdir():
            item.unlink()
        (job.output_dir / "stdout").write_text("")
        (job.output_dir / "stderr").write_text("RuntimeError: CUDA out of memory\n")
        (job.output_dir / "exitCode").write_text("1")
        return result
