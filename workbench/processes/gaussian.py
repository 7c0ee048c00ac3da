"""Noise processes.

ONE time convention for the whole package: ``t`` is a float in ``[0, 1]``; ``t = 0`` is
data and ``t = 1`` is noise (as DPM-Solver and diffusers). Time is always per-sample,
shape ``[B]``. Gaussian processes corrupt data as

    x_t = alpha(t) * x_0 + sigma(t) * eps,        eps ~ N(0, I)

with log-SNR ``lambda(t) = log(alpha(t) / sigma(t))``, strictly decreasing in ``t``.
Every process here has ``sigma(0) = 0``: ``t = 0`` is the *clean end* of every time grid,
and a sampler step that lands on it returns the model's data prediction.

Conversions between parameterizations (``x0``, ``epsilon``, ``v``, ``velocity``,
``score``) are exact and general (they hold for any alpha/sigma, not only VP):

* ``v`` (Salimans & Ho 2022, eq. 6 generalised): ``v = alpha * eps - sigma * x0``.
* ``velocity`` (probability-flow ODE of the interpolant / flow matching, Lipman et al.
  2023; Liu et al. 2023): ``dx_t/dt = alpha'(t) x0 + sigma'(t) eps``.
* ``score`` (Song et al. 2021): ``grad log p_t(x_t) = -eps / sigma``.

Edges convert to and from this convention: diffusers' integer timesteps
(:class:`VPDiscrete`, ``t = (i + 1) / N``) and EDM sigmas (:class:`VE`,
``sigma(t) = sigma_max * t``).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

__all__ = [
    "PREDICTIONS",
    "Coefficients",
    "prediction_coefficients",
    "Process",
    "GaussianProcess",
    "VPLinear",
    "VPCosine",
    "VPDiscrete",
    "VE",
    "RectifiedFlow",
    "from_diffusers",
    "project",
    "append_dims",
]

PREDICTIONS = ("x0", "epsilon", "v", "velocity", "score")
_ALIASES = {"sample": "x0", "eps": "epsilon", "v_prediction": "v", "flow": "velocity", "data": "x0"}


def canonical_prediction(name: str) -> str:
    """Map a parameterization name (or a diffusers alias) to one of :data:`PREDICTIONS`."""
    name = _ALIASES.get(name, name)
    if name not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {name!r}; valid: {', '.join(PREDICTIONS)}")
    return name


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so a ``[B]`` tensor broadcasts against ``[B, ...]``."""
    if v.ndim > ndim:
        raise ValueError(f"cannot broadcast a {v.ndim}-d tensor to {ndim} dims")
    return v.reshape(*v.shape, *([1] * (ndim - v.ndim)))


def project(x: Tensor, mask: Optional[Tensor] = None, *, zero_com: bool = False, com_dims: Optional[int] = None) -> Tensor:
    """Apply state constraints: zeroed padding and (optionally) zero centre of mass.

    Args:
        x: ``[B, N, ...]`` when ``mask`` or ``zero_com`` is used (``N`` = set/chain size),
            otherwise any ``[B, ...]``.
        mask: ``[B, N]`` with 1 for real elements and 0 for padding, or ``None``.
        zero_com: subtract the mean over the real elements of dim 1.
        com_dims: with ``zero_com``, centre only the first ``com_dims`` channels of the last
            dim (``x [B, N, D]``; e.g. 3 for a molecule whose state is positions then atom
            features, EDM's ``[x, h]``); ``None`` centres every channel.
    Returns:
        Tensor of the same shape as ``x``.
    """
    if mask is None and not zero_com:
        return x
    if x.ndim < 2:
        raise ValueError(f"masked / zero-CoM states need shape [B, N, ...], got {tuple(x.shape)}")
    if mask is None:
        m = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    else:
        if mask.shape != x.shape[:2]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match state shape {tuple(x.shape)} (expected [B, N] = {tuple(x.shape[:2])})")
        m = mask.to(x.dtype)
    m = append_dims(m, x.ndim)
    x = x * m
    if zero_com:
        n = m.sum(dim=1, keepdim=True).clamp_min(1.0)
        com = x.sum(dim=1, keepdim=True) / n
        if com_dims is not None:
            if x.ndim != 3 or not 0 < int(com_dims) <= x.shape[-1]:
                raise ValueError(f"com_dims={com_dims} needs a state [B, N, D] with D >= com_dims, got {tuple(x.shape)}")
            keep = torch.arange(x.shape[-1], device=x.device) < int(com_dims)
            com = com * keep.to(x.dtype)
        x = (x - com) * m
    return x


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation (``numpy.interp`` for increasing ``xp``), differentiable."""
    xp = xp.to(x.dtype)
    fp = fp.to(x.dtype)
    idx = torch.searchsorted(xp, x.clamp(xp[0], xp[-1]).contiguous()).clamp(1, len(xp) - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    f0, f1 = fp[idx - 1], fp[idx]
    w = (x - x0) / (x1 - x0)
    return f0 + w * (f1 - f0)


class Process:
    """Base class of all processes (Gaussian ones here; discrete and product processes follow
    the same role, see docs/design.md).

    A process owns the prior, the corruption ``x_0 -> x_t`` and the state constraints
    (:meth:`project`). ``continuous`` tells whether ODE solvers apply.
    """

    continuous: bool = True
    zero_com: bool = False
    #: with ``zero_com``: centre only the first ``com_dims`` channels (``None``: all); a product
    #: state such as a molecule's ``[positions, atom features]`` under one schedule
    com_dims: Optional[int] = None

    def project(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Zero the padding of ``x`` ``[B, N, ...]`` and, if ``zero_com``, its centre of mass
        (of the first ``com_dims`` channels when set)."""
        return project(x, mask, zero_com=self.zero_com, com_dims=self.com_dims)


class Coefficients(NamedTuple):
    """``x0 = x0_x x_t + x0_out out`` and ``eps = eps_x x_t + eps_out out`` for a model output
    ``out`` (floats, or tensors shaped like ``t``)."""

    x0_x: Union[float, Tensor]
    x0_out: Union[float, Tensor]
    eps_x: Union[float, Tensor]
    eps_out: Union[float, Tensor]


def prediction_coefficients(prediction: str, a, s, da=None, ds=None) -> Coefficients:
    """The :class:`Coefficients` of ``prediction`` from ``alpha = a``, ``sigma = s`` (and, for
    ``velocity``, their time derivatives ``da``, ``ds``); floats or tensors. The one place the
    parameterizations are inverted (module docstring for the definitions)."""
    p = canonical_prediction(prediction)
    if p == "x0":
        return Coefficients(0.0, 1.0, 1.0 / s, -a / s)
    if p == "epsilon":
        return Coefficients(1.0 / a, -s / a, 0.0, 1.0)
    if p == "score":  # eps = -s score
        return Coefficients(1.0 / a, s * s / a, 0.0, -s)
    if p == "v":  # v = a eps - s x0 with x_t = a x0 + s eps
        n = a * a + s * s
        return Coefficients(a / n, -s / n, s / n, a / n)
    if da is None or ds is None:
        raise ValueError("velocity coefficients need the time derivatives da, ds of alpha and sigma")
    det = a * ds - s * da  # velocity u = a' x0 + s' eps with x_t = a x0 + s eps: a 2x2 linear solve
    return Coefficients(ds / det, -s / det, -da / det, a / det)


class GaussianProcess(Process):
    """A Gaussian process ``x_t = alpha(t) x_0 + sigma(t) eps`` with ``t`` in ``[0, 1]``.

    Subclasses implement :meth:`log_alpha_sigma` (``t [B] -> (log alpha, log sigma)``) and
    may override :meth:`t_of_lambda` with a closed form. ``t_min`` is the smallest positive
    time a sampler grid should visit before the final jump to the clean end ``t = 0``
    (e.g. the smallest trained noise level).
    """

    t_min: float = 1e-3
    #: time used instead of ``t = 1`` when a grid needs a finite log-SNR (e.g. uniform-lambda)
    t_max_finite: float = 1.0
    default_grid: str = "uniform_t"

    def __init__(self, *, zero_com: bool = False, com_dims: Optional[int] = None):
        self.zero_com = bool(zero_com)
        if com_dims is not None and (not isinstance(com_dims, int) or isinstance(com_dims, bool) or com_dims < 1):
            raise ValueError(f"com_dims must be a positive integer or None, got {com_dims!r}")
        self.com_dims = com_dims

    # -- schedule ---------------------------------------------------------------------------
    def log_alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement log_alpha_sigma")

    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale ``alpha(t)``; ``t`` ``[B]`` (or any shape) -> same shape."""
        return self.log_alpha_sigma(torch.as_tensor(t))[0].exp()

    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale ``sigma(t)``; same shape as ``t``. ``sigma(0) = 0``."""
        return self.log_alpha_sigma(torch.as_tensor(t))[1].exp()

    def lambda_(self, t: Tensor) -> Tensor:
        """Log-SNR ``lambda(t) = log alpha - log sigma`` (``+inf`` at ``t = 0``)."""
        la, ls = self.log_alpha_sigma(torch.as_tensor(t))
        return la - ls

    def t_of_lambda(self, lam: Tensor) -> Tensor:
        """Inverse of :meth:`lambda_` by bisection (64 float64 iterations, exact to ~1e-15).
        Subclasses override it with a closed form where one exists."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        lo = torch.zeros_like(lam)
        hi = torch.ones_like(lam)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            bigger = self.lambda_(mid) > lam  # lambda decreasing: the root lies to the right
            lo = torch.where(bigger, mid, lo)
            hi = torch.where(bigger, hi, mid)
        return 0.5 * (lo + hi)

    def d_alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Time derivatives ``(alpha'(t), sigma'(t))`` (autograd; exact for closed forms)."""
        t = torch.as_tensor(t).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            a, s = self.alpha(t), self.sigma(t)
            da = torch.autograd.grad(a.sum(), t, retain_graph=True, allow_unused=True)[0] if a.requires_grad else None
            ds = torch.autograd.grad(s.sum(), t, allow_unused=True)[0] if s.requires_grad else None
        zero = torch.zeros_like(t.detach())
        return (zero if da is None else da.detach()), (zero if ds is None else ds.detach())

    # -- the linear view ----------------------------------------------------------------------
    def u_of_t(self, t) -> Tensor:
        """Linear-view time ``u = sigma / (alpha + sigma) = sigmoid(-lambda)`` (float64, shape
        of ``t``; 0 at ``t = 0``, 1 where ``alpha = 0``). With ``z = x / (alpha + sigma)`` the
        path ``x_t = alpha x0 + sigma eps`` becomes ``z_u = (1 - u) x0 + u eps``, the
        rectified-flow interpolant (Karras et al. 2022, eq. 4 for the scaling)."""
        la, ls = self.log_alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
        return torch.sigmoid(ls - la)

    def t_of_u(self, u) -> Tensor:
        """Inverse of :meth:`u_of_t` (float64): ``t_of_lambda(log((1 - u) / u))``, with ``t = 0``
        for ``u <= 0`` and ``t = 1`` for ``u >= 1`` (``u`` clamped to ``[1e-12, 1 - 1e-12]``
        inside)."""
        u = torch.as_tensor(u, dtype=torch.float64)
        uc = u.clamp(1e-12, 1 - 1e-12)
        t = self.t_of_lambda(torch.log1p(-uc) - torch.log(uc)).to(torch.float64)
        return torch.where(u <= 0, torch.zeros_like(t), torch.where(u >= 1, torch.ones_like(t), t))

    # -- prior and corruption ----------------------------------------------------------------
    def prior_std(self) -> float:
        """Standard deviation of the prior at ``t = 1`` (``x_1 ~ N(0, prior_std^2 I)``)."""
        return float(self.sigma(torch.tensor(1.0, dtype=torch.float64)))

    def prior(self, shape, *, generator=None, mask: Optional[Tensor] = None, device=None, dtype=torch.float32) -> Tensor:
        """Draw ``x_1 ~ N(0, sigma(1)^2 I)`` of ``shape`` ``[B, ...]``, projected (padding zero,
        zero CoM). ``generator`` may be a list of per-sample generators: sample ``i`` then
        depends only on ``generator[i]``."""
        from ..utils import randn

        return self.project(randn(shape, generator=generator, device=device, dtype=dtype) * self.prior_std(), mask)

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """``x_t = alpha(t) x0 + sigma(t) noise``; ``x0``, ``noise`` ``[B, ...]``, ``t`` ``[B]``."""
        a = append_dims(self.alpha(t).to(x0.dtype), x0.ndim)
        s = append_dims(self.sigma(t).to(x0.dtype), x0.ndim)
        return self.project(a * x0 + s * noise, mask)

    # -- parameterizations -------------------------------------------------------------------
    def coefficients(self, t, prediction: str) -> Coefficients:
        """:func:`prediction_coefficients` at time ``t`` (a float -> floats; a tensor -> tensors
        shaped like ``t``): ``x0 = c.x0_x x_t + c.x0_out out``, ``eps = c.eps_x x_t + c.eps_out out``."""
        scalar = not isinstance(t, Tensor)
        tt = torch.as_tensor(t, dtype=torch.float64) if scalar else t
        a, s = self.alpha(tt), self.sigma(tt)
        da = ds = None
        if canonical_prediction(prediction) == "velocity":
            da, ds = self.d_alpha_sigma(tt)
        c = prediction_coefficients(prediction, a, s, da, ds)
        if scalar:
            return Coefficients(*(float(v) for v in c))
        return Coefficients(*(v if isinstance(v, Tensor) else torch.full_like(a, v) for v in c))

    def to_x0_eps(self, pred: Tensor, prediction: str, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Convert a model output to ``(x0, eps)``. ``pred``, ``x_t`` ``[B, ...]``; ``t`` ``[B]``."""
        prediction = canonical_prediction(prediction)
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if prediction == "x0":
            c = self.coefficients(t, prediction)
            return pred, _lin(c.eps_x, x_t, c.eps_out, pred)
        if prediction == "epsilon":
            c = self.coefficients(t, prediction)
            return _lin(c.x0_x, x_t, c.x0_out, pred), pred
        c = self.coefficients(t, prediction)
        return _lin(c.x0_x, x_t, c.x0_out, pred), _lin(c.eps_x, x_t, c.eps_out, pred)

    def convert(self, pred: Tensor, from_: str, to: str, x_t: Tensor, t: Tensor) -> Tensor:
        """Convert a prediction between ``x0 / epsilon / v / velocity / score``."""
        from_, to = canonical_prediction(from_), canonical_prediction(to)
        if from_ == to:
            return pred
        x0, eps = self.to_x0_eps(pred, from_, x_t, t)
        return self.from_x0_eps(x0, eps, to, x_t, t)

    def from_x0_eps(self, x0: Tensor, eps: Tensor, to: str, x_t: Tensor, t: Tensor) -> Tensor:
        """Express ``(x0, eps)`` in parameterization ``to``."""
        to = canonical_prediction(to)
        if to == "x0":
            return x0
        if to == "epsilon":
            return eps
        t = torch.as_tensor(t, device=x0.device)
        if t.ndim == 0:
            t = t.expand(x0.shape[0])
        a = append_dims(self.alpha(t).to(x0.dtype), x0.ndim)
        s = append_dims(self.sigma(t).to(x0.dtype), x0.ndim)
        if to == "score":
            return -eps / s
        if to == "v":
            return a * eps - s * x0
        da, ds = self.d_alpha_sigma(t)
        return append_dims(da.to(x0.dtype), x0.ndim) * x0 + append_dims(ds.to(x0.dtype), x0.ndim) * eps

    def __repr__(self) -> str:
        keys = {k: v for k, v in vars(self).items() if not k.startswith("_") and not isinstance(v, Tensor)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in keys.items())})"


def _lin(cx: Tensor, x: Tensor, co: Tensor, out: Tensor) -> Tensor:
    """``cx x + co out`` with per-sample coefficients ``[B]`` broadcast over ``x`` ``[B, ...]``."""
    return append_dims(cx.to(x.dtype), x.ndim) * x + append_dims(co.to(x.dtype), x.ndim) * out


class VPLinear(GaussianProcess):
    """Variance-preserving process with linear beta (Ho et al. 2020; Song et al. 2021, eq. 33):
    ``log alpha(t) = -(beta_max - beta_min) t^2 / 4 - beta_min t / 2``,
    ``sigma = sqrt(1 - alpha^2)``."""

    #: the time-quadratic grid (as :class:`VPDiscrete`, the same schedule in discrete time): on an
    #: exact 16-D mixture it beats ``uniform_lambda`` at every NFE from 3 to 50 (2x at NFE 5-10)
    default_grid = "time_quadratic"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, t_min: float = 1e-3, zero_com: bool = False, com_dims: Optional[int] = None):
        super().__init__(zero_com=zero_com, com_dims=com_dims)
        self.beta_min, self.beta_max, self.t_min = float(beta_min), float(beta_max), float(t_min)

    def log_alpha_sigma(self, t):
        la = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        return la, 0.5 * torch.log(-torch.expm1(2.0 * la))

    def t_of_lambda(self, lam):
        # DPM-Solver (Lu et al. 2022), appendix: closed-form inverse for linear VP
        lam = torch.as_tensor(lam)
        tmp = 2.0 * (self.beta_max - self.beta_min) * torch.logaddexp(-2.0 * lam, torch.zeros_like(lam))
        delta = self.beta_min**2 + tmp
        t = tmp / (torch.sqrt(delta) + self.beta_min) / (self.beta_max - self.beta_min)
        return torch.where(torch.isneginf(lam), torch.full_like(t, math.inf), t)

    def d_alpha_sigma(self, t):
        t = torch.as_tensor(t)
        a, s = self.alpha(t), self.sigma(t)
        da = a * (-0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min)
        return da, -a * da / s


class VPCosine(GaussianProcess):
    """Cosine VP schedule (Nichol & Dhariwal 2021, eq. 17):
    ``alpha(t) = cos((t + s) / (1 + s) * pi / 2) / cos(s / (1 + s) * pi / 2)``.
    ``alpha(1) = 0``: log-SNR is ``-inf`` at ``t = 1``; grids that need a finite log-SNR use
    ``t_max_finite`` (0.9946, as DPM-Solver)."""

    t_max_finite = 0.9946
    default_grid = "uniform_lambda"

    def __init__(self, s: float = 0.008, *, t_min: float = 1e-3, zero_com: bool = False, com_dims: Optional[int] = None):
        super().__init__(zero_com=zero_com, com_dims=com_dims)
        self.s, self.t_min = float(s), float(t_min)

    def log_alpha_sigma(self, t):
        t = torch.as_tensor(t)
        s = self.s
        c = torch.cos((t + s) / (1 + s) * (math.pi / 2)).clamp_min(0.0)
        la = torch.log(c) - math.log(math.cos(s / (1 + s) * math.pi / 2))
        la = torch.clamp(la, max=0.0)
        return la, 0.5 * torch.log(-torch.expm1(2.0 * la))

    def t_of_lambda(self, lam):
        lam = torch.as_tensor(lam)
        s = self.s
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        c0 = math.log(math.cos(s / (1 + s) * math.pi / 2))
        return torch.arccos(torch.exp(log_alpha + c0)) * 2.0 * (1 + s) / math.pi - s


class VPDiscrete(GaussianProcess):
    """Discrete-time VP process of a diffusers scheduler (DDPM ``alphas_cumprod[N]``).

    Time map at the edge: diffusers timestep ``i`` (``0..N-1``) is ``t = (i + 1) / N``, and
    ``t = 0`` is the data. ``log alpha`` is interpolated piecewise-linearly in ``t`` between
    those knots, exactly as DPM-Solver's discrete ``NoiseScheduleVP`` (Lu et al. 2022). The
    model sees ``t`` in this convention; :meth:`timestep` gives the diffusers timestep.
    """

    #: DPM-Solver's time-quadratic spacing ending at the clean end (see
    #: :func:`workbench.timegrids.time_quadratic`); ``uniform_t`` (diffusers' 'linspace') ends
    #: with a first-order jump over ``[1/steps, 0]`` that dominates the error from ~10 steps on.
    #: Measured on linear betas; :func:`from_diffusers` keeps ``uniform_t`` for cosine betas
    #: (``squaredcos_cap_v2``), where it is the more accurate of the two up to ~10 steps.
    default_grid = "time_quadratic"

    def __init__(self, alphas_cumprod, *, prediction: str = "epsilon", zero_com: bool = False, com_dims: Optional[int] = None):
        super().__init__(zero_com=zero_com, com_dims=com_dims)
        self.prediction = canonical_prediction(prediction)
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if ac.ndim != 1 or len(ac) < 2 or not bool(((ac > 0) & (ac <= 1)).all()):
            raise ValueError("alphas_cumprod must be a 1-d tensor of values in (0, 1]")
        self.num_train_timesteps = len(ac)
        self._ts = torch.linspace(0.0, 1.0, len(ac) + 1, dtype=torch.float64)
        self._log_alpha = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * torch.log(ac)])
        self.t_min = 1.0 / len(ac)

    def log_alpha_sigma(self, t):
        t = torch.as_tensor(t)
        dt = t.dtype if t.is_floating_point() else torch.float64
        la = _interp(t.to(torch.float64).reshape(-1), self._ts.to(t.device), self._log_alpha.to(t.device)).reshape(t.shape)
        la = la.to(dt)
        return la, 0.5 * torch.log(-torch.expm1(2.0 * la))

    def t_of_lambda(self, lam):
        """Exact inverse: ``log alpha = log sigmoid(2 lambda) / 2``, then invert the
        piecewise-linear ``log alpha(t)`` (``-log alpha`` increases with ``t``)."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        la = 0.5 * torch.nn.functional.logsigmoid(2.0 * lam)
        out = _interp((-la).reshape(-1), -self._log_alpha.to(lam.device), self._ts.to(lam.device)).reshape(lam.shape)
        return torch.where(torch.isinf(lam) & (lam > 0), torch.zeros_like(out), out)

    def timestep(self, t: Tensor) -> Tensor:
        """Diffusers' (fractional) timestep of process time ``t``: ``t * N - 1``."""
        return torch.as_tensor(t) * self.num_train_timesteps - 1.0

    def t_of_timestep(self, timestep) -> Tensor:
        """Process time of a diffusers timestep: ``(i + 1) / N``."""
        return (torch.as_tensor(timestep, dtype=torch.float64) + 1.0) / self.num_train_timesteps


class VE(GaussianProcess):
    """Variance-exploding / EDM process (Karras et al. 2022): ``alpha = 1``,
    ``sigma(t) = sigma_max * t``. EDM's sigma maps to ``t = sigma / sigma_max``; ``t_min`` is
    ``sigma_min / sigma_max``. The default grid is EDM's rho schedule (eq. 5)."""

    default_grid = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, *, zero_com: bool = False, com_dims: Optional[int] = None):
        super().__init__(zero_com=zero_com, com_dims=com_dims)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.t_min = self.sigma_min / self.sigma_max

    def log_alpha_sigma(self, t):
        t = torch.as_tensor(t)
        return torch.zeros_like(t), torch.log(t * self.sigma_max)

    def t_of_lambda(self, lam):
        return torch.exp(-torch.as_tensor(lam)) / self.sigma_max

    def d_alpha_sigma(self, t):
        t = torch.as_tensor(t)
        return torch.zeros_like(t), torch.full_like(t, self.sigma_max)

    def t_of_sigma(self, sigma) -> Tensor:
        return torch.as_tensor(sigma) / self.sigma_max


class RectifiedFlow(GaussianProcess):
    """Linear interpolant / rectified flow (Liu et al. 2023; Lipman et al. 2023):
    ``x_t = (1 - t) x_0 + t eps``, velocity ``eps - x_0``. ``alpha(1) = 0``, so log-SNR is
    ``-inf`` at ``t = 1``; grids needing a finite log-SNR start at ``t_max_finite``."""

    t_max_finite = 0.999
    default_grid = "uniform_t"

    def __init__(self, *, t_min: float = 1e-3, zero_com: bool = False, com_dims: Optional[int] = None):
        super().__init__(zero_com=zero_com, com_dims=com_dims)
        self.t_min = float(t_min)

    def log_alpha_sigma(self, t):
        t = torch.as_tensor(t)
        return torch.log1p(-t), torch.log(t)

    def t_of_lambda(self, lam):
        return torch.sigmoid(-torch.as_tensor(lam))

    def d_alpha_sigma(self, t):
        t = torch.as_tensor(t)
        return -torch.ones_like(t), torch.ones_like(t)


def _betas_from_config(cfg: dict) -> Tensor:
    n = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("trained_betas") is not None:
        return torch.as_tensor(cfg["trained_betas"], dtype=torch.float64)
    b0, b1 = float(cfg.get("beta_start", 0.0001)), float(cfg.get("beta_end", 0.02))
    kind = cfg.get("beta_schedule", "linear")
    if kind == "linear":
        return torch.linspace(b0, b1, n, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":
        # Nichol & Dhariwal 2021 betas as diffusers builds them (max_beta 0.999)
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return torch.tensor([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=torch.float64)
    raise ValueError(f"unsupported beta_schedule {kind!r}; valid: linear, scaled_linear, squaredcos_cap_v2")


def from_diffusers(config) -> VPDiscrete:
    """Build the process of a diffusers scheduler config.

    Args:
        config: a dict (or a scheduler's ``.config``) with ``beta_schedule`` (``linear`` /
            ``scaled_linear`` / ``squaredcos_cap_v2``), ``beta_start``, ``beta_end``,
            ``num_train_timesteps``, optionally ``trained_betas`` and ``prediction_type``.
    Returns:
        A :class:`VPDiscrete` whose ``prediction`` attribute holds the canonical
        prediction type of the config (``epsilon`` if absent), so
        ``workbench.sample(unet_wrapper, p, x, prediction=p.prediction)`` just works. Its
        ``default_grid`` is ``time_quadratic``, or ``uniform_t`` for cosine betas.
    """
    cfg = dict(config)
    if cfg.get("use_flow_sigmas") or cfg.get("prediction_type") == "flow_prediction":
        raise ValueError("flow-matching diffusers configs are not VP; use workbench.processes.RectifiedFlow")
    betas = _betas_from_config(cfg)
    ac = torch.cumprod(1.0 - betas, dim=0)
    proc = VPDiscrete(ac, prediction=cfg.get("prediction_type", "epsilon"))
    if cfg.get("trained_betas") is None and cfg.get("beta_schedule") == "squaredcos_cap_v2":
        # exact 16-D Gaussian mixture, best deterministic sampler: uniform_t 0.29 / 0.18 / 0.058 at
        # NFE 3 / 5 / 10 vs time_quadratic 0.46 / 0.23 / 0.095 (time_quadratic wins from NFE 20)
        proc.default_grid = "uniform_t"
    return proc
