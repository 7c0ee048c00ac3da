"""Distillation recipes: how a method is set up on ANY domain, so the CLI, notebooks and the
benchmark run every method the same way.

A recipe is a function registered with :func:`register_method`::

    @register_method("consistency", kind="consistency", description="...")
    def consistency(ctx: RecipeContext, *, segments=1, skip=1, ...) -> DistillSetup

It receives a :class:`RecipeContext` (the domain, its frozen teacher, ``student_steps``,
the output directory for caches, the device, a seed) plus the method's keyword options
(``distill.*`` keys on the command line), and returns a :class:`DistillSetup`: the objective,
the named nets, which of them train / keep an EMA, the data sampler (default: the domain's
training data) and the *generator spec*. The spec is a JSON dict stored in the exported
``generator.safetensors`` header; :func:`build_generator` rebuilds the generator module from
it and the domain, so a checkpoint needs nothing but the domain to load.

Generator specs (see :mod:`workbench.distill.generators`):

* ``{"kind": "consistency", "student": S, "parameterization": "x0", "sigma_data": 0.5,
  "timesteps": [...] | None}``
* ``{"kind": "flow", "student": S, "sampler": "euler", "timesteps": [...] | None, "options": {}}``
* ``{"kind": "meanflow", "student": S}`` (``S`` with ``"two_time": true``)
* ``{"kind": "experts", "n": K, "boundaries": [...], "inner": consistency spec,
  "transition": "deterministic" | "renoise"}`` (absent: ``"renoise"``, the earlier files)
* ``{"kind": "multi_student", "n": K, "router": "cond" | "noise", "inner": spec}``

with the student ``S = {"backbone": {kwargs of domain.build_backbone}, "prediction": name,
"two_time": bool}``.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

__all__ = ["RecipeContext", "DistillSetup", "register_method", "available_methods", "get_method", "setup_method",
           "build_generator", "student_spec", "build_student", "make_student", "METHOD_INFO"]


@dataclass
class RecipeContext:
    """What a recipe gets: the domain, its frozen teacher (eval, no grad), the number of
    student steps, an output directory for caches (``None`` in memory), device and seed."""

    domain: Any
    teacher: nn.Module
    student_steps: int = 4
    out_dir: Optional[Path] = None
    device: str = "cpu"
    seed: int = 0
    #: the user's ``train.*`` overrides (recipes with inner trainings, e.g. reflow rounds, start from them)
    train: dict = field(default_factory=dict)

    @classmethod
    def for_domain(cls, domain, *, teacher: Optional[str] = None, **kw) -> "RecipeContext":
        """The context of ``domain`` with its teacher (shipped, or the checkpoint ``teacher``)
        loaded frozen: ``RecipeContext.for_domain(ToyDomain(), student_steps=2)``; ``kw`` sets
        the other fields."""
        net = domain.load_teacher(teacher, device=kw.get("device", "cpu")).requires_grad_(False)
        return cls(domain=domain, teacher=net, **kw)

    @property
    def process(self):
        return self.domain.process()

    @property
    def prediction(self) -> str:
        return getattr(self.teacher, "prediction", self.domain.prediction)


@dataclass
class DistillSetup:
    """A method ready for the shared loop (:func:`workbench.training.train`).

    Attributes:
        objective: ``objective(nets, batch, generator[, phase=]) -> loss [B]``.
        nets: named modules (the frozen ``"teacher"`` included).
        trainable: names the loop optimises.
        ema: names the loop keeps an EMA of (the exported weights of those nets are the EMA).
        spec: the generator spec (module docstring).
        make_generator: ``make_generator(nets) -> generator module`` from trained nets
            (EMA copies substituted); its ``state_dict`` is what is exported.
        data: ``data(batch_size, generator) -> Batch`` (default: the domain's training data).
        train_defaults: TrainConfig overrides the method prefers (the user's keys win).
        info: JSON facts for the report (e.g. the size of the student).
    """

    objective: Any
    nets: dict
    trainable: list
    ema: list
    spec: dict
    make_generator: Callable[[dict], nn.Module]
    data: Optional[Callable] = None
    train_defaults: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


@dataclass
class MethodInfo:
    name: str
    fn: Callable
    kind: str
    description: str
    paper: str


METHOD_INFO: dict[str, MethodInfo] = {}


def register_method(name: str, *, kind: str, description: str, paper: str = ""):
    """Register a recipe ``fn(ctx, **options) -> DistillSetup`` under ``name``."""

    def deco(fn):
        METHOD_INFO[name] = MethodInfo(name, fn, kind, description, paper)
        return fn

    return deco


def available_methods() -> list[str]:
    _load_all()
    return sorted(METHOD_INFO)


def get_method(name: str) -> MethodInfo:
    _load_all()
    if name not in METHOD_INFO:
        raise ValueError(f"unknown distillation method {name!r}; valid: {', '.join(sorted(METHOD_INFO))}")
    return METHOD_INFO[name]


def _load_all() -> None:
    """Import the modules that register recipes (kept lazy: importing them pulls every
    method)."""
    from . import _methods  # noqa: F401


def setup_method(name: str, ctx: RecipeContext, options: Optional[dict] = None) -> DistillSetup:
    """Run recipe ``name`` with ``options``; unknown option names give a one-line error that
    lists the valid ones."""
    info = get_method(name)
    options = dict(options or {})
    params = inspect.signature(info.fn).parameters
    valid = [k for k, p in params.items() if p.kind == p.KEYWORD_ONLY]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for method {name!r}; valid: {', '.join(valid) or '(none)'}")
    return info.fn(ctx, **options)


# -- students ------------------------------------------------------------------------------------
def student_spec(teacher: nn.Module, domain, *, backbone: Optional[dict] = None, prediction: Optional[str] = None,
                 two_time: bool = False) -> dict:
    """The JSON description of a student: ``domain.build_backbone(**backbone)`` (``{}`` = the
    teacher's architecture, so it can start from the teacher's weights). The prediction is
    the teacher's, or the domain backbone's for an analytic (weightless) teacher."""
    weightless = not any(True for _ in teacher.parameters())
    default = domain.prediction if weightless else getattr(teacher, "prediction", domain.prediction)
    return {"backbone": dict(backbone or {}), "prediction": prediction or default,
            "two_time": bool(two_time)}


def build_student(domain, spec: dict) -> nn.Module:
    """A fresh student module from :func:`student_spec` output."""
    kw = dict(spec.get("backbone") or {})
    if spec.get("two_time"):  # an average-velocity net u(z, r, t) (MeanFlow students)
        return domain.build_backbone(two_time=True, **kw)
    net = domain.build_backbone(**kw)
    if spec.get("prediction") and hasattr(net, "prediction"):
        net.prediction = spec["prediction"]
    return net


def make_student(ctx: RecipeContext, spec: dict, *, init: str = "teacher") -> nn.Module:
    """A trainable student: ``init="teacher"`` copies the teacher's weights when the
    architecture is the teacher's (``spec["backbone"] == {}``; the SlimFlow / consistency
    initialisation), else (smaller students, two-time students) loads every teacher tensor
    whose name and shape match and leaves the rest at their fresh initialisation.

    A student whose ``spec["prediction"]`` differs from the teacher's (e.g. MDT-dist's ``v``
    student of an epsilon teacher) gets the teacher's weights read in its own
    parameterisation: it does not start as the teacher (recipes that do this say so)."""
    if init not in ("teacher", "scratch"):
        raise ValueError(f"unknown student init {init!r}; valid: teacher, scratch")
    torch.manual_seed(ctx.seed)
    weightless = not any(True for _ in ctx.teacher.parameters())
    if weightless:  # an analytic teacher (e.g. the toy's exact denoiser): start from the shipped network, if any
        st = build_student(ctx.domain, spec)
        path = ctx.domain.default_teacher_path() if init == "teacher" else None
        if path is not None and Path(path).exists() and not spec.get("backbone") and not spec.get("two_time"):
            from ..checkpoint import load_into

            load_into(st, path)
        elif path is not None and Path(path).exists():
            _load_matching(st, ctx.domain.load_teacher(str(path)))
    elif init == "teacher" and not spec.get("backbone") and not spec.get("two_time"):
        st = copy.deepcopy(ctx.teacher)
        if spec.get("prediction"):
            st.prediction = spec["prediction"]
    else:
        st = build_student(ctx.domain, spec)
        if init == "teacher":
            _load_matching(st, ctx.teacher)
    return st.to(ctx.device).train().requires_grad_(True)


def _load_matching(student: nn.Module, source: nn.Module) -> None:
    """Copy every tensor of ``source`` whose name and shape match one of ``student``."""
    tsd = source.state_dict()
    own = student.state_dict()
    own.update({k: v for k, v in tsd.items() if k in own and own[k].shape == v.shape})
    student.load_state_dict(own)


# -- generators ----------------------------------------------------------------------------------
def build_generator(domain, spec: dict) -> nn.Module:
    """The (untrained) generator module described by ``spec`` for ``domain``; load the
    exported ``state_dict`` into it."""
    from .base import FewStepGenerator
    from .generators import GENERATOR_KINDS, ExpertsGenerator, FlowGenerator, MultiStudentGenerator, TwoTimeGenerator

    kind = spec.get("kind")
    proc = domain.process()
    if kind == "consistency":
        st = build_student(domain, spec["student"])
        return FewStepGenerator(st, proc, prediction=spec["student"].get("prediction"), parameterization=spec.get("parameterization", "x0"),
                                sigma_data=spec.get("sigma_data", 0.5), timesteps=spec.get("timesteps"),
                                noise_scale=spec.get("noise_scale", 1.0),
                                scale_initial_noise=bool(spec.get("scale_initial_noise", False)))
    if kind == "flow":
        st = build_student(domain, spec["student"])
        return FlowGenerator(st, proc, sampler=spec.get("sampler", "euler"), timesteps=spec.get("timesteps"),
                             prediction=spec["student"].get("prediction"), options=spec.get("options"))
    if kind == "meanflow":
        return TwoTimeGenerator(build_student(domain, spec["student"]), proc)
    if kind == "experts":
        return ExpertsGenerator(nn.ModuleList([build_generator(domain, spec["inner"]) for _ in range(int(spec["n"]))]), proc,
                                spec["boundaries"], transition=spec.get("transition", "renoise"))  # files without the key re-noised
    if kind == "multi_student":
        return MultiStudentGenerator(nn.ModuleList([build_generator(domain, spec["inner"]) for _ in range(int(spec["n"]))]),
                                     router=spec.get("router", "cond"))
    raise ValueError(f"unknown generator kind {kind!r}; valid: {', '.join(GENERATOR_KINDS)}")
