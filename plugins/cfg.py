"""Classifier-free guidance (Ho & Salimans 2022), optionally only in an interval of noise levels
(Kynkaanniemi et al. 2024, "Applying guidance in a limited interval improves sample and distribution
quality")."""

from __future__ import annotations

from torch import Tensor

from diffkit.hookspecs import hookimpl
from diffkit.state import Context, Query
from diffkit.params import Param
from diffkit.technique import INTERVAL, Combiner, check_interval, interval_timesteps


def guide(eps_u: Tensor, eps_c: Tensor, scale: float) -> Tensor:
    """``eps = eps_u + g (eps_c - eps_u)`` (CFG eq. 6)."""
    return eps_u + scale * (eps_c - eps_u)


class CFG(Combiner):
    name = "cfg"
    help = ("Classifier-free guidance: eps_u + scale (eps_c - eps_u); keeps the conditional variance. With lo/hi, "
            "only while lo <= t/T <= hi: elsewhere the conditional estimate alone, and no unconditional call.")
    params = (
        Param("scale", float, 7.0, "guidance scale g (1: no guidance, 0: unconditional)", range=(-100.0, 100.0)),
        *INTERVAL,
    )
    extra_channels = "first"  # the conditional branch's variance, as diffusers' IF pipelines keep it
    guidance = True  # its first branch is the conditional one: pag, seg and slg right after it join it

    def __init__(self, **args):
        super().__init__(**args)
        check_interval(self.args)

    def setup(self, ctx: Context) -> None:
        if not ctx.backend.conditional:
            raise ValueError(f"backend {ctx.backend.name!r} is unconditional: there is nothing to guide")
        self.null = ctx.null
        self.t_lo, self.t_hi = interval_timesteps(ctx, self.args)

    def expand(self, query: Query) -> list[Query]:
        # Scale 1 is the conditional estimate, an unconditional query guides to itself, and outside the
        # interval the step costs one branch, not two.
        if self.args["scale"] == 1 or query.cond.is_null or not self.t_lo <= query.t <= self.t_hi:
            return [query]
        return [query, query.with_cond(self.null)]

    def reduce(self, query: Query, estimates: list[Tensor]) -> Tensor:
        if len(estimates) == 1:
            return estimates[0]
        c, u = estimates
        return guide(u, c, self.args["scale"])


@hookimpl
def diffkit_techniques() -> list[type[Combiner]]:
    return [CFG]
