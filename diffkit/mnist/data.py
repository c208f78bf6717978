"""MNIST in the original IDX format (raw or gzip), found in a folder, downloadable with checksums."""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from pathlib import Path

import torch
from torch import Tensor

from diffkit.errors import UserError

FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
ENV = "DIFFKIT_MNIST"


class MnistNotFound(UserError, FileNotFoundError):
    """The MNIST files are not where they were looked for."""


def default_dir() -> Path:
    """``$DIFFKIT_MNIST``, else ``~/.cache/diffkit/mnist``."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diffkit" / "mnist"


def _find(folder: Path, name: str) -> Path:
    for cand in (folder / name, folder / f"{name}.gz"):
        if cand.is_file():
            return cand
    raise MnistNotFound(
        f"MNIST file {name}(.gz) not found in {folder}. Get the files with `diffkit data mnist --data {folder}`, "
        f"or point --data / ${ENV} at a folder that holds them."
    )


def _read(path: Path) -> bytes:
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        return f.read()


def parse_idx(raw: bytes) -> Tensor:
    """IDX bytes -> uint8 tensor with the shape its header gives."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError("not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim:]
    n = 1
    for d in dims:
        n *= d
    if len(body) != n:
        raise ValueError(f"IDX file truncated: header says {dims}, body has {len(body)} bytes")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def load(split: str = "train", folder: str | os.PathLike | None = None) -> tuple[Tensor, Tensor]:
    """``(images [N x 1 x 28 x 28] float in [0, 1], labels [N] int64)`` for ``split`` train or test."""
    folder = Path(folder) if folder else default_dir()
    prefix = {"train": "train", "test": "t10k"}[split]
    images = parse_idx(_read(_find(folder, f"{prefix}-images-idx3-ubyte")))
    labels = parse_idx(_read(_find(folder, f"{prefix}-labels-idx1-ubyte")))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images[:, None].float() / 255, labels.long()


def verify(folder: str | os.PathLike) -> dict[str, bool]:
    """sha256 of each uncompressed file against the published sums."""
    folder = Path(folder)
    return {name: hashlib.sha256(_read(_find(folder, name))).hexdigest() == sha for name, sha in FILES.items()}


def download(folder: str | os.PathLike, mirrors: tuple[str, ...] = MIRRORS) -> list[Path]:
    """Fetch the four gzip files into ``folder``, checking each one's sha256 before keeping it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for name, sha in FILES.items():
        dst = folder / f"{name}.gz"
        if dst.is_file() and hashlib.sha256(_read(dst)).hexdigest() == sha:
            done.append(dst)
            continue
        errors = []
        for base in mirrors:
            try:
                with urllib.request.urlopen(base + name + ".gz", timeout=30) as r:
                    data = r.read()
            except OSError as e:
                errors.append(f"{base}: {e}")
                continue
            if hashlib.sha256(gzip.decompress(data)).hexdigest() != sha:
                errors.append(f"{base}: checksum mismatch")
                continue
            tmp = dst.with_suffix(".gz.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dst)
            done.append(dst)
            break
        else:
            raise OSError(f"could not download {name}: " + "; ".join(errors))
    return done
