import pytest
import torch
from torch import nn

from workbench.checkpoint import CheckpointError, load_into, load_state, load_weights, save_state, save_weights


def test_weights_round_trip(tmp_path):
    m = nn.Linear(3, 2)
    save_weights(tmp_path / "m.safetensors", m, {"a": 1})
    m2 = nn.Linear(3, 2)
    meta = load_into(m2, tmp_path / "m.safetensors")
    assert meta == {"a": 1} and torch.equal(m.weight, m2.weight)


def test_missing_corrupt_and_mismatched(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_weights(bad)
    with pytest.raises(CheckpointError, match="unsupported checkpoint format"):
        (tmp_path / "x.pt").write_bytes(b"x")
        load_weights(tmp_path / "x.pt")
    save_weights(tmp_path / "m.safetensors", nn.Linear(3, 2))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_into(nn.Linear(4, 2), tmp_path / "m.safetensors")


def test_truncated_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_weights(path, nn.Linear(3, 2))
    before = path.read_bytes()
    import workbench.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        save_weights(path, nn.Linear(3, 2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"], "no temporary file may be left behind"


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_state_loading_is_weights_only(tmp_path):
    save_state(tmp_path / "ok.pt", {"step": 3, "w": torch.ones(2)})
    assert load_state(tmp_path / "ok.pt")["step"] == 3
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="unsafe"):
        load_state(tmp_path / "evil.pt")
