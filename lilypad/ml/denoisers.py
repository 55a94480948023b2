"""Diffusers UNets wrapped as k-diffusion denoisers ``D(x, sigma) -> denoised``.

This is the pattern of diffusers' ``StableDiffusionXLKDiffusionPipeline``: the UNet is called on
``x * c_in`` at the timestep of ``sigma`` and its output turned into a denoised estimate, with
classifier-free guidance applied on the way. Samplers work in float32 whatever the UNet's dtype
(fp16 on a GPU): only the UNet's input is cast, as ComfyUI does.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch

from lilypad.ml.schedules import ModelSampling


class Prediction(StrEnum):
    """What a DDPM UNet predicts, as diffusers' schedulers name it (``prediction_type``)."""

    #: The noise (Stable Diffusion 1.x, 2.x at 512 pixels, SDXL, the turbo models).
    EPSILON = "epsilon"
    #: The velocity ``v = alpha * noise - sigma_vp * x0`` (Salimans & Ho 2022; SD 2.x at 768).
    V = "v_prediction"


def _c_in(sigma: torch.Tensor) -> torch.Tensor:
    return 1 / (sigma**2 + 1) ** 0.5


def to_denoised(
    prediction: Prediction, x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """The denoised estimate from a UNet's (guided) output ``out`` at ``x``, noise level ``sigma``.

    In the variance-exploding form ``x = x0 + sigma * noise`` the UNet saw ``x * c_in`` with
    ``c_in = 1 / sqrt(sigma**2 + 1)``. Epsilon: ``x0 = x - sigma * eps``. V-prediction
    (k-diffusion's ``DiscreteVDDPMDenoiser``, sigma_data = 1):
    ``x0 = x / (sigma**2 + 1) - v * sigma / sqrt(sigma**2 + 1)``.
    """
    if prediction is Prediction.V:
        return x / (sigma**2 + 1) - out * (sigma / (sigma**2 + 1) ** 0.5)
    return x - sigma * out


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
class SDDenoiser:
    """A Stable Diffusion 1.x/2.x UNet (discrete DDPM timesteps, conditioned on text hidden
    states alone) as a denoiser, predicting epsilon or v.

    Attributes:
        unet: A ``UNet2DConditionModel`` without added conditioning.
        sampling: The model's noise levels (from its scheduler's ``alphas_cumprod``).
        prompt_embeds: Text hidden states; negative first when guidance is on.
        guidance_scale: None for no classifier-free guidance.
        prediction: What the UNet predicts (SD 2.1 at 768 pixels: v).
    """

    unet: Any
    sampling: ModelSampling
    prompt_embeds: torch.Tensor
    guidance_scale: float | None
    prediction: Prediction = Prediction.EPSILON

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        batch = torch.cat([x, x]) if self.guidance_scale is not None else x
        timestep = self.sampling.timestep(sigma).to(device=x.device, dtype=torch.float32)
        out = self.unet(
            (batch * _c_in(sigma)).to(self.prompt_embeds.dtype),
            timestep,
            encoder_hidden_states=self.prompt_embeds,
            return_dict=False,
        )[0].float()
        return to_denoised(self.prediction, x, sigma, _guide(out, self.guidance_scale))


#: A consistency model's boundary condition (Song et al. 2023): sigma_data, and the factor the
#: LCM scheduler scales timesteps by before it (diffusers' ``timestep_scaling`` default).
LCM_SIGMA_DATA, LCM_TIMESTEP_SCALING = 0.5, 10.0


@dataclass
class LCMDenoiser:
    """A latent consistency model's UNet (epsilon; guidance as an embedding) as a denoiser.

    Returns the consistency function of diffusers' ``LCMScheduler.step``: the epsilon estimate
    of x0 mixed with the (variance-preserving) input by the boundary condition of the whole
    timestep ``t``, ``c_skip * x * c_in + c_out * x0`` with ``c_skip = sd**2 / ((s t)**2 +
    sd**2)`` and ``c_out = s t / sqrt((s t)**2 + sd**2)`` (sd = 0.5, s = ``timestep_scaling``).

    Attributes:
        unet: A ``UNet2DConditionModel`` with ``time_cond_proj_dim``.
        sampling: The model's noise levels.
        prompt_embeds: Text hidden states (no negative: guidance is the embedding).
        guidance_embedding: The guidance scale's embedding (``timestep_cond``), one per image.
        timestep_scaling: The scheduler's ``timestep_scaling``.
    """

    unet: Any
    sampling: ModelSampling
    prompt_embeds: torch.Tensor
    guidance_embedding: torch.Tensor
    timestep_scaling: float = LCM_TIMESTEP_SCALING

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        # NOTE: LCM schedules sit on whole training timesteps; rounding undoes the float32
        # rounding of their sigmas, so the UNet and the boundary condition see those exactly.
        timestep = self.sampling.timestep(sigma).round().to(device=x.device, dtype=torch.float32)
        model_input = x * _c_in(sigma)
        eps = self.unet(
            model_input.to(self.prompt_embeds.dtype),
            timestep,
            timestep_cond=self.guidance_embedding,
            encoder_hidden_states=self.prompt_embeds,
            return_dict=False,
        )[0].float()
        scaled = timestep * self.timestep_scaling
        c_skip = LCM_SIGMA_DATA**2 / (scaled**2 + LCM_SIGMA_DATA**2)
        c_out = scaled / (scaled**2 + LCM_SIGMA_DATA**2) ** 0.5
        return c_out * to_denoised(Prediction.EPSILON, x, sigma, eps) + c_skip * model_input


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
