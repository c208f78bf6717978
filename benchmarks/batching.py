"""One batched model call a step against branch-by-branch calls, for cfg + 2-view anagram and cfg + hybrid.

    python benchmarks/batching.py [--hidden 32] [--num 4] [--steps 50]
"""

from __future__ import annotations

import argparse

import torch

import diffkit
from diffkit.backends.mnist import MnistBackend
from diffkit.denoise import compose
from diffkit.sampler import Sampler
from diffkit.technique import Combiner

from common import interleaved, small_checkpoint


class BranchByBranch(Sampler):
    """The same combiners around a denoiser that calls the model once per branch (the naive way)."""

    def denoiser(self, ctx):
        backend = ctx.backend

        def one_by_one(queries):
            return [backend.predict(q.x, torch.full((q.x.shape[0],), q.t), q.cond.value) for q in queries]

        return compose([t for t in self.techniques if isinstance(t, Combiner)], one_by_one)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--num", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    backend = MnistBackend(str(small_checkpoint(args.hidden)))
    classes = [i % 10 for i in range(args.num)]
    cases = {"cfg + 2-view anagram (4 branches)": ["cfg:5", "anagram:6,view=rot180"],
             "cfg + hybrid (3 distinct branches)": ["cfg:5", "hybrid:1,kernel=9,sigma=2"]}
    print(f"MNIST UNet hidden={args.hidden}, {args.num} samples, {args.steps} steps, {torch.get_num_threads()} threads")
    for name, hooks in cases.items():
        def batched():
            return diffkit.sample(backend, classes=classes, hooks=hooks, steps=args.steps).x

        def naive():
            run = diffkit.Run(backend, classes=classes, hooks=hooks, steps=args.steps)
            run.sampler = BranchByBranch(run.techniques)
            for _ in run.steps():
                pass
            return run.result.x

        diff = (batched() - naive()).abs().max().item()
        t = interleaved({"batched": batched, "branch-by-branch": naive}, args.repeats)
        print(f"{name}: batched {t['batched'] * 1000:.0f} ms, branch-by-branch {t['branch-by-branch'] * 1000:.0f} ms, "
              f"ratio batched/branch = {t['batched'] / t['branch-by-branch']:.3f}  (max |diff| {diff:.1e})")


if __name__ == "__main__":
    main()
