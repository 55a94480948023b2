"""The job creator's calls to the solver: post, poll and cancel an offer, read the event stream.

Private to :mod:`lilypad.creator`: the runner holds one :class:`SolverCalls` and knows the solver
only through it, so that this module alone speaks the solver's HTTP protocol here.
"""

from __future__ import annotations

import contextlib
import json
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from lilypad.creator.records import Step
from lilypad.errors import SolverError
from lilypad.jobs import JobSubmission
from lilypad.tls import verify_for

#: The longest pause between two tries while a solver or an IPFS node is unreachable.
MAX_RETRY_PAUSE_S = 30.0
#: An offer is posted no later than this many seconds before it expires (the solver refuses one
#: with less than 10 s left).
POST_LIFETIME_S = 30


class DepositShort(SolverError):
    """The solver found the deposit short of the offer (it may be a moment behind the chain)."""


class SolverCalls:
    """One solver's HTTP API, as the job creator uses it.

    Args:
        solver_url: The solver's base URL.
    """

    def __init__(self, solver_url: str) -> None:
        self.solver_url = solver_url
        self.http = httpx.Client(base_url=solver_url, timeout=30, verify=verify_for(solver_url))

    def close(self) -> None:
        self.http.close()

    def events(self, party: str) -> EventStream:
        """Start reading the events of ``party`` (from now on)."""
        return EventStream(self.http, party)

    def committed(self, address: str) -> int:
        """What the open job offers of ``address`` may still take from its deposit (0 when the
        solver cannot say)."""
        try:
            response = self.http.get(f"/api/v1/accounts/{address}")
        except httpx.TransportError:
            # Counted as nothing: posting waits for the solver, which then refuses an offer the
            # deposit does not cover (402), and the offer is topped up and posted again.
            return 0
        if response.status_code != 200:
            return 0  # a solver without the endpoint: its refusal will say what is short
        return int(response.json().get("committed_by_job_offers", 0))

    def post_offer(
        self,
        submission: JobSubmission,
        *,
        clock: Callable[[], float],
        on_step: Callable[[Step], None],
    ) -> str:
        """Post the offer and return its id; while the solver cannot be reached, try again (a
        solver restarting loses no job) until the offer has too little life left for the solver
        to take it.

        Raises:
            DepositShort: the solver found the deposit short (HTTP 402).
            SolverError: the solver refused the offer, or could not be reached in time.
        """
        body = submission.model_dump(mode="json")
        last_chance = submission.offer.expiry - POST_LIFETIME_S
        pause = 0.5
        while True:
            try:
                response = self.http.post("/api/v1/job_offers", json=body)
                break
            except httpx.TransportError as exc:
                if clock() + pause > last_chance:
                    raise SolverError(
                        f"cannot reach the solver at {self.solver_url}: {exc}; the "
                        "offer was never posted and no funds moved",
                        hint="is it running? lilypad network status",
                    ) from None
                on_step(Step("solver_retry", {"error": str(exc), "pause": pause}))
                time.sleep(pause)
                pause = min(2 * pause, MAX_RETRY_PAUSE_S)
        if response.status_code == 402:
            raise DepositShort(f"the solver refused the job offer: {_error(response)}")
        if response.status_code != 201:
            raise SolverError(f"the solver refused the job offer: {_error(response)}")
        return str(response.json()["id"])

    def cancel(self, offer_id: str, signature: str) -> None:
        """Withdraw the offer; if the solver is unreachable the offer simply expires (nothing can
        match it after)."""
        with contextlib.suppress(httpx.TransportError):
            self.http.post(f"/api/v1/job_offers/{offer_id}/cancel", json={"signature": signature})

    def poll_offer(self, offer_id: str) -> list[dict[str, Any]]:
        """The deal of a job offer, read directly (in case the event stream missed it)."""
        try:
            body = self.http.get(f"/api/v1/job_offers/{offer_id}").json()
        except (httpx.TransportError, ValueError):
            return []
        deal = body.get("deal")
        if deal and deal.get("state") not in ("matched", "failed"):
            return [{"kind": "deal.created", **deal}]
        return []

    def poll_deal(self, deal_id: str) -> list[dict[str, Any]]:
        """The deal's result, read directly (in case the event stream missed it)."""
        try:
            body = self.http.get(f"/api/v1/deals/{deal_id}").json()
        except (httpx.TransportError, ValueError):
            return []
        if body.get("result_cid"):
            return [{"kind": "deal.result_submitted", **body}]
        return []


class EventStream:
    """The solver's event stream for one party, read in a thread into a queue."""

    def __init__(self, http: httpx.Client, party: str) -> None:
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._http = http
        self._party = party
        self._ready = threading.Event()
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._read, daemon=True, name="solver-events")
        self._thread.start()
        self._ready.wait(5)

    def _read(self) -> None:
        after = -1  # from now on: the stream starts at the newest event
        while not self._stop.is_set():
            try:
                with self._http.stream(
                    "GET",
                    "/api/v1/events",
                    timeout=httpx.Timeout(30, read=60),
                    params={"party": self._party, "after": after},
                ) as response:
                    self._response = response
                    self._ready.set()
                    if response.status_code != 200:  # busy (429, 503) or down: back off
                        self._stop.wait(1 + random.random() * 4)
                        continue
                    for line in response.iter_lines():
                        if line.startswith("data: "):
                            payload = json.loads(line.removeprefix("data: "))
                            after = int(payload.get("seq", after))
                            self._queue.put(payload)
            except Exception:
                self._ready.set()
                self._stop.wait(1)
            finally:
                self._response = None

    def for_offer(
        self,
        offer_id: str,
        *,
        deadline: float,
        poll: Callable[[], list[dict[str, Any]]],
        clock: Callable[[], float] = time.time,
    ) -> Iterator[dict[str, Any]]:
        """Events about ``offer_id`` until ``clock()`` passes ``deadline``."""
        last_poll = time.monotonic()
        while True:
            if clock() > deadline:
                return
            try:
                payload = self._queue.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() - last_poll > 3:
                    last_poll = time.monotonic()
                    yield from poll()
                continue
            if payload.get("job_offer_id") == offer_id or payload.get("id") == offer_id:
                yield payload

    def close(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            response.close()  # ends the reader's blocking read
        # Not joined: a daemon thread that may still wait for the solver's next byte, and nothing
        # is lost by leaving it (waiting cost every `lilypad run` up to 0.1 s at exit).


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text[:200]
