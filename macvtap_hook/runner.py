"""One converging run: the hint, the lock, the drain loop."""

from __future__ import annotations

import logging
import time

from macvtap_hook import lock
from macvtap_hook.config import Config
from macvtap_hook.engine import Engine, Report
from macvtap_hook.errors import HypervisorUnavailable
from macvtap_hook.hints import Hint, HintQueue
from macvtap_hook.hypervisor import Hypervisor
from macvtap_hook.state import StateStore

log = logging.getLogger(__name__)

MAX_DRAINS = 20  # bounds a run during an endless storm; later events go on


class Connections:
    """libvirt connections opened on first use and kept for the whole run,
    so draining several hints does not reconnect each time."""

    def __init__(self, uris: tuple[str, ...]) -> None:
        self.uris = uris
        self.opened: tuple[list[Hypervisor], list[HypervisorUnavailable]] | None = None

    def get(self) -> tuple[list[Hypervisor], list[HypervisorUnavailable]]:
        if self.opened is None:
            from macvtap_hook.hypervisor import connect_all

            self.opened = connect_all(self.uris)
        return self.opened

    def close(self) -> None:
        for hv in self.opened[0] if self.opened else []:
            hv.close()
        self.opened = None


def converge_once(
    cfg: Config, conns: Connections, *, retry_stuck: bool = False, only: frozenset[str] | None = None
) -> Report:
    from macvtap_hook.links import NetlinkLinks

    hypervisors, failures = conns.get()
    if not hypervisors:
        conns.close()  # retried by the next run, not by this one
        raise failures[0]
    engine = Engine(
        hypervisors,
        NetlinkLinks(),
        StateStore(cfg.state_file),
        configured=cfg.uris,
        detach_timeout=cfg.detach_timeout,
    )
    report = engine.converge(retry_stuck=retry_stuck, only=only)
    for exc in failures:
        log.error("%s", exc)
        report.unreachable.append(exc.fields["uri"])
    return report


def run(
    cfg: Config,
    hint: Hint | None,
    *,
    retry_stuck: bool = False,
    only: frozenset[str] | None = None,
    drain_only: bool = False,
    budget: float | None = None,
) -> Report | None:
    """Converge under the lock until no hint is pending.

    Returns None when another run already did the work: `hint` was consumed
    meanwhile, or (`drain_only`, the systemd worker) no hint is pending.
    After `budget` seconds no further round starts (udev's event timeout);
    what is left stays queued. Raises LockTimeout or HypervisorUnavailable
    with the hints kept.
    """
    queue = HintQueue(cfg.hints_dir)
    mine = queue.put(hint) if hint is not None else None
    started = time.monotonic()
    with lock.held(cfg.lock_file, cfg.lock_timeout):
        if (mine is not None and not mine.exists()) or (drain_only and not queue.pending()):
            log.debug("%s: already handled by another run", hint.describe() if hint else "pending events")
            return None
        conns = Connections(cfg.uris)
        report: Report | None = None
        try:
            for _ in range(MAX_DRAINS):
                if report is not None and budget is not None and time.monotonic() - started > budget:
                    log.warning("%d event(s) left for the next run: this one ran out of time", len(queue.pending()))
                    break
                pending = queue.pending()
                if log.isEnabledFor(logging.DEBUG):  # hint files are read only to be logged
                    for seen in filter(None, map(queue.read, pending)):
                        log.debug("hint: %s", seen.describe())
                try:
                    report = converge_once(cfg, conns, retry_stuck=retry_stuck, only=only)
                except HypervisorUnavailable:
                    queue.consume(pending[1:])  # any later run converges everything: one hint is enough
                    raise
                if report.unreachable:
                    queue.consume(pending[1:])
                    raise HypervisorUnavailable(uri=", ".join(report.unreachable), reason="see above")
                queue.consume(pending)
                retry_stuck, only = False, None
                if not queue.pending():
                    break
        finally:
            conns.close()
        StateStore(cfg.state_file).ensure_exists()
        return report
