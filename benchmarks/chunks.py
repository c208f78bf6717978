"""What each way of keeping a sample's bytes independent of its batch costs on this CPU (issue 22), per
model evaluation of the shipped model at two sizes: README's first command (40 samples x 2 CFG branches
= 80 rows a step) and a one-sample CFG run (2 rows a step). Interleaved rounds, default threads.

- one call of exactly the rows (the code before fixed calls: fast, but a sample's bytes then depend on
  the batch it ran in: --batch-size, N single runs and torchrun would disagree);
- fixed 16-row calls in turn (today's default, ``backends.base.in_fixed_chunks``);
- fixed R-row calls, each on one thread, two at a time on a thread pool (R = 2, 4, 8, 16): one thread
  per call keeps the bytes the same under any thread count, the pool uses both cores.

    python benchmarks/chunks.py [--rounds 15]   # writes benchmarks/results/chunks.json
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

import torch

from common import ROOT, interleaved, record, rounds, spread

THREADS = torch.get_num_threads()
POOL = ThreadPoolExecutor(THREADS)


def pooled(f, rows: int, *args: torch.Tensor) -> torch.Tensor:
    """``f`` on fixed ``rows``-row chunks (the last padded), one thread each, ``THREADS`` at a time."""
    n = args[0].shape[0]
    k = -(-n // rows)
    padded = [torch.cat([a, a[-1:].expand(k * rows - n, *a.shape[1:])]) for a in args]

    def one(i: int) -> torch.Tensor:
        with torch.inference_mode():  # thread-local: each worker enters it
            return f(*[a[i * rows:(i + 1) * rows] for a in padded])

    torch.set_num_threads(1)
    try:
        outs = list(POOL.map(one, range(k)))
    finally:
        torch.set_num_threads(THREADS)
    return torch.cat(outs)[:n]


def main() -> None:
    from diffkit.api import load_backend
    from diffkit.backends.base import in_fixed_chunks

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    b = load_backend("mnist")
    g = torch.Generator().manual_seed(0)
    stored = {"rounds": a.rounds, "sizes": {}}
    for n, what in ((80, "README's first command: 40 samples x 2 branches"), (2, "one sample x 2 branches")):
        x, t = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 300, (n,), generator=g)
        c = torch.nn.functional.one_hot(torch.arange(n) % 10, 10).float()
        sides = {"one call": lambda: b._predict(x, t, c),
                 "16 rows in turn": lambda: in_fixed_chunks(b._predict, 16, x, t, c)}
        for r in (2, 4, 8, 16):
            sides[f"{r} rows, pooled"] = lambda r=r: pooled(b._predict, r, x, t, c)
        with torch.inference_mode():
            times = interleaved(sides, a.rounds)
        print(f"{n} rows ({what}), {THREADS} threads, ms per model evaluation:")
        for k, v in times.items():
            print(f"  {k:18s} {spread(v)}   x{rounds(v, times['one call'])['median']:.2f} of one call")
        stored["sizes"][str(n)] = {"what": what, "seconds": times,
                                   "over_one_call": {k: rounds(v, times["one call"]) for k, v in times.items()}}
    record(ROOT / "benchmarks" / "results" / "chunks.json", stored)


if __name__ == "__main__":
    main()
