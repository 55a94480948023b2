"""A web3-free chain client for what the job creator (``lilypad run``) does on chain.

``lilypad run`` is a short-lived process, and importing web3 and eth-account costs it about 1.3 s,
more than the whole protocol takes on a local network (``bench/e2e_overhead.py``). The job
creator reads a few views and sends a few transactions, so :class:`LightChain` speaks JSON-RPC
over httpx, asks for everything a transaction needs in one batched request, and signs with
:mod:`lilypad.chain.crypto`. :class:`CreatorMarket` is the job creator's part of
:class:`~lilypad.chain.market.JobMarketClient`: the same method names, receipts and errors
(:class:`~lilypad.errors.ContractReverted` naming the contract's custom error).

The services (solver, provider, mediator, bridge) keep the web3 client
(:mod:`lilypad.chain.client`): they start once, and they follow events and deploy contracts.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol, TypeVar

import httpx

from lilypad.chain.abi import reverted
from lilypad.chain.crypto import (
    SignedTransaction,
    decode_words,
    encode_words,
    keccak,
    selector,
    to_checksum_address,
)
from lilypad.chain.offers import Deal
from lilypad.errors import ChainError, ChainUnavailable, ContractReverted
from lilypad.tls import verify_for

T = TypeVar("T")

#: How often a transaction is re-signed with a fresh nonce when another sender took its nonce.
NONCE_RETRIES = 20
#: What nodes (anvil, geth) say when a transaction's nonce was used meanwhile.
NONCE_TAKEN = ("nonce too low", "already imported", "already known", "replacement transaction")
#: Gas beyond the node's estimate: state can change between the estimate and the block.
GAS_MARGIN = 0.2
#: The ABI tuple of ``JobMarket.Deal``.
_DEAL = f"({','.join(Deal.ABI_TYPES)})"
#: Blocks asked for in one ``eth_getLogs`` (public nodes limit the range).
LOG_RANGE = 5000
#: ``dealState`` reads sent in one batched request.
STATE_BATCH = 100
#: Topics of the market events the job creator follows on chain (no solver needed).
_DEAL_CREATED = keccak(text=f"DealCreated(bytes32,address,address,{_DEAL},uint48)")
_RESULT_SUBMITTED = keccak(text="ResultSubmitted(bytes32,bytes,uint48)")
_MEDIATION_RESOLVED = keccak(text="MediationResolved(bytes32,address,bool,bytes)")


class DealState(IntEnum):
    """A deal's state in the market (``JobMarket.State``).

    ``NONE``: unknown, or settled on a common path (accepted, claimed, judged by timeout: the
    provider was paid and the slot deleted). The last three are final states the market keeps:
    ``UPHELD`` (the mediator ruled for the provider), ``REFUNDED`` (the job creator got the price
    and the collateral: no result in time, or the mediator ruled against the provider) and
    ``MEDIATION_EXPIRED`` (no ruling in time: both refunded).
    """

    NONE = 0
    CREATED = 1
    SUBMITTED = 2
    CHALLENGED = 3
    UPHELD = 4
    REFUNDED = 5
    MEDIATION_EXPIRED = 6

    def is_terminal(self) -> bool:
        """Whether the deal has ended (nothing can be called on it any more)."""
        return self not in (DealState.CREATED, DealState.SUBMITTED, DealState.CHALLENGED)


@dataclass(frozen=True)
class DealStatus:
    """What the market stores about a deal."""

    state: DealState
    deadline: int
    result_tag: str


@dataclass(frozen=True)
class PartyDeal:
    """A deal of one account, with its state now (:meth:`CreatorMarket.deals_of`)."""

    deal: Deal
    status: DealStatus


@dataclass(frozen=True)
class Receipt:
    """What a mined transaction left: its hash, block, gas and raw receipt (for event decoding)."""

    tx_hash: str
    block_number: int
    gas_used: int
    raw: Any


class Sender(Protocol):
    """What signs a transaction: a :class:`~lilypad.chain.crypto.Signer` or an eth-account
    account (whose ``sign_transaction`` returns an object with ``raw_transaction`` too)."""

    @property
    def address(self) -> str: ...

    def sign_transaction(self, tx: dict[str, Any]) -> SignedTransaction | Any: ...


def retry_taken_nonce(send: Callable[[], T]) -> T:
    """Run ``send`` (sign with the sender's next nonce and send), again while the node says
    another sender took that nonce: another process signs for the account too (two
    `lilypad run` at once). Random, growing waits keep senders that clashed once from clashing
    again in step."""
    for attempt in range(NONCE_RETRIES + 1):
        try:
            return send()
        except ChainError as exc:
            if attempt == NONCE_RETRIES or not _nonce_taken(exc):
                raise
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
    raise AssertionError("unreachable")


def _nonce_taken(exc: ChainError) -> bool:
    """Whether the node refused a transaction because its nonce was used meanwhile."""
    text = str(exc.__cause__ or exc).lower()
    return any(sign in text for sign in NONCE_TAKEN)


class LightChain:
    """JSON-RPC to one EVM chain over httpx.

    Args:
        rpc_url: The node's HTTP JSON-RPC URL.
        request_timeout: Seconds to wait for one RPC answer.
        receipt_timeout: Seconds to wait for a transaction to be mined.
    """

    def __init__(
        self, rpc_url: str, *, request_timeout: float = 30.0, receipt_timeout: float = 120.0
    ) -> None:
        self.rpc_url = rpc_url
        self._http = httpx.Client(timeout=request_timeout, verify=verify_for(rpc_url))
        self._receipt_timeout = receipt_timeout

    def close(self) -> None:
        self._http.close()

    @functools.cached_property
    def chain_id(self) -> int:
        """The chain id the node reports."""
        return int(self.request("chain id", "eth_chainId", []), 16)

    def request(self, action: str, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call; ``action`` names it in errors."""
        return self.batch(action, [(method, params)])[0]

    def batch(self, action: str, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """Several JSON-RPC calls in one HTTP request, their results in order.

        Raises:
            ChainUnavailable: the node cannot be reached.
            ContractReverted: a call reverted (decoded from its revert data).
            ChainError: the node refused a call or answered something else than JSON-RPC.
        """
        body = [
            {"jsonrpc": "2.0", "id": i, "method": method, "params": params}
            for i, (method, params) in enumerate(calls)
        ]
        try:
            response = self._http.post(self.rpc_url, json=body if len(body) > 1 else body[0])
        except httpx.TransportError as exc:
            raise ChainUnavailable(
                f"{action}: cannot reach the chain at {self.rpc_url}",
                hint="is the node running? (lilypad chain up starts a local one)",
            ) from exc
        try:
            answers = response.json()
        except ValueError:
            answers = None
        if isinstance(answers, dict):
            answers = [answers]
        if response.status_code != 200 or not isinstance(answers, list):
            raise ChainError(
                f"{action}: {self.rpc_url} answered HTTP {response.status_code}, not JSON-RPC"
            )
        by_id = {answer.get("id"): answer for answer in answers if isinstance(answer, dict)}
        results = []
        for i, (method, _) in enumerate(calls):
            answer = by_id.get(i)
            if answer is None:
                raise ChainError(f"{action}: the node did not answer {method}")
            if "error" in answer:
                raise _refused(action, answer["error"])
            results.append(answer.get("result"))
        return results

    def call(self, action: str, to: str, data: bytes, *, block: str | int = "latest") -> bytes:
        """``eth_call`` of ``data`` at contract ``to``; the raw return data."""
        tag = hex(block) if isinstance(block, int) else block
        result = self.request(action, "eth_call", [{"to": to, "data": "0x" + data.hex()}, tag])
        return bytes.fromhex(str(result).removeprefix("0x"))

    def view(
        self, to: str, signature: str, args: Sequence[Any], out: Sequence[str]
    ) -> tuple[Any, ...]:
        """Call the view ``signature`` (``"nonceUsed(address,uint256)"``, static argument and
        result types only) of contract ``to``; its results, decoded as ``out``.

        Raises:
            ChainUnavailable: The node cannot be reached.
            ContractReverted: The call reverted.
            ChainError: The node refused the call, or answered fewer bytes than ``out`` takes
                (no contract at ``to``).
        """
        name, _, rest = signature.partition("(")
        types = [t for t in rest.removesuffix(")").split(",") if t]
        answer = self.call(name, to, selector(signature) + encode_words(types, args))
        try:
            return decode_words(out, answer)
        except ValueError as exc:
            raise ChainError(f"{name}: {exc} (is there a contract at {to}?)") from exc

    def block_number(self) -> int:
        """The number of the latest block."""
        return int(self.request("block number", "eth_blockNumber", []), 16)

    def logs(
        self, action: str, address: str, topics: Sequence[bytes | None], from_block: int
    ) -> list[dict[str, Any]]:
        """The logs of ``address`` matching ``topics`` (None: any) from ``from_block`` to the
        latest block, oldest first, asked for in ranges of :data:`LOG_RANGE` blocks."""
        wanted = ["0x" + t.hex() if t is not None else None for t in topics]
        last = self.block_number()
        found: list[dict[str, Any]] = []
        for start in range(max(0, from_block), last + 1, LOG_RANGE):
            query = {
                "address": address,
                "topics": wanted,
                "fromBlock": hex(start),
                "toBlock": hex(min(last, start + LOG_RANGE - 1)),
            }
            found.extend(self.request(action, "eth_getLogs", [query]) or [])
        return found

    def balance(self, address: str) -> int:
        """``address``'s ether (what pays for gas), in wei."""
        return int(self.request("ether balance", "eth_getBalance", [address, "latest"]), 16)

    def block_timestamp(self, tag: str = "latest") -> int:
        """The timestamp of block ``tag`` (``latest``, ``pending``)."""
        block = self.request(f"{tag} block", "eth_getBlockByNumber", [tag, False])
        if not isinstance(block, dict):
            raise ChainError(f"{tag} block: the node has none")
        return int(block["timestamp"], 16)

    def send(self, action: str, to: str, data: bytes, sender: Sender) -> Receipt:
        """Send a transaction calling ``to`` with ``data`` and wait until it is mined.

        Raises:
            ContractReverted: the call would revert (found while estimating gas) or did revert.
            ChainUnavailable: the node cannot be reached.
            ChainError: not mined within the receipt timeout, or refused by the node.
        """
        tx_hash, tx = retry_taken_nonce(lambda: self.sign_and_send(action, to, data, sender))
        raw = self.wait_for_receipt(action, tx_hash)
        receipt = Receipt(tx_hash, int(raw["blockNumber"], 16), int(raw["gasUsed"], 16), raw)
        if int(raw["status"], 16) != 1:
            raise self.explain_failure(action, tx, receipt)
        return receipt

    def sign_and_send(
        self, action: str, to: str | None, data: bytes, sender: Sender, *, nonce: int | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Estimate, price, sign and send one transaction calling ``to`` with ``data`` (``to``
        None: create the contract ``data`` deploys), with ``nonce`` or else the sender's next
        one on the node (pending included); its hash and the transaction as signed."""
        call = {"from": sender.address, "data": "0x" + data.hex()}
        if to is not None:
            call["to"] = to
        calls: list[tuple[str, list[Any]]] = [
            ("eth_estimateGas", [call]),  # a revert shows here, before anything is sent
            ("eth_maxPriorityFeePerGas", []),
            ("eth_gasPrice", []),
            ("eth_getBlockByNumber", ["latest", False]),
        ]
        if nonce is None:
            calls.append(("eth_getTransactionCount", [sender.address, "pending"]))
        gas, tip, price, block, *counted = self.batch(action, calls)
        estimate = int(gas, 16)
        tx: dict[str, Any] = {
            "chainId": self.chain_id,
            "nonce": nonce if nonce is not None else int(counted[0], 16),
            "data": data,
            "value": 0,
            "gas": estimate + int(estimate * GAS_MARGIN),
        }
        if to is not None:
            tx["to"] = to
        if block.get("baseFeePerGas") is not None:
            # EIP-1559, priced as web3 does: room for the base fee to double before it is too low
            priority = int(tip, 16)
            tx["maxPriorityFeePerGas"] = priority
            tx["maxFeePerGas"] = priority + 2 * int(block["baseFeePerGas"], 16)
        else:
            tx["gasPrice"] = int(price, 16)  # no base fee: the chain takes legacy (EIP-155) only
        signed = sender.sign_transaction(tx)
        raw = "0x" + bytes(signed.raw_transaction).hex()
        return str(self.request(action, "eth_sendRawTransaction", [raw])), tx

    def wait_for_receipt(self, action: str, tx_hash: str) -> dict[str, Any]:
        """The raw receipt of ``tx_hash`` once it is mined (polled, backing off to 0.25 s)."""
        deadline = time.monotonic() + self._receipt_timeout
        pause = 0.01
        while True:
            receipt = self.request(action, "eth_getTransactionReceipt", [tx_hash])
            if isinstance(receipt, dict) and receipt.get("blockNumber"):
                return receipt
            if time.monotonic() > deadline:
                raise ChainError(
                    f"{action}: transaction {tx_hash} not mined in {self._receipt_timeout:g}s"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.25)

    def explain_failure(self, action: str, tx: dict[str, Any], receipt: Receipt) -> ChainError:
        """Replay a mined, failed transaction on its block's state to learn its revert reason.

        The replay runs on the state after its block, with that block's timestamp: the failed
        transaction changed nothing, and a deadline check sees the same time it saw."""
        replay = {"from": receipt.raw.get("from"), "data": "0x" + tx["data"].hex()}
        if tx.get("to") is not None:
            replay["to"] = tx["to"]
        try:
            self.request(action, "eth_call", [replay, hex(receipt.block_number)])
        except ContractReverted as exc:
            return exc
        except ChainError:
            pass
        return ChainError(f"{action}: transaction {receipt.tx_hash} failed on chain")


def _refused(action: str, error: dict[str, Any]) -> ChainError:
    """A JSON-RPC error as a ChainError: a revert decoded into the contract's error."""
    message = str(error.get("message", error))
    data = error.get("data")
    if isinstance(data, dict):  # some nodes nest it: {"data": {"data": "0x…"}}
        data = data.get("data")
    if "revert" in message.lower() or error.get("code") == 3:
        return reverted(action, data if isinstance(data, str) else None, message)
    return ChainError(f"{action}: the node refused: {message}")


class CreatorMarket:
    """The job creator's calls of a deployed JobMarket (and its token), on a :class:`LightChain`.

    Method names and results are those of :class:`~lilypad.chain.market.JobMarketClient`.
    """

    def __init__(self, chain: LightChain, address: str) -> None:
        self.chain = chain
        self.address = to_checksum_address(address)

    def _view(self, signature: str, args: list[Any], out: list[str]) -> tuple[Any, ...]:
        return self.chain.view(self.address, signature, args, out)

    @functools.cached_property
    def token(self) -> str:
        """The address of the token prices and collateral are paid in."""
        return str(self._view("token()", [], ["address"])[0])

    def balance_of(self, account: str) -> int:
        """``account``'s free balance in the market (deposited, not escrowed)."""
        return int(self._view("balanceOf(address)", [account], ["uint256"])[0])

    def wallet_balance(self, account: str) -> int:
        """Tokens ``account`` holds outside the market (what a deposit can take)."""
        return int(self.chain.view(self.token, "balanceOf(address)", [account], ["uint256"])[0])

    def deal_status(self, deal_id: str) -> DealStatus:
        """State, deadline and result tag of a deal."""
        state, deadline, tag = self._view(
            "dealState(bytes32)", [deal_id], ["uint8", "uint48", "bytes24"]
        )
        return DealStatus(DealState(state), int(deadline), "0x" + bytes(tag).hex())

    def deposit(self, sender: Sender, amount: int) -> Receipt:
        """Move ``amount`` tokens into the sender's market balance, approving first if needed."""
        self.approve(sender, amount)
        data = selector("deposit(uint256)") + encode_words(["uint256"], [amount])
        return self.chain.send("deposit", self.address, data, sender)

    def approve(self, sender: Sender, amount: int) -> Receipt | None:
        """Let the market take ``amount`` of the sender's tokens (for a deposit), unless it
        already may; the approval's receipt, or None when none was needed."""
        (allowance,) = self.chain.view(
            self.token, "allowance(address,address)", [sender.address, self.address], ["uint256"]
        )
        if allowance >= amount:
            return None
        approve = selector("approve(address,uint256)")
        data = approve + encode_words(["address", "uint256"], [self.address, amount])
        return self.chain.send("approve", self.token, data, sender)

    def withdraw(self, sender: Sender, amount: int) -> Receipt:
        """Move ``amount`` of the sender's free market balance back to its wallet."""
        data = selector("withdraw(uint256)") + encode_words(["uint256"], [amount])
        return self.chain.send("withdraw", self.address, data, sender)

    def deals_of(self, account: str, from_block: int) -> list[PartyDeal]:
        """Every deal naming ``account`` as job creator or provider, made since ``from_block``,
        with its state now: the market's ``DealCreated`` events (indexed by both parties), so
        deals of any solver count and no solver can leave one out, and ``dealState`` of each,
        read in batches of :data:`STATE_BATCH`."""
        party = _address_topic(account)
        deals: dict[str, Deal] = {}
        for topics in ([_DEAL_CREATED, None, party], [_DEAL_CREATED, None, None, party]):
            for log in self.chain.logs("deals of an account", self.address, topics, from_block):
                deal = Deal.from_event(decode_words(Deal.ABI_TYPES, _data(log)))
                deals.setdefault(deal.deal_id, deal)  # a deal with oneself is found twice
        found = list(deals.values())
        states: list[DealStatus] = []
        view = selector("dealState(bytes32)")
        for start in range(0, len(found), STATE_BATCH):
            calls = []
            for deal in found[start : start + STATE_BATCH]:
                data = view + encode_words(["bytes32"], [deal.deal_id])
                calls.append(
                    ("eth_call", [{"to": self.address, "data": "0x" + data.hex()}, "latest"])
                )
            for answer in self.chain.batch("dealState", calls):
                state, deadline, tag = decode_words(
                    ["uint8", "uint48", "bytes24"], bytes.fromhex(str(answer).removeprefix("0x"))
                )
                states.append(DealStatus(DealState(state), int(deadline), "0x" + bytes(tag).hex()))
        return [PartyDeal(deal, status) for deal, status in zip(found, states, strict=True)]

    def accept_result(self, job_creator: Sender, deal: Deal) -> Receipt:
        """Accept the submitted result; the provider is paid at once."""
        return self._settle("acceptResult", job_creator, deal)

    def challenge_result(self, job_creator: Sender, deal: Deal) -> Receipt:
        """Dispute the result, paying the mediation fee."""
        return self._settle("challengeResult", job_creator, deal)

    def timeout_result(self, sender: Sender, deal: Deal) -> Receipt:
        """End a deal whose result is overdue (job creator refunded, provider slashed)."""
        return self._settle("timeoutResult", sender, deal)

    def timeout_mediation(self, sender: Sender, deal: Deal) -> Receipt:
        """End a mediation nobody resolved in time (both parties refunded)."""
        return self._settle("timeoutMediation", sender, deal)

    def mediator_fee(self, mediator: str) -> int:
        """What a challenge with ``mediator`` costs (0 if it is not a registered mediator)."""
        active, fee = self._view("mediators(address)", [mediator], ["bool", "uint96"])
        return int(fee) if active else 0

    def nonce_used(self, signer: str, nonce: int) -> bool:
        """Whether ``signer``'s offer ``nonce`` made a deal (or was revoked)."""
        return bool(self._view("nonceUsed(address,uint256)", [signer, nonce], ["bool"])[0])

    # The chain is the truth: a job creator follows its deal there too, so that a solver that is
    # down (or lost an event) cannot keep a result from it.
    def find_deal(self, job_creator: str, job_offer_hash: str, from_block: int) -> Deal | None:
        """The deal made from the job offer with struct hash ``job_offer_hash``, if any."""
        topics = [_DEAL_CREATED, None, _address_topic(job_creator)]
        for log in self.chain.logs("deal created", self.address, topics, from_block):
            deal = Deal.from_event(decode_words(Deal.ABI_TYPES, _data(log)))
            if deal.job_offer_hash == job_offer_hash.lower():
                return deal
        return None

    def result_cid(self, deal_id: str, from_block: int) -> bytes | None:
        """The CID the provider submitted for ``deal_id`` (binary), if any."""
        topics = [_RESULT_SUBMITTED, bytes.fromhex(deal_id.removeprefix("0x"))]
        for log in self.chain.logs("result submitted", self.address, topics, from_block):
            return _bytes_at(_data(log), 0)
        return None

    def mediation(self, deal_id: str, from_block: int) -> tuple[bool, bytes] | None:
        """``(provider_wins, the mediator's own result CID)`` once the mediator ruled."""
        topics = [_MEDIATION_RESOLVED, bytes.fromhex(deal_id.removeprefix("0x"))]
        for log in self.chain.logs("mediation resolved", self.address, topics, from_block):
            data = _data(log)
            return bool(decode_words(["bool"], data)[0]), _bytes_at(data, 1)
        return None

    def _settle(self, name: str, sender: Sender, deal: Deal) -> Receipt:
        data = selector(f"{name}({_DEAL})") + encode_words(Deal.ABI_TYPES, deal.as_tuple())
        return self.chain.send(name, self.address, data, sender)


def _address_topic(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(to_checksum_address(address)[2:])


def _data(log: dict[str, Any]) -> bytes:
    return bytes.fromhex(str(log.get("data", "0x")).removeprefix("0x"))


def _bytes_at(data: bytes, word: int) -> bytes:
    """The ``bytes`` value whose offset is ABI word ``word`` of ``data`` (an event's data).

    Raises:
        ChainError: the data does not hold a well-formed ``bytes`` there.
    """
    try:
        offset = int.from_bytes(data[32 * word : 32 * word + 32], "big")
        length = int.from_bytes(data[offset : offset + 32], "big")
        value = data[offset + 32 : offset + 32 + length]
    except (IndexError, OverflowError, ValueError):
        value = b""
        length = -1
    if len(value) != length:
        raise ChainError("an event's data does not hold the bytes it announces")
    return value
