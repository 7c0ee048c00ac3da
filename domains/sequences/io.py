"""Sample writers and readers of the ``sequences`` domain, all atomic
(:func:`workbench.utils.write_text`: a crash never leaves a truncated file).

* FASTA (dna, protein): one record per sample, header ``>sample_{i}`` (or given names), the
  sequence wrapped at 60 characters.
* Plain text (text): the samples one after another, each preceded by a separator line
  ``=== sample_{i} ===`` (:data:`TEXT_SEPARATOR`); the samples' own newlines are kept.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

from workbench.utils import write_text

FASTA_WIDTH = 60
TEXT_SEPARATOR = "=== {name} ==="
_SEP_RE = re.compile(r"^=== (\S+) ===$")


def _names(n: int, names: Optional[Sequence[str]]) -> list[str]:
    if names is None:
        return [f"sample_{i}" for i in range(n)]
    names = list(names)
    if len(names) != n:
        raise ValueError(f"got {len(names)} names for {n} sequences")
    bad = [s for s in names if not s or any(c.isspace() for c in s)]
    if bad:
        raise ValueError(f"sequence names must be non-empty without whitespace; got {bad[0]!r}")
    return names


def write_fasta(path, seqs: Sequence[str], names: Optional[Sequence[str]] = None, width: int = FASTA_WIDTH) -> Path:
    """Write ``seqs`` as FASTA (``>sample_i`` headers unless ``names``); returns the path."""
    lines = []
    for name, s in zip(_names(len(seqs), names), seqs):
        if any(c.isspace() or c == ">" for c in s):
            raise ValueError(f"FASTA sequence {name} contains whitespace or '>'")
        lines.append(f">{name}")
        lines.extend(s[i:i + width] for i in range(0, len(s), width))
        if not s:
            lines.append("")
    return write_text(path, "\n".join(lines) + "\n")


def read_fasta(path) -> list[tuple[str, str]]:
    """``[(name, sequence)]`` of a FASTA file (name: the header's first word)."""
    from .data import read_fasta_text

    return read_fasta_text(Path(path).read_text())


def write_text_samples(path, texts: Sequence[str], names: Optional[Sequence[str]] = None) -> Path:
    """Write text samples to one plain-text file, each after a ``=== sample_i ===`` line."""
    parts = []
    for name, t in zip(_names(len(texts), names), texts):
        if any(_SEP_RE.match(line) for line in t.split("\n")):
            raise ValueError(f"text sample {name} contains a separator line (=== name ===)")
        parts.append(TEXT_SEPARATOR.format(name=name) + "\n" + t + "\n")
    return write_text(path, "".join(parts))


def read_text_samples(path) -> list[tuple[str, str]]:
    """``[(name, text)]`` from a file written by :func:`write_text_samples`."""
    out: list[tuple[str, list[str]]] = []
    lines = Path(path).read_text().split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    for line in lines:
        m = _SEP_RE.match(line)
        if m:
            out.append((m.group(1), []))
        elif out:
            out[-1][1].append(line)
        else:
            raise ValueError(f"{path}: text before the first '=== name ===' separator line")
    return [(n, "\n".join(body)) for n, body in out]
