"""Following contract events with confirmations, resumable from a block.

An :class:`EventFollower` reads logs of the named events in block ranges, only up to
``head - confirmations`` (so a shallow reorg cannot take back what was reported), decodes them
with the contracts' ABIs, and remembers the next block to read in :attr:`EventFollower.next_block`.
A daemon persists that number and passes it back as ``from_block`` after a restart, so no event is
missed and none is reported twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from web3.contract import Contract

from lilypad.chain.client import Chain
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
        self._by_topic: dict[bytes, Any] = {}
        for contract in contracts:
            for event in contract.all_events():
                if events is None or event.event_name in events:
                    self._by_topic[bytes.fromhex(event.topic.removeprefix("0x"))] = event

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
        params: Any = {
            "fromBlock": from_block,
            "toBlock": to_block,
            "address": self._addresses,
            "topics": [["0x" + t.hex() for t in self._by_topic]],
        }
        logs = self.chain.rpc("get logs", lambda: self.chain.w3.eth.get_logs(params))
        events = []
        for log in logs:
            event = self._by_topic.get(bytes(log["topics"][0]))
            if event is None:
                continue
            decoded = event.process_log(log)
            events.append(
                ChainEvent(
                    name=decoded["event"],
                    args={k: _plain(v) for k, v in decoded["args"].items()},
                    address=decoded["address"],
                    block_number=decoded["blockNumber"],
                    log_index=decoded["logIndex"],
                    tx_hash="0x" + bytes(decoded["transactionHash"]).hex(),
                )
            )
        return sorted(events, key=lambda e: (e.block_number, e.log_index))


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
