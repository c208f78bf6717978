"""Classifier-free guidance (Ho & Salimans 2022)."""

from __future__ import annotations

from torch import Tensor

from diffkit.hookspecs import hookimpl
from diffkit.state import Context, Query
from diffkit.technique import Combiner, Param


def guide(eps_u: Tensor, eps_c: Tensor, scale: float) -> Tensor:
    """``eps = eps_u + g (eps_c - eps_u)`` (CFG eq. 6)."""
    return eps_u + scale * (eps_c - eps_u)


class CFG(Combiner):
    name = "cfg"
    extra_channels = "first"  # the conditional branch's variance, as diffusers' IF pipelines keep it
    help = "Classifier-free guidance: eps_u + scale (eps_c - eps_u); keeps the conditional variance."
    params = (Param("scale", float, 7.0, "guidance scale g (1: no guidance, 0: unconditional)", range=(-100.0, 100.0)),)

    def setup(self, ctx: Context) -> None:
        if not ctx.backend.conditional:
            raise ValueError(f"backend {ctx.backend.name!r} is unconditional: there is nothing to guide")
        self.null = ctx.null

    def expand(self, query: Query) -> list[Query]:
        # Scale 1 is the conditional estimate, and an unconditional query guides to itself.
        if self.args["scale"] == 1 or query.cond.is_null:
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
