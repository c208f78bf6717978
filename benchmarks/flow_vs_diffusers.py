"""diffkit's flow-matching backends against diffusers' own pipelines on the same tiny models
(tests/tiny_sd.py), same prompt, seed, scheduler (the model's FlowMatch Euler), steps and guidance,
interleaved in one run on this machine with the default thread count. Target ratio <= 1.0.

    python benchmarks/flow_vs_diffusers.py --family sd3 [--steps 20] [--repeats 7]
    # writes benchmarks/results/flow_vs_diffusers_sd3.json (flux, zimage likewise)

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--family", choices=sorted(FAMILIES), required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
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
