"""The Stable Diffusion family modules (sd15, sd21, sdxl-turbo, sd-turbo, lcm), run as their
entrypoints on tiny weights, and the pieces they add: the v-prediction and LCM denoisers, the
trailing schedule the turbo models ship, image to image for SD 1.5 and 2.1."""

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
from tests.ml.conftest import ModuleRun, ModuleRunner

REFS = {name: f"{name}:v1.0-lilypad1" for name in family.MODULES}
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


def test_sd21_image_to_image_batch(run_module: ModuleRunner, picture: Path) -> None:
    done = run_module(REFS["sd21"], [PROMPT, "Steps=2", "Batching=2"], files={"Image": picture})
    files = _ok(done)
    assert list(files) == ["image-0.png", "image-1.png"]
    assert files["image-0.png"] != files["image-1.png"]  # each image its own noise
    assert all(_image(data).size == (64, 48) for data in files.values())
    assert b"the last 1 of 2 steps" in done.stderr  # the default Strength, 0.8


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


@pytest.mark.parametrize("name", list(REFS))
def test_manifest_defaults_and_bounds_are_the_models(name: str) -> None:
    spec = family.MODULES[name]
    module = resolve(REFS[name])
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
    assert ("Image" in tunables) is spec.image_to_image
    if spec.image_to_image:
        assert (tunables["Image"].optional, tunables["Strength"].default) == (True, 0.8)
    assert module.spec.tiny_models == (spec.model.tiny,)
    assert module.spec.verification.method == "perceptual"
    assert spec.model.folder in MODELS
    dockerfile = (module.directory / "Dockerfile").read_text()
    assert f"python -m lilypad.ml.download {spec.model.folder} " in dockerfile


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
