"""Several processes, one run: torch.distributed as torchrun and ``accelerate launch`` set it up.

A run's batches (``Run.batches()``, fixed by ``--batch-size`` whatever the world size) are dealt
round-robin to the ranks, so every batch is the same computation on any number of processes and the
output is the same bytes. Rank 0 prepares the folder and, after a barrier, writes what depends on all
batches. Nothing here schedules work by itself: the launcher starts the processes and rendezvous.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence, TypeVar

import torch

from diffkit.errors import UserError

T = TypeVar("T")


class LaunchError(UserError, RuntimeError):
    """The launcher's environment is incomplete or the rendezvous failed."""


@dataclass(frozen=True)
class Shard:
    """This process's place in the world: ``rank`` of ``world``, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def mine(self, items: Sequence[T]) -> list[T]:
        """Every ``world``-th item from ``rank`` on (round-robin: ranks finish at about the same time)."""
        return list(items[self.rank:: self.world])

    def who(self) -> str:
        return f"rank {self.rank} of {self.world}: " if self.active else ""


def launched() -> bool:
    """Started by torchrun / accelerate with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


RENDEZVOUS_S = 60.0  # default wait for every rank to arrive (--rendezvous-timeout)


def init(device: str | None = None, timeout_s: float = 600, rendezvous_s: float = RENDEZVOUS_S) -> Shard:
    """Join the process group the launcher describes (gloo on CPU, nccl on CUDA); one process: no group.

    Waits at most ``rendezvous_s`` for the master and every rank to arrive, and SIGINT/SIGTERM end the
    wait at once (:class:`diffkit.interrupt.Interrupted`); collectives later wait up to ``timeout_s``.
    Raises LaunchError naming what is missing (RANK, MASTER_ADDR, ...) instead of torch's message.
    """
    if not launched():
        return Shard()
    import torch.distributed as td

    need = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    missing = [k for k in need if not os.environ.get(k)]
    if missing:
        raise LaunchError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not set: start several processes with "
                          "`torchrun --nproc-per-node K -m diffkit ...` (or accelerate launch)")
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as e:
        raise LaunchError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {e}") from None
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    per_node = max(int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0), local + 1)
    if cuda and per_node > torch.cuda.device_count():
        # Every rank of the node says so before any rendezvous: torch.cuda.set_device would fail with
        # "invalid device ordinal", and two ranks on one GPU in nccl's setup ("Duplicate GPU detected").
        n = torch.cuda.device_count()
        raise LaunchError(f"rank {rank} of {world}: {per_node} processes on this node need {per_node} GPUs (one "
                          f"each), but this machine has {n}: start at most {n} a node (--nproc-per-node {n}), "
                          "or sample on the CPU with --device cpu")
    if not td.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        _joined[0] = True  # from here on the process leaves by os._exit (see cli._leave)
        try:
            _in_thread(lambda: _join("nccl" if cuda else "gloo", rank, world, rendezvous_s, timeout_s))
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LaunchError(f"rank {rank} of {world}: rendezvous at {where} failed within {rendezvous_s:g} s "
                              f"({first}); check that every rank was started with the same MASTER_ADDR and "
                              "MASTER_PORT, or wait longer with --rendezvous-timeout") from None
    return Shard(rank, world, local)


def _join(backend: str, rank: int, world: int, rendezvous_s: float, timeout_s: float) -> None:
    """torch's env:// rendezvous, bounded by ``rendezvous_s``, then the group, whose collectives wait up
    to ``timeout_s`` (one timeout for both would either hang on a missing master or cut a slow batch)."""
    import torch.distributed as td

    store, _, _ = next(td.rendezvous("env://", rank, world, timeout=timedelta(seconds=rendezvous_s)))
    store.set_timeout(timedelta(seconds=timeout_s))
    td.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))


def _in_thread(work: Callable[[], None]) -> None:
    """Run ``work`` in a daemon thread while the main thread waits in short slices. Written by hand
    because torch's rendezvous blocks in C++, where Python's signal handlers never run: waiting here,
    SIGINT and SIGTERM raise at once (the CLI then exits 130 or 143)."""
    import threading

    box: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as e:  # handed to the main thread
            box.append(e)

    thread = threading.Thread(target=target, name="diffkit-rendezvous", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
    if box:
        raise box[0]


_joined = [False]


def joined() -> bool:
    """Whether this process began to join a process group (it stays true after :func:`finish`): such a
    process leaves by ``os._exit``, since gloo's threads (or a rendezvous still waiting) can abort or
    hang the interpreter's teardown."""
    return _joined[0]


def local_device(shard: Shard, device: str | None) -> str | None:
    """The device a rank samples on: ``cuda`` (or none given, with CUDA here) means this rank's own GPU."""
    if shard.active and torch.cuda.is_available() and device in (None, "cuda"):
        return f"cuda:{shard.local_rank}"
    return device


def barrier(shard: Shard) -> None:
    if shard.active:
        import torch.distributed as td

        td.barrier()


def broadcast(shard: Shard, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not shard.active:
        return obj
    import torch.distributed as td

    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def gather(shard: Shard, obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
    if not shard.active:
        return [obj]
    import torch.distributed as td

    out = [None] * shard.world if shard.rank == 0 else None
    td.gather_object(obj, out, dst=0)
    return out


def finish(shard: Shard) -> None:
    """Leave the group together: every rank calls this (gloo aborts a process whose peer tore its
    connections down first: "terminate called without an active exception")."""
    if shard.active:
        import torch.distributed as td

        if td.is_initialized():
            td.barrier()
            td.destroy_process_group()


def leave(shard: Shard, code: int = 0) -> None:
    """The end of a script run under torchrun: leave the group together (:func:`finish`), then the process
    (``os._exit(code)`` once output is flushed), skipping the interpreter's teardown, during which gloo's
    worker threads now and then abort a process that has finished its work ("terminate called without an
    active exception"), failing the whole launch. One process (no group): just returns."""
    import sys

    finish(shard)
    if joined():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
