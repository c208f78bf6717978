"""The shipped MNIST model: loads after a plain install, and its class-conditioned samples are the asked digit."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit.cli import app
from diffkit.mnist import checkpoint
from diffkit.mnist.evaluate import SHIPPED_CLASSIFIER, accuracy, load_classifier


def test_shipped_model_is_in_the_package_with_its_recipe():
    """Only that the record is there; what the weights can do is measured by the tests below."""
    cfg = checkpoint.load_config(None)
    assert cfg["objective"] == "ddpm" and cfg["conditioning"] == "class"
    assert cfg["training"]["command"].startswith("diffkit train mnist")
    assert {"final_loss", "wall_time_s", "torch"} <= set(cfg["training"])
    assert "test_accuracy" in json.loads((SHIPPED_CLASSIFIER / "config.json").read_text())


def test_shipped_classifier_recognises_real_test_digits(mnist_dir):
    from diffkit.mnist import data

    x, y = data.load("test", mnist_dir)
    assert accuracy(load_classifier(), x[:2000], y[:2000]) > 0.97


def test_shipped_model_draws_the_asked_digit():
    # 50 of the 300 steps: the shipped weights are what is tested, and all 300 took 233 s of a 23-minute
    # suite on a loaded 2-core machine (benchmarks/results/suite_under_load.json at f3bf73b)
    res = diffkit.sample("mnist", classes=list(range(10)), num=10, hooks=["cfg:5"], seed=1000, steps=50)
    pred = load_classifier()(res.images).argmax(1)
    labels = torch.tensor([int(c) for c in res.labels])
    assert (pred == labels).float().mean() >= 0.95


def test_readme_main_job_runs_on_the_default_backend(tmp_path):
    r = CliRunner().invoke(app, ["sample", "--class", "0,1,2,3,4,5,6,7,8,9", "--hook", "cfg:5", "--steps", "30",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "o" / "run.json").read_text())
    assert meta["checkpoint"].endswith("weights/mnist-class") and len(meta["samples"]) == 10


def test_the_mnist_backends_class_vectors_and_images_by_hand():
    """One-hot class vectors of exactly 1.0 (None: all zeros, the unconditional branch), digits 0-9 only,
    and images clamped to [0, 1]."""
    from diffkit.backends.base import BackendError
    from diffkit.backends.mnist import MnistBackend, parse_class

    b = MnistBackend()
    c = b.encode([0, "9", None])
    expect = torch.zeros(3, 10)
    expect[0, 0] = expect[1, 9] = 1
    assert torch.equal(c, expect)
    for bad in (-1, 10, "x"):
        with pytest.raises(BackendError, match="class must be a digit 0-9"):
            parse_class(bad)
    x = torch.tensor([-0.5, 0.0, 0.25, 1.0, 1.5]).view(1, 1, 1, 5)
    assert torch.equal(b.to_image(x), torch.tensor([0.0, 0.0, 0.25, 1.0, 1.0]).view(1, 1, 1, 5))


def test_the_quality_model_ships_by_name_with_its_gpu_training_record():
    cfg = checkpoint.load_config("mnist-h64")
    assert checkpoint.resolve("mnist-h64") == checkpoint.SHIPPED_H64
    assert cfg["hidden"] == 64 and cfg["conditioning"] == "class" and cfg["train_config"]["epochs"] == 20
    assert "--device cuda" in cfg["training"]["command"] and cfg["training"]["device"].startswith("cuda")
    assert checkpoint.resolve("mnist-class") == checkpoint.SHIPPED and checkpoint.resolve(None) == checkpoint.SHIPPED


def cli_accuracy(out, checkpoint_name: str, num: int, hook: str, steps: int) -> tuple[float, dict]:
    """``diffkit sample`` of every digit with the shipped model by name (seed 1000), read by the classifier:
    the share drawn as asked, and the run's run.json."""
    from safetensors.torch import load_file

    r = CliRunner().invoke(app, ["sample", "--checkpoint", checkpoint_name, "--class", "0,1,2,3,4,5,6,7,8,9", "--num",
                                 str(num), "--hook", hook, "--sampler", "dpmpp_2m_sde", "--steps", str(steps),
                                 "--seed", "1000", "--out", str(out)])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "run.json").read_text())
    pred = load_classifier()(load_file(out / "final.safetensors")["stage1_images"]).argmax(1)
    labels = torch.tensor([int(s["label"]) for s in meta["samples"]])
    return (pred == labels).float().mean().item(), meta


def test_the_quality_model_draws_the_asked_digit_with_the_recommended_recipe(tmp_path):
    acc, meta = cli_accuracy(tmp_path / "o", "mnist-h64", 5, "cfg:1.5", 20)
    assert meta["checkpoint"].endswith("weights/mnist-h64")
    assert acc >= 0.9  # 0.9932 on five held-out seeds of 1,000 (results/quality_tables.json)


def test_the_averaged_model_ships_by_name_with_its_record_and_draws_the_asked_digit(tmp_path):
    cfg = checkpoint.load_config("mnist-h64-ema")
    assert checkpoint.resolve("mnist-h64-ema") == checkpoint.SHIPPED_H64_EMA
    assert cfg["hidden"] == 64 and cfg["conditioning"] == "class"
    assert cfg["train_config"]["init"] == "mnist-h64" and cfg["train_config"]["ema"] == 0.999
    assert cfg["training"]["epochs_done"] == 2 and "--ema 0.999" in cfg["training"]["command"]
    acc, _ = cli_accuracy(tmp_path / "o", "mnist-h64-ema", 2, "cfg:1.4", 50)
    assert acc >= 0.9  # 0.9945 over 2,000 at cfg:1.4, 50 steps (results/large_n_selection_ema.json)


def test_a_folder_named_like_a_shipped_model_wins_and_a_missing_one_lists_the_names(tmp_path, monkeypatch,
                                                                                        tiny_mnist_ckpt):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_mnist_ckpt, tmp_path / "mnist-h64")
    assert checkpoint.resolve("mnist-h64").resolve() == tmp_path / "mnist-h64"
    r = CliRunner().invoke(app, ["sample", "--checkpoint", "mnist-h32", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "shipped models by name: mnist-class, mnist-h64, mnist-h64-ema, mnist-weak, mnist-flow" in " ".join(r.output.split())


def test_the_shipped_flow_model_samples_as_flow_euler_over_its_velocity_and_draws_the_asked_digit():
    """mnist-flow (train mnist --objective flow): its record says so; 5 flow-matching Euler steps with cfg:1.5
    (10 model evaluations a sample) equal diffusers' FlowMatchEulerDiscreteScheduler run by hand over the
    model, state and clean-image estimate at every step; and they draw the asked digit."""
    from test_mnist import hand_flow_euler

    cfg = checkpoint.load_config("mnist-flow")
    assert cfg["objective"] == "flow" and cfg["conditioning"] == "class"
    run = diffkit.Run("mnist", backend_options={"checkpoint": "mnist-flow"}, classes=[4], seed=11, hooks=["cfg:1.5"],
                      sampler="euler", steps=5)
    states = list(run.steps())
    model, _ = checkpoint.load_model("mnist-flow")
    x, x0s = hand_flow_euler(model, 4, 1.5, 5, 11)
    # float32 roundings (3-row chunked calls against one call, the state's scaling), a few of 2^-24 a step
    bound = 64 * 5 * 2.0**-24 * max(1.0, float(x.abs().max()))
    assert (run.result.x - x).abs().max() <= bound
    assert max(float((st.x0 - want).abs().max()) for st, want in zip(states, x0s)) <= bound
    res = diffkit.sample("mnist", backend_options={"checkpoint": "mnist-flow"}, classes=list(range(10)), num=10,
                         hooks=["cfg:1.5"], sampler="euler", steps=5, seed=2000)
    pred = load_classifier()(res.images).argmax(1)
    assert (pred == torch.tensor([int(k) for k in res.labels])).float().mean() >= 0.95
