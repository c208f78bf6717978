"""Second stage of a cosmic-ray session: run each surviving mutant again under a wider test command.

tools/cosmic-ray-steps.toml runs its mutants under the fast tests that kill most of them (the DDPM
step against diffusers, the fixed-size calls, IF against its pipelines: seconds a mutant); the few
that survive are re-run here under the slower tests too, and the session's record is updated. Prints
every mutant that still survives.

    python tools/cr_recheck.py session.sqlite "pytest -x -q tests/..." [I/N]

With ``I/N`` it takes every N-th survivor from the I-th (0-based), so N clones, each with its own
copy of the session, share the work (cosmic-ray mutates files in place: one tree, one mutant).
"""

from __future__ import annotations

import json
import subprocess
import sys

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult


def main(session: str, test_command: str, part: str = "0/1") -> None:
    i, n = (int(v) for v in part.split("/"))
    # Unmutated, the command must pass: one that fails or selects no test (pytest's exit 5) would
    # read as killing every mutant.
    if subprocess.run(test_command, shell=True, capture_output=True).returncode != 0:
        raise SystemExit(f"the test command fails without a mutant: {test_command}")
    still = []
    with use_db(session, WorkDB.Mode.open) as db:
        items = {w.job_id: w for w in db.work_items}
        survivors = [job for job, r in db.results if r.test_outcome == TestOutcome.SURVIVED][i::n]
        for job in survivors:
            m = items[job].mutations[0]
            p = subprocess.run(["cosmic-ray", "mutate-and-test", str(m.module_path), m.operator_name,
                                str(m.occurrence), test_command], capture_output=True, text=True)
            killed = json.loads(p.stdout.strip().splitlines()[-1]).get("test_outcome") == TestOutcome.KILLED.value
            where = f"{m.module_path}:{m.start_pos[0]} {m.operator_name.split('/')[-1]} #{m.occurrence}"
            print(("killed   " if killed else "SURVIVED ") + where, flush=True)
            if killed:
                db.set_result(job, WorkResult(output="killed by the wider tests (tools/cr_recheck.py)",
                                              test_outcome=TestOutcome.KILLED,
                                              worker_outcome=WorkerOutcome.NORMAL))
            else:
                still.append(where)
    print(f"{len(survivors)} rechecked, {len(still)} still survive")


if __name__ == "__main__":
    main(*sys.argv[1:4])
