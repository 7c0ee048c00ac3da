import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# tests use tiny tensors: one intra-op thread avoids large overheads under CPU contention
torch.set_num_threads(1)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
