"""Tiny ControlNets: random weights of diffusers' ``ControlNetModel`` shaped for the tiny SD 1.5
and SDXL base UNets (:mod:`lilypad.ml.tiny`), one per control type a module offers, each in
its own subfolder (``canny/``, ``depth/``...), so that every control choice loads its own net as
the real modules do.

A real ControlNet is a copy of its UNet's encoder whose outputs pass through zero-initialised
1x1 convolutions ("zero convolutions": a fresh net adds nothing). Here those are drawn at random
too, so that a tiny net's residuals change the image and a test can see the control at work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lilypad.ml.annotators import Control

#: The control types of each base model (the modules' ``Control`` choices); a test checks that
#: the manifests offer exactly these.
SD15_CONTROLS = tuple(Control)
SDXL_CONTROLS = (Control.CANNY, Control.DEPTH, Control.OPENPOSE, Control.SCRIBBLE)

#: The conditioning embedding's channels: four levels, three 2x downsamplings, so that a control
#: map at pixel size meets the latents at 1/8 (real: 16, 32, 96, 256).
_CONDITIONING_CHANNELS = (8, 16, 32, 32)
#: The spread of the otherwise zero-initialised output convolutions' random weights.
_ZERO_CONV_STD = 0.2


def _randomise_zero_convolutions(net: Any) -> None:
    zero_convs = [*net.controlnet_down_blocks, net.controlnet_mid_block]
    zero_convs.append(net.controlnet_cond_embedding.conv_out)
    with torch.no_grad():
        for conv in zero_convs:
            torch.nn.init.normal_(conv.weight, std=_ZERO_CONV_STD)
            torch.nn.init.normal_(conv.bias, std=_ZERO_CONV_STD)


def _save_each(directory: Path, controls: tuple[Control, ...], **config: Any) -> None:
    from diffusers import ControlNetModel

    for control in controls:
        net = ControlNetModel(conditioning_embedding_out_channels=_CONDITIONING_CHANNELS, **config)
        _randomise_zero_convolutions(net)
        net.save_pretrained(directory / control.value, safe_serialization=True)


def controlnet_sd15(directory: Path) -> None:
    """ControlNet 1.1 for SD 1.5 (lllyasviel/control_v11*_sd15_*): the encoder of the tiny
    SD 1.5 UNet (``lilypad.ml.tiny._sd_unet``: four levels, 32-32-64-64 channels, 4 heads on
    the text encoder's 32-wide states)."""
    _save_each(
        directory,
        SD15_CONTROLS,
        in_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=4,
    )


def controlnet_sdxl(directory: Path) -> None:
    """diffusers' SDXL ControlNets (diffusers/controlnet-*-sdxl-1.0 and the like): the encoder
    of the tiny SDXL 1.0 base UNet (``lilypad.ml.tiny._sdxl_base_parts``: three levels,
    32-64-64 channels, linear projections, both text encoders' 64-wide states, the text_time
    added conditioning)."""
    _save_each(
        directory,
        SDXL_CONTROLS,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        attention_head_dim=(2, 4, 4),
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=64,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
    )
