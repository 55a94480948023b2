"""Tiny weights of the upscale module's models (registered in :mod:`lilypad.ml.tiny`, which seeds
torch before calling these and renames the folder into place after):

- ``realesrgan``: :class:`lilypad.ml.upscale.RRDBNet` x4 and x2 with Real-ESRGAN's key layout
  (``conv_first``, ``body.N.rdbK.convM``, ``conv_body``, ``conv_up1/2``, ``conv_hr``,
  ``conv_last``) at 8 features, 4 growth channels and one RRDB block (real: 64, 32, 23), as
  safetensors: the loader reads the architecture from the shapes, as it does for the real
  ``.pth`` files.
- ``sd-x4-upscaler``: the parts of ``StableDiffusionUpscalePipeline`` as
  stabilityai/stable-diffusion-x4-upscaler lays them out: a UNet taking the noisy latents and
  the low-resolution picture (7 channels) with the noise level as its class label, a VAE with
  two upsampling levels (x4) and the upscaler's latent scaling (0.08333), an OpenCLIP-style text
  encoder (as SD 2.1's, padded with ``!``), a DDPM ``low_res_scheduler`` and a v-prediction
  DDIM ``scheduler``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lilypad.ml import tiny

#: The tiny RRDBNet's numbers (real Real-ESRGAN x4plus/x2plus: 64 features, 32, 23 blocks).
TINY_RRDB = {"width": 8, "growth": 4, "blocks": 1}

# The x4 upscaler's noise schedules: linear-in-sqrt betas from 0.0001 to 0.02 over 1000 steps.
_UPSCALER_BETAS: dict[str, Any] = {
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}


def realesrgan(directory: Path) -> None:
    """``RealESRGAN_x4plus.safetensors`` and ``RealESRGAN_x2plus.safetensors`` in ``directory``."""
    from safetensors.torch import save_file

    from lilypad.ml import upscale

    for scale in (4, 2):
        net = upscale.RRDBNet(upscale.RRDBShape(scale=scale, **TINY_RRDB))
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
        save_file(state, directory / upscale.realesrgan_file(scale, tiny=True))


def sd_x4_upscaler(directory: Path) -> None:
    """A diffusers folder of ``StableDiffusionUpscalePipeline`` in ``directory``."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    tok = tiny._tokenizer(directory / "_tok1", "!")
    unet = UNet2DConditionModel(
        sample_size=tiny.TINY_LIMITS.width // 2,
        in_channels=7,  # the noisy latents (4) and the noised low-resolution picture (3)
        out_channels=4,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        attention_head_dim=(2, 2, 4, 4),
        cross_attention_dim=tiny._SD21_TEXT_WIDTH,
        use_linear_projection=True,
        num_class_embeds=1000,  # the noise level, 0..max_noise_level, as a class label
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,  # 3 levels: 4x, the upscaler's factor
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        sample_size=tiny.TINY_LIMITS.width,
        scaling_factor=0.08333,
    )
    pipe = StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=CLIPTextModel(tiny._text_config(tok, "gelu", tiny._SD21_TEXT_WIDTH)),
        tokenizer=tok,
        unet=unet,
        low_res_scheduler=DDPMScheduler(**_UPSCALER_BETAS, clip_sample=False),
        scheduler=DDIMScheduler(
            **_UPSCALER_BETAS,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="v_prediction",
        ),
        max_noise_level=350,
    )
    shutil.rmtree(directory / "_tok1")
    pipe.save_pretrained(directory, safe_serialization=True)
