"""Log lines reach syslog, though the socket is opened only when one is logged."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from macvtap_hook import logsetup


def test_syslog_is_opened_at_the_first_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log"
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(path))
    sink.settimeout(5)
    monkeypatch.setattr(logsetup, "SYSLOG_SOCKET", str(path))
    monkeypatch.setenv(logsetup.LOG_ENV, "syslog")
    try:
        logsetup.setup_logging(0)
        (handler,) = logging.getLogger().handlers
        assert getattr(handler, "_real", "?") is None, "nothing opened before a line is logged"
        logging.getLogger("macvtap_hook.test").error("parking NIC %s", "52:54:00:00:00:01")
        assert b"macvtap-hook[" in sink.recv(4096)
    finally:
        for h in logging.getLogger().handlers:
            h.close()
        logging.getLogger().handlers.clear()
        sink.close()
