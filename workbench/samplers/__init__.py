"""Training-free samplers: one algorithm per file, each a pure function registered by name.

``available()`` lists the names; ``get(name)`` returns the :class:`SamplerSpec`. Every module
in this package (except ``base``) is imported here, so a new sampler file registers itself.
"""
import importlib
import pkgutil

from .base import SAMPLERS, ModelFn, Prediction, SamplerSpec, available, get, register

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["SAMPLERS", "ModelFn", "Prediction", "SamplerSpec", "available", "get", "register"]
