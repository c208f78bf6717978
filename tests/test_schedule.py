"""Schedule math against closed forms and against diffusers' DDPMScheduler."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from diffkit import schedule


def test_linear_betas_are_the_seeds():
    b = schedule.linear_betas(300)
    assert b.shape == (300,) and b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    abar = schedule.alphas_cumprod(b)
    # DESIGN.md: abar at the last step is about 0.05 (x_T is not pure noise).
    assert 0.04 < abar[-1].item() < 0.06


def test_cosine_matches_diffusers_squaredcos():
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    ours = schedule.alphas_cumprod(schedule.betas_from_config(dict(sched.config)))
    assert torch.allclose(ours.float(), sched.alphas_cumprod, atol=1e-6)
    assert torch.equal(schedule.alphas_cumprod_from_config(dict(sched.config)).float(), sched.alphas_cumprod)


def test_strided_timesteps_if_default():
    ts = schedule.strided_timesteps(1000, 30)
    assert ts[0] == 990 and ts[-1] == 0 and len(ts) == 34 and all(a - b == 30 for a, b in zip(ts, ts[1:]))
    assert schedule.strided_timesteps(300, 1) == list(range(299, -1, -1))


@settings(max_examples=50, deadline=None)
@given(t=st.integers(0, 299), seed=st.integers(0, 2**16))
def test_x0_from_eps_inverts_forward(t, seed):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64), torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    abar = schedule.alphas_cumprod(schedule.linear_betas())
    x_t = schedule.forward(x0, t, eps, abar)
    assert torch.allclose(schedule.x0_from_eps(x_t, t, eps, abar), x0, atol=1e-8)
    assert torch.allclose(schedule.eps_from_x0(x_t, t, x0, abar), eps, atol=1e-8)


def test_stride_one_step_is_part_b_update():
    """Stride 1: x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1-abar_t) eps) + sigma z (DDPM Algorithm 2)."""
    abar = schedule.alphas_cumprod(schedule.linear_betas())
    betas = schedule.linear_betas()
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(3, 1, 5, 5, generator=g, dtype=torch.float64) for _ in range(3))
    t = 150
    ours, _ = schedule.ddpm_step(x, t, t - 1, eps, abar, z)
    sigma = ((1 - abar[t - 1]) / (1 - abar[t]) * betas[t]).sqrt()
    ref = (x - betas[t] / (1 - abar[t]).sqrt() * eps) / (1 - betas[t]).sqrt() + sigma * z
    assert torch.allclose(ours, ref, atol=1e-10)


@pytest.mark.parametrize("variance_type,thresholding", [("fixed_small", False), ("learned_range", True),
                                                         ("learned_range", False), ("fixed_large", False)])
def test_step_equals_diffusers_ddpm_scheduler(variance_type, thresholding):
    """Strided steps with diffusers' own scheduler (cosine schedule, IF's settings) give the same x_t'."""
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type=variance_type,
                          thresholding=thresholding, sample_max_value=1.5, dynamic_thresholding_ratio=0.95,
                          clip_sample=not thresholding)
    ts = [990, 960, 930, 600, 30, 0]
    sched.set_timesteps(timesteps=ts)
    abar = schedule.alphas_cumprod_from_config(dict(sched.config))
    cfg = schedule.StepConfig.from_scheduler_config(dict(sched.config))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=g)
    for i, t in enumerate(ts):
        out = torch.randn(2, 6 if variance_type == "learned_range" else 3, 8, 8, generator=g) * 2
        gen_a, gen_b = torch.Generator().manual_seed(i), torch.Generator().manual_seed(i)
        ref = sched.step(out, t, x, generator=gen_a).prev_sample
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        noise = torch.randn(x.shape, generator=gen_b)
        var = out[:, 3:] if variance_type == "learned_range" else None
        ours, _ = schedule.ddpm_step(x, t, t_prev, out[:, :3], abar, noise, var, cfg)
        # Elementwise only (no reductions but thresholding's quantile, which sorts exactly), so no CPU or
        # thread count changes the result; the 1e-6 that separates the two comes from diffkit's float64
        # coefficients against diffusers' float32 ones, on values up to ~6: 2e-5 is 20x that.
        assert torch.allclose(ours, ref, atol=2e-5), (t, (ours - ref).abs().max())
        x = ref


def test_linear_betas_from_a_config_equal_diffusers_bit_for_bit():
    sched = DDPMScheduler(num_train_timesteps=300, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    ours = schedule.betas_from_config(dict(sched.config))
    assert ours.dtype == torch.float64 and torch.equal(ours.float(), sched.betas)
    assert torch.equal(schedule.alphas_cumprod_from_config(dict(sched.config)).float(), sched.alphas_cumprod)
    # A config without the schedule's keys takes diffusers' defaults (1000 steps, 1e-4 .. 0.02), as diffusers does.
    assert torch.equal(schedule.betas_from_config({}).float(), DDPMScheduler().betas)
    for kind in ("cosine", "scaled_linea", "zzz"):  # sorting before, between and after the known ones
        with pytest.raises(ValueError, match=f"unsupported beta_schedule '{kind}'"):
            schedule.betas_from_config({"beta_schedule": kind})


def test_scaled_linear_betas_equal_diffusers_bit_for_bit():
    """Stable Diffusion's schedule."""
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert torch.equal(schedule.betas_from_config(dict(sched.config)).float(), sched.betas)
    assert torch.equal(schedule.alphas_cumprod_from_config(dict(sched.config)).float(), sched.alphas_cumprod)


def test_trained_betas_are_read_as_diffusers_reads_them_and_zero_snr_is_refused():
    sched = DDPMScheduler(trained_betas=torch.linspace(1e-4, 0.02, 50).tolist(), num_train_timesteps=50)
    assert torch.equal(schedule.alphas_cumprod_from_config(dict(sched.config)).float(), sched.alphas_cumprod)
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        schedule.betas_from_config({"rescale_betas_zero_snr": True})


def test_abar_between_inverts_diffusers_sigma_to_t():
    """A Karras sigma turned into a fractional timestep by diffusers gives back that sigma's abar."""
    import numpy as np
    from diffusers import EulerDiscreteScheduler

    s = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                               use_karras_sigmas=True)
    s.set_timesteps(7)
    abar = s.alphas_cumprod.double()
    log_sigmas = np.log(((1 - s.alphas_cumprod) / s.alphas_cumprod).numpy() ** 0.5)
    ts = [float(s._sigma_to_t(np.array(sigma), log_sigmas)) for sigma in s.sigmas[:-1].tolist()]
    assert sum(t != int(t) for t in ts) >= 5  # Karras' sigmas fall between the training timesteps
    for sigma, t in zip(s.sigmas[:-1].tolist(), ts):
        # diffusers' log sigmas and sigmas are float32 (rel. 6e-8 a rounding): a few roundings apart
        assert schedule.abar_between(abar, t) == pytest.approx(1 / (1 + sigma ** 2), rel=1e-6)
    assert schedule.abar_between(abar, 10.0) == pytest.approx(float(abar[10]), rel=1e-12)


def test_eps_from_v_is_the_noise_of_a_v_prediction():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, 4, 4, generator=g,
                                                                                    dtype=torch.float64)
    for abar in (0.999, 0.5, 0.01):
        x = schedule.noised(x0, abar, eps)
        v = abar ** 0.5 * eps - (1 - abar) ** 0.5 * x0
        assert torch.allclose(schedule.eps_from_v(x, v, abar), eps, atol=1e-12)


@pytest.mark.parametrize("kind", ["aaa", "zzz", "fixed_small_log"])
def test_an_unknown_variance_type_is_refused_not_read_as_another(kind):
    """Names sorting before and after the known ones, so no comparison but equality passes them."""
    abar = schedule.alphas_cumprod(schedule.linear_betas())
    with pytest.raises(ValueError, match=f"unknown variance_type '{kind}'"):
        schedule.posterior_log_variance(100, 90, abar, None, kind)
