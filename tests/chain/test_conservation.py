"""Random call sequences against the real market never create or lose a token.

A hypothesis state machine drives deposits, withdrawals, deals, results, judgements, mediations,
timeouts and clock jumps — by the right party or by anyone — and after every step checks that the
tokens the market holds equal the parties' free balances plus what the open deals escrow (read
from the chain, not from a model), and that the token supply is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests
from eth_abi.abi import encode
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from lilypad.chain import Deal, DealState
from lilypad.errors import ContractReverted
from tests.chain.conftest import CID, ETH, Env

AMOUNTS = st.integers(min_value=0, max_value=3 * ETH)
PICK = st.integers(min_value=0, max_value=2**16)
ACTIONS = ["submit_result", "accept_result", "claim_payment", "challenge_result"]


def make_machine(env: Env) -> type[RuleBasedStateMachine]:
    market = env.market
    job_creators = [env.jc, env.stranger]
    providers = [env.provider, env.accounts[7]]
    mediators = [env.mediator, env.mediator2]
    everyone = [*job_creators, *providers, *mediators, env.solver]
    by_address = {a.address: a for a in everyone}

    class MarketMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.snapshot = env.rpc("evm_snapshot")
            self.supply = token_figures(env)[1]
            self.known: list[Deal] = []
            self.open: list[Deal] = []

        def teardown(self) -> None:
            env.rpc("evm_revert", self.snapshot)
            env.chain.nonces.reset()

        def attempt(self, call: Callable[[], Any]) -> bool:
            """Run a market call; a revert is a legal outcome, any other error is a failure."""
            try:
                call()
            except ContractReverted:
                return False
            return True

        def pick(self, index: int) -> Deal:
            return self.open[index % len(self.open)]

        def refresh(self, deal: Deal) -> None:
            if market.deal_status(deal.deal_id).state.is_terminal() and deal in self.open:
                self.open.remove(deal)

        def make_deal(
            self,
            jc: LocalAccount,
            provider: LocalAccount,
            price: int,
            max_price: int,
            collateral: int,
            mediator: LocalAccount,
        ) -> None:
            job = env.job_offer(jc, max_price=max_price, mediators=(mediator.address,))
            resource = env.resource_offer(
                provider,
                price=price,
                collateral=collateral,
                mediators=(env.mediator.address, env.mediator2.address),
            )
            try:
                deal = market.create_deal(
                    env.solver, env.sign_job(job, jc), env.sign_resource(resource, provider)
                )
            except ContractReverted:
                return
            self.known.append(deal)
            self.open.append(deal)

        @initialize()
        def first_deals(self) -> None:
            # Two valid deals from the start, so the settlement rules have work at once.
            self.make_deal(env.jc, env.provider, ETH // 2, ETH, ETH, env.mediator)
            self.make_deal(env.stranger, env.accounts[7], ETH // 4, ETH, ETH // 2, env.mediator2)

        @rule(who=st.sampled_from(everyone), amount=AMOUNTS, into=st.booleans())
        def move_funds(self, who: LocalAccount, amount: int, into: bool) -> None:
            call = market.deposit if into else market.withdraw
            self.attempt(lambda: call(who, amount))

        @rule(
            jc=st.sampled_from(job_creators),
            provider=st.sampled_from(providers),
            price=AMOUNTS,
            # Mostly enough to pay, now and then a little short (PriceAboveMaximum).
            tenths=st.integers(min_value=-1, max_value=30),
            collateral=AMOUNTS,
            mediator=st.sampled_from(mediators),
        )
        def create(
            self,
            jc: LocalAccount,
            provider: LocalAccount,
            price: int,
            tenths: int,
            collateral: int,
            mediator: LocalAccount,
        ) -> None:
            max_price = max(0, price + tenths * ETH // 10)
            self.make_deal(jc, provider, price, max_price, collateral, mediator)

        @precondition(lambda self: self.open)
        @rule(index=PICK, choice=st.integers(0, 3), provider_wins=st.booleans())
        def progress(self, index: int, choice: int, provider_wins: bool) -> None:
            """The right party takes one of the steps the deal's state allows."""
            deal = self.pick(index)
            jc, provider = by_address[deal.job_creator], by_address[deal.provider]
            state = market.deal_status(deal.deal_id).state
            steps: list[Callable[[], Any]] = []
            if state is DealState.CREATED:
                steps = [lambda: market.submit_result(provider, deal, CID)]
            elif state is DealState.SUBMITTED:
                steps = [
                    lambda: market.accept_result(jc, deal),
                    lambda: market.challenge_result(jc, deal),
                    lambda: market.claim_payment(provider, deal),
                    lambda: market.timeout_judgement(env.solver, deal),
                ]
            elif state is DealState.CHALLENGED:
                mediator = by_address[deal.mediator]
                steps = [
                    lambda: market.resolve_mediation(
                        mediator, deal, provider_wins=provider_wins, result_cid=CID
                    )
                ]
            if steps and self.attempt(steps[choice % len(steps)]):
                self.refresh(deal)

        @precondition(lambda self: self.known)
        @rule(index=PICK, who=st.sampled_from(everyone), action=st.sampled_from(ACTIONS))
        def meddle(self, index: int, who: LocalAccount, action: str) -> None:
            """Anyone calls a settlement function on any deal: it reverts or is legitimate."""
            deal = self.known[index % len(self.known)]
            call = getattr(market, action)
            args = (who, deal, CID) if action == "submit_result" else (who, deal)
            if self.attempt(lambda: call(*args)):
                self.refresh(deal)

        @precondition(lambda self: self.open)
        @rule(index=PICK, who=st.sampled_from(everyone))
        def timeout(self, index: int, who: LocalAccount) -> None:
            deal = self.pick(index)
            state = market.deal_status(deal.deal_id).state
            call = {
                DealState.CREATED: market.timeout_result,
                DealState.SUBMITTED: market.timeout_judgement,
                DealState.CHALLENGED: market.timeout_mediation,
            }.get(state)
            if call is not None and self.attempt(lambda: call(who, deal)):
                self.refresh(deal)

        @rule(seconds=st.sampled_from([30, 901, 3601, 7201]))
        def advance(self, seconds: int) -> None:
            env.advance(seconds)

        @invariant()
        def funds_are_conserved(self) -> None:
            free = market_balances(env, [a.address for a in everyone])
            states = deal_states(env, [d.deal_id for d in self.known])
            escrowed = 0
            for deal, state in zip(self.known, states, strict=True):
                if not state.is_terminal():
                    escrowed += deal.price + deal.collateral
                if state is DealState.CHALLENGED:
                    escrowed += deal.mediation_fee
            held, supply = token_figures(env)
            assert held == sum(free) + escrowed
            assert supply == self.supply

    return MarketMachine


def _batch_call(env: Env, calls: list[tuple[str, bytes]]) -> list[bytes]:
    """Several ``eth_call``s in one JSON-RPC batch (the invariant runs after every step)."""
    if not calls:
        return []
    payload = [
        {
            "jsonrpc": "2.0",
            "id": i,
            "method": "eth_call",
            "params": [{"to": to, "data": "0x" + data.hex()}, "latest"],
        }
        for i, (to, data) in enumerate(calls)
    ]
    answers = requests.post(env.chain.rpc_url, json=payload, timeout=10).json()
    by_id = {int(a["id"]): bytes.fromhex(a["result"][2:]) for a in answers}
    return [by_id[i] for i in range(len(calls))]


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def market_balances(env: Env, accounts: list[str]) -> list[int]:
    data = _selector("balanceOf(address)")
    calls = [(env.market.address, data + encode(["address"], [a])) for a in accounts]
    return [int.from_bytes(r[:32], "big") for r in _batch_call(env, calls)]


def deal_states(env: Env, deal_ids: list[str]) -> list[DealState]:
    data = _selector("dealState(bytes32)")
    calls = [(env.market.address, data + bytes.fromhex(d[2:])) for d in deal_ids]
    return [DealState(int.from_bytes(r[:32], "big")) for r in _batch_call(env, calls)]


def token_figures(env: Env) -> tuple[int, int]:
    """The tokens the market holds, and the total supply."""
    held = _selector("balanceOf(address)") + encode(["address"], [env.market.address])
    results = _batch_call(
        env, [(env.token.address, held), (env.token.address, _selector("totalSupply()"))]
    )
    return int.from_bytes(results[0], "big"), int.from_bytes(results[1], "big")


def test_random_call_sequences_conserve_funds(env: Env) -> None:
    # Every party starts with a deposit, so most deals can be paid for; the rules spend it.
    for account in (env.stranger, env.accounts[7]):
        env.market.deposit(account, 20 * ETH)
    run_state_machine_as_test(
        make_machine(env),
        settings=settings(
            max_examples=14,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
