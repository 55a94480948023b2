"""The job creator's use of the solver: post, poll and cancel its offer, follow its events.

Private to :mod:`lilypad.creator`. The protocol itself (routes, models, errors, the event
stream) is :mod:`lilypad.solver_api`'s; this module is the job creator's policy over it: what is
retried, what a failed look means (nothing: the chain is looked at too), and how long to wait.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from lilypad import solver_api as api
from lilypad.creator.records import Step
from lilypad.errors import SolverError
from lilypad.jobs import JobSubmission
from lilypad.solver_api import (
    DealEvent,
    DealView,
    EventStream,
    OfferEvent,
    SolverBusy,
    SolverClient,
    SolverUnreachable,
)

log = logging.getLogger("lilypad.creator")

#: The longest pause between two tries while a solver or an IPFS node is unreachable.
MAX_RETRY_PAUSE_S = 30.0
#: The longest a job offer's post is retried while the solver answers busy (429 or 503: too
#: fast, too many open offers), each time after the ``Retry-After`` it gives.
MAX_BUSY_S = 120.0
#: An offer is posted no later than this many seconds before it expires (the solver refuses one
#: with less than 10 s left).
POST_LIFETIME_S = 30
#: Seconds for each request to the solver.
REQUEST_TIMEOUT_S = 30.0
#: Seconds between two looks elsewhere (the solver's view of the offer, the chain) while the
#: event stream says nothing of the offer: it may have missed the event, or the solver be down.
LOOK_EVERY_S = 3.0
#: The longest wait on the event stream at a time, so that deadlines are seen in time.
WAIT_STEP_S = 0.5
#: How long one read of a running job's logs waits at the solver for a line (long poll).
FOLLOW_WAIT_S = 2.0
#: How long the job waits, once its result is in, for the log lines not read yet.
FINISH_S = 5.0


class SolverCalls:
    """One solver, as the job creator uses it.

    Args:
        solver_url: The solver's base URL.
    """

    def __init__(self, solver_url: str) -> None:
        self.solver_url = solver_url
        self.client = SolverClient(solver_url, timeout=REQUEST_TIMEOUT_S)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> SolverCalls:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def events(self, party: str) -> OfferEvents:
        """The events of ``party`` from now on, connected before this returns when the solver
        answers: an offer posted after it misses none of its events."""
        stream = self.client.events(party, after=-1)
        try:
            stream.open()
        except SolverError as exc:
            # Down or busy: the stream connects when it can, and the looks at the offer and at
            # the chain (OfferEvents.about) find what it missed meanwhile.
            log.info("solver event stream not open yet: %s", exc.message)
        return OfferEvents(stream)

    def committed(self, address: str) -> int:
        """What the open job offers of ``address`` may still take from its deposit (0 when the
        solver cannot say)."""
        try:
            return self.client.account(address).committed_by_job_offers
        except SolverError:
            # Counted as nothing: posting waits for the solver, which then refuses an offer the
            # deposit does not cover (402), and the offer is topped up and posted again.
            return 0

    def post_offer(
        self,
        submission: JobSubmission,
        *,
        clock: Callable[[], float],
        on_step: Callable[[Step], None],
    ) -> str:
        """Post the offer and return its id; while the solver cannot be reached or is busy, try
        again (a solver restarting loses no job; a busy one is asked again after the
        ``Retry-After`` it gives) until the offer has too little life left for the solver to
        take it, and for at most :data:`MAX_BUSY_S` while it is busy.

        Raises:
            DepositShort: the solver found the deposit short (HTTP 402).
            SolverRefused: the solver refused the offer.
            SolverUnreachable, SolverBusy: not taken in time; the offer was never posted (the
                message says so, and what the solver last answered).
        """
        last_chance = submission.offer.expiry - POST_LIFETIME_S
        give_up = time.monotonic() + MAX_BUSY_S
        pause = 0.5
        while True:
            try:
                return self.client.post_job_offer(submission).id
            except (SolverUnreachable, SolverBusy) as exc:
                wait = pause
                if isinstance(exc, SolverBusy) and exc.retry_after is not None:
                    wait = min(exc.retry_after, MAX_RETRY_PAUSE_S)  # as long as it asks
                if clock() + wait > last_chance or (
                    isinstance(exc, SolverBusy) and time.monotonic() + wait > give_up
                ):
                    raise _gave_up(exc) from exc
                on_step(Step("solver_retry", {"error": exc.message, "pause": wait}))
                time.sleep(wait)
                pause = min(2 * pause, MAX_RETRY_PAUSE_S)

    def cancel(self, offer_id: str, signature: str) -> None:
        """Withdraw the offer. If the solver cannot be reached, or no longer holds the offer as
        pending, there is nothing more to do: an expired offer can match nothing."""
        with contextlib.suppress(SolverError):
            self.client.cancel_offer("job", offer_id, signature)

    def withdraw(self, offer_id: str, signature: str) -> api.OfferState | None:
        """Withdraw the offer at the solver, for someone who asked to (``lilypad jobs cancel``):
        its state there afterwards (``cancelled``, or why it could not be: ``matched``,
        ``dealt``, ``expired``, ``rejected``), None when the solver has no such offer (it can
        match nothing).

        Raises:
            SolverUnreachable, SolverBusy: not withdrawn: the offer may still be taken.
        """
        try:
            self.client.cancel_offer("job", offer_id, signature)
            return api.OfferState.CANCELLED
        except (SolverUnreachable, SolverBusy):
            raise
        except api.SolverRefused:
            pass  # not pending (any more): its state says why
        try:
            return self.client.job_offer(offer_id).state
        except api.NotFound:
            return None

    def offer_deal(self, offer_id: str) -> DealView | None:
        """The job offer's deal once the chain has it, as the solver says (None when it cannot
        say: the event stream may have missed it, or the solver be down)."""
        try:
            deal = self.client.job_offer(offer_id).deal
        except SolverError:
            return None
        if deal is None or deal.deal is None:
            return None
        if deal.state in (api.DealState.MATCHED, api.DealState.FAILED):
            return None
        return deal

    def deal_result(self, deal_id: str) -> DealView | None:
        """The deal once its result is submitted, as the solver says (None when it cannot say,
        or there is none yet)."""
        try:
            deal = self.client.deal(deal_id)
        except SolverError:
            return None
        return deal if deal.result_cid else None


def _gave_up(exc: SolverUnreachable | SolverBusy) -> SolverError:
    """The error of a post given up: what the solver last said, and that nothing was spent."""
    if isinstance(exc, SolverBusy):
        return SolverBusy(
            f"the solver kept refusing the job offer as busy ({exc.status}), retried as it asked "
            f"for up to {MAX_BUSY_S:g}s or until the offer had too little life left: "
            f"{exc.error}; the offer was never posted and no funds moved",
            exc.status,
            exc.error,
            exc.retry_after,
        )
    return SolverUnreachable(
        f"{exc.message}; the offer was never posted and no funds moved",
        hint="is it running? lilypad network status",
    )


class OfferEvents:
    """The job creator's event stream, read with deadlines. A stream the solver ends with an
    error is given up (logged): the job goes on by looking at the offer and the chain."""

    def __init__(self, stream: EventStream) -> None:
        self._stream: EventStream | None = stream

    def about(
        self, offer_id: str, *, deadline: float, clock: Callable[[], float] = time.time
    ) -> Iterator[OfferEvent | DealEvent | None]:
        """The events about job offer ``offer_id`` and its deal, until ``clock()`` passes
        ``deadline``; None every :data:`LOOK_EVERY_S` seconds, when the caller looks elsewhere
        (the solver's view, the chain) for what the stream may have missed."""
        last_look = time.monotonic()
        while clock() <= deadline:
            event = self._next()
            if event is not None and _about(event, offer_id):
                yield event
            if time.monotonic() - last_look >= LOOK_EVERY_S:
                last_look = time.monotonic()
                yield None

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()

    def _next(self) -> OfferEvent | DealEvent | None:
        if self._stream is None:
            time.sleep(WAIT_STEP_S)
            return None
        try:
            return self._stream.get(WAIT_STEP_S)
        except SolverError as exc:
            log.warning(
                "solver event stream ended (%s); looking at the solver and the chain instead", exc
            )
            self._stream.close()
            self._stream = None
            return None


def _about(event: OfferEvent | DealEvent, offer_id: str) -> bool:
    if isinstance(event, DealEvent):
        return event.job_offer_id == offer_id
    return offer_id in event.ids()


class LogFollower:
    """Follows a running job's log lines at the solver, in a thread of its own, handing each
    line and each new progress to ``on_step`` (``log`` and ``progress`` steps), in order.

    Best effort: a solver that is down, or refuses, costs the job nothing (it is tried again
    while the job runs). :meth:`finish` takes the last lines and stops.

    Args:
        client: The solver's API.
        deal_id: The deal whose job runs.
        sign: The EIP-191 signature (0x hex) of a text by the job creator.
        on_step: Called with each step, from the follower's thread.
    """

    def __init__(
        self,
        client: SolverClient,
        deal_id: str,
        sign: Callable[[str], str],
        on_step: Callable[[Step], None],
    ) -> None:
        self.client, self.deal_id, self.sign, self.on_step = client, deal_id, sign, on_step
        self.after = 0
        self._progress: api.LogProgress | None = None
        self._stopping = threading.Event()
        # held while lines are handed on; closed once finish returns: a poll still in flight then
        # (a slow solver) hands nothing on after the job's own last steps
        self._handing = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="creator-logs", daemon=True)
        self._thread.start()

    def finish(self, timeout: float = FINISH_S) -> None:
        """Take the lines not had yet (at most ``timeout`` seconds), then stop: no step is
        handed on after this returns."""
        self._stopping.set()
        self._thread.join(timeout)
        with self._handing:
            self._closed = True

    def _loop(self) -> None:
        while True:
            stopping = self._stopping.is_set()
            try:
                page = self.client.deal_logs(
                    self.deal_id, self.sign, after=self.after, wait=0 if stopping else FOLLOW_WAIT_S
                )
            except api.NotAllowed as exc:
                log.info("the solver refuses this job's logs: %s", exc.message)
                return
            except SolverError as exc:
                log.debug("job logs not read: %s", exc.message)
                if stopping or self._stopping.wait(WAIT_STEP_S * 2):
                    return
                continue
            self._emit(page)
            if (stopping or page.ended) and len(page.lines) < api.MAX_LOG_BATCH:
                return

    def _emit(self, page: api.DealLogs) -> None:
        with self._handing:
            if self._closed:
                return
            for line in page.lines:
                self.after = max(self.after, line.seq)
                self.on_step(Step("log", {"seq": line.seq, "text": line.text}))
            if page.progress is not None and page.progress != self._progress:
                self._progress = page.progress
                self.on_step(Step("progress", page.progress.model_dump()))
