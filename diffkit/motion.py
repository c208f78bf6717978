"""How an image moves, for animations: the drawing helpers that views and techniques declare their
motions with (a view moves from the identity to itself, a technique says which clips its samples make),
and the :class:`Clip` a technique returns. A frame is ``[C x H x W]`` in [0, 1]; ``t`` runs over [0, 1].

Low in the layers, as filters.py is: core's views and animate.py use it, and so do the plugins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# A view's motion: ``(image, t) -> frame``, the image at t = 0 and (near) its view at t = 1; animate.py
# eases t and pins both ends, so the last frame is the view exactly.
Motion = Callable[[Tensor, float], Tensor]


@dataclass
class Clip:
    """One animation of one sample: ``frame(t)`` for t in [0, 1], captions for its two ends."""

    name: str  # the file stem's suffix: view1, factorize
    frame: Callable[[float], Tensor]  # [C x H x W] in [0, 1], the image's own size
    captions: tuple[str, str]
    canvas: float = 1.5  # the canvas, in image sizes


def smooth(t: float) -> float:
    """Ease in and out (smoothstep)."""
    return t * t * (3 - 2 * t)


def warp(img: Tensor, matrix: Tensor, shift: tuple[float, float] = (0.0, 0.0), size: int | None = None,
          about: tuple[float, float] | None = None) -> tuple[Tensor, Tensor]:
    """``img`` ``[C x H x W]`` moved by ``p -> matrix (p - about) + about + shift`` (pixel coordinates
    ``(x, y)``), drawn on a ``size x size`` canvas centred on the image: (colour, coverage)."""
    c, h, w = img.shape
    size = size or h
    ax, ay = about if about is not None else ((w - 1) / 2, (h - 1) / 2)
    off = (size - w) / 2, (size - h) / 2
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    px, py = xs - off[0] - shift[0] - ax, ys - off[1] - shift[1] - ay  # canvas -> image, inverted
    inv = torch.linalg.inv(matrix.double())
    sx = inv[0, 0] * px + inv[0, 1] * py + ax
    sy = inv[1, 0] * px + inv[1, 1] * py + ay
    grid = torch.stack([(sx + 0.5) / w * 2 - 1, (sy + 0.5) / h * 2 - 1], -1)[None].float()
    rgba = torch.cat([img, torch.ones(1, h, w)])[None].float()
    out = F.grid_sample(rgba, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return out[:c], out[c:]


def rotation(deg: float) -> Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]], dtype=torch.float64)  # y down


def on_white(parts: list[tuple[Tensor, Tensor]], c: int, size: int) -> Tensor:
    out = torch.ones(c, size, size)
    for colour, alpha in parts:
        out = out * (1 - alpha) + colour * alpha
    return out.clamp(0, 1)


def turn(img: Tensor, deg: float) -> Tensor:
    return on_white([warp(img, rotation(deg))], img.shape[0], img.shape[-1])


def reflect(img: Tensor, t: float, axis_deg: float) -> Tensor:
    """A reflection across the line at ``axis_deg`` seen as a card flipping about it: the other axis
    squashed by cos(pi t)."""
    r = rotation(axis_deg)
    squash = torch.diag(torch.tensor([1.0, math.cos(math.pi * t)], dtype=torch.float64))
    return on_white([warp(img, r.T @ squash @ r)], img.shape[0], img.shape[-1])


def travel(img: Tensor, t: float, index: Tensor) -> Tensor:
    """Every pixel from where it is to where the view puts it, in a straight line (any permutation)."""
    c, h, w = img.shape
    dest = torch.empty_like(index)
    dest[index] = torch.arange(h * w)
    src = torch.arange(h * w)
    y = (1 - t) * (src // w).double() + t * (dest // w).double()
    x = (1 - t) * (src % w).double() + t * (dest % w).double()
    out = torch.ones(c, h, w)
    yi, xi = y.round().long().clamp(0, h - 1), x.round().long().clamp(0, w - 1)
    out[:, yi, xi] = img.reshape(c, -1)
    return out
