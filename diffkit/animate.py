"""Animations of illusions, as people share them: each sample moving continuously from the identity to
each view (rotations turn, flips flip, skew shears, the inner circle spins, hinges swing, jigsaw
pieces travel and turn into place, permuted pixels travel, negation cross-fades), and factorized
images zooming out (frequency hybrids), fading colour in (colour hybrids) or shaking (motion hybrids),
captioned with the prompt each end shows, as the Visual Anagrams release's ``animate.py`` makes them.

Everything comes from the run folder alone: run.json names the techniques with every argument (the
views' seeds included) and each sample's label; the samples are its PNGs. A frame is
``[C x H x W]`` in [0, 1]; the image sits on a white canvas 1.5x its size, so turns never clip. The
last frame is the view exactly (``View.forward`` of the sample), the first the sample.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from diffkit import io, plugins, views
from diffkit.errors import OutputInTheWay, UserError

ANIMATED = ("anagram", "factorize", "hybrid")  # the hooks whose runs have something to animate
FRAMES = 24  # frames of the move
HOLD = 8  # frames held at each end
FPS = 12


@dataclass
class Clip:
    """One animation of one sample: ``frame(t)`` for t in [0, 1], captions for its two ends."""

    name: str  # the file stem's suffix: view1, factorize
    frame: Callable[[float], Tensor]  # [C x H x W] in [0, 1], the image's own size
    captions: tuple[str, str]
    canvas: float = 1.5  # the canvas, in image sizes


def smooth(t: float) -> float:
    """Ease in and out (smoothstep)."""
    return t * t * (3 - 2 * t)


# ---- moving an image ----

def _warp(img: Tensor, matrix: Tensor, shift: tuple[float, float] = (0.0, 0.0), size: int | None = None,
          about: tuple[float, float] | None = None) -> tuple[Tensor, Tensor]:
    """``img`` ``[C x H x W]`` moved by ``p -> matrix (p - about) + about + shift`` (pixel coordinates
    ``(x, y)``), drawn on a ``size x size`` canvas centred on the image: (colour, coverage)."""
    c, h, w = img.shape
    size = size or h
    ax, ay = about if about is not None else ((w - 1) / 2, (h - 1) / 2)
    off = (size - w) / 2, (size - h) / 2
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    px, py = xs - off[0] - shift[0] - ax, ys - off[1] - shift[1] - ay  # canvas -> image, inverted
    inv = torch.linalg.inv(matrix.double())
    sx = inv[0, 0] * px + inv[0, 1] * py + ax
    sy = inv[1, 0] * px + inv[1, 1] * py + ay
    grid = torch.stack([(sx + 0.5) / w * 2 - 1, (sy + 0.5) / h * 2 - 1], -1)[None].float()
    rgba = torch.cat([img, torch.ones(1, h, w)])[None].float()
    out = F.grid_sample(rgba, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return out[:c], out[c:]


def _rotation(deg: float) -> Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]], dtype=torch.float64)  # y down


def _on_white(parts: list[tuple[Tensor, Tensor]], c: int, size: int) -> Tensor:
    out = torch.ones(c, size, size)
    for colour, alpha in parts:
        out = out * (1 - alpha) + colour * alpha
    return out.clamp(0, 1)


def _turn(img: Tensor, deg: float) -> Tensor:
    return _on_white([_warp(img, _rotation(deg))], img.shape[0], img.shape[-1])


def _reflect(img: Tensor, t: float, axis_deg: float) -> Tensor:
    """A reflection across the line at ``axis_deg`` seen as a card flipping about it: the other axis
    squashed by cos(pi t)."""
    r = _rotation(axis_deg)
    squash = torch.diag(torch.tensor([1.0, math.cos(math.pi * t)], dtype=torch.float64))
    return _on_white([_warp(img, r.T @ squash @ r)], img.shape[0], img.shape[-1])


def _inner_circle(img: Tensor, t: float) -> Tensor:
    c, h, w = img.shape
    r = h * 3 // 8
    cc = torch.arange(h) - h // 2 + 0.5
    yy, xx = torch.meshgrid(cc, cc, indexing="ij")
    disc = (xx**2 + yy**2 < r * r).float()
    return img * (1 - disc) + _turn(img, 180 * t) * disc


def _square_hinge(img: Tensor, t: float) -> Tensor:
    c, h, w = img.shape
    s = h // 3
    out = img.clone()
    for i in range(3):
        for j in range(3):
            k = -1 if (i + j) % 2 == 0 else 1  # the view's turn of this square (rot90 with k on (rows, cols))
            block = img[:, i * s:(i + 1) * s, j * s:(j + 1) * s]
            out[:, i * s:(i + 1) * s, j * s:(j + 1) * s] = _turn(block, 90 * k * t)  # rot90 k=1: counter-clockwise
    return out


def _skew(img: Tensor, t: float, factor: float) -> Tensor:
    c, h, w = img.shape
    out = torch.empty_like(img)
    for i in range(w):
        out[:, :, i] = img[:, :, i].roll(round(t * int(factor * (i - w // 2))), -1)
    return out


def _travel(img: Tensor, t: float, index: Tensor) -> Tensor:
    """Every pixel from where it is to where the view puts it, in a straight line (any permutation)."""
    c, h, w = img.shape
    dest = torch.empty_like(index)
    dest[index] = torch.arange(h * w)
    src = torch.arange(h * w)
    y = (1 - t) * (src // w).double() + t * (dest // w).double()
    x = (1 - t) * (src % w).double() + t * (dest % w).double()
    out = torch.ones(c, h, w)
    yi, xi = y.round().long().clamp(0, h - 1), x.round().long().clamp(0, w - 1)
    out[:, yi, xi] = img.reshape(c, -1)
    return out


def _jigsaw(img: Tensor, t: float, seed: int) -> Tensor:
    """Each piece turned about the image centre by its quarter turns and shifted along its side, both a
    fraction ``t`` of the way, drawn over the others."""
    c, h, w = img.shape
    labels = views.jigsaw_labels(h)
    s = h // 4
    parts = []
    for piece, (k, turned, final) in views.jigsaw_moves(seed).items():
        mask = (labels == piece).float()[None]
        shift = ((final % 4 - turned % 4) * s * t, (final // 4 - turned // 4) * s * t)
        both, cover = _warp(torch.cat([img * mask, mask]), _rotation(-90 * k * t), shift)  # quarter turns: clockwise
        colour, m = both[:c], both[c:]
        parts.append((colour / m.clamp(min=1e-6), m * cover))
    return _on_white(parts, c, h)


def view_clip(view: Any, image: Tensor, state_view: Tensor, name: str, captions: tuple[str, str]) -> Clip:
    """The clip of one anagram view; ``state_view`` the exact last frame."""
    base = view.name.split(":")[0]
    args = dict(a.split("=", 1) for a in view.name.split(":", 1)[1].split(",")) if ":" in view.name else {}
    c, h, w = image.shape
    moves: dict[str, Callable[[float], Tensor]] = {
        "identity": lambda t: image,
        "rot90": lambda t: _turn(image, 90 * t), "rotate_ccw": lambda t: _turn(image, 90 * t),
        "rot270": lambda t: _turn(image, -90 * t), "rotate_cw": lambda t: _turn(image, -90 * t),
        "rot180": lambda t: _turn(image, 180 * t), "rotate_180": lambda t: _turn(image, 180 * t),
        "flip_v": lambda t: _reflect(image, t, 0), "flip": lambda t: _reflect(image, t, 0),
        "flip_h": lambda t: _reflect(image, t, 90), "transpose": lambda t: _reflect(image, t, 45),
        "negate": lambda t: (1 - t) * image + t * state_view,
        "inner_circle": lambda t: _inner_circle(image, t),
        "square_hinge": lambda t: _square_hinge(image, t),
        "skew": lambda t: _skew(image, t, float(args.get("factor", 1.5))),
        "jigsaw": lambda t: _jigsaw(image, t, int(args.get("seed", 0))),
    }
    move = moves.get(base)
    if move is None:  # any other permutation: its pixels travel
        index = view.forward(torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)).flatten().long()
        move = lambda t: _travel(image, t, index)  # noqa: E731

    def frame(t: float) -> Tensor:
        return image if t <= 0 else state_view if t >= 1 else move(smooth(t)).clamp(0, 1)

    return Clip(name, frame, captions)


COARSE = {"low_pass", "triple_low_pass", "grayscale", "motion"}  # what shows from afar, in grey, shaken


def factor_clip(parts: list[str], prompts: list[str], image: Tensor) -> Clip:
    """Colour hybrids fade colour in from grey; motion hybrids shake; the others zoom out, as the
    release animates them, captioned with the prompt each end shows (``prompts``: one a part)."""
    c, h, w = image.shape
    names = [p.split(":")[0] for p in parts]
    coarse = next((q for n, q in zip(names, prompts) if n in COARSE), prompts[0])
    fine = next((q for n, q in zip(names, prompts) if n not in COARSE), prompts[-1])
    if {"grayscale", "color"} & set(names) and c == 3:
        gray = image.mean(0, keepdim=True).expand_as(image)

        def frame(t: float) -> Tensor:
            return (1 - smooth(t)) * gray + smooth(t) * image
        return Clip("factorize", frame, (coarse, fine), canvas=1.0)
    if {"motion", "motion_res"} & set(names):
        amp = max(1.0, 29 * h / 256 / 2)

        def frame(t: float) -> Tensor:  # still, then shaken along the blur's diagonal (a triangle wave)
            off = amp * 2 / math.pi * math.asin(math.sin(2 * math.pi * 3 * t)) if 0 < t < 1 else 0.0
            return _on_white([_warp(image, torch.eye(2, dtype=torch.float64), (off, off))], c, h)
        return Clip("factorize", frame, (fine, coarse), canvas=1.5)

    def frame(t: float) -> Tensor:  # up close, then far away
        scale = 1 / (1 + 7 * smooth(t))
        return _on_white([_warp(image, torch.eye(2, dtype=torch.float64) * scale)], c, h)
    return Clip("factorize", frame, (fine, coarse), canvas=1.5)


# ---- frames, captions, files ----

def _caption(frame: Tensor, text: str, canvas: float) -> Tensor:
    """The frame on a white canvas ``canvas`` times its size (at least 128 px wide), a caption under it."""
    from PIL import Image, ImageDraw

    c, h, w = frame.shape
    scale = max(1, math.ceil(128 / (w * canvas)))
    side = round(w * canvas) * scale
    pil = io.to_pil(frame).convert("RGB").resize((w * scale, h * scale), Image.Resampling.NEAREST)
    out = Image.new("RGB", (side, side + 18), "white")
    out.paste(pil, ((side - w * scale) // 2, (side - h * scale) // 2))
    draw = ImageDraw.Draw(out)
    draw.text((4, side + 3), text[: side // 6], fill=(0, 0, 0))
    arr = torch.frombuffer(bytearray(out.tobytes()), dtype=torch.uint8).reshape(out.height, out.width, 3)
    return arr.permute(2, 0, 1).float() / 255


def iter_frames(clip: Clip, n: int = FRAMES, hold: int = HOLD) -> Iterator[Tensor]:
    """Held at the start, the move (``n`` frames, both ends included), held at the view: one at a time,
    so a long animation of a large image never holds more than one frame."""
    ts = [0.0] * hold + [k / (n - 1) for k in range(n)] + [1.0] * hold
    for t in ts:
        yield _caption(clip.frame(t), clip.captions[0] if t < 0.5 else clip.captions[1], clip.canvas)


def frames(clip: Clip, n: int = FRAMES, hold: int = HOLD) -> list[Tensor]:
    """:func:`iter_frames` as a list (for tests and figures)."""
    return list(iter_frames(clip, n, hold))


class GifWriter:
    """A looping GIF written frame by frame to an open binary file: memory holds one frame, whatever the
    count. Each frame carries its own adaptive palette; a frame equal to the one before lengthens it
    (as PIL merges repeated frames when it writes a whole list). Written with Pillow's frame writers
    (``GifImagePlugin.getheader``/``getdata``), since ``Image.save(save_all=True)`` takes every frame at once."""

    def __init__(self, fp: Any, fps: int = FPS):
        self.fp, self.ms = fp, round(1000 / fps)
        self.pending: tuple[Any, bytes, int] | None = None  # (P image, its pixels and palette, duration)

    def add(self, frame: Tensor) -> None:
        from PIL import Image

        rgb = io.to_pil(frame).convert("RGB")
        key = rgb.tobytes()
        if self.pending is not None and self.pending[1] == key:
            self.pending = (self.pending[0], key, self.pending[2] + self.ms)
            return
        self._flush()
        self.pending = (rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=256), key, self.ms)

    def _flush(self) -> None:
        from PIL import GifImagePlugin

        if self.pending is None:
            return
        im, _, ms = self.pending
        if self.fp.tell() == 0:
            header, _ = GifImagePlugin.getheader(im, None, {"loop": 0, "duration": ms})
            self.fp.write(b"".join(header))
        for part in GifImagePlugin.getdata(im, duration=ms, include_color_table=True):
            self.fp.write(part)
        self.pending = None

    def close(self) -> None:
        self._flush()
        self.fp.write(b";")  # the GIF trailer


class Mp4Writer:
    """An H.264 MP4 through imageio-ffmpeg (its own ffmpeg binary), frame by frame."""

    def __init__(self, path: Path, fps: int = FPS):
        import imageio_ffmpeg

        self.path, self.fps, self.writer = path, fps, None
        self._open = lambda size: imageio_ffmpeg.write_frames(
            str(path), size, fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=1,
            output_params=["-f", "mp4"])

    def add(self, frame: Tensor) -> None:
        c, h, w = frame.shape
        frame = frame[:, : h - h % 2, : w - w % 2]  # yuv420p needs even sides
        if self.writer is None:
            self.writer = self._open((frame.shape[2], frame.shape[1]))
            self.writer.send(None)
        self.writer.send(io.to_uint8(frame.expand(3, -1, -1)).numpy().tobytes())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def has_mp4() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


# ---- reading a run folder: everything checked before the first frame ----

class DamagedFolder(UserError):
    """A run folder (or its run.json) that does not hold what ``diffkit sample`` wrote."""


@dataclass
class SampleJob:
    """One sample to animate: its PNG, its label, and the names of the clips it makes."""

    path: Path
    label: str
    hooks: list[Any]  # the animated techniques, rebuilt from run.json
    names: list[str]  # clip names, in order: view1, view2, factorize


def _read_run(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "run.json"
    if not Path(folder).is_dir():
        raise UserError(f"{folder} is not a folder: give the folder `diffkit sample` wrote")
    if not path.is_file():
        raise UserError(f"{folder} holds no finished run (no run.json): give the folder `diffkit sample` wrote")
    try:
        run = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedFolder(f"{path} does not read as JSON ({e}): it was not written by diffkit") from None
    if not isinstance(run, dict):
        raise DamagedFolder(f"{path} is damaged: it holds a {type(run).__name__}, not the object diffkit writes")
    if not isinstance(run.get("samples"), list) or not run["samples"]:
        raise DamagedFolder(f"{path} is damaged: it lists no samples")
    return run


def _hooks(run: dict[str, Any], path: Path) -> list[Any]:
    """The run's animated techniques, rebuilt from their recorded arguments (bad ones refused by name)."""
    hooks = run["request"].get("hooks") if isinstance(run.get("request"), dict) else run.get("hooks", [])
    if not isinstance(hooks, list) or not all(isinstance(h, dict) and isinstance(h.get("name"), str)
                                              and isinstance(h.get("args"), dict) for h in hooks):
        raise DamagedFolder(f"{path} is damaged: its hooks are not the list diffkit writes")
    out = []
    for h in hooks:
        if h["name"] not in ANIMATED:
            continue
        try:
            out.append(plugins.technique_from(h["name"], h["args"]))
        except UserError as e:
            raise DamagedFolder(f"{path}: its {h['name']} hook cannot be made again: {e}") from None
    return out


def _clip_names(hooks: list[Any]) -> list[str]:
    names = []
    for tech in hooks:
        if tech.name == "anagram":
            names += [f"view{j}" for j in range(1, len(tech.views) + 1)]
        else:
            names.append("factorize")
    return names


def read_jobs(folder: str | Path) -> list[SampleJob]:
    """Every sample of the run in ``folder`` with its clips' names, everything checked first: run.json's
    shape, each sample's file (a PNG inside the folder, named once), the hooks' arguments. Nothing is
    loaded beyond the images' headers."""
    from PIL import Image

    folder = Path(folder)
    run = _read_run(folder)
    path = folder / "run.json"
    hooks = _hooks(run, path)
    names = _clip_names(hooks)
    root = folder.resolve()
    jobs, seen = [], {}
    for k, s in enumerate(run["samples"]):
        if not isinstance(s, dict) or not isinstance(s.get("file"), str) or "label" not in s:
            raise DamagedFolder(f"{path} is damaged: sample {k} is not the {{file, label, seed}} diffkit writes")
        name = s["file"]
        target = (folder / name).resolve()
        if Path(name).is_absolute() or target.parent != root:
            raise DamagedFolder(f"{path}: sample {k}'s file {name!r} is not in {folder}: a run's samples are "
                                "files of its own folder")
        stem = Path(name).stem
        if stem in seen:
            raise DamagedFolder(f"{path} names {name!r} for samples {seen[stem]} and {k}: their animations would "
                                "overwrite each other")
        seen[stem] = k
        if not target.is_file():
            raise DamagedFolder(f"{folder} lacks {name}, which run.json lists: restore it, or sample the run again")
        try:
            with Image.open(target) as im:
                im.verify()
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a file that is not an image
            raise DamagedFolder(f"{folder / name} is not a readable image ({type(e).__name__}): restore it, or "
                                "sample the run again") from None
        jobs.append(SampleJob(folder / name, str(s["label"]), hooks, names))
    return jobs


def clips_for(job: SampleJob) -> list[Clip]:
    """The clips of one sample (its image loaded now)."""
    image = io.load_png(job.path)
    clips: list[Clip] = []
    for tech in job.hooks:
        if tech.name == "anagram":
            for j, (view, prompt) in enumerate(zip(tech.views, tech.prompts), 1):
                clips.append(view_clip(view, image, view_image(view, image), f"view{j}", (job.label, str(prompt))))
        elif tech.name == "factorize":
            clips.append(factor_clip([f.name for f, _ in tech.parts], [job.label, *map(str, tech.args["prompt"])],
                                     image))
        else:  # hybrid: low frequencies of the sample's own prompt, high of its prompt
            clips.append(factor_clip(["low_pass", "high_pass"], [job.label, str(tech.args["prompt"])], image))
    return clips


def clips_of(folder: Path) -> list[tuple[str, list[Clip]]]:
    """Every sample's clips, from run.json alone: ``[(sample file, clips)]``."""
    return [(job.path.name, clips_for(job)) for job in read_jobs(folder)]


def view_image(view: Any, image: Tensor) -> Tensor:
    """The view of a sample's image: the pixels rearranged, a negative where the view negates."""
    moved = view.permute(image[None])[0]
    return 1 - moved if view.negate else moved


@dataclass
class Plan:
    """What :func:`render` will write, every refusal already given."""

    folder: Path
    jobs: list[SampleJob]
    mp4: bool

    @property
    def count(self) -> int:
        return sum(len(j.names) for j in self.jobs)


def plan(folder: str | Path, *, overwrite: bool = False, mp4: bool = True) -> Plan:
    """Check everything :func:`render` needs, before any frame: a run with something to animate, a
    folder that can be written, files in the way (unless ``overwrite``). UserError otherwise."""
    from diffkit.folder import probe

    folder = Path(folder)
    jobs = read_jobs(folder)
    if not any(j.names for j in jobs):
        raise UserError(f"{folder}: its run has no anagram, factorize or hybrid hook: nothing to animate")
    if not overwrite:
        there = [f"{j.path.stem}.{n}.gif" for j in jobs for n in j.names if (folder / f"{j.path.stem}.{n}.gif").exists()]
        if there:
            raise OutputInTheWay(f"{folder} already holds {', '.join(there[:3])}{' ...' if len(there) > 3 else ''}; "
                                 "pass --overwrite to replace them")
    try:
        probe(folder)
    except OSError as e:
        raise UserError(f"cannot write to {folder}: {e.strerror or e}; the animations go beside the samples: "
                        "make the folder writable, or copy it somewhere writable") from None
    return Plan(folder, jobs, mp4 and has_mp4())


def render(p: Plan, *, n: int = FRAMES, hold: int = HOLD, fps: int = FPS,
           progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write every planned animation, one sample's image and one frame in memory at a time; the files."""
    from contextlib import ExitStack

    written: list[Path] = []
    done = 0
    for job in p.jobs:
        for clip in clips_for(job):
            stem = f"{job.path.stem}.{clip.name}"
            gif, mp4 = p.folder / f"{stem}.gif", p.folder / f"{stem}.mp4"
            with ExitStack() as stack:
                tmp = stack.enter_context(io.atomic_path(gif))
                writers: list[Any] = [GifWriter(stack.enter_context(open(tmp, "wb")), fps)]
                if p.mp4:
                    writers.append(Mp4Writer(stack.enter_context(io.atomic_path(mp4)), fps))
                for fr in iter_frames(clip, n, hold):
                    for w in writers:
                        w.add(fr)
                for w in writers:
                    w.close()
            written += [gif] + ([mp4] if p.mp4 else [])
            done += 1
            if progress:
                progress(done, p.count)
    return written


def animate(folder: str | Path, *, overwrite: bool = False, mp4: bool = True, n: int = FRAMES,
            hold: int = HOLD, fps: int = FPS, progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write ``sample-000.view1.gif`` (and ``.mp4``, with imageio-ffmpeg) for every sample and view of the
    run in ``folder``; the files written. Every refusal (:func:`plan`) comes before any file is written."""
    return render(plan(folder, overwrite=overwrite, mp4=mp4), n=n, hold=hold, fps=fps, progress=progress)
