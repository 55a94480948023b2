"""The order book: matches job requests with resource offers.

Rules (the solver's contract with both sides):

* A resource offer sells ``slots`` identical job slots, each with the offer's machine (GPUs and
  per-GPU VRAM, CPUs, RAM, disk); one job books one whole slot.
* Offers of one **slot group** (the same ``group`` key: a provider's per-module offers of one
  slot) share their slots: a job that books one of them books it for all, and none of them is
  matched again until that slot is released. So a group is never matched with more jobs at once
  than its ``slots``, however many modules its offers serve.
* A job matches the **cheapest eligible** offer; a price tie goes to the older offer.
  Eligible means: the offer serves the job's module at a price no higher than the job's maximum,
  its slot machine covers every need of the job, it has a free slot, both sides trust at least one
  common mediator, and neither has expired.
* Jobs are matched **oldest first**; a job that cannot be matched now waits without blocking
  younger jobs that can.
* A slot is booked at match time and only freed by :meth:`OrderBook.release` (or
  :meth:`OrderBook.unmatch`), so a provider's capacity is never booked twice.
* An offer or job past its expiry is never matched; :meth:`OrderBook.expire` takes them out and
  says which they were.

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
        creator: The job creator's address (carried into its match).
        timeout: Seconds the job gives its provider; an offer whose ``min_timeout`` is more
            cannot take it (the market would refuse the deal).
        avoid: Providers this job must not go to (a redundant run's second offer).
        target: The only provider this job may go to (``lilypad run --target``), lowercase;
            empty: any.
    """

    id: str
    module: str
    needs: Machine
    max_price: int
    mediators: frozenset[str]
    seq: int
    expires_at: float = INF
    creator: str = ""
    timeout: int = 2**32 - 1
    avoid: frozenset[str] = frozenset()
    target: str = ""


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
        min_timeout: The least time the provider needs for a result (its offer commits to it on
            chain); only jobs giving at least this much can take it.
        group: The slot group whose slots it shares (the first offer of a group listed sets
            their number); empty: its own slots.
    """

    id: str
    provider: str
    machine: Machine
    prices: Mapping[str, int]
    mediators: frozenset[str]
    slots: int
    seq: int
    expires_at: float = INF
    min_timeout: int = 0
    group: str = ""


@dataclass(frozen=True, slots=True)
class Match:
    job_id: str
    offer_id: str
    provider: str
    price: int
    creator: str = ""


@dataclass(slots=True, eq=False)
class _Slots:
    """The free slots of one offer, or of every listed offer of one slot group."""

    total: int
    free: int
    members: set[_Live] = field(default_factory=set)


@dataclass(slots=True, eq=False)
class _Live:
    offer: ResourceOffer
    slots: _Slots
    removed: bool = False

    @property
    def free(self) -> int:
        return self.slots.free

    def usable(self, now: float) -> bool:
        return not self.removed and self.slots.free > 0 and self.offer.expires_at > now

    def __lt__(self, other: _Live) -> bool:
        # Heap entries are (price, seq, live); only two entries of one offer tie on the first
        # two (a stale one, and the offer listed again after a refused deal): either may lead.
        return False


@dataclass(slots=True, eq=False)
class _Class:
    """The offers of one module that trust one mediator, sell one slot machine and need one
    least timeout."""

    machine: Machine
    mediator: str
    min_timeout: int
    heap: list[tuple[int, int, _Live]] = field(default_factory=list)
    # By identity, not by offer id: an offer taken out and listed again is a new entry, and must
    # not be kept out by its stale one still deep in the heap.
    members: set[_Live] = field(default_factory=set)
    #: Entries of withdrawn offers still in the heap. A class whose module gets no jobs is never
    #: popped: a provider's slot is offered for every module it serves, and the offers of the
    #: modules nobody asked for are withdrawn when the slot is taken, so without a sweep their
    #: entries would pile up for good (31 a job, with 32 modules served).
    stale: int = 0

    def push(self, price: int, live: _Live) -> None:
        if live not in self.members:
            self.members.add(live)
            heapq.heappush(self.heap, (price, live.offer.seq, live))

    def withdrawn(self, live: _Live) -> None:
        """``live`` was withdrawn (marked removed): its entry goes at the next sweep, made once
        the stale entries outnumber the others (so each entry is swept at most once)."""
        if live in self.members:
            self.stale += 1
            if self.stale > len(self.heap) - self.stale + 64:
                self.heap = [entry for entry in self.heap if not entry[2].removed]
                heapq.heapify(self.heap)
                self.members = {entry[2] for entry in self.heap}
                self.stale = 0

    def head(self, now: float) -> tuple[int, int, _Live] | None:
        """The cheapest usable offer; used-up, withdrawn and expired ones are dropped on the way
        (and pushed back by :meth:`push` if a slot is freed)."""
        heap = self.heap
        while heap:
            top = heap[0]
            if top[2].usable(now):
                return top
            heapq.heappop(heap)
            self.members.discard(top[2])
            if top[2].removed:
                self.stale = max(0, self.stale - 1)
        return None


_Kind = tuple[str, Machine, frozenset[str], int]


class OrderBook:
    """Pending jobs and live resource offers, matched on demand.

    Not thread-safe: the solver owns one book and changes it from one task.
    """

    def __init__(self) -> None:
        self._classes: dict[str, dict[tuple[str, Machine, int], _Class]] = {}
        self._fitting: dict[_Kind, list[_Class]] = {}
        self._offers: dict[str, tuple[_Live, list[tuple[int, _Class]]]] = {}
        self._jobs: dict[str, JobRequest] = {}
        self._queue: list[tuple[int, str]] = []  # (seq, job id), a heap: oldest first
        self._booked: dict[str, tuple[_Live, JobRequest]] = {}
        self._groups: dict[str, _Slots] = {}  # by group key, while any offer of it is listed
        # (expires at, tie-breaker, job or live offer): the next to expire first. Entries of jobs
        # and offers that left the book stay until they come up, or the heap is compacted.
        self._expiries: list[tuple[float, int, JobRequest | _Live]] = []
        self._pushed = 0

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def pending_jobs(self) -> list[JobRequest]:
        return sorted(self._jobs.values(), key=lambda job: job.seq)

    def free_slots(self, offer_id: str) -> int:
        return self._offers[offer_id][0].free

    def has_job(self, job_id: str) -> bool:
        """Whether the job is pending here (not matched, withdrawn or expired)."""
        return job_id in self._jobs

    def is_open(self, offer_id: str) -> bool:
        """Whether the resource offer is listed and none of its slots (its group's) is booked."""
        entry = self._offers.get(offer_id)
        return entry is not None and entry[0].free == entry[0].slots.total

    def remove_slot(self, offer_id: str) -> list[str]:
        """Withdraw an offer and the other listed offers of its slot group (bookings already
        made stand); returns the others' ids."""
        entry = self._offers.get(offer_id)
        if entry is None:
            return []
        live = entry[0]
        others = [m.offer.id for m in live.slots.members if m is not live and live.offer.group]
        for other in others:
            self.remove_offer(other)
        self.remove_offer(offer_id)
        return others

    def add_offer(self, offer: ResourceOffer, booked: int = 0) -> None:
        """Add a resource offer with ``booked`` of its slots already taken (on a restart). An
        offer of a slot group already listed shares that group's slots (``slots`` and
        ``booked`` are the group's, set by its first offer)."""
        if offer.id in self._offers:
            raise ValueError(f"resource offer {offer.id} is already in the book")
        slots = self._groups.get(offer.group) if offer.group else None
        if slots is None:
            slots = _Slots(offer.slots, offer.slots - booked)
            if offer.group:
                self._groups[offer.group] = slots
        live = _Live(offer, slots)
        slots.members.add(live)
        placed: list[tuple[int, _Class]] = []
        for module, price in offer.prices.items():
            classes = self._classes.setdefault(module, {})
            for mediator in offer.mediators:
                key = (mediator, offer.machine, offer.min_timeout)
                cls = classes.get(key)
                if cls is None:
                    cls = classes[key] = _Class(offer.machine, mediator, offer.min_timeout)
                    self._forget_fitting(module)
                cls.push(price, live)
                placed.append((price, cls))
        self._offers[offer.id] = (live, placed)
        self._expires(offer.expires_at, live)

    def remove_offer(self, offer_id: str) -> bool:
        """Withdraw an offer: no new bookings; bookings already made stand. False if it was not
        listed."""
        entry = self._offers.pop(offer_id, None)
        if entry is None:
            return False
        live, placed = entry
        live.removed = True
        for _, cls in placed:
            cls.withdrawn(live)
        live.slots.members.discard(live)
        group = live.offer.group
        if group and not live.slots.members and self._groups.get(group) is live.slots:
            del self._groups[group]
        return True

    def add_job(self, job: JobRequest) -> None:
        if job.id in self._jobs:
            raise ValueError(f"job offer {job.id} is already in the book")
        self._jobs[job.id] = job
        heapq.heappush(self._queue, (job.seq, job.id))
        self._expires(job.expires_at, job)

    def remove_job(self, job_id: str) -> bool:
        """Withdraw a pending job (cancelled or expired); False if it was not pending."""
        return self._jobs.pop(job_id, None) is not None  # its queue entry is skipped lazily

    def release(self, job_id: str) -> None:
        """Free the slot a matched job booked (its deal ended, or could not be made)."""
        live, _ = self._booked.pop(job_id)
        live.slots.free += 1
        for member in (live, *live.slots.members):  # the whole group can take jobs again
            if not member.removed:
                for price, cls in self._offers[member.offer.id][1]:
                    cls.push(price, member)

    def unmatch(self, job_id: str) -> None:
        """Undo a match: free the slot and put the job back, pending, in its old place."""
        _, job = self._booked[job_id]
        self.release(job_id)
        self.add_job(job)

    def settle(self, job_id: str) -> None:
        """Forget a matched job's booking for good: its slot stays taken (a deal used it)."""
        del self._booked[job_id]

    def expire(self, now: float) -> tuple[list[JobRequest], list[ResourceOffer]]:
        """Take out every pending job and listed offer that has expired by ``now``; returns
        them. (Booked slots stand: their deals were made, or are being made, before expiry.)"""
        jobs: list[JobRequest] = []
        offers: list[ResourceOffer] = []
        heap = self._expiries
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)[2]
            if isinstance(item, JobRequest):
                if self._jobs.get(item.id) is item:
                    del self._jobs[item.id]
                    jobs.append(item)
            elif self._offers.get(item.offer.id, (None,))[0] is item:
                self.remove_offer(item.offer.id)
                offers.append(item.offer)
        return jobs, offers

    def next_expiry(self) -> float:
        """When the next pending job or listed offer may expire (``INF``: none will): the
        earliest time a pass could find the book changed without anything added to it."""
        return self._expiries[0][0] if self._expiries else INF

    def _expires(self, at: float, item: JobRequest | _Live) -> None:
        if at == INF:
            return
        self._pushed += 1
        heapq.heappush(self._expiries, (at, self._pushed, item))
        if len(self._expiries) > 2 * (len(self._jobs) + len(self._offers)) + 64:
            keep = {id(job) for job in self._jobs.values()}
            keep.update(id(entry[0]) for entry in self._offers.values())
            self._expiries = [e for e in self._expiries if id(e[2]) in keep]
            heapq.heapify(self._expiries)

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
            if job is None or (waiting and waiting[-1][1] == job_id):  # gone, or listed again
                continue
            if job.expires_at <= now:
                del jobs[job_id]
                continue
            kind = (job.module, job.needs, job.mediators, job.timeout)
            picky = bool(job.avoid or job.target)
            if picky:  # rare (redundant runs, --target): not of one kind with the others
                best = self._cheapest_avoiding(job, kind, now)
            elif failed.get(kind, -1) >= job.max_price:
                best = None
            else:
                best = self._cheapest(job, kind, now)
            if best is None:
                if not picky:
                    failed[kind] = max(failed.get(kind, -1), job.max_price)
                waiting.append((seq, job_id))
                continue
            price, _, live = best
            live.slots.free -= 1
            del jobs[job_id]
            booked[job_id] = (live, job)
            matches.append(Match(job_id, live.offer.id, live.offer.provider, price, job.creator))
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

    def _cheapest_avoiding(
        self, job: JobRequest, kind: _Kind, now: float
    ) -> tuple[int, int, _Live] | None:
        """The cheapest usable offer of a provider the job does not avoid (and, with a target,
        of that provider only): every entry of the fitting classes is looked at, not only their
        heads (such jobs are few)."""
        best: tuple[int, int, _Live] | None = None
        for cls in self._classes_for(kind):
            for entry in cls.heap:
                live = entry[2]
                if (
                    entry[0] <= job.max_price
                    and live.offer.provider.lower() not in job.avoid
                    and (not job.target or live.offer.provider.lower() == job.target)
                    and live.usable(now)
                    and (best is None or entry[:2] < best[:2])
                ):
                    best = entry
        return best

    def _classes_for(self, kind: _Kind) -> list[_Class]:
        fitting = self._fitting.get(kind)
        if fitting is None:
            module, needs, mediators, timeout = kind
            fitting = [
                cls
                for key in (module, ANY_MODULE)
                for (mediator, machine, least), cls in self._classes.get(key, {}).items()
                if mediator in mediators and machine.covers(needs) and least <= timeout
            ]
            self._fitting[kind] = fitting
        return fitting

    def _forget_fitting(self, module: str) -> None:
        if module == ANY_MODULE:
            self._fitting.clear()
        else:
            self._fitting = {kind: v for kind, v in self._fitting.items() if kind[0] != module}
