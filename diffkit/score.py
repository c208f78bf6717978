"""Illusions measured: the Visual Anagrams paper's alignment and concealment scores (Geng et al. 2024,
section 5.1) of every sample of a finished run, from its folder alone.

For one sample with views ``v_1 .. v_N`` (the sample itself first) and their prompts ``p_1 .. p_N``, a
scorer gives the similarity matrix ``S [N x N]``, ``S_ij`` = how much view ``i`` reads as prompt ``j``:

- alignment ``A = min_i S_ii``: the worst view's similarity to its own prompt;
- concealment ``C = 1/N tr(softmax(S / tau))``, the softmax over the illusion's prompts, row by row: how
  surely each view reads as its own prompt rather than another view's.

Over a set the paper reports the mean and the 0.9 and 0.95 quantiles (``A_0.9``, ``A_0.95``, ...):
illusions are picked from many draws, so the upper quantiles say what a good draw scores.

Scorers: CLIP (any ``CLIPModel`` folder or hub id through transformers): ``S_ij`` is the cosine
similarity of view ``i``'s image embedding and prompt ``j``'s text embedding, ``1 / tau`` the model's own
``logit_scale``. On class-labelled 28x28 digits, the MNIST classifier stands in for CLIP: ``S_ij`` is view
``i``'s logit for class ``p_j``, ``tau = 1`` (the classifier's own calibration); it adds success: every view
is read, among all ten classes, as its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor

from diffkit import io, registry
from diffkit.animate import DamagedFolder, _read_run, read_jobs
from diffkit.errors import UserError

QUANTILES = (0.9, 0.95)
DEFAULT_CLIP = "openai/clip-vit-large-patch14"


class ScoreError(UserError):
    """A run that cannot be scored as asked (no illusion in it, a scorer that cannot read its images)."""


class Scorer(Protocol):
    name: str
    has_success: bool

    def similarities(self, images: list[Tensor], prompts: list[str]) -> tuple[Tensor, Tensor, Tensor | None]:
        """Views ``[C x H x W]`` in [0, 1] against prompts: ``(S, logits, success)``: ``S [N x N]`` view i against prompt j, the logits the concealment's
        softmax reads (``S / tau``), and (a classifier only) whether each view's best class is its own."""


class ClipScorer:
    """CLIP through transformers: cosine similarities, the model's ``logit_scale`` as ``1 / tau``."""

    has_success = False

    def __init__(self, model: str, device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(model, use_safetensors=True).eval().to(device)
            self.processor = CLIPProcessor.from_pretrained(model)
        except (OSError, ValueError) as e:
            raise ScoreError(f"cannot load CLIP {model!r}: {str(e).strip().splitlines()[0]} (give --clip a folder "
                             "or hub id of a CLIPModel, with its processor)") from None
        self.name, self.device = f"clip:{model}", device

    @torch.inference_mode()
    def similarities(self, images: list[Tensor], prompts: list[str]) -> tuple[Tensor, Tensor, None]:
        # as 8-bit images through the model's own processor (resize, crop, normalise), as a saved file is read
        pil = [io.to_pil(im).convert("RGB") for im in images]
        inputs = self.processor(text=prompts, images=pil, return_tensors="pt", padding=True)
        out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        S = (out.image_embeds @ out.text_embeds.T).double().cpu()  # both unit vectors: cosine similarities
        return S, S * float(self.model.logit_scale.exp()), None


class MnistScorer:
    """The MNIST classifier as CLIP's stand-in: a view's logits for the illusion's classes."""

    has_success = True

    def __init__(self, classifier: str | None = None):
        from diffkit.mnist.evaluate import load_classifier

        self.model = load_classifier(classifier)
        self.name = f"mnist-classifier:{classifier or 'shipped'}"

    @torch.inference_mode()
    def similarities(self, images: list[Tensor], prompts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        classes = [_digit(p) for p in prompts]
        x = torch.stack(images).float()
        if x.shape[1:] != (1, 28, 28):
            raise ScoreError(f"the MNIST classifier reads 1 x 28 x 28 digits, these images are "
                             f"{' x '.join(map(str, x.shape[1:]))}: give --clip MODEL")
        logits = self.model(x).double()  # [N x 10]
        S = logits[:, classes]
        success = logits.argmax(1) == torch.tensor(classes)
        return S, S, success


def _digit(prompt: str) -> int:
    try:
        k = int(prompt)
    except ValueError:
        k = -1
    if not 0 <= k <= 9:
        raise ScoreError(f"the MNIST classifier reads the classes 0-9, and this run's prompt is {prompt!r}: "
                         "give --clip MODEL to score prompts")
    return k


def alignment(S: Tensor) -> float:
    """``min_i S_ii``: the worst view's similarity to its own prompt."""
    return float(S.diagonal().min())


def concealment(logits: Tensor) -> float:
    """``1/N tr(softmax(S / tau))``, the softmax over prompts row by row (a view against the prompts)."""
    return float(logits.softmax(dim=1).diagonal().mean())


def summary(values: Sequence[float]) -> dict[str, float]:
    """Mean and the paper's quantiles (linear interpolation between order statistics, numpy's default)."""
    t = torch.tensor(list(values), dtype=torch.float64)
    out = {"mean": float(t.mean())}
    for q in QUANTILES:
        out[f"q{q:g}"] = float(torch.quantile(t, q))
    return out


@dataclass
class IllusionSample:
    """One sample's views (the sample first) and the prompt each should read as."""

    file: str
    names: list[str]
    images: list[Tensor]  # [C x H x W] in [0, 1]
    prompts: list[str]


def illusions_of(folder: str | Path) -> tuple[dict[str, Any], list[IllusionSample]]:
    """run.json and every sample's views as its techniques declare them (``Technique.illusion_views``),
    everything checked before any scorer loads."""
    folder = Path(folder)
    run = _read_run(folder)
    jobs = read_jobs(folder, lambda cls: getattr(cls, "illusion", False), run)
    if not jobs or not jobs[0].hooks:
        raise ScoreError(f"{folder} holds no illusion to score: none of its techniques shows the sample through "
                         "views (anagram does)")
    out = []
    for job in jobs:
        image = io.load_png(job.path)
        names, images, prompts = ["sample"], [image], [job.label]
        for tech in job.hooks:
            for name, view, prompt in tech.illusion_views(image):
                names.append(name)
                images.append(view)
                prompts.append(prompt)
        out.append(IllusionSample(job.path.name, names, images, prompts))
    return run, out


def scorer_for(run: dict[str, Any], clip: str | None = None, classifier: str | None = None,
               device: str = "cpu") -> Scorer:
    """CLIP when asked (or for prompts), the MNIST classifier for class-labelled 28x28 digits."""
    if clip:
        if classifier:
            raise ScoreError("give --clip or --classifier, not both")
        return ClipScorer(clip, device)
    backend = (run.get("request") or {}).get("backend") or run.get("backend")
    info = registry.backends().get(backend)
    kind = info.label_kind if info is not None else "prompt"
    if kind == "class" or classifier:
        return MnistScorer(classifier)
    return ClipScorer(DEFAULT_CLIP, device)


def score_samples(samples: list[IllusionSample], scorer: Scorer,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Each sample's matrix and scores, and the set's means and quantiles."""
    rows = []
    for k, s in enumerate(samples):
        if progress:
            progress(k, len(samples))
        S, logits, success = scorer.similarities(s.images, s.prompts)
        row = {"file": s.file, "views": s.names, "prompts": s.prompts, "similarity": S.tolist(),
               "alignment": alignment(S), "concealment": concealment(logits)}
        if success is not None:
            row["views_read"] = success.tolist()
            row["success"] = bool(success.all())
        rows.append(row)
    result: dict[str, Any] = {
        "scorer": scorer.name, "n": len(rows),
        "alignment": summary([r["alignment"] for r in rows]),
        "concealment": summary([r["concealment"] for r in rows]),
    }
    if scorer.has_success:
        result["success_rate"] = sum(r["success"] for r in rows) / len(rows)
        views = rows[0]["views"]
        result["view_read_rate"] = {v: sum(r["views_read"][i] for r in rows) / len(rows) for i, v in enumerate(views)}
    result["samples"] = rows
    return result


def prepare(folder: str | Path, *, overwrite: bool = False) -> tuple[dict[str, Any], list[IllusionSample], Path]:
    """Every check before a scorer loads: the run, its illusion, its images, and where ``score.json`` goes
    (an existing one is kept unless ``overwrite``)."""
    target = Path(folder) / "score.json"
    if target.exists() and not overwrite:
        raise ScoreError(f"{target} exists: pass --overwrite to score again")
    run, samples = illusions_of(folder)
    return run, samples, target


def score(folder: str | Path, *, clip: str | None = None, classifier: str | None = None, device: str = "cpu",
          write: bool = True, overwrite: bool = False,
          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Score the illusions of the run in ``folder`` (:func:`scorer_for` picks the scorer); with ``write``,
    into ``folder/score.json``."""
    run, samples, target = prepare(folder, overwrite=overwrite or not write)
    result = score_samples(samples, scorer_for(run, clip, classifier, device), progress)
    if write:
        io.write_json(target, result)
    return result


def describe(result: dict[str, Any]) -> str:
    """The set's scores in one paragraph, as the paper's table reads."""
    a, c = result["alignment"], result["concealment"]
    line = (f"{result['n']} samples scored by {result['scorer']}: alignment A {a['mean']:.4g} "
            f"(A_0.9 {a['q0.9']:.4g}, A_0.95 {a['q0.95']:.4g}); concealment C {c['mean']:.4g} "
            f"(C_0.9 {c['q0.9']:.4g}, C_0.95 {c['q0.95']:.4g})")
    if "success_rate" in result:
        rates = ", ".join(f"{v} {r:.0%}" for v, r in result["view_read_rate"].items())
        line += f"; every view read as its own class in {result['success_rate']:.1%} of samples ({rates})"
    return line


__all__ = ["score", "score_samples", "illusions_of", "scorer_for", "ClipScorer", "MnistScorer", "alignment",
           "concealment", "summary", "describe", "ScoreError", "DamagedFolder"]
