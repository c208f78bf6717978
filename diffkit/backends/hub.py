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


def looks_like_path(model: str) -> bool:
    """``model`` can only be meant as a local folder: a hub id is ``name`` or ``owner/name``, so an absolute
    or relative path (``/m``, ``./m``, ``~/m``, ``a/b/c``), or one whose first folder exists here, is a path."""
    head = model.split("/", 1)[0]
    return (model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1
            or ("/" in model and os.path.isdir(head)))


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
    if looks_like_path(model):
        raise BackendError(f"no folder at {model}: give the path of {kind}" + (" (a file is there)" if os.path.exists(model) else ""))
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(model, name, subfolder=sub or None)).read_text())
    except Exception as e:  # network, gated repo, missing file: the library's first line is the reason
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BackendError(f"{model} is no folder here, and fetching it as a hub id failed ({why}). "
                           f"{hint or 'Give the path of a local folder instead'}") from e
