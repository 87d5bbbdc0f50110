"""Online training: traces, neuron state cut between steps, reset, the per-step loop."""

from ..traces import accumulate_trace
from .loop import StepResult, evaluate, set_step_mode, train_step
from .reset import reset
from .state import clear_membrane_history, detach_state, tag_output

__all__ = [
    "StepResult",
    "accumulate_trace",
    "clear_membrane_history",
    "detach_state",
    "evaluate",
    "reset",
    "set_step_mode",
    "tag_output",
    "train_step",
]
