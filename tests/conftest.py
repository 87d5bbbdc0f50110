"""Shared test configuration."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run wherever CUDA exists and are skipped (and reported) elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
