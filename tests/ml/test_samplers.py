"""Samplers and sigma schedules: each runs on the tiny SDXL UNet, and those with a diffusers
equivalent match it numerically on a toy model; the two references (k-diffusion, ComfyUI) differ
exactly where the issue found them to, and a module version says which it follows."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lilypad.errors import InferenceError, InvalidManifest
from lilypad.ml import determinism, samplers, tiny
from lilypad.ml.samplers import (
    COMFYUI,
    K_DIFFUSION,
    SAMPLERS,
    SamplerReference,
    fast_orders,
    get_reference,
    sample,
)
from lilypad.ml.schedules import SCHEDULES, ModelSampling, get_sigmas
from lilypad.ml.settings import ImageSettings
from lilypad.modules import manifest, render, resolve
from tests.conftest import CliRunner

SDXL_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from diffusers import StableDiffusionXLPipeline

    from lilypad.ml import sdxl

    determinism.configure()
    path = tiny.ensure("sdxl-base", tmp_path_factory.mktemp("tiny"))
    return sdxl.load(StableDiffusionXLPipeline, path)


def _run(pipe: Any, sampler: str, scheduler: str, steps: int) -> tuple[torch.Tensor, int]:
    from lilypad.ml import sdxl

    evals = 0

    def progress(done: int, total: int) -> None:
        nonlocal evals
        evals = done

    settings = ImageSettings(
        prompt="a cat", seed=1, steps=steps, width=64, height=64, guidance_scale=5.0,
        sampler=sampler, scheduler=scheduler,
    )  # fmt: skip
    images = sdxl.generate(pipe, settings, progress)
    return torch.from_numpy(np.asarray(images[0], dtype=np.float32)), evals


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs_the_sdxl_unet(tiny_sdxl: Any, name: str) -> None:
    pixels, evals = _run(tiny_sdxl, name, "karras", 2)
    assert evals >= 2  # the UNet really ran, at least once per step
    assert torch.isfinite(pixels).all()
    again, _ = _run(tiny_sdxl, name, "karras", 2)
    assert torch.equal(again, pixels)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_schedule_runs_and_descends_to_zero(tiny_sdxl: Any, name: str) -> None:
    model = ModelSampling.discrete(tiny_sdxl.scheduler.alphas_cumprod)
    sigmas = get_sigmas(name, model, 8)
    assert len(sigmas) == 9
    assert sigmas[-1] == 0
    assert (sigmas[:-1] > sigmas[1:]).all()
    assert model.sigma_min * 0.99 <= float(sigmas[-2])
    assert float(sigmas[0]) <= model.sigma_max * 1.01
    pixels, evals = _run(tiny_sdxl, "euler", name, 2)
    assert evals == 2
    assert torch.isfinite(pixels).all()


def test_schedules_differ_and_sgm_uniform_drops_the_last_point() -> None:
    from diffusers import EulerDiscreteScheduler

    model = ModelSampling.discrete(EulerDiscreteScheduler(**SDXL_SCHEDULER).alphas_cumprod)
    all_sigmas = {name: get_sigmas(name, model, 10) for name in SCHEDULES}
    as_tuples = {tuple(s.tolist()) for s in all_sigmas.values()}
    assert len(as_tuples) == len(SCHEDULES)
    # normal ends at the model's smallest sigma; sgm_uniform stops one interval before it
    assert float(all_sigmas["normal"][-2]) == pytest.approx(model.sigma_min)
    assert float(all_sigmas["sgm_uniform"][-2]) > model.sigma_min * 1.5


def test_unknown_names_are_clear_errors() -> None:
    model = ModelSampling.edm(0.002, 700)
    with pytest.raises(InferenceError, match="unknown scheduler 'karas'; did you mean 'karras'"):
        get_sigmas("karas", model, 4)
    with pytest.raises(InferenceError, match="unknown sampler 'eulr'; did you mean 'euler'"):
        sample(
            "eulr",
            lambda x, s: x,
            torch.zeros(1),
            torch.ones(2),
            generator=torch.Generator(),
            seed=0,
        )


def test_dpm_fast_orders_spend_exactly_the_step_budget() -> None:
    for nfe in range(1, 20):
        assert sum(fast_orders(nfe)) == nfe


# --- against diffusers on a toy model ----------------------------------------------------------


def _toy_eps(x_in: torch.Tensor) -> torch.Tensor:
    """A smooth, bounded, nonlinear eps model without time (timestep rounding cannot matter)."""
    return torch.tanh(x_in) * 0.9 + 0.1 * torch.sin(3 * x_in)


def _ours(name: str, schedule: str, steps: int, seed: int) -> torch.Tensor:
    from diffusers import EulerDiscreteScheduler

    model = ModelSampling.discrete(EulerDiscreteScheduler(**SDXL_SCHEDULER).alphas_cumprod)
    sigmas = get_sigmas(schedule, model, steps).to(torch.float32)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 4, 8, 8), generator=generator) * sigmas[0]

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x - sigma * _toy_eps(x / (sigma**2 + 1) ** 0.5)

    return sample(name, denoiser, x, sigmas, generator=generator, seed=seed)


def _diffusers(scheduler_class: str, steps: int, seed: int, **config: Any) -> torch.Tensor:
    import diffusers

    cls = getattr(diffusers, scheduler_class)
    scheduler = cls(**SDXL_SCHEDULER, timestep_spacing="linspace", **config)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 4, 8, 8), generator=generator) * scheduler.sigmas[0]
    if scheduler_class == "DPMSolverMultistepScheduler":
        x = x / (scheduler.sigmas[0] ** 2 + 1) ** 0.5  # diffusers samples VP latents here
    noisy = "generator" in inspect.signature(scheduler.step).parameters
    for t in scheduler.timesteps:
        eps = _toy_eps(scheduler.scale_model_input(x, t))
        extra = {"generator": generator} if noisy else {}
        x = scheduler.step(eps, t, x, **extra).prev_sample
    return x


@pytest.mark.parametrize(
    ("name", "scheduler_class", "config"),
    [
        ("euler", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
        ("euler", "EulerDiscreteScheduler", {"use_exponential_sigmas": True}),
        ("euler", "EulerDiscreteScheduler", {}),
        ("euler_ancestral", "EulerAncestralDiscreteScheduler", {}),
        ("heun", "HeunDiscreteScheduler", {"use_karras_sigmas": True}),
        ("dpm_2", "KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
        ("lms", "LMSDiscreteScheduler", {"use_karras_sigmas": True}),
        ("dpmpp_2m", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ],
)
def test_matches_the_equivalent_diffusers_scheduler(
    name: str, scheduler_class: str, config: dict[str, Any]
) -> None:
    # With 10 steps diffusers' "linspace" timesteps are integers, where ComfyUI's "normal"
    # schedule (log-linear between table entries) and diffusers' linear interpolation agree.
    schedule = "exponential" if "use_exponential_sigmas" in config else "karras"
    schedule = schedule if config else "normal"
    ours = _ours(name, schedule, 10, seed=3)
    theirs = _diffusers(scheduler_class, 10, 3, **config)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_sde_noise_is_seeded_and_gpu_variant_equals_cpu_variant_on_cpu(tmp_path: Path) -> None:
    a = _ours("dpmpp_2m_sde", "karras", 6, seed=5)
    b = _ours("dpmpp_2m_sde_gpu", "karras", 6, seed=5)
    c = _ours("dpmpp_2m_sde", "karras", 6, seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# --- the two references: where they differ, and nowhere else ------------------------------------

#: The samplers whose last step makes one model call, so that a per-step count never reaches its
#: total (the issue's list).
SHORT_LAST_STEP = ["heun", "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "heunpp2"]


def _sdxl_sampling() -> ModelSampling:
    from diffusers import EulerDiscreteScheduler

    return ModelSampling.discrete(EulerDiscreteScheduler(**SDXL_SCHEDULER).alphas_cumprod)


@dataclass
class ToyRun:
    """One sampling run of the toy model as a text-to-image job runs it under a reference."""

    result: torch.Tensor
    start_scale: float
    #: (x, sigma, denoised) of every model evaluation, in order.
    calls: list[tuple[torch.Tensor, float, torch.Tensor]]
    #: Every (done, total) that the progress callback got.
    progress: list[tuple[int, int]]


def _toy_run(
    name: str, schedule: str, steps: int, reference: SamplerReference, seed: int = 3
) -> ToyRun:
    model = _sdxl_sampling()
    sigmas = reference.sigmas(schedule, name, model, steps)
    scale = reference.noise_scale(sigmas[0], model)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 4, 8, 8), generator=generator) * scale
    calls: list[tuple[torch.Tensor, float, torch.Tensor]] = []
    progress: list[tuple[int, int]] = []

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        denoised = x - sigma * _toy_eps(x / (sigma**2 + 1) ** 0.5)
        calls.append((x, float(sigma), denoised))
        return denoised

    result = sample(
        name, denoiser, x, sigmas.to(torch.float32), generator=generator, seed=seed,
        progress=lambda done, total: progress.append((done, total)), reference=reference.name,
    )  # fmt: skip
    return ToyRun(result, scale, calls, progress)


def test_lms_ends_with_the_denoised_estimate_under_comfyui_only() -> None:
    comfy = _toy_run("lms", "karras", 10, COMFYUI)
    kdiff = _toy_run("lms", "karras", 10, K_DIFFUSION)
    # the same path down to the last step, to sigma 0 ...
    assert len(comfy.calls) == len(kdiff.calls) == 10
    for (x_c, sigma_c, _), (x_k, sigma_k, _) in zip(comfy.calls, kdiff.calls, strict=True):
        assert sigma_c == sigma_k
        assert torch.equal(x_c, x_k)
    # ... which ComfyUI ends with the last denoised estimate, k-diffusion with a 4th-order step
    assert torch.equal(comfy.result, comfy.calls[-1][2])
    assert not torch.equal(kdiff.result, kdiff.calls[-1][2])


@pytest.mark.parametrize("name", ["dpm_2", "dpm_2_ancestral"])
def test_dpm_2_drops_the_penultimate_sigma_of_one_step_more_under_comfyui(name: str) -> None:
    model = _sdxl_sampling()
    comfy = COMFYUI.sigmas("karras", name, model, 10)
    kdiff = K_DIFFUSION.sigmas("karras", name, model, 10)
    assert len(comfy) == len(kdiff) == 11
    assert comfy[-3:].tolist() == pytest.approx([0.1698, 0.0744, 0], abs=5e-5)
    assert kdiff[-3:].tolist() == pytest.approx([0.0819, 0.0292, 0], abs=5e-5)
    assert torch.equal(kdiff, get_sigmas("karras", model, 10))
    eleven = get_sigmas("karras", model, 11)
    assert torch.equal(comfy, torch.cat([eleven[:-2], eleven[-1:]]))
    # the other samplers get the schedule as it is under both references
    assert torch.equal(COMFYUI.sigmas("karras", "euler", model, 10), kdiff)
    assert not torch.allclose(
        _toy_run(name, "karras", 10, COMFYUI).result,
        _toy_run(name, "karras", 10, K_DIFFUSION).result,
        atol=1e-3,
    )


def test_starting_noise_below_sigma_max_is_scaled_by_sigma0_under_comfyui_only() -> None:
    for model in (_sdxl_sampling(), ModelSampling.edm(0.002, 700)):  # SDXL's table; SVD's EDM
        ddim = get_sigmas("ddim_uniform", model, 10)
        sigma0 = float(ddim[0])
        assert sigma0 < model.sigma_max * 0.9  # ddim_uniform starts below the largest sigma
        assert COMFYUI.noise_scale(ddim[0], model) == sigma0
        assert K_DIFFUSION.noise_scale(ddim[0], model) == pytest.approx((1 + sigma0**2) ** 0.5)
        # every other schedule starts at sigma_max, where both scale by sqrt(1 + sigma0^2)
        for schedule in set(SCHEDULES) - {"ddim_uniform"}:
            first = get_sigmas(schedule, model, 10)[0]
            assert COMFYUI.noise_scale(first, model) == K_DIFFUSION.noise_scale(first, model)
            assert COMFYUI.noise_scale(first, model) == pytest.approx(
                (1 + float(first) ** 2) ** 0.5
            )
    comfy = _toy_run("euler", "ddim_uniform", 10, COMFYUI)
    kdiff = _toy_run("euler", "ddim_uniform", 10, K_DIFFUSION)
    assert comfy.start_scale < kdiff.start_scale
    assert not torch.equal(comfy.calls[0][0], kdiff.calls[0][0])


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_progress_reaches_its_total_under_comfyui(name: str) -> None:
    run = _toy_run(name, "karras", 6, COMFYUI)
    done, total = run.progress[-1]
    assert done == total == len(run.calls)
    if name != "dpm_adaptive":  # which cannot know its count before it ends
        assert {t for _, t in run.progress} == {total}


@pytest.mark.parametrize("name", SHORT_LAST_STEP)
def test_progress_under_k_diffusion_keeps_its_per_step_total(name: str) -> None:
    """The published versions' logs: the total is a fixed count per step, one more than made."""
    run = _toy_run(name, "karras", 6, K_DIFFUSION)
    done, total = run.progress[-1]
    assert done == len(run.calls)
    assert total == 6 * SAMPLERS[name].evals_per_step
    assert done < total


@pytest.mark.parametrize(
    "name", sorted(set(SAMPLERS) - {"lms", "dpm_2", "dpm_2_ancestral", "dpm_adaptive"})
)
@pytest.mark.parametrize("schedule", ["karras", "normal"])
def test_references_give_identical_results_everywhere_else(name: str, schedule: str) -> None:
    comfy = _toy_run(name, schedule, 5, COMFYUI)
    kdiff = _toy_run(name, schedule, 5, K_DIFFUSION)
    assert torch.equal(comfy.result, kdiff.result)
    assert [c[1] for c in comfy.calls] == [c[1] for c in kdiff.calls]


def test_dpm_adaptive_is_the_same_under_both_references() -> None:
    # It stops at the smallest non-zero sigma and takes its own steps: only the count differs.
    comfy = _toy_run("dpm_adaptive", "karras", 5, COMFYUI)
    kdiff = _toy_run("dpm_adaptive", "karras", 5, K_DIFFUSION)
    assert torch.equal(comfy.result, kdiff.result)


def test_unknown_reference_is_a_clear_error() -> None:
    with pytest.raises(InferenceError, match="unknown sampler reference 'comfy'; did you mean"):
        get_reference("comfy")
    with pytest.raises(InferenceError, match="allowed: k-diffusion, comfyui"):
        sample(
            "euler", lambda x, s: x, torch.zeros(1), torch.ones(2),
            generator=torch.Generator(), seed=0, reference="a1111",
        )  # fmt: skip


# --- the manifest field ---------------------------------------------------------------------------


def test_the_job_and_the_manifest_name_the_references_alike() -> None:
    # lilypad.ml cannot import lilypad.modules (the module images carry only lilypad.ml)
    assert samplers.REFERENCE_ENV == manifest.SAMPLER_REFERENCE_ENV
    assert list(samplers.REFERENCES) == [r.value for r in manifest.SamplerReference]
    default = manifest.ModuleVersion.model_fields["sampler_reference"].get_default()
    assert default == samplers.DEFAULT_REFERENCE


def _module(tmp_path: Path, extra: str) -> Path:
    folder = tmp_path / "mod"
    folder.mkdir(exist_ok=True)
    (folder / "lilypad_module.toml").write_text(
        'name = "mod"\ndescription = "d"\nimage = "img"\nentrypoint = ["run"]\n'
        f'env = {{ A = "1" }}\n{extra}\n'
    )
    return folder


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            'sampler_reference = "comfy"',
            "unknown sampler reference 'comfy'; did you mean 'comfyui'",
        ),
        ('sampler_reference = "a1111"', "'a1111'; allowed: k-diffusion, comfyui"),
        ("sampler_reference = 1", "unknown sampler reference 1"),
        (
            '[versions."v1"]\nenv = { LILYPAD_SAMPLER_REFERENCE = "comfyui" }',
            "is set from sampler_reference",
        ),
    ],
)
def test_a_bad_sampler_reference_is_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(InvalidManifest, match=message):
        resolve(str(_module(tmp_path, extra)))


def test_comfyui_reaches_the_job_as_a_fixed_variable_and_the_default_adds_nothing(
    tmp_path: Path,
) -> None:
    comfy = resolve(str(_module(tmp_path, 'sampler_reference = "comfyui"')))
    assert comfy.spec.sampler_reference == "comfyui"
    assert render(comfy).env == {"A": "1", "LILYPAD_SAMPLER_REFERENCE": "comfyui"}
    for extra in ("", 'sampler_reference = "k-diffusion"'):
        plain = resolve(str(_module(tmp_path, extra)))
        assert plain.spec.sampler_reference == "k-diffusion"
        assert render(plain).env == {"A": "1"}


@pytest.mark.parametrize(
    ("ref", "reference"),
    [
        ("sdv-pipeline:v1.0-lilypad2", "k-diffusion"),
        ("sdv-pipeline:v1.1-lilypad2", "k-diffusion"),
        ("sdv-pipeline:v1.0-lilypad3", "comfyui"),
        ("sdv-pipeline:v1.1-lilypad3", "comfyui"),
        ("sdv-pipeline:v1.0-lilypad4", "comfyui"),
        ("sdv-pipeline:v1.1-lilypad4", "comfyui"),
        ("sdxl:v1.0-lilypad1", "k-diffusion"),
        ("sdxl-img2img:v1.1-lilypad1", "k-diffusion"),
    ],
)
def test_module_show_says_which_reference_a_version_follows(
    cli: CliRunner, ref: str, reference: str
) -> None:
    shown = cli("module", "show", ref, "--json")
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["sampler_reference"] == reference
    human = cli("module", "show", ref).stdout
    assert f"samplers   follow {reference} where k-diffusion and ComfyUI differ" in human


def test_a_comfyui_version_of_sdv_pipeline_is_the_newest(cli: CliRunner) -> None:
    shown = cli("module", "show", "sdv-pipeline", "--json")
    assert json.loads(shown.stdout)["version"] == "v1.1-lilypad4"
    assert render("sdv-pipeline:v1.1-lilypad4").env["LILYPAD_SAMPLER_REFERENCE"] == "comfyui"
    assert "LILYPAD_SAMPLER_REFERENCE" not in render("sdv-pipeline:v1.1-lilypad2").env
