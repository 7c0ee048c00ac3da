"""Domain-agnostic sample-quality metrics between two sets of points or features.

Every function takes two sample sets ``a`` ``[n, ...]`` and ``b`` ``[m, ...]`` (torch tensors
or numpy arrays; trailing dimensions are flattened to ``d``), computes in float64 on the
CPU and returns Python floats (or a dict of floats). Which feature network produced the
features (Inception, a domain-specific encoder, raw coordinates) is the caller's business.

* :func:`sliced_wasserstein` -- sliced 2-Wasserstein distance (Rabin et al. 2011;
  Bonneel et al. 2015), exact 1-D quantile matching for ``n != m``.
* :func:`mmd_rbf` -- unbiased squared maximum mean discrepancy with a mixture of RBF
  kernels (Gretton et al. 2012, JMLR, eq. 3), median-heuristic bandwidths.
* :func:`frechet_distance` -- Frechet (2-Wasserstein) distance between Gaussians fitted to
  features (Dowson & Landau 1982; the FID of Heusel et al. 2017 with Inception features).
* :func:`precision_recall_knn` -- improved precision and recall with k-NN manifolds
  (Kynkaanniemi et al. 2019).
* :func:`energy_distance` / :func:`energy_test` -- energy distance and its two-sample
  permutation test (Szekely & Rizzo 2004, 2013).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "sliced_wasserstein",
    "wasserstein_1d",
    "mmd_rbf",
    "frechet_distance",
    "frechet_distance_gaussians",
    "precision_recall_knn",
    "energy_distance",
    "energy_test",
]

ArrayLike = Union[Tensor, np.ndarray, Sequence]


def _as_2d(x: ArrayLike, name: str) -> Tensor:
    """``[n, ...]`` array-like -> float64 CPU tensor ``[n, d]``."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x.detach()).to("cpu", torch.float64)
    if t.ndim == 0:
        raise ValueError(f"{name} must have shape [n, d] (or [n, ...]), got a scalar")
    if t.ndim == 1:
        t = t[:, None]
    t = t.reshape(t.shape[0], -1)
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def _pair(a: ArrayLike, b: ArrayLike) -> tuple[Tensor, Tensor]:
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same dimension, got {a.shape[1]} and {b.shape[1]}")
    return a, b


def _generator(generator: Optional[torch.Generator], seed: int = 0) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(seed)


# -- sliced Wasserstein ---------------------------------------------------------------------
def wasserstein_1d(u: Tensor, v: Tensor) -> Tensor:
    """Squared 2-Wasserstein distance between 1-D empirical distributions, batched.

    ``W_2^2 = int_0^1 (F_u^{-1}(q) - F_v^{-1}(q))^2 dq`` computed exactly: both empirical
    quantile functions are piecewise constant with breaks at ``i/n`` and ``j/m``, so the
    integral is a finite sum over the merged breakpoints (plain sorted matching when
    ``n == m``).

    Args:
        u: ``[P, n]`` samples (one row per projection).
        v: ``[P, m]`` samples.
    Returns:
        ``[P]`` squared distances.
    """
    u, _ = torch.sort(u, dim=-1)
    v, _ = torch.sort(v, dim=-1)
    n, m = u.shape[-1], v.shape[-1]
    if n == m:
        return ((u - v) ** 2).mean(-1)
    q = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n, torch.arange(1, m + 1, dtype=torch.float64) / m])
    q, _ = torch.sort(q)
    w = torch.diff(q, prepend=torch.zeros(1, dtype=torch.float64))
    mid = q - 0.5 * w  # a level strictly inside each interval (intervals of zero width get weight 0)
    iu = torch.clamp(torch.floor(mid * n).long(), 0, n - 1)
    iv = torch.clamp(torch.floor(mid * m).long(), 0, m - 1)
    return (((u[..., iu] - v[..., iv]) ** 2) * w).sum(-1)


def sliced_wasserstein(a: ArrayLike, b: ArrayLike, n_projections: int = 256, generator: Optional[torch.Generator] = None) -> float:
    """Sliced 2-Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015, eq. 7).

    ``SW_2(a, b) = sqrt( E_theta W_2^2(theta^T a, theta^T b) )`` with ``theta`` uniform on
    the unit sphere, estimated with ``n_projections`` random directions; each 1-D ``W_2`` is
    exact (:func:`wasserstein_1d`, quantile matching when ``n != m``). In 1-D every
    direction is ``+-1``, so the result equals ``W_2(a, b)`` exactly.

    Args:
        a: ``[n, d]`` (or ``[n, ...]``, flattened) samples.
        b: ``[m, d]`` samples.
        n_projections: number of random directions.
        generator: draws the directions; ``None`` uses a fixed seed (0), so the value is
            deterministic.
    Returns:
        ``SW_2`` as a float (in the units of the data).
    """
    a, b = _pair(a, b)
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    g = _generator(generator)
    theta = torch.randn(n_projections, a.shape[1], generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=1, keepdim=True).clamp_min(1e-300)
    w2 = wasserstein_1d(theta @ a.T, theta @ b.T)
    return float(torch.sqrt(w2.mean().clamp_min(0.0)))


# -- MMD ------------------------------------------------------------------------------------
def _median_distance(a: Tensor, b: Tensor, max_points: int = 1000) -> float:
    z = torch.cat([a, b])
    if len(z) > max_points:
        idx = torch.randperm(len(z), generator=torch.Generator().manual_seed(0))[:max_points]
        z = z[idx]
    d = torch.cdist(z, z)
    iu = torch.triu_indices(len(z), len(z), offset=1)
    d = d[iu[0], iu[1]]
    d = d[d > 0]
    return float(d.median()) if d.numel() else 1.0


def mmd_rbf(a: ArrayLike, b: ArrayLike, bandwidths: Optional[Sequence[float]] = None, *,
            scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> float:
    """Unbiased squared MMD with an average of RBF kernels (Gretton et al. 2012, JMLR, eq. 3).

    ``k(x, y) = mean_h exp(-||x - y||^2 / (2 h^2))``;
    ``MMD_u^2 = sum_{i != j} k(a_i, a_j) / (n(n-1)) + sum_{i != j} k(b_i, b_j) / (m(m-1))
    - 2 sum_{i,j} k(a_i, b_j) / (nm)``. Unbiased: it can be slightly negative, and its
    expectation is 0 when ``a`` and ``b`` come from the same distribution.

    Args:
        a: ``[n, d]`` samples (``n >= 2``).
        b: ``[m, d]`` samples (``m >= 2``).
        bandwidths: kernel widths ``h``; ``None`` uses the median heuristic (median pairwise
            distance of the pooled samples, Gretton et al. 2012 sec. 8) times ``scales``.
    Returns:
        ``MMD_u^2`` as a float (kernel units, at most 2 in magnitude).
    """
    a, b = _pair(a, b)
    n, m = len(a), len(b)
    if n < 2 or m < 2:
        raise ValueError(f"mmd_rbf needs at least 2 samples per set, got {n} and {m}")
    if bandwidths is None:
        med = _median_distance(a, b)
        bandwidths = [med * s for s in scales]
    hs = torch.as_tensor(list(bandwidths), dtype=torch.float64)
    if hs.numel() == 0 or bool((hs <= 0).any()):
        raise ValueError(f"bandwidths must be positive, got {hs.tolist()}")

    def k(x, y):
        d2 = torch.cdist(x, y).pow(2)
        out = torch.zeros_like(d2)
        for h in hs.tolist():  # one [n, m] buffer at a time
            out += torch.exp(-d2 / (2 * h * h))
        return out / len(hs)

    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    t_aa = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    t_bb = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(t_aa + t_bb - 2 * kab.mean())


# -- Frechet distance -------------------------------------------------------------------------
def frechet_distance_gaussians(mu1: ArrayLike, cov1: ArrayLike, mu2: ArrayLike, cov2: ArrayLike) -> float:
    """Frechet (2-Wasserstein squared) distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``
    (Dowson & Landau 1982):

    ``d^2 = ||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^{1/2})``.

    Numerics: ``Tr (C1 C2)^{1/2} = Tr (C1^{1/2} C2 C1^{1/2})^{1/2}``, and the latter matrix is
    symmetric positive semi-definite, so the trace is the sum of the square roots of its
    (clipped non-negative) eigenvalues. This avoids the complex round-off and the
    singular-product failures of ``scipy.linalg.sqrtm(C1 @ C2)`` (which pytorch-fid patches
    with an ``eps`` offset) while giving the same value.

    Args:
        mu1, mu2: ``[d]`` means.
        cov1, cov2: ``[d, d]`` symmetric PSD covariances.
    Returns:
        ``d^2`` as a float (>= 0).
    """
    from scipy import linalg

    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    c1 = np.atleast_2d(np.asarray(cov1, dtype=np.float64))
    c2 = np.atleast_2d(np.asarray(cov2, dtype=np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, cov1 {c1.shape}, mu2 {mu2.shape}, cov2 {c2.shape}")
    if not (np.isfinite(c1).all() and np.isfinite(c2).all() and np.isfinite(mu1).all() and np.isfinite(mu2).all()):
        raise ValueError("means and covariances must be finite")
    c1 = 0.5 * (c1 + c1.T)
    c2 = 0.5 * (c2 + c2.T)
    w1, v1 = linalg.eigh(c1)
    s1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T  # C1^{1/2}
    m = s1 @ c2 @ s1
    ev = linalg.eigvalsh(0.5 * (m + m.T))
    tr_covmean = float(np.sqrt(np.clip(ev, 0.0, None)).sum())
    diff = mu1 - mu2
    val = float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * tr_covmean)
    return max(val, 0.0)


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017,
    "GANs trained by a two time-scale update rule", eq. 6; FID when the features are
    Inception-v3 pool features).

    Means and unbiased (``ddof = 1``) covariances of ``feats_a`` ``[n, d]`` and ``feats_b``
    ``[m, d]`` go into :func:`frechet_distance_gaussians`. Like FID this is the *squared*
    2-Wasserstein distance between the fitted Gaussians. Needs ``n, m >= 2``; for a
    full-rank estimate use ``n, m > d``.

    Returns:
        the distance as a float (>= 0).
    """
    a, b = _pair(feats_a, feats_b)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance needs at least 2 samples per set, got {len(a)} and {len(b)}")
    an, bn = a.numpy(), b.numpy()
    return frechet_distance_gaussians(an.mean(0), np.cov(an, rowvar=False), bn.mean(0), np.cov(bn, rowvar=False))


# -- precision / recall -----------------------------------------------------------------------
def _kth_nn_radius(x: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """Distance of each row of ``x`` ``[n, d]`` to its ``k``-th nearest other row -> ``[n]``."""
    n = len(x)
    if n <= k:
        raise ValueError(f"need more than k={k} samples for k-NN radii, got {n}")
    out = []
    for i in range(0, n, chunk):
        d = torch.cdist(x[i:i + chunk], x)
        # the (k+1)-th smallest includes the point itself at distance 0
        out.append(torch.kthvalue(d, k + 1, dim=1).values)
    return torch.cat(out)


def _coverage(query: Tensor, support: Tensor, radii: Tensor, chunk: int = 2048) -> Tensor:
    """Fraction of ``query`` rows inside at least one ball ``B(support_j, radii_j)``."""
    inside = []
    for i in range(0, len(query), chunk):
        d = torch.cdist(query[i:i + chunk], support)
        inside.append((d <= radii[None]).any(dim=1))
    return torch.cat(inside).double().mean()


def precision_recall_knn(real_feats: ArrayLike, fake_feats: ArrayLike, k: int = 3) -> dict:
    """Improved precision and recall (Kynkaanniemi et al. 2019, "Improved precision and
    recall metric for assessing generative models", eq. 1-3).

    Each set's manifold is the union of balls around its points with radius the distance to
    the ``k``-th nearest neighbour within the set. Precision is the fraction of fake samples
    inside the real manifold (fidelity); recall the fraction of real samples inside the fake
    manifold (coverage).

    Args:
        real_feats: ``[n, d]`` real features (``n > k``).
        fake_feats: ``[m, d]`` generated features (``m > k``).
        k: neighbourhood size (the paper uses 3).
    Returns:
        ``{"precision": float, "recall": float}`` in ``[0, 1]``.
    """
    real, fake = _pair(real_feats, fake_feats)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    r_real = _kth_nn_radius(real, k)
    r_fake = _kth_nn_radius(fake, k)
    return {"precision": float(_coverage(fake, real, r_real)), "recall": float(_coverage(real, fake, r_fake))}


# -- energy distance --------------------------------------------------------------------------
def _energy_from_dist(d: Tensor, n: int) -> Tensor:
    m = d.shape[0] - n
    dxy = d[:n, n:].mean()
    dxx = d[:n, :n].sum() / (n * n)
    dyy = d[n:, n:].sum() / (m * m)
    return 2 * dxy - dxx - dyy


def energy_distance(a: ArrayLike, b: ArrayLike) -> float:
    """Energy distance (Szekely & Rizzo 2004; 2013, eq. 2):
    ``E = 2 E||X - Y|| - E||X - X'|| - E||Y - Y'||`` (V-statistic), ``>= 0`` and 0 iff the
    empirical distributions coincide.

    Args:
        a: ``[n, d]``, b: ``[m, d]``.
    Returns:
        the energy distance as a float (data units).
    """
    a, b = _pair(a, b)
    z = torch.cat([a, b])
    return float(_energy_from_dist(torch.cdist(z, z), len(a)).clamp_min(0.0))


def energy_test(a: ArrayLike, b: ArrayLike, n_permutations: int = 200, generator: Optional[torch.Generator] = None) -> dict:
    """Two-sample permutation test with the energy statistic ``nm/(n+m) E`` (Szekely & Rizzo
    2004, sec. 3).

    The pooled distance matrix is computed once; each permutation relabels the pooled
    samples. The p-value is ``(1 + #{perm stat >= observed}) / (1 + n_permutations)``.

    Args:
        a: ``[n, d]``, b: ``[m, d]``.
        n_permutations: number of random relabelings.
        generator: ``None`` uses a fixed seed (0).
    Returns:
        ``{"statistic": float, "energy": float, "p_value": float}``.
    """
    a, b = _pair(a, b)
    n, m = len(a), len(b)
    z = torch.cat([a, b])
    d = torch.cdist(z, z)
    scale = n * m / (n + m)
    obs = float(_energy_from_dist(d, n)) * scale
    g = _generator(generator)
    count = 0
    for _ in range(int(n_permutations)):
        p = torch.randperm(n + m, generator=g)
        if float(_energy_from_dist(d[p][:, p], n)) * scale >= obs - 1e-12:
            count += 1
    return {"statistic": obs, "energy": max(obs / scale, 0.0), "p_value": (1 + count) / (1 + int(n_permutations))}
