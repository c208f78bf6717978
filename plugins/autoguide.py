"""Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"):
guide the model away from a weaker version of itself instead of from its unconditional estimate."""

from __future__ import annotations

from torch import Tensor

from diffkit.hookspecs import hookimpl
from diffkit.state import Context, Query
from diffkit.params import Param
from diffkit.technique import INTERVAL, Combiner, check_interval, interval_timesteps

WEAK = "autoguide"  # the name the weak model is registered under in ctx.models


def autoguide(eps_weak: Tensor, eps_main: Tensor, scale: float) -> Tensor:
    """``eps = eps_weak + w (eps_main - eps_weak)`` (autoguidance, Karras et al. 2024, eq. 2)."""
    return eps_weak + scale * (eps_main - eps_weak)


def weak_model(ctx: Context, model: str | None):
    """The backend's weak model (``Backend.weak_model``), checked to denoise the same states as the main one."""
    main = ctx.backend
    weak = main.weak_model(model)
    if weak.sample_shape != main.sample_shape:
        raise ValueError(f"model={model} makes {weak.sample_shape} images but the main model "
                         f"{main.sample_shape}: give a model of the same size")
    if not bool((weak.alphas_cumprod == main.alphas_cumprod).all()):
        raise ValueError(f"model={model} was trained with another noise schedule than the main model")
    return weak


class Autoguide(Combiner):
    name = "autoguide"
    help = ("Autoguidance: eps_weak + scale (eps_main - eps_weak), the weak model (smaller, shorter-trained) "
            "conditioned like the main one. One more model call a step; with lo/hi only in that interval.")
    params = (
        Param("scale", float, 2.0, "guidance weight w (1: the main model alone)", range=(-100.0, 100.0)),
        Param("model", str, None, "the weak model: an MNIST checkpoint folder or shipped name (default: "
                                  "mnist-weak) or an IF stage I hub id or folder; another backend's model "
                                  "as that backend takes it", kind="path", offers=("mnist-weak", "mnist-class")),
        *INTERVAL,
    )
    # every backend whose Backend.weak_model gives one (mnist: a shipped weak model; if: a smaller stage I)
    extra_channels = "first"  # IF's variance: the main model's

    def __init__(self, **args):
        super().__init__(**args)
        check_interval(self.args)

    def setup(self, ctx: Context) -> None:
        # IF stage II has no weak counterpart given: it refines stage I's output unguided by a weak model.
        self.active = ctx.stage == 0 and self.args["scale"] != 1
        if not self.active:
            return
        if WEAK not in ctx.models:
            ctx.models[WEAK] = weak_model(ctx, self.args["model"])
        self.t_lo, self.t_hi = interval_timesteps(ctx, self.args)

    def expand(self, query: Query) -> list[Query]:
        if not self.active or not self.t_lo <= query.t <= self.t_hi:
            return [query]
        return [query, query.with_model(WEAK)]

    def reduce(self, query: Query, estimates: list[Tensor]) -> Tensor:
        if len(estimates) == 1:
            return estimates[0]
        main, weak = estimates
        return autoguide(weak, main, self.args["scale"])


@hookimpl
def diffkit_techniques():
    return [Autoguide]
