"""Wire models of the market — offers and deals — and their EIP-712 hashing and signing.

The EIP-712 domain is ``{name: "LilypadJobMarket", version: "1", chainId, verifyingContract:
<JobMarket address>}``. The exact type strings (``JobMarket.JOB_OFFER_TYPEHASH`` and
``RESOURCE_OFFER_TYPEHASH`` on chain) are::

    JobOffer(address jobCreator,bytes32 module,bytes32 specHash,uint256 machine,uint96 maxPrice,
             uint32 timeout,address[] mediators,uint64 expiry,uint256 nonce)
    ResourceOffer(address provider,bytes32 module,uint256 machine,uint96 price,uint96 collateral,
                  uint32 minTimeout,address[] mediators,uint64 expiry,uint256 nonce)

(each on one line, no spaces). ``module`` is ``keccak256`` of the module reference
(:func:`module_id`; a resource offer may use zero for "any module"), ``specHash`` the SHA-256
digest of the rendered job spec (``JobSpec.spec_hash`` without its ``sha256:`` prefix), so
provider and mediator can check they run exactly what was paid for. ``machine`` packs eight 32-bit
lanes (:class:`Machine`); a deal needs every offered lane to be at least the needed one.
``minTimeout`` is the least ``timeout`` a job offer must give the provider (its delivery time for
the module: :func:`min_job_timeout`); the market refuses a deal that gives less, and a deal whose
collateral is below ``JobMarket.requiredCollateral(price)``.
``mediators`` are tried in the job creator's order; the first one the provider also names and that
is registered becomes the deal's mediator. Each ``(signer, nonce)`` makes at most one deal, in any
order; nonce ``2**256 - 1`` is reserved. Sequential nonces are cheapest (128 share a storage word).

A :class:`Deal` holds the settlement terms; ``deal_id = keccak256(abi.encode(deal))``. The market
stores only the deal's state under that id, so every settlement call passes the :class:`Deal`
back (the ``DealCreated`` event carries it).

Amounts are integers in the token's smallest unit; addresses are checksummed strings, 32-byte
values ``0x``-prefixed lowercase hex, so the models travel as JSON unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from lilypad.chain.crypto import (
    Signer,
    encode_words,
    is_address,
    keccak,
    normalize_signature,
    recover,
    to_checksum_address,
)
from lilypad.errors import ConfigError
from lilypad.modules.spec import JobSpec

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

JOB_OFFER_TYPE = (
    "JobOffer(address jobCreator,bytes32 module,bytes32 specHash,uint256 machine,uint96 maxPrice,"
    "uint32 timeout,address[] mediators,uint64 expiry,uint256 nonce)"
)
RESOURCE_OFFER_TYPE = (
    "ResourceOffer(address provider,bytes32 module,uint256 machine,uint96 price,uint96 collateral,"
    "uint32 minTimeout,address[] mediators,uint64 expiry,uint256 nonce)"
)
DOMAIN_NAME = "LilypadJobMarket"
DOMAIN_VERSION = "1"
ZERO_BYTES32 = "0x" + "00" * 32
#: The least time a job offer gives a provider beyond the module's own timeout: to see the deal,
#: start the job, add the outputs to IPFS and mine the result. Below it an honest provider could
#: not deliver and would lose its collateral, so the CLI and the solver refuse such offers (and a
#: provider's offers commit to a minimum on chain).
MIN_TIMEOUT_MARGIN_S = 60
#: What a job offer gives beyond the module's timeout by default (a slow image pull, a busy chain).
DEFAULT_TIMEOUT_MARGIN_S = 300


def min_job_timeout(module_timeout_s: int) -> int:
    """The least ``timeout`` a job offer for a module with this timeout may carry."""
    return module_timeout_s + MIN_TIMEOUT_MARGIN_S


#: Of :data:`MIN_TIMEOUT_MARGIN_S`: what a provider allows itself to see a new deal and start its
#: job; the rest is its default submit margin (add the outputs to IPFS, mine the result).
PICKUP_S = 30
DEFAULT_SUBMIT_MARGIN_S = MIN_TIMEOUT_MARGIN_S - PICKUP_S


def default_job_timeout(module_timeout_s: int) -> int:
    """The ``timeout`` a job offer carries unless its creator chooses one."""
    return module_timeout_s + DEFAULT_TIMEOUT_MARGIN_S


def provider_min_timeout(
    module_timeout_s: int, submit_margin_s: int = DEFAULT_SUBMIT_MARGIN_S
) -> int:
    """The ``minTimeout`` a provider's offers commit to: the module's timeout, :data:`PICKUP_S`
    and the provider's submit margin, and never less than :func:`min_job_timeout` (no job offer
    gives less, so committing to less would change nothing)."""
    return max(min_job_timeout(module_timeout_s), module_timeout_s + PICKUP_S + submit_margin_s)


_EIP712_FIELDS: dict[str, list[dict[str, str]]] = {
    "JobOffer": [
        {"name": "jobCreator", "type": "address"},
        {"name": "module", "type": "bytes32"},
        {"name": "specHash", "type": "bytes32"},
        {"name": "machine", "type": "uint256"},
        {"name": "maxPrice", "type": "uint96"},
        {"name": "timeout", "type": "uint32"},
        {"name": "mediators", "type": "address[]"},
        {"name": "expiry", "type": "uint64"},
        {"name": "nonce", "type": "uint256"},
    ],
    "ResourceOffer": [
        {"name": "provider", "type": "address"},
        {"name": "module", "type": "bytes32"},
        {"name": "machine", "type": "uint256"},
        {"name": "price", "type": "uint96"},
        {"name": "collateral", "type": "uint96"},
        {"name": "minTimeout", "type": "uint32"},
        {"name": "mediators", "type": "address[]"},
        {"name": "expiry", "type": "uint64"},
        {"name": "nonce", "type": "uint256"},
    ],
}


def _checksum(value: str) -> str:
    if not is_address(value):
        raise ValueError(f"not an Ethereum address: {value!r}")
    return to_checksum_address(value)


def _bytes32(value: str) -> str:
    text = value.lower()
    if (
        len(text) != 66
        or not text.startswith("0x")
        or any(c not in "0123456789abcdef" for c in text[2:])
    ):
        raise ValueError(f"not a 0x-prefixed 32-byte hex value: {value!r}")
    return text


Address = Annotated[str, AfterValidator(_checksum)]
Bytes32 = Annotated[str, AfterValidator(_bytes32)]
Uint96 = Annotated[int, Field(ge=0, lt=2**96)]
Uint64 = Annotated[int, Field(ge=0, lt=2**64)]
Uint32 = Annotated[int, Field(ge=0, lt=2**32)]
Uint256 = Annotated[int, Field(ge=0, lt=2**256)]
#: Any uint256 but the largest, which the market reserves.
Nonce = Annotated[int, Field(ge=0, lt=2**256 - 1)]
#: The most mediators an offer may name (the market refuses more: matching compares the lists).
MAX_MEDIATORS = 16
Mediators = Annotated[tuple[Address, ...], Field(max_length=MAX_MEDIATORS)]


def _b32(value: str) -> bytes:
    return bytes.fromhex(value[2:])


def module_id(reference: str) -> str:
    """The ``bytes32`` a module reference is known by on chain: keccak256 of its UTF-8 text."""
    return "0x" + keccak(text=reference).hex()


def spec_digest(spec_hash: str) -> str:
    """``JobSpec.spec_hash`` (``sha256:<hex>``) as the ``bytes32`` a JobOffer commits to."""
    algorithm, _, digest = spec_hash.partition(":")
    if algorithm != "sha256" or len(digest) != 64:
        raise ConfigError(f"spec hash {spec_hash!r} is not of the form sha256:<64 hex digits>")
    try:
        return _bytes32("0x" + digest)
    except ValueError as exc:
        raise ConfigError(f"spec hash {spec_hash!r} is not hex") from exc


class Machine(BaseModel):
    """A machine as eight 32-bit lanes of one ``uint256``; lanes 5-7 are reserved (zero).

    Attributes:
        gpus: Number of GPUs (lane 0).
        vram_mb: Memory per GPU in MiB (lane 1).
        cpu_millis: CPU in thousandths of a core (lane 2).
        ram_mb: Memory in MiB (lane 3).
        disk_mb: Disk in MiB (lane 4).
    """

    model_config = ConfigDict(frozen=True)

    gpus: Uint32 = 0
    vram_mb: Uint32 = 0
    cpu_millis: Uint32 = 0
    ram_mb: Uint32 = 0
    disk_mb: Uint32 = 0

    @classmethod
    def for_spec(cls, spec: JobSpec) -> Self:
        """What a job spec's module needs (``JobSpec.machine``), in lanes: the least ``machine``
        a job offer for the spec may ask for."""
        needs = spec.machine
        return cls.from_requirements(
            gpus=needs.gpus,
            vram_gb=needs.vram_gb,
            cpus=needs.cpus,
            ram_gb=needs.ram_gb,
            disk_gb=needs.disk_gb,
        )

    @classmethod
    def from_requirements(
        cls, *, gpus: int, vram_gb: float, cpus: float, ram_gb: float, disk_gb: float
    ) -> Self:
        """From the units a module manifest uses (``JobSpec.machine``), rounding up."""
        return cls(
            gpus=gpus,
            vram_mb=_ceil(vram_gb * 1024),
            cpu_millis=_ceil(cpus * 1000),
            ram_mb=_ceil(ram_gb * 1024),
            disk_mb=_ceil(disk_gb * 1024),
        )

    @staticmethod
    def reserved_bits(value: int) -> int:
        """What a packed ``machine`` holds in the reserved lanes 5-7 (0 when it is well formed)."""
        return value >> (32 * 5)

    def encode(self) -> int:
        """The ``uint256`` the offers carry."""
        return sum(value << (32 * lane) for lane, value in enumerate(self._lanes()))

    @classmethod
    def decode(cls, value: int) -> Self:
        """The inverse of :meth:`encode`."""
        lane = [(value >> (32 * i)) & 0xFFFFFFFF for i in range(5)]
        return cls(
            gpus=lane[0], vram_mb=lane[1], cpu_millis=lane[2], ram_mb=lane[3], disk_mb=lane[4]
        )

    def shortfall(self, needed: Machine) -> list[str]:
        """The lanes in which this machine is below ``needed``, as ``"ram_mb 1024 < 16384"``."""
        return [
            f"{name} {have} < {want}"
            for name, have, want in zip(
                type(self).model_fields, self._lanes(), needed._lanes(), strict=True
            )
            if have < want
        ]

    def describe(self) -> str:
        """The lanes for people: ``gpus=1 vram_mb=12288 cpu_millis=4000 ...``."""
        return " ".join(
            f"{name}={value}"
            for name, value in zip(type(self).model_fields, self._lanes(), strict=True)
        )

    def _lanes(self) -> tuple[int, ...]:
        return (self.gpus, self.vram_mb, self.cpu_millis, self.ram_mb, self.disk_mb)

    def satisfies(self, needed: Machine) -> bool:
        """Whether this (offered) machine meets ``needed`` in every lane, as the contract checks."""
        have, want = self.encode(), needed.encode()
        return all(
            (have >> (32 * i)) & 0xFFFFFFFF >= (want >> (32 * i)) & 0xFFFFFFFF for i in range(8)
        )


def _ceil(value: float) -> int:
    whole = int(value)
    return whole if whole == value else whole + 1


class _Offer(BaseModel):
    model_config = ConfigDict(frozen=True)

    _TYPE_NAME = ""
    _TYPE = ""

    def _values(self) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def struct_hash(self) -> str:
        """The EIP-712 ``hashStruct`` of this offer (what a :class:`Deal` records)."""
        values = tuple(
            (abi_type, tuple(value) if abi_type == "address[]" else value)
            for abi_type, value in self._values()
        )
        return _struct_hash(self._TYPE, values)

    def typed_data(self, chain_id: int, market: str) -> dict[str, Any]:
        """The full EIP-712 message (domain, types, message), as a wallet would be asked to sign."""
        message = {
            field["name"]: value
            for field, (_, value) in zip(
                _EIP712_FIELDS[self._TYPE_NAME], self._values(), strict=True
            )
        }
        return {
            "domain": domain(chain_id, market),
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                self._TYPE_NAME: _EIP712_FIELDS[self._TYPE_NAME],
            },
            "primaryType": self._TYPE_NAME,
            "message": message,
        }

    def digest(self, chain_id: int, market: str) -> str:
        """The EIP-712 digest signed: ``keccak256(0x1901 ‖ domainSeparator ‖ structHash)``."""
        separator = _domain_separator(chain_id, market)
        return "0x" + keccak(b"\x19\x01" + separator + _b32(self.struct_hash())).hex()

    def signer(self, signature: str, chain_id: int, market: str) -> str | None:
        """The address an ECDSA ``signature`` of this offer recovers to (None if malformed).

        Any form :func:`~lilypad.chain.crypto.normalize_signature` reads: 65 bytes with ``v``
        27/28 or 0/1, or 64 bytes (EIP-2098 compact); a high-``s`` (malleable) one is malformed.

        Compare it with the offer's signer; a contract signer (ERC-1271) needs the chain:
        :meth:`lilypad.chain.market.JobMarketClient.signature_valid`.
        """
        try:
            return recover(_b32(self.digest(chain_id, market)), signature)
        except ValueError:  # any malformed signature: no signer, as the contract sees it
            return None

    def chain_signature(self, signature: str, chain_id: int, market: str) -> str:
        """``signature`` as the market takes it: an ECDSA signature by this offer's own signer,
        in any form :func:`~lilypad.chain.crypto.normalize_signature` reads (``v`` 0/1, EIP-2098
        compact), as 65 bytes with ``v`` 27/28; anything else (a contract signer's ERC-1271
        blob, which only that contract reads) unchanged."""
        if self.signer(signature, chain_id, market) == self._party():
            return "0x" + normalize_signature(signature).hex()
        return signature

    def _party(self) -> str:
        raise NotImplementedError

    def sign(self, account: Signer | LocalAccount | str, chain_id: int, market: str) -> str:
        """Sign with ``account`` (a signer, an eth-account account or a private key); returns the
        65-byte signature hex."""
        if isinstance(account, Signer):
            signer = account
        else:  # a key to load: about as dear as the signature itself
            signer = Signer.from_key(account if isinstance(account, str) else bytes(account.key))
        return "0x" + signer.sign_hash(_b32(self.digest(chain_id, market))).hex()


class JobOffer(_Offer):
    """What a job creator signs: run this module and spec, on such a machine, for at most this."""

    _TYPE_NAME = "JobOffer"
    _TYPE = JOB_OFFER_TYPE

    job_creator: Address
    module: Bytes32
    spec_hash: Bytes32
    machine: Uint256 = 0
    max_price: Uint96
    timeout: Uint32
    mediators: Mediators
    expiry: Uint64
    nonce: Nonce

    @classmethod
    def for_spec(
        cls,
        spec: JobSpec,
        *,
        job_creator: str,
        max_price: int,
        mediators: Sequence[str],
        expiry: int,
        nonce: int,
        timeout: int | None = None,
    ) -> Self:
        """The offer to run a rendered job spec: its module, spec hash and machine needs.

        Args:
            spec: From ``lilypad.modules`` rendering (``module render``).
            job_creator: The address that signs and pays.
            max_price: The most the job creator pays, in token units.
            mediators: Mediators the job creator trusts, in order of preference.
            expiry: Unix time after which no deal can be made from the offer.
            nonce: Unused nonce of ``job_creator``.
            timeout: Seconds the provider gets for a result; by default
                :func:`default_job_timeout` of the module's timeout.
        """
        return cls(
            job_creator=job_creator,
            module=module_id(spec.module),
            spec_hash=spec_digest(spec.spec_hash),
            machine=Machine.for_spec(spec).encode(),
            max_price=max_price,
            timeout=default_job_timeout(spec.timeout_s) if timeout is None else timeout,
            mediators=tuple(mediators),
            expiry=expiry,
            nonce=nonce,
        )

    def _party(self) -> str:
        return self.job_creator

    def _values(self) -> list[tuple[str, Any]]:
        return [
            ("address", self.job_creator),
            ("bytes32", self.module),
            ("bytes32", self.spec_hash),
            ("uint256", self.machine),
            ("uint96", self.max_price),
            ("uint32", self.timeout),
            ("address[]", list(self.mediators)),
            ("uint64", self.expiry),
            ("uint256", self.nonce),
        ]

    def as_tuple(self) -> tuple[Any, ...]:
        """The ABI tuple ``JobMarket.JobOffer`` takes."""
        return tuple(_b32(v) if t == "bytes32" else v for t, v in self._values())


class ResourceOffer(_Offer):
    """What a provider signs: this machine, at this price and collateral, with these mediators."""

    _TYPE_NAME = "ResourceOffer"
    _TYPE = RESOURCE_OFFER_TYPE

    provider: Address
    module: Bytes32 = ZERO_BYTES32
    machine: Uint256 = 0
    price: Uint96
    collateral: Uint96
    min_timeout: Uint32 = 0
    mediators: Mediators
    expiry: Uint64
    nonce: Nonce

    def _party(self) -> str:
        return self.provider

    def _values(self) -> list[tuple[str, Any]]:
        return [
            ("address", self.provider),
            ("bytes32", self.module),
            ("uint256", self.machine),
            ("uint96", self.price),
            ("uint96", self.collateral),
            ("uint32", self.min_timeout),
            ("address[]", list(self.mediators)),
            ("uint64", self.expiry),
            ("uint256", self.nonce),
        ]

    def as_tuple(self) -> tuple[Any, ...]:
        """The ABI tuple ``JobMarket.ResourceOffer`` takes."""
        return tuple(_b32(v) if t == "bytes32" else v for t, v in self._values())


class SignedJobOffer(BaseModel):
    """A job offer with its job creator's signature: ECDSA as hex (65 bytes with ``v`` 27/28 or
    0/1, or 64 bytes EIP-2098 compact), or a contract signer's ERC-1271 blob."""

    model_config = ConfigDict(frozen=True)

    offer: JobOffer
    signature: str


class SignedResourceOffer(BaseModel):
    """A resource offer with its provider's signature."""

    model_config = ConfigDict(frozen=True)

    offer: ResourceOffer
    signature: str


class Deal(BaseModel):
    """The settlement terms of a deal, as ``DealCreated`` emits them and every call passes back."""

    model_config = ConfigDict(frozen=True)

    job_creator: Address
    provider: Address
    mediator: Address
    price: Uint96
    collateral: Uint96
    mediation_fee: Uint96
    job_offer_hash: Bytes32
    resource_offer_hash: Bytes32

    #: The field types of ``JobMarket.Deal``, in the order of :meth:`as_tuple`.
    ABI_TYPES: ClassVar[tuple[str, ...]] = (
        "address",
        "address",
        "address",
        "uint96",
        "uint96",
        "uint96",
        "bytes32",
        "bytes32",
    )

    @property
    def deal_id(self) -> str:
        """``keccak256(abi.encode(deal))``: the id the market stores the deal's state under."""
        return "0x" + keccak(encode_words(self.ABI_TYPES, self.as_tuple())).hex()

    def as_tuple(self) -> tuple[Any, ...]:
        """The ABI tuple ``JobMarket.Deal`` takes."""
        return (
            self.job_creator,
            self.provider,
            self.mediator,
            self.price,
            self.collateral,
            self.mediation_fee,
            _b32(self.job_offer_hash),
            _b32(self.resource_offer_hash),
        )

    @classmethod
    def from_event(cls, deal: Any) -> Self:
        """From the ``deal`` argument of a decoded ``DealCreated`` event (a dict or a tuple)."""
        if not isinstance(deal, Mapping):
            names = ("jobCreator", "provider", "mediator", "price", "collateral", "mediationFee")
            deal = dict(zip((*names, "jobOfferHash", "resourceOfferHash"), deal, strict=True))
        return cls(
            job_creator=deal["jobCreator"],
            provider=deal["provider"],
            mediator=deal["mediator"],
            price=deal["price"],
            collateral=deal["collateral"],
            mediation_fee=deal["mediationFee"],
            job_offer_hash=_hex(deal["jobOfferHash"]),
            resource_offer_hash=_hex(deal["resourceOfferHash"]),
        )


def _hex(value: str | bytes) -> str:
    return value if isinstance(value, str) else "0x" + bytes(value).hex()


# An offer is hashed several times on its way (its id, the digest its signature is checked
# against, the row stored), and a provider's slot is many offers: the hashes are remembered, by
# the values hashed (so a copy with other values never finds a stale one).
@functools.lru_cache(maxsize=4096)
def _struct_hash(type_string: str, values: tuple[tuple[str, Any], ...]) -> str:
    types, words = ["bytes32"], [keccak(text=type_string)]
    for abi_type, value in values:
        if abi_type == "address[]":
            types.append("bytes32")
            words.append(keccak(encode_words(["address"] * len(value), value)))
        else:
            types.append(abi_type)
            words.append(_b32(value) if abi_type == "bytes32" else value)
    return "0x" + keccak(encode_words(types, words)).hex()


@functools.lru_cache(maxsize=64)
def _domain_separator(chain_id: int, market: str) -> bytes:
    return keccak(
        encode_words(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [
                keccak(
                    text="EIP712Domain(string name,string version,uint256 chainId,"
                    "address verifyingContract)"
                ),
                keccak(text=DOMAIN_NAME),
                keccak(text=DOMAIN_VERSION),
                chain_id,
                market,
            ],
        )
    )


def domain(chain_id: int, market: str) -> dict[str, Any]:
    """The EIP-712 domain of the JobMarket at ``market`` on chain ``chain_id``."""
    return {
        "name": DOMAIN_NAME,
        "version": DOMAIN_VERSION,
        "chainId": chain_id,
        "verifyingContract": to_checksum_address(market),
    }
