"""``--hook name:ARGS`` specs: positional and ``key=value`` args, quoted strings with commas and colons."""

from __future__ import annotations

import re
from typing import Any

from diffkit.errors import UserError
from typing import TYPE_CHECKING

from diffkit.params import Param

if TYPE_CHECKING:  # annotations only: the NAME:ARGS syntax needs no technique
    from diffkit.technique import Technique


class SpecError(UserError):
    """A malformed or ill-typed hook spec; the message names the hook and the parameter."""


def split_args(text: str) -> list[tuple[str | None, str]]:
    """``'"a, b",k=v'`` -> ``[(None, 'a, b'), ('k', 'v')]``. Quotes (' or ") protect commas, colons, ``=``."""
    args: list[tuple[str | None, str]] = []
    if not text.strip():
        return args
    i, n = 0, len(text)
    while True:
        key = None
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", text[i:])
        if m:
            key, i = m.group(1), i + m.end()
        while i < n and text[i] == " ":
            i += 1
        if i < n and text[i] in "\"'":
            q, j, buf = text[i], i + 1, []
            while j < n and text[j] != q:
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(text[j])
                j += 1
            if j >= n:
                raise SpecError(f"unterminated quote in {text!r}")
            value, i = "".join(buf), j + 1
            while i < n and text[i] == " ":
                i += 1
            if i < n and text[i] != ",":
                raise SpecError(f"unexpected {text[i:]!r} after quoted value in {text!r}")
        else:
            j = text.find(",", i)
            j = n if j < 0 else j
            value, i = text[i:j].strip(), j
        args.append((key, value))
        if i >= n:
            return args
        i += 1  # the comma


def parse(spec: str) -> tuple[str, list[tuple[str | None, str]]]:
    """``'name:ARGS'`` -> ``(name, args)``; the name is everything before the first colon."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise SpecError(f"spec {spec!r} has no name (expected name or name:ARGS)")
    try:
        return name, split_args(rest)
    except SpecError as e:
        raise SpecError(f"technique {name!r}: {e}") from None


def bind(cls: type[Technique], args: list[tuple[str | None, str]], what: str = "technique") -> dict[str, Any]:
    """Match parsed args to the technique's (or sampler's) params, converting types; errors name it and the parameter."""
    params = {p.name: p for p in cls.params}
    out: dict[str, Any] = {}

    def put(p: Param, text: str) -> None:
        try:
            value = p.type(text)
        except (ValueError, TypeError, OverflowError) as e:
            raise SpecError(f"{what} {cls.name!r}: parameter {p.name!r} expects {p.type_name}, got {text!r} ({e})") from None
        try:
            p.check(value)
        except ValueError as e:
            raise SpecError(f"{what} {cls.name!r}: parameter {p.name!r} {e}") from None
        if p.multiple:
            out.setdefault(p.name, []).append(value)
        elif p.name in out:
            raise SpecError(f"{what} {cls.name!r}: parameter {p.name!r} given twice")
        else:
            out[p.name] = value

    for key, text in keyed(cls, args):
        if key is None:
            raise SpecError(f"{what} {cls.name!r}: too many positional arguments at {text!r} "
                            f"(parameters: {', '.join(params) or 'none'})")
        if key not in params:
            raise SpecError(f"{what} {cls.name!r}: unknown parameter {key!r} (parameters: {', '.join(params) or 'none'})")
        put(params[key], text)
    for p in cls.params:
        if p.name not in out:
            if p.required:
                raise SpecError(f"{what} {cls.name!r}: missing required parameter {p.name!r} ({p.help})")
            out[p.name] = list(p.default) if p.multiple else p.default
    return out


def keyed(cls: type[Technique], args: list[tuple[str | None, str]]) -> list[tuple[str | None, str]]:
    """Name the positional args (``cfg:3`` -> ``cfg:scale=3``): each fills the next parameter not yet given
    (a ``multiple`` one keeps taking them). Positional args beyond the last parameter stay unnamed."""
    positional, pos, seen, out = list(cls.params), 0, set(), []
    for key, text in args:
        if key is None:
            while pos < len(positional) and positional[pos].name in seen and not positional[pos].multiple:
                pos += 1
            if pos >= len(positional):
                out.append((None, text))  # bind() reports it
                continue
            key = positional[pos].name
            if not positional[pos].multiple:
                pos += 1
        seen.add(key)
        out.append((key, text))
    return out


def quote(value: Any) -> str:
    """Format one value so that :func:`split_args` reads it back unchanged."""
    text = str(value)
    if text == "" or any(c in text for c in ",\"'=\\") or text != text.strip():
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def format_spec(name: str, args: list[tuple[str | None, Any]]) -> str:
    """Inverse of :func:`parse` (up to quoting): ``name:a,k=v``."""
    body = ",".join((f"{k}=" if k else "") + quote(v) for k, v in args)
    return f"{name}:{body}" if args else name
