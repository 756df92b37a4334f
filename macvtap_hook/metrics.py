"""The metrics file for node_exporter's textfile collector (opt-in:
`metrics_file` in config.toml; README, "Metrics").

Written atomically at the end of every converging run, under the run's
lock. There is no daemon to keep counters in memory, so the totals are
carried from the previous file: a lost file restarts them at zero, which
Prometheus treats as a counter reset. The text format (0.0.4) is written
here rather than with prometheus_client: it is a few lines, and
prometheus_client's counters would add `_created` samples that mean
nothing for totals spanning many processes.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from macvtap_hook.engine import Report
from macvtap_hook.protected import NIC_STATES, count_by_state, protected_nics
from macvtap_hook.state import atomic_write

log = logging.getLogger(__name__)

PREFIX = "macvtap_hook_"
# name (without prefix and _total) -> help; each counts over every run on this host
COUNTERS: dict[str, str] = {
    "runs": "Converging runs (udev, NetworkManager, systemd worker, reconcile) that held the lock",
    "parks": "NICs parked: live-detached because their uplink was gone (or to be repaired)",
    "reattaches": "Parked NICs re-attached and confirmed in the live XML",
    "forgets": "Parked records forgotten (domain stopped or restarted, NIC back by other means)",
    "starts": "Domains libvirt could not autostart for a missing interface, started once it existed",
    "failures": "Failures: re-attaches or starts that failed, NICs found stuck, runs that could not reach libvirt",
}
NICS_HELP = "NICs the tool protects, by state, at the end of the last run that reached libvirt"
WAITING = "domains_waiting_to_start"
WAITING_HELP = "Domains marked autostart that wait for an interface to start, after the last run that reached libvirt"
GAUGES: dict[str, str] = {
    "last_run_timestamp_seconds": "When the last run started (Unix time)",
    "last_run_duration_seconds": "How long the last run took, from taking the lock to its end",
    "last_run_success": "1 if the last run reached libvirt and finished, else 0",
}
_SAMPLE = re.compile(r'^(macvtap_hook_[a-z_]+)(?:\{state="([a-z]+)"\})? (\S+)$')


@dataclass
class RunTally:
    """What one run did, over all the rounds it drained."""

    started: float = field(default_factory=time.time)
    clock: float = field(default_factory=time.monotonic)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    nics: dict[str, int] | None = None
    waiting: int | None = None
    ok: bool = False

    def add(self, report: Report) -> None:
        self.counts["parks"] += report.parked
        self.counts["reattaches"] += report.attached
        self.counts["forgets"] += report.forgotten
        self.counts["starts"] += report.started
        self.counts["failures"] += report.failed + report.stuck
        if report.final is not None:
            self.nics = count_by_state(protected_nics(report.final))
            self.waiting = len(report.waiting_to_start)

    def write(self, path: Path | None) -> None:
        """Add this run to the file's totals; a failure here only warns."""
        if path is None:
            return
        self.counts["runs"] += 1
        if not self.ok:
            self.counts["failures"] += 1
        try:
            totals, nics = read(path)
            for name, value in self.counts.items():
                totals[name] = totals.get(name, 0) + value
            waiting = self.waiting if self.waiting is not None else int(totals.pop(WAITING, 0))
            text = render(
                totals, self.nics if self.nics is not None else nics, self.started, self.elapsed, self.ok, waiting
            )
            atomic_write(path, text.encode(), mode=0o644)
        except OSError as exc:
            log.warning("could not write the metrics file %s: %s", path, exc)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.clock


def read(path: Path) -> tuple[dict[str, float], dict[str, int]]:
    """The totals and NIC counts of a previous file (empty if none)."""
    totals: dict[str, float] = {}
    nics: dict[str, int] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return totals, nics
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, state, raw = m.groups()
        try:
            value = float(raw)
        except ValueError:
            continue
        base = name.removeprefix(PREFIX)
        if state and base == "nics":
            nics[state] = int(value)
        elif base.endswith("_total") and base.removesuffix("_total") in COUNTERS:
            totals[base.removesuffix("_total")] = value
        elif base == WAITING:
            totals[WAITING] = value  # a gauge, kept for a run that does not reach libvirt
    return totals, nics


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(
    totals: dict[str, float], nics: dict[str, int], started: float, elapsed: float, ok: bool, waiting: int = 0
) -> str:
    out = [f"# HELP {PREFIX}nics {NICS_HELP}", f"# TYPE {PREFIX}nics gauge"]
    counts = {**dict.fromkeys(NIC_STATES, 0), **nics}
    out += [f'{PREFIX}nics{{state="{state}"}} {n}' for state, n in counts.items()]
    out += [
        f"# HELP {PREFIX}{WAITING} {WAITING_HELP}",
        f"# TYPE {PREFIX}{WAITING} gauge",
        f"{PREFIX}{WAITING} {waiting}",
    ]
    for name, text in COUNTERS.items():
        full = f"{PREFIX}{name}_total"
        out += [f"# HELP {full} {text}", f"# TYPE {full} counter", f"{full} {_num(totals.get(name, 0))}"]
    values = {"last_run_timestamp_seconds": started, "last_run_duration_seconds": elapsed, "last_run_success": ok}
    for name, text in GAUGES.items():
        full = f"{PREFIX}{name}"
        out += [f"# HELP {full} {text}", f"# TYPE {full} gauge", f"{full} {_num(float(values[name]))}"]
    return "\n".join(out) + "\n"
