"""The order book: matches job requests with resource offers.

Rules (the solver's contract with both sides):

* A resource offer sells ``slots`` identical job slots, each with the offer's machine (GPUs and
  per-GPU VRAM, CPUs, RAM, disk); one job books one whole slot.
* A job matches the **cheapest eligible** offer; a price tie goes to the older offer.
  Eligible means: the offer serves the job's module at a price no higher than the job's maximum,
  its slot machine covers every need of the job, it has a free slot, both sides trust at least one
  common mediator, and neither has expired.
* Jobs are matched **oldest first**; a job that cannot be matched now waits without blocking
  younger jobs that can.
* A slot is booked at match time and only freed by :meth:`OrderBook.release`, so a provider's
  capacity is never booked twice.

Offers are indexed by module, then by *class*: (a mediator the offer trusts, the slot machine).
Every offer of a class fits exactly the same jobs, so inside a class only the cheapest live offer
matters: each class keeps a heap by (price, age). A job looks at the classes that fit it (the
list is cached per kind of job) and takes the cheapest head, so matching costs about the number
of fitting classes per job, whatever the number of offers.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

INF = float("inf")
#: The module key of an offer that serves any module at one price.
ANY_MODULE = "*"


class Machine(NamedTuple):
    """Resources: what a job needs, or what one slot of an offer has. VRAM is per GPU.

    A named tuple rather than a dataclass: it is hashed on every match, and tuples hash in C.
    """

    gpus: int = 0
    vram_gb: float = 0.0
    cpus: float = 0.0
    ram_gb: float = 0.0
    disk_gb: float = 0.0

    def covers(self, needs: Machine) -> bool:
        return (
            self.gpus >= needs.gpus
            and (needs.gpus == 0 or self.vram_gb >= needs.vram_gb)
            and self.cpus >= needs.cpus
            and self.ram_gb >= needs.ram_gb
            and self.disk_gb >= needs.disk_gb
        )


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A job offer as the order book sees it.

    Attributes:
        id: The job offer's id (its EIP-712 hash).
        module: The exact module version, ``name:version``.
        needs: What one run needs.
        max_price: The most the job creator pays, in token base units.
        mediators: Mediator addresses the job creator trusts.
        seq: Arrival order; lower is older and is matched first.
        expires_at: Unix time after which the offer is void.
    """

    id: str
    module: str
    needs: Machine
    max_price: int
    mediators: frozenset[str]
    seq: int
    expires_at: float = INF


@dataclass(frozen=True, slots=True)
class ResourceOffer:
    """A provider's offer as the order book sees it.

    Attributes:
        id: The resource offer's id.
        provider: The provider's address.
        machine: What each slot has.
        prices: Price per job for each module version it serves (key ``ANY_MODULE``: any).
        mediators: Mediator addresses the provider trusts.
        slots: How many jobs it runs at once.
        seq: Arrival order (older wins a price tie).
        expires_at: Unix time after which the offer is void.
    """

    id: str
    provider: str
    machine: Machine
    prices: Mapping[str, int]
    mediators: frozenset[str]
    slots: int
    seq: int
    expires_at: float = INF


@dataclass(frozen=True, slots=True)
class Match:
    job_id: str
    offer_id: str
    provider: str
    price: int


@dataclass(slots=True, eq=False)
class _Live:
    offer: ResourceOffer
    free: int
    removed: bool = False

    def usable(self, now: float) -> bool:
        return not self.removed and self.free > 0 and self.offer.expires_at > now


@dataclass(slots=True, eq=False)
class _Class:
    """The offers of one module that trust one mediator and sell one slot machine."""

    machine: Machine
    mediator: str
    heap: list[tuple[int, int, _Live]] = field(default_factory=list)
    members: set[str] = field(default_factory=set)

    def push(self, price: int, live: _Live) -> None:
        if live.offer.id not in self.members:
            self.members.add(live.offer.id)
            heapq.heappush(self.heap, (price, live.offer.seq, live))

    def head(self, now: float) -> tuple[int, int, _Live] | None:
        """The cheapest usable offer; used-up, withdrawn and expired ones are dropped on the way
        (and pushed back by :meth:`push` if a slot is freed)."""
        heap = self.heap
        while heap:
            top = heap[0]
            if top[2].usable(now):
                return top
            heapq.heappop(heap)
            self.members.discard(top[2].offer.id)
        return None


_Kind = tuple[str, Machine, frozenset[str]]


class OrderBook:
    """Pending jobs and live resource offers, matched on demand.

    Not thread-safe: the solver owns one book and changes it from one task.
    """

    def __init__(self) -> None:
        self._classes: dict[str, dict[tuple[str, Machine], _Class]] = {}
        self._fitting: dict[_Kind, list[_Class]] = {}
        self._offers: dict[str, tuple[_Live, list[tuple[int, _Class]]]] = {}
        self._jobs: dict[str, JobRequest] = {}
        self._queue: list[tuple[int, str]] = []  # (seq, job id), a heap: oldest first
        self._booked: dict[str, _Live] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def pending_jobs(self) -> list[JobRequest]:
        return sorted(self._jobs.values(), key=lambda job: job.seq)

    def free_slots(self, offer_id: str) -> int:
        return self._offers[offer_id][0].free

    def add_offer(self, offer: ResourceOffer, booked: int = 0) -> None:
        """Add a resource offer with ``booked`` of its slots already taken (on a restart)."""
        if offer.id in self._offers:
            raise ValueError(f"resource offer {offer.id} is already in the book")
        live = _Live(offer, offer.slots - booked)
        placed: list[tuple[int, _Class]] = []
        for module, price in offer.prices.items():
            classes = self._classes.setdefault(module, {})
            for mediator in offer.mediators:
                cls = classes.get((mediator, offer.machine))
                if cls is None:
                    cls = classes[(mediator, offer.machine)] = _Class(offer.machine, mediator)
                    self._forget_fitting(module)
                cls.push(price, live)
                placed.append((price, cls))
        self._offers[offer.id] = (live, placed)

    def remove_offer(self, offer_id: str) -> None:
        """Withdraw an offer: no new bookings; bookings already made stand."""
        live, _ = self._offers.pop(offer_id)
        live.removed = True

    def add_job(self, job: JobRequest) -> None:
        if job.id in self._jobs:
            raise ValueError(f"job offer {job.id} is already in the book")
        self._jobs[job.id] = job
        heapq.heappush(self._queue, (job.seq, job.id))

    def remove_job(self, job_id: str) -> None:
        """Withdraw a pending job (cancelled or expired)."""
        self._jobs.pop(job_id, None)  # its queue entry is skipped lazily

    def release(self, job_id: str) -> None:
        """Free the slot a matched job booked (its deal ended)."""
        live = self._booked.pop(job_id)
        live.free += 1
        if not live.removed:
            for price, cls in self._offers[live.offer.id][1]:
                cls.push(price, live)

    def match(self, now: float) -> list[Match]:
        """Match every pending job that can be matched now, oldest first."""
        matches: list[Match] = []
        waiting: list[tuple[int, str]] = []
        jobs, booked = self._jobs, self._booked
        # Slots only get fewer during a pass, so once a job of some kind found nothing, a job of
        # the same kind offering no more money will not either: remember the highest such price.
        failed: dict[_Kind, int] = {}
        for seq, job_id in sorted(self._queue):  # sorting once beats popping a heap
            job = jobs.get(job_id)
            if job is None:
                continue
            if job.expires_at <= now:
                del jobs[job_id]
                continue
            kind = (job.module, job.needs, job.mediators)
            best = None if failed.get(kind, -1) >= job.max_price else self._cheapest(job, kind, now)
            if best is None:
                failed[kind] = max(failed.get(kind, -1), job.max_price)
                waiting.append((seq, job_id))
                continue
            price, _, live = best
            live.free -= 1
            del jobs[job_id]
            booked[job_id] = live
            matches.append(Match(job_id, live.offer.id, live.offer.provider, price))
        self._queue = waiting  # sorted, hence already a heap
        return matches

    def _cheapest(self, job: JobRequest, kind: _Kind, now: float) -> tuple[int, int, _Live] | None:
        best: tuple[int, int, _Live] | None = None
        limit = job.max_price
        for cls in self._classes_for(kind):
            heap = cls.heap
            if not heap:
                continue
            head = heap[0]
            if not head[2].usable(now):
                found = cls.head(now)
                if found is None:
                    continue
                head = found
            if head[0] <= limit and (best is None or head[:2] < best[:2]):
                best = head
        return best

    def _classes_for(self, kind: _Kind) -> list[_Class]:
        fitting = self._fitting.get(kind)
        if fitting is None:
            module, needs, mediators = kind
            fitting = [
                cls
                for key in (module, ANY_MODULE)
                for (mediator, machine), cls in self._classes.get(key, {}).items()
                if mediator in mediators and machine.covers(needs)
            ]
            self._fitting[kind] = fitting
        return fitting

    def _forget_fitting(self, module: str) -> None:
        if module == ANY_MODULE:
            self._fitting.clear()
        else:
            self._fitting = {kind: v for kind, v in self._fitting.items() if kind[0] != module}
