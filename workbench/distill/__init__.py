"""Few-step distillation: students, generators and the methods that train them. Objectives
follow the protocol of :mod:`workbench.losses` (``objective(nets, batch, generator) -> loss
[B]``) and train with the one shared loop :func:`workbench.training.train`. Core package: it
does not import any domain.

Every module of this package is imported here, so a method registers itself by existing:
adding a method is adding one module (see ``docs/design.md``, "How to add a distillation
method"). :func:`discover` imports the modules of any other folder appended to ``__path__``.
"""
import importlib
import pkgutil

from .api import (METHODS, DistillSetup, MethodOptions, RecipeContext, available_methods, describe_methods, get_method,
                  method_options, register_method, setup_method)
from .base import FewStepGenerator, consistency_output, student_from_teacher, student_x0
from .consistency import ConsistencyDistillation
from .generators import (ExpertsGenerator, FlowGenerator, MultiStudentGenerator, TwoTimeGenerator, build_generator,
                         linear_view)
from .meanflow import MeanFlow, TwoTimeMLP, meanflow_generate
from .splitmeanflow import SplitMeanFlow


def discover() -> list[str]:
    """Import every module of this package (``__path__``); returns the method names."""
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not m.name.startswith("_"):
            importlib.import_module(f"{__name__}.{m.name}")
    return available_methods()


discover()

__all__ = ["FewStepGenerator", "ConsistencyDistillation", "MeanFlow", "SplitMeanFlow", "TwoTimeMLP", "meanflow_generate",
           "student_from_teacher", "student_x0", "consistency_output", "FlowGenerator", "TwoTimeGenerator", "ExpertsGenerator",
           "MultiStudentGenerator", "linear_view", "DistillSetup", "RecipeContext", "MethodOptions", "METHODS",
           "available_methods", "build_generator", "get_method", "method_options", "describe_methods", "register_method",
           "setup_method", "discover"]
