"""MNIST checkpoints: a folder of ``model.safetensors``, ``config.json`` and (while training) ``state.pt``.

Folders are written whole to a temp folder and swapped in, so an interrupted save never leaves a
half-written checkpoint where the last good one was.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from diffkit.errors import UserError
from diffkit.io import replace_dir
from diffkit.mnist.model import UNet

SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "mnist-class"
SHIPPED_WEAK = SHIPPED.parent / "mnist-weak"  # autoguide's default weak model: smaller, shorter-trained
SHIPPED_H64 = SHIPPED.parent / "mnist-h64"  # train mnist's defaults (hidden 64, 20 epochs) on a GPU: the quality model
SHIPPED_H64_EMA = SHIPPED.parent / "mnist-h64-ema"  # mnist-h64 fine-tuned two epochs, its weights' moving average
# Shipped models a --checkpoint (or autoguide's model=) may name instead of a folder; a folder of the
# same name in the working directory wins, as a path always does.
SHIPPED_FLOW = SHIPPED.parent / "mnist-flow"  # train mnist --objective flow: few-step sampling
SHIPPED_NAMES = {"mnist-class": SHIPPED, "mnist-h64": SHIPPED_H64, "mnist-h64-ema": SHIPPED_H64_EMA,
                 "mnist-weak": SHIPPED_WEAK, "mnist-flow": SHIPPED_FLOW}


class CheckpointError(UserError, FileNotFoundError):
    pass


def save(folder: Path, model: torch.nn.Module, config: dict[str, Any], state: dict[str, Any] | None = None) -> None:
    """Write weights, config (and training state) to ``folder`` atomically."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if state is not None:
            torch.save(state, tmp / "state.pt")
        replace_dir(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_weights(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; anything else (a pickle included) is refused, read as data, never run."""
    try:
        return load_file(path, device=device)
    except Exception as e:
        raise CheckpointError(f"{path} is not a safetensors file ({e})") from None


def load_state(folder: Path) -> dict[str, Any]:
    """The training state saved beside the weights (optimizer, epoch, losses, options).

    ``weights_only=True``: tensors, numbers, strings and containers only, so a crafted ``state.pt``
    cannot run code when a run is resumed.
    """
    path = Path(folder) / "state.pt"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no state.pt: it is a finished or shipped model, not a run to resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for anything beyond plain data, or a damaged file
        raise CheckpointError(f"refusing {path}: not a plain training state written by diffkit "
                              f"({type(e).__name__}); nothing in it was run") from None


def named(folder: str | Path) -> Path:
    """``folder`` as a path: a shipped model's name (:data:`SHIPPED_NAMES`) unless a path of that name exists."""
    path = Path(folder)
    return SHIPPED_NAMES[str(folder)] if str(folder) in SHIPPED_NAMES and not path.exists() else path


def resolve(folder: str | Path | None) -> Path:
    """The checkpoint folder to read: ``folder``, a shipped model's name (:data:`SHIPPED_NAMES`), or the
    shipped model; ``X.old`` if a swap was cut short."""
    folder = named(folder) if folder else SHIPPED
    if folder.is_file() and folder.name in ("model.safetensors", "config.json"):
        folder = folder.parent
    elif folder.is_file():
        raise CheckpointError(f"{folder} is a file; an MNIST checkpoint is a folder with config.json and "
                              "model.safetensors (pickled .pt/.pth/.ckpt files are never loaded)")
    if not (folder / "config.json").is_file():
        old = folder.with_name(folder.name + ".old")
        if (old / "config.json").is_file():
            return old
        raise CheckpointError(f"no MNIST checkpoint at {folder} (expected config.json and model.safetensors there; "
                              f"shipped models by name: {', '.join(SHIPPED_NAMES)})")
    return folder


def load_config(folder: str | Path | None) -> dict[str, Any]:
    return _read_config(resolve(folder))


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{folder / 'config.json'} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or not {"hidden", "conditioning"} <= set(config):
        raise CheckpointError(f"{folder / 'config.json'} is not a diffkit MNIST config (no hidden/conditioning)")
    return config


def _check_fits(folder: Path, config: dict[str, Any]) -> None:
    """Refuse a config that does not describe the weights beside it, before anything is allocated: the
    model is built on the meta device (no memory) and its shapes compared with the file's header."""
    hidden, cond = config["hidden"], config["conditioning"]
    if isinstance(hidden, bool) or not isinstance(hidden, int) or not 1 <= hidden <= 1024:
        raise CheckpointError(f"{folder / 'config.json'}: hidden must be an integer in 1..1024, got {hidden!r}")
    if cond not in ("none", "time", "class"):
        raise CheckpointError(f"{folder / 'config.json'}: conditioning must be none, time or class, got {cond!r}")
    from safetensors import safe_open

    try:
        with safe_open(folder / "model.safetensors", "pt") as f:
            stored = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors' own error type: a pickle, a torn file
        raise CheckpointError(f"{folder / 'model.safetensors'} is not a safetensors file ({e})") from None
    with torch.device("meta"):
        wanted = {k: list(v.shape) for k, v in UNet(hidden, cond).state_dict().items()}
    if stored == wanted:
        return
    first = next(iter(wanted))  # the first conv: [hidden x 1 x 3 x 3]
    width = stored.get(first, [None])[0]
    if set(stored) == set(wanted) and width != hidden:
        raise CheckpointError(f"checkpoint {folder}: config.json says hidden={hidden} but its weights are "
                              f"{width} wide; fix config.json or pick the folder its weights came with")
    missing, extra = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
    raise CheckpointError(f"checkpoint {folder}: its weights do not fit config.json (hidden={hidden}, "
                          f"conditioning={cond}): " + (f"missing {', '.join(missing[:3])}; " if missing else "")
                          + (f"unexpected {', '.join(extra[:3])}; " if extra else "")
                          + "pick the config.json its weights came with")


def load_model(folder: str | Path | None, device: str = "cpu") -> tuple[UNet, dict[str, Any]]:
    """``(UNet in eval mode, config)`` from a checkpoint folder (default: the shipped class model)."""
    folder = resolve(folder)
    config = _read_config(folder)
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"checkpoint {folder} has config.json but no model.safetensors")
    _check_fits(folder, config)
    model = UNet(config["hidden"], config["conditioning"])
    model.load_state_dict(load_weights(folder / "model.safetensors", device))
    return model.to(device).eval(), config
