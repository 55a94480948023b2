"""Following contract events with confirmations, resumable from a block.

An :class:`EventFollower` reads logs of the named events in block ranges, only up to
``head - confirmations`` (so a shallow reorg cannot take back what was reported), decodes them
with the contracts' ABIs (without web3's formatters: JSON-RPC through the chain's lean client,
eth-abi for the values), and remembers the next block to read in :attr:`EventFollower.next_block`.
A daemon persists that number and passes it back as ``from_block`` after a restart, so no event is
missed and none is reported twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils.abi import collapse_if_tuple
from web3.contract import Contract

from lilypad.chain.client import Chain
from lilypad.chain.crypto import to_checksum_address
from lilypad.errors import ChainError


@dataclass(frozen=True)
class ChainEvent:
    """One decoded event.

    Attributes:
        name: The event's name (``DealCreated``).
        args: Its arguments by name; bytes as ``0x`` hex, structs as dicts.
        address: The contract that emitted it.
        block_number: The block it is in.
        log_index: Its position in that block.
        tx_hash: The transaction that emitted it.
    """

    name: str
    args: dict[str, Any]
    address: str
    block_number: int
    log_index: int
    tx_hash: str


class EventFollower:
    """Reads events of ``contracts`` from ``from_block`` on, ``confirmations`` blocks behind head.

    Args:
        chain: The chain connection.
        contracts: The contracts to follow (web3 contract objects, with their ABIs).
        from_block: The first block to read (resume from a persisted :attr:`next_block`).
        confirmations: How many blocks an event must be buried under before it is reported.
        events: Only these event names (all events of the contracts when None).
        batch_blocks: The widest block range one ``eth_getLogs`` asks for.
    """

    def __init__(
        self,
        chain: Chain,
        contracts: Sequence[Contract],
        *,
        from_block: int = 0,
        confirmations: int = 0,
        events: Sequence[str] | None = None,
        batch_blocks: int = 2000,
    ) -> None:
        if confirmations < 0 or batch_blocks < 1 or from_block < 0:
            raise ChainError(
                f"event follower: bad settings confirmations={confirmations} "
                f"batch_blocks={batch_blocks} from_block={from_block}"
            )
        self.chain = chain
        self.next_block = from_block
        self.confirmations = confirmations
        self._batch = batch_blocks
        self._addresses = [c.address for c in contracts]
        self._by_topic: dict[bytes, _EventShape] = {}
        for contract in contracts:
            for event in contract.all_events():
                if events is None or event.event_name in events:
                    topic = bytes.fromhex(event.topic.removeprefix("0x"))
                    self._by_topic[topic] = _EventShape(event.abi)

    def poll(self) -> list[ChainEvent]:
        """Every new confirmed event, oldest first; advances :attr:`next_block`."""
        head = self.chain.block_number()
        safe = head - self.confirmations
        found: list[ChainEvent] = []
        while self.next_block <= safe:
            to_block = min(safe, self.next_block + self._batch - 1)
            found.extend(self._read(self.next_block, to_block))
            self.next_block = to_block + 1
        return found

    def follow(
        self, stop: threading.Event | None = None, *, poll_interval: float = 1.0
    ) -> Iterator[ChainEvent]:
        """Yield events as they are confirmed, until ``stop`` is set."""
        while stop is None or not stop.is_set():
            yield from self.poll()
            if stop is None:
                time.sleep(poll_interval)
            elif stop.wait(poll_interval):
                return

    def _read(self, from_block: int, to_block: int) -> list[ChainEvent]:
        if not self._by_topic:
            return []
        query = {
            "fromBlock": hex(from_block),
            "toBlock": hex(to_block),
            "address": self._addresses,
            "topics": [["0x" + t.hex() for t in self._by_topic]],
        }
        # JSON-RPC and decoding without web3: its log formatters and event decoding cost a
        # service's follower several times the request itself (bench/rpc.py)
        logs = self.chain.light.request("get logs", "eth_getLogs", [query]) or []
        events = []
        for log in logs:
            topics = [bytes.fromhex(t.removeprefix("0x")) for t in log["topics"]]
            shape = self._by_topic.get(topics[0]) if topics else None
            if shape is None or log.get("removed"):
                continue
            events.append(
                ChainEvent(
                    name=shape.name,
                    args=shape.decode(topics[1:], bytes.fromhex(log["data"].removeprefix("0x"))),
                    address=to_checksum_address(log["address"]),
                    block_number=int(log["blockNumber"], 16),
                    log_index=int(log["logIndex"], 16),
                    tx_hash=str(log["transactionHash"]).lower(),
                )
            )
        return sorted(events, key=lambda e: (e.block_number, e.log_index))


class _EventShape:
    """How to decode one event's logs: its name and its arguments' ABI, indexed and in data."""

    def __init__(self, abi: Mapping[str, Any]) -> None:
        self.name: str = abi["name"]
        inputs = list(abi["inputs"])
        self._indexed = [i for i in inputs if i.get("indexed")]
        self._unindexed = [i for i in inputs if not i.get("indexed")]
        self._data_types = [collapse_if_tuple(dict(i)) for i in self._unindexed]
        self._order = [i["name"] for i in inputs]

    def decode(self, topics: Sequence[bytes], data: bytes) -> dict[str, Any]:
        """The arguments by name, as :class:`ChainEvent` holds them: addresses checksummed,
        bytes as ``0x`` hex, structs as dicts. An indexed argument of a dynamic type is its
        topic (the hash of the value), as the log holds it.

        Raises:
            ChainError: the log does not fit the event (too few topics, data cut short).
        """
        if len(topics) != len(self._indexed):
            raise ChainError(
                f"event {self.name}: {len(topics)} indexed topics, the ABI has {len(self._indexed)}"
            )
        found: dict[str, Any] = {}
        try:
            for argument, topic in zip(self._indexed, topics, strict=True):
                kind = argument["type"]
                if kind in ("string", "bytes") or kind.endswith("]") or kind.startswith("tuple"):
                    found[argument["name"]] = topic
                else:
                    found[argument["name"]] = _named(argument, abi_decode([kind], topic)[0])
            values = abi_decode(self._data_types, data)
        except (DecodingError, ValueError) as exc:
            raise ChainError(f"event {self.name}: the log does not decode: {exc}") from exc
        for argument, value in zip(self._unindexed, values, strict=True):
            found[argument["name"]] = _named(argument, value)
        return {name: _plain(found[name]) for name in self._order}


def _named(argument: Mapping[str, Any], value: Any) -> Any:
    """A decoded ABI value with its structs as dicts by component name, addresses checksummed."""
    kind: str = argument["type"]
    if kind.endswith("]"):  # an array: each element as the element type
        element = {**argument, "type": kind[: kind.rindex("[")]}
        return [_named(element, v) for v in value]
    if kind == "tuple":
        parts = argument["components"]
        return {part["name"]: _named(part, v) for part, v in zip(parts, value, strict=True)}
    if kind == "address":
        return to_checksum_address(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
