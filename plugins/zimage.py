"""Z-Image (Tongyi-MAI, 2025; Turbo and Base) through diffusers: a 6B single-stream flow transformer with a
Qwen3 text encoder, the 2025-26 family that runs on one consumer GPU.

As ``ZImagePipeline`` runs it: latents in float32 whatever the weights' precision, the transformer fed a
list of ``[C x 1 x h x w]`` latents at ``1 - sigma`` and answering ``x0 - eps`` (the pipeline negates it
into the velocity ``eps - x0``), prompts through the tokenizer's chat template and the encoder's
second-to-last hidden layer, each prompt's own length (no padding reaches the model), the pipeline's
sigmas ``linspace(1, 1/n, n)``. Its guidance is written ``pos + g (pos - neg)``: ``--technique cfg:S`` is
``guidance_scale = S - 1`` there (the pipeline's default 5 is ``cfg:6``; Turbo runs unguided).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffkit.backends.base import BackendError, BackendInfo
from diffkit.backends.hub import load_json
from diffkit.hookspecs import hookimpl
from diffkit.params import Param
from diffkit_plugins.sd import HUB_HINT, _dtype, _pretrained, by_rows, check_offload, read_layout
from diffkit_plugins.sd3 import OFFLOAD, FlowLatent, FlowVae, check_family, check_flow_scheduler, schedule_reader

ZIMAGE_MODEL = "Tongyi-MAI/Z-Image-Turbo"


class ZImageText:
    """``ZImagePipeline._encode_prompt``, one prompt at a time (cached): its embedding ``[len x D]`` of its own
    length, kept as one tensor a sample ``[1 + L D]`` (the length, then the embedding zero-padded to the
    longest allowed), so equal prompts batch and dedupe."""

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype, max_sequence_length: int,
                 home: torch.device | None = None):
        from diffusers import ZImagePipeline
        from transformers import AutoModel, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(model, subfolder="tokenizer")
        except (OSError, ValueError) as e:
            raise BackendError(f"cannot load tokenizer/ from {model}: {e}") from e
        encoder = _pretrained(AutoModel, model, "text_encoder", dtype).to(home or device)
        self.pipe = ZImagePipeline(scheduler=None, vae=None, transformer=None, tokenizer=tokenizer, text_encoder=encoder)
        self.device, self.max_len = device, max_sequence_length
        self.width = int(encoder.config.hidden_size)
        self.cache: dict[str, Tensor] = {}

    @torch.inference_mode()
    def __call__(self, prompts: list[str]) -> Tensor:
        for p in dict.fromkeys(prompts):
            if p not in self.cache:
                [emb] = self.pipe._encode_prompt([p], device=self.device, max_sequence_length=self.max_len)
                row = torch.zeros(1 + self.max_len * self.width, dtype=torch.float32)
                row[0] = emb.shape[0]
                row[1: 1 + emb.numel()] = emb.float().flatten().cpu()
                self.cache[p] = row
        return torch.stack([self.cache[p] for p in prompts]).to(self.device)

    def split(self, cond: Tensor, dtype: torch.dtype) -> list[Tensor]:
        """``[B x (1 + L D)]`` -> each sample's embedding ``[len x D]``."""
        return [c[1: 1 + int(c[0]) * self.width].view(-1, self.width).to(dtype) for c in cond]


class ZImage(FlowLatent):
    name = "zimage"
    KIND = "a diffusers Z-Image folder"
    PARTS = {"": "model_index.json", "transformer": "config.json", "vae": "config.json",
             "text_encoder": "config.json", "tokenizer": "tokenizer_config.json", "scheduler": "scheduler_config.json"}
    default_steps = 50  # ZImagePipeline's num_inference_steps (Turbo is run with 8-9)
    dtype = torch.float32  # the state: the pipeline keeps its latents in float32 whatever the weights are

    def __init__(self, model: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 height: int | None = None, width: int | None = None, max_sequence_length: int = 512,
                 offload: bool = False):
        index = load_json(model, "", "model_index.json", self.KIND, HUB_HINT)
        check_family(model, index, "ZImage", "zimage", {"Flux": "flux", "StableDiffusion3": "sd3"})
        if index.get("_class_name") != "ZImagePipeline":
            raise BackendError(f"{model} is a {index.get('_class_name')} folder; `zimage` runs text-to-image "
                               "ZImagePipeline models")
        self.configs = read_layout(model, self.KIND, self.PARTS)
        tr, vae_cfg = self.configs["transformer"], self.configs["vae"]
        check_flow_scheduler(model, self.configs["scheduler"])
        self.factor = 2 ** (len(vae_cfg.get("block_out_channels", [0] * 4)) - 1)
        latent = int(vae_cfg.get("latent_channels", 16))
        if int(tr.get("in_channels", 16)) != latent:
            raise BackendError(f"{model}: its transformer takes {tr.get('in_channels')} channels, its VAE makes {latent}")
        height, width = height or 1024, width or 1024  # the pipeline's defaults
        self.set_shape(model, latent, height, width, 2 * self.factor, f"its VAE's {self.factor}x latents in 2x2 patches")
        self.set_schedule(self.configs["scheduler"])
        self.checkpoint = model
        self.device, self.weights, self.offload = torch.device(device), dtype, offload
        from diffusers import ZImageTransformer2DModel

        self.transformer = _pretrained(ZImageTransformer2DModel, model, "transformer", dtype).to(self.home)
        self.text = ZImageText(model, self.device, dtype, max_sequence_length, self.home)
        self.vae = FlowVae(model, self.home, dtype)

    def schedule_kwargs(self, steps: int) -> dict[str, Any]:
        from diffusers.pipelines.z_image.pipeline_z_image import calculate_shift

        c = self.scheduler_config
        seq = (self.sample_shape[1] // 2) * (self.sample_shape[2] // 2)
        mu = calculate_shift(seq, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        return {"mu": mu, "sigmas": np.linspace(1.0, 1 / steps, steps).tolist()}

    @torch.inference_mode()
    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        def call(x: Tensor, t: Tensor, c: Tensor) -> Tensor:
            out = self.transformer(list(x.to(self.weights).unsqueeze(2).unbind(0)), (1000 - t.float()) / 1000,
                                   self.text.split(c, self.weights), return_dict=False)[0]
            return -torch.stack([o.float() for o in out]).squeeze(2)  # the model answers x0 - eps

        with self.on_device(self.transformer):
            return by_rows(call, self.device, x, t.to(self.device), cond)


def _zimage(model: str | None = None, height: int | None = None, width: int | None = None, device: str | None = None,
            dtype: str | None = None, max_sequence_length: int = 512, offload: bool | None = None) -> ZImage:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_offload(device, offload, "the transformer, the text encoder and the VAE")
    return ZImage(model or ZIMAGE_MODEL, device, _dtype(dtype, device), height, width, max_sequence_length,
                  bool(offload))


@hookimpl
def diffkit_backends() -> list[BackendInfo]:
    return [BackendInfo("zimage", "Z-Image Turbo / Base (flow matching, Qwen3 prompts) through diffusers; cfg:S is "
                                  "its guidance_scale S - 1.", _zimage, (
        Param("device", str, None, "where the model runs: cpu, cuda, cuda:N (default: cuda if available)",
              kind="device", flag=True),
        Param("model", str, None, f"hub id or folder in diffusers' layout (default {ZIMAGE_MODEL})", kind="path",
              flag=True),
        Param("height", int, None, "image height, a multiple of 16 (default 1024, the pipeline's)", range=(16, 8192),
              flag=True),
        Param("width", int, None, "image width, a multiple of 16 (default 1024, the pipeline's)", range=(16, 8192),
              flag=True),
        Param("dtype", str, None, "weights' precision (default: fp16 on CUDA, fp32 on CPU; bf16 is what it ships "
                                  "in); the latents stay float32, as the pipeline keeps them",
              choices=("fp16", "bf16", "fp32"), flag=True),
        Param("max_sequence_length", int, 512, "the prompt's tokens (the pipeline's default)", range=(1, 1024)),
        OFFLOAD,
    ), label_kind="prompt", formulation="flow", scheduler_of=schedule_reader(ZIMAGE_MODEL, ZImage.KIND),
        latent=True)]
