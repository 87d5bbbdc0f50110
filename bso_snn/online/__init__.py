"""Online training: traces, neuron state cut between steps, reset, the per-step loop."""

from ..traces import accumulate_trace, link_presynaptic
from .loop import StepResult, evaluate, set_step_mode, train_step
from .reset import reset
from .state import (
    OnlineNeuron,
    clear_published,
    detach_state,
    is_online,
    make_online,
    ndot_p,
    publish_step,
    records_ndot,
)

__all__ = [
    "OnlineNeuron",
    "StepResult",
    "accumulate_trace",
    "clear_published",
    "detach_state",
    "evaluate",
    "is_online",
    "link_presynaptic",
    "make_online",
    "ndot_p",
    "publish_step",
    "records_ndot",
    "reset",
    "set_step_mode",
    "train_step",
]
