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

from diffkit import dist, io, registry
from diffkit.dist import Shard
from diffkit.folder import AlreadyDone, ResumeError, RunFolder, assemble, check_out, output_names, run_files, write_batch
from diffkit.backends.base import Backend
from diffkit.errors import OutputInTheWay, RunFailure, UserError  # noqa: F401 - api names
from diffkit.request import RequestError, RunRequest  # noqa: F401 - api names
from diffkit.rules import RuleError, Stepper, StepRule, timesteps_for  # noqa: F401 - api names
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
    request: RunRequest | None = None  # what made it (run.json records it)


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
                      [cat(f) for f in zip(*(p.frames for p in parts))], parts[0].request)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("diffkit", "torch", "diffusers", "transformers", "pluggy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def load_backend(name: str, **options: Any) -> Backend:
    """Build a backend by name from its declared options (text or typed values; None: not given). An
    unknown option, a bad value or a device this machine lacks is a BackendError before anything loads."""
    return RunRequest(backend=name, options=options).load_backend()


@dataclass(frozen=True)
class Outline:
    """What a run (or the part of it one process does) will sample, as a progress bar announces it."""

    samples: int
    steps: int  # of the first stage
    batches: int  # batches to do
    batch_size: int
    split: bool  # whether the whole run has more than one batch


class Run:
    """One sampling run, stage after stage, of one :class:`~diffkit.request.RunRequest`. Iterate
    :meth:`steps` for progress, then read :attr:`result`::

        run = Run(RunRequest(backend="mnist", labels=(3,), techniques=("cfg:5",)))
        run = Run("mnist", classes=[3], hooks=["cfg:5"])     # the same request, from keywords

    The request is checked where it is made; here the model loads, the rule plans its walk, and the
    techniques set up, so everything that can be refused is refused before the first step.
    """

    def __init__(self, request: RunRequest | str | Backend | None = None, **kwargs: Any):
        if not isinstance(request, RunRequest):
            request = RunRequest.of(request, **kwargs)
        elif kwargs:
            raise TypeError("Run(request) takes nothing else: request.replace(...) makes a changed request")
        request = request.hash_inputs()
        self.backend = request.load_backend()
        if request.rule is None:  # the backend's default, once it is known
            request = request.replace(rule=registry.make_sampler(self.backend.default_sampler))
        self.request = request
        for tech in request.techniques:
            if not tech.supports(self.backend.name):
                raise UserError(f"technique {tech.name!r} does not support backend {self.backend.name!r} "
                                 f"(it supports: {', '.join(tech.backends)})")
        self.labels, self.seeds = request.sample_labels(), request.seeds()
        stepper = self.plan(self.backend, request.steps, request.timesteps)
        self.timesteps = stepper.timesteps
        if not request.i_start < len(self.timesteps):
            raise UserError(f"i_start must be in 0..{len(self.timesteps) - 1}, got {request.i_start}")
        # Samples go through the Sampler batch_size at a time (all of them by default); per-sample seeds
        # and fixed-size model calls (fixed_rows.in_fixed_chunks) make the bytes the same for any size.
        self.batch_size = min(request.batch_size or request.n, request.n)
        # Encode every distinct label now, so one the backend cannot take fails before any work.
        Context.make_cond(self.backend, list(dict.fromkeys(self.labels)) + [None])
        self.sampler = Sampler(list(request.techniques), request.max_batch, request.max_branches)
        self._recipe_samplers: dict[Any, Sampler] = {}  # later stages with a recipe of their own
        self.result: Result | None = None
        self.stage_timesteps: list[list[int]] = []
        self.samples_done = 0
        # Techniques set up now (prompts encoded, images read), so their bad input also fails before any work.
        self._ctx0 = self.context(self.backend, 0, stepper, request.i_start, self.batches()[0])
        self.sampler.setup(self._ctx0)

    @property
    def techniques(self) -> list[Technique]:
        return list(self.request.techniques)

    @property
    def rule(self) -> StepRule:
        return self.request.rule

    def batches(self) -> list[range]:
        """The sample indices of each batch, in order: ``batch_size`` samples each, the last one shorter."""
        n = len(self.labels)
        return [range(a, min(a + self.batch_size, n)) for a in range(0, n, self.batch_size)]

    def outline(self, todo: Sequence[int] | None = None) -> Outline:
        """What batches ``todo`` (default all) hold, for a progress bar."""
        batches = self.batches()
        todo = range(len(batches)) if todo is None else todo
        return Outline(sum(len(batches[k]) for k in todo), len(self.timesteps) - self.request.i_start,
                       len(todo), self.batch_size, len(batches) > 1)

    def plan(self, backend: Backend, steps: int | None, timesteps: Sequence[int] | None) -> Stepper:
        """The sampler's walk for one stage; what it cannot do is a ValueError naming it."""
        try:
            stepper = self.rule.plan(backend, steps, timesteps, self.request.stride)
        except RuleError:
            raise
        except ValueError as e:
            raise RuleError(f"rule {self.rule.name!r}: {e}") from None
        # What the rule's declaration left open (the model's own scheduler, SD's PNDM) is known from its walk:
        # the one place a technique that steps again (Technique.steps_again) meets a walk that cannot.
        again = next((t for t in self.request.techniques if t.steps_again), None)
        if again is not None and not stepper.can_redo:
            raise RuleError(f"technique {again.name!r} ({again.steps_again}) steps again from re-noised states, "
                            f"which needs a rule without a history: rule {self.rule.name!r} on backend "
                            f"{backend.name!r} keeps a position or earlier estimates. Use ddim or ddpm (euler on a "
                            f"flow model), or drop {again.steps_again.split('=')[0]}")
        return stepper

    def _stage_plan(self, backend: Backend) -> Stepper:
        """A later stage's walk: its own recipe's, else the run's rule and steps (or ``timesteps2``)."""
        if backend.recipe is None:
            return self.plan(backend, self.request.steps, self.request.timesteps2)
        rule = registry.make_sampler(backend.recipe.sampler)
        return rule.plan(backend, backend.recipe.steps, None, None)

    def _stage_sampler(self, backend: Backend) -> Sampler:
        """The run's Sampler, or one with a stage's own recipe's techniques (counted in the same stats)."""
        if backend.recipe is None:
            return self.sampler
        if backend.recipe not in self._recipe_samplers:
            sampler = Sampler([registry.make_technique(h) for h in backend.recipe.hooks], self.sampler.max_batch)
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
        request = self.request
        backend, stage, stage_images, stage_x, frames = self.backend, 0, [], [], []
        self.stage_timesteps = []
        stepper, i_start = None, request.i_start
        labels = self.labels[batch.start: batch.stop]
        while backend is not None:
            if stage == 0 and self._ctx0 is not None and list(self._ctx0.seeds) == self.seeds[batch.start: batch.stop]:
                ctx = self._ctx0
            else:
                stepper = stepper or self.plan(backend, request.steps, request.timesteps)
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
                every = request.save_every
                if every and stage == 0 and (state.i % every == 0 or state.i == state.n_steps - 1):
                    frames.append(backend.to_image(state.x0).float().cpu())
                yield state
            images = backend.to_image(x).float().cpu()
            stage_images.append(images)
            stage_x.append(x.detach().float().cpu().clone())
            final = x
            stage += 1
            backend = None if request.stages and stage >= request.stages else backend.next_stage(x, labels)
            if backend is not None:
                stepper, i_start = self._stage_plan(backend), 0
        self.samples_done += len(batch)
        self.result = Result(stage_images[-1], labels, self.seeds[batch.start: batch.stop], self.record(),
                             final, stage_images, stage_x, frames, request)

    def to_image(self, x: Tensor) -> Tensor:
        """The images ``[N x C x H x W]`` in [0, 1], on the CPU, of a state ``x`` (any stage's maps as the
        first stage's does: IF's [-1, 1] to [0, 1])."""
        return self.backend.to_image(x).float().cpu()

    def model_calls_per_sample(self) -> float:
        """Images the model has seen per sample so far, every branch counted (CFG: 2 an evaluation)."""
        return self.sampler.stats.get("rows", 0) / max(1, self.samples_done)

    def record(self) -> dict[str, Any]:
        """What run.json says of the run beside its request: what was loaded (the checkpoint), the timesteps
        each stage walked, and the versions that made it."""
        request = self.request
        return {
            "backend": self.backend.name,
            "backend_options": dict(request.options),
            "checkpoint": self.backend.checkpoint,
            "hooks": [{"name": t.name, "args": t.args} for t in request.techniques],
            "sampler": self.rule.spec,
            "timesteps": self.stage_timesteps,
            "i_start": request.i_start,
            "versions": versions(),
        }


def sample(backend: str | Backend | None = None, *, request: RunRequest | None = None, **kwargs: Any) -> Result:
    """Run to the end and return the :class:`Result`: ``sample("mnist", classes=[3], hooks=["cfg:5"])``, or
    ``sample(request=RunRequest.from_json(json.load(open("run.json"))["request"]))``."""
    run = Run(request, **kwargs) if request is not None else Run(backend, **kwargs)
    for _ in run.steps():
        pass
    assert run.result is not None
    return run.result


def write_run(result: Result, folder: Path, extra: dict[str, Any] | None = None) -> None:
    """Write sample PNGs, grid.png, final.safetensors, run.json (and frames/ + trajectory.gif) into ``folder``;
    run.json records the result's request, so ``diffkit sample --from`` repeats it."""
    folder.mkdir(parents=True, exist_ok=True)
    write_batch(folder, 0, 0, result, len(result.images))
    if result.request is not None:
        extra = dict(extra or {}, request=result.request.to_json())
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


# ---- orchestration: runs written to folders (resume, torchrun), sweeps (the MNIST report: mnist/report.py) ----
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


@dataclass(frozen=True)
class FolderAnswer:
    """Rank 0's look at the folder, which every rank of a torchrun world follows."""

    failed: str | None = None  # a refusal, raised alike on every rank
    already_done: str | None = None  # a --resume of this very run, finished: its message
    note: str | None = None  # "resuming: 2 of 10 batches ..."
    batch_size: int = 0
    done: tuple[int, ...] = ()  # batches finished before


class FolderRun:
    """A run written to the folder ``out`` batch by batch (:class:`diffkit.folder.RunFolder`): memory holds
    one batch, an interrupted run continues with ``resume=True``, the batches are shared among the
    processes of a torchrun world (``shard``, from :func:`diffkit.dist.init`), and the files are the same
    bytes however the run was split::

        job = FolderRun("out/digits", RunRequest(labels=(3, 7), num=500, techniques=("cfg:5",), batch_size=100))
        job = FolderRun("out/digits", "mnist", classes=[3, 7], num=500, hooks=["cfg:5"], batch_size=100)  # the same
        for step in job.steps():   # or job.run_all()
            ...                    # a BatchStep: draw progress
        job.note                   # "resuming: 2 of 10 batches ..." or None

    What can be refused is refused here, before any sampling and, for the folder, before the model
    loads: a UserError (an ``out`` in the way, a resume of another command, bad options), raised alike
    on every process. ``already_done`` is set (and :meth:`steps` yields nothing) when ``resume`` finds
    this very run finished. Keyword arguments are :meth:`RunRequest.of`'s.
    """

    def __init__(self, out: str | os.PathLike, request: RunRequest | str | Backend | None = None, *, resume: bool = False,
                 overwrite: bool = False, shard: Shard | None = None, **kwargs: Any):
        self.out, self.shard = Path(out), shard or Shard()
        self.resume, self.overwrite = resume, overwrite
        self.already_done: str | None = None
        self.kept: str | None = None  # what abandon() said
        failed = None
        if not isinstance(request, RunRequest):
            try:
                request = RunRequest.of(request, **kwargs)
            except UserError as e:
                failed = str(e)
        elif kwargs:
            raise TypeError("FolderRun(out, request) takes no run keywords: request.replace(...) changes one")
        if failed is None and self.shard.rank == 0:  # the folder is refused before the model loads (IF's take minutes)
            try:
                RunFolder.precheck(self.out, request.n, bool(request.save_every), resume=resume, overwrite=overwrite)
            except OSError as e:
                failed = str(e)
        failed = dist.broadcast(self.shard, failed)
        if failed:
            raise UserError(failed)
        if request.batch_size is None:
            request = request.replace(batch_size=DEFAULT_BATCH)
        if self.shard.active and isinstance(request.backend, str):  # each rank on its own GPU
            request = request.replace(options=dict(request.options, device=dist.local_device(
                self.shard, request.options.get("device"))))
        self.run = Run(request)
        n, recorded, frames = request.n, self.run.request.to_json(), bool(request.save_every)
        answer = FolderAnswer()
        if self.shard.rank == 0:  # rank 0 alone looks at and prepares the folder; every rank follows its answer
            try:
                folder, note = RunFolder.start(self.out, recorded, n, self.run.batch_size, frames, resume=resume,
                                               overwrite=overwrite, upgrade=registry.with_declared_defaults)
                answer = FolderAnswer(note=note, batch_size=folder.batch_size, done=tuple(sorted(folder.done())))
            except AlreadyDone as e:
                answer = FolderAnswer(already_done=str(e))
            except UserError as e:
                answer = FolderAnswer(failed=str(e))
            except OSError as e:
                answer = FolderAnswer(failed=f"cannot write to {self.out}: {io.reason(e)}")
        answer = dist.broadcast(self.shard, answer)
        if answer.failed:
            raise UserError(answer.failed)
        self.note: str | None = answer.note
        if answer.already_done:
            self.already_done, self.todo = answer.already_done, []
            return
        self.run.batch_size = answer.batch_size
        if self.shard.rank:
            folder = RunFolder(self.out, recorded, n, self.run.batch_size, frames)
        self.folder = folder
        self.todo = [k for k in self.shard.mine(range(len(self.run.batches()))) if k not in answer.done]

    @property
    def outline(self) -> Outline:
        """What this process will sample (the batches left to it)."""
        return self.run.outline(self.todo)

    @classmethod
    def resume_from(cls, out: str | os.PathLike, *, shard: Shard | None = None) -> FolderRun:
        """Continue the interrupted run in ``out`` as it was asked (its ``request.json``), whoever began it."""
        from diffkit.folder import partial_dir, read_json

        path = partial_dir(out) / "request.json"
        if not path.is_file():
            raise ResumeError(f"{out} holds no interrupted run to resume (no {path.relative_to(Path(out).parent)})")
        saved = read_json(path, "start the run afresh with overwrite=True", ("request", "batch_size"))
        request = RunRequest.from_json(saved["request"], batch_size=saved["batch_size"])
        return cls(out, request, resume=True, shard=shard)

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
        """Batch ``k``'s files: what the techniques show beside each sample (an anagram's views,
        ``sample-000.view1.png``, as the Visual Anagrams release saves them), then the samples and the part
        that marks the batch done."""
        start = k * self.run.batch_size
        for tech in self.run.techniques:  # what a technique declares to show beside each sample
            for i, img in enumerate(result.images):
                for suffix, view in tech.view_images(img):
                    io.save_png(view, self.folder.path / f"sample-{start + i:03d}.{suffix}.png")
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


def sample_to(out: str | os.PathLike, request: RunRequest | str | Backend | None = None, **kwargs: Any) -> Path:
    """:class:`FolderRun` run to the end: ``sample_to("out/", "mnist", classes=[3], num=1000, resume=True)``."""
    return FolderRun(out, request, **kwargs).run_all()


SWEEP_RUN_ARGS = ("steps", "rule", "sampler", "i_start", "seed")  # what --sweep may vary besides a parameter


def sweep_runs(name: str, values: Sequence[str], request: RunRequest | str | Backend | None = None,
               **kwargs: Any) -> list[tuple[str, Run]]:
    """One :class:`Run` per value of ``name``: a parameter of a technique or of the step rule (the first
    that declares it), or ``steps``, ``sampler``, ``i_start``, ``seed``. All are built (and so checked)
    before any samples: a UserError names the first bad value. ``request`` (or keywords, as
    :meth:`RunRequest.of` takes them) is the run every value changes."""
    values = [str(v) for v in values]
    if not name or not values:
        raise UserError("a sweep needs a name and at least one value")
    if len(set(values)) != len(values):
        raise UserError(f"sweep {name}: a value is given twice in {', '.join(values)}")
    base = request if isinstance(request, RunRequest) else RunRequest.of(request, **kwargs)
    techs = list(base.techniques)
    swept = next((i for i, t in enumerate(techs) if any(p.name == name for p in t.params)), None)
    rule_cls = type(base.rule) if base.rule is not None else registry.samplers().get(registry.DEFAULT_SAMPLER)
    in_rule = swept is None and rule_cls is not None and any(p.name == name for p in rule_cls.params)
    if swept is None and not in_rule and name not in SWEEP_RUN_ARGS:
        raise UserError(f"sweep {name}: no technique or rule has a parameter {name!r}, and it is not "
                        f"{', '.join(SWEEP_RUN_ARGS)}")
    runs = []
    for value in values:
        if swept is not None:
            these = list(techs)
            these[swept] = registry.technique_from(techs[swept].name, dict(techs[swept].args, **{name: value}))
            changed = base.replace(techniques=tuple(these))
        elif in_rule:
            spec = base.rule.spec["spec"] if base.rule is not None else None
            changed = base.replace(rule=registry.make_sampler(spec, **{name: value}))
        elif name in ("rule", "sampler"):  # sampler: the rule's old name
            changed = base.replace(rule=value)
        else:
            try:
                number = int(value)
            except ValueError:
                raise UserError(f"sweep {name}: {value!r} is not an integer") from None
            changed = base.replace(**{name: number})
        runs.append((value, Run(changed)))
    return runs


def check_sweep_out(out: str | os.PathLike, name: str, runs: list[tuple[str, Run]], overwrite: bool = False) -> None:
    """Refuse (UserError) a sweep whose outputs would replace files, before any samples."""
    out = Path(out)
    if (out / "sweep.png").exists() and not overwrite:
        raise OutputInTheWay(f"{out / 'sweep.png'} exists; pass --overwrite to replace it")
    for value, run in runs:
        check_out(out / f"{name}-{value}", run.request.n, bool(run.request.save_every), overwrite)


def sweep(out: str | os.PathLike, name: str, values: Sequence[str], request: RunRequest | str | Backend | None = None, *,
          overwrite: bool = False, **kwargs: Any) -> Path:
    """One run per value of ``name`` (see :func:`sweep_runs`), written as ``out/NAME-v/`` folders and
    ``out/sweep.png`` side by side, all or none::

        diffkit.api.sweep("out/strength", "strength", ["0.3", "0.6", "0.9"], "mnist",
                          classes=[3], hooks=["sdedit:image=seven.png,strength=0.5"])
    """
    runs = sweep_runs(name, values, request, **kwargs)
    check_sweep_out(out, name, runs, overwrite)
    for _, run in runs:
        for _ in run.steps():
            pass
    return save_sweep(name, [(v, r.result) for v, r in runs], out, overwrite=overwrite)
