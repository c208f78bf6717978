"""Flux.1 (dev, schnell and their fine-tunes) through diffusers: a flow-matching transformer on packed latents.

The transformer reads the VAE's latents packed in 2x2 patches (``FluxPipeline._pack_latents``); the
Sampler and every technique see the unpacked grid ``[N x C x H/f x W/f]``, so views and masks act on the
image's layout, and ``predict`` packs and unpacks around the model call. Two kinds of guidance:

- ``-O guidance=G`` is the embedded (distilled) guidance a dev model was trained to take as an input, the
  pipeline's ``guidance_scale`` (default 3.5); a model without a guidance embedding (schnell) refuses it;
- ``--technique cfg:S`` is true classifier-free guidance against the empty prompt, the pipeline's
  ``true_cfg_scale=S`` with ``negative_prompt=""`` (a negative-prompt technique's prompt where one is given).

The sigmas are the pipeline's (``linspace(1, 1/n, n)``), shifted for the image's size (``mu``) as it computes
the shift. The folder's layout is read, configs first, before any weights load.
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
from diffkit_plugins.sd3 import (OFFLOAD, FlowLatent, FlowVae, check_family, check_flow_scheduler, family,
                                 schedule_reader)

FLUX_MODEL = "black-forest-labs/FLUX.1-dev"
DEFAULT_GUIDANCE = 3.5  # FluxPipeline's guidance_scale


def pack(x: Tensor) -> Tensor:
    """``[B x C x h x w]`` -> ``[B x (h/2)(w/2) x 4C]``, as ``FluxPipeline._pack_latents``."""
    B, C, h, w = x.shape
    return x.view(B, C, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (h // 2) * (w // 2), C * 4)


def unpack(x: Tensor, h: int, w: int) -> Tensor:
    """The inverse of :func:`pack`, as ``FluxPipeline._unpack_latents``."""
    B, _, D = x.shape
    return x.view(B, h // 2, w // 2, D // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, D // 4, h, w)


class FluxText:
    """Prompt embeddings as ``FluxPipeline.encode_prompt`` makes them (T5's sequence, CLIP's pooled output),
    one prompt at a time (cached), as one tensor a sample ``[N x (L D + P)]``."""

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype, max_sequence_length: int,
                 home: torch.device | None = None):
        from diffusers import FluxPipeline
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        def tokenizer(sub: str) -> Any:
            try:
                return AutoTokenizer.from_pretrained(model, subfolder=sub)
            except (OSError, ValueError) as e:
                raise BackendError(f"cannot load {sub}/ from {model}: {e}") from e

        self.pipe = FluxPipeline(  # it only encodes prompts: no transformer, VAE or scheduler in it
            scheduler=None, vae=None, transformer=None, tokenizer=tokenizer("tokenizer"),
            tokenizer_2=tokenizer("tokenizer_2"),
            text_encoder=_pretrained(CLIPTextModel, model, "text_encoder", dtype).to(home or device),
            text_encoder_2=_pretrained(T5EncoderModel, model, "text_encoder_2", dtype).to(home or device))
        self.device, self.dtype, self.max_len = device, dtype, max_sequence_length
        self.cache: dict[str, Tensor] = {}
        self.shape: tuple[int, int, int] | None = None  # (L, D, P)

    @torch.inference_mode()
    def __call__(self, prompts: list[str]) -> Tensor:
        for p in dict.fromkeys(prompts):
            if p not in self.cache:
                emb, pooled, _ = self.pipe.encode_prompt(p, p, device=self.device, max_sequence_length=self.max_len)
                self.shape = (emb.shape[1], emb.shape[2], pooled.shape[1])
                self.cache[p] = torch.cat([emb[0].flatten(), pooled[0]]).to(self.dtype)
        return torch.stack([self.cache[p] for p in prompts]).to(self.device)

    def split(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        L, D, P = self.shape
        return cond[:, : L * D].reshape(-1, L, D), cond[:, L * D:]


class Flux(FlowLatent):
    name = "flux"
    KIND = "a diffusers Flux folder"
    PARTS = {"": "model_index.json", "transformer": "config.json", "vae": "config.json",
             "text_encoder": "config.json", "text_encoder_2": "config.json", "tokenizer": "tokenizer_config.json",
             "tokenizer_2": "tokenizer_config.json", "scheduler": "scheduler_config.json"}
    default_steps = 28  # FluxPipeline's num_inference_steps

    def __init__(self, model: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 height: int | None = None, width: int | None = None, guidance: float | None = None,
                 max_sequence_length: int = 512, offload: bool = False):
        index = load_json(model, "", "model_index.json", self.KIND, HUB_HINT)
        check_family(model, index, "Flux", "flux", {"StableDiffusion3": "sd3"})
        if family(index) != "FluxPipeline":
            raise BackendError(f"{model} is a {family(index)} folder; `flux` runs text-to-image FluxPipeline models")
        self.configs = read_layout(model, self.KIND, self.PARTS)
        tr, vae_cfg = self.configs["transformer"], self.configs["vae"]
        check_flow_scheduler(model, self.configs["scheduler"])
        self.embedded = bool(tr.get("guidance_embeds", False))
        if guidance is not None and not self.embedded:
            raise BackendError(f"-O guidance={guidance:g}: {model} has no guidance embedding (a schnell-like model); "
                               "drop it, or guide with --technique cfg:S (true CFG)")
        self.guidance = DEFAULT_GUIDANCE if guidance is None else guidance
        self.factor = 2 ** (len(vae_cfg.get("block_out_channels", [0] * 4)) - 1)
        latent = int(vae_cfg.get("latent_channels", 16))
        if int(tr.get("in_channels", 64)) != 4 * latent:
            raise BackendError(f"{model}: its transformer takes {tr.get('in_channels')} channels, not the 2x2 packed "
                               f"{latent}-channel latents of its VAE ({4 * latent})")
        size = 128 * self.factor  # the pipeline's default_sample_size x vae_scale_factor
        height, width = height or size, width or size
        self.set_shape(model, latent, height, width, 2 * self.factor, f"its VAE's {self.factor}x latents packed 2x2")
        self.set_schedule(self.configs["scheduler"])
        self.checkpoint = model
        self.device, self.dtype, self.offload = torch.device(device), dtype, offload
        from diffusers import FluxPipeline, FluxTransformer2DModel

        self.transformer = _pretrained(FluxTransformer2DModel, model, "transformer", dtype).to(self.home)
        self.text = FluxText(model, self.device, dtype, max_sequence_length, self.home)
        self.vae = FlowVae(model, self.home, dtype)
        h, w = self.sample_shape[1:]
        self.img_ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, self.device, dtype)

    def schedule_kwargs(self, steps: int) -> dict[str, Any]:
        """The pipeline's sigmas and its shift for the image's size (``mu`` of the packed sequence's length)."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = self.scheduler_config
        seq = (self.sample_shape[1] // 2) * (self.sample_shape[2] // 2)
        mu = calculate_shift(seq, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        sigmas = None if c.get("use_flow_sigmas") else np.linspace(1.0, 1 / steps, steps)
        return {"mu": mu, **({"sigmas": sigmas} if sigmas is not None else {})}

    @torch.inference_mode()
    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        h, w = x.shape[-2:]
        L = self.text.shape[0]
        txt_ids = torch.zeros(L, 3, device=self.device, dtype=self.dtype)

        def call(x: Tensor, t: Tensor, c: Tensor) -> Tensor:
            emb, pooled = self.text.split(c)
            g = torch.full((x.shape[0],), self.guidance, device=self.device, dtype=torch.float32) if self.embedded else None
            out = self.transformer(hidden_states=pack(x), timestep=t.to(x.dtype) / 1000, guidance=g,
                                   pooled_projections=pooled, encoder_hidden_states=emb, txt_ids=txt_ids,
                                   img_ids=self.img_ids, return_dict=False)[0]
            return unpack(out, h, w)

        with self.on_device(self.transformer):
            return by_rows(call, self.device, x.to(self.dtype), t.to(self.device), cond)


def _flux(model: str | None = None, height: int | None = None, width: int | None = None, device: str | None = None,
          dtype: str | None = None, guidance: float | None = None, max_sequence_length: int = 512,
          offload: bool | None = None) -> Flux:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_offload(device, offload, "the transformer, the text encoders and the VAE")
    return Flux(model or FLUX_MODEL, device, _dtype(dtype, device), height, width, guidance, max_sequence_length,
                bool(offload))


@hookimpl
def diffkit_backends() -> list[BackendInfo]:
    return [BackendInfo("flux", "Flux.1 (flow matching, packed latents) through diffusers; CLIP and T5 prompts; "
                                "-O guidance is the embedded guidance, cfg:S true CFG.", _flux, (
        Param("device", str, None, "where the model runs: cpu, cuda, cuda:N (default: cuda if available)",
              kind="device", flag=True),
        Param("model", str, None, f"hub id or folder in diffusers' layout (default {FLUX_MODEL})", kind="path",
              flag=True),
        Param("height", int, None, "image height, a multiple of 16 (default the model's own)", range=(16, 8192),
              flag=True),
        Param("width", int, None, "image width, a multiple of 16 (default the model's own)", range=(16, 8192),
              flag=True),
        Param("dtype", str, None, "weights' precision (default: fp16 on CUDA, fp32 on CPU; bf16 is what Flux "
                                  "ships in)", choices=("fp16", "bf16", "fp32"), flag=True),
        Param("guidance", float, None, "the embedded (distilled) guidance of a dev model, the pipeline's "
                                       f"guidance_scale (default {DEFAULT_GUIDANCE}); refused on a model without one",
              range=(0.0, 100.0)),
        Param("max_sequence_length", int, 512, "T5's prompt tokens (the pipeline's default)", range=(1, 512)),
        OFFLOAD,
    ), label_kind="prompt", formulation="flow", scheduler_of=schedule_reader(FLUX_MODEL, Flux.KIND),
        latent=True)]
