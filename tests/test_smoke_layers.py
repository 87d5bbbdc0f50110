"""First guard: a converted layer's weight gradient is sum_t g[t]^T a_hat[t]."""

import torch
from torch import nn

import bso_snn


def test_linear_weight_gradient_is_trace_based():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    bso_snn.binarize_layer(layer)
    layer.bso_lam = 0.5
    x = (torch.rand(4, 2, 5) > 0.5).float()
    trace, expected = torch.zeros(2, 5), torch.zeros(3, 5)
    for t in range(4):
        g = torch.randn(2, 3)
        layer(x[t]).backward(g)
        trace = 0.5 * trace + x[t]
        expected += g.T @ trace
    assert set(layer.weight.detach().unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(layer.weight.grad, expected)
