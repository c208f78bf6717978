"""What one batched model call a step buys, apart from what computing identical branches once buys.

Three ways to evaluate the same combiners (cfg + 2-view anagram: 4 distinct branches; cfg + hybrid:
4 branches of which 3 are distinct):

- diffkit: distinct branches only, all in one model call;
- one call per distinct branch (deduplicated, not batched);
- one call per branch (neither).

Every side calls the model with exactly its rows (``MnistBackend._predict``): the fixed 16-row calls
that keep a sample's bytes independent of its batch would pad a one-branch call of 4 rows to 16 and
charge the per-branch sides 4x the rows; their cost is measured apart (benchmarks/scale.py).

    python benchmarks/batching.py [--hidden 32] [--num 4] [--steps 50] [--repeats 5]
    # writes benchmarks/results/batching.json
"""

from __future__ import annotations

import argparse

import torch

import diffkit
from diffkit.backends.mnist import MnistBackend
from diffkit.denoise import compose
from diffkit.sampler import Sampler
from diffkit.technique import Combiner

from common import ROOT, interleaved, ratio, record, rounds, small_checkpoint, spread


class OneCallPerBranch(Sampler):
    """The same combiners around a denoiser that calls the model once per branch (``dedup``: per distinct one)."""

    def __init__(self, techniques, dedup: bool):
        super().__init__(techniques)
        self.dedup = dedup

    def denoiser(self, ctx):
        backend, dedup = ctx.backend, self.dedup

        def one_by_one(queries):
            done: dict = {}
            out = []
            for q in queries:
                if not dedup or q.key not in done:
                    done[q.key] = backend.predict(q.x, torch.full((q.x.shape[0],), q.t), q.cond.value)
                out.append(done[q.key])
            return out

        return compose([t for t in self.techniques if isinstance(t, Combiner)], one_by_one, ctx.eps_channels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--num", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    backend = MnistBackend(str(small_checkpoint(args.hidden)))
    backend.predict = backend._predict  # exactly the rows asked for, on every side (see the docstring)
    stored = {"hidden": args.hidden, "num": args.num, "steps": args.steps, "repeats": args.repeats, "cases": {}}
    classes = [i % 10 for i in range(args.num)]
    cases = {"cfg + 2-view anagram (4 branches, 4 distinct)": ["cfg:5", "anagram:6,view=rot180"],
             "cfg + hybrid (4 branches, 3 distinct)": ["cfg:5", "hybrid:1,kernel=9,sigma=2"]}
    print(f"MNIST UNet hidden={args.hidden}, {args.num} samples, {args.steps} steps, {torch.get_num_threads()} threads")
    for name, hooks in cases.items():
        def batched():
            return diffkit.sample(backend, classes=classes, hooks=hooks, steps=args.steps).x

        def one_by_one(dedup):
            def run_it():
                run = diffkit.Run(backend, classes=classes, hooks=hooks, steps=args.steps)
                run.sampler = OneCallPerBranch(run.techniques, dedup)
                for _ in run.steps():
                    pass
                return run.result.x
            return run_it

        sides = {"batched": batched, "per distinct branch": one_by_one(True), "per branch": one_by_one(False)}
        diff = max((batched() - f()).abs().max().item() for f in sides.values())
        t = interleaved(sides, args.repeats)
        print(f"{name}  (max |diff| between the three {diff:.1e})")
        for k, v in t.items():
            print(f"  {k:20s} {spread(v)}")
        print(f"  batching:      batched / per distinct branch = {ratio(t['batched'], t['per distinct branch'])}")
        print(f"  deduplication: per distinct / per branch     = {ratio(t['per distinct branch'], t['per branch'])}")
        stored["cases"][name] = {"hooks": hooks, "seconds": t, "max_abs_diff": diff,
                                 "batched_over_per_distinct": rounds(t["batched"], t["per distinct branch"]),
                                 "per_distinct_over_per_branch": rounds(t["per distinct branch"], t["per branch"])}
    record(ROOT / "benchmarks" / "results" / "batching.json", stored)


if __name__ == "__main__":
    main()
