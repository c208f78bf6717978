"""Bad input is refused at the door: exit 2, one clear line naming the culprit and its range, nothing written.

The option walks read the typer app and the plugins' declared ``Param`` s, so an option or parameter
added later is covered without touching this file.
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

from typing import Any

import pytest
import torch
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from diffkit import registry
from diffkit.cli import app
from diffkit.registry import UnknownName
from diffkit.syntax import SpecError

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def numeric_options() -> list[tuple[tuple[str, ...], str, type, Any]]:
    """``(command path, --option, int or float, its OptionInfo)`` for every numeric option, read from the app."""
    import inspect
    import typing

    out = []

    def walk(t: typer.Typer, path: tuple[str, ...]) -> None:
        for cmd in t.registered_commands:
            hints = typing.get_type_hints(cmd.callback)
            for name, par in inspect.signature(cmd.callback).parameters.items():
                info, hint = par.default, hints[name]
                hint = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
                if isinstance(info, typer.models.OptionInfo) and hint in (int, float):
                    decls = [d for d in (info.param_decls or ()) if d.startswith("--")]
                    out.append((path + (cmd.name or cmd.callback.__name__,),
                                decls[0] if decls else "--" + name.replace("_", "-"), hint, info))
        for group in t.registered_groups:
            walk(group.typer_instance, path + (group.name,))

    walk(app, ())
    return out


OPTIONS = numeric_options()
IDS = [f"{' '.join(p)} {o}" for p, o, _, _ in OPTIONS]


def required_args(path: tuple[str, ...], tmp: Path) -> list[str]:
    """What a command needs besides the option under test (so that only that option can be wrong)."""
    image = tmp / "in.png"
    return {("train", "mnist"): ["--out", str(tmp / "run")], ("train", "classifier"): ["--out", str(tmp / "clf")],
            ("noise",): [str(image)], ("embed",): ["a prompt", "--out", str(tmp / "e.safetensors")],
            }.get(path, []) + (["--out", str(tmp / "out")] if path in {("sample",), ("eval", "mnist")} else [])


def valid(kind: type, lo: float, hi: float, text: str) -> bool:
    value = float(text)
    if kind is int and not (math.isfinite(value) and value == int(value)):
        return False
    return math.isfinite(value) and lo <= value <= hi


def test_the_walk_sees_the_options_that_matter():
    names = {(" ".join(path), opt) for path, opt, _, _ in OPTIONS}
    assert {("sample", "--num"), ("sample", "--steps"), ("sample", "--stride"), ("sample", "--seed"),
            ("train mnist", "--lr"), ("eval mnist", "--cfg"), ("sample", "--max-batch")} <= names
    assert len(names) >= 20


def _number(v: float) -> str:
    from diffkit.cli import _number as shown

    assert shown(2**62) == "4611686018427387904" and shown(1e-8) == "1e-08" and shown(100.0) == "100"
    return shown(v)


@pytest.mark.parametrize("path,opt,kind,info", OPTIONS, ids=IDS)
def test_every_numeric_option_declares_a_bounded_range(path, opt, kind, info):
    lo, hi = getattr(info, "range", (None, None))
    assert lo is not None and hi is not None, f"{opt} has no declared range: declare it with cli.Int or cli.Float"
    assert f"[{_number(lo)}..{_number(hi)}]" in info.help  # --help shows it (integers in full: 0..4611686018427387904)


@pytest.mark.parametrize("path,opt,kind,info", OPTIONS, ids=IDS)
def test_every_numeric_option_refuses_zero_negative_huge_nan_and_inf(path, opt, kind, info, tmp_path, monkeypatch):
    import diffkit.api
    from diffkit import io

    def no_model(*a, **k):
        raise AssertionError("a model was loaded for a refused option")

    monkeypatch.setattr(diffkit.api, "load_backend", no_model)
    monkeypatch.chdir(tmp_path)
    io.save_png(torch.zeros(1, 8, 8), tmp_path / "in.png")
    lo, hi = info.range
    refused = 0
    for text in ("0", "-1", str(10**30) if kind is int else "1e300", "nan", "inf", "-inf"):
        if valid(kind, lo, hi, text):
            continue
        refused += 1
        r = runner.invoke(app, [*path, *required_args(path, tmp_path), opt, text])
        out = " ".join(r.output.split())
        assert r.exit_code == 2, (text, r.output)
        assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output
        assert f"Invalid value for '{opt}'" in out, out
        if kind is float or text.lstrip("-").isdigit():
            assert f"is not {'an integer' if kind is int else 'a finite number'} in {_number(lo)}..{_number(hi)}" in out, out
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"], f"{text} wrote files"
    assert refused >= 3


NUMERIC_PARAMS = [(name, p) for name, cls in sorted(registry.techniques().items()) for p in cls.params if p.numeric]


def test_every_numeric_technique_parameter_declares_its_range():
    assert {("cfg", "scale"), ("hybrid", "kernel"), ("hybrid", "sigma"), ("inpaint", "resample"),
            ("sdedit", "strength")} <= {(n, p.name) for n, p in NUMERIC_PARAMS}
    for name, p in NUMERIC_PARAMS:
        assert p.range is not None and all(math.isfinite(v) for v in p.range), f"{name}:{p.name} has no range"


@pytest.mark.parametrize("hook,param", NUMERIC_PARAMS, ids=[f"{n}:{p.name}" for n, p in NUMERIC_PARAMS])
def test_every_numeric_technique_parameter_refuses_out_of_range_nan_and_inf(hook, param, tmp_path):
    lo, hi = param.range
    for text in ("0", "-1", "1e30" if param.type is float else str(10**30), "nan", "inf", "-inf"):
        if valid(param.type, lo, hi, text):
            continue
        r = runner.invoke(app, ["sample", "-b", "gaussian", "--hook", f"{hook}:{param.name}={text}",
                                "--out", str(tmp_path / "o")])
        out = " ".join(r.output.split())
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (text, r.output)
        assert f"technique '{hook}': parameter '{param.name}'" in out, out
        assert f"{lo:g}..{hi:g}" in out or "expects int" in out, out
        assert not (tmp_path / "o").exists()


def test_a_declared_range_is_enforced_in_the_python_api_too():
    with pytest.raises(SpecError, match=r"parameter 'scale' must be a finite number in -100\.\.100, got nan"):
        registry.make_technique("cfg:nan")
    with pytest.raises(SpecError, match=r"parameter 'strength' must be a finite number in 0\.\.1, got 1.5"):
        registry.make_technique("sdedit:img.png,strength=1.5")
    import diffkit

    for kw, text in [({"num": 0}, "num must be an integer in 1.."), ({"steps": 0}, "steps must be an integer in 1.."),
                     ({"seed": -1}, "seed must be an integer in 0.."), ({"num": 2.5}, "num must be an integer"),
                     ({"timesteps": [5, 9]}, "strictly decreasing")]:
        with pytest.raises(ValueError, match=re.escape(text)):
            diffkit.Run("gaussian", **kw)


@pytest.mark.parametrize("args,text", [
    (["--steps", "0"], "Invalid value for '--steps': 0 is not an integer in 1..100000"),
    (["--stride", "0"], "Invalid value for '--stride': 0 is not an integer in 1..100000"),
    (["--num", "0"], "Invalid value for '--num' / '-n': 0 is not an integer in 1..100000"),
    (["--num", "-3"], "Invalid value for '--num' / '-n': -3 is not an integer in 1..100000"),
    (["--hook", "cfg:nan"], "technique 'cfg': parameter 'scale' must be a finite number in -100..100, got nan"),
    (["--hook", "cfg:inf"], "technique 'cfg': parameter 'scale' must be a finite number in -100..100, got inf"),
    (["--timesteps", "9,x"], "--timesteps must be a comma list of integers in 0..1000000000, got '9,x'"),
    (["--steps", "301"], "steps must be in 1..300, got 301"),
    (["--sweep", "seed=1,-2"], "--sweep seed: seed must be an integer in 0.."),
    (["--sweep", "scale=1,nan", "--hook", "cfg"], "parameter 'scale' must be a finite number in -100..100, got nan"),
])
def test_the_issue_s_examples_are_refused_with_the_option_and_its_range(tmp_path, args, text):
    r = runner.invoke(app, ["sample", "-b", "gaussian", *args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert text in " ".join(r.output.split())
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("device,text", [("cuda:7", "--device cuda:7:"), ("gpu", "--device must be cpu, cuda, cuda:N or mps"),
                                         ("cuda", "--device cuda:")])
@pytest.mark.parametrize("command", [["sample"], ["train", "mnist"], ["eval", "mnist"]])
def test_a_device_torch_cannot_use_is_refused_before_the_model_loads(tmp_path, device, text, command, monkeypatch):
    import diffkit.mnist.train
    from diffkit.mnist import checkpoint

    if torch.cuda.is_available() and device != "gpu":
        pytest.skip("this machine has CUDA")

    def nothing(*a, **k):
        raise AssertionError("a model was loaded or trained for a refused --device")

    monkeypatch.setattr(checkpoint, "load_model", nothing)
    monkeypatch.setattr(diffkit.mnist.train, "train", nothing)
    r = runner.invoke(app, [*command, "--device", device, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and text in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_training_on_a_gpu_under_torchrun_is_refused_before_any_rendezvous(tmp_path, monkeypatch):
    from diffkit import dist
    from diffkit.backends import base

    monkeypatch.setattr(dist, "launched", lambda: True)
    monkeypatch.setattr(base, "check_device", lambda device: None)  # as if this machine had the GPU
    monkeypatch.setattr(dist, "init", lambda *a: pytest.fail("a process group was started"))
    r = runner.invoke(app, ["train", "mnist", "--device", "cuda", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--device cuda: training under torchrun runs on the CPU" in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_an_error_is_one_line_whatever_the_path_length(tmp_path):
    deep = tmp_path / ("a-rather-long-folder-name-" * 8) / ("and-another-one-" * 8) / "nothing-here"
    r = runner.invoke(app, ["sample", "-b", "mnist", "--checkpoint", str(deep), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no MNIST checkpoint at") and str(deep) in lines[0]
    assert lines[0].endswith("(expected config.json and model.safetensors there; shipped models by name: "
                             "mnist-class, mnist-h64, mnist-h64-ema, mnist-weak, mnist-flow)")


# ---- any text for --hook / --sweep: a spec or a clear error, never a traceback ----

names = st.sampled_from(sorted(registry.techniques()) + ["nope", ""])
pieces = st.sampled_from([",", ":", "=", "'", '"', "\\", " ", "nan", "inf", "-1", "1e400", "view=", "prompt=",
                          "scale=", "kernel=", "flip_v", "0", "x"])
specs = st.one_of(st.text(max_size=40), st.builds(lambda n, p: n + ":" + "".join(p), names, st.lists(pieces, max_size=8)))


@settings(max_examples=300, deadline=None)
@given(text=specs)
def test_any_hook_text_is_a_technique_or_a_clear_error(text):
    try:
        tech = registry.make_technique(text)
    except (SpecError, UnknownName) as e:
        assert str(e) and "Traceback" not in str(e)
    else:
        assert tech.name in registry.techniques()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hook=specs, sweep=st.one_of(st.none(), st.text(max_size=20),
                                   st.builds(lambda n, p: n + "=" + "".join(p),
                                             st.sampled_from(["scale", "seed", "i_start", "x", ""]),
                                             st.lists(pieces, max_size=6))))
def test_any_hook_or_sweep_text_on_the_command_line_runs_or_exits_2(hook, sweep):
    with tempfile.TemporaryDirectory() as tmp:
        args = ["sample", "-b", "gaussian", "--steps", "2", "--hook", hook, "--out", str(Path(tmp) / "o")]
        r = runner.invoke(app, args + (["--sweep", sweep] if sweep is not None else []))
        assert isinstance(r.exception, SystemExit) or r.exception is None, r.exception
        assert r.exit_code in (0, 2), r.output
        assert "Traceback" not in r.output
        if r.exit_code == 2:
            assert r.output.startswith("error:") or "Error:" in r.output, r.output
            assert not (Path(tmp) / "o").exists()


# ---- a model that returns NaN or inf ----

def test_non_finite_estimate_names_step_timestep_and_branch_and_writes_nothing(tmp_path, monkeypatch):
    from diffkit.backends.gaussian import GaussianBackend

    real = GaussianBackend.predict

    def overflow_unconditional(self, x, t, cond):  # as fp16 overflow on a GPU looks, in one branch only
        out = real(self, x, t, cond)
        out[cond.sum(1) == 0] = float("inf")
        return out

    monkeypatch.setattr(GaussianBackend, "predict", overflow_unconditional)
    out = tmp_path / "o"
    r = runner.invoke(app, ["sample", "-b", "gaussian", "--class", "1", "--hook", "cfg:3", "--steps", "5",
                            "--out", str(out)])
    text = " ".join(r.output.split())
    assert r.exit_code == 1
    assert "step 1 of 5: backend 'gaussian' returned NaN or inf at t=240 in branch 2 of 2 (unconditional), sample 0" in text
    assert "nothing was written" in text and not out.exists()


# ---- files a user passes in never execute code ----

class Boom:
    """Unpickling this creates a marker file: proof that a load ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"x": Boom(marker)}, path)
    yield path
    assert not marker.exists(), "loading a user's file ran code"


def test_a_pickled_state_is_refused_on_resume(tiny_mnist_ckpt, evil, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_mnist_ckpt, run / "checkpoint")
    shutil.copy(evil, run / "checkpoint" / "state.pt")
    r = runner.invoke(app, ["train", "mnist", "--out", str(run), "--resume", "--data", str(tmp_path)])
    assert r.exit_code == 2 and "refusing" in r.output and "nothing in it was run" in " ".join(r.output.split())


@pytest.mark.parametrize("where", ["checkpoint-file", "weights", "classifier", "image", "noise-image"])
def test_pickles_given_as_checkpoint_weights_or_image_are_refused(tiny_mnist_ckpt, evil, tmp_path, where):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_mnist_ckpt, folder)
    shutil.copy(evil, folder / "model.safetensors")
    args, text = {
        "checkpoint-file": (["sample", "--checkpoint", str(evil)], "is a file; an MNIST checkpoint is a folder"),
        "weights": (["sample", "--checkpoint", str(folder)], "is not a safetensors file"),
        "classifier": (["eval", "mnist", "--classifier", str(folder), "--num", "1"], "is not a safetensors file"),
        "image": (["sample", "--checkpoint", str(tiny_mnist_ckpt), "--hook", f"sdedit:{evil}"], "cannot read image"),
        "noise-image": (["noise", str(evil), "--checkpoint", str(tiny_mnist_ckpt)], "cannot read image"),
    }[where]
    r = runner.invoke(app, args + ["--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert text in " ".join(r.output.split())


def test_pickled_if_embeddings_and_weights_are_refused(tiny_if, evil, tmp_path):
    import shutil

    f1, _ = tiny_if
    base = ["sample", "-b", "if", "--upscaler", "none", "--prompt", "p", "--device", "cpu", "--out", str(tmp_path / "o")]
    r = runner.invoke(app, base + ["--model", str(f1), "--embeddings", str(evil)])
    assert r.exit_code == 2 and "is not an embeddings file" in " ".join(r.output.split()), r.output
    bad = tmp_path / "if"
    shutil.copytree(f1, bad)
    for f in (bad / "unet").glob("*.safetensors"):
        f.unlink()
    shutil.copy(evil, bad / "unet" / "diffusion_pytorch_model.bin")
    r = runner.invoke(app, base + ["--model", str(bad)])
    assert r.exit_code == 2 and "cannot load the IF UNet" in r.output, r.output


def test_no_torch_load_without_weights_only_in_the_code():
    calls = []
    for folder in ("diffkit", "plugins", "benchmarks", "examples"):
        for f in (ROOT / folder).rglob("*.py"):
            for m in re.finditer(r"torch\.load\(([^)]*)\)", f.read_text()):
                calls.append((f.relative_to(ROOT), m.group(1)))
    assert calls, "the scan found no torch.load at all: it is not looking in the right place"
    assert all("weights_only=True" in args for _, args in calls), calls
