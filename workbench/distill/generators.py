"""Few-step generators: what every distillation method produces, with ONE sampling
interface and ONE checkpoint format.

``gen.generate(x_T [B, ...], steps=None, *, timesteps=None, mask=None, cond=None,
generator=None, noise_scale=1.0) -> x0 [B, ...]`` and ``gen.nfe(steps) -> int``.

Kinds (the ``spec["kind"]`` stored in a ``generator.safetensors`` header):

* ``consistency`` (:class:`~workbench.distill.base.FewStepGenerator`): an x0 student with
  multistep consistency sampling (re-noise between steps). Consistency distillation, DMD2,
  SiD, Flash-DMD, TDM produce it.
* ``flow`` (:class:`FlowGenerator`): a student *denoiser* in the domain's process sampled by
  a training-free core sampler (default ``euler``, i.e. DDIM) on a fixed or searched grid.
  Reflow, SlimFlow, BOSS and MDT-dist produce it. Any Gaussian path is a time
  reparameterisation of the linear interpolant (``z = x / (alpha + sigma)``,
  ``u = sigma / (alpha + sigma)``), and the DDIM step is the Euler step of that straight
  path, so "straight trajectories" in rectified-flow papers are constant-x0 trajectories here.
* ``meanflow`` (:class:`TwoTimeGenerator`): an average-velocity student ``u(z, r, t)``
  (MeanFlow, SplitMeanFlow), one jump per step in the linear view of the process.
* ``experts`` (:class:`ExpertsGenerator`): one x0 expert per step / SNR phase (Phased DMD).
* ``multi_student`` (:class:`MultiStudentGenerator`): students owning parts of the condition
  (or noise) space, each a generator of the kinds above (multi-student distillation).

Time convention as everywhere: ``t = 0`` data, ``t = 1`` noise.
"""
from __future__ import annotations

import abc

from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..losses import tree_map
from ..samplers import get as get_sampler
from ..processes import GaussianProcess, append_dims, canonical_prediction
from ..utils import Generator, model_kwargs
from .students import build_student, student_config_of

__all__ = ["GENERATORS", "GENERATOR_KINDS", "BaseGenerator", "build_generator", "upgrade_spec", "FlowGenerator", "TwoTimeGenerator",
           "ExpertsGenerator", "MultiStudentGenerator", "linear_view", "from_linear_view", "default_grid", "route_by_noise",
           "slice_batch"]

#: class name -> generator class (every :class:`BaseGenerator` subclass registers itself)
GENERATORS: dict[str, type] = {}


class BaseGenerator(nn.Module, metaclass=abc.ABCMeta):
    """A few-step generator that describes itself: ``to_config()`` is a JSON dict (with its
    ``"class"`` and ``kind``) stored in the ``generator.safetensors`` header, and
    ``cls.from_config(domain, config)`` rebuilds the (untrained) module from it and the
    domain, so a checkpoint needs nothing but the domain to load. Subclasses register
    themselves by class name (:data:`GENERATORS`; :func:`build_generator` dispatches on it)."""

    kind = "base"

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.__name__ in GENERATORS and GENERATORS[cls.__name__] is not cls:
            raise ValueError(f"a generator class named {cls.__name__!r} is already registered")
        GENERATORS[cls.__name__] = cls

    def to_config(self) -> dict:
        return {"class": type(self).__name__, "kind": self.kind, **self._config()}

    @abc.abstractmethod
    def _config(self) -> dict:
        """The class's own JSON fields (everything :meth:`from_config` needs besides the domain)."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, domain, config: dict) -> "BaseGenerator":
        """The untrained module described by ``config`` (a :meth:`to_config` dict) for ``domain``."""

    @abc.abstractmethod
    def nfe(self, steps: Optional[int] = None) -> int:
        """Network evaluations of one :meth:`generate` call with ``steps`` steps."""

    @abc.abstractmethod
    def generate(self, x_T: Tensor, steps: Optional[int] = None, *, timesteps=None, mask: Optional[Tensor] = None,
                 cond: Any = None, generator: Generator = None, noise_scale: Optional[float] = None) -> Tensor:
        """Samples ``[B, ...]`` from prior noise ``x_T`` in ``steps`` steps."""


def _floats(ts) -> Optional[list]:
    return None if ts is None else [float(t) for t in ts]


def _same_inner(parts) -> dict:
    cfgs = [g.to_config() for g in parts]
    if any(c != cfgs[0] for c in cfgs[1:]):
        raise ValueError("the sub-generators differ in their config; one inner config describes them all")
    return cfgs[0]


#: the ``kind`` of the headers written before generators had a ``"class"`` -> the class name
_KIND_CLASS = {"consistency": "FewStepGenerator", "flow": "FlowGenerator", "meanflow": "TwoTimeGenerator",
               "experts": "ExpertsGenerator", "multi_student": "MultiStudentGenerator"}
GENERATOR_KINDS = tuple(_KIND_CLASS)


def upgrade_spec(spec: dict) -> dict:
    """The config of a header written before ``to_config`` (its ``"spec"``: ``kind`` but no
    ``"class"``), with the defaults those files relied on made explicit (e.g. experts without
    a ``transition`` were re-noised); a config passes through unchanged."""
    if "class" in spec:
        return spec
    kind = spec.get("kind")
    if kind not in _KIND_CLASS:
        raise ValueError(f"unknown generator kind {kind!r}; valid: {', '.join(GENERATOR_KINDS)}")
    cfg = {"class": _KIND_CLASS[kind], **spec}
    if "inner" in cfg:
        cfg["inner"] = upgrade_spec(cfg["inner"])
    if kind == "consistency":
        cfg = {"parameterization": "x0", "sigma_data": 0.5, "timesteps": None, "noise_scale": 1.0, "scale_initial_noise": False,
               "prediction": spec["student"].get("prediction"), **cfg}
    elif kind == "flow":
        cfg = {"sampler": "euler", "timesteps": None, "options": {}, "prediction": spec["student"].get("prediction"), **cfg}
    elif kind == "experts":
        cfg = {"transition": "renoise", **cfg}
    elif kind == "multi_student":
        cfg = {"router": "cond", **cfg}
    return cfg


def build_generator(domain, config: dict) -> nn.Module:
    """The (untrained) generator described by ``config`` (a ``to_config()`` dict, or the
    ``spec`` of an older header) for ``domain``; load the exported ``state_dict`` into it."""
    cfg = upgrade_spec(dict(config))
    cls = GENERATORS.get(cfg["class"])
    if cls is None:
        raise ValueError(f"unknown generator class {cfg['class']!r}; valid: {', '.join(sorted(GENERATORS))}")
    return cls.from_config(domain, cfg)


def default_grid(process: GaussianProcess, steps: int, timesteps=None, *, t_start: float = 1.0) -> Tensor:
    """The float64 grid ``[steps + 1]`` a generator samples on: ``timesteps`` if given
    (validated), else uniform in ``t`` from ``t_start`` to 0."""
    from ..timegrids import custom, uniform_t  # noqa: PLC0415  (timegrids is light; kept local to the one user)

    if timesteps is not None:
        return custom(timesteps)
    if steps is None or int(steps) < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    return uniform_t(process, int(steps), t_start=float(t_start))


def t_of_init_sigma(process: GaussianProcess, init_sigma: Optional[float]) -> float:
    """The process time where ``sigma / alpha = init_sigma`` (``None``: 1.0). Few-step
    generators may start below ``t = 1``: Zhou et al. 2024 (SiD) feed the generator
    ``sigma_init z`` with ``sigma_init = 2.5`` in EDM units; starting where the x0 conversion is
    well conditioned matters for epsilon-parameterised students (``x0 = (x - sigma eps) /
    alpha`` amplifies errors by ``1 / alpha``)."""
    if init_sigma is None:
        return 1.0
    if float(init_sigma) <= 0:
        raise ValueError(f"init_sigma must be positive, got {init_sigma}")
    lam = -torch.log(torch.tensor(float(init_sigma), dtype=torch.float64))
    return float(min(1.0, float(process.t_of_lambda(lam))))


def start_state(process: GaussianProcess, x_T: Tensor, t0: float) -> Tensor:
    """The generator input at ``t0`` from prior noise ``x_T`` (``N(0, prior_std^2)``): the noise
    part of the marginal, ``sigma(t0) z`` (equal to ``x_T`` at ``t0 = 1``)."""
    if float(t0) >= 1.0:
        return x_T
    s = float(process.sigma(torch.tensor(float(t0), dtype=torch.float64))) / process.prior_std()
    return x_T * s


# -- the linear view of any Gaussian path ------------------------------------------------------
def linear_view(process: GaussianProcess, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(z, u)`` with ``z = x / (alpha + sigma)`` ``[B, ...]`` and ``u = sigma / (alpha + sigma)``
    ``[B]`` (float64): ``x_t = alpha x0 + sigma eps`` becomes ``z_u = (1 - u) x0 + u eps``,
    the rectified-flow interpolant (Lee et al. 2024 "Improving the training of rectified
    flows", Sec. 2; Karras et al. 2022 eq. 4 for the scaling)."""
    t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    a, s = process.alpha(t), process.sigma(t)
    z = x / append_dims((a + s).to(x.dtype), x.ndim)
    return z, process.u_of_t(t)


def from_linear_view(process: GaussianProcess, z: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`linear_view`: ``(x, t)`` from ``(z [B, ...], u [B])``, ``t =
    process.t_of_u(u)``."""
    t = process.t_of_u(torch.as_tensor(u, dtype=torch.float64, device=z.device))
    a, s = process.alpha(t), process.sigma(t)
    return z * append_dims((a + s).to(z.dtype), z.ndim), t


class FlowGenerator(BaseGenerator):
    """A student denoiser sampled by a training-free sampler of the core.

    Args:
        student: ``student(x_t [B, ...], t [B], *, mask=None, cond=None) -> [B, ...]`` with a
            ``prediction`` attribute (a :class:`~workbench.model.Denoiser`).
        process: the student's process.
        sampler: a name from ``workbench.samplers.available()`` (default ``euler`` = DDIM).
        timesteps: a fixed grid ``[K + 1]`` (e.g. from BOSS); ``None`` uses uniform ``t``.
        options: sampler options.
    """

    kind = "flow"

    def __init__(self, student: nn.Module, process: GaussianProcess, *, sampler: str = "euler", timesteps=None,
                 prediction: Optional[str] = None, options: Optional[dict] = None):
        super().__init__()
        get_sampler(sampler)  # validate the name
        self.student, self.process, self.sampler = student, process, sampler
        self.prediction = canonical_prediction(prediction or getattr(student, "prediction", "epsilon"))
        self.timesteps = None if timesteps is None else torch.as_tensor(timesteps, dtype=torch.float64).flatten()
        self.options = dict(options or {})

    def _config(self) -> dict:
        return {"student": student_config_of(self.student), "sampler": self.sampler, "timesteps": _floats(self.timesteps),
                "options": dict(self.options), "prediction": self.prediction}

    @classmethod
    def from_config(cls, domain, config: dict) -> "FlowGenerator":
        return cls(build_student(domain, config["student"]), domain.process(), sampler=config["sampler"],
                   timesteps=config["timesteps"], prediction=config["prediction"], options=config["options"])

    def nfe(self, steps: Optional[int] = None) -> int:
        k = len(self.timesteps) - 1 if self.timesteps is not None and steps is None else int(steps)
        return int(get_sampler(self.sampler).nfe(k))

    def generate(self, x_T: Tensor, steps: Optional[int] = None, *, timesteps=None, mask: Optional[Tensor] = None, cond: Any = None,
                 generator: Generator = None, noise_scale: float = 1.0) -> Tensor:
        """``x_T`` ``[B, ...]`` -> sample ``[B, ...]`` (``noise_scale`` unused: deterministic)."""
        from ..api import run_sampler

        if timesteps is None and steps is None and self.timesteps is not None:
            timesteps = self.timesteps
        if timesteps is None and self.timesteps is not None and steps == len(self.timesteps) - 1:
            timesteps = self.timesteps
        ts = default_grid(self.process, steps, timesteps)
        return run_sampler(self.student, self.process, x_T, sampler=self.sampler, steps=len(ts) - 1, prediction=self.prediction,
                           timesteps=ts, mask=mask, cond=cond, generator=generator, **self.options).x


class TwoTimeGenerator(BaseGenerator):
    """An average-velocity student ``u(z [B, ...], r [B], t [B], *, mask, cond) -> [B, ...]``
    in the linear view of ``process`` (:func:`linear_view`; the student's times are the
    linear-view times ``u``). One step ``z_r = z_t - (t - r) u(z_t, r, t)`` (Geng et al. 2025,
    "Mean Flows", eq. 12)."""

    kind = "meanflow"

    def __init__(self, student: nn.Module, process: GaussianProcess):
        super().__init__()
        self.student, self.process = student, process

    def _config(self) -> dict:
        return {"student": student_config_of(self.student)}

    @classmethod
    def from_config(cls, domain, config: dict) -> "TwoTimeGenerator":
        return cls(build_student(domain, config["student"]), domain.process())

    def nfe(self, steps: Optional[int] = None) -> int:
        return int(steps)

    def generate(self, x_T: Tensor, steps: Optional[int] = None, *, timesteps=None, mask: Optional[Tensor] = None, cond: Any = None,
                 generator: Generator = None, noise_scale: float = 1.0) -> Tensor:
        p = self.process
        ts = default_grid(p, steps, timesteps).to(x_T.device)
        B = x_T.shape[0]
        z, us = linear_view(p, p.project(x_T, mask), ts[0].expand(B))
        u_grid = p.u_of_t(ts)
        kw = model_kwargs(mask, cond)
        for k in range(len(ts) - 1):
            t = torch.full((B,), float(u_grid[k]), device=z.device, dtype=z.dtype)
            r = torch.full((B,), float(u_grid[k + 1]), device=z.device, dtype=z.dtype)
            z = p.project(z - (t - r).view(-1, *([1] * (z.ndim - 1))) * self.student(z, r, t, **kw), mask)
        return z  # at u = 0 the linear view is the data itself


class ExpertsGenerator(BaseGenerator):
    """One x0 expert per step (Phased DMD: one expert per SNR phase). Step ``k`` from ``t_k`` to
    ``t_{k+1}`` uses the expert of the phase containing ``t_k`` (:meth:`expert_for`); with the
    default grid (the boundaries) step ``k`` uses ``experts[k]``. Between steps
    (``transition``):

    * ``"deterministic"`` (Phased DMD's solver S, Fan et al. 2025 Sec. 2.1.3): the DDIM step
      ``x_{t_{k+1}} = alpha x0_k + sigma (x_{t_k} - alpha_k x0_k) / sigma_k`` (Euler in the
      linear view; ``noise_scale`` unused);
    * ``"renoise"``: fresh noise as in multistep consistency sampling,
      ``alpha x0_k + noise_scale sigma z``.

    Args:
        experts: ``nn.ModuleList`` of x0 students (each a ``FewStepGenerator``-compatible
            student wrapped as :class:`~workbench.distill.base.FewStepGenerator`).
        boundaries: ``[K + 1]`` float64 phase edges, decreasing from the top to 0; the
            default sampling grid.
        transition: ``"deterministic"`` or ``"renoise"``.
    """

    kind = "experts"
    TRANSITIONS = ("deterministic", "renoise")

    def __init__(self, experts: nn.ModuleList, process: GaussianProcess, boundaries, *, transition: str = "deterministic"):
        super().__init__()
        if transition not in self.TRANSITIONS:
            raise ValueError(f"unknown transition {transition!r}; valid: {', '.join(self.TRANSITIONS)}")
        self.experts = experts
        self.process = process
        self.transition = transition
        self.boundaries = torch.as_tensor(boundaries, dtype=torch.float64).flatten()
        if len(self.boundaries) != len(experts) + 1:
            raise ValueError(f"{len(experts)} experts need {len(experts) + 1} boundaries, got {len(self.boundaries)}")

    def _config(self) -> dict:
        return {"n": len(self.experts), "boundaries": _floats(self.boundaries), "transition": self.transition,
                "inner": _same_inner(self.experts)}

    @classmethod
    def from_config(cls, domain, config: dict) -> "ExpertsGenerator":
        experts = nn.ModuleList([build_generator(domain, config["inner"]) for _ in range(int(config["n"]))])
        return cls(experts, domain.process(), config["boundaries"], transition=config["transition"])

    def nfe(self, steps: Optional[int] = None) -> int:
        return len(self.experts) if steps is None else int(steps)

    def expert_for(self, t: float) -> int:
        """Index of the phase containing time ``t`` (a boundary belongs to the phase above it)."""
        b = self.boundaries
        if t > float(b[0]):  # above the top edge (a grid from t = 1 when the phases start lower)
            return 0
        for k in range(len(self.experts)):
            if float(b[k + 1]) < t <= float(b[k]) + 1e-12:
                return k
        return len(self.experts) - 1

    def generate(self, x_T: Tensor, steps: Optional[int] = None, *, timesteps=None, mask: Optional[Tensor] = None, cond: Any = None,
                 generator: Generator = None, noise_scale: float = 1.0) -> Tensor:
        from ..utils import randn_like

        p = self.process
        if timesteps is None and steps in (None, len(self.experts)):
            timesteps = self.boundaries
        ts = default_grid(p, steps, timesteps)
        x = p.project(start_state(p, x_T, float(ts[0])), mask)
        x0 = x
        for k in range(len(ts) - 1):
            e = self.experts[self.expert_for(float(ts[k]))]
            x0 = e(x, float(ts[k]), mask=mask, cond=cond)
            if k == len(ts) - 2:
                break
            tn = torch.full((x.shape[0],), float(ts[k + 1]), dtype=torch.float64, device=x.device)
            if self.transition == "deterministic":
                tk = torch.full_like(tn, float(ts[k]))
                z = (x - append_dims(p.alpha(tk).to(x.dtype), x.ndim) * x0) / append_dims(p.sigma(tk).to(x.dtype), x.ndim)
                scale = 1.0
            else:
                z = p.project(randn_like(x, generator), mask)
                scale = float(noise_scale)
            x = p.project(append_dims(p.alpha(tn).to(x.dtype), x.ndim) * x0
                          + append_dims(p.sigma(tn).to(x.dtype), x.ndim) * scale * z, mask)
        return p.project(x0, mask)


def noise_route_direction(x_T: Tensor, *, mask: Optional[Tensor] = None, process: Optional[GaussianProcess] = None) -> Tensor:
    """The unit routing direction ``P d / ||P d||`` ``[B, D]`` (float64, flattened) of
    :func:`route_by_noise` for states shaped like ``x_T`` ``[B, ...]``."""
    d = torch.cos(torch.arange(x_T[0].numel(), dtype=torch.float64, device=x_T.device) * 2.399963229728653 + 0.5)
    d = d.reshape(1, *x_T.shape[1:]).expand(x_T.shape[0], *x_T.shape[1:]).clone()
    if process is not None:
        d = process.project(d, mask)
    elif mask is not None:
        d = d * mask.to(d.dtype).reshape(*mask.shape, *([1] * (d.ndim - mask.ndim)))
    dd = d.flatten(1)
    return dd / dd.norm(dim=1, keepdim=True).clamp_min(1e-300)


def route_by_noise(x_T: Tensor, n: int, *, mask: Optional[Tensor] = None, process: Optional[GaussianProcess] = None) -> Tensor:
    """A fixed partition of noise space into ``n`` cells ``[B]`` (int64): the bins of the
    standard-normal CDF of ``<x_T, P d> / (prior_std ||P d||)`` for a fixed direction ``d`` and
    ``P`` the process projection (padding, zero centre of mass; ``mask`` ``[B, N]``), which is
    exactly ``N(0, 1)`` under the prior for every mask: equal mass per cell."""
    e = noise_route_direction(x_T, mask=mask, process=process)
    std = process.prior_std() if process is not None else 1.0
    proj = (x_T.flatten(1).to(torch.float64) * e).sum(1) / std
    u = 0.5 * (1 + torch.erf(proj / 2.0**0.5))
    return (u * n).long().clamp(0, n - 1)


def slice_batch(v: Any, sel: Tensor, batch_size: Optional[int] = None) -> Any:
    """Rows ``sel`` ``[b]`` (int64 indices) of a per-sample value of a batch of ``B`` samples:
    a tensor with leading dimension ``B`` is indexed, a ``dict`` / ``list`` / ``tuple`` is sliced
    entry by entry (dict-valued conditions, e.g. trunk outputs with a self-conditioning state),
    anything else (``None``, a scalar, a tensor without the batch dimension, a string) is passed
    unchanged. ``batch_size`` (``B``) guards against indexing a non-batched tensor; ``None``
    indexes every tensor with at least one dimension."""

    def rows(a: Tensor) -> Tensor:
        if a.ndim == 0 or (batch_size is not None and a.shape[0] != int(batch_size)):
            return a
        return a[sel.to(a.device)]

    return tree_map(rows, v)


class MultiStudentGenerator(BaseGenerator):
    """Several students, each owning a part of the condition space (Song et al. 2024,
    "Multi-student diffusion distillation", Sec. 4.1): ``router(x_T, cond) -> student index [B]``.
    ``router="cond"`` uses ``cond % n`` (class labels; the paper splits ImageNet into blocks of
    consecutive labels, any disjoint equal-size split fits its Sec. 4.1), ``router="noise"`` a
    fixed equal-mass partition of the prior (:func:`route_by_noise`) for unconditional domains
    (a workbench extension). Every sub-batch gets its rows of ``mask`` and ``cond``
    (:func:`slice_batch`, dict-valued conditions included)."""

    kind = "multi_student"
    ROUTERS = ("cond", "noise")

    def __init__(self, students: nn.ModuleList, router: str = "cond"):
        super().__init__()
        if router not in self.ROUTERS:
            raise ValueError(f"unknown router {router!r}; valid: {', '.join(self.ROUTERS)}")
        self.students, self.router = students, router

    def _config(self) -> dict:
        return {"n": len(self.students), "router": self.router, "inner": _same_inner(self.students)}

    @classmethod
    def from_config(cls, domain, config: dict) -> "MultiStudentGenerator":
        students = nn.ModuleList([build_generator(domain, config["inner"]) for _ in range(int(config["n"]))])
        return cls(students, router=config["router"])

    def route(self, x_T: Tensor, cond: Any = None, mask: Optional[Tensor] = None) -> Tensor:
        n = len(self.students)
        if self.router == "cond":
            if not isinstance(cond, Tensor):
                raise ValueError("router='cond' needs integer conditions (class labels); use router='noise' for unconditional domains")
            return cond.long() % n
        return route_by_noise(x_T, n, mask=mask, process=getattr(self.students[0], "process", None))

    def nfe(self, steps: Optional[int] = None) -> int:
        return self.students[0].nfe(steps)

    def generate(self, x_T: Tensor, steps: Optional[int] = None, *, timesteps=None, mask: Optional[Tensor] = None, cond: Any = None,
                 generator: Generator = None, noise_scale: float = 1.0) -> Tensor:
        idx = self.route(x_T, cond, mask)
        out = torch.zeros_like(x_T)
        gens = generator if isinstance(generator, (list, tuple)) else None
        for k, s in enumerate(self.students):
            sel = (idx == k).nonzero().flatten()
            if len(sel) == 0:
                continue
            B = x_T.shape[0]
            g = [gens[i] for i in sel.tolist()] if gens is not None else generator
            out[sel] = s.generate(x_T[sel], steps, timesteps=timesteps, mask=slice_batch(mask, sel, B),
                                  cond=slice_batch(cond, sel, B), generator=g, noise_scale=noise_scale)
        return out

