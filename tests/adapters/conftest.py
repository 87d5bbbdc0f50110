"""Fixtures for the adapter tests. SpikingJelly is imported only inside the fixtures that need it."""

from __future__ import annotations

import logging

import pytest


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@pytest.fixture
def sj_warnings():
    """A list that collects every warning SpikingJelly logs during the test.

    SpikingJelly 0.0.0.0.14 warns through the standard ``logging`` root logger; 2.0.0 through
    loguru, which it disables by default, so it is enabled here for the duration of the test.
    """
    from bso_snn.adapters.spikingjelly import CLASSIC

    messages: list[str] = []
    if CLASSIC:
        handler = _ListHandler(messages)
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            yield messages
        finally:
            root.removeHandler(handler)
    else:
        from spikingjelly.logger import logger

        logger.enable("spikingjelly")
        sink = logger.add(lambda message: messages.append(str(message)), level="WARNING")
        try:
            yield messages
        finally:
            logger.remove(sink)
            logger.disable("spikingjelly")
