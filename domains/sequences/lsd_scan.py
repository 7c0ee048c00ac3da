"""The LSD path-KL objective against a constant power ``c`` of every student step: the scan
behind the table in ``docs/benchmarks.md`` ("Discrete sequences", targets).

    python -m domains.sequences.lsd_scan --dataset text --loss path_kl --coeffs 0.95,1,1.05,1.25,1.5
    python -m domains.sequences.lsd_scan --dataset text --loss token_path_kl --teacher-coeff 1.15 --coeffs 1,1.15,1.3

For each ``c``: the estimated path KL per position (:class:`workbench.distill.lsd.LSDPathKLObjective`,
``--steps`` student steps, ``--teacher-steps`` teacher steps) of the shipped teacher, over
``--batches`` batches of ``--batch`` sequences; batch ``r`` uses prior seed ``r`` and objective
seed ``100 + r`` in every column. Prints mean and standard error.
"""
from __future__ import annotations

import argparse

import torch


def scan(dataset: str, coeffs, *, loss: str = "path_kl", teacher_coeff: float = 1.0, steps: int = 8, teacher_steps: int = 64,
         batches: int = 4, batch: int = 16) -> dict:
    """``{c: (mean, standard error)}`` of the path KL per position (module docstring)."""
    from workbench.distill.lsd import LOSSES, LSDParams, LSDPathKLObjective
    from workbench.domain import get_domain
    from workbench.losses import Batch

    if loss not in LOSSES or loss == "cross_entropy":
        raise ValueError(f"scan needs a path loss; valid: path_kl, token_path_kl (got {loss!r})")
    d = get_domain("sequences", dataset=dataset)
    model = d.load_teacher()
    obj = LSDPathKLObjective(d.process(), teacher_steps, "euler", tokens_only=loss == "token_path_kl", teacher_coeff=teacher_coeff)
    out = {}
    for c in coeffs:
        p = LSDParams(steps)
        p.coeffs.data.fill_(float(c))
        vals = []
        for r in range(batches):
            gb = d.generation_batch(batch, generator=torch.Generator().manual_seed(r))
            with torch.no_grad():
                vals.append(obj({"teacher": model, "sampler": p}, Batch(x=gb.x_T, mask=gb.mask), torch.Generator().manual_seed(100 + r)).detach())
        v = torch.cat(vals).double()
        out[float(c)] = (float(v.mean()), float(v.std() / len(v) ** 0.5))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m domains.sequences.lsd_scan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="text")
    ap.add_argument("--loss", default="path_kl")
    ap.add_argument("--teacher-coeff", type=float, default=1.0)
    ap.add_argument("--coeffs", default="0.95,1,1.05,1.25")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--teacher-steps", type=int, default=64)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = scan(a.dataset, [float(v) for v in a.coeffs.split(",")], loss=a.loss, teacher_coeff=a.teacher_coeff, steps=a.steps,
               teacher_steps=a.teacher_steps, batches=a.batches, batch=a.batch)
    for c, (m, se) in res.items():
        print(f"{a.dataset} {a.loss} teacher_coeff={a.teacher_coeff:g} c={c:g}: path KL / position {m:.4f} +- {se:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
