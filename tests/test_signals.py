"""SIGINT and SIGTERM sent to a real `diffkit` process: --out stays exactly as it was, one line says so,
the exit status is 130 / 143; training keeps a loadable checkpoint that --resume finishes identically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from diffkit.mnist import checkpoint
from diffkit.mnist.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent


def start(args: list[str], cwd: Path, code: str | None = None) -> subprocess.Popen:
    """``python -m diffkit ARGS`` (or ``python -c CODE`` that ends by calling the CLI), stderr piped."""
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "diffkit", *args]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="80"))


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 120) -> list[str]:
    """Read stderr lines until one contains ``text``; fail if the process ends first."""
    lines, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            pytest.fail(f"process ended before {text!r}: {''.join(lines)}")
        lines.append(line)
        if text in line:
            return lines
    pytest.fail(f"no {text!r} within {timeout} s")


def finish(proc: subprocess.Popen, before: list[str]) -> tuple[int, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(before) + err


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("extra,sig,code", [
    ([], signal.SIGINT, 130),
    (["--save-every", "10"], signal.SIGTERM, 143),
    (["--sweep", "seed=0,1"], signal.SIGTERM, 143),
    (["--sweep", "scale=2,3"], signal.SIGINT, 130),
], ids=["plain-SIGINT", "frames-SIGTERM", "sweep-seed-SIGTERM", "sweep-scale-SIGINT"])
def test_a_signal_while_sampling_leaves_out_as_it_was(tmp_path, tiny_mnist_ckpt, extra, sig, code):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier file")
    before, parent_before = listing(out), listing(tmp_path)
    proc = start(["sample", "--checkpoint", str(tiny_mnist_ckpt), "--class", "1", "--num", "50", "--hook", "cfg:3",
                  "--out", str(out), *extra], tmp_path)
    seen = wait_for(proc, "sampling 50 samples")
    time.sleep(0.5)
    proc.send_signal(sig)
    rc, err = finish(proc, seen)
    assert rc == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert lines == [f"interrupted by {sig.name}: nothing was written to {out}"], err
    assert listing(out) == before and listing(tmp_path) == parent_before  # no temp folder left either
    assert (out / "keep.txt").read_text() == "an earlier file"


def test_a_signal_before_out_exists_leaves_no_folder(tmp_path, tiny_mnist_ckpt):
    out = tmp_path / "new" / "deeper"
    proc = start(["sample", "--checkpoint", str(tiny_mnist_ckpt), "--num", "50", "--class", "2", "--out", str(out)],
                 tmp_path)
    seen = wait_for(proc, "sampling")
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc, seen)
    assert rc == 143 and not (tmp_path / "new").exists(), err


def test_a_signal_during_the_final_renames_is_held_until_all_outputs_are_in(tmp_path, monkeypatch):
    """The commit itself: a SIGTERM that lands between two renames waits, so --out gets every file."""
    import diffkit
    from diffkit import interrupt, io
    from diffkit.backends.gaussian import GaussianBackend

    result = diffkit.sample(GaussianBackend(stride=30), classes=[0, 1], num=2)
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    real, calls = os.replace, []

    def replace_then_signal(src, dst):
        if Path(dst).parent == out:  # a rename into --out: the commit has begun
            calls.append(dst)
            if len(calls) == 1:
                signal.raise_signal(signal.SIGTERM)
        return real(src, dst)

    old = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    interrupt.install()
    monkeypatch.setattr(io.os, "replace", replace_then_signal)
    try:
        with pytest.raises(interrupt.Interrupted) as e:
            diffkit.save(result, out)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    assert e.value.exit_code == 143 and len(calls) > 5
    names = set(os.listdir(out))
    assert {"keep.txt", "grid.png", "run.json", "final.safetensors", "sample-003.png"} <= names
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


# ---- training ----

SMALL = dict(objective="ddpm", conditioning="class", hidden=8, epochs=3, subset=2048, batch_size=128)
TRAIN_ARGS = ["train", "mnist", "--objective", "ddpm", "--conditioning", "class", "--hidden", "8", "--epochs", "3",
              "--subset", "2048", "--batch-size", "128"]


@pytest.fixture(scope="module")
def uninterrupted(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "a"
    for _ in train(TrainConfig(**SMALL), out, mnist_dir):
        pass
    return checkpoint.load_model(out / "checkpoint")[0].state_dict()


def resume_and_compare(run: Path, mnist_dir: Path, reference: dict) -> None:
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    done = config["training"]["epochs_done"]
    assert 1 <= done <= 3
    checkpoint.load_model(run / "checkpoint")  # loadable as it was left
    for _ in train(TrainConfig(**SMALL), run, mnist_dir, resume=True):
        pass
    final = checkpoint.load_model(run / "checkpoint")[0].state_dict()
    assert all(torch.equal(final[k], reference[k]) for k in reference)
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp checkpoint folders


def test_sigterm_between_checkpoints_then_resume_gives_the_same_weights(tmp_path, mnist_dir, uninterrupted):
    run = tmp_path / "r"
    proc = start([*TRAIN_ARGS, "--out", str(run), "--data", str(mnist_dir)], tmp_path)
    seen = wait_for(proc, "epoch 1: mean loss")
    time.sleep(0.2)  # into epoch 2
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc, seen)
    assert rc == 143, err
    assert f"interrupted by SIGTERM: the last finished epoch's checkpoint in {run / 'checkpoint'} is intact" in err
    resume_and_compare(run, mnist_dir, uninterrupted)


def test_sigterm_during_a_checkpoint_write_completes_it_then_resume_gives_the_same_weights(tmp_path, mnist_dir,
                                                                                             uninterrupted):
    # The signal is raised from inside the second checkpoint's write, after its weights file is begun.
    code = textwrap.dedent("""
        import os, signal, sys
        from diffkit.mnist import checkpoint
        from diffkit.cli import main
        real, n = checkpoint.save_file, []
        def save_file(*a, **k):
            n.append(1)
            if len(n) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(*a, **k)
        checkpoint.save_file = save_file
        sys.argv = ["diffkit", *sys.argv[1:]]
        main()
    """)
    run = tmp_path / "r"
    proc = start([*TRAIN_ARGS, "--out", str(run), "--data", str(mnist_dir)], tmp_path, code=code)
    rc, err = finish(proc, [])
    assert rc == 143, err
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    assert config["training"]["epochs_done"] == 2  # the write that was cut by the signal finished
    assert len(json.loads((run / "loss.json").read_text())["loss"]) == 2 * 16
    resume_and_compare(run, mnist_dir, uninterrupted)
