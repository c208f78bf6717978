"""The sd3 backend (plugin diffkit_plugins.sd3) against diffusers' StableDiffusion3Pipeline and its
Img2Img pipeline on a tiny SD3-shaped model built from config (tests/tiny_sd.py: no hub, no T5).

Images are compared in [0, 1] after the VAE decodes them, within test_sd's TOL (a quarter of a grey
level): diffkit keeps the flow state variance-preserving (x / sqrt((1 - s)^2 + s^2)) and makes the
velocity back from its noise and clean-image estimates, each a float32 rounding away from the
pipeline's, which the flow scheduler's float32 step carries to the end (6e-7 here, 1/1700 of the bound);
guidance 6 for 7, another seed or a step fewer moves the images past the bound (by 7x, 980x and 1.9x
here: the random one-layer transformer barely depends on the step count), tested below."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import diffkit
from diffkit.cli import app
from test_sd import TOL, not_flat

PROMPT = "a photo of a red dog"


def pipe(cls_name: str, folder):
    import diffusers

    # the tiny model has no T5, which the pipelines take only when told so
    p = getattr(diffusers, cls_name).from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
    p.set_progress_bar_config(disable=True)
    return p


def ours(folder, **kw) -> torch.Tensor:
    kw = {"prompts": [PROMPT], "hooks": ["cfg:7"], "steps": 10, "seed": 3, **kw}
    return diffkit.sample("sd3", backend_options={"model": str(folder), "device": "cpu"}, **kw).images


def theirs(folder, guidance: float = 7.0, steps: int = 10, seed: int = 3) -> torch.Tensor:
    return pipe("StableDiffusion3Pipeline", folder)(PROMPT, guidance_scale=guidance, num_inference_steps=steps,
                                                   height=16, width=16, generator=torch.Generator().manual_seed(seed),
                                                   output_type="pt").images


def test_the_command_equals_the_pipeline_and_the_bound_catches_mistakes(tiny_sd3, tmp_path):
    r = CliRunner().invoke(app, ["sample", "--backend", "sd3", "--model", str(tiny_sd3), "--prompt", PROMPT,
                                 "--technique", "cfg:7", "--steps", "10", "--seed", "3", "-n", "1", "--height", "16",
                                 "--width", "16", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    got = torch.from_numpy(np.asarray(Image.open(tmp_path / "o" / "sample-000.png"), dtype=np.float32) / 255)
    want = theirs(tiny_sd3)[0].permute(1, 2, 0)
    not_flat(want)
    assert (got - want).abs().max() <= 1 / 255 + 1e-6  # the PNG's rounding: one grey level
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["request"]["backend"] == "sd3"
    exact = ours(tiny_sd3)[0].permute(1, 2, 0)
    assert (exact - want).abs().max() <= TOL
    for wrong in (theirs(tiny_sd3, guidance=6.0), theirs(tiny_sd3, seed=4), theirs(tiny_sd3, steps=9)):
        assert (exact - wrong[0].permute(1, 2, 0)).abs().max() > TOL


def test_sdedit_equals_the_img2img_pipeline(tiny_sd3, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "in.png"
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    got = ours(tiny_sd3, hooks=["cfg:7", f"sdedit:image={path},strength=0.6"])
    want = pipe("StableDiffusion3Img2ImgPipeline", tiny_sd3)(PROMPT, image=Image.open(path), strength=0.6,
                                                             guidance_scale=7.0, num_inference_steps=10,
                                                             generator=torch.Generator().manual_seed(3),
                                                             output_type="pt").images
    not_flat(want)
    assert (got - want).abs().max() <= TOL


@pytest.mark.parametrize("rule", ["euler", "heun", "dpmpp_2m", "uni_pc"])
def test_every_flow_rule_runs_and_a_batch_equals_single_runs(tiny_sd3, rule):
    both = diffkit.sample("sd3", backend_options={"model": str(tiny_sd3), "device": "cpu"}, prompts=[PROMPT], num=2,
                          seed=3, hooks=["cfg:4"], sampler=rule, steps=3)
    one = diffkit.sample("sd3", backend_options={"model": str(tiny_sd3), "device": "cpu"}, prompts=[PROMPT], num=1,
                         seed=4, hooks=["cfg:4"], sampler=rule, steps=3)
    assert torch.equal(both.x[1], one.x[0])


@pytest.mark.parametrize("hooks", [
    ["anagram:prompt=a photo of a cat,view=flip_v"],
    ["hybrid:prompt=a photo of a cat,kernel=5,sigma=1"],
    ["cfg:3", 'factorize:a photo of a cat,parts="low_pass:sigma=1,kernel=5+high_pass:sigma=1,kernel=5"'],
    ["inpaint:image={img},mask={mask}"],
    ['reference:image={img},part="low_pass:sigma=1,kernel=5"'],
])
def test_every_technique_runs_on_sd3(tiny_sd3, tmp_path, hooks):
    img, mask = tmp_path / "img.png", tmp_path / "mask.png"
    Image.new("RGB", (16, 16), (200, 40, 40)).save(img)
    m = Image.new("L", (16, 16), 0)
    m.paste(255, (8, 0, 16, 16))
    m.save(mask)
    out = ours(tiny_sd3, hooks=[h.format(img=img, mask=mask) for h in hooks], steps=3)
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()


def refused(tmp_path, *args: str) -> str:
    r = CliRunner().invoke(app, ["sample", "--backend", "sd3", "--prompt", "a dog", *args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert not (tmp_path / "o").exists()
    return " ".join(r.output.split())


def test_bad_input_is_refused_by_name_before_weights_load(tiny_sd3, tmp_path, monkeypatch):
    from diffusers import SD3Transformer2DModel

    monkeypatch.setattr(SD3Transformer2DModel, "from_pretrained", lambda *a, **k: pytest.fail("weights loaded"))
    assert "--height must be a multiple of 2" in refused(tmp_path, "--model", str(tiny_sd3), "--height", "17")
    said = refused(tmp_path, "--model", str(tiny_sd3), "--rule", "ddpm")
    assert "rule 'ddpm' cannot step a flow-matching model (backend 'sd3')" in said
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert "is a FluxPipeline folder" in refused(tmp_path, "--model", str(flux))
    sd = tmp_path / "sd"
    sd.mkdir()
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert "is not a StableDiffusion3 folder" in refused(tmp_path, "--model", str(sd))


def test_inpaint_with_the_initial_noise_equals_the_inpaint_pipelines_latents(tiny_sd3, tmp_path):
    """``inpaint:...,noise=initial`` is StableDiffusion3InpaintPipeline at strength 1 on a 16-channel
    transformer (its latent blend). Compared as latents: the inpaint pipeline decodes ``latents / scale``
    without adding the VAE's shift_factor, unlike StableDiffusion3Pipeline and its Img2Img pipeline
    (diffusers 0.42), so its images are shifted; diffkit decodes every SD3 run as the text-to-image
    pipeline does."""
    from PIL import ImageDraw

    Image.fromarray(np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    mask = Image.new("L", (16, 16), 0)
    ImageDraw.Draw(mask).ellipse((3, 2, 12, 13), fill=255)  # white: repaint; not aligned with the latent grid
    mask.save(tmp_path / "mask.png")
    want = pipe("StableDiffusion3InpaintPipeline", tiny_sd3)(
        PROMPT, image=Image.open(tmp_path / "in.png"), mask_image=Image.open(tmp_path / "mask.png"), strength=1.0,
        guidance_scale=7.0, num_inference_steps=6, height=16, width=16, generator=torch.Generator().manual_seed(3),
        output_type="latent").images
    spec = f"inpaint:image={tmp_path / 'in.png'},mask={tmp_path / 'mask.png'}"
    got = diffkit.sample("sd3", backend_options={"model": str(tiny_sd3), "device": "cpu"}, prompts=[PROMPT],
                         hooks=["cfg:7", spec + ",noise=initial"], steps=6, seed=3).x
    # float32: a few roundings of 2^-24 relative a step (the state's scale there and back, the velocity from
    # its estimates, the blend), eight a step over the six steps, on latents of size |want|
    bound = 6 * 8 * 2.0**-24 * max(1.0, float(want.abs().max()))
    assert (got - want).abs().max() <= bound
    fresh = diffkit.sample("sd3", backend_options={"model": str(tiny_sd3), "device": "cpu"}, prompts=[PROMPT],
                           hooks=["cfg:7", spec], steps=6, seed=3).x
    assert (fresh - want).abs().max() > 10 * bound  # RePaint's fresh noise: another result
