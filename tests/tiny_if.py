"""Tiny IF-shaped models built from configs (no hub access): a T5 encoder, an in-memory tokenizer,
stage I and stage II UNets with IF's block types, and IF's scheduler settings; saved with
``IFPipeline.save_pretrained`` / ``IFSuperResolutionPipeline.save_pretrained``."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("a an the of oil painting people around campfire old man photo rocket ship waterfall dog cat "
         "high quality hat skull snowy mountain village lithograph").split()


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=77)


def text_encoder():
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(cfg).eval()


def unet(stage: int, size: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(stage)
    extra = dict(class_embed_type="timestep", mid_block_scale_factor=1.414, time_embedding_act_fn="gelu",
                 time_embedding_dim=32) if stage == 2 else {}
    return UNet2DConditionModel(
        sample_size=size, layers_per_block=1, block_out_channels=[16, 32],
        down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
        in_channels=3 if stage == 1 else 6, out_channels=6, cross_attention_dim=32, encoder_hid_dim=32,
        attention_head_dim=8, addition_embed_type="text", addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu", norm_num_groups=8,
        **extra).eval()


def scheduler(**kw):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", thresholding=True,
                         dynamic_thresholding_ratio=0.95, sample_max_value=1.5, prediction_type="epsilon",
                         variance_type="learned_range", **kw)


def build(root: Path, size1: int = 16, size2: int = 32) -> tuple[Path, Path]:
    """Save stage I and stage II folders under ``root``; returns their paths."""
    from diffusers import DDPMScheduler, IFPipeline, IFSuperResolutionPipeline

    te, tok = text_encoder(), tokenizer()
    p1 = IFPipeline(tokenizer=tok, text_encoder=te, unet=unet(1, size1), scheduler=scheduler(), safety_checker=None,
                    feature_extractor=None, watermarker=None, requires_safety_checker=False)
    p1.save_pretrained(root / "if-1")
    p2 = IFSuperResolutionPipeline(
        tokenizer=tok, text_encoder=te, unet=unet(2, size2), scheduler=scheduler(),
        image_noising_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
        safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    p2.save_pretrained(root / "if-2")
    return root / "if-1", root / "if-2"
