"""A real chain (anvil, contracts deployed once) and a real solver served by uvicorn."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from eth_account.signers.local import LocalAccount

from lilypad import solver_api as api
from lilypad.chain.anvil import Anvil, find_anvil, free_port
from lilypad.chain.client import Chain
from lilypad.chain.deployment import Deployment, deploy, setup_dev_accounts
from lilypad.chain.market import JobMarketClient
from lilypad.chain.offers import (
    JobOffer,
    Machine,
    ResourceOffer,
    SignedResourceOffer,
    default_job_timeout,
    module_id,
    spec_digest,
)
from lilypad.errors import ChainError
from lilypad.jobs import JobSubmission
from lilypad.modules import render
from lilypad.network import NetworkProfile, save_network
from lilypad.storage.blockstore import Blockstore
from lilypad.storage.node import EmbeddedNode
from solver.app import SolverServer, create_app
from solver.service import Solver, SolverConfig
from solver.store import Store

ETH = 10**18
MODULE = "sdxl:v0.9-lilypad1"
NEEDS = Machine(gpus=1, vram_mb=12 * 1024, cpu_millis=4000, ram_mb=16 * 1024, disk_mb=30 * 1024)
HAS = Machine(gpus=1, vram_mb=24 * 1024, cpu_millis=8000, ram_mb=32 * 1024, disk_mb=200 * 1024)


@dataclass
class Net:
    """The deployed market and its parties."""

    anvil: Anvil
    chain: Chain
    deployment: Deployment
    market: JobMarketClient
    owner: LocalAccount
    solver: LocalAccount
    mediator: LocalAccount
    providers: list[LocalAccount]
    creators: list[LocalAccount]
    _nonce: list[int] = field(default_factory=lambda: [1000])

    def now(self) -> int:
        return int(self.chain.w3.eth.get_block("latest")["timestamp"])

    def save_profile(self, name: str, **services: Any) -> NetworkProfile:
        """Save (and return) a network profile ``name`` of this chain and market, with the
        service URLs and accounts given (``solver_url=...``, ``accounts=...``)."""
        profile = NetworkProfile(
            name=name,
            chain_id=self.chain.chain_id,
            rpc_url=self.anvil.rpc_url,
            token=self.deployment.token,
            market=self.deployment.market,
            job_creator=self.deployment.job_creator,
            deployed_block=self.deployment.block,
            **services,
        )
        save_network(profile)
        return profile

    def advance(self, seconds: int) -> None:
        """Move the chain's clock ``seconds`` ahead and mine a block there."""
        self.chain.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
        self.chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    def nonce(self) -> int:
        self._nonce[0] += 1
        return self._nonce[0]

    def job(
        self, creator: LocalAccount | None = None, inputs: tuple[str, ...] = (), **changes: Any
    ) -> JobSubmission:
        """A signed job offer with its spec (each its own: a fresh seed), by ``creator``;
        ``changes`` replace offer fields, ``spec=`` the spec, ``signed_by=`` the signer."""
        creator = creator or self.creators[0]
        spec = changes.pop("spec", None) or render(MODULE, [*inputs, f"Seed={self.nonce()}"])
        signer = changes.pop("signed_by", None) or creator
        fields: dict[str, Any] = {
            "job_creator": creator.address,
            "module": module_id(spec.module),
            "spec_hash": spec_digest(spec.spec_hash),
            "machine": NEEDS.encode(),
            "max_price": 10 * ETH,
            "timeout": default_job_timeout(spec.timeout_s),
            "mediators": (self.mediator.address,),
            "expiry": self.now() + 3600,
            "nonce": self.nonce(),
        }
        offer = JobOffer(**{**fields, **changes})
        signature = offer.sign(signer, self.chain.chain_id, self.market.address)
        return JobSubmission(offer=offer, signature=signature, spec=spec)

    def resource(self, provider: LocalAccount | None = None, **changes: Any) -> SignedResourceOffer:
        provider = provider or self.providers[0]
        fields: dict[str, Any] = {
            "provider": provider.address,
            "module": module_id(MODULE),
            "machine": HAS.encode(),
            "price": 5 * ETH,
            "mediators": (self.mediator.address,),
            "expiry": self.now() + 3600,
            "nonce": self.nonce(),
        }
        fields.update(changes)
        # the least collateral the market takes at this price, unless a test chooses one
        fields.setdefault("collateral", self.market.required_collateral(fields["price"]))
        offer = ResourceOffer(**fields)
        return SignedResourceOffer(
            offer=offer, signature=offer.sign(provider, self.chain.chain_id, self.market.address)
        )

    def slot(self, *modules: str, **changes: Any) -> list[api.SignedResourceOffer]:
        """One job slot of the first provider: an offer per module (names), all with one nonce,
        as the slot route takes them."""
        nonce = self.nonce()
        return [
            api.SignedResourceOffer.model_validate(
                self.resource(module=module_id(m), nonce=nonce, **changes).model_dump()
            )
            for m in modules
        ]


@pytest.fixture(scope="session")
def net() -> Iterator[Net]:
    try:
        find_anvil()
    except ChainError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"anvil is required in CI: {exc}")
        pytest.skip(f"{exc} (run make contracts-deps)")
    with Anvil() as node:
        chain = Chain(node.rpc_url)
        accounts = node.accounts
        owner, solver, mediator = accounts[:3]
        providers, creators = accounts[3:6], accounts[6:9]
        deployment = deploy(chain, owner)
        setup_dev_accounts(
            chain,
            deployment,
            owner,
            solvers=[solver.address],
            mediators=[mediator.address],
            funded=[a.address for a in providers + creators],
            amount=1000 * ETH,
        )
        market = JobMarketClient(chain, deployment.market)
        for account in providers + creators:
            market.deposit(account, 100 * ETH)
        yield Net(node, chain, deployment, market, owner, solver, mediator, providers, creators)


@pytest.fixture
def chain_snapshot(net: Net) -> Iterator[None]:
    snapshot = net.chain.w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    yield
    net.chain.w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]
    net.chain.nonces.reset()


class Server:
    """A solver app served by a real uvicorn in a thread."""

    def __init__(self, solver: Solver, **app_options: Any) -> None:
        self.solver = solver
        self.port = free_port()
        config = uvicorn.Config(
            create_app(solver, **app_options),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
        )
        self.server = SolverServer(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.solver.start()
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.solver.stop()


SolverFactory = Callable[..., Solver]


@pytest.fixture
def ipfs(tmp_path: Path) -> Iterator[EmbeddedNode]:
    """An embedded IPFS node (Kubo RPC and gateway) on free ports."""
    with EmbeddedNode(
        Blockstore(tmp_path / "ipfs"), api="127.0.0.1:0", gateway="127.0.0.1:0"
    ) as node:
        yield node


@pytest.fixture
def make_solver(net: Net, chain_snapshot: None, tmp_path: Path) -> Iterator[SolverFactory]:
    stores: list[Store] = []

    def make(
        db_url: str | None = None, clock: Callable[[], float] | None = None, **config: Any
    ) -> Solver:
        store = Store(db_url or f"sqlite:///{tmp_path / 'solver.db'}")
        stores.append(store)
        # tests/provider runs modules from fixture folders through this solver
        config.setdefault("any_module_source", True)
        settings = SolverConfig(start_block=net.deployment.block, poll_interval=0.1, **config)
        market = JobMarketClient(net.chain, net.deployment.market)
        return Solver(store, market, net.solver, settings, clock=clock)

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def served(make_solver: SolverFactory) -> Iterator[tuple[Server, httpx.Client]]:
    with Server(make_solver()) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield server, client


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)
