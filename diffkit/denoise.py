"""Denoisers: the batched model call at the core, and combiners wrapped around it.

The innermost denoiser evaluates every distinct query of a step in one model call; each combiner
expands its queries, calls the denoiser inside it once, and reduces.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import Tensor

from diffkit.backends.base import Backend
from diffkit.errors import RunFailure
from diffkit.registry import PluginError
from diffkit.schedule import eps_from_v, estimates_from_flow
from diffkit.state import Denoiser, Query
from diffkit.technique import Combiner, GuidanceTerm


class NonFiniteError(RunFailure, FloatingPointError):
    """The model returned NaN or inf."""


def batched(backend: Backend, max_batch: int | None = None, stats: dict[str, int] | None = None,
            models: dict[str, Backend] | None = None, abar: Callable[[int | float], float] | None = None,
            sigma: Callable[[int | float], float] | None = None) -> Denoiser:
    """One ``backend.predict`` call for all distinct queries (chunked only above ``max_batch`` rows).

    A query naming another model (``Query.model``, registered in ``models``) goes to that model's
    call: one call a model a step; a perturbed query (``Query.perturbation``: PAG's, SLG's) to a call of
    its own, inside ``Backend.perturbed``. ``stats`` counts ``evaluations`` (model calls) and ``rows``.
    A v-predicting model's estimate becomes noise here, each query's with the noise level ``abar(t)``
    of its state (the run's ``ctx.abar``), so everything above sees noise. A flow model's velocity
    becomes noise and clean image, ``[eps | x0]`` (``schedule.estimates_from_flow`` at the run's
    ``ctx.sigma(t)``): two blocks of ``C`` channels, each of which a combiner reduces alike.
    """

    def call(be: Backend, unique: list[Query]) -> Tensor:
        sizes = [q.x.shape[0] for q in unique]
        x = torch.cat([q.x for q in unique]) if len(unique) > 1 else unique[0].x
        # Integer timesteps as int64, a rule's fractional ones (Euler, Heun) as float32, as diffusers passes them.
        dt = torch.long if all(isinstance(q.t, int) for q in unique) else torch.float32
        t = torch.cat([torch.full((n,), q.t, dtype=dt) for q, n in zip(unique, sizes)]).to(x.device)
        conds = [q.cond.value for q in unique]
        c = None if conds[0] is None else (torch.cat(conds) if len(conds) > 1 else conds[0])
        if stats is not None:
            stats["evaluations"] = stats.get("evaluations", 0) + 1
            stats["rows"] = stats.get("rows", 0) + x.shape[0]
        if max_batch and x.shape[0] > max_batch:
            out = torch.cat([be.predict(x[i: i + max_batch], t[i: i + max_batch],
                                        None if c is None else c[i: i + max_batch])
                             for i in range(0, x.shape[0], max_batch)])
        else:
            out = be.predict(x, t, c)
        if be.prediction_type == "v_prediction":
            if abar is None:
                raise PluginError(f"backend {be.name!r} predicts v: the denoiser needs the run's abar(t)")
            k = be.sample_shape[0]
            out = torch.cat([torch.cat([eps_from_v(xq[:, :k], oq[:, :k], abar(q.t)), oq[:, k:]], dim=1)
                             for q, xq, oq in zip(unique, x.split(sizes), out.split(sizes))])
        elif be.prediction_type == "flow_prediction":
            if sigma is None:
                raise PluginError(f"backend {be.name!r} predicts a flow: the denoiser needs the run's sigma(t)")
            k = be.sample_shape[0]
            out = torch.cat([torch.cat([*estimates_from_flow(xq[:, :k], oq[:, :k], sigma(q.t)), oq[:, k:]], dim=1)
                             for q, xq, oq in zip(unique, x.split(sizes), out.split(sizes))])
        elif be.prediction_type != "epsilon":
            raise PluginError(f"backend {be.name!r}: prediction_type must be 'epsilon', 'v_prediction' or "
                              f"'flow_prediction', not {be.prediction_type!r}")
        if not torch.isfinite(out).all():
            which = "" if unique[0].model is None else f"model {unique[0].model!r}, "
            raise NonFiniteError(f"backend {be.name!r} returned NaN or inf at t={unique[0].t} in "
                                 f"{which}{_bad_branch(out, unique, sizes)}")
        return out.split(sizes)

    def denoise(queries: list[Query]) -> list[Tensor]:
        index: dict[tuple, int] = {}
        unique: list[Query] = []
        for q in queries:
            if q.key not in index:
                index[q.key] = len(unique)
                unique.append(q)
        parts: list[Tensor] = [None] * len(unique)  # type: ignore[list-item]
        # one call a model, and one more for each perturbation of it a step asks for: the backend applies a
        # perturbation to a whole call (Backend.perturbed), as diffusers' layer-skipping hooks do
        for name, perturbation in dict.fromkeys((q.model, q.perturbation) for q in unique):
            mine = [k for k, q in enumerate(unique) if q.model == name and q.perturbation == perturbation]
            be = backend if name is None else (models or {}).get(name)
            if be is None:
                raise PluginError(f"a query names model {name!r}, which no technique registered in ctx.models")
            if perturbation is None:
                got = call(be, [unique[k] for k in mine])
            else:
                with be.perturbed(perturbation):
                    got = call(be, [unique[k] for k in mine])
            for k, part in zip(mine, got):
                parts[k] = part
        return [parts[index[q.key]] for q in queries]

    return denoise


def _bad_branch(out: Tensor, unique: list[Query], sizes: list[int]) -> str:
    """Name the first branch (query) and sample whose estimate is not finite."""
    bad = (~torch.isfinite(out.flatten(1))).any(1).nonzero()[0, 0].item()
    k, start = 0, 0
    while bad >= start + sizes[k]:
        start += sizes[k]
        k += 1
    q, i = unique[k], bad - start
    label = q.cond.key[i] if i < len(q.cond.key) else None
    cond = "unconditional" if label is None else f"label {label!r}"
    view = f", view {'+'.join(q.view)}" if q.view else ""
    perturbed = f", {q.perturbation}" if q.perturbation else ""
    return f"branch {k + 1} of {len(unique)} ({cond}{view}{perturbed}), sample {i}"


class Prediction:
    """The model's own prediction from a query's estimates, and back: what a combiner whose ``space`` is
    ``"prediction"`` reduces (diffusers' guiders act on the pipeline's ``noise_pred``).

    ``epsilon``: the noise itself. ``v_prediction``: ``v = (eps - sqrt(1 - abar) x) / sqrt(abar)``, back
    ``eps = sqrt(abar) v + sqrt(1 - abar) x`` (Salimans & Ho 2022). ``flow_prediction``: the velocity
    ``v = eps - x0`` from the two blocks, back through ``schedule.estimates_from_flow`` at the query's
    sigma. ``x`` is the query's own input (its first ``k`` channels), as :func:`batched` converts."""

    def __init__(self, kind: str, k: int, abar: Callable[[int | float], float] | None = None,
                 sigma: Callable[[int | float], float] | None = None):
        self.kind, self.k, self.abar, self.sigma = kind, k, abar, sigma

    def of(self, q: Query, est: Tensor) -> Tensor:
        k = self.k
        if self.kind == "v_prediction":
            a = self.abar(q.t)
            return (est[:, :k] - math.sqrt(1 - a) * q.x[:, :k]) / math.sqrt(a)
        if self.kind == "flow_prediction":
            return est[:, :k] - est[:, k: 2 * k]
        return est[:, :k]

    def back(self, q: Query, pred: Tensor) -> Tensor:
        if self.kind == "v_prediction":
            return eps_from_v(q.x[:, : self.k], pred, self.abar(q.t))
        if self.kind == "flow_prediction":
            return torch.cat(estimates_from_flow(q.x[:, : self.k], pred, self.sigma(q.t)), dim=1)
        return pred

    def clean_of(self, q: Query, est: Tensor) -> Tensor:
        """The clean-image estimate ``x0`` of a query's estimate (what a combiner whose ``space`` is
        ``"clean"`` reduces): a flow model's second block; else ``(x - sqrt(1 - abar) eps) / sqrt(abar)``
        (DDPM eq. 15) at the query's noise level, which needs ``abar > 0``."""
        k = self.k
        if self.kind == "flow_prediction":
            return est[:, k: 2 * k]
        a = self.abar(q.t)
        if a <= 0:
            raise ValueError(f"at t={q.t} the state is pure noise (abar = 0): no clean image follows from the noise "
                             "estimate there")
        return (q.x[:, :k] - math.sqrt(1 - a) * est[:, :k]) / math.sqrt(a)

    def from_clean(self, q: Query, x0: Tensor) -> Tensor:
        """The estimate blocks a clean image ``x0`` implies at the query's state: the noise
        ``(x - sqrt(abar) x0) / sqrt(1 - abar)``; on a flow model ``[(x - (1 - sigma) x0) / sigma | x0]``."""
        x = q.x[:, : self.k]
        if self.kind == "flow_prediction":
            s = self.sigma(q.t)
            return torch.cat([(x - (1 - s) * x0) / s, x0], dim=1)
        a = self.abar(q.t)
        return (x - math.sqrt(a) * x0) / math.sqrt(1 - a)


def wrap(combiner: Combiner, inner: Denoiser, eps_channels: int, blocks: int = 1,
         prediction: Prediction | None = None) -> Denoiser:
    """``combiner`` around ``inner``: expand every query, call ``inner`` once, reduce each group.

    ``reduce`` sees the first ``eps_channels`` channels (the noise) only, and, for a flow model
    (``blocks = 2``), the next ``eps_channels`` (the clean image) in a second call: an estimate is the
    same combination of its branches' noise as of their clean images, as for any combination whose
    weights add up to one through linear views. The channels after them (IF's variance) are combined
    here by the combiner's declared ``extra_channels`` rule, each branch's first mapped back through the
    pixel rearrangements of the views its query added (never their signs).
    """
    rule = combiner.extra_channels
    if rule not in ("mean", "first"):
        raise PluginError(f"technique {combiner.name!r}: extra_channels must be 'mean' or 'first', not {rule!r}")
    if combiner.space not in ("estimate", "prediction", "clean"):
        raise PluginError(f"technique {combiner.name!r}: space must be 'estimate', 'prediction' or 'clean', not "
                          f"{combiner.space!r}")
    k = eps_channels
    end = blocks * k
    in_prediction = combiner.space == "prediction"
    in_clean = combiner.space == "clean"
    if (in_prediction or in_clean) and prediction is None:
        raise PluginError(f"technique {combiner.name!r} combines the model's prediction or clean image: the "
                          "denoiser needs the run's denoise.Prediction")

    def denoise(queries: list[Query]) -> list[Tensor]:
        with _blame(combiner, "expand"):
            groups = [combiner.expand(q) for q in queries]
        estimates = inner([q for g in groups for q in g])
        out, start = [], 0
        for q, g in zip(queries, groups):
            ests, start = estimates[start: start + len(g)], start + len(g)
            with _blame(combiner, "reduce"):
                if in_prediction:  # each branch's prediction from its own query; the result back in q's frame
                    eps = prediction.back(q, combiner.reduce(q, [prediction.of(b, e[:, :end]) for b, e in zip(g, ests)]))
                elif in_clean:  # each branch's clean image from its own query; the noise q's state then implies
                    eps = prediction.from_clean(q, combiner.reduce(q, [prediction.clean_of(b, e[:, :end])
                                                                       for b, e in zip(g, ests)]))
                else:
                    eps = combiner.reduce(q, [e[:, :k] for e in ests])
                if blocks > 1 and not (in_prediction or in_clean):
                    eps = torch.cat([eps, *(combiner.reduce(q, [e[:, b * k: (b + 1) * k] for e in ests])
                                            for b in range(1, blocks))], dim=1)
            if ests[0].shape[1] > end:
                if rule == "first":  # only the first branch's is kept: the others' are not mapped back
                    extra = _unview_pixels(combiner, q, g[0], ests[0][:, end:])
                else:
                    extra = torch.stack([_unview_pixels(combiner, q, b, e[:, end:]) for b, e in zip(g, ests)]).mean(0)
                eps = torch.cat([eps, extra], dim=1)
            out.append(eps)
        return out

    return denoise


def _unview_pixels(combiner: Combiner, query: Query, branch: Query, extra: Tensor) -> Tensor:
    """Map a branch's extra channels back to ``query``'s frame: undo the rearrangements of its added views."""
    from diffkit.registry import get_view

    added = branch.view[len(query.view):]
    if branch.view[: len(query.view)] != query.view:
        raise PluginError(f"technique {combiner.name!r}: expand must keep the query's views {query.view} and add "
                          f"to them, got {branch.view}")
    for name in reversed(added):
        try:
            extra = get_view(name).unpermute(extra)
        except LookupError:
            raise PluginError(f"technique {combiner.name!r}: a branch names view {name!r}, which no plugin declares "
                              "(register it with diffkit_views, so its estimate can be mapped back)") from None
    return extra


@contextmanager
def _blame(combiner: Combiner, method: str) -> Iterator[None]:
    try:
        yield
    except Exception as e:
        raise PluginError(f"technique {combiner.name!r} failed in {method}: {type(e).__name__}: {e}") from e


class Joined(Combiner):
    """A guidance combiner (``Combiner.guidance``: cfg, a guider) with the guidance terms that follow it
    (:class:`~diffkit.technique.GuidanceTerm`: pag, seg, slg), as one combiner: its own branches, then each
    term's branch of its first (conditional) one; its own reduction plus each term's ``w (c - b)``."""

    def __init__(self, base: Combiner, terms: tuple[GuidanceTerm, ...]):
        super().__init__()
        self.base, self.terms = base, terms
        self.name = "+".join(c.name for c in (base, *terms))
        self.space, self.extra_channels = base.space, base.extra_channels

    def terms_at(self, query: Query) -> list[GuidanceTerm]:
        """The terms that guide this query (each branches off the guidance's first, conditional, branch: the
        query itself, by ``Combiner.guidance``'s contract), in order."""
        return [t for t in self.terms if t.branch(query) is not None]

    def expand(self, query: Query) -> list[Query]:
        return self.base.expand(query) + [t.branch(query) for t in self.terms_at(query)]

    def reduce(self, query: Query, estimates: list[Tensor]) -> Tensor:
        terms = self.terms_at(query)
        own = len(estimates) - len(terms)
        out = self.base.reduce(query, estimates[:own])
        c = estimates[0]
        for term, est in zip(terms, estimates[own:]):
            out = out + term.weight(query) * (c - est)
        return out


def join(combiners: list[Combiner]) -> list[Combiner]:
    """The combiners as they nest: each guidance term right after a guidance combiner (or after terms that
    joined one) joined to it (:class:`Joined`); every other one as it is."""
    out: list[Combiner] = []
    for c in combiners:
        last = out[-1] if out else None
        if isinstance(c, GuidanceTerm) and isinstance(last, Joined):
            out[-1] = Joined(last.base, (*last.terms, c))
        elif isinstance(c, GuidanceTerm) and last is not None and last.guidance:
            out[-1] = Joined(last, (c,))
        else:
            out.append(c)
    return out


def compose(combiners: list[Combiner], inner: Denoiser, eps_channels: int, blocks: int = 1,
            prediction: Prediction | None = None) -> Denoiser:
    """Nest combiners, the first one outermost, guidance terms joined to the guidance before them
    (:func:`join`; ``blocks``: estimate blocks a query's answer holds; ``prediction``: the model's
    prediction, for combiners that reduce it; :func:`wrap`)."""
    for c in reversed(join(combiners)):
        inner = wrap(c, inner, eps_channels, blocks, prediction)
    return inner
