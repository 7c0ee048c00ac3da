"""The shapes teacher against its few-step students (the table in ``docs/benchmarks.md``, "3D shapes"):

    python -m domains.shapes.bench --teacher domains/shapes/checkpoints/teacher.safetensors \\
        --runs euler:100,euler:50,euler:25 \\
        --students mdt_dist=domains/shapes/checkpoints/mdt_dist_2step.safetensors:1,...:2 \\
        --per-family 20 --out runs/bench_shapes.json

Every row draws ``per_family`` shapes of each family (labels fixed, sample ``i`` seeded ``i``:
the same noise in every row) and compares them with a **held-out reference of the same size**:
``per_family`` fresh shapes per family from the same procedural generators under another data
seed (``--ref-seed``, default 1; the teacher trained on seed 0's shapes), ``n_points`` uniform
surface samples each. Metrics (:meth:`ShapesDomain.evaluate` with that reference): 1-NNA, COV
and MMD under Chamfer and exact EMD (on ``eval_emd_points`` points), per family and pooled;
the parameter-recovery fit residual. A ``data`` row runs the same metrics on seed 0's training
shapes (what a perfect memoriser of the training set scores) and a ``noise`` row on Gaussian
clouds (the bad baseline). Wall time: seconds per 1,000 shapes of the sampling alone, one
thread unless ``--threads``.
"""
from __future__ import annotations

import argparse
import time

import torch


def _parse(spec: str, what: str) -> list:
    out = []
    for r in filter(None, spec.split(",")):
        if what == "runs":
            name, _, steps = r.partition(":")
            if not steps.isdigit():
                raise SystemExit(f"bad --runs entry {r!r}: expected SAMPLER:STEPS, e.g. euler:50")
            out.append((name, int(steps)))
        else:
            label, eq, rest = r.partition("=")
            path, colon, steps = rest.rpartition(":")
            if not (eq and colon and path and steps.isdigit()):
                raise SystemExit(f"bad --students entry {r!r}: expected LABEL=PATH:STEPS, e.g. mdt_dist=g.safetensors:2")
            out.append((label, path, int(steps)))
    return out


def reference_batch(dom, per_family: int, seed: int):
    """``per_family`` fresh shapes per family of ``dom``'s families (data seed ``seed``), as a
    state-unit :class:`~workbench.losses.Batch` with labels and true parameters."""
    from workbench.losses import Batch

    from .data import ShapeDataset

    c = dom.config
    ds = ShapeDataset(dom.family_names, n_points=dom.n_points, per_family=per_family, seed=seed, normalize=c["normalize"])
    return Batch(x=ds.points * dom.scale, cond=ds.labels.clone(), extra={"params": ds.params, "param_mask": ds.param_mask})


KEYS = ("1nna_cd", "1nna_emd", "cov_cd", "cov_emd", "mmd_cd", "mmd_emd", "param_fit_rms", "valid_fraction")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m domains.shapes.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default=None, help="checkpoint (default: the shipped teacher)")
    ap.add_argument("--runs", default="euler:100,euler:50,euler:25", help="comma-separated SAMPLER:STEPS of the teacher")
    ap.add_argument("--students", default="", help="comma-separated LABEL=PATH:STEPS of distilled generators")
    ap.add_argument("--per-family", type=int, default=20, help="samples and reference shapes per family")
    ap.add_argument("--ref-seed", type=int, default=1, help="data seed of the held-out reference shapes")
    ap.add_argument("--out", required=True, help="JSON file of the rows (rewritten after each row)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from workbench.losses import Batch
    from workbench.runner import load_generator, sample_domain, sample_generator
    from workbench.utils import write_json

    from .domain import ShapesDomain

    runs, students = _parse(a.runs, "runs"), _parse(a.students, "students")
    dom = ShapesDomain(eval_max=10 ** 6)
    net = dom.load_teacher(a.teacher)
    K = dom.num_classes
    n = K * a.per_family
    labels = torch.arange(K).repeat_interleave(a.per_family)
    ref = reference_batch(dom, a.per_family, a.ref_seed)
    res = {"teacher": a.teacher or str(dom.default_teacher_path()), "per_family": a.per_family, "ref_seed": a.ref_seed,
           "n_points": dom.n_points, "families": list(dom.family_names), "rows": {}}

    def record(name: str, x: Batch, extra: dict) -> None:
        t0 = time.perf_counter()
        m = dom.evaluate(x, reference=ref)
        m.update(extra)
        m["eval_seconds"] = time.perf_counter() - t0
        res["rows"][name] = m
        print(name + ": " + ", ".join(f"{k}={m[k]:.4g}" for k in KEYS + ("nfe", "seconds_per_1000") if k in m), flush=True)
        write_json(a.out, res)

    # what a memoriser of the training shapes scores, and the bad baseline
    train = dom.split("train")
    rows = torch.cat([torch.nonzero(train.labels == f).flatten()[: a.per_family] for f in range(K)])
    record("data: training shapes (seed 0)", Batch(x=train.points[rows, : dom.n_points] * dom.scale, cond=train.labels[rows].clone()), {})
    g = torch.Generator().manual_seed(0)
    record("noise: Gaussian clouds", Batch(x=torch.randn(n, dom.n_points, 3, generator=g) * 0.5, cond=labels.clone()), {})
    for sampler, steps in runs:
        x, info = sample_domain(dom, net, sampler=sampler, steps=steps, n=n, seed=0, cond=labels, progress=False)
        record(f"teacher {sampler} {steps}", x, {"nfe": info["nfe"], "seconds_per_1000": 1000 * info["seconds"] / n})
    for label, path, steps in students:
        gen, _ = load_generator(dom, path)
        x, info = sample_generator(dom, gen, steps=steps, n=n, seed=0, cond=labels)
        record(f"{label} student, {steps} steps", x, {"nfe": info["nfe"], "seconds_per_1000": 1000 * info["seconds"] / n})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
