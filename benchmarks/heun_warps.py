"""Why a warp view is refused under a rule that evaluates twice a step (docs/illusions.md, 'Heun and the warps').

anagram's reduction=x0 hands the rule the average of its views' clean images. Heun's second evaluation
reads the slope ``(x - x0) / sigma`` at the step's end, and on the last step that sigma is small (0.001 on
a flow model, 0.01 on MNIST's DDPM model). This measures, at every evaluation of a plain Euler run (which
evaluates at the same noise levels Heun's ends do, and steps by them without dividing), how far the
average stands from the image's own clean estimate (the first branch's), over sigma: the part of the slope
the average adds. A model's own slope is of order 1; where this reads far above it on the last evaluation
alone, that step's Heun correction is made of it.

    python benchmarks/heun_warps.py     # writes benchmarks/results/heun_warps.json (~1 min, 2 cores)
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from common import ROOT, machine, record

VIEWS = ["flip", "rotate:135", "zoom:0.5", "mirror:30", "cone:20"]
MODELS = ["mnist-flow", "mnist-h64"]


def run(model: str, view: str, levels: int, steps: int, num: int) -> list[dict]:
    """One Euler run of ``--class 6 --technique anagram:9,view=VIEW,reduction=x0,levels=L``: at each
    evaluation, mean |average - first branch's clean image| and that over sigma."""
    import diffkit
    from diffkit_plugins import anagram

    rows = []
    plain = anagram.Anagram._synchronise

    def watched(self, query, x0s):  # the anagram's own reduction, read and left as it is
        x0 = plain(self, query, x0s)
        ctx = self.ctx
        if ctx.backend.formulation == "flow":
            sigma = ctx.sigma(query.t)
        else:
            a = ctx.abar(query.t)
            sigma = math.sqrt((1 - a) / a)
        gap = float((x0 - x0s[0]).abs().mean())
        rows.append({"t": float(query.t), "sigma": round(sigma, 6), "gap": gap, "gap_over_sigma": gap / sigma})
        return x0

    anagram.Anagram._synchronise = watched
    try:
        spec = f'anagram:9,view="{view}",reduction=x0' + (f",levels={levels}" if view != "flip" else "")
        diffkit.sample("mnist", backend_options={"checkpoint": model, "device": "cpu"}, classes=[6], num=num,
                       seed=0, hooks=[spec], sampler="euler", steps=steps)
    finally:
        anagram.Anagram._synchronise = plain
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--num", type=int, default=8)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "heun_warps.json")
    a = ap.parse_args()
    at = machine()
    t0 = time.perf_counter()
    results = {}
    for model in MODELS:
        for view in VIEWS:
            for levels in ((4,) if view == "flip" else (4, 1)):
                rows = run(model, view, levels, a.steps, a.num)
                name = f"{model} {view}" + (f" levels={levels}" if view != "flip" else "")
                results[name] = {"last": round(rows[-1]["gap_over_sigma"], 4), "last_sigma": rows[-1]["sigma"],
                                 "others_max": round(max(r["gap_over_sigma"] for r in rows[:-1]), 4),
                                 "evaluations": rows}
                print(f"{name:36s} last evaluation (sigma {rows[-1]['sigma']:.4f}): {results[name]['last']:8.3f}  "
                      f"the others, at most: {results[name]['others_max']:.3f}", flush=True)
    record(a.out, {"what": "anagram reduction=x0 under Euler: at each evaluation, mean |the views' average - the "
                           "image's own clean estimate| over sigma (the slope Heun's second evaluation would add), "
                           "per model, view and pyramid levels; class 6 with 9 in the view, seed 0",
                   "steps": a.steps, "num": a.num, "seconds": round(time.perf_counter() - t0, 1),
                   "runs": results}, at)


if __name__ == "__main__":
    main()
