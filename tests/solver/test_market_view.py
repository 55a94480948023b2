"""The market view: the open resource offers and the deals, paged and filtered, through a real
solver (uvicorn, SQLite, anvil), and ``lilypad providers list`` / ``module list --network`` on it.

Big listings are filled straight into the store (thousands of rows, as a busy solver holds);
what the API serves of them is compared with what the rows say, page by page.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text

from lilypad import solver_api as api
from lilypad.chain.crypto import to_checksum_address
from lilypad.chain.offers import ZERO_BYTES32, Machine, ResourceOffer, module_id
from solver.store import DealRow, JobOfferRow, ResourceOfferRow, Store, market_columns
from tests.conftest import CliRunner
from tests.solver.conftest import ETH, Net, Server, SolverFactory

GPUS = {
    "h100": api.GpuInfo(model="NVIDIA H100 80GB HBM3", vram_mb=81559),
    "4090": api.GpuInfo(model="NVIDIA GeForce RTX 4090", vram_mb=24564),
    "a100": api.GpuInfo(model="NVIDIA A100-SXM4-40GB", vram_mb=40960),
}
MODULES = ("cowsay:v0.0.4", "sdxl:v0.9-lilypad1", "sdxl:v1.0-lilypad1", None)  # None: any
ROWS = 3000


@dataclass(frozen=True)
class Planted:
    """What one offer filled into the store is: what the listing must show of it."""

    seq: int
    id: str
    provider: str
    module: str | None
    gpu: str | None
    open: bool


def _address(i: int) -> str:
    return to_checksum_address(f"0x{0xA11CE000 + i:040x}")


def _fill_offers(store: Store, net: Net, count: int) -> list[Planted]:
    """``count`` resource offers of 40 providers: most pending, some cancelled, dealt or past
    their expiry; GPUs of three models and none."""
    now = net.now()
    planted, rows = [], []
    for i in range(count):
        gpu = (None, "h100", "4090", "a100")[i % 4]
        module = MODULES[i % 7 % 4]
        state = api.OfferState.CANCELLED if i % 11 == 0 else api.OfferState.PENDING
        if i % 13 == 0:
            state = api.OfferState.DEALT
        expiry = now - 60 if i % 17 == 0 else now + 3600
        machine = Machine(
            gpus=1 if gpu else 0,
            vram_mb=GPUS[gpu].vram_mb if gpu else 0,
            cpu_millis=16000,
            ram_mb=64 * 1024,
            disk_mb=500 * 1024,
        )
        offer = api.ResourceOffer(
            provider=_address(i % 40),
            module=module_id(module) if module else ZERO_BYTES32,
            machine=machine.encode(),
            price=(1 + i % 5) * ETH,
            collateral=10 * ETH,
            mediators=(net.mediator.address,),
            expiry=expiry,
            nonce=10**6 + i,
        )
        signed = api.SignedResourceOffer(
            offer=offer,
            signature="0x" + "00" * 65,
            module_reference=module,
            gpus=(GPUS[gpu],) if gpu else (),
        )
        vram_mb, models = market_columns(signed)
        rows.append(
            ResourceOfferRow(
                id=offer.struct_hash(),
                signer=offer.provider,
                nonce=str(offer.nonce),
                module=offer.module,
                expires_at=expiry,
                state=state.value,
                body=signed.model_dump(mode="json"),
                created_at=now,
                collateral=str(offer.collateral),
                vram_mb=vram_mb,
                gpu_models=models,
            )
        )
    with store.session() as session:
        session.add_all(rows)
    for i, row in enumerate(rows):
        gpu = (None, "h100", "4090", "a100")[i % 4]
        is_open = row.state == api.OfferState.PENDING.value and row.expires_at > now
        planted.append(Planted(row.seq, row.id, row.signer, MODULES[i % 7 % 4], gpu, is_open))
    return planted


def _fill_deals(store: Store, net: Net, count: int) -> list[tuple[int, str, str]]:
    """``count`` deals (each with its job and resource offers), ``(seq, state, module)``."""
    now = net.now()
    states = (api.DealState.CREATED, api.DealState.PAID, api.DealState.ACCEPTED)
    creators = [_address(1000 + i) for i in range(5)]
    jobs, resources, deals = [], [], []
    for i in range(count):
        module = MODULES[i % 3]
        assert module is not None
        ids = f"0x{i:064x}", f"0x{10**8 + i:064x}"
        common = {"nonce": str(i), "module": module_id(module), "expires_at": now, "body": {}}
        jobs.append(
            JobOfferRow(
                id=ids[0],
                signer=creators[i % 5],
                state="dealt",
                created_at=now,
                max_price="1",
                **common,
            )
        )
        resources.append(
            ResourceOfferRow(
                id=ids[1],
                signer=_address(i % 40),
                state="dealt",
                created_at=now,
                collateral="1",
                **common,
            )
        )
        deals.append(
            DealRow(
                job_offer_id=ids[0],
                resource_offer_id=ids[1],
                state=states[i % 3].value,
                job_creator=creators[i % 5],
                provider=_address(i % 40),
                price=str(ETH),
                updated_at=now,
                module=module_id(module),
            )
        )
    with store.session() as session:
        session.add_all(jobs + resources)
        session.flush()
        session.add_all(deals)
    return [(d.seq, d.state, MODULES[i % 3] or "") for i, d in enumerate(deals)]


@pytest.fixture
def market(
    net: Net, make_solver: SolverFactory, tmp_path: Path
) -> Iterator[tuple[Server, httpx.Client, list[Planted], list[tuple[int, str, str]]]]:
    store = Store(f"sqlite:///{tmp_path / 'solver.db'}")
    offers = _fill_offers(store, net, ROWS)
    deals = _fill_deals(store, net, 2000)
    store.close()
    with (
        Server(make_solver()) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        yield server, client, offers, deals


def _pages(client: httpx.Client, **params: Any) -> Iterator[dict[str, Any]]:
    cursor = None
    while True:
        more = {"cursor": cursor} if cursor else {}
        answer = client.get("/api/v1/resource_offers", params={**params, **more})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        yield page
        cursor = page["next_cursor"]
        if cursor is None:
            return


def _listed(client: httpx.Client, **params: Any) -> list[str]:
    return [o["id"] for page in _pages(client, **params) for o in page["offers"]]


def test_the_open_offers_page_by_page_are_every_open_offer_once_in_order(market: Any) -> None:
    _, client, planted, _ = market
    pages = list(_pages(client, limit=250))
    listed = [o for page in pages for o in page["offers"]]
    expected = [p for p in planted if p.open]
    assert len(expected) > 2000  # a big book: the pages must be right over all of it
    assert [o["id"] for o in listed] == [p.id for p in expected]
    assert all(len(page["offers"]) == 250 for page in pages[:-1])
    first = listed[0]
    plant = expected[0]
    assert first["provider"] == plant.provider
    assert first["module_reference"] == plant.module
    assert first["machine"]["cpu_millis"] == 16000
    assert first["offer"]["offer"]["price"] == str(ETH * (1 + planted.index(plant) % 5))


def test_filters_by_module_vram_gpu_and_provider(market: Any) -> None:
    _, client, planted, _ = market
    open_ = [p for p in planted if p.open]
    assert _listed(client, module="sdxl:v1.0-lilypad1", limit=500) == [
        p.id
        for p in open_
        if p.module in ("sdxl:v1.0-lilypad1", None)  # any module serves it
    ]
    assert _listed(client, module="sdxl", limit=500) == [
        p.id for p in open_ if p.module != "cowsay:v0.0.4"
    ]
    assert _listed(client, module=module_id("cowsay:v0.0.4"), limit=500) == [
        p.id for p in open_ if p.module in ("cowsay:v0.0.4", None)
    ]
    assert _listed(client, min_vram_gb=40, limit=500) == [
        p.id for p in open_ if p.gpu in ("h100", "a100")
    ]
    assert _listed(client, gpu="rtx 40", limit=500) == [p.id for p in open_ if p.gpu == "4090"]
    assert _listed(client, gpu="%", limit=500) == []  # a LIKE wildcard is a plain character
    provider = _address(7).lower()  # any case
    assert _listed(client, provider=provider, module="cowsay:v0.0.4", gpu="H100") == [
        p.id
        for p in open_
        if p.provider == _address(7) and p.module in ("cowsay:v0.0.4", None) and p.gpu == "h100"
    ]


def test_every_listing_query_is_driven_by_an_index(market: Any) -> None:
    """No listing reads the whole table: SQLite's plan for each statement searches an index
    (or, newest deals unfiltered, walks the rowid backwards until the page is full)."""
    server, client, _, _ = market
    engine = server.solver.store.engine
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        for params in (
            {},
            {"module": "sdxl"},
            {"provider": _address(3)},
            {"gpu": "h100", "min_vram_gb": 16},
        ):
            assert client.get("/api/v1/resource_offers", params=params).status_code == 200
        for params in (
            {"module": "sdxl:v0.9-lilypad1"},
            {"state": "paid"},
            {"party": _address(3)},
        ):
            assert client.get("/api/v1/deals", params=params).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    listings = [(s, p) for s, p in statements if "FROM resource_offers" in s or "FROM deals" in s]
    assert len(listings) >= 7
    with engine.connect() as connection:
        for statement, parameters in listings:
            plan = [
                row[-1]
                for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            ]
            unfiltered_deals = "WHERE" not in statement.split("FROM deals")[-1]
            for step in plan:
                if step.startswith("SCAN") and not unfiltered_deals:
                    assert "USING" in step, (statement, plan)
                    assert "INDEX" in step, (statement, plan)


def test_deals_newest_first_paged_and_filtered(market: Any) -> None:
    server, client, _, deals = market
    newest = sorted(deals, reverse=True)
    with api.SolverClient(server.url) as solver:
        assert [d.job_offer_id for d in solver.deals(limit=3)] == [
            f"0x{seq - 1:064x}" for seq, _, _ in newest[:3]
        ]
        seen, cursor = [], None
        while True:
            page = solver.deal_page(
                state=[api.DealState.PAID], module="sdxl:v0.9-lilypad1", limit=97, cursor=cursor
            )
            seen += page.deals
            cursor = page.next_cursor
            if cursor is None:
                break
        expected = [s for s, state, m in newest if state == "paid" and m == "sdxl:v0.9-lilypad1"]
        assert [d.job_offer_id for d in seen] == [f"0x{s - 1:064x}" for s in expected]
        assert len(expected) > 97
        # the callers of before: a party's deals, a list
        mine = solver.deals(party=_address(5), limit=500)
        assert {d.provider for d in mine} == {_address(5)}
        assert len(mine) == sum(1 for i in range(2000) if i % 40 == 5)
    answer = client.get("/api/v1/deals", params={"limit": 2})
    assert answer.headers["link"].endswith('rel="next"')
    last = client.get("/api/v1/deals", params={"limit": 500, "cursor": "3"})
    assert len(last.json()) == 2
    assert "link" not in last.headers


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("resource_offers", {"limit": 501}, "limit"),
        ("resource_offers", {"limit": 0}, "limit"),
        ("deals", {"limit": 100_000}, "limit"),
        ("resource_offers", {"min_vram_gb": -1}, "min_vram_gb"),
        ("resource_offers", {"min_vram_gb": "nan"}, "min_vram_gb"),
        ("resource_offers", {"min_vram_gb": "inf"}, "min_vram_gb"),
        ("resource_offers", {"gpu": "x" * 101}, "gpu"),
        ("resource_offers", {"provider": "0x12"}, "provider"),
        ("resource_offers", {"cursor": "abc"}, "cursor"),
        ("deals", {"cursor": "1" * 19}, "cursor"),
        ("deals", {"state": "done"}, "state"),
        ("resource_offers", {"module": "sdxll"}, "did you mean 'sdxl'"),
        ("deals", {"module": "sdxl:v1.0-lilypad9"}, "did you mean sdxl:v1.0-lilypad1"),
        ("resource_offers", {"module": "x" * 301}, "module"),
    ],
)
def test_a_bad_filter_is_a_422_naming_it(
    served: tuple[Server, httpx.Client], path: str, params: dict[str, Any], named: str
) -> None:
    _, client = served
    answer = client.get(f"/api/v1/{path}", params=params)
    assert answer.status_code == 422, answer.text
    assert named in answer.json()["error"]


def test_an_offer_advertises_its_module_and_gpus_and_may_not_misstate_them(
    net: Net, served: tuple[Server, httpx.Client]
) -> None:
    server, client = served
    lanes = Machine(gpus=1, vram_mb=24564, cpu_millis=8000, ram_mb=32768, disk_mb=204800)
    signed = net.resource(machine=lanes.encode())
    wire = api.SignedResourceOffer(
        offer=api.ResourceOffer.model_validate(signed.offer.model_dump()),
        signature=signed.signature,
        module_reference="sdxl:v0.9-lilypad1",
        gpus=(GPUS["4090"],),
    )
    with api.SolverClient(server.url) as solver:
        for bad, why in (
            ({"module_reference": "sdxl:v1.0-lilypad1"}, "is not its module"),
            ({"gpus": (GPUS["4090"], GPUS["4090"])}, "advertises 2 GPUs"),
            ({"gpus": (api.GpuInfo(model="tiny", vram_mb=1024),)}, "below its machine's vram_mb"),
        ):
            with pytest.raises(api.SolverRefused, match=why) as refused:
                solver.post_resource_offer(wire.model_copy(update=bad))
            assert refused.value.status == 400
        accepted = solver.post_resource_offer(wire)
        [listed] = solver.resource_offers().offers
        assert listed.id == accepted.id
        assert listed.module_reference == "sdxl:v0.9-lilypad1"
        assert listed.gpus == (GPUS["4090"],)
        # a "24 GB" card has 24564 MiB: at least 23.9 GiB, not 24
        assert solver.resource_offers(gpu="4090", min_vram_gb=23.9).offers == (listed,)
        assert solver.resource_offers(min_vram_gb=24).offers == ()
    control = wire.model_dump(mode="json")
    control["gpus"] = [{"model": "RTX\x1b[2J", "vram_mb": 24564}]
    answer = client.post("/api/v1/resource_offers", json=control)
    assert answer.status_code == 422  # control characters would act on a terminal


def test_an_older_database_gets_the_new_columns_filled(
    net: Net, make_solver: SolverFactory, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'solver.db'}"
    store = Store(url)
    planted = _fill_offers(store, net, 40)
    _fill_deals(store, net, 6)
    with store.engine.begin() as connection:  # as a solver before the market view made it
        connection.execute(text("DROP INDEX deal_module_seq"))
        for table, column in (
            ("resource_offers", "vram_mb"),
            ("resource_offers", "gpu_models"),
            ("deals", "module"),
        ):
            connection.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    store.close()
    with Server(make_solver(db_url=url)) as server, api.SolverClient(server.url) as solver:
        found = [o.id for o in solver.resource_offers(gpu="a100", min_vram_gb=40).offers]
        assert found == [p.id for p in planted if p.open and p.gpu == "a100"]
        assert len(solver.deals(module="cowsay:v0.0.4")) == 2


def _post_offers(net: Net, server: Server) -> None:
    """Two providers: one with an RTX 4090 for sdxl and cowsay, one CPU-only for any module."""
    with api.SolverClient(server.url) as solver:
        gpu_box = Machine(
            gpus=1, vram_mb=24564, cpu_millis=16000, ram_mb=64 * 1024, disk_mb=500 * 1024
        )
        for module, price in (("sdxl:v1.0-lilypad1", 3 * ETH), ("cowsay:v0.0.4", 2 * ETH)):
            signed = net.resource(
                net.providers[0], module=module_id(module), machine=gpu_box.encode(), price=price
            )
            solver.post_resource_offer(_advertised(signed, module, (GPUS["4090"],)))
        cpu_box = Machine(gpus=0, cpu_millis=4000, ram_mb=8 * 1024, disk_mb=100 * 1024)
        signed = net.resource(
            net.providers[1], module=ZERO_BYTES32, machine=cpu_box.encode(), price=ETH // 2
        )
        solver.post_resource_offer(_advertised(signed, None, ()))


def _advertised(signed: Any, module: str | None, gpus: tuple[api.GpuInfo, ...]) -> Any:
    offer: ResourceOffer = signed.offer
    return api.SignedResourceOffer(
        offer=api.ResourceOffer.model_validate(offer.model_dump()),
        signature=signed.signature,
        module_reference=module,
        gpus=gpus,
    )


def test_providers_list_shows_each_providers_machine_modules_and_prices(
    net: Net, served: tuple[Server, httpx.Client], cli: CliRunner
) -> None:
    server, _ = served
    net.save_profile("market", solver_url=server.url)
    _post_offers(net, server)
    result = cli("providers", "list", "--network", "market", "--json")
    assert result.exit_code == 0, result.stderr
    cpu, gpu = json.loads(result.stdout)  # cheapest first
    assert gpu["address"] == net.providers[0].address
    assert gpu["gpus"] == [{"model": "NVIDIA GeForce RTX 4090", "vram_mb": 24564}]
    assert gpu["machine"]["cpu_millis"] == 16000
    assert gpu["modules"] == ["cowsay:v0.0.4", "sdxl:v1.0-lilypad1"]
    assert (gpu["min_price"], gpu["max_price"], gpu["offers"]) == (str(2 * ETH), str(3 * ETH), 2)
    assert (cpu["address"], cpu["modules"], cpu["gpus"]) == (
        net.providers[1].address,
        ["any module"],
        [],
    )
    table = cli("providers", "list", "--network", "market").stdout
    row = next(line for line in table.splitlines() if net.providers[0].address in line)
    for cell in ("1x NVIDIA GeForce RTX 4090 (24 GiB)", "16", "64 GiB", "2-3", " 2"):
        assert cell in row, row
    only = json.loads(cli("providers", "list", "-n", "market", "-m", "sdxl", "--json").stdout)
    assert [p["address"] for p in only] == [net.providers[1].address, net.providers[0].address]
    bad = cli("providers", "list", "--network", "market", "--module", "sdxll")
    assert bad.exit_code == 2
    assert "did you mean 'sdxl'" in bad.stderr


def test_module_list_on_a_network_counts_providers_and_the_lowest_price(
    net: Net, served: tuple[Server, httpx.Client], cli: CliRunner
) -> None:
    server, _ = served
    net.save_profile("market", solver_url=server.url)
    _post_offers(net, server)
    result = cli("module", "list", "--network", "market", "--json")
    assert result.exit_code == 0, result.stderr
    market = {m["name"]: m["market"] for m in json.loads(result.stdout)}
    # cowsay runs on the CPU box too (any module), cheapest there
    assert market["cowsay"]["v0.0.4"] == {"providers": 2, "lowest_price": str(ETH // 2)}
    # sdxl 1.0 needs a GPU: only the 4090 box offers it; 0.9 is offered by no one
    assert market["sdxl"]["v1.0-lilypad1"] == {"providers": 1, "lowest_price": str(3 * ETH)}
    assert market["sdxl"]["v0.9-lilypad1"] == {"providers": 0, "lowest_price": None}
    table = cli("module", "list", "--network", "market").stdout
    assert "lowest price" in table.splitlines()[0]
    assert "0.5" in next(line for line in table.splitlines() if line.startswith("cowsay"))
    plain = cli("module", "list", "--json").stdout
    assert all("market" not in m for m in json.loads(plain))


def test_listing_needs_a_solver_in_the_profile(net: Net, cli: CliRunner) -> None:
    net.save_profile("nosolver")
    result = cli("providers", "list", "--network", "nosolver")
    assert result.exit_code == 2
    assert "names no solver_url" in result.stderr
