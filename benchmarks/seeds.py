"""How a recipe lands over several seeds: `diffkit eval mnist` run once per seed, summarised.

    python benchmarks/seeds.py --hooks cfg:1.5 cfg:1.6 [--checkpoint DIR] [--sampler dpmpp_2m_sde --steps 20]
                               [--seeds 0 1000 2000 3000 5000] [--num 100] [--device cuda] [--out FILE.jsonl]

One draw of 1,000 samples and 1,000 real digits moves FD by 10-15% (docs/quality.md), so a recipe
near the target is judged by the mean over seeds: each seed picks its own samples **and** its own
floor draw. Every run is the CLI itself (in-process), so the numbers are what a user's
`diffkit eval mnist --seed S ...` prints. Rows are appended to ``--out`` as they come; a row already
there (same checkpoint, hooks, sampler, steps, seed, num, device) is not run again. A hook argument
may hold several techniques joined by ``+`` (``cfg:1.5+autoguide:1.3``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "mnist"


def key(r: dict) -> tuple:
    return (r["checkpoint"], r["hook"], r["sampler"], r["steps"], r["seed"], r["num"], r["device"])


def eval_once(hook: str, a: argparse.Namespace, seed: int) -> dict:
    from typer.testing import CliRunner

    from diffkit.cli import app

    with tempfile.TemporaryDirectory() as tmp:
        args = ["eval", "mnist", "--num", str(a.num), "--seed", str(seed), "--sampler", a.sampler,
                "--steps", str(a.steps), "--data", str(a.data), "--out", f"{tmp}/r.json", "--device", a.device]
        args += ["--checkpoint", a.checkpoint] if a.checkpoint else []
        for h in hook.split("+"):
            args += ["--hook", h]
        r = CliRunner().invoke(app, args)
        if r.exit_code:
            sys.exit(f"diffkit {' '.join(args)} failed ({r.exit_code}):\n{r.output}")
        rep = json.loads(Path(f"{tmp}/r.json").read_text())
    return {"checkpoint": a.checkpoint or "mnist-class", "hook": hook, "sampler": a.sampler, "steps": a.steps,
            "seed": seed, "num": a.num, "device": a.device, "accuracy": rep["accuracy"],
            "fd": rep["frechet_distance"], "floor": rep["real_data_floor"], "calls": rep["model_calls_per_sample"]}


def summary(rows: list[dict]) -> str:
    """One markdown row: accuracy mean (range), FD mean, floor mean, mean FD / mean floor, x floor per seed."""
    acc = [r["accuracy"] for r in rows]
    fd, floor = statistics.mean(r["fd"] for r in rows), statistics.mean(r["floor"] for r in rows)
    x = [r["fd"] / r["floor"] for r in rows]
    return (f"| `{rows[0]['hook']}` | {statistics.mean(acc):.4f} ({min(acc):.3f}-{max(acc):.3f}) | {fd:.2f} | "
            f"{floor:.2f} | {fd / floor:.2f} | {min(x):.2f}-{max(x):.2f} |")


def plot(path: Path, rows: list[dict], seeds: list[int]) -> None:
    """benchmarks/quality.py's plot of every recipe measured under exactly ``seeds``: mean accuracy against
    mean FD, the mean floor marked; one colour a checkpoint."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quality import plot as draw

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["checkpoint"], r["hook"], r["sampler"], r["steps"], r["num"], r["device"]), []).append(r)
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    names = sorted({k[0] for k in groups})
    points, floors = [], []
    for (ckpt, hook, sampler, steps, _, _), rs in groups.items():
        if sorted(r["seed"] for r in rs) != sorted(seeds):
            continue
        rule = sampler.replace("dpmpp_2m_sde:karras=true", "karras")
        label = f"{ckpt.removeprefix('mnist-')} {hook}" + ("" if (sampler, steps) == ("dpmpp_2m_sde", 20)
                                                           else f" {rule} {steps}")
        points.append({"recipe": label, "fd": statistics.mean(r["fd"] for r in rs), "colour": colours[names.index(ckpt) % 4],
                       "accuracy": statistics.mean(r["accuracy"] for r in rs)})
        floors.append(statistics.mean(r["floor"] for r in rs))
    draw(points, statistics.mean(floors), path, f"means over seeds {', '.join(map(str, seeds))} "
         "(dpmpp_2m_sde 20 steps unless said), one point a recipe")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hooks", nargs="*", default=[])
    ap.add_argument("--checkpoint", default=None, help="class-conditioned DDPM (default: the shipped model)")
    ap.add_argument("--sampler", default="dpmpp_2m_sde")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1000, 2000, 3000, 5000])
    ap.add_argument("--num", type=int, default=100, help="samples a class")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=None, help="JSON lines, appended")
    ap.add_argument("--plot", type=Path, default=None, help="after the runs, plot every recipe in --out measured "
                                                            "under exactly --seeds")
    a = ap.parse_args()
    done = {}
    if a.out and a.out.exists():
        done = {key(r): r for r in map(json.loads, a.out.read_text().splitlines()) if r}
    print(f"checkpoint {a.checkpoint or 'shipped'}, {a.sampler} {a.steps} steps, N = {10 * a.num}, "
          f"seeds {a.seeds}, {a.device}", flush=True)
    print("| `--hook` | accuracy, mean (range) | FD, mean | floor, mean | mean FD / mean floor | x floor per seed |")
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    for hook in a.hooks:
        rows = []
        for seed in a.seeds:
            probe = {"checkpoint": a.checkpoint or "mnist-class", "hook": hook, "sampler": a.sampler, "steps": a.steps,
                     "seed": seed, "num": a.num, "device": a.device}
            r = done.get(key(probe)) or eval_once(hook, a, seed)
            if a.out and key(r) not in done:
                with a.out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
            rows.append(r)
        print(summary(rows), flush=True)
    if a.plot and a.out:
        plot(a.plot, [json.loads(line) for line in a.out.read_text().splitlines() if line], a.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
