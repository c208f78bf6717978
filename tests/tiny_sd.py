"""Tiny Stable Diffusion-shaped models built from configs (no hub access): a CLIP text encoder with an
in-memory word-level tokenizer, a VAE, UNets with SD's block types and SD's scheduler settings, saved
with the diffusers pipelines' ``save_pretrained`` so they load as the real folders do."""

from __future__ import annotations

from pathlib import Path

import torch

# A random UNet is no denoiser: its noise estimate swings with its input, and DDIM's x0 = (x - ...) / sqrt(abar)
# on an epsilon model amplified a 1e-7 rounding difference (row-at-a-time calls against the pipeline's batch,
# or another CPU's kernels) to 1.7e-2 in 20 steps. Scaling the output layer by 0.3 brings that to 3e-5 while
# guidance 7.0 for 7.5 still moves the images by 0.2 (measured by tests/test_sd.py's tolerance test), so the
# comparisons with diffusers measure our code, not the chaos of random weights.
SCALE_OUT = 0.3
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


def vae(blocks: int = 2, seed: int = 1, latent_channels: int = 4):
    """``blocks`` resolutions: a latent grid ``2 ** (blocks - 1)`` times smaller (SD: 4 blocks, 8x; the x4
    upscaler: 3 blocks, 4x)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=[8] * (blocks - 1) + [16], in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * blocks, up_block_types=["UpDecoderBlock2D"] * blocks,
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=32).eval()


def sd_unet(in_channels: int = 4, seed: int = 2, sample_size: int = 8, **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    kw = dict(sample_size=sample_size, layers_per_block=1, block_out_channels=(16, 32), in_channels=in_channels, out_channels=4,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
              cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    unet = UNet2DConditionModel(**{**kw, **extra}).eval()
    with torch.no_grad():  # SCALE_OUT says why
        unet.conv_out.weight.mul_(SCALE_OUT)
        unet.conv_out.bias.mul_(SCALE_OUT)
    return unet


def sd_scheduler(prediction_type: str = "epsilon"):
    """DDIM over SD's scaled-linear betas, as SD 2.x's v-models and the x4 upscaler ship it."""
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


def pndm():
    """SD 1.x's own scheduler, with its shipped settings."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                         set_alpha_to_one=False, steps_offset=1)


def build_sd(root: Path, name: str = "sd", prediction_type: str = "epsilon", seed: int = 2,
             channels: tuple[int, int] = (16, 32), sample_size: int = 8) -> Path:
    """An SD-1.x-shaped folder: 16x16 images, 8x8 latents (a 2x VAE; ``sample_size`` the latents').
    epsilon: PNDM, as SD 1.5 ships; v_prediction: DDIM, as SD 2.x's 768 models ship."""
    from diffusers import StableDiffusionPipeline

    unet = sd_unet(seed=seed, sample_size=sample_size, block_out_channels=channels)
    sched = pndm() if prediction_type == "epsilon" else sd_scheduler(prediction_type)
    pipe = StableDiffusionPipeline(vae=vae(), text_encoder=text_encoder(), tokenizer=tokenizer(), unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(root / name)
    return root / name


def build_sdxl(root: Path, name: str = "sdxl", latents_mean: bool = False) -> Path:
    """An SDXL-shaped folder: two text encoders (the second with a projection), text_time conditioning,
    Euler as SDXL ships. ``latents_mean``: the VAE declares a per-channel latent mean and std (as
    Playground v2.5's does), which the SDXL pipelines shift and scale the latents by."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    unet = sd_unet(seed=4, addition_embed_type="text_time", addition_time_embed_dim=8,
                   projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   steps_offset=1, timestep_spacing="leading")
    autoencoder = vae()
    if latents_mean:
        autoencoder.register_to_config(latents_mean=[0.1, -0.2, 0.3, 0.05], latents_std=[0.8, 1.2, 0.9, 1.1])
    pipe = StableDiffusionXLPipeline(vae=autoencoder, text_encoder=text_encoder(5), text_encoder_2=text_encoder(6, projection=True),
                                     tokenizer=tokenizer(), tokenizer_2=tokenizer(), unet=unet, scheduler=sched,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.save_pretrained(root / name)
    return root / name


def build_sd3(root: Path, name: str = "sd3", shift: float = 3.0) -> Path:
    """An SD3-shaped folder: a one-layer MMDiT on 16-channel latents as SD3's (16x16 images, a 2x VAE with
    SD3's shift_factor; the inpaint pipeline takes no other channel count), two CLIP encoders with
    projections and no T5 (diffusers allows none: T5's place is zeros), FlowMatchEulerDiscreteScheduler
    with a shift as SD3 ships it."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(8)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=16, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32,
                                        pooled_projection_dim=64, out_channels=16, pos_embed_max_size=16).eval()
    with torch.no_grad():  # SCALE_OUT says why
        transformer.proj_out.weight.mul_(SCALE_OUT)
        transformer.proj_out.bias.mul_(SCALE_OUT)
    autoencoder = vae(latent_channels=16)
    autoencoder.register_to_config(shift_factor=0.0609, scaling_factor=1.5305)  # SD3's VAE's
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
                                    vae=autoencoder, text_encoder=text_encoder(5, projection=True),
                                    text_encoder_2=text_encoder(6, projection=True), tokenizer=tokenizer(),
                                    tokenizer_2=tokenizer(), text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(root / name)
    return root / name


def t5_encoder(seed: int = 9, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=64, d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4, relative_attention_num_buckets=8)
    return T5EncoderModel(cfg).eval()


def build_flux(root: Path, name: str = "flux", guidance_embeds: bool = True) -> Path:
    """A Flux-shaped folder: a one-double-block, one-single-block transformer on 4-channel latents packed 2x2
    (16x16 images, a 2x VAE with a shift factor), CLIP (pooled) and a small T5 with a word-level tokenizer,
    FlowMatchEulerDiscreteScheduler with Flux's dynamic shifting. ``guidance_embeds``: dev (True) or
    schnell-like (False)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(10)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=[4, 4, 8]).eval()
    with torch.no_grad():  # SCALE_OUT says why
        transformer.proj_out.weight.mul_(SCALE_OUT)
        transformer.proj_out.bias.mul_(SCALE_OUT)
    autoencoder = vae()
    autoencoder.register_to_config(shift_factor=0.1159, scaling_factor=0.3611)  # Flux's VAE's
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(transformer=transformer, scheduler=sched, vae=autoencoder, text_encoder=text_encoder(11),
                        tokenizer=tokenizer(), text_encoder_2=t5_encoder(), tokenizer_2=tokenizer(512))
    pipe.save_pretrained(root / name)
    return root / name


def build_zimage(root: Path, name: str = "zimage") -> Path:
    """A Z-Image-shaped folder: a one-layer single-stream transformer on 4-channel latents (16x16 images, a 2x
    VAE with a shift factor), a two-layer Qwen3 text encoder behind a word-level tokenizer with a chat
    template, FlowMatchEulerDiscreteScheduler with a shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(12)
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32,
                                           n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16,
                                           axes_dims=[4, 6, 6], axes_lens=[64, 32, 32]).eval()
    with torch.no_grad():  # SCALE_OUT says why
        for p in transformer.all_final_layer.parameters():
            p.mul_(SCALE_OUT)
    torch.manual_seed(13)
    encoder = Qwen3Model(Qwen3Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                     max_position_embeddings=512)).eval()
    tok = tokenizer(512)
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %} a{% endif %}")
    autoencoder = vae()
    autoencoder.register_to_config(shift_factor=0.1159, scaling_factor=0.3611)  # Flux's VAE, as Z-Image's
    pipe = ZImagePipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                          vae=autoencoder, text_encoder=encoder, tokenizer=tok)
    pipe.save_pretrained(root / name)
    return root / name
