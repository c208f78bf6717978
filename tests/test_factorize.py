"""Factorized diffusion (issue 24): every decomposition sums to the identity, each factor is the release's
definition, factorize composes like a combiner, and the reference-image mode keeps the image's part."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit import factors, io, registry
from conftest import refused_hook
from diffkit.cli import app

runner = CliRunner()


def part(spec: str, x: torch.Tensor, f: float = 1.0) -> torch.Tensor:
    factor, args = registry.get_factor(spec)
    return factor(x, f, args)


@pytest.mark.parametrize("names", factors.IDENTITIES)
@pytest.mark.parametrize("size,f", [(64, 1.0), (256, 4.0)])
def test_every_decomposition_sums_to_the_identity(names, size, f):
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(size))
    total = sum(part(n, x, f) for n in names)
    assert torch.allclose(total, x, atol=1e-12, rtol=0), (total - x).abs().max()


def test_each_factor_is_the_releases_definition():
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gray = x.mean(1, keepdim=True).repeat(1, 3, 1, 1)
    assert torch.equal(part("grayscale", x), gray) and torch.allclose(part("color", x), x - gray)
    # motion: the diagonal line kernel eye(7) / 7, zero padding; a single bright pixel becomes a line
    delta = torch.zeros(1, 1, 15, 15, dtype=torch.float64)
    delta[..., 7, 7] = 1
    line = part("motion", delta)[0, 0]
    assert torch.allclose(line, torch.diag(torch.tensor([0.0] * 4 + [1 / 7] * 7 + [0.0] * 4, dtype=line.dtype)))
    # scaled with the stage: length 7 at 64 px is 29 at 256 (the release: 7 * 4, made odd)
    big = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    big[..., 32, 32] = 1
    assert (part("motion", big, 4.0)[0, 0].diagonal() > 0).sum() == 29
    # three bands: sigma 1, then sigma 2 on what it left, kernel 25 (101 at 256 px)
    from diffkit.filters import lowpass

    mid = lowpass(x, 25, 1.0)
    assert torch.equal(part("triple_high_pass", x), x - mid)
    assert torch.equal(part("triple_low_pass", x), lowpass(mid, 25, 2.0))
    assert torch.equal(part("triple_medium_pass", x), mid - lowpass(mid, 25, 2.0))
    assert torch.equal(part("triple_low_pass", x, 4.0), lowpass(lowpass(x, 101, 4.0), 101, 8.0))
    assert torch.equal(part("scale:-14", x), -14 * x)


def test_factorize_with_low_and_high_pass_is_todays_hybrid():
    kw = dict(classes=[3], steps=4, sampler="ddim", seed=2)
    a = diffkit.sample("mnist", hooks=["cfg:3", "factorize:8,parts=low_pass+high_pass"], **kw)
    b = diffkit.sample("mnist", hooks=["cfg:3", "hybrid:8"], **kw)
    assert torch.equal(a.x, b.x)


def test_prompt_arithmetic_weights_each_prompts_estimate(counting):
    """scale:15 + scale:-14 on the exact Gaussian backend: 15 eps(class 0) - 14 eps(class 1), by hand."""
    from diffkit.backends.gaussian import GaussianBackend
    from diffkit.state import Cond

    g = GaussianBackend()
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([150])
    tech = registry.make_technique("factorize:1,parts=scale:15+scale:-14")
    ests = [g.predict(x, t, g.encode([0])), g.predict(x, t, g.encode([1]))]
    from diffkit.state import Query

    tech.factor = 1.0
    got = tech.reduce(Query(x, 150, Cond(("c", 0), g.encode([0]))), ests)
    assert torch.allclose(got, 15 * ests[0] - 14 * ests[1])
    res = diffkit.sample(g, classes=[0], steps=5, hooks=["factorize:1,parts=scale:15+scale:-14"])
    assert torch.isfinite(res.x).all()


def test_the_reference_replaces_the_states_component_after_every_step(tmp_path):
    """x <- x - part(x) + part(forward(ref, t')) (after the last step: the reference itself), as the
    release's inverse-problem mode; the rest of the state is left as the step made it."""
    from diffkit.state import Step

    img = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(3))
    io.save_png(img, tmp_path / "ref.png")
    ref = io.load_image(tmp_path / "ref.png", (28, 28), 1)[None]
    spec = f"reference:image={tmp_path / 'ref.png'},part=\"low_pass:sigma=2,kernel=9\""
    run = diffkit.Run("mnist", classes=[7], steps=6, sampler="ddim", hooks=[spec])
    tech, ctx = run.techniques[0], run._ctx0
    y = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    keep = lambda z: part("low_pass:sigma=2,kernel=9", z)  # noqa: E731
    # the noised reference the hook draws first, drawn by a second run of the same seeds
    twin = diffkit.Run("mnist", classes=[7], steps=6, sampler="ddim", hooks=[spec])._ctx0
    for t_next, target in [(100, twin.forward(ref, 100, stream="reference")), (-1, ref)]:
        step = Step(0, 150, t_next, y.clone(), y, None)
        tech.diffkit_after_step(ctx=ctx, step=step)
        assert torch.allclose(step.x, y - keep(y) + keep(target), atol=1e-6)
    for _ in run.steps():
        pass
    plain = diffkit.sample("mnist", classes=[7], steps=6, sampler="ddim").x
    # the sampled picture's low frequencies are pulled to the reference's, far more than a plain sample's
    assert (keep(run.result.x) - keep(ref)).abs().mean() < 0.5 * (keep(plain) - keep(ref)).abs().mean()


def test_a_projecting_part_is_kept_exactly_on_if(tiny_if, tmp_path):
    """grayscale is a projection (its own part): the final image's grayscale is the reference's."""
    from diffkit.backends.deepfloyd import load

    f1, _ = tiny_if
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(5))
    io.save_png(img, tmp_path / "ref.png")
    b = load(model=str(f1), upscaler="none", device="cpu")
    res = diffkit.sample(b, prompts=["a red fox"], steps=4, hooks=["cfg:4", f"reference:image={tmp_path / 'ref.png'},part=grayscale"])
    ref = b.from_image(io.load_image(tmp_path / "ref.png", (16, 16), 3)[None])
    assert torch.allclose(part("grayscale", res.x.float()), part("grayscale", ref.float()), atol=1e-5)
    assert not torch.allclose(part("color", res.x.float()), part("color", ref.float()), atol=1e-2)


@pytest.mark.parametrize("spec,text", [
    ("factorize:8,parts=grayscale+color", "part 'grayscale' needs 3-channel images; backend 'mnist' makes 1-channel"),
    ("factorize:8,parts=low_pass+nope", "unknown factor 'nope'"),
    ("factorize:8,parts=low_pass", "names 1 part(s) for 2 prompt(s)"),
    ("factorize:8,parts=\"low_pass:kernel=99+high_pass:kernel=99\"", "cannot act on this stage's 28x28 images"),
    ("factorize:8", "missing required parameter 'parts'"),
    ("reference:part=low_pass", "missing required parameter 'image'"),
])
def test_bad_factorizations_exit_2_and_write_nothing(tmp_path, spec, text):
    refused_hook(tmp_path, spec, text)


def test_run_json_records_every_parts_arguments(tmp_path):
    r = runner.invoke(app, ["sample", "--class", "3", "--steps", "2", "--hook",
                            "factorize:8,parts=\"low_pass:sigma=1,kernel=9+high_pass:sigma=1,kernel=9\"",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    args = json.loads((tmp_path / "o" / "run.json").read_text())["request"]["hooks"][0]["args"]
    assert args["parts"] == "low_pass:sigma=1.0,kernel=9+high_pass:sigma=1.0,kernel=9"
    assert registry.technique_from("factorize", args).args == args  # made again from the record
