"""Distil the shipped ``protein_backbone`` teacher with SiD into a K-step generator (the shipped
``checkpoints/sid_student_k{K}.safetensors``) and measure it next to the teacher.

    python -m domains.protein_backbone.distill_sid --out runs/protein_backbone/sid_k8 --steps 2000 --student-steps 8 --teacher-steps 100,200
    python -m domains.protein_backbone.distill_sid --out runs/protein_backbone/sid_k16 --steps 1000 --student-steps 16 --teacher-steps 100,200
    python -m domains.protein_backbone.distill_sid --out runs/protein_backbone/sid_k8 --only eval
    python -m domains.protein_backbone.distill_sid --out runs/my_sid --teacher my_teacher.safetensors --checkpoint runs/my_sid/k8.safetensors

``--teacher`` distils any ``protein_backbone`` teacher checkpoint, on the chain set recorded in
its header (``--data`` overrides it: generation lengths and the novelty reference come from it).

The recipe (:data:`METHOD_OPTIONS`) is Proteina-SiD (Xie et al. 2025, "Distilled Protein
Backbone Generation", arXiv 2510.03095), checked against the authors' first commit d47253e of
``mohammedehab2002/SiD_Protein`` (``run_sid_proteina.sh``, ``training/sid_loss.py``,
``training/sid_utils.py``, ``training/sid_training_loop.py``): SiD (Zhou et al. 2024) with
``alpha = 1.0``; a ``K``-step x0 generator initialised from the teacher on the log grid
``s_k = round(linspace(30, 400, K))``, Proteina time ``tau_k = 1 - 10^(-2 s_k / 400)`` (here
``t = 1 - tau``: 0.708, 0.385, ..., 0.010 for ``K = 8``, then the last x0 is the sample);
every generator input ``x = (1 - tau) gamma eps + tau x0_prev`` with ``x0_prev = 0`` at the
first step (``scale_initial_noise``), trained by backward simulation at ``gamma = 1`` and
sampled at ``gamma = 0.45`` (the authors' README default; "inference-time noise modulation");
generator-loss times ``s ~ U{0..400}``, ``tau = 1 - 10^(-2 s / 400)`` clamped to
``[0.02, 0.98]``; the per-sample loss divided by ``sum |x_g - f_real|`` and by the number of
residues; the fake score trained with Proteina's time law (``Beta(1.9, 1)``, 2 % uniform,
clamped) and its flow-matching loss; generator loss times 100 (``--lsg``) before the gradient
clip at norm 1; generator Adam ``beta1 = 0.9`` (``--g_beta1``), fake score ``beta1 = 0``.

Deviations, all from compute (one shared CPU core instead of the authors' GPUs) or from the
shared training loop: batch 4 instead of 4096, one learning rate (3e-4, cosine with 200 warm-up
steps) for both nets instead of 1e-4 (fake score) / 5e-5 (generator) with warm-restart cosine
schedules, EMA 0.99, no periodic fake-score reset (every 400k images in the authors' loop;
these runs see 8k); the generator's Adam ``beta1 = 0.9`` is recorded as
``SiD.phase_betas``, which the shared loop (:func:`workbench.training.train`, one ``betas``
for every phase) does not read yet, so both nets train with ``(0, 0.999)``. The chain lengths
come from the domain's training-length histogram (the authors draw 50-256 uniformly). The
student self-conditions on its previous x0 along its rollouts (the shared
:func:`~workbench.distill.score_distill.rollout`); the authors' ``generator_step`` passes no
self-conditioning input. The
project's first recipe (uniform grid from ``t = 0.714``, Karras times, ``gamma = 0.8`` on the
re-injected noise only, in training and sampling) is the named variant
``--variant uniform_grid_gamma08`` (:data:`VARIANTS`).

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

#: Proteina-SiD's published recipe (Xie et al. 2025; authors' first commit d47253e of
#: ``mohammedehab2002/SiD_Protein``, ``run_sid_proteina.sh`` and the code it runs): the
#: ``method_options`` of :func:`workbench.runner.distill` for ``method="sid"``
METHOD_OPTIONS = {
    "alpha": 1.0,                      # --alpha 1.0
    "grid": "proteina_log",            # t_steps = round(linspace(t_init, T, K)), tau = 1 - 10^(-2 s / T)
    "t_init": 30, "t_total": 400,      # --t_init 30 --t 400
    "t_sampling": "proteina_log",      # generator loss: s ~ U{0..T}, tau = 1 - 10^(-2 s / T)
    "t_min": 0.02, "t_max": 0.98,      # clamp of both losses' times (tmin default, --tmax 0.98)
    "fake_t_sampling": "proteina_beta",  # fake score: Proteina's Beta(1.9, 1) + 2 % uniform
    "fake_loss": "proteina_fm",        # and its flow-matching loss (compute_fm_loss)
    "normaliser": "per_residue",       # SID_ProteinaLoss.generator_loss: / sum|x_g - y_real| / nres
    "scale_initial_noise": True,       # generator_step: x_t = interpolate(gamma eps, x_prev, t), x_prev = 0 first
    "train_noise_scale": 1.0,          # the training loop calls generator_step without noise_scale
    "sample_noise_scale": 0.45,        # the README's inference gamma
    "generator_betas": (0.9, 0.999),   # --g_beta1 0.9 (the fake score keeps SiD's (0, 0.999))
    "generator_loss_scale": 100.0,     # --lsg 100 (loss_scaling_G), before the gradient clip at norm 1
}
#: named variants (``--variant``): method options that replace parts of :data:`METHOD_OPTIONS`.
#: ``"uniform_grid_gamma08"`` is the project's first recipe (the students shipped before the
#: published recipe): SiD's image-style uniform grid from ``t = 0.714`` (``init_sigma = 2.5``),
#: Karras times, uniform fake-score times with the denoising loss, the mean normaliser, and
#: ``gamma = 0.8`` on the re-injected noise only, in training and sampling.
VARIANTS = {
    "published": {},
    "uniform_grid_gamma08": {"grid": "uniform", "init_sigma": 2.5, "t_sampling": "karras", "fake_t_sampling": "uniform",
                             "fake_loss": "denoising", "normaliser": "mean", "scale_initial_noise": False,
                             "train_noise_scale": 0.8, "sample_noise_scale": None, "generator_betas": None,
                             "generator_loss_scale": 1.0},
}
#: training settings (on top of SiD's defaults in the recipe: Adam lr 3e-4, betas (0, 0.999),
#: EMA 0.99). Not the authors': they train with batch 4096, lr 1e-4 (fake score) / 5e-5
#: (generator) and warm-restart cosine schedules on GPUs; this CPU recipe uses batch 4.
TRAIN = {"batch_size": 4, "warmup": 200, "schedule": "cosine", "log_every": 10}
#: the inference noise scale the students are meant to be sampled with (the published 0.45)
NOISE_SCALE = METHOD_OPTIONS["sample_noise_scale"]
SUMMARY_KEYS = ("ca_ca_mean", "ca_ca_std", "ca_ca_outlier_fraction", "clashes_mean", "clash_free_fraction", "dssp_helix", "dssp_strand",
                "dssp_helix_runs7", "dssp_strand_runs3", "helical_right", "helical_left", "handedness_ratio", "rg_ratio_mean",
                "helix", "strand", "coil", "diversity_mean_pairwise_tm", "diversity_cluster_fraction", "novelty_max_tm_mean",
                "nonfinite_fraction")


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


def evaluate_student(generator_path, *, student_steps: int, noise_scales=(1.0, 0.8, 0.6, 0.45), n: int = 16, seed: int = 0,
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
    # the spec records Proteina-SiD's noise modulation form (every noise term scaled)
    gen.scale_initial_noise = bool((meta.get("spec") or {}).get("scale_initial_noise", False))
    out: dict = {"n": n, "seed": seed, "lengths": list(lengths) if lengths else "training histogram", "student_steps": int(student_steps),
                 "generator": {"train_steps": meta.get("steps"), "train_seconds": meta.get("train_seconds"), "options": meta.get("options"),
                               "noise_scale": float(gen.noise_scale),  # its default at inference
                               "scale_initial_noise": gen.scale_initial_noise},
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
    ap.add_argument("--noise-scales", default="1.0,0.8,0.6,0.45")
    ap.add_argument("--teacher-steps", default="100", help="comma-separated Euler step counts of the teacher reference")
    ap.add_argument("--eval-lengths", help="comma-separated lengths or ranges, e.g. 80-100 (default: the training length histogram)")
    ap.add_argument("--teacher", help="teacher checkpoint to distil (default: the shipped checkpoints/teacher.safetensors)")
    ap.add_argument("--data", choices=DATA_SOURCES, help="training-chain set of the domain (novelty reference and length "
                    "histogram); default: the teacher checkpoint's, else real")
    ap.add_argument("--alpha", type=float, help=f"SiD alpha (training only; default {METHOD_OPTIONS['alpha']})")
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="published",
                    help="recipe: the published Proteina-SiD one (default) or a named project variant (training only)")
    ap.add_argument("--train-noise-scale", type=float,
                    help=f"gamma of the backward-simulation rollouts in training (training only; default {METHOD_OPTIONS['train_noise_scale']})")
    ap.add_argument("--sample-noise-scale", type=float,
                    help=f"the generator's default inference gamma (training only; default {METHOD_OPTIONS['sample_noise_scale']})")
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
        sid = {**VARIANTS[args.variant], **{k: v for k, v in (("alpha", args.alpha), ("train_noise_scale", args.train_noise_scale),
                                                             ("sample_noise_scale", args.sample_noise_scale)) if v is not None}}
        res = distill_student(args.out, student_steps=K, steps=args.steps, checkpoint=ckpt, train=train, resume=not args.no_resume,
                              device=args.device, teacher=args.teacher, domain_config=dcfg, method_options=sid)
        print(f"SiD K={K}: {res['steps']} steps in {time.time() - t0:.0f} s; final loss {res['final_loss']}; wrote {ckpt}")
        info["distill"] = {"command": command, "method": "sid", "variant": args.variant, "student_steps": K, "steps": res["steps"], "method_options": res["method_options"],
                           "train": res["train"], "train_seconds": res["seconds"], "size_bytes": ckpt.stat().st_size}
    if "eval" in steps:
        scales = [float(v) for v in args.noise_scales.split(",")]
        from .train import parse_lengths

        lengths = parse_lengths(args.eval_lengths) if args.eval_lengths else None
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
