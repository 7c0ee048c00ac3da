"""Multi-student distillation (Song et al. 2024, "Multi-student Diffusion Distillation for
Better One-step Generators", MSD).

The condition space is split into ``n`` parts and student ``k`` is distilled only on part
``k``; at sampling time a fixed router sends every request to its student
(:class:`~workbench.distill.generators.MultiStudentGenerator`): ``router="cond"`` uses
``cond % n`` (class labels), ``router="noise"`` a fixed equal-mass partition of the prior
(:func:`~workbench.distill.generators.route_by_noise`) for unconditional domains. Each
student may be smaller than the teacher (``backbone=`` kwargs of ``domain.build_backbone``).

Objective: the regression term of MSD's distribution-matching distillation (as in DMD,
``L_reg = d(G_k(z), y)`` on teacher ODE couplings ``(z, y)`` of the student's partition),
extended here from one- to ``K``-step students; MSD's distribution-matching and adversarial
terms and its teacher-score-matching pre-training of smaller students are not part of this
module. Student ``k`` is trained on exactly the inputs its generator will feed it, with
the teacher's probability-flow ODE solution from that input as the target:

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
(:func:`~workbench.distill.base.consistency_output`). Taken over all students the ``K``-step
sampler is then exact when every ``f_k`` is: the re-noised states of all parts together are
the teacher's marginal at ``t``, mapped onto the data by its ODE. (Training on the states
*along* each routed trajectory instead, ``states="trajectory"``, is the same for one student
or the ``cond`` router, but with the ``noise`` router the re-noised states of later steps
leave the part of state space each student saw: on the toy GMM after 300 steps, 2 students
gave 2-step SW 0.25 against 0.06 for one student.)

The distance ``d`` is the squared error averaged over real elements (``l2``; MSD uses LPIPS
on images, which is image-specific): the target is a deterministic function of the input
(an ODE coupling), so the L2 minimiser is the coupling itself and not a blurred average, and
L2 is defined for every domain, masks and zero-centre-of-mass states included.
``pseudo_huber`` (Song & Dhariwal 2023) is offered as the robust alternative.

All students train in ONE run of the shared loop: nets ``student_0 .. student_{n-1}``, one
phase; the per-sample loss of sample ``i`` is computed with the student its route selects,
so student ``k`` receives gradients only from the samples of its own partition. Batches are
stratified (``batch_size // n`` samples of every partition per step, the remainder spread at
random), so every student trains at every step.

Measured on the toy GMM with the exact teacher (defaults: 2 students of the teacher's size,
``v`` prediction, 8192 pairs, 2000 steps of batch 512; SW of 2000 samples): 1 / 2 / 4 steps
0.052 / 0.051 / 0.046; 4 students of hidden width 64 (46k parameters each against 175k):
0.051 / 0.051 / 0.070; one student: 0.052 / 0.053 / 0.046.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..losses import Batch, masked_mean
from ..processes import GaussianProcess, append_dims, canonical_prediction
from ..utils import Generator
from .base import PARAMETERIZATIONS, consistency_output, student_x0
from .generators import MultiStudentGenerator, route_by_noise

__all__ = ["MultiStudentRegression", "RenoisedCouplings", "StratifiedPairs", "build_renoised_couplings", "route_samples",
           "student_name"]

LOSSES = ("l2", "pseudo_huber")
STATES = ("renoise", "trajectory")
ROUTERS = MultiStudentGenerator.ROUTERS


def student_name(k: int) -> str:
    """The net name of student ``k`` (``"student_k"``)."""
    return f"student_{int(k)}"


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
    """

    def __init__(self, pool, routes: Tensor, n: int, renoised: Optional[RenoisedCouplings] = None):
        self.pool, self.n, self.renoised = pool, int(n), renoised
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
        g = generator if isinstance(generator, torch.Generator) or generator is None else generator[0]
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
        """``[B]`` per-sample ``d(a, b)`` over real elements."""
        sq = (a - b) ** 2
        if self.loss == "l2":
            return masked_mean(sq, mask)
        m = torch.ones_like(sq) if mask is None else append_dims(mask.to(sq.dtype), sq.ndim).expand_as(sq)
        ss = (sq * m).flatten(1).sum(1)
        d = m.flatten(1).sum(1).clamp_min(1.0)
        c = float(self.huber_c) if self.huber_c is not None else 0.00054 * d.sqrt()
        return torch.sqrt(ss + c**2) - c

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
            sub = lambda v: v[sel] if isinstance(v, Tensor) else v  # noqa: E731
            out = out.index_put((sel,), self.consistency_fn(nets[student_name(k)], x[sel], t[sel], mask=sub(mask), cond=sub(cond)))
        return self.distance(out, target, mask)

    def __repr__(self) -> str:
        return (f"MultiStudentRegression(n_students={self.n}, router={self.router!r}, states={self.states!r}, "
                f"top_fraction={self.top_fraction}, loss={self.loss!r})")


# -- recipe ----------------------------------------------------------------------------------------
from .recipes import DistillSetup, RecipeContext, make_student, register_method, student_spec  # noqa: E402

@register_method("multi_student", kind="multi_student", paper="Song et al. 2024 (MSD)",
                 description="several (smaller) students, each regressed onto teacher ODE couplings of its own part of the "
                             "condition / noise space; K-step consistency students")
def multi_student_recipe(ctx: RecipeContext, *, n_students: int = 2, router: str = "noise", backbone: Optional[dict] = None,
                         init: str = "teacher", prediction: Optional[str] = "v", pool: int = 8192,
                         teacher_sampler: str = "dpm_solver_pp_3m", teacher_steps: int = 32, states: str = "renoise",
                         renoise_per_pair: int = 4,
                         top_fraction: float = 0.25, loss: str = "l2", huber_c: Optional[float] = None,
                         parameterization: str = "x0", sigma_data: float = 0.5) -> DistillSetup:
    """Multi-student distillation of the domain teacher.

    Options: ``n_students`` (``n``), ``router`` (``noise`` / ``cond``), ``backbone``
    (``domain.build_backbone`` kwargs of every student, ``None`` = the teacher's
    architecture), ``init`` (``teacher`` / ``scratch``), ``prediction`` (the students'
    parameterization; default ``v``, whose x0 ``alpha x - sigma v`` stays well conditioned at
    ``t = 1``, where an epsilon student's ``(x - sigma eps) / alpha`` amplifies its errors by
    ``1 / alpha(1)``, about 160 for the DDPM schedule; ``None`` = the teacher's), ``pool``
    (number of teacher couplings), ``teacher_sampler`` / ``teacher_steps`` (the solves, on a
    uniform-``t`` grid, so uniform student grids whose step count divides ``teacher_steps``
    lie on it), ``renoise_per_pair`` (re-noised couplings per pair, :func:`build_renoised_couplings`),
    ``states``, ``top_fraction``, ``loss``, ``huber_c``, ``parameterization``,
    ``sigma_data`` (:class:`MultiStudentRegression`). Couplings are cached in ``out_dir``.
    """
    from ..samplers import get
    from ..timegrids import uniform_t
    from .base import FewStepGenerator
    from .pairs import POOL_SEED_OFFSET, build_teacher_pairs

    if isinstance(n_students, bool) or not isinstance(n_students, int) or n_students < 1:
        raise ValueError(f"n_students must be a positive integer, got {n_students!r}")
    if router not in ROUTERS:
        raise ValueError(f"unknown router {router!r}; valid: {', '.join(ROUTERS)}")
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < n_students:
        raise ValueError(f"pool must be an integer of at least n_students={n_students}, got {pool!r}")
    if isinstance(teacher_steps, bool) or not isinstance(teacher_steps, int) or teacher_steps < 2:
        raise ValueError(f"teacher_steps must be an integer >= 2, got {teacher_steps!r}")
    if backbone is not None and not isinstance(backbone, dict):
        raise ValueError(f"backbone must be a dict of domain.build_backbone kwargs or None, got {backbone!r}")
    if prediction is not None:
        canonical_prediction(prediction)  # validates the name
    if isinstance(renoise_per_pair, bool) or not isinstance(renoise_per_pair, int) or renoise_per_pair < 1:
        raise ValueError(f"renoise_per_pair must be a positive integer, got {renoise_per_pair!r}")
    get(teacher_sampler)  # validates the name
    obj_kw = dict(states=states, top_fraction=top_fraction, loss=loss, huber_c=huber_c, parameterization=parameterization,
                  sigma_data=sigma_data)
    MultiStudentRegression(ctx.process, n_students, router, [1.0, 0.0], **obj_kw)  # validate before the teacher solves
    sspec = student_spec(ctx.teacher, ctx.domain, backbone=backbone, prediction=prediction)
    grid = uniform_t(ctx.process, teacher_steps)
    out = Path(ctx.out_dir) if ctx.out_dir is not None else None
    seed = int(ctx.seed)  # build_teacher_pairs offsets pool seeds away from the evaluation seeds
    pairs = build_teacher_pairs(ctx.domain, ctx.teacher, pool, sampler=teacher_sampler, steps=teacher_steps, timesteps=grid,
                                keep_trajectory=states == "trajectory" and top_fraction < 1, seed=seed, device=ctx.device,
                                cache=out / "pairs.pt" if out is not None else None, progress=False)
    if router == "cond" and not isinstance(pairs.cond, Tensor):
        raise ValueError(f"router='cond' needs class labels, but domain {ctx.domain.name!r} generates without cond; "
                         "use router='noise'")
    renoised = None
    if states == "renoise" and top_fraction < 1:
        renoised = build_renoised_couplings(ctx.teacher, ctx.process, pairs, grid, per_pair=renoise_per_pair, sampler=teacher_sampler,
                                            seed=POOL_SEED_OFFSET + seed + 1, device=ctx.device,
                                            cache=out / "pairs_renoised.pt" if out is not None else None)
    obj = MultiStudentRegression(ctx.process, n_students, router, pairs.timesteps, **obj_kw)
    routes = route_samples(router, n_students, pairs.noise, pairs.cond, pairs.mask, ctx.process)
    data = StratifiedPairs(pairs, routes, n_students, renoised)
    names = [student_name(k) for k in range(n_students)]
    nets = {s: make_student(ctx, sspec, init=init) for s in names}
    nets["teacher"] = ctx.teacher
    inner = {"kind": "consistency", "student": sspec, "parameterization": parameterization, "sigma_data": float(sigma_data),
             "timesteps": None}
    spec = {"kind": "multi_student", "n": n_students, "router": router, "inner": inner}
    proc = ctx.process

    def make_generator(n):
        return MultiStudentGenerator(nn.ModuleList([FewStepGenerator(n[s], proc, prediction=sspec["prediction"],
                                                                     parameterization=parameterization, sigma_data=sigma_data)
                                                    for s in names]), router=router)

    info = {"n_students": n_students, "router": router, "student_params": sum(p.numel() for p in nets[names[0]].parameters()),
            "pool": len(pairs), "pairs_per_student": data.counts(), "teacher_sampler": teacher_sampler, "teacher_steps": teacher_steps,
            "states": states}
    return DistillSetup(obj, nets, names, list(names), spec, make_generator, data=data, info=info)
