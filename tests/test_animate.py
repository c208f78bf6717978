"""Animations (issue 24): every view of every sample as a GIF and an MP4 made from the run folder alone,
the right number of frames, the first frame the sample, the last the view exactly; the views written
beside the samples; refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffkit import animate, io, registry
from diffkit.cli import app
from diffkit.motion import Clip
from diffkit_plugins.factorize import factor_clip

runner = CliRunner()
VIEWS = ["rotate_cw", "flip", "transpose", "negate", '"skew:factor=0.5"', "inner_circle", "square_hinge", "jigsaw",
         '"patch_permute:4"', '"pixel_permute:28"']


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("anim") / "o"
    spec = "anagram:" + ",".join(str(k) for k in range(len(VIEWS))) + "," + ",".join(f"view={v}" for v in VIEWS)
    r = runner.invoke(app, ["sample", "--class", "3", "--steps", "3", "--sampler", "ddim", "--hook", spec,
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def region(frame: torch.Tensor, clip: Clip, w: int) -> torch.Tensor:
    """The image's own pixels in a captioned frame (its canvas, scaled by whole pixels, centred)."""
    import math

    scale = max(1, math.ceil(128 / (w * clip.canvas)))
    side = round(w * clip.canvas) * scale
    o = (side - w * scale) // 2
    return frame[:, o:o + w * scale:scale, o:o + w * scale:scale]


def test_sample_writes_each_view_of_each_sample_exactly(run_dir):
    img = io.load_png(run_dir / "sample-000.png")
    run = json.loads((run_dir / "run.json").read_text())
    specs = run["request"]["hooks"][0]["args"]["view"]
    for j, spec in enumerate(specs, 1):
        view = registry.get_view(spec)
        want = view.image(img)
        got = io.load_png(run_dir / f"sample-000.view{j}.png")
        if view.negate:  # 1 - x, rounded to 8 bits from the float image, not from the sample's PNG
            assert torch.allclose(got, want, atol=1 / 255 + 1e-6), spec
        else:
            assert torch.equal(got, want), spec  # the sample's own 8-bit values, moved


def test_every_view_moves_from_the_sample_to_the_view_exactly(run_dir):
    img = io.load_png(run_dir / "sample-000.png")
    [(name, clips)] = animate.clips_of(run_dir)
    assert name == "sample-000.png" and len(clips) == len(VIEWS)
    for j, clip in enumerate(clips, 1):
        fr = animate.frames(clip, n=6, hold=2)
        assert len(fr) == 2 * 2 + 6
        first, last = region(fr[0], clip, 28), region(fr[-1], clip, 28)
        view_png = io.load_png(run_dir / f"sample-000.view{j}.png")
        assert torch.allclose(first, img.expand_as(first), atol=1 / 255), clip.name
        assert torch.allclose(last, view_png.expand_as(last), atol=1 / 255), (clip.name, VIEWS[j - 1])
        middle = region(fr[5], clip, 28)
        assert not torch.allclose(middle, first, atol=0.02) and not torch.allclose(middle, last, atol=0.02), VIEWS[j - 1]
        assert clip.captions == ("3", str(j - 1))  # the sample's label, then the view's prompt
        # continuous: just before the end the frame is nearly the view, just after the start nearly the sample
        near_end = (clip.frame(0.97) - view_png).abs().mean()
        assert near_end < 0.5 * (clip.frame(0.03) - view_png).abs().mean(), (VIEWS[j - 1], near_end)
        assert (clip.frame(0.03) - img).abs().mean() < 0.5 * (clip.frame(0.97) - img).abs().mean(), VIEWS[j - 1]


def test_diffkit_animate_writes_gifs_and_mp4s_from_the_folder_alone(run_dir, tmp_path):
    import imageio_ffmpeg

    moved = tmp_path / "copy"
    shutil.copytree(run_dir, moved)  # nothing but the folder
    r = runner.invoke(app, ["animate", str(moved), "--frames", "10", "--fps", "10"])
    assert r.exit_code == 0, r.output
    assert f"wrote {len(VIEWS)} GIFs and {len(VIEWS)} MP4s" in r.output
    for j in range(1, len(VIEWS) + 1):
        gif = Image.open(moved / f"sample-000.view{j}.gif")
        total = 0
        for k in range(gif.n_frames):
            gif.seek(k)
            total += gif.info["duration"]
        assert total == (10 + 2 * animate.HOLD) * 100, (j, total)  # repeated frames merge; the time adds up
        nframes, secs = imageio_ffmpeg.count_frames_and_secs(str(moved / f"sample-000.view{j}.mp4"))
        assert nframes == 10 + 2 * animate.HOLD
    # again: refused without --overwrite, nothing touched
    before = (moved / "sample-000.view1.gif").read_bytes()
    r = runner.invoke(app, ["animate", str(moved)])
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert (moved / "sample-000.view1.gif").read_bytes() == before


def test_factorized_images_zoom_out_fade_colour_in_or_shake(tmp_path):
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    color = factor_clip(["grayscale", "color"], ["a tiger", "a rose"], img)
    assert torch.allclose(color.frame(0.0), img.mean(0, keepdim=True).expand_as(img)) and torch.equal(color.frame(1.0), img)
    assert color.captions == ("a tiger", "a rose")
    zoom = factor_clip(["low_pass:sigma=2.0,kernel=9", "high_pass:sigma=2.0,kernel=9"], ["0", "1"], img)
    assert zoom.captions == ("1", "0")  # up close the high frequencies' prompt, far away the low ones'
    assert (zoom.frame(1.0) == 1).float().mean() > 0.9  # zoomed out: mostly white canvas
    shake = factor_clip(["motion", "motion_res"], ["a horse", "a bear"], img)
    assert shake.captions == ("a bear", "a horse") and not torch.equal(shake.frame(0.3), shake.frame(0.0))
    r = runner.invoke(app, ["sample", "--class", "0", "--steps", "2", "--hook", "hybrid:1,kernel=9", "--out",
                            str(tmp_path / "h"), "--animate"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "h" / "sample-000.factorize.gif").is_file()


def test_nothing_to_animate_or_no_run_exits_2(tmp_path):
    r = runner.invoke(app, ["animate", str(tmp_path)])
    assert r.exit_code == 2 and "no finished run" in r.output
    r = runner.invoke(app, ["sample", "--class", "3", "--steps", "2", "--hook", "cfg:2", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0
    r = runner.invoke(app, ["animate", str(tmp_path / "o")])
    assert r.exit_code == 2 and "nothing to animate" in r.output
    assert not list((tmp_path / "o").glob("*.gif"))


def test_overwriting_a_run_removes_its_earlier_views(tmp_path):
    out = tmp_path / "o"
    base = ["sample", "--class", "3", "--steps", "2", "--out", str(out)]
    assert runner.invoke(app, [*base, "--hook", "anagram:5,8,view=flip,view=rotate_cw"]).exit_code == 0
    assert (out / "sample-000.view2.png").is_file()
    r = runner.invoke(app, [*base, "--hook", "anagram:5,view=flip", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert (out / "sample-000.view1.png").is_file() and not (out / "sample-000.view2.png").exists()


def test_animate_on_a_run_without_illusions_is_refused_before_sampling(tmp_path):
    r = runner.invoke(app, ["sample", "--class", "3", "--steps", "2", "--hook", "cfg:2", "--animate",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--animate animates the techniques that declare clips (anagram, factorize, hybrid)" in r.output and not (tmp_path / "o").exists()
