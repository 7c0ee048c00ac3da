"""The two equivariant backbones of the ``molecules`` domain (domains/molecules/nets.py): exact
E(3) equivariance in float64 (rotations, a reflection, translations), permutation equivariance,
padding invariance, centred coordinate output, the graph helpers against brute force, EDM's
EGNN recomputed densely from the same parameters, gradients and the registry's errors."""
import itertools

import pytest
import torch

pytest.importorskip("torch_geometric", reason="the molecules backbones need torch-geometric (pip install torch-geometric)")
pytest.importorskip("e3nn", reason="the molecules backbones need e3nn (pip install e3nn)")

from domains.molecules import nets as M  # noqa: E402

F = 6  # 5 one-hot atom types + 1 charge channel: states [B, N, 9]
TINY = {
    "egnn": {"hidden": 16, "n_layers": 2},
    "e3nn": {"hidden_irreps": "8x0e + 4x1o", "n_layers": 2, "n_basis": 8, "radial_hidden": 16},
}
CASES = [(name, graph) for name in ("egnn", "e3nn") for graph in ("full", "radius")]


@pytest.fixture(autouse=True)
def float64():
    """Float64 throughout: e3nn computes its constants (Clebsch-Gordan, spherical harmonics) in
    the default dtype at construction, so exact equivariance needs the nets built in float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _net(name, seed=0, **kw):
    torch.manual_seed(seed)
    return M.build_backbone(name, **{**TINY[name], **kw})


def _batch(seed=0, B=3, N=7, sizes=(7, 5, 3)):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, N)
    for b, n in enumerate(sizes):
        mask[b, :n] = 1
    x = torch.randn(B, N, 3 + F, generator=g) * 1.5
    x[..., :3] = M.remove_mean(x[..., :3], mask)
    x[..., 3:] *= mask[..., None]
    t = torch.rand(B, generator=g)
    return x, t, mask


def _orthogonal(seed, reflect):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return -q if reflect else q  # det -1: a rotation times the inversion


def _close(a, b, rel=1e-9):
    a, b = a.detach(), b.detach()
    scale = max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= rel * scale, float((a - b).abs().max())


@pytest.mark.parametrize("name,graph", CASES)
@pytest.mark.parametrize("prediction", ["epsilon", "x0"])
def test_e3_equivariance_and_translation_invariance(name, graph, prediction):
    net = _net(name, graph=graph, radius=3.0, prediction=prediction)
    x, t, mask = _batch()
    out = net(x, t, mask=mask)
    assert out.shape == x.shape and out.dtype == torch.float64
    for k, reflect in enumerate((False, True)):
        Q = _orthogonal(k, reflect)
        shift = torch.tensor([0.7, -2.0, 5.0])
        xr = x.clone()
        xr[..., :3] = (x[..., :3] @ Q.T + shift) * mask[..., None]
        got = net(xr, t, mask=mask)
        _close(got[..., :3], out[..., :3] @ Q.T)  # coordinates rotate (and reflect) ...
        _close(got[..., 3:], out[..., 3:])  # ... features are invariant
    xs = x.clone()
    xs[..., :3] = (x[..., :3] + torch.tensor([3.0, 1.0, -4.0])) * mask[..., None]
    _close(net(xs, t, mask=mask), out)  # translation leaves everything unchanged


@pytest.mark.parametrize("name,graph", CASES)
def test_permutation_equivariance(name, graph):
    net = _net(name, graph=graph, radius=3.0)
    x, t, mask = _batch(1)
    out = net(x, t, mask=mask)
    g = torch.Generator().manual_seed(5)
    perm = torch.stack([torch.randperm(x.shape[1], generator=g) for _ in range(x.shape[0])])  # padding slots move too
    take = lambda a: torch.gather(a, 1, perm.reshape(*perm.shape, *([1] * (a.ndim - 2))).expand(*perm.shape, *a.shape[2:]))
    _close(net(take(x), t, mask=take(mask)), take(out))


@pytest.mark.parametrize("name,graph", CASES)
def test_padding_changes_nothing_and_is_zero(name, graph):
    net = _net(name, graph=graph, radius=3.0)
    x, t, mask = _batch(2)
    out = net(x, t, mask=mask)
    assert torch.equal(out[mask == 0], torch.zeros_like(out[mask == 0]))
    # four more padded atoms holding garbage (the padding of the input is never read)
    g = torch.Generator().manual_seed(3)
    xp = torch.cat([x, 50 * torch.randn(x.shape[0], 4, x.shape[2], generator=g)], 1)
    xp[:, : x.shape[1]][mask == 0] = 7.0
    mp = torch.cat([mask, torch.zeros(mask.shape[0], 4)], 1)
    got = net(xp, t, mask=mp)
    assert torch.equal(got[mp == 0], torch.zeros_like(got[mp == 0]))
    _close(got[:, : x.shape[1]][mask == 1], out[mask == 1], rel=1e-12)
    # one molecule alone gives what it gives inside the batch
    _close(net(x[1:2, :5], t[1:2], mask=mask[1:2, :5]), out[1:2, :5], rel=1e-12)
    # mask=None means all atoms real
    full = torch.ones_like(mask)
    _close(net(x, t), net(x, t, mask=full), rel=0)


@pytest.mark.parametrize("name", ["egnn", "e3nn"])
def test_coordinate_output_centred_and_x0_is_positions_plus_displacement(name):
    x, t, mask = _batch(4)
    x[..., :3] += torch.tensor([1.0, 2.0, 3.0]) * mask[..., None]  # off-centre input
    eps = _net(name, prediction="epsilon")
    x0 = _net(name, prediction="x0")
    assert (eps.prediction, x0.prediction) == ("epsilon", "x0")
    for net in (eps, x0):
        out = net(x, t, mask=mask)
        com = (out[..., :3] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        assert float(com.detach().abs().max()) < 1e-12
    # same weights (same seed): x0 coordinates = centred x_t + the epsilon net's displacement
    d = x0(x, t, mask=mask)[..., :3] - eps(x, t, mask=mask)[..., :3]
    _close(d, M.remove_mean(x[..., :3], mask), rel=1e-12)


def test_time_enters_and_time_embedding_option():
    for name in ("egnn", "e3nn"):
        net = _net(name, time_embedding=8)
        x, t, mask = _batch(6)
        a, b = net(x, t, mask=mask), net(x, 1 - t, mask=mask)
        assert float((a - b).detach().abs().max()) > 1e-6
        _close(net(x, torch.tensor(0.3), mask=mask), net(x, torch.full((3,), 0.3), mask=mask), rel=0)


def test_fully_connected_graph_has_no_self_loops_no_padding_no_cross_edges():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    src, dst = M.fully_connected_graph(mask)
    N = mask.shape[1]
    assert not bool((src == dst).any())
    assert torch.equal(src // N, dst // N)
    flat = mask.reshape(-1).bool()
    assert bool(flat[src].all() and flat[dst].all())
    got = set(zip(src.tolist(), dst.tolist()))
    want = {(b * N + j, b * N + i) for b in range(4) for i in range(N) for j in range(N)
            if i != j and mask[b, i] and mask[b, j]}
    assert got == want and len(got) == len(src) == 3 * 2 + 2 * 1 + 4 * 3


def test_radius_graph_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(3, 6, 3, generator=g) * 1.5
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    r = 1.8
    src, dst = M.radius_graph(pos, r, mask)
    want = set()
    for b, i, j in itertools.product(range(3), range(6), range(6)):
        if i != j and mask[b, i] and mask[b, j] and float(torch.linalg.norm(pos[b, i] - pos[b, j])) <= r:
            want.add((b * 6 + j, b * 6 + i))
    got = set(zip(src.tolist(), dst.tolist()))
    assert got == want and len(got) == len(src) and 0 < len(want) < 6 * 5 + 4 * 3 + 2
    # flat layout (torch-geometric's pos [M, 3] + batch [M]) gives the same pairs
    keep = mask.reshape(-1).bool()
    flat_index = torch.cumsum(keep.long(), 0) - 1
    batch = torch.arange(3).repeat_interleave(6)[keep]
    fs, fd = M.radius_graph(pos.reshape(-1, 3)[keep], r, batch=batch)
    assert set(zip(fs.tolist(), fd.tolist())) == {(int(flat_index[j]), int(flat_index[i])) for j, i in want}
    # a radius beyond every distance gives the fully connected graph
    assert set(zip(*M.radius_graph(pos, 100.0, mask).tolist())) == set(zip(*M.fully_connected_graph(mask).tolist()))


def _edm_dense_reference(net, x, t, mask):
    """EDM's EGNN_dynamics_QM9 forward written densely over [B, N, N] pairs (pair mask without
    the diagonal, as EDM's edge_mask) from the parameters of ``net``: an independent check of
    the message passing, the split first layers and the read-out."""
    cfg = net.cfg
    m = mask[..., None]
    pm = (mask[:, :, None] * mask[:, None, :] * (1 - torch.eye(mask.shape[1])))[..., None]
    pos = x[..., :3] * m
    h = net.embedding(torch.cat([x[..., 3:] * m, t[:, None, None].expand(*mask.shape, 1)], -1)) * m

    def geometry(p):
        diff = p[:, :, None, :] - p[:, None, :, :]  # [B, i, j, 3]: x_i - x_j
        d2 = (diff ** 2).sum(-1, keepdim=True)
        return d2, diff / (torch.sqrt(d2 + 1e-8) + cfg.norm_constant)

    d2_in, _ = geometry(pos)
    xc = pos
    for blk in net.blocks:
        d2, diff = geometry(xc)
        e = torch.cat([d2, d2_in], -1)
        pair = lambda hh: torch.cat([hh[:, :, None, :].expand(-1, -1, hh.shape[1], -1),
                                     hh[:, None, :, :].expand(-1, hh.shape[1], -1, -1), e], -1)
        for gcl in blk.gcl:
            mij = gcl.edge_mlp(pair(h))
            mij = mij * torch.sigmoid(gcl.att(mij))
            agg = (mij * pm).sum(2) / cfg.normalization_factor
            h = (h + gcl.node_mlp(torch.cat([h, agg], -1))) * m
        c = torch.tanh(blk.update.coord_mlp(pair(h))) * cfg.coords_range
        xc = (xc + (diff * c * pm).sum(2) / cfg.normalization_factor) * m
    vel = M.remove_mean(xc - pos, mask)
    return torch.cat([vel, net.embedding_out(h) * m], -1)


def test_egnn_equals_dense_edm_recomputation():
    net = _net("egnn", hidden=16, n_layers=3, inv_sublayers=2)
    # larger coordinate-update weights than EDM's near-zero init, so the positions really move
    for blk in net.blocks:
        torch.nn.init.normal_(blk.update.coord_mlp[-1].weight, std=0.5)
    x, t, mask = _batch(7)
    out = net(x, t, mask=mask)
    assert float(out[..., :3].detach().abs().max()) > 1e-2
    _close(out, _edm_dense_reference(net, x, t, mask), rel=1e-12)


@pytest.mark.parametrize("name", ["egnn", "e3nn"])
def test_gradients_reach_every_parameter(name):
    net = _net(name)
    x, t, mask = _batch(8)
    net(x, t, mask=mask).square().sum().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, pname


def test_defaults_build_and_run_on_a_qm9_sized_batch():
    x, t, mask = _batch(9, B=2, N=29, sizes=(29, 18))
    for name in ("egnn", "e3nn"):
        torch.manual_seed(0)
        net = M.build_backbone(name)
        assert net.cfg.in_features == F and net.prediction == "epsilon" and net.cfg.graph == "full"
        out = net(x, t, mask=mask)
        assert out.shape == x.shape and bool(torch.isfinite(out).all())


def test_errors_are_one_line_and_name_the_choices():
    with pytest.raises(ValueError) as e:
        M.build_backbone("schnet")
    msg = str(e.value)
    assert "\n" not in msg and "'schnet'" in msg and "egnn, e3nn" in msg
    for name, kw, words in [("egnn", {"hiden": 8}, "hidden"), ("egnn", {"prediction": "v"}, "x0, epsilon"),
                            ("e3nn", {"graph": "knn"}, "full, radius"), ("e3nn", {"hidden_irreps": "8x0e"}, "1o")]:
        with pytest.raises(ValueError, match=words) as e:
            M.build_backbone(name, **kw)
        assert "\n" not in str(e.value)
    net = _net("egnn")
    x, t, mask = _batch()
    with pytest.raises(ValueError, match=r"\[B, N, 3 \+ 6\]"):
        net(x[..., :8], t, mask=mask)
    with pytest.raises(ValueError, match="mask shape"):
        net(x, t, mask=mask[:, :3])
