"""Tiny weights: the real architectures at a fraction of their width, random and deterministic.

``LILYPAD_WEIGHTS=tiny`` (a provider-side setting) makes a module load these instead of the real
weights, so that every line of the real pipeline code runs on a machine without a GPU or the
gigabytes of real weights. They are generated once, offline, from fixed seeds, into
``$LILYPAD_TINY_WEIGHTS_DIR/<model>-<TINY_VERSION>/`` and reused by later jobs; the same torch
version gives the same bytes. They draw noise, not pictures.

A job only reads them: the cache is shared, and a module that could write it could make other
modules' results wrong. Before a job the executor generates the models its manifest lists in
``tiny_models`` with this module's command line, the cache writable::

    LILYPAD_TINY_WEIGHTS_DIR=DIR python -m lilypad.ml.tiny sdxl-base sdxl-refiner

What tiny mode also changes in a job (the module logs it on stderr) is in :data:`TINY_LIMITS`.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lilypad.errors import InferenceError
from lilypad.ml import tokenizer

#: Bump when an architecture below changes: cached tiny weights of another version are not reused.
TINY_VERSION = "1"


@dataclass(frozen=True)
class TinyLimits:
    """How tiny mode caps a job so that it takes seconds on a CPU."""

    width: int = 64
    height: int = 64
    max_steps: int = 4
    video_frames: int = 4


TINY_LIMITS = TinyLimits()

# The SDXL noise schedule (scaled-linear betas over 1000 training steps), as in its model card.
_SDXL_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
}
_TEXT_WIDTH = 32  # both text encoders' hidden size (real: 768 and 1280)
_TEXT_PROJECTION = 32  # the pooled embedding of text_encoder_2 (real: 1280)
_TIME_EMBED = 8  # addition_time_embed_dim (real: 256)


def _tokenizer(directory: Path, pad_token: str) -> Any:
    from transformers import CLIPTokenizer

    tokenizer.write_vocab(directory)
    config = {
        "model_max_length": 77,
        "bos_token": tokenizer.BOS,
        "eos_token": tokenizer.EOS,
        "unk_token": tokenizer.EOS,
        "pad_token": pad_token,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return CLIPTokenizer.from_pretrained(directory)


def _text_config(vocab: Any, act: str, width: int = _TEXT_WIDTH) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=width,
        intermediate_size=37,
        num_hidden_layers=2,  # SDXL reads the penultimate hidden state
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=_TEXT_PROJECTION,
        bos_token_id=vocab.convert_tokens_to_ids(tokenizer.BOS),
        eos_token_id=vocab.convert_tokens_to_ids(tokenizer.EOS),
        pad_token_id=vocab.convert_tokens_to_ids(vocab.pad_token),
    )


def _vae(scaling_factor: float) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,  # 4 levels: 8x downsampling, as real
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        sample_size=TINY_LIMITS.width,
        scaling_factor=scaling_factor,
        force_upcast=True,
    )


def _sdxl_base_parts(directory: Path, in_channels: int) -> dict[str, Any]:
    """The components of an SDXL 1.0-style pipeline (base or inpainting), tokenizers built in
    ``directory`` (the caller removes their folders after saving)."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok_1 = _tokenizer(directory / "_tok1", tokenizer.EOS)
    tok_2 = _tokenizer(directory / "_tok2", "!")
    unet = UNet2DConditionModel(
        sample_size=TINY_LIMITS.width // 8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        attention_head_dim=(2, 4, 4),
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=2 * _TEXT_WIDTH,  # both encoders' hidden states, concatenated
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED,
        # pooled text (text_encoder_2) + 6 size/crop ids
        projection_class_embeddings_input_dim=_TEXT_PROJECTION + 6 * _TIME_EMBED,
    )
    return {
        "vae": _vae(0.13025),
        "text_encoder": CLIPTextModel(_text_config(tok_1, "quick_gelu")),
        "text_encoder_2": CLIPTextModelWithProjection(_text_config(tok_2, "gelu")),
        "tokenizer": tok_1,
        "tokenizer_2": tok_2,
        "unet": unet,
        "scheduler": EulerDiscreteScheduler(**_SDXL_SCHEDULER),
    }


def _save(pipe: Any, directory: Path) -> None:
    shutil.rmtree(directory / "_tok1")
    shutil.rmtree(directory / "_tok2")
    pipe.save_pretrained(directory, safe_serialization=True)


def _sdxl_base(directory: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    _save(StableDiffusionXLPipeline(**_sdxl_base_parts(directory, in_channels=4)), directory)


def _sdxl_inpaint(directory: Path) -> None:
    """SDXL 1.0 inpainting 0.1: the base architecture with a 9-channel UNet input (noisy latents,
    the mask, the masked image's latents)."""
    from diffusers import StableDiffusionXLInpaintPipeline

    parts = _sdxl_base_parts(directory, in_channels=9)
    _save(StableDiffusionXLInpaintPipeline(**parts), directory)


def _sdxl_refiner(directory: Path) -> None:
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModelWithProjection

    tok_2 = _tokenizer(directory / "_tok2", "!")
    unet = UNet2DConditionModel(
        sample_size=TINY_LIMITS.width // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=(
            "DownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        attention_head_dim=(2, 2, 4, 4),
        transformer_layers_per_block=1,
        cross_attention_dim=_TEXT_WIDTH,  # the refiner reads text_encoder_2 only
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED,
        # pooled text + 5 ids (size, crop, aesthetic score)
        projection_class_embeddings_input_dim=_TEXT_PROJECTION + 5 * _TIME_EMBED,
    )
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=_vae(0.13025),
        text_encoder=None,
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tok_2, "gelu")),
        tokenizer=None,
        tokenizer_2=tok_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**_SDXL_SCHEDULER),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )
    shutil.rmtree(directory / "_tok2")
    pipe.save_pretrained(directory, safe_serialization=True)


def _svd(directory: Path) -> None:
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = UNetSpatioTemporalConditionModel(
        sample_size=TINY_LIMITS.width // 8,
        in_channels=8,  # noisy latents + the conditioning image's latents
        out_channels=4,
        down_block_types=(
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        up_block_types=(
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ),
        block_out_channels=(32, 32, 64, 64),
        addition_time_embed_dim=_TIME_EMBED,
        projection_class_embeddings_input_dim=3 * _TIME_EMBED,  # fps, motion bucket, noise aug
        layers_per_block=1,
        cross_attention_dim=32,
        transformer_layers_per_block=1,
        num_attention_heads=(2, 2, 4, 4),
        num_frames=TINY_LIMITS.video_frames,
    )
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        sample_size=TINY_LIMITS.width,
        scaling_factor=0.18215,
        force_upcast=True,
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=224,  # the pipeline always resizes the conditioning image to 224x224
            patch_size=32,
        )
    )
    scheduler = EulerDiscreteScheduler(
        **{**_SDXL_SCHEDULER, "prediction_type": "v_prediction"},
        sigma_min=0.002,
        sigma_max=700.0,
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    pipe = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}),
    )
    pipe.save_pretrained(directory, safe_serialization=True)


# The noise schedule of Stable Diffusion 1.x and 2.x (the same betas as SDXL's), with the
# scheduler each model ships; lilypad's samplers read only its ``alphas_cumprod``.
_SD_BETAS: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}
_SD21_TEXT_WIDTH = 48  # OpenCLIP ViT-H's hidden size, scaled (real: 1024, against CLIP ViT-L's 768)
_LCM_GUIDANCE_EMBED = 32  # the LCM UNet's time_cond_proj_dim (real: 256)


def _sd_unet(cross_attention_dim: int, **sd2: Any) -> Any:
    """The UNet of Stable Diffusion 1.x/2.x: four levels, cross-attention on the first three,
    two ResNet layers per level (as real; the channels are 320, 640, 1280, 1280 there)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=TINY_LIMITS.width // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        cross_attention_dim=cross_attention_dim,
        **sd2,
    )


def _sd_save(pipeline_class: Any, directory: Path, **parts: Any) -> None:
    pipe = pipeline_class(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    shutil.rmtree(directory / "_tok1")
    pipe.save_pretrained(directory, safe_serialization=True)


def _sd15(directory: Path) -> None:
    """Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5's layout): one CLIP ViT-L text
    encoder read at its last layer, a UNet with 8 attention heads per level (here 4) on the
    encoder's width, epsilon prediction, the PNDM scheduler it ships."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    tok = _tokenizer(directory / "_tok1", tokenizer.EOS)
    _sd_save(
        StableDiffusionPipeline,
        directory,
        vae=_vae(0.18215),
        text_encoder=CLIPTextModel(_text_config(tok, "quick_gelu")),
        tokenizer=tok,
        unet=_sd_unet(_TEXT_WIDTH, attention_head_dim=4),
        scheduler=PNDMScheduler(**_SD_BETAS, skip_prk_steps=True, steps_offset=1),
    )


def _sd21(directory: Path) -> None:
    """Stable Diffusion 2.1 (768, stabilityai/stable-diffusion-2-1's layout): the OpenCLIP ViT-H
    text encoder without its last layer (so its output is OpenCLIP's penultimate layer), padded
    with ``!``; a UNet with linear projections, attention upcast and a fixed head width (64 real,
    16 here) on the encoder's wider states; v-prediction, the DDIM scheduler it ships."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    tok = _tokenizer(directory / "_tok1", "!")
    scheduler = DDIMScheduler(
        **_SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        prediction_type="v_prediction",
    )  # fmt: skip
    _sd_save(
        StableDiffusionPipeline,
        directory,
        vae=_vae(0.18215),
        text_encoder=CLIPTextModel(_text_config(tok, "gelu", _SD21_TEXT_WIDTH)),
        tokenizer=tok,
        unet=_sd_unet(
            _SD21_TEXT_WIDTH,
            attention_head_dim=(2, 2, 4, 4),
            use_linear_projection=True,
            upcast_attention=True,
        ),
        scheduler=scheduler,
    )


def _lcm(directory: Path) -> None:
    """A latent consistency model (SimianLuo/LCM_Dreamshaper_v7's layout): Stable Diffusion 1.5
    whose UNet takes the guidance scale as an embedding (``time_cond_proj_dim``), with the
    LCMScheduler it ships (50 distillation steps)."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler
    from transformers import CLIPTextModel

    tok = _tokenizer(directory / "_tok1", tokenizer.EOS)
    scheduler = LCMScheduler(
        **_SD_BETAS, original_inference_steps=50, set_alpha_to_one=True, clip_sample=False,
        timestep_scaling=10.0,
    )  # fmt: skip
    _sd_save(
        LatentConsistencyModelPipeline,
        directory,
        vae=_vae(0.18215),
        text_encoder=CLIPTextModel(_text_config(tok, "quick_gelu")),
        tokenizer=tok,
        unet=_sd_unet(_TEXT_WIDTH, attention_head_dim=4, time_cond_proj_dim=_LCM_GUIDANCE_EMBED),
        scheduler=scheduler,
    )


def _elsewhere(module: str, name: str) -> Callable[[Path], None]:
    """A builder defined in another module, imported when it runs."""

    def build(directory: Path) -> None:
        getattr(importlib.import_module(module), name)(directory)

    return build


_BUILDERS: dict[str, tuple[int, Callable[[Path], None]]] = {
    "sdxl-base": (1, _sdxl_base),
    "sdxl-refiner": (2, _sdxl_refiner),
    "svd": (3, _svd),
    "sdxl-inpaint": (4, _sdxl_inpaint),
    "sd15": (5, _sd15),
    "sd21": (6, _sd21),
    "lcm": (7, _lcm),
    # Issue 18's models, built by the modules that own them (imported only to generate).
    "controlnet-sd15": (8, _elsewhere("lilypad.ml.tiny_control", "controlnet_sd15")),
    "controlnet-sdxl": (9, _elsewhere("lilypad.ml.tiny_control", "controlnet_sdxl")),
    "annotators": (10, _elsewhere("lilypad.ml.tiny_annotators", "annotators")),
    "realesrgan": (11, _elsewhere("lilypad.ml.tiny_upscale", "realesrgan")),
    "sd-x4-upscaler": (12, _elsewhere("lilypad.ml.tiny_upscale", "sd_x4_upscaler")),
}


#: The models with a tiny variant, as manifests name them in ``tiny_models``.
MODELS = tuple(_BUILDERS)


def _builder(model: str) -> tuple[int, Callable[[Path], None]]:
    try:
        return _BUILDERS[model]
    except KeyError:
        raise InferenceError(
            f"no tiny weights for model {model!r}; known: {', '.join(MODELS)}"
        ) from None


def _readable(folder: Path) -> None:
    """Make every file and folder below ``folder`` readable by all: mkdtemp makes the folder
    0700 and safetensors writes its files 0600."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def ensure(model: str, cache_dir: Path) -> Path:
    """The directory of tiny weights for ``model``, generating them on first use.

    Generation is atomic (a temporary folder renamed into place), so two jobs starting at once
    never read a half-written model.

    Raises:
        InferenceError: for a model with no tiny variant, or one missing from a cache this
            process may not write (a job's: the executor generates what the manifest lists).
    """
    seed, build = _builder(model)
    target = cache_dir / f"{model}-{TINY_VERSION}"
    if target.is_dir():  # complete: generated in a staging folder, then renamed into place
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{model}-", dir=cache_dir))
    except OSError as exc:
        raise InferenceError(
            f"tiny weights of {model!r} are not in {cache_dir}, and it is read-only here "
            f"({exc.strerror or exc}): list {model!r} in the module's tiny_models, so the "
            "executor generates them before the job"
        ) from None
    import torch  # NOTE: only to generate; executors call this module without the `ml` extra

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            build(staging)
        _readable(staging)  # jobs read it, as another user where a container runs them
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: Sequence[str]) -> int:
    """``python -m lilypad.ml.tiny MODEL...``: generate into ``$LILYPAD_TINY_WEIGHTS_DIR``.

    Prints one ``MODEL DIR`` line per model; exit code 2 for an unknown model, 1 for a failure.
    """
    cache_dir = os.environ.get("LILYPAD_TINY_WEIGHTS_DIR")
    if not cache_dir or not argv:
        print(
            "usage: LILYPAD_TINY_WEIGHTS_DIR=DIR python -m lilypad.ml.tiny MODEL...; "
            f"models: {', '.join(MODELS)}",
            file=sys.stderr,
        )
        return 2
    # NOTE: offline, always: nothing comes from the network, and transformers writes the flag
    # into the tokenizer configs, whose bytes must not depend on who called this.
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        for model in argv:
            _builder(model)  # every name checked before anything is generated
    except InferenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        for model in argv:
            print(model, ensure(model, Path(cache_dir)), flush=True)
    except (InferenceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
