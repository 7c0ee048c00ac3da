"""Property-targeted generation on QM9, judged by an independent regressor (the table in
``docs/benchmarks.md``, "Molecules: property targets"):

    python -m domains.molecules.bench_property --prop alpha \\
        --guide domains/molecules/checkpoints/regressor_alpha.safetensors \\
        --judge domains/molecules/checkpoints/regressor_alpha_second.safetensors --n 32 --out runs/bench_property.json

EDM's protocol (Hoogeboom et al. 2022, sec. 5.2) separates the model that steers from the one that
judges: its property classifier is trained on the first half of QM9's training split, the
conditional generator on the second. Here the generator is the unconditional teacher steered at
sampling time by a regressor trained on the **first** half (``--guide``: the reward ``-|alpha_hat -
target|`` of :func:`~domains.molecules.property.property_reward` for ``fk_steering`` and
``svdd_sde``), and every row is judged by a regressor trained on the **second** half (``--judge``),
which never guided anything. For each target (by default the 10th and 90th percentiles of the
property on QM9's test split) the rows are: the unguided reverse SDE, Feynman-Kac steering and
SVDD, each at ``--steps`` steps, and ``n`` test molecules. Columns: the judge's mean prediction
and MAE to the target, the guide's MAE (what the sampler optimised: a gap between the two is reward
hacking), and EDM's stability and RDKit validity beside them.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m domains.molecules.bench_property", description=__doc__.split("\n\n")[0])
    ap.add_argument("--prop", default="alpha")
    ap.add_argument("--guide", required=True, help="regressor that steers (trained on the first half)")
    ap.add_argument("--judge", required=True, help="regressor that judges (trained on the second half)")
    ap.add_argument("--teacher", default=None, help="checkpoint (default: the shipped teacher)")
    ap.add_argument("--targets", default="", help="comma-separated property targets (default: test 10th, 90th percentiles)")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--particles", type=int, default=8)
    ap.add_argument("--lmbda", type=float, default=1.0, help="fk_steering potential scale (per property unit)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from workbench.losses import Batch
    from workbench.runner import sample_domain
    from workbench.utils import write_json

    from .data import load_qm9
    from .domain import MoleculesDomain
    from .property import load_regressor, property_reward

    dom = MoleculesDomain()
    net = dom.load_teacher(a.teacher)
    guide, judge = load_regressor(a.guide), load_regressor(a.judge)
    for r, name in ((guide, "--guide"), (judge, "--judge")):
        if r.prop != a.prop:
            raise SystemExit(f"{name} predicts {r.prop!r}, not {a.prop!r}")
    test = load_qm9("test", remove_h=bool(dom.config["remove_h"]))
    y_test = np.asarray(test.properties[a.prop])
    targets = [float(t) for t in a.targets.split(",")] if a.targets else [float(np.percentile(y_test, q)) for q in (10, 90)]
    res = {"prop": a.prop, "guide": a.guide, "judge": a.judge, "n": a.n, "steps": a.steps, "particles": a.particles,
           "lmbda": a.lmbda, "test_mean": float(y_test.mean()), "test_std": float(y_test.std()), "targets": {}}

    def judged(x: Batch, target: float) -> dict:
        with torch.no_grad():
            pj = judge.predict(x.x, x.mask).double()
            pg = guide.predict(x.x, x.mask).double()
        m = dom.evaluate(x)
        ok = torch.isfinite(pj)
        return {"judge_mean": float(pj[ok].mean()), "judge_mae": float((pj[ok] - target).abs().mean()),
                "guide_mae": float((pg[ok] - target).abs().mean()),
                **{k: m[k] for k in ("atom_stable", "mol_stable", "validity", "valid_unique") if k in m}}

    ref = dom.reference_batch(a.n, split="test")
    for target in targets:
        rows = {}
        rows["QM9 test molecules"] = judged(ref, target)
        reward = property_reward(guide, target)
        for label, sampler, opts in (
                ("unguided sde", "sde", {}),
                (f"fk_steering ({a.particles} particles)", "fk_steering",
                 {"reward": reward, "particles": a.particles, "lmbda": a.lmbda, "start": 0.1, "end": 0.9, "every": 0.1}),
                (f"svdd_sde ({a.particles} candidates)", "svdd_sde", {"reward": reward, "n_candidates": a.particles})):
            t0 = time.perf_counter()
            x, info = sample_domain(dom, net, sampler=sampler, steps=a.steps, n=a.n, seed=0, progress=False, options=opts)
            rows[label] = {**judged(x, target), "nfe": info["nfe"], "seconds": time.perf_counter() - t0}
            print(f"target {target:.2f} {label}: " + ", ".join(f"{k}={v:.3g}" for k, v in rows[label].items()), flush=True)
            res["targets"][f"{target:.3f}"] = rows
            write_json(a.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
