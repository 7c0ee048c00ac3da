"""BOSS: Bellman Optimal Step-size Straightening (Nguyen, Nguyen & Le 2024, "Bellman Optimal
Stepsize Straightening of Flow-Matching Models", Sec. 3.1, Algorithm 1): a K-step time grid
for a pretrained model, found by dynamic programming over a fine reference grid.

1. **Reference trajectories.** Solve the model's probability-flow ODE from ``n`` prior
   samples on a fine grid ``s_0 = 1 > s_1 > ... > s_F = 0`` (``F = K_max = 100`` in the
   paper, Euler steps) and keep, at every fine node ``i < F``, the state ``x_i`` and the
   model's data prediction ``x0_i = x0(x_i, s_i)`` (one model call per node; the sampler's
   own call is reused through its callback, nothing is evaluated twice).
2. **Cost matrix** (paper eq. 8). ``c[i, j]`` (``i < j``) is the mean over samples of the
   squared error of the generator's one-step jump from the reference state at ``s_i``
   straight to ``s_j``, against the reference state there::

       c[i, j] = mean_n || x_j - step(x_i, s_i -> s_j) ||^2

   The generator's solver is Euler in the linear view of the process (any Gaussian path
   ``x_t = alpha x0 + sigma eps`` is the straight interpolant ``z = x / (alpha + sigma)``
   at time ``u = sigma / (alpha + sigma)``; see :func:`workbench.distill.generators.linear_view`),
   whose step is DDIM with the cached prediction: ``step(x_i, s_i -> s_j) = alpha_j x0_i +
   sigma_j eps_i = (sigma_j / sigma_i) x_i + (alpha_j - sigma_j alpha_i / sigma_i) x0_i``
   (:func:`ddim_jump`; for a rectified-flow process this is exactly the paper's
   ``x_i + v_i (t_j - t_i)``). Every jump is closed form, so the ``F (F + 1) / 2`` entries
   cost no model call.
3. **Bellman recursion** (paper eq. 9). ``dp[k][i]``: the least total cost of reaching the
   clean end ``F`` from node ``i`` in exactly ``k`` jumps::

       dp[1][i] = c[i, F],     dp[k][i] = min_{i < j < F} c[i, j] + dp[k - 1][j]

   and the K-step schedule is the arg-min path from node 0 (:func:`bellman_path`).

The result is an ordinary time grid ``[K + 1]`` (float64, strictly decreasing, from the fine
grid's start to 0) usable by every sampler, e.g.
``workbench.sample(model, proc, x_T, sampler="euler", steps=K, timesteps=boss_schedule(...))``.
It is also the grid the ``boss`` distillation recipe (:mod:`workbench.distill.boss`) refines
a student on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from ..processes import GaussianProcess, append_dims, canonical_prediction

__all__ = ["BossSearch", "ddim_jump_coefficients", "ddim_jump", "ddim_target_x0", "jump_cost_matrix", "bellman_path",
           "reference_trajectories", "boss_search", "boss_schedule", "boss_search_domain", "boss_grid"]

_F64 = torch.float64
#: float64 bytes one chunk of the cost computation may hold (samples x later nodes x elements)
_CHUNK_BYTES = 64 * 2**20


# -- the generator's one-step jump (DDIM = Euler in the linear view) -----------------------------
def ddim_jump_coefficients(process: GaussianProcess, t_from, t_to) -> tuple[Tensor, Tensor]:
    """``(c_x, c_x0)`` (float64, the broadcast shape of ``t_from`` and ``t_to``) with
    ``DDIM(x, x0; t_from -> t_to) = c_x x + c_x0 x0``:
    ``c_x = sigma_to / sigma_from``, ``c_x0 = alpha_to - sigma_to alpha_from / sigma_from``
    (Song et al. 2021, DDIM eq. 12 with ``eps = (x - alpha_from x0) / sigma_from``).
    ``c_x0 = sigma_to (alpha_to / sigma_to - alpha_from / sigma_from) > 0`` whenever the jump
    goes down in noise; at ``t_to = 0``: ``(0, 1)``. Needs ``t_from > 0``."""
    t_from = torch.as_tensor(t_from, dtype=_F64)
    t_to = torch.as_tensor(t_to, dtype=_F64)
    if bool((t_from <= 0).any()):
        raise ValueError("a jump must start at t > 0 (sigma = 0 at t = 0)")
    la_f, ls_f = process.log_alpha_sigma(t_from)
    la_t, ls_t = process.log_alpha_sigma(t_to)
    a_f, s_f = la_f.exp(), ls_f.exp()
    a_t, s_t = la_t.exp(), ls_t.exp()
    c_x = s_t / s_f
    c_x0 = a_t - c_x * a_f
    return c_x, c_x0


def ddim_jump(process: GaussianProcess, x: Tensor, x0: Tensor, t_from, t_to, mask: Optional[Tensor] = None) -> Tensor:
    """The one-step DDIM / linear-view Euler jump ``[B, ...]`` from state ``x`` ``[B, ...]`` at
    ``t_from`` (scalar or ``[B]``) with data prediction ``x0`` ``[B, ...]`` to ``t_to``,
    projected (padding zero, zero CoM)."""
    c_x, c_x0 = ddim_jump_coefficients(process, t_from, t_to)
    c_x = append_dims(c_x.to(x.device, x.dtype), x.ndim) if c_x.ndim else c_x.to(x.dtype)
    c_x0 = append_dims(c_x0.to(x.device, x.dtype), x.ndim) if c_x0.ndim else c_x0.to(x.dtype)
    return process.project(c_x * x + c_x0 * x0, mask)


def ddim_target_x0(process: GaussianProcess, x_from: Tensor, x_to: Tensor, t_from, t_to, mask: Optional[Tensor] = None) -> Tensor:
    """The data prediction ``x0* [B, ...]`` that makes the DDIM jump from ``x_from`` at
    ``t_from`` land exactly on ``x_to`` at ``t_to`` (``t_from > t_to``; scalars or ``[B]``)::

        x0* = (x_to - (sigma_to / sigma_from) x_from) / (alpha_to - sigma_to alpha_from / sigma_from)

    (the inverse of :func:`ddim_jump` in ``x0``; ``x0* = x_to`` when ``t_to = 0``). BOSS's
    velocity-refinement target (Nguyen et al. 2024, Sec. 3.2,
    ``v* = (x_{t_{i+1}} - x_{t_i}) / (t_{i+1} - t_i)``) written for any Gaussian process."""
    t_from = torch.as_tensor(t_from, dtype=_F64)
    t_to = torch.as_tensor(t_to, dtype=_F64)
    if bool((t_to >= t_from).any()):
        raise ValueError("ddim_target_x0 needs t_from > t_to (a jump towards the data)")
    c_x, c_x0 = ddim_jump_coefficients(process, t_from, t_to)
    nd = x_from.ndim
    c_x = (append_dims(c_x, nd) if c_x.ndim else c_x).to(x_from.device)
    c_x0 = (append_dims(c_x0, nd) if c_x0.ndim else c_x0).to(x_from.device)
    out = (x_to.to(_F64) - c_x * x_from.to(_F64)) / c_x0
    return process.project(out.to(x_from.dtype), mask)


# -- cost matrix and dynamic programme -----------------------------------------------------------
def _accumulate_cost(cost_sum: Tensor, process: GaussianProcess, traj: Tensor, x0: Tensor, ts: Tensor) -> None:
    """Add ``sum_n || x_j - jump(x_i, s_i -> s_j) ||^2`` to ``cost_sum[i, j]`` for all ``i < j``.
    ``traj`` ``[n, F + 1, ...]``, ``x0`` ``[n, F, ...]`` (float64), ``ts`` ``[F + 1]``."""
    n, F1 = traj.shape[0], traj.shape[1]
    F = F1 - 1
    flat = traj.reshape(n, F1, -1)
    x0f = x0.reshape(n, F, -1)
    D = flat.shape[-1]
    for i in range(F):
        c_x, c_x0 = ddim_jump_coefficients(process, ts[i], ts[i + 1:])  # [F - i]
        m = F - i
        per = max(1, _CHUNK_BYTES // max(1, 8 * m * D))
        for s in range(0, n, per):
            xi, pi, xj = flat[s:s + per, i], x0f[s:s + per, i], flat[s:s + per, i + 1:]
            pred = c_x[None, :, None] * xi[:, None] + c_x0[None, :, None] * pi[:, None]
            cost_sum[i, i + 1:] += ((xj - pred) ** 2).sum(dim=2).sum(dim=0)


def jump_cost_matrix(process: GaussianProcess, trajectory: Tensor, x0: Tensor, timesteps) -> Tensor:
    """BOSS's cost matrix ``[F + 1, F + 1]`` (float64; ``+inf`` where ``i >= j``).

    Args:
        process: the Gaussian process.
        trajectory: ``[n, F + 1, ...]`` reference states on ``timesteps`` (projected; padding
            zero, so the squared norm runs over real elements only).
        x0: ``[n, F, ...]`` the model's data prediction at each node ``i < F``.
        timesteps: ``[F + 1]`` the fine grid, strictly decreasing, ending at 0.
    Returns:
        ``c[i, j] = mean_n || x_j - DDIM(x_i, x0_i; s_i -> s_j) ||^2``.
    """
    ts = torch.as_tensor(timesteps, dtype=_F64).flatten()
    n, F1 = trajectory.shape[:2]
    if F1 != len(ts) or x0.shape[:2] != (n, F1 - 1) or x0.shape[2:] != trajectory.shape[2:]:
        raise ValueError(f"trajectory [n, F+1, ...] = {tuple(trajectory.shape)} and x0 [n, F, ...] = {tuple(x0.shape)} "
                         f"do not fit a grid of {len(ts)} points")
    cost = torch.zeros(F1, F1, dtype=_F64)
    _accumulate_cost(cost, process, trajectory.to(_F64), x0.to(_F64), ts)
    return _finish_cost(cost / max(1, n))


def _finish_cost(cost: Tensor) -> Tensor:
    F1 = cost.shape[0]
    upper = torch.ones(F1, F1, dtype=torch.bool).triu(1)
    return torch.where(upper, cost, torch.full_like(cost, float("inf")))


def bellman_path(cost, steps: int) -> tuple[list[int], float]:
    """The least-cost path of exactly ``steps`` jumps from node 0 to node ``F`` (paper eq. 9).

    Args:
        cost: ``[F + 1, F + 1]`` with ``cost[i, j]`` the cost of jumping from node ``i`` to a
            later node ``j > i`` (entries with ``j <= i`` are ignored).
        steps: ``K``, ``1 <= K <= F``.
    Returns:
        ``(indices, total)``: ``K + 1`` increasing node indices ``[0, ..., F]`` and the path's
        total cost ``sum_k cost[idx_k, idx_{k+1}]``. Ties go to the earliest node. ``O(K F^2)``.
    """
    c = torch.as_tensor(cost, dtype=_F64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
        raise ValueError(f"cost must be a square [F+1, F+1] matrix with F >= 1, got shape {tuple(c.shape)}")
    F = c.shape[0] - 1
    if int(steps) != steps or not 1 <= int(steps) <= F:
        raise ValueError(f"steps must be an integer in [1, {F}] (the fine grid has {F} intervals), got {steps!r}")
    K = int(steps)
    inf = torch.tensor(float("inf"), dtype=_F64)
    allowed = torch.ones(F + 1, F + 1, dtype=torch.bool).triu(1)  # j > i
    allowed[:, F] = False  # intermediate nodes exclude the end; the last jump is dp[1]
    c_mid = torch.where(allowed, c, inf)
    dp = torch.full((K + 1, F + 1), float("inf"), dtype=_F64)
    arg = torch.full((K + 1, F + 1), -1, dtype=torch.long)
    dp[1, :F] = c[:F, F]
    arg[1, :F] = F
    for k in range(2, K + 1):
        tot = c_mid + dp[k - 1][None, :]  # [i, j]
        best, j = tot.min(dim=1)  # first minimum on ties
        dp[k], arg[k] = best, torch.where(torch.isfinite(best), j, torch.full_like(j, -1))
    total = float(dp[K, 0])
    if not torch.isfinite(dp[K, 0]):
        raise ValueError(f"no finite-cost path of {K} steps through the cost matrix")
    path, i = [0], 0
    for k in range(K, 0, -1):
        i = int(arg[k, i])
        path.append(i)
    return path, total


# -- reference trajectories ---------------------------------------------------------------------
@torch.no_grad()
def reference_trajectories(model, process: GaussianProcess, x_T: Tensor, *, timesteps, prediction: Optional[str] = None,
                           sampler: str = "euler", mask: Optional[Tensor] = None, cond: Any = None,
                           options: Optional[dict] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Solve with ``sampler`` on ``timesteps`` ``[F + 1]`` and record every node.

    Returns ``(trajectory [B, F + 1, ...], x0 [B, F, ...], timesteps [F + 1])``: the state at
    every node (``trajectory[:, 0]`` the projected ``x_T``, ``trajectory[:, -1]`` the sample)
    and the model's data prediction at every node before the last, both taken from the
    sampler's own model calls (it must make exactly one per grid interval: ``euler``,
    ``dpm_solver_pp_2m`` / ``3m``, ``deis``, ``unipc``, ...)."""
    from ..api import run_sampler

    pred = canonical_prediction(prediction or getattr(model, "prediction", None) or _missing_prediction())
    states: list[Tensor] = []
    x0s: list[Tensor] = []

    def cb(info):
        states.append(info["x"].detach())
        x0s.append(info["x0"].detach())

    ts = torch.as_tensor(timesteps, dtype=_F64).flatten()
    out = run_sampler(model, process, x_T, sampler=sampler, steps=len(ts) - 1, prediction=pred, timesteps=ts, mask=mask,
                      cond=cond, callback=cb, **(options or {}))
    F = len(out.timesteps) - 1
    if len(states) != F:
        raise ValueError(f"sampler {sampler!r} made {len(states)} model calls on a {F}-step grid; BOSS needs one call per "
                         "fine-grid node (euler, dpm_solver_pp_2m, dpm_solver_pp_3m, deis, unipc)")
    return torch.stack(states + [out.x.detach()], dim=1), torch.stack(x0s, dim=1), out.timesteps


def _missing_prediction():
    raise ValueError("the model declares no .prediction; pass prediction= (one of x0, epsilon, v, velocity, score)")


# -- the search ----------------------------------------------------------------------------------
@dataclass
class BossSearch:
    """A finished BOSS search: the cost matrix on the fine grid, from which schedules of any
    ``K <= F`` follow without further model calls.

    Attributes:
        cost: ``[F + 1, F + 1]`` float64 mean jump costs (``+inf`` where ``i >= j``).
        fine_timesteps: ``[F + 1]`` float64 fine grid (decreasing, ends at 0).
        n: number of reference trajectories behind ``cost``.
        info: settings (sampler, fine grid, ...).
    """

    cost: Tensor
    fine_timesteps: Tensor
    n: int
    info: dict = field(default_factory=dict)

    @property
    def fine_steps(self) -> int:
        return len(self.fine_timesteps) - 1

    def path(self, steps: int) -> tuple[list[int], float]:
        """Fine-grid indices ``[K + 1]`` of the optimal ``K``-step schedule and its total cost."""
        return bellman_path(self.cost, steps)

    def schedule(self, steps: int) -> Tensor:
        """The optimal ``K``-step grid ``[K + 1]`` (float64, strictly decreasing, ends at 0)."""
        idx, _ = self.path(steps)
        return self.fine_timesteps[idx].clone()

    def path_cost(self, indices) -> float:
        """Total cost of any increasing path of fine-grid ``indices`` (e.g. a uniform one)."""
        idx = [int(i) for i in indices]
        if any(b <= a for a, b in zip(idx, idx[1:])):
            raise ValueError(f"path indices must be strictly increasing, got {idx}")
        return float(sum(self.cost[a, b] for a, b in zip(idx, idx[1:])))

    def state(self) -> dict:
        return {"cost": self.cost, "fine_timesteps": self.fine_timesteps, "n": self.n, "info": self.info}

    @classmethod
    def from_state(cls, st: dict) -> "BossSearch":
        return cls(st["cost"], st["fine_timesteps"], int(st["n"]), dict(st.get("info") or {}))


def _fine_grid(process: GaussianProcess, fine_steps: int, fine_grid) -> Tensor:
    from ..api import resolve_timesteps

    if int(fine_steps) != fine_steps or int(fine_steps) < 1:
        raise ValueError(f"fine_steps must be a positive integer, got {fine_steps!r}")
    ts = resolve_timesteps(process, int(fine_steps), fine_grid)
    if float(ts[-1]) != 0.0:
        raise ValueError(f"the fine grid must end at the clean end t=0, got {float(ts[-1])}")
    return ts


def _rows(v: Any, start: int, stop: int, n: int) -> Any:
    """Rows ``start:stop`` of a per-sample value of a batch of ``n`` samples: a tensor with
    leading dimension ``n`` is sliced along dim 0, a ``dict`` / ``list`` / ``tuple`` entry by
    entry (dict-valued conditions), anything else (``None``, a scalar, a tensor without the
    batch dimension) is passed unchanged."""
    if isinstance(v, Tensor):
        return v[start:stop] if v.ndim > 0 and v.shape[0] == n else v
    if isinstance(v, dict):
        return type(v)((k, _rows(x, start, stop, n)) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        out = [_rows(x, start, stop, n) for x in v]
        return type(v)(*out) if hasattr(v, "_fields") else type(v)(out)
    return v


def _cat_rows(parts: list, sizes: list) -> Any:
    """Inverse of :func:`_rows`: join the per-batch values ``parts`` (batches of ``sizes``
    samples) along dim 0, tensors inside dicts / lists / tuples included; a value without
    the batch dimension is taken from the first batch."""
    v = parts[0]
    if isinstance(v, Tensor):
        if v.ndim > 0 and all(isinstance(p, Tensor) and p.ndim > 0 and p.shape[0] == b for p, b in zip(parts, sizes)):
            return torch.cat(parts)
        return v
    if isinstance(v, dict):
        return type(v)((k, _cat_rows([p[k] for p in parts], sizes)) for k in v)
    if isinstance(v, (list, tuple)):
        out = [_cat_rows([p[i] for p in parts], sizes) for i in range(len(v))]
        return type(v)(*out) if hasattr(v, "_fields") else type(v)(out)
    return v


@torch.no_grad()
def boss_search(model, process: GaussianProcess, x_T: Tensor, *, mask: Optional[Tensor] = None, cond: Any = None,
                prediction: Optional[str] = None, fine_steps: int = 100, fine_grid: Union[str, Tensor, list] = "uniform_t",
                sampler: str = "euler", batch_size: int = 256, options: Optional[dict] = None) -> BossSearch:
    """Run BOSS steps 1-2 (module docstring) from the noise batch ``x_T`` ``[n, ...]`` (with its
    ``mask`` ``[n, N]`` / ``cond``), in chunks of ``batch_size`` samples.

    Args:
        model: ``model(x_t [B, ...], t [B], **kw) -> prediction`` (a teacher denoiser).
        process: its Gaussian process.
        prediction: the model's parameterization (default ``model.prediction``).
        fine_steps: ``F = K_max`` (paper: 100).
        fine_grid: the fine grid: a :mod:`workbench.timegrids` name (default ``uniform_t``, the
            paper's uniform base grid) or a tensor ``[F + 1]`` ending at 0.
        sampler: the solver of the reference trajectories (paper: ``euler``).
    Returns:
        :class:`BossSearch` (call ``.schedule(K)``).
    """
    if not isinstance(x_T, Tensor) or x_T.ndim < 1 or x_T.shape[0] < 1:
        raise ValueError("x_T must be a noise batch [n, ...] with n >= 1")
    ts = _fine_grid(process, fine_steps, fine_grid)
    F = len(ts) - 1
    cost = torch.zeros(F + 1, F + 1, dtype=_F64)
    n = x_T.shape[0]
    bs = int(batch_size)
    for s in range(0, n, bs):
        # every sub-batch gets its rows of mask and cond (each tensor of a dict-valued cond too)
        traj, x0, ts_used = reference_trajectories(model, process, x_T[s:s + bs], timesteps=ts, prediction=prediction,
                                                   sampler=sampler, mask=_rows(mask, s, s + bs, n),
                                                   cond=_rows(cond, s, s + bs, n), options=options)
        _accumulate_cost(cost, process, traj.to(_F64).cpu(), x0.to(_F64).cpu(), ts_used)
    info = {"sampler": sampler, "fine_steps": F, "fine_grid": fine_grid if isinstance(fine_grid, str) else "custom"}
    return BossSearch(_finish_cost(cost / n), ts.clone(), n, info)


def boss_schedule(model, process: GaussianProcess, steps: int, *, x_T: Optional[Tensor] = None, n: int = 256,
                  shape: Optional[tuple] = None, seed: int = 0, mask: Optional[Tensor] = None, cond: Any = None,
                  prediction: Optional[str] = None, fine_steps: int = 100, fine_grid: Union[str, Tensor, list] = "uniform_t",
                  sampler: str = "euler", batch_size: int = 256, options: Optional[dict] = None) -> Tensor:
    """The BOSS ``K``-step time grid ``[steps + 1]`` (float64, strictly decreasing from the fine
    grid's start to 0) of ``model``: the Bellman-optimal subset of a fine reference grid
    (Nguyen et al. 2024, Algorithm 1; module docstring).

    Use it as any grid: ``workbench.sample(model, proc, x_T, sampler="euler", steps=K,
    timesteps=boss_schedule(model, proc, K, x_T=noise))``.

    Args:
        steps: ``K`` (``1 <= K <= fine_steps``; ``K = 1`` is always ``[t_0, 0]``).
        x_T: the noise batch ``[n, ...]`` the reference trajectories start from (with its
            ``mask`` ``[n, N]`` and ``cond``); if ``None``, ``n`` prior samples of ``shape``
            (per-sample item shape, e.g. ``(2,)``) are drawn with ``seed``.
        other arguments: see :func:`boss_search`.
    """
    if x_T is None:
        if shape is None:
            raise ValueError("boss_schedule needs a noise batch x_T [n, ...] or shape= (the shape of one sample)")
        from ..utils import per_sample_generators

        x_T = process.prior((int(n), *tuple(shape)), generator=per_sample_generators(seed, int(n)), mask=mask)
    res = boss_search(model, process, x_T, mask=mask, cond=cond, prediction=prediction, fine_steps=fine_steps,
                      fine_grid=fine_grid, sampler=sampler, batch_size=batch_size, options=options)
    return res.schedule(steps)


def boss_search_domain(domain, model, *, n: int = 256, seed: int = 0, fine_steps: int = 100,
                       fine_grid: Union[str, Tensor, list] = "uniform_t", sampler: str = "euler", batch_size: int = 256,
                       device="cpu", cache: Optional[Path] = None) -> BossSearch:
    """:func:`boss_search` from ``n`` of the domain's generation batches (sample ``i`` from seed
    ``seed + i``: the same noise, masks and labels as :func:`workbench.runner.sample_domain`
    and :func:`~workbench.distill.pairs.build_teacher_pairs` with that seed). With ``cache``
    (a file path) the search is saved there and reloaded when the settings match."""
    from ..api import generation_batches
    from ..checkpoint import load_state, save_state

    settings = {"n": int(n), "seed": int(seed), "fine_steps": int(fine_steps), "sampler": sampler,
                "fine_grid": fine_grid if isinstance(fine_grid, str) else [float(t) for t in torch.as_tensor(fine_grid).flatten()]}
    if cache is not None and Path(cache).exists():
        st = load_state(cache)
        if (st.get("info") or {}).get("settings") == settings:
            return BossSearch.from_state(st)
    if int(n) < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    xs, masks, conds = [], [], []
    for gb, _ in generation_batches(domain, int(n), int(seed), int(batch_size)):
        xs.append(gb.x_T)
        masks.append(gb.mask)
        conds.append(gb.cond)
    x_T = torch.cat(xs).to(device)
    mask = torch.cat(masks).to(device) if masks[0] is not None else None
    cond = _to_device(_cat_rows(conds, [x.shape[0] for x in xs]), device)
    res = boss_search(model, domain.process(), x_T, mask=mask, cond=cond, prediction=getattr(model, "prediction", domain.prediction),
                      fine_steps=fine_steps, fine_grid=fine_grid, sampler=sampler, batch_size=batch_size)
    res.info["settings"] = settings
    if cache is not None:
        save_state(cache, res.state())
    return res


def _to_device(v: Any, device) -> Any:
    if isinstance(v, Tensor):
        return v.to(device)
    if isinstance(v, dict):
        return type(v)((k, _to_device(x, device)) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        out = [_to_device(x, device) for x in v]
        return type(v)(*out) if hasattr(v, "_fields") else type(v)(out)
    return v


def boss_grid(domain, model, steps: int, *, n: int = 256, seed: int = 0, fine_steps: int = 100,
              fine_grid: Union[str, Tensor, list] = "uniform_t", sampler: str = "euler", batch_size: int = 256,
              device="cpu") -> Tensor:
    """The BOSS grid ``[steps + 1]`` of ``model`` (e.g. ``domain.load_teacher()``) in ``domain``,
    searched from ``n`` generation batches (seeds ``seed .. seed + n - 1``); pass it as
    ``timesteps=`` to :func:`workbench.runner.sample_domain` / :func:`workbench.sample`."""
    return boss_search_domain(domain, model, n=n, seed=seed, fine_steps=fine_steps, fine_grid=fine_grid, sampler=sampler,
                              batch_size=batch_size, device=device).schedule(steps)
