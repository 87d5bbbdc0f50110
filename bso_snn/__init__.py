"""bso-snn: binary-weight spiking neural networks trained online with BSO / T-BSO."""

from . import _torch_layers  # noqa: F401  (registers nn.Linear / Conv1d / Conv2d)
from .convert import ConversionReport, convert
from .layers import binarize_layer, binary_parameters, is_binary_layer
from .online import reset
from .registry import NeuronSupport, refuse_layer, register_layer, register_neuron
from .sign import sign

__version__ = "0.1.0"

__all__ = [
    "ConversionReport",
    "NeuronSupport",
    "binarize_layer",
    "binary_parameters",
    "convert",
    "is_binary_layer",
    "refuse_layer",
    "register_layer",
    "register_neuron",
    "reset",
    "sign",
]
