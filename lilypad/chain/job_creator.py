"""Typed calls of the deployed JobCreator: what the bridge, client contracts and payees call.

A job offer for JobCreator job ``J`` carries nonce ``J`` and is signed by the bridge; the market
checks it through ERC-1271 with the blob :func:`bridge_signature` builds
(``abi.encode(JobOffer offer, bytes bridgeSignature)``). The calls that end a job take that offer
and the deal made from it, and the contract checks that the deal is job ``J``'s::

    jc = JobCreatorClient(chain, deployment.job_creator)
    signature = bridge_signature(offer, bridge, chain.chain_id, market.address)
    ...                                                 # the solver makes the deal
    delivery = jc.deliver_result(bridge, job_id, offer, deal, cid)   # or challenge / close
    delivery.callback_ok                                # False: the client's callback failed
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from eth_abi.abi import encode
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from web3.contract import Contract

from lilypad.chain.client import Chain
from lilypad.chain.light import Receipt
from lilypad.chain.offers import Deal, JobOffer
from lilypad.errors import ChainError

#: The ABI type of ``JobMarket.JobOffer``, as :meth:`JobOffer.as_tuple` orders it.
_JOB_OFFER_ABI = "(address,bytes32,bytes32,uint256,uint96,uint32,address[],uint64,uint256)"


class JobState(IntEnum):
    """A job's state in the contract (``JobCreator.JobState``)."""

    NONE = 0  # no such job
    OPEN = 1
    DELIVERED = 2  # the client was called back (``JobDelivered`` says whether it succeeded)
    CLOSED = 3  # its deal ended without a result to deliver; the payee got the rest
    CANCELLED = 4  # no deal was made; the payee got the whole amount

    def is_terminal(self) -> bool:
        """Whether the job has ended."""
        return self in (JobState.DELIVERED, JobState.CLOSED, JobState.CANCELLED)


@dataclass(frozen=True)
class Job:
    """What the contract keeps of one job.

    Attributes:
        client: The contract (or account) that asked and receives ``submitResults``.
        amount: What the client paid: the job's own funds.
        payee: Who gets what is left of them.
        state: Where the job is.
        challenged: Whether the bridge audited its result (the fee came from its funds).
    """

    client: str
    amount: int
    payee: str
    state: JobState
    challenged: bool


@dataclass(frozen=True)
class Delivery:
    """The outcome of ``deliverResult``: whether the client's callback succeeded."""

    callback_ok: bool
    receipt: Receipt


def bridge_signature(
    offer: JobOffer, bridge: LocalAccount | str, chain_id: int, market: str
) -> str:
    """The signature a JobOffer of the JobCreator carries: the bridge's EIP-712 signature of it,
    wrapped with the offer itself (``abi.encode(offer, signature)``) for the contract's ERC-1271
    check, which validates the offer's fields, not only its hash."""
    signature = bytes.fromhex(offer.sign(bridge, chain_id, market)[2:])
    return "0x" + encode([_JOB_OFFER_ABI, "bytes"], [offer.as_tuple(), signature]).hex()


class JobCreatorClient:
    """The on-chain job creator: what the bridge, client contracts and payees call."""

    def __init__(self, chain: Chain, address: str) -> None:
        self.chain = chain
        self.address = to_checksum_address(address)
        self.contract: Contract = chain.contract("JobCreator", address)

    # ------------------------------------------------------------------------------ views
    def job_cost(self) -> int:
        """What ``runJob`` charges its caller."""
        return int(self.chain.call(self.contract.functions.jobCost()))

    def bridge(self) -> str:
        """The account whose signature the contract accepts for its job offers."""
        return to_checksum_address(self.chain.call(self.contract.functions.bridge()))

    def job_count(self) -> int:
        """The id of the latest job (ids start at 1)."""
        return int(self.chain.call(self.contract.functions.jobCount()))

    def job(self, job_id: int) -> Job:
        """The contract's record of job ``job_id`` (state ``NONE`` if there is none)."""
        client, amount, payee, state, challenged = self.chain.call(
            self.contract.functions.jobs(job_id)
        )
        return Job(
            client=to_checksum_address(client),
            amount=int(amount),
            payee=to_checksum_address(payee),
            state=JobState(state),
            challenged=bool(challenged),
        )

    def callback_gas(self) -> int:
        """The gas a client's ``submitResults`` is called with."""
        return int(self.chain.call(self.contract.functions.CALLBACK_GAS()))

    def audit_window(self) -> int:
        """Seconds after a submission during which only the bridge may deliver the result."""
        return int(self.chain.call(self.contract.functions.auditWindow()))

    # ------------------------------------------------------------------------------ calls
    def run_job(self, sender: LocalAccount, module: str, inputs: Sequence[str], payee: str) -> int:
        """Ask for a job from an account (contracts call ``runJob`` themselves); approves the
        job cost first. Returns the job id."""
        token = self.chain.contract(
            "LilypadToken", self.chain.call(self.contract.functions.token())
        )
        self.chain.transact(token.functions.approve(self.address, self.job_cost()), sender)
        fn = self.contract.functions.runJob(module, list(inputs), to_checksum_address(payee))
        receipt = self.chain.transact(fn, sender)
        (event,) = self.events(receipt, "JobRequested")
        return int(event["jobId"])

    def deliver_result(
        self, sender: LocalAccount, job_id: int, offer: JobOffer, deal: Deal, cid: bytes
    ) -> Delivery:
        """Accept the deal's submitted result (the bridge, or anyone after the audit window), or
        hand over the result a mediation left (anyone); pays the payee and calls the client."""
        fn = self.contract.functions.deliverResult(job_id, offer.as_tuple(), deal.as_tuple(), cid)
        receipt = self.chain.transact(fn, sender)
        (event,) = self.events(receipt, "JobDelivered")
        return Delivery(callback_ok=bool(event["callbackOk"]), receipt=receipt)

    def challenge_result(
        self, bridge: LocalAccount, job_id: int, offer: JobOffer, deal: Deal
    ) -> Receipt:
        """Bridge only: audit the deal's submitted result (the fee comes from the job's funds)."""
        fn = self.contract.functions.challengeResult(job_id, offer.as_tuple(), deal.as_tuple())
        return self.chain.transact(fn, bridge)

    def close_job(self, sender: LocalAccount, job_id: int, offer: JobOffer, deal: Deal) -> int:
        """Anyone: end a job whose deal ended without a result to deliver (timing it out first
        when past its deadline). Returns the refund paid to the payee."""
        fn = self.contract.functions.closeJob(job_id, offer.as_tuple(), deal.as_tuple())
        (event,) = self.events(self.chain.transact(fn, sender), "JobClosed")
        return int(event["refund"])

    def cancel_job(self, sender: LocalAccount, job_id: int) -> Receipt:
        """The bridge, the client or the payee: end a job that has no deal (its offer's nonce is
        revoked in the market first) and return its funds to the payee."""
        return self.chain.transact(self.contract.functions.cancelJob(job_id), sender)

    def set_bridge(self, owner: LocalAccount, bridge: str) -> Receipt:
        """Owner only: the account whose signature job offers need."""
        fn = self.contract.functions.setBridge(to_checksum_address(bridge))
        return self.chain.transact(fn, owner)

    def set_job_cost(self, owner: LocalAccount, cost: int) -> Receipt:
        """Owner only: what ``runJob`` charges from now on (open jobs keep theirs)."""
        return self.chain.transact(self.contract.functions.setJobCost(cost), owner)

    def events(self, receipt: Receipt, name: str) -> list[dict[str, Any]]:
        """The arguments of every ``name`` event this contract emitted in ``receipt``."""
        event = getattr(self.contract.events, name)()
        topic = bytes.fromhex(event.topic.removeprefix("0x"))
        found = [
            dict(event.process_log(log)["args"])
            for log in receipt.raw["logs"]
            if log["address"] == self.address and bytes(log["topics"][0]) == topic
        ]
        if not found:
            raise ChainError(f"transaction {receipt.tx_hash} emitted no {name}")
        return found
