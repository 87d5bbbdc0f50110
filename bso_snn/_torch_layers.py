"""Registry entries for torch's own layers.

``nn.ConvTranspose*d``, ``nn.Embedding``, ``nn.Bilinear`` and other weight layers have no handler:
``bso_snn.convert`` leaves them float and says so in its report."""

from torch import nn

from .layers import binarize_layer
from .registry import register_layer

for _cls in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_layer(_cls, binarize_layer)
