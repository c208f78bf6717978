"""The quality tables of docs/quality.md against today's class-balanced real-data floor (issue 22).

`diffkit eval mnist --seed S` once drew its floor's 1,000 real training digits at random, whose class
counts wander (floors 3.52-5.38); it now draws them as the samples are, 100 a class (`real_floor`). The
samples' FDs in ``benchmarks/results/seeds.jsonl`` do not depend on the floor, so this script computes
the balanced floor each seed's `eval mnist` draws today and sets every stored row beside it:

- ``floors``: the balanced floor of each seed at N = 1,000 (100 a class), and at N = 10,000 (1,000 a class);
- ``tables``: for each recipe in seeds.jsonl, over the seeds the recipe was chosen on (0, 1000, 2000, 3000,
  5000) and over the held-out ones (4000, 6000, 7000, 8000, 9000): accuracy mean and range, FD mean, floor
  mean, mean FD / mean floor and the per-seed range of FD / floor, N the samples pooled.

    python benchmarks/floors.py [--data ../shared/data/mnist]   # writes benchmarks/results/quality_tables.json

The samples' rows were measured before this commit (the commits that added them are stored as
``samples_from``); the floors are computed at the commit stored as ``commit``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

import torch

from common import ROOT, record

CHOSEN_ON = [0, 1000, 2000, 3000, 5000]
HELD_OUT = [4000, 6000, 7000, 8000, 9000]
SEEDS = ROOT / "benchmarks" / "results" / "seeds.jsonl"


def floors(data: Path | None, per_class: int, seeds: list[int]) -> dict[int, float]:
    """The floor `eval mnist --num per_class --seed S` reports today, for each seed S."""
    from diffkit.mnist import data as mnist
    from diffkit.mnist.evaluate import load_classifier, real_floor, test_features

    clf = load_classifier(None)
    real = test_features(None, str(data) if data else None)
    train_x, train_y = mnist.load("train", data)
    labels = torch.arange(10).repeat_interleave(per_class)
    return {s: real_floor(clf, train_x, train_y, labels, real, s) for s in seeds}


def summary(rows: list[dict], floor: dict[int, float]) -> dict[str, object]:
    acc = [r["accuracy"] for r in rows]
    fd = statistics.mean(r["fd"] for r in rows)
    fl = statistics.mean(floor[r["seed"]] for r in rows)
    x = [r["fd"] / floor[r["seed"]] for r in rows]
    return {"seeds": sorted(r["seed"] for r in rows), "n": sum(10 * r["num"] for r in rows),
            "accuracy": {"mean": statistics.mean(acc), "min": min(acc), "max": max(acc)},
            "fd_mean": fd, "floor_mean": fl, "fd_over_floor": fd / fl, "x_floor_per_seed": [min(x), max(x)]}


def markdown(name: str, s: dict) -> str:
    a = s["accuracy"]
    return (f"| {name} | {a['mean']:.4f} ({a['min']:.3f}-{a['max']:.3f}) | {s['fd_mean']:.2f} | {s['floor_mean']:.2f} "
            f"| {s['fd_over_floor']:.2f} | {s['x_floor_per_seed'][0]:.2f}-{s['x_floor_per_seed'][1]:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    a = ap.parse_args()
    f1k = floors(a.data, 100, sorted(CHOSEN_ON + HELD_OUT))
    f10k = floors(a.data, 1000, [0])
    rows = [json.loads(line) for line in SEEDS.read_text().splitlines() if line]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["checkpoint"], r["hook"], r["sampler"], r["steps"], r["num"], r["device"]), []).append(r)
    tables = []
    for (ckpt, hook, sampler, steps, num, device), rs in groups.items():
        entry = {"checkpoint": ckpt, "hook": hook, "sampler": sampler, "steps": steps, "num": num, "device": device}
        for split, seeds in (("chosen_on", CHOSEN_ON), ("held_out", HELD_OUT)):
            mine = [r for r in rs if r["seed"] in seeds]
            if sorted(r["seed"] for r in mine) == seeds:
                entry[split] = summary(mine, f1k)
        if "chosen_on" in entry or "held_out" in entry:
            tables.append(entry)
    print("| recipe | split | accuracy, mean (range) | FD, mean | floor, mean | mean FD / mean floor | x floor per seed |")
    for e in tables:
        for split in ("chosen_on", "held_out"):
            if split in e:
                name = f"{e['checkpoint']} `{e['hook']}` {e['sampler']} {e['steps']} {e['device']}"
                print(markdown(name, e[split]).replace(" |", f" | {split} |", 1))
    print("floors at N = 1,000:", {k: round(v, 2) for k, v in f1k.items()}, "at 10,000 (seed 0):", round(f10k[0], 3))
    added = subprocess.run(["git", "log", "--format=%H", "--", str(SEEDS)], cwd=ROOT, capture_output=True,
                           text=True).stdout.split()
    record(ROOT / "benchmarks" / "results" / "quality_tables.json",
           {"floors_n1000": {str(k): v for k, v in f1k.items()}, "floor_n10000_seed0": f10k[0],
            "floor_mean_chosen_on": statistics.mean(f1k[s] for s in CHOSEN_ON),
            "floor_mean_held_out": statistics.mean(f1k[s] for s in HELD_OUT),
            "samples_from": {"file": "benchmarks/results/seeds.jsonl", "commits": added}, "tables": tables})


if __name__ == "__main__":
    main()
