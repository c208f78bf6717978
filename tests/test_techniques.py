"""Laws of the hook algebra (DESIGN.md) with an exact, model-free denoiser, under hypothesis."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import diffkit
from diffkit import registry, schedule
from diffkit.backends.gaussian import GaussianBackend
from diffkit.denoise import compose
from diffkit.hookspecs import hookimpl
from diffkit.state import Query
from diffkit.technique import Observer


def _permutation(name: str) -> bool:
    """Whether a registered view is a permutation (LookingGlass's warps are not: tests/test_lookingglass.py)."""
    from diffkit.views import ViewKind, Warp

    item = registry.views()[name]
    return not isinstance(item.make() if isinstance(item, ViewKind) else item, Warp)


# permute needs a file: tests/test_views.py
VIEWS = sorted(n for n in registry.views() if n != "permute" and _permutation(n))


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(VIEWS), c=st.sampled_from([1, 3, 6]), side=st.sampled_from([4, 8, 28, 64]),
       seed=st.integers(0, 10**6))
def test_every_view_is_exactly_invertible_on_all_channels(name, c, side, seed):
    view = registry.get_view(name)
    x = torch.randn(2, c, side, side, generator=torch.Generator().manual_seed(seed))
    try:
        y = view.forward(x)
    except ValueError as e:  # a size the view cannot take is refused, saying so
        assert "needs" in str(e) and side != 64, (name, side, e)
        return
    assert torch.equal(view.inverse(y), x)
    assert torch.equal(view.forward(view.inverse(x)), x)


def test_non_identity_views_move_pixels():
    x = torch.arange(64.0 * 64).reshape(1, 1, 64, 64)
    for name in VIEWS:
        if name != "identity":
            assert not torch.equal(registry.get_view(name).forward(x), x), name


def make_ctx(backend, labels=(0,), seed=0):
    from diffkit.api import Run

    run = Run(backend, classes=list(labels), seed=seed)
    return run.context(backend, 0, run.plan(backend, None, None), 0)


class Recorder:
    """The innermost denoiser: evaluates branch by branch, recording every query."""

    def __init__(self, backend):
        self.backend, self.keys = backend, []

    def __call__(self, queries):
        self.keys.append(sorted(str(q.key) for q in queries))
        return [self.backend.predict(q.x, torch.full((q.x.shape[0],), q.t), q.cond.value) for q in queries]


def estimate(specs, backend, x, t, ctx, record=None):
    techs = [registry.make_technique(s) for s in specs]
    for tech in techs:
        tech.setup(ctx)
    inner = record or Recorder(backend)
    (e,) = compose(techs, inner, ctx.eps_channels)([Query(x, t, ctx.cond)])
    return e, inner


states = st.tuples(st.integers(0, 10**6), st.integers(1, 299), st.sampled_from([0, 1]))


@settings(max_examples=40, deadline=None)
@given(s=states, scale=st.floats(-3, 10))
def test_linear_combiners_commute_with_cfg(s, scale):
    seed, t, label = s
    b = GaussianBackend()
    ctx = make_ctx(b, [label, 1 - label])
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for combiner in ("anagram:1,view=rot90", "hybrid:1,kernel=5,sigma=1", "anagram:0,1,view=flip_h,view=patch_permute:2"):
        a, ra = estimate([f"cfg:{scale}", combiner], b, x, t, ctx)
        c, rc = estimate([combiner, f"cfg:{scale}"], b, x, t, ctx)
        assert torch.allclose(a, c, atol=1e-10)
        assert sorted(set(ra.keys[0])) == sorted(set(rc.keys[0]))  # the same distinct branches


@settings(max_examples=40, deadline=None)
@given(s=states)
def test_identity_anagram_and_same_prompt_hybrid_are_the_plain_estimate(s):
    seed, t, label = s
    b = GaussianBackend()
    ctx = make_ctx(b, [label])
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    plain, _ = estimate([], b, x, t, ctx)
    ana, _ = estimate([f"anagram:{label},{label},view=identity,view=identity"], b, x, t, ctx)
    assert torch.allclose(ana, plain, atol=1e-12)
    hyb, _ = estimate([f"hybrid:{label},kernel=7,sigma=1.5"], b, x, t, ctx)  # low + high of one estimate
    assert torch.allclose(hyb, plain, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), size=st.sampled_from([5, 9, 15]), sigma=st.floats(0.3, 5))
def test_lowpass_plus_highpass_is_identity(seed, size, sigma):
    from diffkit_plugins.hybrid import highpass, lowpass

    x = torch.randn(2, 6, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert torch.allclose(lowpass(x, size, sigma) + highpass(x, size, sigma), x, atol=1e-12)
    assert lowpass(x, size, sigma).std() < x.std()  # it does smooth


def test_cfg_with_hybrid_costs_three_branches_in_one_call(counting):
    b = counting(GaussianBackend(stride=30))
    diffkit.sample(b, classes=[0], num=2, hooks=["cfg:3", "hybrid:1,kernel=5"])
    assert set(b.calls) == {6} and len(b.calls) == len(b.default_timesteps())


def test_cfg_with_two_view_anagram_is_one_call_of_four_branches_equal_to_branch_by_branch(counting):
    b = counting(GaussianBackend(stride=30))
    res = diffkit.sample(b, classes=[0, 1], num=1, hooks=["cfg:4", "anagram:1,view=flip_v"])
    assert set(b.calls) == {8} and len(b.calls) == len(b.default_timesteps())  # 2 samples x 4 branches
    # The same run with every branch evaluated separately gives the same samples.
    from diffkit.sampler import Sampler

    orig = Sampler.denoiser
    Sampler.denoiser = lambda self, ctx: compose([t for t in self.techniques], Recorder(ctx.backend), ctx.eps_channels)
    try:
        alone = diffkit.sample(GaussianBackend(stride=30), classes=[0, 1], hooks=["cfg:4", "anagram:1,view=flip_v"])
    finally:
        Sampler.denoiser = orig
    assert torch.allclose(res.x, alone.x, atol=1e-12)


class Trace(Observer):
    name = "trace"

    @hookimpl
    def diffkit_observe(self, state):
        self.args.setdefault("xs", []).append((state.t_next, state.x.clone()))


@pytest.mark.parametrize("seed", [0, 1])
def test_inpaint_all_zero_mask_is_the_noised_original_at_every_step(tmp_path, seed):
    from diffkit import io

    b = GaussianBackend(stride=30)
    img = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(seed))
    io.save_png(img, tmp_path / "img.png")
    io.save_png(torch.zeros(1, 8, 8), tmp_path / "mask.png")
    trace = Trace()
    res = diffkit.sample(b, classes=[1], num=2, seed=seed,
                         hooks=[f"inpaint:image={tmp_path / 'img.png'},mask={tmp_path / 'mask.png'}", trace])
    x_orig = (io.to_uint8(img).permute(2, 0, 1).float() / 255).double()[None].expand(2, -1, -1, -1)
    ctx = make_ctx(b, [1, 1], seed)  # replays the inpaint noise stream
    for t_next, x in trace.args["xs"]:
        if t_next >= 0:
            expected = schedule.forward(x_orig, t_next, ctx.randn(stream="inpaint"), b.alphas_cumprod)
            assert torch.allclose(x, expected, atol=1e-12)
    assert torch.equal(res.x, x_orig)


def test_inpaint_all_one_mask_is_plain_sampling(tmp_path):
    from diffkit import io

    io.save_png(torch.rand(1, 8, 8), tmp_path / "img.png")
    io.save_png(torch.ones(1, 8, 8), tmp_path / "mask.png")
    b = GaussianBackend(stride=30)
    plain = diffkit.sample(b, classes=[0, 1], seed=4, hooks=["cfg:2"])
    inp = diffkit.sample(b, classes=[0, 1], seed=4,
                         hooks=["cfg:2", f"inpaint:image={tmp_path / 'img.png'},mask={tmp_path / 'mask.png'}"])
    assert torch.equal(plain.x, inp.x)


def test_sdedit_at_i_start_zero_is_plain_sampling_and_later_starts_from_the_image(tmp_path):
    from diffkit import io

    io.save_png(torch.full((1, 8, 8), 0.9), tmp_path / "img.png")
    b = GaussianBackend(stride=10)
    plain = diffkit.sample(b, classes=[0], seed=2)
    sd0 = diffkit.sample(b, classes=[0], seed=2, hooks=[f"sdedit:image={tmp_path / 'img.png'},i_start=0"])
    assert torch.equal(plain.x, sd0.x)
    trace = Trace()
    late = diffkit.sample(b, classes=[0], seed=2, hooks=[f"sdedit:image={tmp_path / 'img.png'},i_start=28", trace])
    assert len(trace.args["xs"]) == len(b.default_timesteps()) - 28
    assert late.x.mean() > plain.x.mean() + 0.3  # still near the bright input, far from class 0's mean 0.3


def test_a_view_that_hides_a_sign_mixes_channels_or_does_not_undo_itself_is_refused():
    from diffkit.views import View, check_view

    for view, text in [(View("neg", lambda x: -x, lambda x: -x), "only rearrange pixels"),
                       (View("swap", lambda x: x.flip(1), lambda x: x.flip(1)), "every channel alike"),
                       (View("half", lambda x: x.flip(-1), lambda x: x), "does not undo")]:
        with pytest.raises(ValueError, match=text):
            check_view(view)
    for name in VIEWS:
        check_view(registry.get_view(name), 64)  # every registered view passes (a kind with its defaults)


def test_a_branch_naming_an_unregistered_view_or_dropping_the_query_s_views_is_an_error():
    from diffkit.denoise import wrap
    from diffkit.registry import PluginError
    from diffkit.state import Cond
    from diffkit.technique import Combiner

    class Odd(Combiner):
        name = "odd"

        def __init__(self, view):
            super().__init__()
            self.view = view

        def expand(self, q):
            return [Query(q.x.flip(-1), q.t, q.cond, self.view)]

        def reduce(self, q, estimates):
            return estimates[0]

    six = lambda queries: [torch.cat([q.x, q.x], 1) for q in queries]  # noqa: E731: noise + 3 extra channels
    q = Query(torch.randn(1, 3, 4, 4), 5, Cond(("a",), None), ("flip_v",))
    with pytest.raises(PluginError, match="names view 'mystery', which no plugin declares"):
        wrap(Odd(("flip_v", "mystery")), six, 3)([q])
    for dropped in (("flip_h",), ("identity",), ("rot90",), ()):  # before and after flip_v in any order
        with pytest.raises(PluginError, match="expand must keep the query's views"):
            wrap(Odd(dropped), six, 3)([q])
    (est,) = wrap(Odd(("flip_v", "flip_h")), six, 3)([q])  # a registered view: its extras come back unflipped
    assert torch.equal(est[:, 3:], q.x)


def test_anagram_expand_and_reduce_by_hand_with_a_view_that_is_not_its_own_inverse():
    """rot90 turns [[1, 2], [3, 4]] into [[2, 4], [1, 3]]; its inverse turns [[1, 2], [3, 4]] into [[3, 1], [4, 2]]."""
    from diffkit.state import Cond

    tech = registry.make_technique("anagram:b,view=rot90")
    tech.conds = [Cond(("b",), None)]
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    plain, viewed = tech.expand(Query(x, 7, Cond(("a",), None)))
    assert torch.equal(viewed.x, torch.tensor([[[[2.0, 4.0], [1.0, 3.0]]]])) and viewed.cond.key == ("b",)
    assert viewed.view == ("rot90",) and viewed.t == 7 and plain.x is x
    e0 = torch.tensor([[[[10.0, 20.0], [30.0, 40.0]]]])
    e1 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    out = tech.reduce(plain, [e0, e1])
    assert torch.equal(out, (e0 + torch.tensor([[[[3.0, 1.0], [4.0, 2.0]]]])) / 2)


def test_hybrid_takes_the_low_frequencies_of_the_first_prompt_and_the_high_of_the_second():
    """Constant images have no high frequencies; a checkerboard is all highest frequency. The blur keeps a
    constant exactly and scales the checkerboard by r = (sum_k g_k (-1)^k)^2 (separable, reflect-padded)."""
    import math

    tech = registry.make_technique("hybrid:1,kernel=9,sigma=2")
    tech.kernel, tech.sigma = 9, 2.0
    g = [math.exp(-((k - 4) ** 2) / 8) for k in range(9)]
    r = (sum(v * (-1) ** k for k, v in enumerate(g)) / sum(g)) ** 2
    i = torch.arange(12)
    checker = ((-1.0) ** (i[:, None] + i[None, :])).double()[None, None]
    e1, e2 = 3.0 + 0.5 * checker, -2.0 + 4.0 * checker
    out = tech.reduce(None, [e1, e2])
    expected = 3.0 + 4.0 * checker + r * (0.5 * checker - 4.0 * checker)  # low(e1) + high(e2)
    assert torch.allclose(out, expected, atol=1e-12) and r < 0.01


def test_cfg_interval_guides_only_inside_and_makes_no_unconditional_call_outside(counting):
    """stride 30 on T=300 visits t = 270, 240, ..., 0; lo=0.5 guides t >= 150: 5 steps of 2 branches, 5 of 1."""
    b = counting(GaussianBackend(stride=30))
    half = diffkit.sample(b, classes=[0, 1], num=1, seed=2, hooks=["cfg:3,lo=0.5"]).x
    assert b.calls == [4] * 5 + [2] * 5
    g = GaussianBackend(stride=30)
    assert torch.equal(diffkit.sample(g, classes=[0, 1], seed=2, hooks=["cfg:3,lo=0,hi=1"]).x,
                       diffkit.sample(g, classes=[0, 1], seed=2, hooks=["cfg:3"]).x)  # the whole schedule
    nowhere = diffkit.sample(g, classes=[0, 1], seed=2, hooks=["cfg:3,lo=0.95"]).x  # t >= 285: no step
    assert torch.equal(nowhere, diffkit.sample(g, classes=[0, 1], seed=2).x)
    everywhere = diffkit.sample(g, classes=[0, 1], seed=2, hooks=["cfg:3"]).x
    assert not torch.equal(half, everywhere) and not torch.equal(half, nowhere)


def test_an_empty_cfg_interval_is_refused():
    from diffkit.syntax import SpecError

    with pytest.raises(SpecError, match=r"technique 'cfg': the guidance interval lo=0.7..hi=0.2 is empty"):
        registry.make_technique("cfg:3,lo=0.7,hi=0.2")
