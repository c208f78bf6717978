"""Factorized-diffusion hybrid images: low frequencies from one prompt, high from another."""

from __future__ import annotations

from torch import Tensor

from diffkit.filters import gaussian_kernel, highpass, lowpass, scaled_kernel  # noqa: F401 - also this plugin's API
from diffkit.hookspecs import hookimpl
from diffkit.motion import Clip
from diffkit.state import Context, Query
from diffkit.params import Param, to_bool
from diffkit.technique import Combiner


class Hybrid(Combiner):
    name = "hybrid"
    help = ("eps = lowpass(eps_1) + highpass(eps_2): the image reads as prompt 1 from afar, prompt 2 up close. "
            "Filters the noise only; extra channels (IF's variance): mean of the two.")
    params = (
        Param("prompt", str, help="the high-frequency prompt (or class)"),
        Param("kernel", int, 33, "Gaussian kernel size (odd), in pixels of the first stage", range=(1, 1023)),
        Param("sigma", float, 2.0, "Gaussian standard deviation, in pixels of the first stage", range=(0.01, 1000.0)),
        Param("fixed", to_bool, False, "true: kernel and sigma in pixels of every stage (default: later "
                                       "stages scale them with their size, IF II x4, so the cut stays put)"),
    )
    extra_channels = "mean"

    def __init__(self, **args):
        super().__init__(**args)
        if args["kernel"] < 1 or args["kernel"] % 2 == 0:
            raise ValueError(f"kernel must be a positive odd integer, got {args['kernel']}")
        if not args["sigma"] > 0:
            raise ValueError(f"sigma must be positive, got {args['sigma']}")

    animates = True

    def clip_names(self) -> list[str]:
        return ["factorize"]

    def clips(self, image: Tensor, label: str) -> list[Clip]:
        """Zooming out: up close the high frequencies' prompt, from afar the sample's own."""
        from diffkit_plugins.factorize import factor_clip

        return [factor_clip(["low_pass", "high_pass"], [label, str(self.args["prompt"])], image)]

    def setup(self, ctx: Context) -> None:
        self.cond = ctx.encode_all(self.args["prompt"])
        factor = 1.0 if self.args["fixed"] else ctx.size_factor
        self.kernel, self.sigma = scaled_kernel(self.args["kernel"], self.args["sigma"], factor)
        H, W = ctx.backend.sample_shape[1:]
        if self.kernel // 2 >= min(H, W):
            raise ValueError(f"kernel {self.kernel} (kernel={self.args['kernel']} scaled x{factor:g} for this "
                             f"stage) is too large for {H}x{W} images: give a smaller kernel")

    def expand(self, query: Query) -> list[Query]:
        return [query, query if query.cond.is_null else query.with_cond(self.cond)]

    def reduce(self, query: Query, estimates: list[Tensor]) -> Tensor:
        e1, e2 = estimates
        return lowpass(e1, self.kernel, self.sigma) + highpass(e2, self.kernel, self.sigma)


@hookimpl
def diffkit_techniques():
    return [Hybrid]
