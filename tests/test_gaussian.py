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


# The backend's own formulas, each against a hand computation: every law test that samples it trusts them.

def test_encode_gives_one_hot_rows_zeros_for_none_and_refuses_classes_outside_0_to_k_minus_1():
    from diffkit.backends.base import BackendError

    backend = GaussianBackend(means=(0.1, 0.5, 0.9))
    assert backend.encode([None, 2, 0, None, 1]).tolist() == [[0, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0], [0, 1, 0]]
    for bad in (-1, 3, 4):  # 4: past K, not only at it
        with pytest.raises(BackendError, match=rf"class {bad} is not in 0\.\.2$"):
            backend.encode([0, bad])


def test_abar_between_timesteps_interpolates_sigma_linearly_and_clamps_to_the_schedule():
    import torch

    backend = GaussianBackend()
    abar = backend.alphas_cumprod
    sig = [math.sqrt((1 - a) / a) for a in abar.tolist()]
    ts = torch.tensor([0, 7, 299])
    assert torch.equal(backend.abar(ts), abar[ts])  # integer timesteps: the table itself
    for t, want_sigma in [(7.0, sig[7]), (10.5, (sig[10] + sig[11]) / 2), (10.25, 0.75 * sig[10] + 0.25 * sig[11]),
                          (298.6, 0.4 * sig[298] + 0.6 * sig[299]), (-3.0, sig[0]), (400.0, sig[299])]:
        got = backend.abar(torch.tensor([t], dtype=torch.float64)).item()
        assert got == pytest.approx(1 / (1 + want_sigma**2), rel=1e-12, abs=0), t


def test_unconditional_eps_is_the_posterior_weighted_mixture_by_hand():
    """``E[eps | x_t] = sum_k p(k | x_t) E[eps | x_t, k]``, ``p(k | x_t)`` from the classes' Gaussian densities
    (equal priors), computed pixel by pixel in plain floats."""
    import torch

    means, s = (0.1, 0.5, 0.9), 0.3
    backend = GaussianBackend(means=means, std=s, shape=(1, 2, 2))
    x = torch.tensor([[[[0.2, 0.4], [-0.1, 0.3]]], [[[1.1, 0.6], [0.9, 1.4]]]], dtype=torch.float64)
    t = torch.tensor([120, 40])
    cond = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    got = backend.predict(x, t, cond)
    labelled = backend.predict(x, t, torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64))
    for b in range(2):
        a = backend.alphas_cumprod[t[b]].item()
        var = a * s * s + 1 - a
        px = x[b].flatten().tolist()
        logp = [sum(-((p - math.sqrt(a) * m) ** 2) / (2 * var) for p in px) for m in means]
        w = [math.exp(lp - max(logp)) for lp in logp]
        w = [v / sum(w) for v in w]
        eps_k = [[math.sqrt(1 - a) * (p - math.sqrt(a) * m) / var for p in px] for m in means]
        want = [sum(w[k] * eps_k[k][i] for k in range(3)) for i in range(4)]
        assert got[b].flatten().tolist() == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert min(w) > 1e-6  # every class weighs in: a wrong weight would show
        if b == 1:  # a labelled row of the same batch takes its class alone
            assert labelled[b].flatten().tolist() == pytest.approx(eps_k[1], rel=1e-9, abs=1e-12)
    assert torch.equal(labelled[0], got[0])  # the unlabelled row beside it is unchanged


def test_to_image_clamps_to_0_1():
    import torch

    x = torch.tensor([-0.5, 0.0, 0.25, 1.0, 1.5], dtype=torch.float64).reshape(1, 1, 1, 5)
    assert GaussianBackend().to_image(x).flatten().tolist() == [0.0, 0.0, 0.25, 1.0, 1.0]
