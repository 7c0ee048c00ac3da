"""``workbench demo`` (issue 16): short folder names, teacher vs shipped student vs the best
training-free sampler at the student's NFE, every linked image exists, failures reported."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from workbench.demo import demo_plan, run_demo
from workbench.domain import ShippedStudent, get_domain


def test_plan_has_teacher_students_and_training_free_rows_at_the_students_nfe():
    dom = get_domain("toy", dataset="gmm", teacher="mlp")
    plan = demo_plan(dom)
    assert [r.kind for r in plan][:3] == ["teacher", "student", "student"]
    assert plan[0].steps == dom.teacher_sampler[1]
    free = [r for r in plan if r.kind == "training-free"]
    assert sorted({r.steps for r in free}) == sorted({s.steps for s in dom.shipped_students()}) == [1, 2]
    assert {r.sampler for r in free} == set(dom.demo_fast_samplers)
    # no student: the training-free rows run at the domain's demo_fast_steps
    pts = get_domain("toy", dataset="pointset", teacher="mlp")
    assert {r.steps for r in demo_plan(pts) if r.kind == "training-free"} == set(pts.demo_fast_steps)


def test_demo_report_on_toy(tmp_path):
    out = tmp_path / "demo"
    readme = run_demo(out, domains=["toy"], n=32, progress=False)
    text = readme.read_text()
    assert "## toy-gmm" in text and "## toy-pointset" in text
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):  # every picture the report shows exists
        assert (out / link).is_file(), link
    assert len(re.findall(r"!\[", text)) == 2
    for p in out.rglob("*"):  # short, readable names
        assert len(p.relative_to(out).as_posix()) < 60 and "{" not in p.name and " " not in p.name, p
    rows = json.loads((out / "metrics.json").read_text())
    gmm = [r for r in rows if r["domain"] == "toy-gmm"]
    assert [r["run"] for r in gmm[:3]] == ["teacher_dpmpp2m50", "meanflow_1step", "meanflow_2step"]
    assert gmm[0]["speedup"] == pytest.approx(1.0)
    for nfe in (1, 2):  # the shown training-free row is the best (lowest sw) of those tried
        shown = [r for r in gmm if r["kind"] == "training-free" and r["nfe"] == nfe]
        assert len(shown) == 1
        tried = [json.loads(p.read_text())["metrics"]["sw"] for p in out.glob(f"toy-gmm/*_{nfe}/metrics.json")]
        assert len(tried) == 2 and shown[0]["sw"] == pytest.approx(min(tried))
    assert "sw (lower better)" in text and "sliced Wasserstein" in text


def test_a_missing_student_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    from domains.toy.domain import ToyDomain

    def broken(self):
        return (ShippedStudent("ghost_1step", tmp_path / "nope.safetensors", 1),) if self.dataset == "gmm" else ()

    monkeypatch.setattr(ToyDomain, "shipped_students", broken)
    with pytest.raises(RuntimeError, match="toy-gmm: FileNotFoundError: shipped student ghost_1step"):
        run_demo(tmp_path / "d", domains=["toy"], n=16, progress=False)
    text = (tmp_path / "d" / "README.md").read_text()
    assert "## toy-pointset" in text and "## Domains that failed" in text and "ghost_1step" in text
    assert not Path(tmp_path / "d" / "toy-gmm").exists()


def test_track_shows_progress_only_when_the_application_asks(capsys):
    from workbench.utils import show_progress, track

    assert list(track(range(3), "quiet")) == [0, 1, 2] and capsys.readouterr().err == ""
    with show_progress(True):
        assert list(track(range(3), "counting")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "counting" in err and "0/3" in err  # a bar with a total (leave=False clears it at the end)
    with show_progress(False):
        list(track(range(3), "off"))
    assert capsys.readouterr().err == ""


def test_protein_evaluate_shows_progress(tmp_path, capsys):
    import numpy as np

    from domains.proteins.metrics import diversity
    from workbench.utils import show_progress

    rng = np.random.default_rng(0)
    chains = [np.cumsum(rng.normal(size=(20, 3)), 0) * 2 for _ in range(3)]
    with show_progress(True):
        diversity(chains)
    assert "diversity (pairwise TM-align)" in capsys.readouterr().err
