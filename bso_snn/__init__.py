"""bso-snn: binary-weight spiking neural networks trained online with BSO / T-BSO.

The usual path: ``bso_snn.convert(model)`` (±1 weights, online traces, online neurons), an
optimizer from :mod:`bso_snn.optim` (``TBSO``/``BSO`` for the binary weights, any torch
optimizer for the float rest), and a per-time-step loop (``bso_snn.train_step`` or your own)
with ``bso_snn.reset(model, optimizer)`` before each sequence. :mod:`bso_snn.bayes` carries the
second method, Bayesian binary/spiking networks (Walker et al., IW-ST estimators).
"""

from . import (
    _torch_layers,  # noqa: F401  (registers nn.Linear / Conv1d / Conv2d / Conv3d)
    adapters,  # noqa: F401  (declares the SpikingJelly and snnTorch adapters; imports neither library)
    bayes,
    neurons,
    online,
    optim,
)
from .checkpoint import load_packed, packed_size, save_packed
from .convert import ConversionReport, convert
from .export import export_nir
from .layers import binarize_layer, binary_parameters, is_binary_layer
from .neurons import LIF
from .online import StepResult, evaluate, reset, train_step
from .optim import BSO, TBSO, HybridOptimizer, ParamScheduler, make_optimizer, split_parameters
from .registry import NeuronSupport, refuse_layer, refuse_neuron, register_layer, register_neuron
from .sign import sign
from .summary import LayerRow, ModelSummary, summary

__version__ = "0.1.0"

__all__ = [
    "BSO",
    "LIF",
    "TBSO",
    "ConversionReport",
    "HybridOptimizer",
    "LayerRow",
    "ModelSummary",
    "NeuronSupport",
    "ParamScheduler",
    "StepResult",
    "bayes",
    "binarize_layer",
    "binary_parameters",
    "convert",
    "evaluate",
    "export_nir",
    "is_binary_layer",
    "load_packed",
    "make_optimizer",
    "neurons",
    "online",
    "optim",
    "packed_size",
    "refuse_layer",
    "refuse_neuron",
    "register_layer",
    "register_neuron",
    "reset",
    "save_packed",
    "sign",
    "split_parameters",
    "summary",
    "train_step",
]
