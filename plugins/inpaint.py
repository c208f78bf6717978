"""Inpainting by replacement (RePaint, Lugmayr et al. 2022), with optional resampling."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from diffkit.hookspecs import hookimpl
from diffkit.io import load_image
from diffkit.state import Context, Step
from diffkit.params import Param
from diffkit.technique import Projector


class Inpaint(Projector):
    name = "inpaint"
    help = ("After every step keep the known region: x = m x + (1 - m) forward(x_orig, t'); "
            "mask white = make new.")
    params = (
        Param("image", str, help="the original image (any size and mode; cropped and resized)", kind="image"),
        Param("mask", str, help="mask image, same size as image: white = generate, black = keep", kind="mask"),
        Param("resample", int, 1, "RePaint: times each jump is sampled (1 = plain replacement)",
              range=(1, 1000)),
        Param("jump", int, 1, "RePaint: steps to go back before each resampling", range=(1, 100_000)),
        Param("noise", str, "fresh", "the known region's noise at each step: fresh (RePaint: a new draw every "
                                     "step) or initial (the run's initial noise every step, as diffusers' "
                                     "StableDiffusionInpaintPipeline blends latents)", choices=("fresh", "initial")),
    )

    def __init__(self, **args):
        super().__init__(**args)
        if args["resample"] < 1 or args["jump"] < 1:
            raise ValueError("resample and jump must be at least 1")
        self.steps_again = f"resample={args['resample']}" if args["resample"] > 1 else ""

    def setup(self, ctx: Context) -> None:
        image, mask = self.args["image"], self.args["mask"]
        if not isinstance(mask, Tensor) and not isinstance(image, Tensor):
            from PIL import Image

            with Image.open(image) as a, Image.open(mask) as b:
                if a.size != b.size:
                    raise ValueError(f"mask {mask} is {b.size[0]}x{b.size[1]} but image {image} is "
                                     f"{a.size[0]}x{a.size[1]}: they must match")
        self.x_orig = ctx.load_image(image, "image")
        C, H, W = ctx.backend.sample_shape
        IH, IW = ctx.backend.image_shape[1:]
        if isinstance(mask, Tensor):
            m = mask.float()
            while m.dim() < 4:
                m = m[None]
            if tuple(m.shape[-2:]) not in ((H, W), (IH, IW)) or m.shape[1] != 1:
                sizes = f"{H} x {W}" + (f" (the state's grid) or {IH} x {IW} (the image's)" if (H, W) != (IH, IW) else "")
                raise ValueError(f"mask tensor has shape {tuple(mask.shape)}, needs [1 x H x W] or [H x W] with H x W "
                                 f"{sizes}")
        else:
            m = load_image(mask, (IH, IW), 1)[None]  # the image's size (a latent model's: its decoder's)
        m = (m > 0.5).float()
        if tuple(m.shape[-2:]) != (H, W):
            # a latent model: binarized at the image's size, then to the latent grid by nearest neighbour, as
            # diffusers' inpaint pipelines make their mask (mask_processor, then prepare_mask_latents)
            m = F.interpolate(m, size=(H, W))
        self.mask = m.to(ctx.backend.device, ctx.backend.dtype)  # [1|N x 1 x H x W]

    def known(self, ctx: Context, t: int | float) -> Tensor:
        """The original noised to the run's noise level at ``t`` (the original itself after the last step)."""
        if t < 0:
            return self.x_orig
        if self.args["noise"] == "initial":
            return ctx.forward(self.x_orig, t, eps=ctx.noise)
        return ctx.forward(self.x_orig, t, stream="inpaint")

    def paste(self, ctx: Context, x: Tensor, t: int) -> Tensor:
        return self.mask * x + (1 - self.mask) * self.known(ctx, t)

    @hookimpl
    def diffkit_after_step(self, ctx: Context, step: Step) -> None:
        step.x = self.paste(ctx, step.x, step.t_next)
        r, j = self.args["resample"], self.args["jump"]
        if r == 1 or step.t_next < 0 or (step.i + 1) % j:
            return
        ts = ctx.timesteps
        lo = max(ctx.i_start, step.i + 1 - j)  # go back to ts[lo], then step forward to t_next again
        for _ in range(r - 1):
            ratio = ctx.abar(ts[lo]) / ctx.abar(step.t_next)
            x = math.sqrt(ratio) * step.x + math.sqrt(1 - ratio) * ctx.randn(stream="inpaint")  # q(x_hi | x_lo)
            for k in range(lo, step.i + 1):
                x = self.paste(ctx, step.redo(x, k).x, ts[k + 1])
            step.x = x


@hookimpl
def diffkit_techniques():
    return [Inpaint]
