"""diffkit's flow-matching backends against diffusers' own pipelines on the same tiny models
(tests/tiny_sd.py), same prompt, seed, scheduler (the model's FlowMatch Euler), steps and guidance,
interleaved in one run on this machine with the default thread count. Target ratio <= 1.0.

    python benchmarks/flow_vs_diffusers.py --family sd3 [--steps 20] [--repeats 7]
    # writes benchmarks/results/flow_vs_diffusers_sd3.json (flux, zimage likewise)

    python benchmarks/flow_vs_diffusers.py --shaped --family flux --device cuda --dtype bf16 [--size 1024]
    # a GPU run (tools/gpu_check.sh): real-size random-weight transformers (SD3.5 medium's, Flux.1 dev's
    # shapes) and the real VAE's, timing and peak GPU memory against the pipelines;
    # writes benchmarks/results/flow_shaped_flux.json. --layers N / --heads N make a smaller model of the
    # same kind (tests/test_benchmarks.py runs it so on the CPU, that the script works before a GPU is lent)

Like with like, as benchmarks/sd_vs_diffusers.py: prompt embeddings computed once on both sides (the
pipeline gets ``prompt_embeds=``; diffkit's cache is filled first), both decode with the VAE. Guidance:
sd3 ``cfg:7`` = ``guidance_scale=7`` (two rows a step); flux the embedded ``guidance_scale=3.5`` (one row);
zimage ``cfg:4`` = ``guidance_scale=3`` (two rows). diffkit makes every model call one row on one thread
on the CPU (so a run's bytes do not depend on its batch); a third side, diffkit with whole calls, says
what that costs and what the rest of diffkit costs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import diffkit  # noqa: E402

from common import ROOT, interleaved, ratio, record, rounds, spread  # noqa: E402

PROMPT = "an oil painting of a snowy mountain village"


def sd3(root: Path, steps: int):
    import tiny_sd
    from diffusers import StableDiffusion3Pipeline

    from diffkit_plugins.sd3 import StableDiffusion3

    folder = tiny_sd.build_sd3(root)
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
    pe, npe, ppe, nppe = pipe.encode_prompt(PROMPT, PROMPT, PROMPT, device="cpu", negative_prompt="")
    backend = StableDiffusion3(str(folder))
    backend.text([PROMPT, ""])

    def theirs():
        return pipe(prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=ppe,
                    negative_pooled_prompt_embeds=nppe, guidance_scale=7.0, num_inference_steps=steps,
                    generator=torch.Generator().manual_seed(0), output_type="pt").images

    return pipe, backend, theirs, ["cfg:7"], "StableDiffusion3Pipeline"


def flux(root: Path, steps: int):
    import tiny_sd
    from diffusers import FluxPipeline

    from diffkit_plugins.flux import Flux

    folder = tiny_sd.build_flux(root)
    pipe = FluxPipeline.from_pretrained(folder)
    pe, ppe, _ = pipe.encode_prompt(PROMPT, PROMPT, device="cpu")
    backend = Flux(str(folder), height=16, width=16)
    backend.text([PROMPT])

    def theirs():
        return pipe(prompt_embeds=pe, pooled_prompt_embeds=ppe, guidance_scale=3.5, num_inference_steps=steps,
                    height=16, width=16, generator=torch.Generator().manual_seed(0), output_type="pt").images

    return pipe, backend, theirs, [], "FluxPipeline"


def zimage(root: Path, steps: int):
    import tiny_sd
    from diffusers import ZImagePipeline

    from diffkit_plugins.zimage import ZImage

    folder = tiny_sd.build_zimage(root)
    pipe = ZImagePipeline.from_pretrained(folder)
    pe, npe = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=True)
    backend = ZImage(str(folder), height=16, width=16)
    backend.text([PROMPT, ""])

    def theirs():
        return pipe(prompt_embeds=pe, negative_prompt_embeds=npe, guidance_scale=3.0, num_inference_steps=steps,
                    height=16, width=16, generator=torch.Generator().manual_seed(0), output_type="pt").images

    return pipe, backend, theirs, ["cfg:4"], "ZImagePipeline"


FAMILIES = {"sd3": sd3, "flux": flux, "zimage": zimage}

# The real models' transformer configs (their transformer/config.json on the hub), random weights: what a
# step costs on a GPU depends on the shapes, not on the values.
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384, qk_norm="rms_norm",
                   dual_attention_layers=tuple(range(13)))
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))


def flow_vae():
    """The 16-channel, 8x VAE of SD3 and Flux (their vae/config.json; random weights)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                         layers_per_block=2, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)


def clip(hidden: int, projection: bool):
    """A one-layer CLIP text encoder of the real one's width (its outputs are what the transformer reads)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=77, projection_dim=hidden)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def build_shaped(family: str, root: Path, layers: int | None, heads: int | None) -> Path:
    """A folder of the family's real shapes (``layers``/``heads``: fewer, for a smaller model of the kind)."""
    import tiny_sd
    from diffusers import (FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)

    torch.manual_seed(0)
    vae = flow_vae()
    if family == "sd3":
        cfg = dict(SD35_MEDIUM)
        if layers:
            cfg.update(num_layers=layers, dual_attention_layers=tuple(range(min(layers, 13))))
        if heads:
            cfg.update(num_attention_heads=heads, caption_projection_dim=heads * cfg["attention_head_dim"])
        vae.register_to_config(shift_factor=0.0609, scaling_factor=1.5305)
        pipe = StableDiffusion3Pipeline(transformer=SD3Transformer2DModel(**cfg), vae=vae,
                                        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                        text_encoder=clip(768, True), text_encoder_2=clip(1280, True),
                                        tokenizer=tiny_sd.tokenizer(), tokenizer_2=tiny_sd.tokenizer(),
                                        text_encoder_3=None, tokenizer_3=None)
    else:
        from transformers import T5Config, T5EncoderModel

        cfg = dict(FLUX_DEV)
        if layers:
            cfg.update(num_layers=layers, num_single_layers=2 * layers)
        if heads:
            cfg.update(num_attention_heads=heads)
        vae.register_to_config(shift_factor=0.1159, scaling_factor=0.3611)
        t5 = T5EncoderModel(T5Config(vocab_size=1000, d_model=4096, d_ff=64, d_kv=64, num_layers=1, num_heads=4))
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
        pipe = FluxPipeline(transformer=FluxTransformer2DModel(**cfg), scheduler=sched, vae=vae,
                            text_encoder=clip(768, False), tokenizer=tiny_sd.tokenizer(), text_encoder_2=t5,
                            tokenizer_2=tiny_sd.tokenizer(512))
    pipe.save_pretrained(root / family)
    return root / family


def shaped(args: argparse.Namespace) -> None:
    """diffkit against the pipeline on a real-shaped model: seconds (interleaved) and peak GPU memory."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    from diffkit_plugins.flux import Flux
    from diffkit_plugins.sd3 import StableDiffusion3
    from diffkit_plugins.sd import _dtype

    if args.family not in ("sd3", "flux"):
        raise SystemExit("--shaped builds sd3 or flux")
    device, dtype = torch.device(args.device), _dtype(args.dtype, args.device)
    folder = build_shaped(args.family, Path(tempfile.mkdtemp()), args.layers, args.heads)
    size, hooks = args.size, (["cfg:7"] if args.family == "sd3" else [])
    if args.family == "sd3":
        pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None,
                                                        torch_dtype=dtype).to(device)
        pe, npe, ppe, nppe = pipe.encode_prompt(PROMPT, PROMPT, PROMPT, device=device, negative_prompt="")
        kw = dict(prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=ppe,
                  negative_pooled_prompt_embeds=nppe, guidance_scale=7.0)
        backend = StableDiffusion3(str(folder), str(device), dtype, size, size)
        backend.text([PROMPT, ""])
    else:
        pipe = FluxPipeline.from_pretrained(folder, torch_dtype=dtype).to(device)
        pe, ppe, _ = pipe.encode_prompt(PROMPT, PROMPT, device=device)
        kw = dict(prompt_embeds=pe, pooled_prompt_embeds=ppe, guidance_scale=3.5)
        backend = Flux(str(folder), str(device), dtype, size, size)
        backend.text([PROMPT])
    pipe.set_progress_bar_config(disable=True)
    cuda = device.type == "cuda"

    def theirs():
        return pipe(**kw, num_inference_steps=args.steps, height=size, width=size,
                    generator=torch.Generator(device).manual_seed(0), output_type="pt").images.float().cpu()

    def ours():
        return diffkit.sample(backend, prompts=[PROMPT], seed=0, steps=args.steps, hooks=hooks).images.float().cpu()

    def peak(fn) -> float | None:
        if not cuda:
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**30

    diff = (ours() - theirs()).abs().max().item()  # generators differ by device: the same on the CPU only
    name = type(pipe).__name__
    peaks = {"diffkit": peak(ours), name: peak(theirs)}
    t = interleaved({"diffkit": ours, name: theirs}, args.repeats)
    params = sum(p.numel() for p in backend.transformer.parameters())
    print(f"{args.family}-shaped transformer ({params / 1e6:,.0f} M parameters), {size}x{size}, {args.steps} steps, "
          f"{args.dtype or 'default'} on {device}; max |diffkit - pipeline| = {diff:.1e}")
    for k, v in t.items():
        print(f"  {k:26s} {spread(v)}" + (f"  peak {peaks[k]:.2f} GiB" if peaks[k] is not None else ""))
    print(f"ratio diffkit / {name} = {ratio(t['diffkit'], t[name])}  (target <= 1.0)")
    record(Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"flow_shaped_{args.family}.json",
           {"family": args.family, "pipeline": name, "shaped": True, "transformer_parameters": params,
            "layers": args.layers, "heads": args.heads, "size": size, "steps": args.steps, "device": str(device),
            "dtype": str(dtype), "repeats": args.repeats, "hooks": hooks, "max_abs_diff": diff, "seconds": t,
            "peak_gib": peaks, "diffkit_over_pipeline": rounds(t["diffkit"], t[name])})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--family", choices=sorted(FAMILIES), required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--shaped", action="store_true", help="real-size random-weight sd3/flux (for a GPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None)
    ap.add_argument("--size", type=int, default=1024, help="--shaped: image height and width")
    ap.add_argument("--layers", type=int, default=None, help="--shaped: fewer transformer blocks")
    ap.add_argument("--heads", type=int, default=None, help="--shaped: fewer attention heads (a narrower model)")
    ap.add_argument("--out", default=None, help="--shaped: where the JSON goes")
    args = ap.parse_args()
    if args.shaped:
        return shaped(args)
    pipe, backend, theirs, hooks, name = FAMILIES[args.family](Path(tempfile.mkdtemp()), args.steps)
    pipe.set_progress_bar_config(disable=True)
    module = sys.modules[type(backend).__module__]

    def ours():
        return diffkit.sample(backend, prompts=[PROMPT], seed=0, steps=args.steps, hooks=hooks).images

    def one_call():  # every model call whole, as the pipeline makes it
        by_rows = module.by_rows
        module.by_rows = lambda f, device, *a: f(*a)
        try:
            return ours()
        finally:
            module.by_rows = by_rows

    diff = (ours() - theirs()).abs().max().item()
    t = interleaved({"diffkit": ours, "diffkit, whole calls": one_call, name: theirs}, args.repeats)
    print(f"tiny {args.family} (16x16 images), 1 image, {args.steps} steps of the model's FlowMatch Euler, "
          f"{' '.join(hooks) or 'embedded guidance 3.5'}, {torch.get_num_threads()} threads, prompt embeddings "
          f"computed once on both sides; max |diffkit - pipeline| = {diff:.1e} (images in [0, 1])")
    for k, v in t.items():
        print(f"  {k:26s} {spread(v)}")
    print(f"ratio diffkit / {name} = {ratio(t['diffkit'], t[name])}  (target <= 1.0)")
    print(f"ratio diffkit with whole calls / pipeline = {ratio(t['diffkit, whole calls'], t[name])}")
    record(ROOT / "benchmarks" / "results" / f"flow_vs_diffusers_{args.family}.json",
           {"family": args.family, "pipeline": name, "steps": args.steps, "repeats": args.repeats, "hooks": hooks,
            "max_abs_diff": diff, "seconds": t, "diffkit_over_pipeline": rounds(t["diffkit"], t[name]),
            "whole_calls_over_pipeline": rounds(t["diffkit, whole calls"], t[name])})


if __name__ == "__main__":
    main()
