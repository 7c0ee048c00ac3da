"""Self-consistency designability of protein backbones, for ANY PDB/mmCIF backbones or in-memory
:class:`~domains.proteins.chain.Chain` objects.

The protocol (Trippe et al. 2023; used by FrameDiff, Proteina and the few-step SiD protein
paper): for each backbone, an inverse folder designs ``n_seq`` sequences (ProteinMPNN CA-only,
8 sequences at temperature 0.1), a folder predicts a structure for each sequence, and the
refolded structures are compared with the input backbone:

- ``scRMSD`` = CA RMSD after optimal superposition (residue ``i`` <-> residue ``i``),
- ``scTM`` = TM-score with the same fixed correspondence (the refolded chain carries the designed
  sequence on the input's positions; the TMscore program's measure,
  :func:`~domains.proteins.metrics.tm_score_matched`), normalised by the input length;
  ``scTM (TM-align)`` = TM-score after TM-align's own alignment is kept as a secondary column.

Per backbone the best values are kept (minimum scRMSD, maximum scTM); a backbone is
*designable* when its best scRMSD is below 2 A. The designable fraction is over the backbones
that could be evaluated.

Mechanics: backbones are processed one at a time (one ``design`` call of ``n_seq`` sequences and
one ``fold`` call), each with its own generator seeded from ``seed`` and the backbone's CA
coordinates (:func:`_backbone_generator`), so a backbone's results do not depend on the other
inputs, their order, ``batch_size`` or where the files are. After each backbone ``results.jsonl``
in ``out_dir`` is rewritten atomically (temp file + fsync + ``os.replace``; a kill loses at most
the backbone in progress), one JSON record per backbone keyed by ``"<absolute file
path>#<chain id>"`` (``"chain:<name>"`` for in-memory chains). A rerun with the same settings
skips backbones already evaluated; a rerun whose settings differ (:data:`RESUME_KEYS`) is refused
with one line naming the differing keys (``resume=False`` recomputes). Files that cannot be read
(missing, empty, truncated, malformed, no protein) are recorded with the one-line
:class:`~domains.proteins.io.StructureError` message and the other inputs are still evaluated;
such records are retried on a rerun. When no input can be read at all the run raises.

The default folder is the project's own small structure-prediction model (the
``structure_prediction`` domain), not ESMFold; ESMFold is used only when asked for and installed
with its weights. Reports say which inverse folder and folder produced the numbers. The in-repo
folder does not refold native chains (their MPNN designs do not come back below 2 A), so the
refolding columns cannot rank generators offline.

What the report leads with instead (meaningful without a folder):

* geometry and secondary structure of the input backbones (:func:`backbone_geometry`: CA-CA
  outliers, clashes, Rg ratio, handedness of helical CA torsions, DSSP helix / strand), with the
  same columns of native chains beside them when ``reference=`` is given;
* ProteinMPNN's self-NLL of its own designs (:meth:`~domains.proteins.mpnn.ProteinMPNN.design_scored`:
  mean NLL of each sampled sequence over the designed residues, ProteinMPNN's ``_scores``),
  a *proxy* labelled as such: low = the inverse folder finds a confident sequence for the
  backbone (see :data:`SELF_NLL_LABEL` for the natives' measured value).
"""
from __future__ import annotations

import glob as _glob
import json
import math
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch

from workbench.utils import atomic_path

from .chain import Chain
from .metrics import ca_rmsd, tm_score, tm_score_matched

#: designability threshold on the best scRMSD (Angstrom)
SC_RMSD_THRESHOLD = 2.0
#: the secondary, looser criterion: best scTM above this (as in Yim et al. 2023, FrameDiff)
SC_TM_THRESHOLD = 0.5
#: label of the inverse-folder proxy column (the natives' value measured with
#: ``workbench designability reference=natives``, ProteinMPNN CA-only v_48_020, 8 designs at T = 0.1)
SELF_NLL_LABEL = "MPNN self-NLL (nats/residue; a proxy, not designability; held-out natives ~1.1)"
FOLDERS = ("default", "esmfold")
INVERSE_FOLDERS = ("proteinmpnn_ca", "proteinmpnn")
DEFAULT_FOLDER_NOTE = ("The folder is the project's small in-repo structure-prediction model (the structure_prediction "
                       "domain), not ESMFold: scRMSD/scTM and designable fractions are not comparable with published "
                       "ESMFold-based numbers.")


@runtime_checkable
class Folder(Protocol):
    """A structure predictor: ``fold(sequences) -> chains`` with one :class:`Chain` (at least CA
    coordinates ``[L_i, 3]`` in Angstrom) per one-letter sequence of length ``L_i``. Optional
    keyword ``generator`` (a ``torch.Generator``) for stochastic folders. ``name`` for reports."""

    name: str

    def fold(self, sequences: list[str]) -> list[Chain]:
        ...


class FolderUnavailable(RuntimeError):
    """A folder cannot be used in this environment (package or weights missing); one-line message."""


# --------------------------------------------------------------------------------------------
# folders and inverse folders
# --------------------------------------------------------------------------------------------
class ESMFoldFolder:
    """ESMFold (Lin et al., Science 2023) as a :class:`Folder` -- wiring only: it needs the
    ``fair-esm`` package with its ESMFold extras (``openfold``) and the ``esmfold_3B_v1``
    weights (about 2.7 GB) already on disk; nothing is downloaded. Raises
    :class:`FolderUnavailable` otherwise."""

    name = "ESMFold (esmfold_v1)"

    def __init__(self, weights: Optional[Union[str, Path]] = None, device="cpu"):
        try:
            import esm  # noqa: F401
        except ImportError:
            raise FolderUnavailable("ESMFold needs the 'fair-esm' package with ESMFold extras (pip install 'fair-esm[esmfold]'); "
                                    "it is not installed. Use folder='default' for the in-repo structure predictor.") from None
        path = Path(weights) if weights is not None else Path(torch.hub.get_dir()) / "checkpoints" / "esmfold_3B_v1.pt"
        if not path.is_file():
            raise FolderUnavailable(f"ESMFold weights not found at {path}; download esmfold_3B_v1.pt there (or pass weights=) "
                                    "or use folder='default'.")
        try:
            from esm.esmfold.v1.esmfold import ESMFold

            # weights_only=True: a user-supplied file is never unpickled as code. The official file keeps its
            # config as plain containers; one that needs arbitrary objects is refused with the reason below.
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            model = ESMFold(esmfold_config=ckpt["cfg"]["model"])
            model.load_state_dict(ckpt["model"], strict=False)
        except Exception as e:  # openfold missing, incompatible checkpoint, ...
            raise FolderUnavailable(f"ESMFold could not be loaded from {path}: {' '.join(str(e).split())[:200]}") from None
        self.model = model.eval().to(device)

    @torch.no_grad()
    def fold(self, sequences: list[str]) -> list[Chain]:
        from .io import read_structure

        out = []
        for i, seq in enumerate(sequences):
            pdb_text = self.model.infer_pdb(seq)
            with atomic_path(Path(os.environ.get("TMPDIR", "/tmp")) / f"esmfold_{os.getpid()}_{i}.pdb") as tmp:
                Path(tmp).write_text(pdb_text)
                chain = read_structure(tmp)
            out.append(chain)
        return out


#: how the default (in-repo) refolder is sampled, ``fold_sampler=``:
#:
#: * ``"ode"`` (default): the few-step ODE form of the AF3 sampler (Protenix-Mini: ``af3_edm``
#:   with ``gamma0 = 0, step_scale_eta = 1``, i.e. Euler on the probability-flow ODE), default
#:   :data:`DEFAULT_FOLD_STEPS` steps;
#: * ``"af3"``: AF3's own stochastic sampler (``af3_edm`` with the domain's AF3 options: ``gamma0
#:   = 0.8, gamma_min = 1 A, noise_scale_lambda = 1.003, step_scale_eta = 1.5, s_trans = 1 A``),
#:   default :data:`AF3_FOLD_STEPS` steps.
FOLD_SAMPLERS = ("ode", "af3")
#: with no ``fold_sampler``, step counts above this run AF3's sampler (a 200-step ODE is not what
#: ``fold_steps=200`` means to an AF3 user), at most this the few-step ODE
ODE_MAX_STEPS = 10
DEFAULT_FOLD_STEPS = 5
AF3_FOLD_STEPS = 200
FEW_STEP_ODE = {"gamma0": 0.0, "step_scale_eta": 1.0}


def load_folder(name: str = "default", *, fold_sampler: Optional[str] = None, **kwargs) -> Folder:
    """A folder by name.

    ``"default"``: the ``structure_prediction`` domain's folder (the project's small in-repo
    model). ``fold_sampler`` picks how it is sampled (:data:`FOLD_SAMPLERS`; default ``"ode"``,
    or ``"af3"`` when ``steps`` > :data:`ODE_MAX_STEPS`): ``"ode"`` (:data:`FEW_STEP_ODE`, ``steps`` default :data:`DEFAULT_FOLD_STEPS`; extra
    ``options`` are added to the ODE's) or ``"af3"`` (AF3's stochastic sampler with the domain's
    AF3 options, ``steps`` default :data:`AF3_FOLD_STEPS`; ``options`` override single AF3
    options). With ``fold_sampler=None`` and explicit ``options`` those are used as they are
    (``options={}`` = AF3's sampler). Other ``kwargs`` (``steps``, ``seed``) go to
    ``domain.folder(...)``; the folder's ``name`` states the sampler and every option it runs with.

    ``"esmfold"``: :class:`ESMFoldFolder` (needs ``fair-esm`` and the weights; takes no
    ``fold_sampler``).
    """
    if fold_sampler is not None and fold_sampler not in FOLD_SAMPLERS:
        raise ValueError(f"unknown fold_sampler {fold_sampler!r}; valid: {', '.join(FOLD_SAMPLERS)}")
    if name == "default":
        from workbench.domain import get_domain

        try:
            domain = get_domain("structure_prediction")
        except ValueError:  # not registered as an entry point (e.g. a source checkout): import it directly
            try:
                from domains.structure_prediction import StructurePredictionDomain

                domain = StructurePredictionDomain()
            except Exception as e:
                raise FolderUnavailable(f"the default folder needs the structure_prediction domain, which could not be "
                                        f"loaded: {' '.join(str(e).split())[:200]}") from None
        steps = kwargs.pop("steps", None)
        if fold_sampler is None and kwargs.get("options") is None:
            fold_sampler = "af3" if steps is not None and int(steps) > ODE_MAX_STEPS else "ode"
        if fold_sampler is not None:
            if kwargs.get("sampler") not in (None, "af3_edm"):
                raise ValueError(f"fold_sampler={fold_sampler!r} runs af3_edm; do not also pass sampler={kwargs['sampler']!r}")
            kwargs["sampler"] = "af3_edm"
            user = dict(kwargs.get("options") or {})
            if fold_sampler == "ode":
                kwargs["options"] = {**FEW_STEP_ODE, **user}
            else:
                kwargs["options"] = {**dict(domain.opts.get("sampler_options") or {}), **user}
        if steps is None:
            steps = AF3_FOLD_STEPS if fold_sampler == "af3" else DEFAULT_FOLD_STEPS
        return domain.folder(steps=int(steps), **kwargs)
    if fold_sampler is not None:
        raise ValueError(f"fold_sampler applies to folder='default' only, not {name!r}")
    if kwargs.pop("steps", None) is not None:
        raise ValueError(f"fold_steps applies to folder='default' only, not {name!r}")
    if name == "esmfold":
        return ESMFoldFolder(**kwargs)
    raise ValueError(f"unknown folder {name!r}; valid: {list(FOLDERS)} (or pass an object with .name and .fold(sequences))")


def load_inverse_folder(name: str = "proteinmpnn_ca", **kwargs):
    """An inverse folder by name: ``"proteinmpnn_ca"`` (ProteinMPNN CA-only v_48_020, the
    default for generated CA backbones) or ``"proteinmpnn"`` (full-backbone v_48_020; CA-only
    inputs get ideal N/C/O). ``kwargs`` go to :class:`~domains.proteins.mpnn.ProteinMPNN`."""
    from .mpnn import ProteinMPNN

    if name == "proteinmpnn_ca":
        return ProteinMPNN(ca_only=True, **kwargs)
    if name == "proteinmpnn":
        return ProteinMPNN(ca_only=False, **kwargs)
    raise ValueError(f"unknown inverse folder {name!r}; valid: {list(INVERSE_FOLDERS)}")


def _folder_note(folder, folder_arg) -> str:
    mod = type(folder).__module__ or ""
    if folder_arg in (None, "default") or mod.startswith("domains.structure_prediction"):
        return DEFAULT_FOLDER_NOTE
    if isinstance(folder, ESMFoldFolder):
        return "The folder is ESMFold (esmfold_v1)."
    return f"The folder is a user-supplied folder ({getattr(folder, 'name', type(folder).__name__)})."


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def _is_structure_name(p: Path) -> bool:
    from .io import VALID_SUFFIXES

    name = p.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return any(name.endswith(s) for s in VALID_SUFFIXES)


def expand_inputs(inputs) -> list:
    """A directory (its structure files, sorted, not recursive), a glob pattern, one file, one
    :class:`Chain`, or a list of any of these -> a flat ordered list of :class:`Path` / Chain."""
    if isinstance(inputs, (str, Path, Chain)):
        inputs = [inputs]
    out: list = []
    for item in inputs:
        if isinstance(item, Chain):
            out.append(item)
            continue
        if not isinstance(item, (str, Path)):
            raise ValueError(f"designability inputs must be paths, glob patterns, directories or Chains, got {type(item).__name__}")
        s = str(item)
        p = Path(s).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and _is_structure_name(f))
            if not files:
                raise ValueError(f"no structure files (.pdb/.ent/.cif/.mmcif, optionally .gz) in directory {p}")
            out.extend(files)
        elif any(c in s for c in "*?[") and not p.exists():
            files = sorted(Path(f) for f in _glob.glob(os.path.expanduser(s), recursive=True) if Path(f).is_file())
            if not files:
                raise ValueError(f"glob pattern {s!r} matches no files")
            out.extend(files)
        else:
            out.append(p)  # a missing or bad file is recorded as an error when read
    return out


def _load_backbones(items, all_chains: bool):
    """-> list of (key, Chain) and list of error records, in input order."""
    from .io import read_chains

    backbones, errors = [], []
    seen: dict[str, int] = {}
    for item in items:
        if isinstance(item, Chain):
            key = f"chain:{item.name}"
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:
                key = f"{key}#{seen[key] - 1}"
            backbones.append((key, item, item.source or ""))
            continue
        path = str(Path(item).resolve()) if Path(item).exists() else str(item)
        try:
            chains = read_chains(item)
        except ValueError as e:  # StructureError is a ValueError
            msg = " ".join(str(e).split())
            errors.append({"key": path, "file": path, "chain": None, "status": "error", "error": msg})
            continue
        for ch in (chains if all_chains else chains[:1]):
            cid = str(ch.meta.get("chain_id", "") or ch.name)
            backbones.append((f"{path}#{cid}", ch, path))
    return backbones, errors


# --------------------------------------------------------------------------------------------
# results file
# --------------------------------------------------------------------------------------------
def _read_results(path: Path) -> dict:
    """``{key: record}`` of the resume file; lines that are not a JSON object with a ``key`` (cut,
    edited, or not UTF-8) are skipped, so those backbones are computed again."""
    records: dict = {}
    if path.is_file():
        for raw in path.read_bytes().splitlines():
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                continue  # never produced by the atomic writer; tolerate damage
            if not line:
                continue
            try:
                r = json.loads(line)
            except (ValueError, RecursionError):  # JSONDecodeError, or e.g. an integer of over 4300 digits
                continue  # never produced by the atomic writer; tolerate hand edits
            if isinstance(r, dict) and isinstance(r.get("key"), str):
                records[r["key"]] = r
    return records


def _write_results(path: Path, records: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for r in records.values():
                f.write(json.dumps(r, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _finite_or_none(x) -> Optional[float]:
    x = float(x)
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------------------------
# offline columns: geometry of the inputs, reference natives
# --------------------------------------------------------------------------------------------
#: per-backbone geometry columns (:func:`backbone_geometry`) -> report header
GEOMETRY_COLUMNS = {
    "ca_ca_outlier_fraction": "CA-CA outside 3.8 +- 0.2 A",
    "clashes_per_residue": "CA clashes / residue",
    "rg_ratio": "Rg / (2.2 L^0.38)",
    "helical_right": "right-handed helical CA torsions",
    "handedness_ratio": "right / left helical (pooled)",
    "dssp_helix": "DSSP helix",
    "dssp_strand": "DSSP strand",
}
#: ``reference="natives"``: this many held-out test chains of the protein data
N_REFERENCE_NATIVES = 16


def backbone_geometry(chain: Chain) -> dict:
    """Geometry and secondary structure of one backbone (:mod:`domains.proteins.metrics`):
    ``ca_ca_outlier_fraction`` (consecutive CA-CA outside 3.8 +- 0.2 A), ``clashes_per_residue``
    (non-bonded CA pairs closer than 3 A, per residue), ``rg_ratio`` (Rg / (2.2 L^0.38)),
    ``helical_right`` / ``n_right`` / ``n_left`` / ``n_torsions`` (CA virtual torsions in the
    right- / left-handed helical windows), and the DSSP fractions
    (:func:`~domains.proteins.dssp.dssp_fractions`, mkdssp when installed else pydssp, on the
    N/C/O placed around a CA trace: ``dssp_helix``, ``dssp_strand``, ``dssp_helix_runs7``,
    ``dssp_strand_runs3``; ``None`` when DSSP fails on the backbone). Non-finite values -> ``None``."""
    from . import metrics as pm

    ca = np.asarray(chain.ca, dtype=np.float64)
    h = pm.handedness(ca)
    out = {"ca_ca_outlier_fraction": pm.ca_ca_stats(ca)["ca_ca_outlier_fraction"],
           "clashes_per_residue": pm.clash_count(ca) / max(1, len(ca)), "rg_ratio": pm.rg_ratio(ca),
           "helical_right": h["helical_right"], "n_right": h["n_right"], "n_left": h["n_left"], "n_torsions": h["n_torsions"],
           "dssp_helix": float("nan"), "dssp_strand": float("nan")}
    try:
        from .dssp import dssp_fractions

        out.update(dssp_fractions(chain))
    except (ValueError, RuntimeError, OSError):  # DSSP failing on one odd backbone must not stop the pipeline
        pass
    return {k: _finite_or_none(v) for k, v in out.items()}


def _dssp_backend() -> Optional[str]:
    try:
        from .dssp import _resolve_backend

        return _resolve_backend("auto")
    except (ImportError, ValueError):
        return None


def summarize_geometry(geoms: Sequence[Optional[dict]]) -> dict:
    """Means of :func:`backbone_geometry` over backbones (``None`` entries skipped); the
    handedness ratio pools the torsion counts, ``(sum n_right + 1) / (sum n_left + 1)``."""
    geoms = [g for g in geoms if g]
    out: dict = {"n": len(geoms)}
    keys = sorted({k for g in geoms for k in g} - {"n_right", "n_left", "n_torsions"})
    for k in keys:
        v = np.asarray([g.get(k) if g.get(k) is not None else np.nan for g in geoms], dtype=np.float64)
        out[k] = float(np.nanmean(v)) if np.isfinite(v).any() else None
    if geoms:
        nr = sum(g.get("n_right") or 0.0 for g in geoms)
        nl = sum(g.get("n_left") or 0.0 for g in geoms)
        out["handedness_ratio"] = (nr + 1.0) / (nl + 1.0)
    return out


def reference_natives(n: int = N_REFERENCE_NATIVES) -> list:
    """The first ``n`` held-out test chains of the protein data
    (:func:`~domains.proteins.data.dataset_chains` ``("test")``): what ``reference="natives"`` runs."""
    from .data import dataset_chains

    chains = list(dataset_chains("test"))[: int(n)]
    if not chains:
        raise ValueError("reference='natives': the protein data has no test chains")
    return chains


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------
def evaluate_backbone(backbone: Chain, sequences: Sequence[str], refolded: Sequence[Chain]) -> dict:
    """scRMSD (CA, superposed), scTM (position-matched TM-score, normalised by the input) and
    the secondary scTM after TM-align (``sc_tm_align``) of each refolded structure against
    ``backbone``; best values (min scRMSD, max scTM) and the index of the best (min scRMSD) design."""
    if len(refolded) != len(sequences):
        raise ValueError(f"the folder returned {len(refolded)} structures for {len(sequences)} sequences")
    rmsds, tms, tms_align = [], [], []
    for seq, fold in zip(sequences, refolded):
        ca = fold.ca if isinstance(fold, Chain) else np.asarray(fold)
        if len(ca) != len(backbone):
            raise ValueError(f"the folder returned {len(ca)} residues for a sequence of length {len(seq)} "
                             f"(backbone {backbone.name!r} has {len(backbone)})")
        rmsds.append(ca_rmsd(ca, backbone.ca))
        tms.append(tm_score_matched(ca, backbone.ca))
        tms_align.append(tm_score(ca, backbone.ca))
    r = np.asarray(rmsds, dtype=np.float64)
    best = int(np.nanargmin(r)) if np.isfinite(r).any() else 0
    with np.errstate(all="ignore"):
        return {
            "sc_rmsd": _finite_or_none(r[best]),
            "sc_tm": _finite_or_none(np.nanmax(tms)),
            "sc_tm_align": _finite_or_none(np.nanmax(tms_align)),
            "best_index": best,
            "best_sequence": sequences[best],
            "sc_rmsds": [_finite_or_none(x) for x in rmsds],
            "sc_tms": [_finite_or_none(x) for x in tms],
            "sc_tms_align": [_finite_or_none(x) for x in tms_align],
            "sequences": list(sequences),
        }


#: the per-backbone seeding scheme, part of the resume key (records of another scheme are not reused)
SEEDING = "per-backbone crc32 of CA (1e-3 A)"
#: the settings a record depends on; a rerun into the same ``out_dir`` must match on all of them
RESUME_KEYS = ("inverse_folder", "folder", "n_seq", "temperature", "seed", "seeding")


def _backbone_generator(seed: int, chain: Chain) -> torch.Generator:
    """The generator of one backbone, seeded from ``seed`` and its CA coordinates (rounded to
    1e-3 A), not from file paths, names or batch mates: the same backbone gives the same designs
    and folds wherever its file is and whatever else is evaluated with it."""
    h = zlib.crc32(np.round(np.asarray(chain.ca, dtype=np.float64), 3).astype("<f8").tobytes())
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + h) % (2**63 - 1))


def _config_mismatch(records: dict, config: dict) -> Optional[str]:
    """One line naming the settings that differ between ``config`` and the finished records of
    an earlier run (``None`` when they all match)."""
    diffs: dict = {}
    for r in records.values():
        old = r.get("config")
        if r.get("status") != "ok" or not isinstance(old, dict) or old == config:
            continue
        for k in RESUME_KEYS:
            if old.get(k) != config.get(k):
                diffs.setdefault(k, (old.get(k), config.get(k)))
    if not diffs:
        return None
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diffs.items())


def _accepts_generator(fn) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def run_designability(inputs, out_dir, **options) -> dict:
    """Run the designability protocol on ``inputs`` into ``out_dir``, which this run owns
    (:class:`~workbench.utils.OutputDir` lock: a second live writer is refused in one line;
    temporary files of a killed earlier write are removed). Options and return value:
    :func:`designability_protocol`."""
    from workbench.utils import OutputDir

    with OutputDir(out_dir, "designability", lock_only=True):
        return designability_protocol(inputs, out_dir, **options)


def designability_protocol(inputs, out_dir, *, inverse_folder=None, folder=None, n_seq: int = 8, temperature: float = 0.1,
                      batch_size: int = 8, seed: int = 0, progress: bool = True, all_chains: bool = False,
                      threshold: float = SC_RMSD_THRESHOLD, resume: bool = True, save_structures: bool = False,
                      reference=None) -> dict:
    """Run the designability protocol on ``inputs`` and write ``results.jsonl``, ``report.json``
    and ``report.md`` into ``out_dir``.

    Args:
        inputs: a directory, a glob pattern, a PDB/mmCIF file, a :class:`Chain`, or a list of these.
            Only the first protein chain of each file is evaluated unless ``all_chains=True``.
        inverse_folder: an :class:`~domains.proteins.mpnn.InverseFolder`, a name from
            ``("proteinmpnn_ca", "proteinmpnn")``, or ``None`` (ProteinMPNN CA-only v_48_020).
        folder: a :class:`Folder`, a name from ``("default", "esmfold")``, or ``None`` (default:
            the in-repo structure-prediction model).
        n_seq, temperature: sequences per backbone and the inverse folder's sampling temperature.
        batch_size: accepted for compatibility; backbones are designed and folded one at a time,
            each with its own generator, so results never depend on it.
        seed: each backbone's designs (and folds, for folders taking a ``generator``) use a
            generator seeded from ``seed`` and that backbone's coordinates
            (:func:`_backbone_generator`): a run is a pure function of its inputs and settings.
        threshold: designable iff best scRMSD < ``threshold`` (2 A).
        resume: skip backbones already in ``results.jsonl`` (same :data:`RESUME_KEYS`); finished
            records of other settings raise a one-line ValueError naming the differing keys;
            ``False`` recomputes everything.
        save_structures: also write each backbone's best refolded structure to
            ``out_dir/refolded/<name>_best.pdb``.
        reference: native backbones run through the same pipeline (same inverse folder, folder
            and settings) into ``out_dir/reference`` and reported beside the inputs:
            ``"natives"`` (:func:`reference_natives`) or anything ``inputs`` accepts.
    Returns:
        the report dict (also saved as ``report.json``).
    """
    if int(n_seq) < 1:
        raise ValueError(f"n_seq must be >= 1, got {n_seq}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    items = expand_inputs(inputs)
    if not items:
        raise ValueError("designability: no inputs given")
    backbones, read_errors = _load_backbones(items, all_chains)
    if not backbones:
        more = f" (and {len(read_errors) - 1} more)" if len(read_errors) > 1 else ""
        first = read_errors[0]["error"] if read_errors else "no protein chains"
        raise ValueError(f"designability: none of the {len(items)} inputs could be read: {first}{more}")
    out_dir.mkdir(parents=True, exist_ok=True)

    folder_arg = folder
    if inverse_folder is None or isinstance(inverse_folder, str):
        inverse_folder = load_inverse_folder(inverse_folder or "proteinmpnn_ca")
    if folder is None or isinstance(folder, str):
        folder = load_folder(folder or "default")
    inv_name = str(getattr(inverse_folder, "name", type(inverse_folder).__name__))
    fold_name = str(getattr(folder, "name", type(folder).__name__))
    config = {"inverse_folder": inv_name, "folder": fold_name, "n_seq": int(n_seq), "temperature": float(temperature),
              "seed": int(seed), "seeding": SEEDING}

    results_path = out_dir / "results.jsonl"
    records = _read_results(results_path) if resume else {}
    mismatch = _config_mismatch(records, config)
    if mismatch:
        raise ValueError(f"{results_path} holds results of other settings ({mismatch}); rerun with the same settings, "
                         f"another out=, or resume=false to recompute")
    for e in read_errors:
        records[e["key"]] = e
    done = {k for k, r in records.items() if r.get("status") == "ok" and r.get("config") == config}
    todo = [b for b in backbones if b[0] not in done]
    n_resumed = len(backbones) - len(todo)
    if read_errors or not resume:
        _write_results(results_path, records)

    fold_kwargs_ok = _accepts_generator(folder.fold)
    scored = callable(getattr(inverse_folder, "design_scored", None))
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(backbones), initial=n_resumed, desc="designability", unit="backbone", leave=False,
                       file=sys.stderr)
        except ImportError:  # pragma: no cover
            bar = None

    def process(key, chain, src) -> dict:
        """Design, fold and score one backbone -> its record."""
        gen = _backbone_generator(seed, chain)
        rec = {"key": key, "file": src, "chain": chain.name, "length": len(chain), "config": config}
        try:
            t0 = time.perf_counter()
            if scored:
                designs, nlls = inverse_folder.design_scored([chain], n_seq=int(n_seq), temperature=float(temperature),
                                                             generator=gen)
            else:
                designs = inverse_folder.design([chain], n_seq=int(n_seq), temperature=float(temperature), generator=gen)
                nlls = [None]
            t1 = time.perf_counter()
            seqs = list(designs[0])
            folded = list(folder.fold(seqs, generator=gen) if fold_kwargs_ok else folder.fold(seqs))
            t2 = time.perf_counter()
            if len(folded) != len(seqs):
                raise RuntimeError(f"folder {fold_name!r} returned {len(folded)} structures for {len(seqs)} sequences")
            rec.update({"seconds": t2 - t0, "design_seconds": t1 - t0, "fold_seconds": t2 - t1})
            rec.update(evaluate_backbone(chain, seqs, folded))
            if nlls[0] is not None:
                rec["mpnn_self_nlls"] = [_finite_or_none(v) for v in nlls[0]]
                rec["mpnn_self_nll"] = _finite_or_none(np.mean(nlls[0]))
            rec["geometry"] = backbone_geometry(chain)
            rec["status"] = "ok"
            if save_structures:
                from .io import write_chain

                name = "".join(c if c.isalnum() or c in "-_." else "_" for c in chain.name)
                rec["refolded_path"] = str(write_chain(folded[rec["best_index"]], out_dir / "refolded" / f"{name}_best.pdb"))
        except ValueError as e:  # a backbone the inverse folder or folder rejects (e.g. too long): record it, go on
            rec.update({"status": "error", "error": " ".join(str(e).split())})
        return rec

    for key, chain, src in todo:
        if bar is not None:
            bar.set_postfix_str(f"{chain.name} (L={len(chain)})", refresh=True)
        records[key] = process(key, chain, src)
        _write_results(results_path, records)  # after every backbone: a kill loses at most the one in progress
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    missing_geometry = [(k, ch) for k, ch, _ in backbones if records.get(k, {}).get("status") == "ok" and "geometry" not in records[k]]
    for k, ch in missing_geometry:  # records of an earlier version of the pipeline
        records[k]["geometry"] = backbone_geometry(ch)
    if missing_geometry:
        _write_results(results_path, records)
    keys_now = [e["key"] for e in read_errors] + [b[0] for b in backbones]
    report = summarize([records[k] for k in keys_now if k in records], threshold=threshold)
    if reference is not None:
        ref_inputs = reference_natives() if isinstance(reference, str) and reference == "natives" else reference
        if isinstance(ref_inputs, (str, Path)) and Path(ref_inputs).resolve() == out_dir.resolve():
            raise ValueError("reference= must not be the output directory")
        ref = run_designability(ref_inputs, out_dir / "reference", inverse_folder=inverse_folder, folder=folder, n_seq=n_seq,
                                temperature=temperature, batch_size=batch_size, seed=seed, progress=progress,
                                all_chains=all_chains, threshold=threshold, resume=resume, save_structures=False)
        report["reference"] = {k: ref.get(k) for k in REFERENCE_KEYS}
        natives = isinstance(reference, str) and reference == "natives"
        report["reference"]["source"] = (f"held-out natives ({len(ref_inputs)} test chains)" if natives else
                                         f"{ref.get('n_evaluated')} reference backbones")
        report["reference"]["out_dir"] = str(out_dir / "reference")
    report.update({
        "inverse_folder": inv_name,
        "folder": fold_name,
        "folder_note": _folder_note(folder, folder_arg),
        "dssp_backend": _dssp_backend(),
        "n_seq": int(n_seq),
        "temperature": float(temperature),
        "seed": int(seed),
        "batch_size": int(batch_size),
        "n_inputs": len(items),
        "n_resumed": int(n_resumed),
        "wall_seconds": time.perf_counter() - t_start,
        "out_dir": str(out_dir),
        "results": str(results_path),
    })
    with atomic_path(out_dir / "report.json") as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    with atomic_path(out_dir / "report.md") as tmp:
        Path(tmp).write_text(format_report(report))
    return report


#: what a report keeps of its reference run
REFERENCE_KEYS = ("n_evaluated", "geometry", "mpnn_self_nll_mean", "mpnn_self_nll_std", "n_designable", "designable_fraction",
                  "n_designable_sc_tm", "designable_fraction_sc_tm", "mean_best_sc_rmsd", "mean_best_sc_tm", "mean_best_sc_tm_align")


def summarize(records: Sequence[dict], *, threshold: float = SC_RMSD_THRESHOLD, tm_threshold: float = SC_TM_THRESHOLD) -> dict:
    """Aggregate per-backbone records: counts, designable fraction (best scRMSD < ``threshold``
    over the evaluated backbones; the main criterion, as Proteina and RFdiffusion), the
    looser scTM-designable fraction (best scTM > ``tm_threshold``, FrameDiff's criterion,
    reported beside it), mean/median best scRMSD and scTM (and the secondary TM-align scTM), the
    offline columns (``geometry``: :func:`summarize_geometry`; ``mpnn_self_nll_mean/std`` over
    backbones of the mean self-NLL of their designs), compute time per
    backbone and per designable backbone (summed over the records' own timings, so resumed runs
    count the time they originally took), and the list of errors."""
    ok = [r for r in records if r.get("status") == "ok"]
    errs = [{"key": r["key"], "error": r.get("error", "")} for r in records if r.get("status") != "ok"]
    rmsd = np.asarray([r["sc_rmsd"] if r.get("sc_rmsd") is not None else np.nan for r in ok], dtype=np.float64)
    tm = np.asarray([r["sc_tm"] if r.get("sc_tm") is not None else np.nan for r in ok], dtype=np.float64)
    designable = int((rmsd < threshold).sum()) if len(ok) else 0
    tm_designable = int((tm > tm_threshold).sum()) if len(ok) else 0
    compute = float(sum(r.get("seconds", 0.0) for r in ok))
    tm_al = np.asarray([r["sc_tm_align"] if r.get("sc_tm_align") is not None else np.nan for r in ok], dtype=np.float64)
    nll = np.asarray([r["mpnn_self_nll"] for r in ok if r.get("mpnn_self_nll") is not None], dtype=np.float64)

    def f(x):
        return float(x) if len(ok) and np.isfinite(x) else None

    with np.errstate(all="ignore"):
        return {
            "n_backbones": len(records),
            "n_evaluated": len(ok),
            "n_errors": len(errs),
            "errors": errs,
            "threshold_sc_rmsd": float(threshold),
            "n_designable": designable,
            "designable_fraction": designable / len(ok) if ok else None,
            "threshold_sc_tm": float(tm_threshold),
            "n_designable_sc_tm": tm_designable,
            "designable_fraction_sc_tm": tm_designable / len(ok) if ok else None,
            "mean_best_sc_rmsd": f(np.nanmean(rmsd)) if len(ok) else None,
            "median_best_sc_rmsd": f(np.nanmedian(rmsd)) if len(ok) else None,
            "mean_best_sc_tm": f(np.nanmean(tm)) if len(ok) else None,
            "mean_best_sc_tm_align": f(np.nanmean(tm_al)) if len(ok) and np.isfinite(tm_al).any() else None,
            "mpnn_self_nll_mean": float(nll.mean()) if len(nll) else None,
            "mpnn_self_nll_std": float(nll.std()) if len(nll) else None,
            "geometry": summarize_geometry([r.get("geometry") for r in ok]),
            "compute_seconds": compute,
            "seconds_per_backbone": compute / len(ok) if ok else None,
            "seconds_per_designable": compute / designable if designable else None,
            "backbones_per_minute": 60.0 * len(ok) / compute if compute > 0 else None,
        }


def format_report(report: dict) -> str:
    """The report as Markdown (what ``report.md`` contains): first the offline columns (geometry
    and DSSP of the inputs, the labelled MPNN self-NLL proxy; the reference natives beside them
    when run), then the refolding columns labelled with the folder that produced them."""
    def num(x, fmt="{:.3f}"):
        return "n/a" if x is None else fmt.format(x)

    ref = report.get("reference") or None
    lines = [
        "# Designability report",
        "",
        f"- Inverse folder: {report.get('inverse_folder')} ({report.get('n_seq')} sequences per backbone, "
        f"temperature {report.get('temperature')}, seed {report.get('seed')})",
        f"- Folder: {report.get('folder')}",
        f"- {report.get('folder_note', '')}",
        f"- Backbones: {report.get('n_backbones')} ({report.get('n_evaluated')} evaluated, {report.get('n_errors')} errors, "
        f"{report.get('n_resumed', 0)} taken from an earlier run)",
        "",
        "## Offline checks: geometry, secondary structure, inverse-folding proxy",
        "",
        f"DSSP: {report.get('dssp_backend') or 'n/a'} (on N/C/O placed around CA traces). Compare each column with native chains: "
        "`reference=natives` runs held-out natives through the same pipeline and adds their row.",
        "",
        "| set | n | " + " | ".join(GEOMETRY_COLUMNS.values()) + f" | {SELF_NLL_LABEL} |",
        "|---|---:|" + "---:|" * (len(GEOMETRY_COLUMNS) + 1),
    ]

    def geo_row(name, rep):
        g = rep.get("geometry") or {}
        nll = rep.get("mpnn_self_nll_mean")
        nll_s = "n/a" if nll is None else f"{nll:.3f} +- {rep.get('mpnn_self_nll_std') or 0.0:.3f}"
        cells = [num(g.get(k), "{:.1f}" if k == "handedness_ratio" else "{:.3f}") for k in GEOMETRY_COLUMNS]
        return f"| {name} | {g.get('n', rep.get('n_evaluated'))} | " + " | ".join(cells) + f" | {nll_s} |"

    lines.append(geo_row("inputs", report))
    if ref:
        lines.append(geo_row(f"reference: {ref.get('source')}", ref))
    lines += [
        "",
        "MPNN self-NLL: mean negative log-likelihood (nats per designed residue) of the inverse folder's own "
        "designs under the same model (ProteinMPNN's `_scores`); lower = a more confident sequence. A proxy for "
        "how protein-like a backbone looks to ProteinMPNN, not a designability measure.",
        "",
        f"## Refolding (folder: {report.get('folder')})",
        "",
        f"- Designable (best scRMSD < {num(report.get('threshold_sc_rmsd'), '{:g}')} A): {report.get('n_designable')} "
        f"= {num(report.get('designable_fraction'))}",
        f"- Designable by scTM (best position-matched scTM > {num(report.get('threshold_sc_tm'), '{:g}')}, the looser "
        f"FrameDiff criterion): {report.get('n_designable_sc_tm')} = {num(report.get('designable_fraction_sc_tm'))}",
        f"- Best scRMSD: mean {num(report.get('mean_best_sc_rmsd'))} A, median {num(report.get('median_best_sc_rmsd'))} A",
        f"- Best scTM (position-matched): mean {num(report.get('mean_best_sc_tm'))}; secondary, after TM-align's own "
        f"alignment: {num(report.get('mean_best_sc_tm_align'))}",
    ]
    if ref:
        lines.append(f"- Reference ({ref.get('source')}) through the same folder: designable {ref.get('n_designable')} / "
                     f"{ref.get('n_evaluated')}, mean best scRMSD {num(ref.get('mean_best_sc_rmsd'))} A, mean best scTM "
                     f"{num(ref.get('mean_best_sc_tm'))}")
    lines += [
        f"- Wall time (this run): {num(report.get('wall_seconds'), '{:.1f}')} s; compute over all evaluated backbones: "
        f"{num(report.get('compute_seconds'), '{:.1f}')} s",
        f"- Seconds per backbone: {num(report.get('seconds_per_backbone'), '{:.2f}')}; effective seconds per designable "
        f"backbone: {num(report.get('seconds_per_designable'), '{:.2f}')}; backbones per minute: "
        f"{num(report.get('backbones_per_minute'), '{:.2f}')}",
    ]
    if report.get("errors"):
        lines += ["", "## Errors", ""]
        lines += [f"- `{e['key']}`: {e['error']}" for e in report["errors"]]
    return "\n".join(lines) + "\n"


__all__ = [
    "AF3_FOLD_STEPS", "DEFAULT_FOLD_STEPS", "ODE_MAX_STEPS", "ESMFoldFolder", "FOLD_SAMPLERS", "FEW_STEP_ODE", "Folder", "FolderUnavailable",
    "GEOMETRY_COLUMNS", "SC_RMSD_THRESHOLD", "SELF_NLL_LABEL", "backbone_geometry", "evaluate_backbone", "expand_inputs",
    "designability_protocol", "format_report", "load_folder", "load_inverse_folder", "reference_natives", "run_designability", "summarize",
    "summarize_geometry",
]
