"""Text to image and image to image with the Stable Diffusion family: SD 1.5, SD 2.1, SD Turbo,
SDXL Turbo and latent consistency models (the jobs themselves are :mod:`lilypad.ml.family`).

All drive the model's own diffusers pipeline pieces (its prompt encoding, VAE, image processor)
with a sampler of :mod:`lilypad.ml.samplers` through a k-diffusion denoiser
(:mod:`lilypad.ml.denoisers`), as :mod:`lilypad.ml.sdxl` does for SDXL:

- **SD 1.x/2.x** (``StableDiffusionPipeline``): one text encoder, read as diffusers reads it (its
  last layer: for SD 2.x the converted OpenCLIP encoder lacks its last layer, so that is
  OpenCLIP's penultimate one); :class:`~lilypad.ml.denoisers.SDDenoiser` predicting epsilon or
  v (SD 2.1); classifier-free guidance above a scale of 1, as diffusers.
- **SDXL Turbo**: the SDXL denoiser of :mod:`lilypad.ml.sdxl` (its prompt encoding and size
  conditioning).
- **Latent consistency** (``LatentConsistencyModelPipeline``): guidance as the UNet's ``w``
  embedding (``w = scale - 1``), no unconditional pass; :class:`~lilypad.ml.denoisers.LCMDenoiser`.

Schedules: a ComfyUI schedule by name (:func:`lilypad.ml.schedules.get_sigmas`), or the one a
model ships (:mod:`lilypad.ml.family` names them): ``trailing``, diffusers'
``timestep_spacing="trailing"`` (the turbo models), or ``lcm``, ``LCMScheduler.set_timesteps``
(50 distillation timesteps, ``Steps`` of them evenly by index). Image to image is
sdxl-img2img's: the picture's VAE mean, noised to the first sigma that ``strength`` selects with
the job's seeded generator (from pure noise at strength 1), then sampled. Which sigmas those are
follows the model's own diffusers img2img pipeline (:func:`image_to_image_sigmas`):

- a ComfyUI schedule or ``trailing``: the tail of the ``Steps``-step schedule, its last
  ``int(Steps * strength)`` steps, as ``StableDiffusionImg2ImgPipeline`` and
  ``StableDiffusionXLImg2ImgPipeline`` (what SD Turbo and SDXL Turbo run as img2img) take them
  in ``get_timesteps``; for trailing spacing that is, e.g., timestep 499 alone of (999, 499) at
  2 steps and strength 0.5, the turbo model cards' img2img.
- ``lcm``: ``LatentConsistencyModelImg2ImgPipeline`` cuts nothing off; it passes ``strength``
  to ``LCMScheduler.set_timesteps``, which picks all ``Steps`` timesteps from the
  ``int(50 * strength)`` least noisy of the distillation schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from lilypad.ml import determinism, predictor, prompts, sdxl
from lilypad.ml.denoisers import LCMDenoiser, Prediction, SDDenoiser
from lilypad.ml.family import LCM, TRAILING, Family, Kind
from lilypad.ml.samplers import Denoiser, sample
from lilypad.ml.schedules import ModelSampling, get_sigmas
from lilypad.ml.settings import ImageSettings

Progress = Callable[[int, int], None]


def load(pipeline_class: Any, path: Path) -> Any:
    """:func:`lilypad.ml.sdxl.load` for a pipeline with a safety checker (SD 1.5, LCM): loaded
    without it, since the jobs decode latents themselves and never run it (and images do not
    bake it: :data:`lilypad.ml.download._NOT_BAKED`)."""
    if "safety_checker" not in getattr(pipeline_class, "_optional_components", ()):
        return sdxl.load(pipeline_class, path)
    key = ("pipeline", pipeline_class.__qualname__, str(path), "without safety checker",
           str(sdxl.dtype()), str(determinism.device()))  # fmt: skip
    return predictor.load_once(key, lambda: without(
        pipeline_class, path, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ))  # fmt: skip


def without(pipeline_class: Any, path: Path, **options: Any) -> Any:
    """``pipeline_class`` from ``path`` as :func:`load` loads it, with ``options`` (the
    components it is loaded without, as ``None``) for ``from_pretrained``."""
    fp16 = any(Path(path).glob("*/*.fp16.safetensors"))
    pipe = pipeline_class.from_pretrained(
        path,
        dtype=sdxl.dtype(),
        variant="fp16" if fp16 else None,
        use_safetensors=True,
        local_files_only=True,
        **options,
    )
    pipe = pipe.to(determinism.device())
    pipe.vae.to(torch.float32)  # as sdxl.load: every path decodes in float32
    pipe.set_progress_bar_config(disable=True)
    return pipe


def guidance(scale: float) -> float | None:
    """The classifier-free guidance scale, or None: at or below 1 diffusers makes a single,
    unguided UNet pass (the turbo models' default of 0)."""
    return scale if scale > 1 else None


def encode_prompt(pipe: Any, settings: ImageSettings, guided: bool) -> torch.Tensor:
    """The text conditioning of a job: the prompt's hidden states per image, the negative
    prompt's first when ``guided``, both read with weights and blends (``(word:1.4)``:
    :mod:`lilypad.ml.prompts`; a plain prompt gives diffusers' own ``encode_prompt``).

    The one place where prompt text becomes conditioning in the SD 1.x/2.x and LCM jobs.
    """
    encoded = prompts.encode(
        pipe,
        settings.prompt,
        settings.negative_prompt,
        batch=settings.batch,
        guidance=guided,
        weighted=True,
    )
    embeds: torch.Tensor = encoded.embeds
    return torch.cat([encoded.negative, embeds]) if guided else embeds


def sd_denoiser(pipe: Any, settings: ImageSettings, prediction: Prediction) -> SDDenoiser:
    """An SD 1.x/2.x pipeline's UNet as a denoiser for ``settings``."""
    scale = guidance(settings.guidance_scale)
    sampling = ModelSampling.discrete(pipe.scheduler.alphas_cumprod)
    embeds = encode_prompt(pipe, settings, scale is not None)
    return SDDenoiser(pipe.unet, sampling, embeds, scale, prediction)


def lcm_denoiser(pipe: Any, settings: ImageSettings) -> LCMDenoiser:
    """A ``LatentConsistencyModelPipeline``'s UNet as a denoiser: the guidance scale enters as
    the embedding of ``w = scale - 1`` (the pipeline's ``get_guidance_scale_embedding``)."""
    w = torch.tensor(settings.guidance_scale - 1).repeat(settings.batch)
    embedding = pipe.get_guidance_scale_embedding(
        w, embedding_dim=pipe.unet.config.time_cond_proj_dim
    ).to(device=determinism.device(), dtype=pipe.unet.dtype)
    sampling = ModelSampling.discrete(pipe.scheduler.alphas_cumprod)
    embeds = encode_prompt(pipe, settings, guided=False)
    return LCMDenoiser(
        pipe.unet, sampling, embeds, embedding, pipe.scheduler.config.timestep_scaling
    )


def denoiser(pipe: Any, family: Family, settings: ImageSettings) -> Denoiser:
    """The UNet of ``family``'s pipeline as a denoiser for ``settings``; an SDXL one (SDXL
    Turbo) as :mod:`lilypad.ml.sdxl` builds it, with its prompt encoding."""
    if family.kind is Kind.SDXL:
        return sdxl._base_denoiser(pipe, settings, weighted=True)
    if family.kind is Kind.LCM:
        return lcm_denoiser(pipe, settings)
    return sd_denoiser(pipe, settings, Prediction(family.prediction))


def trailing(model: ModelSampling, steps: int) -> torch.Tensor:
    """diffusers' ``timestep_spacing="trailing"`` (Lin et al. 2023): ``steps``
    timesteps ``round(T - i * T / steps) - 1`` from the last training timestep down, their sigmas
    from the model's table, then 0; one step is the largest noise level alone."""
    table = len(model.sigmas)
    ratio = table / steps
    timesteps = torch.round(table - torch.arange(steps, dtype=torch.float64) * ratio) - 1
    return torch.cat([model.sigma(timesteps), torch.zeros(1, dtype=torch.float64)])


def lcm_sigmas(
    scheduler: Any, model: ModelSampling, steps: int, strength: float = 1.0
) -> torch.Tensor:
    """The sigmas of the LCM scheduler's own ``steps`` timesteps, then 0: at ``strength``
    below 1, taken from the least noisy ``int(50 * strength)`` distillation timesteps, as
    ``LatentConsistencyModelImg2ImgPipeline`` has ``LCMScheduler.set_timesteps`` take them."""
    scheduler.set_timesteps(steps, strength=strength)
    timesteps = scheduler.timesteps.to(torch.float64)
    return torch.cat([model.sigma(timesteps), torch.zeros(1, dtype=torch.float64)])


def schedule(pipe: Any, settings: ImageSettings, model: ModelSampling) -> torch.Tensor:
    """The ``settings.steps + 1`` sigmas of ``settings.scheduler``: :data:`TRAILING`,
    :data:`LCM`, or a ComfyUI schedule's name."""
    if settings.scheduler == TRAILING:
        return trailing(model, settings.steps)
    if settings.scheduler == LCM:
        return lcm_sigmas(pipe.scheduler, model, settings.steps)
    return get_sigmas(settings.scheduler, model, settings.steps)


def image_to_image_sigmas(pipe: Any, settings: ImageSettings, model: ModelSampling) -> torch.Tensor:
    """The sigmas an image-to-image job runs from its noised picture, ending with 0 (module
    docstring); just ``[0]`` where ``settings.strength`` selects no step (the jobs that allow
    that: :attr:`lilypad.ml.family.Family.keeps_picture_at_no_step`)."""
    if settings.scheduler == LCM:
        return lcm_sigmas(pipe.scheduler, model, settings.steps, settings.strength)
    return sdxl.strength_sigmas(schedule(pipe, settings, model), settings.strength)


def _latent_shape(pipe: Any, settings: ImageSettings) -> tuple[int, ...]:
    factor = pipe.vae_scale_factor
    channels = pipe.unet.config.in_channels
    return (settings.batch, channels, settings.height // factor, settings.width // factor)


def text_to_image(
    pipe: Any, settings: ImageSettings, denoiser: Any, progress: Progress
) -> list[Any]:
    """``settings.batch`` images sampled from seeded noise; PIL images."""
    with torch.inference_mode():
        sigmas = schedule(pipe, settings, denoiser.sampling)
        generator = determinism.generator(settings.seed)
        shape = _latent_shape(pipe, settings)
        latents = sdxl.initial_noise(shape, sigmas[0], generator, torch.float32)
        latents = sample(
            settings.sampler, denoiser, latents, sigmas,
            generator=generator, seed=settings.seed, progress=progress,
        )  # fmt: skip
        return sdxl.decode(pipe, latents)


def sample_from(
    denoiser: Any,
    settings: ImageSettings,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Latents sampled from a picture's ``latents`` over ``sigmas``
    (:func:`image_to_image_sigmas`): noised to their first sigma with the job's generator, from
    pure noise at strength 1; the picture's own latents when there is no step."""
    if len(sigmas) == 1:
        return latents
    generator = determinism.generator(settings.seed)
    shape = tuple(latents.shape)
    if settings.strength >= 1:
        start = sdxl.initial_noise(shape, sigmas[0], generator, torch.float32)
    else:
        noise = randn_tensor(shape, generator=generator, device=latents.device, dtype=torch.float32)
        start = latents + noise * float(sigmas[0])
    return sample(
        settings.sampler, denoiser, start, sigmas,
        generator=generator, seed=settings.seed, progress=progress,
    )  # fmt: skip


def image_to_image(
    pipe: Any, settings: ImageSettings, denoiser: Any, image: Any, progress: Progress
) -> list[Any]:
    """``settings.batch`` re-imaginings of ``image`` (PIL, already at the job's size)."""
    with torch.inference_mode():
        pixels = pipe.image_processor.preprocess(
            image, height=settings.height, width=settings.width
        )
        latents = sdxl.encode(pipe, pixels).repeat(settings.batch, 1, 1, 1)
        sigmas = image_to_image_sigmas(pipe, settings, denoiser.sampling)
        return sdxl.decode(pipe, sample_from(denoiser, settings, latents, sigmas, progress))
