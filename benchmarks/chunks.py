"""What each way of keeping a sample's bytes independent of its batch costs on this CPU (issue 22), per
model evaluation of the shipped model at two sizes: README's first command (40 samples x 2 CFG branches
= 80 rows a step) and a one-sample CFG run (2 rows a step). Interleaved rounds, default threads.

- one call of exactly the rows (the code before fixed calls: fast, but a sample's bytes then depend on
  the batch it ran in: --batch-size, N single runs and torchrun would disagree);
- fixed 16-row calls in turn on all threads (the first fixed-size design);
- fixed R-row calls, each on one thread, as many at a time as torch has threads (one thread per call
  keeps the bytes the same under any thread count, the pool uses every core), the model eager (the
  previous default at R = 4) or traced with ``torch.jit.trace`` when a call has more than one chunk
  (``MnistBackend.predict`` itself, with its ``chunk_rows`` set to R; today's default is R = 2).

    python benchmarks/chunks.py [--rounds 15]   # writes benchmarks/results/chunks.json
"""

from __future__ import annotations

import argparse

import torch

from common import ROOT, interleaved, record, rounds, spread

THREADS = torch.get_num_threads()


def main() -> None:
    from diffkit.api import load_backend
    from diffkit.fixed_rows import in_fixed_chunks
    from diffkit.backends.mnist import CHUNK_ROWS

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    base = load_backend("mnist")
    sized = {}
    for r in (1, 2, 3, 4, 8):
        sized[r] = load_backend("mnist")
        sized[r].chunk_rows = r
    eager4 = load_backend("mnist")
    eager4.chunk_rows = 4
    eager4._traced = lambda unconditional: eager4.model  # the previous default: 4 rows, eager
    g = torch.Generator().manual_seed(0)
    stored = {"rounds": a.rounds, "default_rows": CHUNK_ROWS["cpu"], "sizes": {}}
    for n, what in ((80, "README's first command: 40 samples x 2 branches"), (2, "one sample x 2 branches")):
        x, t = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 300, (n,), generator=g)
        c = torch.nn.functional.one_hot(torch.arange(n) % 10, 10).float()
        sides = {"one call": lambda: base._predict(x, t, c),
                 "16 rows in turn": lambda: in_fixed_chunks(base._predict, 16, x, t, c),
                 "4 rows, pooled, eager": lambda: eager4.predict(x, t, c)}
        for r, b in sized.items():
            sides[f"{r} rows, pooled, traced"] = lambda b=b: b.predict(x, t, c)
        with torch.inference_mode():
            times = interleaved(sides, a.rounds)
        print(f"{n} rows ({what}), {THREADS} threads, ms per model evaluation:")
        for k, v in times.items():
            print(f"  {k:24s} {spread(v)}   x{rounds(v, times['one call'])['median']:.2f} of one call")
        stored["sizes"][str(n)] = {"what": what, "seconds": times,
                                   "over_one_call": {k: rounds(v, times["one call"]) for k, v in times.items()}}
    record(ROOT / "benchmarks" / "results" / "chunks.json", stored)


if __name__ == "__main__":
    main()
