"""The order book against a brute-force reference: cheapest eligible offer, oldest job first,
never an ineligible match, never a slot booked twice."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from solver.matching import ANY_MODULE, JobRequest, Machine, Match, OrderBook, ResourceOffer

MODULES = ["cowsay:v0.0.4", "sdxl:v0.9-lilypad1", "sdv-pipeline:v1.1-lilypad2"]
MEDIATORS = ["0xm1", "0xm2", "0xm3"]
SLOT_MACHINES = [Machine(0, 0, 4, 8, 50), Machine(1, 24, 8, 32, 200), Machine(2, 80, 32, 128, 500)]
NEEDS = [
    Machine(0, 0, 1, 1, 1),
    Machine(1, 12, 4, 16, 30),
    Machine(1, 40, 4, 16, 30),
    Machine(2, 24, 16, 64, 100),
    Machine(0, 0, 8, 8, 10),
]

mediator_sets = st.frozensets(st.sampled_from(MEDIATORS), min_size=1, max_size=3)


@st.composite
def offers(draw: st.DrawFn) -> list[ResourceOffer]:
    count = draw(st.integers(0, 8))
    result = []
    for i in range(count):
        served = draw(
            st.lists(st.sampled_from([*MODULES, ANY_MODULE]), min_size=1, max_size=3, unique=True)
        )
        result.append(
            ResourceOffer(
                id=f"ro{i}",
                provider=f"0xp{i % 3}",
                machine=draw(st.sampled_from(SLOT_MACHINES)),
                prices={m: draw(st.integers(1, 10)) for m in served},
                mediators=draw(mediator_sets),
                slots=draw(st.integers(1, 3)),
                seq=draw(st.integers(0, 5)) * 100 + i,  # equal prices, different ages
                expires_at=draw(st.sampled_from([5.0, 1e9])),
            )
        )
    return result


@st.composite
def jobs(draw: st.DrawFn, start: int = 0) -> list[JobRequest]:
    count = draw(st.integers(0, 15))
    return [
        JobRequest(
            id=f"jo{start + i}",
            module=draw(st.sampled_from(MODULES)),
            needs=draw(st.sampled_from(NEEDS)),
            max_price=draw(st.integers(1, 10)),
            mediators=draw(mediator_sets),
            seq=1000 + start + i,
            expires_at=draw(st.sampled_from([5.0, 1e9])),
        )
        for i in range(count)
    ]


def price_for(offer: ResourceOffer, module: str) -> int | None:
    """An offer's price for a module: its own price for it, or its any-module price."""
    prices = [p for key, p in offer.prices.items() if key in (module, ANY_MODULE)]
    return min(prices) if prices else None


@dataclass
class Reference:
    """The rules, as plainly as possible: for each job, oldest first, look at every offer."""

    offers: list[ResourceOffer]
    free: dict[str, int]

    def eligible(self, job: JobRequest, offer: ResourceOffer, now: float) -> bool:
        price = price_for(offer, job.module)
        return (
            price is not None
            and price <= job.max_price
            and offer.machine.covers(job.needs)
            and bool(offer.mediators & job.mediators)
            and self.free[offer.id] > 0
            and offer.expires_at > now
            and job.expires_at > now
        )

    def match(self, pending: list[JobRequest], now: float) -> list[Match]:
        matches = []
        for job in sorted(pending, key=lambda j: j.seq):
            candidates = [o for o in self.offers if self.eligible(job, o, now)]
            if not candidates:
                continue
            best = min(candidates, key=lambda o: (price_for(o, job.module), o.seq))
            self.free[best.id] -= 1
            matches.append(Match(job.id, best.id, best.provider, price_for(best, job.module) or 0))
        return matches


@settings(max_examples=150, deadline=None)
@given(offer_list=offers(), first=jobs(), later=jobs(start=100), data=st.data())
def test_book_matches_like_the_reference(
    offer_list: list[ResourceOffer],
    first: list[JobRequest],
    later: list[JobRequest],
    data: st.DataObject,
) -> None:
    book = OrderBook()
    ref = Reference(offer_list, {o.id: o.slots for o in offer_list})
    for offer in offer_list:
        book.add_offer(offer)
    for job in first:
        book.add_job(job)
    now = data.draw(st.sampled_from([0.0, 10.0]))

    got = book.match(now)
    expected = ref.match(first, now)
    assert got == expected

    # Deals end and free their slots, an offer is withdrawn, new jobs arrive: still the same.
    for match in data.draw(st.lists(st.sampled_from(got), unique=True)) if got else []:
        book.release(match.job_id)
        ref.free[match.offer_id] += 1
    if offer_list and data.draw(st.booleans()):
        gone = data.draw(st.sampled_from(offer_list))
        book.remove_offer(gone.id)
        ref.offers = [o for o in ref.offers if o.id != gone.id]
    matched = {m.job_id for m in got}
    still_pending = [j for j in first if j.id not in matched and j.expires_at > now]
    for job in later:
        book.add_job(job)
    assert book.match(now) == ref.match(still_pending + later, now)


@settings(max_examples=200, deadline=None)
@given(offer_list=offers(), job_list=jobs())
def test_matches_are_eligible_and_never_overbook(
    offer_list: list[ResourceOffer], job_list: list[JobRequest]
) -> None:
    book = OrderBook()
    for offer in offer_list:
        book.add_offer(offer)
    for job in job_list:
        book.add_job(job)
    matches = book.match(now=0.0)
    by_id = {o.id: o for o in offer_list}
    jobs_by_id = {j.id: j for j in job_list}
    used: dict[str, int] = {}
    for m in matches:
        offer, job = by_id[m.offer_id], jobs_by_id[m.job_id]
        assert m.price == price_for(offer, job.module)
        assert m.price <= job.max_price
        assert offer.machine.covers(job.needs)
        assert offer.mediators & job.mediators
        used[offer.id] = used.get(offer.id, 0) + 1
    assert all(used[o] <= by_id[o].slots for o in used)
    assert len({m.job_id for m in matches}) == len(matches)
    # Whatever is left over could not have been matched with what was left.
    for job in book.pending_jobs:
        for offer in offer_list:
            free = offer.slots - used.get(offer.id, 0)
            price = price_for(offer, job.module)
            assert not (
                free > 0
                and price is not None
                and price <= job.max_price
                and offer.machine.covers(job.needs)
                and offer.mediators & job.mediators
            ), (job, offer)


def test_oldest_job_gets_the_last_slot() -> None:
    book = OrderBook()
    book.add_offer(
        ResourceOffer(
            "ro", "0xp", SLOT_MACHINES[1], {MODULES[1]: 5}, frozenset(MEDIATORS), slots=1, seq=0
        )
    )
    young = JobRequest("young", MODULES[1], NEEDS[1], 9, frozenset(MEDIATORS), seq=2)
    old = JobRequest("old", MODULES[1], NEEDS[1], 5, frozenset(MEDIATORS), seq=1)
    book.add_job(young)
    book.add_job(old)
    assert [m.job_id for m in book.match(0.0)] == ["old"]
    assert [j.id for j in book.pending_jobs] == ["young"]
    book.release("old")
    assert [m.job_id for m in book.match(0.0)] == ["young"]


def test_cheapest_wins_and_ties_go_to_the_older_offer() -> None:
    book = OrderBook()
    for seq, (name, price) in enumerate([("dear", 9), ("cheap-new", 3), ("cheap-old", 3)]):
        book.add_offer(
            ResourceOffer(
                name,
                "0xp",
                SLOT_MACHINES[1],
                {MODULES[1]: price},
                frozenset(MEDIATORS),
                slots=1,
                seq=10 - seq,
            )
        )
    for i in range(3):
        book.add_job(JobRequest(f"j{i}", MODULES[1], NEEDS[1], 10, frozenset(MEDIATORS), seq=i))
    assert [m.offer_id for m in book.match(0.0)] == ["cheap-old", "cheap-new", "dear"]


def one_slot(name: str, price: int, seq: int, expires_at: float = 1e9) -> ResourceOffer:
    return ResourceOffer(
        name, "0xp", SLOT_MACHINES[1], {MODULES[1]: price}, frozenset(MEDIATORS), 1, seq, expires_at
    )


def job(name: str, seq: int, expires_at: float = 1e9) -> JobRequest:
    return JobRequest(name, MODULES[1], NEEDS[1], 10, frozenset(MEDIATORS), seq, expires_at)


def test_expire_takes_out_what_expired_and_says_which() -> None:
    book = OrderBook()
    book.add_offer(one_slot("soon", 5, 0, expires_at=10))
    book.add_offer(one_slot("late", 6, 1))
    book.add_job(job("old", 0, expires_at=10))
    book.add_job(job("young", 1))
    jobs, offers = book.expire(now=10)
    assert [j.id for j in jobs] == ["old"]
    assert [o.id for o in offers] == ["soon"]
    assert book.expire(now=10) == ([], [])  # once
    assert not book.has_job("old")
    assert not book.is_open("soon")
    assert [(m.job_id, m.offer_id) for m in book.match(now=10)] == [("young", "late")]


def test_next_expiry_is_when_the_book_may_next_change_by_itself() -> None:
    """The matcher sleeps until then (when nothing is posted meanwhile)."""
    book = OrderBook()
    assert book.next_expiry() == float("inf")
    book.add_job(job("j", 0, expires_at=30))
    book.add_offer(one_slot("ro", 5, 0, expires_at=20))
    assert book.next_expiry() == 20
    book.expire(now=20)
    assert book.next_expiry() == 30
    book.expire(now=30)
    assert book.next_expiry() == float("inf")


def test_an_unmatched_job_and_a_relisted_offer_match_again() -> None:
    """A refused deal: the job goes back to its place, the offer (taken out at the match) is
    listed again, and the two match as if nothing had happened."""
    book = OrderBook()
    book.add_offer(one_slot("ro", 5, 0))
    book.add_job(job("j", 0))
    (match,) = book.match(0.0)
    book.settle(match.job_id)
    book.remove_offer(match.offer_id)
    assert book.match(0.0) == []
    book.add_offer(one_slot("ro", 5, 0))  # same id, price and age as its stale heap entry
    book.add_job(job("j", 0))
    assert [(m.job_id, m.offer_id) for m in book.match(0.0)] == [("j", "ro")]
    book.unmatch("j")
    assert book.has_job("j")
    assert book.is_open("ro")
    assert [m.job_id for m in book.match(0.0)] == ["j"]


def test_the_expiry_heap_stays_small_while_offers_come_and_go() -> None:
    book = OrderBook()
    for i in range(10_000):
        book.add_offer(one_slot(f"ro{i}", 5, i))
        book.add_job(job(f"j{i}", i))
        assert len(book.match(0.0)) == 1
        book.settle(f"j{i}")
        book.remove_offer(f"ro{i}")
    assert len(book._expiries) < 200


def test_slots_offered_for_many_modules_leave_nothing_behind_once_taken() -> None:
    """A provider offers each free slot for every module it serves; a job of one module takes
    it and the slot's other offers are withdrawn. Jobs of only that module come: the withdrawn
    offers of the others must not pile up in the book (they did, 31 a job, in a soak)."""
    book = OrderBook()
    served = [f"module-{m}:v1" for m in range(32)]
    for i in range(3_000):
        for module in served:
            prices, mediators = {module: 5}, frozenset(MEDIATORS)
            offer_id, group = f"ro{i}-{module}", f"slot{i}"
            book.add_offer(
                ResourceOffer(
                    offer_id, "0xp", SLOT_MACHINES[1], prices, mediators, 1, i, group=group
                )
            )
        book.add_job(JobRequest(f"j{i}", served[0], NEEDS[1], 10, frozenset(MEDIATORS), i, 1e9))
        [match] = book.match(0.0)
        assert match.offer_id == f"ro{i}-{served[0]}"
        book.settle(match.job_id)
        assert len(book.remove_slot(match.offer_id)) == len(served) - 1
    entries = sum(len(cls.heap) for classes in book._classes.values() for cls in classes.values())
    assert entries < 10 * len(served) * len(MEDIATORS), entries
    # and what is listed still matches: a slot offered for the last module takes its job
    book.add_offer(
        ResourceOffer("late", "0xp", SLOT_MACHINES[1], {served[-1]: 5}, frozenset(MEDIATORS), 1, 9)
    )
    book.add_job(JobRequest("last", served[-1], NEEDS[1], 10, frozenset(MEDIATORS), 9, 1e9))
    assert [(m.job_id, m.offer_id) for m in book.match(0.0)] == [("last", "late")]
