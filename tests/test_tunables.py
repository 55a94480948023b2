"""Typed tunables: the seed documents' tables, parsing, and that no input escapes its variable."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lilypad import modules
from lilypad.errors import InputError, InvalidTunable
from lilypad.modules.tunables import Tunable, TunableType

SAMPLERS = [
    "euler",
    "euler_ancestral",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
]
SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform"]

# The table of the seed document "Stable Diffusion Video": name -> (default, min, max, choices)
SDV_TABLE = {
    "Prompt": ("question mark floating in space", None, None, None),
    "Framerate": (8, 1, 20, None),
    "Seed": (42, 0, None, None),
    "Steps": (50, 5, 200, None),
    "Scheduler": ("normal", None, None, SCHEDULERS),
    "Sampler": ("euler_ancestral", None, None, SAMPLERS),
    "Batching": (1, None, None, [1, 2, 4, 8]),
    "VideoSeed": (42, 0, None, None),
    "VideoSteps": (50, 5, 70, None),
    "VideoScheduler": ("normal", None, None, SCHEDULERS),
    "VideoSampler": ("euler_ancestral", None, None, SAMPLERS),
}


@pytest.mark.parametrize("ref", ["sdv-pipeline:v1.0-lilypad2", "sdv-pipeline:v1.1-lilypad2"])
def test_sdv_tunables_match_the_seed_table(ref: str) -> None:
    module = modules.resolve(ref)
    assert [t.name for t in module.spec.tunables] == list(SDV_TABLE)
    for tunable in module.spec.tunables:
        default, low, high, choices = SDV_TABLE[tunable.name]
        assert tunable.default == default
        assert tunable.min == low
        if high is not None:
            assert tunable.max == high
        assert (list(tunable.choices) if tunable.choices else None) == choices
    assert module.tunable("Seed") is not None
    assert module.tunable("Seed").aliases == ("ImageSeed",)  # type: ignore[union-attr]


def test_sdxl_v1_tunables() -> None:
    module = modules.resolve("sdxl:v1.0-lilypad1")
    t = {x.name: x for x in module.spec.tunables}
    assert (t["Width"].default, t["Width"].min, t["Width"].max, t["Width"].multiple_of) == (
        1024,
        512,
        2048,
        8,
    )
    assert (t["Steps"].default, t["Steps"].min, t["Steps"].max) == (30, 1, 100)
    assert (t["GuidanceScale"].default, t["GuidanceScale"].min, t["GuidanceScale"].max) == (
        7,
        0,
        20,
    )
    assert (t["Batching"].min, t["Batching"].max) == (1, 4)
    assert (t["RefinerSwitch"].default, t["RefinerSwitch"].min, t["RefinerSwitch"].max) == (
        0.8,
        0,
        1,
    )
    assert list(t["Sampler"].choices or ()) == SAMPLERS
    assert list(t["Scheduler"].choices or ()) == SCHEDULERS
    assert "NegativePrompt" in t


def test_sdxl_v09_defaults_are_fixed() -> None:
    spec = modules.render("sdxl:v0.9-lilypad1")
    assert spec.tunables == {"Prompt": "question mark floating in space", "Seed": 0}
    assert spec.env["RANDOM_SEED"] == "0"


INT = Tunable(name="N", type=TunableType.INT, env="N", description="n", default=5, min=0, max=10)
FLOAT = Tunable(name="F", type=TunableType.FLOAT, env="F", description="f", default=1, min=0, max=2)
BOOL = Tunable(name="B", type=TunableType.BOOL, env="B", description="b", default=False)


@pytest.mark.parametrize(("raw", "value"), [("0", 0), ("10", 10), ("+7", 7), ("007", 7)])
def test_int_parsing(raw: str, value: int) -> None:
    assert INT.parse(raw) == value


@pytest.mark.parametrize("raw", ["", " 1", "1.0", "1e1", "0x1", "one", "11", "-1", "1_0"])
def test_int_rejects(raw: str) -> None:
    with pytest.raises(InvalidTunable, match="N="):
        INT.parse(raw)


@pytest.mark.parametrize(("raw", "value"), [("1", 1.0), ("0.5", 0.5), (".5", 0.5), ("2e0", 2.0)])
def test_float_parsing(raw: str, value: float) -> None:
    parsed = FLOAT.parse(raw)
    assert parsed == value
    assert isinstance(parsed, float)
    assert FLOAT.env_value(parsed) == repr(value)


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "2.01", "-0.1", "1,5", "1e400"])
def test_float_rejects(raw: str) -> None:
    with pytest.raises(InvalidTunable, match="F="):
        FLOAT.parse(raw)


def test_bool_parsing() -> None:
    assert BOOL.parse("true") is True
    assert BOOL.parse("No") is False
    assert BOOL.env_value(True) == "true"
    with pytest.raises(InvalidTunable, match="true or false"):
        BOOL.parse("maybe")


def test_manifest_default_must_satisfy_its_own_rules() -> None:
    with pytest.raises(ValueError, match="out of range"):
        Tunable(name="N", type=TunableType.INT, env="N", description="n", default=50, max=10)


# --- No input, however crafted, reaches anything but its own tunable's variable -------------------

REFS = ["sdxl:v0.9-lilypad1", "sdxl:v1.0-lilypad1", "sdv-pipeline:v1.1-lilypad2", "cowsay:v0.0.4"]
KEYS = st.one_of(
    st.sampled_from(
        [
            "Prompt",
            "Seed",
            "PromptEnv",
            "SeedEnv",
            "ImageSeed",
            "Message",
            "Steps",
            "PATH",
            "image",
            "entrypoint",
            "network",
            "outputs",
            "LD_PRELOAD",
        ]
    ),
    st.text(max_size=20),
)
VALUES = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            "PROMPT=x",
            "RANDOM_SEED=3",
            "PATH=/evil",
            "PROMPT=a\nPATH=/evil",
            "RANDOM_SEED=1\x00LD_PRELOAD=x",
            '"}, "image": "evil',
            "$(reboot)",
            "1",
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(ref=st.sampled_from(REFS), pairs=st.lists(st.tuples(KEYS, VALUES), max_size=4))
def test_no_input_changes_anything_but_its_tunable(ref: str, pairs: list[tuple[str, str]]) -> None:
    module = modules.resolve(ref)
    baseline = modules.render(module)
    try:
        spec = modules.render(module, [f"{key}={value}" for key, value in pairs])
    except InputError:
        return  # refused before anything was done: fine
    assert spec.image == baseline.image
    assert spec.entrypoint == baseline.entrypoint
    assert spec.network == "none"
    assert spec.outputs == "/outputs"
    assert spec.machine == baseline.machine
    assert spec.timeout_s == baseline.timeout_s
    assert set(spec.env) == set(baseline.env)
    by_env = {t.env: t for t in module.spec.tunables}
    for name, value in spec.env.items():
        if name in module.spec.env:
            assert value == module.spec.env[name]
        else:
            tunable = by_env[name]
            assert value == tunable.env_value(spec.tunables[tunable.name])
        assert "\n" not in value
        assert "\x00" not in value


@settings(max_examples=200, deadline=None)
@given(prompt=st.text(max_size=300).filter(lambda s: all(c.isprintable() or c == " " for c in s)))
def test_printable_prompts_pass_through_verbatim(prompt: str) -> None:
    spec = modules.render("sdxl:v0.9-lilypad1", [f"Prompt={prompt}"])
    assert spec.env["PROMPT"] == prompt
    assert spec.tunables["Prompt"] == prompt
