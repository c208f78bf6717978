"""Built-in anagram views: the Visual Anagrams release's set (flips, rotations, negation, skew, inner circle,
square hinge, patch and pixel permutations, a procedural jigsaw, permutations from files) and transpose,
each with its geometry and the motion its animation shows (a rotation turns, a flip flips, the jigsaw's
pieces travel and turn into place; a view without one has its pixels travel); and LookingGlass's warps,
which are no permutations (a turn by any angle, a zoom, a mirror about any axis: anagram's reduction=x0)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from diffkit.hookspecs import hookimpl
from diffkit.motion import on_white, reflect, rotation, turn, warp
from diffkit.params import REQUIRED, Param
from diffkit import warping
from diffkit.views import (SizeError, View, ViewKind, Warp, need_square, square_only, from_index, patch_index,
                           patch_permutation, permutation_from_file)


# ---- geometry ----

def skew_index(h: int, w: int, factor: float = 1.5) -> Tensor:
    """Column ``i`` rolled down by ``int(factor * (i - w // 2))`` pixels, wrapping."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    shift = torch.tensor([int(factor * (i - w // 2)) for i in range(w)])
    src_rows = (rows - shift[None, :]) % h  # output (r, c) shows input (r - shift_c, c): rolled down
    return (src_rows * w + cols).flatten()


def inner_circle_index(h: int, w: int) -> Tensor:
    """The disc of radius 3/8 of the side (24 px at 64, 96 at 256) turned 180 degrees; the rest fixed."""
    need_square("inner_circle", h, w)
    r = h * 3 // 8
    c = torch.arange(h) - h // 2 + 0.5  # pixel centres about the image centre, as the release places them
    y, x = torch.meshgrid(c, c, indexing="ij")
    inside = (x * x + y * y < r * r).flatten()
    idx = torch.arange(h * w)
    return torch.where(inside, idx.flip(0), idx)  # 180 degrees about the centre: pixel k <-> h*w - 1 - k


def square_hinge_index(h: int, w: int) -> Tensor:
    """A 3x3 grid of squares of side ``h // 3``, each turned 90 degrees, the directions alternating as a
    checkerboard; leftover pixels (beyond 3 squares) fixed."""
    need_square("square_hinge", h, w)
    s = h // 3
    idx = torch.arange(h * w).reshape(h, w)
    for i in range(3):
        for j in range(3):
            k = -1 if (i + j) % 2 == 0 else 1
            idx[i * s:(i + 1) * s, j * s:(j + 1) * s] = idx[i * s:(i + 1) * s, j * s:(j + 1) * s].rot90(k, (0, 1))
    return idx.flatten()




# ---- the jigsaw: a real 4x4 puzzle, drawn procedurally ----
# Pieces: 4 corners, 8 edges, 4 inner pieces, with round tabs and blanks on every inner seam. The layout
# has the symmetry of a square turned 90 degrees about the image centre, and the two edge pieces of a
# side have the same shape, so a piece can be moved to any slot of its kind and turned to fit:
# corners and inner pieces by turning the whole layout (about the centre), edge pieces also by a shift
# along their side (the release's jigsaw, whose piece shapes are images drawn by hand; here the shapes
# are computed, so any size divisible by 4 works).

def _quarter(y: float, x: float, size: int, k: int) -> tuple[float, float]:
    """Pixel-centre coordinates turned ``k`` quarter turns clockwise about the image centre."""
    c = size / 2
    for _ in range(k % 4):
        y, x = x, 2 * c - y  # (y, x) -> (x, size - y) in centre coordinates: exact on half-integers
    return y, x


def jigsaw_labels(size: int) -> Tensor:
    """``[size x size]`` piece index (``4 * row + col`` of its home cell) of every pixel."""
    if size % 4:
        raise SizeError(f"view 'jigsaw' needs a side divisible by 4, got {size}")
    s = size // 4
    r_tab = 0.16 * s + 0.0137  # off the half-pixel grid: no pixel centre lies on a tab's rim
    d = round(0.48 * s) / 8  # a tab's centre beyond the seam (a multiple of 1/8: turns are exact), so it
    # joins its piece through a neck; d + 2 r < s / 2 with room to spare, so the tabs on two sides of a
    # cell never cut its corner off (at 28 pixels 0.2 s tabs did)
    # Seams of the top-left fundamental set (one per orbit of the quarter turn), each as (midpoint y,
    # midpoint x, normal into the receiving cell): vertical seams of the top row tab to the right, the
    # horizontal seams under the top edge pieces tab down, and the inner seam right of the top-left
    # inner piece tabs right. Turned four times these give every one of the 24 inner seams.
    seams = [(0.5 * s, 1 * s, (0, 1)), (0.5 * s, 2 * s, (0, 1)), (0.5 * s, 3 * s, (0, 1)),
             (1 * s, 1.5 * s, (1, 0)), (1 * s, 2.5 * s, (1, 0)), (1.5 * s, 2 * s, (0, 1))]
    tabs = []  # (centre y, centre x, owner cell, receiver cell)
    for my, mx, (ny, nx) in seams:
        for k in range(4):
            cy, cx = _quarter(my + d * ny, mx + d * nx, size, k)
            oy, ox = _quarter(my - 0.5 * s * ny, mx - 0.5 * s * nx, size, k)  # a point inside the owner cell
            owner = int(oy // s) * 4 + int(ox // s)
            ry, rx = _quarter(my + 0.5 * s * ny, mx + 0.5 * s * nx, size, k)
            receiver = int(ry // s) * 4 + int(rx // s)
            tabs.append((cy, cx, owner, receiver))
    ys = torch.arange(size, dtype=torch.float64) + 0.5
    yy, xx = torch.meshgrid(ys, ys, indexing="ij")
    labels = (yy // s).long() * 4 + (xx // s).long()
    home = labels.clone()
    for cy, cx, owner, receiver in tabs:
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r_tab * r_tab
        labels[disc & ((home == receiver) | (home == owner))] = owner
    return labels


def _orbit(cell: int) -> list[int]:
    """The cells a cell reaches by quarter turns of the 4x4 grid, in order (k = 0..3)."""
    out, (r, c) = [], divmod(cell, 4)
    for _ in range(4):
        out.append(r * 4 + c)
        r, c = c, 3 - r
    return out


JIGSAW_KINDS = {"corner": _orbit(0), "inner": _orbit(5), "edge_a": _orbit(1), "edge_b": _orbit(2)}


def jigsaw_moves(seed: int) -> dict[int, tuple[int, int, int]]:
    """Where each piece goes: ``piece -> (quarter turns, the cell the turn takes it to, its final slot)``;
    the final slot differs from the turned cell only for an edge piece whose side exchanges its two
    edge slots. Every piece ends in another slot than its own (a seeded draw; the same at every size)."""
    g = torch.Generator().manual_seed(seed)
    edges_a, edges_b = JIGSAW_KINDS["edge_a"], JIGSAW_KINDS["edge_b"]  # [side]: the side's two edge slots
    while True:
        moves = {}
        for kind in ("corner", "inner", "edge_a", "edge_b"):
            orbit = JIGSAW_KINDS[kind]
            to = torch.randperm(4, generator=g).tolist()  # orbit position j goes to position to[j]
            for j, piece in enumerate(orbit):
                moves[piece] = ((to[j] - j) % 4, orbit[to[j]], orbit[to[j]])
        swap = torch.randint(0, 2, (4,), generator=g).tolist()  # per side: exchange its two edge slots
        for piece, (k, turned, _) in moves.items():
            for side in range(4):
                if swap[side] and turned in (edges_a[side], edges_b[side]):
                    moves[piece] = (k, turned, edges_b[side] if turned == edges_a[side] else edges_a[side])
        if all(final != piece for piece, (_, _, final) in moves.items()):
            return moves


def jigsaw_index(h: int, w: int, seed: int = 0) -> Tensor:
    """Every pixel moved with its piece: turned about the image centre, then (an edge piece whose side
    exchanges its slots) shifted along the side by one cell."""
    need_square("jigsaw", h, w)
    labels = jigsaw_labels(h)
    s = h // 4
    moves = jigsaw_moves(seed)
    dest = torch.empty(h * w, dtype=torch.long)
    for y in range(h):
        for x in range(w):
            k, turned, final = moves[int(labels[y, x])]
            ty, tx = _quarter(y + 0.5, x + 0.5, h, k)
            ty += (final // 4 - turned // 4) * s
            tx += (final % 4 - turned % 4) * s
            dest[y * w + x] = int(ty) * w + int(tx)
    index = torch.empty_like(dest)
    index[dest] = torch.arange(h * w)  # output pixel dest[i] shows input pixel i
    return index


# ---- motions ----

def _circle_motion(img: Tensor, t: float) -> Tensor:
    c, h, w = img.shape
    r = h * 3 // 8
    cc = torch.arange(h) - h // 2 + 0.5
    yy, xx = torch.meshgrid(cc, cc, indexing="ij")
    disc = (xx**2 + yy**2 < r * r).float()
    return img * (1 - disc) + turn(img, 180 * t) * disc


def _hinge_motion(img: Tensor, t: float) -> Tensor:
    c, h, w = img.shape
    s = h // 3
    out = img.clone()
    for i in range(3):
        for j in range(3):
            k = -1 if (i + j) % 2 == 0 else 1  # the view's turn of this square (rot90 with k on (rows, cols))
            block = img[:, i * s:(i + 1) * s, j * s:(j + 1) * s]
            out[:, i * s:(i + 1) * s, j * s:(j + 1) * s] = turn(block, 90 * k * t)  # rot90 k=1: counter-clockwise
    return out


def _skew_motion(img: Tensor, t: float, factor: float) -> Tensor:
    c, h, w = img.shape
    out = torch.empty_like(img)
    for i in range(w):
        out[:, :, i] = img[:, :, i].roll(round(t * int(factor * (i - w // 2))), -1)
    return out



def _jigsaw_motion(img: Tensor, t: float, seed: int) -> Tensor:
    """Each piece turned about the image centre by its quarter turns and shifted along its side, both a
    fraction ``t`` of the way, drawn over the others."""
    c, h, w = img.shape
    labels = jigsaw_labels(h)
    s = h // 4
    parts = []
    for piece, (k, turned, final) in jigsaw_moves(seed).items():
        mask = (labels == piece).float()[None]
        shift = ((final % 4 - turned % 4) * s * t, (final // 4 - turned // 4) * s * t)
        both, cover = warp(torch.cat([img * mask, mask]), rotation(-90 * k * t), shift)  # quarter turns: clockwise
        colour, m = both[:c], both[c:]
        parts.append((colour / m.clamp(min=1e-6), m * cover))
    return on_white(parts, c, h)



# ---- the built-in views ----

def _spec(name: str, **args: object) -> str:
    return name + ":" + ",".join(f"{k}={v}" for k, v in args.items())


def _skew(factor: float = 1.5) -> View:
    view = from_index(_spec("skew", factor=factor), lambda h, w: skew_index(h, w, factor),
                      f"column i rolled down by int({factor:g} (i - W/2)) pixels, wrapping")
    return replace(view, motion=lambda img, t: _skew_motion(img, t, factor))


def _patch_permute(num_patches: int = 8, seed: int = 0, kind: str = "patch_permute") -> View:
    perm = patch_permutation(num_patches, seed)
    name = _spec(kind, num_patches=num_patches, seed=seed)
    return from_index(name, lambda h, w: patch_index(h, w, num_patches, perm, name),
                      f"{num_patches}x{num_patches} patches moved (a seeded derangement, seed {seed})")


def _jigsaw(seed: int = 0) -> View:
    view = from_index(_spec("jigsaw", seed=seed), lambda h, w: jigsaw_index(h, w, seed),
                      "a 4x4 jigsaw puzzle: corner, edge and inner pieces moved and turned to other slots")
    return replace(view, motion=lambda img, t: _jigsaw_motion(img, t, seed))


def _permute(file: str) -> View:
    perms = permutation_from_file(file)

    def index(h: int, w: int) -> Tensor:
        if h != w or h not in perms:
            raise SizeError(f"{file} holds permutations of {', '.join(f'{k}x{k}' for k in sorted(perms))} "
                             f"images, not {h}x{w}")
        return perms[h]

    view = from_index(_spec("permute", file=file), index, f"the permutation in {file}")
    return replace(view, files=(file,))


def _rotate(degrees: float = 135.0) -> Warp:
    return Warp(_spec("rotate", degrees=degrees), lambda h, w, t: warping.rotation(h, w, degrees * t),
                f"turned {degrees:g} degrees counter-clockwise about the centre (the corners show nothing of it)")


def _zoom(factor: float = 2.0) -> Warp:
    if factor <= 0:
        raise ValueError(f"zoom factor must be positive, got {factor:g}")
    return Warp(_spec("zoom", factor=factor), lambda h, w, t: warping.zoom(h, w, factor ** t),
                f"magnified {factor:g} times about the centre")


def _mirror(degrees: float = 45.0) -> Warp:
    def source(h: int, w: int, t: float) -> Tensor:
        return (1 - t) * warping.zoom(h, w, 1.0) + t * warping.mirror(h, w, degrees)
    return Warp(_spec("mirror", degrees=degrees), source,
                f"mirrored about the line through the centre at {degrees:g} degrees")


def _cone(degrees: float = 20.0) -> Warp:
    if not 0 < degrees < 45:
        raise ValueError(f"cone degrees (the apex half-angle) must be between 0 and 45 for the reflections to come "
                         f"down to the table, got {degrees:g}")

    def source(h: int, w: int, t: float) -> Tensor:  # on the way, each pixel moves straight to where the cone shows it
        return (1 - t) * warping.zoom(h, w, 1.0) + t * warping.cone(h, w, degrees)
    return Warp(_spec("cone", degrees=degrees), source,
                f"seen in a mirror cone (apex half-angle {degrees:g} degrees) standing on the centre, from above")


WARPS = [
    ViewKind("rotate", _rotate, (Param("degrees", float, 135.0, "counter-clockwise, any angle", range=(-360.0, 360.0)),),
             "turned by any angle (LookingGlass: reduction=x0 only)"),
    ViewKind("zoom", _zoom, (Param("factor", float, 2.0, "magnification about the centre (below 1: shrunk)",
                                   range=(0.125, 8.0)),), "magnified or shrunk (LookingGlass: reduction=x0 only)"),
    ViewKind("mirror", _mirror, (Param("degrees", float, 45.0, "the mirror line's angle from the horizontal",
                                       range=(-180.0, 180.0)),), "mirrored about any axis (LookingGlass: reduction=x0 "
                                                                  "only)"),
    ViewKind("cone", _cone, (Param("degrees", float, 20.0, "the mirror cone's apex half-angle (under 45)",
                                   range=(1.0, 44.0)),), "a conic mirror anamorphosis: the image as a mirror cone on "
                                                          "its centre shows it from above (LookingGlass: reduction=x0 "
                                                          "only)"),
]

SEED = Param("seed", int, 0, "seed of the permutation (recorded in run.json; the same at every size)",
             range=(0, 2**31 - 1))
KINDS: list[ViewKind] = [
    ViewKind("skew", _skew, (Param("factor", float, 1.5, "rows a column moves per column from the centre",
                                   range=(-64.0, 64.0)),), "columns rolled, wrapping"),
    ViewKind("patch_permute", _patch_permute, (Param("num_patches", int, 8, "patches per side (2 or more: each patch moves)",
                                                                     range=(2, 1024)),
                                               SEED), "square patches moved (the release's patch_permute)"),
    ViewKind("pixel_permute", lambda num_patches=64, seed=0: _patch_permute(num_patches, seed, "pixel_permute"),
             (Param("num_patches", int, 64, "cells per side: every pixel of a 64-pixel stage; at 256 pixels the "
                                            "same permutation moves 4x4 blocks (2 or more)", range=(2, 1024)), SEED),
             "every pixel moved (the release's pixel_permute)"),
    ViewKind("jigsaw", _jigsaw, (SEED,), "a 4x4 jigsaw puzzle, its pieces moved and turned"),
    ViewKind("permute", _permute, (Param("file", str, REQUIRED, "a permutation file (.npy, .npz, .safetensors, .pt, "
                                                                "or text): h*h source indices per size", kind="path"),),
             "any permutation from a file"),
]

_FLIP_V = (lambda x: x.flip(-2), lambda x: x.flip(-2))
_ROT_CCW = (square_only(lambda x: x.rot90(1, (-2, -1))), lambda x: x.rot90(-1, (-2, -1)))
_ROT_CW = (square_only(lambda x: x.rot90(-1, (-2, -1))), lambda x: x.rot90(1, (-2, -1)))
_ROT_180 = (lambda x: x.rot90(2, (-2, -1)), lambda x: x.rot90(-2, (-2, -1)))
def _turning(deg: float):
    return lambda img, t: turn(img, deg * t)


def _flipping(axis_deg: float):
    return lambda img, t: reflect(img, t, axis_deg)


BUILTIN: list[View | ViewKind] = [
    View("identity", help="the image as it is", motion=lambda img, t: img),
    View("flip_v", *_FLIP_V, "upside down (vertical flip)", motion=_flipping(0)),
    View("flip", *_FLIP_V, "upside down (the release's name for flip_v)", motion=_flipping(0)),
    View("flip_h", lambda x: x.flip(-1), lambda x: x.flip(-1), "mirror (horizontal flip)", motion=_flipping(90)),
    View("rot90", *_ROT_CCW, "rotate 90 degrees counter-clockwise", motion=_turning(90)),
    View("rotate_ccw", *_ROT_CCW, "rotate 90 degrees counter-clockwise (the release's name for rot90)",
         motion=_turning(90)),
    View("rot180", *_ROT_180, "rotate 180 degrees", motion=_turning(180)),
    View("rotate_180", *_ROT_180, "rotate 180 degrees (the release's name for rot180)", motion=_turning(180)),
    View("rot270", *_ROT_CW, "rotate 90 degrees clockwise", motion=_turning(-90)),
    View("rotate_cw", *_ROT_CW, "rotate 90 degrees clockwise (the release's name for rot270)", motion=_turning(-90)),
    View("negate", help="negative (x -> -x; meant for zero-centred backends such as IF)", negate=True,
         motion=lambda img, t: (1 - t) * img + t * (1 - img)),  # a cross-fade to the negative
    View("transpose", square_only(lambda x: x.transpose(-1, -2)), lambda x: x.transpose(-1, -2), "swap rows and columns",
         motion=_flipping(45)),
    replace(from_index("inner_circle", inner_circle_index, "the central disc (radius 3/8 of the side) turned 180 "
                       "degrees"), motion=_circle_motion),
    replace(from_index("square_hinge", square_hinge_index, "a 3x3 grid of squares each turned 90 degrees, "
                       "alternating"), motion=_hinge_motion),
    *KINDS,
    *WARPS,
]


@hookimpl
def diffkit_views() -> list[View | ViewKind]:
    return list(BUILTIN)
