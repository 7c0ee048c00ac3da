"""The protein benchmark kinds (``workbench bench structure | designability | backbone``,
:mod:`domains.proteins.bench`): option parsing and one-line errors, the acceptance logic as pure
functions, and each kind end to end at tiny sizes (files written, acceptance columns consistent
with the measured numbers)."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from domains.proteins import bench as B

torch.set_num_threads(1)

PNG = b"\x89PNG\r\n\x1a\n"


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def fnum(s):
    return None if s in ("", None) else float(s)


# ---------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------
def test_parse_options_types_lists_and_defaults():
    o = B.parse_options(["n=3", "steps=[2,3]", "full_steps=7", "progress=false"], B.StructureBenchOptions, "structure")
    assert o["n"] == 3 and o["steps"] == [2, 3] and o["full_steps"] == 7 and o["progress"] is False
    assert o["max_length"] == 150 and o["seed"] == 0 and o["threads"] == 1  # defaults
    o = B.parse_options(["noise_scales=1.0,0.5", "generators=[a.safetensors, b.safetensors]", "designability=no"],
                        B.BackboneBenchOptions, "backbone")
    assert o["noise_scales"] == [1.0, 0.5] and o["generators"] == ["a.safetensors", "b.safetensors"]
    assert o["designability"] is False and o["student_steps"] == [1, 8, 16] and o["teacher"] is None


@pytest.mark.parametrize("argv, needle", [
    (["bogus=1"], "unknown bench structure option 'bogus'; valid: out, n, max_length, steps"),
    (["n"], "expected key=value"),
    (["n=ten"], "option n='ten': expected int"),
    (["steps=[2,x]"], "expected a list of int"),
    (["progress=maybe"], "expected true or false"),
    (["n=1,2"], "option n='1,2': expected one int value"),
    (["out=a'b"], "option out=\"a'b\": token recognition error"),
])
def test_parse_options_errors_are_one_line(argv, needle):
    with pytest.raises(ValueError) as e:
        B.parse_options(argv, B.StructureBenchOptions, "structure")
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kind, main, options", [("structure", B.structure_main, B.StructureBenchOptions),
                                                  ("designability", B.designability_main, B.DesignabilityBenchOptions),
                                                  ("backbone", B.backbone_main, B.BackboneBenchOptions)])
def test_help_lists_every_key_with_its_value(kind, main, options, capsys):
    """``--help`` in the core commands' form: every key with its default (or the value given
    on the same line) and its description; nothing runs."""
    import dataclasses

    assert main(["n=3", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"workbench bench {kind} [key=value ...]: ")
    for f in dataclasses.fields(options):
        value = 3 if f.name == "n" else getattr(options(), f.name)
        assert f"\n  {f.name}={value!r}  # {f.metadata['help']}" in out, f.name


@pytest.mark.parametrize("main, argv, needle", [
    (B.structure_main, ["nope=1"], "valid: out, n, max_length, steps, full_steps, seed, repeats, threads"),
    (B.structure_main, ["steps=[0]"], "steps must be >= 1"),
    (B.structure_main, ["threads=0"], "threads must be >= 1"),
    (B.designability_main, ["lenght=50"], "valid: out, n, length, n_seq, fold_steps, source"),
    (B.designability_main, ["source=imaginary", "n=1"], "unknown designability source 'imaginary'; valid: ideal, real"),
    (B.designability_main, ["length=3"], "length must be >= 6"),
    (B.backbone_main, ["student_step=[1]"], "valid: out, n, lengths, teacher_steps, teacher, generators"),
    (B.backbone_main, ["generators=/nonexistent/generator.safetensors"], "generator not found"),
    (B.backbone_main, ["noise_scales=[-1]"], "noise_scales must be finite numbers >= 0"),
    (B.backbone_main, ["teacher_sampler=heun"], "unknown teacher_sampler 'heun'; valid: euler, sde"),
    (B.backbone_main, ["teacher_sampler=sde", "teacher_temperature=1.5"], "teacher_temperature must be in [0, 1]"),
])
def test_mains_report_bad_options_in_one_line(main, argv, needle, capsys, tmp_path):
    assert main(argv + [f"out={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and err.startswith("workbench bench ")
    assert not (tmp_path / "o").exists()  # failed before any work


def test_cli_dispatches_to_plugin_kinds(capsys, monkeypatch):
    """``workbench bench NAME ...`` hands ``argv[2:]`` to the entry point of group ``workbench.bench``
    (the installed one when pyproject's entry points are installed, else a stand-in for it)."""
    import workbench.cli as cli

    installed = cli.plugin_commands(cli.BENCH_GROUP)
    if not {"structure", "designability", "backbone"} <= set(installed):
        class EP:
            def __init__(self, fn):
                self.fn = fn

            def load(self):
                return self.fn

        fake = {"structure": EP(B.structure_main), "designability": EP(B.designability_main), "backbone": EP(B.backbone_main)}
        real = cli.plugin_commands
        monkeypatch.setattr(cli, "plugin_commands", lambda group=cli.COMMAND_GROUP: fake if group == cli.BENCH_GROUP else real(group))
    for kind in ("structure", "designability", "backbone"):
        assert cli.main(["bench", kind, "bogus=1"]) == 2
        assert f"unknown bench {kind} option 'bogus'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# acceptance logic
# ---------------------------------------------------------------------------------------------
def test_relative_change_directions():
    assert B.relative_change(0.76, 0.8) == pytest.approx(0.05)  # a 5% drop
    assert B.relative_change(0.84, 0.8) == pytest.approx(-0.05)  # better
    assert B.relative_change(2.2, 2.0, higher_is_better=False) == pytest.approx(0.1)  # a 10% increase of a lower-better metric
    assert B.relative_change(1.8, 2.0, higher_is_better=False) == pytest.approx(-0.1)
    assert B.relative_change(0.0, 0.0) == 0.0
    assert B.relative_change(0.1, 0.0) == -math.inf and B.relative_change(0.1, 0.0, higher_is_better=False) == math.inf
    assert B.relative_change(None, 1.0) is None and B.relative_change(float("nan"), 1.0) is None


def test_structure_acceptance_rows():
    rows = [{"ca_lddt": 0.80, "tm_score": 0.60, "rmsd": 4.0, "seconds_per_chain": 2.0},
            {"ca_lddt": 0.77, "tm_score": 0.58, "rmsd": 4.2, "seconds_per_chain": 0.1},   # 3.75% / 3.3% drops
            {"ca_lddt": 0.75, "tm_score": 0.60, "rmsd": 4.1, "seconds_per_chain": 0.05},  # lDDT drops 6.25%
            {"ca_lddt": 0.81, "tm_score": 0.55, "rmsd": 3.9, "seconds_per_chain": 0.2},   # TM drops 8.3%
            {"ca_lddt": 0.85, "tm_score": 0.70, "rmsd": 3.0, "seconds_per_chain": 0.5},   # better
            {"ca_lddt": float("nan"), "tm_score": 0.6, "rmsd": 4.0, "seconds_per_chain": 0.5}]
    B.structure_acceptance(rows)
    assert rows[0]["accept"] is None and rows[0]["lddt_drop"] == 0.0 and rows[0]["speedup"] == 1.0
    assert rows[1]["lddt_drop"] == pytest.approx(0.0375) and rows[1]["tm_drop"] == pytest.approx(0.02 / 0.6)
    assert rows[1]["rmsd_increase"] == pytest.approx(0.05) and rows[1]["speedup"] == pytest.approx(20.0)
    assert [r["accept"] for r in rows[1:]] == [True, False, False, True, False]
    assert rows[4]["lddt_drop"] < 0 and rows[4]["tm_drop"] < 0


def test_backbone_acceptance_rules():
    geo = {"dssp_helix": 0.30, "dssp_strand": 0.20, "rg_ratio_mean": 1.0}
    teacher = {"nfe": 200, "designable_fraction": 0.5, "diversity_cluster_fraction": 0.8, "novelty_max_tm_mean": 0.6, **geo}
    ok = {"nfe": 8, "designable_fraction": 0.46, "diversity_cluster_fraction": 0.75, "novelty_max_tm_mean": 0.65,
          "dssp_helix": 0.28, "dssp_strand": 0.21, "rg_ratio_mean": 1.05}
    r = B.backbone_acceptance(teacher, ok)
    assert r["nfe_ratio"] == 25.0 and r["nfe_ok"] and r["meets"] is True
    assert r["designable_fraction_rel"] == pytest.approx(0.08)
    assert r["diversity_cluster_fraction_rel"] == pytest.approx(0.0625)
    assert r["novelty_max_tm_mean_rel"] == pytest.approx(0.05 / 0.6)
    assert B.backbone_acceptance(teacher, {**ok, "nfe": 16})["meets"] is False  # only 12.5x fewer
    assert B.backbone_acceptance(teacher, {**ok, "nfe": 10})["meets"] is True  # exactly 20x
    assert B.backbone_acceptance(teacher, {**ok, "designable_fraction": 0.44})["meets"] is False  # 12% less designable
    assert B.backbone_acceptance(teacher, {**ok, "diversity_cluster_fraction": 0.7})["meets"] is False  # 12.5% less diverse
    assert B.backbone_acceptance(teacher, {**ok, "novelty_max_tm_mean": 0.7})["meets"] is False  # 16.7% less novel
    better = {"nfe": 1, "designable_fraction": 0.9, "diversity_cluster_fraction": 1.0, "novelty_max_tm_mean": 0.3, **geo}
    assert B.backbone_acceptance(teacher, better)["meets"] is True
    # helix, strand and Rg ratio are two-sided: 12% more helix fails like 12% less
    assert r["dssp_helix_rel"] == pytest.approx(0.02 / 0.3) and r["dssp_strand_rel"] == pytest.approx(0.05)
    for k, v in (("dssp_helix", 0.336), ("dssp_helix", 0.264), ("dssp_strand", 0.23), ("rg_ratio_mean", 0.88), ("rg_ratio_mean", 1.12)):
        assert B.backbone_acceptance(teacher, {**ok, k: v})["meets"] is False, (k, v)
    assert B.backbone_acceptance(teacher, {**ok, "designable_fraction": None})["meets"] is None  # designability not run
    zero = B.backbone_acceptance({**teacher, "designable_fraction": 0.0}, {**ok, "designable_fraction": 0.0})
    assert zero["designable_fraction_ok"] is None and zero["meets"] is None  # teacher never designable: not assessable
    assert B.backbone_acceptance({**teacher, "designable_fraction": 0.0}, {**ok, "nfe": 16})["meets"] is False
    # the secondary check judges the scTM > 0.5 fraction in place of the scRMSD one
    t2 = {**teacher, "designable_fraction": 0.0, "designable_fraction_sc_tm": 0.5}
    sec = B.backbone_acceptance(t2, {**ok, "designable_fraction": 0.0, "designable_fraction_sc_tm": 0.46},
                                designable_key="designable_fraction_sc_tm")
    assert sec["meets"] is True and sec["designable_fraction_sc_tm_rel"] == pytest.approx(0.08)
    assert "designable_fraction_rel" not in sec
    assert B.backbone_acceptance(t2, {**ok, "designable_fraction_sc_tm": 0.4}, designable_key="designable_fraction_sc_tm")["meets"] is False


# ---------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------
def test_bench_structure_end_to_end(tmp_path, capsys):
    out = tmp_path / "s"
    assert B.structure_main([f"out={out}", "n=2", "max_length=90", "steps=[2]", "full_steps=4", "repeats=2",
                            "progress=false"]) == 0
    for name in ("structure.csv", "structure.json", "structure.md", "structure.png"):
        assert (out / name).is_file()
    assert (out / "structure.png").read_bytes()[:8] == PNG
    all_rows = read_csv(out / "structure.csv")
    rows = [r for r in all_rows if r["kind"] == "sampler"]
    assert [int(r["nfe"]) for r in rows] == [4, 2]
    # reference rows after the sampler rows: the truth itself (TM 1, lDDT 1) and the two baselines
    from domains.structure_prediction.scoring import HELIX, UNRELATED

    refs = {r["config"]: r for r in all_rows if r["kind"] != "sampler"}
    assert set(refs) == {"native (the true structure)", UNRELATED, HELIX}
    native = refs["native (the true structure)"]
    assert fnum(native["tm_score"]) == pytest.approx(1.0) and fnum(native["ca_lddt"]) == pytest.approx(1.0)
    assert fnum(native["rg_vs_native"]) == pytest.approx(1.0) and fnum(native["ca_ca_outlier_fraction"]) < 0.1
    assert fnum(refs[UNRELATED]["tm_score"]) < 0.35 and fnum(refs[HELIX]["tm_score"]) < 0.35
    assert fnum(refs[HELIX]["ca_ca_outlier_fraction"]) == 0.0  # the ideal helix has 3.83 A virtual bonds
    for r in rows:  # TM above the unrelated-chain baseline, as the table states it
        assert fnum(r["tm_above_unrelated"]) == pytest.approx(fnum(r["tm_score"]) - fnum(refs[UNRELATED]["tm_score"]))
    assert json.loads(rows[0]["options"]) == {"gamma_min": 0.0625}  # AF3 defaults + gamma_min = 1 A
    assert json.loads(rows[1]["options"]) == {"gamma0": 0.0, "step_scale_eta": 1.0, "gamma_min": 0.0625}
    info = json.loads((out / "structure.json").read_text())
    assert info["n"] == 2 and all(c["length"] <= 90 for c in info["chains"])
    samplers = [r for r in info["rows"] if r["kind"] == "sampler"]
    assert len(info["per_chain"]) == 4 and all(len(r["seconds_runs"]) == 2 for r in samplers)
    assert all(r["seconds_total"] == min(r["seconds_runs"]) for r in samplers)
    ref, few = rows[0], rows[1]
    for r in rows:  # the row means are the means of the per-chain values
        pc = [p for p in info["per_chain"] if p["steps"] == int(r["steps"])]
        for key in ("ca_lddt", "tm_score", "tm_align", "ca_ca_outlier_fraction", "rg_vs_native"):
            assert fnum(r[key]) == pytest.approx(np.mean([p[key] for p in pc]))
        assert 0 <= fnum(r["ca_lddt"]) <= 1 and 0 <= fnum(r["tm_score"]) <= 1 and fnum(r["rmsd"]) >= 0
    lddt_drop = (fnum(ref["ca_lddt"]) - fnum(few["ca_lddt"])) / abs(fnum(ref["ca_lddt"])) if fnum(ref["ca_lddt"]) else None
    tm_drop = (fnum(ref["tm_score"]) - fnum(few["tm_score"])) / abs(fnum(ref["tm_score"]))
    if lddt_drop is not None:
        assert fnum(few["lddt_drop"]) == pytest.approx(lddt_drop)
    assert fnum(few["tm_drop"]) == pytest.approx(tm_drop)
    assert fnum(few["speedup"]) == pytest.approx(fnum(ref["seconds_per_chain"]) / fnum(few["seconds_per_chain"]))
    expect = (fnum(few["lddt_drop"]) <= 0.05) and (fnum(few["tm_drop"]) <= 0.05)
    assert few["accept"] == str(expect) and ref["accept"] == ""
    md = (out / "structure.md").read_text()
    assert "drop <= 5%" in md and ("| yes |" in md) == expect
    assert "TM-score (position-matched)" in md and "TM-align (secondary)" in md and UNRELATED in md
    assert "wrote" in capsys.readouterr().out


def test_designability_backbones_sources(tmp_path):
    from domains.proteins.ideal import IDEAL_KINDS
    from domains.proteins.io import write_chain

    ideal = B.designability_backbones("ideal", 5, 40, seed=0)
    assert [c.meta["kind"] for c in ideal] == [IDEAL_KINDS[i % 4] for i in range(5)] and {len(c) for c in ideal} == {40}
    again = B.designability_backbones("ideal", 5, 40, seed=0)
    assert all(np.array_equal(a.coords, b.coords, equal_nan=True) for a, b in zip(ideal, again))  # deterministic
    real = B.designability_backbones("real", 3, 60)
    assert {len(c) for c in real} == {60} and len({c.name for c in real}) == 3
    assert all(np.isfinite(c.ca).all() for c in real)
    for c in ideal[:2]:
        write_chain(c, tmp_path / f"{c.name}.pdb")
    files = B.designability_backbones(str(tmp_path), 5, 40)
    assert [p.name for p in files] == sorted(f"{c.name}.pdb" for c in ideal[:2])


def test_bench_designability_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "d"
    argv = [f"out={out}", "n=2", "length=36", "n_seq=2", "progress=false"]
    assert B.designability_main(argv) == 0
    s = json.loads((out / "designability_bench.json").read_text())
    assert (out / "designability_bench.md").is_file() and (out / "results.jsonl").is_file() and (out / "report.md").is_file()
    assert s["n_evaluated"] == 2 and s["n_new"] == 2 and s["n_resumed"] == 0 and s["n_errors"] == 0
    assert 0.0 <= s["designable_fraction"] <= 1.0 and s["mean_best_sc_rmsd"] > 0
    assert s["backbones_per_minute"] == pytest.approx(60.0 * 2 / s["wall_seconds"])
    parts = s["design_seconds_per_backbone"] + s["fold_seconds_per_backbone"] + s["metrics_seconds_per_backbone"]
    assert parts == pytest.approx(s["seconds_per_backbone"], rel=1e-6)
    assert s["design_seconds_per_backbone"] > 0 and s["fold_seconds_per_backbone"] > 0
    assert "not ESMFold" in s["folder"] and "5 steps" in s["folder"]
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sum(r["design_seconds"] for r in recs) / 2 == pytest.approx(s["design_seconds_per_backbone"])
    # a rerun resumes: nothing new is evaluated, the result is the same
    assert B.designability_main(argv) == 0
    s2 = json.loads((out / "designability_bench.json").read_text())
    assert s2["n_resumed"] == 2 and s2["n_new"] == 0 and s2["designable_fraction"] == s["designable_fraction"]
    assert s2["design_seconds_per_backbone"] is None
    assert "backbones / min" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    """A SiD generator distilled for 2 steps from the shipped teacher (tiny student)."""
    from domains.protein_backbone import ProteinBackboneDomain
    from domains.protein_backbone.nets import TINY_NET
    from workbench.runner import distill

    dom = ProteinBackboneDomain(n_max=24, lengths=[24])
    d = tmp_path_factory.mktemp("sid")
    res = distill(dom, method="sid", student_steps=2, out_dir=d,
                  train={"steps": 2, "batch_size": 2, "progress": False, "ckpt_every": 1000},
                  method_options={"student": dict(TINY_NET), "init_sigma": 999.0})
    return res["generator"]


@pytest.mark.slow
def test_bench_backbone_end_to_end(tmp_path, tiny_generator, capsys):
    out = tmp_path / "b"
    argv = [f"out={out}", "n=2", "lengths=[28,32]", "teacher_steps=4", f"generators={tiny_generator}", "student_steps=[2]",
            "noise_scales=[1.0,0.5]", "n_seq=1", "progress=false"]
    assert B.backbone_main(argv) == 0
    for name in ("backbone.csv", "backbone.json", "backbone.md", "backbone.png"):
        assert (out / name).is_file()
    assert (out / "backbone.png").read_bytes()[:8] == PNG
    rows = json.loads((out / "backbone.json").read_text())["rows"]
    assert [r["kind"] for r in rows] == ["teacher", "reference", "student", "student"]
    assert [r["nfe"] for r in rows] == [4, None, 2, 2] and [r["noise_scale"] for r in rows] == [None, None, 1.0, 0.5]
    assert len(list((out / "rows").glob("*/designability/results.jsonl"))) == 4
    for r in rows:
        assert 0.0 <= r["designable_fraction"] <= 1.0 and r["n_designable"] == round(r["designable_fraction"] * 2)
        assert r["designable_fraction_sc_tm"] in (0.0, 0.5, 1.0) and 0.0 <= r["mean_best_sc_tm"] <= 1.0
        assert r["ca_ca_mean"] > 0 and r["novelty_max_tm_mean"] is not None
        if r["kind"] == "reference":  # held-out real chains: native bond lengths, no sampling cost, no acceptance
            assert r["seconds_per_sample"] is None and "meets" not in r and abs(r["ca_ca_mean"] - 3.8) < 0.1
            continue
        assert r["seconds_per_sample"] > 0
        if r["n_designable"]:
            assert r["seconds_per_designable"] == pytest.approx(r["seconds_total"] / r["n_designable"])
    rows = [rows[0]] + rows[2:]
    for r in rows[1:]:  # acceptance columns recomputed from the numbers in the row
        again = B.backbone_acceptance(rows[0], r)
        assert r["nfe_ratio"] == 2.0 and r["meets"] is False and r["meets_sc_tm"] is False  # 2x fewer NFE is not 20x
        sec = B.backbone_acceptance(rows[0], r, designable_key="designable_fraction_sc_tm")
        assert r["designable_fraction_sc_tm_rel"] == pytest.approx(sec["designable_fraction_sc_tm_rel"])
        for k in ("designable_fraction_rel", "diversity_cluster_fraction_rel", "novelty_max_tm_mean_rel"):
            assert r[k] == pytest.approx(again[k])
    # same seed -> same lengths in every row (the written CA-only PDBs have the same residue counts)
    from domains.proteins.io import read_structure

    lens = {d.name: sorted(len(read_structure(p)) for p in sorted((d / "samples").glob("sample_?????.pdb")))
            for d in (out / "rows").iterdir()}
    assert len(set(map(tuple, lens.values()))) == 1 and set(next(iter(lens.values()))) <= {28, 32}
    md = (out / "backbone.md").read_text()
    assert "NFE at least 20x fewer" in md and md.count("| no | no |") == 2 and "scTM > 0.5" in md
    assert "| held-out chains (reference) | - | - |" in md
    csv_rows = read_csv(out / "backbone.csv")
    assert [r["meets"] for r in csv_rows] == ["", "", "False", "False"]


def test_heldout_batch_is_centred_crops_of_heldout_chains():
    from domains.protein_backbone import ProteinBackboneDomain

    dom = ProteinBackboneDomain(n_max=40)
    lengths = [30, 55, 30]
    b = B.heldout_batch(dom, lengths)
    N = max(40, 55)
    assert b.x.shape == (3, N, 3) and torch.equal(b.mask.sum(1), torch.tensor(lengths, dtype=torch.float32))
    real = b.mask > 0.5
    assert float(b.x[~real].abs().max()) == 0.0
    com = (b.x * b.mask[..., None]).sum(1) / b.mask.sum(1, keepdim=True)
    assert float(com.abs().max()) < 1e-5
    held = {c.name for c in dom.chains("test")} | {c.name for c in dom.chains("val")}
    train = {c.name for c in dom.chains("train")}
    assert held and not held & train  # split by protein: never a training chain
    # each row is the central window of a held-out chain (same internal distances, in nm)
    pool = dom.chains("test") + dom.chains("val")
    for i, L in enumerate(lengths):
        x = b.x[i, :L].double()
        d = torch.cdist(x, x)
        hits = []
        for c in pool:
            if len(c) >= L:
                s0 = (len(c) - L) // 2
                ca = torch.as_tensor(c.ca[s0:s0 + L], dtype=torch.float64) * 0.1
                hits.append(float((torch.cdist(ca, ca) - d).abs().max()) < 1e-5)
        assert any(hits)
    assert not torch.equal(b.x[0, :30], b.x[2, :30])  # the second length-30 row uses another chain
    many = B.heldout_batch(dom, [50] * len(pool))  # as many rows as held-out chains of >= 50: all distinct
    n_long = sum(len(c) >= 50 for c in pool)
    firsts = {tuple(np.round(many.x[i, 0].numpy(), 5)) for i in range(n_long)}
    assert len(firsts) == n_long
    with pytest.raises(ValueError, match="no held-out"):
        B.heldout_batch(dom, [5000])


@pytest.mark.slow
def test_bench_backbone_teacher_only_without_designability(tmp_path):
    res = B.bench_backbone(tmp_path / "t", n=2, lengths=[20], teacher_steps=3, designability=False, reference=False,
                           progress=False)
    (row,) = res["rows"]  # reference=false: the teacher row only
    assert row["nfe"] == 3 and row["designable_fraction"] is None and row["seconds_per_designable"] is None
    assert "designability=false" in (tmp_path / "t" / "backbone.md").read_text()
    # the low-temperature SDE teacher: same lengths and initial noise, other samples; temperature 0 is deterministic
    a = B.bench_backbone(tmp_path / "s", n=2, lengths=[20], teacher_steps=3, designability=False, reference=False, progress=False,
                         teacher_sampler="sde", teacher_temperature=0.0)
    b = B.bench_backbone(tmp_path / "s2", n=2, lengths=[20], teacher_steps=3, designability=False, reference=False, progress=False,
                         teacher_sampler="sde", teacher_temperature=0.0)
    assert a["rows"][0]["name"] == "teacher sde T0 3" and a["rows"][0]["nfe"] == 3
    assert a["rows"][0]["ca_ca_mean"] == b["rows"][0]["ca_ca_mean"] != row["ca_ca_mean"]
    assert "reverse SDE (`sde`, noise scaling temperature 0)" in (tmp_path / "s" / "backbone.md").read_text()


def test_progress_messages_go_to_stderr(capsys):
    B._log(True, "bench backbone: a row")
    B._log(False, "silent")
    err = capsys.readouterr().err
    assert "bench backbone: a row" in err and "silent" not in err
