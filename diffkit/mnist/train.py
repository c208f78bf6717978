"""``diffkit train mnist``: the one-step denoiser and time/class-conditioned DDPM.

The loop yields :class:`TrainEvent` s; the CLI draws them. Every epoch ends with an atomic
checkpoint; ``resume=True`` continues from the last one and, because each epoch's shuffling and
noise come from generators seeded by ``(seed, epoch)``, gives the same weights as an unbroken run.
``init`` starts from another checkpoint's weights (fine-tuning, or a warm start of another objective);
``ema`` ships the exponential moving average of the weights instead of the last step's (torch's
``AveragedModel``; Ho et al. 2020, sec. 4).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from diffkit import interrupt, schedule
from diffkit.dist import Shard
from diffkit.errors import OutputInTheWay, RunFailure, UserError
from diffkit.io import write_json
from diffkit.mnist import checkpoint, data
from diffkit.mnist.model import UNet
from diffkit.plot import loss_curve


class TrainingDiverged(RunFailure, FloatingPointError):
    """The loss became NaN or inf: the run stops at the last finished epoch's checkpoint."""


@dataclass
class TrainConfig:
    """The DDPM defaults are ``mnist-h64``'s recipe; ``None`` fields take the objective's default
    (see :meth:`resolved`)."""

    objective: str = "ddpm"  # "denoise" | "ddpm" | "flow"
    conditioning: str | None = None  # ddpm: "time" | "class"; denoise: "none"
    hidden: int | None = None  # denoise 128, ddpm 64
    epochs: int | None = None  # denoise 5, ddpm 20
    batch_size: int | None = None  # denoise 256, ddpm 128
    lr: float | None = None  # denoise 1e-4, ddpm 1e-3
    gamma: float | None = None  # ddpm: 0.1 ** (1 / epochs), stepped each epoch
    sigma: float = 0.5
    T: int = 300
    beta_start: float = 1e-4
    beta_end: float = 0.02
    p_uncond: float = 0.1
    seed: int = 0
    subset: int | None = None  # first N training images, for quick runs and tests
    channels_last: bool = True
    sample_epochs: list[int] = field(default_factory=list)
    ema: float | None = None  # decay a step: the checkpoint holds the weights' moving average
    init: str | None = None  # a checkpoint (folder or shipped name) whose weights start the run

    def resolved(self) -> TrainConfig:
        d = self.objective == "denoise"
        if self.objective not in ("denoise", "ddpm", "flow"):
            raise UserError(f"--objective must be denoise, ddpm or flow, not {self.objective!r}")
        c = TrainConfig(**asdict(self))
        c.conditioning = c.conditioning or ("none" if d else "time")
        if d and c.conditioning != "none":
            raise UserError("the denoise objective has no conditioning (use --objective ddpm)")
        if not d and c.conditioning not in ("time", "class"):
            raise UserError(f"--conditioning must be time or class for {c.objective}, not {c.conditioning!r}")
        c.hidden = c.hidden or (128 if d else 64)
        c.epochs = c.epochs or (5 if d else 20)
        c.batch_size = c.batch_size or (256 if d else 128)
        c.lr = c.lr or (1e-4 if d else 1e-3)
        if c.ema is not None and not 0 < c.ema < 1:
            raise UserError(f"--ema is a decay a step, between 0 and 1 (e.g. 0.999), not {c.ema!r}")
        if c.gamma is None and not d:
            c.gamma = 0.1 ** (1 / c.epochs)
        return c


@dataclass
class TrainEvent:
    """One optimisation step (``kind="step"``) or an epoch's end (``"epoch"``, checkpoint written)."""

    kind: str
    epoch: int  # 1-based
    step: int  # within the epoch, 1-based
    steps_per_epoch: int
    loss: float
    images_per_s: float = 0.0
    checkpoint: Path | None = None
    snapshot: Path | None = None  # a copy of the model kept after one of ``sample_epochs``


def ddpm_loss(model: UNet, x0: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, abar: torch.Tensor,
              gen: torch.Generator, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """``|| eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t/T, c) ||^2``, t uniform, class dropped p_uncond.

    The batch and its noise ``[N x 1 x 28 x 28]`` are drawn and mixed on the CPU, then moved to ``device``:
    the same draws on any device, so only the model's own arithmetic differs between them.
    """
    n = x0.shape[0]
    t = torch.randint(0, cfg.T, (n,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    a = abar[t].float()[:, None, None, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    c = None
    if cfg.conditioning == "class":
        keep = (torch.rand(n, generator=gen) >= cfg.p_uncond).float()[:, None]
        c = (F.one_hot(y, 10).float() * keep).to(device)
    return F.mse_loss(model(_fmt(x_t.to(device), cfg), (t.float() / cfg.T)[:, None].to(device), c), eps.to(device))


def flow_loss(model: UNet, x0: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, gen: torch.Generator,
              device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """``|| (eps - x0) - v_theta((1 - s) x0 + s eps, s, c) ||^2``, s uniform in [0, 1], class dropped p_uncond:
    conditional flow matching with the straight (rectified-flow) path (Lipman et al. 2023, eq. 23; Liu et al.
    2023), the velocity the flow backends predict. Draws on the CPU, as :func:`ddpm_loss`'s."""
    n = x0.shape[0]
    s = torch.rand(n, generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    x_s = (1 - s)[:, None, None, None] * x0 + s[:, None, None, None] * eps
    c = None
    if cfg.conditioning == "class":
        keep = (torch.rand(n, generator=gen) >= cfg.p_uncond).float()[:, None]
        c = (F.one_hot(y, 10).float() * keep).to(device)
    return F.mse_loss(model(_fmt(x_s.to(device), cfg), s[:, None].to(device), c), (eps - x0).to(device))


def denoise_loss(model: UNet, x0: torch.Tensor, cfg: TrainConfig, gen: torch.Generator,
                 device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """``|| x - D_theta(x + sigma eps) ||^2`` (the one-step denoiser)."""
    z = x0 + cfg.sigma * torch.randn(x0.shape, generator=gen)
    return F.mse_loss(model(_fmt(z.to(device), cfg)), x0.to(device))


def deterministic_cuda() -> None:
    """Make CUDA training repeat itself bit for bit on the same GPU and software: cuDNN's autotuner and
    atomics-based kernels pick their sum order at run time; cuBLAS needs a fixed workspace for the same
    (set before its first handle, so before the first CUDA matmul). TF32 off: float32 arithmetic as on
    the CPU, so a GPU run follows a CPU run of the same draws to rounding, not to TF32's 1e-3."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.use_deterministic_algorithms(True)


def _fmt(x: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


def model_config(cfg: TrainConfig) -> dict:
    """The ``config.json`` a checkpoint carries: enough to rebuild the model and its schedule."""
    return {
        "kind": "mnist-unet", "objective": cfg.objective, "conditioning": cfg.conditioning,
        "hidden": cfg.hidden, "T": cfg.T, "beta_start": cfg.beta_start, "beta_end": cfg.beta_end,
        "sigma": cfg.sigma, "train_config": asdict(cfg),
    }


def _merge_for_resume(saved: dict, requested: TrainConfig, folder: Path) -> TrainConfig:
    """The saved run's options, with ``epochs``/``sample_epochs`` as newly asked; any other change is an error.

    The learning-rate decay keeps the saved run's ``gamma``, so a longer run continues its schedule.
    """
    merged, changed = dict(saved), []
    defaults = asdict(TrainConfig())
    for k, v in asdict(requested).items():
        if k in ("epochs", "sample_epochs"):
            if v:
                merged[k] = v
        elif v is not None and v != saved.get(k) and v != defaults[k]:  # a default means "not given"
            changed.append(k)
    if changed:
        raise UserError(f"cannot resume {folder}: options differ from the saved run: {', '.join(changed)}")
    return TrainConfig(**merged)


# The options that make a checkpoint the same network as the run's: --init must agree on all of them.
# The objective may differ: a DDPM checkpoint's weights start a flow run of the same width (warm start; its
# features carry over, the head learns the velocity), which trains far faster than from scratch.
_MODEL_KEYS = ("conditioning", "hidden", "T", "beta_start", "beta_end")


def initial_weights(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The weights ``cfg.init`` names, refused (a UserError naming the option) unless it is the run's model."""
    model, config = checkpoint.load_model(cfg.init)
    differ = [f"{k} {config.get(k)!r} (the run: {getattr(cfg, k)!r})" for k in _MODEL_KEYS
              if config.get(k) != getattr(cfg, k)]
    if differ:
        raise UserError(f"--init {cfg.init}: not the model this run trains: {'; '.join(differ)}; pass the "
                        "options it was trained with, or start from scratch without --init")
    return model.state_dict()


def train(cfg: TrainConfig, out: str | Path, data_dir: str | Path | None = None, resume: bool = False,
          command: str = "", shard: Shard | None = None, device: str = "cpu") -> Iterator[TrainEvent]:
    """Train, yielding events; writes ``out/checkpoint/`` every epoch and ``out/loss.json``.

    ``shard`` (under torchrun): DistributedDataParallel over the process group, each rank a
    DistributedSampler's share of every epoch and ``batch_size`` images a step (so the effective batch
    is ``world * batch_size``); the loss recorded is the mean over ranks; rank 0 alone writes files.
    ``device``: where the model trains (``cuda``: deterministic kernels, see :func:`deterministic_cuda`);
    every random draw stays on the CPU, so a device changes only the arithmetic.
    """
    shard = shard or Shard()
    dev = torch.device(device)
    if dev.type == "cuda":
        deterministic_cuda()
    out = Path(out)
    ckpt = out / "checkpoint"
    state = None
    if resume:
        folder = checkpoint.resolve(ckpt)
        state = checkpoint.load_state(folder)
        cfg = _merge_for_resume(state["config"], cfg, folder)
        if state.get("processes", 1) != shard.world:
            raise UserError(f"cannot resume {folder}: it was trained by {state.get('processes', 1)} process(es), "
                             f"this is {shard.world}; resume it with the same number (the effective batch "
                             "size and the data each process sees depend on it)")
    cfg = cfg.resolved()
    start = initial_weights(cfg) if cfg.init and state is None else None
    torch.manual_seed(cfg.seed)  # initial weights
    model = UNet(cfg.hidden, cfg.conditioning)
    if start is not None:
        model.load_state_dict(start)
    model = model.to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # The moving average sees BatchNorm's running statistics too (use_buffers), as its weights change.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    shipped = ema.module if ema else model  # what the checkpoint holds
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, cfg.gamma) if cfg.gamma else None
    losses: list[float] = []
    start_epoch, elapsed = 0, 0.0
    if state is not None:
        loaded, _ = checkpoint.load_model(folder)
        model.load_state_dict(state["model"] if ema else loaded.state_dict())
        if ema:  # the checkpoint's weights are the average; the raw ones continue from state.pt
            ema.module.load_state_dict(loaded.state_dict())
            ema.n_averaged.fill_(state["ema_steps"])
        opt.load_state_dict(state["optimizer"])
        if sched and state["scheduler"]:
            sched.load_state_dict(state["scheduler"])
        losses, start_epoch, elapsed = state["losses"], state["epoch"], state["elapsed_s"]
    elif (ckpt / "config.json").exists():
        raise OutputInTheWay(f"{ckpt} exists: pass --resume to continue it, or choose another --out")

    x_all, y_all = data.load("train", data_dir)
    if cfg.subset:
        x_all, y_all = x_all[: cfg.subset], y_all[: cfg.subset]
    abar = schedule.alphas_cumprod(schedule.linear_betas(cfg.T, cfg.beta_start, cfg.beta_end))
    net, sampler = model, None
    if shard.active:
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DistributedSampler, TensorDataset

        net = DistributedDataParallel(model)  # averages gradients; broadcasts rank 0's BatchNorm buffers
        sampler = DistributedSampler(TensorDataset(x_all, y_all), shard.world, shard.rank, shuffle=True,
                                     seed=cfg.seed * 100_003)
    steps = math.ceil((len(sampler) if sampler else len(x_all)) / cfg.batch_size)
    for epoch in range(start_epoch, cfg.epochs):
        # Shuffling and noise from (seed, epoch) (and rank): a resumed run redraws exactly what it would have.
        gen = torch.Generator().manual_seed((cfg.seed * 100_003 + epoch) * max(1, shard.world) + shard.rank)
        if sampler is None:
            perm = torch.randperm(len(x_all), generator=gen)
        else:
            sampler.set_epoch(epoch)
            perm = torch.tensor(list(sampler))
        model.train()
        t0, seen = time.perf_counter(), 0
        for i in range(steps):
            idx = perm[i * cfg.batch_size: (i + 1) * cfg.batch_size]
            x0, y = x_all[idx], y_all[idx]
            if cfg.objective == "ddpm":
                loss = ddpm_loss(net, x0, y, cfg, abar, gen, dev)
            elif cfg.objective == "flow":
                loss = flow_loss(net, x0, y, cfg, gen, dev)
            else:
                loss = denoise_loss(net, x0, cfg, gen, dev)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"{shard.who()}loss became {loss.item()} at epoch {epoch + 1} step "
                                         f"{i + 1}; last good checkpoint kept at {ckpt}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema:
                ema.update_parameters(model)
            losses.append(_mean_over_ranks(loss.detach(), shard))
            seen += len(idx) * shard.world
            yield TrainEvent("step", epoch + 1, i + 1, steps, losses[-1], seen / (time.perf_counter() - t0))
        if sched:
            sched.step()
        elapsed += time.perf_counter() - t0
        config = model_config(cfg)
        config["training"] = {
            "epochs_done": epoch + 1, "wall_time_s": round(elapsed, 1),
            "final_loss": sum(losses[-steps:]) / steps, "command": command,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "processes": shard.world, "effective_batch_size": cfg.batch_size * shard.world,
            "device": str(dev) if dev.type != "cuda" else f"{dev} ({torch.cuda.get_device_name(dev)})",
        }
        state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched else None,
                 "epoch": epoch + 1, "losses": losses, "elapsed_s": elapsed, "config": asdict(cfg), "processes": shard.world}
        if ema:
            state["model"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            state["ema_steps"] = int(ema.n_averaged)
        snapshot = out / f"epoch-{epoch + 1:03d}" if epoch + 1 in cfg.sample_epochs and shard.rank == 0 else None
        if shard.rank == 0:
            with interrupt.deferred():  # a signal now lands after the epoch's files, never between them
                checkpoint.save(ckpt, shipped, config, state)
                write_json(out / "loss.json", {"steps_per_epoch": steps, "loss": losses})
                loss_curve(losses, out / "loss.png", steps)
                if snapshot is not None:
                    checkpoint.save(snapshot, shipped, config)
        yield TrainEvent("epoch", epoch + 1, steps, steps, config["training"]["final_loss"], checkpoint=ckpt,
                         snapshot=snapshot)


def _mean_over_ranks(loss: torch.Tensor, shard: Shard) -> float:
    """The step's loss over the whole effective batch (every rank's mean, averaged)."""
    if shard.active:
        import torch.distributed as td

        td.all_reduce(loss)
        loss = loss / shard.world
    return loss.item()
