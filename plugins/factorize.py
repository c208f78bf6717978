"""Factorized diffusion (Geng, Park, Owens, ECCV 2024): the estimate as a sum of components, each a filter
of one prompt's estimate, the filters summing to the identity (the release's ``--reduction sum``); and
its inverse-problem mode, one component taken from a real image instead of a prompt."""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from diffkit import factors, registry
from diffkit.hookspecs import hookimpl
from diffkit.motion import Clip, on_white, smooth, warp
from diffkit.syntax import format_spec
from diffkit.state import Context, Query, Step
from diffkit.params import REQUIRED, Param
from diffkit.technique import Combiner, Projector


def parse_parts(text: str) -> list[str]:
    """``low_pass+high_pass`` -> the part specs; a ``+`` not before a name (``scale:+3``) is a sign."""
    return [p.strip() for p in re.split(r"\+(?=\s*[A-Za-z_])", text) if p.strip()]


def make_parts(text: str) -> list[tuple[factors.Factor, dict]]:
    return [registry.get_factor(p) for p in parse_parts(text)]


def spelled(parts: list[tuple[factors.Factor, dict]]) -> str:
    """The parts with every argument written out: what run.json records."""
    return "+".join(format_spec(f.name, list(args.items())) for f, args in parts)


def check_parts(ctx: Context, parts: list[tuple[factors.Factor, dict]], factor: float) -> None:
    """Refuse, before any step, a part the backend's images cannot take (colour on one channel, a kernel
    too large for the stage)."""
    C, H, W = ctx.backend.sample_shape
    for f, args in parts:
        if f.channels and ctx.eps_channels != f.channels:
            raise ValueError(f"part {f.name!r} needs {f.channels}-channel images; backend {ctx.backend.name!r} "
                             f"makes {ctx.eps_channels}-channel ones")
        try:
            f(torch.zeros(1, ctx.eps_channels, H, W, dtype=torch.float64), factor, args)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"part {f.name!r} cannot act on this stage's {H}x{W} images: {e}") from None


def check_identity(ctx: Context, parts: list[tuple[factors.Factor, dict]], factor: float) -> None:
    """Refuse parts that do not sum to the identity at this stage's size: factorized diffusion's estimate
    is the sum of the parts, so parts that miss some of the image (or count it twice) scale the noise
    estimate away from the model's and the run ends in saturated noise. Checked on one random image in
    float64, where a true decomposition is exact to ~1e-15 (a few roundings per pixel of a <= 1023-tap
    blur); 1e-6 leaves room for any such rounding and is far below what a wrong part misses (0.1 or more)."""
    C, H, W = ctx.eps_channels, *ctx.backend.sample_shape[1:]
    e = torch.randn(1, C, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    total = sum(f(e, factor, args) for f, args in parts)
    off = (total - e).abs().max().item()
    if off > 1e-6 * e.abs().max().item():
        raise ValueError(f"parts={spelled(parts)} do not add up to the image at this stage's {H}x{W} size (off by "
                         f"up to {off:.3g} on a unit-variance image): each part must be another's complement, e.g. "
                         "low_pass+high_pass with the same sigma and kernel, or scale weights summing to 1")


# ---- animation (diffkit animate): how a factorized image shows each of its prompts ----

COARSE = {"low_pass", "triple_low_pass", "grayscale", "motion"}  # what shows from afar, in grey, shaken


def factor_clip(parts: list[str], prompts: list[str], image: Tensor) -> Clip:
    """Colour hybrids fade colour in from grey; motion hybrids shake; the others zoom out, as the
    release animates them, captioned with the prompt each end shows (``prompts``: one a part)."""
    c, h, w = image.shape
    names = [p.split(":")[0] for p in parts]
    coarse = next((q for n, q in zip(names, prompts) if n in COARSE), prompts[0])
    fine = next((q for n, q in zip(names, prompts) if n not in COARSE), prompts[-1])
    if {"grayscale", "color"} & set(names) and c == 3:
        gray = image.mean(0, keepdim=True).expand_as(image)

        def frame(t: float) -> Tensor:
            return (1 - smooth(t)) * gray + smooth(t) * image
        return Clip("factorize", frame, (coarse, fine), canvas=1.0)
    if {"motion", "motion_res"} & set(names):
        amp = max(1.0, 29 * h / 256 / 2)

        def frame(t: float) -> Tensor:  # still, then shaken along the blur's diagonal (a triangle wave)
            off = amp * 2 / math.pi * math.asin(math.sin(2 * math.pi * 3 * t)) if 0 < t < 1 else 0.0
            return on_white([warp(image, torch.eye(2, dtype=torch.float64), (off, off))], c, h)
        return Clip("factorize", frame, (fine, coarse), canvas=1.5)

    def frame(t: float) -> Tensor:  # up close, then far away
        scale = 1 / (1 + 7 * smooth(t))
        return on_white([warp(image, torch.eye(2, dtype=torch.float64) * scale)], c, h)
    return Clip("factorize", frame, (fine, coarse), canvas=1.5)


class Factorize(Combiner):
    name = "factorize"
    help = ("Factorized diffusion: eps = part_1(eps_1) + part_2(eps_2) + ..., part i a filter of prompt i's "
            "estimate (the first the sample's own), the parts summing to the identity: hybrid images "
            "(low_pass+high_pass), three bands, grayscale+color, motion+motion_res, weighted prompts (scale).")
    params = (
        Param("prompt", str, help="the prompt (or class) of each part after the first", multiple=True, default=()),
        Param("parts", str, REQUIRED, "one part a prompt, joined by +: low_pass, high_pass, triple_low_pass, "
                                      "triple_medium_pass, triple_high_pass, grayscale, color, motion, "
                                      "motion_res, scale:WEIGHT; arguments as low_pass:sigma=1,kernel=9 (quoted)"),
    )
    extra_channels = "mean"  # IF's variance: the mean of the branches'

    def __init__(self, **args):
        super().__init__(**args)
        self.parts = make_parts(args["parts"])
        n = 1 + len(args["prompt"])
        if len(self.parts) != n:
            raise ValueError(f"parts={args['parts']} names {len(self.parts)} part(s) for {n} prompt(s) (the "
                             f"sample's own and {n - 1} more): give one part a prompt")
        self.args["parts"] = spelled(self.parts)

    def setup(self, ctx: Context) -> None:
        self.conds = [ctx.encode_all(p) for p in self.args["prompt"]]
        self.factor = ctx.size_factor
        check_parts(ctx, self.parts, self.factor)
        check_identity(ctx, self.parts, self.factor)

    def expand(self, query: Query) -> list[Query]:
        # An unconditional query stays unconditional in every part: the parts then sum to the plain
        # unconditional estimate (times the weights' sum), so CFG around it is CFG of each part.
        return [query] + [query if query.cond.is_null else query.with_cond(c) for c in self.conds]

    def reduce(self, query: Query, estimates: list[Tensor]) -> Tensor:
        return sum(f(e, self.factor, args) for (f, args), e in zip(self.parts, estimates))

    animates = True

    def clip_names(self) -> list[str]:
        return ["factorize"]

    def clips(self, image: Tensor, label: str) -> list[Clip]:
        return [factor_clip([f.name for f, _ in self.parts], [label, *map(str, self.args["prompt"])], image)]


class Reference(Projector):
    name = "reference"
    help = ("Factorized diffusion's inverse problem: one component from a real image. After every step "
            "x = x - part(x) + part(forward(image, t')): e.g. a photo's low frequencies, the prompt's high ones.")
    params = (
        Param("image", str, help="the reference image (any size and mode; cropped and resized)", kind="image"),
        Param("part", str, "low_pass", "the component taken from the image (a factor, with arguments quoted: "
                                       "\"low_pass:sigma=3\")"),
    )

    def __init__(self, **args):
        super().__init__(**args)
        self.parts = make_parts(args["part"])
        if len(self.parts) != 1:
            raise ValueError(f"part={args['part']} names {len(self.parts)} parts: give one")
        self.args["part"] = spelled(self.parts)

    def setup(self, ctx: Context) -> None:
        self.x_ref = ctx.load_image(self.args["image"], "image")
        self.factor, self.eps_channels = ctx.size_factor, ctx.eps_channels
        check_parts(ctx, self.parts, self.factor)

    def component(self, x: Tensor) -> Tensor:
        """The part of the noise channels of ``x``; other channels are left out (zero)."""
        (f, args), c = self.parts[0], self.eps_channels
        out = torch.zeros_like(x)
        out[:, :c] = f(x[:, :c], self.factor, args)
        return out

    @hookimpl
    def diffkit_after_step(self, ctx: Context, step: Step) -> None:
        ref = self.x_ref if step.t_next < 0 else ctx.forward(self.x_ref, step.t_next, stream="reference")
        step.x = step.x - self.component(step.x) + self.component(ref.expand_as(step.x))


@hookimpl
def diffkit_techniques():
    return [Factorize, Reference]


@hookimpl
def diffkit_factors():
    return list(factors.BUILTIN)
