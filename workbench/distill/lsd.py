"""Learnable Sampler Distillation, LSD and LSD+ (Fu, Guo & Liu 2025, "Learnable Sampler
Distillation for Discrete Diffusion Models", NeurIPS 2025; official code feiyangfu/LSD).

The teacher network stays frozen; what is learned is the few-step *sampler*: one coefficient
``c_k`` per student step (LSD), which raises the model's concrete score to the power ``c_k``
in the reverse-CTMC step (:mod:`workbench.samplers.lsd`; the official ``sampler.py``
multiplies SEDD's log-score by ``coeffs[i]``, initialised to 1 = the base sampler), and for
LSD+ also the ``K`` step sizes of the time grid. A training iteration:

1. start ``B`` chains at the prior ``x_1`` (all masks) and roll the STUDENT out with its own
   ``K``-step sampler (the official student runs its own trajectory, never the teacher's);
2. at each student step ``k`` (interval ``[t_{k+1}, t_k]``), run the many-step TEACHER
   sampler (the same base step with ``c = 1``, ``teacher_steps / K`` uniform sub-steps over the
   interval; 256 teacher vs 8 student steps in the official code) from the student's state
   ``x_{t_k}`` to ``y ~ teacher(x_{t_{k+1}} | x_{t_k})``;
3. the loss is the cross-entropy ``-log P_student(y | x_{t_k}; c_k, t_k, t_{k+1})`` averaged
   over the positions masked in ``x_{t_k}``: an unbiased estimate (up to a constant) of the
   per-position KL between the teacher's many-step transition over the interval and the
   student's one-step transition. Gradients reach ``c_k`` (and the times, LSD+) through the
   student's transition probabilities; the categorical draws are not differentiated (as in
   the official code, where only ``model_output * coeffs[i]`` carries the gradient).

What the official code does not give (its README: "Release training and evaluation code" is
still to do; the paper's method section was not available to us): the loss and its weights, the
optimiser and its settings. The cross-entropy above, Adam at lr 0.02 (constant, no EMA),
200 iterations of 32 chains are OUR choices.

Two losses (``distill.loss=``), both ours:

* ``cross_entropy`` (steps 1-3 above): per-position transition marginals. For a calibrated x0
  model its optimum is the base sampler itself (``c = 1``): the few-step error of masked
  diffusion is the factorisation across positions, which per-position marginals cannot see
  (measured: the learned coefficients stay at 0.90-1.05).
* ``path_kl`` (:class:`LSDPathKLObjective`): the reverse KL of the student's path to the
  many-step teacher's path on the student's grid, which scores the JOINT outcome of each student
  step (the teacher reveals tokens in sub-steps, later ones conditioned on earlier ones), an
  upper bound of the KL between the final sample laws. Its optimum sharpens (``c > 1``) where
  factorised steps make incompatible choices. Same rollout (student's own trajectory), same
  many-step teacher, same parameters. LSD+'s grid: the official ``StudentSolverDiscrete``
(l. 133-179) learns raw increments with no constraint (and indexes them inconsistently); we
parameterise the increments as ``softmax(logits)`` (initialised uniform), so the grid always
runs from 1 to 0 and stays strictly decreasing, and LSD+ learns the coefficients as well (the
paper: "also learns time schedules"). The network's time input is evaluated at the detached
``t_k`` (gradients to the times flow through ``alpha(t)``, ``alpha'(t)`` and ``dt``).

Output: ``generator.safetensors`` holding only ``coeffs [K]`` and ``timesteps [K + 1]`` (plus
the header): a few hundred bytes, usable as ``sampler=lsd:PATH`` with any checkpoint of the
teacher, or as ``generator=PATH`` (the generator then loads the teacher it names).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..losses import Batch
from ..samplers._discrete import DiscreteModelFn
from ..samplers.lsd import BASES, lsd as lsd_sampler, lsd_transition
from .api import DistillSetup, MethodOptions, RecipeContext, register_method
from .generators import BaseGenerator

__all__ = ["LOSSES", "LSDOptions", "LSDParams", "LSDGenerator", "LSDObjective", "LSDPathKLObjective"]

#: the training losses of ``lsd`` / ``lsd_plus`` (``distill.loss=``)
LOSSES = ("cross_entropy", "path_kl", "token_path_kl")


@dataclass
class LSDOptions(MethodOptions):
    """Options of ``lsd`` / ``lsd_plus``."""

    #: steps of the teacher sampler over the whole grid (official: 256 for an 8-step student)
    teacher_steps: int = 256
    #: the base step the coefficients modify: euler (the official code's) or tau_leaping
    base: str = "euler"
    #: the training loss (neither is the paper's, which is not released): ``cross_entropy``
    #: (per-position transition marginals, the default since the first release) or ``path_kl``
    #: (reverse KL of the student's path to the teacher's, joint over positions; see the module)
    loss: str = "cross_entropy"
    #: power of the concrete score in the TEACHER sampler (1: the model's own sampler). The
    #: official code's effective ``teacher_sampler`` (the PC one, which shadows the Euler one in
    #: ``sampler.py``) multiplies SEDD's log-score by 1.15; its corrector steps are not reproduced
    teacher_coeff: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.teacher_steps < 1:
            raise ValueError(f"teacher_steps must be >= 1, got {self.teacher_steps}")
        self.choice("base", self.base, BASES)
        self.choice("loss", self.loss, LOSSES)
        if not self.teacher_coeff > 0:
            raise ValueError(f"teacher_coeff must be > 0, got {self.teacher_coeff}")
        if self.loss == "path_kl" and self.teacher_coeff != 1.0:
            raise ValueError("loss=path_kl scores the teacher's unmasking times, known in closed form only for teacher_coeff=1; "
                             "use loss=token_path_kl or cross_entropy with a tempered teacher")


class LSDParams(nn.Module):
    """The learned sampler: ``coeffs`` ``[K]`` (init 1) and, with ``learn_times``, grid logits
    ``[K]`` (init 0: the uniform grid). :meth:`grid` -> float64 ``[K + 1]`` from 1 to 0."""

    def __init__(self, steps: int, learn_times: bool = False):
        super().__init__()
        self.coeffs = nn.Parameter(torch.ones(int(steps), dtype=torch.float64))
        self.learn_times = bool(learn_times)
        self.time_logits = nn.Parameter(torch.zeros(int(steps), dtype=torch.float64), requires_grad=self.learn_times)

    def grid(self) -> Tensor:
        """``t_0 = 1 > t_1 > ... > t_K = 0`` (float64 ``[K + 1]``; differentiable for LSD+)."""
        inc = torch.softmax(self.time_logits, 0)
        t = 1.0 - torch.cumsum(inc, 0)
        return torch.cat([torch.ones(1, dtype=t.dtype, device=t.device), t[:-1], torch.zeros(1, dtype=t.dtype, device=t.device)])


class LSDObjective:
    """``objective(nets, batch, generator) -> loss [B]`` (module docstring, steps 1-3);
    ``batch`` holds the prior states ``x`` ``[B, N]`` and ``mask``."""

    def __init__(self, process, teacher_steps: int, base: str, *, teacher_coeff: float = 1.0):
        self.process, self.teacher_steps, self.base = process, int(teacher_steps), base
        self.teacher_coeff = float(teacher_coeff)

    def __call__(self, nets: dict, batch: Batch, generator) -> Tensor:
        teacher, params = nets["teacher"], nets["sampler"]
        proc = self.process
        x, mask = batch.x.long(), batch.mask
        ts = params.grid()
        K = len(ts) - 1
        sub = max(1, self.teacher_steps // K)
        model = DiscreteModelFn(teacher, proc, mask=mask, generator=generator)
        real = model.real(x)
        loss = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for k in range(K):
            t, s = ts[k], ts[k + 1]
            with torch.no_grad():
                probs = model(x, float(t))
                grid = torch.linspace(float(t), float(s), sub + 1, dtype=torch.float64)
                y = lsd_sampler(model, x, grid, base=self.base, coeffs=[self.teacher_coeff] * sub)  # the teacher's state at s
            P = lsd_transition(proc, probs, x, t, s, params.coeffs[k], self.base)
            P = P / P.sum(-1, keepdim=True)
            logp = torch.log(P.gather(-1, y[..., None]).squeeze(-1).clamp_min(1e-300))
            sel = ((x == proc.mask_id) & real).to(logp.dtype)
            loss = loss - (logp * sel).sum(1) / sel.sum(1).clamp_min(1.0)
            with torch.no_grad():
                x = model.project(model.sample(P.detach()))                # the student's own rollout
        return (loss / K).float()


def _log_prob(P: Tensor, y: Tensor, sel: Tensor, tokens_only: bool = False) -> Tensor:
    """``sum_i sel_i log P_i(y_i)`` ``[B]`` for transitions ``P`` ``[B, N, V + 1]`` (rows
    normalised, the mask last). ``tokens_only``: the positions that unmask, each under its token
    law given that it unmasks, ``P_i(y_i) / (1 - P_i(mask))``."""
    lp = torch.log(P.gather(-1, y[..., None]).squeeze(-1).clamp_min(1e-300))
    if tokens_only:
        sel = sel & (y != P.shape[-1] - 1)
        lp = lp - torch.log((1.0 - P[..., -1]).clamp_min(1e-300))
    return (lp * sel.to(P.dtype)).sum(1)


class LSDPathKLObjective:
    """``loss="path_kl"``: the reverse KL of the student's ``K``-step path to the many-step
    teacher's path on the same grid (OUR objective, joint over positions; not the paper's).

    By the chain rule, ``KL(q_path || p_path) = E_q sum_k [log q_k(x_{k+1} | x_k) - log
    p_k(x_{k+1} | x_k)]`` and it bounds ``KL(q(x_0) || p(x_0))`` of the final samples from above.
    ``q_k`` is the student's factorised one-step transition (:func:`lsd_transition`); ``p_k`` is
    the teacher sampler over the same interval, whose probability of the JOINT outcome ``y`` is
    computed exactly for the continuous-time masked process: each masked position stays masked
    with ``1 - u``, ``u = (alpha_s - alpha_t) / (1 - alpha_t)``, or unmasks with ``u`` in one of
    the ``teacher_steps / K`` sub-steps (drawn with probability ``alpha(tau_{j+1}) -
    alpha(tau_j)``, one draw per position), and the tokens of sub-step ``j`` have the teacher's
    ``p(y_i | x)`` evaluated with the tokens of the earlier sub-steps revealed, so ``log p_k``
    sees the dependence between positions that the factorised student step ignores (one draw of
    the sub-step assignment: a stochastic lower bound of ``log p_k``, so the loss is an upper
    bound). The categorical draws are not differentiable; the gradient is the score-function
    (REINFORCE) estimator ``E_q[G_k grad log q_k]`` with reward-to-go ``G_k = sum_{j >= k}
    (log q_j - log p_j)`` and a leave-one-out batch baseline, plus, for LSD+, the pathwise
    ``grad_t (log q_k - log p_k)`` at the drawn ``y`` through the times only (``log p_k``
    depends on them through ``u``; the ``grad log q_k`` part has mean 0 and cancels
    ``grad log p_k`` where the two transitions agree). The returned value is the path-KL estimate per
    sequence, divided by its number of real positions; ``B >= 2`` for the baseline.

    With ``c = 1`` and as many teacher as student steps, ``q_k = p_k`` and the loss and its
    gradient are exactly 0 (tested). The paper's loss is not released (module docstring).
    """

    def __init__(self, process, teacher_steps: int, base: str, *, tokens_only: bool = False, teacher_coeff: float = 1.0):
        self.process, self.teacher_steps, self.base = process, int(teacher_steps), base
        self.tokens_only, self.teacher_coeff = bool(tokens_only), float(teacher_coeff)
        if self.teacher_coeff != 1.0 and not self.tokens_only:
            raise ValueError("loss=path_kl needs teacher_coeff=1 (use loss=token_path_kl for a tempered teacher)")

    def _teacher_logp(self, model: DiscreteModelFn, x: Tensor, y: Tensor, t: Tensor, s: Tensor, sub: int, sel: Tensor) -> Tensor:
        """``log p_k(y | x)`` ``[B]`` of the ``sub``-step teacher (class docstring);
        differentiable in ``t`` and ``s`` through ``u``."""
        proc = self.process
        a_t, a_s = proc.alpha(t), proc.alpha(s)
        u = ((a_s - a_t) / (1.0 - a_t)).clamp(0.0, 1.0)
        unm = sel & (y != proc.mask_id)
        stay = sel & (y == proc.mask_id)
        logu = torch.log(u.clamp_min(1e-300))
        log1mu = torch.log((1.0 - u).clamp_min(1e-300))
        lp = unm.to(torch.float64).sum(1) * logu + stay.to(torch.float64).sum(1) * log1mu
        if self.tokens_only:
            lp = torch.zeros_like(lp)
        with torch.no_grad():
            taus = torch.linspace(float(t), float(s), sub + 1, dtype=torch.float64)
            w = (proc.alpha(taus[1:]) - proc.alpha(taus[:-1])).clamp_min(0.0)
            cdf = torch.cumsum(w / w.sum(), 0).to(x.device)
            bins = torch.searchsorted(cdf, model.uniform(x.to(torch.float64)).contiguous(), right=True).clamp(max=sub - 1)
            cur, tok = x.clone(), torch.zeros(x.shape, dtype=torch.float64, device=x.device)
            for j in range(sub):
                inb = unm & (bins == j)
                if bool(inb.any()):
                    pj = model(cur, float(taus[j]))
                    if self.teacher_coeff != 1.0:   # the tempered teacher's token law p^c / sum p^c
                        pj = pj ** self.teacher_coeff
                        pj = pj / pj.sum(-1, keepdim=True)
                    lj = torch.log(pj.gather(-1, y.clamp(max=proc.vocab_size - 1)[..., None]).squeeze(-1).clamp_min(1e-300))
                    tok = torch.where(inb, lj, tok)
                    cur = torch.where(inb, y, cur)
        return lp + tok.sum(1)

    def __call__(self, nets: dict, batch: Batch, generator) -> Tensor:
        teacher, params = nets["teacher"], nets["sampler"]
        proc = self.process
        x, mask = batch.x.long(), batch.mask
        B = x.shape[0]
        if B < 2:
            raise ValueError(f"lsd loss=path_kl needs batch_size >= 2 (a leave-one-out baseline), got {B}")
        ts = params.grid()
        K = len(ts) - 1
        sub = max(1, self.teacher_steps // K)
        model = DiscreteModelFn(teacher, proc, mask=mask, generator=generator)
        real = model.real(x)
        logq, logp, f, lq_times = [], [], [], []
        for k in range(K):
            t, s = ts[k], ts[k + 1]
            with torch.no_grad():
                probs = model(x, float(t))
            P = lsd_transition(proc, probs, x, t, s, params.coeffs[k], self.base)
            P = P / P.sum(-1, keepdim=True)
            with torch.no_grad():
                y = model.project(model.sample(P.detach()))
            sel = (x == proc.mask_id) & real
            lq = _log_prob(P, y, sel)                       # the policy: unmask decisions and tokens
            lp = self._teacher_logp(model, x, y, t, s, sub, sel)
            if self.tokens_only:                              # the log-ratio of the tokens given the unmasked set
                lp = lp.detach()
                f.append((_log_prob(P, y, sel, tokens_only=True) - lp).detach())
            else:
                f.append((lq - lp).detach())
                if ts.requires_grad:   # the pathwise control variate through the times only
                    Pt = lsd_transition(proc, probs, x, t, s, params.coeffs[k].detach(), self.base)
                    lq_times.append(_log_prob(Pt / Pt.sum(-1, keepdim=True), y, sel))
            logq.append(lq)
            logp.append(lp)
            x = y
        n = real.to(torch.float64).sum(1).clamp_min(1.0)
        F = torch.stack(f, 0)                                                   # [K, B]
        G = torch.flip(torch.cumsum(torch.flip(F, [0]), 0), [0])               # reward-to-go
        G = G - (G.sum(1, keepdim=True) - G) / (B - 1)                          # leave-one-out baseline
        lq, lp = torch.stack(logq, 0), torch.stack(logp, 0)
        lqt = torch.stack(lq_times, 0) if lq_times else lp.detach()
        surrogate = (G * lq + (lqt - lp)).sum(0) / n
        kl = F.sum(0) / n
        return (surrogate - surrogate.detach() + kl).float()


class LSDGenerator(BaseGenerator):
    """A teacher sampled by a learned LSD / LSD+ sampler. Its weights are only ``coeffs``
    ``[K]`` and ``timesteps`` ``[K + 1]``; the teacher is loaded by :meth:`from_config` from
    the path the config names (``None``: the domain's shipped teacher) and is not saved."""

    kind = "lsd"

    def __init__(self, teacher: nn.Module, process, coeffs: Tensor, timesteps: Tensor, *, base: str = "euler",
                 method: str = "lsd", teacher_path: Optional[str] = None):
        super().__init__()
        object.__setattr__(self, "teacher", teacher)  # not a submodule: the file stays a few hundred bytes
        self.process, self.base, self.method, self.teacher_path = process, base, method, teacher_path
        self.register_buffer("coeffs", torch.as_tensor(coeffs, dtype=torch.float64).detach().clone())
        self.register_buffer("timesteps", torch.as_tensor(timesteps, dtype=torch.float64).detach().clone())

    def _config(self) -> dict:
        return {"steps": int(self.coeffs.numel()), "base": self.base, "method": self.method, "teacher": self.teacher_path}

    @classmethod
    def from_config(cls, domain, config: dict) -> "LSDGenerator":
        K = int(config["steps"])
        teacher = domain.load_teacher(config.get("teacher"))
        return cls(teacher, domain.process(), torch.ones(K), torch.linspace(1, 0, K + 1), base=config.get("base", "euler"),
                   method=config.get("method", "lsd"), teacher_path=config.get("teacher"))

    def nfe(self, steps: Optional[int] = None) -> int:
        return int(self.coeffs.numel())

    def generate(self, x_T: Tensor, steps: Optional[int] = None, *, timesteps=None, mask: Optional[Tensor] = None, cond: Any = None,
                 generator=None, noise_scale: Optional[float] = None) -> Tensor:
        """``x_T`` ``LongTensor [B, N]`` -> samples with the learned ``K``-step sampler
        (``steps`` must be ``K`` or ``None``)."""
        from ..api import run_sampler

        K = int(self.coeffs.numel())
        if steps is not None and int(steps) != K:
            raise ValueError(f"this {self.method} sampler was trained for {K} steps; pass steps={K}")
        self.teacher.to(x_T.device)
        return run_sampler(self.teacher, self.process, x_T, sampler="lsd", steps=K, timesteps=self.timesteps.tolist(), mask=mask,
                           cond=cond, generator=generator, coeffs=self.coeffs.tolist(), base=self.base).x


def _recipe(ctx: RecipeContext, opts: LSDOptions, learn_times: bool, method: str) -> DistillSetup:
    proc = ctx.process
    if getattr(proc, "mask_id", None) is None:
        raise ValueError(f"{method} needs a masked (absorbing) discrete process, got {type(proc).__name__}")
    K = int(ctx.student_steps)
    params = LSDParams(K, learn_times=learn_times)
    dom = ctx.domain
    teacher_path = ctx.teacher_path

    def data(B: int, generator) -> Batch:
        gb = dom.generation_batch(B, generator=generator)
        return Batch(x=gb.x_T, mask=gb.mask)

    def make_generator(nets: dict) -> LSDGenerator:
        p = nets["sampler"]
        return LSDGenerator(ctx.teacher, proc, p.coeffs.detach(), p.grid().detach(), base=opts.base, method=method,
                            teacher_path=teacher_path)

    if opts.loss == "cross_entropy":
        objective = LSDObjective(proc, opts.teacher_steps, opts.base, teacher_coeff=opts.teacher_coeff)
    else:
        objective = LSDPathKLObjective(proc, opts.teacher_steps, opts.base, tokens_only=opts.loss == "token_path_kl",
                                       teacher_coeff=opts.teacher_coeff)
    return DistillSetup(objective=objective, nets={"teacher": ctx.teacher, "sampler": params},
                        trainable=["sampler"], ema=[], make_generator=make_generator, data=data,
                        train_defaults={"steps": 200, "batch_size": 32, "lr": 0.02, "warmup": 0, "schedule": "constant",
                                        "grad_clip": 0.0, "weight_decay": 0.0, "ckpt_every": 50, "log_every": 5},
                        info={"learned": "coefficients and time grid" if learn_times else "coefficients", "student_steps": K,
                              "teacher_steps": opts.teacher_steps, "base": opts.base, "loss": opts.loss,
                              "teacher_coeff": opts.teacher_coeff})


@register_method("lsd", options=LSDOptions, kind="lsd", state="discrete",
                 description="learned per-step powers of the concrete score of a few-step discrete sampler, fitted to a many-step teacher sampler",
                 paper="Fu et al. 2025, Learnable Sampler Distillation (LSD)")
def lsd_recipe(ctx: RecipeContext, opts: LSDOptions) -> DistillSetup:
    return _recipe(ctx, opts, learn_times=False, method="lsd")


@register_method("lsd_plus", options=LSDOptions, kind="lsd", state="discrete",
                 description="LSD with a learned time grid as well (LSD+)",
                 paper="Fu et al. 2025, Learnable Sampler Distillation (LSD+)")
def lsd_plus_recipe(ctx: RecipeContext, opts: LSDOptions) -> DistillSetup:
    return _recipe(ctx, opts, learn_times=True, method="lsd_plus")
