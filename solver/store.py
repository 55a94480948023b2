"""The solver's persistent state, through SQLAlchemy: SQLite by default, PostgreSQL in production.

Everything the solver knows lives here, written before it is acted on, so a solver killed at any
moment restarts with every offer and deal it had:

* ``job_offers`` / ``resource_offers``: signed offers as received, with their state;
* ``deals``: one row per match, written *before* ``createDeal`` is sent (state ``matched``) and
  completed from the chain (``DealCreated`` and later events), so a restart can tell a match that
  reached the chain from one that did not, and never sends one twice;
* ``events`` (+ ``event_parties``): the ordered log of state changes the event stream serves,
  each tagged with the addresses it concerns;
* ``deal_logs`` (+ ``log_lines``): each running job's stderr lines as its provider relayed them,
  bounded per deal (what did not fit is counted, not kept), and its latest progress;
* ``meta``: small values such as the next chain block to read.

The market view's listings (:meth:`Store.open_resource_offers`, :meth:`Store.deal_page`) page by
``seq`` (keyset: a page starts after the last row of the one before, so rows arriving meanwhile
neither repeat nor hide one), each driven by an index on an equality filter. Columns added after
a database was made are added to it, and constraints changed since are replaced (every row
kept), when a :class:`Store` opens it (:func:`_upgrade`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    aliased,
    mapped_column,
    sessionmaker,
)
from sqlalchemy.schema import AddConstraint, CreateIndex, CreateTable

from lilypad import solver_api as api
from lilypad.chain import offers
from lilypad.errors import SolverError
from lilypad.solver_api import DealState, EventKind, OfferState, Side

log = logging.getLogger("lilypad.solver")


#: The name the solver's code knew the deal states by.
DealRowState = DealState


class Base(DeclarativeBase):
    pass


class _OfferColumns:
    """What job and resource offers both store: the signed body as received, and the fields the
    solver queries by."""

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(66), unique=True, index=True)
    signer: Mapped[str] = mapped_column(String(42), index=True)
    nonce: Mapped[str] = mapped_column(String(80))
    module: Mapped[str] = mapped_column(String(66), index=True)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), index=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class JobOfferRow(_OfferColumns, Base):
    __tablename__ = "job_offers"
    __table_args__ = (UniqueConstraint("signer", "nonce", name="job_offer_signer_nonce"),)

    max_price: Mapped[str] = mapped_column(String(40))


class ResourceOfferRow(_OfferColumns, Base):
    """A resource offer. Offers of one job slot share their signer and nonce (the market makes
    one deal of them at most), one per module."""

    __tablename__ = "resource_offers"
    __table_args__ = (
        UniqueConstraint("signer", "nonce", "module", name="resource_offer_signer_nonce_module"),
    )

    collateral: Mapped[str] = mapped_column(String(40))
    #: The machine's VRAM lane (MiB per GPU), and its advertised GPU models, lowercase, one a
    #: line: what the market view filters by (None in rows older than the columns that are
    #: not pending: never listed).
    vram_mb: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    gpu_models: Mapped[str | None] = mapped_column(String(2000), nullable=True)


class DealRow(Base):
    __tablename__ = "deals"
    # newest first within one module, without sorting them
    __table_args__ = (Index("deal_module_seq", "module", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_offer_id: Mapped[str] = mapped_column(ForeignKey("job_offers.id"), unique=True)
    resource_offer_id: Mapped[str] = mapped_column(ForeignKey("resource_offers.id"), unique=True)
    deal_id: Mapped[str | None] = mapped_column(String(66), unique=True, nullable=True)
    state: Mapped[str] = mapped_column(String(20), index=True)
    job_creator: Mapped[str] = mapped_column(String(42), index=True)
    provider: Mapped[str] = mapped_column(String(42), index=True)
    price: Mapped[str] = mapped_column(String(40))
    deal: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result_cid: Mapped[str | None] = mapped_column(String(200), nullable=True)
    tx_hash: Mapped[str | None] = mapped_column(String(66), nullable=True)
    error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)
    #: The job offer's module (set when the match is recorded).
    module: Mapped[str | None] = mapped_column(String(66), nullable=True)


class EventRow(Base):
    __tablename__ = "events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class EventPartyRow(Base):
    __tablename__ = "event_parties"
    # a party's events in order from any point, without reading its earlier ones (a stream
    # catching up): by address alone, every event of a busy party was read and sorted
    __table_args__ = (Index("event_party_address_seq", "address", "event_seq"),)

    event_seq: Mapped[int] = mapped_column(ForeignKey("events.seq"), primary_key=True)
    address: Mapped[str] = mapped_column(String(42), primary_key=True)


class DealLogRow(Base):
    """A deal's relayed log: where the provider's numbering stands, what is kept, what was not."""

    __tablename__ = "deal_logs"

    deal_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    next_seq: Mapped[int] = mapped_column(BigInteger)
    kept_lines: Mapped[int] = mapped_column(Integer)
    kept_bytes: Mapped[int] = mapped_column(BigInteger)
    dropped: Mapped[int] = mapped_column(BigInteger)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)


class LogLineRow(Base):
    __tablename__ = "log_lines"

    deal_id: Mapped[str] = mapped_column(ForeignKey("deal_logs.deal_id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    text: Mapped[str] = mapped_column(String(api.MAX_LOG_LINE))


@dataclass(frozen=True)
class LogBounds:
    """What the solver keeps of one deal's log: at most ``lines`` lines and ``bytes`` bytes
    (UTF-8) of them; the rest is counted as dropped."""

    lines: int = 10_000
    bytes: int = 1024 * 1024


class MetaRow(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


@dataclass(frozen=True)
class StoredEvent:
    """One entry of the event log, as the stream sends it, with the addresses it concerns
    (lowercase; filled only by :meth:`Store.events_with_parties`)."""

    seq: int
    kind: str
    payload: dict[str, Any]
    parties: frozenset[str] = frozenset()

    @functools.cached_property
    def event(self) -> api.OfferEvent | api.DealEvent:
        """The event as the protocol declares it (:data:`lilypad.solver_api.SolverEvent`).

        Raises:
            pydantic.ValidationError: the stored payload is not such an event.
        """
        payload = {"seq": self.seq, "kind": self.kind, **self.payload}
        if not self.kind.startswith("deal.") and "state" not in payload:
            # logged before offer events carried their state: the kind names it
            state = self.kind.partition(".")[2]
            payload["state"] = OfferState.PENDING if state == "added" else state
        return api.parse_event(payload)

    @functools.cached_property
    def data(self) -> str:
        """The SSE ``data`` line: the event's JSON, amounts as decimal strings (computed once,
        however many streams send it)."""
        return self.event.model_dump_json()


class Duplicate(SolverError):
    """An offer with that id, or that signer and nonce, is already known."""

    exit_code = 2


class Store:
    """The solver's database.

    Args:
        url: A SQLAlchemy URL: ``sqlite:///path/solver.db`` (the default kind) or
            ``postgresql+psycopg://user:password@host/db``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine: Engine = create_engine(url, future=True, pool_pre_ping=True)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise SolverError(f"cannot use database {_safe_url(url)}: {exc}") from exc
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            Base.metadata.create_all(self.engine)
            _upgrade(self.engine)
        except OperationalError as exc:
            raise SolverError(f"cannot open database {_safe_url(url)}: {exc.orig}") from exc

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back on error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except IntegrityError:
                session.rollback()
                raise
            except SQLAlchemyError as exc:
                session.rollback()
                raise SolverError(f"database error: {exc}") from exc

    # ------------------------------------------------------------------------------ offers
    def add_offer(self, row: JobOfferRow | ResourceOfferRow, parties: Sequence[str]) -> int:
        """Store a new offer (and its event); returns its arrival number.

        Raises:
            Duplicate: the offer, or another with the same signer and nonce, is known.
        """
        side = _side(type(row))
        try:
            with self.session() as session:
                session.add(row)
                session.flush()
                change = api.OfferChange(id=row.id, state=OfferState(row.state))
                self._event(session, EventKind.added(side), change, parties)
                return row.seq
        except IntegrityError:
            raise Duplicate(
                f"{side} offer {row.id} is already known "
                f"(or {row.signer} already used nonce {row.nonce})"
            ) from None

    def add_slot(self, rows: Sequence[ResourceOfferRow]) -> None:
        """Store the offers of one job slot, all or none, with one event naming them all; sets
        each row's arrival number.

        Raises:
            Duplicate: one of them, or another offer of its signer, nonce and module, is known.
        """
        try:
            with self.session() as session:
                session.add_all(rows)
                session.flush()
                first, *others = rows
                change = api.OfferChange(
                    id=first.id, state=OfferState(first.state), others=tuple(r.id for r in others)
                )
                self._event(session, EventKind.RESOURCE_OFFER_ADDED, change, [first.signer])
        except IntegrityError:
            raise Duplicate(
                f"an offer of slot {rows[0].nonce} of {rows[0].signer} is already known"
            ) from None

    def known(
        self, model: type[JobOfferRow] | type[ResourceOfferRow], ids: Sequence[str]
    ) -> set[str]:
        """Which of ``ids`` name a stored offer (one query)."""
        with self.session() as session:
            return set(session.scalars(select(model.id).where(model.id.in_(ids))))

    def slot_siblings(self, offer_id: str, state: OfferState) -> list[ResourceOfferRow]:
        """The other offers of the resource offer's slot (its signer and nonce) in ``state``."""
        with self.session() as session:
            return _siblings(session, offer_id, state)

    def offers(
        self, model: type[JobOfferRow] | type[ResourceOfferRow], *states: OfferState
    ) -> list[Any]:
        with self.session() as session:
            query = select(model).where(model.state.in_([s.value for s in states]))
            return list(session.scalars(query.order_by(model.seq)))

    def offer(self, model: type[JobOfferRow] | type[ResourceOfferRow], offer_id: str) -> Any:
        with self.session() as session:
            return session.scalar(select(model).where(model.id == offer_id))

    def set_offer_state(
        self,
        model: type[JobOfferRow] | type[ResourceOfferRow],
        offer_id: str,
        state: OfferState,
        parties: Sequence[str],
        expected: OfferState | None = None,
        deal_id: str | None = None,
        slot: OfferState | None = None,
    ) -> bool:
        """Move an offer to ``state`` and log its event (naming ``deal_id``, the deal using
        it); with ``expected``, only from that state; with ``slot``, the other offers of a
        resource offer's slot in that state move with it (named in the same event). Returns
        whether it moved."""
        where = model.id == offer_id
        if expected is not None:
            where = where & (model.state == expected.value)
        with self.session() as session:
            changed = session.execute(update(model).where(where).values(state=state.value))
            if not changed.rowcount:  # type: ignore[attr-defined]
                return False
            others = () if slot is None else _move_siblings(session, offer_id, slot, state)
            change = api.OfferChange(id=offer_id, state=state, deal_id=deal_id, others=others)
            self._event(session, EventKind.for_offer(_side(model), state), change, parties)
            return True

    def committed(
        self,
        signer: str,
        model: type[JobOfferRow] | type[ResourceOfferRow],
        now: float | None = None,
    ) -> int:
        """What a signer's open offers could still take from its deposit (with ``now``, a
        pending offer past its expiry is not open, even before it is marked expired)."""
        return self.open_offers(signer, model, now)[1]

    def open_offers(
        self,
        signer: str,
        model: type[JobOfferRow] | type[ResourceOfferRow],
        now: float | None = None,
    ) -> tuple[int, int]:
        """How many offers of a signer are open (pending or matched), and what they could still
        take from its deposit together: offers sharing a nonce (a slot's) make one deal at most,
        so each nonce counts once, at its largest amount."""
        column = JobOfferRow.max_price if model is JobOfferRow else ResourceOfferRow.collateral
        pending = model.state == OfferState.PENDING.value
        if now is not None:
            pending = pending & (model.expires_at > now)
        live = pending | (model.state == OfferState.MATCHED.value)
        with self.session() as session:
            query = select(model.nonce, column).where(model.signer == signer, live)
            rows = list(session.execute(query))
        largest: dict[str, int] = {}
        for nonce, value in rows:
            largest[nonce] = max(largest.get(nonce, 0), int(value))
        return len(rows), sum(largest.values())

    def open_resource_offers(
        self,
        now: float,
        *,
        modules: Sequence[str] | None = None,
        signer: str | None = None,
        min_vram_mb: int | None = None,
        gpu: str | None = None,
        after: int = 0,
        limit: int = api.DEFAULT_PAGE,
    ) -> list[ResourceOfferRow]:
        """Pending resource offers not past their expiry at ``now``, oldest first, after
        arrival number ``after``: at most ``limit``, those for one of ``modules`` (ids), of
        ``signer``, with at least ``min_vram_mb`` per GPU, a GPU model containing ``gpu``."""
        row = ResourceOfferRow
        query = select(row).where(
            row.state == OfferState.PENDING.value, row.expires_at > now, row.seq > after
        )
        if modules is not None:
            query = query.where(row.module.in_(modules))
        if signer is not None:
            query = query.where(row.signer == signer)
        if min_vram_mb is not None:
            query = query.where(row.vram_mb >= min_vram_mb)
        if gpu is not None:
            query = query.where(row.gpu_models.contains(gpu.lower(), autoescape=True))
        with self.session() as session:
            return list(session.scalars(query.order_by(row.seq).limit(limit)))

    # ------------------------------------------------------------------------------- deals
    def record_matches(self, deals: Sequence[DealRow]) -> None:
        """Write matches before their deals are sent to the chain (one transaction)."""
        with self.session() as session:
            for deal in deals:
                deal.module = session.scalar(
                    select(JobOfferRow.module).where(JobOfferRow.id == deal.job_offer_id)
                )
                session.add(deal)
                for model, offer_id in (
                    (JobOfferRow, deal.job_offer_id),
                    (ResourceOfferRow, deal.resource_offer_id),
                ):
                    session.execute(
                        update(model)
                        .where(model.id == offer_id)
                        .values(state=OfferState.MATCHED.value)
                    )
                self._event(
                    session,
                    EventKind.DEAL_MATCHED,
                    deal_view(deal),
                    [deal.job_creator, deal.provider],
                )
                # the other offers of its slot: the slot is taken (the chain would refuse them)
                superseded = _move_siblings(
                    session, deal.resource_offer_id, OfferState.PENDING, OfferState.SUPERSEDED
                )
                if superseded:
                    first, *others = superseded
                    change = api.OfferChange(
                        id=first, state=OfferState.SUPERSEDED, others=tuple(others)
                    )
                    kind = EventKind.RESOURCE_OFFER_SUPERSEDED
                    self._event(session, kind, change, [deal.provider])

    def deals(self, *states: DealState, party: str | None = None) -> list[DealRow]:
        with self.session() as session:
            query = select(DealRow)
            if states:
                query = query.where(DealRow.state.in_([s.value for s in states]))
            if party:
                query = query.where((DealRow.job_creator == party) | (DealRow.provider == party))
            return list(session.scalars(query.order_by(DealRow.seq)))

    def deal_page(
        self,
        *states: DealState,
        party: str | None = None,
        modules: Sequence[str] | None = None,
        before: int | None = None,
        limit: int = api.DEFAULT_PAGE,
    ) -> list[DealRow]:
        """Deals newest first, before arrival number ``before``: at most ``limit``, those in
        one of ``states``, of ``party``, for one of ``modules`` (ids)."""
        query = select(DealRow)
        if before is not None:
            query = query.where(DealRow.seq < before)
        if states:
            query = query.where(DealRow.state.in_([s.value for s in states]))
        if party:
            query = query.where((DealRow.job_creator == party) | (DealRow.provider == party))
        if modules is not None:
            query = query.where(DealRow.module.in_(modules))
        with self.session() as session:
            return list(session.scalars(query.order_by(DealRow.seq.desc()).limit(limit)))

    def deal_by_offer(self, job_offer_id: str) -> DealRow | None:
        with self.session() as session:
            return session.scalar(select(DealRow).where(DealRow.job_offer_id == job_offer_id))

    def deal_by_resource_offer(self, resource_offer_id: str) -> DealRow | None:
        with self.session() as session:
            return session.scalar(
                select(DealRow).where(DealRow.resource_offer_id == resource_offer_id)
            )

    def deal_by_id(self, deal_id: str) -> DealRow | None:
        with self.session() as session:
            return session.scalar(select(DealRow).where(DealRow.deal_id == deal_id))

    def update_deal(
        self,
        job_offer_id: str,
        state: DealState,
        *,
        parties: Sequence[str],
        expected: DealState | None = None,
        **values: Any,
    ) -> DealRow | None:
        """Move a deal to ``state`` (set ``values``) and log its event; with ``expected``, only
        from that state (None when the deal is in another: someone else moved it first)."""
        where = DealRow.job_offer_id == job_offer_id
        if expected is not None:
            where = where & (DealRow.state == expected.value)
        with self.session() as session:
            # One conditional UPDATE first: of two writers racing (the sender and the follower
            # both see a deal created), exactly one moves it.
            changed = session.execute(
                update(DealRow)
                .where(where)
                .values(state=state.value, updated_at=time.time(), **values)
            )
            if not changed.rowcount:  # type: ignore[attr-defined]
                return None
            deal = session.scalar(select(DealRow).where(DealRow.job_offer_id == job_offer_id))
            if deal is None:  # cannot be: it was just updated in this transaction
                return None
            self._event(session, EventKind.for_deal(state), deal_view(deal), parties)
            return deal

    def fail_deal(
        self,
        job_offer_id: str,
        error: str,
        rejected: Sequence[tuple[type[JobOfferRow] | type[ResourceOfferRow], str, str]],
        relisted: Sequence[tuple[type[JobOfferRow] | type[ResourceOfferRow], str, str]],
    ) -> bool:
        """A match the chain refused, in one transaction: the deal is marked failed (its event
        goes to the signers of the ``rejected`` offers), those offers are rejected, and the
        ``relisted`` ones are pending again. Offers are ``(model, id, signer)``. A deal row whose
        offers go back to the book is deleted (an offer is in at most one deal row); its events
        stay. False if the deal was no longer ``matched`` (the chain made it after all).
        """
        with self.session() as session:
            changed = session.execute(
                update(DealRow)
                .where(
                    DealRow.job_offer_id == job_offer_id,
                    DealRow.state == DealState.MATCHED.value,
                )
                .values(state=DealState.FAILED.value, error=error[:500], updated_at=time.time())
            )
            if not changed.rowcount:  # type: ignore[attr-defined]
                return False
            deal = session.scalar(select(DealRow).where(DealRow.job_offer_id == job_offer_id))
            if deal is None:  # cannot be: it was just updated in this transaction
                return False
            self._event(
                session, EventKind.DEAL_FAILED, deal_view(deal), [s for _, _, s in rejected]
            )
            for state, offers in ((OfferState.REJECTED, rejected), (OfferState.PENDING, relisted)):
                reason = error[:300] if state is OfferState.REJECTED else None
                for model, offer_id, signer in offers:
                    session.execute(
                        update(model).where(model.id == offer_id).values(state=state.value)
                    )
                    others: tuple[str, ...] = ()
                    if model is ResourceOfferRow:
                        # its slot's other offers share its fate: free again, or as bad
                        others = _move_siblings(session, offer_id, OfferState.SUPERSEDED, state)
                    change = api.OfferChange(id=offer_id, state=state, reason=reason, others=others)
                    self._event(session, EventKind.for_offer(_side(model), state), change, [signer])
            if relisted:
                session.delete(deal)
            return True

    # ------------------------------------------------------------------------------ events
    def events_after(self, seq: int, party: str | None, limit: int = 500) -> list[StoredEvent]:
        """Events after ``seq``; with ``party``, only those that concern that address."""
        with self.session() as session:
            if party is None:
                query = select(EventRow).where(EventRow.seq > seq).order_by(EventRow.seq)
            else:  # in the order of the party's index: its events after seq, read no further
                query = (
                    select(EventRow)
                    .join(EventPartyRow, EventPartyRow.event_seq == EventRow.seq)
                    .where(EventPartyRow.address == party.lower(), EventPartyRow.event_seq > seq)
                    .order_by(EventPartyRow.event_seq)
                )
            rows = session.scalars(query.limit(limit))
            return [StoredEvent(r.seq, r.kind, r.payload) for r in rows]

    def events_with_parties(self, seq: int, limit: int = 1000) -> list[StoredEvent]:
        """Every event after ``seq`` (at most ``limit``), each with the addresses it concerns:
        what one reader needs to serve the streams of all parties."""
        with self.session() as session:
            rows = list(
                session.scalars(
                    select(EventRow).where(EventRow.seq > seq).order_by(EventRow.seq).limit(limit)
                )
            )
            if not rows:
                return []
            parties: dict[int, set[str]] = {}
            links = session.execute(
                select(EventPartyRow.event_seq, EventPartyRow.address).where(
                    EventPartyRow.event_seq > seq, EventPartyRow.event_seq <= rows[-1].seq
                )
            )
            for event_seq, address in links:
                parties.setdefault(event_seq, set()).add(address)
            return [
                StoredEvent(r.seq, r.kind, r.payload, frozenset(parties.get(r.seq, ())))
                for r in rows
            ]

    def last_event_seq(self) -> int:
        with self.session() as session:
            rows = session.scalars(select(EventRow.seq).order_by(EventRow.seq.desc()).limit(1))
            return next(iter(rows), 0)

    def _event(
        self,
        session: Session,
        kind: EventKind,
        payload: api.OfferChange | api.DealView,
        parties: Sequence[str],
    ) -> None:
        row = EventRow(
            kind=kind.value, payload=payload.model_dump(mode="json"), created_at=time.time()
        )
        session.add(row)
        session.flush()
        for address in {p.lower() for p in parties if p}:
            session.add(EventPartyRow(event_seq=row.seq, address=address))

    # -------------------------------------------------------------------------------- logs
    def append_logs(self, deal_id: str, batch: api.LogBatch, bounds: LogBounds) -> api.LogsAccepted:
        """Keep a batch of a deal's log lines within ``bounds``. Lines had already (a post sent
        again) are skipped; lines the provider never sent (a gap before ``from_seq``) and lines
        over the bounds count as dropped. The progress is kept whatever the bounds."""
        try:
            return self._append_logs(deal_id, batch, bounds)
        except IntegrityError:  # the deal's first batch arrived twice at once: once more
            return self._append_logs(deal_id, batch, bounds)

    def _append_logs(
        self, deal_id: str, batch: api.LogBatch, bounds: LogBounds
    ) -> api.LogsAccepted:
        with self.session() as session:
            log_row = session.scalar(
                select(DealLogRow).where(DealLogRow.deal_id == deal_id).with_for_update()
            )
            if log_row is None:
                log_row = DealLogRow(
                    deal_id=deal_id,
                    next_seq=1,
                    kept_lines=0,
                    kept_bytes=0,
                    dropped=0,
                    updated_at=time.time(),
                )
                session.add(log_row)
                session.flush()
            end = batch.from_seq + len(batch.lines)
            kept = 0
            if end > log_row.next_seq:
                log_row.dropped += max(0, batch.from_seq - log_row.next_seq)
                first = max(batch.from_seq, log_row.next_seq)
                for seq in range(first, end):
                    line = batch.lines[seq - batch.from_seq]
                    size = len(line.encode())
                    if (
                        log_row.kept_lines >= bounds.lines
                        or log_row.kept_bytes + size > bounds.bytes
                    ):
                        log_row.dropped += 1
                        continue
                    session.add(LogLineRow(deal_id=deal_id, seq=seq, text=line))
                    log_row.kept_lines += 1
                    log_row.kept_bytes += size
                    kept += 1
                log_row.next_seq = end
                if batch.progress is not None:
                    log_row.progress = batch.progress.model_dump(mode="json")
            log_row.updated_at = time.time()
            return api.LogsAccepted(next_seq=log_row.next_seq, kept=kept, dropped=log_row.dropped)

    def read_logs(
        self, deal_id: str, after: int, limit: int = api.MAX_LOG_BATCH
    ) -> tuple[DealLogRow | None, list[LogLineRow]]:
        """A deal's log and its kept lines after number ``after`` (at most ``limit``)."""
        with self.session() as session:
            log_row = session.get(DealLogRow, deal_id)
            lines = session.scalars(
                select(LogLineRow)
                .where(LogLineRow.deal_id == deal_id, LogLineRow.seq > after)
                .order_by(LogLineRow.seq)
                .limit(limit)
            )
            return log_row, list(lines)

    # -------------------------------------------------------------------------------- meta
    def get_meta(self, key: str) -> str | None:
        with self.session() as session:
            row = session.get(MetaRow, key)
            return row.value if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.session() as session:
            session.merge(MetaRow(key=key, value=value))


def _siblings(session: Session, offer_id: str, state: OfferState) -> list[ResourceOfferRow]:
    return list(session.scalars(select(ResourceOfferRow).where(_sibling(offer_id, state))))


def _move_siblings(
    session: Session, offer_id: str, expected: OfferState, state: OfferState
) -> tuple[str, ...]:
    """Move the other offers of a resource offer's slot from ``expected`` to ``state`` (one
    statement; the caller logs the event); returns their ids, oldest first."""
    row = ResourceOfferRow
    moved = session.execute(
        update(row)
        .where(_sibling(offer_id, expected))
        .values(state=state.value)
        .returning(row.seq, row.id),
        execution_options={"synchronize_session": False},
    )
    return tuple(offer_id for _, offer_id in sorted(moved))


def _sibling(offer_id: str, state: OfferState) -> Any:
    """Where a resource offer is another offer of ``offer_id``'s slot (its signer and nonce),
    in ``state``."""
    row, of = ResourceOfferRow, aliased(ResourceOfferRow)
    slot = select(of.signer, of.nonce).where(of.id == offer_id)
    return (
        tuple_(row.signer, row.nonce).in_(slot) & (row.id != offer_id) & (row.state == state.value)
    )


def deal_view(row: DealRow) -> api.DealView:
    """A deal row as the protocol shows it: in answers and in deal events alike."""
    return api.DealView(
        deal_id=row.deal_id,
        state=DealState(row.state),
        job_offer_id=row.job_offer_id,
        resource_offer_id=row.resource_offer_id,
        job_creator=row.job_creator,
        provider=row.provider,
        price=int(row.price),
        deal=api.Deal.model_validate(row.deal) if row.deal else None,
        result_cid=row.result_cid,
        tx_hash=row.tx_hash,
        error=row.error,
    )


#: Columns added after the first release, by table: :func:`_upgrade` adds them to an older
#: database.
_ADDED_COLUMNS = {"resource_offers": ("vram_mb", "gpu_models"), "deals": ("module",)}
#: Unique constraints replaced after the first release, by table: :func:`_upgrade` swaps each
#: for the table's constraints of now (a slot's offers share their signer and nonce, one per
#: module).
_REPLACED_UNIQUE = {"resource_offers": "resource_offer_signer_nonce"}
#: Indexes replaced after the first release, by table: :func:`_upgrade` drops each once the
#: table's indexes of now are made (a party's events by address and position, not address only).
_REPLACED_INDEXES = {"event_parties": "ix_event_parties_address"}


def _upgrade(engine: Engine) -> None:
    """Bring a database made by an older solver up to these tables (``create_all`` makes only
    the tables missing): add the missing columns, replace the old unique constraints, add the
    missing indexes, and fill the columns in from what the rows hold (the deals' modules from
    their job offers; the pending resource offers' machines from their bodies, the only ones
    listed)."""
    inspector = inspect(engine)
    added: set[str] = set()
    for name, columns in _ADDED_COLUMNS.items():
        table = Base.metadata.tables[name]
        present = {column["name"] for column in inspector.get_columns(name)}
        with engine.begin() as connection:
            for column in columns:
                if column not in present:
                    kind = table.c[column].type.compile(engine.dialect)
                    connection.execute(text(f"ALTER TABLE {name} ADD COLUMN {column} {kind}"))
                    added.add(name)
    for name, constraint in _REPLACED_UNIQUE.items():
        if constraint in {c["name"] for c in inspector.get_unique_constraints(name)}:
            _replace_unique(engine, Base.metadata.tables[name], constraint)
    for name in {*_ADDED_COLUMNS, *_REPLACED_UNIQUE, *_REPLACED_INDEXES}:
        for index in Base.metadata.tables[name].indexes:
            index.create(engine, checkfirst=True)
    for name, index_name in _REPLACED_INDEXES.items():
        if index_name in {i["name"] for i in inspector.get_indexes(name)}:
            with engine.begin() as connection:
                connection.execute(text(f"DROP INDEX {index_name}"))
            log.info("upgraded table %s: index %s replaced", name, index_name)
    if "deals" in added:
        module = select(JobOfferRow.module).where(JobOfferRow.id == DealRow.job_offer_id)
        with engine.begin() as connection:
            connection.execute(update(DealRow).values(module=module.scalar_subquery()))
    if "resource_offers" in added:
        with Session(engine) as session, session.begin():
            pending = select(ResourceOfferRow).where(
                ResourceOfferRow.state == OfferState.PENDING.value
            )
            for row in session.scalars(pending):
                signed = api.SignedResourceOffer.model_validate(row.body)
                row.vram_mb, row.gpu_models = market_columns(signed)


def _replace_unique(engine: Engine, table: Table, old: str) -> None:
    """Swap the unique constraint ``old`` of ``table`` for the table's unique constraints of
    now, in one transaction, every row kept."""
    name = table.name
    if engine.dialect.name != "sqlite":  # PostgreSQL alters constraints in place
        with engine.begin() as connection:
            connection.execute(text(f"ALTER TABLE {name} DROP CONSTRAINT {old}"))
            for constraint in table.constraints:
                if isinstance(constraint, UniqueConstraint) and constraint.name:
                    connection.execute(AddConstraint(constraint))
        return
    # SQLite alters no constraint: the table is made anew, the rows copied over and its indexes
    # made again, all in one transaction. Foreign keys are off meanwhile (SQLite's own
    # procedure), so that the deals go on referring to the table by its name.
    fresh = table.to_metadata(MetaData(), name=f"{name}_upgrade")
    present = [column["name"] for column in inspect(engine).get_columns(name)]
    columns = ", ".join(column for column in present if column in fresh.c)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("PRAGMA foreign_keys=OFF"))
        connection.execute(text("BEGIN IMMEDIATE"))
        try:
            connection.execute(CreateTable(fresh))
            connection.execute(
                text(f"INSERT INTO {fresh.name} ({columns}) SELECT {columns} FROM {name}")
            )
            connection.execute(text(f"DROP TABLE {name}"))
            connection.execute(text(f"ALTER TABLE {fresh.name} RENAME TO {name}"))
            for index in table.indexes:
                connection.execute(CreateIndex(index))
            connection.execute(text("COMMIT"))
        except BaseException:
            connection.execute(text("ROLLBACK"))
            raise
        finally:
            connection.execute(text("PRAGMA foreign_keys=ON"))
    log.info("upgraded table %s: unique constraint %s replaced", name, old)


def market_columns(signed: api.SignedResourceOffer) -> tuple[int, str | None]:
    """What :class:`ResourceOfferRow` keeps of an offer for the market view's filters: its VRAM
    lane and its advertised GPU models (lowercase, one a line; None when it names none)."""
    vram_mb = offers.Machine.decode(signed.offer.machine).vram_mb
    models = "\n".join(gpu.model.lower() for gpu in signed.gpus)
    return vram_mb, models or None


def _side(model: type[JobOfferRow] | type[ResourceOfferRow]) -> Side:
    return "job" if model is JobOfferRow else "resource"


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL lets the event stream read while the matcher writes; synchronous=FULL makes every
    # commit durable, so a kill loses nothing that was acknowledged.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        rest = f"{user}:***@{rest.split('@', 1)[1]}"
    return f"{scheme}{sep}{rest}"
