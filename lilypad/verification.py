"""How a job creator checks that a provider ran its job: the ``--verify`` policies and their odds.

A block-verified download proves that the bytes are the provider's CID, not that the provider ran
the job. Correctness comes from checks the provider cannot predict:

* ``audit`` (the default): once the result is on chain, the job creator draws at random whether to
  challenge it; a challenged result is re-run by a mediator both parties trust, and a wrong one
  costs the provider its collateral. The draw happens after the submission, from a secret random
  source, so the provider cannot know which results are checked.
* ``always``: every result is challenged (a mediation fee per job).
* ``never``: no check beyond the download (trust the provider).
* ``redundant``: the job runs on two providers; equal CIDs (modules are deterministic) are
  accepted, different ones are both challenged.

**The economics.** A provider that cheats on a deal at ``price`` with collateral ``C``, caught
with probability ``p``, expects ``(1 - p) * price - p * C``; doing the work honestly earns
``price - cost``. Cheating cannot pay when ``p * C >= price`` (then even a free cheat is worse
than honest work with a cost up to the price). The market enforces ``C >= multiple * price``
(``JobMarket.collateralMultiple``), and :func:`audit_probability` picks ``p`` per deal from the
deal's own price and collateral with a safety factor, so that ``p * C >= AUDIT_SAFETY * price``.
"""

from __future__ import annotations

import secrets
from enum import StrEnum


class Verify(StrEnum):
    """A job creator's verification policy (``lilypad run --verify``)."""

    AUDIT = "audit"
    ALWAYS = "always"
    NEVER = "never"
    REDUNDANT = "redundant"


#: ``p * collateral`` is kept at least this many times the price (1 would be break-even).
AUDIT_SAFETY = 1.5
#: No result is audited with a lower probability, whatever its collateral (a free job included).
MIN_AUDIT_PROBABILITY = 0.05


def audit_probability(price: int, collateral: int) -> float:
    """The probability ``audit`` challenges a result of a deal at ``price`` with ``collateral``."""
    if collateral <= 0:
        return 1.0
    return min(1.0, max(MIN_AUDIT_PROBABILITY, AUDIT_SAFETY * price / collateral))


def draw_audit(probability: float) -> bool:
    """Whether to audit, drawn from the operating system's secret random source (a provider that
    sees every earlier draw still cannot predict the next one)."""
    if probability >= 1.0:
        return True
    return secrets.randbelow(1_000_000) < int(probability * 1_000_000)
