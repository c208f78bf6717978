"""MNIST: model shapes, IDX data, training with resume and interruption, studies and evaluation."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from diffkit.cli import app
from diffkit.mnist import checkpoint, data
from diffkit.mnist import model as M
from diffkit.mnist.train import TrainConfig, train

runner = CliRunner()


@pytest.mark.parametrize("block,args,inp,out", [
    (M.Conv, (1, 8), (2, 1, 28, 28), (2, 8, 28, 28)),
    (M.DownConv, (8, 8), (2, 8, 28, 28), (2, 8, 14, 14)),
    (M.UpConv, (8, 4), (2, 8, 7, 7), (2, 4, 14, 14)),
    (M.Flatten, (), (2, 8, 7, 7), (2, 8, 1, 1)),
    (M.Unflatten, (8,), (2, 8, 1, 1), (2, 8, 7, 7)),
    (M.ConvBlock, (1, 8), (2, 1, 28, 28), (2, 8, 28, 28)),
    (M.DownBlock, (8, 16), (2, 8, 14, 14), (2, 16, 7, 7)),
    (M.UpBlock, (16, 8), (2, 16, 7, 7), (2, 8, 14, 14)),
    (M.FCBlock, (10, 16), (2, 10), (2, 16)),
])
def test_block_shapes(block, args, inp, out):
    assert block(*args)(torch.randn(inp)).shape == out


def test_concat_and_model_shapes():
    assert M.Concat()(torch.randn(2, 3, 7, 7), torch.randn(2, 5, 7, 7)).shape == (2, 8, 7, 7)
    x, t, c = torch.randn(3, 1, 28, 28), torch.rand(3, 1), torch.eye(10)[:3]
    assert M.UNet(8, "none")(x).shape == (3, 1, 28, 28)
    assert M.UNet(8, "time")(x, t).shape == (3, 1, 28, 28)
    assert M.UNet(8, "class")(x, t, c).shape == (3, 1, 28, 28)
    # the class input matters, and all-zero is a distinct (unconditional) input
    m = M.UNet(8, "class").eval()
    assert not torch.allclose(m(x, t, c), m(x, t, torch.zeros_like(c)))
    assert M.Classifier()(x).shape == (3, 10) and M.Classifier().features(x).shape == (3, 128)


def test_idx_gzip_and_raw_and_checksums(mnist_dir, tmp_path):
    x, y = data.load("test", mnist_dir)
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,) and 0 <= x.min() and x.max() <= 1
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in data.FILES:
        (raw / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    x2, y2 = data.load("test", raw)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert all(data.verify(raw).values())
    (raw / "t10k-labels-idx1-ubyte").write_bytes((raw / "t10k-labels-idx1-ubyte").read_bytes()[:-1] + b"\x00")
    assert data.verify(raw)["t10k-labels-idx1-ubyte"] is False
    _, yt = data.load("train", mnist_dir)
    assert yt.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(data.MnistNotFound, match="diffkit data mnist"):
        data.load("train", tmp_path)
    r = runner.invoke(app, ["train", "mnist", "--out", str(tmp_path / "o"), "--data", str(tmp_path)])
    assert r.exit_code == 2 and "diffkit data mnist" in r.output


def test_download_checks_sha256_from_a_mirror(mnist_dir, tmp_path):
    good = f"file://{mnist_dir}/"
    files = data.download(tmp_path / "dl", mirrors=(good,))
    assert len(files) == 4 and all(data.verify(tmp_path / "dl").values())
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in data.FILES:
        (bad / f"{name}.gz").write_bytes(gzip.compress(b"not mnist"))
    with pytest.raises(OSError, match="checksum mismatch"):
        data.download(tmp_path / "dl2", mirrors=(f"file://{bad}/",))
    assert not list((tmp_path / "dl2").glob("*.gz"))
    r = runner.invoke(app, ["data", "mnist", "--data", str(mnist_dir), "--verify"])
    assert r.exit_code == 0 and r.output.count("ok") == 4


def small(**kw):
    return TrainConfig(**{"objective": "ddpm", "conditioning": "class", "hidden": 8, "epochs": 2, "subset": 512,
                          "batch_size": 128, **kw})


def weights(folder):
    return checkpoint.load_model(folder)[0].state_dict()


def test_resume_continues_exactly(mnist_dir, tmp_path):
    for _ in train(small(), tmp_path / "a", mnist_dir):
        pass
    cut = train(small(), tmp_path / "b", mnist_dir)
    for ev in cut:  # stopped after the first epoch's checkpoint
        if ev.kind == "epoch":
            cut.close()
            break
    for _ in train(small(), tmp_path / "b", mnist_dir, resume=True):
        pass
    a, b = weights(tmp_path / "a" / "checkpoint"), weights(tmp_path / "b" / "checkpoint")
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = (json.loads((tmp_path / d / "loss.json").read_text())["loss"] for d in "ab")
    assert la == lb and len(la) == 8
    assert (tmp_path / "a" / "loss.png").stat().st_size > 1000


def test_ema_is_the_moving_average_of_the_weights_and_resumes_exactly(mnist_dir, tmp_path):
    # One step an epoch, a snapshot after each: the plain run's snapshots are the raw weights W1, W2, W3,
    # which a run with --ema follows exactly (the average draws nothing), so its checkpoint must be
    # E1 = W1, E_k = d E_(k-1) + (1 - d) W_k (torch's AveragedModel, buffers included).
    kw = dict(subset=256, batch_size=256, epochs=3, sample_epochs=[1, 2, 3])
    for _ in train(small(**kw), tmp_path / "raw", mnist_dir):
        pass
    d = 0.7
    for _ in train(small(ema=d, **kw), tmp_path / "ema", mnist_dir):
        pass
    w = [weights(tmp_path / "raw" / f"epoch-{e:03d}") for e in (1, 2, 3)]
    e3 = weights(tmp_path / "ema" / "checkpoint")
    assert all(torch.equal(weights(tmp_path / "ema" / "epoch-001")[k], w[0][k]) for k in w[0])
    for k, v in e3.items():
        if v.is_floating_point():
            want = d * d * w[0][k] + d * (1 - d) * w[1][k] + (1 - d) * w[2][k]
            # three fp32 lerps of values of size |W|: a few ulps of the largest, never near the steps' size
            bound = 8 * torch.finfo(torch.float32).eps * max(x[k].abs().max().item() for x in w) + 1e-30
            assert (v - want).abs().max().item() <= bound, k
    assert any((e3[k] - w[2][k]).abs().max() > 1e-4 for k in e3 if e3[k].is_floating_point())
    # resumed after the first epoch: the raw weights come back from state.pt and the average goes on
    cut = train(small(ema=d, **kw), tmp_path / "cut", mnist_dir)
    for ev in cut:
        if ev.kind == "epoch":
            cut.close()
            break
    for _ in train(small(ema=d, **kw), tmp_path / "cut", mnist_dir, resume=True):
        pass
    assert all(torch.equal(e3[k], v) for k, v in weights(tmp_path / "cut" / "checkpoint").items())
    with pytest.raises(ValueError, match="--ema"):
        small(ema=1.0).resolved()


def test_init_starts_from_a_checkpoint_and_refuses_another_model(mnist_dir, tmp_path):
    for _ in train(small(epochs=1), tmp_path / "a", mnist_dir):
        pass
    a = weights(tmp_path / "a" / "checkpoint")
    init = str(tmp_path / "a" / "checkpoint")
    for _ in train(small(epochs=1, lr=1e-8, init=init, seed=1), tmp_path / "b", mnist_dir):
        pass
    b = weights(tmp_path / "b" / "checkpoint")
    for _ in train(small(epochs=1, lr=1e-8, seed=1), tmp_path / "c", mnist_dir):
        pass
    c = weights(tmp_path / "c" / "checkpoint")
    params = [k for k in a if "running" not in k and a[k].is_floating_point()]  # BatchNorm's statistics move anyway
    # 4 Adam steps of at most lr each: within 1e-7 of the start, which a fresh start is not
    assert max((b[k] - a[k]).abs().max().item() for k in params) < 1e-6
    assert max((c[k] - a[k]).abs().max().item() for k in params) > 1e-2
    assert json.loads((tmp_path / "b" / "checkpoint" / "config.json").read_text())["train_config"]["init"] == init
    # another objective on the same network: the ddpm weights warm-start a flow run, which saves a flow model
    for _ in train(small(epochs=1, lr=1e-8, init=init, seed=1, objective="flow"), tmp_path / "f", mnist_dir):
        pass
    f = weights(tmp_path / "f" / "checkpoint")
    assert max((f[k] - a[k]).abs().max().item() for k in params) < 1e-6
    assert json.loads((tmp_path / "f" / "checkpoint" / "config.json").read_text())["objective"] == "flow"
    # another width: refused by name before any data is read (the data folder here does not exist)
    args = ["train", "mnist", "--out", str(tmp_path / "d"), "--data", str(tmp_path / "nowhere"), "--conditioning",
            "class", "--hidden", "16", "--init", init]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "--init" in r.output and "hidden 8" in r.output, r.output
    r = runner.invoke(app, args[:-4] + ["--hidden", "8", "--conditioning", "time", "--init", init])
    assert r.exit_code == 2 and "conditioning" in r.output, r.output
    r = runner.invoke(app, args[:-1] + [str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no MNIST checkpoint" in r.output, r.output
    r = runner.invoke(app, args[:-2] + ["--ema", "1.5"])
    assert r.exit_code == 2 and "--ema" in r.output, r.output
    assert not (tmp_path / "d").exists()


def test_interrupt_keeps_the_last_good_checkpoint(mnist_dir, tmp_path, monkeypatch):
    run = train(small(epochs=3), tmp_path / "r", mnist_dir)
    for ev in run:
        if ev.kind == "epoch":
            break
    saved = weights(tmp_path / "r" / "checkpoint")
    next(run)  # a step of epoch 2 ... then the process is killed
    run.close()
    assert all(torch.equal(saved[k], v) for k, v in weights(tmp_path / "r" / "checkpoint").items())

    import safetensors.torch

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        for _ in train(small(epochs=3), tmp_path / "r", mnist_dir, resume=True):
            pass
    assert all(torch.equal(saved[k], v) for k, v in weights(tmp_path / "r" / "checkpoint").items())
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(checkpoint, "save_file", safetensors.torch.save_file)
    for _ in train(small(epochs=3), tmp_path / "r", mnist_dir, resume=True):
        pass
    assert json.loads((tmp_path / "r" / "checkpoint" / "config.json").read_text())["training"]["epochs_done"] == 3


def test_half_swapped_checkpoint_is_still_found(tiny_mnist_ckpt, tmp_path):
    old = tmp_path / "ck.old"
    shutil.copytree(tiny_mnist_ckpt, old)
    assert checkpoint.resolve(tmp_path / "ck") == old  # the crash came between the two renames


def test_train_cli_resume_and_guards(mnist_dir, tmp_path):
    out = tmp_path / "t"
    args = ["train", "mnist", "--out", str(out), "--data", str(mnist_dir), "--conditioning", "class", "--hidden", "8",
            "--subset", "256", "--epochs", "1", "--sample-epochs", "1"]
    r = runner.invoke(app, args + ["--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (out / "epoch-001" / "model.safetensors").exists() and (out / "samples-epoch-001.png").exists()
    cfg = json.loads((out / "checkpoint" / "config.json").read_text())
    assert cfg["training"]["command"].startswith("diffkit ") and cfg["hidden"] == 8
    assert cfg["training"]["device"] == "cpu"
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "--resume" in r.output
    r = runner.invoke(app, args[:-4] + ["--epochs", "2", "--resume"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, args[:-6] + ["--hidden", "16", "--epochs", "3", "--resume"])
    assert r.exit_code == 2 and "hidden" in r.output  # a contradicting option is bad usage
    r = runner.invoke(app, ["train", "mnist", "--out", str(tmp_path / "u"), "--resume", "--data", str(mnist_dir)])
    assert r.exit_code == 2 and "no MNIST checkpoint" in r.output


def test_denoiser_study_cli(mnist_dir, tmp_path):
    out = tmp_path / "d"
    for _ in train(TrainConfig(objective="denoise", hidden=8, epochs=1, subset=512), out, mnist_dir):
        pass
    r = runner.invoke(app, ["denoise", "--checkpoint", str(out / "checkpoint"), "--data", str(mnist_dir),
                            "--out", str(tmp_path / "ood.png")])
    assert r.exit_code == 0, r.output
    mse = json.loads((tmp_path / "ood.json").read_text())["test_mse"]
    assert list(mse) == ["0.0", "0.2", "0.4", "0.5", "0.6", "0.8", "1.0"]
    assert mse["1.0"] > mse["0.5"]  # the harder the noise, the worse
    r = runner.invoke(app, ["sample", "-b", "mnist", "--checkpoint", str(out / "checkpoint"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "one-step denoiser" in r.output


def test_denoise_without_image_or_checkpoint_says_which_to_give(tmp_path):
    r = runner.invoke(app, ["denoise", "--out", str(tmp_path / "d.png")])
    assert r.exit_code == 2 and "IMAGE" in r.output and "--checkpoint" in r.output, r.output
    assert not list(tmp_path.iterdir())


def test_time_conditioned_model_samples_without_class(mnist_dir, tmp_path):
    out = tmp_path / "tc"
    for _ in train(TrainConfig(objective="ddpm", conditioning="time", hidden=8, epochs=1, subset=256), out, mnist_dir):
        pass
    args = ["sample", "-b", "mnist", "--checkpoint", str(out / "checkpoint"), "--steps", "5", "--num", "3"]
    r = runner.invoke(app, args + ["--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, args + ["--class", "3", "--out", str(tmp_path / "s2")])
    assert r.exit_code == 2 and "time-conditioned only" in r.output


def hand_flow_euler(model, label: int, scale: float, steps: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A class-conditioned MNIST flow model sampled by hand: CFG on its velocity, diffusers'
    FlowMatchEulerDiscreteScheduler (no shift) stepping it; the final state and each step's clean-image
    estimate ``x - sigma v`` (where sigma shows, whatever v is)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    sch.set_timesteps(steps)
    x = torch.randn((1, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
    c, u = torch.zeros(1, 10), torch.zeros(1, 10)
    c[0, label] = 1
    x0s = []
    with torch.no_grad():
        for k, t in enumerate(sch.timesteps):
            s = (t / 1000).reshape(1, 1)
            v_c, v_u = model(x, s, c), model(x, s, u)
            v = v_u + scale * (v_c - v_u)
            x0s.append(x - sch.sigmas[k] * v)
            x = sch.step(v, t, x).prev_sample
    return x, x0s


def test_a_flow_checkpoint_samples_as_diffusers_flow_euler_over_its_velocity(mnist_dir, tmp_path):
    """``train mnist --objective flow``: the checkpoint says so, its backend is a flow model (the model reads
    sigma = t / 1000 and predicts eps - x0), its default rule is flow-matching Euler at FLOW_STEPS steps,
    the same as diffusers' FlowMatchEulerDiscreteScheduler run by hand over the model, and ddpm is refused
    before it loads."""
    import diffkit
    from diffkit.backends.mnist import FLOW_STEPS

    out = tmp_path / "flow"
    for _ in train(TrainConfig(objective="flow", conditioning="class", hidden=8, epochs=1, subset=256), out, mnist_dir):
        pass
    ckpt = out / "checkpoint"
    assert checkpoint.load_config(ckpt)["objective"] == "flow"
    run = diffkit.Run("mnist", backend_options={"checkpoint": str(ckpt)}, classes=[3], seed=7, hooks=["cfg:2"])
    states = list(run.steps())
    model, _ = checkpoint.load_model(ckpt)
    x, x0s = hand_flow_euler(model, 3, 2.0, FLOW_STEPS, 7)
    # float32 roundings (the model's kernels in 3-row chunks against one call, the state's scaling): a few
    # of 2^-24 relative a step, over FLOW_STEPS steps on states of size |x|
    bound = 64 * FLOW_STEPS * 2.0**-24 * max(1.0, float(x.abs().max()))
    assert len(states) == FLOW_STEPS and (run.result.x - x).abs().max() <= bound
    assert max(float((st.x0 - want).abs().max()) for st, want in zip(states, x0s)) <= bound
    r = runner.invoke(app, ["sample", "-b", "mnist", "--checkpoint", str(ckpt), "--class", "3", "--rule", "ddpm",
                            "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "rule 'ddpm' cannot step a flow-matching model (backend 'mnist')" in r.output
    assert not (tmp_path / "s").exists()


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_shift():
    from diffkit.mnist.evaluate import frechet_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 4, generator=g, dtype=torch.float64)
    assert abs(frechet_distance(a, a)) < 1e-8
    assert frechet_distance(a, a + 1) == pytest.approx(4.0, rel=1e-6)  # |mu shift|^2, same covariance


def test_eval_cli_reports_accuracy_and_distance(tiny_mnist_ckpt, mnist_dir, tmp_path):
    from diffkit.mnist.evaluate import save_classifier
    from diffkit.mnist.model import Classifier

    save_classifier(tmp_path / "clf", Classifier(), {"kind": "mnist-classifier"})
    r = runner.invoke(app, ["eval", "mnist", "--checkpoint", str(tiny_mnist_ckpt), "--classifier", str(tmp_path / "clf"),
                            "--num", "2", "--stride", "100", "--data", str(mnist_dir), "--out", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "e.json").read_text())
    assert 0 <= rep["accuracy"] <= 1 and rep["frechet_distance"] > 0 and len(rep["per_class_accuracy"]) == 10


def test_noise_and_part_a_denoise_on_mnist(tiny_mnist_ckpt, tmp_path):
    import numpy as np
    from PIL import Image

    from diffkit import io

    img = torch.zeros(1, 28, 28)
    img[:, 5:23, 12:16] = 1
    io.save_png(img, tmp_path / "one.png")
    r = runner.invoke(app, ["noise", str(tmp_path / "one.png"), "--checkpoint", str(tiny_mnist_ckpt),
                            "--t", "0,150,299", "--out", str(tmp_path / "n.png")])
    assert r.exit_code == 0, r.output
    fig = np.array(Image.open(tmp_path / "n.png").convert("L")).astype(float)
    assert fig.shape[1] == 2 * 4 * 32  # four 28+4 px columns, drawn at scale 2
    meta = json.loads((tmp_path / "n.json").read_text())  # like every other output, a JSON record beside it
    assert meta["t"] == [0, 150, 299] and meta["seed"] == 0 and meta["checkpoint"].endswith("tiny")
    r = runner.invoke(app, ["noise", str(tmp_path / "one.png"), "--checkpoint", str(tiny_mnist_ckpt),
                            "--out", str(tmp_path / "n.png")])
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = runner.invoke(app, ["denoise", str(tmp_path / "one.png"), "--checkpoint", str(tiny_mnist_ckpt), "--prompt", "1",
                            "--t", "100,200", "--stride", "50", "--out", str(tmp_path / "d.png")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "d.json").read_text())["stride"] == 50
    assert (tmp_path / "d-iterative-t200.png").exists()


@pytest.mark.parametrize("args,text", [
    (["--t", "400"], "--t must be a comma list of integers in 0..299"),
    (["--method", "blur,magic"], "--method takes blur, onestep, iterative; got magic"),
])
def test_denoise_bad_input(tiny_mnist_ckpt, tmp_path, args, text):
    from diffkit import io

    io.save_png(torch.zeros(1, 28, 28), tmp_path / "z.png")
    r = runner.invoke(app, ["denoise", str(tmp_path / "z.png"), "--checkpoint", str(tiny_mnist_ckpt), *args,
                            "--out", str(tmp_path / "d.png")])
    assert r.exit_code == 2 and text in " ".join(r.output.split())
    r = runner.invoke(app, ["denoise", str(tmp_path / "missing.png"), "--checkpoint", str(tiny_mnist_ckpt),
                            "--out", str(tmp_path / "d.png")])
    assert r.exit_code == 2 and "missing.png" in r.output


@pytest.mark.parametrize("shift", [0, 1])
def test_eval_cli_reports_the_known_accuracy_of_real_digits(mnist_dir, tmp_path, monkeypatch, shift):
    """The samples are replaced by real test digits of class (label + shift) % 10: the report must give
    exactly the shipped classifier's accuracy on them, overall and per class (about 1, then about 0)."""
    from diffkit.api import Result
    from diffkit.mnist import data, report
    from diffkit.mnist.evaluate import load_classifier

    x, y = data.load("test", mnist_dir)
    num = 5

    def real_digits(run, todo, on_batch):  # api.drive, making no samples: real digits instead
        labels = [int(c) for c in run.labels]
        images = torch.stack([x[y == (k + shift) % 10][i % num] for i, k in enumerate(labels)])
        for k in todo:
            b = run.batches()[k]
            on_batch(k, Result(images[b.start:b.stop], run.labels[b.start:b.stop], run.seeds[b.start:b.stop],
                               run.record()))
        yield from ()

    monkeypatch.setattr(report, "drive", real_digits)  # what the report drives
    r = runner.invoke(app, ["eval", "mnist", "--num", str(num), "--data", str(mnist_dir), "--batch-size", "7",
                            "--out", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "e.json").read_text())
    labels = torch.arange(10).repeat_interleave(num)
    images = torch.stack([x[y == (k + shift) % 10][i % num] for i, k in enumerate(labels.tolist())])
    right = load_classifier()(images).argmax(1) == labels
    assert rep["accuracy"] == pytest.approx(right.float().mean().item())
    assert rep["per_class_accuracy"] == {str(k): pytest.approx(right[labels == k].float().mean().item())
                                         for k in range(10)}
    assert (rep["accuracy"] > 0.9) if shift == 0 else (rep["accuracy"] < 0.1)
    # Real digits against real digits: their distance is about the floor's (50 real training digits).
    assert rep["real_data_floor"] > 0 and 0.5 < rep["times_floor"] < 2.0, rep["times_floor"]


def test_eval_cli_passes_hooks_and_steps_through_and_reports_the_floor(tiny_mnist_ckpt, mnist_dir, tmp_path):
    r = runner.invoke(app, ["eval", "mnist", "--checkpoint", str(tiny_mnist_ckpt), "--num", "1", "--steps", "3",
                            "--hook", "cfg:2,lo=0.5", "--data", str(mnist_dir), "--out", str(tmp_path / "e.json"),
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["hooks"] == ["cfg:2,lo=0.5"] and rep["timesteps"] == 3
    assert rep["times_floor"] == pytest.approx(rep["frechet_distance"] / rep["real_data_floor"])
    assert "x the" in " ".join(r.output.split())


def test_the_real_data_floor_is_drawn_class_by_class_as_the_samples_are(monkeypatch):
    """Exactly as many real digits of each class as the samples have (issue 22: an unbalanced draw moved
    the floor by a third), each drawn once, the same for the same seed."""
    from diffkit.mnist import evaluate

    train_y = torch.arange(1000) % 10
    train_x = (torch.arange(1000).float() + 0.5).view(-1, 1, 1, 1)  # each image names its own index
    seen = []
    monkeypatch.setattr(evaluate, "features", lambda clf, imgs: (seen.append(imgs.flatten().long()),
                                                                  torch.zeros(len(imgs), 2))[1])
    monkeypatch.setattr(evaluate, "frechet_distance", lambda a, b: 1.0)
    labels = torch.tensor([3] * 7 + [5] * 2 + [0])
    for seed in (4, 4, 5):
        evaluate.real_floor(None, train_x, train_y, labels, None, seed)
    picked = seen[0]
    assert sorted(train_y[picked].tolist()) == sorted(labels.tolist())
    assert len(set(picked.tolist())) == 10
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])
