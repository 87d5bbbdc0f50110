"""Registry entries for torch's own layers."""

from torch import nn

from .layers import binarize_layer
from .registry import register_layer

for _cls in (nn.Linear, nn.Conv1d, nn.Conv2d):
    register_layer(_cls, binarize_layer)
