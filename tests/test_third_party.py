"""A separately packaged plugin installs through pip, shows in `diffkit hooks`, runs from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "diffkit-negative-prompt"
BLOBS = EXAMPLE.parent / "diffkit-blobs"  # a third party's backend
SLIDE = EXAMPLE.parent / "diffkit-slide-view"  # a third party's view, with its motion
BIN = Path(sys.executable).parent


def pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example package installed with pip into a throwaway folder (``--target``), found through
    PYTHONPATH: the test environment itself is never changed, even by an aborted run."""
    return install(tmp_path_factory, EXAMPLE)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """The third-party backend package, installed the same way."""
    return install(tmp_path_factory, BLOBS)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return install(tmp_path_factory, SLIDE)


def install(tmp_path_factory, package: Path) -> Path:
    try:
        import setuptools  # noqa: F401  (build without network when it is already here)
        flags = ["--no-build-isolation"]
    except ImportError:
        flags = []
    import shutil

    root = tmp_path_factory.mktemp("example")
    src = root / "pkg"
    shutil.copytree(package, src)  # a build leaves build/ and egg-info beside the sources: not in the checkout
    r = pip("install", "-q", "--no-deps", "--target", str(root / "site"), *flags, str(src))
    assert r.returncode == 0, r.stderr
    return root / "site"


def diffkit(*args, env=None, site=None):
    path = os.pathsep.join(p for p in (str(site or ""), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([str(BIN / "diffkit"), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path, **(env or {})})


def test_example_plugin_is_listed_and_runs(installed, tmp_path):
    assert "negative" not in diffkit("hooks").stdout  # not installed in the test environment itself
    r = diffkit("hooks", site=installed)
    assert r.returncode == 0 and "negative" in r.stdout and "avoid" in r.stdout
    out = tmp_path / "o"
    r = diffkit("sample", "-b", "gaussian", "-c", "0,1", "--stride", "30", "--hook", "negative:1,scale=4",
                "--out", out, site=installed)
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["hooks"] == [{"name": "negative", "args": {"prompt": "1", "scale": 4.0}}]


def test_autoload_switch_keeps_third_party_plugins_out(installed):
    r = diffkit("hooks", env={"DIFFKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}, site=installed)
    assert r.returncode == 0 and "negative" not in r.stdout and "anagram" in r.stdout


def test_negative_prompt_moves_samples_away_from_the_negative_class():
    """Exact Gaussian backend (class means 0.3 and 0.7): scale 1, or the sample's own class as the negative,
    is plain sampling; class 0 guided away from class 1 lands below class 0's plain samples."""
    import torch

    import diffkit as dk
    from diffkit.backends.gaussian import GaussianBackend

    sys.path.insert(0, str(EXAMPLE))
    from diffkit_negative import Negative

    b = GaussianBackend(stride=30)
    plain = dk.sample(b, classes=[0], num=64, seed=1).x
    assert torch.equal(dk.sample(b, classes=[0], num=64, seed=1, hooks=[Negative(prompt="1", scale=1.0)]).x, plain)
    assert torch.allclose(dk.sample(b, classes=[0], num=64, seed=1, hooks=[Negative(prompt="0", scale=3.0)]).x,
                          plain, atol=1e-12)
    away = dk.sample(b, classes=[0], num=64, seed=1, hooks=[Negative(prompt="1", scale=3.0)]).x
    assert away.mean() < plain.mean() - 0.05


def test_a_misspelled_hook_implementation_is_an_error_not_silence():
    """pluggy's check_pending(), as pytest calls it: a technique or plugin module implementing a hook no
    spec declares (diffkit_after_stepp) is refused naming it, before any step; spelled right, it runs."""
    import types

    import pluggy

    import diffkit
    from diffkit import hookspecs, registry
    from diffkit.hookspecs import hookimpl
    from diffkit.registry import PluginError
    from diffkit.technique import Projector

    class Typo(Projector):
        name = "typo"

        @hookimpl
        def diffkit_after_stepp(self, ctx, step):
            step.x = step.x * 0

    with pytest.raises(PluginError, match="technique 'typo' implements a hook diffkit does not declare.*diffkit_after_stepp"):
        diffkit.Run("gaussian", hooks=[Typo()])

    class Right(Projector):
        name = "right"

        @hookimpl
        def diffkit_after_step(self, ctx, step):
            step.x = step.x * 0

    assert float(diffkit.sample("gaussian", steps=2, hooks=[Right()]).x.abs().max()) == 0.0

    module = types.ModuleType("someones_plugin")
    module.diffkit_viewz = hookimpl(lambda: [])
    pm = pluggy.PluginManager("diffkit")
    pm.add_hookspecs(hookspecs)
    pm.register(module, name="someones_plugin")
    with pytest.raises(PluginError, match="plugin 'someones_plugin' implements a hook.*diffkit_viewz"):
        registry.check_pending(pm)


# ---- a third party's backend works everywhere a built-in does ----

def test_a_third_party_backend_is_listed_with_its_options_and_its_flag(blobs):
    assert "blobs" not in diffkit("backends").stdout  # not installed in the test environment itself
    r = diffkit("backends", site=blobs)
    assert r.returncode == 0 and "blobs" in r.stdout and "contrast" in r.stdout and "std" in r.stdout
    for command in (["sample"], ["noise"], ["denoise"], ["eval", "mnist"], ["embed"]):
        help = diffkit(*command, "--help", site=blobs).stdout
        assert "--contrast" in help and "blobs:" in help, command  # its declared flag, on every such command
        assert "--std" not in help  # not declared a flag: -O std=... only
    assert "--contrast" not in diffkit("sample", "--help").stdout


def test_a_third_party_backend_samples_with_techniques_and_repeats_from_its_run_json(blobs, tmp_path):
    r = diffkit("sample", "-b", "blobs", "--contrast", "0.5", "-O", "std=0.05", "-c", "0,9", "-n", "2",
                "-H", "cfg:2", "-H", "anagram:3,view=flip_v", "--sampler", "dpmpp_2m", "--steps", "6",
                "--batch-size", "3", "--out", tmp_path / "a", site=blobs)
    assert r.returncode == 0, r.stderr
    request = json.loads((tmp_path / "a" / "run.json").read_text())["request"]
    assert request["backend"] == "blobs" and request["backend_options"] == {"contrast": 0.5, "std": 0.05}
    r = diffkit("sample", "--from", tmp_path / "a" / "run.json", "--out", tmp_path / "b", site=blobs)
    assert r.returncode == 0, r.stderr
    same = [p.name for p in sorted((tmp_path / "a").iterdir()) if p.is_file()]
    assert same and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in same)
    r = diffkit("sample", "-b", "blobs", "--contrast", "2", "--out", tmp_path / "c", site=blobs)
    assert r.returncode == 2 and "option 'contrast' must be a finite number in 0..1" in r.stderr
    assert not (tmp_path / "c").exists()
    r = diffkit("sample", "--from", tmp_path / "a", "--out", tmp_path / "d")  # the package is not installed
    assert r.returncode == 2 and "unknown backend 'blobs'" in r.stderr


def test_a_third_party_backend_serves_the_studies_the_report_and_the_ui(blobs, tmp_path):
    from PIL import Image

    Image.new("L", (28, 28), 200).save(tmp_path / "in.png")
    r = diffkit("noise", tmp_path / "in.png", "-b", "blobs", "--contrast", "0.4", "--t", "100",
                "--out", tmp_path / "noise.png", site=blobs)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "noise.json").read_text())["backend"] == "blobs"
    r = diffkit("denoise", tmp_path / "in.png", "-b", "blobs", "-O", "std=0.2", "--t", "100", "--stride", "50",
                "--out", tmp_path / "denoise.png", site=blobs)
    assert r.returncode == 0, r.stderr
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    if not data.is_dir():
        pytest.skip("the MNIST files are not in ../shared/data/mnist")
    r = diffkit("eval", "mnist", "-b", "blobs", "--contrast", "0.9", "-n", "1", "--steps", "2", "--data", data,
                "--out", tmp_path / "eval.json", site=blobs)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["num_per_class"] == 1
    r = diffkit("eval", "mnist", "-b", "gaussian", "-O", "means=0,.1,.2,.3,.4,.5,.6,.7,.8,.9", "-n", "1",
                "--steps", "2", "--data", data, site=blobs)
    assert r.returncode == 2 and "makes 1x8x8 images" in r.stderr
    # the UI: the backend's form and its run, as the page makes them, and the command the page shows
    script = (
        "import sys; from pathlib import Path; from diffkit import ui, registry\n"
        "out = Path(sys.argv[1]); s = ui.Settings(out, ui.default_choices())\n"
        "assert 'blobs' in registry.backends()\n"
        "*_, last = ui.run_page(s, out / 'up', 'blobs', {'contrast': 0.3, 'std': 0.1}, '1,8', [], 2, 1, 4, None)\n"
        "print(last[3])\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(blobs), os.environ.get("PYTHONPATH", "")) if p)}
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ui")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "--backend blobs --contrast 0.3" in r.stdout and "--class 1,8" in r.stdout
    run = next(p for p in (tmp_path / "ui").glob("run-*") if p.is_dir())
    assert json.loads((run / "run.json").read_text())["request"]["backend_options"] == {"contrast": 0.3}


# ---- a third party's view animates as it declares, with no edit in diffkit ----

def test_a_third_party_view_samples_and_animates_with_its_declared_motion(slide, tmp_path):
    r = diffkit("hooks", site=slide)
    assert r.returncode == 0 and "slide" in r.stdout
    out = tmp_path / "o"
    r = diffkit("sample", "-c", "3", "-H", "cfg:2", "-H", "anagram:8,view=slide", "--steps", "4", "--animate",
                "--out", out, site=slide)
    assert r.returncode == 0, r.stderr
    assert (out / "sample-000.view1.png").is_file() and (out / "sample-000.view1.gif").is_file()
    script = (
        "import sys, torch; from pathlib import Path; from diffkit import animate, io, registry\n"
        "import diffkit_slide\n"
        "folder = Path(sys.argv[1]); (name, (clip,)), = animate.clips_of(folder)\n"
        "img = io.load_png(folder / name); view = registry.get_view('slide')\n"
        "assert torch.equal(clip.frame(0.0), img) and torch.equal(clip.frame(1.0), view.image(img))\n"
        "assert torch.equal(view.image(img), io.load_png(folder / 'sample-000.view1.png'))\n"
        "mid = clip.frame(0.5)\n"
        "from diffkit.motion import smooth\n"
        "assert torch.equal(mid, diffkit_slide.slide(img, smooth(0.5)).clamp(0, 1))\n"
        "assert not torch.equal(mid, img) and not torch.equal(mid, view.image(img))\n"
        "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(slide), os.environ.get("PYTHONPATH", "")) if p)}
    r = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_animate_names_no_technique_and_no_view():
    """animate.py draws what techniques and views declare; none is named there (issue 35, point 4)."""
    import ast

    from diffkit import animate, registry

    names = set(registry.techniques()) | set(registry.views())
    tree = ast.parse(Path(animate.__file__).read_text())
    spelled = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not names & spelled, names & spelled
    src = Path(animate.__file__).read_text()
    assert "jigsaw" not in src.split('"""', 2)[2]  # the jigsaw's geometry and motion live in the views plugin
