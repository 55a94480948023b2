"""What an image or video job asks for (light: no torch or diffusers import)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageSettings:
    """One text-to-image job, or one image-editing job (image-to-image, inpainting) on a
    picture of ``width`` x ``height``."""

    prompt: str
    seed: int
    steps: int
    width: int
    height: int
    guidance_scale: float
    negative_prompt: str = ""
    sampler: str = "euler"
    scheduler: str = "normal"
    batch: int = 1
    #: Fraction of the schedule after which the refiner takes over; 0 for no refiner.
    refiner_switch: float = 0.0
    #: Image editing: the share of the schedule run from the noised picture (diffusers'
    #: ``strength``); 1 starts from pure noise, as text to image does.
    strength: float = 1.0
    #: Where k-diffusion and ComfyUI differ, which one text to image follows
    #: (``lilypad.ml.samplers.REFERENCES``).
    sampler_reference: str = "k-diffusion"


@dataclass(frozen=True)
class VideoSettings:
    """One image-to-video job (per still)."""

    seed: int
    steps: int
    sampler: str
    scheduler: str
    fps: int
    width: int
    height: int
    #: diffusers' defaults for SVD: linear per-frame guidance from 1 to 3, bucket 127, aug 0.02.
    min_guidance: float = 1.0
    max_guidance: float = 3.0
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    decode_chunk_size: int = 8
    #: Where k-diffusion and ComfyUI differ, which one the sampler follows.
    sampler_reference: str = "k-diffusion"
