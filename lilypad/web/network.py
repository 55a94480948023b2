"""The network at a glance, as both dashboards show it: providers (machines, GPUs, modules,
prices), open offers, recent deals and what each provider earned in them.

Built from the solver's public market view (its open resource offers) and its newest deals, so
the solver's own dashboard and ``lilypad serve`` (which reads them over HTTP) show the same."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lilypad.solver_api import DealState, DealView, MarketOffer
from lilypad.units import format_tokens

#: The deal states in which the provider was paid the price.
PAID = frozenset({DealState.ACCEPTED, DealState.PAID})


@dataclass
class ProviderView:
    address: str
    gpus: list[str] = field(default_factory=list)
    cpus: float = 0.0
    ram_gb: float = 0.0
    modules: set[str] = field(default_factory=set)
    prices: list[int] = field(default_factory=list)
    offers: int = 0
    deals: int = 0
    earned: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "gpus": self.gpus,
            "cpus": self.cpus,
            "ram_gb": self.ram_gb,
            "modules": sorted(self.modules),
            "min_price": format_tokens(min(self.prices)) if self.prices else None,
            "max_price": format_tokens(max(self.prices)) if self.prices else None,
            "open_offers": self.offers,
            "deals": self.deals,
            "earned": format_tokens(self.earned),
        }


def network_view(offers: Iterable[MarketOffer], deals: Iterable[DealView]) -> dict[str, Any]:
    """The dashboards' network view as JSON: ``providers``, ``totals``, ``deals`` (newest
    first, as given)."""
    providers: dict[str, ProviderView] = {}
    open_offers = 0
    for offer in offers:
        open_offers += 1
        row = providers.setdefault(offer.provider, ProviderView(offer.provider))
        machine = offer.machine
        row.gpus = [gpu.model for gpu in offer.gpus] or ["GPU"] * machine.gpus
        row.cpus = machine.cpu_millis / 1000
        row.ram_gb = round(machine.ram_mb / 1024, 1)
        row.modules.add(offer.module_reference or "any module")
        row.prices.append(int(offer.offer.offer.price))
        row.offers += 1
    recent = []
    for deal in deals:
        row = providers.setdefault(deal.provider, ProviderView(deal.provider))
        row.deals += 1
        if deal.state in PAID:
            row.earned += int(deal.price)
        recent.append(
            {
                "deal_id": deal.deal_id,
                "job_offer_id": deal.job_offer_id,
                "state": deal.state.value,
                "provider": deal.provider,
                "job_creator": deal.job_creator,
                "price": format_tokens(int(deal.price)),
                "result_cid": _cid_text(deal.result_cid),
                "tx_hash": deal.tx_hash,
            }
        )
    listed = sorted(providers.values(), key=lambda p: (-p.offers, p.address))
    return {
        "providers": [p.as_json() for p in listed],
        "totals": {
            "providers": sum(1 for p in listed if p.offers),
            "gpus": sum(len(p.gpus) for p in listed if p.offers),
            "open_offers": open_offers,
            "deals": len(recent),
            "earned": format_tokens(sum(p.earned for p in listed)),
        },
        "deals": recent,
    }


def _cid_text(hex_cid: str | None) -> str | None:
    """The result's CID as text (the solver keeps its bytes as 0x hex); a malformed one as is."""
    from lilypad.storage import CID

    if not hex_cid:
        return None
    try:
        return str(CID.from_bytes(bytes.fromhex(hex_cid.removeprefix("0x"))))
    except ValueError:
        return hex_cid
