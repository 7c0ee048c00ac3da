"""Regenerate the shipped toy teachers and measure their quality.

    python -m domains.toy.train_teachers                      # both datasets
    python -m domains.toy.train_teachers --datasets gmm --threads 1

For each dataset this trains the network of :meth:`ToyDomain.build_backbone` with
:func:`workbench.domain.train_teacher` and the domain's ``train_defaults`` (work files under
``--work-dir``/<dataset>), copies ``teacher.safetensors`` to
``domains/toy/checkpoints/<dataset>_mlp.safetensors`` and prints, for deterministic DDIM
(``euler``, ``eta = 0``) samples of the trained teacher and of the exact denoiser from the
same noise: the sliced Wasserstein distance to fresh true samples (``sw``), the mean exact
log-likelihood (``loglik``) next to its true value (``loglik_true``, minus the entropy),
and the RMS distance between the teacher's and the exact model's samples (``rms_to_exact``).
The numbers also go to ``<work-dir>/quality.json``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch


def measure(domain, teacher, *, n: int = 2000, steps=(20, 50), seed: int = 0) -> list[dict]:
    """DDIM samples of ``teacher`` and of the exact model from the same ``n`` noises: metrics per
    (model, steps)."""
    import workbench
    from workbench.losses import Batch

    from .domain import ExactTeacher

    exact = ExactTeacher(domain.exact_model(), domain.process(), masked=domain.dataset == "pointset")
    gb = domain.generation_batch(n, generator=torch.Generator().manual_seed(seed))
    rows = []
    for st in steps:
        outs = {}
        for name, model in (("teacher", teacher), ("exact", exact)):
            t0 = time.time()
            x = workbench.sample(model, domain.process(), gb.x_T, sampler="euler", steps=st, prediction=model.prediction, mask=gb.mask)
            secs = time.time() - t0
            outs[name] = x
            m = domain.evaluate(Batch(x=x, mask=gb.mask))
            row = {"model": name, "sampler": "euler (DDIM)", "steps": st, "seconds": round(secs, 2)}
            row.update({k: m[k] for k in ("sw", "mmd", "loglik", "loglik_true") if k in m})
            rows.append(row)
        diff = (outs["teacher"].double() - outs["exact"].double()).flatten(1)
        rows[-2]["rms_to_exact"] = float(diff.pow(2).mean(1).sqrt().mean())
    return rows


def main(argv=None) -> int:
    from workbench.domain import train_teacher

    from .domain import CHECKPOINT_DIR, DATASETS, ToyDomain

    ap = argparse.ArgumentParser(prog="python -m domains.toy.train_teachers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--work-dir", default="runs/toy_teachers", help="training outputs (state, loss curves, quality.json)")
    ap.add_argument("--steps", type=int, default=None, help="override train_defaults['steps']")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a busy machine)")
    ap.add_argument("--n-eval", type=int, default=2000, help="samples for the quality measurement")
    ap.add_argument("--no-copy", action="store_true", help="do not overwrite the shipped checkpoints")
    ap.add_argument("--eval-only", action="store_true", help="skip training; measure the shipped checkpoints")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    report = {}
    for ds in args.datasets:
        dom = ToyDomain(dataset=ds)
        if not args.eval_only:
            cfg = {"progress": sys.stderr.isatty()}
            if args.steps:
                cfg["steps"] = args.steps
            t0 = time.time()
            res = train_teacher(dom, cfg, work / ds, resume=False)
            secs = time.time() - t0
            src = work / ds / "teacher.safetensors"
            print(f"[{ds}] trained {res.step} steps in {secs:.0f} s, final loss {res.history[-1]['main']:.4f} -> {src}")
            if not args.no_copy:
                dst = dom.default_teacher_path()
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                print(f"[{ds}] copied to {dst} ({dst.stat().st_size / 1e6:.2f} MB)")
            teacher = dom.load_teacher(str(src))
            report[ds] = {"train_seconds": round(secs, 1), "steps": res.step, "final_loss": res.history[-1]["main"]}
        else:
            teacher = dom.load_teacher()
            report[ds] = {}
        rows = measure(dom, teacher, n=args.n_eval)
        report[ds]["quality"] = rows
        print(f"[{ds}] quality ({args.n_eval} samples, same noise for both models):")
        keys = ["model", "steps", "sw", "mmd", "loglik", "loglik_true", "rms_to_exact"]
        print("  " + " | ".join(f"{k:>12s}" for k in keys))
        for r in rows:
            print("  " + " | ".join(f"{r[k]:12.4f}" if isinstance(r.get(k), float) else f"{str(r.get(k, '')):>12s}" for k in keys))
    work.mkdir(parents=True, exist_ok=True)
    (work / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {work / 'quality.json'}; checkpoints in {CHECKPOINT_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
