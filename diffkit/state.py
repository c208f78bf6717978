"""The values that flow through a sampling run: conditions, queries, the run context, step states."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable

import torch
from torch import Tensor

from diffkit import schedule

if TYPE_CHECKING:
    from diffkit.backends.base import Backend


@dataclass(frozen=True, eq=False)
class Cond:
    """Conditioning for the N samples of a run: ``value`` ``[N x ...]`` as the backend's model takes it.

    ``key`` identifies it (one label a sample; None is the null label), so that equal conditions
    made by different combiners are evaluated once.
    """

    key: tuple[Hashable, ...]
    value: Tensor | None

    @property
    def is_null(self) -> bool:
        return all(k is None for k in self.key)


@dataclass(frozen=True)
class Perturbation:
    """A change to the model's own forward pass for one branch (``Query.perturbation``), which a backend
    applies where it declares the ``kind`` (``Backend.perturbations``): ``"attention_identity"`` (PAG: the
    self-attention map replaced by the identity), ``"attention_blur"`` (SEG: the self-attention queries
    blurred by a Gaussian of ``blur`` tokens), ``"block_skip"`` (SLG: whole blocks skipped). ``layers``
    names where, in the backend's words (``Backend.perturbed``)."""

    kind: str
    layers: tuple[str, ...]
    blur: float = 0.0

    def __str__(self) -> str:
        return f"{self.kind} in {'+'.join(self.layers)}"


@dataclass(frozen=True, eq=False)
class Query:
    """One branch the model is asked for: input ``x`` ``[N x C x H x W]`` at timestep ``t`` under ``cond``.

    ``view`` names the transforms applied to the step's state to make ``x``, outermost last; ``model``
    names a second model a technique registered in ``ctx.models`` (None: the run's backend);
    ``perturbation`` a change to that model's forward pass (PAG's, SLG's; None: the model as it is).
    With ``t`` and ``cond.key`` they are the identity used to evaluate equal queries once.
    """

    x: Tensor
    t: int | float
    cond: Cond
    view: tuple[str, ...] = ()
    model: str | None = None
    perturbation: Perturbation | None = None

    @property
    def key(self) -> tuple:
        return (self.model, self.perturbation, self.t, self.view, self.cond.key)

    def with_cond(self, cond: Cond) -> Query:
        return Query(self.x, self.t, cond, self.view, self.model, self.perturbation)

    def with_view(self, view: Any, cond: Cond | None = None) -> Query:
        """This query seen through ``view`` (a :class:`diffkit.views.View`), optionally under another condition."""
        return Query(view.forward(self.x), self.t, self.cond if cond is None else cond, self.view + (view.name,),
                     self.model, self.perturbation)

    def with_model(self, model: str | None) -> Query:
        return Query(self.x, self.t, self.cond, self.view, model, self.perturbation)

    def with_perturbation(self, perturbation: Perturbation | None) -> Query:
        return Query(self.x, self.t, self.cond, self.view, self.model, perturbation)


# A denoiser answers a list of queries with one estimate each, ``[N x C' x H x W]``: the noise in the
# first ``eps_channels`` channels, for a flow model the clean image in the next ``eps_channels``
# (``Context.blocks``), then whatever else the backend predicts (IF: the variance).
Denoiser = Callable[[list[Query]], list[Tensor]]


@dataclass
class Context:
    """What techniques may read about the run: the backend, schedule, samples and their randomness."""

    backend: Backend
    timesteps: list[int]
    labels: list[Any]  # one prompt / class a sample
    seeds: list[int]
    cond: Cond
    null: Cond
    generators: list[torch.Generator] = field(repr=False, default_factory=list)
    stage: int = 0
    i_start: int = 0
    size_factor: float = 1.0  # this stage's image size over the first stage's (IF II: 4)
    extra: dict[str, Any] = field(default_factory=dict)  # for plugins to share per-run data
    streams: dict[str, list[torch.Generator]] = field(default_factory=dict, repr=False)
    stepper: Any = field(default=None, repr=False)  # the sampler's walk (rules.Stepper), set by api.Run.context
    models: dict[str, Any] = field(default_factory=dict, repr=False)  # second models by name (autoguide's weak one)
    # The run's initial noise as the Sampler drew it ``[N x C x H x W]`` (before a start or a rule's
    # scaling): a projector may re-noise with it, as diffusers' inpaint pipelines blend their latents.
    noise: Tensor | None = field(default=None, repr=False)
    # The step's latest model evaluation as the sampler made it: its query and the combined estimate it stepped
    # from. A technique keeping states of its own beside the run's (anagram's reduction=x0) reads it to step
    # them as a two-evaluation rule (Heun) steps the run's.
    evaluation: tuple[Query, Tensor] | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def alphas_cumprod(self) -> Tensor:
        return self.backend.alphas_cumprod

    @property
    def eps_channels(self) -> int:
        return self.backend.sample_shape[0]

    @property
    def blocks(self) -> int:
        """Estimate blocks of ``eps_channels`` each a denoiser's answer holds: 1 (noise), or 2 for a flow
        model (noise, then clean image: at sigma = 1 the noise says nothing of the image)."""
        return 2 if self.backend.formulation == "flow" else 1

    def sigma(self, t: int | float) -> float:
        """A flow model's noise level ``sigma`` in [0, 1] at timestep ``t`` of this run (the stepper's)."""
        return self.stepper.sigma(t)

    def abar(self, t: int | float) -> float:
        """``abar`` of the state at timestep ``t`` of this run (``t < 0``: the clean image, 1).

        The sampler decides: a rule with interpolated (Karras) sigmas visits noise levels between
        the training timesteps, so this is not always ``alphas_cumprod[t]``.
        """
        return self.stepper.abar(t)

    @staticmethod
    def make_cond(backend: Backend, labels: list[Any]) -> Cond:
        """Condition for one label a sample (None: the null condition)."""
        return Cond(tuple(labels), backend.encode(labels))

    def encode(self, labels: list[Any]) -> Cond:
        """Condition for one label a sample (None: the null condition)."""
        return self.make_cond(self.backend, labels)

    def encode_all(self, label: Any) -> Cond:
        """The same label for every sample."""
        return self.encode([label] * self.n)

    def randn(self, shape: tuple[int, ...] | None = None, stream: str | None = None) -> Tensor:
        """Standard normal ``[N x ...]``, sample i drawn from its own generator (so batches match single runs).

        ``stream``: a plugin's own named noise stream (seeded from the sample's seed and the name), so
        that its draws leave the sampler's noise, and so every other result, unchanged.
        """
        shape = tuple(shape or self.backend.sample_shape)
        if stream is None:
            gens = self.generators
        else:
            if stream not in self.streams:
                self.streams[stream] = [torch.Generator().manual_seed(s * 1_000_003 + zlib.crc32(stream.encode()))
                                        for s in self.seeds]
            gens = self.streams[stream]
        # Drawn on the CPU in the model's dtype, as diffusers' randn_tensor does with a CPU generator, so
        # a seed gives the same image on any device and the same noise as diffusers' pipelines.
        dt = self.backend.dtype
        return torch.cat([torch.randn((1, *shape), generator=g, dtype=dt) for g in gens]).to(self.backend.device)

    def load_image(self, image: Any, what: str = "image") -> Tensor:
        """A path or an image tensor in [0, 1] -> this backend's state scale ``[N x C x H x W]``.

        The image is read at the size of the backend's images (``backend.image_shape``: a latent model's
        are its decoder's), then ``backend.state_from_image`` makes each sample's state of it.
        """
        C, H, W = self.backend.image_shape
        if isinstance(image, Tensor):
            img = image.float()
            img = img[None] if img.dim() == 3 else img
            if tuple(img.shape[-2:]) != (H, W) or img.shape[1] not in (1, C):
                raise ValueError(f"{what} tensor has shape {tuple(img.shape)}, backend {self.backend.name!r} "
                                 f"needs [N x {C} x {H} x {W}]")
        else:
            from diffkit.io import load_image

            img = load_image(image, (H, W), C)[None]
        return self.backend.state_from_image(img.expand(-1, C, -1, -1).to(self.backend.device), self)

    def forward(self, x0: Tensor, t: int, eps: Tensor | None = None, *, stream: str | None = None) -> Tensor:
        """``x_t`` from ``x0`` at this run's noise level for ``t`` (:meth:`abar`): with ``eps``, or fresh
        per-sample noise from the named ``stream``.

        A plugin's noise must come from a stream of its own: drawing from the sampler's generators
        would shift every later draw of the run, so the stream is required when ``eps`` is not given.
        """
        if eps is None:
            if stream is None:
                raise ValueError("ctx.forward needs eps= or stream=NAME (a plugin draws from its own stream)")
            eps = self.randn(x0.shape[1:], stream=stream)
        return schedule.noised(x0, self.abar(t), eps)


@dataclass
class Step:
    """The mutable step a projector may change: set ``x`` to re-impose a constraint."""

    i: int
    t: int | float
    t_next: int | float  # -1 after the last step
    x: Tensor  # [N x C x H x W] state at t_next
    x0: Tensor  # the step's clean-image estimate
    # ``redo(x, k)``: step ``k`` once more from state ``x`` at ``timesteps[k]``, with the same combiners
    # and sampler; returns its ``rules.StepOutput``: the state at ``timesteps[k + 1]`` and the step's
    # estimates (RePaint's resampling, LookingGlass's time travel). None when the sampler keeps a history
    # and cannot step again from an earlier index (``ctx.stepper.can_redo``).
    redo: Callable[[Tensor, int], Any] | None = field(repr=False, default=None)


@dataclass(frozen=True)
class StepState:
    """Read-only state yielded after every step, for observers and UIs."""

    stage: int
    i: int
    n_steps: int
    t: int | float
    t_next: int | float
    x: Tensor
    x0: Tensor
    eps: Tensor
