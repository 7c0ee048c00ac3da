"""Distil the shipped ``protein_backbone`` teacher with SiD into a K-step generator (the shipped
``checkpoints/sid_student_k{K}.safetensors``) and measure it next to the teacher.

    python -m domains.protein_backbone.distill_sid --out runs/protein_backbone/sid_k8 --steps 2000 --student-steps 8 --teacher-steps 100,200
    python -m domains.protein_backbone.distill_sid --out runs/protein_backbone/sid_k16 --steps 1000 --student-steps 16 --teacher-steps 100,200
    python -m domains.protein_backbone.distill_sid --out runs/protein_backbone/sid_k8 --only eval
    python -m domains.protein_backbone.distill_sid --out runs/my_sid --teacher my_teacher.safetensors --checkpoint runs/my_sid/k8.safetensors

``--teacher`` distils any ``protein_backbone`` teacher checkpoint, on the chain set recorded in
its header (``--data`` overrides it: generation lengths and the novelty reference come from it).

The recipe (:data:`METHOD_OPTIONS`, :data:`TRAIN`) is SiD (Zhou et al. 2024, "Score identity
Distillation") with multistep generation and inference-time noise modulation as in
Proteina-SiD (Xie et al. 2025, "Distilled Protein Backbone Generation"): SiD coefficient
``alpha = 1.0`` (the papers' protein setting), a ``K``-step x0 generator initialised from the
teacher on SiD's default grid (``init_sigma = 2.5``: from ``t = 0.714`` to 0), trained data-free
by :func:`workbench.runner.distill` (the shared loop, resumable from ``--out``; the generator
self-conditions along its own rollouts as at inference) with the noise re-injected between
the steps of its backward-simulation rollouts scaled by ``train_noise_scale = 0.8``, the
scale it is then sampled with (:data:`NOISE_SCALE`;
``workbench.runner.sample_generator(..., noise_scale=0.8)``, ``options.noise_scale=0.8`` on the
``workbench generate`` command line). Measured (16 samples, seed 0, one shared CPU core):
training with scale 1 and sampling with 0.8 or 0.6 shrank the backbones (K = 8, 200 steps:
CA-CA 2.78 / 2.34 A, 53 / 67 clashes); training and sampling at 0.8 kept them at the teacher's
bond length (3.41 A), and starting from ``t = 1`` (``init_sigma=None``) was worse than from
``t = 0.714`` at equal training (outliers 0.911 vs 0.894, 49 vs 39 clashes at scale 1); these
ablations used the first release's linear-head teacher. The shipped K = 8 student (2000
steps, 25 min, from the stage-6 relative-head teacher) at scale 0.8: CA-CA 3.96 A, outlier
fraction 0.807, 3.0 clashes per backbone, vs the teacher's 100-step Euler ODE 3.68 A, 0.461,
6.3 on the same lengths (see ``checkpoints/sid_student_k8_quality.json``). From the stage-4
teacher, 500 and 2000 steps gave outliers 0.802 and 0.781 (14.1 and 14.7 clashes), and one
step of the student fails (``docs/benchmarks.md``).

``train`` copies ``--out/generator.safetensors`` to ``--checkpoint`` (default
``checkpoints/sid_student_k{K}.safetensors``); ``eval`` samples ``--eval-n`` backbones (seed
``--seed``, lengths from the training histogram unless ``--eval-lengths``) with the student
at each ``--noise-scales`` value and with the teacher's Euler ODE at ``--teacher-steps`` steps,
and writes :func:`domains.proteins.metrics.backbone_metrics` of each (via
:meth:`ProteinBackboneDomain.evaluate`) to ``--quality`` (default
``checkpoints/sid_student_k{K}_quality.json``).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from workbench.utils import write_json

from .domain import CHECKPOINT_DIR, DATA_SOURCES, ProteinBackboneDomain

#: SiD options of the shipped students (``method_options`` of :func:`workbench.runner.distill`)
METHOD_OPTIONS = {"alpha": 1.0, "train_noise_scale": 0.8}
#: training settings of the shipped students (on top of SiD's defaults: Adam lr 3e-4,
#: betas (0, 0.999), EMA 0.99)
TRAIN = {"batch_size": 4, "warmup": 200, "schedule": "cosine", "log_every": 10}
#: the inference noise scale the shipped students are measured (and meant to be sampled) with
NOISE_SCALE = 0.8
SUMMARY_KEYS = ("ca_ca_mean", "ca_ca_std", "ca_ca_outlier_fraction", "clashes_mean", "clash_free_fraction", "helix", "strand", "coil",
                "diversity_mean_pairwise_tm", "diversity_cluster_fraction", "novelty_max_tm_mean", "nonfinite_fraction")


def default_checkpoint(student_steps: int) -> Path:
    return CHECKPOINT_DIR / f"sid_student_k{int(student_steps)}.safetensors"


def distill_student(out_dir, *, student_steps: int = 8, steps: int = 500, checkpoint=None, domain_config: Optional[dict] = None,
                    teacher: Optional[str] = None, student: Optional[dict] = None, train: Optional[dict] = None, resume: bool = True,
                    device: str = "cpu", method_options: Optional[dict] = None) -> dict:
    """Run the shipped recipe: :func:`workbench.runner.distill` with ``method="sid"``,
    :data:`METHOD_OPTIONS` (updated by ``method_options``, e.g. ``{"alpha": 1.2}``; plus
    ``student``: backbone sizes of a smaller student) and
    :data:`TRAIN` (updated by ``train``) for ``steps`` steps into ``out_dir``, then copy
    ``out_dir/generator.safetensors`` to ``checkpoint`` (default :func:`default_checkpoint`;
    ``False``: no copy). Returns :func:`~workbench.runner.distill`'s dict plus ``checkpoint``."""
    from workbench.runner import distill

    if int(student_steps) < 1 or int(steps) < 0:
        raise ValueError(f"need student_steps >= 1 and steps >= 0, got {student_steps}, {steps}")
    dom = ProteinBackboneDomain(**(domain_config or {}))
    opts = {**METHOD_OPTIONS, **(method_options or {})}
    if student is not None:
        opts["student"] = dict(student)
    cfg = {**TRAIN, "steps": int(steps), "device": device, **(train or {})}
    res = distill(dom, method="sid", student_steps=int(student_steps), out_dir=out_dir, train=cfg, method_options=opts,
                  teacher=teacher, resume=resume, device=device)
    res["method_options"], res["train"] = opts, cfg
    if checkpoint is not False:
        dst = Path(checkpoint) if checkpoint is not None else default_checkpoint(student_steps)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(res["generator"], dst)
        res["checkpoint"] = str(dst)
    return res


def teacher_domain_config(teacher: Optional[str] = None, data: Optional[str] = None) -> dict:
    """Domain options to distil ``teacher`` with: its checkpoint header's ``data`` (the chain
    set it was trained on, which sets the generation length histogram and the novelty
    reference), overridden by ``data``; ``{}`` for the shipped teacher with no override."""
    cfg: dict = {}
    if teacher is not None:
        from workbench.checkpoint import load_weights

        meta = load_weights(teacher)[1]
        src = (meta.get("config") or {}).get("data")
        if src is not None:
            cfg["data"] = src
    if data is not None:
        cfg["data"] = data
    return cfg


def _summary(m: dict) -> dict:
    return {k: float(m[k]) for k in SUMMARY_KEYS if k in m}


def evaluate_student(generator_path, *, student_steps: int, noise_scales=(1.0, 0.8, 0.6), n: int = 16, seed: int = 0,
                     teacher_steps=(100,), lengths=None, domain_config: Optional[dict] = None, teacher: Optional[str] = None,
                     log=print) -> dict:
    """Metrics of ``n`` samples of the generator at ``generator_path`` (``student_steps``
    steps, each noise scale) and of the teacher's Euler ODE (each of ``teacher_steps``), same
    seeds and lengths. ``domain_config``: the :class:`ProteinBackboneDomain` options the
    student was distilled with (e.g. ``{"data": "ideal"}``; default the real chains);
    ``teacher``: the teacher checkpoint it was distilled from (default the shipped one)."""
    from workbench.runner import load_generator, sample_domain, sample_generator

    dom = ProteinBackboneDomain(**{**(domain_config or {}), **({"lengths": list(lengths)} if lengths else {})})
    gen, meta = load_generator(dom, generator_path)
    out: dict = {"n": n, "seed": seed, "lengths": list(lengths) if lengths else "training histogram", "student_steps": int(student_steps),
                 "generator": {"train_steps": meta.get("steps"), "train_seconds": meta.get("train_seconds"), "options": meta.get("options"),
                               "noise_scale": float(gen.noise_scale)},  # its default at inference (= train_noise_scale)
                 "student": {}, "teacher": {}}
    for s in noise_scales:
        x, info = sample_generator(dom, gen, steps=int(student_steps), n=n, seed=seed, noise_scale=float(s))
        m = {**_summary(dom.evaluate(x)), "nfe": info["nfe"], "seconds": info["seconds"]}
        out["student"][f"noise_scale_{float(s):g}"] = m
        log(f"student K={student_steps} noise_scale={s:g}: " + ", ".join(f"{k}={v:.4g}" for k, v in m.items()))
    teacher_net = dom.load_teacher(teacher)
    for ts in teacher_steps:
        x, info = sample_domain(dom, teacher_net, sampler="euler", steps=int(ts), n=n, seed=seed, progress=False)
        m = {**_summary(dom.evaluate(x)), "nfe": info["nfe"], "seconds": info["seconds"]}
        out["teacher"][f"euler_{int(ts)}"] = m
        log(f"teacher euler {ts}: " + ", ".join(f"{k}={v:.4g}" for k, v in m.items()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m domains.protein_backbone.distill_sid", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="work directory of the distillation run (resumable)")
    ap.add_argument("--steps", type=int, default=500, help="SiD training steps")
    ap.add_argument("--student-steps", type=int, default=8, help="K, the generator's sampling steps")
    ap.add_argument("--only", choices=["train", "eval"], help="run one step (default: both)")
    ap.add_argument("--checkpoint", help="where to copy the generator (default checkpoints/sid_student_k{K}.safetensors)")
    ap.add_argument("--quality", help="quality JSON (default checkpoints/sid_student_k{K}_quality.json)")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--eval-n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise-scales", default="1.0,0.8,0.6")
    ap.add_argument("--teacher-steps", default="100", help="comma-separated Euler step counts of the teacher reference")
    ap.add_argument("--eval-lengths", help="comma-separated lengths (default: the training length histogram)")
    ap.add_argument("--teacher", help="teacher checkpoint to distil (default: the shipped checkpoints/teacher.safetensors)")
    ap.add_argument("--data", choices=DATA_SOURCES, help="training-chain set of the domain (novelty reference and length "
                    "histogram); default: the teacher checkpoint's, else real")
    ap.add_argument("--alpha", type=float, help=f"SiD alpha (training only; default {METHOD_OPTIONS['alpha']})")
    ap.add_argument("--train-noise-scale", type=float,
                    help="noise scale re-injected between steps in training, and the generator's default at inference "
                         f"(training only; default {METHOD_OPTIONS['train_noise_scale']})")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    K = int(args.student_steps)
    ckpt = Path(args.checkpoint) if args.checkpoint else default_checkpoint(K)
    qpath = Path(args.quality) if args.quality else ckpt.with_name(ckpt.stem + "_quality.json")
    command = "python -m domains.protein_backbone.distill_sid " + " ".join(sys.argv[1:] if argv is None else argv)
    steps = [args.only] if args.only else ["train", "eval"]
    dcfg = teacher_domain_config(args.teacher, args.data)
    info = json.loads(qpath.read_text()) if qpath.exists() else {}
    info.update({"torch": torch.__version__, "machine": f"{platform.machine()}, {args.threads} threads"})
    if "train" in steps:
        train = {k: v for k, v in (("batch_size", args.batch_size), ("lr", args.lr)) if v is not None}
        t0 = time.time()
        sid = {k: v for k, v in (("alpha", args.alpha), ("train_noise_scale", args.train_noise_scale)) if v is not None}
        res = distill_student(args.out, student_steps=K, steps=args.steps, checkpoint=ckpt, train=train, resume=not args.no_resume,
                              device=args.device, teacher=args.teacher, domain_config=dcfg, method_options=sid)
        print(f"SiD K={K}: {res['steps']} steps in {time.time() - t0:.0f} s; final loss {res['final_loss']}; wrote {ckpt}")
        info["distill"] = {"command": command, "method": "sid", "student_steps": K, "steps": res["steps"], "method_options": res["method_options"],
                           "train": res["train"], "train_seconds": res["seconds"], "size_bytes": ckpt.stat().st_size}
    if "eval" in steps:
        scales = [float(v) for v in args.noise_scales.split(",")]
        lengths = [int(v) for v in args.eval_lengths.split(",")] if args.eval_lengths else None
        info["quality"] = evaluate_student(ckpt, student_steps=K, noise_scales=scales, n=args.eval_n, seed=args.seed,
                                           teacher_steps=[int(v) for v in args.teacher_steps.split(",")], lengths=lengths,
                                           domain_config=dcfg, teacher=args.teacher)
        info["quality"]["command"] = command
        info["recommended_noise_scale"] = info["quality"]["generator"]["noise_scale"]
    write_json(qpath, info)
    print(f"wrote {qpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
