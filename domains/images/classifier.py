"""The domain's own image classifier: a small CNN trained on the train split of the same
data. Its penultimate-layer activations are the feature space of the Frechet distance
(``fd_classifier``: the FID recipe of Heusel et al. 2017 with this classifier instead of
Inception, so the numbers are *not* FID) and of k-NN precision/recall (Kynkaanniemi et al.
2019); its predictions give the class accuracy of class-conditional samples.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from workbench.checkpoint import CheckpointError, load_into, save_weights

from .data import NUM_CLASSES, ImageSampler, image_shape

FEATURE_DIM = 64


class SmallCNN(nn.Module):
    """conv-conv-pool x2, adaptive average pool, ``fc -> features [B, 64]`` (ReLU), ``fc -> logits [B, 10]``."""

    def __init__(self, dataset: str = "digits", width: int = 32, feature_dim: int = FEATURE_DIM):
        super().__init__()
        c, h, _ = image_shape(dataset)
        pool = 2 if h <= 8 else 3
        w = width

        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

        self.conv = nn.Sequential(*block(c, w), *block(w, w), nn.MaxPool2d(2), *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
                                  nn.AdaptiveAvgPool2d(pool), nn.Flatten())
        self.fc = nn.Sequential(nn.Dropout(0.3), nn.Linear(2 * w * pool * pool, feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feature_dim, NUM_CLASSES))
        self.dataset = dataset

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features ``[B, 64]`` of images ``[B, 1, H, W]`` in ``[-1, 1]``."""
        return self.fc(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def embed(model: SmallCNN, x: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """``(features [N, 64], logits [N, 10])`` in eval mode, images clamped to ``[-1, 1]``."""
    was = model.training
    model.eval()
    feats, logits = [], []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].float().clamp(-1.0, 1.0)
        f = model.features(xb)
        feats.append(f)
        logits.append(model.head(f))
    model.train(was)
    if not feats:
        return torch.zeros(0, FEATURE_DIM), torch.zeros(0, NUM_CLASSES)
    return torch.cat(feats), torch.cat(logits)


def accuracy(model: SmallCNN, x: Tensor, y: Tensor) -> float:
    _, logits = embed(model, x)
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


def _shift(x: Tensor, g: torch.Generator, max_shift: int) -> Tensor:
    """Random integer translations (zero = background -1 padding), one per image."""
    if max_shift <= 0:
        return x
    B, _, H, W = x.shape
    p = max_shift
    xp = F.pad(x, (p, p, p, p), value=-1.0)
    dx = torch.randint(0, 2 * p + 1, (B,), generator=g)
    dy = torch.randint(0, 2 * p + 1, (B,), generator=g)
    out = torch.empty_like(x)
    for i in range(B):
        out[i] = xp[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W]
    return out


def train_classifier(dataset: str = "digits", *, steps: Optional[int] = None, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                     data_root: Optional[str] = None, log=print) -> tuple[SmallCNN, dict]:
    """Train :class:`SmallCNN` on the train split (AdamW, cosine LR, +-1 px shifts on digits).
    Returns the model (eval mode) and ``{"val_accuracy", "test_accuracy", "steps", "seconds"}``."""
    steps = steps if steps is not None else (1500 if dataset == "digits" else 2000)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = ImageSampler(dataset, "train", data_root)
    model = SmallCNN(dataset)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    max_shift = 1 if dataset == "digits" else 2
    t0 = time.time()
    model.train()
    for step in range(steps):
        b = data(batch_size, g)
        loss = F.cross_entropy(model(_shift(b.x, g, max_shift)), b.cond)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 500 == 0:
            log(f"classifier step {step + 1}/{steps} loss {loss.item():.4f}")
    model.eval()
    val, test = ImageSampler(dataset, "val", data_root).all(), ImageSampler(dataset, "test", data_root).all()
    info = {"val_accuracy": accuracy(model, val.x, val.cond), "test_accuracy": accuracy(model, test.x, test.cond),
            "steps": steps, "seconds": time.time() - t0}
    return model, info


def save_classifier(model: SmallCNN, path, info: Optional[dict] = None) -> Path:
    return save_weights(path, model, {"kind": "classifier", "arch": "SmallCNN", "dataset": model.dataset, **(info or {})})


def load_classifier(path, dataset: str = "digits") -> SmallCNN:
    """Load a classifier checkpoint; :class:`~workbench.checkpoint.CheckpointError` if it is
    missing, corrupt, or for another data set."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"classifier checkpoint not found: {path}; regenerate it with "
                              f"`python -m domains.images.train_teachers --dataset {dataset} --only classifier`")
    model = SmallCNN(dataset)
    meta = load_into(model, path)
    if meta.get("dataset", dataset) != dataset:
        raise CheckpointError(f"classifier checkpoint {path} was trained on {meta.get('dataset')!r}, not {dataset!r}")
    return model.eval().requires_grad_(False)
