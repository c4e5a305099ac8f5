"""Shared test settings: small CPU work, deterministic, quiet."""

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def data_root():
    """The shared datasets folder, or None (tests that need it skip with a reason)."""
    root = os.environ.get("FREEZELAB_DATA")
    return root if root and os.path.isdir(root) else None
