"""The Visual Anagrams release's views (issue 24): each one the declared permutation, hand-computed
where the release defines it geometrically, at 64 and 256 pixels; the procedural jigsaw a real puzzle;
permutations from files; the release's names; views refused where they cannot apply."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import diffkit
from diffkit import registry, views
from conftest import refused_hook
from diffkit.cli import app
from diffkit_plugins import views as plugin_views

runner = CliRunner()


def index_of(name: str, n: int) -> torch.Tensor:
    """The view's permutation at ``n x n``: output pixel i shows input pixel index[i]."""
    x = torch.arange(n * n, dtype=torch.float64).reshape(1, 1, n, n)
    return registry.get_view(name).forward(x).flatten().long()


def test_the_releases_names_are_the_same_views_as_diffkits():
    x = torch.randn(1, 3, 8, 8)
    for release, ours in [("flip", "flip_v"), ("rotate_cw", "rot270"), ("rotate_ccw", "rot90"),
                          ("rotate_180", "rot180")]:
        assert torch.equal(registry.get_view(release).forward(x), registry.get_view(ours).forward(x)), release
    # rotate_cw turns clockwise: the top-left pixel goes to the top-right corner
    img = torch.zeros(1, 1, 4, 4)
    img[..., 0, 0] = 1
    assert registry.get_view("rotate_cw").forward(img)[0, 0, 0, 3] == 1
    assert registry.get_view("negate").forward(x).neg().equal(x)


def test_skew_by_hand():
    """4x4, factor 1: shifts int(i - 2) = -2, -1, 0, 1 for columns 0..3, each column rolled down, wrapping."""
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    got = registry.get_view("skew:factor=1").forward(x)[0, 0]
    want = torch.tensor([[8, 5, 2, 15], [12, 9, 6, 3], [0, 13, 10, 7], [4, 1, 14, 11]], dtype=x.dtype)
    assert torch.equal(got, want)
    # the default factor 1.5: column 0 of a 64-pixel image moves int(1.5 * -32) = -48 rows, column 63 46
    idx = index_of("skew", 64).reshape(64, 64)
    assert idx[0, 0] == 48 * 64 and idx[46, 63] == 0 * 64 + 63 and idx[0, 32] == 32


@pytest.mark.parametrize("n,r", [(64, 24), (256, 96)])
def test_inner_circle_turns_the_disc_of_radius_three_eighths_and_keeps_the_rest(n, r):
    idx = index_of("inner_circle", n).reshape(n, n)
    c = torch.arange(n) - n // 2 + 0.5
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    inside = xx**2 + yy**2 < r * r
    flat = torch.arange(n * n).reshape(n, n)
    assert torch.equal(idx[~inside], flat[~inside])  # the border stays
    assert torch.equal(idx[inside], (n * n - 1 - flat)[inside])  # the disc turned 180 degrees
    assert idx[n // 2, n // 2] == (n // 2 - 1) * n + n // 2 - 1 and idx[0, 0] == 0


@pytest.mark.parametrize("n", [64, 256])
def test_square_hinge_turns_each_square_a_quarter_alternating(n):
    s = n // 3
    idx = index_of("square_hinge", n).reshape(n, n)
    flat = torch.arange(n * n).reshape(n, n)
    # top-left square (i + j even): the index block turned by rot90(k=-1): output (0, 0) shows input (s - 1, 0)
    assert idx[0, 0] == (s - 1) * n + 0
    # its neighbour to the right (i + j odd): rot90(k=1): output (0, s) shows input (0, 2s - 1)
    assert idx[0, s] == 0 * n + 2 * s - 1
    assert torch.equal(idx[3 * s:, :], flat[3 * s:, :]) and torch.equal(idx[:, 3 * s:], flat[:, 3 * s:])


@pytest.mark.parametrize("name,grid", [("patch_permute", 8), ("patch_permute:num_patches=4,seed=3", 4),
                                       ("pixel_permute", 64)])
def test_patch_and_pixel_permutations_are_seeded_derangements_the_same_at_64_and_256(name, grid):
    small, big = index_of(name, 64), index_of(name, 256)
    cell64, cell256 = 64 // grid, 256 // grid
    # the cell each output cell takes: read off the top-left pixel of every cell, at both sizes
    def cells(idx, n, cell):
        src = idx.reshape(n, n)[::cell, ::cell]
        return (src // n // cell) * grid + (src % n) // cell
    assert torch.equal(cells(small, 64, cell64), cells(big, 256, cell256))
    assert (cells(small, 64, cell64).flatten() != torch.arange(grid * grid)).all()  # every cell moves
    # at 256 a cell moves whole: each output cell is one input cell, in order
    b = big.reshape(256, 256)[:cell256, :cell256]
    assert torch.equal(b - b[0, 0], (torch.arange(cell256)[:, None] * 256 + torch.arange(cell256)))
    assert not torch.equal(index_of("patch_permute:seed=1", 64), index_of("patch_permute:seed=2", 64))


def test_the_old_square_patch_view_is_patch_permute_4():
    from diffkit.views import _patches, patch_permutation

    x = torch.randn(1, 3, 28, 28)
    assert torch.equal(registry.get_view("patch_permute:4").forward(x), _patches(x, 4, patch_permutation(4, 0)))


def _components(mask: torch.Tensor) -> int:
    """4-connected components of a boolean mask."""
    seen, count = torch.zeros_like(mask), 0
    h, w = mask.shape
    for y0, x0 in mask.nonzero().tolist():
        if seen[y0, x0]:
            continue
        count += 1
        todo = deque([(y0, x0)])
        seen[y0, x0] = True
        while todo:
            y, x = todo.popleft()
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                v, u = y + dy, x + dx
                if 0 <= v < h and 0 <= u < w and mask[v, u] and not seen[v, u]:
                    seen[v, u] = True
                    todo.append((v, u))
    return count


@pytest.mark.parametrize("n,seed", [(64, 0), (64, 7), (256, 0), (28, 3)])
def test_the_jigsaw_moves_rigid_connected_pieces_that_tile_the_image(n, seed):
    labels = plugin_views.jigsaw_labels(n)
    s = n // 4
    kinds = {p: k for k, orbit in plugin_views.JIGSAW_KINDS.items() for p in orbit}
    kinds = {p: ("edge" if k.startswith("edge") else k) for p, k in kinds.items()}
    idx = index_of(f"jigsaw:seed={seed}", n)
    dest = torch.empty_like(idx)
    dest[idx] = torch.arange(n * n)  # input pixel i goes to dest[i]
    moved_to = set()
    for piece in range(16):
        mask = labels == piece
        assert _components(mask) == 1, piece  # one connected piece
        home = (torch.arange(n)[:, None] // s * 4 + torch.arange(n)[None, :] // s) == piece
        if 0 < s:
            assert (mask != home).any() or piece in (), piece  # tabs and blanks: no piece is its square
        ys, xs = mask.nonzero(as_tuple=True)
        d = dest[ys * n + xs]
        dy, dx = d // n, d % n
        # rigid: one quarter turn k and one shift map every pixel of the piece
        fits = []
        for k in range(4):
            ty, tx = ys.double() + 0.5, xs.double() + 0.5
            for _ in range(k):
                ty, tx = tx, n - ty
            off_y, off_x = dy.double() + 0.5 - ty, dx.double() + 0.5 - tx
            if (off_y == off_y[0]).all() and (off_x == off_x[0]).all():
                fits.append(k)
        assert fits, f"piece {piece} is not moved rigidly"
        # it lands exactly on a slot of its kind (so a printed, cut puzzle reassembles), another than its own
        landed = torch.zeros(n, n, dtype=torch.bool)
        landed[dy, dx] = True
        slot = [q for q in range(16) if torch.equal(landed, labels == q)]
        assert len(slot) == 1 and kinds[slot[0]] == kinds[piece] and slot[0] != piece, (piece, slot)
        moved_to.add(slot[0])
    assert moved_to == set(range(16))
    assert not torch.equal(index_of("jigsaw:seed=1", 64), index_of("jigsaw:seed=2", 64))


def test_the_jigsaw_refuses_a_side_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        registry.get_view("jigsaw").forward(torch.zeros(1, 1, 30, 30))


def test_a_permutation_from_a_file_is_that_permutation_and_bad_files_are_refused(tmp_path):
    perm = torch.randperm(28 * 28, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "p.npy", perm.numpy())
    (tmp_path / "p.txt").write_text(" ".join(map(str, perm.tolist())))
    torch.save({"28": perm}, tmp_path / "p.pt")
    x = torch.randn(1, 1, 28, 28)
    want = x.flatten()[perm].reshape(x.shape)
    for f in ("p.npy", "p.txt", "p.pt"):
        assert torch.equal(registry.get_view(f'permute:file={tmp_path / f}').forward(x), want), f
    bad = perm.clone()
    bad[0] = bad[1]
    np.save(tmp_path / "dup.npy", bad.numpy())
    np.save(tmp_path / "odd.npy", np.arange(10))
    for f, text in [("dup.npy", "not a permutation"), ("odd.npy", "h*h integers"), ("none.npy", "not found")]:
        with pytest.raises(ValueError, match=text):
            registry.get_view(f"permute:file={tmp_path / f}")
    r = runner.invoke(app, ["sample", "--class", "3", "--steps", "2", "--hook",
                            f'anagram:5,view="permute:file={tmp_path / "dup.npy"}"', "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not a permutation" in r.output and not (tmp_path / "o").exists(), r.output
    np.save(tmp_path / "p64.npy", torch.randperm(64 * 64).numpy())
    r = runner.invoke(app, ["sample", "--class", "3", "--steps", "2", "--hook",
                            f'anagram:5,view="permute:file={tmp_path / "p64.npy"}"', "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "64x64 images, not 28x28" in r.output and not (tmp_path / "o").exists(), r.output


@pytest.mark.parametrize("spec,text", [
    ("anagram:5,view=nope", "unknown view 'nope'"),
    ('anagram:5,view="patch_permute:3"', "needs sizes divisible by 3"),
    ("anagram:5,view=pixel_permute", "needs sizes divisible by 64, got 28x28: give pixel_permute:N with N dividing 28"),
    ('anagram:5,view="skew:factor=x"', "view 'skew': parameter 'factor' expects float"),
    ("anagram:5,view=flip:2", "view 'flip' takes no arguments"),
    ("anagram:5,reduction=median", "must be one of mean, alternate"),
])
def test_bad_views_exit_2_with_the_reason_and_write_nothing(tmp_path, spec, text):
    refused_hook(tmp_path, spec, text)


def test_three_view_anagrams_record_every_views_arguments(tmp_path):
    spec = 'anagram:5,8,view="patch_permute:7,seed=4",view=rotate_cw'
    r = runner.invoke(app, ["sample", "--class", "3", "--steps", "3", "--sampler", "ddim", "--hook", spec,
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    hooks = json.loads((tmp_path / "o" / "run.json").read_text())["request"]["hooks"]
    assert hooks[0]["args"]["view"] == ["patch_permute:num_patches=7,seed=4", "rotate_cw"]
    # the recorded spec makes the same view again
    again = registry.technique_from("anagram", hooks[0]["args"])
    x = torch.randn(1, 1, 28, 28)
    assert torch.equal(again.views[0].forward(x), registry.get_view("patch_permute:7,seed=4").forward(x))


def test_alternate_makes_one_model_call_a_step_taking_the_branches_in_turn(counting):
    """Gaussian classes 0 and 1: step i asks the model for class 0 (i even, the sample's own branch) or
    class 1 through the view (i odd), one branch a step; mean asks for both every step."""
    from diffkit.backends.gaussian import GaussianBackend

    b = counting(GaussianBackend())
    seen = []
    real = b.inner.predict

    def predict(x, t, cond):
        seen.append(int(cond.argmax(1)[0]))
        return real(x, t, cond)

    b.inner.predict = predict
    diffkit.sample(b, classes=[0], steps=6, hooks=["anagram:1,view=flip,reduction=alternate"])
    assert seen == [0, 1, 0, 1, 0, 1] and b.calls == [1] * 6
    seen.clear()
    same = diffkit.sample(GaussianBackend(), classes=[0], steps=6, hooks=["anagram:0,view=identity,reduction=alternate"])
    plain = diffkit.sample(GaussianBackend(), classes=[0], steps=6)
    assert torch.equal(same.x, plain.x)  # every branch the same estimate: the plain run, bit for bit
