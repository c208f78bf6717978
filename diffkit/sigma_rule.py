"""A step rule written as k-diffusion writes a sampler: one short function in sigma space.

    from diffkit.sigma_rule import sigma_rule

    @sigma_rule("hand_euler", help="Euler's method in sigma space (Karras et al. 2022, Algorithm 1, no churn).")
    def hand_euler(x, sigma, sigma_next, denoise):
        d = (x - denoise(x, sigma)) / sigma      # dx/dsigma (Karras et al. 2022, eq. 3)
        return x + d * (sigma_next - sigma)

``x`` is k-diffusion's state, ``x0 + sigma eps``; ``denoise(x, sigma)`` is the clean-image estimate
(every technique of the run included, one batched model call); the function returns the state at
``sigma_next`` (0 after the last step). The adapter converts to and from diffkit's variance-preserving
state (``x_vp = sqrt(abar) x``, ``sigma = sqrt((1 - abar) / abar)``), walks the backend's (or the
run's ``--steps``/``--stride``/``--timesteps``) strided timesteps, and declares the result as a
:class:`~diffkit.rules.StepRule`, so it is registered like any other through ``diffkit_samplers``.

A rule that draws noise takes a ``noise`` argument: ``noise()`` is a unit normal ``[N x C x H x W]``
from each sample's own generator (so a batch equals single runs). Parameters are declared as
``Param``s and passed to the function as keywords (``--sampler hand_euler_a:eta=0.5``).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Sequence

from torch import Tensor

from diffkit import schedule
from diffkit.params import Param
from diffkit.rules import RuleError, StepOutput, Stepper, StepRule, timesteps_for

# the function's shape: (x, sigma, sigma_next, denoise, [noise], **params) -> x at sigma_next
SigmaStep = Callable[..., Tensor]


class SigmaStepper(Stepper):
    """One walk of a sigma-space function over strided timesteps. No history: it can step again from an
    earlier index (RePaint) when the function keeps none itself."""

    can_redo = True

    def __init__(self, fn: SigmaStep, backend: Any, timesteps: Sequence[int], args: dict[str, Any]):
        self.fn, self.args = fn, args
        self.alphas_cumprod = backend.alphas_cumprod
        self.timesteps = list(timesteps)
        self.abars = [schedule.abar_at(self.alphas_cumprod, t) for t in self.timesteps] + [1.0]
        self.sigmas = [math.sqrt((1 - a) / a) for a in self.abars]  # the last is 0: the clean image
        self._t_of = {s: t for s, t in zip(self.sigmas, self.timesteps)}
        # k-diffusion starts from x = sigma_max * noise, not x0 + sigma_max * noise with x0 ~ N(0, 1)
        self.init_scale = math.sqrt(1 - self.abars[0])
        self.wants_noise = "noise" in inspect.signature(fn).parameters

    def step(self, ctx: Any, i: int, x: Tensor, evaluate: Any) -> Any:
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        seen: list[tuple[Tensor, Tensor]] = []

        def denoise(xk: Tensor, s: float) -> Tensor:
            t = self._t_of.get(float(s))
            if t is None:
                raise RuleError(f"rule {self.fn.__name__!r} asked for the estimate at sigma {float(s):g}, which is "
                                "not one of the walk's noise levels (each step's sigma and sigma_next)")
            abar = 1.0 / (1.0 + float(s) ** 2)
            eps = evaluate(xk * math.sqrt(abar), t)[:, : xk.shape[1]]  # noise channels only
            x0 = xk - float(s) * eps
            seen.append((x0, eps))
            return x0

        extra = {"noise": lambda: ctx.randn()} if self.wants_noise else {}
        x_next = self.fn(x / math.sqrt(self.abars[i]), sigma, sigma_next, denoise, **extra, **self.args)
        if not seen:
            raise RuleError(f"rule {self.fn.__name__!r} made a step without calling denoise")
        x0, eps = seen[0]  # the estimate at this step's own noise level
        return StepOutput(x_next * math.sqrt(self.abars[i + 1]), x0, eps)


def sigma_rule(name: str, help: str = "", params: Sequence[Param] = ()) -> Callable[[SigmaStep], type[StepRule]]:
    """Declare ``fn(x, sigma, sigma_next, denoise, [noise], **params) -> x_next`` as the step rule ``name``:
    the decorated name is the :class:`~diffkit.rules.StepRule` class a plugin returns from
    ``diffkit_samplers``."""

    def declare(fn: SigmaStep) -> type[StepRule]:
        def plan(self: StepRule, backend: Any, steps: int | None = None, timesteps: Sequence[int] | None = None,
                 stride: int | None = None) -> Stepper:
            self.check_formulation(backend.name, backend.formulation)  # k-diffusion's sigma is infinite at flow's 1
            return SigmaStepper(fn, backend, timesteps_for(backend, steps, stride, timesteps), dict(self.args))

        return type(fn.__name__, (StepRule,), {"name": name, "help": help or (fn.__doc__ or "").strip(),
                                               "params": tuple(params), "plan": plan, "function": staticmethod(fn),
                                               "redoes": lambda self, formulation: SigmaStepper.can_redo,
                                               "__module__": fn.__module__, "__doc__": fn.__doc__})

    return declare
