"""diffkit's Stable Diffusion backend against diffusers' StableDiffusionPipeline on the same tiny
SD-shaped model (tests/tiny_sd.py), same prompt, seed, scheduler, steps and guidance, measured in one
run on this machine with the default thread count. Target ratio <= 1.0.

    python benchmarks/sd_vs_diffusers.py [--steps 20] [--repeats 7] [--latent 32]
    # writes benchmarks/results/sd_vs_diffusers.json

Like with like: diffkit caches prompt embeddings, so the pipeline gets its embeddings computed once
too (``prompt_embeds=``); both decode with the VAE. diffkit makes every model call one row on one
thread on the CPU (so a run's bytes do not depend on its batch, plugins/sd.py ``by_rows``); the
pipeline makes one call of both CFG rows with all threads. A third side, diffkit with whole calls
(``by_rows`` off), says what the row-at-a-time calls cost and what the rest of diffkit costs.
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


def main() -> None:
    import tiny_sd
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from diffkit_plugins import sd
    from diffkit_plugins.sd import StableDiffusion

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--latent", type=int, default=32, help="latent size of the tiny model (images 2x that)")
    ap.add_argument("--num", type=int, default=1, help="images a call (prompts)")
    ap.add_argument("--channels", default="16,32", help="the UNet's block widths (SD 1.5: 320,640,1280,1280)")
    args = ap.parse_args()
    channels = tuple(int(c) for c in args.channels.split(","))
    folder = tiny_sd.build_sd(Path(tempfile.mkdtemp()), sample_size=args.latent, channels=channels)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    backend = StableDiffusion(str(folder))
    cond, null = pipe.encode_prompt(PROMPT, "cpu", args.num, True)
    backend.text([PROMPT, ""])  # diffkit's cache filled once, as the pipeline's embeddings are

    def theirs():
        return pipe(prompt_embeds=cond, negative_prompt_embeds=null, num_inference_steps=args.steps,
                    guidance_scale=7.5, generator=[torch.Generator().manual_seed(i) for i in range(args.num)],
                    output_type="pt").images

    def ours():
        return diffkit.sample(backend, prompts=[PROMPT], num=args.num, seed=0, steps=args.steps, sampler="euler",
                              hooks=["cfg:7.5"]).images

    def one_call():  # what the row-at-a-time calls cost: every call whole, as the pipeline makes it
        by_rows = sd.by_rows
        sd.by_rows = lambda f, device, *a: f(*a)
        try:
            return ours()
        finally:
            sd.by_rows = by_rows

    diff = (ours() - theirs()).abs().max().item()
    t = interleaved({"diffkit": ours, "diffkit, whole calls": one_call, "StableDiffusionPipeline": theirs},
                    args.repeats)
    size = args.latent * 2
    print(f"tiny SD ({size}x{size} images, {args.latent}x{args.latent} latents), {args.num} image(s), "
          f"{args.steps} Euler steps, CFG 7.5, {torch.get_num_threads()} threads, prompt embeddings computed once "
          f"on both sides; max |diffkit - pipeline| = {diff:.1e} (images in [0, 1])")
    for k, v in t.items():
        print(f"  {k:24s} {spread(v)}")
    print(f"ratio diffkit / StableDiffusionPipeline = {ratio(t['diffkit'], t['StableDiffusionPipeline'])}  "
          "(target <= 1.0)")
    print(f"ratio diffkit with whole calls (bytes depend on the batch) / pipeline = "
          f"{ratio(t['diffkit, whole calls'], t['StableDiffusionPipeline'])}")
    name = "sd_vs_diffusers" + ("" if args.num == 1 else f"_n{args.num}") + (
        "" if channels == (16, 32) else "_c" + "-".join(map(str, channels))) + ".json"
    record(ROOT / "benchmarks" / "results" / name,
           {"latent": args.latent, "channels": list(channels), "images": args.num, "steps": args.steps, "repeats": args.repeats,
            "max_abs_diff": diff, "seconds": t,
            "diffkit_over_pipeline": rounds(t["diffkit"], t["StableDiffusionPipeline"]),
            "whole_calls_over_pipeline": rounds(t["diffkit, whole calls"], t["StableDiffusionPipeline"])})


if __name__ == "__main__":
    main()
