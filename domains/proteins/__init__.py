"""Shared protein package of the ``protein_backbone`` and ``structure_prediction`` domains:
the :class:`~domains.proteins.chain.Chain` record, data (real chains from installed packages,
procedural ideal backbones, user directories), PDB/mmCIF I/O, geometry, metrics, ProteinMPNN
and the designability pipeline."""
from .chain import AMINO_ACIDS, BACKBONE_ATOMS, Chain, detokenize, tokenize

__all__ = ["AMINO_ACIDS", "BACKBONE_ATOMS", "Chain", "detokenize", "tokenize"]
