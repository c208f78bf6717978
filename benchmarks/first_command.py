"""README's first command, and a one-sample CFG run, timed as a user runs them (a fresh process each, the
default thread count) against an earlier commit's code, in interleaved rounds (issue 22's targets:
<= 1.0x and <= 1.2x of c383673, the code before the fixed 16-row model calls).

    git worktree add /tmp/old c383673 && (cd /tmp/old && python3 -m venv .venv && \
        .venv/bin/pip install -q -c constraints.txt -e .)
    python benchmarks/first_command.py --old /tmp/old [--rounds 3]   # writes benchmarks/results/first_command.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import record

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "readme": ["sample", "--backend", "mnist", "--class", "0,1,2,3,4,5,6,7,8,9", "--num", "4", "--hook", "cfg:5"],
    "one-sample": ["sample", "--backend", "mnist", "--class", "3", "--num", "1", "--hook", "cfg:5"],
}


def timed(script: Path, args: list[str]) -> float:
    """Seconds of ``diffkit ARGS`` through the console script a user runs (the earlier code has no
    ``python -m diffkit``)."""
    out = Path(tempfile.mkdtemp(prefix="diffkit-first-")) / "o"
    t0 = time.perf_counter()
    subprocess.run([str(script), *args, "--out", str(out)], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--old", type=Path, required=True, help="a checkout of the earlier commit with its own .venv")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=sorted(COMMANDS), action="append")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "first_command.json")
    args = ap.parse_args()
    old_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.old, capture_output=True, text=True).stdout.strip()
    sides = {"old": args.old / ".venv" / "bin" / "diffkit", "new": Path(sys.executable).parent / "diffkit"}
    results = {"old_commit": old_commit, "rounds": args.rounds, "commands": {}}
    for name in args.only or sorted(COMMANDS):
        cmd = COMMANDS[name]
        for side in sides.values():
            timed(side, cmd)  # warm-up: the page cache, Python's bytecode
        times: dict[str, list[float]] = {"old": [], "new": []}
        for r in range(args.rounds):
            order = ["old", "new"] if r % 2 == 0 else ["new", "old"]  # neither side always goes first
            for side in order:
                times[side].append(timed(sides[side], cmd))
        ratios = [n / o for n, o in zip(times["new"], times["old"])]
        results["commands"][name] = {
            "command": "diffkit " + " ".join(cmd), "seconds": times,
            "median_s": {k: statistics.median(v) for k, v in times.items()},
            "ratio_new_old": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                              "rounds": ratios}}
        print(f"{name}: old {statistics.median(times['old']):.1f} s, new {statistics.median(times['new']):.1f} s, "
              f"new/old {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} rounds)")
    record(args.out, results)


if __name__ == "__main__":
    main()
