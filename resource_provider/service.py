"""The skeleton the node daemons share: follow the market's events, one pass at a time.

The resource provider (:mod:`resource_provider.daemon`), the mediator
(:mod:`resource_provider.mediator`) and the job-creator bridge (:mod:`resource_provider.bridge`)
are each a :class:`ChainService`. Its main loop runs :meth:`~ChainService.step` every
``poll_interval_s``, or at once when woken: read the new confirmed events of the role's
contracts, apply each, save the next block to read in the role's state (``meta.json``, so a
restart resumes there), then do the role's own work of a pass. A pass that fails is logged and
the next one tries again: everything a pass decides is on disk before it acts.

A role supplies :meth:`~ChainService._apply` (one event) and :meth:`~ChainService._act` (the
rest of a pass); it may run loops of its own beside the main one (:meth:`~ChainService._loops`),
end their blocking reads at stop (:meth:`~ChainService._interrupt`), and hand over what it owns
with :meth:`~ChainService._owns`, which :meth:`~ChainService.stop` closes once the loops have
ended, the last handed over first.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, ClassVar

from lilypad.chain.events import ChainEvent, EventFollower
from lilypad.errors import ChainError
from resource_provider.state import JsonStore

if TYPE_CHECKING:
    from web3.contract import Contract

    from lilypad.chain.client import Chain


class ChainService(ABC):
    """One node daemon: a main loop over the chain's events and the role's work.

    Args:
        chain: The chain connection.
        contracts: The contracts whose events the role follows.
        events: The names of those events.
        store: The role's state; ``next_block`` there says where to resume reading.
        start_block: Where to start reading when no position is saved.
        confirmations: Blocks an event must be buried under before it is applied.
        poll_interval_s: Seconds between passes.
    """

    #: Names the role's threads and its log lines (``provider``).
    role: ClassVar[str]
    #: The role's logger.
    logger: ClassVar[logging.Logger]
    #: Seconds :meth:`stop` waits for each thread to end (a pass may be sending a transaction).
    join_timeout_s: ClassVar[float] = 10.0

    def __init__(
        self,
        *,
        chain: Chain,
        contracts: Sequence[Contract],
        events: Sequence[str],
        store: JsonStore,
        start_block: int = 0,
        confirmations: int = 0,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.store = store
        self.poll_interval_s = poll_interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._owned = ExitStack()
        self._follower = EventFollower(
            chain,
            contracts,
            from_block=int(store.meta("next_block", start_block)),
            confirmations=confirmations,
            events=events,
        )

    # ------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Run the main loop, and the role's own loops, in background threads."""
        for name, target in [("main", self._main_loop), *self._loops()]:
            thread = threading.Thread(target=target, name=f"{self.role}-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """End the loops (a pass under way finishes), then close what the service owns."""
        self._stop.set()
        self._wake.set()
        self._interrupt()
        for thread in self._threads:
            thread.join(timeout=self.join_timeout_s)
        self._owned.close()

    def wait(self) -> None:
        """Block until :meth:`stop` (or Ctrl-C in the caller)."""
        while not self._stop.wait(1.0):
            pass

    def step(self) -> None:
        """One pass: apply the chain's new events, save the position, then the role's work."""
        for event in self._follower.poll():
            self._apply(event)
        self.store.set_meta(next_block=self._follower.next_block)
        self._act()

    # ------------------------------------------------------------------- for the roles
    @abstractmethod
    def _apply(self, event: ChainEvent) -> None:
        """Take one new event of the followed contracts into the role's state."""

    @abstractmethod
    def _act(self) -> None:
        """The role's work of a pass, once the events are applied."""

    def _loops(self) -> list[tuple[str, Callable[[], None]]]:
        """The role's own loops, by name, each run in its thread until :attr:`_stop` is set."""
        return []

    def _interrupt(self) -> None:  # noqa: B027 - a hook; most roles have nothing to interrupt
        """End the blocking reads of the role's own loops (called at stop, before joining)."""

    def _owns(self, close: Callable[[], Any]) -> None:
        """Close ``close`` at :meth:`stop`, after the loops, before what was handed over
        earlier."""
        self._owned.callback(close)

    def _main_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except ChainError as exc:
                self.logger.warning("chain: %s", exc)
            except Exception:  # one bad pass must not end the daemon; the state is on disk
                self.logger.exception("%s pass failed", self.role)
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()
