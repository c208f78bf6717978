"""Every hookspec, CLI command and installed technique is documented."""

from __future__ import annotations

import re
from pathlib import Path

from diffkit import hookspecs, registry
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
    names = [c.name or c.callback.__name__ for c in app.registered_commands if not c.hidden]  # not old names
    names += [f"{g.name} {c.name}" for g in app.registered_groups for c in g.typer_instance.registered_commands]
    for name in names:
        assert f"diffkit {name}" in text, f"no example of `diffkit {name}` in docs/"


def test_every_installed_technique_is_documented():
    text = all_docs()
    for name in registry.techniques():
        assert f"{name}:" in text or f"`{name}`" in text, f"technique {name} missing from docs/"


def undocumented(page: str, table: dict, what: str) -> list[str]:
    """Each entry of ``table`` (name -> declaration with ``params``) and its parameters, missing from ``page``."""
    text = (DOCS / page).read_text()
    return [f"{what} {name}" + (f": {p}" if p else "") for name, decl in table.items()
            for p in [None, *(q.name for q in decl.params)] if f"`{p or name}`" not in text]


def test_every_installed_sampler_is_documented():
    assert not undocumented("samplers.md", registry.samplers(), "sampler")


def test_every_installed_backend_and_option_is_documented():
    assert not undocumented("backends.md", registry.backends(), "backend")


def python_blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), re.S)


def run_block(code: str) -> dict:
    namespace: dict = {"__name__": "docs_example"}
    exec(compile(code, "<docs example>", "exec"), namespace)
    return namespace


def test_every_python_example_in_the_plugin_docs_runs():
    blocks = python_blocks("hooks.md") + python_blocks("writing-plugins.md")
    assert len(blocks) >= 4
    for code in blocks:
        run_block(code)


def test_the_after_step_example_keeps_the_plain_samples_under_an_all_white_mask(tmp_path):
    """The documented projector draws its noise from its own stream, so an all-white mask changes nothing."""
    import torch

    import diffkit
    from diffkit import io
    from diffkit.backends.gaussian import GaussianBackend

    (code,) = [b for b in python_blocks("hooks.md") if "diffkit_after_step" in b]
    Keep = run_block(code)["Keep"]
    io.save_png(torch.rand(1, 8, 8), tmp_path / "img.png")
    io.save_png(torch.ones(1, 8, 8), tmp_path / "white.png")
    io.save_png(torch.zeros(1, 8, 8), tmp_path / "black.png")
    b = GaussianBackend(stride=30)
    plain = diffkit.sample(b, classes=[0, 1], num=2, seed=4).x
    white = diffkit.sample(b, classes=[0, 1], num=2, seed=4,
                           hooks=[Keep(image=str(tmp_path / "img.png"), mask=str(tmp_path / "white.png"))]).x
    assert torch.equal(plain, white)
    black = diffkit.sample(b, classes=[0, 1], num=2, seed=4,
                           hooks=[Keep(image=str(tmp_path / "img.png"), mask=str(tmp_path / "black.png"))])
    assert torch.equal(black.x[0], io.load_image(tmp_path / "img.png", (8, 8), 1).double())  # kept exactly


def test_the_views_example_declares_valid_views_and_the_plugin_walkthrough_is_the_shipped_example():
    from diffkit.views import check_view

    (views_code,) = [b for b in python_blocks("hooks.md") if "diffkit_views" in b]
    for view in run_block(views_code)["diffkit_views"]():
        check_view(view)
    example = (DOCS.parent / "examples" / "diffkit-negative-prompt" / "diffkit_negative.py").read_text()
    assert python_blocks("writing-plugins.md")[0].strip() in example  # the walk-through shows the real code


def test_the_backend_walkthrough_is_the_shipped_gaussian_declaration_and_works():
    import pytest
    import torch

    import diffkit
    from diffkit.backends.base import BackendError

    (decl,) = [b for b in python_blocks("writing-plugins.md") if "GAUSSIAN = BackendInfo(" in b]
    shipped = (DOCS.parent / "plugins" / "backends.py").read_text()
    body = decl.split("\n\n\n", 1)[1].strip()  # after the imports
    assert body in shipped  # the walk-through shows the real declaration
    info = run_block(decl)["GAUSSIAN"]
    backend = info.load(**info.read_options({"means": "0.1,0.9", "std": "0.05"}))
    res = diffkit.sample(backend, classes=[1], steps=30, sampler="ddim", seed=3)
    assert abs(res.x.mean().item() - 0.9) < 0.05
    with pytest.raises(BackendError, match="'std' must be a finite number in 0.01..10"):
        info.read_options({"std": "100"})
    assert torch.is_tensor(res.images)
