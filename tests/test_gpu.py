"""What only a CUDA GPU shows: IF's fp16 path against diffusers' fp16 pipelines, the MNIST model's bytes
on a GPU, and torchrun on a GPU machine. Skipped where there is no GPU (CI); a session lent one runs
them (docs/testing.md says when they last ran)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diffkit
from diffkit.backends.deepfloyd import IFStage, TextEncoder, load

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPT = "An oil painting of people around a campfire"
FP16_TOL = 2  # grey levels (measured on an H100: at most 1, 0.003 on average; exactly 0 for dpmpp_2m)


def grey(x):
    return ((x.float() / 2 + 0.5).clamp(0, 1) * 255).round()


def pipeline(folder, cls_name, scheduler=None):
    import diffusers

    pipe = getattr(diffusers, cls_name).from_pretrained(folder, torch_dtype=torch.float16, safety_checker=None,
                                                        watermarker=None, feature_extractor=None).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    if scheduler:
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    return pipe


@pytest.mark.parametrize("sampler, scheduler", [("ddpm", None), ("dpmpp_2m", "DPMSolverMultistepScheduler")])
def test_if_stage1_fp16_on_cuda_equals_ifpipeline_fp16(tiny_if, sampler, scheduler):
    f1, _ = tiny_if
    ref = pipeline(f1, "IFPipeline", scheduler)(
        PROMPT, num_inference_steps=20, guidance_scale=7.0, generator=torch.Generator().manual_seed(3),
        output_type="pt", clean_caption=False).images
    backend = load(model=str(f1), upscaler="none", device="cuda")
    assert backend.dtype == torch.float16 and backend.unet.dtype == torch.float16  # fp16 is the default on CUDA
    ours = diffkit.sample(backend, prompts=[PROMPT], seed=3, steps=20, hooks=["cfg:7"], sampler=sampler).x
    levels = (grey(ours.cpu()) - grey(ref.cpu())).abs()
    print(f"stage I fp16 {sampler}: max {levels.max().item():.0f} grey levels, mean {levels.mean().item():.4f}")
    assert levels.max().item() <= FP16_TOL and levels.mean().item() < 0.05


def stage2_pipeline(f2, scheduler, seed=5):
    low = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(9)).clamp(-1, 1)
    pipe = pipeline(f2, "IFSuperResolutionPipeline", scheduler)
    return low, pipe(prompt=PROMPT, image=low.to("cuda", torch.float16), num_inference_steps=10, guidance_scale=4.0,
                     noise_level=250, generator=torch.Generator().manual_seed(seed), output_type="pt",
                     clean_caption=False).images.float().cpu()


# The tiny models' random weights amplify fp16 rounding: run in fp16 and in fp32, the same pipeline lands
# as far apart as two seeds do (78-122 grey levels on average, measured on an H100), so fp32 is no
# reference for an fp16 run here. Each test below compares fp16 with fp16 and asks that another seed
# land at least 25 times farther away than diffkit does.
@pytest.mark.parametrize("sampler, scheduler", [("ddpm", None), ("dpmpp_2m", "DPMSolverMultistepScheduler")])
def test_if_stage2_fp16_on_cuda_matches_ifsuperresolutionpipeline_fp16(tiny_if, sampler, scheduler):
    """Measured: at most 3 grey levels, 0.31-0.36 on average (diffkit noises the upscaled image in float32,
    the pipeline in fp16; stage II's random UNet amplifies that, as on the CPU: test_if_samplers' STAGE2_TOL)."""
    _, f2 = tiny_if
    low, ref = stage2_pipeline(f2, scheduler)
    _, other = stage2_pipeline(f2, scheduler, seed=6)
    stage2 = IFStage(str(f2), TextEncoder(str(f2), "cuda", torch.float16), "cuda", torch.float16, 2)
    stage2.low_res = low
    ours = diffkit.sample(stage2, prompts=[PROMPT], seed=5, steps=10, hooks=["cfg:4"], sampler=sampler).x.float().cpu()
    levels, wrong = (grey(ours) - grey(ref)).abs(), (grey(other) - grey(ref)).abs()
    print(f"stage II fp16 {sampler}: max {levels.max():.0f} grey levels, mean {levels.mean():.3f}; "
          f"another seed: mean {wrong.mean():.1f}")
    assert levels.max() <= 6 and levels.mean() < 1.0
    assert wrong.mean() > 25 * levels.mean()


@pytest.mark.parametrize("name", ["euler", "uni_pc", "heun"])
def test_if_fp16_rules_the_pipeline_rejects_match_the_scheduler_in_a_plain_fp16_loop(tiny_if, name):
    """IFPipeline cannot run these on IF (six channels to a 3-channel rule): the same scheduler in a plain
    loop over the same fp16 UNet on the GPU is the reference (test_if_samplers does it in fp32 on the CPU).
    Measured: 0.41-1.33 grey levels on average, a few pixels up to 19; another seed 91-118."""
    from test_if_samplers import hand_loop

    from diffkit import registry

    f1, _ = tiny_if
    rule = registry.make_sampler(name)

    def loop(seed):
        return hand_loop(f1, rule.scheduler, rule.overrides(), 8, seed, device="cuda",
                         dtype=torch.float16).float().cpu()
    ref, other = loop(3), loop(4)
    ours = diffkit.sample(load(model=str(f1), upscaler="none", device="cuda"), prompts=[PROMPT], seed=3, steps=8,
                          hooks=["cfg:7"], sampler=name).x.float().cpu()
    levels, wrong = (grey(ours) - grey(ref)).abs(), (grey(other) - grey(ref)).abs()
    print(f"{name} fp16: max {levels.max():.0f} grey levels, mean {levels.mean():.3f}; another seed: "
          f"mean {wrong.mean():.1f}")
    assert levels.mean() < 2.0
    assert wrong.mean() > 25 * levels.mean()


def test_mnist_on_cuda_gives_the_same_bytes_for_any_batch_size():
    from diffkit.backends.mnist import MnistBackend

    backend = MnistBackend(device="cuda")
    assert backend.chunk_rows == 256
    kw = dict(classes=[3, 7], num=70, seed=11, hooks=["cfg:1.5"], sampler="dpmpp_2m_sde", steps=10)
    whole = diffkit.sample(backend, batch_size=140, **kw).x  # 280 rows a step: two 256-row calls
    for b in (1, 33):
        assert torch.equal(diffkit.sample(backend, batch_size=b, **kw).x, whole), b


def test_mnist_training_on_cuda_repeats_itself_and_draws_what_the_cpu_draws(mnist_dir, tmp_path):
    from diffkit.mnist.train import TrainConfig, train

    losses = {}
    for name, device in [("a", "cuda"), ("b", "cuda"), ("cpu", "cpu")]:
        cfg = TrainConfig(conditioning="class", hidden=16, epochs=2, subset=2048, batch_size=64)
        losses[name] = [e.loss for e in train(cfg, tmp_path / name, mnist_dir, device=device) if e.kind == "step"]
    weights = {n: (tmp_path / n / "checkpoint" / "model.safetensors").read_bytes() for n in losses}
    assert weights["a"] == weights["b"] and losses["a"] == losses["b"]  # deterministic kernels
    assert weights["a"] != weights["cpu"]  # other arithmetic...
    first = abs(losses["a"][0] - losses["cpu"][0]) / losses["cpu"][0]
    print(f"first-step loss cuda {losses['a'][0]:.6f} cpu {losses['cpu'][0]:.6f} (rel {first:.1e}); "
          f"last {losses['a'][-1]:.4f} vs {losses['cpu'][-1]:.4f}")
    # ...on the same draws: step 1 (same weights, batch, noise) agrees to float rounding, where another
    # batch or noise draw moves a 64-image loss by ~0.5%
    assert first < 1e-4
    cfg = json.loads((tmp_path / "a" / "checkpoint" / "config.json").read_text())
    assert cfg["training"]["device"].startswith("cuda")


def diffkit_cmd(*args: str, nproc: int = 1) -> list[str]:
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else []
    return [sys.executable, *launch, "-m", "diffkit", *args]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


ARGS = ["sample", "--class", "3,7", "-n", "3", "--sampler", "ddim", "--steps", "5", "--hook", "cfg:1.5",
        "--batch-size", "2"]


@pytest.mark.skipif(torch.cuda.device_count() != 1, reason="the refusal of a one-GPU node")
def test_two_processes_on_a_one_gpu_node_are_refused_with_exit_2(tmp_path):
    p = run(diffkit_cmd(*ARGS, "--device", "cuda", "--out", str(tmp_path / "o"), nproc=2), tmp_path)
    said = "of 2: 2 processes on this node need 2 GPUs (one each), but this machine has 1"
    # Every rank refuses; the launcher stops the others once the first exits, so one message is certain.
    assert p.returncode != 0 and said in p.stderr, p.stderr[-3000:]
    assert "Duplicate GPU" not in p.stderr and "invalid device ordinal" not in p.stderr
    assert not (tmp_path / "o").exists()


def test_two_cpu_processes_on_a_gpu_machine_use_gloo_and_match_one(tmp_path):
    one = run(diffkit_cmd(*ARGS, "--device", "cpu", "--out", str(tmp_path / "one")), tmp_path)
    two = run(diffkit_cmd(*ARGS, "--device", "cpu", "--out", str(tmp_path / "two"), nproc=2), tmp_path)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    a, b = tmp_path / "one" / "final.safetensors", tmp_path / "two" / "final.safetensors"
    assert a.read_bytes() == b.read_bytes()


def test_one_cuda_process_under_torchrun_equals_a_plain_run(tmp_path):
    plain = run(diffkit_cmd(*ARGS, "--device", "cuda", "--out", str(tmp_path / "plain")), tmp_path)
    launched = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                    "-m", "diffkit", *ARGS, "--device", "cuda", "--out", str(tmp_path / "tr")], tmp_path)
    assert plain.returncode == 0 and launched.returncode == 0, (plain.stderr[-2000:], launched.stderr[-2000:])
    a, b = tmp_path / "plain" / "final.safetensors", tmp_path / "tr" / "final.safetensors"
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_sd_fp16_on_cuda_against_the_pipeline_fp16(tiny_sd, kind):
    """SD on a GPU in fp16 (the default there), each call whole, against diffusers' fp16 pipeline; the
    VAE decodes in fp32 where its config says force_upcast, as the pipeline does. Written without a GPU
    at hand (none was lent): the bound is FP16_TOL, and another seed must land 25 times farther."""
    import diffusers

    cls = "StableDiffusionXLPipeline" if kind == "sdxl" else "StableDiffusionPipeline"
    kw = {} if kind == "sdxl" else {"safety_checker": None}
    pipe = getattr(diffusers, cls).from_pretrained(tiny_sd[kind], torch_dtype=torch.float16, **kw).to("cuda")
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a photo of a red dog", "an oil painting of a snowy mountain village"]

    def ref(seed):
        gens = [torch.Generator().manual_seed(seed + i) for i in range(2)]
        return pipe(prompts, num_inference_steps=10, guidance_scale=5.0, generator=gens, output_type="pt").images

    res = diffkit.sample(kind, prompts=prompts, hooks=["cfg:5"], steps=10, seed=3, sampler="euler",
                         backend_options={"model": str(tiny_sd[kind]), "device": "cuda"})
    ours = (res.images.float().cpu() * 255).round()
    levels = (ours - (ref(3).float().cpu() * 255).round()).abs()
    other = (ours - (ref(5).float().cpu() * 255).round()).abs()
    print(f"{kind} fp16: max {levels.max().item():.0f} grey levels, mean {levels.mean().item():.4f}; "
          f"another seed {other.mean().item():.2f}")
    assert levels.max().item() <= FP16_TOL and other.mean().item() > 25 * max(levels.mean().item(), 0.01)
