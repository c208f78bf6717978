"""Factorized-diffusion hybrid images: low frequencies from one prompt, high from another."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from diffkit.hookspecs import hookimpl
from diffkit.state import Context, Query
from diffkit.technique import Combiner, Param


def gaussian_kernel(size: int, sigma: float) -> Tensor:
    """1-D Gaussian ``[size]``, normalised to sum 1."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(r**2) / (2 * sigma**2))
    return k / k.sum()


def lowpass(x: Tensor, size: int = 33, sigma: float = 2.0) -> Tensor:
    """Separable Gaussian blur of ``[N x C x H x W]``, every channel, reflect padding."""
    n, c, h, w = x.shape
    k = gaussian_kernel(size, sigma).to(x.device, x.dtype)
    pad = size // 2
    if pad >= min(h, w):
        raise ValueError(f"kernel {size} is too large for {h}x{w} images")
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), k.view(1, 1, 1, size))
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), k.view(1, 1, size, 1))
    return y.reshape(n, c, h, w)


def highpass(x: Tensor, size: int = 33, sigma: float = 2.0) -> Tensor:
    """``x - lowpass(x)``: the two are complementary by construction."""
    return x - lowpass(x, size, sigma)


class Hybrid(Combiner):
    name = "hybrid"
    help = "eps = lowpass(eps_1) + highpass(eps_2): the image reads as prompt 1 from afar, prompt 2 up close."
    params = (
        Param("prompt", str, help="the high-frequency prompt (or class)"),
        Param("kernel", int, 33, "Gaussian kernel size (odd)", range=(1, 1023)),
        Param("sigma", float, 2.0, "Gaussian standard deviation in pixels", range=(0.01, 1000.0)),
    )

    def __init__(self, **args):
        super().__init__(**args)
        if args["kernel"] < 1 or args["kernel"] % 2 == 0:
            raise ValueError(f"kernel must be a positive odd integer, got {args['kernel']}")
        if not args["sigma"] > 0:
            raise ValueError(f"sigma must be positive, got {args['sigma']}")

    def setup(self, ctx: Context) -> None:
        self.cond = ctx.encode_all(self.args["prompt"])

    def expand(self, query: Query) -> list[Query]:
        return [query, query if query.cond.is_null else query.with_cond(self.cond)]

    def reduce(self, query: Query, estimates: list[Tensor]) -> Tensor:
        e1, e2 = estimates
        k, s = self.args["kernel"], self.args["sigma"]
        return lowpass(e1, k, s) + highpass(e2, k, s)


@hookimpl
def diffkit_techniques():
    return [Hybrid]
