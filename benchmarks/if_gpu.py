"""For a GPU machine with the real IF weights: fp16 diffkit against diffusers' pipelines doing the same
work (stage I, or stage I + II with --upscaler), same prompt, seed, steps and guidance.

    python benchmarks/if_gpu.py --model DeepFloyd/IF-I-XL-v1.0 [--upscaler DeepFloyd/IF-II-L-v1.0]
    python benchmarks/if_gpu.py --sampler dpmpp_2m --steps 20    # the pipelines with the scheduler swapped in
    python benchmarks/if_gpu.py --shaped /tmp/if-shaped          # no weights at hand: see below

``--shaped DIR`` builds (once) and times a stage I of IF's block layout at IF-I-M's scale with random
weights (560M parameters, 64x64; the tiny T5 of tests/tiny_if.py): the time of a step does not depend
on the weights' values, so the ratio diffkit / diffusers is measured without the gated download.

With ``--sampler`` other than ddpm, the pipelines get the same diffusers scheduler
(``from_config`` of IF's, as in tests/test_if_samplers.py). IFPipeline cannot run rules that do not
read IF's variance channels (it hands all six to the scheduler): only diffkit is timed for those.

Times: both sides resident, one warm-up call each, then ``--repeats`` rounds interleaved; median,
range and the round-by-round ratio. Peak memory: each side alone on the GPU (the other's weights
freed), one call after a warm-up, so a figure never includes the other side's weights. Prompt
embeddings are computed once on both sides. Needs CUDA and the gated weights (or local folders).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import diffkit  # noqa: E402
from diffkit.backends.deepfloyd import load  # noqa: E402

from common import cuda_timed, peak_alone, ratio, spread  # noqa: E402

PROMPT = "an oil painting of people around a campfire"
TS1 = list(range(990, -1, -30))  # 34 steps, each one model call of both CFG branches
TS2 = list(range(990, -1, -30))


def schedule_kw(args) -> dict:
    """diffkit's words for the steps: the explicit lists for ddpm, else --steps of the sampler."""
    if args.steps:
        return {"steps": args.steps}
    return {"timesteps": TS1, "timesteps2": TS2}


def build_shaped(root: Path, device: str = "cuda") -> Path:
    """An IF-shaped stage I pipeline folder with random fp16 weights (IF-I-M's block layout, 560M)."""
    if (root / "model_index.json").is_file():
        return root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import tiny_if
    from diffusers import IFPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds, not minutes
        unet = UNet2DConditionModel(
            sample_size=64, layers_per_block=3, block_out_channels=[256, 512, 768, 1024],
            down_block_types=["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * 3,
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            up_block_types=["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"],
            in_channels=3, out_channels=6, cross_attention_dim=1024, encoder_hid_dim=32, attention_head_dim=64,
            addition_embed_type="text", addition_embed_type_num_heads=2, cross_attention_norm="group_norm",
            resnet_time_scale_shift="scale_shift", act_fn="gelu", norm_num_groups=32).half().eval()
    pipe = IFPipeline(tokenizer=tiny_if.tokenizer(), text_encoder=tiny_if.text_encoder().half(), unet=unet,
                      scheduler=tiny_if.scheduler(), safety_checker=None, feature_extractor=None, watermarker=None,
                      requires_safety_checker=False)
    pipe.save_pretrained(root)
    print(f"built {root}: IF-shaped stage I, {sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M parameters")
    return root


def diffkit_side(args):
    backend = load(model=args.model, upscaler=args.upscaler, device="cuda", dtype="fp16")
    backend.text([PROMPT, ""])  # embeddings once, as the pipelines get theirs

    def call():
        return diffkit.sample(backend, prompts=[PROMPT], seed=0, hooks=["cfg:7"], sampler=args.sampler,
                              **schedule_kw(args)).x
    return backend, call


def swap_scheduler(pipe, args) -> None:
    import diffusers

    from diffkit import registry

    rule = registry.make_sampler(args.sampler)
    if rule.name != "ddpm":
        pipe.scheduler = getattr(diffusers, rule.scheduler).from_config(pipe.scheduler.config, **rule.overrides())


def pipeline_can_run(args) -> bool:
    from diffkit import registry

    rule = registry.make_sampler(args.sampler)
    return rule.name == "ddpm" or getattr(rule, "scheduler", "") in ("DPMSolverMultistepScheduler", "DDPMScheduler")


def diffusers_side(args):
    from diffusers import IFPipeline, IFSuperResolutionPipeline

    kw = dict(torch_dtype=torch.float16, safety_checker=None, watermarker=None, feature_extractor=None)
    if not Path(args.model).is_dir():
        kw["variant"] = "fp16"  # the hub's fp16 files; a local folder holds what it holds
    pipe1 = IFPipeline.from_pretrained(args.model, **kw).to("cuda")
    pipe1.set_progress_bar_config(disable=True)
    swap_scheduler(pipe1, args)
    steps1 = {"num_inference_steps": args.steps} if args.steps else {"timesteps": TS1}
    steps2 = {"num_inference_steps": args.steps} if args.steps else {"timesteps": TS2}
    cond, null = pipe1.encode_prompt(PROMPT, do_classifier_free_guidance=True, clean_caption=False)
    pipe2 = None
    if args.upscaler != "none":
        pipe2 = IFSuperResolutionPipeline.from_pretrained(args.upscaler, text_encoder=None, **kw).to("cuda")
        pipe2.set_progress_bar_config(disable=True)
        swap_scheduler(pipe2, args)

    def call():
        x = pipe1(prompt_embeds=cond, negative_prompt_embeds=null, **steps1, guidance_scale=7.0,
                  generator=torch.Generator().manual_seed(0), output_type="pt").images
        if pipe2 is not None:
            x = pipe2(image=x, prompt_embeds=cond, negative_prompt_embeds=null, **steps2, guidance_scale=7.0,
                      noise_level=250, generator=torch.Generator().manual_seed(0), output_type="pt").images
        return x
    return (pipe1, pipe2), call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="DeepFloyd/IF-I-XL-v1.0")
    ap.add_argument("--upscaler", default="none")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sampler", default="ddpm", help="diffkit sampler spec (diffkit samplers)")
    ap.add_argument("--steps", type=int, default=None, help="steps of the sampler (default: ddpm's 34-step lists)")
    ap.add_argument("--shaped", type=Path, default=None, help="build and time an IF-shaped random stage I here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    if args.shaped:
        args.model, args.upscaler = str(build_shaped(args.shaped)), "none"
    what = "stage I" if args.upscaler == "none" else "stage I + II"
    n1 = args.steps or len(TS1)
    n2 = (args.steps or len(TS2)) if args.upscaler != "none" else 0
    print(f"{what}, fp16, sampler {args.sampler}, {n1} + {n2} steps, CFG 7, {torch.cuda.get_device_name()}")
    both = pipeline_can_run(args)
    if not both:
        print(f"  IFPipeline cannot run {args.sampler} on IF (it hands the six channels to the scheduler): "
              "diffkit alone")
    sides = {"diffkit": diffkit_side} | ({"diffusers": diffusers_side} if both else {})
    peaks = {k: peak_alone(make, args) for k, make in sides.items()}
    calls = {k: make(args)[1] for k, make in sides.items()}
    outs = {k: call() for k, call in calls.items()}  # warm-up, and the outputs compared
    times = {k: [] for k in calls}
    for _ in range(args.repeats):
        for k, call in calls.items():
            times[k].append(cuda_timed(call)[1])
    for k in times:
        print(f"  {k:10s} {spread(times[k], 1.0, 's')}  peak alone {peaks[k]:.2f} GiB")
    if both:
        print(f"ratio diffkit / diffusers = {ratio(times['diffkit'], times['diffusers'])}; "
              f"max |diff| {(outs['diffkit'].float() - outs['diffusers'].float()).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
