"""Students: the JSON description of a student network (:func:`student_spec`), building one
from it (:func:`build_student`) and initialising a trainable one from the teacher
(:func:`make_student`). A built student carries its description as ``student.student_config``,
which the generators write into their config."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import torch
from torch import nn

__all__ = ["student_spec", "build_student", "make_student", "student_config_of"]


def student_spec(teacher: nn.Module, domain, *, backbone: Optional[dict] = None, prediction: Optional[str] = None,
                 two_time: bool = False) -> dict:
    """The JSON description of a student: ``domain.build_backbone(**backbone)`` (``{}`` = the
    teacher's architecture, so it can start from the teacher's weights). The prediction is
    the teacher's, or the domain backbone's for an analytic (weightless) teacher."""
    weightless = not any(True for _ in teacher.parameters())
    default = domain.prediction if weightless else getattr(teacher, "prediction", domain.prediction)
    return {"backbone": dict(backbone or {}), "prediction": prediction or default,
            "two_time": bool(two_time)}


def _tag(net: nn.Module, spec: dict) -> nn.Module:
    net.student_config = {"backbone": dict(spec.get("backbone") or {}), "prediction": spec.get("prediction"),
                          "two_time": bool(spec.get("two_time", False))}
    return net


def student_config_of(net: nn.Module) -> dict:
    """The :func:`student_spec` a student was built from (one-line error for a module that was
    not built by :func:`build_student` / :func:`make_student`)."""
    cfg = getattr(net, "student_config", None)
    if cfg is None:
        raise ValueError(f"{type(net).__name__} has no student_config; build students with make_student / build_student")
    return copy.deepcopy(cfg)


def build_student(domain, spec: dict) -> nn.Module:
    """A fresh student module from :func:`student_spec` output."""
    kw = dict(spec.get("backbone") or {})
    if spec.get("two_time"):  # an average-velocity net u(z, r, t) (MeanFlow students)
        return _tag(domain.build_two_time_backbone(**kw), spec)
    net = domain.build_backbone(**kw)
    if spec.get("prediction") and hasattr(net, "prediction"):
        net.prediction = spec["prediction"]
    return _tag(net, spec)


def make_student(ctx, spec: dict, *, init: str = "teacher") -> nn.Module:
    """A trainable student (``ctx`` a :class:`~workbench.distill.api.RecipeContext`):
    ``init="teacher"`` copies the teacher's weights when the architecture is the teacher's
    (``spec["backbone"] == {}``; the SlimFlow / consistency initialisation), else (smaller
    students, two-time students) loads every teacher tensor whose name and shape match and
    leaves the rest at their fresh initialisation.

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
        _tag(st, spec)
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
