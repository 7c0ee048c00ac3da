"""The method registry: discovery by module, one validated options dataclass per method, the
text listing, and a method added in one place (in-test and as a new module file)."""
import dataclasses
import json
import sys
import typing

import pytest
import torch

import workbench.distill as distill
from workbench.distill import METHODS, MethodOptions, describe_methods, method_options, setup_method
from workbench.distill.conformance import check_recipe
from distill_helpers import toy_ctx

torch.set_num_threads(1)

KNOWLEDGE = '''
"""Luhman & Luhman 2021 style knowledge distillation: regress the teacher's ODE output."""
from dataclasses import dataclass

import torch

from workbench.api import run_sampler
from workbench.distill.api import DistillSetup, MethodOptions, RecipeContext, register_method
from workbench.distill.base import FewStepGenerator, student_x0
from workbench.distill.students import make_student, student_spec
from workbench.losses import masked_mean


@dataclass
class KnowledgeOptions(MethodOptions):
    teacher_steps: int = 8

    def __post_init__(self):
        super().__post_init__()
        if self.teacher_steps < 1:
            raise ValueError(f"teacher_steps must be >= 1, got {self.teacher_steps}")


class Knowledge:
    def __init__(self, process, teacher_steps):
        self.process, self.teacher_steps = process, teacher_steps

    def __call__(self, nets, batch, generator=None):
        x_T = self.process.prior(batch.x.shape, generator=generator, mask=batch.mask)
        with torch.no_grad():
            target = run_sampler(nets["teacher"], self.process, x_T, sampler="euler", steps=self.teacher_steps,
                                 prediction=nets["teacher"].prediction, mask=batch.mask, cond=batch.cond).x
        x0 = student_x0(nets["student"], self.process, x_T, torch.ones(x_T.shape[0]), mask=batch.mask, cond=batch.cond)
        return masked_mean((x0 - target) ** 2, batch.mask)


@register_method("NAME", options=KnowledgeOptions, kind="consistency", description="regress the teacher's ODE output")
def knowledge_recipe(ctx: RecipeContext, opts: KnowledgeOptions) -> DistillSetup:
    student = make_student(ctx, student_spec(ctx.teacher, ctx.domain))
    return DistillSetup(Knowledge(ctx.process, opts.teacher_steps), {"student": student, "teacher": ctx.teacher}, ["student"],
                        ["student"], lambda n: FewStepGenerator(n["student"], ctx.process))
'''


def _wrong_value(tp):
    """A value that does not fit annotation ``tp``."""
    return "not-a-valid-value" if tp is not str and str not in typing.get_args(tp) else 1.5


def test_every_module_that_registers_a_method_is_discovered():
    import pkgutil
    import re
    from pathlib import Path

    registering = {m.name for m in pkgutil.iter_modules(distill.__path__)
                   if re.search(r"^@register_method\(", (Path(distill.__path__[0]) / f"{m.name}.py").read_text(), re.M)}
    owners = {m.recipe.__module__.rpartition(".")[2] for m in METHODS.values()}
    assert owners == registering and len(METHODS) >= 14


@pytest.mark.parametrize("name", sorted(METHODS))
def test_options_dataclass_defaults_and_type_checks(name):
    m = METHODS[name]
    assert dataclasses.is_dataclass(m.options) and issubclass(m.options, MethodOptions)
    opts = method_options(name, {})
    assert isinstance(opts, m.options) and json.loads(json.dumps(m.defaults(), default=list)) is not None
    hints = typing.get_type_hints(m.options)
    for f in dataclasses.fields(m.options):
        assert hints[f.name] is not typing.Any, f"{name}.{f.name}: annotate the option's type"
        with pytest.raises(ValueError, match=f"{f.name} must be") as e:
            method_options(name, {f.name: _wrong_value(hints[f.name])})
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=f"unknown option\\(s\\) 'nope' for method '{name}'; valid: ") as e:
        method_options(name, {"nope": 1})
    assert all(f"{k}=" in str(e.value) for k in m.defaults())
    text = describe_methods(name)
    assert all(f"distill.{k}=" in text for k in m.defaults())
    assert set(m.requires) <= {"build_two_time_backbone", "slim_backbone_kwargs"}


def test_requirements_are_declared_where_methods_use_domain_capabilities():
    assert METHODS["meanflow"].requires == ("build_two_time_backbone",) == METHODS["splitmeanflow"].requires
    assert METHODS["slimflow"].requires == ("slim_backbone_kwargs",)
    assert METHODS["consistency"].requires == ()


def test_a_method_added_in_one_module_is_listed_and_runs(tmp_path):
    """Adding a method = adding one module to the package: write it into a folder on the
    package path, discover, and it is listed, type-checked and passes the conformance check."""
    folder = tmp_path / "extra"
    folder.mkdir()
    (folder / "knowledge_extra.py").write_text(KNOWLEDGE.replace("NAME", "knowledge_extra"))
    distill.__path__.append(str(folder))
    try:
        assert "knowledge_extra" in distill.discover()
        assert "knowledge_extra (consistency)" in describe_methods() and "distill.teacher_steps=8" in describe_methods()
        with pytest.raises(ValueError, match="teacher_steps must be >= 1"):
            method_options("knowledge_extra", {"teacher_steps": 0})
        d, ctx = toy_ctx("gmm")
        setup = setup_method("knowledge_extra", ctx, {"teacher_steps": 4})
        out = check_recipe(setup, d, decrease_steps=30, lr=1e-4)
        assert out["loss_end"] < out["loss_start"]
    finally:
        distill.__path__.remove(str(folder))
        METHODS.pop("knowledge_extra", None)
        sys.modules.pop("workbench.distill.knowledge_extra", None)
    assert "knowledge_extra" not in distill.available_methods()


def test_a_second_method_of_the_same_name_is_refused():
    @dataclasses.dataclass
    class O(MethodOptions):
        pass

    with pytest.raises(ValueError, match="'consistency' is already registered by workbench.distill.consistency"):
        distill.register_method("consistency", options=O, kind="consistency", description="x")(lambda ctx, opts: None)
    with pytest.raises(TypeError, match="options must be a dataclass type"):
        distill.register_method("x_method", options=dict, kind="consistency", description="x")
