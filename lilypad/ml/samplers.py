"""The k-diffusion samplers, by the names ComfyUI gives them.

A sampler integrates the probability-flow ODE (or the reverse SDE) of a diffusion model in the
variance-exploding form ``x = x0 + sigma * noise``. It only needs a denoiser
``D(x, sigma) -> x0_hat`` (:mod:`lilypad.ml.denoisers`), the descending ``sigmas`` of a schedule
(:mod:`lilypad.ml.schedules`) and a source of noise. Each is a short implementation of its
published algorithm:

- ``euler``, ``heun``, ``dpm_2`` (+ ``_ancestral``): Karras et al. 2022, algorithms 1 and 2, and
  k-diffusion's DPM-2 (midpoint in log sigma), with ancestral steps of eta = 1.
- ``heunpp2``: ComfyUI's Heun++ (a three-point weighted slope; falls back to Heun, then Euler, at
  the end of the schedule).
- ``lms``: linear multistep of order 4 over sigma, with exact Lagrange-basis integrals.
- ``dpm_fast``, ``dpm_adaptive``: DPM-Solver (Lu et al. 2022), orders 1-3 in the fast schedule and
  the adaptive order-2/3 embedded pair with k-diffusion's PID step-size controller.
- ``dpmpp_2s_ancestral``, ``dpmpp_sde``, ``dpmpp_2m``, ``dpmpp_2m_sde``, ``dpmpp_3m_sde``:
  DPM-Solver++ (Lu et al. 2022b) single- and multistep, deterministic and SDE variants.
- ``ddpm``: the DDPM ancestral posterior step (Ho et al. 2020) expressed in sigmas.
- ``lcm``: the latent-consistency step: denoise fully, then re-noise to the next sigma.

Noise: ancestral samplers draw Gaussian noise from the job's seeded CPU generator. The SDE
samplers (``dpmpp_sde``, ``dpmpp_2m_sde``, ``dpmpp_3m_sde``) draw Brownian-motion increments
from a seeded Brownian tree (torchsde), as k-diffusion does, so that their noise is consistent
between step counts. The ``_gpu`` variants differ in exactly one thing, as in ComfyUI: their
Brownian tree is built on the latent's device (the GPU) instead of the CPU, which is faster for
big latents but gives device-dependent bytes. On a CPU-only machine both variants are identical.

References: where k-diffusion (which the project followed first) and today's ComfyUI disagree, a
job picks one by name (:data:`REFERENCES`; a module version declares it as ``sampler_reference``
and it reaches the job as ``LILYPAD_SAMPLER_REFERENCE``). Everything else is the same in both.

- ``lms``: k-diffusion takes a 4th-order step to sigma 0 at the end; ComfyUI returns the denoised
  estimate there.
- ``dpm_2``, ``dpm_2_ancestral``: ComfyUI schedules one step more and drops the second-to-last
  sigma (:meth:`SamplerReference.sigmas`).
- The starting noise: k-diffusion (and diffusers' Euler) scale it by ``sqrt(1 + sigma0**2)``;
  ComfyUI does so only when ``sigma0`` is the model's largest sigma, and by ``sigma0`` otherwise
  (``ddim_uniform`` starts below it) (:meth:`SamplerReference.noise_scale`).
- Progress: under ``comfyui`` the expected count of model evaluations is the count made, so it
  reaches its total; ``k-diffusion`` keeps the project's first count (two per step for heun,
  dpm_2, dpm_2_ancestral, dpmpp_2s_ancestral and dpmpp_sde, three for heunpp2), which the last
  step, making one call, never reaches: published versions' logs keep their bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torchsde

from lilypad.errors import InferenceError
from lilypad.ml.schedules import ModelSampling, by_name, get_sigmas

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``D(x, sigma) -> denoised``: sigma is a 0-d tensor."""

Progress = Callable[[int, int], None]
"""Called with (model evaluations done, evaluations expected) after each step."""


#: The variable that carries a module version's ``sampler_reference`` into its job.
REFERENCE_ENV = "LILYPAD_SAMPLER_REFERENCE"
DEFAULT_REFERENCE = "k-diffusion"


@dataclass(frozen=True)
class SamplerReference:
    """One reference implementation, by what it does where the two differ (module docstring)."""

    name: str
    #: ``lms`` returns the denoised estimate on its last step to sigma 0.
    lms_ends_denoised: bool
    #: Samplers whose schedule has one step more, the second-to-last sigma dropped.
    drop_penultimate_sigma: frozenset[str]
    #: The starting noise is scaled by sqrt(1 + sigma0**2) only from the model's largest sigma.
    full_noise_scale_at_sigma_max_only: bool
    #: Progress expects the model evaluations really made (else: a fixed count per step).
    exact_progress: bool

    def sigmas(
        self, scheduler: str, sampler: str, model: ModelSampling, steps: int
    ) -> torch.Tensor:
        """The sigmas of ``scheduler`` over ``steps`` steps, as this reference gives ``sampler``.

        Raises:
            InferenceError: for an unknown schedule, or fewer than one step.
        """
        if sampler not in self.drop_penultimate_sigma:
            return get_sigmas(scheduler, model, steps)
        sigmas = get_sigmas(scheduler, model, steps + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])

    def noise_scale(self, sigma0: torch.Tensor, model: ModelSampling) -> float:
        """The factor of the standard-normal noise that starts sampling from nothing at
        ``sigma0`` (the schedule's first sigma, a 0-d tensor)."""
        top = float(sigma0)
        at_max = math.isclose(top, model.sigma_max, rel_tol=1e-5) or top > model.sigma_max
        if self.full_noise_scale_at_sigma_max_only and not at_max:
            return top
        # NOTE: in sigma0's own dtype, as the published versions have always computed it
        return float((1 + sigma0**2) ** 0.5)


K_DIFFUSION = SamplerReference(
    DEFAULT_REFERENCE,
    lms_ends_denoised=False,
    drop_penultimate_sigma=frozenset(),
    full_noise_scale_at_sigma_max_only=False,
    exact_progress=False,
)
COMFYUI = SamplerReference(
    "comfyui",
    lms_ends_denoised=True,
    drop_penultimate_sigma=frozenset({"dpm_2", "dpm_2_ancestral"}),
    full_noise_scale_at_sigma_max_only=True,
    exact_progress=True,
)
REFERENCES: dict[str, SamplerReference] = {r.name: r for r in (K_DIFFUSION, COMFYUI)}


def get_reference(name: str) -> SamplerReference:
    """The reference called ``name``.

    Raises:
        InferenceError: for an unknown name, suggesting the close match.
    """
    return by_name(REFERENCES, name, "sampler reference")


class NoiseSampler(Protocol):
    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class SamplerContext:
    """What a sampler needs besides the model and the sigmas."""

    #: Draws the standard-normal noise of ancestral steps (from the job's CPU generator).
    noise: NoiseSampler
    #: Builds the Brownian-tree noise of SDE samplers for a latent and a sigma range.
    brownian: Callable[[torch.Tensor, float, float], NoiseSampler]
    progress: Progress | None = None
    reference: SamplerReference = K_DIFFUSION


def gaussian_noise(generator: torch.Generator, like: torch.Tensor) -> NoiseSampler:
    """Standard-normal noise shaped like ``like``, drawn on the CPU and moved to its device."""

    def draw(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(like.shape, generator=generator, dtype=torch.float32)
        return noise.to(device=like.device, dtype=like.dtype)

    return draw


class BrownianNoise:
    """Normalised increments ``(W(t1) - W(t0)) / sqrt(|t1 - t0|)`` of a seeded Brownian tree.

    Args:
        like: A tensor of the latent's shape, dtype and device.
        sigma_min: The smallest sigma the sampler asks about.
        sigma_max: The largest sigma the sampler asks about.
        seed: The tree's entropy.
        on_cpu: Build the tree on the CPU (device-independent bytes) or on ``like.device``.
    """

    def __init__(
        self, like: torch.Tensor, sigma_min: float, sigma_max: float, seed: int, on_cpu: bool
    ) -> None:
        self.device = like.device
        self.dtype = like.dtype
        tree_device = torch.device("cpu") if on_cpu else like.device
        self.t0, self.t1 = float(sigma_min), float(sigma_max)
        # NOTE: the tree spans a little more than [t0, t1]: torchsde rounds its ends to its
        # tolerance (1e-6) and warns about queries (float32-rounded sigmas) just outside them.
        self.tree = torchsde.BrownianInterval(
            t0=self.t0 - 1e-5,
            t1=self.t1 + 1e-5,
            size=tuple(like.shape),
            dtype=torch.float32,
            device=tree_device,
            entropy=seed,
            tol=1e-6,
            pool_size=24,
            halfway_tree=True,
        )

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        a = min(max(float(sigma), self.t0), self.t1)
        b = min(max(float(sigma_next), self.t0), self.t1)
        low, high = min(a, b), max(a, b)
        sign = -1.0 if a > b else 1.0
        increment: torch.Tensor = self.tree(low, high) / math.sqrt(high - low)
        return (sign * increment).to(device=self.device, dtype=self.dtype)


# --- helpers ---------------------------------------------------------------------------------


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE slope dx/dsigma (Karras et al. 2022, eq. 4)."""
    return (x - denoised) / sigma


def ancestral_step(
    sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a step to ``sigma_next`` into a deterministic part down to ``sigma_down`` and fresh
    noise of size ``sigma_up``, with ``sigma_down**2 + sigma_up**2 == sigma_next**2``."""
    if not eta:
        return sigma_next, torch.zeros_like(sigma_next)
    sigma_up = torch.minimum(
        sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    )
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _t(sigma: torch.Tensor) -> torch.Tensor:
    """DPM-Solver's time variable: minus log sigma (half log-SNR)."""
    return sigma.log().neg()


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


class _Counter:
    """Counts model evaluations for progress reporting."""

    def __init__(self, model: Denoiser, expected: int, progress: Progress | None) -> None:
        self.model, self.expected, self.progress, self.done = model, expected, progress, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = self.model(x, sigma)
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, max(self.expected, self.done))
        return out


# --- first- and second-order ODE samplers (Karras et al. 2022) ------------------------------


def sample_euler(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


def sample_euler_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + ctx.noise(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


def sample_heun(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt  # Euler for the last step: the slope at sigma 0 is undefined
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
        x = x + (d + d_2) / 2 * dt
    return x


def sample_heunpp2(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
            d_3 = to_d(x_3, sigmas[i + 2], model(x_3, sigmas[i + 2]))
            w2 = sigmas[i + 1] / (3 * sigmas[0])
            w3 = sigmas[i + 2] / (3 * sigmas[0])
            x = x + (d * (1 - w2 - w3) + d_2 * w2 + d_3 * w3) * dt
    return x


def _dpm_2_step(
    model: Denoiser, x: torch.Tensor, sigma: torch.Tensor, sigma_to: torch.Tensor, d: torch.Tensor
) -> torch.Tensor:
    """One DPM-2 step from ``sigma`` to ``sigma_to``: slope re-evaluated at the log midpoint."""
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
    return x + d_2 * (sigma_to - sigma)


def sample_dpm_2(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        d = to_d(x, sigmas[i], model(x, sigmas[i]))
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            x = _dpm_2_step(model, x, sigmas[i], sigmas[i + 1], d)
    return x


def sample_dpm_2_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        d = to_d(x, sigmas[i], model(x, sigmas[i]))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            x = _dpm_2_step(model, x, sigmas[i], sigma_down, d)
            x = x + ctx.noise(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


# --- linear multistep -------------------------------------------------------------------------


def lms_coefficient(sigmas: np.ndarray, order: int, i: int, j: int) -> float:
    """Integral over [sigma_i, sigma_i+1] of the Lagrange basis polynomial of point ``i - j``.

    The polynomial is integrated exactly (numpy), where k-diffusion uses numerical quadrature.
    """
    roots = [sigmas[i - k] for k in range(order) if k != j]
    denominator = math.prod(sigmas[i - j] - r for r in roots)
    poly = np.polynomial.Polynomial([1.0])
    for root in roots:
        poly = poly * np.polynomial.Polynomial([-root, 1.0])
    poly = poly / denominator
    antiderivative = poly.integ()
    return float(antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i]))


def sample_lms(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    max_order = 4
    sigmas_np = sigmas.detach().cpu().to(torch.float64).numpy()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0 and ctx.reference.lms_ends_denoised:
            x = denoised
            continue
        ds.append(to_d(x, sigmas[i], denoised))
        ds = ds[-max_order:]
        order = min(i + 1, max_order)
        coeffs = [lms_coefficient(sigmas_np, order, i, j) for j in range(order)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds), strict=True))
    return x


# --- DPM-Solver (fast and adaptive) -----------------------------------------------------------


class _DPMSolver:
    """DPM-Solver of orders 1-3 in the eps parameterisation, over t = -log(sigma)."""

    def __init__(self, model: Denoiser) -> None:
        self.model = model

    def eps(
        self, cache: dict[str, torch.Tensor], key: str, x: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        if key not in cache:
            sigma = _sigma(t)
            cache[key] = (x - self.model(x, sigma)) / sigma
        return cache[key]

    def step_1(
        self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, cache: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        h = t_next - t
        return x - _sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step_2(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        cache: dict[str, torch.Tensor],
        r1: float = 0.5,
    ) -> torch.Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return (
            x
            - _sigma(t_next) * h.expm1() * eps
            - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
        )

    def step_3(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        cache: dict[str, torch.Tensor],
        r1: float = 1 / 3,
        r2: float = 2 / 3,
    ) -> torch.Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (
            x
            - _sigma(s2) * (r2 * h).expm1() * eps
            - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return (
            x
            - _sigma(t_next) * h.expm1() * eps
            - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)
        )


def fast_orders(nfe: int) -> list[int]:
    """DPM-Solver-fast's order per step for ``nfe`` model evaluations (Lu et al. 2022, sec. 3.4)."""
    m = nfe // 3 + 1
    if nfe % 3 == 0:
        return [3] * (m - 2) + [2, 1]
    return [3] * (m - 1) + [nfe % 3]


def _end_sigmas(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DPM-Solver stops at the smallest non-zero sigma (log sigma is undefined at 0)."""
    sigma_min = sigmas[-2] if sigmas[-1] == 0 else sigmas[-1]
    return sigma_min, sigmas[0]


def sample_dpm_fast(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    sigma_min, sigma_max = _end_sigmas(sigmas)
    orders = fast_orders(len(sigmas) - 1)
    ts = torch.linspace(
        float(_t(sigma_max)), float(_t(sigma_min)), len(orders) + 1, dtype=sigmas.dtype
    )
    solver = _DPMSolver(model)
    steps = {1: solver.step_1, 2: solver.step_2, 3: solver.step_3}
    for i, order in enumerate(orders):
        x = steps[order](x, ts[i], ts[i + 1], {})
    return x


class PIDStepSizeController:
    """The PID controller of k-diffusion's adaptive DPM-Solver (an I controller by default)."""

    def __init__(
        self,
        h: float,
        pcoeff: float,
        icoeff: float,
        dcoeff: float,
        order: float,
        accept_safety: float,
    ) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.errs: list[float] = []

    def propose_step(self, error: float) -> bool:
        inv_error = 1 / (error + 1e-8)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)  # soft limiter
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


#: k-diffusion's defaults for sample_dpm_adaptive, which ComfyUI uses unchanged.
ADAPTIVE_RTOL, ADAPTIVE_ATOL, ADAPTIVE_H_INIT = 0.05, 0.0078, 0.05
#: A bound on model evaluations so that a diverging model fails instead of looping for hours.
ADAPTIVE_MAX_NFE = 2000


def sample_dpm_adaptive(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    """Order 3 with an embedded order-2 error estimate; the step count comes from the tolerances."""
    sigma_min, sigma_max = _end_sigmas(sigmas)
    counted = _Counter(model, 0, None)
    solver = _DPMSolver(counted)
    t_end = _t(sigma_min)
    s = _t(sigma_max)
    pid = PIDStepSizeController(ADAPTIVE_H_INIT, 0.0, 1.0, 0.0, 3, 0.81)
    x_prev = x
    while s < t_end - 1e-5:
        cache: dict[str, torch.Tensor] = {}
        t = torch.minimum(t_end, s + pid.h)
        x_low = solver.step_2(x, s, t, cache, r1=1 / 3)
        x_high = solver.step_3(x, s, t, cache)
        delta = torch.maximum(
            torch.tensor(ADAPTIVE_ATOL, dtype=x.dtype, device=x.device),
            ADAPTIVE_RTOL * torch.maximum(x_low.abs(), x_prev.abs()),
        )
        error = float(torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5)
        if pid.propose_step(error):
            x_prev, x, s = x_low, x_high, t
        if counted.done > ADAPTIVE_MAX_NFE:
            raise InferenceError(
                f"dpm_adaptive did not reach sigma {float(sigma_min):.4g} within "
                f"{ADAPTIVE_MAX_NFE} model evaluations; use another sampler"
            )
    return x


# --- DPM-Solver++ ------------------------------------------------------------------------------


def sample_dpmpp_2s_ancestral(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h * 0.5).expm1() * denoised
            denoised_2 = model(x_2, _sigma(s))
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + ctx.noise(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


def sample_dpmpp_sde(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    """DPM-Solver++(2S) SDE with r = 1/2 and eta = 1, on Brownian-tree noise."""
    positive = sigmas[sigmas > 0]
    noise = ctx.brownian(x, float(positive.min()), float(sigmas.max()))
    r, fac = 0.5, 1.0
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        sd, su = ancestral_step(_sigma(t), _sigma(s))
        s_ = _t(sd)
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise(_sigma(t), _sigma(s)) * su
        denoised_2 = model(x_2, _sigma(s))
        sd, su = ancestral_step(_sigma(t), _sigma(t_next))
        t_next_ = _t(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise(_sigma(t), _sigma(t_next)) * su
    return x


def sample_dpmpp_2m(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    old_denoised: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
            h = t_next - t
            if old_denoised is None:
                denoised_d = denoised
            else:
                r = (t - _t(sigmas[i - 1])) / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def sample_dpmpp_2m_sde(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE, midpoint variant, eta = 1."""
    positive = sigmas[sigmas > 0]
    noise = ctx.brownian(x, float(positive.min()), float(sigmas.max()))
    eta = 1.0
    old_denoised: torch.Tensor | None = None
    h_last: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            eta_h = eta * h
            x = (
                sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x
                + (-h - eta_h).expm1().neg() * denoised
            )
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            x = (
                x
                + noise(sigmas[i], sigmas[i + 1])
                * sigmas[i + 1]
                * (-2 * eta_h).expm1().neg().sqrt()
            )
            h_last = h
        old_denoised = denoised
    return x


def sample_dpmpp_3m_sde(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    """DPM-Solver++(3M) SDE, eta = 1."""
    positive = sigmas[sigmas > 0]
    noise = ctx.brownian(x, float(positive.min()), float(sigmas.max()))
    eta = 1.0
    denoised_1: torch.Tensor | None = None
    denoised_2: torch.Tensor | None = None
    h_1: torch.Tensor | None = None
    h_2: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        h = _t(sigmas[i + 1]) - _t(sigmas[i])
        h_eta = h * (eta + 1)
        x = (-h_eta).exp() * x + (-h_eta).expm1().neg() * denoised
        phi_2 = h_eta.neg().expm1() / h_eta + 1
        if (
            h_2 is not None
            and h_1 is not None
            and denoised_1 is not None
            and denoised_2 is not None
        ):
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (denoised - denoised_1) / r0
            d1_1 = (denoised_1 - denoised_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        elif h_1 is not None and denoised_1 is not None:
            x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
        x = (
            x
            + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt()
        )
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# --- DDPM and LCM -----------------------------------------------------------------------------


def sample_ddpm(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, algorithm 2) on the model's alphas."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        eps = (x - denoised) / sigma
        acp = 1 / (sigma**2 + 1)
        acp_next = 1 / (sigma_next**2 + 1)
        alpha = acp / acp_next
        # The VP sample is x / sqrt(1 + sigma^2); the posterior mean is taken there.
        mu = (x * acp.sqrt() - (1 - alpha) * eps / (1 - acp).sqrt()) / alpha.sqrt()
        if sigma_next > 0:
            variance = (1 - alpha) * (1 - acp_next) / (1 - acp)
            mu = mu + variance.sqrt() * ctx.noise(sigma, sigma_next)
        x = mu / acp_next.sqrt()
    return x


def sample_lcm(
    model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, ctx: SamplerContext
) -> torch.Tensor:
    """Latent consistency sampling: jump to the denoised estimate, re-noise to the next sigma."""
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * ctx.noise(sigmas[i], sigmas[i + 1])
    return x


Sampler = Callable[[Denoiser, torch.Tensor, torch.Tensor, SamplerContext], torch.Tensor]


def _last_to_zero_one_call(sigmas: torch.Tensor) -> int:
    """Two model calls a step, one on a last step to sigma 0 (an Euler step there)."""
    return 2 * (len(sigmas) - 1) - int(sigmas[-1] == 0)


def _heunpp2_calls(sigmas: torch.Tensor) -> int:
    """Three calls a step; two on the second-to-last, one on the last."""
    steps = len(sigmas) - 1
    return sum(min(3, steps - i) for i in range(steps))


@dataclass(frozen=True)
class SamplerInfo:
    """A sampler and how many model evaluations it makes per schedule step (for progress)."""

    fn: Sampler
    evals_per_step: int = 1
    #: The Brownian tree lives on the latent's device (ComfyUI's ``_gpu`` variants).
    tree_on_device: bool = False
    #: The model evaluations made on given sigmas, where the last steps make fewer than
    #: ``evals_per_step`` (the count of references with ``exact_progress``).
    calls: Callable[[torch.Tensor], int] | None = None

    def expected_calls(self, sigmas: torch.Tensor, reference: SamplerReference) -> int:
        if reference.exact_progress and self.calls is not None:
            return self.calls(sigmas)
        return (len(sigmas) - 1) * self.evals_per_step


SAMPLERS: dict[str, SamplerInfo] = {
    "euler": SamplerInfo(sample_euler),
    "euler_ancestral": SamplerInfo(sample_euler_ancestral),
    "heun": SamplerInfo(sample_heun, 2, calls=_last_to_zero_one_call),
    "heunpp2": SamplerInfo(sample_heunpp2, 3, calls=_heunpp2_calls),
    "dpm_2": SamplerInfo(sample_dpm_2, 2, calls=_last_to_zero_one_call),
    "dpm_2_ancestral": SamplerInfo(sample_dpm_2_ancestral, 2, calls=_last_to_zero_one_call),
    "lms": SamplerInfo(sample_lms),
    "dpm_fast": SamplerInfo(sample_dpm_fast),
    "dpm_adaptive": SamplerInfo(sample_dpm_adaptive),
    "dpmpp_2s_ancestral": SamplerInfo(sample_dpmpp_2s_ancestral, 2, calls=_last_to_zero_one_call),
    "dpmpp_sde": SamplerInfo(sample_dpmpp_sde, 2, calls=_last_to_zero_one_call),
    "dpmpp_sde_gpu": SamplerInfo(sample_dpmpp_sde, 2, True, _last_to_zero_one_call),
    "dpmpp_2m": SamplerInfo(sample_dpmpp_2m),
    "dpmpp_2m_sde": SamplerInfo(sample_dpmpp_2m_sde),
    "dpmpp_2m_sde_gpu": SamplerInfo(sample_dpmpp_2m_sde, tree_on_device=True),
    "dpmpp_3m_sde": SamplerInfo(sample_dpmpp_3m_sde),
    "dpmpp_3m_sde_gpu": SamplerInfo(sample_dpmpp_3m_sde, tree_on_device=True),
    "ddpm": SamplerInfo(sample_ddpm),
    "lcm": SamplerInfo(sample_lcm),
}


#: What a sampler does with the step count that its name does not say; jobs log it.
STEP_NOTES: dict[str, str] = {
    "dpm_fast": "dpm_fast spends the steps as model evaluations in DPM-Solver steps of order 3 "
    "and stops at the schedule's smallest non-zero sigma",
    "dpm_adaptive": "dpm_adaptive chooses its own steps from error tolerances (rtol "
    f"{ADAPTIVE_RTOL}, atol {ADAPTIVE_ATOL}); the step count only sets the schedule's ends",
}


def get_sampler(name: str) -> SamplerInfo:
    """The sampler called ``name``.

    Raises:
        InferenceError: for an unknown name, suggesting the close match.
    """
    return by_name(SAMPLERS, name, "sampler")


def sample(
    name: str,
    model: Denoiser,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator,
    seed: int,
    progress: Progress | None = None,
    reference: str = DEFAULT_REFERENCE,
) -> torch.Tensor:
    """Run sampler ``name`` from ``noise`` (already scaled to ``sigmas[0]``) down ``sigmas``.

    Args:
        name: A ComfyUI sampler name (:data:`SAMPLERS`).
        model: The denoiser.
        noise: The starting latent.
        sigmas: Descending noise levels (a schedule), on any device; used in the latent's dtype.
        generator: The job's CPU generator, for ancestral noise.
        seed: The entropy of the Brownian tree of SDE samplers.
        progress: Called after each model evaluation.
        reference: Which reference to follow where they differ (:data:`REFERENCES`); the
            sigmas and the starting noise should come from the same one
            (:meth:`SamplerReference.sigmas`, :meth:`SamplerReference.noise_scale`).

    Raises:
        InferenceError: for an unknown sampler or reference name.
    """
    info = get_sampler(name)
    ref = get_reference(reference)
    sigmas = sigmas.to(device=noise.device, dtype=noise.dtype)
    counted = _Counter(model, info.expected_calls(sigmas, ref), progress)

    def brownian(like: torch.Tensor, sigma_min: float, sigma_max: float) -> NoiseSampler:
        return BrownianNoise(like, sigma_min, sigma_max, seed, on_cpu=not info.tree_on_device)

    ctx = SamplerContext(gaussian_noise(generator, noise), brownian, progress, ref)
    return info.fn(counted, noise, sigmas, ctx)
