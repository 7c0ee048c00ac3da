"""Train the shipped structure predictor and measure it.

    python -m domains.structure_prediction.train                 # train + evaluate (defaults)
    python -m domains.structure_prediction.train --only eval     # re-measure the shipped checkpoint

``train`` runs :func:`workbench.domain.train_teacher` (the shared loop, the domain's
``train_defaults`` and AF3 diffusion loss, resumable from ``--work-dir``) and copies the EMA
weights to ``domains/structure_prediction/checkpoints/structure_predictor.safetensors``.
``eval`` folds the held-out test chains (``--eval-max-length`` caps their length for CPU time)
with AF3's sampler at 200 steps (``af3_edm``, AF3 defaults) and with the deterministic ODE at
2-5 steps (``af3_edm`` with ``gamma0 = 0, step_scale_eta = 1``, i.e. Euler on the PF-ODE), all
on AF3's noise schedule, and writes per setting the columns of :mod:`.scoring` (primary:
position-matched TM-score and CA-lDDT; secondary: TM-align's TM-score, RMSD; shape of the
predictions: CA-CA outliers, clashes, Rg vs native) to ``structure_predictor_quality.json``
next to the checkpoint, beside the no-information baselines (an unrelated native chain, an
ideal straight helix) scored the same way.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from workbench.utils import write_json

from .domain import CHECKPOINT_DIR, CHECKPOINT_NAME, StructurePredictionDomain

ODE = {"gamma0": 0.0, "step_scale_eta": 1.0}
EVAL_SETTINGS = [("af3_edm", 200, {}), ("ode", 2, ODE), ("ode", 3, ODE), ("ode", 5, ODE), ("ode", 200, ODE)]


def evaluate_predictor(domain: StructurePredictionDomain, *, max_length: int = 150, n_max: int = 16, seeds=(0,), settings=None,
                       log=print) -> dict:
    """Fold up to ``n_max`` test chains of at most ``max_length`` residues with every setting;
    returns ``{"chains": [...], "settings": {setting: {column: mean, column_std: std, ...,
    "seconds": wall time}}, "baselines": {label: {column: mean}}}`` with the columns of
    :data:`.scoring.COLUMNS` (``tm_score`` = position-matched TM-score, ``tm_align`` = TM-align's)."""
    from .scoring import COLUMNS, baseline_rows, score_prediction

    chains = [c for c in domain.chains("test") if len(c) <= max_length][:n_max]
    if not chains:
        raise ValueError(f"no test chains of at most {max_length} residues")
    seqs = [c.sequence for c in chains]
    res: dict = {"chains": [f"{c.name} ({len(c)} aa)" for c in chains], "settings": {}, "baselines": {}}
    for label, steps, opts in settings or EVAL_SETTINGS:
        per = {k: [] for k in COLUMNS}
        t0 = time.time()
        for seed in seeds:
            preds = domain.predict(seqs, steps=steps, sampler="af3_edm", options=opts, seed=1000 * seed)
            for p, c in zip(preds, chains):
                sc = score_prediction(p.ca, c.ca, c.sequence)
                for k in COLUMNS:
                    per[k].append(sc[k])
        secs = time.time() - t0
        key = f"{label}_{steps}"
        res["settings"][key] = {"sampler": "af3_edm", "steps": steps, "options": opts, "seconds": secs,
                                **{k: float(np.nanmean(v)) for k, v in per.items()},
                                **{f"{k}_std": float(np.nanstd(v)) for k, v in per.items()}}
        log(f"{key}: " + ", ".join(f"{k}={res['settings'][key][k]:.4g}"
                                   for k in ("tm_score", "ca_lddt", "tm_align", "ca_ca_outlier_fraction", "rg_vs_native", "seconds")))
    pool = [c for split in ("test", "val", "train") for c in domain.chains(split)]
    for row in baseline_rows(chains, pool):
        res["baselines"][row["config"]] = {k: v for k, v in row.items() if k != "config"}
        log(f"{row['config']}: tm_score={row['tm_score']:.4g}, ca_lddt={row['ca_lddt']:.4g}, tm_align={row['tm_align']:.4g}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m domains.structure_prediction.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["train", "eval"], help="run one step (default: both)")
    ap.add_argument("--steps", type=int, help="training steps (default: the domain's train_defaults)")
    ap.add_argument("--batch-size", type=int, help="crops per step (default: train_defaults)")
    ap.add_argument("--source", default="real", choices=["real", "ideal", "mixed"])
    ap.add_argument("--designed", help="synthetic pairs file (python -m domains.structure_prediction.designed) mixed into training")
    ap.add_argument("--designed-weight", type=float, default=0.5, help="fraction of training crops from --designed")
    ap.add_argument("--sequence-encoder", default="onehot", choices=["onehot", "plm", "esm"])
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--recycles", type=int, default=1)
    ap.add_argument("--diffusion-samples", type=int, default=4)
    ap.add_argument("--bond-weight", type=float, default=0.0, help="CA-CA bond term weight (AF3 fine-tuning stage: 1)")
    ap.add_argument("--init", help="start from these weights (a later training stage, e.g. the shipped checkpoint)")
    ap.add_argument("--stage", default="train", help="name of this training stage in the quality JSON")
    ap.add_argument("--lr", type=float, help="learning rate (default: train_defaults)")
    ap.add_argument("--out-dir", default=str(CHECKPOINT_DIR), help="where the checkpoint and quality JSON go")
    ap.add_argument("--work-dir", default="runs/structure_prediction", help="training run folder (state.pt, history, loss.png)")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--eval-max-length", type=int, default=150)
    ap.add_argument("--eval-n", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT_NAME
    info_path = out / "structure_predictor_quality.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    command = "python -m domains.structure_prediction.train " + " ".join(sys.argv[1:] if argv is None else argv)
    info.update({"torch": torch.__version__, "machine": f"{platform.machine()}, {args.threads} threads"})
    config = dict(source=args.source, sequence_encoder=args.sequence_encoder, crop=args.crop, recycles=args.recycles,
                  diffusion_samples=args.diffusion_samples, bond_weight=args.bond_weight)
    if args.designed:
        config.update(designed=args.designed, designed_weight=args.designed_weight)
    steps = [args.only] if args.only else ["train", "eval"]

    if "train" in steps:
        from workbench.domain import train_teacher

        domain = StructurePredictionDomain(**config)
        cfg = {"device": args.device}
        if args.steps is not None:
            cfg["steps"] = args.steps
        if args.batch_size is not None:
            cfg["batch_size"] = args.batch_size
        if args.lr is not None:
            cfg["lr"] = args.lr
        work = Path(args.work_dir)
        t0 = time.time()
        res = train_teacher(domain, cfg, out_dir=work, resume=not args.no_resume, init=args.init)
        seconds = time.time() - t0
        tmp = ckpt.with_suffix(".tmp")
        shutil.copyfile(work / "teacher.safetensors", tmp)
        tmp.replace(ckpt)
        print(f"trained {res.step} steps in {seconds:.0f} s; wrote {ckpt} ({ckpt.stat().st_size / 1e6:.2f} MB)")
        info[args.stage] = {"init": args.init, "steps": res.step, "seconds": seconds, "train_config": {**domain.train_defaults, **cfg}, "domain_config": config,
                         "objective": repr(domain.objective()), "history": res.history, "command": command,
                         "parameters": sum(p.numel() for p in res.ema["model"].parameters())}
        write_json(info_path, info)

    if "eval" in steps:
        domain = StructurePredictionDomain(checkpoint=str(ckpt), source=args.source)
        info["eval"] = evaluate_predictor(domain, max_length=args.eval_max_length, n_max=args.eval_n)
        info["eval"]["command"] = command
        write_json(info_path, info)
    print(f"wrote {info_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
