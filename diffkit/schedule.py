"""Noise-schedule math as small pure functions.

Names follow DDPM (Ho et al. 2020): ``t`` indexes ``0 .. T-1``, ``abar = alphas_cumprod[t]``,
``abar(-1) = 1`` (the clean image). All tensors are ``[N x C x H x W]`` unless said otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def linear_betas(T: int = 300, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Linear beta schedule, betas ``[T]`` in float64 (DDPM section 4)."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_betas(T: int = 1000, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule ``abar(t) = cos^2((t/T + s)/(1 + s) pi/2)``, s = 0.008 (Nichol & Dhariwal eq. 17).

    Computed in float64 and returned as ``[T]``, the same values as diffusers'
    ``betas_for_alpha_bar(..., alpha_transform_type="cosine")`` (``squaredcos_cap_v2``).
    """

    def abar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor(
        [min(1 - abar((i + 1) / T) / abar(i / T), max_beta) for i in range(T)], dtype=torch.float64
    )


def alphas_cumprod(betas: Tensor) -> Tensor:
    """``abar_t = prod_{s<=t} (1 - beta_s)``, ``[T]``."""
    return torch.cumprod(1.0 - betas, dim=0)


def betas_from_config(config: dict) -> Tensor:
    """Betas ``[T]`` from a diffusers scheduler config (``beta_schedule``, ``num_train_timesteps``)."""
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr (a zero terminal SNR schedule) is not supported: its last "
                         "noise level has no signal, and diffkit's steps divide by it")
    if config.get("trained_betas") is not None:  # as diffusers reads them: float32
        return torch.tensor(config["trained_betas"], dtype=torch.float32).double()
    T = int(config.get("num_train_timesteps", 1000))
    kind = config.get("beta_schedule", "linear")
    if kind == "linear":
        # diffusers computes linear betas in float32; match it so schedules agree bit for bit.
        return torch.linspace(
            config.get("beta_start", 1e-4), config.get("beta_end", 0.02), T, dtype=torch.float32
        ).double()
    if kind == "scaled_linear":  # Stable Diffusion's: linear in sqrt(beta), in float32 as diffusers makes it
        return (torch.linspace(config.get("beta_start", 1e-4) ** 0.5, config.get("beta_end", 0.02) ** 0.5, T,
                               dtype=torch.float32) ** 2).double()
    if kind == "squaredcos_cap_v2":
        return cosine_betas(T).float().double()
    raise ValueError(f"unsupported beta_schedule {kind!r} (diffkit knows 'linear', 'scaled_linear' and "
                     "'squaredcos_cap_v2')")


def alphas_cumprod_from_config(config: dict) -> Tensor:
    """``abar`` ``[T]`` for a diffusers scheduler config, accumulated in float32 as diffusers does.

    At IF's largest timesteps ``abar`` is ~1e-4 and x0 = x / sqrt(abar) amplifies any difference,
    so matching diffusers' pipelines needs its rounding, not a more exact product.
    """
    betas = betas_from_config(config).float()
    return torch.cumprod(1.0 - betas, dim=0).double()


def abar_at(alphas_cumprod: Tensor, t: int) -> float:
    """``abar_t`` as a Python float, with ``abar_{-1} = 1`` for the step that lands on the clean image.

    Scalars stay Python floats (double precision) so the per-step math costs no tensor ops.
    """
    return float(alphas_cumprod[t]) if t >= 0 else 1.0


def abar_between(alphas_cumprod: Tensor, t: float) -> float:
    """``abar`` at a fractional timestep, log-sigma interpolated between its two training timesteps.

    The inverse of diffusers' ``_sigma_to_t`` (how its Karras and interpolated-sigma schedulers turn a
    noise level into the timestep the model sees), so it gives back the noise level the state has.
    """
    lo = min(int(math.floor(t)), len(alphas_cumprod) - 1)
    hi, w = min(lo + 1, len(alphas_cumprod) - 1), t - lo
    a_lo, a_hi = float(alphas_cumprod[lo]), float(alphas_cumprod[hi])
    log_sigma = (1 - w) * 0.5 * math.log((1 - a_lo) / a_lo) + w * 0.5 * math.log((1 - a_hi) / a_hi)
    return 1 / (1 + math.exp(2 * log_sigma))


def eps_from_v(x: Tensor, v: Tensor, abar: float) -> Tensor:
    """Noise from a v-prediction: ``eps = sqrt(abar) v + sqrt(1 - abar) x_t`` (Salimans & Ho 2022, with
    ``v = sqrt(abar) eps - sqrt(1 - abar) x0``)."""
    return math.sqrt(abar) * v + math.sqrt(1 - abar) * x


# ---- flow matching (rectified flow): x_sigma = (1 - sigma) x0 + sigma eps, the model predicts v = eps - x0
# (Liu et al. 2023; Esser et al. 2024, SD3, eq. 1-2). diffkit's state stays variance-preserving: the flow
# state divided by its scale, so abar = (1 - sigma)^2 / ((1 - sigma)^2 + sigma^2), 0 at sigma = 1.


def flow_scale(sigma: float) -> float:
    """``x_flow = flow_scale(sigma) x_vp``: ``sqrt((1 - sigma)^2 + sigma^2)``, 1 at pure noise and data."""
    return math.sqrt((1 - sigma) ** 2 + sigma**2)


def flow_abar(sigma: float) -> float:
    """``abar`` of the variance-preserving state at flow noise level ``sigma`` (0 at ``sigma = 1``)."""
    return (1 - sigma) ** 2 / ((1 - sigma) ** 2 + sigma**2)


def flow_alphas_cumprod(T: int) -> Tensor:
    """``abar`` of a flow model at its training timesteps ``t = 1..T`` (``sigma = t / T``) ``[T]``, float64: what
    the techniques that read ``alphas_cumprod`` (guidance intervals, t / T) see on a flow model."""
    sig = torch.arange(1, T + 1, dtype=torch.float64) / T
    return flow_abar(sig)


def estimates_from_flow(x: Tensor, v: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """``(eps, x0)`` from a velocity ``v = eps - x0`` at flow state ``x = (1 - sigma) x0 + sigma eps``:
    ``eps = x + (1 - sigma) v``, ``x0 = x - sigma v``. Both stay defined at ``sigma = 1``, where noise
    alone says nothing of the image; which is why a flow model's estimate carries both."""
    return x + (1 - sigma) * v, x - sigma * v


def strided_timesteps(T: int, stride: int, start: int | None = None) -> list[int]:
    """Timesteps ``start, start - stride, ..., >= 0`` (IF default: 990, 960, ..., 0)."""
    start = (T - 1) // stride * stride if start is None else start
    return list(range(start, -1, -stride))


def noised(x0: Tensor, abar: float, eps: Tensor) -> Tensor:
    """Forward process at a noise level: ``sqrt(abar) x0 + sqrt(1 - abar) eps`` (DDPM eq. 4)."""
    return math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps


def forward(x0: Tensor, t: int, eps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Forward process ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (DDPM eq. 4)."""
    return noised(x0, abar_at(alphas_cumprod, t), eps)


def x0_from_eps_abar(x: Tensor, abar: float, eps: Tensor) -> Tensor:
    """``x0 = (x - sqrt(1 - abar) eps) / sqrt(abar)`` at a noise level (DDPM eq. 15)."""
    return (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)


def x0_from_eps(x: Tensor, t: int, eps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Clean-image estimate ``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (DDPM eq. 15)."""
    return x0_from_eps_abar(x, abar_at(alphas_cumprod, t), eps)


def eps_from_x0(x: Tensor, t: int, x0: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Noise implied by a clean-image estimate, the inverse of :func:`x0_from_eps`."""
    a = abar_at(alphas_cumprod, t)
    return (x - math.sqrt(a) * x0) / math.sqrt(1 - a)


def dynamic_threshold(x0: Tensor, ratio: float = 0.995, max_value: float = 1.0) -> Tensor:
    """Imagen's dynamic thresholding: clamp to the ``ratio`` quantile ``s`` (>= 1), divide by ``s``."""
    flat = x0.float().reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value)[:, None]
    return (flat.clamp(-s, s) / s).reshape(x0.shape).to(x0.dtype)


@dataclass(frozen=True)
class StepConfig:
    """How a DDPM step treats the estimate: what diffusers' ``DDPMScheduler`` config calls the same."""

    variance_type: str = "fixed_small"  # or "learned_range" (IF: the model predicts the variance)
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0

    @classmethod
    def from_scheduler_config(cls, config: dict) -> StepConfig:
        """Read the fields of a diffusers ``scheduler_config.json`` that change the step."""
        names = cls.__dataclass_fields__
        return cls(**{k: config[k] for k in names if k in config})


def posterior_log_variance(
    t: int, t_prev: int, alphas_cumprod: Tensor, var: Tensor | None, variance_type: str
) -> Tensor | float:
    """Log variance of ``q(x_t' | x_t, x0)``: fixed ``beta_tilde`` or IF's learned range (IDDPM eq. 15)."""
    a, a_prev = abar_at(alphas_cumprod, t), abar_at(alphas_cumprod, t_prev)
    beta = 1 - a / a_prev
    beta_tilde = max((1 - a_prev) / (1 - a) * beta, 1e-20)
    if variance_type == "learned_range":
        if var is None:
            raise ValueError("variance_type 'learned_range' needs the model's variance channels")
        frac = (var + 1) / 2
        return frac * math.log(beta) + (1 - frac) * math.log(beta_tilde)
    if variance_type == "fixed_small":
        return math.log(beta_tilde)
    if variance_type == "fixed_large":
        return math.log(beta)
    raise ValueError(f"unknown variance_type {variance_type!r}")


def ddpm_step(
    x: Tensor,
    t: int,
    t_prev: int,
    eps: Tensor,
    alphas_cumprod: Tensor,
    noise: Tensor | None,
    var: Tensor | None = None,
    config: StepConfig = StepConfig(),
) -> tuple[Tensor, Tensor]:
    """DDPM posterior step ``x_t -> x_t'`` for any ``t > t'`` (DDPM eq. 7, strided).

    ``x_t' = sqrt(abar_t') beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_t') / (1 - abar_t) x_t + v``
    with ``alpha_t = abar_t / abar_t'``, ``beta_t = 1 - alpha_t``; ``v = exp(logvar / 2) noise``, and no
    noise when ``t' < 0`` or ``noise`` is None. ``x, eps, noise, var``: ``[N x C x H x W]``.
    Returns ``(x_t', x0)``.
    """
    a, a_prev = abar_at(alphas_cumprod, t), abar_at(alphas_cumprod, t_prev)
    alpha = a / a_prev
    beta = 1 - alpha
    x0 = x0_from_eps(x, t, eps, alphas_cumprod)
    if config.thresholding:
        x0 = dynamic_threshold(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
    elif config.clip_sample:
        x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    mean = (math.sqrt(a_prev) * beta / (1 - a)) * x0 + (math.sqrt(alpha) * (1 - a_prev) / (1 - a)) * x
    if t_prev < 0 or noise is None:
        return mean, x0
    logvar = posterior_log_variance(t, t_prev, alphas_cumprod, var, config.variance_type)
    std = torch.exp(0.5 * logvar) if isinstance(logvar, Tensor) else math.exp(0.5 * logvar)
    return mean + std * noise, x0
