"""Small shared utilities: per-sample random numbers, atomic file writes, seeding."""
from __future__ import annotations

import contextvars
import json
import os
import random
import re
import tempfile
import warnings
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


#: the temporary files of :func:`atomic_path`: ``.NAME.XXXXXXXX.tmp`` (``tempfile.mkstemp``'s 8 random
#: characters); a write cut short by kill -9 leaves one, which :class:`OutputDir` removes on its next run
ATOMIC_TMP_RE = re.compile(r"\A\..+\.[a-z0-9_]{8}\.tmp\Z")


@contextmanager
def atomic_path(path: Union[str, Path]):
    """Yield a temporary path in the same folder; on success rename it over ``path``.

    A crash mid-write never leaves a truncated ``path`` (the old file stays intact). A kill -9
    leaves the hidden ``.NAME.XXXXXXXX.tmp`` (:data:`ATOMIC_TMP_RE`); the next run that owns the
    folder (:class:`OutputDir`) removes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # e.g. ENOSPC: name the file that could not be written
        raise _naming(e, path, None) from None
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            named = _naming(e, path, tmp)
            if named is not e:
                raise named from None
        raise


def _naming(e: OSError, path: Path, tmp) -> OSError:
    """``e`` naming ``path`` (the file being written) when it names no file or only the temporary
    one; same class (``OSError(errno, ...)`` picks the subclass) and traceback."""
    if e.errno is None or (e.filename is not None and e.filename != tmp) or type(e) is not type(OSError(e.errno, "")):
        return e
    new = OSError(e.errno, e.strerror or os.strerror(e.errno), str(path))
    return new.with_traceback(e.__traceback__)


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


_SHOW_PROGRESS = contextvars.ContextVar("workbench_show_progress", default=False)


@contextmanager
def show_progress(enabled: bool = True):
    """Within this block, :func:`track` shows progress bars (with ETA, on stderr). The
    application layer (CLI commands, the runner) turns it on; library code stays quiet."""
    token = _SHOW_PROGRESS.set(bool(enabled))
    try:
        yield
    finally:
        _SHOW_PROGRESS.reset(token)


def track(iterable, desc: str, total: Optional[int] = None):
    """``iterable``, wrapped in a tqdm bar when :func:`show_progress` is on: library code marks
    its long loops (metrics over many structures, reference solves) with it."""
    if not _SHOW_PROGRESS.get():
        return iterable
    import sys

    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr, dynamic_ncols=True)


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


def _pid_alive(pid) -> bool:
    """Whether process ``pid`` runs here; a pid that no process can have (not a positive int, or
    beyond the OS's range, as in a damaged lock file) is not alive."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
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


def _read_json_object(path: Path) -> dict:
    """The JSON object in ``path``; ``{}`` when the file is missing, unreadable, not JSON or not an object."""
    try:
        obj = json.loads(path.read_text() or "{}")
    except (OSError, ValueError, RecursionError):  # incl. UnicodeDecodeError; RecursionError: deeply nested garbage
        return {}
    return obj if isinstance(obj, dict) else {}


def _read_manifest_runs(path: Path) -> dict:
    """``{command: {"files": [relative path, ...]}}`` of ``manifest.json``; a damaged manifest (not an
    object, ``runs`` or an entry not an object, ``files`` not a list of strings) counts as absent
    (entry by entry)."""
    runs = _read_json_object(path).get("runs")
    out = {}
    for cmd, entry in (runs.items() if isinstance(runs, dict) else ()):
        files = entry.get("files") if isinstance(entry, dict) else None
        if isinstance(files, list) and all(isinstance(f, str) for f in files):
            out[cmd] = {"files": list(files)}
    return out


def _plain_file_inside(p: Path, rel: str, root: Path) -> bool:
    """Whether ``p`` (``rel`` under the output folder ``root``, resolved) is a relative path that
    resolves inside ``root`` and is a plain file (not a symbolic link, folder or device)."""
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        return False
    try:
        p.resolve().relative_to(root)
    except (ValueError, OSError, RuntimeError):
        return False
    return not p.is_symlink() and p.is_file()


def _remove_leftover_tmp(root: Path) -> list[str]:
    """Remove the temporary files of :func:`atomic_path` (:data:`ATOMIC_TMP_RE`) that a killed
    write left under ``root``; the caller holds ``root``'s lock, so no live writer owns them.
    Folders holding their own lock (another run's output folder) and symbolic links are left
    alone. Returns the removed paths (relative)."""
    removed = []
    for dirpath, dirs, files in os.walk(root):
        here = Path(dirpath)
        if here != root and LOCK_NAME in files:
            dirs[:] = []  # owned by another run
            continue
        for f in files:
            p = here / f
            if ATOMIC_TMP_RE.match(f) and not p.is_symlink() and p.is_file():
                try:
                    p.unlink()
                except FileNotFoundError:
                    continue
                removed.append(p.relative_to(root).as_posix())
    return sorted(removed)


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
        self.removed_tmp: list[str] = []
        self.files: list[str] = []
        self._old_runs: dict = {}
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
                other = _read_json_object(self.lock_path)  # damaged (not a JSON object): not held by a live run
                pid = other.get("pid")
                host = other.get("host")
                same_host = host is None or host == socket.gethostname()
                valid_pid = isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**63
                if valid_pid and (not same_host or _pid_alive(pid)):
                    argv = other.get("argv")
                    cmd = (" ".join(map(str, argv)) if isinstance(argv, list) else "") or str(other.get("command", "?"))
                    cmd = " ".join(cmd.split())  # one line
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
        for name in (LOCK_NAME,) if self.lock_only else (LOCK_NAME, MANIFEST_NAME):
            p = self.path / name
            if p.exists() and not p.is_file():  # a folder or device in the place of a control file: not ours to replace
                raise ValueError(f"out={self.path}: {p} is not a file (the workbench keeps its {name} there); "
                                 f"remove it or pass another out=")
        self._acquire()
        try:
            if not self.lock_only:
                self._old_runs = _read_manifest_runs(self.path / MANIFEST_NAME)  # checked now, not after the work
                self.removed_tmp = _remove_leftover_tmp(self.path)
            self._before = _snapshot(self.path)
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None and not self.lock_only:
                self._finish()
        finally:
            self._release()
        return False

    def _release(self) -> None:
        if self._locked:
            try:
                self.lock_path.unlink()
            except FileNotFoundError:
                pass
            self._locked = False

    def _finish(self) -> None:
        after = _snapshot(self.path)
        self.files = sorted(k for k, v in after.items() if self._before.get(k) != v)
        mpath = self.path / MANIFEST_NAME
        runs = dict(self._old_runs)
        if self.remove_stale:
            written = set(self.files)
            root = self.path.resolve()
            for rel in runs.get(self.command, {}).get("files", []):
                if rel in written:
                    continue
                p = self.path / rel
                if not p.exists() and not p.is_symlink():
                    continue  # already gone
                if not _plain_file_inside(p, rel, root):
                    warnings.warn(f"{mpath} lists {rel!r}, which is not a plain file inside out={self.path}; not removed",
                                  stacklevel=2)
                    continue
                p.unlink()
                self.removed.append(rel)
        runs[self.command] = {"files": self.files}
        man = {"command": self.command, "files": self.files, "removed_stale": self.removed, "runs": runs}
        if self.removed_tmp:
            man["removed_tmp"] = self.removed_tmp
        write_json(mpath, man)

    def note_removed(self) -> str:
        """One line about the stale files removed ('' if none)."""
        notes = []
        if self.removed:
            notes.append(f"removed {len(self.removed)} stale file(s) of an earlier {self.command} run in {self.path} "
                         f"(listed in its manifest.json)")
        if self.removed_tmp:
            notes.append(f"removed {len(self.removed_tmp)} temporary file(s) of a write cut short in {self.path}")
        return "; ".join(notes)
