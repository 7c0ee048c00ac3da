"""Distillation benchmark (``workbench bench distill``): every distillation method at 1, 2 and
4 steps next to the teacher with its best training-free sampler at 4, 8 and 50 NFE, on one
domain: the domain metric, wall time per sample, training time. Writes CSV, JSON, markdown and
a PNG plot; resumable (a method whose ``generator.safetensors`` exists is not retrained, so a
killed run continues where it stopped).
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Optional, Union


from .domain import Domain, get_domain
from .runner import distill, load_generator, sample_domain, sample_generator
from .utils import OutputDir, save_figure, write_json, write_text

#: training-free samplers (and grids) tried for the teacher rows; the best per NFE is reported
TEACHER_SAMPLERS = (("euler", None), ("dpm_solver_pp_2m", "uniform_lambda"), ("dpm_solver_pp_3m", "uniform_lambda"),
                    ("unipc_3", "uniform_lambda"), ("deis_3", "uniform_lambda"), ("dpm_solver_pp_3m", None), ("unipc_3", None))


def _lower_is_better(metric: str) -> bool:
    return not any(k in metric for k in ("precision", "recall", "accuracy", "loglik", "designab"))


def teacher_rows(dom: Domain, teacher, *, nfes=(4, 8, 50), n: int, seed: int, batch_size: int, device, metric: str,
                 progress: bool = False) -> list[dict]:
    """For each NFE, every sampler in :data:`TEACHER_SAMPLERS` that hits it exactly; the best
    by ``metric`` is flagged ``best``."""
    from tqdm.auto import tqdm

    from .samplers import get

    rows = []
    bar = tqdm(total=len(nfes) * len(TEACHER_SAMPLERS), desc="teacher rows", disable=not progress, leave=False)
    for k in nfes:
        cands = []
        for name, grid in TEACHER_SAMPLERS:
            bar.update(1)
            spec = get(name)
            steps = next((s for s in range(1, k + 1) if spec.nfe(s) == k), None)
            if steps is None:
                continue
            x, info = sample_domain(dom, teacher, sampler=name, steps=steps, n=n, seed=seed, timesteps=grid, batch_size=batch_size,
                                    device=device, progress=False)
            m = {kk: float(v) for kk, v in dom.evaluate(x).items()}
            cands.append({"method": "teacher", "sampler": f"{name}" + (f" ({grid})" if grid else ""), "steps": steps, "nfe": info["nfe"],
                          "metric": m.get(metric, math.nan), "ms_per_sample": 1e3 * info["seconds"] / n, "train_seconds": 0.0,
                          "metrics": m})
        if not cands:
            continue
        lib = _lower_is_better(metric)
        best = min(cands, key=lambda r: r["metric"] if lib else -r["metric"])
        for r in cands:
            r["best"] = r is best
        rows += cands
    bar.close()
    return rows


def setup_seconds(meta: dict) -> float:
    """Seconds a recipe spent before the shared training loop, as it records them in the
    generator's ``info`` (``*_seconds`` numbers and ``round_seconds`` lists: teacher couplings
    of reflow / SlimFlow, SlimFlow's stage-1 reflow, k-rectified rounds). 0 when none."""
    info = meta.get("info") or {}
    total = 0.0
    for k, v in info.items():
        if k.endswith("_seconds"):
            vals = v if isinstance(v, (list, tuple)) else [v]
            total += sum(float(x) for x in vals if isinstance(x, (int, float)) and math.isfinite(float(x)))
    return total


def bench_distill(domain: Union[str, Domain], *, methods: Optional[list] = None, student_steps=(1, 2, 4), teacher_nfes=(4, 8, 50),
                  out_dir: Union[str, Path] = "outputs/bench_distill", train: Optional[dict] = None, method_options: Optional[dict] = None,
                  n: int = 2000, seed: int = 0, batch_size: int = 512, domain_config: Optional[dict] = None, teacher: Optional[str] = None,
                  device="cpu", progress: bool = True) -> dict:
    """Run the benchmark. Each ``(method, K)`` is distilled for ``K`` student steps (one run
    per ``K``, in ``out_dir/runs/<method>_k<K>``) with ``train`` overrides (plus per-method
    ``method_options[method]``) and sampled with ``K`` steps from the same noise as the
    teacher rows. ``out_dir`` is locked for the run (:class:`~workbench.utils.OutputDir`);
    ``progress`` shows a bar over the runs with an ETA, and each run's training bar, on stderr.
    Returns ``{"rows", "csv", "markdown", "plot"}``."""
    from .distill.recipes import available_methods

    dom = get_domain(domain, **(domain_config or {})) if isinstance(domain, str) else domain
    metric = dom.primary_metric
    if not metric:
        raise ValueError(f"bench distill ranks by the domain's primary_metric, and domain {dom.name!r} declares none")
    from .distill.api import METHODS

    methods = list(methods) if methods else [m for m in available_methods() if not METHODS[m].missing(dom)]
    bad = [m for m in methods if m not in available_methods()]
    if bad:
        raise ValueError(f"unknown distillation method(s) {bad}; valid: {', '.join(available_methods())}")
    from tqdm.auto import tqdm

    out = Path(out_dir)
    with OutputDir(out, "bench distill"):  # checked and locked before any work; manifest.json at the end
        t_net = dom.load_teacher(teacher, device=device)
        # the teacher rows are cached too (keyed on what they depend on), so a resumed run goes straight to the students
        key = {"domain": dom.name, "config": dom.config, "teacher": teacher, "nfes": list(teacher_nfes), "n": n, "seed": seed,
               "samplers": [list(s) for s in TEACHER_SAMPLERS]}
        cache = out / "teacher_rows.json"
        cached = json.loads(cache.read_text()) if cache.exists() else None
        if cached is not None and json.loads(json.dumps(key, default=str)) == cached.get("key"):
            rows = cached["rows"]
        else:
            rows = teacher_rows(dom, t_net, nfes=teacher_nfes, n=n, seed=seed, batch_size=batch_size, device=device, metric=metric,
                                progress=progress)
            write_json(cache, {"key": key, "rows": rows})
        jobs = tqdm([(m, K) for m in methods for K in student_steps], desc="bench distill", disable=not progress, dynamic_ncols=True)
        for m, K in jobs:
            jobs.set_postfix_str(f"{m} k={K}")
            run = out / "runs" / f"{m}_k{K}"
            path = run / "generator.safetensors"
            t0 = time.time()
            if not path.exists():
                distill(dom, method=m, student_steps=K, out_dir=run, train={"progress": progress, **(train or {})}, teacher=teacher,
                        method_options=(method_options or {}).get(m), device=device)
            gen, meta = load_generator(dom, path, device=device)
            train_s = float(meta.get("train_seconds", time.time() - t0))
            x, info = sample_generator(dom, gen, steps=K, n=n, seed=seed, batch_size=batch_size, device=device)
            mm = {kk: float(v) for kk, v in dom.evaluate(x).items()}
            rows.append({"method": m, "sampler": f"{m} ({meta['spec']['kind']})", "steps": K, "nfe": info["nfe"], "metric": mm.get(metric, math.nan),
                         "ms_per_sample": 1e3 * info["seconds"] / n, "train_seconds": train_s, "setup_seconds": setup_seconds(meta),
                         "train_steps": int(meta.get("steps", 0)),
                         "metrics": mm, "best": False})
            write_json(out / "rows.json", rows)  # progress survives a kill
        res = write_outputs(rows, out, dom, metric, n)
    return {"rows": rows, **res}


def write_outputs(rows: list, out: Path, dom: Domain, metric: str, n: int) -> dict:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "sampler", "steps", "nfe", metric, "ms_per_sample", "train_seconds", "setup_seconds", "best_teacher"])
    for r in rows:
        w.writerow([r["method"], r["sampler"], r["steps"], r["nfe"], f"{r['metric']:.6g}", f"{r['ms_per_sample']:.4g}",
                    f"{r['train_seconds']:.1f}", f"{r.get('setup_seconds', 0.0):.1f}", int(bool(r.get("best")))])
    csv_path = write_text(out / "distill.csv", buf.getvalue())
    write_json(out / "rows.json", rows)
    md = markdown(rows, dom, metric, n)
    md_path = write_text(out / "distill.md", md)
    png = plot(rows, out / "distill.png", dom, metric)
    return {"csv": str(csv_path), "markdown": str(md_path), "plot": str(png)}


def markdown(rows: list, dom: Domain, metric: str, n: int) -> str:
    best = [r for r in rows if r["method"] == "teacher" and r.get("best")]
    lines = [f"Domain `{dom.name}` ({dom.config}); `{metric}` of {n} samples (same noise for every row; "
             f"{'lower' if _lower_is_better(metric) else 'higher'} is better); wall time per sample on this machine.", "",
             "| generator | steps | NFE | " + metric + " | ms / sample | training (s) | + setup (s) |", "|---|---|---|---|---|---|---|"]
    for r in best:
        lines.append(f"| teacher, {r['sampler']} | {r['steps']} | {r['nfe']} | {r['metric']:.4g} | {r['ms_per_sample']:.3g} | - | - |")
    order = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in rows))}
    for r in sorted((r for r in rows if r["method"] != "teacher"), key=lambda r: (order[r["method"]], r["steps"])):
        setup = r.get("setup_seconds", 0.0)
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['metric']:.4g} | {r['ms_per_sample']:.3g} | "
                     f"{r['train_seconds']:.0f} | {f'{setup:.0f}' if setup else '-'} |")
    return "\n".join(lines) + "\n"


def plot(rows: list, path: Path, dom: Domain, metric: str) -> Path:
    from workbench.utils import new_figure

    fig, ax = new_figure(figsize=(7, 4.5))
    best = sorted((r for r in rows if r["method"] == "teacher" and r.get("best")), key=lambda r: r["nfe"])
    if best:
        ax.plot([r["nfe"] for r in best], [r["metric"] for r in best], "k--", marker="s", label="teacher (best sampler)")
    # 14+ methods: cycle colours (tab20) and markers so no two lines look alike; log y keeps the
    # near-teacher methods apart when one method is far off
    markers = "os^vDP*Xph<>"
    cmap = __import__("matplotlib").colormaps["tab20"]
    for i, m in enumerate(dict.fromkeys(r["method"] for r in rows if r["method"] != "teacher")):
        rr = sorted((r for r in rows if r["method"] == m), key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in rr], [r["metric"] for r in rr], marker=markers[i % len(markers)], ms=4, color=cmap(i % 20),
                label=m)
    ax.set_xscale("log")
    vals = [r["metric"] for r in rows if math.isfinite(r["metric"])]
    if vals and min(vals) > 0 and max(vals) / min(vals) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(metric)
    ax.set_title(f"{dom.name}: distilled generators vs teacher")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


__all__ = ["bench_distill", "setup_seconds", "teacher_rows", "TEACHER_SAMPLERS"]
