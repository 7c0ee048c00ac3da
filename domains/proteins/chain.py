"""The protein chain record shared by the protein domains (``protein_backbone``,
``structure_prediction``), the file readers/writers, the metrics and the designability
pipeline.

A :class:`Chain` is one polypeptide chain: its one-letter sequence and its backbone
coordinates ``[L, 4, 3]`` (atoms N, CA, C, O in Angstrom; ``NaN`` where an atom is missing).
Chains are plain numpy records so that every tool (biotite, tmtools, ProteinMPNN) can take
them without conversion; the domains turn batches of them into padded tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: backbone atoms in the order of ``Chain.coords[:, i]``
BACKBONE_ATOMS = ("N", "CA", "C", "O")
#: the 20 standard amino acids (one-letter codes) in alphabetical order of their three-letter codes;
#: token ``i`` of a sequence is ``AMINO_ACIDS.index(aa)``, unknown residues are token 20 (``X``)
AMINO_ACIDS = "ARNDCQEGHILKMFPSTWYV"
UNKNOWN_TOKEN = 20
THREE_TO_ONE = {
    "ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E", "GLY": "G", "HIS": "H", "ILE": "I",
    "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P", "SER": "S", "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V",
    # common modified residues / protonation variants, mapped to their parent
    "MSE": "M", "HSD": "H", "HSE": "H", "HSP": "H", "HID": "H", "HIE": "H", "HIP": "H", "CYX": "C", "CYM": "C", "ASH": "D",
    "GLH": "E", "LYN": "K", "SEC": "C", "PYL": "K",
}
ONE_TO_THREE = {v: k for k, v in list(THREE_TO_ONE.items())[:20]}


def tokenize(sequence: str) -> np.ndarray:
    """One-letter ``sequence`` -> int64 tokens ``[L]`` (0..19, unknown = 20)."""
    lut = {a: i for i, a in enumerate(AMINO_ACIDS)}
    return np.array([lut.get(a, UNKNOWN_TOKEN) for a in sequence.upper()], dtype=np.int64)


def detokenize(tokens) -> str:
    """Inverse of :func:`tokenize` (token 20 -> ``X``)."""
    return "".join(AMINO_ACIDS[int(t)] if 0 <= int(t) < 20 else "X" for t in np.asarray(tokens).reshape(-1))


@dataclass
class Chain:
    """One protein chain.

    Attributes:
        name: identifier, e.g. ``"1ubq_A"`` (file stem + chain id) or ``"ideal_helix_0"``.
        sequence: one-letter sequence of length ``L`` (``X`` unknown; ``G`` for designed
            backbones without a sequence is NOT assumed: use ``"X" * L``).
        coords: ``[L, 4, 3]`` float32 backbone coordinates (N, CA, C, O) in Angstrom, ``NaN``
            where an atom is absent (e.g. CA-only chains have NaN N/C/O).
        source: the file path or generator the chain came from.
        reconstructed: ``True`` when N, C, O were placed from ideal geometry around a CA trace
            (not observed); writers label such files.
        meta: free-form metadata (e.g. ``{"split": "train"}``).
    """

    name: str
    sequence: str
    coords: np.ndarray
    source: str = ""
    reconstructed: bool = False
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        c = np.asarray(self.coords, dtype=np.float32)
        if c.ndim == 2 and c.shape[-1] == 3:  # a CA trace [L, 3]
            full = np.full((c.shape[0], 4, 3), np.nan, dtype=np.float32)
            full[:, 1] = c
            c = full
        if c.ndim != 3 or c.shape[1:] != (4, 3):
            raise ValueError(f"Chain {self.name!r}: coords must be [L, 4, 3] (N, CA, C, O) or a CA trace [L, 3], got {c.shape}")
        if len(self.sequence) != c.shape[0]:
            raise ValueError(f"Chain {self.name!r}: sequence length {len(self.sequence)} != number of residues {c.shape[0]}")
        self.coords = c

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    @property
    def ca(self) -> np.ndarray:
        """CA coordinates ``[L, 3]``."""
        return self.coords[:, 1]

    @property
    def has_full_backbone(self) -> bool:
        """True when N, CA, C and O are all present for every residue."""
        return bool(np.isfinite(self.coords).all())

    @property
    def tokens(self) -> np.ndarray:
        """Sequence tokens ``[L]`` (see :func:`tokenize`)."""
        return tokenize(self.sequence)
