"""The ``images`` backbone: a diffusers ``UNet2DModel`` (Ho et al. 2020 style U-Net) with
class conditioning through ``num_class_embeds = 11`` (labels ``0..9`` plus the null label
``10``), wrapped so ``backbone(x, t_in, cond=None, mask=None) -> eps`` and, optionally,
classifier-free guidance (Ho & Salimans 2022): ``eps = eps_null + w (eps_c - eps_null)``.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from .data import NULL_LABEL, image_shape

#: UNet2DModel settings per data set (``domain.unet`` overrides any key)
ARCH = {
    "digits": dict(block_out_channels=(32, 64), layers_per_block=1,
                   down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                   norm_num_groups=16, attention_head_dim=16),
    "fashion_mnist": dict(block_out_channels=(16, 32, 64), layers_per_block=1,
                          down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                          up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                          norm_num_groups=8, attention_head_dim=16),
}


def unet_config(dataset: str, overrides: Optional[dict] = None) -> dict:
    """The full ``UNet2DModel`` keyword config for ``dataset`` (plus ``overrides``)."""
    c, h, w = image_shape(dataset)
    cfg = dict(sample_size=h, in_channels=c, out_channels=c, num_class_embeds=NULL_LABEL + 1, **ARCH[dataset])
    for k, v in (overrides or {}).items():
        cfg[k] = tuple(v) if not isinstance(v, (str, bytes, dict)) and hasattr(v, "__iter__") else v  # lists / hydra ListConfig
    n_down = len(cfg["down_block_types"])
    if len(cfg["block_out_channels"]) != n_down or len(cfg["up_block_types"]) != n_down:
        raise ValueError("UNet config: block_out_channels, down_block_types and up_block_types must have the same length")
    if h % (2 ** (n_down - 1)) or w % (2 ** (n_down - 1)):
        raise ValueError(f"UNet with {n_down} down blocks needs image sizes divisible by {2 ** (n_down - 1)}, got {h}x{w}")
    return cfg


class UNetBackbone(nn.Module):
    """``forward(x [B, C, H, W], t_in [B] (diffusers timesteps), cond=None, mask=None)``.

    ``cond``: ``LongTensor [B]`` of labels ``0..10`` (``10`` = unconditional) or ``None``
    (all unconditional). ``guidance`` (``w``; 1 = plain conditional, 0 = unconditional)
    mixes the conditional and null-label predictions of rows whose label is not ``10``;
    ``w != 1`` costs a second network pass per step.
    """

    def __init__(self, config: dict, guidance: float = 1.0):
        super().__init__()
        from diffusers import UNet2DModel

        self.config = dict(config)
        self.unet = UNet2DModel(**self.config)
        self.guidance = float(guidance)

    def labels(self, cond: Any, batch: int, device) -> Tensor:
        if cond is None:
            return torch.full((batch,), NULL_LABEL, dtype=torch.long, device=device)
        y = torch.as_tensor(cond, device=device).long().reshape(-1)
        if y.numel() == 1 and batch != 1:
            y = y.expand(batch)
        if y.shape != (batch,):
            raise ValueError(f"cond must be class labels of shape [B] = [{batch}], got {tuple(y.shape)}")
        if bool(((y < 0) | (y > NULL_LABEL)).any()):
            raise ValueError(f"class labels must be in 0..{NULL_LABEL} ({NULL_LABEL} = unconditional)")
        return y

    def forward(self, x: Tensor, t_in: Tensor, cond: Any = None, mask: Optional[Tensor] = None) -> Tensor:
        y = self.labels(cond, x.shape[0], x.device)
        out = self.unet(x, t_in, class_labels=y).sample
        w = self.guidance
        if w != 1.0:
            rows = y != NULL_LABEL
            if bool(rows.any()):
                null = torch.full_like(y[rows], NULL_LABEL)
                out_u = self.unet(x[rows], t_in[rows], class_labels=null).sample
                out = out.clone()
                out[rows] = out_u + w * (out[rows] - out_u)
        return out

    def extra_repr(self) -> str:
        return f"guidance={self.guidance}"
