"""Online training: traces, neuron state cut between steps, reset, the per-step loop."""

from .reset import reset
from ..traces import accumulate_trace

__all__ = ["reset", "accumulate_trace"]
