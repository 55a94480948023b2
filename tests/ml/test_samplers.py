"""Samplers and sigma schedules: each runs on the tiny SDXL UNet, and those with a diffusers
equivalent match it numerically on a toy model."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lilypad.errors import InferenceError
from lilypad.ml import determinism, tiny
from lilypad.ml.samplers import SAMPLERS, fast_orders, sample
from lilypad.ml.schedules import SCHEDULES, ModelSampling, get_sigmas
from lilypad.ml.settings import ImageSettings

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
