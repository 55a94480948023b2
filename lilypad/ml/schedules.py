"""Sigma schedules, by the names ComfyUI gives them.

A schedule turns a step count into a descending list of noise levels ``sigmas`` (``steps + 1`` of
them, the last one 0) over the noise levels a model was trained on (:class:`ModelSampling`):

- ``normal``: evenly spaced model timesteps from the largest to the smallest noise level.
- ``sgm_uniform``: the same with ``steps + 1`` points of which the last is dropped (SGM's spacing).
- ``karras``: Karras et al. 2022 (EDM), eq. 5, with rho = 7 between the model's extreme sigmas.
- ``exponential``: evenly spaced in log sigma.
- ``simple``: every ``len(table) / steps``-th entry of the model's sigma table, from the top.
- ``ddim_uniform``: DDIM's uniform timestep stride over the model's sigma table.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch

from lilypad.errors import InferenceError

#: Karras et al. 2022 found rho = 7 best for their image models; ComfyUI uses the same.
KARRAS_RHO = 7.0


@dataclass(frozen=True)
class ModelSampling:
    """The noise levels a model was trained on and its timestep <-> sigma mapping.

    Attributes:
        sigmas: The model's sigma table, ascending (float64).
        continuous: False for a discrete DDPM model (timestep = fractional index into the table),
            True for an EDM model whose timestep is ``0.25 * log(sigma)`` (Stable Video Diffusion).
    """

    sigmas: torch.Tensor
    continuous: bool = False

    @classmethod
    def discrete(cls, alphas_cumprod: torch.Tensor) -> ModelSampling:
        """A DDPM model from its cumulative alphas (diffusers' ``scheduler.alphas_cumprod``)."""
        acp = alphas_cumprod.to(torch.float64)
        return cls(((1 - acp) / acp).sqrt())

    @classmethod
    def edm(cls, sigma_min: float, sigma_max: float, table_size: int = 1000) -> ModelSampling:
        """A continuous EDM model between ``sigma_min`` and ``sigma_max`` (log-spaced table)."""
        table = torch.linspace(math.log(sigma_min), math.log(sigma_max), table_size)
        return cls(table.to(torch.float64).exp(), continuous=True)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The timestep the UNet is conditioned on for noise level ``sigma``."""
        if self.continuous:
            return 0.25 * sigma.to(torch.float64).log()
        # Linear interpolation in log sigma between the two neighbouring table entries (on the
        # CPU, where the table lives; sigma may be on the GPU).
        log_sigmas = self.sigmas.log()
        log_sigma = sigma.detach().to("cpu", torch.float64).log().reshape(-1)
        dists = log_sigma[None, :] - log_sigmas[:, None]
        low = dists.ge(0).cumsum(0).argmax(0).clamp(max=len(log_sigmas) - 2)
        high = low + 1
        w = ((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high])).clamp(0, 1)
        return ((1 - w) * low + w * high).reshape(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """The noise level of a (possibly fractional) timestep; inverse of :meth:`timestep`."""
        t = timestep.detach().to("cpu", torch.float64)
        if self.continuous:
            return (t / 0.25).exp()
        t = t.clamp(0, len(self.sigmas) - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t - low
        log_sigmas = self.sigmas.log()
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas.to(torch.float64), sigmas.new_zeros(1, dtype=torch.float64)])


def normal(model: ModelSampling, steps: int) -> torch.Tensor:
    start, end = (
        model.timestep(torch.tensor(model.sigma_max)),
        model.timestep(torch.tensor(model.sigma_min)),
    )
    return _append_zero(
        model.sigma(torch.linspace(float(start), float(end), steps, dtype=torch.float64))
    )


def sgm_uniform(model: ModelSampling, steps: int) -> torch.Tensor:
    start, end = (
        model.timestep(torch.tensor(model.sigma_max)),
        model.timestep(torch.tensor(model.sigma_min)),
    )
    ts = torch.linspace(float(start), float(end), steps + 1, dtype=torch.float64)[:-1]
    return _append_zero(model.sigma(ts))


def karras(model: ModelSampling, steps: int) -> torch.Tensor:
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    min_inv_rho = model.sigma_min ** (1 / KARRAS_RHO)
    max_inv_rho = model.sigma_max ** (1 / KARRAS_RHO)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** KARRAS_RHO)


def exponential(model: ModelSampling, steps: int) -> torch.Tensor:
    log_sigmas = torch.linspace(
        math.log(model.sigma_max), math.log(model.sigma_min), steps, dtype=torch.float64
    )
    return _append_zero(log_sigmas.exp())


def simple(model: ModelSampling, steps: int) -> torch.Tensor:
    stride = len(model.sigmas) / steps
    picked = [model.sigmas[-(1 + int(i * stride))] for i in range(steps)]
    return _append_zero(torch.stack(picked))


def ddim_uniform(model: ModelSampling, steps: int) -> torch.Tensor:
    stride = max(len(model.sigmas) // steps, 1)
    picked = [model.sigmas[i] for i in range(1, len(model.sigmas), stride)]
    return _append_zero(torch.stack(picked[::-1]))


Schedule = Callable[[ModelSampling, int], torch.Tensor]

SCHEDULES: dict[str, Schedule] = {
    "normal": normal,
    "karras": karras,
    "exponential": exponential,
    "sgm_uniform": sgm_uniform,
    "simple": simple,
    "ddim_uniform": ddim_uniform,
}


def get_sigmas(name: str, model: ModelSampling, steps: int) -> torch.Tensor:
    """The ``steps + 1`` sigmas of schedule ``name`` (float64, descending, ending with 0).

    Raises:
        InferenceError: for an unknown schedule name, suggesting the close match.
    """
    schedule = by_name(SCHEDULES, name, "scheduler")
    if steps < 1:
        raise InferenceError(f"steps must be at least 1, got {steps}")
    return schedule(model, steps)


_T = TypeVar("_T")


def by_name(table: Mapping[str, _T], name: str, what: str) -> _T:
    """``table[name]``: a schedule, sampler or sampler reference by the name a job gives.

    Raises:
        InferenceError: ``unknown <what> <name>``, suggesting the close match and listing all.
    """
    try:
        return table[name]
    except KeyError:
        close = difflib.get_close_matches(name, table, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InferenceError(
            f"unknown {what} {name!r}; {hint}allowed: {', '.join(table)}"
        ) from None
