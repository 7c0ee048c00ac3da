"""Structure-prediction scoring that cannot mislead (domains/structure_prediction/scoring.py and
``StructurePredictionDomain.evaluate``): position-matched TM-score and CA-lDDT as the primary
columns on real native chains (the truth scores 1, an unrelated native chain or a shuffled
trace scores low), TM-align only as the secondary ``tm_align`` column, the shape columns, the
two no-information baselines, and the designability folder's sampler choice (``fold_sampler=af3``
runs AF3's stochastic sampler)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.losses import Batch

from domains.proteins import metrics as pm
from domains.proteins.data import dataset_chains
from domains.structure_prediction import StructurePredictionDomain
from domains.structure_prediction import scoring as S
from domains.structure_prediction.domain import encode_sequences

torch.set_num_threads(1)
TINY = {"c_s": 16, "c_z": 8, "heads": 2, "trunk_depth": 1, "diffusion_depth": 1, "c_opm": 4, "fourier_dim": 8, "transition": 1}


@pytest.fixture(scope="module")
def natives():
    """Four held-out native chains of 80-160 residues from four different files."""
    out, seen = [], set()
    for c in dataset_chains("test"):
        if 80 <= len(c) <= 160 and c.source not in seen and np.isfinite(c.ca).all():
            out.append(c)
            seen.add(c.source)
        if len(out) == 4:
            break
    assert len(out) == 4
    return out


@pytest.fixture(scope="module")
def dom():
    return StructurePredictionDomain(net=TINY, source="real")


def _batch(dom, chains, coords):
    """A Batch of CA traces ``coords[i]`` ``[L_i, 3]`` (A) labelled with ``chains[i]``'s sequence."""
    cond, mask = encode_sequences([c.sequence for c in chains])
    x = torch.zeros(len(chains), mask.shape[1], 3)
    for i, ca in enumerate(coords):
        ca = torch.as_tensor(np.asarray(ca), dtype=torch.float32)
        x[i, : len(ca)] = (ca - ca.mean(0)) / dom.unit
    return Batch(x=x, mask=mask, cond=cond)


def test_evaluate_natives_score_one_and_unrelated_chains_score_low(dom, natives):
    truth = _batch(dom, natives, [c.ca for c in natives])
    rot = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))[0]
    rot = rot * torch.sign(torch.det(rot))  # a proper rotation
    moved = Batch(x=(truth.x @ rot.T) * truth.mask[..., None], mask=truth.mask, cond=truth.cond)
    m = dom.evaluate(moved, reference=truth)
    assert m["tm_score"] == pytest.approx(1.0, abs=1e-6) and m["ca_lddt"] == pytest.approx(1.0)
    assert m["tm_align"] == pytest.approx(1.0, abs=1e-4) and m["rmsd"] < 1e-3 and m["rg_vs_native"] == pytest.approx(1.0, abs=1e-5)
    assert m["with_reference"] == 1.0
    # the first L residues of another native chain, as if they were the prediction
    pool = dataset_chains("train")
    unrelated = [S.unrelated_chain(c, pool, i) for i, c in enumerate(natives)]
    assert all(u is not None and u.source != c.source and len(u) >= len(c) for u, c in zip(unrelated, natives))
    bad = dom.evaluate(_batch(dom, natives, [u.ca[: len(c)] for u, c in zip(unrelated, natives)]), reference=truth)
    assert bad["tm_score"] < 0.3 and bad["ca_lddt"] < 0.45
    # residues shuffled along the chain: same atoms, wrong correspondence
    rng = np.random.default_rng(0)
    shuffled = [c.ca[rng.permutation(len(c))] for c in natives]
    sh = dom.evaluate(_batch(dom, natives, shuffled), reference=truth)
    assert sh["tm_score"] < 0.3 and sh["ca_lddt"] < 0.3
    assert sh["ca_ca_outlier_fraction"] > 0.8  # the shuffled trace's consecutive CAs are far apart
    # circular permutation by L/2: TM-align re-aligns each half (~0.5), the fixed correspondence does not
    rolled = [np.roll(c.ca, len(c) // 2, axis=0) for c in natives]
    ro = dom.evaluate(_batch(dom, natives, rolled), reference=truth)
    assert ro["tm_score"] < 0.35 and ro["tm_align"] > 0.45
    # the mirror image has the same distances but cannot be superposed: matched TM well below 1
    mirror = dom.evaluate(_batch(dom, natives, [-c.ca for c in natives]), reference=truth)
    assert mirror["tm_score"] < 0.6 and mirror["ca_lddt"] == pytest.approx(1.0)  # lDDT is mirror-blind


def test_evaluate_without_reference_uses_known_structures(dom, natives):
    m = dom.evaluate(_batch(dom, natives[:2], [c.ca for c in natives[:2]]))
    assert m["with_reference"] == 1.0 and m["tm_score"] == pytest.approx(1.0, abs=1e-6)
    # an unknown sequence has no truth: shape columns only
    from domains.proteins.chain import Chain

    odd = Chain("odd", "W" * 30, natives[0].ca[:30])
    m2 = dom.evaluate(_batch(dom, [odd], [odd.ca]))
    assert m2["with_reference"] == 0.0 and np.isnan(m2["tm_score"]) and np.isfinite(m2["ca_ca_outlier_fraction"])


def test_score_prediction_columns_against_the_metrics(natives):
    c = natives[0]
    pred = c.ca + np.random.default_rng(1).normal(scale=1.0, size=c.ca.shape)
    sc = S.score_prediction(pred, c.ca, c.sequence)
    assert set(S.COLUMNS) <= set(sc)
    assert sc["tm_score"] == pytest.approx(pm.tm_score_matched(pred, c.ca))
    assert sc["tm_align"] == pytest.approx(pm.tm_score(pred, c.ca, c.sequence, c.sequence))
    assert sc["ca_lddt"] == pytest.approx(pm.ca_lddt(pred, c.ca))
    d = np.linalg.norm(np.diff(pred, axis=0), axis=1)
    assert sc["ca_ca_outlier_fraction"] == pytest.approx(np.mean(np.abs(d - 3.8) > 0.2))
    rg = lambda a: np.sqrt(((a - a.mean(0)) ** 2).sum(1).mean())  # noqa: E731
    assert sc["rg_vs_native"] == pytest.approx(rg(pred) / rg(c.ca))
    with pytest.raises(ValueError, match="equal length"):
        S.score_prediction(pred[:-1], c.ca)


def test_ideal_helix_closed_form():
    h = S.ideal_helix(40)
    d = np.linalg.norm(np.diff(h, axis=0), axis=1)
    chord = 2 * 2.3 * np.sin(np.deg2rad(50.0))
    np.testing.assert_allclose(d, np.sqrt(chord ** 2 + 1.5 ** 2))  # 3.83 A virtual bonds
    np.testing.assert_allclose(h.mean(0), 0.0, atol=1e-12)
    hd = pm.handedness(h)
    assert hd["helical_right"] == 1.0 and hd["helical_left"] == 0.0  # right-handed, as alpha-helices are
    assert np.ptp(h[:, 2]) == pytest.approx(1.5 * 39)


def test_baseline_rows_are_at_the_no_information_level(natives):
    pool = dataset_chains("train")
    rows = {r["config"]: r for r in S.baseline_rows(natives, pool)}
    assert set(rows) == {S.UNRELATED, S.HELIX}
    for r in rows.values():
        assert r["n_chains"] == len(natives) and r["tm_score"] < 0.3
    assert rows[S.HELIX]["ca_ca_outlier_fraction"] == 0.0
    # no qualifying chain (nothing long enough): None, and the row counts only the chains it scored
    assert S.unrelated_chain(natives[0], [c for c in pool if len(c) < 10]) is None


def test_fold_sampler_af3_runs_the_stochastic_af3_sampler(monkeypatch):
    """``load_folder(fold_sampler="af3", steps=200)`` (the CLI's ``fold_sampler=af3 fold_steps=200``)
    runs af3_edm with AF3's churn (gamma0 = 0.8, eta = 1.5, lambda = 1.003, gamma_min = 1 A),
    not the ODE; ``fold_sampler=ode`` (the default) runs gamma0 = 0, eta = 1."""
    import workbench.api as api
    from domains.proteins.designability import load_folder

    torch.manual_seed(0)
    tiny = StructurePredictionDomain(net=TINY).build_backbone().eval()
    monkeypatch.setattr(StructurePredictionDomain, "teacher", lambda self: tiny)
    calls = []
    real = api.run_sampler

    def spy(*a, **kw):
        calls.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(api, "run_sampler", spy)
    af3 = load_folder("default", fold_sampler="af3", steps=200)
    assert af3.kind == "af3" and af3.steps == 200
    eff = af3.effective_options
    assert eff["gamma0"] == 0.8 and eff["step_scale_eta"] == 1.5 and eff["noise_scale_lambda"] == 1.003
    assert eff["gamma_min"] == pytest.approx(1 / 16) and "AF3 stochastic diffusion sampler" in af3.name and "200 steps" in af3.name
    out = af3.fold(["MKTAYIAKQRQISFVKSHFSRQ"])
    assert len(out[0]) == 22 and np.isfinite(out[0].ca).all()
    kw = calls[-1]
    assert kw["sampler"] == "af3_edm" and kw["steps"] == 200 and len(kw["timesteps"]) == 201
    assert "gamma0" not in kw and "step_scale_eta" not in kw  # the sampler's AF3 defaults apply
    assert kw["gamma_min"] == pytest.approx(1 / 16)
    # the default and fold_sampler=ode: the probability-flow ODE, labelled as such
    ode = load_folder("default")
    assert ode.kind == "ode" and ode.steps == 5 and ode.effective_options["gamma0"] == 0.0
    ode.fold(["MKTAYIAKQRQISFVKSHFSRQ"])
    assert calls[-1]["gamma0"] == 0.0 and calls[-1]["step_scale_eta"] == 1.0 and calls[-1]["steps"] == 5
    plain200 = load_folder("default", steps=200)  # the CLI's bare fold_steps=200: AF3's sampler
    assert plain200.kind == "af3" and plain200.effective_options["gamma0"] == 0.8
    ode200 = load_folder("default", fold_sampler="ode", steps=200)
    assert ode200.kind == "ode" and "probability-flow ODE" in ode200.name and "AF3 stochastic" not in ode200.name
    with pytest.raises(ValueError, match="valid: ode, af3"):
        load_folder("default", fold_sampler="sde")
    with pytest.raises(ValueError, match="folder='default' only"):
        load_folder("esmfold", fold_sampler="af3")
    with pytest.raises(ValueError, match="fold_steps applies to folder='default' only"):
        load_folder("esmfold", steps=5)


def test_designability_cli_fold_sampler_af3(monkeypatch, tmp_path, capsys):
    """``workbench designability ... fold_steps=200``: the report names AF3's sampler
    with its stochastic options, and the folds ran af3_edm at 200 steps with churn."""
    import json

    import workbench.api as api
    from domains.proteins.ideal import ideal_chain
    from domains.proteins.io import write_chain
    from workbench.cli import main

    torch.manual_seed(0)
    tiny = StructurePredictionDomain(net=TINY).build_backbone().eval()
    monkeypatch.setattr(StructurePredictionDomain, "teacher", lambda self: tiny)
    calls = []
    real = api.run_sampler
    monkeypatch.setattr(api, "run_sampler", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    inp = write_chain(ideal_chain("helix", 30, generator=torch.Generator().manual_seed(0)), tmp_path / "in" / "h.pdb")
    out = tmp_path / "out"
    assert main(["designability", str(inp), f"out={out}", "n_seq=1", "fold_steps=200",
                 "progress=false"]) == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert "AF3 stochastic diffusion sampler" in rep["folder"] and "gamma0=0.8" in rep["folder"] and "200 steps" in rep["folder"]
    assert calls and all(kw["steps"] == 200 and "gamma0" not in kw for kw in calls)
    assert main(["designability", str(inp), f"out={tmp_path / 'o2'}", "fold_sampler=sde"]) == 2
    assert "valid: ode, af3" in capsys.readouterr().err
