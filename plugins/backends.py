"""Built-in backends: mnist (diffkit's own UNet), gaussian (exact denoiser, for tests), if (DeepFloyd IF).

Each is declared here (name, help, options as ``Param``s) and built by a ``load`` that imports its
module only when called, so listing backends loads no model code.
"""

from __future__ import annotations

from diffkit.backends.base import BackendError, BackendInfo
from diffkit.hookspecs import hookimpl
from diffkit.params import Param, to_bool


def _mnist_formulation(options: dict) -> str:
    """A flow-matching checkpoint (``train mnist --objective flow``) or a DDPM, from its config.json alone; a
    checkpoint that does not read is left to ``load``, which says why."""
    from diffkit.mnist import checkpoint

    try:
        return "flow" if checkpoint.load_config(options.get("checkpoint")).get("objective") == "flow" else "vp"
    except (OSError, ValueError, checkpoint.CheckpointError):
        return "vp"


def _mnist(checkpoint: str | None = None, device: str | None = None):
    from diffkit.backends.mnist import MnistBackend

    return MnistBackend(checkpoint, device or "cpu")


def _if(stage3: str | None = None, stage3_guidance: float = 9.0, stage3_steps: int = 75,
        stage3_noise_level: int = 0, **options: object):
    from diffkit.backends.deepfloyd import load

    then = None
    if stage3 and stage3 != "none":  # its layout is checked before IF loads
        from diffkit_plugins.sd import UpscalerSpec, upscaler_stage

        if options.get("upscaler") == "none":
            raise BackendError("stage III upscales stage II's 256-pixel image: --stage3 needs a stage II "
                               "(drop --upscaler none)")
        then = upscaler_stage(UpscalerSpec(stage3, stage3_guidance, stage3_steps, stage3_noise_level),
                              offload=bool(options.get("offload")))
    return load(**options, stage3=then)


def _if_embed(prompts: list[str], out: str, append: bool = True, model: str | None = None,
              device: str | None = None, dtype: str | None = None, **unused: object) -> int:
    """`diffkit embed`: T5 embeddings of ``prompts`` (and, with ``append``, those already in ``out``) saved
    to ``out``, so that ``--embeddings out`` never loads T5; the number saved."""
    import os

    import torch

    from diffkit.backends.deepfloyd import STAGE_I, TextEncoder, load_embeddings, resolve_dtype, save_embeddings

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    known = load_embeddings(out) if append and os.path.exists(out) else {}
    text = TextEncoder(model or STAGE_I, device, resolve_dtype(dtype, device), known)
    text(list(prompts))
    save_embeddings(out, text.cache, model or STAGE_I)
    return len(text.cache)


def _gaussian(means: str = "0.2,0.8", std: float = 0.15, formulation: str = "vp", shift: float = 1.0):
    from diffkit.backends.gaussian import GaussianBackend  # imported when the backend is built, not listed

    return GaussianBackend.from_options(means, std, formulation, shift)


GAUSSIAN = BackendInfo(
    "gaussian", "exact denoiser of a Gaussian mixture (8x8), one class per mean: for tests and teaching.", _gaussian,
    params=(
        Param("means", str, "0.2,0.8", "comma list: the pixel value of each class's mean (2..10 classes)"),
        Param("std", float, 0.15, "standard deviation of every class around its mean", range=(0.01, 10.0)),
        Param("formulation", str, "vp", "vp: a discrete variance-preserving model (T=300, predicts noise); flow: "
                                        "a flow-matching one (predicts the velocity eps - x0)", choices=("vp", "flow")),
        Param("shift", float, 1.0, "a flow model's sigma shift, as SD3's scheduler config declares one",
              range=(0.1, 20.0)),
    ),
    label_kind="class",  # --class feeds it (a prompt backend: "prompt")
    formulation=lambda options: options.get("formulation", "vp"),
)


@hookimpl
def diffkit_backends() -> list[BackendInfo]:
    return [
        BackendInfo("mnist", "diffkit's class-conditioned MNIST DDPM (28x28, T=300); ships with diffkit.", _mnist, (
            Param("checkpoint", str, None, "checkpoint folder written by `diffkit train mnist`, or a shipped "
                                           "model: mnist-class (default, fast), mnist-h64 (quality), mnist-flow "
                                           "(flow matching, few steps)", kind="path", flag=True,
                  offers=("mnist-class", "mnist-h64", "mnist-h64-ema", "mnist-weak", "mnist-flow")),
            Param("device", str, None, "where the model runs: cpu (default), cuda, cuda:N", kind="device", flag=True),
        ), label_kind="class", default=True, formulation=_mnist_formulation),
        GAUSSIAN,
        # options in the order run.json records them (a request lists them as its backend declares them)
        BackendInfo("if", "DeepFloyd IF stage I (64x64), stage II (x4) and optionally stage III (the SD x4 "
                          "upscaler) through diffusers; T5 prompts.", _if, (
            Param("device", str, None, "where the model runs: cpu, cuda, cuda:N (default: cuda if available)",
                  kind="device", flag=True),
            Param("model", str, None, "stage I: hub id or local folder (default DeepFloyd/IF-I-XL-v1.0)",
                  kind="path", flag=True, offers=("DeepFloyd/IF-I-XL-v1.0",)),
            Param("upscaler", str, None, "stage II: hub id, folder, or none (default DeepFloyd/IF-II-L-v1.0)",
                  kind="path", flag=True, offers=("DeepFloyd/IF-II-L-v1.0", "none")),
            Param("stage3", str, None, "stage III, x4 to 1024 pixels: the SD x4 upscaler's hub id "
                                       "(stabilityai/stable-diffusion-x4-upscaler) or folder; default none",
                  kind="path", flag=True),
            Param("dtype", str, None, "weights' precision (default: fp16 on CUDA, fp32 on CPU)",
                  choices=("fp16", "bf16", "fp32"), flag=True),
            Param("embeddings", str, None, "safetensors file from `diffkit embed` (T5 is not loaded for its "
                                           "prompts)", kind="path", flag=True),
            Param("offload", to_bool, False, "keep the UNet on the CPU between calls (small GPUs)", flag=True),
            Param("stage3_guidance", float, 9.0, "stage III's guidance scale (the upscale pipeline's default)",
                  range=(0.0, 100.0)),
            Param("stage3_steps", int, 75, "stage III's steps with the upscaler's own scheduler", range=(1, 1000)),
            Param("stage3_noise_level", int, 0, "noise added to stage II's image before stage III (the Visual "
                                                "Anagrams release: 0)", range=(0, 350)),
        ), label_kind="prompt", embed=_if_embed,
            conditioned_from=lambda options: None if options.get("upscaler") == "none" else 2),
    ]
