"""stream/cli.py's logging: kafka-python's close-time noise is dropped, real failures are not."""

from __future__ import annotations

import logging

from kafka.errors import Cancelled, KafkaConnectionError

from stream.cli import drop_cancelled_refresh, drop_receive_after_close


def record(exc: Exception) -> logging.LogRecord:
    return logging.LogRecord("kafka.cluster", logging.ERROR, "cluster.py", 175,
                             "Metadata refresh: failed %s", (exc,), None)  # fmt: skip


def test_a_refresh_cancelled_by_a_closing_client_is_dropped_other_failures_show(caplog):
    assert not drop_cancelled_refresh(record(Cancelled()))
    assert drop_cancelled_refresh(record(KafkaConnectionError("broker down")))
    logger = logging.getLogger("kafka.cluster.test")
    logger.addFilter(drop_cancelled_refresh)
    try:
        with caplog.at_level(logging.ERROR, logger=logger.name):
            logger.error("Metadata refresh: failed %s", Cancelled())
            logger.error("Metadata refresh: failed %s", KafkaConnectionError("broker down"))
    finally:
        logger.removeFilter(drop_cancelled_refresh)
    assert [r.getMessage() for r in caplog.records] == [
        "Metadata refresh: failed KafkaConnectionError: broker down"
    ]


class _Transport:
    def __init__(self, closed: bool) -> None:
        self.closed = closed

    def is_closing(self) -> bool:
        return self.closed


def test_a_receive_error_after_our_close_is_dropped_on_an_open_transport_it_shows() -> None:
    def rec(closed: bool) -> logging.LogRecord:
        return logging.LogRecord("kafka.net.transport", logging.ERROR, "transport.py", 125,
                                 "%s: Error receiving network data closing socket",
                                 (_Transport(closed),), None)  # fmt: skip

    assert not drop_receive_after_close(rec(True))
    assert drop_receive_after_close(rec(False))
