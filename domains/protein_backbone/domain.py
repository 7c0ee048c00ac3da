"""The ``protein_backbone`` domain: unconditional generation of protein CA backbones with a
small Proteina-like flow-matching teacher (Geffner et al. 2025, "Proteina", ICLR).

States are CA traces ``x [B, N, 3]`` in **nanometres** (Angstrom / 10, as Proteina) with a
residue ``mask [B, N]`` (1 real, padding rows zero) and zero centre of mass over the real
residues. The process is the rectified flow ``x_t = (1 - t) x0 + t eps`` with ``t = 0`` data
and ``t = 1`` noise (:class:`~workbench.processes.RectifiedFlow` with ``zero_com=True``);
Proteina's time ``tau = 1 - t``.

Config keys (``domain.*``):

* ``data``: ``globular`` (default; the real chains minus non-globular ones, plus the Debian
  ``theseus-examples`` chains when installed, drawn with family and entry weights:
  :func:`domains.proteins.data.globular_dataset`), ``real`` (all chains from installed
  packages), ``ideal`` (procedural helices, strands, hairpins, bundles) or ``mixed``
  (:func:`domains.proteins.data.dataset_chains`);
* ``root``: a user directory of PDB/mmCIF files (replaces the installed set);
* ``n_max``: crop / padding length (default 128);
* ``lengths``: list of lengths to generate (each sample draws one uniformly from its own seed);
  default: drawn from the training crop-length histogram (lengths ``min(L, n_max)``);
* ``net``: dict of :class:`~domains.protein_backbone.nets.ProteinTransformer` options, merged
  over :data:`~domains.protein_backbone.nets.DEFAULT_NET` (the shipped teacher's network, with
  the relative coordinate head). Loading a checkpoint replaces it with the checkpoint's
  architecture (:meth:`ProteinBackboneDomain.adopt_checkpoint_architecture`), so teachers and
  students saved with other sizes or the earlier linear head still load;
* ``self_conditioning``: bool (default True); ``prediction``: ``velocity`` (default; the flow
  velocity ``eps - x0``) or ``x0``. Measured on CPU (about 700 steps / 200 s each, crops of 64,
  velocity-space loss): velocity prediction gave lower x0 errors at every noise level and
  better 50-step Euler samples (CA-CA 3.53 +- 1.43 A vs 4.28 +- 2.05 A for an x0 network with
  the same loss, 4.18 +- 1.98 A for an x0 network with an x0 loss);
* ``loss_space`` (``velocity``/``x0``), ``time_sampler`` (``proteina``/``uniform``/
  ``logit_normal``), ``p_self_cond`` (0.5): the training objective
  (:class:`~domains.protein_backbone.objective.SelfCondFlowLoss`); ``local_distance_weight``
  (0): FrameDiff's auxiliary CA pair-distance loss at low noise (the objective's docstring);
* ``novelty_reference``: number of training chains novelty is measured against (default 32;
  0 disables novelty).

The shipped teacher is ``checkpoints/teacher.safetensors`` (``python -m
domains.protein_backbone.train``).

Self-conditioning at sampling time goes through the backbone's ``prepare_cond`` hook (a fresh
:class:`~domains.protein_backbone.nets.SelfCondState` per trajectory, read and updated by every
network call of matching batch size), so every sampler and distilled generator uses it
without knowing about it.

Distillation (SiD with multistep sampling and noise modulation, Proteina-SiD's published
recipe): the shipped students ``checkpoints/sid_student_k8.safetensors`` / ``_k16`` come from
``python -m domains.protein_backbone.distill_sid`` (:mod:`domains.protein_backbone.distill_sid`,
``METHOD_OPTIONS``: trained at noise scale 1, sampled at 0.45 with every noise term scaled, the
first input included); their spec records the noise scale and ``scale_initial_noise``, so
``sample_generator(dom, gen, steps=8, n=16, seed=0)`` samples as published unless
``noise_scale`` is given.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from workbench.domain import Domain, GenerationBatch
from workbench.losses import Batch
from workbench.model import Denoiser
from workbench.processes import RectifiedFlow

from .nets import DEFAULT_NET, ProteinTransformer

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
DATA_SOURCES = ("globular", "real", "ideal", "mixed")
SPLITS = ("train", "val", "test")
#: Angstrom -> domain units (nm)
SCALE = 0.1


@dataclass
class ProteinBackboneConfig:
    """Options of the protein_backbone domain (``domain.<key>=`` on the command line; the module
    docstring says more)."""

    data: str = field(default="globular", metadata={"help": "training chains: " + ", ".join(DATA_SOURCES)})
    root: Optional[str] = field(default=None, metadata={"help": "a directory of your own PDB/mmCIF files (replaces the shipped chains)"})
    n_max: int = field(default=128, metadata={"help": "padded chain length, also the longest length that can be generated"})
    lengths: Any = field(default=None, metadata={"help": "chain lengths to generate, e.g. [50,100] (null: the training length histogram)"})
    net: dict = field(default_factory=lambda: dict(DEFAULT_NET), metadata={"help": "ProteinTransformer options (merged over DEFAULT_NET), e.g. domain.net.depth=2"})
    self_conditioning: bool = field(default=True, metadata={"help": "Proteina-style self-conditioning on the previous step's estimate"})
    prediction: str = field(default="velocity", metadata={"help": "what the network outputs: velocity or x0"})
    loss_space: str = field(default="velocity", metadata={"help": "training loss space: velocity or x0"})
    time_sampler: str = field(default="proteina", metadata={"help": "training times: proteina, uniform or logit_normal"})
    p_self_cond: float = field(default=0.5, metadata={"help": "probability of a self-conditioning pass in training"})
    local_distance_weight: float = field(default=0.0, metadata={"help": "weight of FrameDiff's auxiliary CA pair-distance loss (0: off)"})
    novelty_reference: int = field(default=32, metadata={"help": "training chains novelty is measured against (0: no novelty)"})


#: the option names (fields of :class:`ProteinBackboneConfig`)
CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(ProteinBackboneConfig))


class ProteinBackboneDomain(Domain):
    """Unconditional CA-backbone generation. Config: :class:`ProteinBackboneConfig` (see also the
    module docstring)."""

    name = "protein_backbone"
    #: the network is padding-invariant (masked attention, ranks as positions): generation batches
    #: are grouped by length instead of padded to the longest (measured ~5x faster for length 50)
    bucket_lengths = True
    description = "protein CA backbones (nm, zero CoM, masked) with a small Proteina-like flow-matching teacher"
    Config = ProteinBackboneConfig
    formats = ("pdb", "cif")
    has_exact_model = False
    primary_metric = "ca_ca_outlier_fraction"
    metric_info = {
        "ca_ca_outlier_fraction": ("lower", "consecutive CA-CA distances outside 3.8 +- 0.2 A (natives ~0.2%)"),
        "dssp_helix": ("higher", "residues in DSSP helices (mkdssp, else pydssp, on ideal N/CA/C/O rebuilt from CA; natives ~0.3)"),
        "dssp_strand": ("higher", "residues in DSSP strands (natives ~0.2-0.3)"),
        "handedness_ratio": ("higher", "right- / left-handed helical CA torsions (natives ~12-40; a mirror-blind model ~1)"),
        "rg_ratio_mean": ("target 0.8-1.4", "radius of gyration / (2.2 L^0.38 A): compactness (natives ~1.1)"),
        "clashes_mean": ("lower", "non-bonded CA pairs closer than 3 A, per backbone"),
    }
    demo_n = 8
    #: novelty (TM-align of every sample against 32 training chains) is left out of the demo for time
    demo_configs = {"globular": {"novelty_reference": 0}}
    demo_fast_samplers = ("dpm_solver_pp_2m",)
    #: the teacher's default sampler: Proteina's low-temperature SDE (noise scaling gamma 0.45, the
    #: gamma its SiD students are sampled with) at Proteina's 400 steps
    teacher_sampler = ("sde", 400, {"temperature": 0.45, "noise_scale": 1.0})
    demo_metrics = ("ca_ca_outlier_fraction", "dssp_helix", "dssp_strand", "handedness_ratio", "rg_ratio_mean")

    def __init__(self, **config):
        super().__init__(**config)
        if self.config["data"] not in DATA_SOURCES:
            raise ValueError(f"unknown protein_backbone data {self.config['data']!r}; valid: {', '.join(DATA_SOURCES)}")
        if self.config["prediction"] not in ("x0", "velocity"):
            raise ValueError(f"unknown protein_backbone prediction {self.config['prediction']!r}; valid: x0, velocity")
        n_max = self.config["n_max"]
        if not isinstance(n_max, int) or isinstance(n_max, bool) or n_max < 2:
            raise ValueError(f"n_max must be an integer >= 2, got {n_max!r}")
        lengths = self.config.get("lengths")
        if lengths is not None:
            lengths = [lengths] if isinstance(lengths, int) else list(lengths)
            if not lengths or any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 2 for v in lengths):
                raise ValueError(f"lengths must be a non-empty list of integers >= 2, got {self.config['lengths']!r}")
            self.config["lengths"] = [int(v) for v in lengths]
            if max(self.config["lengths"]) > n_max:
                raise ValueError(f"lengths must be <= n_max={n_max} (the longest chain the model is trained and padded for), "
                                 f"got {self.config['lengths']}")
        net = self.config.get("net") or {}
        if not isinstance(net, dict):
            raise ValueError(f"net must be a dict of ProteinTransformer sizes, got {type(net).__name__}")
        # the full architecture goes into every checkpoint header written from this config, so a
        # later change of DEFAULT_NET cannot make today's checkpoints unloadable
        self.config["net"] = {**DEFAULT_NET, **net}
        self._process = RectifiedFlow(zero_com=True)
        self._chains: dict = {}
        self._hist = None

    @property
    def prediction(self) -> str:  # type: ignore[override]
        return self.config["prediction"]

    @property
    def n_max(self) -> int:
        return int(self.config["n_max"])

    @property
    def train_defaults(self) -> dict:  # type: ignore[override]
        """CPU-sized teacher training, one stage: 2700 steps of batch 8 crops of ``n_max``, AdamW
        5e-4, cosine (about 18 min on one shared CPU core). The shipped teacher is six
        stages, 29,700 steps in all (``checkpoints/README.md``)."""
        return {"steps": 2700, "batch_size": 8, "lr": 5e-4, "warmup": 200, "schedule": "cosine", "ema_decay": 0.999,
                "ckpt_every": 250, "grad_clip": 1.0, "log_every": 25}

    def shipped_students(self) -> tuple:
        """The SiD students (Proteina-SiD recipe, ``checkpoints/README.md``), 8 and 16 steps,
        sampled with the noise scale their checkpoints record."""
        from workbench.domain import ShippedStudent

        if self.config.get("root") or self.config["data"] != "globular":
            return ()  # distilled from the shipped teacher of the default data only
        return tuple(ShippedStudent(f"sid_{k}step", CHECKPOINT_DIR / f"sid_student_k{k}.safetensors", k,
                                    description=f"SiD student, {k} steps (Proteina-SiD recipe)") for k in (8, 16))

    # -- modelling ---------------------------------------------------------------------------
    def process(self) -> RectifiedFlow:
        return self._process

    def net_config(self, **overrides) -> dict:
        """The backbone's kwargs: :data:`DEFAULT_NET` < ``config["net"]`` < ``overrides``, with
        the domain's ``self_conditioning`` and ``prediction``."""
        cfg = {**DEFAULT_NET, **(self.config.get("net") or {}),
               "self_conditioning": bool(self.config["self_conditioning"]), "prediction": self.prediction}
        cfg.update(overrides)
        return cfg

    def build_backbone(self, **kwargs) -> nn.Module:
        """A fresh :class:`~domains.protein_backbone.nets.ProteinTransformer` (kwargs override
        its sizes) in a :class:`~workbench.model.Denoiser` (process time as input)."""
        net = ProteinTransformer(**self.net_config(**kwargs))
        return Denoiser(net, self._process, net.prediction, time_map="identity")

    def objective(self):
        from .objective import SelfCondFlowLoss

        p_sc = self.config.get("p_self_cond", 0.5) if self.config["self_conditioning"] else 0.0
        return SelfCondFlowLoss(self._process, self.prediction, loss_space=self.config.get("loss_space", "velocity"),
                                time_sampler=self.config.get("time_sampler", "proteina"), p_self_cond=p_sc,
                                local_distance_weight=float(self.config.get("local_distance_weight", 0.0)))

    def default_teacher_path(self) -> Path:
        return CHECKPOINT_DIR / "teacher.safetensors"

    def teacher_regenerate_command(self) -> str:
        return "python -m domains.protein_backbone.train"

    def adopt_checkpoint_architecture(self, meta: dict, keys) -> None:
        """Build the checkpoint's network from now on: its header's ``config["net"]``,
        ``self_conditioning`` and ``prediction`` replace this domain's. Headers written before
        ``coord_head`` existed (the linear-head teacher of earlier releases) get it from the
        weights: ``relative`` when they hold ``rel_head`` parameters, else ``linear``."""
        cfg = meta.get("config")
        cfg = cfg if isinstance(cfg, dict) else {}
        net = dict(cfg.get("net") or {})
        if "coord_head" not in net:
            net["coord_head"] = "relative" if any(".rel_head." in k or k.startswith("rel_head.") for k in keys) else "linear"
        if "chiral" not in net:  # headers written before the chiral features existed
            net["chiral"] = any(".embed_local." in k or k.startswith("embed_local.") for k in keys)
        self.config["net"] = {**DEFAULT_NET, **net}
        for k in ("self_conditioning", "prediction"):
            if k in cfg:
                self.config[k] = cfg[k]

    # -- data --------------------------------------------------------------------------------
    def chains(self, split: str = "train") -> list:
        """The :class:`~domains.proteins.chain.Chain` list of ``split`` (memoised)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        if split not in self._chains:
            from domains.proteins.data import dataset_chains

            self._chains[split] = dataset_chains(split, source=self.config["data"], root=self.config.get("root"))
            if not self._chains[split]:
                raise ValueError(f"protein_backbone: no {split} chains for data={self.config['data']!r}"
                                 f"{' root=' + str(self.config.get('root')) if self.config.get('root') else ''}")
        return self._chains[split]

    def train_data(self, split: str = "train"):
        """:class:`domains.proteins.data.CropSampler` over ``split`` (random crops of
        ``n_max``, random rotations, Angstrom -> nm)."""
        from domains.proteins.data import CropSampler

        chains = self.chains(split)
        weights = [c.meta.get("sample_weight", 1.0) for c in chains] if self.config["data"] == "globular" else None
        return CropSampler(chains, n_max=self.n_max, scale=SCALE, weights=weights)

    def length_histogram(self) -> tuple[Tensor, Tensor]:
        """``(lengths [K] long, probabilities [K] float64)`` of training crop lengths
        ``min(L, n_max)``."""
        if self._hist is None:
            counts: dict = {}
            for c in self.chains("train"):
                n = min(len(c), self.n_max)
                counts[n] = counts.get(n, 0) + 1
            ks = sorted(counts)
            w = torch.tensor([counts[k] for k in ks], dtype=torch.float64)
            self._hist = (torch.tensor(ks, dtype=torch.long), w / w.sum())
        return self._hist

    def draw_lengths(self, n: int, generator=None) -> Tensor:
        """``[n]`` lengths: from ``config["lengths"]`` (uniform) or the training histogram.
        ``generator``: ``None``, one generator, or ``n`` per-sample generators (length ``i``
        then depends only on ``generator[i]``)."""
        if self.config.get("lengths"):
            sizes = torch.tensor(self.config["lengths"], dtype=torch.long)
            probs = torch.full((len(sizes),), 1.0 / len(sizes), dtype=torch.float64)
        else:
            sizes, probs = self.length_histogram()
        if generator is None or isinstance(generator, torch.Generator):
            return sizes[torch.multinomial(probs, n, replacement=True, generator=generator)]
        gens = list(generator)
        if len(gens) != n:
            raise ValueError(f"got {len(gens)} per-sample generators for {n} samples")
        return sizes[torch.cat([torch.multinomial(probs, 1, generator=g) for g in gens])]

    def generation_size(self) -> int:
        """Padded length ``N`` of generation batches: ``max(n_max, max(lengths))``."""
        return max([self.n_max] + list(self.config.get("lengths") or []))

    def generation_batch(self, n: int, *, generator=None, cond: Any = None) -> GenerationBatch:
        """Zero-CoM masked prior noise ``x_T [n, N, 3]`` (``N`` = :meth:`generation_size`) and
        ``mask [n, N]``: each sample's length is drawn first, then its noise, from its own
        generator."""
        if cond is not None:
            raise ValueError("protein_backbone is unconditional; cond must be None")
        sizes = self.draw_lengths(int(n), generator)
        N = self.generation_size()
        mask = (torch.arange(N)[None, :] < sizes[:, None]).float()
        x = self._process.prior((int(n), N, 3), generator=generator, mask=mask)
        return GenerationBatch(x_T=x, mask=mask, info={"lengths": sizes})

    # -- evaluation and I/O -------------------------------------------------------------------
    @staticmethod
    def to_chains(samples: Batch, prefix: str = "sample") -> list:
        """Samples (nm) -> CA-only :class:`~domains.proteins.chain.Chain` list in Angstrom
        (sequence ``"X" * L``: a backbone has no sequence)."""
        from domains.proteins.chain import Chain

        x = torch.as_tensor(samples.x).detach().cpu().double()
        mask = samples.mask if samples.mask is not None else torch.ones(x.shape[:2])
        mask = torch.as_tensor(mask).detach().cpu() > 0.5
        out = []
        for i in range(x.shape[0]):
            ca = (x[i][mask[i]] / SCALE).numpy().astype(np.float32)
            out.append(Chain(f"{prefix}_{i:05d}", "X" * len(ca), ca, source="protein_backbone"))
        return out

    def evaluate(self, samples: Batch, *, reference: Optional[Batch] = None) -> dict:
        """:func:`domains.proteins.metrics.backbone_metrics` of the samples (CA-CA bond stats
        in Angstrom, clashes, P-SEA SSE fractions, TM-score diversity, lengths) plus novelty
        (max TM-score to ``reference`` samples, default: the first ``novelty_reference``
        training chains). Non-finite samples are dropped and counted."""
        from domains.proteins.metrics import backbone_metrics

        x = torch.as_tensor(samples.x)
        finite = torch.isfinite(x.flatten(1)).all(1)
        out: dict = {}
        if not bool(finite.all()):
            out["nonfinite_fraction"] = float(1.0 - finite.double().mean())
            samples = samples.index(torch.nonzero(finite).flatten())
        chains = self.to_chains(samples)
        if reference is not None:
            ref = self.to_chains(reference, prefix="reference")
        else:
            k = int(self.config.get("novelty_reference", 32))
            ref = self.chains("train")[:k] if k > 0 else None
        out.update({k: float(v) for k, v in backbone_metrics(chains, reference=ref).items()})
        return out

    def save_samples(self, samples: Batch, out_dir: Path) -> list[Path]:
        """Per sample: CA-only ``sample_XXXXX.pdb`` and ``.cif``, plus a full backbone with N, C,
        O placed from ideal geometry (``sample_XXXXX_backbone.pdb`` / ``.cif``, labelled as
        reconstructed); and ``samples.npz`` (``x`` nm ``[B, N, 3]``, ``mask`` ``[B, N]``)."""
        from domains.proteins.io import write_chain
        from workbench.utils import atomic_path

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for ch in self.to_chains(samples):
            for fmt in self.formats:
                paths.append(Path(write_chain(ch, out_dir / f"{ch.name}.{fmt}")))
                paths.append(Path(write_chain(ch, out_dir / f"{ch.name}_backbone.{fmt}", reconstruct=True)))
        npz = out_dir / "samples.npz"
        x = torch.as_tensor(samples.x).detach().cpu().float().numpy()
        mask = (samples.mask if samples.mask is not None else torch.ones(x.shape[:2]))
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, x=x, mask=torch.as_tensor(mask).detach().cpu().float().numpy(), units=np.array("nm"))
        paths.append(npz)
        return paths

    def plot(self, samples: Batch, path: Path, *, max_samples: int = 4) -> Path:
        """A PNG: for the first ``max_samples`` samples, the CA trace projected on its two
        principal axes (colour = residue index) above its CA contact map (``d < 8 A``)."""
        from workbench.utils import new_figure

        from workbench.utils import atomic_path

        chains = self.to_chains(samples)[:max_samples]
        k = max(1, len(chains))
        fig, axes = new_figure(2, k, figsize=(3 * k, 6), squeeze=False)
        for j, ch in enumerate(chains):
            ca = ch.ca.astype(np.float64)
            ok = np.isfinite(ca).all(1)
            ca = ca[ok] if ok.any() else np.zeros((1, 3))
            c = ca - ca.mean(0)
            _, _, vt = np.linalg.svd(c, full_matrices=False) if len(c) > 1 else (None, None, np.eye(3))
            p = c @ vt[:2].T if vt.shape[0] >= 2 else np.c_[c[:, 0], c[:, 1]]
            ax = axes[0, j]
            ax.plot(p[:, 0], p[:, 1], "-", color="0.6", lw=0.8)
            ax.scatter(p[:, 0], p[:, 1], c=np.arange(len(p)), cmap="viridis", s=8)
            ax.set_aspect("equal")
            ax.set_title(f"{ch.name} (L={len(ch)})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            d = np.linalg.norm(ca[:, None] - ca[None], axis=-1)
            axes[1, j].imshow(d < 8.0, cmap="Greys", interpolation="nearest")
            axes[1, j].set_title("CA contacts < 8 A", fontsize=8)
        fig.subplots_adjust(left=0.02, right=0.98, top=0.93, bottom=0.03, hspace=0.25, wspace=0.1)
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        return path

    def __repr__(self) -> str:
        return f"ProteinBackboneDomain(data={self.config['data']!r}, n_max={self.n_max})"
