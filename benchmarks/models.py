"""The shipped MNIST models' sampling cost: the default `mnist-class` (hidden 32) against the quality
model `mnist-h64` (hidden 64), on the recommended recipe.

    python benchmarks/models.py [--num 10] [--repeats 3] [--device cpu]   # writes benchmarks/results/models.json

Each round samples ``--num`` digits a class with ``cfg:1.5`` and ``dpmpp_2m_sde`` at 20 steps from
each model in turn (after a warm-up of each), so machine noise falls on both sides; prints each
side's median and range of seconds per 100 samples and the round-by-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import diffkit
from common import ROOT, record

MODELS = ("mnist-class", "mnist-h64")


def once(model: str, num: int, device: str) -> float:
    t0 = time.perf_counter()
    diffkit.sample("mnist", classes=list(range(10)), num=num, seed=0, hooks=["cfg:1.5"], sampler="dpmpp_2m_sde",
                   steps=20, backend_options={"checkpoint": model, "device": device})
    return (time.perf_counter() - t0) / (10 * num) * 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=10, help="samples a class, each round")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    for m in MODELS:
        once(m, 1, a.device)  # warm-up: model load, allocator, kernels
    times: dict[str, list[float]] = {m: [] for m in MODELS}
    for _ in range(a.repeats):
        for m in MODELS:
            times[m].append(once(m, a.num, a.device))
    print(f"{10 * a.num} samples a round, cfg:1.5 dpmpp_2m_sde 20 steps (40 calls a sample), {a.device}, "
          f"{a.repeats} rounds")
    for m in MODELS:
        t = times[m]
        print(f"  {m:12s} {statistics.median(t):6.2f} s / 100 samples ({min(t):.2f}-{max(t):.2f})")
    ratios = [h / c for h, c in zip(times["mnist-h64"], times["mnist-class"])]
    print(f"  mnist-h64 / mnist-class: median {statistics.median(ratios):.2f} "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    record(ROOT / "benchmarks" / "results" / "models.json",
           {"num": a.num, "repeats": a.repeats, "device": a.device, "seconds_per_100": times,
            "median_seconds_per_100": {m: statistics.median(t) for m, t in times.items()},
            "range_seconds_per_100": {m: [min(t), max(t)] for m, t in times.items()},
            "h64_over_class": {"median": statistics.median(ratios), "rounds": ratios}})


if __name__ == "__main__":
    main()
