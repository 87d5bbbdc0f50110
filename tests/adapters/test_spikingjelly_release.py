"""The adapter tells the SpikingJelly releases apart, and CI runs against the release it expects."""

import os

import pytest
import spikingjelly  # noqa: F401
from bso_snn.adapters import spikingjelly as sja


@pytest.mark.skipif(
    "BSO_SNN_EXPECT_SPIKINGJELLY" not in os.environ,
    reason="BSO_SNN_EXPECT_SPIKINGJELLY is not set (scripts/test.sh sets it for each run)",
)
def test_imported_release_is_the_expected_one():
    assert sja.RELEASE == os.environ["BSO_SNN_EXPECT_SPIKINGJELLY"]


def test_api_generation_matches_the_version_string():
    # CLASSIC is detected from the API (functional.set_backend), RELEASE from the metadata.
    assert sja.RELEASE in ("0.0.0.0.14", "2.0.0"), f"untested SpikingJelly release {sja.RELEASE}"
    assert sja.CLASSIC == sja.RELEASE.startswith("0.0.0.0.")


def test_convert_loads_the_adapter_for_spikingjelly_models():
    from spikingjelly.activation_based import layer, neuron
    from torch import nn

    import bso_snn
    from bso_snn import registry

    net = nn.Sequential(
        nn.Linear(3, 4), neuron.LIFNode(), layer.Linear(4, 4), neuron.LIFNode(), nn.Linear(4, 2)
    )
    report = bso_snn.convert(net)
    assert report.converted == ["2"] and report.online_neurons == ["1", "3"] and report.lam == 0.5
    assert {layer.Linear, layer.Conv1d, layer.Conv2d} <= set(registry.registered_layer_types())
