"""Protein benchmarks as ``workbench bench`` plugin kinds (entry-point group ``workbench.bench``).

    workbench bench structure [out=DIR] [n=10] [max_length=150] [steps=[2,3,5]] [full_steps=200] [seed=0] [repeats=1]
                              [threads=1]
    workbench bench designability [out=DIR] [n=100] [length=100] [n_seq=8] [fold_steps=5] [source=ideal|real|DIR] [fold_sampler=ode|af3]
                                  [batch_size=8] [seed=0] [threads=1]
    workbench bench backbone [out=DIR] [n=16] [lengths=[60,80,100]] [teacher_steps=200] [teacher=PATH]
                             [teacher_sampler=euler|sde] [teacher_temperature=1.0]
                             [generators=PATH,...] [student_steps=[1,8,16]] [noise_scales=[1.0]] [designability=true]
                             [n_seq=8] [fold_steps=5] [seed=0] [reference=true] [threads=1]

``structure``: the ``structure_prediction`` model on held-out test chains of its own split:
AF3's 200-step sampler (``af3_edm`` with AF3's defaults; ``gamma_min`` = 1 A as the domain's
``predict()`` sets it) against the few-step probability-flow ODE (``af3_edm`` with ``gamma0 =
0, step_scale_eta = 1``, i.e. Euler on AF3's schedule; the Protenix-Mini observation that 2-5 ODE
steps lose little accuracy). Primary columns: position-matched TM-score (fixed residue
correspondence) and CA-lDDT; TM-align's TM-score as a labelled secondary column; CA RMSD; the
shape of the predictions (CA-CA outliers, clashes, Rg vs the native's); time per chain; the
relative drop of each few-step row vs the 200-step row, the speed-up, and the acceptance check
"drop <= 5% relative" (on both CA-lDDT and position-matched TM-score). Reference rows scored the
same way: the natives themselves, an unrelated native chain and an ideal straight helix (the
no-information level). Writes ``structure.csv``, ``structure.json``, ``structure.md`` and
``structure.png``.

``designability``: throughput of the designability pipeline
(:func:`domains.proteins.designability.run_designability`: ProteinMPNN CA-only + the default
folder, the in-repo predictor with the few-step ODE) on ``n`` backbones of ``length`` residues:
procedural ideal backbones (kinds cycling through :data:`domains.proteins.ideal.IDEAL_KINDS`),
real chains cropped to the length, or the structure files of a directory. Reports backbones
per minute, seconds per backbone split into inverse folding / folding / metrics + I/O, and the
designable fraction. Resumable (the pipeline's ``results.jsonl``). Writes
``designability_bench.md`` / ``.json`` next to the pipeline's own report.

``backbone``: the ``protein_backbone`` teacher (Euler, or with ``teacher_sampler=sde`` the
reverse SDE at Proteina's noise-scaling ``teacher_temperature``; ``teacher_steps``) against distilled
generators (``generator.safetensors`` from ``workbench distill domain=protein_backbone
method=sid ...``) at each student step count and noise scale (Xie et al. 2025, multistep SiD
with noise modulation): NFE, wall time per sample, designable fraction of the written PDBs,
diversity, novelty, CA-CA / clash / SSE metrics, wall time per designable sample, and for each
student row the acceptance check "NFE at least 20x fewer and designable fraction, diversity and
novelty each within 10% relative of the teacher's"; plus a reference row of held-out chains of the
teacher's own data set at the same lengths through the same metrics and designability check
(``reference=false`` drops it). Writes ``backbone.csv``, ``backbone.json``,
``backbone.md`` and ``backbone.png``.

Options (:class:`StructureBenchOptions`, :class:`DesignabilityBenchOptions`, :class:`BackboneBenchOptions`) are
``key=value`` parsed as in every ``workbench`` command (hydra's grammar; lists are ``[a,b]`` or
``a,b``); ``--help`` lists them with their defaults. Bad options give a one-line error naming the
valid keys (exit code 2).
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from workbench.utils import write_json, write_text

#: acceptance tolerances (relative) of the three benchmarks
STRUCTURE_TOL = 0.05
BACKBONE_NFE_FACTOR = 20.0
BACKBONE_TOL = 0.10
#: teacher samplers of ``bench backbone``: the probability-flow ODE, or the reverse SDE with
#: Proteina's noise scaling (``teacher_temperature`` < 1: low-temperature sampling)
TEACHER_SAMPLERS = ("euler", "sde")


# --------------------------------------------------------------------------------------------
# options: one dataclass per kind, parsed as every ``workbench`` command (workbench.cli.parse_options)
# --------------------------------------------------------------------------------------------
def _list(default, help: str):
    return field(default_factory=lambda: list(default), metadata={"help": help})


@dataclass
class StructureBenchOptions:
    """Options of ``workbench bench structure``."""

    out: str = field(default="outputs/bench_structure", metadata={"help": "output folder"})
    n: int = field(default=10, metadata={"help": "held-out test chains"})
    max_length: int = field(default=150, metadata={"help": "longest chain"})
    steps: List[int] = _list([2, 3, 5], "few-step ODE step counts")
    full_steps: int = field(default=200, metadata={"help": "steps of AF3's sampler (the reference row)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    repeats: int = field(default=1, metadata={"help": "timing repeats"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    progress: bool = field(default=True, metadata={"help": "progress messages"})


@dataclass
class DesignabilityBenchOptions:
    """Options of ``workbench bench designability``."""

    out: str = field(default="outputs/bench_designability", metadata={"help": "output folder"})
    n: int = field(default=100, metadata={"help": "backbones"})
    length: int = field(default=100, metadata={"help": "residues per backbone"})
    n_seq: int = field(default=8, metadata={"help": "sequences designed per backbone"})
    fold_steps: int = field(default=5, metadata={"help": "steps of the folder's sampler"})
    source: str = field(default="ideal", metadata={"help": "ideal, real or a directory of structure files"})
    fold_sampler: str = field(default="ode", metadata={"help": "ode (probability-flow ODE) or af3 (AF3's sampler)"})
    batch_size: int = field(default=8, metadata={"help": "sequences per folding batch"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    progress: bool = field(default=True, metadata={"help": "progress messages"})


@dataclass
class BackboneBenchOptions:
    """Options of ``workbench bench backbone``."""

    out: str = field(default="outputs/bench_backbone", metadata={"help": "output folder"})
    n: int = field(default=16, metadata={"help": "samples per row"})
    lengths: List[int] = _list([60, 80, 100], "chain lengths (each sample draws one)")
    teacher_steps: int = field(default=400, metadata={"help": "teacher sampler steps (Proteina's 400)"})
    teacher: Optional[str] = field(default=None, metadata={"help": "teacher checkpoint (null: the shipped one)"})
    generators: List[str] = _list([], "distilled generator.safetensors files")
    student_steps: List[int] = _list([1, 8, 16], "student step counts")
    noise_scales: List[float] = _list([0.45], "student noise scales (multistep SiD noise modulation; Proteina-SiD: 0.45)")
    designability: bool = field(default=True, metadata={"help": "designability of the written PDBs"})
    n_seq: int = field(default=8, metadata={"help": "sequences designed per backbone"})
    fold_steps: int = field(default=5, metadata={"help": "steps of the folder's sampler"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    batch_size: int = field(default=16, metadata={"help": "samples per network batch"})
    reference: bool = field(default=True, metadata={"help": "a row of held-out chains through the same metrics"})
    teacher_sampler: str = field(default="sde", metadata={"help": "sde (Proteina's noise-scaled reverse SDE, the teacher's default) or euler (ODE)"})
    teacher_temperature: float = field(default=0.45, metadata={"help": "noise scaling gamma of teacher_sampler=sde, in [0, 1] (Proteina: 0.45)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    progress: bool = field(default=True, metadata={"help": "progress messages"})


def parse_options(argv: Sequence[str], options: type, kind: str) -> dict:
    """``key=value`` arguments of ``workbench bench KIND`` -> typed options with defaults
    (:func:`workbench.cli.parse_options` on the dataclass ``options``); bad input raises a
    one-line ValueError naming the valid keys."""
    from workbench.cli import parse_options as parse

    return parse(argv, options, f"bench {kind}")


def _positive(name: str, v, minimum: float = 1) -> None:
    vals = v if isinstance(v, (list, tuple)) else [v]
    for x in vals:
        if x is None or x < minimum:
            raise ValueError(f"{name} must be >= {minimum:g}, got {v!r}")


def _run_main(kind: str, argv, options: type, what: str, fn: Callable[[dict], str]) -> int:
    from workbench.cli import run_plugin_command

    doc = "\n\n".join(p for p in __doc__.split("\n\n") if p.startswith(f"``{kind}``"))  # the kind's paragraph
    return run_plugin_command(f"bench {kind}", argv, options, fn, what=what, doc=doc)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _fmt(x, fmt: str = "{:.3f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    if isinstance(x, bool):
        return "yes" if x else "no"
    return fmt.format(x) if isinstance(x, (int, float)) else str(x)


def _yes_no(x) -> str:
    return "n/a" if x is None else ("yes" if x else "no")


def _clean(obj):
    """JSON-safe copy: non-finite floats become the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def _write_csv(path: Path, rows: list[dict], columns: Sequence[str]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return write_text(path, buf.getvalue())


def _machine() -> str:
    import os
    import platform

    try:
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        load = "n/a"
    return (f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} cores, torch threads "
            f"{torch.get_num_threads()}, load average {load} (at the end of the run)")


# --------------------------------------------------------------------------------------------
# acceptance logic (pure functions)
# --------------------------------------------------------------------------------------------
def relative_change(value: Optional[float], reference: Optional[float], *, higher_is_better: bool = True) -> Optional[float]:
    """Relative *worsening* of ``value`` vs ``reference``: ``(ref - v) / |ref|`` when higher is
    better (a drop), ``(v - ref) / |ref|`` when lower is better (an increase); negative means
    ``value`` is better. ``None`` if either is missing/non-finite; ``0`` if both are 0, ``inf``
    if the reference is 0 and ``value`` is worse, ``-inf`` if better."""
    if value is None or reference is None:
        return None
    v, r = float(value), float(reference)
    if not (math.isfinite(v) and math.isfinite(r)):
        return None
    worse = (r - v) if higher_is_better else (v - r)
    if r == 0.0:
        return 0.0 if worse == 0 else (math.inf if worse > 0 else -math.inf)
    return worse / abs(r)


def structure_acceptance(rows: list[dict], *, tol: float = STRUCTURE_TOL) -> list[dict]:
    """Fill in the comparison columns of the structure benchmark. ``rows[0]`` is the reference
    (the 200-step AF3 sampler); every row gets ``lddt_drop`` / ``tm_drop`` (relative drop of mean
    CA-lDDT / TM-score vs the reference), ``rmsd_increase`` (relative), ``speedup`` (reference
    seconds per chain / the row's) and ``accept`` = both drops <= ``tol`` (``None`` for the
    reference row itself). Returns the same list (rows are updated in place)."""
    if not rows:
        return rows
    ref = rows[0]
    for i, r in enumerate(rows):
        r["lddt_drop"] = relative_change(r.get("ca_lddt"), ref.get("ca_lddt"), higher_is_better=True)
        r["tm_drop"] = relative_change(r.get("tm_score"), ref.get("tm_score"), higher_is_better=True)
        r["rmsd_increase"] = relative_change(r.get("rmsd"), ref.get("rmsd"), higher_is_better=False)
        s, s0 = r.get("seconds_per_chain"), ref.get("seconds_per_chain")
        r["speedup"] = (s0 / s) if (s and s0 and s > 0) else None
        if i == 0:
            r["accept"] = None
        elif r["lddt_drop"] is None or r["tm_drop"] is None:
            r["accept"] = False
        else:
            r["accept"] = bool(r["lddt_drop"] <= tol and r["tm_drop"] <= tol)
    return rows


#: backbone acceptance metrics: row key -> higher is better
#: metric -> True (higher is better: only a drop counts), False (lower is better: only a rise
#: counts) or None (a property of the distribution, e.g. helix content: a change either way
#: counts); each must stay within ``BACKBONE_TOL`` relative of the teacher's
BACKBONE_CRITERIA = {"designable_fraction": True, "diversity_cluster_fraction": True, "novelty_max_tm_mean": False,
                     "dssp_helix": None, "dssp_strand": None, "rg_ratio_mean": None}


def backbone_acceptance(teacher: dict, student: dict, *, nfe_factor: float = BACKBONE_NFE_FACTOR,
                        tol: float = BACKBONE_TOL, designable_key: str = "designable_fraction") -> dict:
    """The student-vs-teacher acceptance check of the backbone benchmark:

    * ``nfe_ratio = teacher NFE / student NFE`` must be ``>= nfe_factor`` (20x fewer);
    * designable fraction (higher is better), diversity (``diversity_cluster_fraction``: TM-score
      clusters at 0.5 per sample, higher = more diverse) and novelty (``novelty_max_tm_mean``:
      mean max TM-score to training chains, lower = more novel) must each be within ``tol``
      relative of the teacher's; a student that is *better* on one of these meets it (only a
      relative worsening counts: :func:`relative_change`);
    * DSSP helix and strand fractions and the Rg ratio (properties of the distribution, not
      "better" when larger) must be within ``tol`` relative of the teacher's in either direction.

    Returns ``{"nfe_ratio", "nfe_ok", "<metric>_rel" (relative worsening), "<metric>_ok",
    "meets"}``; ``meets`` is ``False`` when any criterion fails, else ``None`` when one cannot
    be assessed (a metric is missing, e.g. designability not run, or the teacher has no
    designable sample, so "within 10% of zero" would hold vacuously), else ``True``.

    ``designable_key``: the designability column judged, ``designable_fraction`` (best scRMSD
    < 2 A, the main criterion) or ``designable_fraction_sc_tm`` (best scTM > 0.5, the looser
    secondary one); its keys keep their own name in the output."""
    out: dict = {}
    tn, sn = teacher.get("nfe"), student.get("nfe")
    out["nfe_ratio"] = (float(tn) / float(sn)) if (tn and sn) else None
    out["nfe_ok"] = None if out["nfe_ratio"] is None else bool(out["nfe_ratio"] >= nfe_factor)
    oks = [out["nfe_ok"]]
    criteria = {(designable_key if k == "designable_fraction" else k): h for k, h in BACKBONE_CRITERIA.items()}
    for key, higher in criteria.items():
        if higher is None:  # two-sided: |student - teacher| / |teacher|
            a, b = relative_change(student.get(key), teacher.get(key)), relative_change(student.get(key), teacher.get(key), higher_is_better=False)
            rel = None if a is None else max(a, b)
        else:
            rel = relative_change(student.get(key), teacher.get(key), higher_is_better=higher)
        out[f"{key}_rel"] = rel
        out[f"{key}_ok"] = None if rel is None else bool(rel <= tol)
        oks.append(out[f"{key}_ok"])
    vacuous = teacher.get(designable_key) is not None and float(teacher[designable_key]) <= 0.0
    if vacuous:
        out[f"{designable_key}_ok"] = None
        oks.append(None)
    out["meets"] = False if any(o is False for o in oks) else (None if any(o is None for o in oks) else True)
    return out


# --------------------------------------------------------------------------------------------
# bench structure
# --------------------------------------------------------------------------------------------
def _structure_domain():
    from workbench.domain import get_domain

    try:
        return get_domain("structure_prediction")
    except ValueError:  # source checkout without the entry point
        from domains.structure_prediction import StructurePredictionDomain

        return StructurePredictionDomain()


def bench_structure(out_dir, *, n: int = 10, max_length: int = 150, steps: Sequence[int] = (2, 3, 5), full_steps: int = 200,
                    seed: int = 0, repeats: int = 1, domain=None, progress: bool = True) -> dict:
    """AF3 200-step sampler vs the few-step ODE on the domain's held-out test chains, with the
    no-information baselines scored the same way.

    Columns (:mod:`domains.structure_prediction.scoring`): primary ``tm_score`` (TM-score with
    fixed residue correspondence, the TMscore program's measure) and ``ca_lddt``; secondary
    ``tm_align`` (TM-align's own alignment: not an accuracy measure), ``rmsd``,
    ``gdt_like_frac_2A``; shape of the predictions ``ca_ca_outlier_fraction``,
    ``clashes_per_residue``, ``rg`` and ``rg_vs_native``. Reference rows after the sampler rows:
    the native structures themselves (shape columns of the truth), an unrelated native chain
    (first ``L`` residues of another chain) and an ideal straight alpha-helix
    (:func:`~domains.structure_prediction.scoring.baseline_rows`).

    Args:
        out_dir: where ``structure.{csv,json,md,png}`` go.
        n, max_length: the first ``n`` test chains (the domain's own split, deterministic order)
            of at most ``max_length`` residues.
        steps: few-step ODE step counts (``af3_edm`` with ``gamma0 = 0, step_scale_eta = 1``).
        full_steps: steps of the reference AF3 sampler (``af3_edm`` defaults; ``gamma_min`` =
            1 A as set by :meth:`~domains.structure_prediction.StructurePredictionDomain.predict`).
        seed: chain ``i`` uses seed ``seed + i`` in every row (same initial noise).
        repeats: each row is run ``repeats`` times (the same seeded predictions) and its time is
            the fastest run (less sensitive to other load on a shared machine).
        domain: a ``StructurePredictionDomain`` (default: the shipped model).
    Returns:
        ``{"rows": [...], "chains": [...], "csv", "json", "markdown", "plot"}``; each sampler row
        has the means over chains of every column, ``seconds_per_chain``, ``tm_above_unrelated``
        (its TM-score minus the unrelated-chain baseline's) and the comparison columns of
        :func:`structure_acceptance` (on position-matched TM-score and CA-lDDT); baseline rows
        have ``kind = "baseline"``.
    """
    from domains.proteins.designability import FEW_STEP_ODE
    from domains.structure_prediction.scoring import UNRELATED, baseline_rows, mean_scores, score_prediction, shape_metrics

    _positive("n", n)
    _positive("max_length", max_length, 3)
    _positive("steps", list(steps))
    _positive("full_steps", full_steps)
    _positive("repeats", repeats)
    dom = domain if domain is not None else _structure_domain()
    chains = [c for c in dom.chains("test") if len(c) <= int(max_length)][: int(n)]
    if not chains:
        raise ValueError(f"no structure_prediction test chains of at most max_length={max_length} residues")
    seqs = [c.sequence for c in chains]
    net = dom.teacher()
    dom.predict(seqs[:1], steps=1, options=dict(FEW_STEP_ODE), seed=seed, model=net)  # warm-up (untimed)
    configs = [(f"AF3 af3_edm {int(full_steps)} steps", int(full_steps), None)]
    configs += [(f"ODE {int(k)} steps (gamma0=0, eta=1)", int(k), dict(FEW_STEP_ODE)) for k in steps]
    rows, per_chain = [], []
    for name, k, options in configs:
        times = []
        for _ in range(int(repeats)):
            t0 = time.perf_counter()
            preds = dom.predict(seqs, steps=k, sampler="af3_edm", options=options, seed=int(seed), model=net)
            times.append(time.perf_counter() - t0)
        secs = min(times)
        scored = []
        for c, p in zip(chains, preds):
            sc = score_prediction(p.ca, c.ca, c.sequence)
            scored.append(sc)
            per_chain.append({"config": name, "steps": k, "chain": c.name, "length": len(c), **sc})
        opts_used = {"gamma_min": 1.0 / dom.unit} if options is None else {**options, "gamma_min": 1.0 / dom.unit}
        rows.append({"config": name, "kind": "sampler", "sampler": "af3_edm", "steps": k, "nfe": k,
                     "options": json.dumps(opts_used, sort_keys=True), "n_chains": len(chains), **mean_scores(scored),
                     "seconds_per_chain": secs / len(chains), "seconds_total": secs, "seconds_runs": times})
        _log(progress, f"bench structure: {name}: TM (matched) {rows[-1]['tm_score']:.4f}, lDDT {rows[-1]['ca_lddt']:.4f}, "
                       f"TM-align {rows[-1]['tm_align']:.4f}, CA-CA outliers {rows[-1]['ca_ca_outlier_fraction']:.3f}, "
                       f"{rows[-1]['seconds_per_chain']:.3f} s/chain")
    structure_acceptance(rows)
    # reference rows: the truth itself (its shape columns), then the no-information baselines
    truth = [{**score_prediction(c.ca, c.ca, c.sequence), **shape_metrics(c.ca)} for c in chains]
    refs = [{"config": "native (the true structure)", "kind": "reference", "n_chains": len(chains), **mean_scores(truth)}]
    pool = [c for split in ("test", "val", "train") for c in dom.chains(split)]
    refs += [{**r, "kind": "baseline"} for r in baseline_rows(chains, pool)]
    unrelated = next((r for r in refs if r["config"] == UNRELATED), None)
    for r in rows:
        r["tm_above_unrelated"] = (r["tm_score"] - unrelated["tm_score"]) if unrelated and unrelated["n_chains"] else None
    rows = rows + refs
    out = Path(out_dir)
    cols = ["config", "kind", "sampler", "steps", "nfe", "options", "n_chains", "tm_score", "ca_lddt", "tm_align", "rmsd",
            "gdt_like_frac_2A", "ca_ca_outlier_fraction", "clashes_per_residue", "rg", "rg_vs_native", "seconds_per_chain",
            "seconds_total", "tm_above_unrelated", "lddt_drop", "tm_drop", "rmsd_increase", "speedup", "accept"]
    csv_path = _write_csv(out / "structure.csv", rows, cols)
    info = {"benchmark": "structure", "n": len(chains), "max_length": int(max_length), "steps": [int(k) for k in steps],
            "full_steps": int(full_steps), "seed": int(seed), "repeats": int(repeats), "tolerance": STRUCTURE_TOL,
            "chains": [{"name": c.name, "length": len(c)} for c in chains], "rows": rows, "per_chain": per_chain,
            "model": str(dom.default_teacher_path()), "machine": _machine()}
    json_path = out / "structure.json"
    write_json(json_path, _clean(info))
    png = _plot_structure(rows, out / "structure.png")
    md = _structure_markdown(info)
    md_path = write_text(out / "structure.md", md)
    return {"rows": rows, "chains": info["chains"], "csv": str(csv_path), "json": str(json_path), "markdown": str(md_path),
            "plot": str(png), "text": md}


def _structure_markdown(info: dict) -> str:
    rows = [r for r in info["rows"] if r.get("kind", "sampler") == "sampler"]
    refs = [r for r in info["rows"] if r.get("kind", "sampler") != "sampler"]
    lens = [c["length"] for c in info["chains"]]
    lines = [
        "# Structure prediction: AF3 sampler vs few-step ODE",
        "",
        f"- {info['n']} held-out test chains of the structure_prediction split (length {min(lens)}-{max(lens)}, "
        f"at most {info['max_length']}), seed {info['seed']} (chain i uses seed + i in every row); time per chain: "
        f"the fastest of {info['repeats']} run(s) of all chains (one batch), divided by the number of chains.",
        f"- Model: {info['model']} (the small in-repo AF3-style CA model).",
        "- Reference: `af3_edm` with AF3's defaults (gamma0 0.8, lambda 1.003, eta 1.5, gamma_min 1 A) at "
        f"{info['full_steps']} steps; few-step rows: the probability-flow ODE (`af3_edm` gamma0 = 0, step_scale_eta = 1) on "
        "AF3's noise schedule. NFE = diffusion-module calls (the trunk runs once per chain in every row).",
        "- Primary scores: TM-score with FIXED residue correspondence (residue i <-> i, the TMscore program's measure, "
        "normalised by the true length) and CA-lDDT. TM-align's TM-score finds its own sequence-independent alignment: "
        "a secondary column only, it is not a prediction-accuracy measure (the unrelated-chain baseline scores well on it).",
        "- Shape of the predictions: consecutive CA-CA distances outside 3.8 +- 0.2 A, non-bonded CA pairs closer than "
        "3 A per residue, radius of gyration and its ratio to the native's.",
        "- Baselines, scored the same way: an unrelated native chain (first L residues of another chain, from another "
        "file) and an ideal straight alpha-helix. A predictor whose position-matched TM-score does not clear the "
        "unrelated-chain baseline has no fold-level accuracy.",
        f"- Acceptance: CA-lDDT and position-matched TM-score each drop <= {100 * info['tolerance']:g}% relative to the "
        "reference row.",
        f"- Machine: {info['machine']}.",
        "",
        "| row | NFE | TM-score (position-matched) | CA-lDDT | TM-align (secondary) | RMSD (A) | pred. CA-CA outliers | "
        "pred. clashes / res | pred. Rg (A) | pred. Rg / native | s / chain | TM - unrelated baseline | lDDT drop | "
        "TM drop | speed-up | drop <= 5% |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def cells(r):
        return (f"{_fmt(r.get('tm_score'), '{:.4f}')} | {_fmt(r.get('ca_lddt'), '{:.4f}')} | {_fmt(r.get('tm_align'), '{:.4f}')} | "
                f"{_fmt(r.get('rmsd'), '{:.2f}')} | {_fmt(r.get('ca_ca_outlier_fraction'))} | "
                f"{_fmt(r.get('clashes_per_residue'), '{:.3f}')} | {_fmt(r.get('rg'), '{:.1f}')} | {_fmt(r.get('rg_vs_native'), '{:.2f}')}")

    for r in rows:
        first = r is rows[0]
        pct = lambda x: "-" if first else _fmt(None if x is None else 100 * x, "{:+.1f}%")  # noqa: E731
        lines.append(f"| {r['config']} | {r['nfe']} | {cells(r)} | {r['seconds_per_chain']:.3f} | "
                     f"{_fmt(r.get('tm_above_unrelated'), '{:+.4f}')} | {pct(r['lddt_drop'])} | {pct(r['tm_drop'])} | "
                     f"{'-' if first else _fmt(r['speedup'], '{:.1f}x')} | {'-' if first else _yes_no(r['accept'])} |")
    for r in refs:
        lines.append(f"| {r['config']} ({r['n_chains']} chains) | - | {cells(r)} | - | - | - | - | - | - |")
    lines += ["", "![structure](structure.png)", ""]
    return "\n".join(lines)


def _plot_structure(rows: list[dict], path: Path) -> Path:
    from workbench.utils import new_figure

    from workbench.utils import save_figure

    samp = [r for r in rows if r.get("kind", "sampler") == "sampler"]
    base = [r for r in rows if r.get("kind") == "baseline"]
    ref, few = samp[0], samp[1:]
    fig, axes = new_figure(1, 3, figsize=(13, 3.6))
    nfe = [r["nfe"] for r in few]
    for key, label, mk in (("tm_score", "TM-score (position-matched)", "s"), ("ca_lddt", "CA-lDDT", "o")):
        line = axes[0].plot(nfe, [r[key] for r in few], marker=mk, label=f"ODE {label}")[0]
        axes[0].axhline(ref[key], color=line.get_color(), ls="--", lw=1, label=f"AF3 {ref['nfe']} steps {label}")
        for b, ls in zip(base, (":", "-.")):
            if b.get(key) is not None and np.isfinite(b[key]):
                axes[0].axhline(b[key], color=line.get_color(), ls=ls, lw=0.8, alpha=0.6,
                                label=f"{'unrelated chain' if 'unrelated' in b['config'] else 'straight helix'} {label}")
    axes[0].set_xlabel("NFE (ODE steps)")
    axes[0].set_ylabel("score")
    axes[0].legend(fontsize=6)
    axes[1].bar([str(r["nfe"]) for r in samp], [r["ca_ca_outlier_fraction"] for r in samp], color=["0.5"] + ["C0"] * len(few))
    axes[1].set_xlabel("NFE")
    axes[1].set_ylabel("pred. CA-CA outlier fraction")
    axes[2].bar([str(r["nfe"]) for r in samp], [r["seconds_per_chain"] for r in samp], color=["0.5"] + ["C0"] * len(few))
    axes[2].set_xlabel("NFE")
    axes[2].set_ylabel("seconds per chain")
    axes[2].set_yscale("log")
    fig.suptitle("structure_prediction: AF3 sampler vs few-step ODE (held-out test chains), with no-information baselines",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)




def structure_main(argv: Optional[list[str]] = None) -> int:
    """``workbench bench structure key=value ...``; returns the exit code (2 on bad input)."""
    def run(o):
        res = bench_structure(o["out"], n=o["n"], max_length=o["max_length"], steps=o["steps"], full_steps=o["full_steps"],
                              seed=o["seed"], repeats=o["repeats"], progress=o["progress"])
        return res["text"] + f"\nwrote {res['csv']}, {res['json']}, {res['markdown']}, {res['plot']}"

    return _run_main("structure", argv, StructureBenchOptions, "AF3 200-step sampler vs few-step ODE on held-out test chains", run)


# --------------------------------------------------------------------------------------------
# bench designability
# --------------------------------------------------------------------------------------------
DESIGNABILITY_SOURCES = ("ideal", "real")


def designability_backbones(source: str = "ideal", n: int = 100, length: int = 100, *, seed: int = 0) -> list:
    """The benchmark's input backbones: a list of :class:`~domains.proteins.chain.Chain` (or
    structure file paths for a directory ``source``).

    * ``ideal``: :func:`~domains.proteins.ideal.ideal_chain` of kinds cycling through
      ``IDEAL_KINDS``, each built at ``length`` residues with torsion noise from a generator
      seeded by ``(seed, i)``;
    * ``real``: the real chains of all splits (:func:`~domains.proteins.data.dataset_chains`) of
      at least ``length`` residues, cropped to ``length``: the central window on the first pass
      over the chains, windows at offsets drawn from a ``(seed, i)`` generator on later passes;
    * a directory: its first ``n`` structure files (sorted), used as they are (``length`` is
      ignored).
    """
    _positive("n", n)
    _positive("length", length, 6)
    n, length = int(n), int(length)
    if source == "ideal":
        from .ideal import IDEAL_KINDS, ideal_chain

        out = []
        for i in range(n):
            kind = IDEAL_KINDS[i % len(IDEAL_KINDS)]
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
            out.append(ideal_chain(kind, length, generator=g, name=f"ideal_{kind}_{length}_{i:04d}"))
        return out
    if source == "real":
        from .chain import Chain
        from .data import dataset_chains

        pool = sorted((c for c in dataset_chains("all", source="real") if len(c) >= length), key=lambda c: c.name)
        if not pool:
            raise ValueError(f"no real chains of at least length={length} residues")
        out = []
        for i in range(n):
            c = pool[i % len(pool)]
            if i < len(pool):
                start = (len(c) - length) // 2
            else:
                g = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
                start = int(torch.randint(0, len(c) - length + 1, (1,), generator=g))
            out.append(Chain(name=f"{c.name}_{i:04d}_crop{start}", sequence=c.sequence[start:start + length],
                             coords=c.coords[start:start + length].copy(), source=c.source, meta={"crop_start": start}))
        return out
    p = Path(str(source)).expanduser()
    if p.is_dir():
        from .designability import expand_inputs

        return expand_inputs(p)[:n]
    raise ValueError(f"unknown designability source {source!r}; valid: {', '.join(DESIGNABILITY_SOURCES)} or a directory of "
                     "PDB/mmCIF files")


def _read_jsonl(path: Path) -> dict:
    out: dict = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict) and "key" in r:
                out[r["key"]] = r
    return out


def timed_designability(inputs, out_dir, *, inverse_folder, folder, n_seq: int, batch_size: int = 8, seed: int = 0,
                        progress: bool = True) -> dict:
    """:func:`~domains.proteins.designability.run_designability` plus a timing breakdown of
    the backbones evaluated in *this* run (resumed ones are excluded): ``design_seconds``
    (inverse folding) and ``fold_seconds`` (folding) summed from the pipeline's per-backbone
    records, ``metrics_seconds`` = the run's wall time minus both (scRMSD/scTM, file I/O,
    batching), ``n_new`` and ``wall_seconds``."""
    from .designability import run_designability

    results = Path(out_dir) / "results.jsonl"
    before = _read_jsonl(results)
    t0 = time.perf_counter()
    rep = run_designability(inputs, out_dir, inverse_folder=inverse_folder, folder=folder, n_seq=int(n_seq),
                            batch_size=int(batch_size), seed=int(seed), progress=progress)
    wall = time.perf_counter() - t0
    after = _read_jsonl(results)
    new = [r for k, r in after.items() if r.get("status") == "ok" and before.get(k) != r]
    design = float(sum(r.get("design_seconds", 0.0) for r in new))
    fold = float(sum(r.get("fold_seconds", 0.0) for r in new))
    rep["timing"] = {"n_new": len(new), "wall_seconds": wall, "design_seconds": design, "fold_seconds": fold,
                     "metrics_seconds": max(0.0, wall - design - fold) if new else None}
    return rep


def load_designability_models(fold_steps: Optional[int] = 5, fold_sampler: str = "ode"):
    """``(inverse folder, folder, load seconds)``: ProteinMPNN CA-only and the default folder
    (in-repo predictor sampled with ``fold_sampler``: ``"ode"`` = the probability-flow ODE,
    ``"af3"`` = AF3's stochastic sampler; ``fold_steps`` steps, ``None`` = that sampler's
    default), with the predictor's weights loaded."""
    from .designability import load_folder, load_inverse_folder

    t0 = time.perf_counter()
    inv = load_inverse_folder("proteinmpnn_ca")
    fold = load_folder("default", fold_sampler=fold_sampler, steps=None if fold_steps is None else int(fold_steps))
    dom = getattr(fold, "domain", None)
    if dom is not None and hasattr(dom, "teacher"):
        dom.teacher()  # load the weights now, not inside the first timed fold call
    return inv, fold, time.perf_counter() - t0


def bench_designability(out_dir, *, n: int = 100, length: int = 100, n_seq: int = 8, fold_steps: int = 5, source: str = "ideal",
                        batch_size: int = 8, seed: int = 0, progress: bool = True, models=None, fold_sampler: str = "ode") -> dict:
    """Designability throughput on ``n`` backbones (:func:`designability_backbones`).

    Runs the pipeline into ``out_dir`` (resumable: a rerun skips evaluated backbones) and writes
    ``designability_bench.json`` / ``.md``: backbones per minute (this run: new backbones / wall
    time, models loaded beforehand and timed separately), seconds per backbone split into
    inverse folding, folding and metrics + I/O, designable fraction, mean best scRMSD / scTM.
    ``models``: ``(inverse_folder, folder)`` to reuse (default :func:`load_designability_models`
    with ``fold_steps`` and ``fold_sampler``).
    Returns the summary dict."""
    _positive("n_seq", n_seq)
    _positive("fold_steps", fold_steps)
    _positive("batch_size", batch_size)
    out = Path(out_dir)
    backbones = designability_backbones(source, n, length, seed=seed)
    if models is None:
        inv, fold, load_s = load_designability_models(fold_steps, fold_sampler)
    else:
        (inv, fold), load_s = models, 0.0
    _log(progress, f"bench designability: {len(backbones)} backbones ({source}), n_seq={n_seq}, fold: {fold.name}")
    rep = timed_designability(backbones, out, inverse_folder=inv, folder=fold, n_seq=n_seq, batch_size=batch_size, seed=seed,
                              progress=progress)
    t = rep["timing"]
    k = t["n_new"]
    lengths = [len(b) for b in backbones if not isinstance(b, (str, Path))]
    summary = {
        "benchmark": "designability", "source": str(source), "n": len(backbones), "length": int(length),
        "lengths_mean": float(np.mean(lengths)) if lengths else None, "n_seq": int(n_seq), "fold_steps": int(fold_steps), "fold_sampler": fold_sampler,
        "batch_size": int(batch_size), "seed": int(seed), "inverse_folder": rep["inverse_folder"], "folder": rep["folder"],
        "folder_note": rep.get("folder_note"), "model_load_seconds": load_s,
        "n_evaluated": rep["n_evaluated"], "n_errors": rep["n_errors"], "n_new": k, "n_resumed": rep["n_resumed"],
        "designable_fraction": rep["designable_fraction"], "n_designable": rep["n_designable"],
        "mean_best_sc_rmsd": rep["mean_best_sc_rmsd"], "mean_best_sc_tm": rep["mean_best_sc_tm"],
        "designable_fraction_sc_tm": rep["designable_fraction_sc_tm"],
        "wall_seconds": t["wall_seconds"],
        "backbones_per_minute": 60.0 * k / t["wall_seconds"] if k and t["wall_seconds"] > 0 else rep.get("backbones_per_minute"),
        "seconds_per_backbone": t["wall_seconds"] / k if k else rep.get("seconds_per_backbone"),
        "design_seconds_per_backbone": t["design_seconds"] / k if k else None,
        "fold_seconds_per_backbone": t["fold_seconds"] / k if k else None,
        "metrics_seconds_per_backbone": t["metrics_seconds"] / k if k else None,
        "pipeline_report": str(out / "report.json"), "machine": _machine(),
    }
    write_json(out / "designability_bench.json", _clean(summary))
    md = _designability_markdown(summary)
    write_text(out / "designability_bench.md", md)
    summary["text"] = md
    summary["json"], summary["markdown"] = str(out / "designability_bench.json"), str(out / "designability_bench.md")
    return summary


def _designability_markdown(s: dict) -> str:
    src = {"ideal": "procedural ideal backbones (helix, strand, hairpin, helix bundle, cycling)",
           "real": "real chains cropped to the length"}.get(s["source"], f"structure files of {s['source']}")
    lines = [
        "# Designability throughput",
        "",
        f"- Backbones: {s['n']} {src}, length {s['length'] if s['source'] in DESIGNABILITY_SOURCES else _fmt(s['lengths_mean'], '{:.1f} (mean)')}.",
        f"- Inverse folder: {s['inverse_folder']}, {s['n_seq']} sequences per backbone; folder: {s['folder']}.",
        f"- {s.get('folder_note') or ''}",
        f"- Batch size {s['batch_size']} backbones, seed {s['seed']}; models loaded in {s['model_load_seconds']:.1f} s (not counted).",
        f"- This run: {s['n_new']} backbones evaluated in {s['wall_seconds']:.1f} s ({s['n_resumed']} taken from an earlier run, "
        f"{s['n_errors']} errors).",
        f"- Machine: {s['machine']}.",
        "",
        "| backbones / min | s / backbone | inverse folding | folding | metrics + I/O | designable fraction | scTM > 0.5 | "
        "mean best scRMSD (A) | mean best scTM |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {_fmt(s['backbones_per_minute'], '{:.2f}')} | {_fmt(s['seconds_per_backbone'], '{:.2f}')} | "
        f"{_fmt(s['design_seconds_per_backbone'], '{:.2f}')} | {_fmt(s['fold_seconds_per_backbone'], '{:.2f}')} | "
        f"{_fmt(s['metrics_seconds_per_backbone'], '{:.2f}')} | {_fmt(s['designable_fraction'])} | "
        f"{_fmt(s.get('designable_fraction_sc_tm'))} | {_fmt(s['mean_best_sc_rmsd'], '{:.2f}')} | {_fmt(s['mean_best_sc_tm'])} |",
        "",
        "Per-backbone results: `results.jsonl`; the pipeline's own report: `report.md`.",
        "",
    ]
    return "\n".join(lines)




def designability_main(argv: Optional[list[str]] = None) -> int:
    """``workbench bench designability key=value ...``; returns the exit code (2 on bad input)."""
    def run(o):
        res = bench_designability(o["out"], n=o["n"], length=o["length"], n_seq=o["n_seq"], fold_steps=o["fold_steps"],
                                  source=o["source"], batch_size=o["batch_size"], seed=o["seed"], progress=o["progress"],
                                  fold_sampler=o["fold_sampler"])
        return res["text"] + f"\nwrote {res['json']}, {res['markdown']}"

    return _run_main("designability", argv, DesignabilityBenchOptions, "designability throughput (backbones per minute)", run)


# --------------------------------------------------------------------------------------------
# bench backbone
# --------------------------------------------------------------------------------------------
def _backbone_domain(config: Optional[dict], lengths: Sequence[int]):
    from domains.protein_backbone import ProteinBackboneDomain

    from domains.protein_backbone.domain import CONFIG_KEYS

    cfg = {k: v for k, v in (config or {}).items() if k in CONFIG_KEYS and v is not None}
    cfg["lengths"] = [int(v) for v in lengths]
    # generation pads to max(n_max, max(lengths)); the network ignores padding, so pad only to the longest length
    cfg["n_max"] = max(2, max(cfg["lengths"]))
    return ProteinBackboneDomain(**cfg)


def _sample_pdbs(domain, samples, out_dir: Path) -> list[Path]:
    domain.save_samples(samples, out_dir)
    return sorted(p for p in Path(out_dir).glob("sample_*.pdb") if not p.stem.endswith("_backbone"))


BACKBONE_METRICS = ("ca_ca_mean", "ca_ca_std", "ca_ca_outlier_fraction", "clashes_mean", "clash_free_fraction", "dssp_helix",
                    "dssp_strand", "dssp_helix_runs7", "dssp_strand_runs3", "helical_right", "helical_left", "handedness_ratio",
                    "rg_ratio_mean", "helix", "strand", "coil", "diversity_cluster_fraction", "diversity_mean_pairwise_tm",
                    "novelty_max_tm_mean", "novelty_novel_fraction", "nonfinite_fraction")


def heldout_batch(domain, lengths) -> "Batch":
    """Held-out chains of ``domain``'s own data set cropped to ``lengths``: the reference row
    of :func:`bench_backbone` (what the metrics and the designability check give on real data
    of the same lengths). The held-out pool is the test then the validation split; sample ``i``
    is the central window of ``lengths[i]`` residues of the first chain of the pool that is at
    least that long and not used yet (chains are reused only once every long-enough chain has
    been used, so the row is as diverse as the held-out data allow); CA coordinates in nm with
    zero centre of mass, padded to ``domain.generation_size()``. Returns a
    :class:`~workbench.losses.Batch` ``x [n, N, 3]``, ``mask [n, N]``."""
    from workbench.losses import Batch

    pool = list(domain.chains("test")) + list(domain.chains("val"))
    lengths = [int(v) for v in lengths]
    N = max([domain.generation_size()] + lengths)
    x = torch.zeros(len(lengths), N, 3)
    mask = torch.zeros(len(lengths), N)
    used: set = set()
    for i, L in enumerate(lengths):
        fits = [j for j, c in enumerate(pool) if len(c) >= L]
        if not fits:
            raise ValueError(f"no held-out (test or validation) chain has {L} residues; use shorter lengths")
        fresh = [j for j in fits if j not in used]
        if not fresh:  # every long-enough chain used: start over
            used -= set(fits)
            fresh = fits
        used.add(fresh[0])
        c = pool[fresh[0]]
        start = (len(c) - L) // 2
        ca = torch.as_tensor(np.asarray(c.ca[start:start + L], dtype=np.float32)) * 0.1  # Angstrom -> nm
        x[i, :L] = ca - ca.mean(0)
        mask[i, :L] = 1.0
    return Batch(x=x, mask=mask)


def bench_backbone(out_dir, *, n: int = 16, lengths: Sequence[int] = (60, 80, 100), teacher_steps: int = 400,
                   teacher: Optional[str] = None, generators: Sequence[str] = (), student_steps: Sequence[int] = (1, 8, 16),
                   noise_scales: Sequence[float] = (0.45,), designability: bool = True, n_seq: int = 8, fold_steps: int = 5,
                   seed: int = 0, batch_size: int = 16, reference: bool = True, teacher_sampler: str = "sde",
                   teacher_temperature: float = 0.45, progress: bool = True, models=None) -> dict:
    """The ``protein_backbone`` teacher vs distilled generators.

    Every row draws the same ``n`` lengths (uniform over ``lengths``) and initial noises (sample
    ``i`` from seed ``seed + i``). The teacher row is ``teacher_sampler`` (default the teacher's
    default: Proteina's SDE at noise scaling ``teacher_temperature`` 0.45) with ``teacher_steps`` steps on
    the teacher (``teacher``: a checkpoint path, default the shipped one; its domain config is
    taken from the checkpoint header). Each generator (a ``generator.safetensors`` of
    ``workbench distill domain=protein_backbone``) gives one row per ``student_steps`` x
    ``noise_scales`` (:func:`workbench.runner.sample_generator`). All rows are evaluated by the
    teacher's domain (:meth:`ProteinBackboneDomain.evaluate`, novelty against the same
    training chains); with ``designability`` the written CA-only PDBs go through
    :func:`~domains.proteins.designability.run_designability` (ProteinMPNN CA-only,
    ``n_seq`` sequences, in-repo folder with the ``fold_steps``-step ODE).

    Per row: ``nfe``, ``seconds_per_sample`` (sampling wall time / n), the metrics of
    :data:`BACKBONE_METRICS`, ``designable_fraction``, ``seconds_per_designable`` (sampling
    wall time / number of designable samples) and, for generator rows, the acceptance columns of
    :func:`backbone_acceptance`. With ``reference`` a row ``held-out chains`` (kind
    ``reference``, :func:`heldout_batch` at the teacher row's lengths) goes through the same
    metrics and designability check: the ceiling the folder allows on real data of these
    lengths (no NFE, no acceptance). Writes ``backbone.{csv,json,md,png}`` and per-row sample
    directories."""
    from workbench.checkpoint import load_weights
    from workbench.runner import load_generator, sample_domain, sample_generator

    _positive("n", n)
    _positive("lengths", list(lengths), 2)
    _positive("teacher_steps", teacher_steps)
    _positive("student_steps", list(student_steps))
    if teacher_sampler not in TEACHER_SAMPLERS:
        raise ValueError(f"unknown teacher_sampler {teacher_sampler!r}; valid: {', '.join(TEACHER_SAMPLERS)}")
    if not (math.isfinite(float(teacher_temperature)) and 0.0 <= float(teacher_temperature) <= 1.0):
        raise ValueError(f"teacher_temperature must be in [0, 1], got {teacher_temperature!r}")
    if any(not (math.isfinite(float(s)) and float(s) >= 0) for s in noise_scales):
        raise ValueError(f"noise_scales must be finite numbers >= 0, got {list(noise_scales)!r}")
    _positive("n_seq", n_seq)
    gen_paths = [Path(p).expanduser() for p in generators]
    for p in gen_paths:
        if not p.is_file():
            raise FileNotFoundError(f"generator not found: {p} (a generator.safetensors written by 'workbench distill')")
    out = Path(out_dir)
    tcfg = None
    if teacher is not None:
        if not Path(teacher).is_file():
            raise FileNotFoundError(f"teacher checkpoint not found: {teacher}")
        tcfg = (load_weights(teacher)[1] or {}).get("config")
    dom = _backbone_domain(tcfg, lengths)
    net = dom.load_teacher(teacher)
    if designability:
        inv, fold = (models if models is not None else load_designability_models(fold_steps)[:2])
    rows: list[dict] = []

    def finish(row: dict, samples, seconds: float, nfe: int, tag: str) -> dict:
        row.update({"nfe": int(nfe), "n": int(n), "seconds_total": seconds, "seconds_per_sample": seconds / int(n)})
        m = dom.evaluate(samples)
        row.update({k: float(m[k]) if k in m else None for k in BACKBONE_METRICS})
        row_dir = out / "rows" / tag
        pdbs = _sample_pdbs(dom, samples, row_dir / "samples")
        row["samples"] = str(row_dir / "samples")
        for k in ("designable_fraction", "n_designable", "mean_best_sc_rmsd", "seconds_per_designable", "designable_fraction_sc_tm",
                  "mean_best_sc_tm"):
            row[k] = None
        if designability:
            rep = timed_designability(pdbs, row_dir / "designability", inverse_folder=inv, folder=fold, n_seq=n_seq,
                                      seed=seed, progress=False)
            row.update({"designable_fraction": rep["designable_fraction"], "n_designable": rep["n_designable"],
                        "mean_best_sc_rmsd": rep["mean_best_sc_rmsd"], "designability_seconds": rep["timing"]["wall_seconds"],
                        "designable_fraction_sc_tm": rep["designable_fraction_sc_tm"], "mean_best_sc_tm": rep["mean_best_sc_tm"]})
            nd = rep["n_designable"] or 0
            row["seconds_per_designable"] = seconds / nd if nd else None
        _log(progress, f"bench backbone: {row['name']}: NFE {row['nfe']}, {_fmt(row['seconds_per_sample'])} s/sample, "
                       f"designable {_fmt(row['designable_fraction'])}, diversity {_fmt(row['diversity_cluster_fraction'])}, "
                       f"novelty {_fmt(row['novelty_max_tm_mean'])}")
        return row

    topts = {"temperature": float(teacher_temperature)} if teacher_sampler == "sde" else {}
    tname = "euler" if teacher_sampler == "euler" else f"sde T{float(teacher_temperature):g}"
    samples, info = sample_domain(dom, net, sampler=teacher_sampler, steps=int(teacher_steps), n=int(n), seed=int(seed),
                                  batch_size=int(batch_size), progress=False, options=topts)
    rows.append(finish({"name": f"teacher {tname} {int(teacher_steps)}", "kind": "teacher", "model": str(teacher or dom.default_teacher_path()),
                        "method": "teacher", "steps": int(teacher_steps), "noise_scale": None}, samples, info["seconds"],
                       info["nfe"], f"teacher_{tname.replace(' ', '_')}_steps{int(teacher_steps)}"))
    if reference:
        ref_lengths = [int(v) for v in samples.mask.sum(1).round().long()]
        rows.append(finish({"name": "held-out chains (reference)", "kind": "reference", "model": f"data={dom.config['data']}",
                            "method": "reference", "steps": None, "noise_scale": None}, heldout_batch(dom, ref_lengths), 0.0, 0,
                           "heldout_reference"))
        rows[-1].update({"nfe": None, "seconds_total": None, "seconds_per_sample": None, "seconds_per_designable": None})
    for gi, p in enumerate(gen_paths):
        gmeta = load_weights(p)[1] or {}
        gdom = _backbone_domain(gmeta.get("config"), lengths)
        gen, meta = load_generator(gdom, p)
        for k in student_steps:
            for s in noise_scales:
                smp, sinfo = sample_generator(gdom, gen, steps=int(k), n=int(n), seed=int(seed), batch_size=int(batch_size),
                                              noise_scale=float(s))
                tag = f"gen{gi}_{meta.get('method', 'generator')}_k{int(k)}_s{float(s):g}"
                rows.append(finish({"name": f"{meta.get('method', 'generator')} #{gi} {int(k)} steps, noise {float(s):g}",
                                    "kind": "student", "model": str(p), "method": meta.get("method"), "steps": int(k),
                                    "noise_scale": float(s)}, smp, sinfo["seconds"], sinfo["nfe"], tag))
    ref = rows[0]
    for r in rows[1:]:
        if r["kind"] != "student":
            continue
        r.update(backbone_acceptance(ref, r))
        sec = backbone_acceptance(ref, r, designable_key="designable_fraction_sc_tm")
        r.update({"designable_fraction_sc_tm_rel": sec["designable_fraction_sc_tm_rel"], "meets_sc_tm": sec["meets"]})
    cols = ["name", "kind", "method", "steps", "noise_scale", "nfe", "n", "seconds_per_sample", "designable_fraction",
            "n_designable", "mean_best_sc_rmsd", "seconds_per_designable", "designable_fraction_sc_tm", "mean_best_sc_tm",
            *BACKBONE_METRICS, "nfe_ratio", "designable_fraction_rel", "diversity_cluster_fraction_rel", "novelty_max_tm_mean_rel",
            "meets", "designable_fraction_sc_tm_rel", "meets_sc_tm", "model"]
    csv_path = _write_csv(out / "backbone.csv", rows, cols)
    info = {"benchmark": "backbone", "n": int(n), "lengths": [int(v) for v in lengths], "teacher_steps": int(teacher_steps),
            "teacher_sampler": teacher_sampler, "teacher_temperature": float(teacher_temperature), "reference": bool(reference),
            "generators": [str(p) for p in gen_paths], "student_steps": [int(k) for k in student_steps],
            "noise_scales": [float(s) for s in noise_scales], "designability": bool(designability), "n_seq": int(n_seq),
            "fold_steps": int(fold_steps), "seed": int(seed), "nfe_factor": BACKBONE_NFE_FACTOR, "tolerance": BACKBONE_TOL,
            "rows": rows, "machine": _machine()}
    json_path = out / "backbone.json"
    write_json(json_path, _clean(info))
    png = _plot_backbone(rows, out / "backbone.png")
    md = _backbone_markdown(info)
    md_path = write_text(out / "backbone.md", md)
    return {"rows": rows, "csv": str(csv_path), "json": str(json_path), "markdown": str(md_path), "plot": str(png), "text": md}


def _teacher_sampler_text(info: dict) -> str:
    if info.get("teacher_sampler", "euler") == "euler":
        return "Euler (probability-flow ODE)"
    return f"reverse SDE (`sde`, noise scaling temperature {info['teacher_temperature']:g})"


def _backbone_markdown(info: dict) -> str:
    rows = info["rows"]
    lines = [
        "# Protein backbone generation: teacher vs distilled generators",
        "",
        f"- {info['n']} samples per row, lengths drawn uniformly from {info['lengths']}, seed {info['seed']} (same lengths and "
        "initial noise in every row).",
        f"- Teacher: {_teacher_sampler_text(info)} with {info['teacher_steps']} steps. Students: "
        f"{', '.join(info['generators']) or 'none given'}.",
        ("- Designability: ProteinMPNN CA-only, "
         f"{info['n_seq']} sequences per backbone, refolded by the small in-repo structure predictor ({info['fold_steps']}-step "
         "ODE), designable = best scRMSD < 2 A (not comparable with ESMFold-based numbers)." if info["designability"]
         else "- Designability: not run (designability=false)."),
        "- Diversity: TM-score clusters (complete linkage at TM 0.5) per sample (higher = more diverse); novelty: mean max "
        "TM-score to training chains (lower = more novel). s / sample: sampling wall time per sample (one batch); "
        "s / designable: sampling wall time / number of designable samples (the designability check itself not included).",
        f"- Acceptance (students): NFE at least {info['nfe_factor']:g}x fewer than the teacher's; designable fraction, "
        f"diversity and novelty each within {100 * info['tolerance']:g}% relative of the teacher's (being better counts as "
        f"within); DSSP helix, DSSP strand and Rg ratio within {100 * info['tolerance']:g}% of the teacher's either way; "
        "\"n/a\" when it cannot be assessed (e.g. the teacher has no designable sample). \"meets (scTM)\": the same "
        "check with the looser designability criterion best scTM > 0.5 (FrameDiff's) in place of scRMSD < 2 A.",
        "- Geometry (direction: natives' values are the target): DSSP helix / strand = fraction of residues in H/G/I / E/B "
        "(mkdssp 4.2, else pydssp, on N/C/O placed around the CA trace); right-handed = fraction of CA virtual torsions in "
        "[30, 80] deg; R/L = right- / left-handed helical torsions pooled over the row (natives ~12, a mirror-blind model ~1); "
        "Rg ratio = Rg / (2.2 L^0.38) (globular ~1); CA-CA outliers = virtual bonds outside 3.8 +- 0.2 A (lower = better); "
        "clashes = CA pairs closer than 3 A per sample (lower = better).",
        f"- Machine: {info['machine']}.",
        "",
        "| model | NFE | s / sample | DSSP helix / strand | right-handed | R/L | Rg ratio | CA-CA outliers | clashes | "
        "diversity | novelty (max TM) | designable | scTM > 0.5 | NFE ratio | meets | meets (scTM) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        st = r["kind"] != "student"
        lines.append(
            f"| {r['name']} | {'-' if r['nfe'] is None else r['nfe']} | "
            f"{'-' if r['seconds_per_sample'] is None else format(r['seconds_per_sample'], '.3f')} | "
            f"{_fmt(r.get('dssp_helix'), '{:.2f}')} / {_fmt(r.get('dssp_strand'), '{:.2f}')} | {_fmt(r.get('helical_right'), '{:.2f}')} | "
            f"{_fmt(r.get('handedness_ratio'), '{:.1f}')} | {_fmt(r.get('rg_ratio_mean'), '{:.2f}')} | "
            f"{_fmt(r['ca_ca_outlier_fraction'])} | {_fmt(r['clashes_mean'], '{:.1f}')} | {_fmt(r['diversity_cluster_fraction'])} | "
            f"{_fmt(r['novelty_max_tm_mean'])} | {_fmt(r['designable_fraction'])} | {_fmt(r.get('designable_fraction_sc_tm'))} | "
            f"{'-' if st else _fmt(r.get('nfe_ratio'), '{:.1f}x')} | "
            f"{'-' if st else _yes_no(r.get('meets'))} | {'-' if st else _yes_no(r.get('meets_sc_tm'))} |")
    lines += ["", "![backbone](backbone.png)", ""]
    return "\n".join(lines)


def _plot_backbone(rows: list[dict], path: Path) -> Path:
    from workbench.utils import new_figure

    from workbench.utils import save_figure

    # the acceptance metrics (top row), then the folder-limited continuous proxy and local geometry
    keys = [("designable_fraction", "designable fraction (scRMSD < 2 A)"), ("diversity_cluster_fraction", "diversity (clusters / sample)"),
            ("novelty_max_tm_mean", "novelty: max TM to train (lower = more novel)"), ("mean_best_sc_tm", "mean best scTM"),
            ("ca_ca_outlier_fraction", "CA-CA outlier fraction (lower = better)"), ("seconds_per_sample", "s / sample")]
    fig, axes = new_figure(2, 3, figsize=(11, 6.4))
    axes = axes.ravel()
    ref = rows[0]
    for ax, (k, label) in zip(axes, keys):
        if k == "seconds_per_sample":
            ax.set_yscale("log")
        elif k in ("designable_fraction", "diversity_cluster_fraction"):
            ax.set_ylim(-0.05, 1.05)  # fractions: a readable axis even when every row sits at 0 or 1
        for r in rows[1:]:
            if r.get(k) is not None and r["kind"] == "student":
                ax.scatter(r["nfe"], r[k], s=18, label=r["name"])
        for r in rows[1:]:
            if r.get(k) is not None and r["kind"] == "reference":
                ax.axhline(r[k], color="C7", lw=0.8, ls=":", label=r["name"])
        if ref.get(k) is not None:
            ax.scatter(ref["nfe"], ref[k], marker="*", s=80, c="k", label=ref["name"])
            ax.axhline(ref[k], color="k", lw=0.6, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("NFE")
        ax.set_title(label, fontsize=9)
    handles, labels = axes[4].get_legend_handles_labels()
    if handles:
        axes[4].legend(fontsize=6)
    fig.suptitle("protein_backbone: teacher vs distilled generators", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)




def backbone_main(argv: Optional[list[str]] = None) -> int:
    """``workbench bench backbone key=value ...``; returns the exit code (2 on bad input)."""
    def run(o):
        res = bench_backbone(o["out"], n=o["n"], lengths=o["lengths"], teacher_steps=o["teacher_steps"], teacher=o["teacher"],
                             generators=o["generators"], student_steps=o["student_steps"], noise_scales=o["noise_scales"],
                             designability=o["designability"], n_seq=o["n_seq"], fold_steps=o["fold_steps"], seed=o["seed"],
                             batch_size=o["batch_size"], reference=o["reference"], teacher_sampler=o["teacher_sampler"],
                             teacher_temperature=o["teacher_temperature"], progress=o["progress"])
        return res["text"] + f"\nwrote {res['csv']}, {res['json']}, {res['markdown']}, {res['plot']}"

    return _run_main("backbone", argv, BackboneBenchOptions, "protein_backbone teacher vs distilled generators", run)


__all__ = [
    "BACKBONE_CRITERIA", "BackboneBenchOptions", "DesignabilityBenchOptions", "StructureBenchOptions", "backbone_acceptance",
    "backbone_main", "bench_backbone", "bench_designability", "bench_structure", "heldout_batch",
    "designability_backbones", "designability_main", "load_designability_models", "parse_options", "relative_change",
    "structure_acceptance", "structure_main", "timed_designability",
]
