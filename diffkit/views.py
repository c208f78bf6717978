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
from diffkit.motion import Motion, smooth, travel
from diffkit.params import Param


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
    # How an image moves into this view, for animations (diffkit animate): ``(image, t) -> frame`` with t
    # in (0, 1) eased; None: every pixel travels in a straight line to where the view puts it (and a
    # negating view cross-fades to the negative).
    motion: Motion | None = None

    def forward(self, x: Tensor) -> Tensor:
        """The view of an image or of a model input, every channel: ``(-1)^negate permute(x)``."""
        y = self.permute(x)
        return -y if self.negate else y

    def inverse(self, x: Tensor) -> Tensor:
        """The exact inverse of :meth:`forward`, for images and for the noise channels of an estimate."""
        y = self.unpermute(x)
        return -y if self.negate else y

    def image(self, image: Tensor) -> Tensor:
        """The view of an image ``[C x H x W]`` in [0, 1]: the pixels rearranged, the negative (1 - x) where
        the view negates (an image's zero is black, not the model's zero)."""
        moved = self.permute(image[None])[0]
        return 1 - moved if self.negate else moved

    def move(self, image: Tensor) -> Callable[[float], Tensor]:
        """``frame(t)`` for t in [0, 1]: ``image`` moving into this view, eased (smoothstep): the image itself
        at 0, :meth:`image` exactly at 1, the declared :attr:`motion` between. The view of the image (and
        the pixels' destinations, for a view without a motion) are computed once, not every frame."""
        end = self.image(image)
        index = None
        if self.motion is None:
            c, h, w = image.shape
            index = self.permute(torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)).flatten().long()

        def frame(t: float) -> Tensor:
            if t <= 0:
                return image
            if t >= 1:
                return end
            s = smooth(t)
            if self.motion is not None:
                return self.motion(image, s).clamp(0, 1)
            moved = travel(image, s, index)
            return ((1 - s) * moved + s * (1 - moved) if self.negate else moved).clamp(0, 1)

        return frame


@dataclass(frozen=True)
class Warp:
    """A view that is no permutation (a turn by any angle, a zoom, a mirror about any axis): noise seen
    through it is no longer noise, so it acts on clean images only, through a Laplacian pyramid
    (LookingGlass's warping; anagram's ``reduction=x0``). ``source(h, w, t)`` ``[h x w x 2]`` says where
    each pixel of the view comes from, in canonical pixel coordinates ``(x, y)`` (outside the image: the
    view shows nothing of it there); ``t`` in [0, 1] is the fraction of the way, for animations."""

    name: str
    source: Callable[[int, int, float], Tensor]
    help: str = ""
    files: tuple[str, ...] = ()

    def image(self, image: Tensor) -> Tensor:
        """The view of an image ``[C x H x W]`` in [0, 1] (nearest pixels), black where it shows nothing of it."""
        return self.frame(image, 1.0)

    def frame(self, image: Tensor, t: float) -> Tensor:
        """The view ``t`` of the way, ``[C x H x W]``."""
        from diffkit import warping

        h, w = image.shape[-2:]
        r = warping.reading(self.source(h, w, t), 1)
        return warping.forward(image[None].double(), r, 1)[0].nan_to_num(0).to(image.dtype)

    def move(self, image: Tensor) -> Callable[[float], Tensor]:
        """``frame(t)``: the image turning (zooming, mirroring) into the view, eased (smoothstep)."""
        def frame(t: float) -> Tensor:
            t = min(max(t, 0.0), 1.0)
            return image if t <= 0 else self.frame(image, smooth(t))
        return frame


def check_warp(warp: Warp, size: int = 16) -> None:
    """Raise ValueError unless ``source`` gives ``[size x size x 2]`` coordinates, the identity at t = 0."""
    got = warp.source(size, size, 1.0)
    if tuple(got.shape) != (size, size, 2):
        raise ValueError(f"view {warp.name!r}: source must give [H x W x 2] coordinates, got {tuple(got.shape)}")


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


def square_only(f: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
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


def need_square(name: str, h: int, w: int) -> None:
    if h != w:
        raise SizeError(f"view {name!r} needs square images, got {h}x{w}")


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
