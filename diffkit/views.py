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

from diffkit.errors import UserError
from diffkit.params import REQUIRED, Param


class SizeError(UserError):
    """A view asked to act on an image size it cannot take (a jigsaw on a side not divisible by 4)."""


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
    files: tuple[str, ...] = ()  # files the view was made from (permute:file=...): a run records their hashes

    def forward(self, x: Tensor) -> Tensor:
        """The view of an image or of a model input, every channel: ``(-1)^negate permute(x)``."""
        y = self.permute(x)
        return -y if self.negate else y

    def inverse(self, x: Tensor) -> Tensor:
        """The exact inverse of :meth:`forward`, for images and for the noise channels of an estimate."""
        y = self.unpermute(x)
        return -y if self.negate else y


@dataclass(frozen=True)
class ViewKind:
    """A view that takes arguments (``patch_permute:16,seed=3``): ``make(**args)`` builds the :class:`View`
    from the values of its declared ``params`` (``Param``s, as a technique's). Its view's name is the
    whole spec with every argument, so two views of one kind never pass for each other."""

    name: str
    make: Callable[..., View]
    params: tuple[Param, ...] = ()
    help: str = ""


def check_view(view: View, size: int = 16) -> None:
    """Raise ValueError unless ``permute``/``unpermute`` only rearrange pixels and undo each other (on
    ``size x size`` images).

    A sign or any other change of values hidden in ``permute`` would reach IF's variance channels,
    which must only move with their pixels; a sign belongs in ``negate``.
    """
    x = torch.arange(1, 2 * size * size + 1, dtype=torch.float64).reshape(1, 2, size, size)
    for name, f in (("permute", view.permute), ("unpermute", view.unpermute)):
        y = f(x)
        if y.shape != x.shape or not torch.equal(y.flatten().sort().values, x.flatten().sort().values):
            raise ValueError(f"view {view.name!r}: {name} must only rearrange pixels (declare a sign with negate=True)")
        if not torch.equal(y[:, 1] - y[:, 0], torch.full_like(y[:, 0], size * size)):
            raise ValueError(f"view {view.name!r}: {name} must rearrange every channel alike")
    if not torch.equal(view.unpermute(view.permute(x)), x):
        raise ValueError(f"view {view.name!r}: unpermute does not undo permute")


def _square(f: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    def g(x: Tensor) -> Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise SizeError(f"this view needs square images, got {tuple(x.shape[-2:])}")
        return f(x)
    return g


def patch_permutation(grid: int, seed: int = 0) -> Tensor:
    """A fixed permutation of ``grid * grid`` patches that moves every patch (a derangement); ``grid`` >= 2
    (one patch has nowhere else to go: the draw below would never end)."""
    if grid < 2:
        raise ValueError(f"num_patches must be in 2..1024 (one patch cannot move), got {grid}")
    g = torch.Generator().manual_seed(seed)
    n = grid * grid
    while True:
        p = torch.randperm(n, generator=g)
        if not (p == torch.arange(n)).any():
            return p


def _patches(x: Tensor, grid: int, perm: Tensor) -> Tensor:
    """Rearrange the ``grid x grid`` patches of ``x``: output patch i is input patch ``perm[i]``."""
    n, c, h, w = x.shape
    ph, pw = h // grid, w // grid
    p = x.reshape(n, c, grid, ph, grid, pw).permute(0, 1, 2, 4, 3, 5).reshape(n, c, grid * grid, ph, pw)
    p = p[:, :, perm.to(x.device)]
    return p.reshape(n, c, grid, grid, ph, pw).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


# ---- views defined by a pixel permutation for each image size (the Visual Anagrams release's views) ----
# ``index(h, w)`` is a ``[h*w]`` LongTensor: output pixel ``i`` (raster order) takes input pixel
# ``index[i]``, as the release's ``PermuteView.view`` does (``im.flatten()[perm]``). The permutation is
# made anew for each size, from the same geometry (a 64-pixel stage and a 256-pixel one agree).

def _gather(x: Tensor, index: Tensor) -> Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, c, h * w)[:, :, index.to(x.device)].reshape(n, c, h, w)


def from_index(name: str, index: Callable[[int, int], Tensor], help: str = "") -> View:
    """A :class:`View` from a per-size permutation ``index(h, w)`` (cached per size); a size it cannot
    take is a ValueError from ``index``."""
    cache: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}

    def both(h: int, w: int) -> tuple[Tensor, Tensor]:
        if (h, w) not in cache:
            idx = index(h, w)
            cache[(h, w)] = idx, torch.argsort(idx)
        return cache[(h, w)]

    return View(name, lambda x: _gather(x, both(*x.shape[-2:])[0]), lambda x: _gather(x, both(*x.shape[-2:])[1]), help)


def _need_square(name: str, h: int, w: int) -> None:
    if h != w:
        raise SizeError(f"view {name!r} needs square images, got {h}x{w}")


def skew_index(h: int, w: int, factor: float = 1.5) -> Tensor:
    """Column ``i`` rolled down by ``int(factor * (i - w // 2))`` pixels, wrapping."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    shift = torch.tensor([int(factor * (i - w // 2)) for i in range(w)])
    src_rows = (rows - shift[None, :]) % h  # output (r, c) shows input (r - shift_c, c): rolled down
    return (src_rows * w + cols).flatten()


def inner_circle_index(h: int, w: int) -> Tensor:
    """The disc of radius 3/8 of the side (24 px at 64, 96 at 256) turned 180 degrees; the rest fixed."""
    _need_square("inner_circle", h, w)
    r = h * 3 // 8
    c = torch.arange(h) - h // 2 + 0.5  # pixel centres about the image centre, as the release places them
    y, x = torch.meshgrid(c, c, indexing="ij")
    inside = (x * x + y * y < r * r).flatten()
    idx = torch.arange(h * w)
    return torch.where(inside, idx.flip(0), idx)  # 180 degrees about the centre: pixel k <-> h*w - 1 - k


def square_hinge_index(h: int, w: int) -> Tensor:
    """A 3x3 grid of squares of side ``h // 3``, each turned 90 degrees, the directions alternating as a
    checkerboard; leftover pixels (beyond 3 squares) fixed."""
    _need_square("square_hinge", h, w)
    s = h // 3
    idx = torch.arange(h * w).reshape(h, w)
    for i in range(3):
        for j in range(3):
            k = -1 if (i + j) % 2 == 0 else 1
            idx[i * s:(i + 1) * s, j * s:(j + 1) * s] = idx[i * s:(i + 1) * s, j * s:(j + 1) * s].rot90(k, (0, 1))
    return idx.flatten()


def patch_index(h: int, w: int, grid: int, perm: Tensor, name: str) -> Tensor:
    """The ``grid x grid`` patches rearranged: output patch ``i`` is input patch ``perm[i]``."""
    if h % grid or w % grid:
        raise SizeError(f"view {name!r} needs sizes divisible by {grid}, got {h}x{w}"
                         + (f": give {name.split(':')[0]}:N with N dividing {h}" if h == w else ""))
    idx = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)
    return _patches(idx, grid, perm).flatten().long()


# The largest side a state of any stage has (IF stage III's 1024 pixels; SD's 8192-pixel images are
# 1024-latent states): a permutation file is judged against it before its data is read, so a header or a
# size that promises gigabytes is refused in microseconds, not after the memory is spent.
MAX_SIDE = 1024
_MAX_FILE = 8 * MAX_SIDE * MAX_SIDE * 4  # bytes: a few sizes of int64 indices
_MAX_TEXT = 8 * MAX_SIDE * MAX_SIDE  # one permutation as text: at most 7 digits and a separator an index


class PermutationFileError(UserError, ValueError):
    """A permutation file that cannot be used: missing, not a regular file, too large, damaged, pickled."""


def _npy_header(f, path: str, where: str = "") -> None:
    """Read a ``.npy`` header from ``f`` and refuse, before any data is read, what cannot be a permutation
    of at most ``MAX_SIDE``-pixel squares (a shape that promises gigabytes, non-integer numbers)."""
    import numpy as np

    try:
        fmt = np.lib.format
        major, _ = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
        shape, _, dtype = read(f, max_header_size=10_000)
    except Exception:  # noqa: BLE001 - a bad magic or header is the same refusal whatever numpy calls it
        raise PermutationFileError(f"{path}{where} is not a .npy file (its header does not read)") from None
    import math

    numel = math.prod(shape)
    if dtype.kind not in "iu":
        raise PermutationFileError(f"{path}{where} holds {dtype} numbers: a permutation is integers")
    if numel > MAX_SIDE * MAX_SIDE:
        raise PermutationFileError(f"{path}{where} declares {numel} numbers, more than the largest image any stage "
                                   f"has ({MAX_SIDE}x{MAX_SIDE} = {MAX_SIDE * MAX_SIDE})")


def _checked_file(path: str, limit: int = _MAX_FILE):
    """``path`` as a regular file of at most ``limit`` bytes, else a PermutationFileError saying what it is
    (never opened first: a FIFO would block, /dev/zero never ends)."""
    import stat
    from pathlib import Path

    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise PermutationFileError(f"permutation file not found: {path}" if not p.exists() else
                                   f"permutation file {path} cannot be read: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise PermutationFileError(f"permutation file {path} is a folder: give a file")
    if not stat.S_ISREG(st.st_mode):
        raise PermutationFileError(f"permutation file {path} is not a regular file (a device, a pipe or a "
                                   "socket): give a file")
    if st.st_size > limit:
        raise PermutationFileError(f"permutation file {path} has {st.st_size} bytes, more than a permutation of "
                                   f"the largest image any stage has ({MAX_SIDE}x{MAX_SIDE}) needs "
                                   f"({limit} at most)")
    return p


def permutation_from_file(path: str) -> dict[int, Tensor]:
    """Permutations (``[h*w]`` source indices, by side ``h``) from a file the user gives; never runs code:
    ``.npy`` (no pickles), ``.npz``/``.safetensors`` (one array per size: any names), ``.pt``/``.pth``
    (``torch.load(weights_only=True)``: a tensor or a dict of them), or text (whitespace-separated
    integers). Each must be a permutation of a square's pixels, at most ``MAX_SIDE`` on a side; sizes and
    headers are checked before any data is read. Refusals are :class:`PermutationFileError` s."""
    import math
    import pickle

    from pathlib import Path

    suffix = Path(path).suffix.lower()
    binary = suffix in (".npy", ".npz", ".safetensors", ".pt", ".pth")
    p = _checked_file(path, _MAX_FILE if binary else _MAX_TEXT)
    try:
        if suffix == ".npy":
            import numpy as np

            with open(p, "rb") as f:
                _npy_header(f, path)
            arrays = [torch.from_numpy(np.load(p, allow_pickle=False))]
        elif suffix == ".npz":
            import zipfile

            import numpy as np

            with zipfile.ZipFile(p) as z:
                names = [n for n in z.namelist() if n.endswith(".npy")]
                if not names or len(names) > 64:
                    raise PermutationFileError(f"{path} holds {len(names)} arrays: give one a size (1..64)")
                for name in names:
                    with z.open(name) as f:
                        _npy_header(f, path, f" ({name})")
            with np.load(p, allow_pickle=False) as z:
                arrays = [torch.from_numpy(z[k]) for k in z.files]
        elif suffix == ".safetensors":
            from safetensors import safe_open

            arrays = []
            with safe_open(p, "pt") as f:
                for k in f.keys():
                    sl = f.get_slice(k)
                    if math.prod(sl.get_shape()) > MAX_SIDE * MAX_SIDE:
                        raise PermutationFileError(f"{path} ({k}) declares {math.prod(sl.get_shape())} numbers, more "
                                                   f"than the largest image any stage has ({MAX_SIDE}x{MAX_SIDE})")
                    arrays.append(f.get_tensor(k))
        elif suffix in (".pt", ".pth"):
            try:
                try:  # mapped, not read: a tensor's declared storage is never allocated before it is checked
                    obj = torch.load(p, weights_only=True, map_location="cpu", mmap=True)
                except RuntimeError as e:
                    if "mmap" not in str(e):  # torch's legacy (non-zip) format cannot be mapped: read it
                        raise
                    obj = torch.load(p, weights_only=True, map_location="cpu")
            except pickle.UnpicklingError:
                raise PermutationFileError(f"{path} is not a plain tensor file (it holds pickled Python objects); "
                                           "nothing in it was run: save a tensor or a dict of tensors") from None
            arrays = list(obj.values()) if isinstance(obj, dict) else [obj]
            if not all(isinstance(a, Tensor) for a in arrays):
                raise PermutationFileError(f"{path} holds {type(obj).__name__}, not a tensor or a dict of tensors")
        else:
            import numpy as np

            arrays = [torch.from_numpy(np.array(p.read_text().split(), dtype=np.int64))]
    except PermutationFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same refusal
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PermutationFileError(f"cannot read a permutation from {path}: {type(e).__name__}: {first}") from None
    out = {}
    for a in arrays:
        a = torch.as_tensor(a).flatten()
        if a.is_complex() or a.is_floating_point() or a.dtype == torch.bool:
            raise PermutationFileError(f"{path}: a permutation must hold integers, got {a.dtype} numbers")
        side = math.isqrt(a.numel())
        if a.numel() == 0 or side * side != a.numel() or side > MAX_SIDE:
            raise PermutationFileError(f"{path}: a permutation must hold h*h integers (a square image's pixels, "
                                       f"h in 1..{MAX_SIDE}), got {a.numel()} integers")
        a = a.long()
        if not torch.equal(a.sort().values, torch.arange(a.numel())):
            raise PermutationFileError(f"{path}: the {side}x{side} array is not a permutation (each of "
                                       f"0..{a.numel() - 1} exactly once)")
        out[side] = a
    return out


# ---- the jigsaw: a real 4x4 puzzle, drawn procedurally ----
# Pieces: 4 corners, 8 edges, 4 inner pieces, with round tabs and blanks on every inner seam. The layout
# has the symmetry of a square turned 90 degrees about the image centre, and the two edge pieces of a
# side have the same shape, so a piece can be moved to any slot of its kind and turned to fit:
# corners and inner pieces by turning the whole layout (about the centre), edge pieces also by a shift
# along their side (the release's jigsaw, whose piece shapes are images drawn by hand; here the shapes
# are computed, so any size divisible by 4 works).

def _turn(y: float, x: float, size: int, k: int) -> tuple[float, float]:
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
            cy, cx = _turn(my + d * ny, mx + d * nx, size, k)
            oy, ox = _turn(my - 0.5 * s * ny, mx - 0.5 * s * nx, size, k)  # a point inside the owner cell
            owner = int(oy // s) * 4 + int(ox // s)
            ry, rx = _turn(my + 0.5 * s * ny, mx + 0.5 * s * nx, size, k)
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
    _need_square("jigsaw", h, w)
    labels = jigsaw_labels(h)
    s = h // 4
    moves = jigsaw_moves(seed)
    dest = torch.empty(h * w, dtype=torch.long)
    for y in range(h):
        for x in range(w):
            k, turned, final = moves[int(labels[y, x])]
            ty, tx = _turn(y + 0.5, x + 0.5, h, k)
            ty += (final // 4 - turned // 4) * s
            tx += (final % 4 - turned % 4) * s
            dest[y * w + x] = int(ty) * w + int(tx)
    index = torch.empty_like(dest)
    index[dest] = torch.arange(h * w)  # output pixel dest[i] shows input pixel i
    return index


# ---- the built-in views ----

def _spec(name: str, **args: object) -> str:
    return name + ":" + ",".join(f"{k}={v}" for k, v in args.items())


def _skew(factor: float = 1.5) -> View:
    return from_index(_spec("skew", factor=factor), lambda h, w: skew_index(h, w, factor),
                      f"column i rolled down by int({factor:g} (i - W/2)) pixels, wrapping")


def _patch_permute(num_patches: int = 8, seed: int = 0, kind: str = "patch_permute") -> View:
    perm = patch_permutation(num_patches, seed)
    name = _spec(kind, num_patches=num_patches, seed=seed)
    return from_index(name, lambda h, w: patch_index(h, w, num_patches, perm, name),
                      f"{num_patches}x{num_patches} patches moved (a seeded derangement, seed {seed})")


def _jigsaw(seed: int = 0) -> View:
    return from_index(_spec("jigsaw", seed=seed), lambda h, w: jigsaw_index(h, w, seed),
                      "a 4x4 jigsaw puzzle: corner, edge and inner pieces moved and turned to other slots")


def _permute(file: str) -> View:
    perms = permutation_from_file(file)

    def index(h: int, w: int) -> Tensor:
        if h != w or h not in perms:
            raise SizeError(f"{file} holds permutations of {', '.join(f'{k}x{k}' for k in sorted(perms))} "
                             f"images, not {h}x{w}")
        return perms[h]

    import dataclasses

    view = from_index(_spec("permute", file=file), index, f"the permutation in {file}")
    return dataclasses.replace(view, files=(file,))


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
_ROT_CCW = (_square(lambda x: x.rot90(1, (-2, -1))), lambda x: x.rot90(-1, (-2, -1)))
_ROT_CW = (_square(lambda x: x.rot90(-1, (-2, -1))), lambda x: x.rot90(1, (-2, -1)))
_ROT_180 = (lambda x: x.rot90(2, (-2, -1)), lambda x: x.rot90(-2, (-2, -1)))
BUILTIN: list[View | ViewKind] = [
    View("identity", help="the image as it is"),
    View("flip_v", *_FLIP_V, "upside down (vertical flip)"),
    View("flip", *_FLIP_V, "upside down (the release's name for flip_v)"),
    View("flip_h", lambda x: x.flip(-1), lambda x: x.flip(-1), "mirror (horizontal flip)"),
    View("rot90", *_ROT_CCW, "rotate 90 degrees counter-clockwise"),
    View("rotate_ccw", *_ROT_CCW, "rotate 90 degrees counter-clockwise (the release's name for rot90)"),
    View("rot180", *_ROT_180, "rotate 180 degrees"),
    View("rotate_180", *_ROT_180, "rotate 180 degrees (the release's name for rot180)"),
    View("rot270", *_ROT_CW, "rotate 90 degrees clockwise"),
    View("rotate_cw", *_ROT_CW, "rotate 90 degrees clockwise (the release's name for rot270)"),
    View("negate", help="negative (x -> -x; meant for zero-centred backends such as IF)", negate=True),
    View("transpose", _square(lambda x: x.transpose(-1, -2)), lambda x: x.transpose(-1, -2), "swap rows and columns"),
    from_index("inner_circle", inner_circle_index, "the central disc (radius 3/8 of the side) turned 180 degrees"),
    from_index("square_hinge", square_hinge_index, "a 3x3 grid of squares each turned 90 degrees, alternating"),
    *KINDS,
]
