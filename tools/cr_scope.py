"""Keep cosmic-ray's mutants to the techniques' meaning: mark every other one SKIPPED in the session.

In scope: mutants inside the functions that carry a technique's meaning (expand, reduce, after_step,
initial_state, the helpers they call that hold its math, and the mapping of IF's variance) and made
by operators that change arithmetic, comparisons, constants, conditions or loops. (The blur, the
views' pixel shuffles and the batched call are pinned by exact laws in tests/test_techniques.py.) Out of scope: error messages and argument
checks (their own tests pin them), and operator swaps that only make a tensor op raise (bit shifts,
bitwise ops, ``is``), which any run of the code kills.

    python tools/cr_scope.py tools/cosmic-ray.toml session.sqlite

A config may name its own functions in a ``[diffkit-scope]`` table (``functions = [...]``), as
tools/cosmic-ray-steps.toml does for the step rules, the schedule and the backends.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult

FUNCTIONS = {"expand", "reduce", "guide", "diffkit_after_step", "known", "paste", "diffkit_initial_state",
             "start_index", "scaled_kernel", "_unview_pixels"}
SKIP_OPERATORS = re.compile(r".*(BitXor|BitAnd|BitOr|LShift|RShift|_Is$|_IsNot$|USub_Invert|USub_Not|Exception"
                            r"|_Mod$|_Pow$|_FloorDiv$)")


def spans(path: Path, functions: set[str]) -> list[tuple[int, int]]:
    """Line spans of the bodies of the in-scope functions of ``path`` (from the first statement after the
    docstring: a mutated default argument is a different default, which callers that pass it never see)."""
    tree = ast.parse(path.read_text())
    out = []
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in functions:
            body = n.body[1:] if ast.get_docstring(n) and len(n.body) > 1 else n.body
            out.append((body[0].lineno, n.end_lineno))
    return out


def main(config: str, session: str) -> None:
    table = tomllib.loads(Path(config).read_text()).get("diffkit-scope", {})
    functions = set(table.get("functions", FUNCTIONS))
    cache: dict[str, list[tuple[int, int]]] = {}
    kept = skipped = 0
    with use_db(session, WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            m = item.mutations[0]
            path = str(m.module_path)
            cache.setdefault(path, spans(Path(path), functions))
            line = m.start_pos[0]
            inside = any(a <= line <= b for a, b in cache[path])
            if inside and not SKIP_OPERATORS.match(m.operator_name):
                kept += 1
                continue
            skipped += 1
            db.set_result(item.job_id, WorkResult(output="out of scope (tools/cr_scope.py)",
                                                  worker_outcome=WorkerOutcome.SKIPPED))
    print(f"{kept} mutants in scope, {skipped} skipped")


if __name__ == "__main__":
    main(*sys.argv[1:3])
