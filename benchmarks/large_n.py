"""A recipe at large N (issue 22): FD's bias shrinks as 1/N, so the figure at 1,000 samples overstates
how far a model is from the data, and the gap at 10,000 is the honest one.

`diffkit eval mnist --num 1000` (1,000 samples a class) on each model with a recipe (default the
recommended `cfg:1.5`, `dpmpp_2m_sde`, 20 steps), from `--seed` (default 10000: samples 10000..19999,
none of which the recipe was chosen on; benchmarks/seeds.py used seeds 0..9999), and a class-balanced
floor of as many real training digits. Each run is the CLI itself (in-process), so the numbers are what
a user's command prints. A recipe chosen on some seeds is reported on others (`--seed`, `--out`).

    python benchmarks/large_n.py [--models mnist-h64 mnist-class] [--device cpu]   # writes benchmarks/results/large_n.json
    python benchmarks/large_n.py --models mnist-h64 --recipes "cfg:1.5 dpmpp_2m_sde 20" "cfg:1.3 dpmpp_2m_sde 20" \
        --num 200 --out benchmarks/results/X.json        # several recipes: one run each, in the order given
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, record

DATA = ROOT.parent / "shared" / "data" / "mnist"
RECIPE = "cfg:1.5 dpmpp_2m_sde 20"  # hook, sampler, steps


def main() -> None:
    from typer.testing import CliRunner

    from diffkit.cli import app

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mnist-h64", "mnist-class"])
    ap.add_argument("--num", type=int, default=1000, help="samples a class")
    ap.add_argument("--seed", type=int, default=10000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--recipes", nargs="+", default=[RECIPE], help='"HOOK SAMPLER STEPS" each')
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "large_n.json")
    a = ap.parse_args()
    at = machine()  # the code this process runs is the code of its start
    runs = {}
    several = len(a.recipes) > 1
    for model in a.models:
        for recipe in a.recipes:
            hook, sampler, steps = recipe.split()
            args = ["eval", "mnist", "--checkpoint", model, "--num", str(a.num), "--seed", str(a.seed), "--hook", hook,
                    "--sampler", sampler, "--steps", steps, "--data", str(a.data), "--device", a.device]
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                r = CliRunner().invoke(app, [*args, "--out", f"{tmp}/r.json"])
                if r.exit_code:
                    sys.exit(f"diffkit {' '.join(args)} failed ({r.exit_code}):\n{r.output}")
                rep = json.loads(Path(f"{tmp}/r.json").read_text())
            key = f"{model} {recipe}" if several else model
            runs[key] = {"command": "diffkit " + " ".join(args), "seconds": time.perf_counter() - t0,
                         "n": 10 * a.num, "accuracy": rep["accuracy"], "fd": rep["frechet_distance"],
                         "floor": rep["real_data_floor"], "fd_over_floor": rep["times_floor"],
                         "per_class_accuracy": rep["per_class_accuracy"]}
            print(f"{key}: N = {10 * a.num}, accuracy {rep['accuracy']:.4f}, FD {rep['frechet_distance']:.2f}, "
                  f"floor {rep['real_data_floor']:.2f}, {rep['times_floor']:.2f}x the floor", flush=True)
            record(a.out, {"seed": a.seed, "device": a.device, "runs": runs}, at=at)  # after each: a long run


if __name__ == "__main__":
    main()
