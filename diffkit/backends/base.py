"""The backend protocol: what the Sampler needs from a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import torch
from torch import Tensor

from diffkit.errors import UserError
from diffkit.params import Param
from diffkit.schedule import StepConfig, strided_timesteps


class Backend:
    """Base class of every backend: a diffusion model as the Sampler sees it.

    A backend subclasses this and sets or overrides what it needs (``diffkit/backends/gaussian.py`` is
    the worked example; docs/writing-plugins.md walks through it). Required:

    - ``name``; ``alphas_cumprod``: ``[T]`` float64 on the CPU (the schedule the model was trained with);
      ``sample_shape``: ``(C, H, W)`` of the state ``x``; the first ``C`` channels of an estimate are noise.
    - :meth:`encode`, :meth:`predict`, :meth:`to_image`, :meth:`from_image`.

    Optional, each with a default that fits a one-stage pixel-space model on the CPU: ``step_config``,
    ``scheduler_config``, ``checkpoint``, ``device``, ``dtype``, ``conditional``, ``stride``,
    ``prediction_type``, ``recipe``, ``default_sampler``, ``image_shape``, :meth:`default_timesteps`,
    :meth:`schedule_kwargs`,
    :meth:`model_input`, :meth:`state_from_image`, :meth:`prepare`, :meth:`start`, :meth:`next_stage`,
    :meth:`weak_model`.
    """

    name: str = ""
    alphas_cumprod: Tensor
    sample_shape: tuple[int, int, int]
    # how the DDPM step reads the estimate (variance type, clipping, thresholding)
    step_config: StepConfig = StepConfig()
    # the diffusers scheduler config of the training schedule, from which every sampler but ``ddpm`` is
    # built; None: ``alphas_cumprod`` as ``trained_betas``
    scheduler_config: dict[str, Any] | None = None
    checkpoint: str | None = None  # the weights' folder or id, recorded in run.json
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    conditional: bool = True
    stride: int = 1  # of the default timesteps
    # What ``predict`` returns in its first ``C`` channels: "epsilon" (the noise) or "v_prediction"
    # (``v = sqrt(abar) eps - sqrt(1 - abar) x0``, Salimans & Ho 2022) for a discrete variance-preserving
    # model, or "flow_prediction" for a flow-matching one (its input ``x = (1 - sigma) x0 + sigma eps``, its
    # output the velocity ``eps - x0``, its timestep ``sigma`` x the scheduler's ``num_train_timesteps``).
    # The Sampler turns each into the estimates every technique sees (noise; for a flow model the clean
    # image too, which noise alone does not give at sigma = 1), so techniques keep their meaning on any.
    prediction_type: str = "epsilon"
    # A later stage that samples its own way instead of with the run's techniques and sampler (IF's
    # stage III, the SD x4 upscaler, runs as the Visual Anagrams release runs it); None: the run's.
    recipe: StageRecipe | None = None
    # The --sampler a run uses when none is given (None: diffkit's ddpm); Stable Diffusion's is "own",
    # the scheduler the model ships with, as its pipeline samples.
    default_sampler: str | None = None
    # The steps a run takes when it names none and the backend's default timesteps do not say (a flow
    # model's pipeline default: SD3's 28); None: as many as :meth:`default_timesteps`.
    default_steps: int | None = None
    # The changes to its own forward pass this backend can make for a branch (``state.Perturbation.kind``:
    # "attention_identity", "attention_blur", "block_skip"), which guidance from inside the model (pag, seg,
    # slg) asks for; :meth:`perturbed` applies one. Declared again on the BackendInfo, for the request.
    perturbations: tuple[str, ...] = ()
    # Whether the state is a VAE's latents (Stable Diffusion, the flow families): such a backend also
    # implements :meth:`to_pixels` and :meth:`from_pixels`, through which a technique acts on the image
    # itself (anagram's space=pixel). Declared again on the BackendInfo, for the request.
    latent: bool = False

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images :meth:`to_image` makes and :meth:`from_image` takes: the state's for
        a pixel-space model; a latent model's decoder makes larger ones with 3 channels."""
        return self.sample_shape

    @property
    def formulation(self) -> str:
        """``"flow"`` for a flow-matching model (continuous sigma in [0, 1], driven by diffusers' flow
        schedulers), ``"vp"`` for a discrete variance-preserving one (``alphas_cumprod``)."""
        return "flow" if self.prediction_type == "flow_prediction" else "vp"

    def schedule_kwargs(self, steps: int) -> dict[str, Any]:
        """What the model's pipeline passes its scheduler's ``set_timesteps`` beside the number of steps
        (Flux: its own sigmas and ``mu``, the shift for the image's size); default none."""
        return {}

    def strength_start(self, steps: int, strength: float) -> int:
        """The step an img2img run of ``strength`` starts at, as this family's img2img pipeline counts it:
        Stable Diffusion's skips ``steps - int(steps x strength)``; the flow pipelines' (SD3, Flux)
        ``int(steps - steps x strength)``, one fewer when ``steps x strength`` is not whole."""
        if self.formulation == "flow":
            return int(max(steps - steps * strength, 0))
        return steps - min(int(steps * strength), steps)

    def default_timesteps(self) -> list[int]:
        """The strided timesteps used when the user gives none, descending, each one a model call."""
        return strided_timesteps(len(self.alphas_cumprod), self.stride)

    def encode(self, labels: list[Any]) -> Tensor | None:
        """One label a sample (prompt, class; None = unconditional) -> conditioning ``[N x ...]``; a label
        it cannot take is a :class:`BackendError` naming it."""
        raise NotImplementedError

    def model_input(self, x: Tensor) -> Tensor:
        """The model's input for state ``x`` (IF stage II appends the upsampled stage I image)."""
        return x

    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """Batched estimate ``[B x C' x H x W]`` for inputs ``[B x C_in x H x W]``, timesteps ``[B]``."""
        raise NotImplementedError

    def to_image(self, x: Tensor) -> Tensor:
        """State ``[N x C x H x W]`` -> image in [0, 1]."""
        raise NotImplementedError

    def from_image(self, img: Tensor) -> Tensor:
        """Image in [0, 1] ``[N x C x H x W]`` -> state scale (the ``x0`` the model was trained on)."""
        raise NotImplementedError

    def to_pixels(self, x: Tensor) -> Tensor:
        """A latent backend's decoder: latents ``[N x C x h x w]`` -> its own output ``[N x 3 x H x W]``,
        nominally in [-1, 1] and not clamped (what LookingGlass blends, so that the round trip
        :meth:`from_pixels` undoes it as far as the VAE can)."""
        raise NotImplementedError(f"backend {self.name!r} samples in pixel space: it has no decoder")

    def from_pixels(self, img: Tensor) -> Tensor:
        """A latent backend's encoder: ``[N x 3 x H x W]`` in the decoder's [-1, 1] -> latents, the posterior's
        mean (deterministic), scaled as the model takes them."""
        raise NotImplementedError(f"backend {self.name!r} samples in pixel space: it has no encoder")

    def prepare(self, ctx: Any) -> None:
        """Called right before the run's initial noise draw, for a stage whose pipeline draws noise of its
        own first (the SD x4 upscaler noises the low-resolution image, then draws the latents)."""

    def state_from_image(self, img: Tensor, ctx: Any) -> Tensor:
        """An image a technique was given, in [0, 1] ``[1 or N x C x H x W]`` -> the state of each of the
        run's ``ctx.n`` samples ``[N x ...]``. Default: :meth:`from_image`, the same for every sample. A
        latent backend whose pipelines sample the VAE's posterior draws that sample here, from each
        sample's generator, as diffusers does (techniques read their images in setup, so before the
        initial noise, in diffusers' order)."""
        x = self.from_image(img)
        return x.expand(ctx.n, -1, -1, -1) if x.shape[0] == 1 else x

    def start(self, ctx: Any) -> None:
        """Called right after the run's initial noise draw, for a stage that draws noise of its own before
        the first step (IF II noises the upsampled stage I image), so draws come in the order diffusers'
        pipelines make them."""

    def next_stage(self, images: Tensor, labels: list[Any]) -> Backend | None:
        """The backend that refines this stage's output ``[N x C x H x W]`` (IF II), or None."""
        return None

    def perturbed(self, perturbation: Any) -> ContextManager[None]:
        """A context within which :meth:`predict` runs the model with ``perturbation`` (a
        :class:`~diffkit.state.Perturbation` of a kind in :attr:`perturbations`) applied to every row; the
        model is as before once it exits. Layers that name nothing in the model are a ValueError naming them.
        The Sampler calls it around the model call of a step's perturbed branches (``denoise.batched``)."""
        raise BackendError(f"backend {self.name!r} cannot perturb its model ({perturbation.kind})")

    def weak_model(self, model: str | None) -> Backend:
        """A weaker model of the same kind, conditioned alike, for guidance (``autoguide``): ``model`` names
        it (a checkpoint, a hub id); None asks for the backend's own default, if it ships one."""
        raise BackendError(f"backend {self.name!r} has no weak model to guide with (autoguide)")


@dataclass(frozen=True)
class StageRecipe:
    """How a stage with a recipe of its own samples: technique specs (``("cfg:9",)``), a step rule spec
    (``"diffusers:DDIMScheduler"``) and a number of steps, in the words of the CLI."""

    hooks: tuple[str, ...]
    sampler: str
    steps: int


@dataclass
class BackendInfo:
    """A backend as a plugin declares it: ``load(**options)`` builds it from its declared ``params``.

    The declaration is light, so listing backends (``diffkit backends``, the UI) imports no model code:
    ``load`` imports the backend's module when it is called. ``params`` are :class:`~diffkit.params.Param`
    declarations, as a technique's: the CLI (``--backend-option NAME=VALUE``), the UI's form and the
    checks before any model loads are all made from them.
    """

    name: str
    help: str
    load: Callable[..., Backend]
    params: tuple[Param, ...] = ()
    label_kind: str = "prompt"  # what --prompt/--class feed: "prompt" or "class"
    default: bool = False  # the backend a run uses when it names none (diffkit's own: mnist)
    # ``embed(prompts, out, append, **options) -> count``: what `diffkit embed --backend NAME` does, saving
    # prompt embeddings that a later run reads instead of loading the text encoder; None: it has none.
    embed: Callable[..., int] | None = None
    # what the backend's model is (``Backend.formulation``): "vp" or "flow", or a function of its read
    # options; declared so a rule that cannot step it is refused before any weights load
    formulation: str | Callable[[dict[str, Any]], str] = "vp"
    # ``scheduler_of(options) -> config``: the scheduler config of the model these read options load, read
    # before any weights (a folder's small JSON), so a rule its schedule rules out is refused first (Heun on
    # Flux's size-dependent shift); None: not known before the model loads
    scheduler_of: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # the perturbations its model can make (``Backend.perturbations``), declared so that a technique needing
    # one the backend lacks (pag on mnist) is refused before any weights load
    perturbations: tuple[str, ...] = ()
    # whether its state is a VAE's latents (``Backend.latent``), declared so that a technique acting on the
    # decoded image (anagram's space=pixel) on a pixel-space model is refused before any weights load
    latent: bool = False
    # ``conditioned_from(options) -> stage``: the first stage (1-based) whose model takes an image beside the
    # state (IF stage II's upscaled stage I), or None; declared so a technique that can only view the state
    # (``Technique.state_input_only``: anagram's warps) is refused before any weights load
    conditioned_from: Callable[[dict[str, Any]], int | None] | None = None

    def formulation_of(self, options: dict[str, Any]) -> str:
        """The formulation of the model these read ``options`` load."""
        return self.formulation(options) if callable(self.formulation) else self.formulation

    @property
    def options(self) -> dict[str, str]:
        """Option name -> help (the declared params)."""
        return {p.name: p.help for p in self.params}

    def read_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """``given`` (text or typed values; None: not given) -> typed, checked values; an unknown option or
        a bad value is a :class:`BackendError` naming the backend, the option and what it takes."""
        declared = {p.name: p for p in self.params}
        given = {k: v for k, v in given.items() if v is not None}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise BackendError(f"backend {self.name!r} takes no option {', '.join(unknown)} "
                               f"(it takes: {', '.join(declared) or 'none'})")
        out = {}
        for key, value in given.items():
            try:
                out[key] = declared[key].read(value)
            except ValueError as e:
                raise BackendError(f"backend {self.name!r}: option {key!r} {e}") from None
        return out


class BackendError(UserError):
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
