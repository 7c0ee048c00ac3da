"""BOSS search in chunks: a dict-valued ``cond`` is sliced per sub-batch (every tensor value
along dim 0, nested containers too), so the chunked search equals the one-chunk search."""
from __future__ import annotations

import torch

from workbench.processes import VPLinear
from workbench.search.boss import _cat_rows, _rows, boss_search


def _model(x, t, cond=None):
    # per-sample conditioning: each row of cond["shift"] belongs to the same row of x
    assert cond["shift"].shape[0] == x.shape[0] and cond["nested"][0].shape[0] == x.shape[0]
    return torch.tanh(x) * cond["scale"] + cond["shift"] + 0.1 * cond["nested"][0]


def test_chunked_search_slices_dict_cond():
    proc = VPLinear()
    g = torch.Generator().manual_seed(0)
    n = 8
    x_T = torch.randn(n, 2, generator=g, dtype=torch.float64)
    cond = {"shift": torch.randn(n, 2, generator=g, dtype=torch.float64), "scale": 0.5,
            "nested": [torch.randn(n, 1, generator=g, dtype=torch.float64)], "table": torch.ones(3)}
    kw = dict(prediction="x0", fine_steps=10)
    whole = boss_search(_model, proc, x_T, cond=cond, batch_size=n, **kw)
    chunked = boss_search(_model, proc, x_T, cond=cond, batch_size=3, **kw)
    finite = torch.isfinite(whole.cost)
    torch.testing.assert_close(chunked.cost[finite], whole.cost[finite], rtol=1e-10, atol=1e-14)


def test_rows_and_cat_rows_round_trip():
    n = 5
    c = {"a": torch.arange(n * 2).reshape(n, 2), "b": (torch.arange(n), "label"), "c": torch.zeros(4), "d": 3}
    parts = [_rows(c, 0, 2, n), _rows(c, 2, 5, n)]
    assert parts[0]["a"].shape == (2, 2) and parts[1]["b"][0].tolist() == [2, 3, 4] and parts[1]["b"][1] == "label"
    assert parts[0]["c"].shape == (4,) and parts[1]["d"] == 3  # no batch dimension: unchanged
    back = _cat_rows(parts, [2, 3])
    assert torch.equal(back["a"], c["a"]) and torch.equal(back["b"][0], c["b"][0]) and torch.equal(back["c"], c["c"])
