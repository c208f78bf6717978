"""The MNIST report: class-conditioned samples judged by the shipped classifier (accuracy and a Frechet
distance beside the real-data floor, docs/quality.md), and the sample grid a training run previews."""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import torch

from diffkit import dist, io
from diffkit.api import DEFAULT_BATCH, BatchStep, Run, drive, sample
from diffkit.dist import Shard
from diffkit.errors import UserError
from diffkit.request import RunRequest
from diffkit.technique import Technique


def mnist_preview(checkpoint: str | os.PathLike, path: str | os.PathLike, cfg_scale: float = 5.0) -> None:
    """A 10x4 grid of class-conditioned samples (CFG ``cfg_scale``) from an MNIST checkpoint."""
    from diffkit.mnist.checkpoint import load_config

    conditional = load_config(checkpoint)["conditioning"] == "class"
    res = sample("mnist", classes=list(range(10)) if conditional else None, num=4 if conditional else 40,
                 hooks=[f"cfg:{cfg_scale}"] if conditional else [], backend_options={"checkpoint": str(checkpoint)})
    ncol = 4 if conditional else 10
    io.save_png(io.grid(res.images, ncol), path)


class MnistEval:
    """Class-conditioned MNIST samples judged by a classifier: accuracy and a Frechet distance to real
    digits, beside the real-data floor (docs/quality.md). Under torchrun (``shard``) the batches are
    shared and the first process reports on all of them: the same numbers as one process. Only the
    classifier's features of each batch are kept, so memory holds one batch whatever ``num`` is::

        ev = MnistEval(checkpoint="mnist-h64", num=100, hooks=["cfg:1.5"])
        for step in ev.steps(): ...      # progress
        ev.report                         # dict (None on other processes than the first)
    """

    def __init__(self, *, backend: str | None = None, options: dict[str, Any] | None = None,
                 checkpoint: str | None = None, classifier: str | os.PathLike | None = None, num: int = 50,
                 hooks: Sequence[str | Technique] = ("cfg:5",), sampler: str | None = None, steps: int | None = None,
                 stride: int | None = 1, seed: int = 0, data: str | os.PathLike | None = None,
                 batch_size: int | None = None, device: str | None = None, shard: Shard | None = None):
        from diffkit.mnist import data as mnist
        from diffkit.mnist.evaluate import load_classifier, test_features

        self.shard, self.seed, self.num = shard or Shard(), seed, num
        options = dict(options or {})
        for name, value in (("checkpoint", checkpoint), ("device", device)):  # the mnist backend's, by keyword
            if value is not None:
                options[name] = value
        options["device"] = dist.local_device(self.shard, options.get("device"))
        # checked (the device too) before the classifier and the data load
        request = RunRequest.of(backend or "mnist", classes=list(range(10)), hooks=hooks, seed=seed, num=num,
                                steps=steps, stride=None if steps else stride, sampler=sampler,
                                batch_size=batch_size or DEFAULT_BATCH, backend_options=options)
        self.hooks = [h if isinstance(h, str) else repr(h) for h in hooks]
        self.clf = load_classifier(classifier)
        self.real_feats = test_features(str(classifier) if classifier else None, str(data) if data else None)
        self.train = mnist.load("train", data)
        self.run = Run(request)
        made = self.run.backend.image_shape
        if tuple(made) != (1, 28, 28):
            raise UserError(f"the MNIST classifier judges 28x28 one-channel digits of classes 0-9; backend "
                            f"{self.run.backend.name!r} makes {'x'.join(map(str, made))} images")
        self.report: dict[str, Any] | None = None

    def steps(self) -> Iterator[BatchStep]:
        from diffkit.mnist.evaluate import judge, real_floor, report

        judged: dict[int, tuple] = {}  # batch -> (predictions, features): all that is kept of the samples
        yield from drive(self.run, self.shard.mine(range(len(self.run.batches()))),
                         lambda k, res: judged.update({k: judge(self.clf, res.images.cpu())}))
        everything = dist.gather(self.shard, (judged, self.run.sampler.stats.get("rows", 0)))
        if self.shard.rank:
            return
        judged = {k: v for part, _ in everything for k, v in part.items()}
        pred = torch.cat([judged[k][0] for k in sorted(judged)])
        feats = torch.cat([judged[k][1] for k in sorted(judged)])
        labels = torch.tensor([int(c) for c in self.run.labels])
        result = report(pred, feats, labels, self.real_feats)
        floor = real_floor(self.clf, *self.train, labels, self.real_feats, self.seed)
        result.update({"real_data_floor": floor, "times_floor": result["frechet_distance"] / floor,
                       "checkpoint": self.run.backend.checkpoint, "num_per_class": self.num, "hooks": self.hooks,
                       "sampler": self.run.rule.spec, "timesteps": len(self.run.timesteps),
                       "model_calls_per_sample": sum(rows for _, rows in everything) / len(labels),
                       "seed": self.seed})
        self.report = result


def evaluate_mnist(**kwargs: Any) -> dict[str, Any] | None:
    """:class:`MnistEval` run to the end; its report."""
    ev = MnistEval(**kwargs)
    for _ in ev.steps():
        pass
    return ev.report
