"""The engine's shape (issue 23): backends declare their options as Params, one error hierarchy, the
Backend base class, and orchestration (folders, resume, sweeps, sharding) as API functions a Python
user calls as the command line does."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit import api, registry
from diffkit.backends.base import Backend
from diffkit.cli import app
from diffkit.errors import DiffkitError, RunFailure, UserError

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- backends declared like techniques ----

def test_diffkit_backends_prints_every_declared_option_as_hooks_prints_parameters():
    r = runner.invoke(app, ["backends"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    for name, info in registry.backends().items():
        assert name in text
        for p in info.params:
            assert p.name in text and p.type_name in text, (name, p.name)
    assert "fp16|bf16|fp32" in text and "0.01..10" in text and "--backend-option NAME=VALUE" in text


def test_backend_option_and_todays_flag_write_the_same_bytes(tmp_path):
    args = ["sample", "--class", "3", "--steps", "3", "--sampler", "ddim"]
    a = runner.invoke(app, [*args, "--checkpoint", "mnist-class", "--device", "cpu", "--out", str(tmp_path / "a")])
    b = runner.invoke(app, [*args, "-O", "checkpoint=mnist-class", "--backend-option", "device=cpu",
                            "--out", str(tmp_path / "b")])
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_the_gaussian_backends_declared_options_reach_the_model(tmp_path):
    """Class k's samples are N(means[k], std^2): with a small std their pixels sit at the given means."""
    r = runner.invoke(app, ["sample", "-b", "gaussian", "-O", "means=0.25,0.75", "-O", "std=0.02", "--class", "0,1",
                            "-n", "2", "--steps", "50", "--sampler", "ddim", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    from safetensors.torch import load_file

    x = load_file(tmp_path / "o" / "final.safetensors")["x"]
    assert x.shape == (4, 1, 8, 8)
    means = x.flatten(1).mean(1)
    assert torch.allclose(means, torch.tensor([0.25, 0.25, 0.75, 0.75], dtype=means.dtype), atol=0.02), means
    assert diffkit.sample("gaussian", classes=[0], steps=5).x.mean() != \
        diffkit.sample("gaussian", classes=[0], steps=5, backend_options={"means": "0.5,0.9"}).x.mean()


@pytest.mark.parametrize("backend,args,words", [
    ("if", ["-O", "dtype=fp8"], ["option 'dtype' must be one of fp16, bf16, fp32, got 'fp8'"]),
    ("if", ["-O", "offload=maybe"], ["option 'offload' expects bool"]),
    ("if", ["--dtype", "fp64"], ["option 'dtype' must be one of"]),
    ("mnist", ["-O", "nope=1"], ["backend 'mnist' takes no option nope", "checkpoint, device"]),
    ("gaussian", ["-O", "std=100"], ["option 'std' must be a finite number in 0.01..10, got 100"]),
    ("gaussian", ["-O", "std=abc"], ["option 'std' expects float"]),
    ("gaussian", ["--checkpoint", "x"], ["backend 'gaussian' takes no option checkpoint"]),
    ("mnist", ["-O", "checkpoint"], ["--backend-option must be NAME=VALUE"]),
    ("mnist", ["-O", "checkpoint=a", "--checkpoint", "b"], ["'checkpoint' is given twice"]),
])
def test_bad_backend_options_exit_2_before_any_model_loads(tmp_path, monkeypatch, backend, args, words):
    for info in registry.backends().values():
        monkeypatch.setattr(info, "load", lambda **kw: pytest.fail("a model loaded"))
    labels = ["--prompt", "a fox"] if backend == "if" else ["--class", "1"]
    r = runner.invoke(app, ["sample", "-b", backend, *labels, *args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    for w in words:
        assert w in " ".join(r.output.split()), (w, r.output)
    assert not (tmp_path / "o").exists()


def test_a_bad_gaussian_means_list_exits_2(tmp_path):
    r = runner.invoke(app, ["sample", "-b", "gaussian", "-O", "means=0.5", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "option 'means' must list 2 to 10 numbers" in r.output, r.output


def test_every_backend_option_gets_a_ui_widget_of_its_kind(tmp_path):
    gr = pytest.importorskip("gradio")
    from diffkit import ui

    s = ui.Settings(tmp_path, ui.default_choices())
    with gr.Blocks():
        for name, info in registry.backends().items():
            for p in info.params:
                w = ui.widget(gr, name, p, ui._initial(p), s, elem_id=f"opt-{name}-{p.name}")
                want = gr.Dropdown if (p.kind or p.choices) else gr.Checkbox if p.type_name == "bool" else \
                    gr.Number if p.numeric else gr.Textbox
                assert isinstance(w, want), (name, p.name, type(w))
                if p.kind == "path":  # only what the server offers, never a typed path
                    assert [c[0] for c in w.choices] == s.choices[f"{name}.{p.name}"]


def test_a_minimal_backend_needs_only_the_required_members():
    """The Backend base class gives every optional member a default: a backend with only the required
    ones samples, guided and as an anagram, under a diffusers rule."""
    from diffkit import schedule

    class Zero(Backend):
        name = "zero"
        sample_shape = (1, 8, 8)
        alphas_cumprod = schedule.alphas_cumprod(schedule.linear_betas(100))

        def encode(self, labels):
            return torch.tensor([[0.0 if lab is None else float(lab)] for lab in labels])

        def predict(self, x, t, cond):
            return 0.1 * x + (0 if cond is None else cond[:, :, None, None])

        def to_image(self, x):
            return x.clamp(0, 1)

        def from_image(self, img):
            return img

    res = diffkit.sample(Zero(), classes=[1], hooks=["cfg:3", "anagram:1,view=flip_v"], steps=5, sampler="euler")
    assert res.images.shape == (1, 1, 8, 8) and torch.isfinite(res.x).all()
    assert Zero().next_stage(res.x, [1]) is None and Zero().checkpoint is None
    with pytest.raises(UserError, match="backend 'zero' has no weak model"):
        diffkit.sample(Zero(), classes=[1], hooks=["autoguide:2"], steps=2)


# ---- one error hierarchy ----

def _diffkit_modules():
    import diffkit as pkg

    for info in pkgutil.walk_packages(pkg.__path__, "diffkit."):
        if info.name in ("diffkit.ui",) and importlib.util.find_spec("gradio") is None:
            continue
        yield importlib.import_module(info.name)


def test_every_error_diffkit_raises_is_a_user_error_or_a_run_failure():
    allowed = {"AlreadyDone": "a finished run, not an error", "PageError": "the UI's message to the page",
               "Interrupted": "a signal (BaseException)"}
    seen = set()
    for mod in _diffkit_modules():
        for name, cls in vars(mod).items():
            if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == mod.__name__:
                seen.add(name)
                if name in allowed or cls in (DiffkitError,):
                    continue
                assert issubclass(cls, (UserError, RunFailure)), f"{mod.__name__}.{name}"
    assert {"BackendError", "SpecError", "UnknownName", "CheckpointError", "MnistNotFound", "PluginError",
            "NonFiniteError", "ResumeError", "RuleError", "LaunchError"} <= seen
    assert UserError.exit_code == 2 and RunFailure.exit_code == 1


def test_frontends_catch_only_the_base_classes():
    """cli.py and ui.py name no error type of diffkit's but UserError, RunFailure, DiffkitError (and the
    UI's own PageError, the signals' Interrupted)."""
    ours = {name for mod in _diffkit_modules() for name, cls in vars(mod).items()
            if inspect.isclass(cls) and issubclass(cls, Exception) and cls.__module__.startswith("diffkit")}
    allowed = {"UserError", "RunFailure", "DiffkitError", "PageError", "Interrupted"}
    for path in (ROOT / "diffkit" / "cli.py", ROOT / "diffkit" / "ui.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                names = {n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", "")
                         for n in ast.walk(node.type) if isinstance(n, (ast.Name, ast.Attribute))}
                assert not (names & ours) - allowed, (path.name, node.lineno, names & ours)


# ---- orchestration in the API ----

KW = dict(classes=["3", "7"], num=3, hooks=["cfg:2"], sampler="dpmpp_2m", steps=6, save_every=2)
CLI = ["sample", "--class", "3,7", "-n", "3", "--hook", "cfg:2", "--sampler", "dpmpp_2m", "--steps", "6",
       "--save-every", "2"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "o"
    r = runner.invoke(app, [*CLI, "--out", str(out)])
    assert r.exit_code == 0, r.output
    return files(out)


def test_sample_to_writes_what_the_command_writes(tmp_path, reference):
    assert api.sample_to(tmp_path / "o", "mnist", batch_size=4, **KW) == tmp_path / "o"
    assert files(tmp_path / "o") == reference


def test_a_python_user_resumes_an_interrupted_run_from_its_folder_alone(tmp_path, reference):
    out = tmp_path / "o"
    job = api.FolderRun(out, "mnist", batch_size=2, **KW)
    steps = job.steps()
    done = 0
    for ev in steps:
        if ev.state is None:
            done += 1
            if done == 2:
                break
    steps.close()  # as a notebook's interrupt would: two batches of three are kept
    assert job.kept.startswith("4 of 6 samples are kept")
    with pytest.raises(UserError, match="interrupted run"):
        api.FolderRun(out, "mnist", batch_size=2, **KW)
    again = api.FolderRun.resume_from(out)  # no arguments: the folder's request says what was asked
    assert again.note.startswith("resuming: 2 of 3 batches") and again.todo == [2]
    again.run_all()
    assert files(out) == reference
    with pytest.raises(UserError, match="holds no interrupted run to resume"):
        api.FolderRun.resume_from(out)


def test_a_python_sweep_writes_what_the_commands_sweep_writes(tmp_path):
    r = runner.invoke(app, ["sample", "--class", "3", "--hook", "cfg:2", "--steps", "4", "--sampler", "ddim",
                            "--sweep", "scale=1,4", "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    api.sweep(tmp_path / "py", "scale", ["1", "4"], "mnist", classes=["3"], hooks=["cfg:2"], steps=4, sampler="ddim")
    assert files(tmp_path / "py") == files(tmp_path / "cli")
    assert sorted(os.listdir(tmp_path / "py")) == ["scale-1", "scale-4", "sweep.png"]
    runs = api.sweep_runs("eta", ["0", "1"], "mnist", classes=[3], sampler="ddim", steps=3)
    assert [r.rule.args["eta"] for _, r in runs] == [0.0, 1.0]
    with pytest.raises(UserError, match="no technique or rule has a parameter 'bogus'"):
        api.sweep_runs("bogus", ["1"], "mnist", classes=[3])
    with pytest.raises(UserError, match="sweep.png exists"):
        api.sweep(tmp_path / "py", "scale", ["1", "4"], "mnist", classes=["3"], hooks=["cfg:2"], steps=4)


def test_a_python_script_shards_a_run_under_torchrun_with_the_same_bytes(tmp_path, reference):
    script = tmp_path / "shard.py"
    script.write_text(
        "import sys\n"
        "from diffkit import dist\n"
        "from diffkit.api import FolderRun\n"
        "shard = dist.init()\n"
        f"job = FolderRun(sys.argv[1], 'mnist', shard=shard, batch_size=2, **{KW!r})\n"
        "job.run_all()\n"
        "print(f'rank {shard.rank} did batches {job.todo}')\n"
        "dist.leave(shard)\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           str(tmp_path / "o")]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "rank 0 did batches [0, 2]" in p.stdout and "rank 1 did batches [1]" in p.stdout, p.stdout
    assert files(tmp_path / "o") == reference


def test_the_mnist_report_is_an_api_call(mnist_dir):
    from diffkit.mnist.report import evaluate_mnist

    rep = evaluate_mnist(checkpoint="mnist-class", num=1, steps=2, data=mnist_dir, hooks=["cfg:3"])
    assert rep["num_per_class"] == 1 and rep["timesteps"] == 2 and rep["hooks"] == ["cfg:3"]
    assert 0 <= rep["accuracy"] <= 1 and rep["times_floor"] == pytest.approx(rep["frechet_distance"] / rep["real_data_floor"])


COMMANDS_WITH_A_BACKEND = (("sample",), ("noise",), ("denoise",), ("embed",), ("eval", "mnist"))


@pytest.mark.parametrize("command", COMMANDS_WITH_A_BACKEND)
def test_every_command_that_takes_a_backend_has_every_declared_flag_and_o(command):
    """The short flags people use (--checkpoint, --model, --height, ...) are each backend's declared
    flags, on every command that takes a backend, made from the declarations (none is listed in cli.py)."""
    import typer.main

    cmd = typer.main.get_command(app)
    for word in command:
        cmd = cmd.commands[word]
    opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
    flagged = {p.name for info in registry.backends().values() for p in info.params if p.flag}
    assert {"checkpoint", "model", "height", "width", "device", "dtype", "offload", "embeddings", "upscaler",
            "stage3"} <= flagged  # the flags `diffkit sample` had before they were declared
    for name in flagged:
        assert f"--{name.replace('_', '-')}" in opts, (command, name)
    assert {"-O", "--backend-option", "--backend", "-b"} <= opts, command
    undeclared = {p.name for info in registry.backends().values() for p in info.params if not p.flag}
    assert not {f"--{n.replace('_', '-')}" for n in undeclared} & opts  # those are -O only


def test_no_backend_name_or_option_is_spelled_in_the_frontends_or_the_api():
    """cli.py, ui.py and api.py translate; backends and their options come from the declarations."""
    import ast
    from pathlib import Path

    root = Path(api.__file__).parent
    names = set(registry.backends())
    options = {p.name for info in registry.backends().values() for p in info.params} - {"device"}
    for module in ("cli.py", "ui.py", "api.py"):
        tree = ast.parse((root / module).read_text())
        # `diffkit train mnist`, `eval mnist`, `data mnist` name the dataset's commands, not a backend
        commands = {id(a) for n in ast.walk(tree) if isinstance(n, ast.Call)
                    and getattr(n.func, "attr", "") == "command" for a in n.args}
        # an option looked up by name: options.get("x"), options["x"]
        lookups = {id(n.args[0]) for n in ast.walk(tree) if isinstance(n, ast.Call)
                   and getattr(n.func, "attr", "") in ("get", "pop", "setdefault") and n.args}
        lookups |= {id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in commands:
                assert node.value not in names, (module, node.lineno, node.value)
                if id(node) in lookups:
                    assert node.value not in options, (module, node.lineno, node.value)
            if (isinstance(node, ast.Call) and not (isinstance(node.func, ast.Attribute)  # Gradio's own keywords
                                                    and getattr(node.func.value, "id", "") == "gr")):
                for kw in node.keywords:
                    assert kw.arg not in options, (module, node.lineno, kw.arg)
