"""Files: atomic writes, images in and out, grids and GIFs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image

from diffkit.errors import UserError
from torch import Tensor


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it over ``path`` only if the block succeeds.

    The file's data is fsynced before the rename, so after a power loss ``path`` is the old file or the
    whole new one, never a torn or empty one (a rename can reach the disk before the data does)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def staged_dir(out: str | os.PathLike, stale: Sequence[str] = ()) -> Iterator[Path]:
    """Yield an empty temp folder; when the block succeeds, move its entries into ``out``.

    The temp folder is inside ``out`` when ``out`` exists (it may be a mount point: a rename from beside
    it would cross filesystems), else beside it, where ``out`` will be made.

    Entries replace those of the same name (a folder entry replaces the whole folder). The renames run
    with SIGINT/SIGTERM held (:func:`diffkit.interrupt.deferred`), so ``out`` ends with all the new
    entries or none (and without those of ``stale``); on any failure the temp folder, and any parent
    folder made for it, is removed.
    """
    from diffkit import interrupt

    out = Path(out)
    made = _missing_ancestor(out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    inside = out.is_dir()
    tmp = Path(tempfile.mkdtemp(prefix=".diffkit-" if inside else f".{out.name}.", suffix=".tmp",
                                dir=out if inside else out.parent))
    done = False
    try:
        yield tmp
        try:
            move_into(tmp, out, stale)
        except interrupt.Interrupted as e:
            done = e.committed  # a signal held until every rename was done: keep what was made for out
            raise
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done and made is not None:
            shutil.rmtree(made, ignore_errors=True)


def move_into(src: Path, out: Path, stale: Sequence[str] = (), skip: Sequence[str] = ()) -> None:
    """Rename ``src``'s entries into ``out`` (``src`` itself when ``out`` does not exist), replacing
    entries of the same name and removing ``out``'s entries named in ``stale`` (those named in ``skip``
    stay in ``src``), with SIGINT/SIGTERM held: ``out`` ends with all of them or none. ``src`` is gone or empty afterwards; a held signal is
    raised with ``committed`` set."""
    from diffkit import interrupt

    os.chmod(src, 0o777 & ~_umask())
    done = False
    try:
        with interrupt.deferred():
            if not out.exists():
                os.replace(src, out)
            else:
                for name in sorted(set(os.listdir(src)) - set(skip)):
                    dst = out / name
                    if dst.is_dir() and not dst.is_symlink():
                        shutil.rmtree(dst)
                    os.replace(src / name, dst)
                for name in stale:
                    old = out / name
                    shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink(missing_ok=True)
            done = True
    except interrupt.Interrupted as e:
        e.committed = done
        raise


def reason(e: OSError) -> str:
    """An OSError as a user reads it: the reason and the file, without the ``[Errno 28]`` it prints first."""
    return f"{e.strerror}: {e.filename}" if e.strerror and e.filename else e.strerror or str(e)


def _missing_ancestor(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet (None: it exists)."""
    top = None
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        top = p
    return top


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def replace_dir(src: Path, dst: Path) -> None:
    """Put the finished folder ``src`` in place of ``dst``; a crash leaves one good copy (``dst`` or ``dst.old``)."""
    os.chmod(src, 0o777 & ~_umask())
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old)


def to_uint8(img: Tensor) -> Tensor:
    """``[C x H x W]`` in [0, 1] -> ``[H x W x C]`` uint8 (round half up, as PIL-based tools do)."""
    return (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu()


def to_pil(img: Tensor) -> Image.Image:
    """``[C x H x W]`` in [0, 1] -> PIL image (L for one channel, RGB for three)."""
    arr = to_uint8(img).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, "L" if arr.shape[2] == 1 else "RGB")


def save_png(img: Tensor, path: str | os.PathLike) -> None:
    """Save ``[C x H x W]`` in [0, 1] as PNG, atomically."""
    with atomic_path(path) as tmp:
        to_pil(img).save(tmp, format="PNG")


def grid(images: Tensor, ncol: int, pad: int = 2) -> Tensor:
    """``[N x C x H x W]`` -> one ``[C x H' x W']`` grid, ``ncol`` images a row, white padding."""
    n, c, h, w = images.shape
    nrow = (n + ncol - 1) // ncol
    out = images.new_ones(c, nrow * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(n):
        r, k = divmod(i, ncol)
        out[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = images[i]
    return out


def save_gif(frames: list[Tensor], path: str | os.PathLike, duration_ms: int = 80) -> None:
    """Frames ``[C x H x W]`` in [0, 1] -> looping animated GIF (last frame held), atomically."""
    pils = [to_pil(f) for f in frames]
    with atomic_path(path) as tmp:
        pils[0].save(tmp, format="GIF", save_all=True, append_images=pils[1:] + [pils[-1]] * 10,
                     duration=duration_ms, loop=0)


def load_image(path: str | os.PathLike, size: tuple[int, int], channels: int) -> Tensor:
    """Any image file -> ``[C x H x W]`` in [0, 1]: centre-cropped to the aspect of ``size``, resized.

    Transparent pixels become white (hand drawings saved with alpha), and the mode is converted to
    L or RGB to match ``channels``.
    """
    import warnings

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():  # a large photo is read, not warned about (bombs over 2x are refused)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()
    except Exception as e:  # PIL raises many kinds
        raise UserError(f"cannot read image {path}: {e}") from e
    H, W = size
    if img.mode in HIGH_DEPTH:  # 16-bit and float images: read at their depth, never clipped to 8 bits
        return _high_depth(img, path, size, channels)
    if img.mode in ("RGBA", "LA", "P", "PA", "RGBa", "La"):
        img = _convert(img, "RGBA", path)
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    img = _convert(img, "L" if channels == 1 else "RGB", path)
    img = _fit(img, size).resize((W, H), Image.Resampling.LANCZOS)
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float() / 255
    return t.reshape(H, W, channels).permute(2, 0, 1).contiguous()


# Modes whose values are not 8-bit: Pillow's convert("L") clips them (a 16-bit PNG reads almost white, a
# float TIFF black), so they are scaled to [0, 1] here instead.
HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _convert(img: Image.Image, mode: str, path: Path) -> Image.Image:
    """``img`` in ``mode``, through RGB(A) where Pillow has no direct conversion (LAB to L); a mode it
    cannot convert at all is refused by name."""
    for via in ((), ("RGBA",), ("RGB",)):
        try:
            out = img
            for m in (*via, mode):
                out = out.convert(m)
            return out
        except (ValueError, OSError):
            continue
    raise UserError(f"image {path} has mode {img.mode}, which diffkit cannot read: save it as an 8- or 16-bit "
                    "PNG, or a JPEG")


def _fit(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The centred crop of ``img`` with the aspect of ``size`` (H, W)."""
    H, W = size
    w, h = img.size
    scale = min(w / W, h / H)
    cw, ch = round(W * scale), round(H * scale)
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def _high_depth(img: Image.Image, path: Path, size: tuple[int, int], channels: int) -> Tensor:
    """A one-channel 16-bit or float image -> ``[C x H x W]`` in [0, 1]: 16-bit values over 65535, 32-bit
    integers likewise when they fit 16 bits, floats as they are when in [0, 1]; else refused by name.
    Cropped and resized in float (Pillow's F mode), so no depth is lost."""
    import numpy as np

    arr = np.asarray(img).astype(np.float64)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if img.mode == "F":
        if not (np.isfinite(arr).all() and 0 <= lo and hi <= 1):
            raise UserError(f"image {path} is a float image with values in [{lo:g}, {hi:g}]: diffkit reads float "
                            "images as [0, 1]; rescale it, or save it as an 8- or 16-bit PNG")
    elif 0 <= lo and hi <= 65535:
        arr = arr / 65535
    else:
        raise UserError(f"image {path} is a {img.mode} integer image with values in [{lo:g}, {hi:g}], beyond 16 "
                        "bits: save it as an 8- or 16-bit PNG")
    H, W = size
    f = _fit(Image.fromarray(arr.astype(np.float32), "F"), size).resize((W, H), Image.Resampling.LANCZOS)
    t = torch.from_numpy(np.asarray(f, dtype=np.float32).copy()).clamp(0, 1)
    return t[None].expand(channels, H, W).contiguous()


def labelled_columns(columns: list[Tensor], titles: list[str], pad: int = 2, scale: int = 2) -> Tensor:
    """Comparison figure: column k shows ``columns[k]`` ``[N x C x H x W]`` top to bottom under ``titles[k]``."""
    from PIL import ImageDraw

    w = columns[0].shape[-1]
    cols = torch.cat([grid(col, 1, pad) for col in columns], dim=2)  # [C x H' x W']
    img = to_pil(cols.float()).convert("RGB")
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    head = 14
    out = Image.new("RGB", (img.width, img.height + head), "white")
    out.paste(img, (0, head))
    draw = ImageDraw.Draw(out)
    for k, title in enumerate(titles):
        draw.text((k * (w + 2 * pad) * scale + 2, 1), title, fill="black")
    arr = torch.frombuffer(bytearray(out.tobytes()), dtype=torch.uint8).reshape(out.height, out.width, 3)
    return arr.permute(2, 0, 1).float() / 255


def load_png(path: str | os.PathLike) -> Tensor:
    """A PNG this module wrote -> ``[C x H x W]`` in [0, 1], exactly its 8-bit values (no resizing)."""
    with Image.open(path) as img:
        img.load()
        c = 1 if img.mode == "L" else 3
        arr = torch.frombuffer(bytearray(img.convert("L" if c == 1 else "RGB").tobytes()), dtype=torch.uint8)
        return arr.reshape(img.height, img.width, c).permute(2, 0, 1).float() / 255
