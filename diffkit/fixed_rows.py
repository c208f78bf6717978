"""Model calls of a fixed number of rows: what keeps a sample's bytes independent of the batch it ran in
(the MNIST backend's model, the evaluation classifier). Low in the layers so that both a backend and
``mnist/evaluate`` use it without importing upwards."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
from torch import Tensor


def in_fixed_chunks(f: Callable[..., Tensor], rows: int, *args: Tensor | None, workers: int | None = None) -> Tensor:
    """``f(*args)`` evaluated ``rows`` rows at a time, the last chunk padded with copies of its last row.

    CPU kernels (oneDNN convolutions, small-matrix GEMMs) pick their algorithm, and so the order of
    their float sums, by batch size and thread count: a sample's estimate then differs in the last bits
    between a call of 2 rows and one of 64. Every call of exactly ``rows`` rows makes a sample's numbers
    independent of the samples that share its call, so a run gives the same bytes in any --batch-size
    and over any number of processes.

    ``workers`` (the CPU): each chunk runs on one thread, ``workers`` chunks at a time on a thread pool,
    so the bytes do not depend on the thread count either, and small chunks still use every core
    (small chunks waste less on padding: a one-sample CFG run is 2 rows). None (a GPU): the chunks in
    turn, in this thread. benchmarks/chunks.py measures what each choice costs.
    """
    n = next(a for a in args if a is not None).shape[0]
    pad = (-n) % rows
    if pad:
        args = tuple(None if a is None else torch.cat([a, a[-1:].expand(pad, *a.shape[1:])]) for a in args)
    starts = range(0, n + pad, rows)

    def chunk(i: int) -> Tensor:
        return f(*(None if a is None else a[i: i + rows] for a in args))

    if workers is None:
        return (chunk(0) if n + pad == rows else torch.cat([chunk(i) for i in starts]))[:n]
    return torch.cat(_on_one_thread_each(chunk, list(starts), workers))[:n]


_POOL: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def _on_one_thread_each(work: Callable[[int], Tensor], items: list[int], workers: int) -> list[Tensor]:
    """``[work(i) for i in items]``, each on one torch thread, ``workers`` at a time. Written by hand
    because torch has no per-call thread count: the process-wide count is set to 1 while the pool
    works (one pooled call at a time, hence the lock), and the grad and inference modes, which are
    per thread, are carried into the workers."""
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def run(i: int) -> Tensor:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return work(i)

    with _POOL_LOCK:
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if workers <= 1 or len(items) == 1:
                return [run(i) for i in items]
            pool = _POOL.get(workers) or _POOL.setdefault(workers, ThreadPoolExecutor(workers, "diffkit-chunk"))
            return list(pool.map(run, items))
        finally:
            torch.set_num_threads(old)
