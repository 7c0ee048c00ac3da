"""``workbench designability``: the designability pipeline on any PDB/mmCIF backbones, as a
plugin command (entry-point group ``workbench.commands``).

    workbench designability DIR_OR_FILES... [out=DIR] [n_seq=8] [fold_sampler=ode|af3] [reference=natives|DIR] ...

``fold_sampler`` (default folder only): ``ode`` = the probability-flow ODE (AF3's sampler with
gamma0 = 0, eta = 1; default 5 steps) or ``af3`` = AF3's stochastic 200-step sampler (gamma0 =
0.8, eta = 1.5, lambda = 1.003); ``fold_steps`` sets the steps of either (without
``fold_sampler``, ``fold_steps`` above 10 runs AF3's sampler: ``fold_steps=200`` is AF3's). The report states
the sampler and every option that ran. ``reference``: natives (``natives`` = held-out test
chains of the protein data, or a directory / files) run through the same pipeline and reported
beside the inputs.

Inputs are directories, glob patterns or files; options (:class:`DesignabilityOptions`) are
``key=value`` parsed like every other ``workbench`` command (hydra's grammar; ``--help`` lists
them with their defaults; ``--`` ends the options, for paths that contain ``=``). The run is
resumable: rerunning the same command skips the backbones already in ``out/results.jsonl``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

USAGE = "DIR_OR_FILES... [key=value ...]"
WHAT = "the designability pipeline (ProteinMPNN -> refold -> scRMSD) on PDB/mmCIF backbones"


@dataclass
class DesignabilityOptions:
    """Options of ``workbench designability`` (``key=value``)."""

    out: str = field(default="outputs/designability", metadata={"help": "output folder (report.md, report.json, results.jsonl)"})
    n_seq: int = field(default=8, metadata={"help": "sequences designed per backbone"})
    temperature: float = field(default=0.1, metadata={"help": "ProteinMPNN sampling temperature"})
    folder: str = field(default="default", metadata={"help": "refolder: default (the in-repo structure predictor) or a folder name"})
    inverse_folder: str = field(default="proteinmpnn_ca", metadata={"help": "inverse folder"})
    fold_sampler: Optional[str] = field(default=None, metadata={"help": "default folder only: ode (probability-flow ODE) or af3 (AF3's 200-step sampler)"})
    fold_steps: Optional[int] = field(default=None, metadata={"help": "steps of the folder's sampler (above 10 without fold_sampler: AF3's sampler)"})
    reference: Optional[str] = field(default=None, metadata={"help": "natives (held-out test chains) or a directory / files, run beside the inputs"})
    batch_size: int = field(default=8, metadata={"help": "accepted for compatibility: backbones run one at a time, each with its own seed, so results never depend on it"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    threshold: float = field(default=2.0, metadata={"help": "scRMSD (A) below which a backbone is designable"})
    all_chains: bool = field(default=False, metadata={"help": "every chain of each file (default: the first)"})
    resume: bool = field(default=True, metadata={"help": "skip backbones already in out/results.jsonl"})
    save_structures: bool = field(default=False, metadata={"help": "write the refolded structures"})
    threads: Optional[int] = field(default=None, metadata={"help": "torch CPU threads"})
    progress: bool = field(default=True, metadata={"help": "progress bar"})


def split_inputs(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(input paths, key=value options)``: an argument is an input when it has no ``=``, its
    key holds ``/``, ``.`` or ``*`` (a path or glob), or it follows ``--``."""
    inputs, rest, options_done = [], [], False
    for a in argv:
        if a == "--":
            options_done = True
            continue
        key, sep, _ = a.partition("=")
        if options_done or not sep or any(c in key for c in "/.*"):
            inputs.append(a)
        else:
            rest.append(a)
    return inputs, rest


def _need_inputs(inputs: list[str]) -> None:
    if not inputs:
        raise ValueError("designability needs input backbones: a directory, glob or PDB/mmCIF files")


def parse_args(argv: list[str]) -> tuple[list[str], dict]:
    """Split ``argv`` into input paths and typed options (:class:`DesignabilityOptions`, parsed
    as every ``workbench`` command: :func:`workbench.cli.parse_options`); unknown keys raise a
    one-line ValueError listing the valid keys."""
    from workbench.cli import parse_options

    inputs, rest = split_inputs(argv)
    opts = parse_options(rest, DesignabilityOptions, "designability")
    _need_inputs(inputs)
    return inputs, opts


def _run(inputs: list[str], o: dict) -> str:
    _need_inputs(inputs)
    from .designability import format_report, run_designability

    folder = o["folder"]
    if o["fold_steps"] is not None or o["fold_sampler"] is not None:
        from .designability import load_folder

        if o["fold_steps"] is not None and o["fold_steps"] < 1:
            raise ValueError(f"fold_steps must be >= 1, got {o['fold_steps']}")
        folder = load_folder(folder, fold_sampler=o["fold_sampler"], steps=o["fold_steps"])
    report = run_designability(inputs, o["out"], inverse_folder=o["inverse_folder"], folder=folder, n_seq=o["n_seq"],
                               temperature=o["temperature"], batch_size=o["batch_size"], seed=o["seed"],
                               progress=o["progress"], all_chains=o["all_chains"], threshold=o["threshold"],
                               resume=o["resume"], save_structures=o["save_structures"], reference=o["reference"])
    return format_report(report) + f"\nwrote {o['out']}/report.md, report.json, results.jsonl"


def designability_main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``workbench designability``; returns the exit code (2 on bad input)."""
    from workbench.cli import run_plugin_command

    return run_plugin_command("designability", argv, DesignabilityOptions, _run, what=WHAT, usage=USAGE,
                              doc=__doc__.split("\n\n", 1)[1], split_inputs=split_inputs)
