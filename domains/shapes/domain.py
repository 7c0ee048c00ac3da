"""The ``shapes`` domain: class-conditional 3D shape generation as surface point clouds, with a
rectified-flow teacher on a permutation-equivariant point transformer.

**State**: a cloud ``x [B, n_points, 3]`` (no mask: every cloud has ``n_points`` points), the
shape's box-normalised surface samples (:mod:`domains.shapes.data`: bounding-box centre at 0,
longest side 1) times ``scale`` (default 2: the state lies in ``[-1, 1]^3``, closer to the unit
variance of the noise). ``cond``: the family label ``[B]`` (index into ``families``;
``len(families)`` is the null label: unconditional generation and classifier-free guidance).

**Process**: :class:`~workbench.processes.RectifiedFlow` (``x_t = (1 - t) x_0 + t eps``, ``t = 0``
data, ``t = 1`` noise), velocity prediction (flow matching, Lipman et al. 2023; Liu et al. 2023),
the backbone :class:`~domains.shapes.nets.PointTransformer` in a
:class:`~workbench.model.Denoiser` (``time_map="identity"``: the network sees ``t`` in
``[0, 1]``). Training drops labels to the null label with probability ``p_uncond`` (CFG).

**Data**: one :class:`~domains.shapes.data.ShapeDataset` per configuration, built once and kept
in memory (~5 s for the defaults), with ``pool_factor * n_points`` surface points per shape; each
training batch takes a fresh uniformly random ``n_points`` subset of every drawn shape's pool
(a subset of i.i.d. uniform surface samples is again one: fresh surface samples per batch at no
cost), plus the optional augmentation (:func:`domains.shapes.data.augment`). Evaluation clouds
are the first ``n_points`` of each pool.

**Metrics** (:meth:`ShapesDomain.evaluate`): validity, the PointFlow / LION set metrics against
the test split (1-NNA, COV, MMD under CD and EMD, per family when the labels are known) and a
parameter-recovery fit of each sample's family.

Config keys (``domain.*``): see :class:`ShapesConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from workbench.checkpoint import CheckpointError
from workbench.domain import Domain, GenerationBatch
from workbench.losses import Batch, DenoisingLoss
from workbench.model import Denoiser
from workbench.processes import RectifiedFlow

from .data import FAMILIES, NORMALIZATIONS, PROCEDURAL_FAMILIES, REAL_MESHES, SPLITS
from .nets import DEFAULT_NET

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
#: built data sets, shared by the domain instances of one process (key: what builds them)
_DATASETS: dict = {}
#: cached reference-reference distance matrices of the test splits (key: data set key, distance)
_REF_DISTANCES: dict = {}


@dataclass
class ShapesConfig:
    """Options of the shapes domain (``domain.<key>=`` on the command line)."""

    families: list = field(default_factory=lambda: list(PROCEDURAL_FAMILIES),
                            metadata={"help": "shape families (procedural and/or real mesh names); their order gives the labels"})
    n_points: int = field(default=256, metadata={"help": "points per cloud (256: CPU-sized, the shipped teacher's; the literature uses 2048)"})
    per_family: int = field(default=64, metadata={"help": "shapes per family (split 80/10/10 into train/val/test)"})
    seed: int = field(default=0, metadata={"help": "seed of the data set (shapes, surface samples, split)"})
    normalize: str = field(default="box", metadata={"help": "per-shape normalisation: box (longest side 1) or sphere"})
    pool_factor: int = field(default=4, metadata={"help": "surface points kept per shape / n_points; each batch draws a fresh subset"})
    scale: float = field(default=2.0, metadata={"help": "state = scale x normalised coordinates"})
    augment: bool = field(default=False, metadata={"help": "augment training clouds (changes the learned distribution)"})
    augment_rotate: bool = field(default=True, metadata={"help": "augmentation: random rotation about the up axis (+y)"})
    augment_scale: float = field(default=0.1, metadata={"help": "augmentation: per-axis scale factors in [1 - s, 1 + s] (0: off)"})
    augment_jitter: float = field(default=0.0, metadata={"help": "augmentation: Gaussian point jitter sigma (normalised units)"})
    conditional: bool = field(default=True, metadata={"help": "class-conditional on the family (False: the null label everywhere)"})
    p_uncond: float = field(default=0.1, metadata={"help": "label-dropout probability in teacher training (CFG)"})
    guidance: float = field(default=1.0, metadata={"help": "classifier-free guidance weight (1: plain conditional)"})
    net: dict = field(default_factory=dict, metadata={"help": "PointTransformer options over DEFAULT_NET, e.g. domain.net.depth=2"})
    eval_max: int = field(default=32, metadata={"help": "set metrics: at most this many samples (and test clouds per comparison)"})
    eval_emd_points: int = field(default=128, metadata={"help": "set metrics: EMD on this many points of each cloud (exact matching)"})
    eval_recover: int = field(default=2, metadata={"help": "parameter-recovery fits per procedural family (0: off)"})
    mesh: str = field(default="poisson", metadata={"help": "generate: a surface mesh per sample from its points (poisson, ball_pivoting, none; PyMeshLab)"})
    mesh_format: str = field(default="ply", metadata={"help": "generate: mesh file format (ply or obj)"})
    renders: int = field(default=4, metadata={"help": "generate: multi-view PNG renders of the first this many samples (mesh + points)"})


class LabelDropoutLoss:
    """:class:`~workbench.losses.DenoisingLoss` with classifier-free-guidance label dropout
    (Ho & Salimans 2022): each label becomes ``null_label`` with probability ``p_uncond``
    (drawn from the training generator: runs stay reproducible)."""

    def __init__(self, base: DenoisingLoss, null_label: int, p_uncond: float = 0.1):
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
        self.base, self.null_label, self.p_uncond = base, int(null_label), float(p_uncond)
        self.process, self.prediction = base.process, base.prediction

    def __call__(self, nets, batch: Batch, generator=None) -> Tensor:
        y = batch.cond
        B = batch.x.shape[0]
        if y is None or self.p_uncond >= 1.0:
            y = torch.full((B,), self.null_label, dtype=torch.long, device=batch.x.device)
        elif self.p_uncond > 0.0:
            g = generator if isinstance(generator, torch.Generator) or generator is None else generator[0]
            drop = torch.rand(B, generator=g).to(batch.x.device) < self.p_uncond
            y = torch.where(drop, torch.full_like(y, self.null_label), y)
        return self.base(nets, Batch(x=batch.x, mask=batch.mask, cond=y, extra=batch.extra), generator)

    def __repr__(self) -> str:
        return f"LabelDropoutLoss({self.base!r}, null_label={self.null_label}, p_uncond={self.p_uncond})"


def pca_normals(points: Tensor, k: int = 16) -> Tensor:
    """Unit normals ``[N, 3]`` of a cloud ``points [N, 3]``: the eigenvector of the smallest
    eigenvalue of the covariance of each point's ``k`` nearest neighbours (itself included),
    oriented away from the cloud's centroid (exact outward orientation needs a surface; this is
    right for star-shaped parts seen from the centre)."""
    p = points.double()
    k = max(3, min(int(k), p.shape[0]))
    idx = torch.cdist(p, p).topk(k, dim=1, largest=False).indices  # [N, k]
    nb = p[idx]
    c = nb - nb.mean(dim=1, keepdim=True)
    _, vecs = torch.linalg.eigh(c.transpose(1, 2) @ c)
    n = vecs[:, :, 0]
    sign = torch.sign(((p - p.mean(0)) * n).sum(1))
    n = n * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None]
    return (n / n.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()


class ShapesDomain(Domain):
    """3D shapes as surface point clouds ``[B, n_points, 3]``, class-conditional on the shape
    family. Config: :class:`ShapesConfig`."""

    name = "shapes"
    description = "3D shapes as surface point clouds (procedural families + real meshes), class-conditional rectified flow"
    Config = ShapesConfig
    formats = ("ply", "npz")
    prediction = "velocity"
    primary_metric = "1nna_cd"
    metric_info = {
        "1nna_cd": ("lower", "1-NN two-sample accuracy of samples vs test clouds under Chamfer distance (ideal 0.5, 1 = disjoint)"),
        "1nna_emd": ("lower", "1-NNA under EMD (exact matching on eval_emd_points points per cloud; ideal 0.5)"),
        "cov_cd": ("higher", "fraction of test clouds that are some sample's nearest (Chamfer)"),
        "mmd_cd": ("lower", "mean over test clouds of the Chamfer distance to the nearest sample"),
        "cov_emd": ("higher", "coverage under EMD"),
        "mmd_emd": ("lower", "MMD under EMD"),
        "valid_fraction": ("higher", "finite, non-degenerate clouds (extent > 1e-3, points not piled up)"),
        "param_fit_rms": ("lower", "rms distance of the points to the best-fitting member of their family (normalised units; data ~1e-4)"),
        "param_error": ("lower", "mean relative error of the fitted family parameters (only when true parameters are given)"),
    }
    teacher_sampler = ("euler", 50)
    #: the demo: 4 shapes per family, no mesh reconstruction (about 1 s per shape), 2 renders
    demo_configs = {"procedural": {"mesh": "none", "renders": 2}}
    demo_n = 28
    demo_metrics = ("1nna_cd", "1nna_emd", "cov_cd", "param_fit_rms")
    #: CPU-sized teacher training, resumable in chunks (``workbench train domain=shapes``); measured
    #: with the default network (1.27 M parameters) and 256 points on one shared CPU thread:
    #: ~0.9-1.1 s per step at batch 32; the shipped teacher is 4,000 steps (``checkpoints/README.md``)
    train_defaults = {"steps": 10000, "batch_size": 32, "lr": 3e-4, "warmup": 500, "schedule": "constant", "ema_decay": 0.999,
                      "ckpt_every": 250, "grad_clip": 1.0, "log_every": 25}

    def shipped_students(self) -> tuple:
        """The 2-step MDT-dist and consistency-distillation students of the shipped teacher
        (``checkpoints/README.md``); only for the configuration they were distilled in (the
        default families, points, data and network)."""
        from workbench.domain import ShippedStudent

        c, d = self.config, ShapesConfig()
        if (self.family_names != tuple(d.families) or self.n_points != d.n_points or c["per_family"] != d.per_family
                or c["seed"] != d.seed or c["normalize"] != d.normalize or c.get("net")):
            return ()
        return (ShippedStudent("mdt_dist_2step", CHECKPOINT_DIR / "mdt_dist_student.safetensors", 2,
                               description="MDT-dist student, 2 steps (VM + VD, the authors' objective)"),
                ShippedStudent("cd_2step", CHECKPOINT_DIR / "cd_student.safetensors", 2,
                               description="consistency-distillation student, 2 steps"))

    def __init__(self, **config):
        super().__init__(**config)
        c = self.config
        fams = c["families"]
        fams = (fams,) if isinstance(fams, str) else tuple(str(f) for f in fams)
        unknown = [f for f in fams if f not in FAMILIES and f not in REAL_MESHES]
        if not fams or unknown or len(set(fams)) != len(fams):
            known = ", ".join(PROCEDURAL_FAMILIES + tuple(REAL_MESHES))
            raise ValueError(f"families must be distinct names from {known}, got {list(fams)}")
        from .mesh import MESH_METHODS

        if c["mesh"] not in MESH_METHODS + ("none",):
            raise ValueError(f"mesh must be one of {', '.join(MESH_METHODS + ('none',))}, got {c['mesh']!r}")
        if c["mesh_format"] not in ("ply", "obj"):
            raise ValueError(f"mesh_format must be ply or obj, got {c['mesh_format']!r}")
        if c["normalize"] not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {c['normalize']!r}")
        for k, lo in (("n_points", 8), ("per_family", 1), ("pool_factor", 1), ("eval_max", 2), ("eval_emd_points", 8), ("eval_recover", 0), ("renders", 0)):
            if not isinstance(c[k], int) or isinstance(c[k], bool) or c[k] < lo:
                raise ValueError(f"{k} must be an integer >= {lo}, got {c[k]!r}")
        if not 0.0 <= float(c["p_uncond"]) <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {c['p_uncond']}")
        if not float(c["scale"]) > 0:
            raise ValueError(f"scale must be positive, got {c['scale']}")
        self.family_names = fams
        self.num_classes = len(fams)
        self.null_label = self.num_classes
        self.n_points = int(c["n_points"])
        self.scale = float(c["scale"])
        self._explicit_net = bool(c.get("net"))
        self._process = RectifiedFlow()

    # -- data ------------------------------------------------------------------------------------
    def _dataset_key(self) -> tuple:
        c = self.config
        return (self.family_names, self.n_points * int(c["pool_factor"]), int(c["per_family"]), int(c["seed"]), c["normalize"])

    def dataset(self):
        """The :class:`~domains.shapes.data.ShapeDataset` of this configuration (``pool_factor *
        n_points`` points per shape; built once per process)."""
        key = self._dataset_key()
        if key not in _DATASETS:
            from .data import ShapeDataset

            fams, pts, per, seed, norm = key
            _DATASETS[key] = ShapeDataset(fams, n_points=pts, per_family=per, seed=seed, normalize=norm)
        return _DATASETS[key]

    def split(self, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return self.dataset().subset(split)

    def clouds(self, split: str = "test") -> tuple[Tensor, Tensor]:
        """``(points [M, n_points, 3], labels [M])`` of ``split`` in normalised units (the first
        ``n_points`` of each shape's pool: a uniform surface sample)."""
        s = self.split(split)
        return s.points[:, :self.n_points].clone(), s.labels.clone()

    def _augment_cfg(self):
        from .data import Augment

        c = self.config
        s = float(c["augment_scale"])
        return Augment(rotate=bool(c["augment_rotate"]), scale=(1 - s, 1 + s) if s > 0 else None,
                       jitter=float(c["augment_jitter"]), jitter_clip=4 * float(c["augment_jitter"]))

    def train_data(self, split: str = "train"):
        """A batch sampler ``f(batch_size, generator) -> Batch(x [B, n_points, 3], cond=labels
        [B])``: shapes of ``split`` uniformly with replacement, a fresh uniform ``n_points``
        subset of each one's surface pool, the optional augmentation, times ``scale``."""
        s = self.split(split)
        pool, labels = s.points, s.labels
        if len(labels) == 0:
            raise ValueError(f"the {split} split is empty (per_family={self.config['per_family']}); raise per_family")
        n, P = self.n_points, pool.shape[1]
        aug = self._augment_cfg() if self.config["augment"] else None
        scale = self.scale

        def data(batch_size: int, generator: Optional[torch.Generator] = None) -> Batch:
            B = int(batch_size)
            idx = torch.randint(0, len(labels), (B,), generator=generator)
            x = pool[idx]
            if P > n:
                sel = torch.rand(B, P, generator=generator).argsort(dim=1)[:, :n]
                x = x.gather(1, sel[:, :, None].expand(B, n, 3))
            if aug is not None:
                from .data import augment

                g = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(2**62, ())))
                x, _ = augment(x, None, aug, g)
            return Batch(x=(x * scale).contiguous(), cond=labels[idx].clone())

        return data

    def reference_batch(self, n: Optional[int] = None, *, generator=None, split: str = "test") -> Batch:
        """``n`` real clouds of ``split`` without replacement (all if ``n`` is ``None`` or at
        least the split size; a fixed order for a fixed generator), in state units, with their
        labels and, in ``extra``, their true normalised parameters (``params``, ``param_mask``)."""
        s = self.split(split)
        pts, labels = s.points[:, :self.n_points], s.labels
        idx = torch.arange(len(labels))
        if n is not None and int(n) < len(labels):
            g = generator if isinstance(generator, torch.Generator) else torch.Generator().manual_seed(0)
            idx = torch.randperm(len(labels), generator=g)[:int(n)]
        return Batch(x=pts[idx] * self.scale, cond=labels[idx].clone(),
                     extra={"params": s.params[idx].clone(), "param_mask": s.param_mask[idx].clone()})

    # -- modelling -------------------------------------------------------------------------------
    def process(self) -> RectifiedFlow:
        return self._process

    def objective(self):
        base = DenoisingLoss(self._process, self.prediction)
        return LabelDropoutLoss(base, self.null_label, float(self.config["p_uncond"]) if self.config["conditional"] else 1.0)

    def net_kwargs(self, **overrides) -> dict:
        return {**DEFAULT_NET, **(self.config.get("net") or {}), **overrides}

    def build_backbone(self, **kwargs) -> nn.Module:
        """A fresh :class:`~workbench.model.Denoiser` (velocity prediction, ``t`` in ``[0, 1]``)
        around a :class:`~domains.shapes.nets.PointTransformer`; ``kwargs`` override its sizes
        (e.g. ``width=32, depth=1``); ``guidance=`` sets the CFG weight."""
        from .nets import PointTransformer

        guidance = float(kwargs.pop("guidance", self.config["guidance"]))
        net = PointTransformer(self.num_classes, guidance=guidance, **self.net_kwargs(**kwargs))
        return Denoiser(net, self._process, self.prediction, time_map="identity")

    def slim_backbone_kwargs(self, factor: float) -> dict:
        """``width`` divided by ``factor`` (rounded down to a multiple of ``heads``)."""
        kw = self.net_kwargs()
        h = int(kw["heads"])
        return {"width": max(h, int(int(kw["width"]) / float(factor)) // h * h)}

    def default_teacher_path(self) -> Path:
        return CHECKPOINT_DIR / "teacher.safetensors"

    def teacher_regenerate_command(self) -> str:
        return "workbench train domain=shapes"

    def check_checkpoint(self, meta: dict, path: Path) -> None:
        """The checkpoint must be a shapes teacher of the same families (the labels' meaning)."""
        if meta.get("domain", self.name) != self.name:
            raise CheckpointError(f"checkpoint {path} is a {meta.get('domain')!r} teacher, not a shapes teacher")
        fams = (meta.get("config") or {}).get("families")
        if fams is not None and tuple(fams) != self.family_names:
            raise CheckpointError(f"checkpoint {path} was trained on families {list(fams)}, not {list(self.family_names)}")

    def adopt_checkpoint_architecture(self, meta: dict, keys) -> None:
        """Unless ``net`` was set explicitly, build the network the checkpoint records."""
        if not self._explicit_net:
            self.config["net"] = dict((meta.get("config") or {}).get("net") or {})

    # -- generation ------------------------------------------------------------------------------
    def labels(self, n: int, cond: Any = None) -> Tensor:
        """Check given generation labels: one label (every sample) or ``n`` labels in
        ``0..num_classes`` (``num_classes``: unconditional); family names are accepted too."""
        if isinstance(cond, str) or (isinstance(cond, (list, tuple)) and cond and isinstance(cond[0], str)):
            names = [cond] if isinstance(cond, str) else list(cond)
            bad = [c for c in names if c not in self.family_names]
            if bad:
                raise ValueError(f"unknown families {bad}; valid: {', '.join(self.family_names)}")
            cond = [self.family_names.index(c) for c in names]
        y = torch.as_tensor(cond).long().reshape(-1)
        if y.numel() == 1:
            y = y.expand(n).clone()
        if y.shape != (n,):
            raise ValueError(f"cond must be one label or {n} labels, got shape {tuple(y.shape)}")
        if bool(((y < 0) | (y > self.null_label)).any()):
            raise ValueError(f"labels must be in 0..{self.null_label} ({self.null_label} = unconditional)")
        return y

    def generation_batch(self, n: int, *, generator=None, cond: Any = None) -> GenerationBatch:
        """Noise ``x_T [n, n_points, 3]`` and labels ``cond [n]``: drawn uniformly over the
        families (from each sample's own generator when ``generator`` is a list, before its
        noise), replaced by ``cond`` when given; the null label everywhere when not
        ``conditional``."""
        n = int(n)
        K = self.num_classes
        if generator is None or isinstance(generator, torch.Generator):
            y = torch.randint(0, K, (n,), generator=generator)
        else:
            gens = list(generator)
            if len(gens) != n:
                raise ValueError(f"got {len(gens)} per-sample generators for {n} samples")
            y = torch.cat([torch.randint(0, K, (1,), generator=g) for g in gens]) if n else torch.zeros(0, dtype=torch.long)
        if cond is not None:
            y = self.labels(n, cond)
        elif not self.config["conditional"]:
            y = torch.full((n,), self.null_label, dtype=torch.long)
        x = self._process.prior((n, self.n_points, 3), generator=generator)
        return GenerationBatch(x_T=x, cond=y, info={"families": [self.family_names[int(v)] if int(v) < K else "unconditional" for v in y]})

    # -- evaluation ------------------------------------------------------------------------------
    def decode(self, samples: Batch) -> Tensor:
        """State -> clouds in normalised units ``[B, N, 3]`` float32."""
        return torch.as_tensor(samples.x).detach().cpu().float() / self.scale

    def _known_labels(self, cond: Any, B: int) -> Optional[Tensor]:
        """The samples' family labels ``[B]`` if every one is a real family, else ``None``."""
        if cond is None:
            return None
        try:
            y = torch.as_tensor(cond).detach().cpu().long().reshape(-1)
        except (TypeError, ValueError):
            return None
        if y.numel() == 1 and B != 1:
            y = y.expand(B)
        if y.shape != (B,) or bool(((y < 0) | (y >= self.num_classes)).any()):
            return None
        return y

    @staticmethod
    def validity(points: Tensor) -> tuple[Tensor, Tensor]:
        """``(finite [B], valid [B])`` of clouds ``[B, N, 3]`` (normalised units): valid = finite,
        a bounding-box longest side above 1e-3 and at least 90% of the points with their nearest
        other point farther than 1e-6 (not collapsed onto each other)."""
        finite = torch.isfinite(points.flatten(1)).all(1)
        valid = finite.clone()
        for i in torch.nonzero(finite).flatten().tolist():
            p = points[i].double()
            ext = float((p.max(0).values - p.min(0).values).max())
            d = torch.cdist(p, p)
            d.fill_diagonal_(float("inf"))
            distinct = float((d.min(1).values > 1e-6).double().mean()) if p.shape[0] > 1 else 0.0
            valid[i] = ext > 1e-3 and distinct >= 0.9
        return finite, valid

    @staticmethod
    def _subsample(points: Tensor, k: int) -> Tensor:
        """``k`` points of each cloud by a fixed random permutation (seed 0)."""
        if points.shape[1] <= k:
            return points
        sel = torch.rand(points.shape[:2], generator=torch.Generator().manual_seed(0)).argsort(dim=1)[:, :k]
        return points.gather(1, sel[:, :, None].expand(-1, k, 3))

    @staticmethod
    def _distance_matrix(a: Tensor, b: Optional[Tensor], kind: str, batch_size: int = 64) -> Tensor:
        """``D[i, j]`` between clouds of ``a`` and ``b`` (``None``: ``a`` with itself, symmetric,
        each pair once; zero diagonal). ``kind``: ``cd`` (Chamfer, PointFlow's convention) or
        ``emd`` (exact matching)."""
        from .metrics import chamfer_distance, emd_exact

        fn = chamfer_distance if kind == "cd" else emd_exact
        sym = b is None
        b = a if sym else b
        if sym:
            ii, jj = torch.triu_indices(len(a), len(a), offset=1)
        else:
            ii, jj = (t.reshape(-1) for t in torch.meshgrid(torch.arange(len(a)), torch.arange(len(b)), indexing="ij"))
        out = torch.zeros(len(a), len(b), dtype=torch.float64)
        for s in range(0, len(ii), batch_size):
            i, j = ii[s:s + batch_size], jj[s:s + batch_size]
            out[i, j] = fn(a[i], b[j]).double()
        if sym:
            out = out + out.t()
        return out

    def _reference(self, reference: Optional[Batch]):
        """``(clouds [M, N, 3], labels [M] or None, {kind: D_rr})`` of the reference set:
        ``reference`` (its first ``eval_max`` clouds) or the test split (its distance matrices
        cached per process)."""
        kmax = int(self.config["eval_emd_points"])
        if reference is not None:
            full = self.decode(reference)
            lab = self._known_labels(reference.cond, full.shape[0])
            pts = full[: int(self.config["eval_max"])]
            lab = None if lab is None else lab[: len(pts)]
            d = {"cd": self._distance_matrix(pts, None, "cd"), "emd": self._distance_matrix(self._subsample(pts, kmax), None, "emd")}
            return pts, lab, d
        pts, lab = self.clouds("test")
        key = (self._dataset_key(), self.n_points, kmax)
        if key not in _REF_DISTANCES:
            _REF_DISTANCES[key] = {"cd": self._distance_matrix(pts, None, "cd"),
                                   "emd": self._distance_matrix(self._subsample(pts, kmax), None, "emd")}
        return pts, lab, _REF_DISTANCES[key]

    @staticmethod
    def _set_metrics(d_rr: Tensor, d_rs: Tensor, d_ss: Tensor, tag: str) -> dict:
        from .metrics import mmd_cov, one_nna

        mc = mmd_cov(d_rs.t())
        nn_ = one_nna(d_rr, d_rs, d_ss)
        return {f"1nna_{tag}": nn_["acc"], f"cov_{tag}": mc["cov"], f"mmd_{tag}": mc["mmd"]}

    def evaluate(self, samples: Batch, *, reference: Optional[Batch] = None) -> dict:
        """Metrics of the clouds in ``samples`` (state units; ``cond``: their labels, if known):

        * ``n``, ``finite_fraction``, ``valid_fraction`` (:meth:`validity`);
        * set metrics (PointFlow's definitions, :mod:`domains.shapes.metrics`) of the first
          ``eval_max`` valid samples against the test split (or ``reference``), in normalised
          units as generated (no per-cloud renormalisation): ``1nna_cd``, ``cov_cd``,
          ``mmd_cd`` (Chamfer, all points) and ``1nna_emd``, ``cov_emd``, ``mmd_emd`` (exact EMD
          on ``eval_emd_points`` points of each cloud). With known labels the reference is, per
          family, as many test clouds of that family as there are samples of it (at most all of
          them), and per-family metrics ``<metric>_<family>`` compare a family's samples with all
          its test clouds (families with at least 2 of each);
        * parameter recovery (known labels, procedural families, ``eval_recover`` samples per
          family): ``param_fit_rms`` (mean rms distance of the points to the best-fitting member of
          the family, :func:`~domains.shapes.metrics.fit_params`; per family ``param_fit_rms_<f>``)
          and, when ``samples.extra`` carries the true ``params`` (:meth:`reference_batch`),
          ``param_error`` (mean relative parameter error). Generated samples have no true
          parameters: for them the fit residual is the recovery measure.

        Metrics that cannot be computed (fewer than 2 valid samples, no labels) are left out."""
        pts = self.decode(samples)
        B = pts.shape[0]
        finite, valid = self.validity(pts)
        out: dict = {"n": float(B), "finite_fraction": float(finite.double().mean()) if B else float("nan"),
                     "valid_fraction": float(valid.double().mean()) if B else float("nan")}
        labels = self._known_labels(samples.cond, B)
        keep = torch.nonzero(valid).flatten()[: int(self.config["eval_max"])]
        S = pts[keep]
        S_lab = None if labels is None else labels[keep]
        if len(S) >= 2:
            out.update(self._set_metric_block(S, S_lab, reference))
        if labels is not None and int(self.config["eval_recover"]) > 0:
            out.update(self._recovery(pts, labels, valid, samples.extra or {}))
        return out

    def _set_metric_block(self, S: Tensor, S_lab: Optional[Tensor], reference: Optional[Batch]) -> dict:
        T, T_lab, d_tt = self._reference(reference)
        kmax = int(self.config["eval_emd_points"])
        S_emd, T_emd = self._subsample(S, kmax), self._subsample(T, kmax)
        d_ts = {"cd": self._distance_matrix(T, S, "cd"), "emd": self._distance_matrix(T_emd, S_emd, "emd")}
        d_ss = {"cd": self._distance_matrix(S, None, "cd"), "emd": self._distance_matrix(S_emd, None, "emd")}
        # the reference rows of the overall comparison
        if S_lab is not None and T_lab is not None:
            rows = []
            for f in range(self.num_classes):
                k = int((S_lab == f).sum())
                rows += torch.nonzero(T_lab == f).flatten()[:k].tolist()
            rows = torch.tensor(sorted(rows), dtype=torch.long)
        else:
            rows = torch.randperm(len(T), generator=torch.Generator().manual_seed(0))[: len(S)].sort().values
        out = {}
        if len(rows) >= 1:
            for kind in ("cd", "emd"):
                r = rows
                out.update(self._set_metrics(d_tt[kind][r][:, r], d_ts[kind][r], d_ss[kind], kind))
        if S_lab is not None and T_lab is not None:
            for f, fam in enumerate(self.family_names):
                si, ti = torch.nonzero(S_lab == f).flatten(), torch.nonzero(T_lab == f).flatten()
                if len(si) < 2 or len(ti) < 2:
                    continue
                m = self._set_metrics(d_tt["cd"][ti][:, ti], d_ts["cd"][ti][:, si], d_ss["cd"][si][:, si], "cd")
                m["1nna_emd"] = self._set_metrics(d_tt["emd"][ti][:, ti], d_ts["emd"][ti][:, si], d_ss["emd"][si][:, si], "emd")["1nna_emd"]
                out.update({f"{k}_{fam}": v for k, v in m.items()})
        return out

    def _recovery(self, pts: Tensor, labels: Tensor, valid: Tensor, extra: dict) -> dict:
        from .metrics import fit_params, param_error

        per = int(self.config["eval_recover"])
        truth = extra.get("params") if isinstance(extra, dict) else None
        rms_all, err_all, out = [], [], {}
        for f, fam in enumerate(self.family_names):
            if fam not in FAMILIES:
                continue  # a real mesh: no parameters
            idx = torch.nonzero((labels == f) & valid).flatten()[:per]
            rms_f = []
            for i in idx.tolist():
                try:
                    fit = fit_params(pts[i], fam)
                except Exception:  # noqa: BLE001 - a failed fit counts as no fit (reported by its absence)
                    continue
                rms_f.append(fit.rms)
                if truth is not None:
                    k = len(FAMILIES[fam].param_names)
                    err_all.append(param_error(fam, fit.params, torch.as_tensor(truth[i])[:k].double().numpy()))
            if rms_f:
                out[f"param_fit_rms_{fam}"] = float(np.mean(rms_f))
                rms_all += rms_f
        if rms_all:
            out["param_fit_rms"] = float(np.mean(rms_all))
            out["param_fits"] = float(len(rms_all))
        if err_all:
            out["param_error"] = float(np.mean(err_all))
        return out

    # -- files -----------------------------------------------------------------------------------
    def save_samples(self, samples: Batch, out_dir: Path) -> list[Path]:
        """Per sample: a binary PLY of its points (``sample_00000.ply``, ...; ``n_points``
        vertices in normalised units with normals estimated by PCA of the 16 nearest neighbours,
        :func:`pca_normals`; the family in a header comment), a surface mesh reconstructed from
        them (``mesh_00000.ply`` / ``.obj``; ``mesh`` config: screened Poisson or ball pivoting,
        :func:`~domains.shapes.mesh.reconstruct_mesh`) and, for the first ``renders`` samples, a
        three-view PNG render of mesh and points (``render_00000.png``); non-finite samples get
        no files. Then ``samples.npz`` (``points [B, N, 3]`` normalised units, ``labels``,
        ``families``, ``scale``). Every file is written atomically."""
        from workbench.utils import atomic_path

        from .io import write_mesh, write_ply
        from .mesh import reconstruct_mesh, render_views

        c = self.config
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        pts = self.decode(samples)
        labels = self._known_labels(samples.cond, pts.shape[0])
        paths = []
        for i in range(pts.shape[0]):
            if not bool(torch.isfinite(pts[i]).all()):
                continue
            fam = self.family_names[int(labels[i])] if labels is not None else "unconditional"
            nrm = pca_normals(pts[i])
            paths.append(write_ply(out_dir / f"sample_{i:05d}.ply", pts[i], nrm,
                                   comment=f"family {fam}; normals: PCA of 16 nearest neighbours"))
            mesh = None
            if c["mesh"] != "none":
                try:
                    mesh = reconstruct_mesh(pts[i], nrm, c["mesh"])
                except Exception as e:  # noqa: BLE001 - a degenerate cloud gets no mesh, the rest still do
                    print(f"shapes: no mesh for sample {i}: {e}")
                if mesh is not None and len(mesh[1]):
                    paths.append(write_mesh(out_dir / f"mesh_{i:05d}.{c['mesh_format']}", mesh[0], mesh[1],
                                            comment=f"family {fam}; {c['mesh']} reconstruction of sample_{i:05d}.ply"))
            if i < int(c["renders"]):
                paths.append(render_views(out_dir / f"render_{i:05d}.png", pts[i].numpy(),
                                          mesh if mesh is not None and len(mesh[1]) else None, title=f"sample {i}: {fam}"))
        npz = out_dir / "samples.npz"
        lab = (labels if labels is not None else torch.full((pts.shape[0],), -1)).numpy()
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, points=pts.numpy(), labels=lab, families=np.array(self.family_names), scale=np.array(self.scale))
        paths.append(npz)
        return paths

    def plot(self, samples: Batch, path: Path, *, max_samples: int = 8) -> Path:
        """A PNG of the first ``max_samples`` clouds from two views: front (x right, y up) and
        side (z right, y up), points shaded by depth."""
        from workbench.utils import atomic_path, new_figure

        pts = self.decode(samples)
        labels = self._known_labels(samples.cond, pts.shape[0])
        k = max(1, min(max_samples, pts.shape[0]))
        fig, axes = new_figure(2, k, figsize=(2.0 * k, 4.2), squeeze=False)
        for j in range(k):
            for r, (h, d) in enumerate(((0, 2), (2, 0))):
                ax = axes[r, j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j >= pts.shape[0]:
                    continue
                p = pts[j].numpy()
                if not np.isfinite(p).all():
                    ax.set_title("non-finite", fontsize=7)
                    continue
                ax.scatter(p[:, h], p[:, 1], c=p[:, d], s=1.5, cmap="viridis", linewidths=0)
                ax.set_aspect("equal")
                lim = max(0.55, float(np.abs(p).max()) * 1.05)
                ax.set_xlim(-lim, lim)
                ax.set_ylim(-lim, lim)
                if r == 0:
                    ax.set_title(self.family_names[int(labels[j])] if labels is not None else "unconditional", fontsize=7)
        axes[0, 0].set_ylabel("front (x, y)", fontsize=7)
        axes[1, 0].set_ylabel("side (z, y)", fontsize=7)
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        return path

    def __repr__(self) -> str:
        return f"ShapesDomain(families={list(self.family_names)}, n_points={self.n_points})"
