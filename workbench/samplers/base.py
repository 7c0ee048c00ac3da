"""What every sampler shares: the model as a sampler sees it, and the registry.

A sampler is a pure function ``fn(model: ModelFn, x: Tensor[B, ...], ts: Tensor[n+1], **opts)
-> Tensor[B, ...]``. ``ts`` is float64, strictly decreasing, in the process's time
(``t = 1`` noise, ``t = 0`` data). ``ModelFn`` counts every network evaluation (NFE),
checks shapes and finiteness, converts the declared parameterization to ``(x0, eps)`` and
applies the process's constraints (``project``: zeroed padding, zero centre of mass). A
sampler must call ``model.project`` on every state it produces and, when the last grid
point is the clean end ``t = 0``, return the data prediction of its last model call there
(the exact limit of every first-order step into ``sigma = 0``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..processes import GaussianProcess, append_dims, canonical_prediction
from ..utils import Generator, randn_like

__all__ = ["Prediction", "ModelFn", "SamplerSpec", "register", "get", "available", "SAMPLERS"]


@dataclass
class Prediction:
    """One model evaluation at scalar time ``t``: data and noise predictions ``[B, ...]``."""

    x0: Tensor
    eps: Tensor
    t: float

    def velocity(self, process: GaussianProcess) -> Tensor:
        """Probability-flow ODE drift ``dx/dt = alpha'(t) x0 + sigma'(t) eps``."""
        da, ds = process.d_alpha_sigma(torch.tensor(self.t, dtype=torch.float64))
        return float(da) * self.x0 + float(ds) * self.eps


class ModelFn:
    """The user's model as samplers see it. One ``__call__`` is one NFE.

    Args:
        model: ``model(x_t [B, ...], t [B], **kw) -> prediction [B, ...]``; ``mask=`` and
            ``cond=`` keywords are passed only when given.
        process: a :class:`~workbench.processes.GaussianProcess`.
        prediction: the model's parameterization (``x0 / epsilon / v / velocity / score``).
        mask: optional ``[B, N]`` validity mask of set/chain states ``[B, N, ...]``.
        cond: optional conditioning passed through to ``model``.
        generator: ``None``, a ``torch.Generator`` or ``B`` per-sample generators.
        callback: optional ``callback(info: dict)`` after every model call.
        x0_clip: optional ``float``: clamp the data prediction to ``[-x0_clip, x0_clip]``.
    """

    def __init__(self, model: Callable, process: GaussianProcess, prediction: str = "epsilon", *, mask: Optional[Tensor] = None,
                 cond: Any = None, generator: Generator = None, callback: Optional[Callable] = None, x0_clip: Optional[float] = None):
        if not isinstance(process, GaussianProcess):
            raise TypeError(f"these samplers need a continuous Gaussian process, got {type(process).__name__}")
        self.model = model
        self.process = process
        self.prediction = canonical_prediction(prediction)
        self.mask = mask
        self.cond = cond
        self.generator = generator
        self.callback = callback
        self.x0_clip = x0_clip
        self.nfe = 0

    # -- the one network evaluation --------------------------------------------------------
    def __call__(self, x: Tensor, t) -> Prediction:
        """Evaluate the model at state ``x`` ``[B, ...]`` and scalar time ``t`` (one NFE)."""
        t = float(t)
        tb = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
        kw = {}
        if self.mask is not None:
            kw["mask"] = self.mask
        if self.cond is not None:
            kw["cond"] = self.cond
        out = self.model(x, tb, **kw)
        self.nfe += 1
        if not isinstance(out, Tensor):
            raise TypeError(f"model must return a tensor, got {type(out).__name__}")
        if out.shape != x.shape:
            raise ValueError(f"model returned shape {tuple(out.shape)} for input shape {tuple(x.shape)}; a {self.prediction} prediction must match the input shape")
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError(f"model returned NaN/Inf at t={t:.6g} (model call {self.nfe}); check the checkpoint, the input scale and the prediction type ({self.prediction!r})")
        out = out.to(x.dtype)
        if self.prediction == "x0":
            x0 = out
            s = self.process.sigma(torch.tensor(t, dtype=torch.float64))
            eps = (x - float(self.process.alpha(torch.tensor(t, dtype=torch.float64))) * x0) / float(s) if float(s) > 0 else torch.zeros_like(x)
        else:
            x0, eps = self.process.to_x0_eps(out, self.prediction, x, torch.tensor(t, dtype=torch.float64))
        if self.x0_clip is not None:
            x0 = x0.clamp(-self.x0_clip, self.x0_clip)
            a, s = self.coef(t)
            eps = (x - a * x0) / s if s > 0 else eps
        if not (bool(torch.isfinite(x0).all()) and bool(torch.isfinite(eps).all())):
            raise FloatingPointError(f"converting the {self.prediction!r} prediction to x0/eps at t={t:.6g} gives NaN/Inf "
                                     f"(alpha={self.coef(t)[0]:.3g}, sigma={self.coef(t)[1]:.3g}); start the grid below t=1 "
                                     "or use an x0 / v / velocity model for processes with alpha(1)=0")
        x0 = self.project(x0)
        eps = self.project(eps)
        if self.callback is not None:
            self.callback({"nfe": self.nfe, "t": t, "x": x, "x0": x0})
        return Prediction(x0=x0, eps=eps, t=t)

    # -- helpers every sampler uses ----------------------------------------------------------
    def project(self, x: Tensor) -> Tensor:
        """Apply the process constraints (zeroed padding, zero CoM) under ``self.mask``."""
        return self.process.project(x, self.mask)

    def noise_like(self, x: Tensor) -> Tensor:
        """Fresh projected standard-normal noise shaped like ``x`` (per-sample generators)."""
        return self.project(randn_like(x, self.generator))

    def coef(self, t) -> tuple[float, float]:
        """``(alpha(t), sigma(t))`` as Python floats (computed in float64)."""
        tt = torch.tensor(float(t), dtype=torch.float64)
        la, ls = self.process.log_alpha_sigma(tt)
        return math.exp(float(la)), math.exp(float(ls))

    def lam(self, t) -> float:
        """Log-SNR ``lambda(t)`` as a float (``+inf`` at the clean end, may be ``-inf`` at t=1)."""
        if float(t) == 0.0:
            return math.inf
        return float(self.process.lambda_(torch.tensor(float(t), dtype=torch.float64)))

    def t_of_lambda(self, lam: float) -> float:
        return float(self.process.t_of_lambda(torch.tensor(lam, dtype=torch.float64)))

    def velocity(self, pred: Prediction) -> Tensor:
        return pred.velocity(self.process)


def is_clean(t) -> bool:
    """True if ``t`` is the clean end of a grid (``t = 0``, ``sigma = 0``)."""
    return float(t) <= 0.0


def expand(v: Tensor, x: Tensor) -> Tensor:
    return append_dims(v, x.ndim)


@dataclass(frozen=True)
class SamplerSpec:
    """Registry entry. ``nfe(steps)`` is the exact number of model calls for a grid of
    ``steps`` intervals ending at the clean end; ``stochastic`` samplers inject noise."""

    name: str
    fn: Callable
    nfe: Callable[[int], int]
    order: Optional[int]
    stochastic: bool
    reference: str
    options: dict = field(default_factory=dict)

    def steps_for_nfe(self, nfe: int) -> Optional[int]:
        """Smallest ``steps`` with exactly ``nfe`` model calls, or ``None`` if unreachable."""
        for s in range(1, 4 * nfe + 2):
            if self.nfe(s) == nfe:
                return s
            if self.nfe(s) > nfe:
                return None
        return None


SAMPLERS: dict[str, SamplerSpec] = {}


def register(name: str, *, nfe: Callable[[int], int] = lambda n: n, order: Optional[int] = None, stochastic: bool = False,
             reference: str = "", **options):
    """Decorator: register a sampler function under ``name``. ``options`` fixes keyword
    arguments (so ``deis_2`` is ``deis`` with ``order=2``)."""

    def deco(fn):
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} registered twice")
        SAMPLERS[name] = SamplerSpec(name=name, fn=fn, nfe=nfe, order=order, stochastic=stochastic, reference=reference, options=dict(options))
        return fn

    return deco


def available() -> list[str]:
    """Names of all registered samplers."""
    return sorted(SAMPLERS)


def get(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(available())}")
    return SAMPLERS[name]
