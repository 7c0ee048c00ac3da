"""Safe, atomic checkpoints.

Model weights are stored as safetensors (no code execution on load) with a JSON metadata
record; training states (optimizers, RNG, step) as ``torch.save`` dicts of tensors and
plain values, always loaded with ``weights_only=True``. Every write goes to a temporary
file that is renamed over the target, so an interrupted write never corrupts the previous
checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .utils import atomic_path

PathLike = Union[str, Path]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model."""


def save_weights(path: PathLike, module_or_state, meta: Optional[dict] = None) -> Path:
    """Write a module's (or a state dict's) tensors to ``path`` (safetensors), atomically.
    ``meta`` (JSON-serialisable) is stored in the header under ``workbench``."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else dict(module_or_state)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"workbench": json.dumps(meta or {})})
    return path


def load_weights(path: PathLike, *, device="cpu") -> tuple[dict, dict]:
    """Read ``(state_dict, meta)`` from a safetensors file with a clear error if it is missing
    or corrupt; ``meta`` (the ``workbench`` header) is always a dict (a header that is not a JSON
    object is a :class:`CheckpointError`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        raise CheckpointError(f"unsupported checkpoint format {path.suffix!r} for {path}; valid: .safetensors")
    try:
        state = load_file(str(path), device=str(device))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("workbench", "{}"))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"corrupt or unreadable checkpoint {path}: {e}") from None
    if not isinstance(meta, dict):  # the header the workbench writes is always a JSON object
        raise CheckpointError(f"corrupt or unreadable checkpoint {path}: its 'workbench' header is a JSON "
                              f"{type(meta).__name__}, not an object (not written by the workbench, or damaged)")
    return state, meta


def load_into(module: nn.Module, path: PathLike, *, device="cpu", strict: bool = True) -> dict:
    """Load safetensors weights into ``module``; returns the metadata. Shape/key mismatches
    raise :class:`CheckpointError` naming the first offending keys."""
    state, meta = load_weights(path, device=device)
    load_state_into(module, state, path, strict=strict)
    return meta


def load_state_into(module: nn.Module, state: dict, path: PathLike, *, strict: bool = True) -> None:
    """:func:`load_into` for a ``state`` already read with :func:`load_weights` (callers that
    inspect the header or keys first, so the file is read once); ``path`` names it in errors."""
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit {type(module).__name__}: {str(e).splitlines()[0]}") from None
    if strict and (missing or unexpected):
        raise CheckpointError(f"checkpoint {path} does not fit {type(module).__name__}: missing keys {missing[:3]}, unexpected keys {unexpected[:3]}")


def save_state(path: PathLike, state: dict) -> Path:
    """Write a training state dict (tensors, numbers, strings, lists, dicts) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, str(tmp))
    return path


def load_state(path: PathLike, *, device="cpu") -> dict[str, Any]:
    """Load a training state written by :func:`save_state` with ``weights_only=True``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"training state not found: {path}")
    try:
        return torch.load(str(path), map_location=device, weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"corrupt or unsafe training state {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
