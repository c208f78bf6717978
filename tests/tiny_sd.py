"""Tiny Stable Diffusion-shaped models built from configs (no hub access): a CLIP text encoder with an
in-memory word-level tokenizer, a VAE, UNets with SD's block types and SD's scheduler settings, saved
with the diffusers pipelines' ``save_pretrained`` so they load as the real folders do."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("a an the of oil painting people around campfire old man photo rocket ship waterfall dog cat "
         "high quality hat skull snowy mountain village lithograph red blue").split()


def tokenizer(max_length: int = 77):
    """CLIP's framing (start and end tokens, padded with the end token) over a word-level vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                                       special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<unk>", model_max_length=max_length)


def text_encoder(seed: int = 0, hidden: int = 32, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=64, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, projection_dim=hidden, hidden_act="gelu")
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def vae(blocks: int = 2, seed: int = 1):
    """``blocks`` resolutions: a latent grid ``2 ** (blocks - 1)`` times smaller (SD: 4 blocks, 8x; the x4
    upscaler: 3 blocks, 4x)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=[8] * (blocks - 1) + [16], in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * blocks, up_block_types=["UpDecoderBlock2D"] * blocks,
                         latent_channels=4, norm_num_groups=4, sample_size=32).eval()


def sd_unet(in_channels: int = 4, seed: int = 2, **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, layers_per_block=1, block_out_channels=(16, 32), in_channels=in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8, **extra).eval()


def sd_scheduler(prediction_type: str = "epsilon"):
    """Stable Diffusion's own: PNDM over scaled-linear betas (SD 2.x v-models ship DDIM; any works)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def build_x4(root: Path, prediction_type: str = "v_prediction") -> Path:
    """An x4-upscaler-shaped folder: 7-channel UNet with a noise-level embedding, a 4x VAE, the real
    model's scheduler settings (DDIM, v-prediction) and low-resolution noising schedule."""
    from diffusers import DDPMScheduler, StableDiffusionUpscalePipeline

    unet = sd_unet(in_channels=7, seed=3, num_class_embeds=1000)
    v = vae(blocks=3)
    v.register_to_config(scaling_factor=0.08333)
    low = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", num_train_timesteps=1000)
    pipe = StableDiffusionUpscalePipeline(vae=v, text_encoder=text_encoder(), tokenizer=tokenizer(), unet=unet,
                                          low_res_scheduler=low, scheduler=sd_scheduler(prediction_type),
                                          max_noise_level=350)
    pipe.save_pretrained(root / "x4")
    return root / "x4"
