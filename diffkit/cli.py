"""The ``diffkit`` command line: a thin typer + rich layer over :mod:`diffkit.api`.

The core yields state (sampling steps, training events); this module draws it.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

app = typer.Typer(help="Compose diffusion sampling techniques as plugins.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
train_app = typer.Typer(help="Train models.", no_args_is_help=True)
app.add_typer(train_app, name="train")
console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """Print ``message`` as an error and exit with ``code`` (2: bad usage, 1: failed run)."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def _ints(text: str | None, what: str) -> list[int]:
    if not text:
        return []
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{what} must be a comma list of integers, got {text!r}", 2)
        raise


@train_app.command("mnist")
def train_mnist(
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoint/, loss.json, loss.png, samples."),
    objective: str = typer.Option("ddpm", help="denoise (one-step denoiser, z = x + sigma eps) or ddpm."),
    conditioning: Optional[str] = typer.Option(None, help="ddpm: time or class (default time)."),
    hidden: Optional[int] = typer.Option(None, help="UNet width D (default: denoise 128, ddpm 64)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default: denoise 5, ddpm 20)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (default: denoise 256, ddpm 128)."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate (default: denoise 1e-4, ddpm 1e-3)."),
    sigma: float = typer.Option(0.5, help="Noise level of the denoise objective."),
    seed: int = typer.Option(0, help="Seeds weights, shuffling and noise."),
    subset: Optional[int] = typer.Option(None, help="Train on the first N images only (quick runs)."),
    sample_epochs: Optional[str] = typer.Option(None, help="Comma list: keep a snapshot and a sample grid after these epochs."),
    data: Optional[Path] = typer.Option(None, help="MNIST folder (default: $DIFFKIT_MNIST or ~/.cache/diffkit/mnist)."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint."),
) -> None:
    """Train the seed's MNIST UNet: one-step denoiser or time/class-conditioned DDPM."""
    import torch

    from diffkit.mnist.checkpoint import CheckpointError
    from diffkit.mnist.data import MnistNotFound
    from diffkit.mnist.train import TrainConfig, train

    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig(objective=objective, conditioning=conditioning, hidden=hidden, epochs=epochs,
                      batch_size=batch_size, lr=lr, sigma=sigma, seed=seed, subset=subset,
                      sample_epochs=_ints(sample_epochs, "--sample-epochs"))
    command = "diffkit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        resolved = cfg.resolved()
        with progress() as bar:
            task = None
            for ev in train(cfg, out, data, resume=resume, command=command):
                if task is None:
                    task = bar.add_task("train", total=resolved.epochs * ev.steps_per_epoch, info="",
                                        completed=(ev.epoch - 1) * ev.steps_per_epoch)
                if ev.kind == "step":
                    bar.update(task, advance=1, description=f"epoch {ev.epoch}/{resolved.epochs}",
                               info=f"loss {ev.loss:.4f}  {ev.images_per_s:.0f} img/s")
                else:
                    bar.console.print(f"epoch {ev.epoch}: mean loss {ev.loss:.4f}, checkpoint {ev.checkpoint}")
                    if ev.snapshot is not None:
                        _preview(ev.snapshot, resolved, out / f"samples-epoch-{ev.epoch:03d}.png")
    except (MnistNotFound, CheckpointError, FileExistsError) as e:
        fail(str(e), 2)
    except (ValueError, FloatingPointError) as e:
        fail(str(e), 1)
    console.print(f"done: {out / 'checkpoint'}")


def _preview(snapshot: Path, cfg, path: Path) -> None:
    """Sample grid of a training snapshot; a failure warns and leaves training running."""
    if cfg.objective != "ddpm":
        return
    try:
        from diffkit.api import mnist_preview

        mnist_preview(snapshot, path)
        console.print(f"samples: {path}")
    except Exception as e:  # a preview must never cost a long training run
        console.print(f"[yellow]warning:[/] sample grid for {snapshot} failed: {e}")


def _labels(prompt: list[str] | None, classes: str | None) -> dict:
    if prompt and classes:
        fail("give --prompt or --class, not both", 2)
    if classes:
        return {"classes": [c.strip() for c in classes.split(",") if c.strip()]}
    return {"prompts": list(prompt)} if prompt else {}


@app.command()
def sample(
    backend: str = typer.Option("mnist", "--backend", "-b", help="Backend name (see `diffkit backends`)."),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", "-p", help="Prompt (repeatable)."),
    classes: Optional[str] = typer.Option(None, "--class", "-c", help="Comma list of classes, e.g. 0,1,2."),
    hook: Optional[list[str]] = typer.Option(None, "--hook", "-H", help="Technique spec name:ARGS (repeatable; first is outermost)."),
    seed: int = typer.Option(0, help="Seed of the first sample; sample i uses seed + i."),
    num: int = typer.Option(1, "--num", "-n", help="Samples per prompt or class."),
    steps: Optional[int] = typer.Option(None, help="Number of evenly strided steps (default: the backend's)."),
    stride: Optional[int] = typer.Option(None, help="Timestep stride (MNIST default 1, IF default 30)."),
    timesteps: Optional[str] = typer.Option(None, help="Explicit comma list of timesteps, descending."),
    i_start: int = typer.Option(0, "--i-start", help="Start at this index of the timesteps."),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="Output folder."),
    overwrite: bool = typer.Option(False, help="Replace files an earlier run left in --out."),
    save_every: int = typer.Option(0, help="Also save every K-th step's x0 estimate as frames and a GIF."),
    checkpoint: Optional[str] = typer.Option(None, help="Checkpoint (mnist: a folder written by `diffkit train`)."),
    device: Optional[str] = typer.Option(None, help="Device: cpu, cuda, cuda:1 ..."),
    max_batch: Optional[int] = typer.Option(None, help="Split the step's model call above this many rows."),
    sweep: Optional[str] = typer.Option(None, help="NAME=v1,v2,...: one run per value of a hook parameter "
                                                   "(or i_start, seed); writes NAME-v/ folders and sweep.png."),
) -> None:
    """Sample images with any composition of techniques."""
    import diffkit
    from diffkit.api import Run, check_out

    if sweep:
        return _sweep(sweep, backend, _labels(prompt, classes), hook or [], seed, num, steps, stride, timesteps,
                      i_start, out, overwrite, max_batch, {"checkpoint": checkpoint, "device": device})
    run = _make_run(backend, _labels(prompt, classes), hook or [], seed, num, steps, stride, timesteps, i_start,
                    save_every, max_batch, {"checkpoint": checkpoint, "device": device})
    try:
        check_out(out, len(run.labels), bool(save_every), overwrite)
    except FileExistsError as e:
        fail(str(e), 2)
    _execute(run)
    diffkit.save(run.result, out, overwrite=overwrite)
    console.print(f"wrote {len(run.labels)} samples, grid.png and run.json to {out}")


def _sweep(sweep, backend, labels, hooks, seed, num, steps, stride, timesteps, i_start, out, overwrite, max_batch,
           options) -> None:
    """One run per value; every run is checked before the first starts, and all outputs land together."""
    import diffkit
    from diffkit import io, plugins
    from diffkit.api import check_out
    from diffkit.spec import format_spec, parse

    name, eq, values = sweep.partition("=")
    name, values = name.strip(), [v.strip() for v in values.split(",") if v.strip()]
    if not eq or not name or not values:
        fail(f"--sweep must look like NAME=v1,v2,..., got {sweep!r}", 2)
    runs = []
    for value in values:
        specs, used = [], False
        for h in hooks:
            hname, args = parse(h)
            cls = plugins.techniques().get(hname)
            if cls is not None and any(p.name == name for p in cls.params):
                args = [(k, v) for k, v in args if k != name] + [(name, value)]
                used = True
            specs.append(format_spec(hname, args))
        kw = {"seed": seed, "i_start": i_start}
        if not used:
            if name not in kw:
                fail(f"--sweep {name}: no --hook has a parameter {name!r}, and it is not i_start or seed", 2)
            kw[name] = int(_ints(value, f"--sweep {name}")[0])
        run = _make_run(backend, labels, specs, kw["seed"], num, steps, stride, timesteps, kw["i_start"], 0,
                        max_batch, options)
        folder = out / f"{name}-{value}"
        try:
            check_out(folder, len(run.labels), False, overwrite)
        except FileExistsError as e:
            fail(str(e), 2)
        if (out / "sweep.png").exists() and not overwrite:
            fail(f"{out / 'sweep.png'} exists; pass --overwrite to replace it", 2)
        runs.append((value, run, folder))
    results = []
    for value, run, folder in runs:
        console.print(f"{name} = {value}")
        _execute(run)
        results.append(run.result)
    columns = [r.images for r in results]
    for (value, run, folder), res in zip(runs, results):
        diffkit.save(res, folder, overwrite=overwrite, extra={"sweep": {name: value}})
    io.save_png(io.labelled_columns(columns, [f"{name}={v}" for v in values]), out / "sweep.png")
    console.print(f"wrote {len(values)} runs and sweep.png to {out}")


def _make_run(backend, labels, hooks, seed, num, steps, stride, timesteps, i_start, save_every, max_batch, options):
    from diffkit.api import Run
    from diffkit.backends.base import BackendError
    from diffkit.mnist.checkpoint import CheckpointError
    from diffkit.plugins import PluginError, UnknownName
    from diffkit.spec import SpecError

    try:
        return Run(backend, hooks=hooks, seed=seed, num=num, steps=steps, stride=stride,
                   timesteps=_ints(timesteps, "--timesteps") or None, i_start=i_start, save_every=save_every,
                   max_batch=max_batch, backend_options=options, **labels)
    except (UnknownName, SpecError, BackendError, CheckpointError, ValueError) as e:
        fail(str(e).strip("'\""), 2)
    except PluginError as e:
        fail(str(e), 1)


def _execute(run) -> None:
    """Drive a run with a progress bar; failures exit 1 with the culprit's name and write nothing."""
    from diffkit.backends.base import BackendError
    from diffkit.denoise import NonFiniteError
    from diffkit.plugins import PluginError

    try:
        with progress() as bar:
            tasks: dict[int, int] = {}
            for st in run.steps():
                if st.stage not in tasks:
                    tasks[st.stage] = bar.add_task(f"stage {st.stage + 1}" if st.stage else "sample",
                                                   total=st.n_steps, completed=st.i, info="")
                bar.update(tasks[st.stage], completed=st.i + 1, info=f"t={st.t}")
    except (PluginError, NonFiniteError, BackendError, ValueError) as e:
        fail(f"{e}; nothing was written", 1)


@app.command()
def hooks() -> None:
    """List installed techniques with their parameters."""
    from rich.table import Table

    from diffkit import plugins

    out = Console()
    for name, cls in sorted(plugins.techniques().items()):
        out.print(f"[bold]{name}[/] ({cls.kind}; backends: {', '.join(cls.backends)})  {cls.help}", highlight=False)
        if cls.params:
            table = Table(show_header=True, box=None, padding=(0, 2))
            for col in ("parameter", "type", "default", "help"):
                table.add_column(col)
            for p in cls.params:
                default = "required" if p.required else repr(p.default)
                table.add_row(p.name, p.type_name, default, p.help)
            out.print(table)
    views = plugins.views()
    if views:
        out.print(f"[bold]views[/] (for anagram): {', '.join(sorted(views))}", highlight=False)


@app.command()
def backends() -> None:
    """List installed backends with their options."""
    from diffkit import plugins

    out = Console()
    for name, info in sorted(plugins.backends().items()):
        out.print(f"[bold]{name}[/] (labels: {info.label_kind})  {info.help}", highlight=False)
        for opt, text in info.options.items():
            out.print(f"    --{opt}: {text}", highlight=False)
