"""How a technique declares itself: name, kind, parameters, supported backends; and its three kinds."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from torch import Tensor

from diffkit.hookspecs import hookimpl
from diffkit.motion import Clip
from diffkit.params import Param
from diffkit.state import Context, Query

FILE_KINDS = ("image", "sketch", "mask", "path")  # Param kinds whose value may name a file the run reads

# Guidance limited to an interval of noise levels (Kynkaanniemi et al. 2024), shared by cfg and autoguide.
INTERVAL = (
    Param("lo", float, 0.0, "guide only from this fraction t/T of the noise schedule up", range=(0.0, 1.0)),
    Param("hi", float, 1.0, "guide only up to this fraction t/T of the noise schedule", range=(0.0, 1.0)),
)


def check_interval(args: dict[str, Any]) -> None:
    """Fill in ``lo``/``hi`` defaults and refuse an empty interval (ValueError)."""
    args.setdefault("lo", 0.0)
    args.setdefault("hi", 1.0)
    if args["lo"] > args["hi"]:
        raise ValueError(f"the guidance interval lo={args['lo']:g}..hi={args['hi']:g} is empty: give lo <= hi")


def interval_timesteps(ctx: Context, args: dict[str, Any]) -> tuple[float, float]:
    """``(lo T, hi T)``: the timesteps between which a query is guided."""
    T = len(ctx.alphas_cumprod)
    return args["lo"] * T, args["hi"] * T


class Technique:
    """Base of every technique. Subclasses set the class attributes and take their params as kwargs.

    ``setup(ctx)`` runs once per stage before sampling (encode extra prompts, load images).
    """

    name: ClassVar[str]
    kind: ClassVar[str]  # "combiner" | "projector" | "observer"
    help: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    backends: ClassVar[tuple[str, ...]] = ("*",)  # names of supported backends, "*" for all
    # whether it decodes the state to act on the image (``Backend.to_pixels``), so needs a latent backend
    # (``BackendInfo.latent``); an instance may set it from its arguments (anagram's space=pixel)
    needs_decoder: bool = False
    # the argument that makes it step again from earlier states (``Step.redo``: RePaint's "resample=3", time
    # travel's "travel=1"), so it needs a rule without a history (``StepRule.redoes``); "": it does not
    steps_again: str = ""
    # the argument that makes its combined clean image differ from the state even where its branches agree
    # (anagram's view=zoom:0.5: the pyramid average of a warp gives back a little less than the image), so
    # it needs a rule that evaluates the model once a step: a second evaluation within the step (Heun's, at
    # the step's end) reads the slope (x - x0) / sigma there, and near the last, small sigma that difference
    # over sigma breaks the image; "": it does not
    inexact_average: str = ""
    # whether it can only view the state, not other channels a model takes beside it (IF stage II's upscaled
    # image), so a stage whose model takes them is refused (``BackendInfo.conditioned_from``); set per instance
    state_input_only: bool = False

    def __init__(self, **args: Any):
        self.args = args

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.args.items())})"

    def setup(self, ctx: Context) -> None:
        pass

    def input_files(self) -> list[str]:
        """The files this technique reads (its params of kind image, sketch, mask or path that name a file):
        the run records their contents' hashes, so a ``--resume`` after one changed is refused."""
        out = []
        for p in self.params:
            if p.kind in FILE_KINDS:
                values = self.args.get(p.name)
                for v in values if isinstance(values, (list, tuple)) else [values]:
                    if isinstance(v, str) and os.path.isfile(v):
                        out.append(v)
        return out

    # ---- animations (diffkit animate): what a run of this technique shows moving ----
    animates: ClassVar[bool] = False  # whether its runs have clips (decided before it is built again)

    def clip_names(self) -> list[str]:
        """The names of the clips each sample gets (file suffixes: ``sample-000.view1.gif``), in order."""
        return []

    def clips(self, image: Tensor, label: str) -> list[Clip]:
        """The clips of one sample ``image`` ``[C x H x W]`` in [0, 1] with its ``label``, named as
        :meth:`clip_names` names them."""
        return []

    def view_images(self, image: Tensor) -> list[tuple[str, Tensor]]:
        """Images written beside each sample with the run (an anagram's views: ``sample-000.view1.png``)."""
        return []

    # ---- illusions measured (diffkit score): what each view of a sample should read as ----
    illusion: ClassVar[bool] = False  # whether its runs are illusions to score (decided before it is built again)

    def illusion_views(self, image: Tensor) -> list[tuple[str, Tensor, str]]:
        """The views of one sample ``image`` ``[C x H x W]`` in [0, 1] beside the sample itself, each with the
        prompt (or class) it should read as: ``[(name, view image, prompt)]``."""
        return []

    @classmethod
    def supports(cls, backend: str) -> bool:
        return "*" in cls.backends or backend in cls.backends


class Combiner(Technique):
    """Changes how the estimate is made: one query -> several (``expand``) -> one estimate (``reduce``).

    Nest in the order given (first outermost). Every expanded query of every combiner goes into the
    same batched model call.

    ``reduce`` combines noise only (``[N x eps_channels x H x W]`` each). What a backend predicts
    besides the noise (IF's learned variance) is not an image, so no combiner touches it: diffkit maps
    each branch's back through the pixel rearrangements of the views its query added and combines
    them by ``extra_channels``: ``"mean"`` over the branches, or ``"first"`` (the first branch's).

    ``space``: what ``reduce`` combines. ``"estimate"`` (the default): the noise (and, on a flow model,
    the clean image in a second call), right for every combination whose weights add up to one.
    ``"prediction"``: the model's own prediction, what diffusers' pipelines guide (noise, v, or a flow
    model's velocity), once; a guider that is not linear in its inputs (APG, CFG-Zero*) differs between
    the two, and equals diffusers' only in the prediction (``denoise.Prediction``). ``"clean"``: each
    branch's clean-image estimate ``x0`` (``[N x C x H x W]``), once; the query's noise then follows from
    the combined ``x0`` and its own state (LookingGlass's averaging of the views' ``x0``, which differs from
    averaging noise where the branches' states are not one state's views). An instance may set it from its
    arguments (anagram's reduction=x0).
    """

    kind = "combiner"
    extra_channels: ClassVar[str] = "mean"
    space: str = "estimate"
    # A guidance combiner (cfg, the guiders): its first branch is the query's own (conditional) estimate,
    # which the guidance terms (:class:`GuidanceTerm`) right after it in the list join (``denoise.join``).
    guidance: ClassVar[bool] = False

    def expand(self, query: Query) -> list[Query]:
        raise NotImplementedError

    def reduce(self, query: Query, estimates: list[Tensor]) -> Tensor:
        """The branches' noise estimates, in ``expand``'s order -> one ``[N x eps_channels x H x W]``."""
        raise NotImplementedError


class GuidanceTerm(Combiner):
    """Guidance away from a worse branch of the query's own estimate: ``c + w (c - b)``, ``b`` the branch
    :meth:`branch` makes of the query (PAG: its estimate with the model's self-attention perturbed).

    On its own it is that combiner (the PAG paper's eq. 9, diffusers' PAG pipelines without CFG). Right
    after a guidance combiner in the list (``--hook cfg:7.5 --hook pag:scale=3``) it joins it instead of
    nesting inside it, as diffusers' pipelines add PAG's and SLG's terms beside CFG's:
    ``uncond + g (c - uncond) + w (c - b)``, the term not scaled by g, ``b`` made of the guidance's
    conditional branch (``denoise.join``). ``space`` is the guidance's there: the term is linear, so it
    is the same in the model's prediction and in the estimates.
    """

    space = "prediction"  # diffusers adds the term to the model's prediction (the same when alone, linear)
    # what the backend must be able to do for it: a ``state.Perturbation.kind`` (``Backend.perturbations``)
    perturbs: ClassVar[str | None] = None

    def branch(self, query: Query) -> Query | None:
        """The branch to guide away from, or None where the term is off (outside its steps)."""
        raise NotImplementedError

    def weight(self, query: Query) -> float:
        """The term's weight ``w`` at this query."""
        raise NotImplementedError

    def expand(self, query: Query) -> list[Query]:
        b = self.branch(query)
        return [query] if b is None else [query, b]

    def reduce(self, query: Query, estimates: list[Tensor]) -> Tensor:
        if len(estimates) == 1:
            return estimates[0]
        c, b = estimates
        return c + self.weight(query) * (c - b)


class Projector(Technique):
    """Changes the state: implements ``diffkit_initial_state`` and/or ``diffkit_after_step`` (hookspecs)."""

    kind = "projector"


class Observer(Technique):
    """Sees every step and changes nothing: implements ``diffkit_observe``."""

    kind = "observer"


class StartFrom(Projector):
    """Start sampling from a given state ``x`` ``[N x C x H x W]`` at index 0 (the noisy image of a
    denoising study, ``studies.iterative``). From Python only (``hooks=[StartFrom(x=...)]``): a tensor is
    no command-line argument, so it is not registered."""

    name = "start_from"

    @hookimpl
    def diffkit_initial_state(self, ctx, noise):
        return self.args["x"].to(noise.device, noise.dtype), 0
