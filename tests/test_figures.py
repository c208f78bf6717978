"""Every measured figure in README.md and docs/ comes from a stored result (issue 22).

A passage that quotes figures starts with a marker, which holds until the next heading or marker:

- ``<!-- figures: benchmarks/results/chunks.json -->`` (one or more, comma-separated): every decimal
  number in the passage (outside code) must be a value of one of those results, at the precision shown,
  and each result must record the commit it was measured on (a shipped model's
  ``diffkit/weights/NAME/config.json``, its record of its own training, counts as its result);
- ``<!-- figures: old: why -->``: figures measured on older code and not re-measured; the passage says
  so where a reader sees it (the test checks that it does: "not re-measured" or "measured before");
- ``<!-- figures: none: why -->``: decimals that are not measurements (parameters, definitions).

A decimal number outside any marked passage fails: a figure without a stored result.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- figures: (.*?) -->")
# a decimal figure: not part of a version (2.13.0, 0.42.x), a word or a path
FIGURE = re.compile(r"(?<![\w.\-/:=])(\d+\.\d+)(?![\d.]*\.[\dxX])(?![eE][-+]?\d)(?!\w*[\/:])")


def prose(text: str) -> str:
    """The text a reader reads as prose: no code blocks, inline code, link targets or comments but markers."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    text = "\n".join("" if line.startswith("    ") and not line.lstrip().startswith(("-", "|")) else line
                     for line in text.splitlines())
    text = re.sub(r"`[^`\n]*`", "", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return re.sub(r"<!--(?! figures:).*?-->", "", text, flags=re.S)


def passages(page: Path) -> list[tuple[str | None, str, int]]:
    """(marker or None, text, first line) for each stretch between headings and markers."""
    out, marker, buf, start = [], None, [], 1
    for i, line in enumerate(prose(page.read_text()).splitlines(), 1):
        m = MARKER.search(line)
        if m or line.startswith("#"):
            out.append((marker, "\n".join(buf), start))
            marker, buf, start = (m.group(1).strip() if m else None), [], i
            continue
        buf.append(line)
    out.append((marker, "\n".join(buf), start))
    return out


def numbers(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers(v)]
    return []


def stored(name: str) -> list[float]:
    path = ROOT / name
    assert path.is_file(), f"{name}: no such stored result"
    data = json.loads(path.read_text())
    if path.parent.parent == ROOT / "diffkit" / "weights" and path.name == "config.json":
        assert data.get("kind"), f"{name} is not a shipped model's record"
        return numbers(data)  # a shipped model's own record of its training: the weights are the result
    assert path.parent == ROOT / "benchmarks" / "results", f"{name}: stored results live in benchmarks/results/"
    assert re.fullmatch(r"[0-9a-f]{40}(\+uncommitted)?", str(data.get("commit", ""))), \
        f"{name} does not record the commit it was measured on"
    return numbers(data)


def shown(figure: str, values: list[float]) -> bool:
    """Whether some stored value reads as ``figure`` at its precision."""
    d = len(figure.split(".")[1])
    return any(abs(v - float(figure)) <= 0.5 * 10 ** -d * (1 + 1e-9) for v in values)


def test_every_figure_is_in_the_stored_result_its_passage_names():
    problems = []
    for page in PAGES:
        for marker, text, line in passages(page):
            found = FIGURE.findall(text)
            where = f"{page.relative_to(ROOT)} (from line {line})"
            if marker is None:
                problems += [f"{where}: {f} has no stored result (mark the passage)" for f in found]
            elif marker.startswith("old:"):
                if found and not re.search(r"not\s+re-measured|measured\s+before", text):
                    problems.append(f"{where}: old figures, and the passage does not say so")
            elif not marker.startswith("none:"):
                values = [v for name in marker.split(",") for v in stored(name.strip())]
                problems += [f"{where}: {f} is not in {marker}" for f in found if not shown(f, values)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("text,figures", [
    ("FD 5.46 (1.26x the floor), torch 2.13.0, diffusers 0.42.x, cfg:1.5, 1,000 samples", ["5.46", "1.26"]),
    ("a bound of 2e-3 and 0.25 grey levels; ratio 0.9950", ["0.25", "0.9950"]),
])
def test_the_figure_pattern_finds_measurements_not_versions(text, figures):
    assert FIGURE.findall(text) == figures


def test_a_figure_is_shown_only_at_its_precision():
    assert shown("0.93", [0.9349]) and not shown("0.93", [0.9351]) and shown("1.2", [1.2499])
    assert not shown("0.9950", [0.9955])
