"""diffkit's IF backend against diffusers' IFPipeline on the same tiny IF-shaped model, same steps and
guidance, measured in one run on this machine. Target ratio <= 1.0.

    python benchmarks/if_vs_diffusers.py [--steps 34] [--repeats 5]   # writes benchmarks/results/if_vs_diffusers.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import diffkit  # noqa: E402
from diffkit.backends.deepfloyd import load  # noqa: E402

from common import ROOT, interleaved, ratio, record, rounds, spread  # noqa: E402

PROMPT = "an oil painting of people around a campfire"


def main() -> None:
    import tiny_if
    from diffusers import IFPipeline

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=34)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=32, help="stage I sample size of the tiny model")
    args = ap.parse_args()
    f1, _ = tiny_if.build(Path(tempfile.mkdtemp()), size1=args.size)
    ts = list(range(990, -1, -30))[: args.steps]
    pipe = IFPipeline.from_pretrained(f1, safety_checker=None, watermarker=None, feature_extractor=None)
    pipe.set_progress_bar_config(disable=True)
    backend = load(model=str(f1), upscaler="none", device="cpu")

    # Like with like: diffkit caches T5 embeddings per prompt, so the pipeline gets its embeddings
    # computed once too (prompt_embeds=...); the sampling loops are what is compared.
    cond, null = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=True, clean_caption=False)
    backend.text([PROMPT, ""])  # diffkit's cache filled once, as the pipeline's embeddings are

    def theirs():
        return pipe(prompt_embeds=cond, negative_prompt_embeds=null, timesteps=ts, guidance_scale=7.0,
                    generator=torch.Generator().manual_seed(0), output_type="pt").images

    def ours():
        return diffkit.sample(backend, prompts=[PROMPT], seed=0, timesteps=ts, hooks=["cfg:7"]).x

    diff = (ours() - theirs()).abs().max().item()
    t = interleaved({"diffkit": ours, "IFPipeline": theirs}, args.repeats)
    print(f"tiny IF ({args.size}x{args.size}), {len(ts)} steps, CFG 7, {torch.get_num_threads()} threads, "
          f"prompt embeddings computed once on both sides; max |diffkit - IFPipeline| = {diff:.1e}")
    for k, v in t.items():
        print(f"  {k:10s} {spread(v)}")
    print(f"ratio diffkit / IFPipeline = {ratio(t['diffkit'], t['IFPipeline'])}  (target <= 1.0)")
    record(ROOT / "benchmarks" / "results" / "if_vs_diffusers.json",
           {"size": args.size, "steps": len(ts), "repeats": args.repeats, "max_abs_diff": diff, "seconds": t,
            "diffkit_over_ifpipeline": rounds(t["diffkit"], t["IFPipeline"])})


if __name__ == "__main__":
    main()
