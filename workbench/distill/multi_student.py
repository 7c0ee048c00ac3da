"""Multi-student distillation (Song, Lorraine, Nie, Kreis, Lucas 2024, "Multi-student Diffusion
Distillation for Better One-step Generators", MSD, arXiv 2410.23274).

The condition space is split into ``n`` disjoint, equal-size parts (Sec. 4.1) and student ``k``
is distilled only for part ``k``; at sampling time a fixed router sends every request to its
student (:class:`~workbench.distill.generators.MultiStudentGenerator`): ``router="cond"``
uses ``cond % n`` (class labels), ``router="noise"`` a fixed equal-mass partition of the prior
(:func:`~workbench.distill.generators.route_by_noise`) for unconditional domains (a workbench
extension: MSD partitions conditions only).

``objective="msd"`` (default), MSD's pipeline per student ``G_k = Distill(mu_teacher, F(D, V_k))``:

* **TSM stage** (Sec. 4.3, students of another architecture than the teacher, ``backbone=``):
  before distillation a student-sized net is trained to match the teacher's denoiser on
  noised real data, ``L_TSM = E_t lambda_t ||mu_TSM(x_t, t) - mu_teacher(x_t, t)||^2``
  (:class:`TeacherScoreMatching`; ``lambda_t`` here: the squared error in the student's own
  parameterisation, ``t ~ U[t_min, t_max]``); every student starts from it.
* **DM stage** (Sec. 3 eq. 2-4 = DMD, Yin et al. 2024, eq. 7-8): student ``k`` generates
  ``x0_g = G_k(z)`` for the conditions of its part (prior noise ``z``); as the ``dmd2``
  recipe, ``G_k`` is an x0 generator in the teacher's parameterisation on a grid from
  ``t(init_sigma = 2.5)`` (input ``sigma(t_0) z``; :func:`~.generators.t_of_init_sigma`); at
  ``x_t = alpha_t x0_g + sigma_t eps`` (``t ~ U[t_min, t_max]``) the teacher and student ``k``'s OWN fake score give ``mu_real``,
  ``mu_fake``; the generator follows ``(mu_fake - mu_real) / mean|x0_g - mu_real|``
  (:func:`~.score_distill.dmd_loss`, DMD2's normalisation); fake score ``k`` is trained by
  denoising on student ``k``'s outputs only (:func:`~.score_distill.fake_score_loss`). Plus
  DMD's regression ``lambda_reg * d(G_k(z), y)`` on teacher ODE pairs ``(z, y)``; as in MSD
  (Sec. 4.2, App. B.2, Fig. 8) the paired set is NOT partitioned: every student regresses
  onto pairs drawn from the whole pool (``pairs="shared"``; ``"partition"`` = the ablation).
* **ADM stage** (optional, ``gan_weight > 0``): DMD2's non-saturating GAN term, one
  discriminator per student (a copy of the teacher backbone read as a logit,
  :class:`~.score_distill.Discriminator`), real samples = the teacher samples of the student's
  own part (of the whole pool for ``router="noise"`` with ``dm_noise="prior"``, whose students
  distribution-match on the whole prior).

With one student, ``regression_weight=0`` and no GAN the DM stage IS the ``dmd2`` recipe
(:class:`~.dmd.DMD2`): same grid, parameterisation, times, normalisation, TTUR, lr and EMA
(tested: equal losses and gradients on identical nets, batch and generator state).

Defaults and what could not be recovered from the paper text: ``regression_weight=0.25``
(DMD's ``lambda_reg``; MSD's ImageNet DM stage follows DMD with the shared paired set, its SD
stage DMD2's TTUR without regression); ``generator_every=5`` (DMD2's two time-scale rule) for
both: DMD's 1:1 alternation is less stable at the recipe's lr 1e-3 (toy GMM, exact teacher, 2
students, 1 step, 2000 steps, SW of 2000 samples: 0.091 with ``generator_every=1`` vs 0.068
with 5); the noise the DM stage feeds student ``k`` (``dm_noise``): MSD's students generate
from the full prior for the conditions of their part, so with ``router="cond"`` the noise is
the prior; with ``router="noise"`` (no conditions to partition) the default ``"prior"`` still
trains every student's DM and regression on the WHOLE prior (each is a full DMD generator
whose regression anchors it to the teacher's ODE map; at sampling it serves its cell only),
while ``"cell"`` restricts the DM noise to the student's cell. ``"cell"`` asks one student to
carry the whole data distribution (the real score is the unconditional teacher's) from half
the noise, against the regression's ODE coupling, and measured 0.155 (0.161 without
regression) vs 0.068 for ``"prior"`` (same setting as above); the one-student DM-only run
gives 0.078 (``dmd2``: 0.076) and with regression 0.060. Until these fixes (students in
``v`` from ``t = 1``, in-cell noise, 1:1) MSD measured 0.180 there. The distance
``d`` is L2 (MSD/DMD use LPIPS on images, which is image-specific; ``pseudo_huber`` optional);
``gan_weight=0``: at this scale MSD's toy experiments use DM only, its ADM stage is a second
fine-tuning stage resumed from the DM checkpoint, whereas here a positive ``gan_weight`` adds
the term from the first step; one TSM net initialises all students (the paper does not say
whether TSM is per student); fake scores have the teacher's architecture and start from it
(DMD); multi-step students (``K > 1``) use DMD2's backward simulation and the regression term
anchors the first step only (MSD trains one-step students).

``objective="regression"``: the previous workbench variant, *partitioned regression onto
teacher ODE couplings* (:class:`MultiStudentRegression`): no distribution matching. Student
``k`` is trained on exactly the inputs its generator will feed it, with the teacher's
probability-flow ODE solution from that input as the target:

* the first step (``t = 1``): the noise ``z`` of a pool pair routed to ``k``, target ``y``
  (:func:`~workbench.distill.pairs.build_teacher_pairs`, cached as ``out_dir/pairs.pt``);
* later steps of multistep consistency sampling (Song et al. 2023, Algorithm 1) see
  ``x_t = alpha_t y + sigma_t eps`` with ``y`` the student's previous output, i.e. a sample
  of part ``k`` re-noised to ``t``: pair ``i`` gets ``renoise_per_pair`` such states at times
  ``t_j`` of the uniform solve grid (``0 < j < T``), each with the teacher's ODE solution from it
  as its target
  (:func:`build_renoised_couplings`, cached as ``out_dir/pairs_renoised.pt``).

For pair ``i`` with route ``k_i``: ``loss_i = d(f_{k_i}(x^{(i)}, t^{(i)}), target^{(i)})``
where ``(x, t, target)`` is the first-step input with probability ``top_fraction`` and the
re-noised one otherwise, and ``f_k`` is student ``k``'s consistency function onto ``t = 0``
(:func:`~workbench.distill.base.consistency_output`). (``states="trajectory"`` trains on the
states along each routed trajectory instead.) Measured on the toy GMM with the exact teacher
(2 students of the teacher's size, ``v`` prediction, 8192 pairs, 2000 steps of batch 512; SW
of 2000 samples): 1 / 2 / 4 steps 0.052 / 0.051 / 0.046.

All students train in ONE run of the shared loop: nets ``student_k`` (and ``fake_k``,
``disc_k``), phases ``fake`` / ``generator`` for ``msd``; sample ``i`` of a batch is handled
by the student its route selects, so student ``k`` (and fake score ``k``) receives gradients
only from the samples of its own part. Batches are stratified (``batch_size // n`` samples of
every part per step, the remainder spread at random), so every student trains at every step.
"""
from __future__ import annotations

import copy
import inspect
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import Batch, masked_mean
from ..processes import GaussianProcess, append_dims, canonical_prediction
from ..utils import Generator, first_generator, model_kwargs
from .base import PARAMETERIZATIONS, consistency_output, student_x0
from .generators import MultiStudentGenerator, noise_route_direction, route_by_noise, slice_batch, start_state
from .score_distill import dmd_loss, fake_score_loss, frozen, noise_like, sample_t, teacher_x0
from .api import DistillSetup, MethodOptions, RecipeContext, register_method
from .students import make_student, student_spec

__all__ = ["MultiStudentDM", "MultiStudentRegression", "TeacherScoreMatching", "RenoisedCouplings", "StratifiedPairs",
           "build_renoised_couplings", "route_samples", "sample_noise_in_cell", "student_name", "fake_name", "disc_name",
           "OBJECTIVES"]

LOSSES = ("l2", "pseudo_huber")
STATES = ("renoise", "trajectory")
PAIRS = ("shared", "partition")
OBJECTIVES = ("msd", "regression")
ROUTERS = MultiStudentGenerator.ROUTERS


def student_name(k: int) -> str:
    """The net name of student ``k`` (``"student_k"``)."""
    return f"student_{int(k)}"


def fake_name(k: int) -> str:
    """The net name of student ``k``'s fake score (``"fake_k"``)."""
    return f"fake_{int(k)}"


def disc_name(k: int) -> str:
    """The net name of student ``k``'s discriminator (``"disc_k"``)."""
    return f"disc_{int(k)}"



def regression_distance(a: Tensor, b: Tensor, mask: Optional[Tensor], loss: str = "l2", huber_c: Optional[float] = None) -> Tensor:
    """``[B]`` per-sample distance of ``a``, ``b`` ``[B, ...]`` over real elements: the mean
    squared error (``l2``) or the pseudo-Huber ``sqrt(||a - b||^2 + c^2) - c`` (Song & Dhariwal
    2023; ``c = 0.00054 sqrt(d)`` unless ``huber_c``)."""
    sq = (a - b) ** 2
    if loss == "l2":
        return masked_mean(sq, mask)
    m = torch.ones_like(sq) if mask is None else append_dims(mask.to(sq.dtype), sq.ndim).expand_as(sq)
    ss = (sq * m).flatten(1).sum(1)
    d = m.flatten(1).sum(1).clamp_min(1.0)
    c = float(huber_c) if huber_c is not None else 0.00054 * d.sqrt()
    return torch.sqrt(ss + c**2) - c


def sample_noise_in_cell(noise: Tensor, k: int, n: int, generator: Optional[torch.Generator] = None, *,
                         mask: Optional[Tensor] = None, process: Optional[GaussianProcess] = None) -> Tensor:
    """Prior noise ``[b, ...]`` conditioned on cell ``k`` of :func:`route_by_noise` (exact): the
    component of ``noise`` (prior draws, std ``prior_std``) along the routing direction ``e`` is
    replaced by ``prior_std * Phi^-1(u)``, ``u ~ U[k/n, (k+1)/n]``; the orthogonal part, a
    standard normal independent of it, is kept."""
    std = process.prior_std() if process is not None else 1.0
    e = noise_route_direction(noise, mask=mask, process=process)
    flat = noise.flatten(1).to(torch.float64)
    c = (flat * e).sum(1) / std
    eps = 1e-7
    u = torch.rand(noise.shape[0], generator=generator, dtype=torch.float64)
    u = ((k + eps + (1 - 2 * eps) * u) / n).to(noise.device)
    c_new = torch.special.ndtri(u)
    out = flat + ((c_new - c) * std)[:, None] * e
    return out.reshape(noise.shape).to(noise.dtype)


def route_samples(router: str, n: int, x_T: Tensor, cond: Any = None, mask: Optional[Tensor] = None,
                  process: Optional[GaussianProcess] = None) -> Tensor:
    """Student index ``[B]`` (int64) of every sample, exactly as
    :meth:`MultiStudentGenerator.route` routes at sampling time: ``cond % n`` for
    ``router="cond"``, :func:`route_by_noise` of the starting noise ``x_T`` ``[B, ...]`` for
    ``router="noise"`` (``mask`` / ``process`` are passed on when ``route_by_noise``
    accepts them)."""
    if router not in ROUTERS:
        raise ValueError(f"unknown router {router!r}; valid: {', '.join(ROUTERS)}")
    if router == "cond":
        if not isinstance(cond, Tensor):
            raise ValueError("router='cond' needs integer conditions (class labels); use router='noise' for unconditional domains")
        return cond.long() % int(n)
    params = inspect.signature(route_by_noise).parameters
    kw = {k: v for k, v in (("mask", mask), ("process", process)) if k in params}
    return route_by_noise(x_T, int(n), **kw)


# -- re-noised couplings ---------------------------------------------------------------------------
class RenoisedCouplings:
    """``R`` re-noised teacher couplings per pool pair.

    Attributes:
        x: ``[n, R, ...]`` ``alpha(t) y + sigma(t) eps`` for the pool's teacher solutions ``y``.
        t: ``[n, R]`` float64 times (interior points of the solve grid).
        target: ``[n, R, ...]`` the teacher's ODE solution from ``(x, t)`` to ``t = 0``.
    """

    def __init__(self, x: Tensor, t: Tensor, target: Tensor, info: Optional[dict] = None):
        self.x, self.t, self.target, self.info = x, t, target, dict(info or {})

    def __len__(self) -> int:
        return self.x.shape[0]

    def save(self, path) -> Path:
        from ..checkpoint import save_state

        return save_state(path, {"x": self.x, "t": self.t, "target": self.target, "info": self.info})

    @classmethod
    def load(cls, path) -> "RenoisedCouplings":
        from ..checkpoint import load_state

        st = load_state(path)
        return cls(st["x"], st["t"], st["target"], st.get("info"))


@torch.no_grad()
def build_renoised_couplings(teacher, process: GaussianProcess, pairs, grid, *, per_pair: int = 1, sampler: str = "dpm_solver_pp_3m",
                             seed: int = 0, batch_size: int = 512, device="cpu", cache: Optional[Path] = None) -> RenoisedCouplings:
    """For every pair ``i`` of ``pairs`` (teacher solutions ``y_i``, masks, labels) and
    ``r < per_pair`` draw an interior index ``j ~ U{1..T-1}`` of ``grid`` ``[T + 1]`` (uniform
    in ``t``, decreasing to 0) and noise ``eps``, form ``x = alpha(t_j) y_i + sigma(t_j) eps``
    and solve the teacher's probability-flow ODE from it with ``sampler`` on ``grid[j:]``.
    Reproducible from ``seed``; a ``cache`` file with the same settings is loaded instead."""
    from ..api import run_sampler

    grid = torch.as_tensor(grid, dtype=torch.float64).flatten()
    T = len(grid) - 1
    if T < 2:
        raise ValueError(f"re-noised couplings need a solve grid of at least 2 steps, got {T}")
    if int(per_pair) < 1:
        raise ValueError(f"per_pair must be a positive integer, got {per_pair}")
    R = int(per_pair)
    settings = {"n": len(pairs), "per_pair": R, "sampler": sampler, "seed": int(seed), "grid": [float(v) for v in grid],
                "pairs": pairs.info.get("settings")}
    if cache is not None and Path(cache).exists():
        rc = RenoisedCouplings.load(cache)
        if rc.info.get("settings") == settings:
            return rc
    g = torch.Generator().manual_seed(int(seed))
    n = len(pairs)
    rep = lambda v: v.repeat_interleave(R, dim=0) if isinstance(v, Tensor) else v  # noqa: E731  (pair i -> rows i R .. i R + R - 1)
    y, mask, cond = rep(pairs.x0), rep(pairs.mask), rep(pairs.cond)
    j = torch.randint(1, T, (n * R,), generator=g)
    eps = process.project(torch.randn(y.shape, generator=g, dtype=y.dtype), mask)
    t = grid[j]
    x = process.add_noise(y, t, eps, mask)
    target = torch.empty_like(y)
    pred = getattr(teacher, "prediction", "epsilon")
    for jj in torch.unique(j).tolist():
        idx = (j == jj).nonzero().flatten()
        for c in idx.split(int(batch_size)):
            sel = lambda v: v[c].to(device) if isinstance(v, Tensor) else v  # noqa: E731
            out = run_sampler(teacher, process, x[c].to(device), sampler=sampler, steps=T - jj, prediction=pred, timesteps=grid[jj:],
                              mask=sel(mask), cond=sel(cond))
            target[c] = out.x.cpu()
    shape = lambda v: v.reshape(n, R, *v.shape[1:])  # noqa: E731
    rc = RenoisedCouplings(shape(x), shape(t), shape(target), {"settings": settings})
    if cache is not None:
        rc.save(cache)
    return rc


class StratifiedPairs:
    """A batch sampler over a :class:`~workbench.distill.pairs.TeacherPairs` pool that draws
    ``batch_size // n`` pairs (with replacement) from every partition per call and the
    remaining ``batch_size % n`` from partitions chosen at random; a pure function of the
    generator state, like every data sampler of the shared loop.

    Args:
        pool: the teacher pairs.
        routes: ``[len(pool)]`` student index of every pair.
        n: number of students; every partition must hold at least one pair.
        renoised: optional :class:`RenoisedCouplings` of the pool; one of the ``R`` couplings
            of every drawn pair (uniformly) is attached to the batch as ``extra["renoised"]``,
            ``extra["renoised_t"]``, ``extra["renoised_target"]``.
        dm_noise: fresh generator noise ``extra["dm_noise"]`` ``[B, ...]`` for distribution
            matching: ``"cell"`` draws sample ``i``'s prior noise inside the noise cell of its
            partition (:func:`sample_noise_in_cell`, the ``noise`` router), ``"prior"`` plain
            prior noise, ``None`` none. With ``dm_noise`` the batch also carries
            ``extra["route"]`` ``[B]`` (int64), the partition of every drawn pair.
        shared_pairs: also attach pairs drawn uniformly from the WHOLE pool (MSD's unfiltered
            paired set): ``extra["reg_noise"]``, ``extra["reg_target"]`` and, where the pool
            has them, ``extra["reg_mask"]``, ``extra["reg_cond"]``.
    """

    def __init__(self, pool, routes: Tensor, n: int, renoised: Optional[RenoisedCouplings] = None, *, dm_noise: Optional[str] = None,
                 shared_pairs: bool = False, process: Optional[GaussianProcess] = None):
        if dm_noise not in (None, "cell", "prior"):
            raise ValueError(f"unknown dm_noise {dm_noise!r}; valid: cell, prior, None")
        self.pool, self.n, self.renoised = pool, int(n), renoised
        self.dm_noise, self.shared_pairs, self.process = dm_noise, bool(shared_pairs), process
        self.routes = routes.long().cpu()
        self.members = [(self.routes == k).nonzero().flatten() for k in range(self.n)]
        empty = [k for k, m in enumerate(self.members) if len(m) == 0]
        if empty:
            raise ValueError(f"students {empty} get no teacher pairs from the router (pool of {len(pool)}); "
                             "enlarge the pool, use fewer students or another router")

    def counts(self) -> list[int]:
        """Pairs of the pool per partition."""
        return [len(m) for m in self.members]

    def __call__(self, batch_size: int, generator: Optional[torch.Generator] = None) -> Batch:
        B, n = int(batch_size), self.n
        extra = torch.randperm(n, generator=generator)[: B % n]
        parts = []
        for k in range(n):
            m = self.members[k]
            cnt = B // n + int(bool((extra == k).any()))
            if cnt:
                parts.append(m[torch.randint(0, len(m), (cnt,), generator=generator)])
        idx = torch.cat(parts)
        batch = self.pool.batch(idx)
        if self.renoised is not None:
            rc = self.renoised
            r = torch.randint(0, rc.x.shape[1], (len(idx),), generator=generator)
            batch.extra.update({"renoised": rc.x[idx, r], "renoised_t": rc.t[idx, r], "renoised_target": rc.target[idx, r]})
        if self.dm_noise is not None:
            p = self.process
            shape = tuple(batch.x.shape)
            std = p.prior_std() if p is not None else 1.0
            z = torch.randn(shape, generator=generator, dtype=batch.x.dtype) * std
            z = p.project(z, batch.mask) if p is not None else z
            if self.dm_noise == "cell":
                routes = self.routes[idx]
                for k in range(n):
                    sel = (routes == k).nonzero().flatten()
                    if len(sel):
                        z[sel] = sample_noise_in_cell(z[sel], k, n, generator, mask=slice_batch(batch.mask, sel), process=p)
            batch.extra["dm_noise"] = z
            batch.extra["route"] = self.routes[idx].clone()
        if self.shared_pairs:
            j = torch.randint(0, len(self.pool), (len(idx),), generator=generator)
            shared = self.pool.batch(j)
            batch.extra.update({"reg_noise": shared.extra["noise"], "reg_target": shared.x})
            if shared.mask is not None:
                batch.extra["reg_mask"] = shared.mask
            if shared.cond is not None:
                batch.extra["reg_cond"] = shared.cond
        return batch


# -- the objective ---------------------------------------------------------------------------------
class MultiStudentRegression:
    """Per-student regression onto teacher ODE couplings ``(nets, batch, generator) -> loss [B]``
    (module docstring for the equation).

    ``nets``: ``student_0 .. student_{n-1}`` (denoisers, any parameterization, see
    :func:`~workbench.distill.base.student_x0`); the teacher is not called (the couplings
    hold its solutions). ``batch`` (from :class:`StratifiedPairs`): ``x`` ``[B, ...]`` the
    teacher's solution from ``extra["noise"]`` ``[B, ...]`` (the routing input, at
    ``timesteps[0]``); with ``states="renoise"`` ``extra["renoised"]`` ``[B, ...]``,
    ``extra["renoised_t"]`` ``[B]`` and ``extra["renoised_target"]`` ``[B, ...]``; with
    ``states="trajectory"`` ``extra["trajectory"]`` ``[B, T + 1, ...]`` on ``timesteps``
    (every state's target is ``x``).

    Args:
        process: the process of teacher and students.
        n_students: number of students ``n``.
        router: ``"cond"`` or ``"noise"`` (the generator's router).
        timesteps: ``[T + 1]`` float64 grid of the teacher solve.
        states: the inputs of later steps: ``"renoise"`` or ``"trajectory"``.
        top_fraction: probability of the first-step input (the noise at ``timesteps[0]``).
        loss: ``"l2"`` or ``"pseudo_huber"`` (``c = 0.00054 sqrt(d)`` unless ``huber_c``).
        parameterization, sigma_data: the consistency function on the student's x0 output
            (:func:`~workbench.distill.base.consistency_output`; as in the generator spec).
    """

    def __init__(self, process: GaussianProcess, n_students: int, router: str, timesteps, *, states: str = "renoise",
                 top_fraction: float = 0.25, loss: str = "l2", huber_c: Optional[float] = None, parameterization: str = "x0",
                 sigma_data: float = 0.5):
        if isinstance(n_students, bool) or int(n_students) != n_students or int(n_students) < 1:
            raise ValueError(f"n_students must be a positive integer, got {n_students!r}")
        if router not in ROUTERS:
            raise ValueError(f"unknown router {router!r}; valid: {', '.join(ROUTERS)}")
        if states not in STATES:
            raise ValueError(f"unknown states {states!r}; valid: {', '.join(STATES)}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; valid: {', '.join(PARAMETERIZATIONS)}")
        if not 0.0 <= float(top_fraction) <= 1.0:
            raise ValueError(f"top_fraction must lie in [0, 1], got {top_fraction}")
        if huber_c is not None and float(huber_c) <= 0:
            raise ValueError(f"huber_c must be positive or None, got {huber_c}")
        self.process, self.n, self.router, self.states = process, int(n_students), router, states
        self.timesteps = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
        self.top_fraction, self.loss, self.huber_c = float(top_fraction), loss, huber_c
        self.parameterization, self.sigma_data = parameterization, float(sigma_data)

    def route(self, batch: Batch) -> Tensor:
        """Student index ``[B]`` of every sample of ``batch`` (from ``extra["noise"]`` / ``cond``)."""
        return route_samples(self.router, self.n, batch.extra.get("noise", batch.x), batch.cond, batch.mask, self.process)

    def inputs(self, batch: Batch, generator: Generator = None) -> tuple[Tensor, Tensor, Tensor]:
        """The regression triples ``(x [B, ...], t [B] float64, target [B, ...])``: the noise
        at ``timesteps[0]`` with probability ``top_fraction``, else a later-step state."""
        B, dev = len(batch), batch.x.device
        g = first_generator(generator)
        gd = g.device if g is not None else None
        ts = self.timesteps.to(dev)
        top = (torch.rand(B, generator=g, device=gd, dtype=torch.float64) < self.top_fraction).to(dev)
        x, t, target = batch.extra["noise"], ts[0].expand(B), batch.x
        if self.top_fraction >= 1.0:
            return x, t, target
        if self.states == "renoise":
            if "renoised" not in batch.extra:
                raise ValueError("states='renoise' needs extra['renoised'], ['renoised_t'], ['renoised_target'] (StratifiedPairs)")
            xs, tt, tg = batch.extra["renoised"], batch.extra["renoised_t"].to(dev, torch.float64), batch.extra["renoised_target"]
        else:
            traj = batch.extra.get("trajectory")
            if traj is None:
                raise ValueError("states='trajectory' needs trajectory states (build the pool with keep_trajectory=True)")
            j = torch.randint(1, len(ts) - 1, (B,), generator=g, device=gd).to(dev)
            xs, tt, tg = traj[torch.arange(B, device=dev), j], ts[j], batch.x
        w = append_dims(top, x.ndim)
        return torch.where(w, x, xs), torch.where(top, t, tt), torch.where(w, target, tg)

    def distance(self, a: Tensor, b: Tensor, mask: Optional[Tensor]) -> Tensor:
        """``[B]`` per-sample ``d(a, b)`` over real elements (:func:`regression_distance`)."""
        return regression_distance(a, b, mask, self.loss, self.huber_c)

    def consistency_fn(self, net, x: Tensor, t: Tensor, *, mask=None, cond=None) -> Tensor:
        """``f(x [B, ...], t [B]) -> x0`` ``[B, ...]`` of one student, as its generator computes it."""
        x0 = student_x0(net, self.process, x, t, mask=mask, cond=cond)
        out = consistency_output(self.process, x, x0, t, torch.zeros_like(t), parameterization=self.parameterization,
                                 sigma_data=self.sigma_data)
        return self.process.project(out, mask)

    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        x, t, target = self.inputs(batch, generator)
        route = self.route(batch).to(x.device)
        mask, cond = batch.mask, batch.cond
        out = torch.zeros_like(target)
        for k in range(self.n):
            sel = (route == k).nonzero().flatten()
            if len(sel) == 0:
                continue
            sub = lambda v: slice_batch(v, sel, len(batch))  # noqa: E731  (dict-valued conditions too)
            out = out.index_put((sel,), self.consistency_fn(nets[student_name(k)], x[sel], t[sel], mask=sub(mask), cond=sub(cond)))
        return self.distance(out, target, mask)

    def __repr__(self) -> str:
        return (f"MultiStudentRegression(n_students={self.n}, router={self.router!r}, states={self.states!r}, "
                f"top_fraction={self.top_fraction}, loss={self.loss!r})")


# -- MSD: teacher score matching (TSM) --------------------------------------------------------------
class TeacherScoreMatching:
    """MSD's TSM pre-training of a (smaller) student (Song et al. 2024, Sec. 4.3):
    ``loss_i = ||net(x_t, t) - target(x_t, t)||^2`` averaged over real elements, with
    ``x_t = alpha_t x + sigma_t eps`` for data ``x`` ``[B, ...]`` (``batch.x``), ``t ~ U[t_min,
    t_max]`` and ``target`` the teacher's data prediction ``mu_teacher(x_t, t)`` written in the
    student's own parameterisation (so ``lambda_t`` of ``L_TSM`` is that parameterisation's
    weighting). ``nets``: ``student`` (trained), ``teacher`` (frozen)."""

    def __init__(self, process: GaussianProcess, *, teacher_prediction: Optional[str] = None, t_min: float = 0.02,
                 t_max: float = 0.98):
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        self.process, self.teacher_prediction, self.t_min, self.t_max = process, teacher_prediction, float(t_min), float(t_max)

    def __call__(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        p, x, mask, cond = self.process, batch.x, batch.mask, batch.cond
        t = sample_t(len(batch), generator, x.device, self.t_min, self.t_max)
        x_t = p.add_noise(x, t, noise_like(p, x, mask, generator), mask)
        net = nets["student"]
        pred = canonical_prediction(getattr(net, "prediction", "x0"))
        mu_t = teacher_x0(nets["teacher"], p, x_t, t, mask, cond, self.teacher_prediction)
        target = mu_t if pred == "x0" else p.convert(mu_t, "x0", pred, x_t, t).to(x.dtype)
        out = net(x_t, t.to(x.dtype), **model_kwargs(mask, cond))
        return masked_mean((out - target) ** 2, mask)

    def __repr__(self) -> str:
        return f"TeacherScoreMatching(t=[{self.t_min}, {self.t_max}])"


# -- MSD: per-student distribution matching -------------------------------------------------------
class MultiStudentDM:
    """MSD's distillation stage (module docstring): per-student distribution matching with a
    per-student fake score, DMD's regression on the (shared) teacher pairs and an optional
    per-student GAN term. Phases ``fake`` (``fake_k``, ``disc_k``; every step) and ``generator``
    (``student_k``; every ``generator_every`` steps).

    ``nets``: ``student_k`` (x0 generators, any parameterisation), ``fake_k`` (fake scores),
    ``teacher`` (frozen), ``disc_k`` when ``gan_weight > 0``. ``batch`` (from
    :class:`StratifiedPairs` with ``dm_noise``): ``extra["dm_noise"]`` ``[B, ...]`` the prior
    noise each sample's student generates from (it and ``cond`` give the route),
    ``x`` ``[B, ...]`` teacher samples of the same part (GAN reals; with
    ``pairs="partition"`` the regression target of ``extra["noise"]``), ``extra["reg_noise"]``
    / ``extra["reg_target"]`` (``pairs="shared"``).

    Args:
        process: the process of teacher and students.
        n_students, router: the partition (``"cond"`` / ``"noise"``).
        grid: ``[K + 1]`` float64 generation grid (decreasing to 0; ``K = 1``: one step).
        teacher_prediction: the teacher's parameterisation (default: its attribute).
        t_min, t_max: range of the DM / fake-score / GAN times (DMD: 0.02T-0.98T).
        regression_weight: ``lambda_reg`` of DMD's regression term (0: DMD2-style, none).
        pairs: ``"shared"`` (MSD: pairs from the whole pool for every student) or
            ``"partition"`` (each student regresses on its own part's pairs).
        gan_weight: weight of the generator's GAN term (0: no discriminators).
        backward_simulation: multi-step inputs from the student itself (DMD2 Sec. 4.5).
        generator_every: fake-score updates per generator update (DMD: 1, DMD2 TTUR: 5).
        loss, huber_c: the regression distance (:func:`regression_distance`).
        gan_reals: the discriminator's real samples: ``"part"`` (``batch.x``, teacher samples
            of the student's part) or ``"pool"`` (``extra["reg_target"]``, teacher samples of
            the whole pool: ``router="noise"`` with ``dm_noise="prior"``, where every student's
            DM samples cover the whole prior).
    """

    def __init__(self, process: GaussianProcess, n_students: int, router: str, grid, *, teacher_prediction: Optional[str] = None,
                 t_min: float = 0.02, t_max: float = 0.98, regression_weight: float = 0.25, pairs: str = "shared",
                 gan_weight: float = 0.0, backward_simulation: bool = True, generator_every: int = 5, loss: str = "l2",
                 huber_c: Optional[float] = None, gan_reals: str = "part"):
        if gan_reals not in ("part", "pool"):
            raise ValueError(f"unknown gan_reals {gan_reals!r}; valid: part, pool")
        if isinstance(n_students, bool) or int(n_students) != n_students or int(n_students) < 1:
            raise ValueError(f"n_students must be a positive integer, got {n_students!r}")
        if router not in ROUTERS:
            raise ValueError(f"unknown router {router!r}; valid: {', '.join(ROUTERS)}")
        if pairs not in PAIRS:
            raise ValueError(f"unknown pairs {pairs!r}; valid: {', '.join(PAIRS)}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
        if not 0.0 <= float(t_min) < float(t_max) <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        if float(regression_weight) < 0 or float(gan_weight) < 0:
            raise ValueError(f"regression_weight and gan_weight must be >= 0, got {regression_weight}, {gan_weight}")
        if isinstance(generator_every, bool) or int(generator_every) != generator_every or int(generator_every) < 1:
            raise ValueError(f"generator_every must be a positive integer, got {generator_every!r}")
        self.process, self.n, self.router = process, int(n_students), router
        self.grid = torch.as_tensor(grid, dtype=torch.float64).flatten()
        self.teacher_prediction = teacher_prediction
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.regression_weight, self.pairs, self.gan_weight = float(regression_weight), pairs, float(gan_weight)
        self.backward_simulation, self.generator_every = bool(backward_simulation), int(generator_every)
        self.loss, self.huber_c, self.gan_reals = loss, huber_c, gan_reals
        self.students = [student_name(k) for k in range(self.n)]
        self.fakes = [fake_name(k) for k in range(self.n)]
        self.discs = [disc_name(k) for k in range(self.n)] if self.gan_weight > 0 else []
        self.phases = [("fake", self.fakes + self.discs, 1), ("generator", list(self.students), self.generator_every)]
        #: per student, the tensors of the last generator-phase call (x0_g, x_t, t, the batch rows); for inspection
        self.last: dict = {}

    def route(self, batch: Batch) -> Tensor:
        """Student index ``[B]`` of every sample: ``extra["route"]`` (the partition of the
        sample's pair, :class:`StratifiedPairs`) when present, else the sampling-time route of
        ``extra["dm_noise"]`` / ``cond``. For ``router="cond"`` and for in-cell DM noise
        (``dm_noise="cell"``) the two agree."""
        if "dm_noise" not in batch.extra:
            raise ValueError("MultiStudentDM needs extra['dm_noise'] (StratifiedPairs with dm_noise='cell' or 'prior')")
        if "route" in batch.extra:
            return batch.extra["route"].long()
        return route_samples(self.router, self.n, batch.extra["dm_noise"], batch.cond, batch.mask, self.process)

    def generate(self, net: nn.Module, x_T: Tensor, mask, cond, generator: Generator, step: int) -> Tensor:
        """Student ``net``'s output ``x0_g`` ``[b, ...]`` at step ``step`` of its grid from prior
        noise ``x_T`` ``[b, ...]`` (earlier steps by backward simulation, without gradients, as
        :func:`~.score_distill.rollout`; a data-noising variant needs real data per part and is
        not offered)."""
        from ..model import prepare_cond_all

        p, grid, B = self.process, self.grid, x_T.shape[0]
        cond = prepare_cond_all(net, cond, mask=mask, batch_size=B)
        x = p.project(start_state(p, x_T, float(grid[0])), mask)
        with torch.no_grad():
            for j in range(step):
                x0 = student_x0(net, p, x, grid[j].expand(B).to(x.device), mask=mask, cond=cond)
                tn = grid[j + 1].expand(B).to(x.device)
                e = noise_like(p, x, mask, generator)
                x = p.project(append_dims(p.alpha(tn).to(x.dtype), x.ndim) * x0 + append_dims(p.sigma(tn).to(x.dtype), x.ndim) * e, mask)
        return student_x0(net, p, x, grid[step].expand(B).to(x.device), mask=mask, cond=cond)

    def _step(self, generator: Generator) -> int:
        K = len(self.grid) - 1
        if K == 1:
            return 0
        if not self.backward_simulation:
            raise ValueError("backward_simulation=False is not offered for multi-step MSD students")
        return int(torch.randint(0, K, (1,), generator=first_generator(generator)))

    def _per_student(self, batch: Batch, fn) -> Tensor:
        route = self.route(batch).to(batch.x.device)
        out = None
        for k in range(self.n):
            sel = (route == k).nonzero().flatten()
            if len(sel) == 0:
                continue
            v = fn(k, batch.index(sel), sel)
            out = torch.zeros(len(batch), dtype=v.dtype, device=v.device) if out is None else out
            out = out.index_put((sel,), v)
        return out

    def _disc(self, nets, k, x_t, t, mask, cond) -> Tensor:
        return nets[disc_name(k)](x_t, t.to(x_t.dtype), **model_kwargs(mask, cond))

    def fake_loss(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        """``[B]``: fake score ``k`` denoises (detached) outputs of student ``k`` only; with a
        GAN, discriminator ``k`` separates noised teacher samples of part ``k`` from them."""
        p, step = self.process, self._step(generator)

        def one(k, sub, sel):
            with torch.no_grad():
                x0_g = self.generate(nets[student_name(k)], sub.extra["dm_noise"], sub.mask, sub.cond, generator, step)
            loss = fake_score_loss(nets[fake_name(k)], p, x0_g, sub.mask, sub.cond, generator, t_min=self.t_min, t_max=self.t_max)
            if self.gan_weight > 0:
                t = sample_t(len(sub), generator, x0_g.device, self.t_min, self.t_max)
                if self.gan_reals == "pool":  # teacher samples of the whole pool (the students' DM noise is the whole prior)
                    xr, rmask, rcond = sub.extra["reg_target"], sub.extra.get("reg_mask"), sub.extra.get("reg_cond")
                else:  # teacher samples of the student's own part
                    xr, rmask, rcond = sub.x, sub.mask, sub.cond
                real_t = p.add_noise(xr, t, noise_like(p, xr, rmask, generator), rmask)
                fake_t = p.add_noise(x0_g, t, noise_like(p, x0_g, sub.mask, generator), sub.mask)
                loss = loss + F.softplus(-self._disc(nets, k, real_t, t, rmask, rcond)) \
                    + F.softplus(self._disc(nets, k, fake_t, t, sub.mask, sub.cond))
            return loss

        return self._per_student(batch, one)

    def generator_loss(self, nets, batch: Batch, generator: Generator = None) -> Tensor:
        """``[B]``: ``dmd_loss`` of student ``k`` with the teacher and fake score ``k`` at a
        noised output, ``+ regression_weight * d(G_k(z), y)`` on a teacher pair, ``+ gan_weight *
        softplus(-disc_k)``."""
        p, step = self.process, self._step(generator)
        t0 = self.grid[0]
        self.last = {}

        def one(k, sub, sel):
            net, mask, cond = nets[student_name(k)], sub.mask, sub.cond
            x0_g = self.generate(net, sub.extra["dm_noise"], mask, cond, generator, step)
            t = sample_t(len(sub), generator, x0_g.device, self.t_min, self.t_max)
            eps = noise_like(p, x0_g, mask, generator)
            x_t = p.add_noise(x0_g.detach(), t, eps, mask)
            mu_real = teacher_x0(nets["teacher"], p, x_t, t, mask, cond, self.teacher_prediction)
            mu_fake = teacher_x0(nets[fake_name(k)], p, x_t, t, mask, cond)
            loss = dmd_loss(x0_g, mu_real, mu_fake, mask)
            self.last[k] = {"x0_g": x0_g.detach(), "x_t": x_t.detach(), "t": t.detach(), "rows": sel, "step": step}
            if self.regression_weight > 0:
                if self.pairs == "shared":
                    z, y = sub.extra["reg_noise"], sub.extra["reg_target"]
                    rmask, rcond = sub.extra.get("reg_mask"), sub.extra.get("reg_cond")
                else:
                    z, y, rmask, rcond = sub.extra["noise"], sub.x, mask, cond
                from ..model import prepare_cond_all

                rcond = prepare_cond_all(net, rcond, mask=rmask, batch_size=len(sub))
                x_start = p.project(start_state(p, z, float(t0)), rmask)
                pred = student_x0(net, p, x_start, t0.expand(len(sub)).to(z.device), mask=rmask, cond=rcond)
                loss = loss + self.regression_weight * regression_distance(pred, y, rmask, self.loss, self.huber_c)
            if self.gan_weight > 0:
                with frozen(nets[disc_name(k)]):
                    xg_t = p.add_noise(x0_g, t, eps, mask)
                    loss = loss + self.gan_weight * F.softplus(-self._disc(nets, k, xg_t, t, mask, cond))
            return loss

        return self._per_student(batch, one)

    def __call__(self, nets, batch: Batch, generator: Generator = None, phase: str = "generator") -> Tensor:
        if phase == "fake":
            return self.fake_loss(nets, batch, generator)
        if phase != "generator":
            raise ValueError(f"unknown phase {phase!r}; valid: fake, generator")
        return self.generator_loss(nets, batch, generator)

    def __repr__(self) -> str:
        return (f"MultiStudentDM(n_students={self.n}, router={self.router!r}, steps={len(self.grid) - 1}, "
                f"regression_weight={self.regression_weight}, pairs={self.pairs!r}, gan_weight={self.gan_weight}, "
                f"generator_every={self.generator_every})")


# -- recipe ----------------------------------------------------------------------------------------

@dataclass
class MultiStudentOptions(MethodOptions):
    """Options of method ``multi_student`` (``distill.KEY=VALUE``, documented in :func:`multi_student_recipe`)."""

    objective: str = "msd"
    n_students: int = 2
    router: str = "auto"
    backbone: Optional[dict] = None
    init: str = "teacher"
    prediction: Optional[str] = "auto"
    pool: int = 8192
    teacher_sampler: str = "dpm_solver_pp_3m"
    teacher_steps: int = 32
    loss: str = "l2"
    huber_c: Optional[float] = None
    regression_weight: float = 0.25
    pairs: str = "shared"
    gan_weight: float = 0.0
    t_min: float = 0.02
    t_max: float = 0.98
    generator_every: int = 5
    backward_simulation: bool = True
    init_sigma: Optional[float] = 2.5
    dm_noise: str = "prior"
    tsm: Union[str, bool] = "auto"
    tsm_steps: int = 1000
    tsm_data: str = "real"
    tsm_train: Optional[dict] = None
    states: str = "renoise"
    renoise_per_pair: int = 4
    top_fraction: float = 0.25
    parameterization: str = "x0"
    sigma_data: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; valid: {', '.join(OBJECTIVES)}")
        if isinstance(self.n_students, bool) or not isinstance(self.n_students, int) or self.n_students < 1:
            raise ValueError(f"n_students must be a positive integer, got {self.n_students!r}")
        if self.router not in ROUTERS + ("auto",):
            raise ValueError(f"unknown router {self.router!r}; valid: auto, {', '.join(ROUTERS)}")
        if isinstance(self.pool, bool) or not isinstance(self.pool, int) or self.pool < self.n_students:
            raise ValueError(f"pool must be an integer of at least n_students={self.n_students}, got {self.pool!r}")
        if isinstance(self.teacher_steps, bool) or not isinstance(self.teacher_steps, int) or self.teacher_steps < 2:
            raise ValueError(f"teacher_steps must be an integer >= 2, got {self.teacher_steps!r}")
        if self.backbone is not None and not isinstance(self.backbone, dict):
            raise ValueError(f"backbone must be a dict of domain.build_backbone kwargs or None, got {self.backbone!r}")


@register_method("multi_student", options=MultiStudentOptions, kind="multi_student", paper="Song et al. 2024 (MSD)",
                 description="several (smaller) students, each owning a part of the condition / noise space; MSD: per-student "
                             "distribution matching (own fake score) + DMD regression on shared teacher pairs, optional GAN, "
                             "TSM pre-training of smaller students; objective=regression: partitioned ODE-pair regression")
def multi_student_recipe(ctx: RecipeContext, opts: MultiStudentOptions) -> DistillSetup:
    """Multi-student distillation of the domain teacher (module docstring).

    Shared options: ``objective`` (``msd``: MSD's distribution matching, the default;
    ``regression``: partitioned regression onto teacher ODE couplings), ``n_students``
    (``n``), ``router`` (``auto``: ``cond`` when the domain generates with integer class
    labels, else ``noise``; or ``noise`` / ``cond``), ``backbone`` (``domain.build_backbone`` kwargs of
    every student, ``None`` = the teacher's architecture; e.g. a smaller width), ``init``
    (``teacher`` / ``scratch``), ``prediction`` (the students' parameterisation; ``"auto"``:
    the teacher's for ``msd``, as ``dmd2``, and ``v`` for ``regression``, whose x0
    ``alpha x - sigma v`` stays well conditioned at ``t = 1``; ``None`` = the teacher's), ``pool`` (number of teacher couplings), ``teacher_sampler`` / ``teacher_steps``
    (the solves, on a uniform-``t`` grid), ``loss`` / ``huber_c`` (regression distance).

    ``msd``: ``regression_weight``, ``pairs`` (``shared`` / ``partition``), ``gan_weight``,
    ``t_min``, ``t_max``, ``generator_every`` (default 5, DMD2's TTUR; module docstring),
    ``backward_simulation`` (:class:`MultiStudentDM`); ``init_sigma`` (the students' grid starts
    at ``t(init_sigma)``, as ``dmd2``; ``None``: ``t = 1``); ``dm_noise`` (``prior`` / ``cell``:
    the DM stage's generator noise, module docstring; ``cell`` needs ``router="noise"``); ``tsm`` (``"auto"``: a TSM stage when ``backbone`` makes the
    students' architecture differ from the teacher's; ``True`` / ``False`` force it),
    ``tsm_steps``, ``tsm_data`` (``real``: the domain's training data, as the paper;
    ``teacher``: the pool's teacher samples), ``tsm_train`` (train-config overrides of the TSM
    run, cached in ``out_dir/tsm``). ``regression``: ``states``, ``renoise_per_pair``,
    ``top_fraction``, ``parameterization``, ``sigma_data`` (:class:`MultiStudentRegression`).
    Couplings are cached in ``out_dir``.
    """
    from ..samplers import get
    from ..timegrids import uniform_t
    from .base import FewStepGenerator
    from .generators import default_grid, t_of_init_sigma
    from .pairs import POOL_SEED_OFFSET, build_teacher_pairs

    if opts.prediction == "auto":  # msd: the teacher's parameterisation, as the DMD2 recipe; regression: v (measured there)
        opts = replace(opts, prediction=None if opts.objective == "msd" else "v")
    if opts.prediction is not None:
        canonical_prediction(opts.prediction)  # validates the name
    if isinstance(opts.renoise_per_pair, bool) or not isinstance(opts.renoise_per_pair, int) or opts.renoise_per_pair < 1:
        raise ValueError(f"renoise_per_pair must be a positive integer, got {opts.renoise_per_pair!r}")
    if opts.objective == "msd" and opts.dm_noise not in ("prior", "cell"):
        raise ValueError(f"unknown dm_noise {opts.dm_noise!r}; valid: prior, cell")
    if opts.tsm not in ("auto", True, False):
        raise ValueError(f"unknown tsm {opts.tsm!r}; valid: auto, true, false")
    if opts.tsm_data not in ("real", "teacher"):
        raise ValueError(f"unknown tsm_data {opts.tsm_data!r}; valid: real, teacher")
    if isinstance(opts.tsm_steps, bool) or not isinstance(opts.tsm_steps, int) or opts.tsm_steps < 1:
        raise ValueError(f"tsm_steps must be a positive integer, got {opts.tsm_steps!r}")
    get(opts.teacher_sampler)  # validates the name
    # msd: the students' one- / K-step grid from t(init_sigma) as the DMD2 recipe (``None``: from t = 1)
    grid_gen = default_grid(ctx.process, int(ctx.student_steps), t_start=t_of_init_sigma(ctx.process, opts.init_sigma))
    reg_kw = dict(states=opts.states, top_fraction=opts.top_fraction, loss=opts.loss, huber_c=opts.huber_c, parameterization=opts.parameterization,
                  sigma_data=opts.sigma_data)
    dm_kw = dict(teacher_prediction=ctx.prediction, t_min=opts.t_min, t_max=opts.t_max, regression_weight=opts.regression_weight, pairs=opts.pairs,
                 gan_weight=opts.gan_weight, backward_simulation=opts.backward_simulation, generator_every=opts.generator_every, loss=opts.loss,
                 huber_c=opts.huber_c)
    # validate before the teacher solves
    r0 = "noise" if opts.router == "auto" else opts.router
    if opts.objective == "regression":
        MultiStudentRegression(ctx.process, opts.n_students, r0, [1.0, 0.0], **reg_kw)
    else:
        MultiStudentDM(ctx.process, opts.n_students, r0, grid_gen, **dm_kw)
        TeacherScoreMatching(ctx.process, t_min=opts.t_min, t_max=opts.t_max)
    sspec = student_spec(ctx.teacher, ctx.domain, backbone=opts.backbone, prediction=opts.prediction)
    grid = uniform_t(ctx.process, opts.teacher_steps)
    out = Path(ctx.out_dir) if ctx.out_dir is not None else None
    seed = int(ctx.seed)  # build_teacher_pairs offsets pool seeds away from the evaluation seeds
    regression = opts.objective == "regression"
    pairs_obj = build_teacher_pairs(ctx.domain, ctx.teacher, opts.pool, sampler=opts.teacher_sampler,
                                    steps=opts.teacher_steps, timesteps=grid,
                                    keep_trajectory=regression and opts.states == "trajectory" and opts.top_fraction < 1, seed=seed,
                                    device=ctx.device, cache=out / "pairs.pt" if out is not None else None, progress=False)
    if opts.router == "auto":  # MSD partitions the conditions (class labels); without them, the noise (workbench extension)
        labels = pairs_obj.cond
        opts = replace(opts, router="cond" if isinstance(labels, Tensor) and not labels.is_floating_point() and labels.ndim == 1 else "noise")
    if opts.router == "cond" and not isinstance(pairs_obj.cond, Tensor):
        raise ValueError(f"router='cond' needs class labels, but domain {ctx.domain.name!r} generates without cond; "
                         "use router='noise'")
    routes = route_samples(opts.router, opts.n_students, pairs_obj.noise, pairs_obj.cond, pairs_obj.mask, ctx.process)
    names = [student_name(k) for k in range(opts.n_students)]
    proc = ctx.process
    info = {"objective": opts.objective, "n_students": opts.n_students, "router": opts.router, "pool": len(pairs_obj),
            "pairs_per_student": None, "teacher_sampler": opts.teacher_sampler, "teacher_steps": opts.teacher_steps}

    if regression:
        renoised = None
        if opts.states == "renoise" and opts.top_fraction < 1:
            renoised = build_renoised_couplings(ctx.teacher, proc, pairs_obj, grid, per_pair=opts.renoise_per_pair, sampler=opts.teacher_sampler,
                                                seed=POOL_SEED_OFFSET + seed + 1, device=ctx.device,
                                                cache=out / "pairs_renoised.pt" if out is not None else None)
        obj = MultiStudentRegression(proc, opts.n_students, opts.router, pairs_obj.timesteps, **reg_kw)
        data = StratifiedPairs(pairs_obj, routes, opts.n_students, renoised)
        nets = {s: make_student(ctx, sspec, init=opts.init) for s in names}
        param, sd, grid_ts, defaults = opts.parameterization, opts.sigma_data, None, {}
        info.update(states=opts.states)
    else:
        if opts.dm_noise == "cell" and opts.router != "noise":
            raise ValueError(f"dm_noise='cell' needs router='noise', got router={opts.router!r}; valid for it: prior")
        pool_reals = opts.router == "noise" and opts.dm_noise == "prior" and float(opts.gan_weight) > 0
        obj = MultiStudentDM(proc, opts.n_students, opts.router, grid_gen, gan_reals="pool" if pool_reals else "part", **dm_kw)
        data = StratifiedPairs(pairs_obj, routes, opts.n_students, None, dm_noise=opts.dm_noise,
                               shared_pairs=(float(opts.regression_weight) > 0 and opts.pairs == "shared") or pool_reals, process=proc)
        base_student = make_student(ctx, sspec, init=opts.init)
        run_tsm = bool(sspec["backbone"]) if opts.tsm == "auto" else bool(opts.tsm)
        if run_tsm:
            base_student, info["tsm_seconds"] = _run_tsm(ctx, base_student, pairs_obj, tsm_data=opts.tsm_data, steps=opts.tsm_steps,
                                                         overrides=opts.tsm_train, t_min=opts.t_min, t_max=opts.t_max, out=out)
        info["tsm"] = run_tsm
        nets = {s: copy.deepcopy(base_student).train().requires_grad_(True) for s in names}
        fspec = student_spec(ctx.teacher, ctx.domain)
        for k in range(opts.n_students):
            nets[fake_name(k)] = make_student(ctx, fspec)
            if float(opts.gan_weight) > 0:
                from .score_distill import Discriminator

                nets[disc_name(k)] = Discriminator(make_student(ctx, fspec))
        param, sd, grid_ts = "x0", 0.5, [float(t) for t in grid_gen]
        defaults = {"lr": 1e-3, "ema_decay": 0.99}  # as the DMD2 recipe
        info.update(regression_weight=float(opts.regression_weight), pairs=opts.pairs, gan_weight=float(opts.gan_weight), dm_noise=opts.dm_noise,
                    generator_every=int(opts.generator_every))
    info["pairs_per_student"] = data.counts()
    nets["teacher"] = ctx.teacher
    info["student_params"] = sum(p.numel() for p in nets[names[0]].parameters())
    trainable = list(names) + [n for n in nets if n.startswith(("fake_", "disc_"))]

    def make_generator(n):
        return MultiStudentGenerator(nn.ModuleList([FewStepGenerator(n[s], proc, prediction=sspec["prediction"], parameterization=param,
                                                                     sigma_data=sd, timesteps=grid_ts)
                                                    for s in names]), router=opts.router)

    return DistillSetup(obj, nets, trainable, list(names), make_generator, data=data, train_defaults=defaults, info=info)


def _run_tsm(ctx: RecipeContext, student: nn.Module, pairs, *, tsm_data: str, steps: int, overrides: Optional[dict], t_min: float,
             t_max: float, out: Optional[Path]):
    """MSD's TSM stage (:class:`TeacherScoreMatching`) on ``student``: ``steps`` steps of the
    shared loop on the domain's training data (``tsm_data="real"``) or the pool's teacher
    samples; returns the trained (raw, not EMA) student and the seconds it took."""
    from ..training import train
    from .reflow import _train_config

    cfg = _train_config(ctx, {"steps": int(steps), "progress": False, **dict(overrides or {})}, "tsm_train")
    data = ctx.domain.train_data("train") if tsm_data == "real" else pairs
    obj = TeacherScoreMatching(ctx.process, teacher_prediction=ctx.prediction, t_min=t_min, t_max=t_max)
    res = train(obj, {"student": student, "teacher": ctx.teacher}, data, cfg, out_dir=None if out is None else out / "tsm",
                trainable=["student"], ema=[], meta={"kind": "msd_tsm"})
    return res.nets["student"], res.seconds
