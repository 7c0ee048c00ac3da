"""The molecules teacher against NFE (the table in ``docs/benchmarks.md``, "Molecules"):

    python -m domains.molecules.bench_teacher --teacher domains/molecules/checkpoints/teacher_egnn.safetensors \\
        --n 128 --out runs/bench_molecules.json --runs sde:1000,sde:250,sde:100,dpm_solver_pp_2m:20,dpm_solver_pp_2m:10 \\
        --students dmd2=domains/molecules/checkpoints/dmd2_student_4step.safetensors:4

Students (``--students LABEL=PATH:STEPS``, distilled generators) are sampled with the same seeds.

``n`` molecules per row (seed 0: molecule ``i`` uses seed ``i`` in every row), sizes from the training
histogram; every row through :meth:`MoleculesDomain.evaluate` with the chemistry metrics (FCD and the
property distances against the first 10,000 test molecules); a reference row of ``n`` QM9 test
molecules through the same metrics. One thread.
"""
from __future__ import annotations

import argparse

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m domains.molecules.bench_teacher", description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default=None, help="checkpoint (default: the shipped teacher)")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--runs", default="sde:1000,sde:250,sde:100,dpm_solver_pp_2m:20,dpm_solver_pp_2m:10",
                    help="comma-separated SAMPLER:STEPS")
    ap.add_argument("--students", default="",
                    help="comma-separated LABEL=PATH:STEPS of distilled generators (workbench distill), e.g. dmd2=runs/g.safetensors:4")
    ap.add_argument("--out", required=True, help="JSON file of the rows (rewritten after each row)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from workbench.runner import load_generator, sample_domain, sample_generator
    from workbench.utils import write_json

    from .domain import MoleculesDomain

    runs = []
    for r in a.runs.split(","):
        name, _, steps = r.partition(":")
        if not steps.isdigit():
            raise SystemExit(f"bad --runs entry {r!r}: expected SAMPLER:STEPS, e.g. sde:1000")
        runs.append((name, int(steps)))
    students = []
    for r in filter(None, a.students.split(",")):
        label, eq, rest = r.partition("=")
        path, colon, steps = rest.rpartition(":")
        if not (eq and colon and path and steps.isdigit()):
            raise SystemExit(f"bad --students entry {r!r}: expected LABEL=PATH:STEPS, e.g. dmd2=runs/g.safetensors:4")
        students.append((label, path, int(steps)))
    dom = MoleculesDomain(chemistry=True, chemistry_reference=10000)
    net = dom.load_teacher(a.teacher)
    res = {"teacher": a.teacher or str(dom.default_teacher_path()), "n": a.n, "seed": 0, "rows": {}}
    res["rows"]["QM9 test molecules (reference)"] = dom.evaluate(dom.reference_batch(a.n, split="test"))
    def record(name: str, x, info: dict) -> None:
        m = dom.evaluate(x)
        m["nfe"] = info["nfe"]
        m["seconds_per_1000"] = 1000 * info["seconds"] / a.n
        res["rows"][name] = m
        print(f"{name}: " + ", ".join(f"{k}={v:.3g}" for k, v in m.items() if k in (
            "atom_stable", "mol_stable", "validity", "valid_unique", "fcd", "seconds_per_1000")), flush=True)
        write_json(a.out, res)

    for sampler, steps in runs:
        record(f"{sampler} {steps}", *sample_domain(dom, net, sampler=sampler, steps=steps, n=a.n, seed=0, progress=False))
    for label, path, steps in students:
        gen, _ = load_generator(dom, path)
        record(f"{label} student, {steps} steps", *sample_generator(dom, gen, steps=steps, n=a.n, seed=0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
