"""Molecule files of the ``molecules`` domain: 3D SDF (MDL V2000) and SMILES.

* :func:`write_sdf` writes one record per molecule: atoms with their coordinates (Angstrom, 4
  decimals, the V2000 precision) and the bonds inferred from the distances by EDM's rule
  (:func:`domains.molecules.metrics.bond_orders`), or the molecule's own bonds when it is a
  :class:`SDFMolecule`. Invalid molecules are written as they are (they are samples too). RDKit
  reads the files (``Chem.SDMolSupplier(path, sanitize=False, removeHs=False)``), and
  :func:`read_sdf` reads them and RDKit's.
* :func:`write_smiles` writes one SMILES per line (optionally followed by a name);
  :func:`read_smiles` reads them back and, by default, checks each with RDKit.

Every write is atomic (a temporary file in the same folder, then ``os.replace``). Every problem
in a file being read raises a one-line ``ValueError`` ``"<file>:<line>: <problem>"``.
Atom types are indices into :data:`~domains.molecules.data.ATOM_TYPES` (H, C, N, O, F).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from workbench.utils import write_text

from .data import ATOM_TYPES

PathLike = Union[str, Path]
_MAX_V2000 = 999  # atoms / bonds per record (3-digit counts)
_PROGRAM = "fewstep"


@dataclass
class SDFMolecule:
    """One SDF record: ``positions`` float64 ``[n, 3]`` (Angstrom), ``atom_types`` int64 ``[n]``
    (indices into ``ATOM_TYPES``), ``bonds`` int64 ``[m, 3]`` rows ``(i, j, order)`` (0-based
    atoms, order 1-3), ``formal_charges`` int64 ``[n]`` (``M  CHG``), ``name`` (header line),
    ``properties`` (the ``> <key>`` data items, as strings)."""

    positions: np.ndarray
    atom_types: np.ndarray
    bonds: np.ndarray
    formal_charges: np.ndarray = None
    name: str = ""
    properties: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.formal_charges is None:
            self.formal_charges = np.zeros(len(self.atom_types), dtype=np.int64)


def _sdf_block(name: str, pos: np.ndarray, types: np.ndarray, bonds: np.ndarray, charges: np.ndarray,
               props: dict, atom_decoder: Sequence[str]) -> str:
    n, m = len(types), len(bonds)
    if n > _MAX_V2000 or m > _MAX_V2000:
        raise ValueError(f"SDF V2000 holds at most {_MAX_V2000} atoms and bonds per molecule, got {n} and {m}")
    if not np.all(np.isfinite(pos)):
        raise ValueError(f"molecule {name!r}: non-finite coordinates cannot be written to SDF")
    if np.abs(pos).max(initial=0.0) >= 1e5:
        raise ValueError(f"molecule {name!r}: coordinates beyond +-99999 A do not fit the SDF V2000 columns")
    title = " ".join(str(name).split())[:80]
    lines = [title, f"  {_PROGRAM:<8.8}{'':10}3D", "",
             f"{n:3d}{m:3d}  0  0  0  0  0  0  0  0999 V2000"]
    for (x, y, z), t in zip(pos.tolist(), types.tolist()):
        lines.append(f"{x:10.4f}{y:10.4f}{z:10.4f} {atom_decoder[t]:<3} 0  0  0  0  0  0  0  0  0  0  0  0")
    for i, j, o in bonds.tolist():
        lines.append(f"{i + 1:3d}{j + 1:3d}{o:3d}  0")
    charged = [(i + 1, int(c)) for i, c in enumerate(charges.tolist()) if c]
    for s in range(0, len(charged), 8):
        chunk = charged[s:s + 8]
        lines.append(f"M  CHG{len(chunk):3d}" + "".join(f" {i:3d} {c:3d}" for i, c in chunk))
    lines.append("M  END")
    for k, v in props.items():
        key = str(k)
        if not key or any(c in key for c in "<>\n\r"):
            raise ValueError(f"molecule {name!r}: SDF property name {key!r} is empty or holds '<', '>' or a newline")
        text = "\n".join(line for line in str(v).splitlines() if line.strip()) or "."
        lines += [f">  <{key}>", text, ""]
    lines.append("$$$$")
    return "\n".join(lines) + "\n"


def write_sdf(path: PathLike, molecules, atom_types=None, mask=None, *, names: Optional[Sequence[str]] = None,
              properties: Optional[Sequence[dict]] = None, atom_decoder: Sequence[str] = ATOM_TYPES) -> Path:
    """Write molecules to a 3D SDF file (atomically); returns the path.

    Args:
        molecules: :class:`SDFMolecule` records (written with their own bonds), a list of
            ``(positions [n, 3], atom_types [n])`` pairs, or ``positions [B, N, 3]`` with
            ``atom_types [B, N]`` and ``mask [B, N]`` (bonds inferred as EDM does).
        names: one title per molecule (default ``mol_<i>``).
        properties: one dict of data items per molecule (written as ``> <key>`` fields).
    """
    from .metrics import _pairs, bond_orders  # no import cycle at module load

    if atom_types is None and all(isinstance(x, SDFMolecule) for x in molecules):
        recs = list(molecules)
    else:
        recs = []
        for pos, types in _pairs(molecules, atom_types, mask):
            o = bond_orders([(pos, types)], atom_decoder=atom_decoder)[0] if len(types) else np.zeros((0, 0), np.int8)
            ii, jj = np.nonzero(np.triu(o))
            recs.append(SDFMolecule(pos, types, np.stack([ii, jj, o[ii, jj]], 1).astype(np.int64)))
    if names is not None and len(names) != len(recs):
        raise ValueError(f"write_sdf: {len(names)} names for {len(recs)} molecules")
    if properties is not None and len(properties) != len(recs):
        raise ValueError(f"write_sdf: {len(properties)} property dicts for {len(recs)} molecules")
    blocks = []
    for k, r in enumerate(recs):
        pos = np.asarray(r.positions, dtype=np.float64).reshape(-1, 3)
        types = np.asarray(r.atom_types, dtype=np.int64).reshape(-1)
        if len(pos) != len(types):
            raise ValueError(f"write_sdf: molecule {k}: {len(pos)} positions but {len(types)} atom types")
        if len(types) and (types.min() < 0 or types.max() >= len(atom_decoder)):
            raise ValueError(f"write_sdf: molecule {k}: atom types must be in 0..{len(atom_decoder) - 1}")
        bonds = np.asarray(r.bonds, dtype=np.int64).reshape(-1, 3)
        name = names[k] if names is not None else (r.name or f"mol_{k}")
        props = dict(r.properties)
        props.update(properties[k] if properties is not None else {})
        charges = np.asarray(r.formal_charges, dtype=np.int64).reshape(-1)
        blocks.append(_sdf_block(name, pos, types, bonds, charges, props, atom_decoder))
    return write_text(path, "".join(blocks))


def _read_lines(path: PathLike) -> list[str]:
    p = Path(path)
    try:
        text = p.read_text()
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not a text file ({e.reason} at byte {e.start})") from None
    return text.splitlines()


def read_sdf(path: PathLike, *, atom_decoder: Sequence[str] = ATOM_TYPES) -> list[SDFMolecule]:
    """Read every record of a V2000 SDF file (ours, RDKit's, ...). Elements must be in
    ``atom_decoder``; bond orders 1-3; ``M  CHG`` is read, other ``M`` lines are ignored.
    Raises a one-line ``ValueError`` naming the file and line on any problem (empty file,
    V3000, bad counts / atom / bond lines, missing ``M  END`` or ``$$$$``)."""
    p = Path(path)
    lines = _read_lines(p)
    type_of = {s: i for i, s in enumerate(atom_decoder)}
    out: list[SDFMolecule] = []
    k = 0  # index into lines

    def fail(line_index: int, msg: str):
        raise ValueError(f"{p}:{line_index + 1}: {msg}")

    while k < len(lines):
        if not lines[k].strip() and all(not x.strip() for x in lines[k:]):
            break  # trailing blank lines
        start = k
        if k + 3 >= len(lines):
            fail(min(k + 3, len(lines)), "truncated record: the header block (3 lines) and counts line are incomplete")
        name, counts = lines[k].strip(), lines[k + 3]
        if "V3000" in counts:
            fail(k + 3, "V3000 records are not supported (write V2000)")
        try:
            n, m = int(counts[0:3]), int(counts[3:6])
        except ValueError:
            fail(k + 3, f"bad counts line {counts.strip()!r} (expected atom and bond counts in columns 1-6)")
        if n < 0 or m < 0:
            fail(k + 3, f"negative atom or bond count in {counts.strip()!r}")
        k += 4
        pos = np.zeros((n, 3))
        types = np.zeros(n, dtype=np.int64)
        for a in range(n):
            if k >= len(lines):
                fail(k, f"truncated record: expected {n} atom lines, found {a}")
            line = lines[k]
            fields = line.split()
            if len(fields) < 4:
                fail(k, f"bad atom line {line.strip()!r} (expected x y z element)")
            try:
                xyz = [float(v) for v in fields[:3]]
            except ValueError:
                fail(k, f"bad coordinates in atom line {line.strip()!r}")
            if not all(np.isfinite(xyz)):
                fail(k, f"non-finite coordinates in atom line {line.strip()!r}")
            sym = fields[3]
            if sym not in type_of:
                fail(k, f"element {sym!r} is not one of {', '.join(atom_decoder)}")
            pos[a], types[a] = xyz, type_of[sym]
            k += 1
        bonds = np.zeros((m, 3), dtype=np.int64)
        for b in range(m):
            if k >= len(lines):
                fail(k, f"truncated record: expected {m} bond lines, found {b}")
            line = lines[k]
            try:
                i, j, o = int(line[0:3]), int(line[3:6]), int(line[6:9])
            except ValueError:
                fail(k, f"bad bond line {line.strip()!r} (expected atom, atom, order in columns 1-9)")
            if not (1 <= i <= n and 1 <= j <= n) or i == j:
                fail(k, f"bond {i}-{j} refers to atoms outside 1..{n} or joins an atom to itself")
            if o not in (1, 2, 3):
                fail(k, f"bond order {o} not supported (1, 2 or 3; aromatic bonds must be kekulized)")
            bonds[b] = (i - 1, j - 1, o)
            k += 1
        charges = np.zeros(n, dtype=np.int64)
        while True:
            if k >= len(lines):
                fail(k, f"record starting at line {start + 1} has no 'M  END' line")
            line = lines[k]
            if line.startswith("M  END"):
                k += 1
                break
            if line.startswith("M  CHG"):
                fields = line[6:].split()
                try:
                    cnt = int(fields[0])
                    pairs = [(int(fields[1 + 2 * c]), int(fields[2 + 2 * c])) for c in range(cnt)]
                except (ValueError, IndexError):
                    fail(k, f"bad charge line {line.strip()!r}")
                for a, c in pairs:
                    if not 1 <= a <= n:
                        fail(k, f"charge on atom {a} outside 1..{n}")
                    charges[a - 1] = c
            elif line.startswith("A  "):  # atom alias: its text is on the next line
                k += 1
            elif not line.startswith(("M  ", "V  ", "G  ", "S  SKP")):
                fail(k, f"expected 'M  END' after the bond block, got {line.strip()!r}")
            k += 1
        props: dict = {}
        while True:
            if k >= len(lines):
                fail(k, f"record starting at line {start + 1} does not end with '$$$$'")
            line = lines[k]
            if line.strip() == "$$$$":
                k += 1
                break
            if line.startswith(">"):
                lt, gt = line.find("<"), line.find(">", line.find("<") + 1)
                if lt < 0 or gt < 0:
                    fail(k, f"bad data header {line.strip()!r} (expected '> <name>')")
                key = line[lt + 1:gt]
                vals = []
                k += 1
                while k < len(lines) and lines[k].strip() and lines[k].strip() != "$$$$":
                    vals.append(lines[k])
                    k += 1
                props[key] = "\n".join(vals)
                continue
            if line.strip():
                fail(k, f"unexpected line {line.strip()!r} in the data items (expected '> <name>' or '$$$$')")
            k += 1
        out.append(SDFMolecule(pos, types, bonds, charges, name, props))
    if not out:
        raise ValueError(f"{p}:1: no molecules in the file (empty SDF)")
    return out


def write_smiles(path: PathLike, smiles: Iterable[str], names: Optional[Sequence[str]] = None) -> Path:
    """Write one SMILES per line (``SMILES`` or ``SMILES<TAB>name``), atomically; returns the
    path. Invalid molecules have no SMILES: leave them out (``None`` or an empty string raises)."""
    smiles = list(smiles)
    if names is not None and len(names) != len(smiles):
        raise ValueError(f"write_smiles: {len(names)} names for {len(smiles)} SMILES")
    lines = []
    for i, s in enumerate(smiles):
        if not isinstance(s, str) or not s or any(c.isspace() for c in s):
            raise ValueError(f"write_smiles: entry {i} is not a SMILES string (empty, None or holding whitespace): {s!r}")
        if names is not None:
            name = " ".join(str(names[i]).split())
            lines.append(f"{s}\t{name}" if name else s)
        else:
            lines.append(s)
    return write_text(path, "".join(line + "\n" for line in lines))


def read_smiles(path: PathLike, *, validate: bool = True, with_names: bool = False) -> list:
    """The SMILES of a file (first whitespace-separated field of each line; blank lines and
    lines starting with ``#`` skipped). ``validate``: parse each with RDKit and raise
    ``ValueError("<file>:<line>: invalid SMILES ...")`` on the first it rejects. Returns the
    SMILES as written, or ``(smiles, name or None)`` pairs with ``with_names``."""
    p = Path(path)
    lines = _read_lines(p)
    Chem = None
    if validate:
        from .metrics import _rdkit
        Chem, quiet = _rdkit()
    out = []
    for k, line in enumerate(lines):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        fields = s.split(None, 1)
        smi = fields[0]
        if Chem is not None:
            with quiet():
                ok = Chem.MolFromSmiles(smi) is not None
            if not ok:
                raise ValueError(f"{p}:{k + 1}: invalid SMILES {smi!r} (RDKit cannot parse it)")
        out.append((smi, fields[1].strip() if len(fields) > 1 else None) if with_names else smi)
    return out
