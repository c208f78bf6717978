"""The backend protocol: what the Sampler needs from a model."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor

from diffkit.schedule import StepConfig


@runtime_checkable
class Backend(Protocol):
    """A diffusion model as the Sampler sees it.

    - ``alphas_cumprod``: ``[T]`` float64 on the CPU (the schedule the model was trained with).
    - ``sample_shape``: ``(C, H, W)`` of the state ``x``; the first ``C`` channels of an estimate are noise.
    - ``step_config``: how the DDPM step reads the estimate (variance type, clipping, thresholding).
    - ``scheduler_config`` (optional): the diffusers scheduler config of the training schedule, from
      which every sampler but ``ddpm`` is built; without it, ``alphas_cumprod`` as ``trained_betas``.
    """

    name: str
    alphas_cumprod: Tensor
    sample_shape: tuple[int, int, int]
    step_config: StepConfig
    device: torch.device
    dtype: torch.dtype
    conditional: bool

    def default_timesteps(self) -> list[int]:
        """The strided timesteps used when the user gives none, descending, each one a model call."""

    def encode(self, labels: list[Any]) -> Tensor | None:
        """One label a sample (prompt, class; None = unconditional) -> conditioning ``[N x ...]``."""

    def model_input(self, x: Tensor) -> Tensor:
        """The model's input for state ``x`` (IF stage II appends the upsampled stage I image)."""

    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """Batched estimate ``[B x C' x H x W]`` for inputs ``[B x C_in x H x W]``, timesteps ``[B]``."""

    def to_image(self, x: Tensor) -> Tensor:
        """State ``[N x C x H x W]`` -> image in [0, 1]."""

    def from_image(self, img: Tensor) -> Tensor:
        """Image in [0, 1] ``[N x C x H x W]`` -> state scale (the ``x0`` the model was trained on)."""

    # Optional: ``start(ctx)``, called right after the run's initial noise draw, for a stage that draws
    # noise of its own before the first step (IF II noises the upsampled stage I image), so draws come
    # in the order diffusers' pipelines make them.

    def next_stage(self, images: Tensor, labels: list[Any]) -> Backend | None:
        """The backend that refines this stage's output ``[N x C x H x W]`` (IF II), or None."""


@dataclass
class BackendInfo:
    """A backend as a plugin declares it: ``load(**options)`` builds it.

    ``options`` names the CLI options it understands (``checkpoint``, ``model``, ``device``, ...),
    each with its help text; others given on the command line are an error.
    """

    name: str
    help: str
    load: Callable[..., Backend]
    options: dict[str, str] = field(default_factory=dict)
    label_kind: str = "prompt"  # what --prompt/--class feed: "prompt" or "class"


class BackendError(ValueError):
    """Bad backend input: an unknown option, missing checkpoint, label it cannot encode."""


def check_device(device: str) -> None:
    """Refuse a device torch cannot use here with a BackendError, before any model is built on it."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise BackendError(f"--device must be cpu, cuda, cuda:N or mps, got {device!r}") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendError(f"--device {device}: CUDA is not available here (torch {torch.__version__}); "
                               "use --device cpu") from None
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise BackendError(f"--device {device}: this machine has cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif d.type == "mps" and not torch.backends.mps.is_available():
        raise BackendError(f"--device {device}: MPS is not available here; use --device cpu")
    elif d.type not in ("cpu", "cuda", "mps"):
        raise BackendError(f"--device must be cpu, cuda, cuda:N or mps, got {device!r}")


def in_fixed_chunks(f: Callable[..., Tensor], rows: int, *args: Tensor | None, workers: int | None = None) -> Tensor:
    """``f(*args)`` evaluated ``rows`` rows at a time, the last chunk padded with copies of its last row.

    CPU kernels (oneDNN convolutions, small-matrix GEMMs) pick their algorithm, and so the order of
    their float sums, by batch size and thread count: a sample's estimate then differs in the last bits
    between a call of 2 rows and one of 64. Every call of exactly ``rows`` rows makes a sample's numbers
    independent of the samples that share its call, so a run gives the same bytes in any --batch-size
    and over any number of processes.

    ``workers`` (the CPU): each chunk runs on one thread, ``workers`` chunks at a time on a thread pool,
    so the bytes do not depend on the thread count either, and small chunks still use every core
    (small chunks waste less on padding: a one-sample CFG run is 2 rows). None (a GPU): the chunks in
    turn, in this thread. benchmarks/chunks.py measures what each choice costs.
    """
    n = next(a for a in args if a is not None).shape[0]
    pad = (-n) % rows
    if pad:
        args = tuple(None if a is None else torch.cat([a, a[-1:].expand(pad, *a.shape[1:])]) for a in args)
    starts = range(0, n + pad, rows)

    def chunk(i: int) -> Tensor:
        return f(*(None if a is None else a[i: i + rows] for a in args))

    if workers is None:
        return (chunk(0) if n + pad == rows else torch.cat([chunk(i) for i in starts]))[:n]
    return torch.cat(_on_one_thread_each(chunk, list(starts), workers))[:n]


_POOL: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def _on_one_thread_each(work: Callable[[int], Tensor], items: list[int], workers: int) -> list[Tensor]:
    """``[work(i) for i in items]``, each on one torch thread, ``workers`` at a time. Written by hand
    because torch has no per-call thread count: the process-wide count is set to 1 while the pool
    works (one pooled call at a time, hence the lock), and the grad and inference modes, which are
    per thread, are carried into the workers."""
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def run(i: int) -> Tensor:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return work(i)

    with _POOL_LOCK:
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if workers <= 1 or len(items) == 1:
                return [run(i) for i in items]
            pool = _POOL.get(workers) or _POOL.setdefault(workers, ThreadPoolExecutor(workers, "diffkit-chunk"))
            return list(pool.map(run, items))
        finally:
            torch.set_num_threads(old)
