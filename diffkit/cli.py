"""The ``diffkit`` command line: a thin typer + rich layer over :mod:`diffkit.api`.

The core yields state (sampling steps, training events); this module draws it.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from diffkit import interrupt
from diffkit.errors import DiffkitError, RunFailure, UserError

# rich_markup_mode=None: click's plain usage errors, one line each, never boxed and wrapped at 80 columns.
app = typer.Typer(help="Compose diffusion sampling techniques as plugins.", no_args_is_help=True,
                  pretty_exceptions_enable=False, rich_markup_mode=None)
train_app = typer.Typer(help="Train models.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(train_app, name="train")
# soft_wrap: messages are never hard-wrapped (a terminal wraps them itself; logs stay greppable).
console = Console(stderr=True, soft_wrap=True)

# What the one line printed on SIGINT/SIGTERM says about the outputs (or a function that cleans up and
# says it); commands update it as they go.
_on_interrupt: list[Any] = ["nothing was written"]
DEFAULT_BATCH = 256  # api.DEFAULT_BATCH, for the help text (not imported: `diffkit --help` must not import torch)


def fail(message: str, code: int = 1) -> None:
    """Print ``message`` as an error and exit with ``code`` (2: bad usage, 1: failed run)."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def main() -> None:
    """The ``diffkit`` console script: signals end a run cleanly, and no traceback reaches the user."""
    interrupt.install()
    _quiet_libraries()
    try:
        try:
            app()
        except SystemExit as e:
            _leave(e.code)
            raise
    except interrupt.Interrupted as e:
        said = _on_interrupt[0]
        console.print(f"interrupted by {e}: {said() if callable(said) else said}", highlight=False)
        _leave(e.exit_code)
        sys.exit(e.exit_code)
    except DiffkitError as e:  # one a command did not catch: still the user's message and its exit code
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        _leave(e.exit_code)
        sys.exit(e.exit_code)
    except Exception as e:  # a bug in diffkit or a plugin: one line, the traceback only when asked for
        if os.environ.get("DIFFKIT_DEBUG"):
            raise
        console.print(f"[bold red]internal error:[/] {escape(type(e).__name__)}: {escape(str(e))}. "
                      "This is a bug in diffkit or a plugin; DIFFKIT_DEBUG=1 shows the traceback.", highlight=False)
        sys.exit(1)


def _quiet_libraries() -> None:
    """Libraries' warnings and log lines (Pillow's DecompressionBombWarning, diffusers' "install
    accelerate", the hub client's retries) are not diffkit's messages: the user acts on diffkit's one
    line. DIFFKIT_DEBUG=1 keeps them. Environment variables, not imports: `diffkit --help` stays fast."""
    if os.environ.get("DIFFKIT_DEBUG"):
        return
    import warnings

    warnings.simplefilter("ignore")
    for var in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY", "HF_HUB_VERBOSITY"):
        os.environ.setdefault(var, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _leave(code: Any) -> None:
    """A process of a torchrun world ends here, skipping the interpreter's teardown: gloo's worker threads,
    torn down during finalization, now and then abort a process that has finished its work ("terminate
    called without an active exception", exit -6), which fails the whole launch. Files are all closed."""
    from diffkit import dist

    if dist.joined():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))  # dist.leave, past finish()


# Numeric options: every int and float option declares a closed range, checked (with NaN and inf
# refused) before the command runs, so nothing loads or is written. The check is ours, not typer's
# min/max, so that the message states the whole valid range, not just the bound that was crossed.
# every seed a sample or a study uses must fit torch's 64-bit generator seed: the request's one bound
from diffkit.request import SEED_MAX  # noqa: E402


def _ranged(default: Any, decls: tuple[str, ...], lo: float, hi: float, help: str, what: str) -> Any:
    span = f"{_number(lo)}..{_number(hi)}"

    def check(value: Optional[float]) -> Optional[float]:
        if value is not None and not (math.isfinite(value) and lo <= value <= hi):
            raise typer.BadParameter(f"{value} is not {what} in {span}")
        return value

    info = typer.Option(default, *decls, callback=check, help=f"{help} [{span}]")
    info.range = (lo, hi)  # read by tests/test_refusals.py's walk over every option
    return info


def _number(v: float) -> str:
    """A bound as people write it: integers in full (4611686018427387904, not 4.61169e+18)."""
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def Int(default: Any, *decls: str, lo: int, hi: int, help: str) -> Any:
    return _ranged(default, decls, lo, hi, help, "an integer")


def Float(default: Any, *decls: str, lo: float, hi: float, help: str) -> Any:
    return _ranged(default, decls, lo, hi, help, "a finite number")


def Rendezvous() -> Any:
    from diffkit.dist import RENDEZVOUS_S

    return Float(RENDEZVOUS_S, "--rendezvous-timeout", lo=1, hi=86_400,
                 help="Under torchrun: seconds to wait for the master and every rank to arrive.")


def progress(disable: bool = False) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False, disable=disable)


def _ints(text: str | None, what: str, lo: int = 0, hi: int = 10**9) -> list[int]:
    """A comma list of integers in ``lo..hi``; anything else (an empty item, an empty list) exits 2 naming
    the option. None (not given): []."""
    if text is None:
        return []
    items = [v.strip() for v in text.split(",")]
    if not all(items):
        fail(f"{what} {text!r} has an empty item: give a comma list such as 20,10,0", 2)
    try:
        values = [int(v) for v in items]
    except ValueError:
        values = None
    if values is None or any(not lo <= v <= hi for v in values):
        fail(f"{what} must be a comma list of integers in {lo}..{hi}, got {text!r}", 2)
    return values


def _floats(text: str, what: str, lo: float, hi: float) -> list[float]:
    """A comma list of finite numbers in ``lo..hi``; anything else exits 2 naming the option."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = None
    if not values or any(not (math.isfinite(v) and lo <= v <= hi) for v in values):
        fail(f"{what} must be a comma list of finite numbers in {lo:g}..{hi:g}, got {text!r}", 2)
    return values


@train_app.command("mnist")
def train_mnist(
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoint/, loss.json, loss.png, samples."),
    objective: str = typer.Option("ddpm", help="denoise (one-step denoiser, z = x + sigma eps), ddpm, or flow "
                                               "(flow matching: x = (1 - s) x0 + s eps, predicting eps - x0)."),
    conditioning: Optional[str] = typer.Option(None, help="ddpm, flow: time or class (default time)."),
    hidden: Optional[int] = Int(None, lo=1, hi=1024, help="UNet width D (default: denoise 128, ddpm 64)."),
    epochs: Optional[int] = Int(None, lo=1, hi=10_000, help="Epochs (default: denoise 5, ddpm 20)."),
    batch_size: Optional[int] = Int(None, lo=1, hi=60_000, help="Batch size (default: denoise 256, ddpm 128)."),
    lr: Optional[float] = Float(None, lo=1e-8, hi=1.0, help="Adam learning rate (default: denoise 1e-4, ddpm 1e-3)."),
    sigma: float = Float(0.5, lo=0.01, hi=10.0, help="Noise level of the denoise objective."),
    seed: int = Int(0, lo=0, hi=SEED_MAX, help="Seeds weights, shuffling and noise."),
    subset: Optional[int] = Int(None, lo=1, hi=60_000, help="Train on the first N images only (quick runs)."),
    sample_epochs: Optional[str] = typer.Option(None, help="Comma list: keep a snapshot and a sample grid after these epochs."),
    data: Optional[Path] = typer.Option(None, help="MNIST folder (default: $DIFFKIT_MNIST or ~/.cache/diffkit/mnist)."),
    threads: Optional[int] = Int(None, lo=1, hi=1024, help="torch CPU threads (default: torch's choice)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint."),
    init: Optional[str] = typer.Option(None, help="Start from this checkpoint's weights (a folder or a shipped "
                                                  "name, e.g. mnist-h64): fine-tuning; its width and conditioning must "
                                                  "match, the objective may differ (a ddpm model warm-starts a flow run)."),
    ema: Optional[float] = Float(None, lo=0.5, hi=0.99999, help="Keep a moving average of the weights with this "
                                 "decay a step (e.g. 0.999) and save it as the model."),
    device: str = typer.Option("cpu", help="Where the model trains: cpu, cuda, cuda:N (deterministic kernels; "
                                           "the same draws, other arithmetic than the CPU)."),
    rendezvous_timeout: float = Rendezvous(),
) -> None:
    """Train the MNIST UNet: a one-step denoiser, or a time- or class-conditioned DDPM or flow model."""
    import torch

    from diffkit import dist
    from diffkit.backends.base import check_device
    from diffkit.mnist.train import TrainConfig, train

    try:
        check_device(device)
    except UserError as e:
        fail(str(e), 2)
    if dist.launched() and torch.device(device).type != "cpu":
        fail(f"--device {device}: training under torchrun runs on the CPU (gloo) only; drop --device or train "
             "in one process", 2)
    if threads:
        torch.set_num_threads(threads)
    shard = _shard("cpu", rendezvous_timeout)  # under torchrun: DistributedDataParallel over gloo
    cfg = TrainConfig(objective=objective, conditioning=conditioning, hidden=hidden, epochs=epochs,
                      batch_size=batch_size, lr=lr, sigma=sigma, seed=seed, subset=subset,
                      sample_epochs=_ints(sample_epochs, "--sample-epochs", 1, 10_000), ema=ema, init=init)
    command = "diffkit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    _on_interrupt[0] = (f"the last finished epoch's checkpoint in {out / 'checkpoint'} is intact; "
                        "continue with --resume")
    try:
        resolved = cfg.resolved()
        with progress(disable=shard.rank != 0) as bar:
            task = None
            for ev in train(cfg, out, data, resume=resume, command=command, shard=shard, device=device):
                if task is None:
                    task = bar.add_task("train", total=resolved.epochs * ev.steps_per_epoch, info="",
                                        completed=(ev.epoch - 1) * ev.steps_per_epoch)
                if ev.kind == "step":
                    bar.update(task, advance=1, description=f"epoch {ev.epoch}/{resolved.epochs}",
                               info=f"loss {ev.loss:.4f}  {ev.images_per_s:.0f} img/s")
                elif shard.rank == 0:
                    bar.console.print(f"epoch {ev.epoch}: mean loss {ev.loss:.4f}, checkpoint {ev.checkpoint}")
                    if ev.snapshot is not None:
                        _preview(ev.snapshot, resolved, out / f"samples-epoch-{ev.epoch:03d}.png")
    except UserError as e:  # missing data, a checkpoint in the way, options that contradict the run resumed
        fail(f"{shard.who()}{e}", 2)
    except RunFailure as e:  # the loss went NaN
        fail(str(e), 1)
    dist.finish(shard)
    if shard.rank == 0:
        console.print(f"done: {out / 'checkpoint'}")


def _preview(snapshot: Path, cfg, path: Path) -> None:
    """Sample grid of a training snapshot; a failure warns and leaves training running."""
    if cfg.objective not in ("ddpm", "flow"):
        return
    try:
        from diffkit.mnist.report import mnist_preview

        mnist_preview(snapshot, path)
        console.print(f"samples: {path}")
    except Exception as e:  # a preview must never cost a long training run
        console.print(f"[yellow]warning:[/] sample grid for {snapshot} failed: {e}")


def Backend(help: str = "Backend name (see `diffkit backends`; default: the installed default, mnist).") -> Any:
    return typer.Option(None, "--backend", "-b", help=help)


def backend_flags() -> dict[str, list[tuple[Any, str]]]:
    """Each option an installed backend declares as a flag (``Param(..., flag=True)``), once by name: each
    declaration of it with the backend that makes it."""
    from diffkit import registry

    out: dict[str, list[tuple[Any, str]]] = {}
    for name, info in sorted(registry.backends().items()):
        for p in info.params:
            if p.flag:
                out.setdefault(p.name, []).append((p, name))
    return out


def _flag_help(name: str, declared: list[tuple[Any, str]]) -> str:
    """Each backend's own help for the flag (grouped where they say the same), and what it is short for."""
    said: dict[str, list[str]] = {}
    for p, backend in declared:
        said.setdefault(p.help, []).append(backend)
    return "; ".join(f"{', '.join(owners)}: {text}" for text, owners in said.items()) + f" (-O {name}=...)."


def takes_backend(command: Any) -> Any:
    """Give ``command`` every installed backend's flags (``--checkpoint``, ``--model``, ``--height``, ...,
    made from the backends' declarations as pytest plugins add their options) and ``-O NAME=VALUE``;
    the command receives them as one dict, ``options``, read and checked against the chosen backend's
    declarations by the request, before any model loads. No backend or option is named here."""
    import functools
    import inspect

    from diffkit.errors import RunFailure
    from diffkit.params import to_bool

    try:
        flags = backend_flags()
    except RunFailure:  # a plugin that fails to load: no flags now; the command says what failed when it runs
        flags = {}
    added, annotations = [], {}
    for name, declared in flags.items():
        p, help, flag = declared[0][0], _flag_help(name, declared), name.replace("_", "-")
        if p.type is to_bool:
            info, kind = typer.Option(None, f"--{flag}/--no-{flag}", help=help), Optional[bool]
        else:
            info, kind = typer.Option(None, f"--{flag}", help=help, metavar=p.type_name.upper()), Optional[str]
        added.append(inspect.Parameter(f"flag_{name}", inspect.Parameter.KEYWORD_ONLY, default=info, annotation=kind))
        annotations[f"flag_{name}"] = kind
    added.append(inspect.Parameter(
        "backend_option", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[list[str]],
        default=typer.Option(None, "--backend-option", "-O", help="NAME=VALUE: an option the backend declares (see "
                             "`diffkit backends`; repeatable). The flags above are short for it.")))
    annotations["backend_option"] = Optional[list[str]]
    sig = inspect.signature(command)
    own = [q for q in sig.parameters.values() if q.name != "options"]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(f"flag_{name}") for name in flags}
        kwargs["options"] = _backend_options(kwargs.pop("backend_option"), **given)
        return command(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*own, *added])
    wrapper.__annotations__ = {**{k: v for k, v in command.__annotations__.items() if k != "options"}, **annotations}
    return wrapper


def _backend_options(pairs: Optional[list[str]], **flags: Any) -> dict[str, Any]:
    """``--backend-option NAME=VALUE`` items and the flags, as one dict (read and checked against the
    backend's declarations by the request, before the model loads)."""
    options = {k: v for k, v in flags.items() if v is not None}
    for item in pairs or []:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            fail(f"--backend-option must be NAME=VALUE, got {item!r}", 2)
        if key in flags and flags[key] is not None:
            fail(f"backend option {key!r} is given twice (--{key.replace('_', '-')} is short for "
                 f"--backend-option {key}=...)", 2)
        if key in options:
            fail(f"backend option {key!r} is given twice (-O {key}={options[key]} and -O {item.strip()}): give it once", 2)
        options[key] = value
    return options


def _labels(prompt: list[str] | None, classes: str | None) -> dict:
    if prompt and classes:
        fail("give --prompt or --class, not both", 2)
    if classes:
        items = [c.strip() for c in classes.split(",")]
        if not all(items):
            fail(f"--class {classes!r} has an empty item: give a comma list such as 0,1,2", 2)
        return {"classes": items}
    return {"prompts": list(prompt)} if prompt else {}


@app.command()
@takes_backend
def sample(
    ctx: typer.Context,
    backend: Optional[str] = Backend(),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", "-p", help="Prompt (repeatable)."),
    classes: Optional[str] = typer.Option(None, "--class", "-c", help="Comma list of classes, e.g. 0,1,2."),
    technique: Optional[list[str]] = typer.Option(None, "--technique", "--hook", "-H", help="Technique NAME[:ARGS] (see "
                                                  "`diffkit techniques`; repeatable; first is outermost; --hook is "
                                                  "its old name)."),
    seed: int = Int(0, lo=0, hi=SEED_MAX, help="Seed of the first sample; sample i uses seed + i."),
    num: int = Int(1, "--num", "-n", lo=1, hi=100_000, help="Samples per prompt or class."),
    rule: Optional[str] = typer.Option(None, "--rule", "--sampler", "-s", help="Step rule NAME[:ARGS] (see `diffkit rules`; "
                                                                         "--sampler is its old name; "
                                                                         "default ddpm)."),
    steps: Optional[int] = Int(None, lo=1, hi=100_000, help="Number of steps, spaced as the sampler spaces them "
                                                            "(default: as many as the backend's default stride makes)."),
    stride: Optional[int] = Int(None, lo=1, hi=100_000, help="Timestep stride (MNIST default 1, IF default 30)."),
    timesteps: Optional[str] = typer.Option(None, help="Explicit comma list of timesteps, descending (samplers that "
                                                       "take a list: ddpm, euler, heun, dpmpp_2m, ...)."),
    timesteps2: Optional[str] = typer.Option(None, help="Explicit timesteps of the second stage (IF II)."),
    i_start: int = Int(0, "--i-start", lo=0, hi=100_000, help="Start at this index of the timesteps."),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="Output folder."),
    overwrite: bool = typer.Option(False, help="Replace files an earlier run left in --out."),
    save_every: int = Int(0, lo=0, hi=100_000, help="Also save every K-th step's x0 estimate as frames and a GIF "
                                                    "(0: none)."),
    max_batch: Optional[int] = Int(None, lo=1, hi=1_000_000, help="Split the step's model call above this many rows."),
    max_branches: Optional[int] = Int(None, lo=1, hi=2**30, help="Allow the techniques to build up to this many branches a "
                                      "sample at each evaluation (default 1024: more is refused, naming the count)."),
    sweep: Optional[str] = typer.Option(None, help="NAME=v1,v2,...: one run per value of a technique or rule parameter "
                                                   "(or steps, sampler, i_start, seed); writes NAME-v/ folders "
                                                   "and sweep.png."),
    batch_size: Optional[int] = Int(None, lo=1, hi=100_000, help=f"Samples through the model at a time; each batch "
                                    f"is written as it finishes and memory holds one (default {DEFAULT_BATCH}). "
                                    "Any size gives the same bytes."),
    resume: bool = typer.Option(False, help="Continue the interrupted run of this same command in --out, skipping "
                                            "the batches it finished."),
    animate: bool = typer.Option(False, "--animate", help="Afterwards, as `diffkit animate OUT`: a GIF (and MP4) "
                                                          "of every sample moving into each view."),
    source: Optional[Path] = typer.Option(None, "--from", help="Repeat the run a run.json records (written by "
                                          "`diffkit sample`, the UI, the API or a sweep; or its run folder): the "
                                          "same samples, byte for byte, into --out."),
    rendezvous_timeout: float = Rendezvous(),
    options: dict = None,
) -> None:
    """Sample images with any composition of techniques.

    Under `torchrun --nproc-per-node K -m diffkit sample ...` the batches are shared among the K processes
    and the output is the same bytes as one process writes.
    """
    from diffkit import api, dist

    if source is not None:
        request = _recorded(ctx, source, batch_size, max_batch, max_branches)
    else:
        try:
            request = api.RunRequest.of(
                backend, **_labels(prompt, classes), techniques=technique or [], seed=seed, num=num, steps=steps,
                stride=stride, timesteps=_ints(timesteps, "--timesteps") or None,
                timesteps2=_ints(timesteps2, "--timesteps2") or None, i_start=i_start, save_every=save_every,
                max_batch=max_batch, backend_options=options, rule=rule, max_branches=max_branches,
                batch_size=batch_size)
        except UserError as e:
            fail(str(e), 2)
    if animate and not any(t.animates for t in request.techniques):
        from diffkit import registry

        animated = sorted(n for n, cls in registry.techniques().items() if cls.animates)
        fail(f"--animate animates the techniques that declare clips ({', '.join(animated)}), and this run has none", 2)
    if sweep:
        for flag, given in (("--batch-size", batch_size), ("--resume", resume), ("torchrun", dist.launched())):
            if given:
                fail(f"--sweep runs each value whole, in one process: it takes no {flag}", 2)
        return _sweep(sweep, request, out, overwrite)
    shard = _shard(request.options.get("device"), rendezvous_timeout)
    try:
        job = api.FolderRun(out, request, resume=resume, overwrite=overwrite, shard=shard)
    except UserError as e:
        dist.finish(shard)
        if shard.rank == 0:
            fail(str(e), 2)
        raise typer.Exit(2)
    except RunFailure as e:
        fail(str(e), 1)
    if job.already_done:
        dist.finish(shard)
        if shard.rank == 0:
            console.print(job.already_done)
        raise typer.Exit(0)
    if job.note and shard.rank == 0:
        console.print(job.note)
    _on_interrupt[0] = job.abandon
    _draw(job.steps(), job.outline, shard, job.abandon, out)
    if shard.rank == 0:
        console.print(f"wrote {request.n} samples, grid.png and run.json to {out}")
        if animate:
            _animate(out, overwrite=True)
    dist.finish(shard)


# What `sample --from` takes besides: how the work is split and where it goes, never what it makes.
FROM_TAKES = ("source", "out", "overwrite", "batch_size", "max_batch", "max_branches", "resume", "animate",
              "rendezvous_timeout")


def _recorded(ctx: typer.Context, source: Path, batch_size, max_batch, max_branches):
    """The request recorded in ``source`` (a run.json, an interrupted run's request.json, or a run folder),
    as this run splits the work; a sampling flag given beside it, or a record this diffkit cannot honour,
    exits 2 naming it."""
    from diffkit.request import RunRequest, read_recorded

    given = [p for p in ctx.command.params if p.name not in FROM_TAKES
             and getattr(ctx.get_parameter_source(p.name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")]
    if given:
        fail(f"--from repeats the recorded run as it was asked: it takes no {max(given[0].opts, key=len)} (edit the "
             "run.json's request to change it)", 2)
    work = {k: v for k, v in (("batch_size", batch_size), ("max_batch", max_batch),
                               ("max_branches", max_branches)) if v is not None}
    path = source / "run.json" if source.is_dir() else source
    try:
        return RunRequest.from_json(read_recorded(source), **work)
    except UserError as e:
        fail(f"--from {path}: {e}", 2)


def _animate(folder: Path, overwrite: bool, frames: int = 24, fps: int = 12, mp4: bool = True) -> None:
    from diffkit import animate

    try:  # every refusal before the bar and the first frame
        todo = animate.plan(folder, overwrite=overwrite, mp4=mp4)
    except UserError as e:
        fail(str(e), 2)
    try:
        with progress() as bar:
            task = bar.add_task("animate", total=todo.count, info="")
            written = animate.render(todo, n=frames, fps=fps, progress=lambda k, n: bar.update(task, completed=k))
    except OSError as e:
        fail(f"cannot write the animations to {folder}: {_why(e)}", 1)
    gifs = [p for p in written if p.suffix == ".gif"]
    mp4s = [p for p in written if p.suffix == ".mp4"]
    console.print(f"wrote {len(gifs)} GIF{'s' if len(gifs) != 1 else ''}"
                  + (f" and {len(mp4s)} MP4s" if mp4s else escape(" (MP4 too with pip install -e '.[video]')") if mp4 else "")
                  + f" to {folder}", highlight=False)


@app.command("animate")
def animate_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder `diffkit sample` wrote (run.json and its samples)."),
    overwrite: bool = typer.Option(False, help="Replace animations already there."),
    frames: int = Int(24, lo=2, hi=1000, help="Frames of the move (held 8 frames at each end)."),
    fps: int = Int(12, lo=1, hi=120, help="Frames a second."),
    mp4: bool = typer.Option(True, "--mp4/--no-mp4", help="Also write MP4s (needs imageio-ffmpeg: "
                                                           "pip install -e '.[video]')."),
) -> None:
    """Animate a run's illusions: every sample moving into each anagram view (or zooming out, fading colour
    in, shaking for factorized images), captioned with the prompts: sample-000.view1.gif and .mp4."""
    _animate(run_dir, overwrite, frames, fps, mp4)


@app.command("score")
def score_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder `diffkit sample` wrote with an illusion (anagram views)."),
    clip: Optional[str] = typer.Option(None, help="CLIP model (folder or hub id) to score prompts with (default for "
                                                  "prompts: openai/clip-vit-large-patch14; class-labelled digits: "
                                                  "the MNIST classifier)."),
    classifier: Optional[str] = typer.Option(None, help="MNIST classifier folder (default: the shipped one)."),
    device: str = typer.Option("cpu", help="Where CLIP runs: cpu, cuda, cuda:N."),
    overwrite: bool = typer.Option(False, help="Replace a score.json already there."),
) -> None:
    """Measure a run's illusions: the Visual Anagrams paper's alignment A (the worst view's similarity to its
    own prompt) and concealment C (each view's softmax over the illusion's prompts), mean and 0.9/0.95
    quantiles, per sample and over the run; on MNIST digits also the share of samples whose every view
    reads as its own class. Written to RUN_DIR/score.json."""
    from diffkit import score
    from diffkit.request import check_device

    from diffkit.io import write_json

    try:  # every refusal before the scorer loads
        check_device(device)
        run, samples, target = score.prepare(run_dir, overwrite=overwrite)
        scorer = score.scorer_for(run, clip, classifier, device)
    except UserError as e:
        fail(str(e), 2)
    with progress() as bar:
        task = bar.add_task("score", total=len(samples), info="")
        result = score.score_samples(samples, scorer, lambda k, n: bar.update(task, completed=k + 1))
    try:
        write_json(target, result)
    except OSError as e:
        fail(f"cannot write {target}: {_why(e)}", 1)
    console.print(score.describe(result) + f"; written to {target}", highlight=False)


def _shard(device: Optional[str], rendezvous_s: Optional[float] = None):
    """This process's shard of the run (one process: the whole run); a broken launch exits 2."""
    from diffkit import dist

    if dist.launched():
        console.print(f"rank {os.environ.get('RANK', '?')}: waiting for the rendezvous at "
                      f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}", highlight=False)
    try:
        return dist.init(device, rendezvous_s=rendezvous_s or dist.RENDEZVOUS_S)
    except UserError as e:  # dist.LaunchError: the launch is incomplete or the rendezvous failed
        fail(str(e), 2)


def _publish(write, out: Path, after=None) -> None:
    """Write the outputs; a signal during the final renames is answered once they are all in place.
    A failure (a full disk) says what ``after()`` kept."""
    try:
        write()
    except interrupt.Interrupted as e:
        _finished_if_committed(e, out)
        raise
    except OSError as e:
        fail(f"cannot write to {out}: {_why(e)}; {after() if after else 'nothing was written'}", 1)


def _finished_if_committed(e: interrupt.Interrupted, out: Optional[Path]) -> None:
    """A signal answered once the final renames were done: the run is complete, and the line says so."""
    if e.committed:
        _on_interrupt[0] = f"the run had finished; its outputs are complete in {out}"


def _why(e: OSError) -> str:
    """An OSError as the user can act on it."""
    import errno

    hint = {errno.ENOSPC: " (the disk is full: free some space first)",
            errno.EDQUOT: " (over the disk quota: free some space first)",
            errno.EROFS: " (a read-only filesystem: choose another --out)"}.get(e.errno or 0, "")
    from diffkit.io import reason

    return f"{reason(e)}{hint}"


def _sweep(sweep: str, request, out: Path, overwrite: bool) -> None:
    """One run per value; every run is checked before the first starts, and all outputs land together."""
    from diffkit import api

    name, eq, values = sweep.partition("=")
    name, values = name.strip(), [v.strip() for v in values.split(",") if v.strip()]
    if not eq or not name or not values:
        fail(f"--sweep must look like NAME=v1,v2,..., got {sweep!r}", 2)
    try:
        runs = api.sweep_runs(name, values, request)
        api.check_sweep_out(out, name, runs, overwrite)
    except UserError as e:
        fail(f"--sweep {name}: {e}" if not str(e).startswith("sweep") else f"--{e}", 2)
    except RunFailure as e:
        fail(str(e), 1)
    _on_interrupt[0] = f"nothing was written to {out}"
    for value, run in runs:
        console.print(f"{name} = {value}")
        _draw(api.drive(run), run.outline())
    _publish(lambda: api.save_sweep(name, [(v, r.result) for v, r in runs], out, overwrite=overwrite), out)
    console.print(f"wrote {len(values)} runs and sweep.png to {out}")


def _draw(steps, outline, shard=None, after=None, out: Optional[Path] = None) -> None:
    """Draw a run's :class:`~diffkit.api.BatchStep` s as progress bars (one set under torchrun: rank 0's), as
    its :class:`~diffkit.api.Outline` announces them. A failure exits naming the culprit (and the rank),
    and says what ``after()`` left of the run: 1 for a run that failed, 2 for input found bad only once it ran."""
    from diffkit.dist import Shard

    shard = shard or Shard()
    n = outline.samples
    split = f", {outline.batches} batches of up to {outline.batch_size}" if outline.split else ""
    console.print(f"{shard.who()}sampling {n} sample{'s' if n != 1 else ''}, {outline.steps} steps{split}",
                  highlight=False)

    def kept() -> str:
        return after() if after else "nothing was written"

    try:
        with progress(disable=shard.rank != 0) as bar:
            whole = bar.add_task("samples", total=n, info="") if outline.split else None
            tasks: dict[int, int] = {}
            for ev in steps:
                st = ev.state
                if st is None:  # the batch is written
                    if whole is not None:
                        bar.update(whole, advance=ev.size)
                        for task in tasks.values():
                            bar.remove_task(task)
                    tasks = {}
                    continue
                if st.stage not in tasks:
                    name = f"stage {st.stage + 1}" if st.stage else "sample"
                    tasks[st.stage] = bar.add_task(name if whole is None else f"  batch {ev.batch + 1}/{ev.batches} {name}",
                                                   total=st.n_steps, completed=st.i, info="")
                bar.update(tasks[st.stage], completed=st.i + 1, info=f"t={st.t}")
    except interrupt.Interrupted as e:
        _finished_if_committed(e, out)
        raise
    except RunFailure as e:
        fail(f"{shard.who()}{e}; {kept()}", 1)
    except UserError as e:
        fail(f"{shard.who()}{e}; {kept()}", 2)
    except OSError as e:
        fail(f"{shard.who()}cannot write the samples: {_why(e)}; {kept()}", 1)


def _print_params(out: Console, params: tuple) -> None:
    """A table of declared parameters (techniques', samplers', backends'): name, type, default, range, help."""
    from rich.table import Table

    if not params:
        return
    table = Table(show_header=True, box=None, padding=(0, 2))
    table.add_column("parameter", no_wrap=True)  # a name is typed as shown: never cut
    for col in ("type", "default", "range", "help"):
        table.add_column(col)
    for p in params:
        default = "required" if p.required else repr(p.default)
        span = f"{p.range[0]:g}..{p.range[1]:g}" if p.range else "|".join(p.choices)
        table.add_row(p.name, p.type_name, default, span, p.help)
    out.print(table)


@app.command()
def techniques() -> None:
    """List installed techniques with their parameters (`diffkit hooks`, its old name, too)."""
    from diffkit import registry

    out = Console()
    for name, cls in sorted(registry.techniques().items()):
        out.print(f"[bold]{name}[/] ({cls.kind}; backends: {', '.join(cls.backends)})  {cls.help}", highlight=False)
        _print_params(out, cls.params)
    views = registry.views()
    if views:
        def spelled(name: str) -> str:  # a view with arguments as it is written: skew:factor=1.5
            params = getattr(views[name], "params", ())
            return name + (":" + ",".join(f"{p.name}={'FILE' if p.required else p.default}" for p in params)
                           if params else "")
        out.print(f"[bold]views[/] (for anagram's view=): {', '.join(spelled(n) for n in sorted(views))}",
                  highlight=False)


@app.command()
def rules() -> None:
    """List installed step rules with their parameters (`diffkit samplers`, its old name, too)."""
    from diffkit import registry

    out = Console()
    kinds = {"vp": "discrete", "flow": "flow matching"}
    for name, cls in sorted(registry.samplers().items()):
        scheduler = getattr(cls, "scheduler", None)
        origin = f"diffusers {scheduler}" if isinstance(scheduler, str) else "diffkit"
        flow = getattr(cls, "flow_scheduler", None)
        origin += f"; on flow models {flow}" if isinstance(flow, str) and flow != scheduler else ""
        steps = " and ".join(kinds.get(f, f) for f in cls.formulations)
        out.print(f"[bold]{name}[/] ({origin}; steps {steps} models)  {cls.help}", highlight=False)
        _print_params(out, cls.params)


# the old names of `techniques` and `rules`, kept so users' scripts keep working (not listed in --help)
app.command("hooks", hidden=True)(techniques)
app.command("samplers", hidden=True)(rules)


@app.command()
def ui(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (another than 127.0.0.1 exposes the UI "
                                               "to your network)."),
    port: int = Int(7860, lo=1, hi=65535, help="Port."),
    share: bool = typer.Option(False, "--share/--no-share", help="Also serve through a public Gradio link."),
    out: Path = typer.Option(Path("out/ui"), "--out", "-o", help="Where runs are written (run-*/ and their zips); "
                                                                  "the only folder the page can get files from."),
    allow: Optional[list[str]] = typer.Option(None, "--allow", help="A checkpoint or model folder the page may "
                                                                    "pick (repeatable; the shipped models always)."),
    max_samples: int = Int(256, lo=1, hi=100_000, help="Most samples one request may make (labels x samples "
                                                       "per label); more is refused with a message."),
    max_upload_mb: int = Int(20, lo=1, hi=10_000, help="Largest file a page may upload, in MB."),
    max_runs: int = Int(2, lo=1, hi=64, help="Runs served at once (each within --max-samples); more wait in a "
                                             "queue."),
    auth: Optional[str] = typer.Option(None, help="USER:PASS: ask for this login (Gradio's own); do so whenever "
                                                  "--host or --share lets others reach the page."),
) -> None:
    """Compose techniques in the browser: forms from the plugins' declarations, live previews, a drawing
    pad for SDEdit and a brush for inpainting masks (pip install -e '.[ui]')."""
    import ipaddress

    login = None
    if auth is not None:
        user, colon, password = auth.partition(":")
        if not colon or not user or not password:
            fail(f"--auth must be USER:PASS (both non-empty), got {'USER:' if colon else 'no colon'}", 2)
        login = (user, password)
    try:
        import gradio
    except ImportError:
        fail("the UI needs Gradio: pip install -e '.[ui]'", 2)
    from diffkit.ui import Settings, default_choices, launch

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    exposed = [w for w, on in ((f"--host {host} lets other machines reach it", not loopback),
                               ("--share gives it a public link", share)) if on]
    if exposed:
        console.print(f"[bold yellow]warning:[/] {' and '.join(exposed)}: anyone who reaches the page can run "
                      f"models on this machine and read what it makes"
                      + ("; it asks for the --auth login" if login else "; add --auth USER:PASS to ask for a login"),
                      highlight=False)
    console.print(f"diffkit ui (Gradio {gradio.__version__}) on http://{host}:{port} (outputs in {out}; at most "
                  f"{max_samples} samples a request, {max_runs} runs at once, uploads up to {max_upload_mb} MB); "
                  "Ctrl-C stops it")
    settings = Settings(out.resolve(), default_choices([str(Path(a).resolve()) for a in allow or []]),
                        max_samples=max_samples, max_upload_mb=max_upload_mb, max_runs=max_runs)
    launch(settings, host, port, share, auth=login)


@app.command()
def backends() -> None:
    """List installed backends with their options (give them as --backend-option NAME=VALUE)."""
    from diffkit import registry

    out = Console()
    default = registry.default_backend()
    for name, info in sorted(registry.backends().items()):
        kind = "flow matching or discrete, by option" if callable(info.formulation) else \
            {"vp": "discrete", "flow": "flow matching"}.get(info.formulation, info.formulation)
        said = [f"labels: {info.label_kind}", kind] + (["the default"] if name == default else []) + (
            ["saves embeddings: diffkit embed"] if info.embed else [])
        out.print(f"[bold]{name}[/] ({'; '.join(said)})  {info.help}", highlight=False)
        _print_params(out, info.params)
    out.print(f"Options: --backend-option NAME=VALUE (-O), on every command that takes --backend; "
              f"{', '.join(f'--{f}' for f in backend_flags())} are short for it.", highlight=False)


data_app = typer.Typer(help="Datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
eval_app = typer.Typer(help="Evaluate models.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@data_app.command("mnist")
def data_mnist(
    data: Optional[Path] = typer.Option(None, help="Folder (default: $DIFFKIT_MNIST or ~/.cache/diffkit/mnist)."),
    verify: bool = typer.Option(False, "--verify", help="Only check the sha256 of files already there."),
) -> None:
    """Download the four MNIST files (checking their sha256), or verify a folder."""
    from diffkit.mnist import data as mnist

    folder = data or mnist.default_dir()
    try:
        if not verify:
            with console.status(f"downloading MNIST to {folder}"):
                mnist.download(folder)
        ok = mnist.verify(folder)
    except UserError as e:
        fail(str(e), 2)
    except OSError as e:
        fail(f"{e}. Without network, copy the four files (raw or .gz) into {folder}", 1)
    for name, good in ok.items():
        console.print(f"{'ok ' if good else 'BAD'} {name}")
    if not all(ok.values()):
        fail(f"checksum mismatch in {folder}", 1)


@train_app.command("classifier")
def train_classifier(
    out: Path = typer.Option(..., "--out", help="Folder for the classifier checkpoint."),
    epochs: int = Int(2, lo=1, hi=1000, help="Epochs."),
    data: Optional[Path] = typer.Option(None, help="MNIST folder."),
    seed: int = Int(0, lo=0, hi=SEED_MAX, help="Seed."),
) -> None:
    """Train the MNIST classifier that `diffkit eval mnist` measures samples with."""
    import json

    from diffkit.mnist.evaluate import train_classifier as run

    try:
        with progress() as bar:
            task = None
            for epoch, step, steps, loss in run(out, data, epochs, seed=seed):
                task = task if task is not None else bar.add_task("train", total=epochs * steps, info="")
                bar.update(task, advance=1, description=f"epoch {epoch}/{epochs}", info=f"loss {loss:.4f}")
    except UserError as e:
        fail(str(e), 2)
    acc = json.loads((out / "config.json").read_text())["test_accuracy"]
    console.print(f"test accuracy {acc:.4f}; classifier in {out}")


@eval_app.command("mnist")
@takes_backend
def eval_mnist(
    backend: Optional[str] = Backend("Backend making the digits (28x28, classes 0-9; default mnist, whose "
                                     "--checkpoint is a folder or a shipped name: mnist-class, mnist-h64 ...)."),
    classifier: Optional[Path] = typer.Option(None, help="Classifier folder (default: the shipped one)."),
    num: int = Int(50, "--num", "-n", lo=1, hi=10_000, help="Samples per class."),
    cfg: float = Float(5.0, lo=-100.0, hi=100.0, help="CFG scale of the samples (when no --technique is given)."),
    technique: Optional[list[str]] = typer.Option(None, "--technique", "--hook", "-H", help="Techniques to sample with, as in "
                                             "`diffkit sample` (repeatable; replaces --cfg)."),
    rule: Optional[str] = typer.Option(None, "--rule", "--sampler", "-s", help="Step rule NAME[:ARGS], as in `diffkit sample` "
                                                                         "(default ddpm)."),
    steps: Optional[int] = Int(None, lo=1, hi=300, help="Number of steps of the sampler (instead of --stride)."),
    stride: int = Int(1, lo=1, hi=299, help="Timestep stride of the sampling."),
    seed: int = Int(0, lo=0, hi=SEED_MAX, help="Seed of the first sample."),
    data: Optional[Path] = typer.Option(None, help="MNIST folder (real test digits for the Frechet distance)."),
    out: Optional[Path] = typer.Option(None, help="Write the report as JSON here."),
    batch_size: Optional[int] = Int(None, lo=1, hi=100_000, help=f"Samples through the model at a time; only their "
                                    f"classifier features are kept (default {DEFAULT_BATCH}). Any size gives the "
                                    "same report."),
    rendezvous_timeout: float = Rendezvous(),
    options: dict = None,
) -> None:
    """Accuracy of class-conditioned samples as judged by a classifier, and a Frechet distance to real digits.

    Under `torchrun --nproc-per-node K -m diffkit eval mnist ...` the batches are shared among the K
    processes, and rank 0 reports on all of them: the same numbers as one process.
    """
    import json

    from diffkit import dist, io
    from diffkit.mnist.report import MnistEval

    shard = _shard("cpu", rendezvous_timeout)
    try:
        ev = MnistEval(backend=backend, options=options, classifier=classifier, num=num,
                       hooks=list(technique or [f"cfg:{cfg}"]), sampler=rule, steps=steps, stride=stride, seed=seed,
                       data=data, batch_size=batch_size, shard=shard)
    except UserError as e:
        fail(str(e), 2)
    except RunFailure as e:
        fail(str(e), 1)
    _draw(ev.steps(), ev.run.outline(shard.mine(range(len(ev.run.batches())))), shard)
    dist.finish(shard)
    if shard.rank:
        return
    result = ev.report
    if out:
        io.write_json(out, result)
    console.print(f"accuracy {result['accuracy']:.4f}  frechet distance {result['frechet_distance']:.2f} "
                  f"({result['times_floor']:.1f}x the {result['real_data_floor']:.2f} of {len(ev.run.labels)} real "
                  "training digits)")
    print(json.dumps(result, indent=2))


def _load_study_image(backend, image: Path):
    from diffkit import io

    C, H, W = backend.sample_shape
    try:
        return io.load_image(image, (H, W), C)[None].to(backend.device)
    except (UserError, FileNotFoundError) as e:
        fail(str(e), 2)


@app.command()
@takes_backend
def noise(
    image: Path = typer.Argument(..., help="Any image; cropped and resized to the backend's size."),
    t: Optional[str] = typer.Option(None, "--t", help="Comma list of timesteps (default: T/4, T/2, 3T/4)."),
    backend: Optional[str] = Backend("Backend whose schedule to use (default mnist)."),
    seed: int = Int(0, lo=0, hi=SEED_MAX, help="Seed of the noise."),
    out: Path = typer.Option(Path("out/noise.png"), "--out", "-o", help="Figure path (PNG)."),
    overwrite: bool = typer.Option(False, help="Replace an existing figure."),
    options: dict = None,
) -> None:
    """The forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps at chosen timesteps, side by side."""
    from diffkit import studies

    be = _study_backend(backend, options)
    ts = _timesteps_in(be, t)
    _refuse(out, overwrite)
    img = _load_study_image(be, image)
    studies.noise_figure(be, img, ts, seed, out, dict(options, image=str(image)))
    console.print(f"wrote {out} and {out.with_suffix('.json').name}")


def _study_backend(name: Optional[str], options: dict[str, Any]):
    from diffkit.request import RunRequest

    try:
        return RunRequest(backend=name, options=options).load_backend()
    except UserError as e:
        fail(str(e), 2)


def _timesteps_in(backend, text: Optional[str]) -> list[int]:
    T = len(backend.alphas_cumprod)
    if not text:
        return [T // 4, T // 2, 3 * T // 4]
    ts = _ints(text, "--t", 0, T - 1)
    if not ts:
        fail(f"--t must list timesteps in 0..{T - 1}, got {text!r}", 2)
    return ts


def _refuse(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        fail(f"{out} exists; pass --overwrite to replace it", 2)


@app.command()
@takes_backend
def denoise(
    image: Optional[Path] = typer.Argument(None, help="Image to noise and denoise (the image study)."),
    t: Optional[str] = typer.Option(None, "--t", help="With IMAGE: comma list of timesteps (default: T/4, T/2, 3T/4)."),
    method: str = typer.Option("blur,onestep,iterative", help="With IMAGE: any of blur, onestep, iterative."),
    backend: Optional[str] = Backend("With IMAGE: backend (default mnist)."),
    prompt: Optional[str] = typer.Option(None, help="With IMAGE: prompt or class of the model's estimate (default: none)."),
    stride: Optional[int] = Int(None, lo=1, hi=100_000, help="With IMAGE: stride of the iterative run (default: the backend's)."),
    sigmas: str = typer.Option("0,0.2,0.4,0.5,0.6,0.8,1.0", help="Without IMAGE: the one-step denoiser's noise levels."),
    data: Optional[Path] = typer.Option(None, help="Without IMAGE: MNIST folder (test digits)."),
    seed: int = Int(0, lo=0, hi=SEED_MAX, help="Seed of the noise."),
    out: Path = typer.Option(Path("out/denoise.png"), "--out", "-o", help="Figure path (PNG); JSON beside it."),
    overwrite: bool = typer.Option(False, help="Replace an existing figure."),
    options: dict = None,
) -> None:
    """Denoising studies: blur vs one-step vs iterative on IMAGE, or, with a one-step denoiser
    checkpoint and no IMAGE, that denoiser on MNIST test digits across noise levels."""
    from diffkit import studies

    _refuse(out, overwrite)
    if image is None:  # the one-step denoiser is named by the option a backend would take it as
        return _denoiser_study(studies.denoiser_named(options), sigmas, data, seed, out)
    methods = [m.strip() for m in method.split(",") if m.strip()]
    unknown = sorted(set(methods) - {"blur", "onestep", "iterative"})
    if unknown or not methods:
        fail(f"--method takes blur, onestep, iterative; got {', '.join(unknown) or 'nothing'}", 2)
    be = _study_backend(backend, options)
    ts = _timesteps_in(be, t)
    img = _load_study_image(be, image)
    studies.denoise_figure(be, img, ts, methods, prompt, stride, seed, out, str(image))
    console.print(f"wrote {out}")


def _denoiser_study(checkpoint: Optional[str], sigmas: str, data: Optional[Path], seed: int, out: Path) -> None:
    from diffkit import studies
    from diffkit.mnist import checkpoint as ckpt
    from diffkit.mnist import data as mnist

    if not checkpoint:
        fail("give an IMAGE to study, or --checkpoint of a one-step denoiser to study it on MNIST test digits", 2)
    levels = _floats(sigmas, "--sigmas", 0.0, 10.0)
    try:
        model, config = ckpt.load_model(checkpoint)
        x, _ = mnist.load("test", data)
    except UserError as e:
        fail(str(e), 2)
    if config.get("objective") != "denoise":
        fail(f"{checkpoint} is a {config.get('objective')} checkpoint; the sigma study needs a one-step denoiser", 2)
    mse = studies.denoiser_figure(model, x, levels, seed, out, checkpoint, config)
    console.print("test MSE: " + ", ".join(f"sigma {s:g}: {v:.4f}" for s, v in mse.items()))
    console.print(f"wrote {out}")


@app.command()
@takes_backend
def embed(
    prompt: list[str] = typer.Argument(..., help="Prompts to encode."),
    out: Path = typer.Option(Path("embeddings.safetensors"), "--out", "-o", help="safetensors file to write."),
    backend: Optional[str] = Backend("Backend whose text encoder to run (default: the first installed that saves "
                                     "embeddings: if)."),
    append: bool = typer.Option(True, help="Keep prompts already in --out."),
    options: dict = None,
) -> None:
    """Encode prompts once with a backend's text encoder (IF's T5); `diffkit sample --embeddings FILE` then
    never loads it."""
    from diffkit import registry
    from diffkit.request import RunRequest

    try:
        able = [n for n, info in registry.backends().items() if info.embed is not None]
        name = backend or (able[0] if able else None)
        info = registry.get_backend(name) if name else None
        if info is None or info.embed is None:
            fail(f"backend {name!r} saves no prompt embeddings; {', '.join(able) or 'no installed backend'} "
                 f"{'does' if len(able) == 1 else 'do'}", 2)
        given = RunRequest(backend=name, options=options).options  # read and checked as a run's are
        with console.status(f"encoding prompts with {name}'s text encoder"):
            count = info.embed(list(prompt), str(out), append, **given)
    except UserError as e:
        fail(str(e), 2)
    console.print(f"wrote {count} prompt embeddings to {out}")
