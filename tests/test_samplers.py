"""Samplers (step rules): each equals diffusers' scheduler driven by a plain loop, composes with every
technique, keeps a sample's bytes alone or in a batch, and refuses what it cannot do."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings, strategies as st
from typer.testing import CliRunner

import diffkit
from diffkit import io, registry, schedule
from diffkit.backends.gaussian import GaussianBackend
from diffkit.cli import app
from diffkit.rules import scheduler_config

BUILTIN = ["ddpm", "ddim", "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc", "deis"]
SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
              "euler_ancestral": "EulerAncestralDiscreteScheduler", "heun": "HeunDiscreteScheduler",
              "dpmpp_2m": "DPMSolverMultistepScheduler", "dpmpp_2m_sde": "DPMSolverMultistepScheduler",
              "uni_pc": "UniPCMultistepScheduler", "deis": "DEISMultistepScheduler"}
STOCHASTIC = ["ddpm", "euler_ancestral", "dpmpp_2m_sde", "ddim:eta=1"]
VARIANTS = BUILTIN + ["ddim:eta=0.5", "euler:karras=true", "heun:karras=true", "dpmpp_2m:karras=true",
                      "uni_pc:exponential=true", "diffusers:DPMSolverSinglestepScheduler,solver_order=3"]


def gaussian():
    return GaussianBackend(means=(0.2, 0.8), std=0.15)


def test_every_builtin_is_installed_under_comfyui_s_name():
    assert set(BUILTIN) | {"diffusers"} <= set(registry.samplers())
    for name, cls in SCHEDULERS.items():
        assert registry.samplers()[name].scheduler == cls


def hand_loop(backend, cls_name, overrides, steps, seed, label, step_kwargs=None):
    """The diffusers scheduler as diffusers' pipelines drive it: noise * init_noise_sigma, then
    scale_model_input, the model, step, for every entry of scheduler.timesteps. Noise channels only."""
    import diffusers

    s = getattr(diffusers, cls_name).from_config(scheduler_config(backend), **overrides)
    s.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, *backend.sample_shape), generator=g, dtype=backend.dtype) * s.init_noise_sigma
    cond = backend.encode([label])
    for t in s.timesteps:
        eps = backend.predict(s.scale_model_input(x, t), t[None], cond)[:, : x.shape[1]]
        x = s.step(eps, t, x, generator=g, **(step_kwargs or {})).prev_sample if "generator" in \
            s.step.__code__.co_varnames else s.step(eps, t, x, **(step_kwargs or {})).prev_sample
    return x


DPM = {"algorithm_type": "dpmsolver++", "solver_order": 2}
# name -> (diffusers config entries, scheduler.step arguments), written out independently of plugins/samplers.py
CASES = {"ddim": ({}, {"eta": 0.0}), "ddim:eta=1": ({}, {"eta": 1.0}), "euler": ({}, {}),
         "euler:karras=true": ({"use_karras_sigmas": True}, {}), "euler_ancestral": ({}, {}),
         "euler:spacing=trailing": ({"timestep_spacing": "trailing"}, {}),
         "heun": ({}, {}), "heun:karras=true": ({"use_karras_sigmas": True}, {}), "dpmpp_2m": (DPM, {}),
         "dpmpp_2m:exponential=true": (dict(DPM, use_exponential_sigmas=True), {}),
         "euler:beta=true": ({"use_beta_sigmas": True}, {}), "uni_pc:beta=true": ({"use_beta_sigmas": True}, {}),
         "dpmpp_2m_sde": ({"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, {}), "uni_pc": ({}, {}),
         "deis": ({}, {})}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("steps", [3, 10])
def test_each_rule_equals_its_diffusers_scheduler_in_a_plain_loop(name, steps):
    """Exact denoiser, float64: the only differences are rounding (sigma-space rules convert each step)."""
    b = gaussian()
    config, step_kwargs = CASES[name]
    ref = hand_loop(b, SCHEDULERS[name.split(":")[0]], config, steps, 5, 1, step_kwargs)
    ours = diffkit.sample(b, classes=[1], seed=5, sampler=name, steps=steps)
    assert ours.meta["sampler"]["name"] == name.split(":")[0]
    assert (ours.x - ref).abs().max().item() < 1e-9, name


def test_ddpm_is_the_default_and_unchanged():
    b = gaussian()
    a = diffkit.sample(b, classes=[0, 1], seed=2, stride=30)
    c = diffkit.sample(b, classes=[0, 1], seed=2, stride=30, sampler="ddpm")
    assert torch.equal(a.x, c.x)
    assert a.meta["sampler"] == {"name": "ddpm", "args": {}, "spec": "ddpm"}
    # the DDPM posterior step by hand: x_t' = mean + sigma z, strided
    ts = schedule.strided_timesteps(300, 30)
    g = torch.Generator().manual_seed(2)
    x = torch.randn((1, 1, 8, 8), generator=g, dtype=torch.float64)
    for i, t in enumerate(ts):
        tn = ts[i + 1] if i + 1 < len(ts) else -1
        eps = b.predict(x, torch.tensor([t]), b.encode([0]))
        x, _ = schedule.ddpm_step(x, t, tn, eps, b.alphas_cumprod,
                                  torch.randn((1, 1, 8, 8), generator=g, dtype=torch.float64) if tn >= 0 else None)
    assert torch.equal(a.x[:1], x)


def test_a_hand_written_third_party_ddim_equals_the_builtin(tmp_path):
    from test_docs import python_blocks, run_block

    (code,) = [b for b in python_blocks("writing-plugins.md") if "class HandDdim" in b]
    HandDdim = run_block(code)["HandDdim"]
    b = gaussian()
    ours = diffkit.sample(b, classes=[0, 1], seed=1, steps=10, sampler=HandDdim())
    ref = diffkit.sample(b, classes=[0, 1], seed=1, steps=10, sampler="ddim")
    assert (ours.x - ref.x).abs().max().item() < 1e-5  # diffusers keeps alphas_cumprod in float32
    assert (ours.x - diffkit.sample(b, classes=[0, 1], seed=1, steps=10, sampler="ddpm").x).abs().max() > 1e-3


def test_a_step_rule_written_as_a_short_sigma_function_equals_the_builtin_euler():
    """issue 35 point 6: docs/writing-plugins.md's hand Euler, k-diffusion's shape, through sigma_rule."""
    from test_docs import python_blocks, run_block

    (code,) = [b for b in python_blocks("writing-plugins.md") if "sigma_rule" in b]
    block = run_block(code)
    hand_euler, hand_euler_a = block["hand_euler"], block["hand_euler_a"]
    assert {c.name for c in block["diffkit_samplers"]()} == {"hand_euler", "hand_euler_a"}
    b = gaussian()
    ts = list(range(290, -1, -29))  # the same timesteps for both (euler takes a list)
    ours = diffkit.sample(b, classes=[0, 1], seed=1, timesteps=ts, sampler=hand_euler(), hooks=["cfg:2"])
    ref = diffkit.sample(b, classes=[0, 1], seed=1, timesteps=ts, sampler="euler", hooks=["cfg:2"])
    # float64 states; diffusers holds its sigmas in float32 (relative 2**-24 each): over 11 steps of
    # |x| <= 5 and sigma <= 4.1 the walks may part by about 11 * 4 * 5 * 4.1 * 2**-24, 5.4e-5
    assert (ours.x - ref.x).abs().max().item() < 11 * 4 * 5 * 4.1 * 2**-24
    assert ours.x.abs().max() <= 5
    assert (ours.x - diffkit.sample(b, classes=[0, 1], seed=1, timesteps=ts, sampler="ddpm", hooks=["cfg:2"]).x
            ).abs().max() > 1e-2  # another rule is not within the bound
    # the ancestral one draws from each sample's own generator: a batch equals single runs; at eta = 0 it
    # adds no noise and is the plain Euler step, to the bit
    batch = diffkit.sample(b, classes=[0, 1], num=2, seed=3, steps=8, sampler=hand_euler_a(eta=0.7))
    for i in range(4):
        one = diffkit.sample(b, classes=[[0, 0, 1, 1][i]], seed=3 + i, steps=8, sampler=hand_euler_a(eta=0.7))
        assert torch.equal(one.x[0], batch.x[i])
    assert torch.equal(diffkit.sample(b, classes=[0], seed=3, steps=8, sampler=hand_euler_a(eta=0.0)).x,
                       diffkit.sample(b, classes=[0], seed=3, steps=8, sampler=hand_euler()).x)
    assert not torch.equal(batch.x[0], diffkit.sample(b, classes=[0], seed=3, steps=8, sampler=hand_euler()).x[0])


class RowByRow:
    """The shipped MNIST model evaluated one row at a time: a CPU convolution's result may depend on the
    batch size in the last bit, so this isolates what the sampler itself does with a batch."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, x, t, cond):
        return torch.cat([self.inner.predict(x[i:i + 1], t[i:i + 1], None if cond is None else cond[i:i + 1])
                          for i in range(x.shape[0])])


@pytest.fixture(scope="module")
def mnist_rows():
    from diffkit.api import load_backend

    return RowByRow(load_backend("mnist"))


@pytest.mark.parametrize("name", BUILTIN + ["ddim:eta=1"])
def test_a_sample_is_the_same_bytes_alone_or_in_a_batch(name, mnist_rows):
    """Stochastic rules draw from one generator a sample (the run's), so batching changes nothing."""
    kw = dict(hooks=["cfg:3"], sampler=name, steps=4)
    batch = diffkit.sample(mnist_rows, classes=[3, 7], num=2, seed=10, **kw)
    for i, (label, seed) in enumerate(zip(batch.labels, batch.seeds)):
        alone = diffkit.sample(mnist_rows, classes=[label], seed=seed, **kw)
        assert torch.equal(alone.x[0], batch.x[i]), (name, i)
    # the model's own batched call differs from row-by-row in the last bits only
    assert torch.allclose(diffkit.sample("mnist", classes=[3, 7], num=2, seed=10, **kw).x, batch.x, atol=1e-3)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_rules_depend_on_the_seed_and_deterministic_ones_only_on_the_start(name):
    b = gaussian()
    a, c = (diffkit.sample(b, classes=[0], seed=s, sampler=name, steps=6).x for s in (0, 1))
    assert not torch.equal(a, c)


def test_heun_costs_two_evaluations_a_step_each_one_call_for_all_branches(counting):
    b = counting(gaussian())
    run = diffkit.api.Run(b, classes=[0], hooks=["cfg:2", "anagram:1,view=flip_v"], sampler="heun", steps=5)
    for _ in run.steps():
        pass
    # 5 steps: 2 evaluations each but the last (diffusers' Heun ends with an Euler step): 9 calls of 4 branches
    assert b.calls == [4] * 9
    assert run.model_calls_per_sample() == 36


@pytest.mark.parametrize("name", VARIANTS)
def test_observers_see_x0_and_abar_of_every_step(name):
    b = gaussian()
    run = diffkit.api.Run(b, classes=[0], sampler=name, steps=5, seed=1)
    states = list(run.steps())
    assert len(states) == 5 and [s.i for s in states] == list(range(5))
    for s in states:
        assert s.x0.shape == s.x.shape and torch.isfinite(s.x0).all()
    # the last x0 estimate is close to the final state (the last step lands on it)
    assert (states[-1].x0 - states[-1].x).abs().max() < 0.2


@pytest.mark.parametrize("name", VARIANTS)
def test_the_noise_level_after_each_step_is_the_rule_s(name):
    """ctx.abar(t) is the scheduler's own sigma (Karras: between training timesteps), so a projector
    noises its known region exactly as far as the state is."""
    import diffusers

    rule = registry.make_sampler(name)
    b = gaussian()
    stepper = rule.plan(b, 7)
    if name == "ddpm":
        assert stepper.abars[:-1] == [float(b.alphas_cumprod[t]) for t in stepper.timesteps]
        return
    s = getattr(diffusers, rule.scheduler).from_config(scheduler_config(b), **rule.overrides())
    s.set_timesteps(7)
    assert stepper.timesteps == [t.item() for t in s.timesteps[:: s.order]]
    if hasattr(s, "sigmas"):  # sigma space (Euler, Heun) or alphas with sigmas of their own (DPM, UniPC, DEIS)
        want = [1 / (1 + float(s.sigmas[i * s.order]) ** 2) for i in range(7)]
    else:
        want = [float(s.alphas_cumprod[int(t)]) for t in s.timesteps]
    assert stepper.abars == pytest.approx(want + [1.0], rel=1e-6)


# ----------------------------------------------------------------------------- laws across samplers


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    io.save_png(torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0)), d / "img.png")
    io.save_png(torch.ones(1, 8, 8), d / "white.png")
    io.save_png(torch.zeros(1, 8, 8), d / "black.png")
    half = torch.zeros(1, 8, 8)
    half[..., 4:] = 1
    io.save_png(half, d / "half.png")
    return d


@pytest.mark.parametrize("name", VARIANTS)
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 1000))
def test_inpaint_black_mask_returns_the_original_and_white_mask_is_plain_sampling(images, name, seed):
    b = gaussian()
    kw = dict(classes=[0, 1], seed=seed, sampler=name, steps=6)
    plain = diffkit.sample(b, **kw).x
    white = diffkit.sample(b, hooks=[f"inpaint:{images / 'img.png'},{images / 'white.png'}"], **kw).x
    black = diffkit.sample(b, hooks=[f"inpaint:{images / 'img.png'},{images / 'black.png'}"], **kw).x
    assert torch.equal(plain, white)
    orig = io.load_image(images / "img.png", (8, 8), 1).double()
    assert torch.equal(black, orig.expand_as(black))


@pytest.mark.parametrize("name", VARIANTS)
def test_inpaint_keeps_the_known_half_at_the_state_s_noise_level_after_every_step(images, name):
    """After every step the kept half is the original noised to ctx.abar(t_next): its distance from
    sqrt(abar) x_orig has the standard deviation sqrt(1 - abar)."""
    b = GaussianBackend(means=(0.2, 0.8), std=0.15, shape=(1, 32, 32))
    io.save_png(torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(0)), images / "img32.png")
    half = torch.zeros(1, 32, 32)
    half[..., 16:] = 1
    io.save_png(half, images / "half32.png")
    run = diffkit.api.Run(b, classes=[0] * 8, seed=3, sampler=name, steps=6,
                          hooks=[f"inpaint:{images / 'img32.png'},{images / 'half32.png'}"])
    orig = io.load_image(images / "img32.png", (32, 32), 1).double()
    ctx = run._ctx0
    for s in run.steps():
        a = ctx.abar(s.t_next)
        resid = (s.x[..., :16] - a ** 0.5 * orig[..., :16]).flatten()
        if s.t_next < 0:
            assert torch.equal(resid, torch.zeros_like(resid))
        else:
            assert resid.std().item() == pytest.approx((1 - a) ** 0.5, rel=0.1), (s.i, a)


@pytest.mark.parametrize("name", VARIANTS)
def test_cfg_commutes_with_anagram_under_every_rule(name):
    b = gaussian()
    kw = dict(classes=[0], seed=4, sampler=name, steps=5)
    a = diffkit.sample(b, hooks=["cfg:3", "anagram:1,view=flip_v"], **kw).x
    c = diffkit.sample(b, hooks=["anagram:1,view=flip_v", "cfg:3"], **kw).x
    assert (a - c).abs().max().item() < 1e-12


@pytest.mark.parametrize("name", VARIANTS)
def test_sdedit_at_i_start_zero_is_plain_sampling(images, name):
    b = gaussian()
    kw = dict(classes=[0], seed=4, sampler=name, steps=5)
    assert torch.equal(diffkit.sample(b, **kw).x,
                       diffkit.sample(b, hooks=[f"sdedit:{images / 'img.png'},i_start=0"], **kw).x)


@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("name", ["euler", "euler:karras=true", "heun", "dpmpp_2m", "uni_pc", "ddim"])
def test_sdedit_strength_equals_diffusers_img2img_loop(images, name, strength):
    """diffusers' img2img pipelines: skip n - int(n s) steps, add_noise at that timestep, set_begin_index
    (strength 1 too: the image noised to the first timestep, not pure noise)."""
    import diffusers

    rule = registry.make_sampler(name)
    b, n, seed = gaussian(), 10, 6
    s = getattr(diffusers, rule.scheduler).from_config(scheduler_config(b), **rule.overrides())
    s.set_timesteps(n)
    t_start = n - int(n * strength)
    ts = s.timesteps[t_start * s.order:]
    if hasattr(s, "set_begin_index"):
        s.set_begin_index(t_start * s.order)
    orig = io.load_image(images / "img.png", (8, 8), 1).double()[None]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, 1, 8, 8), generator=g, dtype=torch.float64)
    x = s.add_noise(orig, noise, ts[:1])
    for t in ts:
        eps = b.predict(s.scale_model_input(x, t), t[None], b.encode([0]))
        x = s.step(eps, t, x).prev_sample
    ours = diffkit.sample(b, classes=[0], seed=seed, sampler=name, steps=n,
                          hooks=[f"sdedit:{images / 'img.png'},strength={strength}"])
    assert (ours.x - x).abs().max().item() < 1e-9


def test_repaint_resampling_runs_under_ddim_and_is_refused_under_a_multistep_rule(images, counting):
    b = counting(gaussian())
    spec = f"inpaint:{images / 'img.png'},{images / 'half.png'},resample=2,jump=2"
    run = diffkit.api.Run(b, classes=[0], sampler="ddim", steps=6, hooks=[spec])
    for _ in run.steps():
        pass
    assert len(b.calls) == 6 + 2 * 2  # a jump of 2 steps redone once after steps 2 and 4 (none after the last)
    for name in ("dpmpp_2m", "euler", "heun"):
        with pytest.raises(ValueError, match=r"\(resample=2\).*\(ddim, ddpm"):
            diffkit.sample(gaussian(), classes=[0], sampler=name, steps=6, hooks=[spec])


# ----------------------------------------------------------------------------------------- refusals

runner = CliRunner()


@pytest.mark.parametrize("args, words", [
    (["--sampler", "dpm_fast"], ["unknown rule 'dpm_fast'", "dpmpp_2m", "euler"]),
    (["--sampler", "diffusers:NoSuchScheduler"], ["'NoSuchScheduler' is not a diffusers scheduler", "DDIMScheduler"]),
    (["--sampler", "diffusers:FlowMatchEulerDiscreteScheduler"], [
        "rule 'diffusers' (FlowMatchEulerDiscreteScheduler) cannot step a discrete variance-preserving model "
        "(backend 'gaussian')", "ddpm"]),
    (["--sampler", "diffusers:DDIMScheduler,solver_order=3"], ["no config entry 'solver_order'"]),
    (["--sampler", "ddim:eta=2"], ["'eta'", "0..1"]),
    (["--sampler", "ddim:eta=much"], ["'eta' expects float"]),
    (["--sampler", "euler:karras=maybe"], ["'karras' expects bool"]),
    (["--sampler", "euler:spacing=random"], ["'spacing'", "one of linspace, leading, trailing"]),
    (["--sampler", "euler:karras=true,beta=true"], ["rule 'euler'", "karras and beta are sigma spacings; choose one"]),
    (["--sampler", "dpmpp_2m:exponential=true,karras=true"], ["karras and exponential", "choose one"]),
    (["--sampler", "euler", "--steps", "301"], ["steps must be in 1..300"]),
    (["--sampler", "uni_pc", "--timesteps", "200,100,0"], ["spaces its own timesteps", "--steps"]),
    (["--sampler", "dpmpp_2m", "--hook", "inpaint:a.png,b.png,resample=3"], ["(resample=3)", "rule 'dpmpp_2m'", "(ddim, ddpm"]),
])
def test_bad_sampler_input_exits_2_naming_the_culprit_and_writes_nothing(tmp_path, args, words, images):
    args = [a.replace("a.png", str(images / "img.png")).replace("b.png", str(images / "half.png")) for a in args]
    out = tmp_path / "out"
    r = runner.invoke(app, ["sample", "--backend", "gaussian", "--class", "0", "--out", str(out), *args])
    assert r.exit_code == 2, r.output
    for w in words:
        assert w in r.output, (w, r.output)
    assert "Traceback" not in r.output and not out.exists()


def test_beta_spacing_without_scipy_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else find(name, *a))
    r = runner.invoke(app, ["sample", "--backend", "gaussian", "--class", "0", "--rule", "euler:beta=true",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert "rule 'euler': beta spacing needs scipy" in r.output and "pip install scipy" in r.output
    assert not (tmp_path / "o").exists()


def test_samplers_command_lists_every_rule_with_its_parameters():
    r = runner.invoke(app, ["samplers"])
    assert r.exit_code == 0
    for name in BUILTIN + ["diffusers"]:
        assert name in r.output
    for word in ("eta", "karras", "exponential", "beta", "spacing", "DPMSolverMultistepScheduler"):
        assert word in r.output


def test_cli_records_the_sampler_and_a_run_is_reproducible_from_run_json(tmp_path):
    base = ["sample", "--backend", "mnist", "--class", "3", "--hook", "cfg:2"]
    r = runner.invoke(app, [*base, "--sampler", "dpmpp_2m_sde:karras=true", "--steps", "4", "--seed", "7",
                            "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "a" / "run.json").read_text())
    assert meta["sampler"]["spec"] == "dpmpp_2m_sde:karras=True,exponential=False,beta=False"
    assert len(meta["timesteps"][0]) == 4
    r = runner.invoke(app, [*base, "--sampler", meta["sampler"]["spec"], "--steps", str(len(meta["timesteps"][0])),
                            "--seed", "7", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a" / "sample-000.png").read_bytes() == (tmp_path / "b" / "sample-000.png").read_bytes()
    assert (tmp_path / "a" / "final.safetensors").read_bytes() == (tmp_path / "b" / "final.safetensors").read_bytes()


def test_sweep_over_steps_sampler_and_a_sampler_parameter(tmp_path):
    base = ["sample", "--backend", "gaussian", "--class", "0"]
    r = runner.invoke(app, [*base, "--sampler", "euler", "--sweep", "steps=2,5", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert [len(json.loads((tmp_path / "s" / f"steps-{v}" / "run.json").read_text())["timesteps"][0])
            for v in (2, 5)] == [2, 5]
    r = runner.invoke(app, [*base, "--steps", "5", "--sweep", "sampler=euler,ddim", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r" / "sampler-ddim" / "run.json").read_text())["sampler"]["name"] == "ddim"
    r = runner.invoke(app, [*base, "--steps", "5", "--sampler", "ddim", "--sweep", "eta=0,1", "--out",
                            str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e" / "eta-1" / "run.json").read_text())["sampler"]["args"]["eta"] == 1.0
    assert (tmp_path / "e" / "sweep.png").exists()


def test_eval_mnist_takes_a_sampler_and_reports_model_calls(tmp_path, mnist_dir):
    r = runner.invoke(app, ["eval", "mnist", "--num", "2", "--sampler", "heun", "--steps", "3", "--hook", "cfg:2",
                            "--data", str(mnist_dir), "--out", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["sampler"]["name"] == "heun" and rep["timesteps"] == 3
    assert rep["model_calls_per_sample"] == 2 * (2 * 3 - 1)  # cfg: 2 branches; heun: 5 evaluations


@pytest.mark.parametrize("cls, config", [("PNDMScheduler", {}), ("KDPM2DiscreteScheduler", {}),
                                         ("KDPM2AncestralDiscreteScheduler", {}),
                                         ("DPMSolverSinglestepScheduler", {"solver_order": 3}),
                                         ("UniPCMultistepScheduler", {"solver_order": 3, "timestep_spacing": "trailing"})])
def test_any_diffusers_scheduler_by_class_name_equals_its_plain_loop(cls, config):
    spec = ",".join([f"diffusers:{cls}"] + [f"{k}={v}" for k, v in config.items()])
    b = gaussian()
    ref = hand_loop(b, cls, config, 8, 2, 1)
    ours = diffkit.sample(b, classes=[1], seed=2, sampler=spec, steps=8)
    assert (ours.x - ref).abs().max().item() < 1e-9
    assert ours.meta["sampler"]["spec"] == spec.replace("diffusers:", "diffusers:cls=")
    assert registry.make_sampler(ours.meta["sampler"]["spec"]).overrides() == config


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m"])
def test_explicit_timesteps_reach_the_rules_that_take_a_list(name):
    r = diffkit.sample(gaussian(), classes=[0], sampler=name, timesteps=[250, 150, 50])
    assert r.meta["timesteps"] == [[250, 150, 50]]
