"""Live logs: a running job's stderr lines and progress, relayed to its job creator through the
solver (``POST /api/v1/deals/{deal_id}/logs``, signed by the provider).

Best effort, and apart from the job: the executor's pump thread only numbers each line and puts
it in a bounded queue (a full queue drops it); a sender thread of its own posts the queued lines
at most once per ``interval_s``. A refused or failed post loses its lines, a 429 holds them for
``Retry-After`` (the queue dropping what comes meanwhile), and nothing of it reaches the job,
its result or the deal. The solver learns of every line it did not get from the numbering, and
counts them as dropped. The mediator never relays: only the deal's provider may post.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading

from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from lilypad import solver_api as api
from lilypad.errors import SolverError
from lilypad.solver_api import LogBatch, LogProgress, SolverBusy, SolverClient

log = logging.getLogger("lilypad.provider")

#: Lines waiting to be sent; more are dropped (the solver counts them).
QUEUE_LINES = 2000
#: The most UTF-8 bytes of lines in one post (the solver takes bodies up to 256 KiB).
BATCH_BYTES = 128 * 1024
#: The longest a 429's ``Retry-After`` holds the sender.
MAX_HOLD_S = 30.0


class LogRelay:
    """Relays one job's stderr lines to the solver, for deal ``deal_id``.

    Args:
        solver: The solver's API.
        account: The provider's key: signs each batch.
        deal_id: The deal whose job runs.
        interval_s: The least time between two posts.
        flush_s: How long :meth:`close` waits for the last lines to go.
    """

    def __init__(
        self,
        solver: SolverClient,
        account: LocalAccount,
        deal_id: str,
        *,
        interval_s: float = 0.5,
        flush_s: float = 2.0,
    ) -> None:
        self.solver, self.account, self.deal_id = solver, account, deal_id
        self.interval_s, self.flush_s = interval_s, flush_s
        self._queue: queue.Queue[tuple[int, str]] = queue.Queue(QUEUE_LINES)
        self._seq = 0  # the number of the last line the job wrote
        self._progress: LogProgress | None = None
        self._carry: tuple[int, str] | None = None  # taken from the queue, for the next batch
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._send_loop, name="provider-logs", daemon=True)
        self._thread.start()

    def line(self, text: str) -> None:
        """One stderr line (from the executor's pump thread): numbered and queued, never
        waited on."""
        self._seq += 1
        cut = text[: api.MAX_LOG_LINE]
        progress = api.parse_progress(cut)
        if progress is not None:
            self._progress = progress
        with contextlib.suppress(queue.Full):  # the gap in the numbering tells the solver
            self._queue.put_nowait((self._seq, cut))

    def close(self) -> None:
        """The job has ended: send what is left (at most ``flush_s`` seconds), then stop."""
        self._closing.set()
        self._thread.join(self.flush_s)

    def _send_loop(self) -> None:
        held: LogBatch | None = None
        while True:
            closing = self._closing.wait(self.interval_s)
            batch = held or self._next_batch(final=closing)
            held = None
            if batch is not None:
                wait = self._post(batch)
                if wait is not None and not closing:
                    held = batch
                    self._closing.wait(wait)
            if closing and batch is not None and not batch.lines:  # the last, empty one
                return

    def _next_batch(self, *, final: bool) -> LogBatch | None:
        """The queued lines, up to a post's bounds, as a signed batch; on the last pass, an
        empty batch numbered after the last line when the queue lost the tail (so the solver
        counts it)."""
        lines: list[tuple[int, str]] = []
        size = 0
        while len(lines) < api.MAX_LOG_BATCH and size < BATCH_BYTES:
            if self._carry is not None:
                (seq, text), self._carry = self._carry, None
            else:
                try:
                    seq, text = self._queue.get_nowait()
                except queue.Empty:
                    break
            if lines and seq != lines[-1][0] + 1:  # a gap: the rest goes in the next batch
                self._carry = (seq, text)
                break
            lines.append((seq, text))
            size += len(json.dumps(text))
        if not lines:
            if not final:
                return None
            return self._signed(self._seq + 1, (), self._progress)
        return self._signed(lines[0][0], tuple(t for _, t in lines), self._progress)

    def _signed(
        self, from_seq: int, lines: tuple[str, ...], progress: LogProgress | None
    ) -> LogBatch:
        unsigned = LogBatch(from_seq=from_seq, lines=lines, progress=progress, signature="")
        message = api.log_batch_message(self.deal_id, unsigned)
        signed = self.account.sign_message(encode_defunct(text=message))
        return unsigned.model_copy(update={"signature": "0x" + bytes(signed.signature).hex()})

    def _post(self, batch: LogBatch) -> float | None:
        """Post a batch; the seconds to hold it for when the solver asks to wait (429)."""
        try:
            self.solver.post_logs(self.deal_id, batch)
        except SolverBusy as exc:
            return min(exc.retry_after or 1.0, MAX_HOLD_S)
        except SolverError as exc:
            log.debug("deal %s: log lines not relayed: %s", self.deal_id, exc)
        except Exception:  # never let a log relay fail anything
            log.exception("deal %s: relaying log lines failed", self.deal_id)
        return None
