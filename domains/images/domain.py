"""The ``images`` domain: small grey-scale image generation (sklearn digits by default,
Fashion-MNIST when its Debian package is installed) with a diffusers ``UNet2DModel``
epsilon-predictor on a DDPM linear schedule, class-conditional and unconditional from one
network (null label ``10``, classifier-free-guidance label dropout during training).

Config keys (hydra ``domain.*``):

* ``dataset``: ``digits`` (default) or ``fashion_mnist``;
* ``conditional``: ``True`` (default): generation labels ``i % 10`` and 10 % label dropout
  in training; ``False``: the null label ``10`` everywhere (training an unconditional-only
  net); the shipped teacher does both;
* ``guidance``: classifier-free guidance weight ``w`` (1 = plain conditional, default);
* ``p_uncond``: label-dropout probability in training (default 0.1);
* ``unet``: overrides of the ``UNet2DModel`` config (see :data:`backbone.ARCH`);
* ``data_root``: folder of the Fashion-MNIST IDX files (default the Debian package's);
* ``classifier``: path of the metric classifier (default the shipped one);
* ``max_reference``: size cap of the default metric reference (test split), default 2000.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from workbench.checkpoint import CheckpointError
from workbench.domain import Domain, GenerationBatch
from workbench.losses import Batch, DenoisingLoss
from workbench.model import Denoiser
from workbench.processes import from_diffusers
from workbench.utils import atomic_path

from .backbone import UNetBackbone, unet_config
from .data import (CLASS_NAMES, NULL_LABEL, NUM_CLASSES, ImageSampler, check_dataset, image_shape,
                   load_splits, quantize)

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

#: the diffusers scheduler config of the teachers (DDPM, Ho et al. 2020)
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                    "prediction_type": "epsilon"}

#: :class:`workbench.training.TrainConfig` of the shipped teachers (2 CPU cores)
TRAIN_DEFAULTS = {
    "digits": dict(steps=2500, batch_size=128, lr=2e-3, warmup=200, schedule="cosine", grad_clip=1.0, ema_decay=0.999,
                   ckpt_every=500, log_every=50, seed=0),
    "fashion_mnist": dict(steps=2500, batch_size=64, lr=2e-3, warmup=200, schedule="cosine", grad_clip=1.0, ema_decay=0.999,
                          ckpt_every=500, log_every=50, seed=0),
}


def regenerate_command(dataset: str, what: str = "") -> str:
    only = f" --only {what}" if what else ""
    return f"python -m domains.images.train_teachers --dataset {dataset}{only}"


class LabelDropoutLoss:
    """:class:`~workbench.losses.DenoisingLoss` with classifier-free-guidance label dropout
    (Ho & Salimans 2022): each label is replaced by the null label with probability
    ``p_uncond`` (drawn from the training generator, so runs stay reproducible)."""

    def __init__(self, base: DenoisingLoss, p_uncond: float = 0.1):
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
        self.base, self.p_uncond = base, float(p_uncond)
        self.process, self.prediction = base.process, base.prediction

    def __call__(self, nets, batch: Batch, generator=None) -> Tensor:
        y = batch.cond
        if y is None or self.p_uncond >= 1.0:
            y = torch.full((len(batch),), NULL_LABEL, dtype=torch.long, device=batch.x.device)
        elif self.p_uncond > 0.0:
            g = generator if isinstance(generator, torch.Generator) or generator is None else generator[0]
            drop = torch.rand(len(batch), generator=g).to(batch.x.device) < self.p_uncond
            y = torch.where(drop, torch.full_like(y, NULL_LABEL), y)
        return self.base(nets, Batch(x=batch.x, mask=batch.mask, cond=y, extra=batch.extra), generator)

    def __repr__(self) -> str:
        return f"LabelDropoutLoss({self.base!r}, p_uncond={self.p_uncond})"


@dataclass
class ImagesConfig:
    """Options of the images domain (``domain.<key>=`` on the command line)."""

    dataset: str = field(default="digits", metadata={"help": "digits (sklearn, 8x8) or fashion_mnist (28x28, Debian package dataset-fashion-mnist)"})
    conditional: bool = field(default=True, metadata={"help": "class-conditional generation (labels 0-9; 10 = unconditional)"})
    guidance: float = field(default=1.0, metadata={"help": "classifier-free guidance weight (1 = plain conditional)"})
    p_uncond: float = field(default=0.1, metadata={"help": "label-dropout probability in teacher training"})
    unet: dict = field(default_factory=dict, metadata={"help": "UNet2DModel config overrides, e.g. domain.unet={block_out_channels: [8, 16]}"})
    data_root: Optional[str] = field(default=None, metadata={"help": "folder of the Fashion-MNIST IDX files (default: the Debian package's)"})
    classifier: Optional[str] = field(default=None, metadata={"help": "metric classifier checkpoint (default: the shipped one)"})
    max_reference: int = field(default=2000, metadata={"help": "size cap of the default metric reference (test split)"})


class ImagesDomain(Domain):
    """Grey-scale images in ``[-1, 1]``, states ``[B, 1, H, W]``, ``cond`` = labels ``[B]``.
    Config: :class:`ImagesConfig`."""

    name = "images"
    description = "sklearn digits (8x8) / Fashion-MNIST (28x28) with a diffusers UNet2DModel, class-conditional and unconditional"
    Config = ImagesConfig
    formats = ("png", "npz")
    has_exact_model = False
    prediction = "epsilon"
    primary_metric = "fd_classifier"
    metric_info = {
        "fd_classifier": ("lower", "Frechet distance in the features of the in-repo digits classifier (not FID) to the test split"),
        "class_accuracy": ("higher", "fraction of samples the in-repo classifier assigns to their conditioning label"),
        "precision": ("higher", "fraction of samples inside the test split's feature manifold (k-NN, classifier features)"),
        "recall": ("higher", "fraction of the test split inside the samples' feature manifold"),
    }
    #: ``workbench demo``: the shipped digits teacher, class-conditional
    demo_configs = {"digits": {"dataset": "digits", "conditional": True}}
    demo_n = 200
    demo_metrics = ("fd_classifier", "class_accuracy")

    def __init__(self, **config):
        super().__init__(**config)
        self.dataset = check_dataset(str(self.config["dataset"]))
        self.conditional = bool(self.config["conditional"])
        self.guidance = float(self.config["guidance"])
        self.p_uncond = float(self.config["p_uncond"])
        self.shape = image_shape(self.dataset)
        self.class_names = CLASS_NAMES[self.dataset]
        self.train_defaults = dict(TRAIN_DEFAULTS[self.dataset])
        self._explicit_unet = bool(self.config.get("unet"))
        self._classifier = None
        self._ref_cache: dict = {}
        if self.dataset == "fashion_mnist":
            self._splits()  # fail now, with the install command, if the package is missing

    # -- data ----------------------------------------------------------------------------------
    def _splits(self):
        return load_splits(self.dataset, self.config.get("data_root"))

    def train_data(self, split: str = "train"):
        self._splits()
        return ImageSampler(self.dataset, split, self.config.get("data_root"))

    def reference_batch(self, n: Optional[int] = None, *, generator=None, split: str = "test") -> Batch:
        """``n`` real images of ``split`` without replacement (all of them if ``n`` is
        ``None`` or at least the split size), in a fixed order for a fixed generator."""
        data = self.train_data(split).all()
        if n is None or n >= len(data):
            return data
        g = generator if isinstance(generator, torch.Generator) else torch.Generator().manual_seed(0)
        idx = torch.randperm(len(data), generator=g)[: int(n)]
        return Batch(x=data.x[idx], cond=data.cond[idx])

    # -- modelling -----------------------------------------------------------------------------
    def process(self):
        return from_diffusers(SCHEDULER_CONFIG)

    def objective(self):
        base = DenoisingLoss(self.process(), self.prediction)
        return LabelDropoutLoss(base, self.p_uncond if self.conditional else 1.0)

    def unet_config(self, overrides: Optional[dict] = None) -> dict:
        return unet_config(self.dataset, {**(self.config.get("unet") or {}), **(overrides or {})})

    def build_backbone(self, two_time: bool = False, **kwargs):
        """A fresh :class:`~workbench.model.Denoiser` around a ``UNet2DModel``; ``kwargs``
        override the UNet config (e.g. ``block_out_channels=(8, 16), norm_num_groups=8`` for a
        tiny test net); ``guidance=`` sets the CFG weight.

        ``two_time=True``: an average-velocity student ``u(z, r, t, cond=)`` in the linear view
        of the process (:class:`~workbench.model.TwoTimeDenoiser`; MeanFlow, SplitMeanFlow)
        around a UNet with a second timestep embedding of ``t - r``
        (:func:`~domains.images.backbone.make_two_time`), teacher parameter names kept; the
        keywords ``prediction``, ``time_scale`` and ``gap_scale`` go to the ``TwoTimeDenoiser``."""
        guidance = float(kwargs.pop("guidance", self.guidance))
        wrap = {k: kwargs.pop(k) for k in ("prediction", "time_scale", "gap_scale") if k in kwargs}
        if wrap and not two_time:
            raise ValueError(f"{', '.join(sorted(wrap))} only apply to two-time students (two_time=True)")
        bb = UNetBackbone(self.unet_config(kwargs), guidance=guidance, two_time=two_time)
        if two_time:
            from workbench.model import TwoTimeDenoiser

            wrap["prediction"] = wrap.get("prediction") or self.prediction
            return TwoTimeDenoiser(bb, self.process(), time_map="diffusers", **wrap)
        return Denoiser(bb, self.process(), prediction=self.prediction, time_map="diffusers")

    def build_two_time_backbone(self, **kwargs):
        """``build_backbone(two_time=True, **kwargs)``: a UNet with a second timestep embedding
        of ``t - r`` in a :class:`~workbench.model.TwoTimeDenoiser`."""
        return self.build_backbone(two_time=True, **kwargs)

    def slim_backbone_kwargs(self, factor: float) -> dict:
        """``block_out_channels`` divided by ``factor`` (of the current UNet config) and the
        largest ``norm_num_groups`` (at most the current one) dividing every width."""
        cfg = self.unet_config()
        ch = [max(1, int(int(c) // factor)) for c in cfg["block_out_channels"]]
        g = int(cfg.get("norm_num_groups", 32))
        while g > 1 and any(c % g for c in ch):
            g -= 1
        return {"block_out_channels": ch, "norm_num_groups": g}

    def default_teacher_path(self) -> Path:
        return CHECKPOINT_DIR / f"{self.dataset}_unet.safetensors"

    def shipped_students(self) -> tuple:
        """The SiD student of the shipped class-conditional digits teacher (``checkpoints/README.md``), 2 steps."""
        from workbench.domain import ShippedStudent

        if self.dataset != "digits" or not self.config["conditional"] or self.config["unet"] or float(self.config["guidance"]) != 1.0:
            return ()
        return (ShippedStudent("sid_2step", CHECKPOINT_DIR / "digits_sid_student_2step.safetensors", 2, description="SiD student, 2 steps"),)

    def classifier_path(self) -> Path:
        return Path(self.config["classifier"]) if self.config.get("classifier") else CHECKPOINT_DIR / f"{self.dataset}_classifier.safetensors"

    def teacher_regenerate_command(self) -> str:
        return regenerate_command(self.dataset, "unet")

    def check_checkpoint(self, meta: dict, path: Path) -> None:
        """The checkpoint must be an images teacher of this ``dataset``."""
        if meta.get("domain", self.name) != self.name:
            raise CheckpointError(f"checkpoint {path} is a {meta.get('domain')!r} teacher, not an images teacher")
        ds = (meta.get("config") or {}).get("dataset", self.dataset)
        if ds != self.dataset:
            raise CheckpointError(f"checkpoint {path} was trained on {ds!r}, not {self.dataset!r}")

    def adopt_checkpoint_architecture(self, meta: dict, keys) -> None:
        """Unless ``unet`` was set explicitly, build the UNet the checkpoint's header
        (``config["unet"]``) records."""
        if not self._explicit_unet:
            self.config["unet"] = dict((meta.get("config") or {}).get("unet") or {})

    # -- generation ----------------------------------------------------------------------------
    def labels(self, n: int, cond: Any = None) -> Tensor:
        """Generation labels ``[n]``: ``i % 10`` (balanced) when conditional, else ``10``; an
        int gives that label to every sample; a sequence/tensor of ``n`` labels is checked."""
        if cond is None:
            return torch.arange(n) % NUM_CLASSES if self.conditional else torch.full((n,), NULL_LABEL, dtype=torch.long)
        y = torch.as_tensor(cond).long().reshape(-1)
        if y.numel() == 1:
            y = y.expand(n).clone()
        if y.shape != (n,):
            raise ValueError(f"cond must be one label or {n} labels, got shape {tuple(y.shape)}")
        if bool(((y < 0) | (y > NULL_LABEL)).any()):
            raise ValueError(f"labels must be in 0..{NULL_LABEL} ({NULL_LABEL} = unconditional)")
        return y

    def generation_batch(self, n: int, *, generator=None, cond: Any = None) -> GenerationBatch:
        x = self.process().prior((int(n), *self.shape), generator=generator)
        y = self.labels(int(n), cond)
        return GenerationBatch(x_T=x, cond=y, info={"dataset": self.dataset, "class_names": self.class_names})

    # -- evaluation ----------------------------------------------------------------------------
    def classifier(self):
        """The metric classifier (:class:`~domains.images.classifier.SmallCNN`), loaded once."""
        if self._classifier is None:
            from .classifier import load_classifier

            self._classifier = load_classifier(self.classifier_path(), self.dataset)
        return self._classifier

    def reward(self, samples: Batch) -> Tensor:
        """Differentiable reward ``[B]``: the metric classifier's log-probability of each
        sample's label (``cond``), or of its most likely class for unconditional samples
        (label 10 or no ``cond``), on samples clamped to ``[-1, 1]``. The classifier is also
        the metric network, so report ``fd_classifier`` knowing it shares the features."""
        clf = self.classifier().to(samples.x.device)
        for p in clf.parameters():
            p.requires_grad_(False)
        logp = torch.log_softmax(clf(samples.x.clamp(-1, 1)), dim=-1)  # [B, 10]
        best = logp.max(dim=-1).values
        y = samples.cond if isinstance(samples.cond, Tensor) else None
        if y is None:
            return best
        y = y.long().to(logp.device)
        has = y != NULL_LABEL
        picked = logp.gather(1, torch.where(has, y, torch.zeros_like(y))[:, None])[:, 0]
        return torch.where(has, picked, best)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(features [N, 64], logits [N, 10])`` of the metric classifier."""
        from .classifier import embed

        return embed(self.classifier(), torch.as_tensor(x).detach().cpu().float())

    def evaluate(self, samples: Batch, *, reference: Optional[Batch] = None, k: int = 3) -> dict:
        """Metrics of ``samples`` against ``reference`` (default: the test split, or a fixed
        seeded subset of ``max_reference = 2000`` test images when it is larger):

        * ``fd_classifier``: Frechet distance of the metric classifier's penultimate features
          (FID's formula, this project's classifier -- not comparable to FID);
        * ``precision`` / ``recall``: k-NN manifold precision and recall (``k = 3``) in the
          same features (Kynkaanniemi et al. 2019);
        * ``mmd_classifier``: unbiased RBF MMD^2 in the same features;
        * ``class_accuracy``: fraction of samples with a label ``!= 10`` that the classifier
          assigns to that label (only when there are such samples).

        Samples are clamped to ``[-1, 1]`` (what the PNG writer stores); set metrics need at
        least ``k + 1`` samples (else NaN).
        """
        from workbench.metrics import frechet_distance, mmd_rbf, precision_recall_knn

        x = torch.as_tensor(samples.x).detach().cpu().float()
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"samples must have shape [B, {', '.join(map(str, self.shape))}], got {tuple(x.shape)}")
        finite = torch.isfinite(x.flatten(1)).all(1)
        out: dict = {}
        if not bool(finite.all()):
            out["nonfinite_fraction"] = float(1.0 - finite.double().mean())
        feats, logits = self.features(x[finite])
        if reference is None:
            if "test" not in self._ref_cache:
                n_ref = int(self.config.get("max_reference", 2000))
                self._ref_cache["test"] = self.features(self.reference_batch(n_ref, split="test").x)
            ref_feats, _ = self._ref_cache["test"]
        else:
            ref_feats, _ = self.features(reference.x)
        n = feats.shape[0]
        nan = float("nan")
        out["fd_classifier"] = frechet_distance(ref_feats, feats) if n >= 2 else nan
        if n > k and len(ref_feats) > k:
            pr = precision_recall_knn(ref_feats, feats, k=k)
            out["precision"], out["recall"] = float(pr["precision"]), float(pr["recall"])
        else:
            out["precision"] = out["recall"] = nan
        out["mmd_classifier"] = mmd_rbf(ref_feats, feats) if n >= 2 else nan
        if samples.cond is not None:
            y = torch.as_tensor(samples.cond).long().reshape(-1).cpu()
            if y.numel() == 1:
                y = y.expand(x.shape[0])
            y = y[finite]
            has = y != NULL_LABEL
            if bool(has.any()):
                out["class_accuracy"] = float((logits.argmax(1)[has] == y[has]).double().mean())
        return out

    # -- I/O -----------------------------------------------------------------------------------
    def save_samples(self, samples: Batch, out_dir: Path) -> list[Path]:
        """One grey-scale PNG per sample (``sample_00000.png``, pixels = :func:`~domains.images.data.quantize`
        of the sample) and ``samples.npz`` (``x`` float32 ``[B, 1, H, W]``, ``images`` uint8
        ``[B, H, W]``, ``labels`` int64 ``[B]``, 10 = unconditional)."""
        from PIL import Image

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        x = torch.as_tensor(samples.x).detach().cpu().float()
        q = quantize(x)[:, 0]
        paths = []
        for i, img in enumerate(q):
            p = out_dir / f"sample_{i:05d}.png"
            with atomic_path(p) as tmp:
                Image.fromarray(np.ascontiguousarray(img)).save(tmp, format="PNG")
            paths.append(p)
        labels = (self.labels(len(x), samples.cond) if samples.cond is not None else torch.full((len(x),), NULL_LABEL)).numpy()
        npz = out_dir / "samples.npz"
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, x=x.numpy(), images=q, labels=labels, dataset=np.array(self.dataset))
        paths.append(npz)
        return paths

    def plot(self, samples: Batch, path: Path, *, max_images: int = 100, ncols: int = 10) -> Path:
        """A PNG grid of the first ``max_images`` samples, ``ncols`` per row (with the default
        labels ``i % 10`` each column is one class), pixel-exact nearest-neighbour upscaling."""
        from PIL import Image

        x = torch.as_tensor(samples.x).detach().cpu().float()[:max_images]
        q = quantize(x)[:, 0]
        n, h, w = q.shape
        ncols = max(1, min(ncols, n))
        nrows = max(1, -(-n // ncols))
        scale = max(1, 64 // max(h, w))
        gap = 2
        H, W = h * scale, w * scale
        canvas = np.full((nrows * (H + gap) + gap, ncols * (W + gap) + gap), 128, dtype=np.uint8)
        for i in range(n):
            r, c = divmod(i, ncols)
            tile = np.kron(q[i], np.ones((scale, scale), dtype=np.uint8))
            canvas[gap + r * (H + gap): gap + r * (H + gap) + H, gap + c * (W + gap): gap + c * (W + gap) + W] = tile
        path = Path(path)
        with atomic_path(path) as tmp:
            Image.fromarray(canvas).save(tmp, format="PNG")
        return path

    def __repr__(self) -> str:
        return f"ImagesDomain(dataset={self.dataset!r}, conditional={self.conditional})"
