"""Samplers on the tiny IF models: equal to diffusers' IF pipelines with the scheduler swapped in, and,
for the rules those pipelines reject (IF predicts a variance), to the scheduler driven by a plain loop
over the same UNet with the noise channels only."""

from __future__ import annotations

import pytest
import torch

import diffkit
from conftest import IF_TOL
from diffkit.backends.deepfloyd import IFStage, TextEncoder, load

PROMPT = "An oil painting of people around a campfire"
STAGE2_TOL = 1 / 255  # as tests/test_if_reference.py: stage II's random UNet amplifies float32 order


def quantised(x):
    return ((x / 2 + 0.5).clamp(0, 1) * 255).round()


def check(ours, ref, tol=IF_TOL):
    assert (ours - ref).abs().max().item() < tol, (ours - ref).abs().max().item()
    assert (quantised(ours) - quantised(ref)).abs().max().item() <= 1  # within one grey level


def pipeline(folder, cls_name, scheduler=None):
    import diffusers

    pipe = getattr(diffusers, cls_name).from_pretrained(folder, safety_checker=None, watermarker=None,
                                                        feature_extractor=None)
    pipe.set_progress_bar_config(disable=True)
    if scheduler:
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    return pipe


@pytest.mark.parametrize("sampler, scheduler", [("dpmpp_2m", "DPMSolverMultistepScheduler"), ("ddpm", None)])
def test_stage1_equals_ifpipeline_with_the_scheduler_swapped_in(tiny_if, sampler, scheduler):
    f1, _ = tiny_if
    pipe = pipeline(f1, "IFPipeline", scheduler)
    ref = pipe(PROMPT, num_inference_steps=20, guidance_scale=7.0, generator=torch.Generator().manual_seed(3),
               output_type="pt", clean_caption=False).images
    ours = diffkit.sample(load(model=str(f1), upscaler="none"), prompts=[PROMPT], seed=3, steps=20,
                          hooks=["cfg:7"], sampler=sampler)
    assert len(ours.meta["timesteps"][0]) == 20
    check(ours.x, ref)


@pytest.mark.parametrize("sampler, scheduler", [("dpmpp_2m", "DPMSolverMultistepScheduler"), ("ddpm", None)])
def test_stage2_equals_ifsuperresolutionpipeline_with_the_scheduler_swapped_in(tiny_if, sampler, scheduler):
    _, f2 = tiny_if
    low = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(9)).clamp(-1, 1)
    pipe = pipeline(f2, "IFSuperResolutionPipeline", scheduler)
    ref = pipe(prompt=PROMPT, image=low, num_inference_steps=10, guidance_scale=4.0, noise_level=250,
               generator=torch.Generator().manual_seed(5), output_type="pt", clean_caption=False).images
    stage2 = IFStage(str(f2), TextEncoder(str(f2), "cpu", torch.float32), "cpu", torch.float32, 2)
    stage2.low_res = low
    ours = diffkit.sample(stage2, prompts=[PROMPT], seed=5, steps=10, hooks=["cfg:4"], sampler=sampler)
    check(ours.x, ref, STAGE2_TOL)


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "EulerDiscreteScheduler", "UniPCMultistepScheduler"])
def test_ifpipeline_itself_fails_with_these_rules_which_diffkit_runs(tiny_if, scheduler):
    """Why the next test compares with a plain loop: the pipeline hands IF's six channels to any scheduler."""
    f1, _ = tiny_if
    pipe = pipeline(f1, "IFPipeline", scheduler)
    with pytest.raises(RuntimeError, match="size of tensor a"):
        pipe(PROMPT, num_inference_steps=5, guidance_scale=7.0, generator=torch.Generator().manual_seed(3),
             output_type="pt", clean_caption=False)


def hand_loop(folder, cls_name, overrides, steps, seed, scale=7.0, step_kwargs=None, device="cpu",
              dtype=torch.float32):
    """The scheduler over IF's UNet as a plain loop: CFG on the noise channels, which alone go to step."""
    import diffusers
    from diffusers import IFPipeline, UNet2DConditionModel
    from diffusers.utils.torch_utils import randn_tensor

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
    pipe = IFPipeline.from_pretrained(folder, unet=unet, safety_checker=None, watermarker=None,
                                      feature_extractor=None, requires_safety_checker=False).to(device, dtype)
    cond, null = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=True, clean_caption=False, device=device)
    s = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **overrides)
    s.set_timesteps(steps, device=device)
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    x = randn_tensor((1, 3, size, size), generator=g, device=torch.device(device), dtype=dtype) * s.init_noise_sigma
    takes_generator = "generator" in s.step.__code__.co_varnames[: s.step.__code__.co_argcount]
    with torch.no_grad():
        for t in s.timesteps:
            inp = s.scale_model_input(x, t)
            out = unet(torch.cat([inp, inp]), t, encoder_hidden_states=torch.cat([null, cond])).sample
            u, c = out[:, :3].chunk(2)
            eps = u + scale * (c - u)
            kw = dict(step_kwargs or {}, **({"generator": g} if takes_generator else {}))
            x = s.step(eps, t, x, **kw).prev_sample
    return x


@pytest.mark.parametrize("name", ["ddim", "ddim:eta=1", "euler", "euler:karras=true", "euler_ancestral", "heun",
                                  "dpmpp_2m_sde", "uni_pc", "deis"])
def test_rules_ifpipeline_rejects_equal_the_scheduler_in_a_plain_loop_over_if_s_unet(tiny_if, name):
    from diffkit import registry

    f1, _ = tiny_if
    rule = registry.make_sampler(name)
    ref = hand_loop(f1, rule.scheduler, rule.overrides(), 8, 3, step_kwargs={k: rule.args[k] for k in rule.step_keys})
    ours = diffkit.sample(load(model=str(f1), upscaler="none"), prompts=[PROMPT], seed=3, steps=8,
                          hooks=["cfg:7"], sampler=name)
    check(ours.x, ref)


def test_every_rule_runs_both_stages_with_techniques(tiny_if):
    f1, f2 = tiny_if
    b = load(model=str(f1), upscaler=str(f2))
    for name in ("euler", "heun", "uni_pc"):
        r = diffkit.sample(b, prompts=[PROMPT], seed=1, steps=3, sampler=name,
                           hooks=["cfg:4", "anagram:'an old man',view=flip_v"])
        assert r.images.shape == (1, 3, 32, 32) and torch.isfinite(r.x).all()
        assert [len(ts) for ts in r.meta["timesteps"]] == [3, 3]
