"""``lilypad providers``: who is on a network now, on what machine, serving what, at what price.

What it shows comes from the solver's market view (``GET /api/v1/resource_offers``): the open
resource offers, each signed by its provider (machine lanes, module, price); GPU models are what
each provider advertises beside its signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from lilypad.cli.output import console, emit, note
from lilypad.errors import ConfigError, InputError

if TYPE_CHECKING:
    from lilypad.solver_api import MarketOffer

app = typer.Typer(
    help="See the providers on a network: machines, modules and prices.", no_args_is_help=True
)

#: The most open offers one listing reads (20 pages of the solver's largest).
MOST_OFFERS = 10_000
ANY_MODULE = "any module"


def network_offers(network: str, module: str | None = None) -> list[MarketOffer]:
    """The open resource offers on ``network`` (at most :data:`MOST_OFFERS`), those serving
    ``module`` with it.

    Raises:
        UnknownNetwork, ConfigError: no such profile, or it names no solver.
        InputError: the solver refused the filter (the message says why).
        SolverError: the solver could not be reached or failed.
    """
    from lilypad.network import load_network
    from lilypad.solver_api import SolverClient, SolverRefused

    profile = load_network(network)
    if not profile.solver_url:
        raise ConfigError(
            f"network {network!r} names no solver_url", hint="set solver_url in its profile"
        )
    with SolverClient(profile.solver_url) as client:
        try:
            found = list(client.all_resource_offers(most=MOST_OFFERS, module=module))
        except SolverRefused as exc:
            if exc.status == 422:
                raise InputError(exc.error) from None
            raise
    if len(found) >= MOST_OFFERS:
        note(f"showing the first {MOST_OFFERS} open offers of {network!r}")
    return found


@dataclass
class ProviderRow:
    """One provider of the listing: its newest offer's machine, and all its open offers."""

    address: str
    newest: MarketOffer
    modules: set[str] = field(default_factory=set)
    prices: list[int] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "gpus": [gpu.model_dump(mode="json") for gpu in self.newest.gpus],
            "machine": self.newest.machine.model_dump(mode="json"),
            "modules": sorted(self.modules),
            "min_price": str(min(self.prices)),
            "max_price": str(max(self.prices)),
            "offers": len(self.prices),
        }


def by_provider(offers: list[MarketOffer]) -> list[ProviderRow]:
    """The offers gathered by provider, cheapest first (then by address)."""
    rows: dict[str, ProviderRow] = {}
    for offer in offers:
        row = rows.setdefault(offer.provider, ProviderRow(offer.provider, offer))
        if offer.seq > row.newest.seq:
            row.newest = offer
        row.modules.add(module_name(offer))
        row.prices.append(offer.offer.offer.price)
    return sorted(rows.values(), key=lambda r: (min(r.prices), r.address))


def module_name(offer: MarketOffer) -> str:
    """The module an offer serves, for people: its reference, "any module", or its id."""
    from lilypad.chain.offers import ZERO_BYTES32

    if offer.offer.offer.module == ZERO_BYTES32:
        return ANY_MODULE
    return offer.module_reference or offer.offer.offer.module


def gib(mb: int) -> str:
    """MiB as GiB for people: ``24 GiB``, ``0.5 GiB``."""
    value = round(mb / 1024, 1)
    return f"{value:g} GiB"


def describe_gpus(offer: MarketOffer) -> str:
    """``2x NVIDIA H100 80GB HBM3 (80 GiB)``, from the advertised models, else the lanes."""
    lanes = offer.machine
    if not lanes.gpus:
        return "-"
    if not offer.gpus:
        return f"{lanes.gpus}x GPU ({gib(lanes.vram_mb)})"
    counts: dict[tuple[str, int], int] = {}
    for gpu in offer.gpus:
        counts[gpu.model, gpu.vram_mb] = counts.get((gpu.model, gpu.vram_mb), 0) + 1
    return ", ".join(f"{n}x {model} ({gib(vram)})" for (model, vram), n in counts.items())


def price_range(prices: list[int]) -> str:
    from lilypad.units import format_tokens

    low, high = min(prices), max(prices)
    return format_tokens(low) if low == high else f"{format_tokens(low)}-{format_tokens(high)}"


@app.command("list")
def list_providers(
    network: str = typer.Option("local", "--network", "-n", help="Network profile."),
    module: str | None = typer.Option(
        None, "--module", "-m", help="Only providers serving this module (NAME or NAME:VERSION)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List the providers with open offers: machine, modules, prices."""
    rows = by_provider(network_offers(network, module))
    data = [row.as_json() for row in rows]

    def human() -> None:
        if not rows:
            console.print(f"No open offers on {network!r}" + (f" for {module}." if module else "."))
            return
        table = Table(box=None, pad_edge=False)
        table.add_column("provider", no_wrap=True, min_width=42)  # whole: people copy it
        for column in ("GPU", "CPUs", "RAM", "modules", "price", "offers"):
            table.add_column(column)
        for row in rows:
            machine = row.newest.machine
            table.add_row(
                row.address,
                escape(describe_gpus(row.newest)),
                f"{machine.cpu_millis / 1000:g}",
                gib(machine.ram_mb),
                escape("\n".join(sorted(row.modules))),
                price_range(row.prices),
                str(len(row.prices)),
            )
        console.print(table)
        console.print("\nPrices in tokens per job; GPU models as each provider advertises them.")

    emit(data, json_output, human)
