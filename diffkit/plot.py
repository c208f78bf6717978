"""Tiny dependency-free plots (PIL only): the training loss curve."""

from __future__ import annotations

import math
import os

from PIL import Image, ImageDraw

from diffkit.io import atomic_path


def loss_curve(losses: list[float], path: str | os.PathLike, steps_per_epoch: int | None = None,
               size: tuple[int, int] = (640, 360)) -> None:
    """Training loss per step on a log axis, with a moving average and epoch ticks; PNG, atomically."""
    W, H = size
    m = 48
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    vals = [v for v in losses if v > 0 and math.isfinite(v)]
    if not vals:
        raise ValueError("no finite positive losses to plot")
    lo, hi = math.log10(min(vals)), math.log10(max(vals))
    hi = hi if hi > lo else lo + 1
    n = len(losses)

    def xy(i: int, v: float) -> tuple[float, float]:
        return m + (W - 2 * m) * i / max(n - 1, 1), H - m - (H - 2 * m) * (math.log10(v) - lo) / (hi - lo)

    d.rectangle([m, m, W - m, H - m], outline="black")
    for e in range(int(math.floor(lo)), int(math.ceil(hi)) + 1):
        for k in (1, 2, 5):
            v = k * 10.0**e
            if lo <= math.log10(v) <= hi:
                y = xy(0, v)[1]
                d.line([m, y, W - m, y], fill=(225, 225, 225))
                d.text((4, y - 6), f"{v:g}", fill="black")
    if steps_per_epoch:
        for e in range(steps_per_epoch, n, steps_per_epoch):
            x = xy(e, vals[0])[0]
            d.line([x, H - m, x, H - m + 5], fill="black")
    d.line([xy(i, v) for i, v in enumerate(losses) if v > 0], fill=(150, 180, 230))
    k = max(1, n // 50)
    avg = [sum(losses[max(0, i - k): i + 1]) / len(losses[max(0, i - k): i + 1]) for i in range(n)]
    d.line([xy(i, v) for i, v in enumerate(avg) if v > 0], fill=(20, 60, 160), width=2)
    d.text((m, 8), "training loss (log scale)", fill="black")
    d.text((W // 2 - 20, H - m + 12), "step" + (" (ticks: epochs)" if steps_per_epoch else ""), fill="black")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
