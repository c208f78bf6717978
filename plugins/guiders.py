"""diffusers' output-space guiders as combiners: APG, CFG-Zero*, TCFG, MAG and FDG (issue 38).

Each guider makes the conditional and unconditional branches as ``cfg`` does and combines the model's
own prediction (``Combiner.space = "prediction"``: noise, v, or a flow model's velocity), which is what
diffusers' guider classes are given by its pipelines. The math is diffusers' own functions
(``diffusers.guiders``), called here per step; what diffusers keeps in a guider object (the step index,
APG's momentum) this module keeps per run, per batch and per branch, so a batch equals single runs.

Every guider takes ``cfg``'s interval (``lo``/``hi``: guide only while lo <= t/T <= hi; elsewhere the
conditional prediction alone, one branch), ``rescale`` (diffusers' ``guidance_rescale``, Lin et al. 2024,
eq. 16) and ``original`` (diffusers' ``use_original_formulation``: ``cond + s (cond - uncond)`` instead of
``uncond + s (cond - uncond)``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from diffkit.hookspecs import hookimpl
from diffkit.params import Param, to_bool
from diffkit.state import Context, Query
from diffkit.technique import INTERVAL, Combiner
from diffkit_plugins.cfg import CFG

COMMON = (
    Param("rescale", float, 0.0, "diffusers' guidance_rescale: blend toward the conditional prediction's "
                                 "standard deviation (Lin et al. 2024); 0: off", range=(0.0, 1.0)),
    Param("original", to_bool, False, "diffusers' use_original_formulation: cond + scale (cond - uncond) "
                                      "instead of uncond + scale (cond - uncond)"),
    *INTERVAL,
)


class Guider(CFG):
    """The cond/uncond pair as ``cfg`` makes it (its interval, its null label, its kept conditional
    variance), combined in the model's prediction by :meth:`guide`."""

    space = "prediction"

    def trivial(self) -> bool:
        """A scale at which the guider is the conditional prediction (diffusers' ``is_close``)."""
        return math.isclose(self.args["scale"], 0.0 if self.args["original"] else 1.0)

    def guided(self, query: Query) -> bool:
        return not (self.trivial() or query.cond.is_null or not self.t_lo <= query.t <= self.t_hi)

    def expand(self, query: Query) -> list[Query]:
        return [query, query.with_cond(self.null)] if self.guided(query) else [query]

    def reduce(self, query: Query, estimates: list[Tensor]) -> Tensor:
        if len(estimates) == 1:
            return estimates[0]
        cond, uncond = estimates
        pred = self.guide(query, cond, uncond)
        if self.args["rescale"] > 0:
            from diffusers.guiders.guider_utils import rescale_noise_cfg

            pred = rescale_noise_cfg(pred, cond, self.args["rescale"])
        return pred

    def guide(self, query: Query, cond: Tensor, uncond: Tensor) -> Tensor:
        raise NotImplementedError

    def branch(self, query: Query) -> tuple:
        """A branch's identity across steps (its model, views and labels: not its timestep)."""
        return (query.model, query.view, query.cond.key)


class APG(Guider):
    name = "apg"
    help = ("Adaptive projected guidance (Sadat et al. 2024): the guidance update split into its parts parallel "
            "and orthogonal to the conditional prediction, the parallel part scaled by eta, the update's norm "
            "capped, optionally a running sum with momentum; diffusers' AdaptiveProjectedGuidance.")
    params = (
        Param("scale", float, 7.5, "guidance scale", range=(-100.0, 100.0)),
        Param("eta", float, 1.0, "weight of the update's part parallel to the conditional prediction "
                                 "(0: orthogonal only, the paper's choice)", range=(0.0, 10.0)),
        Param("threshold", float, 15.0, "cap on the update's norm per sample (diffusers' "
                                        "adaptive_projected_guidance_rescale); 0: no cap", range=(0.0, 1e6)),
        Param("momentum", float, None, "running sum of updates, each earlier one times this (the paper's -0.5); "
                                       "unset: none", range=(-1.0, 1.0)),
        *COMMON,
    )

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        # the momentum buffers, one a branch: fresh for each batch, so a batch equals single runs
        self.state: dict[tuple, Any] = {}

    def guide(self, query: Query, cond: Tensor, uncond: Tensor) -> Tensor:
        from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

        buffer = None
        if self.args.get("momentum") is not None:
            buffer = self.state.setdefault(self.branch(query), MomentumBuffer(self.args["momentum"]))
        return normalized_guidance(cond, uncond, self.args["scale"], buffer, self.args["eta"],
                                   self.args["threshold"], self.args["original"])


class CFGZeroStar(Guider):
    name = "cfg_zero_star"
    help = ("CFG-Zero* (Fan et al. 2025): the unconditional prediction scaled by its optimal projection "
            "<cond, uncond> / |uncond|^2 before CFG, and zero prediction for the first steps; diffusers' "
            "ClassifierFreeZeroStarGuidance. Made for flow models.")
    params = (
        Param("scale", float, 7.5, "guidance scale", range=(-100.0, 100.0)),
        Param("zero_steps", int, 1, "first steps whose prediction is zero (diffusers' zero_init_steps; the "
                                    "paper: the first 4%)", range=(0, 10000)),
        *COMMON,
    )

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        # the step a query's timestep is, counted from where the run starts (an SDEdit's later start is step
        # 0, as diffusers' img2img pipelines count their guider's steps; ctx.i_start is final by the first step)
        self.step_of = {float(t): i for i, t in enumerate(ctx.timesteps)}
        self.ctx = ctx

    def expand(self, query: Query) -> list[Query]:
        if self.zeroed(query):
            return [query]  # the prediction is zero: nothing to evaluate it from but the shape
        return super().expand(query)

    def zeroed(self, query: Query) -> bool:
        step = self.step_of.get(float(query.t), len(self.step_of)) - self.ctx.i_start
        return step < self.args["zero_steps"]

    def reduce(self, query: Query, estimates: list[Tensor]) -> Tensor:
        if self.zeroed(query):
            # zero, not rescaled: diffusers rescales the zeros too, dividing by their standard deviation,
            # 0, which makes NaN (tests/test_guiders.py shows it); with rescale=0 the two agree
            return torch.zeros_like(estimates[0])
        return super().reduce(query, estimates)

    def guide(self, query: Query, cond: Tensor, uncond: Tensor) -> Tensor:
        from diffusers.guiders.classifier_free_zero_star_guidance import cfg_zero_star_scale

        alpha = cfg_zero_star_scale(cond.flatten(1), uncond.flatten(1)).view(-1, *(1,) * (cond.dim() - 1))
        uncond = uncond * alpha
        base = cond if self.args["original"] else uncond
        return base + self.args["scale"] * (cond - uncond)


class TCFG(Guider):
    name = "tcfg"
    help = ("Tangential CFG (Kwon et al. 2025): the unconditional prediction projected on the first singular "
            "vector of [cond, uncond] before CFG; diffusers' TangentialClassifierFreeGuidance.")
    params = (Param("scale", float, 7.5, "guidance scale", range=(-100.0, 100.0)), *COMMON)

    def guide(self, query: Query, cond: Tensor, uncond: Tensor) -> Tensor:
        from diffusers.guiders.tangential_classifier_free_guidance import normalized_guidance

        return normalized_guidance(cond, uncond, self.args["scale"], self.args["original"])


class MAG(Guider):
    name = "mag"
    help = ("Magnitude-aware guidance (MAMBO): the scale lowered where the guidance update is large against the "
            "unconditional prediction, 1 + (s - 1) exp(-alpha |cond - uncond| / |uncond|) per sample; diffusers' "
            "MagnitudeAwareGuidance.")
    params = (
        Param("scale", float, 10.0, "guidance scale", range=(-100.0, 100.0)),
        Param("alpha", float, 8.0, "how fast a large update lowers the scale", range=(0.0, 1000.0)),
        *COMMON,
    )

    def guide(self, query: Query, cond: Tensor, uncond: Tensor) -> Tensor:
        return mambo(cond, uncond, self.args["scale"], self.args["alpha"], self.args["original"])


def level_list(text: Any, what: str) -> list[float]:
    """``"10+5"`` -> ``[10.0, 5.0]`` (one number a pyramid level, the ``+`` list factorize's parts use)."""
    try:
        values = [float(v) for v in str(text).split("+")]
    except ValueError:
        raise ValueError(f"{what}={text!r}: give numbers joined by +, one a pyramid level (10+5)") from None
    if not all(math.isfinite(v) and abs(v) <= 100 for v in values):
        raise ValueError(f"{what}={text!r}: each must be a finite number in -100..100")
    return values


class FDG(Guider):
    name = "fdg"
    help = ("Frequency-decoupled guidance (Sadat et al. 2025): CFG applied per level of a Laplacian pyramid of the "
            "prediction, a scale for each (high frequencies first), optionally the update's part parallel to the "
            "conditional prediction weighted per level; diffusers' FrequencyDecoupledGuidance's (needs kornia).")
    params = (
        Param("scales", str, "10+5", "guidance scale per pyramid level, finest (high frequencies) first, joined "
                                     "by +; as many levels as scales"),
        Param("parallel", str, None, "weight of the update's part parallel to the conditional prediction per level, "
                                     "joined by + (unset: 1 at every level, plain CFG at each)"),
        *COMMON,
    )

    def __init__(self, **args):
        super().__init__(**args)
        self.scales = level_list(self.args.get("scales", "10+5"), "scales")
        parallel = self.args.get("parallel")
        self.parallel = None if parallel is None else level_list(parallel, "parallel")
        if self.parallel is not None and len(self.parallel) != len(self.scales):
            raise ValueError(f"parallel={parallel!r} gives {len(self.parallel)} weights for {len(self.scales)} levels "
                             f"(scales={self.args.get('scales', '10+5')!r}): give one a level")
        from diffusers import utils

        if not utils.is_kornia_available():  # kornia builds diffusers' pyramid; refused before any model loads
            raise ValueError("fdg needs kornia for its Laplacian pyramid: pip install kornia")

    def trivial(self) -> bool:
        return all(math.isclose(s, 0.0 if self.args["original"] else 1.0) for s in self.scales)

    def guide(self, query: Query, cond: Tensor, uncond: Tensor) -> Tensor:
        """``FrequencyDecoupledGuidance.forward``'s loop over the levels, with diffusers' own pyramid, projection
        and reconstruction. By hand: diffusers' loop fails on a level whose scale is 1 (0 with ``original``),
        which it leaves unguided with a variable only its guided branch sets (UnboundLocalError at the first
        level, another level's tensor later); such a level is its conditional prediction here, as intended.
        And it returns a padded prediction for a side that is not a power of two (below)."""
        from diffusers.guiders.frequency_decoupled_guidance import (build_image_from_pyramid,
                                                                    build_laplacian_pyramid_func, project)

        original = self.args["original"]
        levels = len(self.scales)
        guided = []
        weights = self.parallel or [1.0] * levels
        for c, u, scale, weight in zip(build_laplacian_pyramid_func(cond, levels),
                                       build_laplacian_pyramid_func(uncond, levels), self.scales, weights):
            if math.isclose(scale, 0.0 if original else 1.0):
                guided.append(c)
                continue
            shift = c - u
            if not math.isclose(weight, 1.0):
                parallel, orthogonal = project(shift, c, True)
                shift = weight * parallel + orthogonal
            guided.append((c if original else u) + scale * shift)
        # kornia pads a side that is not a power of two (at its end, by reflection) before building the
        # pyramid, so the rebuilt image is the padded one: its top-left corner is the prediction (diffusers
        # returns it padded, which no scheduler takes: MNIST's 28 x 28, SDXL's 1024 x 768 latents)
        return build_image_from_pyramid(guided)[..., : cond.shape[-2], : cond.shape[-1]]


def mambo(cond: Tensor, uncond: Tensor, scale: float, alpha: float, original: bool) -> Tensor:
    """diffusers' ``mambo_guidance`` (magnitude_aware_guidance.py), by hand: it takes the norms with
    ``torch.norm(x, dim=[1, ..., n])``, which torch refuses for more than two dims (a ``[N x C x H x W]``
    prediction; it works on Flux's packed ``[N x L x D]``, where tests/test_guiders.py checks this equals
    it). The per-sample norm over every element is the same Frobenius norm."""
    diff = cond - uncond
    ratio = diff.flatten(1).norm(dim=1) / uncond.flatten(1).norm(dim=1)
    ratio = ratio.view(-1, *(1,) * (cond.dim() - 1))
    final = scale * torch.exp(-alpha * ratio) if original else 1.0 + (scale - 1.0) * torch.exp(-alpha * ratio)
    return (cond if original else uncond) + final * diff


@hookimpl
def diffkit_techniques() -> list[type[Combiner]]:
    return [APG, CFGZeroStar, TCFG, MAG, FDG]
