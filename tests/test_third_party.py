"""A separately packaged plugin installs through pip, shows in `diffkit hooks`, runs from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "diffkit-negative-prompt"
BIN = Path(sys.executable).parent


def pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example package installed with pip into a throwaway folder (``--target``), found through
    PYTHONPATH: the test environment itself is never changed, even by an aborted run."""
    try:
        import setuptools  # noqa: F401  (build without network when it is already here)
        flags = ["--no-build-isolation"]
    except ImportError:
        flags = []
    import shutil

    root = tmp_path_factory.mktemp("example")
    src = root / "pkg"
    shutil.copytree(EXAMPLE, src)  # a build leaves build/ and egg-info beside the sources: not in the checkout
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
    from diffkit import hookspecs, plugins
    from diffkit.hookspecs import hookimpl
    from diffkit.plugins import PluginError
    from diffkit.technique import Projector

    class Typo(Projector):
        name = "typo"

        @hookimpl
        def diffkit_after_stepp(self, ctx, step):
            step.x = step.x * 0

    with pytest.raises(PluginError, match="hook 'typo' implements a hook diffkit does not declare.*diffkit_after_stepp"):
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
        plugins.check_pending(pm)
