"""Typed wrappers of the deployed JobMarket and its token (JobCreator: :mod:`.job_creator`).

Every method that changes state takes the ``sender`` (an eth-account ``LocalAccount``) that signs
the transaction and returns the mined :class:`~lilypad.chain.client.Receipt`; calls that create a
deal return the :class:`~lilypad.chain.offers.Deal` read back from the ``DealCreated`` event.
Result CIDs are passed as their binary form (``bytes``).

Typical flow::

    market = JobMarketClient(chain, deployment.market)
    market.deposit(job_creator, 10**18)                      # once, reused by many deals
    deal = market.create_deal(solver, signed_job_offer, signed_resource_offer)
    market.submit_result(provider, deal, cid_bytes)
    market.accept_result(job_creator, deal)                 # or challenge_result / claim_payment
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3.contract import Contract

from lilypad.chain.client import Chain
from lilypad.chain.light import DealState, DealStatus, Receipt
from lilypad.chain.offers import (
    Deal,
    JobOffer,
    ResourceOffer,
    SignedJobOffer,
    SignedResourceOffer,
    domain,
)
from lilypad.errors import ChainError


class TokenClient:
    """The ERC-20 the market settles in."""

    def __init__(self, chain: Chain, address: str) -> None:
        self.chain = chain
        self.address = to_checksum_address(address)
        self.contract: Contract = chain.contract("LilypadToken", address)

    def balance_of(self, account: str) -> int:
        """Tokens held by ``account`` (outside the market)."""
        return int(self.chain.view(self.address, "balanceOf(address)", [account], ["uint256"])[0])

    def allowance(self, owner: str, spender: str) -> int:
        """What ``spender`` may still take from ``owner``."""
        fn = self.contract.functions.allowance(
            to_checksum_address(owner), to_checksum_address(spender)
        )
        return int(self.chain.call(fn))

    def approve(self, sender: LocalAccount, spender: str, amount: int) -> Receipt:
        """Let ``spender`` take up to ``amount`` of the sender's tokens."""
        fn = self.contract.functions.approve(to_checksum_address(spender), amount)
        return self.chain.transact(fn, sender)

    def transfer(self, sender: LocalAccount, to: str, amount: int) -> Receipt:
        """Send ``amount`` tokens to ``to``."""
        return self.chain.transact(
            self.contract.functions.transfer(to_checksum_address(to), amount), sender
        )

    def mint(self, owner: LocalAccount, to: str, amount: int) -> Receipt:
        """Mint new tokens (LilypadToken's owner only)."""
        return self.chain.transact(
            self.contract.functions.mint(to_checksum_address(to), amount), owner
        )

    def total_supply(self) -> int:
        """All tokens in existence."""
        return int(self.chain.call(self.contract.functions.totalSupply()))


class JobMarketClient:
    """Typed calls of a deployed JobMarket."""

    def __init__(self, chain: Chain, address: str) -> None:
        self.chain = chain
        self.address = to_checksum_address(address)
        self.contract: Contract = chain.contract("JobMarket", address)

    # --------------------------------------------------------------------------- views
    @property
    def token(self) -> TokenClient:
        """The token prices and collateral are paid in."""
        return TokenClient(self.chain, self.chain.call(self.contract.functions.token()))

    def domain(self) -> dict[str, Any]:
        """The EIP-712 domain offers for this market are signed under."""
        return domain(self.chain.chain_id, self.address)

    def balance_of(self, account: str) -> int:
        """``account``'s free balance in the market (deposited, not escrowed)."""
        return int(self.chain.view(self.address, "balanceOf(address)", [account], ["uint256"])[0])

    def result_tag(self, cid: bytes) -> str:
        """The tag a submitted ``cid`` is stored under (see ``deal_status().result_tag``)."""
        return "0x" + keccak(cid)[:24].hex()

    def deal_status(self, deal_id: str) -> DealStatus:
        """State, deadline and result tag of a deal."""
        state, deadline, tag = self.chain.view(
            self.address, "dealState(bytes32)", [deal_id], ["uint8", "uint48", "bytes24"]
        )
        return DealStatus(DealState(state), int(deadline), "0x" + bytes(tag).hex())

    def signature_valid(self, offer: JobOffer | ResourceOffer, signature: str) -> bool:
        """Whether ``signature`` is valid for ``offer`` here, exactly as ``createDeal`` checks:
        ECDSA by the offer's signer, or ERC-1271 ``isValidSignature`` when the signer is a
        contract (e.g. JobCreator, whose bridge signs for it)."""
        signer = offer.job_creator if isinstance(offer, JobOffer) else offer.provider
        if offer.signer(signature, self.chain.chain_id, self.address) == signer:
            return True
        if not self.chain.has_code(signer):
            return False
        erc1271 = self.chain.w3.eth.contract(address=to_checksum_address(signer), abi=_ERC1271_ABI)
        digest = bytes.fromhex(offer.digest(self.chain.chain_id, self.address)[2:])
        fn = erc1271.functions.isValidSignature(digest, _sig(signature))
        try:
            answer = self.chain.call(fn)
        except ChainError:  # reverted or no such function: not a valid contract signature
            return False
        return bytes(answer) == _ERC1271_MAGIC

    def nonce_used(self, signer: str, nonce: int) -> bool:
        """Whether ``signer``'s offer ``nonce`` has made a deal or was revoked."""
        used = self.chain.view(
            self.address, "nonceUsed(address,uint256)", [signer, nonce], ["bool"]
        )
        return bool(used[0])

    def is_solver(self, account: str) -> bool:
        """Whether ``account`` may create deals."""
        return bool(self.chain.call(self.contract.functions.isSolver(to_checksum_address(account))))

    def mediator(self, account: str) -> tuple[bool, int]:
        """Whether ``account`` is an active mediator, and its fee."""
        active, fee = self.chain.call(
            self.contract.functions.mediators(to_checksum_address(account))
        )
        return bool(active), int(fee)

    def required_collateral(self, price: int) -> int:
        """The least collateral a resource offer at ``price`` must carry here."""
        return int(self.chain.call(self.contract.functions.requiredCollateral(price)))

    def collateral_rule(self) -> tuple[int, int]:
        """``(minCollateral, collateralMultiple)``: collateral >= max(min, multiple x price)."""
        fns = self.contract.functions
        return int(self.chain.call(fns.minCollateral())), int(
            self.chain.call(fns.collateralMultiple())
        )

    def windows(self) -> tuple[int, int]:
        """The challenge window and the mediation timeout, in seconds."""
        fns = self.contract.functions
        return int(self.chain.call(fns.challengeWindow())), int(
            self.chain.call(fns.mediationTimeout())
        )

    # --------------------------------------------------------------------------- owner
    def set_solver(self, owner: LocalAccount, solver: str, active: bool = True) -> Receipt:
        """Register (or remove) a solver."""
        fn = self.contract.functions.setSolver(to_checksum_address(solver), active)
        return self.chain.transact(fn, owner)

    def set_mediator(
        self, owner: LocalAccount, mediator: str, fee: int, active: bool = True
    ) -> Receipt:
        """Register (or remove) a mediator with its fee per mediation."""
        fn = self.contract.functions.setMediator(to_checksum_address(mediator), active, fee)
        return self.chain.transact(fn, owner)

    # --------------------------------------------------------------------------- balances
    def deposit(self, sender: LocalAccount, amount: int) -> Receipt:
        """Move ``amount`` tokens into the sender's market balance, approving first if needed."""
        token = self.token
        if token.allowance(sender.address, self.address) < amount:
            token.approve(sender, self.address, amount)
        return self.chain.transact(self.contract.functions.deposit(amount), sender)

    def withdraw(self, sender: LocalAccount, amount: int) -> Receipt:
        """Take ``amount`` of the sender's free balance out of the market."""
        return self.chain.transact(self.contract.functions.withdraw(amount), sender)

    def invalidate_nonce(self, sender: LocalAccount, nonce: int) -> Receipt:
        """Revoke the sender's unused offer with ``nonce``."""
        return self.chain.transact(self.contract.functions.invalidateNonce(nonce), sender)

    # --------------------------------------------------------------------------- deals
    def create_deal(
        self, solver: LocalAccount, job: SignedJobOffer, resource: SignedResourceOffer
    ) -> Deal:
        """Create a deal from two signed offers (the sender must be a registered solver)."""
        fn = self.contract.functions.createDeal(
            job.offer.as_tuple(),
            self._signature(job),
            resource.offer.as_tuple(),
            self._signature(resource),
        )
        deals = self.deals_in(self.chain.transact(fn, solver))
        return deals[0]

    def create_deals(
        self,
        solver: LocalAccount,
        pairs: Sequence[tuple[SignedJobOffer, SignedResourceOffer]],
    ) -> tuple[list[Deal], Receipt]:
        """Create several deals in one transaction; all or none."""
        requests = [
            (j.offer.as_tuple(), self._signature(j), r.offer.as_tuple(), self._signature(r))
            for j, r in pairs
        ]
        receipt = self.chain.transact(self.contract.functions.createDeals(requests), solver)
        return self.deals_in(receipt), receipt

    def _signature(self, signed: SignedJobOffer | SignedResourceOffer) -> bytes:
        """An offer's signature as the market checks it: an ECDSA one in any form the solver
        takes (v 0/1, EIP-2098 compact) as 65 bytes with v 27/28; an ERC-1271 blob as it is."""
        chain_id = self.chain.chain_id
        return _sig(signed.offer.chain_signature(signed.signature, chain_id, self.address))

    def deals_in(self, receipt: Receipt) -> list[Deal]:
        """The deals a transaction created, in order."""
        event = self.contract.events.DealCreated()
        topic = bytes.fromhex(event.topic.removeprefix("0x"))
        deals = []
        for log in receipt.raw["logs"]:
            if log["address"] != self.address or bytes(log["topics"][0]) != topic:
                continue
            deals.append(Deal.from_event(event.process_log(log)["args"]["deal"]))
        if not deals:
            raise ChainError(f"transaction {receipt.tx_hash} created no deal")
        return deals

    def submit_result(self, provider: LocalAccount, deal: Deal, cid: bytes) -> Receipt:
        """The provider posts the binary CID of the job's outputs."""
        fn = self.contract.functions.submitResult(deal.as_tuple(), cid)
        return self.chain.transact(fn, provider)

    def submit_results(
        self, provider: LocalAccount, results: Sequence[tuple[Deal, bytes]]
    ) -> Receipt:
        """Post several results in one transaction."""
        fn = self.contract.functions.submitResults(
            [d.as_tuple() for d, _ in results], [c for _, c in results]
        )
        return self.chain.transact(fn, provider)

    def accept_result(self, job_creator: LocalAccount, deal: Deal) -> Receipt:
        """The job creator accepts the submitted result; the provider is paid at once."""
        fn = self.contract.functions.acceptResult(deal.as_tuple())
        return self.chain.transact(fn, job_creator)

    def claim_payment(self, provider: LocalAccount, deal: Deal) -> Receipt:
        """The provider takes its payment after an unchallenged challenge window."""
        return self.chain.transact(self.contract.functions.claimPayment(deal.as_tuple()), provider)

    def challenge_result(self, job_creator: LocalAccount, deal: Deal) -> Receipt:
        """The job creator disputes the result, paying the mediation fee."""
        fn = self.contract.functions.challengeResult(deal.as_tuple())
        return self.chain.transact(fn, job_creator)

    def resolve_mediation(
        self, mediator: LocalAccount, deal: Deal, *, provider_wins: bool, result_cid: bytes = b""
    ) -> Receipt:
        """The deal's mediator rules on a challenged result; ``result_cid`` is its own result
        (binary CID), which the job creator gets instead when the provider loses."""
        fn = self.contract.functions.resolveMediation(deal.as_tuple(), provider_wins, result_cid)
        return self.chain.transact(fn, mediator)

    def timeout_result(self, sender: LocalAccount, deal: Deal) -> Receipt:
        """Anyone: end a deal whose result is overdue (job creator refunded, provider slashed)."""
        return self.chain.transact(self.contract.functions.timeoutResult(deal.as_tuple()), sender)

    def timeout_judgement(self, sender: LocalAccount, deal: Deal) -> Receipt:
        """Anyone: pay the provider for a result nobody judged within the challenge window."""
        fn = self.contract.functions.timeoutJudgement(deal.as_tuple())
        return self.chain.transact(fn, sender)

    def timeout_mediation(self, sender: LocalAccount, deal: Deal) -> Receipt:
        """Anyone: end a mediation that was never resolved (both parties refunded)."""
        fn = self.contract.functions.timeoutMediation(deal.as_tuple())
        return self.chain.transact(fn, sender)


_ERC1271_MAGIC = bytes.fromhex("1626ba7e")
_ERC1271_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "isValidSignature",
        "stateMutability": "view",
        "inputs": [{"name": "hash", "type": "bytes32"}, {"name": "signature", "type": "bytes"}],
        "outputs": [{"name": "", "type": "bytes4"}],
    }
]


def _sig(signature: str) -> bytes:
    return bytes.fromhex(signature[2:] if signature.startswith("0x") else signature)
