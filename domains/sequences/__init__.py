"""The ``sequences`` domain: discrete sequences (character-level Shakespeare, bacterial DNA
windows, bacterial proteins) for masked / uniform discrete diffusion. See ``README.md``."""
from .domain import SequencesDomain

__all__ = ["SequencesDomain"]
