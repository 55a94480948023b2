"""Module input schemas (``lilypad module show REF --schema``): valid JSON Schema, and accepting
exactly what ``lilypad module render`` accepts, input for input.

The schemas are checked with the ``jsonschema`` library (Draft 2020-12) against every built-in
module version; render is the real one, from JSON inputs made by ``inputs_from_json``.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from lilypad import modules
from lilypad.errors import InvalidTunable
from lilypad.modules.gotemplate import go_json_string
from lilypad.modules.schema import input_schema, inputs_from_json
from lilypad.modules.tunables import Tunable, TunableType
from lilypad.storage.cid import CID
from tests.conftest import CliRunner
from tests.test_lilypad_format import SDXL, TYPES, make_repo, module_of

REFS = sorted(f"{m.name}:{v}" for m, _ in modules.list_builtin() for v in m.versions)
#: A file input as a JSON client gives it once the file is on IPFS (a raw block's CID).
PICTURE = str(CID.from_data(b"a picture", codec=0x55))


@functools.cache
def resolved(ref: str) -> tuple[modules.ResolvedModule, dict[str, Any], Draft202012Validator]:
    module = modules.resolve(ref)
    schema = input_schema(module)
    return module, schema, Draft202012Validator(schema)


def render(module: modules.ResolvedModule, instance: dict[str, Any]) -> modules.JobSpec:
    return modules.render(module, inputs_from_json(module, instance))


def needed(schema: dict[str, Any]) -> dict[str, Any]:
    """The least instance: every required input (here, only pictures) given."""
    props = schema["properties"]
    assert all("x-lilypad-file" in props[name] for name in schema["required"])
    return {name: PICTURE for name in schema["required"]}


def rules_hold(schema: dict[str, Any], instance: dict[str, Any]) -> bool:
    """The rules across inputs, as a form would check them from the schema's vendor keys."""
    values = {n: p["default"] for n, p in schema["properties"].items() if "default" in p}
    values.update(instance)
    for group in schema.get("x-lilypad-at-least-one", []):
        if all(values.get(name) in (None, 0, "", False) for name in group):
            return False
    for low, high in schema.get("x-lilypad-ordered", []):
        if values[low] > values[high]:
            return False
    rule = schema.get("x-lilypad-strength-steps")
    return not (
        rule
        and rule["picture"] in values
        and int(values[rule["steps"]] * values[rule["strength"]]) < 1
    )


# --- every built-in version ----------------------------------------------------------------------


@pytest.mark.parametrize("ref", REFS)
def test_every_builtin_schema_is_draft_2020_12_in_manifest_order(ref: str) -> None:
    module, schema, _ = resolved(ref)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:lilypad:module:{ref}"
    assert (schema["title"], schema["type"], schema["additionalProperties"]) == (
        ref,
        "object",
        False,
    )
    names = [t.name for t in module.spec.tunables]
    assert list(schema["properties"]) == names
    assert [p["x-order"] for p in schema["properties"].values()] == list(range(len(names)))
    assert schema["required"] == sorted(t.name for t in module.spec.tunables if t.required)
    assert input_schema(modules.resolve(ref)) == schema  # the same document every time


def edges(tunable: Tunable) -> list[Any]:
    """Valid values at the ends of what a tunable allows."""
    if tunable.choices is not None:
        return list(tunable.choices)
    if tunable.type is TunableType.BOOL:
        return [True, False]
    if tunable.type is TunableType.STRING:
        quoted = "a (weighted:1.2) prompt, [with] 'quotes' \"too\""[: tunable.max_length]
        return ["", "é" * tunable.max_length, quoted]
    if tunable.is_file:
        return [PICTURE, f"ipfs://{PICTURE}/folder/photo.png"]
    step = tunable.multiple_of or 1
    # floor division: a float quotient of a 64-bit bound would round past it
    low = -(-tunable.min // step) * step if tunable.min is not None else -step
    high = tunable.max // step * step if tunable.max is not None else step
    if tunable.type is TunableType.FLOAT:
        return [float(tunable.min or 0), float(tunable.max or 0), low, high]  # JSON 1 is a number
    # JSON 4.0 is an integer too (where the float is exactly the integer)
    return [low, high, *[float(n) for n in (low, high) if float(n) == n]]


@pytest.mark.parametrize("ref", REFS)
def test_defaults_and_the_edges_of_each_input_are_accepted_and_render(ref: str) -> None:
    module, schema, validator = resolved(ref)
    defaults = {n: p["default"] for n, p in schema["properties"].items() if "default" in p}
    everything = {**defaults, **needed(schema)}
    validator.validate(everything)
    assert rules_hold(schema, everything)
    # the defaults, given or left out, are the same job
    assert render(module, everything).tunables == render(module, needed(schema)).tunables
    for tunable in module.spec.tunables:
        for value in edges(tunable):
            instance = {**everything, tunable.name: value}
            validator.validate(instance)
            if rules_hold(schema, instance):
                canonical = value.removeprefix("ipfs://") if tunable.is_file else value
                assert render(module, instance).tunables[tunable.name] == canonical


def probes(tunable: Tunable) -> st.SearchStrategy[Any]:
    """Values in, at and past the ends of what a tunable allows, and of other JSON types."""
    other = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 3),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=4),
        st.just([]),
        st.just({"value": 1}),
    )
    if tunable.is_file:
        return st.one_of(other, st.just(PICTURE))
    near: list[st.SearchStrategy[Any]] = []
    if tunable.choices is not None:
        near.append(st.sampled_from(tunable.choices))
    if tunable.type is TunableType.STRING:
        size = tunable.max_length
        near += [st.text(max_size=12), st.sampled_from(["x" * size, "x" * (size + 1)])]
    elif tunable.type in (TunableType.INT, TunableType.FLOAT):
        low = tunable.min if tunable.min is not None else -20
        high = tunable.max if tunable.max is not None else 20
        ends = [b for b in (tunable.min, tunable.max) if b is not None]
        around = [e + d for e in ends for d in (-1, 0, 1)]
        around += [math.nextafter(float(e), d) for e in ends for d in (-math.inf, math.inf)]
        near += [
            st.sampled_from(around or [0]),
            st.integers(math.floor(low) - 2, math.ceil(high) + 2),
            st.integers(math.floor(low) - 2, math.ceil(high) + 2).map(float),
            st.floats(low - 1, high + 1),
        ]
        if tunable.multiple_of:
            top = math.ceil(high / tunable.multiple_of) + 1
            near.append(st.integers(-1, top).map(lambda n: n * tunable.multiple_of))
    return st.one_of(other, *near)


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_the_schema_accepts_exactly_what_render_accepts(data: st.DataObject) -> None:
    """Values the schema accepts render (but for the vendor keys' rules across inputs); values
    it refuses, for type, range, step, choice, length, control characters or an unknown name,
    render refuses too."""
    module, schema, validator = resolved(data.draw(st.sampled_from(REFS), label="ref"))
    instance = needed(schema)
    picked = data.draw(
        st.lists(st.sampled_from(module.spec.tunables), max_size=3, unique_by=lambda t: t.name)
    )
    for tunable in picked:
        instance[tunable.name] = data.draw(probes(tunable), label=tunable.name)
    others = [a for t in module.spec.tunables for a in t.aliases]
    others += [item.name for item in module.spec.legacy_inputs]
    if data.draw(st.integers(0, 9), label="another name?") == 0:
        instance[data.draw(st.sampled_from(["Nope", "prompt", *others]))] = "1"
    accepted = validator.is_valid(instance)
    try:
        spec = render(module, instance)
    except InvalidTunable:
        assert not (accepted and rules_hold(schema, instance)), instance
    else:
        assert accepted, instance
        assert rules_hold(schema, instance), instance
        assert {k: spec.tunables[k] for k in instance} == instance


@pytest.mark.parametrize(
    ("ref", "given", "keyword", "refused"),
    [
        ("sdxl:v1.1-lilypad1", {"Steps": 0}, "minimum", r"Steps=0 is out of range"),
        ("sdxl:v1.1-lilypad1", {"GuidanceScale": 20.5}, "maximum", r"GuidanceScale=20.5 is out"),
        ("sdxl:v1.1-lilypad1", {"Width": 1020}, "multipleOf", r"and a multiple of 8"),
        ("sdxl:v1.1-lilypad1", {"Sampler": "eulr"}, "enum", r"Did you mean 'euler'\?"),
        ("sdxl:v1.1-lilypad1", {"EmbeddingToken": "t" * 41}, "maxLength", r"at most 40"),
        ("sdxl:v1.1-lilypad1", {"Prompt": "a\ncat"}, "not", r"control character '\\n'"),
        ("sdxl:v1.1-lilypad1", {"Seed": "24"}, "type", r'Seed: "24" is not a JSON integer'),
        ("sdxl:v1.1-lilypad1", {"Seed": 2.5}, "type", r"Seed: 2.5 is not a JSON integer"),
        ("sdxl:v1.1-lilypad1", {"Prompt": 5}, "type", r"Prompt: 5 is not a JSON string"),
        ("sdxl:v1.1-lilypad1", {"Steps": True}, "type", r"Steps: true is not a JSON integer"),
        ("sd15-controlnet", {"Preprocess": "yes"}, "type", r'"yes" is not a JSON boolean'),
        ("sdxl:v1.1-lilypad1", {"Lora": None}, "type", r"Lora: null is not a JSON string"),
        ("sdxl:v1.1-lilypad1", {"Seeed": 1}, "additionalProperties", r"Did you mean 'Seed'\?"),
        ("sdv-pipeline", {"ImageSeed": 1}, "additionalProperties", r"another name of Seed"),
        ("sdxl:v0.9-lilypad1", {"PromptEnv": "PROMPT=x"}, "additionalProperties", r"give Prompt"),
        ("upscale", {}, "required", r"upscale:v1.0-lilypad1 needs Image"),
    ],
)
def test_what_the_schema_refuses_render_refuses_saying_why(
    ref: str, given: dict[str, Any], keyword: str, refused: str
) -> None:
    module, schema, validator = resolved(ref)
    instance = {**needed(schema), **given}
    if keyword == "required":
        instance = given
    assert {e.validator for e in validator.iter_errors(instance)} == {keyword}
    with pytest.raises(InvalidTunable, match=refused):
        render(module, instance)


# --- what JSON Schema cannot say: vendor keys ----------------------------------------------------


def test_the_manifests_rules_across_inputs_are_vendor_keys_and_sentences() -> None:
    _, outpaint, _ = resolved("sdxl-outpainting:v1.1-lilypad1")
    assert outpaint["x-lilypad-at-least-one"] == [["Left", "Right", "Top", "Bottom"]]
    assert "Set at least one of Left, Right, Top, Bottom above 0." in outpaint["description"]
    _, control, _ = resolved("sd15-controlnet:v1.0-lilypad1")
    assert control["x-lilypad-ordered"] == [["ControlStart", "ControlEnd"]]
    assert "ControlStart may not be above ControlEnd." in control["description"]
    _, turbo, _ = resolved("sdxl-turbo:v1.1-lilypad1")
    assert turbo["x-lilypad-strength-steps"] == {
        "picture": "Image", "steps": "Steps", "strength": "Strength",
    }  # fmt: skip
    assert "Image" not in turbo["required"]  # an optional picture
    _, upscale, _ = resolved("upscale:v1.0-lilypad1")
    assert upscale["x-lilypad-scaled-size"] == {
        "picture": "Image",
        "scale": "Scale",
        "max_side": 4096,
    }
    _, cowsay, _ = resolved("cowsay:v0.0.4")
    assert not [k for k in cowsay if k.startswith("x-lilypad-") and k != "x-lilypad-format"]


def test_a_rule_across_inputs_is_refused_by_render_as_the_vendor_key_says() -> None:
    module, schema, validator = resolved("sdxl-outpainting:v1.1-lilypad1")
    borders = {"Image": PICTURE, "Left": 0, "Right": 0, "Top": 0, "Bottom": 0}
    validator.validate(borders)  # valid input by input
    assert not rules_hold(schema, borders)
    with pytest.raises(InvalidTunable, match=r"needs at least one of Left, Right, Top, Bottom"):
        render(module, borders)
    module, schema, validator = resolved("sd15-controlnet:v1.0-lilypad1")
    late = {"Image": PICTURE, "ControlStart": 0.8, "ControlEnd": 0.5}
    validator.validate(late)
    with pytest.raises(InvalidTunable, match=r"ControlStart=0.8 is after ControlEnd=0.5"):
        render(module, late)


def test_file_inputs_are_references_described_for_a_form() -> None:
    _, schema, _ = resolved("sdxl:v1.1-lilypad1")
    lora = schema["properties"]["Lora"]
    assert (lora["type"], lora["minLength"]) == ("string", 1)
    assert "as @path/to/file, ipfs://CID[/path] or a bare CID" in lora["description"]
    assert lora["x-lilypad-file"] == {
        "kind": "file",
        "references": ["@path/to/file", "ipfs://CID[/path]", "CID[/path]"],
        "max_bytes": 2**31,
        "mount": "/inputs/Lora/<file name>",
        "safetensors": "lora-sdxl",
    }
    assert {"Lora", "Lora2", "Embedding"}.isdisjoint(schema["required"])  # optional files
    _, inpaint, _ = resolved("sdxl-inpainting:v1.1-lilypad1")
    image = inpaint["properties"]["Image"]["x-lilypad-file"]
    assert image["kind"] == "image"
    assert image["media_types"] == ["image/png", "image/jpeg", "image/webp"]
    assert image["formats"] == ["png", "jpeg", "webp"]
    assert image["max_pixels"] > 0
    assert inpaint["required"] == ["Image", "Mask"]


def test_aliases_and_legacy_inputs_are_named_but_are_no_properties() -> None:
    _, video, _ = resolved("sdv-pipeline:v1.1-lilypad4")
    assert video["properties"]["Seed"]["x-lilypad-aliases"] == ["ImageSeed"]
    assert "ImageSeed" not in video["properties"]
    _, sdxl, _ = resolved("sdxl:v0.9-lilypad1")
    assert sdxl["x-lilypad-legacy-inputs"] == [
        {"name": "PromptEnv", "variable": "PROMPT", "tunable": "Prompt"},
        {"name": "SeedEnv", "variable": "RANDOM_SEED", "tunable": "Seed"},
    ]
    assert list(sdxl["properties"]) == ["Prompt", "Seed"]


# --- template modules ----------------------------------------------------------------------------


def test_a_template_modules_inputs_are_optional_strings(tmp_path: Path) -> None:
    module = module_of(tmp_path, SDXL)
    schema = input_schema(module)
    Draft202012Validator.check_schema(schema)
    assert schema["x-lilypad-format"] == "lilypad template"
    assert list(schema["properties"]) == ["Steps", "PromptEnv", "Seed", "Input"]
    assert {p["type"] for p in schema["properties"].values()} == {"string"}
    assert schema["required"] == []  # left out, the template's else branch decides
    assert "left out: 'RANDOM_SEED=42'" in schema["properties"]["Seed"]["description"]
    instance = {"Steps": "12", "Input": 'a "quoted" input'}
    Draft202012Validator(schema).validate(instance)
    assert render(module, instance).env["INPUT"] == go_json_string('a "quoted" input')


def test_a_template_modules_typed_inputs_keep_their_types(tmp_path: Path) -> None:
    module = module_of(tmp_path, SDXL, **{"lilypad_module.toml": TYPES})
    schema = input_schema(module)
    assert schema["properties"]["Seed"] == {
        "type": "integer",
        "description": "The seed",
        "default": 3,
        "minimum": 0,
        "maximum": 100,
        "x-order": 2,
    }
    validator = Draft202012Validator(schema)
    assert not validator.is_valid({"Seed": 101})
    with pytest.raises(InvalidTunable, match=r"Seed=101 is out of range"):
        render(module, {"Seed": 101})
    assert render(module, {"Seed": 50}).env["RANDOM_SEED"] == "50"


# --- the command ---------------------------------------------------------------------------------


def test_module_show_schema_prints_only_the_schema(cli: CliRunner) -> None:
    result = cli("module", "show", "sdxl-controlnet:v1.0-lilypad1", "--schema")
    assert result.exit_code == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema == input_schema(modules.resolve("sdxl-controlnet:v1.0-lilypad1"))
    # the manifest's order on the page, not keys sorted
    assert result.stdout.index('"Image"') < result.stdout.index('"Control"')
    assert result.stdout.index('"$schema"') < result.stdout.index('"additionalProperties"')
    assert cli("module", "show", "sdxl-controlnet:v1.0-lilypad1", "--schema", "--json").stdout == (
        result.stdout
    )
    assert cli("--json", "module", "show", "sdxl-controlnet:v1.0-lilypad1", "--schema").stdout == (
        result.stdout
    )


def test_module_show_schema_of_the_newest_version_says_which_on_stderr(cli: CliRunner) -> None:
    result = cli("module", "show", "upscale", "--schema")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["title"] == "upscale:v1.0-lilypad1"
    assert "resolved to upscale:v1.0-lilypad1" in result.stderr


def test_module_show_schema_of_a_template_module(tmp_path: Path, cli: CliRunner) -> None:
    _, bare = make_repo(tmp_path, "lilypad-module-sdxl", SDXL)
    result = cli("module", "show", f"{bare}:v0.1.0", "--schema")
    assert result.exit_code == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["title"] == f"{bare}:v0.1.0"
    Draft202012Validator.check_schema(schema)
