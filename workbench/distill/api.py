"""The distillation-method contract: what a method declares and what it returns.

A method is ONE module in :mod:`workbench.distill` (found by the package's import of its
modules, see ``workbench/distill/__init__.py``) holding an options dataclass and a recipe::

    @dataclass
    class KnowledgeOptions(MethodOptions):
        steps: int = 32                       # defaults = the paper's

        def __post_init__(self):
            super().__post_init__()           # type check of every field
            if self.steps < 1:
                raise ValueError(f"steps must be >= 1, got {self.steps}")

    @register_method("knowledge", options=KnowledgeOptions, kind="consistency", description="...")
    def knowledge_recipe(ctx: RecipeContext, opts: KnowledgeOptions) -> DistillSetup: ...

The recipe gets a :class:`RecipeContext` (domain, frozen teacher, ``student_steps``, output
directory, device, seed) and the validated options; it returns a :class:`DistillSetup` for the
shared loop (:func:`workbench.training.train`), whose ``make_generator(nets)`` builds the
exported generator (a :class:`~workbench.distill.generators.BaseGenerator`, which writes its
own config into the checkpoint header). This module imports no method.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from torch import nn

__all__ = ["RecipeContext", "DistillSetup", "MethodOptions", "Method", "METHODS", "register_method", "method_options",
           "describe_methods", "available_methods", "get_method", "setup_method"]


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
    #: the teacher checkpoint the user named (``None``: the domain's shipped one); generators that
    #: reference the teacher instead of copying it (LSD) record it
    teacher_path: Optional[str] = None

    @classmethod
    def for_domain(cls, domain, *, teacher: Optional[str] = None, **kw) -> "RecipeContext":
        """The context of ``domain`` with its teacher (shipped, or the checkpoint ``teacher``)
        loaded frozen: ``RecipeContext.for_domain(ToyDomain(), student_steps=2)``; ``kw`` sets
        the other fields."""
        net = domain.load_teacher(teacher, device=kw.get("device", "cpu")).requires_grad_(False)
        return cls(domain=domain, teacher=net, teacher_path=None if teacher is None else str(teacher), **kw)

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
        make_generator: ``make_generator(nets) -> generator`` from trained nets (EMA copies
            substituted); its ``state_dict`` and ``to_config()`` are what is exported.
        data: ``data(batch_size, generator) -> Batch`` (default: the domain's training data).
        train_defaults: TrainConfig overrides the method prefers (the user's keys win).
        info: JSON facts for the report (e.g. the size of the student).
    """

    objective: Any
    nets: dict
    trainable: list
    ema: list
    make_generator: Callable[[dict], nn.Module]
    data: Optional[Callable] = None
    train_defaults: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def spec(self) -> dict:
        """The config of the generator built from the current nets (what the header stores)."""
        return self.make_generator(self.nets).to_config()


# -- options -------------------------------------------------------------------------------------
def _type_ok(value, tp) -> bool:
    """Whether ``value`` fits the annotation ``tp`` (ints pass as floats, tuples as lists)."""
    if tp is Any or tp is object:
        return True
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp in (list, tuple):
        return isinstance(value, (list, tuple))
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a dict", list: "a list",
          tuple: "a list", type(None): "None"}


def _type_name(tp) -> str:
    """``Optional[dict]`` -> ``"a dict or None"``."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + (" or None" if len(args) < len(typing.get_args(tp)) else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    if origin is not None:
        return _WORDS.get(origin, str(tp))
    if tp is Any:
        return "anything"
    return _WORDS.get(tp, getattr(tp, "__name__", str(tp)))


@dataclass
class MethodOptions:
    """Base of every method's options dataclass: ``__post_init__`` checks each field against
    its annotation (one-line ``ValueError``); subclasses add their own checks after
    ``super().__post_init__()``."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            tp = hints.get(f.name, Any)
            if not _type_ok(v, tp):
                raise ValueError(f"{f.name} must be {_type_name(tp)}, got {v!r} (option of {type(self).__name__})")
            if tp is float and isinstance(v, int):
                setattr(self, f.name, float(v))

    @staticmethod
    def choice(name: str, value, valid) -> None:
        """One-line error unless ``value`` is one of ``valid``."""
        if value not in valid:
            raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(str, valid))}")


def _defaults(options: type) -> dict:
    out = {}
    for f in dataclasses.fields(options):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


# -- the registry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """A registered method: its ``recipe(ctx, opts) -> DistillSetup``, its ``options``
    dataclass, the generator ``kind`` it exports, the Domain capabilities it ``requires``."""

    name: str
    recipe: Callable
    options: type
    kind: str
    description: str
    paper: str = ""
    requires: tuple = ()
    #: the state the method distils: ``continuous`` (Gaussian processes) or ``discrete``
    #: (discrete processes; e.g. LSD, SDTT)
    state: str = "continuous"

    def defaults(self) -> dict:
        return _defaults(self.options)

    def missing(self, domain) -> list[str]:
        """What ``domain`` lacks for this method: its process's state, then the Domain
        capabilities of :attr:`requires` (empty: the method runs on the domain)."""
        continuous = getattr(domain.process(), "continuous", True)
        out = [] if (self.state == "continuous") == continuous else \
            [f"a {self.state} process ({type(domain.process()).__name__} is {'continuous' if continuous else 'discrete'})"]
        return out + [r for r in self.requires if not domain.supports(r)]


#: method name -> :class:`Method` (filled by the modules of :mod:`workbench.distill` on import)
METHODS: dict[str, Method] = {}


def register_method(name: str, *, options: type, kind: str, description: str, paper: str = "", requires: tuple = (),
                    state: str = "continuous"):
    """Register ``recipe(ctx, opts: options) -> DistillSetup`` under ``name``; ``options`` is a
    :class:`MethodOptions` dataclass, ``requires`` the Domain capabilities it calls, ``state``
    the kind of process it distils (``continuous`` or ``discrete``)."""
    if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        raise TypeError(f"method {name!r}: options must be a dataclass type, got {options!r}")
    if state not in ("continuous", "discrete"):
        raise ValueError(f"method {name!r}: unknown state {state!r}; valid: continuous, discrete")

    def deco(fn):
        old = METHODS.get(name)
        if old is not None and (old.recipe.__module__, old.recipe.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"distillation method {name!r} is already registered by {old.recipe.__module__}")
        METHODS[name] = Method(name, fn, options, kind, description, paper, tuple(requires), state)
        return fn

    return deco


def available_methods() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown distillation method {name!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_options(name: str, overrides: Optional[dict] = None):
    """The validated options dataclass of method ``name`` (its defaults updated by
    ``overrides``); unknown keys or values of the wrong type give a one-line ``ValueError``
    listing the valid keys with their defaults."""
    m = get_method(name)
    overrides = dict(overrides or {})
    valid = _defaults(m.options)
    unknown = [k for k in overrides if k not in valid]
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "(none)"
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for method {name!r}; valid: {listing}")
    return m.options(**overrides)


def setup_method(name: str, ctx: RecipeContext, options=None) -> DistillSetup:
    """Run method ``name``'s recipe with ``options`` (a dict of overrides or the options
    dataclass itself)."""
    m = get_method(name)
    opts = options if isinstance(options, m.options) else method_options(name, options)
    return m.recipe(ctx, opts)


def describe_methods(name: Optional[str] = None) -> str:
    """Text listing of the methods (or of method ``name``) with their options and defaults."""
    names = [get_method(name).name] if name else available_methods()
    lines = []
    for n in names:
        m = METHODS[n]
        lines.append(f"{n} ({m.kind}{', discrete state' if m.state == 'discrete' else ''}): {m.description}" + (f" [{m.paper}]" if m.paper else ""))
        if m.requires:
            lines.append(f"    requires: {', '.join(m.requires)}")
        hints = typing.get_type_hints(m.options)
        for k, v in m.defaults().items():
            lines.append(f"    distill.{k}={v!r}  ({_type_name(hints.get(k, Any))})")
    return "\n".join(lines)
