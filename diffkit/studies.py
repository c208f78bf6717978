"""Denoising studies as functions: the forward process, blur vs one-step vs iterative denoising of an
image, and the one-step MNIST denoiser across noise levels. The CLI turns them into figures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffkit import schedule
from diffkit.filters import lowpass
from diffkit.technique import StartFrom


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


# ---- the figures `diffkit noise` and `diffkit denoise` write (the command line only reads the flags) ----

def noise_figure(backend: Any, image: Tensor, ts: list[int], seed: int, out: Any, given: dict[str, Any]) -> None:
    """``image`` and its forward-process states at ``ts`` side by side in ``out`` (PNG), and what made them
    in the JSON beside it (``given``: the image's path and the backend options as given)."""
    from diffkit import io

    xs = noisy_images(backend, image, ts, seed)
    cols = [image.cpu()] + [backend.to_image(x[None]).float().cpu() for x in xs]
    io.save_png(io.labelled_columns(cols, ["original"] + [f"t={v}" for v in ts]), out)
    io.write_json(out.with_suffix(".json"), {"image": given["image"], "t": ts, "backend": backend.name, "seed": seed,
                                             "checkpoint": backend.checkpoint or given.get("model")})


def denoise_figure(backend: Any, image: Tensor, ts: list[int], methods: list[str], prompt: Any,
                   stride: int | None, seed: int, out: Any, image_path: str) -> None:
    """Each method (blur, onestep, iterative) on ``image`` noised to each of ``ts``: a row a timestep in
    ``out`` (PNG), each iterative run's frames beside it, and what made them in the JSON."""
    from diffkit import io

    xs = noisy_images(backend, image, ts, seed)
    default = backend.default_timesteps()
    stride = stride or (default[0] - default[1] if len(default) > 1 else 1)
    rows, names, frames = [], ["noisy"] + methods, {}
    for t_, x in zip(ts, xs):
        x = x[None]
        row = [backend.to_image(x).float().cpu()]
        for m in methods:
            if m == "blur":
                row.append(backend.to_image(blur(x)).float().cpu())
            elif m == "onestep":
                row.append(backend.to_image(one_step(backend, x, t_, prompt)).float().cpu())
            else:
                it = iterative(backend, x, t_, stride, prompt, seed=seed)
                row.append(it.final)
                frames[t_] = it.frames
        rows.append(row)
    cols = [torch.cat([r[k] for r in rows]) for k in range(len(names))]
    io.save_png(io.labelled_columns(cols, names), out)
    for t_, fr in frames.items():
        io.save_png(io.labelled_columns(fr, [f"step {5 * k}" for k in range(len(fr))]),
                    out.with_name(f"{out.stem}-iterative-t{t_}.png"))
    io.write_json(out.with_suffix(".json"), {"image": image_path, "t": ts, "methods": methods, "backend": backend.name,
                                             "prompt": prompt, "stride": stride, "seed": seed})


def denoiser_named(options: dict[str, Any]) -> str | None:
    """`diffkit denoise` without an image studies a one-step MNIST denoiser, given as the mnist backend's
    ``--checkpoint`` names its models."""
    return options.get("checkpoint")


def denoiser_figure(model: torch.nn.Module, x: Tensor, levels: list[float], seed: int, out: Any,
                    checkpoint: str, config: dict[str, Any]) -> dict[float, float]:
    """:func:`denoiser_study` as a figure (noisy and denoised digits at each level) and a JSON of its test
    MSE per level beside the checkpoint and the noise level it was trained at; the MSEs."""
    from diffkit import io

    noisy, den, mse = denoiser_study(model, x, levels, seed)
    cols = []
    for k in range(len(levels)):
        cols += [noisy[k], den[k]]
    io.save_png(io.labelled_columns(cols, [f"s={s:g}" if j == 0 else "out" for s in levels for j in (0, 1)]), out)
    io.write_json(out.with_suffix(".json"), {"checkpoint": checkpoint,
                                             "test_mse": {str(k): v for k, v in mse.items()},
                                             "trained_sigma": config.get("sigma"), "seed": seed})
    return mse
