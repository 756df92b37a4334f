"""Fixtures shared by the unit tests."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from macvtap_hook import logsetup


@pytest.fixture
def clean_root_logging() -> Iterator[None]:
    """The handlers logsetup installs on the root logger are closed and removed afterwards."""
    try:
        yield
    finally:
        for h in logging.getLogger().handlers:
            h.close()
        logging.getLogger().handlers.clear()


@pytest.fixture
def syslog_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_root_logging: None) -> Iterator[socket.socket]:
    """A datagram socket standing in for /dev/log."""
    path = tmp_path / "log"
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(path))
    sink.settimeout(5)
    monkeypatch.setattr(logsetup, "SYSLOG_SOCKET", str(path))
    with sink:
        yield sink
