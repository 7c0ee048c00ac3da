import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
