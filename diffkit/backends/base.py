"""The backend protocol: what the Sampler needs from a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor

from diffkit.fixed_calls import in_fixed_chunks  # noqa: F401 - the backends' helper, here as before
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
