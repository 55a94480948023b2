"""A solver killed at any moment and restarted loses no offer and no deal, and never creates a
deal twice — on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy

from lilypad.chain.anvil import free_port
from lilypad.chain.market import JobMarketClient
from lilypad.chain.offers import Deal
from lilypad.errors import ChainUnavailable, ConfigError
from lilypad.modules import render
from solver import store as store_module
from solver.service import Solver
from solver.store import DealRowState, Duplicate, OfferState, ResourceOfferRow, Store
from tests.solver.conftest import MODULE, Net, Server, SolverFactory, wait_for

OTHER_MODULE = "sdxl-turbo:v1.0-lilypad1"

POSTGRES_URL = os.environ.get(
    "LILYPAD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the PostgreSQL server, dropped afterwards."""
    admin = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"lilypad_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    except sqlalchemy.exc.OperationalError as exc:
        admin.dispose()
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {exc.orig}")
        pytest.skip(f"no PostgreSQL server at {POSTGRES_URL} (as root: make services)")
    yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'solver.db'}"
    return str(request.getfixturevalue("postgres_url"))


class FaultyMarket(JobMarketClient):
    """The real market client, but the process "dies" around createDeals: before the
    transaction is sent, or after it is mined and before the solver hears back."""

    def __init__(self, market: JobMarketClient, when: str) -> None:
        super().__init__(market.chain, market.address)
        self.when = when

    def create_deals(self, solver: Any, pairs: Any) -> Any:
        if self.when == "after":
            super().create_deals(solver, pairs)
        raise ChainUnavailable("the solver died here")


class FailsOnce(JobMarketClient):
    """The real market client, whose first createDeals fails before it is sent (an RPC that
    timed out)."""

    def __init__(self, market: JobMarketClient) -> None:
        super().__init__(market.chain, market.address)
        self.failed = False

    def create_deals(self, solver: Any, pairs: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise ChainUnavailable("the RPC timed out")
        return super().create_deals(solver, pairs)


def deals_created_for(net: Net, job_offer_id: str) -> list[Deal]:
    event = net.market.contract.events.DealCreated()
    logs = event.get_logs(from_block=net.deployment.block)
    deals = [Deal.from_event(log["args"]["deal"]) for log in logs]
    return [d for d in deals if d.job_offer_hash == job_offer_id]


@pytest.mark.parametrize("when", ["before", "after"])
def test_restart_settles_a_match_whose_transaction_outcome_was_unknown(
    net: Net, make_solver: SolverFactory, db_url: str, when: str
) -> None:
    first = make_solver(db_url)
    first.market = FaultyMarket(first.market, when)
    job = first.submit_job_offer(net.job())
    first.submit_resource_offer(net.resource())
    assert len(first.match_once()) == 1
    assert first.store.deal_by_offer(job.id).state == "matched"  # type: ignore[union-attr]
    first.store.close()  # the process is gone

    second: Solver = make_solver(db_url)
    second.recover()
    second.follow_once(second.follower())
    deal = second.store.deal_by_offer(job.id)
    assert deal is not None
    assert deal.state == DealRowState.CREATED.value
    assert len(deals_created_for(net, job.id)) == 1
    assert deal.deal_id == deals_created_for(net, job.id)[0].deal_id
    # and nothing more happens on later passes
    second.recover()
    assert second.match_once() == []
    assert len(deals_created_for(net, job.id)) == 1


def test_a_running_solver_settles_a_match_whose_transaction_failed_to_confirm(
    net: Net, make_solver: SolverFactory
) -> None:
    """A createDeals that raised ChainUnavailable before reaching the chain is settled from the
    nonce soon after (``poll_interval``), not only on the matcher's slow round of unsettled
    matches, nor only after a restart."""
    solver = make_solver()
    solver.market = FailsOnce(solver.market)
    with Server(solver):
        job = solver.submit_job_offer(net.job())
        solver.submit_resource_offer(net.resource())
        created = DealRowState.CREATED.value
        wait_for(lambda: (d := solver.store.deal_by_offer(job.id)) and d.state == created, 3)
    assert solver.market.failed
    assert len(deals_created_for(net, job.id)) == 1


def test_pending_offers_survive_a_restart(
    net: Net, make_solver: SolverFactory, db_url: str
) -> None:
    first = make_solver(db_url)
    jobs = [first.submit_job_offer(net.job()).id for _ in range(3)]
    first.store.close()

    second = make_solver(db_url)
    second.recover()
    for provider in net.providers:
        second.submit_resource_offer(net.resource(provider))
    assert {row.job_offer_id for row in second.match_once()} == set(jobs)
    for job_id in jobs:
        assert second.store.deal_by_offer(job_id).state == "created"  # type: ignore[union-attr]


def test_a_database_of_another_market_is_refused(net: Net, make_solver: SolverFactory) -> None:
    """A fresh chain with the old database (a dev network brought up again) would match against
    offers and deals that do not exist there: the solver refuses to start on it."""
    first = make_solver()
    first.recover()
    first.submit_job_offer(net.job())
    first.store.close()
    other = make_solver()
    other.market = JobMarketClient(net.chain, net.deployment.token)  # any other address
    with pytest.raises(ConfigError, match="belongs to market"):
        other.recover()


def _old_schema(url: str) -> None:
    """The tables as a solver before slots made them: one resource offer per signer and nonce,
    and a party's events indexed by its address alone."""
    metadata = sqlalchemy.MetaData()
    for table in store_module.Base.metadata.sorted_tables:
        table.to_metadata(metadata)
    parties = metadata.tables["event_parties"]
    parties.indexes.clear()
    sqlalchemy.Index("ix_event_parties_address", parties.c.address)
    offers = metadata.tables["resource_offers"]
    [new] = [c for c in offers.constraints if isinstance(c, sqlalchemy.UniqueConstraint)]
    offers.constraints.remove(new)
    offers.append_constraint(
        sqlalchemy.UniqueConstraint("signer", "nonce", name="resource_offer_signer_nonce")
    )
    engine = sqlalchemy.create_engine(url)
    metadata.create_all(engine)
    engine.dispose()


def _rows(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a fixed order."""
    with store.engine.connect() as connection:
        return {
            table.name: sorted(tuple(map(repr, row)) for row in connection.execute(table.select()))
            for table in store_module.Base.metadata.sorted_tables
        }


def test_a_database_from_before_slots_is_upgraded_in_place(
    net: Net, make_solver: SolverFactory, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database whose resource offers were unique by signer and nonce takes a slot (an offer
    per module with one nonce) once a solver opens it, every row it held kept as it was."""
    _old_schema(db_url)
    with monkeypatch.context() as old_code:  # the solver before slots: nothing to upgrade
        old_code.setattr(store_module, "_upgrade", lambda engine: None)
        old = make_solver(db_url)
    old.recover()
    job = old.submit_job_offer(net.job())
    old.submit_resource_offer(net.resource(net.providers[1]))
    assert len(old.match_once()) == 1
    waiting = old.submit_resource_offer(net.resource(net.providers[2]))
    other = render(OTHER_MODULE, ["Prompt=a fox", f"Seed={net.nonce()}"])
    waiting_job = old.submit_job_offer(net.job(net.creators[1], spec=other))
    with pytest.raises(Duplicate):  # the old constraint: one offer per nonce
        old.submit_slot(net.slot(MODULE, OTHER_MODULE))
    before = _rows(old.store)
    old.store.close()

    new = make_solver(db_url)
    assert _rows(new.store) == before  # every row, every column, as it was
    constraints = sqlalchemy.inspect(new.store.engine).get_unique_constraints("resource_offers")
    assert [c["name"] for c in constraints] == ["resource_offer_signer_nonce_module"]
    indexes = sqlalchemy.inspect(new.store.engine).get_indexes("event_parties")
    assert [i["name"] for i in indexes] == ["event_party_address_seq"]
    new.recover()
    posted = new.submit_slot(net.slot(MODULE, OTHER_MODULE))
    assert [row.state for row in posted] == [OfferState.PENDING.value] * 2
    after = _rows(new.store)
    for table, rows in before.items():
        assert set(rows) <= set(after[table]), table
    assert new.store.offer(ResourceOfferRow, waiting.id).state == OfferState.PENDING.value
    assert new.store.deal_by_offer(job.id).state == "created"  # type: ignore[union-attr]
    columns = [c.key for c in ResourceOfferRow.__table__.columns if c.key not in ("seq", "id")]
    twin = ResourceOfferRow(id="0x" + "ab" * 32, **{c: getattr(posted[0], c) for c in columns})
    with pytest.raises(Duplicate):  # one offer per signer, nonce and module still
        new.store.add_slot([twin])
    # the old pending job takes the slot's offer for its module; the other offer steps aside
    [match] = new.match_once()
    assert (match.job_offer_id, match.resource_offer_id) == (waiting_job.id, posted[1].id)
    assert new.store.offer(ResourceOfferRow, posted[0].id).state == OfferState.SUPERSEDED.value
    # a stream catching up reads a party's events in order, from any point
    events = new.store.events_after(0, job.signer)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert {e.kind for e in events} >= {"job_offer.added", "deal.created"}
    assert new.store.events_after(events[1].seq, job.signer) == events[2:]
    after = _rows(new.store)
    new.store.close()
    again = make_solver(db_url)  # opened again: nothing more to do
    assert _rows(again.store) == after


def solver_process(net: Net, db: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "WEB3_PRIVATE_KEY": net.solver.key.hex()}
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lilypad",
                "solver",
                "--network",
                "killtest",
                "--db",
                db,
                "--listen",
                f"127.0.0.1:{port}",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("solver did not start")


@pytest.mark.slow
def test_kill_9_mid_flight_loses_nothing_and_doubles_nothing(
    net: Net, chain_snapshot: None, tmp_path: Path
) -> None:
    net.save_profile("killtest")
    db = f"sqlite:///{tmp_path / 'solver.db'}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "solver.log"
    proc = solver_process(net, db, port, log)
    wait_healthy(url, proc, log)
    job_ids = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for provider in net.providers:
            client.post(
                "/api/v1/resource_offers", json=net.resource(provider).model_dump(mode="json")
            ).raise_for_status()
        for creator in net.creators:
            response = client.post(
                "/api/v1/job_offers", json=net.job(creator).model_dump(mode="json")
            )
            response.raise_for_status()
            job_ids.append(response.json()["id"])
    proc.send_signal(signal.SIGKILL)  # wherever it was: matching, sending, recording
    proc.wait()

    proc = solver_process(net, db, port, log)
    try:
        wait_healthy(url, proc, log)
        with httpx.Client(base_url=url, timeout=10) as client:
            for job_id in job_ids:
                wait_for(
                    lambda job_id=job_id: (
                        (d := client.get(f"/api/v1/job_offers/{job_id}").json()["deal"])
                        and d["state"] == "created"
                    )
                )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    for job_id in job_ids:
        assert len(deals_created_for(net, job_id)) == 1
