"""Stable Diffusion's family through diffusers: latent models whose images go in and out through a VAE.

This module holds the `sd` (1.x/2.x) and `sdxl` backends, what those models share (CLIP prompts as
diffusers' pipelines encode them, the VAE) and the x4 upscaler, which IF runs as its stage III (``--stage3``) the way the Visual Anagrams release
runs it: ``StableDiffusionUpscalePipeline`` with the first prompt at noise level 0, its default guidance
(9) and steps (75) with the model's own scheduler. Models load with ``from_pretrained`` from a hub id or a
local folder in diffusers' layout; the layout is checked, configs first, before any weights load.
"""

from __future__ import annotations

import dataclasses
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from diffkit import schedule
from diffkit.backends.base import Backend, BackendError, BackendInfo, StageRecipe
from diffkit.fixed_rows import in_fixed_chunks
from diffkit.backends.hub import load_json
from diffkit.hookspecs import hookimpl
from diffkit.params import Param, to_bool
from diffkit.schedule import StepConfig

X4_UPSCALER = "stabilityai/stable-diffusion-x4-upscaler"
SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
HUB_HINT = "Pass a local folder in diffusers' layout (save_pretrained), or log in and check the id"
PREDICTIONS = ("epsilon", "v_prediction")


def read_layout(model: str, kind: str, parts: dict[str, str]) -> dict[str, dict]:
    """Each part's config (``{"unet": "config.json", ...}``) of ``model``; a part missing is a BackendError
    naming it, before any weights load."""
    return {sub: load_json(model, sub, name, kind) for sub, name in parts.items()}


def check_prediction(model: str, config: dict) -> str:
    """The scheduler config's prediction type, refused unless diffkit runs it; the schedule checked too."""
    try:
        schedule.betas_from_config(config)
    except ValueError as e:
        raise BackendError(f"{model}: {e}") from None
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTIONS:
        raise BackendError(f"{model}: prediction_type {kind!r} is not supported (diffkit runs "
                           f"{' and '.join(PREDICTIONS)} models)")
    return kind


def by_rows(f: Callable[..., Tensor], device: torch.device, *args: Tensor | None) -> Tensor:
    """``f(*args)`` one row a call on the CPU, each call on one thread, as many at a time as torch has
    threads (``in_fixed_chunks``, as the MNIST backend): a CPU kernel's float sums depend on the batch
    and the thread count, and so a sample's bytes would depend on its batch, on --batch-size and on the
    number of torchrun processes. On a GPU one call (cuDNN, too, picks kernels by batch shape: the
    bytes may move in the last bits between batch sizes there, as IF's)."""
    if device.type != "cpu":
        return f(*args)
    return in_fixed_chunks(f, 1, *args, workers=torch.get_num_threads())


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
            emb = by_rows(lambda ids, m: self.encoder(ids, attention_mask=m)[0], self.device,
                          tok.input_ids.to(self.device), mask)
            for p, e in zip(missing, emb):
                self.cache[p] = e.to(self.dtype)
        return torch.stack([self.cache[p] for p in prompts])


class Vae:
    """A diffusers ``AutoencoderKL``: images in [0, 1] ``[N x 3 x H x W]`` <-> latents ``[N x C x H/f x W/f]``
    scaled by the model's ``scaling_factor``, as each pipeline scales them.

    ``upcast``: in fp16, run a VAE whose config says ``force_upcast`` in fp32, as the SDXL and x4-upscaler
    pipelines do (SDXL's decoder overflows in fp16); ``StableDiffusionPipeline`` never upcasts, so `sd`
    passes False and decodes in the model's dtype as it does. ``normalise``: shift and scale by the config's
    ``latents_mean``/``latents_std`` where it has them, as the SDXL pipelines do (SD's ignore them)."""

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype, upcast: bool = False,
                 normalise: bool = False):
        from diffusers import AutoencoderKL

        config = load_json(model, "vae", "config.json", "a diffusers folder")
        self.upcast = upcast and dtype == torch.float16 and bool(config.get("force_upcast", True))
        self.dtype = torch.float32 if self.upcast else dtype
        self.vae = _pretrained(AutoencoderKL, model, "vae", self.dtype).to(device)
        self.scale = float(self.vae.config.scaling_factor)
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        mean, std = config.get("latents_mean"), config.get("latents_std")
        self.shift = None
        if normalise and mean is not None and std is not None:
            self.shift = (torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1))

    def _to_latents(self, z: Tensor) -> Tensor:
        """The VAE's latent space -> the diffusion model's: ``z * scale`` or ``(z - mean) * scale / std``."""
        if self.shift is None:
            return z * self.scale
        mean, std = (v.to(z.device, z.dtype) for v in self.shift)
        return (z - mean) * self.scale / std

    def _from_latents(self, latents: Tensor) -> Tensor:
        """The diffusion model's latents -> the VAE's (the inverse of :meth:`_to_latents`)."""
        z = latents.to(self.dtype)
        if self.shift is None:
            return z / self.scale
        mean, std = (v.to(z.device, z.dtype) for v in self.shift)
        return z * std / self.scale + mean

    @torch.inference_mode()
    def pixels(self, latents: Tensor) -> Tensor:
        """The decoder's own output ``[N x 3 x H x W]``, nominally in [-1, 1], not clamped."""
        return by_rows(lambda z: self.vae.decode(z, return_dict=False)[0], latents.device, self._from_latents(latents))

    def decode(self, latents: Tensor) -> Tensor:
        return (self.pixels(latents) / 2 + 0.5).clamp(0, 1)

    def _posterior(self, pixels: Tensor) -> Tensor:
        """The latent distribution's parameters ``[N x 2C x h x w]`` (mean, log-variance) of an image in [-1, 1],
        in the VAE's dtype."""
        return by_rows(lambda x: self.vae.encode(x).latent_dist.parameters, pixels.device, pixels)

    @torch.inference_mode()
    def latents(self, pixels: Tensor) -> Tensor:
        """The latent distribution's mean, scaled, of an image in the decoder's [-1, 1] (deterministic)."""
        return self._to_latents(self._posterior(pixels.to(self.dtype)).chunk(2, dim=1)[0])

    @torch.inference_mode()
    def encode(self, img: Tensor) -> Tensor:
        """The latent distribution's mean of an image in [0, 1] (deterministic: the same image, the same latents)."""
        return self._to_latents(self._posterior(img.to(self.dtype) * 2 - 1).chunk(2, dim=1)[0])

    @torch.inference_mode()
    def encode_sampled(self, img: Tensor, eps: Tensor) -> Tensor:
        """A sample of the latent distribution, ``mean + std eps`` scaled, as diffusers' img2img and inpaint
        pipelines take it (``retrieve_latents``, ``sample_mode="sample"``)."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        dist = DiagonalGaussianDistribution(self._posterior(img.to(self.dtype) * 2 - 1))  # diffusers' own clamp of the log-variance
        return self._to_latents(dist.mean + dist.std * eps.to(dist.mean.dtype))


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
        self.vae = Vae(m, device, dtype, upcast=True)  # StableDiffusionUpscalePipeline upcasts
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
        self.recipe = StageRecipe(hooks, "own", spec.steps)  # the model's own scheduler (DDIM), as the pipeline

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
        out = by_rows(lambda x, t, c, lv: unet(x, t, encoder_hidden_states=c, class_labels=lv, return_dict=False)[0],
                      self.device, x.to(self.dtype), t.to(self.device), cond, level)
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


# ------------------------------------------------------------------------------ perturbed attention (pag, seg)


def attention_layers(model: torch.nn.Module, owner: str, patterns: tuple[str, ...]) -> list[torch.nn.Module]:
    """The self-attention modules of ``model`` (a pipeline's ``owner``: "unet" or "transformer") that
    ``patterns`` name, found by diffusers' own matcher for ``pag_applied_layers``
    (``PAGMixin._set_pag_attn_processor``: each pattern searched in the module names), run on a stand-in
    pipeline and undone; a pattern that matches none is a ValueError naming it."""
    from diffusers.pipelines.pag.pag_utils import PAGMixin

    before = {m: m.processor for m in model.modules() if hasattr(m, "processor")}
    mark = object()
    stand_in = type("StandIn", (), {owner: model, "_pag_attn_processors": (mark, mark)})()
    try:
        PAGMixin._set_pag_attn_processor(stand_in, list(patterns), True)
    except ValueError as e:
        raise ValueError(f"{e} (layers are searched in the module names, as diffusers' pag_applied_layers)") from None
    finally:
        found = [m for m, proc in before.items() if m.processor is mark]
        for m in found:
            m.processor = before[m]
    return found


class AllRowsPerturbed:
    """An attention processor that runs every row through a diffusers PAG processor's perturbed path
    (``PAGIdentitySelfAttnProcessor2_0``; SD3's joint attention: ``PAGJointAttnProcessor2_0``, which keeps
    the image tokens' attention to the prompt). Those take the pipelines' batch, ``[original | perturbed]``
    halves; a diffkit call holds perturbed rows only (``Backend.perturbed``), so each goes in twice and
    the second half is kept: the original path's work in these few layers is the price of diffusers' math."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None) -> Any:
        n = hidden_states.shape[0]
        two = [torch.cat([hidden_states, hidden_states]),
               None if encoder_hidden_states is None else torch.cat([encoder_hidden_states, encoder_hidden_states])]
        if hasattr(attn, "add_q_proj") and attn.add_q_proj is not None:  # joint attention (SD3)
            out = self.processor(attn, *two, attention_mask)
            return tuple(o[n:] for o in out)
        return self.processor(attn, *two, attention_mask, temb)[n:]


def seg_blur(query: Tensor, sigma: float, inf_threshold: float = 9999.0) -> Tensor:
    """Smoothed energy guidance's blur of the image tokens' queries ``[N x L x D]`` (Hong 2024, the SEG-SDXL
    release's ``gaussian_blur_2d`` on the square grid of the first ``floor(sqrt(L))^2`` tokens): a Gaussian
    of ``sigma`` tokens, or, at ``sigma`` above ``inf_threshold``, the tokens' mean (infinite blur). By hand:
    diffusers' copy (hooks/smoothed_energy_guidance_utils.py) swaps the two branches, so its default
    infinite blur runs a finite kernel instead."""
    import math

    n, length, dim = query.shape
    side = int(math.sqrt(length))
    grid = query[:, : side * side].permute(0, 2, 1).reshape(n, dim, side, side)
    if sigma > inf_threshold:
        grid = grid.mean(dim=(-2, -1), keepdim=True).expand(-1, -1, side, side)
    else:
        size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
        size = min(size, side - (side % 2 - 1))  # odd, and no wider than the grid (the release's reflect pad)
        half = (size - 1) / 2
        pdf = torch.exp(-0.5 * (torch.linspace(-half, half, steps=size) / sigma).pow(2))
        k1 = (pdf / pdf.sum()).to(query)
        kernel = (k1[:, None] * k1[None, :]).expand(dim, 1, size, size)
        grid = F.conv2d(F.pad(grid, [size // 2] * 4, mode="reflect"), kernel, groups=dim)
    out = query.clone()
    out[:, : side * side] = grid.reshape(n, dim, side * side).permute(0, 2, 1)
    return out


@contextmanager
def perturbed_attention(model: torch.nn.Module, owner: str, perturbation: Any) -> Iterator[None]:
    """``model``'s self-attention in the layers ``perturbation`` names made the identity (PAG) or given
    blurred queries (SEG) until the context exits."""
    from diffusers.models.attention_processor import PAGIdentitySelfAttnProcessor2_0, PAGJointAttnProcessor2_0

    layers = attention_layers(model, owner, perturbation.layers)
    undo: list[Callable[[], None]] = []
    try:
        for m in layers:
            if perturbation.kind == "attention_identity":
                joint = getattr(m, "add_q_proj", None) is not None
                kept = m.processor
                m.processor = AllRowsPerturbed(PAGJointAttnProcessor2_0() if joint else PAGIdentitySelfAttnProcessor2_0())
                undo.append(lambda m=m, kept=kept: setattr(m, "processor", kept))
            elif perturbation.kind == "attention_blur":
                hook = m.to_q.register_forward_hook(lambda _m, _i, out: seg_blur(out, perturbation.blur))
                undo.append(hook.remove)
            else:
                raise ValueError(f"cannot perturb attention by {perturbation.kind!r}")
        yield
    finally:
        for u in undo:
            u()


# ------------------------------------------------------------------------------ Stable Diffusion 1.x/2.x


def _dtype(dtype: str | None, device: str) -> torch.dtype:
    from diffkit.backends.deepfloyd import resolve_dtype  # the same words as IF: fp16 on CUDA by default

    return resolve_dtype(dtype, device)


def _check_size(name: str, value: int, factor: int) -> None:
    step = max(8, factor)  # diffusers' check_inputs: multiples of 8; and whole latent pixels
    if value % step:
        raise BackendError(f"--{name} must be a multiple of {step}, got {value} (the VAE's latent grid is 1/{factor} "
                           "of the image)")


class StableDiffusion(Backend):
    """Stable Diffusion 1.x/2.x as a diffkit backend: the Sampler runs on latents ``[N x 4 x H/f x W/f]``;
    ``from_image`` encodes through the VAE and ``to_image`` decodes, so every technique keeps its meaning.

    ``model``: hub id or folder in diffusers' layout (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``);
    ``height``/``width``: the image's (default the model's own: ``unet.sample_size x f``, as the pipeline).
    """

    name = "sd"
    KIND = "a diffusers Stable Diffusion 1.x/2.x folder"
    PARTS = {"": "model_index.json", "unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
             "tokenizer": "tokenizer_config.json", "scheduler": "scheduler_config.json"}
    stride = 20  # 50 steps by default, the pipeline's num_inference_steps
    default_sampler = "own"
    perturbations = ("attention_identity", "attention_blur")
    latent = True
    VAE_LIKE_XL = False  # the VAE as StableDiffusionPipeline runs it: never upcast, no latents_mean (see Vae)

    def __init__(self, model: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 height: int | None = None, width: int | None = None, offload: bool = False,
                 text: Any = None, vae: Vae | None = None):
        self.configs = self.read(model)
        unet, vae_cfg = self.configs["unet"], self.configs["vae"]
        factor = 2 ** (len(vae_cfg.get("block_out_channels", [0] * 4)) - 1)
        latent = int(vae_cfg.get("latent_channels", 4))
        if unet.get("in_channels", 4) != latent or unet.get("num_class_embeds"):
            raise BackendError(f"{model}: its UNet takes {unet.get('in_channels')} input channels and "
                               f"{latent}-channel latents; `{self.name}` runs text-to-image models (an inpainting "
                               "or upscaler UNet is not one)")
        size = int(unet.get("sample_size", 64)) * factor
        height, width = height or size, width or size
        for name, value in (("height", height), ("width", width)):
            _check_size(name, value, factor)
        self.prediction_type = check_prediction(model, self.configs["scheduler"])
        self.scheduler_config = self.configs["scheduler"]
        self.alphas_cumprod = schedule.alphas_cumprod_from_config(self.scheduler_config)
        self.step_config = StepConfig.from_scheduler_config(self.scheduler_config)
        self.checkpoint, self.model_id = model, model
        self.device, self.dtype, self.offload = torch.device(device), dtype, offload
        self.sample_shape = (latent, height // factor, width // factor)
        self._image_shape = (3, height, width)
        self.load_models(model, text, vae)

    @classmethod
    def read(cls, model: str) -> dict[str, dict]:
        index = load_json(model, "", "model_index.json", cls.KIND, HUB_HINT)
        if "text_encoder_2" in index and cls.name == "sd":
            raise BackendError(f"{model} is an SDXL folder (it has text_encoder_2): use --backend sdxl")
        if "text_encoder_2" not in index and cls.name == "sdxl":
            raise BackendError(f"{model} is not an SDXL folder (no text_encoder_2): use --backend sd")
        return read_layout(model, cls.KIND, cls.PARTS)

    def load_models(self, model: str, text: Any, vae: Vae | None) -> None:
        from diffusers import UNet2DConditionModel

        self.text = text or ClipText(model, self.device, self.dtype)
        self.vae = vae or Vae(model, self.device, self.dtype, upcast=self.VAE_LIKE_XL, normalise=self.VAE_LIKE_XL)
        self.unet = _pretrained(UNet2DConditionModel, model, "unet", self.dtype).to(
            "cpu" if self.offload else self.device)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._image_shape

    def encode(self, labels: list[Any]) -> Tensor:
        return self.text(["" if lab is None else str(lab) for lab in labels])

    def unet_kwargs(self, cond: Tensor, n: int) -> dict[str, Any]:
        return {"encoder_hidden_states": cond}

    @torch.inference_mode()
    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        if self.offload:
            self.unet.to(self.device)
        out = by_rows(lambda x, t, c: self.unet(x, t, return_dict=False, **self.unet_kwargs(c, x.shape[0]))[0],
                      self.device, x.to(self.dtype), t.to(self.device), cond)
        if self.offload:
            self.unet.to("cpu")
        return out

    def perturbed(self, perturbation: Any) -> Iterator[None]:
        """PAG's identity or SEG's blurred self-attention in the UNet's layers: diffusers' patterns
        (``mid``, ``down_blocks.1``, ``up_blocks.0.attentions.1``, searched in the module names), ``down.N``
        and ``up.N`` short for ``down_blocks.N`` and ``up_blocks.N``."""
        layers = tuple(re.sub(r"^(down|up)\.(\d+)$", r"\1_blocks.\2", p) for p in perturbation.layers)
        return perturbed_attention(self.unet, "unet", dataclasses.replace(perturbation, layers=layers))

    def to_image(self, x: Tensor) -> Tensor:
        return self.vae.decode(x)

    def from_image(self, img: Tensor) -> Tensor:
        return self.vae.encode(img.to(self.device)).to(self.dtype)

    def to_pixels(self, x: Tensor) -> Tensor:
        return self.vae.pixels(x)

    def from_pixels(self, img: Tensor) -> Tensor:
        return self.vae.latents(img.to(self.device)).to(self.dtype)

    def state_from_image(self, img: Tensor, ctx: Any) -> Tensor:
        """The VAE posterior sampled with each sample's generator, as the img2img pipeline does."""
        eps = ctx.randn(self.sample_shape)  # [N x 4 x h x w], drawn before the run's initial noise
        return self.vae.encode_sampled(img.to(self.device).expand(ctx.n, -1, -1, -1), eps).to(self.dtype)

    def weak_model(self, model: str | None) -> StableDiffusion:
        """A smaller model of the same family (``model``: hub id or folder) for autoguide; it shares this
        one's text encoder and VAE, so its UNet must take the same embeddings and latents."""
        if not model:
            raise BackendError(f"on {self.name} give the weak model as model= (a hub id or folder of a smaller "
                               "UNet trained with the same text encoder and VAE)")
        weak = type(self)(model, str(self.device), self.dtype, self.image_shape[1], self.image_shape[2],
                          self.offload, text=self.text, vae=self.vae)
        mine, its = self.configs["unet"], weak.configs["unet"]
        if mine.get("cross_attention_dim") != its.get("cross_attention_dim"):
            raise BackendError(f"model={model} takes {its.get('cross_attention_dim')}-wide text embeddings, this "
                               f"model {mine.get('cross_attention_dim')}: give one trained with the same text encoder")
        return weak


class StableDiffusionXL(StableDiffusion):
    """SDXL: two CLIP text encoders (their penultimate layers side by side, the second's pooled output)
    and size/crop conditioning, as ``StableDiffusionXLPipeline`` makes them. The null label is zeros where
    the model's ``force_zeros_for_empty_prompt`` says so (the pipeline's unconditional branch).

    A condition is one tensor a sample (so equal ones batch and dedupe): ``[N x (L + 1) x D]``, the
    embeddings and, in the last row, the pooled embedding zero-padded to ``D``.
    """

    name = "sdxl"
    KIND = "a diffusers SDXL folder"
    PARTS = {**StableDiffusion.PARTS, "text_encoder_2": "config.json", "tokenizer_2": "tokenizer_config.json"}
    VAE_LIKE_XL = True  # upcast in fp16 where force_upcast says so; latents_mean/latents_std

    def load_models(self, model: str, text: Any, vae: Vae | None) -> None:
        self.zeros_for_null = bool(self.configs[""].get("force_zeros_for_empty_prompt", True))
        super().load_models(model, text or XLText(model, self.device, self.dtype), vae)
        self.pooled = self.text.pooled_dim
        H, W = self.image_shape[1:]
        # (original size, crop top-left, target size): the pipeline's defaults for an uncropped image
        self.time_ids = torch.tensor([[H, W, 0, 0, H, W]], dtype=self.dtype, device=self.device)
        expected = self.unet.add_embedding.linear_1.in_features
        given = self.unet.config.addition_time_embed_dim * 6 + self.pooled
        if expected != given:
            raise BackendError(f"{model}: the UNet expects {expected} added conditioning features, the text "
                               f"encoders and size conditioning give {given}: the folder's parts do not match")

    def encode(self, labels: list[Any]) -> Tensor:
        emb, pooled = self.text(["" if lab is None else str(lab) for lab in labels])
        packed = torch.cat([emb, F.pad(pooled, (0, emb.shape[-1] - pooled.shape[-1]))[:, None]], dim=1)
        if self.zeros_for_null:
            null = torch.tensor([lab is None for lab in labels], device=packed.device)
            packed = torch.where(null[:, None, None], torch.zeros_like(packed), packed)
        return packed

    def unet_kwargs(self, cond: Tensor, n: int) -> dict[str, Any]:
        return {"encoder_hidden_states": cond[:, :-1],
                "added_cond_kwargs": {"text_embeds": cond[:, -1, : self.pooled],
                                      "time_ids": self.time_ids.expand(n, -1)}}


class XLText:
    """SDXL's two text encoders as ``StableDiffusionXLPipeline.encode_prompt`` uses them: each one's
    penultimate hidden state, side by side ``[N x L x (D1 + D2)]``, and the second's projected pooled
    output ``[N x P]``; cached per prompt."""

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype):
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

        self.parts = []
        for tok, enc, cls in (("tokenizer", "text_encoder", CLIPTextModel),
                              ("tokenizer_2", "text_encoder_2", CLIPTextModelWithProjection)):
            try:
                tokenizer = AutoTokenizer.from_pretrained(model, subfolder=tok)
            except (OSError, ValueError) as e:
                raise BackendError(f"cannot load {tok}/ from {model}: {e}") from e
            self.parts.append((tokenizer, _pretrained(cls, model, enc, dtype).to(device)))
        self.device, self.dtype = device, dtype
        self.pooled_dim = int(self.parts[1][1].config.projection_dim)
        self.cache: dict[str, tuple[Tensor, Tensor]] = {}

    @torch.inference_mode()
    def __call__(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            hidden = []
            for tokenizer, encoder in self.parts:
                ids = tokenizer(missing, padding="max_length", max_length=tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids.to(self.device)
                hidden.append(by_rows(lambda i: encoder(i, output_hidden_states=True).hidden_states[-2],
                                      self.device, ids))
            # the pooled, projected output of the second encoder (the pipeline keeps the last one's)
            pooled = by_rows(lambda i: encoder(i)[0], self.device, ids)
            emb = torch.cat(hidden, dim=-1)
            for i, p in enumerate(missing):
                self.cache[p] = (emb[i].to(self.dtype), pooled[i].to(self.dtype))
        return (torch.stack([self.cache[p][0] for p in prompts]).to(self.device),
                torch.stack([self.cache[p][1] for p in prompts]).to(self.device))


def _load(cls: type[StableDiffusion], model: str | None, height: int | None, width: int | None,
          device: str | None, dtype: str | None, offload: bool | None) -> StableDiffusion:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_offload(device, offload, "the UNet")
    default = SD_MODEL if cls is StableDiffusion else SDXL_MODEL
    return cls(model or default, device, _dtype(dtype, device), height, width, bool(offload))


def check_offload(device: str, offload: bool | None, parts: str) -> None:
    if offload and torch.device(device).type == "cpu":
        raise BackendError(f"--offload keeps {parts} on the CPU between calls to free GPU memory; with --device "
                           "cpu it is there already: drop --offload")


def _sd(model=None, height=None, width=None, device=None, dtype=None, offload=None):
    return _load(StableDiffusion, model, height, width, device, dtype, offload)


def _sdxl(model=None, height=None, width=None, device=None, dtype=None, offload=None):
    return _load(StableDiffusionXL, model, height, width, device, dtype, offload)


def _params(default: str) -> tuple[Param, ...]:
    return (
        # in the order run.json records them (a request lists options as its backend declares them)
        Param("device", str, None, "where the model runs: cpu, cuda, cuda:N (default: cuda if available)",
              kind="device", flag=True),
        Param("model", str, None, f"hub id or folder in diffusers' layout (default {default})", kind="path", flag=True),
        Param("height", int, None, "image height, a multiple of 8 (default the model's own)", range=(8, 8192), flag=True),
        Param("width", int, None, "image width, a multiple of 8 (default the model's own)", range=(8, 8192), flag=True),
        Param("dtype", str, None, "weights' precision (default: fp16 on CUDA, fp32 on CPU)",
              choices=("fp16", "bf16", "fp32"), flag=True),
        Param("offload", to_bool, False, "keep the UNet on the CPU between calls (small GPUs)", flag=True),
    )


@hookimpl
def diffkit_backends() -> list[BackendInfo]:
    return [
        BackendInfo("sd", "Stable Diffusion 1.x/2.x (latent; epsilon or v-prediction) through diffusers; CLIP "
                          "prompts.", _sd, _params(SD_MODEL), label_kind="prompt",
                    perturbations=StableDiffusion.perturbations, latent=True),
        BackendInfo("sdxl", "Stable Diffusion XL through diffusers: two CLIP encoders, size conditioning.", _sdxl,
                    _params(SDXL_MODEL), label_kind="prompt", perturbations=StableDiffusionXL.perturbations,
                    latent=True),
    ]
