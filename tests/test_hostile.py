"""Issue 34's hostile-but-fair cases: nothing hangs, nothing grows without bound, nothing mixes, and every
refusal is one clear line with exit 2, before any work. Each case names its number in the issue."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffkit.cli import app

runner = CliRunner()


@contextmanager
def deadline(seconds: int):
    """Fail (not hang) a call that does not return in time: SIGALRM interrupts a Python loop."""
    def alarm(*_):
        raise TimeoutError(f"did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def sample(tmp_path: Path, *args: str, out: str = "o"):
    return runner.invoke(app, ["sample", "-b", "gaussian", "--steps", "2", *args, "--out", str(tmp_path / out)])


def one_line_exit_2(r, *needles: str) -> str:
    text = " ".join(r.output.split())
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "internal error" not in r.output, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    for n in needles:
        assert n in text, r.output
    return text


# ---- 1. a view that cannot move every patch ----

@pytest.mark.parametrize("view", ["patch_permute:1", "pixel_permute:1", "patch_permute:num_patches=1,seed=3"])
def test_a_one_patch_permutation_is_refused_with_its_range_not_searched_forever(tmp_path, view):
    with deadline(30):
        r = sample(tmp_path, "--hook", f'anagram:1,view="{view}"')
    one_line_exit_2(r, "num_patches", "2..1024")
    assert not (tmp_path / "o").exists()


def test_animate_of_a_run_json_naming_a_one_patch_view_is_refused(tmp_path):
    import json

    assert sample(tmp_path, "--hook", 'anagram:1,view="patch_permute:2"').exit_code == 0
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    run["request"]["hooks"][0]["args"]["view"] = ["patch_permute:num_patches=1,seed=0"]
    (tmp_path / "o" / "run.json").write_text(json.dumps(run))
    with deadline(30):
        r = runner.invoke(app, ["animate", str(tmp_path / "o"), "--no-mp4"])
    one_line_exit_2(r, "num_patches", "2..1024")


# ---- 2 and 12. permutation files: bounded before reading, and what a file is said plainly ----

def _bad_files(d: Path) -> dict[str, tuple[Path, str]]:
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(d / "PWNED"),))

    out = {}
    p = d / "huge-sparse.npy"  # a 2 GB file whose header promises 250 million int64s
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (250_000_000,)})
        f.truncate(2_000_000_000)
    out["huge-sparse"] = p, "more than a permutation of the largest image any stage has"
    p = d / "huge-header.npy"  # a small file whose header alone promises it
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (250_000_000,)})
    out["huge-header"] = p, "declares 250000000 numbers, more than the largest image any stage has"
    p = d / "huge.txt"
    with open(p, "w") as f:
        f.truncate(2_000_000_000)
    out["huge-text"] = p, "has 2000000000 bytes"
    p = d / "pickled.pt"
    torch.save(Evil(), p)
    out["pickled"] = p, "is not a plain tensor file (it holds pickled Python objects); nothing in it was run"
    (d / "folder.npy").mkdir()
    out["folder"] = d / "folder.npy", "is a folder"
    os.mkfifo(d / "fifo.txt")
    out["fifo"] = d / "fifo.txt", "is not a regular file"
    os.symlink("/dev/zero", d / "zero.npy")
    out["dev-zero"] = d / "zero.npy", "is not a regular file"
    (d / "zeros.npy").write_bytes(b"\0" * 256)
    out["all-zero"] = d / "zeros.npy", "is not a .npy file (its header does not read)"
    np.save(d / "complex.npy", np.arange(16) + 0j)
    out["complex"] = d / "complex.npy", "holds complex128 numbers: a permutation is integers"
    out["missing"] = d / "nothing.npy", "permutation file not found"
    return out


BAD = ["huge-sparse", "huge-header", "huge-text", "pickled", "folder", "fifo", "dev-zero", "all-zero", "complex",
       "missing"]


@pytest.mark.parametrize("case", BAD)
def test_a_bad_permutation_file_is_one_line_naming_what_it_is(tmp_path, case):
    import resource

    path, text = _bad_files(tmp_path)[case]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with deadline(30):
        r = sample(tmp_path, "--hook", f'anagram:1,view="permute:file={path}"')
    t = one_line_exit_2(r, text)
    assert "allow_pickle" not in t and "weights_only" not in t
    assert not (tmp_path / "PWNED").exists()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
    assert grown < 200_000, f"reading {case} raised the peak memory by {grown} KiB"


# ---- 13. options said once, in full ----

def test_a_backend_option_given_twice_names_the_option_not_a_flag_that_does_not_exist(tmp_path):
    t = one_line_exit_2(sample(tmp_path, "-O", "std=0.1", "-O", "std=0.2"), "backend option 'std' is given twice",
                        "-O std=0.1", "-O std=0.2")
    assert "--std" not in t


def test_a_short_flag_and_its_option_together_still_name_the_flag(tmp_path):
    r = runner.invoke(app, ["sample", "--checkpoint", "mnist-class", "-O", "checkpoint=mnist-h64", "--out",
                            str(tmp_path / "o")])
    one_line_exit_2(r, "backend option 'checkpoint' is given twice", "--checkpoint is short for")


@pytest.mark.parametrize("value", ["20,,0", "", ",", "20,10,"])
def test_timesteps_with_an_empty_item_are_refused(tmp_path, value):
    one_line_exit_2(sample(tmp_path, "--timesteps", value), "--timesteps", "has an empty item")
    assert not (tmp_path / "o").exists()


def test_steps_that_contradict_the_timesteps_are_refused_in_the_api_too(tmp_path):
    import diffkit
    from diffkit.errors import UserError

    one_line_exit_2(runner.invoke(app, ["sample", "-b", "gaussian", "--timesteps", "20,10", "--steps", "5",
                                        "--out", str(tmp_path / "o")]), "steps=5 contradicts the 2 timesteps")
    with pytest.raises(UserError, match="steps=3 contradicts"):
        diffkit.Run("gaussian", timesteps=[20, 10], steps=3)
    assert len(diffkit.Run("gaussian", timesteps=[20, 10], steps=2).timesteps) == 2  # agreeing: fine


def test_a_missing_local_model_folder_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("the hub was asked"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    for model in ["m/nope", str(tmp_path / "nope"), "./nope", "a/b/c"]:
        r = runner.invoke(app, ["sample", "-b", "sd", "--model", model, "--prompt", "a", "--out", str(tmp_path / "o")])
        t = one_line_exit_2(r, f"no folder at {model}")
        assert "Internet" not in t and "connection" not in t


# ---- 14. diffkit's line alone ----

@pytest.mark.parametrize("where", ["probe", "work folder"])
def test_write_errors_print_no_stray_errno(tmp_path, monkeypatch, where):
    import tempfile

    from diffkit import folder

    def refuse(*a, **k):
        raise OSError(30, "Read-only file system", str(tmp_path / "ro" / "run" / "x"))

    if where == "probe":  # the --out check before any model loads
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    else:  # the work folder's first file, once the folder was found writable
        monkeypatch.setattr(folder.io, "atomic_path", refuse)
    t = one_line_exit_2(sample(tmp_path, out="ro/run"), f"cannot write to", "Read-only file system")
    assert "[Errno" not in t


def test_library_warnings_do_not_reach_the_output(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("L", (10_000, 9_000), 128).save(big)  # over Pillow's 89-megapixel bomb warning
    code = ("import sys; sys.argv = ['diffkit', 'sample', '-b', 'gaussian', '--steps', '2', '--hook', "
            f"'sdedit:image={big},strength=0.5', '--out', {str(tmp_path / 'o')!r}]; from diffkit.cli import main; main()")
    env = {k: v for k, v in os.environ.items() if k != "DIFFKIT_DEBUG"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr + r.stdout and "DecompressionBomb" not in r.stderr + r.stdout, r.stderr


# ---- 3, 9, 10, 11. animate: frames streamed, a damaged folder named, nothing outside it, writability first ----

@pytest.fixture
def anagram_run(tmp_path):
    assert sample(tmp_path, "-n", "2", "--hook", "anagram:1,view=rot180", out="run").exit_code == 0
    return tmp_path / "run"


def test_animate_holds_one_frame_at_a_time_however_many_frames(anagram_run, monkeypatch):
    import weakref

    from diffkit import animate

    live, peak = [0], [0]
    real = animate._caption

    def counted(*a, **k):
        fr = real(*a, **k)
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        weakref.finalize(fr, lambda: live.__setitem__(0, live[0] - 1))
        return fr

    monkeypatch.setattr(animate, "_caption", counted)
    r = runner.invoke(app, ["animate", str(anagram_run), "--frames", "200"])
    assert r.exit_code == 0, r.output
    assert peak[0] <= 3, f"{peak[0]} frames were held at once"
    from PIL import Image

    with Image.open(anagram_run / "sample-000.view1.gif") as g:  # still every frame, merged where equal
        assert g.n_frames > 150 and g.info["loop"] == 0


def _damage(run: Path, how: str) -> str:
    import json

    path = run / "run.json"
    data = json.loads(path.read_text())
    if how == "missing png":
        (run / "sample-001.png").unlink()
        return "lacks sample-001.png, which run.json lists"
    if how == "run.json a list":
        path.write_text("[1, 2]")
        return "holds a list, not the object diffkit writes"
    if how == "no samples":
        del data["samples"]
    elif how == "factorize without its prompt":
        data["request"]["hooks"] = [{"name": "factorize", "args": {"parts": "low_pass+high_pass"}}]
    elif how == "not an image":
        (run / "sample-000.png").write_text("not a png")
        return "sample-000.png is not a readable image"
    elif how == "outside":
        data["samples"][0]["file"] = "../other/sample-000.png"
    elif how == "absolute":
        data["samples"][0]["file"] = str(run / "sample-000.png")
    elif how == "two one stem":
        data["samples"][1]["file"] = data["samples"][0]["file"]
    path.write_text(json.dumps(data))
    return {"no samples": "lists no samples", "factorize without its prompt": "its factorize technique cannot be made again",
            "outside": "is not in", "absolute": "is not in", "two one stem": "for samples 0 and 1"}[how]


@pytest.mark.parametrize("how", ["missing png", "run.json a list", "no samples", "factorize without its prompt",
                                 "not an image", "outside", "absolute", "two one stem"])
def test_animate_on_a_damaged_folder_names_what_is_wrong_and_writes_nothing(anagram_run, tmp_path, how):
    (tmp_path / "other").mkdir()
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "other" / "sample-000.png")
    text = _damage(anagram_run, how)
    before = sorted(p.name for p in anagram_run.iterdir())
    r = runner.invoke(app, ["animate", str(anagram_run), "--no-mp4"])
    one_line_exit_2(r, text)
    assert sorted(p.name for p in anagram_run.iterdir()) == before
    assert not list((tmp_path / "other").glob("*.gif"))


def test_animate_on_a_read_only_folder_is_refused_before_any_frame(anagram_run, monkeypatch):
    from diffkit import animate

    os.chmod(anagram_run, 0o500)
    try:
        if os.access(anagram_run, os.W_OK):  # root: make the probe fail as a read-only mount would
            import tempfile

            def ro(*a, **k):
                raise OSError(30, "Read-only file system")
            monkeypatch.setattr(tempfile, "mkstemp", ro)
        monkeypatch.setattr(animate, "_caption", lambda *a, **k: pytest.fail("a frame was rendered"))
        r = runner.invoke(app, ["animate", str(anagram_run), "--no-mp4"])
    finally:
        os.chmod(anagram_run, 0o755)
    one_line_exit_2(r, f"cannot write to {anagram_run}")


# ---- 7. factorize parts that do not add up to the image ----

@pytest.mark.parametrize("parts", ["low_pass:kernel=3+low_pass:kernel=3", "scale:0.5+scale:0.2", "high_pass:kernel=3+high_pass:kernel=3",
                                   "low_pass:sigma=1,kernel=5+high_pass:sigma=2,kernel=5"])
def test_factorize_parts_that_do_not_sum_to_the_image_are_refused(tmp_path, parts):
    r = sample(tmp_path, "--class", "0", "--hook", f'factorize:1,parts="{parts}"')
    one_line_exit_2(r, "technique 'factorize'", "do not add up to the image at this stage's")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("parts", ["low_pass:kernel=7+high_pass:kernel=7", "low_pass:sigma=1,kernel=5+high_pass:sigma=1,kernel=5",
                                   "scale:15+scale:-14", "motion+motion_res", "scale:0.3+scale:0.7"])
def test_factorize_parts_that_sum_to_the_image_still_run(tmp_path, parts):
    assert sample(tmp_path, "--class", "0", "--hook", f'factorize:1,parts="{parts}"').exit_code == 0


def test_a_three_band_decomposition_still_runs(tmp_path):
    r = sample(tmp_path, "--class", "0", "--hook",
               "factorize:1,prompt=0,parts=triple_low_pass:kernel=5+triple_medium_pass:kernel=5+triple_high_pass:kernel=5")
    assert r.exit_code == 0, r.output


# ---- 8. every image mode Pillow opens reads in [0, 1], or is refused by name ----

def _ramp(d: Path):
    """The same picture (a diagonal ramp) at 8 bits, 16 bits and in float32."""
    from PIL import Image

    y, x = np.mgrid[0:48, 0:40]
    v = (x + y) / (47 + 39)
    Image.fromarray(np.round(v * 255).astype(np.uint8)).save(d / "ramp8.png")
    Image.fromarray(np.round(v * 65535).astype(np.uint16)).save(d / "ramp16.png")
    Image.fromarray(v.astype(np.float32)).save(d / "rampf.tiff")
    return d / "ramp8.png", d / "ramp16.png", d / "rampf.tiff"


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_and_float_images_read_as_the_same_picture_at_8_bits(tmp_path, channels):
    from PIL import Image

    from diffkit.io import load_image

    p8, p16, pf = _ramp(tmp_path)
    assert Image.open(p16).mode == "I;16" and Image.open(pf).mode == "F"
    want = load_image(p8, (16, 16), channels)
    for p in (p16, pf):
        got = load_image(p, (16, 16), channels)
        # The 8-bit side rounds twice: the source (half a level, carried through Lanczos-3, whose |weights|
        # sum to < 1.3: < 0.65 of a level) and its output (half a level): < 1.15 levels; 1.5 leaves room for
        # Pillow's fixed-point coefficients. The bug this catches (16 bits clipped to 8) is off by 0.5 and more.
        assert got.shape == want.shape and (got - want).abs().max() <= 1.5 / 255, p


@pytest.mark.parametrize("hook", ["sdedit:image={},strength=0.5", "reference:image={},part=\"low_pass:kernel=3\"", "inpaint:image={},mask={}"])
def test_a_16_bit_png_is_read_right_by_every_technique_that_takes_an_image(tmp_path, hook, monkeypatch):
    from diffkit import io

    _, p16, _ = _ramp(tmp_path)
    seen = []
    real = io.load_image
    monkeypatch.setattr(io, "load_image", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    r = sample(tmp_path, "--class", "0", "--hook", hook.format(p16, p16))
    assert r.exit_code == 0, r.output
    assert seen and all(0.4 < float(t.mean()) < 0.6 for t in seen)  # the ramp's mean, not near-white or black


@pytest.mark.parametrize("values,text", [((-1.0, 2.0), "a float image with values in [-1, 2]"),
                                         ((0.0, float("nan")), "a float image with values in")])
def test_a_float_image_outside_0_1_is_refused_by_name(tmp_path, values, text):
    from PIL import Image

    Image.fromarray(np.array([[values[0], values[1]]] * 2, dtype=np.float32)).save(tmp_path / "f.tiff")
    one_line_exit_2(sample(tmp_path, "--class", "0", "--hook", f"sdedit:image={tmp_path / 'f.tiff'},strength=0.5"),
                    text)


@pytest.mark.parametrize("mode,ext", [("1", "png"), ("L", "png"), ("P", "png"), ("RGB", "png"), ("RGBA", "png"),
                                      ("LA", "png"), ("CMYK", "tiff"), ("YCbCr", "jpg"), ("LAB", "tiff"),
                                      ("I", "tiff"), ("I;16", "png"), ("I;16B", "tiff"), ("F", "tiff"),
                                      ("RGBX", "tiff"), ("HSV", "tiff")])
def test_every_mode_reads_in_0_1_or_is_refused_by_name(tmp_path, mode, ext):
    from PIL import Image

    from diffkit.errors import UserError
    from diffkit.io import load_image

    p = tmp_path / f"im.{ext}"
    try:
        Image.new(mode, (12, 10)).save(p)
    except (OSError, KeyError, ValueError):
        pytest.skip(f"Pillow cannot write {mode} as {ext}")
    for c in (1, 3):
        try:
            t = load_image(p, (8, 8), c)
        except UserError as e:
            assert f"mode {Image.open(p).mode}" in str(e)
            continue
        assert t.shape == (c, 8, 8) and 0 <= float(t.min()) and float(t.max()) <= 1


# ---- 6. two runs started at the same moment: one writes, the other is told so; nobody removes another's folder ----

def _start_at_once(out: str, barrier, answers, answered) -> None:
    from diffkit.folder import Busy, RunFolder

    barrier.wait()
    try:
        folder, _ = RunFolder.start(out, {"same": "request"}, 2, 2, False)
    except Busy as e:
        answers.put(("busy", str(e)))
        answered.set()
        return
    except BaseException as e:  # noqa: BLE001 - any other outcome is the bug
        answers.put(("other", f"{type(e).__name__}: {e}"))
        answered.set()
        return
    answered.wait(60)  # hold the run until the other has its answer, however loaded the machine
    ok = folder.path.is_dir() and (folder.path / "request.json").is_file()
    folder.release()
    answers.put(("ok" if ok else "other", "the work folder vanished under the winner"))


def test_two_runs_started_at_the_same_moment_one_writes_the_other_is_told_busy(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for k in range(40):  # the window is microseconds wide: many tries, parents made and not made
        out = str(tmp_path / f"try{k}" / "deeper" / "out" if k % 2 else tmp_path / f"out{k}")
        barrier, answers, answered = ctx.Barrier(2), ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=_start_at_once, args=(out, barrier, answers, answered)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        got = sorted(answers.get(timeout=5) for _ in procs)
        kinds = [g[0] for g in got]
        assert kinds == ["busy", "ok"], (k, got)
        assert "another diffkit run" in got[0][1] and "is writing" in got[0][1], got


def test_a_run_arriving_while_another_publishes_is_told_busy(tmp_path, monkeypatch):
    from diffkit import folder as fmod
    from diffkit.folder import Busy, RunFolder

    seen = []
    real = fmod.io.move_into

    def publish_and_race(src, out, stale=(), skip=()):
        real(src, out, stale, skip)  # every file moved in; the lock not yet gone
        with pytest.raises(Busy, match="another diffkit run") as e:
            RunFolder.start(out, {"other": 1}, 1, 1, False, overwrite=True)
        seen.append(str(e.value))

    monkeypatch.setattr(fmod.io, "move_into", publish_and_race)
    r = sample(tmp_path, "-n", "2")
    assert r.exit_code == 0, r.output
    assert seen and not (tmp_path / "o" / ".diffkit-partial").exists()
    assert (tmp_path / "o" / "run.json").is_file() and not (tmp_path / "o" / "lock").exists()


def test_two_diffkit_commands_at_once_one_writes_the_other_says_busy(tmp_path):
    import subprocess
    import sys

    code = "import sys; sys.argv[0] = 'diffkit'; from diffkit.cli import main; main()"
    for k in range(3):
        out = tmp_path / f"o{k}" / "run"
        args = [sys.executable, "-c", code, "sample", "-b", "gaussian", "-n", "64", "--steps", "300", "--out", str(out)]
        procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        outs = [(p.wait(timeout=300), p.stdout.read()) for p in procs]
        codes = sorted(c for c, _ in outs)
        said = " ".join(t for _, t in outs)
        # both may also run one after the other (the first finished before the second began): then the
        # second is refused for the finished run's files; never a mix, never an internal error
        assert "internal error" not in said and "missing" not in said and "No such file" not in said, said
        assert codes == [0, 2], said
        assert "another diffkit run" in said or "already holds" in said, said
        assert len(list(out.glob("sample-*.png"))) == 64


# ---- 5. --resume after an input file changed ----

def _inputs(d: Path) -> dict[str, Path]:
    from PIL import Image

    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(d / "image.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(d / "mask.png")
    np.save(d / "perm.npy", np.random.default_rng(0).permutation(64))
    return {"image": d / "image.png", "mask": d / "mask.png", "perm": d / "perm.npy"}


@pytest.mark.parametrize("hook,changed", [("sdedit:image={image},strength=0.5", "image"),
                                          ("reference:image={image},part=\"low_pass:kernel=3\"", "image"),
                                          ("inpaint:image={image},mask={mask}", "mask"),
                                          ("anagram:1,view=\"permute:file={perm}\"", "perm")])
def test_resume_after_an_input_file_changed_is_refused_naming_it(tmp_path, hook, changed, monkeypatch):
    import json

    from PIL import Image

    from diffkit import api

    files = _inputs(tmp_path)
    args = ["--class", "0", "-n", "4", "--batch-size", "2", "--hook", hook.format(**files)]
    # stop after the first batch: the run is interrupted with one batch done
    job = api.FolderRun(tmp_path / "o", "gaussian", classes=["0"], num=4, steps=2, batch_size=2,
                        hooks=[hook.format(**files)])
    steps = job.steps()
    for st in steps:
        if st.state is None:
            break
    steps.close()
    saved = json.loads((tmp_path / "o" / ".diffkit-partial" / "request.json").read_text())["request"]
    assert str(files[changed]) in saved["inputs"]
    p = files[changed]
    if p.suffix == ".npy":
        np.save(p, np.random.default_rng(1).permutation(64))
    else:
        Image.fromarray(np.full((8, 8), 10 if changed == "image" else 0, np.uint8)).save(p)
        if changed == "mask":
            Image.fromarray(np.eye(8, dtype=np.uint8) * 255).save(p)
    r = sample(tmp_path, *args, "--resume")
    one_line_exit_2(r, f"--resume: {p} changed since the run began", "--overwrite")
    assert not (tmp_path / "o" / "run.json").exists()
    # the same file back: the resume goes on
    files = _inputs(tmp_path)
    assert sample(tmp_path, *args, "--resume").exit_code == 0


def test_a_run_without_input_files_records_no_inputs(tmp_path):
    import json

    assert sample(tmp_path, "--class", "0").exit_code == 0
    assert "inputs" not in json.loads((tmp_path / "o" / "run.json").read_text())["request"]


# ---- 4. branches that multiply past a bound are refused, counted, before any step ----

def test_twenty_nested_anagrams_are_refused_at_once_with_the_row_count(tmp_path):
    import time

    hooks = [a for _ in range(20) for a in ("--hook", 'anagram:1,view="pixel_permute:8"')]
    t0 = time.perf_counter()
    with deadline(60):
        r = sample(tmp_path, "--class", "0", *hooks)
    one_line_exit_2(r, "make 1048576 branches a sample", "over the bound of 1024", "--max-branches 1048576")
    assert time.perf_counter() - t0 < 30 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("hooks,branches,rows", [
    (["cfg:3", "anagram:1,view=rot180"], 4, 4), (["cfg:3", "hybrid:1,kernel=3"], 4, 3),
    (["anagram:1,view=rot180", "anagram:1,view=flip_h"], 4, 4), (["anagram:1,view=rot180"] * 3, 8, 4),  # nested views of one name: 8 built, 4 distinct
    (["cfg:2"], 2, 2), ([], 1, 1)])
def test_the_count_is_the_branches_built_and_the_rows_the_model_is_asked_for(hooks, branches, rows):
    import diffkit

    run = diffkit.Run("gaussian", classes=[0], num=3, steps=2, hooks=hooks)
    assert run.sampler.branches(run._ctx0) == (branches, rows)
    assert run.sampler.branches(run._ctx0, cap=1)[0] == branches  # extrapolated past the cap: the same count
    for _ in run.steps():
        pass
    calls = run.sampler.stats["evaluations"]
    assert run.sampler.stats["rows"] == rows * 3 * calls


def test_max_branches_lets_a_user_who_means_it_through(tmp_path):
    one_line_exit_2(sample(tmp_path, "--class", "0", "--hook", "cfg:3", "--hook", "anagram:1,view=rot180",
                           "--max-branches", "3"), "make 4 branches a sample", "--max-branches 4")
    r = sample(tmp_path, "--class", "0", "--hook", "cfg:3", "--hook", "anagram:1,view=rot180", "--max-branches", "4")
    assert r.exit_code == 0, r.output
