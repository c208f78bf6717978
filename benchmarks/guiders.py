"""The guiders measured on MNIST (issue 38, point 3): sample quality at equal model evaluations, and
illusions, against cfg.

Quality: each guider's recipe, chosen on seeds 0..499 (N = 500, 50 a class;
benchmarks/results/guiders_selection.json, guiders_selection2.json and guiders_selection3.json: the
lowest FD over the floor among the recipes with accuracy >= 0.99), run on held-out seeds 10000.. at N = 1,000 (100 a class) as
`diffkit eval mnist` runs it, beside cfg's recommended recipe: accuracy, FD and the class-balanced floor.
Every recipe is 2 model evaluations a step, 20 steps of dpmpp_2m_sde on mnist-h64.

Illusions: the illusion benchmark's held-out cells (benchmarks/illusions.py: its 5 held-out class pairs
x 50 samples from seed 10000) for three views with each view's recommended recipe, its cfg replaced by each
guider at the same scale (APG with the paper's eta = 0 and momentum -0.5; FDG with half the scale on the
finest level, as the paper weights high frequencies less): success rate (both digits read), alignment,
concealment. Nothing is chosen on these cells.

    python benchmarks/guiders.py          # writes benchmarks/results/guiders.json (~35 min, 2 cores)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, record
from illusions import HELDOUT_PAIRS, HELDOUT_SEED, RECIPES, cell, over, recipe_name, strip

DATA = ROOT.parent / "shared" / "data" / "mnist"
# each guider's recipe chosen on the selection seeds (the module docstring says how); cfg's is the
# recommended quality recipe
QUALITY = {"cfg": "cfg:1.5", "apg": "apg:scale=1.5", "cfg_zero_star": "cfg_zero_star:scale=1.5,zero_steps=0",
           "tcfg": "tcfg:scale=2", "mag": "mag:scale=1.75", "fdg": "fdg:scales=1+2"}
ILLUSION_VIEWS = ["flip", "rotate_cw", "inner_circle"]


def guiders_at(scale: float) -> dict[str, str]:
    """Each guider at a view's cfg scale."""
    return {"cfg": f"cfg:{scale:g}", "apg": f"apg:scale={scale:g},eta=0,momentum=-0.5",
            "cfg_zero_star": f"cfg_zero_star:scale={scale:g},zero_steps=0", "tcfg": f"tcfg:scale={scale:g}",
            "mag": f"mag:scale={scale:g}", "fdg": f"fdg:scales={scale / 2:g}+{scale:g}"}


def quality(spec: str, num: int, seed: int, device: str) -> dict:
    from typer.testing import CliRunner

    from diffkit.cli import app

    args = ["eval", "mnist", "--checkpoint", "mnist-h64", "--num", str(num), "--seed", str(seed), "--hook", spec,
            "--sampler", "dpmpp_2m_sde", "--steps", "20", "--data", str(DATA), "--device", device]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = CliRunner().invoke(app, [*args, "--out", f"{tmp}/r.json"])
        if r.exit_code:
            sys.exit(f"diffkit {' '.join(args)} failed ({r.exit_code}):\n{r.output}")
        rep = json.loads(Path(f"{tmp}/r.json").read_text())
    return {"command": "diffkit " + " ".join(args), "seconds": round(time.perf_counter() - t0, 1), "n": 10 * num,
            "accuracy": rep["accuracy"], "fd": rep["frechet_distance"], "floor": rep["real_data_floor"],
            "fd_over_floor": rep["times_floor"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=100, help="quality: samples a class")
    ap.add_argument("--seed", type=int, default=10000)
    ap.add_argument("--cell", type=int, default=50, help="illusions: samples a cell")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "guiders.json")
    a = ap.parse_args()
    at = machine()
    stored = json.loads((ROOT / "benchmarks" / "results" / "illusions.json").read_text())
    by_name = {recipe_name(r): r for r in RECIPES}
    out: dict = {"what": "the guiders against cfg on MNIST: quality at held-out seeds, illusions' held-out cells",
                 "quality": {}, "illusions": {}}
    if not a.skip_quality:
        for name, spec in QUALITY.items():
            got = out["quality"][name] = {"spec": spec, **quality(spec, a.num, a.seed, a.device)}
            print(f"quality {spec:40s} N = {got['n']}: accuracy {got['accuracy']:.4f}, FD {got['fd']:.2f}, "
                  f"{got['fd_over_floor']:.2f}x the floor", flush=True)
            record(a.out, out, at=at)
    for view in ILLUSION_VIEWS:
        recipe = by_name[stored["heldout"][view]["recipe"]]
        out["illusions"][view] = {"recipe": recipe_name(recipe), "guiders": {}}
        for name, spec in guiders_at(recipe[1]).items():
            cells = {f"{p[0]}/{p[1]}": cell(recipe, view, p, a.cell, HELDOUT_SEED, spec) for p in HELDOUT_PAIRS}
            got = out["illusions"][view]["guiders"][name] = {"spec": spec, **over(cells), "cells": strip(cells)}
            print(f"illusion {view:13s} {spec:40s} success {got['success_rate']:.3f}  A {got['alignment']:.2f}  "
                  f"C {got['concealment']:.3f}", flush=True)
            record(a.out, out, at=at)


if __name__ == "__main__":
    main()
