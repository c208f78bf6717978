"""Denoisers: the batched model call at the core, and combiners wrapped around it.

The innermost denoiser evaluates every distinct query of a step in one model call; each combiner
expands its queries, calls the denoiser inside it once, and reduces.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

from diffkit.backends.base import Backend
from diffkit.plugins import PluginError
from diffkit.state import Denoiser, Query
from diffkit.technique import Combiner


class NonFiniteError(FloatingPointError):
    """The model returned NaN or inf."""


def batched(backend: Backend, max_batch: int | None = None) -> Denoiser:
    """One ``backend.predict`` call for all distinct queries (chunked only above ``max_batch`` rows)."""

    def denoise(queries: list[Query]) -> list[Tensor]:
        index: dict[tuple, int] = {}
        unique: list[Query] = []
        for q in queries:
            if q.key not in index:
                index[q.key] = len(unique)
                unique.append(q)
        sizes = [q.x.shape[0] for q in unique]
        x = torch.cat([q.x for q in unique]) if len(unique) > 1 else unique[0].x
        t = torch.cat([torch.full((n,), q.t, dtype=torch.long) for q, n in zip(unique, sizes)]).to(x.device)
        conds = [q.cond.value for q in unique]
        c = None if conds[0] is None else (torch.cat(conds) if len(conds) > 1 else conds[0])
        if max_batch and x.shape[0] > max_batch:
            out = torch.cat([backend.predict(x[i: i + max_batch], t[i: i + max_batch],
                                             None if c is None else c[i: i + max_batch])
                             for i in range(0, x.shape[0], max_batch)])
        else:
            out = backend.predict(x, t, c)
        if not torch.isfinite(out).all():
            raise NonFiniteError(f"backend {backend.name!r} returned NaN or inf at t={unique[0].t} in "
                                 f"{_bad_branch(out, unique, sizes)}")
        parts = out.split(sizes)
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
    return f"branch {k + 1} of {len(unique)} ({cond}{view}), sample {i}"


def wrap(combiner: Combiner, inner: Denoiser) -> Denoiser:
    """``combiner`` around ``inner``: expand every query, call ``inner`` once, reduce each group."""

    def denoise(queries: list[Query]) -> list[Tensor]:
        with _blame(combiner, "expand"):
            groups = [combiner.expand(q) for q in queries]
        estimates = inner([q for g in groups for q in g])
        out, k = [], 0
        with _blame(combiner, "reduce"):
            for q, g in zip(queries, groups):
                out.append(combiner.reduce(q, estimates[k: k + len(g)]))
                k += len(g)
        return out

    return denoise


@contextmanager
def _blame(combiner: Combiner, method: str) -> Iterator[None]:
    try:
        yield
    except Exception as e:
        raise PluginError(f"hook {combiner.name!r} failed in {method}: {type(e).__name__}: {e}") from e


def compose(combiners: list[Combiner], inner: Denoiser) -> Denoiser:
    """Nest combiners, the first one outermost."""
    for c in reversed(combiners):
        inner = wrap(c, inner)
    return inner
