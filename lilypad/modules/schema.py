"""A module version's inputs as a JSON Schema (draft 2020-12), made from its typed tunables.

Forms, SDKs and the HTTP API read this instead of a hand-written copy of each manifest, as Cog
derives its OpenAPI document from a predictor's signature. The schema checks everything about
one input that JSON Schema can say: type, range, step, choices, length and the control
characters no tunable accepts. What it cannot say is added as vendor keys:

* ``x-order``: each property's place in the manifest (JSON objects have no order);
* ``x-lilypad-file``: a ``file`` or ``image`` input, given as ``@path/to/file``,
  ``ipfs://CID[/path]`` or a bare CID, and what the file must be;
* ``x-lilypad-aliases`` and ``x-lilypad-legacy-inputs``: the other names ``-i`` takes
  (JSON inputs use only the properties' names);
* ``x-lilypad-at-least-one``, ``x-lilypad-ordered``, ``x-lilypad-strength-steps`` and
  ``x-lilypad-scaled-size``: the manifest's rules across inputs, also said in the schema's
  ``description`` so a generic form shows them.

A JSON object the schema accepts becomes ``-i`` inputs with :func:`inputs_from_json`; rendering
them then refuses only what the rules across inputs refuse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from lilypad.errors import InvalidTunable
from lilypad.modules.tunables import ImageFormat, Tunable, TunableType, suggest

if TYPE_CHECKING:
    from lilypad.modules import ResolvedModule

DRAFT = "https://json-schema.org/draft/2020-12/schema"
#: Characters no tunable value may hold (:func:`lilypad.modules.tunables.check_text`): Unicode's
#: control characters and the line and paragraph separators. A ``not`` of a search rather than
#: an anchored pattern: Python's ``$`` also matches before a final newline. Unpaired surrogates
#: (a JSON ``\ud800`` escape; render refuses them) are left out: ECMA-262 without the ``u`` flag
#: would match both halves of every emoji.
CONTROL_CHARACTERS = r"[\u0000-\u001f\u007f-\u009f\u2028\u2029]"
_MEDIA_TYPES = {
    ImageFormat.PNG: "image/png",
    ImageFormat.JPEG: "image/jpeg",
    ImageFormat.WEBP: "image/webp",
}
_JSON_TYPES = {
    TunableType.STRING: "string",
    TunableType.INT: "integer",
    TunableType.FLOAT: "number",
    TunableType.BOOL: "boolean",
    TunableType.FILE: "string",
    TunableType.IMAGE: "string",
}


def input_schema(module: ResolvedModule) -> dict[str, Any]:
    """The JSON Schema of ``module``'s inputs: one property per tunable, in manifest order.

    Equal modules give equal documents, key for key, in the same order.
    """
    tunables = _tunables(module)
    spec = module.spec
    required = [] if module.template is not None else sorted(t.name for t in tunables if t.required)
    schema: dict[str, Any] = {
        "$schema": DRAFT,
        "$id": "urn:lilypad:module:" + quote(module.ref, safe="/:@!$&'()*+,;=-._~"),
        "title": module.ref,
        "description": "\n\n".join(
            text for text in (module.description, spec.summary, *_rule_sentences(module)) if text
        ),
        "type": "object",
        "properties": {t.name: _property(t, index) for index, t in enumerate(tunables)},
        "required": required,
        "additionalProperties": False,
        "x-lilypad-format": "lilypad template" if module.template else "lilypad_module.toml",
    }
    if spec.legacy_inputs:
        schema["x-lilypad-legacy-inputs"] = [
            {"name": item.name, "variable": item.variable, "tunable": item.tunable}
            for item in sorted(spec.legacy_inputs, key=lambda item: item.name)
        ]
    if spec.at_least_one:
        schema["x-lilypad-at-least-one"] = sorted(list(group) for group in spec.at_least_one)
    if spec.ordered:
        schema["x-lilypad-ordered"] = sorted(list(pair) for pair in spec.ordered)
    if spec.strength_steps:
        picture, steps, strength = spec.strength_steps
        schema["x-lilypad-strength-steps"] = {
            "picture": picture,
            "steps": steps,
            "strength": strength,
        }
    if spec.scaled_size:
        schema["x-lilypad-scaled-size"] = spec.scaled_size.model_dump(mode="json")
    return schema


def inputs_from_json(module: ResolvedModule, values: Mapping[str, Any]) -> list[str]:
    """``-i KEY=VALUE`` inputs from a JSON object of the schema's shape: each value of the JSON
    type its property names, written as the CLI would take it.

    Raises:
        InvalidTunable: for a name that is no property (an alias names the property to use),
            or a value of the wrong JSON type, naming it and what is allowed.
    """
    tunables = {t.name: t for t in _tunables(module)}
    inputs = []
    for name, value in values.items():
        tunable = tunables.get(name)
        if tunable is None:
            raise _unknown(module, name, list(tunables.values()))
        inputs.append(f"{name}={_text(tunable, value)}")
    return inputs


def _tunables(module: ResolvedModule) -> Sequence[Tunable]:
    return module.template.tunables if module.template is not None else module.spec.tunables


def _property(tunable: Tunable, index: int) -> dict[str, Any]:
    prop: dict[str, Any] = {"type": _JSON_TYPES[tunable.type], "description": tunable.description}
    if tunable.is_file:
        prop["description"] += f"; give {tunable.describe_allowed()}"
    if tunable.default is not None:
        prop["default"] = tunable.default
    if tunable.choices is not None:
        prop["enum"] = list(tunable.choices)
    float_bounds = tunable.type is TunableType.FLOAT
    for key, bound in (("minimum", tunable.min), ("maximum", tunable.max)):
        if bound is not None:
            prop[key] = float(bound) if float_bounds else bound
    if tunable.multiple_of is not None:
        prop["multipleOf"] = tunable.multiple_of
    if prop["type"] == "string":
        if tunable.is_file:
            prop["minLength"] = 1
        prop["maxLength"] = tunable.max_length
        prop["not"] = {"type": "string", "pattern": CONTROL_CHARACTERS}
    prop["x-order"] = index
    if tunable.aliases:
        prop["x-lilypad-aliases"] = sorted(tunable.aliases)
    if tunable.is_file:
        prop["x-lilypad-file"] = _file(tunable)
    return prop


def _file(tunable: Tunable) -> dict[str, Any]:
    about: dict[str, Any] = {
        "kind": tunable.type.value,
        "references": ["@path/to/file", "ipfs://CID[/path]", "CID[/path]"],
        "max_bytes": tunable.byte_limit,
        "mount": f"/inputs/{tunable.name}/<file name>",
    }
    if tunable.type is TunableType.IMAGE:
        about["max_pixels"] = tunable.pixel_limit
        about["formats"] = [f.value for f in tunable.image_formats]
        about["media_types"] = [_MEDIA_TYPES[f] for f in tunable.image_formats]
    if tunable.safetensors is not None:
        about["safetensors"] = tunable.safetensors.value
    return about


def _rule_sentences(module: ResolvedModule) -> list[str]:
    """The manifest's rules across inputs, for people (a form shows the schema's description)."""
    spec = module.spec
    sentences = [
        f"Set at least one of {', '.join(group)} above 0." for group in sorted(spec.at_least_one)
    ]
    sentences += [f"{low} may not be above {high}." for low, high in sorted(spec.ordered)]
    if spec.strength_steps:
        picture, steps, strength = spec.strength_steps
        sentences.append(
            f"With {picture} given, the job runs the last int({steps} x {strength}) of its "
            "steps, which must be at least 1."
        )
    if spec.scaled_size:
        rule = spec.scaled_size
        sentences.append(
            f"{rule.picture}'s longer side times {rule.scale} may be at most {rule.max_side} "
            "pixels."
        )
    return sentences


def _text(tunable: Tunable, value: Any) -> str:
    """A JSON value as ``-i`` takes it, when its JSON type is the one the tunable's schema says."""
    kind = tunable.type
    if kind in (TunableType.STRING, TunableType.FILE, TunableType.IMAGE) and isinstance(value, str):
        return value
    if kind is TunableType.BOOL and isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, bool):
        # NOTE: JSON Schema counts 4.0 as an integer; -i takes it as 4.
        if kind is TunableType.INT and isinstance(value, int):
            return str(value)
        if kind is TunableType.INT and isinstance(value, float) and value.is_integer():
            return str(int(value))
        if kind is TunableType.FLOAT and isinstance(value, int):
            return str(value)
        if kind is TunableType.FLOAT and isinstance(value, float) and math.isfinite(value):
            return repr(value)
    raise InvalidTunable(
        f"{tunable.name}: {json.dumps(value)} is not a JSON {_JSON_TYPES[kind]}; expected "
        f"{tunable.describe_allowed()}"
    )


def _unknown(module: ResolvedModule, name: str, tunables: list[Tunable]) -> InvalidTunable:
    others = {alias: t.name for t in tunables for alias in t.aliases}
    others.update({item.name: item.tunable for item in module.spec.legacy_inputs})
    if name in others:
        return InvalidTunable(
            f"{name} is another name of {others[name]} for -i; JSON inputs use the schema's "
            f"property names: give {others[name]}"
        )
    allowed = [t.name for t in tunables]
    return InvalidTunable(
        f"{module.ref} has no input {name!r}.{suggest(name, allowed)} "
        f"Allowed: {', '.join(allowed) or 'none'}"
    )


__all__ = ["CONTROL_CHARACTERS", "DRAFT", "input_schema", "inputs_from_json"]
