"""ControlNet: text to image whose composition follows a control map (the sd15-controlnet and
sdxl-controlnet modules' jobs; :func:`main` is what their entrypoints run).

What a job does, in order:

1. Reads its tunables: the base model's text and sampling ones (as sd15 and sdxl have them),
   ``Control`` (the control type), ``ControlScale``, ``ControlStart``/``ControlEnd`` and
   ``Preprocess``. A ``ControlStart`` above ``ControlEnd`` is refused
   (:class:`~lilypad.errors.InvalidTunable`, exit 2).
2. Reads ``Image`` and works at its size fitted into the base model's bounds
   (:func:`lilypad.ml.edit.fit`: SD 1.5 256..1024, SDXL 512..2048 a side, multiples of 8); in
   tiny mode at most 64 a side and 4 steps.
3. Makes the control map: with ``Preprocess`` (the default) the preprocessor of ``Control``
   (:func:`lilypad.ml.annotators.control_map`) run on the picture at that size; without, the
   picture itself is the map. It is written as ``control-<control>.png``.
4. Samples as the base module does (:mod:`lilypad.ml.sd`, :mod:`lilypad.ml.sdxl`), its UNet
   wrapped in :class:`ControlledUNet`, which adds the ControlNet's residuals, and writes
   ``image-<n>.png``.

The ControlNet is fed as diffusers' ``StableDiffusionControlNetPipeline`` and
``StableDiffusionXLControlNetPipeline`` feed it (guess mode off): the map as RGB in 0..1 at the
job's size (their ``control_image_processor``), one per image, doubled for classifier-free
guidance; the same noisy latents, timestep, text (and for SDXL, added) conditioning as the UNet;
its down-block and mid-block residuals times ``ControlScale`` added to the UNet's.

``ControlStart``/``ControlEnd`` are diffusers' ``control_guidance_start``/``_end``: of ``N``
steps, step ``i`` (from 0) is controlled unless ``i / N < start`` or ``(i + 1) / N > end``.
A sampler that evaluates the model more than once per step (heun, dpm_2, the DPM-Solver++
single-step ones) or at noise levels of its own (dpm_fast, dpm_adaptive) has each evaluation
controlled by the noise level it is made at: an evaluation at ``sigma`` belongs to the step
``i`` with ``sigmas[i] >= sigma > sigmas[i + 1]``, so a midpoint belongs to its step and
Heun's correction, made at ``sigmas[i + 1]``, to the step that starts there. Outside the window
(and at ``ControlScale`` 0) the ControlNet is not run at all: the UNet runs as the base
model's, which diffusers' zero residuals equal exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lilypad.errors import InvalidTunable
from lilypad.ml import determinism, edit, job
from lilypad.ml.annotators import Control
from lilypad.ml.edit import Bounds
from lilypad.ml.job import env, env_choice, env_float, env_int, log
from lilypad.ml.settings import ImageSettings

DEFAULT_PROMPT = "question mark floating in space"
#: ``ControlScale``'s default and range (diffusers' ``controlnet_conditioning_scale``).
SCALE, SCALE_MAX = 1.0, 2.0


@dataclass(frozen=True)
class Base:
    """The base model a ControlNet module controls, and its module's tunables' defaults.

    Attributes:
        title: Its name in the job log.
        model: Its weights.
        sdxl: Whether it is SDXL (else SD 1.5).
        controls: Its ControlNets by control type: the ``Control`` choices.
        bounds: The sides a control image is worked at.
        steps: ``Steps``' default.
        guidance: ``GuidanceScale``'s default.
    """

    title: str
    model: job.Model
    sdxl: bool
    controls: Mapping[str, job.Model]
    bounds: Bounds
    steps: int
    guidance: float


#: SD 1.x below 256 pixels draws little, above 1024 it repeats itself (the sd15 module's range).
SD15_BOUNDS = Bounds(max_side=1024, min_side=256)
SD15 = Base("SD 1.5", job.SD_15, False, job.SD15_CONTROLNETS, SD15_BOUNDS, 25, 7.0)
SDXL = Base(
    "SDXL 1.0 base", job.SDXL_BASE_10, True, job.SDXL_CONTROLNETS, edit.SDXL_BOUNDS, 30, 7.0
)
#: Each module by name, as module/<name>/ holds it.
MODULES = {"sd15-controlnet": SD15, "sdxl-controlnet": SDXL}


@dataclass(frozen=True)
class ControlSettings:
    """What a job asks of the ControlNet."""

    control: Control
    scale: float = SCALE
    start: float = 0.0
    end: float = 1.0
    preprocess: bool = True


def control_settings(base: Base) -> ControlSettings:
    """The job's ControlNet tunables from its environment.

    Raises:
        InvalidTunable: (exit code 2) an unknown ``Control`` for ``base``, or ``ControlStart``
            above ``ControlEnd``.
    """
    raw = env("CONTROL", Control.CANNY.value)
    if raw not in base.controls:
        raise InvalidTunable(
            f"Control={raw!r} is not a control type of {base.title}; allowed: "
            + ", ".join(base.controls)
        )
    start = env_float("CONTROL_START", 0.0, 0, 1)
    end = env_float("CONTROL_END", 1.0, 0, 1)
    if start > end:
        raise InvalidTunable(
            f"ControlStart={start:g} is after ControlEnd={end:g}: the ControlNet would act on no "
            "step; allowed: ControlStart at most ControlEnd (both 0..1, fractions of the steps)"
        )
    preprocess = env("PREPROCESS", "true")
    if preprocess not in ("true", "false"):
        raise InvalidTunable(f"Preprocess={preprocess!r} is not a boolean; use true or false")
    return ControlSettings(
        Control(raw), env_float("CONTROL_SCALE", SCALE, 0, SCALE_MAX), start, end,
        preprocess == "true",
    )  # fmt: skip


def settings(base: Base, size: tuple[int, int]) -> ImageSettings:
    """The job's text and sampling settings from its environment, at ``size``."""
    from lilypad.ml.samplers import SAMPLERS
    from lilypad.ml.schedules import SCHEDULES

    return ImageSettings(
        prompt=env("PROMPT", DEFAULT_PROMPT),
        negative_prompt=env("NEGATIVE_PROMPT", ""),
        seed=env_int("SEED", 0, 0),
        steps=env_int("STEPS", base.steps, 1, 100),
        width=size[0],
        height=size[1],
        guidance_scale=env_float("GUIDANCE_SCALE", base.guidance, 0, 20),
        sampler=env_choice("SAMPLER", "euler_ancestral", list(SAMPLERS)),
        scheduler=env_choice("SCHEDULER", "normal", list(SCHEDULES)),
        batch=env_int("BATCHING", 1, 1, 4),
    )


def controlled_steps(steps: int, start: float, end: float) -> list[bool]:
    """Per step of ``steps``, whether the ControlNet acts: diffusers' ``controlnet_keep``."""
    return [not (i / steps < start or (i + 1) / steps > end) for i in range(steps)]


# ------------------------------------------------------------------------------ the ControlNet


@dataclass
class ControlledUNet:
    """A UNet with a ControlNet beside it, called as the UNet is: the ControlNet's residuals,
    times ``scale``, are added to the UNet's down and mid blocks (while :attr:`active`).

    Attributes:
        unet: The base model's ``UNet2DConditionModel``.
        controlnet: A ``ControlNetModel`` of the same architecture.
        image: The control map, RGB in 0..1, one per row of the UNet's input batch.
        scale: ``ControlScale``.
        active: Whether the ControlNet acts on the next calls (:class:`ControlWindow` sets it).
    """

    unet: Any
    controlnet: Any
    image: torch.Tensor
    scale: float
    active: bool = True

    @property
    def config(self) -> Any:
        return self.unet.config

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = False,
        **kwargs: Any,
    ) -> Any:
        if self.active and self.scale:
            down, mid = self.controlnet(
                sample,
                timestep,
                encoder_hidden_states=encoder_hidden_states,
                controlnet_cond=self.image,
                conditioning_scale=self.scale,
                guess_mode=False,
                added_cond_kwargs=added_cond_kwargs,
                return_dict=False,
            )
            kwargs.update(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs=added_cond_kwargs,
            return_dict=return_dict,
            **kwargs,
        )


@dataclass
class ControlWindow:
    """A denoiser whose UNet is a :class:`ControlledUNet`, the ControlNet on only in the steps
    of ``sigmas`` that ``start`` and ``end`` select (module docstring).

    Attributes:
        denoiser: An :class:`~lilypad.ml.denoisers.SDDenoiser` or ``SDXLDenoiser``.
        controlled: Its UNet.
        sigmas: The schedule the sampler runs, ending with 0.
        start: ``ControlStart``.
        end: ``ControlEnd``.
    """

    denoiser: Any
    controlled: ControlledUNet
    sigmas: torch.Tensor
    start: float
    end: float
    _keep: list[bool] = field(init=False)

    def __post_init__(self) -> None:
        self.sigmas = self.sigmas.to(torch.float64)
        self._keep = controlled_steps(len(self.sigmas) - 1, self.start, self.end)

    @property
    def sampling(self) -> Any:
        return self.denoiser.sampling

    def step_of(self, sigma: torch.Tensor) -> int:
        """The step an evaluation at ``sigma`` belongs to (module docstring)."""
        # NOTE: the sampler's sigmas are these in float32; the tolerance absorbs that rounding
        level = float(sigma) * (1 - 1e-6)
        reached = int((self.sigmas[:-1] >= level).sum())
        return min(max(reached - 1, 0), len(self._keep) - 1)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.controlled.active = self._keep[self.step_of(sigma)]
        result: torch.Tensor = self.denoiser(x, sigma)
        return result


def conditioning(pipe: Any, control_map: Image.Image, s: ImageSettings) -> torch.Tensor:
    """The control map as the ControlNet pipelines prepare it (``prepare_image``, guess mode
    off): RGB in 0..1 at the job's size, one per image, doubled under classifier-free
    guidance; in the UNet's dtype on the job's device."""
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(
        vae_scale_factor=pipe.vae_scale_factor, do_convert_rgb=True, do_normalize=False
    )
    image: torch.Tensor = processor.preprocess(control_map, height=s.height, width=s.width)
    image = image.repeat_interleave(s.batch, dim=0)
    if s.guidance_scale > 1:  # as diffusers: guidance at or below 1 is one unguided pass
        image = torch.cat([image, image])
    return image.to(device=determinism.device(), dtype=pipe.unet.dtype)


def load_controlnet(path: Path) -> Any:
    """A ``ControlNetModel`` from its folder, on the job's device in the UNet's dtype; a warm
    worker loads it once (:func:`lilypad.ml.predictor.load_once`)."""
    from lilypad.ml import predictor, sdxl

    key = ("controlnet", str(path), str(sdxl.dtype()), str(determinism.device()))
    return predictor.load_once(key, lambda: _load_controlnet(path))


def _load_controlnet(path: Path) -> Any:
    from diffusers import ControlNetModel

    from lilypad.ml import sdxl

    fp16 = (path / "diffusion_pytorch_model.fp16.safetensors").is_file()
    net = ControlNetModel.from_pretrained(
        path,
        dtype=sdxl.dtype(),
        variant="fp16" if fp16 else None,
        use_safetensors=True,
        local_files_only=True,
    )
    return net.to(determinism.device()).eval()


def controlled(
    denoiser: Any, controlnet: Any, image: torch.Tensor, c: ControlSettings, sigmas: torch.Tensor
) -> ControlWindow:
    """``denoiser`` with ``controlnet`` beside its UNet, over the schedule ``sigmas``."""
    unet = ControlledUNet(denoiser.unet, controlnet, image, c.scale)
    return ControlWindow(replace(denoiser, unet=unet), unet, sigmas, c.start, c.end)


def sd15_latents(
    pipe: Any,
    controlnet: Any,
    control_map: Image.Image,
    s: ImageSettings,
    c: ControlSettings,
    progress: Any = None,
) -> torch.Tensor:
    """SD 1.5 text to image under the ControlNet, as the sd15 module samples (its latents)."""
    from lilypad.ml import sd, sdxl
    from lilypad.ml.denoisers import Prediction
    from lilypad.ml.samplers import sample

    with torch.inference_mode():
        base = sd.sd_denoiser(pipe, s, Prediction.EPSILON)
        sigmas = sd.schedule(pipe, s, base.sampling)
        denoiser = controlled(base, controlnet, conditioning(pipe, control_map, s), c, sigmas)
        generator = determinism.generator(s.seed)
        shape = (s.batch, pipe.unet.config.in_channels, s.height // 8, s.width // 8)
        latents = sdxl.initial_noise(shape, sigmas[0], generator, torch.float32)
        return sample(
            s.sampler, denoiser, latents, sigmas,
            generator=generator, seed=s.seed, progress=progress,
        )  # fmt: skip


def sdxl_latents(
    pipe: Any,
    controlnet: Any,
    control_map: Image.Image,
    s: ImageSettings,
    c: ControlSettings,
    progress: Any = None,
) -> torch.Tensor:
    """SDXL text to image under the ControlNet, as the sdxl module samples without a refiner
    (its latents); prompts read with weights and blends (:mod:`lilypad.ml.prompts`)."""
    from lilypad.ml import sdxl
    from lilypad.ml.samplers import get_reference, sample

    with torch.inference_mode():
        base = sdxl._base_denoiser(pipe, s, weighted=True)
        reference = get_reference(s.sampler_reference)
        sigmas = reference.sigmas(s.scheduler, s.sampler, base.sampling, s.steps)
        denoiser = controlled(base, controlnet, conditioning(pipe, control_map, s), c, sigmas)
        generator = determinism.generator(s.seed)
        shape = (s.batch, pipe.unet.config.in_channels, s.height // 8, s.width // 8)
        scale = reference.noise_scale(sigmas[0], base.sampling)
        latents = sdxl.scaled_noise(shape, scale, generator, torch.float32)
        return sample(
            s.sampler, denoiser, latents, sigmas,
            generator=generator, seed=s.seed, progress=progress, reference=reference.name,
        )  # fmt: skip


# ------------------------------------------------------------------------------------- the job


def annotator_weights(control: Control) -> Path:
    """The annotators' folder for ``control``'s preprocessor: the tiny ones' or
    ``$MODEL_DIR/annotators``. A preprocessor that reads no weights (Canny, lineart, M-LSD)
    never looks in it, so its jobs need none, tiny or real."""
    from lilypad.ml import annotators

    model = annotators.MODELS[control]
    if model is not None and job.weights_mode() is job.WeightsMode.TINY:
        from lilypad.ml import tiny

        return tiny.ensure(model.tiny, Path(env("LILYPAD_TINY_WEIGHTS_DIR")))
    return Path(job.env("MODEL_DIR", "/models")) / annotators.ANNOTATORS_FOLDER


def _sized(base: Base, picture: Image.Image) -> ImageSettings:
    s = settings(base, edit.fit(*picture.size, base.bounds))
    if job.weights_mode() is job.WeightsMode.TINY:
        s = edit.tiny_steps(s, edit.fit(*picture.size, edit.TINY_BOUNDS), base.title)
    if picture.size != (s.width, s.height):
        log(f"picture {picture.size[0]}x{picture.size[1]}, worked at {s.width}x{s.height}")
    return s


def _control_map(picture: Image.Image, c: ControlSettings) -> Image.Image:
    if not c.preprocess:
        log(f"Preprocess false: the picture is the {c.control} control map")
        return picture
    from lilypad.ml import annotators

    log(f"preprocessor {c.control}")
    return annotators.control_map(c.control, picture, annotator_weights(c.control)).convert("RGB")


def _log_plan(s: ImageSettings, c: ControlSettings) -> None:
    from lilypad.ml.samplers import STEP_NOTES

    log(f"sampler {s.sampler}, schedule {s.scheduler}, {s.steps} steps, seed {s.seed}")
    if s.sampler in STEP_NOTES:
        log(STEP_NOTES[s.sampler])
    keep = controlled_steps(s.steps, c.start, c.end)
    on = [i + 1 for i, kept in enumerate(keep) if kept]
    steps = f"steps {on[0]}..{on[-1]} of {s.steps}" if on else f"none of the {s.steps} steps"
    if not c.scale:
        steps = "no step (ControlScale 0)"
    log(f"ControlNet {c.control}, scale {c.scale:g}, start {c.start:g}, end {c.end:g}: {steps}")


def main(base: Base) -> list[str]:
    """Run one job of ``base``'s ControlNet module from the environment; returns the files
    it wrote."""
    determinism.configure()
    job.quiet_libraries()
    c = control_settings(base)
    picture = edit.read_image("IMAGE")
    s = _sized(base, picture)
    size = (s.width, s.height)
    control_map = edit.resize(_control_map(edit.resize(picture, size), c), size)
    path = job.weights_path(base.model)
    controlnet_model = base.controls[c.control]
    controlnet_path = job.weights_path(controlnet_model)
    # NOTE: diffusers takes seconds to import; a job without weights fails before that.
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from lilypad.ml import media, sd, sdxl

    log(f"loading {base.model.hub_id} and {controlnet_model.hub_id}")
    if base.sdxl:
        pipe = sdxl.load(StableDiffusionXLPipeline, path)
    else:
        pipe = sd.load(StableDiffusionPipeline, path)
    controlnet = load_controlnet(controlnet_path)
    _log_plan(s, c)
    sample = sdxl_latents if base.sdxl else sd15_latents
    images = sdxl.decode(pipe, sample(pipe, controlnet, control_map, s, c, job.progress))
    out = job.outputs_dir()
    media.write_png(control_map, out / f"control-{c.control}.png")
    return [f"control-{c.control}.png", *media.write_images(images, out)]
