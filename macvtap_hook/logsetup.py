"""Where log lines go: stderr on a terminal, else the journal (with the
structured fields of macvtap_hook.messages, through python-systemd when it
is installed) or syslog (/dev/log, which the journal also reads), else
stderr; plus an optional file from the configuration."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

LOG_ENV = "MACVTAP_HOOK_LOG"  # "stderr", "syslog" or "journal": force a target
SYSLOG_SOCKET = "/dev/log"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "macvtap-hook"


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
        if sys.stderr.isatty() or not os.path.exists(SYSLOG_SOCKET):
            target = "stderr"
        else:
            target = "journal" if os.path.exists(JOURNAL_SOCKET) else "syslog"
    handler: logging.Handler
    if target == "journal" or (target == "syslog" and os.path.exists(SYSLOG_SOCKET)):
        handler = _DeferredSystemLog(journal=target == "journal")
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


class _DeferredSystemLog(logging.Handler):
    """Picks and opens the system log at the first line logged: most udev
    events log nothing, and importing systemd.journal or logging.handlers
    with its socket costs as much as the rest of the cheap path.

    The journal (python-systemd's JournalHandler, which sends each
    record's upper-case attributes as fields) when journald runs and the
    module is installed; plain syslog otherwise.
    """

    def __init__(self, journal: bool) -> None:
        super().__init__()
        self._journal = journal
        self._real: logging.Handler | None = None

    def _open(self) -> logging.Handler:
        if self._journal:
            try:
                from systemd.journal import JournalHandler  # python3-systemd: optional
            except ImportError:
                pass
            else:
                handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=IDENTIFIER)
                return handler
        from logging.handlers import SysLogHandler

        handler = SysLogHandler(address=SYSLOG_SOCKET)
        handler.setFormatter(logging.Formatter(f"{IDENTIFIER}[{os.getpid()}]: %(message)s"))
        return handler

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._real is None:
                self._real = self._open()
            self._real.handle(record)
        except Exception:  # no socket (journald restarting): never a traceback to udev
            self.handleError(record)

    def close(self) -> None:
        if self._real is not None:
            self._real.close()
        super().close()
