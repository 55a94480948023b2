"""Contract-submitted jobs: ExampleClient -> JobCreator -> deal -> result -> callback."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from lilypad.chain import Deal, SignedJobOffer
from lilypad.errors import ContractReverted
from tests.chain.conftest import CID, ETH, PRICE, Env
from tests.chain.test_market import reverts

JOB_COST = ETH  # the deployment's job cost in conftest


class Client:
    """An ExampleClient deployed for the test, and the user who calls it."""

    def __init__(self, env: Env, user: LocalAccount) -> None:
        self.env, self.user = env, user
        self.address, _ = env.chain.deploy(
            "ExampleClient", env.job_creator_contract.address, sender=env.owner
        )
        self.contract = env.chain.contract("ExampleClient", self.address)

    def run_job(self, module: str = "cowsay:v0.0.4", inputs: tuple[str, ...] = ()) -> int:
        self.env.token.approve(self.user, self.address, JOB_COST)
        fn = self.contract.functions.runJob(module, list(inputs))
        receipt = self.env.chain.transact(fn, self.user)
        event = self.env.job_creator_contract.contract.events.JobRequested()
        requested = [
            event.process_log(log)
            for log in receipt.raw["logs"]
            if log["address"] == self.env.job_creator_contract.address
        ]
        assert len(requested) == 1
        args: Any = requested[0]["args"]
        assert (args["client"], args["payee"]) == (self.address, self.user.address)
        assert (args["module"], list(args["inputs"])) == (module, list(inputs))
        return int(args["jobId"])

    def result(self, job_id: int) -> bytes:
        return bytes(self.env.chain.call(self.contract.functions.results(job_id)))


@pytest.fixture
def client(env: Env) -> Client:
    return Client(env, env.stranger)


def bridge_deal(env: Env, *, signer: LocalAccount | None = None, price: int = PRICE) -> Deal:
    """The bridge's JobOffer for the JobCreator (signed by the bridge), matched by the solver."""
    job = env.job_offer(job_creator=env.job_creator_contract.address, max_price=JOB_COST)
    signed = SignedJobOffer(
        offer=job,
        signature=job.sign(signer or env.owner, env.chain.chain_id, env.market.address),
    )
    resource = env.sign_resource(env.resource_offer(price=price))
    return env.market.create_deal(env.solver, signed, resource)


def test_a_contract_gets_its_result_through_the_bridge(env: Env, client: Client) -> None:
    wallet = env.token.balance_of(env.stranger.address)
    job_id = client.run_job(inputs=("Message=hello",))
    assert env.token.balance_of(env.stranger.address) == wallet - JOB_COST
    assert env.market.balance_of(env.job_creator_contract.address) == JOB_COST
    deal = bridge_deal(env)
    assert deal.job_creator == env.job_creator_contract.address
    env.market.submit_result(env.provider, deal, CID)
    receipt = env.job_creator_contract.deliver_result(env.owner, job_id, deal, CID)
    assert client.result(job_id) == CID
    assert bytes(env.chain.call(client.contract.functions.deals(job_id))).hex() == deal.deal_id[2:]
    assert env.market.balance_of(env.provider.address) > 0
    # The payee gets back what the cheaper deal left over.
    assert env.token.balance_of(env.stranger.address) == wallet - PRICE
    assert env.job_creator_contract.job(job_id)[3] is False
    emitted = {log["address"] for log in receipt.raw["logs"]}
    assert client.address in emitted  # ResultReceived


def test_only_the_bridge_delivers(env: Env, client: Client) -> None:
    job_id = client.run_job()
    deal = bridge_deal(env)
    env.market.submit_result(env.provider, deal, CID)
    with reverts("NotBridge", caller=env.stranger.address):
        env.job_creator_contract.deliver_result(env.stranger, job_id, deal, CID)
    with reverts("ResultMismatch"):
        env.job_creator_contract.deliver_result(env.owner, job_id, deal, CID + b"x")
    env.job_creator_contract.deliver_result(env.owner, job_id, deal, CID)
    with reverts("JobNotOpen", jobId=job_id):
        env.job_creator_contract.deliver_result(env.owner, job_id, deal, CID)


def test_only_the_job_creator_calls_the_client_back(env: Env, client: Client) -> None:
    fn = client.contract.functions.submitResults(1, b"\x00" * 32, CID)
    with reverts("NotJobCreator", caller=env.jc.address):
        env.chain.transact(fn, env.jc)


def test_an_offer_for_the_job_creator_needs_the_bridges_signature(env: Env, client: Client) -> None:
    client.run_job()
    with reverts("BadSignature", signer=env.job_creator_contract.address):
        bridge_deal(env, signer=env.stranger)


def test_a_deal_of_someone_else_is_not_delivered(env: Env, client: Client) -> None:
    job_id = client.run_job()
    deal = env.submitted()
    with reverts("NotOurDeal", jobCreator=env.jc.address):
        env.job_creator_contract.deliver_result(env.owner, job_id, deal, CID)


def test_a_deal_dearer_than_the_job_is_not_delivered(env: Env, client: Client) -> None:
    first, _ = client.run_job(), client.run_job()
    deal = bridge_deal(env, price=JOB_COST)
    dear = deal.model_copy()
    env.market.submit_result(env.provider, dear, CID)
    env.chain.transact(
        env.job_creator_contract.contract.functions.setJobCost(JOB_COST // 2), env.owner
    )
    cheap_job = client.run_job()
    with reverts("PriceAboveJobFunds", price=JOB_COST, funds=JOB_COST // 2):
        env.job_creator_contract.deliver_result(env.owner, cheap_job, dear, CID)
    env.job_creator_contract.deliver_result(env.owner, first, dear, CID)


def test_cancel_returns_the_funds_to_the_payee(env: Env, client: Client) -> None:
    wallet = env.token.balance_of(env.stranger.address)
    job_id = client.run_job()
    with reverts("NotBridge"):
        env.job_creator_contract.cancel_job(env.stranger, job_id)
    env.job_creator_contract.cancel_job(env.owner, job_id)
    assert env.token.balance_of(env.stranger.address) == wallet
    assert env.market.balance_of(env.job_creator_contract.address) == 0
    with pytest.raises(ContractReverted, match="JobNotOpen"):
        env.job_creator_contract.cancel_job(env.owner, job_id)


def test_owner_sets_bridge_and_cost(env: Env) -> None:
    functions = env.job_creator_contract.contract.functions
    with reverts("OwnableUnauthorizedAccount"):
        env.chain.transact(functions.setBridge(env.stranger.address), env.stranger)
    env.chain.transact(functions.setBridge(env.stranger.address), env.owner)
    assert env.chain.call(functions.bridge()) == env.stranger.address
    env.chain.transact(functions.setJobCost(5), env.owner)
    assert env.job_creator_contract.job_cost() == 5


def test_signature_checks_match_the_contracts(env: Env) -> None:
    # EOA offers: ECDSA; JobCreator offers: ERC-1271, valid only when the bridge signed.
    mine = env.job_offer()
    assert env.market.signature_valid(mine, mine.sign(env.jc, *env._domain()))
    assert not env.market.signature_valid(mine, mine.sign(env.stranger, *env._domain()))
    assert not env.market.signature_valid(mine, "0x1234")
    contract_offer = env.job_offer(job_creator=env.job_creator_contract.address)
    by_bridge = contract_offer.sign(env.owner, *env._domain())
    assert env.market.signature_valid(contract_offer, by_bridge)
    assert not env.market.signature_valid(
        contract_offer, contract_offer.sign(env.jc, *env._domain())
    )
    resource = env.resource_offer()
    assert env.market.signature_valid(resource, resource.sign(env.provider, *env._domain()))
    assert resource.signer(resource.sign(env.provider, *env._domain()), *env._domain()) == (
        env.provider.address
    )
