"""BSO and T-BSO optimizers for binary (±1) weights, and training the float rest alongside.

- :class:`BSO`, :class:`TBSO`: ``torch.optim.Optimizer`` classes (see ``docs/optimizers.md``).
- :func:`split_parameters`, :class:`HybridOptimizer`, :func:`make_optimizer`: binary and
  full-precision parameters in one optimizer object.
- :class:`ParamScheduler`: schedule ``gamma`` / ``betas`` (or ``lr``) like ``LambdaLR``.
- :mod:`bso_snn.optim.functional`: the update as pure functions (reference and multi-tensor).
"""

from .hybrid import HybridOptimizer, make_optimizer, split_parameters
from .optimizers import BSO, TBSO, FlipStat, named_flip_stats
from .schedule import ParamScheduler

__all__ = [
    "BSO",
    "TBSO",
    "FlipStat",
    "HybridOptimizer",
    "ParamScheduler",
    "make_optimizer",
    "named_flip_stats",
    "split_parameters",
]
