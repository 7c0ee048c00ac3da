"""``workbench demo``: the few-step headline in every installed domain, in one report.

Per domain configuration (the :class:`~workbench.domain.Domain` hooks ``demo_configs``,
``demo_n``, ``teacher_sampler``, ``shipped_students``, ``demo_fast_samplers``,
``demo_fast_steps``, ``demo_metrics``, ``metric_info``), on the same seeds:

* the shipped teacher at its usual sampler and steps (``teacher_sampler``);
* each shipped distilled student (``shipped_students``) at the steps it was distilled for;
* at each student's NFE (``demo_fast_steps`` where a domain ships none), the training-free
  samplers ``demo_fast_samplers`` on the teacher; the best of them (by the domain's
  ``primary_metric``) is the table's row, the others are listed under it.

``demo/README.md`` has one table per configuration (NFE, seconds per sample, speed-up over
the teacher, the domain's metrics with their direction), the metric definitions, and one
picture per configuration (``comparison.png``: the teacher's, the students' and the best
training-free samples side by side). Folders are ``demo/<domain>[-<config>]/<run>`` with
short run names (``teacher_euler100``, ``sid_8step``, ``dpmpp2m_8``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from .domain import available_domains, get_domain
from .runner import generate
from .utils import new_figure, save_figure, write_json, write_text

#: short names of samplers in folder names
SHORT = {"dpm_solver_pp_2m": "dpmpp2m", "dpm_solver_pp_3m": "dpmpp3m", "dpm_solver_pp_2s": "dpmpp2s", "af3_edm": "af3"}


@dataclass
class DemoRun:
    """One row of a domain's demo table: ``kind`` is ``teacher``, ``student`` or
    ``training-free``; ``name`` is its folder."""

    kind: str
    name: str
    steps: int
    sampler: Optional[str] = None
    generator: Optional[str] = None
    options: dict = field(default_factory=dict)
    description: str = ""


def short_name(sampler: str) -> str:
    return SHORT.get(sampler, sampler.replace("_", ""))


def demo_plan(dom) -> list[DemoRun]:
    """The runs of one domain configuration (module docstring). A shipped student whose file
    is missing is an error (the package is incomplete), not a silent omission."""
    sampler, steps, opts = (tuple(dom.teacher_sampler) + ({},))[:3]
    plan = [DemoRun("teacher", f"teacher_{short_name(sampler)}{steps}", int(steps), sampler=sampler, options=dict(opts),
                    description=f"teacher, {sampler} {steps} steps" + "".join(f", {k} {v}" for k, v in opts.items()))]
    students = tuple(dom.shipped_students())
    for s in students:
        if not Path(s.path).is_file():
            raise FileNotFoundError(f"shipped student {s.name} of domain {dom.name} is missing: {s.path}")
        plan.append(DemoRun("student", s.name, int(s.steps), generator=str(s.path), options=dict(s.options),
                            description=s.description or f"student {s.name}"))
    nfes = sorted({int(s.steps) for s in students}) or [int(v) for v in dom.demo_fast_steps]
    for nfe in nfes:
        for fs in dom.demo_fast_samplers:
            plan.append(DemoRun("training-free", f"{short_name(fs)}_{nfe}", nfe, sampler=fs, description=f"teacher, {fs} {nfe} step{'s' * (nfe > 1)}"))
    return plan


def _direction(dom, metric: str) -> str:
    return (dom.metric_info.get(metric) or ("lower", ""))[0]


def _better(dom, metric: str, a: float, b: float) -> bool:
    """Is value ``a`` of ``metric`` better than ``b`` (NaN is never better)."""
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    return a > b if _direction(dom, metric) == "higher" else a < b


def _arrow(dom, metric: str) -> str:
    d = _direction(dom, metric)
    return " (lower better)" if d == "lower" else " (higher better)" if d == "higher" else f" ({d})"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)


def comparison_figure(tag: str, items: list[tuple[str, Path]], path: Path) -> Optional[Path]:
    """One picture of the runs' ``samples.png`` side by side (None if no run drew one)."""
    import matplotlib.image as mpimg

    items = [(t, p) for t, p in items if p.is_file()]
    if not items:
        return None
    fig, axes = new_figure(1, len(items), figsize=(3.2 * len(items), 3.4), squeeze=False)
    for ax, (title, p) in zip(axes[0], items):
        ax.imshow(mpimg.imread(str(p)))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(tag)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def _warm_up(dom, run: DemoRun, device: str) -> None:
    """Sample one item untimed first, so first-call costs (lazy imports, kernel set-up) are not
    counted in the run's seconds per sample."""
    from .runner import load_generator, sample_domain, sample_generator

    if run.generator is not None:
        gen, _ = load_generator(dom, run.generator, device=device)
        sample_generator(dom, gen, steps=run.steps, n=1, seed=0, device=device, noise_scale=run.options.get("noise_scale"))
    else:
        sample_domain(dom, dom.load_teacher(device=device), sampler=run.sampler, steps=run.steps, n=1, seed=0, device=device,
                      options=run.options or None, progress=False)


def run_domain_demo(name: str, cfg: dict, out: Path, tag: str, *, n: int = 0, device: str = "cpu", progress: bool = True) -> dict:
    """Run one configuration's plan; returns ``{"tag", "rows", "others", "figure", "seconds"}``."""
    t0 = time.time()
    dom = get_domain(name, **cfg)
    n_dom = n or dom.demo_n
    primary = dom.primary_metric
    results = []
    for run in demo_plan(dom):
        run_dir = out / tag / run.name
        if progress:
            print(f"demo: {tag}/{run.name} ({run.description}, n={n_dom})", flush=True)
        kw = dict(sampler=run.sampler or "euler", steps=run.steps, seed=0, device=device, options=run.options or None,
                  generator=run.generator)
        _warm_up(dom, run, device)
        m = generate(dom, n=n_dom, out_dir=run_dir, progress=progress, **kw)
        results.append((run, m))
    teacher_sps = results[0][1]["seconds_per_sample"]
    rows, others = [], []
    for run, m in results:
        if run.kind != "training-free":
            rows.append((run, m))
    for nfe in sorted({r.steps for r, _ in results if r.kind == "training-free"}):
        group = [(r, m) for r, m in results if r.kind == "training-free" and r.steps == nfe]
        best = group[0]
        for r, m in group[1:]:
            if primary and _better(dom, primary, float(m.get(primary, math.nan)), float(best[1].get(primary, math.nan))):
                best = (r, m)
        rows.append(best)
        others += [(r, m) for r, m in group if r is not best[0]]
    table = []
    for run, m in rows:
        table.append({"run": run.name, "kind": run.kind, "description": run.description, "nfe": m["nfe"],
                      "seconds_per_sample": m["seconds_per_sample"], "speedup": teacher_sps / max(m["seconds_per_sample"], 1e-12),
                      "metrics": m, "dir": f"{tag}/{run.name}"})
    figure = comparison_figure(tag, [(f"{r.name} ({m['nfe']:g} NFE)", out / tag / r.name / "samples.png") for r, m in rows],
                               out / tag / "comparison.png")
    return {"tag": tag, "domain": dom, "rows": table,
            "others": [{"run": r.name, "nfe": m["nfe"], primary: m.get(primary)} for r, m in others],
            "figure": figure, "seconds": time.time() - t0}


def _section(res: dict, out: Path) -> list[str]:
    dom = res["domain"]
    metrics = list(dom.demo_metrics or ((dom.primary_metric,) if dom.primary_metric else ()))
    metrics = [k for k in metrics if any(k in r["metrics"] for r in res["rows"])]
    head = ["run", "what", "NFE", "s / sample", "speed-up"] + [f"{k}{_arrow(dom, k)}" for k in metrics]
    lines = [f"## {res['tag']}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in res["rows"]:
        cells = [f"`{r['run']}`", r["description"], _fmt(r["nfe"]), f"{r['seconds_per_sample']:.3g}", f"{r['speedup']:.1f}x"]
        cells += [_fmt(r["metrics"].get(k, "-")) for k in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if res["others"]:
        p = dom.primary_metric
        lines.append("Other training-free samplers tried at the same NFE (not the best by "
                     f"`{p}`): " + ", ".join(f"`{o['run']}` {_fmt(o.get(p))}" for o in res["others"]) + ".")
        lines.append("")
    defs = [(k, dom.metric_info[k]) for k in metrics if k in dom.metric_info]
    if defs:
        lines += ["Metrics:", ""] + [f"- `{k}` ({d}): {text}" for k, (d, text) in defs] + [""]
    lines.append(f"Speed-up: the teacher row's seconds per sample over the row's (wall time on this machine, "
                 f"{res['seconds']:.0f} s for this section).")
    lines.append("")
    if res["figure"] is not None and Path(res["figure"]).is_file():
        lines += [f"![{res['tag']}]({Path(res['figure']).relative_to(out).as_posix()})", ""]
    return lines


def run_demo(out_dir: Union[str, Path] = "demo", *, device: str = "cpu", n: int = 0, progress: bool = True,
             domains: Optional[list] = None) -> Path:
    """Run the demo in every installed domain (or ``domains``) and write ``out_dir/README.md``;
    a domain that fails is reported in the README and raised after the others ran."""
    out = Path(out_dir)
    sections, failures, records, skipped = [], [], [], []
    t_all = time.time()
    for name in (domains or available_domains()):
        try:
            base = get_domain(name)
            if base.demo_skip_reason:
                skipped.append(f"`{name}`: {base.demo_skip_reason}")
                continue
            configs = dict(base.demo_configs) or {"": dict(base.config)}
        except Exception as e:  # a broken plugin is reported, not fatal to the others
            failures.append(f"{name}: {type(e).__name__}: {e}")
            continue
        for cname, cfg in configs.items():
            tag = f"{name}-{cname}" if cname and len(configs) > 1 else name
            try:
                res = run_domain_demo(name, cfg, out, tag, n=n, device=device, progress=progress)
            except Exception as e:
                failures.append(f"{tag}: {type(e).__name__}: {e}")
                continue
            sections += _section(res, out)
            records += [{"domain": tag, **{k: v for k, v in r.items() if k != "metrics"}, **r["metrics"]} for r in res["rows"]]
    write_json(out / "metrics.json", records)
    lines = ["# Demo report", "",
             "Per domain: the shipped teacher at its usual steps, the shipped distilled students at their few steps, "
             "and the best training-free sampler of the same teacher at the students' NFE, all from the same seeds. "
             "Metric names say what they are: `fd_classifier` is a Frechet distance in an in-repo classifier's "
             "features, not FID. Raw numbers: `metrics.json`; samples, metrics and a report per run in each run's folder.", ""]
    lines += sections
    if skipped:
        lines += ["## Domains not in the demo", ""] + [f"- {f}" for f in skipped] + [""]
    if failures:
        lines += ["## Domains that failed", ""] + [f"- {f}" for f in failures] + [""]
    lines.append(f"Total time: {time.time() - t_all:.1f} s.")
    path = out / "README.md"
    write_text(path, "\n".join(lines) + "\n")
    if failures:
        raise RuntimeError("some domains failed: " + "; ".join(failures))
    return path
