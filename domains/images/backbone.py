"""The ``images`` backbone: a diffusers ``UNet2DModel`` (Ho et al. 2020 style U-Net) with
class conditioning through ``num_class_embeds = 11`` (labels ``0..9`` plus the null label
``10``), wrapped so ``backbone(x, t_in, cond=None, mask=None) -> eps`` and, optionally,
classifier-free guidance (Ho & Salimans 2022): ``eps = eps_null + w (eps_c - eps_null)``.

``two_time=True`` builds the backbone of an average-velocity student (MeanFlow, Geng et al.
2025; SplitMeanFlow, Guo et al. 2025): a second timestep embedding of ``dt_in`` (the
interval ``t - r``) is added to the UNet's time embedding through the class-embedding path
(:class:`GapLabelEmbedding` replaces ``unet.class_embedding`` and keeps its parameter name,
so the teacher's weights load by name; its new branch starts at zero). For forward-mode
differentiation (MeanFlow's JVP) the attention uses diffusers' plain ``AttnProcessor``
(PyTorch's fused CPU attention has no forward-mode derivative) and every GroupNorm gets a
contiguous input.
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


class GapLabelEmbedding(nn.Embedding):
    """``unet.class_embedding`` of a two-time UNet: ``forward(packed [B, 2])`` with
    ``packed[:, 0]`` the class labels (as floats) and ``packed[:, 1]`` ``dt_in`` returns
    ``label_embedding + gap(dt_in)`` ``[B, dim]``; ``gap`` is a sinusoidal embedding (diffusers'
    ``get_timestep_embedding``) followed by a 2-layer MLP whose last layer starts at zero.
    A long tensor ``[B]`` of labels gives the plain label embedding."""

    def __init__(self, num_embeddings: int, embedding_dim: int, freq_dim: int):
        super().__init__(num_embeddings, embedding_dim)
        self.freq_dim = int(freq_dim)
        self.gap = nn.Sequential(nn.Linear(self.freq_dim, embedding_dim), nn.SiLU(), nn.Linear(embedding_dim, embedding_dim))
        nn.init.zeros_(self.gap[-1].weight)
        nn.init.zeros_(self.gap[-1].bias)

    def forward(self, packed: Tensor) -> Tensor:
        from diffusers.models.embeddings import get_timestep_embedding

        if not packed.is_floating_point():
            return super().forward(packed)
        labels = packed[:, 0].detach().round().long()
        emb = get_timestep_embedding(packed[:, 1], self.freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        return super().forward(labels) + self.gap(emb.to(self.weight.dtype))


def _contiguous_input(module, args):
    return (args[0].contiguous(),) + tuple(args[1:])


def make_two_time(unet: nn.Module) -> None:
    """Turn a ``UNet2DModel`` (with ``num_class_embeds``) into a two-time UNet in place (see
    the module docstring); teacher tensors keep their names."""
    from diffusers.models.attention_processor import Attention, AttnProcessor

    old = unet.class_embedding
    if not isinstance(old, nn.Embedding):
        raise ValueError("a two-time UNet needs the class-embedding path (num_class_embeds set in the UNet config)")
    freq = int(unet.config.block_out_channels[0])
    new = GapLabelEmbedding(old.num_embeddings, old.embedding_dim, freq)
    with torch.no_grad():
        new.weight.copy_(old.weight)
    unet.class_embedding = new
    for m in unet.modules():
        if isinstance(m, Attention):
            m.set_processor(AttnProcessor())
        if isinstance(m, nn.GroupNorm):
            m.register_forward_pre_hook(_contiguous_input)


class UNetBackbone(nn.Module):
    """``forward(x [B, C, H, W], t_in [B] (diffusers timesteps), cond=None, mask=None)``.

    ``cond``: ``LongTensor [B]`` of labels ``0..10`` (``10`` = unconditional) or ``None``
    (all unconditional). ``guidance`` (``w``; 1 = plain conditional, 0 = unconditional)
    mixes the conditional and null-label predictions of rows whose label is not ``10``;
    ``w != 1`` costs a second network pass per step.

    ``two_time=True``: ``forward(x, t_in, cond=None, mask=None, dt_in=[B])`` (see the module
    docstring and :func:`make_two_time`).
    """

    def __init__(self, config: dict, guidance: float = 1.0, two_time: bool = False):
        super().__init__()
        from diffusers import UNet2DModel

        self.config = dict(config)
        self.unet = UNet2DModel(**self.config)
        self.guidance = float(guidance)
        self.two_time = bool(two_time)
        if self.two_time:
            make_two_time(self.unet)

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

    def forward(self, x: Tensor, t_in: Tensor, cond: Any = None, mask: Optional[Tensor] = None,
                dt_in: Optional[Tensor] = None) -> Tensor:
        """``x [B, C, H, W], t_in [B]`` (and ``dt_in [B]`` when two-time) -> ``[B, C, H, W]``."""
        if self.two_time and dt_in is None:
            raise ValueError("a two-time UNet needs dt_in [B] (the embedded interval t - r)")
        if not self.two_time and dt_in is not None:
            raise ValueError("dt_in given to a one-time UNet; build it with two_time=True")
        y = self.labels(cond, x.shape[0], x.device)

        def pack(lab: Tensor, rows=slice(None)):
            if dt_in is None:
                return lab
            return torch.stack([lab.to(x.dtype), torch.as_tensor(dt_in, device=x.device).to(x.dtype).expand(x.shape[0])[rows]], 1)

        out = self.unet(x, t_in, class_labels=pack(y)).sample
        w = self.guidance
        if w != 1.0:
            rows = y != NULL_LABEL
            if bool(rows.any()):
                null = torch.full_like(y[rows], NULL_LABEL)
                out_u = self.unet(x[rows], t_in[rows], class_labels=pack(null, rows)).sample
                out = out.clone()
                out[rows] = out_u + w * (out[rows] - out_u)
        return out

    def extra_repr(self) -> str:
        return f"guidance={self.guidance}, two_time={self.two_time}"
