"""The MNIST backend: diffkit's own small UNet (time- or class-conditioned DDPM, T = 300)."""

from __future__ import annotations

import threading
import warnings
from typing import Any, Callable

import torch
from torch import Tensor

from diffkit import schedule
from diffkit.backends.base import Backend, BackendError
from diffkit.fixed_rows import in_fixed_chunks
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


# Rows a model call, by device type: every call has exactly this many (fixed_rows.in_fixed_chunks), so a sample's
# bytes do not depend on the batch it is in. On the CPU, 3-row calls on one thread each, as many at a time
# as torch has threads, the model traced (MnistBackend._traced): per model
# evaluation 0.95x one call of all 80 rows of README's first command and 0.53x one call of a one-sample
# CFG run's 2 rows, where 2 rows cost 1.10x / 0.43x and 4 rows 0.86x / 0.63x (benchmarks/chunks.py,
# results/chunks.json, every size eager and traced).
# On a GPU small calls leave it idle: 256 rows ran several times faster on an H100 and kept the bytes
# batch-independent too (benchmarks/gpu.py, tests/test_gpu.py).
CHUNK_ROWS = {"cpu": 3, "cuda": 256}
FLOW_STEPS = 10  # a flow checkpoint's steps when a run names none (its straight paths need few)


class MnistBackend(Backend):
    """Images ``[N x 1 x 28 x 28]`` in [0, 1]; conditioning one-hot ``[N x 10]``."""

    name = "mnist"
    sample_shape = (1, 28, 28)

    def __init__(self, checkpoint_path: str | None = None, device: str = "cpu", stride: int = 1,
                 channels_last: bool = True):
        self.model, self.config = checkpoint.load_model(checkpoint_path, device)
        # channels_last: faster convolutions on the CPU (benchmarks/mnist.py measures both layouts)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.requires_grad_(False)  # sampling only; and tracing takes the weights as constants
        if self.config.get("objective") not in ("ddpm", "flow"):
            raise BackendError(f"checkpoint {checkpoint.resolve(checkpoint_path)} is a one-step denoiser, "
                               "not a DDPM: use it with `diffkit denoise`, or pick a ddpm checkpoint")
        self.checkpoint = str(checkpoint.resolve(checkpoint_path))
        self.conditional = self.config["conditioning"] == "class"
        self.step_config = StepConfig()
        if self.config["objective"] == "flow":
            # A flow-matching checkpoint (train mnist --objective flow): the model reads sigma = t / 1000 and
            # predicts eps - x0; diffusers' flow-matching Euler with no shift is its own scheduler.
            self.T = 1000
            self.prediction_type = "flow_prediction"
            self.default_sampler, self.default_steps = "own", FLOW_STEPS
            self.alphas_cumprod = schedule.flow_alphas_cumprod(self.T)
            self.scheduler_config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": self.T,
                                     "shift": 1.0}
        else:
            self.T = self.config["T"]
            self.alphas_cumprod = schedule.alphas_cumprod(
                schedule.linear_betas(self.T, self.config["beta_start"], self.config["beta_end"]))
            # What diffusers' schedulers (every sampler but ddpm) are configured from. No clipping: the
            # model's x0 lives in [0, 1], not the [-1, 1] that diffusers' clip_sample assumes.
            self.scheduler_config = {"num_train_timesteps": self.T, "beta_schedule": "linear",
                                     "beta_start": self.config["beta_start"], "beta_end": self.config["beta_end"],
                                     "prediction_type": "epsilon", "clip_sample": False, "thresholding": False}
        self.device = torch.device(device)
        self.chunk_rows = CHUNK_ROWS.get(self.device.type, CHUNK_ROWS["cpu"])
        self.dtype = torch.float32
        self.stride = stride
        self._traces: dict[bool, Callable[..., Tensor]] = {}
        self._trace_lock = threading.Lock()

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

    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        if self.device.type != "cpu":
            return in_fixed_chunks(self._predict, self.chunk_rows, x, t, cond)
        model = self._traced(cond is None)
        return in_fixed_chunks(lambda *a: self._predict(*a, model=model), self.chunk_rows, x, t, cond,
                               workers=torch.get_num_threads())

    def _predict(self, x: Tensor, t: Tensor, cond: Tensor | None, model: Callable[..., Tensor] | None = None) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        args = (x, (t.to(x.dtype) / self.T)[:, None]) + (() if cond is None else (cond,))
        # the traced graph as recorded: TorchScript's optimising executor would spend the first calls
        # (0.3 s) profiling and respecialising it for no gain at steady state (the flag is per thread)
        with torch.jit.optimized_execution(False):
            return (model or self.model)(*args).contiguous()

    def _traced(self, unconditional: bool) -> Callable[..., Tensor]:
        """The model traced (``torch.jit.trace``) for one chunk's shapes, for every CPU call.

        Written by hand because no other torch path fits: a traced module runs the same aten kernels
        as eager, so the same bytes (tests/test_scale.py checks it), but without the Python of each
        module's call and with the GIL released, so the pool's threads really run side by side;
        ``torch.compile`` would fuse kernels (other bytes) and compile for tens of seconds, longer than
        README's first command. Only in inference mode (the Sampler's); ``torch.jit`` is deprecated, so
        where tracing fails the eager model runs instead, slower, the same bytes.
        """
        if not torch.is_inference_mode_enabled():
            return self.model
        with self._trace_lock:
            if unconditional not in self._traces:
                n = self.chunk_rows
                x = torch.zeros(n, *self.sample_shape)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                example = (x, torch.zeros(n, 1)) + (() if unconditional else (torch.zeros(n, 10),))
                # a function over the weights (constants in the graph), not the module: tracing a module
                # builds a ScriptModule per submodule, 0.3 s against 0.05 s here
                model = self.model
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        self._traces[unconditional] = torch.jit.trace(lambda *a: model(*a), example,
                                                                      check_trace=False)
                except Exception:  # noqa: BLE001 - any failure of a deprecated speed path: run eager
                    self._traces[unconditional] = self.model
            return self._traces[unconditional]

    def to_image(self, x: Tensor) -> Tensor:
        return x.clamp(0, 1)

    def from_image(self, img: Tensor) -> Tensor:
        return img.to(self.device, self.dtype)

    def weak_model(self, model: str | None) -> MnistBackend:
        """Another MNIST checkpoint trained like this one (default: the shipped weak model, mnist-weak)."""
        path = checkpoint.named(model) if model else checkpoint.SHIPPED_WEAK
        if not (path / "config.json").is_file():
            raise BackendError(f"model={path}: no MNIST checkpoint there (a folder written by `diffkit train mnist`)"
                               + ("; the shipped weak model is missing from this install" if not model else ""))
        weak = checkpoint.load_config(path)
        for key in ("objective", "conditioning", "T", "beta_start", "beta_end"):
            if weak.get(key) != self.config.get(key):
                raise BackendError(f"model={path} has {key} {weak.get(key)!r} but the main model has "
                                   f"{self.config.get(key)!r}: the weak model must be trained like the main one, "
                                   "only smaller or shorter")
        return MnistBackend(str(path), str(self.device))
