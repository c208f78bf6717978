"""Visual anagrams (Geng et al. 2024): one image, another prompt seen through a view."""

from __future__ import annotations

import torch
from torch import Tensor

from diffkit import registry
from diffkit.hookspecs import hookimpl
from diffkit.motion import Clip
from diffkit.state import Context, Query
from diffkit.params import Param
from diffkit.technique import Combiner


class Anagram(Combiner):
    name = "anagram"
    help = ("Average the estimate with other prompts' estimates made on views of the image, mapped back: "
            "eps = mean(eps_1, view_j^-1(eps_j(view_j(x)))); extra channels (IF's variance): mean, "
            "moved back with their pixels, never negated.")
    extra_channels = "mean"
    params = (
        Param("prompt", str, help="another prompt (or class); repeat for more views", multiple=True, default=()),
        Param("view", str, help="view for each extra prompt, in order (default flip_v for the first): a name "
                                "(`diffkit hooks` lists them) or a kind with arguments, quoted: "
                                "view=\"patch_permute:16,seed=3\"", multiple=True, default=()),
        Param("reduction", str, "mean", "how the branches combine: mean (every step, every view) or alternate "
                                        "(step i: only branch i mod n), the release's two", choices=("mean", "alternate")),
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
        self.views = [registry.get_view(v) for v in names]
        self.args["view"] = [v.name for v in self.views]  # every argument spelled out: run.json re-makes them
        self.prompts = prompts

    def input_files(self) -> list[str]:
        return super().input_files() + [f for v in self.views for f in v.files]

    def setup(self, ctx: Context) -> None:
        self.conds = [ctx.encode_all(p) for p in self.prompts]
        for v in self.views:  # a view that cannot take this stage's size is refused before any step
            v.forward(torch.zeros(1, *ctx.backend.sample_shape, dtype=torch.float64))
        # reduction=alternate: a query's step is the index of its timestep in the stage's walk
        self.step_of = {float(t): i for i, t in enumerate(ctx.timesteps)}

    animates = True

    def clip_names(self) -> list[str]:
        return [f"view{j}" for j in range(1, len(self.views) + 1)]

    def clips(self, image: Tensor, label: str) -> list[Clip]:
        """Each view's clip: the sample moving into the view as the view declares its motion, captioned
        with the sample's own prompt, then the view's."""
        return [Clip(f"view{j}", view.move(image), (label, str(prompt)))
                for j, (view, prompt) in enumerate(zip(self.views, self.prompts), 1)]

    def view_images(self, image: Tensor) -> list[tuple[str, Tensor]]:
        return [(f"view{j}", view.image(image)) for j, view in enumerate(self.views, 1)]

    illusion = True

    def illusion_views(self, image: Tensor) -> list[tuple[str, Tensor, str]]:
        return [(f"view{j}", view.image(image), str(prompt))
                for j, (view, prompt) in enumerate(zip(self.views, self.prompts), 1)]

    def _branch(self, t: float) -> int:
        """The one branch an alternating step uses: the release's ``i % num_prompts``."""
        i = self.step_of.get(float(t))
        if i is None:  # an evaluation between the walk's timesteps: the nearest step's
            i = min(self.step_of.items(), key=lambda kv: abs(kv[0] - float(t)))[1]
        return i % (1 + len(self.views))

    def expand(self, query: Query) -> list[Query]:
        # An unconditional query stays unconditional in every view: CFG around or inside commutes.
        def branch(j: int) -> Query:
            if j == 0:
                return query
            return query.with_view(self.views[j - 1], query.cond if query.cond.is_null else self.conds[j - 1])

        if self.args["reduction"] == "alternate":
            return [branch(self._branch(query.t))]  # only the view this step uses is made and evaluated
        return [branch(j) for j in range(1 + len(self.views))]

    def reduce(self, query: Query, estimates: list[Tensor]) -> Tensor:
        if self.args["reduction"] == "alternate":
            b = self._branch(query.t)
            return estimates[0] if b == 0 else self.views[b - 1].inverse(estimates[0])
        mapped = [estimates[0]] + [v.inverse(e) for v, e in zip(self.views, estimates[1:])]
        return torch.stack(mapped).mean(0)


@hookimpl
def diffkit_techniques():
    return [Anagram]
