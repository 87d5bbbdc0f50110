"""Which SpikingJelly release is installed: the only place that tells 0.0.0.0.14 from 2.0.0.

The generation is detected from the API, not the version string: the classic releases
(0.0.0.0.x) have ``functional.set_backend`` and a ``backend=`` argument on neurons (CuPy
kernels); 2.0.0 removed both and picks backends automatically.
"""

from __future__ import annotations

import importlib.metadata

from spikingjelly.activation_based import functional


def _installed_version() -> str:
    try:
        return importlib.metadata.version("spikingjelly")
    except importlib.metadata.PackageNotFoundError:  # e.g. a source checkout on sys.path
        return "unknown"


RELEASE: str = _installed_version()
"""The installed distribution's version string, e.g. ``'0.0.0.0.14'`` or ``'2.0.0'``."""

CLASSIC: bool = hasattr(functional, "set_backend")
"""True for the classic API (0.0.0.0.14: ``backend='torch'|'cupy'``), False for 2.0.0."""
