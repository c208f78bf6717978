"""Every CLI command and error path through typer's CliRunner."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from diffkit import registry
from diffkit.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_sample_writes_pngs_grid_and_run_json(tmp_path):
    out = tmp_path / "o"
    r = invoke("sample", "--backend", "gaussian", "--class", "0,1", "--num", "2", "--hook", "cfg:3",
               "--seed", "7", "--steps", "10", "--out", out)
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "run.json").read_text())
    assert [s["seed"] for s in meta["samples"]] == [7, 8, 9, 10]
    assert [s["label"] for s in meta["samples"]] == ["0", "0", "1", "1"]
    assert meta["hooks"] == [{"name": "cfg", "args": {"scale": 3.0, "lo": 0.0, "hi": 1.0}}]
    assert meta["timesteps"][0][0] == 270 and len(meta["timesteps"][0]) == 10
    assert {"torch", "diffusers", "python"} <= set(meta["versions"])
    for s in meta["samples"]:
        assert Image.open(out / s["file"]).size == (8, 8)
    assert (out / "grid.png").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_same_seed_same_pngs(tmp_path):
    for name in ("a", "b"):
        assert invoke("sample", "-b", "gaussian", "-c", "1", "--steps", "5", "--seed", "3", "--out", tmp_path / name).exit_code == 0
    assert (tmp_path / "a" / "sample-000.png").read_bytes() == (tmp_path / "b" / "sample-000.png").read_bytes()


def test_refuses_to_overwrite_without_flag(tmp_path):
    out = tmp_path / "o"
    assert invoke("sample", "-b", "gaussian", "--steps", "5", "--seed", "1", "--out", out).exit_code == 0
    before = (out / "sample-000.png").read_bytes()
    r = invoke("sample", "-b", "gaussian", "--steps", "5", "--seed", "2", "--out", out)
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert (out / "sample-000.png").read_bytes() == before
    r = invoke("sample", "-b", "gaussian", "--steps", "5", "--seed", "2", "--out", out, "--overwrite")
    assert r.exit_code == 0 and (out / "sample-000.png").read_bytes() != before


def test_out_refusals_come_before_the_model_loads(tmp_path, monkeypatch):
    """Files of another run in --out, or an interrupted run beside it: refused before the backend loads
    (an IF model takes minutes); the files stay as they were."""
    from diffkit import api

    def no_load(*a, **k):
        raise AssertionError("the backend was loaded before the refusal")
    monkeypatch.setattr(api, "load_backend", no_load)
    out = tmp_path / "o"
    out.mkdir()
    (out / "sample-001.png").write_bytes(b"earlier")
    r = invoke("sample", "-b", "if", "--model", str(tmp_path / "nowhere"), "-p", "a", "-n", "2", "--out", out)
    assert r.exit_code == 2 and "already holds sample-001.png" in r.output, r.output
    assert (out / "sample-001.png").read_bytes() == b"earlier"
    part = tmp_path / "p" / ".diffkit-partial" / "parts" / "batch-00000.safetensors"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x")
    r = invoke("sample", "-b", "if", "--model", str(tmp_path / "nowhere"), "-p", "a", "--out", tmp_path / "p")
    assert r.exit_code == 2 and "holds an interrupted run (1 batches done); pass --resume" in r.output, r.output
    assert part.read_bytes() == b"x"


def test_save_every_writes_frames_and_gif(tmp_path):
    out = tmp_path / "o"
    r = invoke("sample", "-b", "gaussian", "--steps", "10", "--save-every", "3", "--out", out)
    assert r.exit_code == 0, r.output
    frames = sorted((out / "frames").iterdir())
    assert len(frames) == 4  # steps 0, 3, 6 and 9 (the last)
    gif = Image.open(out / "trajectory.gif")
    assert gif.is_animated


@pytest.mark.parametrize("args,code,text", [
    (["--backend", "nope"], 2, f"unknown backend 'nope'; available: {', '.join(sorted(registry.backends()))}"),
    (["-b", "gaussian", "--hook", "zzz"], 2, "unknown technique 'zzz'; available:"),
    (["-b", "gaussian", "--hook", "cfg:scale=abc"], 2, "technique 'cfg': parameter 'scale' expects float"),
    (["-b", "gaussian", "--hook", "cfg:1,0,1,2"], 2, "too many positional"),
    (["-b", "gaussian", "--class", "5"], 2, "class '5' is not in 0..1"),
    (["-b", "gaussian", "--checkpoint", "x"], 2, "takes no option checkpoint"),
    (["-b", "mnist", "--checkpoint", "/nonexistent/ckpt"], 2, "no MNIST checkpoint at /nonexistent/ckpt"),
    (["-b", "gaussian", "--timesteps", "5,9"], 2, "strictly decreasing"),
    (["-b", "gaussian", "--i-start", "400"], 2, "i_start must be in"),
    (["-b", "gaussian", "--prompt", "x", "--class", "1"], 2, "not both"),
])
def test_errors_exit_nonzero_with_the_culprit_named(tmp_path, args, code, text):
    r = invoke("sample", *args, "--out", tmp_path / "o")
    assert r.exit_code == code, r.output
    assert text in " ".join(r.output.split())
    assert not (tmp_path / "o").exists()


def test_nan_from_the_model_writes_nothing(tmp_path, monkeypatch):
    from diffkit.backends.gaussian import GaussianBackend

    monkeypatch.setattr(GaussianBackend, "predict", lambda self, x, t, c: x * float("nan"))
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("earlier")
    r = invoke("sample", "-b", "gaussian", "--steps", "5", "--out", out)
    assert r.exit_code == 1 and "returned NaN" in r.output and "nothing was written" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_hooks_lists_techniques_with_parameters():
    r = invoke("hooks")
    assert r.exit_code == 0
    assert "cfg" in r.output and "scale" in r.output and "float" in r.output and "7.0" in r.output
    assert "-100..100" in r.output  # the declared range


def test_backends_lists_backends_with_options():
    r = invoke("backends")
    assert r.exit_code == 0
    assert "mnist" in r.output and "gaussian" in r.output and "--checkpoint" in r.output
