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


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 7) -> dict[str, list[float]]:
    """Seconds of each callable in each of ``repeats`` rounds, after one warm-up call each.

    Every round runs every callable once, in turn, so that drift on a shared machine hits all alike;
    ratios are then taken round by round (:func:`ratio`).
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up: first-call allocations, lazy imports, kernel selection
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def spread(seconds: list[float], unit: float = 1000.0, suffix: str = "ms") -> str:
    """``median (min-max, n)`` of a list of timings."""
    v = [s * unit for s in seconds]
    return f"{statistics.median(v):8.1f} {suffix} ({min(v):.1f}-{max(v):.1f}, n={len(v)})"


ROOT = Path(__file__).resolve().parent.parent


def rounds(a: list[float], b: list[float]) -> dict[str, object]:
    """The round-by-round ratios a/b with their median and range, for a stored result."""
    r = [x / y for x, y in zip(a, b)]
    return {"median": statistics.median(r), "min": min(r), "max": max(r), "rounds": r}


def ratio(a: list[float], b: list[float]) -> str:
    """Median and range of the round-by-round ratios a/b (each round timed both sides back to back)."""
    r = [x / y for x, y in zip(a, b)]
    return f"{statistics.median(r):.3f} (range {min(r):.3f}-{max(r):.3f} over {len(r)} rounds)"


def machine() -> dict[str, object]:
    """What a stored result was measured on: the commit, the CPU, torch and its default thread count."""
    import platform
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"commit": commit + ("+uncommitted" if dirty else ""), "date": time.strftime("%Y-%m-%d"), "cpu": cpu,
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def record(path: Path, data: dict, at: dict | None = None) -> None:
    """Write ``data`` with :func:`machine`'s facts to the JSON file ``path`` (benchmarks/results/).

    ``at``: the facts as :func:`machine` read them when the measurement started, for a long one (the
    code a process runs is the code it loaded; the tree may have moved on by its end)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**(at or machine()), **data}, indent=2) + "\n")
    print(f"stored in {path}")


def cuda_timed(fn: Callable[[], object]) -> tuple[object, float]:
    """``fn()`` and its seconds, the GPU's queued work included."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def peak_alone(make: Callable[..., tuple[object, Callable[[], object]]], *args: object) -> float:
    """Peak GiB of one call (after a warm-up) with only this side's weights on the GPU: ``make(*args)``
    returns (what holds the weights, the call)."""
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    held, call = make(*args)
    call()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    del held, call
    gc.collect()
    torch.cuda.empty_cache()
    return peak
