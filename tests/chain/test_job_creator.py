"""Contract-submitted jobs: a client -> JobCreator -> deal -> result -> callback, and every other
way a job ends. Each job's funds are its own, whatever happens to the others."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3.contract import Contract

from lilypad.chain import Deal, JobOffer, SignedJobOffer
from lilypad.chain.job_creator import JobState, bridge_signature
from lilypad.chain.light import Receipt
from lilypad.errors import ContractReverted
from tests.chain.conftest import (
    CHALLENGE_WINDOW,
    CID,
    COLLATERAL,
    ETH,
    FEE,
    MEDIATION_TIMEOUT,
    PRICE,
    TIMEOUT,
    Env,
)
from tests.chain.solidity import deploy_test_contract
from tests.chain.test_market import reverts

JOB_COST = ETH  # the deployment's job cost in conftest
#: What the bridge offers: the job's funds less room for an audit's fee.
MAX_PRICE = JOB_COST - FEE
MEDIATOR_CID = bytes.fromhex("01551220") + keccak(b"the mediator's outputs")
CALLBACK_GAS = 500_000


class Client:
    """A client contract deployed for the test, and the user who pays for its jobs."""

    def __init__(self, env: Env, contract: Contract, user: LocalAccount) -> None:
        self.env, self.contract, self.user = env, contract, user
        self.address = contract.address

    def run_job(self, module: str = "cowsay:v0.0.4", inputs: tuple[str, ...] = ()) -> int:
        env = self.env
        env.token.approve(self.user, self.address, JOB_COST)
        functions = self.contract.functions
        if any(entry.get("name") == "ask" for entry in self.contract.abi):  # the test clients
            fn = functions.ask(env.job_creator_contract.address, module, list(inputs))
        else:
            fn = functions.runJob(module, list(inputs))
        receipt = env.chain.transact(fn, self.user)
        event = env.job_creator_contract.contract.events.JobRequested()
        (requested,) = [
            event.process_log(log)["args"]
            for log in receipt.raw["logs"]
            if log["address"] == env.job_creator_contract.address
        ]
        assert (requested["client"], requested["payee"]) == (self.address, self.user.address)
        assert (requested["module"], list(requested["inputs"])) == (module, list(inputs))
        return int(requested["jobId"])

    def result(self, job_id: int) -> bytes:
        return bytes(self.env.chain.call(self.contract.functions.results(job_id)))


def example_client(env: Env, user: LocalAccount | None = None) -> Client:
    address, _ = env.chain.deploy(
        "ExampleClient", env.job_creator_contract.address, sender=env.owner
    )
    return Client(env, env.chain.contract("ExampleClient", address), user or env.stranger)


def hostile_client(env: Env, name: str, *args: Any) -> Client:
    """A client from ``contracts/src/test/``, whose jobs ``env.stranger`` pays for."""
    return Client(env, deploy_test_contract(env.chain, name, *args, sender=env.owner), env.stranger)


@pytest.fixture
def client(env: Env) -> Client:
    return example_client(env)


def job_offer(env: Env, job_id: int, **changes: Any) -> JobOffer:
    """The bridge's JobOffer for job ``job_id``: nonce = the job id, the JobCreator pays."""
    fields: dict[str, Any] = {
        "job_creator": env.job_creator_contract.address,
        "max_price": MAX_PRICE,
    }
    return env.job_offer(**(fields | {"nonce": job_id} | changes))


def signed(env: Env, offer: JobOffer, signer: LocalAccount | None = None) -> SignedJobOffer:
    blob = bridge_signature(offer, signer or env.owner, env.chain.chain_id, env.market.address)
    return SignedJobOffer(offer=offer, signature=blob)


def make_deal(
    env: Env, job_id: int, *, price: int = PRICE, **changes: Any
) -> tuple[JobOffer, Deal]:
    """A deal for job ``job_id`` as the solver makes it from the bridge's offer."""
    offer = job_offer(env, job_id, **changes)
    collateral = max(COLLATERAL, env.market.required_collateral(price))
    resource = env.sign_resource(env.resource_offer(price=price, collateral=collateral))
    return offer, env.market.create_deal(env.solver, signed(env, offer), resource)


def submitted(env: Env, job_id: int, **changes: Any) -> tuple[JobOffer, Deal]:
    offer, deal = make_deal(env, job_id, **changes)
    env.market.submit_result(env.provider, deal, CID)
    return offer, deal


def wallet(env: Env, account: LocalAccount) -> int:
    return env.token.balance_of(account.address)


def held(env: Env) -> int:
    """The JobCreator's free balance in the market: the open jobs' funds not in escrow."""
    return env.market.balance_of(env.job_creator_contract.address)


# ---------------------------------------------------------------------------------- delivery


def test_a_contract_gets_its_result_and_the_payee_the_change(env: Env, client: Client) -> None:
    jc = env.job_creator_contract
    before = wallet(env, env.stranger)
    job_id = client.run_job(inputs=("Message=hello",))
    assert wallet(env, env.stranger) == before - JOB_COST
    assert held(env) == JOB_COST
    offer, deal = submitted(env, job_id)
    assert deal.job_creator == jc.address
    assert deal.job_offer_hash == offer.struct_hash()
    delivery = jc.deliver_result(env.owner, job_id, offer, deal, CID)
    assert delivery.callback_ok
    assert client.result(job_id) == CID
    assert "0x" + bytes(env.chain.call(client.contract.functions.deals(job_id))).hex() == (
        deal.deal_id
    )
    assert wallet(env, env.stranger) == before - PRICE  # the change came back
    assert env.market.balance_of(env.provider.address) > 0  # accepted: the provider was paid
    job = jc.job(job_id)
    assert (job.state, job.client, job.payee) == (
        JobState.DELIVERED,
        client.address,
        env.stranger.address,
    )
    assert held(env) == 0
    with reverts("JobNotOpen", jobId=job_id):
        jc.deliver_result(env.owner, job_id, offer, deal, CID)


def test_the_cid_delivered_is_the_one_on_chain(env: Env, client: Client) -> None:
    job_id = client.run_job()
    offer, deal = submitted(env, job_id)
    with reverts("ResultMismatch", dealId=deal.deal_id):
        env.job_creator_contract.deliver_result(env.owner, job_id, offer, deal, CID + b"x")
    made = make_deal(env, client.run_job())  # a result not yet submitted
    with reverts("ResultMismatch"):
        env.job_creator_contract.deliver_result(env.owner, job_id + 1, *made, CID)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("RevertingClient", ()),
        ("GasBurnerClient", ()),  # an infinite loop
        ("RevertBombClient", (400_000,)),  # 400 kB of revert data, if the caller copied it
    ],
)
def test_a_failing_callback_ends_the_job_recorded(env: Env, name: str, args: tuple[int]) -> None:
    hostile = hostile_client(env, name, *args)
    before = wallet(env, env.stranger)
    job_id = hostile.run_job()
    offer, deal = submitted(env, job_id)
    delivery = env.job_creator_contract.deliver_result(env.owner, job_id, offer, deal, CID)
    assert delivery.callback_ok is False
    # The callback had its gas and no more; the bridge's transaction paid for no more than that.
    assert delivery.receipt.gas_used < CALLBACK_GAS + 250_000
    assert env.job_creator_contract.job(job_id).state is JobState.DELIVERED
    assert wallet(env, env.stranger) == before - PRICE
    assert held(env) == 0
    events = env.job_creator_contract.events(delivery.receipt, "JobDelivered")
    assert bytes(events[0]["resultCid"]) == CID  # the CID stays readable in the event


def test_a_huge_return_buffer_is_not_copied(env: Env) -> None:
    bomb = hostile_client(env, "ReturnBombClient", 400_000)
    job_id = bomb.run_job()
    offer, deal = submitted(env, job_id)
    delivery = env.job_creator_contract.deliver_result(env.owner, job_id, offer, deal, CID)
    assert delivery.callback_ok
    assert env.chain.call(bomb.contract.functions.calls()) == 1
    assert delivery.receipt.gas_used < CALLBACK_GAS + 250_000


def _send_with_gas(env: Env, fn: Any, sender: LocalAccount, gas: int) -> Any:
    """Send ``fn`` with exactly ``gas`` (no estimate); the receipt, mined or failed."""
    chain = env.chain
    with chain.nonces.reserve(sender.address) as nonce:
        tx = fn.build_transaction(
            {"from": sender.address, "nonce": nonce, "chainId": chain.chain_id, "gas": gas}
        )
        tx_hash = chain.w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction)
    return chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)


def test_too_little_gas_reverts_rather_than_starve_the_callback(env: Env) -> None:
    """Whoever delivers picks the transaction's gas; with too little for the callback's full
    allowance the delivery must revert, or a bridge could make any callback fail at will."""
    needy = hostile_client(env, "GasNeedingClient", 420_000)
    job_id = needy.run_job()
    offer, deal = submitted(env, job_id)
    fn = env.job_creator_contract.contract.functions.deliverResult(
        job_id, offer.as_tuple(), deal.as_tuple(), CID
    )
    failed = 0
    for gas in range(150_000, 900_000, 4_000):  # upwards, until one delivers
        receipt = _send_with_gas(env, fn, env.owner, gas)
        if receipt["status"] == 1:
            break
        failed += 1
    else:
        pytest.fail("no gas limit delivered")
    assert failed > 50  # every limit too small for the callback's allowance reverted...
    assert gas > CALLBACK_GAS  # ...and the first that delivered gave the callback all of it
    assert env.chain.call(needy.contract.functions.results(job_id)) == CID
    mined = Receipt("0x" + bytes(receipt["transactionHash"]).hex(), 0, receipt["gasUsed"], receipt)
    (delivered,) = env.job_creator_contract.events(mined, "JobDelivered")
    assert delivered["callbackOk"] is True


# ------------------------------------------------------------------------ one job, one deal


def test_a_job_makes_at_most_one_deal(env: Env, client: Client) -> None:
    first, second = client.run_job(), client.run_job()
    market, jc = env.market, env.job_creator_contract
    resource = env.sign_resource(env.resource_offer())

    def refused(offer: JobOffer, error: str, signer: LocalAccount | None = None) -> None:
        with reverts(error):
            market.create_deal(env.solver, signed(env, offer, signer), resource)

    # Only the bridge signs; an offer must carry an open job's id, at most at its funds.
    refused(job_offer(env, first), "BadSignature", signer=env.stranger)
    refused(job_offer(env, 99), "BadSignature")  # no such job
    refused(job_offer(env, first, max_price=JOB_COST + 1), "BadSignature")
    plain = job_offer(env, first)  # the bridge's bare ECDSA signature, without the offer
    with reverts("BadSignature"):
        market.create_deal(
            env.solver,
            SignedJobOffer(offer=plain, signature=plain.sign(env.owner, *env._domain())),
            resource,
        )
    assert not market.signature_valid(job_offer(env, first, max_price=JOB_COST + 1), "0x")
    assert market.signature_valid(plain, signed(env, plain).signature)

    offer, deal = make_deal(env, first, max_price=JOB_COST)
    again = job_offer(env, first, expiry=offer.expiry + 1)  # the same job, another offer
    refused(again, "NonceUsed")
    _, other = make_deal(env, second)  # the other job still makes its own
    assert other.deal_id != deal.deal_id
    env.market.submit_result(env.provider, deal, CID)
    jc.deliver_result(env.owner, first, offer, deal, CID)
    refused(again, "BadSignature")  # the job is over: no offer of it is valid any more
    assert held(env) == JOB_COST - PRICE  # the second job's funds, less its escrowed price


def test_each_job_gets_back_exactly_its_own_funds(env: Env) -> None:
    """Two jobs at once; one's deal times out. Its payee gets that job's due, the other job's
    funds are untouched and still pay for its own result (the pooled-balance bug)."""
    jc = env.job_creator_contract
    alice, bob = env.accounts[7], env.accounts[8]
    a_client, b_client = example_client(env, alice), example_client(env, bob)
    a_wallet, b_wallet = wallet(env, alice), wallet(env, bob)
    a_job, b_job = a_client.run_job(), b_client.run_job()
    a_offer, a_deal = make_deal(env, a_job)
    b_offer, b_deal = make_deal(env, b_job, timeout=3 * TIMEOUT)
    assert held(env) == 2 * (JOB_COST - PRICE)

    # A job with a deal cannot be cancelled (its nonce is used), nor closed before its deadline,
    # nor closed with a deal the market does not hold (terms made up to inflate the refund).
    with reverts("NonceUsed"):
        jc.cancel_job(env.owner, a_job)
    with reverts("DealNotEnded"):
        jc.close_job(env.stranger, a_job, a_offer, a_deal)
    forged = a_deal.model_copy(update={"price": 0})
    with reverts("UnknownDeal"):
        jc.close_job(env.stranger, a_job, a_offer, forged)

    env.advance(TIMEOUT + 1)
    refund = jc.close_job(env.stranger, a_job, a_offer, a_deal)  # times the deal out first
    assert refund == JOB_COST + COLLATERAL  # the job's funds, and the provider's collateral
    assert wallet(env, alice) == a_wallet - JOB_COST + refund
    assert jc.job(a_job).state is JobState.CLOSED
    assert held(env) == JOB_COST - PRICE  # bob's job is untouched

    env.market.submit_result(env.provider, b_deal, CID)
    assert jc.deliver_result(env.owner, b_job, b_offer, b_deal, CID).callback_ok
    assert wallet(env, bob) == b_wallet - PRICE
    assert b_client.result(b_job) == CID
    assert held(env) == 0


def test_cancel_revokes_the_offer_so_a_late_match_fails(env: Env, client: Client) -> None:
    jc = env.job_creator_contract
    before = wallet(env, env.stranger)
    job_id = client.run_job()
    offer = job_offer(env, job_id)
    with reverts("NotAllowed", caller=env.jc.address):
        jc.cancel_job(env.jc, job_id)
    jc.cancel_job(env.owner, job_id)
    assert env.market.nonce_used(jc.address, job_id)
    with reverts("BadSignature"):
        env.market.create_deal(
            env.solver, signed(env, offer), env.sign_resource(env.resource_offer())
        )
    assert wallet(env, env.stranger) == before
    assert held(env) == 0
    assert jc.job(job_id).state is JobState.CANCELLED
    with reverts("JobNotOpen", jobId=job_id):
        jc.cancel_job(env.owner, job_id)


def test_the_client_or_the_payee_may_cancel_a_job_without_a_deal(env: Env) -> None:
    jc = env.job_creator_contract
    payee_job = jc.run_job(env.jc, "cowsay:v0.0.4", [], payee=env.stranger.address)
    jc.cancel_job(env.stranger, payee_job)  # the payee
    client_job = jc.run_job(env.jc, "cowsay:v0.0.4", [], payee=env.stranger.address)
    jc.cancel_job(env.jc, client_job)  # the client (here an account)
    assert held(env) == 0
    with reverts("ZeroPayee"):
        jc.run_job(env.jc, "cowsay:v0.0.4", [], payee="0x" + "00" * 20)


# ----------------------------------------------------------------------------------- audits


def _challenged(env: Env, job_id: int) -> tuple[JobOffer, Deal]:
    offer, deal = submitted(env, job_id)
    env.job_creator_contract.challenge_result(env.owner, job_id, offer, deal)
    assert env.job_creator_contract.job(job_id).challenged
    return offer, deal


def test_a_result_upheld_by_the_mediator_is_delivered(env: Env, client: Client) -> None:
    before = wallet(env, env.stranger)
    job_id = client.run_job()
    offer, deal = _challenged(env, job_id)
    env.market.resolve_mediation(env.mediator, deal, provider_wins=True, result_cid=CID)
    # After a ruling anyone may deliver; the CID must be the one the ruling kept.
    with reverts("ResultMismatch"):
        env.job_creator_contract.deliver_result(env.stranger, job_id, offer, deal, MEDIATOR_CID)
    with reverts("DeliverInstead"):
        env.job_creator_contract.close_job(env.stranger, job_id, offer, deal)
    assert env.job_creator_contract.deliver_result(
        env.stranger, job_id, offer, deal, CID
    ).callback_ok
    assert client.result(job_id) == CID
    assert wallet(env, env.stranger) == before - PRICE - FEE  # the audit was the job's to pay
    assert held(env) == 0


def test_a_result_refuted_by_the_mediator_delivers_the_mediators(env: Env, client: Client) -> None:
    before = wallet(env, env.stranger)
    job_id = client.run_job()
    offer, deal = _challenged(env, job_id)
    env.market.resolve_mediation(env.mediator, deal, provider_wins=False, result_cid=MEDIATOR_CID)
    with reverts("ResultMismatch"):  # the provider's result is the wrong one now
        env.job_creator_contract.deliver_result(env.stranger, job_id, offer, deal, CID)
    env.job_creator_contract.deliver_result(env.stranger, job_id, offer, deal, MEDIATOR_CID)
    assert client.result(job_id) == MEDIATOR_CID
    # The payee gets the price and the provider's collateral back, less the mediation fee.
    assert wallet(env, env.stranger) == before - FEE + COLLATERAL
    assert held(env) == 0


def test_a_refuted_result_without_the_mediators_closes_the_job(env: Env, client: Client) -> None:
    before = wallet(env, env.stranger)
    job_id = client.run_job()
    offer, deal = _challenged(env, job_id)
    env.market.resolve_mediation(env.mediator, deal, provider_wins=False)
    with reverts("ResultMismatch"):
        env.job_creator_contract.deliver_result(env.stranger, job_id, offer, deal, CID)
    refund = env.job_creator_contract.close_job(env.stranger, job_id, offer, deal)
    assert refund == JOB_COST - FEE + COLLATERAL
    assert wallet(env, env.stranger) == before - FEE + COLLATERAL
    assert held(env) == 0


def test_a_mediation_nobody_resolved_closes_the_job(env: Env, client: Client) -> None:
    before = wallet(env, env.stranger)
    job_id = client.run_job()
    offer, deal = _challenged(env, job_id)
    with reverts("DealNotEnded"):
        env.job_creator_contract.close_job(env.stranger, job_id, offer, deal)
    env.advance(MEDIATION_TIMEOUT + 1)
    assert env.job_creator_contract.close_job(env.stranger, job_id, offer, deal) == JOB_COST
    assert wallet(env, env.stranger) == before  # price and fee came back
    assert held(env) == 0


def test_an_audit_the_job_cannot_afford_is_refused(env: Env, client: Client) -> None:
    job_id = client.run_job()
    offer, deal = submitted(env, job_id, max_price=JOB_COST, price=JOB_COST)
    with reverts("CannotAffordAudit", needed=FEE, left=0):
        env.job_creator_contract.challenge_result(env.owner, job_id, offer, deal)
    env.job_creator_contract.deliver_result(env.owner, job_id, offer, deal, CID)


# ------------------------------------------------------------------------------- who may call


def test_only_the_bridge_judges_a_result_during_the_audit_window(env: Env, client: Client) -> None:
    jc = env.job_creator_contract
    job_id = client.run_job()
    offer, deal = submitted(env, job_id)
    with reverts("NotBridge", caller=env.stranger.address):
        jc.deliver_result(env.stranger, job_id, offer, deal, CID)
    with reverts("NotBridge", caller=env.stranger.address):
        jc.challenge_result(env.stranger, job_id, offer, deal)
    with reverts("DeliverInstead"):
        jc.close_job(env.stranger, job_id, offer, deal)
    # A stopped bridge cannot keep the client from its result: after the audit window (half the
    # challenge window) anyone may deliver, well before the provider may claim.
    assert jc.audit_window() == CHALLENGE_WINDOW // 2
    env.advance(CHALLENGE_WINDOW // 2 + 1)
    assert jc.deliver_result(env.stranger, job_id, offer, deal, CID).callback_ok
    assert client.result(job_id) == CID


def test_a_deal_of_another_job_or_job_creator_is_refused(env: Env, client: Client) -> None:
    jc = env.job_creator_contract
    job_id, other = client.run_job(), client.run_job()
    offer, deal = submitted(env, job_id)
    with reverts("NotTheJobsDeal", jobId=other):
        jc.deliver_result(env.owner, other, offer, deal, CID)
    with reverts("NotTheJobsDeal", jobId=job_id):
        jc.deliver_result(env.owner, job_id, offer.model_copy(update={"timeout": 1}), deal, CID)
    someone_elses = env.submitted()  # an account's own deal
    with reverts("NotTheJobsDeal"):
        jc.deliver_result(env.owner, job_id, offer, someone_elses, CID)


def test_only_the_job_creator_calls_the_client_back(env: Env, client: Client) -> None:
    fn = client.contract.functions.submitResults(1, b"\x00" * 32, CID)
    with reverts("NotJobCreator", caller=env.jc.address):
        env.chain.transact(fn, env.jc)


def test_owner_sets_bridge_and_cost(env: Env, client: Client) -> None:
    jc = env.job_creator_contract
    with reverts("OwnableUnauthorizedAccount"):
        jc.set_bridge(env.stranger, env.stranger.address)
    with reverts("OwnableUnauthorizedAccount"):
        jc.set_job_cost(env.stranger, 5)
    job_id = client.run_job()
    jc.set_job_cost(env.owner, JOB_COST // 2)
    assert jc.job_cost() == JOB_COST // 2
    assert jc.job(job_id).amount == JOB_COST  # an open job keeps what it paid
    jc.set_bridge(env.owner, env.stranger.address)
    assert jc.bridge() == env.stranger.address
    with pytest.raises(ContractReverted, match="BadSignature"):  # the old bridge's offers die
        make_deal(env, job_id)


def test_signature_checks_match_the_contracts(env: Env, client: Client) -> None:
    # EOA offers: ECDSA; JobCreator offers: ERC-1271, valid only as the bridge's signed blob.
    mine = env.job_offer()
    assert env.market.signature_valid(mine, mine.sign(env.jc, *env._domain()))
    assert not env.market.signature_valid(mine, mine.sign(env.stranger, *env._domain()))
    assert not env.market.signature_valid(mine, "0x1234")
    job_id = client.run_job()
    offer = job_offer(env, job_id)
    assert env.market.signature_valid(offer, signed(env, offer).signature)
    assert not env.market.signature_valid(offer, signed(env, offer, env.jc).signature)
    assert not env.market.signature_valid(offer, offer.sign(env.owner, *env._domain()))
    assert not env.market.signature_valid(offer, "0x1234")
    # The blob must wrap the very offer the digest is of.
    other = job_offer(env, job_id, timeout=TIMEOUT + 1)
    assert not env.market.signature_valid(offer, signed(env, other).signature)
