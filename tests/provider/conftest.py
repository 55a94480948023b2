"""The provider's world: anvil with the contracts, a real solver (uvicorn in a thread), an
embedded IPFS node, a network profile naming them, and real provider daemons (process executor,
cowsay module)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account.signers.local import LocalAccount

from lilypad.chain.market import JobMarketClient
from lilypad.chain.offers import JobOffer, Machine, module_id, spec_digest
from lilypad.jobs import JobSubmission
from lilypad.modules import render
from lilypad.network import NetworkProfile
from lilypad.solver_api import SolverClient
from lilypad.storage.backends import KuboStorage, Storage
from lilypad.storage.node import EmbeddedNode
from resource_provider.daemon import ProviderConfig, ResourceProvider
from resource_provider.executors import Executor, ProcessExecutor
from resource_provider.machine import Hardware
from resource_provider.mediator import Mediator
from resource_provider.metrics import Metrics
from resource_provider.state import DealRecord, JsonStore, Outcome, Phase
from tests.solver.conftest import (  # noqa: F401 - fixtures used by the tests here
    ETH,
    Net,
    Server,
    SolverFactory,
    chain_snapshot,
    ipfs,
    make_solver,
    net,
    wait_for,
)

COWSAY = "cowsay:v0.0.4"
PRICE = ETH
COLLATERAL = 10 * PRICE  # the market's least collateral at this price (deployment default)
#: The deployment's challenge window (lilypad.chain.deployment default).
CHALLENGE_WINDOW = 3600
#: A plain CPU box: what the provider offers in tests, whatever this machine has.
HARDWARE = Hardware(gpus=(), cpus=4, ram_mb=8192, disk_mb=20480)


@dataclass
class World:
    """Everything a test needs to post jobs and start providers."""

    net: Net
    server: Server
    ipfs: EmbeddedNode
    tmp: Path
    providers: list[ResourceProvider] = field(default_factory=list)
    mediators: list[Mediator] = field(default_factory=list)

    @property
    def market(self) -> JobMarketClient:
        return self.net.market

    def rpc(self, method: str, *params: Any) -> Any:
        response = self.net.chain.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        assert "error" not in response, response
        return response["result"]

    def advance(self, seconds: int) -> None:
        """Move chain time forward and mine a block at the new time."""
        self.rpc("evm_increaseTime", seconds)
        self.rpc("evm_mine")

    def sync_clock(self) -> None:
        """Bring the chain's clock up to wall time: reverting a snapshot also rewinds it, so a
        long session would otherwise run on a chain minutes behind the daemons' clocks."""
        now = int(time.time())
        if self.net.now() < now:
            self.rpc("evm_setNextBlockTimestamp", now)
            self.rpc("evm_mine")

    def job(
        self,
        message: str,
        creator: LocalAccount | None = None,
        *,
        module: str = COWSAY,
        timeout: int = 600,
    ) -> JobSubmission:
        """A signed job offer for ``module`` with its spec, as `lilypad run` would make it."""
        network = self.net
        creator = creator or network.creators[0]
        spec = render(module, [f"Message={message}"])
        needs = Machine.from_requirements(
            gpus=spec.machine.gpus,
            vram_gb=spec.machine.vram_gb,
            cpus=spec.machine.cpus,
            ram_gb=spec.machine.ram_gb,
            disk_gb=spec.machine.disk_gb,
        )
        offer = JobOffer(
            job_creator=creator.address,
            module=module_id(spec.module),
            spec_hash=spec_digest(spec.spec_hash),
            machine=needs.encode(),
            max_price=10 * ETH,
            timeout=timeout,
            mediators=(network.mediator.address,),
            expiry=max(int(time.time()), network.now()) + 3600,
            nonce=network.nonce(),
        )
        signature = offer.sign(creator, network.chain.chain_id, network.market.address)
        return JobSubmission(offer=offer, signature=signature, spec=spec)

    def post(self, submission: JobSubmission) -> str:
        with httpx.Client(base_url=self.server.url, timeout=10) as client:
            response = client.post("/api/v1/job_offers", json=submission.model_dump(mode="json"))
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def deal_of(self, job_offer_id: str, timeout: float = 30) -> dict[str, Any]:
        """The solver's deal for a job offer, once created on chain."""

        def created() -> dict[str, Any] | None:
            with httpx.Client(base_url=self.server.url, timeout=10) as client:
                deal = client.get(f"/api/v1/job_offers/{job_offer_id}").json()["deal"]
            return deal if deal and deal["deal_id"] else None

        result: dict[str, Any] = wait_for(created, timeout)
        return result

    def config(self, **changes: Any) -> ProviderConfig:
        base = ProviderConfig(
            modules=(COWSAY,),
            price=PRICE,
            collateral=COLLATERAL,
            mediators=(self.net.mediator.address,),
            max_concurrent=1,
            poll_interval_s=0.2,
            start_block=self.net.deployment.block,
        )
        return replace(base, **changes)

    def state_dir(self, account: LocalAccount) -> Path:
        return self.tmp / "providers" / account.address

    def provider(
        self,
        account: LocalAccount | None = None,
        executor: Executor | None = None,
        storage: Storage | None = None,
        **config: Any,
    ) -> ResourceProvider:
        """A started provider daemon (stopped at the end of the test); its results go to this
        world's IPFS node unless ``storage`` says otherwise."""
        account = account or self.net.providers[0]
        daemon = ResourceProvider(
            account=account,
            market=JobMarketClient(self.net.chain, self.net.deployment.market),
            solver=SolverClient(self.server.url),
            storage=storage or KuboStorage(self.ipfs.api_url),
            executor=executor or ProcessExecutor(),
            hardware=HARDWARE,
            state_dir=self.state_dir(account),
            config=self.config(**config),
            metrics=Metrics(),
        )
        daemon.start()
        self.providers.append(daemon)
        return daemon

    def mediator(self, storage: Storage | None = None) -> Mediator:
        """The network's mediator daemon, started (stopped at the end of the test)."""
        daemon = Mediator(
            account=self.net.mediator,
            market=JobMarketClient(self.net.chain, self.net.deployment.market),
            solver=SolverClient(self.server.url),
            storage=storage or KuboStorage(self.ipfs.api_url),
            executor=ProcessExecutor(),
            state_dir=self.tmp / "mediator",
            start_block=self.net.deployment.block,
            poll_interval_s=0.2,
        )
        daemon.start()
        self.mediators.append(daemon)
        return daemon

    def profile(self) -> NetworkProfile:
        """Save and return the ``test`` network profile naming this world's services."""
        return self.net.save_profile(
            "test",
            solver_url=self.server.url,
            ipfs_api_url=self.ipfs.api_url,
            gateway_url=self.ipfs.gateway_url,
            accounts={"mediator": self.net.mediator.address},
        )


def records(state_dir: Path) -> list[DealRecord]:
    return list(JsonStore(state_dir).all("deals", DealRecord))


def wait_phase(
    state_dir: Path, phase: Phase, count: int = 1, timeout: float = 60
) -> list[DealRecord]:
    """Wait until ``count`` deals of the provider at ``state_dir`` are in ``phase``."""

    def reached() -> list[DealRecord] | None:
        found = [r for r in records(state_dir) if r.phase is phase]
        return found if len(found) >= count else None

    result: list[DealRecord] = wait_for(reached, timeout)
    return result


def wait_outcome(state_dir: Path, outcome: Outcome, timeout: float = 30) -> DealRecord:
    def reached() -> DealRecord | None:
        return next((r for r in records(state_dir) if r.outcome is outcome), None)

    result: DealRecord = wait_for(reached, timeout)
    return result


@pytest.fixture
def world(
    net: Net,  # noqa: F811 - the fixture imported above
    make_solver: SolverFactory,  # noqa: F811
    ipfs: EmbeddedNode,  # noqa: F811
    tmp_path: Path,
) -> Iterator[World]:
    with Server(make_solver()) as server:
        world = World(net, server, ipfs, tmp_path)
        world.sync_clock()
        try:
            yield world
        finally:
            for daemon in world.providers:
                daemon.stop()
            for mediator in world.mediators:
                mediator.stop()
