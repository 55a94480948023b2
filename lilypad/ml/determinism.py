"""Make a job's numbers depend only on its inputs: same tunables, same bytes."""

from __future__ import annotations

import gc
import os

import torch

#: cuBLAS needs a fixed workspace for deterministic GEMMs (CUDA >= 10.2).
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def configure() -> None:
    """Switch torch to deterministic kernels, disable TF32 and pin the CPU thread count.

    Call before any model is built. A kernel without a deterministic implementation then raises
    instead of silently giving different bytes from run to run.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    # NOTE: TF32 rounds float32 matmuls to 10 mantissa bits, differently per GPU generation.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    # NOTE: CPU kernels split reductions by thread; a fixed count of one keeps a CPU job's bytes
    # independent of the provider's core count (and avoids oversubscribing a busy machine).
    torch.set_num_threads(1)


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: its stream is the same on every machine.

    Noise is always drawn on the CPU and then moved to the model's device, so a GPU and a CPU
    provider start from the same latents.
    """
    return torch.Generator(device="cpu").manual_seed(seed)


def device() -> torch.device:
    """The device a job runs on: the first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def release_memory() -> None:
    """Return freed GPU memory to the driver (between two models of one job)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
