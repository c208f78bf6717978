"""MNIST: `diffkit train` against a bare PyTorch loop (same model, batch, data), sampling throughput,
peak memory, and the CPU setup choices (threads, channels_last, torch.compile, bf16 autocast).

    python benchmarks/mnist.py [--hidden 32] [--images 5120] [--repeats 3]

Each configuration runs in its own subprocess so that its peak RSS is its own; the configurations
compared run in turn, ``--repeats`` rounds, and each line gives the median and the range.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "mnist"

WORKER = r"""
import json, resource, sys, tempfile, time, torch
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
from diffkit.mnist import data
from diffkit.mnist.model import UNet
from diffkit.mnist.train import TrainConfig, train, ddpm_loss
from diffkit import schedule
if cfg["kind"] == "diffkit-train":
    tc = TrainConfig(objective="ddpm", conditioning="class", hidden=cfg["hidden"], epochs=1, subset=cfg["images"],
                     channels_last=cfg["channels_last"])
    t0 = None
    for ev in train(tc, tempfile.mkdtemp(), cfg["data"]):
        if t0 is None:
            t0, first = time.perf_counter(), ev.step  # exclude data loading and the first step's warm-up
    secs, n = time.perf_counter() - t0, cfg["images"] - 128
elif cfg["kind"] == "bare-train":
    x, y = data.load("train", cfg["data"]); x, y = x[:cfg["images"]], y[:cfg["images"]]
    tc = TrainConfig(objective="ddpm", conditioning="class", hidden=cfg["hidden"], channels_last=cfg["channels_last"]).resolved()
    torch.manual_seed(0)
    m = UNet(cfg["hidden"], "class")
    if cfg["channels_last"]: m = m.to(memory_format=torch.channels_last)
    if cfg["compile"]: m = torch.compile(m)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    abar = schedule.alphas_cumprod(schedule.linear_betas())
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    t0 = None
    for i in range(0, len(x), 128):
        idx = perm[i:i + 128]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg["bf16"]):
            loss = ddpm_loss(m, x[idx], y[idx], tc, abar, g)
        opt.zero_grad(); loss.backward(); opt.step()
        if t0 is None: t0 = time.perf_counter()
    secs, n = time.perf_counter() - t0, len(x) - 128
else:
    import diffkit
    from diffkit.backends.mnist import MnistBackend
    b = MnistBackend(cfg["ckpt"], channels_last=cfg["channels_last"])  # the backend's own layout switch
    diffkit.sample(b, classes=list(range(10)), num=1, hooks=["cfg:5"], steps=5)
    t0 = time.perf_counter()
    diffkit.sample(b, classes=list(range(10)), num=cfg["num"] // 10, hooks=["cfg:5"], steps=cfg["steps"])
    secs, n = time.perf_counter() - t0, cfg["num"] * cfg["steps"]
print(json.dumps({"per_s": n / secs, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKER, json.dumps(cfg)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def rounds(cfgs: dict[str, dict], repeats: int) -> dict[str, list[dict]]:
    """Every configuration once a round, in turn, ``repeats`` rounds (drift on a shared machine hits all)."""
    results: dict[str, list[dict]] = {k: [] for k in cfgs}
    for _ in range(repeats):
        for name, cfg in cfgs.items():
            results[name].append(run(cfg))
    return results


def rate(results: list[dict], unit: str) -> str:
    if any("error" in r for r in results):
        return "failed: " + next(r["error"] for r in results if "error" in r)[:80]
    v = [r["per_s"] for r in results]
    rss = statistics.median(r["peak_rss_mb"] for r in results)
    return f"{statistics.median(v):7.0f} {unit} ({min(v):.0f}-{max(v):.0f}, n={len(v)})  peak RSS {rss:.0f} MB"


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from common import small_checkpoint

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--images", type=int, default=5120)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default=str(DATA))
    args = ap.parse_args()
    base = {"hidden": args.hidden, "images": args.images, "data": args.data, "threads": 2, "channels_last": True,
            "compile": False, "bf16": False}
    print(f"training: class-conditioned DDPM UNet hidden={args.hidden}, batch 128, {args.images} images, "
          f"{args.repeats} rounds")
    res = rounds({"diffkit": {**base, "kind": "diffkit-train"}, "bare": {**base, "kind": "bare-train"}}, args.repeats)
    print(f"  diffkit train   {rate(res['diffkit'], 'img/s')}")
    print(f"  bare loop       {rate(res['bare'], 'img/s')}")
    r = [a["per_s"] / b["per_s"] for a, b in zip(res["diffkit"], res["bare"])]
    print(f"  ratio diffkit/bare = {statistics.median(r):.3f} (range {min(r):.3f}-{max(r):.3f} over {len(r)} rounds)")
    print("CPU setup choices (bare loop):")
    choices = {"2 threads, channels_last (default)": {}, "1 thread": {"threads": 1},
               "contiguous (no channels_last)": {"channels_last": False}, "bf16 autocast": {"bf16": True},
               "torch.compile": {"compile": True}}
    res = rounds({k: {**base, "kind": "bare-train", **v} for k, v in choices.items()}, args.repeats)
    for name in choices:
        print(f"  {name:36s} {rate(res[name], 'img/s')}")
    ckpt = str(small_checkpoint(args.hidden))
    print("sampling (CFG 5, 2 branches, 100 samples x 50 steps), the backend's layout switched:")
    sample = {"channels_last": {}, "contiguous": {"channels_last": False}}
    res = rounds({k: {**base, "kind": "sample", "ckpt": ckpt, "num": 100, "steps": 50, **v} for k, v in sample.items()},
                 args.repeats)
    for name in sample:
        print(f"  {name:14s} {rate(res[name], 'sample-steps/s')}")


if __name__ == "__main__":
    main()
