"""Step rules ("samplers"): how the state moves from one noise level to the next.

A :class:`StepRule` is declared like a technique (name, help, ``Param`` list) and registered by the
``diffkit_samplers`` hook. For one stage of one run, ``rule.plan(backend, steps, timesteps, stride)``
returns a :class:`Stepper`: the timesteps it visits, the noise level before each step, and
``step(ctx, i, x, evaluate)``, which calls ``evaluate(x, t)`` (one batched model call for every
branch of every combiner) once per model evaluation the rule needs and returns the next state.

The state ``x`` the Sampler, projectors, starts and observers see is always variance-preserving,
``x = sqrt(abar) x0 + sqrt(1 - abar) eps`` ``[N x C x H x W]``, whatever the rule's own
parameterisation: a rule that steps in sigma space (Euler, Heun: ``x0 + sigma eps``) is converted
in and out here, so inpainting and SDEdit need not know which rule runs.

Every rule but ``ddpm`` is a diffusers scheduler (:class:`DiffusersRule`), configured from the
backend's own training schedule (``backend.scheduler_config``: IF's ``scheduler_config.json``,
MNIST's linear betas with T=300). ``ddpm`` stays the hand-written strided formula
(``schedule.ddpm_step``) so that every earlier output is unchanged bit for bit.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, ClassVar, NamedTuple, Sequence

import torch
from torch import Tensor

from diffkit import schedule
from diffkit.errors import UserError
from diffkit.params import TYPE_NAMES, Param, to_bool

# evaluate(x, t): the combined estimate for state x at model timestep t, ``[N x C' x H x W]``: noise in
# the first C channels, then whatever else the backend predicts (IF: its variance).
Evaluate = Callable[[Tensor, "int | float"], Tensor]



def check_timesteps(name: str, ts: Sequence[int], T: int | None = None) -> None:
    """Refuse anything but strictly decreasing integers >= 0 (and below ``T`` once the schedule is known)."""
    if (not len(ts) or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in ts)
            or any(a <= b for a, b in zip(ts, ts[1:])) or (T is not None and ts[0] >= T)):
        span = "integers >= 0" if T is None else f"within 0..{T - 1}"
        raise UserError(f"{name} must be strictly decreasing {span}, got {list(ts)}")


def timesteps_for(backend: Any, steps: int | None = None, stride: int | None = None,
                  timesteps: Sequence[int] | None = None) -> list[int]:
    """Explicit ``timesteps``, else ``steps`` evenly strided ones ending at 0, else ``stride``, else the backend's."""
    T = len(backend.alphas_cumprod)
    if timesteps:
        check_timesteps("timesteps", timesteps, T)
        return list(timesteps)
    if steps:
        if not 1 <= steps <= T:
            raise UserError(f"steps must be in 1..{T}, got {steps}")
        k = max(1, T // steps)
        return list(range((steps - 1) * k, -1, -k))
    if stride:
        if not 1 <= stride < T:
            raise UserError(f"stride must be in 1..{T - 1}, got {stride}")
        return schedule.strided_timesteps(T, stride)
    return backend.default_timesteps()



class StepOutput(NamedTuple):
    """One step of a rule, as diffusers' schedulers return a ``SchedulerOutput``: ``x`` the state after
    the step, ``x0`` and ``eps`` the clean-image and noise estimates it made, each ``[N x C x H x W]``.
    A tuple too, so ``x, x0, eps = stepper.step(...)`` reads it."""

    x: Tensor
    x0: Tensor
    eps: Tensor

class RuleError(UserError):
    """A step rule cannot serve this request (steps it cannot take, explicit timesteps, an option)."""


class Stepper:
    """One stage's walk through the noise levels, for one run.

    - ``timesteps``: the model timestep of each step's first evaluation (ints, or floats for rules
      that interpolate between the training timesteps).
    - ``abars``: ``abar`` of the state before each step, and ``1.0`` (clean) after the last: ``n + 1``.
    - ``init_scale``: factor on the initial unit noise (1 but for rules that start at their own sigma).
    - ``can_redo``: ``step`` may be called again at any earlier index (RePaint's resampling);
      False for rules that keep a history (multistep solvers) or a position.
    - ``asked``: the steps asked for (diffusers' ``num_inference_steps``), which img2img's strength
      counts; None: ``len(timesteps)``. PNDM walks one step more than it was asked for.
    - ``order``: model evaluations a step (Heun: 2).
    """

    timesteps: list[int | float]
    abars: list[float]
    init_scale: float = 1.0
    can_redo: bool = False
    asked: int | None = None
    order: int = 1

    def begin(self, i_start: int) -> None:
        """Reset for a walk that starts at step ``i_start``."""

    def step(self, ctx: Any, i: int, x: Tensor, evaluate: Evaluate) -> StepOutput:
        """State before step ``i`` ``[N x C x H x W]`` -> :class:`StepOutput` (the state after it, the
        clean-image and noise estimates)."""
        raise NotImplementedError

    def sigma(self, t: int | float) -> float:
        """A flow model's ``sigma`` at timestep ``t`` (:class:`FlowStepper`); a discrete walk has none."""
        raise RuleError("this rule walks a discrete variance-preserving schedule: it has no flow sigma")

    def abar(self, t: int | float) -> float:
        """``abar`` at one of this walk's timesteps, or at a training timestep; ``t < 0`` is the clean image."""
        if t < 0:
            return 1.0
        table = getattr(self, "_abar_of", None)
        if table is None:
            table = self._abar_of = dict(zip(self.timesteps, self.abars))
        if t in table:
            return table[t]
        if t != int(t):  # a rule's interpolated timestep (KDPM2's midpoints)
            return schedule.abar_between(self.alphas_cumprod, float(t))
        return schedule.abar_at(self.alphas_cumprod, int(t))


class StepRule:
    """Base of every step rule. Subclasses set the class attributes and take their params as kwargs.

    ``takes_timesteps``: whether ``--timesteps`` (an explicit list) is accepted.
    """

    name: ClassVar[str]
    help: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    kind: ClassVar[str] = "sampler"
    # the model formulations it steps (``Backend.formulation``): "vp" discrete variance-preserving, "flow"
    formulations: ClassVar[tuple[str, ...]] = ("vp",)

    def __init__(self, **args: Any):
        self.args = args

    def check_formulation(self, backend: str, formulation: str, takers: Sequence[str] = ()) -> None:
        """Refuse, by name, a backend of a formulation this rule cannot step; ``takers``: the rules that can
        (the request checks before the backend's weights load, from ``BackendInfo.formulation``)."""
        if formulation not in self.formulations:
            kind = {"flow": "a flow-matching model", "vp": "a discrete variance-preserving model"}.get(formulation, formulation)
            offer = f"use one of: {', '.join(takers)}" if takers else "`diffkit rules` says which rule takes which"
            what = f"rule {self.name!r}" + (f" ({self.scheduler})" if self.name == "diffusers" else "")
            raise RuleError(f"{what} cannot step {kind} (backend {backend!r}); {offer}")

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.args.items())})"

    def redoes(self, formulation: str) -> bool | None:
        """Whether this rule's walks on a model of ``formulation`` can step again from an earlier index
        (``Stepper.can_redo``), known before any weights load; None: only its plan says (the model's own)."""
        return None

    @property
    def spec(self) -> dict[str, Any]:
        """What run.json records: name, args, and ``spec``, the ``--sampler`` text that makes the rule again."""
        from diffkit.syntax import format_spec

        args = [(k, v) for k, v in self.args.items() if v is not None and k != "config"]
        args += list(self.args.get("config", {}).items())
        return {"name": self.name, "args": self.args, "spec": format_spec(self.name, args)}

    def plan(self, backend: Any, steps: int | None = None, timesteps: Sequence[int] | None = None,
             stride: int | None = None) -> Stepper:
        raise NotImplementedError


def default_steps(backend: Any, steps: int | None, stride: int | None) -> int:
    """``steps``, else as many as ``stride`` (or the backend's default timesteps) would make."""
    if steps:
        return steps
    if stride:
        return len(schedule.strided_timesteps(len(backend.alphas_cumprod), stride))
    return len(backend.default_timesteps())


# ---------------------------------------------------------------------------------------------- ddpm


class DdpmStepper(Stepper):
    can_redo = True

    def __init__(self, backend: Any, timesteps: list[int]):
        self.backend, self.alphas_cumprod = backend, backend.alphas_cumprod
        self.timesteps = list(timesteps)
        self.abars = [schedule.abar_at(self.alphas_cumprod, t) for t in self.timesteps] + [1.0]

    def step(self, ctx: Any, i: int, x: Tensor, evaluate: Evaluate) -> StepOutput:
        ts = self.timesteps
        t, t_next = ts[i], (ts[i + 1] if i + 1 < len(ts) else -1)
        est = evaluate(x, t)
        c = x.shape[1]
        eps, var = est[:, :c], (est[:, c: 2 * c] if est.shape[1] >= 2 * c else None)
        noise = ctx.randn() if t_next >= 0 else None
        x, x0 = schedule.ddpm_step(x, t, t_next, eps, self.alphas_cumprod, noise, var, self.backend.step_config)
        return StepOutput(x, x0, eps)


class Ddpm(StepRule):
    name = "ddpm"
    help = ("The DDPM posterior step, strided (DDPM eq. 7; IF's learned variance when the backend "
            "predicts one). Stochastic; steps evenly strided, or --stride, or explicit --timesteps.")

    def plan(self, backend: Any, steps: int | None = None, timesteps: Sequence[int] | None = None,
             stride: int | None = None) -> Stepper:
        self.check_formulation(backend.name, backend.formulation)
        return DdpmStepper(backend, timesteps_for(backend, steps, stride, timesteps))

    def redoes(self, formulation: str) -> bool | None:
        return DdpmStepper.can_redo


# ------------------------------------------------------------------------------------------ diffusers

# Schedulers whose step reads the model's predicted variance; every other rule gets the noise channels
# only (diffusers' IFPipeline passes all six of IF's channels to any scheduler, and DDIM, Euler or UniPC
# then fail on "size of tensor a (3) must match ... (6)").
USES_VARIANCE = {"DDPMScheduler", "DDPMParallelScheduler", "UnCLIPScheduler"}
# Schedulers whose step is a pure function of (timestep, sample): they can step again from any index.
STATELESS = {"DDIMScheduler", "DDPMScheduler"}
# Schedulers whose step is a pure function of (position, sample): stepping again needs only their position
# set (diffusers keeps it in ``_step_index`` and has no public setter; its step reads ``sigmas[step_index]``).
SEEKABLE = {"FlowMatchEulerDiscreteScheduler"}


def scheduler_config(backend: Any) -> dict[str, Any]:
    """The backend's diffusers scheduler config; without one, its betas as ``trained_betas``."""
    config = backend.scheduler_config
    if config is not None:
        # The Sampler hands every rule noise: a v-predicting backend's estimate is turned into noise
        # before any technique sees it (denoise.batched), so the rule must read it as epsilon.
        return {**config, "prediction_type": "epsilon"}
    abar = backend.alphas_cumprod.double()
    betas = 1 - abar / torch.cat([abar.new_ones(1), abar[:-1]])
    return {"num_train_timesteps": len(abar), "trained_betas": betas.tolist(), "prediction_type": "epsilon",
            "clip_sample": False}


def scheduler_names() -> list[str]:
    """diffusers' schedulers for noise-predicting models (its ``KarrasDiffusionSchedulers`` list) and its
    flow-matching ones (``FlowMatch*``). EDM's Euler is left out: it brings its own sigmas rather than the
    backend's training schedule."""
    import diffusers
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers

    flow = [n for n in dir(diffusers) if n.startswith("FlowMatch") and n.endswith("Scheduler")]
    return sorted([e.name for e in KarrasDiffusionSchedulers if not e.name.startswith("EDM")] + flow)


def scheduler_class(name: str) -> type:
    """A diffusers scheduler class by name; anything else is a RuleError listing what can be used."""
    import diffusers

    names = scheduler_names()
    if name not in names:
        raise RuleError(f"{name!r} is not a diffusers scheduler for noise-predicting models; use one of: "
                        f"{', '.join(names)}")
    try:
        return getattr(diffusers, name)
    except ImportError as e:  # a scheduler needing an optional package (LMS needs scipy)
        raise RuleError(f"diffusers' {name} cannot load here: {str(e).strip().splitlines()[0]}") from None


def _number(t: Tensor) -> int | float:
    return int(t) if not t.is_floating_point() else float(t)


class DiffusersStepper(Stepper):
    """A diffusers scheduler driven as diffusers' pipelines drive it, in diffkit's variance-preserving state."""

    def __init__(self, cls: type, config: dict[str, Any], overrides: dict[str, Any], steps: int,
                 timesteps: Sequence[int] | None, step_kwargs: dict[str, Any], what: str):
        self.cls, self.config, self.overrides, self.what = cls, config, overrides, what
        self.n_request, self.custom = steps, list(timesteps) if timesteps else None
        self.asked = len(self.custom) if self.custom else steps
        self.step_kwargs = step_kwargs
        self.sched = self._fresh()
        s = self.sched
        self.alphas_cumprod = s.alphas_cumprod.double()
        self.order = int(getattr(s, "order", 1))
        self.evals = list(s.timesteps)  # one per model evaluation (Heun: t0, t1, t1, t2, t2, ...)
        n = (len(self.evals) + self.order - 1) // self.order
        self.timesteps = [_number(self.evals[i * self.order]) for i in range(n)]
        sigmas = getattr(s, "sigmas", None)
        if sigmas is not None and len(sigmas) > len(self.evals):  # one a step's first evaluation, then the end
            sig = [float(v) for v in sigmas]
            self.sigmas = [sig[i * self.order] for i in range(n)] + [sig[min(n * self.order, len(sig) - 1)]]
            self.abars = [1 / (1 + v * v) for v in self.sigmas]
        else:
            self.sigmas = None
            self.abars = [schedule.abar_at(self.alphas_cumprod, int(t)) for t in self.timesteps] + [1.0]
        self.abars[-1] = 1.0  # the walk ends at the clean image
        # Rules that step x0 + sigma eps start from noise * init_noise_sigma (diffusers' convention);
        # every rule diffusers parameterises by alphas starts at 1.
        init = float(getattr(s, "init_noise_sigma", 1.0))
        self.sigma_space = self.sigmas is not None and init != 1.0
        self.init_scale = init * math.sqrt(self.abars[0]) if self.sigma_space else 1.0
        self.uses_variance = cls.__name__ in USES_VARIANCE
        self.can_redo = cls.__name__ in STATELESS
        self.takes = set(inspect.signature(s.step).parameters)

    def _fresh(self) -> Any:
        try:
            s = self.cls.from_config(self.config, **self.overrides)
            if self.custom:
                s.set_timesteps(timesteps=self.custom)
            else:
                s.set_timesteps(self.n_request)
        except (ValueError, TypeError, AssertionError, IndexError) as e:
            raise RuleError(f"{self.what}: {e}") from None
        except ImportError as e:  # diffusers' stand-in for a scheduler whose package is missing (LMS: scipy)
            raise RuleError(f"{self.what}: {' '.join(str(e).split())}") from None
        return s

    def begin(self, i_start: int) -> None:
        self.sched = self._fresh()
        if hasattr(self.sched, "set_begin_index"):
            self.sched.set_begin_index(i_start * self.order)

    def _scale(self, i: int) -> float:
        """sigma-space sample over variance-preserving state at step ``i``: ``sqrt(1 + sigma^2)``."""
        return math.sqrt(1 + self.sigmas[i] ** 2)

    def _kwargs(self, ctx: Any) -> dict[str, Any]:
        """What the scheduler's ``step`` takes beside the estimate: the rule's own arguments (DDIM's eta) and
        the run's generators, one a sample (a sample's noise is the same alone or in a batch)."""
        kwargs = dict(self.step_kwargs)
        if "generator" in self.takes:
            kwargs["generator"] = ctx.generators
        return kwargs

    def _evals_of(self, i: int) -> range:
        """The scheduler's evaluations that make step ``i`` (Heun: two)."""
        return range(i * self.order, min((i + 1) * self.order, len(self.evals)))

    def step(self, ctx: Any, i: int, x: Tensor, evaluate: Evaluate) -> StepOutput:
        s, c = self.sched, x.shape[1]
        sample = x * self._scale(i) if self.sigma_space else x
        kwargs = self._kwargs(ctx)
        x0 = eps0 = None
        for k in self._evals_of(i):
            t = self.evals[k]
            model_in = s.scale_model_input(sample, t)  # variance-preserving x for the model
            est = evaluate(model_in, _number(t))
            eps = est if self.uses_variance else est[:, :c]
            out = s.step(eps, t, sample, return_dict=True, **kwargs)
            if eps0 is None:
                eps0 = est[:, :c]
                x0 = getattr(out, "pred_original_sample", None)
                if x0 is None:
                    x0 = schedule.x0_from_eps_abar(model_in, self.abars[i], eps0)
            sample = out.prev_sample
        if (i + 1) * self.order < len(self.evals) and not getattr(s, "state_in_first_order", True):
            raise RuntimeError(f"{self.what}: a step ended half-way through the scheduler's "
                               f"{self.order} evaluations")
        x_next = sample / self._scale(i + 1) if self.sigma_space else sample
        return StepOutput(x_next, x0, eps0)


class DiffusersRule(StepRule):
    """A rule backed by a diffusers scheduler class.

    Subclasses set ``scheduler`` (the class name), ``fixed`` (config entries that define the rule) and
    map their params to config entries in ``config_keys``; params named in ``step_keys`` go to
    ``scheduler.step`` instead (DDIM's ``eta``).
    """

    scheduler: ClassVar[str]
    fixed: ClassVar[dict[str, Any]] = {}
    config_keys: ClassVar[dict[str, str]] = {}
    step_keys: ClassVar[tuple[str, ...]] = ()
    # On a flow-matching model: the diffusers scheduler and the config entries that make this rule's flow
    # variant (euler: FlowMatchEulerDiscreteScheduler; dpmpp_2m: DPMSolverMultistepScheduler on flow
    # sigmas); None: the rule steps discrete models only.
    flow_scheduler: ClassVar[str | None] = None
    flow_fixed: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("flow_scheduler") and "formulations" not in cls.__dict__:
            cls.formulations = ("vp", "flow")

    def redoes(self, formulation: str) -> bool | None:
        if formulation == "flow":
            stochastic = {**self.flow_fixed, **self.overrides_flow()}.get("stochastic_sampling", False)
            return self.flow_scheduler in SEEKABLE and not stochastic
        return self.scheduler in STATELESS

    def overrides(self) -> dict[str, Any]:
        out = dict(self.fixed)
        for p, key in self.config_keys.items():
            if self.args.get(p) is not None:
                out[key] = self.args[p]
        return out

    def plan(self, backend: Any, steps: int | None = None, timesteps: Sequence[int] | None = None,
             stride: int | None = None) -> Stepper:
        self.check_formulation(backend.name, backend.formulation)
        if backend.formulation == "flow":
            return self.plan_flow(backend, steps, timesteps, stride)
        cls = scheduler_class(self.scheduler)
        what = f"rule {self.name!r}"
        if timesteps:
            if "timesteps" not in inspect.signature(cls.set_timesteps).parameters:
                raise RuleError(f"{what} spaces its own timesteps ({self.scheduler} takes no explicit list): "
                                "give --steps instead of --timesteps")
            check_timesteps("timesteps", timesteps, len(backend.alphas_cumprod))
        n = default_steps(backend, steps, stride)
        T = len(backend.alphas_cumprod)
        if not timesteps and not 1 <= n <= T:
            raise RuleError(f"{what}: steps must be in 1..{T} (the backend was trained with {T} timesteps), got {n}")
        return DiffusersStepper(cls, scheduler_config(backend), self.overrides(), n, timesteps, self.step_args(), what)

    def step_args(self) -> dict[str, Any]:
        """The rule's arguments its scheduler's ``step`` takes (``step_keys``: DDIM's eta)."""
        return {k: self.args[k] for k in self.step_keys if self.args.get(k) is not None}


    def plan_flow(self, backend: Any, steps: int | None, timesteps: Sequence[int] | None,
                  stride: int | None) -> Stepper:
        """The rule's flow variant on a flow-matching model, from the model's scheduler config (its shift)."""
        import diffusers

        what = f"rule {self.name!r}"
        if timesteps or stride:
            raise RuleError(f"{what}: a flow-matching model's noise levels are the scheduler's sigmas; give "
                            f"--steps instead of {'--timesteps' if timesteps else '--stride'}")
        config = dict(backend.scheduler_config or {"num_train_timesteps": 1000, "shift": 1.0})
        T = int(config.get("num_train_timesteps", 1000))
        n = steps or backend.default_steps or len(backend.default_timesteps())
        if not 1 <= n <= T:
            raise RuleError(f"{what}: steps must be in 1..{T}, got {n}")
        cls = getattr(diffusers, self.flow_scheduler)
        overrides = self.check_flow_overrides()
        accepted = set(inspect.signature(cls.__init__).parameters)
        if "flow_shift" in accepted and "flow_shift" not in overrides:  # a solver on flow sigmas: the model's shift
            overrides["flow_shift"] = float(config.get("shift", 1.0))
            if config.get("use_dynamic_shifting"):  # shifted by the image's size (Flux), as the pipeline's mu says
                overrides["use_dynamic_shifting"] = True
        self.check_schedule(backend.name, config)
        takes = set(inspect.signature(cls.set_timesteps).parameters)
        set_kwargs = {k: v for k, v in backend.schedule_kwargs(n).items() if k in takes}
        return FlowStepper(cls, config, overrides, n, set_kwargs, self.step_args(), what)

    def check_formulation(self, backend: str, formulation: str, takers: Sequence[str] = ()) -> None:
        super().check_formulation(backend, formulation, takers)
        if formulation == "flow" and self.flow_scheduler:
            self.check_flow_overrides()

    def check_schedule(self, backend: str, config: dict[str, Any]) -> None:
        """Refuse a flow scheduler that cannot follow the model's schedule: a shift by the image's size (Flux's
        ``use_dynamic_shifting``) that the class takes no ``mu`` for (FlowMatchHeunDiscreteScheduler)."""
        import diffusers

        accepted = set(inspect.signature(getattr(diffusers, self.flow_scheduler).__init__).parameters)
        if config.get("use_dynamic_shifting") and "use_dynamic_shifting" not in accepted:
            raise RuleError(f"rule {self.name!r}: backend {backend!r} shifts its sigmas by the image's size, which "
                            f"{self.flow_scheduler} cannot; use euler, dpmpp_2m, uni_pc or own")

    def follows_any_schedule(self) -> bool:
        """Whether every flow schedule suits this rule's flow scheduler (it takes a size-dependent shift)."""
        import diffusers

        if not self.flow_scheduler:
            return True
        return "use_dynamic_shifting" in inspect.signature(getattr(diffusers, self.flow_scheduler).__init__).parameters

    def check_flow_overrides(self) -> dict[str, Any]:
        """The config entries of this rule's flow variant, each one its scheduler takes (refused by name
        before any weights load, never dropped). A solver on flow sigmas takes no sigma spacing: diffusers'
        karras/exponential/beta branch would replace the flow sigmas with a discrete model's (sigma up to
        ~157, NaN on a flow model); FlowMatchEulerDiscreteScheduler spaces flow sigmas itself."""
        import diffusers

        what = f"rule {self.name!r}"
        cls = getattr(diffusers, self.flow_scheduler)
        overrides = {**self.flow_fixed, **self.overrides_flow()}
        accepted = set(inspect.signature(cls.__init__).parameters)
        bad = sorted(k for k in overrides if k not in accepted)
        if bad:
            raise RuleError(f"{what}: on a flow-matching model it is {self.flow_scheduler}, which takes no "
                            f"{', '.join(bad)}")
        spaced = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas") if overrides.get(k)]
        if overrides.get("use_flow_sigmas") and spaced:
            raise RuleError(f"{what}: on a flow-matching model {self.flow_scheduler} steps the model's flow "
                            f"sigmas, which {', '.join(spaced)} would replace with a discrete model's; for "
                            "karras, exponential or beta spacing of flow sigmas use euler")
        return overrides

    def overrides_flow(self) -> dict[str, Any]:
        """This rule's arguments given away from their defaults, as config entries of its flow scheduler
        (one it cannot take is refused, never dropped)."""
        default = {p.name: p.default for p in self.params}
        return {key: self.args[p] for p, key in self.config_keys.items()
                if self.args.get(p) is not None and self.args[p] != default.get(p)}


class FlowStepper(DiffusersStepper):
    """A diffusers flow-matching scheduler (or a solver on flow sigmas) driven as the flow pipelines drive
    it (SD3, Flux), in diffkit's variance-preserving state: ``x_vp = x_flow / flow_scale(sigma)``.

    The scheduler steps the flow state with the velocity ``v = eps - x0`` made from the combined
    estimates (noise and clean image, both defined at sigma = 1)."""

    def __init__(self, cls: type, config: dict[str, Any], overrides: dict[str, Any], steps: int,
                 set_kwargs: dict[str, Any], step_kwargs: dict[str, Any], what: str):
        self.cls, self.config, self.overrides, self.what = cls, config, overrides, what
        self.n_request, self.set_kwargs, self.step_kwargs = steps, set_kwargs, step_kwargs
        self.asked = steps
        s = self.sched = self._fresh()
        self.T = int(config.get("num_train_timesteps", 1000))
        self.order = int(getattr(s, "order", 1))
        self.evals = list(s.timesteps)  # one per model evaluation (Heun: t0, t1, t1, t2, t2, ...)
        sig = [float(v) for v in s.sigmas]
        n = (len(self.evals) + self.order - 1) // self.order
        self.timesteps = [float(self.evals[i * self.order]) for i in range(n)]
        self.sigmas = [sig[i * self.order] for i in range(n)] + [sig[min(n * self.order, len(sig) - 1)]]
        self._sigma_of = {float(t): sig[k] for k, t in enumerate(self.evals)}
        self.abars = [schedule.flow_abar(v) for v in self.sigmas[:-1]] + [1.0]
        # the flow pipelines start from unit noise whatever the first sigma (1 for Euler's, 0.997 for a
        # solver's flow sigmas): the variance-preserving state is that noise over the first scale
        self.init_scale = 1 / schedule.flow_scale(self.sigmas[0])
        # the flow Euler step (deterministic: stochastic_sampling draws from no per-sample stream we hand it)
        self.can_redo = cls.__name__ in SEEKABLE and not s.config.get("stochastic_sampling", False)
        self.takes = set(inspect.signature(s.step).parameters)

    def _fresh(self) -> Any:
        try:
            s = self.cls.from_config(self.config, **self.overrides)
            s.set_timesteps(self.n_request, **self.set_kwargs)
        except (ValueError, TypeError, AssertionError, IndexError) as e:
            raise RuleError(f"{self.what}: {e}") from None
        return s

    def sigma(self, t: int | float) -> float:
        if t < 0:
            return 0.0
        got = self._sigma_of.get(float(t))
        return got if got is not None else float(t) / self.T

    def abar(self, t: int | float) -> float:
        return 1.0 if t < 0 else schedule.flow_abar(self.sigma(t))

    def step(self, ctx: Any, i: int, x: Tensor, evaluate: Evaluate) -> StepOutput:
        s, c = self.sched, x.shape[1]
        sample = x * schedule.flow_scale(self.sigmas[i])
        kwargs = self._kwargs(ctx)
        if self.can_redo:  # step i from wherever the walk was (time travel steps again from an earlier one)
            s._step_index = i * self.order
        x0 = eps0 = None
        for k in self._evals_of(i):
            t = self.evals[k]
            est = evaluate(sample, float(t))
            eps, x0k = est[:, :c], est[:, c: 2 * c]
            if eps0 is None:
                eps0, x0 = eps, x0k
            sample = s.step(eps - x0k, t, sample, return_dict=True, **kwargs).prev_sample
        return StepOutput(sample / schedule.flow_scale(self.sigmas[i + 1]), x0, eps0)


SPACINGS = ("linspace", "leading", "trailing")


def _spacing(text: str) -> str:
    if text not in SPACINGS:
        raise ValueError(f"must be one of {', '.join(SPACINGS)}")
    return text


TYPE_NAMES[_spacing] = "str"

SIGMA_PARAMS = (
    Param("karras", to_bool, False, "Karras et al. (2022) sigma spacing"),
    Param("exponential", to_bool, False, "exponential sigma spacing"),
    Param("beta", to_bool, False, "beta sigma spacing (Lee et al. 2024, alpha = beta = 0.6; needs scipy)"),
)
SPACING_PARAM = Param("spacing", _spacing, None, "timestep spacing: linspace, leading or trailing "
                                                 "(default: the scheduler's)")
SIGMA_KEYS = {"karras": "use_karras_sigmas", "exponential": "use_exponential_sigmas", "beta": "use_beta_sigmas",
              "spacing": "timestep_spacing"}


def check_sigma_spacing(rule: str, args: dict[str, Any]) -> None:
    """One sigma spacing at a time, and beta's only with scipy (diffusers imports it to make the spacing):
    refused when the rule is made, before any weights load, naming what to do."""
    asked = [k for k in ("karras", "exponential", "beta") if args.get(k)]
    if len(asked) > 1:
        raise RuleError(f"rule {rule!r}: {' and '.join(asked)} are sigma spacings; choose one")
    if "beta" in asked:
        import importlib.util

        if importlib.util.find_spec("scipy") is None:
            raise RuleError(f"rule {rule!r}: beta spacing needs scipy (diffusers makes it with scipy.stats): "
                            "pip install scipy, or choose karras or exponential")


class Generic(DiffusersRule):
    """``diffusers:CLASS,key=value,...``: any diffusers scheduler by class name, config entries as args."""

    name = "diffusers"
    help = ("Any diffusers scheduler by class name, e.g. diffusers:DPMSolverSinglestepScheduler,solver_order=3; "
            "key=value pairs override its config (numbers, true/false, or text).")
    params = (Param("cls", str, help="diffusers scheduler class name"),)

    def __init__(self, **args: Any):
        super().__init__(**args)
        self.scheduler = args["cls"]
        cls = scheduler_class(self.scheduler)
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
        # a FlowMatch scheduler steps flow models only; a solver that takes flow sigmas, either kind
        self.formulations = ("flow",) if self.scheduler.startswith("FlowMatch") else \
            ("vp", "flow") if "use_flow_sigmas" in accepted else ("vp",)
        if "flow" in self.formulations:  # its flow variant is itself: a FlowMatch class, or a solver on flow sigmas
            self.flow_scheduler = self.scheduler
            self.flow_fixed = {} if self.scheduler.startswith("FlowMatch") else dict(FLOW_SOLVER)
        unknown = sorted(set(args.get("config", {})) - accepted)
        if unknown:
            raise RuleError(f"rule 'diffusers': {self.scheduler} has no config entry "
                            f"{', '.join(map(repr, unknown))} (it has: {', '.join(sorted(accepted))})")

    formulations = ("vp", "flow")

    def overrides(self) -> dict[str, Any]:
        return dict(self.args.get("config", {}))

    def overrides_flow(self) -> dict[str, Any]:
        return self.overrides()


# a diffusers solver's flow variant: flow sigmas (shifted by the model's own shift) and velocity predictions
FLOW_SOLVER = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}


def literal(text: str) -> Any:
    """A ``key=value`` value for a diffusers config: int, float, true/false/none, or the text itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            value = conv(text)
        except ValueError:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{text!r} is not a finite number")
        return value
    return text
