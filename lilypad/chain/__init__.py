"""The chain layer: contracts' artifacts, EIP-712 offers, typed contract calls, events, anvil.

Public API (see each module's docstring):

* :mod:`lilypad.chain.offers` — :class:`JobOffer`, :class:`ResourceOffer`, :class:`Deal`,
  :class:`Machine`, :func:`module_id`, :func:`spec_digest`; EIP-712 type strings and signing.
* :mod:`lilypad.chain.crypto` — Keccak, EIP-55 addresses, static ABI words, :class:`Signer`
  (secp256k1 via coincurve), RLP and signed transactions; no web3 or eth-account.
* :mod:`lilypad.chain.light` — :class:`LightChain` (JSON-RPC over httpx) and
  :class:`CreatorMarket`, the job creator's calls; what ``lilypad run`` uses, so it starts fast.
* :mod:`lilypad.chain.abi` — :func:`load_artifact`, :func:`decode_revert` into
  :class:`~lilypad.errors.ContractReverted`.
* :mod:`lilypad.chain.client` — :class:`Chain` (one web3 connection: transactions with managed
  nonces), what the services use.
* :mod:`lilypad.chain.market` — :class:`JobMarketClient`, :class:`TokenClient`.
* :mod:`lilypad.chain.job_creator` — :class:`JobCreatorClient` (contract-submitted jobs).
* :mod:`lilypad.chain.events` — :class:`EventFollower` (confirmations, resume from a block).
* :mod:`lilypad.chain.deployment` — :func:`deploy`, :class:`Deployment`, :func:`setup_dev_accounts`.
* :mod:`lilypad.chain.anvil` — :class:`Anvil`, a local dev node.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Loaded on first use (PEP 562): ``lilypad run`` needs only ``offers`` and ``crypto``, and the
# web3-based modules cost a short-lived process about a second of imports.
_HOME = {
    "Chain": "client",
    "Receipt": "light",
    "load_artifact": "abi",
    "Deployment": "deployment",
    "deploy": "deployment",
    "setup_dev_accounts": "deployment",
    "ChainEvent": "events",
    "EventFollower": "events",
    "DealState": "light",
    "DealStatus": "light",
    "JobCreatorClient": "job_creator",
    "JobMarketClient": "market",
    "TokenClient": "market",
    "Deal": "offers",
    "JobOffer": "offers",
    "Machine": "offers",
    "ResourceOffer": "offers",
    "SignedJobOffer": "offers",
    "SignedResourceOffer": "offers",
    "module_id": "offers",
    "spec_digest": "offers",
}

if TYPE_CHECKING:
    from lilypad.chain.abi import load_artifact
    from lilypad.chain.client import Chain
    from lilypad.chain.deployment import Deployment, deploy, setup_dev_accounts
    from lilypad.chain.events import ChainEvent, EventFollower
    from lilypad.chain.job_creator import JobCreatorClient
    from lilypad.chain.light import DealState, DealStatus, Receipt
    from lilypad.chain.market import JobMarketClient, TokenClient
    from lilypad.chain.offers import (
        Deal,
        JobOffer,
        Machine,
        ResourceOffer,
        SignedJobOffer,
        SignedResourceOffer,
        module_id,
        spec_digest,
    )


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'lilypad.chain' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lilypad.chain.{home}"), name)


__all__ = [
    "Chain",
    "ChainEvent",
    "Deal",
    "DealState",
    "DealStatus",
    "Deployment",
    "EventFollower",
    "JobCreatorClient",
    "JobMarketClient",
    "JobOffer",
    "Machine",
    "Receipt",
    "ResourceOffer",
    "SignedJobOffer",
    "SignedResourceOffer",
    "TokenClient",
    "deploy",
    "load_artifact",
    "module_id",
    "setup_dev_accounts",
    "spec_digest",
]
