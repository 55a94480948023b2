"""Text to image, image to image and inpainting with Stable Diffusion XL.

Three paths, all real diffusers code (the two that drive the UNet here read their prompts as
diffusers' ``encode_prompt`` does, or with ``weighted=True`` with weights and blends:
:mod:`lilypad.ml.prompts`):

- :func:`generate_default` runs ``StableDiffusionXLPipeline`` as published, with the scheduler
  the model ships (SDXL 0.9: Euler). It is what the ``v0.9`` module runs.
- :func:`generate` drives the SDXL UNet with a ComfyUI sampler and sigma schedule through a
  k-diffusion denoiser (diffusers' ``StableDiffusionXLKDiffusionPipeline`` pattern), reusing the
  pipeline's own prompt encoding, conditioning and decoding. With a refiner, the base model runs
  the steps whose timestep is at or above ``1000 * (1 - refiner_switch)`` (diffusers'
  ``denoising_end``) and ``StableDiffusionXLImg2ImgPipeline``'s refiner UNet the rest
  (``denoising_start``), continuing from the base's noisy latents.
- :func:`img2img` and :func:`inpaint` drive the same samplers from a picture, with the helpers
  of ``StableDiffusionXLImg2ImgPipeline`` and ``StableDiffusionXLInpaintPipeline`` (their image
  and mask processors, time ids, mask latents). The picture is encoded with the VAE's mean (no
  sampling: the same picture always gives the same latents); ``strength`` picks the tail of the
  sigma schedule as diffusers' ``strength`` does (:func:`strength_sigmas`); the latents are
  noised to that tail's first sigma with the job's seeded CPU generator, ``x = z + sigma * n``,
  or, at strength 1, start from pure noise as text to image does. Inpainting feeds the 9-channel
  UNet the mask and the masked picture's latents beside the noisy latents at every step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import (
    retrieve_latents,
)
from diffusers.utils.torch_utils import randn_tensor

from lilypad.ml import determinism, predictor, prompts
from lilypad.ml.denoisers import SDXLDenoiser
from lilypad.ml.samplers import get_reference, sample
from lilypad.ml.schedules import ModelSampling
from lilypad.ml.settings import ImageSettings

#: The refiner's aesthetic-score conditioning: diffusers' defaults for the SDXL 1.0 refiner.
AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5


def dtype() -> torch.dtype:
    """float16 on a GPU (as the real pipelines run), float32 on the CPU."""
    return torch.float16 if determinism.device().type == "cuda" else torch.float32


def load(pipeline_class: Any, path: Any, *, alone: bool = False) -> Any:
    """Load a diffusers pipeline from a local folder onto the job's device; VAE in float32.

    The SDXL VAE overflows in float16 (``force_upcast``); keeping it in float32 avoids the
    pipeline's up/down casting and its different rounding. A warm worker loads it once
    (:func:`lilypad.ml.predictor.load_once`; ``alone``: holding no other model meanwhile).
    """
    key = (
        "pipeline",
        pipeline_class.__qualname__,
        str(path),
        str(dtype()),
        str(determinism.device()),
    )
    return predictor.load_once(key, lambda: _load(pipeline_class, path), alone=alone)


def _load(pipeline_class: Any, path: Any) -> Any:
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


def _encode(pipe: Any, s: ImageSettings, weighted: bool) -> prompts.Conditioning:
    return prompts.encode(
        pipe,
        s.prompt,
        s.negative_prompt,
        batch=s.batch,
        guidance=_cfg(s.guidance_scale) is not None,
        weighted=weighted,
    )


def _base_denoiser(pipe: Any, s: ImageSettings, *, weighted: bool = False) -> SDXLDenoiser:
    device, guidance = determinism.device(), _cfg(s.guidance_scale)
    c = _encode(pipe, s, weighted)
    embeds, negative, pooled, negative_pooled = c.embeds, c.negative, c.pooled, c.negative_pooled
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


def _img2img_denoiser(
    pipe: Any,
    s: ImageSettings,
    image_channels: torch.Tensor | None = None,
    *,
    weighted: bool = False,
) -> SDXLDenoiser:
    """The UNet of an image-to-image or inpainting pipeline (the refiner too) as a denoiser.

    Their ``_get_add_time_ids`` add the aesthetic scores for a model that asks for them (the
    refiner: ``requires_aesthetics_score``) and the target size for the others.
    """
    device, guidance = determinism.device(), _cfg(s.guidance_scale)
    c = _encode(pipe, s, weighted)
    embeds, negative, pooled, negative_pooled = c.embeds, c.negative, c.pooled, c.negative_pooled
    size = (s.height, s.width)
    time_ids, negative_time_ids = pipe._get_add_time_ids(
        size, (0, 0), size, AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE, size, (0, 0), size,
        dtype=embeds.dtype,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    )  # fmt: skip
    time_ids = time_ids.to(device).repeat(s.batch, 1)
    if guidance is not None:
        embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
        time_ids = torch.cat([negative_time_ids.to(device).repeat(s.batch, 1), time_ids])
    sampling = ModelSampling.discrete(pipe.scheduler.alphas_cumprod)
    return SDXLDenoiser(pipe.unet, sampling, embeds, pooled, time_ids, guidance, image_channels)


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
    """Seeded CPU noise on the job's device, scaled as diffusers' Euler scales it (and the
    ``k-diffusion`` reference: :meth:`~lilypad.ml.samplers.SamplerReference.noise_scale`)."""
    return scaled_noise(shape, float((1 + sigma_max**2) ** 0.5), generator, dt)


def scaled_noise(
    shape: tuple[int, ...], scale: float, generator: torch.Generator, dt: torch.dtype
) -> torch.Tensor:
    """Seeded CPU noise on the job's device, times ``scale``."""
    noise: torch.Tensor = randn_tensor(
        shape, generator=generator, device=determinism.device(), dtype=dt
    )
    return noise * scale


def generate(
    pipe: Any,
    settings: ImageSettings,
    progress: Callable[[int, int], None],
    refiner: Any | None = None,
    *,
    weighted: bool = False,
) -> list[Any]:
    """Sample with ``settings.sampler`` over ``settings.scheduler``; returns PIL images.

    ``weighted`` reads the prompts with weights and blends (:mod:`lilypad.ml.prompts`).
    """
    with torch.inference_mode():
        return _generate(pipe, settings, progress, refiner, weighted)


def _generate(
    pipe: Any,
    settings: ImageSettings,
    progress: Callable[[int, int], None],
    refiner: Any | None,
    weighted: bool,
) -> list[Any]:
    base = _base_denoiser(pipe, settings, weighted=weighted)
    reference = get_reference(settings.sampler_reference)
    sigmas = reference.sigmas(settings.scheduler, settings.sampler, base.sampling, settings.steps)
    generator = determinism.generator(settings.seed)
    factor = pipe.vae_scale_factor
    shape = (
        settings.batch,
        pipe.unet.config.in_channels,
        settings.height // factor,
        settings.width // factor,
    )
    scale = reference.noise_scale(sigmas[0], base.sampling)
    latents = scaled_noise(shape, scale, generator, torch.float32)
    switch = split_at_switch(base.sampling, sigmas, settings.refiner_switch if refiner else 0)
    latents = sample(
        settings.sampler, base, latents, sigmas[: switch + 1],
        generator=generator, seed=settings.seed, progress=progress, reference=reference.name,
    )  # fmt: skip
    decoder = pipe
    if refiner is not None and switch < len(sigmas) - 1:
        latents = sample(
            settings.sampler, _img2img_denoiser(refiner, settings, weighted=weighted), latents,
            sigmas[switch:],
            generator=generator, seed=settings.seed, progress=progress, reference=reference.name,
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


def strength_steps(steps: int, strength: float) -> int:
    """How many of a ``steps``-step schedule an image-editing job runs: the last
    ``floor(steps * strength)``, as diffusers' ``strength`` (``get_timesteps``)."""
    return min(int(steps * strength), steps)


def strength_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The tail of ``sigmas`` (a schedule, ending with 0) that ``strength`` selects; just
    ``[0]`` when it selects no step."""
    steps = len(sigmas) - 1
    return sigmas[steps - strength_steps(steps, strength) :]


def encode(pipe: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Latents of preprocessed pictures (``[-1, 1]``), in float32: the mean of the VAE's latent
    distribution (diffusers' ``sample_mode="argmax"``), so no noise is drawn."""
    vae = pipe.vae
    encoded = vae.encode(pixels.to(device=determinism.device(), dtype=torch.float32))
    latents: torch.Tensor = retrieve_latents(encoded, sample_mode="argmax")
    return latents * float(vae.config.scaling_factor)


def sample_from(
    pipe: Any,
    settings: ImageSettings,
    latents: torch.Tensor,
    progress: Callable[[int, int], None] | None = None,
    image_channels: torch.Tensor | None = None,
    *,
    weighted: bool = False,
) -> torch.Tensor:
    """Latents sampled from a picture's ``latents`` over the tail of the schedule that
    ``settings.strength`` selects (module docstring); ``latents`` themselves for no step.

    Args:
        pipe: An image-to-image or inpainting pipeline.
        settings: The job.
        latents: The picture's latents (:func:`encode`).
        progress: Called after each model evaluation.
        image_channels: An inpainting UNet's mask and masked-picture latents.
        weighted: Read the prompts with weights and blends (:mod:`lilypad.ml.prompts`).
    """
    denoiser = _img2img_denoiser(pipe, settings, image_channels, weighted=weighted)
    reference = get_reference(settings.sampler_reference)
    full = reference.sigmas(settings.scheduler, settings.sampler, denoiser.sampling, settings.steps)
    sigmas = strength_sigmas(full, settings.strength)
    if len(sigmas) == 1:
        return latents  # no step selected: the picture's own latents
    generator = determinism.generator(settings.seed)
    if settings.strength >= 1:
        scale = reference.noise_scale(sigmas[0], denoiser.sampling)
        start = scaled_noise(tuple(latents.shape), scale, generator, torch.float32)
    else:
        noise = randn_tensor(
            tuple(latents.shape), generator=generator, device=latents.device, dtype=torch.float32
        )
        start = latents + noise * float(sigmas[0])
    return sample(
        settings.sampler, denoiser, start, sigmas,
        generator=generator, seed=settings.seed, progress=progress, reference=reference.name,
    )  # fmt: skip


def img2img(
    pipe: Any,
    settings: ImageSettings,
    image: Any,
    progress: Callable[[int, int], None],
    *,
    weighted: bool = False,
) -> Any:
    """``image`` (PIL, ``settings.width`` x ``settings.height``) re-imagined after the prompt.

    Args:
        pipe: A ``StableDiffusionXLImg2ImgPipeline`` (the base model's weights).
        settings: The job; ``strength`` says how much of the schedule runs.
        image: The picture, already at the job's size.
        progress: Called after each model evaluation.
        weighted: Read the prompts with weights and blends (:mod:`lilypad.ml.prompts`).
    """
    with torch.inference_mode():
        pixels = pipe.image_processor.preprocess(
            image, height=settings.height, width=settings.width
        )
        latents = sample_from(pipe, settings, encode(pipe, pixels), progress, weighted=weighted)
        return decode(pipe, latents)[0]


def inpaint(
    pipe: Any,
    settings: ImageSettings,
    image: Any,
    mask: Any,
    progress: Callable[[int, int], None],
    *,
    weighted: bool = False,
) -> Any:
    """``image`` repainted where ``mask`` is white, as the inpainting model decodes it.

    The pixels outside the mask are the model's too: pasting the original ones back is the
    caller's (:func:`lilypad.ml.edit.composite`).

    Args:
        pipe: A ``StableDiffusionXLInpaintPipeline`` with a 9-channel UNet.
        settings: The job; ``strength`` says how much of the schedule runs.
        image: The picture (PIL RGB), already at the job's size.
        mask: Its mask (PIL ``L``, 255 = repaint, 0 = keep), the same size.
        progress: Called after each model evaluation.
        weighted: Read the prompts with weights and blends (:mod:`lilypad.ml.prompts`).
    """
    height, width = settings.height, settings.width
    with torch.inference_mode():
        pixels = pipe.image_processor.preprocess(image, height=height, width=width)
        repaint = pipe.mask_processor.preprocess(mask, height=height, width=width)
        latents = encode(pipe, pixels)
        masked_latents = encode(pipe, pixels * (repaint < 0.5))
        small_mask, masked_latents = pipe.prepare_mask_latents(
            repaint, masked_latents, 1, height, width, pipe.unet.dtype, determinism.device(),
            None, False,
        )  # fmt: skip
        channels = torch.cat([small_mask, masked_latents], dim=1)
        latents = sample_from(pipe, settings, latents, progress, channels, weighted=weighted)
        return decode(pipe, latents)[0]
