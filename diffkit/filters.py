"""Image filters core needs and techniques share: the separable Gaussian low-pass of hybrid images
(Oliva et al. 2006) and of ``diffkit denoise``'s blur baseline. In core, not in the hybrid plugin,
because core never imports ``diffkit_plugins``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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


def scaled_kernel(kernel: int, sigma: float, factor: float) -> tuple[int, float]:
    """Kernel and sigma for an image ``factor`` times the size: the same cut-off in the picture's frequencies.

    The kernel is rounded up to odd (33 at 64 px -> 133 at 256 px, as the factorized-diffusion code does).
    """
    k = round(kernel * factor)
    return k + (k % 2 == 0), sigma * factor


def motion_blur(x: Tensor, size: int) -> Tensor:
    """``[N x C x H x W]`` averaged along the diagonal (a line kernel ``eye(size) / size``), every channel
    alone, zero padding: the Factorized Diffusion release's motion blur."""
    n, c, h, w = x.shape
    k = (torch.eye(size, dtype=x.dtype, device=x.device) / size)[None, None]
    return F.conv2d(x.reshape(n * c, 1, h, w), k, padding=size // 2).reshape(n, c, h, w)


def grayscale(x: Tensor) -> Tensor:
    """Each pixel's mean over the channels, on every channel."""
    return x.mean(1, keepdim=True).expand_as(x).contiguous()
