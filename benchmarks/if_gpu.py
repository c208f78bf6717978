"""For a GPU machine with the real IF weights: fp16 stage I (+ stage II) timings and peak memory,
diffkit against diffusers' pipelines, same prompt, seed, steps and guidance.

    python benchmarks/if_gpu.py --model DeepFloyd/IF-I-XL-v1.0 --upscaler DeepFloyd/IF-II-L-v1.0

Needs CUDA and access to the gated weights (or local folders). Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import time

import torch

import diffkit
from diffkit.backends.deepfloyd import load

PROMPT = "an oil painting of people around a campfire"


def timed(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="DeepFloyd/IF-I-XL-v1.0")
    ap.add_argument("--upscaler", default="none")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    from diffusers import IFPipeline

    ts = list(range(990, -1, -30))
    backend = load(model=args.model, upscaler=args.upscaler, device="cuda", dtype="fp16")
    pipe = IFPipeline.from_pretrained(args.model, variant="fp16", torch_dtype=torch.float16,
                                      safety_checker=None, watermarker=None).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    for _ in range(args.repeats):
        ours, t_ours, m_ours = timed(lambda: diffkit.sample(backend, prompts=[PROMPT], timesteps=ts, hooks=["cfg:7"]).x)
        ref, t_ref, m_ref = timed(lambda: pipe(PROMPT, timesteps=ts, guidance_scale=7.0, output_type="pt",
                                               generator=torch.Generator().manual_seed(0)).images)
        print(f"diffkit {t_ours:.2f} s ({m_ours:.1f} GiB)  IFPipeline {t_ref:.2f} s ({m_ref:.1f} GiB)  "
              f"ratio {t_ours / t_ref:.3f}  max|diff| {(ours.float() - ref.float()).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
