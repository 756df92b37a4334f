"""Where log lines go: stderr on a terminal, else syslog (the journal reads
/dev/log), else stderr, plus an optional file from the configuration."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

LOG_ENV = "MACVTAP_HOOK_LOG"  # "stderr" or "syslog": force a target
SYSLOG_SOCKET = "/dev/log"


def setup_logging(verbosity: int, log_file: Path | None = None) -> None:
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG if verbosity > 0 else logging.ERROR)
    # A log socket that fails (journald restarting) must not print a
    # traceback on udev's or NetworkManager's stderr.
    logging.raiseExceptions = False
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    target = os.environ.get(LOG_ENV)
    if target is None:
        target = "stderr" if sys.stderr.isatty() or not os.path.exists(SYSLOG_SOCKET) else "syslog"
    handler: logging.Handler
    if target == "syslog" and os.path.exists(SYSLOG_SOCKET):
        handler = _DeferredSyslog()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("macvtap-hook: %(message)s"))
    root.addHandler(handler)
    if log_file is not None:
        try:
            fh = logging.FileHandler(log_file)
        except OSError as exc:
            logging.getLogger(__name__).warning("cannot open log file %s: %s", log_file, exc)
        else:
            fh.setFormatter(logging.Formatter(f"%(asctime)s macvtap-hook[{os.getpid()}]: %(levelname)s %(message)s"))
            root.addHandler(fh)


class _DeferredSyslog(logging.Handler):
    """Opens the syslog socket at the first line logged: most udev events
    log nothing, and logging.handlers with its socket costs as much as the
    rest of the cheap path."""

    def __init__(self) -> None:
        super().__init__()
        self._real: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._real is None:
            from logging.handlers import SysLogHandler

            self._real = SysLogHandler(address=SYSLOG_SOCKET)
            self._real.setFormatter(logging.Formatter(f"macvtap-hook[{os.getpid()}]: %(message)s"))
        self._real.handle(record)

    def close(self) -> None:
        if self._real is not None:
            self._real.close()
        super().close()
