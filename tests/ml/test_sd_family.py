"""The Stable Diffusion family modules (sd15, sd21, sdxl-turbo, sd-turbo, lcm), run as their
entrypoints on tiny weights, and the pieces they add: the v-prediction and LCM denoisers, the
trailing schedule the turbo models ship, image to image (SD 1.5 and 2.1; SDXL Turbo, SD Turbo and
LCM from v1.1) against diffusers' img2img pipelines; and v1.0's published bytes."""

from __future__ import annotations

import hashlib
import io
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lilypad.errors import InvalidTunable
from lilypad.ml import determinism, family, tiny
from lilypad.ml.denoisers import Prediction, SDDenoiser
from lilypad.ml.download import MODELS, pick_files
from lilypad.ml.samplers import SAMPLERS, sample
from lilypad.ml.schedules import SCHEDULES, ModelSampling, get_sigmas
from lilypad.ml.settings import ImageSettings
from lilypad.ml.tiny import TINY_LIMITS
from lilypad.modules import render, resolve
from tests.ml.conftest import CPU_CLASS, ModuleRun, ModuleRunner, published

REFS = {name: f"{name}:v1.0-lilypad1" for name in family.MODULES}
#: The versions that added image to image to a text-only v1.0.
IMG2IMG = {name: f"{name}:v1.1-lilypad1" for name in ("sdxl-turbo", "sd-turbo", "lcm")}
PROMPT = "Prompt=a red fox in the snow"
#: The betas of every model here (SD 1.x/2.x, SDXL and their distillations).
BETAS = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}


def _ok(done: ModuleRun) -> dict[str, bytes]:
    assert done.returncode == 0, done.stderr.decode()
    return done.files()


def _image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _refused(done: ModuleRun) -> str:
    assert done.returncode == 2, done.stderr.decode()
    assert not list(done.outputs.iterdir())
    return done.stderr.decode().strip().splitlines()[-1]


# --- each module on tiny weights ------------------------------------------------------------------


@pytest.fixture(scope="module")
def first(run_module: ModuleRunner) -> dict[str, ModuleRun]:
    """One text-to-image job of each module, with the same prompt."""
    return {name: run_module(ref, _inputs(name)) for name, ref in REFS.items()}


def _inputs(name: str) -> list[str]:
    # two steps where the default is more (SD 1.5, 2.1: 25) to keep the tests quick; the turbo
    # and LCM jobs at their defaults (1 and 4)
    many = family.MODULES[name].steps.default > TINY_LIMITS.max_steps
    return [PROMPT, "Steps=2"] if many else [PROMPT]


@pytest.mark.parametrize("name", list(REFS))
def test_each_module_writes_a_plain_png_at_the_tiny_size(
    first: dict[str, ModuleRun], name: str
) -> None:
    done = first[name]
    files = _ok(done)
    assert done.stdout == b"image-0.png\n"
    image = _image(files["image-0.png"])
    assert (image.format, image.size, image.info) == ("PNG", (64, 64), {})
    size = family.MODULES[name].size
    assert f"64x64 instead of {size}x{size}".encode() in done.stderr
    assert f"loading {family.MODULES[name].model.hub_id}".encode() in done.stderr


#: sha256 of each v1.0's image for :func:`_inputs`, as published (and of sd15's and sd21's
#: image to image in the tests below), by CPU class (conftest.published; the "AVX2 AuthenticAMD"
#: digests from 2cf8402's code, as test_sdv_module says). They change only if the tiny weights or
#: the pinned ml extra do; the versions themselves must not.
V10_SHA256 = {
    "sd15": {
        "*": "3d3cad8fe15498d25e8ed363a20ebe7b78f5065903c7bc4bab303647798cb2f6",
        "AVX2 AuthenticAMD": "0e46812f65938094b7fd4f577c74feec4cba7d0b95a606ecfa2fffb81944d448",
    },
    "sd21": {
        "*": "48318647bb825109e5819a2ab0750140cb7a149aedd4f919193377ed2e27cfb1",
        "AVX2 AuthenticAMD": "d1a19d950d0d76e76ea6edcd0b970bf7cf8278b1949f2dcb9ce53897d2098b02",
    },
    "sdxl-turbo": {
        "*": "c98334136688c078040c55e08abd3f8fefabf04afb708b207a7dc60f95a9726a",
        "AVX2 AuthenticAMD": "0de4c6188e611314368da9f7a8985037f515d3740406eb0dd42d12ce7a8cd627",
    },
    "sd-turbo": {"*": "c0c877671f3f10d75d3286400044d58ceb5077638d4f9a9a1bcd382e1bd14dff"},
    "lcm": {"*": "a93fc9a56659aeca88fd775203a896a83bd31072a4ea3de014a1fc9919795b96"},
    "sd15-img2img": {
        "*": "6eea95c115c5e04b3f50cad2f0d908af761a6a70b05509541acd882d1bab1a53",
        "AVX2 AuthenticAMD": "3cbb3d1eec72eec2daf10458ef41c09aadfde158a1945bff0f47fcc6fcac6aca",
    },
    "sd21-img2img": {
        "*": (
            "3c6190d737cf00b9779d1c65393f459c0032693ed94761c243269fcf96c429a4",
            "f22d18cbfeac89610b9112d3b4734486d347ba8694fd2d49e9bd3a1a06fa4b79",
        ),
        "AVX2 AuthenticAMD": (
            "8b9391fb9dc451532d6a1489beb6f2422f87fc42f9002772c80ac43affcb4a9f",
            "731403ee626b4c6ab86ebb89c48cd82684dfe54f4bd5c5767befb03b61c79af0",
        ),
    },
    "sd15-no-step": {"*": "460b9e21d31001a558bde717c60b682f1055bb18c63bdb2cb4188dadee5638e9"},
}


@pytest.mark.parametrize("name", list(REFS))
def test_v1_0_keeps_its_published_bytes(first: dict[str, ModuleRun], name: str) -> None:
    assert _sha(_ok(first[name])["image-0.png"]) == published(V10_SHA256[name]), CPU_CLASS


@pytest.mark.parametrize("name", list(REFS))
def test_each_module_same_inputs_same_bytes_another_seed_another_image(
    run_module: ModuleRunner, first: dict[str, ModuleRun], name: str
) -> None:
    again = run_module(REFS[name], _inputs(name))
    assert _ok(again) == _ok(first[name])
    assert (again.stdout, again.stderr) == (first[name].stdout, first[name].stderr)
    other = run_module(REFS[name], [*_inputs(name), "Seed=7"])
    assert _ok(other)["image-0.png"] != first[name].files()["image-0.png"]


def test_turbo_defaults_are_one_step_without_guidance(first: dict[str, ModuleRun]) -> None:
    for name in ("sdxl-turbo", "sd-turbo"):
        env = render(REFS[name]).env
        assert (env["STEPS"], env["GUIDANCE_SCALE"]) == ("1", "0.0")
        assert not {"SAMPLER", "SCHEDULER"} & set(env)  # it samples as the model ships
        stderr = first[name].stderr.decode()
        assert "sampler euler_ancestral, schedule trailing, 1 steps" in stderr
        assert "GuidanceScale 0: no classifier-free guidance" in stderr
        assert stderr.endswith("step 1/1\n")  # one step
    with pytest.raises(InvalidTunable, match=r"Steps=5 is out of range"):
        render(REFS["sd-turbo"], ["Steps=5"])


def test_lcm_runs_its_own_schedule_with_guidance_as_an_embedding(
    first: dict[str, ModuleRun],
) -> None:
    env = render(REFS["lcm"]).env
    assert (env["STEPS"], env["GUIDANCE_SCALE"]) == ("4", "8.0")
    assert "NEGATIVE_PROMPT" not in env
    stderr = first["lcm"].stderr.decode()
    assert "sampler lcm, schedule lcm, 4 steps" in stderr
    assert "guidance 8 as the UNet's w embedding (w = 7)" in stderr


# --- image to image (SD 1.5 and 2.1) --------------------------------------------------------------


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    y, x = np.mgrid[0:45, 0:61]
    pixels = np.stack([x * 255 // 61, y * 255 // 45, (x * y) % 256], -1).astype(np.uint8)
    path = tmp_path_factory.mktemp("pictures") / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


def test_sd15_image_to_image_works_at_the_picture_size(
    run_module: ModuleRunner, picture: Path
) -> None:
    inputs = [PROMPT, "Steps=2", "Strength=0.5"]
    done = run_module(REFS["sd15"], inputs, files={"Image": picture})
    files = _ok(done)
    assert _image(files["image-0.png"]).size == (64, 48)
    stderr = done.stderr.decode()
    # 61x45 is under SD's 256: scaled up into 256..1024 (multiples of 8), then capped
    assert "64x48 instead of 344x256, 2 steps instead of 2" in stderr
    assert "picture 61x45, worked at 64x48" in stderr
    assert "Strength 0.5: the last 1 of 2 steps, from the noised picture" in stderr
    again = run_module(REFS["sd15"], inputs, files={"Image": picture})
    assert (_ok(again), again.stderr) == (files, done.stderr)
    assert _sha(files["image-0.png"]) == published(V10_SHA256["sd15-img2img"]), CPU_CLASS


def test_sd15_gives_the_picture_back_where_strength_runs_no_step(
    run_module: ModuleRunner, picture: Path
) -> None:
    # its v1.0 as published ("0 keeps it"); the newer image-to-image versions refuse such a job
    done = run_module(REFS["sd15"], [PROMPT, "Steps=1", "Strength=0.01"], files={"Image": picture})
    assert _sha(_ok(done)["image-0.png"]) == published(V10_SHA256["sd15-no-step"]), CPU_CLASS
    assert b"Strength 0.01 selects no step: the picture is only encoded and decoded" in done.stderr


def test_sd21_image_to_image_batch(run_module: ModuleRunner, picture: Path) -> None:
    done = run_module(REFS["sd21"], [PROMPT, "Steps=2", "Batching=2"], files={"Image": picture})
    files = _ok(done)
    assert list(files) == ["image-0.png", "image-1.png"]
    assert files["image-0.png"] != files["image-1.png"]  # each image its own noise
    assert all(_image(data).size == (64, 48) for data in files.values())
    assert b"the last 1 of 2 steps" in done.stderr  # the default Strength, 0.8
    assert tuple(_sha(data) for data in files.values()) == published(V10_SHA256["sd21-img2img"]), (
        CPU_CLASS
    )


# --- image to image from v1.1 (SDXL Turbo, SD Turbo, LCM) ----------------------------------------

#: Each one's image-to-image inputs at its v1.1 defaults: the turbo models at the model cards'
#: 2 steps (Strength 0.5: the last 1), LCM at 4 steps over the 40 timesteps Strength 0.8 keeps.
IMG2IMG_INPUTS = {
    "sdxl-turbo": [PROMPT, "Steps=2"],
    "sd-turbo": [PROMPT, "Steps=2"],
    "lcm": [PROMPT],
}


@pytest.fixture(scope="module")
def square(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64x64 picture: worked at 64x64 by tiny weights, the size text to image works at."""
    y, x = np.mgrid[0:64, 0:64]
    pixels = np.stack([(x * 4) % 256, (y * 4) % 256, (x + y) * 2 % 256], -1).astype(np.uint8)
    path = tmp_path_factory.mktemp("pictures") / "square.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def img2img(
    run_module: ModuleRunner, first: dict[str, ModuleRun], picture: Path, square: Path
) -> dict[str, dict[str, ModuleRun]]:
    """Per new version: its defaults from the 61x45 picture, twice; from the 64x64 one, at its
    defaults and at Strength 1; and text to image with the same inputs (LCM's are v1.0's: the
    ``first`` job)."""
    runs = {}
    for name, ref in IMG2IMG.items():
        inputs = IMG2IMG_INPUTS[name]
        runs[name] = {
            "picture": run_module(ref, inputs, files={"Image": picture}),
            "again": run_module(ref, inputs, files={"Image": picture}),
            "square": run_module(ref, inputs, files={"Image": square}),
            "strength 1": run_module(ref, [*inputs, "Strength=1"], files={"Image": square}),
            "text": first[name] if inputs == _inputs(name) else run_module(ref, inputs),
        }
    return runs


# NOTE: the first sets up the img2img runs of every model (15 jobs): 110 s of CI's 120 once.
@pytest.mark.timeout(360)
@pytest.mark.parametrize("name", list(IMG2IMG))
def test_v1_1_image_to_image_works_at_the_picture_size_and_repeats(
    img2img: dict[str, dict[str, ModuleRun]], name: str
) -> None:
    done, again = img2img[name]["picture"], img2img[name]["again"]
    files = _ok(done)
    assert list(files) == ["image-0.png"]
    assert _image(files["image-0.png"]).size == (64, 48)
    stderr = done.stderr.decode()
    # 61x45 scaled up into the model's bounds (SDXL Turbo's 512..1024, the others' 256..1024)
    fitted = "696x512" if name == "sdxl-turbo" else "344x256"
    assert f"64x48 instead of {fitted}" in stderr
    assert "picture 61x45, worked at 64x48" in stderr
    if name == "lcm":
        plan = "Strength 0.8: 4 steps over the 40 least noisy of the 50 distillation timesteps"
        assert stderr.endswith("step 4/4\n")
    else:
        plan = "schedule trailing, seed 0; Strength 0.5: the last 1 of 2 steps, from the noised"
        assert stderr.endswith("step 1/1\n")
    assert plan in stderr
    assert (_ok(again), again.stderr) == (files, done.stderr)


@pytest.mark.parametrize("name", list(IMG2IMG))
def test_v1_1_starts_from_the_picture_below_strength_1_and_from_noise_at_1(
    img2img: dict[str, dict[str, ModuleRun]], name: str
) -> None:
    runs = {key: _ok(done)["image-0.png"] for key, done in img2img[name].items()}
    assert _image(runs["square"]).size == _image(runs["text"]).size == (64, 64)
    assert runs["square"] != runs["text"]  # the picture, not the seed's noise alone
    assert runs["square"] != runs["strength 1"]  # Strength changes the result
    # Strength 1 is pure noise ("1 starts from pure noise"): text to image's image, to the bit
    assert runs["strength 1"] == runs["text"]
    assert b"from pure noise" in img2img[name]["strength 1"].stderr


def test_turbo_steps_times_strength_must_reach_one(picture: Path) -> None:
    # the default Steps, 1, with the default Strength, 0.5: refused with the other inputs, before
    # anything is signed (the version's strength_steps); a spec made by other means is refused
    # by the job itself (family.check_strength, below)
    from lilypad.modules import resolve
    from lilypad.modules.files import precheck

    with pytest.raises(InvalidTunable) as refused:
        precheck(resolve(IMG2IMG["sdxl-turbo"]), [PROMPT, f"Image=@{picture}"])
    assert str(refused.value) == (
        "sdxl-turbo:v1.1-lilypad1 with Image set runs the last int(Steps x Strength) of its "
        "steps: Steps=1 with Strength=0.5 runs none; allowed: Strength at least 1 at Steps=1 or "
        "Steps=2 at Strength=0.5"
    )
    s = _settings(steps=1, strength=0.5, scheduler=family.SDXL_TURBO.scheduler or "")
    with pytest.raises(InvalidTunable) as in_the_job:
        family.check_strength(family.SDXL_TURBO, s)
    assert str(in_the_job.value) == (
        "Steps=1 with Strength=0.5 runs no step of SDXL Turbo: with an Image it runs the "
        "last int(Steps x Strength) of Steps steps, so Steps x Strength must reach 1; allowed: "
        "Strength at least 1 at Steps=1, or Steps=2 at Strength=0.5"
    )
    # below 1/4, no Steps runs a step: the manifest refuses it before anything is signed
    with pytest.raises(InvalidTunable, match=r"Strength=0\.2 is out of range"):
        render(IMG2IMG["sd-turbo"], ["Strength=0.2"])


@pytest.mark.parametrize(
    ("name", "steps", "strength", "message"),
    [
        ("sd-turbo", 3, 0.3, "Strength at least 0.334 at Steps=3, or Steps=4 at Strength=0.3"),
        ("sd-turbo", 2, 0.25, "Strength at least 0.5 at Steps=2, or Steps=4 at Strength=0.25"),
        ("lcm", 8, 0.1, "int(50 x Strength) = 5 least noisy of its 50 distillation timesteps, "
         "fewer than 8; allowed: Strength at least 0.16 at Steps=8, or Steps=5 or fewer"),
        ("lcm", 4, 0.02, "= 1 least noisy of its 50 distillation timesteps, fewer than 4; "
         "allowed: Strength at least 0.08 at Steps=4"),
    ],
)  # fmt: skip
def test_a_steps_and_strength_that_run_no_step_are_refused_naming_both(
    name: str, steps: int, strength: float, message: str
) -> None:
    spec = family.MODULES[name]
    s = _settings(steps=steps, strength=strength, scheduler=spec.scheduler or "")
    with pytest.raises(InvalidTunable) as refused:
        family.check_strength(spec, s)
    assert str(refused.value).startswith(f"Steps={steps} with Strength={strength:g} runs no step")
    assert message in str(refused.value)


def test_each_strength_the_manifests_allow_runs_a_step_where_they_say_it_does() -> None:
    for name in IMG2IMG:
        spec = family.MODULES[name]
        low, high = int(spec.steps.low), int(spec.steps.high)
        # at the lowest Strength, the most Steps run one (turbo) or all of them (LCM)
        assert family.strength_steps(spec, high, spec.strength.low) >= 1, name
        for steps in range(low, high + 1):
            s = _settings(steps=steps, strength=1.0, scheduler=spec.scheduler or "")
            family.check_strength(spec, s)  # Strength 1 runs every step count
    lcm = family.LCM_DREAMSHAPER
    assert all(family.strength_steps(lcm, n, lcm.strength.low) == n for n in range(2, 9))
    # sd15 and sd21 keep v1.0's: no step gives the picture back
    family.check_strength(family.SD15, _settings(steps=1, strength=0.01))


def test_a_picture_that_does_not_decode_is_exit_2_naming_it(
    run_module: ModuleRunner, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    # the CLI refuses it before signing; a spec made by other means reaches the job
    done = run_module(REFS["sd15"], [PROMPT], files={"Image": broken})
    assert done.returncode == 2
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("error: IMAGE=broken.png ")
    assert not list(done.outputs.iterdir())


# --- the manifests say what the code does ---------------------------------------------------------


@pytest.mark.parametrize("ref", [*REFS.values(), *IMG2IMG.values()])
def test_manifest_defaults_and_bounds_are_the_models(ref: str) -> None:
    module = resolve(ref)
    spec = family.MODULES[module.name]
    tunables = {t.name: t for t in module.spec.tunables}
    for tunable, span in (("Steps", spec.steps), ("GuidanceScale", spec.guidance)):
        t = tunables[tunable]
        assert (t.default, t.min, t.max) == (span.default, span.low, span.high), tunable
    for side in ("Width", "Height"):
        t = tunables[side]
        assert (t.default, t.min, t.max, t.multiple_of) == (
            spec.size, spec.bounds.min_side, spec.bounds.max_side, 8
        )  # fmt: skip
    assert ("Sampler" in tunables) is (spec.sampler is None)
    if spec.sampler is None:
        assert tunables["Sampler"].choices == tuple(SAMPLERS)
        assert tunables["Scheduler"].choices == tuple(SCHEDULES)
    # the turbo and LCM v1.0 are text only: their jobs never get a picture
    takes_image = spec.image_to_image and not (ref in REFS.values() and module.name in IMG2IMG)
    assert ("Image" in tunables) is takes_image
    assert ("Strength" in tunables) is takes_image
    if takes_image:
        t = tunables["Strength"]
        assert (tunables["Image"].optional, tunables["Image"].type) == (True, "image")
        assert (t.default, t.min, t.max) == (spec.strength.default, spec.strength.low, 1)
    assert module.spec.tiny_models == (spec.model.tiny,)
    assert module.spec.verification.method == "perceptual"
    assert spec.model.folder in MODELS
    dockerfile = (module.directory / "Dockerfile").read_text()
    assert f"python -m lilypad.ml.download {spec.model.folder} " in dockerfile
    assert f"-t {module.spec.image} " in dockerfile  # the build comment tags each version


@pytest.mark.parametrize("name", list(IMG2IMG))
def test_v1_1_is_v1_0_plus_an_image_and_its_strength(name: str) -> None:
    v10, v11 = resolve(REFS[name]).spec, resolve(IMG2IMG[name]).spec
    added = [t for t in v11.tunables if t.name not in {u.name for u in v10.tunables}]
    assert [t.name for t in added] == ["Image", "Strength"]
    same = ("name", "type", "env", "default", "min", "max", "multiple_of", "choices")
    assert [[getattr(t, f) for f in same] for t in v11.tunables if t not in added] == [
        [getattr(t, f) for f in same] for t in v10.tunables
    ]
    assert (v11.image, v11.machine, v11.entrypoint) == (
        f"lilypad/{name}:v1.1-lilypad1", v10.machine, v10.entrypoint
    )  # fmt: skip
    # without an Image, v1.1's job gets v1.0's variables and a Strength it does not read
    assert render(IMG2IMG[name]).env == {**render(REFS[name]).env, "STRENGTH": str(
        family.MODULES[name].strength.default
    )}  # fmt: skip


def test_images_bake_no_safety_checker_and_prefer_fp16() -> None:
    listing = [
        "model_index.json", "v1-5-pruned.safetensors",
        "safety_checker/config.json", "safety_checker/model.fp16.safetensors",
        "feature_extractor/preprocessor_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors",
        "text_encoder/model.fp16.safetensors",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    ]  # fmt: skip
    assert pick_files(listing) == [
        "feature_extractor/preprocessor_config.json", "model_index.json",
        "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    ]  # fmt: skip


#: sha256 over each tiny model's files (relative path, then bytes, in path order), as
#: ``python -m lilypad.ml.tiny`` writes them with the pinned torch: the four older ones are what
#: published module versions' tiny outputs were made with, and must not change.
TINY_SHA256 = {
    "sdxl-base": "482c4aad6693ad828e530354993fb3f18d7e8f08117473ae9cbec1215fcebe85",
    "sdxl-refiner": "4b091fe543a08fd055eb88ee48210d2eb238bff2e9995ea71a94a57e3d4d979a",
    "svd": "fe6f544ee0fd238683eca070b6d043b0d73b75b923c6c8d9335deb62ced42455",
    "sdxl-inpaint": "a76492ccba703629db0612997fe3bec97c91cac47d7441b6c1bcff89b6bcb84c",
    "sd15": "dedfcc0e180c55b7ff145499ea488991c3ed53453a4d979084394122b359f276",
    "sd21": "c4d591c7962e0f4243801659c64ace239c58550e476710aba27bf284a6ee476d",
    "lcm": "34941c1b53ebdefc39565d14d5d5fd6859740e98ae320ec4493a1a9a14557b5a",
    "controlnet-sd15": "0d8cfd2d7d33b38862822900aa0f38527b42f18cad57cf353c189c505a504bea",
    "controlnet-sdxl": "4f76b7b2390f377a75b13d3528f7f4aa373a24daf7bf73a23b81114725eefcaa",
    "annotators": "3eff94f0a6b8ba02cdef88c1c2cb60f055bc5ae2296d668a1218d0cb85e1730a",
    "realesrgan": "baa30df215790f13c92d10dd81195564a2ca1d536dec1fdfc0504f9199846392",
    "sd-x4-upscaler": "9a6baf2836abbea425eccc08010c0f65991be6a7429ce8941e309b34516e0e70",
}


def test_tiny_weights_are_the_pinned_bytes(tmp_path: Path) -> None:
    assert set(TINY_SHA256) == set(tiny.MODELS)
    # NOTE: a process of its own, as the executors run the generator: transformers reads the
    # offline flags it writes into the tokenizer configs when it is first imported, so in this
    # process (where other tests imported it first) the configs could differ.
    done = subprocess.run(
        [sys.executable, "-m", "lilypad.ml.tiny", *TINY_SHA256],
        env={**os.environ, "LILYPAD_TINY_WEIGHTS_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    folders = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    for name, expected in TINY_SHA256.items():
        digest = hashlib.sha256()
        folder = Path(folders[name])
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
        assert digest.hexdigest() == expected, f"the tiny {name} weights changed"


# --- the denoisers and schedules against diffusers ------------------------------------------------


class _ToyUNet:
    """A smooth, bounded, nonlinear model without time (timestep rounding cannot matter),
    called as diffusers calls a UNet; what it predicts is up to the scheduler reading it."""

    def __call__(self, x: torch.Tensor, *_: Any, **__: Any) -> tuple[torch.Tensor]:
        return (torch.tanh(x) * 0.9 + 0.1 * torch.sin(3 * x),)


def _diffusers_run(scheduler: Any, steps: int, seed: int) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 4, 8, 8), generator=generator) * scheduler.sigmas[0]
    for t in scheduler.timesteps:
        out = _ToyUNet()(scheduler.scale_model_input(x, t))[0]
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x


def _our_run(sampler: str, sigmas: torch.Tensor, seed: int, prediction: Prediction) -> torch.Tensor:
    from diffusers import EulerDiscreteScheduler

    sampling = ModelSampling.discrete(EulerDiscreteScheduler(**BETAS).alphas_cumprod)
    denoiser = SDDenoiser(_ToyUNet(), sampling, torch.zeros(1, 77, 8), None, prediction)
    sigmas = sigmas.to(torch.float32)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 4, 8, 8), generator=generator) * sigmas[0]
    return sample(sampler, denoiser, x, sigmas, generator=generator, seed=seed)


@pytest.mark.parametrize(
    ("sampler", "scheduler_class"),
    [("euler", "EulerDiscreteScheduler"), ("euler_ancestral", "EulerAncestralDiscreteScheduler")],
)
def test_the_v_prediction_denoiser_matches_diffusers(sampler: str, scheduler_class: str) -> None:
    import diffusers

    config = {**BETAS, "timestep_spacing": "linspace", "prediction_type": "v_prediction"}
    theirs = _diffusers_run(getattr(diffusers, scheduler_class)(**config), 10, seed=4)
    sampling = ModelSampling.discrete(diffusers.EulerDiscreteScheduler(**BETAS).alphas_cumprod)
    sigmas = get_sigmas("normal", sampling, 10)  # linspace's integer timesteps at 10 steps
    torch.testing.assert_close(
        _our_run(sampler, sigmas, 4, Prediction.V), theirs, rtol=1e-4, atol=1e-4
    )
    # and it is the prediction type that makes them agree: read as epsilon, they do not
    assert not torch.allclose(_our_run(sampler, sigmas, 4, Prediction.EPSILON), theirs, atol=1e-2)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7])
def test_trailing_is_diffusers_trailing_spacing(steps: int) -> None:
    from diffusers import EulerAncestralDiscreteScheduler

    from lilypad.ml import sd

    scheduler = EulerAncestralDiscreteScheduler(**BETAS, timestep_spacing="trailing")
    sampling = ModelSampling.discrete(scheduler.alphas_cumprod)
    ours = sd.trailing(sampling, steps)
    scheduler.set_timesteps(steps)
    torch.testing.assert_close(ours.to(torch.float32), scheduler.sigmas, rtol=1e-5, atol=1e-6)
    assert float(ours[0]) == pytest.approx(sampling.sigma_max)  # every step count starts at 999
    theirs = _diffusers_run(scheduler, steps, seed=2)  # scaled by sigmas[0] in both runs
    torch.testing.assert_close(
        _our_run("euler_ancestral", ours, 2, Prediction.EPSILON), theirs, rtol=1e-4, atol=1e-4
    )


@pytest.fixture(scope="module")
def tiny_pipes(tiny_weights_dir: Path) -> dict[str, Any]:
    from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline

    from lilypad.ml import sd

    determinism.configure()
    return {
        "sd21": sd.load(StableDiffusionPipeline, tiny.ensure("sd21", tiny_weights_dir)),
        "lcm": sd.load(LatentConsistencyModelPipeline, tiny.ensure("lcm", tiny_weights_dir)),
    }


def _settings(**fields: Any) -> ImageSettings:
    base = {"prompt": "a red fox", "seed": 3, "steps": 4, "width": 64, "height": 64}
    return ImageSettings(**{**base, "guidance_scale": 7.0, **fields})


def _latents(pipe: Any, s: ImageSettings, sampled_by: family.Family) -> torch.Tensor:
    from lilypad.ml import sd, sdxl

    with torch.inference_mode():
        denoiser = sd.denoiser(pipe, sampled_by, s)
        sigmas = sd.schedule(pipe, s, denoiser.sampling)
        generator = determinism.generator(s.seed)
        x = sdxl.initial_noise((s.batch, 4, 8, 8), sigmas[0], generator, torch.float32)
        return sample(s.sampler, denoiser, x, sigmas, generator=generator, seed=s.seed)


def test_the_lcm_job_is_diffusers_latent_consistency_pipeline(tiny_pipes: dict[str, Any]) -> None:
    pipe = tiny_pipes["lcm"]
    s = _settings(guidance_scale=8.0, sampler="lcm", scheduler=family.LCM)
    ours = _latents(pipe, s, family.LCM_DREAMSHAPER)
    with torch.inference_mode():
        theirs = pipe(
            prompt=s.prompt, num_inference_steps=4, guidance_scale=8.0, height=64, width=64,
            generator=determinism.generator(s.seed), output_type="latent",
        ).images  # fmt: skip
    # equal but for float32 rounding: ours computes in the variance-exploding form
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)
    other_w = _latents(pipe, replace(s, guidance_scale=5.0), family.LCM_DREAMSHAPER)
    assert not torch.allclose(other_w, theirs, atol=1e-2)  # the embedding matters


def _img2img_latents(
    pipe: Any, s: ImageSettings, sampled_by: family.Family, picture: torch.Tensor
) -> torch.Tensor:
    from lilypad.ml import sd

    with torch.inference_mode():
        denoiser = sd.denoiser(pipe, sampled_by, s)
        sigmas = sd.image_to_image_sigmas(pipe, s, denoiser.sampling)
        return sd.sample_from(denoiser, s, picture, sigmas)


#: A picture's latents (what the jobs encode with the VAE); diffusers takes them as its image.
PICTURE_LATENTS = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize(("steps", "strength"), [(2, 0.5), (4, 0.5), (3, 0.7)])
def test_lcm_image_to_image_is_diffusers_latent_consistency_img2img(
    tiny_pipes: dict[str, Any], steps: int, strength: float
) -> None:
    from diffusers import LatentConsistencyModelImg2ImgPipeline

    pipe = tiny_pipes["lcm"]
    assert pipe.scheduler.config.original_inference_steps == family.LCM_ORIGINAL_STEPS
    s = _settings(steps=steps, strength=strength, guidance_scale=8.0, sampler="lcm",
                  scheduler=family.LCM)  # fmt: skip
    ours = _img2img_latents(pipe, s, family.LCM_DREAMSHAPER, PICTURE_LATENTS)
    img2img = LatentConsistencyModelImg2ImgPipeline(
        **pipe.components, requires_safety_checker=False
    )
    with torch.inference_mode():
        theirs = img2img(
            prompt=s.prompt, image=PICTURE_LATENTS, num_inference_steps=steps, strength=strength,
            guidance_scale=8.0, generator=determinism.generator(s.seed), output_type="latent",
        ).images  # fmt: skip
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("steps", "strength"), [(2, 0.5), (4, 0.5), (4, 0.75), (3, 1.0)])
def test_turbo_image_to_image_is_diffusers_img2img_over_trailing_timesteps(
    tiny_pipes: dict[str, Any], steps: int, strength: float
) -> None:
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionImg2ImgPipeline

    # SD Turbo on the tiny SD 2.1 weights, as its job reads them (epsilon), against diffusers'
    # img2img pipeline (AutoPipelineForImage2Image's for SD Turbo) with trailing spacing
    pipe = tiny_pipes["sd21"]
    s = _settings(steps=steps, strength=strength, guidance_scale=0.0,
                  sampler="euler_ancestral", scheduler=family.TRAILING)  # fmt: skip
    ours = _img2img_latents(pipe, s, family.SD_TURBO, PICTURE_LATENTS)
    trailing = EulerAncestralDiscreteScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing", prediction_type="epsilon"
    )
    parts = {**pipe.components, "scheduler": trailing, "requires_safety_checker": False}
    with torch.inference_mode():
        theirs = StableDiffusionImg2ImgPipeline(**parts)(
            prompt=s.prompt, image=PICTURE_LATENTS, num_inference_steps=steps, strength=strength,
            guidance_scale=0.0, generator=determinism.generator(s.seed), output_type="latent",
        ).images  # fmt: skip
    if strength < 1:
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)
    else:
        # NOTE: at strength 1 diffusers noises the picture to sigma_max (a trace of it stays);
        # the jobs start from pure noise there, as their text to image does
        assert not torch.allclose(ours, theirs, atol=1e-3)


@pytest.mark.parametrize(("steps", "strength"), [(2, 0.5), (4, 0.75)])
def test_sdxl_turbo_image_to_image_is_diffusers_sdxl_img2img_over_trailing_timesteps(
    tiny_weights_dir: Path, steps: int, strength: float
) -> None:
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    from lilypad.ml import sd

    # SDXL Turbo on the tiny SDXL base, against AutoPipelineForImage2Image's for SDXL Turbo
    pipe = sd.load(StableDiffusionXLPipeline, tiny.ensure("sdxl-base", tiny_weights_dir))
    s = _settings(steps=steps, strength=strength, guidance_scale=0.0,
                  sampler="euler_ancestral", scheduler=family.TRAILING)  # fmt: skip
    ours = _img2img_latents(pipe, s, family.SDXL_TURBO, PICTURE_LATENTS)
    trailing = EulerAncestralDiscreteScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing"
    )
    img2img = StableDiffusionXLImg2ImgPipeline(**{**pipe.components, "scheduler": trailing})
    with torch.inference_mode():
        theirs = img2img(
            prompt=s.prompt, image=PICTURE_LATENTS, num_inference_steps=steps, strength=strength,
            guidance_scale=0.0, generator=determinism.generator(s.seed), output_type="latent",
        ).images  # fmt: skip
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)


def test_the_sd21_job_is_diffusers_pipeline_with_v_prediction(tiny_pipes: dict[str, Any]) -> None:
    from diffusers import EulerDiscreteScheduler

    pipe = tiny_pipes["sd21"]
    s = _settings(steps=10, sampler="euler", scheduler="normal", negative_prompt="blurry")
    ours = _latents(pipe, s, family.SD21)
    euler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    assert euler.config.prediction_type == "v_prediction"  # the tiny SD 2.1 ships it
    # diffusers scales given latents by its init_noise_sigma (sigma_max); ours by sqrt(1+s^2)
    sigma_max = float(euler.sigmas.max())
    noise = torch.randn((1, 4, 8, 8), generator=determinism.generator(s.seed))
    parts = {**pipe.components, "scheduler": euler, "requires_safety_checker": False}
    with torch.inference_mode():
        theirs = type(pipe)(**parts)(
            prompt=s.prompt, negative_prompt=s.negative_prompt, num_inference_steps=10,
            guidance_scale=7.0, height=64, width=64,
            latents=noise * math.sqrt(1 + sigma_max**2) / sigma_max, output_type="latent",
        ).images  # fmt: skip
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)
    as_epsilon = _latents(pipe, s, family.SD_TURBO)  # the same weights read as SD Turbo's
    assert not torch.allclose(as_epsilon, theirs, atol=1e-2)


def test_sd_turbo_predicts_epsilon_on_the_same_weights(tiny_pipes: dict[str, Any]) -> None:
    from lilypad.ml import sd

    s = _settings(guidance_scale=0.0)
    assert sd.denoiser(tiny_pipes["sd21"], family.SD21, s).prediction is Prediction.V
    turbo = sd.denoiser(tiny_pipes["sd21"], family.SD_TURBO, s)
    assert (turbo.prediction, turbo.guidance_scale) == (Prediction.EPSILON, None)


@pytest.mark.parametrize("name", ["sd15", "lcm"])
def test_prompts_are_read_with_weights(run_module: ModuleRunner, name: str) -> None:
    def image(prompt: str) -> bytes:
        inputs = [i for i in _inputs(name) if not i.startswith("Prompt=")]
        return _ok(run_module(REFS[name], [*inputs, f"Prompt={prompt}"]))["image-0.png"]

    plain = image("red fox")
    assert image("(red:1.0) fox") == plain  # weight 1 is no weight
    assert image("(red:1.5) fox") != plain
