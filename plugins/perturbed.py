"""Guidance from inside the model (issue 38): the model's own estimate guided away from the same model
with its forward pass perturbed, ``c + w (c - c_perturbed)``.

- ``pag``: perturbed-attention guidance (Ahn et al. 2024, arXiv 2403.17377): self-attention maps replaced by
  the identity in the layers named, as diffusers' PAG pipelines (``pag_applied_layers``, ``pag_scale``,
  ``pag_adaptive_scale``).
- ``seg``: smoothed energy guidance (Hong 2024, arXiv 2408.00760): self-attention queries blurred by a
  Gaussian (by default infinitely: their mean), as the SEG-SDXL release.
- ``slg``: skip-layer guidance (Stability AI, SD3.5): whole transformer blocks skipped, between ``start``
  and ``stop`` of the steps, as StableDiffusion3Pipeline's ``skip_guidance_layers``.

Each is a :class:`~diffkit.technique.GuidanceTerm`: right after cfg (or a guider) it joins it, its term
added beside CFG's as the pipelines add it; alone, ``c + w (c - c_perturbed)``. The backend applies the
perturbation (``Backend.perturbed``) where it declares it (``Backend.perturbations``): sd, sdxl, sd3.
"""

from __future__ import annotations

import bisect

from diffkit.hookspecs import hookimpl
from diffkit.params import Param
from diffkit.state import Context, Perturbation, Query
from diffkit.technique import INTERVAL, Combiner, GuidanceTerm, check_interval, interval_timesteps


def layer_list(text: str, what: str) -> tuple[str, ...]:
    """``"mid+up.0"`` -> ``("mid", "up.0")``: the ``+`` list factorize's parts use."""
    layers = tuple(p.strip() for p in str(text).split("+"))
    if not all(layers):
        raise ValueError(f"layers={text!r}: give {what} joined by +, none empty")
    return layers


class PerturbedGuidance(GuidanceTerm):
    """What pag, seg and slg share: the layers they name (``+``-joined, ``default_layers`` when none), the
    perturbation their branch asks the backend for, checked at setup against the backend's declaration and
    the model's layers, and their weight ``scale``."""

    default_layers: str
    layer_words = "layer patterns"

    def __init__(self, **args):
        super().__init__(**args)
        self.layers = layer_list(self.args.get("layers", self.default_layers), self.layer_words)

    def perturbation(self) -> Perturbation:
        return Perturbation(self.perturbs, self.layers)

    def setup(self, ctx: Context) -> None:
        be = ctx.backend
        if self.perturbs not in be.perturbations:
            raise ValueError(f"backend {be.name!r} cannot perturb its model as {self.name} needs "
                             f"({self.perturbs}); the backends that can declare it (diffkit backends)")
        with be.perturbed(self.perturbation()):  # layers that name nothing in this model are refused now
            pass

    def branch(self, query: Query) -> Query | None:
        return query.with_perturbation(self.perturbation()) if self.on(query) else None

    def on(self, query: Query) -> bool:
        raise NotImplementedError

    def weight(self, query: Query) -> float:
        return self.args["scale"]


class AttentionGuidance(PerturbedGuidance):
    """pag's and seg's: self-attention layers (default the UNet's ``mid``), on while ``lo <= t/T <= hi``."""

    default_layers = "mid"

    def __init__(self, **args):
        super().__init__(**args)
        check_interval(self.args)

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        self.t_lo, self.t_hi = interval_timesteps(ctx, self.args)

    def on(self, query: Query) -> bool:
        return self.t_lo <= query.t <= self.t_hi


class PAG(AttentionGuidance):
    name = "pag"
    help = ("Perturbed-attention guidance (Ahn et al. 2024): c + scale (c - c_pag), c_pag the model with its "
            "self-attention maps made the identity in the layers named. Right after cfg it joins it, as "
            "diffusers' PAG pipelines: uncond + g (c - uncond) + scale (c - c_pag). One more branch a step.")
    params = (
        Param("scale", float, 3.0, "PAG scale (diffusers' pag_scale)", range=(-100.0, 100.0)),
        Param("layers", str, "mid", "self-attention layers, joined by +: diffusers' pag_applied_layers patterns "
                                    "(mid, down_blocks.1, up_blocks.0.attentions.1), up.N/down.N for a UNet's "
                                    "blocks, N for a transformer's block N"),
        Param("adaptive", float, 0.0, "diffusers' pag_adaptive_scale: the scale lowered by this x (1000 - t), "
                                      "never below 0; 0: off", range=(0.0, 1.0)),
        *INTERVAL,
    )
    perturbs = "attention_identity"

    def weight(self, query: Query) -> float:
        """diffusers' ``PAGMixin._get_pag_scale``: ``scale - adaptive (1000 - t)``, at least 0."""
        scale, adaptive = self.args["scale"], self.args.get("adaptive", 0.0)
        if adaptive > 0 and scale > 0:
            return max(scale - adaptive * (1000 - float(query.t)), 0.0)
        return scale


class SEG(AttentionGuidance):
    name = "seg"
    help = ("Smoothed energy guidance (Hong 2024): c + scale (c - c_seg), c_seg the model with the "
            "self-attention queries of the layers named blurred by a Gaussian of blur tokens (above 9999: "
            "their mean, the paper's default). Right after cfg it joins it, as PAG does.")
    params = (
        Param("scale", float, 3.0, "SEG scale", range=(-100.0, 100.0)),
        Param("layers", str, "mid", "self-attention layers, joined by +, as pag's"),
        Param("blur", float, 1e7, "the Gaussian's sigma in tokens; above 9999 the queries' mean (infinite "
                                  "blur)", range=(0.1, 1e9)),
        *INTERVAL,
    )
    perturbs = "attention_blur"

    def perturbation(self) -> Perturbation:
        return Perturbation(self.perturbs, self.layers, self.args.get("blur", 1e7))


class SLG(PerturbedGuidance):
    name = "slg"
    help = ("Skip-layer guidance (SD3.5): c + scale (c - c_skip), c_skip the model with the transformer blocks "
            "named skipped, for steps i with start < i/steps < stop. Right after cfg it joins it, as "
            "StableDiffusion3Pipeline's skip_guidance_layers: uncond + g (c - uncond) + scale (c - c_skip).")
    params = (
        Param("scale", float, 2.8, "SLG scale (the pipeline's skip_layer_guidance_scale)", range=(-100.0, 100.0)),
        Param("layers", str, "7+8+9", "transformer blocks to skip, joined by + (SD3.5 Medium's: 7+8+9)"),
        Param("start", float, 0.01, "guide from this fraction of the steps (exclusive)", range=(0.0, 1.0)),
        Param("stop", float, 0.2, "guide up to this fraction of the steps (exclusive)", range=(0.0, 1.0)),
    )
    perturbs = "block_skip"
    default_layers, layer_words = "7+8+9", "block indices"

    def __init__(self, **args):
        super().__init__(**args)
        bad = [p for p in self.layers if not p.isdigit()]
        if bad:
            raise ValueError(f"layers={self.args['layers']!r}: blocks are numbers (0+3), not {'+'.join(bad)}")
        start, stop = self.args.get("start", 0.01), self.args.get("stop", 0.2)
        if start >= stop:
            raise ValueError(f"start={start:g} must be below stop={stop:g}")

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        # the step a query's timestep belongs to (a rule's in-between evaluations, Heun's, to the step they
        # are part of), counted over the run's steps as the pipeline counts i over num_inference_steps
        self.descending = [-float(t) for t in ctx.timesteps]
        self.steps = len(ctx.timesteps)

    def on(self, query: Query) -> bool:
        i = max(bisect.bisect_right(self.descending, -float(query.t)) - 1, 0)
        return self.steps * self.args.get("start", 0.01) < i < self.steps * self.args.get("stop", 0.2)


@hookimpl
def diffkit_techniques() -> list[type[Combiner]]:
    return [PAG, SEG, SLG]
