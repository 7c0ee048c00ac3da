"""Rectified-flow reflow (k-rectified flow) and SlimFlow, as distillation recipes.

**Reflow** (Liu et al. 2023, "Flow Straight and Fast: Learning to Generate and Transfer Data
with Rectified Flow", eq. 1 and the reflow procedure). A teacher ODE defines a
deterministic coupling ``(x_T, x0)`` (noise, sample); the *rectified* flow of the coupling
regresses the velocity of the straight interpolation between them (written here with
``x0`` the data and ``x1`` the noise, ``u = 0`` data, as the time convention of the package),

    min_v  E_{(x0, x1) ~ coupling, u ~ U(0, 1)} || (x1 - x0) - v(z_u, u) ||^2,
    z_u = (1 - u) x0 + u x1,

so that its trajectories become straight and few Euler steps suffice. Repeating it with the
new flow's own coupling gives the k-rectified flow; "distillation" is the same regression at
the K start points of a K-step sampler only (Liu et al.'s k-step distillation;
``time_sampler="grid"``).

In this workbench a student stays in its domain's Gaussian process ``x_t = alpha x0 +
sigma eps`` (``t = 0`` data, ``t = 1`` noise). Its *linear view*
(:func:`~workbench.distill.generators.linear_view`) ``z = x / (alpha + sigma)``,
``u = sigma / (alpha + sigma)`` turns ``x_t`` into the rectified-flow interpolant
``z_u = (1 - u) x0 + u eps`` and the DDIM step into the Euler step of ``dz/du = eps - x0``.
For a pair ``(x_T, x0)`` with ``x_T`` the prior sample at ``t_top`` (``= 1``) the straight
path is therefore ``x_t = alpha_t x0 + sigma_t eps*`` with the constant

    eps* = (x_T - alpha(t_top) x0) / sigma(t_top)                        (coupling_eps)

and the "straight" target of the student at ``(x_t, t)`` is the constant pair ``(x0, eps*)``:
a student that predicts it exactly reproduces the coupling with ONE Euler (DDIM) step, and
with any number of steps.

:class:`Reflow` (the objective): the student's prediction ``(x0^, eps^)`` (any
parameterization, converted exactly) is compared in the linear-view velocity
``v = eps - x0`` (``loss="velocity"``, default: Liu et al.'s eq. 1 in the linear view, and an
Euler step of size ``du`` moves ``z`` by ``du * v``, so this error is the per-unit-time error
of the sampler's steps) or in ``x0`` (``loss="x0"``, equal to the velocity error weighted
``u^2``). Times: ``time_sampler="uniform"``: ``u ~ U(u(t_min), u(t_top))`` mapped back to the
process time (Liu et al.'s ``t ~ U(0, 1)``, the default); ``"u_shaped"``: Lee et al.'s 2024
U-shaped density on the same range; ``"grid"``: ``t`` uniform over the ``K`` start points of
the uniform-``t`` ``K``-step grid (``K = student_steps``, Liu et al.'s k-step distillation);
``"mixed"``: half ``grid``, half ``uniform`` (:func:`sample_linear_time`).

**SlimFlow** (Zhu, Liu & Liu 2024, "SlimFlow: Training Smaller One-Step Diffusion Models
with Rectified Flow", ECCV 2024, the "Annealing Reflow" and "Flow-Guided Distillation"
method sections; authors' code ``yuanzhi-zhu/SlimFlow``, ``reflow/reflow.py``):

1. *Annealing reflow*: a SMALLER student, trained from scratch, learns the
   2-rectified flow of the teacher's coupling, but the noise of each pair is first mixed with
   independent noise, ``x_T' = sqrt(1 - beta^2) x_T + beta xi`` (``xi`` a fresh prior sample),
   with ``beta`` annealed from 1 (independent pairing: plain flow matching, an easy start for
   a randomly initialised net) to 0 (the teacher's coupling) over ``anneal_steps`` training
   steps (``linear``: ``1 - k / K``; ``cosine``: ``(1 + cos(pi k / K)) / 2``; ``exp``:
   ``exp(-k / K)``). The mixed noise has the prior's law, so the pairs stay valid couplings.
2. *Flow-guided distillation*: the 2-rectified flow ``R`` (stage 1, frozen) is
   distilled into a one-step generator ``G(x_T) = x0^_S(x_T, t_top)`` (student initialised from
   ``R``) with

       L = || G(x_T) - x0_R(x_T) ||^2 + lambda || G(xi) - sg[Euler_R(xi)] ||^2,

   the first term on ``R``'s own ODE couplings ``(x_T, x0_R)`` (a pool), the second
   (flow guidance) on fresh prior noise ``xi``: go from ``xi`` along the student's own
   straight line to ``u' ~ U(u_min, u_max)`` (``[0.2, 0.8]`` as in the authors' code), then
   take ``guide_steps`` Euler steps of ``R`` down to the data; ``guide="reflow"`` takes the
   first leg with ``R``'s velocity instead (a pure 2-step Euler of ``R`` with a random
   interior point). The distance is the squared error here (the paper uses LPIPS on images).

The two SlimFlow stages are two trainings: stage 1 runs inside the recipe with the shared
loop (:func:`workbench.training.train`) in ``out_dir / "reflow"`` (resumable), stage 2 is
the returned :class:`~workbench.distill.recipes.DistillSetup`. Likewise the ``rounds - 1``
inner reflow rounds of ``reflow`` run in ``out_dir / "round<r>"``.

Both produce a ``flow`` generator (the student sampled with ``euler`` = DDIM on the uniform
``t`` grid; one step is ``x0 = G(x_T)``).

Pools (:func:`~workbench.distill.pairs.build_teacher_pairs`, whose seeds never meet the
evaluation seeds) of different rounds / stages use seeds :data:`ROUND_SEED_STRIDE` apart, so
each round draws fresh noise.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from ..losses import Batch, masked_mean
from ..processes import GaussianProcess, append_dims, canonical_prediction
from ..utils import Generator, first_generator, model_kwargs, randn
from .api import DistillSetup, MethodOptions, RecipeContext, register_method
from .students import make_student, student_spec

__all__ = ["Reflow", "FlowGuidedDistillation", "StepClock", "coupling_eps", "sample_linear_time", "anneal_beta",
           "LOSSES", "TIME_SAMPLERS", "ANNEAL_SCHEDULES", "GUIDES", "DISTILL_PAIRS", "ROUND_SEED_STRIDE"]

LOSSES = ("velocity", "x0")
TIME_SAMPLERS = ("uniform", "u_shaped", "grid", "mixed")
#: ``a`` of the U-shaped density ``p(u) ~ exp(a u) + exp(a (1 - u))`` (Lee et al. 2024)
U_SHAPE_A = 4.0
ANNEAL_SCHEDULES = ("linear", "cosine", "exp")
GUIDES = ("student", "reflow")
DISTILL_PAIRS = ("reflow", "teacher")
#: the pool of round ``r`` (1-based; SlimFlow: stage 1 = 1, stage 2 = 2) gets ``seed = ctx.seed +
#: (r - 1) * ROUND_SEED_STRIDE`` (sample ``i`` then from that seed plus ``i``, plus the pool offset)
ROUND_SEED_STRIDE = 1_000_000


def _choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")



# -- the straight path of a coupling ---------------------------------------------------------------
def coupling_eps(process: GaussianProcess, x0: Tensor, noise: Tensor, t_top: float = 1.0,
                 mask: Optional[Tensor] = None) -> Tensor:
    """``eps* = (x_T - alpha(t_top) x0) / sigma(t_top)`` ``[B, ...]``: the constant noise of the
    straight path through the pair ``(x0 [B, ...], x_T = noise [B, ...])``, i.e.
    ``x_t = alpha_t x0 + sigma_t eps*`` is the linear-view segment from ``x0`` (``t = 0``) to
    ``x_T`` (``t = t_top``)."""
    tt = torch.tensor(float(t_top), dtype=torch.float64)
    a, s = float(process.alpha(tt)), float(process.sigma(tt))
    return process.project((noise - a * x0) / s, mask)


def sample_linear_time(process: GaussianProcess, n: int, kind: str = "uniform", *, generator: Generator = None,
                       t_top: float = 1.0, grid_steps: int = 1, device=None) -> Tensor:
    """Training times ``[n]`` (float64, process time).

    * ``uniform``: ``u ~ U(u(t_min), u(t_top))`` in the linear view, mapped to ``t``
      (Liu et al. 2023, eq. 1: ``t ~ U(0, 1)`` of the interpolant);
    * ``u_shaped``: the same range with the U-shaped density ``p(r) ~ exp(a r) + exp(a (1 - r))``,
      ``a = 4``, of Lee et al. 2024 ("Improving the training of rectified flows"; authors' code ``t_dist.py``),
      which puts the training where one- and few-step sampling needs it (the ends);
    * ``grid``: uniform over the ``grid_steps`` start points ``t_0 = t_top > ... > t_{K-1}`` of
      the uniform-``t`` ``K``-step sampling grid (Liu et al.: k-step distillation);
    * ``mixed``: each sample ``grid`` or ``uniform`` with probability 1/2.
    """
    _choice("time sampler", kind, TIME_SAMPLERS)
    g = first_generator(generator)
    gdev = g.device if g is not None else None
    u_lo, u_hi = float(process.u_of_t(process.t_min)), float(process.u_of_t(t_top))
    r = torch.rand(n, generator=g, device=gdev, dtype=torch.float64).cpu()
    if kind == "u_shaped":  # inverse CDF of exp(a r) on [0, 1], mirrored with probability 1/2
        a = U_SHAPE_A
        r = torch.log1p(r * math.expm1(a)) / a
        flip = torch.rand(n, generator=g, device=gdev).cpu() < 0.5
        r = torch.where(flip, 1.0 - r, r)
    t_uni = process.t_of_u(u_lo + (u_hi - u_lo) * r).clamp(process.t_min, t_top)
    grid = torch.linspace(float(t_top), 0.0, int(grid_steps) + 1, dtype=torch.float64)[:-1]
    t_grid = grid[torch.randint(0, len(grid), (n,), generator=g, device=gdev).cpu()]
    if kind in ("uniform", "u_shaped"):
        t = t_uni
    elif kind == "grid":
        t = t_grid
    else:
        t = torch.where(torch.rand(n, generator=g, device=gdev).cpu() < 0.5, t_grid, t_uni)
    return t.to(device) if device is not None else t


def anneal_beta(step: int, anneal_steps: int, schedule: str = "linear") -> float:
    """SlimFlow's coupling randomness ``beta(step)`` (Zhu et al. 2024, annealing reflow): 1 at step 0
    (independent pairs), 0 from ``anneal_steps`` on (the teacher's coupling); ``anneal_steps =
    0`` disables it (always 0)."""
    _choice("anneal schedule", schedule, ANNEAL_SCHEDULES)
    if anneal_steps <= 0:
        return 0.0
    p = min(1.0, max(0.0, step / anneal_steps))
    if schedule == "linear":
        return 1.0 - p
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    return 0.0 if p >= 1.0 else math.exp(-step / anneal_steps)


class StepClock(nn.Module):
    """A parameter-free net holding the number of training steps an objective has taken
    (buffer ``count``), so step-dependent schedules (annealing) are checkpointed with the nets
    and resume exactly."""

    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def forward(self) -> int:  # pragma: no cover - not a model
        return int(self.count)

    @torch.no_grad()
    def tick(self) -> int:
        """Return the current step and advance it by one."""
        k = int(self.count)
        self.count += 1
        return k


def _student_pred(net: nn.Module, process: GaussianProcess, x: Tensor, t: Tensor, mask, cond) -> tuple[Tensor, Tensor]:
    """``(x0^, eps^)`` ``[B, ...]`` of ``net`` at ``(x [B, ...], t [B] float64)``."""
    out = net(x, t.to(x.dtype), **model_kwargs(mask, cond))
    pred = canonical_prediction(getattr(net, "prediction", "epsilon"))
    x0, eps = process.to_x0_eps(out, pred, x, t)
    return process.project(x0, mask), process.project(eps, mask)


class Reflow:
    """Reflow objective ``(nets, batch, generator) -> loss [B]`` (module docstring).

    ``batch.x`` ``[B, ...]``: the coupled samples ``x0``; ``batch.extra["noise"]`` ``[B, ...]``:
    their noises ``x_T`` at ``t_top``. ``nets["student"]`` is trained; an optional
    ``nets["clock"]`` (:class:`StepClock`) drives the annealing.

    Per sample: ``x_T' = sqrt(1 - beta^2) x_T + beta sigma(t_top) xi`` (``beta = 0`` without
    annealing), ``eps* = coupling_eps(x0, x_T')``, ``t`` from ``time_sampler``,
    ``x_t = alpha_t x0 + sigma_t eps*``; loss ``mean ||(eps^ - x0^) - (eps* - x0)||^2``
    (``velocity``) or ``mean ||x0^ - x0||^2`` (``x0``) over real elements.

    Args:
        process: the student's Gaussian process.
        loss: ``"velocity"`` or ``"x0"``.
        time_sampler: ``"uniform"`` (in the linear-view time) or ``"grid"``.
        grid_steps: ``K`` of the ``grid`` sampler.
        t_top: the time of the pairs' noise (the pool's ``timesteps[0]``).
        anneal_steps, anneal_schedule: SlimFlow's annealing (:func:`anneal_beta`).
    """

    def __init__(self, process: GaussianProcess, *, loss: str = "velocity", time_sampler: str = "uniform", grid_steps: int = 1,
                 t_top: float = 1.0, anneal_steps: int = 0, anneal_schedule: str = "linear"):
        _choice("reflow loss", loss, LOSSES)
        _choice("time sampler", time_sampler, TIME_SAMPLERS)
        _choice("anneal schedule", anneal_schedule, ANNEAL_SCHEDULES)
        if int(grid_steps) < 1:
            raise ValueError(f"grid_steps must be a positive integer, got {grid_steps}")
        if int(anneal_steps) < 0:
            raise ValueError(f"anneal_steps must be >= 0, got {anneal_steps}")
        self.process, self.loss, self.time_sampler = process, loss, time_sampler
        self.grid_steps, self.t_top = int(grid_steps), float(t_top)
        self.anneal_steps, self.anneal_schedule = int(anneal_steps), anneal_schedule

    def beta(self, step: int) -> float:
        return anneal_beta(step, self.anneal_steps, self.anneal_schedule)

    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        p = self.process
        student = nets["student"]
        x0, mask, cond = batch.x, batch.mask, batch.cond
        if "noise" not in batch.extra:
            raise ValueError("reflow needs coupled batches with extra['noise'] (a TeacherPairs pool)")
        noise = batch.extra["noise"]
        clock = nets.get("clock") if hasattr(nets, "get") else None
        if self.anneal_steps > 0:
            if clock is None:
                raise ValueError("annealing (anneal_steps > 0) needs nets['clock'] = StepClock()")
            b = self.beta(clock.tick())
            if b > 0:
                xi = p.project(randn(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype), mask)
                xi = xi * float(p.sigma(torch.tensor(self.t_top, dtype=torch.float64)))
                noise = p.project(math.sqrt(max(0.0, 1.0 - b * b)) * noise + b * xi, mask)
        eps = coupling_eps(p, x0, noise, self.t_top, mask)
        t = sample_linear_time(p, x0.shape[0], self.time_sampler, generator=generator, t_top=self.t_top,
                               grid_steps=self.grid_steps, device=x0.device)
        x_t = p.add_noise(x0, t, eps, mask)
        x0_hat, eps_hat = _student_pred(student, p, x_t, t, mask, cond)
        if self.loss == "x0":
            return masked_mean((x0_hat - x0) ** 2, mask)
        return masked_mean(((eps_hat - eps) - (x0_hat - x0)) ** 2, mask)

    def __repr__(self) -> str:
        return (f"Reflow(loss={self.loss!r}, time_sampler={self.time_sampler!r}, grid_steps={self.grid_steps}, "
                f"anneal_steps={self.anneal_steps}, anneal_schedule={self.anneal_schedule!r})")


class FlowGuidedDistillation:
    """SlimFlow's flow-guided distillation (Zhu et al. 2024) ``(nets, batch,
    generator) -> loss [B]``; see the module docstring.

    ``nets["student"]`` (trained) is the one-step generator ``G(x) = x0^_S(x, t_top)``;
    ``nets["reflow"]`` is the frozen 2-rectified flow ``R``. ``batch.x`` / ``batch.extra["noise"]``:
    ``R``'s (or the teacher's) couplings.

    Loss per sample: ``mean ||G(x_T) - x0||^2 + guide_weight * mean ||G(xi) - sg[y]||^2`` with
    ``xi`` fresh prior noise, ``u' ~ U(guide_min, guide_max)`` (linear-view time), ``x_{t'}`` on
    the straight line from ``xi`` with the student's (``guide="student"``) or ``R``'s
    (``"reflow"``) prediction at ``t_top``, and ``y`` the end of ``guide_steps`` Euler (DDIM)
    steps of ``R`` from ``t'`` to 0 (uniform in ``u``).
    """

    def __init__(self, process: GaussianProcess, *, t_top: float = 1.0, guide: str = "student", guide_weight: float = 1.0,
                 guide_min: float = 0.2, guide_max: float = 0.8, guide_steps: int = 1):
        _choice("guide", guide, GUIDES)
        if not 0.0 < float(guide_min) <= float(guide_max) < 1.0:
            raise ValueError(f"need 0 < guide_min <= guide_max < 1 (linear-view times), got {guide_min}, {guide_max}")
        if float(guide_weight) < 0:
            raise ValueError(f"guide_weight must be >= 0, got {guide_weight}")
        if int(guide_steps) < 1:
            raise ValueError(f"guide_steps must be a positive integer, got {guide_steps}")
        self.process, self.t_top, self.guide = process, float(t_top), guide
        self.guide_weight, self.guide_min, self.guide_max = float(guide_weight), float(guide_min), float(guide_max)
        self.guide_steps = int(guide_steps)

    def _ddim(self, x0: Tensor, eps: Tensor, t: Tensor, mask) -> Tensor:
        p = self.process
        a = append_dims(p.alpha(t).to(x0.dtype), x0.ndim)
        s = append_dims(p.sigma(t).to(x0.dtype), x0.ndim)
        return p.project(a * x0 + s * eps, mask)

    @torch.no_grad()
    def guide_target(self, nets, xi: Tensor, x0_s: Tensor, eps_s: Tensor, mask, cond, generator: Generator = None) -> Tensor:
        """The flow-guided target ``y`` ``[B, ...]`` for fresh noise ``xi`` ``[B, ...]`` given the
        student's one-step prediction ``(x0_s, eps_s)`` there."""
        p, R = self.process, nets["reflow"]
        B = xi.shape[0]
        top = torch.full((B,), self.t_top, dtype=torch.float64, device=xi.device)
        if self.guide == "reflow":
            x0_s, eps_s = _student_pred(R, p, xi, top, mask, cond)
        g = first_generator(generator)
        r = torch.rand(B, generator=g, device=g.device if g is not None else None, dtype=torch.float64).to(xi.device)
        u = self.guide_min + (self.guide_max - self.guide_min) * r
        t = p.t_of_u(u)
        x = self._ddim(x0_s, eps_s, t, mask)
        for k in range(self.guide_steps):
            x0_r, eps_r = _student_pred(R, p, x, t, mask, cond)
            if k == self.guide_steps - 1:
                return x0_r
            u_next = u * (1.0 - (k + 1) / self.guide_steps) / (1.0 - k / self.guide_steps)
            t = p.t_of_u(u_next)
            x = self._ddim(x0_r, eps_r, t, mask)
        return x0_r  # pragma: no cover - the loop always returns

    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        p = self.process
        student = nets["student"]
        x0, mask, cond = batch.x, batch.mask, batch.cond
        if "noise" not in batch.extra:
            raise ValueError("flow-guided distillation needs coupled batches with extra['noise'] (a TeacherPairs pool)")
        B = x0.shape[0]
        top = torch.full((B,), self.t_top, dtype=torch.float64, device=x0.device)
        g_pair, _ = _student_pred(student, p, batch.extra["noise"], top, mask, cond)
        loss = masked_mean((g_pair - x0) ** 2, mask)
        if self.guide_weight > 0:
            sig = float(p.sigma(torch.tensor(self.t_top, dtype=torch.float64)))
            xi = p.project(randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype), mask) * sig
            g_xi, eps_xi = _student_pred(student, p, xi, top, mask, cond)
            y = self.guide_target(nets, xi, g_xi.detach(), eps_xi.detach(), mask, cond, generator)
            loss = loss + self.guide_weight * masked_mean((g_xi - y) ** 2, mask)
        return loss

    def __repr__(self) -> str:
        return (f"FlowGuidedDistillation(guide={self.guide!r}, guide_weight={self.guide_weight}, "
                f"guide_range=({self.guide_min}, {self.guide_max}), guide_steps={self.guide_steps})")


# -- recipes ----------------------------------------------------------------------------------------

#: TrainConfig preferences of both methods (the user's ``train.*`` keys win)
TRAIN_DEFAULTS = {"lr": 1e-3, "warmup": 0, "schedule": "cosine", "ema_decay": 0.999, "batch_size": 256, "grad_clip": 1.0}


def _train_config(ctx: RecipeContext, overrides: Optional[dict], what: str, defaults: Optional[dict] = None):
    """The TrainConfig of an inner training: ``domain.train_defaults`` <- ``defaults`` <-
    ``overrides`` (device and seed from ``ctx``)."""
    from ..training import TrainConfig

    valid = [f.name for f in fields(TrainConfig)]
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"{what} must be a dict of train options, got {overrides!r}")
    overrides = dict(overrides or {})
    bad = [k for k in overrides if k not in valid or k in ("device", "seed")]
    if bad:
        raise ValueError(f"unknown {what} key(s) {', '.join(map(repr, bad))}; valid: "
                         f"{', '.join(v for v in valid if v not in ('device', 'seed'))}")
    base = {k: v for k, v in dict(getattr(ctx.domain, "train_defaults", {}) or {}).items() if k in valid}
    return TrainConfig(**{**base, **dict(defaults or {}), **overrides, "device": ctx.device, "seed": int(ctx.seed)})


def _pool(ctx: RecipeContext, teacher: nn.Module, n: int, sampler: str, steps: int, grid: str, seed: int, cache: Optional[Path]):
    from ..timegrids import get_grid
    from .pairs import build_teacher_pairs

    ts = None if grid == "default" else get_grid(grid, ctx.process, int(steps))
    return build_teacher_pairs(ctx.domain, teacher, int(n), sampler=sampler, steps=int(steps), timesteps=ts, seed=int(seed),
                               device=ctx.device, cache=cache, progress=False)


def _check_pool_options(pairs, pair_sampler, pair_steps, pair_grid) -> None:
    from ..samplers import available
    from ..timegrids import available as grids

    if int(pairs) < 1:
        raise ValueError(f"pairs (the pool size) must be a positive integer, got {pairs}")
    if int(pair_steps) < 1:
        raise ValueError(f"pair_steps must be a positive integer, got {pair_steps}")
    valid = list(available())
    if pair_sampler not in valid:
        raise ValueError(f"unknown pair_sampler {pair_sampler!r}; valid: {', '.join(valid)}")
    valid = ["default", *grids()]
    if pair_grid not in valid:
        raise ValueError(f"unknown pair_grid {pair_grid!r}; valid: {', '.join(valid)}")


def _drop_stale(pool_path: Optional[Path], trained_dir: Optional[Path]) -> None:
    """Delete a cached pool generated by a network that has since been (re)trained: a pool of
    an inner training's student must be newer than that training's ``state.pt`` (the pool
    cache of :func:`build_teacher_pairs` checks the sampling settings, not the network)."""
    if pool_path is None or trained_dir is None:
        return
    state = trained_dir / "state.pt"
    if pool_path.exists() and state.exists() and pool_path.stat().st_mtime < state.stat().st_mtime:
        pool_path.unlink()


def _frozen(net: nn.Module) -> nn.Module:
    return copy.deepcopy(net).eval().requires_grad_(False)


def _trainable(net: nn.Module) -> nn.Module:
    return copy.deepcopy(net).train().requires_grad_(True)


def _t_top(pool) -> float:
    return float(pool.timesteps[0]) if pool.timesteps is not None else 1.0


def _n_params(m: nn.Module) -> int:
    return int(sum(p.numel() for p in m.parameters()))


def _flow_generator(ctx: RecipeContext, sspec: dict):
    from .generators import FlowGenerator

    def make_generator(n):
        return FlowGenerator(n["student"], ctx.process, sampler="euler", prediction=sspec["prediction"])

    return make_generator


@dataclass
class ReflowOptions(MethodOptions):
    """Options of method ``reflow`` (``distill.KEY=VALUE``, documented in :func:`reflow_recipe`)."""

    pairs: int = 20000
    pair_sampler: str = "dpm_solver_pp_3m"
    pair_steps: int = 20
    pair_grid: str = "uniform_lambda"
    rounds: int = 1
    loss: str = "velocity"
    time_sampler: str = "uniform"
    anneal_steps: int = 0
    anneal_schedule: str = "linear"
    round_train: Optional[dict] = None

    def __post_init__(self):
        super().__post_init__()
        _check_pool_options(self.pairs, self.pair_sampler, self.pair_steps, self.pair_grid)
        if int(self.rounds) < 1:
            raise ValueError(f"rounds (k - 1 reflow rounds of a k-rectified flow) must be >= 1, got {self.rounds}")
        _choice("reflow loss", self.loss, LOSSES)
        _choice("time sampler", self.time_sampler, TIME_SAMPLERS)
        _choice("anneal schedule", self.anneal_schedule, ANNEAL_SCHEDULES)
        if int(self.anneal_steps) < 0:
            raise ValueError(f"anneal_steps must be >= 0, got {self.anneal_steps}")


@register_method("reflow", options=ReflowOptions, kind="flow", paper="Liu et al. 2023 (Rectified Flow, 'Flow Straight and Fast')",
                 description="k-rectified flow: regress the straight path of teacher ODE couplings (pool cached as pairs.pt), "
                             "rounds-1 inner reflow rounds; Euler/DDIM student")
def reflow_recipe(ctx: RecipeContext, opts: ReflowOptions) -> DistillSetup:
    """Reflow (Liu et al. 2023) of the domain teacher: ``rounds = k - 1`` reflow rounds give the
    ``k``-rectified flow.

    Round ``r`` (1-based) regresses the straight paths of a pool of ``pairs`` ODE couplings of
    the round's teacher (``pair_sampler`` with ``pair_steps`` steps on the ``pair_grid`` time
    grid; ``uniform_lambda`` by default: the process's own uniform-``t`` grid ends with a long
    jump from ``t = 1 / pair_steps`` whose data prediction is over-smoothed, e.g. SW 0.066
    instead of 0.048 for the exact toy teacher at 20 steps): the domain teacher for
    ``r = 1``, the EMA student of round ``r - 1`` after. Each student starts from the previous
    one (round 1 from the teacher, :func:`make_student`). Rounds ``1..rounds-1`` train inside
    the recipe with the shared loop in ``out_dir / "round<r>"`` (pool ``round<r>/pairs.pt``,
    resumable; config: ``domain.train_defaults`` <- :data:`TRAIN_DEFAULTS` <- ``round_train``);
    the last round is the returned setup (pool ``out_dir / "pairs.pt"``). Without ``out_dir``
    everything stays in memory.

    Options: ``loss`` (``velocity`` | ``x0``), ``time_sampler`` (``uniform`` | ``grid``: the
    ``student_steps`` grid start points, i.e. Liu et al.'s k-step distillation; ``u_shaped``;
    ``mixed``), ``anneal_steps`` / ``anneal_schedule`` (SlimFlow's annealed coupling, off by
    default).

    Measured on the toy gmm with the exact teacher (SW of 2000 samples at 1 / 2 / 4 Euler
    steps): ``uniform``, 4000 steps: 0.118 / 0.060 / 0.054; ``grid`` with ``student_steps=1``,
    2000 steps: 0.071 at one step. ``uniform`` straightens the flow for 2-4 steps, but the
    one-step output of an epsilon-parameterised student at ``t = 1``
    (``x0 = (x - sigma eps) / alpha``, ``alpha(1) ~ 0.006`` on the DDPM schedule) is learnt
    well only where ``t = t_top`` is trained directly (``grid``, ``mixed`` or ``slimflow``).
    """
    from ..training import train

    cfg = _train_config(ctx, opts.round_train, "round_train", TRAIN_DEFAULTS) if opts.rounds > 1 else None
    out = Path(ctx.out_dir) if ctx.out_dir is not None else None
    sspec = student_spec(ctx.teacher, ctx.domain)
    student = make_student(ctx, sspec)
    coupling_teacher = ctx.teacher
    info: dict = {"rounds": opts.rounds, "pairs": int(opts.pairs), "pair_seconds": 0.0, "round_seconds": []}

    def objective(t_top):
        return Reflow(ctx.process, loss=opts.loss, time_sampler=opts.time_sampler, grid_steps=ctx.student_steps, t_top=t_top,
                      anneal_steps=opts.anneal_steps, anneal_schedule=opts.anneal_schedule)

    def nets_for(st, teacher):
        nets = {"student": st, "teacher": teacher}
        if int(opts.anneal_steps) > 0:
            nets["clock"] = StepClock()
        return nets

    for r in range(1, opts.rounds + 1):
        last = r == opts.rounds
        rdir = None if out is None else (out if last else out / f"round{r}")
        if r > 1 and out is not None:
            _drop_stale(rdir / "pairs.pt", out / f"round{r - 1}")
        t0 = time.time()
        seed = ctx.seed + ROUND_SEED_STRIDE * (r - 1)
        cache = None if rdir is None else rdir / "pairs.pt"
        pool = _pool(ctx, coupling_teacher, opts.pairs, opts.pair_sampler, opts.pair_steps, opts.pair_grid, seed, cache)
        info["pair_seconds"] += time.time() - t0
        if last:
            return DistillSetup(objective(_t_top(pool)), nets_for(student, coupling_teacher), ["student"], ["student"],
                                _flow_generator(ctx, sspec), data=pool, train_defaults=dict(TRAIN_DEFAULTS),
                                info={**info, "student_params": _n_params(student)})
        res = train(objective(_t_top(pool)), nets_for(student, coupling_teacher), pool, cfg, out_dir=rdir, trainable=["student"],
                    ema=["student"], meta={"kind": "reflow_round", "round": r})
        info["round_seconds"].append(res.seconds)
        coupling_teacher = _frozen(res.ema["student"])
        student = _trainable(res.ema["student"])
    raise AssertionError("unreachable")  # pragma: no cover


def slim_backbone(ctx: RecipeContext, factor: int = 2) -> dict:
    """Backbone kwargs of a student ``factor`` times narrower than the teacher's architecture:
    the domain's ``slim_backbone_kwargs(factor)`` (a domain without it raises "does not
    support"; pass ``student_backbone`` explicitly then)."""
    return dict(ctx.domain.slim_backbone_kwargs(factor))


@dataclass
class SlimFlowOptions(MethodOptions):
    """Options of method ``slimflow`` (``distill.KEY=VALUE``, documented in :func:`slimflow_recipe`)."""

    student_backbone: Optional[dict] = None
    student_init: str = "scratch"
    pairs: int = 20000
    pair_sampler: str = "dpm_solver_pp_3m"
    pair_steps: int = 20
    pair_grid: str = "uniform_lambda"
    anneal_steps: Optional[int] = None
    anneal_schedule: str = "linear"
    reflow_loss: str = "velocity"
    reflow_train: Optional[dict] = None
    distill_pairs: str = "reflow"
    guide: str = "student"
    guide_weight: float = 1.0
    guide_min: float = 0.2
    guide_max: float = 0.8
    guide_steps: int = 1

    def __post_init__(self):
        super().__post_init__()
        _check_pool_options(self.pairs, self.pair_sampler, self.pair_steps, self.pair_grid)
        _choice("student_init", self.student_init, ("scratch", "teacher"))
        _choice("anneal schedule", self.anneal_schedule, ANNEAL_SCHEDULES)
        _choice("reflow loss", self.reflow_loss, LOSSES)
        _choice("distill_pairs", self.distill_pairs, DISTILL_PAIRS)
        if self.student_backbone is not None and not isinstance(self.student_backbone, dict):
            raise ValueError(f"student_backbone must be a dict of domain.build_backbone kwargs, got {self.student_backbone!r}")
        if self.anneal_steps is not None and int(self.anneal_steps) < 0:
            raise ValueError(f"anneal_steps must be >= 0, got {self.anneal_steps}")


@register_method("slimflow", options=SlimFlowOptions, kind="flow", requires=("slim_backbone_kwargs",), paper="Zhu, Liu & Liu 2024 (SlimFlow, ECCV)",
                 description="annealing reflow into a smaller student (stage 1, inside the recipe) + flow-guided distillation "
                             "to a one-step generator (stage 2)")
def slimflow_recipe(ctx: RecipeContext, opts: SlimFlowOptions) -> DistillSetup:
    """SlimFlow (Zhu et al. 2024; module docstring).

    Stage 1 (inside the recipe, ``out_dir / "reflow"``, resumable): annealing reflow of a
    smaller student (``student_backbone``: kwargs of ``domain.build_backbone``, default
    :func:`slim_backbone`, half the width; ``student_init="scratch"`` as in the paper, or
    ``"teacher"``: copy the teacher tensors whose name and shape match) on a pool of ``pairs``
    teacher couplings (``reflow/pairs.pt``, built as in ``reflow``: ``pair_sampler``,
    ``pair_steps``, ``pair_grid``); ``beta`` anneals over ``anneal_steps`` (default 40% of
    stage 1's steps, the authors' 300k of 800k) with ``anneal_schedule``; ``reflow_loss`` as
    ``reflow``'s ``loss``. Stage 1 trains a new network from scratch, so its TrainConfig is the
    domain's teacher-training one, ``domain.train_defaults`` <- ``reflow_train``.

    Stage 2 (the returned setup): flow-guided distillation of the stage-1 2-rectified flow
    (``nets["reflow"]``, frozen) into the student initialised from it, on ``R``'s own
    couplings (``distill_pairs="reflow"``, pool ``out_dir / "pairs.pt"``) or on the teacher's
    (``"teacher"``, as the authors' README command), with ``guide``, ``guide_weight``,
    ``guide_min`` / ``guide_max`` (linear-view time of the guidance point) and
    ``guide_steps`` (:class:`FlowGuidedDistillation`).

    Measured on the toy gmm with the exact teacher (SW of 2000 one-step samples; stage 1 4000
    steps, stage 2 2000 steps): half-width student (46k parameters, the teacher network has
    175k) 0.073-0.076 over stage-2 variants, full-width student from scratch 0.068. The
    generator is for ONE step: after stage 2 the student's flow below ``t_top`` is no longer
    the 2-rectified flow (2 / 4 Euler steps are worse).
    """
    fg = FlowGuidedDistillation(ctx.process, guide=opts.guide, guide_weight=opts.guide_weight, guide_min=opts.guide_min, guide_max=opts.guide_max,
                                guide_steps=opts.guide_steps)  # validates the stage-2 options before stage 1 runs
    cfg = _train_config(ctx, opts.reflow_train, "reflow_train")
    from ..training import train

    backbone = dict(opts.student_backbone) if opts.student_backbone is not None else slim_backbone(ctx)
    sspec = student_spec(ctx.teacher, ctx.domain, backbone=backbone)
    try:
        student = make_student(ctx, sspec, init=opts.student_init)
    except TypeError as e:
        raise ValueError(f"student_backbone {backbone} does not fit domain {ctx.domain.name!r}: {e}") from None
    out = Path(ctx.out_dir) if ctx.out_dir is not None else None
    sdir = None if out is None else out / "reflow"
    a_steps = int(0.4 * cfg.steps) if opts.anneal_steps is None else int(opts.anneal_steps)
    t0 = time.time()
    pool = _pool(ctx, ctx.teacher, opts.pairs, opts.pair_sampler, opts.pair_steps, opts.pair_grid, ctx.seed,
                 None if sdir is None else sdir / "pairs.pt")
    pair_seconds = time.time() - t0
    obj1 = Reflow(ctx.process, loss=opts.reflow_loss, t_top=_t_top(pool), anneal_steps=a_steps, anneal_schedule=opts.anneal_schedule)
    nets1 = {"student": student, "teacher": ctx.teacher, "clock": StepClock()}
    res = train(obj1, nets1, pool, cfg, out_dir=sdir, trainable=["student"], ema=["student"],
                meta={"kind": "slimflow_stage1", "backbone": backbone})
    reflow = _frozen(res.ema["student"])
    if opts.distill_pairs == "reflow":
        _drop_stale(None if out is None else out / "pairs.pt", sdir)
        t0 = time.time()
        pool = _pool(ctx, reflow, opts.pairs, opts.pair_sampler, opts.pair_steps, opts.pair_grid, ctx.seed + ROUND_SEED_STRIDE,
                     None if out is None else out / "pairs.pt")
        pair_seconds += time.time() - t0
    fg.t_top = _t_top(pool)
    nets = {"student": _trainable(res.ema["student"]), "reflow": reflow, "teacher": ctx.teacher}
    info = {"student_backbone": backbone, "student_params": _n_params(reflow), "teacher_params": _n_params(ctx.teacher),
            "anneal_steps": a_steps, "stage1_steps": res.step, "stage1_seconds": res.seconds, "pair_seconds": pair_seconds}
    return DistillSetup(fg, nets, ["student"], ["student"], _flow_generator(ctx, sspec), data=pool,
                        train_defaults=dict(TRAIN_DEFAULTS), info=info)
