"""Every hookspec, CLI command and installed technique is documented."""

from __future__ import annotations

import re
from pathlib import Path

from diffkit import hookspecs, plugins
from diffkit.cli import app

DOCS = Path(__file__).resolve().parent.parent / "docs"


def all_docs() -> str:
    return "\n".join(p.read_text() for p in DOCS.glob("*.md"))


def test_every_hookspec_has_a_section_in_hooks_md():
    text = (DOCS / "hooks.md").read_text()
    specs = [n for n in dir(hookspecs) if n.startswith("diffkit_")]
    assert len(specs) >= 6
    for name in specs + ["expand", "reduce", "setup"]:
        assert re.search(rf"^#+ {name}$", text, re.M), f"docs/hooks.md has no section for {name}"


def test_every_cli_command_appears_with_an_example():
    text = all_docs()
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    names += [f"{g.name} {c.name}" for g in app.registered_groups for c in g.typer_instance.registered_commands]
    for name in names:
        assert f"diffkit {name}" in text, f"no example of `diffkit {name}` in docs/"


def test_every_installed_technique_is_documented():
    text = all_docs()
    for name in plugins.techniques():
        assert f"{name}:" in text or f"`{name}`" in text, f"technique {name} missing from docs/"
