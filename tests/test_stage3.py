"""IF's stage III (the SD x4 upscaler, a latent v-prediction model) against diffusers' own
StableDiffusionUpscalePipeline, run as the Visual Anagrams release runs it: the first prompt, noise
level 0, the pipeline's default guidance with the model's own scheduler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import diffkit
from diffkit.cli import app
from conftest import IF_TOL

PROMPT, OTHER = "an oil painting of a snowy mountain village", "a photo of a dog"
TS1, TS2, STEPS3 = "990,660,330,0", "990,500,0", 4


def upscale_pipeline(folder, low_res: torch.Tensor, seed: int, guidance: float = 9.0, level: int = 0) -> torch.Tensor:
    """The release's stage III call: ``stage_3(prompt=prompts[0], image=image, noise_level=0, ...)``, with
    the steps cut to STEPS3 and one generator seeded with the sample's seed."""
    from diffusers import StableDiffusionUpscalePipeline

    pipe = StableDiffusionUpscalePipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt=PROMPT, image=low_res, noise_level=level, num_inference_steps=STEPS3, guidance_scale=guidance,
                generator=[torch.Generator().manual_seed(seed)], output_type="pt").images


def three_stages(tiny_if, tiny_x4, out, *extra: str) -> CliRunner:
    f1, f2 = tiny_if
    return CliRunner().invoke(app, [
        "sample", "-b", "if", "--model", str(f1), "--upscaler", str(f2), "--stage3", str(tiny_x4),
        "-O", f"stage3_steps={STEPS3}", "--prompt", PROMPT, "--hook", f"anagram:{OTHER},view=flip", "--hook", "cfg:7",
        "--timesteps", TS1, "--timesteps2", TS2, "--device", "cpu", "--seed", "3", "--out", str(out), *extra])


def test_stage3_equals_the_upscale_pipeline(tiny_if, tiny_x4, tmp_path, threads):
    """Two samples, each one's stage III equal to the pipeline given its stage II image and seed."""
    r = three_stages(tiny_if, tiny_x4, tmp_path / "o", "-n", "2")
    assert r.exit_code == 0, r.output
    saved = load_file(tmp_path / "o" / "final.safetensors")
    low = saved["stage2_x"]  # stage II's final state in [-1, 1], what the release hands stage III
    assert low.shape == (2, 3, 32, 32) and saved["stage3_images"].shape == (2, 3, 128, 128)
    assert low.min() < 0  # the pipeline reads a tensor with negatives as [-1, 1], as the release passes it
    for i, seed in enumerate((3, 4)):
        ref = upscale_pipeline(tiny_x4, low[i: i + 1], seed)
        # images in [0, 1]: IF_TOL / 2 is a quarter of a grey level (conftest.py says why this bound)
        assert (saved["stage3_images"][i: i + 1] - ref).abs().max() < IF_TOL / 2, i
    meta = json.loads((tmp_path / "o" / "run.json").read_text())
    assert len(meta["timesteps"]) == 3 and len(meta["timesteps"][2]) == STEPS3


def test_stage3_tolerance_catches_a_wrong_guidance_seed_or_image(tiny_if, tiny_x4, tmp_path):
    """The bound above is no blanket: the mistakes one could make (the run's guidance instead of the
    pipeline's, another seed, IF II's noise level 250 instead of the release's 0) each move stage III by far
    more: over 5 grey levels each."""
    r = three_stages(tiny_if, tiny_x4, tmp_path / "o")
    assert r.exit_code == 0, r.output
    saved = load_file(tmp_path / "o" / "final.safetensors")
    low, ours = saved["stage2_x"], saved["stage3_images"]
    for ref in (upscale_pipeline(tiny_x4, low, 3, guidance=7.0), upscale_pipeline(tiny_x4, low, 4),
                upscale_pipeline(tiny_x4, low, 3, level=250)):
        assert (ours - ref).abs().max() > 10 * IF_TOL


def test_stage3_writes_each_view_of_the_1024_pixel_image(tiny_if, tiny_x4, tmp_path):
    r = three_stages(tiny_if, tiny_x4, tmp_path / "o")
    assert r.exit_code == 0, r.output
    img = np.asarray(Image.open(tmp_path / "o" / "sample-000.png"))
    view = np.asarray(Image.open(tmp_path / "o" / "sample-000.view1.png"))
    assert img.shape[:2] == (128, 128) and (view == img[::-1]).all()  # the release's save_illusion at 1024


def test_two_stages_stop_before_stage3(tiny_if, tiny_x4):
    f1, f2 = tiny_if
    opts = {"model": str(f1), "upscaler": str(f2), "stage3": str(tiny_x4), "device": "cpu"}
    res = diffkit.sample("if", prompts=[PROMPT], backend_options=opts, timesteps=[990, 0], timesteps2=[990, 0],
                         stages=2)
    assert res.images.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("args, says", [
    (["--stage3", "IF1"], "is not a diffusers Stable Diffusion x4 upscaler folder"),
    (["-O", "stage3_noise_level=400"], "stage3_noise_level"),
    (["--upscaler", "none"], "--stage3 needs a stage II"),
    (["-O", "stage3_steps=0"], "stage3_steps"),
])
def test_bad_stage3_input_exits_2_before_a_model_loads(tiny_if, tiny_x4, tmp_path, monkeypatch, args, says):
    from diffusers import UNet2DConditionModel

    def no_load(*a, **k):
        raise AssertionError("a model loaded")

    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", no_load)
    f1, f2 = tiny_if
    args = [str(f1) if a == "IF1" else a for a in args]
    base = ["sample", "-b", "if", "--model", str(f1), "--prompt", PROMPT, "--device", "cpu",
            "--out", str(tmp_path / "o")]
    if "--upscaler" not in args:
        base += ["--upscaler", str(f2)]
    if "--stage3" not in args:
        base += ["--stage3", str(tiny_x4)]
    r = CliRunner().invoke(app, base + args)
    assert r.exit_code == 2, r.output
    assert says in " ".join(r.output.split()), r.output
    assert not (tmp_path / "o").exists()
