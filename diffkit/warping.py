"""Laplacian pyramid warping (LookingGlass, Chang et al. 2025, sec. 4 and its supplementary pseudocode):
views that are not permutations (a rotation by any angle, a zoom, a mirror about any axis) act on clean
images only, through a Laplacian pyramid, so neither aliasing (a view shrinking the image reads a coarser
level) nor holes (pixels no view pixel lands on) break the average of the views.

A warp is given by where each pixel of the view comes from: ``source`` ``[H x W x 2]``, canonical pixel
coordinates ``(x, y)`` (NaN or outside the image: the view pixel shows nothing of it). Each view pixel
reads one level of the canonical image's Gaussian pyramid, chosen by how much the warp shrinks around
it (its level of detail, ``0.85 log2 |J|``, ``J`` the warp's Jacobian), at its source's nearest pixel.
The inverse is the adjoint of that reading (a splat), normalised by how much landed on each pyramid
pixel: the pseudocode's gradient of ``0.5 |view(pyramid) - image|^2`` at the zero pyramid, with a count
channel. Holes are filled from the nearest pixel that has a value before each level's band is taken,
and marked NaN again after, so the average of the views skips them.

diffusers and kornia have pyramids but neither this warp nor its inverse: written here from the paper.
The hole filling uses scipy's distance transform, as the pseudocode does (``pip install scipy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LOD_SCALE = 0.85  # the pseudocode's level-of-detail bias: 0.85 log2 of the Jacobian's norm
BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])  # the 5x5 kernel, [1 4 6 4 1]^T [1 4 6 4 1] / 256


def _blur(x: Tensor) -> Tensor:
    """The 5x5 binomial blur, reflect-padded, every channel alone ``[N x C x H x W]``."""
    k = torch.outer(BINOMIAL, BINOMIAL).to(x.dtype) / 256
    c = x.shape[1]
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k.expand(c, 1, 5, 5).to(x.device), groups=c)


def pyr_down(x: Tensor) -> Tensor:
    return _blur(x)[..., ::2, ::2]


def pyr_up(x: Tensor) -> Tensor:
    n, c, h, w = x.shape
    y = x.new_zeros(n, c, 2 * h, 2 * w)
    y[..., ::2, ::2] = x
    return _blur(y) * 4


def levels_for(h: int, w: int, most: int) -> int:
    """How many levels an ``h x w`` image's pyramid takes, at most ``most``: each level halves both sides
    exactly, and every level that is reduced again keeps at least 3 pixels a side (the blur's reflection)."""
    n = 1
    while n < most and h % 2 ** n == 0 and w % 2 ** n == 0 and min(h, w) // 2 ** (n - 1) >= 3:
        n += 1
    return n


def laplacian(x: Tensor, levels: int) -> list[Tensor]:
    """The Laplacian pyramid, finest first, the last level the coarsest Gaussian one."""
    out = []
    for _ in range(levels - 1):
        down = pyr_down(x)
        out.append(x - pyr_up(down))
        x = down
    return out + [x]


def gaussian_of(lp: list[Tensor]) -> list[Tensor]:
    """The Gaussian pyramid a Laplacian one reconstructs, finest first (``[0]`` is the image)."""
    g = [lp[-1]]
    for band in reversed(lp[:-1]):
        g.append(band + pyr_up(g[-1]))
    return g[::-1]


@dataclass(frozen=True)
class Reading:
    """Where a warp's view pixels read the canonical pyramid: for each level, the view pixels that read it
    (flat indices into ``H x W``) and the pixel of that level each reads (flat indices into its grid)."""

    pixels: list[Tensor]
    sources: list[Tensor]


def level_of_detail(source: Tensor, levels: int) -> Tensor:
    """Each view pixel's level ``[H x W]``: ``0.85 log2`` of the Frobenius norm of the warp's Jacobian
    (central differences, zero at the border as the pseudocode pads), clamped to the pyramid, rounded."""
    def d(a: Tensor, dim: int) -> Tensor:  # central difference along rows (0) or columns (1), 0 at the border
        out = torch.zeros_like(a)
        if dim == 0:
            out[1:-1] = (a[2:] - a[:-2]) / 2
        else:
            out[:, 1:-1] = (a[:, 2:] - a[:, :-2]) / 2
        return out

    norm = torch.sqrt(sum(d(source[..., i], k) ** 2 for i in (0, 1) for k in (0, 1))).clamp(min=1e-6)
    lod = (LOD_SCALE * torch.log2(norm)).clamp(0, levels - 1)
    return torch.round(lod).long()  # the nearest level, as grid_sample's nearest mode picks it


def reading(source: Tensor, levels: int) -> Reading:
    """Each view pixel's level and the pixel of that level it reads (nearest, as a nearest-upsampled level
    is read): the view pixels whose source lies outside the image read nothing."""
    h, w = source.shape[:2]
    lod = level_of_detail(source, levels)
    xr, yr = torch.round(source[..., 0]), torch.round(source[..., 1])
    inside = (xr >= 0) & (xr <= w - 1) & (yr >= 0) & (yr <= h - 1)  # NaN compares False: outside
    xi, yi = xr.nan_to_num(0).long(), yr.nan_to_num(0).long()
    pixels, sources = [], []
    for k in range(levels):
        q = (inside & (lod == k)).flatten().nonzero()[:, 0]
        pixels.append(q)
        sources.append((yi.flatten()[q] >> k) * (w >> k) + (xi.flatten()[q] >> k))
    return Reading(pixels, sources)


def read(gp: list[Tensor], r: Reading, h: int, w: int) -> Tensor:
    """The view of a Gaussian pyramid ``gp`` ``[N x C x h_k x w_k]``: ``[N x C x H x W]``, NaN where the view
    reads nothing."""
    n, c = gp[0].shape[:2]
    out = gp[0].new_full((n, c, h * w), float("nan"))
    for level, q, s in zip(gp, r.pixels, r.sources):
        out[..., q] = level.flatten(2)[..., s]
    return out.view(n, c, h, w)


def forward(image: Tensor, r: Reading, levels: int) -> Tensor:
    """A warp's view of ``image`` ``[N x C x H x W]``: each view pixel from its level of the image's Gaussian
    pyramid; NaN where it reads nothing."""
    h, w = image.shape[-2:]
    return read(gaussian_of(laplacian(image, levels)), r, h, w)


def check_scipy() -> None:
    """Refuse, naming the fix, where scipy (the hole filling's distance transform) is not installed."""
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        raise ValueError("a view that is no permutation (LookingGlass's pyramid warping) fills holes with scipy's "
                         "distance transform: pip install scipy") from None


def _fill_nearest(x: Tensor, missing: Tensor) -> Tensor:
    """``x`` ``[N x C x h x w]`` with each missing pixel (``missing`` ``[N x h x w]``) given the value of the
    nearest pixel that has one (scipy's Euclidean distance transform, as the pseudocode)."""
    check_scipy()
    from scipy.ndimage import distance_transform_edt

    out = x.clone()
    for i in range(x.shape[0]):
        m = missing[i].cpu().numpy()
        if not m.any() or m.all():
            continue
        _, (iy, ix) = distance_transform_edt(m, return_indices=True)
        iy, ix = torch.from_numpy(iy).to(x.device), torch.from_numpy(ix).to(x.device)
        out[i] = x[i][:, iy, ix]
    return out


def inverse(image: Tensor, r: Reading, levels: int) -> list[Tensor]:
    """The Laplacian pyramid whose view is ``image`` ``[N x C x H x W]`` as far as the view shows it: the
    adjoint of :func:`read` through the pyramid's reconstruction, over a count channel, at the zero
    pyramid (the pseudocode's ``inverse_view``); NaN where nothing landed."""
    n, c, h, w = image.shape
    shapes = [(h >> k, w >> k) for k in range(levels)]
    with torch.inference_mode(False), torch.enable_grad():
        # autograd keeps the indices for the backward pass: normal tensors, not the run's inference-mode ones
        r = Reading([q.clone() for q in r.pixels], [s.clone() for s in r.sources])
        lp = [torch.zeros(n, c + 1, hk, wk, dtype=image.dtype, device=image.device, requires_grad=True)
              for hk, wk in shapes]
        seen = read(gaussian_of(lp), r, h, w)
        target = torch.cat([image, torch.ones_like(image[:, :1])], dim=1).clone()
        shown = ~torch.isnan(seen[:, :1])
        loss = 0.5 * torch.where(shown, seen.nan_to_num(0) - target, torch.zeros_like(target)).pow(2).sum()
        grads = torch.autograd.grad(loss, lp)
    out = []
    for k, g in enumerate(grads):
        g = -g.detach()
        level = g[:, :c] / g[:, c:]  # 0 / 0 where nothing landed: NaN
        if k < levels - 1:
            missing = torch.isnan(level[:, 0])
            if missing.all():
                out.append(level)
                continue
            filled = _fill_nearest(level, missing)
            level = filled - pyr_up(pyr_down(filled))
            level[missing[:, None].expand_as(level)] = float("nan")
        out.append(level)
    return out


def blend(pyramids: list[list[Tensor]], detail: float) -> Tensor:
    """The views' pyramids averaged level by level over the views that have a value (the paper's eq. 13),
    moved ``detail`` of the way to the value-weighted average ``sum |x| x / sum |x|`` (eq. 14-15), and the
    image reconstructed."""
    levels = []
    for parts in zip(*pyramids):
        x = torch.stack(parts)
        have = ~torch.isnan(x)
        x0 = torch.where(have, x, torch.zeros_like(x))
        mean = x0.sum(0) / have.sum(0)
        if detail:
            weighted = (x0.abs() * x0).sum(0) / x0.abs().sum(0).clamp(min=1e-8)
            mean = mean + detail * (weighted - mean)
        levels.append(mean)
    return gaussian_of(levels)[0]


def rotation(h: int, w: int, degrees: float) -> Tensor:
    """``[H x W x 2]``: the view turned ``degrees`` counter-clockwise about the centre; each view pixel's source."""
    a = math.radians(degrees)
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    cx, cy = (w - 1) / 2, (h - 1) / 2
    dx, dy = x - cx, y - cy
    # a counter-clockwise turn on screen (y down): the view's top-left corner shows the source's top-right
    sx = cx + math.cos(a) * dx - math.sin(a) * dy
    sy = cy + math.sin(a) * dx + math.cos(a) * dy
    return torch.stack([sx, sy], dim=-1)


def zoom(h: int, w: int, factor: float) -> Tensor:
    """``[H x W x 2]``: the view magnified ``factor`` times about the centre (below 1: shrunk)."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    cx, cy = (w - 1) / 2, (h - 1) / 2
    return torch.stack([cx + (x - cx) / factor, cy + (y - cy) / factor], dim=-1)


def mirror(h: int, w: int, degrees: float) -> Tensor:
    """``[H x W x 2]``: the view mirrored about the line through the centre at ``degrees`` from the horizontal
    (counter-clockwise on screen: 0 mirrors top and bottom, 90 left and right)."""
    a = math.radians(degrees)
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    cx, cy = (w - 1) / 2, (h - 1) / 2
    dx, dy = x - cx, -(y - cy)  # y up
    c2, s2 = math.cos(2 * a), math.sin(2 * a)
    return torch.stack([cx + c2 * dx + s2 * dy, cy - (s2 * dx - c2 * dy)], dim=-1)


def cone(h: int, w: int, degrees: float) -> Tensor:
    """``[H x W x 2]``: a conic mirror anamorphosis. A mirror cone with apex half-angle ``degrees`` (under 45,
    so the reflections come down to the table) stands on the image's centre, seen from straight above its
    apex, far away; the view is what is seen then, the cone's base circle filling the view's inscribed
    circle. A vertical ray meeting the cone at radius ``rho`` (of its base radius ``R``) reflects, in its own
    radial plane, down to the table at radius ``rho + 2 k^2 (R - rho) / (k^2 - 1)``, ``k = 1 / tan(degrees)``:
    the view's centre (the apex) shows the outer ring, its rim the cone's base circle; outside the rim (the
    view's corners) the table around the cone is seen directly. ``R`` is chosen so that the outer ring
    touches the image's inscribed circle."""
    k = 1 / math.tan(math.radians(degrees))
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    cx, cy = (w - 1) / 2, (h - 1) / 2
    half = min(cx, cy) + 0.5  # the inscribed circle's radius, in pixels
    outer = 2 * k * k / (k * k - 1)  # the table radius the apex shows, in base radii
    R = half / outer
    dx, dy = x - cx, y - cy
    dist = torch.sqrt(dx * dx + dy * dy)  # from the view's centre, in pixels
    rho = dist / half * R  # where the view pixel meets the cone, seen from above (the cone fills the view)
    r = rho + 2 * k * k * (R - rho) / (k * k - 1)  # where its reflection meets the table, in the same direction
    r = torch.where(rho > R, rho, r)  # beyond the rim: the table itself
    scale = torch.where(dist > 0, r / dist.clamp(min=1e-12), torch.zeros_like(dist))
    return torch.stack([cx + dx * scale, cy + dy * scale], dim=-1)
