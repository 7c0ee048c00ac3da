"""Image data sets of the ``images`` domain.

* ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 17 grey levels 0..16,
  always available, shipped inside scikit-learn). Fixed seeded split 80/10/10:
  1,437 train / 180 val / 180 test.
* ``fashion_mnist``: Fashion-MNIST (Xiao et al. 2017), 28x28, read from the Debian
  package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``). Optional.
  Split: the official 10,000 test images; the 60,000 training images split by a fixed
  seeded permutation into 55,000 train / 5,000 val.

Images are tensors ``[B, 1, H, W]`` scaled to ``[-1, 1]``; labels are ``0..9``.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from workbench.losses import Batch

DATASETS = ("digits", "fashion_mnist")
SPLITS = ("train", "val", "test")
NUM_CLASSES = 10
NULL_LABEL = 10  # "no class": unconditional generation / classifier-free guidance
SPLIT_SEED = 0

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_INSTALL_HINT = ("Fashion-MNIST is not installed: install the Debian package with "
                        "`apt-get update && apt-get install dataset-fashion-mnist` (as root), "
                        "or set domain.data_root / $WORKBENCH_FASHION_MNIST to a folder holding {files}")

CLASS_NAMES = {
    "digits": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}


class DatasetUnavailable(RuntimeError):
    """An optional data set is not installed."""


def image_shape(dataset: str) -> tuple[int, int, int]:
    """``(C, H, W)`` of a data set's images."""
    check_dataset(dataset)
    return (1, 8, 8) if dataset == "digits" else (1, 28, 28)


def check_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise ValueError(f"unknown images dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    return dataset


def to_unit(pixels: np.ndarray, dataset: str) -> torch.Tensor:
    """Raw pixels (digits: 0..16, Fashion-MNIST: 0..255) ``[N, H, W]`` -> float ``[N, 1, H, W]`` in ``[-1, 1]``."""
    top = 16.0 if dataset == "digits" else 255.0
    x = torch.as_tensor(np.asarray(pixels, dtype=np.float32))
    return (x * (2.0 / top) - 1.0).unsqueeze(1)


def quantize(x: torch.Tensor) -> np.ndarray:
    """``[-1, 1]`` floats (any shape) -> ``uint8`` ``0..255`` (clipped, rounded): what a PNG stores."""
    x = torch.as_tensor(x).detach().to(torch.float64).cpu()
    return torch.round((x.clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8).numpy()


def dequantize(q: np.ndarray) -> torch.Tensor:
    """Inverse of :func:`quantize` up to rounding: ``uint8`` -> ``[-1, 1]`` float32."""
    return torch.as_tensor(np.asarray(q, dtype=np.float32)) / 127.5 - 1.0


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated IDX file ({body.size} bytes, expected {int(np.prod(dims))})")
    return body.reshape(dims)


def fashion_mnist_dir(data_root: Optional[str] = None) -> Path:
    """The folder with the four Fashion-MNIST IDX files; :class:`DatasetUnavailable` (with
    the install command) if it is missing."""
    root = Path(data_root or os.environ.get("WORKBENCH_FASHION_MNIST") or FASHION_DIR)
    missing = [f for f in FASHION_FILES.values() if not (root / f).exists()]
    if missing:
        raise DatasetUnavailable(FASHION_INSTALL_HINT.format(files=", ".join(FASHION_FILES.values())) + f" (looked in {root})")
    return root


def fashion_mnist_available(data_root: Optional[str] = None) -> bool:
    try:
        fashion_mnist_dir(data_root)
        return True
    except DatasetUnavailable:
        return False


@dataclass(frozen=True)
class Split:
    """One split: images ``x`` ``[N, 1, H, W]`` in ``[-1, 1]`` and labels ``y`` ``[N]`` (int64)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


@lru_cache(maxsize=4)
def load_splits(dataset: str = "digits", data_root: Optional[str] = None) -> dict[str, Split]:
    """``{"train", "val", "test"}`` splits of ``dataset`` (cached; deterministic)."""
    check_dataset(dataset)
    if dataset == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        pix, lab = d.images, d.target
        perm = np.random.default_rng(SPLIT_SEED).permutation(len(lab))
        n = len(lab)
        n_test = n_val = int(round(0.1 * n))
        idx = {"test": perm[:n_test], "val": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}
        return {k: Split(to_unit(pix[v], dataset), torch.as_tensor(lab[v], dtype=torch.long)) for k, v in idx.items()}
    root = fashion_mnist_dir(data_root)
    tr_x, tr_y = _read_idx(root / FASHION_FILES["train_images"]), _read_idx(root / FASHION_FILES["train_labels"])
    te_x, te_y = _read_idx(root / FASHION_FILES["test_images"]), _read_idx(root / FASHION_FILES["test_labels"])
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(tr_y))
    n_val = min(5000, len(tr_y) // 10)  # 5,000 for the real data set
    va, tr = perm[:n_val], perm[n_val:]
    mk = lambda x, y: Split(to_unit(x, dataset), torch.as_tensor(y.astype(np.int64)))  # noqa: E731
    return {"train": mk(tr_x[tr], tr_y[tr]), "val": mk(tr_x[va], tr_y[va]), "test": mk(te_x, te_y)}


class ImageSampler:
    """Pure batch sampler over one split: ``sampler(batch_size, generator) -> Batch`` with
    ``x`` ``[B, 1, H, W]`` and ``cond`` = true labels ``[B]`` (drawn with replacement from
    ``generator`` only, so a training run is reproducible and resumable)."""

    def __init__(self, dataset: str = "digits", split: str = "train", data_root: Optional[str] = None):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        self.dataset, self.split, self.data_root = check_dataset(dataset), split, data_root
        self.data = load_splits(dataset, data_root)[split]

    def __len__(self) -> int:
        return len(self.data)

    def __call__(self, batch_size: int, generator: Optional[torch.Generator] = None) -> Batch:
        idx = torch.randint(0, len(self.data), (int(batch_size),), generator=generator)
        return Batch(x=self.data.x[idx].clone(), cond=self.data.y[idx].clone())

    def all(self) -> Batch:
        """The whole split, in a fixed order."""
        return Batch(x=self.data.x.clone(), cond=self.data.y.clone())

    def __repr__(self) -> str:
        return f"ImageSampler(dataset={self.dataset!r}, split={self.split!r}, n={len(self)})"
