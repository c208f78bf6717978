"""The run folder, written batch by batch, resumable, and the same bytes however the run was split.

While a run goes, its files collect in a work folder inside ``--out``::

    OUT/.diffkit-partial/
        lock                              held (fcntl.flock) by the live run: a second run is refused
        request.json                      what was asked: a --resume must ask the same
        sample-000.png ...                each batch's samples, written as soon as the batch is done
        parts/batch-00000.safetensors     the batch's tensors (and frames); written last, it marks the batch done

The work folder lives inside ``OUT`` so that the final renames never cross a filesystem (``OUT`` may be
a mount point: a Docker volume, a Kubernetes PVC). At the end :func:`assemble` adds ``grid.png`` (the
first 64 samples), ``final.safetensors`` (streamed part by part, so memory holds one batch), ``frames/``
+ ``trajectory.gif`` and ``run.json``, and :meth:`RunFolder.publish` moves them into ``OUT`` (with
signals held, as ``io.staged_dir`` does), removing what an earlier run there left that this one does
not write. ``OUT``'s own files are never touched before that: a failed or interrupted run leaves them
as they were, and the work folder keeps the finished batches for ``--resume`` (or nothing at all, not
even ``OUT`` if the run made it, when no batch had finished). Every file is fsynced before its rename,
and a part that does not read on ``--resume`` (a power loss, a full disk) is sampled again.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch
from torch import Tensor

from diffkit import io
from diffkit.errors import OutputInTheWay, UserError

T = TypeVar("T")
GRID_MAX = 64  # samples shown in grid.png and the frames
WORK = ".diffkit-partial"  # the work folder's name inside --out
# a sample, and the views and animations of it (sample-000.view1.png / .gif / .mp4, sample-000.factorize.gif)
_SAMPLE = re.compile(r"sample-\d{3,}(\.(view\d+|factorize))?\.(png|gif|mp4)")


class ResumeError(UserError):
    """--resume on a folder that another command began (or finished)."""


class AlreadyDone(Exception):
    """--resume on a folder that holds this very run, finished."""


class Busy(OutputInTheWay):
    """Another live diffkit run holds the folder's lock."""


class NotWritable(UserError, OSError):
    """An ``--out`` that cannot be made or written (exit 2, before any work; an OSError for callers that
    caught one). Its text is the message alone (an OSError built from an errno prints ``[Errno 30]``
    first); ``errno`` still says why, for hints."""

    def __init__(self, message: str, code: int | None = None):
        OSError.__init__(self, message)
        self.errno = code


class DamagedRun(UserError):
    """A file diffkit wrote (request.json, run.json) no longer reads."""


def sample_name(i: int) -> str:
    return f"sample-{i:03d}.png"


def output_names(n: int, frames: bool) -> list[str]:
    names = [sample_name(i) for i in range(n)] + ["grid.png", "run.json", "final.safetensors"]
    return names + (["trajectory.gif", "frames"] if frames else [])


def run_files(out: Path) -> list[str]:
    """The entries of ``out`` that a diffkit run writes (any number of samples): what --overwrite replaces."""
    fixed = {"grid.png", "run.json", "final.safetensors", "trajectory.gif", "frames"}
    return sorted(n for n in os.listdir(out) if n in fixed or _SAMPLE.fullmatch(n)) if out.is_dir() else []


def check_out(out: str | os.PathLike, n: int, frames: bool, overwrite: bool) -> None:
    """Refuse (FileExistsError) before any work if the run would overwrite files in ``out``."""
    import stat

    out = Path(out)
    try:  # one stat: another run may make or remove the folder between two questions
        is_file = not stat.S_ISDIR(os.stat(out).st_mode)
    except FileNotFoundError:
        is_file = False
    if is_file:
        raise OutputInTheWay(f"--out {out} is a file, not a folder")
    clash = [name for name in output_names(n, frames) if (out / name).exists()]
    if clash and not overwrite:
        raise OutputInTheWay(f"{out} already holds {', '.join(clash[:3])}{' ...' if len(clash) > 3 else ''}; "
                              "pass --overwrite to replace them, or choose another --out")


def make_dirs(path: Path) -> list[Path]:
    """Make ``path`` and its missing parents; the folders this call made, outermost first. Each is made
    with one ``mkdir``, so a folder another process makes at the same moment is never counted as ours."""
    made: list[Path] = []
    try:
        for p in reversed([path, *path.parents]):
            if p.is_dir():
                continue
            try:
                os.mkdir(p)
            except FileExistsError:
                continue
            made.append(p)
    except OSError:
        unmake_dirs(made)
        raise
    return made


def unmake_dirs(made: Sequence[Path]) -> None:
    """Remove the folders :func:`make_dirs` made, innermost first, each only while it is empty: what
    another process put in one since (its run, its lock) is never removed."""
    for p in reversed(made):
        try:
            os.rmdir(p)
        except OSError:
            return


def in_dirs(out: Path, work: Callable[[], T], tries: int = 50) -> tuple[list[Path], T]:
    """``work()`` with ``out`` made (see :func:`make_dirs`): ``(the folders made, its result)``. Another run
    starting at the same moment may remove an empty folder it made just before ``work`` writes in it
    (that is all :func:`unmake_dirs` ever removes); then the folders are made again and ``work`` retried."""
    for k in range(tries):
        made: list[Path] = []
        try:
            made = make_dirs(out)  # a parent may go between two of its mkdirs, too
            return made, work()
        except FileNotFoundError:
            unmake_dirs(made)
            if k == tries - 1:
                raise
        except BaseException:
            unmake_dirs(made)
            raise
    raise AssertionError("unreachable")


def probe(folder: Path) -> None:
    """Make and remove a file of its own name in ``folder`` (OSError if it cannot be written); two runs
    probing at once never remove each other's."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix=".diffkit-probe.", dir=folder)
    os.close(fd)
    os.unlink(name)


def check_writable(out: str | os.PathLike) -> None:
    """Refuse (:class:`NotWritable`, with the reason) an ``out`` that cannot be made or written: a read-only
    mount, a symlink loop, a file in the way, no permission. Makes and removes a probe file of its own
    name (two runs probing at once never remove each other's) and the folders it had to make, if still
    empty, so the refusal comes before any model loads or sampling starts."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise NotADirectoryError(f"--out {out} is a symbolic link that leads nowhere (a loop, or a missing target)")
    try:
        made, _ = in_dirs(out, lambda: probe(out))
    except OSError as e:
        raise NotWritable(f"cannot write to --out {out}: {e.strerror or e}", e.errno) from None
    unmake_dirs(made)


def partial_dir(out: str | os.PathLike) -> Path:
    return Path(out) / WORK


def _normal(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def _differences(old: dict, new: dict) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {json.dumps(old.get(k))} there, {json.dumps(new.get(k))} now" for k in keys)


def _changed_inputs(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first input file whose recorded contents' hash differs (or that is no longer read), or None."""
    a, b = old.get("inputs") or {}, new.get("inputs") or {}
    return next((f for f in a if b.get(f) != a[f]), None)


def _interrupted(path: Path) -> OutputInTheWay:
    done = len(list((path / "parts").glob("batch-*.safetensors")))
    return OutputInTheWay(f"{path} holds an interrupted run ({done} batches done); pass --resume to continue it, "
                           "or --overwrite to discard it")


def read_json(path: Path, what: str, keys: Sequence[str] = ()) -> dict[str, Any]:
    """A JSON object diffkit wrote, holding ``keys``; one that no longer reads is a :class:`DamagedRun`
    saying what to do."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedRun(f"{path} is damaged ({e}); {what}") from None
    if not isinstance(data, dict) or not set(keys) <= set(data):
        raise DamagedRun(f"{path} is damaged (not the object diffkit wrote); {what}")
    return data


def lock(path: Path) -> int:
    """Take the lock of the work folder ``path``: an exclusive ``fcntl.flock`` on ``path/lock`` holding
    our pid (the file is made with the folder, never here). The kernel drops it when the process ends,
    however it ends, so a killed run stays resumable; a live one makes this raise :class:`Busy`.
    Returns the descriptor that holds it."""
    try:  # never created here: a work folder appears whole, with its lock held (RunFolder.start)
        fd = os.open(path / "lock", os.O_RDWR)
    except FileNotFoundError:  # being published right now: the lock is the last entry to go
        raise Busy(f"another diffkit run is writing {path.parent} (it is finishing); wait for it to end, or "
                   f"choose another --out (if none is running, remove {path})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise Busy(f"another diffkit run (pid {pid}) is writing {path.parent}; wait for it to end, or choose "
                   "another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def check_free(path: Path) -> None:
    """Raise :class:`Busy` if a live run holds the work folder ``path``."""
    if (path / "lock").is_file():
        os.close(lock(path))


class RunFolder:
    """The work folder of one run (see the module's docstring). Batches may be written by any process;
    the one that started or resumed the run holds its lock."""

    def __init__(self, out: Path, request: dict[str, Any], n: int, batch_size: int, frames: bool,
                 made: Sequence[Path] = (), fd: int | None = None):
        self.out, self.path = Path(out), partial_dir(out)
        self.request, self.n, self.batch_size, self.frames = request, n, batch_size, frames
        self.made = list(made)  # the folders this run made (removed again, if empty, when nothing is kept)
        self.fd = fd  # the lock, while this process holds it

    # -- starting and resuming --

    @classmethod
    def precheck(cls, out: str | os.PathLike, n: int, frames: bool, *, resume: bool = False,
                 overwrite: bool = False) -> None:
        """The refusals of :meth:`start` that need no model (OSError), so a CLI can give them before
        loading one: an ``out`` that cannot be written, a live run writing it, an interrupted run in the
        way, or files of another run in ``out``. A --resume is judged by :meth:`start` alone (it
        compares the whole request)."""
        check_writable(out)
        check_free(partial_dir(out))
        if resume or overwrite:
            return
        if partial_dir(out).exists():
            raise _interrupted(partial_dir(out))
        check_out(out, n, frames, overwrite)

    @classmethod
    def start(cls, out: str | os.PathLike, request: dict[str, Any], n: int, batch_size: int, frames: bool, *,
              resume: bool = False, overwrite: bool = False,
              upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> tuple[RunFolder, str | None]:
        """The folder to write into, holding its lock, and a note for the user (resuming, nothing to resume).

        Refuses, before any work: an ``out`` that cannot be written (OSError), a live run writing it
        (Busy), files of another run in ``out`` (FileExistsError, unless ``overwrite``), an interrupted
        run in the way (FileExistsError: --resume or --overwrite), a --resume of another command
        (ResumeError), damaged files of an earlier run (DamagedRun); a --resume of this run, finished,
        raises AlreadyDone. ``upgrade`` makes a recorded request what today's code would record for it (the
        parameters added since, at their declared defaults), so a run begun before is the same command.
        """
        out, request = Path(out), _normal(request)
        upgrade = upgrade or (lambda r: r)
        path = partial_dir(out)
        check_writable(out)
        if path.exists():
            fd = lock(path)
            try:
                if resume:
                    return cls._resume(out, request, n, batch_size, frames, overwrite, fd, upgrade)
                if not overwrite:
                    raise _interrupted(path)
                shutil.rmtree(path)
            finally:
                if not resume:
                    os.close(fd)
        note = None
        if resume:
            finished = out / "run.json"
            if finished.is_file():
                fix = "pass --overwrite to start the run afresh"
                if _normal(upgrade(read_json(finished, fix).get("request") or {})) == _normal(upgrade(request)):
                    raise AlreadyDone(f"{out} already holds this run, finished; nothing to resume")
                raise ResumeError(f"--resume: {out} holds a finished run of another command and no interrupted "
                                  f"one; pass --overwrite to replace it, or choose another --out")
            note = f"nothing to resume in {out}: starting the run"
        check_out(out, n, frames, overwrite)
        made, fd = in_dirs(out, lambda: cls._create(path, {"request": request, "num_samples": n,
                                                            "batch_size": batch_size, "frames": frames}))
        return cls(out, request, n, batch_size, frames, made, fd), note

    @staticmethod
    def _create(path: Path, saved: dict[str, Any]) -> int:
        """Make the work folder ``path`` whole, its lock already held: built under a temporary name and
        renamed into place, so another process sees no work folder or one whose lock a live run holds
        (then it is :class:`Busy`), never one between the two. Returns the lock's descriptor."""
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix=f"{WORK}.", suffix=".tmp", dir=path.parent))
        fd = None
        try:
            (tmp / "parts").mkdir()
            fd = os.open(tmp / "lock", os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else can hold it
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            io.write_json(tmp / "request.json", saved)
            os.chmod(tmp, 0o777 & ~io._umask())
            os.rename(tmp, path)  # fails when another run's work folder (never empty) is already there
            return fd
        except BaseException as e:
            if fd is not None:
                os.close(fd)
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and e.errno in (errno.EEXIST, errno.ENOTEMPTY) and path.is_dir():
                os.close(lock(path))  # Busy while the run that made it lives
                raise _interrupted(path) from None
            raise

    @classmethod
    def _resume(cls, out: Path, request: dict, n: int, batch_size: int, frames: bool, overwrite: bool,
                fd: int, upgrade: Callable[[dict[str, Any]], dict[str, Any]]) -> tuple[RunFolder, str]:
        path = partial_dir(out)
        try:
            fix = f"pass --overwrite instead of --resume to start the run afresh (discarding {path})"
            keys = ("request", "num_samples", "batch_size", "frames")
            saved = read_json(path / "request.json", fix, keys) if (path / "request.json").is_file() else {}
            # both sides as today's code records them: the parameters added since, at their defaults
            begun, now = _normal(upgrade(saved.get("request") or {})), _normal(upgrade(request))
            changed = _changed_inputs(begun, now)
            if changed:
                raise ResumeError(f"--resume: {changed} changed since the run began (its contents differ from what the "
                                  f"finished batches were made from): put the old file back to resume, or pass "
                                  f"--overwrite instead to start afresh with the new one")
            if begun != now:
                raise ResumeError(f"--resume: {path} holds a run of another command ({_differences(begun, now)}); "
                                  "run that command again, or pass --overwrite instead to start this one afresh")
            folder = cls(out, request, saved["num_samples"], saved["batch_size"], saved["frames"], fd=fd)
            check_out(out, n, frames, overwrite)
        except BaseException:
            os.close(fd)
            raise
        damaged = folder.discard_damaged()
        done = len(folder.done())
        note = (f"resuming: {done} of {folder.batches()} batches of {folder.batch_size} samples were done "
                f"in {path}")
        if damaged:
            note += (f"; batch{'es' if len(damaged) > 1 else ''} {', '.join(map(str, damaged))} did not read back "
                     "(a torn or empty file) and will be sampled again")
        if batch_size != folder.batch_size:
            note += f" (continuing with --batch-size {folder.batch_size}, as the run began; the bytes are the same)"
        return folder, note

    def batches(self) -> int:
        return -(-self.n // self.batch_size)

    def part(self, k: int) -> Path:
        return self.path / "parts" / f"batch-{k:05d}.safetensors"

    def done(self) -> set[int]:
        """The batches whose every file is written."""
        return {k for k in range(self.batches()) if self.part(k).is_file()}

    def discard_damaged(self) -> list[int]:
        """Remove the part of every done batch that does not read back whole (a power loss or a full disk
        tore it, or left it empty), or whose PNGs are missing, so that the batch is sampled again."""
        from safetensors import safe_open

        bad = []
        for k in sorted(self.done()):
            try:
                with safe_open(self.part(k), "pt") as f:  # checks the header covers the whole file
                    meta = f.metadata()
                    for key in f.keys():
                        f.get_tensor(key)
                start, count = int(meta["start"]), len(json.loads(meta["seeds"]))
                if not all((self.path / sample_name(i)).is_file() for i in range(start, start + count)):
                    raise ValueError("a sample PNG is missing")
            except Exception:  # safetensors' own error type, a bad header, missing keys: unreadable all the same
                self.part(k).unlink()
                bad.append(k)
        return bad

    # -- writing --

    def write_batch(self, k: int, result: Any) -> None:
        """Batch ``k``'s samples (a :class:`diffkit.api.Result`): PNGs first, then its part file."""
        write_batch(self.path, k, k * self.batch_size, result, self.n)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def abandon(self) -> str:
        """After a failure: keep finished batches for --resume; with none, leave no trace. Says which."""
        done = len(self.done())
        self.release()
        if done:
            return f"{min(done * self.batch_size, self.n)} of {self.n} samples are kept in {self.path}; continue with --resume"
        shutil.rmtree(self.path, ignore_errors=True)  # ours: made whole by this run, under its lock
        unmake_dirs(self.made)
        return f"nothing was written to {self.out}"

    def publish(self, labels: Sequence[Any], extra: dict[str, Any] | None = None) -> None:
        """Assemble the run's files and move them into ``out``, all of them or (on failure) none; the
        files of an earlier run there (an --overwrite) that this run does not write go in the same step."""
        missing = sorted(set(range(self.batches())) - self.done())
        if missing:
            raise RuntimeError(f"batches {missing[:5]} of {self.path} are missing")
        assemble(self.path, labels, dict(extra or {}, request=self.request))
        (self.path / "request.json").unlink()
        try:  # the lock stays, held, until everything else has moved: a run arriving now is Busy
            io.move_into(self.path, self.out, stale=sorted(set(run_files(self.out)) - set(os.listdir(self.path))),
                         skip=("lock",))
            (self.path / "lock").unlink()
        finally:
            if self.path.is_dir() and not any(self.path.iterdir()):  # all moved: the work folder goes
                self.path.rmdir()
            self.release()


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
        try:
            save_file(tensors, tmp, metadata=meta)
        except Exception as e:  # safetensors reports the OS's error (a full disk) as text in its own type
            found = re.search(r"os error (\d+)", str(e))
            if found is None:
                raise
            code = int(found.group(1))
            raise OSError(code, os.strerror(code)) from None


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
