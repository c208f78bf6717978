"""The MNIST backend: diffkit's own Part B UNet (time- or class-conditioned DDPM, T = 300)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from diffkit import schedule
from diffkit.backends.base import BackendError, in_fixed_chunks
from diffkit.mnist import checkpoint
from diffkit.schedule import StepConfig


def parse_class(label: Any) -> int | None:
    """``3`` or ``"3"`` -> 3; None -> None (the all-zero, unconditional class vector)."""
    if label is None:
        return None
    try:
        k = int(str(label).strip())
    except ValueError:
        raise BackendError(f"mnist backend: class must be a digit 0-9, got {label!r}") from None
    if not 0 <= k <= 9:
        raise BackendError(f"mnist backend: class must be a digit 0-9, got {label!r}")
    return k


# Rows a model call, by device type: every call has exactly this many (base.in_fixed_chunks), so a sample's
# bytes do not depend on the batch it is in. On the CPU, 4-row calls on one thread each, as many at a time
# as torch has threads: README's first command (80 rows a step) ran at 0.93x the cost of one 80-row call
# and a one-sample CFG run (2 rows) at 1.40x, where 16-row calls in turn cost 0.88x and 2.72x
# (benchmarks/chunks.py, results/chunks.json). On a GPU 16-row calls leave it idle: 256 rows ran 7.6x
# faster on an H100 and kept the bytes batch-independent too (benchmarks/gpu.py, tests/test_gpu.py).
CHUNK_ROWS = {"cpu": 4, "cuda": 256}


class MnistBackend:
    """Images ``[N x 1 x 28 x 28]`` in [0, 1] (the seed's scale); conditioning one-hot ``[N x 10]``."""

    name = "mnist"
    sample_shape = (1, 28, 28)

    def __init__(self, checkpoint_path: str | None = None, device: str = "cpu", stride: int = 1,
                 channels_last: bool = True):
        self.model, self.config = checkpoint.load_model(checkpoint_path, device)
        # channels_last: faster convolutions on the CPU (benchmarks/mnist.py measures both layouts)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.config.get("objective") != "ddpm":
            raise BackendError(f"checkpoint {checkpoint.resolve(checkpoint_path)} is a one-step denoiser, "
                               "not a DDPM: use it with `diffkit denoise`, or pick a ddpm checkpoint")
        self.checkpoint = str(checkpoint.resolve(checkpoint_path))
        self.T = self.config["T"]
        self.alphas_cumprod = schedule.alphas_cumprod(
            schedule.linear_betas(self.T, self.config["beta_start"], self.config["beta_end"]))
        self.conditional = self.config["conditioning"] == "class"
        self.step_config = StepConfig()
        # What diffusers' schedulers (every sampler but ddpm) are configured from. No clipping: the
        # model's x0 lives in [0, 1], not the [-1, 1] that diffusers' clip_sample assumes.
        self.scheduler_config = {"num_train_timesteps": self.T, "beta_schedule": "linear",
                                 "beta_start": self.config["beta_start"], "beta_end": self.config["beta_end"],
                                 "prediction_type": "epsilon", "clip_sample": False, "thresholding": False}
        self.device = torch.device(device)
        self.chunk_rows = CHUNK_ROWS.get(self.device.type, CHUNK_ROWS["cpu"])
        self.dtype = torch.float32
        self.stride = stride

    def default_timesteps(self) -> list[int]:
        return schedule.strided_timesteps(self.T, self.stride)

    def encode(self, labels: list[Any]) -> Tensor | None:
        classes = [parse_class(lab) for lab in labels]
        if not self.conditional:
            if any(k is not None for k in classes):
                raise BackendError(f"the checkpoint {self.checkpoint} is time-conditioned only: it takes no --class")
            return None
        out = torch.zeros(len(classes), 10, device=self.device)
        for i, k in enumerate(classes):
            if k is not None:
                out[i, k] = 1
        return out

    def model_input(self, x: Tensor) -> Tensor:
        return x

    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        workers = torch.get_num_threads() if self.device.type == "cpu" else None
        return in_fixed_chunks(self._predict, self.chunk_rows, x, t, cond, workers=workers)

    def _predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x, (t.to(x.dtype) / self.T)[:, None], cond).contiguous()

    def to_image(self, x: Tensor) -> Tensor:
        return x.clamp(0, 1)

    def from_image(self, img: Tensor) -> Tensor:
        return img.to(self.device, self.dtype)

    def next_stage(self, images: Tensor, labels: list[Any]) -> None:
        return None
