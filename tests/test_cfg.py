"""CFG's laws with fake denoisers (hypothesis)."""

from __future__ import annotations

import zlib

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffkit.denoise import wrap
from diffkit.state import Cond, Query
from diffkit_plugins.cfg import CFG


class Ctx:
    def __init__(self, channels):
        self.null = Cond((None,), torch.zeros(1, 1))
        self.eps_channels = channels
        self.alphas_cumprod = torch.linspace(1, 0, 1000)

        class B:
            conditional = True
            name = "fake"
        self.backend = B()


def fake_denoiser(seed):
    """A deterministic but arbitrary estimate for each (x, cond) pair: 6 channels like IF's."""
    def denoise(queries):
        out = []
        for q in queries:
            # crc32, not hash(): the same seed in every process, and distinct for the two keys used here
            g = torch.Generator().manual_seed(seed + zlib.crc32(repr(q.cond.key).encode()))
            out.append(q.x.repeat(1, 2, 1, 1) * torch.randn(1, 6, 1, 1, generator=g, dtype=q.x.dtype)
                       + torch.randn(1, 6, 1, 1, generator=g, dtype=q.x.dtype))
        return out
    return denoise


def run(scale, seed):
    ctx = Ctx(3)
    cfg = CFG(scale=scale)
    cfg.setup(ctx)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cond = Cond(("p",), torch.ones(1, 1))
    inner = fake_denoiser(seed)
    (guided,) = wrap(cfg, inner, 3)([Query(x, 10, cond)])
    c, u = inner([Query(x, 10, cond), Query(x, 10, ctx.null)])
    return guided, c, u


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_scale_one_is_conditional_and_zero_is_unconditional_noise(seed):
    g1, c, u = run(1.0, seed)
    assert torch.equal(g1, c)
    g0, c, u = run(0.0, seed)
    assert torch.allclose(g0[:, :3], u[:, :3]) and torch.equal(g0[:, 3:], c[:, 3:])  # conditional variance kept


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), scale=st.floats(-5, 20))
def test_cfg_formula_and_kept_variance(seed, scale):
    g, c, u = run(scale, seed)
    assert torch.allclose(g[:, :3], u[:, :3] + scale * (c[:, :3] - u[:, :3]))
    assert torch.equal(g[:, 3:], c[:, 3:])
