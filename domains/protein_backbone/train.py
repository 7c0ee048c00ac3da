"""Train the shipped ``protein_backbone`` teacher and measure its samples.

    python -m domains.protein_backbone.train                     # train + eval
    python -m domains.protein_backbone.train --only eval         # evaluate the shipped teacher

``train`` runs :func:`workbench.domain.train_teacher` (the shared loop with the domain's
objective: flow matching with self-conditioning; resumable from ``--work-dir``) and copies
the EMA weights to ``checkpoints/teacher.safetensors``. ``eval`` samples ``--eval-n``
backbones of lengths ``--eval-lengths`` with ``--eval-steps``-step Euler (the ODE) and with
the noise-scaled SDE (``sde``, ``temperature`` ``--temperature``; Proteina's low-temperature
sampling) and writes ``checkpoints/teacher_quality.json`` with
:func:`domains.proteins.metrics.backbone_metrics` of both, the training loss curve summary and
the same metrics of real held-out chains cropped to the same lengths (the reference).
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

from workbench.utils import per_sample_generators, write_json

from .domain import CHECKPOINT_DIR, SCALE, ProteinBackboneDomain
from .nets import COORD_HEADS


def _fmt(m: dict) -> str:
    keys = ("ca_ca_mean", "ca_ca_outlier_fraction", "clashes_mean", "dssp_helix", "dssp_strand", "helical_right", "handedness_ratio",
            "rg_ratio_mean", "diversity_n_clusters", "novelty_max_tm_mean", "seconds")
    return ", ".join(f"{k}={m[k]:.4g}" for k in keys if k in m)


#: the teacher's evaluation settings: Euler (the probability-flow ODE) and Proteina's
#: low-temperature SDE (noise scaled, ``temperature`` < 1)
def teacher_runs(temperatures=(0.5,)) -> dict:
    runs = {"euler": ("euler", {})}
    for T in temperatures:
        runs[f"sde_T{T:g}"] = ("sde", {"temperature": float(T), "noise_scale": 1.0})
    return runs


def parse_lengths(text: str) -> list[int]:
    """``"60,70,80-100"`` -> ``[60, 70, 80, 81, ..., 100]`` (a one-line error on bad input)."""
    out: list[int] = []
    for part in str(text).split(","):
        try:
            if "-" in part.strip()[1:]:
                a, b = part.split("-", 1)
                out += list(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"bad length list {text!r}: give comma-separated integers or ranges like 80-100") from None
    if not out or min(out) < 2:
        raise ValueError(f"bad length list {text!r}: lengths must be integers >= 2")
    return out


def evaluate_natives(domain: ProteinBackboneDomain, *, n: Optional[int] = None) -> dict:
    """The same metrics of held-out native chains (val + test of the domain's set, whole chains):
    the reference row of every protein-backbone table."""
    from workbench.losses import Batch

    from .mirror import natives_batch

    chains = domain.chains("val") + domain.chains("test")
    chains = chains[:n] if n else chains
    b = natives_batch(chains, n_max=None, scale=SCALE)
    m = domain.evaluate(Batch(x=b.x, mask=b.mask))
    return {"n": len(chains), "lengths": [len(c) for c in chains], "metrics": m}


def evaluate_teacher(domain: ProteinBackboneDomain, *, n: int = 16, steps: int = 100, temperature: float = 0.5, seed: int = 0,
                     teacher=None, temperatures=None, natives: bool = True, mirror: bool = True, log=print) -> dict:
    """Metrics of ``n`` teacher samples with Euler (ODE) and the noise-scaled SDE at each of
    ``temperatures`` (default ``(temperature,)``), the held-out natives' metrics (``natives``)
    and the mirror test on held-out natives (``mirror``, :func:`~.mirror.mirror_test`)."""
    from workbench.api import run_sampler
    from workbench.losses import Batch

    from .mirror import mirror_test, natives_batch

    net = teacher if teacher is not None else domain.load_teacher()
    proc = domain.process()
    gb = domain.generation_batch(n, generator=per_sample_generators(seed, n))
    res: dict = {"n": n, "steps": steps, "seed": seed, "lengths": [int(v) for v in gb.info["lengths"]]}
    for name, (sampler, opts) in teacher_runs(temperatures or (temperature,)).items():
        t0 = time.time()
        with torch.no_grad():
            out = run_sampler(net, proc, gb.x_T, sampler=sampler, steps=steps, prediction=net.prediction, mask=gb.mask,
                              generator=per_sample_generators(seed + 10_000, n), **opts)
        m = domain.evaluate(Batch(x=out.x, mask=gb.mask))
        m["seconds"] = time.time() - t0
        res[name] = {"sampler": sampler, "options": opts, "metrics": m}
        log(f"{name}: {_fmt(m)}")
    if natives:
        res["natives"] = evaluate_natives(domain)
        log(f"natives: {_fmt(res['natives']['metrics'])}")
    if mirror:
        held = domain.chains("val") + domain.chains("test")
        res["mirror_test"] = mirror_test(net, proc, natives_batch(held, n_max=domain.n_max, scale=SCALE))
        log(f"mirror test: gap {res['mirror_test']['gap']} A at t {res['mirror_test']['times']}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m domains.protein_backbone.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["train", "eval"], help="run one step (default: both)")
    ap.add_argument("--steps", type=int, help="training steps (default: the domain's train_defaults)")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--init", help="start from these weights (a later training stage, e.g. the shipped teacher)")
    ap.add_argument("--init-partial", action="store_true", help="--init may lack modules (they keep their fresh initialisation)")
    ap.add_argument("--coord-head", choices=COORD_HEADS, help="coordinate read-out (default: the domain's, DEFAULT_NET)")
    ap.add_argument("--data", default="globular", choices=["globular", "real", "ideal", "mixed"])
    ap.add_argument("--root", help="user directory of PDB/mmCIF files")
    ap.add_argument("--n-max", type=int, default=128)
    ap.add_argument("--prediction", default="velocity", choices=["x0", "velocity"])
    ap.add_argument("--local-distance-weight", type=float, default=0.0, help="FrameDiff's auxiliary CA pair-distance loss (0: off)")
    ap.add_argument("--out-dir", default=str(CHECKPOINT_DIR))
    ap.add_argument("--work-dir", default="runs/protein_backbone/teacher")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--eval-n", type=int, default=16)
    ap.add_argument("--eval-steps", type=int, default=100)
    ap.add_argument("--eval-lengths", default="60,70,80,90,100", help="comma-separated lengths or ranges (80-100) drawn per sample")
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--temperatures", help="comma-separated SDE temperatures (default: --temperature)")
    ap.add_argument("--eval-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = [args.only] if args.only else ["train", "eval"]
    command = "python -m domains.protein_backbone.train " + " ".join(sys.argv[1:] if argv is None else argv)
    info_path = out / "teacher_quality.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info.update({"torch": torch.__version__, "machine": f"{platform.machine()}, {args.threads} threads"})
    config = {"data": args.data, "n_max": args.n_max, "prediction": args.prediction, "local_distance_weight": args.local_distance_weight}
    if args.root:
        config["root"] = args.root
    if args.coord_head:
        config["net"] = {"coord_head": args.coord_head}
    domain = ProteinBackboneDomain(**config)

    if "train" in steps:
        from workbench.domain import train_teacher

        cfg = {"device": args.device}
        for k in ("steps", "batch_size", "lr"):
            if getattr(args, k) is not None:
                cfg[k] = getattr(args, k)
        t0 = time.time()
        res = train_teacher(domain, cfg, out_dir=args.work_dir, resume=not args.no_resume, init=args.init, init_strict=not args.init_partial)
        seconds = time.time() - t0
        shutil.copyfile(Path(args.work_dir) / "teacher.safetensors", out / "teacher.safetensors")
        curve = [{"step": h["step"], "loss": h["main"]} for h in res.history if "main" in h]
        print(f"teacher: {res.step} steps in {seconds:.0f} s; loss {curve[0]['loss'] if curve else None} -> {curve[-1]['loss'] if curve else None}")
        if args.init and "teacher" in info:  # keep the earlier stages' record
            info.setdefault("previous_stages", []).append(info["teacher"])
        info["teacher"] = {"init": args.init, "steps": res.step, "seconds_this_run": seconds, "train_config": {**domain.train_defaults, **cfg},
                           "domain_config": domain.config, "net": domain.net_config(), "loss_curve": curve, "command": command}
        write_json(info_path, info)

    if "eval" in steps:
        lengths = parse_lengths(args.eval_lengths)
        edom = ProteinBackboneDomain(**{**config, "lengths": lengths})
        teacher = edom.load_teacher(str(out / "teacher.safetensors"))
        temps = [float(v) for v in args.temperatures.split(",")] if args.temperatures else None
        info["quality"] = evaluate_teacher(edom, n=args.eval_n, steps=args.eval_steps, temperature=args.temperature, teacher=teacher,
                                           temperatures=temps, seed=args.eval_seed)
        info["quality"]["command"] = command
    write_json(info_path, info)
    print(f"wrote {info_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
