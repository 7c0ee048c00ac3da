"""DSSP secondary structure (Kabsch & Sander, Biopolymers 22:2577, 1983) of protein backbones.

Two backends:

- ``"mkdssp"``: the DSSP program (version 4.x, e.g. Debian's ``dssp`` package, ``mkdssp 4.2``),
  run as a subprocess on a temporary PDB file; the classic DSSP output gives the 8 states
  ``H`` (alpha helix), ``G`` (3-10 helix), ``I`` (pi helix), ``P`` (polyproline II, DSSP >= 4),
  ``E`` (strand in a beta ladder), ``B`` (isolated bridge), ``T`` (turn), ``S`` (bend) and
  ``-`` (none).
- ``"pydssp"``: the differentiable re-implementation of Minami et al. (pydssp, Bioinformatics
  2023), in process. It assigns 3 states only: ``H`` (alpha helix, from i -> i+4 H-bonds),
  ``E`` (strand) and ``-``.

``"auto"`` uses mkdssp when it is on ``PATH`` and pydssp otherwise. Both use the electrostatic
H-bond energy of DSSP with the amide H placed from the backbone; proline N has no H (it never
donates), so the sequence matters where it is known.

CA-only input (``[L, 3]``, or Chains without N/C/O) gets its N, C and O placed by
:func:`~domains.proteins.geometry.reconstruct_backbone` first; generated CA traces are
measured the same way.

3-state reduction (:func:`reduce_to_3`): ``H, G, I -> H``; ``E, B -> E``; everything else
``-`` (the usual reduction, e.g. CASP / Frishman & Argos 1995).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Optional

import numpy as np

from .chain import ONE_TO_THREE

BACKENDS = ("auto", "mkdssp", "pydssp")
#: the environment variable that names the mkdssp executable (default: ``mkdssp`` on PATH)
MKDSSP_ENV = "MKDSSP"
_REDUCE = {"H": "H", "G": "H", "I": "H", "E": "E", "B": "E"}


def mkdssp_path() -> Optional[str]:
    """The mkdssp executable (``$MKDSSP`` or ``mkdssp`` on PATH), or None when absent."""
    exe = os.environ.get(MKDSSP_ENV) or "mkdssp"
    return shutil.which(exe)


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"dssp: unknown backend {backend!r}; valid: {', '.join(map(repr, BACKENDS))}")
    if backend == "auto":
        return "mkdssp" if mkdssp_path() else "pydssp"
    if backend == "mkdssp" and not mkdssp_path():
        raise ValueError("dssp: backend 'mkdssp' requested but no mkdssp executable was found on PATH "
                         f"(install Debian 'dssp', set ${MKDSSP_ENV}, or use backend='pydssp' / 'auto')")
    return backend


def _backbone(x):
    """Chain / ``[L, 3]`` / ``[L, 4, 3]`` (numpy or torch) -> float64 ``[L, 4, 3]`` backbone
    (N/C/O placed from the CA trace where missing) and the sequence (or None)."""
    seq = None
    if hasattr(x, "coords") and hasattr(x, "sequence"):  # a Chain
        seq = x.sequence
        x = x.coords
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2 and a.shape[1] == 3:
        full = np.full((len(a), 4, 3), np.nan)
        full[:, 1] = a
        a = full
    if a.ndim != 3 or a.shape[1:] != (4, 3):
        raise ValueError(f"dssp: expected a backbone [L, 4, 3] (N, CA, C, O), a CA trace [L, 3] or a Chain, got shape {a.shape}")
    ca_ok = np.isfinite(a[:, 1]).all(-1)
    if not np.isfinite(a[ca_ok]).all():  # some N/C/O missing: place them from the CA trace
        from .geometry import reconstruct_backbone

        full = np.full_like(a, np.nan)
        if ca_ok.sum() > 0:
            full[ca_ok] = reconstruct_backbone(a[ca_ok, 1])
        a = np.where(np.isfinite(a), a, full)
    if seq is not None and len(seq) != len(a):
        raise ValueError(f"dssp: sequence length {len(seq)} != {len(a)} residues")
    return a, seq


def reduce_to_3(ss: str) -> str:
    """8-state DSSP letters -> 3 states: ``H, G, I -> H``, ``E, B -> E``, others ``-``."""
    return "".join(_REDUCE.get(c, "-") for c in ss)


def _pdb_text(xyz: np.ndarray, seq: Optional[str], ok: np.ndarray) -> str:
    """Minimal PDB (HEADER first, as mkdssp requires) with residues numbered 1..L; residues
    without a CA are left out (mkdssp then sees a chain break)."""
    lines = ["HEADER    PROTEIN".ljust(80), "COMPND    MOL_ID: 1;".ljust(80)]
    serial = 0
    for i in np.flatnonzero(ok):
        rn = ONE_TO_THREE.get(seq[i], "GLY") if seq is not None else "GLY"
        for name, el, p in zip((" N  ", " CA ", " C  ", " O  "), "NCCO", xyz[i]):
            serial += 1
            lines.append(f"ATOM  {serial:>5} {name} {rn} A{i + 1:>4}    {p[0]:8.3f}{p[1]:8.3f}{p[2]:8.3f}  1.00  0.00"
                         f"           {el}  ")
    lines += ["TER", "END"]
    return "\n".join(lines) + "\n"


def _parse_classic(text: str, L: int) -> str:
    """Per-residue letters from classic DSSP output (residue number in columns 6-10, the
    structure letter in column 17; ``!`` lines mark chain breaks)."""
    out = ["-"] * L
    body = False
    for line in text.splitlines():
        if line.startswith("  #  RESIDUE"):
            body = True
            continue
        if not body or len(line) < 17 or line[13] == "!":
            continue
        num = line[5:10].strip()
        if num.lstrip("-").isdigit() and 1 <= int(num) <= L:
            letter = line[16]
            out[int(num) - 1] = letter if letter != " " else "-"
    return "".join(out)


def _run_mkdssp(xyz: np.ndarray, seq: Optional[str], ok: np.ndarray, timeout: float) -> str:
    exe = mkdssp_path()
    with tempfile.TemporaryDirectory(prefix="dssp_") as tmp:
        src = os.path.join(tmp, "in.pdb")
        dst = os.path.join(tmp, "out.dssp")
        with open(src, "w") as fh:
            fh.write(_pdb_text(xyz, seq, ok))
        r = subprocess.run([exe, "--output-format", "dssp", src, dst], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0 or not os.path.exists(dst):
            msg = " ".join((r.stderr or r.stdout or "").split())[:200]
            raise RuntimeError(f"mkdssp failed with exit code {r.returncode}: {msg}")
        with open(dst) as fh:
            return _parse_classic(fh.read(), len(xyz))


def _run_pydssp(xyz: np.ndarray, seq: Optional[str], ok: np.ndarray) -> str:
    import pydssp

    out = ["-"] * len(xyz)
    idx = np.flatnonzero(ok)
    if len(idx) < 6:  # pydssp needs >= 6 residues; shorter chains cannot hold a DSSP helix or ladder anyway
        return "".join(out)
    # pydssp places the amide H of residue i from C=O of residue i-1; after a chain break
    # (missing residues or C(i-1)-N(i) > 2.5 A, DSSP's break criterion) residue i gets no H,
    # and neither does proline.
    donor = np.ones(len(idx))
    brk = (np.diff(idx) != 1) | (np.linalg.norm(xyz[idx[1:], 0] - xyz[idx[:-1], 2], axis=-1) > 2.5)
    donor[1:][brk] = 0.0
    donor[0] = 0.0
    if seq is not None:
        donor[np.array([seq[i] == "P" for i in idx])] = 0.0
    ss = pydssp.assign(np.ascontiguousarray(xyz[idx], dtype=np.float64), donor_mask=donor, out_type="c3")
    for i, c in zip(idx, ss):
        out[i] = str(c)
    return "".join(out)


def dssp(x, *, backend: str = "auto", states: int = 8, timeout: float = 60.0) -> str:
    """DSSP secondary structure, one letter per residue.

    Args:
        x: a backbone ``[L, 4, 3]`` (N, CA, C, O in A), a CA trace ``[L, 3]`` (N/C/O placed with
            :func:`~domains.proteins.geometry.reconstruct_backbone`), numpy or torch, or a
            :class:`~domains.proteins.chain.Chain` (its sequence marks prolines, which cannot
            donate an H-bond; without one every residue is treated as glycine).
        backend: ``"auto"`` (mkdssp if installed, else pydssp), ``"mkdssp"`` or ``"pydssp"``.
        states: ``8`` (mkdssp's letters ``HGIPEBTS-``; pydssp gives only ``H``/``E``/``-``) or
            ``3`` (:func:`reduce_to_3`).
        timeout: seconds allowed to one mkdssp run.

    Returns:
        A string of length ``L``. Residues without a CA get ``-``.

    Raises:
        ValueError: bad shape, unknown ``backend``/``states``, or mkdssp requested but absent.
        RuntimeError: mkdssp ran and failed.
    """
    if states not in (3, 8):
        raise ValueError(f"dssp: states must be 8 or 3, got {states!r}")
    be = _resolve_backend(backend)
    xyz, seq = _backbone(x)
    ok = np.isfinite(xyz).all(axis=(1, 2))
    if ok.sum() == 0:
        return "-" * len(xyz)
    ss = _run_mkdssp(xyz, seq, ok, timeout) if be == "mkdssp" else _run_pydssp(xyz, seq, ok)
    return reduce_to_3(ss) if states == 3 else ss


def _runs(mask: np.ndarray) -> list:
    """Lengths of the runs of True in a boolean array, with their start indices."""
    out, start = [], None
    for i, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i - start))
            start = None
    return out


def fractions_from_labels(ss: str) -> dict:
    """Secondary-structure fractions of one DSSP string (8- or 3-state letters):

    - ``dssp_helix``: fraction of residues in a helix (``H``, ``G``, ``I``);
    - ``dssp_strand``: fraction in a strand or bridge (``E``, ``B``);
    - ``dssp_helix_runs7``: fraction in helix runs (``H/G/I``) of at least 7 residues, i.e. helices of
      about two turns or more (single turns do not count);
    - ``dssp_strand_runs3``: fraction in strand runs (``E``) of at least 3 residues (beta-ladder
      strands; isolated bridges and two-residue ladders do not count).

    NaN for an empty string."""
    n = len(ss)
    if n == 0:
        return {k: float("nan") for k in ("dssp_helix", "dssp_strand", "dssp_helix_runs7", "dssp_strand_runs3")}
    s3 = reduce_to_3(ss)
    h = np.array([c == "H" for c in s3])
    e = np.array([c == "E" for c in s3])
    e_only = np.array([c == "E" for c in ss])
    return {
        "dssp_helix": float(h.mean()),
        "dssp_strand": float(e.mean()),
        "dssp_helix_runs7": sum(ln for _, ln in _runs(h) if ln >= 7) / n,
        "dssp_strand_runs3": sum(ln for _, ln in _runs(e_only) if ln >= 3) / n,
    }


def dssp_fractions(x, *, backend: str = "auto") -> dict:
    """:func:`fractions_from_labels` of :func:`dssp` ``(x, backend=backend)``."""
    return fractions_from_labels(dssp(x, backend=backend))


__all__ = ["BACKENDS", "mkdssp_path", "dssp", "reduce_to_3", "fractions_from_labels", "dssp_fractions"]
