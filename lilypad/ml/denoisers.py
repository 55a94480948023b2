"""Diffusers UNets wrapped as k-diffusion denoisers ``D(x, sigma) -> denoised``.

This is the pattern of diffusers' ``StableDiffusionXLKDiffusionPipeline``: the UNet is called on
``x * c_in`` at the timestep of ``sigma`` and its output turned into a denoised estimate, with
classifier-free guidance applied on the way. Samplers work in float32 whatever the UNet's dtype
(fp16 on a GPU): only the UNet's input is cast, as ComfyUI does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lilypad.ml.schedules import ModelSampling


def _c_in(sigma: torch.Tensor) -> torch.Tensor:
    return 1 / (sigma**2 + 1) ** 0.5


def _guide(out: torch.Tensor, scale: torch.Tensor | float | None) -> torch.Tensor:
    if scale is None:
        return out
    uncond, cond = out.chunk(2)
    return uncond + scale * (cond - uncond)


@dataclass
class SDXLDenoiser:
    """An epsilon-predicting SDXL UNet (discrete DDPM timesteps) as a denoiser.

    Attributes:
        unet: A ``UNet2DConditionModel`` with ``text_time`` added conditioning.
        sampling: The model's noise levels (from its scheduler's ``alphas_cumprod``).
        prompt_embeds: Text hidden states; negative first when guidance is on.
        text_embeds: Pooled text embeddings (added conditioning), same batch layout.
        time_ids: Size/crop (and for the refiner, aesthetic score) ids, same batch layout.
        guidance_scale: None for no classifier-free guidance.
        image_channels: For an inpainting UNet (9 input channels): the mask and the masked
            picture's latents, concatenated after the scaled noisy latents on the channel axis
            (unscaled, as diffusers' ``StableDiffusionXLInpaintPipeline`` feeds them); the
            batch of ``x``. None for a 4-channel UNet.
    """

    unet: Any
    sampling: ModelSampling
    prompt_embeds: torch.Tensor
    text_embeds: torch.Tensor
    time_ids: torch.Tensor
    guidance_scale: float | None
    image_channels: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        guided = self.guidance_scale is not None
        batch = torch.cat([x, x]) if guided else x
        timestep = self.sampling.timestep(sigma).to(device=x.device, dtype=torch.float32)
        model_input = (batch * _c_in(sigma)).to(self.prompt_embeds.dtype)
        if self.image_channels is not None:
            extra = self.image_channels.to(model_input.dtype)
            model_input = torch.cat(
                [model_input, torch.cat([extra, extra]) if guided else extra], 1
            )
        eps = self.unet(
            model_input,
            timestep,
            encoder_hidden_states=self.prompt_embeds,
            added_cond_kwargs={"text_embeds": self.text_embeds, "time_ids": self.time_ids},
            return_dict=False,
        )[0].float()
        return x - sigma * _guide(eps, self.guidance_scale)


@dataclass
class SVDDenoiser:
    """A v-predicting Stable Video Diffusion UNet (continuous EDM, sigma_data = 1) as a denoiser.

    Attributes:
        unet: A ``UNetSpatioTemporalConditionModel``.
        image_latents: The conditioning image's latents per frame, concatenated on channels.
        image_embeddings: CLIP image embeddings (zeros first when guidance is on).
        added_time_ids: fps - 1, motion bucket, noise augmentation.
        guidance_scale: Per-frame guidance (broadcastable to the latents), or None.
    """

    unet: Any
    image_latents: torch.Tensor
    image_embeddings: torch.Tensor
    added_time_ids: torch.Tensor
    guidance_scale: torch.Tensor | None

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        batch = torch.cat([x, x]) if self.guidance_scale is not None else x
        scaled = (batch * _c_in(sigma)).to(self.image_latents.dtype)
        model_input = torch.cat([scaled, self.image_latents], dim=2)
        timestep = (0.25 * sigma.log()).to(device=x.device, dtype=torch.float32)
        v = self.unet(
            model_input,
            timestep,
            encoder_hidden_states=self.image_embeddings,
            added_time_ids=self.added_time_ids,
            return_dict=False,
        )[0].float()
        v = _guide(v, self.guidance_scale)
        # EDM preconditioning for v-prediction with sigma_data = 1.
        return v * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
