"""Anagrams and hybrids on IF equal plain hand loops written from the papers (Geng et al. 2024), both stages.

The reference loops use only diffusers (UNet, DDPMScheduler.step, the pipelines' prompt encoding) and
torch, written from the algorithms: views on the noisy model input, CFG per branch, each branch's
noise mapped back through its view's exact inverse (a hybrid: low + high pass of the two prompts'
noise), the variance channels moved back with their pixels only and averaged. IF's variance channels
are an interpolation weight, not an image: a sign or a filter on them changes the samples.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import diffkit
from conftest import IF_TOL
from diffkit.backends.deepfloyd import load
from diffkit.views import patch_permutation
from diffkit_plugins.views import jigsaw_index

PROMPT, OTHER, THIRD = "an oil painting of a snowy mountain village", "an old man", "a photo of a cat"
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


def by_index(make_index):
    """A view as the Visual Anagrams release applies a permutation: ``im.flatten()[perm]`` per pixel,
    the permutation made for the image's own size; the inverse by the inverse permutation."""
    def move(x, inverse=False):
        n = x.shape[-1]
        perm = torch.tensor(make_index(n))
        if inverse:
            inv = torch.empty_like(perm)
            inv[perm] = torch.arange(len(perm))
            perm = inv
        return x.flatten(-2)[..., perm].reshape(x.shape)

    return (lambda x: move(x)), (lambda x: move(x, True))


def skew_perm(n, factor=1.5):
    """Column i rolled down by int(factor (i - n // 2)), wrapping: output (r, i) shows input (r - shift, i)."""
    return [((r - int(factor * (i - n // 2))) % n) * n + i for r in range(n) for i in range(n)]


def inner_circle_perm(n):
    """The release's make_inner_circle_perm, with r = 3/8 of the side."""
    r, perm = n * 3 // 8, []
    for iy in range(n):
        for ix in range(n):
            x, y = ix - n // 2 + 0.5, iy - n // 2 + 0.5
            if x**2 + y**2 < r**2:
                x, y = -x, -y
            perm.append(int(x + n // 2 - 0.5) + int(y + n // 2 - 0.5) * n)
    return perm


def square_hinge_perm(n):
    """The release's make_square_hinge: 3x3 squares of side n // 3, each index block turned by rot90."""
    s, idx = n // 3, torch.arange(n * n).view(n, n)
    for i in range(3):
        for j in range(3):
            k = -1 if (i + j) % 2 == 0 else 1
            idx[i * s:(i + 1) * s, j * s:(j + 1) * s] = torch.rot90(idx[i * s:(i + 1) * s, j * s:(j + 1) * s], k)
    return idx.flatten().tolist()


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
    "patch_permute:4": (*jigsaw_ref(4), 1),  # the old square-patch "jigsaw", under its own name
    "patch_permute:2": (*jigsaw_ref(2), 1),
    # the release's names and geometric views
    "flip": (lambda x: torch.flip(x, [-2]), lambda x: torch.flip(x, [-2]), 1),
    "rotate_cw": (lambda x: torch.rot90(x, 3, [-2, -1]), lambda x: torch.rot90(x, 1, [-2, -1]), 1),
    "skew": (*by_index(skew_perm), 1),
    "inner_circle": (*by_index(inner_circle_perm), 1),
    "square_hinge": (*by_index(square_hinge_perm), 1),
    "pixel_permute:16": (*jigsaw_ref(16), 1),  # every pixel of the 16-pixel stage; 2x2 blocks at 32
    # the jigsaw's permutation is diffkit's own (its pieces are tested to be rigid and to tile, in
    # tests/test_views.py); here it runs through both stages as the release applies a permutation
    "jigsaw": (*by_index(lambda n: jigsaw_index(n, n).tolist()), 1),
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
                      for p in (PROMPT, OTHER, THIRD)}
        self.folder, self.ts, self.size = folder, list(timesteps), self.unet.config.sample_size
        self.up = None

    def start(self, gen, upscaled=None):
        """The first draw; stage II then noises the upscaled stage I image, in the pipelines' order."""
        from diffusers import DDPMScheduler
        from diffusers.utils.torch_utils import randn_tensor

        x = randn_tensor((1, 3, self.size, self.size), generator=gen, dtype=torch.float32)
        self.up = None
        if upscaled is not None:
            noising = DDPMScheduler.from_pretrained(self.folder, subfolder="image_noising_scheduler")
            up = F.interpolate(upscaled, (self.size, self.size), mode="bilinear", align_corners=True)
            noise = randn_tensor(up.shape, generator=gen, dtype=torch.float32)
            self.up = noising.add_noise(up, noise, torch.tensor([250]))
        return x

    @torch.no_grad()
    def estimate(self, x, t, branches, combine):
        """CFG per branch on its view of the model input; the views undone; ``combine(eps, var)``."""
        C, eps_list, var_list = 3, [], []
        for prompt, view in branches:
            move, unmove, sign = VIEWS[view]
            inp = x if self.up is None else torch.cat([x, self.up], 1)
            inp = sign * move(inp)  # the view of the whole model input
            cond, null = self.embed[prompt]
            kw = {} if self.up is None else {"class_labels": torch.tensor([250, 250])}
            out = self.unet(torch.cat([inp, inp]), t, encoder_hidden_states=torch.cat([cond, null]), **kw).sample
            c, u = out.chunk(2)
            eps = u[:, :C] + SCALE * (c[:, :C] - u[:, :C])  # CFG per branch
            eps_list.append(sign * unmove(eps))  # the view's exact inverse on the noise
            var_list.append(unmove(c[:, C:]))  # the variance moves back with its pixels, no sign
        eps, var = combine(eps_list, var_list)
        return torch.cat([eps, var], 1)

    def step(self, x, t, gen, branches=((PROMPT, "identity"),), combine=None):
        """One denoising step from ``t`` to the next timestep of the list, by DDPMScheduler.step."""
        est = self.estimate(x, t, branches, combine or mean)
        return self.sched.step(est, t, x, generator=gen).prev_sample

    def loop(self, combine, branches, gen, upscaled=None):
        x = self.start(gen, upscaled)
        for t in self.ts:
            x = self.step(x, t, gen, branches, combine)
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


# Stage II's random tiny UNet amplifies float32 order differences more than stage I's (up to 3.9e-4
# measured here under 1 and 2 threads, against 1e-4 in stage I): it is compared within half a grey
# level, 10x that, which every stage-II mistake in tools/mutations.py still exceeds.
STAGE2_TOL = 1 / 255


def check(ours, ref, tol=IF_TOL):
    """Within ``tol`` as floats (IF_TOL: a quarter grey level), and at most one grey level apart as 8-bit images."""
    assert (ours - ref).abs().max().item() < tol, (ours - ref).abs().max().item()
    q = lambda x: ((x / 2 + 0.5).clamp(0, 1) * 255).round()  # noqa: E731
    assert (q(ours) - q(ref)).abs().max().item() <= 1


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_anagram_equals_the_reference_loop_on_both_stages(tiny_if, stages, view):
    s1, s2 = stages
    res = run_diffkit(tiny_if, ["cfg:7", f"anagram:{OTHER},view={view}"])
    branches = [(PROMPT, "identity"), (OTHER, view)]
    check(res.stage_x[0], s1.loop(mean, branches, torch.Generator().manual_seed(SEED)))
    # Stage II from diffkit's own stage I output, so each stage is compared on identical inputs.
    check(res.x, s2.loop(mean, branches, torch.Generator().manual_seed(SEED), upscaled=res.stage_x[0]), STAGE2_TOL)


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
    check(res.x, s2.loop(hybrid(19, 2.0), branches, torch.Generator().manual_seed(SEED), upscaled=res.stage_x[0]),
          STAGE2_TOL)


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
    from diffkit.syntax import SpecError

    with pytest.raises(SpecError, match=r"kernel 33 \(kernel=33 scaled x1 for this stage\) is too large for 16x16"):
        run_diffkit(tiny_if, ["cfg:7", f"hybrid:{OTHER}"])  # refused before the first step


def test_negate_keeps_the_sign_of_the_variance_and_moves_views_variance_with_the_pixels():
    """A fake model whose variance channels are the input's pixel index: what comes back is the mean."""
    from diffkit import registry
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
        tech = registry.make_technique(f"anagram:b,view={name}")
        tech.conds = [Cond(("b",), None)]
        (est,) = compose([tech], model, 3)([Query(x, 5, Cond(("a",), None))])
        assert torch.allclose(est[:, :3], 10 * x)  # the views' exact inverses recover the noise
        assert torch.equal(est[:, 3:], index + 1), name  # variance mapped back, positive: not negated


# ---- SDEdit ----

@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 16x16 colour image saved as PNG (stage I's size, so no resizing), and the same as IF input."""
    from diffkit import io

    folder = tmp_path_factory.mktemp("photo")
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(7))
    io.save_png(img, folder / "photo.png")
    exact = io.to_uint8(img).permute(2, 0, 1).float() / 255  # what the PNG holds
    mask = torch.zeros(1, 16, 16)
    mask[:, :, :9] = 1  # white: make new
    io.save_png(mask, folder / "mask.png")
    return folder, exact[None] * 2 - 1


@pytest.mark.parametrize("strength", [0.25, 0.5, 0.8, 1.0])
def test_sdedit_strength_equals_diffusers_img2img_pipeline(tiny_if, photo, strength):
    from diffusers import IFImg2ImgPipeline

    f1, _ = tiny_if
    folder, image = photo
    pipe = IFImg2ImgPipeline.from_pretrained(f1, safety_checker=None, watermarker=None, feature_extractor=None)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, image=image, strength=strength, timesteps=TS1, guidance_scale=SCALE,
               generator=torch.Generator().manual_seed(SEED), output_type="pt", clean_caption=False).images
    ours = diffkit.sample(load(model=str(f1), upscaler="none", device="cpu"), prompts=[PROMPT], seed=SEED,
                          timesteps=TS1, hooks=["cfg:7", f"sdedit:image={folder / 'photo.png'},strength={strength}"])
    check(ours.x, ref)


@pytest.mark.parametrize("i_start", [3, 8])
def test_sdedit_i_start_equals_the_reference_loop(tiny_if, stages, photo, i_start):
    s1, _ = stages
    folder, image = photo
    ours = diffkit.sample(load(model=str(tiny_if[0]), upscaler="none", device="cpu"), prompts=[PROMPT], seed=SEED,
                          timesteps=TS1, hooks=["cfg:7", f"sdedit:image={folder / 'photo.png'},i_start={i_start}"])
    gen = torch.Generator().manual_seed(SEED)
    noise = s1.start(gen)
    x = s1.sched.add_noise(image, noise, torch.tensor([TS1[i_start]]))  # SDEdit: the image noised to t[i_start]
    for t in TS1[i_start:]:
        x = s1.step(x, t, gen)
    check(ours.x, x)


# ---- inpainting and RePaint ----

# RePaint re-runs steps (up to 41 evaluations of the random tiny UNet here), and the chain amplifies
# float32 order differences: the reference loop itself moves by 3.9e-4 in stage I between 1 and 2
# threads, and diffkit-vs-reference reached 2.7e-3 in a 12-step stage II. So RePaint is compared
# within one grey level (ONE_GREY, what the issue asks), with stage II cut to 4 steps (measured up to
# 2.1e-3), and its structure is pinned exactly by the model-call count: a resampling pass skipped,
# added or jumping elsewhere changes the count.
TS2_SHORT = [990, 660, 330, 0]
ONE_GREY = 2 / 255


@functools.lru_cache(maxsize=None)
def _short(folder):
    return Stage(folder, TS2_SHORT)


def short_stage2(tiny_if):
    return _short(tiny_if[1])


def inpaint_ref(stage, image, mask, resample, jump, upscaled=None):
    """RePaint (Lugmayr et al. 2022, Alg. 1) with CFG: after every step the known region is the original
    noised to the new timestep; every ``jump`` steps, go back ``jump`` steps by q(x_hi | x_lo) and sample
    them again, ``resample - 1`` more times. The noise it adds comes from the sample's own stream,
    seeded as diffkit seeds a plugin's named stream (a convention, not part of the algorithm)."""
    import math
    import zlib

    gen = torch.Generator().manual_seed(SEED)
    g_in = torch.Generator().manual_seed(SEED * 1_000_003 + zlib.crc32(b"inpaint"))
    abar = stage.sched.alphas_cumprod.double()
    ts, n = stage.ts, len(stage.ts)

    def paste(x, t_next):
        known = image if t_next < 0 else stage.sched.add_noise(
            image, torch.randn(image.shape, generator=g_in), torch.tensor([t_next]))
        return mask * x + (1 - mask) * known

    x = stage.start(gen, upscaled)
    for i, t in enumerate(ts):
        t_next = ts[i + 1] if i + 1 < n else -1
        x = paste(stage.step(x, t, gen), t_next)
        if resample > 1 and t_next >= 0 and (i + 1) % jump == 0:
            lo = i + 1 - jump
            for _ in range(resample - 1):
                a = (abar[ts[lo]] / abar[t_next]).item()
                x = math.sqrt(a) * x + math.sqrt(1 - a) * torch.randn(x.shape, generator=g_in)
                for k in range(lo, i + 1):
                    x = paste(stage.step(x, ts[k], gen), ts[k + 1])
    return x


def load_at(path, size, channels):
    from diffkit import io

    return io.load_image(path, (size, size), channels)[None]


@pytest.mark.parametrize("resample,jump", [(1, 1), (2, 1), (2, 3), (3, 2)])  # (2, 1) resamples into t=0 too
def test_inpaint_and_repaint_equal_the_reference_loop_on_both_stages(tiny_if, stages, photo, counting, resample,
                                                                     jump):
    s1, s2 = stages
    folder, _ = photo
    f1, f2 = tiny_if
    hook = f"inpaint:image={folder / 'photo.png'},mask={folder / 'mask.png'},resample={resample},jump={jump}"
    b = counting(load(model=str(f1), upscaler=str(f2), device="cpu"))
    res = diffkit.sample(b, prompts=[PROMPT], seed=SEED, timesteps=TS1, timesteps2=TS2_SHORT, hooks=["cfg:7", hook])
    # RePaint's cost is part of its meaning: 12 steps, plus (R - 1) x J redone steps after every J-th
    # step but the last: (3 - 1) x 2 x 5 = 20 more, each one batched call of both CFG branches.
    assert len(b.calls) == 12 + (resample - 1) * jump * (11 // jump) and set(b.calls) == {2}
    for stage, x_diffkit, up in ((s1, res.stage_x[0], None), (short_stage2(tiny_if), res.x, res.stage_x[0])):
        image = load_at(folder / "photo.png", stage.size, 3) * 2 - 1
        mask = (load_at(folder / "mask.png", stage.size, 1) > 0.5).float()
        check(x_diffkit, inpaint_ref(stage, image, mask, resample, jump, up), ONE_GREY)


def test_sdedit_in_a_two_stage_run_leaves_stage_ii_a_plain_super_resolution(tiny_if, stages, photo):
    """SDEdit edits the first stage; stage II refines that result like any other (no image is re-noised)."""
    _, s2 = stages
    folder, _ = photo
    res = run_diffkit(tiny_if, ["cfg:7", f"sdedit:image={folder / 'photo.png'},strength=0.5"])
    check(res.x, s2.loop(mean, [(PROMPT, "identity")], torch.Generator().manual_seed(SEED), upscaled=res.stage_x[0]),
          STAGE2_TOL)


def test_alternating_views_equal_the_reference_loop_on_both_stages(tiny_if, stages):
    """reduction=alternate: step i takes branch i mod n alone (the release's reduction='alternate')."""
    s1, s2 = stages

    def alternate():
        step = [0]

        def combine(eps, var):
            k = step[0] % len(eps)
            step[0] += 1
            return eps[k], var[k]
        return combine

    res = run_diffkit(tiny_if, ["cfg:7", f"anagram:{OTHER},view=rotate_180,reduction=alternate"])
    branches = [(PROMPT, "identity"), (OTHER, "rot180")]
    check(res.stage_x[0], s1.loop(alternate(), branches, torch.Generator().manual_seed(SEED)))
    check(res.x, s2.loop(alternate(), branches, torch.Generator().manual_seed(SEED), upscaled=res.stage_x[0]),
          STAGE2_TOL)


def factor_ref(name, f):
    """A factor of the Factorized Diffusion release on ``[1 x 3 x H x W]`` noise, written from its
    definitions: kernels and sigmas times the stage's size factor ``f``, kernels made odd."""
    odd = lambda k: k + (k % 2 == 0)  # noqa: E731
    gray = lambda e: e.mean(1, keepdim=True).expand_as(e)  # noqa: E731

    def motion(e):
        size = odd(7 * f)
        k = (torch.eye(size) / size)[None, None]
        return torch.cat([F.conv2d(e[:, i:i + 1], k, padding=size // 2) for i in range(3)], 1)

    def bands(e):
        k = odd(25 * f)
        mid = blur_ref(e, k, 1.0 * f)
        low = blur_ref(mid, k, 2.0 * f)
        return low, mid - low, e - mid

    return {"grayscale": gray, "color": lambda e: e - gray(e), "motion": motion, "motion_res": lambda e: e - motion(e),
            "triple_low_pass": lambda e: bands(e)[0], "triple_medium_pass": lambda e: bands(e)[1],
            "triple_high_pass": lambda e: bands(e)[2]}[name]


@pytest.mark.parametrize("parts", ["grayscale+color", "motion+motion_res",
                                   "triple_low_pass+triple_medium_pass+triple_high_pass"])
def test_factorize_equals_the_reference_loop_on_both_stages(tiny_if, stages, parts):
    """Each prompt's estimate through CFG, filtered by its part, the parts summed (the release's
    reduction='sum'); the variance the mean of the branches'."""
    s1, s2 = stages
    names = parts.split("+")
    prompts = [OTHER, THIRD][:len(names) - 1]
    res = run_diffkit(tiny_if, ["cfg:7", f"factorize:{','.join(prompts)},parts={parts}"])
    branches = [(PROMPT, "identity")] + [(p, "identity") for p in prompts]

    def summed(f):
        return lambda eps, var: (sum(factor_ref(n, f)(e) for n, e in zip(names, eps)), torch.stack(var).mean(0))

    check(res.stage_x[0], s1.loop(summed(1), branches, torch.Generator().manual_seed(SEED)))
    check(res.x, s2.loop(summed(2), branches, torch.Generator().manual_seed(SEED), upscaled=res.stage_x[0]),
          STAGE2_TOL)
