"""Every technique from the CLI on the MNIST backend, alone and combined."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffkit import io
from diffkit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    digit = torch.zeros(1, 28, 28)
    digit[:, 6:22, 12:16] = 1.0  # a "1"
    io.save_png(digit, d / "digit.png")
    mask = torch.zeros(1, 28, 28)
    mask[:, :14] = 1  # regenerate the top half
    io.save_png(mask, d / "mask.png")
    io.save_png(torch.zeros(1, 20, 20), d / "small_mask.png")
    # a large RGBA "hand drawing" with transparency: loaded, cropped and resized
    rgba = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (140, 40, 160, 160))
    rgba.save(d / "drawing.png")
    return d


def sample(tmp_path, ckpt, *args):
    out = tmp_path / "o"
    r = runner.invoke(app, ["sample", "-b", "mnist", "--checkpoint", str(ckpt), "--class", "3,8", "--steps", "8",
                            "--out", str(out), *map(str, args)])
    return r, out


@pytest.mark.parametrize("hooks", [
    ["anagram:6,view=rot180"],
    ["hybrid:1,kernel=9,sigma=2"],
    ["cfg:5", "anagram:6,view=rot90"],
    ["cfg:5", "anagram:6,0,view=flip_h,view=jigsaw"],
    ["cfg:5", "hybrid:1"],
    ["anagram:2,view=negate", "cfg:3"],
])
def test_combiners_run_alone_and_combined(tmp_path, tiny_mnist_ckpt, hooks):
    args = [a for h in hooks for a in ("--hook", h)]
    r, out = sample(tmp_path, tiny_mnist_ckpt, *args)
    assert r.exit_code == 0, r.output
    assert len(json.loads((out / "run.json").read_text())["samples"]) == 2


def test_inpaint_keeps_the_known_pixels(tmp_path, tiny_mnist_ckpt, images):
    r, out = sample(tmp_path, tiny_mnist_ckpt, "--hook", "cfg:5",
                    "--hook", f"inpaint:image={images / 'digit.png'},mask={images / 'mask.png'}")
    assert r.exit_code == 0, r.output
    orig = np.array(Image.open(images / "digit.png"))
    for name in ("sample-000.png", "sample-001.png"):
        got = np.array(Image.open(out / name))
        assert (got[14:] == orig[14:]).all()  # kept exactly
        assert (got[:14] != orig[:14]).any()  # made new


def test_inpaint_with_resampling_and_sdedit_compose(tmp_path, tiny_mnist_ckpt, images):
    r, out = sample(tmp_path, tiny_mnist_ckpt, "--hook", f"sdedit:image={images / 'drawing.png'},i_start=3",
                    "--hook", f"inpaint:image={images / 'digit.png'},mask={images / 'mask.png'},resample=2,jump=2")
    assert r.exit_code == 0, r.output
    got = np.array(Image.open(out / "sample-000.png"))
    assert (got[14:] == np.array(Image.open(images / "digit.png"))[14:]).all()


def test_sdedit_without_i_start_or_strength_starts_at_index_10(tmp_path, tiny_mnist_ckpt, images):
    """The documented default (a bug found by the UI's test: the default never reached the technique)."""
    r, out = sample(tmp_path, tiny_mnist_ckpt, "--hook", f"sdedit:image={images / 'drawing.png'}", "--steps", "20")
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "run.json").read_text())
    assert meta["hooks"][0]["args"]["i_start"] == 10, meta


def test_sdedit_strength_and_sweep_figure(tmp_path, tiny_mnist_ckpt, images):
    r, out = sample(tmp_path, tiny_mnist_ckpt, "--hook", f"sdedit:image={images / 'drawing.png'}",
                    "--sweep", "i_start=1,4,7")
    assert r.exit_code == 0, r.output
    for v in (1, 4, 7):
        meta = json.loads((out / f"i_start-{v}" / "run.json").read_text())
        assert meta["hooks"][0]["args"]["i_start"] == v and meta["sweep"] == {"i_start": str(v)}
    assert Image.open(out / "sweep.png").size[0] > 3 * 28
    r, out = sample(tmp_path / "s", tiny_mnist_ckpt, "--hook", f"sdedit:image={images / 'digit.png'},strength=0.5")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("hook,text", [
    ("inpaint:image={d}/digit.png,mask={d}/small_mask.png", "mask"),
    ("inpaint:image={d}/missing.png,mask={d}/mask.png", "missing.png"),
    ("sdedit:image={d}/digit.png,i_start=50", "i_start 50 is outside 0..7"),
    ("sdedit:image={d}/digit.png,i_start=2,strength=0.5", "not both"),
    ("anagram:6,view=spin", "unknown view 'spin'"),
    ("anagram:6,1", "give a view= for each"),
    ("hybrid:1,kernel=4", "odd"),
    ("hybrid:1,kernel=61", "too large"),
    ("anagram:12", "class must be a digit 0-9, got '12'"),
])
def test_bad_technique_input_is_a_clear_error(tmp_path, tiny_mnist_ckpt, images, hook, text):
    r, out = sample(tmp_path, tiny_mnist_ckpt, "--hook", hook.format(d=images))
    assert r.exit_code != 0
    assert text in " ".join(r.output.split()), r.output
    assert not out.exists() or not any(out.iterdir())


def test_sweep_keeps_save_every_and_every_other_option(tmp_path, tiny_mnist_ckpt):
    r, out = sample(tmp_path, tiny_mnist_ckpt, "--hook", "cfg:2", "--sweep", "scale=1,3", "--save-every", "3")
    assert r.exit_code == 0, r.output
    for v in ("1", "3"):
        assert len(list((out / f"scale-{v}" / "frames").iterdir())) == 4 and (out / f"scale-{v}" / "trajectory.gif").exists()
    meta = json.loads((out / "scale-3" / "run.json").read_text())
    assert meta["hooks"] == [{"name": "cfg", "args": {"scale": 3.0, "lo": 0.0, "hi": 1.0}}] and len(meta["timesteps"][0]) == 8


def test_sweep_of_unknown_parameter_is_refused(tmp_path, tiny_mnist_ckpt):
    r, _ = sample(tmp_path, tiny_mnist_ckpt, "--hook", "cfg:2", "--sweep", "bogus=1,2")
    assert r.exit_code == 2 and "no technique or rule has a parameter 'bogus'" in " ".join(r.output.split())
