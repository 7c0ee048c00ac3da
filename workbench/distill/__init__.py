"""Few-step distillation: students, consistency distillation (single / multi-segment,
LCM skipping) and MeanFlow. Objectives follow the protocol of :mod:`workbench.losses`
(``objective(nets, batch, generator) -> loss [B]``) and train with the one shared loop
:func:`workbench.training.train`. Core package: it does not import any domain."""
from .base import FewStepGenerator, consistency_output, student_from_teacher, student_x0
from .consistency import ConsistencyDistillation
from .generators import ExpertsGenerator, FlowGenerator, MultiStudentGenerator, TwoTimeGenerator, linear_view
from .meanflow import MeanFlow, TwoTimeMLP, meanflow_generate
from .splitmeanflow import SplitMeanFlow
from .recipes import DistillSetup, RecipeContext, available_methods, build_generator, get_method, register_method, setup_method

__all__ = ["FewStepGenerator", "ConsistencyDistillation", "MeanFlow", "SplitMeanFlow", "TwoTimeMLP", "meanflow_generate",
           "student_from_teacher", "student_x0", "consistency_output", "FlowGenerator", "TwoTimeGenerator", "ExpertsGenerator",
           "MultiStudentGenerator", "linear_view", "DistillSetup", "RecipeContext", "available_methods", "build_generator",
           "get_method", "register_method", "setup_method"]
