"""Network layers shared by the protein domains (``protein_backbone``, ``structure_prediction``)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class AdaLN(nn.Module):
    """Adaptive layer norm (AF3 Suppl. Algorithm 26, as used by Proteina):
    ``LN(h) * sigmoid(W_s LN(c) + b_s) + W_b LN(c)``.

    ``forward(h [..., dim], c [..., dim_cond]) -> [..., dim]``; ``LN(h)`` has no affine
    parameters, ``LN(c)`` a scale only. Parameters: ``cnorm.weight``, ``scale.{weight,bias}``,
    ``shift.weight``. ``structure_prediction`` checkpoints written before the two domains
    shared this layer call ``cnorm`` ``norm_s``; they still load (``_load_from_state_dict``)."""

    #: earlier parameter names -> current ones (read by ``_load_from_state_dict``)
    _RENAMED = {"norm_s.weight": "cnorm.weight"}

    def __init__(self, dim: int, dim_cond: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.cnorm = nn.LayerNorm(dim_cond, bias=False)
        self.scale = nn.Linear(dim_cond, dim)
        self.shift = nn.Linear(dim_cond, dim, bias=False)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        c = self.cnorm(c)
        return self.norm(h) * torch.sigmoid(self.scale(c)) + self.shift(c)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for old, new in self._RENAMED.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
