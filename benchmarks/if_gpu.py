"""For a GPU machine with the real IF weights: fp16 diffkit against diffusers' pipelines doing the same
work (stage I, or stage I + II with --upscaler), same prompt, seed, steps and guidance.

    python benchmarks/if_gpu.py --model DeepFloyd/IF-I-XL-v1.0 [--upscaler DeepFloyd/IF-II-L-v1.0]

Times: both sides resident, one warm-up call each, then ``--repeats`` rounds interleaved; median,
range and the round-by-round ratio. Peak memory: each side alone on the GPU (the other's weights
freed), one call after a warm-up, so a figure never includes the other side's weights. Prompt
embeddings are computed once on both sides. Needs CUDA and the gated weights (or local folders).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import diffkit  # noqa: E402
from diffkit.backends.deepfloyd import load  # noqa: E402

from common import ratio, spread  # noqa: E402

PROMPT = "an oil painting of people around a campfire"
TS1 = list(range(990, -1, -30))  # 34 steps, each one model call of both CFG branches
TS2 = list(range(990, -1, -30))


def diffkit_side(args):
    backend = load(model=args.model, upscaler=args.upscaler, device="cuda", dtype="fp16")
    backend.text([PROMPT, ""])  # embeddings once, as the pipelines get theirs

    def call():
        return diffkit.sample(backend, prompts=[PROMPT], seed=0, timesteps=TS1, timesteps2=TS2,
                              hooks=["cfg:7"]).x
    return backend, call


def diffusers_side(args):
    from diffusers import IFPipeline, IFSuperResolutionPipeline

    kw = dict(variant="fp16", torch_dtype=torch.float16, safety_checker=None, watermarker=None, feature_extractor=None)
    pipe1 = IFPipeline.from_pretrained(args.model, **kw).to("cuda")
    pipe1.set_progress_bar_config(disable=True)
    cond, null = pipe1.encode_prompt(PROMPT, do_classifier_free_guidance=True, clean_caption=False)
    pipe2 = None
    if args.upscaler != "none":
        pipe2 = IFSuperResolutionPipeline.from_pretrained(args.upscaler, text_encoder=None, **kw).to("cuda")
        pipe2.set_progress_bar_config(disable=True)

    def call():
        x = pipe1(prompt_embeds=cond, negative_prompt_embeds=null, timesteps=TS1, guidance_scale=7.0,
                  generator=torch.Generator().manual_seed(0), output_type="pt").images
        if pipe2 is not None:
            x = pipe2(image=x, prompt_embeds=cond, negative_prompt_embeds=null, timesteps=TS2, guidance_scale=7.0,
                      noise_level=250, generator=torch.Generator().manual_seed(0), output_type="pt").images
        return x
    return (pipe1, pipe2), call


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def peak_alone(make, args) -> float:
    """Peak GiB of one call (after a warm-up) with only this side's weights on the GPU."""
    gc.collect()
    torch.cuda.empty_cache()
    held, call = make(args)
    call()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    del held, call
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="DeepFloyd/IF-I-XL-v1.0")
    ap.add_argument("--upscaler", default="none")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    what = "stage I" if args.upscaler == "none" else "stage I + II"
    print(f"{what}, fp16, {len(TS1)} + {len(TS2) if args.upscaler != 'none' else 0} steps, CFG 7, "
          f"{torch.cuda.get_device_name()}")
    peaks = {"diffkit": peak_alone(diffkit_side, args), "diffusers": peak_alone(diffusers_side, args)}
    (_, ours), (_, theirs) = diffkit_side(args), diffusers_side(args)
    a, b = ours(), theirs()  # warm-up, and the outputs compared
    times = {"diffkit": [], "diffusers": []}
    for _ in range(args.repeats):
        times["diffkit"].append(timed(ours)[1])
        times["diffusers"].append(timed(theirs)[1])
    for k in times:
        print(f"  {k:10s} {spread(times[k], 1.0, 's')}  peak alone {peaks[k]:.2f} GiB")
    print(f"ratio diffkit / diffusers = {ratio(times['diffkit'], times['diffusers'])}; "
          f"max |diff| {(a.float() - b.float()).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
