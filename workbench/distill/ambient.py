"""Ambient diffusion: train a denoiser (a teacher) from a data set that is mostly *noisy*
plus a small clean subset.

Papers: Daras, Dimakis & Daskalakis 2024, "Consistent Diffusion Meets Tweedie: Training
Exact Ambient Diffusion Models with Noisy Data" (ICML 2024, the double application of
Tweedie's formula); Daras, Cherapanamjeri & Daskalakis 2024, "How much is a noisy
image worth? Data Scaling Laws for Ambient Diffusion" (a small clean set, e.g. 10%, plus
highly noisy data); Daras et al. 2025, "Ambient Diffusion Omni" (per-sample noise levels
``sigma_tn``, the loss in x0 units).

The corrupted data set
----------------------
A fixed training set of ``N`` examples (the domain's finite split, or ``dataset_size``
samples drawn once from a domain whose ``train_data`` is a sampler of fresh samples). A
fraction ``clean_fraction`` of the examples stays clean (``t_n = 0``); every other example
``i`` is observed only as

    x_{t_n} = alpha(t_n) x0_i + sigma(t_n) eps_i,      eps_i = project(N(0, I)),

with ``eps_i`` drawn ONCE from a generator seeded by ``(data_seed, i)``: the corrupted data
set is a fixed function of the seed and the index, identical across calls, runs and resumes
(as the papers' data sets on disk). The clean value of a noisy example is never kept.

Tweedie consistency (general Gaussian process)
----------------------------------------------
For ``s = t_n <= t`` write ``alpha_{t|s} = alpha_t / alpha_s`` and
``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2 = sigma_t^2 (1 - r)`` with
``r = exp(2 (lambda_t - lambda_s)) = (alpha_t sigma_s / (sigma_t alpha_s))^2`` in ``[0, 1]``.
The process is Markov, so from an observation ``x_s``

    x_t = alpha_{t|s} x_s + sigma_{t|s} z,     z ~ N(0, I) (projected),

has the right marginal ``p_t``. Given ``x0``, ``(x_s, x_t)`` is jointly Gaussian with
``Cov(x_s, x_t | x0) = alpha_{t|s} sigma_s^2``, so (the posterior of DDPM / VDM)

    E[x_s | x_t, x0] = c_x x_t + c_0 x0,
    c_x = alpha_{t|s} sigma_s^2 / sigma_t^2 = (alpha_s / alpha_t) r,
    c_0 = alpha_s sigma_{t|s}^2 / sigma_t^2 = alpha_s (1 - r),

and by the tower property ``E[x_s | x_t] = c_x x_t + c_0 E[x0 | x_t]`` for ANY data
distribution (the "double Tweedie" identity of Daras, Dimakis & Daskalakis 2024, there in
VE form: ``c_x = sigma_n^2 / sigma_t^2``, ``c_0 = 1 - sigma_n^2 / sigma_t^2``). For a clean example (``s = 0``):
``r = 0``, ``c_x = 0``, ``c_0 = 1``, ``alpha_{t|0} = alpha_t``, ``sigma_{t|0} = sigma_t``.

Objective (:class:`AmbientLoss`)
-------------------------------
Per example a time ``t >= t_n`` (all ``t`` for clean examples; by default the data sampler
draws ``t`` from the base time sampler first and then an example observed at or below that
noise level, so every noise level is trained at the usual rate, see :class:`AmbientData`),
build ``x_t`` from the observation as above, map the model's x0 prediction
``D = D_theta(x_t, t)`` to ``x^_s = c_x x_t + c_0 D`` and regress it on the observed ``x_s``:

    loss = w(t) * f(t, t_n) * mean ||x^_s - x_s||^2,

minimised (for ``t > t_n``) exactly by ``D = E[x0 | x_t]``. ``w`` is the base weight in x0
units (``epsilon``: ``SNR(t) = alpha_t^2 / sigma_t^2``, i.e. the epsilon-MSE of the domain
teachers; ``edm``: ``1/sigma~^2 + 1/sigma_data^2``, Karras et al. 2022). ``f`` is
``1 / c_0^2`` (``ambient_weighting="x0"``: the error measured in x0 units, Ambient Omni's
``sigma_t^4 / (sigma_t^2 - sigma_tn^2)^2``; capped at ``max_factor`` since it diverges as
``t -> t_n``) or ``1 / alpha_s^2`` (``"xtn"``: the error of ``x_s / alpha_s`` in VE units,
the "How much is a noisy image worth" repository's weighting). Both reduce to the ordinary
denoising loss on clean examples.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from ..losses import TIME_SAMPLERS, Batch, masked_mean
from ..processes import GaussianProcess, append_dims, canonical_prediction
from ..utils import Generator, first_generator, randn
from .api import DistillSetup, MethodOptions, RecipeContext, register_method
from .students import student_spec

__all__ = ["AmbientLoss", "AmbientData", "tweedie_coefficients", "sample_time_above", "NOISY_LOSSES", "WEIGHTINGS",
           "AMBIENT_WEIGHTINGS"]

#: how noisy examples are used: the Tweedie-consistent loss, dropped (clean-only baseline), or
#: treated as if they were clean (the naive, biased baseline)
NOISY_LOSSES = ("ambient", "drop", "naive")
WEIGHTINGS = ("epsilon", "edm")
AMBIENT_WEIGHTINGS = ("xtn", "x0")
INITS = ("scratch", "teacher")
#: size of the fixed data set drawn from domains whose ``train_data`` samples fresh data (toy)
SAMPLER_DATASET_SIZE = 10000

_GOLDEN = 0x9E3779B97F4A7C15
_MIX = 0xBF58476D1CE4E5B9


def _index_seed(seed: int, index: int, stream: int = 0) -> int:
    """A 63-bit seed that depends only on ``(seed, index, stream)``."""
    return (int(seed) * _GOLDEN + (int(index) + 1) * _MIX + int(stream) * 0x94D049BB133111EB) % (2**63)


def tweedie_coefficients(process: GaussianProcess, t: Tensor, t_n: Tensor) -> dict:
    """The coefficients of the module docstring for ``t >= t_n`` (both ``[B]``, float64).

    Returns ``{"a_ts": alpha_{t|s}, "s_ts": sigma_{t|s}, "c_x": c_x, "c_0": c_0, "alpha_s":
    alpha(t_n), "r": r}`` (each ``[B]`` float64): ``x_t = a_ts x_s + s_ts z`` and
    ``E[x_s | x_t] = c_x x_t + c_0 E[x0 | x_t]``. ``t_n = 0`` (clean) gives ``a_ts =
    alpha_t``, ``s_ts = sigma_t``, ``c_x = 0``, ``c_0 = 1``."""
    t = torch.as_tensor(t, dtype=torch.float64)
    s = torch.as_tensor(t_n, dtype=torch.float64, device=t.device).expand_as(t)
    if bool((t < s - 1e-12).any()):
        raise ValueError("tweedie_coefficients needs t >= t_n")
    clean = s <= 0
    a_t, sg_t = process.alpha(t), process.sigma(t)
    s_safe = torch.where(clean, torch.ones_like(s), s)
    a_s = torch.where(clean, torch.ones_like(s), process.alpha(s_safe))
    sg_s = torch.where(clean, torch.zeros_like(s), process.sigma(s_safe))
    r = ((a_t * sg_s) / (sg_t * a_s)) ** 2
    r = torch.where(clean, torch.zeros_like(r), r).clamp(0.0, 1.0)
    a_ts = a_t / a_s
    s_ts = sg_t * torch.sqrt(1.0 - r)
    c_x = torch.where(clean, torch.zeros_like(r), a_ts * sg_s**2 / sg_t**2)
    c_0 = a_s * (1.0 - r)
    return {"a_ts": a_ts, "s_ts": s_ts, "c_x": c_x, "c_0": c_0, "alpha_s": a_s, "r": r}


def sample_time_above(t_lo: Tensor, kind: str, *, process: GaussianProcess, generator: Generator = None, t_eps: float = 1e-3,
                      p_mean: float = -1.2, p_std: float = 1.2) -> Tensor:
    """Times ``[B]`` (float64) from the distribution of :func:`workbench.losses.sample_time`
    (``kind``) restricted to ``[max(t_lo, t_eps), 1]`` (inverse-CDF sampling; ``t_lo`` ``[B]``,
    0 = unrestricted): ``uniform`` on ``[t_lo, 1]``; ``logit_normal`` with ``z >= logit(t_lo)``;
    ``edm`` with ``log sigma~ >= -lambda(t_lo)`` (Ambient Omni's truncated log-normal)."""
    if kind not in TIME_SAMPLERS:
        raise ValueError(f"unknown time sampler {kind!r}; valid: {', '.join(TIME_SAMPLERS)}")
    g = first_generator(generator)
    lo = torch.as_tensor(t_lo, dtype=torch.float64).clamp_min(t_eps)
    u = torch.rand(lo.shape, generator=g, device=g.device if g is not None else lo.device, dtype=torch.float64).to(lo.device)
    if kind == "uniform":
        return (lo + (1.0 - lo) * u).clamp(max=1.0)
    if kind == "logit_normal":
        z_lo = torch.logit(lo.clamp(max=1 - 1e-12))
    else:  # edm: log sigma~ = p_mean + p_std z = -lambda(t)
        z_lo = (-process.lambda_(lo) - p_mean) / p_std
    f_lo = torch.special.ndtr(z_lo)
    z = torch.special.ndtri((f_lo + (1.0 - f_lo) * u).clamp(1e-300, 1.0 - 1e-16))
    t = torch.sigmoid(z) if kind == "logit_normal" else process.t_of_lambda(-(p_mean + p_std * z)).to(torch.float64)
    return torch.maximum(t, lo).clamp(max=1.0)


def _finite_dataset(domain, dataset_size: Optional[int], data_seed: int) -> Batch:
    """The fixed clean data set: the domain's whole training split when its sampler has
    ``all()`` (subsampled to ``dataset_size`` with a fixed permutation), else ``dataset_size``
    (``None``: :data:`SAMPLER_DATASET_SIZE`) samples drawn once from the sampler with a fixed
    seed."""
    sampler = domain.train_data("train")
    if hasattr(sampler, "all"):
        data = sampler.all()
        if dataset_size is not None and dataset_size < len(data):
            perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(_index_seed(data_seed, 0, 3)))
            data = data.index(perm[:dataset_size])
        return data
    n = SAMPLER_DATASET_SIZE if dataset_size is None else int(dataset_size)
    return sampler(n, torch.Generator().manual_seed(_index_seed(data_seed, 0, 1)))


class AmbientData:
    """The fixed corrupted training set and its pure batch sampler.

    ``data(batch_size, generator) -> Batch`` returns *observations*: ``x`` ``[B, ...]`` is
    ``x0`` for clean examples and ``x_{t_n}`` for noisy ones, ``mask`` / ``cond`` as the
    domain's, ``extra = {"t_n": [B] float64 (0 = clean), "noisy": [B] bool, "index": [B]
    int64}`` and, with ``time_sampler``, ``extra["t"]`` ``[B]`` float64: the training time of
    each slot. Everything is drawn from ``generator`` only (reproducible, resumable).

    Pairing of examples and times:

    * ``time_sampler=None``: indices uniform over the set (``noisy_loss="drop"``: over the
      clean subset); the objective then draws noisy examples' times from the truncated
      sampler on ``[t_n, 1]`` (the papers' loaders).
    * ``time_sampler`` given (balanced, the default of the recipe): each slot first draws
      its time ``t`` from the base time sampler, then an example among those observed at or
      below that noise level (``t_n <= t``): the clean subset for ``t < t_noisy``, the whole
      set otherwise (Ambient Omni also samples the time in its data sampler). Every noise
      level is then trained at the base rate, exactly as in clean training, and noisy
      examples are never seen below their ``t_n``. ``noisy_loss="naive"`` makes every
      example eligible at every time, ``"drop"`` only the clean ones.

    Args:
        domain: the domain (its process and training data).
        clean_fraction: fraction of examples kept clean, in ``(0, 1]`` (at least one example).
        t_noisy: the process time ``t_n`` of the noisy observations, in ``(0, 1)``.
        dataset_size: size ``N`` of the data set (see :func:`_finite_dataset`).
        data_seed: seed of the data set draw, the clean/noisy split and the per-example noise.
        noisy_loss: ``ambient``, ``drop`` (sample only the clean examples: the clean-subset
            baseline) or ``naive`` (noisy observations eligible at every time).
        time_sampler: ``None`` or a :data:`workbench.losses.TIME_SAMPLERS` name (balanced).
        t_eps: smallest training time.
    """

    def __init__(self, domain, *, clean_fraction: float, t_noisy: float, dataset_size: Optional[int] = None, data_seed: int = 0,
                 noisy_loss: str = "ambient", time_sampler: Optional[str] = None, t_eps: float = 1e-3):
        _check_choice("noisy_loss", noisy_loss, NOISY_LOSSES)
        if time_sampler is not None:
            _check_choice("time_sampler", time_sampler, TIME_SAMPLERS)
        self.process = domain.process()
        self.t_noisy, self.data_seed, self.noisy_loss = float(t_noisy), int(data_seed), noisy_loss
        self.time_sampler, self.t_eps = time_sampler, float(t_eps)
        data = _finite_dataset(domain, dataset_size, self.data_seed)
        n = len(data)
        n_clean = int(round(float(clean_fraction) * n))
        if n_clean < 1:
            raise ValueError(f"clean_fraction {clean_fraction} of {n} examples leaves no clean example; "
                             "raise clean_fraction or dataset_size")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(_index_seed(self.data_seed, 0, 2)))
        noisy = torch.ones(n, dtype=torch.bool)
        noisy[perm[:n_clean]] = False
        self.noisy = noisy
        self.t_n = torch.where(noisy, torch.full((n,), self.t_noisy, dtype=torch.float64), torch.zeros(n, dtype=torch.float64))
        self.mask, self.cond = data.mask, data.cond
        obs = data.x.clone()
        idx = noisy.nonzero().flatten()
        if len(idx):
            sub = data.index(idx)
            eps = self.noise_of(idx, sub.x.shape[1:], sub.mask, dtype=sub.x.dtype)
            obs[idx] = self.process.add_noise(sub.x, self.t_n[idx], eps, sub.mask)
        self.x = obs  # observations only: the clean values of noisy examples are not kept
        self.clean_index = (~noisy).nonzero().flatten()

    def noise_of(self, index: Tensor, shape, mask: Optional[Tensor] = None, *, dtype=torch.float32) -> Tensor:
        """The fixed noise ``eps_i`` ``[len(index), *shape]`` of examples ``index`` (projected
        with ``mask`` ``[len(index), N]``): example ``i`` uses a generator seeded by
        ``(data_seed, i)`` only."""
        gens = [torch.Generator().manual_seed(_index_seed(self.data_seed, int(i))) for i in torch.as_tensor(index).flatten().tolist()]
        return self.process.project(randn((len(gens), *shape), generator=gens, dtype=dtype), mask)

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def n_clean(self) -> int:
        return len(self.clean_index)

    def __call__(self, batch_size: int, generator: Optional[torch.Generator] = None) -> Batch:
        B = int(batch_size)
        extra = {}
        if self.noisy_loss == "drop":
            idx = self.clean_index[torch.randint(0, self.n_clean, (B,), generator=generator)]
        else:
            idx = torch.randint(0, len(self), (B,), generator=generator)
        if self.time_sampler is not None:
            t = sample_time_above(torch.zeros(B, dtype=torch.float64), self.time_sampler, process=self.process, generator=generator,
                                  t_eps=self.t_eps)
            if self.noisy_loss == "ambient":  # below t_noisy only the clean examples are observed
                low_idx = self.clean_index[torch.randint(0, self.n_clean, (B,), generator=generator)]
                idx = torch.where(t < self.t_noisy, low_idx, idx)
            extra["t"] = t
        sel = lambda v: v[idx].clone() if isinstance(v, Tensor) else v  # noqa: E731
        extra.update({"t_n": self.t_n[idx].clone(), "noisy": self.noisy[idx].clone(), "index": idx.clone()})
        return Batch(x=self.x[idx].clone(), mask=sel(self.mask), cond=sel(self.cond), extra=extra)

    def __repr__(self) -> str:
        return (f"AmbientData(n={len(self)}, clean={self.n_clean}, t_noisy={self.t_noisy:.4g}, data_seed={self.data_seed}, "
                f"noisy_loss={self.noisy_loss!r}, time_sampler={self.time_sampler!r})")


class AmbientLoss:
    """The ambient (Tweedie-consistent) denoising loss of the module docstring,
    ``(nets, batch, generator) -> loss [B]``; ``nets["model"]`` is the denoiser
    ``D(x_t [B, ...], t [B], mask=, cond=)`` in parameterization ``prediction``; ``batch.x``
    holds observations, ``batch.extra["t_n"]`` ``[B]`` their noise times (absent = all
    clean) and optionally ``batch.extra["t"]`` ``[B]`` the training times (``>= t_n``; drawn
    by the balanced :class:`AmbientData`), else ``t`` is drawn here from ``time_sampler``
    restricted to ``[t_n, 1]``.

    Args:
        process: the Gaussian process.
        prediction: the model's parameterization (``None``: ``model.prediction``).
        noisy_loss: ``ambient`` (train noisy examples at ``t >= t_n`` with the consistent
            loss), ``naive`` (treat observations as clean data at all ``t``: biased).
        weighting: base weight in x0 units: ``epsilon`` (SNR, the epsilon-MSE) or ``edm``.
        ambient_weighting: ``xtn`` or ``x0`` (see the module docstring).
        time_sampler: ``uniform``, ``logit_normal`` or ``edm`` (restricted to ``t >= t_n``).
        sigma_data: EDM's ``sigma_data`` (``weighting="edm"``).
        max_factor: cap of the ``x0`` factor ``1 / c_0^2``.
    """

    def __init__(self, process: GaussianProcess, prediction: Optional[str] = None, *, noisy_loss: str = "ambient",
                 weighting: str = "epsilon", ambient_weighting: str = "xtn", time_sampler: str = "uniform", sigma_data: float = 0.5,
                 t_eps: float = 1e-3, max_factor: float = 1e4):
        if noisy_loss not in ("ambient", "naive"):
            raise ValueError(f"unknown noisy_loss {noisy_loss!r} for AmbientLoss; valid: ambient, naive")
        _check_choice("weighting", weighting, WEIGHTINGS)
        _check_choice("ambient_weighting", ambient_weighting, AMBIENT_WEIGHTINGS)
        _check_choice("time_sampler", time_sampler, TIME_SAMPLERS)
        if not (sigma_data > 0 and max_factor >= 1):
            raise ValueError(f"sigma_data must be > 0 and max_factor >= 1, got {sigma_data}, {max_factor}")
        self.process = process
        self.prediction = None if prediction is None else canonical_prediction(prediction)
        self.noisy_loss, self.weighting, self.ambient_weighting = noisy_loss, weighting, ambient_weighting
        self.time_sampler, self.sigma_data, self.t_eps, self.max_factor = time_sampler, float(sigma_data), float(t_eps), float(max_factor)

    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        net = nets["model"] if isinstance(nets, (dict, torch.nn.ModuleDict)) else nets
        p, x = self.process, batch.x
        B = x.shape[0]
        t_n = batch.extra.get("t_n")
        t_n = torch.zeros(B, dtype=torch.float64, device=x.device) if t_n is None or self.noisy_loss == "naive" else t_n.to(torch.float64)
        t = batch.extra.get("t")
        if t is None:
            t = sample_time_above(t_n, self.time_sampler, process=p, generator=generator, t_eps=self.t_eps).to(x.device)
        else:
            t = t.to(device=x.device, dtype=torch.float64)
            if bool((t < t_n).any()):
                raise ValueError("batch.extra['t'] puts a noisy example below its noise level t_n; the ambient loss needs t >= t_n")
        c = tweedie_coefficients(p, t, t_n)
        z = p.project(randn(x.shape, generator=generator, device=x.device, dtype=x.dtype), batch.mask)
        dims = lambda v: append_dims(v.to(x.dtype), x.ndim)  # noqa: E731
        x_t = p.project(dims(c["a_ts"]) * x + dims(c["s_ts"]) * z, batch.mask)
        out = net(x_t, t.to(x.dtype), mask=batch.mask, cond=batch.cond)
        pred = self.prediction or getattr(net, "prediction", "epsilon")
        x0_hat = p.convert(out, pred, "x0", x_t, t)
        x_s_hat = dims(c["c_x"]) * x_t + dims(c["c_0"]) * x0_hat
        err = masked_mean((x_s_hat - x) ** 2, batch.mask)
        a_t, sg_t = p.alpha(t), p.sigma(t)
        if self.weighting == "epsilon":
            w = (a_t / sg_t) ** 2
        else:
            sig = sg_t / a_t
            w = (sig**2 + self.sigma_data**2) / (sig * self.sigma_data) ** 2
        if self.ambient_weighting == "x0":
            f = (1.0 / c["c_0"].clamp_min(1e-300) ** 2).clamp(max=self.max_factor)
        else:
            f = 1.0 / c["alpha_s"] ** 2
        return (w * f).to(x.dtype) * err

    def __repr__(self) -> str:
        return (f"AmbientLoss(noisy_loss={self.noisy_loss!r}, weighting={self.weighting!r}, ambient_weighting={self.ambient_weighting!r}, "
                f"time_sampler={self.time_sampler!r})")


class _KeepExtra:
    """Adapter running ``inner`` on a batch rebuilt by a domain wrapper (same rows) with the
    ``extra`` of the original batch re-attached."""

    def __init__(self, inner):
        self.inner, self.extra = inner, {}

    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        return self.inner(nets, Batch(x=batch.x, mask=batch.mask, cond=batch.cond, extra=self.extra), generator)


class _DomainWrapped:
    """The domain objective's wrapper (e.g. images' classifier-free-guidance label dropout,
    an object with a ``base`` loss) around the ambient loss."""

    def __init__(self, wrapper, adapter: _KeepExtra):
        self.wrapper, self.adapter = wrapper, adapter
        self.process = adapter.inner.process

    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        self.adapter.extra = batch.extra
        return self.wrapper(nets, batch, generator)

    def __repr__(self) -> str:
        return f"{type(self.wrapper).__name__}[{self.adapter.inner!r}]"


def _check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(str, valid))}")


def _resolve_t_noisy(process: GaussianProcess, t_noisy: Optional[float], sigma_noisy: Optional[float]) -> float:
    if t_noisy is not None and sigma_noisy is not None:
        raise ValueError("give either t_noisy or sigma_noisy, not both")
    if t_noisy is not None:
        if not 0.0 < float(t_noisy) < 1.0:
            raise ValueError(f"t_noisy must be in (0, 1), got {t_noisy}")
        return float(t_noisy)
    sig = 0.5 if sigma_noisy is None else float(sigma_noisy)
    if not (sig > 0 and math.isfinite(sig)):
        raise ValueError(f"sigma_noisy must be a positive finite number, got {sigma_noisy}")
    t = float(process.t_of_lambda(torch.tensor(-math.log(sig), dtype=torch.float64)))
    if not 0.0 < t < 1.0:
        raise ValueError(f"sigma_noisy {sig} is outside this process's noise range (it maps to t = {t:.4g})")
    return t


@dataclass
class AmbientOptions(MethodOptions):
    """Options of method ``ambient`` (``distill.KEY=VALUE``, documented in :func:`ambient_recipe`)."""

    clean_fraction: float = 0.1
    t_noisy: Optional[float] = None
    sigma_noisy: Optional[float] = None
    dataset_size: Optional[int] = None
    data_seed: int = 0
    noisy_loss: str = "ambient"
    weighting: str = "epsilon"
    ambient_weighting: str = "xtn"
    time_sampler: str = "uniform"
    balance: bool = True
    sigma_data: float = 0.5
    max_factor: float = 1e4
    init: str = "scratch"
    backbone: Optional[dict] = None
    sampler: str = "dpm_solver_pp_3m"

    def __post_init__(self):
        super().__post_init__()
        _check_choice("noisy_loss", self.noisy_loss, NOISY_LOSSES)
        _check_choice("init", self.init, INITS)
        if not 0.0 < float(self.clean_fraction) <= 1.0:
            raise ValueError(f"clean_fraction must be in (0, 1], got {self.clean_fraction}")
        if self.dataset_size is not None and (isinstance(self.dataset_size, bool) or int(self.dataset_size) != self.dataset_size or int(self.dataset_size) < 1):
            raise ValueError(f"dataset_size must be a positive integer or None, got {self.dataset_size!r}")
        if not isinstance(self.balance, bool):
            raise ValueError(f"balance must be true or false, got {self.balance!r}")
        if self.backbone is not None and not isinstance(self.backbone, dict):
            raise ValueError(f"backbone must be a dict of domain.build_backbone kwargs, got {type(self.backbone).__name__}")


@register_method("ambient", options=AmbientOptions, kind="flow",
                 description="train a teacher from mostly noisy data (fixed per-example noise at t_noisy) plus a small clean set "
                             "with the Tweedie-consistent ambient loss; sampled by a training-free solver",
                 paper="Daras et al. 2024 (Consistent Diffusion Meets Tweedie; How much is a noisy image worth?); "
                       "Daras et al. 2025 (Ambient Diffusion Omni)")
def ambient_recipe(ctx: RecipeContext, opts: AmbientOptions) -> DistillSetup:
    """Ambient training of a denoiser (module docstring) as a method of the registry.

    The trained net ``"model"`` (with EMA) is a fresh ``domain.build_backbone(**backbone)``
    (``backbone`` ``{}``/``None``: the full-size backbone, the teacher's architecture) or,
    with ``init="teacher"``, a copy of the teacher's weights. ``ctx.teacher`` is NOT used for
    training: it only provides the initial weights for ``init="teacher"`` (and the
    parameterization). Note that with ``init="teacher"`` the model starts from a network
    trained on clean data, which defeats the point of the comparison; the default is
    ``scratch``.

    Options: ``clean_fraction`` (fraction of clean examples, ``(0, 1]``); ``t_noisy`` (noise
    time of the noisy examples) or ``sigma_noisy`` (their ``sigma~ = sigma / alpha``, default
    0.5 when neither is given); ``dataset_size`` (``N``; ``None``: the whole split of domains
    with a finite one, smaller values subsample it; :data:`SAMPLER_DATASET_SIZE` samples drawn
    once for domains that sample fresh data, e.g. toy); ``data_seed``; ``noisy_loss``
    (``ambient`` | ``drop``: train on the clean subset only, the baseline | ``naive``: treat
    noisy observations as clean); ``weighting``, ``ambient_weighting``, ``time_sampler``,
    ``sigma_data``, ``max_factor`` (:class:`AmbientLoss`); ``balance`` (pair each slot's time
    with an example observed at or below it, :class:`AmbientData`; ``False``: uniform
    examples, noisy ones at truncated times); ``init``; ``backbone``;
    ``sampler``: the training-free sampler of the exported ``flow`` generator.

    When the domain's own objective wraps a base loss (an object with ``.base``, e.g. the
    images domain's classifier-free-guidance label dropout), the ambient loss runs inside
    that wrapper, so conditional models still learn the null label.
    """
    from ..samplers import get as get_sampler
    from .generators import FlowGenerator
    from .recipes import make_student

    get_sampler(opts.sampler)
    proc = ctx.process
    tn = _resolve_t_noisy(proc, opts.t_noisy, opts.sigma_noisy)
    loss = AmbientLoss(proc, None, noisy_loss="naive" if opts.noisy_loss == "naive" else "ambient", weighting=opts.weighting,
                       ambient_weighting=opts.ambient_weighting, time_sampler=opts.time_sampler, sigma_data=opts.sigma_data, max_factor=opts.max_factor)
    data = AmbientData(ctx.domain, clean_fraction=float(opts.clean_fraction), t_noisy=tn,
                       dataset_size=None if opts.dataset_size is None else int(opts.dataset_size), data_seed=opts.data_seed,
                       noisy_loss=opts.noisy_loss, time_sampler=opts.time_sampler if opts.balance else None)
    sspec = student_spec(ctx.teacher, ctx.domain, backbone=opts.backbone)
    model = make_student(ctx, sspec, init=opts.init)
    objective: Any = loss
    dom_obj = ctx.domain.objective()
    if hasattr(dom_obj, "base"):  # e.g. label dropout for classifier-free guidance
        adapter = _KeepExtra(loss)
        wrapper = copy.copy(dom_obj)
        wrapper.base = adapter
        objective = _DomainWrapped(wrapper, adapter)

    def make_generator(n):
        return FlowGenerator(n["model"], proc, sampler=opts.sampler, prediction=sspec["prediction"])

    a_n, s_n = float(proc.alpha(torch.tensor(tn, dtype=torch.float64))), float(proc.sigma(torch.tensor(tn, dtype=torch.float64)))
    info = {"dataset_size": len(data), "n_clean": data.n_clean, "n_noisy": len(data) - data.n_clean, "t_noisy": tn,
            "sigma_noisy": s_n / a_n, "noisy_loss": opts.noisy_loss, "balance": opts.balance, "teacher_used_for_training": False, "init": opts.init}
    return DistillSetup(objective, {"model": model}, ["model"], ["model"], make_generator, data=data, info=info)
