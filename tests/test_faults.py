"""Nothing lost, nothing mixed (issue 21): --out on a mount point, a live run's lock, torn parts,
--overwrite with fewer samples, techniques that would silently override each other, failures the user
can act on (a full disk, a checkpoint whose config does not fit, damaged run files), a rendezvous that
never comes, and the smaller refusals. Mounts are made with ``unshare -m`` (root only; skipped with the
reason otherwise); the lock is shown with two real processes."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import diffkit
from conftest import interrupted
from diffkit import io
from diffkit.cli import app
from diffkit.folder import partial_dir

runner = CliRunner()
PY = shlex.quote(sys.executable)
# 8 samples of the shipped model in 2 batches, 4 steps: a real model, quick
ARGS = ["sample", "--class", "3,7", "-n", "4", "--sampler", "ddim", "--steps", "4", "--batch-size", "4"]


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def can_mount() -> str | None:
    """Why mounts cannot be made here (None: they can)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare(1) to make a mount point"
    p = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return None if p.returncode == 0 else f"unshare -m fails here: {p.stderr.decode().strip()}"


needs_mount = pytest.mark.skipif(can_mount() is not None, reason=str(can_mount()))


def in_mount_ns(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a shell script in a private mount namespace (its mounts vanish when it ends)."""
    return subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, COLUMNS="200"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "o"
    r = cli(*ARGS, "--out", out)
    assert r.exit_code == 0, r.output
    return files(out)


# ---- 4. --out on a mount point, an --out that cannot be written ----

@needs_mount
def test_out_on_a_mount_point_publishes_and_resumes(tmp_path, reference):
    """The work folder lives inside --out, so the final renames never cross filesystems (EXDEV)."""
    out, copy = tmp_path / "vol", tmp_path / "copy"
    out.mkdir()
    cmd = " ".join(shlex.quote(str(a)) for a in ARGS)
    p = in_mount_ns(f"mount -t tmpfs tmpfs {out} && {PY} -m diffkit {cmd} --out {out} && cp -r {out} {copy}", tmp_path)
    assert p.returncode == 0, p.stderr
    assert files(copy) == reference


@needs_mount
def test_a_read_only_out_is_refused_before_sampling(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    cmd = " ".join(shlex.quote(str(a)) for a in ARGS)
    p = in_mount_ns(f"mount -t tmpfs -o ro tmpfs {out} && {PY} -m diffkit {cmd} --out {out}/run", tmp_path)
    assert p.returncode == 2, p.stderr
    assert "Read-only file system" in p.stderr and "sampling" not in p.stderr and "internal error" not in p.stderr


def test_a_symlink_loop_or_a_file_in_the_way_is_refused_before_sampling(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    r = cli(*ARGS, "--out", tmp_path / "loop")
    assert r.exit_code == 2 and "symbolic link that leads nowhere" in r.output and "sampling" not in r.output
    (tmp_path / "file").write_text("x")
    r = cli(*ARGS, "--out", tmp_path / "file" / "run")
    assert r.exit_code == 2 and "cannot write to --out" in r.output and "sampling" not in r.output, r.output
    assert (tmp_path / "file").read_text() == "x"


# ---- 5. a live run holds a lock ----

def test_a_second_run_on_a_live_runs_folder_is_refused_and_a_killed_run_resumes(tmp_path, reference):
    out = tmp_path / "o"
    code = ("import sys, time; import diffkit.folder as f; real = f.write_batch\n"
            "def slow(*a, **k):\n    real(*a, **k); time.sleep(60)\n"
            "f.write_batch = slow\nfrom diffkit.cli import main; sys.argv[0] = 'diffkit'; main()")
    first = subprocess.Popen([sys.executable, "-c", code, *ARGS, "--out", str(out)], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 120
        while not (partial_dir(out) / "parts" / "batch-00000.safetensors").is_file():
            assert first.poll() is None and time.monotonic() < end, first.communicate()
            time.sleep(0.2)
        for extra in ([], ["--overwrite"], ["--resume"]):
            r = cli(*ARGS, "--out", out, *extra)
            assert r.exit_code == 2, r.output
            assert f"another diffkit run (pid {first.pid}) is writing {out}" in r.output, r.output
        first.send_signal(signal.SIGKILL)  # the kernel drops the lock: the run is resumable
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    r = cli(*ARGS, "--out", out, "--resume")
    assert r.exit_code == 0 and "resuming: 1 of 2 batches" in r.output, r.output
    assert files(out) == reference


# ---- 6. a torn or empty part ----

def interrupted_after(batches: int, out: Path) -> None:
    interrupted(batches, *ARGS, "--batch-size", "2", "--out", out)


@pytest.mark.parametrize("tear", ["empty", "torn", "png-missing"])
def test_a_damaged_part_is_sampled_again_on_resume(tmp_path, reference, tear):
    out = tmp_path / "o"
    interrupted_after(3, out)
    part = partial_dir(out) / "parts" / "batch-00001.safetensors"
    if tear == "empty":
        os.truncate(part, 0)
    elif tear == "torn":
        os.truncate(part, part.stat().st_size // 2)
    else:
        (partial_dir(out) / "sample-002.png").unlink()
    r = cli(*ARGS, "--batch-size", "2", "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    assert "resuming: 2 of 4 batches" in r.output and "batch 1 did not read back" in r.output, r.output
    assert "sampling 4 samples" in r.output  # batches 1 and 3
    assert files(out) == reference


def test_parts_are_written_to_a_temporary_name_and_fsynced_before_the_rename(tmp_path, monkeypatch):
    order = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (order.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (order.append(("replace", str(a), str(b))), real_replace(a, b))[1])
    io.write_json(tmp_path / "a.json", {"x": 1})
    assert [o[0] for o in order] == ["fsync", "replace"]
    assert order[0][1] == order[1][1] != str(tmp_path / "a.json") and order[1][2] == str(tmp_path / "a.json")


# ---- 7. --overwrite replaces a run whole ----

def test_overwrite_with_fewer_samples_leaves_none_of_the_old_run(tmp_path):
    out = tmp_path / "o"
    (tmp_path / "o").mkdir()
    (out / "notes.txt").write_text("mine")  # not a run's file: kept
    assert cli("sample", "--class", "1", "-n", "4", "--steps", "3", "--save-every", "1", "--out", out).exit_code == 0
    r = cli("sample", "--class", "1", "-n", "2", "--steps", "3", "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(out)) == ["final.safetensors", "grid.png", "notes.txt", "run.json", "sample-000.png",
                                       "sample-001.png"]
    # the Python API's save too
    res = diffkit.sample("mnist", classes=[2], num=1, steps=3)
    diffkit.save(res, out, overwrite=True)
    assert sorted(os.listdir(out)) == ["final.safetensors", "grid.png", "notes.txt", "run.json", "sample-000.png"]


# ---- 8. techniques that would override each other ----

def technique_specs(tmp_path: Path) -> dict[str, list[str]]:
    """Two specs of each built-in technique (different arguments), valid on the MNIST backend."""
    img, mask = tmp_path / "img.png", tmp_path / "mask.png"
    io.save_png(torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0)), img)
    m = torch.zeros(1, 28, 28)
    m[:, :, 14:] = 1
    io.save_png(m, mask)
    return {"cfg": ["cfg:3", "cfg:2,lo=0.5"], "autoguide": ["autoguide:2", "autoguide:1.5"],
            "anagram": ["anagram:5,view=flip_h", "anagram:8,view=rot180"], "hybrid": ["hybrid:1", "hybrid:8,sigma=1"],
            "inpaint": [f"inpaint:{img},{mask}", f"inpaint:{img},{mask},resample=2"],
            "sdedit": [f"sdedit:{img},i_start=1", f"sdedit:{img},i_start=2"],
            "factorize": ['factorize:1,parts="low_pass:sigma=2,kernel=9+high_pass:sigma=2,kernel=9"',
                          "factorize:8,parts=scale:2+scale:-1"],
            "reference": [f"reference:image={img}", f'reference:image={img},part="high_pass:sigma=1,kernel=5"'],
            "apg": ["apg:3", "apg:4,eta=0,momentum=-0.5"], "cfg_zero_star": ["cfg_zero_star:3", "cfg_zero_star:2,zero_steps=0"],
            "tcfg": ["tcfg:3", "tcfg:2,original=true"], "mag": ["mag:3", "mag:5,alpha=2"],
            "fdg": ["fdg:scales=3+2", "fdg:scales=4+1,parallel=0+0.5"]}


def test_every_pair_of_techniques_either_composes_or_is_refused(tmp_path):
    """No pair is silently one of its parts: a + b gives other bytes than a alone and than b alone, or is
    refused with exit 2 naming both (two techniques that both set the initial state)."""
    from diffkit import registry
    from diffkit.syntax import SpecError

    specs = technique_specs(tmp_path)
    # pag, seg and slg perturb a model's attention or blocks, which MNIST's UNet has not: tests/test_perturbed.py
    # pairs each with the techniques on the tiny sd and sd3
    perturbing = {n for n, c in registry.techniques().items() if getattr(c, "perturbs", None)}
    assert perturbing == {"pag", "seg", "slg"}
    assert set(registry.techniques()) - {"negative"} - perturbing <= set(specs), "a new built-in technique needs specs here"
    kw = dict(classes=[3], num=2, sampler="ddim", steps=4, seed=1)
    alone = {s: diffkit.sample("mnist", hooks=[s], **kw).x for v in specs.values() for s in v}
    refused = []
    for a, b in itertools.combinations_with_replacement(sorted(specs), 2):
        sa, sb = specs[a][0], specs[b][1]
        try:
            both = diffkit.sample("mnist", hooks=[sa, sb], **kw).x
        except SpecError as e:
            assert repr(a) in str(e) and "diffkit_initial_state" in str(e), str(e)
            refused.append((a, b))
            continue
        assert not torch.equal(both, alone[sa]), f"{sb} was ignored after {sa}"
        assert not torch.equal(both, alone[sb]), f"{sa} was ignored before {sb}"
    assert refused == [("sdedit", "sdedit")]
    r = cli("sample", "--hook", specs["sdedit"][0], "--hook", specs["sdedit"][1], "--out", tmp_path / "o")
    assert r.exit_code == 2 and "two 'sdedit' techniques" in r.output and not (tmp_path / "o").exists()


# ---- 9. failures the user caused say what to do ----

@needs_mount
def test_a_full_disk_keeps_finished_batches_and_says_to_free_space_and_resume(tmp_path, reference):
    out = tmp_path / "small"
    out.mkdir()
    cmd = " ".join(shlex.quote(str(a)) for a in ARGS)
    copy = tmp_path / "copy"
    # 80 KB hold the first batch (4 PNGs in 4 KB blocks, a 38 KB part) but not the second
    script = (f"mount -t tmpfs -o size=80k tmpfs {out} && ({PY} -m diffkit {cmd} --out {out}; echo rc=$? >&2);"
              f" mount -o remount,size=20m {out} && {PY} -m diffkit {cmd} --out {out} --resume && cp -r {out} {copy}")
    p = in_mount_ns(script, tmp_path)
    assert "rc=1" in p.stderr and "internal error" not in p.stderr, p.stderr
    assert "No space left on device" in p.stderr and "(the disk is full: free some space first)" in p.stderr
    assert "4 of 8 samples are kept in" in p.stderr and "continue with --resume" in p.stderr, p.stderr
    assert p.returncode == 0 and "resuming: 1 of 2 batches" in p.stderr, p.stderr
    assert files(copy) == reference


def test_a_full_disk_while_publishing_keeps_every_batch(tmp_path, reference, monkeypatch):
    import errno

    from diffkit import folder

    out = tmp_path / "o"
    real = folder.concat_safetensors

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(folder, "concat_safetensors", full)
    r = cli(*ARGS, "--out", out)
    assert r.exit_code == 1 and "internal error" not in r.output
    assert "the disk is full: free some space first" in r.output and "8 of 8 samples are kept" in r.output, r.output
    monkeypatch.setattr(folder, "concat_safetensors", real)
    r = cli(*ARGS, "--out", out, "--resume")
    assert r.exit_code == 0 and "resuming: 2 of 2 batches" in r.output, r.output
    assert files(out) == reference


@pytest.mark.parametrize("hidden", [64, 10**6, "wide", 0])
def test_a_checkpoint_whose_config_does_not_fit_its_weights_is_refused_before_allocating(tmp_path, hidden):
    from diffkit.mnist import checkpoint

    ck = tmp_path / "ck"
    shutil.copytree(checkpoint.SHIPPED, ck)
    config = json.loads((ck / "config.json").read_text())
    config["hidden"] = hidden
    (ck / "config.json").write_text(json.dumps(config))
    t = time.monotonic()
    r = cli("sample", "--class", "1", "--checkpoint", ck, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "internal error" not in r.output and time.monotonic() - t < 30, r.output
    if hidden == 64:
        assert "config.json says hidden=64 but its weights are 32 wide" in r.output, r.output
    else:
        assert "hidden must be an integer in 1..1024" in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_damaged_run_files_are_refused_with_what_to_do(tmp_path):
    out = tmp_path / "o"
    interrupted_after(1, out)
    for damage in ('{"request": ', '["a list"]', '{"request": {}}'):
        (partial_dir(out) / "request.json").write_text(damage)
        r = cli(*ARGS, "--batch-size", "2", "--out", out, "--resume")
        assert r.exit_code == 2 and "request.json is damaged" in r.output and "--overwrite" in r.output, r.output
    assert cli(*ARGS, "--batch-size", "2", "--out", out, "--overwrite").exit_code == 0
    (out / "run.json").write_bytes(b"\xff\xfe garbage")
    r = cli(*ARGS, "--batch-size", "2", "--out", out, "--resume")
    assert r.exit_code == 2 and "run.json is damaged" in r.output and "--overwrite" in r.output, r.output


# ---- 10. a rendezvous that never comes ----

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank1(extra: list[str], tmp_path: Path) -> subprocess.Popen:
    env = dict(os.environ, WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), PYTHONUNBUFFERED="1", COLUMNS="200")
    return subprocess.Popen([sys.executable, "-m", "diffkit", *ARGS, "--out", str(tmp_path / "o"), *extra],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_missing_master_times_out_with_exit_2(tmp_path):
    p = rank1(["--rendezvous-timeout", "3"], tmp_path)
    t = time.monotonic()
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    assert "rank 1 of 2: rendezvous at 127.0.0.1:" in err and "failed within 3 s" in err, err
    assert time.monotonic() - t < 60 and "internal error" not in err


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_a_rendezvous_wait_at_once(tmp_path, sig, code):
    p = rank1([], tmp_path)  # the default timeout: a minute
    try:
        line = p.stderr.readline()
        assert "waiting for the rendezvous" in line, line
        time.sleep(1)
        p.send_signal(sig)
        t = time.monotonic()
        _, err = p.communicate(timeout=30)
        assert time.monotonic() - t < 10
        assert p.returncode == code, err
        assert f"interrupted by {signal.Signals(sig).name}" in err, err
    finally:
        if p.poll() is None:
            p.kill()


# ---- 11. smaller refusals ----

@pytest.mark.parametrize("args,text", [
    (["--hook", "sdedit:IMG", "--steps", "10"], "i_start 10 (sdedit's default"),
    (["-b", "gaussian", "--class", "abc"], "gaussian backend: class must be an integer in 0..1, got 'abc'"),
    (["--class", "3,,4"], "--class '3,,4' has an empty item"),
    (["--seed", "-1"], "0..9223372036854775807"),
])
def test_small_refusals_name_what_to_do(tmp_path, args, text):
    img = tmp_path / "img.png"
    io.save_png(torch.rand(1, 28, 28), img)
    r = cli("sample", *[a.replace("IMG", str(img)) for a in args], "--out", tmp_path / "o")
    assert r.exit_code == 2 and text in r.output and "invalid literal" not in r.output, r.output
    assert not (tmp_path / "o").exists()
