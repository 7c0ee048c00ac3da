"""Self-consistency designability of protein backbones, for ANY PDB/mmCIF backbones or in-memory
:class:`~domains.proteins.chain.Chain` objects.

The protocol (Trippe et al. 2023; used by FrameDiff, Proteina and the few-step SiD protein
paper): for each backbone, an inverse folder designs ``n_seq`` sequences (ProteinMPNN CA-only,
8 sequences at temperature 0.1), a folder predicts a structure for each sequence, and the
refolded structures are compared with the input backbone:

- ``scRMSD`` = CA RMSD after optimal superposition (residue ``i`` <-> residue ``i``),
- ``scTM`` = TM-score after TM-align, normalised by the input length.

Per backbone the best values are kept (minimum scRMSD, maximum scTM); a backbone is
*designable* when its best scRMSD is below 2 A. The designable fraction is over the backbones
that could be evaluated.

Mechanics: backbones are processed in batches (``batch_size`` backbones: one ``design`` call and
one ``fold`` call of ``batch_size * n_seq`` sequences); after each batch ``results.jsonl`` in
``out_dir`` is rewritten atomically (temp file + fsync + ``os.replace``), one JSON record per
backbone keyed by ``"<absolute file path>#<chain id>"`` (``"chain:<name>"`` for in-memory
chains). A rerun with the same settings skips backbones already evaluated, so an interrupted
run resumes where it stopped. Files that cannot be read (missing, empty, malformed, no protein)
are recorded with the one-line :class:`~domains.proteins.io.StructureError` message and the
other inputs are still evaluated; such records are retried on a rerun.

The default folder is the project's own small structure-prediction model (the
``structure_prediction`` domain), not ESMFold; ESMFold is used only when asked for and installed
with its weights. Reports say which inverse folder and folder produced the numbers.
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
from .metrics import ca_rmsd, tm_score

#: designability threshold on the best scRMSD (Angstrom)
SC_RMSD_THRESHOLD = 2.0
#: the secondary, looser criterion: best scTM above this (as in Yim et al. 2023, FrameDiff)
SC_TM_THRESHOLD = 0.5
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


#: the default refolder samples the in-repo predictor with the few-step ODE form of the AF3 sampler
#: (Protenix-Mini: gamma0 = 0, eta = 1, 2-5 steps); the 200-step AF3 sampler is ``steps=200, options={}``
DEFAULT_FOLD_STEPS = 5
FEW_STEP_ODE = {"gamma0": 0.0, "step_scale_eta": 1.0}


def load_folder(name: str = "default", **kwargs) -> Folder:
    """A folder by name: ``"default"`` -> the ``structure_prediction`` domain's folder (the
    project's small in-repo model, sampled by default with the :data:`DEFAULT_FOLD_STEPS`-step
    ODE :data:`FEW_STEP_ODE`; ``kwargs`` go to ``domain.folder(...)``, e.g. ``steps=200,
    options={}`` for the 200-step AF3 sampler), ``"esmfold"`` -> :class:`ESMFoldFolder` (needs
    ``fair-esm`` and the weights)."""
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
        kwargs.setdefault("steps", DEFAULT_FOLD_STEPS)
        if kwargs.get("sampler") in (None, "af3_edm") and kwargs.get("options") is None:
            kwargs["options"] = dict(FEW_STEP_ODE)
        return domain.folder(**kwargs)
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
    records: dict = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # never produced by the atomic writer; tolerate hand edits
            if isinstance(r, dict) and "key" in r:
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
# the pipeline
# --------------------------------------------------------------------------------------------
def evaluate_backbone(backbone: Chain, sequences: Sequence[str], refolded: Sequence[Chain]) -> dict:
    """scRMSD (CA, superposed) and scTM (TM-align, normalised by the input) of each refolded
    structure against ``backbone``; best values and the index of the best (min scRMSD) design."""
    if len(refolded) != len(sequences):
        raise ValueError(f"the folder returned {len(refolded)} structures for {len(sequences)} sequences")
    rmsds, tms = [], []
    for seq, fold in zip(sequences, refolded):
        ca = fold.ca if isinstance(fold, Chain) else np.asarray(fold)
        if len(ca) != len(backbone):
            raise ValueError(f"the folder returned {len(ca)} residues for a sequence of length {len(seq)} "
                             f"(backbone {backbone.name!r} has {len(backbone)})")
        rmsds.append(ca_rmsd(ca, backbone.ca))
        tms.append(tm_score(ca, backbone.ca))
    r = np.asarray(rmsds, dtype=np.float64)
    best = int(np.nanargmin(r)) if np.isfinite(r).any() else 0
    return {
        "sc_rmsd": _finite_or_none(r[best]),
        "sc_tm": _finite_or_none(np.nanmax(tms)),
        "best_index": best,
        "best_sequence": sequences[best],
        "sc_rmsds": [_finite_or_none(x) for x in rmsds],
        "sc_tms": [_finite_or_none(x) for x in tms],
        "sequences": list(sequences),
    }


def _batch_generator(seed: int, chains: Sequence[Chain]) -> torch.Generator:
    """The generator of one batch, seeded from ``seed`` and the batch's CA coordinates (rounded
    to 1e-3 A), not from file paths or names: the same backbones give the same designs and
    folds wherever their files are."""
    h = 0
    for c in chains:
        h = zlib.crc32(np.round(np.asarray(c.ca, dtype=np.float64), 3).astype("<f8").tobytes(), h)
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + h) % (2**63 - 1))


def _accepts_generator(fn) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def run_designability(inputs, out_dir, *, inverse_folder=None, folder=None, n_seq: int = 8, temperature: float = 0.1,
                      batch_size: int = 8, seed: int = 0, progress: bool = True, all_chains: bool = False,
                      threshold: float = SC_RMSD_THRESHOLD, resume: bool = True, save_structures: bool = False) -> dict:
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
        batch_size: backbones per batch (one ``design`` and one ``fold`` call; results are saved
            after every batch).
        seed: designs (and folds, for folders taking a ``generator``) use a generator seeded from
            ``seed`` and the batch's coordinates, so a run is a pure function of its inputs and
            settings, wherever the files are.
        threshold: designable iff best scRMSD < ``threshold`` (2 A).
        resume: skip backbones already in ``results.jsonl`` with the same inverse folder, folder,
            ``n_seq``, ``temperature`` and ``seed``; ``False`` recomputes everything.
        save_structures: also write each backbone's best refolded structure to
            ``out_dir/refolded/<name>_best.pdb``.
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
    out_dir.mkdir(parents=True, exist_ok=True)
    items = expand_inputs(inputs)
    if not items:
        raise ValueError("designability: no inputs given")

    folder_arg = folder
    if inverse_folder is None or isinstance(inverse_folder, str):
        inverse_folder = load_inverse_folder(inverse_folder or "proteinmpnn_ca")
    if folder is None or isinstance(folder, str):
        folder = load_folder(folder or "default")
    inv_name = str(getattr(inverse_folder, "name", type(inverse_folder).__name__))
    fold_name = str(getattr(folder, "name", type(folder).__name__))
    config = {"inverse_folder": inv_name, "folder": fold_name, "n_seq": int(n_seq), "temperature": float(temperature),
              "seed": int(seed)}

    backbones, read_errors = _load_backbones(items, all_chains)
    results_path = out_dir / "results.jsonl"
    records = _read_results(results_path) if resume else {}
    for e in read_errors:
        records[e["key"]] = e
    done = {k for k, r in records.items() if r.get("status") == "ok" and r.get("config") == config}
    todo = [b for b in backbones if b[0] not in done]
    n_resumed = len(backbones) - len(todo)
    if read_errors or not resume:
        _write_results(results_path, records)

    fold_kwargs_ok = _accepts_generator(folder.fold)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(backbones), initial=n_resumed, desc="designability", unit="backbone", leave=False,
                       file=sys.stderr)
        except ImportError:  # pragma: no cover
            bar = None
    def process(batch) -> list[dict]:
        """Design, fold and score one batch of backbones -> one record each."""
        gen = _batch_generator(seed, [b[1] for b in batch])
        t0 = time.perf_counter()
        designs = inverse_folder.design([b[1] for b in batch], n_seq=int(n_seq), temperature=float(temperature), generator=gen)
        t1 = time.perf_counter()
        flat = [s for ds in designs for s in ds]
        folded = list(folder.fold(flat, generator=gen) if fold_kwargs_ok else folder.fold(flat))
        t2 = time.perf_counter()
        if len(folded) != len(flat):
            raise RuntimeError(f"folder {fold_name!r} returned {len(folded)} structures for {len(flat)} sequences")
        out = []
        for i, (key, chain, src) in enumerate(batch):
            rec = {"key": key, "file": src, "chain": chain.name, "length": len(chain), "config": config,
                   "seconds": (t2 - t0) / len(batch), "design_seconds": (t1 - t0) / len(batch),
                   "fold_seconds": (t2 - t1) / len(batch)}
            try:
                rec.update(evaluate_backbone(chain, designs[i], folded[i * int(n_seq):(i + 1) * int(n_seq)]))
                rec["status"] = "ok"
                if save_structures:
                    from .io import write_chain

                    best = folded[i * int(n_seq) + rec["best_index"]]
                    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in chain.name)
                    rec["refolded_path"] = str(write_chain(best, out_dir / "refolded" / f"{name}_best.pdb"))
            except ValueError as e:
                rec.update({"status": "error", "error": " ".join(str(e).split())})
            out.append(rec)
        return out

    for start in range(0, len(todo), int(batch_size)):
        batch = todo[start:start + int(batch_size)]
        try:
            new_records = process(batch)
        except ValueError as e:
            # a backbone the inverse folder or folder rejects (e.g. too long): isolate it, keep the others
            if len(batch) == 1:
                key, chain, src = batch[0]
                new_records = [{"key": key, "file": src, "chain": chain.name, "length": len(chain), "config": config,
                                "status": "error", "error": " ".join(str(e).split())}]
            else:
                new_records = []
                for b in batch:
                    try:
                        new_records += process([b])
                    except ValueError as e1:
                        new_records.append({"key": b[0], "file": b[2], "chain": b[1].name, "length": len(b[1]),
                                            "config": config, "status": "error", "error": " ".join(str(e1).split())})
        for rec in new_records:
            records[rec["key"]] = rec
        _write_results(results_path, records)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()

    keys_now = [e["key"] for e in read_errors] + [b[0] for b in backbones]
    report = summarize([records[k] for k in keys_now if k in records], threshold=threshold)
    report.update({
        "inverse_folder": inv_name,
        "folder": fold_name,
        "folder_note": _folder_note(folder, folder_arg),
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


def summarize(records: Sequence[dict], *, threshold: float = SC_RMSD_THRESHOLD, tm_threshold: float = SC_TM_THRESHOLD) -> dict:
    """Aggregate per-backbone records: counts, designable fraction (best scRMSD < ``threshold``
    over the evaluated backbones; the main criterion, as Proteina and RFdiffusion), the
    looser scTM-designable fraction (best scTM > ``tm_threshold``, FrameDiff's criterion,
    reported beside it), mean/median best scRMSD and scTM, compute time per
    backbone and per designable backbone (summed over the records' own timings, so resumed runs
    count the time they originally took), and the list of errors."""
    ok = [r for r in records if r.get("status") == "ok"]
    errs = [{"key": r["key"], "error": r.get("error", "")} for r in records if r.get("status") != "ok"]
    rmsd = np.asarray([r["sc_rmsd"] if r.get("sc_rmsd") is not None else np.nan for r in ok], dtype=np.float64)
    tm = np.asarray([r["sc_tm"] if r.get("sc_tm") is not None else np.nan for r in ok], dtype=np.float64)
    designable = int((rmsd < threshold).sum()) if len(ok) else 0
    tm_designable = int((tm > tm_threshold).sum()) if len(ok) else 0
    compute = float(sum(r.get("seconds", 0.0) for r in ok))

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
            "compute_seconds": compute,
            "seconds_per_backbone": compute / len(ok) if ok else None,
            "seconds_per_designable": compute / designable if designable else None,
            "backbones_per_minute": 60.0 * len(ok) / compute if compute > 0 else None,
        }


def format_report(report: dict) -> str:
    """The report as Markdown (what ``report.md`` contains)."""
    def num(x, fmt="{:.3f}"):
        return "n/a" if x is None else fmt.format(x)

    lines = [
        "# Designability report",
        "",
        f"- Inverse folder: {report.get('inverse_folder')} ({report.get('n_seq')} sequences per backbone, "
        f"temperature {report.get('temperature')}, seed {report.get('seed')})",
        f"- Folder: {report.get('folder')}",
        f"- {report.get('folder_note', '')}",
        f"- Backbones: {report.get('n_backbones')} ({report.get('n_evaluated')} evaluated, {report.get('n_errors')} errors, "
        f"{report.get('n_resumed', 0)} taken from an earlier run)",
        f"- Designable (best scRMSD < {num(report.get('threshold_sc_rmsd'), '{:g}')} A): {report.get('n_designable')} "
        f"= {num(report.get('designable_fraction'))}",
        f"- Designable by scTM (best scTM > {num(report.get('threshold_sc_tm'), '{:g}')}, the looser FrameDiff criterion): "
        f"{report.get('n_designable_sc_tm')} = {num(report.get('designable_fraction_sc_tm'))}",
        f"- Best scRMSD: mean {num(report.get('mean_best_sc_rmsd'))} A, median {num(report.get('median_best_sc_rmsd'))} A",
        f"- Best scTM: mean {num(report.get('mean_best_sc_tm'))}",
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
    "ESMFoldFolder", "Folder", "FolderUnavailable", "SC_RMSD_THRESHOLD", "evaluate_backbone", "expand_inputs", "format_report",
    "load_folder", "load_inverse_folder", "run_designability", "summarize",
]
