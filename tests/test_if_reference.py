"""Anagrams and hybrids on IF equal plain hand loops written from the papers (Geng et al. 2024), both stages.

The reference loops use only diffusers (UNet, DDPMScheduler.step, the pipelines' prompt encoding) and
torch, written from the algorithms: views on the noisy model input, CFG per branch, each branch's
noise mapped back through its view's exact inverse (a hybrid: low + high pass of the two prompts'
noise), the variance channels moved back with their pixels only and averaged. IF's variance channels
are an interpolation weight, not an image: a sign or a filter on them changes the samples.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import diffkit
from conftest import IF_TOL
from diffkit.backends.deepfloyd import load
from diffkit.views import patch_permutation

PROMPT, OTHER = "an oil painting of a snowy mountain village", "an old man"
TS1 = list(range(990, -1, -90))
TS2 = list(range(990, -1, -110))
SCALE, SEED = 7.0, 3


def jigsaw_ref(grid: int):
    """Patch i of the output is patch perm[i] of the input, written as a plain loop over patches."""
    perm = patch_permutation(grid)

    def move(x, p):
        h, w = x.shape[-2] // grid, x.shape[-1] // grid
        out = torch.empty_like(x)
        for i, j in enumerate(p.tolist()):
            r, c, rj, cj = divmod(i, grid) + divmod(j, grid)
            out[..., r * h:(r + 1) * h, c * w:(c + 1) * w] = x[..., rj * h:(rj + 1) * h, cj * w:(cj + 1) * w]
        return out

    return (lambda x: move(x, perm)), (lambda x: move(x, torch.argsort(perm)))


# name -> (rearrangement, its inverse, sign): written independently of diffkit.views
VIEWS = {
    "identity": (lambda x: x, lambda x: x, 1),
    "flip_v": (lambda x: torch.flip(x, [-2]), lambda x: torch.flip(x, [-2]), 1),
    "flip_h": (lambda x: torch.flip(x, [-1]), lambda x: torch.flip(x, [-1]), 1),
    "rot90": (lambda x: torch.rot90(x, 1, [-2, -1]), lambda x: torch.rot90(x, 3, [-2, -1]), 1),
    "rot180": (lambda x: torch.rot90(x, 2, [-2, -1]), lambda x: torch.rot90(x, 2, [-2, -1]), 1),
    "rot270": (lambda x: torch.rot90(x, 3, [-2, -1]), lambda x: torch.rot90(x, 1, [-2, -1]), 1),
    "transpose": (lambda x: x.transpose(-1, -2), lambda x: x.transpose(-1, -2), 1),
    "negate": (lambda x: x, lambda x: x, -1),
    "jigsaw": (*jigsaw_ref(4), 1),
    "jigsaw2": (*jigsaw_ref(2), 1),
}


def blur_ref(x, size, sigma):
    """2-D Gaussian blur with an outer-product kernel and reflect padding."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r**2 / (2 * sigma**2))
    k = (g[:, None] * g[None, :] / g.sum() ** 2).to(x.dtype)
    c = x.shape[1]
    pad = size // 2
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), k.expand(c, 1, size, size), groups=c)


class Stage:
    """One IF stage as the reference loops use it: diffusers' UNet, schedulers and prompt encoding."""

    def __init__(self, folder, timesteps):
        from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel

        self.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
        self.sched = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        self.sched.set_timesteps(timesteps=timesteps)
        pipe = IFPipeline.from_pretrained(folder, unet=self.unet, safety_checker=None, watermarker=None,
                                          feature_extractor=None, requires_safety_checker=False)
        self.embed = {p: pipe.encode_prompt(p, do_classifier_free_guidance=True, clean_caption=False)
                      for p in (PROMPT, OTHER)}
        self.folder = folder

    @torch.no_grad()
    def loop(self, combine, branches, gen, upscaled=None):
        """``branches``: [(prompt, view name)]; ``combine(eps list, var list)`` -> (eps, var)."""
        C = 3
        H = self.unet.config.sample_size
        from diffusers.utils.torch_utils import randn_tensor

        x = randn_tensor((1, C, H, H), generator=gen, dtype=torch.float32)
        if upscaled is not None:
            noising = __import__("diffusers").DDPMScheduler.from_pretrained(self.folder,
                                                                           subfolder="image_noising_scheduler")
            up = F.interpolate(upscaled, (H, H), mode="bilinear", align_corners=True)
            noise = randn_tensor(up.shape, generator=gen, dtype=torch.float32)
            up = noising.add_noise(up, noise, torch.tensor([250]))
        for t in self.sched.timesteps:
            eps_list, var_list = [], []
            for prompt, view in branches:
                move, unmove, sign = VIEWS[view]
                inp = x if upscaled is None else torch.cat([x, up], 1)
                inp = sign * move(inp)  # the view of the whole model input
                cond, null = self.embed[prompt]
                kw = {} if upscaled is None else {"class_labels": torch.tensor([250, 250])}
                out = self.unet(torch.cat([inp, inp]), t, encoder_hidden_states=torch.cat([cond, null]), **kw).sample
                c, u = out.chunk(2)
                eps = u[:, :C] + SCALE * (c[:, :C] - u[:, :C])  # CFG per branch
                eps_list.append(sign * unmove(eps))  # the view's exact inverse on the noise
                var_list.append(unmove(c[:, C:]))  # the variance moves back with its pixels, no sign
            eps, var = combine(eps_list, var_list)
            x = self.sched.step(torch.cat([eps, var], 1), t, x, generator=gen).prev_sample
        return x


def mean(eps, var):
    return torch.stack(eps).mean(0), torch.stack(var).mean(0)


@pytest.fixture(scope="module")
def stages(tiny_if):
    f1, f2 = tiny_if
    return Stage(f1, TS1), Stage(f2, TS2)


def run_diffkit(tiny_if, hooks):
    f1, f2 = tiny_if
    return diffkit.sample(load(model=str(f1), upscaler=str(f2), device="cpu"), prompts=[PROMPT], seed=SEED,
                          timesteps=TS1, timesteps2=TS2, hooks=hooks)


def check(ours, ref):
    """Within a quarter grey level as floats, so at most one grey level apart as 8-bit images."""
    assert (ours - ref).abs().max().item() < IF_TOL, (ours - ref).abs().max().item()
    q = lambda x: ((x / 2 + 0.5).clamp(0, 1) * 255).round()  # noqa: E731
    assert (q(ours) - q(ref)).abs().max().item() <= 1


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_anagram_equals_the_reference_loop_on_both_stages(tiny_if, stages, view):
    s1, s2 = stages
    res = run_diffkit(tiny_if, ["cfg:7", f"anagram:{OTHER},view={view}"])
    branches = [(PROMPT, "identity"), (OTHER, view)]
    check(res.stage_x[0], s1.loop(mean, branches, torch.Generator().manual_seed(SEED)))
    # Stage II from diffkit's own stage I output, so each stage is compared on identical inputs.
    check(res.x, s2.loop(mean, branches, torch.Generator().manual_seed(SEED), upscaled=res.stage_x[0]))


def test_hybrid_equals_the_reference_loop_on_both_stages_with_the_cut_scaled(tiny_if, stages):
    s1, s2 = stages
    res = run_diffkit(tiny_if, ["cfg:7", f"hybrid:{OTHER},kernel=9,sigma=1"])
    branches = [(PROMPT, "identity"), (OTHER, "identity")]

    def hybrid(size, sigma):
        def combine(eps, var):
            low, high = eps[0], eps[1]
            return blur_ref(low, size, sigma) + high - blur_ref(high, size, sigma), (var[0] + var[1]) / 2
        return combine

    check(res.stage_x[0], s1.loop(hybrid(9, 1.0), branches, torch.Generator().manual_seed(SEED)))
    # Stage II is twice the size here (IF: four times): the same cut is kernel 19, sigma 2.
    check(res.x, s2.loop(hybrid(19, 2.0), branches, torch.Generator().manual_seed(SEED), upscaled=res.stage_x[0]))


def test_hybrid_kernel_scales_as_the_factorized_diffusion_code_does():
    from diffkit_plugins.hybrid import scaled_kernel

    assert scaled_kernel(33, 2.0, 4.0) == (133, 8.0)  # IF II: 64 -> 256 px
    assert scaled_kernel(33, 2.0, 1.0) == (33, 2.0) and scaled_kernel(9, 1.0, 2.0) == (19, 2.0)


def test_fixed_hybrid_keeps_pixels_and_refuses_a_kernel_too_large_for_a_stage(tiny_if):
    f1, f2 = tiny_if
    b = load(model=str(f1), upscaler=str(f2), device="cpu")
    fixed = diffkit.sample(b, prompts=[PROMPT], seed=SEED, timesteps=TS1, timesteps2=TS2,
                           hooks=["cfg:7", f"hybrid:{OTHER},kernel=9,sigma=1,fixed=true"]).x
    scaled = run_diffkit(tiny_if, ["cfg:7", f"hybrid:{OTHER},kernel=9,sigma=1"]).x
    assert (fixed - scaled).abs().max() > 50 * IF_TOL  # the option changes stage II's cut
    from diffkit.spec import SpecError

    with pytest.raises(SpecError, match=r"kernel 33 \(kernel=33 scaled x1 for this stage\) is too large for 16x16"):
        run_diffkit(tiny_if, ["cfg:7", f"hybrid:{OTHER}"])  # refused before the first step


def test_negate_keeps_the_sign_of_the_variance_and_moves_views_variance_with_the_pixels():
    """A fake model whose variance channels are the input's pixel index: what comes back is the mean."""
    from diffkit import plugins
    from diffkit.denoise import compose
    from diffkit.state import Cond, Query

    H = 4
    index = torch.arange(H * H, dtype=torch.float64).reshape(1, 1, H, H).expand(1, 3, H, H)

    def model(queries):  # noise: 10 x input; variance: where each pixel came from, always positive
        out = []
        for q in queries:
            view = q.view[-1] if q.view else "identity"
            move, _, _ = VIEWS[view]
            out.append(torch.cat([10 * q.x, move(index) + 1], 1))
        return out

    x = torch.randn(1, 3, H, H, dtype=torch.float64)
    for name in ("negate", "flip_v", "rot90"):
        tech = plugins.make_technique(f"anagram:b,view={name}")
        tech.conds = [Cond(("b",), None)]
        (est,) = compose([tech], model, 3)([Query(x, 5, Cond(("a",), None))])
        assert torch.allclose(est[:, :3], 10 * x)  # the views' exact inverses recover the noise
        assert torch.equal(est[:, 3:], index + 1), name  # variance mapped back, positive: not negated
