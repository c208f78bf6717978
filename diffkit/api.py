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
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from diffkit import dist, io, plugins
from diffkit.dist import Shard
from diffkit.folder import AlreadyDone, ResumeError, RunFolder, assemble, check_out, output_names, run_files, write_batch
from diffkit.backends.base import Backend, check_device
from diffkit.errors import OutputInTheWay, RunFailure, UserError  # noqa: F401 - api names
from diffkit.rules import RuleError, Stepper, StepRule, check_timesteps, timesteps_for  # noqa: F401 - api names
from diffkit.sampler import MAX_BRANCHES, Sampler
from diffkit.spec import parse
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
        raise UserError(f"{name} must be an integer in {lo}..{'' if hi is None else hi}, got {value!r}")


# Backend options `diffkit sample` also takes as flags of their own (--checkpoint X for --backend-option
# checkpoint=X), as it did before backends declared their options; the UI's shown command uses them too.
BACKEND_FLAGS = ("checkpoint", "device", "model", "upscaler", "stage3", "height", "width", "dtype", "embeddings",
                 "offload")


def load_backend(name: str, **options: Any) -> Backend:
    """Build a backend by name from its declared options (text or typed values; None: not given). An
    unknown option, a bad value or a device this machine lacks is a BackendError before anything loads."""
    info = plugins.get_backend(name)
    given = info.read_options(options)
    if "device" in given:
        check_device(str(given["device"]))
    return info.load(**given)


def input_hashes(techniques: Sequence[Technique], backend: str | Backend,
                 options: dict[str, Any]) -> dict[str, str]:
    """``{path: sha256 of its contents}`` of every file the run reads (techniques' images, masks and
    permutation files, a backend's file options such as IF's embeddings; not model folders), so that a
    --resume after one of them changed is refused instead of mixing samples of both."""
    import hashlib

    from diffkit.technique import FILE_KINDS

    files = [f for t in techniques for f in t.input_files()]
    if isinstance(backend, str):
        for p in plugins.get_backend(backend).params:
            v = options.get(p.name)
            if p.kind in FILE_KINDS and isinstance(v, str) and os.path.isfile(v):
                files.append(v)
    out = {}
    for f in dict.fromkeys(files):
        h = hashlib.sha256()
        with open(f, "rb") as fp:
            for block in iter(lambda: fp.read(1 << 20), b""):
                h.update(block)
        out[f] = "sha256:" + h.hexdigest()
    return out


class Run:
    """One sampling run, stage after stage. Iterate :meth:`steps` for progress, then read :attr:`result`."""

    def __init__(self, backend: str | Backend = "mnist", *, prompts: Sequence[str] | None = None,
                 classes: Sequence[int | str] | None = None, hooks: Sequence[str | Technique] = (),
                 seed: int = 0, num: int = 1, steps: int | None = None, stride: int | None = None,
                 timesteps: Sequence[int] | None = None, timesteps2: Sequence[int] | None = None,
                 i_start: int = 0, save_every: int = 0,
                 max_batch: int | None = None, backend_options: dict[str, Any] | None = None,
                 stages: int | None = None, sampler: str | StepRule | None = None,
                 batch_size: int | None = None, max_branches: int | None = None):
        # Everything that can be checked without the model is checked before it loads.
        check_int("seed", seed, 0, 2**63 - 1)
        check_int("num", num, 1)
        for name, value in (("steps", steps), ("stride", stride), ("max_batch", max_batch),
                            ("batch_size", batch_size)):
            if value is not None:
                check_int(name, value, 1)
        check_int("i_start", i_start, 0)
        if max_branches is not None:
            check_int("max_branches", max_branches, 1, 2**30)
        check_int("save_every", save_every, 0)
        for name, ts in (("timesteps", timesteps), ("timesteps2", timesteps2)):
            if ts is not None:
                check_timesteps(name, ts)
        if prompts and classes:
            raise UserError("give prompts or classes, not both")
        if timesteps is not None and steps is not None and steps != len(timesteps):
            raise UserError(f"steps={steps} contradicts the {len(timesteps)} timesteps given: give steps or "
                            "timesteps, not both")
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
        # a sampler spec is checked before the model loads; without one, the backend's default is taken after
        self.rule = sampler if isinstance(sampler, StepRule) else plugins.make_sampler(sampler) if sampler else None
        self.backend_options = {k: v for k, v in (backend_options or {}).items() if v is not None}
        if isinstance(backend, str):  # checked against the declarations before the model loads
            self.backend_options = plugins.get_backend(backend).read_options(self.backend_options)
        self.inputs = input_hashes(self.techniques, backend, self.backend_options)
        self.backend = load_backend(backend, **self.backend_options) if isinstance(backend, str) else backend
        if self.rule is None:
            self.rule = plugins.make_sampler(self.backend.default_sampler)
        for tech in self.techniques:
            if not tech.supports(self.backend.name):
                raise UserError(f"hook {tech.name!r} does not support backend {self.backend.name!r} "
                                 f"(it supports: {', '.join(tech.backends)})")
        self.stride, self._timesteps_arg = stride, timesteps
        stepper = self.plan(self.backend, steps, timesteps)
        self.timesteps = stepper.timesteps
        if not 0 <= i_start < len(self.timesteps):
            raise UserError(f"i_start must be in 0..{len(self.timesteps) - 1}, got {i_start}")
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
        self.sampler = Sampler(self.techniques, max_batch, max_branches or MAX_BRANCHES)
        self._recipe_samplers: dict[Any, Sampler] = {}  # later stages with a recipe of their own
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

    def _stage_plan(self, backend: Backend) -> Stepper:
        """A later stage's walk: its own recipe's, else the run's rule and steps (or ``timesteps2``)."""
        if backend.recipe is None:
            return self.plan(backend, self.n_steps, self.timesteps2)
        rule = plugins.make_sampler(backend.recipe.sampler)
        return rule.plan(backend, backend.recipe.steps, None, None)

    def _stage_sampler(self, backend: Backend) -> Sampler:
        """The run's Sampler, or one with a stage's own recipe's techniques (counted in the same stats)."""
        if backend.recipe is None:
            return self.sampler
        if backend.recipe not in self._recipe_samplers:
            sampler = Sampler([plugins.make_technique(h) for h in backend.recipe.hooks], self.sampler.max_batch)
            sampler.stats = self.sampler.stats
            self._recipe_samplers[backend.recipe] = sampler
        return self._recipe_samplers[backend.recipe]

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
            run = self._stage_sampler(backend).run(ctx)
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
                stepper, i_start = self._stage_plan(backend), 0
        self.samples_done += len(batch)
        self.result = Result(stage_images[-1], labels, self.seeds[batch.start: batch.stop], self.meta(),
                             final, stage_images, stage_x, frames)

    def request(self) -> dict[str, Any]:
        """What was asked, everything that decides the samples' bytes (not how the work is split: the
        batch size, the number of processes, --max-batch). A --resume must ask the same."""
        options = dict(self.backend_options)
        if str(options.get("device", "")).startswith("cuda:"):  # torchrun gives each rank its own GPU
            options["device"] = "cuda"
        out = dict(self._asked, backend=self.backend.name, backend_options=options,
                   hooks=[{"name": t.name, "args": t.args} for t in self.techniques], sampler=self.rule.spec)
        if self.inputs:  # only runs that read files carry it: every other run.json keeps its bytes
            out["inputs"] = self.inputs
        return out

    def model_calls_per_sample(self) -> float:
        """Images the model has seen per sample so far, every branch counted (CFG: 2 an evaluation)."""
        return self.sampler.stats.get("rows", 0) / max(1, self.samples_done)

    def meta(self) -> dict[str, Any]:
        return {
            "backend": self.backend.name,
            "backend_options": self.backend_options,
            "checkpoint": self.backend.checkpoint,
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


# ---- orchestration: runs written to folders (resume, torchrun), sweeps, the MNIST report ----
# The command line and the UI only translate their inputs into these calls and draw what they yield.

DEFAULT_BATCH = 256  # samples through the Sampler at a time when a run written to a folder gives no batch_size


@dataclass(frozen=True)
class BatchStep:
    """One step of one batch of a run, as a progress bar draws it. ``state`` None: the batch is done."""

    batch: int  # its place among the batches this process does, from 0
    batches: int  # how many batches this process does
    size: int  # samples in the batch
    state: StepState | None


def drive(run: Run, todo: Sequence[int] | None = None,
          on_batch: Callable[[int, Result], None] | None = None) -> Iterator[BatchStep]:
    """Run batches ``todo`` of ``run`` (all by default) in order, yielding every step, and hand each
    finished batch's result to ``on_batch(k, result)``."""
    batches = run.batches()
    todo = list(range(len(batches)) if todo is None else todo)
    for j, k in enumerate(todo):
        for st in run.steps(batches[k]):
            yield BatchStep(j, len(todo), len(batches[k]), st)
        if on_batch is not None:
            assert run.result is not None
            on_batch(k, run.result)
        yield BatchStep(j, len(todo), len(batches[k]), None)


class FolderRun:
    """A run written to the folder ``out`` batch by batch (:class:`diffkit.folder.RunFolder`): memory holds
    one batch, an interrupted run continues with ``resume=True``, the batches are shared among the
    processes of a torchrun world (``shard``, from :func:`diffkit.dist.init`), and the files are the same
    bytes however the run was split::

        job = FolderRun("out/digits", "mnist", classes=[3, 7], num=500, hooks=["cfg:5"], batch_size=100)
        for step in job.steps():   # or job.run_all()
            ...                    # a BatchStep: draw progress
        job.note                   # "resuming: 2 of 10 batches ..." or None

    What can be refused is refused here, before any sampling and, for the folder, before the model
    loads: a UserError (an ``out`` in the way, a resume of another command, bad options), raised alike
    on every process. ``already_done`` is set (and :meth:`steps` yields nothing) when ``resume`` finds
    this very run finished. Keyword arguments are :class:`Run`'s.
    """

    def __init__(self, out: str | os.PathLike, backend: str | Backend = "mnist", *, resume: bool = False,
                 overwrite: bool = False, shard: Shard | None = None, batch_size: int | None = None,
                 **run_kwargs: Any):
        self.out, self.shard = Path(out), shard or Shard()
        self.resume, self.overwrite = resume, overwrite
        self.already_done: str | None = None
        self.kept: str | None = None  # what abandon() said
        frames = bool(run_kwargs.get("save_every"))
        failed = None
        if self.shard.rank == 0:  # the folder is refused before the model loads (IF's take minutes)
            try:
                labels = list(run_kwargs.get("prompts") or run_kwargs.get("classes") or [None])
                RunFolder.precheck(self.out, len(labels) * int(run_kwargs.get("num", 1)), frames, resume=resume,
                                   overwrite=overwrite)
            except OSError as e:
                failed = str(e)
        failed = dist.broadcast(self.shard, failed)
        if failed:
            raise UserError(failed)
        options = dict(run_kwargs.pop("backend_options", None) or {})
        if self.shard.active:  # each rank on its own GPU
            options["device"] = dist.local_device(self.shard, options.get("device"))
        self.run = Run(backend, backend_options=options, batch_size=batch_size or DEFAULT_BATCH, **run_kwargs)
        n, request = len(self.run.labels), self.run.request()
        answer: tuple = ()
        if self.shard.rank == 0:  # rank 0 alone looks at and prepares the folder; every rank follows its answer
            try:
                folder, note = RunFolder.start(self.out, request, n, self.run.batch_size, frames, resume=resume,
                                               overwrite=overwrite)
                answer = ("ok", note, folder.batch_size, sorted(folder.done()))
            except AlreadyDone as e:
                answer = ("done", str(e))
            except UserError as e:
                answer = ("fail", str(e))
            except OSError as e:
                answer = ("fail", f"cannot write to {self.out}: {io.reason(e)}")
        answer = dist.broadcast(self.shard, answer)
        if answer[0] == "fail":
            raise UserError(answer[1])
        self.note: str | None = None
        if answer[0] == "done":
            self.already_done, self.todo = answer[1], []
            return
        _, self.note, self.run.batch_size, done = answer
        if self.shard.rank:
            folder = RunFolder(self.out, request, n, self.run.batch_size, frames)
        self.folder = folder
        self.todo = [k for k in self.shard.mine(range(len(self.run.batches()))) if k not in done]

    @classmethod
    def resume_from(cls, out: str | os.PathLike, *, shard: Shard | None = None, **run_kwargs: Any) -> FolderRun:
        """Continue the interrupted run in ``out`` as it was asked (its ``request.json``), whoever began it."""
        from diffkit.folder import partial_dir, read_json

        path = partial_dir(out) / "request.json"
        if not path.is_file():
            raise ResumeError(f"{out} holds no interrupted run to resume (no {path.relative_to(Path(out).parent)})")
        saved = read_json(path, "start the run afresh with overwrite=True", ("request", "batch_size"))
        kwargs = request_kwargs(saved["request"])
        kwargs.update(run_kwargs)
        return cls(out, kwargs.pop("backend"), resume=True, shard=shard, batch_size=saved["batch_size"], **kwargs)

    def steps(self) -> Iterator[BatchStep]:
        """Sample this process's batches, each written as it finishes; at the end (every process done)
        the first process publishes the run's files into ``out``, all at once. On a failure or an
        interrupt the finished batches stay for a resume (see :attr:`kept`)."""
        if self.already_done:
            return
        try:
            yield from drive(self.run, self.todo, self._write_batch)
            dist.barrier(self.shard)  # every batch is written (a rank that failed never gets here)
            if self.shard.rank == 0:
                self.folder.publish(self.run.labels)
        except BaseException:
            self.abandon()
            raise
        finally:
            self.folder.release()  # a process that lives on (a notebook, the UI) must not keep the folder locked

    def _write_batch(self, k: int, result: Result) -> None:
        """Batch ``k``'s files: each anagram view of each sample (``sample-000.view1.png``, as the Visual
        Anagrams release saves them), then the samples and the part that marks the batch done."""
        from diffkit.animate import view_image

        start = k * self.run.batch_size
        anagram = next((t for t in self.run.techniques if t.name == "anagram" and hasattr(t, "views")), None)
        for j, view in enumerate(anagram.views if anagram else [], 1):
            for i, img in enumerate(result.images):
                io.save_png(view_image(view, img), self.folder.path / f"sample-{start + i:03d}.view{j}.png")
        self.folder.write_batch(k, result)

    def run_all(self) -> Path:
        """Run to the end; the folder."""
        for _ in self.steps():
            pass
        return self.out

    def abandon(self) -> str:
        """After a failure: what is kept (finished batches stay for a resume; with none, no trace)."""
        if self.kept is None:
            self.kept = (self.folder.abandon() if self.shard.rank == 0
                         else f"samples of finished batches are kept in {self.folder.path}")
        return self.kept


def sample_to(out: str | os.PathLike, backend: str | Backend = "mnist", **kwargs: Any) -> Path:
    """:class:`FolderRun` run to the end: ``sample_to("out/", "mnist", classes=[3], num=1000, resume=True)``."""
    return FolderRun(out, backend, **kwargs).run_all()


def request_kwargs(request: dict[str, Any]) -> dict[str, Any]:
    """:class:`Run`'s keyword arguments (and ``backend``) from what a run recorded (``Run.request()``, the
    ``request`` of run.json and of an interrupted run's request.json)."""
    try:
        kind = plugins.get_backend(request["backend"]).label_kind
        labels = request["labels"]
        return {
            "backend": request["backend"],
            ("classes" if kind == "class" else "prompts"): None if labels == [None] else labels,
            "hooks": [plugins.technique_from(h["name"], h["args"]) for h in request["hooks"]],
            "sampler": request["sampler"]["spec"], "backend_options": request["backend_options"],
            **{k: request[k] for k in ("num", "seed", "steps", "stride", "timesteps", "timesteps2", "i_start",
                                       "save_every", "stages")},
        }
    except (KeyError, TypeError) as e:
        raise UserError(f"the recorded request lacks {e}: it was not written by this diffkit") from None


SWEEP_RUN_ARGS = ("steps", "sampler", "i_start", "seed")  # what --sweep may vary besides a parameter


def sweep_runs(name: str, values: Sequence[str], backend: str | Backend = "mnist", *,
               hooks: Sequence[str | Technique] = (), sampler: str | None = None,
               **run_kwargs: Any) -> list[tuple[str, Run]]:
    """One :class:`Run` per value of ``name``: a parameter of a hook or of the sampler (the first that
    declares it), or ``steps``, ``sampler``, ``i_start``, ``seed``. All are built (and so checked)
    before any samples: a UserError names the first bad value."""
    values = [str(v) for v in values]
    if not name or not values:
        raise UserError("a sweep needs a name and at least one value")
    if len(set(values)) != len(values):
        raise UserError(f"sweep {name}: a value is given twice in {', '.join(values)}")
    techs = [plugins.make_technique(h) if isinstance(h, str) else h for h in hooks]
    swept = next((i for i, t in enumerate(techs) if any(p.name == name for p in t.params)), None)
    rule_cls = plugins.samplers().get(parse(sampler or plugins.DEFAULT_SAMPLER)[0])
    in_rule = swept is None and rule_cls is not None and any(p.name == name for p in rule_cls.params)
    if swept is None and not in_rule and name not in SWEEP_RUN_ARGS:
        raise UserError(f"sweep {name}: no hook or sampler has a parameter {name!r}, and it is not "
                        f"{', '.join(SWEEP_RUN_ARGS)}")
    runs = []
    for value in values:
        kw, these, rule = dict(run_kwargs), list(techs), sampler
        if swept is not None:
            these[swept] = plugins.technique_from(techs[swept].name, dict(techs[swept].args, **{name: value}))
        elif in_rule:
            rule = plugins.make_sampler(sampler, **{name: value})
        elif name == "sampler":
            rule = value
        else:
            try:
                kw[name] = int(value)
            except ValueError:
                raise UserError(f"sweep {name}: {value!r} is not an integer") from None
        runs.append((value, Run(backend, hooks=these, sampler=rule, **kw)))
    return runs


def check_sweep_out(out: str | os.PathLike, name: str, runs: list[tuple[str, Run]], overwrite: bool = False) -> None:
    """Refuse (UserError) a sweep whose outputs would replace files, before any samples."""
    out = Path(out)
    if (out / "sweep.png").exists() and not overwrite:
        raise OutputInTheWay(f"{out / 'sweep.png'} exists; pass --overwrite to replace it")
    for value, run in runs:
        check_out(out / f"{name}-{value}", len(run.labels), bool(run.save_every), overwrite)


def sweep(out: str | os.PathLike, name: str, values: Sequence[str], backend: str | Backend = "mnist", *,
          overwrite: bool = False, **run_kwargs: Any) -> Path:
    """One run per value of ``name`` (see :func:`sweep_runs`), written as ``out/NAME-v/`` folders and
    ``out/sweep.png`` side by side, all or none::

        diffkit.api.sweep("out/strength", "strength", ["0.3", "0.6", "0.9"], "mnist",
                          classes=[3], hooks=["sdedit:image=seven.png,strength=0.5"])
    """
    runs = sweep_runs(name, values, backend, **run_kwargs)
    check_sweep_out(out, name, runs, overwrite)
    for _, run in runs:
        for _ in run.steps():
            pass
    return save_sweep(name, [(v, r.result) for v, r in runs], out, overwrite=overwrite)


class MnistEval:
    """Class-conditioned MNIST samples judged by a classifier: accuracy and a Frechet distance to real
    digits, beside the real-data floor (docs/quality.md). Under torchrun (``shard``) the batches are
    shared and the first process reports on all of them: the same numbers as one process. Only the
    classifier's features of each batch are kept, so memory holds one batch whatever ``num`` is::

        ev = MnistEval(checkpoint="mnist-h64", num=100, hooks=["cfg:1.5"])
        for step in ev.steps(): ...      # progress
        ev.report                         # dict (None on other processes than the first)
    """

    def __init__(self, *, checkpoint: str | None = None, classifier: str | os.PathLike | None = None, num: int = 50,
                 hooks: Sequence[str | Technique] = ("cfg:5",), sampler: str | None = None, steps: int | None = None,
                 stride: int | None = 1, seed: int = 0, data: str | os.PathLike | None = None,
                 batch_size: int | None = None, device: str | None = None, shard: Shard | None = None):
        from diffkit.mnist import data as mnist
        from diffkit.mnist.evaluate import load_classifier, test_features

        check_device(device or "cpu")
        self.shard, self.seed, self.num = shard or Shard(), seed, num
        self.hooks = [h if isinstance(h, str) else repr(h) for h in hooks]
        self.clf = load_classifier(classifier)
        self.real_feats = test_features(str(classifier) if classifier else None, str(data) if data else None)
        self.train = mnist.load("train", data)
        self.run = Run("mnist", classes=list(range(10)), hooks=hooks, seed=seed, num=num, steps=steps,
                       stride=None if steps else stride, sampler=sampler, batch_size=batch_size or DEFAULT_BATCH,
                       backend_options={"checkpoint": checkpoint,
                                        "device": dist.local_device(self.shard, device)})
        self.report: dict[str, Any] | None = None

    def steps(self) -> Iterator[BatchStep]:
        from diffkit.mnist.evaluate import judge, real_floor, report

        judged: dict[int, tuple] = {}  # batch -> (predictions, features): all that is kept of the samples
        yield from drive(self.run, self.shard.mine(range(len(self.run.batches()))),
                         lambda k, res: judged.update({k: judge(self.clf, res.images.cpu())}))
        everything = dist.gather(self.shard, (judged, self.run.sampler.stats.get("rows", 0)))
        if self.shard.rank:
            return
        judged = {k: v for part, _ in everything for k, v in part.items()}
        pred = torch.cat([judged[k][0] for k in sorted(judged)])
        feats = torch.cat([judged[k][1] for k in sorted(judged)])
        labels = torch.tensor([int(c) for c in self.run.labels])
        result = report(pred, feats, labels, self.real_feats)
        floor = real_floor(self.clf, *self.train, labels, self.real_feats, self.seed)
        result.update({"real_data_floor": floor, "times_floor": result["frechet_distance"] / floor,
                       "checkpoint": self.run.meta()["checkpoint"], "num_per_class": self.num, "hooks": self.hooks,
                       "sampler": self.run.rule.spec, "timesteps": len(self.run.timesteps),
                       "model_calls_per_sample": sum(rows for _, rows in everything) / len(labels),
                       "seed": self.seed})
        self.report = result


def evaluate_mnist(**kwargs: Any) -> dict[str, Any] | None:
    """:class:`MnistEval` run to the end; its report."""
    ev = MnistEval(**kwargs)
    for _ in ev.steps():
        pass
    return ev.report
