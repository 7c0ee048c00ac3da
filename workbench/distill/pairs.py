"""Teacher couplings: a fixed pool of (noise, teacher ODE sample) pairs, optionally with the
states along each trajectory. Reflow / SlimFlow (Liu et al. 2023; Zhu et al. 2024), BOSS
(Nguyen et al. 2024) and regression-based students (multi-student distillation) train on it.

The pool is built once with a training-free sampler of the core from per-sample seeds, cached
atomically as ``pairs.pt`` in the run directory (reloaded with ``weights_only=True`` on
resume), and used as a pure batch sampler ``pool(batch_size, generator) -> Batch`` with
``x`` the teacher sample, ``extra["noise"]`` its starting noise and, if kept,
``extra["trajectory"]`` ``[B, T + 1, ...]`` on ``pool.timesteps`` ``[T + 1]``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from .. import api
from ..api import cat_batches, generation_batches
from ..losses import Batch

__all__ = ["TeacherPairs", "build_teacher_pairs", "POOL_SEED_OFFSET"]

#: pools draw sample ``i`` from seed ``POOL_SEED_OFFSET + seed + i``, so training couplings never
#: share noise with evaluation runs (which use seeds ``0..n-1``)
POOL_SEED_OFFSET = 10_000_000


class TeacherPairs:
    """A pool of ``n`` teacher couplings.

    Attributes:
        noise: ``[n, ...]`` the prior samples ``x_T`` at ``timesteps[0]``.
        x0: ``[n, ...]`` the teacher's ODE solutions.
        mask: ``[n, N]`` or ``None``; cond: ``[n]`` labels or ``None``.
        trajectory: ``[n, T + 1, ...]`` states on ``timesteps`` (``trajectory[:, 0] = noise``,
            ``trajectory[:, -1] = x0``) or ``None``.
        timesteps: ``[T + 1]`` float64 grid of the solve.
    """

    def __init__(self, noise: Tensor, x0: Tensor, *, mask: Optional[Tensor] = None, cond: Any = None,
                 trajectory: Optional[Tensor] = None, timesteps: Optional[Tensor] = None, info: Optional[dict] = None):
        if noise.shape != x0.shape:
            raise ValueError(f"noise {tuple(noise.shape)} and x0 {tuple(x0.shape)} must have the same shape")
        self.noise, self.x0, self.mask, self.cond = noise, x0, mask, cond
        self.trajectory, self.timesteps = trajectory, timesteps
        self.info = dict(info or {})

    def __len__(self) -> int:
        return self.x0.shape[0]

    def __call__(self, batch_size: int, generator: Optional[torch.Generator] = None) -> Batch:
        idx = torch.randint(0, len(self), (int(batch_size),), generator=generator)
        return self.batch(idx)

    def batch(self, idx) -> Batch:
        sel = lambda v: v[idx] if isinstance(v, Tensor) else v  # noqa: E731
        extra = {"noise": self.noise[idx]}
        if self.trajectory is not None:
            extra["trajectory"] = self.trajectory[idx]
        return Batch(x=self.x0[idx], mask=sel(self.mask), cond=sel(self.cond), extra=extra)

    def state(self) -> dict:
        return {"noise": self.noise, "x0": self.x0, "mask": self.mask, "cond": self.cond if isinstance(self.cond, Tensor) else None,
                "trajectory": self.trajectory, "timesteps": self.timesteps, "info": self.info}

    def save(self, path) -> Path:
        from ..checkpoint import save_state

        return save_state(path, self.state())

    @classmethod
    def load(cls, path) -> "TeacherPairs":
        from ..checkpoint import load_state

        st = load_state(path)
        return cls(st["noise"], st["x0"], mask=st["mask"], cond=st["cond"], trajectory=st["trajectory"], timesteps=st["timesteps"],
                   info=st.get("info"))


@torch.no_grad()
def build_teacher_pairs(domain, teacher, n: int, *, sampler: str = "dpm_solver_pp_3m", steps: int = 20, timesteps="uniform_lambda",
                        keep_trajectory: bool = False, seed: int = 0, batch_size: int = 512, device="cpu",
                        cache: Optional[Path] = None, progress: bool = True) -> TeacherPairs:
    """Solve the teacher's probability-flow ODE from ``n`` prior samples (sample ``i`` from seed
    ``POOL_SEED_OFFSET + seed + i`` with the domain's :meth:`generation_batch`, so sizes / masks / labels follow the
    domain) with ``sampler`` on ``steps`` steps (or the grid ``timesteps``).

    With ``keep_trajectory`` the state at every grid point is kept (the sampler must make one
    model call per grid point, as the multistep and Euler samplers do). A ``cache`` file
    that exists with the same settings is loaded instead of solving again.
    """
    from tqdm.auto import tqdm

    if isinstance(timesteps, str):  # a grid name of workbench.timegrids (uniform_lambda: the uniform-t grid over-smooths)
        from ..timegrids import get_grid

        timesteps = get_grid(timesteps, domain.process(), int(steps))
    settings = {"n": int(n), "sampler": sampler, "steps": int(steps), "seed": int(seed), "keep_trajectory": bool(keep_trajectory),
                "timesteps": None if timesteps is None else [float(t) for t in torch.as_tensor(timesteps).flatten()]}
    if cache is not None and Path(cache).exists():
        pool = TeacherPairs.load(cache)
        if pool.info.get("settings") == settings:
            return pool
    proc = domain.process()
    pred = getattr(teacher, "prediction", domain.prediction)
    xs, noises, trajs, parts, ts = [], [], [], [], None
    bar = tqdm(total=int(n), desc="teacher pairs", disable=not progress, leave=False)
    for gb, gens in generation_batches(domain, int(n), POOL_SEED_OFFSET + int(seed), int(batch_size)):
        x_T = gb.x_T.to(device)
        mask = gb.mask.to(device) if gb.mask is not None else None
        cond = gb.cond.to(device) if isinstance(gb.cond, Tensor) else gb.cond
        states: list[Tensor] = []
        cb = (lambda info: states.append(info["x"].detach().cpu())) if keep_trajectory else None
        out = api.run_sampler(teacher, proc, x_T, sampler=sampler, steps=int(steps), prediction=pred, timesteps=timesteps, mask=mask,
                          cond=cond, generator=gens, callback=cb)
        ts = out.timesteps
        noises.append(gb.x_T.cpu())
        xs.append(out.x.cpu())
        if keep_trajectory:
            if len(states) != len(ts) - 1:
                raise ValueError(f"sampler {sampler!r} made {len(states)} model calls on a {len(ts) - 1}-step grid; "
                                 "keep_trajectory needs one call per grid point (euler, dpm_solver_pp_2m/3m, deis, unipc)")
            trajs.append(torch.stack(states + [out.x.cpu()], dim=1))
        parts.append(Batch(x=out.x.cpu(), mask=gb.mask, cond=gb.cond))
        bar.update(len(x_T))
    bar.close()
    cat = cat_batches(parts)
    pool = TeacherPairs(torch.cat(noises), cat.x, mask=cat.mask, cond=cat.cond, trajectory=torch.cat(trajs) if trajs else None,
                        timesteps=ts, info={"settings": settings})
    if cache is not None:
        pool.save(cache)
    return pool
