"""fewstep-workbench: few-step generation for scientific domains.

Public API (stable): :func:`sample`, :func:`run_sampler`, :mod:`workbench.processes`
(``from_diffusers``), :mod:`workbench.samplers` (``available()``), :mod:`workbench.timegrids`.
"""
from . import processes, samplers, timegrids
from .api import SampleOutput, run_sampler, sample
from .losses import Batch

__version__ = "0.1.0"
__all__ = ["Batch", "sample", "run_sampler", "SampleOutput", "processes", "samplers", "timegrids", "__version__"]
