"""Sampler benchmark on discrete state (``workbench bench samplers`` on a domain whose process
is discrete): every discrete sampler that runs on the teacher's process at a list of NFEs,
learned sampler files (``lsd:PATH``) at their own NFE, and other checkpoints of the same
architecture (``SAMPLER@CHECKPOINT``, e.g. an SDTT student's ``student.safetensors``) from the
same prior, next to a held-out data row. There is no ODE to compare with: rows are ranked by
the domain's metrics (``evaluate``) and the teacher's many-step row is the reference
(``Domain.teacher_sampler``). Writes ``samplers.csv``, ``samplers.md`` and ``samplers.png``.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import torch

from . import api
from .losses import Batch
from .runner import generation_batches
from .samplers import available, get
from .utils import write_text

__all__ = ["bench_discrete", "DEFAULT_NFES"]

#: the NFEs of the discrete benchmark (the issue's 4 ... 256)
DEFAULT_NFES = (4, 8, 16, 32, 64, 256)


def _short(path: str) -> str:
    """A file's stem, or its folder's name for the generic names the CLI writes."""
    p = Path(path)
    return p.parent.name if p.stem in ("generator", "teacher", "student", "model") and p.parent.name else p.stem


def _entries(dom, proc, samplers) -> list:
    """``[(label, sampler name, checkpoint or None)]`` from ``samplers``: ``all`` (every
    discrete sampler that runs on ``proc`` and needs nothing from the caller), registry names,
    ``prefix:PATH`` files and ``SAMPLER@CHECKPOINT`` entries."""
    if samplers in ("all", None):
        names = [n for n in available(process=proc) if not get(n).needs]
    else:
        names = list(samplers)
    out = []
    for s in names:
        name, _, ckpt = str(s).partition("@")
        spec = get(name)  # one-line error for unknown names / files
        if not spec.supports(proc):
            raise ValueError(spec.mismatch(proc))
        label = name if not ckpt else f"{name}@{_short(ckpt)}"
        if spec.timesteps is not None and ":" in name:  # a learned sampler file: name it by its file
            prefix, _, path = name.partition(":")
            label = f"{prefix}:{_short(path)}" + (f"@{_short(ckpt)}" if ckpt else "")
        out.append((label, name, ckpt or None))
    return out


def bench_discrete(dom, model, out_path: Path, *, nfes=DEFAULT_NFES, samplers="all", n: int = 256, seed: int = 0,
                   device="cpu", progress: bool = True, teacher_row: bool = True) -> dict:
    """Run the discrete benchmark into ``out_path`` (see the module docstring). ``model`` is
    the teacher; rows are ``(method, nfe)`` with the domain's metrics (``m_*``), ``steps``,
    the real NFE and ``ms_per_sample``. ``teacher_row``: also run the domain's
    ``teacher_sampler`` at its own steps when ``nfes`` leaves it out (e.g. ``nfes`` up to 64
    and the 256-step teacher row). Returns ``{"csv", "markdown", "plot", "rows"}``."""
    from tqdm.auto import tqdm

    proc = dom.process()
    entries = _entries(dom, proc, samplers)
    gb, _ = next(iter(generation_batches(dom, n, seed, n)))
    models = {None: model}
    for _, _, ckpt in entries:
        if ckpt is not None and ckpt not in models:
            models[ckpt] = dom.load_teacher(ckpt, device=device)
    rows = []
    held = dom.reference_batch(n, split="val")
    m = dom.evaluate(held)
    rows.append({"method": "held-out data (val split)", "nfe": 0, "steps": 0, "ms_per_sample": 0.0, **{f"m_{k}": v for k, v in m.items()}})
    jobs = []
    for label, name, ckpt in entries:
        spec = get(name)
        if spec.timesteps is not None:
            jobs.append((label, name, ckpt, len(spec.timesteps) - 1))
            continue
        for k in nfes:
            steps = spec.steps_for_nfe(k)
            if steps is not None:
                jobs.append((label, name, ckpt, steps))
    t_name, t_steps = dom.teacher_sampler[0], int(dom.teacher_sampler[1])
    if teacher_row and not any(j[1] == t_name and j[2] is None and j[3] == t_steps for j in jobs):
        jobs.append((t_name, t_name, None, t_steps))  # the teacher's usual many-step row, always
    for label, name, ckpt, steps in tqdm(jobs, desc="bench", disable=not progress, leave=False):
        gens = [torch.Generator().manual_seed(seed + 10_000 + i) for i in range(n)]
        t0 = time.perf_counter()
        with torch.no_grad():
            out = api.run_sampler(models[ckpt], proc, gb.x_T.to(device), sampler=name, steps=steps, mask=gb.mask.to(device),
                                  generator=gens)
        secs = time.perf_counter() - t0
        m = dom.evaluate(Batch(x=out.x.cpu(), mask=gb.mask))
        rows.append({"method": label, "nfe": int(get(name).nfe(steps)), "nfe_used": out.nfe, "steps": steps,
                     "ms_per_sample": 1000 * secs / n, **{f"m_{k}": float(v) for k, v in m.items()}})
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    write_text(out_path / "samplers.csv", buf.getvalue())
    md = markdown(rows, nfes, dom, n, seed)
    md_path = out_path / "samplers.md"
    write_text(md_path, md)
    png = plot(rows, out_path / "samplers.png", dom)
    return {"csv": out_path / "samplers.csv", "markdown": md_path, "plot": png, "rows": rows}


def _metric_keys(rows, dom) -> list:
    keys = [k[2:] for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("m_")]
    first = [k for k in (dom.primary_metric, "reference_perplexity", "unigram_entropy") if k in keys]
    return first + [k for k in keys if k not in first]


def markdown(rows, nfes, dom, n: int, seed: int) -> str:
    """One table per metric (rows: methods, columns: NFE), then wall time."""
    held = rows[0]
    fixed = [r for r in rows[1:] if r["nfe"] not in nfes]
    nf = sorted(set(nfes) | {r["nfe"] for r in fixed})
    methods = list(dict.fromkeys(r["method"] for r in rows[1:]))
    info = getattr(dom, "metric_info", {})
    s = [f"Domain `{dom.name}` ({dom.config}): {n} samples from the same prior (seed {seed}), each sampler at each NFE it can "
         f"reach exactly; learned sampler files run at their own NFE. First row: {n} held-out (val split) sequences scored the "
         f"same way. The teacher's usual row is `{dom.teacher_sampler[0]}` at {dom.teacher_sampler[1]} NFE.", ""]
    for key in _metric_keys(rows, dom):
        d = info.get(key, ("", ""))[0]
        s += [f"### `{key}`" + (f" ({d} better)" if d in ("lower", "higher") else (f" ({d})" if d else "")), "",
              "| method | " + " | ".join(f"NFE {k}" for k in nf) + " |", "|---" * (len(nf) + 1) + "|",
              f"| {held['method']} | " + " | ".join(f"{held.get('m_' + key, float('nan')):.4g}" for _ in nf) + " |"]
        for m in methods:
            cells = []
            for k in nf:
                r = next((r for r in rows[1:] if r["method"] == m and r["nfe"] == k), None)
                cells.append(f"{r['m_' + key]:.4g}" if r is not None and "m_" + key in r else "-")
            s.append(f"| {m} | " + " | ".join(cells) + " |")
        s.append("")
    s += ["### Wall time (ms per sample)", "", "| method | " + " | ".join(f"NFE {k}" for k in nf) + " |", "|---" * (len(nf) + 1) + "|"]
    for m in methods:
        cells = []
        for k in nf:
            r = next((r for r in rows[1:] if r["method"] == m and r["nfe"] == k), None)
            cells.append(f"{r['ms_per_sample']:.3g}" if r is not None else "-")
        s.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(s) + "\n"


def plot(rows, path: Path, dom) -> Path:
    from .utils import new_figure, save_figure

    keys = [k for k in (dom.primary_metric, "reference_perplexity") if any("m_" + k in r for r in rows)]
    fig, axes = new_figure(1, len(keys), figsize=(5.5 * len(keys), 4.2))
    axes = list(axes) if len(keys) > 1 else [axes]
    held = rows[0]
    for ax, key in zip(axes, keys):
        for m in dict.fromkeys(r["method"] for r in rows[1:]):
            rr = sorted((r for r in rows[1:] if r["method"] == m and "m_" + key in r), key=lambda r: r["nfe"])
            if rr:
                ax.plot([r["nfe"] for r in rr], [r["m_" + key] for r in rr], "-" if len(rr) > 1 else "", marker="o", ms=4, label=m)
        if "m_" + key in held:
            ax.axhline(held["m_" + key], color="k", ls="--", lw=1, label="held-out data")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("NFE")
        ax.set_ylabel(key)
        ax.set_title(f"{dom.name} ({dom.config.get('dataset', '')}): {key}")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
