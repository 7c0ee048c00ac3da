"""The shipped shapes models (domains/shapes/checkpoints): ``workbench generate domain=shapes n=16``
writes one PLY per sample that trimesh reads, each with the configured number of points, finite,
non-degenerate and distinct from the others, plus meshes and renders; the shipped students load
and sample the families they are asked for."""
import json

import numpy as np
import pytest
import torch

trimesh = pytest.importorskip("trimesh", reason="trimesh is not installed (the `shapes` extra)")
pytest.importorskip("scipy", reason="the shapes metrics need scipy")
pytest.importorskip("pymeshlab", reason="the shapes data and meshes need pymeshlab (the `shapes` extra)")


def test_cli_generate_writes_sixteen_distinct_ply_clouds(tmp_path, capsys):
    from workbench.cli import main

    out = tmp_path / "gen"
    code = main(["generate", "domain=shapes", "n=16", "sampler=euler", "steps=10", "threads=1", f"out={out}",
                 "domain.renders=1", "domain.eval_recover=0"])
    assert code == 0, capsys.readouterr().err
    plys = sorted((out / "samples").glob("sample_*.ply"))
    assert len(plys) == 16
    clouds = []
    for p in plys:
        v = np.asarray(trimesh.load(p).vertices)
        assert v.shape == (256, 3) and np.isfinite(v).all()
        assert (v.max(0) - v.min(0)).max() > 0.5  # box-normalised shapes have a longest side near 1
        d = np.linalg.norm(v[:, None] - v[None], axis=-1) + np.eye(len(v))
        assert (d.min(1) > 1e-6).mean() > 0.9  # not collapsed onto each other
        clouds.append(v)
    for i in range(16):
        for j in range(i + 1, 16):
            assert np.abs(clouds[i] - clouds[j]).max() > 1e-2
    meshes = sorted((out / "samples").glob("mesh_*.ply"))
    assert len(meshes) >= 12 and all(len(trimesh.load(p, process=False).faces) > 0 for p in meshes[:3])
    assert (out / "samples" / "render_00000.png").read_bytes()[:4] == b"\x89PNG"
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert m["valid_fraction"] == 1.0 and m["n"] == 16 and 0.0 <= m["1nna_cd"] <= 1.0


@pytest.mark.parametrize("name", ["mdt_dist_2step", "cd_2step"])
def test_shipped_students_sample_the_asked_families(name):
    from domains.shapes.domain import ShapesDomain
    from workbench.runner import load_generator, sample_generator

    dom = ShapesDomain()
    st = {s.name: s for s in dom.shipped_students()}[name]
    gen, meta = load_generator(dom, st.path)
    labels = torch.tensor([0, 2])  # box, torus
    x, info = sample_generator(dom, gen, steps=2, n=2, seed=0, cond=labels)
    assert info["nfe"] == 2 and x.x.shape == (2, 256, 3) and torch.isfinite(x.x).all()
    assert x.cond.tolist() == [0, 2]
    assert ShapesDomain(n_points=128).shipped_students() == ()
