"""Sampler benchmark: one teacher, the same initial noise, every workbench sampler at a list
of NFEs next to diffusers' schedulers as peers; error to the float64 adaptive reference
solution, the domain metric and wall time; plus per-step bookkeeping cost with a
zero-cost model. Writes CSV, markdown and a PNG plot.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Optional, Union

import torch

from . import api
from .domain import Domain, get_domain
from .losses import Batch, tree_map
from .processes import VPDiscrete
from .runner import REF_TOL, _Float64, generation_batches
from .samplers import SAMPLERS
from .utils import OutputDir, model_kwargs, save_figure, write_json, write_text

PEERS = ("ddim", "dpmsolver_2m", "dpmsolver_3m", "unipc", "deis")


def diffusers_scheduler(name: str, process: VPDiscrete):
    """A diffusers scheduler with the process's exact betas, 'linspace' spacing (the grid
    from timestep N-1 down, then the clean end; 'trailing' for DDIM, whose update assumes
    equal strides) and the default options of each class."""
    import diffusers

    if not isinstance(process, VPDiscrete):
        raise ValueError(f"diffusers peers need a discrete VP process (from_diffusers), got {type(process).__name__}")
    la = process._log_alpha[1:]
    ac = torch.exp(2 * la)
    betas = (1 - ac / torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])).tolist()
    common = dict(num_train_timesteps=process.num_train_timesteps, trained_betas=betas, prediction_type="epsilon", timestep_spacing="linspace")
    if name == "ddim":
        # DDIM steps to t - N/steps, so only 'trailing' (or 'leading') spacing keeps its grid consistent
        return diffusers.DDIMScheduler(**{**common, "timestep_spacing": "trailing"}, set_alpha_to_one=True, clip_sample=False)
    if name == "dpmsolver_2m":
        return diffusers.DPMSolverMultistepScheduler(**common, solver_order=2, algorithm_type="dpmsolver++")
    if name == "dpmsolver_3m":
        return diffusers.DPMSolverMultistepScheduler(**common, solver_order=3, algorithm_type="dpmsolver++")
    if name == "unipc":
        return diffusers.UniPCMultistepScheduler(**common)
    if name == "deis":
        return diffusers.DEISMultistepScheduler(**common)
    raise ValueError(f"unknown peer {name!r}; valid: {', '.join(PEERS)}")


def run_diffusers(name: str, model, process: VPDiscrete, x_T: torch.Tensor, nfe: int, *, mask=None, cond=None,
                  prediction: str = "epsilon") -> tuple[torch.Tensor, int]:
    """Sample with a diffusers scheduler; the model receives the process time of each
    diffusers timestep and its ``prediction`` is converted exactly to epsilon (the
    scheduler's ``prediction_type``). Returns ``(x, nfe)``."""
    import warnings

    sch = diffusers_scheduler(name, process)
    x = x_T
    calls = 0
    kw = model_kwargs(mask, cond)
    with warnings.catch_warnings():  # numpy-2 deprecation warnings inside diffusers' schedulers
        warnings.simplefilter("ignore", DeprecationWarning)
        sch.set_timesteps(nfe)
        for ts in sch.timesteps:
            t = process.t_of_timestep(ts).to(x.dtype).expand(x.shape[0])
            out = model(x, t, **kw)
            if prediction != "epsilon":
                out = process.convert(out.double(), prediction, "epsilon", x.double(), t.double()).to(x.dtype)
            calls += 1
            x = sch.step(out, ts, x).prev_sample
            if mask is not None or process.zero_com:
                x = process.project(x, mask)
    return x, calls


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).flatten(1).pow(2).mean(1).sqrt().mean())


def bench_samplers(domain: Union[str, Domain], *, out_dir, domain_config: Optional[dict] = None, nfes=None,
                   samplers: Union[str, list] = "all", peers=PEERS, n: int = 256, n_ref: int = 256, seed: int = 0,
                   teacher: Optional[str] = None, device="cpu", repeats: int = 1, progress: bool = True, grid: Optional[str] = None) -> dict:
    """Run the sampler benchmark and write ``samplers.csv``, ``samplers.md``, ``samplers.png``
    and ``overhead.json`` under ``out_dir`` (locked for the run, ``manifest.json`` at the end).
    ``progress``: bars with an ETA on stderr for the reference solve and the sampler runs.
    ``nfes=None``: (3, 4, 5, 6, 8, 10, 20), or :data:`~workbench.bench_discrete.DEFAULT_NFES`
    on discrete state. A domain with a discrete process runs
    :func:`~workbench.bench_discrete.bench_discrete` instead (no ODE reference; ``samplers`` may
    then name ``lsd:PATH`` files and ``SAMPLER@CHECKPOINT`` entries; ``peers`` and ``n_ref``
    do not apply). Returns their paths and the rows."""
    dom = get_domain(domain, **(domain_config or {})) if isinstance(domain, str) else domain
    proc = dom.process()
    model = dom.load_teacher(teacher)
    if not getattr(proc, "continuous", True):
        from .bench_discrete import DEFAULT_NFES, bench_discrete

        with OutputDir(out_dir, "bench samplers"):
            return bench_discrete(dom, model, Path(out_dir), nfes=tuple(nfes or DEFAULT_NFES), samplers=samplers, n=n, seed=seed,
                                  device=device, progress=progress)
    nfes = tuple(nfes or (3, 4, 5, 6, 8, 10, 20))
    pred = getattr(model, "prediction", dom.prediction)
    # "all": the training-free samplers; reward-guided ones (SamplerSpec.needs) target another law
    names = sorted(k for k, v in SAMPLERS.items() if not v.needs) if samplers in ("all", None) else list(samplers)
    for s in names:
        if s not in SAMPLERS:
            raise ValueError(f"unknown sampler {s!r}; valid: {', '.join(sorted(SAMPLERS))}")
    with OutputDir(out_dir, "bench samplers"):  # checked and locked before the work; manifest.json at the end
        return _bench_samplers(dom, Path(out_dir), proc, model, pred, names, nfes, peers, n, n_ref, seed, repeats, progress, grid)


def _bench_samplers(dom, out_path, proc, model, pred, names, nfes, peers, n, n_ref, seed, repeats, progress, grid) -> dict:
    from tqdm.auto import tqdm

    from .reference import reference_solve

    gb, gens = next(iter(generation_batches(dom, n, seed, n)))
    n_ref = min(n_ref, n)
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = reference_solve(_Float64(model), proc, gb.x_T[:n_ref].double(), prediction=pred, mask=None if gb.mask is None else gb.mask[:n_ref],
                              cond=tree_map(lambda a: a[:n_ref], gb.cond), rtol=REF_TOL, atol=REF_TOL, progress=progress)
    ref = ref.x if hasattr(ref, "x") else ref
    ref_seconds = time.perf_counter() - t0
    primary = dom.primary_metric
    rows = []
    jobs = [(s, k) for s in names for k in nfes] + [(f"diffusers:{p}", k) for p in peers for k in nfes]
    for name, nfe in tqdm(jobs, desc="bench", disable=not progress, leave=False):
        best = None
        for _ in range(max(1, repeats)):
            gens = [torch.Generator().manual_seed(seed + 10_000 + i) for i in range(n)]
            t1 = time.perf_counter()
            with torch.no_grad():
                if name.startswith("diffusers:"):
                    x, calls = run_diffusers(name.split(":", 1)[1], model, proc, gb.x_T, nfe, mask=gb.mask, cond=gb.cond, prediction=pred)
                    steps = nfe
                else:
                    spec = SAMPLERS[name]
                    steps = spec.steps_for_nfe(nfe)
                    if steps is None:
                        break
                    out = api.run_sampler(model, proc, gb.x_T, sampler=name, steps=steps, prediction=pred, mask=gb.mask, cond=gb.cond,
                                          generator=gens, timesteps=grid)
                    x, calls = out.x, out.nfe
            secs = time.perf_counter() - t1
            best = (x, calls, steps, secs) if best is None or secs < best[3] else best
        if best is None:
            continue
        x, calls, steps, secs = best
        metrics = dom.evaluate(Batch(x=x, mask=gb.mask, cond=gb.cond))
        row = {"method": name, "source": "diffusers" if name.startswith("diffusers:") else "workbench",
               "stochastic": bool(not name.startswith("diffusers:") and SAMPLERS[name].stochastic),
               "nfe": calls, "steps": steps, "error": _rms(x[:n_ref], ref), "ms_per_sample": 1000 * secs / n}
        row.update({f"m_{k}": float(v) for k, v in metrics.items()})
        rows.append(row)
    out = out_path
    csv_path = out / "samplers.csv"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    write_text(csv_path, buf.getvalue())
    overhead = bookkeeping_overhead(proc, gb.x_T, pred)
    write_json(out / "overhead.json", overhead)
    md = markdown_tables(rows, nfes, dom, primary, n, n_ref, ref_seconds, overhead, grid or f"{proc.default_grid} (process default)")
    write_text(out / "samplers.md", md)
    png = plot_rows(rows, out / "samplers.png", dom.name)
    return {"csv": csv_path, "markdown": out / "samplers.md", "plot": png, "rows": rows, "overhead": overhead}


def _pivot(rows, nfes, key, fmt="{:.3g}"):
    methods = list(dict.fromkeys(r["method"] for r in rows))
    label = {r["method"]: r["method"] + (" (stochastic)" if r["stochastic"] else "") for r in rows}
    lines = ["| method | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "|---" * (len(nfes) + 1) + "|"]
    for m in methods:
        cells = []
        for k in nfes:
            r = next((r for r in rows if r["method"] == m and r["nfe"] == k), None)
            cells.append(fmt.format(r[key]) if r is not None and key in r else "-")
        lines.append(f"| {label[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_tables(rows, nfes, dom, primary, n, n_ref, ref_seconds, overhead, grid) -> str:
    best = []
    for k in nfes:
        wb = [r for r in rows if r["nfe"] == k and r["source"] == "workbench" and not r["stochastic"]]
        df = [r for r in rows if r["nfe"] == k and r["source"] == "diffusers"]
        if wb and df:
            a, b = min(wb, key=lambda r: r["error"]), min(df, key=lambda r: r["error"])
            best.append(f"| {k} | {a['method']} | {a['error']:.3g} | {b['method']} | {b['error']:.3g} |")
    s = [f"Domain `{dom.name}` ({dom.config}), {n} samples from the same noise; error = mean per-sample RMS distance to the "
         f"float64 adaptive (dopri5, rtol = atol = {REF_TOL:g}) reference solution of the same teacher ({n_ref} samples, {ref_seconds:.1f} s). "
         f"Workbench samplers use the `{grid}` grid; diffusers peers their own 'linspace' timesteps ('trailing' for DDIM). "
         "'-' = the sampler cannot use exactly that NFE; (stochastic) samplers are not expected to approach the ODE solution.", "",
         "### Error to the reference ODE solution", "", _pivot(rows, nfes, "error"), "",
         "### Best deterministic workbench sampler vs best diffusers scheduler", "",
         "| NFE | workbench | error | diffusers | error |", "|---|---|---|---|---|", *best, ""]
    if primary:
        s += [f"### Domain metric `{primary}`", "", _pivot(rows, nfes, f"m_{primary}"), ""]
    s += ["### Wall time (ms per sample)", "", _pivot(rows, nfes, "ms_per_sample", "{:.3g}"), ""]
    s += ["### Bookkeeping cost per step (zero-cost model)", "", "| workbench | us/step | diffusers | us/step | ratio |", "|---|---|---|---|---|"]
    for r in overhead["pairs"]:
        s.append(f"| {r['workbench']} | {r['workbench_us']:.1f} | {r['diffusers']} | {r['diffusers_us']:.1f} | {r['ratio']:.2f} |")
    return "\n".join(s) + "\n"


def bookkeeping_overhead(process, x_T: torch.Tensor, prediction: str, steps: int = 20, repeats: int = 5) -> dict:
    """Per-step cost of sampler bookkeeping with a zero-cost model (returns zeros), for
    workbench samplers and the diffusers scheduler implementing the same algorithm, on the
    same tensor. Best of ``repeats``."""
    zero = lambda x, t, **kw: torch.zeros_like(x)  # noqa: E731
    # diffusers' DEIS is the log-rho variant: the workbench's ``deis_logrho_2`` (``deis_2`` is the paper's tAB)
    deis = "deis_logrho_2" if "deis_logrho_2" in SAMPLERS else "deis_2"
    pairs = [("euler", "ddim"), ("dpm_solver_pp_2m", "dpmsolver_2m"), ("dpm_solver_pp_3m", "dpmsolver_3m"), ("unipc_2", "unipc"), (deis, "deis")]
    out = []
    for wb, df in pairs:
        if wb not in SAMPLERS:
            continue
        tw, td = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            api.run_sampler(zero, process, x_T, sampler=wb, steps=steps, prediction=prediction)
            tw.append((time.perf_counter() - t0) / steps)
            t0 = time.perf_counter()
            run_diffusers(df, zero, process, x_T, steps)
            td.append((time.perf_counter() - t0) / steps)
        w, d = 1e6 * min(tw), 1e6 * min(td)
        out.append({"workbench": wb, "workbench_us": w, "diffusers": df, "diffusers_us": d, "ratio": w / d})
    return {"tensor_shape": list(x_T.shape), "steps": steps, "pairs": out}


def plot_rows(rows, path: Path, title: str) -> Path:
    from workbench.utils import new_figure

    fig, ax = new_figure(figsize=(7, 4.5))
    for m in dict.fromkeys(r["method"] for r in rows):
        rr = sorted((r for r in rows if r["method"] == m), key=lambda r: r["nfe"])
        ls = "--" if m.startswith("diffusers:") else ("-" if not rr[0]["stochastic"] else ":")
        ax.plot([r["nfe"] for r in rr], [r["error"] for r in rr], ls, marker="o", ms=3, label=m)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel("RMS error to reference ODE solution")
    ax.set_title(f"{title}: samplers vs diffusers peers")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


__all__ = ["bench_samplers", "diffusers_scheduler", "run_diffusers", "bookkeeping_overhead", "PEERS"]
