"""A third-party diffkit backend, written from docs/writing-plugins.md: ten classes of 28x28 images,
class ``k`` flat at its own grey level, with an exact denoiser (diffkit's Gaussian mixture at another
size), so it needs no weights and no network.

Its options are declared as ``Param``s: ``contrast`` with ``flag=True`` (so every command that takes
a backend gains ``--contrast``), ``std`` only as ``-O std=...``.
"""

from __future__ import annotations

from diffkit.backends.base import BackendInfo
from diffkit.hookspecs import hookimpl
from diffkit.params import Param


def _load(contrast: float = 0.8, std: float = 0.1):
    from diffkit.backends.gaussian import GaussianBackend  # imported when the backend is built, not listed

    class Blobs(GaussianBackend):
        name = "blobs"

    lo = 0.5 - contrast / 2
    means = tuple(lo + contrast * k / 9 for k in range(10))
    return Blobs(means=means, std=std, shape=(1, 28, 28))


BLOBS = BackendInfo(
    "blobs", "ten classes of flat 28x28 grey images, denoised exactly (a third-party example)", _load,
    params=(
        Param("contrast", float, 0.8, "spread of the ten classes' grey levels around 0.5", range=(0.0, 1.0),
              flag=True),
        Param("std", float, 0.1, "standard deviation of every pixel around its class's level", range=(0.01, 1.0)),
    ),
    label_kind="class",
)


@hookimpl
def diffkit_backends():
    return [BLOBS]
