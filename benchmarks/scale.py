"""Large runs: memory with --batch-size, 1 against 2 processes, the cost of fixed-size model calls, and the
Frechet distance of 10,000 samples of the shipped model.

    python benchmarks/scale.py            # about 15 minutes on 2 CPU cores; writes benchmarks/results/scale.json
    python benchmarks/scale.py --quick    # a few minutes, smaller numbers (checks the script)

Every measurement runs its sides in turn, round after round (a shared machine drifts), and prints the
median, the range and the round-by-round ratios. Processes run with one thread each, so that two of
them on two cores compare with one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, ratio, spread  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="120")


def diffkit(args: list[str], nproc: int = 1) -> list[str]:
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else []
    return [sys.executable, *launch, "-m", "diffkit", *args]


def peak_rss_mib(cmd: list[str]) -> float:
    """Peak resident memory of ``cmd`` (its largest process), measured by a fresh parent that runs only it."""
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True); "
             "assert r.returncode == 0, r.stderr.decode()[-2000:]; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, env=ONE_THREAD,
                         check=True)
    return int(out.stdout.strip()) / 1024


def memory(nums: list[int], batch: int, rounds: int) -> dict:
    """Peak memory of `diffkit sample` for each total number of samples, at the same --batch-size."""
    work = Path(tempfile.mkdtemp(prefix="diffkit-scale-"))
    peaks: dict[str, list[float]] = {}
    runs = {f"{n} samples, --batch-size {batch}": (n, batch) for n in nums}
    runs[f"{nums[-1]} samples in one batch"] = (nums[-1], nums[-1])
    for r in range(rounds):
        for name, (n, b) in runs.items():
            out = work / f"o{r}-{n}-{b}"
            cmd = diffkit(["sample", "--class", "0,1,2,3,4,5,6,7,8,9", "--num", str(n // 10), "--sampler", "ddim",
                           "--steps", "2", "--hook", "cfg:1", "--batch-size", str(b), "--out", str(out)])
            peaks.setdefault(name, []).append(peak_rss_mib(cmd))
            shutil.rmtree(out)
    shutil.rmtree(work)
    names = list(runs)
    print(f"\npeak memory of `diffkit sample` (MiB, {rounds} rounds):")
    for name in names:
        print(f"  {name:34s} {spread(peaks[name], 1.0, 'MiB')}")
    small, large = peaks[names[0]], peaks[names[1]]
    print(f"  {names[1]} / {names[0]}: {ratio(large, small)}")
    return {"peak_mib": peaks, "ratio_large_to_small": [a / b for a, b in zip(large, small)]}


def processes(num: int, rounds: int) -> dict:
    """Wall time of one sampling run on 1 and on 2 processes (1 thread each), same output bytes."""
    work = Path(tempfile.mkdtemp(prefix="diffkit-scale-"))
    args = ["sample", "--class", "0,1,2,3,4,5,6,7,8,9", "-n", str(num // 10), "--hook", "cfg:1.5",
            "--sampler", "dpmpp_2m_sde", "--steps", "20", "--batch-size", "100"]
    outs = {}

    def side(nproc: int):
        def go():
            out = work / f"p{nproc}"
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(diffkit([*args, "--out", str(out)], nproc), env=ONE_THREAD, check=True,
                           capture_output=True)
            outs[nproc] = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        return go

    times = interleaved({"1 process": side(1), "2 processes": side(2)}, repeats=rounds)
    same = outs[1] == outs[2]
    shutil.rmtree(work)
    print(f"\n{num} samples (cfg:1.5, dpmpp_2m_sde, 20 steps), 1 thread a process:")
    for name, t in times.items():
        print(f"  {name:12s} {spread(t, 1.0, 's')}  = {num / statistics.median(t):.0f} samples/s")
    print(f"  speed-up of 2 processes: {ratio(times['1 process'], times['2 processes'])};"
          f" outputs byte-identical: {same}")
    return {"seconds": times, "samples": num, "speedup": [a / b for a, b in zip(times["1 process"], times["2 processes"])],
            "identical": same}


def fixed_rows(rounds: int) -> dict:
    """Rows a second of the MNIST model with fixed 16-row calls (what diffkit does) and without."""
    from diffkit.api import load_backend

    torch.set_num_threads(1)
    b = load_backend("mnist")
    res = {}
    print("\nMNIST model, rows a second (1 thread): fixed 16-row calls / one call of all rows")
    for n in (2, 16, 64, 256):
        x, t, c = torch.randn(n, 1, 28, 28), torch.full((n,), 100), torch.zeros(n, 10)

        def fixed():
            with torch.inference_mode():
                b.predict(x, t, c)

        def raw():
            with torch.inference_mode():
                b._predict(x, t, c)

        times = interleaved({"fixed": fixed, "raw": raw}, repeats=rounds)
        r = [b_ / a for a, b_ in zip(times["fixed"], times["raw"])]
        res[n] = {"fixed_rows_s": n / statistics.median(times["fixed"]),
                  "raw_rows_s": n / statistics.median(times["raw"]), "speed_ratio": r}
        print(f"  {n:4d} rows a call: {res[n]['fixed_rows_s']:7.0f} / {res[n]['raw_rows_s']:7.0f} rows/s, "
              f"ratio {statistics.median(r):.2f} (range {min(r):.2f}-{max(r):.2f})")
    return res


def frechet(num: int, mnist: str | None) -> dict:
    """`diffkit eval mnist` over 2 processes: the recommended recipe at N samples."""
    out = Path(tempfile.mkdtemp(prefix="diffkit-scale-")) / "eval.json"
    args = ["eval", "mnist", "-n", str(num // 10), "--hook", "cfg:1.5", "--sampler", "dpmpp_2m_sde", "--steps", "20",
            "--batch-size", "250", "--out", str(out)] + (["--data", mnist] if mnist else [])
    t0 = time.perf_counter()
    subprocess.run(diffkit(args, 2), env=ONE_THREAD, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    rep = json.loads(out.read_text())
    print(f"\n{num} samples, cfg:1.5 dpmpp_2m_sde 20 steps, 2 processes, {wall:.0f} s: accuracy {rep['accuracy']:.4f}, "
          f"FD {rep['frechet_distance']:.2f} = {rep['times_floor']:.2f}x the floor {rep['real_data_floor']:.2f} "
          f"of {num} real digits")
    return {"wall_s": wall, **{k: rep[k] for k in ("accuracy", "frechet_distance", "real_data_floor", "times_floor")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data", default=os.environ.get("DIFFKIT_MNIST") or str(ROOT.parent / "shared/data/mnist"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    ap.add_argument("--only", choices=["fixed_rows", "memory", "processes", "frechet"], action="append",
                    help="run only these parts (repeatable); the others keep their results in --out")
    a = ap.parse_args()
    q = a.quick
    parts = {
        "fixed_rows": lambda: fixed_rows(3 if q else 7),
        "memory": lambda: memory([100, 1000] if q else [1000, 10_000], 50 if q else 250, 2 if q else 3),
        "processes": lambda: processes(200 if q else 1000, 2 if q else 3),
        "frechet": lambda: frechet(1000 if q else 10_000, a.data),
    }
    result = json.loads(a.out.read_text()) if a.only and a.out.is_file() else {}
    result.update({"cpu": _cpu(), "torch": torch.__version__})
    for name, part in parts.items():
        if not a.only or name in a.only:
            result[name] = part()
    if not q:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {a.out}")


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
