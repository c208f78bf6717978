"""Every extension point of diffkit: the table of contents.

Hooks are called with keyword arguments only; an implementation takes just the arguments it needs
(pluggy matches them by name). Two groups:

Registration hooks, called on every installed plugin module (entry-point group ``diffkit``):
``diffkit_techniques``, ``diffkit_views``, ``diffkit_factors``, ``diffkit_backends``, ``diffkit_samplers``.

Run hooks, called on the techniques the user turned on (``--hook``), in the order given, and on
always-on plugin modules after them: ``diffkit_initial_state``, ``diffkit_after_step``,
``diffkit_observe``.

Combiners extend the estimate through two methods of :class:`diffkit.technique.Combiner`,
``expand`` and ``reduce``, rather than through a hook: their nesting order is the user's, which a
flat hook call cannot express.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from torch import Tensor

    from diffkit.backends.base import BackendInfo
    from diffkit.factors import Factor
    from diffkit.rules import StepRule
    from diffkit.state import Context, Step, StepState
    from diffkit.technique import Technique
    from diffkit.views import View

hookspec = pluggy.HookspecMarker("diffkit")
hookimpl = pluggy.HookimplMarker("diffkit")


@hookspec
def diffkit_techniques() -> list[type[Technique]]:
    """Declare techniques (classes). Collected from all plugins; a name given twice is an error."""


@hookspec
def diffkit_views() -> list[View]:
    """Declare image views for anagrams: permutations (``View``, each with an exact inverse), kinds taking
    arguments (``ViewKind``) and warps that are no permutation (``Warp``: clean images only, anagram's
    reduction=x0). Collected; names must be unique."""


@hookspec
def diffkit_factors() -> list[Factor]:
    """Declare factors for factorized diffusion (linear filters of a noise estimate, ``diffkit.factors``).
    Collected; names must be unique."""


@hookspec
def diffkit_backends() -> list[BackendInfo]:
    """Declare backends by name with a loader. Collected; names must be unique."""


@hookspec
def diffkit_samplers() -> list[type[StepRule]]:
    """Declare samplers (step rules, :class:`diffkit.rules.StepRule` classes). Collected; names must be unique."""


@hookspec(firstresult=True)
def diffkit_initial_state(ctx: Context, noise: Tensor) -> tuple[Tensor, int] | None:
    """Choose where sampling starts. ``noise``: the run's first draw, ``[N x C x H x W]``.

    Return ``(x, i_start)`` to start from ``x`` at ``ctx.timesteps[i_start]`` (SDEdit), or None to
    pass. First result wins; with none, sampling starts from ``noise`` at index ``ctx.i_start``.
    """


@hookspec
def diffkit_after_step(ctx: Context, step: Step) -> None:
    """Re-impose a constraint after each step, in place: set ``step.x`` (inpainting).

    Called in order; each implementation sees the ``step.x`` left by the one before.
    """


@hookspec
def diffkit_observe(ctx: Context, state: StepState) -> None:
    """See a read-only step state after projection (progress, frames, statistics). Result ignored."""
