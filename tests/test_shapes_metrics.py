"""Metrics of the ``shapes`` domain (domains/shapes/metrics.py).

Chamfer and exact EMD against brute force; Sinkhorn's certified bracket around the exact EMD;
the PointFlow set metrics on cases with known answers (a set against itself, two samples of one
distribution, disjoint families); the parameter-recovery oracle on clean, jittered, noise and
wrong-family clouds."""
import itertools

import numpy as np
import pytest
import torch

from domains.shapes import data as D
from domains.shapes import metrics as M

pytest.importorskip("scipy.optimize")
needs_shapes = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(m) is None for m in ("trimesh", "manifold3d")),
    reason="trimesh and manifold3d (the `shapes` extra) are not installed")


def _clouds(B, n, seed):
    return torch.rand(B, n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_chamfer_matches_brute_force():
    x, y = _clouds(3, 7, 0), _clouds(3, 11, 1)
    got = M.chamfer_distance(x, y)
    for b in range(3):
        d = [[float(((x[b, i] - y[b, j]) ** 2).sum()) for j in range(11)] for i in range(7)]
        ref = np.mean([min(r) for r in d]) + np.mean([min(c) for c in zip(*d)])
        assert got[b].item() == pytest.approx(ref, rel=1e-12)
    assert torch.allclose(M.chamfer_distance(y, x), got)
    assert M.chamfer_distance(x[0], x[0]).item() == pytest.approx(0.0, abs=1e-12)
    # squared convention: scaling the clouds by 2 multiplies CD by 4
    assert torch.allclose(M.chamfer_distance(2 * x, 2 * y), 4 * got)


def test_exact_emd_matches_brute_force_over_permutations():
    x, y = _clouds(2, 6, 2), _clouds(2, 6, 3)
    got = M.emd_exact(x, y)
    for b in range(2):
        c = torch.cdist(x[b], y[b]).numpy()
        ref = min(c[range(6), list(p)].mean() for p in itertools.permutations(range(6)))
        assert got[b].item() == pytest.approx(ref, rel=1e-12)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(M.emd_exact(x, y[:, perm]), got)
    assert M.emd_exact(x[0], x[0]).item() == 0.0
    assert M.chamfer_distance(x, y).shape == (2,)
    with pytest.raises(ValueError, match="equal size"):
        M.emd_exact(_clouds(1, 5, 0), _clouds(1, 6, 0))


@needs_shapes
def test_sinkhorn_brackets_the_exact_emd():
    rng = np.random.default_rng(1)
    chair = D.build_shape("chair", D.random_params("chair", rng)).mesh
    table = D.build_shape("table", D.random_params("table", rng)).mesh
    n, eps = 128, 1e-3
    x = torch.stack([D.sample_points(chair, n, 1)[0], D.sample_points(chair, n, 1)[0]]).double()
    y = torch.stack([D.sample_points(table, n, 2)[0], D.sample_points(chair, n, 3)[0]]).double()
    exact = M.emd_exact(x, y)
    r = M.sinkhorn_emd(x, y, eps)
    assert (r.lower <= exact + 1e-10).all() and (exact <= r.cost + 1e-10).all()  # certified bracket
    assert (r.gap <= 0.01 * exact + 1e-12).all()  # stopped at rtol = 1%
    assert (r.cost - exact <= M.sinkhorn_error_bound(n, eps)).all()  # the a priori bound
    same = M.sinkhorn_emd(x[:1], x[:1], eps)
    assert same.cost.item() < 5e-3 and same.lower.item() <= 1e-12


def test_mmd_cov_and_one_nna_definitions():
    # 3 samples x 4 references: samples 0, 1 nearest to ref 0, sample 2 nearest to ref 3
    d = torch.tensor([[0.1, 0.5, 0.9, 0.7], [0.2, 0.4, 0.8, 0.6], [0.9, 0.9, 0.3, 0.2]])
    r = M.mmd_cov(d)
    assert r["cov"] == 0.5 and r["mmd"] == pytest.approx((0.1 + 0.4 + 0.3 + 0.2) / 4)
    assert r["mmd_smp"] == pytest.approx((0.1 + 0.2 + 0.2) / 3)
    # two well separated clusters -> 1-NNA 1; interleaved -> 0
    a, b = torch.tensor([[0.0], [0.1]]), torch.tensor([[5.0], [5.1]])
    dist = lambda u, v: (u - v.t()).abs()  # noqa: E731
    assert M.one_nna(dist(a, a), dist(a, b), dist(b, b))["acc"] == 1.0
    a, b = torch.tensor([[0.0], [5.0]]), torch.tensor([[0.1], [5.1]])
    assert M.one_nna(dist(a, a), dist(a, b), dist(b, b))["acc"] == 0.0


@needs_shapes
def test_set_metrics_on_known_cases():
    fams = (D.BOX, D.TORUS, D.CYLINDER, D.SUPERQUADRIC)
    kw = dict(families=fams, n_points=64, per_family=8)
    a, b = D.ShapeDataset(seed=0, **kw).points, D.ShapeDataset(seed=1, **kw).points  # one distribution
    same = M.set_metrics(a, a, emd_method="exact")
    assert same["COV-CD"] == 1.0 and same["COV-EMD"] == 1.0
    assert same["MMD-CD"] == pytest.approx(0.0, abs=1e-8) and same["MMD-EMD"] == pytest.approx(0.0, abs=1e-12)
    two = M.set_metrics(a, b, emd_method="exact")
    assert 0.3 <= two["1-NNA-CD"] <= 0.7 and 0.3 <= two["1-NNA-EMD"] <= 0.7
    assert two["COV-CD"] >= 0.4 and two["MMD-CD"] > 0
    boxes = D.ShapeDataset(families=(D.BOX,), n_points=64, per_family=16, seed=0).points
    tori = D.ShapeDataset(families=(D.TORUS,), n_points=64, per_family=16, seed=0).points
    far = M.set_metrics(boxes, tori, emd_method="exact")
    assert far["1-NNA-CD"] >= 0.95 and far["1-NNA-EMD"] >= 0.95  # ~100% (64-point clouds: measured 1.0 / 0.97)
    assert far["MMD-CD"] > 2 * two["MMD-CD"]  # 64-point clouds: a large sampling floor (measured 0.054 vs 0.025)
    # the Sinkhorn EMD matrix agrees with the exact one (to its tolerance) on a small block
    ex = M.pairwise_distances(a[:3], b[:3], "emd", emd_method="exact")
    sk = M.pairwise_distances(a[:3], b[:3], "emd", emd_method="sinkhorn", eps=2e-3)
    assert (sk >= ex - 1e-6).all() and (sk <= 1.02 * ex + 1e-6).all()


def test_normalize_box():
    p = M.normalize_box(_clouds(2, 50, 4) * torch.tensor([3.0, 1.0, 0.5]) + 7)
    ext = p.amax(1) - p.amin(1)
    assert torch.allclose(ext.amax(1), torch.ones(2, dtype=p.dtype))
    assert torch.allclose(p.amax(1) + p.amin(1), torch.zeros(2, 3, dtype=p.dtype), atol=1e-12)


@needs_shapes
@pytest.mark.parametrize("family", D.PROCEDURAL_FAMILIES)
def test_parameter_recovery_on_clean_samples(family):
    rng = np.random.default_rng([7, len(family)])
    s = D.build_shape(family, D.random_params(family, rng))
    p, n = D.sample_points(s.mesh, 2048, 0)
    p, _ = D.augment(p, n, D.Augment(rotate=True, scale=None, jitter=0.0), 1)  # a turn about the up axis
    fit = M.fit_params(p, family)
    err = M.param_error(family, fit.params, s.params)
    assert err < 0.005 and fit.rms < 1e-3, (err, fit.rms)


@needs_shapes
def test_parameter_recovery_fails_on_noise_and_other_families():
    rng = np.random.default_rng(0)
    box = D.build_shape(D.BOX, D.random_params(D.BOX, rng))
    p, n = D.sample_points(box.mesh, 2048, 0)
    jit, _ = D.augment(p, n, D.Augment(rotate=False, scale=None, jitter=0.005, jitter_clip=0.02), 0)
    ok = M.fit_params(jit, D.BOX)
    assert M.param_error(D.BOX, ok.params, box.params) < 0.03 and ok.rms < 0.01
    noise = torch.rand(2048, 3, generator=torch.Generator().manual_seed(0)) - 0.5
    bad = M.fit_params(noise, D.BOX)
    assert M.param_error(D.BOX, bad.params, box.params) > 0.15 and bad.rms > 0.05
    torus = D.build_shape(D.TORUS, D.random_params(D.TORUS, rng))
    wrong = M.fit_params(D.sample_points(torus.mesh, 2048, 0)[0], D.BOX)
    assert M.param_error(D.BOX, wrong.params, box.params) > 0.15 and wrong.rms > 0.02
    table = D.build_shape(D.TABLE, D.random_params(D.TABLE, rng))
    chair = D.build_shape(D.CHAIR, D.random_params(D.CHAIR, rng))
    r = M.recover_params(D.sample_points(table.mesh, 2048, 0)[0][None], D.CHAIR, chair.params[None], yaw_starts=[0.0])
    assert r["error"][0] > 0.15 and r["rms"][0] > 0.01


def test_param_error_uses_symmetries():
    assert M.param_error(D.BOX, [0.3, 0.5, 1.0], [1.0, 0.5, 0.3]) == 0.0  # x and z swap under a 90-degree turn
    assert M.param_error(D.CHAIR, [0.5, 0.6, 0.4, 0.3], [0.6, 0.5, 0.4, 0.3]) > 0.05  # a chair's back breaks it
    with pytest.raises(ValueError, match="expected 3 parameters"):
        M.param_error(D.BOX, [1, 2], [1, 2])
