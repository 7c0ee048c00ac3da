"""Exact ground truth: data distributions whose noised marginals and denoisers are closed form.

Both classes describe data ``x_0`` whose every noised marginal under a Gaussian process
``x_t = alpha(t) x_0 + sigma(t) eps`` (:mod:`workbench.processes`) is again a Gaussian
mixture, so the exact posterior mean ``E[x_0 | x_t]`` (the optimal denoiser, the quantity
every network approximates) is available in closed form. Samplers run on these denoisers
have no approximation error, only discretisation error; :mod:`workbench.reference`
integrates the same ODE to tolerance 1e-10.

* :class:`GaussianMixture`: ``p(x_0) = sum_k w_k N(x_0; mu_k, diag(S_k^2))`` on any event
  shape.
* :class:`PointSetMixture`: variable-size point sets ``[n, D]`` with zero centre of mass,
  ``p(x_0) = sum_k w_k N_V(x_0; mu_k(n), s_k^2 P_n)``, Gaussians restricted to the
  zero-CoM subspace ``V_n`` (dimension ``(n - 1) D``; ``P_n`` its orthogonal projector),
  as the E(3)-equivariant molecule / protein models use (Hoogeboom et al. 2022, "EDM for
  molecules", sec. 3; Proteina).

Posterior formulas (per component ``k``, in every dimension of the relevant space; ``a =
alpha(t)``, ``s = sigma(t)``, ``v_k = a^2 S_k^2 + s^2``)::

    p_t(x_t)            = sum_k w_k N(x_t; a mu_k, v_k)
    r_k(x_t)            = w_k N(x_t; a mu_k, v_k) / p_t(x_t)                  (softmax / logsumexp)
    E[x_0 | x_t]        = sum_k r_k (mu_k + a S_k^2 / v_k (x_t - a mu_k))
    E[eps | x_t]        = sum_k r_k s / v_k (x_t - a mu_k)                     (no cancellation at s -> 0)
    grad log p_t(x_t)   = -E[eps | x_t] / s  (Tweedie; Efron 2011)

All computations run in float64 and are cast back to the input dtype.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from .processes import GaussianProcess, append_dims, canonical_prediction, project

__all__ = ["GaussianMixture", "PointSetMixture"]

_F64 = torch.float64


def _times(t, batch: int, device) -> Tensor:
    """``t`` (float, 0-d or ``[B]``) -> float64 ``[B]``."""
    t = torch.as_tensor(t, dtype=_F64, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or have shape [B] = [{batch}], got {tuple(t.shape)}")
    return t


def _alpha_sigma(process: GaussianProcess, t: Tensor) -> tuple[Tensor, Tensor]:
    la, ls = process.log_alpha_sigma(t.to(_F64))
    return la.exp(), ls.exp()


def _draw_components(weights: Tensor, n: int, generator) -> Tensor:
    """``n`` component indices ``[n]`` (``generator``: None, one generator, or ``n`` of them)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(weights, n, replacement=True, generator=generator)
    gens = list(generator)
    if len(gens) != n:
        raise ValueError(f"got {len(gens)} per-sample generators for {n} samples")
    return torch.cat([torch.multinomial(weights, 1, generator=g) for g in gens])


def _randn(shape, generator) -> Tensor:
    from .utils import randn

    return randn(shape, generator=generator, dtype=_F64)


def _make_denoiser(posterior: Callable, process: GaussianProcess, prediction: str, *, masked: bool) -> Callable:
    prediction = canonical_prediction(prediction)

    def model(x: Tensor, t: Tensor, mask: Optional[Tensor] = None, **kw) -> Tensor:
        tb = _times(t, x.shape[0], x.device)
        x64 = x.to(_F64)
        x0, eps = posterior(x64, tb, process, mask) if masked else posterior(x64, tb, process)
        if prediction == "x0":
            out = x0
        elif prediction == "epsilon":
            out = eps
        else:
            out = process.from_x0_eps(x0, eps, prediction, x64, tb)
        return out.to(x.dtype)

    model.prediction = prediction  # type: ignore[attr-defined]
    model.process = process  # type: ignore[attr-defined]
    return model


class GaussianMixture:
    """Gaussian mixture ``p(x) = sum_k w_k N(x; mu_k, diag(S_k^2))`` on event shape ``E``.

    Args:
        means: ``[K, *E]`` component means ``mu_k``.
        stds: ``[K]`` (isotropic) or ``[K, *E]`` (diagonal) component standard deviations
            ``S_k > 0``.
        weights: ``[K]`` non-negative mixture weights (normalised here); default uniform.
    """

    def __init__(self, means, stds, weights=None):
        self.means = torch.as_tensor(means, dtype=_F64)
        if self.means.ndim < 2:
            raise ValueError(f"means must have shape [K, *event], got {tuple(self.means.shape)}")
        K = self.means.shape[0]
        stds = torch.as_tensor(stds, dtype=_F64)
        if stds.shape == (K,):
            stds = append_dims(stds, self.means.ndim).expand_as(self.means)
        if stds.shape != self.means.shape:
            raise ValueError(f"stds must have shape [K] = [{K}] or {tuple(self.means.shape)}, got {tuple(stds.shape)}")
        if not bool((stds > 0).all()):
            raise ValueError("stds must be positive")
        self.stds = stds.clone()
        w = torch.full((K,), 1.0 / K, dtype=_F64) if weights is None else torch.as_tensor(weights, dtype=_F64)
        if w.shape != (K,) or not bool((w >= 0).all()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be {K} non-negative numbers with a positive sum")
        self.weights = w / w.sum()

    # -- basic properties ---------------------------------------------------------------------
    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    def mean(self) -> Tensor:
        """``E[x]`` ``[*E]``."""
        return torch.einsum("k,k...->...", self.weights, self.means)

    def variance(self) -> Tensor:
        """Per-coordinate ``Var[x]`` ``[*E]`` (law of total variance)."""
        m = self.mean()
        second = torch.einsum("k,k...->...", self.weights, self.stds**2 + self.means**2)
        return second - m**2

    # -- sampling and density ---------------------------------------------------------------
    def sample(self, n: int, generator=None, dtype=torch.float64) -> Tensor:
        """Draw ``n`` exact samples ``[n, *E]``. ``generator``: None, a ``torch.Generator`` or
        ``n`` per-sample generators (sample ``i`` then depends only on ``generator[i]``)."""
        k = _draw_components(self.weights, int(n), generator)
        z = _randn((int(n), *self.event_shape), generator)
        return (self.means[k] + self.stds[k] * z).to(dtype)

    def _component_log_prob(self, x: Tensor, means: Tensor, variances: Tensor) -> Tensor:
        """``log N(x_b; means_k, diag(variances_k))`` -> ``[B, K]``; ``means``/``variances``
        ``[K, *E]`` or ``[B, K, *E]``."""
        d = x.unsqueeze(1) - means  # [B, K, *E]
        var = variances.expand_as(d)
        red = tuple(range(2, d.ndim))
        return -0.5 * ((d * d) / var + torch.log(2 * math.pi * var)).sum(dim=red)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density ``[B]`` of ``x`` ``[B, *E]`` (float64)."""
        x = x.to(_F64)
        self._check(x)
        lp = self._component_log_prob(x, self.means, self.stds**2) + torch.log(self.weights)
        return torch.logsumexp(lp, dim=1)

    def marginal(self, process: GaussianProcess, t: float) -> "GaussianMixture":
        """The noised marginal ``p_t`` at scalar time ``t``: a Gaussian mixture with means
        ``a mu_k`` and stds ``sqrt(a^2 S_k^2 + s^2)``."""
        a, s = _alpha_sigma(process, torch.tensor(float(t), dtype=_F64))
        return GaussianMixture(a * self.means, torch.sqrt(a**2 * self.stds**2 + s**2), self.weights)

    # -- exact posterior ------------------------------------------------------------------
    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"expected states of shape [B, {', '.join(map(str, self.event_shape))}], got {tuple(x.shape)}")

    def posterior(self, x_t: Tensor, t, process: GaussianProcess) -> tuple[Tensor, Tensor]:
        """Exact ``(E[x_0 | x_t], E[eps | x_t])``, each ``[B, *E]``, for ``x_t`` ``[B, *E]`` at
        time ``t`` (scalar or ``[B]``) of ``process``. Float64 inside, returned in
        ``x_t.dtype``. Stable at ``sigma -> 0`` and ``alpha -> 0``."""
        dtype = x_t.dtype
        x = x_t.to(_F64)
        self._check(x)
        tb = _times(t, x.shape[0], x.device)
        a, s = _alpha_sigma(process, tb)
        a_ = append_dims(a, x.ndim + 1)  # [B, 1, 1...] against [B, K, *E]
        s_ = append_dims(s, x.ndim + 1)
        mu = self.means.unsqueeze(0)  # [1, K, *E]
        S2 = (self.stds**2).unsqueeze(0)
        v = a_**2 * S2 + s_**2  # [B, K, *E]
        resid = x.unsqueeze(1) - a_ * mu  # [B, K, *E]
        red = tuple(range(2, resid.ndim))
        logp = -0.5 * ((resid * resid) / v + torch.log(2 * math.pi * v)).sum(dim=red) + torch.log(self.weights)
        r = torch.softmax(logp, dim=1)  # responsibilities [B, K]
        r_ = append_dims(r, resid.ndim)
        x0 = (r_ * (mu + a_ * S2 / v * resid)).sum(dim=1)
        eps = (r_ * (s_ / v * resid)).sum(dim=1)
        return x0.to(dtype), eps.to(dtype)

    def x0(self, x_t: Tensor, t, process: GaussianProcess) -> Tensor:
        """Exact posterior mean ``E[x_0 | x_t]`` ``[B, *E]`` (see :meth:`posterior`)."""
        return self.posterior(x_t, t, process)[0]

    def score(self, x_t: Tensor, t, process: GaussianProcess) -> Tensor:
        """``grad log p_t(x_t) = -E[eps | x_t] / sigma(t)`` ``[B, *E]`` (``t`` with ``sigma > 0``)."""
        tb = _times(t, x_t.shape[0], x_t.device)
        _, s = _alpha_sigma(process, tb)
        return -self.posterior(x_t, tb, process)[1] / append_dims(s, x_t.ndim).to(x_t.dtype)

    def denoiser(self, process: GaussianProcess, prediction: str = "x0") -> Callable:
        """The exact model ``model(x [B, *E], t [B], **kw) -> [B, *E]`` in parameterization
        ``prediction`` (``x0 / epsilon / v / velocity / score``), converted from the exact
        ``(x0, eps)`` with ``process.from_x0_eps``; feed it to :func:`workbench.sample`
        with the same ``prediction``. Extra keywords (``mask``, ``cond``) are ignored."""
        return _make_denoiser(self.posterior, process, prediction, masked=False)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, event_shape={self.event_shape})"


class PointSetMixture:
    """Mixture of isotropic Gaussians on zero-centre-of-mass point sets of variable size.

    A state is ``x`` ``[B, N_max, D]`` with ``mask`` ``[B, N_max]`` (``n_i`` real points,
    padding zero). For ``n`` points, component ``k`` has the deterministic centred template
    ``mu_k(n)`` ``[n, D]`` (a helix: point ``j`` at ``(r_k cos(w_k j + phi_k), r_k sin(w_k j
    + phi_k), rise_k j)`` in the first three coordinates, further coordinates 0, then
    centred; for ``D = 1`` only the cosine, for ``D = 2`` the circle) and covariance
    ``s_k^2 P_n`` on the zero-CoM subspace ``V_n = {x : sum_j x_j = 0}`` of dimension
    ``d_n = (n - 1) D`` (``P_n = I - 11^T / n`` acting on points). The density w.r.t.
    Lebesgue measure on ``V_n`` is::

        p(x) = sum_k w_k (2 pi s_k^2)^(-d_n / 2) exp(-|x - mu_k(n)|^2 / (2 s_k^2))

    and the noise of the process also lives in ``V_n`` (``eps = project(randn)``), so the
    formulas of the module docstring hold with ``v_k = a^2 s_k^2 + s^2`` and ``d_n``
    dimensions.

    Args:
        radii: ``[K]`` helix radii ``r_k``.
        stds: ``[K]`` isotropic standard deviations ``s_k``.
        weights: ``[K]`` mixture weights (default uniform).
        dim: ``D`` (default 3).
        angular_steps: ``[K]`` angle increments ``w_k`` (default ``2 pi / (3.6 + k)``).
        rises: ``[K]`` rise per point along the third axis (default ``0.25 (1 + k)``).
        phases: ``[K]`` phases ``phi_k`` (default ``k``).
    """

    def __init__(self, radii, stds, weights=None, *, dim: int = 3, angular_steps=None, rises=None, phases=None):
        self.radii = torch.as_tensor(radii, dtype=_F64).flatten()
        K = len(self.radii)
        self.stds = torch.as_tensor(stds, dtype=_F64).flatten()
        if self.stds.shape != (K,) or not bool((self.stds > 0).all()):
            raise ValueError(f"stds must be {K} positive numbers")
        w = torch.full((K,), 1.0 / K, dtype=_F64) if weights is None else torch.as_tensor(weights, dtype=_F64).flatten()
        if w.shape != (K,) or not bool((w >= 0).all()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be {K} non-negative numbers with a positive sum")
        self.weights = w / w.sum()
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        k = torch.arange(K, dtype=_F64)
        self.angular_steps = 2 * math.pi / (3.6 + k) if angular_steps is None else torch.as_tensor(angular_steps, dtype=_F64).flatten()
        self.rises = 0.25 * (1 + k) if rises is None else torch.as_tensor(rises, dtype=_F64).flatten()
        self.phases = k.clone() if phases is None else torch.as_tensor(phases, dtype=_F64).flatten()
        for name in ("angular_steps", "rises", "phases"):
            if getattr(self, name).shape != (K,):
                raise ValueError(f"{name} must have {K} entries")

    @property
    def num_components(self) -> int:
        return len(self.radii)

    # -- templates ------------------------------------------------------------------------
    @staticmethod
    def _mask(x_or_shape, mask: Optional[Tensor]) -> Tensor:
        if mask is None:
            B, N = x_or_shape[:2]
            return torch.ones(B, N, dtype=_F64)
        return mask.to(_F64)

    def templates(self, mask: Tensor) -> Tensor:
        """Centred templates ``mu_k(n_b)`` for every sample: ``[B, K, N_max, D]`` (float64),
        zero on padding. ``mask`` ``[B, N_max]``; the helix index ``j`` of a point counts the
        real points of its row in order, so real points need not come first."""
        m = mask.to(_F64)
        B, N = m.shape
        j = (torch.cumsum(m, dim=1) - 1.0).clamp_min(0.0)  # [B, N] index among real points
        ang = self.phases[None, :, None] + self.angular_steps[None, :, None] * j[:, None, :]  # [B, K, N]
        r = self.radii[None, :, None]
        comps = [r * torch.cos(ang)]
        if self.dim >= 2:
            comps.append(r * torch.sin(ang))
        if self.dim >= 3:
            comps.append(self.rises[None, :, None] * j[:, None, :])
        while len(comps) < self.dim:
            comps.append(torch.zeros_like(ang))
        pts = torch.stack(comps, dim=-1) * m[:, None, :, None]  # [B, K, N, D]
        n = m.sum(dim=1).clamp_min(1.0)[:, None, None, None]
        com = pts.sum(dim=2, keepdim=True) / n
        return (pts - com) * m[:, None, :, None]

    @staticmethod
    def dof(mask: Tensor, dim: int) -> Tensor:
        """Dimension ``d_n = (n - 1) D`` of the zero-CoM subspace per sample ``[B]``."""
        return (mask.to(_F64).sum(dim=1) - 1.0) * dim

    # -- sampling and density ---------------------------------------------------------------
    def sample(self, sizes: Union[Sequence[int], Tensor], generator=None, dtype=torch.float64) -> tuple[Tensor, Tensor]:
        """Draw one point set per entry of ``sizes`` (``n_i >= 2``).

        Returns ``(x [B, N_max, D], mask [B, N_max])`` with ``N_max = max(sizes)``, the
        real points first, zero padding, zero centre of mass over the real points.
        ``generator``: None, a ``torch.Generator`` or ``B`` per-sample generators."""
        sizes = torch.as_tensor(sizes, dtype=torch.long).flatten()
        if sizes.numel() == 0 or int(sizes.min()) < 2:
            raise ValueError("every size must be >= 2 (a zero-CoM set of one point is a single point)")
        B, N = len(sizes), int(sizes.max())
        mask = (torch.arange(N)[None, :] < sizes[:, None]).to(_F64)
        k = _draw_components(self.weights, B, generator)
        mu = self.templates(mask)[torch.arange(B), k]  # [B, N, D]
        z = project(_randn((B, N, self.dim), generator), mask, zero_com=True)
        x = mu + append_dims(self.stds[k], 3) * z
        return project(x, mask, zero_com=True).to(dtype), mask.to(dtype)

    def _check(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected point sets [B, N, {self.dim}], got {tuple(x.shape)}")
        if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"mask must have shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
        return self._mask(x.shape, mask).to(x.device)

    def _log_components(self, x: Tensor, m: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Residuals ``x - a mu_k`` ``[B, K, N, D]``, variances ``v_k`` ``[B, K]`` and
        ``log w_k N_V(x; a mu_k, v_k P)`` ``[B, K]``."""
        mu = self.templates(m)
        resid = (x.unsqueeze(1) - append_dims(a, 4) * mu) * m[:, None, :, None]
        v = a[:, None] ** 2 * self.stds[None, :] ** 2 + s[:, None] ** 2  # [B, K]
        d = self.dof(m, self.dim)[:, None]
        sq = (resid * resid).sum(dim=(2, 3))
        logp = -0.5 * (sq / v + d * torch.log(2 * math.pi * v)) + torch.log(self.weights)[None, :]
        return resid, v, logp

    def log_prob(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Exact log-density ``[B]`` on the zero-CoM subspace (Lebesgue measure on ``V_n``,
        ``d_n = (n - 1) D`` dimensions). ``x`` is projected onto ``V_n`` first."""
        m = self._check(x, mask)
        x = project(x.to(_F64), m, zero_com=True)
        ones = torch.ones(x.shape[0], dtype=_F64, device=x.device)
        _, _, logp = self._log_components(x, m, ones, torch.zeros_like(ones))
        return torch.logsumexp(logp, dim=1)

    def marginal_log_prob(self, x_t: Tensor, t, process: GaussianProcess, mask: Optional[Tensor] = None) -> Tensor:
        """``log p_t(x_t)`` ``[B]`` of the noised marginal (on ``V_n``)."""
        m = self._check(x_t, mask)
        x = project(x_t.to(_F64), m, zero_com=True)
        a, s = _alpha_sigma(process, _times(t, x.shape[0], x.device))
        return torch.logsumexp(self._log_components(x, m, a, s)[2], dim=1)

    # -- exact posterior ------------------------------------------------------------------
    def posterior(self, x_t: Tensor, t, process: GaussianProcess, mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Exact ``(E[x_0 | x_t], E[eps | x_t])`` ``[B, N_max, D]`` on the zero-CoM subspace,
        zero on padding; ``x_t`` is projected onto ``V_n`` first (its off-subspace part has
        no probability). ``t``: scalar or ``[B]``."""
        dtype = x_t.dtype
        m = self._check(x_t, mask)
        x = project(x_t.to(_F64), m, zero_com=True)
        a, s = _alpha_sigma(process, _times(t, x.shape[0], x.device))
        resid, v, logp = self._log_components(x, m, a, s)
        r = torch.softmax(logp, dim=1)  # [B, K]
        mu = self.templates(m)
        S2 = self.stds[None, :] ** 2
        gain = (a[:, None] * S2 / v) * r  # [B, K]
        x0 = (r[:, :, None, None] * mu).sum(dim=1) + (append_dims(gain, 4) * resid).sum(dim=1)
        eps = (append_dims(r * s[:, None] / v, 4) * resid).sum(dim=1)
        x0 = project(x0, m, zero_com=True)
        eps = project(eps, m, zero_com=True)
        return x0.to(dtype), eps.to(dtype)

    def x0(self, x_t: Tensor, t, process: GaussianProcess, mask: Optional[Tensor] = None) -> Tensor:
        """Exact posterior mean ``E[x_0 | x_t]`` ``[B, N_max, D]`` (see :meth:`posterior`)."""
        return self.posterior(x_t, t, process, mask)[0]

    def denoiser(self, process: GaussianProcess, prediction: str = "x0") -> Callable:
        """The exact model ``model(x [B, N, D], t [B], mask=None, **kw) -> [B, N, D]`` in
        parameterization ``prediction``; use it with a ``zero_com=True`` process."""
        return _make_denoiser(self.posterior, process, prediction, masked=True)

    def __repr__(self) -> str:
        return f"PointSetMixture(K={self.num_components}, dim={self.dim})"
