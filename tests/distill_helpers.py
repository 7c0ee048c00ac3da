"""Shared helpers of the distillation tests (imported by ``tests/test_distill_*.py``)."""
from __future__ import annotations

import torch
from torch import nn

from domains.toy.domain import ToyDomain
from workbench.distill.recipes import RecipeContext


def toy_ctx(dataset: str = "gmm", steps: int = 2, teacher: str = "mlp", out_dir=None, domain_cls=ToyDomain):
    """``(domain, RecipeContext)`` of a toy dataset with its frozen teacher."""
    d = domain_cls(dataset=dataset, teacher=teacher)
    return d, RecipeContext.for_domain(d, student_steps=steps, out_dir=out_dir)


def perturb(net: nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Add seeded Gaussian noise of std ``scale`` to every parameter (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


class Recorder(nn.Module):
    """Wraps a net and records the times it is called at."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.prediction = getattr(net, "prediction", "x0")
        self.calls = []

    def forward(self, x, t, **kw):
        self.calls.append(torch.as_tensor(t).detach().double().flatten().clone())
        return self.net(x, t, **kw)
