"""A real anvil for the chain tests: started and deployed once; each test snapshots and reverts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from lilypad.chain import (
    Chain,
    Deal,
    Deployment,
    JobCreatorClient,
    JobMarketClient,
    JobOffer,
    Machine,
    ResourceOffer,
    SignedJobOffer,
    SignedResourceOffer,
    TokenClient,
    deploy,
    module_id,
    setup_dev_accounts,
)
from lilypad.chain.anvil import Anvil, find_anvil
from lilypad.errors import ChainError

ETH = 10**18
PRICE = ETH // 2
COLLATERAL = ETH
FEE = ETH // 10
#: The market's collateral rule in these tests: at least 0.25 tokens and twice the price.
MIN_COLLATERAL = ETH // 4
COLLATERAL_MULTIPLE = 2
MAX_PRICE = ETH
TIMEOUT = 900
CHALLENGE_WINDOW = 3600
MEDIATION_TIMEOUT = 7200
DEPOSIT = 100 * ETH
CID = bytes.fromhex("01551220") + keccak(b"the outputs")
SPEC = "0x" + keccak(b"a rendered job spec").hex()
MODULE = module_id("sdxl:v0.9-lilypad1")
NEEDS = Machine(gpus=1, vram_mb=12 * 1024, cpu_millis=4000, ram_mb=16 * 1024, disk_mb=30 * 1024)
HAS = Machine(gpus=2, vram_mb=24 * 1024, cpu_millis=16000, ram_mb=64 * 1024, disk_mb=500 * 1024)


@pytest.fixture(scope="session")
def anvil_node() -> Iterator[Anvil]:
    try:
        find_anvil()
    except ChainError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"anvil is required in CI: {exc}")
        pytest.skip(f"{exc} (run make contracts-deps)")
    with Anvil() as node:
        yield node


@dataclass
class Env:
    """The deployed network and its parties, with helpers to make offers and deals."""

    chain: Chain
    deployment: Deployment
    market: JobMarketClient
    token: TokenClient
    job_creator_contract: JobCreatorClient
    owner: LocalAccount
    solver: LocalAccount
    mediator: LocalAccount
    mediator2: LocalAccount
    provider: LocalAccount
    jc: LocalAccount
    stranger: LocalAccount
    accounts: list[LocalAccount]
    _nonce: int = field(default=0)

    def rpc(self, method: str, *params: Any) -> Any:
        response = self.chain.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        if "error" in response:
            raise AssertionError(f"{method}: {response['error']}")
        return response["result"]

    def now(self) -> int:
        return int(self.chain.w3.eth.get_block("latest")["timestamp"])

    def advance(self, seconds: int) -> None:
        """Move the chain's clock; the next transaction's block is ``seconds`` later."""
        self.rpc("evm_increaseTime", seconds)
        self.rpc("evm_mine")

    def set_next_timestamp(self, timestamp: int) -> None:
        """The next block (the next transaction's) gets this timestamp."""
        self.rpc("evm_setNextBlockTimestamp", timestamp)

    def mine_at(self, timestamp: int) -> None:
        """Mine an empty block at ``timestamp``: calls and gas estimates now see that time."""
        self.set_next_timestamp(timestamp)
        self.rpc("evm_mine")

    def nonce(self) -> int:
        self._nonce += 1
        return self._nonce

    def job_offer(self, signer: LocalAccount | None = None, **changes: Any) -> JobOffer:
        fields: dict[str, Any] = {
            "job_creator": (signer or self.jc).address,
            "module": MODULE,
            "spec_hash": SPEC,
            "machine": NEEDS.encode(),
            "max_price": MAX_PRICE,
            "timeout": TIMEOUT,
            "mediators": (self.mediator.address,),
            "expiry": self.now() + 3600,
            "nonce": self.nonce(),
        }
        return JobOffer(**(fields | changes))

    def resource_offer(self, signer: LocalAccount | None = None, **changes: Any) -> ResourceOffer:
        fields: dict[str, Any] = {
            "provider": (signer or self.provider).address,
            "machine": HAS.encode(),
            "price": PRICE,
            "collateral": COLLATERAL,
            "mediators": (self.mediator.address,),
            "expiry": self.now() + 3600,
            "nonce": self.nonce(),
        }
        return ResourceOffer(**(fields | changes))

    def sign_job(self, offer: JobOffer, signer: LocalAccount | None = None) -> SignedJobOffer:
        key = signer or self.jc
        return SignedJobOffer(offer=offer, signature=offer.sign(key, *self._domain()))

    def sign_resource(
        self, offer: ResourceOffer, signer: LocalAccount | None = None
    ) -> SignedResourceOffer:
        key = signer or self.provider
        return SignedResourceOffer(offer=offer, signature=offer.sign(key, *self._domain()))

    def _domain(self) -> tuple[int, str]:
        return self.chain.chain_id, self.market.address

    def pair(self, **changes: Any) -> tuple[SignedJobOffer, SignedResourceOffer]:
        job = {k[4:]: v for k, v in changes.items() if k.startswith("job_")}
        res = {k[4:]: v for k, v in changes.items() if k.startswith("res_")}
        return self.sign_job(self.job_offer(**job)), self.sign_resource(self.resource_offer(**res))

    def deal(self, **changes: Any) -> Deal:
        return self.market.create_deal(self.solver, *self.pair(**changes))

    def submitted(self, **changes: Any) -> Deal:
        deal = self.deal(**changes)
        self.market.submit_result(self.provider, deal, CID)
        return deal

    def challenged(self) -> Deal:
        deal = self.submitted()
        self.market.challenge_result(self.jc, deal)
        return deal

    def balances(self) -> dict[str, int]:
        """Market balances of every party, by role."""
        return {
            role: self.market.balance_of(getattr(self, role).address)
            for role in ("jc", "provider", "mediator", "mediator2", "solver", "stranger")
        }


@pytest.fixture(scope="session")
def chain_env(anvil_node: Anvil) -> Env:
    chain = Chain(anvil_node.rpc_url)
    accounts = anvil_node.accounts
    owner, solver, mediator, mediator2, provider, jc, stranger = accounts[:7]
    deployment = deploy(
        chain,
        owner,
        challenge_window=CHALLENGE_WINDOW,
        mediation_timeout=MEDIATION_TIMEOUT,
        job_cost=ETH,
        min_collateral=MIN_COLLATERAL,
        collateral_multiple=COLLATERAL_MULTIPLE,
    )
    setup_dev_accounts(
        chain,
        deployment,
        owner,
        solvers=[solver.address],
        mediators=[mediator.address],
        funded=[a.address for a in accounts],
        amount=1000 * ETH,
        mediation_fee=FEE,
    )
    market = JobMarketClient(chain, deployment.market)
    market.set_mediator(owner, mediator2.address, 2 * FEE)
    for account in (provider, jc):
        market.deposit(account, DEPOSIT)
    return Env(
        chain=chain,
        deployment=deployment,
        market=market,
        token=TokenClient(chain, deployment.token),
        job_creator_contract=JobCreatorClient(chain, deployment.job_creator),
        owner=owner,
        solver=solver,
        mediator=mediator,
        mediator2=mediator2,
        provider=provider,
        jc=jc,
        stranger=stranger,
        accounts=accounts,
    )


@pytest.fixture
def env(chain_env: Env) -> Iterator[Env]:
    """The deployed network, reverted to its deployed state after the test."""
    snapshot = chain_env.rpc("evm_snapshot")
    try:
        yield chain_env
    finally:
        chain_env.rpc("evm_revert", snapshot)
        chain_env.chain.nonces.reset()
