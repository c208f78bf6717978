"""One typed request (issue 35, points 1 and 2): every frontend builds a RunRequest, it is checked once,
it round-trips through run.json without loss, and `diffkit sample --from RUN/run.json` repeats a run made
by the command line, the Python API, the UI or a sweep to the same bytes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import diffkit
from diffkit import api
from diffkit.cli import app
from diffkit.request import SEED_MAX, RequestError, RunRequest

runner = CliRunner()
QUICK = ["-b", "gaussian", "--steps", "3"]


def files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip}


def picture(path: Path) -> Path:
    img = Image.new("RGB", (16, 16))
    img.putdata([((13 * i) % 256, (5 * i) % 256, (29 * i) % 256) for i in range(256)])
    img.save(path)
    return path


def sample(*args) -> None:
    r = runner.invoke(app, ["sample", *map(str, args)])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("make", [
    lambda img: RunRequest(),
    lambda img: RunRequest(backend="gaussian", labels=("0", "1"), num=2, seed=7, techniques=("cfg:3",),
                           rule="ddim:eta=0.5", steps=4, options={"std": "0.2"}),
    lambda img: RunRequest(backend="mnist", labels=(3,), techniques=("cfg:2", "anagram:8,view=flip_v"),
                           timesteps=(200, 100, 0), i_start=1, save_every=1, options={"checkpoint": "mnist-class"}),
    lambda img: RunRequest(backend="mnist", labels=(5,), techniques=(f"sdedit:image={img},strength=0.5",),
                           steps=6).hash_inputs(),
])
def test_a_request_round_trips_through_run_json_without_loss(make, tmp_path):
    req = make(picture(tmp_path / "a.png"))
    text = json.dumps(req.to_json())
    again = RunRequest.from_json(json.loads(text))
    assert again.to_json() == req.to_json()
    assert json.dumps(again.to_json()) == text
    assert [t.args for t in again.techniques] == [t.args for t in req.techniques]


def test_a_request_is_frozen_and_a_change_is_checked_as_a_new_one():
    req = RunRequest(backend="gaussian", labels=("0",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.seed = 3
    with pytest.raises(RequestError, match="seed must be an integer in 0..9223372036854775807"):
        req.replace(seed=-1)


@pytest.mark.parametrize("fields,text", [
    ({"seed": SEED_MAX + 1}, "seed must be an integer in 0..9223372036854775807"),
    ({"seed": SEED_MAX, "num": 2}, "seed + number of samples must be"),
    ({"num": 0}, "num must be an integer in 1..100000"),
    ({"steps": 3, "timesteps": (20, 10)}, "steps=3 contradicts the 2 timesteps"),
    ({"timesteps": (10, 20)}, "timesteps must be strictly decreasing"),
    ({"labels": ()}, "labels must be a non-empty list"),
    ({"labels": "3"}, "labels must be a non-empty list"),
    ({"max_branches": 0}, "max_branches must be an integer in 1..1073741824"),
    ({"options": {"std": "100"}}, "option 'std' must be a finite number in 0.01..10"),
    ({"options": {"nope": "1"}}, "takes no option nope"),
    ({"techniques": ("cfg:nan",)}, "parameter 'scale'"),
    ({"rule": "ddim:eta=7"}, "eta"),
])
def test_every_bound_is_checked_where_the_request_is_made(fields, text):
    with pytest.raises(diffkit.api.UserError, match=text.replace("(", r"\(").replace("+", r"\+")):
        RunRequest(backend="gaussian", **fields)


def test_the_command_line_and_the_api_share_the_seed_bound(tmp_path):
    """The CLI's --seed range is the request's (2**62 in the CLI against 2**63-1 in the API, before)."""
    r = runner.invoke(app, ["sample", *QUICK, "--seed", str(SEED_MAX + 1), "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "0..9223372036854775807" in r.output
    r = runner.invoke(app, ["sample", *QUICK, "--seed", str(SEED_MAX), "-c", "0,1", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "seed + number of samples must be an integer in 0..9223372036854775807" in r.output
    with pytest.raises(api.UserError, match="seed must be an integer in 0..9223372036854775807"):
        diffkit.Run("gaussian", seed=SEED_MAX + 1)
    sample(*QUICK, "--seed", SEED_MAX, "--out", tmp_path / "c")  # the largest seed itself runs


def test_from_repeats_a_command_line_run_to_the_same_bytes(tmp_path):
    img = picture(tmp_path / "in.png")
    sample("-c", "3,7", "-n", "2", "-H", "cfg:2", "-H", f"sdedit:image={img},strength=0.6", "--sampler", "ddim",
           "--steps", "5", "--save-every", "2", "--checkpoint", "mnist-class", "--batch-size", "3",
           "--out", tmp_path / "a")
    sample("--from", tmp_path / "a" / "run.json", "--out", tmp_path / "b")
    sample("--from", tmp_path / "a", "--batch-size", "1", "--out", tmp_path / "c")  # a folder; any split
    assert files(tmp_path / "a") == files(tmp_path / "b") == files(tmp_path / "c")


def test_from_repeats_an_api_run_and_a_request_read_back_samples_the_same(tmp_path):
    result = diffkit.sample("gaussian", classes=[0, 1], num=2, hooks=["cfg:2"], sampler="euler", steps=4, seed=5)
    diffkit.save(result, tmp_path / "api")
    sample("--from", tmp_path / "api" / "run.json", "--out", tmp_path / "cli")
    assert files(tmp_path / "api") == files(tmp_path / "cli")
    recorded = json.loads((tmp_path / "api" / "run.json").read_text())["request"]
    again = api.sample(request=RunRequest.from_json(recorded))
    assert torch.equal(again.images, result.images) and again.labels == result.labels


def test_from_repeats_a_sweep_s_run(tmp_path):
    sample(*QUICK, "-c", "1", "-H", "cfg:1", "--sweep", "scale=1,4", "--out", tmp_path / "s")
    one = tmp_path / "s" / "scale-4"
    sample("--from", one / "run.json", "--out", tmp_path / "again")
    assert files(one, skip=("run.json",)) == files(tmp_path / "again", skip=("run.json",))
    swept, again = (json.loads((f / "run.json").read_text()) for f in (one, tmp_path / "again"))
    assert swept.pop("sweep") == {"scale": "4"} and swept == again
    assert again["request"]["hooks"][0]["args"]["scale"] == 4.0


def test_from_repeats_a_ui_run_with_an_uploaded_image(tmp_path):
    from diffkit import ui

    settings = ui.Settings(tmp_path / "server", ui.default_choices())
    session = tmp_path / "server" / ".uploads" / "s1"
    session.mkdir(parents=True)
    img = picture(session / "drawn.png")
    stack = [{"name": "cfg", "values": {"scale": 3.0}},
             {"name": "sdedit", "values": {"image": str(img), "strength": 0.5}}]
    *_, last = ui.run_page(settings, session, "mnist", {"checkpoint": "mnist-class"}, "2,5", stack, 4, 2, 6, "ddim")
    run = next(p for p in settings.out.glob("run-*") if p.is_dir())
    assert (run / "run.json").is_file() and last[4] is not None  # finished, zipped
    sample("--from", run / "run.json", "--out", tmp_path / "cli")
    assert files(run, skip=("command.txt", "drawn.png")) == files(tmp_path / "cli")


@pytest.mark.parametrize("args,text", [
    (["-c", "3"], "it takes no --class"),
    (["--steps", "9"], "it takes no --steps"),
    (["--checkpoint", "mnist-h64"], "it takes no --checkpoint"),
    (["-O", "device=cpu"], "it takes no --backend-option"),
])
def test_from_refuses_a_flag_that_would_change_the_run(tmp_path, args, text):
    sample(*QUICK, "--out", tmp_path / "a")
    r = runner.invoke(app, ["sample", "--from", str(tmp_path / "a"), *args, "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and text in r.output and not (tmp_path / "b").exists()


def test_from_refuses_a_record_it_cannot_honour_naming_the_field(tmp_path):
    sample(*QUICK, "-H", "cfg:2", "--out", tmp_path / "a")
    data = json.loads((tmp_path / "a" / "run.json").read_text())

    def refused(change, text):
        d = json.loads(json.dumps(data))
        change(d["request"])
        (tmp_path / "r.json").write_text(json.dumps(d))
        r = runner.invoke(app, ["sample", "--from", str(tmp_path / "r.json"), "--out", str(tmp_path / "b")])
        assert r.exit_code == 2 and text in " ".join(r.output.split()), r.output
        assert not (tmp_path / "b").exists()

    refused(lambda q: q.update(guidance_rescale=0.7), "has field 'guidance_rescale', which this diffkit does not know")
    refused(lambda q: q.pop("stride"), "lacks field 'stride'")
    refused(lambda q: q.update(backend="hidream"), "unknown backend 'hidream'")
    refused(lambda q: q["hooks"][0].update(name="nope"), "unknown technique 'nope'")
    refused(lambda q: q["hooks"][0]["args"].update(scale="x"), "parameter 'scale' expects float")
    refused(lambda q: q.update(seed=-3), "seed must be an integer")
    refused(lambda q: q.update(sampler={"spec": "warp_drive"}), "unknown rule 'warp_drive'")
    (tmp_path / "old.json").write_text(json.dumps({k: v for k, v in data.items() if k != "request"}))
    r = runner.invoke(app, ["sample", "--from", str(tmp_path / "old.json"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "records no request" in r.output
    r = runner.invoke(app, ["sample", "--from", str(tmp_path / "missing.json"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "missing.json" in r.output


def test_from_refuses_an_input_file_that_changed_since_it_was_recorded(tmp_path):
    img = picture(tmp_path / "in.png")
    sample("-c", "4", "-H", f"sdedit:image={img},strength=0.5", "--steps", "4", "--out", tmp_path / "a")
    Image.new("RGB", (16, 16), (9, 9, 9)).save(img)
    r = runner.invoke(app, ["sample", "--from", str(tmp_path / "a"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and f"{img} has changed since the run was recorded" in r.output
    assert not (tmp_path / "b").exists()


def test_resume_compares_the_typed_request(tmp_path):
    """An interrupted run's request.json is the request's JSON; a resume reads it back as a request."""
    job = api.FolderRun(tmp_path / "o", RunRequest(backend="gaussian", labels=("0", "1"), num=2, steps=2,
                                                   batch_size=2))
    steps = job.steps()
    for ev in steps:
        if ev.state is None:  # the first batch is written: stop here
            break
    steps.close()
    saved = json.loads((tmp_path / "o" / ".diffkit-partial" / "request.json").read_text())
    assert saved["request"] == job.run.request.to_json()
    again = api.FolderRun.resume_from(tmp_path / "o")
    assert again.run.request.to_json() == job.run.request.to_json() and len(again.todo) == 1
    again.run_all()
    whole = diffkit.sample("gaussian", classes=["0", "1"], num=2, steps=2)
    diffkit.save(whole, tmp_path / "whole")
    assert files(tmp_path / "o") == files(tmp_path / "whole")


def test_one_word_per_concept_and_the_old_names_still_work(tmp_path):
    """issue 35 point 5: a technique is --technique (diffkit techniques), a step rule --rule (diffkit
    rules); --hook, --sampler, `diffkit hooks`, `diffkit samplers` and hooks=/sampler= keep working."""
    sample(*QUICK, "-c", "0", "--technique", "cfg:2", "--rule", "ddim", "--out", tmp_path / "new")
    sample(*QUICK, "-c", "0", "--hook", "cfg:2", "--sampler", "ddim", "--out", tmp_path / "old")
    assert files(tmp_path / "new") == files(tmp_path / "old")
    for new, old in (("techniques", "hooks"), ("rules", "samplers")):
        a, b = runner.invoke(app, [new]), runner.invoke(app, [old])
        assert a.exit_code == b.exit_code == 0 and a.output == b.output and len(a.output) > 100
    help = runner.invoke(app, ["--help"]).output
    assert "techniques" in help and "rules" in help and " hooks " not in help and " samplers " not in help
    a = diffkit.sample("gaussian", classes=[0], techniques=["cfg:2"], rule="ddim", steps=3)
    b = diffkit.sample("gaussian", classes=[0], hooks=["cfg:2"], sampler="ddim", steps=3)
    assert torch.equal(a.x, b.x) and a.request.to_json() == b.request.to_json()
    with pytest.raises(TypeError, match="techniques= or its old name hooks="):
        RunRequest.of("gaussian", hooks=["cfg:2"], techniques=["cfg:3"])


def hostile(kind: str, d: Path) -> Path:
    """A file --from must refuse without reading it (or one it reads and refuses in one line)."""
    import os

    if kind == "device":
        return Path("/dev/zero")
    if kind == "pipe":
        os.mkfifo(d / "fifo")
        return d / "fifo"
    if kind == "sparse":
        with open(d / "big.json", "wb") as f:
            f.truncate(2 << 30)
        return d / "big.json"
    if kind == "junk":
        (d / "junk.json").write_bytes(bytes(range(256)) * 8)
        return d / "junk.json"
    (d / "folder").mkdir()
    return d / "folder"


@pytest.mark.parametrize("kind,text", [("device", "not a regular file"), ("pipe", "not a regular file"),
                                       ("sparse", "more than a run.json diffkit writes"),
                                       ("junk", "not a run.json diffkit wrote"),
                                       ("folder", "No such file or directory")])
def test_from_judges_the_file_before_reading_it(tmp_path, kind, text):
    """A device that never ends, a pipe nobody writes, a sparse 2 GB file: refused at once from stat, in
    bounded memory; junk and a folder without run.json: one clear line. Exit 2, nothing written."""
    import resource
    import time

    source = hostile(kind, tmp_path)
    before, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
    r = runner.invoke(app, ["sample", "--from", str(source), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and text in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert time.monotonic() - t0 < 10 and not (tmp_path / "o").exists()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KB: nothing of 2 GB was read
