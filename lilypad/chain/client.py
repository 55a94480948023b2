"""A web3.py connection to one chain: contracts, transactions, nonces and revert decoding.

This module is the one boundary where web3/requests exceptions become
:class:`~lilypad.errors.ChainError`: an unreachable RPC endpoint is
:class:`~lilypad.errors.ChainUnavailable`, a revert is :class:`~lilypad.errors.ContractReverted`
naming the contract's custom error and its arguments (``NonceUsed(signer=0x…, nonce=7)``).

The hot paths of the services skip web3: :meth:`Chain.view` (the views read for every offer and
deal), :meth:`Chain.block_number` and every transaction (estimated, priced, signed, sent and
waited for) post JSON-RPC through a :class:`~lilypad.chain.light.LightChain` on one pooled
connection, with the same errors. web3's middlewares and formatters cost several times the CPU of
the request itself (``bench/rpc.py``). web3 still encodes a transaction's call (structs) and reads
its mined receipt, once, so that the receipt's logs decode with the contracts' events.

Transactions are signed locally (eth-account) and sent raw, so the node needs no unlocked
accounts. Nonces are handed out by a :class:`NonceManager` per sender, so several threads can
send transactions for the same account at once without clashing.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import requests
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from eth_utils.address import to_checksum_address
from web3 import HTTPProvider, Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception, Web3RPCError
from web3.types import BlockIdentifier, FilterParams, LogReceipt, RPCEndpoint

from lilypad.chain.abi import load_artifact, reverted
from lilypad.chain.light import LightChain, Receipt, retry_taken_nonce
from lilypad.errors import ChainError, ChainUnavailable

T = TypeVar("T")


class NonceManager:
    """Hands out consecutive nonces per sender, safe across threads.

    The first nonce of a sender is read from the node (``pending``); after that the manager counts
    locally, so concurrent senders never reuse a nonce. If sending fails, the sender is re-read
    from the node on its next transaction.
    """

    def __init__(self, count: Callable[[str], int]) -> None:
        self._count = count  # an address's transaction count on the node, pending included
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._next: dict[str, int] = {}

    @contextmanager
    def reserve(self, address: str) -> Iterator[int]:
        """Hold the sender's lock and yield its next nonce, counted used if the block succeeds."""
        with self._guard:
            lock = self._locks.setdefault(address, threading.Lock())
        with lock:
            if address not in self._next:
                self._next[address] = self._count(address)
            nonce = self._next[address]
            try:
                yield nonce
            except BaseException:
                self._next.pop(address, None)
                raise
            self._next[address] = nonce + 1

    def reset(self, address: str | None = None) -> None:
        """Forget the counted nonces (all, or one sender's), e.g. after the chain was reverted."""
        with self._guard:
            if address is None:
                self._next.clear()
            else:
                self._next.pop(address, None)


class Chain:
    """A connection to one EVM chain over JSON-RPC.

    Args:
        rpc_url: The node's HTTP JSON-RPC URL.
        request_timeout: Seconds to wait for one RPC answer.
        receipt_timeout: Seconds to wait for a transaction to be mined.
    """

    def __init__(
        self, rpc_url: str, *, request_timeout: float = 30.0, receipt_timeout: float = 120.0
    ) -> None:
        self.rpc_url = rpc_url
        # NOTE: web3's validation middleware asks the node for its chain id before every eth_call
        # and eth_estimateGas: without the cache every view call is two round trips.
        provider = HTTPProvider(
            rpc_url,
            request_kwargs={"timeout": request_timeout},
            cache_allowed_requests=True,
            cacheable_requests={RPCEndpoint("eth_chainId")},
            request_cache_validation_threshold=None,  # the chain id needs no block to age
        )
        self.w3 = Web3(provider)
        self.light = LightChain(
            rpc_url, request_timeout=request_timeout, receipt_timeout=receipt_timeout
        )
        weakref.finalize(self, self.light.close)  # its pooled connection goes with the Chain
        self.nonces = NonceManager(self._pending_count)
        self._receipt_timeout = receipt_timeout

    @functools.cached_property
    def chain_id(self) -> int:
        """The chain id the node reports."""
        return self.rpc("chain id", lambda: int(self.w3.eth.chain_id))

    def rpc(self, action: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` (web3 calls), translating web3 and connection errors into ``ChainError``."""
        try:
            return fn()
        except ContractLogicError as exc:
            raise reverted(action, _revert_data(exc), exc.message) from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ChainUnavailable(
                f"{action}: cannot reach the chain at {self.rpc_url}",
                hint="is the node running? (lilypad chain up starts a local one)",
            ) from exc
        except TimeExhausted as exc:
            raise ChainError(
                f"{action}: transaction not mined in {self._receipt_timeout:g}s"
            ) from exc
        except Web3RPCError as exc:
            raise ChainError(f"{action}: the node refused: {exc.message or exc}") from exc
        except Web3Exception as exc:
            raise ChainError(f"{action}: {exc}") from exc

    def block_number(self) -> int:
        """The number of the latest block."""
        return self.light.block_number()

    def _pending_count(self, address: str) -> int:
        count = self.light.request("nonce", "eth_getTransactionCount", [address, "pending"])
        return int(count, 16)

    def view(
        self, to: str, signature: str, args: Sequence[Any], out: Sequence[str]
    ) -> tuple[Any, ...]:
        """Call the view ``signature`` of contract ``to`` without web3 (see
        :meth:`LightChain.view <lilypad.chain.light.LightChain.view>`: same arguments, errors)."""
        return self.light.view(to, signature, args, out)

    def balance(self, address: str) -> int:
        """The native (ETH) balance of ``address``, in wei."""
        account = to_checksum_address(address)
        return int(self.rpc("balance", lambda: self.w3.eth.get_balance(account)))

    def logs(
        self,
        action: str,
        address: str,
        topics: Sequence[str | Sequence[str] | None],
        from_block: int,
        to_block: BlockIdentifier = "latest",
    ) -> list[LogReceipt]:
        """The logs of ``address`` whose topics match (a list: any of them; None: any topic),
        oldest first, in one ``eth_getLogs``."""
        query = cast(
            FilterParams,
            {"address": address, "topics": topics, "fromBlock": from_block, "toBlock": to_block},
        )
        return list(self.rpc(action, lambda: self.w3.eth.get_logs(query)))

    def block_timestamp(self, tag: str | int = "latest") -> int:
        """The timestamp of block ``tag`` (``latest``, ``pending``, a number)."""
        block = self.rpc(f"{tag} block", lambda: self.w3.eth.get_block(cast(BlockIdentifier, tag)))
        return int(block["timestamp"])

    def contract(self, name: str, address: str) -> Contract:
        """The shipped contract ``name`` at ``address``."""
        return self.w3.eth.contract(
            address=to_checksum_address(address), abi=load_artifact(name).abi
        )

    def has_code(self, address: str) -> bool:
        """Whether a contract is deployed at ``address``."""
        return bool(
            self.rpc("get code", lambda: self.w3.eth.get_code(to_checksum_address(address)))
        )

    def deploy(self, name: str, *args: Any, sender: LocalAccount) -> tuple[str, Receipt]:
        """Deploy contract ``name`` with constructor ``args``; returns its address and receipt."""
        artifact = load_artifact(name)
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        data = _hex_bytes(factory.constructor(*args).data_in_transaction)
        receipt = self._send(f"deploy {name}", None, data, sender)
        address = receipt.raw["contractAddress"]
        if address is None:
            raise ChainError(f"deploy {name}: the receipt names no contract address")
        return to_checksum_address(address), receipt

    def transact(self, fn: ContractFunction, sender: LocalAccount) -> Receipt:
        """Send a contract call as a transaction from ``sender`` and wait until it is mined.

        Raises:
            ContractReverted: The call would revert (found while estimating gas) or did revert.
            ChainUnavailable: The node cannot be reached.
        """
        # web3's own encoding of the call (structs as tuples, addresses checked)
        data = _hex_bytes(fn._encode_transaction_data())
        return self._send(fn.fn_name, fn.address, data, sender)

    def call(self, fn: ContractFunction, *, block: BlockIdentifier = "latest") -> Any:
        """Call a view function (or simulate a transaction) and return its result."""
        return self.rpc(fn.fn_name, lambda: fn.call(block_identifier=block))

    def _send(self, action: str, to: str | None, data: bytes, sender: LocalAccount) -> Receipt:
        """Send a transaction calling ``to`` with ``data`` (None: deploy ``data``) and wait
        until it is mined, through the lean path (web3's transaction building and receipt polling
        cost the services several times the CPU of the requests, ``bench/rpc.py``) with this
        chain's nonce counting; the mined receipt is read once through web3, so that its logs
        decode with the contracts' events."""

        def send() -> tuple[str, dict[str, Any]]:
            with self.nonces.reserve(sender.address) as nonce:
                return self.light.sign_and_send(action, to, data, sender, nonce=nonce)

        # On a taken nonce the manager forgot the sender, so the next try reads it afresh.
        tx_hash, tx = retry_taken_nonce(send)
        self.light.wait_for_receipt(action, tx_hash)
        raw = self.rpc(action, lambda: self.w3.eth.get_transaction_receipt(cast(HexStr, tx_hash)))
        receipt = Receipt(tx_hash, raw["blockNumber"], raw["gasUsed"], raw)
        if raw["status"] != 1:
            raise self.light.explain_failure(action, tx, receipt)
        return receipt


def _hex_bytes(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))


def _revert_data(exc: ContractLogicError) -> str | None:
    data = exc.data
    if isinstance(data, dict):
        return data.get("data")
    return data
