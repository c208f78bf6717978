"""The Sampler: one batched call a step, batch == single runs, dedup, errors that name the culprit."""

from __future__ import annotations

import pytest
import torch

import diffkit
from diffkit.backends.gaussian import GaussianBackend
from diffkit.denoise import NonFiniteError, batched
from diffkit.registry import PluginError
from diffkit.state import Cond, Query


def test_batch_of_n_equals_n_single_runs_gaussian():
    b = GaussianBackend(means=(0.3, 0.7), std=0.2, stride=30)
    batch = diffkit.sample(b, classes=[0, 1], num=2, seed=5, hooks=["cfg:3"])
    singles = [diffkit.sample(b, classes=[c], num=1, seed=5 + i, hooks=["cfg:3"]).x
               for i, c in enumerate([0, 0, 1, 1])]
    assert torch.allclose(batch.x, torch.cat(singles), atol=1e-12)


def test_batch_of_n_equals_n_single_runs_mnist(tiny_mnist_ckpt, threads):
    opts = {"checkpoint": str(tiny_mnist_ckpt)}
    batch = diffkit.sample("mnist", classes=[3, 8], num=2, seed=11, steps=10, hooks=["cfg:5"], backend_options=opts)
    singles = [diffkit.sample("mnist", classes=[c], seed=11 + i, steps=10, hooks=["cfg:5"], backend_options=opts).x
               for i, c in enumerate([3, 3, 8, 8])]
    # float32 convolutions of 8 rows and of 1 row may sum in another order: 1e-5 is ~100 ulps of values
    # of order 1 after 10 steps; the 8-bit images a user gets must still be byte-identical.
    assert torch.allclose(batch.x, torch.cat(singles), atol=1e-5)
    assert torch.equal((batch.images * 255).round(), (torch.cat(singles).clamp(0, 1) * 255).round())


def test_same_seed_same_result_and_other_seed_differs():
    b = GaussianBackend(stride=30)
    a1, a2 = diffkit.sample(b, num=2, seed=3).x, diffkit.sample(b, num=2, seed=3).x
    assert torch.equal(a1, a2)
    assert not torch.allclose(a1, diffkit.sample(b, num=2, seed=4).x)


def test_cfg_is_one_model_call_per_step(counting):
    b = counting(GaussianBackend(stride=30))
    diffkit.sample(b, classes=[0, 1], num=3, hooks=["cfg:4"])
    steps = len(b.default_timesteps())
    assert len(b.calls) == steps and set(b.calls) == {12}  # 6 samples x (cond + uncond)


def test_cfg_scale_one_needs_no_unconditional_branch(counting):
    b = counting(GaussianBackend(stride=30))
    diffkit.sample(b, classes=[0], num=2, hooks=["cfg:1"])
    assert set(b.calls) == {2}


def test_batched_denoiser_equals_branch_by_branch_and_dedups(counting):
    b = counting(GaussianBackend())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    c0 = Cond((0, 0), b.encode([0, 0]))
    null = Cond((None, None), b.encode([None, None]))
    qs = [Query(x, 100, c0), Query(x, 100, null), Query(x.flip(2), 100, c0, ("flip",)), Query(x, 100, null)]
    out = batched(b)(qs)
    assert b.calls == [6]  # 4 queries, 3 distinct
    for q, e in zip(qs, out):
        assert torch.allclose(e, b.inner.predict(q.x, torch.full((2,), q.t), q.cond.value))


def test_max_batch_chunks_without_changing_results(counting):
    b = counting(GaussianBackend(stride=30))
    full = diffkit.sample(b, classes=[0, 1], num=2, hooks=["cfg:3"]).x
    b.calls.clear()
    chunked = diffkit.sample(b, classes=[0, 1], num=2, hooks=["cfg:3"], max_batch=3).x
    assert torch.allclose(full, chunked) and max(b.calls) == 3


class NaNBackend(GaussianBackend):
    def predict(self, x, t, cond):
        out = super().predict(x, t, cond)
        return out * float("nan") if int(t[0]) < 200 else out


def test_nan_from_model_is_a_clear_error():
    with pytest.raises(NonFiniteError, match=r"step 11 of 30: backend 'gaussian' returned NaN or inf at t=190 in"):
        diffkit.sample(NaNBackend(stride=10), num=1)


def test_raising_combiner_is_named():
    from diffkit_plugins.cfg import CFG

    class Broken(CFG):
        name = "broken"

        def reduce(self, query, estimates):
            raise RuntimeError("boom")

    with pytest.raises(PluginError, match="'broken'.*boom"):
        diffkit.sample(GaussianBackend(stride=30), classes=[0], hooks=[Broken(scale=2.0)])


def test_projector_hooks_run_in_the_given_order_every_step():
    from diffkit.hookspecs import hookimpl
    from diffkit.technique import Projector

    seen = []

    class Mark(Projector):
        name = "mark"
        params = ()

        @hookimpl
        def diffkit_after_step(self, step):
            seen.append((self.args["tag"], step.i))

    diffkit.sample(GaussianBackend(stride=100), hooks=[Mark(tag="a"), Mark(tag="b")])
    assert seen == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]


# ---- each run its own hooks (issue 23) ----

@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A digit-like image and two masks (the left half kept, the top half kept) as PNGs."""
    from diffkit import io

    d = tmp_path_factory.mktemp("pictures")
    img = torch.zeros(1, 28, 28)
    img[:, 6:22, 12:16] = 1
    io.save_png(img, d / "img.png")
    left, top = torch.zeros(1, 28, 28), torch.zeros(1, 28, 28)
    left[:, :, :14], top[:, :14, :] = 1, 1
    io.save_png(left, d / "left.png")
    io.save_png(top, d / "top.png")
    return d


@pytest.mark.parametrize("which", ["the same projector twice", "two different projectors"])
def test_two_runs_interleaved_step_by_step_each_give_their_lone_bytes(tiny_mnist_ckpt, pictures, which):
    """Runs share no hook registry: two runs' step generators advanced in turn in one thread (a
    notebook, the UI serving two pages) each give exactly the bytes they give alone."""
    d = pictures
    first = ["cfg:3", f"inpaint:image={d / 'img.png'},mask={d / 'left.png'}"]
    second = (["cfg:2", f"inpaint:image={d / 'img.png'},mask={d / 'top.png'}"] if which == "the same projector twice"
              else ["cfg:2", f"sdedit:image={d / 'img.png'},i_start=3"])

    def run(hooks, seed):
        return diffkit.api.Run("mnist", backend_options={"checkpoint": str(tiny_mnist_ckpt)}, classes=[3, 7], num=2,
                               hooks=hooks, steps=8, seed=seed)

    alone = [diffkit.sample("mnist", backend_options={"checkpoint": str(tiny_mnist_ckpt)}, classes=[3, 7], num=2,
                            hooks=h, steps=8, seed=s).x for h, s in ((first, 0), (second, 5))]
    a, b = run(first, 0), run(second, 5)
    ga, gb = a.steps(), b.steps()
    for _ in zip(ga, gb):  # one step of a, one of b, ...
        pass
    for rest in (ga, gb):
        for _ in rest:
            pass
    assert torch.equal(a.result.x, alone[0]) and torch.equal(b.result.x, alone[1])
    assert not torch.equal(alone[0], alone[1])
    # and neither left its thread in inference mode (a mode held across a yield would be restored out
    # of order by the other run's generator: training in this process would then have no gradients)
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()


def test_a_run_calls_its_hooks_through_pluggy_so_tryfirst_orders_them(tiny_mnist_ckpt):
    """A technique's ``tryfirst`` is honoured (pluggy's own caller), and a failure names the hook."""
    import pluggy

    from diffkit.technique import Technique

    impl = pluggy.HookimplMarker("diffkit")
    order = []

    class Last(Technique):
        name = "last"

        @impl
        def diffkit_observe(self, ctx, state):
            order.append("last")

    class First(Technique):
        name = "first"

        @impl(tryfirst=True)
        def diffkit_observe(self, ctx, state):
            order.append("first")

    diffkit.sample("mnist", backend_options={"checkpoint": str(tiny_mnist_ckpt)}, classes=[3], hooks=[Last(), First()],
                   steps=2)
    assert order == ["first", "last"] * 2

    class Broken(Technique):
        name = "broken"

        @impl
        def diffkit_after_step(self, ctx, step):
            raise ZeroDivisionError("on purpose")

    with pytest.raises(diffkit.registry.PluginError, match="technique 'broken' failed in diffkit_after_step: "
                                                          "ZeroDivisionError: on purpose"):
        diffkit.sample("mnist", backend_options={"checkpoint": str(tiny_mnist_ckpt)}, classes=[3], hooks=[Broken()],
                       steps=2)
