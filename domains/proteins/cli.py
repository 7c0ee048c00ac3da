"""``workbench designability``: the designability pipeline on any PDB/mmCIF backbones, as a
plugin command (entry-point group ``workbench.commands``).

    workbench designability DIR_OR_FILES... [out=DIR] [n_seq=8] [temperature=0.1] [folder=default]
                            [inverse_folder=proteinmpnn_ca] [fold_sampler=ode|af3] [fold_steps=N] [reference=natives|DIR]
                            [batch_size=8] [seed=0] [threshold=2.0] [all_chains=false] [resume=true]
                            [save_structures=false] [threads=N]

``fold_sampler`` (default folder only): ``ode`` = the probability-flow ODE (AF3's sampler with
gamma0 = 0, eta = 1; default 5 steps) or ``af3`` = AF3's stochastic 200-step sampler (gamma0 =
0.8, eta = 1.5, lambda = 1.003); ``fold_steps`` sets the steps of either (without
``fold_sampler``, ``fold_steps`` above 10 runs AF3's sampler: ``fold_steps=200`` is AF3's). The report states
the sampler and every option that ran. ``reference``: natives (``natives`` = held-out test
chains of the protein data, or a directory / files) run through the same pipeline and reported
beside the inputs.

Inputs are directories, glob patterns or files; options are ``key=value`` like every other
``workbench`` command (``--`` ends the options, for paths that contain ``=``). The run is
resumable: rerunning the same command skips the backbones already in ``out/results.jsonl``.
"""
from __future__ import annotations

import sys
from typing import Optional

#: option -> (type, default)
OPTIONS = {"out": (str, "outputs/designability"), "n_seq": (int, 8), "temperature": (float, 0.1), "folder": (str, "default"),
           "inverse_folder": (str, "proteinmpnn_ca"), "fold_sampler": (str, None), "fold_steps": (int, None), "reference": (str, None), "batch_size": (int, 8), "seed": (int, 0), "threshold": (float, 2.0),
           "all_chains": (bool, False), "resume": (bool, True), "save_structures": (bool, False), "threads": (int, None),
           "progress": (bool, True)}


def _parse_bool(key: str, v: str) -> bool:
    low = v.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"option {key}={v!r}: expected true or false")


def parse_args(argv: list[str]) -> tuple[list[str], dict]:
    """Split ``argv`` into input paths and typed options; unknown ``key=value`` keys raise a
    one-line ValueError listing the valid keys."""
    inputs, opts, options_done = [], {k: d for k, (_, d) in OPTIONS.items()}, False
    for a in argv:
        if a == "--":
            options_done = True
            continue
        key, sep, val = a.partition("=")
        if options_done or not sep or any(c in key for c in "/.*"):  # a path (or glob), not an option
            inputs.append(a)
            continue
        if key not in OPTIONS:
            raise ValueError(f"unknown designability option {key!r}; valid: {', '.join(OPTIONS)}")
        typ = OPTIONS[key][0]
        try:
            opts[key] = _parse_bool(key, val) if typ is bool else typ(val)
        except ValueError as e:
            raise ValueError(f"option {key}={val!r}: {e}") from None
    if not inputs:
        raise ValueError("designability needs input backbones: a directory, glob or PDB/mmCIF files")
    return inputs, opts


def designability_main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``workbench designability``; returns the exit code (2 on bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.split("\n\n", 1)[1])
        return 0
    try:
        inputs, o = parse_args(argv)
        if o["threads"] is not None:
            import torch

            torch.set_num_threads(int(o["threads"]))
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
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"workbench designability: error: {msg}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(f"wrote {o['out']}/report.md, report.json, results.jsonl")
    return 0
