from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
MNIST = Path(os.environ.get("DIFFKIT_TEST_MNIST", ROOT.parent / "shared" / "data" / "mnist"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST / "train-labels-idx1-ubyte.gz").exists() and not (MNIST / "train-labels-idx1-ubyte").exists():
        pytest.skip(f"MNIST files not found at {MNIST}")
    return MNIST


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
