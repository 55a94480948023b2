"""Module manifests: ``lilypad_module.toml``, one per module folder or repository.

A manifest names the module and describes its versions. Top-level fields are shared by every
version; each ``[versions."vX"]`` table replaces whichever of them it sets. A manifest without a
``versions`` table describes a single version: the tag of a git module, or ``version`` (default
``local``) for a plain folder.

Network (``none``) and the outputs path (``/outputs``) are not manifest fields: no module and no
input can change them.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from lilypad.errors import InvalidManifest
from lilypad.modules.tunables import (
    RESERVED_ENV,
    RESERVED_ENV_PREFIXES,
    EnvName,
    LegacyInput,
    Tunable,
    TunableName,
    validate_tunable_set,
)

MANIFEST_FILE = "lilypad_module.toml"
NETWORK = "none"
OUTPUTS_PATH = "/outputs"

MODULE_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
VERSION = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
ModuleName = Annotated[str, StringConstraints(pattern=MODULE_NAME)]
#: A model of :mod:`lilypad.ml.tiny` (``sdxl-base``); its generator names the known ones.
TinyModel = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")]
Version = Annotated[str, StringConstraints(pattern=VERSION)]

_SHARED_KEYS = {
    "image",
    "image_digest",
    "entrypoint",
    "env",
    "machine",
    "timeout_s",
    "tunables",
    "legacy_inputs",
    "verification",
    "tiny_weights",
    "tiny_models",
    "summary",
    "at_least_one",
    "strength_steps",
    "scaled_size",
    "ordered",
    "sampler_reference",
}

#: The job's variable for a version's ``sampler_reference``; ``lilypad.ml.samplers`` reads it
#: under the same name (its image carries no ``lilypad.modules``; a test checks they agree).
SAMPLER_REFERENCE_ENV = "LILYPAD_SAMPLER_REFERENCE"


class MachineSpec(BaseModel):
    """What a machine needs to run a module version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpus: int = Field(default=0, ge=0, le=16)
    vram_gb: float = Field(default=0, ge=0)
    cpus: float = Field(default=1, gt=0)
    ram_gb: float = Field(default=1, gt=0)
    disk_gb: float = Field(default=1, gt=0)


class VerificationMethod(StrEnum):
    EXACT = "exact"
    PERCEPTUAL = "perceptual"


class Verification(BaseModel):
    """How a mediator compares a re-run with a submitted result."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: VerificationMethod = VerificationMethod.EXACT
    #: For ``perceptual``: the largest mean absolute pixel difference (0-255) still a match.
    tolerance: float | None = Field(default=None, ge=0)


class SamplerReference(StrEnum):
    """Which reference an ML module's samplers follow where k-diffusion and ComfyUI differ
    (``lilypad.ml.samplers``). Part of a version: changing it changes the output."""

    K_DIFFUSION = "k-diffusion"
    COMFYUI = "comfyui"


class ScaledSize(BaseModel):
    """A picture the job enlarges ``scale`` times (an ``int`` tunable): the result's sides are
    at most ``max_side``. A picture too large for its Scale is refused with the other inputs,
    before anything is signed, where the module would otherwise fail after the deal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    picture: TunableName
    scale: TunableName
    max_side: int = Field(gt=0)


class ModuleVersion(BaseModel):
    """Everything fixed about one version of a module. Immutable once published."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    summary: str = ""
    image: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._/:@-]*$", max_length=255)]
    image_digest: Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")] | None = None
    entrypoint: tuple[str, ...] = Field(min_length=1)
    env: dict[EnvName, str] = Field(default_factory=dict)
    machine: MachineSpec = MachineSpec()
    timeout_s: int = Field(default=600, gt=0, le=86_400)
    tunables: tuple[Tunable, ...] = ()
    legacy_inputs: tuple[LegacyInput, ...] = ()
    verification: Verification = Verification()
    #: What ``--weights tiny`` changes for this version, shown by ``module show``.
    tiny_weights: str | None = None
    #: The tiny models the version loads with ``--weights tiny`` (``["sdxl-base"]``): the
    #: executor has lilypad generate them before the job, which may only read them.
    tiny_models: tuple[TinyModel, ...] = ()
    #: Groups of tunables of which a job must set at least one to something other than 0, ""
    #: or false (outpainting's borders): checked with the other inputs, before anything is
    #: signed, where the module would otherwise fail after the deal.
    at_least_one: tuple[tuple[TunableName, ...], ...] = ()
    #: ``[picture, steps, strength]``: with the picture set, the job runs the last
    #: ``int(steps x strength)`` of its steps (diffusers' ``strength``), and none is refused
    #: before anything is signed, where the module would otherwise fail after the deal.
    strength_steps: tuple[TunableName, TunableName, TunableName] | None = None
    #: ``{picture, scale, max_side}``: the picture's sides times the scale are at most
    #: ``max_side`` (:class:`ScaledSize`).
    scaled_size: ScaledSize | None = None
    #: Pairs ``[low, high]`` of numeric tunables where ``low`` may not exceed ``high``
    #: (ControlNet's ControlStart and ControlEnd): checked with the other inputs, before
    #: anything is signed, where the module would otherwise fail after the deal.
    ordered: tuple[tuple[TunableName, TunableName], ...] = ()
    #: Where k-diffusion and ComfyUI differ, which the job's samplers follow. A version that
    #: says ``comfyui`` gets it in its fixed env (:data:`SAMPLER_REFERENCE_ENV`); the default
    #: adds nothing, so the specs of versions that predate the field keep their bytes.
    sampler_reference: SamplerReference = SamplerReference.K_DIFFUSION

    @field_validator("sampler_reference", mode="before")
    @classmethod
    def _known_reference(cls, value: object) -> object:
        allowed = [r.value for r in SamplerReference]
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"unknown sampler reference {value!r}; {hint}allowed: {', '.join(allowed)}"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        validate_tunable_set(self.tunables, self.legacy_inputs)
        known = {t.name for t in self.tunables}
        for group in self.at_least_one:
            unknown = [name for name in group if name not in known]
            if unknown or len(group) < 2:
                raise ValueError(
                    f"at_least_one group {list(group)}: "
                    + (f"no tunable {unknown[0]!r}" if unknown else "name two tunables or more")
                )
        missing = [name for name in self.strength_steps or () if name not in known]
        if missing:
            raise ValueError(f"strength_steps: no tunable {missing[0]!r}")
        self._check_scaled_size()
        numeric = {t.name for t in self.tunables if t.type.value in ("int", "float")}
        for pair in self.ordered:
            wrong = [name for name in pair if name not in numeric]
            if wrong:
                raise ValueError(f"ordered {list(pair)}: {wrong[0]!r} is no int or float tunable")
        for name in self.env:
            if name in RESERVED_ENV or name.startswith(("LD_", "DYLD_")):
                raise ValueError(f"env {name!r} is reserved")
        clash = set(self.env) & {t.env for t in self.tunables}
        if clash:
            raise ValueError(f"env {sorted(clash)} is both fixed and filled by a tunable")
        if SAMPLER_REFERENCE_ENV in self.env:
            raise ValueError(
                f"env {SAMPLER_REFERENCE_ENV!r} is set from sampler_reference; set that field "
                f"instead ({', '.join(r.value for r in SamplerReference)})"
            )
        if self.sampler_reference is not SamplerReference.K_DIFFUSION:
            env = {**self.env, SAMPLER_REFERENCE_ENV: self.sampler_reference.value}
            object.__setattr__(self, "env", env)
        return self

    def _check_scaled_size(self) -> None:
        if self.scaled_size is None:
            return
        types = {t.name: t.type.value for t in self.tunables}
        for field, wanted in (("picture", "image"), ("scale", "int")):
            name = getattr(self.scaled_size, field)
            if types.get(name) != wanted:
                found = f"is {types[name]}" if name in types else "is no tunable"
                raise ValueError(f"scaled_size.{field}: {name!r} {found}; it names an {wanted}")

    @property
    def image_ref(self) -> str:
        """The image to run: pinned by digest when the manifest knows one."""
        return f"{self.image}@{self.image_digest}" if self.image_digest else self.image


class Manifest(BaseModel):
    """A parsed manifest: the module's name, description and its versions."""

    model_config = ConfigDict(frozen=True)

    name: ModuleName
    description: str
    versions: dict[Version, ModuleVersion]


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural sort key: ``v1.10-lilypad2`` sorts after ``v1.9-lilypad2``."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.findall(r"\d+|[^\d]+", version)
    )


def newest(versions: list[str]) -> str:
    return max(versions, key=version_key)


def load_manifest(directory: Path, single_version: str | None = None) -> Manifest:
    """Read and validate ``directory/lilypad_module.toml``.

    Args:
        directory: The module folder (a built-in ``module/<name>/``, a local folder or a checkout).
        single_version: The version name to give a manifest that has no ``versions`` table
            (a git tag); defaults to the manifest's ``version`` field or ``local``.

    Raises:
        InvalidManifest: naming the file and the first problem found.
    """
    path = directory / MANIFEST_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidManifest(f"{directory} is not a module: it has no {MANIFEST_FILE}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidManifest(f"{path}: not valid TOML: {exc}") from None
    try:
        return _build(data, single_version)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidManifest(f"{path}: {where}: {first['msg']}") from None
    except ValueError as exc:
        raise InvalidManifest(f"{path}: {exc}") from None


def _build(data: dict[str, Any], single_version: str | None) -> Manifest:
    data = dict(data)
    name = data.pop("name", None)
    description = data.pop("description", "")
    own_version = data.pop("version", None)
    tables = data.pop("versions", None)
    unknown = set(data) - _SHARED_KEYS
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(_SHARED_KEYS)}")
    if tables is None:
        tables = {single_version or own_version or "local": {}}
    if not isinstance(tables, dict) or not tables:
        raise ValueError("versions must be a table with at least one version")
    versions = {}
    for version, overrides in tables.items():
        if not isinstance(overrides, dict):
            raise ValueError(f"versions.{version} must be a table")
        versions[version] = {**data, **overrides}
    return Manifest.model_validate({"name": name, "description": description, "versions": versions})


__all__ = [
    "MANIFEST_FILE",
    "NETWORK",
    "OUTPUTS_PATH",
    "RESERVED_ENV_PREFIXES",
    "SAMPLER_REFERENCE_ENV",
    "MachineSpec",
    "Manifest",
    "ModuleVersion",
    "SamplerReference",
    "ScaledSize",
    "Verification",
    "load_manifest",
    "newest",
    "version_key",
]
