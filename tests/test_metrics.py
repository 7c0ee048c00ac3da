"""workbench.metrics against closed forms."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from workbench import metrics


def _rand_spd(d, rng):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_frechet_gaussians_closed_form_diagonal():
    # commuting (diagonal) covariances: d^2 = |mu1-mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = metrics.frechet_distance_gaussians(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(want, rel=1e-12)


def test_frechet_gaussians_matches_sqrtm_formula():
    rng = np.random.default_rng(0)
    d = 6
    c1, c2 = _rand_spd(d, rng), _rand_spd(d, rng)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    want = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * covmean)
    assert metrics.frechet_distance_gaussians(mu1, c1, mu2, c2) == pytest.approx(want, rel=1e-8)
    # identical Gaussians, including a singular covariance
    c = np.diag([1.0, 0.0, 2.0])
    assert metrics.frechet_distance_gaussians(np.ones(3), c, np.ones(3), c) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_from_samples():
    g = torch.Generator().manual_seed(0)
    n, d = 20000, 3
    L1 = torch.tensor([[1.0, 0, 0], [0.5, 1.0, 0], [0.0, 0.3, 0.5]], dtype=torch.float64)
    L2 = torch.tensor([[2.0, 0, 0], [0.0, 1.0, 0], [0.2, 0.0, 1.0]], dtype=torch.float64)
    mu2 = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    a = torch.randn(n, d, generator=g, dtype=torch.float64) @ L1.T
    b = torch.randn(n, d, generator=g, dtype=torch.float64) @ L2.T + mu2
    want = metrics.frechet_distance_gaussians(np.zeros(d), (L1 @ L1.T).numpy(), mu2.numpy(), (L2 @ L2.T).numpy())
    assert metrics.frechet_distance(a, b) == pytest.approx(want, rel=0.05)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="same dimension"):
        metrics.frechet_distance(a, b[:, :2])


def test_wasserstein_1d_exact_unequal_sizes():
    # a = {0, 1}, b = {0, 1, 2}: quantiles a: [0,.5)->0, [.5,1)->1; b: [0,1/3)->0, [1/3,2/3)->1, [2/3,1)->2
    # W2^2 = (1/2-1/3)*1 + (1-2/3)*1 = 1/6 + 1/3 = 1/2
    w = metrics.wasserstein_1d(torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[2.0, 0.0, 1.0]], dtype=torch.float64))
    assert float(w) == pytest.approx(0.5)


def test_sliced_wasserstein_identical_and_shift():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2000, 2, generator=g)
    assert metrics.sliced_wasserstein(a, a) == pytest.approx(0.0, abs=1e-12)
    # a shift by vector s: every projection shifts by theta.s, so SW_2^2 = E (theta.s)^2 = |s|^2 / d
    s = torch.tensor([3.0, 4.0])
    sw = metrics.sliced_wasserstein(a, a + s, n_projections=4000)
    assert sw == pytest.approx(5.0 / math.sqrt(2), rel=0.03)
    # deterministic with the default generator
    assert metrics.sliced_wasserstein(a, a + s) == metrics.sliced_wasserstein(a, a + s)


def test_sliced_wasserstein_1d_equals_w2():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(500, 1, generator=g)
    b = 0.5 * torch.randn(300, 1, generator=g) + 2.0  # n != m: quantile matching
    w2 = math.sqrt(float(metrics.wasserstein_1d(a.T.double(), b.T.double())[0]))
    assert metrics.sliced_wasserstein(a, b, n_projections=7) == pytest.approx(w2, rel=1e-12)
    # a pure shift in 1-D: W2 = shift exactly
    assert metrics.sliced_wasserstein(a, a + 1.5, n_projections=3) == pytest.approx(1.5, rel=1e-7)  # float32 input round-off
    # against scipy's 1-D W1 sanity: W2 >= W1
    from scipy.stats import wasserstein_distance

    assert metrics.sliced_wasserstein(a, b) >= wasserstein_distance(a[:, 0].numpy(), b[:, 0].numpy()) - 1e-9


def test_mmd_same_and_different():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(800, 2, generator=g)
    b = torch.randn(700, 2, generator=g)
    c = torch.randn(700, 2, generator=g) + torch.tensor([1.0, 0.0])
    same = metrics.mmd_rbf(a, b)
    diff = metrics.mmd_rbf(a, c)
    assert abs(same) < 5e-3
    assert diff > 0.05 and diff > 20 * abs(same)
    # fixed bandwidths: identical sets give exactly -2 * (mean off-diagonal kernel) / (n-1) style small values
    assert abs(metrics.mmd_rbf(a, a, bandwidths=[1.0])) < 1e-2
    with pytest.raises(ValueError, match="positive"):
        metrics.mmd_rbf(a, b, bandwidths=[0.0])


def test_precision_recall_identical_and_disjoint():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(500, 4, generator=g)
    pr = metrics.precision_recall_knn(a, a.clone(), k=3)
    assert pr == {"precision": 1.0, "recall": 1.0}
    far = metrics.precision_recall_knn(a, a + 100.0, k=3)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    # a mode-collapsed fake (half the support): high precision, recall ~ 1/2
    real = torch.randn(2000, 1, generator=g)
    fake = real[real[:, 0] > 0][:800]
    pr = metrics.precision_recall_knn(real, fake, k=3)
    assert pr["precision"] > 0.95 and 0.35 < pr["recall"] < 0.65


def test_energy_distance_and_test():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(200, 2, generator=g)
    b = torch.randn(200, 2, generator=g)
    assert metrics.energy_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    # 1-D closed form for point masses: E(delta_0, delta_s) = 2|s|
    assert metrics.energy_distance(torch.zeros(3, 1), torch.full((4, 1), 2.0)) == pytest.approx(4.0)
    same = metrics.energy_test(a, b, n_permutations=100)
    diff = metrics.energy_test(a, b + 1.0, n_permutations=100)
    assert same["p_value"] > 0.01
    assert diff["p_value"] < 0.02 and diff["energy"] > same["energy"]


def test_input_validation():
    with pytest.raises(ValueError, match="NaN"):
        metrics.sliced_wasserstein(torch.tensor([[float("nan"), 0.0]]), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="k="):
        metrics.precision_recall_knn(torch.zeros(3, 2), torch.zeros(3, 2), k=3)
