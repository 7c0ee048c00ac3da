"""Reading and writing protein chains as PDB (``.pdb``/``.ent``, optionally gzipped) or mmCIF
(``.cif``/``.mmcif``, optionally gzipped) files, with biotite.

Only the backbone (N, CA, C, O) of protein residues is kept: the standard amino acids, the
modified/protonation variants of :data:`~domains.proteins.chain.THREE_TO_ONE`, and any other
residue the chemical component dictionary calls an amino acid (mapped to its parent's one-letter
code, ``X`` when it has none). First model only, first alternate location only. Every problem
with a file (missing, empty, truncated, unparsable, no protein, unknown suffix) raises a one-line
:class:`StructureError` naming the file (:func:`check_pdb_complete` and :func:`check_cif_complete` say what
counts as truncated).
"""
from __future__ import annotations

import gzip
import io as _io
import re
import string
import warnings
import zlib
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from workbench.utils import atomic_path

from .chain import BACKBONE_ATOMS, ONE_TO_THREE, THREE_TO_ONE, Chain

PathLike = Union[str, Path]

#: suffixes understood by :func:`read_chains` / :func:`write_chain` (each may carry a final ``.gz``)
PDB_SUFFIXES = (".pdb", ".ent")
CIF_SUFFIXES = (".cif", ".mmcif")
VALID_SUFFIXES = PDB_SUFFIXES + CIF_SUFFIXES
#: the text written into files whose N/C/O were placed from ideal geometry (and recognised on reading)
RECONSTRUCTED_LABEL = "BACKBONE N, C, O RECONSTRUCTED FROM THE CA TRACE WITH IDEAL GEOMETRY"
_CHAIN_LETTERS = string.ascii_uppercase + string.ascii_lowercase + string.digits


class StructureError(ValueError):
    """A structure file cannot be used; the message is one line naming the file and the problem."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(exc).__name__)


def structure_format(path: PathLike) -> str:
    """``"pdb"`` or ``"cif"`` from the file name (``.gz`` allowed); StructureError otherwise."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suf in PDB_SUFFIXES:
        if name.endswith(suf):
            return "pdb"
    for suf in CIF_SUFFIXES:
        if name.endswith(suf):
            return "cif"
    raise StructureError(f"{path}: unknown structure file suffix; valid suffixes are "
                         f"{', '.join(VALID_SUFFIXES)} (optionally followed by .gz)")


def structure_stem(path: PathLike) -> str:
    """File name without ``.gz`` and the structure suffix (``"data/1ubq.pdb.gz"`` -> ``"1ubq"``)."""
    name = Path(path).name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return Path(name).stem


def _read_text(path: Path) -> str:
    try:
        if path.name.lower().endswith(".gz"):
            with open(path, "rb") as fh:
                gzipped = fh.read(2) == b"\x1f\x8b"
            if gzipped:
                with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
                    return fh.read()
            # a ".gz" name on a plain-text file: read it as text
        return path.read_text(encoding="utf-8", errors="replace")
    except (OSError, EOFError, zlib.error) as exc:  # unreadable or corrupt gzip
        raise StructureError(f"{path}: cannot read file ({_one_line(exc)})") from None


_BACKBONE_SET = {"N", "CA", "C", "O"}


def check_pdb_complete(path: PathLike, text: str) -> None:
    """Raise a one-line :class:`StructureError` when PDB ``text`` looks cut short: an
    ``ATOM``/``HETATM`` record without its coordinates (< 54 columns); a last line that is not
    newline-terminated and is only a fragment of a record (``"AT"``, ``"EN"``); a file written by
    :func:`write_chain` (which always ends it with ``END``) without ``END``; or a file whose last
    record is an atom of an amino acid with fewer backbone atoms (N, CA, C, O) than the amino
    acid before it. (Files of other programs often lack ``END``: that alone is not an error.)"""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return
    for i, line in enumerate(lines, 1):
        if line.startswith(("ATOM", "HETATM")) and len(line.rstrip()) < 54:
            raise StructureError(f"{path}: truncated or malformed PDB: line {i} ({line[:6].strip()} record) ends at column "
                                 f"{len(line.rstrip())}, before its coordinates (columns 31-54)")
    last = lines[-1].rstrip()
    if not text.endswith("\n") and len(last) <= 6 and last not in ("END", "ENDMDL", "TER"):
        raise StructureError(f"{path}: truncated PDB: the file ends inside a record ({last!r}, no newline)")
    ours = any(ln.startswith("REMARK   1 WRITTEN BY FEWSTEP-WORKBENCH") for ln in lines[:5])
    if ours and not any(ln.rstrip() == "END" for ln in lines[-3:]):
        raise StructureError(f"{path}: truncated PDB: written by fewstep-workbench but without its final END record "
                             f"(the file was cut short)")
    if last.startswith(("ATOM", "HETATM")):
        res, order = {}, []
        for ln in lines:
            if ln.startswith(("ATOM", "HETATM")) and ln[17:20].strip() in THREE_TO_ONE:
                key = ln[17:27]
                if key not in res:
                    res[key] = set()
                    order.append(key)
                res[key].add(ln[12:16].strip())
        if len(order) >= 2:
            prev, cur = res[order[-2]] & _BACKBONE_SET, res[order[-1]] & _BACKBONE_SET
            if cur < prev:
                raise StructureError(f"{path}: truncated PDB: the last residue ({order[-1].strip()}) has only "
                                     f"{', '.join(sorted(cur)) or 'no backbone atoms'} of the backbone atoms "
                                     f"{', '.join(sorted(prev))} of the residue before it, and no END/TER follows")


#: the comment line :func:`write_chain` puts right after ``data_`` in an mmCIF file (so a cut copy is still known as ours)
CIF_MARK = "# written by fewstep-workbench"
_CIF_TOKEN = re.compile(r"""'(?:[^']|'(?=\S))*'|"(?:[^"]|"(?=\S))*"|\S+""")


def _cif_atom_site_loop(lines: list) -> tuple[list, list, bool]:
    """``(columns, value lines, terminated)`` of the ``_atom_site`` loop of mmCIF ``lines``
    (``([], [], True)`` when there is none); ``terminated``: something (``#``, a category, ``loop_``,
    ``data_``) follows its last row, i.e. the file does not end inside it."""
    i, n = 0, len(lines)
    while i < n:
        if lines[i].strip() == "loop_" and i + 1 < n and lines[i + 1].lstrip().startswith("_atom_site."):
            j, cols = i + 1, []
            while j < n and lines[j].lstrip().startswith("_atom_site."):
                cols.append(lines[j].strip().split()[0][len("_atom_site."):])
                j += 1
            rows = []
            while j < n and not lines[j].lstrip().startswith(("#", "_", "loop_", "data_")):
                rows.append(lines[j])
                j += 1
            return cols, rows, j < n
        i += 1
    return [], [], True


def check_cif_complete(path: PathLike, text: str) -> None:
    """Raise a one-line :class:`StructureError` when mmCIF ``text`` looks cut short: a file written
    by :func:`write_chain` (its first lines carry :data:`CIF_MARK`) that does not end with its final
    ``#`` line; an ``_atom_site`` loop that runs to the end of the file with its last row cut (fewer
    values than columns); or such a loop whose last residue has fewer backbone atoms (N, CA, C, O)
    than the amino acid before it. (A loop that simply runs to the end of the file is allowed:
    other programs write them. A file of another program cut exactly between two whole residues
    cannot be told from a shorter chain.)"""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return
    ours = any(ln.strip() == CIF_MARK for ln in lines[:5])
    if ours and lines[-1].strip() != "#":
        raise StructureError(f"{path}: truncated mmCIF: written by fewstep-workbench but without its final '#' line "
                             f"(the file was cut short)")
    cols, rows, terminated = _cif_atom_site_loop(lines)
    if terminated or not cols or any(r.startswith(";") for r in rows):
        return  # the loop is closed, absent, or holds multi-line text fields (not checked here)
    values = [v for r in rows for v in _CIF_TOKEN.findall(r)]
    if len(values) % len(cols):
        raise StructureError(f"{path}: truncated mmCIF: the file ends inside a row of the _atom_site loop "
                             f"({len(values) % len(cols)} of its {len(cols)} values)")
    col = {c: k for k, c in enumerate(cols)}
    pick = lambda *names: next((col[c] for c in names if c in col), None)  # noqa: E731
    atom, comp = pick("label_atom_id", "auth_atom_id"), pick("label_comp_id", "auth_comp_id")
    if atom is None or comp is None:
        return
    keys = [k for k in (pick("pdbx_PDB_model_num"), pick("label_asym_id", "auth_asym_id"), pick("label_seq_id", "auth_seq_id"),
                        pick("pdbx_PDB_ins_code")) if k is not None]
    res, order = {}, []
    for r in range(len(values) // len(cols)):
        row = values[r * len(cols):(r + 1) * len(cols)]
        if row[comp].strip("'\"") not in THREE_TO_ONE:
            continue
        key = (row[comp],) + tuple(row[k] for k in keys)
        if key not in res:
            res[key] = set()
            order.append(key)
        res[key].add(row[atom].strip("'\""))
    if len(order) >= 2:
        prev, cur = res[order[-2]] & _BACKBONE_SET, res[order[-1]] & _BACKBONE_SET
        if cur < prev:
            raise StructureError(f"{path}: truncated mmCIF: the _atom_site loop runs to the end of the file and its last "
                                 f"residue ({' '.join(order[-1])}) has only {', '.join(sorted(cur)) or 'no backbone atoms'} "
                                 f"of the backbone atoms {', '.join(sorted(prev))} of the residue before it")


def _one_letter(res_name: str) -> str:
    code = THREE_TO_ONE.get(res_name)
    if code is not None:
        return code
    from biotite.structure.info import one_letter_code

    try:
        code = one_letter_code(res_name)
    except Exception:  # noqa: BLE001 - unknown component
        code = None
    return code if code and len(code) == 1 and code.isalpha() else "X"


def _protein_mask(atoms) -> np.ndarray:
    import biotite.structure as struc

    known = np.isin(atoms.res_name, list(THREE_TO_ONE))
    try:
        aa = struc.filter_amino_acids(atoms)
    except Exception:  # noqa: BLE001 - the CCD lookup is a best effort
        aa = np.zeros(len(atoms), dtype=bool)
    return known | aa


def _fill_blank_pdb_columns(text: str) -> str:
    """ATOM/HETATM records with blank occupancy / B-factor columns (allowed by many programs,
    rejected by biotite) get 1.00 / 0.00."""
    out = []
    for line in text.splitlines():
        if line.startswith(("ATOM", "HETATM")):
            line = line.ljust(66)
            if not line[54:60].strip():
                line = line[:54] + "  1.00" + line[60:]
            if not line[60:66].strip():
                line = line[:60] + "  0.00" + line[66:]
        out.append(line)
    return "\n".join(out) + "\n"


def _parse_atoms(path: Path, text: str, fmt: str):
    """The first model of ``text`` as a biotite AtomArray, plus whether the file says its
    backbone was reconstructed."""
    if fmt == "pdb":
        from biotite.structure.io.pdb import PDBFile

        f = PDBFile.read(_io.StringIO(text))
        try:
            atoms = f.get_structure(model=1, altloc="first")
        except ValueError:
            f = PDBFile.read(_io.StringIO(_fill_blank_pdb_columns(text)))
            atoms = f.get_structure(model=1, altloc="first")
        labelled = any(line.startswith("REMARK") and RECONSTRUCTED_LABEL in line for line in f.lines[:200])
    else:
        from biotite.structure.io.pdbx import CIFFile, get_structure

        f = CIFFile.read(_io.StringIO(text))
        atoms = get_structure(f, model=1, altloc="first", use_author_fields=True)
        labelled = False
        try:
            block = f.block
            if "struct" in block and "title" in block["struct"]:
                labelled = any(RECONSTRUCTED_LABEL in str(t) for t in block["struct"]["title"].as_array())
        except Exception:  # noqa: BLE001
            labelled = False
    return atoms, labelled


def read_chains(path: PathLike, *, chain_ids: Optional[Iterable[str]] = None, min_len: int = 1) -> list[Chain]:
    """All protein chains of a PDB or mmCIF file.

    Args:
        path: ``.pdb``/``.ent``/``.cif``/``.mmcif``, each optionally ``.gz``.
        chain_ids: keep only these (author) chain ids; ``None`` keeps all.
        min_len: drop chains with fewer protein residues.

    Returns:
        Chains in file order, named ``"<stem>_<chain id>"`` (``"<stem>"`` when the chain id is
        blank), coordinates ``[L, 4, 3]`` (N, CA, C, O; NaN where absent; residues without a CA
        are dropped). ``meta`` holds ``chain_id``, ``res_ids`` (author numbering), ``format``.

    Raises:
        StructureError: the file is missing, empty, unparsable, has an unknown suffix, or has no
            protein residues (after ``chain_ids``/``min_len`` filtering).
    """
    path = Path(path)
    if not path.exists() and not path.suffix:  # e.g. a mistyped directory: "not found" says more than "suffix"
        raise StructureError(f"{path}: file not found")
    fmt = structure_format(path)
    if not path.exists():
        raise StructureError(f"{path}: file not found")
    if path.is_dir():
        raise StructureError(f"{path}: is a directory, not a structure file")
    text = _read_text(path)
    if not text.strip():
        raise StructureError(f"{path}: file is empty")
    if fmt == "pdb":
        check_pdb_complete(path, text)
    else:
        check_cif_complete(path, text)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # biotite warns about guessed elements etc.
            atoms, labelled = _parse_atoms(path, text, fmt)
    except StructureError:
        raise
    except Exception as exc:  # noqa: BLE001 - biotite raises many kinds
        raise StructureError(f"{path}: cannot parse as {'PDB' if fmt == 'pdb' else 'mmCIF'} ({_one_line(exc)})") from None
    if len(atoms) == 0:
        raise StructureError(f"{path}: no atoms found")
    atoms = atoms[_protein_mask(atoms)]
    if len(atoms) == 0:
        raise StructureError(f"{path}: no protein residues found")

    import biotite.structure as struc

    wanted = None if chain_ids is None else {str(c) for c in chain_ids}
    starts = struc.get_residue_starts(atoms, add_exclusive_stop=True)
    per_chain: dict[str, dict] = {}
    order: list[str] = []
    atom_index = {a: i for i, a in enumerate(BACKBONE_ATOMS)}
    atom_index.update({"OT1": 3, "O1": 3})  # C-terminal carbonyl O in CHARMM / some MD files (used only when O is absent)
    coord = atoms.coord
    names = atoms.atom_name
    for s, e in zip(starts[:-1], starts[1:]):
        cid = str(atoms.chain_id[s]).strip()
        if wanted is not None and cid not in wanted:
            continue
        xyz = np.full((4, 3), np.nan, dtype=np.float32)
        seen_o = False
        for k in range(s, e):
            nm = str(names[k])
            j = atom_index.get(nm)
            if j is not None and (not np.isfinite(xyz[j, 0]) or (nm == "O" and not seen_o)):
                seen_o = seen_o or nm == "O"
                xyz[j] = coord[k]
        if not np.isfinite(xyz[1]).all():  # no CA: nothing to place this residue with
            continue
        if cid not in per_chain:
            per_chain[cid] = {"seq": [], "xyz": [], "res_ids": []}
            order.append(cid)
        rec = per_chain[cid]
        rec["seq"].append(_one_letter(str(atoms.res_name[s])))
        rec["xyz"].append(xyz)
        rec["res_ids"].append(int(atoms.res_id[s]))

    stem = structure_stem(path)
    chains = []
    for cid in order:
        rec = per_chain[cid]
        if len(rec["seq"]) < min_len:
            continue
        chains.append(Chain(
            name=f"{stem}_{cid}" if cid else stem,
            sequence="".join(rec["seq"]),
            coords=np.stack(rec["xyz"]),
            source=str(path),
            reconstructed=labelled,
            meta={"chain_id": cid, "res_ids": rec["res_ids"], "format": fmt},
        ))
    if not chains:
        what = f" in chains {sorted(wanted)}" if wanted is not None else ""
        extra = f" with at least {min_len} residues" if min_len > 1 else ""
        raise StructureError(f"{path}: no protein chains{extra} found{what}")
    return chains


def read_structure(path: PathLike) -> Chain:
    """The first protein chain of a PDB/mmCIF file (see :func:`read_chains`)."""
    return read_chains(path)[0]


def _atom_array(chains: Sequence[Chain], unknown_residue: str):
    import biotite.structure as struc

    used: set[str] = set()
    ids = []
    for i, ch in enumerate(chains):
        cid = str(ch.meta.get("chain_id", "") or "")
        if len(cid) != 1 or cid in used:
            cid = next(c for c in _CHAIN_LETTERS if c not in used) if len(used) < len(_CHAIN_LETTERS) else "A"
        used.add(cid)
        ids.append(cid)
    rows = []
    for ch, cid in zip(chains, ids):
        for r in range(len(ch)):
            aa = ch.sequence[r]
            res_name = ONE_TO_THREE.get(aa, unknown_residue)
            for j, atom_name in enumerate(BACKBONE_ATOMS):
                xyz = ch.coords[r, j]
                if np.isfinite(xyz).all():
                    rows.append((cid, r + 1, res_name, atom_name, atom_name[0], xyz))
    if not rows:
        raise ValueError("write_chain: no atom has finite coordinates")
    arr = struc.AtomArray(len(rows))
    arr.chain_id = np.array([r[0] for r in rows])
    arr.res_id = np.array([r[1] for r in rows])
    arr.res_name = np.array([r[2] for r in rows])
    arr.atom_name = np.array([r[3] for r in rows])
    arr.element = np.array([r[4] for r in rows])
    arr.hetero = np.zeros(len(rows), dtype=bool)
    arr.coord = np.stack([r[5] for r in rows]).astype(np.float32)
    arr.add_annotation("occupancy", dtype=float)
    arr.occupancy[:] = 1.0
    arr.add_annotation("b_factor", dtype=float)
    arr.b_factor[:] = 0.0
    return arr


def _entry_id(path: Path) -> str:
    """A 4-character-ish entry id for file headers: the file stem's alphanumerics (upper case),
    ``"XXXX"`` when it has none."""
    stem = "".join(ch for ch in structure_stem(path) if ch.isalnum()).upper()
    return stem[:4] if stem else "XXXX"


def _with_ter_records(lines: list) -> list:
    """PDB ``ATOM`` lines with a ``TER`` record after each chain and atom serial numbers
    renumbered so that each ``TER`` takes the next one (PDB format v3.3, sec. 9)."""
    out, prev, serial = [], None, 0
    for line in lines:
        if line.startswith(("ATOM", "HETATM")):
            if prev is not None and line[21] != prev[21]:
                serial += 1
                out.append(_ter_line(prev, serial))
            serial += 1
            line = f"{line[:6]}{serial % 100000:>5}{line[11:]}"
            prev = line
        out.append(line)
    if prev is not None:
        out.append(_ter_line(prev, serial + 1))
    return out


def _ter_line(last_atom: str, serial: int) -> str:
    return f"TER   {serial % 100000:>5}      {last_atom[17:20]} {last_atom[21]}{last_atom[22:27]}".ljust(80)


def _polymer_categories(arr) -> dict:
    """The mmCIF polymer description categories that describe ``arr``'s chains (one entity per
    chain): ``entity``, ``entity_poly``, ``entity_poly_seq``, ``struct_asym`` and
    ``pdbx_poly_seq_scheme``. mkdssp 4.x (libcifpp) builds its residues from
    ``pdbx_poly_seq_scheme`` and finds 0 residues without it; gemmi and PyMOL read the entity
    categories for the sequence."""
    from biotite.structure.io.pdbx import CIFCategory

    chains: list = []
    residues: dict = {}
    for cid, rid, rname in zip(arr.chain_id, arr.res_id, arr.res_name):
        cid = str(cid)
        if cid not in residues:
            chains.append(cid)
            residues[cid] = []
        if not residues[cid] or residues[cid][-1][0] != int(rid):
            residues[cid].append((int(rid), str(rname)))
    ent = {cid: str(i + 1) for i, cid in enumerate(chains)}
    rows = [(cid, rid, rn) for cid in chains for rid, rn in residues[cid]]
    one = {c: "".join(_one_letter(rn) for _, rn in residues[c]) for c in chains}
    return {
        "entity": CIFCategory({"id": [ent[c] for c in chains], "type": ["polymer"] * len(chains)}),
        "entity_poly": CIFCategory({
            "entity_id": [ent[c] for c in chains], "type": ["polypeptide(L)"] * len(chains),
            "nstd_linkage": ["no"] * len(chains), "nstd_monomer": ["no"] * len(chains),
            "pdbx_seq_one_letter_code": [one[c] for c in chains],
            "pdbx_seq_one_letter_code_can": [one[c] for c in chains],
            "pdbx_strand_id": chains}),
        "entity_poly_seq": CIFCategory({
            "entity_id": [ent[c] for c, _, _ in rows], "num": [str(r) for _, r, _ in rows],
            "mon_id": [rn for _, _, rn in rows], "hetero": ["n"] * len(rows)}),
        "struct_asym": CIFCategory({"id": chains, "pdbx_blank_PDB_chainid_flag": ["N"] * len(chains),
                                    "entity_id": [ent[c] for c in chains]}),
        "pdbx_poly_seq_scheme": CIFCategory({
            "asym_id": [c for c, _, _ in rows], "entity_id": [ent[c] for c, _, _ in rows],
            "seq_id": [str(r) for _, r, _ in rows], "mon_id": [rn for _, _, rn in rows],
            "ndb_seq_num": [str(r) for _, r, _ in rows], "pdb_seq_num": [str(r) for _, r, _ in rows],
            "auth_seq_num": [str(r) for _, r, _ in rows], "pdb_mon_id": [rn for _, _, rn in rows],
            "auth_mon_id": [rn for _, _, rn in rows], "pdb_strand_id": [c for c, _, _ in rows],
            "pdb_ins_code": ["."] * len(rows), "hetero": ["n"] * len(rows)}),
    }


def write_chain(chain_or_chains: Union[Chain, Sequence[Chain]], path: PathLike, *, fmt: Optional[str] = None,
                reconstruct: bool = False, unknown_residue: str = "GLY") -> Path:
    """Write one chain (or several, as chains A, B, ...) to a PDB or mmCIF file, atomically.

    Args:
        chain_or_chains: a :class:`Chain` or a list of them; each chain keeps its
            ``meta["chain_id"]`` when that is one unique character.
        path: destination; a final ``.gz`` compresses the file.
        fmt: ``"pdb"`` or ``"cif"``; ``None`` takes it from the suffix.
        reconstruct: place missing N, C, O from ideal geometry around the CA trace
            (:func:`~domains.proteins.geometry.reconstruct_backbone`) and label the file
            (a ``REMARK 250`` line in PDB, ``_struct.title`` in mmCIF). Without it, atoms that
            are NaN (e.g. the N/C/O of CA-only chains) are simply not written.
        unknown_residue: residue name written for sequence letters other than the 20 standard
            ones (``X`` for designed backbones). ``GLY`` (default) is the usual choice for
            sequence-less backbones and is read by ProteinMPNN and TM-align alike; ``UNK`` keeps
            the "unknown" meaning (read back as ``X``).

    Returns:
        ``Path(path)``. Chains that were reconstructed (here or before, ``chain.reconstructed``)
        make the file labelled, and :func:`read_chains` sets ``reconstructed=True`` on reading it.
    """
    chains = [chain_or_chains] if isinstance(chain_or_chains, Chain) else list(chain_or_chains)
    if not chains or not all(isinstance(c, Chain) for c in chains):
        raise ValueError("write_chain: expected a Chain or a non-empty list of Chains")
    path = Path(path)
    if fmt is None:
        fmt = structure_format(path)
    if fmt not in ("pdb", "cif"):
        raise ValueError(f"write_chain: unknown fmt {fmt!r}; valid: 'pdb', 'cif' (or None for the suffix)")
    if len(unknown_residue) != 3:
        raise ValueError(f"write_chain: unknown_residue must be a three-letter residue name, got {unknown_residue!r}")
    labelled = False
    out = []
    for ch in chains:
        if reconstruct and not np.isfinite(ch.coords).all():
            from .geometry import reconstruct_backbone

            full = reconstruct_backbone(ch.ca)
            coords = np.where(np.isfinite(ch.coords), ch.coords, full).astype(np.float32)
            ch = Chain(ch.name, ch.sequence, coords, ch.source, True, dict(ch.meta))
        labelled = labelled or ch.reconstructed
        out.append(ch)
    arr = _atom_array(out, unknown_residue.upper())

    if fmt == "pdb":
        from biotite.structure.io.pdb import PDBFile

        f = PDBFile()
        f.set_structure(arr)
        # HEADER first: mkdssp (DSSP 4.x, libcifpp) only parses a file as PDB when its first
        # record is HEADER; columns 11-50 classification, 63-66 ID code (PDB format v3.3)
        header = [f"{'HEADER':<10}{'PROTEIN':<40}{'':<12}{_entry_id(path):<4}".ljust(80),
                  "COMPND    MOL_ID: 1;".ljust(80),  # without COMPND mkdssp warns "invalid COMPND record"
                  f"REMARK   1 WRITTEN BY FEWSTEP-WORKBENCH: {', '.join(c.name for c in out)}"[:80]]
        if labelled:
            header.append(f"REMARK 250 {RECONSTRUCTED_LABEL}")
        f.lines = header + _with_ter_records(list(f.lines)) + ["END"]
        buf = _io.StringIO()
        f.write(buf)
    else:
        from biotite.structure.io.pdbx import CIFCategory, CIFFile, set_structure

        f = CIFFile()
        set_structure(f, arr)
        title = "written by fewstep-workbench"
        if labelled:
            title = f"{title}; {RECONSTRUCTED_LABEL}"
        block = f.block
        entry = _entry_id(path)
        block["entry"] = CIFCategory({"id": [entry]})
        block["struct"] = CIFCategory({"entry_id": [entry], "title": [title]})
        for name, cat in _polymer_categories(arr).items():
            block[name] = cat
        # atom_site.label_entity_id must point at the entity of its chain (one per chain)
        site = block["atom_site"]
        order = list(dict.fromkeys(str(c) for c in arr.chain_id))
        ent = {c: str(i + 1) for i, c in enumerate(order)}
        site["label_entity_id"] = [ent[str(c)] for c in site["label_asym_id"].as_array()]
        buf = _io.StringIO()
        f.write(buf)
        first, _, rest = buf.getvalue().partition("\n")  # data_NAME, then our mark (check_cif_complete)
        buf = _io.StringIO(f"{first}\n{CIF_MARK}\n{rest}")
    text = buf.getvalue()
    with atomic_path(path) as tmp:
        if path.name.lower().endswith(".gz"):
            with gzip.open(tmp, "wt", encoding="utf-8") as fh:
                fh.write(text)
        else:
            Path(tmp).write_text(text, encoding="utf-8")
    return path
