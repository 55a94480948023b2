"""The chain layer: contracts' artifacts, EIP-712 offers, typed contract calls, events, anvil.

Public API (see each module's docstring):

* :mod:`lilypad.chain.offers` — :class:`JobOffer`, :class:`ResourceOffer`, :class:`Deal`,
  :class:`Machine`, :func:`module_id`, :func:`spec_digest`; EIP-712 type strings and signing.
* :mod:`lilypad.chain.client` — :class:`Chain` (one RPC connection: transactions with managed
  nonces, revert decoding into :class:`~lilypad.errors.ContractReverted`), :func:`load_artifact`.
* :mod:`lilypad.chain.market` — :class:`JobMarketClient`, :class:`TokenClient`,
  :class:`JobCreatorClient`, :class:`DealState`.
* :mod:`lilypad.chain.events` — :class:`EventFollower` (confirmations, resume from a block).
* :mod:`lilypad.chain.deploy` — :func:`deploy`, :class:`Deployment`, :func:`setup_dev_accounts`.
* :mod:`lilypad.chain.anvil` — :class:`Anvil`, a local dev node.
"""

from __future__ import annotations

from lilypad.chain.client import Chain, Receipt, load_artifact
from lilypad.chain.deploy import Deployment, deploy, setup_dev_accounts
from lilypad.chain.events import ChainEvent, EventFollower
from lilypad.chain.market import (
    DealState,
    DealStatus,
    JobCreatorClient,
    JobMarketClient,
    TokenClient,
)
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
