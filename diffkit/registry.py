"""The plugin manager: built-in and third-party plugins load through the entry-point group ``diffkit``.

Set ``DIFFKIT_DISABLE_PLUGIN_AUTOLOAD=1`` to load only diffkit's own built-ins.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from typing import Any

import pluggy

from diffkit import hookspecs
from diffkit.errors import RunFailure, UserError
from diffkit.backends.base import BackendInfo
from diffkit.syntax import SpecError, bind, keyed, parse
from diffkit.technique import Technique

GROUP = "diffkit"
DISABLE_ENV = "DIFFKIT_DISABLE_PLUGIN_AUTOLOAD"


class PluginError(RunFailure):
    """A plugin failed; the message starts with the plugin's name."""


class UnknownName(UserError, LookupError):
    """An unknown technique, step rule, view or backend; the message lists what is installed."""


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    eps = list(importlib.metadata.entry_points(group=GROUP))
    if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
        eps = [ep for ep in eps if ep.dist is not None and ep.dist.name == "diffkit"]
    if not any(ep.dist is not None and ep.dist.name == "diffkit" for ep in eps):
        raise PluginError("diffkit's built-in plugins are not registered: install the package (pip install -e .)")
    return eps


@functools.lru_cache(maxsize=None)
def manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with every installed plugin module registered."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    seen = set()
    for ep in sorted(_entry_points(), key=lambda e: (e.dist.name != "diffkit" if e.dist else True, e.name)):
        if ep.value in seen:  # the same package installed twice (editable + site) lists it twice
            continue
        seen.add(ep.value)
        try:
            plugin = ep.load()
        except Exception as e:
            raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {e}") from e
        pm.register(plugin, name=ep.name)
    check_pending(pm)
    return pm


def check_pending(pm: pluggy.PluginManager) -> None:
    """pluggy's ``check_pending()``, as pytest calls it: a hook implementation no spec declares (a
    misspelled ``diffkit_after_stepp``) would never be called, so it is an error naming the plugin and the
    hooks there are, not silence."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        declared = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith(f"{GROUP}_")))
        name = pm.get_name(e.plugin) or repr(e.plugin)
        who = name if name.startswith("technique ") else f"plugin {name!r}"
        raise PluginError(f"{who} implements a hook diffkit does not declare, which would never be called "
                          f"({e}); the hooks are: {declared}") from None


def _collect(hook: str, what: str) -> dict[str, Any]:
    pm = manager()
    out: dict[str, Any] = {}
    for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):
        name = pm.get_name(impl.plugin)
        try:
            items = impl.function() or []
        except Exception as e:
            raise PluginError(f"plugin {name!r}: {hook} raised {type(e).__name__}: {e}") from e
        for item in items:
            if item.name in out:
                raise PluginError(f"plugin {name!r}: {what} {item.name!r} is already declared")
            out[item.name] = item
    return out


@functools.lru_cache(maxsize=None)
def techniques() -> dict[str, type[Technique]]:
    """Every installed technique by name."""
    return _collect("diffkit_techniques", "technique")


@functools.lru_cache(maxsize=None)
def views() -> dict[str, Any]:
    """Every installed view (a ``View``, or a ``ViewKind`` taking arguments) by name, each checked to
    declare its parts truthfully (views.check_view; a kind with its default arguments, at 64 pixels)."""
    from diffkit.views import ViewKind, Warp, check_view, check_warp

    def checked(view: Any, size: int) -> None:
        (check_warp if isinstance(view, Warp) else check_view)(view, size)

    table = _collect("diffkit_views", "view")
    for item in table.values():
        try:
            if not isinstance(item, ViewKind):
                checked(item, 16)
            elif not any(p.required for p in item.params):
                checked(item.make(), 64)
        except ValueError as e:
            raise PluginError(str(e)) from None
    return table


@functools.lru_cache(maxsize=None)
def factors() -> dict[str, Any]:
    """Every installed factor (factorized diffusion's components) by name."""
    return _collect("diffkit_factors", "factor")


def get_factor(spec: str) -> tuple[Any, dict[str, Any]]:
    """A factor and its bound arguments from a spec: ``low_pass``, ``low_pass:sigma=1,kernel=9``, ``scale:15``."""
    name, args = parse(spec)
    table = factors()
    if name not in table:
        raise UnknownName(f"unknown factor {name!r}; available: {', '.join(sorted(table))}")
    return table[name], bind(table[name], args, "factor")


@functools.lru_cache(maxsize=None)
def backends() -> dict[str, BackendInfo]:
    """Every installed backend by name."""
    return _collect("diffkit_backends", "backend")


@functools.lru_cache(maxsize=None)
def samplers() -> dict[str, Any]:
    """Every installed sampler (step rule class) by name."""
    return _collect("diffkit_samplers", "rule")


def get_view(spec: str) -> Any:
    """A view by its spec: a name (``flip``), or a kind with arguments (``patch_permute:16,seed=3``, the
    arguments read as a hook's are); unknown names and bad arguments raise clear errors."""
    from diffkit.views import SizeError, ViewKind, Warp, check_view, check_warp

    name, args = parse(spec)
    table = views()
    if name not in table:
        raise UnknownName(f"unknown view {name!r}; available: {', '.join(sorted(table))}")
    item = table[name]
    if not isinstance(item, ViewKind):
        if args:
            raise SpecError(f"view {name!r} takes no arguments, got {spec!r}")
        return item
    kwargs = bind(item, args, "view")
    try:
        view = item.make(**kwargs)
        if args:  # a kind's defaults were checked at registration
            try:
                (check_warp if isinstance(view, Warp) else check_view)(view, 64)
            except SizeError:  # it takes other sizes only (a file's permutation): checked where it is used
                pass
    except ValueError as e:
        raise SpecError(f"view {name!r}: {e}") from None
    return view


def with_declared_defaults(request: dict[str, Any]) -> dict[str, Any]:
    """A recorded request (``run.json``'s) with every technique's and the sampler's parameters it does not
    record filled in at their declared defaults: what today's code records for the same command. A
    parameter is only ever added with a default that keeps the old behaviour, so a run begun before it
    was added (an interrupted run resumed after an upgrade) is the same command."""
    def fill(entry: Any, table: dict[str, Any]) -> Any:
        cls = table.get(entry.get("name")) if isinstance(entry, dict) else None
        if cls is None or not isinstance(entry.get("args"), dict):
            return entry
        args = dict(entry["args"])
        for p in cls.params:
            if p.name not in args and not p.required:
                args[p.name] = p.default
        return {**entry, "args": args}

    out = dict(request)
    if isinstance(out.get("hooks"), list):
        out["hooks"] = [fill(h, techniques()) for h in out["hooks"]]
    if isinstance(out.get("sampler"), dict):
        out["sampler"] = fill(out["sampler"], samplers())
    return out


def default_backend() -> str:
    """The backend a run uses when it names none: the first declared ``default=True`` (diffkit's own
    plugins load first), else the first installed."""
    table = backends()
    return next((n for n, info in table.items() if info.default), next(iter(table)))


def get_backend(name: str) -> BackendInfo:
    try:
        return backends()[name]
    except KeyError:
        raise UnknownName(f"unknown backend {name!r}; available: {', '.join(sorted(backends()))}") from None


def make_technique(spec: str, **overrides: Any) -> Technique:
    """``'cfg:7'`` -> a configured technique instance; unknown names and bad args raise clear errors.

    ``overrides`` replace parameters the spec gave (or left at their default), as values or text
    (a ``--sweep``: ``make_technique("sdedit:image=a.png", strength="0.5")``).
    """
    name, args = parse(spec)
    cls = _technique_class(name)
    kwargs = bind(cls, [a for a in keyed(cls, args) if a[0] not in overrides])
    kwargs.update(read_args(cls, overrides))
    return _build(cls, kwargs)


def technique_from(name: str, args: dict[str, Any]) -> Technique:
    """A technique from its name and arguments as a run recorded them (``run.json``'s ``hooks``)."""
    cls = _technique_class(name)
    kwargs = read_args(cls, args)
    for p in cls.params:
        if p.name not in kwargs:
            if p.required:
                raise SpecError(f"technique {name!r}: missing required parameter {p.name!r} ({p.help})")
            kwargs[p.name] = list(p.default) if p.multiple else p.default
    return _build(cls, kwargs)


def read_args(cls: Any, values: dict[str, Any], what: str = "technique") -> dict[str, Any]:
    """Values (typed, or text) for ``cls``'s declared params, each read and checked by its ``Param``."""
    params = {p.name: p for p in cls.params}
    out = {}
    for key, value in values.items():
        if key not in params:
            raise SpecError(f"{what} {cls.name!r}: unknown parameter {key!r} (parameters: {', '.join(params) or 'none'})")
        p = params[key]
        try:
            out[key] = [p.read(v) for v in value] if p.multiple and isinstance(value, (list, tuple)) else p.read(value)
        except ValueError as e:
            raise SpecError(f"{what} {cls.name!r}: parameter {key!r} {e}") from None
        if p.multiple and not isinstance(out[key], list):
            out[key] = [out[key]]
    return out


def _technique_class(name: str) -> type[Technique]:
    table = techniques()
    if name not in table:
        raise UnknownName(f"unknown technique {name!r}; available: {', '.join(sorted(table))}")
    return table[name]


def _build(cls: type[Technique], kwargs: dict[str, Any]) -> Technique:
    try:
        return cls(**kwargs)
    except (SpecError, UnknownName):
        raise
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise SpecError(f"technique {cls.name!r}: {e}") from e


DEFAULT_SAMPLER = "ddpm"


def make_sampler(spec: str | None = None, **overrides: Any) -> Any:
    """``'ddim:eta=0.5'`` -> a configured step rule (None: ``ddpm``); unknown names and bad args raise clear errors.

    ``diffusers:CLASS,key=value,...`` takes any ``key=value`` as an entry of the scheduler's config.
    ``overrides`` replace declared parameters, as :func:`make_technique`'s do.
    """
    from diffkit.rules import RuleError, literal

    name, args = parse(spec or DEFAULT_SAMPLER)
    table = samplers()
    if name not in table:
        raise UnknownName(f"unknown rule {name!r}; available: {', '.join(sorted(table))}")
    cls = table[name]
    config = {}
    if name == "diffusers":
        declared = {p.name for p in cls.params}
        for key, text in [a for a in args if a[0] is not None and a[0] not in declared]:
            try:
                config[key] = literal(text)
            except ValueError as e:
                raise SpecError(f"rule 'diffusers': {key}: {e}") from None
        args = [a for a in args if a[0] is None or a[0] in declared]
    kwargs = bind(cls, [a for a in keyed(cls, args) if a[0] not in overrides], "rule")
    kwargs.update(read_args(cls, overrides, "rule"))
    if config:
        kwargs["config"] = config
    try:
        return cls(**kwargs)
    except (SpecError, UnknownName):
        raise
    except (RuleError, ValueError, TypeError) as e:
        raise SpecError(f"rule {name!r}: {e}" if not str(e).startswith("rule") else str(e)) from e


def check_together(techniques: list[Technique]) -> None:
    """Refuse (SpecError naming both) two techniques of one run that implement the same first-result
    hook (``diffkit_initial_state``: two SDEdits): only the first one's answer would count, and the other
    would be ignored without a word."""
    pm = pluggy.PluginManager(GROUP)  # the techniques' own hook implementations, each matched to a spec
    pm.add_hookspecs(hookspecs)
    for k, tech in enumerate(techniques):
        pm.register(tech, name=f"technique {tech.name!r}" + (f" (the {k + 1}th)" if k else ""))
    check_pending(pm)
    for hook, caller in vars(manager().hook).items():
        if caller.spec is None or not caller.spec.opts.get("firstresult"):
            continue
        who = [t.name for t in techniques if hasattr(getattr(t, hook, None), f"{GROUP}_impl")]
        if len(who) > 1:
            both = f"two {who[0]!r} techniques" if who[0] == who[1] else f"techniques {who[0]!r} and {who[1]!r}"
            raise SpecError(f"{both} both implement {hook}, where only the first answer counts: the second "
                            f"would be ignored; use one of them")


RUN_HOOKS = ("diffkit_initial_state", "diffkit_after_step", "diffkit_observe")


class RunHooks:
    """One run's hooks: its own pluggy ``PluginManager`` (as pytest keeps one per config) holding this
    run's techniques, first given first, after the installed plugin modules that implement a run hook
    themselves (an installed observer). Nothing is registered process-wide, so runs interleaved in one
    process (a notebook, the UI serving two pages) never see each other's techniques. Hooks are called
    through pluggy's own caller (``relay.hook.diffkit_after_step(ctx=..., step=...)``): ``tryfirst``,
    ``trylast`` and ``wrapper=True`` behave as pluggy documents, and ``firstresult`` hooks return the
    first answer.
    """

    def __init__(self, techniques: list[Technique]):
        self.pm = pm = pluggy.PluginManager(GROUP)
        pm.add_hookspecs(hookspecs)
        installed = manager()
        for plugin in installed.get_plugins():
            if any(impl.plugin is plugin for h in RUN_HOOKS for impl in getattr(installed.hook, h).get_hookimpls()):
                pm.register(plugin, name=installed.get_name(plugin))
        counts: dict[str, int] = {}
        for tech in techniques:
            counts[tech.name] = counts.get(tech.name, 0) + 1
        for k, tech in reversed(list(enumerate(techniques))):  # pluggy calls the last registered first
            pm.register(tech, name=f"technique:{tech.name}" + (f"#{k}" if counts[tech.name] > 1 else ""))
        for h in RUN_HOOKS:
            for impl in getattr(pm.hook, h).get_hookimpls():
                if not (impl.wrapper or impl.hookwrapper):
                    impl.function = _naming(impl.function, pm.get_name(impl.plugin) or type(impl.plugin).__name__, h)
        self.hook = pm.hook

    def has(self, hook: str) -> bool:
        """Whether any plugin of this run implements ``hook``."""
        return bool(getattr(self.pm.hook, hook).get_hookimpls())


def _naming(function: Any, name: str, hook: str) -> Any:
    """``function``, re-raising its failures as a PluginError that names the plugin. Written by hand:
    pluggy's caller re-raises an implementation's exception as is, without saying whose it was."""

    @functools.wraps(function)
    def named(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as e:
            who = f"technique {name.split(':', 1)[1]!r}" if name.startswith("technique:") else f"plugin {name!r}"
            raise PluginError(f"{who} failed in {hook}: {type(e).__name__}: {e}") from e
    return named
