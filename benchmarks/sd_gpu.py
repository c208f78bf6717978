"""For a GPU machine: diffkit's `sd` backend against StableDiffusionPipeline in fp16, the same prompt,
seeds, scheduler (Euler), steps and guidance, interleaved rounds; writes benchmarks/results/sd_gpu.json.

    python benchmarks/sd_gpu.py --shaped /tmp/sd-shaped [--num 1,4] [--steps 20] [--repeats 5]
    python benchmarks/sd_gpu.py --model stable-diffusion-v1-5/stable-diffusion-v1-5

``--shaped DIR`` builds (once) an SD-1.5-shaped folder with random weights: SD 1.5's UNet layout
(860M parameters, 64x64 latents, 512x512 images), its VAE layout, a 2-layer CLIP text encoder of SD's
width (the time of a step does not depend on the weights' values, and the text is encoded once on
both sides). Peak memory: each side alone on the GPU, one call after a warm-up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import diffkit  # noqa: E402

from common import ROOT, cuda_timed, peak_alone, ratio, record, rounds, spread  # noqa: E402

PROMPT = "an oil painting of a snowy mountain village"


def build_shaped(root: Path) -> Path:
    """An SD-1.5-shaped pipeline folder with random fp16 weights."""
    if (root / "model_index.json").is_file():
        return root
    import tiny_sd
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    with torch.device("cuda"):  # random init on the GPU: seconds, not minutes
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).half().eval()  # SD 1.5's defaults
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], latent_channels=4, sample_size=512,
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                            layers_per_block=2).half().eval()
        text = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=2, num_attention_heads=12, max_position_embeddings=77,
                                            bos_token_id=0, eos_token_id=1, pad_token_id=1)).half().eval()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tiny_sd.tokenizer(), unet=unet,
                                   scheduler=tiny_sd.pndm(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(root)
    print(f"built {root}: SD-1.5-shaped, UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M parameters")
    return root


def diffkit_side(model: str, num: int, steps: int):
    from diffkit_plugins.sd import StableDiffusion

    backend = StableDiffusion(model, "cuda", torch.float16)
    backend.text([PROMPT, ""])  # embeddings once, as the pipeline gets its own

    def call():
        return diffkit.sample(backend, prompts=[PROMPT], num=num, seed=0, steps=steps, sampler="euler",
                              hooks=["cfg:7.5"]).images
    return backend, call


def diffusers_side(model: str, num: int, steps: int):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float16, safety_checker=None).to("cuda")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    cond, null = pipe.encode_prompt(PROMPT, "cuda", num, True)

    def call():
        return pipe(prompt_embeds=cond, negative_prompt_embeds=null, num_inference_steps=steps, guidance_scale=7.5,
                    generator=[torch.Generator().manual_seed(i) for i in range(num)], output_type="pt").images
    return pipe, call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="stable-diffusion-v1-5/stable-diffusion-v1-5")
    ap.add_argument("--shaped", type=Path, default=None, help="build and time an SD-1.5-shaped random model here")
    ap.add_argument("--num", default="1,4", help="images a run, comma list")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    model = str(build_shaped(args.shaped)) if args.shaped else args.model
    results = {}
    for num in (int(n) for n in args.num.split(",")):
        sides = {"diffkit": diffkit_side, "diffusers": diffusers_side}
        peaks = {k: peak_alone(make, model, num, args.steps) for k, make in sides.items()}
        calls = {k: make(model, num, args.steps)[1] for k, make in sides.items()}
        outs = {k: call() for k, call in calls.items()}  # warm-up, and the outputs compared
        times = {k: [] for k in calls}
        for _ in range(args.repeats):
            for k, call in calls.items():
                times[k].append(cuda_timed(call)[1])
        diff = (outs["diffkit"].float() - outs["diffusers"].float()).abs().max().item()
        print(f"{num} image(s), fp16, Euler {args.steps} steps, CFG 7.5, {torch.cuda.get_device_name()}")
        for k in times:
            print(f"  {k:10s} {spread(times[k], 1.0, 's')}  peak alone {peaks[k]:.2f} GiB")
        print(f"ratio diffkit / diffusers = {ratio(times['diffkit'], times['diffusers'])}; max |diff| {diff:.2e}")
        results[str(num)] = {"seconds": times, "peak_gib": peaks, "max_abs_diff": diff,
                             "diffkit_over_diffusers": rounds(times["diffkit"], times["diffusers"])}
    record(ROOT / "benchmarks" / "results" / "sd_gpu.json",
           {"model": "SD-1.5-shaped, random weights" if args.shaped else model, "steps": args.steps,
            "repeats": args.repeats, "device": torch.cuda.get_device_name(), "images": results})


if __name__ == "__main__":
    main()
