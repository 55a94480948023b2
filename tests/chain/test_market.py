"""JobMarket against a real anvil: every function's success path and every revert."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from eth_account import Account

from lilypad.chain import DealState, JobOffer, Machine, ResourceOffer, module_id
from lilypad.errors import ContractReverted
from tests.chain.conftest import (
    CHALLENGE_WINDOW,
    CID,
    COLLATERAL,
    COLLATERAL_MULTIPLE,
    DEPOSIT,
    ETH,
    FEE,
    MAX_PRICE,
    MEDIATION_TIMEOUT,
    MIN_COLLATERAL,
    NEEDS,
    PRICE,
    TIMEOUT,
    Env,
)


@contextmanager
def reverts(error: str, **details: Any) -> Iterator[None]:
    """Expect a ContractReverted naming ``error`` (and, where given, these decoded arguments)."""
    with pytest.raises(ContractReverted) as info:
        yield
    assert info.value.error == error, str(info.value)
    for key, value in details.items():
        assert info.value.details[key] == value, str(info.value)
    assert error in str(info.value)


def escrow(env: Env) -> int:
    """Tokens the market holds beyond everyone's free balances: what sits in open deals."""
    held = env.token.balance_of(env.market.address)
    free = sum(env.market.balance_of(a.address) for a in env.accounts)
    free += env.market.balance_of(env.job_creator_contract.address)
    return held - free


# --------------------------------------------------------------------------- balances


def test_deposit_and_withdraw_move_tokens(env: Env) -> None:
    wallet = env.token.balance_of(env.stranger.address)
    env.market.deposit(env.stranger, 5 * ETH)
    assert env.market.balance_of(env.stranger.address) == 5 * ETH
    assert env.token.balance_of(env.stranger.address) == wallet - 5 * ETH
    env.market.withdraw(env.stranger, 2 * ETH)
    assert env.market.balance_of(env.stranger.address) == 3 * ETH
    assert env.token.balance_of(env.stranger.address) == wallet - 3 * ETH


def test_deposit_for_credits_another_account(env: Env) -> None:
    env.token.approve(env.stranger, env.market.address, ETH)
    fn = env.market.contract.functions.depositFor(env.mediator2.address, ETH)
    env.chain.transact(fn, env.stranger)
    assert env.market.balance_of(env.mediator2.address) == ETH


def test_deposit_with_permit_needs_no_approval(env: Env) -> None:
    amount, deadline = 3 * ETH, env.now() + 600
    nonce = env.chain.call(env.token.contract.functions.nonces(env.stranger.address))
    permit = {
        "domain": {
            "name": "Lilypad",
            "version": "1",
            "chainId": env.chain.chain_id,
            "verifyingContract": env.token.address,
        },
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ],
        },
        "primaryType": "Permit",
        "message": {
            "owner": env.stranger.address,
            "spender": env.market.address,
            "value": amount,
            "nonce": nonce,
            "deadline": deadline,
        },
    }
    signed = env.stranger.sign_typed_data(full_message=permit)
    fn = env.market.contract.functions.depositWithPermit(
        amount, deadline, signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")
    )
    env.chain.transact(fn, env.stranger)
    assert env.market.balance_of(env.stranger.address) == amount


def test_zero_deposit_and_withdraw_are_refused(env: Env) -> None:
    with reverts("ZeroAmount"):
        env.market.deposit(env.stranger, 0)
    with reverts("ZeroAmount"):
        env.market.withdraw(env.jc, 0)


def test_withdraw_more_than_free_balance_is_refused(env: Env) -> None:
    with reverts("InsufficientBalance", balance=DEPOSIT, needed=DEPOSIT + 1):
        env.market.withdraw(env.jc, DEPOSIT + 1)
    env.deal()  # escrowed price is not free balance either
    with reverts("InsufficientBalance", balance=DEPOSIT - PRICE):
        env.market.withdraw(env.jc, DEPOSIT)


# --------------------------------------------------------------------------- registries


def test_only_the_owner_manages_registries(env: Env) -> None:
    with reverts("OwnableUnauthorizedAccount"):
        env.market.set_solver(env.stranger, env.stranger.address)
    with reverts("OwnableUnauthorizedAccount"):
        env.market.set_mediator(env.stranger, env.stranger.address, 1)
    env.market.set_solver(env.owner, env.stranger.address)
    assert env.market.is_solver(env.stranger.address)
    env.market.set_solver(env.owner, env.stranger.address, active=False)
    assert not env.market.is_solver(env.stranger.address)
    env.market.set_mediator(env.owner, env.stranger.address, 7)
    assert env.market.mediator(env.stranger.address) == (True, 7)


def test_ownership_moves_in_two_steps(env: Env) -> None:
    functions = env.market.contract.functions
    env.chain.transact(functions.transferOwnership(env.stranger.address), env.owner)
    assert env.chain.call(functions.owner()) == env.owner.address
    env.chain.transact(functions.acceptOwnership(), env.stranger)
    assert env.chain.call(functions.owner()) == env.stranger.address


# --------------------------------------------------------------------------- createDeal


def test_create_deal_escrows_price_and_collateral(env: Env) -> None:
    job, resource = env.pair()
    deal = env.market.create_deal(env.solver, job, resource)
    status = env.market.deal_status(deal.deal_id)
    assert status.state is DealState.CREATED
    assert status.deadline == env.now() + TIMEOUT
    assert (deal.job_creator, deal.provider, deal.mediator) == (
        env.jc.address,
        env.provider.address,
        env.mediator.address,
    )
    assert (deal.price, deal.collateral, deal.mediation_fee) == (PRICE, COLLATERAL, FEE)
    assert deal.job_offer_hash == job.offer.struct_hash()
    assert deal.resource_offer_hash == resource.offer.struct_hash()
    assert env.market.balance_of(env.jc.address) == DEPOSIT - PRICE
    assert env.market.balance_of(env.provider.address) == DEPOSIT - COLLATERAL
    assert escrow(env) == PRICE + COLLATERAL
    assert env.market.nonce_used(env.jc.address, job.offer.nonce)
    assert env.market.nonce_used(env.provider.address, resource.offer.nonce)


def test_offer_digests_match_the_contract(env: Env) -> None:
    job, resource = env.pair()
    functions = env.market.contract.functions
    on_chain = env.chain.call(functions.jobOfferDigest(job.offer.as_tuple()))
    assert "0x" + bytes(on_chain).hex() == job.offer.digest(env.chain.chain_id, env.market.address)
    on_chain = env.chain.call(functions.resourceOfferDigest(resource.offer.as_tuple()))
    assert "0x" + bytes(on_chain).hex() == resource.offer.digest(
        env.chain.chain_id, env.market.address
    )
    assert env.chain.call(functions.JOB_OFFER_TYPEHASH()) == bytes.fromhex(
        module_id(job.offer._TYPE)[2:]
    )


def test_only_a_registered_solver_creates_deals(env: Env) -> None:
    with reverts("NotSolver", caller=env.stranger.address):
        env.market.create_deal(env.stranger, *env.pair())


def test_price_equal_to_the_maximum_is_accepted_and_above_it_refused(env: Env) -> None:
    backed = COLLATERAL_MULTIPLE * (MAX_PRICE + 1)
    env.deal(res_price=MAX_PRICE, res_collateral=backed)
    with reverts("PriceAboveMaximum", price=MAX_PRICE + 1, maxPrice=MAX_PRICE):
        env.deal(res_price=MAX_PRICE + 1, res_collateral=backed)


# --------------------------------------------------------------------------- trust rules


def test_a_deal_never_gives_a_provider_less_time_than_its_offer_asks(env: Env) -> None:
    """A job creator cannot make a deal the provider cannot deliver and then take its collateral
    by timing it out: the resource offer's minTimeout is checked on chain."""
    env.deal(job_timeout=600, res_min_timeout=600)  # exactly enough is enough
    with reverts("TimeoutTooShort", timeout=1, minTimeout=600):
        env.deal(job_timeout=1, res_min_timeout=600)
    with reverts("TimeoutTooShort", timeout=599, minTimeout=600):
        env.market.create_deals(env.solver, [env.pair(job_timeout=599, res_min_timeout=600)])


def test_collateral_is_at_least_the_minimum_and_the_multiple_of_the_price(env: Env) -> None:
    """An unbacked offer (collateral 0, price 0: a fresh key's) can never win a job, and a
    cheat's collateral outweighs its price by the market's multiple."""
    assert env.market.collateral_rule() == (MIN_COLLATERAL, COLLATERAL_MULTIPLE)
    assert env.market.required_collateral(0) == MIN_COLLATERAL
    assert env.market.required_collateral(PRICE) == COLLATERAL_MULTIPLE * PRICE
    with reverts("CollateralTooLow", collateral=0, required=MIN_COLLATERAL):
        env.deal(res_price=0, res_collateral=0)
    with reverts("CollateralTooLow", collateral=MIN_COLLATERAL - 1, required=MIN_COLLATERAL):
        env.deal(res_price=0, res_collateral=MIN_COLLATERAL - 1)
    env.deal(res_price=0, res_collateral=MIN_COLLATERAL)
    needed = COLLATERAL_MULTIPLE * PRICE
    with reverts("CollateralTooLow", collateral=needed - 1, required=needed):
        env.deal(res_collateral=needed - 1)
    env.deal(res_collateral=needed)


def test_a_market_without_a_minimum_collateral_cannot_be_deployed(env: Env) -> None:
    from lilypad.chain import deploy

    with pytest.raises(ContractReverted, match="ZeroAmount"):
        deploy(env.chain, env.owner, token=env.token.address, min_collateral=0)


def test_offers_name_at_most_sixteen_mediators(env: Env) -> None:
    many = (*(Account.create().address for _ in range(16)), env.mediator.address)
    job = env.job_offer(mediators=(env.mediator.address,))
    resource = env.resource_offer()
    # the models refuse more than 16 (so does the solver); build the 17 by hand for the chain
    big_job = JobOffer.model_construct(**{**dict(job), "mediators": many})
    big_resource = ResourceOffer.model_construct(**{**dict(resource), "mediators": many})
    with reverts("TooManyMediators", count=17, max=16):
        env.market.create_deal(env.solver, env.sign_job(big_job), env.sign_resource(resource))
    with reverts("TooManyMediators", count=17, max=16):
        env.market.create_deal(env.solver, env.sign_job(job), env.sign_resource(big_resource))


def test_expired_offers_are_refused(env: Env) -> None:
    at = env.now() + 100
    env.set_next_timestamp(at)
    env.deal(job_expiry=at, res_expiry=at)  # the expiry second itself is still valid
    env.set_next_timestamp(at + 10)
    with reverts("OfferExpired", signer=env.jc.address, expiry=at + 9):
        env.deal(job_expiry=at + 9)
    env.set_next_timestamp(at + 20)
    with reverts("OfferExpired", signer=env.provider.address):
        env.deal(res_expiry=at + 19)


def test_module_must_agree(env: Env) -> None:
    env.deal(res_module=module_id("sdxl:v0.9-lilypad1"))
    with reverts("ModuleMismatch"):
        env.deal(res_module=module_id("cowsay:v0.0.4"))


def test_machine_must_meet_every_need(env: Env) -> None:
    small = NEEDS.model_copy(update={"vram_mb": NEEDS.vram_mb - 1})
    with reverts("MachineMismatch", lane=1, needed=NEEDS.vram_mb, offered=NEEDS.vram_mb - 1):
        env.deal(res_machine=small.encode())
    no_gpu = Machine(vram_mb=10**6, cpu_millis=10**6, ram_mb=10**6, disk_mb=10**6)
    with reverts("MachineMismatch", lane=0):
        env.deal(res_machine=no_gpu.encode())
    env.deal(res_machine=NEEDS.encode())  # exactly enough is enough


def test_a_mutual_registered_mediator_is_required(env: Env) -> None:
    with reverts("NoMutualMediator"):
        env.deal(job_mediators=(env.mediator2.address,), res_mediators=(env.mediator.address,))
    unregistered = env.stranger.address
    with reverts("NoMutualMediator"):
        env.deal(job_mediators=(unregistered,), res_mediators=(unregistered,))


def test_the_job_creators_first_mutual_mediator_is_picked(env: Env) -> None:
    both = (env.mediator.address, env.mediator2.address)
    deal = env.deal(
        job_mediators=(env.stranger.address, env.mediator2.address, env.mediator.address),
        res_mediators=both,
    )
    assert deal.mediator == env.mediator2.address
    assert deal.mediation_fee == 2 * FEE


def test_signatures_must_be_the_offer_signers(env: Env) -> None:
    job = env.job_offer()
    forged = env.sign_job(job, signer=env.stranger)
    with reverts("BadSignature", signer=env.jc.address):
        env.market.create_deal(env.solver, forged, env.sign_resource(env.resource_offer()))
    resource = env.resource_offer()
    forged_r = env.sign_resource(resource, signer=env.jc)
    with reverts("BadSignature", signer=env.provider.address):
        env.market.create_deal(env.solver, env.sign_job(env.job_offer()), forged_r)


def test_a_changed_offer_no_longer_matches_its_signature(env: Env) -> None:
    signed = env.sign_resource(env.resource_offer())
    changed = signed.offer.model_copy(update={"collateral": 2 * COLLATERAL})
    cheaper = signed.model_copy(update={"offer": changed})
    with reverts("BadSignature"):
        env.market.create_deal(env.solver, env.sign_job(env.job_offer()), cheaper)


def test_an_offer_signed_for_another_chain_is_refused(env: Env) -> None:
    job = env.job_offer()
    other_chain = job.sign(env.jc, env.chain.chain_id + 1, env.market.address)
    signed = env.sign_job(job).model_copy(update={"signature": other_chain})
    with reverts("BadSignature"):
        env.market.create_deal(env.solver, signed, env.sign_resource(env.resource_offer()))


def test_a_malformed_signature_is_refused(env: Env) -> None:
    job = env.sign_job(env.job_offer()).model_copy(update={"signature": "0x1234"})
    with reverts("BadSignature"):
        env.market.create_deal(env.solver, job, env.sign_resource(env.resource_offer()))


def test_an_offer_is_never_used_twice(env: Env) -> None:
    job, resource = env.pair()
    env.market.create_deal(env.solver, job, resource)
    with reverts("NonceUsed", signer=env.jc.address, nonce=job.offer.nonce):
        env.market.create_deal(env.solver, job, env.sign_resource(env.resource_offer()))
    with reverts("NonceUsed", signer=env.provider.address, nonce=resource.offer.nonce):
        env.market.create_deal(env.solver, env.sign_job(env.job_offer()), resource)


def test_a_revoked_offer_makes_no_deal(env: Env) -> None:
    job, resource = env.pair()
    env.market.invalidate_nonce(env.jc, job.offer.nonce)
    with reverts("NonceUsed"):
        env.market.create_deal(env.solver, job, resource)
    with reverts("NonceUsed"):
        env.market.invalidate_nonce(env.jc, job.offer.nonce)


def test_nonces_far_apart_each_work_once(env: Env) -> None:
    for nonce in (0, 255, 256, 2**255):
        env.deal(job_nonce=nonce, res_nonce=nonce)
    with reverts("NonceUsed"):
        env.deal(job_nonce=2**255)


def test_insufficient_balances_are_refused(env: Env) -> None:
    with reverts("InsufficientBalance", account=env.jc.address, needed=DEPOSIT + 1):
        env.deal(
            job_max_price=DEPOSIT + 1,
            res_price=DEPOSIT + 1,
            res_collateral=COLLATERAL_MULTIPLE * (DEPOSIT + 1),
        )
    with reverts("InsufficientBalance", account=env.provider.address, needed=DEPOSIT + 1):
        env.deal(res_collateral=DEPOSIT + 1)


def test_create_deals_makes_a_batch_or_nothing(env: Env) -> None:
    deals, _ = env.market.create_deals(env.solver, [env.pair() for _ in range(3)])
    assert len({d.deal_id for d in deals}) == 3
    assert all(env.market.deal_status(d.deal_id).state is DealState.CREATED for d in deals)
    good, bad = env.pair(), env.pair(res_price=MAX_PRICE + 1)
    with reverts("PriceAboveMaximum"):
        env.market.create_deals(env.solver, [good, bad])
    assert not env.market.nonce_used(env.jc.address, good[0].offer.nonce)


# --------------------------------------------------------------------------- submitResult


def test_submit_result_opens_the_challenge_window(env: Env) -> None:
    deal = env.deal()
    env.market.submit_result(env.provider, deal, CID)
    status = env.market.deal_status(deal.deal_id)
    assert status.state is DealState.SUBMITTED
    assert status.deadline == env.now() + CHALLENGE_WINDOW
    assert status.result_tag == env.market.result_tag(CID)


def test_only_the_provider_submits(env: Env) -> None:
    deal = env.deal()
    with reverts("NotParty", caller=env.jc.address, expected=env.provider.address):
        env.market.submit_result(env.jc, deal, CID)


def test_submit_at_the_deadline_works_and_after_it_fails(env: Env) -> None:
    deal = env.deal()
    deadline = env.market.deal_status(deal.deal_id).deadline
    env.set_next_timestamp(deadline)
    env.market.submit_result(env.provider, deal, CID)
    late = env.deal()
    env.advance(TIMEOUT + 1)
    with reverts("DeadlinePassed"):
        env.market.submit_result(env.provider, late, CID)


def test_a_result_is_submitted_once(env: Env) -> None:
    deal = env.submitted()
    with reverts("WrongState", state=DealState.SUBMITTED):
        env.market.submit_result(env.provider, deal, CID)


def test_tampered_deal_terms_name_no_deal(env: Env) -> None:
    deal = env.deal()
    richer = deal.model_copy(update={"price": deal.price * 2})
    with reverts("UnknownDeal", dealId=richer.deal_id):
        env.market.submit_result(env.provider, richer, CID)


def test_cid_must_be_present_and_bounded(env: Env) -> None:
    deal = env.deal()
    with reverts("InvalidCid", length=0):
        env.market.submit_result(env.provider, deal, b"")
    with reverts("InvalidCid", length=129):
        env.market.submit_result(env.provider, deal, b"\x01" * 129)


def test_submit_results_in_a_batch(env: Env) -> None:
    deals, _ = env.market.create_deals(env.solver, [env.pair() for _ in range(3)])
    env.market.submit_results(env.provider, [(d, CID) for d in deals])
    assert all(env.market.deal_status(d.deal_id).state is DealState.SUBMITTED for d in deals)
    fn = env.market.contract.functions.submitResults([deals[0].as_tuple()], [CID, CID])
    with reverts("LengthMismatch"):
        env.chain.transact(fn, env.provider)


# --------------------------------------------------------------------------- judgement


def test_accept_pays_the_provider_at_once(env: Env) -> None:
    deal = env.submitted()
    env.market.accept_result(env.jc, deal)
    assert env.market.deal_status(deal.deal_id).state is DealState.NONE
    assert env.market.balance_of(env.provider.address) == DEPOSIT + PRICE
    assert env.market.balance_of(env.jc.address) == DEPOSIT - PRICE
    assert escrow(env) == 0


def test_accept_needs_the_job_creator_and_a_result(env: Env) -> None:
    deal = env.deal()
    with reverts("WrongState", state=DealState.CREATED):
        env.market.accept_result(env.jc, deal)
    env.market.submit_result(env.provider, deal, CID)
    with reverts("NotParty", expected=env.jc.address):
        env.market.accept_result(env.provider, deal)
    env.market.accept_result(env.jc, deal)
    with reverts("UnknownDeal"):
        env.market.accept_result(env.jc, deal)


def test_claim_payment_after_the_challenge_window(env: Env) -> None:
    deal = env.submitted()
    deadline = env.market.deal_status(deal.deal_id).deadline
    env.mine_at(deadline)
    with reverts("DeadlineNotReached", deadline=deadline):
        env.market.claim_payment(env.provider, deal)
    env.mine_at(deadline + 1)
    with reverts("NotParty"):
        env.market.claim_payment(env.stranger, deal)
    env.market.claim_payment(env.provider, deal)
    assert env.market.balance_of(env.provider.address) == DEPOSIT + PRICE
    assert escrow(env) == 0


def test_anyone_settles_an_unjudged_result_for_the_provider(env: Env) -> None:
    deal = env.submitted()
    with reverts("DeadlineNotReached"):
        env.market.timeout_judgement(env.stranger, deal)
    env.advance(CHALLENGE_WINDOW + 1)
    with reverts("DeadlinePassed"):
        env.market.challenge_result(env.jc, deal)
    env.market.timeout_judgement(env.stranger, deal)
    assert env.market.balance_of(env.provider.address) == DEPOSIT + PRICE
    assert env.market.balance_of(env.stranger.address) == 0
    with reverts("UnknownDeal"):
        env.market.claim_payment(env.provider, deal)


def test_claim_before_a_result_is_the_wrong_state(env: Env) -> None:
    deal = env.deal()
    env.advance(CHALLENGE_WINDOW + 1)
    with reverts("WrongState", state=DealState.CREATED):
        env.market.claim_payment(env.provider, deal)
    with reverts("WrongState", state=DealState.CREATED):
        env.market.timeout_judgement(env.stranger, deal)


# --------------------------------------------------------------------------- mediation


def test_challenge_pays_the_fee_into_escrow(env: Env) -> None:
    deal = env.submitted()
    env.market.challenge_result(env.jc, deal)
    status = env.market.deal_status(deal.deal_id)
    assert status.state is DealState.CHALLENGED
    assert status.deadline == env.now() + MEDIATION_TIMEOUT
    assert status.result_tag == env.market.result_tag(CID)
    assert env.market.balance_of(env.jc.address) == DEPOSIT - PRICE - FEE
    assert escrow(env) == PRICE + COLLATERAL + FEE


def test_challenge_rules(env: Env) -> None:
    deal = env.deal()
    with reverts("WrongState", state=DealState.CREATED):
        env.market.challenge_result(env.jc, deal)
    env.market.submit_result(env.provider, deal, CID)
    with reverts("NotParty", expected=env.jc.address):
        env.market.challenge_result(env.provider, deal)
    env.market.withdraw(env.jc, env.market.balance_of(env.jc.address))
    with reverts("InsufficientBalance", needed=FEE):
        env.market.challenge_result(env.jc, deal)
    env.market.deposit(env.jc, FEE)
    deadline = env.market.deal_status(deal.deal_id).deadline
    env.set_next_timestamp(deadline)
    env.market.challenge_result(env.jc, deal)  # the last second of the window still counts
    with reverts("WrongState", state=DealState.CHALLENGED):
        env.market.challenge_result(env.jc, deal)


def test_mediation_for_the_provider(env: Env) -> None:
    deal = env.challenged()
    env.market.resolve_mediation(env.mediator, deal, provider_wins=True, result_cid=CID)
    assert env.market.balance_of(env.provider.address) == DEPOSIT + PRICE
    assert env.market.balance_of(env.jc.address) == DEPOSIT - PRICE - FEE
    assert env.market.balance_of(env.mediator.address) == FEE
    status = env.market.deal_status(deal.deal_id)
    # a final state, keeping the provider's result tag: a contract job creator can still prove it
    assert status.state is DealState.UPHELD
    assert status.result_tag == env.market.result_tag(CID)
    assert escrow(env) == 0
    with reverts("WrongState", state=DealState.UPHELD):
        env.market.resolve_mediation(env.mediator, deal, provider_wins=False, result_cid=CID)


def test_mediation_for_the_job_creator_slashes_the_provider(env: Env) -> None:
    deal = env.challenged()
    correct = bytes.fromhex("01551220") + bytes(32)
    receipt = env.market.resolve_mediation(
        env.mediator, deal, provider_wins=False, result_cid=correct
    )
    assert env.market.balance_of(env.provider.address) == DEPOSIT - COLLATERAL
    assert env.market.balance_of(env.jc.address) == DEPOSIT - FEE + COLLATERAL
    assert env.market.balance_of(env.mediator.address) == FEE
    assert escrow(env) == 0
    # the job creator learns the mediator's (correct) result, and its tag stays on chain
    event = env.market.contract.events.MediationResolved().process_receipt(receipt.raw)[0]
    assert bytes(event["args"]["resultCid"]) == correct
    status = env.market.deal_status(deal.deal_id)
    assert status.state is DealState.REFUNDED
    assert status.result_tag == env.market.result_tag(correct)


def test_a_mediators_result_cid_is_bounded(env: Env) -> None:
    deal = env.challenged()
    with reverts("InvalidCid", length=129):
        env.market.resolve_mediation(env.mediator, deal, provider_wins=False, result_cid=b"x" * 129)


def test_only_the_deals_mediator_resolves_in_time(env: Env) -> None:
    deal = env.submitted()
    with reverts("WrongState", state=DealState.SUBMITTED):
        env.market.resolve_mediation(env.mediator, deal, provider_wins=True, result_cid=CID)
    env.market.challenge_result(env.jc, deal)
    with reverts("NotParty", expected=env.mediator.address):
        env.market.resolve_mediation(env.mediator2, deal, provider_wins=True, result_cid=CID)
    with reverts("NotParty"):
        env.market.resolve_mediation(env.jc, deal, provider_wins=False, result_cid=CID)
    env.advance(MEDIATION_TIMEOUT + 1)
    with reverts("DeadlinePassed"):
        env.market.resolve_mediation(env.mediator, deal, provider_wins=True, result_cid=CID)


# --------------------------------------------------------------------------- timeouts


def test_no_result_refunds_the_job_creator_and_slashes_the_provider(env: Env) -> None:
    deal = env.deal()
    deadline = env.market.deal_status(deal.deal_id).deadline
    env.mine_at(deadline)
    with reverts("DeadlineNotReached", deadline=deadline):
        env.market.timeout_result(env.stranger, deal)
    env.mine_at(deadline + 1)
    env.market.timeout_result(env.stranger, deal)
    assert env.market.balance_of(env.jc.address) == DEPOSIT + COLLATERAL
    assert env.market.balance_of(env.provider.address) == DEPOSIT - COLLATERAL
    assert escrow(env) == 0
    assert env.market.deal_status(deal.deal_id).state is DealState.REFUNDED
    with reverts("WrongState", state=DealState.REFUNDED):
        env.market.submit_result(env.provider, deal, CID)
    with reverts("WrongState", state=DealState.REFUNDED):
        env.market.timeout_result(env.stranger, deal)


def test_result_timeout_does_not_apply_once_submitted(env: Env) -> None:
    deal = env.submitted()
    env.advance(TIMEOUT + 1)
    with reverts("WrongState", state=DealState.SUBMITTED):
        env.market.timeout_result(env.stranger, deal)


def test_no_mediation_refunds_both_parties(env: Env) -> None:
    deal = env.challenged()
    with reverts("DeadlineNotReached"):
        env.market.timeout_mediation(env.stranger, deal)
    env.advance(MEDIATION_TIMEOUT + 1)
    env.market.timeout_mediation(env.stranger, deal)
    assert env.market.balance_of(env.jc.address) == DEPOSIT
    assert env.market.balance_of(env.provider.address) == DEPOSIT
    assert env.market.balance_of(env.mediator.address) == 0
    assert escrow(env) == 0
    assert env.market.deal_status(deal.deal_id).state is DealState.MEDIATION_EXPIRED
    with reverts("WrongState", state=DealState.MEDIATION_EXPIRED):
        env.market.timeout_mediation(env.stranger, deal)


def test_mediation_timeout_needs_a_challenge(env: Env) -> None:
    deal = env.submitted()
    env.advance(MEDIATION_TIMEOUT + 1)
    with reverts("WrongState", state=DealState.SUBMITTED):
        env.market.timeout_mediation(env.stranger, deal)


# --------------------------------------------------------------------------- events


def test_every_transition_emits_an_event(env: Env) -> None:
    names = []
    for receipt in _lifecycle(env):
        for log in receipt.raw["logs"]:
            event = env.market.contract.get_event_by_topic("0x" + bytes(log["topics"][0]).hex())
            names.append(event.event_name)
    assert names == [
        "DealCreated",
        "ResultSubmitted",
        "ResultChallenged",
        "MediationResolved",
        "DealCreated",
        "ResultSubmitted",
        "ResultAccepted",
        "DealCreated",
        "DealTimedOut",
    ]


def _lifecycle(env: Env) -> list[Any]:
    market, receipts = env.market, []
    job, resource = env.pair()
    fn = market.contract.functions.createDeal(
        job.offer.as_tuple(),
        bytes.fromhex(job.signature[2:]),
        resource.offer.as_tuple(),
        bytes.fromhex(resource.signature[2:]),
    )
    receipts.append(env.chain.transact(fn, env.solver))
    deal = market.deals_in(receipts[-1])[0]
    receipts.append(market.submit_result(env.provider, deal, CID))
    receipts.append(market.challenge_result(env.jc, deal))
    receipts.append(
        market.resolve_mediation(env.mediator, deal, provider_wins=True, result_cid=CID)
    )
    deals, receipt = market.create_deals(env.solver, [env.pair()])
    receipts += [receipt, market.submit_result(env.provider, deals[0], CID)]
    receipts.append(market.accept_result(env.jc, deals[0]))
    deals, receipt = market.create_deals(env.solver, [env.pair()])
    env.advance(TIMEOUT + 1)
    receipts += [receipt, market.timeout_result(env.stranger, deals[0])]
    return receipts


def test_a_fresh_account_is_an_ordinary_signer(env: Env) -> None:
    fresh = Account.create()
    env.rpc("anvil_setBalance", fresh.address, hex(ETH))
    env.token.transfer(env.jc, fresh.address, 10 * ETH)
    env.market.deposit(fresh, 10 * ETH)
    job = env.job_offer(signer=fresh)
    deal = env.market.create_deal(
        env.solver, env.sign_job(job, signer=fresh), env.sign_resource(env.resource_offer())
    )
    assert deal.job_creator == fresh.address


def test_accept_after_the_window_still_pays_until_someone_settles(env: Env) -> None:
    deal = env.submitted()
    env.advance(CHALLENGE_WINDOW + 1)
    env.market.accept_result(env.jc, deal)
    assert env.market.balance_of(env.provider.address) == DEPOSIT + PRICE
    with reverts("UnknownDeal"):
        env.market.timeout_judgement(env.stranger, deal)


def test_the_deal_id_is_the_hash_of_its_terms(env: Env) -> None:
    deal = env.deal()
    on_chain = env.chain.call(env.market.contract.functions.hashDeal(deal.as_tuple()))
    assert "0x" + bytes(on_chain).hex() == deal.deal_id


def test_only_the_token_owner_mints(env: Env) -> None:
    with reverts("OwnableUnauthorizedAccount"):
        env.token.mint(env.stranger, env.stranger.address, 1)
    supply = env.token.total_supply()
    env.token.mint(env.owner, env.stranger.address, 5)
    assert env.token.total_supply() == supply + 5


def test_nonces_are_single_use_in_any_order_across_words(env: Env) -> None:
    # 128 nonces share a word; words move forward and older words stay enforced.
    order = [1000, 5, 1001, 2000, 1002, 2**30, 7, 2**40, 2**40 + 1]
    for nonce in order:
        env.deal(job_nonce=nonce, res_nonce=nonce)
    for nonce in order:
        assert env.market.nonce_used(env.jc.address, nonce)
        with reverts("NonceUsed", nonce=nonce):
            env.deal(job_nonce=nonce)
        with reverts("NonceUsed", nonce=nonce):
            env.deal(res_nonce=nonce)
    assert not env.market.nonce_used(env.jc.address, 1003)
    assert not env.market.nonce_used(env.jc.address, 2**40 + 2)


def test_the_largest_nonce_is_reserved(env: Env) -> None:
    with pytest.raises(ValueError, match="less than"):
        env.job_offer(nonce=2**256 - 1)
    # Past the client's check, the contract refuses it too.
    job = env.job_offer().model_copy(update={"nonce": 2**256 - 1})
    with reverts("NonceUsed", nonce=2**256 - 1):
        env.market.create_deal(
            env.solver, env.sign_job(job), env.sign_resource(env.resource_offer())
        )
    with reverts("NonceUsed"):
        env.market.invalidate_nonce(env.jc, 2**256 - 1)


def test_a_balance_beyond_104_bits_is_refused(env: Env) -> None:
    huge = 2**104
    env.token.mint(env.owner, env.stranger.address, huge)
    with reverts("BalanceOverflow", account=env.stranger.address, balance=huge):
        env.market.deposit(env.stranger, huge)
    env.market.deposit(env.stranger, huge - 1)
    assert env.market.balance_of(env.stranger.address) == huge - 1
