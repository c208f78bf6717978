"""Guidance in a limited interval (Kynkaanniemi et al. 2024): CFG only for t_min <= t <= t_max.

Guiding only the middle of the chain keeps the variety that early guidance removes and avoids the
over-saturation late guidance causes. Outside the interval the step costs one branch, not two.
"""

from __future__ import annotations

from diffkit.hookspecs import hookimpl
from diffkit.technique import Combiner, Param


class IntervalGuidance(Combiner):
    name = "interval_cfg"
    extra_channels = "first"  # the conditional branch's variance, as cfg
    help = "CFG with scale g only while t_min <= t <= t_max; the plain conditional estimate elsewhere."
    params = (
        Param("scale", float, 7.0, "guidance scale inside the interval", range=(-100.0, 100.0)),
        Param("t_min", int, 0, "lowest guided timestep", range=(0, 10**9)),
        Param("t_max", int, 10**9, "highest guided timestep", range=(0, 10**9)),
    )

    def setup(self, ctx):
        self.null = ctx.null

    def active(self, t: int) -> bool:
        return self.args["t_min"] <= t <= self.args["t_max"]

    def expand(self, query):
        if query.cond.is_null or not self.active(query.t):
            return [query]
        return [query, query.with_cond(self.null)]

    def reduce(self, query, estimates):
        if len(estimates) == 1:
            return estimates[0]
        c, u = estimates  # noise channels only: diffkit keeps the variance by extra_channels
        return u + self.args["scale"] * (c - u)


@hookimpl
def diffkit_techniques():
    return [IntervalGuidance]
