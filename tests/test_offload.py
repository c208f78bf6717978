"""-O offload on the flow families (sd3, flux, zimage): each part (transformer, text encoders, VAE) lives on
the CPU and visits the device only for its own work, one part (the text encoders together) at a time,
as diffusers'
enable_model_cpu_offload; the images are the same bytes as without it. This machine has no GPU, so the
device is ``cpu:0`` (a name distinct from the home ``cpu`` for the moves recorded; the same memory)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit.cli import app

DEVICE = torch.device("cpu", 0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    import tiny_sd

    root = tmp_path_factory.mktemp("offload")
    return {"sd3": tiny_sd.build_sd3(root), "flux": tiny_sd.build_flux(root), "zimage": tiny_sd.build_zimage(root)}


def family(name):
    from diffkit_plugins.flux import Flux
    from diffkit_plugins.sd3 import StableDiffusion3
    from diffkit_plugins.zimage import ZImage

    return {"sd3": StableDiffusion3, "flux": Flux, "zimage": ZImage}[name]


def record(backend, events):
    """Log every part's moves and calls: ('to', part, device) and ('call', part)."""
    parts = {"transformer": backend.transformer, "vae": backend.vae.vae,
             **{f"text{i}": m for i, m in enumerate(backend.text_encoders())}}
    for name, part in parts.items():
        method = "decode" if name == "vae" else "forward"  # the VAE's work is decode (and encode)
        real_to, real_forward = part.to, getattr(part, method)

        def to(*a, _n=name, _to=real_to, **k):
            events.append(("to", _n, str(torch.device(a[0]) if a else k.get("device"))))
            return _to(*a, **k)

        def forward(*a, _n=name, _f=real_forward, **k):
            events.append(("call", _n))
            return _f(*a, **k)

        part.to = to
        setattr(part, method, forward)
    return parts


def where(events):
    """Replay the moves: every call must find its part on the device and every other part at home."""
    at = {}
    for e in events:
        if e[0] == "to":
            at[e[1]] = e[2]
        else:
            assert at.get(e[1]) == str(DEVICE), (e, at)
            group = e[1][:4]  # the text encoders go together (the pipeline's encode_prompt calls them in turn)
            assert all(d == "cpu" for n, d in at.items() if n[:4] != group), (e, at)  # one part at a time
    return at


def loaded_to(monkeypatch) -> list:
    """Where every part is sent as it loads (the modules' first .to)."""
    import diffkit_plugins.flux
    import diffkit_plugins.sd
    import diffkit_plugins.sd3
    import diffkit_plugins.zimage

    sent, real = [], diffkit_plugins.sd._pretrained

    def pretrained(*a, **k):
        part = real(*a, **k)
        to = part.to
        part.to = lambda d, _to=to: sent.append(str(torch.device(d))) or _to(d)
        return part

    for m in (diffkit_plugins.sd, diffkit_plugins.sd3, diffkit_plugins.flux, diffkit_plugins.zimage):
        monkeypatch.setattr(m, "_pretrained", pretrained)
    return sent


@pytest.mark.parametrize("name", ["sd3", "flux", "zimage"])
def test_offload_moves_each_part_to_the_device_for_its_own_work_only_and_keeps_the_bytes(folders, name, monkeypatch):
    cls = family(name)
    plain = cls(str(folders[name]), "cpu", height=32, width=32)
    sent = loaded_to(monkeypatch)
    off = cls(str(folders[name]), str(DEVICE), height=32, width=32, offload=True)
    monkeypatch.undo()
    assert len(sent) >= 3 and set(sent) == {"cpu"}, sent  # every part loads at home, none on the device
    events: list = []
    record(off, events)
    kw = dict(prompts=["a red dog", "a cat"], techniques=["cfg:4"], steps=3, seed=5)
    want = diffkit.sample(plain, **kw).images
    got = diffkit.sample(off, **kw).images
    assert torch.equal(got, want)
    at = where(events)
    assert set(at.values()) == {"cpu"}  # everything back home at the end
    calls = [e[1] for e in events if e[0] == "call"]
    assert calls.count("transformer") >= 3 and "vae" in calls and any(c.startswith("text") for c in calls)
    moves = [e for e in events if e[0] == "to" and e[1] == "transformer"]
    assert len(moves) == 2 * 3  # to the device and back, once a step (each step is one batched call)
    # prompts already encoded: the encoders stay home
    events.clear()
    off.encode(["a red dog", None])
    assert events == []


def test_without_offload_nothing_moves(folders):
    b = family("sd3")(str(folders["sd3"]), "cpu", height=32, width=32)
    events: list = []
    record(b, events)
    diffkit.sample(b, prompts=["a red dog"], steps=2, seed=1)
    assert [e for e in events if e[0] == "to"] == []


@pytest.mark.parametrize("name", ["sd3", "flux", "zimage"])
def test_offload_on_the_cpu_is_refused_before_weights_load(folders, name, tmp_path):
    r = CliRunner().invoke(app, ["sample", "--backend", name, "--model", str(folders[name]), "--prompt", "p",
                                 "--device", "cpu", "--offload", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert "--offload keeps the transformer, the text encoder" in r.output and "drop --offload" in r.output
    assert not (tmp_path / "o").exists()
