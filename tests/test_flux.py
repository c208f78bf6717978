"""The flux backend (plugin diffkit_plugins.flux) against diffusers' FluxPipeline and FluxImg2ImgPipeline
on tiny Flux-shaped models built from config (tests/tiny_sd.py: no hub; a dev-like model with a guidance
embedding and a schnell-like one without).

Images in [0, 1] within test_sd's TOL, as tests/test_sd3.py says why; techniques act on the unpacked
latent grid, which the backend packs 2x2 around each model call."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import diffkit
from diffkit.cli import app
from test_sd import TOL, not_flat

PROMPT = "a photo of a red dog"


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    import tiny_sd

    root = tmp_path_factory.mktemp("flux")
    return {"dev": tiny_sd.build_flux(root), "schnell": tiny_sd.build_flux(root, "schnell", guidance_embeds=False)}


def pipe(cls_name: str, folder):
    import diffusers

    p = getattr(diffusers, cls_name).from_pretrained(folder)
    p.set_progress_bar_config(disable=True)
    return p


def ours(folder, hooks=(), **kw) -> torch.Tensor:
    options = {"model": str(folder), "device": "cpu", "height": 16, "width": 16, **kw.pop("options", {})}
    kw = {"prompts": [PROMPT], "hooks": list(hooks), "steps": 6, "seed": 3, **kw}
    return diffkit.sample("flux", backend_options=options, **kw).images


def theirs(folder, cls: str = "FluxPipeline", seed: int = 3, **kw) -> torch.Tensor:
    kw = {"num_inference_steps": 6, "height": 16, "width": 16, **kw}
    return pipe(cls, folder)(PROMPT, generator=torch.Generator().manual_seed(seed), output_type="pt", **kw).images


def test_embedded_guidance_equals_the_pipeline(tiny_flux):
    got = ours(tiny_flux["dev"], options={"guidance": 3.5})
    want = theirs(tiny_flux["dev"], guidance_scale=3.5)
    not_flat(want)
    assert (got - want).abs().max() <= TOL
    assert (ours(tiny_flux["dev"]) - want).abs().max() <= TOL  # 3.5 is the default, as the pipeline's
    other = theirs(tiny_flux["dev"], guidance_scale=1.0)
    assert (got - other).abs().max() > TOL  # the embedded guidance reaches the model


def test_true_cfg_equals_the_pipelines_true_cfg_scale(tiny_flux, tmp_path):
    r = CliRunner().invoke(app, ["sample", "--backend", "flux", "--model", str(tiny_flux["dev"]), "--prompt", PROMPT,
                                 "--technique", "cfg:4", "--steps", "6", "--seed", "3", "--height", "16", "--width",
                                 "16", "-O", "guidance=3.5", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    want = theirs(tiny_flux["dev"], guidance_scale=3.5, true_cfg_scale=4.0, negative_prompt="")
    got = torch.from_numpy(np.asarray(Image.open(tmp_path / "o" / "sample-000.png"), dtype=np.float32) / 255)
    assert (got - want[0].permute(1, 2, 0)).abs().max() <= 1 / 255 + 1e-6
    exact = ours(tiny_flux["dev"], ["cfg:4"])
    assert (exact - want).abs().max() <= TOL
    assert (exact - theirs(tiny_flux["dev"], guidance_scale=3.5)).abs().max() > TOL  # true CFG did something


def test_a_model_without_a_guidance_embedding(tiny_flux, tmp_path):
    got = ours(tiny_flux["schnell"], ["cfg:3"])
    want = theirs(tiny_flux["schnell"], true_cfg_scale=3.0, negative_prompt="")
    assert (got - want).abs().max() <= TOL
    r = CliRunner().invoke(app, ["sample", "--backend", "flux", "--model", str(tiny_flux["schnell"]), "--prompt", PROMPT,
                                 "-O", "guidance=3.5", "--height", "16", "--width", "16", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "has no guidance embedding" in " ".join(r.output.split()), r.output
    assert not (tmp_path / "o").exists()


def test_sdedit_equals_the_img2img_pipeline(tiny_flux, tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    got = ours(tiny_flux["dev"], [f"sdedit:image={path},strength=0.6"])
    want = theirs(tiny_flux["dev"], "FluxImg2ImgPipeline", image=Image.open(path), strength=0.6,
                  guidance_scale=3.5)  # the text-to-image pipeline's default (Img2Img's own is 7)
    not_flat(want)
    assert (got - want).abs().max() <= TOL


def test_techniques_see_the_unpacked_grid_and_batches_equal_single_runs(tiny_flux, tmp_path):
    from diffkit_plugins.flux import pack, unpack

    x = torch.randn(2, 4, 8, 6)
    assert torch.equal(unpack(pack(x), 8, 6), x)
    from diffkit.request import RunRequest

    be = RunRequest.of("flux", backend_options={"model": str(tiny_flux["dev"]), "device": "cpu",
                                                       "height": 16, "width": 16}).load_backend()
    assert be.sample_shape == (4, 8, 8)
    mask = tmp_path / "mask.png"
    m = Image.new("L", (16, 16), 0)
    m.paste(255, (8, 0, 16, 16))
    m.save(mask)
    img = tmp_path / "img.png"
    Image.new("RGB", (16, 16), (200, 40, 40)).save(img)
    for hooks in (["anagram:prompt=a photo of a cat,view=flip_v"], [f"inpaint:image={img},mask={mask}"],
                  ["hybrid:prompt=a photo of a cat,kernel=5,sigma=1"], [f"sdedit:image={img},strength=0.7"],
                  ["cfg:3", 'factorize:a photo of a cat,parts="low_pass:sigma=1,kernel=5+high_pass:sigma=1,kernel=5"'],
                  [f'reference:image={img},part="low_pass:sigma=1,kernel=5"']):
        assert torch.isfinite(ours(tiny_flux["dev"], hooks, steps=3)).all()
    both = ours(tiny_flux["dev"], ["cfg:2"], num=2, steps=3, sampler="dpmpp_2m")
    one = ours(tiny_flux["dev"], ["cfg:2"], num=1, seed=4, steps=3, sampler="dpmpp_2m")
    assert torch.equal(both[1], one[0])


def test_bad_input_is_refused_by_name_before_weights_load(tiny_flux, tmp_path, monkeypatch):
    from diffusers import FluxTransformer2DModel

    monkeypatch.setattr(FluxTransformer2DModel, "from_pretrained", lambda *a, **k: pytest.fail("weights loaded"))

    def refused(*args: str) -> str:
        r = CliRunner().invoke(app, ["sample", "--backend", "flux", "--prompt", "a dog", *args, "--out",
                                     str(tmp_path / "o")])
        assert r.exit_code == 2, r.output
        assert not (tmp_path / "o").exists()
        return " ".join(r.output.split())

    assert "--height must be a multiple of 4" in refused("--model", str(tiny_flux["dev"]), "--height", "18")
    assert "rule 'ddim' cannot step a flow-matching model (backend 'flux')" in refused(
        "--model", str(tiny_flux["dev"]), "--rule", "ddim")
    sd3 = tmp_path / "sd3"
    sd3.mkdir()
    (sd3 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    assert "is a StableDiffusion3Pipeline folder: use --backend sd3, not flux" in refused("--model", str(sd3))


@pytest.mark.parametrize("rule", ["heun", "diffusers:FlowMatchHeunDiscreteScheduler"])
def test_a_rule_that_cannot_shift_by_the_image_size_is_refused_by_name_before_weights_load(tiny_flux, tmp_path,
                                                                                          monkeypatch, rule):
    """FlowMatchHeunDiscreteScheduler has no dynamic shifting: refused from the folder's scheduler config,
    read before any weights (BackendInfo.scheduler_of); a schnell-like config without the shift takes it."""
    from diffkit import registry

    info = registry.get_backend("flux")
    monkeypatch.setattr(info, "load", lambda **kw: pytest.fail("the backend was loaded"))
    r = CliRunner().invoke(app, ["sample", "--backend", "flux", "--model", str(tiny_flux["dev"]), "--prompt", "a dog",
                                 "--rule", rule, "--height", "16", "--width", "16", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "backend 'flux' shifts its sigmas by the image's size, which " \
        "FlowMatchHeunDiscreteScheduler cannot" in " ".join(r.output.split()), r.output
    assert not (tmp_path / "o").exists()
    monkeypatch.undo()
    fixed = tmp_path / "fixed"
    shutil.copytree(tiny_flux["dev"], fixed)
    cfg = fixed / "scheduler" / "scheduler_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "use_dynamic_shifting": False}))
    r = CliRunner().invoke(app, ["sample", "--backend", "flux", "--model", str(fixed), "--prompt", "a dog",
                                 "--rule", rule, "--steps", "2", "--height", "16", "--width", "16",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output


def test_inpaint_with_the_initial_noise_equals_the_inpaint_pipeline(tiny_flux, tmp_path):
    from PIL import ImageDraw

    Image.fromarray(np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    mask = Image.new("L", (16, 16), 0)
    ImageDraw.Draw(mask).ellipse((3, 2, 12, 13), fill=255)
    mask.save(tmp_path / "mask.png")
    want = theirs(tiny_flux["dev"], "FluxInpaintPipeline", image=Image.open(tmp_path / "in.png"),
                  mask_image=Image.open(tmp_path / "mask.png"), strength=1.0, guidance_scale=3.5)
    not_flat(want)
    spec = f"inpaint:image={tmp_path / 'in.png'},mask={tmp_path / 'mask.png'},noise=initial"
    assert (ours(tiny_flux["dev"], [spec]) - want).abs().max() <= TOL
