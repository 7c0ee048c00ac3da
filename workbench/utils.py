"""Small shared utilities: per-sample random numbers, atomic file writes, seeding."""
from __future__ import annotations

import json
import os
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

Generator = Union[None, torch.Generator, Sequence[torch.Generator]]


def per_sample_generators(seed: int, n: int, device="cpu") -> list[torch.Generator]:
    """One generator per sample: sample ``i`` uses seed ``seed + i``, so it depends only on
    its own seed, whatever the batch size."""
    return [torch.Generator(device=device).manual_seed(int(seed) + i) for i in range(n)]


def randn(shape, *, generator: Generator = None, device=None, dtype=torch.float32) -> Tensor:
    """Standard normal noise of ``shape`` ``[B, ...]``.

    ``generator`` may be ``None`` (global RNG), one ``torch.Generator``, or a list of ``B``
    generators (sample ``i`` drawn from ``generator[i]``: batch-size independent).
    """
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        gdev = generator.device if generator is not None else device
        out = torch.randn(shape, generator=generator, device=gdev, dtype=dtype)
        return out.to(device) if device is not None else out
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} per-sample generators for a batch of {shape[0]}")
    out = torch.stack([torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in gens])
    return out.to(device) if device is not None else out


def first_generator(generator: Generator) -> Optional[torch.Generator]:
    """One ``torch.Generator`` for batch-level draws (times, masks): ``generator`` itself, or
    the first of a list of per-sample generators; ``None`` stays ``None`` (global RNG)."""
    return generator if generator is None or isinstance(generator, torch.Generator) else generator[0]


def randn_like(x: Tensor, generator: Generator = None) -> Tensor:
    return randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def atomic_path(path: Union[str, Path]):
    """Yield a temporary path in the same folder; on success rename it over ``path``.

    A crash mid-write never leaves a truncated ``path`` (the old file stays intact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> Path:
    """Write ``text`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def resolve_device(device: Optional[str] = None) -> torch.device:
    """``auto`` / ``None`` -> cuda if available else cpu; otherwise ``torch.device(device)``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def save_figure(fig, path, *, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


def model_kwargs(mask=None, cond=None) -> dict:
    """The optional keywords of a model call: ``mask=`` / ``cond=`` only when given."""
    kw = {}
    if mask is not None:
        kw["mask"] = mask
    if cond is not None:
        kw["cond"] = cond
    return kw
