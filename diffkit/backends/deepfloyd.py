"""DeepFloyd IF through diffusers and transformers: stage I (64x64) and stage II (x4 super-resolution).

Each stage is a backend for the same Sampler. Models load with ``from_pretrained`` from a hub id or
a local folder in diffusers' pipeline layout (``unet/``, ``scheduler/``, ``text_encoder/``,
``tokenizer/``, stage II also ``image_noising_scheduler/``). Prompt embeddings can come from a
safetensors file written by ``diffkit embed``, so that T5 never loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from diffkit import schedule
from diffkit.backends.base import Backend, BackendError
from diffkit.backends.hub import is_local, load_json
from diffkit.schedule import StepConfig

STAGE_I = "DeepFloyd/IF-I-XL-v1.0"
STAGE_II = "DeepFloyd/IF-II-L-v1.0"
MAX_LENGTH = 77  # IF's T5 was trained with 77 tokens


_exists_local = is_local
IF_HINT = ("IF weights are gated: accept the licence on huggingface.co and `huggingface-cli login`, or pass a "
           "local folder")


def _load_json(model: str, sub: str, name: str) -> dict:
    return load_json(model, sub, name, "a diffusers IF folder", IF_HINT)


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.float16 if device.startswith("cuda") else torch.float32
    table = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype not in table:
        raise BackendError(f"--dtype must be one of {', '.join(table)}, got {dtype!r}")
    return table[dtype]


class TextEncoder:
    """T5 prompt embeddings as IF's pipelines make them (lower-cased, stripped, 77 tokens), cached per prompt.

    ``embeddings``: a dict prompt -> ``[77 x D]`` (from ``diffkit embed``); T5 loads only for prompts not in it.
    """

    def __init__(self, model: str, device: str, dtype: torch.dtype, embeddings: dict[str, Tensor] | None = None):
        self.model, self.device, self.dtype = model, device, dtype
        self.cache: dict[str, Tensor] = dict(embeddings or {})
        self._t5 = None

    def load(self) -> None:
        from transformers import AutoTokenizer, T5EncoderModel

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model, subfolder="tokenizer")
            self._t5 = T5EncoderModel.from_pretrained(self.model, subfolder="text_encoder", torch_dtype=self.dtype,
                                                      use_safetensors=True)  # never unpickle weights
        except OSError as e:
            raise BackendError(f"cannot load IF's T5 from {self.model}: {e}") from e
        self._t5.to(self.device).eval()

    @staticmethod
    def clean(prompt: str) -> str:
        return prompt.lower().strip()

    @torch.inference_mode()
    def __call__(self, prompts: list[str]) -> Tensor:
        """Prompts -> ``[N x 77 x D]``."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            if self._t5 is None:
                self.load()
            tok = self.tokenizer([self.clean(p) for p in missing], padding="max_length", max_length=MAX_LENGTH,
                                 truncation=True, add_special_tokens=True, return_tensors="pt")
            emb = self._t5(tok.input_ids.to(self.device), attention_mask=tok.attention_mask.to(self.device))[0]
            for p, e in zip(missing, emb):
                self.cache[p] = e.to(self.dtype)
        return torch.stack([self.cache[p] for p in prompts]).to(self.device, self.dtype)


def save_embeddings(path: str | os.PathLike, embeddings: dict[str, Tensor], model: str) -> None:
    """Write prompt -> ``[77 x D]`` embeddings to a safetensors file (prompts in its metadata), atomically."""
    from safetensors.torch import save_file

    from diffkit.io import atomic_path

    prompts = list(embeddings)
    tensors = {f"prompt_{i}": embeddings[p].detach().float().cpu().contiguous() for i, p in enumerate(prompts)}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"prompts": json.dumps(prompts), "model": model})


def load_embeddings(path: str | os.PathLike) -> dict[str, Tensor]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BackendError(f"embeddings file not found: {path} (write one with `diffkit embed`)")
    try:  # safetensors only: a pickled file is read as bytes and refused, never unpickled
        with safe_open(str(path), "pt") as f:
            prompts = json.loads((f.metadata() or {})["prompts"])
            return {p: f.get_tensor(f"prompt_{i}") for i, p in enumerate(prompts)}
    except Exception as e:
        raise BackendError(f"{path} is not an embeddings file written by `diffkit embed` (a safetensors file "
                           f"with its prompts in the metadata): {type(e).__name__}") from None


class IFStage(Backend):
    """One IF stage as a diffkit backend. Stage II adds the upsampled, noised stage I image to the input."""

    def __init__(self, model: str, text: TextEncoder, device: str, dtype: torch.dtype, stage: int,
                 upscaler: str | None = None, stride: int = 30, offload: bool = False, noise_level: int = 250,
                 stage3: Callable[[Tensor, list[Any]], Backend] | None = None):
        from diffusers import UNet2DConditionModel

        self.name = "if"
        self.model_id, self.text, self.stage = model, text, stage
        self.device, self.dtype = torch.device(device), dtype
        self.scheduler_config = _load_json(model, "scheduler", "scheduler_config.json")
        self.alphas_cumprod = schedule.alphas_cumprod_from_config(self.scheduler_config)
        self.step_config = StepConfig.from_scheduler_config(self.scheduler_config)
        if self.scheduler_config.get("prediction_type", "epsilon") != "epsilon":
            raise BackendError(f"{model}: only epsilon prediction is supported")
        kwargs: dict[str, Any] = {"torch_dtype": dtype, "use_safetensors": True}  # never unpickle weights
        if not _exists_local(model) and dtype == torch.float16:
            kwargs["variant"] = "fp16"
        try:
            self.unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", **kwargs).eval()
        except OSError as e:
            raise BackendError(f"cannot load the IF UNet from {model}: {e}") from e
        self.offload = offload
        self.unet.to("cpu" if offload else self.device)
        size = self.unet.config.sample_size
        channels = self.unet.config.in_channels // (2 if stage == 2 else 1)
        self.sample_shape = (channels, size, size)
        self.stride, self.upscaler, self.noise_level = stride, upscaler, noise_level
        # After stage II: a factory of stage III from stage II's output and labels (the SD x4 upscaler,
        # made by diffkit_plugins.sd; the load function passes it in, so core imports no plugin)
        self.stage3 = stage3
        self.upscaled: Tensor | None = None
        self.low_res: Tensor | None = None
        if stage == 2:
            self.noising = schedule.alphas_cumprod_from_config(
                _load_json(model, "image_noising_scheduler", "scheduler_config.json"))

    def encode(self, labels: list[Any]) -> Tensor:
        return self.text(["" if lab is None else str(lab) for lab in labels])

    def start(self, ctx: Any) -> None:
        """Stage II: upsample stage I's output and noise it to ``noise_level`` with the run's generators.

        Called right after the initial noise draw, so the draws come in diffusers' order.
        """
        if self.stage != 2:
            return
        H, W = self.sample_shape[1:]
        up = F.interpolate(self.low_res.to(self.device, self.dtype), (H, W), mode="bilinear", align_corners=True)
        noise = ctx.randn(tuple(up.shape[1:]))
        self.upscaled = schedule.forward(up, self.noise_level, noise, self.noising).to(self.dtype)

    def model_input(self, x: Tensor) -> Tensor:
        return x if self.stage == 1 else torch.cat([x, self.upscaled], dim=1)

    @torch.inference_mode()
    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        if self.offload:
            self.unet.to(self.device)
        extra = {}
        if self.stage == 2:
            extra["class_labels"] = torch.full((x.shape[0],), self.noise_level, device=x.device)
        out = self.unet(x.to(self.dtype), t.to(self.device), encoder_hidden_states=cond, return_dict=False, **extra)[0]
        if self.offload:
            self.unet.to("cpu")
        return out

    def to_image(self, x: Tensor) -> Tensor:
        return (x / 2 + 0.5).clamp(0, 1)

    def from_image(self, img: Tensor) -> Tensor:
        return (img * 2 - 1).to(self.device, self.dtype)

    def next_stage(self, x: Tensor, labels: list[Any]) -> Backend | None:
        if self.stage == 2:
            return None if self.stage3 is None else self.stage3(x, labels)
        if not self.upscaler or self.upscaler == "none":
            return None
        nxt = IFStage(self.upscaler, self.text, str(self.device), self.dtype, 2, stride=self.stride,
                      offload=self.offload, stage3=self.stage3)
        nxt.low_res = x
        return nxt

    def weak_model(self, model: str | None) -> IFStage:
        """A smaller stage I (``model``: hub id or folder) sharing this one's T5, device and dtype."""
        if not model:
            raise BackendError("on IF give the weak stage I as model= (a hub id or folder, e.g. DeepFloyd/IF-I-M-v1.0)")
        return IFStage(model, self.text, str(self.device), self.dtype, 1, stride=self.stride, offload=self.offload)


def load(model: str | None = None, upscaler: str | None = None, device: str | None = None, dtype: str | None = None,
         embeddings: str | None = None, offload: bool | None = None, stride: int = 30,
         stage3: Callable[[Tensor, list[Any]], Backend] | None = None, **_: Any) -> IFStage:
    """``--backend if``: stage I from ``model`` (default the IF-I-XL hub id), stage II from ``upscaler``,
    then ``stage3(stage II's output, labels)`` if given."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if offload and torch.device(device).type == "cpu":
        raise BackendError("--offload keeps the UNet on the CPU between calls to free GPU memory; with --device "
                           "cpu it is there already: drop --offload")
    dt = resolve_dtype(dtype, device)
    model = model or STAGE_I
    upscaler = STAGE_II if upscaler is None else upscaler
    emb = load_embeddings(embeddings) if embeddings else None
    text = TextEncoder(model, device, dt, emb)
    return IFStage(model, text, device, dt, 1, upscaler=upscaler, stride=stride, offload=bool(offload),
                   stage3=stage3)
