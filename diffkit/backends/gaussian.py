"""A backend with an exact denoiser, and the worked example of writing a backend (docs/writing-plugins.md).

The data: class ``k`` images are ``x0 ~ N(mu_k, s^2 I)``, every pixel of ``mu_k`` being ``means[k]``. Then
``x_t | k ~ N(sqrt(abar) mu_k, (abar s^2 + 1 - abar) I)`` and the optimal noise prediction is
``E[eps | x_t, k] = sqrt(1 - abar) (x_t - sqrt(abar) mu_k) / (abar s^2 + 1 - abar)``; unconditionally
it is the posterior-weighted mean over classes. No network: the sampler's math is all that is tested.

A backend is a :class:`~diffkit.backends.base.Backend` subclass plus a ``BackendInfo`` declaring its
name and options (``plugins/backends.py``). What it must give: a schedule (``alphas_cumprod``), the state's
shape, ``encode`` (labels -> conditioning), ``predict`` (the model call), ``to_image``/``from_image``.
Everything else (samplers, techniques, batching, seeds, run folders, torchrun) is diffkit's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from diffkit import schedule
from diffkit.backends.base import Backend, BackendError


class GaussianBackend(Backend):
    name = "gaussian"
    # The rest of the optional members keep the base class's defaults: one stage, the CPU, DDPM steps
    # without clipping, every sampler built from alphas_cumprod, default timesteps every `stride`.

    def __init__(self, means: tuple[float, ...] = (0.3, 0.7), std: float = 0.2, shape: tuple[int, int, int] = (1, 8, 8),
                 T: int = 300, stride: int = 1, formulation: str = "vp", shift: float = 1.0):
        self.means = torch.tensor(means, dtype=torch.float64)
        self.std = std
        self.sample_shape = shape
        self.alphas_cumprod = schedule.alphas_cumprod(schedule.linear_betas(T))  # [T] float64, the training schedule
        self.dtype = torch.float64  # exact math: float64 states
        self.stride = stride
        if formulation == "flow":
            # The same data as a flow-matching model: x = (1 - sigma) x0 + sigma eps, predicting v = eps - x0 at
            # timestep sigma x 1000, stepped by diffusers' flow schedulers (shift as SD3's config declares one).
            self.prediction_type = "flow_prediction"
            self.scheduler_config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                                     "shift": shift}
            self.alphas_cumprod = schedule.flow_alphas_cumprod(1000)  # [1000]: abar of t = sigma x 1000
            self.default_steps = 28
            self.default_sampler = "own"  # flow-matching Euler, as the flow pipelines sample

    @classmethod
    def from_options(cls, means: str, std: float, formulation: str = "vp", shift: float = 1.0) -> GaussianBackend:
        """The backend as ``--backend-option means=0.2,0.8 --backend-option std=0.15`` asks for it.

        Raises BackendError (exit 2, before anything runs) for means it cannot use."""
        try:
            values = tuple(float(m) for m in means.split(","))
        except ValueError:
            raise BackendError(f"backend 'gaussian': option 'means' must be a comma list of numbers, got {means!r}") from None
        if not 2 <= len(values) <= 10 or not all(-10 <= m <= 10 for m in values):
            raise BackendError(f"backend 'gaussian': option 'means' must list 2 to 10 numbers in -10..10, got {means!r}")
        return cls(means=values, std=std, formulation=formulation, shift=shift)

    def encode(self, labels: list[Any]) -> Tensor:
        """Class index -> one-hot ``[N x K]``; None -> zeros (unconditional)."""
        K = len(self.means)
        out = torch.zeros(len(labels), K, dtype=self.dtype)
        for i, lab in enumerate(labels):
            if lab is None:
                continue
            try:
                k = int(str(lab).strip())
            except ValueError:
                raise BackendError(f"gaussian backend: class must be an integer in 0..{K - 1}, got {lab!r}") from None
            if not 0 <= k < K:
                raise BackendError(f"gaussian backend: class {lab!r} is not in 0..{K - 1}")
            out[i, k] = 1
        return out

    def abar(self, t: Tensor) -> Tensor:
        """``abar`` at timesteps ``[B]``; between training timesteps, sigma = sqrt((1 - abar) / abar) is
        interpolated linearly, as diffusers' sigma-space schedulers place their fractional timesteps."""
        if not t.is_floating_point():
            return self.alphas_cumprod[t]
        sig = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        t = t.double().clamp(0, len(sig) - 1)
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=len(sig) - 1)
        s = sig[lo] + (t - lo) * (sig[hi] - sig[lo])
        return 1 / (1 + s * s)

    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """The exact ``E[eps | x_t, class]`` ``[B x C x H x W]`` (conditioning all zeros: over all classes);
        a flow model's exact ``E[eps - x0 | x_sigma, class]``."""
        if self.formulation == "flow":
            return self._velocity(x, t, cond)
        a = self.abar(t.cpu()).to(x.dtype)[:, None, None, None]  # [B x 1 x 1 x 1]
        var = a * self.std**2 + 1 - a
        mu = self.means.to(x.dtype)[None, :, None, None, None]  # [1 x K x 1 x 1 x 1]
        resid = x[:, None] - a.sqrt()[:, None] * mu  # [B x K x C x H x W]
        eps_k = (1 - a).sqrt()[:, None] * resid / var[:, None]
        logp = -(resid**2).flatten(2).sum(-1) / (2 * var.flatten(1))  # [B x K]
        w = torch.softmax(logp, dim=1)
        if cond is not None:
            labelled = cond.sum(1) > 0
            w = torch.where(labelled[:, None], cond.to(w.dtype), w)
        return (w[:, :, None, None, None] * eps_k).sum(1)

    def _velocity(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """``x = (1 - s) x0 + s eps``, ``x0 ~ N(mu_k, std^2)``: per class ``x ~ N((1 - s) mu_k, var)`` with
        ``var = (1 - s)^2 std^2 + s^2``, ``E[eps | x] = s r / var`` and ``E[x0 | x] = mu_k + (1 - s) std^2 r / var``
        for ``r = x - (1 - s) mu_k``; v = their difference, the classes weighted by their posterior."""
        s = (t.double() / 1000).to(x.dtype)[:, None, None, None]  # [B x 1 x 1 x 1]
        var = (1 - s) ** 2 * self.std**2 + s**2
        mu = self.means.to(x.dtype)[None, :, None, None, None]  # [1 x K x 1 x 1 x 1]
        resid = x[:, None] - (1 - s)[:, None] * mu  # [B x K x C x H x W]
        v_k = s[:, None] * resid / var[:, None] - (mu + (1 - s)[:, None] * self.std**2 * resid / var[:, None])
        logp = -(resid**2).flatten(2).sum(-1) / (2 * var.flatten(1))  # [B x K]
        w = torch.softmax(logp, dim=1)
        if cond is not None:
            labelled = cond.sum(1) > 0
            w = torch.where(labelled[:, None], cond.to(w.dtype), w)
        return (w[:, :, None, None, None] * v_k).sum(1)

    def to_image(self, x: Tensor) -> Tensor:
        return x.clamp(0, 1)  # the data lives in [0, 1] already

    def from_image(self, img: Tensor) -> Tensor:
        return img.to(self.dtype)
