"""The real Sampler on a backend with an exact denoiser reproduces what the discrete chain must give."""

from __future__ import annotations

import math

import pytest

import diffkit
from diffkit.backends.gaussian import GaussianBackend


def chain_moments(abar: list[float], timesteps: list[int], mu: float, s: float) -> tuple[float, float]:
    """Mean and variance of one pixel after the DDPM chain from N(0, 1), derived by hand.

    With the exact eps, x0_hat = A x + B is affine, so x_t' = P x + Q + sigma z and the moments
    propagate as m' = P m + Q, v' = P^2 v + sigma^2.
    """
    m, v = 0.0, 1.0
    for i, t in enumerate(timesteps):
        tp = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        a, ap = abar[t], (abar[tp] if tp >= 0 else 1.0)
        var_t = a * s * s + 1 - a
        A = (1 - (1 - a) / var_t) / math.sqrt(a)
        B = mu * (1 - a) / var_t
        alpha, beta = a / ap, 1 - a / ap
        cx0, cx = math.sqrt(ap) * beta / (1 - a), math.sqrt(alpha) * (1 - ap) / (1 - a)
        P, Q = cx0 * A + cx, cx0 * B
        sigma2 = (1 - ap) / (1 - a) * beta if tp >= 0 else 0.0
        m, v = P * m + Q, P * P * v + sigma2
    return m, v


@pytest.mark.parametrize("stride", [1, 30])
def test_gaussian_mean_and_std_match_the_chain(stride):
    backend = GaussianBackend(means=(0.3, 0.7), std=0.2, stride=stride)
    n = 1500
    res = diffkit.sample(backend, classes=[1], num=n, seed=0)
    x = res.x  # the unclamped state (images are clamped to [0, 1])
    abar = backend.alphas_cumprod.tolist()
    m, v = chain_moments(abar, backend.default_timesteps(), 0.7, 0.2)
    count = x.numel()
    se_mean, se_std = math.sqrt(v / count), math.sqrt(v / (2 * count))
    assert abs(x.mean().item() - m) < 5 * se_mean
    assert abs(x.std().item() - math.sqrt(v)) < 5 * se_std
    if stride == 1:  # the full chain lands close to the data (std 3% low for s = 0.2: a property of the chain)
        assert abs(m - 0.7) < 0.01 and abs(math.sqrt(v) - 0.2) / 0.2 < 0.04
    else:  # coarse strides with a point estimate of x0 shrink the spread (DESIGN.md)
        assert math.sqrt(v) < 0.8 * 0.2


def test_cfg_moves_samples_toward_their_class_mean():
    backend = GaussianBackend(means=(0.4, 0.6), std=0.3, shape=(1, 1, 1), stride=10)
    share, spread = [], []
    for g in (0.0, 1.0, 3.0, 7.0):
        res = diffkit.sample(backend, classes=[1], num=800, seed=1, hooks=[f"cfg:{g}"])
        x = res.images.flatten()
        share.append((x > 0.5).float().mean().item())  # nearer class 1's mean than class 0's
        spread.append(x.mean().item())
    assert share == sorted(share) and share[-1] > share[1] + 0.1
    assert spread == sorted(spread)
