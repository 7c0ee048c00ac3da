"""Domain plugins: the interface, the registry (entry-point group ``workbench.domains``)
and the conformance check every registered domain must pass.

A domain specialises the core for one kind of data. It provides data (as a pure batch
sampler), a backbone, its shipped teacher, generation batches (sizes, masks, conditions),
metrics, writers in the field's formats and a plot. The core never imports ``domains``;
plugins are found through entry points, so a third-party package registers a domain by
adding to its ``pyproject.toml``::

    [project.entry-points."workbench.domains"]
    my_domain = "my_package.my_module:MyDomain"
"""
from __future__ import annotations

import math
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .losses import Batch
from .processes import GaussianProcess

ENTRY_POINT_GROUP = "workbench.domains"


@dataclass
class GenerationBatch:
    """What a sampler needs to start: noise ``x_T`` ``[B, ...]`` (already scaled and
    projected), an optional ``mask`` ``[B, N]`` and ``cond`` (e.g. labels ``[B]``)."""

    x_T: Tensor
    mask: Optional[Tensor] = None
    cond: Any = None
    info: dict = field(default_factory=dict)


class Domain(ABC):
    """Base class of a domain plugin. Subclasses set ``name`` and implement the abstract
    methods; ``config`` holds domain options (from hydra ``domain.*`` keys)."""

    name: str = ""
    description: str = ""
    #: formats ``save_samples`` writes, e.g. ``("png",)`` or ``("pdb", "cif")``
    formats: tuple = ()
    #: True if the domain has an exact (closed-form) denoiser for ground-truth metrics
    has_exact_model: bool = False
    #: parameterization of the domain's teacher (what :meth:`build_backbone` predicts)
    prediction: str = "epsilon"
    #: :class:`workbench.training.TrainConfig` overrides for training the teacher
    train_defaults: dict = {}

    def __init__(self, **config):
        self.config = dict(config)

    # -- modelling ---------------------------------------------------------------------------
    @abstractmethod
    def process(self) -> GaussianProcess:
        """The process the domain's teacher is trained for."""

    @abstractmethod
    def build_backbone(self, **kwargs) -> nn.Module:
        """A fresh (untrained) denoiser (a :class:`workbench.model.Denoiser`)."""

    @abstractmethod
    def load_teacher(self, path: Optional[str] = None, *, device="cpu") -> nn.Module:
        """The shipped (or user-given ``path``) teacher as a :class:`workbench.model.Denoiser`
        in eval mode."""

    @abstractmethod
    def train_data(self, split: str = "train"):
        """A pure batch sampler ``f(batch_size, generator) -> Batch`` over ``split``."""

    def adopt_checkpoint_architecture(self, meta: dict, keys) -> None:
        """Make :meth:`build_backbone` build the architecture a checkpoint was saved with.

        Called with the checkpoint's header ``meta`` (its ``"config"`` is the domain config it
        was trained with) and its state-dict ``keys`` before the network is built, by
        :meth:`load_teacher` implementations and :func:`workbench.runner.load_generator`, so a
        checkpoint trained with another (e.g. an older default) architecture still loads, and
        students distilled from it (``domain.build_backbone()``) match it. Default: no-op
        (domains with one architecture)."""

    def default_teacher_path(self) -> Optional[Path]:
        """Path of the shipped teacher checkpoint for the current config (or ``None``)."""
        return None

    def objective(self):
        """The teacher's training objective (default: :class:`~workbench.losses.DenoisingLoss`
        in the domain's process and parameterization)."""
        from .losses import DenoisingLoss

        return DenoisingLoss(self.process(), self.prediction)

    def exact_model(self):
        """The exact denoiser (``model(x, t, **kw)`` in x0 parameterization), if any."""
        return None

    # -- generation ---------------------------------------------------------------------------
    @abstractmethod
    def generation_batch(self, n: int, *, generator=None, cond: Any = None) -> GenerationBatch:
        """Initial noise for ``n`` samples (sizes drawn from the data's size histogram for
        variable-size domains). ``generator`` may be a list of per-sample generators."""

    # -- evaluation and I/O ------------------------------------------------------------------
    @abstractmethod
    def evaluate(self, samples: Batch, *, reference: Optional[Batch] = None) -> dict:
        """Domain metrics of ``samples`` as a flat ``{name: float}`` dict."""

    @abstractmethod
    def save_samples(self, samples: Batch, out_dir: Path) -> list[Path]:
        """Write samples in the domain's formats (atomically) and return the paths."""

    @abstractmethod
    def plot(self, samples: Batch, path: Path) -> Path:
        """A PNG overview of ``samples``."""

    def reward(self, samples: Batch) -> Tensor:
        """A differentiable per-sample reward ``[B]`` of clean samples (higher is better), used
        by reward fine-tuning (Flash-DMD) and reward-guided sampling. Domains without one raise
        ``NotImplementedError``; report the domain's true metrics beside any reward optimised."""
        raise NotImplementedError(f"domain {self.name!r} defines no reward; reward fine-tuning needs Domain.reward")

    def reference_batch(self, n: int, *, generator=None, split: str = "test") -> Batch:
        """``n`` real samples for metrics (default: from :meth:`train_data`)."""
        g = generator if isinstance(generator, torch.Generator) else torch.Generator().manual_seed(0)
        return self.train_data(split)(n, g)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# -- registry ---------------------------------------------------------------------------------
_EXTRA: dict[str, type] = {}


def register_domain(name: str, cls: type) -> None:
    """Register a domain class at run time (notebooks); packages use entry points."""
    _EXTRA[name] = cls


def available_domains() -> dict[str, Any]:
    """``{name: entry point or class}`` of every installed domain."""
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    found.update(_EXTRA)
    return dict(sorted(found.items()))


def get_domain(name: str, **config) -> Domain:
    """Instantiate the domain registered as ``name``."""
    found = available_domains()
    if name not in found:
        raise ValueError(f"unknown domain {name!r}; valid: {', '.join(found) or '(none installed)'}")
    obj = found[name]
    cls = obj if isinstance(obj, type) else obj.load()
    return cls(**config)


# -- conformance ----------------------------------------------------------------------------
class ConformanceError(AssertionError):
    pass


def check_domain(domain: Domain, *, n: int = 4, steps: int = 3, tmpdir: Optional[Path] = None, teacher: bool = True) -> dict:
    """Check that ``domain`` honours the plugin contract; raise :class:`ConformanceError`
    naming the first violation. Returns a small report dict.

    Checks: a Gaussian process; a batch sampler returning a :class:`Batch` with a matching
    mask; a generation batch whose noise already satisfies the constraints (zero padding,
    zero CoM); the backbone and the teacher map ``[B, ...] -> [B, ...]`` with finite
    outputs; a 3-step sample keeps the constraints; ``evaluate`` returns finite floats;
    ``save_samples`` writes non-empty files of the declared formats; ``plot`` writes a PNG;
    sample ``i`` depends only on its own seed.
    """
    from . import api
    from .utils import per_sample_generators

    def need(cond, msg):
        if not cond:
            raise ConformanceError(f"domain {domain.name!r}: {msg}")

    need(isinstance(domain.name, str) and domain.name, "has no name")
    proc = domain.process()
    need(isinstance(proc, GaussianProcess), f"process() must return a GaussianProcess, got {type(proc).__name__}")
    g = torch.Generator().manual_seed(0)
    batch = domain.train_data("train")(n, g)
    need(isinstance(batch, Batch) and batch.x.shape[0] == n, "train_data(split)(n, generator) must return a Batch of n states")
    if batch.mask is not None:
        need(batch.mask.shape == batch.x.shape[:2], "Batch.mask must be [B, N] matching x [B, N, ...]")
        need(torch.equal(proc.project(batch.x, batch.mask), batch.x) or torch.allclose(proc.project(batch.x, batch.mask), batch.x, atol=1e-5),
             "training data violate the process constraints (padding / centre of mass)")
    gb = domain.generation_batch(n, generator=per_sample_generators(0, n))
    need(isinstance(gb, GenerationBatch) and gb.x_T.shape[0] == n, "generation_batch(n) must return a GenerationBatch of n")
    need(torch.allclose(proc.project(gb.x_T, gb.mask), gb.x_T, atol=1e-5), "generation noise violates the constraints")
    net = domain.load_teacher() if teacher else domain.build_backbone()
    t = torch.rand(n)
    with torch.no_grad():
        out = net(gb.x_T, t, mask=gb.mask, cond=gb.cond)
    need(out.shape == gb.x_T.shape, f"teacher output shape {tuple(out.shape)} != input shape {tuple(gb.x_T.shape)}")
    need(bool(torch.isfinite(out).all()), "teacher output is not finite")
    pred = getattr(net, "prediction", None)
    need(pred is not None, "teacher must declare .prediction")
    x = api.sample(net, proc, gb.x_T, sampler="euler", steps=steps, prediction=pred, mask=gb.mask, cond=gb.cond)
    need(torch.allclose(proc.project(x, gb.mask), x, atol=1e-5), "samples violate the constraints after sampling")
    # sample i depends only on seed i
    gb2 = domain.generation_batch(2, generator=per_sample_generators(0, 2))
    need(torch.allclose(gb2.x_T, gb.x_T[:2]), "generation noise of sample i must depend only on its own seed")
    samples = Batch(x=x, mask=gb.mask, cond=gb.cond)
    metrics = domain.evaluate(samples)
    need(isinstance(metrics, dict) and metrics, "evaluate must return a non-empty dict")
    for k, v in metrics.items():
        need(isinstance(v, (int, float)) and not isinstance(v, bool), f"metric {k!r} must be a float, got {type(v).__name__}")
        need(math.isfinite(v) or math.isnan(v), f"metric {k!r} is infinite")
    with tempfile.TemporaryDirectory() as td:
        d = Path(tmpdir or td)
        paths = domain.save_samples(samples, d / "samples")
        need(paths and all(Path(p).exists() and Path(p).stat().st_size > 0 for p in paths), "save_samples must write non-empty files")
        for fmt in domain.formats:
            need(any(str(p).endswith("." + fmt) for p in paths), f"save_samples wrote no .{fmt} file")
        png = domain.plot(samples, d / "plot.png")
        need(Path(png).exists() and Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "plot must write a PNG")
    return {"domain": domain.name, "metrics": sorted(metrics), "files": len(paths)}


def train_teacher(domain: Domain, cfg=None, out_dir=None, *, resume: bool = True, init=None, init_strict: bool = True):
    """Train the domain's teacher with the shared loop and export ``teacher.safetensors``
    (EMA weights; metadata records the domain name and config). Returns the
    :class:`~workbench.training.TrainResult`; the weights land in ``out_dir``.

    ``init``: a safetensors file (e.g. the shipped teacher) the network starts from, for a
    later training stage (fine-tuning, more steps on other data); loaded with
    :func:`~workbench.checkpoint.load_into` (strict: keys and shapes must match; with
    ``init_strict=False`` modules the checkpoint lacks keep their fresh initialisation, e.g. a
    zero-initialised head added to a trained network). A resumed run
    (``out_dir/state.pt``) takes its weights from the training state instead."""
    from dataclasses import replace

    from .checkpoint import load_into, save_weights
    from .training import TrainConfig, train

    base = TrainConfig(**domain.train_defaults)
    cfg = base if cfg is None else (replace(base, **cfg) if isinstance(cfg, dict) else cfg)
    meta = {"domain": domain.name, "config": domain.config, "prediction": domain.prediction}
    net = domain.build_backbone()
    if init is not None:
        load_into(net, init, strict=init_strict)
        meta["init"] = str(init)
    res = train(domain.objective(), {"model": net}, domain.train_data("train"), cfg,
                out_dir=out_dir, resume=resume, meta=meta)
    if out_dir is not None:
        save_weights(Path(out_dir) / "teacher.safetensors", res.ema["model"], {**meta, "steps": res.step})
    return res
