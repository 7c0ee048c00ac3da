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


def new_figure(nrows: int = 1, ncols: int = 1, **kwargs):
    """``(fig, axes)`` like ``plt.subplots`` but without pyplot: a bare
    :class:`matplotlib.figure.Figure` (rendered by Agg on save). Library plots use it so they
    never switch or touch the interactive backend (a notebook's inline figures keep working)."""
    from matplotlib.figure import Figure

    fig_kw = {k: kwargs.pop(k) for k in ("figsize", "dpi", "layout") if k in kwargs}
    fig = Figure(**fig_kw)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig, path, *, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically (and close it if pyplot manages it)."""
    import sys

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    if "matplotlib.pyplot" in sys.modules:  # a pyplot figure: release it (a bare Figure needs nothing)
        sys.modules["matplotlib.pyplot"].close(fig)
    return path


def model_kwargs(mask=None, cond=None) -> dict:
    """The optional keywords of a model call: ``mask=`` / ``cond=`` only when given."""
    kw = {}
    if mask is not None:
        kw["mask"] = mask
    if cond is not None:
        kw["cond"] = cond
    return kw


# -- output directories owned by one run --------------------------------------------------------
LOCK_NAME = ".workbench.lock"
MANIFEST_NAME = "manifest.json"


def check_output_dir(path) -> Path:
    """One-line ``ValueError`` unless ``path`` is (or can be created as) a writable directory:
    not an existing file, no file among its parents, writable. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"out={path} is an existing file; pass a directory (new or existing)")
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise ValueError(f"out={path} cannot be created: {p} is a file, not a directory")
    if p.exists() and not os.access(p, os.W_OK | os.X_OK):
        raise ValueError(f"out={path} is not writable ({p} is read-only for this user); pass another out=")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _snapshot(root: Path) -> dict:
    """``{relative path: (mtime_ns, size)}`` of the files under ``root`` (not the lock, the
    manifest or temporary files)."""
    out = {}
    if not root.is_dir():
        return out
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f in (LOCK_NAME, MANIFEST_NAME) or (f.startswith(".") and f.endswith(".tmp")):
                continue
            p = Path(dirpath) / f
            try:
                st = p.stat()
            except OSError:
                continue
            out[p.relative_to(root).as_posix()] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return out


class OutputDirInUse(RuntimeError):
    """Another live run holds the output directory's lock."""


class OutputDir:
    """Ownership of an output directory by one run (a context manager).

    On entry: :func:`check_output_dir`, then the lock file ``.workbench.lock`` (pid, host,
    command) is created; a lock held by a live process is a one-line ``RuntimeError`` naming it;
    a lock left by a dead process is taken over. On a successful exit ``manifest.json`` lists
    the files this run wrote (new or rewritten), and with ``remove_stale`` the files that the
    previous manifest of the same ``command`` listed but this run did not write are deleted
    (never a file no manifest lists); ``self.removed`` holds them. The lock goes on any exit.
    """

    def __init__(self, path, command: str, *, remove_stale: bool = False, lock_only: bool = False):
        self.path, self.command, self.remove_stale, self.lock_only = Path(path), command, remove_stale, lock_only
        self.removed: list[str] = []
        self.files: list[str] = []
        self._locked = False

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    def _acquire(self) -> None:
        import socket
        import sys

        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "argv": sys.argv}
        for _ in range(3):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    other = json.loads(self.lock_path.read_text() or "{}")
                except (OSError, ValueError):
                    other = {}
                pid = other.get("pid")
                same_host = other.get("host") in (None, socket.gethostname())
                if isinstance(pid, int) and (not same_host or _pid_alive(pid)):
                    cmd = " ".join(map(str, other.get("argv") or [])) or other.get("command", "?")
                    raise OutputDirInUse(f"out={self.path} is in use by another workbench run (pid {pid}"
                                       f"{'' if same_host else ' on ' + str(other.get('host'))}: {cmd}); wait for it to finish, "
                                       f"pass another out=, or delete {self.lock_path} if that run is gone") from None
                try:  # a lock left by a run that died (kill -9): take it over
                    self.lock_path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            self._locked = True
            return
        raise RuntimeError(f"could not take the lock {self.lock_path}; another run keeps taking it")

    def __enter__(self) -> "OutputDir":
        check_output_dir(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._acquire()
        self._before = _snapshot(self.path)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None and not self.lock_only:
                self._finish()
        finally:
            if self._locked:
                try:
                    self.lock_path.unlink()
                except FileNotFoundError:
                    pass
                self._locked = False
        return False

    def _finish(self) -> None:
        after = _snapshot(self.path)
        self.files = sorted(k for k, v in after.items() if self._before.get(k) != v)
        mpath = self.path / MANIFEST_NAME
        try:
            old = json.loads(mpath.read_text()) if mpath.exists() else {}
        except (OSError, ValueError):
            old = {}
        runs = dict(old.get("runs") or {})
        if self.remove_stale:
            written = set(self.files)
            for rel in (runs.get(self.command) or {}).get("files", []):
                p = self.path / rel
                if rel not in written and ".." not in Path(rel).parts and p.is_file():
                    p.unlink()
                    self.removed.append(rel)
        runs[self.command] = {"files": self.files}
        write_json(mpath, {"command": self.command, "files": self.files, "removed_stale": self.removed, "runs": runs})

    def note_removed(self) -> str:
        """One line about the stale files removed ('' if none)."""
        if not self.removed:
            return ""
        return f"removed {len(self.removed)} stale file(s) of an earlier {self.command} run in {self.path} (listed in its manifest.json)"
