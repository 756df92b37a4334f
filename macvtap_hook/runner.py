"""One converging run: the hint, the lock, the drain loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from macvtap_hook import index, lock
from macvtap_hook.compose import acting_engine
from macvtap_hook.config import Config
from macvtap_hook.engine import Report
from macvtap_hook.errors import DomainGone, HypervisorError, HypervisorUnavailable
from macvtap_hook.hints import Hint, HintQueue
from macvtap_hook.hypervisor import Hypervisor
from macvtap_hook.links import MACVTAP_PREFIX, macvtap_lowers
from macvtap_hook.model import DomainRef
from macvtap_hook.state import StateStore

if TYPE_CHECKING:
    from macvtap_hook.metrics import RunTally

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
    cfg: Config,
    conns: Connections,
    *,
    retry_stuck: bool = False,
    only: frozenset[str] | None = None,
    retry_failed: bool = True,
    failed: set[tuple[str, str, str]] | None = None,
    hints: Sequence[Hint] = (),
) -> Report:
    hypervisors, failures = conns.get()
    if not hypervisors:
        conns.close()  # retried by the next run, not by this one
        raise failures[0]
    engine = acting_engine(cfg, hypervisors, hints)
    report = engine.converge(retry_stuck=retry_stuck, only=only, retry_failed=retry_failed, failed=failed)
    for exc in failures:
        log.warning("%s", exc)
        report.unreachable.append(exc.fields["uri"])
    return report


def _macvtap_appeared(hint: Hint) -> bool:
    """By its name: the macvtap of a failed re-attach is gone again by now."""
    return hint.action == "add" and (hint.iface or "").startswith(MACVTAP_PREFIX)


def _tally(cfg: Config) -> RunTally | None:
    """The metrics of this run, when a metrics file is configured (opt-in:
    otherwise neither the module nor the counting costs a run anything)."""
    if cfg.metrics_file is None:
        return None
    from macvtap_hook.metrics import RunTally

    return RunTally()


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
    if drain_only and not queue.pending():
        # During a storm every event starts a worker: one that finds the
        # work already done must not queue up behind the lock.
        log.debug("pending events: already handled by another run")
        return None
    mine = queue.put(hint) if hint is not None else None
    started = time.monotonic()
    with lock.held(cfg.lock_file, cfg.lock_timeout):
        if (mine is not None and not mine.exists()) or (drain_only and not queue.pending()):
            log.debug("%s: already handled by another run", hint.describe() if hint else "pending events")
            return None
        index.refresh_markers(str(cfg.run_dir))
        conns = Connections(cfg.uris)
        report: Report | None = None
        failed: set[tuple[str, str, str]] = set()  # tried once per run, however many events it drains
        tally = _tally(cfg)
        try:
            for _ in range(MAX_DRAINS):
                if report is not None and budget is not None and time.monotonic() - started > budget:
                    log.warning("%d event(s) left for the next run: this one ran out of time", len(queue.pending()))
                    break
                pending = queue.pending()
                # What vanished devices were, and what appeared (for uplink hooks).
                read = {path: queue.read(path) for path in pending}
                hints = [h for h in read.values() if h is not None]
                for seen in hints:
                    log.debug("hint: %s", seen.describe())
                # Any later run converges everything: one hint is enough, plus
                # those that alone know what a removed device was.
                spare = [p for p in pending[1:] if not _identifies(read[p])]
                # A failed re-attach leaves a macvtap that came and went; its
                # add must not be what retries it, or the two would loop.
                retry_failed = not hints or not all(_macvtap_appeared(h) for h in hints)
                try:
                    report = converge_once(
                        cfg,
                        conns,
                        retry_stuck=retry_stuck,
                        only=only,
                        retry_failed=retry_failed,
                        failed=failed,
                        hints=hints,
                    )
                    if tally is not None:
                        tally.add(report)
                except HypervisorUnavailable:
                    queue.consume(spare)
                    raise
                if report.unreachable:
                    queue.consume(spare)
                    raise HypervisorUnavailable(uri=", ".join(report.unreachable), reason="see above")
                queue.consume(pending)
                retry_stuck, only = False, None
                if not queue.pending():
                    break
            if tally is not None:
                tally.ok = True
        except BaseException:
            index.drop_index(str(cfg.run_dir))  # what this run left behind is unknown
            raise
        finally:
            conns.close()
            if tally is not None:
                tally.write(cfg.metrics_file)  # under the lock: totals are read, added to and written
        if report is not None and report.uplinks is not None:
            # Macvtaps libvirt created since the last look (a guest starting):
            # an event about one of them may have read the index this replaces.
            index.write_index(
                str(cfg.run_dir), report.uplinks | macvtap_lowers(), parked=report.recorded, ports=report.ports
            )
        else:
            index.drop_index(str(cfg.run_dir))
        StateStore(cfg.state_file).ensure_exists()
        return report


def await_jobs(cfg: Config, domains: Sequence[DomainRef], timeout: float, interval: float = 0.5) -> bool:
    """Wait, holding no lock, until none of these domains has a long job
    (a migration, a save...) any more, or is gone; False when `timeout`
    passed first or libvirt could not be asked."""
    conns = Connections(cfg.uris)
    deadline = time.monotonic() + timeout
    try:
        hypervisors = {hv.uri: hv for hv in conns.get()[0]}
        pending = [d for d in domains if d.uri in hypervisors]
        while True:
            still = []
            for dom in pending:
                try:
                    if hypervisors[dom.uri].job_of(dom) is not None:
                        still.append(dom)
                except DomainGone:
                    pass  # migrated away, or stopped: the next run forgets its records
            if not still:
                log.debug("the jobs of %s ended", ", ".join(d.name for d in domains))
                return True
            if time.monotonic() >= deadline:
                return False
            pending = still
            time.sleep(interval)
    except (HypervisorError, HypervisorUnavailable) as exc:
        log.warning("could not ask libvirt for domains' jobs: %s", exc)
        return False
    finally:
        conns.close()


def _identifies(hint: Hint | None) -> bool:
    """A remove or rename event of hardware (its identity is in no other place)."""
    from macvtap_hook.identity import identity_from_udev

    if hint is None or hint.action == "add" or not hint.udev:
        return False
    ident = identity_from_udev(hint.udev)
    return ident is not None and ident.strong
