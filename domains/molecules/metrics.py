"""Quality metrics of generated 3D molecules: EDM's stability and the RDKit validity, uniqueness
and novelty, re-implemented after E(3) Equivariant Diffusion Models (EDM; Hoogeboom, Satorras,
Vignac and Welling, ICML 2022), official code github.com/ehoogeboom/e3_diffusion_for_molecules.

**Bonds from distances** (``qm9/bond_analyze.py::get_bond_order``). For atoms ``a, b`` at distance
``d`` (in pm = 100 x Angstrom), with the typical single / double / triple bond lengths
:data:`BONDS1` / :data:`BONDS2` / :data:`BONDS3` (pm) and the margins :data:`MARGINS` = (10, 5, 3)
pm (tuned by EDM to maximise the stability of the QM9 molecules): no bond when
``d >= bonds1 + 10``; else triple when the pair has a triple length and ``d < bonds3 + 3`` (and
``d < bonds2 + 5``), double when the pair has a double length and ``d < bonds2 + 5``, single
otherwise. Every pair of atoms is considered (no nearest-neighbour limit).

**Stability** (``qm9/analyze.py::check_stability``). An atom is stable when the sum of the
orders of its bonds equals its allowed valence (:data:`ALLOWED_VALENCE`: H 1, C 4, N 3, O 2,
F 1); a molecule is stable when all its atoms are. Atom stability = stable atoms / all atoms
(pooled over the molecules), molecule stability = stable molecules / molecules. EDM's published
values on QM9 itself (with hydrogens): 99.0% atoms, 95.2% molecules (the tests check both).
Without hydrogens the valences cannot be met, so stability is only meaningful with hydrogens.

**RDKit metrics** (``qm9/rdkit_functions.py``): :func:`build_molecule` makes an RDKit molecule
with one atom per atom and the bonds above (EDM's ``build_molecule`` / ``build_xae_molecule``:
no formal charges, no explicit hydrogen counts). A molecule is *valid* when RDKit sanitises it
(``Chem.SanitizeMol``: valences, aromaticity, ...); its SMILES is then the one of its largest
fragment (EDM's ``compute_validity``: the whole molecule is sanitised first, so a molecule with an
invalid fragment is invalid even when its largest fragment is fine). *Uniqueness* = distinct
valid SMILES / valid molecules; *novelty* = unique valid SMILES not in a reference set (the
training molecules) / unique valid SMILES (EDM's ``compute_uniqueness``, ``compute_novelty``).
SMILES are canonical RDKit SMILES without hydrogens and without stereochemistry
(:func:`canonical_smiles`), so they compare with the SMILES column of the data set; EDM keeps the
hydrogens as ``[H]`` atoms in its SMILES and compares with the SMILES of the training molecules
passed through the same 3D pipeline (:func:`reference_smiles` does that here); both conventions
give the same uniqueness, and the reference set decides novelty.

Inputs: ``molecules`` is either a list of pairs ``(positions [n, 3], atom_types [n])`` (EDM's
form; numpy or torch) or a padded batch ``positions [B, N, 3]``, ``atom_types [B, N]`` (long,
indices into ``atom_decoder``, default :data:`~domains.molecules.data.ATOM_TYPES`) with ``mask``
``[B, N]`` (bool or float, 1 = real atom). Positions are in Angstrom.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from .data import ATOM_TYPES

#: typical single-bond lengths (pm) between the QM9 elements (EDM ``bond_analyze.bonds1``; EDM's
#: table also holds other elements, unused for QM9)
BONDS1 = {
    "H": {"H": 74, "C": 109, "N": 101, "O": 96, "F": 92},
    "C": {"H": 109, "C": 154, "N": 147, "O": 143, "F": 135},
    "N": {"H": 101, "C": 147, "N": 145, "O": 140, "F": 136},
    "O": {"H": 96, "C": 143, "N": 140, "O": 148, "F": 142},
    "F": {"H": 92, "C": 135, "N": 136, "O": 142, "F": 142},
}
#: typical double-bond lengths (pm) (EDM ``bonds2``, QM9 elements)
BONDS2 = {"C": {"C": 134, "N": 129, "O": 120}, "N": {"C": 129, "N": 125, "O": 121}, "O": {"C": 120, "N": 121, "O": 121}}
#: typical triple-bond lengths (pm) (EDM ``bonds3``, QM9 elements)
BONDS3 = {"C": {"C": 120, "N": 116, "O": 113}, "N": {"C": 116, "N": 110}, "O": {"C": 113}}
#: margins (pm) added to the single / double / triple lengths (EDM ``margin1, margin2, margin3``)
MARGINS = (10, 5, 3)
#: the valence an atom must have to be stable (EDM ``allowed_bonds``, QM9 elements)
ALLOWED_VALENCE = {"H": 1, "C": 4, "N": 3, "O": 2, "F": 1}

def _np(x, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def bond_order(atom1: str, atom2: str, distance: float) -> int:
    """EDM's ``get_bond_order`` for one pair: 0 (none), 1, 2 or 3; ``distance`` in Angstrom."""
    d = 100.0 * float(distance)
    m1, m2, m3 = MARGINS
    if d >= BONDS1[atom1][atom2] + m1:
        return 0
    if atom2 in BONDS2.get(atom1, {}) and d < BONDS2[atom1][atom2] + m2:
        if atom2 in BONDS3.get(atom1, {}) and d < BONDS3[atom1][atom2] + m3:
            return 3
        return 2
    return 1


def _thresholds(atom_decoder: Sequence[str]) -> np.ndarray:
    """float64 ``[3, K, K]``: bond-length thresholds (pm, margins included) per type pair;
    ``-inf`` where the pair has no double / triple length."""
    k = len(atom_decoder)
    thr = np.full((3, k, k), -np.inf)
    for i, a in enumerate(atom_decoder):
        for j, b in enumerate(atom_decoder):
            if a not in BONDS1 or b not in BONDS1[a]:
                raise ValueError(f"no bond length for the pair {a}-{b}: the metrics know {', '.join(BONDS1)}")
            for o, table in enumerate((BONDS1, BONDS2, BONDS3)):
                if b in table.get(a, {}):
                    thr[o, i, j] = table[a][b] + MARGINS[o]
    return thr


def _as_padded(molecules, atom_types=None, mask=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> ``positions [B, N, 3]`` float64, ``atom_types [B, N]`` int64 (0 on padding), ``mask [B, N]`` bool."""
    if atom_types is None:  # a list of (positions, atom_types) pairs
        pairs = [(_np(p, np.float64).reshape(-1, 3), _np(t, np.int64).reshape(-1)) for p, t in molecules]
        for i, (p, t) in enumerate(pairs):
            if len(p) != len(t):
                raise ValueError(f"molecule {i}: {len(p)} positions but {len(t)} atom types")
        b, n = len(pairs), max((len(t) for _, t in pairs), default=0)
        pos = np.zeros((b, n, 3))
        types = np.zeros((b, n), dtype=np.int64)
        m = np.zeros((b, n), dtype=bool)
        for i, (p, t) in enumerate(pairs):
            pos[i, :len(t)], types[i, :len(t)], m[i, :len(t)] = p, t, True
        return pos, types, m
    pos = _np(molecules, np.float64)
    types = _np(atom_types, np.int64)
    if pos.ndim != 3 or pos.shape[-1] != 3 or types.shape != pos.shape[:2]:
        raise ValueError(f"expected positions [B, N, 3] and atom_types [B, N], got {tuple(pos.shape)} and {tuple(types.shape)}")
    m = np.ones(types.shape, dtype=bool) if mask is None else _np(mask).astype(np.float64) > 0.5
    if m.shape != types.shape:
        raise ValueError(f"mask {tuple(m.shape)} does not match atom_types {tuple(types.shape)}")
    return pos, np.where(m, types, 0), m


def _check_types(types: np.ndarray, mask: np.ndarray, atom_decoder: Sequence[str]) -> None:
    t = types[mask]
    if t.size and (t.min() < 0 or t.max() >= len(atom_decoder)):
        raise ValueError(f"atom types must be in 0..{len(atom_decoder) - 1} (indices into {tuple(atom_decoder)}), "
                         f"got {int(t.min())}..{int(t.max())}")


def bond_orders(molecules, atom_types=None, mask=None, *, atom_decoder: Sequence[str] = ATOM_TYPES) -> np.ndarray:
    """EDM's bond orders of every atom pair, vectorised: int8 ``[B, N, N]`` (symmetric, 0 on the
    diagonal and on padding). Same inputs as :func:`stability`."""
    pos, types, m = _as_padded(molecules, atom_types, mask)
    _check_types(types, m, atom_decoder)
    return _bond_orders(pos, types, m, _thresholds(atom_decoder))


def _bond_orders(pos: np.ndarray, types: np.ndarray, m: np.ndarray, thr: np.ndarray) -> np.ndarray:
    diff = pos[:, :, None, :] - pos[:, None, :, :]
    d2 = np.einsum("bijk,bijk->bij", diff, diff)  # squared distance, Angstrom^2, [B, N, N]
    # (100 d < thr) <=> d^2 < (thr / 100)^2 for thr > 0; a missing length (-inf) never matches
    t2 = np.where(np.isfinite(thr), (thr / 100.0) ** 2, -1.0).reshape(3, -1)
    k = len(thr[0])
    lim = t2[:, types[:, :, None] * k + types[:, None, :]]  # [3, B, N, N]
    b1, b2, b3 = d2 < lim[0], d2 < lim[1], d2 < lim[2]
    order = b1 * (1 + b2 * (1 + b3.astype(np.int8)))
    pair = m[:, :, None] & m[:, None, :]
    pair &= ~np.eye(pos.shape[1], dtype=bool)[None]
    return (order * pair).astype(np.int8)


def stability(molecules, atom_types=None, mask=None, *, atom_decoder: Sequence[str] = ATOM_TYPES,
              chunk: int = 2048) -> dict:
    """EDM's atom and molecule stability (``qm9/analyze.py::check_stability`` /
    ``analyze_stability_for_molecules``), vectorised over molecules.

    Args:
        molecules: a list of ``(positions [n, 3], atom_types [n])`` pairs, or ``positions
            [B, N, 3]`` with ``atom_types [B, N]`` and ``mask [B, N]`` (see the module docstring).
        chunk: molecules per vectorised block (memory ``~ chunk * N^2``).

    Returns:
        ``{"atom_stable": float, "mol_stable": float, "n_molecules": int, "n_atoms": int,
        "molecule_stable": bool [B], "stable_atoms": int64 [B], "valence": int64 [B, N]}``
        (fractions in [0, 1]; ``valence`` = sum of the bond orders of each atom, 0 on padding).
    """
    pos, types, m = _as_padded(molecules, atom_types, mask)
    _check_types(types, m, atom_decoder)
    thr = _thresholds(atom_decoder)
    allowed = np.array([ALLOWED_VALENCE[a] for a in atom_decoder], dtype=np.int64)
    valence = np.zeros(types.shape, dtype=np.int64)
    # molecules sorted by their last real atom and cut into blocks padded to the block's width:
    # no time is spent on the padding of small molecules
    width = np.where(m.any(1), m.shape[1] - np.argmax(m[:, ::-1], axis=1), 0) if m.shape[1] else np.zeros(len(m), int)
    order = np.argsort(width, kind="stable")
    step = max(1, int(chunk))
    for s in range(0, len(order), step):
        rows = order[s:s + step]
        w = int(width[rows].max())
        if w:
            valence[rows, :w] = _bond_orders(pos[rows, :w], types[rows, :w], m[rows, :w], thr).sum(-1, dtype=np.int64)
    atom_ok = (valence == allowed[types]) & m
    stable_atoms = atom_ok.sum(1)
    n_atoms = m.sum(1)
    mol_ok = stable_atoms == n_atoms
    total = int(n_atoms.sum())
    return {"atom_stable": float(stable_atoms.sum() / total) if total else 0.0,
            "mol_stable": float(mol_ok.mean()) if len(mol_ok) else 0.0,
            "n_molecules": int(len(mol_ok)), "n_atoms": total,
            "molecule_stable": mol_ok, "stable_atoms": stable_atoms, "valence": valence}


def check_stability(positions, atom_types, *, atom_decoder: Sequence[str] = ATOM_TYPES) -> tuple[bool, int, int]:
    """One molecule, EDM's return value: ``(molecule_stable, stable_atoms, n_atoms)``;
    ``positions [n, 3]`` (Angstrom), ``atom_types [n]``."""
    r = stability([(positions, atom_types)], atom_decoder=atom_decoder)
    return bool(r["molecule_stable"][0]), int(r["stable_atoms"][0]), int(r["n_atoms"])


# --------------------------------------------------------------------------------------- RDKit

def _rdkit():
    """``(Chem, quiet)``: RDKit's ``Chem`` and a context manager that silences RDKit's log (its
    messages on unsanitisable molecules) and restores it after; one-line error without RDKit."""
    try:
        from rdkit import Chem, rdBase
    except ImportError:
        raise ModuleNotFoundError("the molecule metrics need RDKit, which is not installed: "
                                  "pip install -c constraints.txt rdkit  (or pip install -e '.[molecules]')") from None
    return Chem, rdBase.BlockLogs


def build_molecule(positions, atom_types, *, atom_decoder: Sequence[str] = ATOM_TYPES, conformer: bool = False):
    """An (unsanitised) RDKit ``RWMol`` with one atom per atom and EDM's inferred bonds
    (``qm9/rdkit_functions.py::build_molecule``); ``positions [n, 3]`` Angstrom, ``atom_types
    [n]``. ``conformer=True`` also stores the coordinates (a 3D conformer)."""
    Chem, _ = _rdkit()
    pos = _np(positions, np.float64).reshape(-1, 3)
    types = _np(atom_types, np.int64).reshape(-1)
    orders = bond_orders([(pos, types)], atom_decoder=atom_decoder)[0]
    bond_type = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    mol = Chem.RWMol()
    for t in types:
        mol.AddAtom(Chem.Atom(atom_decoder[int(t)]))
    ii, jj = np.nonzero(np.triu(orders))
    for i, j in zip(ii.tolist(), jj.tolist()):
        mol.AddBond(i, j, bond_type[int(orders[i, j])])
    if conformer:
        conf = Chem.Conformer(len(types))
        for i, p in enumerate(pos.tolist()):
            conf.SetAtomPosition(i, p)
        conf.Set3D(True)
        mol.AddConformer(conf, assignId=True)
    return mol


def _mol_smiles(mol) -> str:
    Chem, quiet = _rdkit()
    with quiet():
        mol = Chem.RemoveHs(mol, sanitize=False)
        return Chem.MolToSmiles(mol, isomericSmiles=False)


def mol_to_smiles(mol) -> Optional[str]:
    """EDM's ``mol2smiles``: sanitise ``mol`` (in place) and return its canonical SMILES (no
    hydrogens, no stereochemistry), or ``None`` when RDKit cannot sanitise it."""
    Chem, quiet = _rdkit()
    with quiet():
        try:
            Chem.SanitizeMol(mol)
        except Exception:  # noqa: BLE001 - RDKit raises several (ValueError subclasses, KekulizeException, ...)
            return None
    return _mol_smiles(mol)


def molecule_smiles(positions, atom_types, *, atom_decoder: Sequence[str] = ATOM_TYPES) -> Optional[str]:
    """The SMILES of one 3D molecule as EDM's ``compute_validity`` makes it: ``None`` when the
    molecule built by :func:`build_molecule` does not sanitise, else the canonical SMILES of its
    largest fragment (most atoms)."""
    Chem, _ = _rdkit()
    mol = build_molecule(positions, atom_types, atom_decoder=atom_decoder)
    if mol_to_smiles(mol) is None:
        return None
    frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    largest = max(frags, default=mol, key=lambda f: f.GetNumAtoms())
    return mol_to_smiles(Chem.RWMol(largest))


def canonical_smiles(smiles: str) -> Optional[str]:
    """Canonical RDKit SMILES of ``smiles`` without hydrogens and stereochemistry (the form the
    metrics compare), or ``None`` when RDKit cannot parse it."""
    Chem, quiet = _rdkit()
    with quiet():
        mol = Chem.MolFromSmiles(str(smiles))
    return None if mol is None else _mol_smiles(mol)


def _pairs(molecules, atom_types=None, mask=None) -> list[tuple[np.ndarray, np.ndarray]]:
    if atom_types is None:
        return [(_np(p, np.float64).reshape(-1, 3), _np(t, np.int64).reshape(-1)) for p, t in molecules]
    pos, types, m = _as_padded(molecules, atom_types, mask)
    return [(pos[i][m[i]], types[i][m[i]]) for i in range(len(pos))]


def validity(molecules, atom_types=None, mask=None, *, atom_decoder: Sequence[str] = ATOM_TYPES) -> tuple[list, float]:
    """EDM's ``compute_validity``: ``(valid SMILES list, valid fraction)``; same inputs as
    :func:`stability`. The list holds one SMILES (largest fragment) per valid molecule."""
    pairs = _pairs(molecules, atom_types, mask)
    valid = [s for s in (molecule_smiles(p, t, atom_decoder=atom_decoder) for p, t in pairs) if s is not None]
    return valid, (len(valid) / len(pairs) if pairs else 0.0)


def uniqueness(valid_smiles: Sequence[str]) -> float:
    """Distinct / all of the valid SMILES (EDM's ``compute_uniqueness``); 0 when there are none."""
    return len(set(valid_smiles)) / len(valid_smiles) if len(valid_smiles) else 0.0


def novelty(unique_smiles: Iterable[str], reference_smiles: Iterable[str]) -> float:
    """Fraction of ``unique_smiles`` (deduplicated here) absent from ``reference_smiles`` (EDM's
    ``compute_novelty``). Both sides are compared as given: pass SMILES in the form of
    :func:`canonical_smiles` (the reference through :func:`canonical_reference`, or
    :func:`reference_smiles`)."""
    unique = set(unique_smiles)
    ref = reference_smiles if isinstance(reference_smiles, (set, frozenset)) else set(reference_smiles)
    return sum(s not in ref for s in unique) / len(unique) if unique else 0.0


def canonical_reference(smiles: Iterable[str]) -> frozenset:
    """The set of :func:`canonical_smiles` of ``smiles`` (unparsable ones dropped), e.g. the
    ``smiles`` column of the training split."""
    return frozenset(c for c in (canonical_smiles(s) for s in smiles) if c is not None)


def reference_smiles(molecules, atom_types=None, mask=None, *, atom_decoder: Sequence[str] = ATOM_TYPES) -> frozenset:
    """EDM's novelty reference (``retrieve_qm9_smiles``): the SMILES of the (training) molecules
    passed through the same 3D pipeline as the generated ones (:func:`molecule_smiles`; invalid
    ones dropped)."""
    return frozenset(validity(molecules, atom_types, mask, atom_decoder=atom_decoder)[0])


def rdkit_metrics(molecules, atom_types=None, mask=None, *, reference: Optional[Iterable[str]] = None,
                  atom_decoder: Sequence[str] = ATOM_TYPES) -> dict:
    """EDM's ``BasicMolecularMetrics.evaluate``: ``{"validity", "uniqueness", "novelty",
    "valid_unique" (validity x uniqueness), "n_molecules", "n_valid", "n_unique", "unique"
    (sorted unique valid SMILES)}``; ``novelty`` is ``None`` without a ``reference`` set."""
    pairs = _pairs(molecules, atom_types, mask)
    valid, val = validity(pairs, atom_decoder=atom_decoder)
    uniq = uniqueness(valid)
    unique = sorted(set(valid))
    nov = None if reference is None else novelty(unique, reference)
    return {"validity": val, "uniqueness": uniq, "novelty": nov, "valid_unique": val * uniq,
            "n_molecules": len(pairs), "n_valid": len(valid), "n_unique": len(unique), "unique": unique}
