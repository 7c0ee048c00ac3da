"""The ``protein_backbone`` domain: CA-backbone generation with a small Proteina-like
flow-matching teacher (see :mod:`domains.protein_backbone.domain`)."""
from .domain import ProteinBackboneDomain

__all__ = ["ProteinBackboneDomain"]
