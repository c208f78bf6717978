"""The GPU scripts work before a GPU is lent: benchmarks/flow_vs_diffusers.py --shaped builds a model of the
real families' kind (SD3.5 medium's and Flux.1 dev's transformer configs, the real VAE and text encoders'
widths), here with one block and two heads on the CPU, and times diffkit against the pipeline on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_sd import TOL

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("family,pipeline", [("sd3", "StableDiffusion3Pipeline"), ("flux", "FluxPipeline")])
def test_the_shaped_flow_benchmark_runs_and_agrees_with_the_pipeline(family, pipeline, tmp_path):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "flow_vs_diffusers.py"), "--shaped", "--family", family,
                        "--device", "cpu", "--dtype", "fp32", "--size", "64", "--layers", "1", "--heads", "2",
                        "--steps", "2", "--repeats", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["pipeline"] == pipeline and got["shaped"] and got["size"] == 64
    assert len(got["seconds"]["diffkit"]) == 1 and len(got["seconds"][pipeline]) == 1
    assert got["peak_gib"] == {"diffkit": None, pipeline: None}  # GPU memory: on a GPU only
    assert got["max_abs_diff"] <= TOL  # on the CPU both sides draw the same noise: the same images
    assert f"ratio diffkit / {pipeline}" in r.stdout


def test_the_illusion_benchmark_takes_a_recipe_by_the_name_its_results_spell():
    """``--recipe NAME`` (a recipe the source does not list) reads back what ``recipe_name`` wrote, for every
    listed recipe and for every recipe a stored run names; a name spelt otherwise is refused."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import illusions
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    for r in illusions.RECIPES:
        assert illusions.parse_recipe(illusions.recipe_name(r)) == r
    runs = illusions.stored_runs()
    assert "illusions_recommended" not in runs and "illusions" in runs
    for run in runs.values():
        for name in run["recipes"]:
            assert illusions.recipe_name(illusions.parse_recipe(name)) == name
    with pytest.raises(SystemExit, match="spell it as recipe_name does"):
        illusions.parse_recipe("mnist-flow cfg10 euler 20")


def test_the_illusion_benchmark_offers_a_warp_exactly_the_recipes_diffkit_runs_with_it():
    """``takes``: a warp view is offered a recipe (a new run, or --recommend's second look) exactly when
    diffkit runs it: reduction=x0, and no rule that evaluates twice a step (refused by name)."""
    import diffkit
    from diffkit.errors import UserError

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import illusions
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    recipes = {illusions.recipe_name(r): r for r in illusions.RECIPES}
    for run in illusions.stored_runs().values():
        recipes.update({name: illusions.parse_recipe(name) for name in run["recipes"]})
    recipes.update({n: illusions.parse_recipe(n) for n in ("mnist-flow cfg:10 heun 10 reduction=x0,levels=1",
                                                            "mnist-h64 cfg:10 heun 10 reduction=x0,levels=2")})
    offered = {True: 0, False: 0}
    for view in sorted(illusions.WARPS):
        for model, scale, rule, _, reduction in recipes.values():
            hooks = [f"cfg:{scale:g}", f'anagram:7,view="{illusions.VIEWS[view]}",reduction={reduction}']
            try:
                diffkit.sample(illusions.backend(model), classes=[1], num=1, seed=0, hooks=hooks, sampler=rule, steps=2)
                runs = True
            except UserError:
                runs = False
            r = (model, scale, rule, 2, reduction)
            assert illusions.takes(r, view) == runs, (view, r)
            offered[runs] += 1
    assert offered[True] and offered[False]  # both kinds were asked


def test_the_illusion_recommendation_is_current_with_the_stored_runs():
    """A run stored after the recommendation was chosen would have changed it where one of its recipes ranks
    among a view's front-runners: then the recommendation must be chosen again (``illusions.py
    --recommend``). Each view's candidates are the front-runners over every run stored now, the
    ceiling's recipes (benchmarks/illusion_ceiling.py) are each view's front-runners then, the fresh
    pairs' run (benchmarks/illusion_fresh.py) read that ceiling, and the held-out pick
    (benchmarks/illusion_heldout_pick.py) read both."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import illusion_ceiling
        import illusions
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    rec = json.loads((illusions.RESULTS / "illusions_recommended.json").read_text())
    runs = illusions.stored_runs()
    for view, r in rec["recommended"].items():
        assert list(r["candidates"]) == illusion_ceiling.front_runners(view, runs, rec["top"]), view
    ceiling = json.loads((illusions.RESULTS / "illusion_ceiling.json").read_text())
    assert ceiling["recommended_commit"] == rec["commit"]
    for view, c in ceiling["views"].items():
        tops = illusion_ceiling.front_runners(view, runs, ceiling["top"])
        assert c["recipes"] == tops + ([] if rec["recommended"][view]["recipe"] in tops
                                       else [rec["recommended"][view]["recipe"]]), view
    fresh = json.loads((illusions.RESULTS / "illusion_fresh.json").read_text())  # illusion_fresh.py, on the ceiling
    assert fresh["ceiling_commit"] == ceiling["commit"] and list(fresh["views"]) == list(ceiling["views"])
    # illusion_heldout_pick.py, on both: every view the ceiling left unbounded, each with all its recipes
    pick = json.loads((illusions.RESULTS / "illusion_heldout_pick.json").read_text())
    assert (pick["ceiling_commit"], pick["fresh_commit"]) == (ceiling["commit"], fresh["commit"])
    assert list(pick["views"]) == [v for v, c in ceiling["views"].items() if c["can_reach_goal"]]
    for view, p in pick["views"].items():
        assert list(p["recipes"]) == ceiling["views"][view]["recipes"], view
