"""Views: exact, invertible transforms of ``[N x C x H x W]`` tensors (all channels), for anagrams.

Only orthogonal transforms (permutations of pixels, sign flips) are valid: they commute with adding
Gaussian noise, so the viewed noisy image is a noisy image of the viewed clean image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class View:
    """A named transform with its exact inverse."""

    name: str
    forward: Callable[[Tensor], Tensor]
    inverse: Callable[[Tensor], Tensor]
    help: str = ""


def _square(f: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    def g(x: Tensor) -> Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"this view needs square images, got {tuple(x.shape[-2:])}")
        return f(x)
    return g


def patch_permutation(grid: int, seed: int = 0) -> Tensor:
    """A fixed permutation of ``grid * grid`` patches that moves every patch (a derangement)."""
    g = torch.Generator().manual_seed(seed)
    n = grid * grid
    while True:
        p = torch.randperm(n, generator=g)
        if not (p == torch.arange(n)).any():
            return p


def _patches(x: Tensor, grid: int, perm: Tensor) -> Tensor:
    """Rearrange the ``grid x grid`` patches of ``x``: output patch i is input patch ``perm[i]``."""
    n, c, h, w = x.shape
    if h % grid or w % grid:
        raise ValueError(f"jigsaw view needs sizes divisible by {grid}, got {h}x{w}")
    ph, pw = h // grid, w // grid
    p = x.reshape(n, c, grid, ph, grid, pw).permute(0, 1, 2, 4, 3, 5).reshape(n, c, grid * grid, ph, pw)
    p = p[:, :, perm.to(x.device)]
    return p.reshape(n, c, grid, grid, ph, pw).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def jigsaw(grid: int = 4, seed: int = 0) -> View:
    perm = patch_permutation(grid, seed)
    inv = torch.argsort(perm)
    return View(f"jigsaw{grid}" if grid != 4 else "jigsaw", lambda x: _patches(x, grid, perm),
                lambda x: _patches(x, grid, inv), f"shuffle a {grid}x{grid} grid of patches (fixed permutation)")


BUILTIN = [
    View("identity", lambda x: x, lambda x: x, "the image as it is"),
    View("flip_v", lambda x: x.flip(-2), lambda x: x.flip(-2), "upside down (vertical flip)"),
    View("flip_h", lambda x: x.flip(-1), lambda x: x.flip(-1), "mirror (horizontal flip)"),
    View("rot90", _square(lambda x: x.rot90(1, (-2, -1))), lambda x: x.rot90(-1, (-2, -1)), "rotate 90 degrees counter-clockwise"),
    View("rot180", lambda x: x.rot90(2, (-2, -1)), lambda x: x.rot90(-2, (-2, -1)), "rotate 180 degrees"),
    View("rot270", _square(lambda x: x.rot90(-1, (-2, -1))), lambda x: x.rot90(1, (-2, -1)), "rotate 90 degrees clockwise"),
    View("negate", lambda x: -x, lambda x: -x, "negative (x -> -x; meant for zero-centred backends such as IF)"),
    View("transpose", _square(lambda x: x.transpose(-1, -2)), lambda x: x.transpose(-1, -2), "swap rows and columns"),
    jigsaw(4),
    jigsaw(2),
]
