"""Legible and diverse: accuracy against Frechet distance (FD) for guidance recipes on the shipped model.

    python benchmarks/quality.py [--num 100] [--recipes NAME ...] [--out benchmarks/results/quality.json]
                                 [--figures docs/img]

Every recipe (cfg scales 1-7, cfg in a limited interval, autoguide with the shipped weak model, and
the two combined) samples ``--num`` digits a class from seeds 0..N-1 and is measured as
``diffkit eval mnist`` measures (accuracy by the shipped classifier; FD in its features against the
10,000 real test digits), beside the real-data floor: the FD of as many real training digits. Results
are appended to ``--out`` as they come; a recipe already there is not run again.

``--figures`` writes quality.png (accuracy against FD, one point a recipe, the floor marked) and
quality-grid-RECIPE.png for the recipe nearest the target, the best one with accuracy >= 0.99, and
README's cfg:5.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from samplers import DATA, ROOT, measure  # noqa: E402

# name -> (hooks, sampler, steps): ddpm at 30 steps unless said (as docs/mnist.md's table)
RECIPES = {
    "cfg:1": (["cfg:1"], "ddpm", 30), "cfg:1.5": (["cfg:1.5"], "ddpm", 30), "cfg:2": (["cfg:2"], "ddpm", 30),
    "cfg:3": (["cfg:3"], "ddpm", 30), "cfg:5": (["cfg:5"], "ddpm", 30), "cfg:7": (["cfg:7"], "ddpm", 30),
    "cfg:2,hi=0.6": (["cfg:2,hi=0.6"], "ddpm", 30), "cfg:3,hi=0.4": (["cfg:3,hi=0.4"], "ddpm", 30),
    "cfg:3,lo=0.2,hi=0.8": (["cfg:3,lo=0.2,hi=0.8"], "ddpm", 30),
    "autoguide:1.3": (["autoguide:1.3"], "ddpm", 30), "autoguide:1.5": (["autoguide:1.5"], "ddpm", 30),
    "autoguide:2": (["autoguide:2"], "ddpm", 30), "autoguide:3": (["autoguide:3"], "ddpm", 30),
    "autoguide:1.5 euler_ancestral 20": (["autoguide:1.5"], "euler_ancestral", 20),
    "autoguide:2 dpmpp_2m 20": (["autoguide:2"], "dpmpp_2m", 20),
    "cfg:1.5+autoguide:1.5": (["cfg:1.5", "autoguide:1.5"], "ddpm", 30),
    "autoguide:1.7": (["autoguide:1.7"], "ddpm", 30),
    "autoguide:1.5 dpmpp_2m_sde 20": (["autoguide:1.5"], "dpmpp_2m_sde", 20),
    "cfg:1.5,hi=0.6+autoguide:1.5": (["cfg:1.5,hi=0.6", "autoguide:1.5"], "ddpm", 30),
    "autoguide:1.5 ddpm 100": (["autoguide:1.5"], "ddpm", 100),
    "cfg:2,hi=0.6+autoguide:1.3": (["cfg:2,hi=0.6", "autoguide:1.3"], "ddpm", 30),
    "cfg:1.5,hi=0.6+autoguide:1.3": (["cfg:1.5,hi=0.6", "autoguide:1.3"], "ddpm", 30),
    "cfg:2,hi=0.6 uni_pc 10": (["cfg:2,hi=0.6"], "uni_pc", 10),
    "cfg:2,hi=0.6 dpmpp_2m 20": (["cfg:2,hi=0.6"], "dpmpp_2m", 20),
    "cfg:1.5 uni_pc 10": (["cfg:1.5"], "uni_pc", 10),
    "cfg:1.6": (["cfg:1.6"], "ddpm", 30), "cfg:1.7,hi=0.8": (["cfg:1.7,hi=0.8"], "ddpm", 30),
    "cfg:1.5 dpmpp_2m_sde 20": (["cfg:1.5"], "dpmpp_2m_sde", 20),
}


def plot(rows: list[dict], floor: float, path: Path,
         title: str = "accuracy vs Frechet distance (log), shipped MNIST model, one point a recipe") -> None:
    """Accuracy (y) against FD (x, log), one labelled point a recipe (``colour`` a row's own, if it has
    one); the real-data floor as a line."""
    from PIL import Image, ImageDraw

    W, H, m = 760, 480, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    fds = [r["fd"] for r in rows] + [floor]
    x0, x1 = math.log10(min(fds)) - 0.05, math.log10(max(fds)) + 0.05
    accs = [r["accuracy"] for r in rows]
    y0, y1 = min(accs) - 0.01, 1.0 + 0.005

    def xy(fd: float, acc: float) -> tuple[float, float]:
        return (m + (W - 2 * m) * (math.log10(fd) - x0) / (x1 - x0), H - m - (H - 2 * m) * (acc - y0) / (y1 - y0))

    d.rectangle([m, m, W - m, H - m], outline="black")
    d.text((m, 20), title, fill="black")
    for v in (1, 2, 5, 10, 20, 50, 100, 200):
        if x0 <= math.log10(v) <= x1:
            X = xy(v, y0)[0]
            d.line([X, H - m, X, H - m + 4], fill="black")
            d.text((X - 6, H - m + 6), str(v), fill="black")
    for k in range(0, 11):
        a = y0 + (y1 - y0) * k / 10
        Y = xy(10, a)[1]
        d.line([m - 4, Y, m, Y], fill="black")
        d.text((8, Y - 6), f"{a:.3f}", fill="black")
    for mult, colour in ((1, "#2ca02c"), (2, "#98df8a")):
        X = xy(floor * mult, y0)[0]
        d.line([X, m, X, H - m], fill=colour)
        d.text((X + 3, m + 4 + 14 * (mult - 1)), f"{mult}x floor ({floor * mult:.1f})", fill=colour)
    Y = xy(10, 0.99)[1]
    d.line([m, Y, W - m, Y], fill="#cccccc")
    d.text((W - m - 90, Y - 14), "accuracy 0.99", fill="#999999")
    for r in rows:
        X, Y = xy(r["fd"], r["accuracy"])
        colour = r.get("colour") or ("#d62728" if r["recipe"].startswith("autoguide") else "#1f77b4")
        d.ellipse([X - 4, Y - 4, X + 4, Y + 4], fill=colour)
        d.text((X + 6, Y - 6), r["recipe"], fill=colour)
    img.save(path)


def best(rows: list[dict], floor: float) -> dict | None:
    """The recipe closest to real data (lowest FD) among those with accuracy >= 0.99."""
    return min((r for r in rows if r["accuracy"] >= 0.99), key=lambda r: r["fd"], default=None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=100, help="samples a class")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality.json")
    ap.add_argument("--figures", type=Path, default=None)
    a = ap.parse_args()

    from diffkit import io
    from diffkit.mnist import data as mnist
    from diffkit.mnist.evaluate import features, load_classifier, real_floor

    clf = load_classifier(None)
    real, _ = mnist.load("test", DATA)
    train_x, train_y = mnist.load("train", DATA)
    floor = real_floor(clf, train_x, train_y, torch.arange(10).repeat_interleave(a.num), features(clf, real), 0)
    print(f"real-data floor ({10 * a.num} training digits vs the test set): FD {floor:.2f}", flush=True)
    rows = json.loads(a.out.read_text()) if a.out.exists() else []
    for name in a.recipes:
        if any(r["recipe"] == name and r["samples"] == 10 * a.num for r in rows):
            continue
        hooks, sampler, steps = RECIPES[name]
        r = measure(hooks, sampler, steps, a.num, clf, real, a.batch)
        r.update(recipe=name, floor=floor, times_floor=r["fd"] / floor)
        rows.append(r)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        io.write_json(a.out, rows)
        print(f"{name:34s} acc {r['accuracy']:.3f}  FD {r['fd']:6.2f} ({r['fd'] / floor:.2f}x floor)", flush=True)
    mine = [r for r in rows if r["samples"] == 10 * a.num]
    print(f"{'recipe':34s} {'sampler':16s} {'steps':>5s} {'calls':>6s} {'acc':>6s} {'FD':>7s} {'x floor':>8s}")
    for r in sorted(mine, key=lambda r: r["fd"]):
        print(f"{r['recipe']:34s} {r['sampler']:16s} {r['steps']:5d} {r['calls_per_sample']:6.0f} "
              f"{r['accuracy']:6.3f} {r['fd']:7.2f} {r['fd'] / floor:8.2f}")
    b = best(mine, floor)
    target = b is not None and b["fd"] <= 2 * floor
    print("best with accuracy >= 0.99: " + (f"{b['recipe']} (acc {b['accuracy']:.3f}, FD {b['fd']:.2f} = "
                                             f"{b['fd'] / floor:.2f}x floor)" if b else "none")
          + f"; target (acc >= 0.99 and FD <= 2x floor) {'MET' if target else 'NOT MET'}")
    if a.figures:
        from diffkit import io as dio

        import diffkit

        a.figures.mkdir(parents=True, exist_ok=True)
        plot(mine, floor, a.figures / "quality.png")
        closest = min(mine, key=lambda r: max(r["fd"] / (2 * floor), 0.99 / r["accuracy"]))  # nearest the target
        for name in dict.fromkeys([closest["recipe"]] + ([b["recipe"]] if b else []) + ["cfg:5"]):
            hooks, sampler, steps = RECIPES[name]
            res = diffkit.sample("mnist", classes=list(range(10)), num=8, seed=0, hooks=hooks, sampler=sampler,
                                 steps=steps)
            slug = "".join(c if c.isalnum() else "-" for c in name)
            dio.save_png(dio.grid(res.images, 8), a.figures / f"quality-grid-{slug}.png")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    sys.exit(main())
