"""The zimage backend (plugin diffkit_plugins.zimage) against diffusers' ZImagePipeline and its Img2Img
pipeline on a tiny Z-Image-shaped model built from config (tests/tiny_sd.py: Qwen3 encoder, chat
template): the third flow family, one file. Images within test_sd's TOL (tests/test_sd3.py says why)."""

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


@pytest.fixture(scope="module")
def tiny_zimage(tmp_path_factory):
    import tiny_sd

    return tiny_sd.build_zimage(tmp_path_factory.mktemp("zimage"))


def theirs(folder, cls: str = "ZImagePipeline", **kw) -> torch.Tensor:
    import diffusers

    p = getattr(diffusers, cls).from_pretrained(folder)
    p.set_progress_bar_config(disable=True)
    kw = {"num_inference_steps": 6, "height": 16, "width": 16, "guidance_scale": 0.0, **kw}
    return p(PROMPT, generator=torch.Generator().manual_seed(3), output_type="pt", **kw).images


def ours(folder, hooks=(), **kw) -> torch.Tensor:
    return diffkit.sample("zimage", backend_options={"model": str(folder), "device": "cpu", "height": 16, "width": 16},
                          prompts=[PROMPT], hooks=list(hooks), steps=6, seed=3, **kw).images


def test_unguided_and_guided_equal_the_pipeline(tiny_zimage):
    plain = theirs(tiny_zimage)
    not_flat(plain)
    assert (ours(tiny_zimage) - plain).abs().max() <= TOL
    guided = theirs(tiny_zimage, guidance_scale=3.0)  # pos + 3 (pos - neg): cfg:4
    assert (ours(tiny_zimage, ["cfg:4"]) - guided).abs().max() <= TOL
    assert (guided - plain).abs().max() > TOL and (ours(tiny_zimage, ["cfg:3"]) - guided).abs().max() > TOL


def test_sdedit_equals_the_img2img_pipeline(tiny_zimage, tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    want = theirs(tiny_zimage, "ZImageImg2ImgPipeline", image=Image.open(path), strength=0.6)
    assert (ours(tiny_zimage, [f"sdedit:image={path},strength=0.6"]) - want).abs().max() <= TOL


def test_a_batch_equals_single_runs_and_techniques_run(tiny_zimage, tmp_path):
    opts = {"model": str(tiny_zimage), "device": "cpu", "height": 16, "width": 16}
    both = diffkit.sample("zimage", backend_options=opts, prompts=[PROMPT, "a cat"], seed=3, hooks=["cfg:2"], steps=3)
    one = diffkit.sample("zimage", backend_options=opts, prompts=["a cat"], seed=4, hooks=["cfg:2"], steps=3)
    assert torch.equal(both.x[1], one.x[0])  # prompts of different lengths in one batch
    out = ours(tiny_zimage, ["anagram:prompt=a photo of a cat,view=flip_v"], )
    assert torch.isfinite(out).all()


def test_bad_input_is_refused_by_name(tiny_zimage, tmp_path):
    def refused(*args: str) -> str:
        r = CliRunner().invoke(app, ["sample", "--backend", "zimage", "--prompt", "a dog", *args, "--out",
                                     str(tmp_path / "o")])
        assert r.exit_code == 2, r.output
        return " ".join(r.output.split())

    assert "--height must be a multiple of 4" in refused("--model", str(tiny_zimage), "--height", "18")
    assert "rule 'ddpm' cannot step a flow-matching model (backend 'zimage')" in refused("--rule", "ddpm")
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert "is a FluxPipeline folder: use --backend flux, not zimage" in refused("--model", str(flux))
