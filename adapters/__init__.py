"""Ecosystem adapters, imported as ``bso_snn.adapters.spikingjelly`` / ``bso_snn.adapters.snntorch``.

``bso_snn.convert`` imports the right one when a model contains that library's modules: this
package declares them in the registry's adapter table (:func:`bso_snn.registry.register_adapter`),
which third-party adapters extend the same way. Importing this package imports neither library.
"""

from bso_snn.registry import register_adapter

register_adapter("spikingjelly", "bso_snn.adapters.spikingjelly")
register_adapter("snntorch", "bso_snn.adapters.snntorch")
