"""Shared protein layers: AdaLN against its closed form, and loading of the parameter names
checkpoints used before the two protein domains shared it."""
import torch

from domains.proteins.layers import AdaLN


def test_adaln_closed_form_and_old_parameter_names():
    torch.manual_seed(0)
    layer = AdaLN(6, 4)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p))
    h, c = torch.randn(2, 5, 6), torch.randn(2, 5, 4)
    ln = torch.nn.functional.layer_norm
    cn = ln(c, (4,)) * layer.cnorm.weight
    want = ln(h, (6,)) * torch.sigmoid(cn @ layer.scale.weight.T + layer.scale.bias) + cn @ layer.shift.weight.T
    assert torch.allclose(layer(h, c), want, atol=1e-6)

    # a state dict with the structure_prediction domain's earlier name (norm_s), nested in a parent
    parent = torch.nn.Sequential(torch.nn.Identity(), layer)
    old = {k.replace("cnorm.", "norm_s."): v for k, v in parent.state_dict().items()}
    assert "1.norm_s.weight" in old and "1.cnorm.weight" not in old
    fresh = torch.nn.Sequential(torch.nn.Identity(), AdaLN(6, 4))
    missing, unexpected = fresh.load_state_dict(old, strict=True)
    assert not missing and not unexpected
    assert torch.equal(fresh[1](h, c), layer(h, c))
