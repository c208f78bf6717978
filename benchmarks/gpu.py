"""The shipped MNIST model on a CUDA GPU: what fixed-size model calls (backends/base.in_fixed_chunks) cost
there, and whether a sample's bytes still do not depend on its batch. (The backend calls 16 rows at a
time on the CPU and 256 on a GPU, since this script measured 16-row calls 7.6x slower on an H100.)

    python benchmarks/gpu.py [--num 1000] [--out benchmarks/results/gpu.json]

Recipe: cfg:1.5, dpmpp_2m_sde, 20 steps (docs/quality.md's), --batch-size 256. Three ways to call the
model, timed in interleaved rounds after a warm-up: 16 rows a call (the CPU's), 256 rows a call (the GPU's), and
one call of every row of the batch. Bytes: 32 samples at batch sizes 1, 5 and 32 under each way; and
the largest difference from the same samples on the CPU (float32 kernels differ; not expected equal).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import diffkit  # noqa: E402
from diffkit.backends import mnist  # noqa: E402

from if_gpu import timed  # noqa: E402  (CUDA-synchronised wall time)
from common import ratio, spread  # noqa: E402

RECIPE = dict(classes=list(range(10)), hooks=["cfg:1.5"], sampler="dpmpp_2m_sde", steps=20)


def backend(way: str, device: str = "cuda"):
    """The shipped model calling its UNet ``way``: "16", "256" rows a call, or "whole" batch a call."""
    b = mnist.MnistBackend(device=device)
    if way == "whole":
        b.predict = b._predict
    else:
        rows = int(way)
        b.predict = lambda x, t, cond: mnist.in_fixed_chunks(b._predict, rows, x, t, cond)
    return b


def run(b, num: int, batch: int, seed: int = 0) -> torch.Tensor:
    per_class = max(1, num // 10)
    return diffkit.sample(b, num=per_class, seed=seed, batch_size=batch, **RECIPE).x.cpu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    gpu = torch.cuda.get_device_name()
    print(f"{gpu}, torch {torch.__version__}; {args.num} samples, cfg:1.5 dpmpp_2m_sde 20 steps, batch 256")
    ways = ["16", "256", "whole"]
    backends = {w: backend(w) for w in ways}
    report: dict = {"gpu": gpu, "torch": torch.__version__, "num": args.num, "bytes": {}, "seconds": {}}

    for w, b in backends.items():
        outs = {bs: run(b, 30, bs) for bs in (1, 5, 30)}
        same = all(torch.equal(outs[1], o) for o in outs.values())
        worst = max((outs[1] - o).abs().max().item() for o in outs.values())
        report["bytes"][w] = {"same_for_batch_1_5_30": same, "max_abs_diff": worst}
        print(f"  {w:>5} rows a call: batch sizes 1, 5, 30 give the same bytes: {same} (max |diff| {worst:.2e})")
    cpu = run(backend("16", "cpu"), 30, 30)
    gpu16 = run(backends["16"], 30, 30)
    report["cpu_vs_gpu_max_abs_diff"] = (cpu - gpu16).abs().max().item()
    print(f"  GPU against CPU, 30 samples: max |diff| {report['cpu_vs_gpu_max_abs_diff']:.2e}")

    for b in backends.values():
        run(b, args.num, 256)  # warm-up
    times: dict[str, list[float]] = {w: [] for w in ways}
    for _ in range(args.rounds):
        for w, b in backends.items():
            times[w].append(timed(lambda: run(b, args.num, 256))[1])
    for w in ways:
        print(f"  {w:>5} rows a call: {spread(times[w], 1.0, 's')}  {args.num / min(times[w]):.0f} samples/s")
        report["seconds"][w] = times[w]
    for w in ("256", "whole"):
        print(f"  16-row calls / {w}: {ratio(times['16'], times[w])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
