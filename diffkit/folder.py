"""The run folder, written batch by batch, resumable, and the same bytes however the run was split.

While a run goes, its files collect in a work folder beside ``--out``::

    .OUT.partial/
        request.json                      what was asked: a --resume must ask the same
        sample-000.png ...                each batch's samples, written as soon as the batch is done
        parts/batch-00000.safetensors     the batch's tensors (and frames); written last, it marks the batch done

At the end :func:`assemble` adds ``grid.png`` (the first 64 samples), ``final.safetensors`` (streamed
part by part, so memory holds one batch), ``frames/`` + ``trajectory.gif`` and ``run.json``, and
:meth:`RunFolder.publish` moves them into ``OUT`` (with signals held, as ``io.staged_dir`` does). ``OUT``
is never touched before that: a failed or interrupted run leaves it as it was, and the work folder
keeps the finished batches for ``--resume`` (or nothing at all, when no batch had finished).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from diffkit import io

GRID_MAX = 64  # samples shown in grid.png and the frames


class ResumeError(ValueError):
    """--resume on a folder that another command began (or finished)."""


class AlreadyDone(Exception):
    """--resume on a folder that holds this very run, finished."""


def sample_name(i: int) -> str:
    return f"sample-{i:03d}.png"


def output_names(n: int, frames: bool) -> list[str]:
    names = [sample_name(i) for i in range(n)] + ["grid.png", "run.json", "final.safetensors"]
    return names + (["trajectory.gif", "frames"] if frames else [])


def check_out(out: str | os.PathLike, n: int, frames: bool, overwrite: bool) -> None:
    """Refuse (FileExistsError) before any work if the run would overwrite files in ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    clash = [name for name in output_names(n, frames) if (out / name).exists()]
    if clash and not overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(clash[:3])}{' ...' if len(clash) > 3 else ''}; "
                              "pass --overwrite to replace them, or choose another --out")


def partial_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def _normal(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def _differences(old: dict, new: dict) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {json.dumps(old.get(k))} there, {json.dumps(new.get(k))} now" for k in keys)


def _interrupted(path: Path) -> FileExistsError:
    done = len(list((path / "parts").glob("batch-*.safetensors")))
    return FileExistsError(f"{path} holds an interrupted run ({done} batches done); pass --resume to continue it, "
                           "or --overwrite to discard it")


class RunFolder:
    """The work folder of one run (see the module's docstring). Batches may be written by any process."""

    def __init__(self, out: Path, request: dict[str, Any], n: int, batch_size: int, frames: bool,
                 made: Path | None = None):
        self.out, self.path = Path(out), partial_dir(out)
        self.request, self.n, self.batch_size, self.frames = request, n, batch_size, frames
        self.made = made  # the outermost folder this run created (removed again if nothing is kept)

    # -- starting and resuming --

    @classmethod
    def precheck(cls, out: str | os.PathLike, n: int, frames: bool, *, resume: bool = False,
                 overwrite: bool = False) -> None:
        """The refusals of :meth:`start` that need no model (FileExistsError), so a CLI can give them before
        loading one: an interrupted run in the way, or files of another run in ``out``. A --resume is
        judged by :meth:`start` alone (it compares the whole request)."""
        if resume or overwrite:
            return
        if partial_dir(out).exists():
            raise _interrupted(partial_dir(out))
        check_out(out, n, frames, overwrite)

    @classmethod
    def start(cls, out: str | os.PathLike, request: dict[str, Any], n: int, batch_size: int, frames: bool, *,
              resume: bool = False, overwrite: bool = False) -> tuple[RunFolder, str | None]:
        """The folder to write into, and a note for the user (resuming, nothing to resume).

        Refuses, before any work: files of another run in ``out`` (FileExistsError, unless ``overwrite``),
        an interrupted run in the way (FileExistsError: --resume or --overwrite), a --resume of
        another command (ResumeError); a --resume of this run, finished, raises AlreadyDone.
        """
        out, request = Path(out), _normal(request)
        path = partial_dir(out)
        if path.exists() and resume:
            saved = json.loads((path / "request.json").read_text()) if (path / "request.json").is_file() else {}
            if saved.get("request") != request:
                raise ResumeError(f"--resume: {path} holds a run of another command ({_differences(saved.get('request') or {}, request)}); "
                                  "run that command again, or pass --overwrite instead to start this one afresh")
            folder = cls(out, request, saved["num_samples"], saved["batch_size"], saved["frames"])
            done = len(folder.done())
            note = (f"resuming: {done} of {folder.batches()} batches of {folder.batch_size} samples were done "
                    f"in {path}")
            if batch_size != folder.batch_size:
                note += f" (continuing with --batch-size {folder.batch_size}, as the run began; the bytes are the same)"
            check_out(out, n, frames, overwrite)
            return folder, note
        if path.exists():
            if not overwrite:
                raise _interrupted(path)
            shutil.rmtree(path)
        note = None
        if resume:
            finished = out / "run.json"
            if finished.is_file():
                if _normal(json.loads(finished.read_text()).get("request")) == request:
                    raise AlreadyDone(f"{out} already holds this run, finished; nothing to resume")
                raise ResumeError(f"--resume: {out} holds a finished run of another command and no interrupted "
                                  f"one; pass --overwrite to replace it, or choose another --out")
            note = f"nothing to resume in {out}: starting the run"
        check_out(out, n, frames, overwrite)
        made = io._missing_ancestor(path.parent)
        (path / "parts").mkdir(parents=True)
        io.write_json(path / "request.json", {"request": request, "num_samples": n, "batch_size": batch_size,
                                              "frames": frames})
        return cls(out, request, n, batch_size, frames, made), note

    def batches(self) -> int:
        return -(-self.n // self.batch_size)

    def part(self, k: int) -> Path:
        return self.path / "parts" / f"batch-{k:05d}.safetensors"

    def done(self) -> set[int]:
        """The batches whose every file is written."""
        return {k for k in range(self.batches()) if self.part(k).is_file()}

    # -- writing --

    def write_batch(self, k: int, result: Any) -> None:
        """Batch ``k``'s samples (a :class:`diffkit.api.Result`): PNGs first, then its part file."""
        write_batch(self.path, k, k * self.batch_size, result, self.n)

    def abandon(self) -> str:
        """After a failure: keep finished batches for --resume; with none, leave no trace. Says which."""
        done = len(self.done())
        if done:
            return f"{min(done * self.batch_size, self.n)} of {self.n} samples are kept in {self.path}; continue with --resume"
        shutil.rmtree(self.path, ignore_errors=True)
        if self.made is not None:
            shutil.rmtree(self.made, ignore_errors=True)
        return f"nothing was written to {self.out}"

    def publish(self, labels: Sequence[Any], extra: dict[str, Any] | None = None) -> None:
        """Assemble the run's files and move them into ``out``, all of them or (on failure) none."""
        missing = sorted(set(range(self.batches())) - self.done())
        if missing:
            raise RuntimeError(f"batches {missing[:5]} of {self.path} are missing")
        assemble(self.path, labels, dict(extra or {}, request=self.request))
        (self.path / "request.json").unlink()
        try:
            io.move_into(self.path, self.out)
        finally:
            if self.path.is_dir() and not any(self.path.iterdir()):  # all moved: the work folder goes
                self.path.rmdir()


def write_batch(folder: Path, k: int, start: int, result: Any, n: int) -> None:
    """Samples ``start..`` of ``result`` as PNGs in ``folder``, then ``parts/batch-k.safetensors``.

    The part holds the batch's tensors as ``final.safetensors`` will (unclamped ``x``, each stage's images
    and state), the frames of its samples among the first :data:`GRID_MAX`, and the run's meta.
    """
    from safetensors.torch import save_file

    for i, img in enumerate(result.images):
        io.save_png(img, folder / sample_name(start + i))
    tensors = {"x": result.x.float().cpu().contiguous()} if result.x is not None else {}
    tensors.update({f"stage{s + 1}_images": im.float().cpu().contiguous() for s, im in enumerate(result.stage_images)})
    tensors.update({f"stage{s + 1}_x": x.float().cpu().contiguous() for s, x in enumerate(result.stage_x)})
    shown = max(0, min(len(result.images), GRID_MAX - start))
    if result.frames and shown:
        tensors["frames"] = torch.stack([f[:shown] for f in result.frames]).float().contiguous()
    meta = {"meta": json.dumps(result.meta, default=str), "labels": json.dumps(result.labels, default=str),
            "seeds": json.dumps(result.seeds), "start": str(start), "num_samples": str(n)}
    (folder / "parts").mkdir(exist_ok=True)
    with io.atomic_path(folder / "parts" / f"batch-{k:05d}.safetensors") as tmp:
        save_file(tensors, tmp, metadata=meta)


def grid_columns(labels: Sequence[Any]) -> int:
    """Columns of grid.png: one a sample of each label when there are 2..10 a label, else a square-ish grid."""
    n = len(labels)
    ncol = max(1, min(n, 10 if n > 16 else int(n**0.5 + 0.999)))
    per = n // max(1, len(dict.fromkeys(labels)))
    return per if 1 < per <= 10 and n % per == 0 else ncol


def assemble(folder: Path, labels: Sequence[Any], extra: dict[str, Any] | None = None) -> None:
    """From the PNGs and parts in ``folder``: grid.png, final.safetensors, frames/ + GIF, run.json; parts/ goes."""
    from safetensors import safe_open

    parts = sorted((folder / "parts").glob("batch-*.safetensors"))
    metas = []
    for p in parts:  # headers only: each part's samples, and the run's meta
        with safe_open(p, "pt") as f:
            metas.append(f.metadata())
    n = int(metas[0]["num_samples"])
    ncol = grid_columns(labels)
    first = [io.load_png(folder / sample_name(i)) for i in range(min(n, GRID_MAX))]
    io.save_png(io.grid(torch.stack(first), ncol), folder / "grid.png")
    frames = _frames(parts)
    if frames is not None:
        grids = [io.grid(f, ncol) for f in frames]
        (folder / "frames").mkdir(exist_ok=True)
        for k, g in enumerate(grids):
            io.save_png(g, folder / "frames" / f"frame-{k:03d}.png")
        io.save_gif(grids, folder / "trajectory.gif")
    with io.atomic_path(folder / "final.safetensors") as tmp:
        concat_safetensors(parts, tmp, skip=("frames",))
    samples = [{"file": sample_name(int(m["start"]) + i), "label": lab, "seed": seed}
               for m in metas for i, (lab, seed) in enumerate(zip(json.loads(m["labels"]), json.loads(m["seeds"])))]
    io.write_json(folder / "run.json", dict(json.loads(metas[0]["meta"]), samples=samples, **(extra or {})))
    shutil.rmtree(folder / "parts")


def _frames(parts: list[Path]) -> Tensor | None:
    """``[F x M x C x H x W]``: the frames of the first M <= GRID_MAX samples, from the parts that hold them."""
    from safetensors import safe_open

    got = []
    for p in parts:
        with safe_open(p, "pt") as f:
            if "frames" not in f.keys():
                break
            got.append(f.get_tensor("frames"))
    return torch.cat(got, dim=1) if got else None


def concat_safetensors(parts: Sequence[Path], path: Path, skip: Sequence[str] = ()) -> None:
    """One safetensors file holding each key of ``parts`` concatenated along dim 0, in order.

    Written by hand because safetensors only saves whole in-memory tensors: this streams one part's
    tensor at a time (each part opened only while it is read: a file kept mapped stays in the
    process's memory), so a 10,000-sample run never holds all its states. The layout is the format's
    (8-byte header length, JSON header padded to 8 bytes, then the data) and loads with ``load_file``.
    """
    from safetensors import safe_open

    shapes: list[dict[str, tuple[str, list[int]]]] = []
    for p in parts:
        with safe_open(p, "pt") as f:
            shapes.append({k: (f.get_slice(k).get_dtype(), f.get_slice(k).get_shape()) for k in f.keys()})
    keys = sorted(k for k in shapes[0] if k not in skip)
    header, offset = {}, 0
    for k in keys:
        dtype = shapes[0][k][0]
        shape = [sum(s[k][1][0] for s in shapes), *shapes[0][k][1][1:]]
        size = sum(_nbytes(s[k][1], dtype) for s in shapes)
        header[k] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        for k in keys:
            for p in parts:
                with safe_open(p, "pt") as f:
                    out.write(f.get_tensor(k).contiguous().numpy().tobytes())


def _nbytes(shape: Sequence[int], dtype: str) -> int:
    size = {"F32": 4, "F64": 8, "F16": 2, "BF16": 2, "U8": 1, "I64": 8}[dtype]
    for d in shape:
        size *= d
    return size
