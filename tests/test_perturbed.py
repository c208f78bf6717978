"""Guidance from inside the model (plugin diffkit_plugins.perturbed: pag, seg, slg) against diffusers'
own pipelines on tiny models built from config: StableDiffusionPAGPipeline, StableDiffusionXLPAGPipeline,
StableDiffusion3PAGPipeline and StableDiffusion3Pipeline's skip-layer guidance; SEG against the SEG-SDXL
release's blur written out here; the joining with cfg, the refusals.

Images are compared in [0, 1] within test_sd's TOL (a quarter of a grey level), as test_sd's and
test_sd3's equalities, for the same reasons; each test also shows the bound catches a wrong scale.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from diffkit.cli import app
from test_sd import PROMPTS, TOL, gens, not_flat, ours, pipeline
from test_sd3 import ours as sd3, pipe as sd3_pipeline


@pytest.mark.parametrize("backend,cls", [("sd", "StableDiffusionPAGPipeline"), ("sdxl", "StableDiffusionXLPAGPipeline")])
def test_pag_after_cfg_equals_the_pag_pipeline(tiny_sd, backend, cls):
    import diffusers

    pipe = getattr(diffusers, cls).from_pretrained(tiny_sd[backend], pag_applied_layers=["mid"],
                                                   **({} if "XL" in cls else {"safety_checker": None}))
    pipe.set_progress_bar_config(disable=True)

    def theirs(g: float, s: float) -> torch.Tensor:
        return pipe(PROMPTS, num_inference_steps=10, guidance_scale=g, pag_scale=s, generator=gens(3, 4),
                    output_type="pt").images

    want = theirs(7.5, 3.0)
    not_flat(want)
    got = ours(tiny_sd[backend], backend, hooks=["cfg:7.5", "pag:scale=3,layers=mid"], steps=10)
    assert (got - want).abs().max() < TOL
    # the bound catches the term scaled by g (pag nested inside cfg, not joined) and another pag scale
    nested = ours(tiny_sd[backend], backend, hooks=["cfg:7.5", "pag:scale=0.4,layers=mid"], steps=10)
    assert (nested - want).abs().max() > TOL
    assert (got - theirs(7.5, 2.0)).abs().max() > TOL
    plain = pipeline("StableDiffusionPipeline" if backend == "sd" else "StableDiffusionXLPipeline", tiny_sd[backend])
    assert (got - plain(PROMPTS, num_inference_steps=10, guidance_scale=7.5, generator=gens(3, 4),
                        output_type="pt").images).abs().max() > TOL


def test_pag_alone_equals_the_pipeline_without_cfg(tiny_sd):
    import diffusers

    pipe = diffusers.StableDiffusionPAGPipeline.from_pretrained(tiny_sd["sd"], pag_applied_layers=["mid"],
                                                                safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(PROMPTS, num_inference_steps=10, guidance_scale=1.0, pag_scale=2.0, pag_adaptive_scale=0.002,
                generator=gens(3, 4), output_type="pt").images
    got = ours(tiny_sd["sd"], hooks=["pag:scale=2,adaptive=0.002"], steps=10)
    not_flat(want)
    assert (got - want).abs().max() < TOL


def test_pag_on_sd3_equals_the_sd3_pag_pipeline(tiny_sd3):
    want = sd3_pipeline("StableDiffusion3PAGPipeline", tiny_sd3).__class__.from_pretrained(
        tiny_sd3, text_encoder_3=None, tokenizer_3=None, pag_applied_layers=["blocks.0"])(
        PROMPTS[0], guidance_scale=7.0, pag_scale=3.0, num_inference_steps=10, height=16, width=16,
        generator=torch.Generator().manual_seed(3), output_type="pt").images
    not_flat(want)
    for layers in ("0", "blocks.0"):  # diffkit's block index and diffusers' own pattern
        got = sd3(tiny_sd3, hooks=["cfg:7", f"pag:scale=3,layers={layers}"])
        assert (got - want).abs().max() < TOL
    assert (sd3(tiny_sd3, hooks=["cfg:7", "pag:scale=2,layers=0"]) - want).abs().max() > TOL


def test_slg_after_cfg_equals_the_sd3_pipeline_s_skip_layer_guidance(tiny_sd3):
    pipe = sd3_pipeline("StableDiffusion3Pipeline", tiny_sd3)

    def theirs(s: float, start: float = 0.01, stop: float = 0.2) -> torch.Tensor:
        return pipe(PROMPTS[0], guidance_scale=7.0, num_inference_steps=10, height=16, width=16,
                    skip_guidance_layers=[0], skip_layer_guidance_scale=s, skip_layer_guidance_start=start,
                    skip_layer_guidance_stop=stop, generator=torch.Generator().manual_seed(3), output_type="pt").images

    want = theirs(2.8, 0.01, 0.5)
    not_flat(want)
    got = sd3(tiny_sd3, hooks=["cfg:7", "slg:scale=2.8,layers=0,stop=0.5"])
    assert (got - want).abs().max() < TOL
    assert (sd3(tiny_sd3, hooks=["cfg:7", "slg:layers=0"]) - theirs(2.8)).abs().max() < TOL  # the defaults
    assert (got - theirs(2.0, 0.01, 0.5)).abs().max() > TOL
    assert (got - theirs(2.8, 0.01, 0.3)).abs().max() > TOL  # the steps it acts on


def release_blur(query: torch.Tensor, sigma: float) -> torch.Tensor:
    """The SEG-SDXL release's perturbed query ``[N x L x D]`` as its SEGCFGSelfAttnProcessor makes it
    (there on ``[N x heads x L x d]``, the same grid): a Gaussian of ``sigma`` or, above 9999, the mean."""
    n, length, dim = query.shape
    side = math.isqrt(length)
    q = query.permute(0, 2, 1).reshape(n, dim, side, side).clone()
    if sigma > 9999.0:
        q[:] = q.mean(dim=(-2, -1), keepdim=True)
    else:
        k = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
        k = min(k, side - (side % 2 - 1))
        x = torch.linspace(-(k - 1) * 0.5, (k - 1) * 0.5, steps=k)
        pdf = torch.exp(-0.5 * (x / sigma).pow(2))
        x_kernel = pdf / pdf.sum()
        k2 = torch.mm(x_kernel[:, None], x_kernel[None, :]).expand(dim, 1, k, k)
        q = F.conv2d(F.pad(q, [k // 2] * 4, mode="reflect"), k2, groups=dim)
    return q.reshape(n, dim, length).permute(0, 2, 1)


@pytest.mark.parametrize("sigma", [1.0, 2.5, 1e7])
def test_seg_blurs_the_queries_as_the_release(sigma):
    from diffkit_plugins.sd import seg_blur

    q = torch.randn(2, 64, 12, generator=torch.Generator().manual_seed(0))
    got = seg_blur(q, sigma)
    assert torch.allclose(got, release_blur(q, sigma), atol=1e-6)
    assert not torch.allclose(got, q, atol=1e-3)


def test_seg_after_cfg_is_cfg_plus_the_blurred_branch_s_term(tiny_sd):
    """seg joined to cfg: uncond + g (c - uncond) + s (c - c_seg), c_seg the UNet with its self-attention
    queries blurred (the release's processor, by hand here, on the same UNet)."""
    import diffusers

    class Release:  # the release's processor on a self-attention layer: queries blurred, keys and values not
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
            n = hidden_states.shape[0]
            q = release_blur(attn.to_q(hidden_states), 1e7)
            k, v = attn.to_k(hidden_states), attn.to_v(hidden_states)
            d = k.shape[-1] // attn.heads
            q, k, v = (a.view(n, -1, attn.heads, d).transpose(1, 2) for a in (q, k, v))
            h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, -1, attn.heads * d)
            h = attn.to_out[1](attn.to_out[0](h))
            return (h + hidden_states if attn.residual_connection else h) / attn.rescale_output_factor

    pipe = pipeline("StableDiffusionPipeline", tiny_sd["sd"])
    unet = pipe.unet
    seg = {n: Release() if n.startswith(("down_blocks.1", "mid_block", "up_blocks.0")) and "attn1" in n else p
           for n, p in unet.attn_processors.items()}
    plain = dict(unet.attn_processors)
    scheduler = diffusers.PNDMScheduler.from_config(pipe.scheduler.config)
    emb, neg = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
    latents = torch.cat([torch.randn(1, 4, 8, 8, generator=g) for g in gens(3, 4)]) * scheduler.init_noise_sigma
    scheduler.set_timesteps(10)
    with torch.no_grad():
        for t in scheduler.timesteps:
            both = unet(torch.cat([latents] * 2), t, encoder_hidden_states=torch.cat([neg, emb])).sample
            u, c = both.chunk(2)
            unet.set_attn_processor(dict(seg))  # it empties the dict it is given
            p = unet(latents, t, encoder_hidden_states=emb).sample
            unet.set_attn_processor(dict(plain))
            latents = scheduler.step(u + 7.5 * (c - u) + 10.0 * (c - p), t, latents).prev_sample
        want = pipe.image_processor.postprocess(pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample,
                                                output_type="pt")
    seg = "seg:scale=10,layers=down.1+mid+up.0"  # every self-attention layer: on mid alone the term is ~TOL here
    got = ours(tiny_sd["sd"], hooks=["cfg:7.5", seg], steps=10)
    not_flat(want)
    assert (got - want).abs().max() < TOL
    for wrong in (["cfg:7.5", seg.replace("10", "7")], ["cfg:7.5", seg + ",blur=0.5"], ["cfg:7.5"]):
        assert (ours(tiny_sd["sd"], hooks=wrong, steps=10) - want).abs().max() > TOL


def test_a_perturbed_branch_is_one_more_call_and_a_batch_equals_single_runs(tiny_sd):
    from diffkit.api import Run

    def run(**kw):
        r = Run("sd", backend_options={"model": str(tiny_sd["sd"]), "device": "cpu"}, hooks=["cfg:5", "pag"],
                sampler="ddim", steps=3, **kw)
        states = list(r.steps())
        return r, states[-1].x

    both, x2 = run(prompts=PROMPTS, seed=3)
    _, x1 = run(prompts=PROMPTS[1:], seed=4)
    assert torch.equal(x2[1], x1[0])
    # a step: one call for the 2 samples' cond and uncond rows, one for their perturbed cond rows
    assert both.sampler.stats == {"evaluations": 2 * 3, "rows": 3 * (4 + 2)}


def pair_specs(tmp_path, size: int) -> dict[str, str]:
    from PIL import Image

    img, mask = tmp_path / "img.png", tmp_path / "mask.png"
    Image.new("RGB", (size, size), (200, 40, 40)).save(img)
    m = Image.new("L", (size, size), 0)
    m.paste(255, (size // 2, 0, size, size))
    m.save(mask)
    return {"anagram": "anagram:prompt=a photo of a cat,view=flip",
            "factorize": 'factorize:a photo of a cat,parts="low_pass:sigma=1,kernel=5+high_pass:sigma=1,kernel=5"',
            "inpaint": f"inpaint:image={img},mask={mask}", "sdedit": f"sdedit:image={img},strength=0.8",
            "apg": "apg:scale=4,eta=0", "hybrid": "hybrid:prompt=a photo of a cat,kernel=5,sigma=1"}


@pytest.mark.parametrize("term", ["pag:scale=10,layers=down.1+mid+up.0", "seg:scale=10,layers=down.1+mid+up.0",
                                  "slg:scale=10,layers=0,start=0,stop=1"])
def test_each_perturbed_guidance_composes_with_every_technique(tiny_sd, tiny_sd3, tmp_path, term):
    """Beside cfg, then each technique after it (nested inside the joined guidance) or, for the guiders,
    in its place: the pair's bytes are neither the technique's alone nor the term's alone."""
    if term.startswith("slg"):
        run = lambda hooks: sd3(tiny_sd3, hooks=hooks, steps=3)
        specs = pair_specs(tmp_path, 16)
    else:
        run = lambda hooks: ours(tiny_sd["sd"], hooks=hooks, steps=3, prompts=PROMPTS[:1])
        specs = pair_specs(tmp_path, 16)
    alone = run(["cfg:5", term])
    for name, spec in specs.items():
        pair = [spec, term] if name == "apg" else ["cfg:5", term, spec]
        other = run([spec] if name == "apg" else ["cfg:5", spec])
        both = run(pair)
        assert torch.isfinite(both).all()
        assert not torch.equal(both, other), f"{term} was ignored beside {spec}"
        assert not torch.equal(both, alone), f"{spec} was ignored beside {term}"


@pytest.mark.parametrize("args,words", [
    (["--backend", "mnist", "--class", "3", "--hook", "pag"], ["pag", "mnist", "attention_identity"]),
    (["--backend", "sd", "--prompt", "a", "--hook", "slg:layers=0"], ["slg", "sd", "block_skip"]),
    (["--hook", "pag:layers=mid+", "--class", "3"], ["layers", "mid+"]),
    (["--hook", "slg:layers=a", "--class", "3"], ["slg", "numbers"]),
    (["--hook", "slg:start=0.5,stop=0.2", "--class", "3"], ["start", "stop"]),
    (["--hook", "pag:scale=nan", "--class", "3"], ["pag", "scale"]),
    (["--hook", "seg:blur=0", "--class", "3"], ["seg", "blur"]),
])
def test_bad_perturbed_guidance_exits_2_naming_it_before_any_model_loads(tmp_path, monkeypatch, args, words):
    import diffkit_plugins.sd as sd

    monkeypatch.setattr(sd, "_load", lambda *a, **k: pytest.fail("the model loaded"))
    r = CliRunner().invoke(app, ["sample", *args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    said = " ".join(r.output.split())
    assert all(w in said for w in words), said
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("hook,words", [("pag:layers=nowhere", ["nowhere"]), ("slg:layers=5", ["5", "0..0"])])
def test_layers_the_model_lacks_exit_2_naming_them(tiny_sd3, tmp_path, hook, words):
    r = CliRunner().invoke(app, ["sample", "--backend", "sd3", "--model", str(tiny_sd3), "--prompt", "a", "--hook",
                                 "cfg:5", "--hook", hook, "--steps", "2", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    said = " ".join(r.output.split())
    assert all(w in said for w in words), said
