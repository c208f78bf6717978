"""Sampler + CFG against a minimal hand-written loop making the same model calls. Target ratio <= 1.02.

    python benchmarks/overhead.py [--hidden 32] [--num 8] [--steps 100]
"""

from __future__ import annotations

import argparse

import torch

import diffkit
from diffkit.backends.mnist import MnistBackend

from common import ROOT, interleaved, ratio, record, rounds, small_checkpoint, spread


def hand_loop(backend: MnistBackend, classes: list[int], seeds: list[int], timesteps: list[int], g: float) -> torch.Tensor:
    """The textbook CFG loop: one batched evaluation of [cond; uncond] through the backend's own calls,
    the DDPM step, nothing else."""
    abar = backend.alphas_cumprod
    n = len(classes)
    c = torch.nn.functional.one_hot(torch.tensor(classes), 10).float()
    cc = torch.cat([c, torch.zeros_like(c)])
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.cat([torch.randn(1, 1, 28, 28, generator=gen) for gen in gens])
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            tp = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            out = backend.predict(torch.cat([x, x]), torch.full((2 * n,), t), cc)  # the same (fixed-size) calls
            eps_c, eps_u = out[:n], out[n:]
            eps = eps_u + g * (eps_c - eps_u)
            a, ap = abar[t], (abar[tp] if tp >= 0 else torch.tensor(1.0, dtype=abar.dtype))
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            x = (ap.sqrt() * (1 - a / ap) / (1 - a)) * x0 + ((a / ap).sqrt() * (1 - ap) / (1 - a)) * x
            x = x.float()
            if tp >= 0:
                var = (1 - ap) / (1 - a) * (1 - a / ap)
                x = x + var.sqrt().float() * torch.cat([torch.randn(1, 1, 28, 28, generator=gen) for gen in gens])
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--num", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    ckpt = small_checkpoint(args.hidden)
    backend = MnistBackend(str(ckpt))
    classes = [i % 10 for i in range(args.num)]
    timesteps = diffkit.api.timesteps_for(backend, steps=args.steps)
    seeds = list(range(args.num))

    def ours():
        return diffkit.sample(backend, classes=classes, hooks=["cfg:5"], steps=args.steps).x

    def hand():
        return hand_loop(backend, classes, seeds, timesteps, 5.0)

    diff = (ours() - hand()).abs().max().item()
    t = interleaved({"diffkit": ours, "hand-written": hand}, args.repeats)
    print(f"MNIST UNet hidden={args.hidden}, {args.num} samples x 2 branches, {args.steps} steps, "
          f"{torch.get_num_threads()} threads; max |diffkit - hand| = {diff:.2e}")
    for k, v in t.items():
        print(f"  {k:14s} {spread(v)}")
    print(f"ratio diffkit / hand-written = {ratio(t['diffkit'], t['hand-written'])}  (target <= 1.02)")
    record(ROOT / "benchmarks" / "results" / "overhead.json",
           {"hidden": args.hidden, "num": args.num, "steps": args.steps, "repeats": args.repeats, "max_abs_diff": diff,
            "seconds": t, "diffkit_over_hand": rounds(t["diffkit"], t["hand-written"])})


if __name__ == "__main__":
    main()
