"""The event streams, served by one reader for all of them.

An idle stream costs no thread and no query. One task, :meth:`EventHub._read_loop`, reads new
events from the store (in a worker thread, one read at a time) whenever the solver says something
changed, and at least every :data:`POLL_S`; it keeps the newest :data:`RECENT` events in memory
with the addresses each concerns, and wakes every stream. Each stream then picks, in memory, the
events after its position that name its party. Only a stream that starts (or falls) behind what
the hub holds reads the store itself, until it has caught up.

Streams are capped, in all and per party, so that connections cannot exhaust the server:
:class:`StreamsFull` (HTTP 503) and :class:`TooManyStreams` (HTTP 429).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from pydantic import ValidationError

from lilypad.errors import SolverError
from solver.service import Solver
from solver.store import StoredEvent

log = logging.getLogger("lilypad.solver")

#: Seconds between reads of the store when nothing woke the reader.
POLL_S = 2.0
#: Events kept in memory for streams to pick from (a few KB each, with their JSON: about a
#: minute of a busy market's, 9 events a job). A stream further behind reads the store, by the
#: party's index.
RECENT = 2_000
#: Events one read takes from the store.
READ_LIMIT = 1000
#: Streams reading the store at once while they catch up (each in a worker thread).
CATCH_UP_READERS = 4


class StreamsFull(SolverError):
    """The solver serves as many event streams as it takes (HTTP 503: try again later)."""


class TooManyStreams(SolverError):
    """One party has as many event streams open as it may (HTTP 429)."""


@dataclass
class Subscription:
    """One open stream's place: released when the stream ends."""

    party: str | None
    released: bool = field(default=False)


class EventHub:
    """Serves every event stream of one solver from one reader.

    Args:
        solver: Whose store to read; the hub listens to its changes.
        max_streams: The most streams open at once, in all.
        streams_per_party: The most streams open at once for one party (or for no party).
    """

    def __init__(self, solver: Solver, max_streams: int = 1000, streams_per_party: int = 8):
        self._store = solver.store
        self.max_streams = max_streams
        self.streams_per_party = streams_per_party
        self._open: dict[str | None, int] = {}
        self._total = 0
        self._events: list[StoredEvent] = []  # the newest ones, by seq
        self._base = 0  # the hub holds every event after this seq up to _head
        self._head = 0
        self._tick = asyncio.Event()  # set (and replaced) when new events were read
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._closed = False
        self._catch_up = asyncio.Semaphore(CATCH_UP_READERS)
        solver.add_listener(self._on_change)

    # ------------------------------------------------------------------------- places
    def subscribe(self, party: str | None) -> Subscription:
        """Take a place for a stream of ``party``; starts the reader on first use.

        Raises:
            StreamsFull: the solver serves as many streams as it takes.
            TooManyStreams: the party has as many as it may.
        """
        if self._total >= self.max_streams:
            raise StreamsFull(
                f"the solver serves {self._total} event streams, the most it takes; try again later"
            )
        if self._open.get(party, 0) >= self.streams_per_party:
            raise TooManyStreams(
                f"{party or 'all parties'} already has {self.streams_per_party} event streams "
                "open, the most one party may; close one first"
            )
        self._open[party] = self._open.get(party, 0) + 1
        self._total += 1
        return Subscription(party)

    def release(self, subscription: Subscription) -> None:
        if subscription.released:
            return
        subscription.released = True
        self._total -= 1
        left = self._open[subscription.party] - 1
        if left:
            self._open[subscription.party] = left
        else:
            del self._open[subscription.party]

    # ------------------------------------------------------------------------ streams
    async def stream(
        self,
        subscription: Subscription,
        after: int,
        heartbeat_s: float,
        *,
        position: int | None = None,
    ) -> AsyncIterator[bytes]:
        """The server-sent events of a subscription after event ``after``, with a comment line
        every ``heartbeat_s`` of silence. With ``position``, the stream first names it in a
        message of an ``id:`` only (no event), so a client that started "from now on" knows
        where it is before any event comes, and resumes from there (``Last-Event-ID``)."""
        if position is not None:
            yield f"id: {position}\n\n".encode()
        await self._start()
        loop = asyncio.get_running_loop()
        party, seq = subscription.party, after
        quiet_since = loop.time()
        while not self._closed:
            if seq < self._base:  # behind what the hub holds: read the store, then look again
                async with self._catch_up:
                    head = self._head
                    batch = await asyncio.to_thread(
                        self._store.events_after, seq, party, READ_LIMIT
                    )
                if len(batch) < READ_LIMIT:  # that was every event of the party up to head
                    seq = max(seq, head)
                for event in batch:
                    yield _sse(event)
                    seq = max(seq, event.seq)
                quiet_since = loop.time() if batch else quiet_since
                continue
            batch = self._held_after(seq, party)
            seq = max(seq, self._head)
            for event in batch:
                yield _sse(event)
            if batch:
                quiet_since = loop.time()
                continue
            tick = self._tick  # no await since the look: no event can slip in between
            try:
                async with asyncio.timeout_at(quiet_since + heartbeat_s):
                    await tick.wait()
            except TimeoutError:
                yield b": keep-alive\n\n"
                quiet_since = loop.time()

    def close(self) -> None:
        """End every stream (at shutdown: a server waits for open responses to finish, and a
        stream would not). Call it in the event loop."""
        self._closed = True
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()
        if self._reader is not None:
            self._reader.cancel()

    def _held_after(self, seq: int, party: str | None) -> list[StoredEvent]:
        start = bisect.bisect_right(self._events, seq, key=lambda event: event.seq)
        events = self._events[start:]
        if party is None:
            return events
        return [event for event in events if party in event.parties]

    # ------------------------------------------------------------------------- reader
    async def _start(self) -> None:
        if self._reader is None:
            self._loop = asyncio.get_running_loop()
            self._changed = asyncio.Event()
            self._reader = asyncio.create_task(self._read_loop(), name="solver-event-hub")
        await self._ready.wait()

    def _on_change(self) -> None:
        """From any thread: the solver wrote events."""
        loop, changed = self._loop, self._changed
        if loop is None or changed is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
            loop.call_soon_threadsafe(changed.set)

    async def _read_loop(self) -> None:
        assert self._changed is not None
        while not self._ready.is_set():
            try:  # the hub holds events from now on; earlier ones are read by each stream
                self._base = self._head = await asyncio.to_thread(self._store.last_event_seq)
                self._ready.set()
            except Exception:
                log.exception("reading the event log failed; streams wait")
                await asyncio.sleep(POLL_S)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self._changed.wait()
            self._changed.clear()
            try:
                while await self._read_once() == READ_LIMIT:
                    pass
            except Exception:  # the store failed this once; streams wait for the next read
                log.exception("reading events for the streams failed")

    async def _read_once(self) -> int:
        batch = await asyncio.to_thread(self._store.events_with_parties, self._head, READ_LIMIT)
        if not batch:
            return 0
        self._events.extend(batch)
        self._head = batch[-1].seq
        if len(self._events) > RECENT:
            drop = len(self._events) - RECENT
            self._base = self._events[drop - 1].seq
            del self._events[:drop]
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()
        return len(batch)


def _sse(event: StoredEvent) -> bytes:
    try:
        data = event.data
    except ValidationError as exc:  # a row this version did not write: send it as it is
        log.error("event %d (%s) is not a protocol event: %s", event.seq, event.kind, exc)
        data = json.dumps({"seq": event.seq, "kind": event.kind, **event.payload})
    return f"id: {event.seq}\nevent: {event.kind}\ndata: {data}\n\n".encode()


class LogWaiters:
    """Wakes the log reads waiting for a deal's next lines (``GET .../logs?wait=S``), capped
    like the event streams: in all (:class:`StreamsFull`) and per reader (:class:`TooManyStreams`).

    :meth:`posted` may be called from any thread; the rest runs in the event loop.
    """

    def __init__(self, max_waiting: int = 1000, per_reader: int = 8) -> None:
        self.max_waiting, self.per_reader = max_waiting, per_reader
        self._events: dict[str, asyncio.Event] = {}
        self._by_reader: dict[str, int] = {}
        self._by_deal: dict[str, int] = {}
        self._total = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def wait(self, deal_id: str, reader: str, timeout: float) -> None:
        """Wait until a batch of ``deal_id`` lands, or ``timeout`` seconds pass."""
        if self._total >= self.max_waiting:
            raise StreamsFull(
                f"the solver holds {self._total} log reads waiting, the most it takes; try again"
            )
        if self._by_reader.get(reader, 0) >= self.per_reader:
            raise TooManyStreams(
                f"{reader} already has {self.per_reader} log reads waiting, the most one reader "
                "may; wait for one to answer"
            )
        self._loop = asyncio.get_running_loop()
        event = self._events.setdefault(deal_id, asyncio.Event())
        self._total += 1
        self._by_reader[reader] = self._by_reader.get(reader, 0) + 1
        self._by_deal[deal_id] = self._by_deal.get(deal_id, 0) + 1
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await event.wait()
        finally:
            self._total -= 1
            self._by_reader[reader] -= 1
            if not self._by_reader[reader]:
                del self._by_reader[reader]
            self._by_deal[deal_id] -= 1
            if not self._by_deal[deal_id]:  # nobody waits on this deal: forget its event
                del self._by_deal[deal_id]
                if self._events.get(deal_id) is event:
                    del self._events[deal_id]

    def posted(self, deal_id: str) -> None:
        """From any thread: a batch of ``deal_id`` was kept, or the deal's state changed."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(self._wake, deal_id)

    def _wake(self, deal_id: str) -> None:
        event = self._events.pop(deal_id, None)
        if event is not None:
            event.set()
