"""README's test command on a loaded machine (issue 21: "well under 30 minutes on a loaded 2-core machine").

Starts ``--busy`` processes that each keep one core busy (a Python spin loop) for as long as the suite
runs, then runs README's test command's pytest (``pytest -q -n auto --maxprocesses 4``, the tests spread
over the cores by pytest-xdist) with ``--durations=20``, and records the wall time,
the outcome line and the slowest tests. The busy processes compete for the cores as another job on a
shared CI machine would.

    python benchmarks/suite_under_load.py [--busy 2] [--beside "what else ran"] [--out F] [-- PYTEST ARGS]   # writes benchmarks/results/suite_under_load.json
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, record

SPIN = "while True: pass"


def readme_pytest_args() -> list[str]:
    """README.md's test command's arguments after ``.venv/bin/pytest``, read from README itself so the two
    cannot drift."""
    line = next(line for line in (ROOT / "README.md").read_text().splitlines() if ".venv/bin/pytest" in line)
    return shlex.split(line.split(".venv/bin/pytest", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busy", type=int, default=2, help="processes spinning on a core each while the suite runs")
    ap.add_argument("--beside", default="", help="what else ran on the machine meanwhile, for the record")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "suite_under_load.json")
    ap.add_argument("pytest_args", nargs="*")
    a = ap.parse_args()
    args = [*readme_pytest_args(), "--durations=20", *a.pytest_args]
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(a.busy)]
    try:
        t0 = time.perf_counter()
        r = subprocess.run([str(ROOT / ".venv" / "bin" / "pytest"), *args],
                           cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    finally:
        for p in spinners:
            p.kill()
    out = r.stdout + r.stderr
    outcome = next((line.strip("= ") for line in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed)", line)), "")
    slowest = [{"seconds": float(m.group(1)), "phase": m.group(2), "test": m.group(3)}
               for m in re.finditer(r"^\s*(\d+\.\d+)s (call|setup|teardown)\s+(\S+)", out, re.M)]
    print(out[-3000:])
    print(f"{seconds / 60:.1f} min with {a.busy} busy processes on {os.cpu_count()} cores: {outcome}")
    record(a.out,
           {"pytest_args": args, "busy_processes": a.busy, "beside": a.beside, "cores": os.cpu_count(), "seconds": seconds, "minutes": seconds / 60,
            "exit_code": r.returncode, "outcome": outcome, "slowest": slowest})
    sys.exit(r.returncode)


if __name__ == "__main__":
    main()
