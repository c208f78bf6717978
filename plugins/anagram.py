"""Visual anagrams (Geng et al. 2024): one image, another prompt seen through a view."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from diffkit import registry, schedule, warping
from diffkit.denoise import Prediction
from diffkit.hookspecs import hookimpl
from diffkit.motion import Clip
from diffkit.state import Context, Query, Step
from diffkit.views import Warp
from diffkit.params import Param
from diffkit.request import twice_a_step
from diffkit.technique import Combiner


class Blend(NamedTuple):
    """One reduction=x0 reduction at timestep ``t``: the canonical clean latent ``x0``, the averaged image
    (space=pixel; else ``x0``) and residual (else None), and each branch's own decoded image and residual
    (each in its view's frame; with space=latent, its clean latent and None)."""

    t: int | float
    x0: Tensor
    image: Tensor
    residual: Tensor | None
    own: list[Tensor]
    own_lost: list[Tensor] | None


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
                                        "(step i: only branch i mod n), the release's two; or x0 (LookingGlass, "
                                        "SyncTweedies): each view keeps a state of its own, the views' clean images "
                                        "are averaged and every state steps from the average",
              choices=("mean", "alternate", "x0")),
        Param("space", str, "latent", "where reduction=x0 averages and views the clean images: latent (the "
                                      "model's own state) or pixel (a latent model's decoded image, re-encoded "
                                      "with the residual the VAE round trip loses; LookingGlass)",
              choices=("latent", "pixel")),
        Param("last", int, 0, "the last N steps denoise the first prompt alone (LookingGlass's last steps)",
              range=(0, 100_000)),
        Param("travel", int, 0, "time travel (LookingGlass; FreeDoM's, RePaint's resampling): before each step in "
                                "the window, the state (and every view's) is noised this many steps back and "
                                "stepped forward again; 0 off. Needs a sampler that can step again (ddim, ddpm; "
                                "own or euler on a flow model)", range=(0, 1000)),
        Param("travel_from", float, 0.2, "where the time-travel window starts, as a fraction of the steps",
              range=(0.0, 1.0)),
        Param("travel_to", float, 0.8, "where the time-travel window ends (that step not included)", range=(0.0, 1.0)),
        Param("levels", int, 4, "with a view that is no permutation (rotate:DEG, zoom, mirror): the most Laplacian "
                                "pyramid levels its warping uses (fewer where the sides do not halve)", range=(1, 8)),
        Param("detail", float, 0.25, "with such a view: how far the pyramid's average moves to the value-weighted "
                                     "one, which keeps detail (LookingGlass's blend; 0 the plain average)",
              range=(0.0, 1.0)),
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
        self.args.setdefault("reduction", "mean")
        self.args.setdefault("space", "latent")
        self.args.setdefault("last", 0)
        if self.args["space"] == "pixel" and self.args["reduction"] != "x0":
            raise ValueError(f"space=pixel averages the views' decoded clean images: give reduction=x0 with it "
                             f"(reduction={self.args['reduction']} averages noise)")
        self.args.setdefault("levels", 4)
        self.args.setdefault("detail", 0.25)
        self.args.setdefault("travel", 0)
        self.args.setdefault("travel_from", 0.2)
        self.args.setdefault("travel_to", 0.8)
        self.steps_again = f"travel={self.args['travel']}" if self.args["travel"] else ""
        if self.args["travel"] and not self.args["travel_from"] < self.args["travel_to"]:
            raise ValueError(f"the time-travel window travel_from={self.args['travel_from']:g} .. "
                             f"travel_to={self.args['travel_to']:g} is empty: travel_from must be below travel_to")
        self.synced = self.args["reduction"] == "x0"
        self.space = "clean" if self.synced else "estimate"  # denoise.wrap hands reduce each branch's x0
        self.needs_decoder = self.args["space"] == "pixel"
        self.warped = any(isinstance(v, Warp) for v in self.views)
        if self.warped:
            bent = next(v.name for v in self.views if isinstance(v, Warp))
            if not self.synced:
                raise ValueError(f"view {bent} is no permutation: noise seen through it is no noise, so it acts on "
                                 "clean images only; give reduction=x0 (LookingGlass's pyramid warping)")
            self.extra_channels = "first"  # IF's variance: no warp maps it back; the image's own is kept
            # over two levels or more, the pyramid average of views that agree is a little less than the
            # image: no second evaluation a step (Heun's divides that by its sigma, near 0 on the last step),
            # checked before weights load; one level (nearest pixels) gives the image back
            if self.args["levels"] > 1:
                self.inexact_average = (f"view={bent}: its average over a pyramid of up to {self.args['levels']} "
                                        "levels loses a little of the image; levels=1 loses nothing")
            self.state_input_only = True  # no warp maps IF stage II's upscaled image channels either

    def input_files(self) -> list[str]:
        return super().input_files() + [f for v in self.views for f in v.files]

    def setup(self, ctx: Context) -> None:
        self.conds = [ctx.encode_all(p) for p in self.prompts]
        for v in self.views:  # a view that cannot take this stage's size is refused before any step
            if not isinstance(v, Warp):
                v.forward(torch.zeros(1, *ctx.backend.sample_shape, dtype=torch.float64))
        self.readings: dict[tuple, warping.Reading] = {}
        # reduction=alternate and last=N: a query's step is the index of its timestep in the stage's walk
        self.step_of = {float(t): i for i, t in enumerate(ctx.timesteps)}
        self.n_steps = len(ctx.timesteps)
        self.ctx = ctx
        self.states: list[Tensor] | None = None  # reduction=x0: each view's own state, at timestep self.at
        self.at: int | float | None = None
        self.blends: list[Blend] = []  # reduction=x0: this step's reductions
        if not self.synced:
            return
        # A two-evaluation rule whose second evaluation is at the step's end (Heun's) steps the views' states as
        # it steps the run's (_predicted, _heun); any other (KDPM2's midpoints) has no such step written here.
        order, walk = ctx.stepper.order, getattr(ctx.stepper, "evals", None)
        self.heun = order == 2 and walk is not None and all(
            float(walk[2 * i + 1]) == float(ctx.timesteps[i + 1]) for i in range(len(ctx.timesteps) - 1))
        self.mid: tuple | None = None  # Heun's second evaluation: its timestep, each view's clean image and state
        if order > 1 and self.inexact_average:  # a rule only its plan declares (the model's own scheduler)
            raise ValueError(twice_a_step(self.name, self.inexact_average, getattr(ctx.stepper, "what", "the rule"),
                                          ctx.backend.formulation))
        if order > 1 and not self.heun:
            raise ValueError(f"reduction=x0 steps each view's state as the run's: once a step, or as Heun does; "
                             f"this sampler evaluates the model {order} times a step, in between steps: use a "
                             "one-evaluation sampler (own, euler, ddim, dpmpp_2m, uni_pc, ...) or heun")
        if self.args["space"] == "pixel":
            be = ctx.backend
            if not be.latent:
                raise ValueError(f"space=pixel decodes the state, but backend {be.name!r} samples in pixel space "
                                 "already: drop space=pixel")
            for v in self.views:  # the views act on the decoded image too: its size must suit them
                if not isinstance(v, Warp):
                    v.forward(torch.zeros(1, *be.image_shape, dtype=torch.float64))
        if self.warped:
            k = ctx.eps_channels
            try:  # IF stage II appends its upscaled image, which it only has once the stage starts
                adds = ctx.backend.model_input(torch.zeros(1, *ctx.backend.sample_shape)).shape[1] != k
            except Exception:
                adds = True
            if adds:
                raise ValueError(f"backend {ctx.backend.name!r} gives the model more than the state (IF stage II's "
                                 "upscaled image), which a view that is no permutation cannot carry; use a "
                                 "permutation view, or stage I alone (-O upscaler=none)")
            warping.check_scipy()
            # where a warp shows nothing of the start state, its state starts from noise of its own stream,
            # drawn here once (expand may be asked before the run, to count branches)
            self.fresh = {j: ctx.randn(ctx.backend.sample_shape, stream=f"anagram:view{j}")
                          for j, v in enumerate(self.views, 1) if isinstance(v, Warp)}

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

    def _alone(self, t: int | float) -> bool:
        """Whether step ``t`` is one of the last ``last`` steps, where the first prompt denoises alone."""
        i = self.step_of.get(float(t))
        return i is not None and i >= self.n_steps - self.args["last"]

    def expand(self, query: Query) -> list[Query]:
        if self.args["last"] and self._alone(query.t):
            return [query]
        if self.synced and query.view:
            raise ValueError("reduction=x0 keeps a state per view of the sampler's own state; here it is nested "
                             f"inside another view ({'+'.join(query.view)}): put it outermost of the views")

        # An unconditional query stays unconditional in every view: CFG around or inside commutes.
        def branch(j: int) -> Query:
            if j == 0:
                return query
            cond = query.cond if query.cond.is_null else self.conds[j - 1]
            if not self.synced:
                return query.with_view(self.views[j - 1], cond)
            return Query(self._input(query, j), query.t, cond, (self.views[j - 1].name,), query.model,
                         query.perturbation)

        if self.args["reduction"] == "alternate":
            return [branch(self._branch(query.t))]  # only the view this step uses is made and evaluated
        return [branch(j) for j in range(1 + len(self.views))]

    def reduce(self, query: Query, estimates: list[Tensor]) -> Tensor:
        if len(estimates) == 1 and self.args["reduction"] != "alternate":  # one of the last steps: the first alone
            return estimates[0]
        if self.args["reduction"] == "alternate":
            b = self._branch(query.t)
            return estimates[0] if b == 0 else self.views[b - 1].inverse(estimates[0])
        if self.synced:
            return self._synchronise(query, estimates)
        mapped = [estimates[0]] + [v.inverse(e) for v, e in zip(self.views, estimates[1:])]
        return torch.stack(mapped).mean(0)

    # ---- reduction=x0: LookingGlass (Chang et al. 2025, alg. 1) on SyncTweedies' instance states (Kim et al.
    # 2024): each view j > 0 has a state z_j of its own; every step, each view's clean image x0_j is
    # predicted, mapped back and averaged into the canonical x0, and every state steps from (the view of)
    # that average, by the deterministic step from a clean image (DDIM, eta 0; on a flow model the Euler
    # step). diffusers has no such loop: written here from the papers' algorithm.

    def _input(self, query: Query, j: int) -> Tensor:
        """View ``j``'s model input at the query's timestep: its own state (before the first step's
        reduction, the query's state seen through the view), the query's other input channels viewed."""
        k = self.ctx.eps_channels
        view = self.views[j - 1]
        if self.states is None:
            return self._start(query.x[:, :k], j) if isinstance(view, Warp) else view.forward(query.x)
        if query.t != self.at and not self.heun:
            raise ValueError(f"reduction=x0 keeps each view's state at the step's noise level (t={self.at}), but the "
                             f"model is asked at t={query.t} within the step (a sampler that evaluates more than once "
                             "a step, or a step taken again: RePaint's resample); use a one-evaluation sampler")
        z = self.states[j - 1] if query.t == self.at else self._predicted(query.t)[j - 1]
        if query.x.shape[1] == k:
            return z
        return torch.cat([z, view.forward(query.x[:, k:])], dim=1)  # IF stage II's upscaled image, viewed

    def _start(self, x: Tensor, j: int) -> Tensor:
        """A warp's state at the start: the start state read through it pixel by pixel (nearest, so noise
        stays unit noise), fresh noise of its own stream where the view shows nothing of it."""
        h, w = x.shape[-2:]
        seen = warping.forward(x, self._reading(j, h, w, 1), 1)
        fresh = self.fresh[j][: x.shape[0]].to(x.device, x.dtype)
        return torch.where(torch.isnan(seen), fresh, seen)

    def _reading(self, j: int, h: int, w: int, levels: int) -> warping.Reading:
        key = (j, h, w, levels)
        if key not in self.readings:
            self.readings[key] = warping.reading(self.views[j - 1].source(h, w, 1.0), levels)
        return self.readings[key]

    def _move(self, z: Tensor, x0: Tensor, t: int | float, t_next: int | float) -> Tensor:
        """The state ``z`` at ``t`` moved to ``t_next`` along its clean image ``x0``: the noise it implies,
        ``(z - sqrt(abar) x0) / sqrt(1 - abar)``, at the next level (DDIM eq. 12, eta 0); on a flow model
        ``(1 - s') x0 + s' (z - (1 - s) x0) / s``."""
        ctx = self.ctx
        if ctx.backend.formulation == "flow":
            s, s2 = ctx.sigma(t), ctx.sigma(t_next)
            return (1 - s2) * x0 + s2 * ((z - (1 - s) * x0) / s)
        a = ctx.abar(t)
        return schedule.noised(x0, ctx.abar(t_next), (z - math.sqrt(a) * x0) / math.sqrt(1 - a))

    def _average(self, parts: list[Tensor]) -> Tensor:
        """The views' images (``parts[j]`` in view j's frame, the image's own first) mapped back and averaged:
        the plain mean for permutations; with a warp, level by level of their Laplacian pyramids (a warp's
        from :func:`warping.inverse`, NaN where it shows nothing), moved ``detail`` of the way to the
        value-weighted average, then reconstructed (LookingGlass's blend)."""
        if not self.warped:
            return torch.stack([parts[0]] + [view.inverse(p) for view, p in zip(self.views, parts[1:])]).mean(0)
        h, w = parts[0].shape[-2:]
        levels = warping.levels_for(h, w, self.args["levels"])
        work = [p.float() if p.dtype in (torch.float16, torch.bfloat16) else p for p in parts]
        pyramids = [warping.laplacian(work[0], levels)]
        for j, (v, e) in enumerate(zip(self.views, work[1:]), 1):
            if isinstance(v, Warp):
                pyramids.append(warping.inverse(e, self._reading(j, h, w, levels), levels))
            else:
                pyramids.append(warping.laplacian(v.inverse(e), levels))
        return warping.blend(pyramids, self.args["detail"]).to(parts[0].dtype)

    def _seen(self, j: int, canonical: Tensor, own: Tensor) -> Tensor:
        """View ``j`` of a canonical image or latent: the permutation, or the warp's reading of its pyramid with
        the view's own ``own`` where the warp shows nothing of it."""
        v = self.views[j - 1]
        if not isinstance(v, Warp):
            return v.forward(canonical)
        h, w = canonical.shape[-2:]
        levels = warping.levels_for(h, w, self.args["levels"])
        work = canonical.float() if canonical.dtype in (torch.float16, torch.bfloat16) else canonical
        seen = warping.forward(work, self._reading(j, h, w, levels), levels).to(own.dtype)
        return torch.where(torch.isnan(seen), own, seen)

    def _synchronise(self, query: Query, x0s: list[Tensor]) -> Tensor:
        """The canonical clean image from the branches' ``x0s`` (each in its view's frame): their average
        mapped back; with space=pixel, the average of the decoded images, encoded, plus the average of what
        each branch's round trip through the VAE lost (its residual), in the latent grid."""
        k = self.ctx.eps_channels
        if self.states is None:  # the first real evaluation: the views' states start as the start state's views
            self.states = [self._input(query, j)[:, :k] for j in range(1, len(self.views) + 1)]
            self.at = query.t
        if self.args["space"] == "latent":
            x0 = self._average(x0s)
            self.blends.append(Blend(query.t, x0, x0, None, x0s, None))
            return x0
        be = self.ctx.backend
        images = [be.to_pixels(e).to(e.dtype) for e in x0s]
        lost = [e - be.from_pixels(im).to(e.dtype) for e, im in zip(x0s, images)]
        residual = self._average(lost)
        image = self._average(images)
        x0 = be.from_pixels(image).to(residual.dtype) + residual
        self.blends.append(Blend(query.t, x0, image, residual, images, lost))
        return x0

    def _view_cleans(self, step_t: int | float, x0: Tensor) -> list[Tensor]:
        """Each view's clean image from the step's: where the step made one reduction (nothing outside this
        anagram combined several), from that reduction's own average, ``E(view(image)) + view(residual)``
        (LookingGlass alg. 1, lines 11-15); else (CFG outside it) from the step's combined ``x0``, through
        the VAE as well with space=pixel. A warp shows the view's own prediction where it shows nothing of
        the image."""
        mine = [b for b in self.blends if b.t == step_t]
        if len(mine) == 1:
            _, x0, image, residual, own, own_lost = mine[0]
        else:
            own, own_lost = mine[-1].own, mine[-1].own_lost
            image, residual = x0, None
            if self.args["space"] == "pixel":
                be = self.ctx.backend
                image = be.to_pixels(x0).to(x0.dtype)
                residual = x0 - be.from_pixels(image).to(x0.dtype)
        seen = [self._seen(j, image, own[j]) for j in range(1, len(self.views) + 1)]
        if self.args["space"] == "latent":
            return seen
        be = self.ctx.backend
        return [be.from_pixels(im).to(x0.dtype) + self._seen(j, residual, own_lost[j])
                for j, im in enumerate(seen, 1)]

    def _advance(self, t: int | float, t_next: int | float, x0: Tensor) -> None:
        """reduction=x0: after the step from ``t`` (its combined clean image ``x0``), every view's state
        steps to ``t_next`` from its own clean image; under Heun, corrected by its clean image at ``t_next``."""
        if self.synced and self.states is not None and t_next >= 0 and not self._alone(t_next):
            if self.mid is not None and self.mid[0] == t_next:
                ends = self._view_cleans(t_next, self._clean(*self.ctx.evaluation).to(self.states[0].dtype))
                self.states = [self._heun(z, c, p, e, self.at, t_next)
                               for z, c, p, e in zip(self.states, self.mid[1], self.mid[2], ends)]
            else:
                cleans = self._view_cleans(t, x0.to(self.states[0].dtype))
                self.states = [self._move(z, c, self.at, t_next) for z, c in zip(self.states, cleans)]
            self.at = t_next
        self.blends.clear()
        self.mid = None

    def _clean(self, query: Query, est: Tensor) -> Tensor:
        """The clean image a combined estimate gives at its query's state (a flow model's second block)."""
        kind = "flow_prediction" if self.ctx.backend.formulation == "flow" else "epsilon"
        return Prediction(kind, self.ctx.eps_channels, self.ctx.abar, self.ctx.sigma).clean_of(query, est)

    def _predicted(self, t: int | float) -> list[Tensor]:
        """The views' states at Heun's second evaluation (the step's end ``t``): each moved there along its clean
        image from the step's first evaluation (the run's combined one, ``ctx.evaluation``): Heun's Euler
        predictor (Karras et al. 2022, alg. 1, line 5), in the views' frames."""
        if self.mid is None or self.mid[0] != t:
            first, est = self.ctx.evaluation
            cleans = self._view_cleans(self.at, self._clean(first, est).to(self.states[0].dtype))
            self.mid = (t, cleans, [self._move(z, c, self.at, t) for z, c in zip(self.states, cleans)])
        return self.mid[2]

    def _heun(self, z: Tensor, clean: Tensor, predicted: Tensor, end: Tensor, t: int | float,
              t_next: int | float) -> Tensor:
        """A view's state ``z`` at ``t`` after Heun's step to ``t_next``: its predictor ``predicted`` (from its
        clean image ``clean``) corrected by half the change of slope, ``(sigma' - sigma) (d' - d) / 2``, with
        ``d = (u - x0) / sigma`` in the ODE's variables (Karras et al. 2022, alg. 1, lines 7-8): ``u = z`` and
        the flow sigma on a flow model, else ``u = z / sqrt(abar)`` and ``sigma = sqrt((1 - abar) / abar)``."""
        ctx = self.ctx
        if ctx.backend.formulation == "flow":
            s, s2, scale, scale2 = ctx.sigma(t), ctx.sigma(t_next), 1.0, 1.0
        else:
            a, a2 = ctx.abar(t), ctx.abar(t_next)
            s, s2, scale, scale2 = math.sqrt((1 - a) / a), math.sqrt((1 - a2) / a2), math.sqrt(a), math.sqrt(a2)
        slope = (z / scale - clean) / s
        slope_end = (predicted / scale2 - end) / s2
        return predicted + scale2 * (s2 - s) * (slope_end - slope) / 2

    def _travels(self, i: int) -> bool:
        """Whether the state before step ``i`` travels back: ``i`` in the window (the fractions of the stage's
        steps, as LookingGlass gives it), and not one of the last steps where the first prompt is alone."""
        n, a = self.n_steps, self.args
        return (a["travel"] > 0 and int(n * a["travel_from"]) <= i < int(n * a["travel_to"])
                and not self._alone(self.ctx.timesteps[i]))

    def _scale(self, t: int | float) -> float:
        """The model input's scale over the variance-preserving state at ``t``: a flow model's
        ``flow_scale(sigma)``, else 1."""
        return schedule.flow_scale(self.ctx.sigma(t)) if self.ctx.backend.formulation == "flow" else 1.0

    def _renoise(self, x: Tensor, ratio: float, j: int, noise: Tensor) -> Tensor:
        """``x`` noised from its level to one ``ratio`` of its ``abar`` (the forward process ``q(x_hi | x_lo)``
        over several steps); view ``j``'s state with the canonical noise seen through the view (its own stream's
        where a warp shows nothing), as the states started."""
        if j:
            view = self.views[j - 1]
            if isinstance(view, Warp):
                h, w = noise.shape[-2:]
                seen = warping.forward(noise, self._reading(j, h, w, 1), 1)
                own = self.ctx.randn(noise.shape[1:], stream=f"anagram:travel{j}").to(noise.device, noise.dtype)
                noise = torch.where(torch.isnan(seen), own, seen)
            else:
                noise = view.forward(noise)
        return math.sqrt(ratio) * x + math.sqrt(1 - ratio) * noise

    def _travel(self, step: Step) -> None:
        """Time travel before step ``i = step.i + 1``: the state at ``t_i`` (and each view's) noised back
        ``travel`` steps to ``t_lo``, then steps ``lo .. i - 1`` taken again (FreeDoM's time travel, Yu et al.
        2023; RePaint's jump, Lugmayr et al. 2022), the views' states stepping with it."""
        ctx, ts = self.ctx, self.ctx.timesteps
        i = step.i + 1
        lo = max(ctx.i_start, i - self.args["travel"])
        ratio = ctx.abar(ts[lo]) / ctx.abar(ts[i])
        noise = ctx.randn(step.x.shape[1:], stream="anagram:travel").to(step.x.device, step.x.dtype)
        x = self._renoise(step.x, ratio, 0, noise)
        if self.synced and self.states is not None:  # the views' states are model inputs: flow states on a flow model
            hi, low = self._scale(ts[i]), self._scale(ts[lo])
            self.states = [low * self._renoise(z / hi, ratio, j, noise) for j, z in enumerate(self.states, 1)]
            self.at = ts[lo]
        for m in range(lo, i):
            out = step.redo(x, m)
            self._advance(ts[m], ts[m + 1], out.x0)
            x = out.x
        step.x = x

    @hookimpl
    def diffkit_after_step(self, ctx: Context, step: Step) -> None:
        self._advance(step.t, step.t_next, step.x0)
        if step.redo is not None and self._travels(step.i + 1):
            self._travel(step)


@hookimpl
def diffkit_techniques():
    return [Anagram]
