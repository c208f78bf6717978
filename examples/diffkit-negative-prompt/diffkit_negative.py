"""Negative prompts: guide away from a prompt you do not want rather than from the empty prompt.

``eps = eps_neg + g (eps_c - eps_neg)``: classifier-free guidance whose unconditional branch is the
negative prompt's estimate, as diffusers' ``negative_prompt=`` does. A third-party diffkit plugin.
"""

from __future__ import annotations

from diffkit.hookspecs import hookimpl
from diffkit.params import Param
from diffkit.technique import Combiner


class Negative(Combiner):
    name = "negative"
    help = "Guide away from a negative prompt: eps_neg + scale (eps_c - eps_neg)."
    params = (
        Param("prompt", str, help="what to avoid (a prompt, or a class on MNIST)"),
        Param("scale", float, 7.0, "guidance scale (1: the prompt's own estimate)", range=(-100.0, 100.0)),
    )
    extra_channels = "first"  # IF's variance: the conditional branch's, as cfg keeps it

    def setup(self, ctx):
        if not ctx.backend.conditional:
            raise ValueError(f"backend {ctx.backend.name!r} is unconditional: there is no prompt to avoid")
        self.negative = ctx.encode_all(self.args["prompt"])

    def expand(self, query):
        # An unconditional query stays unconditional, so this commutes with cfg and the anagram views.
        if query.cond.is_null or self.args["scale"] == 1:
            return [query]
        return [query, query.with_cond(self.negative)]

    def reduce(self, query, estimates):  # noise channels only; diffkit keeps the variance by extra_channels
        if len(estimates) == 1:
            return estimates[0]
        c, n = estimates
        return n + self.args["scale"] * (c - n)


@hookimpl
def diffkit_techniques():
    return [Negative]
