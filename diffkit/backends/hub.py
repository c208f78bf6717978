"""Reading a diffusers model's layout from a local folder or a hub id, before any weights load.

The backends built on diffusers (IF here, Stable Diffusion in ``diffkit_plugins.sd``) check that a folder
is the layout they need and read its configs first, so a wrong folder is a clear error before a UNet loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffkit.backends.base import BackendError


def is_local(model: str) -> bool:
    return os.path.isdir(model)


def load_json(model: str, sub: str, name: str, kind: str, hint: str = "") -> dict:
    """``model/sub/name`` as a dict; ``kind`` names the layout expected ("a diffusers IF folder"), ``hint``
    what to do when a hub id cannot be fetched. A missing file or an unreadable one is a BackendError."""
    where = f"{sub}/{name}" if sub else name
    if is_local(model):
        f = Path(model) / sub / name
        if not f.is_file():
            raise BackendError(f"{model} is not {kind}: {where} is missing")
        try:
            return json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BackendError(f"{model}: {where} is not readable JSON ({e})") from None
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(model, name, subfolder=sub or None)).read_text())
    except Exception as e:  # network, gated repo, missing file
        raise BackendError(f"cannot fetch {model}/{where}: {e}. {hint or 'Pass a local folder instead'}") from e
