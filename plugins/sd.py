"""Stable Diffusion's family through diffusers: latent models whose images go in and out through a VAE.

This module holds what those models share (CLIP prompts as diffusers' pipelines encode them, the VAE)
and the x4 upscaler, which IF runs as its stage III (``--stage3``) the way the Visual Anagrams release
runs it: ``StableDiffusionUpscalePipeline`` with the first prompt at noise level 0, its default guidance
(9) and steps (75) with the model's own scheduler. Models load with ``from_pretrained`` from a hub id or a
local folder in diffusers' layout; the layout is checked, configs first, before any weights load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from diffkit import schedule
from diffkit.backends.base import Backend, BackendError, StageRecipe
from diffkit.backends.hub import load_json
from diffkit.schedule import StepConfig

X4_UPSCALER = "stabilityai/stable-diffusion-x4-upscaler"
PREDICTIONS = ("epsilon", "v_prediction")


def read_layout(model: str, kind: str, parts: dict[str, str]) -> dict[str, dict]:
    """Each part's config (``{"unet": "config.json", ...}``) of ``model``; a part missing is a BackendError
    naming it, before any weights load."""
    return {sub: load_json(model, sub, name, kind) for sub, name in parts.items()}


def check_prediction(model: str, config: dict) -> str:
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTIONS:
        raise BackendError(f"{model}: prediction_type {kind!r} is not supported (diffkit runs "
                           f"{' and '.join(PREDICTIONS)} models)")
    return kind


def _pretrained(cls: Any, model: str, sub: str, dtype: torch.dtype) -> Any:
    try:  # safetensors only: weights are never unpickled
        return cls.from_pretrained(model, subfolder=sub, torch_dtype=dtype, use_safetensors=True).eval()
    except (OSError, ValueError) as e:
        raise BackendError(f"cannot load {sub}/ from {model}: {e}") from e


class ClipText:
    """Prompt embeddings ``[N x L x D]`` as Stable Diffusion's pipelines make them (``encode_prompt``: padded
    to the tokenizer's ``model_max_length``, truncated, the last hidden state), cached per prompt.
    The null label is the empty prompt, as the pipelines' unconditional branch."""

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype,
                 tokenizer: str = "tokenizer", encoder: str = "text_encoder"):
        from transformers import AutoTokenizer, CLIPTextModel

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, subfolder=tokenizer)
        except (OSError, ValueError) as e:
            raise BackendError(f"cannot load {tokenizer}/ from {model}: {e}") from e
        self.encoder = _pretrained(CLIPTextModel, model, encoder, dtype).to(device)
        self.device, self.dtype = device, dtype
        self.cache: dict[str, Tensor] = {}

    @torch.inference_mode()
    def __call__(self, prompts: list[str]) -> Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            tok = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt")
            mask = tok.attention_mask.to(self.device) if getattr(self.encoder.config, "use_attention_mask",
                                                                 False) else None
            emb = self.encoder(tok.input_ids.to(self.device), attention_mask=mask)[0]
            for p, e in zip(missing, emb):
                self.cache[p] = e.to(self.dtype)
        return torch.stack([self.cache[p] for p in prompts])


class Vae:
    """A diffusers ``AutoencoderKL``: images in [0, 1] ``[N x 3 x H x W]`` <-> latents ``[N x C x H/f x W/f]``
    scaled by the model's ``scaling_factor``. In fp16 a VAE marked ``force_upcast`` runs in fp32, as the
    pipelines run it (its decoder overflows in fp16)."""

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype):
        from diffusers import AutoencoderKL

        config = load_json(model, "vae", "config.json", "a diffusers folder")
        self.upcast = dtype == torch.float16 and bool(config.get("force_upcast", True))
        self.dtype = torch.float32 if self.upcast else dtype
        self.vae = _pretrained(AutoencoderKL, model, "vae", self.dtype).to(device)
        self.scale = float(self.vae.config.scaling_factor)
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.inference_mode()
    def decode(self, latents: Tensor) -> Tensor:
        img = self.vae.decode(latents.to(self.dtype) / self.scale, return_dict=False)[0]
        return (img / 2 + 0.5).clamp(0, 1)

    @torch.inference_mode()
    def encode(self, img: Tensor) -> Tensor:
        """The latent distribution's mean (deterministic: the same image, the same latents)."""
        return self.vae.encode(img.to(self.dtype) * 2 - 1).latent_dist.mean * self.scale


@dataclass
class UpscalerSpec:
    """How IF's stage III runs (the `if` backend's stage3 options)."""

    model: str
    guidance: float = 9.0  # StableDiffusionUpscalePipeline's default guidance_scale
    steps: int = 75  # its default num_inference_steps
    noise_level: int = 0  # the release's


class X4Models:
    """The x4 upscaler's parts, loaded once for every batch of a run (lazily: at stage III's first batch)."""

    KIND = "a diffusers Stable Diffusion x4 upscaler folder"
    PARTS = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
             "tokenizer": "tokenizer_config.json", "scheduler": "scheduler_config.json",
             "low_res_scheduler": "scheduler_config.json", "": "model_index.json"}

    def __init__(self, spec: UpscalerSpec):
        self.spec = spec
        self.configs = read_layout(spec.model, self.KIND, self.PARTS)
        unet, vae = self.configs["unet"], self.configs["vae"]
        latent = int(vae.get("latent_channels", 4))
        if unet.get("in_channels") != latent + 3 or not unet.get("num_class_embeds"):
            raise BackendError(f"{spec.model} is not an x4 upscaler: its UNet takes {unet.get('in_channels')} "
                               f"channels (an upscaler takes {latent} latent + 3 image channels and a noise level)")
        self.max_noise_level = int(self.configs[""].get("max_noise_level", 350))
        if not 0 <= spec.noise_level <= self.max_noise_level:
            raise BackendError(f"stage3_noise_level must be in 0..{self.max_noise_level}, got {spec.noise_level}")
        self.prediction_type = check_prediction(spec.model, self.configs["scheduler"])
        self.loaded = False

    def load(self, device: torch.device, dtype: torch.dtype, offload: bool) -> X4Models:
        if self.loaded:
            return self
        from diffusers import UNet2DConditionModel

        m = self.spec.model
        self.text = ClipText(m, device, dtype)
        self.vae = Vae(m, device, dtype)
        self.unet = _pretrained(UNet2DConditionModel, m, "unet", dtype).to("cpu" if offload else device)
        self.device, self.dtype, self.offload, self.loaded = device, dtype, offload, True
        return self


class X4Upscaler(Backend):
    """The SD x4 upscaler as a diffkit stage: latents ``[N x 4 x H x W]`` at the low-resolution image's
    size, the noised low-resolution image appended to the model's input; the VAE decodes to 4x the size.

    ``low_res``: the previous stage's output in [-1, 1] ``[N x 3 x H x W]`` (IF II's final state).
    """

    name = "sd-x4-upscaler"

    def __init__(self, models: X4Models, low_res: Tensor):
        spec, sched = models.spec, models.configs["scheduler"]
        self.models, self.checkpoint = models, spec.model
        self.device, self.dtype = models.device, models.dtype
        self.scheduler_config = sched
        self.alphas_cumprod = schedule.alphas_cumprod_from_config(sched)
        self.step_config = StepConfig.from_scheduler_config(sched)
        self.prediction_type = models.prediction_type
        self.noising = schedule.alphas_cumprod_from_config(models.configs["low_res_scheduler"])
        self.noise_level = spec.noise_level
        self.low_res = low_res.to(self.device, self.dtype)
        self.sample_shape = (models.vae.vae.config.latent_channels, *low_res.shape[-2:])
        self.image: Tensor | None = None
        hooks = (f"cfg:{spec.guidance}",) if spec.guidance > 1 else ()  # the pipeline guides only above 1
        self.recipe = StageRecipe(hooks, f"diffusers:{sched.get('_class_name', 'DDIMScheduler')}", spec.steps)

    def encode(self, labels: list[Any]) -> Tensor:
        return self.models.text(["" if lab is None else str(lab) for lab in labels])

    def prepare(self, ctx: Any) -> None:
        """The pipeline noises the low-resolution image to ``noise_level`` before it draws the latents."""
        noise = ctx.randn(tuple(self.low_res.shape[1:]))
        self.image = schedule.forward(self.low_res, self.noise_level, noise, self.noising).to(self.dtype)

    def model_input(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.image], dim=1)

    @torch.inference_mode()
    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        unet = self.models.unet
        if self.models.offload:
            unet.to(self.device)
        level = torch.full((x.shape[0],), self.noise_level, dtype=torch.long, device=self.device)
        out = unet(x.to(self.dtype), t.to(self.device), encoder_hidden_states=cond, class_labels=level,
                   return_dict=False)[0]
        if self.models.offload:
            unet.to("cpu")
        return out

    def to_image(self, x: Tensor) -> Tensor:
        return self.models.vae.decode(x)

    def from_image(self, img: Tensor) -> Tensor:
        return self.models.vae.encode(img.to(self.device)).to(self.dtype)


def upscaler_stage(spec: UpscalerSpec, offload: bool = False) -> Callable[[Tensor, list[Any]], X4Upscaler]:
    """IF's stage III factory: ``(stage II's output, labels) -> X4Upscaler``. The layout is checked now
    (before IF loads); the weights load when stage III first runs, once for every batch, on the device
    and in the dtype of the stage before it."""
    models = X4Models(spec)

    def make(low_res: Tensor, labels: list[Any]) -> X4Upscaler:
        return X4Upscaler(models.load(low_res.device, low_res.dtype, offload), low_res)

    return make
