"""Image to video with Stable Video Diffusion.

The conditioning, the UNet inputs and the decoding are those of diffusers'
``StableVideoDiffusionPipeline.__call__`` (its own helper methods are called); only the loop is
replaced by a ComfyUI sampler over a sigma schedule, through :class:`SVDDenoiser`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from lilypad.ml import determinism
from lilypad.ml.denoisers import SVDDenoiser
from lilypad.ml.samplers import get_reference, sample
from lilypad.ml.schedules import ModelSampling
from lilypad.ml.settings import VideoSettings


def sampling(pipe: Any) -> ModelSampling:
    """SVD's continuous EDM noise levels, from its scheduler config."""
    config = pipe.scheduler.config
    return ModelSampling.edm(float(config.sigma_min), float(config.sigma_max))


def generate(
    pipe: Any,
    still: Any,
    s: VideoSettings,
    generator: torch.Generator,
    progress: Callable[[int, int], None],
) -> list[Any]:
    """Frames (PIL images) of a video started from ``still``.

    ``generator`` is shared by consecutive videos of one job, so that a batch of stills gets
    different noise per video while the whole job stays a function of ``VideoSeed``.
    """
    device = determinism.device()
    num_frames = int(pipe.unet.config.num_frames)
    guided = s.max_guidance > 1
    with torch.inference_mode():
        embeddings = pipe._encode_image(still, device, 1, guided)
        image = pipe.video_processor.preprocess(still, height=s.height, width=s.width).to(device)
        noise = randn_tensor(image.shape, generator=generator, device=device, dtype=image.dtype)
        image = image + s.noise_aug_strength * noise
        image_latents = pipe._encode_vae_image(image, device, 1, guided).to(embeddings.dtype)
        image_latents = image_latents.unsqueeze(1).repeat(1, num_frames, 1, 1, 1)
        # NOTE: SVD was trained on fps - 1, as diffusers' pipeline conditions it.
        time_ids = pipe._get_add_time_ids(
            s.fps - 1, s.motion_bucket_id, s.noise_aug_strength, embeddings.dtype, 1, 1, guided
        ).to(device)
        guidance = None
        if guided:
            guidance = torch.linspace(s.min_guidance, s.max_guidance, num_frames)
            guidance = guidance.to(device).reshape(1, num_frames, 1, 1, 1)
        model = sampling(pipe)
        reference = get_reference(s.sampler_reference)
        sigmas = reference.sigmas(s.scheduler, s.sampler, model, s.steps)
        factor = pipe.vae_scale_factor
        shape = (
            1,
            num_frames,
            pipe.unet.config.in_channels // 2,
            s.height // factor,
            s.width // factor,
        )
        scale = reference.noise_scale(sigmas[0], model)
        noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        latents = noise * scale  # seeded CPU noise on the job's device
        denoiser = SVDDenoiser(pipe.unet, image_latents, embeddings, time_ids, guidance)
        latents = sample(
            s.sampler, denoiser, latents, sigmas,
            generator=generator, seed=s.seed, progress=progress, reference=reference.name,
        )  # fmt: skip
        frames = pipe.decode_latents(latents.to(pipe.vae.dtype), num_frames, s.decode_chunk_size)
        return list(pipe.video_processor.postprocess_video(video=frames, output_type="pil")[0])
