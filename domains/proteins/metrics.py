"""Structure metrics for protein backbones (CA traces), in Angstrom.

Every function takes CA coordinates as a numpy array ``[L, 3]``, a full backbone ``[L, 4, 3]``
(N, CA, C, O: the CA column is used), a torch tensor of either shape, or a
:class:`~domains.proteins.chain.Chain`. Residues whose CA is missing (``NaN``) are dropped
where a metric does not need a residue correspondence (TM-align, secondary structure), and
excluded pairwise where it does (RMSD, lDDT).

Implemented (named for what they compute):

- :func:`tm_align` / :func:`tm_score` -- TM-align (Zhang & Skolnick, NAR 2005) through
  ``tmtools``; the TM-score (Zhang & Skolnick, Proteins 2004) is
  ``TM = max_alignment 1/L_ref * sum_i 1 / (1 + (d_i / d0(L_ref))^2)``,
  ``d0(L) = 1.24 (L - 15)^(1/3) - 1.8``, reported normalised by the reference length.
- :func:`tm_score_matched` -- TM-score with a FIXED residue correspondence (residue i <-> i),
  as the TMscore program computes it; the right score for a prediction of a known sequence
  (TM-align's own alignment lets an unrelated chain score ~0.28).
- :func:`kabsch` / :func:`ca_rmsd` -- least-squares superposition (Kabsch, Acta Cryst. A 1976)
  and the CA root-mean-square deviation after it.
- :func:`ca_lddt` -- the local distance difference test (Mariani et al., Bioinformatics 2013)
  on CA atoms: inclusion radius 15 A in the reference, thresholds 0.5/1/2/4 A.
- :func:`clash_count`, :func:`ca_ca_stats` -- backbone sanity (steric CA-CA clashes, virtual
  CA-CA bond lengths, ideal 3.80 A).
- :func:`rg`, :func:`rg_ratio` -- radius of gyration and its ratio to 2.2 L^0.38 (Hong & Lei 2009).
- :func:`handedness` -- right/left-handed helical CA virtual torsions (natives are right-handed).
- DSSP secondary structure lives in :mod:`domains.proteins.dssp`.
- :func:`sse_fractions` -- helix/strand/coil fractions by P-SEA (Labesse et al., CABIOS 1997;
  ``biotite.structure.annotate_sse``), which needs CA atoms only.
- :func:`diversity`, :func:`novelty` -- the sample-set metrics of protein backbone generators
  (e.g. Proteina, Geffner et al. ICLR 2025; the few-step SiD protein paper reports the same):
  clusters at pairwise TM-score 0.5 per sample and mean pairwise TM; max TM-score to a reference
  (training) set.
- :func:`backbone_metrics` -- all of the above over a list of chains, as a flat float dict.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from workbench.utils import track

from .geometry import kabsch  # one Kabsch for the package (P @ R.T + t ~= Q)

#: lDDT distance-difference thresholds (Angstrom), Mariani et al. 2013
LDDT_THRESHOLDS = (0.5, 1.0, 2.0, 4.0)
#: ideal virtual CA-CA bond length (trans peptide) and the tolerance used by :func:`ca_ca_stats`
CA_CA_IDEAL = 3.80
CA_CA_TOLERANCE = 0.20


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------
def _as_ca(x) -> np.ndarray:
    """Chain / ``[L, 3]`` / ``[L, 4, 3]`` (numpy or torch) -> float64 CA coordinates ``[L, 3]``."""
    if hasattr(x, "ca") and hasattr(x, "sequence"):  # a Chain
        x = x.ca
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 3 and a.shape[1:] == (4, 3):
        a = a[:, 1]
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"expected CA coordinates [L, 3], a backbone [L, 4, 3] or a Chain, got shape {a.shape}")
    return a


def _sequence_of(x) -> Optional[str]:
    return getattr(x, "sequence", None) if hasattr(x, "ca") else None


def _finite_rows(a: np.ndarray) -> np.ndarray:
    return np.isfinite(a).all(axis=-1)


def _tm_sequence(seq: Optional[str], n: int) -> str:
    """TM-align only prints the sequence alignment; it does not score residue identity. Unknown
    or absent sequences become poly-alanine (``X`` -> ``A``)."""
    if seq is None:
        return "A" * n
    s = "".join(c if c.isalpha() and c.upper() != "X" else "A" for c in seq.upper())
    if len(s) != n:
        raise ValueError(f"sequence length {len(s)} does not match {n} coordinates")
    return s


# --------------------------------------------------------------------------------------------
# superposition and RMSD
# --------------------------------------------------------------------------------------------
def ca_rmsd(P, Q, *, superpose: bool = True) -> float:
    """CA root-mean-square deviation ``sqrt(1/L sum_i |R p_i + t - q_i|^2)`` between two traces
    of the same length ``L`` (residue ``i`` corresponds to residue ``i``), after optimal
    superposition (Kabsch) unless ``superpose=False``. Residues with a missing CA in either
    structure are left out."""
    p, q = _as_ca(P), _as_ca(Q)
    if p.shape != q.shape:
        raise ValueError(f"ca_rmsd needs structures of equal length, got {len(p)} and {len(q)} residues")
    ok = _finite_rows(p) & _finite_rows(q)
    if ok.sum() == 0:
        return float("nan")
    p, q = p[ok], q[ok]
    if superpose and len(p) >= 3:
        R, t = kabsch(p, q)
        p = p @ R.T + t
    elif superpose:  # fewer than 3 points: translation only
        p = p - p.mean(0) + q.mean(0)
    return float(np.sqrt(((p - q) ** 2).sum(-1).mean()))


# --------------------------------------------------------------------------------------------
# TM-score / TM-align
# --------------------------------------------------------------------------------------------
def tm_align(P, Q, seq_p: Optional[str] = None, seq_q: Optional[str] = None) -> dict:
    """TM-align structure ``P`` (model) onto ``Q`` (reference) with ``tmtools``.

    Sequence-independent: TM-align finds its own residue alignment, so ``P`` and ``Q`` may have
    different lengths. Returns ``{"tm_score": TM normalised by L_Q (reference), "tm_score_p":
    TM normalised by L_P, "rmsd": RMSD over the aligned residues, "aligned_length",
    "length_p", "length_q", "rotation" [3, 3], "translation" [3]}`` (the transform maps ``P``
    onto ``Q``: ``P @ R.T + t``). Sequences default to those of Chain inputs, else poly-Ala.
    """
    from tmtools import tm_align as _tm_align

    seq_p = seq_p if seq_p is not None else _sequence_of(P)
    seq_q = seq_q if seq_q is not None else _sequence_of(Q)
    p, q = _as_ca(P), _as_ca(Q)
    sp, sq = _tm_sequence(seq_p, len(p)), _tm_sequence(seq_q, len(q))
    okp, okq = _finite_rows(p), _finite_rows(q)
    p, q = np.ascontiguousarray(p[okp]), np.ascontiguousarray(q[okq])
    sp = "".join(c for c, k in zip(sp, okp) if k)
    sq = "".join(c for c, k in zip(sq, okq) if k)
    if len(p) < 3 or len(q) < 3:
        raise ValueError(f"TM-align needs at least 3 residues with a CA in each structure, got {len(p)} and {len(q)}")
    r = _tm_align(p, q, sp, sq)
    aligned = sum(1 for a, b in zip(r.seqxA, r.seqyA) if a != "-" and b != "-")
    return {
        "tm_score": float(r.tm_norm_chain2),
        "tm_score_p": float(r.tm_norm_chain1),
        "rmsd": float(r.rmsd),
        "aligned_length": int(aligned),
        "length_p": int(len(p)),
        "length_q": int(len(q)),
        "rotation": np.asarray(r.u, dtype=np.float64),
        "translation": np.asarray(r.t, dtype=np.float64),
    }


def tm_score(P, Q, seq_p: Optional[str] = None, seq_q: Optional[str] = None) -> float:
    """TM-score of model ``P`` against reference ``Q`` after TM-align, normalised by the length
    of ``Q`` (Zhang & Skolnick 2004/2005). 1 for identical structures (any rigid motion),
    about 0.17 on average for unrelated random structures, > 0.5 for the same fold."""
    return tm_align(P, Q, seq_p, seq_q)["tm_score"]


# --------------------------------------------------------------------------------------------
# TM-score with a fixed residue correspondence (the TMscore program)
# --------------------------------------------------------------------------------------------
def tm_d0(L: int) -> float:
    """TM-score distance scale ``d0(L) = 1.24 (L - 15)^(1/3) - 1.8`` A (Zhang & Skolnick,
    Proteins 57:702, 2004, eq. 3), floored at 0.5 A as in the TMscore program."""
    L = int(L)
    d0 = 1.24 * np.cbrt(L - 15.0) - 1.8 if L > 15 else 0.0
    return float(max(d0, 0.5))


def _batched_kabsch(P: np.ndarray, Q: np.ndarray, W: np.ndarray):
    """Weighted Kabsch for a batch of selections: ``P``, ``Q`` ``[N, 3]``, ``W`` ``[S, N]``
    (0/1) -> ``R`` ``[S, 3, 3]``, ``t`` ``[S, 3]`` with ``P @ R.T + t ~= Q`` on each selection."""
    w = W / np.maximum(W.sum(1, keepdims=True), 1.0)                # [S, N]
    cp, cq = w @ P, w @ Q                                          # [S, 3]
    H = np.einsum("sn,ni,nj->sij", W, P, Q) - W.sum(1)[:, None, None] * cp[:, :, None] * cq[:, None, :]
    U, _, Vh = np.linalg.svd(H)
    V = np.swapaxes(Vh, -1, -2)
    d = np.sign(np.linalg.det(V @ np.swapaxes(U, -1, -2)))
    d = np.where(d == 0, 1.0, d)
    D = np.zeros((len(W), 3, 3))
    D[:, 0, 0] = D[:, 1, 1] = 1.0
    D[:, 2, 2] = d
    R = V @ D @ np.swapaxes(U, -1, -2)
    t = cq - np.einsum("sij,sj->si", R, cp)
    return R, t


def tm_score_matched(pred, ref, *, max_iterations: int = 20, return_transform: bool = False):
    """TM-score of ``pred`` against ``ref`` with a FIXED residue correspondence (residue ``i`` of
    ``pred`` <-> residue ``i`` of ``ref``), as the TMscore program computes it -- not TM-align,
    which searches its own alignment.

    ``TM = max_{R, t} 1/L_ref sum_i 1 / (1 + (d_i / d0(L_ref))^2)``, ``d_i = |R p_i + t - q_i|``
    (Zhang & Skolnick, Proteins 57:702, 2004, eq. 2-3; :func:`tm_d0`). ``L_ref`` is the number of
    reference residues with a CA; residues missing (NaN) in ``pred`` only count in ``L_ref``
    (score 0), residues missing in ``ref`` are left out.

    The maximisation follows the TMscore program's heuristic: seed superpositions (Kabsch) on
    every contiguous fragment of length ``L, L/2, L/4, ...`` (>= 4, 6 lengths) of the common
    residues; from each seed, repeatedly superpose on the residues within ``d_search`` of
    their partner (``d_search = clip(d0, 4.5, 8)`` A, widened by 0.5 A until >= 3 residues qualify)
    and re-score, until the selection stops changing (``max_iterations``); the best score seen
    over all seeds and iterations is returned. Like the program, this is a lower bound on the
    true maximum; on perturbed natives it matches TM-align whenever TM-align's alignment is the
    identity (tests).

    Args:
        pred, ref: ``[L, 3]`` CA, ``[L, 4, 3]`` backbones (CA used), torch tensors, or Chains,
            of equal length ``L``.
        return_transform: also return ``(R [3, 3], t [3])`` mapping ``pred`` onto ``ref``
            (``pred @ R.T + t``).

    Returns:
        TM-score in (0, 1] (1 = identical up to a rigid motion); NaN when ``ref`` has no CA.

    Raises:
        ValueError: unequal lengths or bad shapes.
    """
    p, q = _as_ca(pred), _as_ca(ref)
    if p.shape != q.shape:
        raise ValueError(f"tm_score_matched needs structures of equal length (residue i <-> residue i), "
                         f"got {len(p)} and {len(q)} residues; use tm_align for different lengths")
    ref_ok = _finite_rows(q)
    L_ref = int(ref_ok.sum())
    eye = (np.eye(3), np.zeros(3))
    if L_ref == 0:
        return (float("nan"), eye) if return_transform else float("nan")
    ok = ref_ok & _finite_rows(p)
    P, Q = p[ok], q[ok]
    n = len(P)
    d0 = tm_d0(L_ref)
    if n == 0:
        return (0.0, eye) if return_transform else 0.0
    if n < 3:  # too few points for a rotation: superpose centroids
        t = Q.mean(0) - P.mean(0)
        d2 = ((P + t - Q) ** 2).sum(-1)
        s = float((1.0 / (1.0 + d2 / d0 ** 2)).sum() / L_ref)
        return (s, (np.eye(3), t)) if return_transform else s
    d_search = float(np.clip(d0, 4.5, 8.0))
    # seeds: every contiguous fragment of lengths n, n/2, n/4, ... (>= 4), at most 6 lengths
    lengths, Lf = [], n
    while len(lengths) < 6:
        lengths.append(Lf)
        Lf //= 2
        if Lf < 4:
            break
    idx = np.arange(n)
    W = np.concatenate([((idx[None] >= s[:, None]) & (idx[None] < s[:, None] + Lf)).astype(np.float64)
                        for Lf in lengths for s in [np.arange(0, n - Lf + 1)]])      # [S, n]
    best, best_rt = -1.0, eye
    for _ in range(max_iterations + 1):
        R, t = _batched_kabsch(P, Q, W)
        X = np.einsum("sij,nj->sni", R, P) + t[:, None]                               # [S, n, 3]
        d2 = ((X - Q[None]) ** 2).sum(-1)                                            # [S, n]
        scores = (1.0 / (1.0 + d2 / d0 ** 2)).sum(1) / L_ref
        k = int(np.argmax(scores))
        if scores[k] > best:
            best, best_rt = float(scores[k]), (R[k], t[k])
        # next selection: residues within d_search, widened until >= 3 qualify (per seed)
        cut = np.full(len(W), d_search ** 2)
        new = d2 <= cut[:, None]
        for _widen in range(40):
            few = new.sum(1) < 3
            if not few.any():
                break
            cut[few] = (np.sqrt(cut[few]) + 0.5) ** 2
            new[few] = d2[few] <= cut[few, None]
        new = new.astype(np.float64)
        changed = (new != W).any(1)
        if not changed.any():
            break
        # keep only seeds whose selection changed (the others have converged), dropping duplicates
        W = np.unique(new[changed], axis=0)
    return (best, best_rt) if return_transform else best


# --------------------------------------------------------------------------------------------
# lDDT
# --------------------------------------------------------------------------------------------
def ca_lddt(pred, ref, cutoff: float = 15.0, *, per_residue: bool = False, thresholds: Sequence[float] = LDDT_THRESHOLDS):
    """CA-only lDDT (Mariani et al. 2013), superposition free.

    Pairs scored: all ordered residue pairs ``(i, j)``, ``i != j`` (same-residue pairs excluded),
    whose CA-CA distance in the *reference* is below ``cutoff`` (15 A inclusion radius) and whose
    CAs exist in both structures. A pair is preserved at threshold ``t`` when
    ``|d_pred(i, j) - d_ref(i, j)| < t``; the score is the fraction of preserved pairs averaged
    over ``t in (0.5, 1, 2, 4)`` A. Global score = over all pairs (as AlphaFold's
    ``lddt(per_residue=False)``); ``per_residue=True`` returns ``[L]`` scores (residue ``i``'s
    pairs; NaN for residues without any scored pair).

    ``pred`` and ``ref``: ``[L, 3]`` (or backbones / Chains) of equal length. Returns a float in
    [0, 1] (NaN if no pair is scored).
    """
    p, q = _as_ca(pred), _as_ca(ref)
    if p.shape != q.shape:
        raise ValueError(f"ca_lddt needs structures of equal length, got {len(p)} and {len(q)} residues")
    ok = _finite_rows(p) & _finite_rows(q)
    p = np.where(ok[:, None], p, 0.0)
    q = np.where(ok[:, None], q, 0.0)
    dp = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))
    dq = np.sqrt(((q[:, None] - q[None]) ** 2).sum(-1))
    L = len(p)
    scored = (dq < cutoff) & ~np.eye(L, dtype=bool) & ok[:, None] & ok[None, :]
    diff = np.abs(dp - dq)
    preserved = np.mean([(diff < t) for t in thresholds], axis=0)  # [L, L] in {0, .25, .5, .75, 1}
    if per_residue:
        n = scored.sum(1)
        s = (preserved * scored).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, s / np.maximum(n, 1), np.nan)
    n = scored.sum()
    return float((preserved * scored).sum() / n) if n > 0 else float("nan")


# --------------------------------------------------------------------------------------------
# backbone sanity
# --------------------------------------------------------------------------------------------
def clash_count(ca, threshold: float = 3.0, *, min_separation: int = 2) -> int:
    """Number of residue pairs ``i < j`` with ``j - i >= min_separation`` whose CAs are closer than
    ``threshold`` A.

    Default ``min_separation=2``: every non-bonded pair counts. In real proteins no such pair is
    closer than ~3.8 A (``i, i+2`` is >= ~4.6 A because the CA-CA-CA virtual angle is >= ~75
    degrees), so 0 clashes is the expectation and a collapsed virtual angle counts as a clash."""
    a = _as_ca(ca)
    a = a[_finite_rows(a)] if not _finite_rows(a).all() else a
    L = len(a)
    if L < 2:
        return 0
    d = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))
    i, j = np.triu_indices(L, k=max(1, int(min_separation)))
    return int((d[i, j] < threshold).sum())


def ca_ca_stats(ca) -> dict:
    """Consecutive (virtual bond) CA-CA distances: ``{"ca_ca_mean", "ca_ca_std",
    "ca_ca_outlier_fraction"}``, the last being the fraction outside ``3.80 +- 0.20`` A.
    Pairs with a missing CA are skipped (chain breaks in real files show up as outliers)."""
    a = _as_ca(ca)
    d = np.linalg.norm(a[1:] - a[:-1], axis=-1)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return {"ca_ca_mean": float("nan"), "ca_ca_std": float("nan"), "ca_ca_outlier_fraction": float("nan")}
    return {
        "ca_ca_mean": float(d.mean()),
        "ca_ca_std": float(d.std()),
        "ca_ca_outlier_fraction": float((np.abs(d - CA_CA_IDEAL) > CA_CA_TOLERANCE).mean()),
    }


# --------------------------------------------------------------------------------------------
# shape: radius of gyration and handedness
# --------------------------------------------------------------------------------------------
#: Rg scaling law of folded globular proteins, ``Rg = RG_PREFACTOR * L^RG_EXPONENT`` A
#: (Hong & Lei, J. Polym. Sci. B 47:207, 2009: Rg ~ 2.2 N^0.38 over PDB chains)
RG_PREFACTOR = 2.2
RG_EXPONENT = 0.38
#: CA virtual-torsion windows (degrees) counted as right- / left-handed helical
HELICAL_RIGHT = (30.0, 80.0)
HELICAL_LEFT = (-80.0, -30.0)


def rg(ca) -> float:
    """Radius of gyration of the CA atoms, ``sqrt(1/L sum_i |x_i - mean(x)|^2)`` in A
    (residues with a missing CA left out; NaN for an empty chain)."""
    a = _as_ca(ca)
    a = a[_finite_rows(a)]
    if len(a) == 0:
        return float("nan")
    return float(np.sqrt(((a - a.mean(0)) ** 2).sum(-1).mean()))


def rg_ratio(ca) -> float:
    """``Rg / (2.2 L^0.38)``: the radius of gyration relative to that of a folded globular
    protein of the same length ``L`` (residues with a CA), from the scaling law of Hong & Lei
    (2009; see :data:`RG_PREFACTOR`). About 1 for compact globular chains, well above 1 for
    extended / random-coil chains (a random walk grows as ``L^0.5-0.6``), below ~0.8 for
    over-collapsed ones."""
    a = _as_ca(ca)
    L = int(_finite_rows(a).sum())
    if L == 0:
        return float("nan")
    return rg(a) / (RG_PREFACTOR * L ** RG_EXPONENT)


def ca_torsions(ca) -> np.ndarray:
    """CA virtual torsions ``tau_i`` = dihedral ``CA(i), CA(i+1), CA(i+2), CA(i+3)`` in degrees,
    ``[L - 3]`` (IUPAC sign; NaN where a CA is missing). An alpha-helix has ``tau ~ +50``,
    a beta-strand ``tau ~ -170..+170`` (Levitt, J. Mol. Biol. 104:59, 1976)."""
    from .geometry import dihedral

    a = _as_ca(ca)
    if len(a) < 4:
        return np.zeros(0)
    with np.errstate(invalid="ignore"):
        return dihedral(a[:-3], a[1:-2], a[2:-1], a[3:])


def handedness(ca) -> dict:
    """Handedness of the local helical turns from the CA virtual torsions (:func:`ca_torsions`).

    Returns ``{"helical_right": fraction of torsions in [30, 80] deg (right-handed helical turns),
    "helical_left": fraction in [-80, -30] deg (left-handed), "handedness_ratio": (n_right + 1) /
    (n_left + 1), "n_right", "n_left", "n_torsions"}`` (counts as floats). The ratio uses add-one
    smoothing of the counts, so it is finite for any chain and a mirror image gives exactly the
    reciprocal; a chain without chirality gives ~1. Natural proteins are right-handed (alpha
    helices; Levitt 1976): natives score ``helical_right`` ~0.3 and a ratio of tens, their
    mirror images the reciprocal (see tests). Pool counts over samples with
    :func:`handedness_pooled`. Fractions are NaN for chains with fewer than 4 CAs."""
    tau = ca_torsions(ca)
    tau = tau[np.isfinite(tau)]
    n = len(tau)
    nr = int(((tau >= HELICAL_RIGHT[0]) & (tau <= HELICAL_RIGHT[1])).sum())
    nl = int(((tau >= HELICAL_LEFT[0]) & (tau <= HELICAL_LEFT[1])).sum())
    return {
        "helical_right": nr / n if n else float("nan"),
        "helical_left": nl / n if n else float("nan"),
        "handedness_ratio": (nr + 1.0) / (nl + 1.0),
        "n_right": float(nr), "n_left": float(nl), "n_torsions": float(n),
    }


def handedness_pooled(structures: Sequence) -> dict:
    """:func:`handedness` over a sample set with the torsion counts pooled (total right / total
    left, add-one smoothed): ``{"helical_right", "helical_left", "handedness_ratio"}``."""
    hs = [handedness(s) for s in structures]
    nr = sum(h["n_right"] for h in hs)
    nl = sum(h["n_left"] for h in hs)
    n = sum(h["n_torsions"] for h in hs)
    return {"helical_right": nr / n if n else float("nan"), "helical_left": nl / n if n else float("nan"),
            "handedness_ratio": (nr + 1.0) / (nl + 1.0)}


# --------------------------------------------------------------------------------------------
# secondary structure
# --------------------------------------------------------------------------------------------
def sse_labels(chain_or_ca) -> str:
    """P-SEA secondary structure of a CA trace, one letter per residue with a CA: ``a`` helix,
    ``b`` strand, ``c`` coil (biotite's ``annotate_sse``). Residues are numbered consecutively, so
    no chain break is assumed."""
    import biotite.structure as bs

    a = _as_ca(chain_or_ca)
    a = a[_finite_rows(a)]
    L = len(a)
    if L == 0:
        return ""
    arr = bs.AtomArray(L)
    arr.coord = a.astype(np.float32)
    arr.atom_name[:] = "CA"
    arr.element[:] = "C"
    arr.res_name[:] = "ALA"  # P-SEA uses CA geometry only; the residue name just marks an amino acid
    arr.res_id = np.arange(1, L + 1)
    arr.chain_id[:] = "A"
    return "".join(bs.annotate_sse(arr))


def sse_fractions(chain_or_ca) -> dict:
    """Fractions of residues in helix / strand / coil by P-SEA on CA atoms (Labesse et al. 1997):
    ``{"helix", "strand", "coil"}`` summing to 1 (NaN for an empty chain)."""
    s = sse_labels(chain_or_ca)
    if not s:
        return {"helix": float("nan"), "strand": float("nan"), "coil": float("nan")}
    n = len(s)
    return {"helix": s.count("a") / n, "strand": s.count("b") / n, "coil": 1.0 - (s.count("a") + s.count("b")) / n}


# --------------------------------------------------------------------------------------------
# sample-set metrics
# --------------------------------------------------------------------------------------------
def pairwise_tm(structures: Sequence) -> np.ndarray:
    """Symmetric pairwise TM-score matrix ``[n, n]`` (1 on the diagonal): entry ``(i, j)`` is the
    mean of TM-align's two normalisations (by ``L_i`` and by ``L_j``), so it does not depend on
    the order of the pair. ``n (n - 1) / 2`` TM-align runs."""
    cas = [_as_ca(s) for s in structures]
    n = len(cas)
    M = np.eye(n)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    for i, j in track(pairs, "diversity (pairwise TM-align)"):
        r = tm_align(cas[i], cas[j])
        M[i, j] = M[j, i] = 0.5 * (r["tm_score"] + r["tm_score_p"])
    return M


def diversity(structures: Sequence, threshold: float = 0.5) -> dict:
    """Structural diversity of a sample set.

    Clusters: complete-linkage agglomerative clustering on the distance ``1 - TM`` (pairwise TM
    from :func:`pairwise_tm`) cut at ``1 - threshold``, i.e. every two members of a cluster have
    TM-score >= ``threshold`` (0.5 = same fold). Returns ``{"n_samples", "n_clusters",
    "cluster_fraction" = n_clusters / n_samples (1 = all distinct folds), "mean_pairwise_tm"
    (lower = more diverse; NaN for fewer than 2 samples)}``.
    """
    n = len(structures)
    if n == 0:
        return {"n_samples": 0.0, "n_clusters": 0.0, "cluster_fraction": float("nan"), "mean_pairwise_tm": float("nan")}
    if n == 1:
        return {"n_samples": 1.0, "n_clusters": 1.0, "cluster_fraction": 1.0, "mean_pairwise_tm": float("nan")}
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    M = pairwise_tm(structures)
    D = np.clip(1.0 - M, 0.0, None)
    np.fill_diagonal(D, 0.0)
    Z = linkage(squareform(D, checks=False), method="complete")
    labels = fcluster(Z, t=1.0 - threshold, criterion="distance")
    k = int(len(set(labels.tolist())))
    iu = np.triu_indices(n, k=1)
    return {"n_samples": float(n), "n_clusters": float(k), "cluster_fraction": k / n, "mean_pairwise_tm": float(M[iu].mean())}


def novelty(structures: Sequence, reference: Sequence) -> dict:
    """Novelty against a reference (training) set: for each sample the maximum TM-score to any
    reference structure, normalised by the sample's length (TM-align). Returns
    ``{"max_tm_mean", "max_tm_std", "novel_fraction"}`` where lower ``max_tm_mean`` = more novel
    and ``novel_fraction`` = fraction of samples with max TM < 0.5. ``len(structures) *
    len(reference)`` TM-align runs."""
    if len(reference) == 0:
        raise ValueError("novelty needs a non-empty reference set")
    best = []
    for s in track(structures, f"novelty (TM-align vs {len(reference)} references)"):
        best.append(max(tm_align(s, r)["tm_score_p"] for r in reference))
    b = np.asarray(best, dtype=np.float64)
    if len(b) == 0:
        return {"max_tm_mean": float("nan"), "max_tm_std": float("nan"), "novel_fraction": float("nan")}
    return {"max_tm_mean": float(b.mean()), "max_tm_std": float(b.std()), "novel_fraction": float((b < 0.5).mean())}


def length_stats(structures: Sequence) -> dict:
    """``{"length_mean", "length_std", "length_min", "length_max"}`` over residues with a CA."""
    lens = np.asarray([int(_finite_rows(_as_ca(s)).sum()) for s in structures], dtype=np.float64)
    if len(lens) == 0:
        return {"length_mean": float("nan"), "length_std": float("nan"), "length_min": float("nan"), "length_max": float("nan")}
    return {"length_mean": float(lens.mean()), "length_std": float(lens.std()), "length_min": float(lens.min()), "length_max": float(lens.max())}


def backbone_metrics(chains: Sequence, reference: Optional[Sequence] = None, *, diversity_threshold: float = 0.5,
                     max_diversity_samples: Optional[int] = None, dssp_backend: Optional[str] = "auto") -> dict:
    """All backbone metrics of a sample set as a flat ``{name: float}`` dict.

    Per-sample metrics are averaged: ``ca_ca_*`` (pooled over all virtual bonds), ``clashes_mean``
    and ``clash_free_fraction`` (:func:`clash_count`), ``length_*``;

    - DSSP (primary secondary structure; :mod:`domains.proteins.dssp`, on the N/C/O placed by
      :func:`~domains.proteins.geometry.reconstruct_backbone` when a sample is a CA trace):
      ``dssp_helix`` (H/G/I), ``dssp_strand`` (E/B), ``dssp_helix_runs7`` (residues in helices of
      >= 7), ``dssp_strand_runs3`` (residues in E runs of >= 3), averaged over samples;
      ``dssp_backend`` (``"auto"``, ``"mkdssp"``, ``"pydssp"``; ``None`` skips DSSP);
    - handedness (:func:`handedness_pooled`, counts pooled over samples): ``helical_right``,
      ``helical_left``, ``handedness_ratio`` = (right + 1) / (left + 1);
    - shape: ``rg_mean`` (A) and ``rg_ratio_mean`` (:func:`rg_ratio`, ~1 for globular natives);
    - ``helix``/``strand``/``coil``: P-SEA on CA atoms (kept for continuity; DSSP is primary);

    set metrics ``diversity_*`` (:func:`diversity`, over the first ``max_diversity_samples``
    samples if given, to bound the ``n^2`` TM-align cost) and, when a ``reference`` set is given,
    ``novelty_*`` (:func:`novelty`).
    """
    cas = [_as_ca(c) for c in chains]
    out: dict = {"n_samples": float(len(cas))}
    if not cas:
        return out
    out.update(length_stats(cas))
    d = np.concatenate([np.linalg.norm(a[1:] - a[:-1], axis=-1) for a in cas])
    d = d[np.isfinite(d)]
    if len(d):
        out.update({"ca_ca_mean": float(d.mean()), "ca_ca_std": float(d.std()),
                    "ca_ca_outlier_fraction": float((np.abs(d - CA_CA_IDEAL) > CA_CA_TOLERANCE).mean())})
    clashes = np.asarray([clash_count(a) for a in cas], dtype=np.float64)
    out["clashes_mean"] = float(clashes.mean())
    out["clash_free_fraction"] = float((clashes == 0).mean())
    sse = [sse_fractions(a) for a in cas]
    for k in ("helix", "strand", "coil"):
        out[k] = float(np.nanmean([s[k] for s in sse]))
    if dssp_backend is not None:
        from .dssp import dssp_fractions

        fr = [dssp_fractions(c, backend=dssp_backend) for c in track(chains, "DSSP")]
        for k in fr[0]:
            out[k] = float(np.nanmean([f[k] for f in fr]))
    out.update(handedness_pooled(cas))
    out["rg_mean"] = float(np.nanmean([rg(a) for a in cas]))
    out["rg_ratio_mean"] = float(np.nanmean([rg_ratio(a) for a in cas]))
    sub = cas if max_diversity_samples is None else cas[: int(max_diversity_samples)]
    for k, v in diversity(sub, threshold=diversity_threshold).items():
        if k != "n_samples":
            out[f"diversity_{k}"] = float(v)
    if reference is not None and len(reference) > 0:
        for k, v in novelty(cas, reference).items():
            out[f"novelty_{k}"] = float(v)
    return out


__all__ = [
    "LDDT_THRESHOLDS", "kabsch", "ca_rmsd", "tm_align", "tm_score", "tm_d0", "tm_score_matched", "ca_lddt",
    "clash_count", "ca_ca_stats", "rg", "rg_ratio", "ca_torsions", "handedness", "handedness_pooled",
    "sse_labels", "sse_fractions", "pairwise_tm", "diversity", "novelty", "length_stats", "backbone_metrics",
]
