"""ONE training loop for teachers and (later) every distillation method.

``train(objective, nets, data, cfg, out_dir=...)``:

* ``objective(nets, batch, generator[, phase=...]) -> loss [B]`` (per-sample; reduced here);
* ``nets``: a ``dict`` of named ``nn.Module`` (``"model"`` for a teacher; a distiller adds
  e.g. ``"fake_score"``); only ``trainable`` ones get optimizers;
* ``data(batch_size, generator) -> Batch``: a pure batch sampler, so a run is exactly
  reproducible and resumable from the saved generator state;
* phases: an objective may declare ``phases = [(name, [net names], every), ...]``; each
  phase has its own optimizer and runs every ``every`` steps (two time-scale updates);
  the default is one phase over all trainable nets; ``phase_betas = {name: (b1, b2)}``
  gives a phase its own Adam betas (the others use ``cfg.betas``);
* EMA targets: an objective may declare ``ema_targets = {target: (source, decay)}``; after
  every step the loop moves ``nets[target]`` towards ``nets[source]`` (consistency models'
  target network, Song et al. 2023); targets are checkpointed with the other nets.

Features: EMA (with warm-up), gradient clipping, cosine/constant LR with warm-up,
atomic checkpoints (``state.pt``) every ``ckpt_every`` steps or ``ckpt_minutes`` minutes,
whichever comes first, and once early (after ``min(ckpt_every, 100)`` steps or one minute), with
exact resume (nets, EMA, optimizers, step, data and global RNG states); an interrupt
(Ctrl-C / SIGTERM) raises :class:`TrainingInterrupted` saying what was saved, safetensors export of the EMA weights,
loss curves as PNG + JSON, a tqdm progress bar.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn

from .checkpoint import load_state, save_state, save_weights
from .losses import Batch
from .utils import write_json


@dataclass
class TrainConfig:
    """Hyper-parameters of the shared loop; every field is a CLI key ``train.<field>``
    (``workbench train --help``). Checked on construction (one-line ``ValueError``)."""

    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    warmup: int = 0
    schedule: str = "constant"  # or "cosine"
    grad_clip: Optional[float] = 1.0
    ema_decay: float = 0.999
    ckpt_every: int = 500
    ckpt_minutes: Optional[float] = 10.0  # also checkpoint after this many minutes (None: by steps only)
    log_every: int = 25
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self):
        import numbers

        def bad(name, what):
            return ValueError(f"TrainConfig.{name} must be {what}, got {getattr(self, name)!r}")

        def integral(v):
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        def real(v):
            return isinstance(v, numbers.Real) and not isinstance(v, bool)

        for name in ("steps", "batch_size", "warmup", "ckpt_every", "log_every", "seed"):
            if not integral(getattr(self, name)):
                raise bad(name, "an integer")
        for name in ("batch_size", "ckpt_every", "log_every"):
            if getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        for name in ("lr", "weight_decay", "ema_decay"):
            if not real(getattr(self, name)):
                raise bad(name, "a number")
        if self.ckpt_minutes is not None and not (real(self.ckpt_minutes) and self.ckpt_minutes > 0):
            raise bad("ckpt_minutes", "a positive number of minutes or None")
        if self.grad_clip is not None and not real(self.grad_clip):
            raise bad("grad_clip", "a number or None")
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2 and all(real(b) for b in self.betas)):
            raise bad("betas", "two numbers, e.g. [0.9, 0.999]")
        self.betas = tuple(float(b) for b in self.betas)
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"unknown lr schedule {self.schedule!r}; valid: constant, cosine")
        if not isinstance(self.progress, bool):
            raise bad("progress", "true or false")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM during :func:`train`; the message says what was saved (the step of the
    last checkpoint in ``state.pt``, or that nothing was saved yet)."""


#: the first checkpoint comes after at most this many steps (or :data:`FIRST_CKPT_SECONDS`)
FIRST_CKPT_STEPS = 100
FIRST_CKPT_SECONDS = 60.0


@dataclass
class TrainResult:
    nets: dict
    ema: dict
    step: int
    history: list = field(default_factory=list)
    seconds: float = 0.0


class EMA:
    """Exponential moving average of a module's parameters and buffers with warm-up
    ``decay_t = min(decay, (1 + t) / (10 + t))``."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = float(decay)
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for pe, p in zip(self.module.parameters(), module.parameters()):
            pe.lerp_(p.detach(), 1.0 - d)
        for be, b in zip(self.module.buffers(), module.buffers()):
            be.copy_(b)


@torch.no_grad()
def _lerp_module(target: nn.Module, source: nn.Module, weight: float) -> None:
    """``target <- target + weight (source - target)`` for parameters; buffers copied."""
    for pt, ps in zip(target.parameters(), source.parameters()):
        pt.lerp_(ps.detach(), weight)
    for bt, bs in zip(target.buffers(), source.buffers()):
        bt.copy_(bs)


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if cfg.warmup and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.schedule == "cosine":
        p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
    if cfg.schedule != "constant":
        raise ValueError(f"unknown lr schedule {cfg.schedule!r}; valid: constant, cosine")
    return 1.0


def _settings_diff(old, new, prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for every leaf where two JSON settings (as :func:`train` stores
    them: plain dicts, lists and scalars) differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _settings_diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def _phases(objective, trainable: list[str]) -> list[tuple[str, list[str], int]]:
    phases = getattr(objective, "phases", None)
    if not phases:
        return [("main", list(trainable), 1)]
    out = []
    for name, names, every in phases:
        bad = [n for n in names if n not in trainable]
        if bad:
            raise ValueError(f"phase {name!r} trains unknown or frozen nets {bad}; trainable: {trainable}")
        out.append((name, list(names), int(every)))
    return out


def train(objective: Callable, nets: Union[nn.Module, dict], data: Callable[[int, torch.Generator], Batch], cfg: TrainConfig, *,
          out_dir: Optional[Union[str, Path]] = None, resume: bool = True, trainable: Optional[list[str]] = None,
          ema: Optional[list[str]] = None, meta: Optional[dict] = None, settings: Optional[dict] = None,
          on_step: Optional[Callable[[int, dict], None]] = None) -> TrainResult:
    """Train ``nets`` on ``objective``; see the module docstring.

    Args:
        out_dir: where ``state.pt`` (resumable), ``<net>.safetensors`` (EMA weights, or raw
            weights for nets without EMA), ``history.json`` and ``loss.png`` go. ``None``
            keeps everything in memory.
        resume: continue from ``out_dir/state.pt`` if it exists (a ``ValueError`` if that run's
            ``settings`` differ from this one's, e.g. other method options).
        trainable: names of nets to optimise (default: all).
        ema: names of nets to keep an EMA of (default: ``["model"]`` if present).
        meta: JSON metadata stored in exported safetensors headers (e.g. the backbone config).
        settings: JSON settings that define the run (default: ``meta``); stored in ``state.pt``
            and compared on resume, so a run is never continued under another recipe. Leave out
            descriptive values that may change between invocations (timings).
        on_step: ``on_step(step, logs)`` after each step (tests use it to simulate a crash).
    Returns:
        :class:`TrainResult` with the nets, their EMA modules, the last step and the loss log.
    """
    if isinstance(nets, nn.Module):
        nets = {"model": nets}
    # JSON round trip: tuples compare equal to lists, and ``state.pt`` holds only plain types
    # (it is loaded with ``weights_only=True``)
    settings = json.loads(json.dumps(meta or {} if settings is None else settings, default=str))
    device = torch.device(cfg.device)
    nets = {k: v.to(device) for k, v in nets.items()}
    trainable = list(nets) if trainable is None else list(trainable)
    unknown = [n for n in trainable if n not in nets]
    if unknown:
        raise ValueError(f"trainable names {unknown} are not nets; valid: {list(nets)}")
    ema_names = [n for n in (ema if ema is not None else ["model"]) if n in nets]
    phases = _phases(objective, trainable)
    # EMA targets apply when the target net is present (objectives may run without one)
    ema_targets = {k: v for k, v in dict(getattr(objective, "ema_targets", None) or {}).items() if k in nets}
    for tgt, (src, _) in ema_targets.items():
        if src not in nets:
            raise ValueError(f"objective.ema_targets maps {src!r} -> {tgt!r}, but nets are {list(nets)}")
        if tgt in trainable:
            raise ValueError(f"{tgt!r} is an EMA target of {src!r}; it must not also be trainable")
    optims = {}
    for name, names, _ in phases:
        params = [p for n in names for p in nets[n].parameters() if p.requires_grad]
        # an objective may give a phase its own Adam betas (``phase_betas = {phase: (b1, b2)}``,
        # e.g. SiD-Protein's generator at beta1 = 0.9 beside a fake score at 0)
        betas = tuple(dict(getattr(objective, "phase_betas", None) or {}).get(name, cfg.betas))
        optims[name] = torch.optim.AdamW(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
    emas = {n: EMA(nets[n], cfg.ema_decay) for n in ema_names}
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    step, history = 0, []
    out = Path(out_dir) if out_dir is not None else None
    state_path = out / "state.pt" if out is not None else None
    if resume and state_path is not None and state_path.exists():
        st = load_state(state_path)
        diff = _settings_diff(st["settings"], settings) if st.get("settings") is not None else []
        if diff:  # resuming would mix two recipes in one run and label the result with the second
            raise ValueError(f"{state_path} was written by a run with other settings ({'; '.join(diff[:4])}"
                             f"{'; ...' if len(diff) > 4 else ''}); rerun with the same settings, or start afresh with "
                             "resume=false (Python: resume=False) or a new out= directory")
        for n, sd in st["nets"].items():
            nets[n].load_state_dict(sd)
        for n, sd in st["ema"].items():
            emas[n].module.load_state_dict(sd)
        for n, sd in st["optims"].items():
            optims[n].load_state_dict(sd)
        gen.set_state(st["data_rng"])
        torch.set_rng_state(st["torch_rng"])
        step, history = int(st["step"]), list(st["history"])
        if cfg.progress:
            import sys

            print(f"resuming from {state_path} at step {step} of {cfg.steps}", file=sys.stderr)
    saved = {"step": step if step > 0 else None, "time": time.time()}  # the last checkpoint on disk

    def checkpoint():
        if out is None:
            return
        save_state(state_path, {
            "step": step, "history": history, "config": asdict(cfg), "settings": settings,
            "nets": {n: m.state_dict() for n, m in nets.items()},
            "ema": {n: e.module.state_dict() for n, e in emas.items()},
            "optims": {n: o.state_dict() for n, o in optims.items()},
            "data_rng": gen.get_state(), "torch_rng": torch.get_rng_state(),
        })
        for n, m in nets.items():
            save_weights(out / f"{n}.safetensors", emas[n].module if n in emas else m, {**(meta or {}), "net": n, "step": step})
        write_json(out / "history.json", history)
        plot_history(history, out / "loss.png")
        saved.update(step=step, time=time.time())

    def due() -> bool:
        """A checkpoint is due: every ``ckpt_every`` steps or ``ckpt_minutes`` minutes, the last
        step, and early: the first after ``min(ckpt_every, 100)`` steps or one minute."""
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            return True
        elapsed = time.time() - saved["time"]
        if cfg.ckpt_minutes is not None and elapsed >= 60.0 * cfg.ckpt_minutes:
            return True
        return saved["step"] is None and (step >= min(cfg.ckpt_every, FIRST_CKPT_STEPS) or elapsed >= FIRST_CKPT_SECONDS)

    def interrupted() -> TrainingInterrupted:
        if out is None:
            what = "nothing saved (no out_dir)"
        elif saved["step"] is None:
            what = f"nothing saved yet in {out} (no checkpoint written); a rerun starts from step 0"
        else:
            what = f"last checkpoint: step {saved['step']} in {state_path}; rerun the same command to resume from there"
        return TrainingInterrupted(f"interrupted at step {step} of {cfg.steps}; {what}")

    for m in nets.values():
        m.train()
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train", leave=False, dynamic_ncols=True)
    t0 = time.time()
    running: dict[str, float] = {}
    try:
        while step < cfg.steps:
            batch = data(cfg.batch_size, gen).to(device)
            logs = {}
            for name, names, every in phases:
                if step % every:
                    continue
                for g in optims[name].param_groups:
                    g["lr"] = cfg.lr * _lr_factor(step, cfg)
                kwargs = {"phase": name} if getattr(objective, "phases", None) else {}
                loss = objective(nets, batch, gen, **kwargs)
                if loss.ndim != 1 or loss.shape[0] != len(batch):
                    raise ValueError(f"objective must return a per-sample loss of shape [B]=[{len(batch)}], got {tuple(loss.shape)}")
                loss = loss.mean()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {step} (phase {name}); lower the learning rate or check the data scale")
                optims[name].zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    params = [p for g in optims[name].param_groups for p in g["params"]]
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optims[name].step()
                logs[name] = loss.item()
            for n, e in emas.items():
                e.update(nets[n], step)
            for tgt, (src, decay) in ema_targets.items():  # e.g. consistency models' target network
                _lerp_module(nets[tgt], nets[src], 1.0 - float(decay))
            step += 1
            for k, v in logs.items():
                running[k] = running.get(k, 0.0) + v
            if step % cfg.log_every == 0 or step == cfg.steps:
                k = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
                history.append({"step": step, **{kk: vv / k for kk, vv in running.items()}})
                running = {}
                if bar is not None:
                    bar.set_postfix({kk: f"{vv:.4g}" for kk, vv in history[-1].items() if kk != "step"})
            if bar is not None:
                bar.update(1)
            if on_step is not None:
                on_step(step, logs)
            if out is not None and due():
                checkpoint()
    except KeyboardInterrupt as e:
        if bar is not None:
            bar.close()
        if isinstance(e, TrainingInterrupted):  # from a nested loop: it already says what was saved
            raise
        raise interrupted() from None
    if bar is not None:
        bar.close()
    for m in nets.values():
        m.eval()
    return TrainResult(nets=nets, ema={n: e.module for n, e in emas.items()}, step=step, history=history, seconds=time.time() - t0)


def plot_history(history: list, path: Union[str, Path]) -> Optional[Path]:
    """Loss curves (log scale) as a PNG, written atomically."""
    if not history:
        return None
    from .utils import new_figure, save_figure

    keys = [k for k in history[0] if k != "step"]
    fig, ax = new_figure(figsize=(5, 3))
    steps = [h["step"] for h in history]
    for k in keys:
        ax.plot(steps, [h.get(k, float("nan")) for h in history], label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
