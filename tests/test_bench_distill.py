"""`workbench bench distill` end to end at tiny sizes: teacher rows, one method, outputs, resume."""
import csv
import json

import pytest

from workbench.cli import main


@pytest.mark.slow
def test_bench_distill_cli_tiny(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bd"
    args = ["bench", "distill", "domain=toy", f"out={out}", "bench_distill.methods=[consistency]", "bench_distill.student_steps=[1,2]",
            "bench_distill.teacher_nfes=[4]", "bench_distill.n=64", "train.steps=4", "bench_distill.options.consistency.num_scales=10"]
    assert main(args) == 0, capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "distill.csv")))
    teacher = [r for r in rows if r["method"] == "teacher"]
    assert teacher and all(int(r["nfe"]) == 4 for r in teacher)
    assert sum(int(r["best_teacher"]) for r in teacher) == 1
    students = [r for r in rows if r["method"] == "consistency"]
    assert [int(r["nfe"]) for r in students] == [1, 2]
    assert (out / "distill.png").read_bytes()[:4] == b"\x89PNG"
    assert "| teacher," in (out / "distill.md").read_text()
    gen = out / "runs" / "consistency_k1" / "generator.safetensors"
    meta = json.loads((out / "rows.json").read_text())
    assert len(meta) == len(rows)
    mtime = gen.stat().st_mtime_ns
    import workbench.bench_distill as bd

    def no_teacher_rows(*a, **k):
        raise AssertionError("teacher rows recomputed although cached")

    monkeypatch.setattr(bd, "teacher_rows", no_teacher_rows)
    assert main(args) == 0  # a second run reuses the trained generators and the cached teacher rows
    assert gen.stat().st_mtime_ns == mtime
    again = list(csv.DictReader(open(out / "distill.csv")))
    assert [r for r in again if r["method"] == "teacher"] == teacher  # identical rows, wall times included
    monkeypatch.undo()
    changed = [a if not a.startswith("bench_distill.n=") else "bench_distill.n=32" for a in args]
    called = []
    monkeypatch.setattr(bd, "teacher_rows", lambda *a, **k: called.append(1) or [])
    assert main(changed) == 0 and called == [1]  # another n: the cache key differs


def test_bench_distill_unknown_method(capsys, tmp_path):
    assert main(["bench", "distill", f"out={tmp_path}", "bench_distill.methods=[nope]"]) == 2
    err = capsys.readouterr().err
    assert "unknown distillation method(s) ['nope']; valid:" in err and len(err.strip().splitlines()) == 1


def test_setup_seconds_counts_the_recipes_recorded_setup():
    """Reflow / SlimFlow record the time of their teacher couplings and stage 1 in ``info``;
    the benchmark adds them (numbers and per-round lists) and ignores other entries."""
    from workbench.bench_distill import setup_seconds

    meta = {"info": {"pair_seconds": 300.5, "stage1_seconds": 24.0, "round_seconds": [10.0, 5.5], "search_cost": 12.7,
                     "student_params": 1000, "bad_seconds": float("nan")}}
    assert setup_seconds(meta) == 340.0
    assert setup_seconds({"info": {}}) == 0.0 and setup_seconds({}) == 0.0
