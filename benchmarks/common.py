"""Shared helpers: a small MNIST model to time, and interleaved timing of several callables."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch


def small_checkpoint(hidden: int = 32) -> Path:
    """An untrained class-conditioned MNIST UNet saved as a checkpoint (timing does not need training)."""
    from diffkit.mnist import checkpoint
    from diffkit.mnist.model import UNet
    from diffkit.mnist.train import TrainConfig, model_config

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="diffkit-bench-")) / "ckpt"
    cfg = TrainConfig(objective="ddpm", conditioning="class", hidden=hidden).resolved()
    checkpoint.save(folder, UNet(hidden, "class").eval(), model_config(cfg))
    return folder


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 7) -> dict[str, float]:
    """Median seconds of each callable, run in turn ``repeats`` times (so drift hits all alike)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm up
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
