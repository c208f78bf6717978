"""Every figure quoted in README.md, docs/ and code comments reads as the stored result key it is bound to
(docs/figures.json), and that result is not older than the code that produces it. tools/figures.py holds
the rules; this runs them, and checks that the rules can fail."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import figures as F  # noqa: E402


def test_every_figure_reads_as_its_bound_result_and_every_result_is_current():
    problems = F.check()
    assert not problems, "\n".join(problems)


def _nudged(figure: str, step: int) -> str:
    """``figure`` moved by ``step`` units in its last place, written with the same digits."""
    from decimal import Decimal

    if "e" in figure.lower():
        mantissa, exp = figure.lower().split("e")
        d = len(mantissa.split(".")[1]) if "." in mantissa else 0
        m = Decimal(mantissa) + step * Decimal(1).scaleb(-d)
        return f"{m:.{d}f}e{exp}"
    d = len(figure.split(".")[1])
    return f"{Decimal(figure) + step * Decimal(1).scaleb(-d):.{d}f}"


def _bound() -> list[tuple[str, F.Figure, dict]]:
    table = F.load_table()
    out = []
    for name, figs in F.all_figures().items():
        bound = [f for f in figs if f.kind == "bound"]
        out += [(name, f, b) for f, b in zip(bound, table["bindings"].get(name, []))]
    return out


def test_any_figure_nudged_by_one_unit_in_its_last_place_fails():
    table = F.load_table()
    bound = _bound()
    assert len(bound) > 300, len(bound)
    missed = []
    texts = {name: (ROOT / name).read_text() for name in {n for n, _, _ in bound}}
    for name, f, b in bound:
        value = float(F.value_at(F.result(b["file"]), b["key"])) * b.get("scale", 1)
        for step in (1, -1):
            new = _nudged(f.text, step)
            if new.startswith("-"):
                continue
            if F.reads_as(new, value):  # the value check alone would let it through
                missed.append(f"{f.where()}: {f.text} -> {new} still reads as {value}")
            text = texts[name][: f.start] + new + texts[name][f.start + len(f.text):]
            figs = F.page_figures(name, text) if name.endswith(".md") else F.code_figures(name, text)
            if not F.check_page(name, figs, table):
                missed.append(f"{f.where()}: {f.text} -> {new} passes the page's check")
    assert not missed, "\n".join(missed[:20])


@pytest.mark.parametrize("text,figures", [
    ("FD 5.46 (1.26x the floor), torch 2.13.0, diffusers 0.42.x, cfg:1.5, 1,000 samples", ["5.46", "1.26"]),
    ("a bound of 2e-3 and 0.25 grey levels; ratio 0.9950", ["2e-3", "0.25", "0.9950"]),
    ("0.9932 (0.991-0.995) and 1.2x: the median, 3.5/4 and 7.6%", ["0.9932", "0.991", "0.995", "1.2", "3.5", "7.6"]),
    ("accuracy >= 0.99 and FD <= 2.0, scale=2.0, weight:-1.5, v1.0, runs/h64-e2.0", []),
])
def test_the_figure_pattern_finds_measurements_not_versions_arguments_or_targets(text, figures):
    assert [m.group(1) for m in F.FIGURE.finditer(text)] == figures


def test_indented_results_count_and_commands_do_not():
    page = ("<!-- figures: benchmarks/results/overhead.json -->\n"
            "    diffkit sample --hook cfg:1.5 --lr 1e-4 --ema 0.999\n"
            "    ratio diffkit / hand = 0.978 (range 0.846-1.229)\n")
    assert [f.text for f in F.page_figures("x.md", page)] == ["0.978", "0.846", "1.229"]


def test_a_figure_reads_as_a_value_only_at_its_own_rounding():
    assert F.reads_as("0.93", 0.9349) and not F.reads_as("0.93", 0.9351) and F.reads_as("1.2", 1.2499)
    assert not F.reads_as("0.995", 0.9955) and F.reads_as("0.996", 0.9955)  # half up: one figure only
    assert F.reads_as("2e-3", 0.00204) and not F.reads_as("3e-3", 0.00204)


def test_an_unmarked_figure_and_a_code_comment_quoting_a_page_fail():
    figs = F.page_figures("x.md", "# Title\n\nIt runs in 4.2 s.\n")
    assert any("has no stored result" in p for p in F.check_page("x.md", figs, {"bindings": {}}))
    code = "x = 1  " + chr(35) + " 0.994 over ten seeds (docs/quality.md)\n"  # a comment quoting a page
    assert any("cite the results file" in p for p in F.check_page("t.py", F.code_figures("t.py", code),
                                                                  {"bindings": {}}))


def test_a_result_older_than_the_code_that_produces_it_fails():
    table = json.loads(json.dumps(F.load_table()))
    name = "benchmarks/results/overhead.json"
    # as if it had been measured at this session's start, before Sampler.check_branches was written
    table["sources"][name] = {"files": ["diffkit/sampler.py"], "why": "the Sampler's overhead",
                              "verified_at": "37919d7"}
    # a one-figure binding that uses the result, so its freshness is judged
    table["bindings"] = {"x.md": [{"figure": "0.978", "file": name, "key": ["diffkit_over_hand", "median"]}]}
    problems = F.freshness(table)
    assert any(p.startswith(name) and "diffkit/sampler.py changed since" in p for p in problems), problems


def test_a_binding_to_a_key_that_reads_otherwise_fails():
    table = json.loads(json.dumps(F.load_table()))
    name, f, b = _bound()[0]
    other = dict(b, key=[*b["key"][:-1], "__nope__"])
    table["bindings"][name] = [other] + table["bindings"][name][1:]
    figs = F.page_figures(name, (ROOT / name).read_text()) if name.endswith(".md") else \
        F.code_figures(name, (ROOT / name).read_text())
    assert any("does not hold" in p for p in F.check_page(name, figs, table))


def test_every_hand_made_mutation_still_targets_text_in_its_file(monkeypatch):
    import mutations

    assert mutations.stale() == []
    gone = ("a mutation of text that is gone", "plugins/cfg.py", "no such text", "x", ["tests/test_cfg.py"])
    monkeypatch.setattr(mutations, "MUTATIONS", [gone])
    monkeypatch.setattr(sys, "argv", ["mutations.py"])
    monkeypatch.setattr(mutations, "run", lambda m: pytest.fail("a stale list ran a mutation"))
    assert mutations.main() == 1
