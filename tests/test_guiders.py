"""diffusers' output-space guiders as combiners (issue 38, point 1): apg, cfg_zero_star, tcfg and mag equal
diffusers' guider classes on random tensors (the same inputs to both, step by step, APG's momentum across
steps); they combine the model's own prediction (noise, v, velocity: denoise.Prediction), batch like single
runs, compose with the illusion and editing techniques, and refuse bad parameters by name."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit.backends.gaussian import GaussianBackend
from diffkit.cli import app
from diffkit.denoise import Prediction
from diffkit.state import Cond, Query

T, STEPS = 1000, 10
TIMESTEPS = [int(T - 1 - i * (T // STEPS)) for i in range(STEPS)]


def made(spec: str):
    from diffkit.request import RunRequest

    return RunRequest(backend="gaussian", techniques=[spec]).techniques[0]


def setup(tech, i_start: int = 0):
    ctx = SimpleNamespace(backend=SimpleNamespace(conditional=True, name="x"), null=Cond((None,), None),
                          alphas_cumprod=torch.ones(T), timesteps=TIMESTEPS, i_start=i_start)
    tech.setup(ctx)
    return tech


def test_zero_init_counts_steps_from_where_the_run_starts():
    """An SDEdit that starts at step 3 zeroes its first steps as diffusers' img2img pipelines do: their
    guider counts the steps it runs."""
    tech = setup(made("cfg_zero_star:scale=3,zero_steps=2"), i_start=3)
    cond = Cond(("a",), torch.zeros(1, 1))
    zeroed = [len(tech.expand(Query(torch.zeros(1, 2), t, cond))) == 1 for t in TIMESTEPS[3:7]]
    assert zeroed == [True, True, False, False]


def diffusers_guider(cls_name: str, **config):
    import diffusers.guiders

    return getattr(diffusers.guiders, cls_name)(**config)


CASES = [  # ours, diffusers' class and config
    ("apg:scale=5", "AdaptiveProjectedGuidance", dict(guidance_scale=5.0)),
    ("apg:scale=4,eta=0,threshold=2,momentum=-0.5", "AdaptiveProjectedGuidance",
     dict(guidance_scale=4.0, eta=0.0, adaptive_projected_guidance_rescale=2.0, adaptive_projected_guidance_momentum=-0.5)),
    ("apg:scale=3,original=true,rescale=0.7", "AdaptiveProjectedGuidance",
     dict(guidance_scale=3.0, use_original_formulation=True, guidance_rescale=0.7)),
    ("cfg_zero_star:scale=4", "ClassifierFreeZeroStarGuidance", dict(guidance_scale=4.0)),
    ("cfg_zero_star:scale=6,zero_steps=3,rescale=0.5", "ClassifierFreeZeroStarGuidance",
     dict(guidance_scale=6.0, zero_init_steps=3, guidance_rescale=0.5)),
    ("tcfg:scale=5", "TangentialClassifierFreeGuidance", dict(guidance_scale=5.0)),
    ("tcfg:scale=2,original=true", "TangentialClassifierFreeGuidance", dict(guidance_scale=2.0, use_original_formulation=True)),
    ("mag:scale=10", "MagnitudeAwareGuidance", dict(guidance_scale=10.0)),
    ("mag:scale=5,alpha=2,original=true", "MagnitudeAwareGuidance",
     dict(guidance_scale=5.0, alpha=2.0, use_original_formulation=True)),
]


@pytest.mark.parametrize("spec,cls_name,config", CASES, ids=[c[0] for c in CASES])
def test_each_guider_equals_diffusers_guider_class_step_by_step(spec, cls_name, config):
    """Random predictions ``[N x L x D]`` (Flux's packed shape: diffusers' MagnitudeAwareGuidance refuses
    4-d ones), the same to both, every step; APG's momentum carries across the steps on both sides."""
    g = torch.Generator().manual_seed(0)
    tech = setup(made(spec))
    theirs = diffusers_guider(cls_name, **config)
    cond = Cond(("a", "b"), torch.zeros(2, 1))
    for i, t in enumerate(TIMESTEPS):
        c, u = (torch.randn(2, 16, 8, generator=g, dtype=torch.float64) for _ in range(2))
        q = Query(torch.zeros(2, 16, 8, dtype=torch.float64), t, cond)
        branches = tech.expand(q)
        got = tech.reduce(q, [c, u][: len(branches)])
        theirs.set_state(i, STEPS, torch.tensor(t))
        if i == 0 and config.get("adaptive_projected_guidance_momentum") is not None:
            from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

            # what the guider's prepare_inputs does at step 0 in a pipeline: a fresh buffer
            theirs.momentum_buffer = MomentumBuffer(config["adaptive_projected_guidance_momentum"])
        want = theirs.forward(c, u).pred
        if "zero_steps" in spec and "rescale" in spec and i < 3:  # diffusers rescales its zeros: 0/0
            assert torch.isnan(want).all() and torch.equal(got, torch.zeros_like(c))
            continue
        assert torch.allclose(got, want, rtol=0, atol=1e-12), (spec, i, (got - want).abs().max())


@pytest.mark.parametrize("spec,config", [
    ("fdg", dict(guidance_scales=[10.0, 5.0])),
    ("fdg:scales=4+2+1.5,parallel=0+0.5+1", dict(guidance_scales=[4.0, 2.0, 1.5], parallel_weights=[0.0, 0.5, 1.0])),
    ("fdg:scales=3+2,original=true,rescale=0.6", dict(guidance_scales=[3.0, 2.0], use_original_formulation=True,
                                                     guidance_rescale=0.6)),
])
def test_fdg_equals_diffusers_frequency_decoupled_guidance(spec, config):
    """On images ``[N x C x H x W]`` (the Laplacian pyramid is 2-d), the same random predictions to both."""
    g = torch.Generator().manual_seed(2)
    tech = setup(made(spec))
    theirs = diffusers_guider("FrequencyDecoupledGuidance", **config)
    cond = Cond(("a", "b"), torch.zeros(2, 1))
    for t in TIMESTEPS[:3]:
        c, u = (torch.randn(2, 4, 16, 16, generator=g) for _ in range(2))
        q = Query(torch.zeros(2, 4, 16, 16), t, cond)
        assert len(tech.expand(q)) == 2
        got, want = tech.reduce(q, [c, u]), theirs.forward(c, u).pred
        assert torch.allclose(got, want, rtol=0, atol=1e-5), (spec, (got - want).abs().max())
        assert not torch.allclose(got, u + 10 * (c - u), atol=1e-2)  # not plain CFG at either scale


PIPELINE_CASES = [  # ours, the guider diffusers' modular SDXL pipeline runs
    ("cfg:5", "ClassifierFreeGuidance", dict(guidance_scale=5.0)),
    ("apg:scale=5,eta=0,momentum=-0.5", "AdaptiveProjectedGuidance",
     dict(guidance_scale=5.0, eta=0.0, adaptive_projected_guidance_momentum=-0.5)),
    ("cfg_zero_star:scale=5", "ClassifierFreeZeroStarGuidance", dict(guidance_scale=5.0)),
    ("tcfg:scale=5", "TangentialClassifierFreeGuidance", dict(guidance_scale=5.0)),
    ("fdg:scales=5+3,parallel=0+1", "FrequencyDecoupledGuidance", dict(guidance_scales=[5.0, 3.0],
                                                                       parallel_weights=[0.0, 1.0])),
]


@pytest.fixture(scope="module")
def modular_sdxl(tiny_sd):
    from diffusers.modular_pipelines import ModularPipeline

    pipe = ModularPipeline.from_pretrained(str(tiny_sd["sdxl"]))
    pipe.load_components(torch_dtype=torch.float32)  # (it logs that the folder has no image encoder)
    return pipe


@pytest.mark.parametrize("spec,cls_name,config", PIPELINE_CASES, ids=[c[0] for c in PIPELINE_CASES])
def test_each_guider_equals_diffusers_modular_sdxl_pipeline_running_it(tiny_sd, modular_sdxl, spec, cls_name, config):
    """The guider in the pipeline diffusers runs guiders in (the modular SDXL pipeline, its guider component
    replaced), on the tiny SDXL, within test_sd's bound: APG's momentum and CFG-Zero*'s zeroed first step
    across a real run. (MagnitudeAwareGuidance fails in it: torch refuses its norm on 4-d latents.)"""
    from test_sd import TOL, not_flat, ours

    def theirs(**changed):
        modular_sdxl.update_components(guider=diffusers_guider(cls_name, **{**config, **changed}))
        return modular_sdxl(prompt=["a photo of a red dog"], num_inference_steps=10, output="images",
                            generator=torch.Generator().manual_seed(3), output_type="pt")

    want = theirs()
    not_flat(want)
    got = ours(tiny_sd["sdxl"], "sdxl", hooks=[spec], steps=10, prompts=["a photo of a red dog"])
    assert (got - want).abs().max() < TOL, (spec, (got - want).abs().max())
    scale = {"guidance_scales": [4.0, 3.0]} if "guidance_scales" in config else {"guidance_scale": 4.0}
    assert (got - theirs(**scale)).abs().max() > TOL  # the bound tells another scale


def test_fdg_leaves_a_level_of_scale_one_to_the_conditional_prediction():
    """diffusers' FrequencyDecoupledGuidance fails on a level of scale exactly 1; ours equals it just off 1."""
    g = torch.Generator().manual_seed(3)
    c, u = (torch.randn(2, 4, 16, 16, generator=g, dtype=torch.float64) for _ in range(2))
    q = Query(torch.zeros(2, 4, 16, 16, dtype=torch.float64), TIMESTEPS[0], Cond(("a", "b"), torch.zeros(2, 1)))
    got = setup(made("fdg:scales=1+3")).reduce(q, [c, u])
    with pytest.raises(UnboundLocalError):
        diffusers_guider("FrequencyDecoupledGuidance", guidance_scales=[1.0, 3.0]).forward(c, u)
    near = diffusers_guider("FrequencyDecoupledGuidance", guidance_scales=[1.0 + 1e-7, 3.0]).forward(c, u).pred
    assert torch.allclose(got, near, atol=1e-5)  # 1e-7 (c - u) apart


def test_fdg_on_a_side_that_is_not_a_power_of_two_is_diffusers_cropped():
    """kornia pads 28 to 32 before the pyramid; diffusers hands back the padded 32 x 32 prediction, ours its
    28 x 28 corner, the same numbers."""
    g = torch.Generator().manual_seed(4)
    c, u = (torch.randn(2, 1, 28, 20, generator=g) for _ in range(2))
    q = Query(torch.zeros(2, 1, 28, 20), TIMESTEPS[0], Cond(("a", "b"), torch.zeros(2, 1)))
    got = setup(made("fdg:scales=4+2")).reduce(q, [c, u])
    want = diffusers_guider("FrequencyDecoupledGuidance", guidance_scales=[4.0, 2.0]).forward(c, u).pred
    assert want.shape[-2:] == (32, 32) and got.shape == c.shape
    assert torch.allclose(got, want[..., :28, :20], atol=1e-5)


def test_mag_by_hand_equals_diffusers_on_packed_and_is_the_same_per_sample_norm_on_images():
    from diffusers.guiders.magnitude_aware_guidance import mambo_guidance

    from diffkit_plugins.guiders import mambo

    g = torch.Generator().manual_seed(1)
    c, u = torch.randn(3, 10, 6, generator=g), torch.randn(3, 10, 6, generator=g)
    for original in (False, True):
        assert torch.allclose(mambo(c, u, 7.0, 3.0, original), mambo_guidance(c, u, 7.0, 3.0, original), atol=1e-6)
    # a 4-d prediction is the packed one reshaped: the same numbers
    c4, u4 = c.view(3, 10, 2, 3), u.view(3, 10, 2, 3)
    assert torch.allclose(mambo(c4, u4, 7.0, 3.0, False).view(3, 10, 6), mambo_guidance(c, u, 7.0, 3.0, False), atol=1e-6)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "flow_prediction"])
def test_the_prediction_goes_there_and_back(kind):
    """denoise.Prediction: estimates -> the model's prediction -> estimates, exact to rounding."""
    g = torch.Generator().manual_seed(2)
    k, x = 2, torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    q = Query(x, 500, Cond(("a",) * 3, None))
    p = Prediction(kind, k, abar=lambda t: 0.3, sigma=lambda t: 0.6)
    if kind == "flow_prediction":
        from diffkit.schedule import estimates_from_flow

        v = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
        est = torch.cat(estimates_from_flow(x, v, 0.6), dim=1)  # what batched makes of a velocity
        assert torch.allclose(p.of(q, est), v, atol=1e-12)
    else:
        est = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
        if kind == "v_prediction":  # v = sqrt(a) eps - sqrt(1 - a) x0, with x0 from x and eps
            x0 = (x - 0.7 ** 0.5 * est) / 0.3 ** 0.5
            assert torch.allclose(p.of(q, est), 0.3 ** 0.5 * est - 0.7 ** 0.5 * x0, atol=1e-12)
    assert torch.allclose(p.back(q, p.of(q, est)), est, atol=1e-12)


def gaussian(**kw):
    return GaussianBackend(**kw)


@pytest.mark.parametrize("spec", ["apg:scale=3,momentum=-0.5", "cfg_zero_star:scale=3,zero_steps=2", "tcfg:scale=3",
                                  "mag:scale=3", "fdg:scales=3+2,parallel=0.5+1"])
@pytest.mark.parametrize("formulation", ["vp", "flow"])
def test_a_batch_equals_single_runs(spec, formulation):
    be = GaussianBackend.from_options("0.2,0.8", 0.15, formulation, 3.0)
    kw = dict(hooks=[spec], steps=6, sampler="dpmpp_2m")
    whole = diffkit.sample(be, classes=[0, 1], num=2, seed=4, **kw)
    for k, label in enumerate([0, 0, 1, 1]):
        one = diffkit.sample(be, classes=[label], num=1, seed=4 + k, **kw)
        assert torch.equal(whole.x[k], one.x[0]), (spec, k)
    # batches of one label in turn: APG's momentum must not carry from one batch into the next
    same = diffkit.sample(be, classes=[1], num=4, seed=4, **kw)
    split = diffkit.sample(be, classes=[1], num=4, seed=4, batch_size=2, **kw)
    assert torch.equal(same.x, split.x), spec


def test_on_a_flow_model_a_guider_combines_the_velocity_not_the_noise():
    """CFG-Zero*'s projection is not linear: on the velocity (diffusers' choice) and on the noise it
    differs; ours follows the velocity, checked against a hand loop over diffusers' FlowMatch Euler."""
    import diffusers
    from diffusers.guiders.classifier_free_zero_star_guidance import cfg_zero_star_scale

    be = GaussianBackend.from_options("0.2,0.8", 0.15, "flow", 3.0)
    got = diffkit.sample(be, classes=[1], num=1, seed=7, hooks=["cfg_zero_star:scale=3,zero_steps=0"], steps=5,
                         sampler="euler").x
    s = diffusers.FlowMatchEulerDiscreteScheduler.from_config(be.scheduler_config)
    s.set_timesteps(5)
    x = torch.randn((1, *be.sample_shape), generator=torch.Generator().manual_seed(7), dtype=be.dtype)
    cond, null = be.encode([1]), be.encode([None])
    for t in s.timesteps:
        c, u = be.predict(x, t[None], cond), be.predict(x, t[None], null)
        alpha = cfg_zero_star_scale(c.flatten(1), u.flatten(1)).view(-1, 1, 1, 1)
        v = u * alpha + 3 * (c - u * alpha)
        x = s.step(v, t, x).prev_sample
    assert (got - x).abs().max() < 1e-5, (got - x).abs().max()


@pytest.mark.parametrize("guider", ["apg:scale=3", "cfg_zero_star:scale=3", "tcfg:scale=3", "mag:scale=3",
                                    "fdg:scales=3+2"])
@pytest.mark.parametrize("other", ["anagram:1,view=flip", 'factorize:1,parts="low_pass:sigma=1,kernel=5+high_pass:sigma=1,kernel=5"',
                                   "inpaint:IMG,MASK", "sdedit:IMG,strength=0.6"])
def test_every_guider_composes_with_the_illusions_and_the_edits(guider, other, tmp_path):
    from PIL import Image

    img, mask = tmp_path / "img.png", tmp_path / "mask.png"
    Image.new("L", (8, 8), 128).save(img)
    m = Image.new("L", (8, 8), 0)
    m.paste(255, (0, 0, 4, 8))
    m.save(mask)
    other = other.replace("IMG", str(img)).replace("MASK", str(mask))
    for order in ([guider, other], [other, guider]):
        r = CliRunner().invoke(app, ["sample", "--backend", "gaussian", "--class", "0", "--steps", "5",
                                     *[a for h in order for a in ("--technique", h)], "--out", str(tmp_path / "o"),
                                     "--overwrite"])
        assert r.exit_code == 0, (order, r.output)


@pytest.mark.parametrize("spec,text", [
    ("apg:eta=-1", "technique 'apg': parameter 'eta'"),
    ("apg:momentum=2", "technique 'apg': parameter 'momentum'"),
    ("cfg_zero_star:zero_steps=-1", "technique 'cfg_zero_star': parameter 'zero_steps'"),
    ("tcfg:rescale=2", "technique 'tcfg': parameter 'rescale'"),
    ("mag:alpha=x", "technique 'mag': parameter 'alpha'"),
    ("mag:lo=0.8,hi=0.2", "interval lo=0.8..hi=0.2 is empty"),
    ("fdg:scales=3+x", "scales='3+x'"),
    ("fdg:scales=3+2,parallel=1", "1 weights for 2 levels"),
    ("fdg:scales=3+1e9", "finite number in -100..100"),
])
def test_bad_parameters_exit_2_naming_the_guider(spec, text, tmp_path):
    r = CliRunner().invoke(app, ["sample", "--backend", "gaussian", "--class", "0", "--technique", spec,
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert text in " ".join(r.output.split()), r.output


def test_fdg_without_kornia_says_to_install_it(tmp_path, monkeypatch):
    from diffusers import utils

    monkeypatch.setattr(utils, "is_kornia_available", lambda: False)
    r = CliRunner().invoke(app, ["sample", "--backend", "gaussian", "--class", "0", "--technique", "fdg",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "pip install kornia" in " ".join(r.output.split()), r.output
