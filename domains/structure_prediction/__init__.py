"""The ``structure_prediction`` domain: protein sequence -> CA trace with a small AlphaFold 3-style
model (trunk + diffusion module) and AF3's diffusion sampler (``af3_edm``); see :mod:`.domain`."""
from .domain import StructurePredictionDomain, StructurePredictorFolder, af3_grid

__all__ = ["StructurePredictionDomain", "StructurePredictorFolder", "af3_grid"]
