"""Domain plugins: the interface, the registry (entry-point group ``workbench.domains``)
and the conformance check every registered domain must pass.

A domain specialises the core for one kind of data. It provides data (as a pure batch
sampler), a backbone, its shipped teacher, generation batches (sizes, masks, conditions),
metrics, writers in the field's formats and a plot. The core never imports ``domains``;
plugins are found through entry points, so a third-party package registers a domain by
adding to its ``pyproject.toml``::

    [project.entry-points."workbench.domains"]
    my_domain = "my_package.my_module:MyDomain"

The contract (``docs/design.md``, "The domain contract"): the abstract methods below; the
options as a ``Config`` dataclass (the CLI registers it as ``domain=my_domain``, no YAML
needed); :meth:`Domain.load_teacher` is a template method a domain customises through hooks
(:meth:`~Domain.default_teacher_path`, :meth:`~Domain.check_checkpoint`,
:meth:`~Domain.adopt_checkpoint_architecture`); optional capabilities
(:data:`OPTIONAL_CAPABILITIES`) raise "domain X does not support Y" until a domain implements
them, and :meth:`Domain.supports` tells which it has.
"""
from __future__ import annotations

import dataclasses
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
#: optional :class:`Domain` methods (capabilities) that distillation methods may require
#: (``workbench.distill.api.Method.requires`` names them); the base versions raise
#: ``NotImplementedError("domain X does not support ...")``
OPTIONAL_CAPABILITIES = ("build_two_time_backbone", "slim_backbone_kwargs", "reward")


@dataclass(frozen=True)
class ShippedStudent:
    """A distilled few-step generator a domain ships (``workbench demo`` runs it next to the
    teacher). ``name``: a short label (also the demo's folder name); ``path``: its
    ``.safetensors``; ``steps``: the steps it was distilled for; ``options``: sampling options
    (e.g. ``{"noise_scale": 0.45}``; empty: those recorded in the checkpoint)."""

    name: str
    path: Path
    steps: int
    options: dict = field(default_factory=dict)
    description: str = ""


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
    methods; ``config`` holds domain options (from hydra ``domain.*`` keys).

    ``Config``: optional dataclass of the options with their defaults. When set,
    ``__init__`` fills the defaults and rejects unknown keys, and the CLI registers it in
    hydra's ConfigStore as ``domain=<name>`` (type-checked ``domain.<key>=`` overrides)."""

    name: str = ""
    description: str = ""
    #: dataclass of the domain's options (field defaults = option defaults), or ``None``
    Config: Optional[type] = None
    #: formats ``save_samples`` writes, e.g. ``("png",)`` or ``("pdb", "cif")``
    formats: tuple = ()
    #: True if the domain has an exact (closed-form) denoiser for ground-truth metrics
    has_exact_model: bool = False
    #: parameterization of the domain's teacher (what :meth:`build_backbone` predicts)
    prediction: str = "epsilon"
    #: :class:`workbench.training.TrainConfig` overrides for training the teacher
    train_defaults: dict = {}
    #: the metric benchmarks tabulate and rank by (a key of :meth:`evaluate`; lower is better
    #: unless the benchmark says otherwise); ``""``: none declared
    primary_metric: str = ""
    #: ``{metric: (direction, definition)}`` of the metrics reports show (direction ``"lower"``
    #: or ``"higher"`` is better); metrics without an entry are shown without one
    metric_info: dict = {}
    #: the teacher's usual sampler: ``(sampler, steps)`` or ``(sampler, steps, options)``; the
    #: many-step row students are compared with (``workbench demo``, the domain's benchmarks)
    teacher_sampler: tuple = ("euler", 50)
    #: the sampler ``generate`` / ``workbench generate`` use when none is named (``sampler=null``)
    default_sampler: str = "dpm_solver_pp_2m"
    #: ``workbench demo``: the domain configs it runs (``{short name: config}``; empty: the
    #: domain's default config), samples per run, the training-free samplers tried at each
    #: student's NFE, and the metrics its table shows (default: :attr:`primary_metric`)
    demo_configs: dict = {}
    demo_n: int = 64
    #: non-empty: ``workbench demo`` leaves the domain out and prints this reason
    demo_skip_reason: str = ""
    demo_fast_samplers: tuple = ("dpm_solver_pp_2m", "unipc_3")
    #: NFEs of the training-free rows when the domain ships no student
    demo_fast_steps: tuple = (5,)
    demo_metrics: tuple = ()
    #: generation batches whose masks have varying lengths are sampled in groups of similar
    #: length, each padded to its own longest (the model's output on the valid positions must not
    #: depend on the padding: masked attention, no fixed-size layers); deterministic samplers only
    bucket_lengths: bool = False
    #: config keys that are only the domain's own sampler defaults (left out of ``generate``'s
    #: record, where the sampler that ran is recorded instead)
    sampling_config_keys: tuple = ()

    def __init__(self, **config):
        if self.Config is not None:
            valid = [f.name for f in dataclasses.fields(self.Config)]
            unknown = sorted(set(config) - set(valid))
            if unknown:
                raise ValueError(f"unknown {self.name} domain option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
            config = {**dataclasses.asdict(self.Config()), **config}
        self.config = dict(config)

    def shipped_students(self) -> tuple:
        """The :class:`ShippedStudent` generators shipped for this domain configuration (empty:
        none); ``workbench demo`` compares them with the teacher."""
        return ()

    # -- modelling ---------------------------------------------------------------------------
    @abstractmethod
    def process(self) -> GaussianProcess:
        """The process the domain's teacher is trained for."""

    @abstractmethod
    def build_backbone(self, **kwargs) -> nn.Module:
        """A fresh (untrained) denoiser (a :class:`workbench.model.Denoiser`)."""

    @abstractmethod
    def train_data(self, split: str = "train"):
        """A pure batch sampler ``f(batch_size, generator) -> Batch`` over ``split``."""

    def load_teacher(self, path: Optional[str] = None, *, device="cpu") -> nn.Module:
        """The shipped (or user-given ``path``) teacher as a :class:`workbench.model.Denoiser`
        in eval mode. A template method: resolve the path (:meth:`default_teacher_path`), read
        it safely (:func:`~workbench.checkpoint.load_weights`), :meth:`check_checkpoint` its
        header, :meth:`adopt_checkpoint_architecture`, :meth:`build_backbone`, load the
        weights strictly. Failures raise :class:`~workbench.checkpoint.CheckpointError`."""
        from .checkpoint import CheckpointError, load_state_into, load_weights

        p = Path(path) if path is not None else self.default_teacher_path()
        hint = self.teacher_regenerate_command()
        if p is None:
            raise CheckpointError(f"domain {self.name!r} ships no teacher; pass teacher=PATH (e.g. from 'workbench train domain={self.name}')")
        if not p.exists():
            raise CheckpointError(f"checkpoint not found: {p}" + (f"; regenerate it with `{hint}`" if hint else ""))
        state, meta = load_weights(p, device=device)
        meta = meta if isinstance(meta, dict) else {}
        self.check_checkpoint(meta, p)
        self.adopt_checkpoint_architecture(meta, state.keys())
        net = self.build_backbone()
        load_state_into(net, state, p)
        return net.to(device).eval()

    def default_teacher_path(self) -> Optional[Path]:
        """Hook of :meth:`load_teacher`: the shipped teacher checkpoint for the current config
        (``None``: the domain ships none, ``teacher=PATH`` is required)."""
        return None

    def teacher_regenerate_command(self) -> Optional[str]:
        """Hook of :meth:`load_teacher`: the command that rebuilds a missing shipped teacher
        (named in the error), or ``None``."""
        return None

    def check_checkpoint(self, meta: dict, path: Path) -> None:
        """Hook of :meth:`load_teacher`: raise :class:`~workbench.checkpoint.CheckpointError` if
        the header ``meta`` shows the checkpoint at ``path`` is not for this domain / config.
        Default: its ``"domain"`` (when recorded) must be this domain's name."""
        from .checkpoint import CheckpointError

        dom = meta.get("domain")
        if dom is not None and dom != self.name:
            raise CheckpointError(f"checkpoint {path} was trained for domain {dom!r}, not {self.name!r}")

    def adopt_checkpoint_architecture(self, meta: dict, keys) -> None:
        """Hook of :meth:`load_teacher`: make :meth:`build_backbone` build the architecture a
        checkpoint was saved with.

        Called with the checkpoint's header ``meta`` (its ``"config"`` is the domain config it
        was trained with) and its state-dict ``keys`` before the network is built, by
        :meth:`load_teacher` and :func:`workbench.runner.load_generator`, so a checkpoint
        trained with another (e.g. an older default) architecture still loads, and students
        distilled from it (``domain.build_backbone()``) match it. Default: no-op (domains with
        one architecture)."""

    def objective(self):
        """The teacher's training objective (default: :class:`~workbench.losses.DenoisingLoss`
        in the domain's process and parameterization)."""
        from .losses import DenoisingLoss

        return DenoisingLoss(self.process(), self.prediction)

    def exact_model(self):
        """The exact denoiser (``model(x, t, **kw)`` in x0 parameterization), if any."""
        return None

    # -- optional capabilities (OPTIONAL_CAPABILITIES) ---------------------------------------------
    def _unsupported(self, what: str):
        return NotImplementedError(f"domain {self.name!r} does not support {what}")

    def build_two_time_backbone(self, **kwargs) -> nn.Module:
        """A fresh average-velocity student ``u(z, r, t, mask=, cond=)`` (a
        :class:`~workbench.model.TwoTimeDenoiser` in the linear view of the process) whose
        parameter names match :meth:`build_backbone`'s, so teacher weights copy by name;
        ``kwargs``: backbone sizes plus ``prediction``, ``time_scale``, ``gap_scale`` for the
        wrapper. Needed by MeanFlow and SplitMeanFlow."""
        raise self._unsupported("two-time (average-velocity) students: build_two_time_backbone is not implemented")

    def slim_backbone_kwargs(self, factor: float) -> dict:
        """``build_backbone`` kwargs of a student ``factor`` times narrower than the teacher's
        architecture (current config). Needed by SlimFlow (unless the user passes
        ``student_backbone``)."""
        raise self._unsupported("slimmer students: slim_backbone_kwargs is not implemented (pass distill.student_backbone)")

    def reward(self, samples: Batch) -> Tensor:
        """A differentiable per-sample reward ``[B]`` of clean samples (higher is better), used
        by reward fine-tuning (Flash-DMD) and reward-guided sampling. Report the domain's true
        metrics beside any reward optimised."""
        raise self._unsupported("rewards: it defines no reward (Domain.reward), which reward fine-tuning needs")

    def default_n(self) -> Optional[int]:
        """How many samples ``generate`` makes without ``n=`` (``None``: the runner's default)."""
        return None

    @classmethod
    def supports(cls, capability: str) -> bool:
        """Whether the domain implements the optional ``capability`` (a name of
        :data:`OPTIONAL_CAPABILITIES`)."""
        if capability not in OPTIONAL_CAPABILITIES:
            raise ValueError(f"unknown domain capability {capability!r}; valid: {', '.join(OPTIONAL_CAPABILITIES)}")
        return getattr(cls, capability) is not getattr(Domain, capability)

    @classmethod
    def capabilities(cls) -> tuple:
        """The optional capabilities the domain implements."""
        return tuple(c for c in OPTIONAL_CAPABILITIES if cls.supports(c))

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


def get_domain_class(name: str) -> type:
    """The class registered as ``name`` (loads its entry point)."""
    found = available_domains()
    if name not in found:
        raise ValueError(f"unknown domain {name!r}; valid: {', '.join(found) or '(none installed)'}")
    obj = found[name]
    return obj if isinstance(obj, type) else obj.load()


def get_domain(name: str, **config) -> Domain:
    """Instantiate the domain registered as ``name``."""
    return get_domain_class(name)(**config)


# -- conformance ----------------------------------------------------------------------------
class ConformanceError(AssertionError):
    pass


def check_domain(domain: Domain, *, n: int = 4, steps: int = 3, tmpdir: Optional[Path] = None, teacher=True) -> dict:
    """Check that ``domain`` honours the plugin contract; raise :class:`ConformanceError`
    naming the first violation. Returns a small report dict. ``teacher``: ``True`` checks the
    shipped teacher, a path that checkpoint, ``False`` a fresh :meth:`Domain.build_backbone`.

    Checks: a Gaussian or a discrete process; a batch sampler returning a :class:`Batch` with a
    matching mask; a generation batch whose noise already satisfies the constraints (zero / pad-id
    padding, zero CoM); the backbone and the teacher map ``[B, ...] -> [B, ...]`` (a discrete
    process: token ids ``[B, N]`` -> logits ``[B, N, vocab_size]``) with finite outputs; a
    3-step sample (``euler``; a discrete process: the domain's teacher sampler if it is a discrete
    one, else the first discrete sampler) keeps the constraints; ``evaluate`` returns finite floats;
    ``save_samples`` writes non-empty files of the declared formats; ``plot`` writes a PNG;
    sample ``i`` depends only on its own seed.
    """
    from . import api
    from .utils import per_sample_generators

    def need(cond, msg):
        if not cond:
            raise ConformanceError(f"domain {domain.name!r}: {msg}")

    from .processes import DiscreteProcess
    from .samplers import available

    def same(a, b):  # token ids compare exactly, float states up to round-off
        if a.is_floating_point() or b.is_floating_point():
            return torch.allclose(a.double(), b.double(), atol=1e-5)
        return torch.equal(a, b)

    need(isinstance(domain.name, str) and domain.name, "has no name")
    proc = domain.process()
    need(isinstance(proc, (GaussianProcess, DiscreteProcess)),
         f"process() must return a GaussianProcess or a DiscreteProcess, got {type(proc).__name__}")
    discrete = isinstance(proc, DiscreteProcess)
    g = torch.Generator().manual_seed(0)
    batch = domain.train_data("train")(n, g)
    need(isinstance(batch, Batch) and batch.x.shape[0] == n, "train_data(split)(n, generator) must return a Batch of n states")
    if batch.mask is not None:
        need(batch.mask.shape == batch.x.shape[:2], "Batch.mask must be [B, N] matching x [B, N, ...]")
        need(same(proc.project(batch.x, batch.mask), batch.x), "training data violate the process constraints (padding / centre of mass)")
    gb = domain.generation_batch(n, generator=per_sample_generators(0, n))
    need(isinstance(gb, GenerationBatch) and gb.x_T.shape[0] == n, "generation_batch(n) must return a GenerationBatch of n")
    need(same(proc.project(gb.x_T, gb.mask), gb.x_T), "generation noise violates the constraints")
    if discrete:
        need(not gb.x_T.is_floating_point() and gb.x_T.ndim == 2, f"generation noise of a discrete process must be token ids [B, N], got "
             f"{gb.x_T.dtype} of shape {tuple(gb.x_T.shape)}")
    if teacher is False or teacher is None:
        net = domain.build_backbone().eval()
    else:
        net = domain.load_teacher(None if teacher is True else teacher)
    t = torch.rand(n)
    with torch.no_grad():
        out = net(gb.x_T, t, mask=gb.mask, cond=gb.cond)
    want = (*gb.x_T.shape, proc.vocab_size) if discrete else tuple(gb.x_T.shape)
    need(tuple(out.shape) == want, f"teacher output shape {tuple(out.shape)} != {want}"
         + (" (logits [B, N, vocab_size] over the clean tokens)" if discrete else " (the input shape)"))
    need(bool(torch.isfinite(out).all()), "teacher output is not finite")
    pred = getattr(net, "prediction", None)
    need(pred is not None, "teacher must declare .prediction")
    if discrete:
        valid = available(process=proc)
        need(bool(valid), f"no sampler runs on {type(proc).__name__}")
        sampler = domain.teacher_sampler[0] if domain.teacher_sampler[0] in valid else valid[0]
    else:
        sampler = "euler"
    x = api.sample(net, proc, gb.x_T, sampler=sampler, steps=steps, prediction=pred, mask=gb.mask, cond=gb.cond,
                   generator=per_sample_generators(1, n))
    need(same(proc.project(x, gb.mask), x), "samples violate the constraints after sampling")
    # sample i depends only on seed i
    gb2 = domain.generation_batch(2, generator=per_sample_generators(0, 2))
    need(same(gb2.x_T, gb.x_T[:2]), "generation noise of sample i must depend only on its own seed")
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


def supported_samplers(domain: Domain, net: nn.Module, *, n: int = 2, steps: int = 2) -> dict:
    """``{sampler: None if it runs, else the one-line reason}``: each registered sampler is
    run for ``steps`` steps on ``n`` samples of ``domain`` with ``net``; it is supported if it
    returns finite samples that keep the process constraints."""
    from . import api
    from .samplers import available
    from .utils import per_sample_generators

    proc = domain.process()
    gb = domain.generation_batch(n, generator=per_sample_generators(0, n))
    pred = getattr(net, "prediction", domain.prediction)
    out = {}
    for name in available(process=proc):  # the samplers of the process's kind (continuous or discrete)
        try:
            with torch.no_grad():
                x = api.sample(net, proc, gb.x_T, sampler=name, steps=steps, prediction=pred, mask=gb.mask, cond=gb.cond,
                               generator=per_sample_generators(1, n))
            ok = bool(torch.isfinite(x.double()).all()) and torch.allclose(proc.project(x, gb.mask).double(), x.double(), atol=1e-4)
            out[name] = None if ok else "non-finite samples or broken constraints"
        except Exception as e:  # noqa: BLE001 - any failure means "not supported here", reported with its reason
            out[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return out


def train_teacher(domain: Domain, cfg=None, out_dir=None, *, resume: bool = True, init=None, init_strict: bool = True):
    """Train the domain's teacher with the shared loop and export ``teacher.safetensors``
    (EMA weights; metadata records the domain name and config); ``cfg.seed`` fixes the
    initial weights and the data stream. Returns the
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
    torch.manual_seed(cfg.seed)  # the initial weights follow the seed too
    net = domain.build_backbone()
    if init is not None:
        load_into(net, init, strict=init_strict)
        meta["init"] = str(init)
    res = train(domain.objective(), {"model": net}, domain.train_data("train"), cfg,
                out_dir=out_dir, resume=resume, meta=meta)
    if out_dir is not None:
        save_weights(Path(out_dir) / "teacher.safetensors", res.ema["model"], {**meta, "steps": res.step})
    return res
