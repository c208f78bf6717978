"""Visual anagrams (Geng et al. 2024): one image, another prompt seen through a view."""

from __future__ import annotations

import torch
from torch import Tensor

from diffkit import plugins
from diffkit.hookspecs import hookimpl
from diffkit.state import Context, Query
from diffkit.technique import Combiner, Param


class Anagram(Combiner):
    name = "anagram"
    help = ("Average the estimate with other prompts' estimates made on views of the image, mapped back: "
            "eps = mean(eps_1, view_j^-1(eps_j(view_j(x)))); extra channels (IF's variance): mean, "
            "moved back with their pixels, never negated.")
    extra_channels = "mean"
    params = (
        Param("prompt", str, help="another prompt (or class); repeat for more views", multiple=True, default=()),
        Param("view", str, help="view for each extra prompt, in order (default flip_v for the first)", multiple=True,
              default=()),
    )

    def __init__(self, **args):
        super().__init__(**args)
        prompts, names = list(args["prompt"]), list(args["view"])
        if not prompts:
            raise ValueError("give at least one other prompt, e.g. anagram:\"an old man\"")
        if len(names) > len(prompts):
            raise ValueError(f"{len(names)} views for {len(prompts)} prompts")
        if len(names) < len(prompts):
            if len(prompts) - len(names) > 1 or names:
                raise ValueError("with more than one extra prompt, give a view= for each")
            names = ["flip_v"]
        self.views = [plugins.get_view(v) for v in names]
        self.prompts = prompts

    def setup(self, ctx: Context) -> None:
        self.conds = [ctx.encode_all(p) for p in self.prompts]

    def expand(self, query: Query) -> list[Query]:
        # An unconditional query stays unconditional in every view: CFG around or inside commutes.
        return [query] + [query.with_view(v, query.cond if query.cond.is_null else c)
                          for v, c in zip(self.views, self.conds)]

    def reduce(self, query: Query, estimates: list[Tensor]) -> Tensor:
        mapped = [estimates[0]] + [v.inverse(e) for v, e in zip(self.views, estimates[1:])]
        return torch.stack(mapped).mean(0)


@hookimpl
def diffkit_techniques():
    return [Anagram]
