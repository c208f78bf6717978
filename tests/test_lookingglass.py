"""anagram's reduction=x0 and space=pixel (LookingGlass, Chang et al. 2025, on SyncTweedies' per-view states)
against reference loops written here from the paper's algorithm with diffusers' own parts, on the tiny SD
(DDIM), SD3 and Flux models of the tests (tests/tiny_sd.py).

The reference, one step: every view j has a state z_j (view 0 is the image itself; the others start as
the start noise seen through the view). Each predicts its clean latent x0_j (CFG inside each view), which
the VAE decodes, x_j = D(x0_j); r_j = x0_j - E(x_j) is what the round trip loses. The image's clean latent
is E(mean_j V_j^-1 x_j) + mean_j V_j^-1 r_j (space=pixel) or mean_j V_j^-1 x0_j (space=latent); each view's is
E(V_j mean) + V_j (mean residual); every state steps from its own (DDIM eta 0; the flow Euler step).

Images compared in [0, 1] within test_sd's TOL. Each test also shows the bound rejects the loop without
the residual, or with the noise averaged instead (reduction=mean)."""

from __future__ import annotations

import math

import pytest
import torch

import diffkit
from diffkit import warping
from diffkit.errors import UserError
from test_sd import TOL, not_flat

PROMPTS = ("a photo of a red dog", "an oil painting of a snowy mountain village")
FLIP = (lambda x: torch.flip(x, [-2]), lambda x: torch.flip(x, [-2]))  # view=flip: upside down, its own inverse
ROT = (lambda x: torch.rot90(x, 1, [-2, -1]), lambda x: torch.rot90(x, -1, [-2, -1]))  # rotate_ccw and back


def ours(backend, folder, view="flip", space="pixel", cfg=7.0, sampler=None, steps=6, hooks_extra="", **kw):
    hooks = [f"anagram:{PROMPTS[1]},view={view},reduction=x0,space={space}{hooks_extra}"] + ([f"cfg:{cfg:g}"] if cfg else [])
    options = {"model": str(folder), "device": "cpu", **kw.pop("options", {})}
    return diffkit.sample(backend, backend_options=options, prompts=[PROMPTS[0]], hooks=hooks, steps=steps, seed=3,
                          **({"sampler": sampler} if sampler else {}), **kw).images


def synchronise(x0s, view, decode, encode, space="pixel", residual=True):
    """The canonical clean latent and each view's, from the views' clean latents ``x0s`` (view 0 first)."""
    fwd, inv = view
    maps = [lambda x: x, inv]
    if space == "latent":
        x0 = torch.stack([m(e) for m, e in zip(maps, x0s)]).mean(0)
        return x0, [x0, fwd(x0)]
    images = [decode(e) for e in x0s]
    lost = [e - encode(im) if residual else torch.zeros_like(e) for e, im in zip(x0s, images)]
    image = torch.stack([m(im) for m, im in zip(maps, images)]).mean(0)
    r = torch.stack([m(e) for m, e in zip(maps, lost)]).mean(0)
    return encode(image) + r, [encode(image) + r, encode(fwd(image)) + fwd(r)]


def to_unit(img):
    return (img / 2 + 0.5).clamp(0, 1)


# ------------------------------------------------------------------------------------------------ SD, DDIM


def sd_reference(folder, view=FLIP, space="pixel", residual=True, steps=6, guidance=7.0):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    sched = DDIMScheduler.from_config(pipe.scheduler.config)  # what --sampler ddim builds
    sched.set_timesteps(steps)
    vae, sf = pipe.vae, pipe.vae.config.scaling_factor
    decode = lambda z: vae.decode(z / sf).sample  # noqa: E731
    encode = lambda x: vae.encode(x).latent_dist.mean * sf  # noqa: E731
    conds = [torch.cat(pipe.encode_prompt(p, "cpu", 1, True, negative_prompt="")[::-1]) for p in PROMPTS]
    z = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    states = [z, view[0](z)]
    abar = sched.alphas_cumprod
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            a = float(abar[t])
            x0s = []
            for zj, c in zip(states, conds):
                u, e = pipe.unet(torch.cat([zj, zj]), t, encoder_hidden_states=c).sample.chunk(2)
                eps = u + guidance * (e - u)
                x0s.append((zj - math.sqrt(1 - a) * eps) / math.sqrt(a))
            x0, cleans = synchronise(x0s, view, decode, encode, space, residual)
            eps0 = (states[0] - math.sqrt(a) * x0) / math.sqrt(1 - a)
            canonical = sched.step(eps0, t, states[0]).prev_sample  # the run's own DDIM step
            prev = int(t) - sched.config.num_train_timesteps // steps
            a2 = float(abar[prev]) if prev >= 0 else float(sched.final_alpha_cumprod)
            states = [canonical] + [math.sqrt(a2) * c + math.sqrt(1 - a2) * (zj - math.sqrt(a) * c) / math.sqrt(1 - a)
                                    for zj, c in zip(states[1:], cleans[1:])]
        return to_unit(decode(states[0]))


@pytest.mark.parametrize("space", ["pixel", "latent"])
def test_sd_equals_the_reference_loop(tiny_sd, space):
    got = ours("sd", tiny_sd["sd"], space=space, sampler="ddim")
    want = sd_reference(tiny_sd["sd"], space=space)
    not_flat(want)
    assert (got - want).abs().max() <= TOL
    if space == "pixel":
        assert (got - sd_reference(tiny_sd["sd"], residual=False)).abs().max() > TOL
        assert (got - ours("sd", tiny_sd["sd"], space="latent", sampler="ddim")).abs().max() > TOL


# ----------------------------------------------------------------------------------------- SD3, flow Euler


def flow_loop(z, view, velocity, conds, sched, decode, encode, space, residual):
    states = [z, view[0](z)]
    sig = [float(s) for s in sched.sigmas]
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            s, s2 = sig[i], sig[i + 1]
            x0, cleans = synchronise([zj - s * velocity(zj, t, c) for zj, c in zip(states, conds)], view, decode,
                                     encode, space, residual)
            canonical = sched.step((states[0] - x0) / s, t, states[0]).prev_sample  # the pipeline's Euler step
            states = [canonical] + [(1 - s2) * c + s2 * (zj - (1 - s) * c) / s for zj, c in zip(states[1:], cleans[1:])]
        return to_unit(decode(states[0]))


def sd3_parts(folder, steps, guidance):
    """The tiny SD3's scheduler (set to ``steps``), VAE decode/encode, both prompts' conditions, the guided
    velocity and the start noise, as the pipeline makes them."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
    vae = pipe.vae
    sf, shift = vae.config.scaling_factor, vae.config.shift_factor
    decode = lambda z: vae.decode(z / sf + shift).sample  # noqa: E731
    encode = lambda x: (vae.encode(x).latent_dist.mean - shift) * sf  # noqa: E731
    conds = []
    for p in PROMPTS:
        e, ne, pe, npe = pipe.encode_prompt(p, p, p, negative_prompt="", do_classifier_free_guidance=True)
        conds.append((torch.cat([ne, e]), torch.cat([npe, pe])))

    def velocity(z, t, c):
        u, v = pipe.transformer(hidden_states=torch.cat([z, z]), timestep=t.expand(2), encoder_hidden_states=c[0],
                                pooled_projections=c[1]).sample.chunk(2)
        return u + guidance * (v - u)

    pipe.scheduler.set_timesteps(steps)
    z = torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(3))
    return pipe.scheduler, decode, encode, conds, velocity, z


def sd3_reference(folder, view=FLIP, space="pixel", residual=True, steps=6, guidance=7.0):
    sched, decode, encode, conds, velocity, z = sd3_parts(folder, steps, guidance)
    return flow_loop(z, view, velocity, conds, sched, decode, encode, space, residual)


@pytest.mark.parametrize("view", ["flip", "rotate_ccw"])
def test_sd3_equals_the_reference_loop(tiny_sd3, view):
    got = ours("sd3", tiny_sd3, view=view)
    want = sd3_reference(tiny_sd3, view=FLIP if view == "flip" else ROT)
    not_flat(want)
    assert (got - want).abs().max() <= TOL
    if view == "flip":
        assert (got - sd3_reference(tiny_sd3, residual=False)).abs().max() > TOL
        mean = diffkit.sample("sd3", backend_options={"model": str(tiny_sd3), "device": "cpu"}, prompts=[PROMPTS[0]],
                              hooks=[f"anagram:{PROMPTS[1]},view=flip", "cfg:7"], steps=6, seed=3).images
        assert (got - mean).abs().max() > TOL


# ------------------------------------------------------------------------------------------ Flux, embedded


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    import tiny_sd

    return tiny_sd.build_flux(tmp_path_factory.mktemp("flux"))


def flux_reference(folder, view=FLIP, space="pixel", residual=True, steps=6, guidance=3.5):
    sched, decode, encode, conds, velocity, z = flux_parts(folder, steps, guidance)
    return flow_loop(z, view, velocity, conds, sched, decode, encode, space, residual)


def flux_parts(folder, steps, guidance):
    """The tiny Flux's scheduler (its dynamic shift for a 16 x 16 image), VAE, conditions, embedded-guidance
    velocity and start noise, as the pipeline makes them."""
    import numpy as np
    from diffusers import FluxPipeline
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    pipe = FluxPipeline.from_pretrained(folder)
    vae = pipe.vae
    sf, shift = vae.config.scaling_factor, vae.config.shift_factor
    decode = lambda z: vae.decode(z / sf + shift).sample  # noqa: E731
    encode = lambda x: (vae.encode(x).latent_dist.mean - shift) * sf  # noqa: E731
    C, h, w = 4, 8, 8  # the unpacked latent grid of a 16 x 16 image
    ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)
    conds = [pipe.encode_prompt(p, p) for p in PROMPTS]

    def velocity(z, t, c):
        emb, pooled, text_ids = c
        packed = FluxPipeline._pack_latents(z, 1, C, h, w)
        out = pipe.transformer(hidden_states=packed, timestep=t.expand(1) / 1000, guidance=torch.full((1,), guidance),
                               pooled_projections=pooled, encoder_hidden_states=emb, txt_ids=text_ids, img_ids=ids).sample
        return FluxPipeline._unpack_latents(out, 16, 16, 2)

    c = pipe.scheduler.config
    mu = calculate_shift((h // 2) * (w // 2), c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    z = torch.randn((1, C, h, w), generator=torch.Generator().manual_seed(3))
    return pipe.scheduler, decode, encode, conds, velocity, z


@pytest.mark.parametrize("space", ["pixel", "latent"])
def test_flux_equals_the_reference_loop(tiny_flux, space):
    got = ours("flux", tiny_flux, space=space, cfg=None, options={"height": 16, "width": 16, "guidance": 3.5})
    want = flux_reference(tiny_flux, space=space)
    not_flat(want)
    assert (got - want).abs().max() <= TOL
    if space == "pixel":
        assert (got - flux_reference(tiny_flux, residual=False)).abs().max() > TOL


# ------------------------------------------------------------------------------------------------- MNIST


def mnist(*hooks, sampler="ddim", **kw):
    return diffkit.sample("mnist", classes=[1], num=2, seed=0, steps=10, sampler=sampler,
                          hooks=["cfg:3", *hooks], **kw).images


def test_on_one_state_the_average_of_clean_images_is_the_average_of_noise():
    """With DDIM, a permutation view and CFG outside (several queries a step: the views' states follow the
    run's combined x0), every view's state stays the run's state seen through the view, so averaging the
    views' x0 is averaging their noise; a stochastic sampler makes the states part ways."""
    mean = mnist("anagram:7,view=flip")
    assert (mnist("anagram:7,view=flip,reduction=x0") - mean).abs().max() < 1e-4
    sde = mnist("anagram:7,view=flip", sampler="dpmpp_2m_sde")
    assert (mnist("anagram:7,view=flip,reduction=x0", sampler="dpmpp_2m_sde") - sde).abs().max() > 0.1


def test_last_steps_denoise_the_first_prompt_alone():
    full = mnist("anagram:7,view=flip,reduction=x0", sampler="dpmpp_2m_sde")
    last = mnist("anagram:7,view=flip,reduction=x0,last=3", sampler="dpmpp_2m_sde")
    assert (full - last).abs().max() > 0.1
    # in the last steps the anagram is the plain first prompt: last = all steps is the plain run
    assert torch.equal(mnist("anagram:7,view=flip,last=10"), mnist())


def test_a_batch_equals_single_runs(tiny_sd3):
    both = diffkit.sample("sd3", backend_options={"model": str(tiny_sd3), "device": "cpu"}, prompts=[PROMPTS[0]],
                          num=2, seed=3, steps=4, hooks=[f"anagram:{PROMPTS[1]},view=flip,reduction=x0,space=pixel",
                                                         "cfg:7"]).images
    for k, seed in enumerate((3, 4)):
        one = diffkit.sample("sd3", backend_options={"model": str(tiny_sd3), "device": "cpu"}, prompts=[PROMPTS[0]],
                             num=1, seed=seed, steps=4, hooks=[f"anagram:{PROMPTS[1]},view=flip,reduction=x0,"
                                                               "space=pixel", "cfg:7"]).images
        assert torch.equal(both[k: k + 1], one)


# ----------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("spec, text", [
    ("anagram:7,view=flip,space=pixel", "give reduction=x0"),
    ("anagram:7,view=flip,reduction=x0,space=pixel", "samples in pixel space already"),
    ("anagram:7,view=flip,reduction=x0,space=voxel", "voxel"),
    ("anagram:7,view=flip,reduction=median", "median"),
    ("anagram:7,view=flip,last=-1", "last"),
    ("anagram:7,view=rotate:135,reduction=x0,levels=0", "levels"),
    ("anagram:7,view=rotate:135,reduction=x0,detail=1.5", "detail"),
    ("anagram:7,view=rotate:400,reduction=x0", "degrees"),
    ("anagram:7,view=zoom:0,reduction=x0", "factor"),
    ("anagram:7,view=rotate:135", "no permutation"),
])
def test_bad_values_are_refused_by_name(spec, text):
    with pytest.raises(UserError, match=text):
        diffkit.sample("mnist", classes=[1], num=1, hooks=[spec], steps=2)


def test_a_two_evaluation_sampler_evaluating_in_between_steps_is_refused():
    with pytest.raises(UserError, match="in between steps.*or heun"):
        mnist("anagram:7,view=flip,reduction=x0", sampler="diffusers:KDPM2DiscreteScheduler")


def test_under_heun_the_views_states_take_heuns_step():
    """Heun's second evaluation is at the step's end: the views' states go there by the Euler predictor from
    their clean images and are then corrected, as the run's state is. With a permutation view each state so
    stays the run's seen through the view (reduction=x0 equals mean, as under DDIM, above), whether CFG is
    outside the anagram (the views read the run's combined estimate, ctx.evaluation) or inside it."""
    mean = mnist("anagram:7,view=flip", sampler="heun")
    assert (mnist("anagram:7,view=flip,reduction=x0", sampler="heun") - mean).abs().max() < 1e-4
    inside = lambda spec: diffkit.sample("mnist", classes=[1], num=2, seed=0, steps=10, sampler="heun",  # noqa: E731
                                         hooks=[spec, "cfg:3"]).images
    assert (inside("anagram:7,view=flip,reduction=x0") - inside("anagram:7,view=flip")).abs().max() < 1e-4


def test_the_pyramid_average_of_views_that_agree_is_not_the_image():
    """Why a warp is refused under a rule that evaluates twice a step (below): a permutation's average of
    views that agree is the image itself, a warp's pyramid average is not (the inverse rebuilds each level
    from what the view read, and the coarse level so rebuilt is not the fine one's reduction; the view's
    own pixels where it shows nothing play no part, here 0), so the clean image a warp's anagram gives
    keeps a gap from the state however small the noise gets, and Heun's slope at its second evaluation,
    (x - x0) / sigma, grows without bound as that sigma goes to 0. Should this average ever give the image
    back, the refusal can go."""
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    flip = diffkit.registry.get_view("flip")
    assert torch.equal(torch.stack([x, flip.inverse(flip.forward(x))]).mean(0), x)

    def loss(source, levels):
        r = warping.reading(source, levels)
        seen = warping.forward(x, r, levels)
        seen = torch.where(torch.isnan(seen), torch.zeros_like(seen), seen)  # the view's own pixels: here 0
        back = warping.blend([warping.laplacian(x, levels), warping.inverse(seen, r, levels)], 0.25)
        return float((back - x).abs().mean())

    for source in (warping.zoom(28, 28, 0.5), warping.rotation(28, 28, 135), warping.mirror(28, 28, 30)):
        # a loss of a part in a thousand of a unit image or more (float64 rounding: ~1e-16); one level
        # (nearest pixels, each splat back where it was read) gives the image back to rounding
        assert loss(source, warping.levels_for(28, 28, 4)) > 1e-3
        assert loss(source, 1) < 1e-12


@pytest.mark.parametrize("model, rule", [("mnist-flow", "heun"), ("mnist-h64", "heun"),
                                         ("mnist", "diffusers:KDPM2DiscreteScheduler")])
def test_a_warp_under_a_rule_that_evaluates_twice_a_step_is_refused_by_name(model, rule):
    """Measured before the refusal (docs/illusions.md, 'Heun and the warps'): under heun a warp reads as both
    digits far less often than under a one-evaluation rule, on mnist-flow and on mnist-h64's cone. Refused
    before the run, naming the rules that can, where the rule's scheduler class declares its evaluations;
    a permutation view runs (above), and so does a warp over one pyramid level."""
    with pytest.raises(UserError, match=r"\(view=zoom.*up to 4 levels.*levels=1 loses nothing\).*a second time "
                                        r"within each step.*once a step \(.*euler"):
        diffkit.sample("mnist", backend_options={"checkpoint": model}, classes=[1], num=1, steps=3, sampler=rule,
                       hooks=['anagram:7,view="zoom:0.5",reduction=x0'])
    if rule != "heun":
        return  # KDPM2's midpoints are refused under reduction=x0 whatever the view (above)
    one_level = diffkit.sample("mnist", backend_options={"checkpoint": model}, classes=[1], num=1, steps=3,
                               sampler=rule, hooks=['anagram:7,view="zoom:0.5",reduction=x0,levels=1'])
    assert one_level.images.shape == (1, 1, 28, 28)


def test_a_warp_under_heun_is_refused_before_any_weights_load_and_under_the_models_own_heun_at_setup(tmp_path):
    with pytest.raises(UserError, match="rule 'heun' evaluates the model a second time"):
        diffkit.sample("sd3", backend_options={"model": str(tmp_path / "none")}, prompts=["a"], sampler="heun",
                       hooks=["anagram:b,view=rotate:135,reduction=x0"])
    # the model's own scheduler is known once its config is read: the anagram refuses it at setup
    b = diffkit.load_backend("mnist", checkpoint="mnist-flow", device="cpu")
    b.scheduler_config = {**b.scheduler_config, "_class_name": "FlowMatchHeunDiscreteScheduler"}
    with pytest.raises(UserError, match="rule 'own' evaluates the model a second time"):
        diffkit.sample(b, classes=[1], num=1, steps=3, sampler="own", hooks=["anagram:7,view=rotate:135,reduction=x0"])
    b.scheduler_config = {**b.scheduler_config, "_class_name": "FlowMatchEulerDiscreteScheduler"}
    assert diffkit.sample(b, classes=[1], num=1, steps=3, sampler="own",
                          hooks=["anagram:7,view=rotate:135,reduction=x0"]).images.shape == (1, 1, 28, 28)


# ------------------------------------------------------------ Laplacian pyramid warping (rotate:DEG, zoom, mirror)
# The reference follows the supplementary pseudocode: the levels stacked at full size (nearest), each view
# pixel read by a 3-d grid_sample (nearest, align_corners) at (level of detail, u, v), the inverse as the
# gradient of 0.5 |read(pyramid) - [image, 1]|^2 at the zero pyramid, holes filled by scipy's nearest pixel.
# One deliberate difference: the level of detail is taken from the warp in pixels ((W - 1) u), where the
# pseudocode scales u by the side W (a 1/W difference in the log).


def ref_blur(x):
    k = torch.tensor([1.0, 4, 6, 4, 1])
    k = (k[:, None] * k[None]) / 256
    c = x.shape[1]
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect"),
                                      k.to(x.dtype).repeat(c, 1, 1, 1), groups=c)


def ref_down(x):
    return ref_blur(x)[..., ::2, ::2]


def ref_up(x):
    y = torch.zeros(*x.shape[:2], 2 * x.shape[2], 2 * x.shape[3], dtype=x.dtype)
    y[..., ::2, ::2] = x
    return ref_blur(y) * 4


def ref_laplacian(img, n):
    lp = []
    for _ in range(n - 1):
        nxt = ref_down(img)
        lp.append(img - ref_up(nxt))
        img = nxt
    return lp + [img]


def ref_gaussian(lp):
    img = lp[-1]
    gp = [img]
    for lev in lp[-2::-1]:
        img = ref_up(img) + lev
        gp.append(img)
    return gp[::-1]


def ref_grid(source, n):
    """(1, 1, H, W, 3): (level, u, v) in [-1, 1] from a warp's source pixels."""
    h, w = source.shape[:2]
    u, v = source[..., 0] / (w - 1), source[..., 1] / (h - 1)
    m = torch.stack([u * (w - 1), v * (h - 1)])
    gx = torch.nn.functional.pad(m[:, 2:, :] - m[:, :-2, :], (0, 0, 1, 1)) / 2
    gy = torch.nn.functional.pad(m[:, :, 2:] - m[:, :, :-2], (1, 1, 0, 0)) / 2
    jac = torch.sqrt((gx ** 2).sum(0) + (gy ** 2).sum(0)).clamp(min=1e-6)
    lod = (0.85 * torch.log2(jac)).clamp(0, n - 1)
    lod = 2 * lod / max(n - 1, 1) - 1
    return torch.stack([lod, 2 * u - 1, 2 * v - 1], dim=-1)[None, None]


def ref_read(gp, grid):
    h, w = gp[0].shape[-2:]
    layers = torch.stack([torch.nn.functional.interpolate(g, size=(h, w), mode="nearest") for g in gp], dim=-1)
    # in float64: grid_sample works in its input's precision, and a float32 grid moves nearest picks off by one
    return torch.nn.functional.grid_sample(layers.double(), grid.double(), mode="nearest", padding_mode="zeros",
                                           align_corners=True).squeeze(2).to(layers.dtype)


def ref_inside(source):
    h, w = source.shape[:2]
    xr, yr = torch.round(source[..., 0]), torch.round(source[..., 1])
    return (xr >= 0) & (xr <= w - 1) & (yr >= 0) & (yr <= h - 1)


def ref_forward(img, source, n):
    out = ref_read(ref_gaussian(ref_laplacian(img, n)), ref_grid(source, n))
    return torch.where(ref_inside(source), out, torch.full_like(out, float("nan")))


def ref_inverse(img, source, n):
    from scipy.ndimage import distance_transform_edt

    c = img.shape[1]
    opt = [lv.requires_grad_() for lv in ref_laplacian(torch.zeros(1, c + 1, *img.shape[-2:], dtype=img.dtype), n)]
    with torch.enable_grad():
        warped = ref_read(ref_gaussian(opt), ref_grid(source, n))
        target = torch.cat([img, torch.ones_like(img[:, :1])], 1)
        loss = 0.5 * (((warped - target) ** 2) * ref_inside(source)).sum()
        loss.backward()
    result = [(-lv.grad)[:, :c] / (-lv.grad)[:, c:] for lv in opt]
    for k in range(n - 1):
        mask = torch.isnan(result[k][0, 0])
        if mask.any() and not mask.all():
            _, (iy, ix) = distance_transform_edt(mask.numpy(), return_indices=True)
            filled = result[k][:, :, torch.from_numpy(iy), torch.from_numpy(ix)]
        else:
            filled = result[k]
        result[k] = filled - ref_up(ref_down(filled))
        result[k][:, :, mask] = float("nan")
    return result


WARPS = [("rotate:135", lambda h, w: warping.rotation(h, w, 135.0)), ("zoom:0.5", lambda h, w: warping.zoom(h, w, 0.5)),
         ("zoom:2", lambda h, w: warping.zoom(h, w, 2.0)), ("mirror:30", lambda h, w: warping.mirror(h, w, 30.0)),
         ("cone:20", lambda h, w: warping.cone(h, w, 20.0))]


@pytest.mark.parametrize("name, source", WARPS, ids=[w[0] for w in WARPS])
def test_pyramid_warping_equals_the_pseudocode(name, source):
    img = torch.rand(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    src = source(16, 16)
    n = warping.levels_for(16, 16, 4)
    r = warping.reading(src, n)
    fwd, want = warping.forward(img, r, n), ref_forward(img, src, n)
    assert torch.equal(torch.isnan(fwd), torch.isnan(want)) and (fwd - want).nan_to_num(0).abs().max() < 1e-12
    got, ref = warping.inverse(img, r, n), ref_inverse(img, src, n)
    for a, b in zip(got, ref):
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        assert (a - b).nan_to_num(0).abs().max() < 1e-10
    if name == "zoom:0.5":  # a shrinking view reads a coarser level
        assert len(r.pixels[1]) > 0
    if name == "rotate:135":  # the corners show nothing: the canonical image has holes, then the image is filled
        assert torch.isnan(got[0]).any()
    views = [got, warping.laplacian(img, n)]
    assert torch.isfinite(warping.blend(views, 0.25)).all()


def test_a_warp_at_a_quarter_turn_is_the_permutation():
    from diffkit import registry

    x = torch.arange(64.0).reshape(1, 8, 8)
    for warp, perm in [("rotate:90", "rotate_ccw"), ("rotate:-90", "rotate_cw"), ("rotate:180", "rotate_180"),
                       ("mirror:0", "flip"), ("mirror:90", "flip_h"), ("mirror:-45", "transpose"), ("zoom:1", "identity")]:
        assert torch.equal(registry.get_view(warp).image(x), registry.get_view(perm).image(x))


def stream_noise(seed, j, shape):
    import zlib

    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(f"anagram:view{j}".encode()))
    return torch.randn((1, *shape), generator=g)


def sd3_warp_reference(folder, degrees=135.0, steps=6, guidance=7.0, detail=0.25, levels=4):
    """The SD3 loop above with a warp: the pyramid blend of the decoded images and of the residuals, each view's
    clean image read through the warp, its own prediction where the warp shows nothing."""
    sched, decode, encode, conds, velocity, z = sd3_parts(folder, steps, guidance)

    def blend(canonical, viewed):
        h, w = canonical.shape[-2:]
        n = warping.levels_for(h, w, levels)
        src = warping.rotation(h, w, degrees)
        parts = [ref_laplacian(canonical, n), ref_inverse(viewed, src, n)]
        out = []
        for a, b in zip(*parts):
            x = torch.stack([a, b])
            have = ~torch.isnan(x)
            x0 = torch.where(have, x, torch.zeros_like(x))
            mean = x0.sum(0) / have.sum(0)
            weighted = (x0.abs() * x0).sum(0) / x0.abs().sum(0).clamp(min=1e-8)
            out.append(mean + detail * (weighted - mean))
        return ref_gaussian(out)[0]

    def seen(canonical, own):
        h, w = canonical.shape[-2:]
        got = ref_forward(canonical, warping.rotation(h, w, degrees), warping.levels_for(h, w, levels))
        return torch.where(torch.isnan(got), own, got)

    start = ref_forward(z, warping.rotation(8, 8, degrees), 1)
    states = [z, torch.where(torch.isnan(start), stream_noise(3, 1, (16, 8, 8)), start)]
    sig = [float(s) for s in sched.sigmas]
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            s, s2 = sig[i], sig[i + 1]
            x0s = [zj - s * velocity(zj, t, c) for zj, c in zip(states, conds)]
            images = [decode(e) for e in x0s]
            lost = [e - encode(im) for e, im in zip(x0s, images)]
            image, r = blend(images[0], images[1]), blend(lost[0], lost[1])
            x0 = encode(image) + r
            clean1 = encode(seen(image, images[1])) + seen(r, lost[1])
            canonical = sched.step((states[0] - x0) / s, t, states[0]).prev_sample
            states = [canonical, (1 - s2) * clean1 + s2 * (states[1] - (1 - s) * clean1) / s]
        return to_unit(decode(states[0]))


def test_sd3_with_a_turn_by_any_angle_equals_the_reference_loop(tiny_sd3):
    got = ours("sd3", tiny_sd3, view="rotate:135")
    want = sd3_warp_reference(tiny_sd3)
    not_flat(want)
    assert (got - want).abs().max() <= TOL
    assert (got - sd3_warp_reference(tiny_sd3, detail=0.0)).abs().max() > TOL
    assert (got - sd3_warp_reference(tiny_sd3, degrees=130.0)).abs().max() > TOL


def test_a_warp_runs_on_mnist_and_a_batch_equals_single_runs():
    both = mnist("anagram:7,view=rotate:135,reduction=x0", sampler="dpmpp_2m")
    for k, seed in enumerate((0, 1)):
        one = diffkit.sample("mnist", classes=[1], num=1, seed=seed, steps=10, sampler="dpmpp_2m",
                             hooks=["cfg:3", "anagram:7,view=rotate:135,reduction=x0"]).images
        assert torch.equal(both[k: k + 1], one)


def test_a_warp_without_reduction_x0_is_refused():
    with pytest.raises(UserError, match="no permutation"):
        diffkit.sample("mnist", classes=[1], num=1, hooks=["anagram:7,view=rotate:135"], steps=2)


# ------------------------------------------------------------------------------- time travel (travel=K)
# The reference: before every step i in the window [int(0.2 n), int(0.8 n)), the state at sigma_i is noised
# back to sigma_lo (lo = i - K, not before the first step) by the flow model's forward process,
# z_lo = (1 - s_lo) / (1 - s_i) z_i + sqrt(s_lo^2 - ((1 - s_lo) s_i / (1 - s_i))^2) eps, each view's state
# with the view of the same eps; steps lo .. i - 1 are then taken again (FreeDoM's time travel, RePaint's
# jump). eps comes from the anagram's own noise stream, one draw a travel.


def stream(seed, name):
    import zlib

    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def sd3_travel_reference(folder, travel=1, window=(0.2, 0.8), view=FLIP, steps=6, guidance=7.0, view_noise=True,
                         parts=None):
    sched, decode, encode, conds, velocity, z = (parts or sd3_parts)(folder, steps, guidance)
    sig = [float(s) for s in sched.sigmas]
    g = stream(3, "anagram:travel")

    def step(i, states):  # one LookingGlass step, the flow Euler step written out: z + (s' - s) (z - x0) / s
        t, s, s2 = sched.timesteps[i], sig[i], sig[i + 1]
        x0, cleans = synchronise([zj - s * velocity(zj, t, c) for zj, c in zip(states, conds)], view, decode, encode)
        canonical = states[0] + (s2 - s) * (states[0] - x0) / s
        return [canonical] + [(1 - s2) * c + s2 * (zj - (1 - s) * c) / s for zj, c in zip(states[1:], cleans[1:])]

    states = [z, view[0](z)]
    with torch.no_grad():
        for i in range(steps):
            if travel and int(steps * window[0]) <= i < int(steps * window[1]):
                lo = max(0, i - travel)
                a = (1 - sig[lo]) / (1 - sig[i])
                b = math.sqrt(sig[lo] ** 2 - (a * sig[i]) ** 2)
                eps = torch.randn(z.shape, generator=g)
                other = view[0](eps) if view_noise else torch.randn(z.shape)
                states = [a * states[0] + b * eps, a * states[1] + b * other]
                for m in range(lo, i):
                    states = step(m, states)
            states = step(i, states)
        return to_unit(decode(states[0]))


@pytest.mark.parametrize("travel", [1, 2])
def test_sd3_time_travel_equals_the_reference_loop(tiny_sd3, travel):
    got = ours("sd3", tiny_sd3, hooks_extra=f",travel={travel}")
    want = sd3_travel_reference(tiny_sd3, travel=travel)
    not_flat(want)
    assert (got - want).abs().max() <= TOL
    # the bound tells apart no travel, another window and independent noise for the view's state
    assert (got - ours("sd3", tiny_sd3)).abs().max() > TOL
    assert (got - sd3_travel_reference(tiny_sd3, travel=travel, window=(0.5, 0.8))).abs().max() > TOL
    if travel == 1:
        assert (got - sd3_travel_reference(tiny_sd3, view_noise=False)).abs().max() > TOL


def test_flux_time_travel_equals_the_reference_loop(tiny_flux):
    got = ours("flux", tiny_flux, cfg=None, options={"height": 16, "width": 16, "guidance": 3.5}, steps=8,
               hooks_extra=",travel=2")
    want = sd3_travel_reference(tiny_flux, travel=2, steps=8, guidance=3.5, parts=flux_parts)
    not_flat(want)
    assert (got - want).abs().max() <= TOL
    assert (got - sd3_travel_reference(tiny_flux, travel=1, steps=8, guidance=3.5, parts=flux_parts)).abs().max() > TOL


def sd3_heun_reference(folder, view=FLIP, steps=6, guidance=7.0, correct_views=True):
    """LookingGlass with Heun's method (Karras et al. 2022, alg. 1) for every state, written out in the flow
    variables, d = (z - x0) / s: each view predicts its clean latent at the step's start, every state goes
    to the step's end along its own (the Euler predictor), each predicts again there, and every state
    takes the average slope; the last step (to s = 0) is Euler's alone."""
    from diffusers import FlowMatchHeunDiscreteScheduler

    sched, decode, encode, conds, velocity, z = sd3_parts(folder, steps, guidance)
    heun = FlowMatchHeunDiscreteScheduler.from_config(sched.config)  # what --sampler heun builds on a flow model
    heun.set_timesteps(steps)
    sig = [float(v) for v in heun.sigmas[:1]] + [float(v) for v in heun.sigmas[1::2]]  # s0, s1, s1, ..., 0
    ts = heun.timesteps[::2]

    def clean(states, t, s):
        return synchronise([zj - s * velocity(zj, t, c) for zj, c in zip(states, conds)], view, decode, encode)

    states = [z, view[0](z)]
    with torch.no_grad():
        for i in range(steps):
            s, s2 = sig[i], sig[i + 1]
            x0, cleans = clean(states, ts[i], s)
            slopes = [(zj - c) / s for zj, c in zip(states, [x0] + cleans[1:])]
            ends = [zj + (s2 - s) * d for zj, d in zip(states, slopes)]
            if s2 > 0:
                x0b, cleans_b = clean(ends, ts[i + 1], s2)
                slopes_b = [(e - c) / s2 for e, c in zip(ends, [x0b] + cleans_b[1:])]
                ends = [zj + (s2 - s) * (d + db) / 2 if j == 0 or correct_views else ends[j]
                        for j, (zj, d, db) in enumerate(zip(states, slopes, slopes_b))]
            states = ends
        return to_unit(decode(states[0]))


def test_sd3_with_heun_equals_the_reference_loop(tiny_sd3):
    got = ours("sd3", tiny_sd3, sampler="heun")
    want = sd3_heun_reference(tiny_sd3)
    not_flat(want)
    assert (got - want).abs().max() <= TOL
    # the bound tells apart the views' states left at Heun's predictor, and the run under the flow Euler step
    assert (got - sd3_heun_reference(tiny_sd3, correct_views=False)).abs().max() > TOL
    assert (got - ours("sd3", tiny_sd3)).abs().max() > TOL


def sd_travel_reference(folder, travel=1, steps=6, guidance=7.0):
    """Time travel on the tiny SD with DDIM and reduction=x0 in latent space: the same loop in the
    variance-preserving form, z_lo = sqrt(abar_lo / abar_i) z_i + sqrt(1 - abar_lo / abar_i) eps."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    sf = pipe.vae.config.scaling_factor
    conds = [torch.cat(pipe.encode_prompt(p, "cpu", 1, True, negative_prompt="")[::-1]) for p in PROMPTS]
    z = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    abar = [float(sched.alphas_cumprod[t]) for t in sched.timesteps] + [float(sched.final_alpha_cumprod)]
    g = stream(3, "anagram:travel")

    def step(i, states):
        t, a, a2 = sched.timesteps[i], abar[i], abar[i + 1]
        x0s = []
        for zj, c in zip(states, conds):
            u, e = pipe.unet(torch.cat([zj, zj]), t, encoder_hidden_states=c).sample.chunk(2)
            x0s.append((zj - math.sqrt(1 - a) * (u + guidance * (e - u))) / math.sqrt(a))
        x0, cleans = synchronise(x0s, FLIP, None, None, "latent")
        eps0 = (states[0] - math.sqrt(a) * x0) / math.sqrt(1 - a)
        canonical = sched.step(eps0, t, states[0]).prev_sample  # the run's own DDIM step (it clips x0, as configured)
        return [canonical] + [math.sqrt(a2) * c + math.sqrt(1 - a2) * (zj - math.sqrt(a) * c) / math.sqrt(1 - a)
                              for zj, c in zip(states[1:], cleans[1:])]

    states = [z, FLIP[0](z)]
    with torch.no_grad():
        for i in range(steps):
            if int(steps * 0.2) <= i < int(steps * 0.8):
                lo = max(0, i - travel)
                r = abar[lo] / abar[i]
                eps = torch.randn(z.shape, generator=g)
                states = [math.sqrt(r) * s + math.sqrt(1 - r) * n for s, n in zip(states, [eps, FLIP[0](eps)])]
                for m in range(lo, i):
                    states = step(m, states)
            states = step(i, states)
        return to_unit(pipe.vae.decode(states[0] / sf).sample)


def test_sd_time_travel_equals_the_reference_loop(tiny_sd):
    got = ours("sd", tiny_sd["sd"], space="latent", sampler="ddim", hooks_extra=",travel=2")
    want = sd_travel_reference(tiny_sd["sd"], travel=2)
    not_flat(want)
    assert (got - want).abs().max() <= TOL
    assert (got - sd_travel_reference(tiny_sd["sd"], travel=1)).abs().max() > TOL


def test_time_travel_steps_again_and_a_batch_equals_single_runs():
    """travel=K costs K model evaluations more for each step of the window; a batch equals its single runs;
    with reduction=mean (no view states) it travels the run's state alone."""
    from diffkit.api import Run

    stats = {}
    for spec in ("anagram:7,view=flip,reduction=x0", "anagram:7,view=flip,reduction=x0,travel=2"):
        run = Run("mnist", classes=[1], num=1, seed=0, steps=10, sampler="ddim", hooks=[spec])
        for _ in run.steps():
            pass
        stats[spec] = run.sampler.stats["evaluations"]
    assert list(stats.values()) == [10, 10 + 2 * 6]  # window 2..7: six steps, the first two from step 0 and 1
    spec = "anagram:7,view=rotate:135,reduction=x0,travel=1"
    both = mnist(spec)
    for k, seed in enumerate((0, 1)):
        one = diffkit.sample("mnist", classes=[1], num=1, seed=seed, steps=10, sampler="ddim",
                             hooks=["cfg:3", spec]).images
        assert torch.equal(both[k: k + 1], one)
    assert (mnist("anagram:7,view=flip,travel=1") - mnist("anagram:7,view=flip")).abs().max() > 0.1


@pytest.mark.parametrize("spec, sampler, text", [
    ("anagram:7,view=flip,reduction=x0,travel=1", "dpmpp_2m", "without a history"),
    ("anagram:7,view=flip,travel=1", "heun", "without a history"),
    ("anagram:7,view=flip,travel=-1", "ddim", "travel"),
    ("anagram:7,view=flip,travel=1,travel_from=0.8,travel_to=0.2", "ddim", "is empty"),
    ("anagram:7,view=flip,travel=1,travel_to=1.5", "ddim", "travel_to"),
])
def test_bad_time_travel_is_refused_by_name(spec, sampler, text):
    with pytest.raises(UserError, match=text):
        diffkit.sample("mnist", classes=[1], num=1, hooks=[spec], steps=4, sampler=sampler)


def test_time_travel_under_a_rule_with_a_history_is_refused_before_any_weights_load(tmp_path, tiny_sd):
    """A rule declares whether it can step again (StepRule.redoes): time travel and RePaint under one that
    cannot exit 2 before the model is read (here there is none); each declaration equals its walks'."""
    from diffkit import registry

    with pytest.raises(UserError, match="rule 'dpmpp_2m' cannot on backend 'sd3'.*euler, own where"):
        diffkit.sample("sd3", backend_options={"model": str(tmp_path / "none")}, prompts=["a"],
                       hooks=["anagram:b,view=flip,travel=1"], sampler="dpmpp_2m")
    with pytest.raises(UserError, match="technique 'inpaint'.*'heun'"):
        diffkit.sample("mnist", classes=[1], hooks=["inpaint:image=x.png,mask=m.png,resample=2"], sampler="heun")
    mnist = diffkit.load_backend("mnist", device="cpu")
    with pytest.raises(UserError, match="without a history"):  # undeclared until its plan: the model's own (PNDM)
        diffkit.sample("sd", backend_options={"model": str(tiny_sd["sd"]), "device": "cpu"}, prompts=["a"], steps=2,
                       hooks=["anagram:b,view=flip,travel=1"], sampler="own")
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "i.png")
    Image.new("L", (16, 16), 255).save(tmp_path / "m.png")
    with pytest.raises(UserError, match=r"technique 'inpaint' \(resample=2\).*without a history.*'own' on backend 'sd'"):
        diffkit.sample("sd", backend_options={"model": str(tiny_sd["sd"]), "device": "cpu"}, prompts=["a"], steps=2,
                       hooks=[f"inpaint:image={tmp_path / 'i.png'},mask={tmp_path / 'm.png'},resample=2"],
                       sampler="own")
    flow = diffkit.load_backend("gaussian", formulation="flow")
    for name, cls in registry.samplers().items():
        if name == "diffusers":
            continue
        for backend in (mnist, flow):
            if backend.formulation in cls.formulations and cls().redoes(backend.formulation) is not None:
                assert cls().redoes(backend.formulation) == cls().plan(backend, steps=4).can_redo, (name, backend.name)


def test_a_warp_on_a_stage_that_takes_an_image_beside_the_state_is_refused_before_any_weights_load(tmp_path):
    """IF stage II's model takes the upscaled stage I image beside the state, which no warp maps
    (BackendInfo.conditioned_from); refused before the (here missing) weights are read, unless stage II
    is dropped."""
    spec = "anagram:b,view=rotate:135,reduction=x0"
    with pytest.raises(UserError, match="from stage 2 backend 'if'.*stages=1"):
        diffkit.sample("if", backend_options={"model": str(tmp_path / "none")}, prompts=["a"], hooks=[spec])
    for fine in ({"backend_options": {"model": str(tmp_path / "none"), "upscaler": "none"}},
                 {"backend_options": {"model": str(tmp_path / "none")}, "stages": 1}):
        with pytest.raises(UserError) as e:  # now it is the missing model that stops it
            diffkit.sample("if", prompts=["a"], hooks=[spec], **fine)
        assert "stage 2" not in str(e.value)
    with pytest.raises(UserError) as e:  # a permutation view carries it
        diffkit.sample("if", backend_options={"model": str(tmp_path / "none")}, prompts=["a"],
                       hooks=["anagram:b,view=flip,reduction=x0"])
    assert "stage 2" not in str(e.value)


@pytest.mark.parametrize("degrees", [10.0, 20.0, 35.0])
def test_the_cone_view_is_a_mirror_cones_reflection_traced_ray_by_ray(degrees):
    """Each view pixel inside the cone's rim, traced: a vertical ray down onto the cone (seen from above, the
    cone fills the view's inscribed circle), reflected about the surface's normal (numerical gradient),
    followed down to the table; outside the rim the table is seen directly."""
    h = w = 16
    src = warping.cone(h, w, degrees)
    c, half = 7.5, 8.0
    k = 1 / math.tan(math.radians(degrees))
    R = half * (k * k - 1) / (2 * k * k)  # the cone's base radius, its reflections reaching the inscribed circle
    H = k * R  # its height

    def z(p):  # the cone's surface height over the table point p
        return H - k * math.hypot(p[0] - c, p[1] - c)

    checked = 0
    for y in range(h):
        for x in range(w):
            p = (c + (x - c) * R / half, c + (y - c) * R / half)  # where the vertical ray comes down
            if math.hypot(p[0] - c, p[1] - c) > R:
                want = p
            else:
                e = 1e-6
                gx = (z((p[0] + e, p[1])) - z((p[0] - e, p[1]))) / (2 * e)
                gy = (z((p[0], p[1] + e)) - z((p[0], p[1] - e))) / (2 * e)
                n = torch.tensor([-gx, -gy, 1.0], dtype=torch.float64)
                n = n / n.norm()
                d = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
                r = d - 2 * (d @ n) * n
                assert r[2] < 0  # under 45 degrees the reflection comes down
                s = z(p) / -float(r[2])
                want = (p[0] + s * float(r[0]), p[1] + s * float(r[1]))
                checked += 1
            assert abs(float(src[y, x, 0]) - want[0]) < 1e-5 and abs(float(src[y, x, 1]) - want[1]) < 1e-5, (x, y)
    assert checked > 100
    apexish = src[7, 7] - c  # next to the apex: the outer ring, just inside the inscribed circle
    assert 0.9 * half < float(apexish.norm()) <= half


def test_a_cone_view_runs_and_bad_angles_are_refused():
    from diffkit import registry

    assert torch.equal(registry.get_view("cone:20").source(8, 8, 0.0), warping.zoom(8, 8, 1.0))
    assert mnist("anagram:7,view=cone,reduction=x0").std() > 0.1
    for bad in ("cone:45", "cone:0", "cone:60"):
        with pytest.raises(UserError, match="degrees"):
            diffkit.sample("mnist", classes=[1], num=1, hooks=[f"anagram:7,view={bad},reduction=x0"], steps=2)
