"""The Python API that the CLI is a thin layer over.

    import diffkit
    result = diffkit.sample("mnist", classes=[3, 7], hooks=["cfg:5"], seed=0, num=2)
    result.images      # [N x C x H x W] in [0, 1]
    diffkit.save(result, "out/")
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from diffkit import io, plugins, schedule
from diffkit.folder import assemble, check_out, output_names, run_files, write_batch
from diffkit.backends.base import Backend, BackendError, check_device
from diffkit.rules import RuleError, Stepper, StepRule, check_timesteps, timesteps_for  # noqa: F401 - api names
from diffkit.sampler import Sampler
from diffkit.state import Context, StepState
from diffkit.technique import Technique


@dataclass
class Result:
    """What a run made. ``images``: ``[N x C x H x W]`` in [0, 1] from the last stage."""

    images: Tensor
    labels: list[Any]
    seeds: list[int]
    meta: dict[str, Any]
    x: Tensor | None = None  # the last stage's final state, unclamped
    stage_images: list[Tensor] = field(default_factory=list)  # one ``[N x C x H x W]`` a stage
    stage_x: list[Tensor] = field(default_factory=list)  # each stage's final state, unclamped
    frames: list[Tensor] = field(default_factory=list)  # ``[N x C x H x W]`` x0 estimates every save_every steps


    @staticmethod
    def concat(parts: list[Result]) -> Result:
        """The batches of one run, in order, as one result."""
        if len(parts) == 1:
            return parts[0]

        def cat(xs: list[Tensor]) -> Tensor:
            return torch.cat(xs)

        return Result(cat([p.images for p in parts]), [lab for p in parts for lab in p.labels],
                      [s for p in parts for s in p.seeds], parts[0].meta,
                      None if parts[0].x is None else cat([p.x for p in parts]),
                      [cat(st) for st in zip(*(p.stage_images for p in parts))],
                      [cat(st) for st in zip(*(p.stage_x for p in parts))],
                      [cat(f) for f in zip(*(p.frames for p in parts))])


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("diffkit", "torch", "diffusers", "transformers", "pluggy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    """Refuse (ValueError naming ``name`` and its range) anything but an integer in ``lo..hi``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an integer in {lo}..{'' if hi is None else hi}, got {value!r}")


def load_backend(name: str, **options: Any) -> Backend:
    """Build a backend by name; options it does not know are an error."""
    info = plugins.get_backend(name)
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(info.options) - {"stride"})
    if unknown:
        raise BackendError(f"backend {name!r} takes no option {', '.join(unknown)} "
                           f"(it takes: {', '.join(sorted(info.options)) or 'none'})")
    if "device" in given:
        check_device(str(given["device"]))
    return info.load(**given)


class Run:
    """One sampling run, stage after stage. Iterate :meth:`steps` for progress, then read :attr:`result`."""

    def __init__(self, backend: str | Backend = "mnist", *, prompts: Sequence[str] | None = None,
                 classes: Sequence[int | str] | None = None, hooks: Sequence[str | Technique] = (),
                 seed: int = 0, num: int = 1, steps: int | None = None, stride: int | None = None,
                 timesteps: Sequence[int] | None = None, timesteps2: Sequence[int] | None = None,
                 i_start: int = 0, save_every: int = 0,
                 max_batch: int | None = None, backend_options: dict[str, Any] | None = None,
                 stages: int | None = None, sampler: str | StepRule | None = None,
                 batch_size: int | None = None):
        # Everything that can be checked without the model is checked before it loads.
        check_int("seed", seed, 0, 2**63 - 1)
        check_int("num", num, 1)
        for name, value in (("steps", steps), ("stride", stride), ("max_batch", max_batch),
                            ("batch_size", batch_size)):
            if value is not None:
                check_int(name, value, 1)
        check_int("i_start", i_start, 0)
        check_int("save_every", save_every, 0)
        for name, ts in (("timesteps", timesteps), ("timesteps2", timesteps2)):
            if ts is not None:
                check_timesteps(name, ts)
        if prompts and classes:
            raise ValueError("give prompts or classes, not both")
        base = list(prompts or classes or [None])
        self.labels = [lab for lab in base for _ in range(num)]
        self.seeds = [seed + i for i in range(len(self.labels))]
        check_int("seed + number of samples", self.seeds[-1], 0, 2**63 - 1)
        self._asked = {"labels": base, "num": num, "seed": seed, "steps": steps, "stride": stride,
                       "timesteps": list(timesteps) if timesteps else None,
                       "timesteps2": list(timesteps2) if timesteps2 else None, "i_start": i_start,
                       "save_every": save_every, "stages": stages}
        self.techniques = [plugins.make_technique(h) if isinstance(h, str) else h for h in hooks]
        plugins.check_together(self.techniques)
        self.rule = sampler if isinstance(sampler, StepRule) else plugins.make_sampler(sampler)
        self.backend_options = {k: v for k, v in (backend_options or {}).items() if v is not None}
        self.backend = load_backend(backend, **self.backend_options) if isinstance(backend, str) else backend
        for tech in self.techniques:
            if not tech.supports(self.backend.name):
                raise ValueError(f"hook {tech.name!r} does not support backend {self.backend.name!r} "
                                 f"(it supports: {', '.join(tech.backends)})")
        self.stride, self._timesteps_arg = stride, timesteps
        stepper = self.plan(self.backend, steps, timesteps)
        self.timesteps = stepper.timesteps
        if not 0 <= i_start < len(self.timesteps):
            raise ValueError(f"i_start must be in 0..{len(self.timesteps) - 1}, got {i_start}")
        self.i_start = i_start
        self.timesteps2 = list(timesteps2) if timesteps2 else None
        self.n_steps = steps  # later stages use the same rule and steps unless timesteps2 is given
        self.save_every = save_every
        self.stages = stages  # stop after this many stages (None: as many as the backend chains)
        # Samples go through the Sampler batch_size at a time (all of them by default); per-sample seeds
        # and fixed-size model calls (backends/base.in_fixed_chunks) make the bytes the same for any size.
        self.batch_size = min(batch_size or len(self.labels), len(self.labels))
        # Encode every distinct label now, so one the backend cannot take fails before any work.
        Context.make_cond(self.backend, list(dict.fromkeys(self.labels)) + [None])
        self.sampler = Sampler(self.techniques, max_batch)
        self.result: Result | None = None
        self.stage_timesteps: list[list[int]] = []
        self.samples_done = 0
        # Techniques set up now (prompts encoded, images read), so their bad input also fails before any work.
        self._ctx0 = self.context(self.backend, 0, stepper, self.i_start, self.batches()[0])
        self.sampler.setup(self._ctx0)

    def batches(self) -> list[range]:
        """The sample indices of each batch, in order: ``batch_size`` samples each, the last one shorter."""
        n = len(self.labels)
        return [range(a, min(a + self.batch_size, n)) for a in range(0, n, self.batch_size)]

    def plan(self, backend: Backend, steps: int | None, timesteps: Sequence[int] | None) -> Stepper:
        """The sampler's walk for one stage; what it cannot do is a ValueError naming it."""
        try:
            return self.rule.plan(backend, steps, timesteps, self.stride)
        except RuleError:
            raise
        except ValueError as e:
            raise RuleError(f"sampler {self.rule.name!r}: {e}") from None

    def context(self, backend: Backend, stage: int, stepper: Stepper, i_start: int,
                batch: range | None = None) -> Context:
        """The context of one stage of one batch (the samples ``batch`` of the run; default all)."""
        batch = range(len(self.labels)) if batch is None else batch
        labels, seeds = self.labels[batch.start: batch.stop], self.seeds[batch.start: batch.stop]
        return Context(
            backend=backend, timesteps=stepper.timesteps, labels=labels, seeds=seeds,
            cond=Context.make_cond(backend, labels), null=Context.make_cond(backend, [None] * len(labels)),
            generators=[torch.Generator().manual_seed(s) for s in seeds], stage=stage, i_start=i_start,
            size_factor=backend.sample_shape[-1] / self.backend.sample_shape[-1], stepper=stepper)

    def steps(self, batch: range | None = None) -> Iterator[StepState]:
        """Yield every step of every stage; afterwards :attr:`result` holds the images.

        ``batch``: only those samples (one of :meth:`batches`), and :attr:`result` holds just them.
        Without it, every batch in turn, and :attr:`result` holds the whole run.
        """
        if batch is not None:
            yield from self._batch_steps(batch)
            return
        parts = []
        for b in self.batches():
            yield from self._batch_steps(b)
            parts.append(self.result)
        self.result = Result.concat(parts)

    def _batch_steps(self, batch: range) -> Iterator[StepState]:
        backend, stage, stage_images, stage_x, frames = self.backend, 0, [], [], []
        self.stage_timesteps = []
        stepper, i_start = None, self.i_start
        labels = self.labels[batch.start: batch.stop]
        while backend is not None:
            if stage == 0 and self._ctx0 is not None and list(self._ctx0.seeds) == self.seeds[batch.start: batch.stop]:
                ctx = self._ctx0
            else:
                stepper = stepper or self.plan(backend, self.n_steps, self._timesteps_arg)
                ctx = self.context(backend, stage, stepper, i_start, batch)
                if stage == 0:
                    self.sampler.setup(ctx)
            if stage == 0:
                self._ctx0 = None  # its generators are being used: a second steps() starts afresh
            self.stage_timesteps.append(ctx.timesteps)
            run = self.sampler.run(ctx)
            while True:
                try:
                    state = next(run)
                except StopIteration as stop:
                    x = stop.value
                    break
                if self.save_every and stage == 0 and (state.i % self.save_every == 0 or state.i == state.n_steps - 1):
                    frames.append(backend.to_image(state.x0).float().cpu())
                yield state
            images = backend.to_image(x).float().cpu()
            stage_images.append(images)
            stage_x.append(x.detach().float().cpu().clone())
            final = x
            stage += 1
            backend = None if self.stages and stage >= self.stages else backend.next_stage(x, labels)
            if backend is not None:
                stepper, i_start = self.plan(backend, self.n_steps, self.timesteps2), 0
        self.samples_done += len(batch)
        self.result = Result(stage_images[-1], labels, self.seeds[batch.start: batch.stop], self.meta(),
                             final, stage_images, stage_x, frames)

    def request(self) -> dict[str, Any]:
        """What was asked, everything that decides the samples' bytes (not how the work is split: the
        batch size, the number of processes, --max-batch). A --resume must ask the same."""
        options = dict(self.backend_options)
        if str(options.get("device", "")).startswith("cuda:"):  # torchrun gives each rank its own GPU
            options["device"] = "cuda"
        return dict(self._asked, backend=self.backend.name, backend_options=options,
                    hooks=[{"name": t.name, "args": t.args} for t in self.techniques], sampler=self.rule.spec)

    def model_calls_per_sample(self) -> float:
        """Images the model has seen per sample so far, every branch counted (CFG: 2 an evaluation)."""
        return self.sampler.stats.get("rows", 0) / max(1, self.samples_done)

    def meta(self) -> dict[str, Any]:
        return {
            "backend": self.backend.name,
            "backend_options": self.backend_options,
            "checkpoint": getattr(self.backend, "checkpoint", None),
            "hooks": [{"name": t.name, "args": t.args} for t in self.techniques],
            "sampler": self.rule.spec,
            "timesteps": self.stage_timesteps,
            "i_start": self.i_start,
            "versions": versions(),
        }


def sample(backend: str | Backend = "mnist", **kwargs: Any) -> Result:
    """Run to the end and return the :class:`Result` (same words as the CLI)."""
    run = Run(backend, **kwargs)
    for _ in run.steps():
        pass
    assert run.result is not None
    return run.result


def write_run(result: Result, folder: Path, extra: dict[str, Any] | None = None) -> None:
    """Write sample PNGs, grid.png, final.safetensors, run.json (and frames/ + trajectory.gif) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_batch(folder, 0, 0, result, len(result.images))
    assemble(folder, result.labels, extra)


def save(result: Result, out: str | os.PathLike, overwrite: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write a run's files (see :func:`write_run`) to ``out``: all of them appear, or none.

    They are written to a temp folder and renamed in at the end; an error or a signal before that
    leaves ``out`` exactly as it was (not even created), and a signal during the renames is held until
    they are done. ``overwrite`` replaces an earlier run's files as a whole: its extra samples go too.
    """
    out = Path(out)
    check_out(out, len(result.images), bool(result.frames), overwrite)
    stale = sorted(set(run_files(out)) - set(output_names(len(result.images), bool(result.frames))))
    with io.staged_dir(out, stale) as tmp:
        write_run(result, tmp, extra)
    return out


def save_sweep(name: str, runs: list[tuple[str, Result]], out: str | os.PathLike, overwrite: bool = False) -> Path:
    """A ``--sweep``: ``out/NAME-v/`` a run for each value and ``out/sweep.png`` side by side, all or none."""
    out = Path(out)
    for value, result in runs:
        check_out(out / f"{name}-{value}", len(result.images), bool(result.frames), overwrite)
    with io.staged_dir(out) as tmp:
        for value, result in runs:
            write_run(result, tmp / f"{name}-{value}", {"sweep": {name: value}})
        io.save_png(io.labelled_columns([r.images for _, r in runs], [f"{name}={v}" for v, _ in runs]),
                    tmp / "sweep.png")
    return out


def mnist_preview(checkpoint: str | os.PathLike, path: str | os.PathLike, cfg_scale: float = 5.0) -> None:
    """A 10x4 grid of class-conditioned samples (CFG ``cfg_scale``) from an MNIST checkpoint."""
    from diffkit.mnist.checkpoint import load_config

    conditional = load_config(checkpoint)["conditioning"] == "class"
    res = sample("mnist", classes=list(range(10)) if conditional else None, num=4 if conditional else 40,
                 hooks=[f"cfg:{cfg_scale}"] if conditional else [], backend_options={"checkpoint": str(checkpoint)})
    ncol = 4 if conditional else 10
    io.save_png(io.grid(res.images, ncol), path)
