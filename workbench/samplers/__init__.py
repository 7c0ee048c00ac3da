"""Training-free samplers: one algorithm per file, each a pure function registered by name.

``available()`` lists the continuous samplers, ``available(state="discrete")`` the discrete
ones, ``available(process=p)`` those that run on ``p``; ``get(name)`` returns the
:class:`SamplerSpec`; :data:`REGISTRY` holds them all (:data:`SAMPLERS` is its continuous
view). Every module in this package (except ``base`` and ``_``-prefixed helpers) is imported
here, so a new sampler file registers itself.
"""
import importlib
import pkgutil

from ._discrete import DiscreteModelFn
from .base import REGISTRY, SAMPLERS, ModelFn, Prediction, SamplerSpec, available, get, register

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["REGISTRY", "SAMPLERS", "ModelFn", "DiscreteModelFn", "Prediction", "SamplerSpec", "available", "get", "register"]
