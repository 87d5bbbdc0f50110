"""Online training: traces, neuron state cut between steps, reset, the per-step loop."""

from ..traces import accumulate_trace
from .reset import reset

__all__ = ["reset", "accumulate_trace"]
