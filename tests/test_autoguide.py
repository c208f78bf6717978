"""Autoguidance: a second model in the step, one batched call a model, composing like every technique."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit.api import Run
from diffkit.cli import app
from diffkit.mnist import checkpoint
from diffkit.mnist.model import UNet
from diffkit.mnist.train import TrainConfig, model_config


def make_ckpt(folder, hidden, seed, conditioning="class", objective="ddpm"):
    torch.manual_seed(seed)
    cond = conditioning if objective == "ddpm" else None
    cfg = TrainConfig(objective=objective, conditioning=cond, hidden=hidden, epochs=1).resolved()
    checkpoint.save(folder, UNet(hidden, cfg.conditioning if objective == "ddpm" else "none").eval(),
                    model_config(cfg))
    return folder


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ag")
    return {"main": make_ckpt(d / "main", 8, 0), "weak": make_ckpt(d / "weak", 4, 1),
            "time": make_ckpt(d / "time", 4, 2, "time"), "denoise": make_ckpt(d / "denoise", 4, 3, objective="denoise")}


def run(ckpts, hooks, **kw):
    r = Run("mnist", backend_options={"checkpoint": str(ckpts["main"])}, hooks=hooks,
            **({"classes": [3, 5], "steps": 4, "seed": 2} | kw))
    for _ in r.steps():
        pass
    return r


def test_scale_one_is_the_main_model_alone_without_a_weak_call(ckpts):
    plain, ag = run(ckpts, []), run(ckpts, [f"autoguide:1,model={ckpts['weak']}"])
    assert torch.equal(plain.result.x, ag.result.x)
    assert ag.sampler.stats == plain.sampler.stats == {"evaluations": 4, "rows": 8}


def test_a_weak_model_equal_to_the_main_one_gives_the_main_model_exactly(ckpts):
    for outer in ([], ["cfg:3"], ["anagram:7,view=flip_v"], ["hybrid:7"]):
        plain = run(ckpts, outer).result.x
        same = run(ckpts, outer + [f"autoguide:4,model={ckpts['main']}"]).result.x
        assert torch.equal(plain, same), outer


def test_the_estimate_is_weak_plus_scale_times_main_minus_weak(ckpts):
    """One step by hand from the two models' own predictions."""
    from diffkit.backends.mnist import MnistBackend

    main, weak = MnistBackend(str(ckpts["main"])), MnistBackend(str(ckpts["weak"]))
    r = Run(main, classes=[3, 5], hooks=[f"autoguide:2.5,model={ckpts['weak']}"], steps=4, seed=2)
    states = list(r.steps())
    x = torch.cat([torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(s)) for s in (2, 3)])
    t, c = torch.full((2,), r.timesteps[0]), main.encode([3, 5])
    e_m, e_w = main.predict(x, t, c), weak.predict(x, t, c)
    assert torch.allclose(states[0].eps, e_w + 2.5 * (e_m - e_w), atol=1e-5)
    assert not torch.allclose(states[0].eps, e_m + 2.5 * (e_w - e_m), atol=1e-3)  # the order matters


def test_two_models_are_two_calls_a_step_however_many_branches(ckpts):
    r = run(ckpts, ["cfg:2", "anagram:7,view=flip_v", f"autoguide:2,model={ckpts['weak']}"])
    # per step: main model 2 samples x (cond, uncond) x 2 views = 8 rows; the weak model the same 8
    assert r.sampler.stats == {"evaluations": 8, "rows": 64}
    heun = run(ckpts, [f"autoguide:2,model={ckpts['weak']}"], sampler="heun")
    assert heun.sampler.stats["evaluations"] == 2 * (2 * 4 - 1)  # 2 models x 7 evaluations


def test_the_interval_leaves_the_weak_model_out_elsewhere(ckpts):
    r = run(ckpts, [f"autoguide:2,model={ckpts['weak']},lo=0.5,hi=1"], steps=4)
    # timesteps 225, 150, 75, 0 of T=300: only 225 and 150 are in [150, 300]
    assert r.timesteps == [225, 150, 75, 0]
    assert r.sampler.stats["evaluations"] == 4 + 2


def test_composes_with_inpaint_sdedit_and_samplers_by_their_laws(ckpts, tmp_path):
    from diffkit import io

    io.save_png(torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0)), tmp_path / "img.png")
    io.save_png(torch.ones(1, 28, 28), tmp_path / "white.png")
    ag = f"autoguide:2,model={ckpts['weak']}"
    for sampler in ("ddpm", "dpmpp_2m", "euler_ancestral"):
        base = run(ckpts, [ag], sampler=sampler).result.x
        white = run(ckpts, [ag, f"inpaint:{tmp_path / 'img.png'},{tmp_path / 'white.png'}"], sampler=sampler)
        sd0 = run(ckpts, [ag, f"sdedit:{tmp_path / 'img.png'},i_start=0"], sampler=sampler)
        assert torch.equal(base, white.result.x) and torch.equal(base, sd0.result.x), sampler


runner = CliRunner()


@pytest.mark.parametrize("spec, words", [
    ("autoguide:2,model={missing}", ["model=", "no MNIST checkpoint"]),
    ("autoguide:2,model={time}", ["conditioning 'time'", "main model has 'class'"]),
    ("autoguide:2,model={denoise}", ["objective 'denoise'"]),
    ("autoguide:2,lo=0.8,hi=0.2", ["interval", "empty"]),
    ("autoguide:2,lo=1.5", ["'lo'", "0..1"]),
])
def test_bad_weak_models_and_intervals_exit_2_naming_the_parameter(ckpts, tmp_path, spec, words):
    spec = spec.format(missing=tmp_path / "nope", **{k: str(v) for k, v in ckpts.items()})
    out = tmp_path / "out"
    r = runner.invoke(app, ["sample", "--checkpoint", str(ckpts["main"]), "--class", "3", "--steps", "2",
                            "--hook", spec, "--out", str(out)])
    assert r.exit_code == 2, r.output
    for w in words:
        assert w in r.output, (w, r.output)
    assert not out.exists()


def test_autoguide_is_refused_on_a_backend_without_a_weak_model():
    with pytest.raises(ValueError, match="backend 'gaussian' has no weak model"):
        diffkit.sample("gaussian", classes=[0], hooks=["autoguide:2"])


def test_shipped_weak_model_makes_autoguide_work_offline(tmp_path):
    assert (checkpoint.SHIPPED_WEAK / "model.safetensors").is_file()
    r = runner.invoke(app, ["sample", "--class", "3", "--steps", "5", "--hook", "autoguide:2",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output


def test_if_autoguide_with_a_weak_stage_i(tiny_if, tmp_path_factory):
    """A second tiny stage I as the weak model: stage I guided, stage II as without it; the same weights as
    weak give the plain run exactly; a weak stage of another size is refused."""
    import tiny_if as build

    from diffkit.backends.deepfloyd import load

    f1, f2 = tiny_if
    other = tmp_path_factory.mktemp("ifweak")
    w1, _ = build.build(other)
    kw = dict(prompts=["a dog"], seed=1, steps=3)
    plain = diffkit.sample(load(model=str(f1), upscaler=str(f2)), hooks=["cfg:4"], **kw)
    same = diffkit.sample(load(model=str(f1), upscaler=str(f2)), hooks=["cfg:4", f"autoguide:3,model={f1}"], **kw)
    assert torch.equal(plain.x, same.x)
    # a differently seeded tiny stage I (same shapes) as the weak model changes stage I
    import safetensors.torch as st

    w = st.load_file(w1 / "unet" / "diffusion_pytorch_model.safetensors")
    st.save_file({k: v + 0.01 * torch.randn_like(v) for k, v in w.items()},
                 w1 / "unet" / "diffusion_pytorch_model.safetensors")
    guided = diffkit.sample(load(model=str(f1), upscaler=str(f2)), hooks=["cfg:4", f"autoguide:3,model={w1}"], **kw)
    assert not torch.allclose(guided.stage_x[0], plain.stage_x[0], atol=1e-3)
    small = tmp_path_factory.mktemp("ifsmall")
    s1, _ = build.build(small, size1=8, size2=16)
    with pytest.raises(ValueError, match="same size"):
        diffkit.sample(load(model=str(f1), upscaler="none"), hooks=[f"autoguide:3,model={s1}"], **kw)


def test_a_shipped_model_by_name_is_a_weak_model_and_equal_to_its_folder():
    """``model=mnist-class`` (the small default under the quality model) is the shipped folder itself."""
    kw = dict(classes=[3, 8], steps=4, seed=5, backend_options={"checkpoint": "mnist-h64"})
    by_name = diffkit.sample("mnist", hooks=["autoguide:2,model=mnist-class"], **kw).x
    by_path = diffkit.sample("mnist", hooks=[f"autoguide:2,model={checkpoint.SHIPPED}"], **kw).x
    main = diffkit.sample("mnist", **kw).x
    assert torch.equal(by_name, by_path) and not torch.allclose(by_name, main)
