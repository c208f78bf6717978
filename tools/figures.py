"""Every figure quoted in README.md, docs/ and code comments, tied to the key of the stored result it quotes.

A passage that quotes figures starts with a marker, which holds until the next heading or marker:

- ``<!-- figures: benchmarks/results/chunks.json -->`` (one or more, comma-separated): each decimal figure
  in the passage is bound, in docs/figures.json, to one key of one of those results (``runs.0.accuracy``),
  whose value it must read as when rounded to the figure's digits. Each result records the commit it was
  measured on, and the files that produce it (``sources`` in docs/figures.json) must be unchanged since
  that commit, or since a later commit at which its measurement was shown to still hold
  (``verified_at``); a shipped model's ``diffkit/weights/NAME/config.json``, its record of its own
  training, is its own result;
- ``<!-- figures: old: why -->``: figures measured on older code and not re-measured; the passage says so
  where a reader sees it ("not re-measured" or "measured before");
- ``<!-- figures: none: why -->``: decimals that are not measurements (parameters, definitions).

A figure is any decimal or scientific number a reader reads: in prose, in tables, in indented blocks
(except command lines), at either end of a range (``0.991-0.995``), before ``x``, ``x:``, ``/`` or ``%``.
Comment blocks in code that cite ``docs/`` or ``benchmarks/results/`` quote figures too: they name the
results file, and their figures are bound alike. A figure outside any marked passage fails.

    python tools/figures.py          # the check tests/test_figures.py runs
    python tools/figures.py --bind   # bind figures that are not bound yet (after editing a page), and
                                     # list the ones chosen among several equal values, to review
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "figures.json"
MARKER = re.compile(r"<!-- figures: (.*?) -->")
# A figure: a decimal (3.71) or scientific (2e-3, 1.5e-6) number. Not one glued to a word, a path, a spec
# argument (cfg:1.5, scale=2.0) or a version (2.13.0, 0.42.x), nor a bound (>= 0.99, <= 1.0: a target);
# the upper end of a range (0.675-0.842) counts, a negative sign does not make a figure of its own.
FIGURE = re.compile(r"(?<![<>≤≥]=)(?<![<>≤≥])(?<![<>≤≥]= )(?<![<>≤≥] )"  # a bound (>= 0.99) is a target
                    r"(?:(?<![\w.:=/\-+~^])|(?<=\d-))(\d+\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)"
                    r"(?![\d.]*\.[\dxX])(?![\w.]*[\w]\.\w)(?!\d)")
# Indented lines that are commands people type (their numbers are arguments, not measurements).
COMMAND = re.compile(r"^\s*(\$ |diffkit [a-z]|python3? [\w./-]|torchrun |pip |\.venv/|import |from |[A-Za-z_.]+\(|[a-z_]+ = |"
                     r"(def|class|return|if|for|with|yield|raise|assert|self\.)\b|[Ee]rror: |interrupted by )")
CODE_DIRS = ("diffkit", "plugins", "tests", "benchmarks", "tools", "examples")
CITE = re.compile(r"(?:benchmarks/)?results/([\w.\-]+\.json)|docs/[\w\-]+\.md")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("**/*.md"))]


def code_files() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py") if ".venv" not in p.parts)


@dataclass
class Figure:
    """One quoted figure: where it stands (``start`` is its offset in the file's text), what it is, and
    what its passage names (``files``: results files; else ``kind`` "old", "none" or "unmarked")."""

    page: str
    line: int
    start: int
    text: str
    kind: str  # "bound" | "old" | "none" | "unmarked" | "uncited"
    files: tuple[str, ...] = ()
    context: str = ""
    passage: str = ""  # the passage's text (from its marker to the next marker or heading)

    def where(self) -> str:
        return f"{self.page}:{self.line}"


def _blank(text: str, a: int, b: int) -> str:
    """``text`` with ``[a, b)`` blanked out, newlines kept: offsets and lines stay those of the file."""
    return text[:a] + re.sub(r"[^\n]", " ", text[a:b]) + text[b:]


def prose(text: str) -> str:
    """What a reader reads as figures, at the file's own offsets: fenced code, inline code, link targets,
    comments other than markers and indented command lines blanked out."""
    for pattern, flags in ((r"^```.*?^```", re.S | re.M), (r"`[^`\n]*`", 0), (r"\]\([^)]*\)", 0),
                           (r"<!--(?! figures:).*?-->", re.S)):
        for m in reversed(list(re.finditer(pattern, text, flags))):
            text = _blank(text, m.start(), m.end())
    out, pos = [], 0
    for line in text.splitlines(keepends=True):
        if line.startswith("    ") and COMMAND.match(line):
            line = re.sub(r"[^\n]", " ", line)
        out.append(line)
        pos += len(line)
    return "".join(out)


def _context(text: str, raw: list[str], line: int, start: int, figure: str) -> str:
    """The words that say what a figure is: the text just before it (ending at it), its own line three
    times over, and for a table row the caption above the table."""
    own = raw[line - 1]
    caption = ""
    if own.lstrip().startswith("|"):
        k = line - 1
        while k > 0 and (raw[k - 1].lstrip().startswith("|") or not raw[k - 1].strip()):
            k -= 1
        caption = raw[k - 1] if k > 0 else ""
    return own + "\x00" + caption + " " + text[max(0, start - 160): start + len(figure)]


def page_figures(name: str, text: str) -> list[Figure]:
    """The figures of a Markdown page (``name`` relative to the root), each with its passage's marker."""
    clean = prose(text)
    raw = text.splitlines()
    out: list[Figure] = []
    marker: str | None = None
    offset = 0
    lines = clean.splitlines(keepends=True)
    bounds = [k for k, line in enumerate(lines) if MARKER.search(line) or line.startswith("#")] + [len(lines)]
    for i, line in enumerate(lines, 1):
        m = MARKER.search(line)
        if m or line.startswith("#"):
            marker = m.group(1).strip() if m else None
            end = next(b for b in bounds if b > i - 1)
            passage = "".join(lines[i:end])
        else:
            for f in FIGURE.finditer(line):
                kind, files = "unmarked", ()
                if marker is not None:
                    kind = "old" if marker.startswith("old:") else "none" if marker.startswith("none:") else "bound"
                    files = tuple(x.strip() for x in marker.split(",")) if kind == "bound" else ()
                ctx = _context(text, raw, i, offset + f.start(1), f.group(1))
                out.append(Figure(name, i, offset + f.start(1), f.group(1), kind, files, ctx,
                                  passage if marker is not None else ""))
        offset += len(line)
    return out


def code_figures(name: str, text: str) -> list[Figure]:
    """Figures in comment blocks of a Python file that cite docs/ or benchmarks/results/: bound to the
    results files the block cites ("uncited" when it cites only a page: name the result instead)."""
    out: list[Figure] = []
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    i = 0
    while i < len(lines):
        if "#" not in lines[i]:
            i += 1
            continue
        j = i
        while j < len(lines) and "#" in lines[j]:
            j += 1
        block = [(k, lines[k].index("#")) for k in range(i, j)]
        comment = " ".join(lines[k][c:] for k, c in block)
        cited = CITE.findall(comment)
        if CITE.search(comment):
            files = tuple(f"benchmarks/results/{c}" for c in cited if c)
            for k, c in block:
                for f in FIGURE.finditer(lines[k], c):
                    out.append(Figure(name, k + 1, starts[k] + f.start(1), f.group(1), "bound" if files else "uncited",
                                      files, comment + " " + lines[k][c: f.end(1)], comment))
        i = j
    return out


def all_figures() -> dict[str, list[Figure]]:
    out = {}
    for p in pages():
        out[str(p.relative_to(ROOT))] = page_figures(str(p.relative_to(ROOT)), p.read_text())
    for p in code_files():
        figs = code_figures(str(p.relative_to(ROOT)), p.read_text())
        if figs:
            out[str(p.relative_to(ROOT))] = figs
    return out


# ---- stored results ----

Key = list  # a key path: ["runs", 0, "accuracy"] (keys may hold dots: "cfg:1.5 dpmpp_2m_sde 20")


def leaves(data: Any, prefix: tuple = ()) -> Iterator[tuple[Key, float]]:
    """Every number of a JSON value with its key path."""
    if isinstance(data, bool):
        return
    if isinstance(data, (int, float)):
        yield list(prefix), float(data)
    elif isinstance(data, dict):
        for k, v in data.items():
            yield from leaves(v, (*prefix, k))
    elif isinstance(data, list):
        for k, v in enumerate(data):
            yield from leaves(v, (*prefix, k))


AGGREGATES = {"@min": min, "@max": max, "@median": lambda xs: sorted(xs)[len(xs) // 2]}  # odd counts of rounds


def value_at(data: Any, key: Key) -> Any:
    """The value at a key path; ``@min``, ``@max`` or ``@median`` of a list of rounds that stores none."""
    for part in key:
        data = AGGREGATES[part](data) if isinstance(part, str) and part in AGGREGATES and isinstance(data, list) \
            else data[part]
    return data


def spell(key: Key) -> str:
    return ".".join(str(k) for k in key)


_loaded: dict[str, Any] = {}


def result(name: str) -> Any:
    if name not in _loaded:
        _loaded[name] = json.loads((ROOT / name).read_text())
    return _loaded[name]


def result_problems(name: str) -> list[str]:
    path = ROOT / name
    if not path.is_file():
        return [f"{name}: no such stored result"]
    data = result(name)
    if path.parent.parent == ROOT / "diffkit" / "weights" and path.name == "config.json":
        return [] if data.get("kind") else [f"{name} is not a shipped model's record"]
    if path.parent != ROOT / "benchmarks" / "results":
        return [f"{name}: stored results live in benchmarks/results/"]
    if not re.fullmatch(r"[0-9a-f]{40}(\+uncommitted)?", str(data.get("commit", ""))):
        return [f"{name} does not record the commit it was measured on"]
    return []


def reads_as(figure: str, value: float) -> bool:
    """Whether ``value`` rounded (half up) to ``figure``'s digits is ``figure``: 0.9932 for 0.99318, and
    neither 0.9931 nor 0.9933. Scientific figures to their significant digits (2e-3 for 0.00204)."""
    if "e" in figure.lower():
        mantissa, exp = figure.lower().split("e")
        d = len(mantissa.split(".")[1]) if "." in mantissa else 0
        q = Decimal(1).scaleb(int(exp) - d)
        return Decimal(repr(value)).quantize(q, ROUND_HALF_UP) == Decimal(figure).quantize(q)
    d = len(figure.split(".")[1])
    return Decimal(repr(value)).quantize(Decimal(1).scaleb(-d), ROUND_HALF_UP) == Decimal(figure)


# ---- the table: docs/figures.json ----

def load_table() -> dict[str, Any]:
    return json.loads(TABLE.read_text()) if TABLE.is_file() else {"bindings": {}, "sources": {}}


def check_page(name: str, figs: list[Figure], table: dict[str, Any]) -> list[str]:
    """Problems with one file's figures against its bindings (in order)."""
    problems = []
    for f in figs:
        if f.kind == "unmarked":
            problems.append(f"{f.where()}: {f.text} has no stored result (mark the passage)")
        elif f.kind == "uncited":
            problems.append(f"{f.where()}: {f.text} is quoted from a page: cite the results file it comes from")
    bound = [f for f in figs if f.kind == "bound"]
    binds = table["bindings"].get(name, [])
    if [b["figure"] for b in binds] != [f.text for f in bound]:
        have, want = [b["figure"] for b in binds], [f.text for f in bound]
        k = next((i for i, (a, b) in enumerate(zip(have, want)) if a != b), min(len(have), len(want)))
        at = bound[k].where() if k < len(bound) else name
        problems.append(f"{at}: figure {k + 1} of {name} is {want[k] if k < len(want) else '(none)'}, bound as "
                        f"{have[k] if k < len(have) else '(none)'}: a figure was edited, added or removed; run "
                        "python tools/figures.py --bind and review its bindings")
        return problems
    for f, b in zip(bound, binds):
        if b["file"] not in f.files:
            problems.append(f"{f.where()}: {f.text} is bound to {b['file']}, which its passage does not name")
            continue
        try:
            v = value_at(result(b["file"]), b["key"])
        except (KeyError, IndexError, TypeError, FileNotFoundError):
            problems.append(f"{f.where()}: {f.text} is bound to {b['file']} {spell(b['key'])}, which it does not hold")
            continue
        scale = b.get("scale", 1)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not reads_as(f.text, float(v) * scale):
            times = f" x {scale}" if scale != 1 else ""
            problems.append(f"{f.where()}: {f.text} does not read as {b['file']} {spell(b['key'])} = {v!r}{times}")
    return problems


def old_problems(name: str, text: str) -> list[str]:
    """An ``old:`` passage with figures must say so where a reader sees it."""
    out = []
    clean = prose(text)
    parts = re.split(r"(<!-- figures: .*? -->|^#.*$)", clean, flags=re.M)
    for marker, body in zip(parts[1::2], parts[2::2]):
        if marker.startswith("<!-- figures: old:") and FIGURE.search(body) and \
                not re.search(r"not\s+re-measured|measured\s+before", body):
            out.append(f"{name}: an old: passage has figures and does not say they are old")
    return out


def _same_code(commit: str, path: str) -> bool:
    """Whether a Python file at ``commit`` and at HEAD differ only in comments, docstrings and layout
    (which change no number): their syntax trees without docstrings are equal. Other files: never."""
    import ast

    if not path.endswith(".py"):
        return False

    def tree(rev: str) -> str | None:
        r = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            return None
        t = ast.parse(r.stdout)
        for node in ast.walk(t):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                    isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        return ast.dump(t)

    old, new = tree(commit), tree("HEAD")
    return old is not None and old == new


def freshness(table: dict[str, Any], figs: dict[str, list[Figure]] | None = None) -> list[str]:
    """Each bound result's producing files (``sources``) unchanged since its commit (or ``verified_at``);
    or, for a result its sources entry declares ``stale`` (a timing whose code changed, not measured
    again), every passage quoting it says so to the reader ("not re-measured")."""
    used = sorted({b["file"] for binds in table["bindings"].values() for b in binds})
    problems = []
    for name in used:
        bad = result_problems(name)
        problems += bad
        if not name.startswith("benchmarks/results/") or bad:
            continue
        src = table["sources"].get(name)
        if not src:
            problems.append(f"{name}: docs/figures.json names no sources (the files that produce it)")
            continue
        if not src["files"]:  # history (a comparison of two named commits): nothing later can change it
            continue
        since = src.get("verified_at") or result(name)["commit"][:40]
        r = subprocess.run(["git", "diff", "--name-only", since, "HEAD", "--", *src["files"]], cwd=ROOT,
                           capture_output=True, text=True)
        if r.returncode != 0:
            problems.append(f"{name}: cannot compare its sources with commit {since[:10]} ({r.stderr.strip()})")
            continue
        changed = [p for p in r.stdout.split() if not _same_code(since, p)]
        if r.returncode == 0 and not changed:
            continue
        if not src.get("stale"):
            problems.append(f"{name}: measured at {since[:10]}, and {', '.join(changed)} changed since: "
                            "measure it again (or show it still holds and set verified_at)")
        else:
            for page, binds in table["bindings"].items():
                quoted = [f for f in (figs or {}).get(page, []) if f.kind == "bound"]
                for f, b in zip(quoted, binds):
                    if b["file"] == name and not re.search(r"not\s+re-measured", f.passage):
                        problems.append(f"{f.where()}: {f.text} quotes {name}, stale ({src['stale']}), and its "
                                        "passage does not say it was not re-measured")
                        break
    return problems


def check(table: dict[str, Any] | None = None) -> list[str]:
    table = table or load_table()
    problems = []
    figs = all_figures()
    for name, fs in figs.items():
        problems += check_page(name, fs, table)
        if name.endswith(".md"):
            problems += old_problems(name, (ROOT / name).read_text())
    for name in table["bindings"]:
        if name not in figs:
            problems.append(f"docs/figures.json binds figures of {name}, which quotes none")
    return problems + freshness(table, figs)


# ---- binding ----

def _tokens(text: str) -> set[str]:
    """Words and numbers, compounds and their parts (mnist-classifier: also mnist, classifier)."""
    specs = re.findall(r"[A-Za-z_]\w*:[\w.=,+\-]+", text)  # cfg:1.45 is one word (not cfg and 1.45)
    text = re.sub(r"[A-Za-z_]\w*:[\w.=,+\-]+", " ", text)
    words = re.findall(r"[A-Za-z_][\w\-]*|\d+(?:\.\d+)?", text)
    return {s.lower() for s in specs} | {t.lower() for w in words for t in (w, *re.split(r"[-_]", w)) if t}


SCALES = (1, 100, 1000)  # a value quoted as it is, as a percentage, or in milliseconds of stored seconds


def candidates(f: Figure) -> list[tuple[str, Key, int]]:
    """``(file, key, scale)`` of every value of the passage's results that reads as the figure (times
    ``scale``), the likeliest first: as it is before scaled, then the key path and its neighbours (the
    run's hooks, sampler, steps) sharing the most words with the text around the figure."""
    line, _, near_text = f.context.rpartition("\x00")
    own, ctx = _tokens(line), _tokens(near_text)  # words of its line (and table caption) weigh three times
    before = near_text[: len(near_text) - len(f.text)].rstrip()  # the text just before the figure
    role = ("max" if re.search(r"\d-$", before) else "min" if re.search(r"(\(|range|from|between)$", before)
            else None)
    scored = []
    for name in f.files:
        data = result(name)
        for (key, v), scale in ((kv, sc) for sc in SCALES for kv in leaves(data)):
            if reads_as(f.text, v * scale):
                near = []
                for k in range(len(key)):  # the scalars beside the value and beside each ancestor
                    node = value_at(data, key[:k])
                    if isinstance(node, dict):
                        near += [str(x) for x in node.values() if isinstance(x, (str, int))]  # not long floats
                near = " ".join(near)
                words = _tokens(" ".join(map(str, key)) + " " + near + " " + name.replace("/", " "))
                score = 3 * len(words & own) + len(words & ctx)
                last = key[-1]
                if role is not None:  # a range's end is its min or max, never a mean or a median
                    score += 3 if last == role else -3 if isinstance(last, str) else 0
                score += 1 if isinstance(last, str) else -3  # a named statistic (median, min) before one round
                score += 2 * (role is None and last == "median")  # a ratio quoted alone is the rounds' median
                scored.append((scale != 1, -score, len(scored), name, key, scale))
    return [(n, k, sc) for *_, n, k, sc in sorted(scored)]


def bind() -> list[str]:
    """Bind every figure not bound yet; keep bindings whose figures are unchanged (aligned in order)."""
    import difflib

    table = load_table()
    notes = []
    for name, figs in all_figures().items():
        bound = [f for f in figs if f.kind == "bound"]
        old = table["bindings"].get(name, [])
        sm = difflib.SequenceMatcher(a=[b["figure"] for b in old], b=[f.text for f in bound], autojunk=False)
        keep = {j: old[i] for i, j, n in sm.get_matching_blocks() for i, j in zip(range(i, i + n), range(j, j + n))}
        new = []
        for j, f in enumerate(bound):
            b = keep.get(j)
            if b is not None and b["file"] in f.files:
                try:
                    if reads_as(f.text, float(value_at(result(b["file"]), b["key"])) * b.get("scale", 1)):
                        new.append(b)
                        continue
                except (KeyError, IndexError, ValueError, TypeError):
                    pass  # its key is gone: bound anew
            c = candidates(f)
            if not c:
                notes.append(f"{f.where()}: {f.text} is in none of {', '.join(f.files)}")
                continue
            new.append({"figure": f.text, "file": c[0][0], "key": c[0][1], **({"scale": c[0][2]} if c[0][2] != 1 else {})})
            if len(c) > 1:
                notes.append(f"{f.where()}: {f.text} bound to {c[0][0]} {spell(c[0][1])}, chosen among {len(c)}: "
                             "review")
        if new:
            table["bindings"][name] = new
        else:
            table["bindings"].pop(name, None)
    table["bindings"] = dict(sorted(table["bindings"].items()))
    TABLE.write_text(json.dumps(table, indent=1) + "\n")
    return notes


# ---- showing a result still holds: its recorded commands, small, at its commit and now ----

def _tree(commit: str) -> Path:
    """A checkout of ``commit`` (a git worktree under /tmp), importable as it was: ``diffkit`` and
    ``diffkit_plugins`` (its plugins/ folder) from that commit."""
    where = Path("/tmp") / f"diffkit-at-{commit[:12]}"
    if not where.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(where), commit], cwd=ROOT, check=True,
                       capture_output=True)
        (where / "diffkit_plugins").symlink_to(where / "plugins")
        # its own entry points, found first on the path (importlib keeps one distribution a name): the
        # installed diffkit's would load today's plugins into yesterday's core
        import tomllib

        eps = tomllib.loads((where / "pyproject.toml").read_text())["project"]["entry-points"]["diffkit"]
        info = where / "diffkit-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: diffkit\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text("[diffkit]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    return where


def _report(tree: Path | None, command: str, num: int, out: Path) -> dict[str, Any]:
    """The JSON report of a recorded ``diffkit eval mnist`` command at ``num`` samples a class, run with
    the code of ``tree`` (None: today's), on the CPU with the shared MNIST files."""
    import os
    import shlex

    args = shlex.split(command)[1:]
    for flag, value in (("--num", str(num)), ("--device", "cpu"), ("--data", str(ROOT.parent / "shared/data/mnist"))):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    if "--checkpoint" in args and args[args.index("--checkpoint") + 1].startswith("runs/"):
        # a checkpoint of the working folder, shipped since under a name: the shipped bytes (its record says so)
        args[args.index("--checkpoint") + 1] = str(ROOT / "diffkit/weights/mnist-h64-ema")
    env = dict(os.environ, PYTHONPATH=str(tree) if tree else "", CUDA_VISIBLE_DEVICES="")
    code = "import sys; from diffkit.cli import main; sys.argv[0] = 'diffkit'; main()"
    r = subprocess.run([sys.executable, "-c", code, *args, "--out", str(out)], env=env, capture_output=True,
                       text=True, cwd=tree or ROOT)
    if r.returncode:
        raise RuntimeError(f"{command} at {tree or 'HEAD'}: {r.stdout[-400:]} {r.stderr[-400:]}")
    return json.loads(out.read_text())


def _commands(data: dict[str, Any]) -> list[str]:
    """The ``diffkit eval mnist`` commands a result records (``runs``), or for a table of recipes
    (``tables``) one recipe of each kind (model, technique, interval, weak model, rule, steps)."""
    runs = data.get("runs", {})
    out = [r["command"] for r in (runs.values() if isinstance(runs, dict) else runs) if "command" in r]
    seen = set()
    for t in data.get("tables", []):
        h = t["hook"]
        kind = (t["checkpoint"], h.split(":")[0], ",hi=" in h, "model=" in h, t["sampler"], t["steps"])
        if kind not in seen:
            seen.add(kind)
            out.append(f"diffkit eval mnist --checkpoint {t['checkpoint']} --hook {h} --sampler {t['sampler']} "
                       f"--steps {t['steps']} --seed 0")
    return out


def verify(name: str, num: int = 3) -> str:
    """Run each of ``name``'s recorded commands at ``num`` samples a class with the code of the result's
    commit and with today's; equal reports (accuracy, FD, floor) mean the code that produced it still
    produces the same numbers, so ``verified_at`` becomes HEAD. Returns what was compared."""
    import tempfile

    data = result(name)
    own = data["commit"][:40]
    # A result assembled from samples made at earlier commits (quality_tables: seeds.jsonl's samples,
    # floors recomputed at its own commit) is checked as it was made: the samples' accuracy exactly and
    # their FD to float32 rounding (the fixed-size model calls since reorder sums: relative 1e-7 seen,
    # 1e-5 allowed, a thousand times under the 2-4 digits quoted) at those commits, everything exactly
    # at its own.
    samples_from = data.get("samples_from", {}).get("commits", [])
    checks = [(own, ("accuracy", "frechet_distance", "real_data_floor", "per_class_accuracy"), 0.0)]
    checks += [(c, ("accuracy", "per_class_accuracy", "frechet_distance"), 1e-5) for c in samples_from]
    commands = _commands(data)
    if not commands:
        raise SystemExit(f"{name} records no commands to run again")
    with tempfile.TemporaryDirectory() as tmp:
        for k, command in enumerate(commands):
            new = _report(None, command, num, Path(tmp) / f"new{k}.json")
            for commit, keys, rel in checks:
                old = _report(_tree(commit), command, num, Path(tmp) / f"old{k}.json")
                for key in keys:
                    a, b = old.get(key), new.get(key)
                    same = a == b if not rel or not isinstance(a, float) else abs(a - b) <= rel * abs(b)
                    if not same:
                        raise SystemExit(f"{name}: {command} at {num} a class differs between {commit[:10]} and "
                                         f"HEAD in {key}: {a} against {b}: measure it again")
    commit = ", ".join(c[:10] for c in [own, *samples_from])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    table = load_table()
    table["sources"][name]["verified_at"] = head
    how = (f"the same accuracy, FD and floor with the code of {own[:10]} and of {head[:10]}" + (
        f"; the same accuracy and FD (to relative 1e-5) with the code of {', '.join(c[:10] for c in samples_from)}, "
        "where its samples were made" if samples_from else ""))
    table["sources"][name]["verified"] = f"{len(commands)} recorded command(s) at {num} samples a class gave {how}"
    TABLE.write_text(json.dumps(table, indent=1) + "\n")
    return table["sources"][name]["verified"]


def _spelled(figure: str, value: float) -> str:
    """``value`` written with ``figure``'s digits (rounded half up), as :func:`reads_as` reads it."""
    if "e" in figure.lower():
        mantissa, exp = figure.lower().split("e")
        d = len(mantissa.split(".")[1]) if "." in mantissa else 0
        m = (Decimal(repr(value)).scaleb(-int(exp))).quantize(Decimal(1).scaleb(-d), ROUND_HALF_UP)
        return f"{m}e{exp}"
    d = len(figure.split(".")[1])
    return str(Decimal(repr(value)).quantize(Decimal(1).scaleb(-d), ROUND_HALF_UP))


def update(names: list[str]) -> list[str]:
    """Rewrite every figure bound to one of ``names`` (results measured again) from its key's value at
    the figure's digits; the prose around them is the author's to read again. Returns what changed."""
    table = load_table()
    changed = []
    for page, figs in all_figures().items():
        bound = [f for f in figs if f.kind == "bound"]
        binds = table["bindings"].get(page, [])
        text = (ROOT / page).read_text()
        for f, b in sorted(zip(bound, binds), key=lambda fb: -fb[0].start):
            if b["file"] not in names:
                continue
            new = _spelled(f.text, float(value_at(result(b["file"]), b["key"])) * b.get("scale", 1))
            if new != f.text:
                text = text[: f.start] + new + text[f.start + len(f.text):]
                changed.append(f"{f.where()}: {f.text} -> {new}")
                b["figure"] = new
        (ROOT / page).write_text(text)
    TABLE.write_text(json.dumps(table, indent=1) + "\n")
    return changed


if __name__ == "__main__":
    if sys.argv[1:2] == ["--update"]:
        print("\n".join(update(sys.argv[2:])))
        sys.exit(0)
    if sys.argv[1:2] == ["--verify"]:
        for n in sys.argv[2:]:
            print(n, verify(n))
        sys.exit(0)
    if sys.argv[1:] == ["--bind"]:
        for line in bind():
            print(line)
    else:
        found = check()
        print("\n".join(found) or "every figure reads as its stored result")
        sys.exit(1 if found else 0)
