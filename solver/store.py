"""The solver's persistent state, through SQLAlchemy: SQLite by default, PostgreSQL in production.

Everything the solver knows lives here, written before it is acted on, so a solver killed at any
moment restarts with every offer and deal it had:

* ``job_offers`` / ``resource_offers``: signed offers as received, with their state;
* ``deals``: one row per match, written *before* ``createDeal`` is sent (state ``matched``) and
  completed from the chain (``DealCreated`` and later events), so a restart can tell a match that
  reached the chain from one that did not, and never sends one twice;
* ``events`` (+ ``event_parties``): the ordered log of state changes the event stream serves,
  each tagged with the addresses it concerns;
* ``meta``: small values such as the next chain block to read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from lilypad.errors import SolverError


class OfferState(StrEnum):
    PENDING = "pending"  # in the order book, waiting for a match
    MATCHED = "matched"  # paired; the deal is being created on chain
    DEALT = "dealt"  # a deal on chain uses it
    CANCELLED = "cancelled"  # withdrawn by its signer
    EXPIRED = "expired"
    REJECTED = "rejected"  # the chain refused it (nonce used, funds gone...)

    def is_terminal(self) -> bool:
        return self in (
            OfferState.DEALT,
            OfferState.CANCELLED,
            OfferState.EXPIRED,
            OfferState.REJECTED,
        )


class DealRowState(StrEnum):
    MATCHED = "matched"  # written before createDeal is sent
    CREATED = "created"
    RESULT_SUBMITTED = "result_submitted"
    ACCEPTED = "accepted"
    PAID = "paid"
    CHALLENGED = "challenged"
    MEDIATED = "mediated"
    TIMED_OUT = "timed_out"
    FAILED = "failed"  # createDeal reverted; the offers were released or rejected

    def is_terminal(self) -> bool:
        return self in (
            DealRowState.ACCEPTED,
            DealRowState.PAID,
            DealRowState.MEDIATED,
            DealRowState.TIMED_OUT,
            DealRowState.FAILED,
        )


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
    __tablename__ = "resource_offers"
    __table_args__ = (UniqueConstraint("signer", "nonce", name="resource_offer_signer_nonce"),)

    collateral: Mapped[str] = mapped_column(String(40))


class DealRow(Base):
    __tablename__ = "deals"

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


class EventRow(Base):
    __tablename__ = "events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class EventPartyRow(Base):
    __tablename__ = "event_parties"

    event_seq: Mapped[int] = mapped_column(ForeignKey("events.seq"), primary_key=True)
    address: Mapped[str] = mapped_column(String(42), primary_key=True, index=True)


class MetaRow(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


@dataclass(frozen=True)
class StoredEvent:
    """One entry of the event log, as the stream sends it."""

    seq: int
    kind: str
    payload: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps({"seq": self.seq, "kind": self.kind, **self.payload}, sort_keys=True)


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
        kind = "job_offer" if isinstance(row, JobOfferRow) else "resource_offer"
        try:
            with self.session() as session:
                session.add(row)
                session.flush()
                self._event(session, f"{kind}.added", {"id": row.id, "state": row.state}, parties)
                return row.seq
        except IntegrityError:
            raise Duplicate(
                f"{kind.replace('_', ' ')} {row.id} is already known "
                f"(or {row.signer} already used nonce {row.nonce})"
            ) from None

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
        **extra: Any,
    ) -> None:
        kind = "job_offer" if model is JobOfferRow else "resource_offer"
        with self.session() as session:
            session.execute(update(model).where(model.id == offer_id).values(state=state.value))
            self._event(session, f"{kind}.{state.value}", {"id": offer_id, **extra}, parties)

    def committed(self, signer: str, model: type[JobOfferRow] | type[ResourceOfferRow]) -> int:
        """What a signer's open offers could still take from its deposit."""
        column = JobOfferRow.max_price if model is JobOfferRow else ResourceOfferRow.collateral
        live = [OfferState.PENDING.value, OfferState.MATCHED.value]
        with self.session() as session:
            rows = session.scalars(
                select(column).where(model.signer == signer, model.state.in_(live))
            )
            return sum(int(value) for value in rows)

    # ------------------------------------------------------------------------------- deals
    def record_matches(self, deals: Sequence[DealRow]) -> None:
        """Write matches before their deals are sent to the chain (one transaction)."""
        with self.session() as session:
            for deal in deals:
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
                    session, "deal.matched", _deal_payload(deal), [deal.job_creator, deal.provider]
                )

    def deals(self, *states: DealRowState, party: str | None = None) -> list[DealRow]:
        with self.session() as session:
            query = select(DealRow)
            if states:
                query = query.where(DealRow.state.in_([s.value for s in states]))
            if party:
                query = query.where((DealRow.job_creator == party) | (DealRow.provider == party))
            return list(session.scalars(query.order_by(DealRow.seq)))

    def deal_by_offer(self, job_offer_id: str) -> DealRow | None:
        with self.session() as session:
            return session.scalar(select(DealRow).where(DealRow.job_offer_id == job_offer_id))

    def deal_by_id(self, deal_id: str) -> DealRow | None:
        with self.session() as session:
            return session.scalar(select(DealRow).where(DealRow.deal_id == deal_id))

    def update_deal(
        self,
        job_offer_id: str,
        state: DealRowState,
        *,
        event_kind: str,
        parties: Sequence[str],
        **values: Any,
    ) -> DealRow | None:
        """Move a deal to ``state`` (set ``values``) and log ``event_kind``; once per state."""
        with self.session() as session:
            deal = session.scalar(select(DealRow).where(DealRow.job_offer_id == job_offer_id))
            if deal is None:
                return None
            for key, value in values.items():
                setattr(deal, key, value)
            deal.state = state.value
            deal.updated_at = time.time()
            session.flush()
            self._event(session, event_kind, _deal_payload(deal), parties)
            return deal

    # ------------------------------------------------------------------------------ events
    def events_after(self, seq: int, party: str | None, limit: int = 500) -> list[StoredEvent]:
        """Events after ``seq``; with ``party``, only those that concern that address."""
        with self.session() as session:
            query = select(EventRow).where(EventRow.seq > seq)
            if party is not None:
                query = query.join(EventPartyRow, EventPartyRow.event_seq == EventRow.seq).where(
                    EventPartyRow.address == party.lower()
                )
            rows = session.scalars(query.order_by(EventRow.seq).limit(limit))
            return [StoredEvent(r.seq, r.kind, r.payload) for r in rows]

    def last_event_seq(self) -> int:
        with self.session() as session:
            rows = session.scalars(select(EventRow.seq).order_by(EventRow.seq.desc()).limit(1))
            return next(iter(rows), 0)

    def log_event(self, kind: str, payload: dict[str, Any], parties: Sequence[str]) -> None:
        with self.session() as session:
            self._event(session, kind, payload, parties)

    def _event(
        self, session: Session, kind: str, payload: dict[str, Any], parties: Sequence[str]
    ) -> None:
        row = EventRow(kind=kind, payload=payload, created_at=time.time())
        session.add(row)
        session.flush()
        for address in {p.lower() for p in parties if p}:
            session.add(EventPartyRow(event_seq=row.seq, address=address))

    # -------------------------------------------------------------------------------- meta
    def get_meta(self, key: str) -> str | None:
        with self.session() as session:
            row = session.get(MetaRow, key)
            return row.value if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.session() as session:
            session.merge(MetaRow(key=key, value=value))


def _deal_payload(deal: DealRow) -> dict[str, Any]:
    return {
        "job_offer_id": deal.job_offer_id,
        "resource_offer_id": deal.resource_offer_id,
        "deal_id": deal.deal_id,
        "state": deal.state,
        "job_creator": deal.job_creator,
        "provider": deal.provider,
        "price": deal.price,
        "result_cid": deal.result_cid,
        "tx_hash": deal.tx_hash,
        "error": deal.error,
        "deal": deal.deal,
    }


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
