"""Regenerate the shipped ``images`` checkpoints and measure their quality.

    python -m domains.images.train_teachers --dataset digits
    python -m domains.images.train_teachers --dataset fashion_mnist   # needs dataset-fashion-mnist

Steps (``--only`` picks one): ``classifier`` trains the metric classifier
(``<dataset>_classifier.safetensors``); ``unet`` trains the teacher with the shared loop
(:func:`workbench.domain.train_teacher`, the domain's ``train_defaults``; resumable from
``--work-dir``) and copies its EMA weights to ``<dataset>_unet.safetensors``; ``eval``
samples the teacher with 50-step deterministic DDIM (``euler``, ``eta = 0``) and writes
``<dataset>_quality.json``: fd_classifier / precision / recall / class_accuracy of the
samples against the test split, next to the same metrics of real held-out (val) images,
the floor.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from workbench.losses import Batch
from workbench.utils import per_sample_generators, write_json

from .domain import CHECKPOINT_DIR, ImagesDomain

EVAL_N = {"digits": 180, "fashion_mnist": 500}
EVAL_SEEDS = {"digits": 3, "fashion_mnist": 1}


def _fmt(m: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(m.items()))


def evaluate_teacher(domain: ImagesDomain, *, n: int, steps: int = 50, seeds=(0, 1, 2), log=print) -> dict:
    """Quality of the teacher's ``steps``-step DDIM samples (``n`` per seed block, balanced
    labels / null label) vs the test split, and of ``n`` real val images (the floor)."""
    from workbench import sample

    net = domain.load_teacher()
    proc = domain.process()
    res: dict = {"n": n, "sampler": "euler (deterministic DDIM)", "steps": steps, "runs": {},
                 "reference": f"test split ({min(len(domain.train_data('test')), int(domain.config.get('max_reference', 2000)))} images)"}
    for mode, label in (("conditional", None), ("unconditional", 10)):
        runs = []
        for s in seeds:
            gb = domain.generation_batch(n, generator=per_sample_generators(10_000 * s, n), cond=label)
            t0 = time.time()
            x = sample(net, proc, gb.x_T, sampler="euler", steps=steps, prediction=net.prediction, cond=gb.cond)
            m = domain.evaluate(Batch(x=x, cond=gb.cond))
            m["seconds"] = time.time() - t0
            runs.append(m)
            log(f"teacher {mode} seed block {s}: {_fmt(m)}")
        res["runs"][mode] = runs
        keys = sorted({k for r in runs for k in r})
        res[mode] = {}
        for k in keys:
            v = torch.tensor([r[k] for r in runs], dtype=torch.float64)
            res[mode][k] = {"mean": float(v.mean()), "std": float(v.std()) if len(v) > 1 else None}
    val = domain.reference_batch(n, split="val")
    res["floor_val_vs_test"] = domain.evaluate(val)
    log(f"floor (real val vs test): {_fmt(res['floor_val_vs_test'])}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m domains.images.train_teachers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits", choices=["digits", "fashion_mnist"])
    ap.add_argument("--only", choices=["classifier", "unet", "eval"], help="run one step (default: all three)")
    ap.add_argument("--steps", type=int, help="teacher training steps (default: the domain's train_defaults)")
    ap.add_argument("--classifier-steps", type=int, help="classifier training steps")
    ap.add_argument("--out-dir", default=str(CHECKPOINT_DIR), help="where the checkpoints go")
    ap.add_argument("--work-dir", help="training run folder (state.pt, loss curve); default runs/images/<dataset>")
    ap.add_argument("--no-resume", action="store_true", help="start the teacher from scratch even if --work-dir has a state")
    ap.add_argument("--eval-n", type=int, help="samples per evaluation block")
    ap.add_argument("--eval-steps", type=int, default=50)
    ap.add_argument("--eval-seeds", type=int, help="number of seed blocks of --eval-n samples (digits 3, fashion_mnist 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these small nets on 2 cores)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = [args.only] if args.only else ["classifier", "unet", "eval"]
    command = "python -m domains.images.train_teachers " + " ".join(sys.argv[1:] if argv is None else argv)
    info_path = out / f"{args.dataset}_quality.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info.update({"dataset": args.dataset, "torch": torch.__version__, "machine": f"{platform.machine()}, {args.threads} threads"})

    if "classifier" in steps:
        from .classifier import save_classifier, train_classifier

        model, cinfo = train_classifier(args.dataset, steps=args.classifier_steps)
        save_classifier(model, out / f"{args.dataset}_classifier.safetensors", cinfo)
        print(f"classifier: {_fmt(cinfo)}")
        info["classifier"] = {**cinfo, "command": command}
        write_json(info_path, info)

    domain = ImagesDomain(dataset=args.dataset)  # its config goes into the checkpoint metadata
    if "unet" in steps:
        from workbench.domain import train_teacher

        work = Path(args.work_dir or f"runs/images/{args.dataset}")
        cfg = {"device": args.device}
        if args.steps is not None:
            cfg["steps"] = args.steps
        t0 = time.time()
        res = train_teacher(domain, cfg, out_dir=work, resume=not args.no_resume)
        seconds = time.time() - t0
        shutil.copyfile(work / "teacher.safetensors", out / f"{args.dataset}_unet.safetensors")
        print(f"teacher: {res.step} steps in {seconds:.0f} s, last loss {res.history[-1] if res.history else None}")
        info["teacher"] = {"steps": res.step, "seconds": seconds, "train_config": {**domain.train_defaults, **cfg},
                           "unet": domain.unet_config(), "final_loss": res.history[-1] if res.history else None, "command": command}
        write_json(info_path, info)

    if "eval" in steps:
        domain = ImagesDomain(dataset=args.dataset, classifier=str(out / f"{args.dataset}_classifier.safetensors"))
        teacher = out / f"{args.dataset}_unet.safetensors"
        domain.default_teacher_path = lambda: teacher  # evaluate what was just written
        info["quality"] = evaluate_teacher(domain, n=args.eval_n or EVAL_N[args.dataset], steps=args.eval_steps,
                                           seeds=tuple(range(args.eval_seeds or EVAL_SEEDS[args.dataset])))
    write_json(info_path, info)
    print(f"wrote {info_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
