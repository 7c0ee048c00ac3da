"""The ``sequences`` domain: discrete diffusion over token sequences (character-level
Shakespeare, bacterial DNA windows, bacterial proteins; :mod:`.data`) with a masked (absorbing,
MDLM) or uniform-noise :class:`~workbench.processes.DiscreteProcess`, the
:class:`~domains.sequences.nets.SequenceTransformer` backbone (SUBS x0 logits) and MDLM's ELBO
(:class:`~workbench.losses.MaskedDiffusionELBO`).

Config keys (hydra ``domain.*``, :class:`SequencesConfig`):

* ``dataset``: ``text`` (default), ``dna`` or ``protein``;
* ``process``: ``masked`` (default, absorbing) or ``uniform``;
* ``schedule``: ``loglinear`` (default) or ``cosine`` (MDLM's ``alpha(t)``);
* ``seq_len``: window length of text / dna (default 128); protein is fixed at 300 (padded, with
  lengths drawn from the training length histogram at generation);
* ``d_model``, ``n_layers``, ``n_heads``, ``positions`` (``sinusoidal`` or ``rope``): backbone
  size and position encoding (a shipped teacher's own values are read from its file);
* ``max_reference``: size cap of the held-out reference set the metrics compare with;
* ``reward_motif``: dna, the JASPAR motif of :meth:`SequencesDomain.reward`.

States are ``LongTensor [B, N]`` token ids with a ``mask [B, N]`` (1 real, 0 padding; padded ids
are ``pad_id = 0``). Shipped teachers: ``checkpoints/{dataset}_mdlm.safetensors`` (masked process,
log-linear schedule; trained by :data:`TEACHER_RECIPES`); a missing one raises a one-line
:class:`~workbench.checkpoint.CheckpointError` naming the command that trains it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from workbench.checkpoint import CheckpointError
from workbench.domain import Domain, GenerationBatch
from workbench.losses import Batch, MaskedDiffusionELBO
from workbench.processes import MaskedProcess, UniformProcess

from . import data as D
from . import metrics as M
from .nets import SequenceTransformer

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
PROCESSES = ("masked", "uniform")
SCHEDULES = ("loglinear", "cosine")
#: the k of the primary k-mer JS per data set (the k that separates held-out data from shuffled /
#: i.i.d. baselines best at ~200 sequences, README "Metrics")
PRIMARY_K = {"text": 3, "dna": 4, "protein": 2}
#: the settings the shipped teachers were trained with (``workbench train`` keys; CPU, one thread)
TEACHER_RECIPES = {
    "text": {"domain.d_model": 128, "domain.n_layers": 4, "train.batch_size": 32, "train.steps": 6000, "train.lr": 1e-3,
             "train.warmup": 200},
    "dna": {"domain.d_model": 96, "domain.n_layers": 3, "domain.positions": "rope", "train.batch_size": 32, "train.steps": 6000,
            "train.lr": 1e-3, "train.warmup": 200},
    "protein": {"domain.d_model": 96, "domain.n_layers": 3, "domain.positions": "rope", "train.batch_size": 16, "train.steps": 4000,
                "train.lr": 1e-3, "train.warmup": 200},
}
#: the architecture options a checkpoint's recorded config overrides when it is loaded
ARCH_KEYS = ("d_model", "n_layers", "n_heads", "positions")


@dataclass
class SequencesConfig:
    """Options of the sequences domain (``domain.<key>=`` on the command line)."""

    dataset: str = field(default="text", metadata={"help": "text (Shakespeare characters), dna (bacterial genome windows) or protein"})
    process: str = field(default="masked", metadata={"help": "masked (absorbing, MDLM) or uniform noise"})
    schedule: str = field(default="loglinear", metadata={"help": "alpha(t) schedule: loglinear or cosine"})
    seq_len: Optional[int] = field(default=None, metadata={"help": "window length of text/dna (default 128); protein is fixed at 300"})
    d_model: int = field(default=128, metadata={"help": "transformer width"})
    n_layers: int = field(default=4, metadata={"help": "transformer blocks"})
    n_heads: int = field(default=4, metadata={"help": "attention heads"})
    positions: str = field(default="sinusoidal", metadata={"help": "position encoding: sinusoidal (added) or rope (rotary, MDLM's)"})
    max_reference: int = field(default=500, metadata={"help": "held-out sequences the metrics compare with (at most)"})
    reward_motif: str = field(default="TBP", metadata={"help": "dna: the JASPAR motif (MOTIF_PANEL name) whose best PWM score is the reward"})


class SequencesDomain(Domain):
    """Discrete sequences (see the module docstring). Config: :class:`SequencesConfig`."""

    name = "sequences"
    description = "discrete diffusion over token sequences: Shakespeare text, bacterial DNA, proteins (masked / uniform noise)"
    Config = SequencesConfig
    #: the SUBS network predicts p(x0 | x_t) (as logits over the clean tokens)
    prediction = "x0"
    primary_metric = "kmer_js"
    metric_info = {
        "kmer_js": ("lower", "Jensen-Shannon divergence (bits) of pooled k-mer spectra of samples vs held-out sequences at the "
                             "data set's k (text 3, dna 4, protein 2)"),
        "kmer_js_1": ("lower", "Jensen-Shannon divergence (bits) of token composition (k = 1) of samples vs held-out sequences"),
        "unigram_entropy": ("target: the held-out value (unigram_entropy_ref)",
                            "mean per-sequence entropy (bits) of its own token histogram; low = repetitive"),
        "unigram_entropy_ref": ("target: (reference value)", "unigram_entropy of the held-out sequences"),
        "motif_rate_error": ("lower", "dna: mean |log2| ratio of JASPAR motif hit rates (both strands) of samples vs held-out windows"),
        "family_hit_rate": ("higher", "protein: fraction of samples with a phmmer hit (E <= 1e-3) in the training proteome "
                                      "(held-out ~0.45; copies of training proteins score 1)"),
        "mean_length": ("target: (the held-out mean)", "protein: mean number of real residues per sample"),
        "reference_perplexity": ("lower", "perplexity per real token under the shipped in-repo autoregressive reference model "
                                          "(degenerate repetitive text also scores low: read with unigram_entropy)"),
    }
    teacher_sampler = ("mdlm_ancestral", 256)
    default_sampler = "mdlm_ancestral"
    demo_configs = {"dna": {"dataset": "dna"}}
    demo_fast_samplers = ("mdlm_ancestral", "mdlm_cached", "tau_leaping", "maskgit")
    demo_fast_steps = (8,)
    demo_metrics = ("kmer_js", "reference_perplexity", "unigram_entropy")
    demo_n = 32  # the 256-step teacher row dominates the demo time

    def __init__(self, **config):
        super().__init__(**config)
        c = self.config
        D.check_dataset(c["dataset"])
        if c["process"] not in PROCESSES:
            raise ValueError(f"unknown sequences process {c['process']!r}; valid: {', '.join(PROCESSES)}")
        if c["schedule"] not in SCHEDULES:
            raise ValueError(f"unknown sequences schedule {c['schedule']!r}; valid: {', '.join(SCHEDULES)}")
        if c["dataset"] == "protein" and c["seq_len"] not in (None, D.PROTEIN_MAX_LEN):
            raise ValueError(f"protein sequences are padded to {D.PROTEIN_MAX_LEN}; domain.seq_len must be {D.PROTEIN_MAX_LEN} or unset, got {c['seq_len']}")
        if c["seq_len"] is not None and int(c["seq_len"]) < 1:
            raise ValueError(f"domain.seq_len must be a positive integer, got {c['seq_len']}")
        if c["positions"] not in ("sinusoidal", "rope"):
            raise ValueError(f"unknown sequences positions {c['positions']!r}; valid: sinusoidal, rope")
        for k in ("d_model", "n_layers", "n_heads", "max_reference"):
            if int(c[k]) < 1:
                raise ValueError(f"domain.{k} must be a positive integer, got {c[k]}")
        self._ref: Optional[Batch] = None
        self._ref_stats: dict = {}

    # -- helpers --------------------------------------------------------------------------------
    @property
    def dataset(self) -> str:
        return self.config["dataset"]

    @property
    def seq_len(self) -> int:
        """``N``: the padded length of every state."""
        return int(self.config["seq_len"] or D.DEFAULT_SEQ_LEN[self.dataset])

    @property
    def vocab_size(self) -> int:
        return D.vocab_size(self.dataset)

    @property
    def formats(self) -> tuple:  # type: ignore[override]
        return ("txt", "npz") if self.dataset == "text" else ("fasta", "npz")

    @property
    def train_defaults(self) -> dict:  # type: ignore[override]
        """Teacher training hyper-parameters (AdamW, cosine LR, EMA)."""
        return {"steps": 20000, "batch_size": 64, "lr": 3e-4, "warmup": 500, "schedule": "cosine", "ema_decay": 0.999,
                "ckpt_every": 1000, "grad_clip": 1.0}

    # -- modelling ------------------------------------------------------------------------------
    def process(self):
        """:class:`~workbench.processes.MaskedProcess` or :class:`~workbench.processes.UniformProcess`
        over the data set's vocabulary (``pad_id`` :data:`~domains.sequences.data.PAD_ID`)."""
        cls = MaskedProcess if self.config["process"] == "masked" else UniformProcess
        return cls(self.vocab_size, schedule=self.config["schedule"], pad_id=D.PAD_ID)

    def build_backbone(self, **kwargs) -> SequenceTransformer:
        """A fresh :class:`SequenceTransformer`: ``net(x_t LongTensor [B, N], t [B], mask=[B, N],
        cond=None) -> logits [B, N, vocab_size]``; ``n_states`` is the process's (``V + 1`` with the
        mask token, ``V`` for uniform noise); ``.prediction = "x0"``. ``kwargs`` override the
        config's ``d_model``, ``n_layers``, ``n_heads`` (or other constructor arguments)."""
        arch = {k: (self.config[k] if k == "positions" else int(self.config[k])) for k in ARCH_KEYS}
        arch.update(kwargs)
        net = SequenceTransformer(self.vocab_size, n_states=self.process().n_states, **arch)
        net.prediction = self.prediction
        return net

    def train_data(self, split: str = "train"):
        """:func:`~domains.sequences.data.batch_sampler`: ``f(B, generator) -> Batch(x=[B, N], mask=[B, N])``."""
        return D.batch_sampler(self.dataset, split, self.config["seq_len"])

    def objective(self):
        """:class:`~workbench.losses.MaskedDiffusionELBO` (MDLM's ELBO; cross-entropy on uniform noise)."""
        return MaskedDiffusionELBO(self.process())

    # -- teacher --------------------------------------------------------------------------------
    def default_teacher_path(self) -> Path:
        return CHECKPOINT_DIR / f"{self.dataset}_mdlm.safetensors"

    def teacher_regenerate_command(self) -> str:
        """The command that trained the shipped teacher of this data set (:data:`TEACHER_RECIPES`)."""
        keys = " ".join(f"{k}={v}" for k, v in TEACHER_RECIPES[self.dataset].items())
        return (f"workbench train domain=sequences domain.dataset={self.dataset} {keys} threads=1 "
                f"out=runs/sequences_mdlm/{self.dataset} && cp runs/sequences_mdlm/{self.dataset}/teacher.safetensors "
                f"domains/sequences/checkpoints/{self.dataset}_mdlm.safetensors")

    def check_checkpoint(self, meta: dict, path: Path) -> None:
        """The checkpoint must be a sequences teacher of this ``dataset``, ``process`` and ``schedule``."""
        super().check_checkpoint(meta, path)
        cfg = meta.get("config") or {}
        for key in ("dataset", "process", "schedule"):
            if key in cfg and cfg[key] != self.config[key]:
                raise CheckpointError(f"checkpoint {path} was trained with {key}={cfg[key]!r}, not {self.config[key]!r}; "
                                      f"pass domain.{key}={cfg[key]}")

    def adopt_checkpoint_architecture(self, meta: dict, keys) -> None:
        """Build the backbone with the checkpoint's recorded ``d_model``, ``n_layers``, ``n_heads``."""
        cfg = meta.get("config") or {}
        for k in ARCH_KEYS:
            if k in cfg:
                self.config[k] = cfg[k] if k == "positions" else int(cfg[k])

    def shipped_students(self) -> tuple:
        """The shipped 8-step samplers of this data set's teacher: LSD+ (a learned sampler file)
        and the SDTT student (``checkpoints/README.md``), where their files exist."""
        from workbench.domain import ShippedStudent

        out = []
        for name, desc in (("lsd_plus", "LSD+ learned sampler, 8 steps"), ("sdtt", "SDTT student, 8 ancestral steps")):
            p = CHECKPOINT_DIR / f"{self.dataset}_{name}_8.safetensors"
            if p.exists() and self.config["process"] == "masked" and self.config["schedule"] == "loglinear":
                out.append(ShippedStudent(f"{name}_8step", p, 8, description=desc))
        return tuple(out)

    # -- generation -----------------------------------------------------------------------------
    def generation_batch(self, n: int, *, generator=None, cond: Any = None) -> GenerationBatch:
        """Prior tokens ``x_T`` ``LongTensor [n, N]`` (all masks, or uniform tokens) and ``mask``
        ``[n, N]``: text / dna full windows; protein lengths drawn from the training length
        histogram (:func:`~domains.sequences.data.draw_lengths`), real positions first.
        ``generator``: None, one generator, or ``n`` per-sample generators (row ``i`` then depends
        only on ``generator[i]``)."""
        N = self.seq_len
        if self.dataset == "protein":
            lengths = D.draw_lengths(self.dataset, n, generator)
        else:
            lengths = torch.full((n,), N, dtype=torch.long)
        mask = (torch.arange(N)[None, :] < lengths[:, None]).float()
        x_T = self.process().prior((n, N), generator=generator, mask=mask)
        return GenerationBatch(x_T=x_T, mask=mask, cond=None, info={"lengths": lengths})

    # -- evaluation -----------------------------------------------------------------------------
    def reference_batch(self, n: Optional[int] = None, *, generator=None, split: str = "test") -> Batch:
        """The fixed held-out set (:func:`~domains.sequences.data.reference_batch`): at most
        ``n`` (default ``max_reference``) sequences ``[M, N]`` with ``mask``."""
        return D.reference_batch(self.dataset, split, self.config["seq_len"], n=n or int(self.config["max_reference"]))

    def _reference(self) -> Batch:
        if self._ref is None:
            self._ref = self.reference_batch()
        return self._ref

    def evaluate(self, samples: Batch, *, reference: Optional[Batch] = None) -> dict:
        """Metrics of ``samples`` (``x`` ``[B, N]`` token ids, ``mask`` ``[B, N]``) against the
        held-out ``reference`` (default: :meth:`reference_batch`): ``kmer_js`` (at
        :data:`PRIMARY_K`), ``kmer_js_1``, ``unigram_entropy`` (and the reference's), dna
        ``motif_rate_error``, protein ``family_hit_rate`` and ``mean_length``, and
        ``reference_perplexity`` when the shipped AR reference model of the data set exists."""
        x = torch.as_tensor(samples.x).long()
        mask = torch.ones(x.shape) if samples.mask is None else torch.as_tensor(samples.mask).float()
        s = Batch(x=x, mask=mask)
        own_ref = reference is None
        ref = self._reference() if own_ref else reference
        ref = Batch(x=torch.as_tensor(ref.x).long(), mask=torch.ones(ref.x.shape) if ref.mask is None else ref.mask.float())
        k = PRIMARY_K[self.dataset]
        out = {"kmer_js": M.kmer_js(s, ref, k), "kmer_js_1": M.kmer_js(s, ref, 1),
               "unigram_entropy": M.unigram_entropy(s), "unigram_entropy_ref": self._ref_stat("entropy", own_ref, lambda: M.unigram_entropy(ref))}
        if self.dataset == "dna":
            try:
                ref_rates = self._ref_stat("motifs", own_ref, lambda: M.motif_hit_rates(ref))
                out["motif_rate_error"] = M.motif_rate_error(M.motif_hit_rates(s), ref_rates)
            except (ImportError, D.DatasetUnavailable):
                pass  # pyjaspar missing: the metric is left out (not faked)
        if self.dataset == "protein":
            out["mean_length"] = float(mask.sum(1).mean())
            try:
                out["family_hit_rate"] = M.family_hit_rate(s)
            except (ImportError, D.DatasetUnavailable):
                pass
        lm = self._reference_lm()
        if lm is not None and x.shape[1] <= lm.config_max_len:
            out["reference_perplexity"] = M.reference_perplexity(s, lm)
        return {k2: float(v) for k2, v in out.items()}

    def _ref_stat(self, key: str, cache: bool, fn):
        if not cache:
            return fn()
        if key not in self._ref_stats:
            self._ref_stats[key] = fn()
        return self._ref_stats[key]

    def _reference_lm(self):
        """The shipped AR reference model of the data set, or ``None`` when its file is absent."""
        from .reference_lm import LM_CONFIGS, checkpoint_path, load_reference_lm

        if "lm" not in self._ref_stats:
            p = checkpoint_path(self.dataset)
            lm = load_reference_lm(self.dataset) if p.exists() else None
            if lm is not None:
                lm.config_max_len = int(lm.meta["model_config"].get("max_len", LM_CONFIGS[self.dataset]["max_len"]))
            self._ref_stats["lm"] = lm
        return self._ref_stats["lm"]

    def elbo_perplexity(self, model, *, split: str = "test", repeats: int = 4, batch_size: int = 64, seed: int = 0,
                        max_sequences: Optional[int] = None) -> float:
        """The teacher's perplexity bound on held-out data: ``exp`` of the mean per-token
        negative ELBO (MDLM's, :class:`~workbench.losses.MaskedDiffusionELBO`, antithetic times)
        over every sequence of ``split`` (at most ``max_sequences``), ``repeats`` independent
        time/mask draws each. An upper bound of the model's true perplexity (MDLM reports the
        same bound); compare with the AR reference model's test perplexity."""
        ref = self.reference_batch(max_sequences or 10**9, split=split)
        obj = MaskedDiffusionELBO(self.process())
        g = torch.Generator().manual_seed(seed)
        tot, cnt = 0.0, 0.0
        was = model.training
        model.eval()
        with torch.no_grad():
            for _ in range(int(repeats)):
                for i in range(0, ref.x.shape[0], batch_size):
                    b = Batch(x=ref.x[i:i + batch_size], mask=ref.mask[i:i + batch_size])
                    n_real = b.mask.sum(1).double()
                    tot += float((obj(model, b, g).double() * n_real).sum())
                    cnt += float(n_real.sum())
        model.train(was)
        return float(np.exp(tot / max(cnt, 1.0)))

    # -- reward (reward-guided sampling: svdd) -------------------------------------------------
    def reward(self, samples: Batch) -> torch.Tensor:
        """Per-sample reward ``[B]`` (float64, higher is better) of clean token sequences: dna,
        the best log2-odds PWM score of JASPAR motif ``reward_motif`` (default TBP, the TATA box)
        over both strands (:func:`~domains.sequences.metrics.motif_reward`); protein, the GRAVY
        hydropathy (:func:`~domains.sequences.metrics.gravy`); text has none (a one-line
        ``ValueError`` naming the data sets that have one).
        Not differentiable (token ids)."""
        x = torch.as_tensor(samples.x).long()
        if self.dataset == "dna":
            return M.motif_reward(x, samples.mask, self.config["reward_motif"])
        if self.dataset == "protein":
            return M.gravy(x, samples.mask)
        raise ValueError("the text data set defines no reward; reward-guided sampling (svdd) runs on domain.dataset=dna "
                                  "(JASPAR motif score) or protein (GRAVY hydropathy)")

    # -- I/O ------------------------------------------------------------------------------------
    def decode(self, samples: Batch) -> list[str]:
        """The samples' real tokens as strings (one per sample)."""
        return D.decode(self.dataset, torch.as_tensor(samples.x).long(), samples.mask)

    def save_samples(self, samples: Batch, out_dir: Path) -> list[Path]:
        """``samples.fasta`` (dna, protein; ``>sample_i``) or ``samples.txt`` (text; each sample
        after a ``=== sample_i ===`` line), and ``samples.npz`` (``x`` int64 ``[B, N]``, ``mask``
        float32 ``[B, N]``), all written atomically."""
        from workbench.utils import atomic_path

        from .io import write_fasta, write_text_samples

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        seqs = self.decode(samples)
        if self.dataset == "text":
            main = write_text_samples(out / "samples.txt", seqs)
        else:
            main = write_fasta(out / "samples.fasta", seqs)
        x = torch.as_tensor(samples.x).long().cpu().numpy()
        mask = (np.ones(x.shape, np.float32) if samples.mask is None else torch.as_tensor(samples.mask).float().cpu().numpy())
        npz = out / "samples.npz"
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, x=x, mask=mask)
        return [Path(main), npz]

    def plot(self, samples: Batch, path: Path, *, n_text: int = 6) -> Path:
        """Left: token composition (k = 1 spectrum) of the samples vs the held-out set; right: the
        first ``n_text`` samples as text (truncated to 96 characters)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from workbench.utils import save_figure

        V = self.vocab_size
        x = torch.as_tensor(samples.x).long()
        mask = torch.ones(x.shape) if samples.mask is None else samples.mask.float()
        ref = self._reference()

        def comp(t, m):
            c = torch.bincount(t[m > 0.5].flatten(), minlength=V).double()
            return (c / c.sum().clamp_min(1)).numpy()

        symbols = D.vocab(self.dataset).symbols
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [1, 1.3]})
        idx = np.arange(V)
        a1.bar(idx - 0.2, comp(x, mask), width=0.4, label=f"samples (n={x.shape[0]})")
        a1.bar(idx + 0.2, comp(ref.x.long(), ref.mask), width=0.4, label=f"held-out (n={ref.x.shape[0]})")
        if V <= 30:
            a1.set_xticks(idx, [repr(c)[1:-1] for c in symbols[:V]])
        a1.set_xlabel("token")
        a1.set_ylabel("frequency")
        a1.set_title(f"{self.dataset}: token composition")
        a1.legend(fontsize=8)
        a2.axis("off")
        lines = [s[:96].replace("\n", "\u23ce") for s in self.decode(Batch(x=x[:n_text], mask=mask[:n_text]))]
        a2.text(0, 1, "\n".join(f"{i}: {s}" for i, s in enumerate(lines)), va="top", family="monospace", fontsize=7)
        a2.set_title("first samples")
        return save_figure(fig, path)
