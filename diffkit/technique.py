"""How a technique declares itself: name, kind, parameters, supported backends; and its three kinds."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from torch import Tensor

from diffkit.state import Context, Query

REQUIRED: Any = object()


def to_bool(text: str) -> bool:
    v = text.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


TYPE_NAMES: dict[Callable[[str], Any], str] = {int: "int", float: "float", str: "str", to_bool: "bool", Path: "path"}


@dataclass(frozen=True)
class Param:
    """One parameter of a technique: ``type`` converts the spec's text; ``multiple`` collects repeats.

    Numbers (``int``, ``float``) must declare ``range=(low, high)``, both inclusive: a value outside it,
    and NaN or inf for a float, is refused before any model loads, with the range in the message.
    """

    name: str
    type: Callable[[str], Any] = str
    default: Any = REQUIRED
    help: str = ""
    multiple: bool = False
    range: tuple[float, float] | None = None
    # What a file-valued parameter holds, for UIs (`diffkit ui`): "image" (an upload), "sketch" (an
    # upload or a drawing), "mask" (painted over this technique's "image"), "path" (a server path: a
    # browser may only pick from the paths the server allows). "" for plain values.
    kind: str = ""

    @property
    def numeric(self) -> bool:
        return self.type in (int, float)

    def range_text(self) -> str:
        lo, hi = self.range or (-math.inf, math.inf)
        kind = "an integer" if self.type is int else "a finite number"
        return f"{kind} in {_num(lo)}..{_num(hi)}"

    def check(self, value: Any) -> None:
        """Raise ValueError (naming the valid range) for a number this parameter cannot take."""
        if not self.numeric or value is None:
            return
        lo, hi = self.range or (-math.inf, math.inf)
        if not (math.isfinite(value) and lo <= value <= hi):
            raise ValueError(f"must be {self.range_text()}, got {value!r}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def type_name(self) -> str:
        name = TYPE_NAMES.get(self.type, getattr(self.type, "__name__", "value"))
        return f"{name}..." if self.multiple else name


# Guidance limited to an interval of noise levels (Kynkaanniemi et al. 2024), shared by cfg and autoguide.
INTERVAL = (
    Param("lo", float, 0.0, "guide only from this fraction t/T of the noise schedule up", range=(0.0, 1.0)),
    Param("hi", float, 1.0, "guide only up to this fraction t/T of the noise schedule", range=(0.0, 1.0)),
)


def check_interval(args: dict[str, Any]) -> None:
    """Fill in ``lo``/``hi`` defaults and refuse an empty interval (ValueError)."""
    args.setdefault("lo", 0.0)
    args.setdefault("hi", 1.0)
    if args["lo"] > args["hi"]:
        raise ValueError(f"the guidance interval lo={args['lo']:g}..hi={args['hi']:g} is empty: give lo <= hi")


def interval_timesteps(ctx: Context, args: dict[str, Any]) -> tuple[float, float]:
    """``(lo T, hi T)``: the timesteps between which a query is guided."""
    T = len(ctx.alphas_cumprod)
    return args["lo"] * T, args["hi"] * T


class Technique:
    """Base of every technique. Subclasses set the class attributes and take their params as kwargs.

    ``setup(ctx)`` runs once per stage before sampling (encode extra prompts, load images).
    """

    name: ClassVar[str]
    kind: ClassVar[str]  # "combiner" | "projector" | "observer"
    help: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    backends: ClassVar[tuple[str, ...]] = ("*",)  # names of supported backends, "*" for all

    def __init__(self, **args: Any):
        self.args = args

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.args.items())})"

    def setup(self, ctx: Context) -> None:
        pass

    @classmethod
    def supports(cls, backend: str) -> bool:
        return "*" in cls.backends or backend in cls.backends


class Combiner(Technique):
    """Changes how the estimate is made: one query -> several (``expand``) -> one estimate (``reduce``).

    Nest in the order given (first outermost). Every expanded query of every combiner goes into the
    same batched model call.

    ``reduce`` combines noise only (``[N x eps_channels x H x W]`` each). What a backend predicts
    besides the noise (IF's learned variance) is not an image, so no combiner touches it: diffkit maps
    each branch's back through the pixel rearrangements of the views its query added and combines
    them by ``extra_channels``: ``"mean"`` over the branches, or ``"first"`` (the first branch's).
    """

    kind = "combiner"
    extra_channels: ClassVar[str] = "mean"

    def expand(self, query: Query) -> list[Query]:
        raise NotImplementedError

    def reduce(self, query: Query, estimates: list[Tensor]) -> Tensor:
        """The branches' noise estimates, in ``expand``'s order -> one ``[N x eps_channels x H x W]``."""
        raise NotImplementedError


class Projector(Technique):
    """Changes the state: implements ``diffkit_initial_state`` and/or ``diffkit_after_step`` (hookspecs)."""

    kind = "projector"


class Observer(Technique):
    """Sees every step and changes nothing: implements ``diffkit_observe``."""

    kind = "observer"
