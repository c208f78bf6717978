"""Views for anagrams: orthogonal transforms of ``[N x C x H x W]`` tensors, declared by their parts.

Only orthogonal transforms are valid: they commute with adding Gaussian noise, so the viewed noisy
image is a noisy image of the viewed clean image. A view is a rearrangement of pixels (the same on
every channel) and optionally a sign. Declaring the two parts apart lets diffkit derive how a view
acts on everything a model sees and says:

- the model input (the noisy image, and IF stage II's upscaled image): the whole view, every channel;
- the noise channels of an estimate: the exact inverse, sign included;
- the other channels of an estimate (IF's learned variance, an interpolation weight, not an image):
  the inverse rearrangement only, never the sign.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


def _same(x: Tensor) -> Tensor:
    return x


@dataclass(frozen=True)
class View:
    """A named view: ``permute`` (pixels, every channel alike) then, if ``negate``, a sign flip.

    ``unpermute`` is ``permute``'s exact inverse. Registration checks that both only rearrange pixels.
    """

    name: str
    permute: Callable[[Tensor], Tensor] = _same
    unpermute: Callable[[Tensor], Tensor] = _same
    help: str = ""
    negate: bool = False

    def forward(self, x: Tensor) -> Tensor:
        """The view of an image or of a model input, every channel: ``(-1)^negate permute(x)``."""
        y = self.permute(x)
        return -y if self.negate else y

    def inverse(self, x: Tensor) -> Tensor:
        """The exact inverse of :meth:`forward`, for images and for the noise channels of an estimate."""
        y = self.unpermute(x)
        return -y if self.negate else y


def check_view(view: View) -> None:
    """Raise ValueError unless ``permute``/``unpermute`` only rearrange pixels and undo each other.

    A sign or any other change of values hidden in ``permute`` would reach IF's variance channels,
    which must only move with their pixels; a sign belongs in ``negate``.
    """
    x = torch.arange(1, 2 * 16 * 16 + 1, dtype=torch.float64).reshape(1, 2, 16, 16)
    for name, f in (("permute", view.permute), ("unpermute", view.unpermute)):
        y = f(x)
        if y.shape != x.shape or not torch.equal(y.flatten().sort().values, x.flatten().sort().values):
            raise ValueError(f"view {view.name!r}: {name} must only rearrange pixels (declare a sign with negate=True)")
        if not torch.equal(y[:, 1] - y[:, 0], torch.full_like(y[:, 0], 256)):
            raise ValueError(f"view {view.name!r}: {name} must rearrange every channel alike")
    if not torch.equal(view.unpermute(view.permute(x)), x):
        raise ValueError(f"view {view.name!r}: unpermute does not undo permute")


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


BUILTIN: list[View] = [
    View("identity", help="the image as it is"),
    View("flip_v", lambda x: x.flip(-2), lambda x: x.flip(-2), "upside down (vertical flip)"),
    View("flip_h", lambda x: x.flip(-1), lambda x: x.flip(-1), "mirror (horizontal flip)"),
    View("rot90", _square(lambda x: x.rot90(1, (-2, -1))), lambda x: x.rot90(-1, (-2, -1)), "rotate 90 degrees counter-clockwise"),
    View("rot180", lambda x: x.rot90(2, (-2, -1)), lambda x: x.rot90(-2, (-2, -1)), "rotate 180 degrees"),
    View("rot270", _square(lambda x: x.rot90(-1, (-2, -1))), lambda x: x.rot90(1, (-2, -1)), "rotate 90 degrees clockwise"),
    View("negate", help="negative (x -> -x; meant for zero-centred backends such as IF)", negate=True),
    View("transpose", _square(lambda x: x.transpose(-1, -2)), lambda x: x.transpose(-1, -2), "swap rows and columns"),
    jigsaw(4),
    jigsaw(2),
]
