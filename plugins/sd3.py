"""Stable Diffusion 3 / 3.5 through diffusers: a flow-matching transformer on VAE latents.

The model predicts a velocity (``prediction_type = "flow_prediction"``); the Sampler turns it into the
noise and clean-image estimates every technique reads, and steps the model's own FlowMatch scheduler
(with its shift) by default, as ``StableDiffusion3Pipeline`` does. Prompts are encoded by that
pipeline's own ``encode_prompt`` (two CLIP encoders, T5 if the folder has one: diffusers allows none),
the null label being the empty prompt, as the pipeline's negative branch; so ``cfg:S`` is the pipeline's
``guidance_scale=S``. The folder's layout is read, configs first, before any weights load.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from diffkit import schedule
from diffkit.backends.base import Backend, BackendError, BackendInfo
from diffkit.backends.hub import load_json
from diffkit.hookspecs import hookimpl
from diffkit.params import Param, to_bool
from diffkit_plugins.sd import (HUB_HINT, Vae, _dtype, _pretrained, by_rows, check_offload, perturbed_attention,
                                read_layout)

SD3_MODEL = "stabilityai/stable-diffusion-3.5-medium"
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")


def family(index: dict[str, Any]) -> str:
    """What a diffusers folder's ``model_index.json`` holds: its pipeline's class name."""
    return str(index.get("_class_name", "?"))


def check_family(model: str, index: dict[str, Any], want: str, backend: str, others: dict[str, str]) -> None:
    """Refuse a folder of another family by name (a Flux folder given to sd3), before any weights load."""
    got = family(index)
    if got.startswith(want):
        return
    for prefix, other in others.items():
        if got.startswith(prefix):
            raise BackendError(f"{model} is a {got} folder: use --backend {other}, not {backend}")
    raise BackendError(f"{model} is not a {want} folder (its model_index.json names {got})")


def schedule_reader(default: str, kind: str) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """``BackendInfo.scheduler_of`` for a family: a local folder's scheduler config, read before any weights
    (a hub id's would need the network before the run starts: None, and the load checks it)."""
    from diffkit.backends.hub import is_local

    def read(options: dict[str, Any]) -> dict[str, Any] | None:
        model = options.get("model") or default
        return load_json(model, "scheduler", "scheduler_config.json", kind, HUB_HINT) if is_local(model) else None

    return read


def check_flow_scheduler(model: str, config: dict[str, Any]) -> None:
    if config.get("_class_name") not in FLOW_SCHEDULERS:
        raise BackendError(f"{model}: its scheduler is {config.get('_class_name')}, not a flow-matching one "
                           f"({', '.join(FLOW_SCHEDULERS)})")


class FlowVae(Vae):
    """The VAE as the flow pipelines scale latents: ``(z - shift_factor) * scaling_factor``."""

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype):
        super().__init__(model, device, dtype)
        self.offset = float(self.vae.config.shift_factor or 0.0)

    def _to_latents(self, z: Tensor) -> Tensor:
        return (z - self.offset) * self.scale

    def _from_latents(self, latents: Tensor) -> Tensor:
        return latents.to(self.dtype) / self.scale + self.offset


class SD3Text:
    """Prompt embeddings as ``StableDiffusion3Pipeline.encode_prompt`` makes them, one prompt at a time
    (cached): ``[N x (L D + P)]``, the sequence ``[L x D]`` flattened and the pooled ``[P]`` after it, so
    a condition is one tensor a sample (equal ones batch and dedupe)."""

    def __init__(self, model: str, index: dict[str, Any], device: torch.device, dtype: torch.dtype,
                 max_sequence_length: int, transformer: Any, home: torch.device | None = None):
        from diffusers import StableDiffusion3Pipeline
        from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

        def tokenizer(sub: str) -> Any:
            try:
                return AutoTokenizer.from_pretrained(model, subfolder=sub)
            except (OSError, ValueError) as e:
                raise BackendError(f"cannot load {sub}/ from {model}: {e}") from e

        has_t5 = bool(index.get("text_encoder_3") and index["text_encoder_3"][0])
        home = home or device  # where the encoders live between prompts (the CPU with offload)
        parts = dict(text_encoder=_pretrained(CLIPTextModelWithProjection, model, "text_encoder", dtype).to(home),
                     text_encoder_2=_pretrained(CLIPTextModelWithProjection, model, "text_encoder_2", dtype).to(home),
                     tokenizer=tokenizer("tokenizer"), tokenizer_2=tokenizer("tokenizer_2"),
                     text_encoder_3=_pretrained(T5EncoderModel, model, "text_encoder_3", dtype).to(home) if has_t5 else None,
                     tokenizer_3=tokenizer("tokenizer_3") if has_t5 else None)
        # The pipeline object only encodes prompts (the transformer's config sizes T5's place when there is
        # no T5): no VAE or scheduler in it.
        self.pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=None, vae=None, **parts)
        self.device, self.dtype, self.max_len = device, dtype, max_sequence_length
        self.cache: dict[str, Tensor] = {}
        self.shape: tuple[int, int, int] | None = None  # (L, D, P)

    @torch.inference_mode()
    def __call__(self, prompts: list[str]) -> Tensor:
        for p in dict.fromkeys(prompts):
            if p not in self.cache:
                emb, _, pooled, _ = self.pipe.encode_prompt(p, p, p, device=self.device, do_classifier_free_guidance=False,
                                                            max_sequence_length=self.max_len)
                self.shape = (emb.shape[1], emb.shape[2], pooled.shape[1])
                self.cache[p] = torch.cat([emb[0].flatten(), pooled[0]]).to(self.dtype)
        return torch.stack([self.cache[p] for p in prompts]).to(self.device)

    def split(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """``[B x (L D + P)]`` -> embeddings ``[B x L x D]``, pooled ``[B x P]``."""
        L, D, P = self.shape
        return cond[:, : L * D].reshape(-1, L, D), cond[:, L * D:]


class FlowLatent(Backend):
    """What the flow-matching latent families (sd3, flux, zimage) share: a velocity-predicting model on VAE
    latents ``[N x C x H/f x W/f]``, its own FlowMatch scheduler by default, the image size checked against
    the family's multiple, and images in and out through the VAE as the flow pipelines scale them."""

    prediction_type = "flow_prediction"
    default_sampler = "own"
    latent = True
    offload = False  # each part on the CPU between its calls (-O offload / --offload)
    device: torch.device

    @property
    def home(self) -> torch.device:
        """Where the parts live between calls: the CPU with offload, else the device they run on."""
        return torch.device("cpu") if self.offload else self.device

    @contextmanager
    def on_device(self, *parts: torch.nn.Module) -> Iterator[None]:
        """With offload, ``parts`` visit the device for one piece of work and go back to the CPU after, so one
        part at a time holds GPU memory: diffusers' ``enable_model_cpu_offload``, by hand, because the backend
        calls its parts itself (no pipeline to hook) and diffkit does not depend on accelerate."""
        if self.offload:
            for part in parts:
                part.to(self.device)
        try:
            yield
        finally:
            if self.offload:
                for part in parts:
                    part.to("cpu")

    def text_encoders(self) -> list[torch.nn.Module]:
        return [m for k, m in self.text.pipe.components.items() if k.startswith("text_encoder") and m is not None]

    def encode(self, labels: list[Any]) -> Tensor:
        """The prompts' embeddings (the null label is the empty prompt, the pipelines' negative branch); the
        encoders visit the device only for prompts not yet encoded."""
        prompts = ["" if lab is None else str(lab) for lab in labels]
        new = any(p not in self.text.cache for p in prompts)
        with self.on_device(*(self.text_encoders() if new else ())):
            return self.text(prompts)

    def set_shape(self, model: str, latent: int, height: int, width: int, step: int, why: str) -> None:
        """Check ``height``/``width`` are multiples of ``step`` (``why``: what makes it) and set the shapes."""
        for what, value in (("height", height), ("width", width)):
            if value % step:
                raise BackendError(f"--{what} must be a multiple of {step} for {model} ({why}), got {value}")
        self.sample_shape = (latent, height // self.factor, width // self.factor)
        self._image_shape = (3, height, width)

    def set_schedule(self, config: dict[str, Any]) -> None:
        """The model's FlowMatch scheduler config, and ``abar`` at each of its training timesteps ``t = sigma T``
        (for the techniques that read ``t / T``, such as guidance intervals)."""
        self.scheduler_config = config
        self.alphas_cumprod = schedule.flow_alphas_cumprod(int(config.get("num_train_timesteps", 1000)))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._image_shape

    def to_image(self, x: Tensor) -> Tensor:
        with self.on_device(self.vae.vae):
            return self.vae.decode(x)

    def from_image(self, img: Tensor) -> Tensor:
        with self.on_device(self.vae.vae):
            return self.vae.encode(img.to(self.device)).to(self.dtype)

    def to_pixels(self, x: Tensor) -> Tensor:
        with self.on_device(self.vae.vae):
            return self.vae.pixels(x)

    def from_pixels(self, img: Tensor) -> Tensor:
        with self.on_device(self.vae.vae):
            return self.vae.latents(img.to(self.device)).to(self.dtype)

    def state_from_image(self, img: Tensor, ctx: Any) -> Tensor:
        """The VAE posterior sampled with each sample's generator, as the img2img pipelines do."""
        eps = ctx.randn(self.sample_shape)
        with self.on_device(self.vae.vae):
            return self.vae.encode_sampled(img.to(self.device).expand(ctx.n, -1, -1, -1), eps).to(self.dtype)


class StableDiffusion3(FlowLatent):
    """SD3/3.5 as a diffkit backend: the Sampler runs on latents ``[N x C x H/f x W/f]`` (C = 16 for the
    real models); techniques see those latents as a VP state, and noise and clean-image estimates."""

    name = "sd3"
    KIND = "a diffusers Stable Diffusion 3 folder"
    PARTS = {"": "model_index.json", "transformer": "config.json", "vae": "config.json",
             "text_encoder": "config.json", "text_encoder_2": "config.json", "tokenizer": "tokenizer_config.json",
             "tokenizer_2": "tokenizer_config.json", "scheduler": "scheduler_config.json"}
    default_steps = 28  # StableDiffusion3Pipeline's num_inference_steps
    perturbations = ("attention_identity", "attention_blur", "block_skip")
    skip_layers: list[int] | None = None  # the blocks a perturbed call skips (SLG), None: none

    def __init__(self, model: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 height: int | None = None, width: int | None = None, max_sequence_length: int = 256,
                 offload: bool = False):
        index = load_json(model, "", "model_index.json", self.KIND, HUB_HINT)
        check_family(model, index, "StableDiffusion3", "sd3", {"Flux": "flux"})
        self.configs = read_layout(model, self.KIND, self.PARTS)
        tr, vae_cfg = self.configs["transformer"], self.configs["vae"]
        check_flow_scheduler(model, self.configs["scheduler"])
        self.factor = 2 ** (len(vae_cfg.get("block_out_channels", [0] * 4)) - 1)
        self.patch = int(tr.get("patch_size", 2))
        latent = int(vae_cfg.get("latent_channels", 16))
        if int(tr.get("in_channels", 16)) != latent:
            raise BackendError(f"{model}: its transformer takes {tr.get('in_channels')} channels, its VAE makes {latent}")
        size = int(tr.get("sample_size", 128)) * self.factor  # the pipeline's default_sample_size x vae_scale_factor
        height, width = height or size, width or size
        self.set_shape(model, latent, height, width, self.factor * self.patch,
                       f"its VAE's {self.factor}x latents in {self.patch}x{self.patch} patches")
        self.set_schedule(self.configs["scheduler"])
        self.checkpoint = model
        self.device, self.dtype, self.offload = torch.device(device), dtype, offload
        self.transformer = self.load_transformer(model)
        self.text = SD3Text(model, index, self.device, dtype, max_sequence_length, self.transformer, self.home)
        self.vae = FlowVae(model, self.home, dtype)

    @contextmanager
    def perturbed(self, perturbation: Any) -> Iterator[None]:
        """SLG's skipped blocks (``block_skip``: block indices, the transformer's own ``skip_layers``, as
        StableDiffusion3Pipeline's ``skip_guidance_layers``), or PAG's identity and SEG's blurred attention
        in the blocks named: a block index ``N`` (its attention layers), or diffusers' patterns
        (``blocks.1``, searched in the module names as the SD3 PAG pipeline's ``pag_applied_layers``)."""
        if perturbation.kind != "block_skip":
            layers = tuple(rf"transformer_blocks\.{p}\." if p.isdigit() else p for p in perturbation.layers)
            with perturbed_attention(self.transformer, "transformer", dataclasses.replace(perturbation, layers=layers)):
                yield
            return
        count = len(self.transformer.transformer_blocks)
        bad = [p for p in perturbation.layers if not p.isdigit() or int(p) >= count]
        if bad:
            raise ValueError(f"layers {'+'.join(bad)}: this transformer's blocks are 0..{count - 1}")
        self.skip_layers = [int(p) for p in perturbation.layers]
        try:
            yield
        finally:
            self.skip_layers = None

    def load_transformer(self, model: str) -> Any:
        from diffusers import SD3Transformer2DModel

        return _pretrained(SD3Transformer2DModel, model, "transformer", self.dtype).to(self.home)

    def schedule_kwargs(self, steps: int) -> dict[str, Any]:
        """The shift for the image's size where the scheduler shifts dynamically, as the pipeline computes it."""
        config = self.scheduler_config
        if not config.get("use_dynamic_shifting"):
            return {}
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        seq = (self.sample_shape[1] // self.patch) * (self.sample_shape[2] // self.patch)
        return {"mu": calculate_shift(seq, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                                      config.get("base_shift", 0.5), config.get("max_shift", 1.16))}

    @torch.inference_mode()
    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        def call(x: Tensor, t: Tensor, c: Tensor) -> Tensor:
            emb, pooled = self.text.split(c)
            return self.transformer(hidden_states=x, timestep=t, encoder_hidden_states=emb, pooled_projections=pooled,
                                    skip_layers=self.skip_layers, return_dict=False)[0]

        with self.on_device(self.transformer):
            return by_rows(call, self.device, x.to(self.dtype), t.to(self.device), cond)


def _sd3(model: str | None = None, height: int | None = None, width: int | None = None, device: str | None = None,
         dtype: str | None = None, max_sequence_length: int = 256, offload: bool | None = None) -> StableDiffusion3:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_offload(device, offload, "the transformer, the text encoders and the VAE")
    return StableDiffusion3(model or SD3_MODEL, device, _dtype(dtype, device), height, width, max_sequence_length,
                            bool(offload))


# diffusers' enable_model_cpu_offload: the flow families' text encoders (T5-XXL: 4.7 B parameters) and
# transformers do not fit one consumer GPU together
OFFLOAD = Param("offload", to_bool, False, "keep each part (transformer, text encoders, VAE) on the CPU between "
                                           "its calls, as the pipelines' enable_model_cpu_offload (small GPUs)",
                flag=True)


@hookimpl
def diffkit_backends() -> list[BackendInfo]:
    return [BackendInfo("sd3", "Stable Diffusion 3 / 3.5 (flow matching, latent) through diffusers; two CLIP "
                               "encoders and T5.", _sd3, _params(SD3_MODEL, "16"), label_kind="prompt",
                        formulation="flow", scheduler_of=schedule_reader(SD3_MODEL, StableDiffusion3.KIND),
                        perturbations=StableDiffusion3.perturbations, latent=True)]


def _params(default: str, multiple: str) -> tuple[Param, ...]:
    return (
        # in the order run.json records them (a request lists options as its backend declares them)
        Param("device", str, None, "where the model runs: cpu, cuda, cuda:N (default: cuda if available)",
              kind="device", flag=True),
        Param("model", str, None, f"hub id or folder in diffusers' layout (default {default})", kind="path", flag=True),
        Param("height", int, None, f"image height, a multiple of {multiple} (default the model's own)",
              range=(16, 8192), flag=True),
        Param("width", int, None, f"image width, a multiple of {multiple} (default the model's own)",
              range=(16, 8192), flag=True),
        Param("dtype", str, None, "weights' precision (default: fp16 on CUDA, fp32 on CPU; bf16 is what the "
                                  "flow models ship in)", choices=("fp16", "bf16", "fp32"), flag=True),
        Param("max_sequence_length", int, 256, "T5's prompt tokens (the pipeline's default)", range=(1, 512)),
        OFFLOAD,
    )

