"""``diffkit ui``: compose techniques in the browser (Gradio).

Nothing here knows a technique: each form is built from the plugin's own ``Param`` declarations
(type, default, help, range, kind), so a third-party technique gets its form too. A run is the same
:class:`diffkit.api.Run` the command line makes, from the same spec strings; the page shows the
equivalent ``diffkit sample`` command, which writes the same bytes.

Security: the server listens on 127.0.0.1 unless told otherwise (and warns when it does not); a page
never names a server path. Images come as uploads or drawings, at most ``max_upload_mb`` each, and
are saved in a per-session folder under the output root that goes when the page is closed; models
and checkpoints are picked from the list the server was started with; outputs go only under the
output root. One request makes at most ``max_samples`` samples, written to disk a batch at a time
as the command line writes them, so memory holds one batch whatever is asked.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from diffkit import io, registry
from diffkit.params import REQUIRED, Param, to_bool

PREVIEW_EVERY = 10  # steps between x0 previews
BATCH = 64  # samples through the model at a time: a run's memory, whatever it asks for
MAX_SAMPLES = 256  # default cap on the samples of one request (diffkit ui --max-samples)
MAX_RUNS = 2  # default number of runs served at once (diffkit ui --max-runs)
MAX_UPLOAD_MB = 20  # default cap on one uploaded file (diffkit ui --max-upload-mb)


@dataclass
class Settings:
    """What the server allows: where outputs go, the model paths a page may pick (per option name), and
    the work one request may ask for."""

    out: Path
    choices: dict[str, list[str]] = field(default_factory=dict)
    max_samples: int = MAX_SAMPLES
    max_upload_mb: int = MAX_UPLOAD_MB
    max_runs: int = MAX_RUNS


def default_choices(extra: list[str] | None = None) -> dict[str, list[str]]:
    """What a page may pick for each path-valued parameter (``BACKEND.OPTION`` or ``TECHNIQUE.PARAM``):
    what the declaration offers (shipped models, hub ids) and ``extra`` (``diffkit ui --allow``), for a
    third party's parameters as for diffkit's own."""
    paths = list(extra or [])
    out = {}
    for owner, params in [*((n, i.params) for n, i in registry.backends().items()),
                          *((n, c.params) for n, c in registry.techniques().items())]:
        for p in params:
            if p.kind == "path":
                out[f"{owner}.{p.name}"] = ["", *p.offers, *paths]
    return out


# ---- the run a page describes, as the command line would spell it ----

def hook_spec(name: str, values: dict[str, Any]) -> str:
    """A technique's form values as a ``--hook`` spec (parameters left at their default are omitted)."""
    from diffkit.syntax import format_spec

    cls = registry.techniques()[name]
    args = []
    for p in cls.params:
        v = values.get(p.name)
        if v is None or v == "" or v == [] or (not p.required and v == p.default):
            continue
        for item in (v if p.multiple else [v]):
            args.append((p.name, _text(item)))
    return format_spec(name, args)


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v)) if abs(v) < 1e15 else repr(v)
    return str(v)


def labels_of(text: str, kind: str) -> dict[str, list[str]]:
    """The page's labels box: comma-separated classes, or one prompt a line."""
    if kind == "class":
        items = [c.strip() for c in (text or "").split(",") if c.strip()]
        return {"classes": items} if items else {}
    items = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return {"prompts": items} if items else {}


def command(backend: str, options: dict[str, Any], labels: dict[str, list[str]], hooks: list[str], seed: int,
            num: int, steps: int | None, sampler: str | None, out: Path) -> str:
    """The ``diffkit sample`` command that writes this run (into ``out``: the page gives the run folder's
    name, relative, so the command runs as shown where the user is, not into the server's full folder)."""
    flags = {p.name for p in registry.get_backend(backend).params if p.flag}  # its declared flags
    args = ["diffkit", "sample", "--backend", backend]
    for k, v in options.items():
        if v in (None, "", False):
            continue
        if k in flags:
            args += [f"--{k.replace('_', '-')}"] if v is True else [f"--{k.replace('_', '-')}", str(v)]
        else:
            args += ["--backend-option", f"{k}={_text(v)}"]
    if "classes" in labels:
        args += ["--class", ",".join(labels["classes"])]
    for p in labels.get("prompts", []):
        args += ["--prompt", p]
    for h in hooks:
        args += ["--technique", h]
    args += ["--seed", str(seed), "--num", str(num)]
    if sampler:
        args += ["--rule", sampler]
    if steps:
        args += ["--steps", str(steps)]
    args += ["--out", str(out)]
    return " ".join(shlex.quote(a) for a in args)


# ---- images from the page ----

def save_upload(image: Any, folder: Path, stem: str) -> str | None:
    """An uploaded or drawn image (PIL, or an ImageEditor value) as a PNG in ``folder``; its path."""
    if image is None:
        return None
    if isinstance(image, dict):  # ImageEditor: the composite is what the user sees
        image = image.get("composite") if image.get("composite") is not None else image.get("background")
        if image is None:
            return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{uuid.uuid4().hex[:8]}.png"
    image.save(path, format="PNG")
    return str(path)


def mask_from_editor(value: Any, folder: Path, stem: str) -> str | None:
    """The strokes painted over the image (the editor's layers) as a mask: white where painted."""
    from PIL import ImageChops

    layers = [layer for layer in (value or {}).get("layers") or [] if layer is not None] if isinstance(value, dict) else []
    if not layers:
        return None
    alpha = layers[0].convert("RGBA").getchannel("A")
    for layer in layers[1:]:
        alpha = ImageChops.lighter(alpha, layer.convert("RGBA").getchannel("A"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{uuid.uuid4().hex[:8]}.png"
    alpha.point(lambda v: 255 if v > 0 else 0).convert("L").save(path, format="PNG")
    return str(path)


# ---- running ----

class PageError(Exception):
    """Bad input from the page: shown as a message, never as a traceback."""


STOPPED = "stopped: finished batches (if any) are kept for Resume"


class Stops:
    """The Stop button's flags. A run gets its flag when the page asks for it (so Stop also ends a run still
    queued), Stop raises every flag of its page, and the run, seeing its flag between two steps, ends and says
    :data:`STOPPED` as its last update; its flag goes with it.

    Written by hand because Gradio's ``cancels`` kills the run's generator between two of its updates, unordered
    with the Stop click's own: a page could show a step of a run already stopped, and never "stopped" (CI saw it)."""

    def __init__(self) -> None:
        self.flags: dict[str, threading.Event] = {}

    def ask(self, page: str) -> str:
        """A new run of ``page`` (Gradio's session hash): its ticket."""
        ticket = f"{page}/{uuid.uuid4().hex}"
        self.flags[ticket] = threading.Event()
        return ticket

    def flag(self, ticket: str | None) -> threading.Event:
        return self.flags.get(ticket or "") or threading.Event()

    def stop(self, page: str) -> int:
        """Raise the flags of ``page``'s runs; how many were running or queued."""
        mine = [f for t, f in list(self.flags.items()) if t.startswith(f"{page}/")]
        for f in mine:
            f.set()
        return len(mine)

    def done(self, ticket: str | None) -> None:
        self.flags.pop(ticket or "", None)


def run_page(settings: Settings, session: Path, backend: str, options: dict[str, Any], labels_text: str,
             stack: list[dict[str, Any]], seed: int, num: int, steps: int | None,
             sampler: str | None, progress: Any = None,
             stop: threading.Event | None = None) -> Iterator[tuple[str, list, Any, str, str | None]]:
    """Run what the page describes; yield ``(status, gallery, preview, command, zip)`` as it goes, and
    report each step to ``progress(fraction, desc=...)`` (the page's progress bar). Once ``stop`` is set the
    run ends after the step in progress, keeps its finished batches and yields :data:`STOPPED` last."""
    info = registry.backends().get(backend)
    if info is None:
        raise PageError(f"unknown backend {backend!r}")
    declared = {p.name: p for p in info.params}
    for k, v in options.items():
        p = declared.get(k)
        if p is not None and p.kind == "path" and v not in (None, "", *settings.choices.get(f"{backend}.{k}", [])):
            raise PageError(f"{k} {v!r} is not one this server offers")
    # the chosen backend's options, those left at their default omitted (as hook_spec omits a technique's)
    options = {k: v for k, v in options.items()
               if k in declared and v not in (None, "") and not (declared[k].default == v)}
    labels = labels_of(labels_text, info.label_kind)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{uuid.uuid4().hex[:4]}"
    folder = settings.out / f"run-{stamp}"
    try:
        yield from _run(settings, session, backend, options, labels, stack, seed, num, steps, sampler, progress, folder,
                        stop)
    finally:
        _tidy(folder)


def _check_size(settings: Settings, n: int, labels: int, num: int) -> None:
    if n > settings.max_samples:
        raise PageError(f"{n:,} samples asked ({labels:,} labels x {num:,}); this server makes at most "
                        f"{settings.max_samples:,} a run (diffkit ui --max-samples N raises it; the command line "
                        "has no such cap)")


def _tidy(folder: Path) -> None:
    """After a run ends, however: a folder with neither a finished run nor finished batches to resume goes."""
    from diffkit.folder import partial_dir

    if folder.is_dir() and not (folder / "run.json").is_file() and not partial_dir(folder).exists():
        shutil.rmtree(folder, ignore_errors=True)


def _run(settings: Settings, session: Path, backend: str, options: dict[str, Any], labels: dict[str, list[str]],
         stack: list[dict[str, Any]], seed: int, num: int, steps: int | None, sampler: str | None, progress: Any,
         folder: Path, stop: threading.Event | None) -> Iterator[tuple[str, list, Any, str, str | None]]:
    from diffkit import api
    from diffkit.errors import UserError

    inputs = folder / "inputs"
    hooks = []
    for item in stack:
        values = dict(item["values"])
        for p in registry.techniques()[item["name"]].params:
            if p.kind in ("image", "sketch", "mask") and values.get(p.name):
                src = Path(values[p.name])
                if session not in src.parents:  # only files this session uploaded or drew
                    raise PageError(f"technique {item['name']!r}: {p.name} must be uploaded or drawn on the page")
                inputs.mkdir(parents=True, exist_ok=True)
                dst = inputs / src.name
                shutil.copyfile(src, dst)
                values[p.name] = str(dst)
            if p.kind == "path" and values.get(p.name) not in (None, "", *settings.choices.get(
                    f"{item['name']}.{p.name}", [])):
                raise PageError(f"technique {item['name']!r}: {p.name} {values[p.name]!r} is not one this server offers")
        hooks.append(hook_spec(item["name"], values))
    cmd = command(backend, options, labels, hooks, seed, num, steps, sampler, Path(folder.name))
    try:
        # Batch by batch into the run's folder, as `diffkit sample` writes it: memory holds one batch, and
        # a run stopped or cut short keeps its finished batches for Resume.
        request = api.RunRequest.of(backend, hooks=hooks, seed=int(seed), num=int(num),
                                    steps=int(steps) if steps else None, sampler=sampler or None,
                                    backend_options=options, batch_size=BATCH, **labels)
        _check_size(settings, request.n, len(request.labels), request.num)  # before the model loads
        job = api.FolderRun(folder, request)
    except UserError as e:
        raise PageError(str(e)) from None
    (job.folder.path / "command.txt").write_text(cmd + "\n")  # published with the run; read by a resume
    yield from _sample(job, cmd, progress, stop)


def _sample(job: Any, cmd: str, progress: Any,
            stop: threading.Event | None) -> Iterator[tuple[str, list, Any, str, str | None]]:
    """Drive a :class:`diffkit.api.FolderRun` with previews; at the end the gallery and the zip, or
    :data:`STOPPED` once ``stop`` is set."""
    from diffkit.errors import RunFailure, UserError

    folder, outline, n = job.out, job.outline, job.run.request.n
    todo, left = outline.batches, outline.samples
    yield (f"sampling {left} samples, {outline.steps} steps"
           + (f" ({n - left} were done)" if left < n else ""), [], None, cmd, None)
    steps, stopped = job.steps(), False
    try:
        for ev in steps:
            if stop is not None and stop.is_set():
                stopped = True
                break
            st = ev.state
            if st is None:
                continue
            stage = f"stage {st.stage + 1}, " if st.stage else ""
            part = f"batch {ev.batch + 1}/{todo}, " if todo > 1 else ""
            if progress is not None:
                progress((ev.batch + (st.i + 1) / st.n_steps) / max(1, todo), desc=f"{part}{stage}step {st.i + 1}/{st.n_steps}")
            if st.i % PREVIEW_EVERY == 0 or st.i == st.n_steps - 1:
                # every stage's state maps to an image as stage 1's does (IF: [-1, 1] -> [0, 1])
                preview = io.to_pil(io.grid(job.run.to_image(st.x0), min(ev.size, 8)))
                yield f"{part}{stage}step {st.i + 1} of {st.n_steps}", [], preview, cmd, None
    except (RunFailure, UserError) as e:
        raise PageError(f"{e}; {job.abandon()}") from None
    finally:
        steps.close()  # now, not when the traceback lets go of it: a stopped run's folder is tidied at once
    if stopped:
        yield STOPPED, [], None, cmd, None
        return
    archive = shutil.make_archive(str(folder), "zip", folder)
    samples = json.loads((folder / "run.json").read_text())["samples"]
    gallery = [(str(folder / s["file"]), f"{s['label']} · seed {s['seed']}") for s in samples]
    yield f"done: {n} samples in {folder}", gallery, io.to_pil(io.load_png(folder / "grid.png")), cmd, archive


def interrupted_runs(settings: Settings) -> list[str]:
    """The run folders under the output root holding an interrupted run (finished batches to resume)."""
    from diffkit.folder import partial_dir

    return sorted((f.name for f in settings.out.glob("run-*") if (partial_dir(f) / "request.json").is_file()),
                  reverse=True)


def resume_page(settings: Settings, name: str, progress: Any = None,
                stop: threading.Event | None = None) -> Iterator[tuple[str, list, Any, str, str | None]]:
    """Continue the interrupted run ``name`` (one of :func:`interrupted_runs`) as it was asked; what the
    page shows (and what ``stop`` does) is as for a new run."""
    from diffkit import api
    from diffkit.errors import UserError
    from diffkit.folder import partial_dir

    if name not in interrupted_runs(settings):  # a name, never a path, from the page
        raise PageError(f"{name!r} is not an interrupted run of this server")
    folder = settings.out / name
    try:
        saved = json.loads((partial_dir(folder) / "request.json").read_text())
        request = api.RunRequest.from_json(saved["request"])
        _check_size(settings, request.n, len(request.labels), request.num)  # before the model loads
        job = api.FolderRun.resume_from(folder)
    except UserError as e:
        raise PageError(str(e)) from None
    except (OSError, ValueError, KeyError) as e:
        raise PageError(f"{name}: its saved request does not read ({e}); start the run afresh") from None
    if job.already_done:
        raise PageError(job.already_done)
    command_file = job.folder.path / "command.txt"
    cmd = command_file.read_text().strip() if command_file.is_file() else ""
    try:
        yield from _sample(job, cmd, progress, stop)
    finally:
        _tidy(folder)


# ---- the page ----

def widget(gr: Any, tech: str, p: Param, value: Any, settings: Settings, k: int = 0, elem_id: str | None = None) -> Any:
    """The Gradio component for one declared parameter of a technique or backend ``tech`` (``value``:
    what the page set before; ``elem_id``: the component's id, by default ``p{k}-{name}``)."""
    label = p.name + ("" if not p.required else " (required)")
    info = p.help + (f" [{p.range_text()}]" if p.range else "")
    ident = elem_id or f"p{k}-{p.name}"
    if p.kind == "device" or p.choices:
        options = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])] if p.kind == "device" else list(p.choices)
        return gr.Dropdown(["", *options], value=value or "", label=label, info=info, interactive=True,
                           elem_id=ident)
    if p.kind in ("image", "sketch"):
        if p.kind == "sketch":
            from PIL import Image

            # a white page to draw on (an editor without a background takes no strokes)
            return gr.ImageEditor(value=value or Image.new("RGB", (256, 256), "white"),
                                  label=f"{label}: upload or draw — {p.help}", type="pil", image_mode="RGB",
                                  sources=("upload",), canvas_size=(256, 256), elem_id=ident, interactive=True,
                                  brush=gr.Brush(colors=["#000000"], default_size=6, color_mode="fixed"))
        return gr.Image(value=value, label=f"{label} — {p.help}", type="pil", image_mode="RGB", sources=("upload",),
                        interactive=True, elem_id=ident)
    if p.kind == "mask":
        return gr.ImageEditor(label=f"{label}: paint the region to make new — {p.help}", type="pil",
                              sources=("upload",), image_mode="RGBA", elem_id=ident, layers=False,
                              interactive=True,
                              brush=gr.Brush(colors=["#ff0000"], default_size=4, color_mode="fixed"))
    if p.kind == "path":
        opts = settings.choices.get(f"{tech}.{p.name}", [""])
        return gr.Dropdown(opts, value=value or "", label=label, info=info, interactive=True,
                           elem_id=ident)
    if p.type is to_bool:
        return gr.Checkbox(value=bool(value), label=label, info=info, interactive=True, elem_id=ident)
    if p.numeric and not p.multiple:
        lo, hi = p.range or (None, None)
        return gr.Number(value=value, label=label, info=info, minimum=lo, maximum=hi, interactive=True,
                         precision=0 if p.type is int else None, step=1 if p.type is int else 0.001,
                         elem_id=ident)
    text = ", ".join(map(str, value)) if p.multiple and value else ("" if value in (None, ()) else str(value))
    return gr.Textbox(value=text, label=label + (" (comma list)" if p.multiple else ""), info=info,
                      interactive=True, elem_id=ident)


def _initial(p: Param) -> Any:
    return None if p.default is REQUIRED else p.default


def _from_widget(p: Param, v: Any) -> Any:
    if p.multiple and isinstance(v, str):
        return [x.strip() for x in v.split(",") if x.strip()]
    if p.numeric and v is not None and p.type is int:
        return int(v)
    return v


def build(settings: Settings) -> Any:
    """The Gradio app."""
    import gradio as gr

    techniques = registry.techniques()
    backends = registry.backends()
    samplers = ["", *sorted(registry.samplers())]
    settings.out.mkdir(parents=True, exist_ok=True)
    uploads = settings.out / ".uploads"
    stops = Stops()

    # Gradio's own cache of uploads: swept every 10 minutes of files older than an hour, emptied at exit
    with gr.Blocks(title="diffkit", delete_cache=(600, 3600)) as app:
        gr.Markdown("## diffkit — compose diffusion sampling techniques")
        session = gr.State(None)  # this page's upload folder (server-side; the page never sees a path)
        app.unload(_forget_session(uploads))  # the page closed: its uploads go
        # The stack: [{"id", "name"}] in composition order (the first is outermost, as with --hook); its
        # forms are drawn again only when it changes, the values live apart, by id.
        stack = gr.State([])
        values = gr.State({})
        ticket = gr.State(None)  # the ticket of the page's latest run or resume (Stops)
        with gr.Row():
            with gr.Column(scale=1):
                backend = gr.Dropdown(sorted(backends), value=registry.default_backend(), label="backend",
                                      elem_id="backend")
                # each backend's options, from its declared Params (a third party's too); the chosen one's show
                option_boxes: dict[tuple[str, str], Any] = {}
                groups = {}
                for bname, binfo in sorted(backends.items()):
                    with gr.Group(visible=bname == registry.default_backend()) as groups[bname]:
                        for p in binfo.params:
                            option_boxes[bname, p.name] = widget(gr, bname, p, _initial(p), settings,
                                                                 elem_id=f"opt-{bname}-{p.name}")
                labels = gr.Textbox(label="classes (comma list) or prompts (one a line)", value="3",
                                    lines=2, elem_id="labels", interactive=True)
                with gr.Row():
                    seed = gr.Number(0, label="seed", precision=0, minimum=0, elem_id="seed", interactive=True)
                    num = gr.Number(4, label=f"samples per label (at most {settings.max_samples} a run)", precision=0,
                                    minimum=1, maximum=settings.max_samples, elem_id="num", interactive=True)
                with gr.Row():
                    # 0, not empty: Gradio 6 sends an emptied number box as 0, which a minimum of 1 refused
                    steps = gr.Number(0, label="steps (0: the backend's default)", precision=0, minimum=0,
                                      elem_id="steps", interactive=True)
                    sampler = gr.Dropdown(samplers, value="", label="sampler (empty: ddpm)", elem_id="sampler",
                                          interactive=True)
            with gr.Column(scale=2):
                with gr.Row():
                    pick = gr.Dropdown(sorted(techniques), value=None, label="technique", elem_id="pick")
                    add = gr.Button("Add technique", elem_id="add")

                @gr.render(inputs=[stack, values], triggers=[stack.change, app.load])
                def show_stack(items, vals):
                    media: list = []  # (technique id, Param, component) of every image parameter
                    if not items:
                        gr.Markdown("No technique yet: add one above.")
                    for k, item in enumerate(items):
                        cls = techniques.get(item["name"])
                        if cls is None:
                            continue
                        with gr.Group(elem_id=f"tech-{k}"):
                            with gr.Row():
                                gr.Markdown(f"**{k + 1}. {cls.name}** ({cls.kind}) — {cls.help}",
                                            elem_id=f"title-{k}")
                                up = gr.Button("↑", size="sm", min_width=10, elem_id=f"up-{k}")
                                down = gr.Button("↓", size="sm", min_width=10, elem_id=f"down-{k}")
                                drop = gr.Button("✕", size="sm", min_width=10, elem_id=f"remove-{k}")
                            made = {}
                            for p in cls.params:
                                current = vals.get(item["id"], {}).get(p.name)
                                w = widget(gr, cls.name, p, current, settings, k)
                                if p.kind in ("image", "sketch", "mask"):
                                    media.append((item["id"], p, w))  # read when Run is pressed
                                else:
                                    w.change(_setter(item["id"], p), inputs=[w, values], outputs=values)
                                made[p.name] = (p, w)
                            # a mask is painted over the technique's image: show that image under the brush
                            image = next((w for p, w in made.values() if p.kind == "image"), None)
                            for p, w in made.values():
                                if p.kind == "mask" and image is not None:
                                    image.change(lambda im: im, inputs=image, outputs=w)  # as its background
                        up.click(lambda s, k=k: _move(s, k, -1), inputs=stack, outputs=stack)
                        down.click(lambda s, k=k: _move(s, k, 1), inputs=stack, outputs=stack)
                        drop.click(lambda s, k=k: s[:k] + s[k + 1:], inputs=stack, outputs=stack)

                    # Run and Stop are made here, with their listeners: a button shown before the page's first
                    # render had wired it would take a click and do nothing (a test on a loaded CI machine did).
                    with gr.Row():
                        go = gr.Button("Run", variant="primary", elem_id="run", key="run")
                        stop = gr.Button("Stop", variant="stop", elem_id="stop", key="stop")
                    # Run: first the images as the page holds them now (an editor's strokes reach the server
                    # only as an event's input), then the run itself; Stop cancels the run (or a resumed one).
                    def collect(request, vals, sess, *images):
                        sess = sess or str(_mk(session_dir(uploads, request)))
                        vals = {k: dict(v) for k, v in vals.items()}
                        for (ident, p, _), image in zip(media, images):
                            stem = re.sub(r"\W", "", p.name)
                            save = mask_from_editor if p.kind == "mask" else save_upload
                            vals.setdefault(ident, {})[p.name] = save(image, Path(sess), stem)
                        return vals, sess, stops.ask(_page(request))

                    collect.__annotations__["request"] = gr.Request  # Gradio hands it in by this annotation
                    event = go.click(collect, inputs=[values, session, *[w for _, _, w in media]],
                                     outputs=[values, session, ticket]).then(
                        on_run, inputs=[backend, labels, seed, num, steps, sampler, stack, values, session, ticket,
                                        *option_boxes.values()],
                        outputs=[status, gallery, preview, cmd, archive])
                    event.then(refresh, outputs=resumable)
                    stop.click(on_stop)  # the run itself says "stopped", as its last update

                status = gr.Markdown("", elem_id="status")
                preview = gr.Image(label="x0 preview", interactive=False, elem_id="preview", height=240)
                gallery = gr.Gallery(label="samples", columns=8, elem_id="gallery", height="auto", interactive=False)
                cmd = gr.Textbox(label="as a command: writes the same run into ./run-... where you run it (uploaded "
                                       "and drawn images are saved in the run's inputs/)",
                                 interactive=False, elem_id="command", lines=2)
                archive = gr.File(label="run folder (zip)", elem_id="zip", interactive=False)
                with gr.Row():
                    resumable = gr.Dropdown([], value=None, label="interrupted runs (Stop, a failure or a restart "
                                            "keeps their finished batches)", elem_id="resumable", interactive=True)
                    resume = gr.Button("Resume", elem_id="resume")

        def on_add(items, vals, name):
            if not name:
                return items, vals
            ident = uuid.uuid4().hex[:8]
            vals = dict(vals, **{ident: {p.name: _initial(p) for p in techniques[name].params}})
            return items + [{"id": ident, "name": name}], vals

        add.click(on_add, inputs=[stack, values, pick], outputs=[stack, values])

        def on_backend(name):
            return [gr.update(visible=b == name) for b in groups]

        backend.change(on_backend, inputs=backend, outputs=list(groups.values()))

        def on_run(backend_name, labels_text, seed_v, num_v, steps_v, sampler_v, items, vals, sess, tick, *opts,
                   progress=gr.Progress()):
            declared = {p.name: p for p in backends[backend_name].params} if backend_name in backends else {}
            options = {name: _from_widget(declared[name], v) for (b, name), v in zip(option_boxes, opts)
                       if b == backend_name}
            sess_dir = Path(sess) if sess else uploads / "none"
            chosen = [{"name": it["name"], "values": vals.get(it["id"], {})} for it in items]
            try:
                if stops.flag(tick).is_set():  # stopped while it was queued
                    yield STOPPED, [], None, "", None
                    return
                yield from run_page(settings, sess_dir, backend_name, options, labels_text, chosen,
                                    int(seed_v or 0), int(num_v or 1), int(steps_v) if steps_v else None,
                                    sampler_v or None, progress, stops.flag(tick))
            except PageError as e:
                raise gr.Error(str(e), duration=None) from None
            finally:
                stops.done(tick)

        def on_stop(request):
            if stops.stop(_page(request)):
                gr.Info("stopping after the step in progress")

        on_stop.__annotations__["request"] = gr.Request

        def refresh():
            names = interrupted_runs(settings)
            return gr.update(choices=names, value=names[0] if names else None)

        app.load(refresh, outputs=resumable)

        def on_resume(name, tick, progress=gr.Progress()):
            try:
                if not name:
                    raise gr.Error("no interrupted run is chosen", duration=None)
                if stops.flag(tick).is_set():
                    yield STOPPED, [], None, "", None
                    return
                yield from resume_page(settings, name, progress, stops.flag(tick))
            except PageError as e:
                raise gr.Error(str(e), duration=None) from None
            finally:
                stops.done(tick)

        def ask(request):
            return stops.ask(_page(request))

        ask.__annotations__["request"] = gr.Request
        resumed = resume.click(ask, outputs=ticket).then(on_resume, inputs=[resumable, ticket],
                                                         outputs=[status, gallery, preview, cmd, archive])
        resumed.then(refresh, outputs=resumable)  # Stop, made with the stack above, stops it too

    return app


def _move(items: list, k: int, by: int) -> list:
    j = k + by
    if not 0 <= j < len(items):
        return items
    items = list(items)
    items[k], items[j] = items[j], items[k]
    return items


def _setter(ident: str, p: Param):
    """The change handler of parameter ``p`` of the technique ``ident``: keep its value."""

    def set_value(value, vals):
        vals = {k: dict(v) for k, v in vals.items()}
        vals.setdefault(ident, {})[p.name] = _from_widget(p, value)
        return vals

    return set_value


def _page(request: Any) -> str:
    """The page that sent ``request``: Gradio's session hash."""
    return str(getattr(request, "session_hash", "") or "none")


def session_dir(uploads: Path, request: Any) -> Path:
    """The upload folder of the page that sent ``request`` (named by Gradio's session hash)."""
    return uploads / f"session-{re.sub(r'[^0-9A-Za-z_-]', '', _page(request))}"


def _forget_session(uploads: Path):
    def forget(request) -> None:
        shutil.rmtree(session_dir(uploads, request), ignore_errors=True)

    import gradio as gr

    forget.__annotations__["request"] = gr.Request
    return forget


def _mk(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def launch(settings: Settings, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           block: bool = True, auth: tuple[str, str] | None = None) -> Any:
    """Serve the app; outputs under ``settings.out`` are the only files it hands out. Uploads over
    ``settings.max_upload_mb`` are refused by Gradio itself; its cache of uploads is swept every 10
    minutes (files older than an hour) and emptied when the server stops."""
    app = build(settings)
    # at most max_runs runs at once, each bounded (max_samples, one batch in memory): so is the server's work.
    # Runs share no hook registry (registry.RunHooks), so two pages' runs never mix.
    app.queue(default_concurrency_limit=settings.max_runs)
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
               allowed_paths=[str(settings.out)], show_error=False, auth=auth,
               max_file_size=settings.max_upload_mb * 1024 * 1024)
    return app


