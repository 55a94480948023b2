"""The upscale module's job: a picture enlarged 2x or 4x by Real-ESRGAN or the SD x4 upscaler,
in tiles, so that a 4096-pixel result fits in bounded memory.

- **Real-ESRGAN** (``Model=realesrgan``): :class:`RRDBNet`, ESRGAN's published architecture as
  Real-ESRGAN trains it (a ``conv_first``, a body of RRDB blocks of three residual dense blocks,
  ``conv_body``, two nearest-x2 upsampling convolutions, ``conv_hr``, ``conv_last``; the x2
  model reads the picture pixel-unshuffled by 2, 12 channels). ``RealESRGAN_x4plus.pth`` serves
  Scale 4, ``RealESRGAN_x2plus.pth`` Scale 2; each loads with ``torch.load(weights_only=True)``
  (its ``params_ema``) and its architecture is read from the tensors' shapes
  (:func:`load_rrdbnet`). Tiles as Real-ESRGAN's own ``tile``/``tile_pad``: each tile of
  :data:`REALESRGAN_TILE` pixels is upscaled with :data:`REALESRGAN_PAD` pixels of the picture
  around it, the pad cropped off and the tile pasted. A tile differs from an untiled run only
  where the network sees past its pad: with a pad at least :func:`context` pixels, not at all.
- **SD x4 upscaler** (``Model=sd-x4``): stabilityai/stable-diffusion-x4-upscaler driven through
  ``StableDiffusionUpscalePipeline``'s parts as its ``__call__`` does (the prompt encoded once,
  the picture noised to ``NoiseLevel`` by the ``low_res_scheduler``, the DDIM scheduler, the
  noise level as the UNet's class label, classifier-free guidance above 1, the VAE decoded in
  float32), tile by tile: the picture, padded to a multiple of 8, is cut into tiles of
  :data:`SD_X4_TILE` pixels overlapping by :data:`SD_X4_OVERLAP`; each is upscaled alone and
  the results are blended across the overlap with a linear ramp. The noise is drawn once for the
  whole picture from the seeded CPU generator and each tile takes its part, so overlapping tiles
  start from the same noise. At Scale 2 the x4 result is resized by half (Lanczos): the model
  only enlarges by 4, and a downscaled x4 keeps more detail than a x4 of a halved picture.
- **Limits**: the result is at most :data:`MAX_SIDE` pixels a side (the manifest's
  ``scaled_size`` refuses a larger one before anything is signed; :func:`check_size` here, for a
  spec made by other means). In tiny mode the picture is worked at most 64 pixels a side, the
  tiles are :data:`TINY_TILES` and at most 4 steps run; the log says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch's own name

from lilypad.errors import InferenceError, InvalidTunable
from lilypad.ml import determinism, edit, job, predictor
from lilypad.ml.job import Model, env, env_choice, env_float, env_int, log
from lilypad.ml.tiny import TINY_LIMITS

#: xinntao/Real-ESRGAN's release files (GitHub, not the Hugging Face Hub: the module image
#: downloads them itself), in ``$MODEL_DIR/realesrgan/``.
REALESRGAN = Model("realesrgan", "github.com/xinntao/Real-ESRGAN/releases", "realesrgan")
SD_X4_UPSCALER = job.SD_X4_UPSCALER
#: The ``Model`` tunable's choices.
MODELS = ("realesrgan", "sd-x4")
SCALES = (2, 4)
#: The largest side of a result (the manifest's ``scaled_size.max_side``).
MAX_SIDE = 4096


@dataclass(frozen=True)
class Tiles:
    """How a picture is cut: tiles of ``size`` input pixels, each with ``margin`` more around it
    (Real-ESRGAN: the pad cropped off; SD x4: the overlap blended)."""

    size: int
    margin: int


#: Real-ESRGAN: 512-pixel tiles (a 2048-pixel x4 result per tile: about 2 GB of float16
#: activations), 32 pixels of context each side (Real-ESRGAN's default is 10; 32 makes seams
#: rarer for 27% more work per tile).
REALESRGAN_TILES = Tiles(size=512, margin=32)
#: SD x4: 128-pixel tiles (the 512-pixel crops the model was trained to produce), 32 of overlap.
SD_X4_TILES = Tiles(size=128, margin=32)
#: Tiny mode's tiles, so that a 64-pixel picture still runs in several tiles.
TINY_TILES = {"realesrgan": Tiles(size=32, margin=8), "sd-x4": Tiles(size=32, margin=8)}
REALESRGAN_TILE, REALESRGAN_PAD = REALESRGAN_TILES.size, REALESRGAN_TILES.margin
SD_X4_TILE, SD_X4_OVERLAP = SD_X4_TILES.size, SD_X4_TILES.margin

#: Defaults of the SD x4 tunables: ``StableDiffusionUpscalePipeline.__call__``'s own.
SD_X4_STEPS, SD_X4_GUIDANCE, SD_X4_NOISE_LEVEL = 75, 9.0, 20
#: The upscaler's ``max_noise_level`` (its pipeline config): NoiseLevel's top.
MAX_NOISE_LEVEL = 350

# ------------------------------------------------------------------------------ Real-ESRGAN


@dataclass(frozen=True)
class RRDBShape:
    """The numbers of an RRDBNet: its scale, features, growth channels and RRDB blocks."""

    scale: int
    width: int = 64
    growth: int = 32
    blocks: int = 23

    @property
    def in_channels(self) -> int:
        """What ``conv_first`` reads: RGB, pixel-unshuffled by 2 for the x2 model."""
        return 3 * (4 // self.scale) ** 2


class _DenseBlock(nn.Module):
    """A residual dense block: five 3x3 convolutions, each reading all before it."""

    def __init__(self, width: int, growth: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, growth, 3, 1, 1)
        self.conv2 = nn.Conv2d(width + growth, growth, 3, 1, 1)
        self.conv3 = nn.Conv2d(width + 2 * growth, growth, 3, 1, 1)
        self.conv4 = nn.Conv2d(width + 3 * growth, growth, 3, 1, 1)
        self.conv5 = nn.Conv2d(width + 4 * growth, width, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(F.leaky_relu(conv(torch.cat(features, 1)), 0.2))
        out: torch.Tensor = x + 0.2 * self.conv5(torch.cat(features, 1))
        return out


class _RRDB(nn.Module):
    """Residual in residual: three dense blocks, their result scaled by 0.2 onto the input."""

    def __init__(self, width: int, growth: int) -> None:
        super().__init__()
        self.rdb1 = _DenseBlock(width, growth)
        self.rdb2 = _DenseBlock(width, growth)
        self.rdb3 = _DenseBlock(width, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))
        return out


class RRDBNet(nn.Module):
    """ESRGAN's generator with Real-ESRGAN's parameter names; takes and gives RGB in 0..1."""

    def __init__(self, shape: RRDBShape) -> None:
        super().__init__()
        self.shape = shape
        w = shape.width
        self.conv_first = nn.Conv2d(shape.in_channels, w, 3, 1, 1)
        self.body = nn.Sequential(*(_RRDB(w, shape.growth) for _ in range(shape.blocks)))
        self.conv_body = nn.Conv2d(w, w, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(w, w, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(w, w, 3, 1, 1)
        self.conv_hr = nn.Conv2d(w, w, 3, 1, 1)
        self.conv_last = nn.Conv2d(w, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shape.scale == 2:
            x = F.pixel_unshuffle(x, 2)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        out: torch.Tensor = self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
        return out


def context(shape: RRDBShape) -> int:
    """The input pixels each side that an output pixel of ``shape``'s network depends on.

    ``conv_first``, 15 convolutions per RRDB block and ``conv_body`` at the features'
    resolution, then four at 2x and 4x of it (less than two feature pixels together); the x2
    model's features are at half the picture's resolution, each over a 2x2 block of pixels.
    """
    features = 1 + 15 * shape.blocks + 1 + 2
    return features if shape.scale == 4 else 2 * features + 1


def realesrgan_file(scale: int, tiny: bool = False) -> str:
    """The weights file of the Scale ``scale`` model (tiny ones are safetensors)."""
    return f"RealESRGAN_x{scale}plus" + (".safetensors" if tiny else ".pth")


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler's many errors: not a weights-only torch file
        raise InferenceError(
            f"{path.name} is not a PyTorch weights file torch.load(weights_only=True) reads: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    if isinstance(data, dict):
        for key in ("params_ema", "params"):  # Real-ESRGAN's EMA weights, else the plain ones
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InferenceError(f"{path.name} holds no state_dict of tensors (nor a params_ema one)")
    return data


def rrdb_shape(name: str, state: dict[str, torch.Tensor]) -> RRDBShape:
    """The architecture of a Real-ESRGAN state_dict, read from its tensors' shapes.

    Raises:
        InferenceError: not an RRDBNet of Real-ESRGAN's layout, or neither x4 nor x2.
    """
    first, growth = state.get("conv_first.weight"), state.get("body.0.rdb1.conv1.weight")
    if first is None or growth is None or first.dim() != 4:
        keys = ", ".join(sorted(state)[:3]) or "none"
        raise InferenceError(
            f"{name} is not a Real-ESRGAN RRDBNet: it has no conv_first.weight and "
            f"body.0.rdb1.conv1.weight (its first keys: {keys})"
        )
    scales = {3: 4, 12: 2}
    if first.shape[1] not in scales:
        raise InferenceError(
            f"{name}: conv_first reads {first.shape[1]} channels; Real-ESRGAN's x4 models read "
            "3 (RGB) and its x2 models 12 (RGB pixel-unshuffled by 2)"
        )
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.", k))}
    return RRDBShape(
        scale=scales[first.shape[1]],
        width=first.shape[0],
        growth=growth.shape[0],
        blocks=max(blocks) + 1,
    )


def load_rrdbnet(path: Path) -> RRDBNet:
    """An :class:`RRDBNet` with the weights at ``path`` (``.pth``: Real-ESRGAN's release files,
    read with ``weights_only=True``; ``.safetensors``: the same keys), in eval mode on the CPU.

    Raises:
        InferenceError: the file is not one, naming the first missing, extra or misshapen key.
    """
    state = _read_state(path)
    net = RRDBNet(rrdb_shape(path.name, state))
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or extra or wrong:
        what = (
            f"no {missing[0]}" if missing
            else f"an unknown key {extra[0]}" if extra
            else f"{wrong[0]} of shape {tuple(state[wrong[0]].shape)}, expected "
            f"{tuple(expected[wrong[0]].shape)}"
        )  # fmt: skip
        raise InferenceError(f"{path.name} is not a Real-ESRGAN RRDBNet of {net.shape}: {what}")
    net.load_state_dict(state)
    return net.eval()


def _spans(length: int, tiles: Tiles) -> Iterator[tuple[int, int]]:
    """Real-ESRGAN's tile grid along one side: (start, end) every ``tiles.size`` pixels."""
    for start in range(0, length, tiles.size):
        yield start, min(start + tiles.size, length)


@torch.inference_mode()
def run_rrdbnet(
    net: RRDBNet, picture: torch.Tensor, tiles: Tiles | None, progress: Callable[[int, int], None]
) -> torch.Tensor:
    """``picture`` (1x3xHxW, 0..1) upscaled by ``net``, in ``tiles`` (None: whole).

    The x2 model needs even sides: the picture is padded by reflection to them first and the
    result cropped, as Real-ESRGAN does.
    """
    scale = net.shape.scale
    _, _, height, width = picture.shape
    if scale == 2 and (height % 2 or width % 2):
        mode = "reflect" if min(height, width) > 1 else "replicate"
        picture = F.pad(picture, (0, width % 2, 0, height % 2), mode=mode)
    if tiles is None:
        whole: torch.Tensor = net(picture)
        return whole[:, :, : height * scale, : width * scale]
    _, _, h, w = picture.shape
    even = Tiles(tiles.size + tiles.size % 2, tiles.margin + tiles.margin % 2)
    out = picture.new_zeros((1, 3, h * scale, w * scale))
    grid = [(y, x) for y in _spans(h, even) for x in _spans(w, even)]
    for done, ((y0, y1), (x0, x1)) in enumerate(grid, 1):
        py0, py1 = max(y0 - even.margin, 0), min(y1 + even.margin, h)
        px0, px1 = max(x0 - even.margin, 0), min(x1 + even.margin, w)
        result = net(picture[:, :, py0:py1, px0:px1])
        top, left = (y0 - py0) * scale, (x0 - px0) * scale
        out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = result[
            :, :, top : top + (y1 - y0) * scale, left : left + (x1 - x0) * scale
        ]
        progress(done, len(grid))
    return out[:, :, : height * scale, : width * scale]


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB picture as a 1x3xHxW float32 tensor in 0..1."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()


def to_image(result: torch.Tensor) -> Image.Image:
    """A 1x3xHxW tensor in 0..1 as an RGB picture (clamped, rounded)."""
    pixels = (result[0].float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy(), "RGB")


def realesrgan_weights(scale: int) -> Path:
    """The weights file of the Scale ``scale`` Real-ESRGAN model, real or tiny.

    Raises:
        InferenceError: the real file is not in ``$MODEL_DIR/realesrgan/``.
    """
    if job.weights_mode() is job.WeightsMode.TINY:
        from lilypad.ml import tiny

        folder = tiny.ensure(REALESRGAN.tiny, Path(env("LILYPAD_TINY_WEIGHTS_DIR")))
        return folder / realesrgan_file(scale, tiny=True)
    path = Path(env("MODEL_DIR", "/models")) / REALESRGAN.folder / realesrgan_file(scale)
    if not path.is_file():
        raise InferenceError(
            f"{path.name} not found in MODEL_DIR/{REALESRGAN.folder}",
            hint="run the module's image, which bakes it in (module/upscale/Dockerfile), set "
            "MODEL_DIR to a folder holding it, or run with --weights tiny",
        )
    return path


def realesrgan(image: Image.Image, scale: int, tiles: Tiles) -> Image.Image:
    path = realesrgan_weights(scale)
    log(f"loading Real-ESRGAN {path.stem}")
    device = determinism.device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    net = predictor.load_once(
        ("realesrgan", str(path), str(dtype), str(device)),
        lambda: load_rrdbnet(path).to(device=device, dtype=dtype),
    )
    result = run_rrdbnet(net, to_tensor(image).to(device, dtype), tiles, _tile_progress)
    return to_image(result)


# ------------------------------------------------------------------------------- SD x4


@dataclass(frozen=True)
class SDX4Settings:
    """The SD x4 upscaler's tunables."""

    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    noise_level: int
    seed: int


def sd_x4_settings() -> SDX4Settings:
    return SDX4Settings(
        prompt=env("PROMPT", ""),
        negative_prompt=env("NEGATIVE_PROMPT", ""),
        steps=env_int("STEPS", SD_X4_STEPS, 1, 200),
        guidance_scale=env_float("GUIDANCE_SCALE", SD_X4_GUIDANCE, 0, 20),
        noise_level=env_int("NOISE_LEVEL", SD_X4_NOISE_LEVEL, 0, MAX_NOISE_LEVEL),
        seed=env_int("SEED", 0, 0),
    )


def overlapping_spans(length: int, tiles: Tiles) -> list[tuple[int, int]]:
    """Tiles of ``tiles.size`` along a side of ``length`` (a multiple of 8), neighbours
    overlapping by at least ``tiles.margin``; the last ends at the side. One if it fits."""
    if length <= tiles.size:
        return [(0, length)]
    stride = tiles.size - tiles.margin
    count = math.ceil((length - tiles.size) / stride) + 1
    starts = [min(i * stride, length - tiles.size) for i in range(count)]
    return [(s, s + tiles.size) for s in starts]


def feather(length: int, band: int, start: bool, end: bool) -> np.ndarray:
    """A tile's blend weight along one side: rising linearly over ``band`` pixels from an edge
    that has a neighbour (``start``/``end``), 1 elsewhere; never 0."""
    weights = np.ones(length, dtype=np.float32)
    ramp = ((np.arange(min(band, length)) + 0.5) / band).astype(np.float32) if band else None
    if ramp is not None and start:
        weights[: len(ramp)] = np.minimum(weights[: len(ramp)], ramp)
    if ramp is not None and end:
        weights[length - len(ramp) :] = np.minimum(weights[length - len(ramp) :], ramp[::-1])
    return weights


def load_sd_x4(path: Path) -> Any:
    """``StableDiffusionUpscalePipeline`` from ``path`` on the job's device (float16 on a GPU),
    its VAE in float32 as :func:`lilypad.ml.sdxl.load` keeps it; no safety checker."""
    from diffusers import StableDiffusionUpscalePipeline

    from lilypad.ml import sd, sdxl

    key = ("pipeline", "StableDiffusionUpscalePipeline", str(path), str(sdxl.dtype()),
           str(determinism.device()))  # fmt: skip
    return predictor.load_once(key, lambda: sd.without(
        StableDiffusionUpscalePipeline, path, safety_checker=None, feature_extractor=None,
        watermarker=None,
    ))  # fmt: skip


@torch.inference_mode()
def _sd_x4_tile(
    pipe: Any, s: SDX4Settings, embeds: torch.Tensor, low: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """One tile: ``low`` (1x3xhxw in -1..1, already noised) and its latent ``noise`` to a
    1x3x4hx4w float32 result in 0..1 (``StableDiffusionUpscalePipeline.__call__``'s loop)."""
    scheduler, unet = pipe.scheduler, pipe.unet
    guided = s.guidance_scale > 1
    scheduler.set_timesteps(s.steps, device=low.device)
    latents = noise * scheduler.init_noise_sigma
    image = torch.cat([low] * (2 if guided else 1))
    level = torch.full((image.shape[0],), s.noise_level, dtype=torch.long, device=low.device)
    for t in scheduler.timesteps:
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = torch.cat([scheduler.scale_model_input(model_input, t), image], dim=1)
        predicted = unet(
            model_input, t, encoder_hidden_states=embeds, class_labels=level, return_dict=False
        )[0]
        if guided:
            uncond, text = predicted.chunk(2)
            predicted = uncond + s.guidance_scale * (text - uncond)
        latents = scheduler.step(predicted, t, latents, eta=0.0, return_dict=False)[0]
    vae = pipe.vae
    decoded = vae.decode(latents.float() / vae.config.scaling_factor, return_dict=False)[0]
    result: torch.Tensor = (decoded / 2 + 0.5).clamp(0, 1)
    return result


def run_sd_x4(
    pipe: Any, image: Image.Image, s: SDX4Settings, tiles: Tiles,
    progress: Callable[[int, int], None],
) -> Image.Image:  # fmt: skip
    """``image`` upscaled x4 by the SD x4 upscaler in overlapping, blended tiles."""
    device, dtype = pipe.unet.device, pipe.unet.dtype
    width, height = image.size
    pad_w, pad_h = -width % edit.MULTIPLE, -height % edit.MULTIPLE
    pixels = np.pad(np.asarray(image.convert("RGB")), ((0, pad_h), (0, pad_w), (0, 0)), "edge")
    low = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    h, w = low.shape[2:]
    generator = determinism.generator(s.seed)
    # NOTE: in the pipeline's order: the picture's noise, then the latents'.
    picture_noise = torch.randn(low.shape, generator=generator)
    latent_noise = torch.randn((1, pipe.vae.config.latent_channels, h, w), generator=generator)
    level = torch.tensor([s.noise_level], dtype=torch.long)
    low = pipe.low_res_scheduler.add_noise(low, picture_noise, level)
    guided = s.guidance_scale > 1
    with torch.inference_mode():
        positive, negative = pipe.encode_prompt(
            s.prompt, device, 1, guided, s.negative_prompt or None
        )
    embeds = torch.cat([negative, positive]) if guided else positive
    out = np.zeros((4 * h, 4 * w, 3), dtype=np.float32)
    total = np.zeros((4 * h, 4 * w, 1), dtype=np.float32)
    grid = [(y, x) for y in overlapping_spans(h, tiles) for x in overlapping_spans(w, tiles)]
    for done, ((y0, y1), (x0, x1)) in enumerate(grid, 1):
        part = (slice(None), slice(None), slice(y0, y1), slice(x0, x1))
        result = _sd_x4_tile(
            pipe, s, embeds, low[part].to(device, dtype), latent_noise[part].to(device, dtype)
        )
        tile = result[0].permute(1, 2, 0).cpu().numpy()
        band = 4 * tiles.margin
        weight = np.outer(
            feather(4 * (y1 - y0), band, y0 > 0, y1 < h),
            feather(4 * (x1 - x0), band, x0 > 0, x1 < w),
        )[..., None]
        out[4 * y0 : 4 * y1, 4 * x0 : 4 * x1] += tile * weight
        total[4 * y0 : 4 * y1, 4 * x0 : 4 * x1] += weight
        progress(done, len(grid))
    blended = np.rint(out / total * 255).clip(0, 255).astype(np.uint8)
    return Image.fromarray(blended[: 4 * height, : 4 * width], "RGB")


def sd_x4(image: Image.Image, scale: int, tiles: Tiles, s: SDX4Settings) -> Image.Image:
    job.quiet_libraries()
    path = job.weights_path(SD_X4_UPSCALER)
    log(f"loading {SD_X4_UPSCALER.hub_id}")
    pipe = load_sd_x4(path)
    log(
        f"seed {s.seed}, {s.steps} steps, guidance {s.guidance_scale:g}, "
        f"noise level {s.noise_level}"
    )
    result = run_sd_x4(pipe, image, s, tiles, _tile_progress)
    if scale == 2:
        log("the SD x4 upscaler enlarges by 4: its result is resized by half (Lanczos)")
        result = result.resize((2 * image.width, 2 * image.height), Image.Resampling.LANCZOS)
    return result


# ------------------------------------------------------------------------------- the job


def check_size(size: tuple[int, int], scale: int) -> None:
    """Refuse a picture whose result would be over :data:`MAX_SIDE` a side.

    Raises:
        InvalidTunable: (exit code 2) naming the picture's size and the largest allowed.
    """
    width, height = size
    if max(width, height) * scale <= MAX_SIDE:
        return
    allowed = [f for f in SCALES if max(width, height) * f <= MAX_SIDE]
    raise InvalidTunable(
        f"IMAGE is {width}x{height}: at SCALE={scale} the result would be "
        f"{width * scale}x{height * scale}, over {MAX_SIDE} a side; allowed: a picture at most "
        f"{MAX_SIDE // scale} a side at SCALE={scale}"
        + (f", or SCALE={allowed[-1]}" if allowed else "")
    )


def _tile_progress(done: int, total: int) -> None:
    log(f"tile {done}/{total}")


def _tiny(image: Image.Image, model: str, s: SDX4Settings) -> tuple[Image.Image, SDX4Settings]:
    """Tiny mode's picture (at most 64 a side) and steps (at most 4), logged."""
    side = min(TINY_LIMITS.width, TINY_LIMITS.height)
    small = image
    if max(image.size) > side:
        factor = side / max(image.size)
        small = image.resize(
            (max(1, round(image.width * factor)), max(1, round(image.height * factor))),
            Image.Resampling.LANCZOS,
        )
    steps = min(s.steps, TINY_LIMITS.max_steps)
    tiles = TINY_TILES[model]
    what = "Real-ESRGAN RRDBNets" if model == "realesrgan" else "SD x4 upscaler parts"
    log(
        f"tiny weights: random {what} of the same architecture; the picture worked at "
        f"{small.width}x{small.height}"
        + (f" instead of {image.width}x{image.height}" if small is not image else "")
        + f" (at most {side} a side), in tiles of {tiles.size} (margin {tiles.margin})"
        + (f", {steps} steps instead of {s.steps}" if model == "sd-x4" else "")
    )
    return small, SDX4Settings(**{**s.__dict__, "steps": steps})


def main() -> list[str]:
    """The entrypoint's job: ``$IMAGE`` upscaled into ``image-0.png``."""
    determinism.configure()
    image = edit.read_image("IMAGE")
    scale = env_int("SCALE", 4, 2, 4)
    if scale not in SCALES:
        raise InferenceError(f"SCALE={scale} is not allowed; allowed: 2, 4")
    model = env_choice("MODEL", "realesrgan", MODELS)
    check_size(image.size, scale)
    s = sd_x4_settings()
    tiles = REALESRGAN_TILES if model == "realesrgan" else SD_X4_TILES
    if job.weights_mode() is job.WeightsMode.TINY:
        image, s = _tiny(image, model, s)
        tiles = TINY_TILES[model]
    width, height = image.size
    log(f"{model} x{scale}: {width}x{height} to {scale * width}x{scale * height}")
    if model == "realesrgan":
        result = realesrgan(image, scale, tiles)
    else:
        result = sd_x4(image, scale, tiles, s)
    return edit.write_outputs(result)
