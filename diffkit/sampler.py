"""The Sampler: one loop for every technique, backend and stage.

    x = noise (or the initial-state hook's start)
    for step i (t -> t') of the sampler's walk (ctx.stepper, rules.py):
        x, x0, eps = stepper.step(ctx, i, x, evaluate)       # a StepOutput; evaluate(x, t) = denoiser([Query(model_input(x), t,
                                                             #   cond)]): one batched model call, once per
                                                             #   evaluation of the rule (Heun: twice a step)
        after_step hooks re-impose constraints on x          # projectors
        observe hooks and the caller see a StepState         # observers, UI
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from diffkit import registry
from diffkit.denoise import NonFiniteError, Prediction, batched, compose, join
from diffkit.rules import StepOutput
from diffkit.state import Context, Denoiser, Query, Step, StepState
from diffkit.technique import Combiner, Technique


MAX_BRANCHES = 1024  # branches a sample at one evaluation, above which a run must say it means it


class Sampler:
    """Samples one stage of a backend with a list of techniques (in ``--hook`` order).

    ``run(ctx)`` is a generator: it yields a :class:`StepState` after every step and returns the
    final ``x`` ``[N x C x H x W]`` (``StopIteration.value``; :meth:`sample` hands it back directly).
    """

    def __init__(self, techniques: list[Technique] = (), max_batch: int | None = None,
                 max_branches: int = MAX_BRANCHES):
        self.techniques = list(techniques)
        self.max_batch = max_batch
        self.max_branches = max_branches
        self.stats: dict[str, int] = {}  # model evaluations and rows, summed over runs (denoise.batched)

    def denoiser(self, ctx: Context) -> Denoiser:
        combiners = [t for t in self.techniques if isinstance(t, Combiner)]
        inner = batched(ctx.backend, self.max_batch, self.stats, ctx.models, ctx.abar, ctx.sigma)
        prediction = Prediction(ctx.backend.prediction_type, ctx.eps_channels, ctx.abar, ctx.sigma)
        return compose(combiners, inner, ctx.eps_channels, ctx.blocks, prediction)

    def setup(self, ctx: Context) -> None:
        """Each technique's ``setup(ctx)`` (encode prompts, load images), once per context.

        Bad input found there (a label the backend cannot take, an unreadable image) is a SpecError
        naming the hook; anything else is the plugin's failure (PluginError).
        """
        if ctx.extra.get("_setup_done"):
            return
        from diffkit.syntax import SpecError

        for tech in self.techniques:
            try:
                tech.setup(ctx)
            except (ValueError, LookupError, OSError) as e:
                raise SpecError(f"technique {tech.name!r}: {e}") from e
            except Exception as e:
                raise registry.PluginError(f"technique {tech.name!r} failed in setup: {type(e).__name__}: {e}") from e
        self.check_branches(ctx)
        ctx.extra["_setup_done"] = True

    def branches(self, ctx: Context, cap: int | None = None) -> tuple[int, int | None]:
        """``(branches, rows)`` of one sample at one evaluation: the queries the combiners build by
        expanding the step's query, and the distinct ones among them, which the model is run on (CFG around a
        2-view anagram: 4 and 4; CFG around a hybrid: 4 and 3). Expanded level by level on a one-sample
        input; past ``cap`` branches the count is the product of each remaining level's fan-out (exact when
        every query of a level expands alike, as every built-in combiner's does) and ``rows`` is None."""
        combiners = join([t for t in self.techniques if isinstance(t, Combiner)])
        x = torch.zeros(1, *ctx.backend.sample_shape, dtype=ctx.backend.dtype)
        level = [Query(x, ctx.timesteps[ctx.i_start], ctx.cond)]
        for k, c in enumerate(combiners):
            if cap is not None and len(level) > cap:
                n, one = len(level), level[0]
                for rest in combiners[k:]:
                    out = rest.expand(one)
                    n, one = n * len(out), out[0]
                return n, None
            level = [e for q in level for e in c.expand(q)]
        return len(level), len({q.key for q in level})

    def check_branches(self, ctx: Context) -> None:
        """Refuse, before any step, techniques whose branches multiply past ``max_branches`` a sample (twenty
        nested anagrams build 2^20 queries a step: gigabytes and a minute for one step, with no word)."""
        n, _ = self.branches(ctx, self.max_branches)
        if n > self.max_branches:
            from diffkit.errors import UserError

            names = [t.name for t in self.techniques if isinstance(t, Combiner)]
            said = f"{len(names)} {names[0]} techniques" if len(set(names)) == 1 else f"the techniques {' x '.join(names)}"
            raise UserError(f"{said} make {n} branches a sample at every evaluation, over the bound of "
                            f"{self.max_branches}: each evaluation would build and combine {n} x {ctx.n} estimates. "
                            f"Use fewer nested techniques, or pass --max-branches {n} (api: max_branches={n}) to run it "
                            "anyway")

    def run(self, ctx: Context) -> Iterator[StepState]:
        backend, ts, stepper = ctx.backend, ctx.timesteps, ctx.stepper
        self.setup(ctx)
        denoise = self.denoiser(ctx)

        def evaluate(x: Tensor, t: int | float) -> Tensor:
            query = Query(backend.model_input(x), t, ctx.cond)
            est = denoise([query])[0]
            ctx.evaluation = (query, est)
            return est

        relay = registry.RunHooks(self.techniques)  # this run's own hooks: runs in one process never mix
        # Inference mode is entered for each piece of work and left before every yield: a mode held
        # across a yield is thread state another run's generator, advanced in between, would save and
        # restore out of order (two interleaved runs left the thread in inference mode for good).
        with torch.inference_mode():
            backend.prepare(ctx)  # a stage whose pipeline draws noise of its own first (the SD x4 upscaler)
            x = ctx.noise = ctx.randn()
            backend.start(ctx)  # a stage that draws its own noise (IF II) does so next, as diffusers does
            start = relay.hook.diffkit_initial_state(ctx=ctx, noise=x)
            if start is not None:
                x, ctx.i_start = start
            elif stepper.init_scale != 1.0:  # a sigma-space rule's own starting noise (rules.DiffusersStepper)
                x = x * stepper.init_scale
            stepper.begin(ctx.i_start)
        observe = relay.has("diffkit_observe")
        project = relay.has("diffkit_after_step")

        def redo(x: Tensor, k: int) -> StepOutput:
            return StepOutput(*stepper.step(ctx, k, x, evaluate))

        for i in range(ctx.i_start, len(ts)):
            t, t_next = ts[i], (ts[i + 1] if i + 1 < len(ts) else -1)
            with torch.inference_mode():
                try:
                    x, x0, eps = StepOutput(*stepper.step(ctx, i, x, evaluate))  # a rule may return a plain tuple
                except NonFiniteError as e:
                    stage = f"stage {ctx.stage + 1}, " if ctx.stage else ""
                    raise NonFiniteError(f"{stage}step {i + 1} of {len(ts)}: {e} (in fp16 on a GPU this is "
                                         "usually an overflow: try --dtype bf16 or fp32)") from None
                if project:
                    step = Step(i, t, t_next, x, x0, redo if stepper.can_redo else None)
                    relay.hook.diffkit_after_step(ctx=ctx, step=step)
                    x = step.x
                state = StepState(ctx.stage, i, len(ts), t, t_next, x, x0, eps)
                if observe:
                    relay.hook.diffkit_observe(ctx=ctx, state=state)
            yield state
        return x

    def sample(self, ctx: Context) -> Tensor:
        """Run to the end and return the final ``x``."""
        gen = self.run(ctx)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value
