"""The ``sequences`` domain plugin (domains/sequences/domain.py) and the application layer on
discrete state: conformance with an untrained backbone, a tiny teacher trained through the CLI,
``generate`` writing valid FASTA, ``evaluate`` recomputing the metrics from the written samples,
protein padding, and the one-line errors (bad dataset, missing shipped teacher, ``n_ref``)."""
import json

import numpy as np
import pytest
import torch

from workbench.checkpoint import CheckpointError
from workbench.cli import main
from workbench.domain import available_domains, check_domain, get_domain

pytest.importorskip("pyrodigal")  # ships the DNA data set
pytest.importorskip("pyhmmer")  # ships the protein data set

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_reference": 40}
TINY_CLI = [f"domain.{k}={v}" for k, v in TINY.items()]


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_registered_and_conformant_with_untrained_backbone():
    assert "sequences" in available_domains()
    for ds in ("dna", "protein"):
        dom = get_domain("sequences", dataset=ds, **TINY)
        rep = check_domain(dom, teacher=False)
        assert "kmer_js" in rep["metrics"] and rep["files"] == 2
        assert dom.formats == ("fasta", "npz")
    assert get_domain("sequences", dataset="text", **TINY).formats == ("txt", "npz")


@pytest.fixture(scope="module")
def dna_run(tmp_path_factory):
    """A 30-step tiny dna teacher trained through the CLI, then 8 samples generated with it."""
    root = tmp_path_factory.mktemp("seq")
    code = main(["train", "domain=sequences", "domain.dataset=dna", *TINY_CLI, "train.steps=30", "train.batch_size=8",
                 "train.progress=false", "threads=1", f"out={root / 't'}"])
    assert code == 0
    teacher = root / "t" / "teacher.safetensors"
    code = main(["generate", "domain=sequences", "domain.dataset=dna", f"teacher={teacher}", "sampler=mdlm_ancestral", "steps=8",
                 "n=8", "progress=false", f"out={root / 'g'}"])
    assert code == 0
    return root, teacher


def test_generate_writes_fasta_that_round_trips(dna_run):
    from domains.sequences import data as D
    from domains.sequences.io import read_fasta

    root, _ = dna_run
    recs = read_fasta(root / "g" / "samples" / "samples.fasta")
    assert [n for n, _ in recs] == [f"sample_{i}" for i in range(8)]
    assert all(len(s) == 128 and set(s) <= set("ACGT") for _, s in recs)
    with np.load(root / "g" / "samples" / "samples.npz") as f:
        x, mask = f["x"], f["mask"]
    assert x.dtype == np.int64 and x.shape == (8, 128) and (mask == 1).all()
    assert torch.equal(torch.stack([D.encode("dna", s) for _, s in recs]), torch.from_numpy(x))  # FASTA == the token ids
    rec = json.loads((root / "g" / "metrics.json").read_text())
    assert rec["sampler"] == "mdlm_ancestral" and rec["metrics"]["nfe"] == 8
    assert 0.0 <= rec["metrics"]["kmer_js"] <= 1.0


def test_evaluate_recomputes_metrics_from_written_samples(dna_run, capsys):
    root, _ = dna_run
    code, _, err = run(capsys, "evaluate", f"samples={root / 'g'}", "progress=false")
    assert code == 0, err
    gen = json.loads((root / "g" / "metrics.json").read_text())["metrics"]
    ev = json.loads((root / "g" / "metrics_eval.json").read_text())["metrics"]
    assert set(ev) == set(gen) - {"nfe", "seconds_per_sample"}
    for k, v in ev.items():
        assert v == pytest.approx(gen[k], rel=1e-9, abs=1e-12), k


def test_check_with_trained_teacher_lists_discrete_samplers(dna_run, capsys):
    _, teacher = dna_run
    code, out, err = run(capsys, "check", "domain=sequences", "domain.dataset=dna", f"teacher={teacher}")
    assert code == 0 and "passes the conformance check" in out, err
    line = next(s for s in out.splitlines() if s.startswith("samplers ("))
    assert "mdlm_ancestral" in line and "euler" not in line
    methods = next(s for s in out.splitlines() if s.startswith("distillation methods ("))
    assert methods.split(": ", 1)[1] == "lsd, lsd_plus, sdtt", methods          # the discrete-state methods
    assert "not supported: consistency (needs a continuous process (MaskedProcess is discrete))" in out


def test_n_ref_and_continuous_sampler_are_one_line_errors(dna_run, capsys, tmp_path):
    _, teacher = dna_run
    base = ["generate", "domain=sequences", "domain.dataset=dna", f"teacher={teacher}", "n=2", "steps=2", "progress=false"]
    code, _, err = run(capsys, *base, "sampler=mdlm_ancestral", "n_ref=2", f"out={tmp_path / 'a'}")
    assert code == 2 and "n_ref=2" in err and "discrete" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, *base, "sampler=euler", f"out={tmp_path / 'b'}")
    assert code == 2 and "valid for this process: " in err and "mdlm_ancestral" in err


def test_protein_samples_respect_padding(tmp_path):
    from domains.sequences import data as D
    from domains.sequences.io import read_fasta
    from workbench.runner import sample_domain

    dom = get_domain("sequences", dataset="protein", **TINY)
    torch.manual_seed(0)
    net = dom.build_backbone().eval()
    s, info = sample_domain(dom, net, sampler="mdlm_ancestral", steps=4, n=6, seed=3, progress=False)
    lengths = s.mask.sum(1).long()
    assert s.x.dtype == torch.long and s.x.shape == (6, D.PROTEIN_MAX_LEN)
    assert bool((lengths >= D.PROTEIN_MIN_LEN).all()) and bool((lengths <= D.PROTEIN_MAX_LEN).all())
    assert len(set(lengths.tolist())) > 1  # lengths are drawn, not fixed
    assert bool((s.x[s.mask == 0] == dom.process().pad_id).all())
    assert bool((s.x[s.mask > 0] < dom.vocab_size).all())  # no mask token left
    paths = dom.save_samples(s, tmp_path / "samples")
    recs = read_fasta(next(p for p in paths if p.suffix == ".fasta"))
    assert [len(seq) for _, seq in recs] == lengths.tolist()
    assert all(set(seq) <= set(D.PROTEIN_SYMBOLS) for _, seq in recs)
    # per-sample seeds: sample i's length does not depend on the batch
    s2, _ = sample_domain(dom, net, sampler="mdlm_ancestral", steps=4, n=2, seed=3, progress=False)
    assert torch.equal(s2.mask, s.mask[:2])


def test_bad_dataset_is_a_one_line_error(capsys):
    with pytest.raises(ValueError, match="unknown sequences dataset 'rna'; valid: text, dna, protein"):
        get_domain("sequences", dataset="rna")
    code, _, err = run(capsys, "generate", "domain=sequences", "domain.dataset=rna", "n=2")
    assert code == 2 and "valid: text, dna, protein" in err and len(err.strip().splitlines()) == 1


def test_missing_shipped_teacher_names_the_regenerate_command(tmp_path, monkeypatch, capsys):
    import domains.sequences.domain as mod

    monkeypatch.setattr(mod, "CHECKPOINT_DIR", tmp_path)  # no shipped file there, whatever is shipped later
    dom = get_domain("sequences", dataset="dna")
    assert dom.default_teacher_path() == tmp_path / "dna_mdlm.safetensors"
    with pytest.raises(CheckpointError, match="workbench train domain=sequences domain.dataset=dna") as e:
        dom.load_teacher()
    assert "dna_mdlm.safetensors" in str(e.value) and len(str(e.value).splitlines()) == 1
    code, _, err = run(capsys, "generate", "domain=sequences", "domain.dataset=dna", "n=2", "sampler=mdlm_ancestral")
    assert code == 2 and "workbench train domain=sequences domain.dataset=dna" in err and len(err.strip().splitlines()) == 1


def test_teacher_of_another_dataset_is_refused(dna_run):
    _, teacher = dna_run
    with pytest.raises(CheckpointError, match="dataset='dna', not 'protein'; pass domain.dataset=dna"):
        get_domain("sequences", dataset="protein").load_teacher(str(teacher))


def test_rotary_positions_make_attention_scores_relative():
    """RoPE (positions="rope"): q_i . k_j depends on i - j only; a network built with it runs
    and a bad name is a one-line error naming the choices."""
    from domains.sequences.nets import SequenceTransformer, apply_rope, rope_tables

    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    cos, sin = rope_tables(40, 8)

    def score(i, j):
        return float((apply_rope(q, cos[i:i + 1], sin[i:i + 1]) * apply_rope(k, cos[j:j + 1], sin[j:j + 1])).sum())

    assert abs(score(3, 7) - score(20, 24)) < 1e-5 and abs(score(3, 7) - score(3, 9)) > 1e-3
    net = SequenceTransformer(4, d_model=16, n_heads=2, n_layers=1, positions="rope")
    assert net(torch.randint(0, 5, (2, 10)), torch.rand(2)).shape == (2, 10, 4)
    with pytest.raises(ValueError, match="unknown positions 'abs'; valid: sinusoidal, rope"):
        SequenceTransformer(4, positions="abs")


def test_elbo_perplexity_of_uniform_logits_is_the_vocabulary_size():
    """A model with uniform logits has per-token NLL log V at every masked position and the ELBO
    weight 1/t integrates the masking rate t to 1, so the ELBO perplexity is V (DNA: 4)."""
    dom = get_domain("sequences", dataset="dna")

    class Uniform(torch.nn.Module):
        def forward(self, x, t, mask=None, cond=None):
            return torch.zeros(*x.shape, 4)

    ppl = dom.elbo_perplexity(Uniform(), split="val", repeats=2, max_sequences=256)
    assert abs(ppl - 4.0) < 0.08, ppl


def test_cli_distill_lsd_then_generate_with_the_file_and_the_default_sampler(dna_run, capsys):
    """`workbench distill method=lsd` writes a sampler file; `generate sampler=lsd:PATH` uses it;
    `generate` without `sampler=` uses the domain's default (mdlm_ancestral); a continuous method
    is refused in one line naming the discrete ones."""
    root, teacher = dna_run
    code, out, err = run(capsys, "distill", "domain=sequences", "domain.dataset=dna", f"teacher={teacher}", "method=lsd",
                         "student_steps=2", "distill.teacher_steps=4", "train.steps=2", "train.batch_size=2", "progress=false",
                         f"out={root / 'lsd'}")
    assert code == 0, err
    path = root / "lsd" / "generator.safetensors"
    code, out, err = run(capsys, "generate", "domain=sequences", "domain.dataset=dna", f"teacher={teacher}", f"sampler=lsd:{path}",
                         "steps=2", "n=2", "progress=false", f"out={root / 'gl'}")
    assert code == 0, err
    assert json.loads((root / "gl" / "metrics.json").read_text())["metrics"]["nfe"] == 2
    code, out, err = run(capsys, "generate", "domain=sequences", "domain.dataset=dna", f"teacher={teacher}", "steps=2", "n=2",
                         "progress=false", f"out={root / 'gd'}")
    assert code == 0, err
    assert json.loads((root / "gd" / "metrics.json").read_text())["sampler"] == "mdlm_ancestral"
    code, out, err = run(capsys, "distill", "domain=sequences", "domain.dataset=dna", f"teacher={teacher}", "method=consistency",
                         "train.steps=1", "progress=false", f"out={root / 'bad'}")
    assert code == 2 and "cannot distil domain 'sequences': it needs a continuous process" in err and "lsd, lsd_plus, sdtt" in err
    code, out, err = run(capsys, "generate", "domain=sequences", "sampler=lsd:/nope.safetensors", f"out={root / 'bad2'}")
    assert code == 2 and "LSD sampler file not found" in err and len(err.strip().splitlines()) == 1


def test_shipped_dna_teacher_8_steps_beats_iid_bases_on_the_6mer_spectrum(tmp_path, capsys):
    """The issue's acceptance: `workbench generate domain=sequences domain.dataset=dna n=64 steps=8`
    writes a FASTA whose 6-mer spectrum is closer to the held-out genome windows than i.i.d. bases
    with the genome's composition (5 draws). Measured: 0.145 vs 0.162-0.167 (64 held-out val
    windows: 0.141)."""
    from domains.sequences import data as D
    from domains.sequences import metrics as M
    from domains.sequences.io import read_fasta
    from workbench.losses import Batch

    code, out, err = run(capsys, "generate", "domain=sequences", "domain.dataset=dna", "n=64", "steps=8", "threads=1", "progress=false",
                         f"out={tmp_path / 'g'}")
    assert code == 0, err
    recs = read_fasta(tmp_path / "g" / "samples" / "samples.fasta")
    x = torch.stack([D.encode("dna", s) for _, s in recs])
    samples = Batch(x=x, mask=torch.ones(x.shape))
    ref = get_domain("sequences", dataset="dna").reference_batch()
    js = M.kmer_js(samples, ref, 6)
    iid = [M.kmer_js(M.baseline_iid(samples, D.unigram_probs("dna"), torch.Generator().manual_seed(i)), ref, 6) for i in range(5)]
    print(f"6-mer JS: samples {js:.4f}, iid {[round(v, 4) for v in iid]}")
    assert len(recs) == 64 and js < min(iid), (js, iid)
