"""A third-party diffkit view, written from docs/hooks.md: ``slide``, the image rolled sideways by half
its width (wrapping), declared with its motion, so `diffkit animate` shows it sliding there with no
change to diffkit."""

from __future__ import annotations

from torch import Tensor

from diffkit.hookspecs import hookimpl
from diffkit.views import View


def roll(x: Tensor, k: int) -> Tensor:
    return x.roll(k, -1)


def slide(image: Tensor, t: float) -> Tensor:
    """The frame at eased ``t``: every column moved ``t`` of the way (whole pixels), wrapping."""
    w = image.shape[-1]
    return roll(image, round(t * (w // 2)))


SLIDE = View("slide", lambda x: roll(x, x.shape[-1] // 2), lambda x: roll(x, -(x.shape[-1] // 2)),
             "rolled sideways by half the width, wrapping", motion=slide)


@hookimpl
def diffkit_views() -> list[View]:
    return [SLIDE]
