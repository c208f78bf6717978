"""Animations of illusions, as people share them: each sample moving continuously from the identity to
each view (rotations turn, flips flip, skew shears, the inner circle spins, hinges swing, jigsaw
pieces travel and turn into place, permuted pixels travel, negation cross-fades), and factorized
images zooming out (frequency hybrids), fading colour in (colour hybrids) or shaking (motion hybrids),
captioned with the prompt each end shows, as the Visual Anagrams release's ``animate.py`` makes them.

Everything comes from the run folder alone: run.json names the techniques with every argument (the
views' seeds included) and each sample's label; the samples are its PNGs. What moves is declared, not
named here: a technique says which clips its samples make (``Technique.clips``: an anagram one a view,
a factorized image one), and a view how it moves (``View.motion``), so a third party's animates too. A frame is
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
from torch import Tensor

from diffkit import io, registry
from diffkit.errors import OutputInTheWay, UserError
from diffkit.motion import Clip

FRAMES = 24  # frames of the move
HOLD = 8  # frames held at each end
FPS = 12


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


def _animates(cls: Any) -> bool:
    return bool(getattr(cls, "animates", False))


def _hooks(run: dict[str, Any], path: Path, wanted: Callable[[Any], bool] = _animates) -> list[Any]:
    """The run's techniques that animate (each declares it; ``wanted`` says which), rebuilt from their
    recorded arguments (bad ones refused by name); the others are not built again (an SDEdit's image may
    be long gone)."""
    hooks = run["request"].get("hooks") if isinstance(run.get("request"), dict) else run.get("hooks", [])
    if not isinstance(hooks, list) or not all(isinstance(h, dict) and isinstance(h.get("name"), str)
                                              and isinstance(h.get("args"), dict) for h in hooks):
        raise DamagedFolder(f"{path} is damaged: its hooks are not the list diffkit writes")
    out = []
    installed = registry.techniques()
    for h in hooks:
        if not wanted(installed.get(h["name"])):
            continue
        try:
            out.append(registry.technique_from(h["name"], h["args"]))
        except UserError as e:
            raise DamagedFolder(f"{path}: its {h['name']} technique cannot be made again: {e}") from None
    return out


def _clip_names(hooks: list[Any]) -> list[str]:
    return [name for tech in hooks for name in tech.clip_names()]


def read_jobs(folder: str | Path, wanted: Callable[[Any], bool] = _animates,
              run: dict[str, Any] | None = None) -> list[SampleJob]:
    """Every sample of the run in ``folder`` with its clips' names, everything checked first: run.json's
    shape, each sample's file (a PNG inside the folder, named once), the hooks' arguments. Nothing is
    loaded beyond the images' headers."""
    from PIL import Image

    folder = Path(folder)
    run = run or _read_run(folder)  # a caller that read it already hands it over
    path = folder / "run.json"
    hooks = _hooks(run, path, wanted)
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
    """The clips of one sample (its image loaded now), as its techniques declare them."""
    image = io.load_png(job.path)
    return [clip for tech in job.hooks for clip in tech.clips(image, job.label)]


def clips_of(folder: Path) -> list[tuple[str, list[Clip]]]:
    """Every sample's clips, from run.json alone: ``[(sample file, clips)]``."""
    return [(job.path.name, clips_for(job)) for job in read_jobs(folder)]


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
        animated = sorted(n for n, cls in registry.techniques().items() if getattr(cls, "animates", False))
        raise UserError(f"{folder}: its run has no technique that animates ({', '.join(animated)}): nothing to animate")
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
