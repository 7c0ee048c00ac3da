"""Noise processes: Gaussian (:mod:`.gaussian`) and discrete (:mod:`.discrete`).

ONE time convention for the whole package: ``t`` is a float in ``[0, 1]``; ``t = 0`` is
data and ``t = 1`` is noise (as DPM-Solver and diffusers). Time is always per-sample,
shape ``[B]``.

* Gaussian processes corrupt data as ``x_t = alpha(t) x_0 + sigma(t) eps`` (continuous
  state, ``process.continuous = True``; see :mod:`workbench.processes.gaussian`).
* Discrete processes act on token ids ``LongTensor [B, N]``: ``alpha(t)`` is the probability
  that a token is still clean; the masked (absorbing) process replaces the others by a mask
  token, the uniform process by a uniformly drawn token (``process.continuous = False``;
  see :mod:`workbench.processes.discrete`).

Samplers and ``workbench.sample`` dispatch on ``process.continuous``.
"""
from .discrete import SCHEDULES, DiscreteProcess, MaskedProcess, UniformProcess, categorical, rand64
# every name other modules imported from the former ``workbench/processes.py``, private ones included
from .gaussian import (  # noqa: F401
    PREDICTIONS, VE, _ALIASES, Coefficients, GaussianProcess, Process, RectifiedFlow, VPCosine, VPDiscrete, VPLinear,
    _betas_from_config, _interp, _lin, append_dims, canonical_prediction, from_diffusers, prediction_coefficients, project)

from . import discrete as _discrete
from . import gaussian as _gaussian

__all__ = [*_gaussian.__all__, "canonical_prediction", *_discrete.__all__]
