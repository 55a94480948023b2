"""Typed tunables: what a module accepts through ``-i KEY=VALUE`` and how each value is checked.

A tunable's value only ever reaches a job as the value of the one environment variable the
manifest names for it; it is parsed into its type and validated before anything is signed or paid.
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from lilypad.errors import InvalidManifest, InvalidTunable

TunableValue = str | int | float | bool

#: Environment variable names a manifest may declare: upper-case, shell-safe.
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
#: Tunable names as users type them: `Prompt`, `VideoSteps`.
TUNABLE_NAME = r"^[A-Za-z][A-Za-z0-9_]*$"
#: Variables that change how a process or the runtime behaves; no tunable may fill them.
RESERVED_ENV = frozenset(
    {"PATH", "HOME", "USER", "SHELL", "PWD", "TMPDIR", "PYTHONPATH", "PYTHONHOME", "IFS"}
)
RESERVED_ENV_PREFIXES = ("LD_", "LILYPAD_", "DYLD_", "PYTHON", "CUDA_", "NVIDIA_")
#: Longest raw value accepted for any tunable unless its manifest says less.
DEFAULT_MAX_LENGTH = 2000

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME)]
TunableName = Annotated[str, StringConstraints(pattern=TUNABLE_NAME)]


class TunableType(StrEnum):
    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    #: Any bytes, by CID: the job reads the file at the path its env variable names.
    FILE = "file"
    #: A PNG, JPEG or WebP picture, by CID, decoded and checked before anything is signed.
    IMAGE = "image"

    @property
    def is_file(self) -> bool:
        return self in (TunableType.FILE, TunableType.IMAGE)


class ImageFormat(StrEnum):
    """The picture formats an ``image`` tunable may accept (as Pillow names them, lower-case)."""

    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"


_FORMAT_NAMES = {ImageFormat.PNG: "PNG", ImageFormat.JPEG: "JPEG", ImageFormat.WEBP: "WebP"}


class SafetensorsKind(StrEnum):
    """What a ``file`` tunable's ``.safetensors`` file must hold, checked from its header before
    anything is signed (:func:`lilypad.modules.files.check_safetensors`)."""

    #: A LoRA for the SDXL base model (diffusers/PEFT or kohya key names).
    LORA_SDXL = "lora-sdxl"
    #: A textual-inversion embedding for SDXL: one ``clip_l`` and one ``clip_g`` tensor.
    EMBEDDING_SDXL = "embedding-sdxl"

    @property
    def what(self) -> str:
        """What such a file is, for people."""
        return {
            SafetensorsKind.LORA_SDXL: "an SDXL LoRA",
            SafetensorsKind.EMBEDDING_SDXL: "an SDXL textual-inversion embedding",
        }[self]


#: Where a job finds its file inputs: ``/inputs/<tunable name>/<file name>``, read-only.
INPUTS_ROOT = "/inputs"
#: Defaults of a file tunable's limits, when its manifest names none.
DEFAULT_FILE_MAX_BYTES = 100 * 2**20
DEFAULT_IMAGE_MAX_BYTES = 50 * 2**20
DEFAULT_MAX_PIXELS = 4096 * 4096
#: Longest name of one file or folder in an input's IPFS path (as most file systems allow).
MAX_NAME_BYTES = 255


def suggest(value: str, allowed: Iterable[str]) -> str:
    """Return ``" Did you mean 'X'?"`` for the closest allowed name, or an empty string."""
    pool = list(allowed)
    close = difflib.get_close_matches(value, pool, n=1, cutoff=0.6)
    if not close:
        lowered = {name.lower(): name for name in pool}
        close = [lowered[value.lower()]] if value.lower() in lowered else []
    return f" Did you mean {close[0]!r}?" if close else ""


def check_text(label: str, raw: str, max_length: int) -> None:
    """Refuse over-long values and control characters, which no tunable ever needs."""
    if len(raw) > max_length:
        raise InvalidTunable(
            f"{label}: value is {len(raw)} characters long; at most {max_length} are allowed"
        )
    for index, char in enumerate(raw):
        if unicodedata.category(char) in ("Cc", "Cs") or char in "\u2028\u2029":
            raise InvalidTunable(
                f"{label}: control character {char!r} at position {index} is not allowed"
            )


class Tunable(BaseModel):
    """One typed input of a module version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: TunableName
    type: TunableType
    env: EnvName
    description: str
    default: TunableValue | None = None
    min: int | float | None = None
    max: int | float | None = None
    choices: tuple[TunableValue, ...] | None = None
    multiple_of: int | None = Field(default=None, gt=0)
    max_length: int = Field(default=DEFAULT_MAX_LENGTH, gt=0, le=100_000)
    aliases: tuple[TunableName, ...] = ()
    #: ``file`` and ``image``: the most bytes the file may hold (default 100 MiB, images 50 MiB).
    max_bytes: int | None = Field(default=None, gt=0, le=2**40)
    #: ``image``: the most pixels (width times height) the picture may have.
    max_pixels: int | None = Field(default=None, gt=0, le=2**31)
    #: ``image``: the formats accepted (default: PNG, JPEG and WebP).
    formats: tuple[ImageFormat, ...] | None = Field(default=None, min_length=1)
    #: ``file``: a ``.safetensors`` file of this kind, its header checked (default: any bytes).
    safetensors: SafetensorsKind | None = None
    #: ``file`` and ``image``: the job may run without it (its env variable is then not set).
    optional: bool = False
    #: ``file`` and ``image``: the name the file is mounted under when the value is a bare CID
    #: (default: the tunable's name in lower case); a path's last segment names it otherwise.
    file_name: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_BYTES)

    @property
    def required(self) -> bool:
        return self.default is None and not self.optional

    @property
    def is_file(self) -> bool:
        return self.type.is_file

    @property
    def byte_limit(self) -> int:
        """The most bytes a file tunable's file may hold."""
        if self.max_bytes is not None:
            return self.max_bytes
        return DEFAULT_IMAGE_MAX_BYTES if self.type is TunableType.IMAGE else DEFAULT_FILE_MAX_BYTES

    @property
    def pixel_limit(self) -> int:
        return self.max_pixels if self.max_pixels is not None else DEFAULT_MAX_PIXELS

    @property
    def image_formats(self) -> tuple[ImageFormat, ...]:
        return self.formats if self.formats is not None else tuple(ImageFormat)

    def mount_path(self, value: str) -> str:
        """Where the job finds the file of ``value`` (a canonical ``<CID>[/path]``)."""
        _, _, path = value.partition("/")
        name = path.rsplit("/", 1)[-1] if path else self.file_name or self.name.lower()
        return f"{INPUTS_ROOT}/{self.name}/{name}"

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.env in RESERVED_ENV or self.env.startswith(RESERVED_ENV_PREFIXES):
            raise ValueError(f"env {self.env!r} is reserved and cannot be filled by a tunable")
        self._check_file_fields()
        numeric = self.type in (TunableType.INT, TunableType.FLOAT)
        if not numeric and (self.min is not None or self.max is not None or self.multiple_of):
            raise ValueError(f"min, max and multiple_of need a numeric type, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self._coerce(c) for c in self.choices))
        if self.default is not None:
            object.__setattr__(self, "default", self.validate_value(self._coerce(self.default)))
        return self

    def _check_file_fields(self) -> None:
        if self.safetensors is not None and self.type is not TunableType.FILE:
            raise ValueError(f"safetensors needs type file, not {self.type}")
        file_only = {
            "max_bytes": self.max_bytes,
            "optional": self.optional or None,
            "file_name": self.file_name,
        }
        image_only = {"max_pixels": self.max_pixels, "formats": self.formats}
        if not self.is_file:
            given = sorted(k for k, v in {**file_only, **image_only}.items() if v is not None)
            if given:
                raise ValueError(f"{', '.join(given)} need type file or image, not {self.type}")
            return
        if self.type is TunableType.FILE:
            given = sorted(k for k, v in image_only.items() if v is not None)
            if given:
                raise ValueError(f"{', '.join(given)} need type image, not file")
        if self.default is not None or self.choices is not None:
            raise ValueError(
                f"a tunable of type {self.type} has no default or choices; mark it optional = true "
                "if a job may leave it out"
            )
        if self.file_name is not None:
            _check_segment(self.file_name, f"{self.name}: file_name")

    def _coerce(self, value: TunableValue) -> TunableValue:
        """Turn a manifest literal (TOML gives ints for floats like `7`) into this type."""
        if (
            self.type is TunableType.FLOAT
            and isinstance(value, int)
            and not isinstance(value, bool)
        ):
            return float(value)
        expected = {
            TunableType.STRING: str,
            TunableType.INT: int,
            TunableType.FLOAT: float,
            TunableType.BOOL: bool,
            TunableType.FILE: str,
            TunableType.IMAGE: str,
        }[self.type]
        if type(value) is not expected:
            raise ValueError(f"{self.name}: {value!r} is not a {self.type}")
        return value

    def describe_allowed(self) -> str:
        """A short phrase for error messages: what values this tunable accepts."""
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.is_file:
            return self._describe_file()
        parts = [f"{'an integer' if self.type is TunableType.INT else 'a ' + self.type.value}"]
        if self.min is not None and self.max is not None:
            parts.append(f"from {_num(self.min)} to {_num(self.max)}")
        elif self.min is not None:
            parts.append(f"of at least {_num(self.min)}")
        elif self.max is not None:
            parts.append(f"of at most {_num(self.max)}")
        if self.multiple_of:
            parts.append(f"and a multiple of {self.multiple_of}")
        return " ".join(parts)

    def _describe_file(self) -> str:
        limits = [_size(self.byte_limit)]
        what = "a file"
        if self.type is TunableType.IMAGE:
            names = [_FORMAT_NAMES[f] for f in self.image_formats]
            kinds = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
            what = f"a {kinds} picture"
            limits.append(f"{self.pixel_limit:,} pixels")
        elif self.safetensors is not None:
            what = f"{self.safetensors.what} (.safetensors)"
        return (
            f"{what} (at most {', '.join(limits)}) as @path/to/file, ipfs://CID[/path] "
            "or a bare CID"
        )

    def parse(self, raw: str, given_as: str | None = None) -> TunableValue:
        """Parse a raw command-line string into this tunable's type and validate it.

        Raises:
            InvalidTunable: naming the tunable, the value and what is allowed.
        """
        label = given_as or self.name
        check_text(label, raw, self.max_length)
        value: TunableValue
        if self.is_file:
            value = parse_file_ref(label, raw, self.describe_allowed())
        elif self.type is TunableType.STRING:
            value = raw
        elif self.type is TunableType.INT:
            if not _INT.fullmatch(raw):
                raise InvalidTunable(
                    f"{label}={raw!r} is not an integer; expected {self.describe_allowed()}"
                )
            value = int(raw)
        elif self.type is TunableType.FLOAT:
            if not _FLOAT.fullmatch(raw) or not math.isfinite(float(raw)):
                raise InvalidTunable(
                    f"{label}={raw!r} is not a number; expected {self.describe_allowed()}"
                )
            value = float(raw)
        else:
            if raw.lower() not in _BOOLS:
                raise InvalidTunable(f"{label}={raw!r} is not a boolean; use true or false")
            value = _BOOLS[raw.lower()]
        return self.validate_value(value, label)

    def validate_value(self, value: TunableValue, label: str | None = None) -> TunableValue:
        """Check a typed value against choices, bounds and step."""
        label = label or self.name
        if self.choices is not None:
            if value not in self.choices:
                hint = suggest(str(value), [str(c) for c in self.choices])
                raise InvalidTunable(
                    f"{label}={value!r} is not allowed; choose {self.describe_allowed()}.{hint}"
                )
            return value
        if self.is_file:
            if not isinstance(value, str):
                raise InvalidTunable(f"{label}={value!r} is not an IPFS file reference")
            if parse_file_ref(label, value, self.describe_allowed()) != value:
                raise InvalidTunable(f"{label}={value!r} is not a canonical IPFS file reference")
        elif isinstance(value, str):
            check_text(label, value, self.max_length)
        elif not isinstance(value, bool):
            out_of_range = (self.min is not None and value < self.min) or (
                self.max is not None and value > self.max
            )
            off_step = self.multiple_of is not None and (
                not float(value).is_integer() or int(value) % self.multiple_of
            )
            if out_of_range or off_step:
                raise InvalidTunable(
                    f"{label}={_num(value)} is out of range; expected {self.describe_allowed()}"
                )
        return value

    def env_value(self, value: TunableValue) -> str:
        """The canonical text of a value as the module's process sees it: for a file, the path
        it is mounted at."""
        if self.is_file:
            return self.mount_path(str(value))
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return repr(value)
        return str(value)


class LegacyInput(BaseModel):
    """An old-style input (``PromptEnv="PROMPT=..."``) that fills one tunable.

    Only the variable named here may appear before the ``=``; anything else is refused, so a legacy
    input can never set another environment variable.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: TunableName
    variable: EnvName
    tunable: TunableName

    def unwrap(self, raw: str) -> str:
        variable, sep, value = raw.partition("=")
        if not sep or variable != self.variable:
            raise InvalidTunable(
                f"{self.name}={raw!r}: expected {self.variable}=<value>; "
                f"{self.name} can only set {self.variable}"
            )
        return value


def parse_inputs(pairs: Sequence[str]) -> list[tuple[str, str]]:
    """Split raw ``KEY=VALUE`` strings, refusing a missing ``=`` or an empty key."""
    parsed = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            example = f"{pair}=<value>" if pair and not sep else "Prompt=hello"
            raise InvalidTunable(f"-i {pair!r}: expected KEY=VALUE, for example -i {example}")
        parsed.append((key, value))
    return parsed


def resolve_tunables(
    tunables: Sequence[Tunable],
    legacy: Sequence[LegacyInput],
    inputs: Sequence[tuple[str, str]],
    module_label: str,
) -> dict[str, TunableValue]:
    """Validate user inputs against a module's tunables and fill in defaults.

    Returns:
        Every tunable's value by its canonical name, in manifest order.

    Raises:
        InvalidTunable: for an unknown key, a key given twice (directly, by alias or by a legacy
            input), a value that does not parse or validate, or a required tunable left out.
    """
    by_name: dict[str, Tunable] = {}
    for tunable in tunables:
        by_name[tunable.name] = tunable
        for alias in tunable.aliases:
            by_name[alias] = tunable
    legacy_by_name = {item.name: item for item in legacy}
    given: dict[str, tuple[str, TunableValue]] = {}
    for key, raw in inputs:
        if key in legacy_by_name:
            item = legacy_by_name[key]
            tunable, label, raw = by_name[item.tunable], key, legacy_by_name[key].unwrap(raw)
        elif key in by_name:
            tunable, label = by_name[key], key
        else:
            allowed = sorted(by_name) + sorted(legacy_by_name)
            raise InvalidTunable(
                f"{module_label} has no tunable {key!r}.{suggest(key, allowed)} "
                f"Allowed: {', '.join(t.name for t in tunables) or 'none'}"
            )
        if tunable.name in given:
            first = given[tunable.name][0]
            same = "" if first == label else f" (as {first!r} and {label!r})"
            raise InvalidTunable(f"{tunable.name} is given twice{same}; give it once")
        given[tunable.name] = (label, tunable.parse(raw, label))
    values: dict[str, TunableValue] = {}
    for tunable in tunables:
        if tunable.name in given:
            values[tunable.name] = given[tunable.name][1]
        elif tunable.default is not None:
            values[tunable.name] = tunable.default
        elif tunable.optional:
            continue  # an optional file left out: no value, no env variable
        else:
            raise InvalidTunable(
                f"{module_label} needs {tunable.name}: {tunable.description} "
                f"(for example -i {tunable.name}=...)"
            )
    return values


def tunables_env(tunables: Sequence[Tunable], values: Mapping[str, Any]) -> dict[str, str]:
    """The environment variables a job gets from its tunable values (none for an optional file
    left out)."""
    return {t.env: t.env_value(values[t.name]) for t in tunables if t.name in values}


def parse_file_ref(label: str, raw: str, allowed: str = "") -> str:
    """A file tunable's value as its canonical IPFS path: ``<CIDv1>`` or ``<CIDv1>/<path>``.

    Accepts ``ipfs://CID[/path]`` (percent-escapes decoded), ``/ipfs/CID[/path]`` and a bare
    ``CID[/path]``; a CIDv0 becomes its CIDv1. ``@file`` and ``https://`` must have been added
    to IPFS by the CLI before the spec is made.

    Raises:
        InvalidTunable: naming the value and what is allowed.
    """
    from urllib.parse import unquote

    from lilypad.errors import InvalidCID
    from lilypad.storage.cid import CID  # NOTE: lazy: the storage package costs 0.1 s

    expected = f"; expected {allowed}" if allowed else ""
    text = raw.strip()
    if text.startswith("@"):
        raise InvalidTunable(
            f"{label}={raw!r} names a local file: `lilypad run` and `lilypad module run` "
            f"add it to IPFS first; here give its IPFS CID{expected}"
        )
    if text.lower().startswith(("http://", "https://")):
        raise InvalidTunable(
            f"{label}={raw!r} is a web address: `lilypad run` downloads it and adds it to IPFS "
            f"first; here give its IPFS CID{expected}"
        )
    if text.lower().startswith("ipfs://"):
        text = unquote(text[len("ipfs://") :])
    elif text.startswith("/ipfs/"):
        text = text[len("/ipfs/") :]
    root, _, path = text.partition("/")
    try:
        cid = CID.parse(root)
    except InvalidCID as exc:
        raise InvalidTunable(
            f"{label}={raw!r} is not an IPFS file: {exc.message}{expected}"
        ) from None
    segments = path.split("/") if path else []
    for segment in segments:
        _check_segment(segment, f"{label}={raw!r}")
    return "/".join([str(cid.v1()), *segments])


def _check_segment(name: str, label: str) -> None:
    """One name of an IPFS path: a file or folder name, never ``..`` or empty."""
    if not name:
        raise InvalidTunable(f"{label}: the path has an empty segment (// or a trailing /)")
    if name in (".", "..") or "/" in name or "\\" in name:
        raise InvalidTunable(
            f"{label}: {name!r} is not allowed as a name in an IPFS path (no '..', '/' or '\\')"
        )
    check_text(label, name, MAX_NAME_BYTES)
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidTunable(f"{label}: the name {name[:40]!r}… is over {MAX_NAME_BYTES} bytes")


def validate_tunable_set(tunables: Sequence[Tunable], legacy: Sequence[LegacyInput]) -> None:
    """Refuse manifests whose names, aliases or env variables collide."""
    names: set[str] = set()
    envs: set[str] = set()
    for tunable in tunables:
        for name in (tunable.name, *tunable.aliases):
            if name in names:
                raise InvalidManifest(f"tunable name {name!r} is declared twice")
            names.add(name)
        if tunable.env in envs:
            raise InvalidManifest(f"env {tunable.env!r} is filled by two tunables")
        envs.add(tunable.env)
    canonical = {t.name: t for t in tunables}
    for item in legacy:
        if item.name in names:
            raise InvalidManifest(f"legacy input {item.name!r} clashes with a tunable name")
        if item.tunable not in canonical:
            raise InvalidManifest(
                f"legacy input {item.name!r} maps to unknown tunable {item.tunable!r}"
            )
        if canonical[item.tunable].env != item.variable:
            raise InvalidManifest(
                f"legacy input {item.name!r} sets {item.variable} but {item.tunable} fills "
                f"{canonical[item.tunable].env}"
            )
        names.add(item.name)


def _size(count: int) -> str:
    """A byte count for people: ``50 MiB``, ``1.5 GiB``, ``300 bytes``."""
    value: float = count
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{_num(round(value, 1))} {unit}"
        value /= 1024
    return f"{count} bytes"


def _num(value: float | int) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
