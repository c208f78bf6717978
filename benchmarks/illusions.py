"""Illusions measured on MNIST (issue 37): for every view of the Visual Anagrams release, how often both
digits read, as `diffkit score` scores them (the shipped classifier in CLIP's place).

A cell is one view, one class pair (A, B) and one recipe: 50 samples of `--class A --technique
anagram:B,view=VIEW`, each scored from its 8-bit image as `diffkit score` reads a run's PNGs: success when
the sample reads as A and its view as B among all ten classes, alignment A (the worse of the two logits
of the asked classes) and concealment C (each view's softmax over A and B).

Selection: every recipe on the selection pairs and seeds; per view the recipe with the highest success
rate (ties: the higher concealment) is recommended. Held out: each view's recommended recipe on other
class pairs and other seeds, which is the figure reported.

    python benchmarks/illusions.py                 # writes benchmarks/results/illusions.json (~30 min, 2 cores)
    python benchmarks/illusions.py --gallery docs/img/illusions/bench   # also best and typical held-out samples
    python benchmarks/illusions.py --recipes 10 11 12 13 --views flip rotate_180 rotate_cw skew inner_circle \
        square_hinge patch_permute --out benchmarks/results/illusions_strong.json   # guidance past 20
    python benchmarks/illusions.py --recipes 14 15 16 --out benchmarks/results/illusions_x0.json \
        --gallery docs/img/illusions/x0   # LookingGlass's reduction=x0, the warps too
    python benchmarks/illusions.py --recipes 17 18 --out benchmarks/results/illusions_travel.json   # time travel
    python benchmarks/illusions.py --recipes 17 18 --views rotate_135 zoom_half mirror_30 \
        --out benchmarks/results/illusions_travel_warps.json   # time travel on the warps
    python benchmarks/illusions.py --recipes 14 15 16 17 18 --views cone_20 --out benchmarks/results/illusions_cone.json \
        --gallery docs/img/illusions/x0   # the conic mirror anamorphosis
    python benchmarks/illusions.py --recipes 19 20 --out benchmarks/results/illusions_heun.json   # x0 under Heun
    python benchmarks/illusions.py --recipes 21 22 23 --out benchmarks/results/illusions_flow.json \
        --gallery docs/img/illusions/flow   # the flow-matching model
    python benchmarks/illusions.py --recipes 24 --views flip rotate_180 rotate_cw skew inner_circle square_hinge jigsaw \
        patch_permute rotate_135 zoom_half mirror_30 --out benchmarks/results/illusions_flow_travel.json   # its time travel
    python benchmarks/illusions.py --views mirror_30 --out benchmarks/results/illusions_mirror.json \
        --gallery docs/img/illusions/mirror --recipe "mnist-flow cfg:15 euler 20 reduction=x0,levels=3" ...
        # the mirror's own sweep (pyramid levels, guidance, travel, last steps; the eight recipes it stores),
        # and illusions_mirror_levels.json: five more around levels=3
    python benchmarks/illusions.py --recommend --gallery docs/img/illusions/recommended   # each view's pick over
        # every stored run, its front-runners on three more selection pairs: illusions_recommended.json (~35 min)
    python benchmarks/illusions.py --recipe "mnist-flow cfg:10 euler 20 reduction=x0,last=2" --out R.json  # a new recipe

A warp view (rotate_135, zoom_half, mirror_30, cone_20) takes reduction=x0 recipes only, and not under heun (refused
since: docs/illusions.md, 'Heun and the warps'); the others are skipped for it.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

import torch

from common import ROOT, machine, record

RESULTS = ROOT / "benchmarks" / "results"

VIEWS = {"flip": "flip", "rotate_180": "rotate_180", "rotate_cw": "rotate_cw", "skew": "skew",
         "inner_circle": "inner_circle", "square_hinge": "square_hinge", "jigsaw": "jigsaw",
         "patch_permute": "patch_permute:4",
         # LookingGlass's warps, no permutations: reduction=x0 recipes only (--recipes 14 15 16)
         "rotate_135": "rotate:135", "zoom_half": "zoom:0.5", "mirror_30": "mirror:30", "cone_20": "cone:20"}
WARPS = {"rotate_135", "zoom_half", "mirror_30", "cone_20"}
SELECTION_PAIRS = [(1, 7), (6, 9), (0, 8)]
# --recommend's second look: more selection pairs for the runs' front-runners (three pairs could not tell
# recipes this close apart), disjoint from both lists, same selection seed
MORE_SELECTION_PAIRS = [(2, 5), (3, 8), (4, 7)]
HELDOUT_PAIRS = [(3, 5), (4, 9), (2, 7), (0, 6), (1, 4)]
SELECTION_SEED, HELDOUT_SEED = 0, 10000
# (model, cfg scale, rule, steps, anagram reduction)
RECIPES = [("mnist-h64", s, "dpmpp_2m_sde", 20, r) for r in ("mean", "alternate") for s in (3, 5, 10, 20)] + [
    ("mnist-h64", 5, "ddim", 20, "mean"), ("mnist-class", 5, "dpmpp_2m_sde", 20, "mean")] + [
    # past the first run's strongest (cfg 20 won 7 of 8 views): --recipes 10 11 12 13, illusions_strong.json
    ("mnist-h64", s, "dpmpp_2m_sde", 20, r) for r in ("mean", "alternate") for s in (30, 50)] + [
    # LookingGlass's average of clean images on per-view states (--recipes 14 15 16, illusions_x0.json)
    ("mnist-h64", s, "dpmpp_2m_sde", 20, "x0") for s in (5, 10, 20)] + [
    # LookingGlass's time travel against none, with a sampler that can step again (--recipes 17 18,
    # illusions_travel.json)
    ("mnist-h64", 10, "ddim", 20, r) for r in ("x0", "x0,travel=1")] + [
    # reduction=x0 under Heun, 10 steps (19 model calls a sample, as 20 one-evaluation steps): --recipes 19 20,
    # illusions_heun.json
    ("mnist-h64", s, "heun", 10, "x0") for s in (20, 30)] + [
    # the flow-matching model (mnist-flow), flow Euler, 20 steps: --recipes 21 22 23, illusions_flow.json. On a
    # permutation view, x0 and mean take the same steps up to float rounding under a deterministic rule (the
    # views' states stay each other's permutations), so x0 alone, which the warps take too.
    ("mnist-flow", s, "euler", 20, "x0") for s in (5, 10, 20)] + [
    # time travel on the flow model, at the scale most of its picks took: --recipes 24, illusions_flow_travel.json
    ("mnist-flow", 10, "euler", 20, "x0,travel=1")]


def recipe_name(r: tuple) -> str:
    model, scale, rule, steps, reduction = r
    return f"{model} cfg:{scale:g} {rule} {steps} reduction={reduction}"


def parse_recipe(name: str) -> tuple:
    """The recipe :func:`recipe_name` spells: ``--recipe`` takes one that RECIPES does not list, so that a new
    recipe needs no edit of this file (an edit makes every stored run of it stale until checked again)."""
    m = re.fullmatch(r"(\S+) cfg:(\S+) (\S+) (\d+) reduction=(\S+)", name.strip())
    if not m:
        raise SystemExit(f"--recipe {name!r}: spell it as recipe_name does, e.g. {recipe_name(RECIPES[21])!r}")
    model, scale, rule, steps, reduction = m.groups()
    return model, float(scale), rule, int(steps), reduction


def recipe_args(r: tuple) -> dict:
    """What `diffkit sample` takes beside `--class A --technique anagram:B,view=VIEW` (and the anagram's own)."""
    model, scale, rule, steps, reduction = r
    return {"args": ["--checkpoint", model, "--technique", f"cfg:{scale:g}", "--rule", rule, "--steps", str(steps)],
            "anagram": f"reduction={reduction}"}


_backends: dict[str, object] = {}


def backend(model: str):
    import diffkit

    if model not in _backends:
        _backends[model] = diffkit.load_backend("mnist", checkpoint=model, device="cpu")
    return _backends[model]


def takes(r: tuple, view: str) -> bool:
    """Whether ``view`` takes recipe ``r``: a warp takes reduction=x0 only, and no rule that evaluates twice a
    step (Heun: refused since it was measured here, illusions_heun.json and illusions_flow_more.json) unless
    its pyramid has one level (``levels=1``)."""
    one_level = "levels=1" in r[4].split(",")
    return view not in WARPS or (r[4].startswith("x0") and (r[2] != "heun" or one_level))


def cell(r: tuple, view: str, pair: tuple[int, int], n: int, seed: int, guidance: str | None = None) -> dict:
    """One view, pair and recipe: the samples, scored (``guidance``: a guider's spec in the recipe's cfg's
    place, benchmarks/guiders.py's)."""
    import diffkit
    from diffkit import io, registry, score

    model, scale, rule, steps, reduction = r
    a, b = pair
    spec = VIEWS[view]
    hooks = [guidance or f"cfg:{scale:g}", f'anagram:{b},view="{spec}",reduction={reduction}']
    res = diffkit.sample(backend(model), classes=[a], num=n, seed=seed, hooks=hooks, sampler=rule, steps=steps)
    v = registry.get_view(spec)
    images = [io.to_uint8(im).permute(2, 0, 1).float() / 255 for im in res.images]  # as the PNG holds it
    samples = [score.IllusionSample(f"{k}", ["sample", "view1"], [im, v.image(im)], [str(a), str(b)])
               for k, im in enumerate(images)]
    got = score.score_samples(samples, score.MnistScorer())
    rows = got.pop("samples")
    got["concealment_per_sample"] = [round(s["concealment"], 4) for s in rows]
    got["success_per_sample"] = [s["success"] for s in rows]
    got["_images"] = images
    return got


def over(cells: dict[str, dict]) -> dict:
    """A view's recipe over its pairs: success rate, mean A and C of all its samples."""
    n = sum(c["n"] for c in cells.values())
    return {"success_rate": sum(c["success_rate"] * c["n"] for c in cells.values()) / n,
            "alignment": sum(c["alignment"]["mean"] * c["n"] for c in cells.values()) / n,
            "concealment": sum(c["concealment"]["mean"] * c["n"] for c in cells.values()) / n,
            "n": n, "per_pair": {k: round(c["success_rate"], 4) for k, c in cells.items()}}


def gallery(folder: Path, view: str, cells: dict[str, dict]) -> None:
    """For each held-out pair: its best sample (highest concealment among successes, else overall) and a
    typical one (the median concealment), each beside its view: rows of [sample, view]."""
    from diffkit import io, registry

    v = registry.get_view(VIEWS[view])
    columns, titles = [], []
    for name, c in cells.items():
        conc = c["concealment_per_sample"]
        wins = [k for k, ok in enumerate(c["success_per_sample"]) if ok] or list(range(len(conc)))
        best = max(wins, key=lambda k: conc[k])
        typical = sorted(range(len(conc)), key=lambda k: conc[k])[len(conc) // 2]
        for k, what in ((best, "best"), (typical, "typical")):
            im = c["_images"][k]
            columns.append(torch.stack([im, v.image(im)]))
            titles.append(f"{name} {what}")
    folder.mkdir(parents=True, exist_ok=True)
    io.save_png(io.labelled_columns(columns, titles), folder / f"{view}.png")


def strip(cells: dict[str, dict]) -> dict[str, dict]:
    return {k: {kk: vv for kk, vv in c.items() if not kk.startswith("_")} for k, c in cells.items()}


def same_samples(a: dict, b: dict) -> bool:
    """Whether two cells read the same, sample by sample (success and concealment)."""
    return (a["success_per_sample"], a["concealment_per_sample"]) == (b["success_per_sample"],
                                                                      b["concealment_per_sample"])


def check(path: Path, views: list[str]) -> None:
    import json

    stored = json.loads(path.read_text())
    for view in views:
        h = stored["heldout"][view]
        for name, c in h["cells"].items():
            pair = tuple(int(v) for v in name.split("/"))
            got = cell(parse_recipe(h["recipe"]), view, pair, stored["num"], stored["heldout_seed"])
            same = same_samples(got, c)
            print(f"{view} {name} {h['recipe']}: {'the same' if same else 'DIFFERENT'} success and concealment, "
                  f"sample by sample", flush=True)
            if not same:
                raise SystemExit(1)


def stored_runs() -> dict[str, dict]:
    """Every stored run of this benchmark (results/illusions*.json but the recommendation), by name: a new run
    joins --recommend by being stored, with no edit here."""
    import json

    return {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("illusions*.json"))
            if p.stem != "illusions_recommended"}


def recommend(out: Path, top: int, num: int, gallery_folder: Path | None) -> None:
    """Each view's recipe over every stored run (:func:`stored_runs`), in two looks. First, as each run
    chose within itself: success on the selection pairs (ties: the higher concealment), over every recipe
    every run tried. Then the ``top`` front-runners are sampled on MORE_SELECTION_PAIRS too (same seed), and
    the pick is the best over all six pairs. The pick is then sampled on the held-out pairs and seeds, which
    is what is reported; where its own run held it out already, every sample must come out the same (or
    this stops)."""
    runs = stored_runs()
    at = machine()
    t0 = time.perf_counter()
    recommended, same = {}, set()
    for view in VIEWS:
        first: dict[str, tuple[dict, str]] = {}  # recipe -> (its selection entry, the run that holds it)
        for name, run in runs.items():
            for recipe, s in run["selection"].get(view, {}).items():
                first.setdefault(recipe, (s, name))
        if not first:
            continue
        ranked = sorted(first, key=lambda k: (first[k][0]["success_rate"], first[k][0]["concealment"]), reverse=True)
        candidates = {}
        for recipe in [r for r in ranked if takes(parse_recipe(r), view)][:top]:
            s, name = first[recipe]
            more = {f"{p[0]}/{p[1]}": cell(parse_recipe(recipe), view, p, num, SELECTION_SEED)
                    for p in MORE_SELECTION_PAIRS}
            both = over({**s["cells"], **strip(more)})
            candidates[recipe] = {"from": f"benchmarks/results/{name}.json",
                                  "first_selection_success": round(s["success_rate"], 4),
                                  "selection_success": round(both["success_rate"], 4),
                                  "selection_concealment": round(both["concealment"], 4),
                                  "selection_per_pair": both["per_pair"], "more_cells": strip(more)}
            print(f"{view:14s} {recipe:52s} 3 pairs {s['success_rate']:.3f}  6 pairs {both['success_rate']:.3f}  "
                  f"per pair {both['per_pair']}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        pick = max(candidates, key=lambda k: (candidates[k]["selection_success"],
                                              candidates[k]["selection_concealment"]))
        cells = {f"{p[0]}/{p[1]}": cell(parse_recipe(pick), view, p, num, HELDOUT_SEED) for p in HELDOUT_PAIRS}
        own = runs[first[pick][1]]
        stored = own["heldout"].get(view, {})
        if stored.get("recipe") == pick and own["num"] == num:  # its own run's pick: the same samples, or a drift
            for k, c in stored["cells"].items():
                if not same_samples(c, cells[k]):
                    raise SystemExit(f"{view} {k} {pick}: held-out samples differ from "
                                     f"{candidates[pick]['from']}'s; run it again before recommending")
            same.add(first[pick][1])
        if gallery_folder:
            gallery(gallery_folder, view, cells)
        held = over(cells)
        recommended[view] = {**recipe_args(parse_recipe(pick)), "recipe": pick, "view": VIEWS[view],
                             "selection_success": candidates[pick]["selection_success"],
                             "first_selection_success": candidates[pick]["first_selection_success"],
                             "first_pick": ranked[0], "heldout_success": held["success_rate"],
                             "heldout_alignment": held["alignment"], "heldout_concealment": held["concealment"],
                             "heldout_per_pair": held["per_pair"], "heldout_cells": strip(cells),
                             "from": candidates[pick]["from"], "recipes_tried": len(first), "candidates": candidates}
        print(f"{view:14s} PICK {pick:47s} selection {candidates[pick]['selection_success']:.3f}  held out "
              f"{held['success_rate']:.3f}  per pair {held['per_pair']}", flush=True)
    record(out, {"what": "MNIST illusions: each view's recipe over every stored run: the front-runners on the first "
                         "selection pairs sampled on more selection pairs (same seed), the best over all of them "
                         "sampled on the held-out pairs and seeds",
                 "runs": {name: run["commit"] for name, run in runs.items()}, "num": num, "top": top,
                 "selection_pairs": SELECTION_PAIRS + MORE_SELECTION_PAIRS, "heldout_pairs": HELDOUT_PAIRS,
                 "selection_seed": SELECTION_SEED, "heldout_seed": HELDOUT_SEED,
                 "seconds": round(time.perf_counter() - t0, 1), "recommended": recommended,
                 "heldout_same_as": sorted(same),  # runs whose stored held-out samples this made again, each the same
                 "median_heldout_success": statistics.median(r["heldout_success"] for r in recommended.values())},
           at)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=50, help="samples a cell")
    ap.add_argument("--views", nargs="+", default=list(VIEWS))
    ap.add_argument("--recipes", type=int, nargs="+", default=None, help="indices into RECIPES (default all)")
    ap.add_argument("--recipe", action="append", default=[], metavar="NAME",
                    help="a recipe RECIPES does not list, spelt as the results spell one (repeat for more): "
                         "'mnist-flow cfg:10 euler 20 reduction=x0,last=2'")
    ap.add_argument("--gallery", type=Path, default=None, help="folder for the held-out best/typical images")
    ap.add_argument("--out", type=Path, default=RESULTS / "illusions.json")
    ap.add_argument("--check", nargs="+", default=None, metavar="VIEW",
                    help="run these views' stored held-out cells again with today's code and compare them with the "
                         "stored result, sample by sample (shows it still holds)")
    ap.add_argument("--recommend", action="store_true",
                    help="choose each view's recipe over every stored run (its --top front-runners sampled on "
                         "more selection pairs, the pick on the held-out ones): --out defaults to "
                         "benchmarks/results/illusions_recommended.json")
    ap.add_argument("--top", type=int, default=3, help="with --recommend: front-runners a view takes to the "
                                                       "second look")
    a = ap.parse_args()
    if a.recommend:
        return recommend(a.out if a.out != ap.get_default("out") else RESULTS / "illusions_recommended.json",
                         a.top, a.num, a.gallery)
    if a.check:
        return check(a.out, a.check)
    at = machine()
    listed = a.recipes if a.recipes or a.recipe else range(len(RECIPES))  # all listed ones unless any are named
    recipes = [RECIPES[i] for i in listed or []] + [parse_recipe(n) for n in a.recipe]
    t0 = time.perf_counter()
    selection, recommended, heldout = {}, {}, {}
    for view in a.views:
        selection[view] = {}
        mine = [r for r in recipes if takes(r, view)]
        if not mine:
            continue
        for r in mine:
            cells = {f"{p[0]}/{p[1]}": cell(r, view, p, a.num, SELECTION_SEED) for p in SELECTION_PAIRS}
            selection[view][recipe_name(r)] = {**over(cells), "cells": strip(cells)}
            s = selection[view][recipe_name(r)]
            print(f"{view:14s} {recipe_name(r):52s} success {s['success_rate']:.3f}  C {s['concealment']:.3f}  "
                  f"per pair {s['per_pair']}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        best = max(mine, key=lambda r: (selection[view][recipe_name(r)]["success_rate"],
                                           selection[view][recipe_name(r)]["concealment"]))
        recommended[view] = {**recipe_args(best), "recipe": recipe_name(best),
                             "view": VIEWS[view]}
        cells = {f"{p[0]}/{p[1]}": cell(best, view, p, a.num, HELDOUT_SEED) for p in HELDOUT_PAIRS}
        heldout[view] = {"recipe": recipe_name(best), **over(cells), "cells": strip(cells)}
        if a.gallery:
            gallery(a.gallery, view, cells)
        h = heldout[view]
        print(f"{view:14s} HELD OUT {recipe_name(best):43s} success {h['success_rate']:.3f}  C {h['concealment']:.3f}  "
              f"per pair {h['per_pair']}", flush=True)
    record(a.out, {
        "what": "MNIST illusions: success (both digits read by the shipped classifier), alignment and concealment "
                "(diffkit score) per view, recipe and class pair; a recipe per view chosen on the selection pairs "
                "and seeds, reported on held-out pairs and seeds",
        "num": a.num, "selection_pairs": SELECTION_PAIRS, "heldout_pairs": HELDOUT_PAIRS,
        "selection_seed": SELECTION_SEED, "heldout_seed": HELDOUT_SEED, "views": {v: VIEWS[v] for v in a.views},
        "recipes": [recipe_name(r) for r in recipes], "seconds": round(time.perf_counter() - t0, 1),
        "recommended": recommended, "heldout": heldout, "selection": selection,
        "median_heldout_success": statistics.median(h["success_rate"] for h in heldout.values()),
    }, at)


if __name__ == "__main__":
    main()
