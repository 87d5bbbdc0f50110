"""Ecosystem adapters, imported as ``bso_snn.adapters.spikingjelly`` / ``bso_snn.adapters.snntorch``.

``bso_snn.convert`` imports the right one when a model contains that library's modules.
"""
