"""Declared parameters: what a technique, a sampler or a backend takes, as one ``Param`` each.

The declaration is the single source for parsing (``--hook`` specs, ``--backend-option``), checking
(types, ranges, choices: refused before any model loads), listing (``diffkit hooks``, ``diffkit
backends``) and the UI's forms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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
    """One parameter of a technique, sampler or backend: ``type`` converts text; ``multiple`` collects repeats.

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
    # The values a str parameter may take, when they are a closed set (a UI shows a dropdown); others are refused.
    choices: tuple[str, ...] = ()
    # A backend's option that is also a flag of its own, --NAME (--NAME/--no-NAME for a bool), on every
    # command that takes a backend, beside -O NAME=VALUE: the command line adds it from this declaration.
    flag: bool = False
    # Values a form offers for a "path" parameter besides what the server allows (shipped models, hub ids).
    offers: tuple[str, ...] = ()

    @property
    def numeric(self) -> bool:
        return self.type in (int, float)

    def range_text(self) -> str:
        lo, hi = self.range or (-math.inf, math.inf)
        kind = "an integer" if self.type is int else "a finite number"
        return f"{kind} in {_num(lo)}..{_num(hi)}"

    def check(self, value: Any) -> None:
        """Raise ValueError (naming the valid range or choices) for a value this parameter cannot take."""
        if self.choices and value is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}, got {value!r}")
        if not self.numeric or value is None:
            return
        lo, hi = self.range or (-math.inf, math.inf)
        if not (math.isfinite(value) and lo <= value <= hi):
            raise ValueError(f"must be {self.range_text()}, got {value!r}")

    def read(self, value: Any) -> Any:
        """A value as given (text from a command line or a form, or already typed from Python) -> this
        parameter's type, checked; ValueError says what was expected."""
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = self.type(value)
            except (ValueError, TypeError, OverflowError) as e:
                raise ValueError(f"expects {self.type_name}, got {value!r} ({e})") from None
        elif self.type is to_bool and not isinstance(value, bool):
            raise ValueError(f"expects true or false, got {value!r}")
        elif self.type is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"expects an integer, got {value!r}")
        elif self.type is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"expects a number, got {value!r}")
        elif self.type is float:
            value = float(value)
        elif self.type is Path:
            value = Path(value)
        self.check(value)
        return value

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def type_name(self) -> str:
        name = TYPE_NAMES.get(self.type, getattr(self.type, "__name__", "value"))
        return f"{name}..." if self.multiple else name
