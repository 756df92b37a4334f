"""Log lines reach syslog, though the socket is opened only when one is logged."""

from __future__ import annotations

import logging
import socket

import pytest

from macvtap_hook import logsetup


def test_syslog_is_opened_at_the_first_line(syslog_sink: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(logsetup.LOG_ENV, "syslog")
    logsetup.setup_logging(0)
    (handler,) = logging.getLogger().handlers
    assert getattr(handler, "_real", "?") is None, "nothing opened before a line is logged"
    logging.getLogger("macvtap_hook.test").error("parking NIC %s", "52:54:00:00:00:01")
    assert b"macvtap-hook[" in syslog_sink.recv(4096)
