"""Text to image with Stable Diffusion XL.

Two paths, both real diffusers code:

- :func:`generate_default` runs ``StableDiffusionXLPipeline`` as published, with the scheduler
  the model ships (SDXL 0.9: Euler). It is what the ``v0.9`` module runs.
- :func:`generate` drives the SDXL UNet with a ComfyUI sampler and sigma schedule through a
  k-diffusion denoiser (diffusers' ``StableDiffusionXLKDiffusionPipeline`` pattern), reusing the
  pipeline's own prompt encoding, conditioning and decoding. With a refiner, the base model runs
  the steps whose timestep is at or above ``1000 * (1 - refiner_switch)`` (diffusers'
  ``denoising_end``) and ``StableDiffusionXLImg2ImgPipeline``'s refiner UNet the rest
  (``denoising_start``), continuing from the base's noisy latents.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from lilypad.ml import determinism
from lilypad.ml.denoisers import SDXLDenoiser
from lilypad.ml.samplers import sample
from lilypad.ml.schedules import ModelSampling, get_sigmas
from lilypad.ml.settings import ImageSettings

#: The refiner's aesthetic-score conditioning: diffusers' defaults for the SDXL 1.0 refiner.
AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5


def dtype() -> torch.dtype:
    """float16 on a GPU (as the real pipelines run), float32 on the CPU."""
    return torch.float16 if determinism.device().type == "cuda" else torch.float32


def load(pipeline_class: Any, path: Any) -> Any:
    """Load a diffusers pipeline from a local folder onto the job's device; VAE in float32.

    The SDXL VAE overflows in float16 (``force_upcast``); keeping it in float32 avoids the
    pipeline's up/down casting and its different rounding.
    """
    # Images bake the fp16 variant of the weights where the model has one (lilypad.ml.download).
    fp16 = any(Path(path).glob("*/*.fp16.safetensors"))
    pipe = pipeline_class.from_pretrained(
        path,
        dtype=dtype(),
        variant="fp16" if fp16 else None,
        use_safetensors=True,
        local_files_only=True,
    )
    pipe = pipe.to(determinism.device())
    if pipe.vae.dtype != torch.float32:
        pipe.vae.to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_default(
    pipe: Any, settings: ImageSettings, progress: Callable[[int, int], None]
) -> list[Any]:
    """``StableDiffusionXLPipeline.__call__`` with its shipped scheduler; returns PIL images."""

    def on_step(_pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        progress(step + 1, settings.steps)
        return kwargs

    result = pipe(
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt or None,
        height=settings.height,
        width=settings.width,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        num_images_per_prompt=settings.batch,
        generator=determinism.generator(settings.seed),
        # Latents out, decoded here: the pipeline's own decode would feed fp16 latents to the
        # fp32 VAE on a GPU; this way every path decodes identically, in float32.
        output_type="latent",
        callback_on_step_end=on_step,
    )
    return decode(pipe, result.images)


def _cfg(scale: float) -> float | None:
    # As diffusers: guidance at or below 1 means a single, unguided UNet pass.
    return scale if scale > 1 else None


def _base_denoiser(pipe: Any, s: ImageSettings) -> SDXLDenoiser:
    device, guidance = determinism.device(), _cfg(s.guidance_scale)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompt=s.prompt,
        device=device,
        num_images_per_prompt=s.batch,
        do_classifier_free_guidance=guidance is not None,
        negative_prompt=s.negative_prompt or None,
    )
    size = (s.height, s.width)
    time_ids = pipe._get_add_time_ids(
        size, (0, 0), size, dtype=embeds.dtype,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    ).to(device).repeat(s.batch, 1)  # fmt: skip
    if guidance is not None:
        embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
        time_ids = torch.cat([time_ids, time_ids])
    sampling = ModelSampling.discrete(pipe.scheduler.alphas_cumprod)
    return SDXLDenoiser(pipe.unet, sampling, embeds, pooled, time_ids, guidance)


def _refiner_denoiser(refiner: Any, s: ImageSettings) -> SDXLDenoiser:
    device, guidance = determinism.device(), _cfg(s.guidance_scale)
    embeds, negative, pooled, negative_pooled = refiner.encode_prompt(
        prompt=s.prompt,
        device=device,
        num_images_per_prompt=s.batch,
        do_classifier_free_guidance=guidance is not None,
        negative_prompt=s.negative_prompt or None,
    )
    size = (s.height, s.width)
    time_ids, negative_time_ids = refiner._get_add_time_ids(
        size, (0, 0), size, AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE, size, (0, 0), size,
        dtype=embeds.dtype,
        text_encoder_projection_dim=refiner.text_encoder_2.config.projection_dim,
    )  # fmt: skip
    time_ids = time_ids.to(device).repeat(s.batch, 1)
    if guidance is not None:
        embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
        time_ids = torch.cat([negative_time_ids.to(device).repeat(s.batch, 1), time_ids])
    sampling = ModelSampling.discrete(refiner.scheduler.alphas_cumprod)
    return SDXLDenoiser(refiner.unet, sampling, embeds, pooled, time_ids, guidance)


def split_at_switch(sampling: ModelSampling, sigmas: torch.Tensor, switch: float) -> int:
    """How many of the schedule's steps the base model runs before the refiner takes over.

    Mirrors diffusers' ``denoising_end``: the base keeps the steps whose timestep is at or above
    ``round(1000 * (1 - switch))``.
    """
    if switch <= 0:
        return len(sigmas) - 1
    cutoff = round(len(sampling.sigmas) * (1 - switch))
    timesteps = sampling.timestep(sigmas[:-1])
    return int((timesteps >= cutoff).sum())


def initial_noise(
    shape: tuple[int, ...], sigma_max: torch.Tensor, generator: torch.Generator, dt: torch.dtype
) -> torch.Tensor:
    """Seeded CPU noise on the job's device, scaled as ComfyUI and diffusers' Euler scale it."""
    noise: torch.Tensor = randn_tensor(
        shape, generator=generator, device=determinism.device(), dtype=dt
    )
    return noise * float((1 + sigma_max**2) ** 0.5)


def generate(
    pipe: Any,
    settings: ImageSettings,
    progress: Callable[[int, int], None],
    refiner: Any | None = None,
) -> list[Any]:
    """Sample with ``settings.sampler`` over ``settings.scheduler``; returns PIL images."""
    with torch.inference_mode():
        return _generate(pipe, settings, progress, refiner)


def _generate(
    pipe: Any, settings: ImageSettings, progress: Callable[[int, int], None], refiner: Any | None
) -> list[Any]:
    base = _base_denoiser(pipe, settings)
    sigmas = get_sigmas(settings.scheduler, base.sampling, settings.steps)
    generator = determinism.generator(settings.seed)
    factor = pipe.vae_scale_factor
    shape = (
        settings.batch,
        pipe.unet.config.in_channels,
        settings.height // factor,
        settings.width // factor,
    )
    latents = initial_noise(shape, sigmas[0], generator, torch.float32)
    switch = split_at_switch(base.sampling, sigmas, settings.refiner_switch if refiner else 0)
    latents = sample(
        settings.sampler, base, latents, sigmas[: switch + 1],
        generator=generator, seed=settings.seed, progress=progress,
    )  # fmt: skip
    decoder = pipe
    if refiner is not None and switch < len(sigmas) - 1:
        latents = sample(
            settings.sampler, _refiner_denoiser(refiner, settings), latents, sigmas[switch:],
            generator=generator, seed=settings.seed, progress=progress,
        )  # fmt: skip
        decoder = refiner
    return decode(decoder, latents)


def decode(pipe: Any, latents: torch.Tensor) -> list[Any]:
    """The VAE decode and post-processing of the pipeline, in float32."""
    vae = pipe.vae
    latents = latents.to(torch.float32) / vae.config.scaling_factor
    with torch.inference_mode():
        images = vae.decode(latents, return_dict=False)[0]
    return list(pipe.image_processor.postprocess(images, output_type="pil"))
