"""`bench samplers` on discrete state (workbench/bench_discrete.py): every requested sampler at
each NFE, learned sampler files at their own NFE, `SAMPLER@CHECKPOINT` rows, the held-out row,
and the tables and plot it writes."""
import csv

import pytest

pytest.importorskip("pyrodigal")  # ships the DNA data set


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from discrete_helpers import tiny_dna_teacher
    from workbench.runner import distill

    tmp = tmp_path_factory.mktemp("bd")
    dom, _ = tiny_dna_teacher(tmp / "net0.safetensors", seed=0)
    paths = [tmp / "net0.safetensors", tiny_dna_teacher(tmp / "net1.safetensors", seed=1)[1]]
    res = distill(dom, method="lsd", student_steps=2, out_dir=tmp / "lsd", teacher=str(paths[0]), method_options={"teacher_steps": 4},
                  train={"steps": 2, "batch_size": 4, "progress": False})
    return tmp, dom, paths, res["generator"]


def test_rows_tables_and_plot(tiny):
    from workbench.bench import bench_samplers

    tmp, dom, (teacher, other), lsd = tiny
    res = bench_samplers(dom, out_dir=tmp / "b", teacher=str(teacher), nfes=[2, 4], n=8, progress=False,
                         samplers=["mdlm_ancestral", "maskgit", f"lsd:{lsd}", f"mdlm_ancestral@{other}"])
    rows = list(csv.DictReader(open(res["csv"])))
    got = {(r["method"], int(r["nfe"])) for r in rows}
    assert ("held-out data (val split)", 0) in got
    assert {("mdlm_ancestral", 2), ("mdlm_ancestral", 4), ("maskgit", 2), ("maskgit", 4), ("lsd:lsd", 2),
            ("mdlm_ancestral@net1", 2), ("mdlm_ancestral@net1", 4)} <= got
    assert ("lsd:lsd", 4) not in got                       # a learned file runs at its own NFE only
    assert ("mdlm_ancestral", 256) in got and ("maskgit", 256) not in got   # the teacher's usual row, always
    md = res["markdown"].read_text()
    assert "### `kmer_js` (lower better)" in md and "| lsd:lsd | " in md and res["plot"].exists()
    r = next(r for r in rows if r["method"] == "mdlm_ancestral" and r["nfe"] == "4")
    assert float(r["m_kmer_js"]) >= 0 and float(r["ms_per_sample"]) > 0


def test_bad_entries_are_one_line_errors(tiny):
    from workbench.bench import bench_samplers

    tmp, dom, (teacher, _), _ = tiny
    with pytest.raises(ValueError, match="sampler 'euler' needs a continuous Gaussian process"):
        bench_samplers(dom, out_dir=tmp / "e1", teacher=str(teacher), nfes=[2], n=4, samplers=["euler"], progress=False)
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        bench_samplers(dom, out_dir=tmp / "e2", teacher=str(teacher), nfes=[2], n=4, samplers=["nope"], progress=False)
