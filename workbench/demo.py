"""``workbench demo``: few-step generation with the shipped teacher in every installed
domain, evaluated against a many-step baseline of the same teacher, with samples,
metrics and plots in one report (``demo/README.md``). A domain steers it through the
:class:`~workbench.domain.Domain` hooks ``demo_configs``, ``demo_n`` and ``demo_n_ref``."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Union

from .domain import available_domains, get_domain
from .runner import generate
from .utils import write_json, write_text

#: (label, sampler, steps): the few-step runs and the many-step baseline of the demo
DEMO_RUNS = (("few-step", "dpm_solver_pp_2m", 5), ("few-step", "unipc_2", 5), ("baseline", "euler", 50))


def run_demo(out_dir: Union[str, Path] = "demo", *, device: str = "cpu", n: int = 0, progress: bool = True) -> Path:
    """Run the demo in every installed domain and write ``out_dir/README.md``."""
    out = Path(out_dir)
    rows, failures = [], []
    t_all = time.time()
    for name in available_domains():
        try:
            base = get_domain(name)
        except Exception as e:  # a broken plugin is reported, not fatal to the others
            failures.append(f"{name}: {type(e).__name__}: {e}")
            continue
        for cfg in base.demo_configs or (dict(base.config),):  # the Domain demo hooks
            dom = get_domain(name, **cfg)
            tag = "_".join([name] + [str(v) for v in cfg.values()]) if cfg else name
            n_dom = n or dom.demo_n
            for label, sampler, steps in DEMO_RUNS:
                run_dir = out / tag / f"{sampler}_{steps}"
                m = generate(dom, sampler=sampler, steps=steps, n=n_dom, seed=0, out_dir=run_dir, device=device,
                             n_ref=dom.demo_n_ref, progress=progress)
                rows.append({"domain": tag, "run": label, "sampler": sampler, "steps": steps, "dir": str(run_dir.relative_to(out)), **m})
    write_json(out / "metrics.json", rows)
    lines = ["# Demo report", "",
             "Few-step sampling with each domain's shipped teacher (DPM-Solver++(2M) and UniPC-2 at 5 NFE) next to a "
             "50-step DDIM baseline of the same teacher, same seeds. Metric names are what they are: `fd_classifier` is a "
             "Frechet distance in the features of a classifier trained in this repository (not FID); `ode_error` is the RMS "
             "distance to the float64 adaptive reference solution from the same noise.", ""]
    for tag in dict.fromkeys(r["domain"] for r in rows):
        rr = [r for r in rows if r["domain"] == tag]
        keys = [k for k in rr[0] if k not in ("domain", "run", "sampler", "steps", "dir")]
        lines += [f"## {tag}", "", "| run | sampler | NFE | " + " | ".join(k for k in keys if k != "nfe") + " |",
                  "|---" * (3 + len(keys) - 1) + "|"]
        for r in rr:
            lines.append(f"| {r['run']} | {r['sampler']} | {r['nfe']} | " + " | ".join(f"{r[k]:.4g}" for k in keys if k != "nfe") + " |")
        lines.append("")
        for r in rr:
            lines.append(f"![{r['sampler']}]({r['dir']}/samples.png)")
        lines.append("")
    if failures:
        lines += ["## Domains that failed to load", ""] + [f"- {f}" for f in failures] + [""]
    lines.append(f"Total time: {time.time() - t_all:.1f} s.")
    path = out / "README.md"
    write_text(path, "\n".join(lines) + "\n")
    if failures:
        raise RuntimeError("some domains failed to load: " + "; ".join(failures))
    return path
