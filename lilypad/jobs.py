"""What a job creator posts: a signed job offer together with the job spec it commits to.

The offer carries only hashes (``module = keccak256(module reference)``, ``specHash = SHA-256 of
the canonical spec``); the spec travels beside it through the solver. Nobody has to trust that
copy: :func:`check_submission` ties it to the signed hashes, and a provider or mediator calls
:func:`rerender` to rebuild the spec from the module and the tunables on its own machine and
compare hashes before running anything.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from lilypad.chain.offers import Address, Machine, SignedJobOffer, module_id, spec_digest
from lilypad.errors import ChainError
from lilypad.errors import SpecMismatch as SpecMismatch  # raised here; imported from here too
from lilypad.modules import JobSpec, render

if TYPE_CHECKING:
    from lilypad.chain.light import CreatorMarket
    from lilypad.chain.market import JobMarketClient


#: The most providers a job submission may ask the solver to avoid.
MAX_AVOIDED = 16


class JobSubmission(SignedJobOffer):
    """``POST /api/v1/job_offers``: the signed offer and its job spec.

    ``avoid_providers`` is advisory and not signed: the solver matches the offer with none of
    these providers (``lilypad run --verify redundant`` asks a second provider this way; the job
    creator checks the deal it gets all the same).
    """

    spec: JobSpec
    avoid_providers: Annotated[tuple[Address, ...], Field(max_length=MAX_AVOIDED)] = ()


def check_submission(submission: JobSubmission) -> None:
    """Refuse a spec that is not the one the offer's signature covers.

    Raises:
        SpecMismatch: the spec's own hash is wrong, the offer names another module or spec, or
            its ``machine`` is less than the module needs in some lane (``0`` included).
    """
    spec = submission.spec
    fields = spec.model_dump(mode="json")
    if JobSpec.hash_of(fields) != spec.spec_hash:
        raise SpecMismatch(f"job spec hash {spec.spec_hash} is not the hash of its contents")
    if spec_digest(spec.spec_hash) != submission.offer.spec_hash:
        raise SpecMismatch(
            f"job offer commits to spec {submission.offer.spec_hash}, not {spec.spec_hash}"
        )
    if module_id(spec.module) != submission.offer.module:
        raise SpecMismatch(f"job offer names another module than {spec.module!r}")
    _check_machine(submission.offer.machine, spec)


def _check_machine(machine: int, spec: JobSpec) -> None:
    """Refuse an offer asking for less machine than its spec's module needs: a provider short of
    it would be matched, could only fail, and lose its collateral (``machine: 0``, "no
    requirements", asked for nothing a module ever runs on)."""
    if Machine.reserved_bits(machine):
        raise SpecMismatch(
            f"job offer machine {machine} sets the reserved lanes 5-7 (bits 160 and up), which "
            "no provider offers; leave them zero"
        )
    needs = Machine.for_spec(spec)
    short = Machine.decode(machine).shortfall(needs)
    if short:
        raise SpecMismatch(
            f"job offer machine {machine} asks for less than {spec.module} needs "
            f"({', '.join(short)}); sign it with machine {needs.encode()} ({needs.describe()}) "
            "or more in every lane, as JobOffer.for_spec does"
        )


def rerender(spec: JobSpec) -> JobSpec:
    """Render ``spec``'s module and tunables here, and check the result is the same spec.

    Raises:
        SpecMismatch: this machine renders something else (another module version, a moved tag).
        ModuleError, InvalidTunable: the module or a tunable is not valid here.
    """
    inputs = [f"{name}={_text(value)}" for name, value in spec.tunables.items()]
    mine = render(spec.module, inputs)
    if mine.spec_hash != spec.spec_hash:
        raise SpecMismatch(
            f"{spec.module} renders to {mine.spec_hash} here, not {spec.spec_hash}; "
            "refusing to run a job whose spec differs"
        )
    return mine


class ChainClock:
    """The one "now" for deadlines and expiries: the timestamp the chain's next block will carry.

    Calling the clock returns that estimate in Unix seconds (a float). Every decision against a
    deal's deadline or an offer's expiry — by the job creator, the solver, the provider, the
    bridge — asks a clock like this, never ``time.time()`` or the latest block directly, because:

    * the contract checks ``block.timestamp`` of the block a transaction lands in, which is the
      *next* block, not the latest (on a quiet chain the latest block is old: its time says a
      deadline has not passed when any transaction sent now would find that it has);
    * block time may differ from the wall clock: a dev chain can be moved ahead (time travel in
      tests) or back (snapshot revert), and a node's clock can drift.

    The pending block's timestamp is read at most every ``refresh_s`` seconds (the latest
    block's where a node does not serve ``pending``); the wall clock advances the estimate in
    between, so asking often costs no RPC call. Safe to share between threads.

    Args:
        market: A market client whose ``chain`` has ``block_timestamp(tag)``.
        refresh_s: The most seconds between reads of the chain.
    """

    def __init__(self, market: JobMarketClient | CreatorMarket, refresh_s: float = 3.0) -> None:
        self._market = market
        self._refresh = refresh_s
        self._lead = 0.0
        self._checked = float("-inf")

    def __call__(self) -> float:
        now = time.time()
        if now - self._checked > self._refresh:
            self._checked = now
            self._lead = self._block_time() - now
        return now + self._lead

    def _block_time(self) -> float:
        chain = self._market.chain
        try:
            return float(chain.block_timestamp("pending"))
        except ChainError:  # some nodes do not serve "pending"
            return float(chain.block_timestamp("latest"))


def cancel_message(offer_id: str) -> str:
    """The text an offer's signer signs (EIP-191) to withdraw it from the solver."""
    return f"lilypad: cancel offer {offer_id}"


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)
