"""SDEdit (Meng et al. 2022): start from an image noised to t[i_start] instead of pure noise."""

from __future__ import annotations

from torch import Tensor

from diffkit.hookspecs import hookimpl
from diffkit.state import Context
from diffkit.params import Param
from diffkit.technique import Projector


DEFAULT_START = 10  # i_start when neither it nor strength is given: skip the schedule's 10 noisiest steps


class SDEdit(Projector):
    name = "sdedit"
    help = "x = forward(x_orig, t[i_start], noise), then sample from i_start; with a prompt: image-to-image."
    params = (
        Param("image", str, help="the input image (any size and mode; cropped and resized)", kind="sketch"),
        Param("i_start", int, None, "index into the timesteps to start from (0 = pure noise)",
              range=(0, 100_000)),
        Param("strength", float, None, "alternative to i_start: runs int(steps x strength) steps from the image "
                                       "noised to the first of them, as diffusers' img2img pipelines do (1: "
                                       "every step, still from the noised image)",
              range=(0.0, 1.0)),
    )

    def __init__(self, **args):
        super().__init__(**args)
        args = self.args  # the technique's own copy: the default below must land in it
        self.by_default = args["i_start"] is None and args["strength"] is None
        if self.by_default:
            args["i_start"] = DEFAULT_START
        if args["i_start"] is not None and args["strength"] is not None:
            raise ValueError("give i_start or strength, not both")
        if args["strength"] is not None and not 0 <= args["strength"] <= 1:
            raise ValueError(f"strength must be in [0, 1], got {args['strength']}")

    def start_index(self, ctx: Context) -> int:
        """``i_start``, or from ``strength`` the index diffusers' img2img pipelines start at, so that
        ``strength=s`` here is ``strength=s`` there: skip ``n - int(n s)`` of the ``n`` steps asked for
        (``num_inference_steps``; PNDM walks one more, and img2img counts the ones asked for)."""
        if self.args["strength"] is not None:
            n = ctx.stepper.asked or len(ctx.timesteps)
            return ctx.backend.strength_start(n, self.args["strength"])
        return self.args["i_start"]

    def setup(self, ctx: Context) -> None:
        self.x_orig = ctx.load_image(self.args["image"], "image") if ctx.stage == 0 else None
        n = len(ctx.timesteps)
        i = self.start_index(ctx)
        asked = ctx.stepper.asked or n
        if self.args["strength"] is not None and i == asked:
            raise ValueError(f"strength {self.args['strength']} runs no step of {asked}: give at least "
                             f"1/{asked} = {1 / asked:.3g}")
        if not 0 <= i < n:
            whose = " (sdedit's default, when neither i_start nor strength is given)" if self.by_default else ""
            raise ValueError(f"i_start {i}{whose} is outside 0..{n - 1} of the run's {n} steps: give i_start=K "
                             f"below {n}, or strength=S (the fraction of the steps to run)")

    @hookimpl
    def diffkit_initial_state(self, ctx: Context, noise: Tensor):
        if ctx.stage != 0:  # later stages refine the first stage's output, not the input image
            return None
        i = self.start_index(ctx)
        if i == 0 and self.args["strength"] is None:  # i_start=0: plain sampling from pure noise
            return None
        # strength=1 too starts from the image noised to t[0], as the img2img pipelines do: at t[0] the
        # schedule keeps sqrt(abar) of it (0.07 for SD's 999, 0.22 for MNIST's T), so it is not pure noise
        return ctx.forward(self.x_orig, ctx.timesteps[i], noise), i


@hookimpl
def diffkit_techniques():
    return [SDEdit]
