"""The contract every distillation recipe must honour, as one reusable check (tests of every
method call it; users call it on their own methods):

* the objective returns a finite per-sample loss of shape ``[B]`` (for every phase);
* gradients reach only the trainable nets of the phase being optimised, never the teacher
  (nor EMA targets);
* a few optimisation steps with the shared loop lower the loss on a fixed batch, measured
  with the same times and noises before and after; for multi-phase objectives only the nets
  of the phase checked (``decrease_phase``, e.g. DMD's ``fake``) train, the others stay fixed;
* the generator built by ``make_generator`` round-trips through its JSON config
  (``to_config`` -> :func:`~workbench.distill.generators.build_generator` + ``state_dict``,
  the rebuilt generator reporting the same config), produces samples of
  the right shape, and respects masks (zero padding) and zero centre of mass.
"""
from __future__ import annotations

import json
from typing import Optional

import torch

from ..losses import Batch
from .api import DistillSetup
from .generators import build_generator

__all__ = ["check_recipe", "fixed_data"]


def fixed_data(batch: Batch):
    """A data sampler returning ``batch`` every time."""
    return lambda batch_size, generator=None: batch


class _OnePhase:
    """``objective`` restricted to one of its phases (run every step)."""

    def __init__(self, objective, phase: str, names: list):
        self.objective, self.phase = objective, phase
        self.phases = [(phase, names, 1)]
        self.ema_targets = getattr(objective, "ema_targets", None)

    def __call__(self, nets, batch, generator=None, phase=None):
        return self.objective(nets, batch, generator, phase=self.phase)


def _phases(setup: DistillSetup):
    ph = getattr(setup.objective, "phases", None)
    return [(n, list(names)) for n, names, _ in ph] if ph else [("main", list(setup.trainable))]


def check_recipe(setup: DistillSetup, domain, *, batch_size: int = 8, steps: int = 3, decrease_phase: Optional[str] = "main",
                 decrease_steps: int = 60, lr: float = 1e-3, seed: int = 0, gen_steps: int = 2) -> dict:
    """Run the checks above; raise ``AssertionError`` naming the first violation. Returns
    ``{"loss_start", "loss_end", "sample"}`` for further assertions. ``decrease_phase=None``
    skips the decrease check (say why at the call site)."""
    from ..training import TrainConfig, train

    g = torch.Generator().manual_seed(seed)
    data = setup.data or domain.train_data("train")
    batch = data(batch_size, g)
    nets = setup.nets
    frozen = {n: [p.detach().clone() for p in m.parameters()] for n, m in nets.items() if n not in setup.trainable}
    for name, names in _phases(setup):
        for m in nets.values():
            m.zero_grad(set_to_none=True)
        kw = {"phase": name} if getattr(setup.objective, "phases", None) else {}
        loss = setup.objective(nets, batch, torch.Generator().manual_seed(seed + 1), **kw)
        assert loss.ndim == 1 and loss.shape[0] == len(batch), f"phase {name}: loss shape {tuple(loss.shape)} != [{len(batch)}]"
        assert bool(torch.isfinite(loss).all()), f"phase {name}: loss is not finite: {loss}"
        loss.mean().backward()
        for n, m in nets.items():
            # reach: the graph connects the loss to the net (a gradient may be exactly 0 at
            # initialisation, e.g. DMD with the fake score equal to the teacher)
            reach = any(p.grad is not None for p in m.parameters())
            leak = any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in m.parameters())
            if n in names:
                assert reach, f"phase {name}: no gradient reaches trainable net {n!r}"
            else:
                assert not leak, f"phase {name}: gradient leaks into {n!r}, which this phase must not train"
    for m in nets.values():
        m.zero_grad(set_to_none=True)
    out = {}
    if decrease_phase is not None:
        key = decrease_phase if getattr(setup.objective, "phases", None) else "main"
        kw = {"phase": key} if getattr(setup.objective, "phases", None) else {}

        def fixed_loss() -> float:  # the same batch, times and noises before and after training
            vals = [float(setup.objective(nets, batch, torch.Generator().manual_seed(1000 + i), **kw).detach().mean()) for i in range(8)]
            for m in nets.values():
                m.zero_grad(set_to_none=True)
            return sum(vals) / len(vals)

        before = fixed_loss()
        cfg = TrainConfig(steps=decrease_steps, batch_size=batch_size, lr=lr, grad_clip=1.0, ema_decay=0.9, ckpt_every=10**9,
                          log_every=max(1, decrease_steps // 6), progress=False)
        obj, trainable = setup.objective, setup.trainable
        if getattr(setup.objective, "phases", None):  # train only the phase checked: the other nets stay fixed
            names = dict(_phases(setup))[key]
            obj, trainable = _OnePhase(setup.objective, key, names), names
        train(obj, nets, fixed_data(batch), cfg, trainable=trainable, ema=[])
        after = fixed_loss()
        out["loss_start"], out["loss_end"] = before, after
        assert after < before, f"loss of phase {key!r} did not decrease on a fixed batch: {before:.4g} -> {after:.4g}"
    for n, ps in frozen.items():
        if n in getattr(setup.objective, "ema_targets", {}) or {}:
            continue
        for p0, p in zip(ps, nets[n].parameters()):
            assert torch.equal(p0, p.detach()), f"frozen net {n!r} changed during training"
    gen = setup.make_generator(nets).eval()
    config = json.loads(json.dumps(gen.to_config()))
    re = build_generator(domain, config).eval()
    assert re.to_config() == config, "the generator rebuilt from its config reports another config"
    re.load_state_dict(gen.state_dict())
    gb = domain.generation_batch(4, generator=[torch.Generator().manual_seed(i) for i in range(4)])
    with torch.no_grad():
        x = gen.generate(gb.x_T, gen_steps, mask=gb.mask, cond=gb.cond, generator=torch.Generator().manual_seed(3))
        x2 = re.generate(gb.x_T, gen_steps, mask=gb.mask, cond=gb.cond, generator=torch.Generator().manual_seed(3))
    assert x.shape == gb.x_T.shape, f"generator output {tuple(x.shape)} != {tuple(gb.x_T.shape)}"
    assert bool(torch.isfinite(x).all()), "generator output is not finite"
    assert torch.allclose(x, x2, atol=1e-5), "generator rebuilt from its config differs from the trained one"
    proc = domain.process()
    if gb.mask is not None:
        pad = (1 - gb.mask)[..., None] * x
        assert float(pad.abs().max()) == 0.0, "generator output has non-zero padding"
    if getattr(proc, "zero_com", False):
        m = gb.mask[..., None] if gb.mask is not None else torch.ones_like(x[..., :1])
        com = (x * m).sum(1) / m.sum(1)
        if getattr(proc, "com_dims", None) is not None:
            com = com[..., :proc.com_dims]
        assert float(com.abs().max()) < 1e-4, f"generator output is not centred: |CoM| = {float(com.abs().max()):.2e}"
    out["sample"] = x
    return out
