"""What every sampler shares: the model as a sampler sees it, and the registry.

A sampler is a pure function ``fn(model: ModelFn, x: Tensor[B, ...], ts: Tensor[n+1], **opts)
-> Tensor[B, ...]``. ``ts`` is float64, strictly decreasing, in the process's time
(``t = 1`` noise, ``t = 0`` data). ``ModelFn`` counts every network evaluation (NFE),
checks shapes and finiteness, converts the declared parameterization to ``(x0, eps)`` and
applies the process's constraints (``project``: zeroed padding, zero centre of mass). A
sampler must call ``model.project`` on every state it produces and, when the last grid
point is the clean end ``t = 0``, return the data prediction of its last model call there
(the exact limit of every first-order step into ``sigma = 0``); the one exception is
``af3_edm`` with ``step_scale_eta != 1``, which takes Protenix's over-shooting last step.
The finiteness check of every model output costs one reduction (``sum``) per call; the
elementwise check runs only when that sum is not finite, to confirm before raising.

Discrete-state samplers have the same shape, ``fn(model: DiscreteModelFn, x: LongTensor[B, N],
ts: Tensor[n+1], **opts) -> LongTensor[B, N]`` (:mod:`workbench.samplers._discrete`), and live
in the same registry: :class:`SamplerSpec` ``.state`` says which kind of state a sampler works
on, ``.requires`` what more it needs of the process (an absorbing one), and
``available(state=..., process=...)`` lists them.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..processes import DiscreteProcess, GaussianProcess, append_dims, canonical_prediction, prediction_coefficients
from ..utils import Generator, model_kwargs, randn_like

__all__ = ["Prediction", "ModelFn", "SamplerSpec", "register", "register_loader", "get", "available", "SAMPLERS", "REGISTRY", "STATES",
           "REQUIREMENTS", "NEEDS", "LOADERS"]


@dataclass
class Prediction:
    """One model evaluation at time ``t`` (scalar, or ``[B]``): data and noise predictions ``[B, ...]``."""

    x0: Tensor
    eps: Tensor
    t: Any  # float, or a float64 [B] tensor for per-sample evaluations

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
        self._cache: dict = {}
        self._dcache: dict = {}
        self._dpending: list = []

    # -- schedule scalars, computed once per time (float64) ---------------------------------
    def _sched(self, t: float) -> tuple:
        """``(alpha, sigma, lambda)`` at ``t`` as Python floats (float64), cached per time."""
        hit = self._cache.get(t)
        if hit is None:
            la, ls = self.process.log_alpha_sigma(torch.tensor(t, dtype=torch.float64))
            la, ls = float(la), float(ls)
            hit = self._cache[t] = (math.exp(la), math.exp(ls), math.inf if t <= 0.0 else la - ls)
        return hit

    def prime(self, ts: Tensor) -> None:
        """Fill the schedule cache ``(alpha, sigma, lambda)`` for a whole grid ``[n + 1]`` in one
        vectorised call, and remember the grid: the first derivative request
        (:meth:`velocity`, the ``velocity`` parameterization) computes ``(alpha', sigma')`` for
        every primed time in one vectorised call as well (no per-step autograd)."""
        ts = torch.as_tensor(ts, dtype=torch.float64).reshape(-1)
        la, ls = self.process.log_alpha_sigma(ts)
        tl = ts.tolist()
        for t, a_, s_ in zip(tl, la.tolist(), ls.tolist()):
            self._cache[t] = (math.exp(a_), math.exp(s_), math.inf if t <= 0.0 else a_ - s_)
        self._dpending.extend(t for t in tl if t not in self._dcache)

    def _prime_derivatives(self) -> None:
        """``(alpha', sigma')`` of every primed time not yet cached, in one vectorised call."""
        pending = sorted(set(self._dpending))
        self._dpending = []
        if not pending:
            return
        tt = torch.tensor(pending, dtype=torch.float64)
        da, ds = self.process.d_alpha_sigma(tt)
        da, ds = torch.as_tensor(da).reshape(-1), torch.as_tensor(ds).reshape(-1)
        if da.shape == tt.shape and ds.shape == tt.shape:
            for t, a_, s_ in zip(pending, da.tolist(), ds.tolist()):
                self._dcache[t] = (a_, s_)

    def _deriv(self, t: float) -> tuple:
        """``(alpha'(t), sigma'(t))`` as floats, cached (only velocity needs them)."""
        hit = self._dcache.get(t)
        if hit is None and self._dpending:
            self._prime_derivatives()
            hit = self._dcache.get(t)
        if hit is None:
            da, ds = self.process.d_alpha_sigma(torch.tensor(t, dtype=torch.float64))
            hit = self._dcache[t] = (float(da), float(ds))
        return hit

    # -- the one network evaluation --------------------------------------------------------
    def __call__(self, x: Tensor, t) -> Prediction:
        """Evaluate the model at state ``x`` ``[B, ...]`` (one NFE) at a scalar time ``t`` or at
        per-sample times ``t`` ``[B]`` (e.g. the Time-Shift Sampler); ``Prediction.t`` is then
        the float64 ``[B]`` tensor."""
        per_sample = isinstance(t, Tensor) and t.ndim == 1
        if per_sample and bool((t == t[0]).all()):
            t, per_sample = float(t[0]), False
        if per_sample:
            if t.shape != (x.shape[0],):
                raise ValueError(f"per-sample times must have shape [B] = [{x.shape[0]}], got {tuple(t.shape)}")
            t = t.to(device=x.device, dtype=torch.float64)
            tb = t.to(x.dtype if x.is_floating_point() else torch.float32)
        else:
            t = float(t)
            tb = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
        out = self.model(x, tb, **model_kwargs(self.mask, self.cond)) if (self.mask is not None or self.cond is not None) \
            else self.model(x, tb)
        self.nfe += 1
        if not isinstance(out, Tensor):
            raise TypeError(f"model must return a tensor, got {type(out).__name__}")
        if out.shape != x.shape:
            raise ValueError(f"model returned shape {tuple(out.shape)} for input shape {tuple(x.shape)}; a {self.prediction} prediction must match the input shape")
        if not _all_finite(out):
            where = f"t={t:.6g}" if not per_sample else f"per-sample t in [{float(t.min()):.4g}, {float(t.max()):.4g}]"
            raise FloatingPointError(f"model returned NaN/Inf at {where} (model call {self.nfe}); check the checkpoint, the input scale and the prediction type ({self.prediction!r})")
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        if per_sample:
            x0, eps = self.process.to_x0_eps(out, self.prediction, x, t)
            if not (_all_finite(x0) and _all_finite(eps)):
                raise FloatingPointError(f"converting the {self.prediction!r} prediction to x0/eps at per-sample times gives NaN/Inf")
        else:
            x0, eps = self._to_x0_eps(out, x, t)
        if self.x0_clip is not None:
            x0 = x0.clamp(-self.x0_clip, self.x0_clip)
            if per_sample:
                la, ls = self.process.log_alpha_sigma(t)
                a, s = append_dims(la.exp().to(x.dtype), x.ndim), append_dims(ls.exp().to(x.dtype), x.ndim)
                eps = (x - a * x0) / s
            else:
                a, s = self.coef(t)
                eps = (x - a * x0) / s if s > 0 else eps
        if self.mask is not None or self.process.zero_com:
            x0 = self.project(x0)
            eps = self.project(eps)
        if self.callback is not None:
            self.callback({"nfe": self.nfe, "t": t, "x": x, "x0": x0})
        return Prediction(x0=x0, eps=eps, t=t)

    def _to_x0_eps(self, out: Tensor, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        """:meth:`GaussianProcess.to_x0_eps` at a scalar time with the cached schedule: the
        coefficients of :func:`~workbench.processes.prediction_coefficients`."""
        a, s, _ = self._sched(t)
        p = self.prediction

        def bad(what):
            return FloatingPointError(f"converting the {p!r} prediction to x0/eps at t={t:.6g} divides by zero ({what}; "
                                      f"alpha={a:.3g}, sigma={s:.3g}); start the grid below t=1 or use an x0 / v / velocity model "
                                      "for processes with alpha(1)=0")

        if p == "x0":
            if s <= 0:  # the clean end: eps is undefined and unused
                return out, torch.zeros_like(x)
            c = prediction_coefficients(p, a, s)
            return out, torch.mul(x, c.eps_x).add_(out, alpha=c.eps_out)
        da = ds = None
        if p == "velocity":
            da, ds = self._deriv(t)
            if a * ds - s * da == 0:
                raise bad("alpha sigma' - sigma alpha' = 0")
        elif p != "v" and a <= 0:
            raise bad("alpha = 0")
        c = prediction_coefficients(p, a, s, da, ds)
        # (fused scalar ops on fresh tensors: torch.mul(x, c).add_(y, alpha=d) = c x + d y)
        x0 = torch.mul(x, c.x0_x).add_(out, alpha=c.x0_out) if c.x0_x != 0 else torch.mul(out, c.x0_out)
        eps = out if p == "epsilon" else torch.mul(x, c.eps_x).add_(out, alpha=c.eps_out) if c.eps_x != 0 else torch.mul(out, c.eps_out)
        return x0, eps

    # -- helpers every sampler uses ----------------------------------------------------------
    def project(self, x: Tensor) -> Tensor:
        """Apply the process constraints (zeroed padding, zero CoM) under ``self.mask``."""
        return self.process.project(x, self.mask)

    def noise_like(self, x: Tensor) -> Tensor:
        """Fresh projected standard-normal noise shaped like ``x`` (per-sample generators)."""
        return self.project(randn_like(x, self.generator))

    def coef(self, t) -> tuple[float, float]:
        """``(alpha(t), sigma(t))`` as Python floats (computed in float64, cached)."""
        a, s, *_ = self._sched(float(t))
        return a, s

    def lam(self, t) -> float:
        """Log-SNR ``lambda(t)`` as a float (``+inf`` at the clean end, may be ``-inf`` at t=1)."""
        return self._sched(float(t))[2]

    def t_of_lambda(self, lam: float) -> float:
        return float(self.process.t_of_lambda(torch.tensor(lam, dtype=torch.float64)))

    def velocity(self, pred: Prediction) -> Tensor:
        """Probability-flow ODE drift ``alpha'(t) x0 + sigma'(t) eps`` of a prediction."""
        da, ds = self._deriv(pred.t)
        return torch.mul(pred.x0, da).add_(pred.eps, alpha=ds)


def _all_finite(out: Tensor) -> bool:
    """True if every entry of ``out`` is finite. One reduction (``sum``) decides the usual case;
    only a non-finite sum (a NaN / inf entry, or a float overflow of the sum of finite entries)
    runs the elementwise check, so an overflowing sum never raises a false error."""
    if not out.is_floating_point():
        return bool(torch.isfinite(out).all())
    if out.numel() == 0:
        return True
    if math.isfinite(float(out.detach().sum())):
        return True
    return bool(torch.isfinite(out).all())


def is_clean(t) -> bool:
    """True if ``t`` is the clean end of a grid (``t = 0``, ``sigma = 0``)."""
    return float(t) <= 0.0


def expand(v: Tensor, x: Tensor) -> Tensor:
    return append_dims(v, x.ndim)


#: the kinds of state a sampler works on (``SamplerSpec.state``): ``continuous`` samplers take a
#: :class:`ModelFn` over a Gaussian process, ``discrete`` ones a
#: :class:`~workbench.samplers._discrete.DiscreteModelFn` over a discrete process
STATES = ("continuous", "discrete")
#: what a sampler may further require of its process (``SamplerSpec.requires``):
#: ``absorbing``: a masked (absorbing-state) discrete process (``process.mask_id is not None``)
REQUIREMENTS = ("absorbing",)
#: what a sampler may need from its caller (``SamplerSpec.needs``): ``reward``: a
#: ``reward(x LongTensor|Tensor [B, ...], mask) -> [B]`` option (reward-guided samplers, SVDD)
NEEDS = ("reward",)


@dataclass(frozen=True)
class SamplerSpec:
    """Registry entry. ``nfe(steps)`` is the exact number of model calls for a grid of
    ``steps`` intervals ending at the clean end (an upper bound for samplers that skip calls,
    ``mdlm_cached``; ``run_sampler`` reports the real count); ``stochastic`` samplers inject
    noise. ``state`` is the kind of state it works on (:data:`STATES`) and ``requires`` what it
    further needs of the process (:data:`REQUIREMENTS`)."""

    name: str
    fn: Callable
    nfe: Callable[[int], int]
    order: Optional[int]
    stochastic: bool
    reference: str
    options: dict = field(default_factory=dict)
    state: str = "continuous"
    requires: tuple = ()
    #: a learned grid the sampler carries (``[K + 1]`` floats, e.g. LSD+): ``run_sampler`` uses it
    #: (and then needs ``steps = K``) unless the caller passes its own ``timesteps``
    timesteps: Optional[tuple] = None
    #: what the caller must supply besides the model (:data:`NEEDS`), e.g. ``reward`` for SVDD;
    #: the runner passes the domain's (``Domain.reward``)
    needs: tuple = ()

    def steps_for_nfe(self, nfe: int) -> Optional[int]:
        """Smallest ``steps`` with exactly ``nfe`` model calls, or ``None`` if unreachable."""
        for s in range(1, 4 * nfe + 2):
            if self.nfe(s) == nfe:
                return s
            if self.nfe(s) > nfe:
                return None
        return None

    def supports(self, process) -> bool:
        """True if this sampler runs on ``process``: a Gaussian process for ``continuous``
        samplers, a discrete one (absorbing where required) for ``discrete`` ones."""
        if self.state == "continuous":
            return isinstance(process, GaussianProcess)
        if not isinstance(process, DiscreteProcess):
            return False
        return "absorbing" not in self.requires or process.absorbing

    def mismatch(self, process) -> str:
        """The one-line reason this sampler cannot run on ``process``, naming the valid samplers."""
        need = "an absorbing (masked) discrete process" if "absorbing" in self.requires else \
            ("a discrete process" if self.state == "discrete" else "a continuous Gaussian process")
        valid = available(process=process)
        return (f"sampler {self.name!r} needs {need}, got {type(process).__name__}; "
                f"valid for this process: {', '.join(valid) or '(none)'}")


#: the ONE registry of every sampler, continuous and discrete (``name -> SamplerSpec``)
REGISTRY: dict[str, SamplerSpec] = {}


class _StateView(Mapping):
    """Read-only view of :data:`REGISTRY` restricted to one ``state``."""

    def __init__(self, registry: dict, state: str):
        self._registry, self._state = registry, state

    def __getitem__(self, name: str) -> SamplerSpec:
        spec = self._registry[name]
        if spec.state != self._state:
            raise KeyError(name)
        return spec

    def __iter__(self):
        return (k for k, v in self._registry.items() if v.state == self._state)

    def __len__(self) -> int:
        return sum(1 for v in self._registry.values() if v.state == self._state)

    def __repr__(self) -> str:
        return f"SAMPLERS({self._state}: {', '.join(sorted(self))})"


#: the continuous samplers (a live view of :data:`REGISTRY`): what callers that iterate
#: ``SAMPLERS`` (the sampler benchmark, convergence tests) have always meant; use
#: :data:`REGISTRY`, :func:`available` ``(state=...)`` or ``(process=...)`` for the others
SAMPLERS: Mapping = _StateView(REGISTRY, "continuous")


def register(name: str, *, nfe: Callable[[int], int] = lambda n: n, order: Optional[int] = None, stochastic: bool = False,
             reference: str = "", state: str = "continuous", requires: tuple = (), needs: tuple = (), **options):
    """Decorator: register a sampler function under ``name``. ``options`` fixes keyword
    arguments (so ``deis_2`` is ``deis`` with ``order=2``); ``state`` (:data:`STATES`) and
    ``requires`` (:data:`REQUIREMENTS`) say which processes it runs on."""
    if state not in STATES:
        raise ValueError(f"unknown sampler state {state!r}; valid: {', '.join(STATES)}")
    bad = [r for r in requires if r not in REQUIREMENTS]
    if bad:
        raise ValueError(f"unknown sampler requirement(s) {', '.join(map(repr, bad))}; valid: {', '.join(REQUIREMENTS)}")
    bad = [r for r in needs if r not in NEEDS]
    if bad:
        raise ValueError(f"unknown sampler need(s) {', '.join(map(repr, bad))}; valid: {', '.join(NEEDS)}")

    def deco(fn):
        if name in REGISTRY:
            raise ValueError(f"sampler {name!r} registered twice")
        REGISTRY[name] = SamplerSpec(name=name, fn=fn, nfe=nfe, order=order, stochastic=stochastic, reference=reference,
                                     options=dict(options), state=state, requires=tuple(requires), needs=tuple(needs))
        return fn

    return deco


def available(state: Optional[str] = "continuous", *, process=None) -> list[str]:
    """Names of the registered samplers, sorted.

    ``state``: ``continuous`` (default: what every caller before discrete state meant),
    ``discrete``, or ``None`` for all. ``process``: if given, exactly the samplers that run on
    it (``state`` is then ignored)."""
    if process is not None:
        return sorted(k for k, v in REGISTRY.items() if v.supports(process))
    if state is not None and state not in STATES:
        raise ValueError(f"unknown sampler state {state!r}; valid: {', '.join(STATES)}, or None for all")
    return sorted(k for k, v in REGISTRY.items() if state is None or v.state == state)


#: ``prefix -> loader(path) -> SamplerSpec``: learned samplers stored in files, named
#: ``prefix:PATH`` wherever a sampler name is accepted (e.g. ``sampler=lsd:runs/lsd/generator.safetensors``)
LOADERS: dict[str, Callable[[str], SamplerSpec]] = {}


def register_loader(prefix: str, loader: Callable[[str], SamplerSpec]) -> None:
    """Make ``get(f"{prefix}:PATH")`` return ``loader(PATH)`` (a learned sampler file)."""
    if prefix in LOADERS and LOADERS[prefix] is not loader:
        raise ValueError(f"sampler file prefix {prefix!r} registered twice")
    LOADERS[prefix] = loader


def get(name: str) -> SamplerSpec:
    """The :class:`SamplerSpec` of ``name`` (any state), or of a learned sampler file
    ``prefix:PATH`` (:data:`LOADERS`, e.g. ``lsd:PATH``)."""
    if name in REGISTRY:
        return REGISTRY[name]
    prefix, sep, path = str(name).partition(":")
    if sep and prefix in LOADERS:
        if not path:
            raise ValueError(f"sampler {name!r} names no file; write {prefix}:PATH")
        return LOADERS[prefix](path)
    files = f"; or a trained sampler file: {', '.join(p + ':PATH' for p in sorted(LOADERS))}" if LOADERS else ""
    raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(available(None))}{files}")
