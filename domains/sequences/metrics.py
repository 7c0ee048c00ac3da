"""Sample-quality metrics of the ``sequences`` domain.

Inputs: a set of sequences given as a :class:`~workbench.losses.Batch` (``x`` ``LongTensor
[B, N]`` + ``mask`` ``[B, N]``), a ``(tokens, mask)`` pair, a ``LongTensor [B, N]`` (all real) or
a list of strings; the two sides of a comparison must be of the same kind (token ids, or
strings, which are compared by character).

* :func:`kmer_js`: Jensen-Shannon divergence (bits, in ``[0, 1]``) between the k-mer spectra
  (k-mer frequencies pooled over all sequences; k-mers never cross padding) of samples and a
  reference set, k = 1..6. Finite sets bias it upwards at large k: compare sets of equal size.
* :func:`unigram_entropy`: mean over sequences of the entropy (bits) of each sequence's own
  token histogram; low values expose repetitive output (blind to order: shuffling keeps it).
* :func:`motif_hit_rates` (dna): hits per kb of a fixed panel of real JASPAR 2024 CORE
  position weight matrices (:data:`MOTIF_PANEL`, from pip ``pyjaspar``'s bundled SQLite
  database, read offline), scanned on both strands with log2-odds scores against a uniform
  background and a relative-score threshold (:data:`MOTIF_REL_THRESHOLD`);
  :func:`motif_rate_error`: the mean absolute log2 ratio of the samples' per-motif rates to
  the reference's.
* :func:`aa_composition_js` (protein): JS divergence of amino-acid composition (= k = 1).
* :func:`family_hit_rate` (protein): fraction of sequences with a significant (E <= 1e-3)
  pyhmmer ``phmmer`` hit, i.e. a profile-HMM match to a homologous protein family member, in
  the training proteome; :func:`pfam_panel_hit_rate`: fraction hit by the 14 protein profile
  HMMs (Pfam / RREFam / KR / LuxC) shipped in pyhmmer's test data (rare even in real
  proteomes: ~1%).
* :func:`reference_perplexity`: perplexity under the in-repo autoregressive reference model
  (:mod:`.reference_lm`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from workbench.losses import Batch

from . import data as D

Sequences = Union[Batch, tuple, Tensor, Sequence[str]]

MAX_K = 6


def as_arrays(seqs: Sequences) -> list[np.ndarray]:
    """Any accepted sequence-set form -> a list of ``int64`` arrays (the real tokens of each
    sequence; strings become their Unicode code points)."""
    if isinstance(seqs, Batch):
        tokens, mask = seqs.x, seqs.mask
    elif isinstance(seqs, tuple) and len(seqs) == 2 and isinstance(seqs[0], Tensor):
        tokens, mask = seqs
    elif isinstance(seqs, Tensor):
        tokens, mask = seqs, None
    elif isinstance(seqs, (list, tuple)) and all(isinstance(s, str) for s in seqs):
        return [np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32).astype(np.int64) for s in seqs]
    else:
        raise TypeError(f"sequences must be a Batch, a (tokens, mask) pair, a LongTensor [B, N] or a list of str; got {type(seqs).__name__}")
    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 2 or tokens.dtype.is_floating_point:
        raise ValueError(f"tokens must be an integer tensor [B, N], got {tuple(tokens.shape)} {tokens.dtype}")
    t = tokens.cpu().numpy().astype(np.int64)
    if mask is None:
        return list(t)
    m = torch.as_tensor(mask).cpu().numpy() > 0
    if m.shape != t.shape:
        raise ValueError(f"mask {m.shape} must match tokens {t.shape}")
    return [t[i][m[i]] for i in range(t.shape[0])]


def _kind(seqs) -> str:
    return "str" if isinstance(seqs, (list, tuple)) and seqs and all(isinstance(s, str) for s in seqs) else "tokens"


def _codes(arrs: list[np.ndarray], k: int, base: int) -> np.ndarray:
    out = []
    for a in arrs:
        if len(a) < k:
            continue
        c = np.zeros(len(a) - k + 1, dtype=np.int64)
        for j in range(k):
            c = c * base + a[j:len(a) - k + 1 + j]
        out.append(c)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def kmer_spectrum(seqs: Sequences, k: int, base: Optional[int] = None) -> dict:
    """``{k-mer code: count}`` of all k-mers inside the real part of each sequence (code: the
    k-mer read as a base-``base`` number; ``base`` default max id + 1)."""
    arrs = as_arrays(seqs)
    base = base or (max((int(a.max()) for a in arrs if len(a)), default=0) + 1)
    u, c = np.unique(_codes(arrs, k, base), return_counts=True)
    return dict(zip(u.tolist(), c.tolist()))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (bits, ``[0, 1]``) of two count / probability vectors on the
    same support."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a, b):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    return max(0.0, 0.5 * kl(p, m) + 0.5 * kl(q, m))


def kmer_js(samples: Sequences, reference: Sequences, k: int) -> float:
    """Jensen-Shannon divergence (bits) between the pooled k-mer spectra of ``samples`` and
    ``reference`` (k in 1..6); ``nan`` if either side has no k-mer."""
    if not (isinstance(k, int) and 1 <= k <= MAX_K):
        raise ValueError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
    if _kind(samples) != _kind(reference):
        raise TypeError("samples and reference must both be token tensors or both be lists of str")
    a, b = as_arrays(samples), as_arrays(reference)
    base = max((int(x.max()) for x in a + b if len(x)), default=0) + 1
    if base ** k >= 2 ** 62:
        raise ValueError(f"k={k} over {base} symbols overflows int64 k-mer codes")
    ca, cb = _codes(a, k, base), _codes(b, k, base)
    if not len(ca) or not len(cb):
        return float("nan")
    support, inv = np.unique(np.concatenate([ca, cb]), return_inverse=True)
    p = np.bincount(inv[:len(ca)], minlength=len(support))
    q = np.bincount(inv[len(ca):], minlength=len(support))
    return js_divergence(p, q)


def kmer_js_all(samples: Sequences, reference: Sequences, ks=range(1, MAX_K + 1)) -> dict:
    """``{"kmer_js_{k}": value}`` for each ``k`` in ``ks``."""
    return {f"kmer_js_{k}": kmer_js(samples, reference, k) for k in ks}


def sequence_entropies(seqs: Sequences) -> np.ndarray:
    """Entropy (bits) of each sequence's own token histogram ``[B]`` (nan for empty ones)."""
    out = []
    for a in as_arrays(seqs):
        if not len(a):
            out.append(float("nan"))
            continue
        _, c = np.unique(a, return_counts=True)
        p = c / c.sum()
        out.append(float(-(p * np.log2(p)).sum()))
    return np.asarray(out)


def unigram_entropy(seqs: Sequences) -> float:
    """Mean over sequences of the per-sequence unigram entropy (bits); low = repetitive."""
    e = sequence_entropies(seqs)
    return float(np.nanmean(e)) if np.isfinite(e).any() else float("nan")


# -- DNA: JASPAR motifs -------------------------------------------------------------------------
#: the JASPAR release read from pyjaspar's bundled SQLite files (offline)
JASPAR_RELEASE = "JASPAR2024"
#: a fixed panel of well-characterised JASPAR CORE matrices (JASPAR has no prokaryotic
#: collection; these are common eukaryotic motifs, several of which resemble bacterial elements:
#: the TATA box ~ the sigma-70 -10 box TATAAT; AT-rich and GC-rich sites probe the genome's
#: compositional structure). ``id: short name``
MOTIF_PANEL = {
    "MA0108.3": "TBP",        # TATA box, TATAAAA
    "MA0079.5": "SP1",        # GC box, GGGGCGGGG
    "MA0060.4": "NFYA",       # CCAAT box
    "MA0018.5": "CREB1",      # CRE, TGACGTCA
    "MA0099.4": "FOS::JUN",   # AP-1, TGAsTCA
    "MA0093.4": "USF1",       # E-box, CACGTG
    "MA0139.2": "CTCF",       # 15 bp GC-rich insulator motif
    "MA0506.3": "Nrf1",       # GCGCATGCGC
    "MA0102.5": "CEBPA",      # ATTGCACAAT
    "MA0144.3": "STAT3",      # TTCTGGGAA
}
#: a window is a hit when its score >= min + this fraction of (max - min) of the matrix's scores
MOTIF_REL_THRESHOLD = 0.85
#: probability floor of the position frequency matrices (then renormalised)
MOTIF_PSEUDO = 0.01
DNA_COMPLEMENT = [3, 2, 1, 0]  # A<->T, C<->G in DNA_SYMBOLS order (ACGT)


@dataclass(frozen=True)
class Motif:
    """A JASPAR matrix as log2-odds scores ``pssm`` ``[4, w]`` (rows A, C, G, T) against a
    uniform background, and its hit ``threshold`` (absolute score)."""

    matrix_id: str
    name: str
    pssm: Tensor
    threshold: float

    @property
    def width(self) -> int:
        return self.pssm.shape[1]

    @property
    def consensus(self) -> str:
        return "".join(D.DNA_SYMBOLS[i] for i in self.pssm.argmax(0).tolist())


def motif_from_counts(matrix_id: str, name: str, counts: np.ndarray, rel_threshold: float = MOTIF_REL_THRESHOLD) -> Motif:
    """``counts`` ``[4, w]`` (A, C, G, T) -> :class:`Motif`."""
    c = np.asarray(counts, dtype=np.float64)
    p = c / c.sum(0, keepdims=True)
    p = (p + MOTIF_PSEUDO) / (1 + 4 * MOTIF_PSEUDO)
    pssm = np.log2(p / 0.25)
    lo, hi = pssm.min(0).sum(), pssm.max(0).sum()
    return Motif(matrix_id, name, torch.tensor(pssm, dtype=torch.float64), float(lo + rel_threshold * (hi - lo)))


@lru_cache(maxsize=None)
def load_motifs(ids: tuple = tuple(MOTIF_PANEL), release: str = JASPAR_RELEASE) -> tuple:
    """The JASPAR matrices ``ids`` as :class:`Motif` s, read offline from pip ``pyjaspar``."""
    try:
        from pyjaspar import jaspardb
    except ImportError:
        raise D.DatasetUnavailable("pip package 'pyjaspar' is not installed; install it with `pip install -e .[sequences]`") from None
    db = jaspardb(release=release)
    out = []
    for mid in ids:
        m = db.fetch_motif_by_id(mid)
        if m is None:
            raise ValueError(f"JASPAR matrix {mid!r} not found in {release}")
        counts = np.array([m.counts[b] for b in "ACGT"])
        out.append(motif_from_counts(mid, m.name, counts))
    return tuple(out)


def motif_scores(motif: Motif, tokens: Tensor, mask: Optional[Tensor] = None, both_strands: bool = True) -> Tensor:
    """Log2-odds scores of every window: ``tokens`` ``[B, N]`` (DNA ids, ACGT) -> ``[B, N-w+1]``
    float64 (the better strand if ``both_strands``); windows touching padding get ``-inf``. A
    per-sequence reward is ``motif_scores(...).amax(1)``."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    B, N = tokens.shape
    w = motif.width
    if N < w:
        return torch.full((B, 0), float("-inf"), dtype=torch.float64)
    if int(tokens.min()) < 0 or int(tokens.max()) > 3:
        raise ValueError("DNA tokens must be ids 0..3 (ACGT)")
    onehot = torch.nn.functional.one_hot(tokens, 4).to(torch.float64).transpose(1, 2)  # [B, 4, N]
    fwd = torch.nn.functional.conv1d(onehot, motif.pssm[None])[:, 0]
    if both_strands:
        rc = motif.pssm[DNA_COMPLEMENT].flip(1)
        fwd = torch.maximum(fwd, torch.nn.functional.conv1d(onehot, rc[None])[:, 0])
    if mask is not None:
        m = torch.as_tensor(mask, dtype=torch.float64)[:, None]
        full = torch.nn.functional.conv1d(m, torch.ones(1, 1, w, dtype=torch.float64))[:, 0] >= w - 0.5
        fwd = fwd.masked_fill(~full, float("-inf"))
    return fwd


def motif_hit_rates(seqs: Union[Batch, tuple, Tensor], motifs: Optional[Sequence[Motif]] = None) -> dict:
    """``{motif name: hits per kb}`` (a hit: a window at or above the motif's threshold on
    either strand) over DNA token sequences; per kb of real bases."""
    if isinstance(seqs, Batch):
        tokens, mask = seqs.x, seqs.mask
    elif isinstance(seqs, tuple):
        tokens, mask = seqs
    else:
        tokens, mask = seqs, None
    tokens = torch.as_tensor(tokens)
    n_bases = float(tokens.numel() if mask is None else torch.as_tensor(mask).sum())
    if n_bases == 0:
        raise ValueError("no real bases to scan")
    motifs = load_motifs() if motifs is None else motifs
    return {m.name: float((motif_scores(m, tokens, mask) >= m.threshold).sum()) * 1000.0 / n_bases for m in motifs}


def motif_rate_error(sample_rates: dict, reference_rates: dict, floor: float = 0.05) -> float:
    """Mean over motifs of ``|log2((r_s + floor) / (r_ref + floor))|`` (rates in hits per kb;
    ``floor`` keeps absent motifs finite): 0 when the samples' motif profile matches."""
    keys = sorted(reference_rates)
    return float(np.mean([abs(math.log2((sample_rates[k] + floor) / (reference_rates[k] + floor))) for k in keys]))


# -- proteins: composition and profile HMMs ----------------------------------------------------
def aa_composition_js(samples: Sequences, reference: Sequences) -> float:
    """Jensen-Shannon divergence (bits) of the amino-acid compositions (pooled residue
    frequencies) of ``samples`` and ``reference``."""
    return kmer_js(samples, reference, 1)


FAMILY_EVALUE = 1e-3


def _as_protein_strings(seqs) -> list[str]:
    if isinstance(seqs, (list, tuple)) and all(isinstance(s, str) for s in seqs):
        return list(seqs)
    if isinstance(seqs, Batch):
        return D.decode("protein", seqs.x, seqs.mask)
    if isinstance(seqs, tuple):
        return D.decode("protein", *seqs)
    return D.decode("protein", seqs)


def _digital_block(seqs: Sequence[str]):
    import pyhmmer

    alphabet = pyhmmer.easel.Alphabet.amino()
    block = pyhmmer.easel.TextSequenceBlock(
        [pyhmmer.easel.TextSequence(name=f"s{i}".encode(), sequence=s) for i, s in enumerate(seqs)])
    return block.digitize(alphabet)


@lru_cache(maxsize=None)
def _train_proteome_block():
    return _digital_block(D.decode("protein", *_train_tokens()))


def _train_tokens():
    data = D.load_split("protein", "train")
    return D.pad(data.segments, data.seq_len)


def family_hit_rate(samples, evalue: float = FAMILY_EVALUE) -> float:
    """Fraction of ``samples`` (protein tokens, Batch or strings) with a ``phmmer`` hit of
    E-value <= ``evalue`` among the training proteome's proteins (each query is turned into a
    profile HMM with BLOSUM62 priors and searched against the 923 training proteins): the rate
    at which samples belong to a protein family seen in training. Held-out proteins: ~0.45;
    shuffled ones: ~0.01. A model that copies training proteins scores 1, so read it with the
    diversity metrics."""
    try:
        import pyhmmer
    except ImportError:
        raise D.DatasetUnavailable("pip package 'pyhmmer' is not installed; install it with `pip install -e .[sequences]`") from None
    seqs = [s for s in _as_protein_strings(samples) if s]
    if not seqs:
        return float("nan")
    hits = 0
    for top in pyhmmer.hmmer.phmmer(_digital_block(seqs), _train_proteome_block(), cpus=1, E=evalue):
        hits += any(h.evalue <= evalue for h in top)
    return hits / len(seqs)


@lru_cache(maxsize=None)
def panel_hmms() -> tuple:
    """The protein profile HMMs shipped in pyhmmer's test data (``tests/data/hmms/txt``)."""
    import pyhmmer

    root = D._package_dir("pyhmmer") / "tests" / "data" / "hmms" / "txt"
    amino = pyhmmer.easel.Alphabet.amino()
    out = []
    for p in sorted(root.glob("*.hmm")):
        with pyhmmer.plan7.HMMFile(str(p)) as f:
            out.extend(h for h in f if h.alphabet == amino)
    return tuple(out)


def pfam_panel_hit_rate(samples, evalue: float = FAMILY_EVALUE) -> float:
    """Fraction of ``samples`` hit (E <= ``evalue``) by any of :func:`panel_hmms` (Pfam
    2-Hacid_dh_C, LuxC, Thioesterase, KR and 10 RREFam families): ~1% of the real proteome."""
    import pyhmmer

    seqs = [s for s in _as_protein_strings(samples) if s]
    if not seqs:
        return float("nan")
    hit = set()
    for top in pyhmmer.hmmer.hmmsearch(list(panel_hmms()), _digital_block(seqs), cpus=1, E=evalue):
        hit.update(h.name for h in top if h.evalue <= evalue)
    return len(hit) / len(seqs)


# -- reference perplexity ----------------------------------------------------------------------
def reference_perplexity(samples: Union[Batch, tuple, Tensor], lm) -> float:
    """Perplexity (``exp`` mean NLL per real token) of ``samples`` (tokens ``[B, N]`` + mask)
    under ``lm``, the in-repo autoregressive reference model of the data set
    (:func:`.reference_lm.load_reference_lm`). Lower = more like the training data, but
    degenerate repetitive text also scores low: read it with :func:`unigram_entropy`."""
    from .reference_lm import perplexity

    if isinstance(samples, Batch):
        tokens, mask = samples.x, samples.mask
    elif isinstance(samples, tuple):
        tokens, mask = samples
    else:
        tokens, mask = samples, None
    return perplexity(lm, torch.as_tensor(tokens, dtype=torch.long), mask)


# -- bad baselines (the metrics' validation; benchmark floor rows) ------------------------------
def baseline_iid(like: Batch, probs: Tensor, generator: Optional[torch.Generator] = None) -> Batch:
    """i.i.d. tokens from ``probs`` ``[V]`` (e.g. the data's unigram composition) with the
    shape and mask of ``like``."""
    x = torch.multinomial(probs.double(), like.x.numel(), replacement=True, generator=generator).view(like.x.shape)
    if like.mask is not None:
        x = x * (like.mask > 0)
    return Batch(x=x, mask=like.mask)


def baseline_shuffled(like: Batch, generator: Optional[torch.Generator] = None) -> Batch:
    """Each sequence of ``like`` with its real tokens randomly permuted (composition kept,
    order destroyed)."""
    x = like.x.clone()
    mask = torch.ones(x.shape) if like.mask is None else like.mask
    for i in range(x.shape[0]):
        idx = torch.nonzero(mask[i] > 0).squeeze(1)
        x[i, idx] = x[i, idx[torch.randperm(len(idx), generator=generator)]]
    return Batch(x=x, mask=like.mask)


def baseline_repeat(like: Batch, kmer: Tensor) -> Batch:
    """Every sequence of ``like`` filled with the single k-mer ``kmer`` ``[k]`` repeated."""
    kmer = torch.as_tensor(kmer, dtype=torch.long)
    N = like.x.shape[1]
    row = kmer.repeat(N // len(kmer) + 1)[:N]
    x = row[None].expand_as(like.x).clone()
    if like.mask is not None:
        x = x * (like.mask > 0)
    return Batch(x=x, mask=like.mask)


# -- rewards (reward-guided sampling, SVDD) -------------------------------------------------------
#: Kyte & Doolittle 1982 hydropathy index per amino acid (J. Mol. Biol. 157:105, table 2)
KYTE_DOOLITTLE = {"A": 1.8, "R": -4.5, "N": -3.5, "D": -3.5, "C": 2.5, "Q": -3.5, "E": -3.5, "G": -0.4, "H": -3.2, "I": 4.5,
                  "L": 3.8, "K": -3.9, "M": 1.9, "F": 2.8, "P": -1.6, "S": -0.8, "T": -0.7, "W": -0.9, "Y": -1.3, "V": 4.2}


def gravy(tokens: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Grand average of hydropathy (Kyte & Doolittle 1982) of protein token sequences
    ``[B, N]`` over their real residues -> float64 ``[B]`` (ProtParam's GRAVY)."""
    scale = torch.tensor([KYTE_DOOLITTLE[a] for a in D.PROTEIN_SYMBOLS], dtype=torch.float64)
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    m = torch.ones(tokens.shape, dtype=torch.float64) if mask is None else torch.as_tensor(mask).to(torch.float64)
    h = scale[tokens.clamp(0, len(scale) - 1).cpu()].to(m.device)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def motif_reward(tokens: Tensor, mask: Optional[Tensor] = None, motif: str = "TBP") -> Tensor:
    """The best log2-odds score of JASPAR motif ``motif`` (a name of :data:`MOTIF_PANEL`) over
    every window of each DNA sequence, both strands -> float64 ``[B]`` (SVDD's reward for DNA)."""
    names = {v: k for k, v in MOTIF_PANEL.items()}
    if motif not in names:
        raise ValueError(f"unknown motif {motif!r}; valid: {', '.join(names)}")
    (m,) = load_motifs((names[motif],))
    return motif_scores(m, tokens, mask).amax(1)
