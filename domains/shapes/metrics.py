"""Metrics of the ``shapes`` domain: distances between point clouds, the set metrics of the
point-cloud generation literature, and a parameter-recovery oracle for the procedural families.

Pure torch / numpy / scipy (no CUDA extension): every function runs on CPU, and the torch ones
on whatever device their inputs are on.

**Distances between two clouds** ``X [n, 3]``, ``Y [m, 3]`` (batched ``[B, n, 3]``):

* :func:`chamfer_distance`: ``CD = mean_x min_y |x - y|^2 + mean_y min_x |x - y|^2``, **squared**
  Euclidean distances, the two means **summed** (not averaged). This is the convention of the
  field's reference evaluation, PointFlow's ``metrics/evaluation_metrics.py`` (``distChamfer``,
  reduced as ``dl.mean(dim=1) + dr.mean(dim=1)`` in ``EMD_CD`` / ``_pairwise_EMD_CD_``; Yang et
  al. 2019, "PointFlow: 3D point cloud generation with continuous normalizing flows"), kept by
  LION (Zeng et al. 2022, ``utils/evaluation_metrics_fast.py``) and most later papers.
* :func:`emd_exact`: ``EMD = min over bijections s of mean_i |x_i - y_s(i)|``, the optimal
  matching of two equal-size clouds under the **unsquared** Euclidean cost, divided by the number
  of points (the mean matched distance). Solved exactly with
  ``scipy.optimize.linear_sum_assignment`` (the Hungarian-type LAPJV solver), as in PointFlow's
  CPU fallback ``emd_approx``. PointFlow's and LION's published numbers come from approximate
  CUDA matchers (PointFlow: the auction-style ``match_cost`` / N; LION: PyTorchEMD), which
  report the cost of a near-optimal matching under the same Euclidean cost.
* :func:`sinkhorn_emd`: the same optimal transport problem (uniform weights; equal to the EMD
  above when ``n = m``: an optimal plan of the assignment LP is a permutation) solved by
  entropic regularisation (Cuturi 2013) in the log domain with epsilon-scaling (Schmitzer 2019),
  with a **certified** bracket per pair: ``lower <= EMD <= cost``. ``cost`` is the transport
  cost of the Sinkhorn plan rounded onto the exact marginals (Altschuler, Weed & Rigollet 2017,
  Algorithm 2), a feasible plan, so never below the EMD; ``lower`` is the dual value of the
  c-transformed Sinkhorn potentials, feasible for the unregularised dual, so never above it.
  A priori (converged plan): ``cost - EMD <= eps * log(n)`` (:func:`sinkhorn_error_bound`; the
  entropy of a coupling of two uniform n-point measures lies in ``[log n, 2 log n]``).

**Set metrics** (:func:`set_metrics`) between a generated set ``S`` and a reference set ``R``
follow PointFlow's ``compute_all_metrics`` / ``lgan_mmd_cov`` / ``knn`` (from Achlioptas et al.
2018 and Lopez-Paz & Oquab 2017), which LION reuses unchanged, with ``D`` = CD or EMD:

* ``MMD = mean over r in R of min over s in S of D(s, r)`` (lower is better);
* ``COV = |{argmin over r of D(s, r) : s in S}| / |R|`` (the fraction of references that are
  the nearest reference of some sample; higher is better);
* ``1-NNA``: leave-one-out accuracy of the 1-nearest-neighbour classifier on ``S u R`` (each
  cloud labelled by its set; 50% is ideal, 100% means disjoint sets). Ties go to the reference
  set (the lower index in PointFlow's ``[R, S]`` ordering).

PointFlow evaluates on clouds normalised with the data set's statistics; LION (``norm_box``)
normalises each cloud to its bounding box: :func:`normalize_box` (centre 0, longest side 1).

**Parameter recovery** (:func:`fit_params`, :func:`param_error`, :func:`recover_params`): a
least-squares fit (``scipy.optimize.least_squares``) of a procedural family's signed distance
(:func:`domains.shapes.data.parts_sdf`) to the points, over the family's normalised parameters,
a rotation about the up axis and a small shift; the error is the mean relative parameter error,
minimised over the family's symmetric re-labellings. Clean samples give errors near 0 (the
meshes are polygons: ~1e-3), noise and other families give large errors and large residuals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from . import data as D


def _batch(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[-1] != 3:
        raise ValueError(f"expected point clouds [B, n, 3] or [n, 3], got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        x = x.double()
    return x


def _pair(x, y):
    x, y = _batch(x), _batch(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"batch sizes differ: {x.shape[0]} and {y.shape[0]}")
    dt = torch.promote_types(x.dtype, y.dtype)
    return x.to(dt), y.to(dt)


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``|x_i - y_j|^2`` of ``x [B, n, 3]``, ``y [B, m, 3]`` ``-> [B, n, m]`` (clamped at 0), by
    ``|x|^2 + |y|^2 - 2 x.y`` after moving both clouds by ``x``'s centroid (less cancellation;
    float32 inputs keep ~1e-8 absolute accuracy on unit-size clouds)."""
    o = x.mean(dim=1, keepdim=True)
    x, y = x - o, y - o
    xx = (x * x).sum(-1)
    yy = (y * y).sum(-1)
    return (xx[:, :, None] + yy[:, None, :] - 2 * x @ y.transpose(1, 2)).clamp_min_(0.0)


def chamfer_distance(x, y) -> torch.Tensor:
    """Chamfer distance, PointFlow's convention (squared distances, the two means summed):
    ``x [B, n, 3]`` (or ``[n, 3]``), ``y [B, m, 3]`` ``-> [B]``."""
    x, y = _pair(x, y)
    d = squared_distances(x, y)
    return d.min(dim=2).values.mean(dim=1) + d.min(dim=1).values.mean(dim=1)


def emd_exact(x, y) -> torch.Tensor:
    """Exact EMD of equal-size clouds (mean Euclidean distance of the optimal matching, by
    ``scipy.optimize.linear_sum_assignment`` in float64): ``[B, n, 3]`` x2 ``-> [B]`` (float64,
    on ``x``'s device). Cost O(n^3) per pair: ~0.1 s at n = 512, seconds at n = 2048 on a CPU."""
    from scipy.optimize import linear_sum_assignment

    x, y = _pair(x, y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"EMD needs clouds of equal size, got {x.shape[1]} and {y.shape[1]} points")
    out = []
    for a, b in zip(x.detach().double().cpu().numpy(), y.detach().double().cpu().numpy()):
        c = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
        r, s = linear_sum_assignment(c)
        out.append(c[r, s].mean())
    return torch.tensor(out, dtype=torch.float64, device=x.device)


def sinkhorn_error_bound(n: int, eps: float) -> float:
    """A priori bound ``eps * log(n)`` on ``cost - EMD`` of a converged Sinkhorn plan between two
    uniform ``n``-point measures (``<C, P_eps> - eps H(P_eps) <= <C, P*> - eps H(P*)`` with
    ``H(P*) = log n`` for the optimal permutation and ``H <= 2 log n`` for any coupling)."""
    return float(eps) * math.log(n)


@dataclass
class SinkhornResult:
    """``cost [B]``: transport cost of a feasible plan (the estimate; ``>= EMD``), ``lower [B]``:
    a dual lower bound (``<= EMD``), ``iterations``: Sinkhorn iterations at the final epsilon,
    ``marginal_error [B]``: L1 violation of the row marginals before rounding."""

    cost: torch.Tensor
    lower: torch.Tensor
    iterations: int
    marginal_error: torch.Tensor

    @property
    def gap(self) -> torch.Tensor:
        """Certified bound on ``cost - EMD`` per pair (``cost - lower >= 0``)."""
        return self.cost - self.lower


def sinkhorn_emd(x, y, eps: float = 1e-3, *, max_iter: int = 2000, rtol: float = 0.01, scaling: float = 0.5,
                 stage_iter: int = 10, check_every: int = 10) -> SinkhornResult:
    """Entropic OT estimate of the EMD of ``x [B, n, 3]`` and ``y [B, m, 3]`` (uniform weights,
    Euclidean cost; the EMD of :func:`emd_exact` when ``n = m``).

    Log-domain Sinkhorn: ``f_i = -e log sum_j b_j exp((g_j - C_ij)/e)``, ``g_j = -e log sum_i a_i
    exp((f_i - C_ij)/e)``, with ``e`` halved (``scaling``) from the largest cost down to ``eps``
    (``stage_iter`` iterations per stage, warm-started), then iterated at ``eps`` until every
    pair's certified gap ``cost - lower`` is at most ``rtol * lower`` (checked every
    ``check_every`` iterations) or ``max_iter``. ``eps`` is in the clouds' length unit: for
    shapes normalised to a unit box, 1e-3 gives gaps ~1e-4 (see the tests). Memory ``B n m``
    entries of the input dtype; pass float64 for tight brackets on CPU."""
    x, y = _pair(x, y)
    B, n, m = x.shape[0], x.shape[1], y.shape[1]
    C = torch.cdist(x, y)  # Euclidean
    log_a, log_b = -math.log(n), -math.log(m)
    f = torch.zeros(B, n, dtype=x.dtype, device=x.device)
    g = torch.zeros(B, m, dtype=x.dtype, device=x.device)

    def update(e):
        nonlocal f, g
        f = -e * torch.logsumexp(log_b + (g[:, None, :] - C) / e, dim=2)
        g = -e * torch.logsumexp(log_a + (f[:, :, None] - C) / e, dim=1)

    e = max(float(C.max()), eps)
    while e > eps:
        for _ in range(stage_iter):
            update(e)
        e *= scaling
    it = 0
    while True:
        update(eps)
        it += 1
        if it % check_every == 0 or it >= max_iter:
            res = _sinkhorn_bracket(C, f, g, eps)
            if it >= max_iter or bool((res[0] - res[1] <= rtol * res[1].abs()).all()):
                break
    cost, lower, err = res
    return SinkhornResult(cost, lower, it, err)


def _sinkhorn_bracket(C, f, g, e):
    """``(cost, lower, row_error)`` of the Sinkhorn potentials ``f [B, n]``, ``g [B, m]``."""
    B, n, m = C.shape
    P = ((f[:, :, None] + g[:, None, :] - C) / e - math.log(n) - math.log(m)).exp()
    a = torch.full((B, n), 1.0 / n, dtype=C.dtype, device=C.device)
    b = torch.full((B, m), 1.0 / m, dtype=C.dtype, device=C.device)
    err = (P.sum(2) - a).abs().sum(1)
    # Altschuler et al. 2017, Algorithm 2: round onto the exact marginals (a feasible plan)
    P = P * torch.clamp(a / P.sum(2).clamp_min(1e-300), max=1.0)[:, :, None]
    P = P * torch.clamp(b / P.sum(1).clamp_min(1e-300), max=1.0)[:, None, :]
    ea, eb = a - P.sum(2), b - P.sum(1)
    P = P + ea[:, :, None] * eb[:, None, :] / ea.sum(1).clamp_min(1e-300)[:, None, None]
    cost = (P * C).sum((1, 2))
    # c-transforms of f: a feasible dual pair (f' + g' <= C), hence a lower bound
    g2 = (C - f[:, :, None]).min(dim=1).values
    f2 = (C - g2[:, None, :]).min(dim=2).values
    return cost, f2.mean(1) + g2.mean(1), err


# ----------------------------------------------------------------------------------------------
# set metrics
# ----------------------------------------------------------------------------------------------
def normalize_box(points) -> torch.Tensor:
    """Per-cloud bounding-box normalisation ``[B, n, 3] -> [B, n, 3]``: box centre to 0, longest
    side to 1 (LION's ``norm_box``: ``0.5 * normalize_point_clouds(mode="shape_bbox")``)."""
    p = _batch(points)
    lo, hi = p.min(dim=1, keepdim=True).values, p.max(dim=1, keepdim=True).values
    size = (hi - lo).amax(dim=2, keepdim=True).clamp_min(1e-12)
    return (p - (lo + hi) / 2) / size


def pairwise_distances(a, b, distance: str = "cd", *, emd_method: str = "sinkhorn", eps: float = 1e-3,
                       batch_size: int = 64) -> torch.Tensor:
    """``D[i, j] = distance(a[i], b[j])`` for sets ``a [Na, n, 3]``, ``b [Nb, m, 3]`` ``-> [Na, Nb]``
    (on ``a``'s device and dtype). ``distance``: ``"cd"`` (:func:`chamfer_distance`) or ``"emd"``
    (``emd_method="sinkhorn"``: :func:`sinkhorn_emd`'s ``cost`` at ``eps``; ``"exact"``:
    :func:`emd_exact`). ``batch_size`` pairs are evaluated at a time."""
    a, b = _batch(a), _batch(b).to(a.dtype)
    if distance not in ("cd", "emd") or emd_method not in ("sinkhorn", "exact"):
        raise ValueError(f"distance must be 'cd' or 'emd' and emd_method 'sinkhorn' or 'exact', got {distance!r}, {emd_method!r}")
    Na, Nb = a.shape[0], b.shape[0]
    ii, jj = torch.meshgrid(torch.arange(Na), torch.arange(Nb), indexing="ij")
    ii, jj = ii.reshape(-1), jj.reshape(-1)
    out = torch.empty(Na * Nb, dtype=a.dtype, device=a.device)
    for s in range(0, Na * Nb, batch_size):
        i, j = ii[s:s + batch_size], jj[s:s + batch_size]
        x, y = a[i.to(a.device)], b[j.to(b.device)]
        if distance == "cd":
            v = chamfer_distance(x, y)
        elif emd_method == "exact":
            v = emd_exact(x, y)
        else:
            v = sinkhorn_emd(x, y, eps).cost
        out[s:s + batch_size] = v.to(out.dtype)
    return out.reshape(Na, Nb)


def mmd_cov(d_sr: torch.Tensor) -> dict:
    """MMD and COV from ``d_sr [N_sample, N_ref]`` (PointFlow's ``lgan_mmd_cov``): ``mmd`` = mean
    over references of the distance to the nearest sample, ``cov`` = fraction of references that
    are some sample's nearest, ``mmd_smp`` = mean over samples of the distance to the nearest
    reference."""
    d = torch.as_tensor(d_sr)
    nearest_ref = d.argmin(dim=1)
    return {"mmd": float(d.min(dim=0).values.mean()), "cov": nearest_ref.unique().numel() / d.shape[1],
            "mmd_smp": float(d.min(dim=1).values.mean())}


def one_nna(d_rr: torch.Tensor, d_rs: torch.Tensor, d_ss: torch.Tensor) -> dict:
    """1-NN two-sample accuracy (PointFlow's ``knn`` with k = 1): references labelled 1, samples 0,
    each point classified by its nearest other point in ``[R, S]`` (ties to the lower index, a
    reference). ``d_rr [Nr, Nr]``, ``d_rs [Nr, Ns]``, ``d_ss [Ns, Ns]``. Returns ``acc`` (the
    1-NNA), ``acc_ref`` and ``acc_sample`` (the accuracies on each set)."""
    d_rr, d_rs, d_ss = (torch.as_tensor(t, dtype=torch.float64) for t in (d_rr, d_rs, d_ss))
    nr, ns = d_rr.shape[0], d_ss.shape[0]
    M = torch.cat([torch.cat([d_rr, d_rs], 1), torch.cat([d_rs.t(), d_ss], 1)], 0).clone()
    M.fill_diagonal_(float("inf"))
    label = torch.cat([torch.ones(nr), torch.zeros(ns)])
    pred = label[M.argmin(dim=0)]
    correct = (pred == label).double()
    return {"acc": float(correct.mean()), "acc_ref": float(correct[:nr].mean()), "acc_sample": float(correct[nr:].mean())}


def set_metrics(samples, refs, distances: Sequence[str] = ("cd", "emd"), *, emd_method: str = "sinkhorn",
                eps: float = 1e-3, batch_size: int = 64) -> dict:
    """PointFlow / LION set metrics of ``samples [Ns, n, 3]`` against ``refs [Nr, n, 3]``:
    ``{"MMD-CD", "COV-CD", "1-NNA-CD", "MMD-EMD", "COV-EMD", "1-NNA-EMD"}`` (fractions, not
    percent; 1-NNA ideal 0.5) for each of ``distances``, plus ``"1-NNA-<D>-ref"`` /
    ``"-sample"``. Clouds are used as given (normalise them first, e.g. :func:`normalize_box`).
    Cost: ``(Ns + Nr)^2`` distances per metric."""
    out = {}
    for dist in distances:
        kw = dict(distance=dist, emd_method=emd_method, eps=eps, batch_size=batch_size)
        d_rs = pairwise_distances(refs, samples, **kw)
        d_rr = pairwise_distances(refs, refs, **kw)
        d_ss = pairwise_distances(samples, samples, **kw)
        mc = mmd_cov(d_rs.t())
        nn = one_nna(d_rr, d_rs, d_ss)
        tag = dist.upper()
        out.update({f"MMD-{tag}": mc["mmd"], f"COV-{tag}": mc["cov"], f"1-NNA-{tag}": nn["acc"],
                    f"1-NNA-{tag}-ref": nn["acc_ref"], f"1-NNA-{tag}-sample": nn["acc_sample"]})
    return out


# ----------------------------------------------------------------------------------------------
# parameter recovery
# ----------------------------------------------------------------------------------------------
_ROT_SYMMETRIC = (D.CYLINDER, D.TORUS)  # no yaw to fit


@dataclass
class ParamFit:
    """A family fitted to a cloud: ``params [P]`` (in the cloud's units, i.e. normalised when the
    cloud is), ``yaw`` (radians about +y), ``shift [3]``, ``rms`` (root-mean-square signed
    distance of the points to the fitted surface; ~1e-3 on clean unit-box samples), ``success``."""

    family: str
    params: np.ndarray
    yaw: float
    shift: np.ndarray
    rms: float
    success: bool


def _model_residual(theta, pts, tree, family, n_par, fit_yaw, w_model):
    """Two-sided residual: the signed distances of the cloud points to the model surface, then
    ``w_model`` times the distances of the model's surface points (those on the union's surface)
    to their nearest cloud point, which penalises model parts that no points support."""
    par = theta[:n_par]
    yaw = theta[n_par] if fit_yaw else 0.0
    shift = theta[-3:]
    parts = D.family_parts(family, par)
    c = D.parts_bounds(parts).mean(axis=0)
    cs, sn = math.cos(yaw), math.sin(yaw)
    R = np.array([[cs, 0.0, sn], [0.0, 1.0, 0.0], [-sn, 0.0, cs]])
    q = pts @ R + c + shift  # R^T p as rows
    r_data = D.parts_sdf(parts, q)
    if tree is None or w_model == 0:
        return r_data
    m = np.concatenate([pr.surface_points() for pr in parts])
    on_surface = D.parts_sdf(parts, m) > -1e-9 * max(1.0, float(np.abs(m).max()))
    back = (m - c - shift) @ R.T  # model frame -> cloud frame
    r_model = np.where(on_surface, tree.query(back)[0], 0.0)
    return np.concatenate([r_data, w_model * r_model])


def fit_params(points, family: str, *, yaw_starts: Optional[Sequence[float]] = None, n_starts: int = 4,
               n_fit: int = 1024, n_coarse: int = 256, seed: int = 0, max_nfev: int = 200,
               w_model: float = 0.3) -> ParamFit:
    """Fit ``family``'s surface to ``points [n, 3]`` by least squares on the signed distance.

    Unknowns: the family's parameters, the yaw (not for cylinders and tori) and a shift. The
    model point of a cloud point p is ``R(yaw)^T p + c(params) + shift`` (``c``: the centre of
    the family's analytic bounds, where normalisation put the origin). Two stages:

    1. from the middle of the family's ranges, scaled to the cloud's bounding-box size, at each
       of ``yaw_starts`` (default: the ``n_starts`` best of 16 yaws 22.5 degrees apart, ranked by
       the starting cost): a two-sided fit on ``n_coarse`` points (their signed distances, plus
       ``w_model`` times the distances of the model's own surface points to the cloud; without
       this side a part that no point touches, e.g. a leg longer than the data's, costs
       nothing); the lowest cost wins;
    2. a one-sided refinement on ``n_fit`` points (signed distances only: the model-side
       distances are biased by the sampling gaps of the cloud).

    ``rms`` is measured on all the points. Subsets are drawn with ``seed``."""
    from scipy.optimize import least_squares
    from scipy.spatial import cKDTree

    fam = D._family(family)
    pts = np.asarray(torch.as_tensor(points).detach().cpu(), dtype=np.float64).reshape(-1, 3)
    if len(pts) < 8 or not np.isfinite(pts).all():
        raise ValueError(f"fit_params: need at least 8 finite points, got {len(pts)} (finite: {bool(np.isfinite(pts).all())})")
    rng = np.random.default_rng(seed)

    def subset(k):
        return pts if len(pts) <= k else pts[rng.choice(len(pts), k, replace=False)]

    size = float((pts.max(0) - pts.min(0)).max())
    lo, hi = np.asarray(fam.ranges, dtype=np.float64).T
    mid = (lo + hi) / 2
    mid_size = float(np.ptp(D.parts_bounds(D.family_parts(family, mid)), axis=0).max())
    length = np.asarray(fam.length)
    init = mid.copy()
    init[length] *= size / mid_size
    p_lo = np.where(length, 1e-3 * size, 0.1)
    p_hi = np.where(length, 3.0 * size, 3.0)
    fit_yaw = family not in _ROT_SYMMETRIC
    n_par = len(init)

    def bounds(y0):
        yaw = ([y0 - 2 * math.pi], [y0 + 2 * math.pi]) if fit_yaw else ([], [])
        return (np.concatenate([p_lo, yaw[0], np.full(3, -0.5 * size)]),
                np.concatenate([p_hi, yaw[1], np.full(3, 0.5 * size)]))

    tree, coarse = cKDTree(pts), subset(n_coarse)
    if not fit_yaw:
        starts = [0.0]
    elif yaw_starts is not None:
        starts = [float(v) for v in yaw_starts]
    else:  # screen 16 yaws by the two-sided cost at the starting parameters
        grid = 2 * math.pi * np.arange(16) / 16
        cost = [np.sum(_model_residual(np.concatenate([init, [y], np.zeros(3)]), coarse, tree, family, n_par, True,
                                       w_model) ** 2) for y in grid]
        starts = list(grid[np.argsort(cost)[:n_starts]])
    best, best_y0 = None, 0.0
    for y0 in starts:
        x0 = np.concatenate([init, [y0] if fit_yaw else [], np.zeros(3)])
        res = least_squares(_model_residual, x0, bounds=bounds(y0), args=(coarse, tree, family, n_par, fit_yaw, w_model),
                            x_scale="jac", max_nfev=max_nfev)
        if best is None or res.cost < best.cost:
            best, best_y0 = res, y0
    res = least_squares(_model_residual, best.x, bounds=bounds(best_y0),
                        args=(subset(n_fit), None, family, n_par, fit_yaw, 0.0), x_scale="jac", max_nfev=max_nfev)
    theta = res.x
    rms = float(np.sqrt(np.mean(_model_residual(theta, pts, None, family, n_par, fit_yaw, 0.0) ** 2)))
    yaw = float(theta[n_par]) if fit_yaw else 0.0
    return ParamFit(family, theta[:n_par].copy(), yaw, theta[-3:].copy(), rms, bool(res.success))


def param_error(family: str, estimate, truth) -> float:
    """Mean relative parameter error ``mean_k |est_k - true_k| / |true_k|``, minimised over the
    family's symmetric re-labellings (e.g. a box's x and z extents swap under a 90-degree turn)."""
    fam = D._family(family)
    est = np.asarray(estimate, dtype=np.float64).reshape(-1)
    tru = np.asarray(truth, dtype=np.float64).reshape(-1)
    if est.shape != tru.shape or len(tru) != len(fam.param_names):
        raise ValueError(f"{family}: expected {len(fam.param_names)} parameters, got {est.shape} and {tru.shape}")
    perms = [tuple(range(len(tru)))] + [tuple(p) for p in fam.symmetries]
    return float(min(np.mean(np.abs(est[list(p)] - tru) / np.abs(tru)) for p in perms))


def recover_params(points, family: str, true_params, **fit_kw) -> dict:
    """Fit ``family`` to each cloud of ``points [B, n, 3]`` and compare with ``true_params
    [B, P]`` (normalised, e.g. :class:`~domains.shapes.data.ShapeDataset`'s ``params`` columns):
    ``{"error": [B] mean relative errors, "rms": [B] fit residuals, "params": [B, P] fitted}``
    (numpy arrays)."""
    pts = _batch(points)
    tp = np.asarray(torch.as_tensor(true_params).detach().cpu(), dtype=np.float64).reshape(pts.shape[0], -1)
    fits = [fit_params(p, family, **fit_kw) for p in pts]
    return {"error": np.array([param_error(family, f.params, t) for f, t in zip(fits, tp)]),
            "rms": np.array([f.rms for f in fits]), "params": np.stack([f.params for f in fits])}
