"""How structure predictions are scored, and the no-information baselines every table keeps.

A prediction of a known sequence has a FIXED residue correspondence with the true structure
(residue ``i`` <-> residue ``i``). The primary scores use it:

* ``tm_score``: TM-score with fixed correspondence, normalised by the true length (the TMscore
  program's measure; Zhang & Skolnick, Proteins 57:702, 2004, eq. 2-3;
  :func:`domains.proteins.metrics.tm_score_matched`);
* ``ca_lddt``: CA-only lDDT, 15 A inclusion radius, superposition free (Mariani et al.,
  Bioinformatics 29:2722, 2013; :func:`domains.proteins.metrics.ca_lddt`).

Secondary, labelled as such: ``tm_align``, the TM-score after TM-align (Zhang & Skolnick, NAR
33:2302, 2005), which searches its own sequence-independent alignment; it rewards any chain of
similar size and shape (an unrelated native chain scores ~0.28 with it), so it is not a
prediction-accuracy measure. Also ``rmsd`` (CA, Kabsch superposition, A) and
``gdt_like_frac_2A`` (fraction of residues within 2 A after that superposition).

Shape of the prediction itself (needs no reference): ``ca_ca_outlier_fraction`` (consecutive CA
pairs outside 3.8 +- 0.2 A), ``clashes_per_residue`` (non-bonded CA pairs closer than 3 A, per
residue), ``rg`` (radius of gyration, A) and, with a reference, ``rg_vs_native`` = Rg(pred) /
Rg(native) (1 = as compact as the truth; < 1 over-collapsed).

Baselines (:func:`baseline_predictions`), scored exactly like predictions, give the
no-information level of each column:

* ``UNRELATED``: the first ``L`` residues of another native chain (another source file, at
  least ``L`` residues), as if it were the prediction;
* ``HELIX``: an ideal straight alpha-helix of ``L`` residues (CA radius 2.3 A, rise 1.5 A and
  100 degrees per residue, right-handed; Pauling et al., PNAS 37:205, 1951).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

#: row labels of the two baselines
UNRELATED = "baseline: unrelated native chain (first L residues of another chain)"
HELIX = "baseline: ideal straight alpha-helix"
#: per-chain columns of :func:`score_prediction` (primary first)
PRIMARY = ("tm_score", "ca_lddt")
SECONDARY = ("tm_align", "rmsd", "gdt_like_frac_2A")
SHAPE = ("ca_ca_outlier_fraction", "clashes_per_residue", "rg", "rg_vs_native")
COLUMNS = PRIMARY + SECONDARY + SHAPE
#: human-readable column headers
HEADERS = {"tm_score": "TM-score (position-matched)", "ca_lddt": "CA-lDDT",
           "tm_align": "TM-align TM (secondary: own alignment)", "rmsd": "CA RMSD (A)", "gdt_like_frac_2A": "frac < 2 A",
           "ca_ca_outlier_fraction": "pred. CA-CA outliers", "clashes_per_residue": "pred. clashes / res",
           "rg": "pred. Rg (A)", "rg_vs_native": "pred. Rg / native Rg"}

#: ideal alpha-helix CA geometry (A, degrees)
HELIX_RADIUS, HELIX_RISE, HELIX_TWIST = 2.3, 1.5, 100.0


def shape_metrics(ca) -> dict:
    """Shape of one CA trace ``[L, 3]`` (A): ``ca_ca_outlier_fraction``, ``ca_ca_mean``,
    ``clashes_per_residue`` and ``rg``."""
    from domains.proteins import metrics as pm

    ca = np.asarray(ca, dtype=np.float64)
    st = pm.ca_ca_stats(ca)
    return {"ca_ca_outlier_fraction": st["ca_ca_outlier_fraction"], "ca_ca_mean": st["ca_ca_mean"],
            "clashes_per_residue": pm.clash_count(ca) / max(1, len(ca)), "rg": pm.rg(ca)}


def score_prediction(pred, ref, seq: Optional[str] = None) -> dict:
    """All columns of one prediction ``pred`` ``[L, 3]`` against the true ``ref`` ``[L, 3]``
    (A, residue ``i`` <-> residue ``i``): :data:`COLUMNS` plus ``ca_ca_mean``. ``seq`` is passed
    to TM-align (it only prints the alignment). Raises ValueError on unequal lengths."""
    from domains.proteins import metrics as pm

    p, q = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 2 or p.shape[-1] != 3:
        raise ValueError(f"score_prediction needs two [L, 3] traces of equal length, got {p.shape} and {q.shape}")
    out = shape_metrics(p)
    out["tm_score"] = pm.tm_score_matched(p, q)
    out["ca_lddt"] = pm.ca_lddt(p, q)
    try:
        out["tm_align"] = pm.tm_score(p, q, seq, seq)
    except ValueError:
        out["tm_align"] = float("nan")
    out["rmsd"] = pm.ca_rmsd(p, q)
    ok = np.isfinite(q).all(1) & np.isfinite(p).all(1)
    if ok.sum() >= 3:
        R, t = pm.kabsch(p[ok], q[ok])
        out["gdt_like_frac_2A"] = float((np.linalg.norm(p[ok] @ R.T + t - q[ok], axis=1) < 2.0).mean())
    else:
        out["gdt_like_frac_2A"] = float("nan")
    rg_ref = pm.rg(q)
    out["rg_vs_native"] = out["rg"] / rg_ref if rg_ref > 0 else float("nan")
    return out


def mean_scores(per_chain: Sequence[dict], columns: Sequence[str] = COLUMNS) -> dict:
    """Column means (NaN-aware) over per-chain score dicts."""
    out = {}
    for k in columns:
        v = np.asarray([d.get(k, np.nan) for d in per_chain], dtype=np.float64)
        out[k] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    return out


def ideal_helix(length: int) -> np.ndarray:
    """CA trace ``[length, 3]`` (A) of an ideal straight right-handed alpha-helix along z:
    ``(r cos(i w), r sin(i w), i h)`` with ``r = 2.3``, ``w = 100`` degrees, ``h = 1.5``
    (consecutive CA-CA = 3.83 A)."""
    if int(length) < 1:
        raise ValueError(f"ideal_helix needs length >= 1, got {length}")
    i = np.arange(int(length), dtype=np.float64)
    w = np.deg2rad(HELIX_TWIST) * i
    ca = np.stack([HELIX_RADIUS * np.cos(w), HELIX_RADIUS * np.sin(w), HELIX_RISE * i], axis=1)
    return ca - ca.mean(0)


def _entry(chain) -> str:
    """What identifies a chain's source entry: its file (chains of one file are one entry)."""
    return str(getattr(chain, "source", "") or chain.name)


def unrelated_chain(target, pool: Sequence, index: int = 0):
    """The unrelated native chain for ``target``: among the ``pool`` chains from another source
    file, with another sequence and at least ``len(target)`` residues, the ``index``-th (cyclic,
    in pool order); ``None`` when no chain qualifies."""
    L = len(target)
    cands = [c for c in pool if len(c) >= L and _entry(c) != _entry(target) and c.sequence != target.sequence
             and np.isfinite(np.asarray(c.ca[:L], dtype=np.float64)).all()]
    return cands[int(index) % len(cands)] if cands else None


def baseline_predictions(targets: Sequence, pool: Sequence) -> dict:
    """``{UNRELATED: [ca or None per target], HELIX: [ca per target]}``: the baseline "predictions"
    of each target chain (``[L, 3]`` A). Target ``i`` takes :func:`unrelated_chain` ``(target_i,
    pool, i)`` (first ``L`` residues), so different targets use different unrelated chains."""
    out = {UNRELATED: [], HELIX: []}
    for i, t in enumerate(targets):
        u = unrelated_chain(t, pool, i)
        out[UNRELATED].append(None if u is None else np.asarray(u.ca[: len(t)], dtype=np.float64))
        out[HELIX].append(ideal_helix(len(t)))
    return out


def baseline_rows(targets: Sequence, pool: Sequence) -> list[dict]:
    """One row per baseline: ``{"config": label, "n_chains", <column means>, "chains_used"}``
    scored by :func:`score_prediction` against each target's true CA."""
    rows = []
    for label, preds in baseline_predictions(targets, pool).items():
        per = [score_prediction(p, t.ca, t.sequence) for p, t in zip(preds, targets) if p is not None]
        rows.append({"config": label, "n_chains": len(per), **mean_scores(per)})
    return rows


__all__ = ["COLUMNS", "HEADERS", "HELIX", "PRIMARY", "SECONDARY", "SHAPE", "UNRELATED", "baseline_predictions", "baseline_rows",
           "ideal_helix", "mean_scores", "score_prediction", "shape_metrics", "unrelated_chain"]
