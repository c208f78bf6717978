"""Imports flow one way (issue 23): frontends -> api -> sampler -> denoise/plugins -> state -> backends ->
io/schedule/views. No import cycle among diffkit's modules, no arrow back up a layer, and core never
imports ``diffkit_plugins``. Imports are read from the source (module level and inside functions alike;
``if TYPE_CHECKING:`` blocks are annotations, not imports)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# top to bottom; a module may import its own layer or any below it
LAYERS = [
    ("frontends", {"diffkit", "diffkit.__main__", "diffkit.cli", "diffkit.ui"}),
    ("api", {"diffkit.api", "diffkit.request", "diffkit.studies", "diffkit.mnist.train", "diffkit.mnist.evaluate",
             "diffkit.mnist.report", "diffkit.animate", "diffkit.score"}),
    ("sampler", {"diffkit.sampler"}),
    ("denoise/plugins", {"diffkit.denoise", "diffkit.registry", "diffkit.rules", "diffkit.sigma_rule", "diffkit.hookspecs",
                         "diffkit.syntax", "diffkit.technique"}),
    ("state", {"diffkit.state"}),
    ("backends", {"diffkit.backends", "diffkit.backends.base", "diffkit.backends.deepfloyd",
                  "diffkit.backends.gaussian", "diffkit.backends.hub", "diffkit.backends.mnist", "diffkit.mnist", "diffkit.mnist.checkpoint",
                  "diffkit.mnist.model", "diffkit.mnist.data"}),
    ("io/schedule/views", {"diffkit.io", "diffkit.schedule", "diffkit.views", "diffkit.interrupt", "diffkit.plot",
                           "diffkit.dist", "diffkit.folder", "diffkit.filters", "diffkit.fixed_rows", "diffkit.errors", "diffkit.factors",
                           "diffkit.motion", "diffkit.warping",
                           "diffkit.params"}),
]


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted((ROOT / "diffkit").rglob("*.py")):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module ``name`` imports (diffkit's own resolved to the module, others by their top name)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            if getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING":
                for n in node.orelse:
                    self.visit(n)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)

    Visitor().visit(ast.parse(path.read_text()))
    out = set()
    for mod in found:
        while mod and mod not in known and mod.startswith("diffkit."):
            mod = mod.rpartition(".")[0]
        out.add(mod if mod in known else mod.split(".")[0])
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_diffkits_modules():
    assert cycles(graph()) == []


def test_every_import_goes_down_the_layers_and_core_never_imports_the_plugins():
    layer = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}
    g = graph()
    unplaced = sorted(set(g) - set(layer))
    assert not unplaced, f"modules in no layer of tests/test_imports.py (place them): {unplaced}"
    up = [f"{m} ({LAYERS[layer[m]][0]}) imports {d} ({LAYERS[layer[d]][0]})"
          for m, deps in g.items() for d in deps if d in layer and layer[d] < layer[m]]
    assert not up, "imports back up the layers:\n" + "\n".join(up)
    plugins = sorted(m for m, deps in g.items() if "diffkit_plugins" in deps)
    assert not plugins, f"core imports diffkit_plugins: {plugins}"


MAX_DEPTH = 12  # floors of imports: the longest chain among the package's modules (issue 35: it was 17)


def longest_chain(g: dict[str, set[str]]) -> list[str]:
    """The longest chain of imports ``a -> b -> ...`` among diffkit's modules (the graph has no cycle)."""
    best: dict[str, list[str]] = {}

    def chain(m: str) -> list[str]:
        if m not in best:
            best[m] = [m] + max((chain(d) for d in g[m] if d in g), key=len, default=[])
        return best[m]

    return max((chain(m) for m in g), key=len)


def test_imports_are_at_most_twelve_floors_deep():
    chain = longest_chain(graph())
    assert len(chain) <= MAX_DEPTH, f"{len(chain)} floors: {' -> '.join(chain)}"


def test_the_checks_see_a_cycle_and_an_arrow_back_up(tmp_path):
    g = {"diffkit.state": {"diffkit.rules"}, "diffkit.rules": {"diffkit.state"}}
    assert cycles(g) == [["diffkit.rules", "diffkit.state"]]
    known = modules()
    src = ROOT / "diffkit" / "state.py"
    assert "diffkit.rules" not in imports("diffkit.state", src, known)
    fake = tmp_path / "probe.py"
    fake.write_text("def f():\n    from diffkit.api import Run\n    from diffkit_plugins.hybrid import lowpass\n")
    found = imports("diffkit.probe", fake, {**known, "diffkit.probe": fake})
    assert {"diffkit.api", "diffkit_plugins"} <= found
