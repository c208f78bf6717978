from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
# Equivalence with diffusers, on IF's [-1, 1] state scale, where one 8-bit grey level is 2/255 = 7.8e-3.
# Float32 summation order (another CPU's kernels, another thread count) moves the tiny random models'
# outputs by 1e-5..1e-4 after a dozen steps (5e-5 here, 1.0e-4 measured on an Intel Xeon). IF_TOL, a
# quarter of a grey level, is 20x that, and still 145x below the smallest real error we could make:
# guidance 6.9 instead of 7 moves the output by 0.29, a timestep off by one by 0.88, another seed by 2.0
# (test_deepfloyd.py::test_tolerance_catches_a_wrong_seed_scale_or_timestep measures these every run).
IF_TOL = 2e-3

MNIST = Path(os.environ.get("DIFFKIT_TEST_MNIST", ROOT.parent / "shared" / "data" / "mnist"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST / "train-labels-idx1-ubyte.gz").exists() and not (MNIST / "train-labels-idx1-ubyte").exists():
        pytest.skip(f"MNIST files not found at {MNIST}")
    return MNIST


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """Run a float-sensitive test under 1 and under 2 torch threads (summation order differs), on any machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_mnist_ckpt(tmp_path_factory) -> Path:
    """An untrained class-conditioned UNet (hidden 8) saved as a checkpoint: fast, deterministic."""
    from diffkit.mnist import checkpoint
    from diffkit.mnist.model import UNet
    from diffkit.mnist.train import TrainConfig, model_config

    torch.manual_seed(0)
    model = UNet(8, "class").eval()
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    cfg = TrainConfig(objective="ddpm", conditioning="class", hidden=8, epochs=1).resolved()
    checkpoint.save(folder, model, model_config(cfg))
    return folder


class CountingBackend:
    """Wraps a backend and counts ``predict`` calls and rows."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[int] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, x, t, cond):
        self.calls.append(x.shape[0])
        return self.inner.predict(x, t, cond)


@pytest.fixture
def counting():
    return CountingBackend


@pytest.fixture(scope="session")
def tiny_if(tmp_path_factory):
    """Stage I (16x16) and stage II (32x32) IF-shaped pipelines saved to folders."""
    import tiny_if

    return tiny_if.build(tmp_path_factory.mktemp("if"))


@pytest.fixture(scope="session")
def tiny_x4(tmp_path_factory):
    """A tiny SD x4 upscaler folder (v-prediction, as the real one), built from config."""
    import tiny_sd

    return tiny_sd.build_x4(tmp_path_factory.mktemp("x4"))


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory):
    """A tiny SD3-shaped folder built from config (tests/tiny_sd.py): test_sd3's and test_perturbed's."""
    import tiny_sd

    return tiny_sd.build_sd3(tmp_path_factory.mktemp("sd3"))


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """Tiny Stable Diffusion folders built from config: ``sd`` (epsilon, PNDM as SD 1.5), ``sdv``
    (v-prediction, DDIM as SD 2.x), ``weak`` (a smaller UNet, same text encoder and VAE), ``sdxl``, and
    ``sdxl-mean`` (the same with a VAE that declares ``latents_mean``/``latents_std``)."""
    import tiny_sd

    root = tmp_path_factory.mktemp("sd")
    return {"sd": tiny_sd.build_sd(root), "sdv": tiny_sd.build_sd(root, "sdv", "v_prediction"),
            "weak": tiny_sd.build_sd(root, "weak", seed=7, channels=(8, 16)), "sdxl": tiny_sd.build_sdxl(root),
            "sdxl-mean": tiny_sd.build_sdxl(root, "sdxl-mean", latents_mean=True)}


def interrupted(batches: int, *args: str) -> None:
    """Run ``diffkit ARGS`` in this process and stop it (as a SIGINT would) right after its
    ``batches``-th batch is written."""
    from typer.testing import CliRunner

    from diffkit import interrupt
    from diffkit.cli import app
    from diffkit.folder import RunFolder

    real = RunFolder.write_batch
    seen = []

    def write_then_stop(self, k, result):
        real(self, k, result)
        seen.append(k)
        if len(seen) == batches:
            raise interrupt.Interrupted(2)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(RunFolder, "write_batch", write_then_stop)
        with pytest.raises(interrupt.Interrupted):
            CliRunner().invoke(app, [str(a) for a in args])


def refused_hook(tmp_path: Path, spec: str, text: str) -> None:
    """``diffkit sample --hook SPEC`` on MNIST exits 2 saying ``text``, and writes nothing."""
    from typer.testing import CliRunner

    from diffkit.cli import app

    r = CliRunner().invoke(app, ["sample", "--class", "3", "--steps", "2", "--hook", spec, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and text in " ".join(r.output.split()), r.output
    assert not (tmp_path / "o").exists()
