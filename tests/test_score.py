"""diffkit score: the Visual Anagrams paper's alignment A = min_i S_ii and concealment
C = 1/N tr(softmax(S / tau)) (softmax over the prompts, view by view), against direct computations: a tiny
CLIP built from config (its own logit_scale as 1 / tau) and the shipped MNIST classifier (logits, tau = 1)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from diffkit import io, score
from diffkit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def anagram_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("score") / "run"
    r = runner.invoke(app, ["sample", "--backend", "mnist", "--class", "1", "-n", "4", "--technique", "cfg:3",
                            "--technique", "anagram:7,view=flip", "--rule", "ddim", "--steps", "8", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import tiny_sd
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = tiny_sd.tokenizer()
    ids = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)  # the tokenizer's: CLIP pools at the end token
    cfg = CLIPConfig(text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=77, **ids),
                     vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                                        num_hidden_layers=2, num_attention_heads=4), projection_dim=16)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(cfg).eval().save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(folder)
    return folder


def direct_clip(folder, images, prompts):
    """CLIP written out: each tower, its projection, unit vectors, cosines; the logits at exp(logit_scale)."""
    from transformers import CLIPModel, CLIPProcessor

    m, p = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    inp = p(text=prompts, images=[io.to_pil(im).convert("RGB") for im in images], return_tensors="pt", padding=True)
    with torch.no_grad():
        img = m.visual_projection(m.vision_model(pixel_values=inp["pixel_values"]).pooler_output)
        txt = m.text_projection(m.text_model(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"]).pooler_output)
    img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    S = (img @ txt.T).double()
    return S, S * m.logit_scale.exp().double()


def by_hand(S, logits):
    n = S.shape[0]
    A = min(S[i, i].item() for i in range(n))
    C = sum((logits[i].exp() / logits[i].exp().sum())[i].item() for i in range(n)) / n
    return A, C


def test_clip_scores_equal_a_direct_computation(anagram_run, tiny_clip):
    got = score.score(anagram_run, clip=str(tiny_clip), write=False)
    assert got["scorer"] == f"clip:{tiny_clip}" and got["n"] == 4
    for s in got["samples"]:
        image = io.load_png(anagram_run / s["file"])
        S, logits = direct_clip(tiny_clip, [image, torch.flip(image, [1])], ["1", "7"])
        assert s["prompts"] == ["1", "7"] and s["views"] == ["sample", "view1"]
        assert torch.allclose(torch.tensor(s["similarity"], dtype=torch.float64), S, atol=1e-6)
        A, C = by_hand(S, logits)
        assert s["alignment"] == pytest.approx(A, abs=1e-6) and s["concealment"] == pytest.approx(C, abs=1e-6)
    assert "success_rate" not in got  # CLIP says how well, not whether
    # prompts the tiny tokenizer knows (the digits are all <unk> to it: equal rows, softmax 0.5 whatever tau)
    image = io.load_png(anagram_run / "sample-000.png")
    views = [image, torch.flip(image, [1]), image.transpose(1, 2)]
    prompts = ["a red dog", "an old man", "a snowy mountain village"]
    got = score.score_samples([score.IllusionSample("x.png", ["sample", "a", "b"], views, prompts)],
                              score.ClipScorer(str(tiny_clip)))["samples"][0]
    S, logits = direct_clip(tiny_clip, views, prompts)
    A, C = by_hand(S, logits)
    assert got["alignment"] == pytest.approx(A, abs=1e-6) and got["concealment"] == pytest.approx(C, abs=1e-6)
    assert abs(C - by_hand(S, S)[1]) > 1e-3  # CLIP's temperature matters here


def test_mnist_scores_equal_the_classifiers_logits(anagram_run):
    from diffkit.mnist.evaluate import load_classifier

    clf = load_classifier()
    got = score.score(anagram_run, write=False)
    assert got["scorer"].startswith("mnist-classifier")
    wins = []
    for s in got["samples"]:
        image = io.load_png(anagram_run / s["file"])
        with torch.no_grad():
            logits = clf(torch.stack([image, torch.flip(image, [1])])).double()  # the sample, then upside down
        S = logits[:, [1, 7]]
        assert torch.allclose(torch.tensor(s["similarity"], dtype=torch.float64), S, atol=1e-5)
        A, C = by_hand(S, S)
        assert s["alignment"] == pytest.approx(A, abs=1e-5) and s["concealment"] == pytest.approx(C, abs=1e-6)
        read = [int(logits[0].argmax()) == 1, int(logits[1].argmax()) == 7]
        assert s["views_read"] == read and s["success"] == all(read)
        wins.append(all(read))
    assert got["success_rate"] == sum(wins) / len(wins)
    assert got["alignment"]["mean"] == pytest.approx(sum(s["alignment"] for s in got["samples"]) / 4)


def test_quantiles_are_numpys_linear_ones():
    got = score.summary([float(v) for v in range(1, 11)])
    assert got == {"mean": 5.5, "q0.9": pytest.approx(9.1), "q0.95": pytest.approx(9.55)}


def test_the_command_writes_score_json_and_keeps_it(anagram_run):
    r = runner.invoke(app, ["score", str(anagram_run)])
    assert r.exit_code == 0, r.output
    written = json.loads((anagram_run / "score.json").read_text())
    assert written["n"] == 4 and "alignment" in r.output and "every view read as its own class" in r.output
    again = runner.invoke(app, ["score", str(anagram_run)])
    assert again.exit_code == 2 and "score.json exists: pass --overwrite" in again.output
    assert runner.invoke(app, ["score", str(anagram_run), "--overwrite"]).exit_code == 0
    (anagram_run / "score.json").unlink()


@pytest.mark.parametrize("args,text", [
    (["--clip", "x", "--classifier", "y"], "give --clip or --classifier, not both"),
    (["--device", "cuda:7"], "--device cuda:7"),
    (["--classifier", "/no/such/folder"], "no MNIST classifier at /no/such/folder"),
])
def test_bad_options_exit_2_naming_them(anagram_run, args, text):
    r = runner.invoke(app, ["score", str(anagram_run), *args])
    assert r.exit_code == 2, r.output
    assert text in " ".join(r.output.split())
    assert not (anagram_run / "score.json").exists()


def test_a_run_without_an_illusion_or_with_prompts_is_refused_by_name(tmp_path):
    plain = tmp_path / "plain"
    assert runner.invoke(app, ["sample", "--backend", "mnist", "--class", "1", "--technique", "cfg:3", "--steps", "4",
                               "--out", str(plain)]).exit_code == 0
    r = runner.invoke(app, ["score", str(plain)])
    assert r.exit_code == 2 and "holds no illusion to score" in r.output
    r = runner.invoke(app, ["score", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "is not a folder" in r.output
    with pytest.raises(score.ScoreError, match="reads the classes 0-9, and this run's prompt is 'a cat'"):
        score.MnistScorer().similarities([torch.zeros(1, 28, 28)] * 2, ["1", "a cat"])
