"""Shared test configuration."""

import sys

import pytest
import torch

from bso_snn import registry


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run wherever CUDA exists and are skipped (and reported) elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def restore_registry():
    """For tests that register throw-away classes: leave the global registry as it was."""
    tables = (
        registry._LAYERS,
        registry._NEURONS,
        registry._REFUSED,
        registry._REFUSED_NEURONS,
        registry._ADAPTERS,
    )
    saved = [dict(table) for table in tables]
    yield
    for table, old in zip(tables, saved, strict=True):
        table.clear()
        table.update(old)


@pytest.fixture
def one_thread():
    """One intra-op thread for small training tests: on a shared 2-core machine two threads were
    measured up to 25x slower (OpenMP waiting for a core). Restores the previous count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def isolate_snntorch_instances():
    """snnTorch keeps every neuron ever built in one process-wide list (``SpikingNeuron.instances``)
    and its ``utils.reset`` resets all of them; a neuron one test leaves behind (snnTorch's own
    ``DeltaLeaky`` has ``mem=None``) would break another test's ``utils.reset``. Each test sees
    only the neurons it builds, as a fresh process would."""
    snntorch = sys.modules.get("snntorch")
    before = list(snntorch.SpikingNeuron.instances) if snntorch is not None else []
    yield
    snntorch = sys.modules.get("snntorch")  # may have been imported by the test itself
    if snntorch is not None:
        snntorch.SpikingNeuron.instances[:] = before
