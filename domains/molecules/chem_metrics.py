"""Chemistry metrics of generated 3D molecules: FCD, drug-likeness / synthesizability / lipophilicity
distributions and PoseBusters-style geometry checks, in one call (:func:`chemistry_metrics`).

Molecules come in as in :mod:`domains.molecules.metrics`: ``positions [B, N, 3]`` (Angstrom),
``atom_types [B, N]`` (long, indices into :data:`~domains.molecules.data.ATOM_TYPES` = H, C, N, O,
F) and ``mask [B, N]`` (bool or float, 1 = real atom), numpy or torch; or a list of
``(positions [n, 3], atom_types [n])`` pairs with ``atom_types=None``. Bonds are EDM's, inferred
from the distances (:func:`domains.molecules.metrics.build_molecule`); a molecule is *valid* when
RDKit sanitises it, and its SMILES is the canonical SMILES of its largest fragment
(:func:`~domains.molecules.metrics.molecule_smiles`: no hydrogens, no stereochemistry).

**FCD** (Preuer, Renz, Unterthiner, Hochreiter and Klambauer, "Frechet ChemNet Distance: a metric
for generative models for molecules in drug discovery", J. Chem. Inf. Model. 58:1736, 2018;
official code github.com/bioinf-jku/FCD, pip ``fcd==1.2.2``, which ships the ChemNet weights
``ChemNet_v0.13_pretrained.pt``, so it runs offline). The activations of ChemNet's last LSTM
layer (512 values per SMILES; the official one-hot encoding padded to 350 tokens, ``fcd.utils.
SmilesDataset``) of two sets are summarised by their mean and covariance, and
``FCD = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (``fcd.utils.calculate_frechet_distance``,
re-implemented here with the same ``1e-6`` regularisation fallback, because the official function
passes ``sqrtm(disp=)``, which SciPy 1.17 deprecates for removal in 1.18; the activations are
``fcd.get_predictions``'s without its DataLoader worker process and its deprecated
``np.row_stack``; the value equals the official pipeline's, checked by the tests). Lower is
better; 0 for identical statistics. FCD is biased upwards for small sets (a 512 x 512 covariance
from a few hundred SMILES; QM9 test vs 500 train SMILES: ~1.8 at 300 SMILES, ~6 at 50): compare
values at equal set sizes only. :func:`fcd_score` caches the statistics of its reference set (the
second argument) as ``.npz`` under ``$FEWSTEP_WORKBENCH_CACHE/chem_metrics/`` (default
``~/.cache/fewstep-workbench/chem_metrics/``; written atomically), keyed on the set of canonical
SMILES, the fcd version and the weights' digest. SMILES are canonicalised without stereochemistry
(the official ``fcd.canonical_smiles`` keeps it; QM9's SMILES have none).

**Properties** of each valid molecule (computed from its SMILES, as MOSES does): QED (Bickerton,
Paolini, Besnard, Muresan and Hopkins, "Quantifying the chemical beauty of drugs", Nature Chem.
4:90, 2012; ``rdkit.Chem.QED.qed``, mean weights), the SA score (Ertl and Schuffenhauer,
"Estimation of synthetic accessibility score of drug-like molecules based on molecular complexity
and fragment contributions", J. Cheminf. 1:8, 2009; 1 = easy ... 10 = hard; the official RDKit
implementation ``Contrib/SA_Score/sascorer.py`` loaded by path from ``rdkit.RDConfig.RDContribDir``)
and Crippen's logP (Wildman and Crippen, J. Chem. Inf. Comput. Sci. 39:868, 1999;
``rdkit.Chem.Crippen.MolLogP``). Distribution distance to a reference set: the Wasserstein-1
distance per property (``scipy.stats.wasserstein_distance``), as MOSES (Polykovskiy et al.,
"Molecular Sets (MOSES)", Front. Pharmacol. 11:565644, 2020; github.com/molecularsets/moses,
``moses/metrics/metrics.py::WassersteinMetric``) does for logP, SA and QED. Reference properties
are cached like the FCD statistics.

**Geometry** (PoseBusters: Buttenschoen, Morris and Deane, "PoseBusters: AI-based docking methods
fail to generate physically valid poses or generalise to novel sequences", Chem. Sci. 15:3130,
2024; official code github.com/maabuu/posebusters v0.6.5, config ``mol.yml``, modules
``distance_geometry.py``, ``flatness.py``, ``sanity.py``), re-implemented without pandas with the
official thresholds:

* ``bond_lengths``: every bond between heavy atoms within RDKit's distance-geometry bounds
  (``GetMoleculeBoundsMatrix(set15bounds=True, scaleVDW=True, doTriangleSmoothing=True,
  useMacrocycle14config=False)``) widened by 25% (relative error to the violated bound <= 0.25);
  the bounds of conjugated terminal groups (carboxylate, nitro: ``[O,N;D1]`` ends) are symmetrised
  per element pair first, as the official code does.
* ``bond_angles``: every 1-3 distance (two heavy atoms bonded to a common atom) within its bounds
  widened by 25%.
* ``internal_steric_clash``: no other pair of heavy atoms closer than 70% of its lower bound
  (RDKit's van der Waals / topological lower bound).
* ``aromatic_ring_flatness``: the atoms of every aromatic sp2 5- and 6-membered ring within
  0.25 A of their least-squares plane; ``double_bond_flatness``: the same for every
  ``[C;X3;^2](*)(*)=[C;X3;^2](*)(*)`` group; ``non_aromatic_ring_non_flatness``: every
  non-aromatic 6-membered ring has an atom at least 0.05 A off its plane. The distance of a group
  is the largest distance of its atoms to their least-squares plane (centred points, SVD normal).
  Deviation: the official ``_get_distances_to_plane(X).max()`` takes the largest *signed*
  distance, and the sign of the SVD normal is arbitrary, so an atom out of the plane on the
  normal's negative side goes unseen (a benzene with one atom 0.6 A off its plane can pass); here
  the absolute distance, as the official documentation describes the check ("max distance to
  closest shared plane"). Checked against posebusters 0.6.5 on 388 QM9 test molecules (their own
  bonds, coordinates exact or noised by 0.1 / 0.3 A): every flag equal, except 13 of the
  2,328 flags at 0.3 A, flatness ones that only this stricter version fails.
* ``sanitization`` (RDKit sanitises the molecule) and ``all_atoms_connected`` (one fragment).
* ``pb_valid``: all of the above.

Molecules that do not sanitise fail every check (the official code returns NaN, which its
summary counts as a failure). Deviations from the official checks: the bonds are EDM's
distance-inferred ones (not read from a file); hydrogens are ignored in the distance-geometry
checks, as in ``mol.yml``; "InChI convertible", "No radicals" (never triggered: the molecules have
no explicit hydrogen counts, RDKit adds implicit ones) and "Internal energy" (a UFF energy ratio to
an ensemble of 50 ETKDG conformers, about a second per molecule) are not implemented.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from workbench.utils import atomic_path

from . import data as D
from . import metrics as M
from .data import ATOM_TYPES

log = logging.getLogger(__name__)

FCD_VERSION = "1.2.2"
FCD_INSTALL_HINT = f"pip install -c constraints.txt fcd=={FCD_VERSION}  (or pip install -e '.[molecules]')"
#: properties of each valid molecule (QED, SA score, Crippen logP)
PROPERTIES = ("qed", "sa", "logp")
#: the per-molecule checks of :func:`geometry_checks`, in order; ``pb_valid`` = all of them
GEOMETRY_CHECKS = ("sanitization", "all_atoms_connected", "bond_lengths", "bond_angles", "internal_steric_clash",
                   "aromatic_ring_flatness", "double_bond_flatness", "non_aromatic_ring_non_flatness")
#: PoseBusters ``mol.yml`` parameters
BOUNDS_PARAMS = {"set15bounds": True, "scaleVDW": True, "doTriangleSmoothing": True, "useMacrocycle14config": False}
THRESHOLD_BOND_LENGTH = 0.25
THRESHOLD_BOND_ANGLE = 0.25
THRESHOLD_CLASH = 0.3
THRESHOLD_FLATNESS = 0.25
THRESHOLD_NON_FLATNESS = 0.05
FLAT_RINGS = {"aromatic_5_membered_rings_sp2": "[ar5^2]1[ar5^2][ar5^2][ar5^2][ar5^2]1",
              "aromatic_6_membered_rings_sp2": "[ar6^2]1[ar6^2][ar6^2][ar6^2][ar6^2][ar6^2]1"}
FLAT_DOUBLE_BONDS = {"trigonal_planar_double_bonds": "[C;X3;^2](*)(*)=[C;X3;^2](*)(*)"}
NON_FLAT_RINGS = {
    "non-aromatic_6_membered_rings": "[C,O,S,N;R1]~1[C,O,S,N;R1][C,O,S,N;R1][C,O,S,N;R1][C,O,S,N;R1][C,O,S,N;R1]1",
    "non-aromatic_6_membered_rings_db03_0": "[C;R1]~1[C;R1][C,O,S,N;R1]~[C,O,S,N;R1][C;R1][C;R1]1",
    "non-aromatic_6_membered_rings_db03_1": "[C;R1]~1[C;R1][C;R1]~[C;R1][C,O,S,N;R1][C;R1]1",
    "non-aromatic_6_membered_rings_db02_0": "[C;R1]~1[C;R1][C;R1][C,O,S,N;R1]~[C,O,S,N;R1][C;R1]1",
    "non-aromatic_6_membered_rings_db02_1": "[C;R1]~1[C;R1][C,O,S,N;R1][C;R1]~[C;R1][C;R1]1",
}
#: conjugated terminal groups whose bond bounds PoseBusters symmetrises (``symmetrize_conjugated_terminal_bonds``)
TERMINAL_GROUP_SMARTS = "[O,N;D1;$([O,N;D1]-[*]=[O,N;D1]),$([O,N;D1]=[*]-[O,N;D1])]~[*]"
CACHE_VERSION = 1

CacheArg = Union[None, str, Path, bool]


# ------------------------------------------------------------------------------------ helpers

def default_cache_dir() -> Path:
    """``$FEWSTEP_WORKBENCH_CACHE/chem_metrics`` or ``~/.cache/fewstep-workbench/chem_metrics`` (the
    project's cache root, as :func:`domains.molecules.data.default_cache_dir`)."""
    return D.default_cache_dir().parent / "chem_metrics"


def _cache_root(cache_dir: CacheArg) -> Optional[Path]:
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        return default_cache_dir()
    return Path(cache_dir).expanduser()


def _load_cached(path: Optional[Path], keys: Sequence[str]) -> Optional[dict]:
    if path is None or not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except Exception as exc:  # noqa: BLE001 - a corrupt cache is recomputed
        log.warning("ignoring unreadable cache file %s (%s)", path, exc)
        return None


def _save_cached(path: Optional[Path], arrays: dict) -> None:
    if path is None:
        return
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
    except OSError as exc:  # a read-only home still computes the metrics
        log.warning("could not write the cache file %s (%s)", path, exc)


def _set_key(kind: str, smiles: Sequence[str], **extra) -> str:
    """Digest of a *set* of SMILES (order-free: statistics and distributions do not depend on it)."""
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "kind": kind, **extra}, sort_keys=True).encode())
    for s in sorted(smiles):
        h.update(s.encode())
        h.update(b"\n")
    return h.hexdigest()[:24]


def _canonical_list(smiles: Sequence[str]) -> list:
    """Canonical SMILES (:func:`~domains.molecules.metrics.canonical_smiles`), unparsable ones dropped."""
    out = []
    for s in smiles:
        c = M.canonical_smiles(s) if s is not None else None
        if c is not None:
            out.append(c)
    return out


# ---------------------------------------------------------------------------------------- FCD

def _fcd():
    try:
        import fcd
    except ImportError:
        raise ModuleNotFoundError(f"the FCD needs pip fcd (ChemNet and its weights), which is not installed: "
                                  f"{FCD_INSTALL_HINT}") from None
    return fcd


def fcd_available() -> bool:
    """Whether pip ``fcd`` (and so :func:`fcd_score`) is usable."""
    try:
        _fcd()
        return True
    except ModuleNotFoundError:
        return False


@lru_cache(maxsize=1)
def _weights_digest() -> str:
    import pkgutil
    blob = pkgutil.get_data("fcd", "ChemNet_v0.13_pretrained.pt")
    return hashlib.sha256(blob or b"").hexdigest()[:16]


@lru_cache(maxsize=1)
def chemnet():
    """The official ChemNet (``fcd.load_ref_model()``: the weights shipped in pip fcd), in eval mode."""
    return _fcd().load_ref_model()


def chemnet_activations(smiles: Sequence[str], *, batch_size: int = 128, device: Optional[str] = None) -> np.ndarray:
    """float32 ``[n, 512]``: ChemNet's activations of ``smiles`` (as given; :func:`fcd_score`
    canonicalises first), ``fcd.get_predictions`` without its worker process and its deprecated
    ``np.row_stack``. ``device``: ``None`` -> CUDA when available, else CPU (as fcd)."""
    _fcd()
    import torch
    from fcd.utils import SmilesDataset

    smiles = list(smiles)
    if not smiles:
        return np.zeros((0, 512), dtype=np.float32)
    model = chemnet()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ds = SmilesDataset(smiles)
    out = []
    model.to(device)
    try:
        with torch.no_grad():
            for s in range(0, len(ds), batch_size):
                x = torch.as_tensor(np.stack([ds[i] for i in range(s, min(s + batch_size, len(ds)))]))
                out.append(model(x.transpose(1, 2).float().to(device)).cpu().numpy().astype(np.float32))
    finally:
        model.to("cpu")
    return np.concatenate(out)


@dataclass(frozen=True)
class FCDStats:
    """Mean ``mu`` float64 ``[512]`` and covariance ``sigma`` float64 ``[512, 512]`` of the ChemNet
    activations of ``n`` SMILES."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


def _stats(act: np.ndarray) -> FCDStats:
    act = act.astype(np.float64)
    return FCDStats(act.mean(0), np.cov(act.T), len(act))


def fcd_statistics(smiles: Sequence[str], *, cache_dir: CacheArg = None, device: Optional[str] = None) -> FCDStats:
    """FCD statistics of a set of SMILES (canonicalised; unparsable ones dropped; at least 2 must
    remain), cached under ``cache_dir`` (``None``: :func:`default_cache_dir`; ``False``: no cache)."""
    fcd = _fcd()
    can = _canonical_list(smiles)
    if len(can) < 2:
        raise ValueError(f"the FCD needs at least 2 parsable SMILES per set, got {len(can)} (of {len(smiles)})")
    root = _cache_root(cache_dir)
    path = None if root is None else root / f"fcd_{_set_key('fcd', can, fcd=fcd.__version__, w=_weights_digest())}.npz"
    hit = _load_cached(path, ("mu", "sigma", "n"))
    if hit is not None and hit["mu"].shape == (512,) and hit["sigma"].shape == (512, 512):
        return FCDStats(hit["mu"], hit["sigma"], int(hit["n"]))
    st = _stats(chemnet_activations(can, device=device))
    _save_cached(path, {"mu": st.mu, "sigma": st.sigma, "n": np.int64(st.n)})
    return st


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))`` (``fcd.utils.calculate_frechet_distance``:
    when ``sqrtm`` is not finite or its diagonal not real, ``eps * I`` is added to both covariances)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    s1, s2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"FCD statistics differ in shape: {mu1.shape} / {mu2.shape}, {s1.shape} / {s2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all() or not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FCD: imaginary component {np.max(np.abs(covmean.imag)):.3g} in sqrt(S1 S2)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def fcd_score(smiles_a: Sequence[str], smiles_b: Union[Sequence[str], FCDStats], *, cache_dir: CacheArg = None,
              device: Optional[str] = None) -> float:
    """Frechet ChemNet Distance between two sets of SMILES (canonicalised with
    :func:`~domains.molecules.metrics.canonical_smiles`: no hydrogens, no stereochemistry; unparsable
    ones dropped). ``smiles_b`` is the reference: its statistics are cached (:func:`fcd_statistics`)
    and it may be given as :class:`FCDStats`. Raises ``ModuleNotFoundError`` (one line) without pip
    fcd and ``ValueError`` when a set has fewer than 2 parsable SMILES."""
    _fcd()
    a = fcd_statistics(smiles_a, cache_dir=False, device=device)
    b = smiles_b if isinstance(smiles_b, FCDStats) else fcd_statistics(smiles_b, cache_dir=cache_dir, device=device)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


# --------------------------------------------------------------------------------- properties

def _sascorer_path() -> Path:
    try:
        from rdkit import RDConfig
    except ImportError:
        raise ModuleNotFoundError("the SA score needs RDKit, which is not installed: "
                                  "pip install -c constraints.txt rdkit  (or pip install -e '.[molecules]')") from None
    return Path(RDConfig.RDContribDir) / "SA_Score" / "sascorer.py"


@lru_cache(maxsize=1)
def sascorer():
    """RDKit's ``Contrib/SA_Score/sascorer.py`` (the official SA score), loaded by path."""
    path = _sascorer_path()
    if not path.is_file() or not (path.parent / "fpscores.pkl.gz").is_file():
        raise FileNotFoundError(f"the SA score needs RDKit's Contrib/SA_Score (sascorer.py, fpscores.pkl.gz), "
                                f"missing under {path.parent}: reinstall rdkit from pip (its wheels ship Contrib)")
    spec = importlib.util.spec_from_file_location("_fewstep_sascorer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sa_score(mol) -> float:
    """Ertl and Schuffenhauer's synthetic accessibility score of an RDKit molecule (1 easy ... 10 hard)."""
    return float(sascorer().calculateScore(mol))


def molecule_properties(smiles: Sequence[str]) -> dict:
    """``{"qed", "sa", "logp"}`` -> float64 ``[n]``, one value per SMILES (NaN where RDKit cannot
    parse it)."""
    Chem, quiet = M._rdkit()
    from rdkit.Chem import QED, Crippen

    scorer = sascorer()
    out = {p: np.full(len(smiles), np.nan) for p in PROPERTIES}
    for i, s in enumerate(smiles):
        with quiet():
            mol = Chem.MolFromSmiles(str(s)) if s is not None else None
        if mol is None or mol.GetNumAtoms() == 0:
            continue
        out["qed"][i] = QED.qed(mol)
        out["sa"][i] = scorer.calculateScore(mol)
        out["logp"][i] = Crippen.MolLogP(mol)
    return out


def compute_reference_properties(smiles: Sequence[str], *, cache_dir: CacheArg = None) -> dict:
    """:func:`molecule_properties` of a reference set (canonical SMILES; unparsable ones dropped),
    cached like :func:`fcd_statistics`; e.g. of the training split's ``smiles``."""
    can = _canonical_list(smiles)
    import rdkit
    sa_digest = hashlib.sha256(_sascorer_path().read_bytes()).hexdigest()[:16] if _sascorer_path().is_file() else ""
    root = _cache_root(cache_dir)
    path = None if root is None else root / f"props_{_set_key('props', can, rdkit=rdkit.__version__, sa=sa_digest)}.npz"
    hit = _load_cached(path, PROPERTIES)
    if hit is not None and all(hit[p].shape == (len(can),) for p in PROPERTIES):
        return hit
    props = molecule_properties(can)
    _save_cached(path, props)
    return props


def property_distances(props: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict:
    """``{"qed_w1", "sa_w1", "logp_w1"}``: Wasserstein-1 distance per property between two sets
    (NaNs dropped; NaN when either side is empty), in the property's units."""
    from scipy.stats import wasserstein_distance

    out = {}
    for p in PROPERTIES:
        u = np.asarray(props[p], dtype=np.float64)
        v = np.asarray(reference[p], dtype=np.float64)
        u, v = u[np.isfinite(u)], v[np.isfinite(v)]
        out[f"{p}_w1"] = float(wasserstein_distance(u, v)) if len(u) and len(v) else float("nan")
    return out


# ----------------------------------------------------------------------------------- geometry

@lru_cache(maxsize=1)
def _patterns() -> dict:
    Chem, _ = M._rdkit()
    return {"flat": [Chem.MolFromSmarts(s) for s in FLAT_RINGS.values()],
            "double": [Chem.MolFromSmarts(s) for s in FLAT_DOUBLE_BONDS.values()],
            "nonflat": [Chem.MolFromSmarts(s) for s in NON_FLAT_RINGS.values()],
            "terminal": Chem.MolFromSmarts(TERMINAL_GROUP_SMARTS)}


def _plane_distance(x: np.ndarray) -> float:
    """Largest distance of the points to their least-squares plane (centred points, SVD normal);
    PoseBusters takes the largest *signed* distance, see the module docstring."""
    x = x - x.mean(0)
    normal = np.linalg.svd(x)[2][-1]
    return float(np.abs(x @ normal).max())


def _flatness(mol, pos: np.ndarray, patterns, *, non_flat: bool = False) -> bool:
    for pat in patterns:
        for match in mol.GetSubstructMatches(pat):
            d = _plane_distance(pos[list(match)])
            if (d < THRESHOLD_NON_FLATNESS) if non_flat else (d > THRESHOLD_FLATNESS):
                return False
    return True


def _distance_geometry(mol, pos: np.ndarray) -> tuple[bool, bool, bool]:
    """PoseBusters' ``check_geometry`` on a sanitised molecule: ``(bond_lengths, bond_angles,
    internal_steric_clash)`` pass flags."""
    from rdkit.Chem.rdDistGeom import GetMoleculeBoundsMatrix

    n = mol.GetNumAtoms()
    if n == 1:
        return True, True, True
    try:
        bounds = np.asarray(GetMoleculeBoundsMatrix(mol, **BOUNDS_PARAMS))
    except RuntimeError:
        return False, False, False
    adj = np.zeros((n, n), dtype=bool)
    for b in mol.GetBonds():
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        adj[i, j] = adj[j, i] = True
    angle = (adj.astype(np.int64) @ adj.astype(np.int64)) > 0  # a common neighbour
    lb = np.tril(bounds, -1)
    lb = lb + lb.T  # the lower bounds sit below the diagonal, the upper ones above
    ub = np.triu(bounds, 1)
    ub = ub + ub.T
    # symmetrise the bounds of conjugated terminal bonds per element pair (min lower, max upper)
    groups: dict = {}
    for i, j in mol.GetSubstructMatches(_patterns()["terminal"]):
        if adj[i, j]:
            key = tuple(sorted((mol.GetAtomWithIdx(i).GetSymbol(), mol.GetAtomWithIdx(j).GetSymbol())))
            groups.setdefault(key, set()).add((min(i, j), max(i, j)))
    for pairs in groups.values():
        ii, jj = np.array(sorted(pairs)).T
        lo, hi = lb[ii, jj].min(), ub[ii, jj].max()
        lb[ii, jj] = lb[jj, ii] = lo
        ub[ii, jj] = ub[jj, ii] = hi
    heavy = np.array([a.GetAtomicNum() != 1 for a in mol.GetAtoms()])
    iu, ju = np.triu_indices(n, 1)
    keep = heavy[iu] & heavy[ju]
    iu, ju = iu[keep], ju[keep]
    d = np.linalg.norm(pos[iu] - pos[ju], axis=-1)
    lo, hi = lb[iu, ju], ub[iu, ju]
    bond, ang = adj[iu, ju], angle[iu, ju] & ~adj[iu, ju]
    clash_pair = ~adj[iu, ju] & ~angle[iu, ju]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(d < lo, (d - lo) / lo, np.where(d > hi, (d - hi) / hi, 0.0))  # bpe
    bonds_ok = bool(np.all(np.abs(rel[bond]) <= THRESHOLD_BOND_LENGTH))
    angles_ok = bool(np.all(np.abs(rel[ang]) <= THRESHOLD_BOND_ANGLE))
    clash_ok = bool(np.all(np.minimum(rel[clash_pair], 0.0) >= -THRESHOLD_CLASH))
    return bonds_ok, angles_ok, clash_ok


def posebusters_checks(mol, positions=None) -> dict:
    """The PoseBusters-style checks (:data:`GEOMETRY_CHECKS` and ``pb_valid``) of one RDKit molecule
    with a 3D conformer (or ``positions [n, 3]``, Angstrom); sanitised on a copy. ``{name: bool}``."""
    Chem, quiet = M._rdkit()
    mol = Chem.Mol(mol)
    out = dict.fromkeys(GEOMETRY_CHECKS, False)
    if positions is None:
        if mol.GetNumConformers() == 0:
            out["pb_valid"] = False
            return out
        positions = mol.GetConformer().GetPositions()
    pos = M._np(positions, np.float64).reshape(-1, 3)
    if len(pos) != mol.GetNumAtoms():
        raise ValueError(f"{len(pos)} positions for a molecule of {mol.GetNumAtoms()} atoms")
    with quiet():
        try:
            Chem.SanitizeMol(mol)
        except Exception:  # noqa: BLE001 - RDKit raises several kinds
            out["pb_valid"] = False
            return out
    out["sanitization"] = True
    out["all_atoms_connected"] = len(Chem.GetMolFrags(mol)) <= 1
    out["bond_lengths"], out["bond_angles"], out["internal_steric_clash"] = _distance_geometry(mol, pos)
    pats = _patterns()
    out["aromatic_ring_flatness"] = _flatness(mol, pos, pats["flat"])
    out["double_bond_flatness"] = _flatness(mol, pos, pats["double"])
    out["non_aromatic_ring_non_flatness"] = _flatness(mol, pos, pats["nonflat"], non_flat=True)
    out["pb_valid"] = all(out[k] for k in GEOMETRY_CHECKS)
    return out


def geometry_checks(positions, atom_types=None, mask=None, *, atom_decoder: Sequence[str] = ATOM_TYPES) -> dict:
    """PoseBusters-style checks of 3D molecules with EDM's distance-inferred bonds.

    Args:
        positions: ``[B, N, 3]`` Angstrom, with ``atom_types [B, N]`` and ``mask [B, N]``; or a list
            of ``(positions [n, 3], atom_types [n])`` pairs with ``atom_types=None``.

    Returns:
        ``{"flags": {check: bool [B]}, "fractions": {check: float}, "n_molecules": B}`` for each
        check of :data:`GEOMETRY_CHECKS` and ``pb_valid`` (all of them); fractions over all ``B``
        molecules (one that does not sanitise fails every check; NaN when ``B = 0``).
    """
    pairs = M._pairs(positions, atom_types, mask)
    names = GEOMETRY_CHECKS + ("pb_valid",)
    flags = {k: np.zeros(len(pairs), dtype=bool) for k in names}
    for b, (p, t) in enumerate(pairs):
        if len(t) and (t.min() < 0 or t.max() >= len(atom_decoder)):
            raise ValueError(f"molecule {b}: atom types must be in 0..{len(atom_decoder) - 1} (indices into "
                             f"{tuple(atom_decoder)}), got {int(t.min())}..{int(t.max())}")
        if len(t) == 0:
            continue
        r = posebusters_checks(M.build_molecule(p, t, atom_decoder=atom_decoder), p)
        for k in names:
            flags[k][b] = r[k]
    fr = {k: float(v.mean()) if len(v) else float("nan") for k, v in flags.items()}
    return {"flags": flags, "fractions": fr, "n_molecules": len(pairs)}


# ------------------------------------------------------------------------------------ combined

def chemistry_metrics(positions, atom_types=None, mask=None, *, reference_smiles: Optional[Sequence[str]] = None,
                      reference_properties: Optional[Mapping[str, np.ndarray]] = None, cache_dir: CacheArg = None,
                      atom_decoder: Sequence[str] = ATOM_TYPES, fcd_device: Optional[str] = None) -> dict:
    """All chemistry metrics of a batch of generated 3D molecules as one flat ``{name: float}`` dict.

    Args:
        positions: ``[B, N, 3]`` (Angstrom) with ``atom_types [B, N]`` (indices into
            ``atom_decoder``) and ``mask [B, N]``, numpy or torch; or a list of ``(positions [n, 3],
            atom_types [n])`` pairs with ``atom_types=None``.
        reference_smiles: the reference set (e.g. the training split's ``smiles``): enables ``fcd``
            (when pip fcd is installed; its statistics are cached) and, without
            ``reference_properties``, the property distances (its properties are cached).
        reference_properties: ``{"qed", "sa", "logp"}`` arrays of the reference set
            (:func:`compute_reference_properties`); enables the ``*_w1`` distances.
        cache_dir: cache of the reference statistics (``None``: :func:`default_cache_dir`; ``False``: none).

    Returns (fractions in [0, 1]; NaN where undefined, e.g. no valid molecule):
        ``n_molecules``, ``n_valid``, ``validity`` (EDM / RDKit: the molecule sanitises);
        ``qed_mean``, ``sa_mean``, ``logp_mean`` over the valid molecules (largest fragment);
        with a reference: ``qed_w1``, ``sa_w1``, ``logp_w1`` (Wasserstein-1 to the reference) and
        ``fcd`` (valid SMILES vs ``reference_smiles``; left out when fcd is not installed or fewer
        than 2 molecules are valid: NaN then);
        ``geom_<check>`` for each of :data:`GEOMETRY_CHECKS` and ``geom_pb_valid``: the fraction of
        all molecules passing it (:func:`geometry_checks`).
    """
    pairs = M._pairs(positions, atom_types, mask)
    valid, validity = M.validity(pairs, atom_decoder=atom_decoder)
    out = {"n_molecules": float(len(pairs)), "n_valid": float(len(valid)),
           "validity": float(validity) if pairs else float("nan")}
    props = molecule_properties(valid)
    for p in PROPERTIES:
        v = props[p][np.isfinite(props[p])]
        out[f"{p}_mean"] = float(v.mean()) if len(v) else float("nan")
    if reference_properties is None and reference_smiles is not None:
        reference_properties = compute_reference_properties(reference_smiles, cache_dir=cache_dir)
    if reference_properties is not None:
        out.update(property_distances(props, reference_properties))
    if reference_smiles is not None and fcd_available():
        if len(valid) >= 2:
            out["fcd"] = fcd_score(valid, reference_smiles, cache_dir=cache_dir, device=fcd_device)
        else:
            out["fcd"] = float("nan")
    geo = geometry_checks(pairs, atom_decoder=atom_decoder)
    for k, v in geo["fractions"].items():
        out[f"geom_{k}"] = v
    return out
