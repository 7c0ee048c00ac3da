"""Self-Distillation Through Time, SDTT (Deschenaux & Gulcehre 2024, "Beyond Autoregression:
Fast LLMs via Self-Distillation Through Time", ICLR 2025; official code jdeschena/sdtt,
``src/sdtt/core/distill/multi_round_sdtt.py``).

A masked diffusion model (MDLM, SUBS) is fine-tuned so that ONE ancestral step of size ``2 dt``
does what the teacher does in ``k = 2`` ancestral steps of size ``dt``; the student then
becomes the teacher and ``dt`` doubles (one *round*). Starting at ``dt = 1 / start_steps``,
``log2(start_steps / student_steps)`` rounds give a model for ``student_steps`` sampling steps
(official: 1024 -> 8 in 7 rounds of 10k steps). Per training example (official
``_teacher_logprobs_on_mask`` and ``training_step``):

1. ``x0`` from the data, ``t ~ U(k dt, 1)`` (official ``U(eps, 1)``; ours keeps the teacher's steps inside ``[0, 1]``), ``x_t ~ q(x_t | x0)`` (each real token masked
   independently with probability ``1 - alpha(t)``);
2. the teacher takes ``k`` ancestral MDLM steps from ``x_t`` at times ``t - i dt``,
   ``i = 0..k-1`` (each: one network call ``log p(x0 | x)``, masked tokens unmask with
   probability ``(alpha_s - alpha_t) / (1 - alpha_t)`` to a token drawn from ``p``); the TARGET
   of a position masked in ``x_t`` is the teacher's ``log p(x0 | .)`` from the step at which it
   was unmasked, and the last step's for positions still masked;
3. the student makes one call on ``x_t`` at ``t``; loss on the masked real positions:
   ``KL(student || teacher)`` (``loss="kl_bwd"``, the official default and the paper's best),
   or ``kl_fwd`` / ``mse`` (MSE of the log-probabilities);
4. at the end of each round the student's raw (non-EMA) weights are copied into the teacher;
   the optimiser and the EMA continue (official ``reset_optimizer_on_growth: False``,
   ``use_ema_on_growth: False``).

Deviations: the official teacher grid (``t_start * space + (1 - t_start) * t_end``,
l. 262-270) is a bug that moves the teacher's evaluation times; we use ``t - i dt`` as the
paper describes. The official run uses AdamW lr 3e-4 with 2,500 warm-up steps, EMA 0.9999,
batch 128 and 10k steps per round; the defaults here keep lr 3e-4 and the loss, and shrink the
rounds to CPU size (``steps_per_round``, ``start_steps``); ``dt`` is ``1 / steps`` (the
official ``(1 - eps) / steps``, our grid ends at 0). Sampling: the student with ``mdlm_ancestral``
at ``student_steps`` steps (a :class:`~workbench.distill.generators.FlowGenerator`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..losses import Batch
from ..processes import categorical, rand64
from ..utils import model_kwargs
from .api import DistillSetup, MethodOptions, RecipeContext, register_method
from .generators import FlowGenerator
from .students import make_student, student_spec

__all__ = ["SDTTOptions", "SDTTObjective", "LOSSES"]

LOSSES = ("kl_bwd", "kl_fwd", "mse")


@dataclass
class SDTTOptions(MethodOptions):
    """Options of ``sdtt`` (official values in the module docstring)."""

    #: sampling steps of the first round's teacher (official 1024); must be student_steps * 2^rounds
    start_steps: int = 1024
    #: teacher steps per student step (official num_distill_steps = 2)
    k: int = 2
    #: optimiser steps per round (official 10,000)
    steps_per_round: int = 10000
    loss: str = "kl_bwd"

    def __post_init__(self):
        super().__post_init__()
        self.choice("loss", self.loss, LOSSES)
        if self.k < 2:
            raise ValueError(f"k must be >= 2 (teacher steps per student step), got {self.k}")
        if self.start_steps < 2 or self.steps_per_round < 1:
            raise ValueError(f"start_steps must be >= 2 and steps_per_round >= 1, got {self.start_steps}, {self.steps_per_round}")


class _Round(nn.Module):
    """The run's round bookkeeping as buffers (checkpointed with the nets, so a resumed run
    continues in the right round): ``calls`` objective calls so far, ``round`` the current one."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("round", torch.zeros((), dtype=torch.long))


class SDTTObjective:
    """``objective(nets, batch, generator) -> loss [B]`` over ``nets = {"student", "teacher",
    "rounds"}`` (module docstring)."""

    def __init__(self, process, *, start_steps: int, k: int, steps_per_round: int, rounds: int, loss: str):
        self.process, self.start_steps, self.k = process, int(start_steps), int(k)
        self.steps_per_round, self.rounds, self.loss = int(steps_per_round), int(rounds), loss

    def _logp(self, net, x: Tensor, t: Tensor, mask) -> Tensor:
        """SUBS log-probabilities ``[B, N, V]`` (float32): unmasked positions one-hot."""
        V = self.process.vocab_size
        out = net(x, t.float(), **model_kwargs(mask, None)) if mask is not None else net(x, t.float())
        logp = torch.log_softmax(out.float(), -1)
        known = (x != self.process.mask_id)[..., None]
        onehot = torch.nn.functional.one_hot(x.clamp(max=V - 1), V).bool()
        return torch.where(known, torch.where(onehot, 0.0, -1e6), logp)

    def __call__(self, nets: dict, batch: Batch, generator) -> Tensor:
        student, teacher, rs = nets["student"], nets["teacher"], nets["rounds"]
        r = min(int(rs.calls) // self.steps_per_round, self.rounds - 1)
        if r > int(rs.round):  # a new round: the student (raw weights) becomes the teacher
            teacher.load_state_dict(student.state_dict())
            rs.round.fill_(r)
        rs.calls += 1
        proc = self.process
        x0, mask = batch.x.long(), batch.mask
        B = x0.shape[0]
        steps = self.start_steps // (2 ** r) // 1
        dt = 1.0 / steps
        lo = self.k * dt  # the teacher's k steps must stay inside [0, 1]
        t = lo + (1.0 - lo) * rand64((B,), generator).to(x0.device)
        x_t = proc.add_noise(x0, t, generator=generator, mask=mask)
        real = torch.ones_like(x0, dtype=torch.bool) if mask is None else mask.bool()
        with torch.no_grad():
            x = x_t
            target = None
            for i in range(self.k):
                ti, si = t - i * dt, t - (i + 1) * dt
                logp = self._logp(teacher, x, ti, mask)
                target = logp if target is None else torch.where((x == proc.mask_id)[..., None], logp, target)
                a_t, a_s = proc.alpha(ti), proc.alpha(si)
                unmask = ((a_s - a_t) / (1.0 - a_t))[:, None]
                u = rand64(x.shape, generator).to(x.device)
                draw = categorical(logp.double().exp(), generator)
                x = torch.where((x == proc.mask_id) & (u < unmask) & real, draw, x)
            # positions unmasked at teacher step i keep step i's log p; still masked: the last step's
        logp_s = self._logp(student, x_t, t, mask)
        sel = ((x_t == proc.mask_id) & real)
        ps, pt = logp_s.exp(), target.exp()
        if self.loss == "kl_bwd":
            per = (ps * (logp_s - target)).sum(-1)
        elif self.loss == "kl_fwd":
            per = (pt * (target - logp_s)).sum(-1)
        else:
            per = (logp_s - target).pow(2).mean(-1)
        w = sel.float()
        return (per * w).sum(1) / w.sum(1).clamp_min(1.0)


@register_method("sdtt", options=SDTTOptions, kind="flow", state="discrete",
                 description="self-distillation through time: rounds in which one ancestral step of 2 dt learns the teacher's two steps of dt",
                 paper="Deschenaux & Gulcehre 2024, SDTT")
def sdtt_recipe(ctx: RecipeContext, opts: SDTTOptions) -> DistillSetup:
    proc = ctx.process
    if getattr(proc, "mask_id", None) is None:
        raise ValueError(f"sdtt needs a masked (absorbing) discrete process, got {type(proc).__name__}")
    K = int(ctx.student_steps)
    ratio = opts.start_steps / K
    rounds = round(math.log2(ratio)) if ratio >= 2 else 0
    if rounds < 1 or K * 2 ** rounds != opts.start_steps:
        raise ValueError(f"start_steps ({opts.start_steps}) must be student_steps ({K}) times a power of 2 (>= 2); "
                         f"e.g. distill.start_steps={K * 2 ** max(1, rounds)}")
    spec = student_spec(ctx.teacher, ctx.domain)
    student = make_student(ctx, spec)
    teacher = copy.deepcopy(student).requires_grad_(False)
    objective = SDTTObjective(proc, start_steps=opts.start_steps, k=opts.k, steps_per_round=opts.steps_per_round, rounds=rounds,
                              loss=opts.loss)

    def make_generator(nets: dict) -> FlowGenerator:
        return FlowGenerator(nets["student"], proc, sampler="mdlm_ancestral", prediction="x0")

    return DistillSetup(objective=objective, nets={"student": student, "teacher": teacher, "rounds": _Round()}, trainable=["student"],
                        ema=["student"], make_generator=make_generator,
                        train_defaults={"steps": rounds * opts.steps_per_round, "lr": 3e-4, "warmup": 2500, "schedule": "constant",
                                        "ema_decay": 0.9999},
                        info={"rounds": rounds, "round_steps": [opts.start_steps // 2 ** (r + 1) for r in range(rounds)],
                              "loss": opts.loss})
