"""Where the recipe contract lived before :mod:`workbench.distill.api`; kept so that
``from workbench.distill.recipes import ...`` goes on working. New code imports from
:mod:`.api` (contract), :mod:`.students` and :mod:`.generators`."""
from .api import (METHODS, DistillSetup, MethodOptions, RecipeContext, available_methods, describe_methods, get_method,  # noqa: F401
                  method_options, register_method, setup_method)
from .generators import build_generator, upgrade_spec  # noqa: F401
from .students import build_student, make_student, student_spec  # noqa: F401

__all__ = ["RecipeContext", "DistillSetup", "MethodOptions", "METHODS", "register_method", "available_methods", "get_method",
           "method_options", "describe_methods", "setup_method", "build_generator", "upgrade_spec", "student_spec",
           "build_student", "make_student"]
