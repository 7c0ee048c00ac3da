"""The ``structure_prediction`` domain: protein sequence -> CA coordinates with a small
AlphaFold 3-style model (trunk + diffusion module, :mod:`.network`) sampled with AF3's
diffusion sampler (``af3_edm``, :mod:`workbench.samplers.af3_edm`) at 200 steps, or a
2-5 step ODE / distilled generator.

State and units: ``x`` ``[B, N, 3]`` CA coordinates in units of AF3's ``sigma_data = 16`` A
(``x = CA / 16``; the protein package, the metrics, predictions and files are in Angstrom),
zero centre of mass over real residues, zero padding (``mask`` ``[B, N]``). The process is
EDM's VE process with AF3's noise range ``4e-4 .. 160 sigma_data``, i.e. ``VE(sigma_min=4e-4,
sigma_max=160, zero_com=True)`` in these units, and the denoiser's EDM preconditioning uses
``sigma_data = 1``. (In Angstrom the prior's std would be 2560 and float32 rounding alone moves
its centre of mass by ~1e-4 A, more than the conformance tolerance; in ``sigma_data`` units the
numbers are EDM's usual ones.) AF3's ``gamma_min = 1 A`` is therefore ``1/16`` here:
:meth:`StructurePredictionDomain.predict` and the folder pass ``gamma_min = 1 / sigma_data`` to
``af3_edm`` unless told otherwise (a bare ``workbench generate sampler=af3_edm`` uses the
sampler's default 1.0 = 16 A; pass ``options.gamma_min=0.0625`` to match AF3). ``cond`` =
``{"aatype": long [B, N] (0..19, 20 unknown/padding), "residue_index": long [B, N]}``.

The trunk runs once per sampling call: the backbone's ``prepare_cond`` (called by
:func:`workbench.api.run_sampler` and the distilled generators) caches it in ``cond``.

Config keys (hydra ``domain.*``, :class:`StructurePredictionConfig`; unknown keys raise a ValueError
listing these):

* ``source``: training chains ``real`` (default; PDB files shipped by installed packages),
  ``ideal`` (procedural) or ``mixed`` (:func:`domains.proteins.data.dataset_chains`);
  ``root``: a directory of your own PDB/mmCIF files instead;
* ``designed``: a file of synthetic (ProteinMPNN sequence, ideal backbone) pairs
  (:mod:`.designed`, ``python -m domains.structure_prediction.designed --out PATH``) mixed
  into the training crops: each crop comes from it with probability ``designed_weight``
  (default 0.5), else from the ``source`` chains (training split only);
* ``crop``: training crop length (default 64);
* ``sequence_encoder``: ``onehot`` (default), ``plm`` (the project's small protein language
  model) or ``esm`` (needs fair-esm + ``encoder_options={"weights": PATH}``);
  ``encoder_options``: options of that encoder;
* ``recycles``: trunk recycling iterations (default 1; 0 = a single pass);
* ``net``: architecture overrides (:data:`.network.ARCH`: ``c_s, c_z, heads, trunk_depth,
  diffusion_depth, c_opm, relpos_max, transition, fourier_dim``);
* ``sigma_data`` (16.0 A, also the state unit), ``p_mean`` (-1.2), ``p_std`` (1.5), ``diffusion_samples`` (4),
  ``lddt_weight`` (1.0), ``align`` (true), ``bond_weight`` (0.0; AF3's fine-tuning stage uses 1):
  the training loss (:mod:`.loss`);
* ``sequences`` (list of one-letter strings) or ``fasta`` (path): what generation folds
  (default: the held-out test chains' sequences, at most ``max_length`` residues if set);
* ``steps`` (200), ``sampler`` (``af3_edm``), ``sampler_options`` ({}): what
  :meth:`StructurePredictionDomain.predict` and :meth:`~StructurePredictionDomain.folder` use;
  ``batch_size`` (16): predictions per network batch;
* ``checkpoint``: a teacher checkpoint instead of the shipped one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from workbench.checkpoint import CheckpointError
from workbench.domain import Domain, GenerationBatch
from workbench.losses import Batch
from workbench.model import Denoiser
from workbench.processes import VE
from workbench.utils import atomic_path

from .loss import StructureDiffusionLoss
from .network import ARCH, StructureBackbone

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
CHECKPOINT_NAME = "structure_predictor.safetensors"
REGENERATE = "python -m domains.structure_prediction.train"

#: AF3's inference schedule in units of sigma_data (Suppl. sec. 3.7.1; Protenix InferenceNoiseScheduler)
AF3_S_MAX, AF3_S_MIN, AF3_RHO = 160.0, 4e-4, 7.0
SEQUENCE_ENCODERS = ("onehot", "plm", "esm")
SOURCES = ("real", "ideal", "mixed")
AMINO = "ARNDCQEGHILKMFPSTWYV"


@dataclass
class StructurePredictionConfig:
    """Options of the structure_prediction domain (``domain.<key>=`` on the command line; the
    module docstring says more)."""

    source: str = field(default="real", metadata={"help": "training chains: " + ", ".join(SOURCES)})
    root: Optional[str] = field(default=None, metadata={"help": "a directory of your own PDB/mmCIF files"})
    crop: int = field(default=64, metadata={"help": "training crop length"})
    sequence_encoder: str = field(default="onehot", metadata={"help": "onehot, plm (the small in-repo protein LM), esm (needs fair-esm and weights)"})
    encoder_options: Optional[dict] = field(default=None, metadata={"help": "options of the sequence encoder, e.g. {weights: PATH}"})
    recycles: int = field(default=1, metadata={"help": "trunk recycling iterations (0: a single pass)"})
    net: Optional[dict] = field(default=None, metadata={"help": "architecture overrides: " + ", ".join(ARCH)})
    sigma_data: float = field(default=16.0, metadata={"help": "AF3's sigma_data in Angstrom, also the state unit"})
    p_mean: float = field(default=-1.2, metadata={"help": "training noise level: log-normal mean"})
    p_std: float = field(default=1.5, metadata={"help": "training noise level: log-normal std"})
    diffusion_samples: int = field(default=4, metadata={"help": "noised copies per crop in training"})
    lddt_weight: float = field(default=1.0, metadata={"help": "weight of the smooth lDDT loss"})
    align: bool = field(default=True, metadata={"help": "align the target to the prediction before the MSE"})
    bond_weight: float = field(default=0.0, metadata={"help": "weight of the CA-CA bond loss (AF3's fine-tuning stage: 1)"})
    sequences: Any = field(default=None, metadata={"help": "sequences to fold (a list of one-letter strings), or:"})
    fasta: Optional[str] = field(default=None, metadata={"help": "a FASTA file of sequences to fold"})
    max_length: Optional[int] = field(default=None, metadata={"help": "longest default test chain to fold (null: all)"})
    steps: int = field(default=200, metadata={"help": "sampler steps of predict() and the folder"})
    sampler: str = field(default="af3_edm", metadata={"help": "sampler of predict() and the folder"})
    sampler_options: Optional[dict] = field(default=None, metadata={"help": "options of that sampler"})
    batch_size: int = field(default=16, metadata={"help": "predictions per network batch"})
    checkpoint: Optional[str] = field(default=None, metadata={"help": "a teacher checkpoint instead of the shipped one"})
    designed: Optional[str] = field(default=None, metadata={"help": "a file of (sequence, ideal backbone) pairs mixed into training"})
    designed_weight: float = field(default=0.5, metadata={"help": "probability a training crop comes from designed"})


#: :class:`workbench.training.TrainConfig` of the shipped checkpoint (one CPU thread, ~15 min)
TRAIN_DEFAULTS = dict(steps=1200, batch_size=8, lr=1e-3, warmup=50, schedule="cosine", grad_clip=1.0, ema_decay=0.995,
                      ckpt_every=250, log_every=25, seed=0)


def af3_grid(process: VE, steps: int) -> Tensor:
    """AF3's noise schedule as a time grid ``[steps + 1]`` (float64) of ``process``:
    ``c_i = sigma_data (s_max^(1/rho) + i/N (s_min^(1/rho) - s_max^(1/rho)))^rho``, ``i = 0..N``,
    ``s_max = 160, s_min = 4e-4, rho = 7``, with the last level replaced by 0 (as Protenix's
    ``InferenceNoiseScheduler``), mapped to ``t = t(lambda = -log c)``.

    ``sigma_data = process.sigma_max / 160`` (1 for the domain's process, whose states are in
    units of sigma_data).
    :func:`workbench.timegrids.edm` differs only in the spacing: it puts ``steps`` points from
    ``s_max`` to ``s_min`` (both included) and then 0."""
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    sd = float(getattr(process, "sigma_max")) / AF3_S_MAX
    i = torch.arange(steps + 1, dtype=torch.float64) / steps
    c = sd * (AF3_S_MAX ** (1 / AF3_RHO) + i * (AF3_S_MIN ** (1 / AF3_RHO) - AF3_S_MAX ** (1 / AF3_RHO))) ** AF3_RHO
    t = process.t_of_lambda(-torch.log(c)).to(torch.float64)
    t[0], t[-1] = 1.0, 0.0
    return t


def read_fasta_file(path) -> list[tuple[str, str]]:
    """``[(name, sequence)]`` of a FASTA file (one-line ValueError if missing, empty or invalid)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"fasta file not found: {p}")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:  # name the file, the byte and where it is (a binary or Latin-1 file)
        line_no = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"fasta file {p} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} "
                         f"(line {line_no}); a FASTA file holds '>name' headers and one-letter amino-acid lines") from None
    out, name, buf = [], None, []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            if name is not None:
                out.append((name, "".join(buf)))
            name, buf = line[1:].split()[0] if line[1:].split() else f"seq{len(out)}", []
        else:
            if name is None:
                raise ValueError(f"fasta file {p}: sequence line before the first '>' header")
            buf.append(line.replace(" ", ""))
    if name is not None:
        out.append((name, "".join(buf)))
    if not out:
        raise ValueError(f"fasta file {p} holds no sequences")
    return out


def check_sequence(seq: str, name: str = "sequence") -> str:
    """Upper-case one-letter sequence (20 amino acids and ``X``); one-line ValueError otherwise."""
    if not isinstance(seq, str) or not seq.strip():
        raise ValueError(f"{name} must be a non-empty one-letter amino-acid string, got {seq!r}")
    s = seq.strip().upper()
    bad = sorted(set(s) - set(AMINO + "X"))
    if bad:
        raise ValueError(f"{name} has invalid residue letter(s) {''.join(bad)!r}; valid: {AMINO} and X")
    if len(s) < 3:
        raise ValueError(f"{name} is too short ({len(s)} residues; need at least 3)")
    return s


def encode_sequences(sequences: Sequence[str], n_pad: Optional[int] = None) -> tuple[dict, Tensor]:
    """Sequences -> ``(cond {"aatype" [B, N], "residue_index" [B, N]}, mask [B, N])`` padded to
    ``n_pad`` (default the longest)."""
    from domains.proteins.chain import tokenize

    n = max(len(s) for s in sequences) if n_pad is None else int(n_pad)
    B = len(sequences)
    aatype = torch.full((B, n), 20, dtype=torch.long)
    ri = torch.zeros((B, n), dtype=torch.long)
    mask = torch.zeros((B, n))
    for i, s in enumerate(sequences):
        L = len(s)
        if L > n:
            raise ValueError(f"sequence {i} has {L} residues, more than the padding length {n}")
        aatype[i, :L] = torch.from_numpy(tokenize(s))
        ri[i, :L] = torch.arange(L)
        mask[i, :L] = 1.0
    return {"aatype": aatype, "residue_index": ri}, mask


class StructurePredictionDomain(Domain):
    """Sequence -> CA structure (see the module docstring)."""

    name = "structure_prediction"
    description = "protein structure prediction (sequence -> CA trace) with a small AF3-style trunk + diffusion module"
    Config = StructurePredictionConfig
    formats = ("pdb", "cif")
    has_exact_model = False
    prediction = "x0"
    primary_metric = "ca_lddt"
    metric_info = {
        "ca_lddt": ("higher", "CA-lDDT of the prediction against the known structure, residues matched by position"),
        "tm_score": ("higher", "TM-score with residues matched by position (an unrelated chain scores ~0.2)"),
        "ca_ca_outlier_fraction": ("lower", "consecutive CA-CA distances outside 3.8 +- 0.2 A"),
        "rg_vs_native": ("target 1", "radius of gyration of the prediction / of the true structure"),
    }
    demo_skip_reason = ("no distilled student ships for it, and its 200-step AF3 sampler takes about 30 s per prediction "
                        "on this CPU; `workbench bench structure` compares its samplers (a sampler study, not a structure predictor)")
    teacher_sampler = ("af3_edm", 200)
    demo_fast_samplers = ("euler", "dpm_solver_pp_2m")
    demo_metrics = ("ca_lddt", "tm_score", "ca_ca_outlier_fraction", "rg_vs_native")

    def __init__(self, **config):
        super().__init__(**config)  # the full option set (checkpoint metadata records every value)
        self.explicit = set(config)
        self._explicit_net = bool(config.get("net"))
        self.opts = full = self.config
        if full["source"] not in SOURCES:
            raise ValueError(f"unknown source {full['source']!r}; valid: {', '.join(SOURCES)}")
        if full["sequence_encoder"] not in SEQUENCE_ENCODERS:
            raise ValueError(f"unknown sequence_encoder {full['sequence_encoder']!r}; valid: {', '.join(SEQUENCE_ENCODERS)}")
        for key, lo in (("recycles", 0), ("crop", 8), ("diffusion_samples", 1), ("steps", 1), ("batch_size", 1)):
            v = full[key]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{key} must be an integer >= {lo}, got {v!r}")
        for key in ("sigma_data", "p_std"):
            if not (isinstance(full[key], (int, float)) and math.isfinite(full[key]) and full[key] > 0):
                raise ValueError(f"{key} must be a positive number, got {full[key]!r}")
        if full["max_length"] is not None and (not isinstance(full["max_length"], int) or full["max_length"] < 3):
            raise ValueError(f"max_length must be None or an integer >= 3, got {full['max_length']!r}")
        if full["sequences"] is not None and full["fasta"] is not None:
            raise ValueError("give either sequences=[...] or fasta=FILE, not both")
        w = full["designed_weight"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= float(w) <= 1.0:
            raise ValueError(f"designed_weight must be a number in [0, 1], got {w!r}")
        net = full["net"] or {}
        bad = sorted(set(net) - set(ARCH))
        if bad:
            raise ValueError(f"unknown net option(s) {', '.join(bad)}; valid: {', '.join(ARCH)}")
        from workbench.samplers import get as get_sampler

        get_sampler(full["sampler"])  # unknown sampler -> ValueError listing the valid ones
        self.train_defaults = dict(TRAIN_DEFAULTS)
        self._teacher = None
        self._targets = None
        self._known = None

    # -- data ----------------------------------------------------------------------------------
    def chains(self, split: str = "train") -> list:
        """The chains of ``split`` (``train/val/test``) of the configured source."""
        from domains.proteins.data import dataset_chains

        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; valid: train, val, test")
        return dataset_chains(split, source=self.opts["source"], root=self.opts["root"])

    def train_data(self, split: str = "train"):
        from domains.proteins.data import CropSampler

        sampler = CropSampler(self.chains(split), n_max=int(self.opts["crop"]), rotate=True, scale=1.0 / self.unit)
        if split != "train" or self.opts["designed"] is None:
            return sampler
        from .designed import MixtureSampler, load_pairs

        pairs = CropSampler(load_pairs(self.opts["designed"]), n_max=int(self.opts["crop"]), rotate=True, scale=1.0 / self.unit)
        return MixtureSampler(sampler, pairs, float(self.opts["designed_weight"]))

    @property
    def unit(self) -> float:
        """Angstrom per state unit (= ``sigma_data``)."""
        return float(self.opts["sigma_data"])

    # -- modelling -----------------------------------------------------------------------------
    def process(self) -> VE:
        return VE(sigma_min=AF3_S_MIN, sigma_max=AF3_S_MAX, zero_com=True)  # in units of sigma_data

    def objective(self):
        o = self.opts
        return StructureDiffusionLoss(self.process(), sigma_data=1.0, unit=self.unit, p_mean=float(o["p_mean"]),
                                      p_std=float(o["p_std"]), diffusion_samples=int(o["diffusion_samples"]),
                                      lddt_weight=float(o["lddt_weight"]), align=bool(o["align"]), bond_weight=float(o["bond_weight"]))

    def sequence_encoder(self, name: Optional[str] = None):
        from domains.proteins.plm import get_sequence_encoder

        return get_sequence_encoder(name or self.opts["sequence_encoder"], **(self.opts["encoder_options"] or {}))

    def build_backbone(self, **kwargs) -> Denoiser:
        """A fresh :class:`~workbench.model.Denoiser` (EDM preconditioning, ``sigma_data``, x0
        prediction) around a :class:`~.network.StructureBackbone`; ``kwargs`` override the
        architecture (:data:`.network.ARCH`) and may set ``recycles`` / ``sequence_encoder``."""
        recycles = int(kwargs.pop("recycles", self.opts["recycles"]))
        enc = kwargs.pop("sequence_encoder", None)
        arch = {**(self.opts["net"] or {}), **kwargs}
        bb = StructureBackbone(self.sequence_encoder(enc), recycles=recycles, **arch)
        return Denoiser(bb, self.process(), precond="edm", sigma_data=1.0)  # states are in units of sigma_data

    def default_teacher_path(self) -> Path:
        return Path(self.opts["checkpoint"]) if self.opts["checkpoint"] else CHECKPOINT_DIR / CHECKPOINT_NAME

    def teacher_regenerate_command(self) -> str:
        return REGENERATE

    def check_checkpoint(self, meta: dict, path: Path) -> None:
        """A structure_prediction checkpoint with this ``sigma_data`` and, when ``sequence_encoder``
        was set explicitly, that encoder."""
        if meta.get("domain", self.name) != self.name:
            raise CheckpointError(f"checkpoint {path} is a {meta.get('domain')!r} model, not a structure_prediction one")
        mcfg = meta.get("config") or {}
        enc = mcfg.get("sequence_encoder", "onehot")
        if "sequence_encoder" in self.explicit and self.opts["sequence_encoder"] != enc:
            raise CheckpointError(f"checkpoint {path} was trained with sequence_encoder={enc!r}, not {self.opts['sequence_encoder']!r}")
        if float(mcfg.get("sigma_data", self.opts["sigma_data"])) != float(self.opts["sigma_data"]):
            raise CheckpointError(f"checkpoint {path} was trained with sigma_data={mcfg.get('sigma_data')}, not {self.opts['sigma_data']}")

    def adopt_checkpoint_architecture(self, meta: dict, keys) -> None:
        """Build the checkpoint's network from now on: the ``sequence_encoder`` of its header
        (default ``onehot``) and, unless ``net`` was set explicitly, its ``net``."""
        mcfg = meta.get("config") or {}
        self.opts["sequence_encoder"] = mcfg.get("sequence_encoder", "onehot")
        if not self._explicit_net:
            self.opts["net"] = dict(mcfg.get("net") or {}) or None

    # -- generation ----------------------------------------------------------------------------
    def targets(self) -> list[tuple[str, str, Any]]:
        """``[(name, sequence, reference Chain or None)]`` that generation folds by default:
        ``sequences`` / ``fasta`` from the config, else the test chains (``max_length`` cap)."""
        if self._targets is None:
            o = self.opts
            if o["sequences"] is not None:
                seqs = list(o["sequences"]) if not isinstance(o["sequences"], str) else [o["sequences"]]
                if not seqs:
                    raise ValueError("sequences must be a non-empty list of one-letter strings")
                self._targets = [(f"seq{i}", check_sequence(s, f"sequences[{i}]"), None) for i, s in enumerate(seqs)]
            elif o["fasta"] is not None:
                self._targets = [(n, check_sequence(s, f"fasta record {n!r}"), None) for n, s in read_fasta_file(o["fasta"])]
            else:
                chains = [c for c in self.chains("test") if o["max_length"] is None or len(c) <= o["max_length"]]
                if not chains:
                    raise ValueError(f"no test chains of at most max_length={o['max_length']} residues")
                self._targets = [(c.name, c.sequence, c) for c in chains]
            known = self.known_structures()
            self._targets = [(n, s, c if c is not None else known.get(s)) for n, s, c in self._targets]
        return self._targets

    sampling_config_keys = ("steps", "sampler", "sampler_options")

    def default_n(self) -> Optional[int]:
        """How many predictions a ``generate`` without ``n=`` should make: one per configured
        sequence (``sequences`` / ``fasta``); ``None`` (the runner's default) for the test chains."""
        if self.opts["sequences"] is None and self.opts["fasta"] is None:
            return None
        return len(self.targets())

    def sample_names(self, samples: Batch) -> list[Optional[str]]:
        """The ``sequences`` / ``fasta`` record name of each sample (matched by sequence; the first
        record wins for repeated sequences), ``None`` for samples of the default test chains or of
        sequences not configured."""
        if self.opts["sequences"] is None and self.opts["fasta"] is None:
            return [None] * int(torch.as_tensor(samples.x).shape[0])
        by_seq: dict = {}
        for name, seq, _ in self.targets():
            by_seq.setdefault(seq, name)
        return [by_seq.get(seq) for seq, _ in self._split_samples(samples)]

    def known_structures(self) -> dict:
        """``{sequence: Chain}`` of every chain of the configured data (all splits), used as the
        reference when a sequence to evaluate has a known structure (all-``X`` sequences of
        sequence-less backbones are left out)."""
        if self._known is None:
            known, ambiguous = {}, set()
            try:
                for split in ("train", "val", "test"):
                    for c in self.chains(split):
                        if set(c.sequence) <= {"X"}:  # sequence-less (e.g. ideal) backbones identify nothing
                            continue
                        if c.sequence in known and known[c.sequence].ca.shape != c.ca.shape:
                            ambiguous.add(c.sequence)
                        known.setdefault(c.sequence, c)
            except (ImportError, FileNotFoundError, ValueError):
                pass
            self._known = {k: v for k, v in known.items() if k not in ambiguous}
        return self._known

    def _cond_sequences(self, n: int, cond: Any, index: Optional[list] = None) -> tuple[list[str], list[str], Optional[int]]:
        """``(names, sequences, pad length)`` of ``n`` generation samples for ``cond``; with
        ``cond=None`` sample ``i`` folds target ``index[i] mod T`` (default ``index[i] = i``)."""
        if cond is None:
            tg = self.targets()
            pick = [tg[int(j) % len(tg)] for j in (range(n) if index is None else index)]
            return [p[0] for p in pick], [p[1] for p in pick], max(len(t[1]) for t in tg)
        if isinstance(cond, str):
            cond = [cond]
        if isinstance(cond, (list, tuple)) and all(isinstance(s, str) for s in cond):
            seqs = [check_sequence(s, f"cond[{i}]") for i, s in enumerate(cond)]
            if len(seqs) == 1:
                seqs = seqs * n
            if len(seqs) != n:
                raise ValueError(f"cond must give 1 or {n} sequences, got {len(seqs)}")
            return [f"seq{i}" for i in range(n)], seqs, None
        if isinstance(cond, dict) or isinstance(cond, Tensor):
            from domains.proteins.chain import detokenize

            aatype = cond["aatype"] if isinstance(cond, dict) else cond
            if aatype.ndim != 2 or aatype.shape[0] != n:
                raise ValueError(f"cond['aatype'] must be [n, N] = [{n}, N], got {tuple(aatype.shape)}")
            # padding is token 20; an unknown residue inside a sequence is also 20: keep the length up to the last real token
            lengths = [int((row < 20).nonzero().max()) + 1 if bool((row < 20).any()) else 0 for row in aatype]
            seqs = [detokenize(row[:L]) for row, L in zip(aatype, lengths)]
            return [f"seq{i}" for i in range(n)], [check_sequence(s, f"cond sequence {i}") for i, s in enumerate(seqs)], aatype.shape[1]
        raise ValueError("cond must be None, a sequence string, a list of sequences, or {'aatype': [n, N], 'residue_index': [n, N]}")

    def generation_batch(self, n: int, *, generator=None, cond: Any = None) -> GenerationBatch:
        """Noise ``[n, N, 3]`` at ``sigma_max`` (zero CoM over each sequence's residues) for the
        sequences of ``cond`` (None: the configured targets; with per-sample generators the
        sample seeded ``s`` folds target ``s mod T``, so the runner's chunking does not change
        which target a sample folds; else sample ``i`` folds target ``i mod T``; padded to the
        longest target; a list of one-letter sequences; or a cond dict). The
        noise of sample ``i`` is drawn as ``[L_i, 3]`` from its own generator, so it depends only
        on its seed and sequence, not on the padding or its batch mates."""
        index = [g.initial_seed() for g in generator] if isinstance(generator, (list, tuple)) else None
        names, seqs, n_pad = self._cond_sequences(int(n), cond, index)
        c, mask = encode_sequences(seqs, n_pad)
        proc = self.process()
        gens = generator if isinstance(generator, (list, tuple)) else [generator] * int(n)
        if len(gens) != int(n):
            raise ValueError(f"got {len(gens)} per-sample generators for {n} samples")
        x = torch.zeros(int(n), c["aatype"].shape[1], 3)
        for i, s in enumerate(seqs):  # noise of exactly [L_i, 3]: independent of the padding length
            x[i, : len(s)] = torch.randn((len(s), 3), generator=gens[i]) * proc.prior_std()
        x = proc.project(x, mask)
        return GenerationBatch(x_T=x, mask=mask, cond=c, info={"names": names, "sequences": seqs})

    # -- prediction API --------------------------------------------------------------------------
    def teacher(self) -> Denoiser:
        if self._teacher is None:
            self._teacher = self.load_teacher().requires_grad_(False)
        return self._teacher

    def predict(self, sequences: Sequence[str], *, steps: Optional[int] = None, sampler: Optional[str] = None,
                options: Optional[dict] = None, seed: int = 0, timesteps: Any = "af3", model=None,
                names: Optional[Sequence[str]] = None) -> list:
        """Fold ``sequences`` -> one CA-only :class:`~domains.proteins.chain.Chain` each.

        Args:
            steps, sampler, options: default the config's ``steps`` (200), ``sampler``
                (``af3_edm``; its ``gamma_min`` defaults to AF3's 1 A) and ``sampler_options``; e.g. ``steps=4, options={"gamma0": 0,
                "step_scale_eta": 1}`` is the 4-step deterministic ODE.
            seed: sequence ``i`` uses the per-sample seed ``seed + i``.
            timesteps: ``"af3"`` (AF3's schedule, :func:`af3_grid`), any
                :mod:`workbench.timegrids` name, or an explicit grid.
            model: a denoiser to use instead of the shipped checkpoint.
        """
        from workbench.api import run_sampler
        from domains.proteins.chain import Chain

        if isinstance(sequences, str):
            sequences = [sequences]
        seqs = [check_sequence(s, f"sequences[{i}]") for i, s in enumerate(sequences)]
        steps = int(self.opts["steps"] if steps is None else steps)
        sampler = sampler or self.opts["sampler"]
        opts = self.sampler_options(sampler, options)
        net = model if model is not None else self.teacher()
        proc = self.process()
        ts = af3_grid(proc, steps) if isinstance(timesteps, str) and timesteps == "af3" else timesteps
        out = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths share a batch (less padding)
        bs = int(self.opts["batch_size"])
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            gens = [torch.Generator().manual_seed(int(seed) + i) for i in idx]
            gb = self.generation_batch(len(idx), generator=gens, cond=[seqs[i] for i in idx])
            with torch.no_grad():
                res = run_sampler(net, proc, gb.x_T, sampler=sampler, steps=steps, prediction=net.prediction, timesteps=ts,
                                  mask=gb.mask, cond=gb.cond, generator=gens, **opts)
            for j, i in enumerate(idx):
                L = len(seqs[i])
                name = names[i] if names is not None else f"pred_{i:05d}"
                out[i] = Chain(name=name, sequence=seqs[i], coords=(res.x[j, :L] * self.unit).detach().cpu().numpy().astype(np.float32),
                               source=f"structure_prediction:{sampler}:{steps}", meta={"sampler": sampler, "steps": steps, "seed": int(seed) + i})
        return out

    def sampler_options(self, sampler: Optional[str] = None, options: Optional[dict] = None) -> dict:
        """The keyword options :meth:`predict` passes to ``sampler``: ``options`` (``None``: the
        config's ``sampler_options``), plus for ``af3_edm`` AF3's ``gamma_min`` and ``s_trans`` of
        1 A in state units (``1 / sigma_data``) unless given."""
        sampler = sampler or self.opts["sampler"]
        opts = dict(self.opts["sampler_options"] or {}) if options is None else dict(options)
        if sampler == "af3_edm":
            opts.setdefault("gamma_min", 1.0 / self.unit)  # AF3's 1 A in state units
            opts.setdefault("s_trans", 1.0 / self.unit)  # AF3 Alg. 19's translation std, 1 A in state units
        return opts

    def effective_sampler_options(self, sampler: Optional[str] = None, options: Optional[dict] = None) -> dict:
        """Every keyword option ``sampler`` runs with under :meth:`predict`: the sampler
        function's own defaults overlaid with :meth:`sampler_options` (so a report can say exactly
        what ran, e.g. AF3's ``gamma0 = 0.8, step_scale_eta = 1.5, noise_scale_lambda = 1.003``)."""
        import inspect

        from workbench.samplers import get as get_sampler

        spec = get_sampler(sampler or self.opts["sampler"])
        defaults = {k: p.default for k, p in inspect.signature(spec.fn).parameters.items()
                    if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}
        return {**defaults, **dict(spec.options), **self.sampler_options(sampler, options)}

    def folder(self, *, steps: Optional[int] = None, sampler: Optional[str] = None, options: Optional[dict] = None, seed: int = 0):
        """The designability refolder: an object with ``.name`` and ``fold(sequences) -> list[Chain]``."""
        return StructurePredictorFolder(self, steps=steps, sampler=sampler, options=options, seed=seed)

    # -- evaluation ----------------------------------------------------------------------------
    def check_samples(self, samples: Batch) -> None:
        """Raise a one-line ValueError unless ``samples`` are predictions of this domain: every
        sample carries its sequence (``cond``, the ``cond`` array of ``samples.npz``) and its CA
        trace is in units of ``sigma_data`` (median consecutive CA-CA within 2-6 A). Backbones
        of ``protein_backbone`` (no sequences, nm units) are refused, so ``workbench evaluate``
        writes nothing for them."""
        hint = "evaluate generated backbones with domain=protein_backbone"
        if samples.cond is None:
            raise ValueError(f"structure_prediction evaluates predicted structures of sequences, but these samples carry no "
                             f"sequences (no 'cond' in samples.npz); {hint}")
        aatype = samples.cond["aatype"] if isinstance(samples.cond, dict) else samples.cond
        x = torch.as_tensor(samples.x).detach().cpu().float()
        if torch.as_tensor(aatype).shape[:2] != x.shape[:2]:
            raise ValueError(f"structure_prediction samples: sequences {tuple(torch.as_tensor(aatype).shape)} do not match "
                             f"coordinates {tuple(x.shape)}")

    def _split_samples(self, samples: Batch) -> list[tuple[str, np.ndarray]]:
        from domains.proteins.chain import detokenize

        x = torch.as_tensor(samples.x).detach().cpu().float() * self.unit  # Angstrom
        mask = samples.mask if samples.mask is not None else torch.ones(x.shape[:2])
        cond = samples.cond
        aatype = cond["aatype"] if isinstance(cond, dict) else cond
        out = []
        for i in range(x.shape[0]):
            m = mask[i].cpu() > 0
            seq = detokenize(aatype[i].cpu()[m]) if aatype is not None else "X" * int(m.sum())
            out.append((seq, x[i][m].numpy().astype(np.float64)))
        return out

    def evaluate(self, samples: Batch, *, reference: Optional[Batch] = None) -> dict:
        """Metrics of predicted CA traces (means over samples; :mod:`.scoring` defines each).

        Against the true structure (``reference`` sample ``i``, else the known structure of the
        same sequence, :meth:`known_structures`), residue ``i`` <-> residue ``i``:

        * primary: ``tm_score`` = TM-score with FIXED residue correspondence (the TMscore
          program's measure, normalised by the true length) and ``ca_lddt`` (CA-lDDT);
        * secondary: ``tm_align`` (TM-score after TM-align's own, sequence-independent alignment:
          NOT a prediction-accuracy measure, an unrelated native chain scores ~0.28 with it),
          ``rmsd`` (CA RMSD after Kabsch superposition, A), ``gdt_like_frac_2A``;
        * ``rg_vs_native``: Rg(prediction) / Rg(truth); ``with_reference``: fraction of samples
          that had a truth.

        Shape of every prediction (no truth needed): ``ca_ca_mean`` / ``ca_ca_outlier_fraction``
        (consecutive CA-CA distances vs 3.8 +- 0.2 A), ``clashes_per_residue`` (non-bonded CA pairs
        closer than 3 A) and ``rg`` (A).
        """
        from .scoring import mean_scores, score_prediction, shape_metrics

        self.check_samples(samples)
        items = self._split_samples(samples)
        refs: list = [None] * len(items)
        if reference is not None:
            rx = torch.as_tensor(reference.x).detach().cpu().float() * self.unit
            rm = reference.mask if reference.mask is not None else torch.ones(rx.shape[:2])
            if rx.shape[0] != len(items):
                raise ValueError(f"reference has {rx.shape[0]} structures for {len(items)} samples")
            refs = [rx[i][rm[i].cpu() > 0].numpy().astype(np.float64) for i in range(len(items))]
        else:
            known = self.known_structures()
            for i, (seq, _) in enumerate(items):
                c = known.get(seq)
                if c is not None:
                    refs[i] = c.ca.astype(np.float64)
        shapes, scored = [], []
        for (seq, ca), ref in zip(items, refs):
            shapes.append(shape_metrics(ca))
            if ref is None or len(ref) != len(ca) or len(ca) < 3:
                continue
            scored.append(score_prediction(ca, ref, seq))
        out = mean_scores(scored, ("tm_score", "ca_lddt", "tm_align", "rmsd", "gdt_like_frac_2A", "rg_vs_native"))
        out.update(mean_scores(shapes, ("ca_ca_mean", "ca_ca_outlier_fraction", "clashes_per_residue", "rg")))
        out["with_reference"] = len(scored) / max(1, len(items))
        return out

    # -- I/O -----------------------------------------------------------------------------------
    def save_samples(self, samples: Batch, out_dir: Path) -> list[Path]:
        """One CA-only PDB and one mmCIF per sample (``sample_00000.pdb`` / ``.cif``, Angstrom,
        residue names from the sequence; ``sample_00000_<record>.pdb`` with the FASTA / ``sequences``
        record name, also the chain name in the file, when sequences were configured) and
        ``samples.npz`` (``x`` float32 ``[B, N, 3]`` the states in units of ``sigma_data``, ``mask``,
        ``cond`` = aatype int64 ``[B, N]``, ``residue_index``, and ``names`` when known)."""
        from domains.proteins.chain import Chain
        from domains.proteins.io import write_chain

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        names = self.sample_names(samples)
        for i, (seq, ca) in enumerate(self._split_samples(samples)):
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in names[i])[:60] if names[i] else ""
            stem = f"sample_{i:05d}_{safe}" if safe else f"sample_{i:05d}"
            ch = Chain(name=names[i] or f"sample_{i:05d}", sequence=seq, coords=ca.astype(np.float32), source="structure_prediction")
            for fmt in self.formats:
                paths.append(write_chain(ch, out_dir / f"{stem}.{fmt}"))
        x = torch.as_tensor(samples.x).detach().cpu().float().numpy()
        mask = (samples.mask.cpu().float().numpy() if samples.mask is not None else np.ones(x.shape[:2], dtype=np.float32))
        cond = samples.cond if isinstance(samples.cond, dict) else {"aatype": samples.cond}
        npz = out_dir / "samples.npz"
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as f:
                extra = {}
                if cond.get("aatype") is not None:
                    extra["cond"] = cond["aatype"].cpu().long().numpy()
                if cond.get("residue_index") is not None:
                    extra["residue_index"] = cond["residue_index"].cpu().long().numpy()
                if any(n is not None for n in names):
                    extra["names"] = np.array([n or "" for n in names])
                np.savez_compressed(f, x=x, mask=mask, **extra)
        paths.append(npz)
        return paths

    def plot(self, samples: Batch, path: Path, *, max_samples: int = 6) -> Path:
        """A PNG: per sample (up to ``max_samples``) the predicted CA distance map (upper
        triangle) against the true one (lower triangle, when known) and the CA trace projected
        on its two principal axes."""
        from workbench.utils import new_figure

        from workbench.utils import save_figure

        items = self._split_samples(samples)[:max_samples]
        known = self.known_structures()
        n = max(1, len(items))
        fig, axes = new_figure(2, n, figsize=(2.6 * n, 5.2), squeeze=False)
        for j, (seq, ca) in enumerate(items):
            dp = np.linalg.norm(ca[:, None] - ca[None], axis=-1)
            ref = known.get(seq)
            img = np.triu(dp)
            if ref is not None and len(ref) == len(ca):
                dr = np.linalg.norm(ref.ca[:, None] - ref.ca[None], axis=-1)
                img = img + np.tril(np.nan_to_num(dr), -1)
            axes[0, j].imshow(img, cmap="viridis_r", vmin=0, vmax=30)
            axes[0, j].set_title(f"#{j} L={len(ca)}" + (" (pred/true)" if ref is not None else ""), fontsize=8)
            c = ca - ca.mean(0)
            _, _, vt = np.linalg.svd(c, full_matrices=False) if len(c) >= 2 else (None, None, np.eye(3))
            pr = c @ vt[:2].T
            axes[1, j].plot(pr[:, 0], pr[:, 1], "-", lw=0.8)
            axes[1, j].scatter(pr[:1, 0], pr[:1, 1], s=8, c="r")
            axes[1, j].set_aspect("equal")
            for a in axes[:, j]:
                a.set_xticks([])
                a.set_yticks([])
        fig.suptitle("structure_prediction: CA distance maps (upper: predicted, lower: true) and traces", fontsize=9)
        path = Path(path)
        save_figure(fig, path)
        return path

    def __repr__(self) -> str:
        return f"StructurePredictionDomain(sequence_encoder={self.opts['sequence_encoder']!r}, recycles={self.opts['recycles']})"


def _fmt_opt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def sampler_kind(sampler: str, effective: dict) -> str:
    """``"ode"`` for ``af3_edm`` without churn and with the plain Euler step (``gamma0 = 0,
    step_scale_eta = 1``: Euler on the probability-flow ODE), ``"af3"`` for ``af3_edm`` with
    churn (``gamma0 > 0``: AF3's stochastic sampler), else ``"custom"``."""
    if sampler != "af3_edm":
        return "custom"
    g, eta = float(effective.get("gamma0", 0.8)), float(effective.get("step_scale_eta", 1.5))
    if g == 0.0 and eta == 1.0:
        return "ode"
    return "af3" if g > 0 else "custom"


class StructurePredictorFolder:
    """The designability pipeline's ``Folder`` backed by the in-repo structure predictor."""

    def __init__(self, domain: StructurePredictionDomain, *, steps=None, sampler=None, options=None, seed: int = 0):
        self.domain = domain
        self.steps = int(domain.opts["steps"] if steps is None else steps)
        self.sampler = sampler or domain.opts["sampler"]
        from workbench.samplers import get as get_sampler

        get_sampler(self.sampler)
        self.options = dict(domain.opts["sampler_options"] or {}) if options is None else dict(options)
        self.seed = int(seed)
        #: every option the sampler runs with (its defaults included), for the report
        self.effective_options = domain.effective_sampler_options(self.sampler, self.options)
        self.kind = sampler_kind(self.sampler, self.effective_options)
        opts = ", ".join(f"{k}={_fmt_opt(v)}" for k, v in sorted(self.effective_options.items()))
        what = {"af3": "AF3 stochastic diffusion sampler", "ode": "probability-flow ODE (Euler)"}.get(self.kind, "custom sampler")
        self.name = (f"in-repo structure predictor (small, not ESMFold): AF3-style CA model, {what}: {self.sampler} "
                     f"{self.steps} steps ({opts}; gamma_min, s_trans in units of sigma_data = {domain.unit:g} A), "
                     f"sequence_encoder={domain.opts['sequence_encoder']}")

    def fold(self, sequences: Sequence[str], generator: Optional[torch.Generator] = None) -> list:
        """One CA-only Chain per sequence; sequence ``i`` uses seed ``s + i`` where ``s`` is drawn
        from ``generator`` (the designability pipeline's per-backbone generator) or, without
        one, is the folder's ``seed``."""
        seed = self.seed if generator is None else int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return self.domain.predict(list(sequences), steps=self.steps, sampler=self.sampler, options=self.options, seed=seed)

    def __repr__(self) -> str:
        return f"StructurePredictorFolder({self.name!r})"
