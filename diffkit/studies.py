"""Denoising studies as functions: the forward process, blur vs one-step vs iterative denoising of an
image, and the one-step MNIST denoiser across noise levels. The CLI turns them into figures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffkit import schedule
from diffkit.filters import lowpass
from diffkit.hookspecs import hookimpl
from diffkit.technique import Projector


class StartFrom(Projector):
    """Start sampling from a given state at index 0 (the noisy image of a denoising study)."""

    name = "start_from"

    @hookimpl
    def diffkit_initial_state(self, ctx, noise):
        return self.args["x"].to(noise.device, noise.dtype), 0


def noisy_images(backend: Any, image: Tensor, ts: list[int], seed: int = 0) -> Tensor:
    """``image`` ``[1 x C x H x W]`` in [0, 1] -> its forward-process states at each ``t``, ``[len(ts) x C x H x W]``."""
    x0 = backend.from_image(image)
    g = torch.Generator().manual_seed(seed)
    return torch.cat([schedule.forward(x0, t, torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(x0.device),
                                       backend.alphas_cumprod) for t in ts])


def blur(x: Tensor, kernel: int = 5, sigma: float = 2.0) -> Tensor:
    """The classical baseline: Gaussian blur of the noisy image."""
    return lowpass(x, kernel, sigma)


@torch.inference_mode()
def one_step(backend: Any, x_t: Tensor, t: int, label: Any = None) -> Tensor:
    """``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)`` from a single model call."""
    cond = backend.encode([label] * x_t.shape[0])
    est = backend.predict(backend.model_input(x_t), torch.full((x_t.shape[0],), t, dtype=torch.long), cond)
    return schedule.x0_from_eps(x_t, t, est[:, : x_t.shape[1]], backend.alphas_cumprod)


@dataclass
class Iterative:
    final: Tensor  # [1 x C x H x W]
    frames: list[Tensor]  # states every ``every`` steps, [1 x C x H x W] each


def iterative(backend: Any, x_t: Tensor, t: int, stride: int, label: Any = None, hooks: list = (), seed: int = 0,
              every: int = 5) -> Iterative:
    """Denoise ``x_t`` with the Sampler over ``t, t - stride, ..., >= 0``."""
    from diffkit.api import Run

    run = Run(backend, classes=[label] if label is not None else None, seed=seed,
              timesteps=list(range(t, -1, -stride)), hooks=[*hooks, StartFrom(x=x_t)], stages=1)
    frames = []
    for st in run.steps():
        if st.i % every == 0:
            frames.append(backend.to_image(st.x).float().cpu())
    return Iterative(run.result.images, frames)


@torch.inference_mode()
def denoiser_study(model: torch.nn.Module, x: Tensor, sigmas: list[float], seed: int = 0,
                   batch: int = 1000) -> tuple[Tensor, Tensor, dict[float, float]]:
    """One-step denoiser ``D(x + sigma eps)`` on digits ``x`` ``[N x 1 x 28 x 28]``.

    Returns noisy and denoised ``[S x N x 1 x 28 x 28]`` for the first 8 digits, and the MSE per sigma
    over all of ``x``.
    """
    g = torch.Generator().manual_seed(seed)
    noisy, out, mse = [], [], {}
    for s in sigmas:
        total = 0.0
        for i in range(0, len(x), batch):
            xb = x[i: i + batch]
            z = xb + s * torch.randn(xb.shape, generator=g)
            d = model(z)
            total += (d - xb).pow(2).sum().item()
            if i == 0:
                noisy.append(z[:8].clamp(0, 1))
                out.append(d[:8].clamp(0, 1))
        mse[s] = total / x.numel()
    return torch.stack(noisy), torch.stack(out), mse
