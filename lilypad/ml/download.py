"""Bake real weights into a module image: ``python -m lilypad.ml.download FOLDER...``.

Runs at image build time only (the one step with network access): downloads each model's
diffusers folder from the Hugging Face Hub into ``$MODEL_DIR/<folder>``, preferring the fp16
variant of each weight file where the repository has one (the GPU pipelines run in fp16). Gated
repositories (SDXL 0.9, SVD) need ``HF_TOKEN`` with their licence accepted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lilypad.errors import InferenceError
from lilypad.ml import annotators, job

MODELS = {m.folder: m for m in (job.SDXL_BASE_09, job.SDXL_BASE_10, job.SDXL_REFINER_10,
                                job.SDXL_INPAINT_10, job.SVD_10, job.SVD_11, job.SD_15, job.SD_21,
                                job.SDXL_TURBO_10, job.SD_TURBO_10, job.LCM_DREAMSHAPER_7,
                                job.SD_X4_UPSCALER,
                                *job.SD15_CONTROLNETS.values(),
                                *job.SDXL_CONTROLNETS.values(),
                                *annotators.ANNOTATOR_MODELS)}  # fmt: skip
#: A single model's weights as diffusers' ``from_pretrained`` looks for them, fp16 first.
_SINGLE_WEIGHTS = (
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.safetensors",
)
_WEIGHTS = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".onnx", ".h5")
#: Components no module loads: the modules decode latents themselves and never run the SD 1.5
#: safety checker (a CLIP image classifier as large as the text encoder), as ComfyUI does not.
_NOT_BAKED = ("safety_checker",)


def pick_files(files: list[str]) -> list[str]:
    """Configs, tokenizers and, per component, the fp16 safetensors if present, else fp32.

    Only files inside component folders (``unet/``, ``vae/``...) and ``model_index.json``: the
    single-file checkpoints at a repository's top level are a second copy of the same weights.
    Nothing of a component in :data:`_NOT_BAKED`.
    """
    files = [f for f in files if f.split("/")[0] not in _NOT_BAKED]
    chosen = [
        f for f in files if f == "model_index.json" or ("/" in f and not f.endswith(_WEIGHTS))
    ]
    components = {f.split("/")[0] for f in files if "/" in f}
    for component in sorted(components):
        weights = [f for f in files if f.startswith(component + "/") and f.endswith(".safetensors")]
        fp16 = [f for f in weights if f.endswith(".fp16.safetensors")]
        chosen += fp16 or [f for f in weights if ".fp16." not in f]
    return sorted(set(chosen))


def pick_single_model_files(hub_id: str, files: list[str]) -> list[str]:
    """A single model's (a ControlNet's) ``config.json`` and its diffusers weights, the fp16
    safetensors if present, else fp32; never the repository's other checkpoints (single-file
    copies for other tools, ``.bin`` pickles, sample images).

    Raises:
        InferenceError: the repository has no ``config.json`` or no diffusers safetensors.
    """
    weights = [name for name in _SINGLE_WEIGHTS if name in files]
    if "config.json" not in files or not weights:
        raise InferenceError(
            f"{hub_id} has no diffusers model at its top level (config.json and one of "
            f"{', '.join(_SINGLE_WEIGHTS)}); its files: {', '.join(sorted(files)[:20])}"
        )
    return ["config.json", weights[0]]


def download(folder: str, model_dir: Path) -> Path:
    from huggingface_hub import HfApi, snapshot_download

    try:
        model = MODELS[folder]
    except KeyError:
        raise InferenceError(
            f"unknown model folder {folder!r}; known: {', '.join(MODELS)}"
        ) from None
    token = os.environ.get("HF_TOKEN") or None
    files = HfApi().list_repo_files(model.hub_id, token=token)
    target = model_dir / folder
    if model in annotators.ANNOTATOR_MODELS:
        chosen = annotators.download_files(model, files)
    elif model.pipeline:
        chosen = pick_files(files)
    else:
        chosen = pick_single_model_files(model.hub_id, files)
    snapshot_download(model.hub_id, local_dir=target, allow_patterns=chosen, token=token)
    return target


def main() -> None:
    model_dir = Path(os.environ.get("MODEL_DIR", "/models"))
    for folder in sys.argv[1:]:
        print(f"{folder}: {download(folder, model_dir)}", flush=True)


if __name__ == "__main__":
    main()
