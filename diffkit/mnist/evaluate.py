"""``diffkit eval mnist``: class accuracy of conditioned samples and a Frechet distance, both measured by
diffkit's own MNIST classifier (trained on the training set, shipped beside the model)."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from diffkit.mnist import checkpoint, data
from diffkit.mnist.model import Classifier

SHIPPED_CLASSIFIER = checkpoint.SHIPPED.parent / "mnist-classifier"


def train_classifier(out: str | Path, data_dir: str | Path | None = None, epochs: int = 2, batch_size: int = 128,
                     lr: float = 1e-3, seed: int = 0) -> Iterator[tuple[int, int, int, float]]:
    """Train the CNN; yields ``(epoch, step, steps, loss)``; writes a checkpoint with test accuracy in its config."""
    torch.manual_seed(seed)
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = data.load("train", data_dir)
    steps = math.ceil(len(x) / batch_size)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        model.train()
        for i in range(steps):
            idx = perm[i * batch_size: (i + 1) * batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            yield epoch + 1, i + 1, steps, loss.item()
    xt, yt = data.load("test", data_dir)
    acc = accuracy(model.eval(), xt, yt)
    config = {"kind": "mnist-classifier", "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
              "test_accuracy": acc, "wall_time_s": round(time.perf_counter() - t0, 1)}
    save_classifier(Path(out), model, config)


def save_classifier(folder: Path, model: Classifier, config: dict) -> None:
    """Atomically, in the same folder layout as the UNet checkpoints."""
    checkpoint.save(folder, model, config)


def load_classifier(folder: str | Path | None = None) -> Classifier:
    folder = Path(folder) if folder else SHIPPED_CLASSIFIER
    if not (folder / "model.safetensors").is_file():
        raise checkpoint.CheckpointError(f"no MNIST classifier at {folder} (train one with `diffkit train classifier`)")
    model = Classifier()
    model.load_state_dict(checkpoint.load_weights(folder / "model.safetensors"))
    return model.eval()


@torch.inference_mode()
def accuracy(model: Classifier, x: Tensor, y: Tensor, batch: int = 1000) -> float:
    correct = sum((model(x[i: i + batch]).argmax(1) == y[i: i + batch]).sum().item() for i in range(0, len(x), batch))
    return correct / len(x)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Float64 linear algebra, and on some CPUs (an Intel Xeon with AVX-512 here) the classifier's
    16-row convolutions too, sum in an order that depends on the thread count: pin it, so the report is
    the same in one process with many threads as in torchrun's processes of one thread each. It costs
    about 1 s a 10,000 digits on 2 cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@_one_thread()
@torch.inference_mode()
def features(model: Classifier, x: Tensor) -> Tensor:
    """Features ``[N x 128]`` (float64), in fixed 16-row calls on one thread (see :func:`judge`)."""
    from diffkit.fixed_rows import in_fixed_chunks

    return in_fixed_chunks(model.features, 16, x).double()


@_one_thread()
def frechet_distance(f1: Tensor, f2: Tensor) -> float:
    """``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between feature sets ``[N x D]`` (Heusel et al. 2017)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = torch.cov(f1.T), torch.cov(f2.T)
    w, v = torch.linalg.eigh(s1)
    r1 = (v * w.clamp(min=0).sqrt()) @ v.T  # S1^(1/2)
    cross = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp(min=0).sqrt().sum()  # Tr((S1^1/2 S2 S1^1/2)^1/2)
    return float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * cross)


@lru_cache(maxsize=2)
def test_features(classifier: str | None = None, data_dir: str | None = None) -> Tensor:
    """Features ``[10000 x 128]`` of the real test digits by a classifier folder (default: the shipped one).
    Cached: a process that evaluates many runs (benchmarks/seeds.py) computes them once."""
    return features(load_classifier(classifier), data.load("test", data_dir)[0])


def real_floor(classifier: Classifier, train: Tensor, train_labels: Tensor, labels: Tensor, real_feats: Tensor,
               seed: int = 0) -> float:
    """FD to the real digits of features ``real_feats`` ``[M x 128]`` of real training digits drawn as the
    samples are: for each class, as many digits of that class as ``labels`` ``[N]`` holds (a seeded
    choice among the class's training digits). What the samples would score if they were as good as
    real data: the yardstick's floor, not zero at finite N. Drawn class by class because an unbalanced
    draw moves the floor (3.52-5.38 for 1,000 digits against 2.48-3.92 balanced, on the same seeds)."""
    g = torch.Generator().manual_seed(seed)
    pick = []
    for k, count in zip(*labels.unique(return_counts=True)):
        of_k = (train_labels == k).nonzero().flatten()
        pick.append(of_k[torch.randperm(len(of_k), generator=g)[:int(count)]])
    return frechet_distance(features(classifier, train[torch.cat(pick)]), real_feats)


@_one_thread()
@torch.inference_mode()
def judge(classifier: Classifier, images: Tensor) -> tuple[Tensor, Tensor]:
    """Predicted class ``[N]`` and features ``[N x 128]`` (float64) of samples ``[N x 1 x 28 x 28]``.

    In fixed calls of 16 rows (backends/base.in_fixed_chunks) on one thread, so a sample's numbers do
    not depend on the batch it came in nor on the threads: a run split into batches or over processes is
    judged identically.
    """
    from diffkit.fixed_rows import in_fixed_chunks

    def both(x: Tensor) -> Tensor:
        f = classifier.features(x)
        return torch.cat([f, classifier.head(f)], dim=1)

    out = in_fixed_chunks(both, 16, images)
    return out[:, 128:].argmax(1), out[:, :128].double()


def report(pred: Tensor, feats: Tensor, labels: Tensor, real_feats: Tensor) -> dict[str, float]:
    """Accuracy of predictions ``pred`` as ``labels``, and FD of ``feats`` to the real digits' features."""
    per_class = {int(k): float((pred[labels == k] == k).float().mean()) for k in labels.unique()}
    return {"accuracy": float((pred == labels).float().mean()), "per_class_accuracy": per_class,
            "frechet_distance": frechet_distance(feats, real_feats)}


def evaluate(samples: Tensor, labels: Tensor, classifier: Classifier, real: Tensor) -> dict[str, float]:
    """Accuracy of ``samples`` ``[N x 1 x 28 x 28]`` as ``labels``, and FD to ``real`` digits in feature space."""
    pred, feats = judge(classifier, samples)
    return report(pred, feats, labels, features(classifier, real))
