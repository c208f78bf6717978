"""`diffkit ui` without a browser: every declared parameter gets a widget, the page's run is the
command line's, and a page cannot name a server file."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diffkit import registry
from diffkit.cli import app

gr = pytest.importorskip("gradio")

from diffkit import ui  # noqa: E402


def settings(tmp_path: Path) -> ui.Settings:
    return ui.Settings(tmp_path / "out", ui.default_choices())


def test_every_parameter_of_every_installed_technique_gets_a_widget(tmp_path):
    kinds = {"image": gr.Image, "sketch": gr.ImageEditor, "mask": gr.ImageEditor, "path": gr.Dropdown}
    with gr.Blocks():
        for name, cls in registry.techniques().items():
            for p in cls.params:
                w = ui.widget(gr, name, p, ui._initial(p), settings(tmp_path))
                if p.kind:
                    assert isinstance(w, kinds[p.kind]), (name, p.name)
                elif p.choices:
                    assert isinstance(w, gr.Dropdown) and [c[0] for c in w.choices] == ["", *p.choices], (name, p.name)
                elif p.numeric and not p.multiple:
                    assert isinstance(w, gr.Number) and (w.minimum, w.maximum) == tuple(p.range), (name, p.name)
                else:
                    assert isinstance(w, (gr.Textbox, gr.Checkbox)), (name, p.name)
                assert p.help in (getattr(w, "info", None) or w.label), (name, p.name)
    assert registry.techniques()["inpaint"].params[1].kind == "mask"


def test_the_page_spec_is_the_command_lines():
    assert ui.hook_spec("cfg", {"scale": 5.0, "lo": 0.0, "hi": 1.0}) == "cfg:scale=5"
    assert ui.hook_spec("anagram", {"prompt": ["7"], "view": ["rot180"]}) == "anagram:prompt=7,view=rot180"
    assert ui.hook_spec("hybrid", {"prompt": "1", "kernel": 33, "sigma": 2.5, "fixed": True}) == \
        "hybrid:prompt=1,sigma=2.5,fixed=true"
    assert ui.labels_of("3, 7", "class") == {"classes": ["3", "7"]}
    assert ui.labels_of("a fox\n\nan owl\n", "prompt") == {"prompts": ["a fox", "an owl"]}


def run(tmp_path, stack, **kw):
    args = dict(backend="mnist", options={}, labels_text="3", stack=stack, seed=0, num=1, steps=2, sampler="ddim")
    args.update(kw)
    return list(ui.run_page(settings(tmp_path), tmp_path / "session", **args))


def test_a_page_cannot_name_a_server_file(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"x")
    with pytest.raises(ui.PageError, match="uploaded or drawn"):
        run(tmp_path, [{"name": "sdedit", "values": {"image": str(secret), "i_start": 1}}])
    with pytest.raises(ui.PageError, match="not one this server offers"):
        run(tmp_path, [{"name": "autoguide", "values": {"scale": 2.0, "model": "/etc"}}])
    with pytest.raises(ui.PageError, match="not one this server offers"):
        run(tmp_path, [], options={"checkpoint": "/etc"})
    assert not list((tmp_path / "out").glob("run-*"))


def test_bad_input_is_a_page_error_naming_it(tmp_path):
    with pytest.raises(ui.PageError, match="technique 'hybrid': missing required parameter 'prompt'"):
        run(tmp_path, [{"name": "hybrid", "values": {"kernel": 33}}])
    with pytest.raises(ui.PageError, match="class must be a digit"):
        run(tmp_path, [], labels_text="12")


def test_a_run_writes_its_folder_zip_and_command(tmp_path):
    steps = run(tmp_path, [{"name": "cfg", "values": {"scale": 3.0}}], num=2)
    status, gallery, _, cmd, archive = steps[-1]
    folder = Path(status.split(" samples in ", 1)[1])
    assert cmd.split("--out ")[1].strip() == folder.name  # the command writes the same run where it is run
    assert status.startswith("done: 2 samples") and len(gallery) == 2 and Path(archive).is_file()
    assert (folder / "command.txt").read_text().strip() == cmd and "--technique cfg:scale=3" in cmd
    assert [s[0] for s in steps[:-1]][0].startswith("sampling 2 samples")


def test_cli_ui_refuses_bad_options_and_says_how_to_install(monkeypatch):
    r = CliRunner().invoke(app, ["ui", "--port", "0"])
    assert r.exit_code == 2 and "--port" in r.output
    import builtins

    real = builtins.__import__

    def no_gradio(name, *a, **k):
        if name == "gradio":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    r = CliRunner().invoke(app, ["ui"])
    assert r.exit_code == 2 and "pip install -e '.[ui]'" in r.output


def test_a_missing_model_is_a_page_error(tmp_path):
    gone = str(tmp_path / "no-such-checkpoint")
    s = ui.Settings(tmp_path / "out", ui.default_choices([gone]))
    with pytest.raises(ui.PageError, match="no-such-checkpoint"):
        list(ui.run_page(s, tmp_path / "session", "mnist", {"checkpoint": gone}, "3", [], 0, 1, 2, "ddim"))


def test_an_if_run_from_the_page_equals_its_command(tmp_path, tiny_if):
    """Both IF stages through the page (prompts, the allowed model folders), then the shown command."""
    from diffkit.cli import app as cli_app

    f1, f2 = tiny_if
    s = ui.Settings(tmp_path / "out", ui.default_choices([str(f1), str(f2)]))
    steps = list(ui.run_page(s, tmp_path / "session", "if", {"model": str(f1), "upscaler": str(f2), "device": "cpu"},
                             "a red fox\nan owl", [{"name": "cfg", "values": {"scale": 4.0}}], 1, 1, 3, "dpmpp_2m"))
    status, gallery, _, cmd, _ = steps[-1]
    assert status.startswith("done: 2 samples") and [c for _, c in gallery] == ["a red fox · seed 1", "an owl · seed 2"]
    assert any(st[0].startswith("stage 2, step") for st in steps), [st[0] for st in steps]
    ui_out = Path(status.split(" samples in ", 1)[1])
    import shlex

    args = shlex.split(cmd)
    args[args.index("--out") + 1] = str(tmp_path / "cli")
    r = CliRunner().invoke(cli_app, args[1:])
    assert r.exit_code == 0, r.output
    for name in ("sample-000.png", "sample-001.png", "final.safetensors"):
        assert (tmp_path / "cli" / name).read_bytes() == (ui_out / name).read_bytes(), name


def test_a_request_beyond_the_servers_cap_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    from diffkit import api

    monkeypatch.setattr(api, "load_backend", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(ui.PageError, match=r"10,000 samples asked \(5,000 labels x 2\); this server makes at most 256"):
        run(tmp_path, [], labels_text="3," * 5000, num=2)
    s = ui.Settings(tmp_path / "out", ui.default_choices(), max_samples=3)
    with pytest.raises(ui.PageError, match="at most 3 a run"):
        list(ui.run_page(s, tmp_path / "session", "mnist", {}, "3,4", [], 0, 2, 2, "ddim"))
    assert not list((tmp_path / "out").glob("run-*"))


def test_a_request_is_written_a_batch_at_a_time_as_the_command_line_writes_it(tmp_path, monkeypatch):
    """Memory holds one batch (ui.BATCH samples), whatever the request; the folder is the CLI's bytes."""
    from diffkit.folder import RunFolder

    monkeypatch.setattr(ui, "BATCH", 4)
    written = []
    real = RunFolder.write_batch
    monkeypatch.setattr(RunFolder, "write_batch", lambda self, k, res: (written.append(len(res.images)),
                                                                         real(self, k, res))[1])
    steps = run(tmp_path, [{"name": "cfg", "values": {"scale": 3.0}}], labels_text="3,5", num=5)
    assert written == [4, 4, 2]
    status, gallery, _, cmd, _ = steps[-1]
    folder = Path(status.split(" samples in ", 1)[1])
    assert len(gallery) == 10 and any(st[0].startswith("batch 3/3") for st in steps)
    import shlex

    args = shlex.split(cmd)
    args[args.index("--out") + 1] = str(tmp_path / "cli")
    r = CliRunner().invoke(app, args[1:])
    assert r.exit_code == 0, r.output
    for name in ["final.safetensors", "grid.png"] + [f"sample-{i:03d}.png" for i in range(10)]:
        assert (tmp_path / "cli" / name).read_bytes() == (folder / name).read_bytes(), name


def test_ui_warns_when_others_can_reach_it_and_passes_the_login(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(ui, "launch", lambda settings, host, port, share, auth=None: calls.append((host, share, auth)))
    r = CliRunner().invoke(app, ["ui", "--host", "0.0.0.0", "--out", str(tmp_path)])
    assert r.exit_code == 0 and "warning: --host 0.0.0.0 lets other machines reach it" in r.output, r.output
    assert "add --auth USER:PASS" in r.output and calls[-1] == ("0.0.0.0", False, None)
    r = CliRunner().invoke(app, ["ui", "--host", "0.0.0.0", "--auth", "ada:secret", "--out", str(tmp_path)])
    assert "it asks for the --auth login" in r.output and calls[-1] == ("0.0.0.0", False, ("ada", "secret"))
    r = CliRunner().invoke(app, ["ui", "--out", str(tmp_path)])
    assert "warning" not in r.output and calls[-1] == ("127.0.0.1", False, None)
    r = CliRunner().invoke(app, ["ui", "--auth", "nopass", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--auth must be USER:PASS" in r.output


def test_steps_0_from_the_page_means_the_backends_own(tmp_path):
    """The page's steps box holds 0 for "the backend's default" (Gradio 6 sends an empty box as 0)."""
    steps = run(tmp_path, [], backend="gaussian", labels_text="1", steps=0, sampler=None)
    status, _, _, cmd, _ = steps[-1]
    assert status.startswith("done: 1 samples") and "--steps" not in cmd
    assert steps[0][0] == "sampling 1 samples, 300 steps", steps[0][0]  # the backend's default: stride 1 of 300


def test_two_pages_runs_interleaved_step_by_step_each_equal_their_lone_run(tmp_path):
    """The UI serves --max-runs runs at once (Gradio's queue, threads): two pages' runs, advanced in
    turn, each write exactly the files they write alone (no shared hook registry, no mixed state)."""
    first = dict(stack=[{"name": "cfg", "values": {"scale": 3.0}}], labels_text="3", num=2, seed=0)
    second = dict(stack=[{"name": "cfg", "values": {"scale": 2.0}}], labels_text="5", num=2, seed=4)  # cfg twice

    def page(where, kw):
        args = dict(backend="mnist", options={}, steps=4, sampler="ddim")
        args.update(kw)
        return ui.run_page(settings(where), where / "session", **args)

    def folder(steps):
        return Path(steps[-1][0].split(" samples in ", 1)[1])

    alone = [folder(list(page(tmp_path / f"alone{i}", kw))) for i, kw in enumerate((first, second))]
    a, b = page(tmp_path / "a", first), page(tmp_path / "b", second)
    got_a, got_b = [], []
    for sa, sb in zip(a, b):
        got_a.append(sa), got_b.append(sb)
    got_a += list(a)
    got_b += list(b)
    for lone, steps in zip(alone, (got_a, got_b)):
        for name in ("final.safetensors", "sample-000.png", "sample-001.png"):
            assert (folder(steps) / name).read_bytes() == (lone / name).read_bytes(), name
    assert (alone[0] / "final.safetensors").read_bytes() != (alone[1] / "final.safetensors").read_bytes()


def test_ui_serves_max_runs_at_once(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(ui, "launch", lambda settings, *a, **k: seen.update(settings=settings))
    r = CliRunner().invoke(app, ["ui", "--out", str(tmp_path), "--max-runs", "3"])
    assert r.exit_code == 0, r.output
    assert seen["settings"].max_runs == 3 and "3 runs at once" in r.output
    assert CliRunner().invoke(app, ["ui", "--out", str(tmp_path), "--max-runs", "0"]).exit_code == 2


def test_a_stopped_run_keeps_its_batches_and_resumes_from_the_page_to_the_same_bytes(tmp_path, monkeypatch):
    """Stop after the first of two batches (the page closes the run's generator): the batch is kept, the
    run is offered for resume, and resuming it writes what an uninterrupted run writes."""
    monkeypatch.setattr(ui, "BATCH", 2)
    s = settings(tmp_path)
    args = dict(backend="mnist", options={}, labels_text="3, 8", stack=[{"name": "cfg", "values": {"scale": 3.0}}],
                seed=4, num=2, steps=3, sampler="ddim")
    whole = list(ui.run_page(s, tmp_path / "session", **args))
    done = Path(whole[-1][0].split(" samples in ", 1)[1])
    stop = threading.Event()  # what Stop raises
    said = []
    for status, *_ in ui.run_page(s, tmp_path / "session", **args, stop=stop):
        said.append(status)
        if status.startswith("batch 2/2"):
            stop.set()
    assert said[-1] == ui.STOPPED and not any(t.startswith("batch") for t in said[said.index("batch 2/2, step 1 of 3") + 1:])
    [name] = ui.interrupted_runs(s)
    resumed = list(ui.resume_page(s, name))
    assert resumed[0][0] == "sampling 2 samples, 3 steps (2 were done)", resumed[0][0]
    status, gallery, _, cmd, archive = resumed[-1]
    assert status.startswith("done: 4 samples") and len(gallery) == 4 and Path(archive).is_file()
    folder = s.out / name
    assert cmd == whole[-1][3].replace(done.name, name) and (folder / "command.txt").read_text().strip() == cmd
    for f in ("sample-000.png", "sample-003.png", "final.safetensors"):
        assert (folder / f).read_bytes() == (done / f).read_bytes(), f
    assert ui.interrupted_runs(s) == []
    with pytest.raises(ui.PageError, match="not an interrupted run of this server"):
        list(ui.resume_page(s, "../../etc"))


def test_a_stopped_run_with_no_finished_batch_leaves_nothing(tmp_path):
    s = settings(tmp_path)
    gen = ui.run_page(s, tmp_path / "session", "mnist", {}, "3", [], 0, 1, 5, "ddim")
    next(gen)
    next(gen)
    gen.close()  # the server let go of the run (a closed page)
    assert list(s.out.glob("run-*")) == [] and ui.interrupted_runs(s) == []
    stop = threading.Event()  # Stop: the same, and the run's last word says so
    gen = ui.run_page(s, tmp_path / "session", "mnist", {}, "3", [], 0, 1, 12, "ddim", stop=stop)
    next(gen)
    stop.set()
    assert [status for status, *_ in gen] == [ui.STOPPED]
    assert list(s.out.glob("run-*")) == [] and ui.interrupted_runs(s) == []


def test_stop_raises_the_flags_of_its_own_pages_runs_and_a_finished_run_takes_its_flag_away():
    stops = ui.Stops()
    mine, queued, theirs = stops.ask("page-a"), stops.ask("page-a"), stops.ask("page-b")
    assert stops.stop("page-a") == 2
    assert stops.flag(mine).is_set() and stops.flag(queued).is_set() and not stops.flag(theirs).is_set()
    for t in (mine, queued, theirs):
        stops.done(t)
    assert stops.flags == {} and stops.stop("page-a") == 0 and not stops.flag(mine).is_set()


def test_a_backends_declared_options_reach_it_from_the_page(tmp_path):
    s = settings(tmp_path)
    out = list(ui.run_page(s, tmp_path / "session", "gaussian", {"means": "0.1,0.9", "std": 0.15}, "0", [], 0, 1, 3,
                           "ddim"))
    status, _, _, cmd, _ = out[-1]
    assert "--backend-option means=0.1,0.9" in cmd and "std" not in cmd  # the default is left out, as for hooks
    folder = Path(status.split(" samples in ", 1)[1])
    import json

    assert json.loads((folder / "run.json").read_text())["request"]["backend_options"] == {"means": "0.1,0.9"}
    with pytest.raises(ui.PageError, match="option 'std' must be a finite number"):
        list(ui.run_page(s, tmp_path / "session", "gaussian", {"std": 99.0}, "0", [], 0, 1, 3, "ddim"))
