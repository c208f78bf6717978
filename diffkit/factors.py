"""Factors for factorized diffusion (Geng, Park, Owens, ECCV 2024): linear filters of a noise estimate
whose sum over a decomposition is the identity, so each component can come from another prompt.

A :class:`Factor` filters ``[N x C x H x W]`` noise channels; ``factor`` is the stage's size over the first
stage's (IF II: 4), by which the release scales its kernels (``kernel * factor``, rounded up to odd;
``sigma * factor``). The built-in ones are the release's, under its names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

from diffkit.filters import grayscale, lowpass, motion_blur, scaled_kernel
from diffkit.params import Param


@dataclass(frozen=True)
class Factor:
    """A named component: ``apply(eps, factor, **args)`` -> its part of ``eps``. ``params`` are its
    arguments (``low_pass:sigma=1,kernel=9``); ``channels`` the noise channels it needs (0: any)."""

    name: str
    apply: Callable[..., Tensor]
    params: tuple[Param, ...] = ()
    help: str = ""
    channels: int = 0

    def __call__(self, eps: Tensor, factor: float, args: dict[str, Any]) -> Tensor:
        return self.apply(eps, factor, **args)


def _kernel(kernel: int, sigma: float, factor: float) -> tuple[int, float]:
    return scaled_kernel(kernel, sigma, factor)


def _triple(eps: Tensor, factor: float, sigma_1: float, sigma_2: float, kernel: int) -> tuple[Tensor, Tensor, Tensor]:
    """The three bands: a Gaussian of ``sigma_1`` splits off the high band; a second one of ``sigma_2``,
    applied after it, the low band from what remains (the release's compute_triple_bandpass)."""
    k, s1 = _kernel(kernel, sigma_1, factor)
    _, s2 = _kernel(kernel, sigma_2, factor)
    mid = lowpass(eps, k, s1)
    low = lowpass(mid, k, s2)
    return low, mid - low, eps - mid


def _motion_size(length: int, factor: float) -> int:
    size = round(length * factor)
    return size + (size % 2 == 0)


SIGMA = Param("sigma", float, 2.0, "Gaussian standard deviation, in pixels of the first stage", range=(0.01, 1000.0))
KERNEL = Param("kernel", int, 33, "Gaussian kernel size (odd), in pixels of the first stage", range=(1, 1023))
TRIPLE = (Param("sigma_1", float, 1.0, "the Gaussian between the high and medium bands", range=(0.01, 1000.0)),
          Param("sigma_2", float, 2.0, "the Gaussian, after the first, between the medium and low bands",
                range=(0.01, 1000.0)),
          Param("kernel", int, 25, "Gaussian kernel size (odd), in pixels of the first stage", range=(1, 1023)))
LENGTH = Param("length", int, 7, "length of the 45-degree line kernel, in pixels of the first stage", range=(1, 255))

BUILTIN: list[Factor] = [
    Factor("low_pass", lambda e, f, sigma, kernel: lowpass(e, *_kernel(kernel, sigma, f)), (SIGMA, KERNEL),
           "the low frequencies: a Gaussian blur (hybrid images)"),
    Factor("high_pass", lambda e, f, sigma, kernel: e - lowpass(e, *_kernel(kernel, sigma, f)), (SIGMA, KERNEL),
           "the high frequencies: the residual of the blur"),
    Factor("triple_low_pass", lambda e, f, **a: _triple(e, f, **a)[0], TRIPLE, "the low band of three"),
    Factor("triple_medium_pass", lambda e, f, **a: _triple(e, f, **a)[1], TRIPLE, "the medium band of three"),
    Factor("triple_high_pass", lambda e, f, **a: _triple(e, f, **a)[2], TRIPLE, "the high band of three"),
    Factor("grayscale", lambda e, f: grayscale(e), (), "each pixel's mean over the three channels", channels=3),
    Factor("color", lambda e, f: e - grayscale(e), (), "the colour: what the grayscale leaves", channels=3),
    Factor("motion", lambda e, f, length: motion_blur(e, _motion_size(length, f)), (LENGTH,),
           "a 45-degree motion blur (what is seen when the picture is shaken)"),
    Factor("motion_res", lambda e, f, length: e - motion_blur(e, _motion_size(length, f)), (LENGTH,),
           "the residual of the motion blur (what is seen when still)"),
    Factor("scale", lambda e, f, weight: weight * e, (Param("weight", float, 1.0, "the estimate's weight",
                                                            range=(-1000.0, 1000.0)),),
           "the whole estimate times a weight (prompt arithmetic: the parts' weights sum to 1)"),
]

# Decompositions whose parts sum to the identity (tests/test_factorize.py checks each).
IDENTITIES = [("low_pass", "high_pass"), ("triple_low_pass", "triple_medium_pass", "triple_high_pass"),
              ("grayscale", "color"), ("motion", "motion_res")]
