"""A small protein language model (masked-token transformer) and the sequence-encoder registry
used by the protein domains to turn an amino-acid sequence into per-residue features.

* :class:`ProteinLM`: an ESM-style masked language model (Rives et al. 2021, "Biological
  structure and function emerge from scaling unsupervised learning to 250 million protein
  sequences"; Lin et al. 2023, ESM-2): learned token embeddings, pre-LayerNorm transformer
  blocks with rotary position embeddings (Su et al. 2021, RoFormer eq. 34), trained with the
  BERT objective (Devlin et al. 2019): 15% of the real positions are selected; 80% of those
  are replaced by ``<mask>``, 10% by a random amino acid, 10% kept; the loss is the
  cross-entropy of the original amino acid at the selected positions.
  It is deliberately tiny (a few hundred thousand parameters) so that it trains on one CPU
  thread in minutes; it is a cheap sequence featuriser, not a substitute for ESM-2.
* :func:`load_plm`: the checkpoint shipped in ``domains/proteins/checkpoints/plm.safetensors``
  (trained by :mod:`domains.proteins.train_plm`) or a user ``.safetensors`` file.
* :func:`get_sequence_encoder`: ``"onehot"`` (21-dim one-hot), ``"plm"`` (the shipped model's
  last hidden states), ``"esm"`` (fair-esm with user-supplied weights; wiring only).
* :func:`protein_sequences`: the training data, ~2,100 real bacterial proteins (the predicted
  proteome FASTA ``938293.PRJEB85.HG003687.faa`` shipped as test data inside the ``pyhmmer``
  package, MIT licence), read from the installed package at run time and split train/val by a
  hash of the sequence.

Token alphabet: ``0..19`` the standard amino acids in the order of
:data:`domains.proteins.chain.AMINO_ACIDS`, ``20`` unknown (``X``; also the padding value of
``cond["aatype"]`` in the protein data), ``21`` ``<mask>``, ``22`` ``<pad>``. The output head
predicts the 20 standard amino acids only (``V = 20``).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .chain import AMINO_ACIDS, UNKNOWN_TOKEN, tokenize

#: token ids beyond the 21 residue tokens (0..19 amino acids, 20 unknown)
MASK_TOKEN = 21
PAD_TOKEN = 22
VOCAB_SIZE = 23
#: number of output classes (the 20 standard amino acids)
N_CLASSES = 20
#: the shipped checkpoint
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "plm.safetensors"
#: the FASTA file (inside the installed ``pyhmmer`` package) the shipped model was trained on
DATA_PACKAGE = "pyhmmer.tests"
DATA_FILE = "data/seqs/938293.PRJEB85.HG003687.faa"
SEQUENCE_ENCODERS = ("onehot", "plm", "esm")


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def read_fasta(text: str) -> list[tuple[str, str]]:
    """Parse FASTA ``text`` -> ``[(name, sequence)]``; the name is the header's first word,
    sequences are upper-cased, whitespace and a trailing stop codon ``*`` are removed."""
    out, name, parts = [], None, []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            if name is not None:
                out.append((name, "".join(parts).upper().rstrip("*")))
            name, parts = (line[1:].split() or [""])[0], []
        elif name is None:
            raise ValueError(f"FASTA text does not start with a '>' header line: {line[:40]!r}")
        else:
            parts.append(line)
    if name is not None:
        out.append((name, "".join(parts).upper().rstrip("*")))
    return out


def sequence_split(sequence: str, *, val_fraction: float = 0.1) -> str:
    """``"train"`` or ``"val"`` from the SHA-1 of the sequence (identical sequences always land
    in the same split; independent of file order)."""
    h = int.from_bytes(hashlib.sha1(sequence.encode()).digest()[:8], "big") / 2.0**64
    return "val" if h < val_fraction else "train"


_SEQ_CACHE: dict = {}


def protein_sequences(split: str = "train", *, min_len: int = 30, val_fraction: float = 0.1) -> list[tuple[str, str]]:
    """Real protein sequences ``[(name, sequence)]`` from the predicted proteome shipped as test
    data in the installed ``pyhmmer`` package (2,100 proteins of one bacterial genome,
    ~680k residues). Deduplicated by sequence, in file order; ``split`` in ``train``, ``val``,
    ``all`` (hash split, see :func:`sequence_split`)."""
    if split not in ("train", "val", "all"):
        raise ValueError(f"unknown split {split!r}; valid: train, val, all")
    key = (min_len, val_fraction)
    if key not in _SEQ_CACHE:
        try:
            from importlib.resources import files

            text = files(DATA_PACKAGE).joinpath(DATA_FILE).read_text()
        except ModuleNotFoundError:
            raise ModuleNotFoundError("the protein language model data needs the pyhmmer package (pip install pyhmmer)") from None
        seen, records = set(), []
        for name, seq in read_fasta(text):
            if len(seq) >= min_len and seq not in seen:
                seen.add(seq)
                records.append((name, seq))
        _SEQ_CACHE[key] = records
    records = _SEQ_CACHE[key]
    if split == "all":
        return list(records)
    return [r for r in records if sequence_split(r[1], val_fraction=val_fraction) == split]


def unigram_frequencies(sequences: list[str]) -> np.ndarray:
    """Frequencies ``[20]`` of the standard amino acids in ``sequences`` (unknowns ignored)."""
    counts = np.zeros(N_CLASSES, dtype=np.float64)
    for s in sequences:
        t = tokenize(s)
        counts += np.bincount(t[t < N_CLASSES], minlength=N_CLASSES)
    return counts / counts.sum()


def pad_tokens(token_lists: list, *, length: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Right-pad 1-D token arrays -> ``tokens`` long ``[B, N]`` (padding = :data:`PAD_TOKEN`)
    and ``mask`` float ``[B, N]`` (1 at real positions)."""
    n = length if length is not None else max(len(t) for t in token_lists)
    tokens = torch.full((len(token_lists), n), PAD_TOKEN, dtype=torch.long)
    mask = torch.zeros(len(token_lists), n)
    for i, t in enumerate(token_lists):
        t = torch.as_tensor(np.asarray(t)[:n], dtype=torch.long)
        tokens[i, : len(t)] = t
        mask[i, : len(t)] = 1.0
    return tokens, mask


def mask_tokens(tokens: Tensor, mask: Tensor, generator: Optional[torch.Generator] = None, *, rate: float = 0.15,
                p_mask: float = 0.8, p_random: float = 0.1) -> tuple[Tensor, Tensor]:
    """BERT/ESM corruption (Devlin et al. 2019, Sec. 3.1): select ``rate`` of the real
    standard-amino-acid positions; of those ``p_mask`` -> ``<mask>``, ``p_random`` -> a
    uniformly random amino acid, the rest unchanged.

    Args:
        tokens: long ``[B, N]``; mask: ``[B, N]`` (1 real).
    Returns:
        ``(corrupted tokens [B, N], selected bool [B, N])``; the loss targets are
        ``tokens[selected]``.
    """
    dev = tokens.device
    u = torch.rand(tokens.shape, generator=generator, device=generator.device if generator is not None else dev).to(dev)
    v = torch.rand(tokens.shape, generator=generator, device=generator.device if generator is not None else dev).to(dev)
    r = torch.randint(0, N_CLASSES, tokens.shape, generator=generator, device=generator.device if generator is not None else dev).to(dev)
    selected = (u < rate) & (mask > 0) & (tokens < N_CLASSES)
    out = tokens.clone()
    out = torch.where(selected & (v < p_mask), torch.full_like(tokens, MASK_TOKEN), out)
    out = torch.where(selected & (v >= p_mask) & (v < p_mask + p_random), r, out)
    return out, selected


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------
def rotary_tables(n: int, dim: int, *, base: float = 10000.0, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """``cos, sin`` ``[n, dim]`` of rotary position embeddings (Su et al. 2021, eq. 34):
    frequency ``theta_i = base^(-2i/dim)`` for the pair ``(x_i, x_{i+dim/2})``."""
    inv = base ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    ang = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv[None]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` ``[..., N, dim]`` by position (half-split rotary convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Block(nn.Module):
    """Pre-LN transformer block: ``h += MHA(LN(h))`` with rotary queries/keys and a key padding
    mask, then ``h += MLP(LN(h))`` (GELU, 4x width)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"dim {dim} must be divisible by heads {heads} into an even head size")
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, h: Tensor, key_mask: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, n, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        h = h + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return h + self.mlp(self.ln2(h))


class ProteinLM(nn.Module):
    """Small ESM-style masked protein language model.

    Args:
        dim: hidden size ``D``; depth: number of transformer blocks; heads: attention heads.
    Shapes:
        ``forward(tokens [B, N] long, mask [B, N]) -> logits [B, N, 20]`` over the standard
        amino acids; ``embed(tokens, mask) -> [B, N, D]`` (final LayerNorm'd hidden states, zero
        at padding). Tokens: 0..19 amino acids, 20 unknown, 21 ``<mask>``, 22 ``<pad>``;
        positions with ``mask == 0`` are treated as padding whatever their token, and real
        positions never attend to them, so padding does not change real positions' outputs.
    """

    def __init__(self, dim: int = 96, depth: int = 4, heads: int = 4):
        super().__init__()
        self.config = {"dim": int(dim), "depth": int(depth), "heads": int(heads)}
        self.dim = int(dim)
        self.tok = nn.Embedding(VOCAB_SIZE, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, N_CLASSES)
        nn.init.normal_(self.tok.weight, std=0.02)

    def embed(self, tokens: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Last hidden states ``[B, N, D]`` (zero at padding)."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, N], got {tuple(tokens.shape)}")
        if mask is None:
            mask = torch.ones(tokens.shape, device=tokens.device)
        real = mask > 0
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= VOCAB_SIZE):
            raise ValueError(f"tokens must lie in 0..{VOCAB_SIZE - 1} (0-19 amino acids, 20 X, 21 mask, 22 pad)")
        tokens = torch.where(real, tokens, torch.full_like(tokens, PAD_TOKEN))
        # a row with no real token would give an all-masked softmax (NaN); let it attend anywhere
        key_mask = real | ~real.any(dim=1, keepdim=True)
        h = self.tok(tokens)
        cos, sin = rotary_tables(tokens.shape[1], self.dim // self.blocks[0].heads if len(self.blocks) else 2, device=h.device, dtype=h.dtype)
        for blk in self.blocks:
            h = blk(h, key_mask, cos, sin)
        return self.ln_f(h) * real[..., None].to(h.dtype)

    def forward(self, tokens: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Logits ``[B, N, 20]`` of the amino acid at every position."""
        return self.head(self.embed(tokens, mask))


class MaskedLMLoss:
    """Per-sequence masked-LM loss for :func:`workbench.training.train`: the mean cross-entropy
    over the selected positions of each sequence (Devlin et al. 2019 / Rives et al. 2021
    objective; :func:`mask_tokens` corruption). ``batch.x`` = tokens ``[B, N]``,
    ``batch.mask`` ``[B, N]``; returns ``[B]`` (0 for a sequence with no selected position)."""

    def __init__(self, rate: float = 0.15, p_mask: float = 0.8, p_random: float = 0.1):
        self.rate, self.p_mask, self.p_random = float(rate), float(p_mask), float(p_random)

    def __call__(self, nets, batch, generator=None) -> Tensor:
        model = nets["model"] if isinstance(nets, dict) else nets
        tokens, mask = batch.x, batch.mask
        inp, sel = mask_tokens(tokens, mask, generator, rate=self.rate, p_mask=self.p_mask, p_random=self.p_random)
        logits = model(inp, mask)
        nll = F.cross_entropy(logits.transpose(1, 2), tokens.clamp_max(N_CLASSES - 1), reduction="none")
        sel = sel.to(nll.dtype)
        return (nll * sel).sum(1) / sel.sum(1).clamp_min(1.0)


@torch.no_grad()
def evaluate_masked_lm(model: Optional[nn.Module], sequences: list[str], *, frequencies: Optional[np.ndarray] = None, crop: int = 256,
                       rate: float = 0.15, seed: int = 0, batch_size: int = 32) -> dict:
    """Held-out masked-token accuracy and perplexity.

    Every sequence is cut into consecutive windows of ``crop`` residues; in each window a
    fixed (``seed``) ``rate`` fraction of the standard-amino-acid positions is replaced by
    ``<mask>`` and predicted. ``perplexity = exp(mean NLL)`` over those positions (natural
    log, 20 classes). With ``model=None`` the same positions are scored by the unigram
    baseline ``frequencies`` ``[20]`` (argmax = the most frequent amino acid).

    Returns:
        ``{"accuracy", "perplexity", "nll", "n_tokens"}``.
    """
    windows = []
    for s in sequences:
        t = tokenize(s)
        windows += [t[i:i + crop] for i in range(0, len(t), crop)]
    g = torch.Generator().manual_seed(seed)
    correct, nll_sum, count = 0, 0.0, 0
    if model is not None:
        model.eval()
        dev = next(model.parameters()).device
    for i in range(0, len(windows), batch_size):
        tokens, mask = pad_tokens(windows[i:i + batch_size])
        u = torch.rand(tokens.shape, generator=g)
        sel = (u < rate) & (mask > 0) & (tokens < N_CLASSES)
        target = tokens[sel]
        if model is None:
            if frequencies is None:
                raise ValueError("evaluate_masked_lm needs a model or unigram frequencies")
            logp = torch.log(torch.as_tensor(frequencies, dtype=torch.float64))[None].expand(len(target), -1)
        else:
            inp = torch.where(sel, torch.full_like(tokens, MASK_TOKEN), tokens)
            logp = torch.log_softmax(model(inp.to(dev), mask.to(dev)).double(), dim=-1).cpu()[sel]
        nll_sum += float(-logp.gather(1, target[:, None]).sum())
        correct += int((logp.argmax(1) == target).sum())
        count += int(target.numel())
    nll = nll_sum / max(count, 1)
    return {"accuracy": correct / max(count, 1), "perplexity": math.exp(nll), "nll": nll, "n_tokens": count}


def load_plm(path: Optional[Union[str, Path]] = None, *, device="cpu") -> ProteinLM:
    """The shipped :class:`ProteinLM` (``path=None``) or one saved by
    :mod:`domains.proteins.train_plm` at ``path`` (safetensors only: no code runs on load).
    The architecture comes from the file's metadata. Returned in eval mode."""
    from workbench.checkpoint import CheckpointError, load_into, load_weights

    p = Path(path) if path is not None else SHIPPED_CHECKPOINT
    _, meta = load_weights(p)
    cfg = meta.get("config")
    if not isinstance(cfg, dict) or set(cfg) != {"dim", "depth", "heads"}:
        raise CheckpointError(f"{p} is not a ProteinLM checkpoint (no 'config' with dim/depth/heads in its metadata)")
    model = ProteinLM(**cfg)
    load_into(model, p)
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------
# sequence encoders
# ----------------------------------------------------------------------------------------------
def _check_aatype(aatype: Tensor, mask: Optional[Tensor]) -> Tensor:
    if aatype.ndim != 2:
        raise ValueError(f"aatype must be [B, N], got {tuple(aatype.shape)}")
    if mask is None:
        mask = torch.ones(aatype.shape, device=aatype.device)
    if mask.shape != aatype.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match aatype {tuple(aatype.shape)}")
    return mask


class OneHotEncoder(nn.Module):
    """``aatype`` ``[B, N]`` (0..19 amino acids, 20 unknown) -> one-hot ``[B, N, 21]``, zero at
    padding. ``dim = 21``."""

    dim = 21

    def forward(self, aatype: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        mask = _check_aatype(aatype, mask)
        if aatype.numel() and (int(aatype.min()) < 0 or int(aatype.max()) > UNKNOWN_TOKEN):
            raise ValueError(f"aatype must lie in 0..{UNKNOWN_TOKEN} (20 = unknown)")
        return F.one_hot(aatype, self.dim).float() * (mask > 0)[..., None].float()


class PLMEncoder(nn.Module):
    """Per-residue features from :class:`ProteinLM` (its last hidden states, ``dim = D``).

    Args:
        model: a ProteinLM (default: the shipped checkpoint, or ``path``).
        trainable: ``False`` (default) freezes the weights and always runs in eval mode, so
            the features are a fixed function of the sequence.
    """

    def __init__(self, model: Optional[ProteinLM] = None, *, path=None, trainable: bool = False):
        super().__init__()
        self.plm = model if model is not None else load_plm(path)
        self.trainable = bool(trainable)
        self.dim = self.plm.dim
        if not self.trainable:
            self.plm.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable:
            self.plm.eval()
        return self

    def forward(self, aatype: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        mask = _check_aatype(aatype, mask)
        if aatype.numel() and (int(aatype.min()) < 0 or int(aatype.max()) > UNKNOWN_TOKEN):
            raise ValueError(f"aatype must lie in 0..{UNKNOWN_TOKEN} (20 = unknown)")
        if self.trainable:
            return self.plm.embed(aatype, mask)
        with torch.no_grad():
            return self.plm.embed(aatype, mask)


class ESMEncoder(nn.Module):
    """Per-residue features from a fair-esm model (Lin et al. 2023) loaded from a local
    weights file (e.g. ``esm2_t6_8M_UR50D.pt``; nothing is downloaded). Frozen; ``dim`` is the
    model's embedding size; BOS/EOS tokens are added and stripped.

    The ``.pt`` file is read with ``torch.load(weights_only=True)`` (plus ``argparse.Namespace``,
    which ESM-1 checkpoints store their arguments in, as an allowed type)."""

    def __init__(self, weights: Union[str, Path], *, layer: int = -1):
        super().__init__()
        import argparse

        import esm  # noqa: F401  (checked by the registry)

        weights = Path(weights)
        if hasattr(torch.serialization, "add_safe_globals"):  # torch >= 2.4
            torch.serialization.add_safe_globals([argparse.Namespace])
        try:
            data = torch.load(str(weights), map_location="cpu", weights_only=True)
            reg_path = weights.with_name(weights.stem + "-contact-regression.pt")
            reg = torch.load(str(reg_path), map_location="cpu", weights_only=True) if reg_path.exists() else None
            model, alphabet = esm.pretrained.load_model_and_alphabet_core(weights.stem, data, reg)
        except Exception as e:
            raise ValueError(f"cannot load ESM weights {weights}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        self.esm = model.eval().requires_grad_(False)
        self.layer = model.num_layers if layer == -1 else int(layer)
        self.dim = int(model.embed_dim)
        lut = [alphabet.get_idx(a) for a in AMINO_ACIDS] + [alphabet.get_idx("X")]
        self.register_buffer("lut", torch.tensor(lut, dtype=torch.long), persistent=False)
        self.bos, self.eos, self.pad = alphabet.cls_idx, alphabet.eos_idx, alphabet.padding_idx

    def train(self, mode: bool = True):
        super().train(mode)
        self.esm.eval()
        return self

    @torch.no_grad()
    def forward(self, aatype: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        mask = _check_aatype(aatype, mask)
        real = mask > 0
        b, n = aatype.shape
        toks = torch.full((b, n + 2), self.pad, dtype=torch.long, device=aatype.device)
        toks[:, 1:-1] = torch.where(real, self.lut[aatype.clamp(0, UNKNOWN_TOKEN)], torch.full_like(aatype, self.pad))
        toks[:, 0] = self.bos
        lengths = real.sum(1)
        toks[torch.arange(b, device=aatype.device), lengths + 1] = self.eos
        rep = self.esm(toks, repr_layers=[self.layer])["representations"][self.layer][:, 1:-1]
        return rep * real[..., None].to(rep.dtype)


def get_sequence_encoder(name: str, **kwargs) -> nn.Module:
    """A sequence encoder ``forward(aatype [B, N] long, mask [B, N]) -> [B, N, D]`` with ``.dim``.

    * ``"onehot"``: 21-dim one-hot (:class:`OneHotEncoder`), no options;
    * ``"plm"``: the shipped :class:`ProteinLM`'s last hidden states (:class:`PLMEncoder`;
      options ``path=None``, ``trainable=False``);
    * ``"esm"``: a fair-esm model from a local file (:class:`ESMEncoder`; options
      ``weights=PATH`` (required), ``layer=-1``); needs the ``fair-esm`` package.
    """
    if name == "onehot":
        if kwargs:
            raise ValueError(f"sequence encoder 'onehot' takes no options, got {sorted(kwargs)}")
        return OneHotEncoder()
    if name == "plm":
        bad = sorted(set(kwargs) - {"path", "trainable", "model"})
        if bad:
            raise ValueError(f"unknown options {bad} for sequence encoder 'plm'; valid: path, trainable, model")
        return PLMEncoder(**kwargs)
    if name == "esm":
        bad = sorted(set(kwargs) - {"weights", "layer"})
        if bad:
            raise ValueError(f"unknown options {bad} for sequence encoder 'esm'; valid: weights, layer")
        try:
            import esm

            esm.pretrained.load_model_and_alphabet_core  # noqa: B018  (fair-esm, not EvolutionaryScale's esm)
        except (ImportError, AttributeError):
            raise ImportError("sequence encoder 'esm' needs the fair-esm package (pip install fair-esm) and a local weights file "
                              "(weights=PATH, e.g. esm2_t6_8M_UR50D.pt); missing: fair-esm") from None
        weights = kwargs.get("weights")
        if weights is None or not Path(weights).is_file():
            raise FileNotFoundError(f"sequence encoder 'esm' needs a local weights file (weights=PATH, e.g. esm2_t6_8M_UR50D.pt); "
                                    f"missing: {'weights=' if weights is None else weights}")
        return ESMEncoder(weights, layer=kwargs.get("layer", -1))
    raise ValueError(f"unknown sequence encoder {name!r}; valid: {', '.join(SEQUENCE_ENCODERS)}")
