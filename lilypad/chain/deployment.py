"""Deploying the contracts and setting up a development network.

:func:`deploy` puts LilypadToken (unless an existing ERC-20 is named), JobMarket and JobCreator on
any EVM chain and returns their addresses; :func:`setup_dev_accounts` funds and registers the
well-known roles of a local network (owner, solver, mediator, providers, job creators).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from eth_account.signers.local import LocalAccount

from lilypad.chain.client import Chain
from lilypad.chain.market import JobMarketClient, TokenClient

#: Defaults of a new deployment, in seconds and token units (18 decimals).
DEFAULT_CHALLENGE_WINDOW = 3600
DEFAULT_MEDIATION_TIMEOUT = 86400
DEFAULT_JOB_COST = 10**18
#: No deal's collateral is below this (a fresh key must deposit before its offers can win jobs).
DEFAULT_MIN_COLLATERAL = 10**18
#: A deal's collateral is at least this many times its price: with job creators auditing at
#: least 1 job in 10, a cheat loses more than it earns (see the README's security model).
DEFAULT_COLLATERAL_MULTIPLE = 10
DEV_INITIAL_SUPPLY = 10**9 * 10**18


@dataclass(frozen=True)
class Deployment:
    """Where the contracts of one deployment live.

    Attributes:
        chain_id: The chain they are on.
        token: The ERC-20 prices and collateral are paid in.
        market: JobMarket.
        job_creator: JobCreator (contract-submitted jobs).
        block: The block of the first deployment transaction (where event followers start).
        gas: Gas each deployment transaction used, by contract name.
    """

    chain_id: int
    token: str
    market: str
    job_creator: str
    block: int
    gas: dict[str, int] = field(default_factory=dict)


def deploy(
    chain: Chain,
    owner: LocalAccount,
    *,
    token: str | None = None,
    bridge: str | None = None,
    challenge_window: int = DEFAULT_CHALLENGE_WINDOW,
    mediation_timeout: int = DEFAULT_MEDIATION_TIMEOUT,
    job_cost: int = DEFAULT_JOB_COST,
    min_collateral: int = DEFAULT_MIN_COLLATERAL,
    collateral_multiple: int = DEFAULT_COLLATERAL_MULTIPLE,
) -> Deployment:
    """Deploy the contracts with ``owner`` as their owner (and, by default, the bridge).

    Args:
        chain: Where to deploy.
        owner: Pays for and owns the deployment.
        token: An existing ERC-20 to settle in; a new LilypadToken (supply minted to the owner)
            when None.
        bridge: The account JobCreator accepts deliveries from (the owner when None).
        challenge_window: Seconds a job creator has to challenge a submitted result.
        mediation_timeout: Seconds a mediator has to resolve a challenge.
        job_cost: What JobCreator.runJob charges per job.
        min_collateral: The least collateral of any deal (more than zero).
        collateral_multiple: A deal's collateral is at least this many times its price.
    """
    gas: dict[str, int] = {}
    first_block: int | None = None
    if token is None:
        token, receipt = chain.deploy(
            "LilypadToken", owner.address, DEV_INITIAL_SUPPLY, sender=owner
        )
        gas["LilypadToken"], first_block = receipt.gas_used, receipt.block_number
    market, receipt = chain.deploy(
        "JobMarket",
        owner.address,
        token,
        challenge_window,
        mediation_timeout,
        min_collateral,
        collateral_multiple,
        sender=owner,
    )
    gas["JobMarket"] = receipt.gas_used
    first_block = receipt.block_number if first_block is None else first_block
    job_creator, receipt = chain.deploy(
        "JobCreator", owner.address, market, bridge or owner.address, job_cost, sender=owner
    )
    gas["JobCreator"] = receipt.gas_used
    return Deployment(chain.chain_id, token, market, job_creator, first_block, gas)


def setup_dev_accounts(
    chain: Chain,
    deployment: Deployment,
    owner: LocalAccount,
    *,
    solvers: Sequence[str],
    mediators: Sequence[str],
    funded: Sequence[str],
    amount: int = 1_000_000 * 10**18,
    mediation_fee: int = 10**17,
) -> None:
    """Register solvers and mediators and give every ``funded`` account ``amount`` tokens."""
    market = JobMarketClient(chain, deployment.market)
    for solver in solvers:
        market.set_solver(owner, solver)
    for mediator in mediators:
        market.set_mediator(owner, mediator, mediation_fee)
    token = TokenClient(chain, deployment.token)
    for account in funded:
        if account != owner.address:
            token.transfer(owner, account, amount)
