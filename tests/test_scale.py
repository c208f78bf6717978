"""Large runs: batches, --resume and torchrun give the same bytes as one call in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit.cli import app
from conftest import interrupted
from diffkit.folder import partial_dir

runner = CliRunner()
# 10 samples of the shipped model, 10 steps: fast, and a real model whose kernels depend on the batch size
ARGS = ["sample", "--class", "3,7", "-n", "5", "--hook", "cfg:2", "--sampler", "dpmpp_2m", "--steps", "10"]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def visible(folder: Path) -> list[str]:
    """What a user sees in ``folder``: everything but the work folder of an unfinished run."""
    return sorted(n for n in os.listdir(folder) if n != partial_dir(folder).name) if folder.exists() else []


def cli(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    """The run in one batch (--batch-size 10) in this process, with frames."""
    out = tmp_path_factory.mktemp("ref") / "o"
    r = cli(*ARGS, "--save-every", "3", "--batch-size", "10", "--out", str(out))
    assert r.exit_code == 0, r.output
    return files(out)


# ---- one process, any batch size ----

def test_the_mnist_models_estimate_of_a_sample_does_not_depend_on_who_shares_its_call(threads):
    from diffkit.api import load_backend

    b = load_backend("mnist")
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(37, 1, 28, 28, generator=g), torch.randint(0, 300, (37,), generator=g)
    c = torch.nn.functional.one_hot(torch.arange(37) % 10, 10).float()
    with torch.inference_mode():
        whole = b.predict(x, t, c)
        for size in (1, 3, 5, 16, 20):
            parts = torch.cat([b.predict(x[i:i + size], t[i:i + size], c[i:i + size]) for i in range(0, 37, size)])
            assert torch.equal(parts, whole), size
        # the traced model (every CPU call's) gives the eager model's bytes
        assert isinstance(b._traces[False], torch.jit.ScriptFunction)
        eager = load_backend("mnist")
        eager._traced = lambda unconditional: eager.model
        assert torch.equal(eager.predict(x, t, c), whole)
        # and without the fixed-size calls it would (this CPU, these sizes): the test can fail
        raw = torch.cat([b._predict(x[i:i + 1], t[i:i + 1], c[i:i + 1]) for i in range(37)])
        assert not torch.equal(raw, b._predict(x, t, c))


@pytest.mark.parametrize("n", [1, 5, 16, 17, 32, 37])
def test_fixed_chunks_make_every_call_exactly_rows_long_and_keep_each_rows_value(n):
    from diffkit.fixed_rows import in_fixed_chunks

    calls = []

    def f(x, c):
        calls.append((x.shape[0], None if c is None else c.shape[0]))
        return x * 2 + (0 if c is None else c)
    x, c = torch.arange(n, dtype=torch.float64)[:, None], torch.full((n, 1), 0.5, dtype=torch.float64)
    out = in_fixed_chunks(f, 16, x, c)
    assert calls == [(16, 16)] * -(-n // 16)
    assert torch.equal(out, x * 2 + 0.5)
    calls.clear()
    assert torch.equal(in_fixed_chunks(f, 16, x, None), x * 2) and calls == [(16, None)] * -(-n // 16)


@pytest.mark.parametrize("hooks", [["cfg:2"], ["cfg:3", "anagram:1,view=flip_v"]], ids=["cfg", "cfg-anagram"])
def test_any_batch_size_gives_the_same_samples_as_one_batch(hooks):
    kw = dict(classes=[3, 7], num=3, hooks=hooks, sampler="ddim:eta=1", steps=8, seed=4)
    one = diffkit.sample("mnist", **kw)
    for size in (1, 4, 5):
        split = diffkit.sample("mnist", batch_size=size, **kw)
        assert torch.equal(split.x, one.x) and split.seeds == one.seeds and split.labels == one.labels, size
    # N single runs too
    for i, (label, seed) in enumerate(zip(one.labels, one.seeds)):
        alone = diffkit.sample("mnist", **dict(kw, classes=[label], num=1, seed=seed))
        assert torch.equal(alone.x[0], one.x[i])


@pytest.mark.parametrize("size", ["1", "3", "7"])
def test_the_folder_is_the_same_bytes_for_any_batch_size(tmp_path, reference, size):
    out = tmp_path / "o"
    r = cli(*ARGS, "--save-every", "3", "--batch-size", size, "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "batches of up to" in r.output
    assert files(out) == reference
    assert not partial_dir(out).exists()


def test_the_default_batch_size_matches_too(tmp_path, reference):
    out = tmp_path / "o"
    assert cli(*ARGS, "--save-every", "3", "--out", str(out)).exit_code == 0
    assert files(out) == reference


def test_final_safetensors_holds_every_batch_in_order(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "o"
    assert cli(*ARGS, "--batch-size", "3", "--out", str(out)).exit_code == 0
    saved = load_file(out / "final.safetensors")
    ref = diffkit.sample("mnist", classes=[3, 7], num=5, hooks=["cfg:2"], sampler="dpmpp_2m", steps=10)
    assert torch.equal(saved["x"], ref.x) and torch.equal(saved["stage1_images"], ref.images)
    meta = json.loads((out / "run.json").read_text())
    assert [s["seed"] for s in meta["samples"]] == list(range(10))
    assert [s["label"] for s in meta["samples"]] == ["3"] * 5 + ["7"] * 5
    assert meta["request"]["seed"] == 0 and meta["request"]["num"] == 5


def test_the_grid_shows_the_first_64_samples(tmp_path):
    from diffkit import io

    out = tmp_path / "o"
    r = cli("sample", "--class", "1", "-n", "70", "--steps", "2", "--sampler", "ddim", "--batch-size", "32",
            "--out", str(out))
    assert r.exit_code == 0, r.output
    grid = io.load_png(out / "grid.png")
    assert grid.shape == (1, 7 * 30 + 2, 10 * 30 + 2)  # 64 samples, 10 a row, 2-pixel padding
    assert torch.equal(grid[:, 2 + 6 * 30: 30 + 6 * 30, 2 + 3 * 30: 30 + 3 * 30], io.load_png(out / "sample-063.png"))
    assert (grid[:, 2 + 6 * 30:, 2 + 4 * 30:] == 1).all()  # nothing after the 64th
    assert len(list(out.glob("sample-*.png"))) == 70


# ---- resume ----

def test_resume_finishes_an_interrupted_run_with_the_same_bytes(tmp_path, reference):
    out = tmp_path / "o"
    interrupted(2, *ARGS, "--save-every", "3", "--batch-size", "3", "--out", str(out))
    assert visible(out) == [] and sorted(p.name for p in (partial_dir(out) / "parts").iterdir()) == [
        "batch-00000.safetensors", "batch-00001.safetensors"]
    r = cli(*ARGS, "--save-every", "3", "--batch-size", "3", "--out", str(out))
    assert r.exit_code == 2 and "--resume" in r.output and "interrupted run" in r.output
    r = cli(*ARGS, "--save-every", "3", "--batch-size", "5", "--out", str(out), "--resume")
    assert r.exit_code == 0, r.output
    assert "resuming: 2 of 4 batches" in r.output and "continuing with --batch-size 3" in r.output
    assert "sampling 4 samples" in r.output  # the 6 written samples were not sampled again
    assert files(out) == reference and not partial_dir(out).exists()
    r = cli(*ARGS, "--save-every", "3", "--out", str(out), "--resume")
    assert r.exit_code == 0 and "nothing to resume" in r.output


def test_resume_refuses_another_command_and_keeps_everything(tmp_path):
    out = tmp_path / "o"
    interrupted(1, *ARGS, "--batch-size", "4", "--out", str(out))
    before = files(partial_dir(out))
    r = cli(*ARGS, "--seed", "5", "--batch-size", "4", "--out", str(out), "--resume")
    assert r.exit_code == 2 and "another command" in r.output and 'seed: 0 there, 5 now' in r.output, r.output
    r = cli(*[a if a != "dpmpp_2m" else "euler" for a in ARGS], "--out", str(out), "--resume")
    assert r.exit_code == 2 and "sampler" in r.output
    assert files(partial_dir(out)) == before and visible(out) == []
    # a finished run of another command
    done = tmp_path / "done"
    assert cli(*ARGS, "--out", str(done)).exit_code == 0
    r = cli(*ARGS, "--hook", "cfg:3", "--out", str(done), "--resume")
    assert r.exit_code == 2 and "finished run of another command" in r.output


def test_overwrite_discards_an_interrupted_run(tmp_path, reference):
    out = tmp_path / "o"
    interrupted(1, *ARGS, "--hook", "cfg:4", "--batch-size", "4", "--out", str(out))
    assert partial_dir(out).exists()
    r = cli(*ARGS, "--save-every", "3", "--out", str(out), "--overwrite")
    assert r.exit_code == 0 and files(out) == reference and not partial_dir(out).exists()


def test_a_failure_after_some_batches_keeps_them_for_resume(tmp_path, reference, monkeypatch):
    from diffkit.backends.mnist import CHUNK_ROWS, MnistBackend

    out = tmp_path / "o"
    real, calls = MnistBackend._predict, []
    first_batch = 10 * -(-8 // CHUNK_ROWS["cpu"])  # 10 steps of 4 samples x 2 branches in fixed calls

    def nan_in_the_second_batch(self, x, t, c, **kw):
        calls.append(1)
        y = real(self, x, t, c, **kw)
        return y * float("nan") if len(calls) > first_batch else y

    monkeypatch.setattr(MnistBackend, "_predict", nan_in_the_second_batch)
    r = cli(*ARGS, "--save-every", "3", "--batch-size", "4", "--out", str(out))
    assert r.exit_code == 1 and "NaN" in r.output
    assert f"4 of 10 samples are kept in {partial_dir(out)}; continue with --resume" in r.output, r.output
    monkeypatch.setattr(MnistBackend, "_predict", real)
    assert cli(*ARGS, "--save-every", "3", "--batch-size", "4", "--out", str(out), "--resume").exit_code == 0
    assert files(out) == reference


@pytest.mark.parametrize("extra", [["--batch-size", "0"], ["--batch-size", "-3"], ["--sweep", "seed=0,1", "--resume"],
                                   ["--sweep", "seed=0,1", "--batch-size", "2"]])
def test_bad_batch_options_exit_2_and_write_nothing(tmp_path, extra):
    r = cli(*ARGS, *extra, "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert ("--batch-size" in r.output) or ("--sweep" in r.output), r.output
    assert os.listdir(tmp_path) == []


# ---- several processes ----

def torchrun(args: list[str], cwd: Path, nproc: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "diffkit", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, COLUMNS="200", **(env or {})))


def test_two_processes_write_the_same_bytes_as_one(tmp_path, reference):
    out = tmp_path / "o"
    p = torchrun([*ARGS, "--save-every", "3", "--batch-size", "3", "--out", str(out)], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "rank 0 of 2: sampling 6 samples" in p.stderr and "rank 1 of 2: sampling 4 samples" in p.stderr
    assert files(out) == reference


def test_two_nodes_through_torchruns_rendezvous_write_the_same_bytes_as_one(tmp_path, reference):
    """Two launchers, as on two machines (here both on localhost, one process each): c10d rendezvous, each
    rank local rank 0 of its node, one --out on a filesystem both see."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "diffkit-test",
           "-m", "diffkit", *ARGS, "--save-every", "3", "--batch-size", "3", "--out", str(out)]
    env = dict(os.environ, COLUMNS="200", OMP_NUM_THREADS="1")
    nodes = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    said = [n.communicate(timeout=600) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], said
    err = "".join(e for _, e in said)
    assert "rank 0 of 2: sampling 6 samples" in err and "rank 1 of 2: sampling 4 samples" in err
    assert files(out) == reference


def test_ranks_without_a_batch_just_finish(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["sample", "--class", "4", "--steps", "5", "--sampler", "ddim"]
    assert cli(*args, "--out", str(one)).exit_code == 0
    p = torchrun([*args, "--out", str(two)], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "rank 1 of 2: sampling 0 samples" in p.stderr
    assert files(two) == files(one)


def test_a_rank_that_fails_names_itself_and_the_finished_batches_stay(tmp_path, reference):
    out = tmp_path / "o"
    interrupted(1, *ARGS, "--save-every", "3", "--batch-size", "3", "--out", str(out))
    # batch 1 (samples 3-5) is rank 1's: a folder where its first PNG goes makes that write fail
    (partial_dir(out) / "sample-003.png").mkdir()
    p = torchrun([*ARGS, "--save-every", "3", "--batch-size", "3", "--out", str(out), "--resume"], tmp_path)
    assert p.returncode != 0
    assert "rank 1 of 2: cannot write the samples" in p.stderr, p.stderr
    assert visible(out) == [] and (partial_dir(out) / "parts" / "batch-00000.safetensors").is_file()
    (partial_dir(out) / "sample-003.png").rmdir()
    r = cli(*ARGS, "--save-every", "3", "--batch-size", "3", "--out", str(out), "--resume")
    assert r.exit_code == 0, r.output
    assert files(out) == reference


def test_a_world_without_a_rendezvous_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    p = subprocess.run([sys.executable, "-m", "diffkit", *ARGS, "--out", str(tmp_path / "o")], cwd=tmp_path,
                       capture_output=True, text=True, env=dict(env, WORLD_SIZE="2", RANK="0"), timeout=120)
    assert p.returncode == 2 and "MASTER_ADDR, MASTER_PORT are not set" in p.stderr and "torchrun" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "o").exists()


def test_more_processes_a_node_than_gpus_is_refused_before_any_rendezvous(monkeypatch):
    """Two ranks on a one-GPU node: a clear LaunchError (exit 2 in the CLI), not "invalid device ordinal"
    or nccl's "Duplicate GPU detected". (A GPU session ran it for real: docs/scale.md.)"""
    from diffkit import dist

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set_device reached"))
    env = dict(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT="1")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    said = r"processes on this node need 2 GPUs \(one each\), but this machine has 1: start at most 1 a node"
    with pytest.raises(dist.LaunchError, match=rf"rank 1 of 2: 2 {said} \(--nproc-per-node 1\)"):
        dist.init("cuda")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")  # rank 0 refuses too, instead of waiting for rank 1
    with pytest.raises(dist.LaunchError, match=rf"rank 0 of 2: 2 {said}"):
        dist.init(None)
    import torch.distributed as td

    class Store:
        def set_timeout(self, t):
            pass

    def refuse(backend, **kw):
        raise ValueError(f"stop here ({backend})")
    monkeypatch.setattr(td, "rendezvous", lambda *a, **k: iter([(Store(), 0, 2)]))
    monkeypatch.setattr(td, "init_process_group", refuse)
    with pytest.raises(dist.LaunchError, match=r"rendezvous at 127.0.0.1:1 failed within 60 s \(stop here \(gloo\)\)"):
        dist.init("cpu")  # --device cpu on a GPU machine: gloo, no GPU asked for


def test_eval_over_two_processes_reports_the_same_numbers(tmp_path, mnist_dir):
    args = ["eval", "mnist", "-n", "3", "--steps", "5", "--sampler", "ddim", "--data", str(mnist_dir),
            "--batch-size", "7"]
    one = cli(*args, "--out", str(tmp_path / "one.json"))
    assert one.exit_code == 0, one.output
    p = torchrun([*args, "--out", str(tmp_path / "two.json")], tmp_path)
    assert p.returncode == 0, p.stderr
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert a == b and a["model_calls_per_sample"] == 10


def test_eval_reports_the_same_for_any_batch_size(tmp_path, mnist_dir):
    args = ["eval", "mnist", "-n", "3", "--steps", "5", "--sampler", "ddim", "--data", str(mnist_dir)]
    reports = []
    for size in ("1", "30"):
        r = cli(*args, "--batch-size", size, "--out", str(tmp_path / f"{size}.json"))
        assert r.exit_code == 0, r.output
        reports.append(json.loads((tmp_path / f"{size}.json").read_text()))
    assert reports[0] == reports[1]


TRAIN = ["train", "mnist", "--conditioning", "class", "--hidden", "8", "--subset", "6400", "--batch-size", "32",
         "--threads", "1"]


def test_training_on_two_processes_checkpoints_resumes_and_learns(tmp_path, mnist_dir):
    """Stopped by a signal after its first checkpoint, the 2-process run resumes to the same weights."""
    import signal
    import time

    from diffkit.mnist import checkpoint

    args = [*TRAIN, "--data", str(mnist_dir), "--epochs", "3"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    p = torchrun([*args, "--out", str(whole)], tmp_path)
    assert p.returncode == 0, p.stderr
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "diffkit",
           *args, "--out", str(split)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 300
    while not (split / "checkpoint" / "config.json").is_file() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    done = json.loads((split / "checkpoint" / "config.json").read_text())["training"]["epochs_done"]
    assert proc.returncode != 0 and done < 3, err  # stopped part-way
    p = torchrun([*args, "--out", str(split), "--resume"], tmp_path)
    assert p.returncode == 0, p.stderr
    a, b = (checkpoint.load_model(f / "checkpoint")[0].state_dict() for f in (whole, split))
    assert all(torch.equal(a[k], b[k]) for k in a)
    loss = json.loads((whole / "loss.json").read_text())
    steps = loss["steps_per_epoch"]
    assert steps == 100 and len(loss["loss"]) == 300  # 6400 images / 2 processes / 32 a step
    assert json.loads((split / "loss.json").read_text()) == loss  # the record is the global (mean over ranks) one
    first, last = sum(loss["loss"][:steps]) / steps, sum(loss["loss"][-steps:]) / steps
    assert last < 0.6 * first, (first, last)
    training = json.loads((whole / "checkpoint" / "config.json").read_text())["training"]
    assert training["processes"] == 2 and training["effective_batch_size"] == 64
    # a resume on another number of processes is refused: it would change the effective batch
    in_process = [*TRAIN[:-2], "--data", str(mnist_dir)]  # without --threads: leave this process's count alone
    r = cli(*in_process, "--epochs", "4", "--out", str(split), "--resume")
    assert r.exit_code == 2 and "trained by 2 process(es), this is 1" in r.output


def test_if_runs_both_stages_batch_by_batch(tiny_if):
    """IF's UNet has no fixed-size calls (on a GPU cuDNN picks kernels by shape): batches agree within
    the IF tolerance, not bit for bit; each batch goes through both stages with its own prompts."""
    from conftest import IF_TOL

    f1, f2 = tiny_if
    kw = dict(prompts=["a red fox", "an owl"], num=2, hooks=["cfg:4"], steps=3, sampler="dpmpp_2m", seed=1,
              backend_options={"model": str(f1), "upscaler": str(f2), "device": "cpu"})
    one = diffkit.sample("if", **kw)
    split = diffkit.sample("if", batch_size=3, **kw)
    assert split.labels == one.labels == ["a red fox"] * 2 + ["an owl"] * 2 and split.seeds == [1, 2, 3, 4]
    assert split.images.shape == one.images.shape and len(split.stage_images) == 2
    assert (split.x - one.x).abs().max().item() < IF_TOL


def test_a_run_begun_before_a_parameter_was_added_resumes_as_the_same_command(tmp_path):
    """An interrupted anagram run whose recorded request predates anagram's space/last/levels/detail (as
    f0bb82b recorded it) resumes after the upgrade, and gives the bytes of an uninterrupted run; a real
    change of a recorded argument is still another command."""
    from diffkit.folder import partial_dir

    args = ["sample", "-c", "4", "-n", "4", "-H", "cfg:2", "-H", "anagram:8,view=flip_v", "--steps", "4",
            "--batch-size", "2"]
    whole = tmp_path / "whole"
    assert cli(*args, "--out", str(whole)).exit_code == 0
    out = tmp_path / "o"
    interrupted(1, *args, "--out", str(out))
    saved_path = partial_dir(out) / "request.json"
    saved = json.loads(saved_path.read_text())
    for hook in saved["request"]["hooks"]:
        if hook["name"] == "anagram":
            for added in ("space", "last", "levels", "detail"):
                del hook["args"][added]
    saved_path.write_text(json.dumps(saved))
    r = cli(*args, "--out", str(out), "--resume")
    assert r.exit_code == 0, r.output
    assert (out / "sample-003.png").read_bytes() == (whole / "sample-003.png").read_bytes()
    assert (out / "sample-000.png").read_bytes() == (whole / "sample-000.png").read_bytes()

    again = tmp_path / "again"
    interrupted(1, *args, "--out", str(again))
    saved_path = partial_dir(again) / "request.json"
    saved = json.loads(saved_path.read_text())
    saved["request"]["hooks"][1]["args"]["reduction"] = "alternate"  # recorded as begun with another value
    saved_path.write_text(json.dumps(saved))
    r = cli(*args, "--out", str(again), "--resume")
    assert r.exit_code == 2 and "another command" in r.output
