"""BOSS velocity refinement (Nguyen, Nguyen & Le 2024, "Bellman Optimal Stepsize Straightening
of Flow-Matching Models", Sec. 3.2): fine-tune a copy of the teacher so that its few-step
Euler sampler on the Bellman-optimal schedule (:mod:`workbench.search.boss`) follows the
teacher's fine reference trajectories.

Data: a pool of teacher trajectories on the fine grid (``K_max = fine_steps`` Euler steps,
:func:`~workbench.distill.pairs.build_teacher_pairs`, cached as ``pairs.pt``); the states at
the ``K + 1`` schedule nodes ``t_0 > ... > t_K = 0`` are kept.

Target: the paper regresses the velocity at ``(x_{t_i}, t_i)`` onto the chord
``(x_{t_{i+1}} - x_{t_i}) / (t_{i+1} - t_i)`` of the reference trajectory, i.e. it asks the
one-step Euler jump from the reference state at ``t_i`` to land on the reference state at
``t_{i+1}``. The generator here steps with DDIM (Euler in the linear view of any Gaussian
process), whose jump is affine in the data prediction, so the landing condition has the
closed-form solution (:func:`~workbench.search.boss.ddim_target_x0`)::

    x0* = (x_{i+1} - (s_{i+1} / s_i) x_i) / (a_{i+1} - s_{i+1} a_i / s_i)

and the student's data prediction ``x0_theta(x_i, t_i)`` (converted from its own
parameterization) is trained towards ``x0*``, one schedule step ``i ~ U{0..K-1}`` per sample.

Weighting (``weighting=``), both in x0 space, differing in how steps are weighed:

* ``"velocity"`` (default): the paper's loss, the squared error of the linear-view velocity
  of the jump. In the linear view ``z = x / (a + s)``, ``u = s / (a + s)`` the DDIM step is
  ``z_{i+1} = z_i + (u_{i+1} - u_i) v`` with ``v = (z_i - x0) / u_i``, so
  ``|| v_theta - v* ||^2 = || x0_theta - x0* ||^2 / u_i^2``; for a rectified-flow process
  (``a = 1 - t``, ``s = t``) this is exactly the paper's
  ``|| v_theta(x_i, t_i) - (x_{i+1} - x_i) / (t_{i+1} - t_i) ||^2``. It up-weights the
  low-noise steps by ``1 / u_i^2``.
* ``"x0"``: ``|| x0_theta - x0* ||^2``. An x0 error ``d`` at step ``i`` moves the landing
  point by ``(1 - u_{i+1} / u_i) d`` and, along the nearly straight remaining path, the
  final sample by about ``(u_i - u_{i+1}) / (u_i (1 - u_{i+1})) d``: about ``d`` for the
  first step (``u_i ~ 1``) and exactly ``d`` for the last (``u_{i+1} = 0``), so a uniform
  x0 weight weighs every step by its effect on the final sample.

On the toy GMM with the exact teacher both reach the finite-sample floor at ``K = 4``
(SW 0.047-0.048 ``velocity`` vs 0.048-0.049 ``x0``, 2000 steps), so the paper's loss is the
default.

Generator: ``{"kind": "flow", "sampler": "euler", "timesteps": <the searched schedule>}``.
It samples on the searched grid when asked for ``K`` steps (``student_steps``), or with
``steps=None``; any other number of steps runs Euler on the uniform-``t`` grid (which the
student was not refined for).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..losses import Batch, masked_mean
from ..processes import GaussianProcess, canonical_prediction
from ..search.boss import boss_search_domain, ddim_target_x0
from ..utils import Generator, first_generator
from .base import student_x0
from .api import DistillSetup, MethodOptions, RecipeContext, register_method
from .students import make_student, student_spec

__all__ = ["BossRefinement", "WEIGHTINGS", "boss_recipe"]

WEIGHTINGS = ("velocity", "x0")
#: the search and the trajectory pool draw their noise from seeds ``ctx.seed + SEED_OFFSET + i``,
#: disjoint from the seeds ``0 .. n - 1`` that evaluation (``sample_generator(seed=0)``) uses
SEED_OFFSET = 1_000_000


class BossRefinement:
    """BOSS refinement objective ``(nets, batch, generator) -> loss [B]`` (module docstring).

    Args:
        process: the Gaussian process of teacher and student.
        timesteps: the K-step schedule ``[K + 1]`` (decreasing, ends at 0) the batch's
            trajectories are recorded on.
        weighting: ``"velocity"`` (paper) or ``"x0"``.
        prediction: the student's parameterization (default ``student.prediction``).

    ``batch.extra["trajectory"]`` ``[B, K + 1, ...]``: reference states at ``timesteps``;
    ``nets["student"]`` is trained.
    """

    def __init__(self, process: GaussianProcess, timesteps, *, weighting: str = "velocity", prediction: Optional[str] = None):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        ts = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
        if len(ts) < 2 or not bool((ts[1:] < ts[:-1]).all()) or float(ts[-1]) != 0.0:
            raise ValueError("timesteps must be a strictly decreasing grid of at least 2 points ending at 0")
        self.process, self.timesteps, self.weighting = process, ts, weighting
        self.prediction = None if prediction is None else canonical_prediction(prediction)

    @property
    def steps(self) -> int:
        return len(self.timesteps) - 1

    def targets(self, traj: Tensor, k: Tensor, mask=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x_i [B, ...], t_i [B], t_next [B], x0* [B, ...])`` for schedule steps ``k`` ``[B]``
        of trajectories ``traj`` ``[B, K + 1, ...]``."""
        ar = torch.arange(traj.shape[0], device=traj.device)
        ts = self.timesteps.to(traj.device)
        x_i, x_n = traj[ar, k], traj[ar, k + 1]
        t_i, t_n = ts[k], ts[k + 1]
        return x_i, t_i, t_n, ddim_target_x0(self.process, x_i, x_n, t_i, t_n, mask)

    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        traj = batch.extra.get("trajectory")
        if traj is None or traj.ndim < 3 or traj.shape[1] != self.steps + 1:
            got = None if traj is None else tuple(traj.shape)
            raise ValueError(f"BOSS needs batch.extra['trajectory'] [B, {self.steps + 1}, ...] on its schedule, got {got}")
        B = traj.shape[0]
        g = first_generator(generator)
        k = torch.randint(0, self.steps, (B,), generator=g, device=g.device if g is not None else None).to(traj.device)
        x_i, t_i, t_n, x0_star = self.targets(traj, k, batch.mask)
        x0_hat = student_x0(nets["student"], self.process, x_i, t_i, prediction=self.prediction, mask=batch.mask, cond=batch.cond)
        err = masked_mean((x0_hat - x0_star.detach()) ** 2, batch.mask)
        if self.weighting == "velocity":
            a, s = self.process.alpha(t_i), self.process.sigma(t_i)
            err = err * ((a + s) / s).pow(2).to(err.dtype)  # 1 / u_i^2
        return err

    def __repr__(self) -> str:
        return f"BossRefinement(steps={self.steps}, weighting={self.weighting!r})"


# -- recipe ----------------------------------------------------------------------------------------


@dataclass
class BOSSOptions(MethodOptions):
    """Options of method ``boss`` (``distill.KEY=VALUE``, documented in :func:`boss_recipe`)."""

    fine_steps: int = 100
    fine_grid: str = "uniform_t"
    n_search: int = 256
    n_pairs: int = 4096
    sampler: str = "euler"
    weighting: str = "velocity"
    backbone: Optional[dict] = None
    init: str = "teacher"

    def __post_init__(self):
        super().__post_init__()
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        if int(self.n_search) < 1 or int(self.n_pairs) < 1:
            raise ValueError(f"n_search and n_pairs must be positive, got {self.n_search}, {self.n_pairs}")


@register_method("boss", options=BOSSOptions, kind="flow", paper="Nguyen, Nguyen & Le 2024 (BOSS)",
                 description="Bellman-optimal K-step schedule search + velocity refinement of the teacher on it")
def boss_recipe(ctx: RecipeContext, opts: BOSSOptions) -> DistillSetup:
    """BOSS on the domain teacher, ``K = ctx.student_steps``.

    1. Search (:func:`~workbench.search.boss.boss_search_domain`): ``n_search`` reference
       trajectories of ``fine_steps`` steps of ``sampler`` on ``fine_grid`` (seeds
       ``ctx.seed + SEED_OFFSET ..``, away from evaluation seeds), the jump-cost matrix and
       the Bellman-optimal ``K``-step subset; cached as ``boss_search.pt`` in ``ctx.out_dir``.
    2. Pool: ``n_pairs`` teacher trajectories on the same fine grid
       (:func:`~workbench.distill.pairs.build_teacher_pairs`, ``keep_trajectory=True``,
       cached as ``pairs.pt``); the states at the schedule's nodes are the training data.
    3. Refinement (:class:`BossRefinement` with ``weighting``) of a copy of the teacher
       (``init="teacher"``; ``backbone`` kwargs give a different student architecture, loaded
       from the teacher where names and shapes match).

    The generator is Euler / DDIM on the searched grid (its config's ``timesteps``)."""
    from .generators import FlowGenerator
    from .pairs import TeacherPairs, build_teacher_pairs

    K = int(ctx.student_steps)
    if not 1 <= K <= int(opts.fine_steps):
        raise ValueError(f"student_steps={K} must lie in [1, fine_steps={opts.fine_steps}]")
    out = ctx.out_dir
    seed = int(ctx.seed) + SEED_OFFSET
    search = boss_search_domain(ctx.domain, ctx.teacher, n=int(opts.n_search), seed=seed, fine_steps=int(opts.fine_steps),
                                fine_grid=opts.fine_grid, sampler=opts.sampler, device=ctx.device,
                                cache=None if out is None else out / "boss_search.pt")
    idx, total = search.path(K)
    schedule = search.fine_timesteps[idx].clone()
    pool = build_teacher_pairs(ctx.domain, ctx.teacher, int(opts.n_pairs), sampler=opts.sampler, steps=int(opts.fine_steps),
                               timesteps=search.fine_timesteps, keep_trajectory=True, seed=seed, device=ctx.device,
                               cache=None if out is None else out / "pairs.pt", progress=False)
    if pool.trajectory is None or not torch.allclose(pool.timesteps.to(torch.float64), search.fine_timesteps):
        raise ValueError("the teacher trajectory pool does not lie on the search's fine grid")
    data = TeacherPairs(pool.noise, pool.x0, mask=pool.mask, cond=pool.cond, trajectory=pool.trajectory[:, idx].contiguous(),
                        timesteps=schedule, info=pool.info)
    sspec = student_spec(ctx.teacher, ctx.domain, backbone=opts.backbone)
    student = make_student(ctx, sspec, init=opts.init)
    obj = BossRefinement(ctx.process, schedule, weighting=opts.weighting, prediction=sspec["prediction"])
    ts_list = [float(t) for t in schedule]

    def make_generator(n):
        return FlowGenerator(n["student"], ctx.process, sampler="euler", timesteps=ts_list, prediction=sspec["prediction"])

    F = search.fine_steps
    info = {"timesteps": ts_list, "fine_steps": F, "search_cost": total, "n_search": search.n, "n_pairs": len(pool)}
    if F % K == 0:
        info["uniform_cost"] = search.path_cost([i * F // K for i in range(K + 1)])
    return DistillSetup(obj, {"student": student, "teacher": ctx.teacher}, ["student"], ["student"], make_generator,
                        data=data, train_defaults={"lr": 3e-4, "warmup": 100, "schedule": "cosine", "ema_decay": 0.999},
                        info=info)
