"""Flow matching in the engine: a flow model's techniques, written on noise in diffkit, equal the same
techniques written on velocity in a hand loop over diffusers' flow schedulers (as the SD3 and Flux
pipelines write CFG); sigma = 1 works; rules that cannot step a flow model are refused by name.

The backend is the exact Gaussian mixture as a flow model (``-O formulation=flow``): its velocity is
computed in closed form in float64, so what differs is only the float32 a flow scheduler's step
rounds its sample to (diffusers' FlowMatchEulerDiscreteScheduler.step upcasts to float32, then casts
back): one rounding of 2^-24 relative a step."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import diffkit
from diffkit import registry
from diffkit.backends.gaussian import GaussianBackend
from diffkit.cli import app
from diffkit.io import load_image

STEPS, SHIFT, SEED = 8, 3.0, 5
MEANS = (0.25, 0.75)


def flow_backend(shift: float = SHIFT, side: int = 8) -> GaussianBackend:
    return GaussianBackend(means=MEANS, std=0.15, shape=(1, side, side), formulation="flow", shift=shift)


def bound(x: torch.Tensor, steps: int = STEPS) -> float:
    """Float32 rounding of the sample once a step (2^-24 relative), carried to the end by a flow whose map
    has Lipschitz constant below 2 on this data, over ``steps`` steps, on states of size |x|."""
    return 2 * steps * 2.0**-24 * max(1.0, float(x.abs().max()))


def onehot(label: int | None, n: int) -> torch.Tensor:
    c = torch.zeros(n, len(MEANS), dtype=torch.float64)
    if label is not None:
        c[:, label] = 1
    return c


def hand(backend: GaussianBackend, n: int, v_of, *, scheduler: str = "FlowMatchEulerDiscreteScheduler",
         extra: dict | None = None, start=None, after=None) -> torch.Tensor:
    """The pipelines' loop, written on velocity: ``v_of(x, t)`` is the guided velocity at flow state ``x``."""
    import diffusers

    cls = getattr(diffusers, scheduler)
    sch = cls.from_config(backend.scheduler_config, **(extra or {}))
    sch.set_timesteps(STEPS)
    gens = [torch.Generator().manual_seed(SEED + i) for i in range(n)]
    noise = torch.cat([torch.randn((1, *backend.sample_shape), generator=g, dtype=torch.float64) for g in gens])
    x, i0 = noise, 0
    if start is not None:
        x, i0 = start(sch, noise)
        sch.set_begin_index(i0 * sch.order)
    evals = list(sch.timesteps)[i0 * sch.order:]
    for k, t in enumerate(evals):
        x = sch.step(v_of(x, t), t, x).prev_sample
        if after is not None and (k + 1) % sch.order == 0:
            x = after(x, float(sch.sigmas[i0 * sch.order + k + 1]), noise)
    return x


def velocity(backend: GaussianBackend, x: torch.Tensor, t, label: int | None) -> torch.Tensor:
    return backend.predict(x, torch.full((x.shape[0],), float(t), dtype=torch.float32), onehot(label, x.shape[0]))


def ours(backend: GaussianBackend, n: int, hooks: list[str], rule: str = "euler", label: int = 1) -> torch.Tensor:
    res = diffkit.sample(backend, classes=[label], num=n, seed=SEED, hooks=hooks, sampler=rule, steps=STEPS)
    return res.x


def image_file(tmp_path, name: str, pattern) -> str:
    path = tmp_path / name
    Image.fromarray(pattern.astype(np.uint8), mode="L").save(path)
    return str(path)


def test_cfg_on_noise_is_cfg_on_velocity():
    be, n, g = flow_backend(), 3, 3.0
    want = hand(be, n, lambda x, t: velocity(be, x, t, None) + g * (velocity(be, x, t, 1) - velocity(be, x, t, None)))
    got = ours(be, n, [f"cfg:{g}"])
    assert (got - want).abs().max() <= bound(want)
    # and guidance matters here: a test that the conditional velocity alone would fail
    plain = hand(be, n, lambda x, t: velocity(be, x, t, 1))
    assert (got - plain).abs().max() > 100 * bound(want)


def test_anagram_and_factorize_on_noise_are_the_same_on_velocity():
    be, n = flow_backend(), 2
    flip = lambda x: x.flip(-2)
    want = hand(be, n, lambda x, t: 0.5 * (velocity(be, x, t, 1) + flip(velocity(be, flip(x), t, 0))))
    got = ours(be, n, ["anagram:prompt=0,view=flip_v"])
    assert (got - want).abs().max() <= bound(want)
    from diffkit_plugins.factorize import make_parts

    be = flow_backend(side=40)  # the default blur's 33-pixel kernel
    (low, a), (high, b) = make_parts("low_pass+high_pass")
    want = hand(be, n, lambda x, t: low(velocity(be, x, t, 1), 1.0, a) + high(velocity(be, x, t, 0), 1.0, b))
    got = ours(be, n, ["factorize:parts=low_pass+high_pass,prompt=0"])
    assert (got - want).abs().max() <= bound(want)


def test_inpaint_sdedit_and_reference_on_the_flow_state(tmp_path):
    S = 40  # reference's default blur: a 33-pixel kernel
    be, n = flow_backend(side=S), 2
    ramp = np.tile(np.linspace(0, 255, S), (S, 1))
    img = image_file(tmp_path, "img.png", ramp)
    mask = image_file(tmp_path, "mask.png", np.where(np.arange(S)[None, :] < S // 2, 0, 255).repeat(S, 0))
    x0 = load_image(img, (S, S), 1)[None].double()
    m = (load_image(mask, (S, S), 1)[None] > 0.5).double()
    cond = lambda x, t: velocity(be, x, t, 1)

    # inpaint, the known region re-noised with the run's initial noise (the inpaint pipelines' blend)
    want = hand(be, n, cond, after=lambda x, s, noise: m * x + (1 - m) * ((1 - s) * x0 + s * noise))
    got = ours(be, n, [f"inpaint:image={img},mask={mask},noise=initial"])
    assert (got - want).abs().max() <= bound(want)
    assert torch.equal(got[..., :S // 2], x0.expand(n, -1, -1, -1)[..., :S // 2])  # the kept half is the image

    # sdedit, strength 0.5: the image noised as the flow img2img pipelines' scale_noise does
    def start(sch, noise):
        i = STEPS - int(STEPS * 0.5)
        s = float(sch.sigmas[i])
        return (1 - s) * x0 + s * noise, i

    want = hand(be, n, cond, start=start)
    got = ours(be, n, [f"sdedit:image={img},strength=0.5"])
    assert (got - want).abs().max() <= bound(want)

    # reference: the low frequencies of the image noised from the technique's own stream
    from diffkit_plugins.factorize import make_parts

    [(low, a)] = make_parts("low_pass")
    gens = [torch.Generator().manual_seed((SEED + i) * 1_000_003 + zlib.crc32(b"reference")) for i in range(n)]

    def after(x, s, noise):
        eps = torch.cat([torch.randn((1, 1, S, S), generator=g, dtype=torch.float64) for g in gens])
        ref = (1 - s) * x0 + s * eps if s > 0 else x0.expand(n, -1, -1, -1)
        return x - low(x, 1.0, a) + low(ref, 1.0, a)

    want = hand(be, n, cond, after=after)
    got = ours(be, n, [f"reference:image={img}"])
    assert (got - want).abs().max() <= bound(want)


@pytest.mark.parametrize("rule,scheduler,extra", [
    ("heun", "FlowMatchHeunDiscreteScheduler", {}),
    ("dpmpp_2m", "DPMSolverMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction",
                                                 "flow_shift": SHIFT, "algorithm_type": "dpmsolver++", "solver_order": 2}),
    ("uni_pc", "UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction",
                                           "flow_shift": SHIFT}),
    ("own", "FlowMatchEulerDiscreteScheduler", {}),
    ("euler:karras=true", "FlowMatchEulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("euler:exponential=true", "FlowMatchEulerDiscreteScheduler", {"use_exponential_sigmas": True}),
    ("euler:beta=true", "FlowMatchEulerDiscreteScheduler", {"use_beta_sigmas": True}),
])
def test_flow_rules_are_diffusers_flow_schedulers(rule, scheduler, extra):
    be, n, g = flow_backend(), 2, 2.0
    want = hand(be, n, lambda x, t: velocity(be, x, t, None) + g * (velocity(be, x, t, 1) - velocity(be, x, t, None)),
                scheduler=scheduler, extra=extra)
    got = ours(be, n, [f"cfg:{g}"], rule=rule)
    assert (got - want).abs().max() <= 2 * bound(want), rule  # Heun: two roundings a step


def test_sigma_1_is_pure_noise_and_the_first_clean_estimate_is_the_class_mean():
    """At sigma = 1 the noise estimate is the state itself; only the clean-image block says anything, and a
    combiner reduces it too (noise alone would give x0 = 0/0 there)."""
    be = flow_backend()
    run = diffkit.Run(be, classes=[0, 1], num=1, seed=SEED, hooks=["cfg:2"], sampler="euler", steps=STEPS)
    first = next(iter(run.steps()))
    assert first.i == 0 and first.t == 1000.0  # timestep sigma x 1000: the first step is at sigma = 1
    # cfg's x0 at sigma 1: u + 2 (c - u), with u the two classes' average (equal weights at pure noise)
    u = sum(MEANS) / 2
    want = torch.tensor([u + 2 * (MEANS[0] - u), u + 2 * (MEANS[1] - u)], dtype=torch.float64)
    assert torch.allclose(first.x0.flatten(1), want[:, None].expand(-1, 64), atol=1e-12)
    assert torch.isfinite(first.x0).all()


def test_a_flow_run_is_the_same_in_one_batch_and_in_single_runs():
    be = flow_backend()
    whole = diffkit.sample(be, classes=[0, 1], num=2, seed=SEED, hooks=["cfg:2"], sampler="dpmpp_2m", steps=4)
    for k, label in enumerate([0, 0, 1, 1]):  # sample k has seed + k
        seed = SEED + k
        one = diffkit.sample(be, classes=[label], num=1, seed=seed, hooks=["cfg:2"], sampler="dpmpp_2m", steps=4)
        assert torch.equal(whole.x[k], one.x[0])


@pytest.mark.parametrize("rule", ["ddpm", "ddim", "euler_ancestral"])
def test_a_rule_that_cannot_step_a_flow_model_is_refused_by_name_before_it_loads(rule, tmp_path, monkeypatch):
    import diffkit_plugins.backends as bk

    monkeypatch.setattr(bk, "_gaussian", lambda **kw: pytest.fail("the backend was loaded"))
    info = registry.backends()["gaussian"]
    monkeypatch.setattr(info, "load", lambda **kw: pytest.fail("the backend was loaded"))
    r = CliRunner().invoke(app, ["sample", "--backend", "gaussian", "-O", "formulation=flow", "--class", "0",
                                 "--rule", rule, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert f"rule {rule!r} cannot step a flow-matching model (backend 'gaussian')" in r.output
    assert "euler" in r.output and "dpmpp_2m" in r.output  # what can
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("rule,text", [
    ("dpmpp_2m:karras=true", "DPMSolverMultistepScheduler steps the model's flow sigmas, which use_karras_sigmas"),
    ("uni_pc:exponential=true", "UniPCMultistepScheduler steps the model's flow sigmas, which use_exponential_sigmas"),
    ("deis:beta=true", "DEISMultistepScheduler steps the model's flow sigmas, which use_beta_sigmas"),
    ("diffusers:DPMSolverMultistepScheduler,use_karras_sigmas=true", "which use_karras_sigmas would replace"),
    ("heun:karras=true", "FlowMatchHeunDiscreteScheduler, which takes no use_karras_sigmas"),
    ("euler:spacing=trailing", "FlowMatchEulerDiscreteScheduler, which takes no timestep_spacing"),
])
def test_a_spacing_a_flow_scheduler_cannot_take_is_refused_before_the_model_loads(rule, text, tmp_path, monkeypatch):
    """diffusers' solvers would quietly swap the flow sigmas for a discrete model's (NaN at the second step)."""
    info = registry.backends()["gaussian"]
    monkeypatch.setattr(info, "load", lambda **kw: pytest.fail("the backend was loaded"))
    r = CliRunner().invoke(app, ["sample", "--backend", "gaussian", "-O", "formulation=flow", "--class", "0",
                                 "--rule", rule, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert text in " ".join(r.output.split()), r.output
    assert "use euler" in r.output or "takes no" in r.output
    assert not (tmp_path / "o").exists()


def test_discrete_rules_and_flow_schedulers_do_not_cross():
    with pytest.raises(diffkit.errors.UserError, match=r"\(FlowMatchEulerDiscreteScheduler\) cannot step a discrete"):
        diffkit.sample(GaussianBackend(), classes=[0], num=1, sampler="diffusers:FlowMatchEulerDiscreteScheduler",
                       steps=3)
    with pytest.raises(diffkit.errors.UserError, match="give --steps instead of --timesteps"):
        diffkit.sample(flow_backend(), classes=[0], num=1, sampler="euler", timesteps=[900, 500, 0])
    with pytest.raises(diffkit.errors.UserError, match="takes no timestep_spacing"):
        diffkit.sample(flow_backend(), classes=[0], num=1, sampler="euler:spacing=trailing", steps=3)


FLOW_ARGS = ["sample", "--backend", "gaussian", "-O", "formulation=flow", "-O", "shift=3", "--class", "0,1", "-n", "3",
             "--technique", "cfg:2", "--rule", "dpmpp_2m", "--steps", "6", "--save-every", "2"]


def test_batch_sizes_resume_and_two_processes_write_the_same_bytes_on_a_flow_model(tmp_path):
    """A flow run's bytes do not depend on how it is split: one batch, batches of one, a run interrupted
    after its first batch and resumed, and two torchrun processes."""
    from conftest import interrupted
    from test_scale import files, torchrun

    def run(name: str, *extra: str) -> dict[str, bytes]:
        r = CliRunner().invoke(app, [*FLOW_ARGS, *extra, "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        return files(tmp_path / name)

    whole = run("whole", "--batch-size", "6")
    assert run("ones", "--batch-size", "1") == whole
    interrupted(1, *FLOW_ARGS, "--batch-size", "2", "--out", tmp_path / "cut")
    assert run("cut", "--batch-size", "2", "--resume") == whole
    p = torchrun([*FLOW_ARGS, "--batch-size", "2", "--out", str(tmp_path / "two")], tmp_path)
    assert p.returncode == 0, p.stderr
    assert files(tmp_path / "two") == whole
