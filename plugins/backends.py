"""Built-in backends: mnist (diffkit's own UNet), gaussian (exact denoiser, for tests), if (DeepFloyd IF)."""

from __future__ import annotations

from diffkit.backends.base import BackendInfo
from diffkit.hookspecs import hookimpl


def _mnist(checkpoint: str | None = None, device: str = "cpu", stride: int = 1, **_: object):
    from diffkit.backends.mnist import MnistBackend

    return MnistBackend(checkpoint, device or "cpu", stride)


def _gaussian(stride: int = 1, **_: object):
    from diffkit.backends.gaussian import GaussianBackend

    return GaussianBackend(means=(0.2, 0.8), std=0.15, stride=stride)


def _if(**options: object):
    from diffkit.backends.deepfloyd import load

    return load(**options)


@hookimpl
def diffkit_backends() -> list[BackendInfo]:
    return [
        BackendInfo("mnist", "diffkit's class-conditioned MNIST DDPM (28x28, T=300); ships with diffkit.",
                    _mnist, {"checkpoint": "checkpoint folder or shipped name: mnist-class (default), mnist-h64",
                             "device": "cpu or cuda"},
                    label_kind="class"),
        BackendInfo("gaussian", "exact denoiser of a 2-class Gaussian mixture (8x8): for tests and teaching.",
                    _gaussian, {}, label_kind="class"),
        BackendInfo("if", "DeepFloyd IF stage I (64x64) and stage II (x4) through diffusers; T5 prompts.",
                    _if, {"model": "stage I: hub id or local folder (default DeepFloyd/IF-I-XL-v1.0)",
                          "upscaler": "stage II: hub id, folder, or none (default DeepFloyd/IF-II-L-v1.0)",
                          "device": "cpu, cuda, ... (default: cuda if available)",
                          "dtype": "fp16, bf16 or fp32 (default: fp16 on CUDA, fp32 on CPU)",
                          "embeddings": "safetensors file from `diffkit embed` (T5 is not loaded for its prompts)",
                          "offload": "keep the UNet on the CPU between calls (small GPUs)"},
                    label_kind="prompt"),
    ]
